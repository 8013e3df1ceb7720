//! The hub's end of sync: [`HubSession`], one per unit connection, sans-IO.
//!
//! The driver (edge-hub) authenticates the unit (mutual TLS), looks up its cohort, and creates
//! a session with a [`UnitProfile`]. It then feeds the session the unit's messages
//! ([`HubSession::handle_message`]) and news of the feed growing
//! ([`HubSession::notify_new_changes`], for live push), and sends what
//! [`HubSession::poll_transmit`] gives it. The session reads the feed through [`HubFeed`] and
//! signs with the hub's key; it keeps at most [`HubConfig::window_batches`] batches
//! unacknowledged, which bounds what a dropped connection can make it re-send.
//!
//! A unit the hub does not know never gets a session: the driver sends
//! `ToUnit::refused(RefusalCode::UnknownUnit, ..)` and closes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use ring::signature::Ed25519KeyPair;

use super::cohort::{
    cohort_entries, in_cohort, normalize_cohort, same_cohort, CohortFilter, MAX_COHORT_ENTRIES,
};
use super::feed::{CurrentMeta, CurrentRecord, FeedBody, FeedEntry, FeedError, HubFeed};
use super::sign::{sign_batch, sign_fetched};
use super::wire::{
    BaselineKey, Batch, BatchKind, Bytes, Change, FetchOutcome, FetchRefusal, Hello,
    RebaselineReason, RefusalCode, SyncMode, ToHub, ToUnit, Welcome, WithdrawReason, MAX_HELD,
};
use super::PROTOCOL_VERSION;
use crate::ids::{CohortSpec, DeviceId};
use crate::nhs::NhsNumber;
use crate::time::UnixMillis;

/// Flow control and batch sizing.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Batches sent and not yet acknowledged, at most. A drop re-sends at most this many.
    pub window_batches: usize,
    /// Records (upserts) per batch, at most.
    pub batch_records_max: usize,
    /// Changes of any kind per batch, at most (keeps and withdrawals are small).
    pub batch_changes_max: usize,
    /// Approximate encoded bytes per batch, at most (a single larger record still goes alone).
    pub batch_bytes_max: usize,
    /// Feed entries or baseline records examined per batch, at most (bounds work per call).
    pub scan_entries_max: usize,
    /// Once live, a run of feed entries that concern the unit not at all is sent (as an empty
    /// batch, to advance its cursor) only when it is at least this long.
    pub live_idle_advance_seqs: u64,
    /// Fetch answers queued and not yet taken by the driver, at most.
    pub fetch_queue_max: usize,
    /// Records a baseline remembers having sent past its snapshot, so that pass 1 and the
    /// catch-up skip them (0 turns this off; the unit's version check then makes the
    /// re-sent versions no-ops, at the cost of the bytes).
    pub skip_memory_max: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            window_batches: 1,
            batch_records_max: 512,
            batch_changes_max: 4_096,
            batch_bytes_max: 2 * 1024 * 1024,
            scan_entries_max: 4_096,
            live_idle_advance_seqs: 4_096,
            fetch_queue_max: 32,
            skip_memory_max: 65_536,
        }
    }
}

/// Who the session serves (from the unit's certificate and the hub's registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitProfile {
    pub device_id: DeviceId,
    pub cohort: Vec<CohortSpec>,
}

/// Why a session call failed. Refusals have been queued for the unit; send them, then close.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Feed(#[from] FeedError),
    #[error("the unit broke the protocol: {0}")]
    BadRequest(&'static str),
    #[error("the unit speaks sync protocol version {0}")]
    UnsupportedVersion(u16),
    #[error("the hello names another device than the unit's certificate")]
    DeviceMismatch,
    #[error("the session has ended")]
    Closed,
}

/// What the hub knows of a unit's progress on this connection (for `/admin/devices`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionProgress {
    /// The unit's cursor as of its last acknowledgement (durable on the unit).
    pub acked_cursor: Option<u64>,
    /// The baseline under way, if any.
    pub baseline_epoch: Option<u64>,
    /// Caught up and receiving live pushes.
    pub live: bool,
    pub batches_sent: u64,
    pub records_sent: u64,
    pub record_bytes_sent: u64,
    pub keeps_sent: u64,
    pub withdrawals_sent: u64,
}

