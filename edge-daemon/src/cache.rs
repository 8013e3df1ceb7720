//! The unit's cache of critical summaries and its sync state, in sled, sealed at rest.
//!
//! One tree, keys prefixed by kind. NHS numbers never appear in keys: a record's key is the
//! sealer's keyed hash of the NHS number (`seal::Sealer::index_key`), and every value passes
//! through `Sealer::seal` / `Sealer::open` (AEAD, associated data binding the value to its
//! table and key, so values cannot be swapped between patients).
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `r` | index key (32 B) | version (u64 BE) ‖ epoch (u64 BE) ‖ `0xF0` ‖ [`Ptr`] into the value log — the cohort (or, written before the log, the sealed record inline) |
//! | `o` | index key (32 B) | version ‖ expires-at (i64 BE, ms) ‖ sealed record — on-demand copies |
//! | `s` | `state` | sealed [`SyncState`] |
//! | `t` | `meta` | sealed [`CacheMeta`] (last sync, hub time offset) |
//! | `t` | `count` | cohort records held (u64 BE; written in every apply's batch) |
//! | `t` | `search` | the search postings' layout ([`SEARCH_LAYOUT`]); absent → rebuilt at open |
//! | `x` | kind (1 B) ‖ keyed hash (8 B) ‖ index key (32 B) | empty — a search posting |
//! | `d` | index key (32 B) | a record's search card (sealed demographics) written since the card files were built; empty: removed since (`cards.rs`) |
//!
//! A sealed record's plaintext is `0x02` ‖ the [`CachedRecord`]'s CBOR as an LZ4 block (its
//! length first, 4 bytes little-endian): compressed before sealing, since ciphertext does not
//! compress and the CBOR's repeated keys and codes shrink ≈ 2 ×. Records written by earlier
//! versions still open: `0x01` ‖ raw deflate (LZ4 writes and reads a record for a fraction of
//! deflate's CPU, for ≈ 9 % more bytes; BENCHMARKS.md, issue 17's eighth step), and the bare
//! CBOR from before compression (a map, first byte `0xA0`–`0xBF`).
//!
//! Nothing about the cohort is held in memory per record: the record count is a counter, "is
//! this patient held" is a key lookup, and the demographic search reads postings from disk.
//! A posting (`x`) lists a patient's index key under the keyed hash
//! (`Sealer::index_key("x", kind ‖ pair)`, first 8 bytes) of one pair they can be searched by
//! (`search::postings`: family key × birth date, family key × district, birth date × district,
//! former NHS number). Names, dates and postcodes are never on disk in clear; what the disk does
//! show is which records share a hashed pair. Postings are written in the same batch as their
//! record, so they are never out of step with it; a search re-checks every patient it finds
//! against the record itself.
//!
//! Cohort records themselves are in the value log (`vlog.rs`, segment files in the sled folder):
//! written once, sequentially, so sled's tree holds only small entries and stays mostly in its
//! cache. Space held by replaced and removed records is reclaimed by rewriting a segment that is
//! more than half dead ([`Cache::apply`] does one such segment at a time): its live values are
//! appended again, the index moved in one batch, and the segment deleted only after that batch
//! is durable — a crash at any point leaves every record readable (and an orphaned segment,
//! deleted at the next open).
//!
//! Writes from sync go through [`Cache::apply`]: the values are appended to the log and synced
//! first; then the whole batch of index entries, postings and the new sync state is one
//! `sled::Batch` (atomic), flushed (fsync) before the batch is acknowledged to the hub. Only
//! the sync task writes `r` and `s`, so reading the tree while building the batch is safe.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use edge_proto::cbor;

use crate::index::{self as idx, Fill, Loc, SortedIndex};
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::sign::record_digest;
use edge_proto::sync::store::StoredVersion;
use edge_proto::sync::{apply_to, Apply, ApplyKind, ApplyReport, Bytes, SyncState, UnitStore};
use edge_proto::time::UnixMillis;
use serde::{Deserialize, Serialize};
use tracing::{error, info, warn};

use crate::seal::{KeyState, Sealer};
use crate::search::{
    alias_in, postings, search_in, PostingKey, PostingStore, Scored, SearchFailed, SearchOutcome,
    SearchQuery,
};
use crate::vlog::{Ptr, ValueLog};

/// Just the demographics of a summary, for the search index. `patient` is the summary's third
/// field, so decoding stops there: the clinical sections after it are never walked (a cold
/// sync spent ≈ 12 % of the unit's CPU skipping them token by token).
struct DemographicsOnly(edge_proto::model::Demographics);

impl<'de> Deserialize<'de> for DemographicsOnly {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Fields;
        impl<'de> serde::de::Visitor<'de> for Fields {
            type Value = DemographicsOnly;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a critical summary")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Self::Value, A::Error> {
                while let Some(key) = map.next_key::<String>()? {
                    if key == "patient" {
                        return Ok(DemographicsOnly(map.next_value()?));
                    }
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
                Err(serde::de::Error::missing_field("patient"))
            }
        }
        d.deserialize_map(Fields)
    }
}

fn demographics(record: &[u8]) -> Option<edge_proto::model::Demographics> {
    cbor::from_slice::<DemographicsOnly>(record)
        .ok()
        .map(|d| d.0)
}

/// Why the cache failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache storage: {0}")]
    Sled(#[from] sled::Error),
    #[error("cache value under {table} does not open (tampered, or sealed under another key)")]
    Seal { table: &'static str },
    #[error("cache value under {table} does not decode: {why}")]
    Decode { table: &'static str, why: String },
    #[error("cache: {0}")]
    Io(#[from] std::io::Error),
    #[error("the cache's data key has been destroyed (tamper or wipe); re-provision the unit")]
    Shredded,
    /// A cold fill is under way: its search postings are built once it finishes.
    #[error("the search postings are built when the cold fill finishes")]
    SearchBuilding,
}

impl CacheError {
    /// The write failed because the disk is full: nothing was applied, and the same write
    /// succeeds once there is room.
    pub fn is_disk_full(&self) -> bool {
        match self {
            CacheError::Io(e) | CacheError::Sled(sled::Error::Io(e)) => crate::disk::is_full(e),
            _ => false,
        }
    }
}

/// A cached summary: the hub-signed bytes, their digest (checked before serving), and when
/// this unit received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedRecord {
    pub nhs: NhsNumber,
    pub version: u64,
    pub record: Bytes,
    pub digest: [u8; 32],
    pub synced_at: UnixMillis,
}

/// Facts about the cache as a whole.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CacheMeta {
    /// Local time of the last batch applied or the last "caught up".
    pub last_sync_at: Option<UnixMillis>,
    /// Hub time up to which the cache is known complete (the last time it was caught up).
    pub cache_as_of: Option<UnixMillis>,
    /// Hub time − local time at the last contact.
    pub hub_offset_ms: i64,
}

/// First byte of a record plaintext written as raw deflate (versions before LZ4; see the module
/// docs).
const DEFLATED: u8 = 0x01;
/// First byte of a record plaintext written as an LZ4 block (see the module docs).
const LZ4: u8 = 0x02;
/// A record inflates to at most this (the frame limit: no record is larger on the wire).
const MAX_PLAIN: u64 = edge_proto::sync::MAX_FRAME_BYTES as u64;

/// Record compression: LZ4 for what is written, and one inflate state, reused record after
/// record, for records written as deflate by earlier versions (a fresh zlib state per record is
/// ≈ 300 KB allocated and freed, which glibc's per-thread arenas turned into hundreds of MiB of
/// resident memory during a cold sync).
struct Codec {
    unz: std::sync::Mutex<flate2::Decompress>,
}

impl Codec {
    fn new() -> Codec {
        Codec {
            unz: std::sync::Mutex::new(flate2::Decompress::new(false)),
        }
    }

    /// [`LZ4`] ‖ length (4 B, little-endian) ‖ the LZ4 block of `plain`.
    fn compress(&self, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        let len = u32::try_from(plain.len())
            .ok()
            .filter(|&n| u64::from(n) <= MAX_PLAIN)
            .ok_or_else(|| std::io::Error::other("record past the size limit"))?;
        let mut out = vec![0u8; 5 + lz4_flex::block::get_maximum_output_size(plain.len())];
        out[0] = LZ4;
        out[1..5].copy_from_slice(&len.to_le_bytes());
        let n =
            lz4_flex::block::compress_into(plain, &mut out[5..]).map_err(std::io::Error::other)?;
        out.truncate(5 + n);
        Ok(out)
    }

    /// Decompress an LZ4 record (after its marker), refusing one that declares more than
    /// [`MAX_PLAIN`] before allocating for it.
    fn unlz4(&self, z: &[u8]) -> Result<Vec<u8>, String> {
        let (len, block) = z.split_first_chunk::<4>().ok_or("short LZ4 record")?;
        let len = u32::from_le_bytes(*len);
        if u64::from(len) > MAX_PLAIN {
            return Err("declares more than the record size limit".into());
        }
        let mut out = vec![0u8; len as usize];
        let n = lz4_flex::block::decompress_into(block, &mut out)
            .map_err(|e| format!("does not decompress: {e}"))?;
        if n != out.len() {
            return Err("decompresses short of its declared length".into());
        }
        Ok(out)
    }

    /// Raw deflate at the fastest level, after the [`DEFLATED`] marker: what versions before LZ4
    /// wrote (kept for tests that make such records).
    #[cfg(test)]
    fn deflate(&self, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        let mut z = flate2::Compress::new(flate2::Compression::fast(), false);
        let mut out = Vec::with_capacity(plain.len() + plain.len() / 1024 + 64);
        out.push(DEFLATED);
        match z.compress_vec(plain, &mut out, flate2::FlushCompress::Finish) {
            Ok(flate2::Status::StreamEnd) => Ok(out),
            Ok(_) => Err(std::io::Error::other("deflate did not finish")),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    /// Inflate a compressed record, refusing one that would grow past [`MAX_PLAIN`].
    fn inflate(&self, z: &[u8]) -> Result<Vec<u8>, String> {
        let mut d = self.unz.lock().unwrap_or_else(|p| p.into_inner());
        d.reset(false);
        let mut out = Vec::with_capacity(z.len().saturating_mul(4).min(1 << 20));
        loop {
            let before = d.total_in();
            let consumed = usize::try_from(before).unwrap_or(usize::MAX);
            let input = z.get(consumed..).unwrap_or(&[]);
            if out.len() == out.capacity() {
                if out.len() as u64 >= MAX_PLAIN {
                    return Err("inflates past the record size limit".into());
                }
                out.reserve(out.len().max(4096));
            }
            match d.decompress_vec(input, &mut out, flate2::FlushDecompress::Finish) {
                Ok(flate2::Status::StreamEnd) => break,
                Ok(_) if d.total_in() == before && out.len() < out.capacity() => {
                    return Err("does not inflate: truncated".into())
                }
                Ok(_) => {}
                Err(e) => return Err(format!("does not inflate: {e}")),
            }
        }
        if out.len() as u64 > MAX_PLAIN {
            return Err("inflates past the record size limit".into());
        }
        Ok(out)
    }
}

/// Written beside the cache when its key is shredded; while it exists the unit serves nothing.
pub const TAMPER_MARKER: &str = "SHREDDED";

const T_RECORD: &str = "r";
const T_FETCHED: &str = "o";
const K_STATE: &[u8] = b"sstate";
const K_META: &[u8] = b"tmeta";
const K_COUNT: &[u8] = b"tcount";
const K_SEARCH: &[u8] = b"tsearch";
const T_POSTING: &[u8] = b"x";
/// A search card changed since the card files were built (see `cards.rs`).
const T_CARD: &[u8] = b"d";
/// A cold fill's index entries not yet in a sorted run (`i` ‖ sequence; `index.rs`).
const T_FILL: &[u8] = b"i";
/// Present from a cold fill's first batch until the batch that removes its blobs after the
/// merge: runs found on disk without it are an earlier fill's leftovers, never read.
const K_FILLING: &[u8] = b"tfilling";
/// The cohort records' sorted index file, and the folder of a cold fill's runs (`index.rs`).
const INDEX_FILE: &str = "index.sorted";
const FILL_DIR: &str = "index-fill";
/// Record entries in sled (changes since the sorted index file was written, removals
/// included) past which they are merged into a new file, so sled's memory stays bounded by
/// churn rather than growing with it (≈ 6 MiB of sled state at this many; a merge at 909,090
/// records reads and writes ≈ 60 MB once). See `Cache::remerge`.
#[cfg(not(test))]
const REMERGE_AT: usize = 65_536;
#[cfg(test)]
const REMERGE_AT: usize = 16;
/// sled removals per batch when a merge clears sled's record entries.
const REMERGE_BATCH: usize = 256;
/// Values moved per chunk when a value-log segment is compacted.
const COMPACT_BATCH: usize = 1024;
/// The search postings' layout; a cache without it (or with another) has them rebuilt at open.
pub const SEARCH_LAYOUT: &[u8] = b"pairs-2";
/// The layout marker when some postings are in the sorted posting file ([`PostingFile`]) and
/// the search cards in the card files (`cards.rs`). The earlier `pairs-2+file` (no cards) is
/// rebuilt once at open. A card holds keys derived by this build's normalisation, phonetic
/// code and nickname table (`search::Scored`): change any of them and change this marker.
const SEARCH_LAYOUT_FILE: &[u8] = b"pairs-2+file+cards-1";
/// Bytes of the keyed hash in a posting's key (a collision only adds a candidate that the
/// re-check then drops).
const POSTING_HASH: usize = 8;
/// sled's page cache. sled keeps every entry it has inserted in memory until this fills (about
/// 90 B per record, heaptrack), so the cache is what makes the unit's memory grow with its
/// records: at 32 MiB a 909,090-record cold fill peaked at 218 MiB in process, at 8 MiB at
/// 164 MiB, with the same apply rate and search latency (most reads miss either way at that
/// size; the value log and postings are read from the OS page cache). BENCHMARKS.md, issue 17.
const SLED_CACHE_BYTES: u64 = 8 * 1024 * 1024;
/// An index key's length (`Sealer::index_key`).
const ID_LEN: usize = 32;

fn header(a: u64, b: u64, sealed: Vec<u8>) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + sealed.len());
    v.extend_from_slice(&a.to_be_bytes());
    v.extend_from_slice(&b.to_be_bytes());
    v.extend(sealed);
    v
}

/// First byte after an index entry's header when the record is in the value log (a sealed
/// value starts with the seal's version, 1).
const IN_LOG: u8 = 0xF0;

fn log_ref(p: Ptr) -> Vec<u8> {
    let mut v = Vec::with_capacity(1 + Ptr::LEN);
    v.push(IN_LOG);
    v.extend_from_slice(&p.encode());
    v
}

/// The value-log pointer in an index entry's remainder, if it is one.
fn ptr_of(rest: &[u8]) -> Option<Ptr> {
    match rest.split_first() {
        Some((&IN_LOG, p)) => Ptr::decode(p),
        _ => None,
    }
}

/// What one value-log entry takes in its segment.
fn entry_bytes(key: &[u8], p: Ptr) -> u64 {
    5 + key.len() as u64 + u64::from(p.len)
}

/// Where [`Cache::compact_segment`] stops early (tests of a crash mid-way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Never,
    AfterValues,
    AfterIndex,
}

/// The index key of a record stored under `k` (`r` ‖ index key).
fn id_of(k: &[u8]) -> Option<[u8; ID_LEN]> {
    k.get(T_RECORD.len()..)?.try_into().ok()
}

/// The id of a cohort record's key (`r` ‖ id); `None` for any other key.
fn record_id(k: &[u8]) -> Option<[u8; ID_LEN]> {
    k.strip_prefix(T_RECORD.as_bytes())?.try_into().ok()
}

