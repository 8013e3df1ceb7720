//! The hub's storage: every patient's assembled summary, the change feed, and what the hub
//! knows of each unit. One sled tree; keys are prefixed by kind so every write that belongs
//! together (a summary, its feed entry, the new head) goes in one atomic `sled::Batch`.
//!
//! | prefix | key | value |
//! | --- | --- | --- |
//! | `f` | seq (u64 BE) | [`FeedDisk`]: a version or a withdrawal, with its routing facts |
//! | `m` | NHS digits | [`CurDisk`]: the patient's current seq, version, routing facts, withdrawal |
//! | `b` | NHS digits | the patient's current summary (CBOR) — also kept while withdrawn |
//! | `d` | device id | [`DeviceDisk`]: last seen, cursor, cohort override, audit position |
//! | `a` | NHS digits | a former NHS number's current one (10 digits): superseded and merged records |
//! | `x` | `head` / `oldest` | feed positions (u64 BE) |
//!
//! The store implements [`HubFeed`] for the sans-IO sync sessions; [`MemFeed`] is the in-memory
//! reference implementation of the same contract (edge_proto::sync::memfeed).
//!
//! [`FeedStore`] is the hub's interface to its store, implemented by [`HubStore`] (sled, the
//! default) and by [`crate::pg::PgStore`] (PostgreSQL). Both share the ingest's assembly
//! ([`assemble_chunk`] over a [`ChunkReader`], producing [`ChunkWrites`] that each backend commits
//! atomically with the feed positions it took under its writer lock) and the on-disk values.
//!
//! [`MemFeed`]: edge_proto::sync::MemFeed

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use edge_proto::cbor;
use edge_proto::fhir::ingest::{ingest_bundle_json, IngestOptions, Ingested};
use edge_proto::ids::{CohortSpec, DeviceId};
use edge_proto::model::Summary;
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::{
    Bytes, CohortFilter, CurrentMeta, CurrentRecord, FeedBody, FeedEntry, FeedError, HubFeed,
    RecordMeta, WithdrawReason,
};
use edge_proto::time::UnixMillis;
use serde::{Deserialize, Serialize};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("hub store: {0}")]
    Sled(#[from] sled::Error),
    #[error("hub store holds an undecodable value under {key}: {why}")]
    Corrupt { key: String, why: String },
    #[error("no patient with that NHS number at this hub")]
    UnknownPatient,
    /// The PostgreSQL store failed (the text never holds the database password).
    #[error("hub store (PostgreSQL): {0}")]
    Pg(String),
}

impl From<StoreError> for FeedError {
    fn from(e: StoreError) -> Self {
        FeedError(Box::new(e))
    }
}

/// One feed entry on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FeedDisk {
    pub nhs: NhsNumber,
    pub version: u64,
    pub meta: RecordMeta,
    pub previous: Option<RecordMeta>,
    /// The record bytes of a version (absent for a withdrawal).
    pub record: Option<Bytes>,
    pub withdrawn: Option<WithdrawReason>,
    /// When the entry was written (compaction keeps entries younger than the retention).
    pub at: UnixMillis,
}

/// A patient's current state on disk (small: what a baseline scans).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CurDisk {
    pub seq: u64,
    pub version: u64,
    pub meta: RecordMeta,
    pub withdrawn: Option<WithdrawReason>,
}

/// What the hub remembers about a unit.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DeviceDisk {
    #[serde(default)]
    pub last_seen: Option<UnixMillis>,
    /// The unit's durable cursor, as of its last acknowledgement.
    #[serde(default)]
    pub cursor: Option<u64>,
    /// A cohort set at the hub by an operator, replacing the one in the unit's certificate.
    #[serde(default)]
    pub cohort_override: Option<Vec<String>>,
    /// The highest audit sequence number stored from this unit.
    #[serde(default)]
    pub audit_received_seq: u64,
    /// Records sent to it over all connections.
    #[serde(default)]
    pub records_sent: u64,
    /// The last time its connection was refused, and why.
    #[serde(default)]
    pub last_refusal: Option<String>,
    /// A remote wipe ordered by an operator (stolen or decommissioned unit).
    #[serde(default)]
    pub wipe_requested: Option<UnixMillis>,
    /// When the unit was last sent the wipe order.
    #[serde(default)]
    pub wipe_sent: Option<UnixMillis>,
    /// The certificate this hub last renewed for the unit over the sync: serial (hex), expiry,
    /// and when.
    #[serde(default)]
    pub cert_renewed: Option<(String, UnixMillis, UnixMillis)>,
    /// The health summary from the unit's last hello (software and firmware versions,
    /// supervisor, records, audit backlog), and when it arrived.
    #[serde(default)]
    pub health: Option<(edge_proto::sync::UnitHealth, UnixMillis)>,
    /// The unit's audit journal head as far as the hub knows: the highest sequence in its
    /// journal at its last hello (from a unit too old to report it, the highest stored from it
    /// plus the backlog it reported). The backlog now is this minus
    /// [`Self::audit_received_seq`] (events written since the hello are not counted until the
    /// next one; a connected unit uploads them within seconds).
    #[serde(default)]
    pub audit_head_reported: Option<u64>,
}

/// What an ingest did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub accepted: u64,
    pub rejected: Vec<Rejected>,
    /// What was skipped, unresolved, truncated or redirected, per line (at most
    /// [`MAX_REPORTED_WARNINGS`]; the rest are counted in `warnings_total`).
    pub warnings: Vec<Warning>,
    pub warnings_total: u64,
    /// Clinical items (allergies, medications, conditions…) carried by the accepted bundles.
    #[serde(skip)]
    pub items_accepted: u64,
    /// Patients whose summary changed (a new version each).
    #[serde(skip)]
    pub changed: u64,
    /// The feed head after the ingest.
    #[serde(skip)]
    pub head: u64,
}

/// A bundle that was not applied, with its line number (1-based) and the reason; or, with
/// `entry`, one item of an applied bundle that was rejected alone (its subject was someone else).
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entry: Option<usize>,
    pub error: String,
}

