//! The LAN API under abuse from the vehicle LAN, with the real binaries (issue 16 items 3, 5,
//! 6): token-less floods are limited per client and journalled in aggregate so a clinician is
//! never locked out; parallel lookups past the bulk-browse limit queue behind the delay; slow
//! clients are cut off and connections are capped.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kerbside_tests::fleet::{http_with, nhs_numbers, wait_for, Fleet};
use serde_json::Value;

fn lookup(lan: &str, tok: Option<&str>, nhs: &str) -> u16 {
    let auth = tok.map(|t| format!("Bearer {t}"));
    let h: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    http_with("GET", &format!("http://{lan}/v1/patients/{nhs}"), None, &h)
        .map(|(c, _)| c)
        .unwrap_or(0)
}

/// Set `key = value` in the unit's `[lan]` table (the file carries every key with its default).
fn set_lan(f: &Fleet, u: usize, key: &str, value: u64) {
    let cfg = f.units[u].dir.join("edge.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let mut out = String::new();
    let mut done = false;
    for line in text.lines() {
        if line.trim_start().starts_with(&format!("{key} =")) {
            out.push_str(&format!("{key} = {value}\n"));
            done = true;
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(done, "edge.toml has {key}: {text}");
    std::fs::write(&cfg, out).unwrap();
}

#[test]
fn a_token_less_flood_is_limited_journalled_in_aggregate_and_never_locks_out_a_clinician() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0061", &[]).unwrap();
    let data = f.synth("a.ndjson", 50, 5).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 50, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    let lan = f.units[u].lan.clone();
    wait_for(Duration::from_secs(30), || {
        Ok(f.status(u)?["audit_pending"] == 0)
    })
    .unwrap();
    let before = f.status(u).unwrap()["audit_uploaded_seq"]
        .as_u64()
        .unwrap_or(0);

    let (mut unauthorised, mut limited) = (0, 0);
    for _ in 0..400 {
        match lookup(&lan, None, &nhs[0]) {
            401 => unauthorised += 1,
            429 => limited += 1,
            other => panic!("a token-less lookup answered {other}"),
        }
    }
    // A burst (5 × 5/s), then 429 for the rest of the flood.
    assert!((25..60).contains(&unauthorised), "{unauthorised} × 401");
    assert!(limited > 300, "{limited} × 429");
    // A clinician on the same unit is answered at once.
    let tok = f
        .clinician_token(0x6161, "555000111999", "FLOODED, Test")
        .unwrap();
    assert_eq!(lookup(&lan, Some(&tok), &nhs[1]), 200);
    // The journal holds one aggregate event for the flood (plus the clinician's login and
    // read), not 400.
    wait_for(Duration::from_secs(30), || {
        Ok(f.status(u)?["audit_pending"] == 0)
    })
    .unwrap();
    let after = f.status(u).unwrap()["audit_uploaded_seq"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        after.saturating_sub(before) <= 4,
        "the flood wrote {} journal events",
        after.saturating_sub(before)
    );
    let (code, body) = f
        .admin("GET", &format!("/admin/audit?patient={}", nhs[0]), None)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let events = v["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "one aggregate event: {body}");
    assert_eq!(events[0]["outcome"], "denied");
    assert_eq!(events[0]["data"]["refusals"], 1, "{body}");
    assert_eq!(events[0]["client"]["address"], "127.0.0.1", "{body}");
    // /healthz is ok (the journal is far from its budget).
    let (code, body) = http_with("GET", &format!("http://{lan}/healthz"), None, &[]).unwrap();
    assert_eq!((code, body.as_str()), (200, "ok"));
}

#[test]
fn parallel_lookups_past_the_browse_limit_queue_behind_the_delay() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0062", &[]).unwrap();
    let data = f.synth("a.ndjson", 60, 6).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 60, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    let lan = f.units[u].lan.clone();
    let tok = f
        .clinician_token(0x6262, "555000111888", "BROWSER, Test")
        .unwrap();
    for n in nhs.iter().take(30) {
        assert_eq!(lookup(&lan, Some(&tok), n), 200);
    }
    // Five distinct patients past the limit, asked at once: answered one delay apart, so the
    // last takes about five delays (2 s each), not one.
    let t = Instant::now();
    let handles: Vec<_> = nhs[30..35]
        .iter()
        .map(|n| {
            let (lan, tok, n) = (lan.clone(), tok.clone(), n.clone());
            std::thread::spawn(move || (lookup(&lan, Some(&tok), &n), t.elapsed()))
        })
        .collect();
    let mut took: Vec<Duration> = handles
        .into_iter()
        .map(|h| {
            let (code, d) = h.join().unwrap();
            assert_eq!(code, 200);
            d
        })
        .collect();
    took.sort();
    eprintln!("parallel lookups past the browse limit answered after {took:?}");
    assert!(
        took[4] >= Duration::from_millis(9_500),
        "five parallel lookups past the limit all answered by {:?}: not queued",
        took[4]
    );
    assert!(took[0] >= Duration::from_millis(1_900), "{took:?}");
}

#[test]
fn slow_clients_are_cut_off_and_requests_in_flight_per_client_are_capped() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0063", &[]).unwrap();
    set_lan(&f, u, "header_read_timeout_s", 2);
    set_lan(&f, u, "max_requests_per_client", 2);
    let data = f.synth("a.ndjson", 60, 7).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 60, Duration::from_secs(30)).unwrap();
    let lan = f.units[u].lan.clone();

    // A client that never finishes its headers is closed after the header-read timeout.
    let mut slow = TcpStream::connect(&lan).unwrap();
    slow.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let t = Instant::now();
    let mut buf = [0u8; 512];
    let n = slow.read(&mut buf).unwrap_or(0);
    let cut = t.elapsed();
    eprintln!("slow client cut after {cut:?} ({} bytes answered)", n);
    assert!(cut < Duration::from_secs(15), "slow client held {cut:?}");
    assert!(
        n == 0 || String::from_utf8_lossy(&buf[..n]).contains("408"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // Past the limit of requests in flight from one address: 429. Two lookups sit in the
    // browse queue (each several seconds); a third from the same address is refused.
    let nhs = nhs_numbers(&data).unwrap();
    let tok = f
        .clinician_token(0x6363, "555000111777", "BUSY, Test")
        .unwrap();
    for n in nhs.iter().take(30) {
        assert_eq!(lookup(&lan, Some(&tok), n), 200);
    }
    let held: Vec<_> = nhs[30..32]
        .iter()
        .map(|n| {
            let (lan, tok, n) = (lan.clone(), tok.clone(), n.clone());
            std::thread::spawn(move || lookup(&lan, Some(&tok), &n))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(800));
    let (code, body) = http_with("GET", &format!("http://{lan}/v1/status"), None, &[]).unwrap();
    assert_eq!(code, 429, "{body}");
    assert!(body.contains("too_many_requests"), "{body}");
    for h in held {
        assert_eq!(h.join().unwrap(), 200);
    }
    let (code, _) = http_with("GET", &format!("http://{lan}/v1/status"), None, &[]).unwrap();
    assert_eq!(code, 200);
}
