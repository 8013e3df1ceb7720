//! The sync client's connection policy, pure: no I/O and no clock reads. Every decision takes
//! the time as an argument (`now_ms` on any monotonic clock, or a `Duration` since an origin),
//! so the tests below drive it in virtual time, like `edge_proto`'s `sync_sim`.
//!
//! * [`Reconnect`] — the delay before the next connection attempt (capped exponential back-off
//!   with jitter; slower after long out of coverage; slower still after a refusal) and the
//!   stall watchdog's timeout for the next connection.
//! * [`LinkWatch`] — one connection's stall watchdog and keep-alive: a small state machine fed
//!   [`LinkEvent`]s through [`LinkWatch::on_event`], answering [`LinkDecision::Stalled`] once
//!   the hub has been silent for exactly the stall timeout with work outstanding.
//! * [`Transport`] — the QUIC keep-alive cadence, idle timeout and connection-attempt budget
//!   derived from the unit's `[sync]` configuration.

use std::time::Duration;

use edge_runtime::config::SyncConfig;

/// Stalls in a row without progress before the stall timeout starts to double.
pub const STALLS_BEFORE_BACKING_OFF: u32 = 3;
/// The stall timeout grows (doubling) while stalls repeat without progress, up to this.
pub const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Once the hub has answered, how long the rest of the handshake may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the driver feeds the watchdog a [`LinkEvent::Tick`] (and samples the transport).
pub const WATCHDOG_TICK: Duration = Duration::from_millis(250);

/// How one connection ended, for choosing the next delay.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    /// The hub welcomed the unit: the link was up.
    pub established: bool,
    /// The hub answered and refused (TLS failure, unknown or revoked unit, version).
    pub refused: bool,
    /// Closed by the stall watchdog.
    pub stalled: bool,
    /// Something moved: a batch applied, caught up, or an audit batch acknowledged.
    pub progressed: bool,
}

/// The reconnection policy (see `SyncClient::run`): pure, so it is tested without a network.
#[derive(Debug, Clone)]
pub struct Reconnect {
    min_ms: u64,
    max_ms: u64,
    refused_max_ms: u64,
    slow_max_ms: u64,
    fast_for: Duration,
    base_stall: Duration,
    backoff_ms: u64,
    stall_timeout: Duration,
    /// Stalls in a row without progress in between.
    stalls_in_a_row: u32,
    /// Since when (on the caller's clock) the hub has been out of reach.
    unreachable_since: Option<Duration>,
    /// After a local network change, attempts stay frequent until then.
    burst_until: Option<Duration>,
}

/// How long attempts stay frequent after a local network change (the link may be back).
pub const AFTER_NETWORK_CHANGE: Duration = Duration::from_secs(30);

impl Reconnect {
    pub fn new(s: &SyncConfig) -> Self {
        let min_ms = s.reconnect_min_ms.max(50);
        let max_ms = s.reconnect_max_ms.max(min_ms);
        let base_stall = Duration::from_millis(s.stall_timeout_ms.max(500));
        Reconnect {
            min_ms,
            max_ms,
            refused_max_ms: s.reconnect_refused_max_ms.max(max_ms),
            slow_max_ms: s.reconnect_slow_max_ms.max(max_ms),
            fast_for: Duration::from_secs(s.reconnect_fast_s),
            base_stall,
            backoff_ms: min_ms,
            stall_timeout: base_stall,
            stalls_in_a_row: 0,
            unreachable_since: None,
            burst_until: None,
        }
    }

    /// The local network changed at `now` (an interface, address or route: see
    /// `sync::netwatch`): the hub may be reachable again, so the next attempt is due at once
    /// and attempts stay frequent for [`AFTER_NETWORK_CHANGE`].
    pub fn network_changed(&mut self, now: Duration) {
        self.backoff_ms = self.min_ms;
        self.burst_until = Some(now + AFTER_NETWORK_CHANGE);
    }

