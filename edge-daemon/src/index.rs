//! The cohort records' index outside sled: a sorted, immutable file of fixed-size entries
//! (record id → version, epoch and value-log pointer), and the state a cold fill builds it
//! from.
//!
//! Why: sled keeps state in memory for every entry it has ever inserted (≈ 70–90 B a record
//! beyond its page cache; BENCHMARKS.md, issue 17), so a unit whose 909,090 index entries all
//! went through sled peaked at ≈ 200 MiB during a cold fill, against ≈ 80 MiB with the entries
//! kept out of it. A cold fill writes almost every entry the unit will ever hold, in one go: it
//! is the natural moment to write them sorted, once. Sled keeps only what changes afterwards
//! (new versions, removals as empty "tombstone" values), and a read looks in sled first and in
//! the file only where sled has nothing (see `Cache::index_get`).
//!
//! During the fill, each applied batch's entries are made durable *with* the batch, as one
//! value in sled's batch (a "fill blob", `i` ‖ sequence), and are kept in memory in a
//! [`Fill`]'s table. When the table holds [`MEM_ENTRIES`], it is written as a sorted run
//! (written aside, fsync'd, renamed, directory fsync'd) and only then are the blobs it covers
//! removed. When the fill ends, the runs and the table are merged (newest wins, removals
//! dropped) into the index file, written the same way; then the blobs and runs go. A crash at
//! any point leaves runs and blobs that the next open merges the same way ([`merge`]): the file
//! exists only as the result of a merge, and is deleted before a new fill writes anything.
//!
//! File layout: entries of [`ENTRY_LEN`] bytes in strictly ascending id order, then a trailer
//! (`KIDX1`, entry count u64 BE, CRC-32C of the entries u32 BE). The CRC and the order are
//! checked when the file is opened, which also reads one fence (the first id) per
//! [`FENCE`] entries into memory: 0.5 B a record. A lookup is one `pread` of a block.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crc::{Crc, CRC_32_ISCSI};

use crate::vlog::Ptr;

const CRC: Crc<u32> = Crc::<u32>::new(&CRC_32_ISCSI);

/// A record id (the sealer's keyed index key).
pub const ID_LEN: usize = 32;
/// One entry: id ‖ live flag ‖ version ‖ epoch ‖ value-log pointer.
pub const ENTRY_LEN: usize = ID_LEN + 1 + 8 + 8 + Ptr::LEN;
const MAGIC: &[u8; 5] = b"KIDX1";
const TRAILER_LEN: usize = MAGIC.len() + 8 + 4;
/// Entries per fence: a lookup reads one block of this many (4,160 B).
#[cfg(not(test))]
pub const FENCE: u64 = 64;
#[cfg(test)]
pub const FENCE: u64 = 3;
/// Entries a fill keeps in memory before writing them as a sorted run (≈ 5 MiB of table).
#[cfg(not(test))]
pub const MEM_ENTRIES: usize = 57_000;
#[cfg(test)]
pub const MEM_ENTRIES: usize = 5;

/// Where a live record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Loc {
    pub version: u64,
    pub epoch: u64,
    pub ptr: Ptr,
}

/// An index entry: a record's location, or (`loc: None`, only inside a fill) its removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub id: [u8; ID_LEN],
    pub loc: Option<Loc>,
}

impl Entry {
    pub fn encode(&self) -> [u8; ENTRY_LEN] {
        let mut b = [0u8; ENTRY_LEN];
        b[..ID_LEN].copy_from_slice(&self.id);
        if let Some(l) = self.loc {
            b[ID_LEN] = 1;
            b[ID_LEN + 1..ID_LEN + 9].copy_from_slice(&l.version.to_be_bytes());
            b[ID_LEN + 9..ID_LEN + 17].copy_from_slice(&l.epoch.to_be_bytes());
            b[ID_LEN + 17..].copy_from_slice(&l.ptr.encode());
        }
        b
    }

