//! The hub store's conformance suite: ingest and assembly, the change feed, cohorts, devices,
//! withdrawals, merged records (aliases), compaction and concurrent feed writers. Every test
//! function here runs against both backends, the embedded sled store and PostgreSQL
//! (`embedded::` and `postgres::` tests of the same name).
//!
//! A PostgreSQL test creates its own database (`kerbside_test_<pid>_<n>`) on
//! `KERBSIDE_TEST_PG` (default `postgres://postgres@127.0.0.1:5432/postgres`) and drops it
//! afterwards. Where the server cannot be reached the test is skipped with a note, except in CI
//! (`CI=true`), where it fails.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use edge_hub::pg::{PgOptions, PgStore};
use edge_hub::store::{FeedStore, HubStore, IngestReport, ParsedChunk, StoreError};
use edge_proto::ids::{CohortSpec, DeviceId};
use edge_proto::sync::{CohortFilter, FeedBody, WithdrawReason};
use edge_proto::time::UnixMillis;
use tempfile::TempDir;

use crate::common::{bundle, nhs, nhs_number, Patient, T0};

fn ingest(store: &dyn FeedStore, text: &str, now: UnixMillis) -> IngestReport {
    let lines = edge_hub::admin::bundles(text);
    store
        .ingest(lines, now, 1, &Default::default(), &mut |_, _| {})
        .unwrap()
}

/// The server the PostgreSQL tests create their databases on.
pub fn pg_admin_url() -> String {
    std::env::var("KERBSIDE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Run one statement on the admin database; `Err` when the server cannot be reached.
fn pg_admin(sql: &str) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut cfg: tokio_postgres::Config = pg_admin_url().parse().map_err(|e| format!("{e}"))?;
        cfg.connect_timeout(std::time::Duration::from_secs(5));
        let (client, conn) = cfg
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("{e}"))?;
        let task = tokio::spawn(conn);
        let r = client.batch_execute(sql).await.map_err(|e| format!("{e}"));
        drop(client);
        let _ = task.await;
        r
    })
}

/// A database of its own for one test, dropped with it.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// `None` (after a printed note) where PostgreSQL cannot be reached outside CI.
    pub fn create() -> Option<TestDb> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "kerbside_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        match pg_admin(&format!("CREATE DATABASE {name}")) {
            Ok(()) => Some(TestDb { name }),
            Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("PostgreSQL at {} is required in CI: {e}", pg_admin_url())
            }
            Err(e) => {
                eprintln!(
                    "note: PostgreSQL test skipped: cannot create a database at {}: {e}",
                    pg_admin_url()
                );
                None
            }
        }
    }

    pub fn options(&self) -> PgOptions {
        let base = pg_admin_url();
        let root = base.rsplit_once('/').map_or(base.as_str(), |(r, _)| r);
        PgOptions::new(format!("{root}/{}", self.name))
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let _ = pg_admin(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

/// One backend under test.
pub enum Backend {
    Embedded {
        store: Option<HubStore>,
        dir: TempDir,
    },
    Postgres {
        // Dropped before the database.
        store: Option<Box<PgStore>>,
        db: TestDb,
    },
}

impl Backend {
    fn embedded() -> Backend {
        let dir = tempfile::tempdir().unwrap();
        let store = HubStore::open(dir.path()).unwrap();
        Backend::Embedded {
            store: Some(store),
            dir,
        }
    }

    fn postgres() -> Option<Backend> {
        let db = TestDb::create()?;
        let store = PgStore::connect(&db.options()).unwrap();
        Some(Backend::Postgres {
            store: Some(Box::new(store)),
            db,
        })
    }

    pub fn store(&self) -> &dyn FeedStore {
        match self {
            Backend::Embedded { store, .. } => store.as_ref().unwrap(),
            Backend::Postgres { store, .. } => &**store.as_ref().unwrap(),
        }
    }

    /// Close the store and open it again (a hub restart).
    pub fn reopen(&mut self) {
        match self {
            Backend::Embedded { store, dir } => {
                drop(store.take());
                *store = Some(HubStore::open(dir.path()).unwrap());
            }
            Backend::Postgres { store, db } => {
                drop(store.take());
                *store = Some(Box::new(PgStore::connect(&db.options()).unwrap()));
            }
        }
    }

    /// A second store on the same data, as a second hub would open it (PostgreSQL only: an
    /// embedded store is one process's).
    pub fn another(&self) -> Option<Box<dyn FeedStore>> {
        match self {
            Backend::Embedded { .. } => None,
            Backend::Postgres { db, .. } => {
                Some(Box::new(PgStore::connect(&db.options()).unwrap()))
            }
        }
    }
}

conformance!(
    ingest_assembles_summaries_and_appends_each_to_the_feed,
    an_empty_store_has_an_empty_feed,
    the_same_bundle_again_makes_no_new_version_and_a_changed_one_does,
    bad_lines_are_rejected_by_line_number_and_the_rest_applied,
    what_was_ingested_survives_reopening_the_store,
    cohorts_select_current_records_by_postcode_and_practice_and_page_in_nhs_order,
    an_objection_withdraws_the_record_from_the_feed_and_every_cohort,
    a_former_nhs_number_is_merged_into_the_current_record_and_redirects,
    devices_are_remembered_updated_and_listed,
    compaction_drops_only_feed_entries_older_than_the_retention,
    concurrent_ingests_never_let_a_reader_skip,
    a_chunk_parsed_beforehand_commits_like_an_ingest,
);

fn filter(specs: &[CohortSpec]) -> CohortFilter<'_> {
    CohortFilter {
        specs,
        critical_only: false,
    }
}

fn cohort(s: &str) -> Vec<CohortSpec> {
    vec![CohortSpec::parse(s).unwrap()]
}

fn ingest_assembles_summaries_and_appends_each_to_the_feed(b: &mut Backend) {
    let store = b.store();
    let (a, b) = (nhs(0), nhs(1));
    let text = format!(
        "{}\n{}\n",
        bundle(&Patient {
            allergies: &["Peanut allergy", "Latex allergy"],
            ..Patient::new(&a, "Adebayo", "SE15 4JU")
        }),
        bundle(&Patient::new(&b, "Brown", "N1 9GU"))
    );
    let r = ingest(store, &text, T0);
    assert_eq!(r.accepted, 2, "{:?}", r.rejected);
    assert!(r.rejected.is_empty(), "{:?}", r.rejected);
    assert_eq!((r.changed, r.head, r.items_accepted), (2, 2, 3));
    assert_eq!(store.head().unwrap(), 2);
    assert_eq!(store.patient_count().unwrap(), 2);

    let s = store.summary(&nhs_number(0)).unwrap().unwrap();
    assert_eq!(s.patient.family, "Adebayo");
    assert_eq!(s.version, 1);
    let mut allergies: Vec<&str> = s
        .allergies
        .entries
        .iter()
        .map(|x| x.concept.label())
        .collect();
    allergies.sort_unstable();
    assert_eq!(allergies, ["Latex allergy", "Peanut allergy"]);
    assert!(store.summary(&nhs_number(5)).unwrap().is_none());

    let feed = store.changes_after(0, 10).unwrap();
    assert_eq!(feed.len(), 2);
    assert_eq!(
        feed.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2],
        "the feed is numbered from 1 in ingest order"
    );
    assert!(feed.iter().all(|e| e.version == 1 && e.previous.is_none()));
    assert!(matches!(feed[0].body, FeedBody::Record(_)));
    assert_eq!(feed[0].nhs, nhs_number(0));
    assert_eq!(store.changes_after(1, 10).unwrap().len(), 1);
    assert_eq!(store.changes_after(1, 10).unwrap()[0].nhs, nhs_number(1));
    assert!(store.changes_after(2, 10).unwrap().is_empty());
    assert_eq!(store.changes_after(0, 1).unwrap().len(), 1, "limit");
    assert_eq!(store.head_seq().unwrap(), 2);
    assert_eq!(store.oldest_retained_seq().unwrap(), 1);

    let cur = store.get(&nhs_number(1)).unwrap().unwrap();
    assert_eq!((cur.seq, cur.version), (2, 1));
    assert!(matches!(cur.body, FeedBody::Record(_)));
    assert!(store.get(&nhs_number(7)).unwrap().is_none());
    // When each entry was written (the console's "oldest change not yet at the unit").
    assert_eq!(store.written_at(1).unwrap(), Some(T0));
    assert_eq!(store.written_at(999).unwrap(), None);
}

