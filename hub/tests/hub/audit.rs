//! The audit repository: idempotent on (device, seq), conflicting replays kept-first and
//! reported, gaps and chain breaks stored and reported, verification, and the patient and
//! staff queries.

use edge_hub::audit::{event_fhir, event_json, AuditRepo};
use edge_proto::audit::GENESIS;
use edge_proto::ids::DeviceId;
use edge_proto::time::UnixMillis;
use tempfile::TempDir;

use crate::common::{chain, event, nhs};

const DEV: &str = "LAS-AMB-0001";
const STAFF: &str = "555000111222";

fn repo() -> (TempDir, sled::Db, AuditRepo) {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let repo = AuditRepo::open(&db).unwrap();
    (dir, db, repo)
}

fn dev() -> DeviceId {
    DeviceId::parse(DEV).unwrap()
}

#[test]
fn storing_is_idempotent_on_device_and_seq() {
    let (_dir, _db, repo) = repo();
    let events = chain(DEV, 3, &nhs(0), STAFF);
    let first = repo.store(&dev(), &events).unwrap();
    assert_eq!((first.new, first.duplicates, first.upto_seq), (3, 0, 3));
    assert!(first.problems.is_empty(), "{:?}", first.problems);

    let again = repo.store(&dev(), &events).unwrap();
    assert_eq!((again.new, again.duplicates, again.upto_seq), (0, 3, 3));
    assert!(again.problems.is_empty());

    let d = repo.device(DEV).unwrap();
    assert_eq!((d.events, d.last_seq), (3, 3));
    assert_eq!(d.last_hash, Some(events[2].hash));
    assert_eq!(
        repo.query(b'p', &nhs(0), 100).unwrap().len(),
        3,
        "no double rows"
    );

    // The next upload continues the chain.
    let mut more = chain(DEV, 5, &nhs(0), STAFF);
    let more = more.split_off(3);
    let next = repo.store(&dev(), &more).unwrap();
    assert_eq!((next.new, next.upto_seq), (2, 5));
    assert!(next.problems.is_empty(), "{:?}", next.problems);
    let v = repo.verify(DEV).unwrap();
    assert_eq!(v["events"], 5);
    assert_eq!(v["chain_ok"], true);
    assert_eq!(v["gaps"].as_array().unwrap().len(), 0);
}

#[test]
fn a_conflicting_replay_keeps_the_first_event_and_is_reported() {
    let (_dir, _db, repo) = repo();
    let events = chain(DEV, 2, &nhs(0), STAFF);
    repo.store(&dev(), &events).unwrap();
    // Another event claiming seq 2: about another patient.
    let forged = event(
        DEV,
        2,
        events[0].hash,
        Some(&nhs(1)),
        STAFF,
        1_700_000_000_099,
    );
    assert_ne!(forged.hash, events[1].hash);
    let out = repo.store(&dev(), &[forged]).unwrap();
    assert_eq!((out.new, out.duplicates, out.upto_seq), (0, 0, 2));
    assert_eq!(out.problems.len(), 1);
    assert!(
        out.problems[0].contains("seq 2") && out.problems[0].contains("kept the first"),
        "{:?}",
        out.problems
    );
    // The first is what is kept and found.
    assert_eq!(repo.query(b'p', &nhs(0), 100).unwrap().len(), 2);
    assert!(repo.query(b'p', &nhs(1), 100).unwrap().is_empty());
    let d = repo.device(DEV).unwrap();
    assert_eq!(d.events, 2);
    assert_eq!(d.problems.len(), 1, "kept with the device");
    let v = repo.verify(DEV).unwrap();
    assert_eq!(v["chain_ok"], true);
    assert_eq!(v["problems_on_arrival"].as_array().unwrap().len(), 1);
}

