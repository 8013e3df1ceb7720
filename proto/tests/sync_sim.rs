//! The sync protocol under test: a seeded, deterministic simulation of a hub and several units,
//! plus scenario and bad-input tests of the two session state machines.
//!
//! The simulation runs the real `HubSession` / `UnitSession` over an in-memory network with a
//! virtual clock that jumps from event to event. Faults are modelled as QUIC would show them:
//! within a connection each stream delivers in order and exactly once, so faults act on whole
//! connections (dropped at a random point with everything queued lost, then re-established),
//! on units (partitions lasting a while, restarts that lose the session and any batch not yet
//! applied but keep the durable cache and cursor), on the hub (restarts that keep the feed)
//! and on bytes (a corrupted batch, which must be refused whole). Meanwhile the hub ingests new
//! versions, objections and deletions, patients move between postcode districts and practices,
//! compaction advances the feed's horizon, units' cohorts change and units fetch on demand.
//!
//! After every step: the cursor never regresses or skips, every record applied is byte-equal
//! to a version the hub signed, a record never goes back to an older version. After the run,
//! once partitions heal and everything quiesces: each unit's cache equals the hub's current
//! view of its cohort (same NHS numbers, versions and bytes), so no withdrawn record survives;
//! no keep ever mismatched; what a drop made the hub re-send is bounded by its window.
//!
//! Default: 5,000 seeds per scenario (10,000 per run, ≈ 1 min in release). `SIM_SEEDS=<n>` runs more or fewer seeds; `SIM_SEED=<n>` replays one (add `SIM_TRACE=1` for a trace).
//! A failing seed is printed with the command that replays it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test harness helpers outside #[test] fns

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use edge_proto::audit::Purpose;
use edge_proto::cbor;
use edge_proto::ids::{CohortSpec, DeviceId, OdsCode, SourceId};
use edge_proto::model::{
    Allergy, Concept, Cpr, DecisionRecord, DecisionState, Demographics, Provenance, Resuscitation,
    Section, Summary,
};
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::cohort::{in_cohort, same_cohort, RecordMeta};
use edge_proto::sync::frame::{decode_body, FrameDecoder, FrameError, MAX_FRAME_BYTES};
use edge_proto::sync::sign::sign_batch;
use edge_proto::sync::wire::{BaselineKey, BaselineProgress, Hello, StreamKind};
use edge_proto::sync::{
    apply_to, encode_frame, Apply, ApplyKind, Batch, BatchKind, Bytes, Change, FeedBody,
    FetchOutcome, FetchResult, HubConfig, HubError, HubFeed, HubSession, MemFeed, MemStore,
    ProtocolError, RebaselineReason, RefusalCode, SyncMode, SyncState, ToHub, ToUnit, UnitConfig,
    UnitEvent, UnitProfile, UnitSession, Welcome, WithdrawReason, PROTOCOL_VERSION,
};
use edge_proto::sync::{BearerToken, FetchRefusal};
use edge_proto::time::UnixMillis;

/// The shift token the simulated units fetch with (the session checks only that one is present;
/// verification is the hub driver's).
fn tok() -> BearerToken {
    BearerToken("sim-token".into())
}
use ring::signature::{Ed25519KeyPair, KeyPair};

// ---------------------------------------------------------------------------------------------
// Shared fixtures

const T0: i64 = 1_750_000_000_000;

fn hub_key() -> Arc<Ed25519KeyPair> {
    Arc::new(Ed25519KeyPair::from_seed_unchecked(&[42u8; 32]).expect("seed"))
}

fn other_key() -> Ed25519KeyPair {
    Ed25519KeyPair::from_seed_unchecked(&[7u8; 32]).expect("seed")
}

fn nhs(i: u32) -> NhsNumber {
    (0..)
        .filter_map(|k| NhsNumber::from_nine_digits(900_000_000 + i * 97 + k))
        .next()
        .expect("a valid number")
}

fn device(i: usize) -> DeviceId {
    DeviceId::parse(&format!("LAS-AMB-{i:04}")).expect("device id")
}

fn cohort(s: &str) -> Vec<CohortSpec> {
    s.split(';')
        .filter(|x| !x.is_empty())
        .map(|x| CohortSpec::parse(x).expect("cohort"))
        .collect()
}

const DISTRICTS: [&str; 4] = ["SE1 7EH", "SE5 9RS", "E14 5AB", "N1 9GU"];
const PRACTICES: [&str; 3] = ["F84001", "F84002", "Y01234"];
const COHORTS: [&str; 7] = [
    "postcode:SE1,SE5",
    "flagged",
    "practice:F84001",
    "all",
    "postcode:E14;flagged",
    "postcode:N1",
    "practice:F84002,Y01234;postcode:SE1",
];

fn provenance(ods: &str) -> Provenance {
    Provenance {
        source_ods: SourceId::parse(ods).expect("ods"),
        source_name: None,
        system: None,
        record_id: "sim-1".into(),
        resource_id: None,
        record_version: None,
        last_updated: UnixMillis(T0),
        caveats: Vec::new(),
        restricted: false,
    }
}

/// A patient as the hub's sources describe them.
#[derive(Debug, Clone)]
struct Patient {
    nhs: NhsNumber,
    version: u64,
    district: usize,
    practice: usize,
    flagged: bool,
    allergy: bool,
    /// Present (not withdrawn) at the hub.
    present: bool,
}

impl Patient {
    fn new(i: u32) -> Self {
        Patient {
            nhs: nhs(i),
            version: 0,
            district: (i as usize) % DISTRICTS.len(),
            practice: (i as usize / 2) % PRACTICES.len(),
            flagged: matches!(i % 3, 0),
            allergy: matches!(i % 2, 0),
            present: false,
        }
    }

    fn summary(&self, now: i64) -> Summary {
        let mut s = Summary::new(
            self.nhs,
            Demographics {
                family: "SIMULATED".into(),
                given: vec!["Pat".into()],
                postcode: Some(DISTRICTS[self.district].into()),
                gp_practice: Some(OdsCode::parse(PRACTICES[self.practice]).expect("ods")),
                ..Demographics::default()
            },
        );
        if self.allergy {
            s.allergies = Section::with_entries(vec![Allergy {
                concept: Concept {
                    coding: None,
                    text: Some(format!("Penicillin (v{})", self.version)),
                },
                clinical_status: None,
                verification_status: None,
                category: None,
                criticality: None,
                reactions: vec![],
                onset: None,
                recorded: None,
                provenance: provenance(PRACTICES[self.practice]),
            }]);
        }
        if self.flagged {
            s.resuscitation = Section::with_entries(vec![Resuscitation {
                decision: Concept {
                    coding: None,
                    text: Some("DNACPR".into()),
                },
                cpr: Cpr::NotForCpr,
                form_cpr: None,
                state: DecisionState::Current,
                record: DecisionRecord::Consent,
                replaces: Vec::new(),
                status: None,
                decided: None,
                review: None,
                decision_maker: None,
                provenance: provenance("RRU"),
            }]);
        }
        s.version = self.version;
        s.assembled_at = UnixMillis(now);
        s
    }
}

/// Put a new version of a patient into the feed; returns the bytes signed for it.
fn ingest(feed: &mut MemFeed, p: &mut Patient, now: i64) -> Bytes {
    p.version += 1;
    p.present = true;
    let s = p.summary(now);
    let bytes = Bytes::from(cbor::encode_summary(&s).expect("encode"));
    feed.upsert(bytes.clone(), RecordMeta::of_summary(&s), p.version)
        .expect("upsert");
    bytes
}

/// The hub's current view of a cohort: NHS number → (version, bytes).
fn hub_view(feed: &MemFeed, specs: &[CohortSpec]) -> BTreeMap<NhsNumber, (u64, Bytes)> {
    feed.current()
        .filter(|c| in_cohort(specs, &c.meta))
        .filter_map(|c| match &c.body {
            FeedBody::Record(b) => Some((c.meta.nhs, (c.version, b.clone()))),
            FeedBody::Withdrawn(_) => None,
        })
        .collect()
}

fn cache_view(store: &MemStore) -> BTreeMap<NhsNumber, (u64, Bytes)> {
    store
        .records
        .iter()
        .map(|(n, r)| (*n, (r.version, r.record.clone())))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The simulation

/// SplitMix64: small, fast, good enough to drive a simulation, and the same everywhere.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn index(&mut self, len: usize) -> usize {
        self.below(len as u64) as usize
    }
}

/// The shape of a run.
#[derive(Debug, Clone)]
struct SimConfig {
    units: usize,
    patients: u32,
    work_ms: i64,
    op_gap_ms: (i64, i64),
    /// Relative weights of the operations drawn during the work phase.
    w_ingest: u64,
    w_objection: u64,
    w_delete: u64,
    w_compact: u64,
    w_cohort: u64,
    w_fetch: u64,
    w_drop: u64,
    w_partition: u64,
    w_unit_restart: u64,
    w_hub_restart: u64,
    w_corrupt: u64,
    partition_ms: (i64, i64),
    /// Feed entries kept behind the head when compacting.
    compact_retain: (i64, i64),
    max_steps: u64,
}

impl SimConfig {
    fn mixed() -> Self {
        SimConfig {
            units: 3,
            patients: 16,
            work_ms: 8_000,
            op_gap_ms: (10, 250),
            w_ingest: 40,
            w_objection: 4,
            w_delete: 2,
            w_compact: 4,
            w_cohort: 3,
            w_fetch: 6,
            w_drop: 6,
            w_partition: 3,
            w_unit_restart: 3,
            w_hub_restart: 1,
            w_corrupt: 2,
            partition_ms: (200, 5_000),
            compact_retain: (5, 60),
            max_steps: 200_000,
        }
    }

    /// Long partitions and aggressive compaction: units come back behind the horizon and are
    /// re-baselined; cohort churn makes many of those baselines cohort deltas.
    fn partitions() -> Self {
        SimConfig {
            w_compact: 10,
            w_cohort: 6,
            w_partition: 8,
            w_drop: 4,
            partition_ms: (1_000, 9_000),
            compact_retain: (0, 10),
            ..Self::mixed()
        }
    }
}

/// Counters across runs.
#[derive(Debug, Default, Clone)]
struct SimStats {
    steps: u64,
    batches_applied: u64,
    records_applied: u64,
    keeps: u64,
    baselines: BTreeMap<&'static str, u64>,
    connections: u64,
    drops: u64,
    corrupt_refused: u64,
    resent_records: u64,
    fetches_found: u64,
    fetches_other: u64,
}

