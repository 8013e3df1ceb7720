//! A seeded UDP impairment proxy: a userspace stand-in for `tc netem` (the kernel here has none)
//! that sits between a unit and the hub on loopback and makes the link look like flaky 4G.
//!
//! The unit sends to [`Proxy::listen_addr`]; the proxy forwards to the upstream (the hub's QUIC
//! port) from its own UDP socket and relays the hub's replies back to the client address it last
//! heard from. Each direction ([`Direction::Up`] unit → hub, [`Direction::Down`] hub → unit) has
//! its own [`Impairment`]: loss, delay and jitter, reordering, duplication and a token-bucket rate
//! limit with a bounded queue (tail drop). Blackouts — scheduled windows, a seeded flapping
//! generator, or switched by hand — drop every packet in both directions, including packets
//! already in flight. [`Proxy::rebind_upstream_socket`] moves the hub-facing side to a new local
//! port mid-flow, which the hub sees as the client changing address (QUIC connection migration,
//! a NAT rebinding or a modem reconnect).
//!
//! What happens to each datagram is decided by a sans-IO core, [`Shaper`], which reads no clock
//! and owns no socket: given the arrival time it returns the release times of the copies to send.
//! Every datagram consumes the same four random draws whatever happens to it, so for one seed
//! the n-th datagram of a direction always meets the same loss, duplication, reordering and
//! jitter fate, whatever the timing. Drops by blackout and by the rate limit depend on when
//! packets arrive, so they are as reproducible as the traffic's timing.
//!
//! The binary `kerbside-netem` wraps this for scripts; `docs/link-impairment.md` has recipes.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

/// The largest datagram the proxy relays (the UDP maximum).
pub const DATAGRAM_BYTES_MAX: usize = 65_535;

/// Datagrams waiting in one direction's delay line at most; more are dropped (`dropped_overflow`).
pub const IN_FLIGHT_PACKETS_MAX: usize = 65_536;

/// How long a packet picked for reordering is held back by default, on top of its delay.
pub const REORDER_HOLD_MS_DEFAULT: u64 = 25;

/// Rate-limit queue by default: this much time at the configured rate (4G buffers are deep).
pub const RATE_QUEUE_MS_DEFAULT: u64 = 250;

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

/// Everything the proxy needs to start.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    /// Where the unit sends (port 0 for any free port; see [`Proxy::listen_addr`]).
    pub listen: SocketAddr,
    /// The hub's UDP address.
    pub upstream: SocketAddr,
    /// Seed of the per-direction random streams.
    pub seed: u64,
    /// Unit → hub.
    pub up: Impairment,
    /// Hub → unit.
    pub down: Impairment,
    /// Scheduled blackouts, relative to the start.
    pub blackouts: Vec<Blackout>,
    /// A flapping link, on top of the scheduled blackouts.
    pub flap: Option<Flap>,
}

impl ProxyConfig {
    /// A perfect link from `listen` to `upstream`, seed 0.
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Self {
        ProxyConfig {
            listen,
            upstream,
            seed: 0,
            up: Impairment::none(),
            down: Impairment::none(),
            blackouts: Vec::new(),
            flap: None,
        }
    }

    /// The same impairment in both directions.
    pub fn both(mut self, imp: Impairment) -> Self {
        self.up = imp.clone();
        self.down = imp;
        self
    }

    /// Set the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// Why the proxy could not do what was asked.
#[derive(Debug)]
pub enum ProxyError {
    /// A socket could not be bound or inspected.
    Socket {
        /// The address involved.
        addr: SocketAddr,
        /// The cause.
        source: io::Error,
    },
    /// A setting out of range or unparsable.
    Invalid(String),
    /// Called outside a tokio runtime.
    NoRuntime,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProxyError::Socket { addr, .. } => write!(f, "udp socket {addr}"),
            ProxyError::Invalid(m) => f.write_str(m),
            ProxyError::NoRuntime => f.write_str("the proxy needs a tokio runtime"),
        }
    }
}

impl std::error::Error for ProxyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ProxyError::Socket { source, .. } => Some(source),
            _ => None,
        }
    }
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

/// A snapshot of the proxy's counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    /// Time since the proxy started.
    pub elapsed_ms: u64,
    /// Unit → hub.
    pub up: DirectionStats,
    /// Hub → unit.
    pub down: DirectionStats,
    /// Upstream socket changes so far.
    pub rebinds: u64,
    /// Whether a blackout is in force now.
    pub blackout_active: bool,
    /// The client address replies go to.
    pub client: Option<SocketAddr>,
    /// The local address of the current hub-facing socket (what the hub sees as the client).
    pub upstream_local: SocketAddr,
}

/// xoshiro256** seeded through SplitMix64: small, fast, and the same on every platform and
/// crate version, so a seed stays replayable.
#[derive(Clone, Debug)]
struct SeededRng {
    s: [u64; 4],
}