#[test]
fn a_gap_is_stored_and_reported_and_closes_when_the_missing_events_arrive() {
    let (_dir, _db, repo) = repo();
    let events = chain(DEV, 5, &nhs(0), STAFF);
    let out = repo
        .store(
            &dev(),
            &[events[0].clone(), events[1].clone(), events[4].clone()],
        )
        .unwrap();
    assert_eq!((out.new, out.upto_seq), (3, 5));
    assert_eq!(out.problems, ["gap: seq 3 to 4 missing"]);
    let v = repo.verify(DEV).unwrap();
    assert_eq!(v["gaps"], serde_json::json!([{"from": 3, "to": 4}]));
    assert_eq!(
        (v["first_seq"].as_u64(), v["last_seq"].as_u64()),
        (Some(1), Some(5))
    );

    // The missing ones arrive late (a unit's backlog): stored, no new problem.
    let out = repo.store(&dev(), &events[2..4]).unwrap();
    assert_eq!(out.new, 2);
    assert!(out.problems.is_empty(), "{:?}", out.problems);
    let v = repo.verify(DEV).unwrap();
    assert_eq!(v["gaps"].as_array().unwrap().len(), 0);
    assert_eq!(v["events"], 5);
    assert_eq!(v["chain_ok"], true);
    assert_eq!(repo.device(DEV).unwrap().last_seq, 5);
}

#[test]
fn a_trail_that_does_not_start_at_one_is_a_gap() {
    let (_dir, _db, repo) = repo();
    let events = chain(DEV, 3, &nhs(0), STAFF);
    let out = repo.store(&dev(), &events[2..]).unwrap();
    assert_eq!(out.problems, ["gap: seq 1 to 2 missing"]);
    let v = repo.verify(DEV).unwrap();
    assert_eq!(v["gaps"], serde_json::json!([{"from": 1, "to": 2}]));
}

#[test]
fn a_broken_chain_is_reported_on_arrival_and_by_verification() {
    let (_dir, _db, repo) = repo();
    let e1 = event(DEV, 1, GENESIS, Some(&nhs(0)), STAFF, 1_700_000_000_001);
    // Sealed after the wrong predecessor.
    let e2 = event(DEV, 2, GENESIS, Some(&nhs(0)), STAFF, 1_700_000_000_002);
    let e3 = event(DEV, 3, e2.hash, Some(&nhs(0)), STAFF, 1_700_000_000_003);
    let out = repo.store(&dev(), &[e1, e2, e3]).unwrap();
    assert_eq!(out.new, 3, "stored all the same");
    assert_eq!(out.problems.len(), 1);
    assert!(
        out.problems[0].contains("seq 2: chain broken"),
        "{:?}",
        out.problems
    );
    let v = repo.verify(DEV).unwrap();
    assert_eq!(v["breaks"], serde_json::json!([2]));
    assert_eq!(v["chain_ok"], false);
}

#[test]
fn a_tampered_event_fails_its_hash() {
    let (_dir, _db, repo) = repo();
    let mut events = chain(DEV, 2, &nhs(0), STAFF);
    events[1].staff_name = Some("someone else".into());
    let out = repo.store(&dev(), &events).unwrap();
    assert_eq!(out.new, 2);
    assert!(
        out.problems
            .iter()
            .any(|p| p.contains("seq 2: hash does not match")),
        "{:?}",
        out.problems
    );
    let v = repo.verify(DEV).unwrap();
    assert_eq!(v["breaks"], serde_json::json!([2]));
    assert_eq!(v["chain_ok"], false);
}

#[test]
fn events_of_another_device_are_refused() {
    let (_dir, _db, repo) = repo();
    let other = chain("LAS-AMB-0002", 1, &nhs(0), STAFF);
    let out = repo.store(&dev(), &other).unwrap();
    assert_eq!((out.new, out.upto_seq), (0, 0));
    assert!(
        out.problems[0].contains("another device"),
        "{:?}",
        out.problems
    );
    assert!(repo.query(b'p', &nhs(0), 10).unwrap().is_empty());
    assert_eq!(repo.verify("LAS-AMB-0002").unwrap()["events"], 0);
    assert_eq!(repo.verify(DEV).unwrap()["events"], 0);
}