    pub fn decode(b: &[u8]) -> Option<Entry> {
        if b.len() != ENTRY_LEN {
            return None;
        }
        let id: [u8; ID_LEN] = b[..ID_LEN].try_into().ok()?;
        let loc = match b[ID_LEN] {
            0 => None,
            1 => Some(Loc {
                version: u64::from_be_bytes(b[ID_LEN + 1..ID_LEN + 9].try_into().ok()?),
                epoch: u64::from_be_bytes(b[ID_LEN + 9..ID_LEN + 17].try_into().ok()?),
                ptr: Ptr::decode(&b[ID_LEN + 17..])?,
            }),
            _ => return None,
        };
        Some(Entry { id, loc })
    }
}

/// A fill blob: a batch's entries, as sled stores them until a run holds them.
pub fn encode_blob(entries: &[Entry]) -> Vec<u8> {
    let mut v = Vec::with_capacity(entries.len() * ENTRY_LEN);
    for e in entries {
        v.extend_from_slice(&e.encode());
    }
    v
}

pub fn decode_blob(b: &[u8]) -> Option<Vec<Entry>> {
    if !b.len().is_multiple_of(ENTRY_LEN) {
        return None;
    }
    b.chunks_exact(ENTRY_LEN).map(Entry::decode).collect()
}

fn corrupt(path: &Path, why: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("{}: {why}", path.display()),
    )
}

/// A sorted, immutable index file (the cache's index, or one of a fill's runs).
#[derive(Debug)]
pub struct SortedIndex {
    file: File,
    path: PathBuf,
    entries: u64,
    fences: Vec<[u8; ID_LEN]>,
}

impl SortedIndex {
    /// Write `entries` (strictly ascending ids, else an error) to `path`: aside, fsync'd,
    /// renamed, the directory fsync'd. `keep_removed`: keep removal entries (a run), or drop
    /// them (the cache's file, which has nothing beneath it).
    pub fn write(
        path: &Path,
        entries: impl Iterator<Item = std::io::Result<Entry>>,
        keep_removed: bool,
    ) -> std::io::Result<SortedIndex> {
        let tmp = path.with_extension("tmp");
        let r = Self::write_aside(path, &tmp, entries, keep_removed);
        if r.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        r
    }

