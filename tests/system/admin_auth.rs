//! The hub's admin API with the real binaries (issue 16, item 7): every call needs an operator
//! token of the route's role (`edge-provision operator`); a shift token is no operator token;
//! cross-site and `text/plain` POSTs order nothing; a foreign Host is refused; an operator
//! revoked with `edge-provision token-revoke --operator-id` is refused after the hub's reload;
//! every call is in `/admin/operator-log` with the operator's id; alerts page with `cursor`,
//! each once; the hub's data folder is private (item 10).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use kerbside_tests::bin;
use kerbside_tests::fleet::{mint_operator, nhs_numbers, run_ok, wait_for, Fleet};
use serde_json::Value;

/// One raw HTTP/1.1 request (exact headers, nothing added): (status, whole response text).
fn raw(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    ));
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out).into_owned();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, text)
}

fn lookup(lan: &str, tok: &str, nhs: &str, extra: &[(&str, &str)]) -> u16 {
    kerbside_tests::fleet::lookup(lan, tok, nhs, extra)
        .unwrap()
        .0
}

/// Every item of a paged admin list (`list` and `next_cursor`), `limit` at a time.
fn all_pages(f: &Fleet, base: &str, list: &str, limit: usize) -> (Vec<Value>, usize) {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let sep = if base.contains('?') { '&' } else { '?' };
        let path = match &cursor {
            Some(c) => format!("{base}{sep}limit={limit}&cursor={c}"),
            None => format!("{base}{sep}limit={limit}"),
        };
        let (code, body) = f.admin("GET", &path, None).unwrap();
        assert_eq!(code, 200, "{path}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        let items = v[list].as_array().unwrap();
        assert!(items.len() <= limit, "{body}");
        out.extend(items.iter().cloned());
        pages += 1;
        assert!(pages < 1000, "paging never ends");
        match v["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return (out, pages),
        }
    }
}

#[cfg(unix)]
fn assert_private(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(dir).unwrap();
    let mode = m.permissions().mode() & 0o777;
    if m.is_dir() {
        assert_eq!(mode, 0o700, "{} is {mode:o}", dir.display());
        for e in std::fs::read_dir(dir).unwrap() {
            assert_private(&e.unwrap().path());
        }
    } else if m.is_file() {
        assert_eq!(mode, 0o600, "{} is {mode:o}", dir.display());
    }
}