fn record_key(id: &[u8; ID_LEN]) -> Vec<u8> {
    [T_RECORD.as_bytes(), &id[..]].concat()
}

/// An index entry's value as sled holds it.
fn loc_value(l: Loc) -> Vec<u8> {
    header(l.version, l.epoch, log_ref(l.ptr))
}

fn fill_key(seq: u64) -> Vec<u8> {
    [T_FILL, &seq.to_be_bytes()[..]].concat()
}

/// The record index outside sled: the sorted file, and a cold fill's state while one runs (or
/// until its merge succeeds). See `index.rs` and [`Cache::index_get`].
#[derive(Default)]
struct IndexState {
    file: Option<Arc<SortedIndex>>,
    fill: Option<Fill>,
}

/// Where a record's changed search card is kept in sled (`d` ‖ index key).
fn card_key(id: &[u8; ID_LEN]) -> Vec<u8> {
    [T_CARD, &id[..]].concat()
}

fn split_header(v: &[u8]) -> Option<(u64, u64, &[u8])> {
    let a = u64::from_be_bytes(v.get(..8)?.try_into().ok()?);
    let b = u64::from_be_bytes(v.get(8..16)?.try_into().ok()?);
    Some((a, b, v.get(16..)?))
}

/// The unit's cache.
pub struct Cache {
    db: sled::Db,
    tree: sled::Tree,
    sealer: Arc<Sealer>,
    /// Record compression state, reused.
    codec: Codec,
    /// The cohort records' values.
    vlog: ValueLog,
    /// Live bytes per value-log segment (for compaction; counted at open).
    live: std::sync::Mutex<HashMap<u32, u64>>,
    /// Cohort records held (kept by [`Cache::apply`]; counted at open).
    records: std::sync::atomic::AtomicUsize,
    dir: PathBuf,
    /// A cold fill's search postings, gathered unsorted while it runs (see [`Bulk`]).
    bulk: std::sync::Mutex<Option<Bulk>>,
    /// The postings built in bulk, in key order, outside sled (see [`PostingFile`]).
    posting_file: std::sync::RwLock<Option<PostingFile>>,
    /// The search cards built in bulk (`cards.rs`): what a search scores candidates from.
    cards: std::sync::RwLock<Option<crate::cards::CardFile>>,
    /// The records with a `d` entry in sled (cards changed since the build), so a search
    /// reads sled only for them: a random read of sled's tree, even one that finds nothing,
    /// cost more than the rest of scoring a candidate at 909,090 records.
    cards_changed: std::sync::RwLock<std::collections::HashSet<[u8; ID_LEN]>>,
    /// The record index outside sled (`index.rs`): sled holds only what changed after it.
    index: std::sync::RwLock<IndexState>,
    /// The next fill blob's sequence.
    fill_seq: std::sync::atomic::AtomicU64,
    /// Record entries in sled (≈: counted at open, then each write added), for [`REMERGE_AT`].
    sled_records: std::sync::atomic::AtomicUsize,
    /// The data key was destroyed (tamper, wipe): nothing is served or written any more.
    shredded: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache").field("dir", &self.dir).finish()
    }
}

/// What opening the cache found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opened {
    /// The cache was readable.
    Existing,
    /// A new, empty cache (first start, or a fresh data key).
    Fresh,
    /// The old cache could not be read; it was moved aside to this folder and a new one made.
    Rebuilt { moved_to: PathBuf, why: String },
}

impl Cache {
    /// Open the cache in `dir` (a folder of `data_dir`). `key_state` says whether the sealer's
    /// data key is new, in which case any existing cache is unreadable and is discarded. A
    /// cache that cannot be opened or read is moved aside and rebuilt from the hub.
    pub fn open(
        dir: &Path,
        sealer: Arc<Sealer>,
        key_state: KeyState,
    ) -> Result<(Cache, Opened), CacheError> {
        let path = dir.join("cache.sled");
        let mut opened = Opened::Existing;
        if key_state == KeyState::Fresh && path.exists() {
            warn!("the data key is new: the old cache cannot be read and is discarded");
            std::fs::remove_dir_all(&path)?;
            opened = Opened::Fresh;
        } else if !path.exists() {
            opened = Opened::Fresh;
        }
        match Self::try_open(&path, sealer.clone()) {
            Ok(c) => Ok((c, opened)),
            Err(e) => {
                let stamp = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                let moved_to = dir.join(format!("cache.sled.broken-{stamp}"));
                error!(
                    error = %e,
                    moved_to = %moved_to.display(),
                    "THE CACHE CANNOT BE READ: moving it aside and rebuilding it from the hub"
                );
                if path.exists() {
                    std::fs::rename(&path, &moved_to)?;
                }
                let c = Self::try_open(&path, sealer)?;
                Ok((
                    c,
                    Opened::Rebuilt {
                        moved_to,
                        why: e.to_string(),
                    },
                ))
            }
        }
    }

    fn try_open(path: &Path, sealer: Arc<Sealer>) -> Result<Cache, CacheError> {
        Self::try_open_with(path, sealer, crate::vlog::SEGMENT_MAX)
    }

    fn try_open_with(
        path: &Path,
        sealer: Arc<Sealer>,
        segment_max: u64,
    ) -> Result<Cache, CacheError> {
        // A sled just dropped in this process releases its file lock from a background
        // thread: wait for it briefly rather than treating the cache as unreadable.
        let mut tries = 0;
        let db = loop {
            match sled::Config::new()
                .path(path)
                .cache_capacity(SLED_CACHE_BYTES)
                .open()
            {
                // sled reports a held lock as `Other` with the OS error in its message.
                Err(sled::Error::Io(e))
                    if tries < 100
                        && (e.kind() == std::io::ErrorKind::WouldBlock
                            || e.to_string().contains("could not acquire lock")) =>
                {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => break r?,
            }
        };
        let tree = db.open_tree("cache")?;
        let vlog = ValueLog::open_with(&path.join("vlog"), segment_max)?;
        let cache = Cache {
            db,
            tree,
            sealer,
            records: std::sync::atomic::AtomicUsize::new(0),
            codec: Codec::new(),
            vlog,
            live: std::sync::Mutex::new(HashMap::new()),
            dir: path.to_path_buf(),
            bulk: std::sync::Mutex::new(None),
            posting_file: std::sync::RwLock::new(None),
            cards: std::sync::RwLock::new(None),
            cards_changed: std::sync::RwLock::new(std::collections::HashSet::new()),
            index: std::sync::RwLock::new(IndexState::default()),
            fill_seq: std::sync::atomic::AtomicU64::new(0),
            sled_records: std::sync::atomic::AtomicUsize::new(0),
            shredded: std::sync::atomic::AtomicBool::new(false),
        };
        // A cold fill's unsorted postings do not outlive the process (the layout marker was
        // removed when the fill began, so the postings are rebuilt below).
        let _ = std::fs::remove_dir_all(path.join(BULK_DIR));
        // The state and the first record must open under this key (a cache sealed under
        // another key is moved aside by `open`); every other record is checked when it is read.
        let _ = cache.state()?;
        cache.recover_index()?;
        if let Some(kv) = cache.record_scan()?.next() {
            let (k, v) = kv?;
            cache.open_record(T_RECORD, &k, &v)?;
        }
        let mut layout = cache.tree.get(K_SEARCH)?;
        if layout.as_deref() == Some(SEARCH_LAYOUT_FILE) {
            match (PostingFile::open(path), crate::cards::CardFile::open(path)) {
                (Ok(Some(f)), Ok(Some(c))) => {
                    *cache
                        .posting_file
                        .write()
                        .unwrap_or_else(|p| p.into_inner()) = Some(f);
                    *cache.cards.write().unwrap_or_else(|p| p.into_inner()) = Some(c);
                }
                _ => {
                    warn!("the sorted search postings or cards are missing or unreadable: rebuilding them");
                    layout = None;
                }
            }
        }
        {
            let mut changed = cache
                .cards_changed
                .write()
                .unwrap_or_else(|p| p.into_inner());
            for k in cache.tree.scan_prefix(T_CARD).keys() {
                if let Some(id) = k?.get(T_CARD.len()..).and_then(|id| id.try_into().ok()) {
                    changed.insert(id);
                }
            }
        }
        let records = match cache.tree.get(K_COUNT)? {
            Some(v)
                if layout.as_deref() == Some(SEARCH_LAYOUT)
                    || layout.as_deref() == Some(SEARCH_LAYOUT_FILE) =>
            {
                u64::from_be_bytes(v.as_ref().try_into().map_err(|_| CacheError::Decode {
                    table: "t",
                    why: "record count".into(),
                })?) as usize
            }
            _ => cache.rebuild_postings()?,
        };
        cache.count_live()?;
        info!(records, "cache opened");
        cache
            .records
            .store(records, std::sync::atomic::Ordering::SeqCst);
        Ok(cache)
    }

    /// Count each value-log segment's live bytes from the index, and delete closed segments
    /// nothing points into (left by a compaction interrupted after its index moved).
    fn count_live(&self) -> Result<(), CacheError> {
        let mut live: HashMap<u32, u64> = HashMap::new();
        for kv in self.record_scan()? {
            let (k, v) = kv?;
            if let Some(p) = split_header(&v).and_then(|(_, _, rest)| ptr_of(rest)) {
                *live.entry(p.seg).or_default() += entry_bytes(&k, p);
            }
        }
        let active = self.vlog.active();
        for (seg, _) in self.vlog.segments() {
            if seg != active && !live.contains_key(&seg) {
                info!(
                    segment = seg,
                    "value log: removing a segment nothing points into"
                );
                self.vlog.remove(seg)?;
            }
        }
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = live;
        Ok(())
    }

    /// Rewrite the first closed value-log segment that is more than half dead, if any.
    fn maybe_compact(&self) -> Result<(), CacheError> {
        // A fill's later entries would be shadowed by the moved ones written to sled.
        if self.index_state().fill.is_some() {
            return Ok(());
        }
        let active = self.vlog.active();
        let victim = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            self.vlog.segments().into_iter().find(|&(seg, size)| {
                seg != active && live.get(&seg).copied().unwrap_or(0).saturating_mul(2) < size
            })
        };
        if let Some((seg, size)) = victim {
            let moved = self.compact_segment(seg, Stop::Never)?;
            info!(segment = seg, size, moved, "value log: segment compacted");
        }
        Ok(())
    }

