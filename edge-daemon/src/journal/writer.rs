//! The journal's writer thread: group commit. One thread owns the current segment file; every
//! append goes through it.
//!
//! [`Writer::run`] drains every queued [`Request`] into a batch, seals and frames each event
//! (the next gap-free seq, chained to the previous hash), checks the disk budget, rolls over to
//! a new segment when the current one would grow past its size (creating the file and fsyncing
//! the directory), writes the batch in one `write`, `fdatasync`s once, commits the new records
//! to the shared state, and only then answers the appenders. A failed write is undone; a failed
//! fsync or segment creation poisons the journal until it is reopened. The handle in `mod.rs`
//! sends the requests; framing comes from `format.rs`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use edge_proto::audit::{AuditEvent, Hash32};
use edge_proto::cbor;
use tokio::sync::{mpsc, oneshot};

use super::format::{self, MAX_PAYLOAD_BYTES};
use super::{JournalError, OpenGuard, SegmentMeta, Shared};

/// The spare segment: an empty file whose blocks are reserved, renamed into place at a rollover.
pub(super) const SPARE_FILE: &str = "spare.reserve";

/// Most events one group commit writes.
const MAX_BATCH_EVENTS: usize = 1024;

/// Where the writer sends an answer: an async waiter or a blocked thread.
pub(super) enum Responder<T> {
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

pub(super) type Reply = Responder<Result<AuditEvent, JournalError>>;

/// What the handle sends the writer thread.
pub(super) enum Request {
    Append {
        event: Box<AuditEvent>,
        reply: Reply,
    },
    Close(Responder<()>),
}

/// The segment appends go to.
pub(super) struct Current {
    file: File,
    first_seq: u64,
    /// Committed bytes in the file.
    len: u64,
}

impl Current {
    /// At open: appends continue in the last segment if it holds anything (an empty one was
    /// removed by recovery; the writer creates a fresh one when it first needs it).
    /// Its blocks up to `reserve` bytes are reserved ([`crate::disk::reserve`]), so appends
    /// keep working on a full disk until the segment is full.
    pub(super) fn resume(
        last: Option<&SegmentMeta>,
        reserve: u64,
    ) -> Result<Option<Current>, JournalError> {
        Ok(match last {
            Some(s) if s.bytes > 0 => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&s.path)
                    .map_err(|e| JournalError::io("opening the current segment", e))?;
                reserve_blocks(&file, reserve);
                Some(Current {
                    file,
                    first_seq: s.first_seq,
                    len: s.bytes,
                })
            }
            _ => None,
        })
    }
}

struct Staged {
    event: Box<AuditEvent>,
    reply: Reply,
    offset_in_buf: usize,
    /// The event's CBOR length (before sealing), as the uploader counts bytes.
    plain_len: usize,
}

/// The writer thread's state: the one owner of the current segment file.
pub(super) struct Writer {
    shared: Arc<Shared>,
    rx: mpsc::Receiver<Request>,
    current: Option<Current>,
    /// `None` once seq `u64::MAX` has been used.
    next_seq: Option<u64>,
    prev_hash: Hash32,
    guard: Option<OpenGuard>,
}

impl Writer {
    /// A writer continuing after `last_seq` / `last_hash`; it holds `guard` until it stops.
    pub(super) fn new(
        shared: Arc<Shared>,
        rx: mpsc::Receiver<Request>,
        current: Option<Current>,
        last_seq: u64,
        last_hash: Hash32,
        guard: OpenGuard,
    ) -> Self {
        Writer {
            shared,
            rx,
            current,
            next_seq: last_seq.checked_add(1),
            prev_hash: last_hash,
            guard: Some(guard),
        }
    }

    /// The thread's body: group-commit batches until closed or every handle is dropped.
    pub(super) fn run(mut self) {
        self.ensure_spare();
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
            let (frame, plain_len) = match self.frame(&mut event, seq, prev) {
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
                plain_len,
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

    /// Seal the event as `seq` after `prev` and frame it; also its CBOR length.
    fn frame(
        &self,
        event: &mut AuditEvent,
        seq: u64,
        prev: Hash32,
    ) -> Result<(Vec<u8>, usize), JournalError> {
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
        Ok((format::encode_record(seq, &sealed), plain.len()))
    }

    /// Create the segment whose first record is `seq`, and make its name durable.
    fn create_segment(&mut self, seq: u64) -> Result<(), JournalError> {
        let path = self.shared.config.dir.join(format::segment_file_name(seq));
        // The spare segment, reserved ahead, becomes the new one: a full disk does not stop
        // the journal at a rollover. Without a spare, a full disk refuses the file itself:
        // nothing was created, so the journal is not poisoned (the append is refused and the
        // next one tries again once there is room).
        let spare = self.shared.config.dir.join(SPARE_FILE);
        let from_spare = std::fs::rename(&spare, &path)
            .and_then(|()| OpenOptions::new().append(true).open(&path));
        let opened = match from_spare {
            Ok(f) => Ok(f),
            Err(_) => OpenOptions::new()
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&path),
        };
        let file = match opened {
            Ok(f) => f,
            Err(e) if crate::disk::is_full(&e) => {
                return Err(JournalError::io("creating a segment (the disk is full)", e));
            }
            Err(e) => {
                let err = JournalError::io("creating a segment", e);
                poison(&self.shared, &err);
                return Err(err);
            }
        };
        reserve_blocks(&file, self.shared.config.segment_bytes);
        let created = self.shared.sync_dir().map(|()| file);
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
                drop(st);
                tracing::debug!(first_seq = seq, "audit journal: new segment");
                self.ensure_spare();
                Ok(())
            }
            Err(e) => {
                let err = JournalError::io("creating a segment", e);
                poison(&self.shared, &err);
                Err(err)
            }
        }
    }

    /// Make sure a spare segment with its blocks reserved is ready for the next rollover
    /// (best effort: a disk too full for it leaves the journal to allocate as it goes).
    fn ensure_spare(&self) {
        let path = self.shared.config.dir.join(SPARE_FILE);
        if path.exists() {
            return;
        }
        let made = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .and_then(|f| crate::disk::reserve(&f, self.shared.config.segment_bytes));
        if let Err(e) = made {
            let _ = std::fs::remove_file(&path);
            tracing::debug!(error = %e, "audit journal: no spare segment reserved");
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
        // The copies the uploader will read, made before the shared state is locked.
        let fresh: Vec<(Arc<AuditEvent>, usize)> = staged
            .iter()
            .map(|s| (Arc::new((*s.event).clone()), s.plain_len))
            .collect();
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
            for e in fresh {
                if st.tail.len() >= super::TAIL_EVENTS {
                    st.tail.pop_front();
                }
                st.tail.push_back(e);
            }
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

/// Reserve a segment's blocks ahead of its appends; a disk already too full to reserve them,
/// or a filesystem without `fallocate`, leaves appends to allocate as they go.
fn reserve_blocks(file: &File, len: u64) {
    if let Err(e) = crate::disk::reserve(file, len) {
        tracing::debug!(error = %e, "audit journal: could not reserve the segment's space");
    }
}
