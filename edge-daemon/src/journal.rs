//! The unit's tamper-evident audit journal: append-only, segmented, fsync'd, hash-chained.
//!
//! Every access the unit answers is recorded here *before* the answer leaves: [`Journal::append`]
//! returns only once the event is on stable storage (`fdatasync` of the segment, plus a directory
//! fsync whenever a segment file is created). Many concurrent appenders share one fsync (group
//! commit): a dedicated writer thread drains every queued request, writes them in one `write`,
//! syncs once, and answers them all.
//!
//! The journal owns the per-device sequence and hash chain: it gives each event the next gap-free
//! `seq` (from 1) and links it to the previous event's hash with
//! [`AuditEvent::seal`](edge_proto::audit::AuditEvent::seal), so the hub can verify the trail
//! with the same [`verify_chain`](edge_proto::audit::verify_chain).
//!
//! On disk (see `docs/audit-journal.md`): a directory of segment files named by the first `seq`
//! they hold (`00000000000000000001.seg`), each a run of records
//! `magic "KBJ1" | seq u64 | len u32 | crc32c u32 | payload` where the payload is the event's
//! CBOR passed through a [`RecordCipher`] (identity today: [`PlainRecords`]), and a small
//! `uploaded` marker holding the upload cursor.
//!
//! Opening a journal scans and verifies everything ([`Recovery`]): a torn record at the tail of
//! the last segment (a write cut short by power loss) is truncated; anything else that does not
//! read or verify is *reported* and left in place, never silently dropped.
//!
//! Upload: [`Journal::read_from`] hands out batches in order; [`Journal::mark_uploaded`] moves the
//! durable cursor when the hub acknowledges. Retention: [`Journal::prune`] deletes whole segments
//! that are uploaded and older than the retention period. Disk budget: an append that would push
//! the journal over its budget fails with [`JournalError::Full`], so the caller refuses the
//! access rather than serving it unaudited.
//!
//! Nothing here logs event content: log lines carry sequence numbers, byte counts and file names
//! only.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use edge_proto::audit::{AuditEvent, ChainError, Hash32, GENESIS};
use edge_proto::cbor;
use edge_proto::ids::DeviceId;
use edge_proto::time::UnixMillis;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// The on-disk record format, shared by the journal, its tests and offline tools.
pub mod format {
    use std::io::Cursor;

    use crc::{Crc, CRC_32_ISCSI};

    /// The first four bytes of every record (format version 1).
    pub const RECORD_MAGIC: [u8; 4] = *b"KBJ1";
    /// Bytes before the payload: magic (4), seq (8), payload length (4), CRC-32C (4).
    pub const HEADER_BYTES: usize = 20;
    /// The largest payload a record may carry; longer lengths are treated as corruption.
    pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;
    /// The largest whole record.
    pub const MAX_RECORD_BYTES: usize = HEADER_BYTES + MAX_PAYLOAD_BYTES;
    /// Segment file extension.
    pub const SEGMENT_SUFFIX: &str = ".seg";

    const CRC32C: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

    /// The CRC-32C (Castagnoli) a record carries: over its seq, length and payload.
    pub fn record_crc(seq: u64, len: u32, payload: &[u8]) -> u32 {
        let mut d = CRC32C.digest();
        d.update(&seq.to_le_bytes());
        d.update(&len.to_le_bytes());
        d.update(payload);
        d.finalize()
    }

    /// Frame one record. A payload longer than [`MAX_PAYLOAD_BYTES`] produces a record that
    /// readers reject (the journal never writes one).
    pub fn encode_record(seq: u64, payload: &[u8]) -> Vec<u8> {
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        let mut out = Vec::with_capacity(HEADER_BYTES + payload.len());
        out.extend_from_slice(&RECORD_MAGIC);
        out.extend_from_slice(&seq.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&record_crc(seq, len, payload).to_le_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// A record header as read from disk (magic and length already checked).
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct RecordHeader {
        pub seq: u64,
        pub len: u32,
        pub crc: u32,
    }

    /// Parse a header: `None` unless the magic matches and the length is within bounds.
    pub fn parse_header(h: &[u8; HEADER_BYTES]) -> Option<RecordHeader> {
        if h[0..4] != RECORD_MAGIC {
            return None;
        }
        let seq = u64::from_le_bytes(h[4..12].try_into().ok()?);
        let len = u32::from_le_bytes(h[12..16].try_into().ok()?);
        let crc = u32::from_le_bytes(h[16..20].try_into().ok()?);
        if usize::try_from(len).map_or(true, |l| l > MAX_PAYLOAD_BYTES) {
            return None;
        }
        Some(RecordHeader { seq, len, crc })
    }

    /// A segment's file name: its first seq, zero-padded to 20 digits, so names sort by seq.
    pub fn segment_file_name(first_seq: u64) -> String {
        format!("{first_seq:020}{SEGMENT_SUFFIX}")
    }

    /// The first seq a segment file name stands for, if it is one.
    pub fn parse_segment_file_name(name: &str) -> Option<u64> {
        let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
        if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// What a scan of segment bytes finds, in file order.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum ScanItem {
        /// A whole record whose CRC checks.
        Record {
            offset: u64,
            seq: u64,
            payload: Vec<u8>,
        },
        /// Bytes that are not a valid record, up to the next valid record or the end.
        Bad { offset: u64, len: u64 },
    }

    /// Scan a segment held in memory (tests and tools; the journal streams from the file).
    pub fn scan_bytes(bytes: &[u8]) -> Vec<ScanItem> {
        let mut s = super::Scanner::new(Cursor::new(bytes), 0, bytes.len() as u64);
        let mut out = Vec::new();
        while let Ok(Some(item)) = s.next_item() {
            out.push(item);
        }
        out
    }
}

use format::{ScanItem, HEADER_BYTES, MAX_PAYLOAD_BYTES, RECORD_MAGIC};

/// Requests waiting for the writer (bounded: appenders wait when it is full).
const QUEUE_CAPACITY: usize = 4096;
/// Most events one group commit writes.
const MAX_BATCH_EVENTS: usize = 1024;
/// One sparse index entry per this many records of a segment (for `read_from`).
const INDEX_EVERY: u64 = 64;
/// Largest segment size accepted in the configuration.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// The upload marker's file name.
const UPLOADED_FILE: &str = "uploaded";
const UPLOADED_MAGIC: [u8; 4] = *b"KBU1";
const UPLOADED_BYTES: usize = 4 + 8 + 1 + 32 + 4;
/// Buffer for scanning segment files.
const READ_BUFFER_BYTES: usize = 256 * 1024;
/// Window used to search for the next record after bad bytes.
const RESYNC_WINDOW: usize = 64 * 1024;

// ---------------------------------------------------------------------------------------------
// Configuration, hooks, errors, reports
// ---------------------------------------------------------------------------------------------

/// Where the journal lives and the limits it keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalConfig {
    /// The journal directory (e.g. `data_dir/journal`); created if missing.
    pub dir: PathBuf,
    /// The current segment rolls over before it would grow past this.
    pub segment_bytes: u64,
    /// Appends fail with [`JournalError::Full`] rather than grow the journal past this.
    pub disk_budget_bytes: u64,
    /// Uploaded segments are kept this long after their newest event before [`Journal::prune`]
    /// removes them.
    pub retention: Duration,
}

impl JournalConfig {
    /// Default segment size: 4 MiB.
    pub const DEFAULT_SEGMENT_BYTES: u64 = 4 * 1024 * 1024;
    /// Default disk budget: 256 MiB (as `edge.toml`'s `[audit]` default).
    pub const DEFAULT_DISK_BUDGET_BYTES: u64 = 256 * 1024 * 1024;
    /// Default retention of uploaded events: 90 days (as `edge.toml`'s `[audit]` default).
    pub const DEFAULT_RETENTION: Duration = Duration::from_secs(90 * 86_400);

