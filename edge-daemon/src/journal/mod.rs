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
//!
//! Layout: this file holds the public API (the [`Journal`] handle, configuration, the cipher
//! hook, errors, [`Recovery`] and status reports) and the state shared with the writer thread.
//! [`format`] is the on-disk encoding (records, CRC, segment names, the upload marker);
//! `writer` the group-commit thread; `scan` the record scanner and the upload read; `recover`
//! what opening does (scan, verify the chain, truncate a torn tail, report).

use std::fmt;
use std::fs::{self, DirBuilder, File};
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use edge_proto::audit::{AuditEvent, ChainError, Hash32};
use edge_proto::time::UnixMillis;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

/// The on-disk record format, shared by the journal, its tests and offline tools.
pub mod format;
mod recover;
pub mod scan;
mod writer;

use format::{MAX_PAYLOAD_BYTES, UPLOADED_FILE};
use writer::{Current, Request, Responder, Writer};

/// Requests waiting for the writer (bounded: appenders wait when it is full).
const QUEUE_CAPACITY: usize = 4096;
/// One sparse index entry per this many records of a segment (for `read_from`).
const INDEX_EVERY: u64 = 64;
/// Largest segment size accepted in the configuration.
const MAX_SEGMENT_BYTES: u64 = 1 << 30;
/// Buffer for scanning segment files.
const READ_BUFFER_BYTES: usize = 256 * 1024;

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
            segment_bytes: audit.segment_bytes,
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
    /// The journal in this directory is already open (in this process or another).
    #[error("audit journal {0} is already open (by this or another process)")]
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
    /// The last [`TAIL_EVENTS`] events committed since open, with their CBOR length, in seq
    /// order and gap-free: the uploader reads a live unit's events from here instead of reading
    /// back, decrypting and decoding what was just written (`scan::read_from`). Shared, so the
    /// lock (which every append's status update takes) is held for pointer copies, not clones.
    tail: std::collections::VecDeque<(Arc<AuditEvent>, usize)>,
}

/// Events kept in memory for the uploader (about 1 KiB each).
pub(super) const TAIL_EVENTS: usize = 4096;

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
    /// The open two-slot upload marker and the slot its next write goes to (taken under
    /// `maintenance`); `None` until the first mark, or after a failed write.
    marker: Mutex<Option<(File, usize)>>,
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

/// The lock file that makes one writer per journal directory: an exclusive OS lock
/// (`flock`), held for as long as the journal is open and released by the kernel when the
/// process ends, however it ends. A second open — in this process or another — is refused.
const LOCK_FILE: &str = ".lock";

struct OpenGuard {
    _file: File,
}

impl OpenGuard {
    fn acquire(dir: &Path) -> Result<Self, JournalError> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(dir.join(LOCK_FILE))
            .map_err(|e| JournalError::io("opening the journal's lock file", e))?;
        match file.try_lock() {
            Ok(()) => Ok(OpenGuard { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(JournalError::AlreadyOpen(dir.to_path_buf())),
            Err(fs::TryLockError::Error(e)) => {
                Err(JournalError::io("locking the journal directory", e))
            }
        }
    }
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

        let loaded = recover::load(&config, cipher.as_ref())?;
        let recovery = loaded.recovery.clone();
        recover::log_recovery(&config.dir, &recovery);

        let state = State {
            total_bytes: loaded.segments.iter().map(|s| s.bytes).sum(),
            segments: loaded.segments,
            last_seq: loaded.last_seq,
            last_hash: loaded.last_hash,
            uploaded_seq: loaded.uploaded_seq,
            problems: recovery.problems.clone(),
            failed: None,
            tail: std::collections::VecDeque::new(),
        };
        let current = Current::resume(state.segments.last(), config.segment_bytes)?;
        let shared = Arc::new(Shared {
            config,
            cipher,
            state: Mutex::new(state),
            maintenance: Mutex::new(()),
            marker: Mutex::new(None),
            counters: Counters::default(),
        });
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let writer = Writer::new(
            Arc::clone(&shared),
            rx,
            current,
            loaded.last_seq,
            loaded.last_hash,
            guard,
        );
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
        scan::read_from(&self.shared, from_seq, max_events, max_bytes)
    }

    /// Write the upload marker (caller holds `maintenance`): in place, into the slot that does
    /// not hold the current marker, then `fdatasync` ([`format::UPLOADED_FILE_BYTES`]). The
    /// first write after open checks the file: a one-slot file (the earlier format), a missing
    /// or unreadable one is replaced atomically by a two-slot file holding this marker.
    fn write_marker(&self, bytes: &[u8]) -> io::Result<()> {
        use std::os::unix::fs::FileExt as _;
        let path = self.shared.config.dir.join(UPLOADED_FILE);
        let mut m = self.shared.marker.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_none() {
            let current = std::fs::read(&path).ok().and_then(|b| {
                (b.len() == format::UPLOADED_FILE_BYTES)
                    .then(|| format::decode_uploaded_file(&b).ok())
                    .flatten()
            });
            match current {
                Some((_, _, slot)) => {
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&path)?;
                    // The file's directory entry may be one an earlier attempt renamed into
                    // place but could not sync: make it durable before relying on it.
                    self.shared.sync_dir()?;
                    *m = Some((f, 1 - slot));
                }
                None => {
                    let mut both = bytes.to_vec();
                    both.resize(format::UPLOADED_FILE_BYTES, 0);
                    // Slot 0 holds this marker; slot 1 (zeros) is invalid until written.
                    edge_runtime::fsutil::write_atomic(
                        &path,
                        &both,
                        edge_runtime::fsutil::MODE_PRIVATE,
                    )?;
                    self.shared
                        .counters
                        .dir_fsyncs
                        .fetch_add(1, Ordering::Relaxed);
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open(&path)?;
                    *m = Some((f, 1));
                    return Ok(());
                }
            }
        }
        let Some((f, slot)) = m.as_mut() else {
            return Err(io::Error::other("no upload marker file"));
        };
        let written = f
            .write_all_at(bytes, (*slot * format::UPLOADED_SLOT_STRIDE) as u64)
            .and_then(|()| f.sync_data());
        match written {
            Ok(()) => {
                *slot = 1 - *slot;
                Ok(())
            }
            Err(e) => {
                // Start again from what is on disk at the next mark.
                *m = None;
                Err(e)
            }
        }
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
        let bytes = format::encode_uploaded(upto_seq, hash);
        self.write_marker(&bytes)
            .map_err(|e| JournalError::io("writing the upload marker", e))?;
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
            let victims: Vec<SegmentMeta> = st.segments.drain(..n).collect();
            // What is no longer on disk is no longer read from memory either.
            if let Some(gone) = victims.iter().filter_map(|s| s.last_seq).max() {
                while st.tail.front().is_some_and(|(e, _)| e.seq <= gone) {
                    st.tail.pop_front();
                }
            }
            victims
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

    /// The hash of the last event appended ([`GENESIS`](edge_proto::audit::GENESIS) if none).
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

#[cfg(test)]
mod tests {
    use super::*;

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