    /// Move a closed segment's live values to the end of the log, then delete it. Returns how
    /// many values moved. Only the sync task calls this (it is the only writer of `r`).
    fn compact_segment(&self, seg: u32, stop: Stop) -> Result<usize, CacheError> {
        let mut moved = Vec::new();
        // A chunk at a time (values synced, then their index entries): a whole 64 MiB segment
        // in one sled batch held a copy of every leaf it touched until the batch ended. The
        // old segment goes only after every chunk's entries are durable.
        for chunk in self.vlog.entries(seg)?.chunks(COMPACT_BATCH) {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for (key, p) in chunk {
                let Some(v) = self.index_get(key)? else {
                    continue;
                };
                let Some((version, epoch, rest)) = split_header(&v) else {
                    continue;
                };
                if ptr_of(rest) != Some(*p) {
                    continue;
                }
                let value = self.vlog.read(*p)?;
                let np = match self.vlog.append(key, &value) {
                    Ok(np) => np,
                    Err(e) => {
                        self.vlog.discard_pending();
                        return Err(e.into());
                    }
                };
                moved.push((np.seg, entry_bytes(key, np)));
                batch.insert(key.clone(), header(version, epoch, log_ref(np)));
                n += 1;
            }
            if let Err(e) = self.vlog.sync() {
                self.vlog.discard_pending();
                return Err(e.into());
            }
            if stop == Stop::AfterValues {
                return Ok(moved.len());
            }
            self.tree.apply_batch(batch)?;
            self.sled_records
                .fetch_add(n, std::sync::atomic::Ordering::SeqCst);
            // Counted where they now are, chunk by chunk (a later chunk may fail).
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            for (s, b) in &moved[moved.len() - n..] {
                *live.entry(*s).or_default() += b;
            }
        }
        self.db.flush()?;
        if stop == Stop::AfterIndex {
            return Ok(moved.len());
        }
        self.vlog.remove(seg)?;
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&seg);
        Ok(moved.len())
    }

    /// Re-post every cohort record for search and recount them (a cache written before the
    /// postings existed, or with another layout). Every record must open. Returns the count.
    fn rebuild_postings(&self) -> Result<usize, CacheError> {
        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix(T_POSTING) {
            batch.remove(kv?.0);
        }
        self.tree.apply_batch(batch)?;
        let mut bulk = Bulk::create(&self.dir)?;
        let mut records = 0usize;
        for kv in self.record_scan()? {
            let (k, v) = kv?;
            let rec = self.open_record(T_RECORD, &k, &v)?;
            records += 1;
            let demo = demographics(rec.record.as_slice());
            bulk.add(&self.postings_of(&k, rec.nhs, demo.as_ref()))?;
            if let Some(id) = id_of(&k) {
                let card = self.seal_card(&id, rec.nhs, demo.as_ref())?;
                bulk.add_cards(&[(id, card)])?;
            }
            if records.is_multiple_of(100_000) {
                info!(records, "search postings: rebuilding");
            }
        }
        self.build_postings(bulk, Some(records))?;
        Ok(records)
    }

    /// Write a [`Bulk`]'s postings, sorted (runs of [`BULK_RUN_KEYS`], merged), as the sorted
    /// posting file (replacing any earlier one; written aside, fsync'd, renamed), then the
    /// layout marker (and `count`, if given), and flush. Sled's tree is not touched: inserting
    /// millions of keys into it, even in order, cost 20 s and 100 MB of its memory at 909k.
    fn build_postings(&self, mut bulk: Bulk, count: Option<usize>) -> Result<(), CacheError> {
        use std::io::Write;
        let t = std::time::Instant::now();
        let keys = bulk.keys;
        bulk.spill.flush()?;
        let mut w = PostingFile::writer(&self.dir)?;
        crate::sorted::sort_keys::<POSTING_KEY_LEN>(
            &bulk.dir,
            &bulk.dir.join("spill"),
            "postings",
            BULK_RUN_KEYS,
            |chunk| w.add(chunk),
        )?;
        let file = w.finish()?;
        let inserted = file.keys;
        let cards = bulk
            .cards
            .take()
            .ok_or(CacheError::SearchBuilding)?
            .finish()?;
        drop(bulk);
        let carded = cards.records();
        *self.posting_file.write().unwrap_or_else(|p| p.into_inner()) = Some(file);
        *self.cards.write().unwrap_or_else(|p| p.into_inner()) = Some(cards);
        let mut batch = sled::Batch::default();
        if let Some(n) = count {
            batch.insert(K_COUNT, &(n as u64).to_be_bytes());
        }
        // The new cards reflect every record as it stands: changes noted since go.
        self.forget_changed_cards(&mut batch)?;
        batch.insert(K_SEARCH, SEARCH_LAYOUT_FILE);
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        info!(
            postings = inserted,
            gathered = keys,
            cards = carded,
            ms = t.elapsed().as_millis() as u64,
            "search postings and cards built in key order"
        );
        Ok(())
    }

    /// End a cold fill's deferred postings, if one is under way: build them now. A failure
    /// leaves the layout marker absent, so they are rebuilt from the records at the next open.
    fn finish_bulk(&self) -> Result<(), CacheError> {
        // The index first. A failure (no room?) leaves the fill as a layer reads and scans go
        // through, merged at a later apply.
        if let Err(e) = self.merge_fill() {
            warn!(error = %e, "record index: cannot merge the cold fill's entries yet");
        }
        let taken = self.bulk.lock().unwrap_or_else(|p| p.into_inner()).take();
        match taken {
            Some(b) => self.build_postings(b, None),
            None => Ok(()),
        }
    }

    /// The posting keys of a cohort record stored under `key` (`r` ‖ index key).
    fn record_postings(&self, key: &[u8], rec: &CachedRecord) -> Vec<Vec<u8>> {
        self.postings_of(key, rec.nhs, demographics(rec.record.as_slice()).as_ref())
    }

    /// The posting keys of a record stored under `key` with these demographics.
    fn postings_of(
        &self,
        key: &[u8],
        nhs: NhsNumber,
        demo: Option<&edge_proto::model::Demographics>,
    ) -> Vec<Vec<u8>> {
        let Some(id) = key.get(T_RECORD.len()..) else {
            return Vec::new();
        };
        demo.map(|d| postings(nhs, d))
            .unwrap_or_default()
            .iter()
            .map(|pk| {
                let mut k = self.posting_prefix(pk);
                k.extend_from_slice(id);
                k
            })
            .collect()
    }

    /// `x` ‖ kind ‖ the keyed hash of the posting's pair.
    fn posting_prefix(&self, pk: &PostingKey) -> Vec<u8> {
        let mut id = Vec::with_capacity(1 + pk.material.len());
        id.push(pk.kind);
        id.extend_from_slice(&pk.material);
        let h = self.sealer.index_key("x", &id);
        let mut k = Vec::with_capacity(T_POSTING.len() + 1 + POSTING_HASH + ID_LEN);
        k.extend_from_slice(T_POSTING);
        k.push(pk.kind);
        k.extend_from_slice(&h[..POSTING_HASH]);
        k
    }

    /// A record's search card: the patient as a search scores them ([`Scored`]: demographics
    /// and normalised keys), sealed under its index key (`None` for a record without
    /// demographics, which no search finds).
    fn seal_card(
        &self,
        id: &[u8; ID_LEN],
        nhs: NhsNumber,
        demo: Option<&edge_proto::model::Demographics>,
    ) -> Result<Option<Vec<u8>>, CacheError> {
        let Some(demo) = demo else {
            return Ok(None);
        };
        let plain = Scored::new(nhs, demo).encode();
        self.sealer
            .seal(crate::cards::CARD_TABLE, id, &plain)
            .map(Some)
            .map_err(|_| CacheError::Seal { table: "encode" })
    }

    /// Forget every card change noted in sled (`d`): the card files about to be named reflect
    /// every record (a build), or there are no records (a cold fill begins).
    fn forget_changed_cards(&self, batch: &mut sled::Batch) -> Result<(), CacheError> {
        for k in self.tree.scan_prefix(T_CARD).keys() {
            batch.remove(k?);
        }
        self.cards_changed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
        Ok(())
    }

    /// Open a search card (`None` if it does not open: the record is read instead).
    fn open_card(&self, id: &[u8; ID_LEN], sealed: &[u8]) -> Option<Scored> {
        let plain = self
            .sealer
            .open(crate::cards::CARD_TABLE, id, sealed)
            .ok()?;
        Scored::decode(&plain)
    }

    /// The patient behind a search card, if there is a card for `id`: `Some(None)` when the
    /// record was removed, `None` when only the record can say (no card, or one that does not
    /// open).
    fn card(&self, id: &[u8; ID_LEN]) -> Result<Option<Option<Scored>>, CacheError> {
        let changed = self
            .cards_changed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id);
        if changed {
            if let Some(v) = self.tree.get(card_key(id))? {
                if v.is_empty() {
                    return Ok(Some(None));
                }
                return Ok(self.open_card(id, &v).map(Some));
            }
        }
        let cards = self.cards.read().unwrap_or_else(|p| p.into_inner());
        let Some(file) = cards.as_ref() else {
            return Ok(None);
        };
        match file.get(id) {
            Ok(crate::cards::Found::Card(c)) => Ok(self.open_card(id, &c).map(Some)),
            Ok(crate::cards::Found::Gone) => Ok(Some(None)),
            Ok(crate::cards::Found::Absent) => Ok(None),
            Err(e) => {
                tracing::debug!(error = %e, "a search card cannot be read: reading the record");
                Ok(None)
            }
        }
    }

    fn key(&self, table: &str, nhs: &NhsNumber) -> Vec<u8> {
        let mut k = table.as_bytes().to_vec();
        k.extend_from_slice(&self.sealer.index_key(table, nhs.as_digits().as_bytes()));
        k
    }

    fn open_record(
        &self,
        table: &'static str,
        key: &[u8],
        value: &[u8],
    ) -> Result<CachedRecord, CacheError> {
        let (_, _, rest) = split_header(value).ok_or(CacheError::Decode {
            table,
            why: "short value".into(),
        })?;
        let from_log;
        let sealed = match ptr_of(rest) {
            Some(p) => {
                from_log = self.vlog.read(p)?;
                &from_log[..]
            }
            None => rest,
        };
        let plain = self
            .sealer
            .open(table, key, sealed)
            .map_err(|_| CacheError::Seal { table })?;
        let plain = match plain.split_first() {
            Some((&LZ4, z)) => self
                .codec
                .unlz4(z)
                .map_err(|why| CacheError::Decode { table, why })?,
            Some((&DEFLATED, z)) => self
                .codec
                .inflate(z)
                .map_err(|why| CacheError::Decode { table, why })?,
            _ => plain,
        };
        let rec: CachedRecord = cbor::from_slice(&plain).map_err(|e| CacheError::Decode {
            table,
            why: e.to_string(),
        })?;
        if record_digest(rec.record.as_slice()) != rec.digest {
            return Err(CacheError::Decode {
                table,
                why: "record digest mismatch".into(),
            });
        }
        Ok(rec)
    }

    fn seal_record(
        &self,
        table: &str,
        key: &[u8],
        rec: &CachedRecord,
    ) -> Result<Vec<u8>, CacheError> {
        let plain = cbor::to_vec(rec).map_err(|e| CacheError::Decode {
            table: "encode",
            why: e.to_string(),
        })?;
        let z = self
            .codec
            .compress(&plain)
            .map_err(|e| CacheError::Decode {
                table: "encode",
                why: e.to_string(),
            })?;
        self.sealer
            .seal(table, key, &z)
            .map_err(|_| CacheError::Seal { table: "encode" })
    }

    /// The durable sync state (default when none is stored).
    pub fn state(&self) -> Result<SyncState, CacheError> {
        match self.tree.get(K_STATE)? {
            None => Ok(SyncState::default()),
            Some(v) => {
                let plain = self
                    .sealer
                    .open("s", K_STATE, &v)
                    .map_err(|_| CacheError::Seal { table: "s" })?;
                SyncState::decode(&plain).map_err(|e| CacheError::Decode {
                    table: "s",
                    why: e.to_string(),
                })
            }
        }
    }

    /// Facts about the cache as a whole.
    pub fn meta(&self) -> CacheMeta {
        self.tree
            .get(K_META)
            .ok()
            .flatten()
            .and_then(|v| self.sealer.open("t", K_META, &v).ok())
            .and_then(|p| cbor::from_slice(&p).ok())
            .unwrap_or_default()
    }

    /// Update the cache-wide facts (durable at the next flush).
    pub fn update_meta(&self, f: impl FnOnce(&mut CacheMeta)) -> Result<CacheMeta, CacheError> {
        let mut m = self.meta();
        f(&mut m);
        let plain = cbor::to_vec(&m).map_err(|e| CacheError::Decode {
            table: "t",
            why: e.to_string(),
        })?;
        let sealed = self
            .sealer
            .seal("t", K_META, &plain)
            .map_err(|_| CacheError::Seal { table: "t" })?;
        self.tree.insert(K_META, sealed)?;
        Ok(m)
    }

    /// Search the cohort cache's demographics (from the postings on disk).
    pub fn search(&self, q: &SearchQuery) -> Result<SearchOutcome, SearchFailed<CacheError>> {
        if self.is_shredded() {
            q.validate().map_err(SearchFailed::Query)?;
            return Ok(SearchOutcome {
                candidates: Vec::new(),
                matched: 0,
            });
        }
        if self
            .bulk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
        {
            q.validate().map_err(SearchFailed::Query)?;
            return Err(SearchFailed::Store(CacheError::SearchBuilding));
        }
        search_in(self, q)
    }

    /// The current NHS number the cohort cache holds for a former (superseded or merged) one.
    pub fn alias(&self, nhs: &NhsNumber) -> Option<NhsNumber> {
        if self.is_shredded() {
            return None;
        }
        alias_in(self, nhs).unwrap_or_else(|e| {
            warn!(error = %e, "former NHS number lookup failed");
            None
        })
    }

    /// Whether the cohort cache holds this patient.
    pub fn contains(&self, nhs: &NhsNumber) -> bool {
        !self.is_shredded()
            && self
                .index_get(&self.key(T_RECORD, nhs))
                .is_ok_and(|v| v.is_some())
    }

    /// Bytes free on the filesystem holding the cache (`None` if it cannot be read).
    pub fn free_bytes(&self) -> Option<u64> {
        crate::disk::free_bytes(&self.dir)
    }

    /// Records in the cohort cache.
    pub fn len(&self) -> usize {
        if self.is_shredded() {
            return 0;
        }
        self.records.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The data key has been destroyed: forget everything in memory and serve nothing. The
    /// files on disk are unreadable without the key and are discarded at the next start.
    pub fn shredded(&self) {
        self.shredded
            .store(true, std::sync::atomic::Ordering::SeqCst);
        // Remembered across restarts: a tampered unit stays dark until it is re-provisioned.
        if let Some(data_dir) = self.dir.parent() {
            let _ = std::fs::write(data_dir.join(TAMPER_MARKER), b"shredded\n");
        }
        self.records.store(0, std::sync::atomic::Ordering::SeqCst);
        tracing::warn!("cache shredded: the data key is destroyed; nothing is served until the unit is re-provisioned");
    }

    /// Whether the data key has been destroyed.
    pub fn is_shredded(&self) -> bool {
        self.shredded.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// A cohort record, checked (AEAD tag and digest) before it is returned.
    pub fn get(&self, nhs: &NhsNumber) -> Result<Option<CachedRecord>, CacheError> {
        if self.is_shredded() {
            return Ok(None);
        }
        let k = self.key(T_RECORD, nhs);
        self.read_record(&k)
    }

    /// A cohort record by its key. Read twice if the first read fails on the value log: a
    /// compaction may have moved the value (and deleted its old segment) between reading the
    /// index entry and reading the value.
    fn read_record(&self, k: &[u8]) -> Result<Option<CachedRecord>, CacheError> {
        let mut tries = 0;
        loop {
            tries += 1;
            let Some(v) = self.index_get(k)? else {
                return Ok(None);
            };
            match self.open_record(T_RECORD, k, &v) {
                Err(CacheError::Io(_)) if tries < 2 => continue,
                r => return r.map(Some),
            }
        }
    }

    /// An on-demand copy that has not expired at `now`.
    pub fn get_fetched(
        &self,
        nhs: &NhsNumber,
        now: UnixMillis,
    ) -> Result<Option<CachedRecord>, CacheError> {
        if self.is_shredded() {
            return Ok(None);
        }
        let k = self.key(T_FETCHED, nhs);
        let Some(v) = self.tree.get(&k)? else {
            return Ok(None);
        };
        let expires = split_header(&v).map(|(_, e, _)| e as i64).unwrap_or(0);
        if expires <= now.0 {
            self.tree.remove(&k)?;
            return Ok(None);
        }
        self.open_record(T_FETCHED, &k, &v).map(Some)
    }

    /// Keep an on-demand copy until `expires` (durable before return).
    pub fn put_fetched(
        &self,
        nhs: &NhsNumber,
        version: u64,
        record: Bytes,
        now: UnixMillis,
        expires: UnixMillis,
    ) -> Result<(), CacheError> {
        if self.is_shredded() {
            return Err(CacheError::Shredded);
        }
        let k = self.key(T_FETCHED, nhs);
        let rec = CachedRecord {
            nhs: *nhs,
            version,
            digest: record_digest(record.as_slice()),
            record,
            synced_at: now,
        };
        let sealed = self.seal_record(T_FETCHED, &k, &rec)?;
        self.tree
            .insert(k, header(version, expires.0.max(0) as u64, sealed))?;
        self.db.flush()?;
        Ok(())
    }

    /// Drop an on-demand copy (withdrawn at the hub).
    pub fn remove_fetched(&self, nhs: &NhsNumber) -> Result<(), CacheError> {
        self.tree.remove(self.key(T_FETCHED, nhs))?;
        self.db.flush()?;
        Ok(())
    }

    /// Remove expired on-demand copies; returns how many.
    pub fn expire_fetched(&self, now: UnixMillis) -> Result<u64, CacheError> {
        let mut n = 0;
        for kv in self.tree.scan_prefix(T_FETCHED) {
            let (k, v) = kv?;
            let expires = split_header(&v).map(|(_, e, _)| e as i64).unwrap_or(0);
            if expires <= now.0 {
                self.tree.remove(k)?;
                n += 1;
            }
        }
        if n > 0 {
            self.db.flush()?;
        }
        Ok(n)
    }

    /// Apply one sync step atomically and durably: the changes and the new sync state in one
    /// batch, flushed to disk before returning (the caller then acknowledges it to the hub).
    /// Returns the report and the NHS numbers written and removed (for the search index).
    pub fn apply(&self, apply: &Apply, now: UnixMillis) -> Result<Applied, CacheError> {
        if self.is_shredded() {
            return Err(CacheError::Shredded);
        }
        // A baseline into an empty cache (a cold fill) gathers its postings unsorted and
        // builds them in key order when it finishes; any other apply ends that first.
        let baseline = matches!(apply.kind, ApplyKind::Baseline { .. });
        let bulk_active = self
            .bulk
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some();
        if bulk_active && !baseline {
            self.finish_bulk()?;
        } else if !bulk_active {
            let fill_left = self.index_state().fill.is_some();
            if fill_left {
                // A fill whose merge failed (no room?): tried again; read through until then.
                if let Err(e) = self.merge_fill() {
                    warn!(error = %e, "record index: cannot merge the cold fill's entries yet");
                }
            } else if self.sled_records.load(std::sync::atomic::Ordering::SeqCst) >= REMERGE_AT {
                if let Err(e) = self.remerge() {
                    // Nothing changed: the entries stay in sled and are read from there.
                    warn!(error = %e, "record index: cannot merge sled's changes into the file");
                }
            }
        }
        let begin_bulk =
            baseline && !bulk_active && self.records.load(std::sync::atomic::Ordering::SeqCst) == 0;
        let mut txn = Txn {
            cache: self,
            overlay: HashMap::new(),
            batch: sled::Batch::default(),
            ops: Vec::new(),
            now,
            added: Vec::new(),
            freed: Vec::new(),
            spill: (baseline && (bulk_active || begin_bulk)).then(Vec::new),
            cards: (baseline && (bulk_active || begin_bulk)).then(Vec::new),
            fill: (baseline && (bulk_active || begin_bulk)).then(Vec::new),
            has_base: {
                let st = self.index_state();
                st.file.is_some() || st.fill.is_some()
            },
            sled_record_writes: 0,
            card_file: self
                .cards
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_some(),
            card_writes: Vec::new(),
            // A fill that begins now starts from an empty cache: nothing is written yet.
            written: if begin_bulk {
                Some(Written::new())
            } else if baseline && bulk_active {
                self.bulk
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .as_mut()
                    .and_then(|b| b.written.take())
            } else {
                None
            },
        };
        let mut new_fill = None;
        if begin_bulk {
            // The record index: the old file goes before the fill writes anything, with the
            // removals sled held over it; the fill's state is installed once this apply is
            // durable (its first batch reads nothing: every key is new).
            self.drop_index_file()?;
            txn.has_base = false;
            self.drop_fill_and_removals()?;
            new_fill = Some(Fill::create(&self.dir.join(FILL_DIR))?);
            txn.batch.insert(K_FILLING, &[1u8] as &[u8]);
            // Until the build, the postings are incomplete: a crash rebuilds them at open.
            txn.batch.remove(K_SEARCH);
            // An empty cache's old sorted postings and cards name nobody it will hold.
            *self.posting_file.write().unwrap_or_else(|p| p.into_inner()) = None;
            *self.cards.write().unwrap_or_else(|p| p.into_inner()) = None;
            txn.card_file = false;
            crate::cards::remove(&self.dir);
            self.forget_changed_cards(&mut txn.batch)?;
        }
        let report = match apply_to(&mut txn, apply) {
            Ok(r) => r,
            Err(e) => {
                self.vlog.discard_pending();
                return Err(e);
            }
        };
        let Txn {
            mut batch,
            ops,
            added,
            freed,
            spill,
            cards,
            card_writes,
            written: bloom,
            fill,
            sled_record_writes,
            ..
        } = txn;
        let fill = fill.unwrap_or_default();
        if !fill.is_empty() {
            let seq = self
                .fill_seq
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            batch.insert(fill_key(seq), idx::encode_blob(&fill));
        }
        if !card_writes.is_empty() {
            // Before the batch: a search may look for a `d` entry that is not there yet (it
            // then reads the card files, as before this apply), but never misses one that is.
            self.cards_changed
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .extend(card_writes);
        }
        let new_bulk = if begin_bulk {
            match Bulk::create(&self.dir) {
                Ok(b) => Some(b),
                Err(e) => {
                    self.vlog.discard_pending();
                    return Err(e);
                }
            }
        } else {
            None
        };
        if let Err(e) = self.vlog.sync() {
            self.vlog.discard_pending();
            return Err(e.into());
        }
        let mut records = self.records.load(std::sync::atomic::Ordering::SeqCst);
        let mut written = Vec::new();
        let mut removed = Vec::new();
        for op in ops {
            match op {
                Op::Put(nhs, new) => {
                    records += usize::from(new);
                    written.push(nhs);
                }
                Op::Dropped => records = records.saturating_sub(1),
                Op::Remove(nhs, held) => {
                    records = records.saturating_sub(usize::from(held));
                    removed.push(nhs);
                }
            }
        }
        batch.insert(K_COUNT, &(records as u64).to_be_bytes());
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        self.records
            .store(records, std::sync::atomic::Ordering::SeqCst);
        if begin_bulk {
            self.sled_records
                .store(sled_record_writes, std::sync::atomic::Ordering::SeqCst);
        } else {
            self.sled_records
                .fetch_add(sled_record_writes, std::sync::atomic::Ordering::SeqCst);
        }
        if new_fill.is_some() || !fill.is_empty() {
            self.fill_took(new_fill, &fill);
        }
        if let Some(keys) = spill {
            let mut guard = self.bulk.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = new_bulk {
                *guard = Some(b);
                info!("cold fill: search postings are built when it finishes");
            }
            if let Some(b) = guard.as_mut() {
                // Lent back only after a durable apply: one that failed may have taken it, and
                // then the rest of the fill reads the tree (slower, never wrong).
                b.written = bloom;
                if let Err(e) = b
                    .add(&keys)
                    .and_then(|()| b.add_cards(cards.as_deref().unwrap_or_default()))
                {
                    // Without the spill, the postings come from the records at the next open
                    // (the layout marker stays absent); search stays refused until then.
                    warn!(error = %e, "cold fill: cannot keep the search postings aside");
                }
            }
        }
        if matches!(apply.kind, ApplyKind::FinishBaseline { .. }) {
            if let Err(e) = self.finish_bulk() {
                warn!(error = %e, "building the search postings failed; rebuilt at the next start");
            }
        }
        {
            let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            for (seg, n) in added {
                *live.entry(seg).or_default() += n;
            }
            for (seg, n) in freed {
                if let Some(l) = live.get_mut(&seg) {
                    *l = l.saturating_sub(n);
                }
            }
        }
        if let Err(e) = self.maybe_compact() {
            // The apply itself is durable; space is reclaimed at a later one.
            warn!(error = %e, "value log compaction failed");
        }
        Ok(Applied {
            report,
            written,
            removed,
        })
    }

    /// Flush everything to disk.
    pub fn flush(&self) -> Result<(), CacheError> {
        self.db.flush()?;
        Ok(())
    }
}

/// The record index: sled over the sorted file (`index.rs`).
impl Cache {
    fn index_state(&self) -> std::sync::RwLockReadGuard<'_, IndexState> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A key's value: sled's if it has one (an empty value under `r` is a removal), else, for
    /// a cohort record, a running fill's entry, else the sorted file's.
    fn index_get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, CacheError> {
        if let Some(v) = self.tree.get(k)? {
            return Ok((!v.is_empty()).then(|| v.to_vec()));
        }
        let Some(id) = record_id(k) else {
            return Ok(None);
        };
        let st = self.index_state();
        if let Some(fill) = &st.fill {
            if let Some(loc) = fill.get(&id)? {
                return Ok(loc.map(loc_value));
            }
        }
        if let Some(file) = &st.file {
            if let Some(e) = file.get(&id)? {
                return Ok(e.loc.map(loc_value));
            }
        }
        Ok(None)
    }

    /// Every cohort record's key and index value, in key order: sled's entries over a fill's
    /// (one whose merge has not succeeded yet) over the sorted file's.
    fn record_scan(&self) -> Result<RecordScan, CacheError> {
        let file: Option<Box<dyn Iterator<Item = std::io::Result<idx::Entry>> + Send>> = {
            let st = self.index_state();
            match (&st.fill, &st.file) {
                (Some(fill), base) => Some(Box::new(idx::merged(base.as_deref(), fill)?)),
                (None, Some(f)) => Some(Box::new(f.iter()?)),
                (None, None) => None,
            }
        };
        let file = file.map(Iterator::peekable);
        Ok(RecordScan {
            sled: self.tree.scan_prefix(T_RECORD).peekable(),
            file,
        })
    }

    /// Open the sorted index file, and merge into it any fill a crash interrupted (its runs
    /// and its blobs in sled). A damaged file fails the open (the cache is then moved aside
    /// and filled again from the hub).
    fn recover_index(&self) -> Result<(), CacheError> {
        let file = SortedIndex::open(&self.dir.join(INDEX_FILE))?;
        let mut blobs = Vec::new();
        let mut next = 0u64;
        for kv in self.tree.scan_prefix(T_FILL) {
            let (k, v) = kv?;
            let seq = k
                .get(T_FILL.len()..)
                .and_then(|b| b.try_into().ok())
                .map(u64::from_be_bytes);
            match (seq, idx::decode_blob(&v)) {
                (Some(seq), Some(es)) => {
                    next = next.max(seq + 1);
                    blobs.extend(es);
                }
                _ => {
                    return Err(CacheError::Decode {
                        table: "i",
                        why: "a cold fill's index entries".into(),
                    })
                }
            }
        }
        self.fill_seq
            .store(next, std::sync::atomic::Ordering::SeqCst);
        let in_sled = self.tree.scan_prefix(T_RECORD).keys().count();
        self.sled_records
            .store(in_sled, std::sync::atomic::Ordering::SeqCst);
        let fill_dir = self.dir.join(FILL_DIR);
        let filling = self.tree.contains_key(K_FILLING)? || !blobs.is_empty();
        let fill = if filling {
            Fill::recover(&fill_dir, blobs)?
        } else {
            // A merged fill's runs whose removal did not reach the disk: never read again.
            idx::remove_runs(&fill_dir)?;
            None
        };
        let interrupted = fill.as_ref().map(|f| f.entries());
        {
            let mut st = self.index.write().unwrap_or_else(|p| p.into_inner());
            st.file = file.map(Arc::new);
            st.fill = fill;
        }
        if let Some(entries) = interrupted {
            match self.merge_fill() {
                Ok(()) => info!(
                    entries,
                    "record index: an interrupted cold fill's entries merged into the sorted file"
                ),
                // Damaged runs: the cache is moved aside and filled again.
                Err(CacheError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(CacheError::Io(e))
                }
                // No room to write the file (say): the fill stays a layer that reads and
                // scans go through, merged at a later apply.
                Err(e) => {
                    warn!(error = %e, "record index: cannot merge an interrupted cold fill yet; reading it as it is")
                }
            }
        } else if filling {
            // A marker with nothing behind it (the fill's first batch, then a crash).
            let mut batch = sled::Batch::default();
            batch.remove(K_FILLING);
            self.tree.apply_batch(batch)?;
        }
        Ok(())
    }

    /// Merge the fill's state, if any, into a new sorted index file; then drop its blobs and
    /// runs. A failure leaves everything as it was (the fill is still read, and merged later).
    fn merge_fill(&self) -> Result<(), CacheError> {
        let t = std::time::Instant::now();
        let merged = {
            let st = self.index_state();
            let Some(fill) = st.fill.as_ref() else {
                return Ok(());
            };
            idx::merge(st.file.as_deref(), fill, &self.dir.join(INDEX_FILE))?
        };
        let entries = merged.len();
        let dir = {
            let mut st = self.index.write().unwrap_or_else(|p| p.into_inner());
            st.file = Some(Arc::new(merged));
            st.fill.take().map(|f| f.dir().to_path_buf())
        };
        // The blobs and the marker go in one batch: from then on the runs are never read
        // (the next open removes any that are left), so a removal the fill recorded in memory
        // can never be undone by an older run.
        let mut batch = sled::Batch::default();
        for k in self.tree.scan_prefix(T_FILL).keys() {
            batch.remove(k?);
        }
        batch.remove(K_FILLING);
        self.tree.apply_batch(batch)?;
        self.db.flush()?;
        if let Some(dir) = dir {
            if let Err(e) = idx::remove_runs(&dir) {
                warn!(error = %e, "record index: cannot remove a merged fill's runs (removed at the next start)");
            }
        }
        info!(
            entries,
            ms = t.elapsed().as_millis() as u64,
            "record index: the cold fill's entries written in key order"
        );
        Ok(())
    }

    /// Merge sled's record entries (changes and removals since the file was written) into a
    /// new sorted index file, then remove them from sled: what keeps sled's memory bounded by
    /// churn, and what moves a cache written before the index file existed out of sled. Only
    /// from `apply` (the one writer), never while a fill's state exists. A crash after the new
    /// file's rename leaves sled's entries over a file that already says the same.
    fn remerge(&self) -> Result<(), CacheError> {
        let t = std::time::Instant::now();
        // An entry sled cannot hand to the file (a record sealed inline by an older version)
        // stays in sled; everything else goes.
        let mut remove = Vec::new();
        for kv in self.tree.scan_prefix(T_RECORD) {
            let (k, v) = kv?;
            if v.is_empty()
                || split_header(&v)
                    .and_then(|(_, _, rest)| ptr_of(rest))
                    .is_some()
            {
                remove.push(k);
            }
        }
        let entries = self.record_scan()?.filter_map(|kv| match kv {
            Err(e) => Some(Err(std::io::Error::other(e.to_string()))),
            Ok((k, v)) => {
                let id = record_id(&k)?;
                let (version, epoch, rest) = split_header(&v)?;
                let ptr = ptr_of(rest)?;
                Some(Ok(idx::Entry {
                    id,
                    loc: Some(Loc {
                        version,
                        epoch,
                        ptr,
                    }),
                }))
            }
        });
        let file = SortedIndex::write(&self.dir.join(INDEX_FILE), entries, false)?;
        let written = file.len();
        self.index.write().unwrap_or_else(|p| p.into_inner()).file = Some(Arc::new(file));
        // In small batches: sled keeps a copy of every leaf a batch touches until the batch
        // ends (65,536 removals in one batch peaked at 277 MiB). Each removal is safe alone:
        // the file already says what the entry said.
        let moved = remove.len();
        for chunk in remove.chunks(REMERGE_BATCH) {
            let mut batch = sled::Batch::default();
            for k in chunk {
                batch.remove(k.clone());
            }
            self.tree.apply_batch(batch)?;
        }
        self.db.flush()?;
        // Entries that cannot move (sealed inline) are not counted: they would trigger a merge
        // at every apply.
        self.sled_records
            .store(0, std::sync::atomic::Ordering::SeqCst);
        info!(
            entries = written,
            from_sled = moved,
            ms = t.elapsed().as_millis() as u64,
            "record index: sled's changes merged into the sorted file"
        );
        Ok(())
    }

    /// Before a cold fill writes anything, after the old file went: a fill left unmerged (its
    /// runs durably, then its blobs) and then sled's removals, which hide nothing any more
    /// (the cache holds no record). In small batches (sled's copies); in this order, so a
    /// crash part-way leaves removals over whatever of the old fill is still there.
    fn drop_fill_and_removals(&self) -> Result<(), CacheError> {
        self.index.write().unwrap_or_else(|p| p.into_inner()).fill = None;
        idx::remove_runs(&self.dir.join(FILL_DIR))?;
        for prefix in [T_FILL, T_RECORD.as_bytes()] {
            loop {
                let keys: Vec<sled::IVec> = self
                    .tree
                    .scan_prefix(prefix)
                    .keys()
                    .take(REMERGE_BATCH)
                    .collect::<Result<_, _>>()?;
                if keys.is_empty() {
                    break;
                }
                let mut batch = sled::Batch::default();
                for k in keys {
                    batch.remove(k);
                }
                self.tree.apply_batch(batch)?;
            }
        }
        self.sled_records
            .store(0, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    /// Before a cold fill writes anything: the old index file goes (an empty cache's entries
    /// are all removed in sled; a crash later must not find them under the fill's runs).
    fn drop_index_file(&self) -> Result<(), CacheError> {
        self.index.write().unwrap_or_else(|p| p.into_inner()).file = None;
        match std::fs::remove_file(self.dir.join(INDEX_FILE)) {
            Ok(()) => std::fs::File::open(&self.dir)?.sync_all()?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// After a durable apply: the fill's new entries join its table, and a full table is
    /// written as a run (then the blobs it covers go from sled).
    fn fill_took(&self, new: Option<Fill>, entries: &[idx::Entry]) {
        {
            let mut st = self.index.write().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = new {
                st.fill = Some(f);
            }
            match st.fill.as_mut() {
                Some(f) => f.insert(entries),
                None => return,
            }
        }
        let run = {
            let st = self.index_state();
            match st.fill.as_ref() {
                Some(f) if f.wants_run() => f.write_run(),
                _ => return,
            }
        };
        match run {
            Ok(run) => {
                if let Some(f) = self
                    .index
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .fill
                    .as_mut()
                {
                    f.took_run(run);
                }
                // Durable with the next batch; until then a crash finds the same entries twice.
                let mut batch = sled::Batch::default();
                for k in self.tree.scan_prefix(T_FILL).keys().flatten() {
                    batch.remove(k);
                }
                if let Err(e) = self.tree.apply_batch(batch) {
                    warn!(error = %e, "record index: cannot drop the fill entries a run now holds");
                }
            }
            // Kept in memory and in sled; tried again after the next batch.
            Err(e) => warn!(error = %e, "record index: cannot write a fill run"),
        }
    }
}

/// [`Cache::record_scan`]'s iterator.
struct RecordScan {
    sled: std::iter::Peekable<sled::Iter>,
    #[allow(clippy::type_complexity)]
    file: Option<std::iter::Peekable<Box<dyn Iterator<Item = std::io::Result<idx::Entry>> + Send>>>,
}

impl Iterator for RecordScan {
    type Item = Result<(Vec<u8>, Vec<u8>), CacheError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if matches!(self.sled.peek(), Some(Err(_))) {
                return self
                    .sled
                    .next()
                    .and_then(|r| r.err())
                    .map(|e| Err(e.into()));
            }
            if matches!(self.file.as_mut().and_then(|f| f.peek()), Some(Err(_))) {
                return self
                    .file
                    .as_mut()
                    .and_then(|f| f.next())
                    .and_then(|r| r.err())
                    .map(|e| Err(e.into()));
            }
            let sled_key = match self.sled.peek() {
                Some(Ok((k, _))) => Some(k.to_vec()),
                _ => None,
            };
            let file_key = match self.file.as_mut().and_then(|f| f.peek()) {
                Some(Ok(e)) => Some(record_key(&e.id)),
                _ => None,
            };
            let take_file = match (&sled_key, &file_key) {
                (None, None) => return None,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some(s), Some(f)) => match s.cmp(f) {
                    std::cmp::Ordering::Less => false,
                    std::cmp::Ordering::Equal => {
                        // sled's entry (a newer version, or a removal) replaces the file's.
                        self.file.as_mut().and_then(|f| f.next());
                        false
                    }
                    std::cmp::Ordering::Greater => true,
                },
            };
            if take_file {
                if let Some(Ok(idx::Entry { id, loc: Some(l) })) =
                    self.file.as_mut().and_then(|f| f.next())
                {
                    return Some(Ok((record_key(&id), loc_value(l))));
                }
            } else if let Some(Ok((k, v))) = self.sled.next() {
                if !v.is_empty() {
                    return Some(Ok((k.to_vec(), v.to_vec())));
                }
            }
        }
    }
}

/// Where a cold fill's postings are gathered and sorted (inside the cache's folder).
const BULK_DIR: &str = "postings-build";
/// Keys sorted in memory at a time while building postings (≈ 11 MB; a few hundred in the
/// tests, so their few thousand postings take the merge path).
#[cfg(not(test))]
const BULK_RUN_KEYS: usize = 262_144;
#[cfg(test)]
const BULK_RUN_KEYS: usize = 500;
/// Every posting key's length: `x` ‖ kind ‖ keyed hash ‖ record index key.
const POSTING_KEY_LEN: usize = T_POSTING.len() + 1 + POSTING_HASH + ID_LEN;

type PostingBytes = [u8; POSTING_KEY_LEN];

/// A cold fill's search postings, kept aside instead of being inserted into the tree one random
/// leaf at a time: appended unsorted to a spill file as batches apply, then sorted in runs,
/// merged and inserted in key order when the fill finishes ([`Cache::build_postings`]). The
/// spill needs no fsync: the layout marker is removed when the fill begins, so after a crash
/// the postings are rebuilt from the (durable) records at open. Search is refused meanwhile
/// ([`CacheError::SearchBuilding`]); lookups by NHS number are not affected.
struct Bulk {
    dir: PathBuf,
    spill: std::io::BufWriter<std::fs::File>,
    keys: u64,
    /// The record keys written since the fill began (the cache was empty then), so a record
    /// not in it is known absent without a random read of the tree. Made by the fill's first
    /// apply and lent to each later one; a rebuild at open has none.
    written: Option<Written>,
    /// The search cards, gathered as records are written (`None` once the build took them).
    cards: Option<crate::cards::CardBuild>,
}

/// A Bloom filter of record index keys: 8 MiB, five probes from the key's own keyed-hash bytes
/// (uniform already). False positives (≈ 1.5 % at 7.5 M records) cost only the read they
/// would have cost anyway; there are no false negatives.
struct Written {
    bits: Vec<u64>,
}

impl Written {
    const WORDS: usize = 1 << 20;
    const PROBES: usize = 5;

    fn new() -> Written {
        Written {
            bits: vec![0; Self::WORDS],
        }
    }

    fn probes(k: &[u8]) -> Option<[usize; Self::PROBES]> {
        let id = k.get(T_RECORD.len()..)?;
        if id.len() != ID_LEN {
            return None;
        }
        let mut out = [0usize; Self::PROBES];
        for (i, o) in out.iter_mut().enumerate() {
            let w: [u8; 4] = id[i * 4..i * 4 + 4].try_into().ok()?;
            *o = u32::from_le_bytes(w) as usize % (Self::WORDS * 64);
        }
        Some(out)
    }

    fn insert(&mut self, k: &[u8]) {
        if let Some(ps) = Self::probes(k) {
            for p in ps {
                self.bits[p / 64] |= 1 << (p % 64);
            }
        }
    }

    /// `false` only if `k` was never inserted.
    fn maybe(&self, k: &[u8]) -> bool {
        Self::probes(k)
            .is_none_or(|ps| ps.iter().all(|&p| self.bits[p / 64] & (1 << (p % 64)) != 0))
    }
}

impl Bulk {
    fn create(cache_dir: &Path) -> Result<Bulk, CacheError> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = cache_dir.join(BULK_DIR);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let f = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .mode(0o600)
            .open(dir.join("spill"))?;
        let cards = crate::cards::CardBuild::create(cache_dir, &dir)?;
        Ok(Bulk {
            dir,
            spill: std::io::BufWriter::with_capacity(1 << 20, f),
            keys: 0,
            written: None,
            cards: Some(cards),
        })
    }

    /// Keep search cards aside (`None`: the record was removed) for the build.
    fn add_cards(&mut self, cards: &[([u8; ID_LEN], Option<Vec<u8>>)]) -> Result<(), CacheError> {
        let Some(b) = self.cards.as_mut() else {
            return Err(CacheError::SearchBuilding);
        };
        for (id, card) in cards {
            b.add(id, card.as_deref())?;
        }
        Ok(())
    }

    fn add(&mut self, keys: &[Vec<u8>]) -> Result<(), CacheError> {
        use std::io::Write;
        for k in keys.iter().filter(|k| k.len() == POSTING_KEY_LEN) {
            self.spill.write_all(k)?;
            self.keys += 1;
        }
        Ok(())
    }
}

impl Drop for Bulk {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sorted posting file: every posting a bulk build made, as fixed-length keys in key order
/// (`postings.sorted` in the cache's folder), with every [`FENCE`]th key held in memory so a
/// prefix is found with one read. Written once per build (aside, fsync'd, renamed) and never
/// changed: a posting removed later (a record updated or withdrawn) stays in it and is harmless,
/// since every candidate is re-checked against its own record; postings made after the build
/// go to sled. A cache whose layout marker says the file exists but cannot read it rebuilds.
struct PostingFile {
    file: std::fs::File,
    keys: u64,
    fences: Vec<PostingBytes>,
}

/// Keys per fence (one read of ≈ 10.5 KB finds a prefix; ≈ 0.16 bytes of memory per key; 7 in
/// the tests, so a prefix's keys cross block boundaries).
#[cfg(not(test))]
const FENCE: u64 = 256;
#[cfg(test)]
const FENCE: u64 = 7;
const POSTING_FILE: &str = "postings.sorted";

struct PostingFileWriter {
    dir: PathBuf,
    w: std::io::BufWriter<std::fs::File>,
    keys: u64,
    fences: Vec<PostingBytes>,
}

impl PostingFileWriter {
    fn add(&mut self, chunk: &[PostingBytes]) -> std::io::Result<()> {
        use std::io::Write;
        for k in chunk {
            if self.keys.is_multiple_of(FENCE) {
                self.fences.push(*k);
            }
            self.w.write_all(k)?;
            self.keys += 1;
        }
        Ok(())
    }

    fn finish(self) -> Result<PostingFile, CacheError> {
        let PostingFileWriter {
            dir,
            w,
            keys,
            fences,
        } = self;
        let f = w.into_inner().map_err(|e| CacheError::Io(e.into_error()))?;
        f.sync_all()?;
        drop(f);
        let path = dir.join(POSTING_FILE);
        std::fs::rename(dir.join(format!("{POSTING_FILE}.tmp")), &path)?;
        std::fs::File::open(&dir)?.sync_all()?;
        Ok(PostingFile {
            file: std::fs::File::open(&path)?,
            keys,
            fences,
        })
    }
}

impl PostingFile {
    fn writer(dir: &Path) -> Result<PostingFileWriter, CacheError> {
        use std::os::unix::fs::OpenOptionsExt;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(dir.join(format!("{POSTING_FILE}.tmp")))?;
        Ok(PostingFileWriter {
            dir: dir.to_path_buf(),
            w: std::io::BufWriter::with_capacity(1 << 20, f),
            keys: 0,
            fences: Vec::new(),
        })
    }

    /// Open the file and read its fences; `None` if there is none.
    fn open(dir: &Path) -> Result<Option<PostingFile>, CacheError> {
        use std::io::Read;
        let path = dir.join(POSTING_FILE);
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let len = file.metadata()?.len();
        if !len.is_multiple_of(POSTING_KEY_LEN as u64) {
            return Err(CacheError::Decode {
                table: "x",
                why: "the sorted posting file is not whole keys".into(),
            });
        }
        let keys = len / POSTING_KEY_LEN as u64;
        let mut fences = Vec::with_capacity((keys / FENCE + 1) as usize);
        let mut r = std::io::BufReader::with_capacity(1 << 20, &file);
        let mut k = [0u8; POSTING_KEY_LEN];
        let mut prev: Option<PostingBytes> = None;
        for i in 0..keys {
            r.read_exact(&mut k)?;
            if prev.is_some_and(|p| p >= k) {
                return Err(CacheError::Decode {
                    table: "x",
                    why: "the sorted posting file is out of order".into(),
                });
            }
            prev = Some(k);
            if i % FENCE == 0 {
                fences.push(k);
            }
        }
        drop(r);
        Ok(Some(PostingFile { file, keys, fences }))
    }

    /// Append the record ids of every key starting with `prefix`.
    fn ids(&self, prefix: &[u8], out: &mut Vec<[u8; ID_LEN]>) -> Result<(), CacheError> {
        use std::os::unix::fs::FileExt;
        // The last fence before the prefix: its block is the first that can hold it.
        let first = self.fences.partition_point(|f| f.as_slice() < prefix);
        let mut block = first.saturating_sub(1) as u64;
        let mut buf = vec![0u8; FENCE as usize * POSTING_KEY_LEN];
        loop {
            let start = block * FENCE;
            if start >= self.keys {
                return Ok(());
            }
            let n = (self.keys - start).min(FENCE) as usize;
            let bytes = &mut buf[..n * POSTING_KEY_LEN];
            self.file
                .read_exact_at(bytes, start * POSTING_KEY_LEN as u64)?;
            for k in bytes.chunks_exact(POSTING_KEY_LEN) {
                if k.starts_with(prefix) {
                    if let Some(id) = k.get(prefix.len()..).and_then(|id| id.try_into().ok()) {
                        out.push(id);
                    }
                } else if k > prefix {
                    return Ok(());
                }
            }
            block += 1;
        }
    }
}

/// What [`Cache::apply`] did.
#[derive(Debug, Clone)]
pub struct Applied {
    pub report: ApplyReport,
    pub written: Vec<NhsNumber>,
    pub removed: Vec<NhsNumber>,
}

enum Op {
    /// Written: whether it is new to the cohort cache.
    Put(NhsNumber, bool),
    /// Removed (withdrawn or evicted); whether the cohort cache held it.
    Remove(NhsNumber, bool),
    /// An evicted record that no longer opened (so its NHS number is unknown).
    Dropped,
}

/// One apply: reads see the tree plus what this apply wrote; writes go to one batch.
struct Txn<'a> {
    cache: &'a Cache,
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    batch: sled::Batch,
    ops: Vec<Op>,
    now: UnixMillis,
    /// Value-log bytes this apply points at, and stops pointing at, per segment.
    added: Vec<(u32, u64)>,
    freed: Vec<(u32, u64)>,
    /// During a cold fill: the postings, kept aside for the sorted build instead of the batch.
    spill: Option<Vec<Vec<u8>>>,
    /// During a cold fill: the search cards (`None`: removed), kept aside for the build.
    #[allow(clippy::type_complexity)]
    cards: Option<Vec<([u8; ID_LEN], Option<Vec<u8>>)>>,
    /// The card files exist: a changed card goes to sled (`d`).
    card_file: bool,
    /// The records whose `d` entries this apply wrote.
    card_writes: Vec<[u8; ID_LEN]>,
    /// During a cold fill: the record keys written since it began (others are absent).
    written: Option<Written>,
    /// During a cold fill: the record index entries this apply writes (to the fill's state and
    /// a blob in sled's batch, not to sled's tree; `index.rs`).
    fill: Option<Vec<idx::Entry>>,
    /// A sorted index or a fill's state exists: a removed record needs an empty value in sled
    /// to hide the entry beneath.
    has_base: bool,
    /// Record entries this apply writes to sled's tree.
    sled_record_writes: usize,
}

impl Txn<'_> {
    fn read(&self, k: &[u8]) -> Result<Option<Vec<u8>>, CacheError> {
        if let Some(v) = self.overlay.get(k) {
            return Ok(v.clone());
        }
        if self.written.as_ref().is_some_and(|w| !w.maybe(k)) {
            return Ok(None);
        }
        self.cache.index_get(k)
    }
    fn write(&mut self, k: Vec<u8>, v: Option<Vec<u8>>) -> Result<(), CacheError> {
        if let (Some(w), Some(_)) = (self.written.as_mut(), &v) {
            w.insert(&k);
        }
        let id = record_id(&k);
        match (self.fill.as_mut(), id) {
            (Some(fill), Some(id)) => {
                let loc = match &v {
                    None => None,
                    Some(v) => Some(
                        split_header(v)
                            .and_then(|(version, epoch, rest)| {
                                ptr_of(rest).map(|ptr| Loc {
                                    version,
                                    epoch,
                                    ptr,
                                })
                            })
                            .ok_or(CacheError::Decode {
                                table: "r",
                                why: "a cold fill's record is not in the value log".into(),
                            })?,
                    ),
                };
                fill.push(idx::Entry { id, loc });
            }
            _ => {
                self.sled_record_writes += usize::from(id.is_some());
                match &v {
                    Some(v) => self.batch.insert(k.clone(), v.clone()),
                    None if id.is_some() && self.has_base => {
                        self.batch.insert(k.clone(), &[] as &[u8])
                    }
                    None => self.batch.remove(k.clone()),
                }
            }
        }
        self.overlay.insert(k, v);
        Ok(())
    }

    /// Note a record's new search card (`None`: removed): aside during a cold fill, in sled
    /// once the card files exist, nowhere before (searches then read the records).
    fn card(&mut self, id: [u8; ID_LEN], card: Option<Vec<u8>>) {
        if let Some(cards) = self.cards.as_mut() {
            cards.push((id, card));
        } else if self.card_file {
            self.batch.insert(card_key(&id), card.unwrap_or_default());
            self.card_writes.push(id);
        }
    }

    /// The value-log space an index entry being replaced or removed stops using.
    fn free(&mut self, k: &[u8], v: &[u8]) {
        if let Some(p) = split_header(v).and_then(|(_, _, rest)| ptr_of(rest)) {
            self.freed.push((p.seg, entry_bytes(k, p)));
        }
    }

    /// Drop the search postings of the record stored under `k` as `v` (a record that no longer
    /// opens keeps its postings: a search finds nothing behind them and skips them). Returns
    /// the record's NHS number and demographics when it was opened to find them.
    fn unpost(
        &mut self,
        k: &[u8],
        v: &[u8],
    ) -> Option<(NhsNumber, Option<edge_proto::model::Demographics>)> {
        self.free(k, v);
        if self.spill.is_some() {
            // A cold fill's postings are not in the tree yet; one left behind for a record
            // replaced within the fill finds the same patient (re-checked at every search).
            return None;
        }
        let rec = self.cache.open_record(T_RECORD, k, v).ok()?;
        let demo = demographics(rec.record.as_slice());
        for pk in self.cache.postings_of(k, rec.nhs, demo.as_ref()) {
            self.batch.remove(pk);
        }
        Some((rec.nhs, demo))
    }
}

