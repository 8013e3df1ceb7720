//! The audit-upload pipeline's policy, pure: when to read the journal and send a batch, how
//! many batches may await the hub's acknowledgement, what an acknowledgement lets the unit
//! record, when to give up on a stream and how long to back off before a fresh one. No I/O and
//! no clock reads: [`AuditUpload::on_event`] takes `now_ms` (any monotonic clock) and answers
//! the next [`UploadAction`]; the driver (`sync::audit`) performs it and reports how it went as
//! the next [`UploadEvent`].
//!
//! The pipeline: up to [`UploadConfig::pipeline`] batches in flight (the next one is read and
//! sent while the hub stores and fsyncs the one before); once a read finds the journal empty,
//! the next read waits for an acknowledgement, an append (the journal owner's wake-up), or the
//! poll fallback; after a batch shorter than the most a batch may hold, the next waits out
//! [`UploadConfig::linger_ms`] so that a steady trickle of events goes in batches rather than
//! one acknowledgement (and one upload-marker fsync) per event. Events are marked uploaded only
//! up to what the hub acknowledged; an acknowledgement short of what was sent, a missing
//! acknowledgement after [`UploadConfig::ack_timeout_ms`], or any stream or journal failure
//! drops the stream and backs off (doubling from [`UploadConfig::retry_min_ms`] to [`UploadConfig::retry_max_ms`],
//! back to the minimum after the next acknowledgement that moves the journal) before resending
//! from the last acknowledged event. The hub's store is idempotent on (device, seq), so a
//! resend is never counted twice.

use std::collections::VecDeque;

/// The pipeline's knobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadConfig {
    /// Batches in flight at once (the hub acknowledges them in order).
    pub pipeline: usize,
    /// Most events per batch.
    pub max_events: usize,
    /// Most bytes of events per batch.
    pub max_bytes: usize,
    /// How long the oldest batch may wait for its acknowledgement.
    pub ack_timeout_ms: u64,
    /// With nothing to send, look at the journal again after this long even without a wake-up.
    pub poll_ms: u64,
    /// After a batch shorter than `max_events`, the next is sent no sooner than this: under a
    /// steady stream of lookups the uploader otherwise sent a batch of a few events, and
    /// recorded its acknowledgement (two fsyncs), for nearly every append (a sixth of the
    /// unit's CPU under lookup load, BENCHMARKS.md issue 17). A full batch is followed at once.
    pub linger_ms: u64,
    /// The first back-off after a failure.
    pub retry_min_ms: u64,
    /// The longest back-off after repeated failures.
    pub retry_max_ms: u64,
}

/// How long an audit event may wait to join a batch ([`UploadConfig::linger_ms`]).
pub const LINGER_MS: u64 = 100;
/// The poll when nobody wakes the uploader on append (the journal owner has no wake-up).
pub const POLL_UNWOKEN_MS: u64 = 200;
/// The safety-net poll when the journal owner wakes the uploader on every append.
pub const POLL_WOKEN_MS: u64 = 5_000;

impl UploadConfig {
    /// The daemon's settings. `woken`: the journal owner signals every append (then the poll
    /// is only a safety net).
    pub fn new(woken: bool) -> UploadConfig {
        UploadConfig {
            pipeline: 2,
            max_events: edge_proto::sync::wire::MAX_AUDIT_BATCH,
            max_bytes: 6 << 20,
            ack_timeout_ms: 30_000,
            poll_ms: if woken {
                POLL_WOKEN_MS
            } else {
                POLL_UNWOKEN_MS
            },
            linger_ms: LINGER_MS,
            retry_min_ms: 1_000,
            retry_max_ms: 30_000,
        }
    }
}

/// What the driver reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadEvent {
    /// A fresh audit stream is open.
    Opened,
    /// Events `from..=last` went out as one batch.
    Sent { from: u64, last: u64 },
    /// The journal holds nothing from the `from` of the last [`UploadAction::Send`].
    Drained,
    /// The journal owner appended an event (the wake-up).
    Appended,
    /// The hub acknowledged its durable store up to `upto_seq` (for the oldest batch in flight).
    Acked { upto_seq: u64 },
    /// The journal recorded the upload (the last [`UploadAction::Mark`]).
    Marked,
    /// The stream or the journal failed (also: an unexpected message on the audit stream).
    Failed,
    /// Time passed (a deadline the last action gave was reached), or nothing happened.
    Tick,
}

