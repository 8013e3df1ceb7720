//! Hub ↔ unit sync with the real binaries on loopback: real QUIC, real mutual TLS from
//! `edge-provision` bundles, real disks.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use kerbside_tests::fleet::{districts, http, Fleet};
use serde_json::Value;

#[test]
fn cold_sync_live_push_offline_catch_up_and_objection() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0001", &[]).unwrap();
    let data = f.synth("a.ndjson", 3000, 11).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();

    // Cold sync.
    let took = f.wait_records(u, 3000, Duration::from_secs(60)).unwrap();
    eprintln!("cold sync of 3000: {took:?}");
    kerbside_tests::fleet::wait_for(Duration::from_secs(10), || {
        Ok(f.status(u)?["caught_up"] == true)
    })
    .unwrap();
    let s = f.status(u).unwrap();
    assert_eq!(s["link"], "up");
    assert_eq!(s["device_id"], "LAS-AMB-0001");
    assert!(s["cursor"].as_u64().unwrap() >= 3000);
    assert!(s["cache_as_of"].is_string(), "{s}");

    // A new ingest over the admin API reaches the unit within a second (live push).
    let more = f.synth("b.ndjson", 3010, 11).unwrap();
    let text = std::fs::read_to_string(&more).unwrap();
    let last10: String = text.lines().skip(3000).map(|l| format!("{l}\n")).collect();
    let t = Instant::now();
    let (code, body) = f.admin("POST", "/admin/ingest", Some(&last10)).unwrap();
    assert_eq!(code, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["accepted"], 10);
    assert_eq!(r["rejected"].as_array().unwrap().len(), 0);
    f.wait_records(u, 3010, Duration::from_secs(5)).unwrap();
    let live = t.elapsed();
    eprintln!("ingest → unit: {live:?}");
    assert!(
        live < Duration::from_millis(1500),
        "live push took {live:?}"
    );

    // A rejected bundle is reported with its line; the others apply.
    let bad = format!(
        "{}\n{{\"resourceType\": \"Patient\"}}\n",
        text.lines().next().unwrap()
    );
    let (code, body) = f.admin("POST", "/admin/ingest", Some(&bad)).unwrap();
    assert_eq!(code, 200);
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["accepted"], 1, "{body}");
    assert_eq!(r["rejected"][0]["line"], 2, "{body}");

    // Hub stopped: the unit keeps its data and says the link is down.
    f.stop_hub(false).unwrap();
    kerbside_tests::fleet::wait_for(Duration::from_secs(25), || {
        Ok(f.status(u)?["link"] == "down")
    })
    .unwrap();
    assert_eq!(f.records(u), Some(3010));

    // Data arrives at the hub while the unit is cut off; hub back; unit catches up alone.
    let extra = f.synth("c.ndjson", 3100, 11).unwrap();
    f.ingest_offline(&extra).unwrap();
    f.start_hub().unwrap();
    let took = f.wait_records(u, 3100, Duration::from_secs(60)).unwrap();
    eprintln!("catch-up after the hub returned: {took:?}");

    // An objection removes the patient from the unit.
    let victim = kerbside_tests::fleet::nhs_numbers(&data).unwrap()[0].clone();
    let (code, body) = f
        .admin(
            "POST",
            "/admin/objection",
            Some(&format!("{{\"nhs_number\": \"{victim}\"}}")),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    f.wait_records(u, 3099, Duration::from_secs(5)).unwrap();
    // Bad objection input is a clear 400 / 404.
    let (code, _) = f
        .admin(
            "POST",
            "/admin/objection",
            Some("{\"nhs_number\": \"1234567890\"}"),
        )
        .unwrap();
    assert_eq!(code, 400);
    let (code, _) = f
        .admin(
            "POST",
            "/admin/objection",
            Some("{\"nhs_number\": \"9434765919\"}"),
        )
        .unwrap();
    assert_eq!(code, 404);

    // The hub's view of the unit: its acknowledged cursor reaches the head.
    kerbside_tests::fleet::wait_for(Duration::from_secs(5), || {
        let row = f.device_row("LAS-AMB-0001")?;
        Ok(row["cursor"] == row["head"])
    })
    .unwrap();
    let row = f.device_row("LAS-AMB-0001").unwrap();
    assert_eq!(row["revoked"], false);
    assert_eq!(row["connected"], true);
    assert_eq!(row["cursor"], row["head"], "{row}");
}

#[test]
fn kill_mid_catch_up_resumes_without_re_downloading() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0002", &[]).unwrap();
    let n = 20_000u64;
    let data = f.synth("a.ndjson", n as u32, 5).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    // Kill -9 part-way through the catch-up.
    kerbside_tests::fleet::wait_for(Duration::from_secs(60), || {
        Ok(f.records(u).unwrap_or(0) >= n / 3)
    })
    .unwrap();
    f.stop_unit(u, true).unwrap();
    let before = f.device_row("LAS-AMB-0002").unwrap()["records_sent"]
        .as_u64()
        .unwrap();
    assert!(before < n, "killed mid-catch-up ({before} sent)");
    f.start_unit(u).unwrap();
    let held = f.records(u).unwrap();
    assert!(
        held >= n / 3 - 2048,
        "the applied batches survived the kill ({held})"
    );
    f.wait_records(u, n, Duration::from_secs(120)).unwrap();
    // Wait for the hub to record the last acknowledgement.
    std::thread::sleep(Duration::from_millis(500));
    let sent = f.device_row("LAS-AMB-0002").unwrap()["records_sent"]
        .as_u64()
        .unwrap();
    eprintln!("records sent for {n} patients across a kill -9: {sent}");
    // At most the hub's unacknowledged window (8 batches of at most 512) is sent twice: those
    // batches had arrived but were not yet applied when the daemon was killed.
    assert!(
        sent <= n + 8 * 512,
        "re-downloaded too much: {sent} sent for {n}"
    );
}