impl SimStats {
    fn add(&mut self, o: &SimStats) {
        self.steps += o.steps;
        self.batches_applied += o.batches_applied;
        self.records_applied += o.records_applied;
        self.keeps += o.keeps;
        for (k, v) in &o.baselines {
            *self.baselines.entry(k).or_default() += v;
        }
        self.connections += o.connections;
        self.drops += o.drops;
        self.corrupt_refused += o.corrupt_refused;
        self.resent_records += o.resent_records;
        self.fetches_found += o.fetches_found;
        self.fetches_other += o.fetches_other;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    /// Deliver the next message of a connection's queue `q` (0/1 to the hub, 2/3 to the unit;
    /// even: pull stream, odd: fetch stream).
    Deliver {
        conn: u64,
        q: usize,
    },
    ApplyNext {
        unit: usize,
        gen: u64,
    },
    Connect {
        unit: usize,
        gen: u64,
    },
    UnitTimer {
        unit: usize,
        gen: u64,
    },
    Work,
    Heal,
}

/// Upserts received in one baseline epoch, by (pass, nhs, version).
type RxBaseline = Option<(u64, BTreeSet<(u8, NhsNumber, u64)>)>;

#[derive(Debug)]
struct Conn {
    unit: usize,
    hub: HubSession,
    queues: [VecDeque<Vec<u8>>; 4],
    last_at: [i64; 4],
    decoders: [FrameDecoder; 4],
    corrupted: bool,
    /// Re-send accounting: what the unit had received before this connection.
    rx_feed_before: u64,
    rx_baseline_before: RxBaseline,
    resent: u64,
}

#[derive(Debug)]
struct SimUnit {
    id: DeviceId,
    store: MemStore,
    session: Option<UnitSession>,
    /// Bumped by restarts: events of an earlier life are ignored.
    gen: u64,
    conn: Option<u64>,
    pending: VecDeque<Apply>,
    applying: bool,
    partitioned_until: i64,
    connect_pending: bool,
    attempts: u32,
    caught_up: bool,
    /// Highest feed sequence number received in any feed batch.
    rx_feed_max: u64,
    /// Upserts received in the current baseline epoch, by (pass, nhs, version).
    rx_baseline: RxBaseline,
    fetches: BTreeMap<u64, NhsNumber>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    cfg: SimConfig,
    hub_cfg: HubConfig,
    /// Apply the batches a lost connection had delivered (allowed by the contract) or drop them.
    apply_after_drop: bool,
    /// How far the hub's clock is ahead of the units'.
    hub_skew_ms: i64,
    now: i64,
    counter: u64,
    heap: BinaryHeap<Reverse<(i64, u64, Ev)>>,
    key: Arc<Ed25519KeyPair>,
    public_key: Vec<u8>,
    feed: MemFeed,
    patients: Vec<Patient>,
    /// Every version the hub ever signed: (nhs, version) → bytes.
    history: BTreeMap<(NhsNumber, u64), Bytes>,
    registry: Vec<Vec<CohortSpec>>,
    hub_down_until: i64,
    units: Vec<SimUnit>,
    conns: BTreeMap<u64, Conn>,
    next_conn: u64,
    work_end: i64,
    healed: bool,
    trace: bool,
    stats: SimStats,
    violation: Option<String>,
}

type SimResult<T = ()> = Result<T, String>;

impl Sim {
    fn new(seed: u64, cfg: SimConfig, trace: bool) -> Self {
        let mut rng = Rng(seed ^ 0x5EED_0FC0_FFEE);
        let hub_cfg = HubConfig {
            window_batches: rng.range(1, 3) as usize,
            batch_records_max: rng.range(1, 8) as usize,
            batch_changes_max: rng.range(2, 16) as usize,
            batch_bytes_max: if rng.chance(20) { 600 } else { 1 << 20 },
            scan_entries_max: rng.range(2, 32) as usize,
            live_idle_advance_seqs: rng.range(1, 32) as u64,
            fetch_queue_max: 32,
            skip_memory_max: if rng.chance(30) { 0 } else { 1_000 },
        };
        let apply_after_drop = rng.chance(50);
        let hub_skew_ms = rng.range(-5_000, 5_000);
        let key = hub_key();
        let public_key = key.public_key().as_ref().to_vec();
        let patients = (0..cfg.patients).map(Patient::new).collect();
        let registry = (0..cfg.units)
            .map(|i| cohort(COHORTS[(i + seed as usize) % COHORTS.len()]))
            .collect();
        let units = (0..cfg.units)
            .map(|i| SimUnit {
                id: device(i),
                store: MemStore::default(),
                session: None,
                gen: 0,
                conn: None,
                pending: VecDeque::new(),
                applying: false,
                partitioned_until: 0,
                connect_pending: false,
                attempts: 0,
                caught_up: false,
                rx_feed_max: 0,
                rx_baseline: None,
                fetches: BTreeMap::new(),
            })
            .collect();
        let work_end = T0 + cfg.work_ms;
        Sim {
            seed,
            rng,
            cfg,
            hub_cfg,
            apply_after_drop,
            hub_skew_ms,
            now: T0,
            counter: 0,
            heap: BinaryHeap::new(),
            key,
            public_key,
            feed: MemFeed::new(),
            patients,
            history: BTreeMap::new(),
            registry,
            hub_down_until: 0,
            units,
            conns: BTreeMap::new(),
            next_conn: 1,
            work_end,
            healed: false,
            trace,
            stats: SimStats::default(),
            violation: None,
        }
    }

    fn log(&self, msg: impl FnOnce() -> String) {
        if self.trace {
            eprintln!("[{:>6}ms] {}", self.now - T0, msg());
        }
    }

    fn at(&mut self, t: i64, ev: Ev) {
        self.counter += 1;
        self.heap.push(Reverse((t, self.counter, ev)));
    }

    fn run(mut self) -> SimResult<SimStats> {
        self.log(|| {
            format!(
                "seed {}: hub {:?}, apply after drop {}, cohorts {:?}",
                self.seed, self.hub_cfg, self.apply_after_drop, self.registry
            )
        });
        // Some patients exist before any unit connects; the rest arrive during the run.
        for i in 0..self.patients.len() {
            if i % 3 != 2 {
                self.ingest_patient(i);
            }
        }
        for u in 0..self.units.len() {
            let t = self.now + self.rng.range(0, 300);
            self.units[u].connect_pending = true;
            self.at(t, Ev::Connect { unit: u, gen: 0 });
        }
        self.at(self.now + 1, Ev::Work);
        self.at(self.work_end, Ev::Heal);
        while let Some(Reverse((t, _, ev))) = self.heap.pop() {
            self.stats.steps += 1;
            if self.stats.steps > self.cfg.max_steps {
                return Err(format!(
                    "no quiescence after {} steps (livelock?)",
                    self.cfg.max_steps
                ));
            }
            self.now = self.now.max(t);
            self.step(ev)?;
            if let Some(v) = self.violation.take() {
                return Err(v);
            }
        }
        self.check_final()?;
        Ok(self.stats)
    }

    fn step(&mut self, ev: Ev) -> SimResult {
        match ev {
            Ev::Deliver { conn, q } => self.deliver(conn, q),
            Ev::ApplyNext { unit, gen } => self.apply_next(unit, gen),
            Ev::Connect { unit, gen } => self.connect(unit, gen),
            Ev::UnitTimer { unit, gen } => {
                if self.units[unit].gen == gen {
                    let now = UnixMillis(self.now);
                    if let Some(s) = self.units[unit].session.as_mut() {
                        s.handle_timeout(now);
                    }
                    self.flush_unit(unit)?;
                }
                Ok(())
            }
            Ev::Work => {
                if self.now < self.work_end {
                    self.work()?;
                    let (lo, hi) = self.cfg.op_gap_ms;
                    let t = self.now + self.rng.range(lo, hi);
                    self.at(t, Ev::Work);
                }
                Ok(())
            }
            Ev::Heal => {
                self.healed = true;
                self.hub_down_until = 0;
                self.log(|| "heal: partitions end, faults stop".into());
                for u in 0..self.units.len() {
                    self.units[u].partitioned_until = 0;
                    self.schedule_connect(u, 0);
                }
                Ok(())
            }
        }
    }

    // --- workload and faults ------------------------------------------------------------------

    fn ingest_patient(&mut self, i: usize) {
        let now = self.now;
        let bytes = ingest(&mut self.feed, &mut self.patients[i], now);
        let p = &self.patients[i];
        self.history.insert((p.nhs, p.version), bytes);
    }

    fn notify_all(&mut self) -> SimResult {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        for id in ids {
            let now = UnixMillis(self.now + self.hub_skew_ms);
            if let Some(c) = self.conns.get_mut(&id) {
                c.hub
                    .notify_new_changes(now, &self.feed)
                    .map_err(|e| format!("hub: {e}"))?;
            }
            self.flush_hub(id);
        }
        Ok(())
    }