impl SeededRng {
    fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        SeededRng {
            s: [next(), next(), next(), next()],
        }
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.s;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// Walks a [`Flap`]'s blackout windows in order.
#[derive(Clone, Debug)]
struct FlapCursor {
    flap: Flap,
    rng: SeededRng,
    t: Duration,
    done: bool,
}

impl FlapCursor {
    fn new(flap: Flap) -> Self {
        FlapCursor {
            flap,
            rng: SeededRng::new(flap.seed ^ 0x466c_6170_466c_6170),
            t: flap.from,
            done: flap.max.is_zero(),
        }
    }

    fn phase(&mut self) -> Duration {
        let (lo, hi) = (self.flap.min, self.flap.max.max(self.flap.min));
        lo + (hi - lo).mul_f64(self.rng.unit())
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
struct LinkState {
    manual: bool,
    schedule: Vec<Blackout>,
    flap: Option<FlapCursor>,
    flap_window: Option<Blackout>,
}

impl LinkState {
    fn new(schedule: Vec<Blackout>, flap: Option<Flap>) -> Self {
        let mut flap = flap.map(FlapCursor::new);
        let flap_window = flap.as_mut().and_then(Iterator::next);
        LinkState {
            manual: false,
            schedule,
            flap,
            flap_window,
        }
    }

    fn down_at(&mut self, elapsed: Duration) -> bool {
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
    rng: SeededRng,
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
            rng: SeededRng::new(seed ^ dir.seed_salt()),
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

    /// A datagram of `len` bytes arrived at `now`, with the link down if `blackout`: when should
    /// its copies leave? Consumes exactly four random draws whatever the outcome.
    pub fn offer(&mut self, now: Instant, len: usize, blackout: bool) -> Releases {
        let u_loss = self.rng.unit();
        let u_dup = self.rng.unit();
        let u_reorder = self.rng.unit();
        let u_jitter = self.rng.unit();
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

/// A datagram waiting in the delay line.
#[derive(Debug)]
struct Pending {
    at: Instant,
    seq: u64,
    data: Vec<u8>,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    // Reversed: BinaryHeap is a max-heap and the earliest release must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Debug)]
struct DirState {
    shaper: Shaper,
    line: BinaryHeap<Pending>,
    seq: u64,
}

struct Shared {
    started: Instant,
    upstream: SocketAddr,
    client_sock: Arc<UdpSocket>,
    upstream_sock: Mutex<Arc<UdpSocket>>,
    client: Mutex<Option<SocketAddr>>,
    link: Mutex<LinkState>,
    up: Mutex<DirState>,
    down: Mutex<DirState>,
    up_wake: Notify,
    down_wake: Notify,
    rebinds: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Shared {
    fn dir(&self, dir: Direction) -> (&Mutex<DirState>, &Notify) {
        match dir {
            Direction::Up => (&self.up, &self.up_wake),
            Direction::Down => (&self.down, &self.down_wake),
        }
    }

    fn blackout_at(&self, now: Instant) -> bool {
        lock(&self.link).down_at(now.saturating_duration_since(self.started))
    }

    /// A datagram arrived for `dir`: shape it and queue its copies.
    fn offer(&self, dir: Direction, data: &[u8]) {
        let now = Instant::now();
        let blackout = self.blackout_at(now);
        let (state, wake) = self.dir(dir);
        let mut st = lock(state);
        let releases = st.shaper.offer(now, data.len(), blackout);
        let mut queued = false;
        for at in releases.iter() {
            if st.line.len() >= IN_FLIGHT_PACKETS_MAX {
                st.shaper.stats.dropped_overflow += 1;
                continue;
            }
            st.seq += 1;
            let seq = st.seq;
            st.line.push(Pending {
                at,
                seq,
                data: data.to_vec(),
            });
            queued = true;
        }
        drop(st);
        if queued {
            wake.notify_one();
        }
    }

    /// Send one due datagram, unless the link went down while it was in flight.
    async fn send(&self, dir: Direction, p: Pending) {
        let outcome = if self.blackout_at(Instant::now()) {
            Outcome::Blackout
        } else {
            match dir {
                Direction::Up => {
                    let sock = lock(&self.upstream_sock).clone();
                    Outcome::Sent(sock.send_to(&p.data, self.upstream).await)
                }
                Direction::Down => {
                    let client = *lock(&self.client);
                    match client {
                        None => Outcome::NoClient,
                        Some(c) => Outcome::Sent(self.client_sock.send_to(&p.data, c).await),
                    }
                }
            }
        };
        let mut st = lock(self.dir(dir).0);
        let s = &mut st.shaper.stats;
        match outcome {
            Outcome::Blackout => s.dropped_blackout += 1,
            Outcome::NoClient => s.dropped_no_client += 1,
            Outcome::Sent(Ok(n)) => {
                s.packets_forwarded += 1;
                s.bytes_forwarded += n as u64;
            }
            Outcome::Sent(Err(e)) => {
                s.send_errors += 1;
                tracing::debug!(%dir, error = %e, "proxy send failed");
            }
        }
    }
}

enum Outcome {
    Blackout,
    NoClient,
    Sent(io::Result<usize>),
}

async fn run_sender(shared: Arc<Shared>, dir: Direction) {
    loop {
        let (due, next) = {
            let mut st = lock(shared.dir(dir).0);
            let now = Instant::now();
            let mut due = Vec::new();
            while st.line.peek().is_some_and(|p| p.at <= now) {
                if let Some(p) = st.line.pop() {
                    due.push(p);
                }
            }
            (due, st.line.peek().map(|p| p.at))
        };
        if !due.is_empty() {
            for p in due {
                shared.send(dir, p).await;
            }
            continue;
        }
        let wake = shared.dir(dir).1;
        match next {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at) => {}
                    _ = wake.notified() => {}
                }
            }
            None => wake.notified().await,
        }
    }
}

async fn run_client_rx(shared: Arc<Shared>) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    let sock = shared.client_sock.clone();
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) => {
                *lock(&shared.client) = Some(from);
                shared.offer(Direction::Up, &buf[..n]);
            }
            Err(e) => {
                tracing::debug!(error = %e, "proxy listen socket recv");
                tokio::task::yield_now().await;
            }
        }
    }
}

async fn run_upstream_rx(shared: Arc<Shared>, sock: Arc<UdpSocket>) {
    let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
    loop {
        match sock.recv_from(&mut buf).await {
            Ok((n, from)) if from == shared.upstream => shared.offer(Direction::Down, &buf[..n]),
            Ok((_, from)) => tracing::debug!(%from, "proxy ignores a datagram not from upstream"),
            Err(e) => {
                tracing::debug!(error = %e, "proxy upstream socket recv");
                tokio::task::yield_now().await;
            }
        }
    }
}

fn bind_udp(addr: SocketAddr) -> Result<UdpSocket, ProxyError> {
    let err = |source| ProxyError::Socket { addr, source };
    let std_sock = std::net::UdpSocket::bind(addr).map_err(err)?;
    std_sock.set_nonblocking(true).map_err(err)?;
    UdpSocket::from_std(std_sock).map_err(err)
}

fn local_addr(sock: &UdpSocket) -> SocketAddr {
    sock.local_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
}

/// The hub-facing socket binds to the upstream's own address when it is loopback (so the hub
/// sees 127.0.0.1:PORT), otherwise to the unspecified address of its family.
fn upstream_bind_addr(upstream: SocketAddr) -> SocketAddr {
    match upstream {
        SocketAddr::V4(a) if a.ip().is_loopback() => SocketAddr::from((*a.ip(), 0)),
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(a) if a.ip().is_loopback() => SocketAddr::from((*a.ip(), 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    }
}

#[derive(Debug, Default)]
struct Tasks {
    fixed: Vec<AbortHandle>,
    upstream_rx: Option<AbortHandle>,
}

/// A running impairment proxy. Dropping it stops it.
pub struct Proxy {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
    tasks: Mutex<Tasks>,
    listen: SocketAddr,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.listen)
            .field("upstream", &self.shared.upstream)
            .finish_non_exhaustive()
    }
}

impl Proxy {
    /// Bind the listen socket and a hub-facing socket and start relaying. Needs a tokio runtime;
    /// the proxy's clock (blackout schedule, flap) starts now.
    pub async fn start(cfg: ProxyConfig) -> Result<Proxy, ProxyError> {
        Proxy::start_in(cfg, tokio::runtime::Handle::current())
    }

