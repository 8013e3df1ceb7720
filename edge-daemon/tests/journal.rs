//! The audit journal from the outside: durability and continuity across reopen, group commit
//! under concurrency, recovery from torn tails and corruption, tamper detection, the upload
//! cursor, retention, the disk budget, and hostile file contents.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use edge_daemon::journal::format::{self, HEADER_BYTES};
use edge_daemon::journal::scan::{scan_bytes, ScanItem};
use edge_daemon::journal::{
    CipherError, Journal, JournalConfig, JournalError, ProblemKind, RecordCipher, Recovery,
};
use edge_proto::audit::{
    uuid_from_bytes, verify_chain, AccessData, AuditAction, AuditEvent, AuditOutcome, ChainError,
    ClientInfo, Hash32, Purpose, AUDIT_SCHEMA, GENESIS,
};
use edge_proto::ids::{DeviceId, StaffRole};
use edge_proto::time::UnixMillis;
use edge_proto::NhsNumber;
use proptest::prelude::*;

/// 2023-11-14T22:13:20Z: events are recorded from here on, one millisecond apart.
const T0: i64 = 1_700_000_000_000;

fn event(n: u64) -> AuditEvent {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&n.to_le_bytes());
    AuditEvent {
        schema: AUDIT_SCHEMA,
        event_id: uuid_from_bytes(id),
        device_id: DeviceId::parse("LAS-AMB-0001").unwrap(),
        seq: 0,
        prev_hash: GENESIS,
        hash: Hash32::default(),
        recorded: UnixMillis(T0 + n as i64),
        clock_offset_ms: -120,
        action: AuditAction::Read,
        outcome: AuditOutcome::Ok,
        outcome_reason: None,
        staff_id: Some("555000111222".into()),
        staff_name: Some("PARAMEDIC, Test".into()),
        role: Some(StaffRole::Clinical),
        org_ods: None,
        auth: Some("tok-1".into()),
        purpose: Purpose::Treat,
        break_glass_reason: None,
        patient: Some(NhsNumber::parse("9990000018").unwrap()),
        data: AccessData {
            version: Some(3),
            sections: vec!["allergies".into(), "medications".into()],
            cache_age_s: Some(60),
            candidates: None,
            interface: Some("rest".into()),
            asked_nhs: None,
            refusals: None,
            destination: None,
        },
        client: ClientInfo {
            address: Some("10.0.0.5".into()),
            identity: None,
        },
        incident_ref: Some("CAD-1".into()),
        offline: true,
    }
}

fn config(dir: &Path) -> JournalConfig {
    JournalConfig::new(dir.join("journal"))
}

fn open(cfg: &JournalConfig) -> (Journal, Recovery) {
    Journal::open(cfg.clone()).expect("journal opens")
}

/// Append `n` events (numbered from `from`) from this thread; returns them sealed.
fn append_n(j: &Journal, from: u64, n: u64) -> Vec<AuditEvent> {
    (from..from + n)
        .map(|i| j.append_blocking(event(i)).expect("append"))
        .collect()
}

fn read_all(j: &Journal) -> Vec<AuditEvent> {
    j.read_from(1, usize::MAX, usize::MAX).unwrap()
}

