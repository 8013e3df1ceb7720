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
//!
//! Layout: this module holds the configuration, errors and counters; [`shaper`] the pure
//! impairment model (the link's up/down state, loss, delay, duplication, reordering, the rate
//! limit), which takes time as an argument; [`driver`] the sockets and tokio tasks that feed it.

use std::fmt;
use std::io;
use std::net::SocketAddr;

use serde::Serialize;

pub mod driver;
pub mod shaper;

pub use driver::Proxy;
pub use shaper::{
    parse_duration, parse_flap_range, Blackout, Direction, DirectionStats, Flap, Impairment,
    RateLimit, Releases, Shaper,
};

/// The largest datagram the proxy relays (the UDP maximum).
pub const DATAGRAM_BYTES_MAX: usize = 65_535;

/// Datagrams waiting in one direction's delay line at most; more are dropped (`dropped_overflow`).
pub const IN_FLIGHT_PACKETS_MAX: usize = 65_536;

/// How long a packet picked for reordering is held back by default, on top of its delay.
pub const REORDER_HOLD_MS_DEFAULT: u64 = 25;

/// Rate-limit queue by default: this much time at the configured rate (4G buffers are deep).
pub const RATE_QUEUE_MS_DEFAULT: u64 = 250;

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