    fn start_in(cfg: ProxyConfig, rt: tokio::runtime::Handle) -> Result<Proxy, ProxyError> {
        cfg.up.validate()?;
        cfg.down.validate()?;
        if let Some(f) = &cfg.flap {
            if f.min.is_zero() || f.min > f.max {
                return Err(ProxyError::Invalid("flap needs 0 < min <= max".to_string()));
            }
        }
        let _guard = rt.enter();
        let client_sock = Arc::new(bind_udp(cfg.listen)?);
        let listen = local_addr(&client_sock);
        let upstream_sock = Arc::new(bind_udp(upstream_bind_addr(cfg.upstream))?);
        let shared = Arc::new(Shared {
            started: Instant::now(),
            upstream: cfg.upstream,
            client_sock,
            upstream_sock: Mutex::new(upstream_sock.clone()),
            client: Mutex::new(None),
            link: Mutex::new(LinkState::new(cfg.blackouts, cfg.flap)),
            up: Mutex::new(DirState {
                shaper: Shaper::new(cfg.seed, Direction::Up, cfg.up),
                line: BinaryHeap::new(),
                seq: 0,
            }),
            down: Mutex::new(DirState {
                shaper: Shaper::new(cfg.seed, Direction::Down, cfg.down),
                line: BinaryHeap::new(),
                seq: 0,
            }),
            up_wake: Notify::new(),
            down_wake: Notify::new(),
            rebinds: AtomicU64::new(0),
        });
        let fixed = vec![
            rt.spawn(run_client_rx(shared.clone())).abort_handle(),
            rt.spawn(run_sender(shared.clone(), Direction::Up))
                .abort_handle(),
            rt.spawn(run_sender(shared.clone(), Direction::Down))
                .abort_handle(),
        ];
        let upstream_rx = rt
            .spawn(run_upstream_rx(shared.clone(), upstream_sock))
            .abort_handle();
        tracing::debug!(%listen, upstream = %cfg.upstream, "impairment proxy started");
        Ok(Proxy {
            shared,
            rt,
            tasks: Mutex::new(Tasks {
                fixed,
                upstream_rx: Some(upstream_rx),
            }),
            listen,
        })
    }