    fn work(&mut self) -> SimResult {
        let c = &self.cfg;
        let weights = [
            c.w_ingest,
            c.w_objection,
            c.w_delete,
            c.w_compact,
            c.w_cohort,
            c.w_fetch,
            c.w_drop,
            c.w_partition,
            c.w_unit_restart,
            c.w_hub_restart,
            c.w_corrupt,
        ];
        let mut r = self.rng.below(weights.iter().sum());
        let mut op = 0;
        while r >= weights[op] {
            r -= weights[op];
            op += 1;
        }
        let n = self.patients.len();
        match op {
            0 => {
                let i = self.rng.index(n);
                let p = &mut self.patients[i];
                if !p.present && p.version > 0 && self.rng.chance(70) {
                    return Ok(()); // withdrawn patients come back only sometimes
                }
                match self.rng.below(6) {
                    0 => p.district = self.rng.index(DISTRICTS.len()),
                    1 => p.practice = self.rng.index(PRACTICES.len()),
                    2 => p.flagged = !p.flagged,
                    3 => p.allergy = !p.allergy,
                    _ => {}
                }
                self.ingest_patient(i);
                let (nhs, v) = (self.patients[i].nhs, self.patients[i].version);
                self.log(|| format!("ingest {nhs:?} v{v}"));
                self.notify_all()?;
            }
            1 | 2 => {
                let i = self.rng.index(n);
                if self.patients[i].present {
                    let reason = if op == 1 {
                        WithdrawReason::Objection
                    } else {
                        WithdrawReason::Deleted
                    };
                    let p = &mut self.patients[i];
                    p.version += 1;
                    p.present = false;
                    self.feed
                        .withdraw(&p.nhs, p.version, reason)
                        .map_err(|e| e.to_string())?;
                    let (nhs, v) = (p.nhs, p.version);
                    self.log(|| format!("withdraw {nhs:?} v{v} {reason:?}"));
                    self.notify_all()?;
                }
            }
            3 => {
                let (lo, hi) = self.cfg.compact_retain;
                let head = self.feed.head_seq().map_err(|e| e.to_string())? as i64;
                let retain = self.rng.range(lo, hi);
                let horizon = (head - retain + 1).max(1) as u64;
                self.feed.compact_to(horizon);
                self.log(|| format!("compact to {horizon}"));
                self.notify_all()?;
            }
            4 => {
                let u = self.rng.index(self.units.len());
                let new = cohort(COHORTS[self.rng.index(COHORTS.len())]);
                self.log(|| format!("unit {u} cohort → {new:?}"));
                self.registry[u] = new.clone();
                if let Some(id) = self.units[u].conn {
                    if self.rng.chance(60) {
                        let now = UnixMillis(self.now + self.hub_skew_ms);
                        if let Some(c) = self.conns.get_mut(&id) {
                            c.hub
                                .set_cohort(now, &new, &self.feed)
                                .map_err(|e| format!("hub: {e}"))?;
                        }
                        self.flush_hub(id);
                    } else {
                        self.drop_conn(id, "cohort changed");
                    }
                }
            }
            5 => {
                let u = self.rng.index(self.units.len());
                let target = self.patients[self.rng.index(n)].nhs;
                let now = UnixMillis(self.now);
                if let Some(s) = self.units[u].session.as_mut() {
                    let id = s.fetch(now, target, tok(), Purpose::Treat);
                    self.units[u].fetches.insert(id, target);
                    self.flush_unit(u)?;
                }
            }
            6 => {
                if let Some(&id) = self
                    .conns
                    .keys()
                    .nth(self.rng.index(self.conns.len().max(1)))
                {
                    self.drop_conn(id, "link dropped");
                }
            }
            7 => {
                let u = self.rng.index(self.units.len());
                let (lo, hi) = self.cfg.partition_ms;
                let until = self.now + self.rng.range(lo, hi);
                self.units[u].partitioned_until = until;
                self.log(|| format!("unit {u} partitioned for {}ms", until - self.now));
                if let Some(id) = self.units[u].conn {
                    self.drop_conn(id, "partition");
                }
                self.schedule_connect(u, until - self.now);
            }
            8 => {
                let u = self.rng.index(self.units.len());
                self.restart_unit(u);
            }
            9 => {
                self.log(|| "hub restarts".into());
                let ids: Vec<u64> = self.conns.keys().copied().collect();
                for id in ids {
                    self.drop_conn(id, "hub restart");
                }
                self.hub_down_until = self.now + self.rng.range(100, 1_500);
            }
            _ => self.corrupt_one(),
        }
        Ok(())
    }

    /// Flip one byte in a batch frame queued to a unit (past the length prefix).
    fn corrupt_one(&mut self) {
        let ids: Vec<u64> = self.conns.keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let id = ids[self.rng.index(ids.len())];
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let q = &mut c.queues[2];
        if q.is_empty() {
            return;
        }
        let m = self.rng.index(q.len());
        let frame = &mut q[m];
        // Only batches: they are what the signature protects (TLS protects the rest).
        if !matches!(decode_body::<ToUnit>(&frame[4..]), Ok(ToUnit::Batch(_))) {
            return;
        }
        let pos = 4 + self.rng.index(frame.len() - 4);
        frame[pos] ^= 1 << self.rng.below(8);
        c.corrupted = true;
        let unit = c.unit;
        self.log(|| format!("corrupt a frame to unit {unit}"));
    }

    fn restart_unit(&mut self, u: usize) {
        self.log(|| format!("unit {u} restarts"));
        if let Some(id) = self.units[u].conn {
            self.drop_conn(id, "unit restart");
        }
        let unit = &mut self.units[u];
        unit.gen += 1;
        unit.session = None;
        unit.pending.clear();
        unit.applying = false;
        unit.fetches.clear();
        unit.connect_pending = false;
        let d = self.rng.range(50, 1_000);
        self.schedule_connect(u, d);
    }

    // --- connections --------------------------------------------------------------------------

    fn schedule_connect(&mut self, u: usize, delay: i64) {
        if self.units[u].connect_pending || self.units[u].conn.is_some() {
            return;
        }
        self.units[u].connect_pending = true;
        let gen = self.units[u].gen;
        self.at(self.now + delay.max(1), Ev::Connect { unit: u, gen });
    }

    fn connect(&mut self, u: usize, gen: u64) -> SimResult {
        if self.units[u].gen != gen {
            return Ok(());
        }
        self.units[u].connect_pending = false;
        if self.units[u].conn.is_some() {
            return Ok(());
        }
        let blocked = self.units[u].partitioned_until > self.now || self.hub_down_until > self.now;
        if blocked || !self.units[u].pending.is_empty() {
            // Back off (capped, jittered); the driver finishes earlier Applies first.
            self.units[u].attempts += 1;
            let cap = 100 * i64::from(self.units[u].attempts.min(10));
            let d = self.rng.range(20, 20 + cap);
            self.schedule_connect(u, d);
            return Ok(());
        }
        self.units[u].attempts = 0;
        let id = self.next_conn;
        self.next_conn += 1;
        self.stats.connections += 1;
        let unit = &mut self.units[u];
        let session = UnitSession::new(
            unit.id.clone(),
            unit.store.state.clone(),
            &self.public_key,
            UnitConfig {
                fetch_budget_ms: 400,
                fetches_max: 4,
            },
        );
        unit.session = Some(session);
        unit.conn = Some(id);
        unit.caught_up = false;
        let profile = UnitProfile {
            device_id: unit.id.clone(),
            cohort: self.registry[u].clone(),
        };
        let conn = Conn {
            unit: u,
            hub: HubSession::new(profile, self.key.clone(), self.hub_cfg.clone()),
            queues: Default::default(),
            last_at: [self.now; 4],
            decoders: Default::default(),
            corrupted: false,
            rx_feed_before: unit.rx_feed_max,
            rx_baseline_before: unit.rx_baseline.clone(),
            resent: 0,
        };
        self.conns.insert(id, conn);
        let state = self.units[u].store.state.clone();
        self.log(|| {
            format!(
                "unit {u} connects (conn {id}) cursor {} epoch {} baseline {:?}",
                state.cursor,
                state.epoch,
                state.baseline.as_ref().map(|b| (b.epoch, b.resume_after))
            )
        });
        self.flush_unit(u)
    }

    fn drop_conn(&mut self, id: u64, why: &str) {
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        self.check_resend(&c);
        self.stats.drops += 1;
        let u = c.unit;
        self.log(|| format!("conn {id} of unit {u} dropped: {why}"));
        let unit = &mut self.units[u];
        unit.conn = None;
        if let Some(mut s) = unit.session.take() {
            s.connection_lost();
            while let Some(ev) = s.poll_event() {
                match ev {
                    UnitEvent::Apply(a) if self.apply_after_drop => unit.pending.push_back(a),
                    UnitEvent::Fetched { request_id, .. } => {
                        unit.fetches.remove(&request_id);
                        self.stats.fetches_other += 1;
                    }
                    _ => {}
                }
            }
        }
        if !self.apply_after_drop {
            unit.pending.clear();
            unit.applying = false;
            unit.gen += 1; // invalidates scheduled ApplyNext events
        } else if !unit.pending.is_empty() && !unit.applying {
            unit.applying = true;
            let gen = unit.gen;
            let t = self.now + 1;
            self.at(t, Ev::ApplyNext { unit: u, gen });
        }
        self.units[u].connect_pending = false;
        let d = self.rng.range(20, 400);
        self.schedule_connect(u, d);
    }

    fn enqueue(&mut self, id: u64, q: usize, frame: Vec<u8>) {
        let latency = self.rng.range(1, 60);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let t = c.last_at[q].max(self.now + latency);
        c.last_at[q] = t;
        c.queues[q].push_back(frame);
        self.at(t, Ev::Deliver { conn: id, q });
    }

    fn flush_hub(&mut self, id: u64) {
        let mut out = Vec::new();
        if let Some(c) = self.conns.get_mut(&id) {
            while let Some(m) = c.hub.poll_transmit() {
                out.push(m);
            }
        }
        for m in out {
            let q = if m.stream() == StreamKind::Fetch {
                3
            } else {
                2
            };
            let frame = encode_frame(&m).expect("hub messages encode");
            self.enqueue(id, q, frame);
        }
    }

    fn flush_unit(&mut self, u: usize) -> SimResult {
        let mut out = Vec::new();
        let mut events = Vec::new();
        let mut timeout = None;
        if let Some(s) = self.units[u].session.as_mut() {
            while let Some(m) = s.poll_transmit() {
                out.push(m);
            }
            while let Some(e) = s.poll_event() {
                events.push(e);
            }
            timeout = s.poll_timeout();
        }
        if let Some(id) = self.units[u].conn {
            for m in out {
                let q = if m.stream() == StreamKind::Fetch {
                    1
                } else {
                    0
                };
                let frame = encode_frame(&m).expect("unit messages encode");
                self.enqueue(id, q, frame);
            }
        }
        for e in events {
            self.on_unit_event(u, e)?;
        }
        if let Some(t) = timeout {
            let gen = self.units[u].gen;
            self.at(t.0.max(self.now), Ev::UnitTimer { unit: u, gen });
        }
        Ok(())
    }

