//! Reading the journal back: the [`Scanner`] that streams records out of a segment file and
//! finds its way past bad bytes, and the upload read behind [`Journal::read_from`].
//!
//! Recovery (`recover.rs`) runs the scanner over every segment when the journal opens;
//! `read_from` runs it from the sparse index entry nearest the wanted seq. [`ScanItem`] and
//! [`scan_bytes`] (a scan of bytes in memory) are public (`journal::scan`) for tests
//! and tools. Parsing a record uses the framing in `format.rs`; nothing here writes.
//!
//! [`Journal::read_from`]: super::Journal::read_from

use std::fs::File;
use std::io::{self, BufReader, Cursor, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use edge_proto::audit::AuditEvent;
use edge_proto::cbor;

use super::format::{self, HEADER_BYTES, RECORD_MAGIC};
use super::{JournalError, Shared, READ_BUFFER_BYTES};

/// Window used to search for the next record after bad bytes.
const RESYNC_WINDOW: usize = 64 * 1024;

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
    let mut s = Scanner::new(Cursor::new(bytes), 0, bytes.len() as u64);
    let mut out = Vec::new();
    while let Ok(Some(item)) = s.next_item() {
        out.push(item);
    }
    out
}

/// Streams records out of a segment between two offsets, finding its way past bad bytes by
/// searching for the next record whose magic, length and CRC all check.
pub(super) struct Scanner<R> {
    r: R,
    /// Where `r` is positioned (`u64::MAX` when unknown).
    rpos: u64,
    pos: u64,
    end: u64,
}

impl<R: Read + Seek> Scanner<R> {
    pub(super) fn new(r: R, start: u64, end: u64) -> Self {
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

    pub(super) fn next_item(&mut self) -> io::Result<Option<ScanItem>> {
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

/// [`Journal::read_from`](super::Journal::read_from): up to `max_events` events from
/// `from_seq` on, in order, stopping before `max_bytes` of CBOR (but always at least one event
/// if there is one). Records that cannot be read are skipped (they were reported at open; the
/// hub sees the gap and reports it too).
pub(super) fn read_from(
    shared: &Shared,
    from_seq: u64,
    max_events: usize,
    max_bytes: usize,
) -> Result<Vec<AuditEvent>, JournalError> {
    let mut out = Vec::new();
    if max_events == 0 {
        return Ok(out);
    }
    let plan: Vec<(PathBuf, u64, u64)> = {
        let st = shared.state();
        // Events written since open are read from memory (the same events: the writer keeps
        // what it committed), unless `from_seq` is older than what memory keeps.
        // (The lock is held for pointer copies only; the events are cloned after it.)
        if st.tail.front().is_some_and(|(e, _)| e.seq <= from_seq) {
            let mut picked = Vec::new();
            let mut bytes = 0usize;
            for (event, len) in st.tail.iter().filter(|(e, _)| e.seq >= from_seq) {
                if !picked.is_empty() && bytes.saturating_add(*len) > max_bytes {
                    break;
                }
                bytes = bytes.saturating_add(*len);
                picked.push(std::sync::Arc::clone(event));
                if picked.len() >= max_events {
                    break;
                }
            }
            drop(st);
            out.extend(picked.iter().map(|e| AuditEvent::clone(e)));
            return Ok(out);
        }
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
            let Ok(plain) = shared.cipher.open(seq, &payload) else {
                skipped(shared, seq);
                continue;
            };
            let Ok(event) = cbor::from_slice::<AuditEvent>(&plain) else {
                skipped(shared, seq);
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

fn skipped(shared: &Shared, seq: u64) {
    tracing::warn!(
        seq,
        "audit journal: unreadable record skipped in upload read"
    );
    shared
        .counters
        .unreadable_skipped
        .fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::format::encode_record;
    use super::*;

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
}