fn segment_files(cfg: &JournalConfig) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(&cfg.dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

/// The records of a segment file: (offset, seq, payload).
fn records(path: &Path) -> Vec<(u64, u64, Vec<u8>)> {
    scan_bytes(&fs::read(path).unwrap())
        .into_iter()
        .filter_map(|it| match it {
            ScanItem::Record {
                offset,
                seq,
                payload,
            } => Some((offset, seq, payload)),
            ScanItem::Bad { .. } => None,
        })
        .collect()
}

fn kinds(r: &Recovery) -> Vec<ProblemKind> {
    r.problems.iter().map(|p| p.kind.clone()).collect()
}

#[test]
fn append_and_reopen_continue_the_sequence_and_chain() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, rec) = open(&cfg);
    assert!(rec.is_clean());
    assert_eq!((j.last_seq(), j.last_hash()), (0, GENESIS));

    let first = append_n(&j, 1, 10);
    assert_eq!(
        first.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=10).collect::<Vec<_>>()
    );
    assert_eq!(first[0].prev_hash, GENESIS);
    assert_eq!(j.last_hash(), first[9].hash);
    j.close_blocking();

    let (j, rec) = open(&cfg);
    assert!(rec.is_clean(), "{:?}", rec.problems);
    assert_eq!(rec.last_seq, 10);
    assert_eq!(rec.records, 10);
    assert_eq!(rec.truncated_bytes, 0);
    assert_eq!(j.last_hash(), first[9].hash);
    let more = append_n(&j, 11, 5);
    assert_eq!(more[0].seq, 11);
    assert_eq!(more[0].prev_hash, first[9].hash);

    let all = read_all(&j);
    assert_eq!(all.len(), 15);
    assert_eq!(all[..10], first[..]);
    assert_eq!(verify_chain(&all, 1, GENESIS).unwrap(), j.last_hash());
    let s = j.status();
    assert_eq!(
        (s.last_seq, s.pending, s.appends, s.problems),
        (15, 15, 5, 0)
    );
    assert_eq!(
        segment_files(&cfg),
        vec![cfg.dir.join("00000000000000000001.seg")]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_share_fsyncs_and_stay_gap_free() {
    let d = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_bytes: 256 * 1024,
        ..config(d.path())
    };
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    const TASKS: u64 = 64;
    const EACH: u64 = 50;
    let mut handles = Vec::new();
    for t in 0..TASKS {
        let j = j.clone();
        handles.push(tokio::spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..EACH {
                let ev = j.append(event(t * 1000 + i)).await.unwrap();
                seqs.push(ev.seq);
            }
            seqs
        }));
    }
    let mut seqs = Vec::new();
    for h in handles {
        seqs.extend(h.await.unwrap());
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=TASKS * EACH).collect::<Vec<_>>());

    let s = j.status();
    assert_eq!(s.appends, TASKS * EACH);
    assert!(
        s.fsyncs < s.appends,
        "no group commit: {} fsyncs for {} appends",
        s.fsyncs,
        s.appends
    );
    assert!(s.max_batch_events > 1);
    eprintln!(
        "group commit: {} appends, {} fsyncs ({:.1} events per fsync, largest batch {})",
        s.appends,
        s.fsyncs,
        s.appends as f64 / s.fsyncs as f64,
        s.max_batch_events
    );
    assert!(s.segments > 1, "expected rollover at 256 KiB");

    let j2 = j.clone();
    let all = tokio::task::spawn_blocking(move || read_all(&j2))
        .await
        .unwrap();
    assert_eq!(all.len() as u64, TASKS * EACH);
    verify_chain(&all, 1, GENESIS).unwrap();
    j.close().await;

    // Everything acknowledged is there after reopening.
    let (j, rec) = tokio::task::spawn_blocking(move || Journal::open(cfg).unwrap())
        .await
        .unwrap();
    assert!(rec.is_clean(), "{:?}", rec.problems);
    assert_eq!(rec.last_seq, TASKS * EACH);
    j.close().await;
}

#[test]
fn segments_roll_over_and_are_named_by_first_seq() {
    let d = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_bytes: 2048,
        ..config(d.path())
    };
    let (j, _) = open(&cfg);
    let evs = append_n(&j, 1, 40);
    let files = segment_files(&cfg);
    assert!(files.len() > 3, "{files:?}");
    for f in &files {
        let named = format::parse_segment_file_name(f.file_name().unwrap().to_str().unwrap());
        let recs = records(f);
        assert_eq!(Some(recs[0].1), named);
        assert!(fs::metadata(f).unwrap().len() <= 2048);
    }
    // Batches that start mid-way find their place through the index and across segments.
    let got = j.read_from(17, 10, usize::MAX).unwrap();
    assert_eq!(got, evs[16..26]);
    j.close_blocking();
    let (j, rec) = open(&cfg);
    assert!(rec.is_clean(), "{:?}", rec.problems);
    assert_eq!(rec.segments, files.len());
    assert_eq!(append_n(&j, 41, 1)[0].seq, 41);
    assert_eq!(read_all(&j).len(), 41);
}