#[test]
fn patient_and_staff_queries_find_their_events_newest_first() {
    let (_dir, _db, repo) = repo();
    let (p, q) = (nhs(0), nhs(1));
    // Device 1: seq 1 about p by A, seq 2 about q by B, seq 3 about p by B (newest).
    let e1 = event(DEV, 1, GENESIS, Some(&p), "A1", 1_000);
    let e2 = event(DEV, 2, e1.hash, Some(&q), "B2", 2_000);
    let e3 = event(DEV, 3, e2.hash, Some(&p), "B2", 3_000);
    // A login with no patient.
    let e4 = event(DEV, 4, e3.hash, None, "A1", 4_000);
    repo.store(&dev(), &[e1, e2, e3, e4]).unwrap();
    // Device 2 also about p, in between.
    let other = DeviceId::parse("LAS-AMB-0002").unwrap();
    let f1 = event("LAS-AMB-0002", 1, GENESIS, Some(&p), "C3", 2_500);
    repo.store(&other, &[f1]).unwrap();

    let about_p = repo.query(b'p', &p, 100).unwrap();
    let got: Vec<(String, u64)> = about_p
        .iter()
        .map(|e| (e.device_id.as_str().to_owned(), e.seq))
        .collect();
    assert_eq!(
        got,
        [
            (DEV.to_owned(), 3),
            ("LAS-AMB-0002".to_owned(), 1),
            (DEV.to_owned(), 1)
        ],
        "newest first, across devices"
    );
    assert_eq!(repo.query(b'p', &p, 2).unwrap().len(), 2, "limit");
    assert_eq!(repo.query(b'p', &q, 100).unwrap().len(), 1);
    assert!(repo.query(b'p', &nhs(2), 100).unwrap().is_empty());

    let by_b: Vec<u64> = repo
        .query(b's', "B2", 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(by_b, [3, 2]);
    let by_a: Vec<u64> = repo
        .query(b's', "A1", 100)
        .unwrap()
        .iter()
        .map(|e| e.seq)
        .collect();
    assert_eq!(by_a, [4, 1], "events without a patient are found by staff");
    // A staff id that is a prefix of another is not mistaken for it.
    assert!(repo.query(b's', "B", 100).unwrap().is_empty());

    let since: Vec<u64> = repo
        .since(UnixMillis(2_500), 100)
        .unwrap()
        .iter()
        .map(|e| e.recorded.0 as u64)
        .collect();
    let mut sorted = since.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, [2_500, 3_000, 4_000]);
    assert_eq!(repo.since(UnixMillis(0), 2).unwrap().len(), 2, "limit");
}

#[test]
fn stored_events_survive_reopening_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let events = chain(DEV, 3, &nhs(0), STAFF);
    {
        let db = sled::open(dir.path()).unwrap();
        let repo = AuditRepo::open(&db).unwrap();
        repo.store(&dev(), &events).unwrap();
    }
    let db = sled::open(dir.path()).unwrap();
    let repo = AuditRepo::open(&db).unwrap();
    assert_eq!(repo.device(DEV).unwrap().last_seq, 3);
    let out = repo.store(&dev(), &events).unwrap();
    assert_eq!((out.new, out.duplicates), (0, 3));
}

#[test]
fn events_render_as_json_and_as_fhir_audit_events() {
    let e = &chain(DEV, 1, &nhs(0), STAFF)[0];
    let j = event_json(e);
    assert_eq!(j["patient"], nhs(0));
    assert_eq!(j["seq"], 1);
    assert!(j["recorded"].as_str().unwrap().starts_with("2023-11-14T"));
    let f = event_fhir(e);
    assert_eq!(f["resourceType"], "AuditEvent");
    assert_eq!(f["action"], "R");
    assert_eq!(f["outcome"], "0");
    assert_eq!(f["entity"][0]["what"]["identifier"]["value"], nhs(0));
    assert_eq!(f["agent"][0]["who"]["identifier"]["value"], STAFF);
    assert_eq!(f["source"]["observer"]["display"], DEV);
}