    fn on_unit_event(&mut self, u: usize, e: UnitEvent) -> SimResult {
        match e {
            UnitEvent::Apply(a) => {
                let unit = &mut self.units[u];
                unit.pending.push_back(a);
                if !unit.applying {
                    unit.applying = true;
                    let gen = unit.gen;
                    let t = self.now + self.rng.range(0, 15);
                    self.at(t, Ev::ApplyNext { unit: u, gen });
                }
            }
            UnitEvent::BeginRebaseline { epoch, reason } => {
                let name = match reason {
                    RebaselineReason::Cold => "cold",
                    RebaselineReason::Horizon => "horizon",
                    RebaselineReason::CohortChanged => "cohort",
                    RebaselineReason::CursorAhead => "cursor-ahead",
                    RebaselineReason::Resume => "resume",
                    RebaselineReason::Other => "other",
                };
                *self.stats.baselines.entry(name).or_default() += 1;
                self.units[u].caught_up = false;
                self.log(|| format!("unit {u} baseline {epoch} ({name})"));
            }
            UnitEvent::HubTime { offset_ms, .. } => {
                // The hub's clock runs `hub_skew_ms` ahead; the welcome spent up to 60 ms in flight.
                if !(self.hub_skew_ms - 60..=self.hub_skew_ms).contains(&offset_ms) {
                    return Err(format!(
                        "hub time offset {offset_ms}, clock skew {}",
                        self.hub_skew_ms
                    ));
                }
            }
            UnitEvent::CaughtUp { cursor } => {
                self.units[u].caught_up = true;
                self.log(|| format!("unit {u} caught up at {cursor}"));
            }
            UnitEvent::FetchRefused { reason, .. } => {
                return Err(format!("the hub refused a fetch with a token: {reason:?}"));
            }
            UnitEvent::DenyList { .. }
            | UnitEvent::Certificate { .. }
            | UnitEvent::RenewalRefused { .. }
            | UnitEvent::Prefetched { .. } => {}
            UnitEvent::Fetched {
                request_id,
                nhs,
                result,
            } => {
                let asked = self.units[u].fetches.remove(&request_id);
                if asked.is_some_and(|a| a != nhs) {
                    return Err("fetch answered for another patient".into());
                }
                match result {
                    FetchResult::Found { version, record } => {
                        if self.history.get(&(nhs, version)) != Some(&record) {
                            return Err(format!(
                                "fetched {nhs:?} v{version} is not what the hub signed"
                            ));
                        }
                        self.stats.fetches_found += 1;
                    }
                    _ => self.stats.fetches_other += 1,
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, id: u64, q: usize) -> SimResult {
        let Some(c) = self.conns.get_mut(&id) else {
            return Ok(());
        };
        let Some(frame) = c.queues[q].pop_front() else {
            return Err("delivery with nothing queued".into());
        };
        // Push in random pieces: the decoder must reassemble any chunking.
        let cut = self.rng.index(frame.len() + 1);
        let dec = &mut c.decoders[q];
        let mut r = dec
            .push(&frame[..cut])
            .and_then(|()| dec.push(&frame[cut..]));
        let corrupted = c.corrupted;
        let u = c.unit;
        let mut msgs_hub = Vec::new();
        let mut msgs_unit = Vec::new();
        while r.is_ok() {
            if q < 2 {
                match dec.next_message::<ToHub>() {
                    Ok(Some(m)) => msgs_hub.push(m),
                    Ok(None) => break,
                    Err(e) => r = Err(e),
                }
            } else {
                match dec.next_message::<ToUnit>() {
                    Ok(Some(m)) => msgs_unit.push(m),
                    Ok(None) => break,
                    Err(e) => r = Err(e),
                }
            }
        }
        if let Err(e) = r {
            if corrupted {
                self.stats.corrupt_refused += 1;
                self.drop_conn(id, "undecodable frame");
                return Ok(());
            }
            return Err(format!("frame error on a clean connection: {e}"));
        }
        for m in msgs_hub {
            let now = UnixMillis(self.now + self.hub_skew_ms);
            let Some(c) = self.conns.get_mut(&id) else {
                return Ok(());
            };
            c.hub
                .handle_message(now, m, &self.feed)
                .map_err(|e: HubError| format!("hub refused a correct unit: {e}"))?;
            self.flush_hub(id);
        }
        for m in msgs_unit {
            if self.units[u].conn != Some(id) {
                return Ok(());
            }
            self.account_resend(id, u, &m);
            let now = UnixMillis(self.now);
            let r = match self.units[u].session.as_mut() {
                Some(s) => s.handle_message(now, m),
                None => return Ok(()),
            };
            if let Err(e) = r {
                let corrupt_kind = matches!(
                    e,
                    ProtocolError::BadSignature { .. }
                        | ProtocolError::BatchNumber { .. }
                        | ProtocolError::InvalidBatch(_)
                        | ProtocolError::OutOfOrder { .. }
                        | ProtocolError::BaselineOutOfOrder
                        | ProtocolError::WrongEpoch { .. }
                );
                if corrupted && corrupt_kind {
                    self.stats.corrupt_refused += 1;
                    self.flush_unit(u)?;
                    self.drop_conn(id, "unit refused a batch");
                    return Ok(());
                }
                return Err(format!("unit {u} failed on a clean connection: {e}"));
            }
            self.flush_unit(u)?;
        }
        Ok(())
    }

    /// Count upserts the unit had already received on an earlier connection.
    fn account_resend(&mut self, id: u64, u: usize, m: &ToUnit) {
        let ToUnit::Batch(b) = m else { return };
        if self.trace {
            let ups: Vec<_> = b
                .changes
                .iter()
                .filter(|c| matches!(c, Change::Upsert { .. }))
                .map(|c| (c.nhs().as_u64() % 100_000, c.version()))
                .collect();
            let keeps = b.changes.len() - ups.len();
            eprintln!(
                "[{:>6}ms]   unit {u} receives batch {} {:?} upserts {ups:?} +{keeps} others",
                self.now - T0,
                b.batch_no,
                b.kind
            );
        }
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let unit = &mut self.units[u];
        match &b.kind {
            BatchKind::Feed { last_seq, .. } => {
                for ch in &b.changes {
                    if matches!(ch, Change::Upsert { .. }) && ch.seq() <= c.rx_feed_before {
                        c.resent += 1;
                    }
                }
                unit.rx_feed_max = unit.rx_feed_max.max(*last_seq);
            }
            BatchKind::Baseline { epoch, through, .. } => {
                let pass = through.pass;
                if unit.rx_baseline.as_ref().is_none_or(|(e, _)| e != epoch) {
                    unit.rx_baseline = Some((*epoch, BTreeSet::new()));
                }
                for ch in &b.changes {
                    if let Change::Upsert { nhs, version, .. } = ch {
                        let before = c.rx_baseline_before.as_ref();
                        if before.is_some_and(|(e, set)| {
                            e == epoch && set.contains(&(pass, *nhs, *version))
                        }) {
                            c.resent += 1;
                        }
                        if let Some((_, set)) = unit.rx_baseline.as_mut() {
                            set.insert((pass, *nhs, *version));
                        }
                    }
                }
            }
            BatchKind::BaselineDone { .. } => {}
        }
    }

    /// What a drop may cost: at most the window's worth of batches is re-sent.
    fn check_resend(&mut self, c: &Conn) {
        let bound = (self.hub_cfg.window_batches * self.hub_cfg.batch_records_max) as u64;
        self.stats.resent_records += c.resent;
        if c.resent > bound && self.violation.is_none() {
            self.violation = Some(format!(
                "unit {}: {} records re-sent on one connection, over window × batch = {bound}",
                c.unit, c.resent
            ));
        }
    }

    fn apply_next(&mut self, u: usize, gen: u64) -> SimResult {
        if self.units[u].gen != gen {
            return Ok(());
        }
        let Some(a) = self.units[u].pending.pop_front() else {
            self.units[u].applying = false;
            return Ok(());
        };
        let before = self.units[u].store.clone();
        // Step invariants: the cursor never regresses and never skips.
        match a.kind {
            ApplyKind::Feed {
                first_seq,
                last_seq,
            } => {
                if first_seq != before.state.cursor + 1 || a.state.cursor != last_seq {
                    return Err(format!(
                        "unit {u}: feed batch {first_seq}..={last_seq} applied at cursor {}",
                        before.state.cursor
                    ));
                }
            }
            ApplyKind::Baseline { epoch } => {
                let expected = before
                    .state
                    .baseline
                    .as_ref()
                    .filter(|b| b.epoch == epoch)
                    .and_then(|b| b.resume_after);
                let fresh = before
                    .state
                    .baseline
                    .as_ref()
                    .is_none_or(|b| b.epoch != epoch);
                let after = a.state.baseline.as_ref().and_then(|b| b.resume_after);
                if !fresh && after <= expected {
                    return Err(format!("unit {u}: baseline position went back"));
                }
                if a.state.cursor != before.state.cursor {
                    return Err(format!("unit {u}: cursor moved during a baseline"));
                }
            }
            ApplyKind::FinishBaseline { .. } => {}
        }
        if a.state.cursor < before.state.cursor {
            return Err(format!(
                "unit {u}: cursor regressed {} → {}",
                before.state.cursor, a.state.cursor
            ));
        }
        // Apply in a "transaction": to a copy, swapped in whole.
        let mut next = before.clone();
        let report = apply_to(&mut next, &a).unwrap_or_else(|e| match e {});
        if report.keep_mismatches > 0 {
            return Err(format!(
                "unit {u}: {} keeps did not match the cache",
                report.keep_mismatches
            ));
        }
        for ch in &a.changes {
            if let Change::Upsert {
                nhs,
                version,
                record,
                ..
            } = ch
            {
                if self.history.get(&(*nhs, *version)) != Some(record) {
                    return Err(format!(
                        "unit {u}: applied {nhs:?} v{version} not signed by the hub"
                    ));
                }
            }
            let n = ch.nhs();
            if let (Some(b), Some(x)) = (before.records.get(n), next.records.get(n)) {
                if x.version < b.version {
                    return Err(format!(
                        "unit {u}: {n:?} went back from v{} to v{}",
                        b.version, x.version
                    ));
                }
            }
        }
        self.stats.batches_applied += 1;
        self.stats.records_applied += report.written;
        self.stats.keeps += report.kept;
        self.units[u].store = next;
        let still_connected = self.units[u].conn.is_some();
        if let (true, Some(s)) = (still_connected, self.units[u].session.as_mut()) {
            s.batch_applied(a.batch_no, &report)
                .map_err(|e| format!("unit {u}: {e}"))?;
            self.flush_unit(u)?;
        }
        if self.units[u].pending.is_empty() {
            self.units[u].applying = false;
        } else {
            let t = self.now + self.rng.range(0, 15);
            self.at(t, Ev::ApplyNext { unit: u, gen });
        }
        Ok(())
    }

    fn check_final(&mut self) -> SimResult {
        let conns = std::mem::take(&mut self.conns);
        for c in conns.values() {
            self.check_resend(c);
        }
        self.conns = conns;
        if let Some(v) = self.violation.take() {
            return Err(v);
        }
        let head = self.feed.head_seq().map_err(|e| e.to_string())?;
        for (u, unit) in self.units.iter().enumerate() {
            let Some(s) = unit.session.as_ref() else {
                return Err(format!("unit {u} not connected at the end"));
            };
            if s.is_ended() || !unit.caught_up || !unit.pending.is_empty() {
                return Err(format!(
                    "unit {u} did not settle (caught up {}, pending {})",
                    unit.caught_up,
                    unit.pending.len()
                ));
            }
            let state = &unit.store.state;
            if state.baseline.is_some() || !same_cohort(&state.cohort, &self.registry[u]) {
                return Err(format!(
                    "unit {u}: sync state {state:?} does not match its cohort"
                ));
            }
            if state.cursor > head {
                return Err(format!(
                    "unit {u}: cursor {} beyond the head {head}",
                    state.cursor
                ));
            }
            let want = hub_view(&self.feed, &self.registry[u]);
            let have = cache_view(&unit.store);
            if want != have {
                let missing: Vec<_> = want.keys().filter(|k| !have.contains_key(k)).collect();
                let extra: Vec<_> = have.keys().filter(|k| !want.contains_key(k)).collect();
                let stale: Vec<_> = want
                    .iter()
                    .filter(|(k, v)| have.get(k).is_some_and(|h| h != *v))
                    .map(|(k, _)| k)
                    .collect();
                return Err(format!(
                    "unit {u} ({:?}): cache differs from the hub's view: missing {missing:?}, extra {extra:?}, stale {stale:?}",
                    self.registry[u]
                ));
            }
            for (n, r) in &unit.store.records {
                if !self
                    .feed
                    .get(n)
                    .ok()
                    .flatten()
                    .is_some_and(|c| matches!(c.body, FeedBody::Record(_)))
                {
                    return Err(format!(
                        "unit {u}: withdrawn record {n:?} survived (v{})",
                        r.version
                    ));
                }
            }
        }
        Ok(())
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.trim().parse().ok())
}

/// Run a simulation over many seeds (or the one in `SIM_SEED`); fail with the seed.
fn simulate(test_name: &str, base: u64, default_seeds: u64, cfg: SimConfig) {
    let trace = std::env::var("SIM_TRACE").is_ok_and(|v| v == "1");
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(s) => vec![s],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(default_seeds))
            .map(|i| base + i)
            .collect(),
    };
    let started = Instant::now();
    let mut total = SimStats::default();
    for &seed in &seeds {
        let cfg = cfg.clone();
        let outcome = catch_unwind(AssertUnwindSafe(|| Sim::new(seed, cfg, trace).run()));
        let err = match outcome {
            Ok(Ok(stats)) => {
                total.add(&stats);
                continue;
            }
            Ok(Err(e)) => e,
            Err(p) => p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "panic".into()),
        };
        panic!(
            "simulation failed at seed {seed}: {err}\nreplay: SIM_SEED={seed} SIM_TRACE=1 cargo test -p edge-proto --test sync_sim {test_name} -- --nocapture"
        );
    }
    eprintln!(
        "{test_name}: {} seeds in {:.1}s: {} steps, {} connections ({} dropped), {} batches applied, {} records written, {} kept, baselines {:?}, {} corrupt frames refused, {} records re-sent after drops, fetches {} found / {} other",
        seeds.len(),
        started.elapsed().as_secs_f64(),
        total.steps,
        total.connections,
        total.drops,
        total.batches_applied,
        total.records_applied,
        total.keeps,
        total.baselines,
        total.corrupt_refused,
        total.resent_records,
        total.fetches_found,
        total.fetches_other,
    );
}

#[test]
fn sim_mixed_faults() {
    simulate("sim_mixed_faults", 0, 5_000, SimConfig::mixed());
}

#[test]
fn sim_long_partitions_and_compaction() {
    simulate(
        "sim_long_partitions_and_compaction",
        1_000_000,
        5_000,
        SimConfig::partitions(),
    );
}

#[test]
fn sim_replay_is_deterministic() {
    let a = Sim::new(4242, SimConfig::mixed(), false)
        .run()
        .expect("seed 4242");
    let b = Sim::new(4242, SimConfig::mixed(), false)
        .run()
        .expect("seed 4242");
    assert_eq!(format!("{a:?}"), format!("{b:?}"));
}

// ---------------------------------------------------------------------------------------------
// Scenarios without faults: one hub session and one unit session passing messages directly.

/// A hub and a unit, connected, with no faults: the `check` helper for scenario tests.
struct Pair {
    feed: MemFeed,
    patients: Vec<Patient>,
    key: Arc<Ed25519KeyPair>,
    store: MemStore,
    cohort: Vec<CohortSpec>,
    cfg: HubConfig,
    hub: HubSession,
    unit: UnitSession,
    now: i64,
    events: Vec<UnitEvent>,
}

impl Pair {
    fn new(patients: u32, cohort_spec: &str, cfg: HubConfig) -> Self {
        let mut feed = MemFeed::new();
        let mut ps: Vec<Patient> = (0..patients).map(Patient::new).collect();
        for p in &mut ps {
            ingest(&mut feed, p, T0);
        }
        let key = hub_key();
        let cohort = cohort(cohort_spec);
        let store = MemStore::default();
        let (hub, unit) = Self::sessions(&key, &cohort, &cfg, &store);
        Pair {
            feed,
            patients: ps,
            key,
            store,
            cohort,
            cfg,
            hub,
            unit,
            now: T0,
            events: Vec::new(),
        }
    }

