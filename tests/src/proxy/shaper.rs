//! The pure impairment model of the proxy: what the link does to each datagram, decided without
//! sockets and without reading a clock (the caller passes the arrival time).
//!
//! [`Impairment`] and [`RateLimit`] configure one direction; [`Blackout`] and [`Flap`] the
//! link's down windows, which `LinkState` combines with the manual switch. A [`Shaper`] per
//! direction turns an arrival into the [`Releases`] of its copies from one seeded random stream
//! ([`crate::rng`]), and keeps the [`DirectionStats`].

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use super::{ProxyError, RATE_QUEUE_MS_DEFAULT, REORDER_HOLD_MS_DEFAULT};
use crate::{unit_f64, TestRng};

/// Which way a datagram travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Unit → hub: datagrams received on the listen socket, sent to the upstream.
    Up,
    /// Hub → unit: datagrams received from the upstream, sent to the last client address.
    Down,
}

impl Direction {
    fn seed_salt(self) -> u64 {
        match self {
            Direction::Up => 0x5550_5550_5550_5550,
            Direction::Down => 0x444f_574e_444f_574e,
        }
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Up => "up",
            Direction::Down => "down",
        })
    }
}

/// A token-bucket rate limit with a bounded queue in front of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RateLimit {
    /// Sustained rate.
    pub bytes_per_s: u64,
    /// Bucket size: how many bytes may leave back to back after an idle spell. A datagram larger
    /// than the bucket still passes, after waiting for a full bucket's worth of tokens.
    pub burst_bytes: u64,
    /// Bytes waiting for tokens at most; a datagram that would exceed it is dropped (tail drop).
    pub queue_bytes_max: u64,
}

impl RateLimit {
    /// A limit of `kbit_per_s` kilobits (1000 bits) per second, a 10 ms burst (at least one
    /// 1500-byte packet) and a queue of [`RATE_QUEUE_MS_DEFAULT`] at that rate (at least 16 KiB).
    pub fn kbps(kbit_per_s: u64) -> Self {
        let bytes_per_s = (kbit_per_s.saturating_mul(1000) / 8).max(1);
        RateLimit {
            bytes_per_s,
            burst_bytes: (bytes_per_s / 100).max(1500),
            queue_bytes_max: (bytes_per_s.saturating_mul(RATE_QUEUE_MS_DEFAULT) / 1000).max(16_384),
        }
    }

    /// The same rate with a queue that holds `queue_ms` of traffic at that rate (at least one
    /// maximum-size datagram).
    pub fn with_queue_ms(mut self, queue_ms: u64) -> Self {
        self.queue_bytes_max = (self.bytes_per_s.saturating_mul(queue_ms) / 1000).max(1500);
        self
    }
}

/// What one direction of the link does to datagrams. Percentages are 0–100.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Impairment {
    /// Independent (Bernoulli) loss, per datagram.
    pub loss_pct: f64,
    /// One-way delay added to every datagram.
    pub delay_ms: u64,
    /// Each datagram's delay is drawn uniformly from `delay_ms ± jitter_ms` (never below zero).
    /// Jitter does not reorder: like a cellular bearer the link is FIFO, so a datagram never
    /// leaves before the one sent ahead of it (see [`Impairment::reorder_pct`] for reordering).
    pub jitter_ms: u64,
    /// Share of datagrams held back an extra [`Impairment::reorder_hold_ms`], so that datagrams
    /// arriving during the hold overtake them.
    pub reorder_pct: f64,
    /// Extra hold for a datagram picked for reordering.
    pub reorder_hold_ms: u64,
    /// Share of datagrams sent twice (the copy goes through the rate limit too).
    pub duplicate_pct: f64,
    /// Bandwidth limit; `None` for unlimited.
    pub rate: Option<RateLimit>,
}

impl Default for Impairment {
    fn default() -> Self {
        Impairment {
            loss_pct: 0.0,
            delay_ms: 0,
            jitter_ms: 0,
            reorder_pct: 0.0,
            reorder_hold_ms: REORDER_HOLD_MS_DEFAULT,
            duplicate_pct: 0.0,
            rate: None,
        }
    }
}