    fn write_aside(
        path: &Path,
        tmp: &Path,
        entries: impl Iterator<Item = std::io::Result<Entry>>,
        keep_removed: bool,
    ) -> std::io::Result<SortedIndex> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, f);
        let mut crc = CRC.digest();
        let mut n = 0u64;
        let mut fences = Vec::new();
        let mut prev: Option<[u8; ID_LEN]> = None;
        for e in entries {
            let e = e?;
            if prev.is_some_and(|p| p >= e.id) {
                return Err(corrupt(path, "index entries out of order"));
            }
            prev = Some(e.id);
            if e.loc.is_none() && !keep_removed {
                continue;
            }
            if n.is_multiple_of(FENCE) {
                fences.push(e.id);
            }
            let b = e.encode();
            crc.update(&b);
            w.write_all(&b)?;
            n += 1;
        }
        w.write_all(MAGIC)?;
        w.write_all(&n.to_be_bytes())?;
        w.write_all(&crc.finalize().to_be_bytes())?;
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(SortedIndex {
            file: File::open(path)?,
            path: path.to_path_buf(),
            entries: n,
            fences,
        })
    }

    /// Open `path`, checking its trailer, CRC and order; `None` if there is no such file.
    pub fn open(path: &Path) -> std::io::Result<Option<SortedIndex>> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let len = file.metadata()?.len();
        let body = len
            .checked_sub(TRAILER_LEN as u64)
            .filter(|b| b.is_multiple_of(ENTRY_LEN as u64))
            .ok_or_else(|| corrupt(path, "not a whole index file"))?;
        let mut trailer = [0u8; TRAILER_LEN];
        file.read_exact_at(&mut trailer, body)?;
        let count = u64::from_be_bytes(trailer[5..13].try_into().unwrap_or_default());
        let want_crc = u32::from_be_bytes(trailer[13..].try_into().unwrap_or_default());
        if &trailer[..5] != MAGIC || count != body / ENTRY_LEN as u64 {
            return Err(corrupt(path, "bad index trailer"));
        }
        let mut r = BufReader::with_capacity(1 << 20, (&file).take(body));
        let mut crc = CRC.digest();
        let mut fences = Vec::with_capacity((count / FENCE + 1) as usize);
        let mut b = [0u8; ENTRY_LEN];
        let mut prev: Option<[u8; ID_LEN]> = None;
        for i in 0..count {
            r.read_exact(&mut b)?;
            crc.update(&b);
            let e = Entry::decode(&b).ok_or_else(|| corrupt(path, "bad index entry"))?;
            if prev.is_some_and(|p| p >= e.id) {
                return Err(corrupt(path, "index entries out of order"));
            }
            prev = Some(e.id);
            if i % FENCE == 0 {
                fences.push(e.id);
            }
        }
        drop(r);
        if crc.finalize() != want_crc {
            return Err(corrupt(path, "index checksum mismatch"));
        }
        Ok(Some(SortedIndex {
            file,
            path: path.to_path_buf(),
            entries: count,
            fences,
        }))
    }

    pub fn len(&self) -> u64 {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The entry for `id`, if the file has one (one block read).
    pub fn get(&self, id: &[u8; ID_LEN]) -> std::io::Result<Option<Entry>> {
        let block = match self.fences.partition_point(|f| f <= id) {
            0 => return Ok(None),
            n => (n - 1) as u64,
        };
        let start = block * FENCE;
        let n = (self.entries - start).min(FENCE) as usize;
        let mut buf = [0u8; FENCE as usize * ENTRY_LEN];
        let bytes = &mut buf[..n * ENTRY_LEN];
        self.file.read_exact_at(bytes, start * ENTRY_LEN as u64)?;
        // The block's entries are in id order (checked at open).
        match bytes
            .chunks_exact(ENTRY_LEN)
            .find(|e| e[..ID_LEN] >= id[..])
            .filter(|e| e[..ID_LEN] == id[..])
        {
            Some(e) => Entry::decode(e)
                .map(Some)
                .ok_or_else(|| corrupt(&self.path, "bad index entry")),
            None => Ok(None),
        }
    }

    /// Every entry in id order (read sequentially from a fresh handle).
    pub fn iter(&self) -> std::io::Result<Entries> {
        // A handle of its own on this file (not the path, which a later merge may replace),
        // read with positioned reads so the shared offset is not involved.
        Ok(Entries {
            r: BufReader::with_capacity(
                crate::sorted::MERGE_READ_BUF,
                At {
                    file: self.file.try_clone()?,
                    at: 0,
                },
            ),
            left: self.entries,
            path: self.path.clone(),
        })
    }
}

/// A file read from an offset of its own.
struct At {
    file: File,
    at: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.file.read_at(buf, self.at)?;
        self.at += n as u64;
        Ok(n)
    }
}

/// A [`SortedIndex`]'s entries in order.
pub struct Entries {
    r: BufReader<At>,
    left: u64,
    path: PathBuf,
}

impl Iterator for Entries {
    type Item = std::io::Result<Entry>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut b = [0u8; ENTRY_LEN];
        Some(
            self.r
                .read_exact(&mut b)
                .and_then(|()| Entry::decode(&b).ok_or_else(|| corrupt(&self.path, "bad entry"))),
        )
    }
}

/// A cold fill's index so far: the newest entries in memory, older ones in sorted runs.
#[derive(Debug)]
pub struct Fill {
    dir: PathBuf,
    mem: HashMap<[u8; ID_LEN], Option<Loc>>,
    runs: Vec<Arc<SortedIndex>>,
}