/// Something an applied bundle's line should be looked at for.
#[derive(Debug, Clone, Serialize)]
pub struct Warning {
    pub line: u64,
    pub warning: String,
}

/// The most warnings an ingest report lists.
pub const MAX_REPORTED_WARNINGS: usize = 10_000;

/// Bundles parsed and applied per atomic write.
pub const INGEST_CHUNK: usize = 2_000;

fn fkey(seq: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'f';
    k[1..].copy_from_slice(&seq.to_be_bytes());
    k
}

fn pkey(prefix: u8, nhs: &NhsNumber) -> [u8; 11] {
    let mut k = [0u8; 11];
    k[0] = prefix;
    k[1..].copy_from_slice(nhs.as_digits().as_bytes());
    k
}

fn dkey(id: &DeviceId) -> Vec<u8> {
    let mut k = vec![b'd'];
    k.extend_from_slice(id.as_str().as_bytes());
    k
}

fn akey(nhs: &NhsNumber) -> [u8; 11] {
    pkey(b'a', nhs)
}

const HEAD: &[u8] = b"xhead";
const OLDEST: &[u8] = b"xoldest";

fn u64_of(v: Option<sled::IVec>) -> u64 {
    v.and_then(|b| <[u8; 8]>::try_from(b.as_ref()).ok())
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    key: &[u8],
    v: &[u8],
) -> Result<T, StoreError> {
    cbor::from_slice(v).map_err(|e| StoreError::Corrupt {
        key: String::from_utf8_lossy(&key[..1]).into_owned(),
        why: e.to_string(),
    })
}

pub(crate) fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, StoreError> {
    cbor::to_vec(v).map_err(|e| StoreError::Corrupt {
        key: "(encode)".into(),
        why: e.to_string(),
    })
}