#[test]
fn a_torn_tail_is_truncated_and_appending_continues() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = open(&cfg);
    let evs = append_n(&j, 1, 5);
    j.close_blocking();
    let seg = &segment_files(&cfg)[0];
    let good_len = fs::metadata(seg).unwrap().len();

    // Half of a sixth record, as if power failed mid-write.
    let sixth = format::encode_record(6, &[0xA5; 300]);
    let mut bytes = fs::read(seg).unwrap();
    bytes.extend_from_slice(&sixth[..HEADER_BYTES + 100]);
    fs::write(seg, &bytes).unwrap();

    let (j, rec) = open(&cfg);
    assert!(rec.is_clean(), "{:?}", rec.problems);
    assert_eq!(rec.truncated_bytes, (HEADER_BYTES + 100) as u64);
    assert_eq!(fs::metadata(seg).unwrap().len(), good_len);
    assert_eq!(j.last_hash(), evs[4].hash);
    let next = j.append_blocking(event(6)).unwrap();
    assert_eq!((next.seq, next.prev_hash), (6, evs[4].hash));
    j.close_blocking();

    // A whole record with a bad CRC at the tail, and plain garbage, likewise.
    let mut bytes = fs::read(seg).unwrap();
    let mut bad = format::encode_record(7, b"not an event");
    let n = bad.len();
    bad[n - 1] ^= 0xff;
    bytes.extend_from_slice(&bad);
    bytes.extend_from_slice(b"\0\0\0garbage");
    fs::write(seg, &bytes).unwrap();
    let (j, rec) = open(&cfg);
    assert!(rec.is_clean(), "{:?}", rec.problems);
    assert_eq!(rec.truncated_bytes, (n + 10) as u64);
    assert_eq!(j.append_blocking(event(7)).unwrap().seq, 7);
    verify_chain(&read_all(&j), 1, GENESIS).unwrap();
}

#[test]
fn a_corrupted_middle_record_is_reported_and_kept() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = open(&cfg);
    append_n(&j, 1, 10);
    j.close_blocking();
    let seg = segment_files(&cfg)[0].clone();
    let (offset, seq, _) = records(&seg)[4].clone();
    assert_eq!(seq, 5);
    let mut bytes = fs::read(&seg).unwrap();
    bytes[offset as usize + HEADER_BYTES + 7] ^= 0x01;
    fs::write(&seg, &bytes).unwrap();

    let (j, rec) = open(&cfg);
    assert_eq!(
        kinds(&rec),
        vec![
            ProblemKind::BadBytes {
                bytes: (HEADER_BYTES + records(&seg)[4].2.len()) as u64
            },
            ProblemKind::Chain(ChainError::Gap {
                expected: 5,
                found: 6
            }),
        ]
    );
    assert_eq!(rec.problems[0].offset, offset);
    assert_eq!(rec.problems[0].file, "00000000000000000001.seg");
    assert_eq!(rec.truncated_bytes, 0);
    // Nothing was removed: the file is as it was, and the nine readable events are served.
    assert_eq!(fs::read(&seg).unwrap(), bytes);
    assert_eq!(j.status().problems, 2);
    let all = read_all(&j);
    assert_eq!(
        all.iter().map(|e| e.seq).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 6, 7, 8, 9, 10]
    );
    // The journal goes on after its last good record.
    assert_eq!(j.append_blocking(event(11)).unwrap().seq, 11);
}

/// Rewrite record `seq` of `seg` through `f`, with a fresh, valid CRC (as an attacker would).
fn rewrite(seg: &Path, seq: u64, f: impl Fn(&mut AuditEvent)) {
    let mut out = Vec::new();
    for (_, s, payload) in records(seg) {
        if s == seq {
            let mut ev: AuditEvent = edge_proto::cbor::from_slice(&payload).unwrap();
            f(&mut ev);
            out.extend(format::encode_record(
                s,
                &edge_proto::cbor::to_vec(&ev).unwrap(),
            ));
        } else {
            out.extend(format::encode_record(s, &payload));
        }
    }
    fs::write(seg, out).unwrap();
}