impl Impairment {
    /// A perfect link.
    pub fn none() -> Self {
        Impairment::default()
    }

    /// Loss and one-way delay, nothing else: `Impairment::lossy(5.0, 75)` on both directions is
    /// the "5% loss + 150 ms RTT".
    pub fn lossy(loss_pct: f64, delay_ms: u64) -> Self {
        Impairment {
            loss_pct,
            delay_ms,
            ..Impairment::default()
        }
    }

    /// Check ranges: percentages within 0–100, a non-zero rate and queue.
    pub fn validate(&self) -> Result<(), ProxyError> {
        for (name, v) in [
            ("loss", self.loss_pct),
            ("reorder", self.reorder_pct),
            ("duplicate", self.duplicate_pct),
        ] {
            if !(0.0..=100.0).contains(&v) {
                return Err(ProxyError::Invalid(format!(
                    "{name} must be a percentage within 0-100, not {v}"
                )));
            }
        }
        if let Some(r) = &self.rate {
            if r.bytes_per_s == 0 || r.queue_bytes_max == 0 {
                return Err(ProxyError::Invalid(
                    "rate limit needs a non-zero rate and queue".into(),
                ));
            }
        }
        Ok(())
    }
}

/// A blackout window, relative to the proxy's start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Blackout {
    /// When the link goes down.
    #[serde(rename = "start_ms", serialize_with = "ser_ms")]
    pub start: Duration,
    /// How long it stays down.
    #[serde(rename = "duration_ms", serialize_with = "ser_ms")]
    pub duration: Duration,
}

fn ser_ms<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_millis() as u64)
}

fn ser_opt_ms<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&(d.as_millis() as u64)),
        None => s.serialize_none(),
    }
}

impl Blackout {
    /// The link is down for `duration` from `start` after the proxy started.
    pub fn new(start: Duration, duration: Duration) -> Self {
        Blackout { start, duration }
    }

    /// When the link comes back.
    pub fn end(&self) -> Duration {
        self.start.saturating_add(self.duration)
    }

    /// Whether `elapsed` (since the proxy started) falls inside the window.
    pub fn contains(&self, elapsed: Duration) -> bool {
        self.start <= elapsed && elapsed < self.end()
    }
}

/// `DURATION@START`, e.g. `30s@10s`: down for 30 s from 10 s after start.
impl FromStr for Blackout {
    type Err = ProxyError;

    fn from_str(s: &str) -> Result<Self, ProxyError> {
        let (dur, start) = s.split_once('@').ok_or_else(|| {
            ProxyError::Invalid(format!(
                "blackout {s:?}: expected DURATION@START, e.g. 30s@10s"
            ))
        })?;
        Ok(Blackout::new(parse_duration(start)?, parse_duration(dur)?))
    }
}

/// A link that flaps: up and down phases alternate, each lasting a duration drawn uniformly from
/// `min..=max` with its own seed. The link starts up at `from`; after `until` it stays up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Flap {
    /// Shortest phase.
    #[serde(rename = "min_ms", serialize_with = "ser_ms")]
    pub min: Duration,
    /// Longest phase.
    #[serde(rename = "max_ms", serialize_with = "ser_ms")]
    pub max: Duration,
    /// Seed of the phase lengths.
    pub seed: u64,
    /// Flapping starts this long after the proxy started (with an up phase).
    #[serde(rename = "from_ms", serialize_with = "ser_ms")]
    pub from: Duration,
    /// Flapping stops this long after the proxy started (a blackout running then is cut short).
    #[serde(rename = "until_ms", serialize_with = "ser_opt_ms")]
    pub until: Option<Duration>,
}

impl Flap {
    /// Flap every `min`–`max` from the start, for ever.
    pub fn every(min: Duration, max: Duration, seed: u64) -> Self {
        Flap {
            min,
            max,
            seed,
            from: Duration::ZERO,
            until: None,
        }
    }

