//! The cache's value log: sealed cohort records appended to segment files, so that sled's
//! B-tree holds only small index entries (version, epoch, where the value is) and the records
//! themselves are written once, sequentially.
//!
//! A segment is `NNNNNNNN.seg` in the log's folder (inside the sled folder, so discarding or
//! moving the cache aside takes its values with it). An entry is
//! `len(value) u32 BE ‖ len(key) u8 ‖ key ‖ value`; a [`Ptr`] names the value's segment,
//! offset and length. Values are already sealed (AEAD, bound to their key), so the log adds no
//! checksums of its own: a torn or altered value fails to open.
//!
//! Durability is ordered by the caller ([`crate::cache::Cache`]): appends are buffered, then
//! [`ValueLog::sync`] writes and fsyncs them *before* the index entries that point at them are
//! written. A crash in between leaves unreferenced bytes, never an index entry pointing at
//! nothing. Space is reclaimed by rewriting a mostly-dead segment's live values to the end of
//! the log and deleting it only after the index has moved (the cache's `compact`).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_MAX: u64 = 64 * 1024 * 1024;
/// The largest value the log accepts or reads back.
pub const VALUE_MAX: u32 = edge_proto::sync::MAX_FRAME_BYTES as u32 + 4096;

/// Where a value is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ptr {
    pub seg: u32,
    pub off: u64,
    pub len: u32,
}

impl Ptr {
    /// Encoded length.
    pub const LEN: usize = 16;

