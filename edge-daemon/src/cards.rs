//! Search cards: each cohort record's demographics, sealed on their own, in a file beside the
//! cache, so that scoring a search candidate reads ≈ 200 bytes from the OS page cache instead of
//! the whole record (a sled index read, a value-log read, AEAD over ≈ 1 KB, inflate, CBOR).
//! At 909,090 records the record path was 44 % sled reads, 25 % page-ins and 12 % inflate of a
//! search's time (BENCHMARKS.md, issue 17).
//!
//! Two files, written once by a bulk build (a cold fill's end, or a rebuild at open) and never
//! changed afterwards:
//!
//! - `cards.log`: the cards one after another, each `len (u32 BE) ‖ sealed card`, a length of 0
//!   being a tombstone (the record was removed later in the fill). A card is sealed under table
//!   `d` and its record's index key, so it cannot be moved to another patient.
//! - `cards.index`: `index key (32 B) ‖ offset in the log (u64 BE)`, sorted, one per record (the
//!   last card the fill wrote for it), with the first 8 bytes of every [`FENCE`]th key held in
//!   memory (≈ 0.25 B per record), so a card is found with one ≈ 1.3 KB read of the index and
//!   one read of the log.
//!
//! Changes after the build (updates, removals) never touch the files: the cache writes the new
//! card (or an empty value for a removal) under `d` ‖ index key in sled, in the same batch as the
//! record, and a read looks there first. The next build starts from the records again and clears
//! the `d` entries in the batch that names the new files.

use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// An index key's length (`Sealer::index_key`).
pub const ID_LEN: usize = 32;
/// One index entry: index key ‖ offset.
pub const ENTRY_LEN: usize = ID_LEN + 8;
type Entry = [u8; ENTRY_LEN];

pub const CARD_LOG: &str = "cards.log";
pub const CARD_INDEX: &str = "cards.index";
/// The seal table of a card.
pub const CARD_TABLE: &str = "d";

/// Index entries per fence (8 B of memory per 32 records; 5 in the tests, so a lookup crosses
/// block boundaries). A first version read 256 entries (10 KB) per lookup: copying them out of
/// the page cache was the largest single cost of a search at 909,090.
#[cfg(not(test))]
const FENCE: u64 = 32;
#[cfg(test)]
const FENCE: u64 = 5;
/// Entries per sorted run while building (≈ 10 MB).
#[cfg(not(test))]
const RUN_ENTRIES: usize = 262_144;
#[cfg(test)]
const RUN_ENTRIES: usize = 11;
/// A card is demographics only: a larger one is not kept (the record is read instead).
pub const MAX_CARD: u32 = 64 * 1024;
/// The length written in place of a card too large to keep.
const READ_THE_RECORD: u32 = u32::MAX;

/// What the card file says about a record.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Its sealed card.
    Card(Vec<u8>),
    /// It was removed during the fill.
    Gone,
    /// Not in the file (or too large to keep there): only the record can say.
    Absent,
}

/// Cards gathered during a bulk build: the log written as they come (aside, as
/// `cards.log.tmp`), the index entries spilled unsorted into `build_dir`.
pub struct CardBuild {
    dir: PathBuf,
    build_dir: PathBuf,
    log: BufWriter<std::fs::File>,
    offset: u64,
    spill: BufWriter<std::fs::File>,
}

impl CardBuild {
    /// Start a build for the cache folder `dir`, spilling into `build_dir` (which exists).
    pub fn create(dir: &Path, build_dir: &Path) -> std::io::Result<CardBuild> {
        Ok(CardBuild {
            dir: dir.to_path_buf(),
            build_dir: build_dir.to_path_buf(),
            log: BufWriter::with_capacity(1 << 20, create_private(&tmp(dir, CARD_LOG))?),
            offset: 0,
            spill: BufWriter::with_capacity(
                1 << 20,
                create_private(&build_dir.join("cards-spill"))?,
            ),
        })
    }