    /// Stop flapping `until` after the proxy started.
    pub fn until(mut self, until: Duration) -> Self {
        self.until = Some(until);
        self
    }

    /// The blackout windows this flap produces that start before `horizon`.
    pub fn windows(&self, horizon: Duration) -> Vec<Blackout> {
        FlapCursor::new(*self)
            .take_while(|w| w.start < horizon)
            .collect()
    }
}

/// `MIN-MAX` with a unit, e.g. `2-5s`, `500ms-2s`, `2s-5s` (a bare number is seconds).
pub fn parse_flap_range(s: &str) -> Result<(Duration, Duration), ProxyError> {
    let bad = || ProxyError::Invalid(format!("flap range {s:?}: expected MIN-MAX, e.g. 2-5s"));
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let b_dur = parse_duration(b)?;
    // "2-5s": the unit written once, after the second number, applies to both.
    let a_dur = if a.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
        let unit = b
            .trim()
            .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.');
        parse_duration(&format!("{}{unit}", a.trim()))?
    } else {
        parse_duration(a)?
    };
    if a_dur.is_zero() || a_dur > b_dur {
        return Err(bad());
    }
    Ok((a_dur, b_dur))
}

/// A duration such as `30s`, `250ms`, `2m`, `1h`, `1.5s` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, ProxyError> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || ProxyError::Invalid(format!("duration {s:?}: expected e.g. 30s, 250ms, 2m"));
    let v: f64 = num.parse().map_err(|_| bad())?;
    let secs = match unit.trim() {
        "ms" => v / 1000.0,
        "" | "s" => v,
        "m" | "min" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(bad()),
    };
    if !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Counters for one direction. Conservation: `packets_in + duplicated = packets_forwarded +`
/// every `dropped_*` + the datagrams still in flight.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct DirectionStats {
    /// Datagrams received.
    pub packets_in: u64,
    /// Bytes received.
    pub bytes_in: u64,
    /// Datagrams sent on (duplicates included).
    pub packets_forwarded: u64,
    /// Bytes sent on.
    pub bytes_forwarded: u64,
    /// Dropped by random loss.
    pub dropped_loss: u64,
    /// Dropped by a blackout, on arrival or while in flight.
    pub dropped_blackout: u64,
    /// Dropped by the rate limit's full queue (tail drop).
    pub dropped_rate: u64,
    /// Dropped because the delay line was full ([`IN_FLIGHT_PACKETS_MAX`]).
    pub dropped_overflow: u64,
    /// Down only: dropped because no client had been heard from yet.
    pub dropped_no_client: u64,
    /// Sends the OS refused.
    pub send_errors: u64,
    /// Extra copies made.
    pub duplicated: u64,
    /// Datagrams held back for reordering.
    pub reordered: u64,
}

impl DirectionStats {
    /// All drops.
    pub fn dropped(&self) -> u64 {
        self.dropped_loss
            + self.dropped_blackout
            + self.dropped_rate
            + self.dropped_overflow
            + self.dropped_no_client
            + self.send_errors
    }
}

/// Walks a [`Flap`]'s blackout windows in order.
#[derive(Debug)]
struct FlapCursor {
    flap: Flap,
    rng: TestRng,
    t: Duration,
    done: bool,
}

impl FlapCursor {
    fn new(flap: Flap) -> Self {
        FlapCursor {
            flap,
            rng: crate::rng(flap.seed ^ 0x466c_6170_466c_6170),
            t: flap.from,
            done: flap.max.is_zero(),
        }
    }

    fn phase(&mut self) -> Duration {
        let (lo, hi) = (self.flap.min, self.flap.max.max(self.flap.min));
        lo + (hi - lo).mul_f64(unit_f64(&mut self.rng))
    }
}

impl Iterator for FlapCursor {
    type Item = Blackout;