#[test]
fn a_tampered_event_is_reported_as_a_chain_break() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = open(&cfg);
    append_n(&j, 1, 8);
    j.close_blocking();
    let seg = segment_files(&cfg)[0].clone();

    // Someone changes who looked, and fixes up the CRC.
    rewrite(&seg, 4, |ev| ev.staff_id = Some("999999999999".into()));
    let (j, rec) = open(&cfg);
    assert_eq!(
        kinds(&rec),
        vec![ProblemKind::Chain(ChainError::BadHash { seq: 4 })]
    );
    j.close_blocking();

    // …and re-seals the event's own hash too: the next link breaks.
    rewrite(&seg, 4, |ev| {
        let prev = ev.prev_hash;
        ev.seal(4, prev).unwrap();
    });
    let (j, rec) = open(&cfg);
    assert_eq!(
        kinds(&rec),
        vec![ProblemKind::Chain(ChainError::BrokenLink { seq: 5 })]
    );
    j.close_blocking();

    // Deleting an event from the middle shows as a gap.
    let recs = records(&seg);
    let out: Vec<u8> = recs
        .iter()
        .filter(|r| r.1 != 6)
        .flat_map(|(_, s, p)| format::encode_record(*s, p))
        .collect();
    fs::write(&seg, out).unwrap();
    let (_j, rec) = open(&cfg);
    assert!(kinds(&rec).contains(&ProblemKind::Chain(ChainError::Gap {
        expected: 6,
        found: 7
    })));
}

#[test]
fn upload_cursor_survives_reopen() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = open(&cfg);
    let evs = append_n(&j, 1, 20);
    assert_eq!(j.read_from(1, 8, usize::MAX).unwrap(), evs[..8]);
    j.mark_uploaded(8).unwrap();
    assert_eq!((j.uploaded_seq(), j.pending()), (8, 12));

    // A byte budget bounds a batch, but a batch always carries at least one event.
    let one = edge_proto::cbor::to_vec(&evs[8]).unwrap().len();
    assert_eq!(j.read_from(9, 100, one * 3).unwrap(), evs[8..11]);
    assert_eq!(j.read_from(9, 100, 1).unwrap(), evs[8..9]);
    assert!(j.read_from(21, 100, usize::MAX).unwrap().is_empty());
    assert!(j.read_from(9, 0, usize::MAX).unwrap().is_empty());

    assert!(matches!(
        j.mark_uploaded(21),
        Err(JournalError::BeyondEnd { upto: 21, last: 20 })
    ));
    j.mark_uploaded(5).unwrap(); // never backwards
    assert_eq!(j.uploaded_seq(), 8);
    j.close_blocking();

    let (j, rec) = open(&cfg);
    assert!(rec.is_clean());
    assert_eq!((j.uploaded_seq(), j.pending()), (8, 12));
    assert_eq!(
        j.read_from(j.uploaded_seq() + 1, 100, usize::MAX).unwrap(),
        evs[8..]
    );
    j.mark_uploaded(20).unwrap();
    assert_eq!(j.pending(), 0);
    j.close_blocking();
    let (j, _) = open(&cfg);
    assert_eq!(j.uploaded_seq(), 20);
}

/// The uploader's reads of recent events come from memory (the writer keeps the last
/// `TAIL_EVENTS` it committed): the same events, and the same byte budget, as reading the
/// segments back after a reopen; a read older than memory keeps goes to disk and continues
/// through memory; what was pruned is read from neither.
#[test]
fn recent_events_read_from_memory_are_those_on_disk() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path());
    cfg.segment_bytes = 64 * 1024;
    cfg.disk_budget_bytes = 64 << 20;
    let (j, _) = open(&cfg);
    let n = 5_000u64; // more than memory keeps (4,096)
    let evs = append_n(&j, 1, n);
    let size = |e: &AuditEvent| edge_proto::cbor::to_vec(e).unwrap().len();
    let three: usize = evs[(n - 101) as usize..(n - 98) as usize]
        .iter()
        .map(size)
        .sum();
    let reads = |j: &Journal| -> Vec<Vec<AuditEvent>> {
        [
            (1, usize::MAX, usize::MAX), // older than memory: disk, then memory
            (n - 100, 10, usize::MAX),   // in memory
            (n - 100, 1_000, three),     // in memory, by bytes
            (n, 100, 1),                 // at least one
            (n + 1, 100, usize::MAX),    // past the end
        ]
        .iter()
        .map(|&(from, k, b)| j.read_from(from, k, b).unwrap())
        .collect()
    };
    let live = reads(&j);
    assert_eq!(live[0], evs);
    assert_eq!(live[1], evs[(n - 101) as usize..(n - 91) as usize]);
    assert_eq!(live[2], evs[(n - 101) as usize..(n - 98) as usize]);
    assert_eq!(live[3], evs[(n - 1) as usize..]);
    assert!(live[4].is_empty());
    j.close_blocking();
    let (j, _) = open(&cfg);
    assert_eq!(reads(&j), live, "the same from disk after a reopen");
    // Pruned (uploaded, past retention): gone from disk and from memory alike.
    let more = append_n(&j, n + 1, n);
    j.mark_uploaded(2 * n - 50).unwrap();
    let far = UnixMillis(i64::MAX / 2);
    assert!(j.prune(far).unwrap().segments_removed > 0);
    let left = j.read_from(1, usize::MAX, usize::MAX).unwrap();
    let first = left[0].seq;
    assert!(first > n + 1 && first <= 2 * n - 50, "first left {first}");
    assert_eq!(left.last(), more.last());
    assert_eq!(left.len() as u64, 2 * n - first + 1);
    // A read from a pruned seq that memory kept starts where the disk does.
    assert!(n + 1_000 < first);
    assert_eq!(
        j.read_from(n + 1_000, usize::MAX, usize::MAX).unwrap(),
        left
    );
    j.close_blocking();
    let (j, _) = open(&cfg);
    assert_eq!(j.read_from(1, usize::MAX, usize::MAX).unwrap(), left);
}

