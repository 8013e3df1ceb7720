//! The audit trail end to end: offline accesses reach the hub exactly once, in a verified
//! chain; kill -9 during append and upload loses nothing answered; a journal edited on disk is
//! detected on the unit and at the hub; bad uploads are handled as documented.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use edge_proto::ids::StaffRole;
use edge_proto::time::UnixMillis;
use kerbside_tests::fleet::{http_with, nhs_numbers, wait_for, Fleet};
use rand::RngExt;
use serde_json::Value;

fn clinician(f: &Fleet) -> String {
    let id = u128::try_from(kerbside_tests::fleet::now_ms()).unwrap();
    f.clinician_token(id, "555000111222", "PARAMEDIC, Test")
        .unwrap()
}

fn lookup(lan: &str, tok: &str, nhs: &str) -> Option<u16> {
    let auth = format!("Bearer {tok}");
    http_with(
        "GET",
        &format!("http://{lan}/v1/patients/{nhs}"),
        None,
        &[("Authorization", &auth), ("X-Incident-Ref", "CAD-1234")],
    )
    .ok()
    .map(|(c, _)| c)
}

fn audit_for(f: &Fleet, nhs: &str) -> Vec<Value> {
    let (code, body) = f
        .admin("GET", &format!("/admin/audit?patient={nhs}"), None)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["events"].as_array().unwrap().clone()
}

fn verify(f: &Fleet, dev: &str) -> Value {
    let (code, body) = f
        .admin("GET", &format!("/admin/audit/verify?device={dev}"), None)
        .unwrap();
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn offline_accesses_reach_the_hub_exactly_once() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0030", &[]).unwrap();
    let data = f.synth("a.ndjson", 300, 9).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 300, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    let tok = clinician(&f);
    f.stop_hub(false).unwrap();
    wait_for(Duration::from_secs(25), || {
        Ok(f.status(u)?["link"] == "down")
    })
    .unwrap();
    let lan = f.units[u].lan.clone();
    for i in 0..1000 {
        let who = if i % 5 < 3 { &nhs[0] } else { &nhs[1] };
        assert_eq!(lookup(&lan, &tok, who), Some(200));
    }
    let pending = f.status(u).unwrap()["audit_pending"].as_u64().unwrap();
    assert!(pending >= 1000, "pending {pending}");
    f.start_hub().unwrap();
    wait_for(Duration::from_secs(60), || {
        Ok(f.status(u)?["audit_pending"] == 0)
    })
    .unwrap();
    let a = audit_for(&f, &nhs[0]);
    let b = audit_for(&f, &nhs[1]);
    assert_eq!(a.len(), 600);
    assert_eq!(b.len(), 400);
    let ids: HashSet<&str> = a
        .iter()
        .chain(&b)
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1000, "no duplicates");
    for e in &a {
        assert_eq!(e["staff_id"], "555000111222");
        assert_eq!(e["role"], "clinical");
        assert_eq!(e["purpose"], "TREAT");
        assert_eq!(e["offline"], true);
        assert_eq!(e["action"], "read");
        assert_eq!(e["device_id"], "LAS-AMB-0030");
        assert_eq!(e["incident_ref"], "CAD-1234");
    }
    let v = verify(&f, "LAS-AMB-0030");
    assert_eq!(v["chain_ok"], true, "{v}");
    assert_eq!(v["gaps"].as_array().unwrap().len(), 0, "{v}");
    let s = f.status(u).unwrap();
    assert_eq!(v["last_seq"], s["audit_uploaded_seq"], "{v} {s}");
    assert_eq!(v["events"], v["last_seq"]);
    // The fleet view's audit backlog: the journal head the unit gave in its hello, less what
    // the hub has stored — none left.
    let row = f.device_row("LAS-AMB-0030").unwrap();
    assert_eq!(row["health"]["audit_last_seq"], v["last_seq"], "{row:#}");
    assert_eq!(row["audit_backlog"], 0, "{row:#}");
    // The FHIR export carries them too.
    let (code, body) = f.admin("GET", "/admin/audit/export", None).unwrap();
    assert_eq!(code, 200);
    assert!(body.lines().count() as u64 >= 1000);
    let first: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
    assert_eq!(first["resourceType"], "AuditEvent");
}

