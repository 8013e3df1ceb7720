//! The audit repository's conformance suite: idempotent on (device, seq), conflicting replays
//! kept-first and reported, gaps and chain breaks stored and reported, verification, the
//! patient, staff and alert lists page by page. Every test runs against both backends, the
//! hub's sled database and PostgreSQL (`embedded::` and `postgres::` tests of the same name;
//! PostgreSQL as in `store.rs`: a database of its own per test, failing in CI when the server
//! cannot be reached). PostgreSQL-only: two hubs storing one unit's uploads at once store each
//! event exactly once.

use std::sync::Arc;

use edge_hub::audit::{event_fhir, event_json, AuditRepo};
use edge_hub::pg::PgStore;
use edge_proto::audit::GENESIS;
use edge_proto::ids::DeviceId;
use edge_proto::time::UnixMillis;
use tempfile::TempDir;

use crate::common::{chain, event, nhs};
use crate::store::TestDb;

const DEV: &str = "LAS-AMB-0001";
const STAFF: &str = "555000111222";

/// One backend under test.
pub enum Backend {
    Embedded {
        repo: Option<AuditRepo>,
        dir: TempDir,
    },
    Postgres {
        // Dropped before the database.
        repo: Option<AuditRepo>,
        db: TestDb,
    },
}

fn sled_repo(dir: &TempDir) -> AuditRepo {
    AuditRepo::open(&sled::open(dir.path()).unwrap()).unwrap()
}

fn pg_repo(db: &TestDb) -> AuditRepo {
    AuditRepo::postgres(Arc::new(PgStore::connect(&db.options()).unwrap()))
}

impl Backend {
    fn embedded() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        Backend::Embedded {
            repo: Some(sled_repo(&dir)),
            dir,
        }
    }

    fn postgres() -> Option<Backend> {
        let db = TestDb::create()?;
        Some(Backend::Postgres {
            repo: Some(pg_repo(&db)),
            db,
        })
    }

    fn repo(&self) -> &AuditRepo {
        match self {
            Backend::Embedded { repo, .. } | Backend::Postgres { repo, .. } => {
                repo.as_ref().unwrap()
            }
        }
    }

    /// Close the repository and open it again (a hub restart).
    fn reopen(&mut self) {
        match self {
            Backend::Embedded { repo, dir } => {
                drop(repo.take());
                *repo = Some(sled_repo(dir));
            }
            Backend::Postgres { repo, db } => {
                drop(repo.take());
                *repo = Some(pg_repo(db));
            }
        }
    }
}

conformance!(
    storing_is_idempotent_on_device_and_seq,
    a_conflicting_replay_keeps_the_first_event_and_is_reported,
    a_gap_is_stored_and_reported_and_closes_when_the_missing_events_arrive,
    a_trail_that_does_not_start_at_one_is_a_gap,
    a_broken_chain_is_reported_on_arrival_and_by_verification,
    a_tampered_event_fails_its_hash,
    events_of_another_device_are_refused,
    patient_and_staff_queries_find_their_events_newest_first,
    lists_page_newest_first_with_cursors_and_refuse_a_bad_cursor,
    stored_events_survive_reopening_the_database,
    appends_seal_the_next_event_of_the_chain_one_at_a_time,
);

fn dev() -> DeviceId {
    DeviceId::parse(DEV).unwrap()
}