fn an_empty_store_has_an_empty_feed(b: &mut Backend) {
    let store = b.store();
    assert_eq!(store.head().unwrap(), 0);
    assert_eq!(store.patient_count().unwrap(), 0);
    assert_eq!(store.oldest_retained_seq().unwrap(), 1);
    assert!(store.changes_after(0, 10).unwrap().is_empty());
    let r = ingest(store, "", T0);
    assert_eq!((r.accepted, r.head), (0, 0));
    assert!(r.rejected.is_empty());
}

fn the_same_bundle_again_makes_no_new_version_and_a_changed_one_does(b: &mut Backend) {
    let store = b.store();
    let a = nhs(0);
    let first = bundle(&Patient::new(&a, "Adebayo", "SE15 4JU"));
    ingest(store, &first, T0);
    let again = ingest(store, &first, T0.plus_ms(1_000));
    assert_eq!((again.accepted, again.changed, again.head), (1, 0, 1));
    assert_eq!(store.summary(&nhs_number(0)).unwrap().unwrap().version, 1);

    let more = bundle(&Patient {
        allergies: &["Peanut allergy", "Penicillin allergy"],
        ..Patient::new(&a, "Adebayo", "SE15 4JU")
    });
    let r = ingest(store, &more, T0.plus_ms(2_000));
    assert_eq!((r.accepted, r.changed, r.head), (1, 1, 2));
    let s = store.summary(&nhs_number(0)).unwrap().unwrap();
    assert_eq!((s.version, s.allergies.entries.len()), (2, 2));
    let feed = store.changes_after(1, 10).unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!((feed[0].seq, feed[0].version), (2, 2));
    assert!(
        feed[0].previous.is_some(),
        "a new version carries the previous routing facts"
    );
    let cur = store.get(&nhs_number(0)).unwrap().unwrap();
    assert_eq!((cur.seq, cur.version), (2, 2));
}

fn bad_lines_are_rejected_by_line_number_and_the_rest_applied(b: &mut Backend) {
    let store = b.store();
    let a = nhs(0);
    let text = format!(
        "{}\n{{\"resourceType\": \"Bundle\", \"type\": \"collection\", \"entry\": []}}\n\n{}\n",
        bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")),
        r#"{"resourceType": "Patient", "id": "x"}"#,
    );
    let r = ingest(store, &text, T0);
    assert_eq!(r.accepted, 1);
    let lines: Vec<u64> = r.rejected.iter().map(|x| x.line).collect();
    assert_eq!(lines, [2, 4], "{:?}", r.rejected);
    assert!(r
        .rejected
        .iter()
        .all(|x| x.entry.is_none() && !x.error.is_empty()));
    assert_eq!(store.head().unwrap(), 1);
    assert_eq!(store.patient_count().unwrap(), 1);
}