    /// Where the unit should send (the actual port when the config asked for port 0).
    pub fn listen_addr(&self) -> SocketAddr {
        self.listen
    }

    /// The hub's address.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The local address of the current hub-facing socket: the client address the hub sees.
    pub fn upstream_local_addr(&self) -> SocketAddr {
        local_addr(&lock(&self.shared.upstream_sock))
    }

    /// Time since the proxy started (the origin of the blackout schedule).
    pub fn elapsed(&self) -> Duration {
        self.shared.started.elapsed()
    }

    /// Force the link down (`true`), or hand it back to the schedule and flap (`false`).
    pub fn set_blackout(&self, on: bool) {
        lock(&self.shared.link).manual = on;
    }

    /// Whether a blackout (manual, scheduled or flap) is in force now.
    pub fn blackout_active(&self) -> bool {
        self.shared.blackout_at(Instant::now())
    }

    /// Replace one direction's impairment. Datagrams already in flight keep their release time.
    pub fn set_impairment(&self, dir: Direction, imp: Impairment) -> Result<(), ProxyError> {
        imp.validate()?;
        lock(self.shared.dir(dir).0).shaper.set_impairment(imp);
        Ok(())
    }

    /// One direction's impairment in force.
    pub fn impairment(&self, dir: Direction) -> Impairment {
        lock(self.shared.dir(dir).0).shaper.impairment().clone()
    }

    /// Move the hub-facing side to a new local UDP socket (a new port): the hub sees the client's
    /// address change mid-flow, as after a NAT rebinding. The old socket is closed at once, so
    /// the hub's datagrams to the old address are lost, as they would be. Returns the new local
    /// address.
    pub fn rebind_upstream_socket(&self) -> Result<SocketAddr, ProxyError> {
        let _guard = self.rt.enter();
        let sock = Arc::new(bind_udp(upstream_bind_addr(self.shared.upstream))?);
        let addr = local_addr(&sock);
        let rx = self
            .rt
            .spawn(run_upstream_rx(self.shared.clone(), sock.clone()))
            .abort_handle();
        *lock(&self.shared.upstream_sock) = sock;
        if let Some(old) = lock(&self.tasks).upstream_rx.replace(rx) {
            old.abort();
        }
        self.shared.rebinds.fetch_add(1, AtomicOrdering::Relaxed);
        tracing::debug!(new = %addr, "impairment proxy rebound its upstream socket");
        Ok(addr)
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        let up = lock(&self.shared.up).shaper.stats().clone();
        let down = lock(&self.shared.down).shaper.stats().clone();
        Stats {
            elapsed_ms: self.elapsed().as_millis() as u64,
            up,
            down,
            rebinds: self.shared.rebinds.load(AtomicOrdering::Relaxed),
            blackout_active: self.blackout_active(),
            client: *lock(&self.shared.client),
            upstream_local: self.upstream_local_addr(),
        }
    }

    /// Stop relaying (also done on drop).
    pub fn stop(&self) {
        let mut t = lock(&self.tasks);
        for h in t.fixed.drain(..) {
            h.abort();
        }
        if let Some(h) = t.upstream_rx.take() {
            h.abort();
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    //! Core tests run the sans-IO [`Shaper`] on virtual time; socket tests run the proxy on
    //! loopback against plain UDP sinks and echo servers, and two run real quinn through it.

    use super::*;
    use std::collections::HashSet;

    const MS: Duration = Duration::from_millis(1);

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

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

    // ---- on loopback -----------------------------------------------------------------------

    /// A UDP server that records every datagram (arrival time, payload, source).
    type Seen = Arc<Mutex<Vec<(Instant, Vec<u8>, SocketAddr)>>>;

    struct Server {
        addr: SocketAddr,
        seen: Seen,
        task: AbortHandle,
    }

    impl Drop for Server {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Server {
        fn seen(&self) -> Vec<(Instant, Vec<u8>, SocketAddr)> {
            lock(&self.seen).clone()
        }
    }

    /// Records datagrams and, if `echo`, sends each back to its source.
    async fn server(echo: bool) -> Server {
        let sock = UdpSocket::bind(loopback()).await.unwrap();
        let addr = sock.local_addr().unwrap();
        let seen: Seen = Arc::default();
        let rec = seen.clone();
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; DATAGRAM_BYTES_MAX];
            loop {
                let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                    continue;
                };
                lock(&rec).push((Instant::now(), buf[..n].to_vec(), from));
                if echo {
                    let _ = sock.send_to(&buf[..n], from).await;
                }
            }
        })
        .abort_handle();
        Server { addr, seen, task }
    }

