//! The proxy's socket side: a listen socket for the unit, a hub-facing socket that can be
//! rebound, a delay line per direction and the tokio tasks that receive, shape (with
//! [`Shaper`]) and release datagrams. This is where the clock is read.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::shaper::LinkState;
use super::{
    Direction, Impairment, ProxyConfig, ProxyError, Shaper, Stats, DATAGRAM_BYTES_MAX,
    IN_FLIGHT_PACKETS_MAX,
};

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
                st.shaper.stats_mut().dropped_overflow += 1;
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
        let s = st.shaper.stats_mut();
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
        lock(&self.shared.link).set_manual(on);
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
    //! The proxy on loopback against plain UDP sinks and echo servers, and real quinn through it.

    use super::*;
    use crate::proxy::{DirectionStats, RateLimit};
    use std::collections::HashSet;

    const MS: Duration = Duration::from_millis(1);

    fn loopback() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 0))
    }

    fn pct(part: u64, whole: u64) -> f64 {
        100.0 * part as f64 / whole as f64
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