    fn next(&mut self) -> Option<Blackout> {
        if self.done {
            return None;
        }
        let up = self.phase();
        let down = self.phase();
        let start = self.t + up;
        let mut end = start + down;
        self.t = end;
        if let Some(until) = self.flap.until {
            if start >= until {
                self.done = true;
                return None;
            }
            if end >= until {
                end = until;
                self.done = true;
            }
        }
        Some(Blackout::new(start, end - start))
    }
}

/// The link's up/down state: scheduled windows, the flap generator and the manual switch.
#[derive(Debug)]
pub(super) struct LinkState {
    manual: bool,
    schedule: Vec<Blackout>,
    flap: Option<FlapCursor>,
    flap_window: Option<Blackout>,
}

impl LinkState {
    pub(super) fn new(schedule: Vec<Blackout>, flap: Option<Flap>) -> Self {
        let mut flap = flap.map(FlapCursor::new);
        let flap_window = flap.as_mut().and_then(Iterator::next);
        LinkState {
            manual: false,
            schedule,
            flap,
            flap_window,
        }
    }

    /// Force the link down (`true`) or hand it back to the schedule and flap (`false`).
    pub(super) fn set_manual(&mut self, on: bool) {
        self.manual = on;
    }

    /// Whether the link is down `elapsed` after the proxy started. Calls must not go back in
    /// time by more than a flap window: passed windows are forgotten.
    pub(super) fn down_at(&mut self, elapsed: Duration) -> bool {
        if self.manual || self.schedule.iter().any(|b| b.contains(elapsed)) {
            return true;
        }
        while let Some(w) = self.flap_window {
            if w.end() > elapsed {
                return w.contains(elapsed);
            }
            self.flap_window = self.flap.as_mut().and_then(Iterator::next);
        }
        false
    }
}

/// Release times of the copies of one datagram (none when it is dropped).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Releases {
    times: [Option<Instant>; 2],
}

impl Releases {
    /// When each copy should be sent, in order (the original first).
    pub fn iter(&self) -> impl Iterator<Item = Instant> + '_ {
        self.times.iter().flatten().copied()
    }

    /// Whether nothing is to be sent.
    pub fn is_empty(&self) -> bool {
        self.times[0].is_none() && self.times[1].is_none()
    }

    fn push(&mut self, at: Instant) {
        if self.times[0].is_none() {
            self.times[0] = Some(at);
        } else {
            self.times[1] = Some(at);
        }
    }
}

/// The sans-IO core of one direction: decides each datagram's fate from the arrival time, the
/// link state and the seeded random stream. Keeps its counters.
#[derive(Debug)]
pub struct Shaper {
    imp: Impairment,
    rng: TestRng,
    tokens: f64,
    tokens_at: Option<Instant>,
    rate_queue: VecDeque<(Instant, u64)>,
    rate_queue_bytes: u64,
    last_release: Option<Instant>,
    stats: DirectionStats,
}

impl Shaper {
    /// A shaper for `dir` whose random stream is derived from `seed`.
    pub fn new(seed: u64, dir: Direction, imp: Impairment) -> Self {
        Shaper {
            imp,
            rng: crate::rng(seed ^ dir.seed_salt()),
            tokens: 0.0,
            tokens_at: None,
            rate_queue: VecDeque::new(),
            rate_queue_bytes: 0,
            last_release: None,
            stats: DirectionStats::default(),
        }
    }

    /// The impairment in force.
    pub fn impairment(&self) -> &Impairment {
        &self.imp
    }

    /// Change the impairment; the random stream, the token bucket and queued datagrams carry on.
    pub fn set_impairment(&mut self, imp: Impairment) {
        self.imp = imp;
    }

    /// The counters so far.
    pub fn stats(&self) -> &DirectionStats {
        &self.stats
    }

    /// The counters, for the driver to add what happens after shaping (overflow, sends).
    pub(super) fn stats_mut(&mut self) -> &mut DirectionStats {
        &mut self.stats
    }