/// The upload marker is two slots, each in its own 4 KiB block, overwritten in place in turn
/// (no rename, no directory fsync per acknowledgement): the same file throughout, a torn write
/// to one slot leaves the previous marker in the other, and a one-slot marker from an earlier
/// version is read and replaced.
#[test]
fn the_upload_marker_is_rewritten_in_place_and_survives_a_torn_slot() {
    use std::os::unix::fs::MetadataExt as _;
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let marker = cfg.dir.join("uploaded");
    let (j, _) = open(&cfg);
    append_n(&j, 1, 6);
    j.mark_uploaded(2).unwrap();
    let ino = fs::metadata(&marker).unwrap().ino();
    assert_eq!(fs::metadata(&marker).unwrap().len(), 8192);
    j.mark_uploaded(3).unwrap();
    j.mark_uploaded(4).unwrap();
    assert_eq!(
        fs::metadata(&marker).unwrap().ino(),
        ino,
        "written in place"
    );
    j.close_blocking();
    let (j, rec) = open(&cfg);
    assert!(rec.is_clean());
    assert_eq!(j.uploaded_seq(), 4);
    j.close_blocking();

    // 2 went to slot 0, 3 to slot 1, 4 to slot 0: tear slot 0 and the marker is 3 again
    // (those events are uploaded again; the hub stores each once).
    let mut b = fs::read(&marker).unwrap();
    b[20] ^= 0xff;
    fs::write(&marker, &b).unwrap();
    let (j, rec) = open(&cfg);
    assert!(rec.is_clean(), "{:?}", kinds(&rec));
    assert_eq!(j.uploaded_seq(), 3);
    // The next mark goes into the torn slot, not over the good one.
    j.mark_uploaded(5).unwrap();
    let b = fs::read(&marker).unwrap();
    let mut torn_again = b.clone();
    torn_again[4096 + 20] ^= 0xff; // slot 1 still holds 3: spoil it, 5 must survive in slot 0
    fs::write(&marker, &torn_again).unwrap();
    j.close_blocking();
    let (j, _) = open(&cfg);
    assert_eq!(j.uploaded_seq(), 5);
    j.close_blocking();

    // An earlier version's one-slot marker: read as it is, then replaced by two slots.
    fs::write(&marker, &b[..49]).unwrap();
    let (j, rec) = open(&cfg);
    assert!(rec.is_clean(), "{:?}", kinds(&rec));
    assert_eq!(j.uploaded_seq(), 5);
    j.mark_uploaded(6).unwrap();
    assert_eq!(fs::metadata(&marker).unwrap().len(), 8192);
    j.close_blocking();
    let (j, _) = open(&cfg);
    assert_eq!((j.uploaded_seq(), j.pending()), (6, 0));
}