    /// Defaults, in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JournalConfig {
            dir: dir.into(),
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            disk_budget_bytes: Self::DEFAULT_DISK_BUDGET_BYTES,
            retention: Self::DEFAULT_RETENTION,
        }
    }

    /// The journal of a unit: `data_dir/journal` with the limits of `edge.toml`'s `[audit]`.
    pub fn for_unit(data_dir: &Path, audit: &edge_runtime::config::AuditConfig) -> Self {
        JournalConfig {
            dir: data_dir.join("journal"),
            segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            disk_budget_bytes: audit.disk_budget_bytes,
            retention: Duration::from_secs(audit.retention_s),
        }
    }

    fn validate(&self) -> Result<(), JournalError> {
        if self.segment_bytes == 0 || self.segment_bytes > MAX_SEGMENT_BYTES {
            return Err(JournalError::Config(format!(
                "segment_bytes must be between 1 and {MAX_SEGMENT_BYTES}, not {}",
                self.segment_bytes
            )));
        }
        if self.disk_budget_bytes == 0 {
            return Err(JournalError::Config(
                "disk_budget_bytes must be more than 0".into(),
            ));
        }
        Ok(())
    }
}

/// A record's payload could not be opened (wrong key, tampered ciphertext…).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record could not be opened: {0}")]
pub struct CipherError(pub String);

/// The hook between an event's CBOR and the bytes on disk, so that encryption at rest can be
/// added without touching the record format. `seq` is the record's sequence number (a natural
/// nonce / associated data); the output of `seal` must stay within
/// [`format::MAX_PAYLOAD_BYTES`].
pub trait RecordCipher: Send + Sync {
    /// Turn an event's CBOR into the payload stored for record `seq`.
    fn seal(&self, seq: u64, plain: &[u8]) -> Vec<u8>;
    /// Turn a stored payload back into the event's CBOR.
    fn open(&self, seq: u64, sealed: &[u8]) -> Result<Vec<u8>, CipherError>;
}

/// The identity [`RecordCipher`]: payloads are stored as plain CBOR.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainRecords;

impl RecordCipher for PlainRecords {
    fn seal(&self, _seq: u64, plain: &[u8]) -> Vec<u8> {
        plain.to_vec()
    }
    fn open(&self, _seq: u64, sealed: &[u8]) -> Result<Vec<u8>, CipherError> {
        Ok(sealed.to_vec())
    }
}

/// Why a journal operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JournalError {
    /// The append would take the journal past its disk budget. The caller must refuse the
    /// access: it cannot be audited.
    #[error(
        "audit journal is full ({used_bytes} of {budget_bytes} bytes used); the access cannot \
         be audited"
    )]
    Full { used_bytes: u64, budget_bytes: u64 },
    /// The event's record would exceed [`format::MAX_PAYLOAD_BYTES`].
    #[error("audit record of {0} bytes is larger than the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    /// The event could not be encoded.
    #[error("audit event could not be encoded: {0}")]
    Encode(String),
    /// A file operation failed.
    #[error("audit journal {what} failed: {source}")]
    Io {
        what: &'static str,
        #[source]
        source: Arc<io::Error>,
    },
    /// An earlier fsync or file creation failed; nothing more is appended until the journal is
    /// reopened (which re-reads what actually reached the disk).
    #[error("audit journal has failed and must be reopened: {0}")]
    Failed(String),
    /// The journal was closed.
    #[error("audit journal is closed")]
    Closed,
    /// This process already has the journal in this directory open.
    #[error("audit journal {0} is already open in this process")]
    AlreadyOpen(PathBuf),
    /// A configuration value is out of range.
    #[error("audit journal configuration: {0}")]
    Config(String),
    /// The 64-bit sequence ran out (only after tampering with a seq near `u64::MAX`).
    #[error("audit journal sequence numbers are exhausted")]
    SeqExhausted,
    /// `mark_uploaded` past the last event.
    #[error("cannot mark seq {upto} uploaded: the journal ends at {last}")]
    BeyondEnd { upto: u64, last: u64 },
}

impl JournalError {
    fn io(what: &'static str, e: io::Error) -> Self {
        JournalError::Io {
            what,
            source: Arc::new(e),
        }
    }
}

/// Something wrong that opening the journal found (and left in place).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file it is in.
    pub file: String,
    /// Byte offset in that file.
    pub offset: u64,
    pub kind: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}: {}", self.file, self.offset, self.kind)
    }
}

/// What kind of problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    /// Bytes that are not a valid record (bad magic, length or CRC), followed by valid records
    /// (so not a torn tail), or at the end of a segment that is not the last.
    #[error("{bytes} bytes are not a valid record")]
    BadBytes { bytes: u64 },
    /// A record whose CRC checks but whose payload cannot be opened or decoded.
    #[error("record {seq} cannot be opened or decoded")]
    Unreadable { seq: u64 },
    /// The record header's seq and the event's own seq differ.
    #[error("record header says seq {header} but its event says {event}")]
    SeqMismatch { header: u64, event: u64 },
    /// A segment whose first record is not the seq its name says.
    #[error("segment named for seq {named} starts at seq {found}")]
    SegmentName { named: u64, found: u64 },
    /// The hash chain does not verify here: a gap, a broken link, a bad hash, another device.
    #[error("chain: {0}")]
    Chain(ChainError),
    /// The upload marker could not be read; the cursor restarts at 0 (the hub de-duplicates).
    #[error("upload marker unreadable ({0}); upload restarts from the oldest event")]
    UploadMarker(String),
    /// The upload marker is past the last event on disk: events the hub already has were lost
    /// locally. Numbering continues after the marker so no seq is ever reused.
    #[error("upload marker is at seq {uploaded} but the journal ends at {last}")]
    UploadedBeyondEnd { uploaded: u64, last: u64 },
}