/// A busy unit never fills its journal with events the hub already holds: acknowledged
/// segments are pruned as the journal passes three quarters of its budget, so the unit keeps
/// answering (an access it cannot record is refused: a full journal would stop every lookup).
#[test]
fn a_busy_unit_prunes_what_the_hub_holds_and_keeps_answering() {
    const BUDGET: u64 = 1 << 20;
    const LOOKUPS: usize = 4_000;
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0033", &[]).unwrap();
    let cfg = f.units[u].dir.join("edge.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let (head, tail) = text.split_once("[audit]\n").expect("edge.toml has [audit]");
    let tail: String = tail
        .lines()
        .filter(|l| !l.starts_with("disk_budget_bytes") && !l.starts_with("segment_bytes"))
        .map(|l| format!("{l}\n"))
        .collect();
    let text =
        format!("{head}[audit]\ndisk_budget_bytes = {BUDGET}\nsegment_bytes = 65536\n{tail}");
    std::fs::write(&cfg, text).unwrap();
    let data = f.synth("a.ndjson", 50, 11).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 50, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    // Four crews' tokens, so no token passes its rate limit (a burst of 2,000).
    let base = u128::try_from(kerbside_tests::fleet::now_ms()).unwrap();
    let toks: Vec<String> = (0..4)
        .map(|k| {
            f.clinician_token(base + k, "555000111222", "PARAMEDIC, Test")
                .unwrap()
        })
        .collect();
    let lan = f.units[u].lan.clone();
    let journal = f.units[u].dir.join("data").join("journal");
    let on_disk = || -> u64 {
        std::fs::read_dir(&journal)
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().ends_with(".seg"))
            .map(|e| e.metadata().unwrap().len())
            .sum()
    };
    let mut most = 0;
    for i in 0..LOOKUPS {
        // A handful of patients, as one crew's shift: many distinct ones would trip the
        // bulk-browse defence, which is not what is tested here.
        let code = lookup(&lan, &toks[i % 4], &nhs[i % 5]);
        assert_eq!(code, Some(200), "lookup {i} (journal {} bytes)", on_disk());
        if i % 100 == 0 {
            most = most.max(on_disk());
        }
    }
    wait_for(Duration::from_secs(60), || {
        Ok(f.status(u)?["audit_pending"] == 0)
    })
    .unwrap();
    // More was recorded than the budget holds, and what stayed on disk fits it.
    let v = verify(&f, "LAS-AMB-0033");
    assert_eq!(v["chain_ok"], true, "{v}");
    assert_eq!(v["gaps"].as_array().unwrap().len(), 0, "{v}");
    assert!(v["events"].as_u64().unwrap() > LOOKUPS as u64, "{v}");
    let total = on_disk();
    assert!(
        most <= BUDGET && total <= BUDGET,
        "journal {most} / {total} bytes, budget {BUDGET}"
    );
    // The first segment (seq 1 on) went: pruned, not merely never written.
    assert!(
        !journal.join(format!("{:020}.seg", 1)).exists(),
        "the first segment is still there"
    );
    assert!(
        f.unit_log(u).contains("pruned uploaded segments"),
        "the unit pruned: {}",
        f.unit_log(u)
    );
}

