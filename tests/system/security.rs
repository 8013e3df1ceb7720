//! Security at rest and information governance with the real binaries: nothing identifying in
//! plaintext under the unit's data directory; bulk browsing slowed and alerted; break-glass in
//! the hub's review list; a unit past its offline limit refuses to serve.

use std::time::{Duration, Instant};

use kerbside_tests::fleet::{nhs_numbers, wait_for, Fleet};
use serde_json::Value;

fn clinician(f: &Fleet, id: u128) -> String {
    f.clinician_token(id, "555000111333", "CURIOUS, Test")
        .unwrap()
}

fn lookup(lan: &str, tok: &str, nhs: &str, extra: &[(&str, &str)]) -> (u16, String) {
    kerbside_tests::fleet::lookup(lan, tok, nhs, extra).unwrap()
}

fn all_bytes(dir: &std::path::Path, out: &mut Vec<u8>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_bytes(&p, out);
        } else if let Ok(b) = std::fs::read(&p) {
            out.extend(b);
            out.push(0);
        }
    }
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn nothing_identifying_in_plaintext_and_bulk_browsing_is_slowed_and_alerted() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0040", &[]).unwrap();
    let data = f.synth("a.ndjson", 600, 17).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 600, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    let lan = f.units[u].lan.clone();
    let tok = clinician(&f, 0xabc);

    // Bulk browsing: past 30 distinct patients, each lookup is slowed and an alert recorded.
    for n in nhs.iter().take(30) {
        assert_eq!(lookup(&lan, &tok, n, &[]).0, 200);
    }
    let t = Instant::now();
    assert_eq!(lookup(&lan, &tok, &nhs[30], &[]).0, 200);
    let slowed = t.elapsed();
    assert!(
        slowed >= Duration::from_millis(1_900),
        "31st patient not slowed: {slowed:?}"
    );
    // Break-glass access.
    let other = clinician(&f, 0xdef);
    let (code, _) = lookup(
        &lan,
        &other,
        &nhs[40],
        &[
            ("X-Purpose-Of-Use", "ETREAT"),
            ("X-Break-Glass-Reason", "unconscious, no ID"),
        ],
    );
    assert_eq!(code, 200);
    wait_for(Duration::from_secs(30), || {
        Ok(f.status(u)?["audit_pending"] == 0)
    })
    .unwrap();
    let (code, body) = f.admin("GET", "/admin/alerts", None).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let alerts = v["alerts"].as_array().unwrap();
    assert!(
        alerts
            .iter()
            .any(|a| a["outcome_reason"] == "bulk_browse" && a["staff_id"] == "555000111333"),
        "{body}"
    );
    assert!(
        alerts.iter().any(|a| a["action"] == "break_glass"),
        "{body}"
    );
    assert!(
        alerts
            .iter()
            .any(|a| a["action"] == "alert" && a["break_glass_reason"] == "unconscious, no ID"),
        "break-glass raises its own security alert: {body}"
    );

    // Nothing identifying in plaintext anywhere under the unit's data directory.
    f.stop_unit(u, false).unwrap();
    let mut bytes = Vec::new();
    all_bytes(&f.units[u].dir.join("data"), &mut bytes);
    let text = std::fs::read_to_string(&data).unwrap();
    let mut families = Vec::new();
    let mut codes = Vec::new();
    for line in text.lines().take(200) {
        let b: Value = serde_json::from_str(line).unwrap();
        for e in b["entry"].as_array().unwrap() {
            let r = &e["resource"];
            if r["resourceType"] == "Patient" {
                if let Some(fam) = r["name"][0]["family"].as_str() {
                    if fam.len() >= 6 {
                        families.push(fam.to_owned());
                    }
                }
            }
            if r["resourceType"] == "AllergyIntolerance" {
                if let Some(c) = r["code"]["coding"][0]["code"].as_str() {
                    if c.len() >= 8 {
                        codes.push(c.to_owned());
                    }
                }
            }
        }
    }
    families.sort();
    families.dedup();
    codes.sort();
    codes.dedup();
    assert!(!families.is_empty() && !codes.is_empty());
    for n in nhs.iter().take(200) {
        assert!(
            !contains(&bytes, n),
            "an NHS number is in plaintext on the unit's disk"
        );
    }
    for fam in &families {
        assert!(
            !contains(&bytes, fam),
            "a family name is in plaintext on the unit's disk"
        );
    }
    for c in &codes {
        assert!(
            !contains(&bytes, c),
            "a SNOMED code is in plaintext on the unit's disk"
        );
    }
    assert!(
        !contains(&bytes, "555000111333"),
        "a staff id is in plaintext on the unit's disk"
    );
}

