//! The unit's end of sync: [`UnitSession`], one per connection, sans-IO.
//!
//! The driver (edge-daemon) feeds it decoded messages ([`UnitSession::handle_message`]), the
//! clock ([`UnitSession::handle_timeout`]) and the completion of storage work
//! ([`UnitSession::batch_applied`]); it takes out messages to send
//! ([`UnitSession::poll_transmit`]) and work to do ([`UnitSession::poll_event`]).
//!
//! # What the driver must do with an [`UnitEvent::Apply`]
//!
//! In **one atomic storage transaction**: apply the changes and store `apply.state` (the new
//! [`SyncState`], e.g. as CBOR via [`SyncState::encode`]). [`super::store::apply_to`] does
//! exactly this over any [`super::store::UnitStore`]; use it. After the commit, call
//! [`UnitSession::batch_applied`] with the batch number and the report; only then is the batch
//! acknowledged to the hub. Applies are handed out in order and must be applied in order.
//!
//! After a crash, build a new session from the last committed `SyncState`: the hub resumes
//! exactly there. If any session call returns an error, apply no further `Apply` the session
//! handed out and drop the session (and the connection); reconnect with back-off. After a
//! connection loss ([`UnitSession::connection_lost`]), the Applies already handed out were
//! verified and may still be applied — that saves their re-sending.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::cohort::{cohort_entries, normalize_cohort, same_cohort, MAX_COHORT_ENTRIES};
use super::sign::{verify_batch_digests, verify_fetched};
use super::wire::{
    BaselineProgress, Batch, BatchKind, BearerToken, Bytes, Change, FetchOutcome, FetchRefusal,
    Held, Hello, RebaselineReason, RefusalCode, SyncMode, ToHub, ToUnit, UnitHealth, Welcome,
    MAX_HELD,
};
use super::PROTOCOL_VERSION;
use crate::audit::Purpose;
use crate::cbor::{self, CborError, MAX_CBOR_BYTES};
use crate::ids::{CohortSpec, DeviceId};
use crate::nhs::NhsNumber;
use crate::time::UnixMillis;

/// The most changes one batch may carry (a bound on work per message).
pub const MAX_BATCH_CHANGES: usize = 65_536;

/// The unit's durable sync position, stored atomically with the cache it describes.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncState {
    /// The last feed sequence number the cache reflects (0: none).
    pub cursor: u64,
    /// The baseline generation of the cache's records (0: none).
    pub epoch: u64,
    /// The cohort the cache reflects (empty: assume nothing).
    pub cohort: Vec<CohortSpec>,
    /// An unfinished baseline.
    pub baseline: Option<BaselineProgress>,
    /// Versions received in the current baseline past its snapshot (at most [`MAX_HELD`]),
    /// until the cursor passes them: the hub skips them instead of re-sending after a drop.
    #[serde(default)]
    pub held: Vec<Held>,
}

impl SyncState {
    pub fn encode(&self) -> Result<Vec<u8>, CborError> {
        cbor::to_vec(self)
    }
    pub fn decode(bytes: &[u8]) -> Result<Self, CborError> {
        cbor::from_slice(bytes)
    }
    /// The highest baseline generation this unit has used.
    pub fn epoch_high(&self) -> u64 {
        self.baseline
            .as_ref()
            .map_or(self.epoch, |b| b.epoch.max(self.epoch))
    }
    /// Stop vouching for the cache's content: the next hello asks for a baseline that sends
    /// every record (no keeps) and does not resume an unfinished one. The cursor stays.
    pub fn distrust_cache(&mut self) {
        self.cohort.clear();
        self.held.clear();
        if let Some(b) = &mut self.baseline {
            b.cohort.clear();
        }
    }
}