    async fn proxy(upstream: SocketAddr, seed: u64, up: Impairment, down: Impairment) -> Proxy {
        let mut cfg = ProxyConfig::new(loopback(), upstream).seed(seed);
        cfg.up = up;
        cfg.down = down;
        Proxy::start(cfg).await.unwrap()
    }

    async fn client(p: &Proxy) -> UdpSocket {
        let c = UdpSocket::bind(loopback()).await.unwrap();
        c.connect(p.listen_addr()).await.unwrap();
        c
    }

    /// Send `n` numbered datagrams of `len` bytes, paced so loopback buffers never overflow.
    async fn send_numbered(c: &UdpSocket, n: u32, len: usize) {
        for i in 0..n {
            let mut d = vec![0u8; len.max(4)];
            d[..4].copy_from_slice(&i.to_be_bytes());
            c.send(&d).await.unwrap();
            if i % 50 == 49 {
                tokio::time::sleep(MS).await;
            }
        }
    }

    fn numbers(seen: &[(Instant, Vec<u8>, SocketAddr)]) -> Vec<u32> {
        seen.iter()
            .map(|(_, d, _)| u32::from_be_bytes([d[0], d[1], d[2], d[3]]))
            .collect()
    }

    /// Wait until the proxy has nothing in flight and the server's count stops moving.
    async fn settle(p: &Proxy, s: &Server) {
        let mut last = usize::MAX;
        for _ in 0..200 {
            tokio::time::sleep(20 * MS).await;
            let n = lock(&s.seen).len();
            let st = p.stats();
            let idle = |d: &DirectionStats| {
                d.packets_in + d.duplicated == d.packets_forwarded + d.dropped()
            };
            if n == last && idle(&st.up) && idle(&st.down) {
                return;
            }
            last = n;
        }
    }

    #[tokio::test]
    async fn udp_loss_rate_over_10k_datagrams_is_within_tolerance() {
        let sink = server(false).await;
        let p = proxy(
            sink.addr,
            2026,
            Impairment::lossy(5.0, 0),
            Impairment::none(),
        )
        .await;
        let c = client(&p).await;
        send_numbered(&c, 10_000, 64).await;
        settle(&p, &sink).await;
        let st = p.stats().up;
        let got = sink.seen().len() as u64;
        let measured = pct(st.dropped_loss, st.packets_in);
        println!(
            "udp: loss 5% over {} datagrams: dropped {} ({measured:.2}%), delivered {got}",
            st.packets_in, st.dropped_loss
        );
        assert_eq!(st.packets_in, 10_000);
        assert_eq!(got, st.packets_forwarded);
        assert_eq!(got + st.dropped_loss, 10_000);
        assert!((measured - 5.0).abs() < 1.0);
    }

    #[tokio::test]
    async fn udp_same_seed_gives_the_same_drop_pattern() {
        let imp = Impairment {
            duplicate_pct: 5.0,
            ..Impairment::lossy(20.0, 0)
        };
        let mut patterns = Vec::new();
        for seed in [7, 7, 8] {
            let sink = server(false).await;
            let p = proxy(sink.addr, seed, imp.clone(), Impairment::none()).await;
            let c = client(&p).await;
            send_numbered(&c, 2_000, 32).await;
            settle(&p, &sink).await;
            let mut got = numbers(&sink.seen());
            got.sort_unstable();
            assert_eq!(got.len() as u64, p.stats().up.packets_forwarded);
            patterns.push(got);
        }
        assert_eq!(patterns[0], patterns[1]);
        assert_ne!(patterns[0], patterns[2]);
        let distinct: HashSet<_> = patterns[0].iter().collect();
        assert!(distinct.len() < patterns[0].len(), "some duplicates");
    }