#[test]
fn cohort_change_moves_only_the_difference_and_revocation_and_rebuild() {
    let mut f = Fleet::new().unwrap();
    let data = f.synth("a.ndjson", 4000, 21).unwrap();
    let by_district = districts(&data).unwrap();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for d in by_district.values() {
        *counts.entry(d.as_str()).or_default() += 1;
    }
    let (d1, n1) = counts
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(d, n)| (d.to_string(), *n))
        .unwrap();
    let u = f
        .enrol("LAS-AMB-0003", &["--cohort", &format!("postcode:{d1}")])
        .unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, n1, Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let sent0 = f.device_row("LAS-AMB-0003").unwrap()["records_sent"]
        .as_u64()
        .unwrap();
    assert_eq!(sent0, n1, "only its district was sent");

    // The operator widens the cohort: only the new members move.
    let (code, body) = f
        .admin(
            "POST",
            "/admin/cohort",
            Some("{\"device_id\": \"LAS-AMB-0003\", \"cohort\": [\"all\"]}"),
        )
        .unwrap();
    assert_eq!(code, 200, "{body}");
    f.wait_records(u, 4000, Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let sent1 = f.device_row("LAS-AMB-0003").unwrap()["records_sent"]
        .as_u64()
        .unwrap();
    assert_eq!(sent1 - sent0, 4000 - n1, "only the difference moved");
    // And narrows it again: records leave, none is sent.
    let (code, _) = f
        .admin(
            "POST",
            "/admin/cohort",
            Some(&format!(
                "{{\"device_id\": \"LAS-AMB-0003\", \"cohort\": [\"postcode:{d1}\"]}}"
            )),
        )
        .unwrap();
    assert_eq!(code, 200);
    f.wait_records(u, n1, Duration::from_secs(60)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let sent2 = f.device_row("LAS-AMB-0003").unwrap()["records_sent"]
        .as_u64()
        .unwrap();
    assert_eq!(sent2, sent1, "narrowing sends nothing");
    // Bad cohort input is refused.
    let (code, _) = f
        .admin(
            "POST",
            "/admin/cohort",
            Some("{\"device_id\": \"LAS-AMB-0003\", \"cohort\": [\"everyone\"]}"),
        )
        .unwrap();
    assert_eq!(code, 400);

    // A corrupted cache is moved aside and rebuilt from the hub.
    f.stop_unit(u, false).unwrap();
    let cache_dir = f.units[u].dir.join("data");
    let sled_dir = find_dir(&f.units[u].dir, "cache.sled").expect("the cache folder");
    corrupt_tree(&sled_dir);
    f.start_unit(u).unwrap();
    f.wait_records(u, n1, Duration::from_secs(60)).unwrap();
    let log = f.unit_log(u);
    assert!(
        log.contains("moving it aside") || log.contains("rebuilt"),
        "the unit said it rebuilt its cache: {log}"
    );
    let _ = cache_dir;

    // Revoked: refused at the next connection; the unit keeps its data and says why.
    kerbside_tests::fleet::run_ok(
        std::process::Command::new(kerbside_tests::bin("edge-provision").unwrap())
            .args(["revoke", "--fleet"])
            .arg(&f.fleet)
            .args(["--device-id", "LAS-AMB-0003"]),
    )
    .unwrap();
    f.stop_hub(false).unwrap();
    f.start_hub().unwrap();
    kerbside_tests::fleet::wait_for(Duration::from_secs(30), || {
        Ok(f.device_row("LAS-AMB-0003")?["last_refusal"].is_string()
            || f.hub_log().contains("refused"))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let s = f.status(u).unwrap();
    assert_eq!(s["link"], "down", "{s}");
    assert_eq!(s["records"], n1);
    let row = f.device_row("LAS-AMB-0003").unwrap();
    assert_eq!(row["revoked"], true);
    // The hub is still serving.
    let (code, _) = http("GET", &format!("http://{}/healthz", f.admin), None).unwrap();
    assert_eq!(code, 200);
}

fn find_dir(root: &Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(root).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if let Some(found) = find_dir(&p, name) {
                return Some(found);
            }
        }
    }
    None
}

/// Scramble every byte of every file in a sled folder (a failed disk, a bad write).
fn corrupt_tree(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            let mut b = std::fs::read(&p).unwrap();
            for x in &mut b {
                *x ^= 0xA5;
            }
            std::fs::write(&p, b).unwrap();
        } else if p.is_dir() {
            corrupt_tree(&p);
        }
    }
}