    /// The stall watchdog's timeout for the next connection.
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// A connection (or attempt) ended at `now` (any monotonic clock): the delay before the
    /// next attempt as (base ms, jitter spread ms); wait base + a random 0..=spread (see
    /// [`Reconnect::delay_ms`]).
    pub fn after(&mut self, out: Outcome, now: Duration) -> (u64, u64) {
        if out.established {
            self.backoff_ms = self.min_ms;
            self.unreachable_since = None;
        }
        let out_of_reach = now.saturating_sub(*self.unreachable_since.get_or_insert(now));
        // Stalls that repeat with nothing moving in between may mean a hub too loaded to
        // answer, not a bad link (a busy but working hub still ACKs): after the third in a
        // row, wait longer each time rather than add a reconnection storm to its load.
        if out.progressed {
            self.stalls_in_a_row = 0;
            self.stall_timeout = self.base_stall;
        }
        if out.stalled && !out.progressed {
            self.stalls_in_a_row += 1;
            if self.stalls_in_a_row >= STALLS_BEFORE_BACKING_OFF {
                self.stall_timeout = (self.stall_timeout * 2).min(MAX_STALL_TIMEOUT);
            }
        }
        // Out of coverage for long (parked in a basement): fewer attempts, less radio.
        let cap = if out.refused {
            self.refused_max_ms
        } else if out_of_reach > self.fast_for && self.burst_until.is_none_or(|t| now >= t) {
            self.slow_max_ms
        } else {
            self.max_ms
        };
        let b = self.backoff_ms.min(cap);
        self.backoff_ms = (b * 2).min(cap);
        (b / 2, b / 2)
    }

    /// The wait in ms for a (base, spread) from [`Reconnect::after`] given `random` (any value
    /// of a uniform random source): base + `random` mod (spread + 1), so always within
    /// `base..=base + spread`.
    pub fn delay_ms((base, spread): (u64, u64), random: u64) -> u64 {
        match spread.checked_add(1) {
            Some(m) => base.saturating_add(random % m),
            None => base.saturating_add(random),
        }
    }
}

/// The transport settings the connection policy implies for QUIC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transport {
    /// quinn sends a PING after this long without sending anything (the hub's ACK of it is
    /// what keeps an idle link's watchdog quiet and moves the hub's path after an address
    /// change).
    pub keepalive: Duration,
    /// quinn closes a connection that heard nothing for this long: two keep-alive intervals
    /// and 5 s, so one lost PING or ACK does not end an idle connection.
    pub idle_timeout: Duration,
    /// How long an attempt waits for the hub's first answer (before any path RTT is known).
    pub connect_attempt: Duration,
}

impl Transport {
    pub fn new(s: &SyncConfig) -> Transport {
        let keepalive = Duration::from_millis(s.keepalive_interval_ms.clamp(1_000, 60_000));
        Transport {
            keepalive,
            idle_timeout: keepalive * 2 + Duration::from_secs(5),
            connect_attempt: Duration::from_millis(s.connect_attempt_ms.max(200)),
        }
    }

    /// How long to wait for the hub's first answer: the attempt budget (one Initial, ended
    /// before quinn's first probe), or three round trips of a path seen slow before (at most
    /// 10 s).
    pub fn answer_within(&self, path_rtt: Duration) -> Duration {
        self.connect_attempt
            .max((path_rtt * 3).min(Duration::from_secs(10)))
    }
}

/// What the driver tells the watchdog about one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkEvent {
    /// Bytes arrived from the hub on any stream, or local work that kept the unit from
    /// listening (applying a batch) finished, or an audit batch went out into an empty
    /// pipeline (its acknowledgement is awaited from now).
    Heard,
    /// The transport's running count of ACK frames received from the hub (the hub
    /// acknowledging anything, keep-alive PINGs included, shows the path works).
    Acks(u64),
    /// The sync session's outstanding work: not caught up, or fetches awaiting an answer.
    Session { catching_up: bool, fetches: bool },
    /// Whether an audit batch awaits the hub's acknowledgement.
    AuditWaiting(bool),
    /// Something moved (an audit batch acknowledged): the connection made progress.
    Progressed,
    /// The watchdog looks (every [`WATCHDOG_TICK`]).
    Tick,
}

/// What the watchdog decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkDecision {
    /// Keep going.
    Continue,
    /// Close the connection: the hub has been silent for `quiet_ms` with work outstanding.
    Stalled { quiet_ms: u64 },
    /// Send the hub something it must acknowledge (a one-byte datagram): with work
    /// outstanding it has been quiet for half the stall timeout, and its ACK tells a busy hub
    /// from a dead path sooner than a keep-alive would (keep-alives are for idle links and far
    /// apart).
    Probe,
}

/// One connection's stall watchdog. Idle (nothing outstanding) it never fires, however long the
/// hub is quiet: quinn's keep-alive and idle timeout look after an idle link.
#[derive(Debug, Clone)]
pub struct LinkWatch {
    stall_ms: u64,
    last_heard_ms: u64,
    acks_seen: u64,
    catching_up: bool,
    fetches: bool,
    audit_waiting: bool,
    progressed: bool,
    last_probe_ms: u64,
}