fn what_was_ingested_survives_reopening_the_store(b: &mut Backend) {
    {
        let store = b.store();
        let a = nhs(0);
        ingest(store, &bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")), T0);
        store
            .update_device(&DeviceId::parse("LAS-AMB-0001").unwrap(), |d| {
                d.cursor = Some(1)
            })
            .unwrap();
    }
    b.reopen();
    let store = b.store();
    assert_eq!(store.head().unwrap(), 1);
    assert_eq!(
        store
            .summary(&nhs_number(0))
            .unwrap()
            .unwrap()
            .patient
            .family,
        "Adebayo"
    );
    let d = store
        .device(&DeviceId::parse("LAS-AMB-0001").unwrap())
        .unwrap();
    assert_eq!(d.cursor, Some(1));
}

fn cohorts_select_current_records_by_postcode_and_practice_and_page_in_nhs_order(b: &mut Backend) {
    let store = b.store();
    let (a, b, c) = (nhs(0), nhs(1), nhs(2));
    let text = [
        bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")),
        bundle(&Patient {
            gp: Some("F84001"),
            ..Patient::new(&b, "Brown", "N1 9GU")
        }),
        bundle(&Patient::new(&c, "Chen", "SE15 6AA")),
    ]
    .join("\n");
    assert_eq!(ingest(store, &text, T0).accepted, 3);

    let all = store
        .current_metas(&filter(&cohort("all")), None, 100)
        .unwrap();
    assert_eq!(all.len(), 3);
    let nums: Vec<_> = all.iter().map(|m| m.meta.nhs).collect();
    let mut sorted = nums.clone();
    sorted.sort();
    assert_eq!(nums, sorted, "in NHS number order");

    let se15 = store
        .current_metas(&filter(&cohort("postcode:SE15")), None, 100)
        .unwrap();
    let got: Vec<_> = se15.iter().map(|m| m.meta.nhs).collect();
    assert_eq!(got, [nhs_number(0), nhs_number(2)]);
    assert!(se15
        .iter()
        .all(|m| m.meta.postcode_district.as_ref().unwrap().to_string() == "SE15"));

    let practice = store
        .current_metas(&filter(&cohort("practice:F84001")), None, 100)
        .unwrap();
    assert_eq!(
        practice.iter().map(|m| m.meta.nhs).collect::<Vec<_>>(),
        [nhs_number(1)]
    );
    assert!(store
        .current_metas(&filter(&cohort("postcode:E1")), None, 100)
        .unwrap()
        .is_empty());

    // Paging: one at a time, after the last one seen.
    let first = store
        .current_metas(&filter(&cohort("postcode:SE15")), None, 1)
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].meta.nhs, nhs_number(0));
    let next = store
        .current_metas(
            &filter(&cohort("postcode:SE15")),
            Some(&first[0].meta.nhs),
            1,
        )
        .unwrap();
    assert_eq!(next[0].meta.nhs, nhs_number(2));
    let end = store
        .current_metas(
            &filter(&cohort("postcode:SE15")),
            Some(&next[0].meta.nhs),
            1,
        )
        .unwrap();
    assert!(end.is_empty());
}

fn an_objection_withdraws_the_record_from_the_feed_and_every_cohort(b: &mut Backend) {
    let store = b.store();
    let (a, b) = (nhs(0), nhs(1));
    let text = format!(
        "{}\n{}",
        bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")),
        bundle(&Patient::new(&b, "Brown", "SE15 6AA"))
    );
    ingest(store, &text, T0);

    let seq = store
        .withdraw(&nhs_number(0), WithdrawReason::Objection, T0.plus_ms(1))
        .unwrap();
    assert_eq!(seq, Some(3));
    assert_eq!(store.head().unwrap(), 3);
    assert_eq!(
        store
            .withdraw(&nhs_number(0), WithdrawReason::Objection, T0.plus_ms(2))
            .unwrap(),
        None,
        "already withdrawn: nothing new in the feed"
    );
    assert_eq!(store.head().unwrap(), 3);
    assert!(matches!(
        store.withdraw(&nhs_number(9), WithdrawReason::Objection, T0),
        Err(StoreError::UnknownPatient)
    ));

    let last = store.changes_after(2, 10).unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!((last[0].seq, last[0].version), (3, 2));
    assert!(matches!(
        last[0].body,
        FeedBody::Withdrawn(WithdrawReason::Objection)
    ));
    assert!(last[0].meta.withdrawn);

    assert_eq!(store.patient_count().unwrap(), 1);
    let metas = store
        .current_metas(&filter(&cohort("all")), None, 100)
        .unwrap();
    assert_eq!(
        metas.iter().map(|m| m.meta.nhs).collect::<Vec<_>>(),
        [nhs_number(1)]
    );
    let cur = store.get(&nhs_number(0)).unwrap().unwrap();
    assert!(matches!(
        cur.body,
        FeedBody::Withdrawn(WithdrawReason::Objection)
    ));

    // A later update from a source is kept at the hub but goes to no unit.
    let more = bundle(&Patient {
        allergies: &["Peanut allergy", "Latex allergy"],
        ..Patient::new(&a, "Adebayo", "SE15 4JU")
    });
    let r = ingest(store, &more, T0.plus_ms(10));
    assert_eq!(
        (r.accepted, r.head),
        (1, 3),
        "no feed entry for a withdrawn patient"
    );
    assert_eq!(
        store
            .summary(&nhs_number(0))
            .unwrap()
            .unwrap()
            .allergies
            .entries
            .len(),
        2
    );
    assert!(matches!(
        store.get(&nhs_number(0)).unwrap().unwrap().body,
        FeedBody::Withdrawn(_)
    ));
}