    fn sessions(
        key: &Arc<Ed25519KeyPair>,
        cohort: &[CohortSpec],
        cfg: &HubConfig,
        store: &MemStore,
    ) -> (HubSession, UnitSession) {
        let hub = HubSession::new(
            UnitProfile {
                device_id: device(1),
                cohort: cohort.to_vec(),
            },
            key.clone(),
            cfg.clone(),
        );
        let unit = UnitSession::new(
            device(1),
            store.state.clone(),
            key.public_key().as_ref(),
            UnitConfig::default(),
        );
        (hub, unit)
    }

    /// A new connection from the unit's durable state.
    fn reconnect(&mut self) {
        (self.hub, self.unit) = Self::sessions(&self.key, &self.cohort, &self.cfg, &self.store);
        self.events.clear();
    }

    /// Pass messages (through real frames) and apply batches until nothing moves, or until
    /// `max_applies` batches were applied (then whatever is in flight stays in flight).
    fn run_limited(&mut self, max_applies: usize) -> usize {
        let mut applied = 0;
        loop {
            let mut moved = false;
            while let Some(m) = self.unit.poll_transmit() {
                let m: ToHub =
                    decode_body(&encode_frame(&m).expect("encode")[4..]).expect("decode");
                self.hub
                    .handle_message(UnixMillis(self.now), m, &self.feed)
                    .expect("hub");
                moved = true;
            }
            while let Some(m) = self.hub.poll_transmit() {
                let m: ToUnit =
                    decode_body(&encode_frame(&m).expect("encode")[4..]).expect("decode");
                self.unit
                    .handle_message(UnixMillis(self.now), m)
                    .expect("unit");
                moved = true;
            }
            while let Some(e) = self.unit.poll_event() {
                moved = true;
                if let UnitEvent::Apply(a) = &e {
                    if applied == max_applies {
                        return applied;
                    }
                    let report = apply_to(&mut self.store, a).unwrap_or_else(|e| match e {});
                    self.unit
                        .batch_applied(a.batch_no, &report)
                        .expect("applied");
                    applied += 1;
                }
                self.events.push(e);
            }
            self.now += 1;
            if !moved {
                return applied;
            }
        }
    }

    fn run(&mut self) {
        self.run_limited(usize::MAX);
    }

    fn change(&mut self, i: usize, f: impl FnOnce(&mut Patient)) {
        f(&mut self.patients[i]);
        ingest(&mut self.feed, &mut self.patients[i], self.now);
        self.hub
            .notify_new_changes(UnixMillis(self.now), &self.feed)
            .expect("notify");
    }

    fn withdraw(&mut self, i: usize, reason: WithdrawReason) {
        let p = &mut self.patients[i];
        p.version += 1;
        p.present = false;
        self.feed
            .withdraw(&p.nhs, p.version, reason)
            .expect("withdraw");
        self.hub
            .notify_new_changes(UnixMillis(self.now), &self.feed)
            .expect("notify");
    }

    fn assert_converged(&self) {
        assert_eq!(
            cache_view(&self.store),
            hub_view(&self.feed, &self.cohort),
            "cache differs from the hub's view"
        );
        assert!(same_cohort(&self.store.state.cohort, &self.cohort));
        assert!(self.store.state.baseline.is_none());
        assert!(
            self.events
                .iter()
                .any(|e| matches!(e, UnitEvent::CaughtUp { .. })),
            "never caught up"
        );
    }

    fn rebaseline_reason(&self) -> Option<RebaselineReason> {
        self.events.iter().find_map(|e| match e {
            UnitEvent::BeginRebaseline { reason, .. } => Some(*reason),
            _ => None,
        })
    }

