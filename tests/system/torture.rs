//! Kill-anywhere torture: SIGKILL the daemon or the hub at random points while the unit is
//! catching up, answering lookups (audit appends; some of patients outside its cohort, so
//! on-demand fetches from the hub) and uploading its journal, and new data keeps arriving at
//! the hub. After every trial the killed process is restarted; at the end
//! the invariants must hold: the unit converges to the hub's cohort, its cursor reaches the
//! head, every answered access is at the hub exactly once, the chain verifies with no gaps.
//!
//! `TORTURE_TRIALS=n` (default 200), `TORTURE_SEED=s` replays a run (the seed is printed).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_proto::ids::StaffRole;
use edge_proto::time::UnixMillis;
use edge_proto::token::{self, ShiftClaims};
use kerbside_tests::fleet::{districts, http_with, nhs_numbers, wait_for, Fleet};
use rand::RngExt;
use serde_json::Value;

#[test]
fn kill_anywhere_daemon_and_hub() {
    let trials: u64 = std::env::var("TORTURE_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| kerbside_tests::fleet::now_ms() as u64);
    eprintln!("torture: {trials} trials, seed {seed} (replay: TORTURE_SEED={seed})");
    let mut rng = kerbside_tests::rng(seed);
    let mut f = Fleet::new().unwrap();
    let batches = 10u64;
    let base = 1500u64;
    let all = f
        .synth("all.ndjson", (base + batches * 40) as u32, 23)
        .unwrap();
    // The unit's cohort: every postcode district but the two smallest, so lookups of patients
    // from those two go through on-demand fetch from the hub (the kills land there too).
    let by_district = districts(&all).unwrap();
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    for d in by_district.values().filter(|d| !d.is_empty()) {
        *counts.entry(d.as_str()).or_default() += 1;
    }
    let mut by_size: Vec<(&str, u64)> = counts.iter().map(|(d, n)| (*d, *n)).collect();
    by_size.sort_by_key(|(d, n)| (*n, *d));
    let outside: HashSet<&str> = by_size.iter().take(2).map(|(d, _)| *d).collect();
    let cohort: Vec<&str> = counts
        .keys()
        .copied()
        .filter(|d| !outside.contains(d))
        .collect();
    let in_cohort = |n: &str| cohort.contains(&by_district[n].as_str());
    let u = f
        .enrol(
            "LAS-AMB-0050",
            &["--cohort", &format!("postcode:{}", cohort.join(","))],
        )
        .unwrap();
    let text = std::fs::read_to_string(&all).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let first: String = lines[..base as usize]
        .iter()
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(f.path("first.ndjson"), &first).unwrap();
    f.ingest_offline(&f.path("first.ndjson")).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    let nhs = nhs_numbers(&all).unwrap();
    let key =
        edge_provision::keys::load_ed25519_signing(&f.fleet.join("token-signing.key")).unwrap();
    let now = kerbside_tests::fleet::now_ms();
    let tok = token::sign(
        &ShiftClaims {
            v: 1,
            token_id: format!("{:032x}", 0x7041u64),
            staff_id: "555000111444".into(),
            staff_name: "TORTURE, Test".into(),
            role: StaffRole::Clinical,
            org_ods: None,
            device: None,
            issued_at: UnixMillis(now - 60_000),
            expires_at: UnixMillis(now + 3_600_000),
        },
        &key,
    );
    // Lookups of a few patients, counting the answers the client received: five in the cohort
    // and two outside it (fetched on demand while the link is up; `not_cached` otherwise).
    let first_patients = &nhs[..base as usize];
    let fetched: Vec<String> = first_patients
        .iter()
        .filter(|n| !in_cohort(n))
        .take(2)
        .cloned()
        .collect();
    assert_eq!(fetched.len(), 2, "two patients outside the cohort");
    let watched: Vec<String> = first_patients
        .iter()
        .filter(|n| in_cohort(n))
        .take(5)
        .chain(&fetched)
        .cloned()
        .collect();
    let answered: Arc<BTreeMap<String, AtomicU64>> = Arc::new(
        watched
            .iter()
            .map(|n| (n.clone(), AtomicU64::new(0)))
            .collect(),
    );
    let stop = Arc::new(AtomicBool::new(false));
    let client = {
        let (stop, answered, lan, tok) = (
            stop.clone(),
            answered.clone(),
            f.units[u].lan.clone(),
            tok.clone(),
        );
        std::thread::spawn(move || {
            let keys: Vec<String> = answered.keys().cloned().collect();
            let auth = format!("Bearer {tok}");
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                let who = &keys[i % keys.len()];
                let r = http_with(
                    "GET",
                    &format!("http://{lan}/v1/patients/{who}"),
                    None,
                    &[("Authorization", &auth)],
                );
                if matches!(r, Ok((200, _))) {
                    answered[who].fetch_add(1, Ordering::SeqCst);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    let mut posted = 0u64;
    let (mut daemon_kills, mut hub_kills) = (0, 0);
    for trial in 0..trials {
        // New data now and then, so there is always a catch-up to interrupt.
        if trial % (trials / batches).max(1) == 0 && posted < batches && f.hub.is_some() {
            let from = (base + posted * 40) as usize;
            let body: String = lines[from..from + 40]
                .iter()
                .map(|l| format!("{l}\n"))
                .collect();
            if let Ok((200, _)) = f.admin("POST", "/admin/ingest", Some(&body)) {
                posted += 1;
            }
        }
        std::thread::sleep(Duration::from_millis(20 + rng.random_range(0..200)));
        let hub = rng.random_range(0..10) < 3;
        let r = if hub {
            hub_kills += 1;
            f.stop_hub(true).and_then(|()| f.start_hub())
        } else {
            daemon_kills += 1;
            f.stop_unit(u, true).and_then(|()| f.start_unit(u))
        };
        r.unwrap_or_else(|e| panic!("trial {trial} (TORTURE_SEED={seed}): restart failed: {e}"));
    }
    // Post whatever was not posted, then let everything settle.
    while posted < batches {
        let from = (base + posted * 40) as usize;
        let body: String = lines[from..from + 40]
            .iter()
            .map(|l| format!("{l}\n"))
            .collect();
        let (code, b) = f.admin("POST", "/admin/ingest", Some(&body)).unwrap();
        assert_eq!(code, 200, "{b}");
        posted += 1;
    }
    stop.store(true, Ordering::SeqCst);
    client.join().unwrap();
    let total = nhs.iter().filter(|n| in_cohort(n)).count() as u64;
    f.wait_records(u, total, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("TORTURE_SEED={seed}: {e}"));
    wait_for(Duration::from_secs(60), || {
        let row = f.device_row("LAS-AMB-0050")?;
        Ok(f.status(u)?["audit_pending"] == 0 && row["cursor"] == row["head"])
    })
    .unwrap_or_else(|e| panic!("TORTURE_SEED={seed}: did not settle: {e}"));
    let on_demand: u64 = fetched
        .iter()
        .map(|n| answered[n].load(Ordering::SeqCst))
        .sum();
    assert!(
        on_demand > 0,
        "TORTURE_SEED={seed}: no lookup outside the cohort was answered by an on-demand fetch"
    );
    let mut got_total = 0;
    for (n, c) in answered.iter() {
        let (code, body) = f
            .admin("GET", &format!("/admin/audit?patient={n}"), None)
            .unwrap();
        assert_eq!(code, 200);
        let v: Value = serde_json::from_str(&body).unwrap();
        let events = v["events"].as_array().unwrap();
        let ids: HashSet<&str> = events
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids.len(),
            events.len(),
            "TORTURE_SEED={seed}: duplicates for {n}"
        );
        let reads = events.iter().filter(|e| e["outcome"] == "ok").count() as u64;
        let want = c.load(Ordering::SeqCst);
        got_total += want;
        assert!(
            reads >= want,
            "TORTURE_SEED={seed}: {n}: hub has {reads} reads, client received {want}"
        );
    }
    let (code, body) = f
        .admin("GET", "/admin/audit/verify?device=LAS-AMB-0050", None)
        .unwrap();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["chain_ok"], true, "TORTURE_SEED={seed}: {v}");
    assert_eq!(v["gaps"], serde_json::json!([]), "TORTURE_SEED={seed}: {v}");
    eprintln!(
        "torture: {daemon_kills} daemon kills, {hub_kills} hub kills; {total} records converged; {got_total} answered accesses ({on_demand} by on-demand fetch) all at the hub once; chain verified"
    );
}