#[test]
fn kill_minus_nine_during_append_and_upload_loses_nothing_answered() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0031", &[]).unwrap();
    let data = f.synth("a.ndjson", 200, 9).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 200, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    let tok = clinician(&f);
    let lan = f.units[u].lan.clone();
    let answered: Arc<BTreeMap<String, AtomicU64>> = Arc::new(
        nhs.iter()
            .take(4)
            .map(|n| (n.clone(), AtomicU64::new(0)))
            .collect(),
    );
    let trials = std::env::var("KILL_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50u64);
    let seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rng = kerbside_tests::rng(seed);
    for trial in 0..trials {
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..3)
            .map(|c| {
                let (stop, answered, lan, tok) =
                    (stop.clone(), answered.clone(), lan.clone(), tok.clone());
                std::thread::spawn(move || {
                    let keys: Vec<String> = answered.keys().cloned().collect();
                    let mut i = c;
                    while !stop.load(Ordering::SeqCst) {
                        let who = &keys[i % keys.len()];
                        if lookup(&lan, &tok, who) == Some(200) {
                            answered[who].fetch_add(1, Ordering::SeqCst);
                        }
                        i += 1;
                    }
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20 + rng.random_range(0..250)));
        f.stop_unit(u, true).unwrap();
        stop.store(true, Ordering::SeqCst);
        for c in clients {
            c.join().unwrap();
        }
        f.start_unit(u)
            .unwrap_or_else(|e| panic!("trial {trial} (seed {seed}): restart failed: {e}"));
    }
    wait_for(Duration::from_secs(60), || {
        Ok(f.status(u)?["audit_pending"] == 0)
    })
    .unwrap();
    let mut total = 0;
    for (n, c) in answered.iter() {
        let got = audit_for(&f, n);
        let reads = got.iter().filter(|e| e["outcome"] == "ok").count() as u64;
        let want = c.load(Ordering::SeqCst);
        total += want;
        // Every answered access is there; an access recorded but killed before its answer
        // reached the client may be there too (recorded before answering, by design).
        assert!(
            reads >= want,
            "{n}: hub has {reads} reads, clients received {want}"
        );
        let ids: HashSet<&str> = got
            .iter()
            .map(|e| e["event_id"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), got.len(), "no duplicates for {n}");
    }
    eprintln!("{trials} kill -9 trials, {total} answered accesses, all at the hub once");
    let v = verify(&f, "LAS-AMB-0031");
    assert_eq!(v["chain_ok"], true, "{v}");
    assert_eq!(v["gaps"].as_array().unwrap().len(), 0, "{v}");
}

#[test]
fn a_journal_edited_on_disk_is_detected_on_the_unit_and_at_the_hub() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0032", &[]).unwrap();
    let data = f.synth("a.ndjson", 50, 9).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    f.start_unit(u).unwrap();
    f.wait_records(u, 50, Duration::from_secs(30)).unwrap();
    let nhs = nhs_numbers(&data).unwrap();
    let tok = clinician(&f);
    // Offline, so the events are still only on the unit when we edit them.
    f.stop_hub(false).unwrap();
    wait_for(Duration::from_secs(25), || {
        Ok(f.status(u)?["link"] == "down")
    })
    .unwrap();
    let lan = f.units[u].lan.clone();
    for _ in 0..40 {
        assert_eq!(lookup(&lan, &tok, &nhs[0]), Some(200));
    }
    f.stop_unit(u, false).unwrap();
    // Flip one byte in the middle of the journal's segment.
    let jdir = find(&f.units[u].dir, "journal").expect("journal folder");
    let seg = std::fs::read_dir(&jdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .unwrap();
    let mut b = std::fs::read(&seg).unwrap();
    let mid = b.len() / 2;
    b[mid] ^= 0x40;
    std::fs::write(&seg, &b).unwrap();
    f.start_unit(u).unwrap();
    let s = f.status(u).unwrap();
    assert!(
        !s["audit_problems"].as_array().unwrap().is_empty(),
        "the unit reports the damaged record: {s}"
    );
    // At the hub: the missing record shows as a gap (never silently closed).
    f.start_hub().unwrap();
    wait_for(Duration::from_secs(30), || {
        Ok(f.status(u)?["audit_uploaded_seq"].as_u64().unwrap_or(0) > 30)
    })
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let v = verify(&f, "LAS-AMB-0032");
    assert!(
        !v["gaps"].as_array().unwrap().is_empty() || v["chain_ok"] == false,
        "the hub sees the damage: {v}"
    );
}

fn find(root: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(root).ok()? {
        let p = e.ok()?.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == name) {
                return Some(p);
            }
            if let Some(x) = find(&p, name) {
                return Some(x);
            }
        }
    }
    None
}

fn event(
    dev: &str,
    seq: u64,
    prev: edge_proto::audit::Hash32,
    nhs: &str,
) -> edge_proto::audit::AuditEvent {
    use edge_proto::audit::*;
    let mut e = AuditEvent {
        schema: AUDIT_SCHEMA,
        event_id: uuid_from_bytes([seq as u8; 16]),
        device_id: edge_proto::ids::DeviceId::parse(dev).unwrap(),
        seq: 0,
        prev_hash: Hash32::default(),
        hash: Hash32::default(),
        recorded: UnixMillis(kerbside_tests::fleet::now_ms()),
        clock_offset_ms: 0,
        action: AuditAction::Read,
        outcome: AuditOutcome::Ok,
        outcome_reason: None,
        staff_id: Some("555000111222".into()),
        staff_name: None,
        role: Some(StaffRole::Clinical),
        org_ods: None,
        auth: None,
        purpose: Purpose::Treat,
        break_glass_reason: None,
        patient: Some(edge_proto::nhs::NhsNumber::parse(nhs).unwrap()),
        data: AccessData::default(),
        client: ClientInfo::default(),
        incident_ref: None,
        offline: true,
    };
    e.seal(seq, prev).unwrap();
    e
}