/// What opening the journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Segment files kept.
    pub segments: usize,
    /// Records with a good CRC.
    pub records: u64,
    /// The last seq (the next append gets `last_seq + 1`).
    pub last_seq: u64,
    /// Bytes cut from a torn tail of the last segment (an interrupted, unacknowledged write).
    pub truncated_bytes: u64,
    /// Everything else found wrong, in file order. Nothing listed here was removed.
    pub problems: Vec<Problem>,
}

impl Recovery {
    /// No problems found (a truncated torn tail is normal after power loss, not a problem).
    pub fn is_clean(&self) -> bool {
        self.problems.is_empty()
    }
}

/// The journal's health and counters, for `/v1/status` and the fleet view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JournalStatus {
    pub last_seq: u64,
    pub last_hash: Hash32,
    pub uploaded_seq: u64,
    /// Events not yet acknowledged by the hub (`last_seq − uploaded_seq`).
    pub pending: u64,
    pub segments: usize,
    pub bytes: u64,
    pub disk_budget_bytes: u64,
    /// Events made durable since open.
    pub appends: u64,
    /// Segment `fdatasync` calls since open (group commit: many appends per fsync).
    pub fsyncs: u64,
    /// Directory fsyncs (segment creation, pruning).
    pub dir_fsyncs: u64,
    /// Group commits (batches written) since open, and the largest one.
    pub batches: u64,
    pub max_batch_events: u64,
    /// Appends refused because the disk budget was reached.
    pub rejected_full: u64,
    /// Problems found when the journal was opened (see [`Recovery`]).
    pub problems: usize,
    /// Records skipped by `read_from` because they could not be read.
    pub unreadable_skipped: u64,
    /// Set when an fsync failed: appends are refused until the journal is reopened.
    pub failed: Option<String>,
}

/// What [`Journal::prune`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    pub segments_removed: usize,
    pub bytes_freed: u64,
    /// Of those, segments removed early (uploaded, but younger than the retention period)
    /// because the journal was above three quarters of its disk budget.
    pub removed_for_space: usize,
}

// ---------------------------------------------------------------------------------------------
// Shared state
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct SegmentMeta {
    first_seq: u64,
    path: PathBuf,
    /// Committed (synced) bytes.
    bytes: u64,
    records: u64,
    last_seq: Option<u64>,
    last_recorded: Option<UnixMillis>,
    /// Sparse (seq, offset) index, one entry per [`INDEX_EVERY`] records.
    index: Vec<(u64, u64)>,
}

impl SegmentMeta {
    fn new(first_seq: u64, path: PathBuf) -> Self {
        SegmentMeta {
            first_seq,
            path,
            bytes: 0,
            records: 0,
            last_seq: None,
            last_recorded: None,
            index: Vec::new(),
        }
    }

    fn note_record(&mut self, seq: u64, offset: u64, recorded: Option<UnixMillis>) {
        if self.records.is_multiple_of(INDEX_EVERY) {
            self.index.push((seq, offset));
        }
        self.records += 1;
        self.last_seq = Some(seq);
        if let Some(r) = recorded {
            self.last_recorded = Some(self.last_recorded.map_or(r, |l| l.max(r)));
        }
    }

    fn file_name(&self) -> String {
        format::segment_file_name(self.first_seq)
    }
}

struct State {
    segments: Vec<SegmentMeta>,
    total_bytes: u64,
    last_seq: u64,
    last_hash: Hash32,
    uploaded_seq: u64,
    problems: Vec<Problem>,
    failed: Option<String>,
}

#[derive(Default)]
struct Counters {
    appends: AtomicU64,
    fsyncs: AtomicU64,
    dir_fsyncs: AtomicU64,
    batches: AtomicU64,
    max_batch: AtomicU64,
    rejected_full: AtomicU64,
    unreadable_skipped: AtomicU64,
}

struct Shared {
    config: JournalConfig,
    cipher: Arc<dyn RecordCipher>,
    state: Mutex<State>,
    /// Serialises `mark_uploaded` and `prune` (never held by the writer).
    maintenance: Mutex<()>,
    counters: Counters,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn sync_dir(&self) -> io::Result<()> {
        File::open(&self.config.dir)?.sync_all()?;
        self.counters.dir_fsyncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

/// Directories this process has a journal open in (one writer per journal).
static OPEN_DIRS: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

struct OpenGuard(PathBuf);

impl OpenGuard {
    fn acquire(dir: &Path) -> Result<Self, JournalError> {
        let mut open = OPEN_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        if !open.insert(dir.to_path_buf()) {
            return Err(JournalError::AlreadyOpen(dir.to_path_buf()));
        }
        Ok(OpenGuard(dir.to_path_buf()))
    }
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        let mut open = OPEN_DIRS.lock().unwrap_or_else(|e| e.into_inner());
        open.remove(&self.0);
    }
}

/// Where the writer sends an answer: an async waiter or a blocked thread.
enum Responder<T> {
    Async(oneshot::Sender<T>),
    Blocking(std::sync::mpsc::SyncSender<T>),
}

impl<T> Responder<T> {
    /// Answer; `false` if the waiter has gone.
    fn send(self, value: T) -> bool {
        match self {
            Responder::Async(tx) => tx.send(value).is_ok(),
            Responder::Blocking(tx) => tx.send(value).is_ok(),
        }
    }
}

type Reply = Responder<Result<AuditEvent, JournalError>>;

enum Request {
    Append {
        event: Box<AuditEvent>,
        reply: Reply,
    },
    Close(Responder<()>),
}

// ---------------------------------------------------------------------------------------------
// The handle
// ---------------------------------------------------------------------------------------------

/// A handle on an open journal. Cheap to clone; every clone appends to the same journal.
///
/// `append` / `append_blocking` go through the writer thread. The other methods do their file
/// work on the caller's thread (briefly): from async code, call `read_from`, `mark_uploaded` and
/// `prune` inside `tokio::task::spawn_blocking`.
#[derive(Clone)]
pub struct Journal {
    tx: mpsc::Sender<Request>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Journal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Journal")
            .field("dir", &self.shared.config.dir)
            .finish_non_exhaustive()
    }
}