    /// A datagram of `len` bytes arrived at `now`, with the link down if `blackout`: when should
    /// its copies leave? Consumes exactly four random draws whatever the outcome.
    pub fn offer(&mut self, now: Instant, len: usize, blackout: bool) -> Releases {
        let u_loss = unit_f64(&mut self.rng);
        let u_dup = unit_f64(&mut self.rng);
        let u_reorder = unit_f64(&mut self.rng);
        let u_jitter = unit_f64(&mut self.rng);
        self.stats.packets_in += 1;
        self.stats.bytes_in += len as u64;
        let mut out = Releases::default();
        if blackout {
            self.stats.dropped_blackout += 1;
            return out;
        }
        if u_loss * 100.0 < self.imp.loss_pct {
            self.stats.dropped_loss += 1;
            return out;
        }
        let jitter_ms = self.imp.jitter_ms as f64;
        let delay = Duration::from_secs_f64(
            ((self.imp.delay_ms as f64 + (2.0 * u_jitter - 1.0) * jitter_ms) / 1000.0).max(0.0),
        );
        let copies = if u_dup * 100.0 < self.imp.duplicate_pct {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        for copy in 0..copies {
            let Some(depart) = self.rate_admit(now, len as u64) else {
                self.stats.dropped_rate += 1;
                continue;
            };
            let mut release = depart + delay;
            if let Some(last) = self.last_release {
                release = release.max(last);
            }
            if copy == 0 && u_reorder * 100.0 < self.imp.reorder_pct {
                self.stats.reordered += 1;
                out.push(release + Duration::from_millis(self.imp.reorder_hold_ms));
            } else {
                self.last_release = Some(release);
                out.push(release);
            }
        }
        out
    }

    /// Token bucket: when can `len` bytes arriving at `now` leave, or `None` for a tail drop.
    fn rate_admit(&mut self, now: Instant, len: u64) -> Option<Instant> {
        let Some(rate) = &self.imp.rate else {
            return Some(now);
        };
        while let Some(&(at, bytes)) = self.rate_queue.front() {
            if at > now {
                break;
            }
            self.rate_queue.pop_front();
            self.rate_queue_bytes -= bytes;
        }
        if self.rate_queue_bytes + len > rate.queue_bytes_max {
            return None;
        }
        let r = rate.bytes_per_s as f64;
        let bucket = rate.burst_bytes.max(len) as f64;
        let (start, tokens) = match self.tokens_at {
            None => (now, bucket),
            Some(at) if at >= now => (at, self.tokens.min(bucket)),
            Some(at) => (
                now,
                (self.tokens + r * (now - at).as_secs_f64()).min(bucket),
            ),
        };
        let l = len as f64;
        let depart = if tokens >= l {
            self.tokens = tokens - l;
            start
        } else {
            self.tokens = 0.0;
            start + Duration::from_secs_f64((l - tokens) / r)
        };
        self.tokens_at = Some(depart);
        if depart > now {
            self.rate_queue.push_back((depart, len));
            self.rate_queue_bytes += len;
        }
        Some(depart)
    }
}

#[cfg(test)]
mod tests {
    //! The sans-IO core on virtual time.

    use super::*;
    use std::collections::HashSet;

    const MS: Duration = Duration::from_millis(1);

    /// Offer `n` datagrams of `len` bytes, one every `gap`, from virtual time `t0`; returns the
    /// releases (offsets from arrival) per datagram.
    fn run_shaper(
        shaper: &mut Shaper,
        n: usize,
        len: usize,
        gap: Duration,
    ) -> Vec<(Instant, Vec<Instant>)> {
        let t0 = Instant::now();
        (0..n)
            .map(|i| {
                let now = t0 + gap * i as u32;
                let r = shaper.offer(now, len, false);
                (now, r.iter().collect())
            })
            .collect()
    }

    fn pct(part: u64, whole: u64) -> f64 {
        100.0 * part as f64 / whole as f64
    }

    // ---- the sans-IO core ------------------------------------------------------------------