impl PostingStore for Cache {
    type Id = [u8; ID_LEN];
    type Error = CacheError;

    fn ids(&self, key: &PostingKey, out: &mut Vec<[u8; ID_LEN]>) -> Result<(), CacheError> {
        let prefix = self.posting_prefix(key);
        for k in self.tree.scan_prefix(&prefix).keys() {
            let k = k?;
            if let Some(id) = k.get(prefix.len()..).and_then(|id| id.try_into().ok()) {
                out.push(id);
            }
        }
        if let Some(f) = self
            .posting_file
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            f.ids(&prefix, out)?;
        }
        Ok(())
    }

    fn patient(
        &self,
        id: [u8; ID_LEN],
    ) -> Result<Option<(NhsNumber, edge_proto::model::Demographics)>, CacheError> {
        let mut k = T_RECORD.as_bytes().to_vec();
        k.extend_from_slice(&id);
        let Some(rec) = self.read_record(&k)? else {
            return Ok(None);
        };
        Ok(demographics(rec.record.as_slice()).map(|d| (rec.nhs, d)))
    }

    /// From the record's search card; from the record itself where there is no card (a cache
    /// without card files, or one that does not open).
    fn scored(&self, id: [u8; ID_LEN]) -> Result<Option<Scored>, CacheError> {
        if let Some(found) = self.card(&id)? {
            return Ok(found);
        }
        Ok(self.patient(id)?.map(|(nhs, d)| Scored::new(nhs, &d)))
    }
}