    /// Add `id`'s card (`None`: it was removed). A later add for the same id wins. A card
    /// larger than [`MAX_CARD`] is not kept: its entry says to read the record instead.
    pub fn add(&mut self, id: &[u8; ID_LEN], sealed: Option<&[u8]>) -> std::io::Result<()> {
        let body = sealed.unwrap_or(&[]);
        let (len, body) = match u32::try_from(body.len()) {
            Ok(n) if n <= MAX_CARD => (n, body),
            _ => (READ_THE_RECORD, &[][..]),
        };
        self.log.write_all(&len.to_be_bytes())?;
        self.log.write_all(body)?;
        let mut e = [0u8; ENTRY_LEN];
        e[..ID_LEN].copy_from_slice(id);
        e[ID_LEN..].copy_from_slice(&self.offset.to_be_bytes());
        self.spill.write_all(&e)?;
        self.offset += 4 + body.len() as u64;
        Ok(())
    }

    /// Sort the index (the last card per record), write both files aside, fsync them, rename
    /// them into place and fsync the folder. The caller then records that they exist.
    pub fn finish(self) -> std::io::Result<CardFile> {
        let CardBuild {
            dir,
            build_dir,
            log,
            spill,
            ..
        } = self;
        let log = log.into_inner().map_err(|e| e.into_error())?;
        log.sync_all()?;
        drop(log);
        spill.into_inner().map_err(|e| e.into_error())?;
        let mut w = BufWriter::with_capacity(1 << 20, create_private(&tmp(&dir, CARD_INDEX))?);
        let mut entries = 0u64;
        let mut fences = Vec::new();
        // Entries sort by id then offset: of several for one id, the last (newest) is kept.
        let mut pending: Option<Entry> = None;
        let mut emit = |e: &Entry, w: &mut BufWriter<std::fs::File>| -> std::io::Result<()> {
            if entries.is_multiple_of(FENCE) {
                fences.push(prefix_of(e));
            }
            entries += 1;
            w.write_all(e)
        };
        crate::sorted::sort_keys::<ENTRY_LEN>(
            &build_dir,
            &build_dir.join("cards-spill"),
            "cards",
            RUN_ENTRIES,
            |chunk| {
                for e in chunk {
                    if let Some(p) = pending {
                        if p[..ID_LEN] != e[..ID_LEN] {
                            emit(&p, &mut w)?;
                        }
                    }
                    pending = Some(*e);
                }
                Ok(())
            },
        )?;
        if let Some(p) = pending {
            emit(&p, &mut w)?;
        }
        let f = w.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(tmp(&dir, CARD_LOG), dir.join(CARD_LOG))?;
        std::fs::rename(tmp(&dir, CARD_INDEX), dir.join(CARD_INDEX))?;
        std::fs::File::open(&dir)?.sync_all()?;
        let log = std::fs::File::open(dir.join(CARD_LOG))?;
        Ok(CardFile {
            log_len: log.metadata()?.len(),
            log,
            index: std::fs::File::open(dir.join(CARD_INDEX))?,
            entries,
            fences,
        })
    }
}

/// The built card files, open for reading.
pub struct CardFile {
    log: std::fs::File,
    log_len: u64,
    index: std::fs::File,
    entries: u64,
    /// The first 8 bytes (big-endian) of every [`FENCE`]th id.
    fences: Vec<u64>,
}