fn a_former_nhs_number_is_merged_into_the_current_record_and_redirects(b: &mut Backend) {
    let store = b.store();
    let (old, new) = (nhs(0), nhs(1));
    ingest(
        store,
        &bundle(&Patient::new(&old, "Adebayo", "SE15 4JU")),
        T0,
    );
    assert_eq!(store.alias(&nhs_number(0)).unwrap(), None);

    let r = ingest(
        store,
        &bundle(&Patient {
            former: Some(&old),
            allergies: &["Latex allergy"],
            ..Patient::new(&new, "Adebayo", "SE15 4JU")
        }),
        T0.plus_ms(1),
    );
    assert_eq!(r.accepted, 1, "{:?}", r.rejected);
    assert!(
        r.warnings.iter().any(|w| w.warning.contains("merged")),
        "{:?}",
        r.warnings
    );
    assert_eq!(store.alias(&nhs_number(0)).unwrap(), Some(nhs_number(1)));
    assert_eq!(store.alias(&nhs_number(1)).unwrap(), None);
    assert_eq!(
        store.patient_count().unwrap(),
        1,
        "the old record is retired"
    );

    // The feed: the old record withdrawn as merged, the current one written.
    let feed = store.changes_after(1, 10).unwrap();
    assert!(feed
        .iter()
        .any(|e| e.nhs == nhs_number(0)
            && matches!(e.body, FeedBody::Withdrawn(WithdrawReason::Merged))));
    assert!(feed
        .iter()
        .any(|e| e.nhs == nhs_number(1) && matches!(e.body, FeedBody::Record(_))));

    // The current record holds what the old one had, and the old number answers it.
    let s = store.summary(&nhs_number(1)).unwrap().unwrap();
    let mut labels: Vec<&str> = s
        .allergies
        .entries
        .iter()
        .map(|x| x.concept.label())
        .collect();
    labels.sort_unstable();
    assert_eq!(labels, ["Latex allergy", "Peanut allergy"]);
    let via_old = store.get(&nhs_number(0)).unwrap().unwrap();
    assert_eq!(via_old.meta.nhs, nhs_number(1));
    assert!(matches!(via_old.body, FeedBody::Record(_)));
    // Read together (a baseline's read-ahead), each answers as it does alone: the former
    // number its current record, an unknown number nothing, a number asked twice twice.
    let asked = [nhs_number(0), nhs_number(1), nhs_number(7), nhs_number(1)];
    let alone: Vec<_> = asked.iter().map(|n| store.get(n).unwrap()).collect();
    assert_eq!(alone[2], None);
    assert_eq!(store.get_many(&asked).unwrap(), alone);

    // An objection given under the old number withdraws the current record.
    let seq = store
        .withdraw(&nhs_number(0), WithdrawReason::Objection, T0.plus_ms(2))
        .unwrap();
    assert!(seq.is_some());
    assert_eq!(store.patient_count().unwrap(), 0);
    assert!(matches!(
        store.get(&nhs_number(1)).unwrap().unwrap().body,
        FeedBody::Withdrawn(WithdrawReason::Objection)
    ));

    // A bundle still sent under the old number is filed under the current one.
    let r = ingest(
        store,
        &bundle(&Patient::new(&old, "Adebayo", "SE15 4JU")),
        T0.plus_ms(3),
    );
    assert_eq!(r.accepted, 1);
    assert!(r.warnings.iter().any(|w| w.warning.contains("superseded")));
    assert!(store.summary(&nhs_number(1)).unwrap().is_some());
}

fn devices_are_remembered_updated_and_listed(b: &mut Backend) {
    let store = b.store();
    let a = DeviceId::parse("LAS-AMB-0001").unwrap();
    let b = DeviceId::parse("LAS-AMB-0002").unwrap();
    let fresh = store.device(&a).unwrap();
    assert!(fresh.last_seen.is_none() && fresh.cursor.is_none());
    assert!(
        store.devices().unwrap().is_empty(),
        "reading creates nothing"
    );
    assert_eq!(store.cohort_override(&a).unwrap(), None);

    let d = store
        .update_device(&a, |d| {
            d.last_seen = Some(T0);
            d.cursor = Some(42);
            d.records_sent += 5;
        })
        .unwrap();
    assert_eq!((d.cursor, d.records_sent), (Some(42), 5));
    store.update_device(&a, |d| d.records_sent += 2).unwrap();
    assert_eq!(store.device(&a).unwrap().records_sent, 7);
    assert_eq!(store.device(&a).unwrap().last_seen, Some(T0));

    store
        .update_device(&b, |d| {
            d.cohort_override = Some(vec![
                "postcode:SE1,SE15".into(),
                "flagged".into(),
                "no such spec".into(),
            ])
        })
        .unwrap();
    let ids: Vec<String> = store
        .devices()
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(ids, ["LAS-AMB-0001", "LAS-AMB-0002"]);
    assert_eq!(
        store.cohort_override(&b).unwrap().unwrap(),
        [
            CohortSpec::parse("postcode:SE1,SE15").unwrap(),
            CohortSpec::Flagged
        ],
        "unparsable specs are left out"
    );
}

