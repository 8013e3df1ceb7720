//! Opening the journal: list the segments, scan and verify every record, recover.
//!
//! [`load`] runs the scanner (`scan.rs`) over each segment in seq order, checks the hash chain
//! across the whole journal (`ChainCheck`: seq gaps, broken links, bad hashes, another device),
//! truncates a torn record at the tail of the last segment (a write cut short by power loss,
//! never acknowledged), removes an empty last segment, reads the upload marker, and reports
//! everything else it finds as a [`Problem`] that is left in place. `Journal::open_with_cipher`
//! in `mod.rs` builds the shared state and the writer from what it returns.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read};
use std::path::Path;

use edge_proto::audit::{AuditEvent, ChainError, Hash32, GENESIS};
use edge_proto::cbor;
use edge_proto::ids::DeviceId;

use super::format::{self, decode_uploaded_file, UPLOADED_FILE, UPLOADED_FILE_BYTES};
use super::scan::{ScanItem, Scanner};
use super::{
    JournalConfig, JournalError, Problem, ProblemKind, RecordCipher, Recovery, SegmentMeta,
    READ_BUFFER_BYTES,
};

/// What [`load`] read from the directory: the segments and where the chain and the upload
/// cursor stand, for the writer and the shared state to start from.
pub(super) struct Loaded {
    pub(super) segments: Vec<SegmentMeta>,
    pub(super) last_seq: u64,
    pub(super) last_hash: Hash32,
    pub(super) uploaded_seq: u64,
    pub(super) recovery: Recovery,
}

/// Incremental chain verification across the whole journal.
#[derive(Default)]
struct ChainCheck {
    expected: Option<u64>,
    prev: Option<Hash32>,
    device: Option<DeviceId>,
}

impl ChainCheck {
    fn check(&mut self, header_seq: u64, ev: &AuditEvent) -> Option<ProblemKind> {
        let seq = ev.seq;
        let problem = if seq != header_seq {
            Some(ProblemKind::SeqMismatch {
                header: header_seq,
                event: seq,
            })
        } else if let Some(expected) = self.expected.filter(|e| *e != seq) {
            Some(ProblemKind::Chain(ChainError::Gap {
                expected,
                found: seq,
            }))
        } else if (seq == 1 && ev.prev_hash != GENESIS)
            || self.prev.is_some_and(|p| p != ev.prev_hash)
        {
            Some(ProblemKind::Chain(ChainError::BrokenLink { seq }))
        } else if !ev.hash_ok() {
            Some(ProblemKind::Chain(ChainError::BadHash { seq }))
        } else if self.device.as_ref().is_some_and(|d| *d != ev.device_id) {
            Some(ProblemKind::Chain(ChainError::WrongDevice {
                seq,
                found: ev.device_id.as_str().to_owned(),
            }))
        } else {
            None
        };
        self.expected = seq.checked_add(1);
        self.prev = Some(ev.hash);
        self.device = Some(ev.device_id.clone());
        problem
    }

    /// A record whose event could not be read: its seq is known, its hash is not.
    fn unreadable(&mut self, header_seq: u64) {
        self.expected = header_seq.checked_add(1);
        self.prev = None;
    }
}