/// Upload raw audit batches as the unit whose bundle is in `dir`; return each ack.
async fn upload(
    f: &Fleet,
    dir: &std::path::Path,
    batches: Vec<Vec<edge_proto::audit::AuditEvent>>,
) -> Vec<(u64, Vec<String>)> {
    use edge_proto::sync::{encode_frame, frame::FrameDecoder, ToHub, ToUnit};
    use quinn::crypto::rustls::QuicClientConfig;
    edge_provision::tls::install_default_provider();
    let cfg = edge_provision::config::UnitConfig::load(&dir.join("edge.toml")).unwrap();
    let tls = edge_provision::tls::unit_client_config(&cfg).unwrap();
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).unwrap(),
    )));
    let conn = ep
        .connect(f.hub_quic.parse().unwrap(), "127.0.0.1")
        .unwrap()
        .await
        .unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 65536];
    let mut acks = Vec::new();
    for events in batches {
        send.write_all(&encode_frame(&ToHub::Audit { events }).unwrap())
            .await
            .unwrap();
        loop {
            if let Some(ToUnit::AuditAck { upto_seq, problems }) = dec.next_message().unwrap() {
                acks.push((upto_seq, problems));
                break;
            }
            let n = recv.read(&mut buf).await.unwrap().unwrap();
            dec.push(&buf[..n]).unwrap();
        }
    }
    conn.close(0u32.into(), b"done");
    acks
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_audit_uploads_replay_break_gap() {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0033", &[]).unwrap();
    let data = f.synth("a.ndjson", 10, 9).unwrap();
    f.ingest_offline(&data).unwrap();
    f.start_hub().unwrap();
    let dir = f.units[u].dir.clone();
    let dev = "LAS-AMB-0033";
    let p = "9434765919";
    let e1 = event(dev, 1, edge_proto::audit::GENESIS, p);
    let e2 = event(dev, 2, e1.hash, p);
    let e3 = event(dev, 3, e2.hash, p);
    // A replayed batch is idempotent: acknowledged, stored once, no problem.
    let acks = upload(
        &f,
        &dir,
        vec![vec![e1.clone(), e2.clone()], vec![e1.clone(), e2.clone()]],
    )
    .await;
    assert_eq!(acks[0], (2, vec![]));
    assert_eq!(acks[1], (2, vec![]));
    // A broken chain (seq 3 not linked to seq 2) is stored and reported.
    let broken = event(dev, 3, edge_proto::audit::GENESIS, p);
    let acks = upload(&f, &dir, vec![vec![broken]]).await;
    assert_eq!(acks[0].0, 3);
    assert!(
        acks[0].1.iter().any(|m| m.contains("chain broken")),
        "{acks:?}"
    );
    // A seq gap is stored and reported.
    let e6 = event(dev, 6, e3.hash, p);
    let acks = upload(&f, &dir, vec![vec![e6]]).await;
    assert_eq!(acks[0].0, 6);
    assert!(acks[0].1.iter().any(|m| m.contains("gap")), "{acks:?}");
    // An event claiming another device is refused.
    let other = event("LAS-AMB-0099", 7, e3.hash, p);
    let acks = upload(&f, &dir, vec![vec![other]]).await;
    assert!(
        acks[0].1.iter().any(|m| m.contains("another device")),
        "{acks:?}"
    );
    // Verification reports both; the patient's trail lists exactly the four stored events.
    let v = tokio::task::block_in_place(|| verify(&f, dev));
    assert_eq!(v["chain_ok"], false, "{v}");
    assert_eq!(v["gaps"], serde_json::json!([{"from": 4, "to": 5}]), "{v}");
    assert_eq!(v["events"], 4);
    let trail = tokio::task::block_in_place(|| audit_for(&f, p));
    assert_eq!(trail.len(), 4);
}