#[test]
fn a_unit_past_its_offline_limit_refuses_to_serve() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0041", &[]).unwrap();
    // A deployment with a 3-second offline limit, so the test need not wait 14 days.
    let cfg = f.units[u].dir.join("edge.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace("offline_limit_s = 1209600", "offline_limit_s = 3");
    assert!(
        text.contains("offline_limit_s = 3"),
        "edge.toml has offline_limit_s"
    );
    std::fs::write(&cfg, text).unwrap();
    let data = f.synth("a.ndjson", 50, 17).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 50, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    let lan = f.units[u].lan.clone();
    let tok = clinician(&f, 0x41);
    assert_eq!(lookup(&lan, &tok, &nhs[0], &[]).0, 200);
    f.stop_hub(false).unwrap();
    wait_for(Duration::from_secs(25), || {
        Ok(f.status(u)?["link"] == "down")
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(4));
    let (code, body) = lookup(&lan, &tok, &nhs[0], &[]);
    assert_eq!(code, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"], "offline_too_long");
    assert!(v["message"].as_str().unwrap().contains("too old to trust"));
    // Once the hub is back and the unit has synced, it serves again.
    f.start_hub().unwrap();
    wait_for(Duration::from_secs(30), || {
        Ok(f.status(u)?["caught_up"] == true)
    })
    .unwrap();
    assert_eq!(lookup(&lan, &tok, &nhs[0], &[]).0, 200);
}

#[test]
fn remote_wipe_destroys_the_cache_and_pending_audit_still_arrives() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0042", &[]).unwrap();
    let data = f.synth("a.ndjson", 100, 17).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 100, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    let lan = f.units[u].lan.clone();
    let tok = clinician(&f, 0x42);
    // Accesses made offline: pending audit events on the unit.
    f.stop_hub(false).unwrap();
    wait_for(Duration::from_secs(25), || {
        Ok(f.status(u)?["link"] == "down")
    })
    .unwrap();
    for _ in 0..25 {
        assert_eq!(lookup(&lan, &tok, &nhs[3], &[]).0, 200);
    }
    assert!(f.status(u).unwrap()["audit_pending"].as_u64().unwrap() >= 25);
    // The unit is reported stolen: the operator orders a wipe; the hub comes back.
    f.start_hub().unwrap();
    // A mistyped id orders nothing and creates no phantom device.
    let (code, body) = f
        .admin(
            "POST",
            "/admin/wipe",
            Some("{\"device_id\": \"LAS-AMB-0043\"}"),
        )
        .unwrap();
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown_device"), "{body}");
    let (_, devices) = f.admin("GET", "/admin/devices", None).unwrap();
    assert!(
        !devices.contains("LAS-AMB-0043"),
        "no phantom device: {devices}"
    );
    let (code, body) = f
        .admin(
            "POST",
            "/admin/wipe",
            Some("{\"device_id\": \"LAS-AMB-0042\"}"),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    wait_for(Duration::from_secs(30), || {
        Ok(f.status(u)?["shredded"] == true)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", f.unit_log(u)));
    let s = f.status(u).unwrap();
    assert_eq!(s["records"], 0);
    let (code, body) = lookup(&lan, &tok, &nhs[3], &[]);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("unit_wiped"));
    assert!(
        !f.units[u].dir.join("data/keys/dek.sealed").exists(),
        "the cache's wrapped data key is gone"
    );
    // The pending audit events still reach the hub. (60 s: once, under the whole suite's load
    // on 2 cores, 30 s was not enough; alone it takes well under a second. Cause not yet found:
    // see the 2026-12-04 closing note.)
    wait_for(Duration::from_secs(60), || {
        Ok(f.status(u)?["audit_pending"] == 0)
    })
    .unwrap_or_else(|e| panic!("{e}: {}", f.unit_log(u)));
    let (code, body) = f
        .admin("GET", &format!("/admin/audit?patient={}", nhs[3]), None)
        .unwrap();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let ok_reads = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "ok")
        .count();
    assert_eq!(ok_reads, 25, "{body}");
    let row = f.device_row("LAS-AMB-0042").unwrap();
    assert!(row["wipe_sent"].is_string(), "{row}");
    // It stays dark after a restart.
    f.stop_unit(u, false).unwrap();
    f.start_unit(u).unwrap();
    assert_eq!(f.status(u).unwrap()["shredded"], true);
}