fn compaction_drops_only_feed_entries_older_than_the_retention(b: &mut Backend) {
    let store = b.store();
    let (a, b) = (nhs(0), nhs(1));
    ingest(store, &bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")), T0);
    let later = T0.plus_ms(60_000);
    ingest(store, &bundle(&Patient::new(&b, "Brown", "N1 9GU")), later);

    assert_eq!(store.compact(later, 120_000).unwrap(), 0, "both young");
    assert_eq!(store.oldest_retained_seq().unwrap(), 1);
    assert_eq!(store.compact(later, 30_000).unwrap(), 1);
    assert_eq!(store.oldest_retained_seq().unwrap(), 2);
    let feed = store.changes_after(0, 10).unwrap();
    assert_eq!(feed.iter().map(|e| e.seq).collect::<Vec<_>>(), [2]);
    // Current state is kept.
    assert_eq!(store.patient_count().unwrap(), 2);
    assert!(store.get(&nhs_number(0)).unwrap().is_some());
    assert_eq!(store.head().unwrap(), 2);
    assert_eq!(store.compact(later, 30_000).unwrap(), 0, "idempotent");
    assert_eq!(
        store.compact(UnixMillis(later.0 + 1_000_000), 0).unwrap(),
        1
    );
    assert_eq!(
        store.oldest_retained_seq().unwrap(),
        3,
        "head + 1: all dropped"
    );
}

/// Several writers ingest at once (on PostgreSQL through two stores, as two hubs would) while a
/// unit reads the feed after its cursor: it must receive every position exactly once, in order,
/// with no gap, and end at the head with every patient's last version.
fn concurrent_ingests_never_let_a_reader_skip(b: &mut Backend) {
    const WRITERS: u32 = 4;
    const ROUNDS: u32 = 12;
    const PER: u32 = 5;
    let second = b.another();
    let store = b.store();
    let stores: Vec<&dyn FeedStore> = match &second {
        Some(s) => vec![store, s.as_ref()],
        None => vec![store],
    };
    let done = AtomicBool::new(false);
    let received = std::thread::scope(|scope| {
        let reader = scope.spawn(|| {
            let mut cursor = 0u64;
            let mut got = Vec::new();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch = store.changes_after(cursor, 7).unwrap();
                for e in &batch {
                    assert_eq!(e.seq, cursor + 1, "the feed skipped or repeated a position");
                    cursor = e.seq;
                    got.push((e.seq, e.nhs, e.version));
                }
                if batch.is_empty() {
                    if finished {
                        return got;
                    }
                    std::thread::yield_now();
                }
            }
        });
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let s = stores[w as usize % stores.len()];
                scope.spawn(move || {
                    for round in 0..ROUNDS {
                        // Each writer has its own patients, and every writer also touches
                        // patients shared with the others (a new version each time).
                        let mut text = String::new();
                        for i in 0..PER {
                            let n = nhs(100 + w * PER + i);
                            let family = format!("Own{round}");
                            text.push_str(&bundle(&Patient::new(&n, &family, "SE15 4JU")));
                            text.push('\n');
                        }
                        let shared = nhs(round % 3);
                        let family = format!("Shared{w}x{round}");
                        text.push_str(&bundle(&Patient::new(&shared, &family, "N1 9GU")));
                        text.push('\n');
                        let r = ingest(s, &text, T0.plus_ms(i64::from(round)));
                        assert_eq!(r.accepted, u64::from(PER) + 1, "{:?}", r.rejected);
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
        reader.join().unwrap()
    });
    let head = store.head().unwrap();
    assert_eq!(received.len() as u64, head, "the reader got every position");
    assert_eq!(
        head,
        u64::from(WRITERS * ROUNDS * (PER + 1)),
        "every bundle changed its patient: one position each, none lost"
    );
    // The last version the reader saw of each patient is the store's current one.
    let mut last = std::collections::BTreeMap::new();
    for (_, n, v) in &received {
        last.insert(*n, *v);
    }
    for (n, v) in last {
        assert_eq!(store.get(&n).unwrap().unwrap().version, v);
    }
    let shared_versions: u64 = (0..3)
        .map(|i| store.summary(&nhs_number(i)).unwrap().unwrap().version)
        .sum();
    assert_eq!(
        shared_versions,
        u64::from(WRITERS * ROUNDS),
        "no shared patient's update was lost between writers"
    );
}

/// The pipelined ingest's two halves (`ParsedChunk::parse` on one thread, `commit_parsed` on
/// another) give what `ingest` gives: versions, feed positions, rejections by line.
fn a_chunk_parsed_beforehand_commits_like_an_ingest(b: &mut Backend) {
    let store = b.store();
    let (a, c) = (nhs(0), nhs(1));
    let first = bundle(&Patient::new(&a, "Adebayo", "SE15 4JU"));
    let second = bundle(&Patient::new(&c, "Brown", "N1 9GU"));
    let lines = [
        (1, first.as_str()),
        (2, "{\"resourceType\": \"Patient\"}"),
        (3, second.as_str()),
    ];
    let chunk = ParsedChunk::parse(&lines, T0, 2, &Default::default());
    assert_eq!(chunk.len(), 3);
    let mut report = IngestReport::default();
    store.commit_parsed(chunk, T0, &mut report).unwrap();
    store.flush().unwrap();
    assert_eq!((report.accepted, report.changed, report.head), (2, 2, 2));
    assert_eq!(report.rejected.len(), 1);
    assert_eq!(report.rejected[0].line, 2);
    let again = ParsedChunk::parse(&lines[..1], T0, 1, &Default::default());
    let mut report = IngestReport::default();
    store.commit_parsed(again, T0, &mut report).unwrap();
    assert_eq!((report.accepted, report.changed, report.head), (1, 0, 2));
    assert_eq!(store.changes_after(0, 10).unwrap().len(), 2);
    assert_eq!(store.summary(&nhs_number(1)).unwrap().unwrap().version, 1);
}

mod pg_only {
    //! What only the PostgreSQL backend has: migrations, connection errors, the URL rules.

    use super::*;

    #[test]
    fn migrations_apply_once_even_when_hubs_start_together() {
        let Some(db) = TestDb::create() else { return };
        let opts = db.options();
        let outcomes: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..3)
                .map(|_| s.spawn(|| edge_hub::pg::migrate(&opts).unwrap()))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let applied: usize = outcomes.iter().map(|o| o.applied.len()).sum();
        assert_eq!(applied, edge_hub::pg::migrate::MIGRATIONS.len());
        let latest = edge_hub::pg::migrate::latest();
        assert!(outcomes
            .iter()
            .all(|o| o.version == latest && o.unknown.is_empty()));
        let again = edge_hub::pg::migrate(&opts).unwrap();
        assert!(again.applied.is_empty());
        // A newer hub's (additive) migration: this one carries on and says so.
        pg_admin_on(
            &db,
            "INSERT INTO schema_migrations (version, name, sha256) VALUES (9999, 'future', 'x')",
        );
        let newer = edge_hub::pg::migrate(&opts).unwrap();
        assert_eq!(newer.unknown, [9999]);
        PgStore::open(&opts).unwrap();
        // A migration whose text differs from the binary's is refused.
        pg_admin_on(
            &db,
            "UPDATE schema_migrations SET sha256 = 'changed' WHERE version = 1",
        );
        let e = edge_hub::pg::migrate(&opts).unwrap_err().to_string();
        assert!(e.contains("differs"), "{e}");
    }

    /// The fleet documents (CRL, deny list, inventory) hubs share: a copy is replaced only by
    /// a higher version, whichever hub offers it and in whatever order.
    #[test]
    fn a_fleet_document_only_ever_moves_forward_whichever_hub_offers_it() {
        use edge_hub::pg::fleet::Stored;
        let Some(db) = TestDb::create() else { return };
        let a = PgStore::connect(&db.options()).unwrap();
        let b = PgStore::connect(&db.options()).unwrap();
        let t = edge_proto::time::UnixMillis(1_800_000_000_000);
        assert_eq!(a.fleet_document("crl").unwrap(), None);
        assert_eq!(
            a.store_fleet_document("crl", 5, b"five", "a", t).unwrap(),
            Stored::Stored
        );
        assert_eq!(
            b.store_fleet_document("crl", 5, b"five", "b", t).unwrap(),
            Stored::Same
        );
        assert_eq!(
            b.store_fleet_document("crl", 4, b"four", "b", t).unwrap(),
            Stored::Older { held: 5 }
        );
        assert_eq!(
            b.store_fleet_document("crl", 5, b"other five", "b", t)
                .unwrap(),
            Stored::Conflict
        );
        assert_eq!(
            b.fleet_document("crl").unwrap(),
            Some((5, b"five".to_vec()))
        );
        // Kinds are independent.
        assert_eq!(
            b.store_fleet_document("inventory", 1, b"{}", "b", t)
                .unwrap(),
            Stored::Stored
        );
        // Racing offers of versions 6..=29 from two hubs end at the highest, whatever the order.
        std::thread::scope(|s| {
            for (hub, odd) in [(&a, 1), (&b, 0)] {
                s.spawn(move || {
                    for v in (6u64..30).rev().filter(|v| v % 2 == odd) {
                        hub.store_fleet_document("crl", v, v.to_string().as_bytes(), "x", t)
                            .unwrap();
                    }
                });
            }
        });
        let held = a.fleet_documents().unwrap();
        assert_eq!(
            held.iter()
                .map(|h| (h.kind.as_str(), h.version))
                .collect::<Vec<_>>(),
            [("crl", 29), ("inventory", 1)]
        );
        assert_eq!(held[0].sha256.len(), 32);
        assert_eq!(a.fleet_document("crl").unwrap(), Some((29, b"29".to_vec())));
    }

    /// A cohort is read through the routing columns' indexes (migration 6): for a spread of
    /// cohorts, paged a few at a time, PostgreSQL answers exactly what filtering every patient
    /// answers — also for rows written before the columns existed (NULL, as an older hub
    /// leaves them), which a reconnecting hub then fills in.
    #[test]
    fn cohort_reads_through_the_routing_indexes_match_a_full_filter() {
        use edge_proto::sync::HubFeed;
        let Some(db) = TestDb::create() else { return };
        let store = PgStore::connect(&db.options()).unwrap();
        let cfg = kerbside_synth::Config::new(600, 4, 2, None).unwrap();
        let mut out = Vec::new();
        kerbside_synth::write_ndjson(&cfg, &mut out, 1, &mut |_| {}).unwrap();
        let r = ingest(&store, &String::from_utf8(out).unwrap(), T0);
        assert_eq!(r.accepted, 600, "{:?}", r.rejected);
        let everyone = store
            .current_metas(&filter(&cohort("all")), None, 10_000)
            .unwrap();
        let mut districts: Vec<String> = everyone
            .iter()
            .filter_map(|m| m.meta.postcode_district.as_ref().map(|d| d.to_string()))
            .collect();
        districts.sort();
        districts.dedup();
        let mut practices: Vec<String> = everyone
            .iter()
            .filter_map(|m| m.meta.gp_practice.as_ref().map(|p| p.to_string()))
            .collect();
        practices.sort();
        practices.dedup();
        assert!(
            districts.len() > 5 && practices.len() > 3,
            "{districts:?} {practices:?}"
        );
        let cohorts: Vec<Vec<CohortSpec>> = vec![
            cohort("flagged"),
            cohort(&format!("postcode:{}", districts[0])),
            cohort(&format!(
                "postcode:{},{},{}",
                districts[1], districts[3], districts[5]
            )),
            cohort(&format!("practice:{},{}", practices[0], practices[2])),
            vec![
                CohortSpec::parse(&format!("postcode:{},{}", districts[2], districts[4])).unwrap(),
                CohortSpec::parse(&format!("practice:{}", practices[1])).unwrap(),
                CohortSpec::Flagged,
            ],
            cohort("postcode:ZZ99"),
        ];
        let check = |store: &PgStore, when: &str| {
            for c in &cohorts {
                for critical_only in [false, true] {
                    let f = CohortFilter {
                        specs: c,
                        critical_only,
                    };
                    let want: Vec<_> = everyone
                        .iter()
                        .filter(|m| f.matches(&m.meta))
                        .map(|m| m.meta.nhs)
                        .collect();
                    let mut got = Vec::new();
                    let mut after = None;
                    loop {
                        let page = store.current_metas(&f, after.as_ref(), 7).unwrap();
                        got.extend(page.iter().map(|m| m.meta.nhs));
                        after = page.last().map(|m| m.meta.nhs);
                        if page.len() < 7 {
                            break;
                        }
                    }
                    assert_eq!(
                        got, want,
                        "{when}: cohort {c:?}, critical only {critical_only}"
                    );
                }
            }
        };
        check(&store, "routed");
        // Rows as a hub before migration 6 left them: every other patient unrouted.
        pg_admin_on(
            &db,
            "UPDATE patient_current SET district = NULL, practice = NULL, flagged = NULL, critical = NULL \
             WHERE right(nhs, 1)::int % 2 = 0",
        );
        check(&store, "half unrouted");
        let again = PgStore::connect(&db.options()).unwrap();
        check(&again, "filled in");
        assert_eq!(
            pg_count(
                &db,
                "SELECT count(*) FROM patient_current WHERE flagged IS NULL"
            ),
            0,
            "every row filled in"
        );
    }

    /// A client of its own on the test's database (outside the store), with the runtime
    /// that drives it.
    fn pg_client(db: &TestDb) -> (tokio::runtime::Runtime, tokio_postgres::Client) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async {
            let cfg: tokio_postgres::Config = db.options().url.parse().unwrap();
            let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
            tokio::spawn(conn);
            client
        });
        (rt, client)
    }

    fn pg_count(db: &TestDb, sql: &str) -> i64 {
        let (rt, c) = pg_client(db);
        rt.block_on(c.query_one(sql, &[])).unwrap().get(0)
    }

    fn pg_admin_on(db: &TestDb, sql: &str) {
        let (rt, c) = pg_client(db);
        rt.block_on(c.batch_execute(sql)).unwrap();
    }

    /// Live push across hubs: a change committed through one store is announced to a watcher
    /// on another (LISTEN/NOTIFY), a withdrawal too.
    #[test]
    fn a_change_written_through_one_hub_is_announced_to_another() {
        let Some(db) = TestDb::create() else { return };
        let a = PgStore::connect(&db.options()).unwrap();
        let b = PgStore::connect(&db.options()).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        b.watch_head(Box::new(move |h| {
            let _ = tx.send(h);
        }))
        .unwrap();
        let wait = std::time::Duration::from_secs(10);
        assert_eq!(rx.recv_timeout(wait).unwrap(), 0, "listening, at the head");
        let p = nhs(0);
        ingest(&a, &bundle(&Patient::new(&p, "Adebayo", "SE15 4JU")), T0);
        assert_eq!(rx.recv_timeout(wait).unwrap(), 1);
        a.withdraw(&nhs_number(0), WithdrawReason::Objection, T0)
            .unwrap();
        assert_eq!(rx.recv_timeout(wait).unwrap(), 2);
        // Nothing is announced for an ingest that changes nothing.
        ingest(&a, &bundle(&Patient::new(&p, "Adebayo", "SE15 4JU")), T0);
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(500))
            .is_err());
    }

    /// The hub calls its store from inside tokio tasks, many times per poll: the calls must not
    /// depend on that task's co-operative budget (a JoinHandle polled there spun forever once
    /// the budget was spent).
    #[test]
    fn calls_from_inside_a_busy_tokio_task_complete() {
        let Some(db) = TestDb::create() else { return };
        let store = std::sync::Arc::new(PgStore::connect(&db.options()).unwrap());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let s = store.clone();
        let n = rt.block_on(async move {
            tokio::spawn(async move {
                let mut n = 0;
                for _ in 0..1_000 {
                    n += FeedStore::head(&*s).unwrap();
                }
                n
            })
            .await
            .unwrap()
        });
        assert_eq!(n, 0);
    }

    #[test]
    fn a_database_without_the_schema_is_refused_until_migrated() {
        let Some(db) = TestDb::create() else { return };
        let e = PgStore::open(&db.options()).unwrap_err().to_string();
        assert!(e.contains("schema"), "{e}");
        PgStore::connect(&db.options()).unwrap();
        PgStore::open(&db.options()).unwrap();
    }

    #[test]
    fn an_unreachable_database_is_a_clear_error_within_the_timeout() {
        let mut opts = PgOptions::new("postgres://postgres@127.0.0.1:1/kerbside");
        opts.connect_timeout = std::time::Duration::from_secs(2);
        let t = std::time::Instant::now();
        let e = PgStore::connect(&opts).unwrap_err().to_string();
        assert!(e.contains("cannot connect to the database"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(10));
    }

    #[test]
    fn a_password_in_the_url_is_refused_and_never_echoed() {
        let opts = PgOptions::new("postgres://postgres:hunter2secret@127.0.0.1:5432/kerbside");
        let e = PgStore::connect(&opts).unwrap_err().to_string();
        assert!(e.contains("password_env"), "{e}");
        assert!(!e.contains("hunter2secret"), "{e}");
        let mut opts = PgOptions::new("postgres://postgres@127.0.0.1:1/kerbside");
        opts.password = Some("hunter2secret".into());
        opts.connect_timeout = std::time::Duration::from_secs(1);
        assert!(!format!("{opts:?}").contains("hunter2secret"));
        let e = PgStore::connect(&opts).unwrap_err().to_string();
        assert!(!e.contains("hunter2secret"), "{e}");
    }
}