/// Remove a fill's run folder, durably (its parent fsync'd).
pub fn remove_runs(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {
            if let Some(parent) = dir.parent() {
                File::open(parent)?.sync_all()?;
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn run_name(i: usize) -> String {
    format!("run-{i:06}")
}

impl Fill {
    /// A new, empty fill whose runs go in `dir` (anything there is removed).
    pub fn create(dir: &Path) -> std::io::Result<Fill> {
        // Durably gone first: an old fill's runs must never reappear beside this one's.
        remove_runs(dir)?;
        std::fs::create_dir_all(dir)?;
        Ok(Fill {
            dir: dir.to_path_buf(),
            mem: HashMap::with_capacity(MEM_ENTRIES),
            runs: Vec::new(),
        })
    }

    /// The fill a crash left in `dir` (its runs, in order) with `blobs` (the entries not yet
    /// in a run, oldest first) in memory; `None` if there are neither.
    pub fn recover(dir: &Path, blobs: Vec<Entry>) -> std::io::Result<Option<Fill>> {
        let mut names = Vec::new();
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                for e in rd {
                    let name = e?.file_name().to_string_lossy().into_owned();
                    if let Some(i) = name.strip_prefix("run-").and_then(|n| n.parse().ok()) {
                        names.push(i);
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        if names.is_empty() && blobs.is_empty() {
            return Ok(None);
        }
        names.sort_unstable();
        std::fs::create_dir_all(dir)?;
        let mut runs = Vec::with_capacity(names.len());
        for i in names {
            let path = dir.join(run_name(i));
            match SortedIndex::open(&path)? {
                Some(r) => runs.push(Arc::new(r)),
                None => return Err(corrupt(&path, "index run vanished")),
            }
        }
        let mut mem = HashMap::with_capacity(blobs.len());
        for e in blobs {
            mem.insert(e.id, e.loc);
        }
        Ok(Some(Fill {
            dir: dir.to_path_buf(),
            mem,
            runs,
        }))
    }

    /// The fill's entry for `id`: `Some(None)` if it removed the record.
    pub fn get(&self, id: &[u8; ID_LEN]) -> std::io::Result<Option<Option<Loc>>> {
        if let Some(l) = self.mem.get(id) {
            return Ok(Some(*l));
        }
        for r in self.runs.iter().rev() {
            if let Some(e) = r.get(id)? {
                return Ok(Some(e.loc));
            }
        }
        Ok(None)
    }

    pub fn insert(&mut self, entries: &[Entry]) {
        for e in entries {
            self.mem.insert(e.id, e.loc);
        }
    }

    pub fn wants_run(&self) -> bool {
        self.mem.len() >= MEM_ENTRIES
    }

    /// The in-memory entries, sorted.
    fn sorted_mem(&self) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .mem
            .iter()
            .map(|(id, loc)| Entry { id: *id, loc: *loc })
            .collect();
        v.sort_unstable_by_key(|e| e.id);
        v
    }

    /// Write the in-memory entries as the next run (durable when this returns); they stay in
    /// memory until [`Fill::took_run`].
    pub fn write_run(&self) -> std::io::Result<Arc<SortedIndex>> {
        let path = self.dir.join(run_name(self.runs.len()));
        let run = SortedIndex::write(&path, self.sorted_mem().into_iter().map(Ok), true)?;
        Ok(Arc::new(run))
    }

    /// `run` (from [`Fill::write_run`]) now holds the in-memory entries.
    pub fn took_run(&mut self, run: Arc<SortedIndex>) {
        self.runs.push(run);
        self.mem.clear();
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Entries held in memory and in runs (an upper bound on the records: an id may repeat).
    pub fn entries(&self) -> u64 {
        self.mem.len() as u64 + self.runs.iter().map(|r| r.len()).sum::<u64>()
    }
}

/// Merge `fill` over `base` into a new index file at `path` (newest wins: the fill's memory,
/// then its runs newest first, then the base; removals dropped).
pub fn merge(base: Option<&SortedIndex>, fill: &Fill, path: &Path) -> std::io::Result<SortedIndex> {
    let it = merged(base, fill)?;
    // A read error ends the write before its rename: nothing at `path` changes.
    SortedIndex::write(path, it, false)
}

/// `fill` over `base`, in id order, newest wins; removals are kept (a caller that scans the
/// cache skips them). The iterator owns what it reads (handles and a sorted copy of the
/// fill's table), so it outlives any lock the caller held to get here.
pub fn merged(
    base: Option<&SortedIndex>,
    fill: &Fill,
) -> std::io::Result<impl Iterator<Item = std::io::Result<Entry>>> {
    use std::cmp::Reverse;
    // Sources by precedence: 0 = newest.
    let mut sources: Vec<Box<dyn Iterator<Item = std::io::Result<Entry>> + Send>> = Vec::new();
    sources.push(Box::new(fill.sorted_mem().into_iter().map(Ok)));
    for r in fill.runs.iter().rev() {
        sources.push(Box::new(r.iter()?));
    }
    if let Some(b) = base {
        sources.push(Box::new(b.iter()?));
    }
    let mut heap = std::collections::BinaryHeap::new();
    let mut heads: Vec<Option<Entry>> = Vec::with_capacity(sources.len());
    for (i, s) in sources.iter_mut().enumerate() {
        let head = s.next().transpose()?;
        if let Some(e) = head {
            heap.push(Reverse((e.id, i)));
        }
        heads.push(head);
    }
    let mut failed = false;
    Ok(std::iter::from_fn(
        move || -> Option<std::io::Result<Entry>> {
            if failed {
                return None;
            }
            let Reverse((id, i)) = heap.pop()?;
            let e = heads[i].take()?;
            // The first source popped for an id is its newest; the same id elsewhere is older.
            let mut advance = vec![i];
            while let Some(Reverse((nid, j))) = heap.peek().copied() {
                if nid != id {
                    break;
                }
                heap.pop();
                advance.push(j);
            }
            for j in advance {
                match sources[j].next().transpose() {
                    Ok(next) => {
                        if let Some(n) = next {
                            heap.push(Reverse((n.id, j)));
                        }
                        heads[j] = next;
                    }
                    Err(x) => {
                        failed = true;
                        return Some(Err(x));
                    }
                }
            }
            Some(Ok(e))
        },
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::collections::BTreeMap;

    fn id(n: u32) -> [u8; ID_LEN] {
        let mut b = [0u8; ID_LEN];
        b[..4].copy_from_slice(&n.to_be_bytes());
        b[31] = 7;
        b
    }

    fn loc(v: u64) -> Loc {
        Loc {
            version: v,
            epoch: 3,
            ptr: Ptr {
                seg: 1,
                off: v * 10,
                len: 99,
            },
        }
    }

    #[test]
    fn entries_and_blobs_round_trip_and_junk_is_refused() {
        let es = vec![
            Entry {
                id: id(1),
                loc: Some(loc(5)),
            },
            Entry {
                id: id(2),
                loc: None,
            },
        ];
        assert_eq!(decode_blob(&encode_blob(&es)).unwrap(), es);
        assert!(decode_blob(&[0u8; ENTRY_LEN + 1]).is_none());
        let mut bad = es[0].encode();
        bad[ID_LEN] = 9;
        assert!(Entry::decode(&bad).is_none());
    }

    /// A fill's runs and memory merged over a base agree with a map built the same way, for
    /// every id looked up one at a time and for the file read in order; removals vanish.
    #[test]
    fn a_merged_fill_agrees_with_a_reference_map() {
        let dir = tempfile::tempdir().unwrap();
        let mut reference: BTreeMap<[u8; ID_LEN], Loc> = BTreeMap::new();
        let base_entries: Vec<Entry> = (0..20)
            .map(|n| Entry {
                id: id(n * 2),
                loc: Some(loc(u64::from(n))),
            })
            .collect();
        for e in &base_entries {
            reference.insert(e.id, e.loc.unwrap());
        }
        let base = SortedIndex::write(
            &dir.path().join("base"),
            base_entries.into_iter().map(Ok),
            false,
        )
        .unwrap();
        let mut fill = Fill::create(&dir.path().join("fill")).unwrap();
        let mut x = 7u32;
        for round in 0..40u64 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let n = (x >> 8) % 50;
            let e = if x.is_multiple_of(5) {
                reference.remove(&id(n));
                Entry {
                    id: id(n),
                    loc: None,
                }
            } else {
                reference.insert(id(n), loc(100 + round));
                Entry {
                    id: id(n),
                    loc: Some(loc(100 + round)),
                }
            };
            fill.insert(&[e]);
            if fill.wants_run() {
                let run = fill.write_run().unwrap();
                fill.took_run(run);
            }
        }
        assert!(fill.runs.len() >= 3, "the test crosses runs");
        let merged = merge(Some(&base), &fill, &dir.path().join("index")).unwrap();
        let all: Vec<Entry> = merged.iter().unwrap().map(|e| e.unwrap()).collect();
        let want: Vec<Entry> = reference
            .iter()
            .map(|(k, l)| Entry {
                id: *k,
                loc: Some(*l),
            })
            .collect();
        assert_eq!(all, want);
        let reopened = SortedIndex::open(&dir.path().join("index"))
            .unwrap()
            .unwrap();
        for n in 0..60 {
            let got = reopened.get(&id(n)).unwrap().and_then(|e| e.loc);
            assert_eq!(got, reference.get(&id(n)).copied(), "id {n}");
            // The fill over the base answers the same before the merge.
            let before = match fill.get(&id(n)).unwrap() {
                Some(l) => l,
                None => base.get(&id(n)).unwrap().and_then(|e| e.loc),
            };
            assert_eq!(before, reference.get(&id(n)).copied(), "id {n} in the fill");
        }
        // A crash after the runs were written: the same runs and the unwritten entries as
        // blobs recover to the same fill.
        let blobs: Vec<Entry> = fill.sorted_mem();
        let recovered = Fill::recover(fill.dir(), blobs).unwrap().unwrap();
        let again = merge(Some(&base), &recovered, &dir.path().join("again")).unwrap();
        let again: Vec<Entry> = again.iter().unwrap().map(|e| e.unwrap()).collect();
        assert_eq!(again, want);
    }

    #[test]
    fn a_damaged_or_torn_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("index");
        let es: Vec<Entry> = (0..10)
            .map(|n| Entry {
                id: id(n),
                loc: Some(loc(u64::from(n))),
            })
            .collect();
        SortedIndex::write(&p, es.iter().copied().map(Ok), false).unwrap();
        assert_eq!(SortedIndex::open(&p).unwrap().unwrap().len(), 10);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[ENTRY_LEN * 4 + 40] ^= 1;
        std::fs::write(&p, &bytes).unwrap();
        assert!(SortedIndex::open(&p).is_err(), "a flipped bit");
        bytes[ENTRY_LEN * 4 + 40] ^= 1;
        std::fs::write(&p, &bytes[..bytes.len() - 3]).unwrap();
        assert!(SortedIndex::open(&p).is_err(), "a torn trailer");
        std::fs::write(&p, &bytes).unwrap();
        assert!(SortedIndex::open(&p).is_ok());
        // Out of order input is refused and leaves nothing behind.
        let mut rev = es.clone();
        rev.reverse();
        let q = dir.path().join("rev");
        assert!(SortedIndex::write(&q, rev.into_iter().map(Ok), false).is_err());
        assert!(!q.exists());
        assert!(SortedIndex::open(&q).unwrap().is_none());
    }
}
