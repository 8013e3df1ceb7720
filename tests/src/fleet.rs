//! A whole fleet on loopback for whole-system tests and benches: a fleet CA, a hub and units
//! provisioned with the real `edge-provision`, data from `edge-hub synth`, and the real
//! `edge-hub serve` / `edge-daemon run` processes. Everything lives in a temporary folder and
//! every process is killed when the [`Fleet`] is dropped.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde_json::Value;

use crate::bin;

/// A free TCP port on loopback.
pub fn tcp_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A free UDP port on loopback.
pub fn udp_port() -> anyhow::Result<u16> {
    Ok(UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Run a command to completion; fail with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// An enrolled unit.
#[derive(Debug)]
pub struct Unit {
    pub id: String,
    pub dir: PathBuf,
    pub lan: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

/// A provisioned fleet with one hub.
#[derive(Debug)]
pub struct Fleet {
    pub tmp: tempfile::TempDir,
    pub fleet: PathBuf,
    pub hub_dir: PathBuf,
    pub hub_quic: String,
    pub admin: String,
    pub hub: Option<Child>,
    pub units: Vec<Unit>,
    /// An operator token of the `fleet` role (`OPS-0001`), minted by `edge-provision operator`.
    pub fleet_token: String,
    /// An operator token of the `privacy` role (`IG-0001`), minted by `edge-provision operator`.
    pub privacy_token: String,
}

/// The operator role an admin route needs: `privacy` for audit queries, verify, export,
/// alerts, objections and the operator log; `fleet` for everything else.
pub fn admin_role(path: &str) -> &'static str {
    let route = path.split('?').next().unwrap_or(path);
    match route {
        "/admin/audit"
        | "/admin/audit/verify"
        | "/admin/audit/export"
        | "/admin/alerts"
        | "/admin/objection"
        | "/admin/operator-log" => "privacy",
        _ => "fleet",
    }
}

/// Mint an operator token with the real `edge-provision operator`.
pub fn mint_operator(fleet: &Path, id: &str, name: &str, role: &str) -> anyhow::Result<String> {
    let out = run_ok(
        Command::new(bin("edge-provision")?)
            .args(["operator", "--fleet"])
            .arg(fleet)
            .args([
                "--operator-id",
                id,
                "--name",
                name,
                "--role",
                role,
                "--hours",
                "12",
            ]),
    )?;
    let text = String::from_utf8(out.stdout)?;
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
        .context("edge-provision operator printed no token")
}

impl Fleet {
    /// Provision a fleet CA and a hub (not started).
    pub fn new() -> anyhow::Result<Fleet> {
        Fleet::with_hub_args(&[])
    }

    /// [`Fleet::new`] with extra `edge-provision hub` arguments (e.g. `--database URL`).
    pub fn with_hub_args(extra: &[&str]) -> anyhow::Result<Fleet> {
        let tmp = tempfile::tempdir()?;
        let fleet = tmp.path().join("fleet");
        let hub_dir = tmp.path().join("hub");
        let hub_quic = format!("127.0.0.1:{}", udp_port()?);
        let admin = format!("127.0.0.1:{}", tcp_port()?);
        let prov = bin("edge-provision")?;
        run_ok(
            Command::new(&prov)
                .args(["ca", "init", "--fleet"])
                .arg(&fleet),
        )?;
        run_ok(
            Command::new(&prov)
                .args(["hub", "--fleet"])
                .arg(&fleet)
                .args([
                    "--name",
                    "127.0.0.1",
                    "--listen",
                    &hub_quic,
                    "--admin",
                    &admin,
                ])
                .args(extra)
                .arg("--out")
                .arg(&hub_dir),
        )?;
        let fleet_token = mint_operator(&fleet, "OPS-0001", "ENGINEER, Fleet", "fleet")?;
        let privacy_token = mint_operator(&fleet, "IG-0001", "OFFICER, Privacy", "privacy")?;
        Ok(Fleet {
            tmp,
            fleet,
            hub_dir,
            hub_quic,
            admin,
            hub: None,
            units: Vec::new(),
            fleet_token,
            privacy_token,
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Enrol a vehicle unit with extra `enrol` arguments (e.g. `--cohort postcode:SE1`);
    /// its LAN API is plain HTTP on loopback so tests need no TLS client. Returns its index.
    pub fn enrol(&mut self, id: &str, extra: &[&str]) -> anyhow::Result<usize> {
        self.enrol_as(id, "vehicle", extra)
    }

    /// [`Fleet::enrol`] with a role (`vehicle` or `kiosk`, e.g. with `--site ODS`).
    pub fn enrol_as(&mut self, id: &str, role: &str, extra: &[&str]) -> anyhow::Result<usize> {
        let dir = self.tmp.path().join(id);
        let lan = format!("127.0.0.1:{}", tcp_port()?);
        run_ok(
            Command::new(bin("edge-provision")?)
                .args(["enrol", "--fleet"])
                .arg(&self.fleet)
                .args(["--device-id", id, "--role", role, "--hub", &self.hub_quic])
                .args(["--hub-name", "127.0.0.1", "--lan", &lan])
                .args(extra)
                .arg("--out")
                .arg(&dir),
        )?;
        // Plain HTTP on loopback for the tests (the config allows it only there).
        let cfg = dir.join("edge.toml");
        let text = std::fs::read_to_string(&cfg)?;
        let text = text.replacen("tls = true", "tls = false", 1);
        std::fs::write(&cfg, text)?;
        let log = self.tmp.path().join(format!("{id}.log"));
        self.units.push(Unit {
            id: id.to_owned(),
            dir,
            lan,
            child: None,
            log,
        });
        Ok(self.units.len() - 1)
    }

    /// `edge-hub synth` into the fleet folder.
    pub fn synth(&self, name: &str, n: u32, seed: u64) -> anyhow::Result<PathBuf> {
        let out = self.path(name);
        run_ok(
            Command::new(bin("edge-hub")?)
                .args([
                    "synth",
                    "--patients",
                    &n.to_string(),
                    "--seed",
                    &seed.to_string(),
                ])
                .arg("--out")
                .arg(&out),
        )?;
        Ok(out)
    }

    /// Offline ingest (the hub must not be running).
    pub fn ingest_offline(&self, file: &Path) -> anyhow::Result<()> {
        run_ok(
            Command::new(bin("edge-hub")?)
                .arg("ingest")
                .arg("--config")
                .arg(self.hub_dir.join("hub.toml"))
                .arg(file),
        )?;
        Ok(())
    }

    pub fn start_hub(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("hub.log"))?;
        let child = Command::new(bin("edge-hub")?)
            .arg("serve")
            .arg("--config")
            .arg(self.hub_dir.join("hub.toml"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.hub = Some(child);
        let url = format!("http://{}/healthz", self.admin);
        wait_for(Duration::from_secs(20), || {
            Ok(http("GET", &url, None).is_ok())
        })
        .context("the hub's admin API did not come up")?;
        Ok(())
    }

    /// Stop the hub: SIGTERM (graceful) or SIGKILL.
    pub fn stop_hub(&mut self, kill: bool) -> anyhow::Result<()> {
        if let Some(mut c) = self.hub.take() {
            signal(&mut c, kill)?;
        }
        Ok(())
    }

    pub fn start_unit(&mut self, i: usize) -> anyhow::Result<()> {
        let u = &mut self.units[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&u.log)?;
        let child = Command::new(bin("edge-daemon")?)
            .arg("run")
            .arg("--config")
            .arg(u.dir.join("edge.toml"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        u.child = Some(child);
        let url = format!("http://{}/healthz", u.lan);
        let id = u.id.clone();
        wait_for(Duration::from_secs(20), || {
            Ok(http("GET", &url, None).is_ok())
        })
        .with_context(|| format!("unit {id} did not come up: {}", self.unit_log(i)))?;
        Ok(())
    }

    pub fn stop_unit(&mut self, i: usize, kill: bool) -> anyhow::Result<()> {
        if let Some(mut c) = self.units[i].child.take() {
            signal(&mut c, kill)?;
        }
        Ok(())
    }

    pub fn unit_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.units[i].log).unwrap_or_default()
    }

    pub fn hub_log(&self) -> String {
        std::fs::read_to_string(self.path("hub.log")).unwrap_or_default()
    }

    /// The unit's `/v1/status`.
    pub fn status(&self, i: usize) -> anyhow::Result<Value> {
        let (code, body) = http(
            "GET",
            &format!("http://{}/v1/status", self.units[i].lan),
            None,
        )?;
        anyhow::ensure!(code == 200, "status {code}");
        Ok(serde_json::from_str(&body)?)
    }

    /// The unit's record count (`None` when the status cannot be read).
    pub fn records(&self, i: usize) -> Option<u64> {
        self.status(i).ok().and_then(|s| s["records"].as_u64())
    }

    /// Wait until the unit holds exactly `n` records.
    pub fn wait_records(&self, i: usize, n: u64, within: Duration) -> anyhow::Result<Duration> {
        let t = Instant::now();
        wait_for(within, || Ok(self.records(i) == Some(n))).with_context(|| {
            format!(
                "unit {} did not reach {n} records within {within:?} (status {:?})\n--- unit log\n{}\n--- hub log\n{}",
                self.units[i].id,
                self.status(i).ok(),
                tail(&self.unit_log(i)),
                tail(&self.hub_log())
            )
        })?;
        Ok(t.elapsed())
    }

    /// A request to the hub's admin API as an operator of the role the route needs (see
    /// [`admin_role`]): (status code, body). A paged list (`GET /admin/audit`, `/admin/alerts`,
    /// `/admin/operator-log`) asked for without `limit=` or `cursor=` is followed page by page
    /// and answered whole (`next_cursor` null), as before the hub paged them; give `limit=` to
    /// see one page.
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let role = admin_role(path);
        let (route, query) = path.split_once('?').unwrap_or((path, ""));
        let list = match route {
            "/admin/audit" => Some("events"),
            "/admin/alerts" => Some("alerts"),
            "/admin/operator-log" => Some("entries"),
            _ => None,
        };
        let paged_by_caller = query
            .split('&')
            .any(|p| p.starts_with("limit=") || p.starts_with("cursor="));
        match list {
            Some(list) if method == "GET" && !paged_by_caller => self.admin_all(role, path, list),
            _ => self.admin_as(role, method, path, body),
        }
    }

    /// Every page of a paged admin list, merged into the first page's answer.
    fn admin_all(&self, role: &str, path: &str, list: &str) -> anyhow::Result<(u16, String)> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let mut merged: Option<Value> = None;
        let mut cursor: Option<String> = None;
        for _ in 0..10_000 {
            let page_path = match &cursor {
                Some(c) => format!("{path}{sep}limit=10000&cursor={c}"),
                None => format!("{path}{sep}limit=10000"),
            };
            let (code, body) = self.admin_as(role, "GET", &page_path, None)?;
            if code != 200 {
                return Ok((code, body));
            }
            let page: Value = serde_json::from_str(&body)
                .with_context(|| format!("{page_path}: not JSON: {body}"))?;
            cursor = page["next_cursor"].as_str().map(str::to_owned);
            match &mut merged {
                None => merged = Some(page),
                Some(m) => {
                    let more = page[list].as_array().cloned().unwrap_or_default();
                    if let Some(items) = m[list].as_array_mut() {
                        items.extend(more);
                    }
                }
            }
            if cursor.is_none() {
                break;
            }
        }
        let mut m = merged.context("no page")?;
        m["next_cursor"] = Value::Null;
        Ok((200, m.to_string()))
    }

    /// A request to the hub's admin API as the fleet's `fleet` or `privacy` operator.
    pub fn admin_as(
        &self,
        role: &str,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        let token = if role == "privacy" {
            &self.privacy_token
        } else {
            &self.fleet_token
        };
        let auth = format!("Bearer {token}");
        self.admin_with(method, path, body, &[("Authorization", &auth)])
    }

    /// A request to the hub's admin API with exactly these extra headers (no token unless
    /// given): (status code, body). A POST without a body is still sent as JSON.
    pub fn admin_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> anyhow::Result<(u16, String)> {
        let mut h = headers.to_vec();
        if method == "POST" && body.unwrap_or("").is_empty() {
            h.push(("Content-Type", "application/json"));
        }
        http_with(method, &format!("http://{}{path}", self.admin), body, &h)
    }

    /// The hub's row for a device from `GET /admin/devices`.
    pub fn device_row(&self, id: &str) -> anyhow::Result<Value> {
        let (code, body) = self.admin("GET", "/admin/devices", None)?;
        anyhow::ensure!(code == 200, "devices: {code} {body}");
        let rows: Vec<Value> = serde_json::from_str(&body)?;
        rows.into_iter()
            .find(|r| r["device_id"] == id)
            .with_context(|| format!("no device row for {id}"))
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for u in &mut self.units {
            if let Some(c) = &mut u.child {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if let Some(c) = &mut self.hub {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// SIGTERM (and wait) or SIGKILL a child.
pub fn signal(c: &mut Child, kill: bool) -> anyhow::Result<()> {
    if kill {
        c.kill()?;
    } else {
        run_ok(Command::new("kill").arg("-TERM").arg(c.id().to_string()))?;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(10) {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        c.kill()?;
    }
    c.wait()?;
    Ok(())
}

/// Poll `f` every 50 ms until it is true or `within` has passed.
pub fn wait_for(
    within: Duration,
    mut f: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    loop {
        if f().unwrap_or(false) {
            return Ok(());
        }
        if t.elapsed() > within {
            bail!("timed out after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// How long one read or write of an HTTP exchange may wait (also the connect bound).
pub const HTTP_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The HTTP client of the tests: one request per connection (no pool, so a restarted process
/// on the same port never meets a stale connection), no redirects followed, no proxy from the
/// environment, and every status returned as a value.
fn http_agent() -> &'static ureq::Agent {
    static AGENT: OnceLock<ureq::Agent> = OnceLock::new();
    AGENT.get_or_init(|| {
        ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .proxy(None)
            .max_idle_connections(0)
            .max_idle_connections_per_host(0)
            .timeout_connect(Some(HTTP_IO_TIMEOUT))
            .timeout_per_read(Some(HTTP_IO_TIMEOUT))
            .timeout_per_write(Some(HTTP_IO_TIMEOUT))
            .build()
            .into()
    })
}

/// An HTTP request to a plain-HTTP loopback API: (status, body). Non-2xx statuses are values,
/// not errors; a body, if any, is sent as `application/json`.
pub fn http(method: &str, url: &str, body: Option<&str>) -> anyhow::Result<(u16, String)> {
    http_with(method, url, body, &[])
}

/// [`http`] with extra headers.
pub fn http_with(
    method: &str,
    url: &str,
    body: Option<&str>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    anyhow::ensure!(url.starts_with("http://"), "http:// only: {url}");
    let mut req = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    // Like a plain client: a Content-Length always (0 without a body), JSON when there is one.
    let body = body.unwrap_or("");
    if !body.is_empty() {
        req = req.header("Content-Type", "application/json");
    }
    let sent = http_agent().run(req.body(body.as_bytes())?);
    let mut resp = sent.with_context(|| format!("{method} {url}"))?;
    let code = resp.status().as_u16();
    let bytes = resp
        .body_mut()
        .with_config()
        .limit(u64::MAX)
        .read_to_vec()
        .with_context(|| format!("{method} {url}: reading the body"))?;
    Ok((code, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Peak resident memory (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// NHS numbers of the patients in a synth file, in file order.
pub fn nhs_numbers(file: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(file)?;
    let mut out = Vec::new();
    for line in text.lines() {
        let b: Value = serde_json::from_str(line)?;
        if let Some(entries) = b["entry"].as_array() {
            for e in entries {
                let r = &e["resource"];
                if r["resourceType"] == "Patient" {
                    if let Some(ids) = r["identifier"].as_array() {
                        for i in ids {
                            if i["system"] == "https://fhir.nhs.uk/Id/nhs-number" {
                                if let Some(v) = i["value"].as_str() {
                                    out.push(v.to_owned());
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(out)
}

/// (NHS number, postcode district) of every patient in a synth file.
pub fn districts(file: &Path) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let text = std::fs::read_to_string(file)?;
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        let b: Value = serde_json::from_str(line)?;
        for e in b["entry"].as_array().into_iter().flatten() {
            let r = &e["resource"];
            if r["resourceType"] == "Patient" {
                let nhs = r["identifier"][0]["value"]
                    .as_str()
                    .context("a patient without an NHS number")?
                    .to_owned();
                let pc = r["address"][0]["postalCode"].as_str().unwrap_or("");
                let d = pc.split_whitespace().next().unwrap_or("").to_owned();
                out.insert(nhs, d);
            }
        }
    }
    Ok(out)
}

/// The wall clock in Unix milliseconds.
/// `GET /v1/patients/{nhs}` on a unit's LAN API with a shift token and `extra` headers:
/// (status, body).
pub fn lookup(
    lan: &str,
    tok: &str,
    nhs: &str,
    extra: &[(&str, &str)],
) -> anyhow::Result<(u16, String)> {
    let auth = format!("Bearer {tok}");
    let mut h = vec![("Authorization", auth.as_str())];
    h.extend_from_slice(extra);
    http_with("GET", &format!("http://{lan}/v1/patients/{nhs}"), None, &h)
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Fleet {
    /// A clinician's shift token for one hour, signed with the fleet's token key (what
    /// `edge-provision token` mints), with a chosen token id and staff identity.
    pub fn clinician_token(
        &self,
        token_id: u128,
        staff_id: &str,
        staff_name: &str,
    ) -> anyhow::Result<String> {
        use edge_proto::time::UnixMillis;
        use edge_proto::token::{self, ShiftClaims};
        let key =
            edge_provision::keys::load_ed25519_signing(&self.fleet.join("token-signing.key"))?;
        let now = now_ms();
        Ok(token::sign(
            &ShiftClaims {
                v: 1,
                token_id: format!("{token_id:032x}"),
                staff_id: staff_id.into(),
                staff_name: staff_name.into(),
                role: edge_proto::ids::StaffRole::Clinical,
                org_ods: None,
                device: None,
                issued_at: UnixMillis(now - 60_000),
                expires_at: UnixMillis(now + 3_600_000),
            },
            &key,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    /// A one-shot HTTP server on loopback: hands back the request head and body it read and
    /// answers with `reply`. Returns its URL base.
    fn one_shot(reply: &'static str) -> (String, std::thread::JoinHandle<(String, String)>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s);
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                if line == "\r\n" || line.is_empty() {
                    break;
                }
                head.push_str(&line.to_ascii_lowercase());
            }
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            let mut body = vec![0u8; len];
            r.read_exact(&mut body).unwrap();
            r.get_mut().write_all(reply.as_bytes()).unwrap();
            (head, String::from_utf8(body).unwrap())
        });
        (base, h)
    }

    #[test]
    fn http_returns_error_statuses_as_values_and_reads_chunked_bodies() {
        let (base, h) = one_shot(
            "HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             5\r\n{\"a\":\r\n4\r\n404}\r\n0\r\n\r\n",
        );
        let (code, body) = http_with(
            "GET",
            &format!("{base}/v1/patients/1?x=y"),
            None,
            &[("X-Incident-Ref", "CAD-1")],
        )
        .unwrap();
        assert_eq!((code, body.as_str()), (404, "{\"a\":404}"));
        let (head, sent) = h.join().unwrap();
        assert!(
            head.starts_with("get /v1/patients/1?x=y http/1.1\r\n"),
            "{head}"
        );
        assert!(head.contains("x-incident-ref: cad-1\r\n"), "{head}");
        assert_eq!(sent, "");
    }

    #[test]
    fn http_posts_json_and_reads_a_sized_body() {
        let (base, h) =
            one_shot("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        let (code, body) =
            http("POST", &format!("{base}/admin/ingest"), Some("{\"n\":1}")).unwrap();
        assert_eq!((code, body.as_str()), (200, "ok"));
        let (head, sent) = h.join().unwrap();
        assert!(
            head.starts_with("post /admin/ingest http/1.1\r\n"),
            "{head}"
        );
        assert!(
            head.contains("content-type: application/json\r\n"),
            "{head}"
        );
        assert_eq!(sent, "{\"n\":1}");
    }

    #[test]
    fn http_fails_when_nothing_listens_and_refuses_other_schemes() {
        let port = tcp_port().unwrap();
        assert!(http("GET", &format!("http://127.0.0.1:{port}/healthz"), None).is_err());
        assert!(http("GET", "https://127.0.0.1:1/healthz", None).is_err());
    }
}