fn storing_is_idempotent_on_device_and_seq(b: &mut Backend) {
    let repo = b.repo();
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

fn a_conflicting_replay_keeps_the_first_event_and_is_reported(b: &mut Backend) {
    let repo = b.repo();
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

fn a_gap_is_stored_and_reported_and_closes_when_the_missing_events_arrive(b: &mut Backend) {
    let repo = b.repo();
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

fn a_trail_that_does_not_start_at_one_is_a_gap(b: &mut Backend) {
    let repo = b.repo();
    let events = chain(DEV, 3, &nhs(0), STAFF);
    let out = repo.store(&dev(), &events[2..]).unwrap();
    assert_eq!(out.problems, ["gap: seq 1 to 2 missing"]);
    let v = repo.verify(DEV).unwrap();
    assert_eq!(v["gaps"], serde_json::json!([{"from": 1, "to": 2}]));
}

fn a_broken_chain_is_reported_on_arrival_and_by_verification(b: &mut Backend) {
    let repo = b.repo();
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

fn a_tampered_event_fails_its_hash(b: &mut Backend) {
    let repo = b.repo();
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

fn events_of_another_device_are_refused(b: &mut Backend) {
    let repo = b.repo();
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

fn patient_and_staff_queries_find_their_events_newest_first(b: &mut Backend) {
    let repo = b.repo();
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

fn stored_events_survive_reopening_the_database(b: &mut Backend) {
    let events = chain(DEV, 3, &nhs(0), STAFF);
    b.repo().store(&dev(), &events).unwrap();
    b.reopen();
    let repo = b.repo();
    assert_eq!(repo.device(DEV).unwrap().last_seq, 3);
    let out = repo.store(&dev(), &events).unwrap();
    assert_eq!((out.new, out.duplicates), (0, 3));
    assert_eq!(repo.query(b'p', &nhs(0), 100).unwrap().len(), 3);
}

fn lists_page_newest_first_with_cursors_and_refuse_a_bad_cursor(b: &mut Backend) {
    let repo = b.repo();
    // 25 reads of one patient by one staff member from two devices, interleaved in time, and
    // two break-glass reads among them.
    let mut a = Vec::new();
    let mut c = Vec::new();
    let mut prev = (GENESIS, GENESIS);
    for i in 0..25u64 {
        let t = 1_700_000_000_000 + i as i64 * 10;
        if i % 2 == 0 {
            let mut e = event(DEV, a.len() as u64 + 1, prev.0, Some(&nhs(0)), STAFF, t);
            if i == 4 || i == 20 {
                e.action = edge_proto::audit::AuditAction::BreakGlass;
                e.seal(e.seq, prev.0).unwrap();
            }
            prev.0 = e.hash;
            a.push(e);
        } else {
            let e = event(
                "LAS-AMB-0002",
                c.len() as u64 + 1,
                prev.1,
                Some(&nhs(0)),
                STAFF,
                t,
            );
            prev.1 = e.hash;
            c.push(e);
        }
    }
    repo.store(&dev(), &a).unwrap();
    repo.store(&DeviceId::parse("LAS-AMB-0002").unwrap(), &c)
        .unwrap();
    for kind in [b'p', b's'] {
        let who = if kind == b'p' {
            nhs(0)
        } else {
            STAFF.to_owned()
        };
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let page = repo
                .query_page(kind, &who, cursor.as_deref(), 10)
                .unwrap()
                .unwrap();
            pages += 1;
            seen.extend(page.events.iter().map(|e| e.recorded.0));
            match page.next_cursor {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        assert_eq!(pages, 3, "10 + 10 + 5");
        let mut want: Vec<i64> = (0..25).map(|i| 1_700_000_000_000 + i * 10).collect();
        want.reverse();
        assert_eq!(seen, want, "every event once, newest first, across devices");
    }
    let page = repo.alerts_page(None, 1).unwrap().unwrap();
    assert_eq!(page.events[0].recorded.0, 1_700_000_000_200);
    let rest = repo
        .alerts_page(page.next_cursor.as_deref(), 10)
        .unwrap()
        .unwrap();
    assert_eq!(rest.events.len(), 1);
    assert_eq!(rest.events[0].recorded.0, 1_700_000_000_040);
    assert!(rest.next_cursor.is_none());
    assert!(repo.alerts_page(Some("zz"), 10).unwrap().is_err());
    assert!(repo
        .query_page(b'p', &nhs(0), Some("00ff"), 10)
        .unwrap()
        .is_err());
    // The export walk: every event in the range, once.
    let mut n = 0;
    repo.each_between(
        UnixMillis(1_700_000_000_050),
        UnixMillis(1_700_000_000_150),
        |_| {
            n += 1;
            true
        },
    )
    .unwrap();
    assert_eq!(n, 10);
}

/// An event to append: sealed by the repository.
fn unsealed(i: u64) -> edge_proto::audit::AuditEvent {
    let mut e = event(
        "hub-127.0.0.1",
        1,
        GENESIS,
        Some(&nhs(0)),
        STAFF,
        1_700_000_000_000 + i as i64,
    );
    e.seq = 0;
    e
}

fn appends_seal_the_next_event_of_the_chain_one_at_a_time(b: &mut Backend) {
    let repo = b.repo();
    let hub = DeviceId::parse("hub-127.0.0.1").unwrap();
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let hub = &hub;
            s.spawn(move || {
                for i in 0..25 {
                    let out = repo.append(hub, unsealed(t * 100 + i)).unwrap();
                    assert_eq!(out.new, 1);
                    assert!(out.problems.is_empty(), "{:?}", out.problems);
                }
            });
        }
    });
    let v = repo.verify("hub-127.0.0.1").unwrap();
    assert_eq!(
        (v["events"].as_u64(), v["chain_ok"].as_bool()),
        (Some(100), Some(true))
    );
    assert_eq!(v["gaps"].as_array().unwrap().len(), 0);
}

/// Two hubs on one database, under one name, append fetch events to their shared chain at
/// once: every event is stored, in one unbroken chain.
#[test]
fn two_hubs_under_one_name_append_to_one_chain_in_turn() {
    let Some(db) = TestDb::create() else { return };
    let hubs = [pg_repo(&db), pg_repo(&db)];
    let dev = DeviceId::parse("hub-127.0.0.1").unwrap();
    std::thread::scope(|s| {
        for (h, repo) in hubs.iter().enumerate() {
            for t in 0..2u64 {
                let dev = &dev;
                s.spawn(move || {
                    for i in 0..30 {
                        let out = repo
                            .append(dev, unsealed(h as u64 * 1000 + t * 100 + i))
                            .unwrap();
                        assert!(out.problems.is_empty(), "{:?}", out.problems);
                    }
                });
            }
        }
    });
    let v = hubs[0].verify("hub-127.0.0.1").unwrap();
    assert_eq!(
        (v["events"].as_u64(), v["chain_ok"].as_bool()),
        (Some(120), Some(true))
    );
}

/// Two hubs on one database receive the same unit's uploads at once (the unit failed over and
/// replays what the first hub had not acknowledged): every event is stored exactly once, with
/// no problem reported, and the chain verifies.
#[test]
fn two_hubs_store_one_units_uploads_exactly_once() {
    let Some(db) = TestDb::create() else { return };
    let hubs = [pg_repo(&db), pg_repo(&db)];
    let events = chain(DEV, 400, &nhs(0), STAFF);
    std::thread::scope(|s| {
        for (i, hub) in hubs.iter().enumerate() {
            for round in 0..2 {
                let events = &events;
                s.spawn(move || {
                    // Batches of 25, in order, as a unit uploads; each hub twice over.
                    for batch in events.chunks(25) {
                        let out = hub.store(&dev(), batch).unwrap();
                        assert!(
                            out.problems.is_empty(),
                            "hub {i} round {round}: {:?}",
                            out.problems
                        );
                    }
                });
            }
        }
    });
    let d = hubs[1].device(DEV).unwrap();
    assert_eq!((d.events, d.last_seq), (400, 400));
    assert!(d.problems.is_empty(), "{:?}", d.problems);
    assert_eq!(hubs[0].query(b'p', &nhs(0), 1_000).unwrap().len(), 400);
    let v = hubs[0].verify(DEV).unwrap();
    assert_eq!(
        (v["events"].as_u64(), v["chain_ok"].as_bool()),
        (Some(400), Some(true))
    );
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

fn log_entry(i: usize) -> edge_hub::oplog::OperatorLogEntry {
    edge_hub::oplog::OperatorLogEntry {
        at: format!("2026-12-05T09:{:02}:00Z", i % 60),
        operator_id: Some("IG-0001".into()),
        operator_name: Some("PRIVACY, Officer".into()),
        role: Some("privacy".into()),
        token_id: Some(format!("{i:032x}")),
        method: "GET".into(),
        route: "/admin/audit".into(),
        query: Some(format!("patient={}", nhs(i as u32 % 3))),
        status: 200,
        refused: None,
        target: None,
    }
}

/// Append 25 entries through `logs` in turn; page them 10 at a time from each; every entry
/// once, newest first; a cursor that is not a number is refused.
fn operator_log_pages(logs: &[edge_hub::oplog::OperatorLog]) {
    for i in 0..25 {
        logs[i % logs.len()].append(log_entry(i)).unwrap();
    }
    for log in logs {
        assert_eq!(log.len().unwrap(), 25);
        let mut seen = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = log.page(cursor.as_deref(), 10).unwrap().unwrap();
            seen.extend(page.entries.iter().map(|e| e.token_id.clone().unwrap()));
            match page.next_cursor {
                Some(c) => cursor = Some(c),
                None => break,
            }
        }
        let want: Vec<String> = (0..25).rev().map(|i| format!("{i:032x}")).collect();
        assert_eq!(seen, want);
        assert!(log.page(Some("x"), 10).unwrap().is_none());
    }
}

#[test]
fn the_operator_log_pages_newest_first_in_sled() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    operator_log_pages(&[edge_hub::oplog::OperatorLog::open(&db).unwrap()]);
}

/// Two hubs on one database write one operator log, and each reads all of it.
#[test]
fn the_operator_log_in_postgres_is_one_log_for_every_hub() {
    let Some(db) = TestDb::create() else { return };
    let logs: Vec<_> = (0..2)
        .map(|_| {
            edge_hub::oplog::OperatorLog::postgres(Arc::new(
                PgStore::connect(&db.options()).unwrap(),
            ))
        })
        .collect();
    operator_log_pages(&logs);
}

/// The fetch budget shared by hubs on one database decides exactly as the in-memory budget of
/// one hub would, whichever hub each fetch arrives at: distinct patients counted once, alerts
/// at most once per ten minutes, refusal at the ceiling, the window sliding after an hour.
#[test]
fn the_fetch_budget_in_postgres_is_one_budget_for_every_hub() {
    use edge_hub::server::fetch_budget::{BudgetConfig, FetchBudget};
    let Some(db) = TestDb::create() else { return };
    let hubs = [
        PgStore::connect(&db.options()).unwrap(),
        PgStore::connect(&db.options()).unwrap(),
    ];
    let cfg = BudgetConfig {
        unit_per_hour: 3,
        staff_per_hour: 4,
        ceiling_factor: 2,
    };
    let mut one_hub = FetchBudget::new(cfg);
    let t0 = 1_800_000_000_000i64;
    // (minutes after t0, unit, staff, patient)
    let mut fetches: Vec<(i64, &str, &str, u32)> = Vec::new();
    for i in 0..9 {
        fetches.push((i, "LAS-AMB-0001", "S1", i as u32));
    }
    fetches.push((9, "LAS-AMB-0001", "S1", 2)); // already counted: not again
    fetches.push((10, "LAS-AMB-0002", "S1", 20)); // another unit, same staff member
    fetches.push((11, "LAS-AMB-0002", "S2", 21));
    fetches.push((15, "LAS-AMB-0001", "S2", 30)); // over the unit's budget 10+ min later: alert again
    fetches.push((70, "LAS-AMB-0001", "S1", 40)); // the window has moved on
    fetches.push((71, "LAS-AMB-0001", "S1", 41));
    let mut seen = Vec::new();
    for (k, (min, unit, staff, p)) in fetches.into_iter().enumerate() {
        let now = UnixMillis(t0 + min * 60_000);
        let patient = crate::common::nhs_number(p);
        let want = one_hub.check(now, unit, staff, &patient);
        let got = hubs[k % 2]
            .fetch_check(cfg, now, unit, staff, &patient)
            .unwrap();
        assert_eq!(
            got, want,
            "fetch {k} ({min} min, {unit}, {staff}, patient {p})"
        );
        seen.push(want);
    }
    // The sequence exercised each outcome: served quietly, served over budget with an alert,
    // over budget with the alert held back, refused at the ceiling.
    assert!(seen.iter().any(|d| d.serve && !d.over_budget));
    assert!(seen
        .iter()
        .any(|d| d.serve && d.over_budget && !d.alerts.is_empty()));
    assert!(seen
        .iter()
        .any(|d| d.serve && d.over_budget && d.alerts.is_empty()));
    assert!(seen.iter().any(|d| !d.serve && !d.alerts.is_empty()));
}

/// Reviews of alerts (the console's "mark reviewed"): one per event, found again by key, on
/// both backends; an event is read back by (device, seq).
fn reviews_keep_one_per_alert(repo: &AuditRepo, reviews: &edge_hub::review::Reviews) {
    let mut events = chain(DEV, 3, &nhs(0), STAFF);
    events[1].action = edge_proto::audit::AuditAction::BreakGlass;
    let prev = events[0].hash;
    events[1].seal(2, prev).unwrap();
    let h = events[1].hash;
    events[2].seal(3, h).unwrap();
    repo.store(&dev(), &events).unwrap();
    assert_eq!(repo.event(DEV, 2).unwrap().unwrap().hash, events[1].hash);
    assert_eq!(repo.event(DEV, 9).unwrap(), None);
    assert_eq!(repo.event("LAS-AMB-0404", 2).unwrap(), None);
    let r = edge_hub::review::Review {
        reviewed_at: "2026-12-05T12:00:00Z".into(),
        operator_id: "IG-0001".into(),
        operator_name: "OFFICER, Privacy".into(),
        note: "checked with the crew".into(),
    };
    assert!(reviews.record(DEV, 2, &r).unwrap());
    let other = edge_hub::review::Review {
        note: "a second opinion".into(),
        ..r.clone()
    };
    assert!(
        !reviews.record(DEV, 2, &other).unwrap(),
        "one review per alert"
    );
    let found = reviews
        .of(&[(DEV.to_owned(), 2), (DEV.to_owned(), 3)])
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[&(DEV.to_owned(), 2)], r);
}

#[test]
fn reviews_keep_one_per_alert_embedded() {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let repo = AuditRepo::open(&db).unwrap();
    let reviews = edge_hub::review::Reviews::open(&db).unwrap();
    reviews_keep_one_per_alert(&repo, &reviews);
}

#[test]
fn reviews_keep_one_per_alert_postgres() {
    let Some(db) = TestDb::create() else { return };
    let store = Arc::new(PgStore::connect(&db.options()).unwrap());
    let repo = AuditRepo::postgres(store.clone());
    let reviews = edge_hub::review::Reviews::Pg(store);
    reviews_keep_one_per_alert(&repo, &reviews);
}