impl LinkWatch {
    /// A connection established at `now_ms` (the quiet time counts from here), with the stall
    /// timeout [`Reconnect::stall_timeout`] chose. Until told otherwise the session is taken to
    /// be catching up.
    pub fn new(now_ms: u64, stall_timeout: Duration) -> LinkWatch {
        LinkWatch {
            stall_ms: u64::try_from(stall_timeout.as_millis()).unwrap_or(u64::MAX),
            last_heard_ms: now_ms,
            acks_seen: 0,
            catching_up: true,
            fetches: false,
            audit_waiting: false,
            progressed: false,
            last_probe_ms: now_ms,
        }
    }

    pub fn on_event(&mut self, now_ms: u64, ev: LinkEvent) -> LinkDecision {
        match ev {
            LinkEvent::Heard => self.heard(now_ms),
            LinkEvent::Acks(n) => {
                if n != self.acks_seen {
                    self.acks_seen = n;
                    self.heard(now_ms);
                }
            }
            LinkEvent::Session {
                catching_up,
                fetches,
            } => {
                self.catching_up = catching_up;
                self.fetches = fetches;
            }
            LinkEvent::AuditWaiting(w) => self.audit_waiting = w,
            LinkEvent::Progressed => self.progressed = true,
            LinkEvent::Tick => {
                let quiet_ms = self.quiet_ms(now_ms);
                if self.outstanding() && quiet_ms >= self.stall_ms {
                    return LinkDecision::Stalled { quiet_ms };
                }
                let half = self.stall_ms / 2;
                if self.outstanding()
                    && quiet_ms >= half
                    && now_ms.saturating_sub(self.last_probe_ms) >= half
                {
                    self.last_probe_ms = now_ms;
                    return LinkDecision::Probe;
                }
            }
        }
        LinkDecision::Continue
    }

    /// Work is outstanding: catching up, a fetch waiting, or an audit batch unacknowledged.
    pub fn outstanding(&self) -> bool {
        self.catching_up || self.fetches || self.audit_waiting
    }