    pub fn encode(&self) -> [u8; Ptr::LEN] {
        let mut b = [0u8; Ptr::LEN];
        b[..4].copy_from_slice(&self.seg.to_be_bytes());
        b[4..12].copy_from_slice(&self.off.to_be_bytes());
        b[12..].copy_from_slice(&self.len.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Option<Ptr> {
        if b.len() != Ptr::LEN {
            return None;
        }
        Some(Ptr {
            seg: u32::from_be_bytes(b.get(..4)?.try_into().ok()?),
            off: u64::from_be_bytes(b.get(4..12)?.try_into().ok()?),
            len: u32::from_be_bytes(b.get(12..)?.try_into().ok()?),
        })
    }
}

struct Inner {
    /// Every segment, open for reading.
    segments: BTreeMap<u32, Arc<File>>,
    active: u32,
    /// The active segment, open for appending, and its length on disk.
    writer: File,
    written: u64,
    /// Appended and not yet written: values here are read from memory.
    pending: Vec<u8>,
}

/// The value log (see the module docs). Shared; appends come from one writer at a time.
pub struct ValueLog {
    dir: PathBuf,
    segment_max: u64,
    inner: Mutex<Inner>,
}

fn seg_path(dir: &Path, id: u32) -> PathBuf {
    dir.join(format!("{id:08}.seg"))
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .read(true)
        .open(path)
}

impl ValueLog {
    /// Open (or create) the log in `dir`.
    pub fn open(dir: &Path) -> std::io::Result<ValueLog> {
        Self::open_with(dir, SEGMENT_MAX)
    }

    /// Open with another segment size (tests).
    pub fn open_with(dir: &Path, segment_max: u64) -> std::io::Result<ValueLog> {
        std::fs::create_dir_all(dir)?;
        let mut segments = BTreeMap::new();
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".seg"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            segments.insert(id, Arc::new(File::open(e.path())?));
        }
        let active = segments.keys().next_back().copied().unwrap_or(1);
        let writer = open_append(&seg_path(dir, active))?;
        let written = writer.metadata()?.len();
        segments.insert(active, Arc::new(File::open(seg_path(dir, active))?));
        if let Ok(d) = File::open(dir) {
            d.sync_all()?;
        }
        Ok(ValueLog {
            dir: dir.to_path_buf(),
            segment_max,
            inner: Mutex::new(Inner {
                segments,
                active,
                writer,
                written,
                pending: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append `value` (stored under index `key`, kept beside it for compaction). Buffered:
    /// durable only after [`ValueLog::sync`].
    pub fn append(&self, key: &[u8], value: &[u8]) -> std::io::Result<Ptr> {
        let len = u32::try_from(value.len())
            .ok()
            .filter(|l| *l <= VALUE_MAX)
            .ok_or_else(|| std::io::Error::other("value too large for the value log"))?;
        let klen = u8::try_from(key.len())
            .map_err(|_| std::io::Error::other("key too long for the value log"))?;
        let mut g = self.lock();
        let entry = 4 + 1 + key.len() as u64 + u64::from(len);
        if g.written + g.pending.len() as u64 + entry > self.segment_max
            && g.written + g.pending.len() as u64 > 0
        {
            Self::roll(&self.dir, &mut g)?;
        }
        let off = g.written + g.pending.len() as u64 + 5 + key.len() as u64;
        g.pending.extend_from_slice(&len.to_be_bytes());
        g.pending.push(klen);
        g.pending.extend_from_slice(key);
        g.pending.extend_from_slice(value);
        Ok(Ptr {
            seg: g.active,
            off,
            len,
        })
    }

    /// Write out and fsync the active segment, then start the next one.
    fn roll(dir: &Path, g: &mut Inner) -> std::io::Result<()> {
        Self::write_pending(g)?;
        let next = g.active + 1;
        let path = seg_path(dir, next);
        g.writer = open_append(&path)?;
        g.segments.insert(next, Arc::new(File::open(&path)?));
        g.active = next;
        g.written = 0;
        File::open(dir)?.sync_all()?;
        Ok(())
    }

    fn write_pending(g: &mut Inner) -> std::io::Result<()> {
        if !g.pending.is_empty() {
            let pending = std::mem::take(&mut g.pending);
            if let Err(e) = g.writer.write_all(&pending) {
                // Whatever part was written is unreferenced; put the rest back so a retry
                // appends it again after it (pointers given out stay valid only if the write
                // succeeds, and the caller does not index them when this fails).
                let _ = g.writer.set_len(g.written);
                g.pending = pending;
                return Err(e);
            }
            g.written += pending.len() as u64;
        }
        g.writer.sync_data()
    }

    /// Make everything appended so far durable.
    pub fn sync(&self) -> std::io::Result<()> {
        Self::write_pending(&mut self.lock())
    }

    /// Forget appends not yet synced (their apply failed).
    pub fn discard_pending(&self) {
        self.lock().pending.clear();
    }

    /// Read a value back.
    pub fn read(&self, p: Ptr) -> std::io::Result<Vec<u8>> {
        if p.len > VALUE_MAX {
            return Err(std::io::Error::other("value pointer too long"));
        }
        let file = {
            let g = self.lock();
            if p.seg == g.active && p.off >= g.written {
                let start = usize::try_from(p.off - g.written).unwrap_or(usize::MAX);
                return g
                    .pending
                    .get(start..start.saturating_add(p.len as usize))
                    .map(<[u8]>::to_vec)
                    .ok_or_else(|| std::io::Error::other("value pointer past the log's end"));
            }
            g.segments
                .get(&p.seg)
                .cloned()
                .ok_or_else(|| std::io::Error::other("value pointer to a missing segment"))?
        };
        let mut buf = vec![0u8; p.len as usize];
        file.read_exact_at(&mut buf, p.off)?;
        Ok(buf)
    }

    /// The segments and their sizes on disk, oldest first.
    pub fn segments(&self) -> Vec<(u32, u64)> {
        let g = self.lock();
        g.segments
            .iter()
            .map(|(id, f)| {
                let size = if *id == g.active {
                    g.written
                } else {
                    f.metadata().map(|m| m.len()).unwrap_or(0)
                };
                (*id, size)
            })
            .collect()
    }

    /// The segment being appended to.
    pub fn active(&self) -> u32 {
        self.lock().active
    }

    /// Every entry of a closed segment: (key, where its value is). Stops at a torn tail.
    pub fn entries(&self, seg: u32) -> std::io::Result<Vec<(Vec<u8>, Ptr)>> {
        // Streamed (headers and keys read, values skipped): reading a 64 MiB segment whole
        // cost up to twice that in memory while a compaction ran.
        let f = File::open(seg_path(&self.dir, seg))?;
        let size = f.metadata()?.len();
        let mut r = std::io::BufReader::with_capacity(64 * 1024, f);
        let mut out = Vec::new();
        let mut at = 0u64;
        let mut head = [0u8; 5];
        while at + 5 <= size {
            r.read_exact(&mut head)?;
            let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
            let klen = u64::from(head[4]);
            let val_at = at + 5 + klen;
            let end = val_at + u64::from(len);
            if len > VALUE_MAX || end > size {
                break;
            }
            let mut key = vec![0u8; head[4] as usize];
            r.read_exact(&mut key)?;
            r.seek_relative(i64::from(len))?;
            out.push((
                key,
                Ptr {
                    seg,
                    off: val_at,
                    len,
                },
            ));
            at = end;
        }
        Ok(out)
    }

    /// Delete a closed segment (nothing may point into it any more).
    pub fn remove(&self, seg: u32) -> std::io::Result<()> {
        let mut g = self.lock();
        if seg == g.active {
            return Err(std::io::Error::other(
                "the active segment cannot be removed",
            ));
        }
        g.segments.remove(&seg);
        drop(g);
        match std::fs::remove_file(seg_path(&self.dir, seg)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn appended_values_read_back_before_and_after_sync_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path()).unwrap();
        let a = log.append(b"ka", b"value a").unwrap();
        let b = log.append(b"kb", &[7u8; 3000]).unwrap();
        assert_eq!(log.read(a).unwrap(), b"value a");
        log.sync().unwrap();
        assert_eq!(log.read(b).unwrap(), vec![7u8; 3000]);
        let c = log.append(b"kc", b"c").unwrap();
        log.discard_pending();
        drop(log);
        let log = ValueLog::open(dir.path()).unwrap();
        assert_eq!(log.read(a).unwrap(), b"value a");
        assert!(log.read(c).is_err(), "discarded before sync");
        let d = log.append(b"kd", b"d").unwrap();
        assert_eq!(d.off, c.off, "appends continue where the durable log ends");
        log.sync().unwrap();
        // A closed segment lists its entries with their keys (the active one too).
        let e = log.entries(a.seg).unwrap();
        assert_eq!(e.len(), 3);
        assert_eq!(e[0], (b"ka".to_vec(), a));
        assert_eq!(e[2].0, b"kd".to_vec());
        // Bad pointers are errors, not panics.
        assert!(log
            .read(Ptr {
                seg: 99,
                off: 0,
                len: 1
            })
            .is_err());
        assert!(log
            .read(Ptr {
                seg: a.seg,
                off: 1 << 40,
                len: 4
            })
            .is_err());
        assert_eq!(Ptr::decode(&a.encode()), Some(a));
        assert_eq!(Ptr::decode(b"short"), None);
    }

    #[test]
    fn segments_roll_and_closed_ones_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let log = ValueLog::open(dir.path()).unwrap();
        let big = vec![1u8; 1024 * 1024];
        let mut ptrs = Vec::new();
        for i in 0..70u32 {
            ptrs.push(log.append(&i.to_be_bytes(), &big).unwrap());
        }
        log.sync().unwrap();
        let segs = log.segments();
        assert_eq!(segs.len(), 2, "{segs:?}");
        assert!(segs[0].1 <= SEGMENT_MAX);
        assert_eq!(log.read(ptrs[69]).unwrap(), big);
        assert!(log.remove(log.active()).is_err());
        log.remove(segs[0].0).unwrap();
        assert!(log.read(ptrs[0]).is_err());
        assert_eq!(log.read(ptrs[69]).unwrap(), big);
    }
}