/// What one apply did (the report `store::apply_to` returns and [`UnitSession::batch_applied`]
/// takes; it lives here so `store` depends on `unit` and not the other way round).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub written: u64,
    pub kept: u64,
    pub removed: u64,
    /// Feed entries older than the cached version, skipped.
    pub stale_skipped: u64,
    pub evicted: u64,
    /// Keeps naming a version the cache does not hold (should never happen; reported).
    pub keep_mismatches: u64,
}

/// What an [`Apply`] is, for the driver's bookkeeping and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApplyKind {
    /// Feed batch `first_seq..=last_seq`: upserts and withdrawals, applied only where they are
    /// not older than what the cache holds.
    Feed { first_seq: u64, last_seq: u64 },
    /// Part of baseline `epoch`: upserts and keeps, marking each record as part of it.
    Baseline { epoch: u64 },
    /// Baseline `epoch` complete: evict every record not marked with it.
    FinishBaseline { epoch: u64, snapshot_seq: u64 },
}

/// One durable step for the driver (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Apply {
    pub batch_no: u64,
    pub kind: ApplyKind,
    /// The baseline generation to tag written records with.
    pub epoch: u64,
    /// Verified changes.
    pub changes: Vec<Change>,
    /// Each change's record digest as verifying the batch computed it (`None` but for upserts;
    /// may be empty, and then the store computes what it needs).
    pub record_digests: Vec<Option<[u8; 32]>>,
    /// The sync state to store in the same transaction.
    pub state: SyncState,
}

/// The answer to [`UnitSession::fetch`]. Outcomes, not errors: the LAN API turns all but
/// `Found` into an explicit "not cached".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchResult {
    /// Verified current version.
    Found {
        version: u64,
        record: Bytes,
    },
    NotFound,
    /// Objection or deletion: drop any copy the unit holds.
    Withdrawn,
    /// The budget ran out first.
    TimedOut,
    /// No usable connection.
    NotConnected,
    /// Too many fetches outstanding.
    Busy,
    /// The hub refused to read it for this unit and caller (no or bad token, deny list, role,
    /// fetch ceiling): nothing was read.
    Refused {
        reason: FetchRefusal,
    },
}

/// Work and news for the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UnitEvent {
    /// Apply atomically, then [`UnitSession::batch_applied`].
    Apply(Apply),
    /// A baseline begins or resumes: the cache is partial until it finishes (show it).
    BeginRebaseline {
        epoch: u64,
        reason: RebaselineReason,
    },
    /// The hub's clock at connection: `offset_ms` = hub time − local time.
    HubTime {
        hub_time: UnixMillis,
        offset_ms: i64,
    },
    /// Everything the hub had is applied; from now on changes are pushed live.
    CaughtUp { cursor: u64 },
    /// The answer to a fetch.
    Fetched {
        request_id: u64,
        nhs: NhsNumber,
        result: FetchResult,
    },
    /// The hub refused a fetch (reading nothing); the matching [`UnitEvent::Fetched`] follows
    /// with [`FetchResult::Refused`]. For the driver's log and metrics.
    FetchRefused {
        request_id: u64,
        nhs: NhsNumber,
        reason: FetchRefusal,
    },
    /// The fleet's signed shift-token deny list, as the hub sent it (raw, unverified): the
    /// driver verifies it with the fleet's token key and, when it supersedes the one in force,
    /// applies it (tokens it names are refused from then on).
    DenyList { list: Bytes },
    /// The hub renewed this unit's certificate (DER chain, unverified): the driver checks it
    /// names this unit, carries the unit's key and chains to the fleet root, then keeps it.
    Certificate { chain: Vec<Bytes> },
    /// The hub will not renew the certificate now.
    RenewalRefused { why: String },
    /// A record the hub pushed to this ED kiosk because a crew is bringing the patient in
    /// (signature verified): keep it as an on-demand copy.
    Prefetched {
        nhs: NhsNumber,
        version: u64,
        record: Bytes,
    },
}