#[derive(Debug, Clone)]
struct BaselineRun {
    epoch: u64,
    snapshot_seq: u64,
    cohort: Vec<CohortSpec>,
    /// (cursor, cohort) of the unit's cache before this baseline: records unchanged since
    /// `cursor` and in that cohort are held, and are named (kept) instead of sent.
    keep_base: Option<(u64, Vec<CohortSpec>)>,
    pass: u8,
    after_nhs: Option<NhsNumber>,
    last_key: Option<BaselineKey>,
    /// Records sent on this connection at a version newer than the snapshot (bounded): pass 1
    /// and the catch-up after the baseline need not send them again.
    sent_after_snapshot: BTreeMap<NhsNumber, u64>,
}

#[derive(Debug)]
enum Phase {
    AwaitHello,
    Baseline(BaselineRun),
    Incremental,
    Closed,
}

#[derive(Debug)]
struct InFlight {
    batch_no: u64,
    cursor_after: Option<u64>,
}

/// The hub's sync session for one unit connection.
#[derive(Debug)]
pub struct HubSession {
    profile: UnitProfile,
    key: Arc<Ed25519KeyPair>,
    config: HubConfig,
    phase: Phase,
    /// Incremental: the next feed sequence number to send (the unit's cursor + 1 once all
    /// batches sent are applied).
    next_seq: u64,
    /// Incremental: the highest entry examined (≥ `next_seq - 1`); entries between concern
    /// the unit not at all and are not yet covered by a batch.
    scanned_to: u64,
    epoch_high: u64,
    live_sent: bool,
    /// After a baseline on this connection: versions it already sent past its snapshot. Feed
    /// entries of those patients up to that version would be no-ops on the unit; skip them.
    catchup_skip: BTreeMap<NhsNumber, u64>,
    inflight: VecDeque<InFlight>,
    next_batch_no: u64,
    pull_out: VecDeque<ToUnit>,
    fetch_out: VecDeque<ToUnit>,
    progress: SessionProgress,
    /// The fleet's signed token deny list to hand the unit (sent after the welcome, and again
    /// whenever the driver sets a newer one).
    denylist: Option<Bytes>,
}

impl HubSession {
    pub fn new(profile: UnitProfile, key: Arc<Ed25519KeyPair>, config: HubConfig) -> Self {
        let profile = UnitProfile {
            cohort: normalize_cohort(&profile.cohort),
            ..profile
        };
        let config = HubConfig {
            window_batches: config.window_batches.max(1),
            ..config
        };
        HubSession {
            profile,
            key,
            config,
            phase: Phase::AwaitHello,
            next_seq: 1,
            scanned_to: 0,
            epoch_high: 0,
            live_sent: false,
            catchup_skip: BTreeMap::new(),
            inflight: VecDeque::new(),
            next_batch_no: 1,
            pull_out: VecDeque::new(),
            fetch_out: VecDeque::new(),
            progress: SessionProgress::default(),
            denylist: None,
        }
    }

    pub fn device_id(&self) -> &DeviceId {
        &self.profile.device_id
    }