impl CardFile {
    /// Open the files in `dir` and check the index (whole entries, ids strictly ascending,
    /// offsets inside the log); `None` if there are none, an error if they are damaged.
    pub fn open(dir: &Path) -> std::io::Result<Option<CardFile>> {
        use std::io::Read;
        let (log, index) = match (
            std::fs::File::open(dir.join(CARD_LOG)),
            std::fs::File::open(dir.join(CARD_INDEX)),
        ) {
            (Ok(l), Ok(i)) => (l, i),
            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(None)
            }
            (Err(e), _) | (_, Err(e)) => return Err(e),
        };
        let log_len = log.metadata()?.len();
        let len = index.metadata()?.len();
        if !len.is_multiple_of(ENTRY_LEN as u64) {
            return Err(damaged("the search card index is not whole entries"));
        }
        let entries = len / ENTRY_LEN as u64;
        let mut fences = Vec::with_capacity((entries / FENCE + 1) as usize);
        let mut r = std::io::BufReader::with_capacity(1 << 20, &index);
        let mut e = [0u8; ENTRY_LEN];
        let mut prev: Option<[u8; ID_LEN]> = None;
        for i in 0..entries {
            r.read_exact(&mut e)?;
            let id = id_of(&e);
            if prev.is_some_and(|p| p >= id) {
                return Err(damaged("the search card index is out of order"));
            }
            if offset_of(&e).saturating_add(4) > log_len {
                return Err(damaged("the search card index points past the card log"));
            }
            prev = Some(id);
            if i % FENCE == 0 {
                fences.push(prefix_of(&e));
            }
        }
        drop(r);
        Ok(Some(CardFile {
            log,
            log_len,
            index,
            entries,
            fences,
        }))
    }

    /// Records the index names.
    pub fn records(&self) -> u64 {
        self.entries
    }

    /// `id`'s card, if the file has one.
    pub fn get(&self, id: &[u8; ID_LEN]) -> std::io::Result<Found> {
        // Start at the last block whose fence is below `id`'s first 8 bytes (ids sharing them
        // may end the block before a fence equal to them), and read on while ids are lower.
        let p = u64::from_be_bytes(id[..8].try_into().unwrap_or([0; 8]));
        let mut block = (self.fences.partition_point(|&f| f < p).saturating_sub(1)) as u64;
        let mut buf = [0u8; FENCE as usize * ENTRY_LEN];
        loop {
            let start = block * FENCE;
            if start >= self.entries {
                return Ok(Found::Absent);
            }
            let n = (self.entries - start).min(FENCE) as usize;
            let bytes = &mut buf[..n * ENTRY_LEN];
            self.index.read_exact_at(bytes, start * ENTRY_LEN as u64)?;
            for e in bytes.chunks_exact(ENTRY_LEN) {
                match e[..ID_LEN].cmp(&id[..]) {
                    std::cmp::Ordering::Less => {}
                    std::cmp::Ordering::Equal => return self.read_card(offset_of(e)),
                    std::cmp::Ordering::Greater => return Ok(Found::Absent),
                }
            }
            block += 1;
        }
    }

    fn read_card(&self, offset: u64) -> std::io::Result<Found> {
        // One read covers a typical card; a longer one takes a second.
        let mut head = [0u8; 512];
        let avail = self.log_len.saturating_sub(offset).min(head.len() as u64) as usize;
        if avail < 4 {
            return Err(damaged("a search card is cut short"));
        }
        self.log.read_exact_at(&mut head[..avail], offset)?;
        let len = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        match len {
            0 => return Ok(Found::Gone),
            READ_THE_RECORD => return Ok(Found::Absent),
            _ => {}
        }
        if len > MAX_CARD || offset + 4 + u64::from(len) > self.log_len {
            return Err(damaged("a search card is cut short or too long"));
        }
        let len = len as usize;
        if 4 + len <= avail {
            return Ok(Found::Card(head[4..4 + len].to_vec()));
        }
        let mut card = vec![0u8; len];
        self.log.read_exact_at(&mut card, offset + 4)?;
        Ok(Found::Card(card))
    }
}

/// Remove the card files from `dir` (a cache emptied for a new cold fill).
pub fn remove(dir: &Path) {
    for f in [CARD_LOG, CARD_INDEX] {
        let _ = std::fs::remove_file(dir.join(f));
        let _ = std::fs::remove_file(tmp(dir, f));
    }
}

fn id_of(e: &Entry) -> [u8; ID_LEN] {
    let mut id = [0u8; ID_LEN];
    id.copy_from_slice(&e[..ID_LEN]);
    id
}

fn offset_of(e: &[u8]) -> u64 {
    e.get(ID_LEN..ENTRY_LEN)
        .and_then(|o| o.try_into().ok())
        .map_or(u64::MAX, u64::from_be_bytes)
}

fn prefix_of(e: &Entry) -> u64 {
    u64::from_be_bytes(e[..8].try_into().unwrap_or([0; 8]))
}

fn tmp(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp"))
}

fn damaged(why: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_string())
}

fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn id(i: u32) -> [u8; ID_LEN] {
        // Spread like keyed hashes: not in insertion order.
        let mut id = [0u8; ID_LEN];
        id[..4].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
        id[4..8].copy_from_slice(&i.to_be_bytes());
        id[ID_LEN - 1] = 1;
        id
    }

    #[test]
    fn the_last_card_per_record_is_found_through_several_runs_and_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("build");
        std::fs::create_dir(&build).unwrap();
        let mut b = CardBuild::create(dir.path(), &build).unwrap();
        for i in 0..100u32 {
            b.add(&id(i), Some(format!("card {i}").as_bytes())).unwrap();
        }
        // Replaced, removed, and one long card (more than one read).
        b.add(&id(7), Some(b"card 7, second")).unwrap();
        b.add(&id(8), None).unwrap();
        let long = vec![b'z'; 3000];
        b.add(&id(9), Some(&long)).unwrap();
        // A card too large to keep (odd source data): the build goes on, the record is read.
        b.add(&id(10), Some(&vec![b'y'; MAX_CARD as usize + 1]))
            .unwrap();
        let f = b.finish().unwrap();
        assert_eq!(f.records(), 100);
        for file in [f, CardFile::open(dir.path()).unwrap().unwrap()] {
            for i in 0..100u32 {
                let want = match i {
                    7 => Found::Card(b"card 7, second".to_vec()),
                    8 => Found::Gone,
                    9 => Found::Card(long.clone()),
                    10 => Found::Absent,
                    _ => Found::Card(format!("card {i}").into_bytes()),
                };
                assert_eq!(file.get(&id(i)).unwrap(), want, "record {i}");
            }
            for i in 100..140u32 {
                assert_eq!(file.get(&id(i)).unwrap(), Found::Absent);
            }
            assert_eq!(file.get(&[0u8; ID_LEN]).unwrap(), Found::Absent);
            assert_eq!(file.get(&[0xff; ID_LEN]).unwrap(), Found::Absent);
        }
        assert!(!dir.path().join("cards.log.tmp").exists());
    }

    #[test]
    fn ids_sharing_their_first_bytes_across_blocks_are_found() {
        let dir = tempfile::tempdir().unwrap();
        let build = dir.path().join("build");
        std::fs::create_dir(&build).unwrap();
        let mut b = CardBuild::create(dir.path(), &build).unwrap();
        let twin = |j: u8| {
            let mut id = [7u8; ID_LEN];
            id[20] = j;
            id
        };
        for i in 0..30u32 {
            b.add(&id(i), Some(b"other")).unwrap();
        }
        for j in (0..17u8).rev() {
            b.add(&twin(j * 2), Some(&[j])).unwrap();
        }
        let f = b.finish().unwrap();
        for j in 0..17u8 {
            assert_eq!(f.get(&twin(j * 2)).unwrap(), Found::Card(vec![j]));
            assert_eq!(f.get(&twin(j * 2 + 1)).unwrap(), Found::Absent);
        }
    }

    #[test]
    fn damaged_or_missing_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        assert!(CardFile::open(dir.path()).unwrap().is_none());
        let build = dir.path().join("build");
        std::fs::create_dir(&build).unwrap();
        let mut b = CardBuild::create(dir.path(), &build).unwrap();
        for i in 0..20u32 {
            b.add(&id(i), Some(b"a card")).unwrap();
        }
        b.finish().unwrap();
        // Cut mid-entry.
        let index = dir.path().join(CARD_INDEX);
        let bytes = std::fs::read(&index).unwrap();
        std::fs::write(&index, &bytes[..bytes.len() - 3]).unwrap();
        assert!(CardFile::open(dir.path()).is_err());
        // Out of order.
        let mut swapped = bytes.clone();
        swapped[..ENTRY_LEN].copy_from_slice(&bytes[ENTRY_LEN..2 * ENTRY_LEN]);
        swapped[ENTRY_LEN..2 * ENTRY_LEN].copy_from_slice(&bytes[..ENTRY_LEN]);
        std::fs::write(&index, &swapped).unwrap();
        assert!(CardFile::open(dir.path()).is_err());
        // The log cut short.
        std::fs::write(&index, &bytes).unwrap();
        std::fs::write(dir.path().join(CARD_LOG), b"").unwrap();
        assert!(CardFile::open(dir.path()).is_err());
        remove(dir.path());
        assert!(CardFile::open(dir.path()).unwrap().is_none());
    }
}