/// What the driver does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadAction {
    /// Open a fresh audit stream (report `Opened` or `Failed`).
    Open,
    /// Read at most `max_events` events / `max_bytes` from seq `from` and send them as one
    /// batch (report `Sent`, `Drained` or `Failed`).
    Send {
        from: u64,
        max_events: usize,
        max_bytes: usize,
    },
    /// Record in the journal that everything up to `upto` is at the hub (report `Marked` or
    /// `Failed`).
    Mark { upto: u64 },
    /// Wait for the hub's acknowledgement of the oldest batch (report `Acked`), an append, or
    /// until `until_ms` (report `Tick`).
    AwaitAck { until_ms: u64 },
    /// Nothing to send: wait for an append or until `until_ms` (report `Tick`).
    Idle { until_ms: u64 },
    /// After a failure: drop the stream and wait until `until_ms` (report `Tick`).
    Backoff { until_ms: u64 },
}

/// An acknowledgement to record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ToMark {
    upto: u64,
    /// The hub kept less than the batch: resend from `upto + 1` once recorded.
    short: bool,
}

/// The pipeline's state (see the module documentation).
#[derive(Debug, Clone)]
pub struct AuditUpload {
    cfg: UploadConfig,
    /// Everything up to here is acknowledged and recorded.
    acked: u64,
    /// The next seq to read and send.
    next_from: u64,
    /// Batches sent, not yet acknowledged: (first seq, last seq), oldest first.
    in_flight: VecDeque<(u64, u64)>,
    stream_open: bool,
    /// The last read found the journal empty, at this time.
    drained_at: Option<u64>,
    /// Since when the oldest batch in flight has been awaiting its acknowledgement.
    ack_wait_since: u64,
    mark: Option<ToMark>,
    /// The last batch was short: the next waits until then ([`UploadConfig::linger_ms`]).
    linger_until: Option<u64>,
    /// Backing off until then.
    retry_at: Option<u64>,
    /// The next back-off.
    backoff_ms: u64,
    failures: u32,
}

impl AuditUpload {
    /// A pipeline for a journal whose events up to `uploaded_seq` are at the hub.
    pub fn new(cfg: UploadConfig, uploaded_seq: u64) -> AuditUpload {
        AuditUpload {
            cfg,
            acked: uploaded_seq,
            next_from: uploaded_seq.saturating_add(1),
            in_flight: VecDeque::new(),
            stream_open: false,
            drained_at: None,
            ack_wait_since: 0,
            mark: None,
            linger_until: None,
            retry_at: None,
            backoff_ms: cfg.retry_min_ms,
            failures: 0,
        }
    }

    /// Take in what happened at `now_ms`; the next thing to do.
    pub fn on_event(&mut self, now_ms: u64, ev: UploadEvent) -> UploadAction {
        self.apply(now_ms, ev);
        self.next(now_ms)
    }