    pub fn progress(&self) -> &SessionProgress {
        &self.progress
    }

    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed)
    }

    /// The next message to send: fetch answers first (their own stream), then the pull stream.
    pub fn poll_transmit(&mut self) -> Option<ToUnit> {
        self.fetch_out
            .pop_front()
            .or_else(|| self.pull_out.pop_front())
    }

    /// Handle one message from the unit.
    pub fn handle_message<F: HubFeed + ?Sized>(
        &mut self,
        now: UnixMillis,
        msg: ToHub,
        feed: &F,
    ) -> Result<(), HubError> {
        if self.is_closed() {
            return Err(HubError::Closed);
        }
        let r = match msg {
            ToHub::Hello(h) => self.on_hello(now, h, feed).map(|()| {
                // The deny list follows the welcome, before any batch.
                if let Some(list) = self.denylist.clone() {
                    self.pull_out.push_back(ToUnit::DenyList { list });
                }
            }),
            ToHub::Ack { upto_batch } => self.on_ack(upto_batch),
            // The driver verifies the token and applies its budget before handing a fetch on
            // (see `refuse_fetch`); the session refuses one that carries no token at all.
            ToHub::Fetch {
                request_id,
                nhs,
                token,
                ..
            } => {
                if token.is_empty() {
                    self.refuse_fetch(request_id, FetchRefusal::NoToken)
                } else {
                    self.on_fetch(request_id, &nhs, feed)
                }
            }
            // The driver hands audit uploads to its audit repository, never to the session.
            ToHub::Audit { .. } => Err(HubError::BadRequest("audit upload on the sync session")),
            ToHub::Renew => Err(HubError::BadRequest(
                "certificate renewal is the hub server's, not the sync session's",
            )),
        };
        let r = r.and_then(|()| self.pump(now, feed));
        r.map_err(|e| self.refuse(e))
    }

    /// The feed has grown: push what concerns the unit (live).
    pub fn notify_new_changes<F: HubFeed + ?Sized>(
        &mut self,
        now: UnixMillis,
        feed: &F,
    ) -> Result<(), HubError> {
        if self.is_closed() {
            return Err(HubError::Closed);
        }
        self.pump(now, feed).map_err(|e| self.refuse(e))
    }

    /// The unit's cohort changed while connected: re-baseline it, moving only the difference.
    pub fn set_cohort<F: HubFeed + ?Sized>(
        &mut self,
        now: UnixMillis,
        cohort: &[CohortSpec],
        feed: &F,
    ) -> Result<(), HubError> {
        let new = normalize_cohort(cohort);
        if new == self.profile.cohort {
            return Ok(());
        }
        let old = std::mem::replace(&mut self.profile.cohort, new);
        let keep_base = match &self.phase {
            Phase::AwaitHello | Phase::Closed => return Ok(()),
            Phase::Incremental => Some((self.next_seq - 1, old)),
            Phase::Baseline(run) => run.keep_base.clone(),
        };
        let r = self.start_baseline(now, RebaselineReason::CohortChanged, keep_base, feed);
        let r = r.and_then(|()| self.pump(now, feed));
        r.map_err(|e| self.refuse(e))
    }

    /// Answer a fetch with a refusal, reading nothing (the driver's token check or budget
    /// refused it).
    pub fn refuse_fetch(&mut self, request_id: u64, reason: FetchRefusal) -> Result<(), HubError> {
        if self.is_closed() {
            return Err(HubError::Closed);
        }
        if self.fetch_out.len() >= self.config.fetch_queue_max {
            return Err(self.refuse(HubError::BadRequest("too many fetches outstanding")));
        }
        self.fetch_out.push_back(ToUnit::Fetched {
            request_id,
            outcome: FetchOutcome::Refused { reason },
        });
        Ok(())
    }

    /// The fleet's signed token deny list (raw bytes): sent to the unit after its welcome, or
    /// at once when the session is already under way. The same bytes again send nothing.
    pub fn set_denylist(&mut self, list: Bytes) {
        if self.denylist.as_ref() == Some(&list) {
            return;
        }
        self.denylist = Some(list.clone());
        if !matches!(self.phase, Phase::AwaitHello | Phase::Closed) {
            self.pull_out.push_back(ToUnit::DenyList { list });
        }
    }

    /// The session is over (the driver closes the connection: revoked, wiped, superseded).
    /// Nothing more is queued or served.
    pub fn close(&mut self) {
        self.phase = Phase::Closed;
        self.pull_out.clear();
        self.fetch_out.clear();
    }

    fn refuse(&mut self, e: HubError) -> HubError {
        let (code, message) = match &e {
            HubError::Feed(_) => (
                RefusalCode::Internal,
                "the hub's store failed; retry later".to_owned(),
            ),
            HubError::BadRequest(m) => (RefusalCode::BadRequest, (*m).to_owned()),
            HubError::UnsupportedVersion(v) => (
                RefusalCode::UnsupportedVersion,
                format!(
                    "this hub speaks kerbside sync protocol version {PROTOCOL_VERSION}, not {v}"
                ),
            ),
            HubError::DeviceMismatch => (
                RefusalCode::DeviceMismatch,
                "the hello names another device than the certificate".to_owned(),
            ),
            HubError::Closed => return e,
        };
        self.phase = Phase::Closed;
        self.pull_out.clear();
        self.fetch_out.clear();
        self.pull_out.push_back(ToUnit::Refused { code, message });
        e
    }

    fn on_hello<F: HubFeed + ?Sized>(
        &mut self,
        now: UnixMillis,
        h: Hello,
        feed: &F,
    ) -> Result<(), HubError> {
        if !matches!(self.phase, Phase::AwaitHello) {
            return Err(HubError::BadRequest("a second hello"));
        }
        if h.protocol_version != PROTOCOL_VERSION {
            return Err(HubError::UnsupportedVersion(h.protocol_version));
        }
        if h.device_id != self.profile.device_id {
            return Err(HubError::DeviceMismatch);
        }
        let baseline_entries = h.baseline.as_ref().map_or(0, |b| cohort_entries(&b.cohort));
        if cohort_entries(&h.cohort) > MAX_COHORT_ENTRIES || baseline_entries > MAX_COHORT_ENTRIES {
            return Err(HubError::BadRequest("cohort too large"));
        }
        if h.held.len() > MAX_HELD {
            return Err(HubError::BadRequest("too many held versions"));
        }
        let head = feed.head_seq()?;
        let oldest = feed.oldest_retained_seq()?;
        self.epoch_high = h
            .baseline
            .as_ref()
            .map_or(h.epoch, |b| b.epoch.max(h.epoch));
        let c = h.cursor;
        let cache_cohort = normalize_cohort(&h.cohort);
        let keep_base = (c <= head).then(|| (c, cache_cohort.clone()));
        // What the unit holds beyond `after` from a baseline: not to be sent again.
        let memory = self.config.skip_memory_max;
        let held_after = |after: u64| -> BTreeMap<NhsNumber, u64> {
            h.held
                .iter()
                .filter(|x| x.seq > after)
                .take(memory)
                .map(|x| (x.nhs, x.version))
                .collect()
        };

        if let Some(b) = &h.baseline {
            let resumable = same_cohort(&b.cohort, &self.profile.cohort)
                && b.snapshot_seq <= head
                && b.snapshot_seq.saturating_add(1) >= oldest
                && c <= b.snapshot_seq
                && b.epoch > h.epoch;
            if resumable {
                let run = BaselineRun {
                    epoch: b.epoch,
                    snapshot_seq: b.snapshot_seq,
                    cohort: self.profile.cohort.clone(),
                    keep_base,
                    pass: b.resume_after.map_or(0, |k| k.pass),
                    after_nhs: b.resume_after.map(|k| k.nhs),
                    last_key: b.resume_after,
                    sent_after_snapshot: held_after(b.snapshot_seq),
                };
                self.pull_out.push_back(ToUnit::Welcome(Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    hub_time: now,
                    head_seq: head,
                    mode: SyncMode::Rebaseline {
                        epoch: b.epoch,
                        snapshot_seq: b.snapshot_seq,
                        cohort: self.profile.cohort.clone(),
                        resume_after: b.resume_after,
                        reason: RebaselineReason::Resume,
                    },
                }));
                self.progress.baseline_epoch = Some(b.epoch);
                self.phase = Phase::Baseline(run);
                return Ok(());
            }
        }

        let reason = if c > head {
            Some(RebaselineReason::CursorAhead)
        } else if c == 0 && cache_cohort.is_empty() && !self.profile.cohort.is_empty() {
            Some(RebaselineReason::Cold)
        } else if cache_cohort != self.profile.cohort {
            Some(RebaselineReason::CohortChanged)
        } else if c.saturating_add(1) < oldest || h.baseline.is_some() {
            // (An unfinished baseline that cannot be resumed had its snapshot compacted away.)
            Some(RebaselineReason::Horizon)
        } else {
            None
        };
        match reason {
            Some(reason) => self.start_baseline(now, reason, keep_base, feed),
            None => {
                self.pull_out.push_back(ToUnit::Welcome(Welcome {
                    protocol_version: PROTOCOL_VERSION,
                    hub_time: now,
                    head_seq: head,
                    mode: SyncMode::Incremental { from_seq: c + 1 },
                }));
                self.progress.acked_cursor = Some(c);
                self.catchup_skip = held_after(c);
                self.next_seq = c + 1;
                self.scanned_to = c;
                self.phase = Phase::Incremental;
                Ok(())
            }
        }
    }

    fn start_baseline<F: HubFeed + ?Sized>(
        &mut self,
        now: UnixMillis,
        reason: RebaselineReason,
        keep_base: Option<(u64, Vec<CohortSpec>)>,
        feed: &F,
    ) -> Result<(), HubError> {
        let head = feed.head_seq()?;
        self.epoch_high = self
            .epoch_high
            .checked_add(1)
            .ok_or(HubError::BadRequest("baseline epochs exhausted"))?;
        let epoch = self.epoch_high;
        let keep_base = if reason == RebaselineReason::CursorAhead {
            None
        } else {
            keep_base
        };
        self.pull_out.push_back(ToUnit::Welcome(Welcome {
            protocol_version: PROTOCOL_VERSION,
            hub_time: now,
            head_seq: head,
            mode: SyncMode::Rebaseline {
                epoch,
                snapshot_seq: head,
                cohort: self.profile.cohort.clone(),
                resume_after: None,
                reason,
            },
        }));
        self.live_sent = false;
        self.catchup_skip.clear();
        self.progress.live = false;
        self.progress.baseline_epoch = Some(epoch);
        self.phase = Phase::Baseline(BaselineRun {
            epoch,
            snapshot_seq: head,
            cohort: self.profile.cohort.clone(),
            keep_base,
            pass: 0,
            after_nhs: None,
            last_key: None,
            sent_after_snapshot: BTreeMap::new(),
        });
        Ok(())
    }

    fn on_ack(&mut self, upto: u64) -> Result<(), HubError> {
        if upto >= self.next_batch_no {
            return Err(HubError::BadRequest(
                "acknowledgement of a batch never sent",
            ));
        }
        while self.inflight.front().is_some_and(|f| f.batch_no <= upto) {
            if let Some(f) = self.inflight.pop_front() {
                if let Some(c) = f.cursor_after {
                    self.progress.acked_cursor = Some(c);
                }
            }
        }
        Ok(())
    }

    fn on_fetch<F: HubFeed + ?Sized>(
        &mut self,
        request_id: u64,
        nhs: &NhsNumber,
        feed: &F,
    ) -> Result<(), HubError> {
        if self.fetch_out.len() >= self.config.fetch_queue_max {
            return Err(HubError::BadRequest("too many fetches outstanding"));
        }
        let outcome = match feed.get(nhs)? {
            Some(cur) => match cur.body {
                FeedBody::Record(record) if !cur.meta.withdrawn => {
                    let signature = sign_fetched(&self.key, nhs, cur.version, record.as_slice());
                    FetchOutcome::Found {
                        version: cur.version,
                        record,
                        signature,
                    }
                }
                _ => FetchOutcome::Withdrawn,
            },
            None => FetchOutcome::NotFound,
        };
        self.fetch_out.push_back(ToUnit::Fetched {
            request_id,
            outcome,
        });
        Ok(())
    }

    fn pump<F: HubFeed + ?Sized>(&mut self, now: UnixMillis, feed: &F) -> Result<(), HubError> {
        // Each step sends at most one batch; the window bounds the loop.
        while self.inflight.len() < self.config.window_batches {
            let sent = match self.phase {
                Phase::Baseline(_) => self.baseline_step(feed)?,
                Phase::Incremental => self.incremental_step(now, feed)?,
                Phase::AwaitHello | Phase::Closed => false,
            };
            if !sent {
                break;
            }
        }
        Ok(())
    }

    fn send_batch(&mut self, kind: BatchKind, changes: Vec<Change>, cursor_after: Option<u64>) {
        let batch_no = self.next_batch_no;
        self.next_batch_no += 1;
        let signature = sign_batch(&self.key, &kind, &changes);
        let p = &mut self.progress;
        p.batches_sent += 1;
        for c in &changes {
            match c {
                Change::Upsert { record, .. } => {
                    p.records_sent += 1;
                    p.record_bytes_sent += record.len() as u64;
                }
                Change::Keep { .. } => p.keeps_sent += 1,
                Change::Withdraw { .. } => p.withdrawals_sent += 1,
            }
        }
        self.inflight.push_back(InFlight {
            batch_no,
            cursor_after,
        });
        self.pull_out.push_back(ToUnit::Batch(Batch {
            batch_no,
            kind,
            changes,
            signature,
        }));
    }

    /// Sends the next baseline batch (or the baseline's end). Returns whether it sent one.
    fn baseline_step<F: HubFeed + ?Sized>(&mut self, feed: &F) -> Result<bool, HubError> {
        let Phase::Baseline(run) = &mut self.phase else {
            return Ok(false);
        };
        let cfg = &self.config;
        let mut changes = Vec::new();
        let (mut records, mut bytes, mut examined) = (0usize, 0usize, 0usize);
        let mut through = None;
        'scan: while run.pass <= 1 {
            let filter = CohortFilter {
                specs: &run.cohort,
                critical_only: run.pass == 0,
            };
            let limit = cfg.scan_entries_max.saturating_sub(examined).clamp(1, 1024);
            let metas = feed.current_metas(&filter, run.after_nhs.as_ref(), limit)?;
            let exhausted = metas.len() < limit;
            // Records are read a few dozen at a time ([`HubFeed::get_many`]: one round trip
            // on a database-backed feed), just ahead of where the scan needs them.
            let mut read: HashMap<NhsNumber, Option<CurrentRecord>> = HashMap::new();
            for (i, m) in metas.iter().enumerate() {
                let nhs = m.meta.nhs;
                let change = if run.pass == 1 && sent_in_pass_0(run, m) {
                    None // unchanged since pass 0 saw it, so sent (or kept) there
                } else if kept(run, m) {
                    Some(Change::Keep {
                        seq: m.seq,
                        nhs,
                        version: m.version,
                    })
                } else {
                    if !read.contains_key(&nhs) {
                        let want: Vec<NhsNumber> = metas[i..]
                            .iter()
                            .filter(|m| {
                                !(kept(run, m) || (run.pass == 1 && sent_in_pass_0(run, m)))
                            })
                            .take(READ_AHEAD)
                            .map(|m| m.meta.nhs)
                            .collect();
                        let got = feed.get_many(&want)?;
                        read.extend(want.into_iter().zip(got));
                    }
                    match read.remove(&nhs).flatten() {
                        Some(cur) => match cur.body {
                            FeedBody::Record(record) if in_cohort(&run.cohort, &cur.meta) => {
                                Some(Change::Upsert {
                                    seq: cur.seq,
                                    nhs,
                                    version: cur.version,
                                    record,
                                })
                            }
                            _ => None,
                        },
                        None => None,
                    }
                };
                if let Some(ch) = change {
                    let is_record = matches!(ch, Change::Upsert { .. });
                    let full = records + usize::from(is_record) > cfg.batch_records_max
                        || bytes + ch.wire_size() > cfg.batch_bytes_max
                        || changes.len() + 1 > cfg.batch_changes_max;
                    if full && !changes.is_empty() {
                        break 'scan;
                    }
                    records += usize::from(is_record);
                    bytes += ch.wire_size();
                    if is_record
                        && ch.seq() > run.snapshot_seq
                        && run.sent_after_snapshot.len() < cfg.skip_memory_max
                    {
                        run.sent_after_snapshot.insert(nhs, ch.version());
                    }
                    changes.push(ch);
                }
                run.after_nhs = Some(nhs);
                through = Some(BaselineKey {
                    pass: run.pass,
                    nhs,
                });
                examined += 1;
                if examined >= cfg.scan_entries_max {
                    break 'scan;
                }
            }
            if exhausted {
                run.pass += 1;
                run.after_nhs = None;
                if through.is_some() {
                    // A batch never spans two passes: its changes all belong to `through.pass`.
                    break 'scan;
                }
            }
        }
        if let Some(through) = through {
            let kind = BatchKind::Baseline {
                epoch: run.epoch,
                after: run.last_key,
                through,
            };
            run.last_key = Some(through);
            self.send_batch(kind, changes, None);
            return Ok(true);
        }
        let (epoch, snapshot_seq) = (run.epoch, run.snapshot_seq);
        self.catchup_skip = std::mem::take(&mut run.sent_after_snapshot);
        self.send_batch(
            BatchKind::BaselineDone {
                epoch,
                snapshot_seq,
            },
            Vec::new(),
            Some(snapshot_seq),
        );
        self.progress.baseline_epoch = None;
        self.next_seq = snapshot_seq + 1;
        self.scanned_to = snapshot_seq;
        self.live_sent = false;
        self.phase = Phase::Incremental;
        Ok(true)
    }

    /// What one feed entry means for this unit.
    fn decide(&self, e: &FeedEntry) -> Option<Change> {
        let cohort = &self.profile.cohort;
        match &e.body {
            // Objections and deletions go to every unit: any of them may hold an on-demand copy.
            FeedBody::Withdrawn(reason) => Some(Change::Withdraw {
                seq: e.seq,
                nhs: e.nhs,
                version: e.version,
                reason: *reason,
            }),
            FeedBody::Record(record) => {
                if in_cohort(cohort, &e.meta) {
                    Some(Change::Upsert {
                        seq: e.seq,
                        nhs: e.nhs,
                        version: e.version,
                        record: record.clone(),
                    })
                } else if e.previous.as_ref().is_some_and(|p| in_cohort(cohort, p)) {
                    Some(Change::Withdraw {
                        seq: e.seq,
                        nhs: e.nhs,
                        version: e.version,
                        reason: WithdrawReason::CohortExit,
                    })
                } else {
                    None
                }
            }
        }
    }

    /// Sends the next feed batch, or `Live` once caught up. Returns whether it sent a batch.
    fn incremental_step<F: HubFeed + ?Sized>(
        &mut self,
        now: UnixMillis,
        feed: &F,
    ) -> Result<bool, HubError> {
        let cfg = self.config.clone();
        let start = self.scanned_to.max(self.next_seq - 1);
        let mut last = start;
        let mut changes = Vec::new();
        let (mut records, mut bytes, mut examined) = (0usize, 0usize, 0usize);
        let mut reached_end = false;
        'scan: loop {
            let limit = cfg.scan_entries_max.saturating_sub(examined).clamp(1, 1024);
            let entries = feed.changes_after(last, limit)?;
            let compacted = feed.oldest_retained_seq()? > last + 1
                || entries.first().is_some_and(|e| e.seq != last + 1);
            if compacted {
                // The entries this unit needs next are gone: re-baseline it, keeping what it has.
                let keep_base = Some((self.next_seq - 1, self.profile.cohort.clone()));
                self.start_baseline(now, RebaselineReason::Horizon, keep_base, feed)?;
                return Ok(true);
            }
            let n = entries.len();
            for e in entries {
                let already_sent = match self.catchup_skip.get(&e.nhs) {
                    Some(&v) if e.version <= v => {
                        if e.version == v {
                            self.catchup_skip.remove(&e.nhs);
                        }
                        true
                    }
                    Some(_) => {
                        self.catchup_skip.remove(&e.nhs);
                        false
                    }
                    None => false,
                };
                if let Some(ch) = self.decide(&e).filter(|_| !already_sent) {
                    let is_record = matches!(ch, Change::Upsert { .. });
                    let full = records + usize::from(is_record) > cfg.batch_records_max
                        || bytes + ch.wire_size() > cfg.batch_bytes_max
                        || changes.len() + 1 > cfg.batch_changes_max;
                    if full && !changes.is_empty() {
                        break 'scan;
                    }
                    records += usize::from(is_record);
                    bytes += ch.wire_size();
                    changes.push(ch);
                }
                last = e.seq;
                examined += 1;
                if examined >= cfg.scan_entries_max {
                    break 'scan;
                }
            }
            if n < limit {
                reached_end = true;
                break;
            }
        }
        let pending = last - (self.next_seq - 1);
        if changes.is_empty() {
            if pending == 0 {
                // Nothing new at all.
                if !self.live_sent {
                    self.live_sent = true;
                    self.progress.live = true;
                    self.pull_out.push_back(ToUnit::Live {
                        head_seq: self.next_seq - 1,
                    });
                }
                return Ok(false);
            }
            if reached_end && self.live_sent && pending < cfg.live_idle_advance_seqs {
                // Live, and nothing for this unit: remember how far we looked, send nothing.
                self.scanned_to = last;
                return Ok(false);
            }
        }
        let first_seq = self.next_seq;
        self.send_batch(
            BatchKind::Feed {
                first_seq,
                last_seq: last,
            },
            changes,
            Some(last),
        );
        self.next_seq = last + 1;
        self.scanned_to = last;
        Ok(true)
    }
}

/// How many records a baseline scan reads in one [`HubFeed::get_many`].
const READ_AHEAD: usize = 64;

/// Pass 1 of a baseline: this critical record was unchanged since pass 0 saw it, so it was
/// sent (or kept) there.
fn sent_in_pass_0(run: &BaselineRun, m: &CurrentMeta) -> bool {
    m.meta.critical
        && (m.seq <= run.snapshot_seq
            || run.sent_after_snapshot.get(&m.meta.nhs) == Some(&m.version))
}

/// The unit keeps this record from its previous cohort's copy (nothing to send but a `Keep`).
fn kept(run: &BaselineRun, m: &CurrentMeta) -> bool {
    run.keep_base
        .as_ref()
        .is_some_and(|(c, cohort)| m.seq <= *c && in_cohort(cohort, &m.meta))
}