    /// How long the hub has been silent at `now_ms`.
    pub fn quiet_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_heard_ms)
    }

    /// Whether an audit acknowledgement made the connection progress.
    pub fn progressed(&self) -> bool {
        self.progressed
    }

    fn heard(&mut self, now_ms: u64) {
        // Events from another task may arrive stamped a little earlier: never go back.
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SyncConfig {
        SyncConfig::default()
    }

    const UNANSWERED: Outcome = Outcome {
        established: false,
        refused: false,
        stalled: false,
        progressed: false,
    };

    /// Not a stall (a probe or nothing).
    fn live(d: LinkDecision) -> bool {
        !matches!(d, LinkDecision::Stalled { .. })
    }

    fn ms(d: Duration) -> u64 {
        u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
    }

    #[test]
    fn reconnect_backoff_doubles_from_the_minimum_to_the_cap_with_half_as_jitter() {
        let c = cfg();
        let mut p = Reconnect::new(&c);
        let mut now_ms = 0u64;
        let mut got = Vec::new();
        for _ in 0..8 {
            let (base, spread) = p.after(UNANSWERED, Duration::from_millis(now_ms));
            got.push((base, spread));
            now_ms += c.connect_attempt_ms + base + spread;
        }
        // 100 ms, then 200 ms (the cap) for ever, each half fixed, half jitter.
        assert_eq!(got[0], (50, 50));
        assert!(got[1..].iter().all(|&w| w == (100, 100)), "{got:?}");
        // A connection that was established starts again from the minimum.
        let lost = Outcome {
            established: true,
            ..UNANSWERED
        };
        assert_eq!(p.after(lost, Duration::from_millis(now_ms)), (50, 50));
    }

    #[test]
    fn reconnect_jitter_stays_within_base_and_base_plus_spread_and_covers_both_ends() {
        let w = (100, 100);
        for r in [0, 1, 99, 100, 101, 12_345, u64::MAX - 1, u64::MAX] {
            let d = Reconnect::delay_ms(w, r);
            assert!((100..=200).contains(&d), "{r} -> {d}");
        }
        assert_eq!(Reconnect::delay_ms(w, 0), 100);
        assert_eq!(Reconnect::delay_ms(w, 100), 200);
        assert_eq!(Reconnect::delay_ms(w, 101), 100);
        // A uniform source gives every value in the window.
        let seen: std::collections::BTreeSet<u64> =
            (0..1_000u64).map(|r| Reconnect::delay_ms(w, r)).collect();
        assert_eq!(seen.len(), 101);
        // No spread, no jitter; no overflow at the extremes.
        assert_eq!(Reconnect::delay_ms((7, 0), u64::MAX), 7);
        assert_eq!(Reconnect::delay_ms((0, u64::MAX), u64::MAX), u64::MAX);
    }

    #[test]
    fn reconnect_caps_refusals_and_long_outages_at_their_own_caps() {
        let c = cfg();
        let mut p = Reconnect::new(&c);
        let refused = Outcome {
            refused: true,
            ..UNANSWERED
        };
        let mut last = (0, 0);
        for i in 0..30u64 {
            last = p.after(refused, Duration::from_secs(i));
        }
        assert_eq!(last.0 + last.1, c.reconnect_refused_max_ms);
        // Out of reach for longer than the fast window: the slow cap, never more.
        let mut p = Reconnect::new(&c);
        p.after(UNANSWERED, Duration::ZERO);
        let past = Duration::from_secs(c.reconnect_fast_s + 1);
        let mut longest = 0;
        for i in 0..30u32 {
            let (b, s) = p.after(UNANSWERED, past + Duration::from_secs(u64::from(i) * 6));
            longest = longest.max(b + s);
        }
        assert_eq!(longest, c.reconnect_slow_max_ms);
        // Within the fast window: never more than reconnect_max_ms.
        let mut p = Reconnect::new(&c);
        for i in 0..c.reconnect_fast_s {
            let (b, s) = p.after(UNANSWERED, Duration::from_secs(i));
            assert!(b + s <= c.reconnect_max_ms);
        }
    }

    /// Attempts from `from` for `span` with the link down, in virtual time (each attempt's bytes
    /// are measured through `kerbside-netem`: BENCHMARKS.md multiplies the two).
    fn attempts_in(p: &mut Reconnect, from: Duration, span: Duration) -> u64 {
        let mut now = from;
        let mut n = 0;
        while now < from + span {
            n += 1;
            let (b, s) = p.after(UNANSWERED, now);
            // The attempt itself waits for an answer (connect_attempt_ms), then the delay
            // (at its longest: base + spread, so these counts are the fewest the policy makes).
            now += Duration::from_millis(cfg().connect_attempt_ms + b + s);
        }
        n
    }

    #[test]
    fn out_of_coverage_attempts_slow_down_and_a_network_change_brings_them_back() {
        let c = cfg();
        let hour = Duration::from_secs(3600);
        let mut p = Reconnect::new(&c);
        let first_hour = attempts_in(&mut p, Duration::ZERO, hour);
        let later_hour = attempts_in(&mut p, hour, hour);
        // The fast window (about one a second) then one a minute.
        let fast = c.reconnect_fast_s * 1000 / (c.connect_attempt_ms + c.reconnect_max_ms / 2);
        assert!(
            first_hour <= fast + 60 + 5,
            "{first_hour} attempts in the first hour"
        );
        assert!(later_hour <= 61, "{later_hour} attempts in a later hour");
        assert!(
            later_hour >= 55,
            "{later_hour}: the slow cadence is still about a minute"
        );
        // Out of coverage for an hour, then a local network change: the next attempt is at
        // once, and they stay frequent for a while.
        let mut p = Reconnect::new(&c);
        let _ = attempts_in(&mut p, Duration::ZERO, hour);
        let t = hour + Duration::from_secs(7);
        p.network_changed(t);
        let (b, s) = p.after(UNANSWERED, t);
        assert!(
            b + s <= c.reconnect_min_ms,
            "{b}+{s} ms after a network change"
        );
        for i in 1..20u64 {
            let (b, s) = p.after(UNANSWERED, t + Duration::from_secs(i));
            assert!(b + s <= c.reconnect_max_ms);
        }
        let after = t + AFTER_NETWORK_CHANGE;
        let longest = (1..12u64)
            .map(|i| {
                let (b, s) = p.after(UNANSWERED, after + Duration::from_secs(i));
                b + s
            })
            .max()
            .unwrap_or(0);
        assert_eq!(longest, c.reconnect_slow_max_ms, "back to the slow cadence");
    }

    #[test]
    fn stall_is_declared_after_exactly_the_quiet_time_and_not_before() {
        let stall = Duration::from_millis(cfg().stall_timeout_ms);
        let t0 = 10_000;
        let mut w = LinkWatch::new(t0, stall);
        assert!(w.outstanding(), "a new connection is catching up");
        // Heard at t0 + 700: the quiet time counts from there.
        w.on_event(t0 + 700, LinkEvent::Heard);
        let due = t0 + 700 + ms(stall);
        for t in (t0..due).step_by(50).chain([due - 1]) {
            assert!(live(w.on_event(t, LinkEvent::Tick)), "{t}");
        }
        assert_eq!(
            w.on_event(due, LinkEvent::Tick),
            LinkDecision::Stalled {
                quiet_ms: ms(stall)
            }
        );
        // The same with a longer (backed-off) timeout.
        let mut w = LinkWatch::new(0, Duration::from_secs(8));
        assert!(live(w.on_event(7_999, LinkEvent::Tick)));
        assert_eq!(
            w.on_event(8_000, LinkEvent::Tick),
            LinkDecision::Stalled { quiet_ms: 8_000 }
        );
    }

    #[test]
    fn stall_needs_work_outstanding_and_any_ack_or_byte_from_the_hub_resets_it() {
        let mut w = LinkWatch::new(0, Duration::from_secs(2));
        w.on_event(
            0,
            LinkEvent::Session {
                catching_up: false,
                fetches: false,
            },
        );
        // Idle: an hour of silence is no stall.
        assert!(live(w.on_event(3_600_000, LinkEvent::Tick)));
        // A fetch goes out: it counts as work, the quiet time was already long.
        w.on_event(
            3_600_000,
            LinkEvent::Session {
                catching_up: false,
                fetches: true,
            },
        );
        assert!(matches!(
            w.on_event(3_600_000, LinkEvent::Tick),
            LinkDecision::Stalled { .. }
        ));
        // The hub ACKs (the count moved): heard. The same count again is not news.
        w.on_event(3_600_100, LinkEvent::Acks(5));
        assert!(live(w.on_event(3_602_099, LinkEvent::Tick)));
        w.on_event(3_602_000, LinkEvent::Acks(5));
        assert_eq!(
            w.on_event(3_602_100, LinkEvent::Tick),
            LinkDecision::Stalled { quiet_ms: 2_000 }
        );
        // Only an audit batch waiting: still work.
        let mut w = LinkWatch::new(0, Duration::from_secs(2));
        w.on_event(
            0,
            LinkEvent::Session {
                catching_up: false,
                fetches: false,
            },
        );
        w.on_event(500, LinkEvent::AuditWaiting(true));
        w.on_event(500, LinkEvent::Heard);
        assert!(live(w.on_event(2_499, LinkEvent::Tick)));
        assert!(matches!(
            w.on_event(2_500, LinkEvent::Tick),
            LinkDecision::Stalled { .. }
        ));
        w.on_event(2_500, LinkEvent::AuditWaiting(false));
        assert!(live(w.on_event(9_000, LinkEvent::Tick)));
        // A late event stamped earlier never moves the quiet time back.
        let mut w = LinkWatch::new(1_000, Duration::from_secs(2));
        w.on_event(900, LinkEvent::Heard);
        assert_eq!(w.quiet_ms(3_000), 2_000);
        assert!(!w.progressed());
        w.on_event(3_000, LinkEvent::Progressed);
        assert!(w.progressed());
    }

    #[test]
    fn probes_keep_a_busy_hub_out_of_the_watchdog_and_keepalives_are_far_apart() {
        let c = cfg();
        let t = Transport::new(&c);
        assert_eq!(t.keepalive, Duration::from_millis(c.keepalive_interval_ms));
        assert_eq!(
            t.keepalive,
            Duration::from_secs(15),
            "sync-protocol.md's NAT cadence"
        );
        // One lost PING (or its ACK) does not end an idle connection.
        assert_eq!(t.idle_timeout, t.keepalive * 2 + Duration::from_secs(5));
        let stall = c.stall_timeout_ms;
        let mut w = LinkWatch::new(0, Duration::from_millis(stall));
        // Catching up, the hub slow to send data but ACKing each probe 40 ms later (RTT):
        // a probe after half the stall timeout of quiet, never a stall.
        let mut ack_at = None;
        let mut acks = 0u64;
        let mut probes = Vec::new();
        let mut tick = 0;
        while tick <= 600_000 {
            if let Some(a) = ack_at.filter(|a| *a <= tick) {
                acks += 1;
                w.on_event(a, LinkEvent::Acks(acks));
                ack_at = None;
            }
            match w.on_event(tick, LinkEvent::Tick) {
                LinkDecision::Continue => {}
                LinkDecision::Probe => {
                    probes.push(tick);
                    ack_at = Some(tick + 40);
                }
                LinkDecision::Stalled { quiet_ms } => panic!("stalled after {quiet_ms} ms"),
            }
            tick += ms(WATCHDOG_TICK);
        }
        assert!(!probes.is_empty());
        assert!(
            probes.windows(2).all(|p| p[1] - p[0] >= stall / 2),
            "{probes:?}"
        );
        // The probes stop being answered: a stall exactly stall_timeout after the last ACK.
        let last = match ack_at {
            Some(a) => {
                w.on_event(a, LinkEvent::Acks(acks + 1));
                a
            }
            None => probes[probes.len() - 1] + 40,
        };
        let mut t_ = last;
        let due = last + stall;
        while t_ < due {
            assert_ne!(
                w.on_event(t_, LinkEvent::Tick),
                LinkDecision::Stalled {
                    quiet_ms: t_ - last
                },
                "stalled early at {t_}"
            );
            t_ += 1;
        }
        assert_eq!(
            w.on_event(due, LinkEvent::Tick),
            LinkDecision::Stalled { quiet_ms: stall }
        );
        // Idle (nothing outstanding): no probes, whatever the quiet; quinn's keep-alive, every
        // 15 s, is all an idle link sends.
        let mut idle = LinkWatch::new(0, Duration::from_millis(stall));
        idle.on_event(
            0,
            LinkEvent::Session {
                catching_up: false,
                fetches: false,
            },
        );
        for now in (0..600_000).step_by(250) {
            assert_eq!(idle.on_event(now, LinkEvent::Tick), LinkDecision::Continue);
        }
        // Clamped to 1..=60 s whatever the configuration says.
        let t = Transport::new(&SyncConfig {
            keepalive_interval_ms: 10,
            ..cfg()
        });
        assert_eq!(t.keepalive, Duration::from_secs(1));
        let t = Transport::new(&SyncConfig {
            keepalive_interval_ms: 3_600_000,
            ..cfg()
        });
        assert_eq!(t.keepalive, Duration::from_secs(60));
        assert_eq!(t.idle_timeout, Duration::from_secs(125));
    }

    #[test]
    fn an_attempt_waits_for_the_budget_or_three_round_trips_of_a_slow_path() {
        let t = Transport::new(&cfg());
        assert_eq!(t.answer_within(Duration::ZERO), Duration::from_millis(600));
        assert_eq!(
            t.answer_within(Duration::from_millis(150)),
            Duration::from_millis(600)
        );
        assert_eq!(
            t.answer_within(Duration::from_millis(400)),
            Duration::from_millis(1_200)
        );
        assert_eq!(
            t.answer_within(Duration::from_secs(30)),
            Duration::from_secs(10)
        );
        let t = Transport::new(&SyncConfig {
            connect_attempt_ms: 1,
            ..cfg()
        });
        assert_eq!(t.connect_attempt, Duration::from_millis(200));
    }

    #[test]
    fn repeated_stalls_lengthen_the_next_watchdog_until_progress() {
        let c = cfg();
        let mut p = Reconnect::new(&c);
        let base = Duration::from_millis(c.stall_timeout_ms);
        let stalled = Outcome {
            established: true,
            stalled: true,
            ..UNANSWERED
        };
        let mut now = Duration::ZERO;
        let mut timeouts = Vec::new();
        for _ in 0..10 {
            // Each connection: silent from the start until its watchdog fires.
            let mut w = LinkWatch::new(ms(now), p.stall_timeout());
            let fired = (ms(now)..)
                .step_by(ms(WATCHDOG_TICK) as usize)
                .find(|&t| !live(w.on_event(t, LinkEvent::Tick)))
                .unwrap_or(u64::MAX);
            timeouts.push(fired - ms(now));
            now = Duration::from_millis(fired + 100);
            p.after(stalled, now);
        }
        let b = ms(base);
        assert_eq!(
            timeouts,
            vec![b, b, b, 2 * b, 4 * b, 8 * b, 16 * b, 60_000, 60_000, 60_000]
        );
        p.after(
            Outcome {
                progressed: true,
                ..stalled
            },
            now,
        );
        assert_eq!(p.stall_timeout(), base);
    }
}