#[test]
fn admin_calls_need_an_operator_of_the_routes_role_and_are_all_logged() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0060", &[]).unwrap();
    let data = f.synth("a.ndjson", 60, 23).unwrap();
    f.ingest_offline(&data).unwrap();
    // Reload the CRL and deny list every second, so a revocation is seen quickly.
    let toml = f.hub_dir.join("hub.toml");
    let text = std::fs::read_to_string(&toml).unwrap();
    assert!(text.contains("crl_reload_s = 60"), "{text}");
    std::fs::write(
        &toml,
        text.replacen("crl_reload_s = 60", "crl_reload_s = 1", 1),
    )
    .unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 60, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    let admin = f.admin.clone();

    // No token; a clinician's shift token; garbage.
    let (code, body) = f.admin_with("GET", "/admin/devices", None, &[]).unwrap();
    assert_eq!(code, 401, "{body}");
    assert!(body.contains("no_token"), "{body}");
    let shift = f
        .clinician_token(0x51, "555000111444", "SHIFT, Test")
        .unwrap();
    let auth = format!("Bearer {shift}");
    let (code, body) = f
        .admin_with("GET", "/admin/devices", None, &[("Authorization", &auth)])
        .unwrap();
    assert_eq!(code, 401, "a shift token is not an operator token: {body}");
    let (code, _) = f
        .admin_with(
            "GET",
            "/admin/devices",
            None,
            &[("Authorization", "Bearer x.y")],
        )
        .unwrap();
    assert_eq!(code, 401);

    // Roles: a fleet operator reads no audit trail; a privacy officer orders no wipe.
    let (code, body) = f
        .admin_as(
            "fleet",
            "GET",
            &format!("/admin/audit?patient={}", nhs[0]),
            None,
        )
        .unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("\"role\""), "{body}");
    let wipe = "{\"device_id\": \"LAS-AMB-0060\"}";
    let (code, body) = f
        .admin_as("privacy", "POST", "/admin/wipe", Some(wipe))
        .unwrap();
    assert_eq!(code, 403, "{body}");
    let (code, body) = f.admin("GET", "/admin/devices", None).unwrap();
    assert_eq!(code, 200, "{body}");

    // Cross-site: a text/plain POST with a foreign Origin (a browser's "simple request"),
    // with and without a token, and a JSON one; a foreign Host (DNS rebinding).
    let bearer = format!("Bearer {}", f.fleet_token);
    let cases: [(Vec<(&str, &str)>, u16); 4] = [
        (
            vec![
                ("Host", admin.as_str()),
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain"),
            ],
            403,
        ),
        (
            vec![
                ("Host", admin.as_str()),
                ("Origin", "http://evil.example"),
                ("Content-Type", "text/plain"),
                ("Authorization", bearer.as_str()),
            ],
            403,
        ),
        (
            vec![
                ("Host", "evil.example"),
                ("Content-Type", "application/json"),
                ("Authorization", bearer.as_str()),
            ],
            403,
        ),
        (
            vec![
                ("Host", admin.as_str()),
                ("Content-Type", "text/plain"),
                ("Authorization", bearer.as_str()),
            ],
            415,
        ),
    ];
    for (headers, want) in &cases {
        let (code, text) = raw(&admin, "POST", "/admin/wipe", headers, wipe);
        assert_eq!(code, *want, "{headers:?}: {text}");
    }
    let (code, text) = raw(
        &admin,
        "GET",
        "/admin/devices",
        &[("Host", "evil.example:80"), ("Authorization", &bearer)],
        "",
    );
    assert_eq!(code, 403, "{text}");
    assert!(text.contains("cross_site"), "{text}");
    let row = f.device_row("LAS-AMB-0060").unwrap();
    assert_eq!(
        row["wipe_requested"],
        Value::Null,
        "no wipe recorded: {row}"
    );
    assert_eq!(row["wipe_sent"], Value::Null, "{row}");

    // Alerts: break-glass reads (each also raises an alert), paged 3 at a time, each once.
    let lan = f.units[u].lan.clone();
    let tok = f
        .clinician_token(0x52, "555000111555", "GLASS, Test")
        .unwrap();
    for n in nhs.iter().take(5) {
        let code = lookup(
            &lan,
            &tok,
            n,
            &[
                ("X-Purpose-Of-Use", "ETREAT"),
                ("X-Break-Glass-Reason", "unconscious, no ID"),
            ],
        );
        assert_eq!(code, 200);
    }
    wait_for(Duration::from_secs(30), || {
        Ok(f.status(u)?["audit_pending"] == 0)
    })
    .unwrap();
    let (whole, _) = all_pages(&f, "/admin/alerts", "alerts", 10_000);
    assert!(whole.len() >= 10, "{whole:?}");
    let (paged, pages) = all_pages(&f, "/admin/alerts", "alerts", 3);
    assert!(pages >= 4, "{pages} pages");
    let key = |e: &Value| (e["device_id"].to_string(), e["seq"].as_u64().unwrap());
    let mut keys: Vec<_> = paged.iter().map(key).collect();
    assert_eq!(
        keys,
        whole.iter().map(key).collect::<Vec<_>>(),
        "the same list, page by page"
    );
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), whole.len(), "each alert once");
    let (events, _) = all_pages(&f, &format!("/admin/audit?patient={}", nhs[0]), "events", 1);
    assert!(!events.is_empty());

    // A revoked operator is refused after the hub's next reload; the others are not.
    let second = mint_operator(&f.fleet, "OPS-0002", "ENGINEER, Second", "fleet").unwrap();
    let auth2 = format!("Bearer {second}");
    let (code, body) = f
        .admin_with("GET", "/admin/devices", None, &[("Authorization", &auth2)])
        .unwrap();
    assert_eq!(code, 200, "{body}");
    run_ok(
        Command::new(bin("edge-provision").unwrap())
            .args(["token-revoke", "--fleet"])
            .arg(&f.fleet)
            .args(["--operator-id", "OPS-0002", "--reason", "left the team"]),
    )
    .unwrap();
    wait_for(Duration::from_secs(20), || {
        let (code, _) =
            f.admin_with("GET", "/admin/devices", None, &[("Authorization", &auth2)])?;
        Ok(code == 401)
    })
    .unwrap_or_else(|e| panic!("{e}: the revoked operator is still served: {}", f.hub_log()));
    let (code, body) = f
        .admin_with("GET", "/admin/devices", None, &[("Authorization", &auth2)])
        .unwrap();
    assert!(body.contains("revoked"), "{code} {body}");
    assert_eq!(f.admin("GET", "/admin/devices", None).unwrap().0, 200);

    // Every call is in the operator log, with who made it.
    let (log, _) = all_pages(&f, "/admin/operator-log", "entries", 50);
    let by = |id: &str| -> Vec<&Value> { log.iter().filter(|e| e["operator_id"] == id).collect() };
    assert!(by("OPS-0001")
        .iter()
        .any(|e| e["route"] == "/admin/devices" && e["status"] == 200));
    assert!(by("OPS-0001")
        .iter()
        .any(|e| e["route"] == "/admin/audit" && e["status"] == 403 && e["refused"] == "role"));
    assert!(by("IG-0001")
        .iter()
        .any(|e| e["route"] == "/admin/wipe" && e["status"] == 403));
    assert!(by("IG-0001").iter().any(
        |e| e["route"] == "/admin/audit" && e["query"].as_str().unwrap_or("").contains(&nhs[0])
    ));
    assert!(by("IG-0001").iter().any(|e| e["route"] == "/admin/alerts"));
    assert!(by("OPS-0002").iter().any(|e| e["status"] == 200));
    let anonymous: Vec<&Value> = log.iter().filter(|e| e["operator_id"].is_null()).collect();
    assert!(anonymous.iter().any(|e| e["refused"] == "no_token"));
    assert!(anonymous.iter().any(|e| e["refused"] == "wrong_token_kind"));
    assert!(anonymous.iter().any(|e| e["refused"] == "revoked"));
    assert!(
        anonymous
            .iter()
            .filter(|e| e["refused"] == "cross_site")
            .count()
            >= 4,
        "{anonymous:#?}"
    );
    // The hub's data folder (`data_dir = "data"` in the bundle's hub.toml) is private.
    #[cfg(unix)]
    assert_private(&f.hub_dir.join("data"));

    // A hub without the operator-token key does not serve at all.
    f.stop_hub(false).unwrap();
    let text = std::fs::read_to_string(&toml).unwrap();
    let without: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("operator_verify"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(without, text);
    let bare = f.hub_dir.join("hub-no-operator-key.toml");
    std::fs::write(&bare, without).unwrap();
    let mut child = Command::new(bin("edge-hub").unwrap())
        .args(["serve", "--config"])
        .arg(&bare)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("edge-hub serve started without [keys] operator_verify");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(!status.success());
    assert!(err.contains("operator_verify"), "{err}");
}