/// Scan and verify every segment in `config.dir`; truncate a torn tail of the last one, remove
/// an empty last one, and report everything else that is wrong in [`Recovery::problems`].
pub(super) fn load(
    config: &JournalConfig,
    cipher: &dyn RecordCipher,
) -> Result<Loaded, JournalError> {
    let dir = &config.dir;
    let mut recovery = Recovery::default();
    let mut segments = Vec::new();
    let entries = fs::read_dir(dir).map_err(|e| JournalError::io("listing the journal", e))?;
    for entry in entries {
        let entry = entry.map_err(|e| JournalError::io("listing the journal", e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(first_seq) = format::parse_segment_file_name(name) {
            segments.push(SegmentMeta::new(first_seq, entry.path()));
        } else if name.starts_with(&format!(".{UPLOADED_FILE}.tmp-")) {
            // A marker write interrupted before its rename: never the marker of record.
            let _ = fs::remove_file(entry.path());
        } else if name != UPLOADED_FILE
            && name != super::LOCK_FILE
            && name != super::writer::SPARE_FILE
        {
            tracing::debug!(
                file = name,
                "audit journal: ignoring a file that is not a segment"
            );
        }
    }
    segments.sort_by_key(|s| s.first_seq);

    let (uploaded_seq, anchor) = match read_uploaded(dir) {
        Ok(v) => v,
        Err(why) => {
            recovery.problems.push(Problem {
                file: UPLOADED_FILE.into(),
                offset: 0,
                kind: ProblemKind::UploadMarker(why),
            });
            (0, None)
        }
    };

    let mut chain = ChainCheck::default();
    let mut tail_seq: Option<u64> = None;
    let mut tail_hash: Option<Hash32> = None;
    let count = segments.len();
    for (i, seg) in segments.iter_mut().enumerate() {
        let is_last = i + 1 == count;
        let file_name = seg.file_name();
        let file = File::open(&seg.path).map_err(|e| JournalError::io("opening a segment", e))?;
        let len = file
            .metadata()
            .map_err(|e| JournalError::io("reading a segment's size", e))?
            .len();
        let mut scan = Scanner::new(BufReader::with_capacity(READ_BUFFER_BYTES, file), 0, len);
        let mut bytes = len;
        while let Some(item) = scan
            .next_item()
            .map_err(|e| JournalError::io("reading a segment", e))?
        {
            match item {
                ScanItem::Record {
                    offset,
                    seq,
                    payload,
                } => {
                    recovery.records += 1;
                    let problem = |kind| Problem {
                        file: file_name.clone(),
                        offset,
                        kind,
                    };
                    if seg.records == 0 && seq != seg.first_seq {
                        recovery.problems.push(problem(ProblemKind::SegmentName {
                            named: seg.first_seq,
                            found: seq,
                        }));
                    }
                    let event = cipher
                        .open(seq, &payload)
                        .ok()
                        .and_then(|plain| cbor::from_slice::<AuditEvent>(&plain).ok());
                    tail_seq = Some(seq);
                    match event {
                        Some(ev) => {
                            if let Some(kind) = chain.check(seq, &ev) {
                                recovery.problems.push(problem(kind));
                            }
                            tail_hash = Some(ev.hash);
                            seg.note_record(seq, offset, Some(ev.recorded));
                        }
                        None => {
                            recovery
                                .problems
                                .push(problem(ProblemKind::Unreadable { seq }));
                            chain.unreadable(seq);
                            seg.note_record(seq, offset, None);
                        }
                    }
                }
                ScanItem::Bad { offset, len: bad } => {
                    if is_last && offset + bad == len {
                        // A torn tail: the last write was cut short (never acknowledged).
                        truncate(&seg.path, offset)?;
                        recovery.truncated_bytes += bad;
                        bytes = offset;
                        tracing::warn!(
                            file = %file_name,
                            offset,
                            bytes = bad,
                            "audit journal: truncated a torn record at the tail"
                        );
                    } else {
                        recovery.problems.push(Problem {
                            file: file_name.clone(),
                            offset,
                            kind: ProblemKind::BadBytes { bytes: bad },
                        });
                    }
                }
            }
        }
        seg.bytes = bytes;
    }

    // An empty last segment holds nothing; the writer creates a fresh one named for the next
    // seq when it first needs it.
    if segments.last().is_some_and(|s| s.bytes == 0) {
        if let Some(s) = segments.pop() {
            fs::remove_file(&s.path)
                .map_err(|e| JournalError::io("removing an empty segment", e))?;
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| JournalError::io("syncing the journal directory", e))?;
        }
    }

    let mut last_seq = tail_seq.unwrap_or(0);
    let mut last_hash = tail_hash.unwrap_or(GENESIS);
    if uploaded_seq > last_seq {
        recovery.problems.push(Problem {
            file: UPLOADED_FILE.into(),
            offset: 0,
            kind: ProblemKind::UploadedBeyondEnd {
                uploaded: uploaded_seq,
                last: last_seq,
            },
        });
        last_seq = uploaded_seq;
        if let Some(h) = anchor {
            last_hash = h;
        }
    }
    recovery.segments = segments.len();
    recovery.last_seq = last_seq;
    Ok(Loaded {
        segments,
        last_seq,
        last_hash,
        uploaded_seq,
        recovery,
    })
}

fn truncate(path: &Path, len: u64) -> Result<(), JournalError> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| JournalError::io("opening a segment to truncate", e))?;
    f.set_len(len)
        .and_then(|()| f.sync_all())
        .map_err(|e| JournalError::io("truncating a torn tail", e))
}

/// Log what opening found: each problem (a warning), then a summary.
pub(super) fn log_recovery(dir: &Path, r: &Recovery) {
    for p in &r.problems {
        tracing::warn!(dir = %dir.display(), problem = %p, "audit journal: problem found on open (kept)");
    }
    tracing::info!(
        dir = %dir.display(),
        segments = r.segments,
        records = r.records,
        last_seq = r.last_seq,
        truncated_bytes = r.truncated_bytes,
        problems = r.problems.len(),
        "audit journal opened"
    );
}

/// The upload marker: `(0, None)` if there is none, an error text if it cannot be read.
fn read_uploaded(dir: &Path) -> Result<(u64, Option<Hash32>), String> {
    let path = dir.join(UPLOADED_FILE);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, None)),
        Err(e) => return Err(e.to_string()),
    };
    let mut b = Vec::with_capacity(UPLOADED_FILE_BYTES);
    (&mut f)
        .take(UPLOADED_FILE_BYTES as u64 + 1)
        .read_to_end(&mut b)
        .map_err(|e| e.to_string())?;
    decode_uploaded_file(&b).map(|(seq, hash, _)| (seq, hash))
}