#[test]
fn a_damaged_upload_marker_restarts_upload_from_the_start() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = open(&cfg);
    append_n(&j, 1, 3);
    j.mark_uploaded(2).unwrap();
    j.close_blocking();
    fs::write(cfg.dir.join("uploaded"), b"junk").unwrap();
    let (j, rec) = open(&cfg);
    assert!(matches!(kinds(&rec)[..], [ProblemKind::UploadMarker(_)]));
    assert_eq!((j.uploaded_seq(), j.pending()), (0, 3));
}

#[test]
fn a_lost_tail_the_hub_already_has_never_reuses_its_seqs() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = open(&cfg);
    let evs = append_n(&j, 1, 5);
    j.mark_uploaded(5).unwrap();
    j.close_blocking();
    // Lose record 5 entirely (cut exactly at its start).
    let seg = segment_files(&cfg)[0].clone();
    let cut = records(&seg)[4].0;
    let f = fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(cut).unwrap();
    drop(f);

    let (j, rec) = open(&cfg);
    assert_eq!(
        kinds(&rec),
        vec![ProblemKind::UploadedBeyondEnd {
            uploaded: 5,
            last: 4
        }]
    );
    assert_eq!((j.last_seq(), j.last_hash()), (5, evs[4].hash));
    let next = j.append_blocking(event(6)).unwrap();
    assert_eq!((next.seq, next.prev_hash), (6, evs[4].hash));
}

#[test]
fn prune_removes_only_uploaded_segments_past_retention() {
    let d = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_bytes: 2048,
        retention: Duration::from_secs(3600),
        ..config(d.path())
    };
    let (j, _) = open(&cfg);
    append_n(&j, 1, 30);
    let files = segment_files(&cfg);
    assert!(files.len() >= 4, "{files:?}");
    let last_of = |f: &PathBuf| records(f).last().unwrap().1;
    // Upload everything in the first two segments and part of the third.
    let end_of_second = last_of(&files[1]);
    j.mark_uploaded(end_of_second + 1).unwrap();

    let early = UnixMillis(T0 + 1000);
    let late = UnixMillis(T0 + 2 * 3_600_000);
    assert_eq!(j.prune(early).unwrap().segments_removed, 0);
    assert_eq!(segment_files(&cfg), files);

    let before = j.status().bytes;
    let r = j.prune(late).unwrap();
    assert_eq!(r.segments_removed, 2);
    assert_eq!(r.removed_for_space, 0);
    assert_eq!(segment_files(&cfg), files[2..]);
    assert_eq!(j.status().bytes, before - r.bytes_freed);
    assert_eq!(j.prune(late).unwrap().segments_removed, 0);

    // Reading from an acknowledged seq starts at what is left; the rest is untouched.
    let left = j.read_from(1, usize::MAX, usize::MAX).unwrap();
    assert_eq!(left[0].seq, end_of_second + 1);
    assert_eq!(left.last().unwrap().seq, 30);

    // All uploaded: everything but the current segment goes.
    j.mark_uploaded(30).unwrap();
    j.prune(late).unwrap();
    assert_eq!(segment_files(&cfg), files[files.len() - 1..]);
    j.close_blocking();

    // A pruned journal reopens clean and carries on.
    let (j, rec) = open(&cfg);
    assert!(rec.is_clean(), "{:?}", rec.problems);
    assert_eq!(j.append_blocking(event(31)).unwrap().seq, 31);
}