    fn members(&self, spec: &str) -> usize {
        hub_view(&self.feed, &cohort(spec)).len()
    }
}

fn small_batches() -> HubConfig {
    HubConfig {
        batch_records_max: 4,
        ..HubConfig::default()
    }
}

#[test]
fn cold_sync_then_live_push_then_objection() {
    let mut p = Pair::new(30, "postcode:SE1,SE5", small_batches());
    p.run();
    assert_eq!(p.rebaseline_reason(), Some(RebaselineReason::Cold));
    p.assert_converged();
    let members = p.members("postcode:SE1,SE5");
    assert_eq!(p.hub.progress().records_sent as usize, members);
    assert_eq!(p.store.state.cursor, p.feed.head_seq().expect("head"));

    // A new version is pushed without the unit asking.
    p.change(0, |x| x.allergy = !x.allergy);
    p.run();
    p.assert_converged();
    assert_eq!(
        p.store.records[&p.patients[0].nhs].version,
        p.patients[0].version
    );

    // An objection removes the patient; moving out of the cohort too.
    p.withdraw(0, WithdrawReason::Objection);
    p.change(1, |x| x.district = 2); // SE5 → E14
    p.run();
    p.assert_converged();
    assert!(!p.store.records.contains_key(&p.patients[0].nhs));
    assert!(!p.store.records.contains_key(&p.patients[1].nhs));
}

#[test]
fn cohort_change_moves_only_the_difference() {
    let mut p = Pair::new(40, "postcode:SE1", small_batches());
    p.run();
    p.assert_converged();
    let se1 = p.members("postcode:SE1");
    let se5 = p.members("postcode:SE5");
    assert!(se1 > 0 && se5 > 0);

    // Grow the cohort while connected: only SE5's records move; SE1's are named, not sent.
    let before = p.hub.progress().clone();
    p.cohort = cohort("postcode:SE1,SE5");
    p.hub
        .set_cohort(UnixMillis(p.now), &p.cohort, &p.feed)
        .expect("set cohort");
    p.run();
    p.assert_converged();
    let after = p.hub.progress().clone();
    assert_eq!(after.records_sent - before.records_sent, se5 as u64);
    assert_eq!(after.keeps_sent - before.keeps_sent, se1 as u64);

    // Shrink it across a reconnect: nothing but keeps moves, and SE1 is evicted.
    p.cohort = cohort("postcode:SE5");
    p.reconnect();
    p.run();
    assert_eq!(p.rebaseline_reason(), Some(RebaselineReason::CohortChanged));
    p.assert_converged();
    assert_eq!(p.hub.progress().records_sent, 0);
    assert_eq!(p.hub.progress().keeps_sent, se5 as u64);
    assert_eq!(p.store.records.len(), se5);
}

#[test]
fn unit_offline_beyond_the_horizon_is_rebaselined_and_withdrawals_are_not_lost() {
    let mut p = Pair::new(30, "all", small_batches());
    p.run();
    p.assert_converged();
    // Offline: changes, an objection, a deletion; then the feed is compacted past its cursor.
    p.unit.connection_lost();
    p.change(3, |x| x.flagged = !x.flagged);
    p.change(4, |x| x.allergy = !x.allergy);
    p.withdraw(5, WithdrawReason::Objection);
    p.withdraw(6, WithdrawReason::Deleted);
    let head = p.feed.head_seq().expect("head");
    p.feed.compact_to(head + 1);
    p.reconnect();
    p.run();
    assert_eq!(p.rebaseline_reason(), Some(RebaselineReason::Horizon));
    p.assert_converged();
    // Only the two changed records moved; the rest were kept.
    assert_eq!(p.hub.progress().records_sent, 2);
    assert_eq!(p.hub.progress().keeps_sent, 30 - 4);
    assert!(!p.store.records.contains_key(&p.patients[5].nhs));
    assert!(!p.store.records.contains_key(&p.patients[6].nhs));
}

#[test]
fn resume_after_a_drop_mid_baseline_resends_at_most_the_window() {
    for window in 1..=3 {
        let cfg = HubConfig {
            window_batches: window,
            batch_records_max: 5,
            ..HubConfig::default()
        };
        let mut p = Pair::new(60, "all", cfg);
        // Apply 4 batches, then the link drops with up to `window` batches in flight.
        assert_eq!(p.run_limited(4), 4);
        let sent_first = p.hub.progress().records_sent;
        let applied = p.store.records.len() as u64;
        p.unit.connection_lost();
        p.reconnect();
        p.run();
        assert_eq!(p.rebaseline_reason(), Some(RebaselineReason::Resume));
        p.assert_converged();
        let resent = sent_first + p.hub.progress().records_sent - 60;
        assert!(
            resent <= (window * 5) as u64,
            "window {window}: {resent} re-sent"
        );
        assert_eq!(p.hub.progress().records_sent, 60 - applied);
        assert_eq!(p.hub.progress().keeps_sent, 0);
    }
}

#[test]
fn resume_after_a_drop_mid_catch_up_resends_at_most_the_window() {
    let cfg = HubConfig {
        window_batches: 1,
        batch_records_max: 3,
        ..HubConfig::default()
    };
    let mut p = Pair::new(20, "all", cfg);
    p.run();
    p.unit.connection_lost();
    for i in 0..12 {
        p.change(i, |x| x.allergy = !x.allergy);
    }
    p.reconnect();
    assert_eq!(p.run_limited(2), 2);
    let first = p.hub.progress().records_sent;
    p.unit.connection_lost();
    p.reconnect();
    p.run();
    p.assert_converged();
    assert!(first + p.hub.progress().records_sent <= 12 + 3);
}

#[test]
fn a_unit_ahead_of_the_hub_is_rebaselined() {
    let mut p = Pair::new(10, "all", HubConfig::default());
    p.store.state.cursor = 1_000; // e.g. the hub's feed was rebuilt
    p.reconnect();
    p.run();
    assert_eq!(p.rebaseline_reason(), Some(RebaselineReason::CursorAhead));
    p.assert_converged();
    assert_eq!(p.store.state.cursor, p.feed.head_seq().expect("head"));
}

#[test]
fn fetch_on_demand() {
    let mut p = Pair::new(12, "postcode:N1", HubConfig::default());
    p.run();
    let outside = p
        .patients
        .iter()
        .find(|x| x.district != 3)
        .expect("one outside")
        .nhs;
    let id = p
        .unit
        .fetch(UnixMillis(p.now), outside, tok(), Purpose::Treat);
    p.run();
    let found = p.events.iter().find_map(|e| match e {
        UnitEvent::Fetched {
            request_id,
            result: FetchResult::Found { version, .. },
            ..
        } if *request_id == id => Some(*version),
        _ => None,
    });
    assert_eq!(found, Some(1));

    p.withdraw(0, WithdrawReason::Objection);
    let unknown = nhs(999);
    let a = p
        .unit
        .fetch(UnixMillis(p.now), p.patients[0].nhs, tok(), Purpose::Treat);
    let b = p
        .unit
        .fetch(UnixMillis(p.now), unknown, tok(), Purpose::Treat);
    p.run();
    let result = |id: u64| {
        p.events.iter().find_map(|e| match e {
            UnitEvent::Fetched {
                request_id, result, ..
            } if *request_id == id => Some(result.clone()),
            _ => None,
        })
    };
    assert_eq!(result(a), Some(FetchResult::Withdrawn));
    assert_eq!(result(b), Some(FetchResult::NotFound));

    // No answer within the budget: timed out; after a connection loss: not connected.
    let t = p
        .unit
        .fetch(UnixMillis(p.now), outside, tok(), Purpose::Treat);
    let deadline = p.unit.poll_timeout().expect("a deadline");
    p.unit.handle_timeout(deadline);
    p.unit.connection_lost();
    let n = p
        .unit
        .fetch(UnixMillis(p.now), outside, tok(), Purpose::Treat);
    let mut got = BTreeMap::new();
    while let Some(UnitEvent::Fetched {
        request_id, result, ..
    }) = p.unit.poll_event()
    {
        got.insert(request_id, result);
    }
    assert_eq!(got.get(&t), Some(&FetchResult::TimedOut));
    assert_eq!(got.get(&n), Some(&FetchResult::NotConnected));
}

#[test]
fn a_fetch_without_a_token_reads_nothing_and_is_answered_refused() {
    let mut p = Pair::new(12, "postcode:N1", HubConfig::default());
    p.run();
    let outside = p
        .patients
        .iter()
        .find(|x| x.district != 3)
        .expect("one outside")
        .nhs;
    // No token: the hub session refuses it itself.
    let a = p.unit.fetch(
        UnixMillis(p.now),
        outside,
        BearerToken::default(),
        Purpose::Treat,
    );
    p.run();
    // A driver refusal (bad token, past the ceiling): answered without reading.
    p.hub
        .refuse_fetch(77, FetchRefusal::OverCeiling)
        .expect("refuse");
    let m = p.hub.poll_transmit().expect("an answer");
    assert_eq!(
        m,
        ToUnit::Fetched {
            request_id: 77,
            outcome: FetchOutcome::Refused {
                reason: FetchRefusal::OverCeiling
            }
        }
    );
    let refused = p.events.iter().find_map(|e| match e {
        UnitEvent::FetchRefused {
            request_id, reason, ..
        } if *request_id == a => Some(*reason),
        _ => None,
    });
    assert_eq!(refused, Some(FetchRefusal::NoToken));
    let result = p.events.iter().find_map(|e| match e {
        UnitEvent::Fetched {
            request_id, result, ..
        } if *request_id == a => Some(result.clone()),
        _ => None,
    });
    assert_eq!(
        result,
        Some(FetchResult::Refused {
            reason: FetchRefusal::NoToken
        })
    );
}

#[test]
fn the_deny_list_follows_the_welcome_and_every_change() {
    let mut p = Pair::new(6, "all", HubConfig::default());
    p.hub.set_denylist(Bytes::from(vec![1u8, 2, 3]));
    p.run();
    let lists = |p: &Pair| {
        p.events
            .iter()
            .filter_map(|e| match e {
                UnitEvent::DenyList { list } => Some(list.as_slice().to_vec()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(lists(&p), vec![vec![1u8, 2, 3]]);
    p.assert_converged();
    // The same list again sends nothing; a new one is sent at once.
    p.hub.set_denylist(Bytes::from(vec![1u8, 2, 3]));
    p.hub.set_denylist(Bytes::from(vec![4u8]));
    p.run();
    assert_eq!(lists(&p), vec![vec![1u8, 2, 3], vec![4u8]]);
    // A reconnect sends the list in force after the new welcome.
    p.reconnect();
    p.hub.set_denylist(Bytes::from(vec![4u8]));
    p.run();
    assert_eq!(lists(&p), vec![vec![4u8]]);
}

// ---------------------------------------------------------------------------------------------
// Bad input: each refused with a typed error, nothing applied, no panic.

fn welcomed_unit(state: SyncState) -> UnitSession {
    let key = hub_key();
    let mut u = UnitSession::new(
        device(1),
        state.clone(),
        key.public_key().as_ref(),
        UnitConfig::default(),
    );
    let _hello = u.poll_transmit();
    let w = Welcome {
        protocol_version: PROTOCOL_VERSION,
        hub_time: UnixMillis(T0),
        head_seq: state.cursor + 10,
        mode: SyncMode::Incremental {
            from_seq: state.cursor + 1,
        },
    };
    u.handle_message(UnixMillis(T0), ToUnit::Welcome(w))
        .expect("welcome");
    while u.poll_event().is_some() {}
    u
}

fn upsert(seq: u64, i: u32) -> Change {
    Change::Upsert {
        seq,
        nhs: nhs(i),
        version: 1,
        record: Bytes::from(vec![0xa0]),
    }
}

fn feed_batch(
    batch_no: u64,
    first_seq: u64,
    last_seq: u64,
    changes: Vec<Change>,
    key: &Ed25519KeyPair,
) -> ToUnit {
    let kind = BatchKind::Feed {
        first_seq,
        last_seq,
    };
    let signature = sign_batch(key, &kind, &changes);
    ToUnit::Batch(Batch {
        batch_no,
        kind,
        changes,
        signature,
    })
}

fn no_apply(u: &mut UnitSession) -> bool {
    std::iter::from_fn(|| u.poll_event()).all(|e| !matches!(e, UnitEvent::Apply(_)))
}

#[test]
fn frames_malformed_truncated_oversized() {
    let msg = ToHub::Ack { upto_batch: 7 };
    let frame = encode_frame(&msg).expect("encode");

    // Any chunking reassembles; a partial frame is "need more".
    let mut d = FrameDecoder::new();
    d.push(&frame[..3]).expect("push");
    assert_eq!(d.next_message::<ToHub>(), Ok(None));
    d.push(&frame[3..frame.len() - 1]).expect("push");
    assert_eq!(d.next_message::<ToHub>(), Ok(None));
    d.push(&frame[frame.len() - 1..]).expect("push");
    assert_eq!(d.next_message::<ToHub>(), Ok(Some(msg)));

    // Oversized: refused from the header alone, nothing buffered.
    let mut d = FrameDecoder::new();
    let len = (MAX_FRAME_BYTES as u32 + 1).to_be_bytes();
    assert!(matches!(d.push(&len), Err(FrameError::TooLarge { .. })));
    assert_eq!(d.buffered(), 0);
    assert_eq!(d.push(b"x"), Err(FrameError::Poisoned));

    // Malformed CBOR, a valid value of the wrong shape, trailing bytes.
    for body in [&[0xff, 0x00, 0x13][..], &[0x01], &[0xa0]] {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        let mut d = FrameDecoder::new();
        d.push(&f).expect("push");
        assert!(
            matches!(d.next_message::<ToUnit>(), Err(FrameError::Malformed(_))),
            "{body:?}"
        );
        assert_eq!(d.next_message::<ToUnit>(), Err(FrameError::Poisoned));
    }
    let mut body = frame[4..].to_vec();
    body.push(0x00);
    assert!(matches!(
        decode_body::<ToHub>(&body),
        Err(FrameError::Malformed(_))
    ));

    // A smaller limit for a stream that only carries small messages.
    let mut d = FrameDecoder::with_max(16);
    assert!(matches!(
        d.push(&(17u32).to_be_bytes()),
        Err(FrameError::TooLarge { len: 17, max: 16 })
    ));
}

#[test]
fn hub_refuses_a_wrong_protocol_version_and_a_wrong_device() {
    let feed = MemFeed::new();
    for (version, dev, want) in [
        (
            PROTOCOL_VERSION + 1,
            device(1),
            RefusalCode::UnsupportedVersion,
        ),
        (PROTOCOL_VERSION, device(2), RefusalCode::DeviceMismatch),
    ] {
        let mut hub = HubSession::new(
            UnitProfile {
                device_id: device(1),
                cohort: cohort("all"),
            },
            hub_key(),
            HubConfig::default(),
        );
        let hello = Hello {
            protocol_version: version,
            device_id: dev,
            cursor: 0,
            epoch: 0,
            cohort: vec![],
            baseline: None,
            held: vec![],
            health: None,
            compression: Vec::new(),
        };
        let err = hub
            .handle_message(UnixMillis(T0), ToHub::Hello(hello), &feed)
            .expect_err("refused");
        match (&err, hub.poll_transmit()) {
            (
                HubError::UnsupportedVersion(_) | HubError::DeviceMismatch,
                Some(ToUnit::Refused { code, message }),
            ) => {
                assert_eq!(code, want);
                assert!(!message.is_empty());
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(hub.is_closed());
        assert!(matches!(
            hub.handle_message(UnixMillis(T0), ToHub::Ack { upto_batch: 0 }, &feed),
            Err(HubError::Closed)
        ));
    }
}

#[test]
fn hub_refuses_protocol_violations() {
    let feed = MemFeed::new();
    let mut hub = HubSession::new(
        UnitProfile {
            device_id: device(1),
            cohort: cohort("all"),
        },
        hub_key(),
        HubConfig::default(),
    );
    let err = hub
        .handle_message(UnixMillis(T0), ToHub::Ack { upto_batch: 5 }, &feed)
        .expect_err("refused");
    assert!(matches!(err, HubError::BadRequest(_)));
    assert!(matches!(
        hub.poll_transmit(),
        Some(ToUnit::Refused {
            code: RefusalCode::BadRequest,
            ..
        })
    ));

    // Hostile numbers: no panic, a refusal or a re-baseline.
    let mut feed = MemFeed::new();
    ingest(&mut feed, &mut Patient::new(1), T0);
    for (cursor, epoch) in [
        (u64::MAX, 0),
        (0, u64::MAX),
        (u64::MAX, u64::MAX),
        (1, u64::MAX - 1),
    ] {
        let mut hub = HubSession::new(
            UnitProfile {
                device_id: device(1),
                cohort: cohort("all"),
            },
            hub_key(),
            HubConfig::default(),
        );
        let hello = Hello {
            protocol_version: PROTOCOL_VERSION,
            device_id: device(1),
            cursor,
            epoch,
            cohort: cohort("all"),
            baseline: None,
            held: vec![],
            health: None,
            compression: Vec::new(),
        };
        let r = hub.handle_message(UnixMillis(T0), ToHub::Hello(hello), &feed);
        assert!(
            r.is_ok() || matches!(r, Err(HubError::BadRequest(_))),
            "{cursor} {epoch}: {r:?}"
        );
        while hub.poll_transmit().is_some() {}
    }
    let feed = MemFeed::new();

    // A hello claiming an absurd number of held versions.
    let mut hub = HubSession::new(
        UnitProfile {
            device_id: device(1),
            cohort: cohort("all"),
        },
        hub_key(),
        HubConfig::default(),
    );
    let held = vec![
        edge_proto::sync::wire::Held {
            nhs: nhs(1),
            version: 1,
            seq: 1
        };
        5_000
    ];
    let hello = Hello {
        protocol_version: PROTOCOL_VERSION,
        device_id: device(1),
        cursor: 0,
        epoch: 0,
        cohort: vec![],
        baseline: None,
        held,
        health: None,
        compression: Vec::new(),
    };
    assert!(matches!(
        hub.handle_message(UnixMillis(T0), ToHub::Hello(hello), &feed),
        Err(HubError::BadRequest(_))
    ));
}

#[test]
fn unit_refuses_a_wrong_protocol_version_and_reports_refusals() {
    let key = hub_key();
    let mut u = UnitSession::new(
        device(1),
        SyncState::default(),
        key.public_key().as_ref(),
        UnitConfig::default(),
    );
    assert!(
        matches!(u.poll_transmit(), Some(ToHub::Hello(h)) if h.protocol_version == PROTOCOL_VERSION)
    );
    let w = Welcome {
        protocol_version: 2,
        hub_time: UnixMillis(T0),
        head_seq: 0,
        mode: SyncMode::Incremental { from_seq: 1 },
    };
    assert_eq!(
        u.handle_message(UnixMillis(T0), ToUnit::Welcome(w)),
        Err(ProtocolError::VersionMismatch {
            hub: 2,
            unit: PROTOCOL_VERSION
        })
    );
    assert!(u.is_ended());
    assert_eq!(
        u.handle_message(UnixMillis(T0), ToUnit::Live { head_seq: 0 }),
        Err(ProtocolError::Closed)
    );

    let mut u = UnitSession::new(
        device(1),
        SyncState::default(),
        key.public_key().as_ref(),
        UnitConfig::default(),
    );
    let r = u.handle_message(
        UnixMillis(T0),
        ToUnit::refused(RefusalCode::UnknownUnit, "not enrolled"),
    );
    assert!(matches!(
        r,
        Err(ProtocolError::Refused {
            code: RefusalCode::UnknownUnit,
            ..
        })
    ));
}

#[test]
fn unit_refuses_a_batch_whose_signature_fails_whole() {
    let state = SyncState {
        cursor: 10,
        epoch: 1,
        cohort: cohort("all"),
        ..SyncState::default()
    };
    // Signed by another key.
    let mut u = welcomed_unit(state.clone());
    let m = feed_batch(1, 11, 12, vec![upsert(11, 1), upsert(12, 2)], &other_key());
    assert_eq!(
        u.handle_message(UnixMillis(T0), m),
        Err(ProtocolError::BadSignature { batch_no: 1 })
    );
    assert!(no_apply(&mut u));
    assert_eq!(u.durable_state(), &state);

    // Signed by the hub, then one record byte altered in transit.
    let mut u = welcomed_unit(state.clone());
    let ToUnit::Batch(mut b) =
        feed_batch(1, 11, 12, vec![upsert(11, 1), upsert(12, 2)], &hub_key())
    else {
        unreachable!()
    };
    if let Change::Upsert { record, .. } = &mut b.changes[1] {
        *record = Bytes::from(vec![0xa1, 0x00, 0x00]);
    }
    assert_eq!(
        u.handle_message(UnixMillis(T0), ToUnit::Batch(b)),
        Err(ProtocolError::BadSignature { batch_no: 1 })
    );
    assert!(no_apply(&mut u));

    // A valid batch applies (control).
    let mut u = welcomed_unit(state);
    u.handle_message(
        UnixMillis(T0),
        feed_batch(1, 11, 12, vec![upsert(11, 1)], &hub_key()),
    )
    .expect("valid");
    assert!(!no_apply(&mut u));
}

#[test]
fn unit_refuses_batches_out_of_order() {
    let state = SyncState {
        cursor: 10,
        epoch: 1,
        cohort: cohort("all"),
        ..SyncState::default()
    };
    let key = hub_key();
    let cases: Vec<(ToUnit, ProtocolError)> = vec![
        // A gap after the cursor.
        (
            feed_batch(1, 12, 12, vec![], &key),
            ProtocolError::OutOfOrder {
                cursor: 10,
                first_seq: 12,
            },
        ),
        // A batch already applied.
        (
            feed_batch(1, 5, 10, vec![], &key),
            ProtocolError::OutOfOrder {
                cursor: 10,
                first_seq: 5,
            },
        ),
        // A skipped batch number.
        (
            feed_batch(2, 11, 11, vec![], &key),
            ProtocolError::BatchNumber {
                expected: 1,
                got: 2,
            },
        ),
        // Changes outside the batch's range, or out of order.
        (
            feed_batch(1, 11, 12, vec![upsert(13, 1)], &key),
            ProtocolError::InvalidBatch("change sequence numbers out of range or order"),
        ),
        (
            feed_batch(1, 11, 13, vec![upsert(12, 1), upsert(12, 2)], &key),
            ProtocolError::InvalidBatch("change sequence numbers out of range or order"),
        ),
        // A keep outside a baseline.
        (
            feed_batch(
                1,
                11,
                11,
                vec![Change::Keep {
                    seq: 11,
                    nhs: nhs(1),
                    version: 1,
                }],
                &key,
            ),
            ProtocolError::InvalidBatch("keep outside a baseline"),
        ),
    ];
    for (msg, want) in cases {
        let mut u = welcomed_unit(state.clone());
        assert_eq!(u.handle_message(UnixMillis(T0), msg), Err(want.clone()));
        assert!(no_apply(&mut u), "{want}");
        assert!(u.is_ended());
    }

    // Baseline batches must continue from the baseline's position, in its epoch.
    let mut u = UnitSession::new(
        device(1),
        SyncState::default(),
        key.public_key().as_ref(),
        UnitConfig::default(),
    );
    let w = Welcome {
        protocol_version: PROTOCOL_VERSION,
        hub_time: UnixMillis(T0),
        head_seq: 5,
        mode: SyncMode::Rebaseline {
            epoch: 1,
            snapshot_seq: 5,
            cohort: cohort("all"),
            resume_after: None,
            reason: RebaselineReason::Cold,
        },
    };
    u.handle_message(UnixMillis(T0), ToUnit::Welcome(w.clone()))
        .expect("welcome");
    let k = |pass, i| BaselineKey { pass, nhs: nhs(i) };
    let kind = BatchKind::Baseline {
        epoch: 1,
        after: Some(k(0, 1)),
        through: k(0, 2),
    };
    let signature = sign_batch(&key, &kind, &[]);
    let b = ToUnit::Batch(Batch {
        batch_no: 1,
        kind,
        changes: vec![],
        signature,
    });
    assert_eq!(
        u.handle_message(UnixMillis(T0), b),
        Err(ProtocolError::BaselineOutOfOrder)
    );

    let mut u = UnitSession::new(
        device(1),
        SyncState::default(),
        key.public_key().as_ref(),
        UnitConfig::default(),
    );
    u.handle_message(UnixMillis(T0), ToUnit::Welcome(w))
        .expect("welcome");
    let kind = BatchKind::Baseline {
        epoch: 2,
        after: None,
        through: k(0, 2),
    };
    let signature = sign_batch(&key, &kind, &[]);
    let b = ToUnit::Batch(Batch {
        batch_no: 1,
        kind,
        changes: vec![],
        signature,
    });
    assert_eq!(
        u.handle_message(UnixMillis(T0), b),
        Err(ProtocolError::WrongEpoch {
            expected: Some(1),
            got: 2
        })
    );

    // Nothing before the welcome.
    let mut u = UnitSession::new(
        device(1),
        SyncState::default(),
        key.public_key().as_ref(),
        UnitConfig::default(),
    );
    let r = u.handle_message(UnixMillis(T0), feed_batch(1, 1, 1, vec![], &key));
    assert!(matches!(r, Err(ProtocolError::Unexpected { .. })));
}

#[test]
fn a_keep_the_cache_cannot_honour_distrusts_the_cache() {
    let key = hub_key();
    let mut store = MemStore::default();
    let mut u = UnitSession::new(
        device(1),
        store.state.clone(),
        key.public_key().as_ref(),
        UnitConfig::default(),
    );
    let w = Welcome {
        protocol_version: PROTOCOL_VERSION,
        hub_time: UnixMillis(T0),
        head_seq: 5,
        mode: SyncMode::Rebaseline {
            epoch: 1,
            snapshot_seq: 5,
            cohort: cohort("all"),
            resume_after: None,
            reason: RebaselineReason::Cold,
        },
    };
    u.handle_message(UnixMillis(T0), ToUnit::Welcome(w))
        .expect("welcome");
    let kind = BatchKind::Baseline {
        epoch: 1,
        after: None,
        through: BaselineKey {
            pass: 0,
            nhs: nhs(1),
        },
    };
    let changes = vec![Change::Keep {
        seq: 1,
        nhs: nhs(1),
        version: 3,
    }];
    let signature = sign_batch(&key, &kind, &changes);
    u.handle_message(
        UnixMillis(T0),
        ToUnit::Batch(Batch {
            batch_no: 1,
            kind,
            changes,
            signature,
        }),
    )
    .expect("batch");
    let a = std::iter::from_fn(|| u.poll_event())
        .find_map(|e| match e {
            UnitEvent::Apply(a) => Some(a),
            _ => None,
        })
        .expect("an apply");
    let report = apply_to(&mut store, &a).unwrap_or_else(|e| match e {});
    assert_eq!(report.keep_mismatches, 1);
    assert!(
        store.state.cohort.is_empty()
            && store
                .state
                .baseline
                .as_ref()
                .is_some_and(|b| b.cohort.is_empty())
    );
    assert_eq!(
        u.batch_applied(a.batch_no, &report),
        Err(ProtocolError::KeepMismatch(1))
    );
}

#[test]
fn a_forged_fetch_answer_is_refused() {
    let key = hub_key();
    let mut u = welcomed_unit(SyncState::default());
    let id = u.fetch(UnixMillis(T0), nhs(3), tok(), Purpose::Treat);
    let record = Bytes::from(vec![0xa0]);
    let signature =
        edge_proto::sync::sign::sign_fetched(&other_key(), &nhs(3), 1, record.as_slice());
    let outcome = FetchOutcome::Found {
        version: 1,
        record: record.clone(),
        signature,
    };
    assert_eq!(
        u.handle_message(
            UnixMillis(T0),
            ToUnit::Fetched {
                request_id: id,
                outcome
            }
        ),
        Err(ProtocolError::BadFetchSignature)
    );
    // Signed for another patient: also refused.
    let mut u = welcomed_unit(SyncState::default());
    let id = u.fetch(UnixMillis(T0), nhs(3), tok(), Purpose::Treat);
    let signature = edge_proto::sync::sign::sign_fetched(&key, &nhs(4), 1, record.as_slice());
    let outcome = FetchOutcome::Found {
        version: 1,
        record,
        signature,
    };
    assert_eq!(
        u.handle_message(
            UnixMillis(T0),
            ToUnit::Fetched {
                request_id: id,
                outcome
            }
        ),
        Err(ProtocolError::BadFetchSignature)
    );
}

#[test]
fn sync_state_round_trips() {
    let state = SyncState {
        cursor: 9,
        epoch: 2,
        cohort: cohort("postcode:SE1;flagged"),
        baseline: Some(BaselineProgress {
            epoch: 3,
            snapshot_seq: 12,
            cohort: cohort("all"),
            resume_after: Some(BaselineKey {
                pass: 1,
                nhs: nhs(2),
            }),
        }),
        held: vec![edge_proto::sync::wire::Held {
            nhs: nhs(5),
            version: 4,
            seq: 13,
        }],
    };
    assert_eq!(
        SyncState::decode(&state.encode().expect("encode")).expect("decode"),
        state
    );
    assert!(SyncState::decode(b"\xff").is_err());
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever bytes arrive, in whatever pieces, the decoder returns messages or typed
        /// errors and never panics.
        #[test]
        fn frame_decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048), cuts in proptest::collection::vec(0usize..2048, 0..8)) {
            let mut d = FrameDecoder::with_max(4096);
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.push(bytes.len());
            cuts.sort_unstable();
            let mut at = 0;
            for c in cuts {
                if d.push(&bytes[at..c]).is_err() {
                    break;
                }
                at = c;
                while let Ok(Some(_)) = d.next_message::<ToUnit>() {}
            }
        }

        /// Arbitrary frame bodies decode to a message or an error, for both directions.
        #[test]
        fn bodies_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_body::<ToUnit>(&bytes);
            let _ = decode_body::<ToHub>(&bytes);
            let _ = SyncState::decode(&bytes);
        }

        /// A hub session fed arbitrary hellos, acks and fetches answers or refuses; no panic.
        #[test]
        fn hub_session_never_panics(
            cursor in any::<u64>(),
            epoch in any::<u64>(),
            resume in proptest::option::of((any::<u64>(), any::<u64>(), 0u8..3, 0u32..40)),
            ops in proptest::collection::vec((0u8..3, any::<u64>(), 0u32..40), 0..12),
        ) {
            let mut feed = MemFeed::new();
            for i in 0..20 {
                ingest(&mut feed, &mut Patient::new(i), T0);
            }
            feed.compact_to(5);
            let mut hub = HubSession::new(
                UnitProfile { device_id: device(1), cohort: cohort("all") },
                hub_key(),
                HubConfig { batch_records_max: 3, ..HubConfig::default() },
            );
            let baseline = resume.map(|(e, snap, pass, n)| BaselineProgress {
                epoch: e,
                snapshot_seq: snap,
                cohort: cohort("all"),
                resume_after: Some(BaselineKey { pass, nhs: nhs(n) }),
            });
            let hello = Hello {
                protocol_version: PROTOCOL_VERSION,
                device_id: device(1),
                cursor,
                epoch,
                cohort: cohort("all"),
                baseline,
                held: vec![],
                health: None,
                compression: Vec::new(),
            };
            let _ = hub.handle_message(UnixMillis(T0), ToHub::Hello(hello), &feed);
            for (kind, n, i) in ops {
                let msg = match kind {
                    0 => ToHub::Ack { upto_batch: n % 8 },
                    1 => ToHub::Fetch { request_id: n, nhs: nhs(i), token: tok(), purpose: Purpose::Treat },
                    _ => ToHub::Hello(Hello {
                        protocol_version: PROTOCOL_VERSION,
                        device_id: device(1),
                        cursor: n,
                        epoch: 0,
                        cohort: vec![],
                        baseline: None,
                        held: vec![],
                        health: None,
                        compression: Vec::new(),
                    }),
                };
                let _ = hub.handle_message(UnixMillis(T0), msg, &feed);
                while hub.poll_transmit().is_some() {}
            }
        }

        /// Valid frames with a few bytes flipped never panic the decoder or the unit session,
        /// and a flipped batch is never applied.
        #[test]
        fn mutated_batches_are_refused_or_harmless(flips in proptest::collection::vec((0usize..4096, 0u8..8), 1..4)) {
            let key = hub_key();
            let m = feed_batch(1, 1, 2, vec![upsert(1, 1), upsert(2, 2)], &key);
            let mut frame = encode_frame(&m).expect("encode");
            let body_len = frame.len() - 4;
            for (pos, bit) in flips {
                frame[4 + pos % body_len] ^= 1 << bit;
            }
            let mut d = FrameDecoder::new();
            if d.push(&frame).is_ok() {
                if let Ok(Some(msg)) = d.next_message::<ToUnit>() {
                    let mut u = welcomed_unit(SyncState::default());
                    let same = msg == m;
                    let r = u.handle_message(UnixMillis(T0), msg);
                    prop_assert!(same || r.is_err() || no_apply(&mut u), "a changed batch was applied");
                }
            }
        }
    }
}