    #[tokio::test]
    async fn udp_delay_is_applied_each_way() {
        let echo = server(true).await;
        let imp = Impairment {
            delay_ms: 75,
            jitter_ms: 10,
            ..Impairment::default()
        };
        let p = proxy(echo.addr, 1, imp.clone(), imp).await;
        let c = client(&p).await;
        let mut rtts = Vec::new();
        let mut buf = [0u8; 64];
        for i in 0..20u32 {
            let t = Instant::now();
            c.send(&i.to_be_bytes()).await.unwrap();
            tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
                .await
                .unwrap()
                .unwrap();
            rtts.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        let mean = rtts.iter().sum::<f64>() / rtts.len() as f64;
        let min = rtts.iter().copied().fold(f64::MAX, f64::min);
        let max = rtts.iter().copied().fold(0.0, f64::max);
        println!("udp: 75±10 ms each way: RTT mean {mean:.1} min {min:.1} max {max:.1} ms");
        assert!(min >= 130.0, "{min}");
        assert!((140.0..=175.0).contains(&mean), "{mean}");
    }

    #[tokio::test]
    async fn udp_blackout_drops_everything_both_ways_including_in_flight() {
        let echo = server(true).await;
        let p = proxy(echo.addr, 1, Impairment::none(), Impairment::none()).await;
        let c = client(&p).await;
        let mut buf = [0u8; 64];
        c.send(b"hello").await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        p.set_blackout(true);
        assert!(p.blackout_active());
        send_numbered(&c, 200, 16).await;
        assert!(
            tokio::time::timeout(300 * MS, c.recv(&mut buf))
                .await
                .is_err(),
            "nothing gets through a blackout"
        );
        assert_eq!(echo.seen().len(), 1);
        assert_eq!(p.stats().up.dropped_blackout, 200);
        // Replies are dropped too: the link goes down while the echo is on its way back.
        p.set_blackout(false);
        p.set_impairment(
            Direction::Down,
            Impairment {
                delay_ms: 300,
                ..Impairment::default()
            },
        )
        .unwrap();
        c.send(b"late").await.unwrap();
        tokio::time::sleep(100 * MS).await;
        assert_eq!(echo.seen().len(), 2, "up got through");
        p.set_blackout(true);
        tokio::time::sleep(400 * MS).await;
        assert_eq!(p.stats().down.dropped_blackout, 1, "in flight, dropped");
        p.set_blackout(false);
        c.send(b"again").await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..5], b"again");
    }

    #[tokio::test]
    async fn udp_scheduled_blackout_window_is_honoured() {
        let sink = server(false).await;
        let mut cfg = ProxyConfig::new(loopback(), sink.addr);
        cfg.blackouts = vec!["400ms@300ms".parse().unwrap()];
        let p = Proxy::start(cfg).await.unwrap();
        let c = client(&p).await;
        let mut sent = Vec::new();
        for i in 0..100u32 {
            sent.push(p.elapsed());
            c.send(&i.to_be_bytes()).await.unwrap();
            tokio::time::sleep(10 * MS).await;
        }
        settle(&p, &sink).await;
        let got: HashSet<u32> = numbers(&sink.seen()).into_iter().collect();
        // Allow 10 ms either side of the edges for scheduling.
        for (i, at) in sent.iter().enumerate() {
            let ms = at.as_millis();
            if (310..690).contains(&ms) {
                assert!(!got.contains(&(i as u32)), "{i} at {ms} ms got through");
            } else if !(290..710).contains(&ms) {
                assert!(got.contains(&(i as u32)), "{i} at {ms} ms lost");
            }
        }
        let in_window = sent
            .iter()
            .filter(|t| (310..690).contains(&t.as_millis()))
            .count();
        assert!(in_window >= 10, "{in_window}");
        assert_eq!(p.stats().up.dropped_blackout, 100 - got.len() as u64);
    }

    #[tokio::test]
    async fn udp_rate_limit_holds_throughput_near_the_set_rate() {
        let sink = server(false).await;
        // 2000 kbit/s = 250 kB/s; offer about twice that for 2 s.
        let imp = Impairment {
            rate: Some(RateLimit::kbps(2000)),
            ..Impairment::default()
        };
        let p = proxy(sink.addr, 1, imp, Impairment::none()).await;
        let c = client(&p).await;
        let start = Instant::now();
        let mut i = 0u32;
        while start.elapsed() < Duration::from_secs(2) {
            let target = (start.elapsed().as_secs_f64() * 500_000.0 / 1200.0) as u32;
            while i < target {
                let mut d = vec![0u8; 1200];
                d[..4].copy_from_slice(&i.to_be_bytes());
                c.send(&d).await.unwrap();
                i += 1;
            }
            tokio::time::sleep(2 * MS).await;
        }
        settle(&p, &sink).await;
        let seen = sink.seen();
        let span = (seen[seen.len() - 1].0 - seen[0].0).as_secs_f64();
        let rate = (seen.len() - 1) as f64 * 1200.0 / span;
        let st = p.stats().up;
        println!(
            "udp: rate 250000 B/s, offered ~500000 B/s: delivered {rate:.0} B/s over {span:.2} s, tail-dropped {:.1}%",
            pct(st.dropped_rate, st.packets_in)
        );
        assert!((rate / 250_000.0 - 1.0).abs() < 0.1, "{rate}");
        assert!(st.dropped_rate > 0);
        assert_eq!(seen.len() as u64, st.packets_forwarded);
    }

    #[tokio::test]
    async fn udp_rebind_changes_the_source_address_the_hub_sees() {
        let echo = server(true).await;
        let p = proxy(echo.addr, 1, Impairment::none(), Impairment::none()).await;
        let c = client(&p).await;
        let mut buf = [0u8; 64];
        let before = p.upstream_local_addr();
        c.send(b"one").await.unwrap();
        tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let after = p.rebind_upstream_socket().unwrap();
        assert_ne!(before, after);
        assert_eq!(p.upstream_local_addr(), after);
        c.send(b"two").await.unwrap();
        let n = tokio::time::timeout(Duration::from_secs(2), c.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"two");
        let sources: Vec<SocketAddr> = echo.seen().iter().map(|(_, _, a)| *a).collect();
        assert_eq!(sources, vec![before, after]);
        assert_eq!(p.stats().rebinds, 1);
    }

    // ---- real quinn through the proxy ------------------------------------------------------

    /// A quinn server with a self-signed certificate that answers one bidirectional stream (an
    /// 8-byte length in, that many pattern bytes out) and reports the client address it saw once
    /// the client acknowledged everything; and a client trusting it, sending keep-alives every
    /// `keep_alive` if set (the daemon does, every `sync.keepalive_interval_ms`), idle timeout
    /// 20 s.
    async fn quinn_pair(
        keep_alive: Option<Duration>,
    ) -> (
        quinn::Endpoint,
        quinn::Endpoint,
        tokio::sync::oneshot::Receiver<SocketAddr>,
    ) {
        use quinn::rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let cert: CertificateDer<'static> = ck.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
        let server_cfg =
            quinn::ServerConfig::with_single_cert(vec![cert.clone()], key.into()).unwrap();
        let server = quinn::Endpoint::server(server_cfg, loopback()).unwrap();
        let mut roots = quinn::rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let mut client_cfg = quinn::ClientConfig::with_root_certificates(Arc::new(roots)).unwrap();
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(keep_alive)
            .max_idle_timeout(Some(Duration::from_secs(20).try_into().unwrap()));
        client_cfg.transport_config(Arc::new(transport));
        let mut client = quinn::Endpoint::client(loopback()).unwrap();
        client.set_default_client_config(client_cfg);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let srv = server.clone();
        tokio::spawn(async move {
            let conn = srv.accept().await.unwrap().await.unwrap();
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            let mut len = [0u8; 8];
            recv.read_exact(&mut len).await.unwrap();
            let len = u64::from_be_bytes(len) as usize;
            send.write_all(&pattern(len)).await.unwrap();
            send.finish().unwrap();
            let _ = send.stopped().await;
            let _ = tx.send(conn.remote_address());
            conn.closed().await;
        });
        (server, client, rx)
    }

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// What to do to the link once half the transfer has arrived.
    #[derive(Clone, Copy, PartialEq)]
    enum AtHalf {
        Nothing,
        /// Change the client's address.
        Rebind,
        /// Change the client's address and lose everything hub → unit for a while, so that the
        /// hub's PATH_CHALLENGE on the new path is certainly lost.
        RebindLosingDown(Duration),
    }

    struct Fetched {
        took: Duration,
        /// The hub-facing address before and after the rebind.
        rebound: Option<(SocketAddr, SocketAddr)>,
        /// The longest wait between two reads after the event at half.
        stall_after_half: Duration,
        /// The client address the server saw at the end.
        seen_by_server: SocketAddr,
        stats: Stats,
    }

    /// Fetch `len` bytes from a fresh quinn server through a proxy with `imp` both ways.
    async fn quinn_fetch(
        seed: u64,
        imp: Impairment,
        len: usize,
        at_half: AtHalf,
        keep_alive: Option<Duration>,
    ) -> Result<Fetched, quinn::ReadError> {
        let (srv, client, seen_rx) = quinn_pair(keep_alive).await;
        let p = Arc::new(proxy(srv.local_addr().unwrap(), seed, imp.clone(), imp).await);
        let start = Instant::now();
        let conn = client
            .connect(p.listen_addr(), "localhost")
            .unwrap()
            .await
            .unwrap();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(&(len as u64).to_be_bytes()).await.unwrap();
        send.finish().unwrap();
        let mut got = Vec::with_capacity(len);
        let mut rebound = None;
        let mut half_at: Option<Instant> = None;
        let mut last_read = Instant::now();
        let mut stall = Duration::ZERO;
        let mut buf = vec![0u8; 64 * 1024];
        while let Some(n) = recv.read(&mut buf).await? {
            got.extend_from_slice(&buf[..n]);
            if half_at.is_some() {
                stall = stall.max(last_read.elapsed());
            }
            last_read = Instant::now();
            if half_at.is_none() && got.len() >= len / 2 {
                half_at = Some(Instant::now());
                if let AtHalf::RebindLosingDown(d) = at_half {
                    let saved = p.impairment(Direction::Down);
                    p.set_impairment(Direction::Down, Impairment::lossy(100.0, 0))
                        .unwrap();
                    let p2 = p.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(d).await;
                        p2.set_impairment(Direction::Down, saved).unwrap();
                    });
                }
                if at_half != AtHalf::Nothing {
                    let before = p.upstream_local_addr();
                    rebound = Some((before, p.rebind_upstream_socket().unwrap()));
                }
            }
        }
        let took = start.elapsed();
        assert!(got == pattern(len), "payload intact");
        let seen_by_server = seen_rx.await.unwrap();
        conn.close(0u32.into(), b"done");
        Ok(Fetched {
            took,
            rebound,
            stall_after_half: stall,
            seen_by_server,
            stats: p.stats(),
        })
    }

    /// The "5% loss + 150 ms RTT" (75 ms each way, a little jitter).
    fn lossy_4g() -> Impairment {
        Impairment {
            jitter_ms: 10,
            ..Impairment::lossy(5.0, 75)
        }
    }

    const LEN: usize = 256 * 1024;

    #[tokio::test]
    async fn quinn_transfer_completes_through_5pct_loss_and_150ms_rtt() {
        let f = quinn_fetch(2026, lossy_4g(), LEN, AtHalf::Nothing, None)
            .await
            .unwrap();
        let st = &f.stats;
        println!(
            "quinn: 256 KiB through 5% loss + 150 ms RTT in {:.2} s ({:.1} kB/s); lost up {}/{} down {}/{}",
            f.took.as_secs_f64(),
            LEN as f64 / f.took.as_secs_f64() / 1000.0,
            st.up.dropped_loss,
            st.up.packets_in,
            st.down.dropped_loss,
            st.down.packets_in
        );
        assert!(st.up.dropped_loss > 0 && st.down.dropped_loss > 0);
        assert_eq!(f.seen_by_server, st.upstream_local);
    }

    #[tokio::test]
    async fn quinn_connection_survives_an_address_change_mid_transfer() {
        // The client sends keep-alives, as the daemon does: quinn 0.11 sends the PATH_CHALLENGE
        // for the new path once, so if it (or the answer) is lost the hub falls back to the old,
        // dead address and only a packet from the client sets it right (see the next test).
        let f = quinn_fetch(
            9,
            lossy_4g(),
            LEN,
            AtHalf::Rebind,
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
        let (before, after) = f.rebound.expect("rebound at half");
        println!(
            "quinn: 256 KiB, rebind at half, 5% loss + 150 ms RTT: {:.2} s, longest stall after the rebind {:.2} s; hub saw {before}, then {}",
            f.took.as_secs_f64(),
            f.stall_after_half.as_secs_f64(),
            f.seen_by_server
        );
        assert_ne!(before, after);
        assert_eq!(f.seen_by_server, after, "the hub followed the client");
        assert_eq!(f.stats.rebinds, 1);
    }

    #[tokio::test]
    async fn quinn_recovers_after_an_address_change_with_hub_to_unit_lost_for_3s() {
        // The hub's PATH_CHALLENGE for the new address is lost and its path validation fails
        // (it falls back to the old, dead address); the client's next packet from the new
        // address starts a new validation once the link is back.
        let f = quinn_fetch(
            3,
            Impairment::lossy(0.0, 75),
            LEN,
            AtHalf::RebindLosingDown(Duration::from_secs(3)),
            Some(Duration::from_secs(1)),
        )
        .await
        .unwrap();
        let (_, after) = f.rebound.expect("rebound at half");
        println!(
            "quinn: rebind, hub -> unit lost for 3 s, keep-alive 1 s: longest stall {:.2} s",
            f.stall_after_half.as_secs_f64()
        );
        assert_eq!(f.seen_by_server, after);
        // Back within 2 s of the link returning.
        assert!(f.stall_after_half < Duration::from_secs(5));
    }

    /// A measurement, not a check: how often a receive-only quinn 0.11 client without
    /// keep-alives loses its connection when its address changes mid-transfer under 5% loss +
    /// 150 ms RTT. quinn-proto sends the PATH_CHALLENGE for the new path in one packet (then
    /// only piggybacked, and the anti-amplification limit blocks it: the client sends only small
    /// ACKs); if it or the answer is lost, validation fails after 3 PTO, the hub falls back to
    /// the old, dead address, and if the client has nothing of its own in flight nothing ever
    /// corrects it until the idle timeout. Run with `--ignored --nocapture`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "a measurement of quinn behaviour (about 25 s); run by hand"]
    async fn quinn_rebind_without_keep_alive_trials() {
        let trials = 12u64;
        let handles: Vec<_> = (0..trials)
            .map(|seed| {
                tokio::spawn(async move {
                    tokio::time::timeout(
                        Duration::from_secs(60),
                        quinn_fetch(seed, lossy_4g(), LEN, AtHalf::Rebind, None),
                    )
                    .await
                })
            })
            .collect();
        let mut lost = Vec::new();
        for (seed, h) in handles.into_iter().enumerate() {
            match h.await.unwrap() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => lost.push(format!("seed {seed}: {e}")),
                Err(_) => lost.push(format!("seed {seed}: stuck")),
            }
        }
        println!(
            "quinn, rebind at half, no keep-alive: {} of {trials} connections lost {lost:?}",
            lost.len()
        );
    }
}