    #[test]
    fn shaper_loss_rate_matches_configuration_over_100k() {
        for (loss, seed) in [(1.0, 1), (5.0, 2), (20.0, 3), (50.0, 4)] {
            let mut s = Shaper::new(seed, Direction::Up, Impairment::lossy(loss, 0));
            run_shaper(&mut s, 100_000, 100, MS);
            let measured = pct(s.stats().dropped_loss, s.stats().packets_in);
            println!("loss configured {loss}% measured {measured:.3}% over 100k");
            // Binomial sd at 100k is at most 0.16 percentage points.
            assert!((measured - loss).abs() < 0.5, "loss {loss}: {measured}");
        }
        let mut s = Shaper::new(9, Direction::Down, Impairment::lossy(0.0, 0));
        run_shaper(&mut s, 10_000, 100, MS);
        assert_eq!(s.stats().dropped_loss, 0);
        let mut s = Shaper::new(9, Direction::Down, Impairment::lossy(100.0, 0));
        run_shaper(&mut s, 10_000, 100, MS);
        assert_eq!(s.stats().dropped_loss, 10_000);
    }

    #[test]
    fn shaper_same_seed_same_fate_other_seed_or_direction_differs() {
        let imp = Impairment {
            loss_pct: 10.0,
            delay_ms: 50,
            jitter_ms: 10,
            reorder_pct: 5.0,
            duplicate_pct: 5.0,
            ..Impairment::default()
        };
        let fate = |seed, dir| {
            let mut s = Shaper::new(seed, dir, imp.clone());
            run_shaper(&mut s, 10_000, 500, 2 * MS)
                .into_iter()
                .map(|(at, rel)| rel.iter().map(|r| *r - at).collect::<Vec<_>>())
                .collect::<Vec<_>>()
        };
        assert_eq!(fate(42, Direction::Up), fate(42, Direction::Up));
        assert_ne!(fate(42, Direction::Up), fate(43, Direction::Up));
        assert_ne!(fate(42, Direction::Up), fate(42, Direction::Down));
    }

    #[test]
    fn shaper_fate_depends_on_packet_index_not_on_settings_changes() {
        // Each datagram consumes the same draws whatever its fate, so the loss pattern for one
        // seed does not shift when other knobs (or the blackout) change.
        let lost = |imp: Impairment, blackout_every: usize| {
            let mut s = Shaper::new(5, Direction::Up, imp);
            let t0 = Instant::now();
            (0..5_000)
                .filter(|i| {
                    let b = blackout_every > 0 && i % blackout_every == 0;
                    let before = s.stats().dropped_loss;
                    s.offer(t0 + MS * *i as u32, 200, b);
                    s.stats().dropped_loss > before
                })
                .collect::<HashSet<_>>()
        };
        let plain = lost(Impairment::lossy(10.0, 0), 0);
        let busy = lost(
            Impairment {
                duplicate_pct: 30.0,
                reorder_pct: 30.0,
                jitter_ms: 40,
                ..Impairment::lossy(10.0, 80)
            },
            0,
        );
        assert_eq!(plain, busy);
        let with_blackouts = lost(Impairment::lossy(10.0, 0), 7);
        assert!(with_blackouts.iter().all(|i| plain.contains(i)));
        assert!(with_blackouts.iter().all(|i| i % 7 != 0));
    }