/// The hub's interface to its store: what the sync server, the admin API and the CLI call,
/// whichever backend holds the data (sled: [`HubStore`]; PostgreSQL: [`crate::pg::PgStore`]).
/// Every backend passes the one conformance suite (`hub/tests/hub/store.rs`).
pub trait FeedStore: HubFeed + Send + Sync + std::fmt::Debug {
    /// The highest feed position issued (0 when the feed is empty).
    fn head(&self) -> Result<u64, StoreError>;
    /// When the feed entry at `seq` was written (`None`: no such entry, or compacted away).
    fn written_at(&self, seq: u64) -> Result<Option<UnixMillis>, StoreError>;
    /// Patients with a current, non-withdrawn summary.
    fn patient_count(&self) -> Result<u64, StoreError>;
    /// The current summary of a patient (also while withdrawn), for the hub's own use.
    fn summary(&self, nhs: &NhsNumber) -> Result<Option<Summary>, StoreError>;
    /// The current NHS number a former one redirects to (following merges), if any.
    fn alias(&self, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError>;
    /// Ingest FHIR R4 bundles, `(line number, JSON text)`: see [`HubStore::ingest`]; callers
    /// use `ingest` on `dyn FeedStore`, which takes any iterator. Durable on
    /// return; memory is bounded by one chunk of [`INGEST_CHUNK`] bundles whatever the input.
    fn ingest_from(
        &self,
        lines: &mut dyn Iterator<Item = (u64, &str)>,
        now: UnixMillis,
        threads: usize,
        opts: &IngestOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<IngestReport, StoreError>;
    /// Withdraw a patient from every unit; the new head, or `None` when already withdrawn.
    fn withdraw(
        &self,
        nhs: &NhsNumber,
        reason: WithdrawReason,
        now: UnixMillis,
    ) -> Result<Option<u64>, StoreError>;
    /// Drop a prefix of feed entries older than `retention_ms`; how many were dropped.
    fn compact(&self, now: UnixMillis, retention_ms: i64) -> Result<u64, StoreError>;
    /// A unit's record (default when never seen).
    fn device(&self, id: &DeviceId) -> Result<DeviceDisk, StoreError>;
    /// Every unit the hub has a record of, in id order.
    fn devices(&self) -> Result<Vec<(String, DeviceDisk)>, StoreError>;
    /// Read-modify-write a unit's record atomically; the record as written. Callers use
    /// `update_device` on `dyn FeedStore`, which takes a closure.
    fn update_device_with(
        &self,
        id: &DeviceId,
        f: &mut dyn FnMut(&mut DeviceDisk),
    ) -> Result<DeviceDisk, StoreError>;
    /// Make everything written so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Commit one chunk parsed beforehand ([`ParsedChunk::parse`], which may run on another
    /// thread meanwhile), adding to `report`. Atomic per chunk; durable after [`Self::flush`].
    fn commit_parsed(
        &self,
        chunk: ParsedChunk,
        now: UnixMillis,
        report: &mut IngestReport,
    ) -> Result<(), StoreError>;
    /// How many bundles an offline ingest commits at a time (atomically): [`INGEST_CHUNK`],
    /// unless the backend's memory needs fewer.
    fn ingest_chunk_lines(&self) -> usize {
        INGEST_CHUNK
    }
    /// Call `on_head` with the feed head whenever another process (another hub on the same
    /// database) moves it, and once after each reconnection. The embedded store is one
    /// process's, whose own writers tell the server themselves: nothing to watch.
    fn watch_head(&self, on_head: HeadWatcher) -> Result<(), StoreError> {
        let _ = on_head;
        Ok(())
    }
    /// The cohort override set at the hub for a unit, parsed.
    fn cohort_override(&self, id: &DeviceId) -> Result<Option<Vec<CohortSpec>>, StoreError> {
        Ok(self.device(id)?.cohort_override.map(|specs| {
            specs
                .iter()
                .filter_map(|s| s.parse::<CohortSpec>().ok())
                .collect()
        }))
    }
}

/// [`HubFeed::get`] over a store's own reads (`cur`, `alias` — the whole chain — and `body`,
/// the current summary's bytes), the same for every backend: a former (superseded or merged)
/// NHS number answers its current record.
pub(crate) fn current_record(
    nhs: &NhsNumber,
    cur: impl Fn(&NhsNumber) -> Result<Option<CurDisk>, StoreError>,
    alias: impl FnOnce(&NhsNumber) -> Result<Option<NhsNumber>, StoreError>,
    body: impl FnOnce(&NhsNumber) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Option<CurrentRecord>, StoreError> {
    let mut c = cur(nhs)?;
    let mut nhs = *nhs;
    if c.as_ref()
        .is_none_or(|c| c.withdrawn == Some(WithdrawReason::Merged))
    {
        if let Some(current) = alias(&nhs)? {
            nhs = current;
            c = cur(&nhs)?;
        }
    }
    let Some(c) = c else {
        return Ok(None);
    };
    let body = match c.withdrawn {
        Some(r) => FeedBody::Withdrawn(r),
        None => match body(&nhs)? {
            Some(b) => FeedBody::Record(Bytes::from(b)),
            None => {
                return Err(StoreError::Corrupt {
                    key: "b".into(),
                    why: "current record without a body".into(),
                })
            }
        },
    };
    Ok(Some(CurrentRecord {
        seq: c.seq,
        version: c.version,
        meta: c.meta,
        body,
    }))
}

/// The generic conveniences the hub's callers use (the trait's own methods take trait objects
/// so that it is object-safe).
impl dyn FeedStore + '_ {
    /// [`FeedStore::ingest`] over any iterator of `(line number, JSON text)`.
    pub fn ingest<'a, I>(
        &self,
        lines: I,
        now: UnixMillis,
        threads: usize,
        opts: &IngestOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<IngestReport, StoreError>
    where
        I: IntoIterator<Item = (u64, &'a str)>,
    {
        let mut lines = lines.into_iter();
        self.ingest_from(&mut lines, now, threads, opts, progress)
    }

    /// [`FeedStore::update_device`] with a closure called once.
    pub fn update_device(
        &self,
        id: &DeviceId,
        f: impl FnOnce(&mut DeviceDisk),
    ) -> Result<DeviceDisk, StoreError> {
        let mut f = Some(f);
        self.update_device_with(id, &mut |d| {
            if let Some(f) = f.take() {
                f(d);
            }
        })
    }
}

/// Up to [`INGEST_CHUNK`] bundles parsed into contributions, not yet applied: lets a caller
/// parse the next chunk while the store commits this one ([`FeedStore::commit_parsed`]).
#[derive(Debug)]
pub struct ParsedChunk {
    parsed: Vec<(u64, Parsed)>,
}

impl ParsedChunk {
    /// Parse `(line number, JSON text)` on `threads` threads.
    pub fn parse(
        lines: &[(u64, &str)],
        now: UnixMillis,
        threads: usize,
        opts: &IngestOptions,
    ) -> ParsedChunk {
        let opts = IngestOptions {
            now: Some(opts.now.unwrap_or(now)),
            ..opts.clone()
        };
        ParsedChunk {
            parsed: parse_parallel(lines, threads.max(1), &opts),
        }
    }

    pub fn len(&self) -> usize {
        self.parsed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.parsed.is_empty()
    }

    pub(crate) fn into_parsed(self) -> Vec<(u64, Parsed)> {
        self.parsed
    }
}

/// What [`FeedStore::watch_head`] calls with a new feed head.
pub type HeadWatcher = Box<dyn Fn(u64) + Send + Sync>;

/// What an ingest chunk reads while it holds its backend's feed writer lock.
pub(crate) trait ChunkReader {
    fn cur(&self, nhs: &NhsNumber) -> Result<Option<CurDisk>, StoreError>;
    fn summary(&self, nhs: &NhsNumber) -> Result<Option<Summary>, StoreError>;
    /// One step of the alias table, as stored.
    fn alias_step(&self, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError>;
}

/// What an ingest chunk writes, in one atomic step, with the feed head after it.
#[derive(Debug, Default)]
pub(crate) struct ChunkWrites {
    /// Former → current NHS number.
    pub aliases: Vec<(NhsNumber, NhsNumber)>,
    /// Summaries (CBOR).
    pub bodies: Vec<(NhsNumber, Vec<u8>)>,
    pub curs: Vec<(NhsNumber, CurDisk)>,
    /// New feed entries, positions `head_before + 1 ..= head` in order.
    pub feed: Vec<(u64, FeedDisk)>,
    pub head: u64,
}

/// sled's page cache for a serving hub.
pub const SERVE_CACHE_BYTES: u64 = 256 * 1024 * 1024;

/// sled's page cache for an offline ingest (`edge-hub ingest`): it mostly writes, and its
/// memory must stay under 300 MiB whatever the input's size.
pub const INGEST_CACHE_BYTES: u64 = 8 * 1024 * 1024;

/// The hub's store.
#[derive(Debug)]
pub struct HubStore {
    db: sled::Db,
    tree: sled::Tree,
    /// Serialises writers (sequence numbers are allocated under it).
    write: Mutex<()>,
}

impl HubStore {
    /// Open (or create) the store in `dir`. Fails clearly if another process holds it.
    pub fn open(dir: &Path) -> Result<HubStore, StoreError> {
        HubStore::open_with_cache(dir, SERVE_CACHE_BYTES)
    }

    /// [`HubStore::open`] with sled's page cache at `cache_bytes` (an offline ingest, which
    /// mostly writes, takes [`INGEST_CACHE_BYTES`] so its memory stays bounded).
    pub fn open_with_cache(dir: &Path, cache_bytes: u64) -> Result<HubStore, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Sled(sled::Error::Io(e)))?;
        let db = sled::Config::new()
            .path(dir.join("hub.sled"))
            .cache_capacity(cache_bytes)
            .open()?;
        let tree = db.open_tree("hub")?;
        Ok(HubStore {
            db,
            tree,
            write: Mutex::new(()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.write.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The underlying database (other repositories keep their own trees in it).
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// Make everything written so far durable.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush()?;
        Ok(())
    }

    pub fn head(&self) -> Result<u64, StoreError> {
        Ok(u64_of(self.tree.get(HEAD)?))
    }

    fn oldest(&self) -> Result<u64, StoreError> {
        let o = u64_of(self.tree.get(OLDEST)?);
        Ok(o.max(1))
    }

    /// Patients with a current, non-withdrawn summary.
    pub fn patient_count(&self) -> Result<u64, StoreError> {
        let mut n = 0;
        for kv in self.tree.scan_prefix(b"m") {
            let (k, v) = kv?;
            let c: CurDisk = decode(&k, &v)?;
            if c.withdrawn.is_none() {
                n += 1;
            }
        }
        Ok(n)
    }

    fn cur(&self, nhs: &NhsNumber) -> Result<Option<CurDisk>, StoreError> {
        let k = pkey(b'm', nhs);
        self.tree.get(k)?.map(|v| decode(&k, &v)).transpose()
    }

    /// The current summary of a patient (also while withdrawn), for the hub's own use.
    pub fn summary(&self, nhs: &NhsNumber) -> Result<Option<Summary>, StoreError> {
        let k = pkey(b'b', nhs);
        match self.tree.get(k)? {
            None => Ok(None),
            Some(v) => cbor::decode_summary(&v)
                .map(Some)
                .map_err(|e| StoreError::Corrupt {
                    key: "b".into(),
                    why: e.to_string(),
                }),
        }
    }

    /// The current NHS number a former one redirects to (following merges), if any.
    pub fn alias(&self, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError> {
        follow_aliases(nhs, |at| self.alias_step(at))
    }

    /// One step of the alias table: the number `nhs` redirects to, as stored.
    fn alias_step(&self, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError> {
        self.tree
            .get(akey(nhs))?
            .map(|v| {
                std::str::from_utf8(&v)
                    .ok()
                    .and_then(|d| NhsNumber::parse(d).ok())
                    .ok_or_else(|| StoreError::Corrupt {
                        key: "a".into(),
                        why: "alias is not an NHS number".into(),
                    })
            })
            .transpose()
    }

    /// Ingest FHIR R4 bundles: `lines` are (line number, JSON text). Each bundle applies whole
    /// or not at all (except items about someone else, rejected alone); rejected ones are
    /// reported by line, warnings likewise. Parsing runs on `threads` threads; writes are atomic
    /// per chunk of [`INGEST_CHUNK`] bundles and durable on return.
    pub fn ingest<'a, I>(
        &self,
        lines: I,
        now: UnixMillis,
        threads: usize,
        opts: &IngestOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<IngestReport, StoreError>
    where
        I: IntoIterator<Item = (u64, &'a str)>,
    {
        let mut lines = lines.into_iter();
        let mut report = ingest_lines(
            &mut lines,
            now,
            threads,
            opts,
            progress,
            &mut |parsed, report| self.ingest_chunk(parsed, now, report),
        )?;
        self.flush()?;
        report.head = self.head()?;
        Ok(report)
    }

    fn ingest_chunk(
        &self,
        parsed: Vec<(u64, Parsed)>,
        now: UnixMillis,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        let _w = self.lock();
        let w = assemble_chunk(self, parsed, now, self.head()?, report)?;
        let mut batch = sled::Batch::default();
        for (from, to) in &w.aliases {
            batch.insert(&akey(from)[..], to.as_digits().as_bytes());
        }
        for (nhs, bytes) in w.bodies {
            batch.insert(&pkey(b'b', &nhs)[..], bytes);
        }
        for (nhs, c) in &w.curs {
            batch.insert(&pkey(b'm', nhs)[..], encode(c)?);
        }
        for (seq, e) in &w.feed {
            batch.insert(&fkey(*seq)[..], encode(e)?);
        }
        batch.insert(HEAD, &w.head.to_be_bytes()[..]);
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Withdraw a patient's summary from every unit (objection or deletion). Returns the new
    /// feed head, or `None` when the patient was already withdrawn. Durable on return.
    pub fn withdraw(
        &self,
        nhs: &NhsNumber,
        reason: WithdrawReason,
        now: UnixMillis,
    ) -> Result<Option<u64>, StoreError> {
        let _w = self.lock();
        // A former (merged) number stands for its current record.
        let nhs = &match self.cur(nhs)? {
            Some(c) if c.withdrawn != Some(WithdrawReason::Merged) => *nhs,
            _ => self.alias(nhs)?.unwrap_or(*nhs),
        };
        let cur = self.cur(nhs)?.ok_or(StoreError::UnknownPatient)?;
        if cur.withdrawn.is_some() {
            return Ok(None);
        }
        let head = self.head()? + 1;
        let mut batch = sled::Batch::default();
        let (entry, cur) = withdrawal(nhs, cur, reason, now);
        batch.insert(&fkey(head)[..], encode(&entry)?);
        batch.insert(&pkey(b'm', nhs)[..], encode(&CurDisk { seq: head, ..cur })?);
        batch.insert(HEAD, &head.to_be_bytes()[..]);
        self.tree.apply_batch(batch)?;
        self.flush()?;
        Ok(Some(head))
    }

    /// Drop feed entries older than `retention_ms` (a prefix only; current state is kept).
    /// Units whose cursor falls behind the new horizon are re-baselined when they connect.
    pub fn compact(&self, now: UnixMillis, retention_ms: i64) -> Result<u64, StoreError> {
        let _w = self.lock();
        let cutoff = now.plus_ms(-retention_ms);
        let head = self.head()?;
        let mut oldest = self.oldest()?;
        let mut removed = 0;
        let mut batch = sled::Batch::default();
        for kv in self.tree.range(fkey(oldest)..=fkey(head)) {
            let (k, v) = kv?;
            let e: FeedDisk = decode(&k, &v)?;
            if e.at >= cutoff || removed >= 100_000 {
                break;
            }
            batch.remove(k);
            removed += 1;
            oldest += 1;
        }
        if removed > 0 {
            batch.insert(OLDEST, &oldest.to_be_bytes()[..]);
            self.tree.apply_batch(batch)?;
            self.flush()?;
        }
        Ok(removed)
    }

    /// A unit's record (default when never seen).
    pub fn device(&self, id: &DeviceId) -> Result<DeviceDisk, StoreError> {
        let k = dkey(id);
        Ok(self
            .tree
            .get(&k)?
            .map(|v| decode(&k, &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Every unit the hub has a record of.
    pub fn devices(&self) -> Result<Vec<(String, DeviceDisk)>, StoreError> {
        let mut out = Vec::new();
        for kv in self.tree.scan_prefix(b"d") {
            let (k, v) = kv?;
            out.push((
                String::from_utf8_lossy(&k[1..]).into_owned(),
                decode(&k, &v)?,
            ));
        }
        Ok(out)
    }

    /// Update a unit's record (read-modify-write under the write lock).
    pub fn update_device(
        &self,
        id: &DeviceId,
        f: impl FnOnce(&mut DeviceDisk),
    ) -> Result<DeviceDisk, StoreError> {
        let _w = self.lock();
        let mut d = self.device(id)?;
        f(&mut d);
        self.tree.insert(dkey(id), encode(&d)?)?;
        Ok(d)
    }

    /// The cohort override set at the hub for a unit, parsed.
    pub fn cohort_override(&self, id: &DeviceId) -> Result<Option<Vec<CohortSpec>>, StoreError> {
        let d = self.device(id)?;
        Ok(d.cohort_override.map(|specs| {
            specs
                .iter()
                .filter_map(|s| s.parse::<CohortSpec>().ok())
                .collect()
        }))
    }
}

/// A patient's withdrawal: the feed entry and the new current state (the next version, no
/// record, the routing facts marked withdrawn). The caller sets the state's `seq` to the
/// position it writes the entry at.
pub(crate) fn withdrawal(
    nhs: &NhsNumber,
    cur: CurDisk,
    reason: WithdrawReason,
    now: UnixMillis,
) -> (FeedDisk, CurDisk) {
    let version = cur.version + 1;
    let meta = cur.meta.clone().into_withdrawn();
    let entry = FeedDisk {
        nhs: *nhs,
        version,
        meta: meta.clone(),
        previous: Some(cur.meta),
        record: None,
        withdrawn: Some(reason),
        at: now,
    };
    let c = CurDisk {
        seq: cur.seq,
        version,
        meta,
        withdrawn: Some(reason),
    };
    (entry, c)
}

/// The chunking loop every backend's ingest runs: lines are parsed [`INGEST_CHUNK`] at a time
/// on `threads` threads (outside any lock), each chunk handed to `commit`, progress reported
/// after each. Memory is one chunk's, whatever the input size.
pub(crate) fn ingest_lines<'a>(
    lines: &mut dyn Iterator<Item = (u64, &'a str)>,
    now: UnixMillis,
    threads: usize,
    opts: &IngestOptions,
    progress: &mut dyn FnMut(u64, u64),
    commit: &mut ChunkCommit<'_>,
) -> Result<IngestReport, StoreError> {
    let mut report = IngestReport::default();
    let mut chunk: Vec<(u64, &'a str)> = Vec::with_capacity(INGEST_CHUNK);
    let mut seen = 0u64;
    let opts = IngestOptions {
        now: Some(opts.now.unwrap_or(now)),
        ..opts.clone()
    };
    loop {
        let next = lines.next();
        let done = next.is_none();
        if let Some(item) = next {
            chunk.push(item);
        }
        if chunk.len() == INGEST_CHUNK || (done && !chunk.is_empty()) {
            seen += chunk.len() as u64;
            let parsed = parse_parallel(&chunk, threads.max(1), &opts);
            chunk.clear();
            commit(parsed, &mut report)?;
            progress(seen, report.accepted);
        }
        if done {
            return Ok(report);
        }
    }
}

/// Assemble one parsed chunk against what `reader` holds (the caller holds its feed writer
/// lock): every bundle applies whole or not at all; accepted, rejected and warnings go into
/// `report`; new feed entries take positions `head + 1 ..`.
pub(crate) fn assemble_chunk(
    reader: &dyn ChunkReader,
    parsed: Vec<(u64, Parsed)>,
    now: UnixMillis,
    head: u64,
    report: &mut IngestReport,
) -> Result<ChunkWrites, StoreError> {
    let mut w = Work {
        store: reader,
        slots: BTreeMap::new(),
        aliases: BTreeMap::new(),
        undo_slots: Vec::new(),
        undo_aliases: Vec::new(),
    };
    let warn = |report: &mut IngestReport, line: u64, warning: String| {
        report.warnings_total += 1;
        if report.warnings.len() < MAX_REPORTED_WARNINGS {
            report.warnings.push(Warning { line, warning });
        }
    };
    for (line, r) in parsed {
        let ing = match r {
            Ok(c) => c,
            Err(e) => {
                report.rejected.push(Rejected {
                    line,
                    entry: None,
                    error: e,
                });
                continue;
            }
        };
        let items = ing
            .contributions
            .iter()
            .flat_map(|c| &c.updates)
            .filter(|u| matches!(u, edge_proto::fhir::ingest::Update::Item(_)))
            .count() as u64;
        // Every contribution of the bundle applies, or none does: the slots and aliases it
        // touches are saved as it first touches them (not the whole chunk's, which made an
        // ingest quadratic in the chunk size), and put back if it fails.
        w.begin_bundle();
        let mut notes = Vec::new();
        let mut failed = None;
        for c in ing.contributions {
            if let Err(e) = w.apply(c, now, &mut notes) {
                failed = Some(e);
                break;
            }
        }
        if let Some(e) = failed {
            w.roll_back_bundle();
            match e {
                ApplyError::Store(e) => return Err(e),
                ApplyError::Refused(why) => report.rejected.push(Rejected {
                    line,
                    entry: None,
                    error: why,
                }),
            }
            continue;
        }
        report.accepted += 1;
        report.items_accepted += items;
        for r in ing.rejected_items {
            report.rejected.push(Rejected {
                line,
                entry: Some(r.entry),
                error: r.error,
            });
        }
        for x in ing.warnings.into_iter().chain(notes) {
            warn(report, line, x);
        }
    }
    let mut out = ChunkWrites {
        aliases: w.aliases.into_iter().collect(),
        head,
        ..ChunkWrites::default()
    };
    for (nhs, slot) in w.slots {
        if slot.merged {
            // Retired into another record: withdrawn from every unit, its number redirects.
            let Some(c) = slot.cur else { continue };
            if c.withdrawn.is_some() {
                continue;
            }
            out.head += 1;
            let (entry, c) = withdrawal(&nhs, c, WithdrawReason::Merged, now);
            out.feed.push((out.head, entry));
            out.curs.push((nhs, CurDisk { seq: out.head, ..c }));
            report.changed += 1;
            continue;
        }
        if !slot.changed && slot.ledger {
            if let Some(s) = &slot.summary {
                let bytes = cbor::encode_summary(s).map_err(|e| StoreError::Corrupt {
                    key: "b".into(),
                    why: e.to_string(),
                })?;
                out.bodies.push((nhs, bytes));
            }
            continue;
        }
        let (true, Some(mut s)) = (slot.changed, slot.summary) else {
            continue;
        };
        let cur = slot.cur;
        let version = cur.as_ref().map_or(0, |c| c.version) + 1;
        s.version = version;
        s.assembled_at = now;
        let bytes = cbor::encode_summary(&s).map_err(|e| StoreError::Corrupt {
            key: "b".into(),
            why: e.to_string(),
        })?;
        let meta = RecordMeta::of_summary(&s);
        out.bodies.push((nhs, bytes.clone()));
        report.changed += 1;
        match cur {
            // Withdrawn (objection): the summary is kept current at the hub, but nothing
            // goes into the feed and no unit receives it.
            Some(c) if c.withdrawn.is_some() => {
                out.curs.push((
                    nhs,
                    CurDisk {
                        version,
                        meta: meta.into_withdrawn(),
                        ..c
                    },
                ));
            }
            cur => {
                out.head += 1;
                let entry = FeedDisk {
                    nhs,
                    version,
                    meta: meta.clone(),
                    previous: cur.map(|c| c.meta),
                    record: Some(Bytes::from(bytes)),
                    withdrawn: None,
                    at: now,
                };
                out.feed.push((out.head, entry));
                out.curs.push((
                    nhs,
                    CurDisk {
                        seq: out.head,
                        version,
                        meta,
                        withdrawn: None,
                    },
                ));
            }
        }
    }
    Ok(out)
}

/// A stored feed entry as the sync sessions see it.
pub(crate) fn feed_entry(seq: u64, e: FeedDisk) -> Result<FeedEntry, StoreError> {
    let body = match (e.record, e.withdrawn) {
        (_, Some(r)) => FeedBody::Withdrawn(r),
        (Some(b), None) => FeedBody::Record(b),
        (None, None) => {
            return Err(StoreError::Corrupt {
                key: "f".into(),
                why: "entry with neither record nor withdrawal".into(),
            })
        }
    };
    Ok(FeedEntry {
        seq,
        nhs: e.nhs,
        version: e.version,
        meta: e.meta,
        previous: e.previous,
        body,
    })
}

/// Follow a chain of aliases from `start` (at most 8 steps, stopping at a loop): the number it
/// ends at, or `None` when `start` is not an alias.
pub(crate) fn follow_aliases(
    start: &NhsNumber,
    mut step: impl FnMut(&NhsNumber) -> Result<Option<NhsNumber>, StoreError>,
) -> Result<Option<NhsNumber>, StoreError> {
    let mut found: Option<NhsNumber> = None;
    for _ in 0..8 {
        match step(found.as_ref().unwrap_or(start))? {
            Some(n) if n != *start && Some(n) != found => found = Some(n),
            _ => break,
        }
    }
    Ok(found)
}

pub(crate) type Parsed = Result<Ingested, String>;

/// What a backend does with one parsed chunk (see [`ingest_lines`]).
pub(crate) type ChunkCommit<'c> =
    dyn FnMut(Vec<(u64, Parsed)>, &mut IngestReport) -> Result<(), StoreError> + 'c;

fn parse_parallel(
    chunk: &[(u64, &str)],
    threads: usize,
    opts: &IngestOptions,
) -> Vec<(u64, Parsed)> {
    let parse = |part: &[(u64, &str)]| -> Vec<(u64, Parsed)> {
        part.iter()
            .map(|(line, text)| {
                (
                    *line,
                    ingest_bundle_json(text, opts).map_err(|e| e.to_string()),
                )
            })
            .collect()
    };
    if threads <= 1 || chunk.len() < 64 {
        return parse(chunk);
    }
    let per = chunk.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunk
            .chunks(per)
            .map(|part| scope.spawn(move || parse(part)))
            .collect();
        let mut out = Vec::with_capacity(chunk.len());
        for (h, part) in handles.into_iter().zip(chunk.chunks(per)) {
            match h.join() {
                Ok(v) => out.extend(v),
                // A panic in the mapper would be a bug; refuse that part rather than crash.
                Err(_) => out.extend(
                    part.iter()
                        .map(|(l, _)| (*l, Err("internal error while mapping".to_owned()))),
                ),
            }
        }
        out
    })
}

/// One patient's working copy during an ingest chunk.
#[derive(Clone)]
struct Slot {
    cur: Option<CurDisk>,
    summary: Option<Summary>,
    changed: bool,
    /// Only the summary's ledger changed (a withdrawal of something it does not hold): stored
    /// without a new version or feed entry.
    ledger: bool,
    /// Retired into another record in this chunk: withdraw it.
    merged: bool,
}

enum ApplyError {
    Store(StoreError),
    /// The bundle cannot be applied; the reason (no NHS numbers, no clinical text).
    Refused(String),
}

impl From<StoreError> for ApplyError {
    fn from(e: StoreError) -> Self {
        ApplyError::Store(e)
    }
}

/// The patients a chunk touches, and the aliases it adds, before they are written.
struct Work<'s> {
    store: &'s dyn ChunkReader,
    slots: BTreeMap<NhsNumber, Slot>,
    aliases: BTreeMap<NhsNumber, NhsNumber>,
    /// What the bundle being applied has changed, as it was before (undo log).
    undo_slots: Vec<(NhsNumber, Option<Slot>)>,
    undo_aliases: Vec<(NhsNumber, Option<NhsNumber>)>,
}

impl Work<'_> {
    /// A bundle starts: forget the previous bundle's undo log.
    fn begin_bundle(&mut self) {
        self.undo_slots.clear();
        self.undo_aliases.clear();
    }

    /// The bundle failed: put back every slot and alias it changed, newest change first.
    fn roll_back_bundle(&mut self) {
        while let Some((nhs, before)) = self.undo_slots.pop() {
            match before {
                Some(s) => {
                    self.slots.insert(nhs, s);
                }
                None => {
                    self.slots.remove(&nhs);
                }
            }
        }
        while let Some((nhs, before)) = self.undo_aliases.pop() {
            match before {
                Some(a) => {
                    self.aliases.insert(nhs, a);
                }
                None => {
                    self.aliases.remove(&nhs);
                }
            }
        }
    }

    fn slot(&mut self, nhs: NhsNumber) -> Result<&mut Slot, StoreError> {
        if !self.undo_slots.iter().any(|(n, _)| *n == nhs) {
            let before = self.slots.get(&nhs).cloned();
            self.undo_slots.push((nhs, before));
        }
        Ok(match self.slots.entry(nhs) {
            std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::btree_map::Entry::Vacant(v) => v.insert(Slot {
                cur: self.store.cur(&nhs)?,
                summary: self.store.summary(&nhs)?,
                changed: false,
                ledger: false,
                merged: false,
            }),
        })
    }

    /// The number a former one redirects to, counting this chunk's own aliases.
    fn alias(&self, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError> {
        follow_aliases(nhs, |at| match self.aliases.get(at) {
            Some(n) => Ok(Some(*n)),
            None => self.store.alias_step(at),
        })
    }

    /// Apply one contribution: redirect a former number, merge retired records, assemble.
    fn apply(
        &mut self,
        mut c: edge_proto::fhir::ingest::Contribution,
        now: UnixMillis,
        notes: &mut Vec<String>,
    ) -> Result<(), ApplyError> {
        if let Some(current) = self.alias(&c.nhs_number)? {
            // The source still uses a number that was merged: file under the current record,
            // without letting its (older) demographics replace the current ones.
            notes.push(
                "the bundle's NHS number was superseded at the hub (a merged record): filed under the current number".into(),
            );
            c.patient.former_nhs_numbers.push(c.nhs_number);
            c.nhs_number = current;
            c.patient.last_updated = UnixMillis(i64::MIN);
        }
        let current = c.nhs_number;
        for f in c.patient.former_nhs_numbers.clone() {
            if f == current {
                continue;
            }
            if self.alias(&f)? == Some(current) {
                continue;
            }
            if self.alias(&current)? == Some(f) {
                return Err(ApplyError::Refused(
                    "identity conflict: the hub holds this record as merged into one of the numbers this bundle calls former; not filed (check the numbers with PDS)".into(),
                ));
            }
            let before = self.aliases.insert(f, current);
            self.undo_aliases.push((f, before));
            // A live record under the former number is merged into the current one.
            let retired = {
                let slot = self.slot(f)?;
                let live = slot.cur.as_ref().is_some_and(|c| c.withdrawn.is_none());
                if live && !slot.merged {
                    slot.merged = true;
                    slot.summary.clone()
                } else {
                    None
                }
            };
            if let Some(r) = retired {
                notes.push("a record under a former NHS number was merged into the current one and withdrawn from every unit".into());
                let slot = self.slot(current)?;
                let target = slot.summary.get_or_insert_with(|| {
                    let mut s = Summary::new(current, r.patient.clone());
                    s.patient.former_nhs_numbers.clear();
                    s.patient.last_updated = UnixMillis(i64::MIN);
                    s.assembled_at = now;
                    s
                });
                if edge_proto::assemble::merge_retired(target, &r) {
                    slot.changed = true;
                }
            }
        }
        let slot = self.slot(current)?;
        if slot.merged {
            return Err(ApplyError::Refused(
                "identity conflict: this record was merged into another in the same ingest; not filed".into(),
            ));
        }
        match &mut slot.summary {
            None => {
                slot.summary = Some(edge_proto::assemble::from_contribution(&c, now));
                slot.changed = true;
            }
            Some(s) => {
                let mut next = s.clone();
                match edge_proto::assemble::apply(&mut next, &c) {
                    Ok(true) => {
                        *s = next;
                        slot.changed = true;
                    }
                    Ok(false) if next.ledger != s.ledger => {
                        *s = next;
                        slot.ledger = true;
                    }
                    Ok(false) => {}
                    Err(e) => return Err(ApplyError::Refused(e.to_string())),
                }
            }
        }
        Ok(())
    }
}

impl HubFeed for HubStore {
    fn head_seq(&self) -> Result<u64, FeedError> {
        Ok(self.head()?)
    }

    fn oldest_retained_seq(&self) -> Result<u64, FeedError> {
        let head = self.head()?;
        Ok(self.oldest()?.min(head + 1))
    }

    fn changes_after(&self, after_seq: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedError> {
        let mut out = Vec::new();
        let start = after_seq.saturating_add(1);
        for kv in self.tree.range(fkey(start)..=fkey(u64::MAX)).take(limit) {
            let (k, v) = kv.map_err(StoreError::from)?;
            let e: FeedDisk = decode(&k, &v)?;
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&k[1..9]);
            out.push(feed_entry(u64::from_be_bytes(seq), e)?);
        }
        Ok(out)
    }

    fn current_metas(
        &self,
        filter: &CohortFilter<'_>,
        after: Option<&NhsNumber>,
        limit: usize,
    ) -> Result<Vec<CurrentMeta>, FeedError> {
        let iter = match after {
            Some(a) => {
                let mut start = pkey(b'm', a).to_vec();
                start.push(0);
                self.tree.range(start..b"n".to_vec())
            }
            None => self.tree.range(b"m".to_vec()..b"n".to_vec()),
        };
        let mut out = Vec::new();
        for kv in iter {
            let (k, v) = kv.map_err(StoreError::from)?;
            let c: CurDisk = decode(&k, &v)?;
            if c.withdrawn.is_none() && filter.matches(&c.meta) {
                out.push(CurrentMeta {
                    seq: c.seq,
                    version: c.version,
                    meta: c.meta,
                });
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// A former (superseded or merged) NHS number answers its current record.
    fn get(&self, nhs: &NhsNumber) -> Result<Option<CurrentRecord>, FeedError> {
        Ok(current_record(
            nhs,
            |n| self.cur(n),
            |n| self.alias(n),
            |n| Ok(self.tree.get(pkey(b'b', n))?.map(|b| b.to_vec())),
        )?)
    }
}

impl ChunkReader for HubStore {
    fn cur(&self, nhs: &NhsNumber) -> Result<Option<CurDisk>, StoreError> {
        HubStore::cur(self, nhs)
    }

    fn summary(&self, nhs: &NhsNumber) -> Result<Option<Summary>, StoreError> {
        HubStore::summary(self, nhs)
    }

    fn alias_step(&self, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError> {
        HubStore::alias_step(self, nhs)
    }
}

/// [`FeedStore::ingest_chunk_lines`] for the embedded store: sled rewrites a whole node for
/// every insert and frees the old copies only when the batch that replaced them ends, so a
/// batch's memory grows with its size (heaptrack: ~140 MB of node copies at 2,000 bundles).
pub const SLED_INGEST_CHUNK: usize = 250;

impl FeedStore for HubStore {
    fn ingest_chunk_lines(&self) -> usize {
        SLED_INGEST_CHUNK
    }
    fn head(&self) -> Result<u64, StoreError> {
        HubStore::head(self)
    }

    fn written_at(&self, seq: u64) -> Result<Option<UnixMillis>, StoreError> {
        self.tree
            .get(fkey(seq))?
            .map(|v| decode::<FeedDisk>(b"f", &v).map(|e| e.at))
            .transpose()
    }

    fn patient_count(&self) -> Result<u64, StoreError> {
        HubStore::patient_count(self)
    }

    fn summary(&self, nhs: &NhsNumber) -> Result<Option<Summary>, StoreError> {
        HubStore::summary(self, nhs)
    }

    fn alias(&self, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError> {
        HubStore::alias(self, nhs)
    }

    fn ingest_from(
        &self,
        lines: &mut dyn Iterator<Item = (u64, &str)>,
        now: UnixMillis,
        threads: usize,
        opts: &IngestOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<IngestReport, StoreError> {
        HubStore::ingest(self, lines, now, threads, opts, progress)
    }

    fn withdraw(
        &self,
        nhs: &NhsNumber,
        reason: WithdrawReason,
        now: UnixMillis,
    ) -> Result<Option<u64>, StoreError> {
        HubStore::withdraw(self, nhs, reason, now)
    }

    fn compact(&self, now: UnixMillis, retention_ms: i64) -> Result<u64, StoreError> {
        HubStore::compact(self, now, retention_ms)
    }

    fn device(&self, id: &DeviceId) -> Result<DeviceDisk, StoreError> {
        HubStore::device(self, id)
    }

    fn devices(&self) -> Result<Vec<(String, DeviceDisk)>, StoreError> {
        HubStore::devices(self)
    }

    fn update_device_with(
        &self,
        id: &DeviceId,
        f: &mut dyn FnMut(&mut DeviceDisk),
    ) -> Result<DeviceDisk, StoreError> {
        HubStore::update_device(self, id, f)
    }

    fn flush(&self) -> Result<(), StoreError> {
        HubStore::flush(self)
    }

    fn commit_parsed(
        &self,
        chunk: ParsedChunk,
        now: UnixMillis,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        self.ingest_chunk(chunk.parsed, now, report)?;
        report.head = self.head()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    /// A failed bundle puts back exactly what it changed, and nothing an earlier bundle of the
    /// same chunk did.
    #[test]
    fn a_failed_bundle_rolls_back_only_its_own_changes() {
        let dir = tempfile::tempdir().unwrap();
        let store = HubStore::open(dir.path()).unwrap();
        let a = NhsNumber::from_nine_digits(999_000_001).unwrap();
        let b = NhsNumber::from_nine_digits(999_000_002).unwrap();
        let c = NhsNumber::from_nine_digits(999_000_003).unwrap();
        let mut w = Work {
            store: &store,
            slots: BTreeMap::new(),
            aliases: BTreeMap::new(),
            undo_slots: Vec::new(),
            undo_aliases: Vec::new(),
        };
        // Bundle 1 succeeds: touches a, adds an alias c → a.
        w.begin_bundle();
        w.slot(a).unwrap().changed = true;
        let before = w.aliases.insert(c, a);
        w.undo_aliases.push((c, before));
        // Bundle 2 touches a again and b, and re-points c, then fails.
        w.begin_bundle();
        w.slot(a).unwrap().ledger = true;
        w.slot(b).unwrap().changed = true;
        w.slot(a).unwrap().merged = true;
        let before = w.aliases.insert(c, b);
        w.undo_aliases.push((c, before));
        w.roll_back_bundle();
        assert!(!w.slots.contains_key(&b), "b was new in the failed bundle");
        let sa = &w.slots[&a];
        assert!(
            sa.changed && !sa.ledger && !sa.merged,
            "a as bundle 1 left it"
        );
        assert_eq!(w.aliases.get(&c), Some(&a));
    }
}