impl UnitStore for Txn<'_> {
    type Error = CacheError;

    fn stored(&mut self, nhs: &NhsNumber) -> Result<Option<StoredVersion>, CacheError> {
        let k = self.cache.key(T_RECORD, nhs);
        Ok(self.read(&k)?.and_then(|v| {
            split_header(&v).map(|(version, epoch, _)| StoredVersion { version, epoch })
        }))
    }

    fn put(
        &mut self,
        nhs: &NhsNumber,
        version: u64,
        epoch: u64,
        record: &Bytes,
        digest: Option<[u8; 32]>,
    ) -> Result<(), CacheError> {
        let k = self.cache.key(T_RECORD, nhs);
        let old = self.read(&k)?;
        let new = old.is_none();
        let was = match old {
            Some(old) => self.unpost(&k, &old),
            None => None,
        };
        let rec = CachedRecord {
            nhs: *nhs,
            version,
            // Verifying the batch hashed the record already: not a second SHA-256 per record.
            digest: digest.unwrap_or_else(|| record_digest(record.as_slice())),
            record: record.clone(),
            synced_at: self.now,
        };
        let sealed = self.cache.seal_record(T_RECORD, &k, &rec)?;
        let demo = demographics(rec.record.as_slice());
        let pks = self.cache.postings_of(&k, rec.nhs, demo.as_ref());
        // Most updates are clinical: the card already says what the new one would.
        let same_card = was.is_some_and(|(n, d)| n == rec.nhs && d == demo);
        if let (Some(id), false) = (id_of(&k), same_card) {
            let card = self.cache.seal_card(&id, rec.nhs, demo.as_ref())?;
            self.card(id, card);
        }
        match self.spill.as_mut() {
            Some(spill) => spill.extend(pks),
            None => {
                for pk in pks {
                    self.batch.insert(pk, &[] as &[u8]);
                }
            }
        }
        let p = self.cache.vlog.append(&k, &sealed)?;
        self.added.push((p.seg, entry_bytes(&k, p)));
        self.write(k, Some(header(version, epoch, log_ref(p))))?;
        self.ops.push(Op::Put(*nhs, new));
        Ok(())
    }

    fn set_epoch(&mut self, nhs: &NhsNumber, epoch: u64) -> Result<(), CacheError> {
        let k = self.cache.key(T_RECORD, nhs);
        if let Some(v) = self.read(&k)? {
            if let Some((version, _, sealed)) = split_header(&v) {
                let nv = header(version, epoch, sealed.to_vec());
                self.write(k, Some(nv))?;
            }
        }
        Ok(())
    }

    fn remove(&mut self, nhs: &NhsNumber) -> Result<(), CacheError> {
        let k = self.cache.key(T_RECORD, nhs);
        let old = self.read(&k)?;
        let held = old.is_some();
        if let Some(old) = old {
            self.unpost(&k, &old);
            if let Some(id) = id_of(&k) {
                self.card(id, None);
            }
        }
        self.write(k, None)?;
        // Always reported, held or not: an on-demand copy of the patient goes too.
        self.ops.push(Op::Remove(*nhs, held));
        Ok(())
    }

    fn evict_other_epochs(&mut self, epoch: u64) -> Result<u64, CacheError> {
        let mut evict = Vec::new();
        for kv in self.cache.record_scan()? {
            let (k, scanned) = kv?;
            // This apply's own writes first; otherwise the value the scan found.
            let v = match self.overlay.get(&k) {
                Some(v) => v.clone(),
                None => Some(scanned),
            };
            if let Some(v) = v {
                if split_header(&v).is_some_and(|(_, e, _)| e != epoch) {
                    self.free(&k, &v);
                    let rec = self.cache.open_record(T_RECORD, &k, &v).ok();
                    if let Some(rec) = &rec {
                        for pk in self.cache.record_postings(&k, rec) {
                            self.batch.remove(pk);
                        }
                    }
                    evict.push((k.to_vec(), rec.map(|r| r.nhs)));
                }
            }
        }
        let n = evict.len() as u64;
        for (k, nhs) in evict {
            if let Some(id) = id_of(&k) {
                self.card(id, None);
            }
            self.write(k, None)?;
            self.ops.push(match nhs {
                Some(nhs) => Op::Remove(nhs, true),
                None => Op::Dropped,
            });
        }
        Ok(n)
    }

    fn save_state(&mut self, state: &SyncState) -> Result<(), CacheError> {
        let plain = state.encode().map_err(|e| CacheError::Decode {
            table: "s",
            why: e.to_string(),
        })?;
        let sealed = self
            .cache
            .sealer
            .seal("s", K_STATE, &plain)
            .map_err(|_| CacheError::Seal { table: "s" })?;
        self.write(K_STATE.to_vec(), Some(sealed))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use edge_proto::fhir::ingest::parse_bundle_json;
    use edge_proto::{assemble, cbor};

    #[test]
    fn records_are_compressed_before_sealing_and_old_uncompressed_ones_still_open() {
        use super::*;
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(crate::seal::Sealer::ephemeral().unwrap());
        let (cache, _) = Cache::open(dir.path(), sealer.clone(), KeyState::Fresh).unwrap();
        let nhs = NhsNumber::parse("9434765919").unwrap();
        let body = b"a summary's bytes, a summary's bytes, a summary's bytes".repeat(20);
        let rec = CachedRecord {
            nhs,
            version: 2,
            digest: record_digest(&body),
            record: Bytes::from(body.clone()),
            synced_at: UnixMillis(5),
        };
        let k = cache.key(T_RECORD, &nhs);
        let sealed = cache.seal_record(T_RECORD, &k, &rec).unwrap();
        let plain = cbor::to_vec(&rec).unwrap();
        assert!(
            sealed.len() < plain.len() / 2,
            "compressed: {} sealed vs {} plain",
            sealed.len(),
            plain.len()
        );
        let v = header(2, 1, sealed.clone());
        assert_eq!(
            cache
                .open_record(T_RECORD, &k, &v)
                .unwrap()
                .record
                .as_slice(),
            &body[..]
        );
        // A record sealed before compression (bare CBOR) still opens.
        let old = header(2, 1, sealer.seal(T_RECORD, &k, &plain).unwrap());
        assert_eq!(cache.open_record(T_RECORD, &k, &old).unwrap().version, 2);
        // So does one written as deflate, by the versions before LZ4.
        let deflated = cache.codec.deflate(&plain).unwrap();
        let old = header(2, 1, sealer.seal(T_RECORD, &k, &deflated).unwrap());
        assert_eq!(
            cache
                .open_record(T_RECORD, &k, &old)
                .unwrap()
                .record
                .as_slice(),
            &body[..]
        );
        // What is written now is LZ4: the marker is the first byte of the sealed plaintext.
        assert_eq!(sealer.open(T_RECORD, &k, &sealed).unwrap()[0], LZ4);
    }

    #[test]
    fn an_lz4_record_that_lies_about_its_length_or_is_cut_is_refused() {
        let codec = super::Codec::new();
        let plain: Vec<u8> = (0..5_000u32).map(|i| (i % 13) as u8).collect();
        let z = codec.compress(&plain).unwrap();
        assert_eq!(codec.unlz4(&z[1..]).unwrap(), plain);
        // Declares 9 MiB: refused before anything is allocated for it.
        let mut lie = z.clone();
        lie[1..5].copy_from_slice(&(9u32 << 20).to_le_bytes());
        assert!(codec.unlz4(&lie[1..]).is_err());
        // Declares more or less than the block holds.
        let mut more = z.clone();
        more[1..5].copy_from_slice(&5_001u32.to_le_bytes());
        assert!(codec.unlz4(&more[1..]).is_err());
        let mut less = z.clone();
        less[1..5].copy_from_slice(&4_999u32.to_le_bytes());
        assert!(codec.unlz4(&less[1..]).is_err());
        assert!(codec.unlz4(&z[1..z.len() / 2]).is_err(), "truncated");
        assert!(codec.unlz4(&z[1..3]).is_err(), "no length");
        assert!(
            codec.compress(&vec![0u8; 9 << 20]).is_err(),
            "past the limit"
        );
    }

    #[test]
    fn a_record_that_inflates_past_the_limit_is_refused() {
        let codec = super::Codec::new();
        let bomb = codec.deflate(&vec![0u8; 9 * 1024 * 1024]).unwrap();
        assert!(codec.inflate(&bomb[1..]).is_err());
        assert!(codec.inflate(b"not deflate").is_err());
        assert!(
            codec.inflate(&bomb[1..bomb.len() / 2]).is_err(),
            "truncated"
        );
        // The same states serve record after record.
        for n in [10usize, 5_000, 100] {
            let plain: Vec<u8> = (0..n).map(|i| (i % 7) as u8).collect();
            let z = codec.deflate(&plain).unwrap();
            assert_eq!(codec.inflate(&z[1..]).unwrap(), plain);
        }
    }

    /// Synthetic summaries: (NHS number, CBOR bytes, demographics).
    fn summaries(n: u64) -> Vec<(super::NhsNumber, Vec<u8>, edge_proto::model::Demographics)> {
        let cfg = kerbside_synth::Config::new(n, 5, 1, None).unwrap();
        let gen = kerbside_synth::Generator::new(&cfg);
        (0..n)
            .map(|i| {
                let mut line = String::new();
                gen.patient(i, &mut line);
                let c = parse_bundle_json(line.trim_end()).unwrap();
                let s = assemble::from_contribution(&c, edge_proto::time::UnixMillis(0));
                let bytes = cbor::encode_summary(&s).unwrap();
                (s.nhs_number, bytes, s.patient)
            })
            .collect()
    }

    fn feed(
        cache: &super::Cache,
        seq: &mut u64,
        changes: Vec<edge_proto::sync::Change>,
    ) -> super::Applied {
        use edge_proto::sync::{Apply, ApplyKind, SyncState};
        let first = *seq + 1;
        *seq += changes.len() as u64;
        let apply = Apply {
            batch_no: *seq,
            kind: ApplyKind::Feed {
                first_seq: first,
                last_seq: *seq,
            },
            epoch: 0,
            changes,
            // Left to the store to compute (the baseline below passes them, as the session does).
            record_digests: Vec::new(),
            state: SyncState {
                cursor: *seq,
                ..SyncState::default()
            },
        };
        cache.apply(&apply, super::UnixMillis(1)).unwrap()
    }

    /// Every query shape a crew uses, from one patient's details (and a mixed one).
    fn queries(
        d: &edge_proto::model::Demographics,
        other: &edge_proto::model::Demographics,
    ) -> Vec<crate::search::SearchQuery> {
        use crate::search::SearchQuery;
        let dob = d
            .birth_date
            .as_ref()
            .and_then(|b| b.day())
            .map(str::to_owned);
        let fam = Some(d.family.clone()).filter(|f| !f.is_empty());
        let given = d.given.first().cloned();
        let pc = d.postcode.clone();
        let district = pc
            .as_deref()
            .and_then(|p| p.split_whitespace().next())
            .map(str::to_owned);
        vec![
            SearchQuery {
                family: fam.clone(),
                given: given.clone(),
                birth_date: dob.clone(),
                postcode: None,
            },
            SearchQuery {
                family: fam.clone(),
                given: None,
                birth_date: None,
                postcode: district.clone(),
            },
            SearchQuery {
                family: None,
                given: given.clone(),
                birth_date: dob.clone(),
                postcode: pc.clone(),
            },
            SearchQuery {
                family: fam,
                given,
                birth_date: dob,
                postcode: pc,
            },
            SearchQuery {
                family: Some(other.family.clone()).filter(|f| !f.is_empty()),
                given: None,
                birth_date: d
                    .birth_date
                    .as_ref()
                    .and_then(|b| b.day())
                    .map(str::to_owned),
                postcode: district,
            },
        ]
    }

    fn same_answers(
        cache: &super::Cache,
        reference: &crate::search::SearchIndex,
        people: &[(super::NhsNumber, Vec<u8>, edge_proto::model::Demographics)],
    ) -> usize {
        let mut found = 0;
        for (i, (_, _, d)) in people.iter().enumerate() {
            let other = &people[(i * 7 + 3) % people.len()].2;
            for q in queries(d, other) {
                let want = reference.search(&q);
                let got = cache.search(&q).map_err(|e| match e {
                    crate::search::SearchFailed::Query(e) => e,
                    crate::search::SearchFailed::Store(e) => panic!("store: {e}"),
                });
                assert_eq!(got, want, "query {q:?}");
                found += want.map(|o| o.candidates.len()).unwrap_or(0);
            }
        }
        found
    }

    /// A crew's search by one patient's family name and birth date.
    fn family_and_birth_date(d: &edge_proto::model::Demographics) -> crate::search::SearchQuery {
        crate::search::SearchQuery {
            family: Some(d.family.clone()),
            given: None,
            birth_date: d
                .birth_date
                .as_ref()
                .and_then(|b| b.day())
                .map(str::to_owned),
            postcode: None,
        }
    }

    /// Postings in sled and in the sorted posting file.
    fn posting_count(cache: &super::Cache) -> usize {
        cache.tree.scan_prefix(super::T_POSTING).count()
            + cache
                .posting_file
                .read()
                .unwrap()
                .as_ref()
                .map_or(0, |f| f.keys as usize)
    }

    /// One baseline step (`Baseline`, or `FinishBaseline` when `finish`), every record at
    /// version 1.
    fn baseline(
        cache: &super::Cache,
        seq: &mut u64,
        people: &[(super::NhsNumber, Vec<u8>, edge_proto::model::Demographics)],
        finish: bool,
    ) -> super::Applied {
        baseline_at(cache, seq, people, finish, 1)
    }

    /// [`baseline`] with the records at `version`.
    fn baseline_at(
        cache: &super::Cache,
        seq: &mut u64,
        people: &[(super::NhsNumber, Vec<u8>, edge_proto::model::Demographics)],
        finish: bool,
        version: u64,
    ) -> super::Applied {
        baseline_changes(cache, seq, upserts(people, version), finish)
    }

    #[test]
    fn a_cold_fill_builds_its_postings_in_key_order_when_it_finishes_and_a_crash_rebuilds_them() {
        use super::*;
        use crate::search::SearchIndex;
        let people = summaries(600);
        let mut reference = SearchIndex::new();
        for (nhs, _, d) in &people {
            reference.insert(*nhs, d);
        }
        let q = family_and_birth_date(&people[0].2);

        // Finished: postings built from several sorted runs agree with the reference.
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(crate::seal::Sealer::ephemeral().unwrap());
        let (cache, _) = Cache::open(dir.path(), sealer.clone(), KeyState::Fresh).unwrap();
        let mut seq = 0;
        for chunk in people[..500].chunks(100) {
            baseline(&cache, &mut seq, chunk, false);
            // Mid-fill: nothing posted in the tree, search says why, lookups work.
            assert_eq!(posting_count(&cache), 0);
            assert!(matches!(
                cache.search(&q),
                Err(SearchFailed::Store(CacheError::SearchBuilding))
            ));
            assert!(cache.get(&chunk[0].0).unwrap().is_some());
        }
        assert!(dir
            .path()
            .join("cache.sled")
            .join(BULK_DIR)
            .join("spill")
            .exists());
        // A fill resumed after a lost link sends some records again: they are found (not
        // counted twice), though the fill skips reading the tree for records it never wrote.
        baseline(&cache, &mut seq, &people[..100], false);
        assert_eq!(cache.len(), 500);
        baseline(&cache, &mut seq, &people[500..], true);
        assert!(!dir.path().join("cache.sled").join(BULK_DIR).exists());
        assert_eq!(cache.len(), 600);
        assert!(same_answers(&cache, &reference, &people) > 600);
        let postings = posting_count(&cache);
        assert!(postings >= 600 * 3, "{postings} postings");
        assert_eq!(
            cache.tree.get(K_SEARCH).unwrap().as_deref(),
            Some(SEARCH_LAYOUT_FILE)
        );
        drop(cache);
        let (cache, _) = Cache::open(dir.path(), sealer.clone(), KeyState::Existing).unwrap();
        assert_eq!(posting_count(&cache), postings);
        same_answers(&cache, &reference, &people);
        drop(cache);
        // The sorted file damaged (cut mid-key) or lost: rebuilt from the records at open.
        let file = dir.path().join("cache.sled").join(POSTING_FILE);
        let len = std::fs::metadata(&file).unwrap().len();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&file)
            .unwrap()
            .set_len(len - 5)
            .unwrap();
        let (cache, _) = Cache::open(dir.path(), sealer.clone(), KeyState::Existing).unwrap();
        assert_eq!(posting_count(&cache), postings);
        same_answers(&cache, &reference, &people);
        drop(cache);
        std::fs::remove_file(&file).unwrap();
        let (cache, _) = Cache::open(dir.path(), sealer, KeyState::Existing).unwrap();
        assert_eq!(posting_count(&cache), postings);
        same_answers(&cache, &reference, &people);
        drop(cache);

        // Stopped mid-fill (the spill is lost): reopened, the postings are rebuilt from the
        // records held, and the rest of the fill posts as it goes.
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(crate::seal::Sealer::ephemeral().unwrap());
        let (cache, _) = Cache::open(dir.path(), sealer.clone(), KeyState::Fresh).unwrap();
        let mut seq = 0;
        for chunk in people[..300].chunks(100) {
            baseline(&cache, &mut seq, chunk, false);
        }
        drop(cache);
        let (cache, opened) = Cache::open(dir.path(), sealer, KeyState::Existing).unwrap();
        assert_eq!(opened, Opened::Existing);
        assert_eq!(cache.len(), 300);
        assert!(cache.search(&q).is_ok());
        for chunk in people[300..500].chunks(100) {
            baseline(&cache, &mut seq, chunk, false);
        }
        baseline(&cache, &mut seq, &people[500..], true);
        assert_eq!(cache.len(), 600);
        assert!(same_answers(&cache, &reference, &people) > 600);
        assert_eq!(posting_count(&cache), postings);
    }

    /// Every record held has a search card saying exactly what its record says (so a search
    /// never reads the record), and every record removed has one saying so.
    fn cards_match_records(
        cache: &super::Cache,
        held: &[super::NhsNumber],
        gone: &[super::NhsNumber],
    ) {
        use super::*;
        for nhs in held {
            let rec = cache.get(nhs).unwrap().expect("held");
            let id = id_of(&cache.key(T_RECORD, nhs)).unwrap();
            let want = demographics(rec.record.as_slice()).map(|d| Scored::new(*nhs, &d).encode());
            let got = cache.card(&id).unwrap().expect("a card, not the record");
            assert_eq!(got.map(|s| s.encode()), want, "card of a held record");
        }
        for nhs in gone {
            assert!(cache.get(nhs).unwrap().is_none());
            let id = id_of(&cache.key(T_RECORD, nhs)).unwrap();
            assert!(
                matches!(cache.card(&id).unwrap(), Some(None)),
                "card of a removed record"
            );
        }
    }

    fn card_entries(cache: &super::Cache) -> usize {
        cache.tree.scan_prefix(super::T_CARD).count()
    }

    #[test]
    fn search_cards_follow_the_records_through_a_fill_updates_removals_restarts_and_rebuilds() {
        use super::*;
        use crate::search::SearchIndex;
        use edge_proto::sync::{Change, WithdrawReason};
        let people = summaries(600);
        let mut reference = SearchIndex::new();
        for (nhs, _, d) in &people[..500] {
            reference.insert(*nhs, d);
        }
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(crate::seal::Sealer::ephemeral().unwrap());
        let (cache, _) = Cache::open(dir.path(), sealer.clone(), KeyState::Fresh).unwrap();
        let mut seq = 0;
        // A cold fill in several batches, in which patients 0..20 are sent again later in the
        // fill reading as patients 300..320 (a newer version): the later card wins.
        for chunk in people[..400].chunks(100) {
            baseline(&cache, &mut seq, chunk, false);
        }
        let resent: Vec<_> = (0..20)
            .map(|i| {
                (
                    people[i].0,
                    people[300 + i].1.clone(),
                    people[300 + i].2.clone(),
                )
            })
            .collect();
        baseline_at(&cache, &mut seq, &resent, false, 2);
        for (nhs, _, d) in &resent {
            reference.insert(*nhs, d);
        }
        baseline(&cache, &mut seq, &people[400..500], true);
        let sled_dir = dir.path().join("cache.sled");
        assert!(sled_dir.join(crate::cards::CARD_LOG).exists());
        assert!(sled_dir.join(crate::cards::CARD_INDEX).exists());
        // The batch that finishes the fill applies after the build (as its postings do).
        assert_eq!(
            card_entries(&cache),
            100,
            "only the last batch's cards are in sled"
        );
        let held: Vec<_> = people[..500].iter().map(|p| p.0).collect();
        cards_match_records(&cache, &held, &[]);
        assert!(same_answers(&cache, &reference, &people[..500]) > 500);

        // After the fill: demographic changes (patients 20..40 now read as 340..360), clinical
        // updates that leave the demographics alone (40..60: no card written), withdrawals
        // (60..80) and new patients (500..520).
        let mut changes = Vec::new();
        for i in 20..40 {
            changes.push(Change::Upsert {
                seq: 0,
                nhs: people[i].0,
                version: 2,
                record: Bytes::from(people[i + 320].1.clone()),
            });
            reference.insert(people[i].0, &people[i + 320].2);
        }
        for (nhs, bytes, _) in &people[40..60] {
            let mut summary = cbor::decode_summary(bytes).unwrap();
            summary.assembled_at = UnixMillis(summary.assembled_at.0 + 1);
            changes.push(Change::Upsert {
                seq: 0,
                nhs: *nhs,
                version: 2,
                record: Bytes::from(cbor::encode_summary(&summary).unwrap()),
            });
        }
        for (nhs, _, _) in &people[60..80] {
            changes.push(Change::Withdraw {
                seq: 0,
                nhs: *nhs,
                version: 9,
                reason: WithdrawReason::Deleted,
            });
            reference.remove(nhs);
        }
        for (nhs, bytes, d) in &people[500..520] {
            changes.push(Change::Upsert {
                seq: 0,
                nhs: *nhs,
                version: 1,
                record: Bytes::from(bytes.clone()),
            });
            reference.insert(*nhs, d);
        }
        feed(&cache, &mut seq, changes);
        assert_eq!(
            card_entries(&cache),
            100 + 20 + 20 + 20,
            "changed, withdrawn and new only"
        );
        let held: Vec<_> = people[..520]
            .iter()
            .enumerate()
            .filter(|(i, _)| !(60..80).contains(i))
            .map(|(_, p)| p.0)
            .collect();
        let gone: Vec<_> = people[60..80].iter().map(|p| p.0).collect();
        cards_match_records(&cache, &held, &gone);
        same_answers(&cache, &reference, &people[..520]);

        // A restart finds the changes noted in sled.
        drop(cache);
        let (cache, _) = Cache::open(dir.path(), sealer.clone(), KeyState::Existing).unwrap();
        cards_match_records(&cache, &held, &gone);
        same_answers(&cache, &reference, &people[..520]);

        // Damaged card files are rebuilt from the records at open, and the rebuild folds the
        // changes in (no `d` entries left).
        drop(cache);
        let log = sled_dir.join(crate::cards::CARD_LOG);
        std::fs::write(&log, b"").unwrap();
        let (cache, opened) = Cache::open(dir.path(), sealer.clone(), KeyState::Existing).unwrap();
        assert_eq!(opened, Opened::Existing);
        assert_eq!(card_entries(&cache), 0);
        cards_match_records(&cache, &held, &[]);
        same_answers(&cache, &reference, &people[..520]);

        // A cache from before the cards (the earlier layout marker) gets them at open.
        cache.tree.insert(K_SEARCH, b"pairs-2+file").unwrap();
        cache.flush().unwrap();
        drop(cache);
        crate::cards::remove(&sled_dir);
        let (cache, _) = Cache::open(dir.path(), sealer, KeyState::Existing).unwrap();
        assert_eq!(
            cache.tree.get(K_SEARCH).unwrap().as_deref(),
            Some(SEARCH_LAYOUT_FILE)
        );
        cards_match_records(&cache, &held, &[]);
        same_answers(&cache, &reference, &people[..520]);
    }

    #[test]
    fn search_postings_on_disk_agree_with_the_in_memory_reference() {
        use super::*;
        use crate::search::SearchIndex;
        use edge_proto::sync::{Change, WithdrawReason};
        let people = summaries(600);
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(crate::seal::Sealer::ephemeral().unwrap());
        let (cache, _) = Cache::open(dir.path(), sealer.clone(), KeyState::Fresh).unwrap();
        let mut reference = SearchIndex::new();
        let mut seq = 0;
        for chunk in people.chunks(100) {
            let changes = chunk
                .iter()
                .map(|(nhs, bytes, d)| {
                    reference.insert(*nhs, d);
                    Change::Upsert {
                        seq: 0,
                        nhs: *nhs,
                        version: 1,
                        record: Bytes::from(bytes.clone()),
                    }
                })
                .collect();
            feed(&cache, &mut seq, changes);
        }
        assert!(same_answers(&cache, &reference, &people) > 600);

        // A patient whose record lists a former (superseded) NHS number is found under it.
        let gen =
            kerbside_synth::Generator::new(&kerbside_synth::Config::new(600, 5, 1, None).unwrap());
        let former = NhsNumber::parse(&format!("{:010}", gen.nhs_number(5_000))).unwrap();
        let (nhs, bytes, _) = &people[100];
        let mut summary = cbor::decode_summary(bytes).unwrap();
        summary.patient.former_nhs_numbers = vec![former];
        let bytes = cbor::encode_summary(&summary).unwrap();
        assert_eq!(cache.alias(&former), None);
        feed(
            &cache,
            &mut seq,
            vec![Change::Upsert {
                seq: 0,
                nhs: *nhs,
                version: 2,
                record: Bytes::from(bytes),
            }],
        );
        reference.insert(*nhs, &summary.patient);
        assert_eq!(cache.alias(&former), Some(*nhs));
        assert_eq!(cache.alias(nhs), None);

        // Updates that change a patient's demographics (patient i now reads as patient i+300,
        // twice in one batch), and withdrawals: the old postings go with the old record.
        let mut changes = Vec::new();
        for i in 0..50 {
            let (nhs, _, _) = &people[i];
            for (v, j) in [(2, i + 300), (3, i + 301)] {
                changes.push(Change::Upsert {
                    seq: 0,
                    nhs: *nhs,
                    version: v,
                    record: Bytes::from(people[j].1.clone()),
                });
            }
            reference.insert(*nhs, &people[i + 301].2);
        }
        for (nhs, _, _) in &people[50..80] {
            changes.push(Change::Withdraw {
                seq: 0,
                nhs: *nhs,
                version: 9,
                reason: WithdrawReason::Deleted,
            });
            reference.remove(nhs);
        }
        let applied = feed(&cache, &mut seq, changes);
        assert_eq!(applied.removed.len(), 30);
        assert_eq!(cache.len(), 570);
        same_answers(&cache, &reference, &people);

        // Postings and the count survive a restart, and are rebuilt for a cache without them.
        drop(cache);
        let (cache, _) = Cache::open(dir.path(), sealer.clone(), KeyState::Existing).unwrap();
        assert_eq!(cache.len(), 570);
        same_answers(&cache, &reference, &people);
        let postings = posting_count(&cache);
        assert!(postings >= 570 * 3, "{postings} postings");
        let mut wipe = sled::Batch::default();
        for kv in cache.tree.scan_prefix(T_POSTING) {
            wipe.remove(kv.unwrap().0);
        }
        wipe.remove(K_SEARCH);
        wipe.remove(K_COUNT);
        cache.tree.apply_batch(wipe).unwrap();
        cache.flush().unwrap();
        drop(cache);
        let (cache, opened) = Cache::open(dir.path(), sealer, KeyState::Existing).unwrap();
        assert_eq!(opened, Opened::Existing);
        assert_eq!(cache.len(), 570);
        assert_eq!(posting_count(&cache), postings);
        same_answers(&cache, &reference, &people);

        // Nothing searchable is on disk in clear: no family name of any patient held.
        cache.flush().unwrap();
        drop(cache);
        let mut bytes = Vec::new();
        for e in walkdir(dir.path()) {
            bytes.extend(std::fs::read(e).unwrap());
        }
        for (_, _, d) in &people[80..] {
            if d.family.len() >= 5 {
                assert!(
                    !bytes
                        .windows(d.family.len())
                        .any(|w| w == d.family.as_bytes()),
                    "a family name is on disk in clear"
                );
            }
        }
    }

    fn upserts(
        people: &[(super::NhsNumber, Vec<u8>, edge_proto::model::Demographics)],
        version: u64,
    ) -> Vec<edge_proto::sync::Change> {
        people
            .iter()
            .map(|(nhs, bytes, _)| edge_proto::sync::Change::Upsert {
                seq: 0,
                nhs: *nhs,
                version,
                record: super::Bytes::from(bytes.clone()),
            })
            .collect()
    }

    fn all_read_back(
        cache: &super::Cache,
        people: &[(super::NhsNumber, Vec<u8>, edge_proto::model::Demographics)],
    ) {
        for (nhs, bytes, _) in people {
            let got = cache.get(nhs).unwrap().expect("held");
            assert_eq!(got.record.as_slice(), &bytes[..]);
        }
    }

    #[test]
    fn the_value_log_reclaims_dead_segments_and_a_crash_mid_compaction_loses_nothing() {
        use super::*;
        use edge_proto::sync::{Change, WithdrawReason};
        let people = summaries(400);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sled");
        let sealer = Arc::new(crate::seal::Sealer::ephemeral().unwrap());
        let cache = Cache::try_open_with(&path, sealer.clone(), 64 * 1024).unwrap();
        let mut seq = 0;
        for chunk in people.chunks(50) {
            feed(&cache, &mut seq, upserts(chunk, 1));
        }
        let before: u64 = cache.vlog.segments().iter().map(|s| s.1).sum();
        assert!(
            cache.vlog.segments().len() > 4,
            "{:?}",
            cache.vlog.segments()
        );
        // Withdraw three in four: the segments they filled are compacted away, one per apply.
        let (gone, kept): (Vec<_>, Vec<_>) = people
            .iter()
            .cloned()
            .enumerate()
            .partition(|(i, _)| i % 4 != 0);
        let gone: Vec<_> = gone.into_iter().map(|(_, p)| p).collect();
        let kept: Vec<_> = kept.into_iter().map(|(_, p)| p).collect();
        for chunk in gone.chunks(20) {
            let changes = chunk
                .iter()
                .map(|(nhs, _, _)| Change::Withdraw {
                    seq: 0,
                    nhs: *nhs,
                    version: 9,
                    reason: WithdrawReason::Deleted,
                })
                .collect();
            feed(&cache, &mut seq, changes);
        }
        for _ in 0..20 {
            feed(&cache, &mut seq, Vec::new());
        }
        let after: u64 = cache.vlog.segments().iter().map(|s| s.1).sum();
        assert!(
            after * 2 < before,
            "{after} bytes after compaction, {before} before"
        );
        assert_eq!(cache.len(), kept.len());
        all_read_back(&cache, &kept);
        for (nhs, _, _) in &gone {
            assert!(cache.get(nhs).unwrap().is_none());
        }

        // A crash after the moved values are durable but before the index moved: the index
        // still points at the old segment, which is still there.
        let seg = cache.vlog.segments()[0].0;
        assert!(cache.compact_segment(seg, Stop::AfterValues).unwrap() > 0);
        drop(cache);
        let cache = Cache::try_open_with(&path, sealer.clone(), 64 * 1024).unwrap();
        assert!(cache.vlog.segments().iter().any(|s| s.0 == seg));
        all_read_back(&cache, &kept);
        // A crash after the index moved but before the old segment was deleted: the next open
        // deletes the orphan, and everything still reads.
        assert!(cache.compact_segment(seg, Stop::AfterIndex).unwrap() > 0);
        drop(cache);
        let cache = Cache::try_open_with(&path, sealer, 64 * 1024).unwrap();
        assert!(!cache.vlog.segments().iter().any(|s| s.0 == seg));
        all_read_back(&cache, &kept);
        let q = family_and_birth_date(&kept[3].2);
        let found = cache.search(&q).map_err(|_| "search").unwrap();
        assert!(found.candidates.iter().any(|c| c.nhs == kept[3].0));
    }

    /// One baseline step with these changes (`FinishBaseline` when `finish`).
    fn baseline_changes(
        cache: &super::Cache,
        seq: &mut u64,
        changes: Vec<edge_proto::sync::Change>,
        finish: bool,
    ) -> super::Applied {
        use edge_proto::sync::{Apply, ApplyKind, SyncState};
        *seq += 1;
        let apply = Apply {
            batch_no: *seq,
            kind: if finish {
                ApplyKind::FinishBaseline {
                    epoch: 1,
                    snapshot_seq: 10_000,
                }
            } else {
                ApplyKind::Baseline { epoch: 1 }
            },
            epoch: 1,
            // As the session passes them: computed while verifying the batch. Every read checks
            // a record against its stored digest, so a wrong one here fails the tests.
            record_digests: changes
                .iter()
                .map(|c| match c {
                    edge_proto::sync::Change::Upsert { record, .. } => {
                        Some(super::record_digest(record.as_slice()))
                    }
                    _ => None,
                })
                .collect(),
            changes,
            state: SyncState::default(),
        };
        cache.apply(&apply, super::UnixMillis(1)).unwrap()
    }

    fn withdraws(
        people: &[(super::NhsNumber, Vec<u8>, edge_proto::model::Demographics)],
    ) -> Vec<edge_proto::sync::Change> {
        people
            .iter()
            .map(|(nhs, _, _)| edge_proto::sync::Change::Withdraw {
                seq: 0,
                nhs: *nhs,
                version: 50,
                reason: edge_proto::sync::WithdrawReason::Deleted,
            })
            .collect()
    }

    /// Every patient reads back at its expected version, or is absent, and the count agrees.
    fn holds(
        cache: &super::Cache,
        people: &[(super::NhsNumber, Vec<u8>, edge_proto::model::Demographics)],
        want: &std::collections::HashMap<super::NhsNumber, u64>,
    ) {
        for (nhs, bytes, _) in people {
            let got = cache.get(nhs).unwrap();
            match want.get(nhs) {
                Some(v) => {
                    let got = got.expect("held");
                    assert_eq!(got.version, *v);
                    assert_eq!(got.record.as_slice(), &bytes[..]);
                    assert!(cache.contains(nhs));
                }
                None => {
                    assert!(got.is_none(), "a removed patient reads back");
                    assert!(!cache.contains(nhs));
                }
            }
        }
        assert_eq!(cache.len(), want.len());
        assert_eq!(cache.record_scan().unwrap().count(), want.len());
    }

    /// The record index of a cold fill goes to a sorted file, not sled's tree (issue 17's
    /// memory bound); what changes later goes to sled over it. Updates and removals inside the
    /// fill, a crash mid-fill (runs and blobs merged at open), updates and removals after it,
    /// value-log compaction of records the file points at, restarts, and a second cold fill
    /// after everything was removed all read back exactly; nothing removed comes back.
    #[test]
    fn a_cold_fills_record_index_is_a_sorted_file_that_survives_crashes_changes_and_compaction() {
        use super::*;
        let people = summaries(120);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sled");
        let sealer = Arc::new(crate::seal::Sealer::ephemeral().unwrap());
        let open = || Cache::try_open_with(&path, sealer.clone(), 64 * 1024).unwrap();
        let sled_records = |c: &Cache| c.tree.scan_prefix(T_RECORD.as_bytes()).count();
        let mut want: HashMap<NhsNumber, u64> = HashMap::new();
        let cache = open();
        let mut seq = 0;
        for chunk in people[..60].chunks(10) {
            baseline_changes(&cache, &mut seq, upserts(chunk, 1), false);
        }
        // Changed and withdrawn while the fill runs.
        baseline_changes(&cache, &mut seq, upserts(&people[..10], 2), false);
        baseline_changes(&cache, &mut seq, withdraws(&people[10..13]), false);
        for (nhs, _, _) in &people[..60] {
            want.insert(*nhs, 1);
        }
        for (nhs, _, _) in &people[..10] {
            want.insert(*nhs, 2);
        }
        for (nhs, _, _) in &people[10..13] {
            want.remove(nhs);
        }
        assert_eq!(
            sled_records(&cache),
            0,
            "the fill's entries are not in sled"
        );
        assert!(
            std::fs::read_dir(path.join(FILL_DIR)).unwrap().count() >= 3,
            "the fill wrote runs"
        );
        assert!(cache.tree.scan_prefix(T_FILL).count() > 0, "and blobs");
        for (nhs, bytes, _) in &people[..60] {
            match want.get(nhs) {
                Some(v) => {
                    let got = cache.get(nhs).unwrap().expect("held during the fill");
                    assert_eq!((got.version, got.record.as_slice()), (*v, &bytes[..]));
                }
                None => assert!(cache.get(nhs).unwrap().is_none()),
            }
        }
        assert_eq!(cache.len(), want.len());

        // A crash mid-fill: the next open merges its runs and blobs into the file.
        drop(cache);
        let cache = open();
        assert!(path.join(INDEX_FILE).exists());
        assert!(!path.join(FILL_DIR).exists());
        assert_eq!(cache.tree.scan_prefix(T_FILL).count(), 0);
        holds(&cache, &people, &want);
        // The rest of the baseline (into a cache that is no longer empty: sled), then its end.
        for chunk in people[60..].chunks(20) {
            baseline_changes(&cache, &mut seq, upserts(chunk, 1), false);
        }
        baseline_changes(&cache, &mut seq, Vec::new(), true);
        for (nhs, _, _) in &people[60..] {
            want.insert(*nhs, 1);
        }
        holds(&cache, &people, &want);

        // After the fill: updates and removals go to sled over the file, and survive a restart.
        feed(&cache, &mut seq, upserts(&people[20..30], 5));
        feed(&cache, &mut seq, withdraws(&people[30..35]));
        for (nhs, _, _) in &people[20..30] {
            want.insert(*nhs, 5);
        }
        for (nhs, _, _) in &people[30..35] {
            want.remove(nhs);
        }
        holds(&cache, &people, &want);
        let removal = cache.key(T_RECORD, &people[31].0);
        assert_eq!(
            cache.tree.get(&removal).unwrap().as_deref(),
            Some(&[][..]),
            "a removal hides the file's entry"
        );
        drop(cache);
        let cache = open();
        holds(&cache, &people, &want);

        // Compaction moves values the file points at (the moved entries go to sled, and from
        // there into a new file once enough have gathered: `remerge`).
        let first_segments: Vec<u32> = cache.vlog.segments().iter().map(|s| s.0).collect();
        for round in 0..6u64 {
            feed(&cache, &mut seq, upserts(&people[40..60], 10 + round));
        }
        for _ in 0..20 {
            feed(&cache, &mut seq, Vec::new());
        }
        for (nhs, _, _) in &people[40..60] {
            want.insert(*nhs, 15);
        }
        let now: Vec<u32> = cache.vlog.segments().iter().map(|s| s.0).collect();
        assert!(
            first_segments.iter().any(|s| !now.contains(s)),
            "a segment the fill wrote was compacted away: {first_segments:?} -> {now:?}"
        );
        // sled holds only the changes since the last merge into the file.
        let in_sled = sled_records(&cache);
        assert!(
            in_sled < REMERGE_AT + 20,
            "{in_sled} record entries left in sled"
        );
        holds(&cache, &people, &want);
        drop(cache);
        let cache = open();
        holds(&cache, &people, &want);

        // Everything withdrawn, then a new cold fill of a few: the old file goes first, and a
        // crash mid-way brings none of the old patients back.
        let held: Vec<_> = people
            .iter()
            .filter(|p| want.contains_key(&p.0))
            .cloned()
            .collect();
        feed(&cache, &mut seq, withdraws(&held));
        want.clear();
        holds(&cache, &people, &want);
        baseline_changes(&cache, &mut seq, upserts(&people[100..106], 7), false);
        baseline_changes(&cache, &mut seq, upserts(&people[106..110], 7), false);
        assert_eq!(
            sled_records(&cache),
            0,
            "the old removals went with the old file"
        );
        for (nhs, _, _) in &people[100..110] {
            want.insert(*nhs, 7);
        }
        drop(cache);
        let cache = open();
        holds(&cache, &people, &want);
    }

    /// The runs of a fill that has been merged are never read again, even when their removal
    /// did not reach the disk before a crash: a withdrawal the fill held only in memory (and a
    /// blob) must not be undone by an older run at the next open. Scans during a fill see it.
    #[test]
    fn a_merged_fills_leftover_runs_never_bring_back_a_withdrawn_record() {
        use super::*;
        let people = summaries(12);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache.sled");
        let sealer = Arc::new(crate::seal::Sealer::ephemeral().unwrap());
        let cache = Cache::try_open_with(&path, sealer.clone(), 64 * 1024).unwrap();
        let mut seq = 0;
        for chunk in people.chunks(6) {
            baseline_changes(&cache, &mut seq, upserts(chunk, 1), false);
        }
        // people[0] is in a run; its withdrawal is in the fill's memory and a blob.
        baseline_changes(&cache, &mut seq, withdraws(&people[..1]), false);
        let mut want: std::collections::HashMap<NhsNumber, u64> =
            people[1..].iter().map(|p| (p.0, 1)).collect();
        assert_eq!(
            cache.record_scan().unwrap().count(),
            want.len(),
            "a scan sees the fill"
        );
        let runs = path.join(FILL_DIR);
        let kept = dir.path().join("runs-copy");
        std::fs::create_dir_all(&kept).unwrap();
        let mut n = 0;
        for e in std::fs::read_dir(&runs).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), kept.join(e.file_name())).unwrap();
            n += 1;
        }
        assert!(n >= 2, "the fill wrote runs");
        baseline_changes(&cache, &mut seq, Vec::new(), true);
        holds(&cache, &people, &want);
        drop(cache);
        // As if the runs' removal had not reached the disk.
        std::fs::create_dir_all(&runs).unwrap();
        for e in std::fs::read_dir(&kept).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), runs.join(e.file_name())).unwrap();
        }
        let cache = Cache::try_open_with(&path, sealer.clone(), 64 * 1024).unwrap();
        holds(&cache, &people, &want);
        assert!(!runs.exists(), "leftover runs are removed at open");
        // And a later change still lands over the file.
        feed(&cache, &mut seq, upserts(&people[1..2], 4));
        want.insert(people[1].0, 4);
        drop(cache);
        let cache = Cache::try_open_with(&path, sealer, 64 * 1024).unwrap();
        holds(&cache, &people, &want);
    }

    /// A damaged index file fails the open, so the cache is moved aside and filled again from
    /// the hub rather than served from a file that may point at the wrong record.
    #[test]
    fn a_damaged_record_index_moves_the_cache_aside() {
        use super::*;
        let people = summaries(30);
        let dir = tempfile::tempdir().unwrap();
        let sealer = Arc::new(crate::seal::Sealer::ephemeral().unwrap());
        let (cache, _) =
            Cache::open(dir.path(), sealer.clone(), crate::seal::KeyState::Existing).unwrap();
        let mut seq = 0;
        baseline(&cache, &mut seq, &people, false);
        baseline_changes(&cache, &mut seq, Vec::new(), true);
        all_read_back(&cache, &people);
        drop(cache);
        let file = dir.path().join("cache.sled").join(INDEX_FILE);
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[100] ^= 0x20;
        std::fs::write(&file, &bytes).unwrap();
        let (cache, opened) =
            Cache::open(dir.path(), sealer, crate::seal::KeyState::Existing).unwrap();
        assert!(matches!(opened, Opened::Rebuilt { .. }), "{opened:?}");
        assert_eq!(cache.len(), 0);
    }

    fn walkdir(d: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                out.extend(walkdir(&p));
            } else {
                out.push(p);
            }
        }
        out
    }

    #[test]
    fn demographics_stop_early_and_match_the_whole_decode() {
        let cfg = kerbside_synth::Config::new(200, 5, 1, None).unwrap();
        let gen = kerbside_synth::Generator::new(&cfg);
        for i in 0..200 {
            let mut line = String::new();
            gen.patient(i, &mut line);
            let c = parse_bundle_json(line.trim_end()).unwrap();
            let s = assemble::from_contribution(&c, edge_proto::time::UnixMillis(0));
            let bytes = cbor::encode_summary(&s).unwrap();
            let whole = cbor::decode_summary(&bytes).unwrap();
            assert_eq!(super::demographics(&bytes), Some(whole.patient));
        }
        // Not a summary: no demographics, no panic.
        assert_eq!(super::demographics(&[0xa0]), None);
        assert_eq!(super::demographics(&[0xff, 0x00]), None);
        assert_eq!(super::demographics(b""), None);
    }
}