/// The units' sampled history (the console's charts), on both backends: one sample per unit per
/// bucket, a connected unit's sample preferred to a disconnected one's (a hub the unit is on
/// knows its live cursor), read by unit or for the fleet in time order, dropped after a day.
mod history {
    use std::sync::Arc;

    use edge_hub::history::{fleet_points, History, Sample, KEEP_MS};
    use edge_hub::pg::PgStore;

    use super::TestDb;

    fn s(dev: &str, at: i64, lag: u64, backlog: u64, connected: bool) -> Sample {
        Sample {
            device_id: dev.into(),
            at,
            lag: Some(lag),
            behind_s: (lag > 0).then_some(60),
            audit_backlog: Some(backlog),
            records: Some(100),
            connected,
        }
    }

    fn keeps_a_day_one_sample_per_unit_and_bucket(h: &History) {
        let t0 = 1_800_000_000_000;
        let t1 = t0 + 300_000;
        h.record(
            &[
                s("LAS-AMB-0001", t0, 5, 2, false),
                s("LAS-AMB-0002", t0, 0, 0, true),
            ],
            t0,
        )
        .unwrap();
        // Another hub's samples of the same bucket: the connected view wins, either way round.
        h.record(
            &[
                s("LAS-AMB-0001", t0, 0, 0, true),
                s("LAS-AMB-0002", t0, 9, 9, false),
            ],
            t0,
        )
        .unwrap();
        h.record(&[s("LAS-AMB-0001", t1, 3, 7, false)], t1).unwrap();
        let one = h.since(Some("LAS-AMB-0001"), 0).unwrap();
        assert_eq!(
            one,
            vec![
                s("LAS-AMB-0001", t0, 0, 0, true),
                s("LAS-AMB-0001", t1, 3, 7, false)
            ]
        );
        let all = h.since(None, 0).unwrap();
        assert_eq!(all.len(), 3);
        assert_eq!(all[1], s("LAS-AMB-0002", t0, 0, 0, true));
        assert_eq!(h.since(None, t1).unwrap().len(), 1);
        let points = fleet_points(&all);
        assert_eq!(
            h.fleet(0).unwrap(),
            points,
            "grouped as read, the same totals"
        );
        assert_eq!(h.fleet(t1).unwrap(), points[1..]);
        assert_eq!(points.len(), 2);
        assert_eq!(
            (points[0].units, points[0].connected, points[0].behind),
            (2, 2, 0)
        );
        assert_eq!(
            (points[1].audit_backlog, points[1].max_lag, points[1].behind),
            (7, 3, 1)
        );
        // A day later the first bucket is gone, the second kept.
        h.record(&[], t0 + KEEP_MS + 1).unwrap();
        let left = h.since(None, 0).unwrap();
        assert_eq!(left, vec![s("LAS-AMB-0001", t1, 3, 7, false)]);
    }