    /// An audit batch awaits the hub's acknowledgement (work outstanding for the watchdog).
    pub fn awaiting_ack(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Everything up to this seq is acknowledged and recorded.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Failures since the last acknowledgement that moved the journal.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn apply(&mut self, now_ms: u64, ev: UploadEvent) {
        match ev {
            UploadEvent::Opened => {
                self.stream_open = true;
                self.next_from = self.acked.saturating_add(1);
                self.in_flight.clear();
                self.drained_at = None;
            }
            UploadEvent::Sent { from, last } => {
                if self.in_flight.is_empty() {
                    self.ack_wait_since = now_ms;
                }
                self.in_flight.push_back((from, last));
                self.next_from = last.saturating_add(1);
                let events = last.saturating_sub(from).saturating_add(1);
                self.linger_until = (events < self.cfg.max_events as u64)
                    .then(|| now_ms.saturating_add(self.cfg.linger_ms));
            }
            UploadEvent::Drained => self.drained_at = Some(now_ms),
            UploadEvent::Appended => {
                // In flight, the next read follows the acknowledgement anyway.
                if self.in_flight.is_empty() {
                    self.drained_at = None;
                }
            }
            UploadEvent::Acked { upto_seq } => {
                let Some((from, last)) = self.in_flight.pop_front() else {
                    return self.fail(now_ms);
                };
                let upto = upto_seq.min(last);
                self.ack_wait_since = now_ms;
                self.drained_at = None;
                if upto >= from {
                    self.mark = Some(ToMark {
                        upto,
                        short: upto < last,
                    });
                } else {
                    self.fail(now_ms);
                }
            }
            UploadEvent::Marked => {
                if let Some(m) = self.mark.take() {
                    self.acked = self.acked.max(m.upto);
                    self.backoff_ms = self.cfg.retry_min_ms;
                    self.failures = 0;
                    if m.short {
                        self.fail(now_ms);
                    }
                }
            }
            UploadEvent::Failed => self.fail(now_ms),
            UploadEvent::Tick => {}
        }
    }

    fn next(&mut self, now_ms: u64) -> UploadAction {
        if let Some(t) = self.retry_at {
            if now_ms < t {
                return UploadAction::Backoff { until_ms: t };
            }
            self.retry_at = None;
        }
        if !self.stream_open {
            return UploadAction::Open;
        }
        if let Some(m) = self.mark {
            return UploadAction::Mark { upto: m.upto };
        }
        if let Some(at) = self.drained_at {
            if self.in_flight.is_empty() && now_ms >= at.saturating_add(self.cfg.poll_ms) {
                self.drained_at = None;
            }
        }
        let lingering = self.linger_until.filter(|&t| now_ms < t);
        if self.in_flight.len() < self.cfg.pipeline
            && self.drained_at.is_none()
            && lingering.is_none()
        {
            return UploadAction::Send {
                from: self.next_from,
                max_events: self.cfg.max_events,
                max_bytes: self.cfg.max_bytes,
            };
        }
        if !self.in_flight.is_empty() {
            let until_ms = self.ack_wait_since.saturating_add(self.cfg.ack_timeout_ms);
            if now_ms >= until_ms {
                self.fail(now_ms);
                return self.next(now_ms);
            }
            return UploadAction::AwaitAck { until_ms };
        }
        if let (Some(t), None) = (lingering, self.drained_at) {
            return UploadAction::Idle { until_ms: t };
        }
        let at = self.drained_at.unwrap_or(now_ms);
        UploadAction::Idle {
            until_ms: at.saturating_add(self.cfg.poll_ms),
        }
    }

    /// Drop the stream and what was in flight; back off; resend from the last acknowledged.
    fn fail(&mut self, now_ms: u64) {
        self.stream_open = false;
        self.in_flight.clear();
        self.mark = None;
        self.drained_at = None;
        self.linger_until = None;
        self.next_from = self.acked.saturating_add(1);
        self.retry_at = Some(now_ms.saturating_add(self.backoff_ms));
        self.backoff_ms = self.backoff_ms.saturating_mul(2).min(self.cfg.retry_max_ms);
        self.failures = self.failures.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use UploadAction as A;
    use UploadEvent as E;

    fn cfg() -> UploadConfig {
        UploadConfig {
            max_events: 100,
            ..UploadConfig::new(true)
        }
    }

    fn send(from: u64) -> UploadAction {
        A::Send {
            from,
            max_events: 100,
            max_bytes: 6 << 20,
        }
    }

    /// An open pipeline with nothing to send at `now_ms` (events up to `acked` uploaded).
    fn idle(acked: u64, now_ms: u64) -> AuditUpload {
        let mut p = AuditUpload::new(cfg(), acked);
        assert_eq!(p.on_event(now_ms, E::Tick), A::Open);
        assert_eq!(p.on_event(now_ms, E::Opened), send(acked + 1));
        assert_eq!(
            p.on_event(now_ms, E::Drained),
            A::Idle {
                until_ms: now_ms + POLL_WOKEN_MS
            }
        );
        p
    }

    #[test]
    fn upload_starts_at_once_after_an_append_not_at_the_next_poll() {
        let mut p = idle(10, 1_000);
        // Nothing happens before the poll without an append.
        assert_eq!(p.on_event(1_100, E::Tick), A::Idle { until_ms: 6_000 });
        // An append at 1 250 ms: the read and send are due now.
        assert_eq!(p.on_event(1_250, E::Appended), send(11));
        assert_eq!(
            p.on_event(1_251, E::Sent { from: 11, last: 11 }),
            A::AwaitAck { until_ms: 31_251 },
            "a short batch: the next one lingers for more events"
        );
        assert!(p.awaiting_ack());
        // An append meanwhile does not cut the linger short.
        assert_eq!(
            p.on_event(1_260, E::Appended),
            A::AwaitAck { until_ms: 31_251 }
        );
        // The ack: record it, then look for more once the linger is over.
        assert_eq!(
            p.on_event(1_300, E::Acked { upto_seq: 11 }),
            A::Mark { upto: 11 }
        );
        assert!(!p.awaiting_ack());
        assert_eq!(
            p.on_event(1_301, E::Marked),
            A::Idle {
                until_ms: 1_251 + LINGER_MS
            }
        );
        assert_eq!(p.on_event(1_251 + LINGER_MS, E::Tick), send(12));
        assert_eq!(p.acked(), 11);
        // Without a wake-up (unwoken config), the poll picks an append up within 200 ms.
        let mut p = AuditUpload::new(UploadConfig::new(false), 0);
        p.on_event(0, E::Tick);
        p.on_event(0, E::Opened);
        assert_eq!(p.on_event(0, E::Drained), A::Idle { until_ms: 200 });
        assert_eq!(p.on_event(199, E::Tick), A::Idle { until_ms: 200 });
        assert!(matches!(p.on_event(200, E::Tick), A::Send { from: 1, .. }));
    }

    #[test]
    fn upload_batches_pipeline_two_deep_and_acks_come_in_order() {
        let mut p = idle(0, 0);
        assert_eq!(p.on_event(5, E::Appended), send(1));
        assert_eq!(p.on_event(6, E::Sent { from: 1, last: 100 }), send(101));
        assert_eq!(
            p.on_event(
                7,
                E::Sent {
                    from: 101,
                    last: 150
                }
            ),
            A::AwaitAck { until_ms: 30_006 },
            "two in flight: wait, do not read"
        );
        // An append while both are in flight changes nothing.
        assert_eq!(p.on_event(8, E::Appended), A::AwaitAck { until_ms: 30_006 });
        assert_eq!(
            p.on_event(50, E::Acked { upto_seq: 100 }),
            A::Mark { upto: 100 }
        );
        // One still in flight, but the last batch was short: linger rather than read a few.
        assert_eq!(p.on_event(51, E::Marked), A::AwaitAck { until_ms: 30_050 });
        assert_eq!(
            p.on_event(90, E::Acked { upto_seq: 150 }),
            A::Mark { upto: 150 }
        );
        assert_eq!(
            p.on_event(91, E::Marked),
            A::Idle {
                until_ms: 7 + LINGER_MS
            }
        );
        assert_eq!(p.on_event(7 + LINGER_MS, E::Tick), send(151));
        let t = 8 + LINGER_MS;
        assert_eq!(
            p.on_event(t, E::Drained),
            A::Idle {
                until_ms: t + POLL_WOKEN_MS
            }
        );
        assert_eq!(p.acked(), 150);
        // The hub acknowledging more than the batch never marks past what was sent.
        assert_eq!(p.on_event(t + 10, E::Appended), send(151));
        p.on_event(
            t + 11,
            E::Sent {
                from: 151,
                last: 160,
            },
        );
        assert_eq!(
            p.on_event(t + 13, E::Acked { upto_seq: 999 }),
            A::Mark { upto: 160 }
        );
    }

    #[test]
    fn upload_backs_off_after_a_failure_doubling_and_resets_after_success() {
        let mut p = idle(40, 0);
        p.on_event(10, E::Appended);
        p.on_event(11, E::Sent { from: 41, last: 60 });
        assert_eq!(p.on_event(12, E::Drained), A::AwaitAck { until_ms: 30_011 });
        // The stream fails: back off 1 s, then a fresh stream resends from 41.
        assert_eq!(p.on_event(500, E::Failed), A::Backoff { until_ms: 1_500 });
        assert!(!p.awaiting_ack());
        assert_eq!(p.on_event(1_499, E::Tick), A::Backoff { until_ms: 1_500 });
        assert_eq!(p.on_event(1_500, E::Tick), A::Open);
        // Opening fails too: 2 s, then 4 s, 8 s, 16 s, 30 s (the cap), 30 s.
        let mut t = 1_500;
        for want in [2_000, 4_000, 8_000, 16_000, 30_000, 30_000] {
            assert_eq!(p.on_event(t, E::Failed), A::Backoff { until_ms: t + want });
            t += want;
            assert_eq!(p.on_event(t, E::Tick), A::Open);
        }
        assert_eq!(p.failures(), 7);
        assert_eq!(
            p.on_event(t, E::Opened),
            send(41),
            "from the last acknowledged"
        );
        p.on_event(t, E::Sent { from: 41, last: 70 });
        p.on_event(t, E::Drained);
        // No acknowledgement within the timeout: a failure (30 s is the cap now).
        assert_eq!(
            p.on_event(t + 29_999, E::Tick),
            A::AwaitAck {
                until_ms: t + 30_000
            }
        );
        assert_eq!(
            p.on_event(t + 30_000, E::Tick),
            A::Backoff {
                until_ms: t + 60_000
            }
        );
        t += 60_000;
        assert_eq!(p.on_event(t, E::Tick), A::Open);
        p.on_event(t, E::Opened);
        p.on_event(t, E::Sent { from: 41, last: 70 });
        p.on_event(t, E::Drained);
        // Success: the next failure backs off the minimum again.
        assert_eq!(
            p.on_event(t + 80, E::Acked { upto_seq: 70 }),
            A::Mark { upto: 70 }
        );
        p.on_event(t + 81, E::Marked);
        assert_eq!(p.failures(), 0);
        assert_eq!(
            p.on_event(t + 100, E::Failed),
            A::Backoff {
                until_ms: t + 1_100
            }
        );
    }

    #[test]
    fn a_short_acknowledgement_records_what_the_hub_kept_then_resends_the_rest() {
        let mut p = idle(0, 0);
        p.on_event(1, E::Appended);
        p.on_event(2, E::Sent { from: 1, last: 50 });
        p.on_event(3, E::Drained);
        // The hub kept 1..=30 only: record that, then back off and resend from 31.
        assert_eq!(
            p.on_event(10, E::Acked { upto_seq: 30 }),
            A::Mark { upto: 30 }
        );
        assert_eq!(p.on_event(11, E::Marked), A::Backoff { until_ms: 1_011 });
        assert_eq!(p.acked(), 30);
        assert_eq!(p.on_event(1_011, E::Tick), A::Open);
        assert_eq!(p.on_event(1_012, E::Opened), send(31));
        // An acknowledgement below the batch records nothing and fails: the second failure
        // since the last success, so twice the minimum.
        p.on_event(1_013, E::Sent { from: 31, last: 50 });
        p.on_event(1_014, E::Drained);
        assert_eq!(
            p.on_event(1_020, E::Acked { upto_seq: 12 }),
            A::Backoff { until_ms: 3_020 }
        );
        assert_eq!(p.acked(), 30);
        // An acknowledgement with nothing in flight is a protocol failure.
        let mut p = idle(0, 0);
        assert!(matches!(
            p.on_event(5, E::Acked { upto_seq: 3 }),
            A::Backoff { .. }
        ));
        // A failed mark sends nothing further on that stream and keeps the old position.
        let mut p = idle(0, 0);
        p.on_event(1, E::Appended);
        p.on_event(2, E::Sent { from: 1, last: 9 });
        p.on_event(3, E::Drained);
        assert_eq!(p.on_event(4, E::Acked { upto_seq: 9 }), A::Mark { upto: 9 });
        assert_eq!(p.on_event(5, E::Failed), A::Backoff { until_ms: 1_005 });
        p.on_event(1_005, E::Tick);
        assert_eq!(p.on_event(1_006, E::Opened), send(1));
    }
}