/// Limits and budgets.
#[derive(Debug, Clone)]
pub struct UnitConfig {
    /// How long an on-demand fetch may take.
    pub fetch_budget_ms: i64,
    /// Fetches outstanding at once.
    pub fetches_max: usize,
}

impl Default for UnitConfig {
    fn default() -> Self {
        UnitConfig {
            fetch_budget_ms: 1_500,
            fetches_max: 16,
        }
    }
}

/// Why the session ended. Nothing of a refused batch is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    #[error("the hub speaks sync protocol version {hub}; this unit speaks {unit}")]
    VersionMismatch { hub: u16, unit: u16 },
    #[error("the hub refused this unit ({code:?}): {message}")]
    Refused { code: RefusalCode, message: String },
    #[error("unexpected {got} message {when}")]
    Unexpected {
        got: &'static str,
        when: &'static str,
    },
    #[error("batch {got} arrived where batch {expected} was due")]
    BatchNumber { expected: u64, got: u64 },
    #[error("the signature of batch {batch_no} does not verify; nothing applied")]
    BadSignature { batch_no: u64 },
    #[error("the signature of a fetched record does not verify")]
    BadFetchSignature,
    #[error("feed batch starts at {first_seq}, not right after the cursor {cursor}")]
    OutOfOrder { cursor: u64, first_seq: u64 },
    #[error("baseline batch does not continue from the baseline's position")]
    BaselineOutOfOrder,
    #[error("batch for baseline {got}, but the current baseline is {expected:?}")]
    WrongEpoch { expected: Option<u64>, got: u64 },
    #[error("invalid batch: {0}")]
    InvalidBatch(&'static str),
    #[error("invalid welcome: {0}")]
    InvalidWelcome(&'static str),
    #[error("batch {got} reported applied, but {expected:?} was next")]
    ApplyOrder { expected: Option<u64>, got: u64 },
    #[error("{0} kept records do not match the cache; the next connection re-sends them all")]
    KeepMismatch(u64),
    #[error("the session has ended")]
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitWelcome,
    Incremental,
    Baseline,
    Ended,
}

#[derive(Debug)]
struct PendingFetch {
    nhs: NhsNumber,
    token: BearerToken,
    purpose: Purpose,
    deadline: UnixMillis,
    sent: bool,
}

/// The unit's sync session for one connection.
#[derive(Debug)]
pub struct UnitSession {
    device_id: DeviceId,
    hub_key: Vec<u8>,
    config: UnitConfig,
    durable: SyncState,
    projected: SyncState,
    phase: Phase,
    expected_batch: u64,
    in_apply: VecDeque<(u64, SyncState)>,
    transmit: VecDeque<ToHub>,
    events: VecDeque<UnitEvent>,
    fetches: BTreeMap<u64, PendingFetch>,
    next_request: u64,
    live_head: Option<u64>,
    caught_up: bool,
    welcomed: bool,
    batches_received: u64,
}

impl UnitSession {
    /// A session for a new connection, from the last committed sync state. The hello is queued.
    pub fn new(
        device_id: DeviceId,
        state: SyncState,
        hub_public_key: &[u8],
        config: UnitConfig,
    ) -> Self {
        let hello = ToHub::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            device_id: device_id.clone(),
            cursor: state.cursor,
            epoch: state.epoch,
            cohort: state.cohort.clone(),
            baseline: state.baseline.clone(),
            held: state.held.clone(),
            health: None,
            // Every unit's pull reader (`InflateDeframer`) reads zstd as well as deflate.
            compression: vec![super::compress::ZSTD.to_owned()],
        });
        UnitSession {
            device_id,
            hub_key: hub_public_key.to_vec(),
            config,
            durable: state.clone(),
            projected: state,
            phase: Phase::AwaitWelcome,
            expected_batch: 1,
            in_apply: VecDeque::new(),
            transmit: VecDeque::from([hello]),
            events: VecDeque::new(),
            fetches: BTreeMap::new(),
            next_request: 1,
            live_head: None,
            caught_up: false,
            welcomed: false,
            batches_received: 0,
        }
    }

    pub fn device_id(&self) -> &DeviceId {
        &self.device_id
    }

    /// The last sync state the driver reported committed.
    pub fn durable_state(&self) -> &SyncState {
        &self.durable
    }

    /// True once the session has ended (error, refusal or connection loss).
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// True once every change the hub had when it said `Live` is applied (until a re-baseline
    /// or the end of the session).
    pub fn is_caught_up(&self) -> bool {
        self.caught_up
    }

    /// True while a baseline is under way (the cache is partial).
    pub fn in_baseline(&self) -> bool {
        self.projected.baseline.is_some()
    }

    /// Batches received on this connection.
    pub fn batches_received(&self) -> u64 {
        self.batches_received
    }

    /// The next message to send, in order.
    /// Attach the unit's health summary to the hello, if the hello has not been sent yet.
    pub fn set_health(&mut self, health: UnitHealth) {
        for m in self.transmit.iter_mut() {
            if let ToHub::Hello(h) = m {
                h.health = Some(Box::new(health));
                return;
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<ToHub> {
        self.transmit.pop_front()
    }

    /// The next event for the driver.
    pub fn poll_event(&mut self) -> Option<UnitEvent> {
        self.events.pop_front()
    }

    /// When [`Self::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<UnixMillis> {
        self.fetches.values().map(|f| f.deadline).min()
    }

    /// Expire fetches whose budget is spent.
    pub fn handle_timeout(&mut self, now: UnixMillis) {
        let expired: Vec<u64> = self
            .fetches
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(f) = self.fetches.remove(&id) {
                self.events.push_back(UnitEvent::Fetched {
                    request_id: id,
                    nhs: f.nhs,
                    result: FetchResult::TimedOut,
                });
            }
        }
    }

    /// Ask the hub for one patient's current summary within the fetch budget, on behalf of
    /// the staff member whose shift `token` asked, for `purpose` (the hub verifies both and
    /// fetches nothing without a valid token). The answer arrives as [`UnitEvent::Fetched`]
    /// with the returned request id (at once when the session cannot fetch).
    pub fn fetch(
        &mut self,
        now: UnixMillis,
        nhs: NhsNumber,
        token: BearerToken,
        purpose: Purpose,
    ) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        let immediate = if self.phase == Phase::Ended {
            Some(FetchResult::NotConnected)
        } else if self.fetches.len() >= self.config.fetches_max {
            Some(FetchResult::Busy)
        } else {
            None
        };
        if let Some(result) = immediate {
            self.events.push_back(UnitEvent::Fetched {
                request_id: id,
                nhs,
                result,
            });
            return id;
        }
        let sent = self.welcomed;
        if sent {
            self.transmit.push_back(ToHub::Fetch {
                request_id: id,
                nhs,
                token: token.clone(),
                purpose,
            });
        }
        self.fetches.insert(
            id,
            PendingFetch {
                nhs,
                token,
                purpose,
                deadline: now.plus_ms(self.config.fetch_budget_ms),
                sent,
            },
        );
        id
    }

    /// Ask the hub to renew this unit's certificate (sent once welcomed; answered with
    /// [`UnitEvent::Certificate`] or [`UnitEvent::RenewalRefused`]). False when the session
    /// cannot ask now (not yet welcomed, or ended).
    pub fn renew_certificate(&mut self) -> bool {
        if self.phase == Phase::Ended || !self.welcomed {
            return false;
        }
        self.transmit.push_back(ToHub::Renew);
        true
    }

    /// The connection is gone. Pending fetches answer `NotConnected`; Applies already handed
    /// out stay valid.
    pub fn connection_lost(&mut self) {
        self.end();
    }

    /// The driver committed the Apply numbered `batch_no` (with its report from
    /// [`super::store::apply_to`]).
    pub fn batch_applied(
        &mut self,
        batch_no: u64,
        report: &ApplyReport,
    ) -> Result<(), ProtocolError> {
        match self.in_apply.front() {
            Some((n, _)) if *n == batch_no => {}
            other => {
                let expected = other.map(|(n, _)| *n);
                return Err(ProtocolError::ApplyOrder {
                    expected,
                    got: batch_no,
                });
            }
        }
        let Some((_, state)) = self.in_apply.pop_front() else {
            return Err(ProtocolError::Closed);
        };
        self.durable = state;
        if report.keep_mismatches > 0 {
            // `apply_to` already stored the distrusted state.
            self.durable.distrust_cache();
            return Err(self.fail(ProtocolError::KeepMismatch(report.keep_mismatches)));
        }
        if self.phase == Phase::Ended {
            return Ok(());
        }
        if let Some(ToHub::Ack { upto_batch }) = self.transmit.back_mut() {
            *upto_batch = batch_no;
        } else {
            self.transmit.push_back(ToHub::Ack {
                upto_batch: batch_no,
            });
        }
        self.check_caught_up();
        Ok(())
    }

    /// Handle one message from the hub. On error the session has ended.
    pub fn handle_message(&mut self, now: UnixMillis, msg: ToUnit) -> Result<(), ProtocolError> {
        if self.phase == Phase::Ended {
            return Err(ProtocolError::Closed);
        }
        let r = match msg {
            ToUnit::Welcome(w) => self.on_welcome(now, w),
            ToUnit::Batch(b) => self.on_batch(b),
            ToUnit::Live { head_seq } => {
                if self.phase == Phase::AwaitWelcome {
                    Err(ProtocolError::Unexpected {
                        got: "live",
                        when: "before the welcome",
                    })
                } else {
                    self.live_head = Some(head_seq);
                    self.check_caught_up();
                    Ok(())
                }
            }
            ToUnit::Fetched {
                request_id,
                outcome,
            } => self.on_fetched(request_id, outcome),
            ToUnit::Refused { code, message } => Err(ProtocolError::Refused { code, message }),
            // The driver acts on a wipe order itself.
            ToUnit::Wipe { .. } => Err(ProtocolError::Unexpected {
                got: "wipe",
                when: "on the sync session",
            }),
            ToUnit::DenyList { list } => {
                if self.phase == Phase::AwaitWelcome {
                    Err(ProtocolError::Unexpected {
                        got: "deny list",
                        when: "before the welcome",
                    })
                } else {
                    self.events.push_back(UnitEvent::DenyList { list });
                    Ok(())
                }
            }
            ToUnit::Certificate { chain } => {
                if self.phase == Phase::AwaitWelcome {
                    Err(ProtocolError::Unexpected {
                        got: "certificate",
                        when: "before the welcome",
                    })
                } else if chain.is_empty() || chain.len() > super::wire::MAX_CHAIN {
                    Err(ProtocolError::Unexpected {
                        got: "certificate chain of the wrong length",
                        when: "renewing",
                    })
                } else {
                    self.events.push_back(UnitEvent::Certificate { chain });
                    Ok(())
                }
            }
            ToUnit::RenewalRefused { why } => {
                self.events.push_back(UnitEvent::RenewalRefused { why });
                Ok(())
            }
            ToUnit::Prefetched {
                nhs,
                version,
                record,
                signature,
            } => {
                if self.phase == Phase::AwaitWelcome {
                    Err(ProtocolError::Unexpected {
                        got: "pre-fetch",
                        when: "before the welcome",
                    })
                } else if record.len() > MAX_CBOR_BYTES {
                    Err(ProtocolError::InvalidBatch(
                        "pre-fetched record over the size limit",
                    ))
                } else if verify_fetched(
                    &self.hub_key,
                    &nhs,
                    version,
                    record.as_slice(),
                    signature.as_slice(),
                )
                .is_err()
                {
                    Err(ProtocolError::BadFetchSignature)
                } else {
                    self.events.push_back(UnitEvent::Prefetched {
                        nhs,
                        version,
                        record,
                    });
                    Ok(())
                }
            }
            // The driver handles audit acknowledgements on the audit stream.
            ToUnit::AuditAck { .. } => Err(ProtocolError::Unexpected {
                got: "audit ack",
                when: "on the sync session",
            }),
        };
        r.map_err(|e| self.fail(e))
    }

    fn end(&mut self) {
        self.phase = Phase::Ended;
        for (id, f) in std::mem::take(&mut self.fetches) {
            self.events.push_back(UnitEvent::Fetched {
                request_id: id,
                nhs: f.nhs,
                result: FetchResult::NotConnected,
            });
        }
        self.transmit.clear();
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.end();
        self.events.retain(|ev| !matches!(ev, UnitEvent::Apply(_)));
        e
    }

    fn check_caught_up(&mut self) {
        if self.caught_up || !self.in_apply.is_empty() || self.projected.baseline.is_some() {
            return;
        }
        // `Live` follows every batch sent before it, so once all are applied the cache holds
        // everything the hub had.
        if self.live_head.is_some() {
            self.caught_up = true;
            self.events.push_back(UnitEvent::CaughtUp {
                cursor: self.durable.cursor,
            });
        }
    }

    fn on_welcome(&mut self, now: UnixMillis, w: Welcome) -> Result<(), ProtocolError> {
        if w.protocol_version != PROTOCOL_VERSION {
            return Err(ProtocolError::VersionMismatch {
                hub: w.protocol_version,
                unit: PROTOCOL_VERSION,
            });
        }
        if self.welcomed {
            if !matches!(w.mode, SyncMode::Rebaseline { .. }) {
                return Err(ProtocolError::InvalidWelcome(
                    "a second welcome must start a baseline",
                ));
            }
        } else {
            self.welcomed = true;
            self.events.push_back(UnitEvent::HubTime {
                hub_time: w.hub_time,
                offset_ms: w.hub_time.0.saturating_sub(now.0),
            });
            for (id, f) in self.fetches.iter_mut().filter(|(_, f)| !f.sent) {
                f.sent = true;
                self.transmit.push_back(ToHub::Fetch {
                    request_id: *id,
                    nhs: f.nhs,
                    token: f.token.clone(),
                    purpose: f.purpose,
                });
            }
        }
        self.live_head = None;
        self.caught_up = false;
        match w.mode {
            SyncMode::Incremental { from_seq } => {
                if self.projected.baseline.is_some() {
                    return Err(ProtocolError::InvalidWelcome(
                        "incremental while a baseline is unfinished",
                    ));
                }
                if from_seq != self.projected.cursor.saturating_add(1) {
                    return Err(ProtocolError::OutOfOrder {
                        cursor: self.projected.cursor,
                        first_seq: from_seq,
                    });
                }
                self.phase = Phase::Incremental;
            }
            SyncMode::Rebaseline {
                epoch,
                snapshot_seq,
                cohort,
                resume_after,
                reason,
            } => {
                if cohort_entries(&cohort) > MAX_COHORT_ENTRIES {
                    return Err(ProtocolError::InvalidWelcome("cohort too large"));
                }
                match &self.projected.baseline {
                    Some(b) if b.epoch == epoch => {
                        if b.snapshot_seq != snapshot_seq
                            || b.resume_after != resume_after
                            || !same_cohort(&b.cohort, &cohort)
                        {
                            return Err(ProtocolError::InvalidWelcome(
                                "resumed baseline does not match this unit's",
                            ));
                        }
                    }
                    _ => {
                        if resume_after.is_some() {
                            return Err(ProtocolError::InvalidWelcome(
                                "resume of a baseline this unit does not have",
                            ));
                        }
                        if epoch <= self.projected.epoch_high() {
                            return Err(ProtocolError::InvalidWelcome("baseline epoch is not new"));
                        }
                        if snapshot_seq < self.projected.cursor
                            && reason != RebaselineReason::CursorAhead
                        {
                            return Err(ProtocolError::InvalidWelcome(
                                "baseline snapshot is behind the cursor",
                            ));
                        }
                        self.projected.held.clear();
                        self.projected.baseline = Some(BaselineProgress {
                            epoch,
                            snapshot_seq,
                            cohort: normalize_cohort(&cohort),
                            resume_after: None,
                        });
                    }
                }
                self.phase = Phase::Baseline;
                self.events
                    .push_back(UnitEvent::BeginRebaseline { epoch, reason });
            }
        }
        Ok(())
    }

    fn on_batch(&mut self, b: Batch) -> Result<(), ProtocolError> {
        if self.phase == Phase::AwaitWelcome {
            return Err(ProtocolError::Unexpected {
                got: "batch",
                when: "before the welcome",
            });
        }
        if b.batch_no != self.expected_batch {
            return Err(ProtocolError::BatchNumber {
                expected: self.expected_batch,
                got: b.batch_no,
            });
        }
        if b.changes.len() > MAX_BATCH_CHANGES {
            return Err(ProtocolError::InvalidBatch("too many changes"));
        }
        if b.changes
            .iter()
            .any(|c| matches!(c, Change::Upsert { record, .. } if record.len() > MAX_CBOR_BYTES))
        {
            return Err(ProtocolError::InvalidBatch("record over the size limit"));
        }
        let mut next = self.projected.clone();
        let (kind, epoch) = match &b.kind {
            BatchKind::Feed {
                first_seq,
                last_seq,
            } => {
                if self.phase != Phase::Incremental {
                    return Err(ProtocolError::Unexpected {
                        got: "feed batch",
                        when: "during a baseline",
                    });
                }
                if *first_seq != next.cursor.saturating_add(1) {
                    return Err(ProtocolError::OutOfOrder {
                        cursor: next.cursor,
                        first_seq: *first_seq,
                    });
                }
                if last_seq < first_seq {
                    return Err(ProtocolError::InvalidBatch("empty sequence range"));
                }
                let mut prev = first_seq - 1;
                for c in &b.changes {
                    if matches!(c, Change::Keep { .. }) {
                        return Err(ProtocolError::InvalidBatch("keep outside a baseline"));
                    }
                    if c.seq() <= prev || c.seq() > *last_seq {
                        return Err(ProtocolError::InvalidBatch(
                            "change sequence numbers out of range or order",
                        ));
                    }
                    prev = c.seq();
                }
                next.cursor = *last_seq;
                next.held.retain(|h| h.seq > *last_seq);
                (
                    ApplyKind::Feed {
                        first_seq: *first_seq,
                        last_seq: *last_seq,
                    },
                    next.epoch,
                )
            }
            BatchKind::Baseline {
                epoch,
                after,
                through,
            } => {
                let Some(p) = next.baseline.as_mut() else {
                    return Err(ProtocolError::WrongEpoch {
                        expected: None,
                        got: *epoch,
                    });
                };
                if p.epoch != *epoch {
                    return Err(ProtocolError::WrongEpoch {
                        expected: Some(p.epoch),
                        got: *epoch,
                    });
                }
                if p.resume_after != *after || after.is_some_and(|a| a >= *through) {
                    return Err(ProtocolError::BaselineOutOfOrder);
                }
                // Changes are in key order within `through`'s pass.
                let mut prev = after.filter(|a| a.pass == through.pass).map(|a| a.nhs);
                for c in &b.changes {
                    if matches!(c, Change::Withdraw { .. }) {
                        return Err(ProtocolError::InvalidBatch("withdrawal inside a baseline"));
                    }
                    let n = *c.nhs();
                    if prev.is_some_and(|p| n <= p) || n > through.nhs {
                        return Err(ProtocolError::InvalidBatch(
                            "baseline changes out of key order",
                        ));
                    }
                    prev = Some(n);
                }
                p.resume_after = Some(*through);
                let snapshot = p.snapshot_seq;
                for c in &b.changes {
                    if let Change::Upsert {
                        seq, nhs, version, ..
                    } = c
                    {
                        if *seq > snapshot {
                            next.held.retain(|h| h.nhs != *nhs);
                            if next.held.len() < MAX_HELD {
                                next.held.push(Held {
                                    nhs: *nhs,
                                    version: *version,
                                    seq: *seq,
                                });
                            }
                        }
                    }
                }
                (ApplyKind::Baseline { epoch: *epoch }, *epoch)
            }
            BatchKind::BaselineDone {
                epoch,
                snapshot_seq,
            } => {
                let Some(p) = next.baseline.take() else {
                    return Err(ProtocolError::WrongEpoch {
                        expected: None,
                        got: *epoch,
                    });
                };
                if p.epoch != *epoch {
                    return Err(ProtocolError::WrongEpoch {
                        expected: Some(p.epoch),
                        got: *epoch,
                    });
                }
                if p.snapshot_seq != *snapshot_seq {
                    return Err(ProtocolError::InvalidBatch(
                        "baseline finished at another snapshot",
                    ));
                }
                if !b.changes.is_empty() {
                    return Err(ProtocolError::InvalidBatch("changes in a baseline's end"));
                }
                next.cursor = *snapshot_seq;
                next.epoch = *epoch;
                next.cohort = p.cohort;
                (
                    ApplyKind::FinishBaseline {
                        epoch: *epoch,
                        snapshot_seq: *snapshot_seq,
                    },
                    *epoch,
                )
            }
        };
        let digests =
            verify_batch_digests(&self.hub_key, &b.kind, &b.changes, b.signature.as_slice())
                .map_err(|_| ProtocolError::BadSignature {
                    batch_no: b.batch_no,
                })?;
        if matches!(kind, ApplyKind::FinishBaseline { .. }) {
            self.phase = Phase::Incremental;
        }
        self.expected_batch += 1;
        self.batches_received += 1;
        self.projected = next;
        self.in_apply
            .push_back((b.batch_no, self.projected.clone()));
        self.events.push_back(UnitEvent::Apply(Apply {
            batch_no: b.batch_no,
            kind,
            epoch,
            changes: b.changes,
            record_digests: digests,
            state: self.projected.clone(),
        }));
        Ok(())
    }

    fn on_fetched(&mut self, request_id: u64, outcome: FetchOutcome) -> Result<(), ProtocolError> {
        let Some(f) = self.fetches.remove(&request_id) else {
            // Timed out already, or never asked: nothing to do.
            return Ok(());
        };
        let result = match outcome {
            FetchOutcome::Found {
                version,
                record,
                signature,
            } => {
                if record.len() > MAX_CBOR_BYTES {
                    return Err(ProtocolError::InvalidBatch(
                        "fetched record over the size limit",
                    ));
                }
                verify_fetched(
                    &self.hub_key,
                    &f.nhs,
                    version,
                    record.as_slice(),
                    signature.as_slice(),
                )
                .map_err(|_| ProtocolError::BadFetchSignature)?;
                FetchResult::Found { version, record }
            }
            FetchOutcome::NotFound => FetchResult::NotFound,
            FetchOutcome::Withdrawn => FetchResult::Withdrawn,
            // Nothing was read at the hub: the tablet is told the hub refused, and the refusal
            // is surfaced separately for the log.
            FetchOutcome::Refused { reason } => {
                self.events.push_back(UnitEvent::FetchRefused {
                    request_id,
                    nhs: f.nhs,
                    reason,
                });
                FetchResult::Refused { reason }
            }
        };
        self.events.push_back(UnitEvent::Fetched {
            request_id,
            nhs: f.nhs,
            result,
        });
        Ok(())
    }
}