    /// The feeds' ingest log: the latest [`KEEP`](edge_hub::ingest_log::KEEP), newest first,
    /// with the report's counts and first lines.
    fn the_ingest_log_keeps_the_latest_newest_first(log: &edge_hub::ingest_log::IngestLog) {
        use edge_hub::store::{IngestReport, Rejected};
        let keep = edge_hub::ingest_log::KEEP;
        for i in 0..keep + 5 {
            let report = IngestReport {
                accepted: i as u64,
                rejected: (0..150)
                    .map(|l| Rejected {
                        line: l,
                        entry: None,
                        error: "not JSON".into(),
                    })
                    .take(if i == keep + 4 { 150 } else { 0 })
                    .collect(),
                ..IngestReport::default()
            };
            let label = serde_json::json!({"feed": "rj1-epr", "file": format!("f{i}.ndjson")});
            let via = if i % 2 == 0 { "offline" } else { "admin-api" };
            log.record(&edge_hub::ingest_log::entry(
                edge_proto::time::UnixMillis(1_800_000_000_000 + i as i64),
                (via == "admin-api").then_some("OPS-0001"),
                via,
                &label,
                &report,
            ))
            .unwrap();
        }
        let latest = log.latest(3).unwrap();
        assert_eq!(latest.len(), 3);
        assert_eq!(latest[0]["accepted"], (keep + 4) as u64);
        assert_eq!(latest[0]["file"], format!("f{}.ndjson", keep + 4));
        assert_eq!(latest[0]["via"], "offline");
        assert_eq!(latest[0]["rejected_total"], 150);
        assert_eq!(latest[0]["rejected"].as_array().unwrap().len(), 100);
        assert_eq!(latest[1]["operator_id"], "OPS-0001");
        assert_eq!(latest[2]["accepted"], (keep + 2) as u64);
        let all = log.latest(10_000).unwrap();
        assert_eq!(all.len(), keep, "only the latest are kept");
        assert_eq!(all[keep - 1]["accepted"], 5);
    }

    #[test]
    fn the_ingest_log_keeps_the_latest_newest_first_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        the_ingest_log_keeps_the_latest_newest_first(
            &edge_hub::ingest_log::IngestLog::open(&db).unwrap(),
        );
    }

    #[test]
    fn the_ingest_log_keeps_the_latest_newest_first_postgres() {
        let Some(db) = TestDb::create() else { return };
        let store = Arc::new(PgStore::connect(&db.options()).unwrap());
        the_ingest_log_keeps_the_latest_newest_first(&edge_hub::ingest_log::IngestLog::Pg(store));
    }

    #[test]
    fn keeps_a_day_one_sample_per_unit_and_bucket_embedded() {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::open(dir.path()).unwrap();
        keeps_a_day_one_sample_per_unit_and_bucket(&History::open(&db).unwrap());
    }

    #[test]
    fn keeps_a_day_one_sample_per_unit_and_bucket_postgres() {
        let Some(db) = TestDb::create() else { return };
        let store = Arc::new(PgStore::connect(&db.options()).unwrap());
        keeps_a_day_one_sample_per_unit_and_bucket(&History::Pg(store));
    }
}
