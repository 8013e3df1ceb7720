//! A whole fleet on loopback for whole-system tests and benches: a fleet CA, a hub and units
//! provisioned with the real `edge-provision`, data from `edge-hub synth`, and the real
//! `edge-hub serve` / `edge-daemon run` processes. Everything lives in a temporary folder and
//! every process is killed when the [`Fleet`] is dropped.

use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
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
}

impl Fleet {
    /// Provision a fleet CA and a hub (not started).
    pub fn new() -> anyhow::Result<Fleet> {
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
                .arg("--out")
                .arg(&hub_dir),
        )?;
        Ok(Fleet {
            tmp,
            fleet,
            hub_dir,
            hub_quic,
            admin,
            hub: None,
            units: Vec::new(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// Enrol a vehicle unit with extra `enrol` arguments (e.g. `--cohort postcode:SE1`);
    /// its LAN API is plain HTTP on loopback so tests need no TLS client. Returns its index.
    pub fn enrol(&mut self, id: &str, extra: &[&str]) -> anyhow::Result<usize> {
        let dir = self.tmp.path().join(id);
        let lan = format!("127.0.0.1:{}", tcp_port()?);
        run_ok(
            Command::new(bin("edge-provision")?)
                .args(["enrol", "--fleet"])
                .arg(&self.fleet)
                .args([
                    "--device-id",
                    id,
                    "--role",
                    "vehicle",
                    "--hub",
                    &self.hub_quic,
                ])
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

    /// A request to the hub's admin API: (status code, body).
    pub fn admin(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> anyhow::Result<(u16, String)> {
        http(method, &format!("http://{}{path}", self.admin), body)
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

/// A minimal HTTP/1.1 client for plain-HTTP loopback APIs: (status, body).
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
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("http:// only")?;
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let mut s = std::net::TcpStream::connect(host)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body.as_bytes())?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").context("no HTTP header")?;
    let code: u16 = head
        .split_whitespace()
        .nth(1)
        .context("no status")?
        .parse()?;
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(len.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
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