    #[test]
    fn shaper_delay_and_jitter_stay_within_bounds_and_keep_order() {
        let imp = Impairment {
            delay_ms: 75,
            jitter_ms: 20,
            ..Impairment::default()
        };
        // Sparse traffic (gap > jitter span): the FIFO clamp never bites.
        let mut s = Shaper::new(1, Direction::Up, imp.clone());
        let out = run_shaper(&mut s, 10_000, 100, 50 * MS);
        let delays: Vec<f64> = out
            .iter()
            .map(|(at, r)| (r[0] - *at).as_secs_f64() * 1000.0)
            .collect();
        let mean = delays.iter().sum::<f64>() / delays.len() as f64;
        let (lo, hi) = delays
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), d| (l.min(*d), h.max(*d)));
        println!("delay 75±20 ms, 50 ms gaps: mean {mean:.2} min {lo:.2} max {hi:.2}");
        assert!(lo >= 55.0 - 1e-6 && hi <= 95.0 + 1e-6);
        assert!((mean - 75.0).abs() < 1.0);
        // Dense traffic: releases never go backwards (jitter does not reorder).
        let mut s = Shaper::new(2, Direction::Up, imp);
        let out = run_shaper(&mut s, 10_000, 100, MS);
        let rel: Vec<Instant> = out.iter().map(|(_, r)| r[0]).collect();
        assert!(rel.windows(2).all(|w| w[0] <= w[1]));
        let mean = out
            .iter()
            .map(|(at, r)| (r[0] - *at).as_secs_f64() * 1000.0)
            .sum::<f64>()
            / out.len() as f64;
        println!("delay 75±20 ms, 1 ms gaps: mean {mean:.2} (FIFO clamp)");
        assert!((75.0..=95.0).contains(&mean));
    }

    #[test]
    fn shaper_duplicates_and_reorders_at_configured_rates() {
        let imp = Impairment {
            duplicate_pct: 2.0,
            reorder_pct: 3.0,
            reorder_hold_ms: 25,
            delay_ms: 10,
            ..Impairment::default()
        };
        let mut s = Shaper::new(11, Direction::Down, imp);
        let out = run_shaper(&mut s, 100_000, 100, MS);
        let st = s.stats();
        let dup = pct(st.duplicated, st.packets_in);
        let reo = pct(st.reordered, st.packets_in);
        println!("duplicate 2% measured {dup:.3}%, reorder 3% measured {reo:.3}%");
        assert!((dup - 2.0).abs() < 0.3 && (reo - 3.0).abs() < 0.3);
        let copies: usize = out.iter().map(|(_, r)| r.len()).sum();
        assert_eq!(copies as u64, st.packets_in + st.duplicated);
        // A held datagram leaves after datagrams that arrived later.
        let overtaken = out
            .windows(2)
            .filter(|w| w[0].1.first() > w[1].1.first())
            .count();
        assert!(overtaken as u64 >= st.reordered * 9 / 10, "{overtaken}");
    }

    #[test]
    fn shaper_rate_limit_holds_the_rate_and_tail_drops() {
        // 2000 kbit/s = 250 kB/s, offered at twice that in 1200-byte datagrams for 20 s.
        let rate = RateLimit::kbps(2000);
        assert_eq!(rate.bytes_per_s, 250_000);
        let queue_ms = rate.queue_bytes_max as f64 / rate.bytes_per_s as f64 * 1000.0;
        let imp = Impairment {
            rate: Some(rate),
            ..Impairment::default()
        };
        let mut s = Shaper::new(3, Direction::Down, imp);
        let gap = Duration::from_micros(2_400);
        let out = run_shaper(&mut s, 8_333, 1200, gap);
        let sent: Vec<(Instant, Instant)> = out
            .iter()
            .filter_map(|(at, r)| r.first().map(|x| (*at, *x)))
            .collect();
        let first = sent[0].1;
        let last = sent[sent.len() - 1].1;
        let bytes = (sent.len() as f64 - 1.0) * 1200.0;
        let rate_measured = bytes / (last - first).as_secs_f64();
        let max_wait = sent
            .iter()
            .map(|(a, r)| (*r - *a).as_secs_f64() * 1000.0)
            .fold(0.0, f64::max);
        println!(
            "rate 250000 B/s measured {rate_measured:.0} B/s; dropped {:.1}%; max queueing {max_wait:.1} ms (queue {queue_ms:.0} ms)",
            pct(s.stats().dropped_rate, s.stats().packets_in)
        );
        assert!((rate_measured / 250_000.0 - 1.0).abs() < 0.01);
        assert!((pct(s.stats().dropped_rate, s.stats().packets_in) - 50.0).abs() < 3.0);
        assert!(max_wait <= queue_ms + 5.0);
        // Under the rate nothing waits and nothing drops.
        let mut s = Shaper::new(
            3,
            Direction::Down,
            Impairment {
                rate: Some(RateLimit::kbps(2000)),
                ..Impairment::default()
            },
        );
        let out = run_shaper(&mut s, 5_000, 1200, 10 * MS);
        assert_eq!(s.stats().dropped_rate, 0);
        assert!(out.iter().all(|(at, r)| r[0] == *at));
    }

    #[test]
    fn durations_blackouts_and_flap_ranges_parse() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("250ms").unwrap(), 250 * MS);
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5s").unwrap(), 1500 * MS);
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        for bad in ["", "s", "-1s", "5x", "1e400s", "NaN"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert_eq!(
            "30s@10s".parse::<Blackout>().unwrap(),
            Blackout::new(Duration::from_secs(10), Duration::from_secs(30))
        );
        assert_eq!(
            "120s@1m".parse::<Blackout>().unwrap(),
            Blackout::new(Duration::from_secs(60), Duration::from_secs(120))
        );
        assert!("30s".parse::<Blackout>().is_err());
        let s = Duration::from_secs;
        assert_eq!(parse_flap_range("2-5s").unwrap(), (s(2), s(5)));
        assert_eq!(parse_flap_range("2s-5s").unwrap(), (s(2), s(5)));
        assert_eq!(parse_flap_range("500ms-2s").unwrap(), (500 * MS, s(2)));
        assert_eq!(parse_flap_range("200-700ms").unwrap(), (200 * MS, 700 * MS));
        for bad in ["5-2s", "0-2s", "2s", "a-b"] {
            assert!(parse_flap_range(bad).is_err(), "{bad}");
        }
        assert!(Impairment::lossy(101.0, 0).validate().is_err());
        assert!(Impairment::lossy(-1.0, 0).validate().is_err());
        assert!(Impairment::lossy(f64::NAN, 0).validate().is_err());
    }

    #[test]
    fn flap_windows_are_seeded_bounded_and_stop_when_told() {
        let s = Duration::from_secs;
        let f = Flap::every(s(2), s(5), 77);
        let w = f.windows(s(600));
        assert_eq!(w, Flap::every(s(2), s(5), 77).windows(s(600)));
        assert_ne!(w, Flap::every(s(2), s(5), 78).windows(s(600)));
        let mut up_from = Duration::ZERO;
        for b in &w {
            let up = b.start - up_from;
            assert!(up >= s(2) && up <= s(5), "{up:?}");
            assert!(b.duration >= s(2) && b.duration <= s(5));
            up_from = b.end();
        }
        // Mean phase 3.5 s: about 600 / 7 windows.
        assert!((75..=100).contains(&w.len()), "{}", w.len());
        let g = Flap::every(s(2), s(5), 77).until(s(60));
        let w = g.windows(s(600));
        assert!(w.iter().all(|b| b.end() <= s(60)));
        let mut link = LinkState::new(vec![], Some(g));
        assert!(!link.down_at(Duration::ZERO));
        let down_ms = (0..120_000u64)
            .filter(|ms| link.down_at(Duration::from_millis(*ms)))
            .count();
        let expected: u128 = w.iter().map(|b| b.duration.as_millis()).sum();
        assert!((down_ms as i128 - expected as i128).abs() <= w.len() as i128);
        assert!(down_ms > 20_000 && down_ms < 40_000, "{down_ms}");
        assert!(!link.down_at(s(61)));
    }

    #[test]
    fn link_state_combines_schedule_flap_and_manual_switch() {
        let s = Duration::from_secs;
        let mut link = LinkState::new(vec![Blackout::new(s(10), s(30))], None);
        assert!(!link.down_at(s(9)));
        assert!(link.down_at(s(10)));
        assert!(link.down_at(s(39)));
        assert!(!link.down_at(s(40)));
        link.manual = true;
        assert!(link.down_at(s(41)));
        link.manual = false;
        assert!(!link.down_at(s(42)));
    }
}