#[test]
fn a_full_journal_refuses_appends_until_pruned() {
    let d = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_bytes: 1024,
        disk_budget_bytes: 4096,
        retention: Duration::from_secs(3600),
        ..config(d.path())
    };
    let (j, _) = open(&cfg);
    let mut ok = 0u64;
    let err = loop {
        match j.append_blocking(event(ok + 1)) {
            Ok(ev) => {
                ok += 1;
                assert_eq!(ev.seq, ok);
            }
            Err(e) => break e,
        }
        assert!(ok < 100, "budget never reached");
    };
    assert!(
        matches!(
            err,
            JournalError::Full {
                budget_bytes: 4096,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("cannot be audited"));
    assert!(ok > 2);
    // Refused appends consume no seq and leave the disk alone.
    assert!(matches!(
        j.append_blocking(event(999)),
        Err(JournalError::Full { .. })
    ));
    let s = j.status();
    assert_eq!(s.last_seq, ok);
    assert!(s.bytes <= 4096);
    assert_eq!(s.rejected_full, 2);

    // Not uploaded: nothing can go, even if old.
    assert_eq!(
        j.prune(UnixMillis(T0 + 10 * 3_600_000))
            .unwrap()
            .segments_removed,
        0
    );
    // Uploaded (though recent): pruned for space, and appends resume.
    j.mark_uploaded(ok).unwrap();
    let r = j.prune(UnixMillis(T0)).unwrap();
    assert!(r.segments_removed > 0);
    assert_eq!(r.removed_for_space, r.segments_removed);
    assert_eq!(j.append_blocking(event(ok + 1)).unwrap().seq, ok + 1);
}

#[test]
fn an_event_too_large_for_a_record_is_refused_without_using_a_seq() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = open(&cfg);
    append_n(&j, 1, 1);
    let mut big = event(2);
    big.outcome_reason = Some("x".repeat(format::MAX_PAYLOAD_BYTES));
    assert!(matches!(
        j.append_blocking(big),
        Err(JournalError::TooLarge(_))
    ));
    assert_eq!(j.append_blocking(event(3)).unwrap().seq, 2);
}

/// A toy cipher (XOR with the seq) standing in for encryption at rest.
struct XorBySeq;
impl RecordCipher for XorBySeq {
    fn seal(&self, seq: u64, plain: &[u8]) -> Vec<u8> {
        let mut v: Vec<u8> = plain.iter().map(|b| b ^ (seq as u8 | 0x80)).collect();
        v.push(0xEE);
        v
    }
    fn open(&self, seq: u64, sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        match sealed.split_last() {
            Some((0xEE, body)) => Ok(body.iter().map(|b| b ^ (seq as u8 | 0x80)).collect()),
            _ => Err(CipherError("bad tag".into())),
        }
    }
}

#[test]
fn payloads_pass_through_the_record_cipher() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = Journal::open_with_cipher(cfg.clone(), Arc::new(XorBySeq)).unwrap();
    let evs = append_n(&j, 1, 3);
    assert_eq!(read_all(&j), evs);
    j.close_blocking();
    let raw = fs::read(&segment_files(&cfg)[0]).unwrap();
    assert!(!raw.windows(10).any(|w| w == b"9990000018"));

    let (j, rec) = Journal::open_with_cipher(cfg.clone(), Arc::new(XorBySeq)).unwrap();
    assert!(rec.is_clean(), "{:?}", rec.problems);
    j.close_blocking();
    // Without the key the records are unreadable, and say so.
    let (j, rec) = open(&cfg);
    assert_eq!(
        kinds(&rec),
        (1..=3)
            .map(|seq| ProblemKind::Unreadable { seq })
            .collect::<Vec<_>>()
    );
    assert_eq!(j.last_seq(), 3);
    assert!(read_all(&j).is_empty());
    assert_eq!(j.status().unreadable_skipped, 3);
}

#[test]
fn one_writer_per_directory_and_closed_means_closed() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = open(&cfg);
    assert!(matches!(
        Journal::open(cfg.clone()),
        Err(JournalError::AlreadyOpen(_))
    ));
    let other = j.clone();
    j.close_blocking();
    assert!(matches!(
        other.append_blocking(event(1)),
        Err(JournalError::Closed)
    ));
    let (_j, _) = open(&cfg);
}

#[tokio::test(flavor = "current_thread")]
async fn blocking_calls_work_even_on_a_runtime_thread() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let (j, _) = Journal::open(cfg.clone()).unwrap();
    // Not recommended (it blocks the runtime for an fsync), but it must not panic or deadlock.
    assert_eq!(j.append_blocking(event(1)).unwrap().seq, 1);
    assert_eq!(j.append(event(2)).await.unwrap().seq, 2);
    let j2 = j.clone();
    let ev = tokio::task::spawn_blocking(move || j2.append_blocking(event(3)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev.seq, 3);
    j.close_blocking();
    let (_j, rec) = Journal::open(cfg).unwrap();
    assert_eq!(rec.last_seq, 3);
}

#[test]
fn bad_configuration_is_refused() {
    let d = tempfile::tempdir().unwrap();
    let cfg = JournalConfig {
        segment_bytes: 0,
        ..config(d.path())
    };
    assert!(matches!(Journal::open(cfg), Err(JournalError::Config(_))));
}

