//! The hub store: ingest and assembly, the change feed, cohorts, devices, withdrawals,
//! merged records (aliases) and compaction.

use edge_hub::store::{HubStore, StoreError};
use edge_proto::ids::{CohortSpec, DeviceId};
use edge_proto::sync::{CohortFilter, FeedBody, HubFeed, WithdrawReason};
use edge_proto::time::UnixMillis;

use crate::common::{bundle, ingest, nhs, nhs_number, store, Patient, T0};

fn filter(specs: &[CohortSpec]) -> CohortFilter<'_> {
    CohortFilter {
        specs,
        critical_only: false,
    }
}

fn cohort(s: &str) -> Vec<CohortSpec> {
    vec![CohortSpec::parse(s).unwrap()]
}

#[test]
fn ingest_assembles_summaries_and_appends_each_to_the_feed() {
    let (_dir, store) = store();
    let (a, b) = (nhs(0), nhs(1));
    let text = format!(
        "{}\n{}\n",
        bundle(&Patient {
            allergies: &["Peanut allergy", "Latex allergy"],
            ..Patient::new(&a, "Adebayo", "SE15 4JU")
        }),
        bundle(&Patient::new(&b, "Brown", "N1 9GU"))
    );
    let r = ingest(&store, &text, T0);
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
}

#[test]
fn an_empty_store_has_an_empty_feed() {
    let (_dir, store) = store();
    assert_eq!(store.head().unwrap(), 0);
    assert_eq!(store.patient_count().unwrap(), 0);
    assert_eq!(store.oldest_retained_seq().unwrap(), 1);
    assert!(store.changes_after(0, 10).unwrap().is_empty());
    let r = ingest(&store, "", T0);
    assert_eq!((r.accepted, r.head), (0, 0));
    assert!(r.rejected.is_empty());
}

#[test]
fn the_same_bundle_again_makes_no_new_version_and_a_changed_one_does() {
    let (_dir, store) = store();
    let a = nhs(0);
    let first = bundle(&Patient::new(&a, "Adebayo", "SE15 4JU"));
    ingest(&store, &first, T0);
    let again = ingest(&store, &first, T0.plus_ms(1_000));
    assert_eq!((again.accepted, again.changed, again.head), (1, 0, 1));
    assert_eq!(store.summary(&nhs_number(0)).unwrap().unwrap().version, 1);

    let more = bundle(&Patient {
        allergies: &["Peanut allergy", "Penicillin allergy"],
        ..Patient::new(&a, "Adebayo", "SE15 4JU")
    });
    let r = ingest(&store, &more, T0.plus_ms(2_000));
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

#[test]
fn bad_lines_are_rejected_by_line_number_and_the_rest_applied() {
    let (_dir, store) = store();
    let a = nhs(0);
    let text = format!(
        "{}\n{{\"resourceType\": \"Bundle\", \"type\": \"collection\", \"entry\": []}}\n\n{}\n",
        bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")),
        r#"{"resourceType": "Patient", "id": "x"}"#,
    );
    let r = ingest(&store, &text, T0);
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

#[test]
fn what_was_ingested_survives_reopening_the_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = HubStore::open(dir.path()).unwrap();
        let a = nhs(0);
        ingest(
            &store,
            &bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")),
            T0,
        );
        store
            .update_device(&DeviceId::parse("LAS-AMB-0001").unwrap(), |d| {
                d.cursor = Some(1)
            })
            .unwrap();
    }
    let store = HubStore::open(dir.path()).unwrap();
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

#[test]
fn cohorts_select_current_records_by_postcode_and_practice_and_page_in_nhs_order() {
    let (_dir, store) = store();
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
    assert_eq!(ingest(&store, &text, T0).accepted, 3);

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

#[test]
fn an_objection_withdraws_the_record_from_the_feed_and_every_cohort() {
    let (_dir, store) = store();
    let (a, b) = (nhs(0), nhs(1));
    let text = format!(
        "{}\n{}",
        bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")),
        bundle(&Patient::new(&b, "Brown", "SE15 6AA"))
    );
    ingest(&store, &text, T0);

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
    let r = ingest(&store, &more, T0.plus_ms(10));
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

#[test]
fn a_former_nhs_number_is_merged_into_the_current_record_and_redirects() {
    let (_dir, store) = store();
    let (old, new) = (nhs(0), nhs(1));
    ingest(
        &store,
        &bundle(&Patient::new(&old, "Adebayo", "SE15 4JU")),
        T0,
    );
    assert_eq!(store.alias(&nhs_number(0)).unwrap(), None);

    let r = ingest(
        &store,
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
        &store,
        &bundle(&Patient::new(&old, "Adebayo", "SE15 4JU")),
        T0.plus_ms(3),
    );
    assert_eq!(r.accepted, 1);
    assert!(r.warnings.iter().any(|w| w.warning.contains("superseded")));
    assert!(store.summary(&nhs_number(1)).unwrap().is_some());
}

#[test]
fn devices_are_remembered_updated_and_listed() {
    let (_dir, store) = store();
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

#[test]
fn compaction_drops_only_feed_entries_older_than_the_retention() {
    let (_dir, store) = store();
    let (a, b) = (nhs(0), nhs(1));
    ingest(
        &store,
        &bundle(&Patient::new(&a, "Adebayo", "SE15 4JU")),
        T0,
    );
    let later = T0.plus_ms(60_000);
    ingest(&store, &bundle(&Patient::new(&b, "Brown", "N1 9GU")), later);

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
