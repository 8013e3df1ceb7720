//! The sled audit store's write pattern, two ways: what `audit.rs` does (events, index entries
//! and the device summary in three trees, committed by one transaction) against the same
//! entries in one tree under key prefixes, committed by one atomic batch. Each upload batch is
//! flushed, as the hub does before it acknowledges. Prints a Markdown table of alternating runs.
//!
//! `cargo bench -p edge-hub --bench audit_store [-- BATCHES]` (default 400 batches of 500
//! events: 200,000 events each way, each run).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

const PER_BATCH: u64 = 500;
/// About an audit event's CBOR.
const EVENT_BYTES: usize = 330;
const DEVICE: &[u8] = b"LAS-AMB-0001";

/// An event's key and its two index keys (patient and staff member, time-ordered), shaped as
/// `audit.rs` writes them.
fn keys(seq: u64) -> [Vec<u8>; 3] {
    let mut e = DEVICE.to_vec();
    e.push(0);
    e.extend_from_slice(&seq.to_be_bytes());
    let time = (1_700_000_000_000u64 + seq).to_be_bytes();
    let index = |prefix: &[u8], who: u64| {
        let mut k = prefix.to_vec();
        k.extend_from_slice(who.to_string().as_bytes());
        k.push(0);
        k.extend_from_slice(&time);
        k.extend_from_slice(&e);
        k
    };
    let patient = index(b"P", 9_434_765_000 + seq % 15);
    let staff = index(b"S", seq % 1_000);
    [e, patient, staff]
}

fn prefixed(p: u8, k: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + k.len());
    out.push(p);
    out.extend_from_slice(k);
    out
}

fn run(one_tree: bool, batches: u64) -> Duration {
    let dir = tempfile::tempdir().unwrap();
    let db = sled::open(dir.path()).unwrap();
    let (events, index, devices) = (
        db.open_tree("audit_events").unwrap(),
        db.open_tree("audit_index").unwrap(),
        db.open_tree("audit_devices").unwrap(),
    );
    let one = db.open_tree("audit").unwrap();
    let value = vec![7u8; EVENT_BYTES];
    let summary = vec![1u8; 60];
    let t = Instant::now();
    for b in 0..batches {
        let mut ev = sled::Batch::default();
        let mut ix = sled::Batch::default();
        let mut all = sled::Batch::default();
        for seq in b * PER_BATCH + 1..=(b + 1) * PER_BATCH {
            let [e, p, s] = keys(seq);
            if one_tree {
                all.insert(prefixed(b'e', &e), value.clone());
                all.insert(prefixed(b'i', &p), &[][..]);
                all.insert(prefixed(b'i', &s), &[][..]);
            } else {
                ev.insert(e, value.clone());
                ix.insert(p, &[][..]);
                ix.insert(s, &[][..]);
            }
        }
        if one_tree {
            all.insert(prefixed(b'd', DEVICE), summary.clone());
            one.apply_batch(all).unwrap();
        } else {
            (&events, &index, &devices)
                .transaction(|(e, i, d)| {
                    e.apply_batch(&ev)?;
                    i.apply_batch(&ix)?;
                    d.insert(DEVICE, summary.as_slice())?;
                    Ok::<(), ConflictableTransactionError<()>>(())
                })
                .unwrap();
        }
        db.flush().unwrap();
    }
    t.elapsed()
}

fn main() {
    let batches: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(400);
    let n = batches * PER_BATCH;
    let per = |d: Duration| d.as_secs_f64() * 1e6 / n as f64;
    println!("sled audit store write pattern: {batches} batches of {PER_BATCH} events, a flush per batch\n");
    println!("| run | three trees, one transaction (`audit.rs`) | one tree, one atomic batch |");
    println!("| --- | --- | --- |");
    for r in 1..=2 {
        let tx = run(false, batches);
        let one = run(true, batches);
        println!(
            "| {r} | {:.1} µs an event | {:.1} µs an event |",
            per(tx),
            per(one)
        );
    }
}