impl Journal {
    /// Open (or create) the journal with plain-CBOR payloads. See [`Journal::open_with_cipher`].
    pub fn open(config: JournalConfig) -> Result<(Journal, Recovery), JournalError> {
        Self::open_with_cipher(config, Arc::new(PlainRecords))
    }

    /// Open (or create) the journal in `config.dir`: scan and verify every segment, truncate a
    /// torn tail, report (and keep) anything else that is wrong, and start the writer thread.
    pub fn open_with_cipher(
        config: JournalConfig,
        cipher: Arc<dyn RecordCipher>,
    ) -> Result<(Journal, Recovery), JournalError> {
        config.validate()?;
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&config.dir)
            .map_err(|e| JournalError::io("creating the journal directory", e))?;
        let dir = fs::canonicalize(&config.dir)
            .map_err(|e| JournalError::io("resolving the journal directory", e))?;
        let guard = OpenGuard::acquire(&dir)?;
        let config = JournalConfig { dir, ..config };

        let loaded = load(&config, cipher.as_ref())?;
        let recovery = loaded.recovery.clone();
        log_recovery(&config.dir, &recovery);

        let state = State {
            total_bytes: loaded.segments.iter().map(|s| s.bytes).sum(),
            segments: loaded.segments,
            last_seq: loaded.last_seq,
            last_hash: loaded.last_hash,
            uploaded_seq: loaded.uploaded_seq,
            problems: recovery.problems.clone(),
            failed: None,
        };
        let current = match state.segments.last() {
            Some(s) if s.bytes > 0 => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .map_err(|e| JournalError::io("opening the current segment", e))?;
                Some(Current {
                    file,
                    first_seq: s.first_seq,
                    len: s.bytes,
                })
            }
            _ => None,
        };
        let shared = Arc::new(Shared {
            config,
            cipher,
            state: Mutex::new(state),
            maintenance: Mutex::new(()),
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer {
            shared: Arc::clone(&shared),
            rx,
            current,
            next_seq: loaded.last_seq.checked_add(1),
            prev_hash: loaded.last_hash,
            guard: Some(guard),
        };
        std::thread::Builder::new()
            .name("kerbside-journal".into())
            .spawn(move || writer.run())
            .map_err(|e| JournalError::io("starting the journal writer", e))?;
        Ok((Journal { tx, shared }, recovery))
    }

    /// Append an event: the journal sets its `seq`, `prev_hash` and `hash`, and returns the
    /// sealed event once it is durable on disk. If the future is dropped after the request was
    /// queued, the event may still be written (audited but not acknowledged, never the reverse).
    pub async fn append(&self, event: AuditEvent) -> Result<AuditEvent, JournalError> {
        let (reply, rx) = oneshot::channel();
        let req = Request::Append {
            event: Box::new(event),
            reply: Responder::Async(reply),
        };
        if self.tx.send(req).await.is_err() {
            return Err(self.gone());
        }
        rx.await.unwrap_or_else(|_| Err(self.gone()))
    }

    /// [`Journal::append`] for synchronous code. It works on any thread (it uses no runtime
    /// machinery), but blocks it for an fsync: in async code prefer `append().await`.
    pub fn append_blocking(&self, event: AuditEvent) -> Result<AuditEvent, JournalError> {
        let (reply, rx) = std::sync::mpsc::sync_channel(1);
        let req = Request::Append {
            event: Box::new(event),
            reply: Responder::Blocking(reply),
        };
        self.send_blocking(req)?;
        rx.recv().unwrap_or_else(|_| Err(self.gone()))
    }

    /// Queue a request without tokio's blocking helpers (which panic on runtime threads).
    fn send_blocking(&self, mut req: Request) -> Result<(), JournalError> {
        loop {
            match self.tx.try_send(req) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(r)) => {
                    // The writer is QUEUE_CAPACITY requests behind: wait a little.
                    req = r;
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(self.gone()),
            }
        }
    }

    /// Stop the writer after the appends queued before this call, and release the directory so
    /// it can be opened again. Other clones' later appends fail with [`JournalError::Closed`].
    pub async fn close(self) {
        let (done, rx) = oneshot::channel();
        if self
            .tx
            .send(Request::Close(Responder::Async(done)))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// [`Journal::close`] for synchronous code.
    pub fn close_blocking(self) {
        let (done, rx) = std::sync::mpsc::sync_channel(1);
        if self
            .send_blocking(Request::Close(Responder::Blocking(done)))
            .is_ok()
        {
            let _ = rx.recv();
        }
    }

    fn gone(&self) -> JournalError {
        match &self.shared.state().failed {
            Some(why) => JournalError::Failed(why.clone()),
            None => JournalError::Closed,
        }
    }

    /// Up to `max_events` events from `from_seq` on, in order, stopping before `max_bytes` of
    /// CBOR (but always at least one event if there is one). Records that cannot be read are
    /// skipped (they were reported at open; the hub sees the gap and reports it too).
    pub fn read_from(
        &self,
        from_seq: u64,
        max_events: usize,
        max_bytes: usize,
    ) -> Result<Vec<AuditEvent>, JournalError> {
        let mut out = Vec::new();
        if max_events == 0 {
            return Ok(out);
        }
        let plan: Vec<(PathBuf, u64, u64)> = {
            let st = self.shared.state();
            let segs = &st.segments;
            let first = segs
                .partition_point(|s| s.first_seq <= from_seq)
                .saturating_sub(1);
            segs.iter()
                .enumerate()
                .skip(first)
                .map(|(i, s)| {
                    let start = if i == first {
                        let k = s.index.partition_point(|(q, _)| *q <= from_seq);
                        k.checked_sub(1).map_or(0, |k| s.index[k].1)
                    } else {
                        0
                    };
                    (s.path.clone(), start, s.bytes)
                })
                .filter(|(_, start, end)| start < end)
                .collect()
        };
        let mut bytes = 0usize;
        for (path, start, end) in plan {
            let file = match File::open(&path) {
                Ok(f) => f,
                // Pruned meanwhile: everything in it was uploaded.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(JournalError::io("reading a segment", e)),
            };
            let mut scan = Scanner::new(
                BufReader::with_capacity(READ_BUFFER_BYTES, file),
                start,
                end,
            );
            while let Some(item) = scan
                .next_item()
                .map_err(|e| JournalError::io("reading a segment", e))?
            {
                let ScanItem::Record { seq, payload, .. } = item else {
                    continue;
                };
                if seq < from_seq {
                    continue;
                }
                let Ok(plain) = self.shared.cipher.open(seq, &payload) else {
                    self.skipped(seq);
                    continue;
                };
                let Ok(event) = cbor::from_slice::<AuditEvent>(&plain) else {
                    self.skipped(seq);
                    continue;
                };
                if !out.is_empty() && bytes.saturating_add(plain.len()) > max_bytes {
                    return Ok(out);
                }
                bytes = bytes.saturating_add(plain.len());
                out.push(event);
                if out.len() >= max_events {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    fn skipped(&self, seq: u64) {
        tracing::warn!(
            seq,
            "audit journal: unreadable record skipped in upload read"
        );
        self.shared
            .counters
            .unreadable_skipped
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Record, durably, that the hub has acknowledged every event up to `upto_seq`. The cursor
    /// only moves forward; marking a seq at or below it is a no-op.
    pub fn mark_uploaded(&self, upto_seq: u64) -> Result<(), JournalError> {
        let _m = self
            .shared
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (last, current) = {
            let st = self.shared.state();
            (st.last_seq, st.uploaded_seq)
        };
        if upto_seq > last {
            return Err(JournalError::BeyondEnd {
                upto: upto_seq,
                last,
            });
        }
        if upto_seq <= current {
            return Ok(());
        }
        // Keep the acknowledged event's hash too: if the local tail is ever lost, numbering
        // continues after it, chained to it, and no seq the hub holds is reused.
        let hash = self
            .read_from(upto_seq, 1, usize::MAX)?
            .into_iter()
            .find(|e| e.seq == upto_seq)
            .map(|e| e.hash);
        let bytes = encode_uploaded(upto_seq, hash);
        edge_runtime::fsutil::write_atomic(
            &self.shared.config.dir.join(UPLOADED_FILE),
            &bytes,
            edge_runtime::fsutil::MODE_PRIVATE,
        )
        .map_err(|e| JournalError::io("writing the upload marker", e))?;
        self.shared
            .counters
            .dir_fsyncs
            .fetch_add(1, Ordering::Relaxed);
        self.shared.state().uploaded_seq = upto_seq;
        tracing::debug!(upto_seq, "audit journal: upload cursor moved");
        Ok(())
    }

    /// Remove whole segments, oldest first, that the hub has acknowledged and whose newest event
    /// is older than the retention period at `now`. When the journal is above three quarters of
    /// its disk budget, acknowledged segments are removed even if younger. The current segment
    /// and anything not yet uploaded are never removed. Appends are not blocked meanwhile.
    pub fn prune(&self, now: UnixMillis) -> Result<PruneReport, JournalError> {
        let _m = self
            .shared
            .maintenance
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let retention_ms =
            i64::try_from(self.shared.config.retention.as_millis()).unwrap_or(i64::MAX);
        let cutoff = now.0.saturating_sub(retention_ms);
        let high_water = self.shared.config.disk_budget_bytes / 4 * 3;
        let mut report = PruneReport::default();
        let victims: Vec<SegmentMeta> = {
            let mut st = self.shared.state();
            let uploaded = st.uploaded_seq;
            let mut remaining = st.total_bytes;
            let mut n = 0;
            let removable = st.segments.len().saturating_sub(1);
            for s in &st.segments[..removable] {
                if s.last_seq.is_some_and(|l| l > uploaded) {
                    break;
                }
                let newest = s.last_recorded.map(|r| r.0).or_else(|| mtime_ms(&s.path));
                let old = newest.is_none_or(|t| t <= cutoff);
                if !old && remaining <= high_water {
                    break;
                }
                if !old {
                    report.removed_for_space += 1;
                }
                remaining = remaining.saturating_sub(s.bytes);
                n += 1;
            }
            st.total_bytes = remaining;
            st.segments.drain(..n).collect()
        };
        if victims.is_empty() {
            return Ok(report);
        }
        for s in &victims {
            match fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(JournalError::io("removing a segment", e)),
            }
            report.segments_removed += 1;
            report.bytes_freed += s.bytes;
        }
        self.shared
            .sync_dir()
            .map_err(|e| JournalError::io("syncing the journal directory", e))?;
        tracing::info!(
            segments = report.segments_removed,
            bytes = report.bytes_freed,
            for_space = report.removed_for_space,
            "audit journal: pruned uploaded segments"
        );
        Ok(report)
    }

    /// The last seq appended (0 if none).
    pub fn last_seq(&self) -> u64 {
        self.shared.state().last_seq
    }

    /// The hash of the last event appended ([`GENESIS`] if none).
    pub fn last_hash(&self) -> Hash32 {
        self.shared.state().last_hash
    }

    /// Everything up to this seq is acknowledged by the hub.
    pub fn uploaded_seq(&self) -> u64 {
        self.shared.state().uploaded_seq
    }

    /// How many events await upload.
    pub fn pending(&self) -> u64 {
        let st = self.shared.state();
        st.last_seq.saturating_sub(st.uploaded_seq)
    }

    /// The problems found at open (also in the [`Recovery`] that `open` returned).
    pub fn problems(&self) -> Vec<Problem> {
        self.shared.state().problems.clone()
    }

    /// Health and counters.
    pub fn status(&self) -> JournalStatus {
        let c = &self.shared.counters;
        let st = self.shared.state();
        JournalStatus {
            last_seq: st.last_seq,
            last_hash: st.last_hash,
            uploaded_seq: st.uploaded_seq,
            pending: st.last_seq.saturating_sub(st.uploaded_seq),
            segments: st.segments.len(),
            bytes: st.total_bytes,
            disk_budget_bytes: self.shared.config.disk_budget_bytes,
            appends: c.appends.load(Ordering::Relaxed),
            fsyncs: c.fsyncs.load(Ordering::Relaxed),
            dir_fsyncs: c.dir_fsyncs.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            max_batch_events: c.max_batch.load(Ordering::Relaxed),
            rejected_full: c.rejected_full.load(Ordering::Relaxed),
            problems: st.problems.len(),
            unreadable_skipped: c.unreadable_skipped.load(Ordering::Relaxed),
            failed: st.failed.clone(),
        }
    }

    /// The journal directory.
    pub fn dir(&self) -> &Path {
        &self.shared.config.dir
    }
}

fn mtime_ms(path: &Path) -> Option<i64> {
    let t = fs::metadata(path).ok()?.modified().ok()?;
    let d = t.duration_since(UNIX_EPOCH).ok()?;
    i64::try_from(d.as_millis()).ok()
}

// ---------------------------------------------------------------------------------------------
// The writer thread: group commit
// ---------------------------------------------------------------------------------------------

struct Current {
    file: File,
    first_seq: u64,
    /// Committed bytes in the file.
    len: u64,
}

struct Staged {
    event: Box<AuditEvent>,
    reply: Reply,
    offset_in_buf: usize,
}

struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    current: Option<Current>,
    /// `None` once seq `u64::MAX` has been used.
    next_seq: Option<u64>,
    prev_hash: Hash32,
    guard: Option<OpenGuard>,
}

impl Writer {
    fn run(mut self) {
        while let Some(first) = self.rx.blocking_recv() {
            let mut batch = Vec::with_capacity(64);
            batch.push(first);
            while batch.len() < MAX_BATCH_EVENTS {
                match self.rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let mut appends = Vec::with_capacity(batch.len());
            let mut closes = Vec::new();
            for r in batch {
                match r {
                    Request::Append { event, reply } if closes.is_empty() => {
                        appends.push((event, reply));
                    }
                    Request::Append { reply, .. } => {
                        let _ = reply.send(Err(JournalError::Closed));
                    }
                    Request::Close(done) => closes.push(done),
                }
            }
            self.write_batch(appends);
            if !closes.is_empty() {
                self.shutdown(closes);
                return;
            }
        }
        self.shutdown(Vec::new());
    }

    fn shutdown(mut self, mut closes: Vec<Responder<()>>) {
        self.rx.close();
        let mut refused = Vec::new();
        while let Ok(r) = self.rx.try_recv() {
            match r {
                Request::Append { reply, .. } => refused.push(reply),
                Request::Close(done) => closes.push(done),
            }
        }
        self.current = None;
        self.guard = None;
        tracing::debug!(dir = %self.shared.config.dir.display(), "audit journal closed");
        for reply in refused {
            let _ = reply.send(Err(JournalError::Closed));
        }
        for done in closes {
            let _ = done.send(());
        }
    }

    fn fail_all<I>(err: &JournalError, rest: I)
    where
        I: IntoIterator<Item = (Box<AuditEvent>, Reply)>,
    {
        for (_, reply) in rest {
            let _ = reply.send(Err(err.clone()));
        }
    }

    fn write_batch(&mut self, reqs: Vec<(Box<AuditEvent>, Reply)>) {
        if reqs.is_empty() {
            return;
        }
        if let Some(why) = self.shared.state().failed.clone() {
            Self::fail_all(&JournalError::Failed(why), reqs);
            return;
        }
        let budget = self.shared.config.disk_budget_bytes;
        let segment_bytes = self.shared.config.segment_bytes;
        let mut used = self.shared.state().total_bytes;
        let mut buf: Vec<u8> = Vec::new();
        let mut staged: Vec<Staged> = Vec::new();
        let mut next_seq = self.next_seq;
        let mut prev = self.prev_hash;
        let mut iter = reqs.into_iter();
        while let Some((mut event, reply)) = iter.next() {
            let Some(seq) = next_seq else {
                let _ = reply.send(Err(JournalError::SeqExhausted));
                continue;
            };
            let frame = match self.frame(&mut event, seq, prev) {
                Ok(f) => f,
                Err(e) => {
                    let _ = reply.send(Err(e));
                    continue;
                }
            };
            let frame_len = frame.len() as u64;
            if used.saturating_add(frame_len) > budget {
                self.shared
                    .counters
                    .rejected_full
                    .fetch_add(1, Ordering::Relaxed);
                let _ = reply.send(Err(JournalError::Full {
                    used_bytes: used,
                    budget_bytes: budget,
                }));
                continue;
            }
            let roll = self.current.as_ref().is_some_and(|c| {
                let len = c.len + buf.len() as u64;
                len > 0 && len + frame_len > segment_bytes
            });
            if roll {
                if let Err(e) = self.flush(&mut buf, &mut staged) {
                    let _ = reply.send(Err(e.clone()));
                    Self::fail_all(&e, iter);
                    return;
                }
                self.current = None;
            }
            if self.current.is_none() {
                if let Err(e) = self.create_segment(seq) {
                    let _ = reply.send(Err(e.clone()));
                    Self::fail_all(&e, iter);
                    return;
                }
            }
            staged.push(Staged {
                event,
                reply,
                offset_in_buf: buf.len(),
            });
            buf.extend_from_slice(&frame);
            used += frame_len;
            prev = staged.last().map_or(prev, |s| s.event.hash);
            next_seq = seq.checked_add(1);
        }
        if let Err(e) = self.flush(&mut buf, &mut staged) {
            tracing::debug!(error = %e, "audit journal: batch failed");
        }
    }

    /// Seal the event as `seq` after `prev` and frame it.
    fn frame(
        &self,
        event: &mut AuditEvent,
        seq: u64,
        prev: Hash32,
    ) -> Result<Vec<u8>, JournalError> {
        event
            .seal(seq, prev)
            .map_err(|e| JournalError::Encode(e.to_string()))?;
        let plain = cbor::to_vec(event).map_err(|e| JournalError::Encode(e.to_string()))?;
        if plain.len() > MAX_PAYLOAD_BYTES {
            return Err(JournalError::TooLarge(plain.len()));
        }
        let sealed = self.shared.cipher.seal(seq, &plain);
        if sealed.len() > MAX_PAYLOAD_BYTES {
            return Err(JournalError::TooLarge(sealed.len()));
        }
        Ok(format::encode_record(seq, &sealed))
    }

    /// Create the segment whose first record is `seq`, and make its name durable.
    fn create_segment(&mut self, seq: u64) -> Result<(), JournalError> {
        let path = self.shared.config.dir.join(format::segment_file_name(seq));
        let created = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|file| self.shared.sync_dir().map(|()| file));
        match created {
            Ok(file) => {
                self.current = Some(Current {
                    file,
                    first_seq: seq,
                    len: 0,
                });
                let mut st = self.shared.state();
                // An empty segment left by a failed earlier attempt is replaced.
                if st.segments.last().is_some_and(|s| s.first_seq == seq) {
                    st.segments.pop();
                }
                st.segments.push(SegmentMeta::new(seq, path));
                tracing::debug!(first_seq = seq, "audit journal: new segment");
                Ok(())
            }
            Err(e) => {
                let err = JournalError::io("creating a segment", e);
                poison(&self.shared, &err);
                Err(err)
            }
        }
    }

    /// Write the staged records, fsync once, commit, and answer every appender. On failure every
    /// staged appender gets the error.
    fn flush(&mut self, buf: &mut Vec<u8>, staged: &mut Vec<Staged>) -> Result<(), JournalError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(cur) = self.current.as_mut() else {
            let err = JournalError::Failed("no current segment".into());
            for s in staged.drain(..) {
                let _ = s.reply.send(Err(err.clone()));
            }
            buf.clear();
            return Err(err);
        };
        let written = cur.file.write_all(buf);
        let result = match written {
            Err(e) => {
                // Undo a partial write so the file ends at the last committed record.
                let err = JournalError::io("writing a record", e);
                if let Err(t) = cur.file.set_len(cur.len) {
                    poison(
                        &self.shared,
                        &JournalError::io("truncating after a failed write", t),
                    );
                }
                Err(err)
            }
            Ok(()) => {
                self.shared.counters.fsyncs.fetch_add(1, Ordering::Relaxed);
                match cur.file.sync_data() {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // After a failed fsync the page cache cannot be trusted (the data may
                        // or may not be on disk): stop, and let a reopen read what is there.
                        let err = JournalError::io("syncing a segment", e);
                        poison(&self.shared, &err);
                        Err(err)
                    }
                }
            }
        };
        if let Err(err) = result {
            for s in staged.drain(..) {
                let _ = s.reply.send(Err(err.clone()));
            }
            buf.clear();
            return Err(err);
        }

        // Durable: commit to the shared state, then answer.
        let Some(cur) = self.current.as_mut() else {
            return Ok(());
        };
        let base = cur.len;
        cur.len += buf.len() as u64;
        let n = staged.len() as u64;
        {
            let mut st = self.shared.state();
            if let Some(seg) = st
                .segments
                .last_mut()
                .filter(|s| s.first_seq == cur.first_seq)
            {
                for s in staged.iter() {
                    seg.note_record(
                        s.event.seq,
                        base + s.offset_in_buf as u64,
                        Some(s.event.recorded),
                    );
                }
                seg.bytes = cur.len;
            }
            st.total_bytes += buf.len() as u64;
            if let Some(last) = staged.last() {
                st.last_seq = last.event.seq;
                st.last_hash = last.event.hash;
                self.next_seq = last.event.seq.checked_add(1);
                self.prev_hash = last.event.hash;
            }
        }
        let c = &self.shared.counters;
        c.appends.fetch_add(n, Ordering::Relaxed);
        c.batches.fetch_add(1, Ordering::Relaxed);
        c.max_batch.fetch_max(n, Ordering::Relaxed);
        tracing::trace!(events = n, bytes = buf.len(), "audit journal: group commit");
        buf.clear();
        for s in staged.drain(..) {
            let _ = s.reply.send(Ok(*s.event));
        }
        Ok(())
    }
}

/// Refuse further appends until the journal is reopened.
fn poison(shared: &Shared, err: &JournalError) {
    tracing::error!(error = %err, "audit journal failed; appends refused until reopened");
    shared.state().failed = Some(err.to_string());
}

// ---------------------------------------------------------------------------------------------
// Reading segments
// ---------------------------------------------------------------------------------------------

/// Streams records out of a segment between two offsets, finding its way past bad bytes by
/// searching for the next record whose magic, length and CRC all check.
pub(crate) struct Scanner<R> {
    r: R,
    /// Where `r` is positioned (`u64::MAX` when unknown).
    rpos: u64,
    pos: u64,
    end: u64,
}

impl<R: Read + Seek> Scanner<R> {
    pub(crate) fn new(r: R, start: u64, end: u64) -> Self {
        Scanner {
            r,
            rpos: u64::MAX,
            pos: start,
            end,
        }
    }

    fn read_at(&mut self, at: u64, buf: &mut [u8]) -> io::Result<bool> {
        if self.rpos != at {
            self.r.seek(SeekFrom::Start(at))?;
            self.rpos = at;
        }
        match self.r.read_exact(buf) {
            Ok(()) => {
                self.rpos = at + buf.len() as u64;
                Ok(true)
            }
            Err(e) => {
                self.rpos = u64::MAX;
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    Ok(false)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The record at `at`, if a valid one starts there.
    fn record_at(&mut self, at: u64) -> io::Result<Option<(u64, Vec<u8>)>> {
        let Some(header_end) = at.checked_add(HEADER_BYTES as u64) else {
            return Ok(None);
        };
        if header_end > self.end {
            return Ok(None);
        }
        let mut h = [0u8; HEADER_BYTES];
        if !self.read_at(at, &mut h)? {
            return Ok(None);
        }
        let Some(header) = format::parse_header(&h) else {
            return Ok(None);
        };
        if header_end + u64::from(header.len) > self.end {
            return Ok(None);
        }
        let mut payload = vec![0u8; header.len as usize];
        if !self.read_at(header_end, &mut payload)? {
            return Ok(None);
        }
        if format::record_crc(header.seq, header.len, &payload) != header.crc {
            return Ok(None);
        }
        Ok(Some((header.seq, payload)))
    }

    /// The offset of the next valid record at or after `from`.
    fn resync(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut base = from;
        let mut window = vec![0u8; RESYNC_WINDOW + RECORD_MAGIC.len() - 1];
        while base.saturating_add(HEADER_BYTES as u64) <= self.end {
            let want = usize::try_from(self.end - base)
                .unwrap_or(usize::MAX)
                .min(window.len());
            if !self.read_at(base, &mut window[..want])? {
                return Ok(None);
            }
            let last_start = want
                .saturating_sub(RECORD_MAGIC.len() - 1)
                .min(RESYNC_WINDOW);
            let hits: Vec<usize> = (0..last_start)
                .filter(|&i| window[i..i + RECORD_MAGIC.len()] == RECORD_MAGIC)
                .collect();
            for i in hits {
                let at = base + i as u64;
                if self.record_at(at)?.is_some() {
                    return Ok(Some(at));
                }
            }
            base += RESYNC_WINDOW as u64;
        }
        Ok(None)
    }

    pub(crate) fn next_item(&mut self) -> io::Result<Option<ScanItem>> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let offset = self.pos;
        if let Some((seq, payload)) = self.record_at(offset)? {
            self.pos = offset + (HEADER_BYTES + payload.len()) as u64;
            return Ok(Some(ScanItem::Record {
                offset,
                seq,
                payload,
            }));
        }
        let next = self.resync(offset + 1)?.unwrap_or(self.end);
        self.pos = next;
        Ok(Some(ScanItem::Bad {
            offset,
            len: next - offset,
        }))
    }
}

// ---------------------------------------------------------------------------------------------
// Opening: scan, verify, recover
// ---------------------------------------------------------------------------------------------

struct Loaded {
    segments: Vec<SegmentMeta>,
    last_seq: u64,
    last_hash: Hash32,
    uploaded_seq: u64,
    recovery: Recovery,
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

fn load(config: &JournalConfig, cipher: &dyn RecordCipher) -> Result<Loaded, JournalError> {
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
        } else if name != UPLOADED_FILE {
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

fn log_recovery(dir: &Path, r: &Recovery) {
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

fn encode_uploaded(seq: u64, hash: Option<Hash32>) -> Vec<u8> {
    let mut out = Vec::with_capacity(UPLOADED_BYTES);
    out.extend_from_slice(&UPLOADED_MAGIC);
    out.extend_from_slice(&seq.to_le_bytes());
    out.push(u8::from(hash.is_some()));
    out.extend_from_slice(&hash.unwrap_or_default().0);
    let crc = format::record_crc(seq, 0, &out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn decode_uploaded(b: &[u8]) -> Result<(u64, Option<Hash32>), String> {
    if b.len() != UPLOADED_BYTES {
        return Err(format!("{} bytes, expected {UPLOADED_BYTES}", b.len()));
    }
    let (body, crc) = b.split_at(UPLOADED_BYTES - 4);
    if body[0..4] != UPLOADED_MAGIC {
        return Err("bad magic".into());
    }
    let seq = u64::from_le_bytes(body[4..12].try_into().map_err(|_| "short")?);
    let crc = u32::from_le_bytes(crc.try_into().map_err(|_| "short")?);
    if format::record_crc(seq, 0, body) != crc {
        return Err("bad CRC".into());
    }
    let hash: [u8; 32] = body[13..45].try_into().map_err(|_| "short")?;
    let hash = match body[12] {
        0 => None,
        1 => Some(Hash32(hash)),
        _ => return Err("bad flag".into()),
    };
    Ok((seq, hash))
}

fn read_uploaded(dir: &Path) -> Result<(u64, Option<Hash32>), String> {
    let path = dir.join(UPLOADED_FILE);
    let mut f = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((0, None)),
        Err(e) => return Err(e.to_string()),
    };
    let mut b = Vec::with_capacity(UPLOADED_BYTES);
    (&mut f)
        .take(UPLOADED_BYTES as u64 + 1)
        .read_to_end(&mut b)
        .map_err(|e| e.to_string())?;
    decode_uploaded(&b)
}

#[cfg(test)]
mod tests {
    use super::format::*;
    use super::*;

    #[test]
    fn record_round_trips_and_rejects_damage() {
        let rec = encode_record(7, b"hello");
        assert_eq!(rec.len(), HEADER_BYTES + 5);
        assert_eq!(
            scan_bytes(&rec),
            vec![ScanItem::Record {
                offset: 0,
                seq: 7,
                payload: b"hello".to_vec()
            }]
        );
        for i in 0..rec.len() {
            let mut bad = rec.clone();
            bad[i] ^= 0x40;
            assert!(
                !scan_bytes(&bad)
                    .iter()
                    .any(|it| matches!(it, ScanItem::Record { .. })),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn scanner_finds_its_way_past_garbage() {
        let mut bytes = encode_record(1, b"one");
        let garbage_at = bytes.len() as u64;
        bytes.extend_from_slice(b"KBJ1 this is not a record KBJ1KBJ");
        let second_at = bytes.len() as u64;
        bytes.extend_from_slice(&encode_record(2, b"two"));
        let torn_at = bytes.len() as u64;
        bytes.extend_from_slice(&encode_record(3, b"three")[..10]);
        let items = scan_bytes(&bytes);
        assert_eq!(items.len(), 4);
        assert_eq!(
            items[1],
            ScanItem::Bad {
                offset: garbage_at,
                len: second_at - garbage_at
            }
        );
        assert!(matches!(items[2], ScanItem::Record { seq: 2, offset, .. } if offset == second_at));
        assert_eq!(
            items[3],
            ScanItem::Bad {
                offset: torn_at,
                len: 10
            }
        );
    }

    #[test]
    fn oversized_length_is_corruption_not_an_allocation() {
        let mut rec = encode_record(1, b"x");
        rec[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            scan_bytes(&rec),
            vec![ScanItem::Bad {
                offset: 0,
                len: rec.len() as u64
            }]
        );
    }

    #[test]
    fn segment_names() {
        assert_eq!(segment_file_name(1), "00000000000000000001.seg");
        assert_eq!(
            parse_segment_file_name("00000000000000000042.seg"),
            Some(42)
        );
        assert_eq!(parse_segment_file_name("42.seg"), None);
        assert_eq!(parse_segment_file_name("0000000000000000004x.seg"), None);
        assert_eq!(parse_segment_file_name("00000000000000000042.tmp"), None);
        assert_eq!(
            parse_segment_file_name(&segment_file_name(u64::MAX)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn upload_marker_round_trips_and_detects_damage() {
        let h = Hash32([9; 32]);
        let b = encode_uploaded(42, Some(h));
        assert_eq!(decode_uploaded(&b), Ok((42, Some(h))));
        assert_eq!(decode_uploaded(&encode_uploaded(3, None)), Ok((3, None)));
        let mut bad = b.clone();
        bad[5] ^= 1;
        assert!(decode_uploaded(&bad).is_err());
        assert!(decode_uploaded(&b[..10]).is_err());
        assert!(decode_uploaded(&[]).is_err());
    }

    #[test]
    fn config_is_checked() {
        let mut c = JournalConfig::new("/nonexistent");
        assert!(c.validate().is_ok());
        c.segment_bytes = 0;
        assert!(matches!(c.validate(), Err(JournalError::Config(_))));
        let mut c = JournalConfig::new("/nonexistent");
        c.disk_budget_bytes = 0;
        assert!(matches!(c.validate(), Err(JournalError::Config(_))));
        let unit = JournalConfig::for_unit(
            Path::new("/data"),
            &edge_runtime::config::AuditConfig::default(),
        );
        assert_eq!(unit.dir, Path::new("/data/journal"));
        assert_eq!(
            unit.disk_budget_bytes,
            JournalConfig::DEFAULT_DISK_BUDGET_BYTES
        );
        assert_eq!(unit.retention, JournalConfig::DEFAULT_RETENTION);
    }
}