fn tail_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..2048),
        // Bytes that start like a record, to exercise the length and CRC checks.
        (
            any::<u64>(),
            any::<u32>(),
            proptest::collection::vec(any::<u8>(), 0..600)
        )
            .prop_map(|(seq, len, rest)| {
                let mut v = format::RECORD_MAGIC.to_vec();
                v.extend_from_slice(&seq.to_le_bytes());
                v.extend_from_slice(&(len % 1024).to_le_bytes());
                v.extend_from_slice(&rest);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Whatever ends up at the end of a segment, opening never panics, keeps every good event
    /// and carries on.
    #[test]
    fn arbitrary_tail_bytes_never_panic_open(tail in tail_bytes()) {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path());
        let (j, _) = open(&cfg);
        let evs = append_n(&j, 1, 3);
        j.close_blocking();
        let seg = segment_files(&cfg)[0].clone();
        let mut bytes = fs::read(&seg).unwrap();
        bytes.extend_from_slice(&tail);
        fs::write(&seg, &bytes).unwrap();

        let (j, rec) = Journal::open(cfg.clone()).unwrap();
        prop_assert!(rec.is_clean(), "{:?}", rec.problems);
        prop_assert_eq!(rec.last_seq, 3);
        prop_assert_eq!(read_all(&j), evs);
        prop_assert_eq!(j.append_blocking(event(4)).unwrap().seq, 4);
    }

    /// A segment file of pure noise (or noise in the middle of a journal) is reported, never a
    /// panic, and the journal still opens.
    #[test]
    fn arbitrary_segment_files_never_panic_open(noise in tail_bytes(), first in 1u64..5) {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path());
        fs::create_dir_all(&cfg.dir).unwrap();
        fs::write(cfg.dir.join(format::segment_file_name(first)), &noise).unwrap();
        fs::write(cfg.dir.join(format::segment_file_name(10)), format::encode_record(10, &noise)).unwrap();
        let (j, rec) = Journal::open(cfg).unwrap();
        prop_assert_eq!(rec.last_seq, 10);
        prop_assert_eq!(j.append_blocking(event(11)).unwrap().seq, 11);
    }
}

/// Measures group commit on this machine's disk. Run with
/// `cargo test -p edge-daemon --test journal -- --ignored --nocapture group_commit_figures`.
#[test]
#[ignore]
fn group_commit_figures() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for writers in [1u64, 8, 64] {
        let d = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let (j, _) = Journal::open(config(d.path())).unwrap();
        let each = 4000 / writers;
        let start = Instant::now();
        let mut lat: Vec<Duration> = rt.block_on(async {
            let mut hs = Vec::new();
            for w in 0..writers {
                let j = j.clone();
                hs.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    for i in 0..each {
                        let t = Instant::now();
                        j.append(event(w * 100_000 + i)).await.unwrap();
                        lat.push(t.elapsed());
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for h in hs {
                all.extend(h.await.unwrap());
            }
            all
        });
        let secs = start.elapsed().as_secs_f64();
        lat.sort();
        let s = j.status();
        let p = |q: f64| lat[((lat.len() as f64 * q) as usize).min(lat.len() - 1)];
        eprintln!(
            "{writers:>3} writers: {} appends in {:.2} s = {:.0} appends/s; {} fsyncs = {:.1} \
             events/fsync; latency p50 {:?} p99 {:?}",
            s.appends,
            secs,
            s.appends as f64 / secs,
            s.fsyncs,
            s.appends as f64 / s.fsyncs as f64,
            p(0.5),
            p(0.99)
        );
        let t = Instant::now();
        let n = j.read_from(1, usize::MAX, usize::MAX).unwrap().len();
        eprintln!(
            "    read_from: {n} events in {:?} ({:.0} events/s)",
            t.elapsed(),
            n as f64 / t.elapsed().as_secs_f64()
        );
        rt.block_on(j.close());
        let t = Instant::now();
        let (j, rec) = Journal::open(config(d.path())).unwrap();
        eprintln!(
            "    reopen (scan + verify {} records): {:?}",
            rec.records,
            t.elapsed()
        );
        rt.block_on(j.close());
    }
}
