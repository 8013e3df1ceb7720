//! The QUIC sync client: connects to the hub with the unit's fleet certificate, drives one
//! sans-IO [`UnitSession`] per connection, applies batches to the [`Cache`] (atomically with
//! the cursor, durable before the acknowledgement), answers on-demand fetches, and reconnects
//! with capped exponential back-off and jitter whenever the link drops.
//!
//! Streams: the unit opens the **pull** stream at once (hello, acks; the hub's side is
//! deflate-compressed) and a **fetch** stream the first time a tablet asks for a patient
//! outside the cache, so a bulk catch-up never delays a fetch.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::frame::FrameDecoder;
use edge_proto::sync::{
    encode_frame, FetchResult, InflateDeframer, ProtocolError, StreamKind, ToUnit,
    UnitConfig as SessionConfig, UnitEvent, UnitSession,
};
use edge_runtime::config::UnitConfig;
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::cache::Cache;
use crate::status::{Link, Status};

/// The wall clock, as the protocol's time type.
pub use edge_runtime::clock::wall_now as now;

/// A tablet's request for a patient outside the cache.
#[derive(Debug)]
pub struct FetchRequest {
    pub nhs: NhsNumber,
    pub reply: oneshot::Sender<FetchResult>,
}

/// How the LAN API asks the sync task for on-demand fetches.
#[derive(Debug, Clone)]
pub struct Fetcher {
    tx: mpsc::Sender<FetchRequest>,
    status: Arc<Status>,
    budget: Duration,
}

impl Fetcher {
    /// Fetch one summary within the budget. With the link down the answer is immediate.
    pub async fn fetch(&self, nhs: NhsNumber) -> FetchResult {
        if self.status.link() == Link::Down {
            return FetchResult::NotConnected;
        }
        let (reply, rx) = oneshot::channel();
        if self.tx.try_send(FetchRequest { nhs, reply }).is_err() {
            return FetchResult::Busy;
        }
        match tokio::time::timeout(self.budget + Duration::from_millis(200), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => FetchResult::NotConnected,
            Err(_) => FetchResult::TimedOut,
        }
    }
}

/// Everything the sync task needs.
pub struct SyncClient {
    pub config: UnitConfig,
    pub cache: Arc<Cache>,
    pub status: Arc<Status>,
    hub_key: [u8; 32],
    endpoint: quinn::Endpoint,
    hub_addr: SocketAddr,
    fetch_rx: mpsc::Receiver<FetchRequest>,
    /// The audit journal, uploaded on its own stream (issue 6).
    journal: Option<crate::journal::Journal>,
    /// The last connection's path round-trip time (sizes connection attempts).
    path_rtt: Duration,
}

impl std::fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("hub", &self.hub_addr)
            .finish()
    }
}

impl SyncClient {
    /// Build the client from the unit's config (TLS from its bundle).
    pub fn new(
        config: UnitConfig,
        cache: Arc<Cache>,
        status: Arc<Status>,
    ) -> anyhow::Result<(SyncClient, Fetcher)> {
        let tls = edge_runtime::tls::unit_client_config(&config)
            .context("cannot build the unit's TLS config from its bundle")?;
        let quic = QuicClientConfig::try_from(tls).context("QUIC client config")?;
        let mut client = quinn::ClientConfig::new(Arc::new(quic));
        let keepalive =
            Duration::from_millis(config.sync.keepalive_interval_ms.clamp(1_000, 60_000));
        let mut transport = quinn::TransportConfig::default();
        transport
            .keep_alive_interval(Some(keepalive))
            .max_idle_timeout(Some(
                quinn::IdleTimeout::try_from(keepalive + Duration::from_secs(5))
                    .context("idle timeout")?,
            ));
        client.transport_config(Arc::new(transport));
        let bind: SocketAddr = if config.hub.addr.ip().is_some_and(|ip| ip.is_ipv6()) {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(bind).context("cannot open a UDP socket")?;
        endpoint.set_default_client_config(client);
        let hub_addr = resolve(&config)?;
        let hub_key = edge_runtime::keys::load_ed25519_public(&config.keys.record_verify)
            .context("cannot load the hub's record-verification key")?;
        let (tx, fetch_rx) = mpsc::channel(64);
        let budget = Duration::from_millis(config.sync.fetch_budget_ms.clamp(100, 10_000));
        let fetcher = Fetcher {
            tx,
            status: status.clone(),
            budget,
        };
        Ok((
            SyncClient {
                config,
                cache,
                status,
                hub_key,
                endpoint,
                hub_addr,
                fetch_rx,
                journal: None,
                path_rtt: Duration::ZERO,
            },
            fetcher,
        ))
    }

    /// Upload this journal's events whenever the link is up.
    pub fn with_journal(mut self, journal: crate::journal::Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// The fleet ordered this unit wiped: destroy the cache's data key now (the journal keeps
    /// its own key, so pending audit events still upload).
    fn wipe(&self, reason: &str) {
        tracing::error!(
            reason,
            "REMOTE WIPE ordered by the hub: destroying the cache's data key"
        );
        if let Err(e) = crate::seal::shred(&self.config.data_dir.join("keys")) {
            warn!(error = %e, "cannot remove the wrapped data key file");
        }
        self.cache.shredded();
    }

    /// Run forever: connect, sync, reconnect.
    ///
    /// Delays between attempts: an attempt the hub did not answer (the link is presumed down)
    /// is retried with exponential back-off and jitter capped at `reconnect_max_ms` (0.2 s by
    /// default), each attempt waiting `connect_attempt_ms` for the hub's first answer (0.6 s:
    /// one Initial, ended before quinn's first probe at about 1 s; three path round trips if
    /// longer) and then up to 10 s for the rest of the handshake,
    /// so an Initial leaves about once a second and a link that returns is used within about
    /// two seconds. After `reconnect_fast_s` (10 min) without the hub the cap becomes
    /// `reconnect_slow_max_ms` (5 s), to spare the radio of a unit parked out of coverage. An
    /// attempt the hub answered with a refusal backs off up to `reconnect_refused_max_ms`
    /// (60 s), since retrying fast would not change the answer.
    pub async fn run(mut self) {
        let mut policy = Reconnect::new(&self.config.sync);
        let origin = tokio::time::Instant::now();
        loop {
            let mut out = Outcome::default();
            let r = self
                .connect_and_sync(&mut out, policy.stall_timeout())
                .await;
            self.status.update(|l| {
                l.link = Link::Down;
                l.caught_up = false;
                if out.stalled {
                    l.link_stalls += 1;
                }
                if let Err(e) = &r {
                    l.last_error = Some(format!("{e:#}"));
                }
            });
            match &r {
                Ok(()) => info!("link to the hub closed; reconnecting"),
                Err(e) if out.established || out.stalled => {
                    warn!(error = %format!("{e:#}"), "link to the hub lost; reconnecting");
                }
                // Unanswered attempts repeat every second or so while the link is down.
                Err(e) if !out.refused => {
                    debug!(error = %format!("{e:#}"), "no answer from the hub; trying again");
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "the hub refused the unit; retrying later")
                }
            }
            let (base, spread) = policy.after(out, origin.elapsed());
            let wait = Duration::from_millis(base + jitter_ms(spread));
            // Answer fetches while waiting: the link is down.
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            loop {
                tokio::select! {
                    _ = &mut sleep => break,
                    Some(req) = self.fetch_rx.recv() => {
                        let _ = req.reply.send(FetchResult::NotConnected);
                    }
                }
            }
        }
    }

    async fn connect_and_sync(
        &mut self,
        out: &mut Outcome,
        stall_timeout: Duration,
    ) -> anyhow::Result<()> {
        let mut connecting = self
            .endpoint
            .connect(self.hub_addr, &self.config.hub.name)
            .context("cannot start a connection")?;
        // Wait `connect_attempt_ms` for the hub's first answer (one Initial, given up before
        // quinn's first probe): a link that is down costs one datagram per attempt. A path
        // seen slow before gets three of its round trips. Once the hub has answered, the
        // handshake is given time to finish: a slow handshake is never abandoned half-way.
        let answer_within = Duration::from_millis(self.config.sync.connect_attempt_ms.max(200))
            .max((self.path_rtt * 3).min(Duration::from_secs(10)));
        match tokio::time::timeout(answer_within, connecting.handshake_data()).await {
            Err(_) => anyhow::bail!("the hub did not answer within {answer_within:?}"),
            Ok(Err(e)) => {
                out.refused = is_refusal(&e);
                return Err(explain(e));
            }
            Ok(Ok(_)) => {}
        }
        let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Err(_) => anyhow::bail!(
                "the handshake with the hub did not finish within {HANDSHAKE_TIMEOUT:?}"
            ),
            Ok(Err(e)) => {
                out.refused = is_refusal(&e);
                return Err(explain(e));
            }
            Ok(Ok(c)) => c,
        };
        let mut min_rtt = conn.rtt();
        debug!(hub = %self.hub_addr, "connected to the hub");
        let (mut pull_send, mut pull_recv) = conn.open_bi().await.map_err(explain)?;
        let state = self.cache.state()?;
        let mut session = UnitSession::new(
            self.config.device_id.clone(),
            state,
            &self.hub_key,
            SessionConfig {
                fetch_budget_ms: i64::try_from(self.config.sync.fetch_budget_ms).unwrap_or(1_500),
                ..SessionConfig::default()
            },
        );
        let base_rx = self.status.update(|l| {
            l.connects += 1;
            l.link_bytes_received
        });
        let watch = Arc::new(Watch::new());
        // Audit upload on its own stream, not waiting for the pull.
        let uploader = self.journal.clone().map(|j| {
            tokio::spawn(upload_audit(
                conn.clone(),
                j,
                self.status.clone(),
                watch.clone(),
            ))
        });
        let _abort_uploader = AbortOnDrop(uploader);
        let mut pull_in = InflateDeframer::new();
        let mut fetch_stream: Option<quinn::SendStream> = None;
        let (fetch_bytes_tx, mut fetch_bytes_rx) =
            mpsc::unbounded_channel::<Result<Vec<u8>, String>>();
        let mut fetch_in = FrameDecoder::new();
        let mut waiting: HashMap<u64, oneshot::Sender<FetchResult>> = HashMap::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut result: anyhow::Result<()> = Ok(());
        let mut watchdog = tokio::time::interval(WATCHDOG_TICK);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut acks_seen = 0u64;
        'conn: loop {
            // Handle the session's events (applies in order, durable before the ack).
            while let Some(ev) = session.poll_event() {
                match ev {
                    UnitEvent::Apply(apply) => {
                        let cache = self.cache.clone();
                        let t = now();
                        let applied = tokio::task::spawn_blocking(move || {
                            let r = cache.apply(&apply, t);
                            (apply, r)
                        })
                        .await
                        .context("apply task")?;
                        let (apply, r) = applied;
                        let applied = r.context("cannot write the batch to the cache")?;
                        // Time spent applying is not time the hub was silent.
                        watch.touch();
                        out.progressed = true;
                        let n = applied.report.written;
                        session.batch_applied(apply.batch_no, &applied.report)?;
                        let cursor = session.durable_state().cursor;
                        let rebaselining = session.in_baseline();
                        let rx = conn.stats().udp_rx.bytes;
                        self.status.update(|l| {
                            l.link_bytes_received = base_rx + rx;
                            l.cursor = cursor;
                            l.rebaselining = rebaselining;
                            l.last_sync_at = Some(now());
                            l.batches_applied += 1;
                            l.records_received += n;
                            if l.caught_up {
                                l.cache_as_of = Some(now().plus_ms(l.hub_offset_ms));
                            }
                        });
                        // Withdrawn or evicted patients: also drop any on-demand copy.
                        for nhs in &applied.removed {
                            let _ = self.cache.remove_fetched(nhs);
                        }
                    }
                    UnitEvent::BeginRebaseline { epoch, reason } => {
                        info!(epoch, reason = ?reason, "the hub is re-baselining this unit's cache");
                        self.status.update(|l| l.rebaselining = true);
                    }
                    UnitEvent::HubTime { offset_ms, .. } => {
                        out.established = true;
                        info!(offset_ms, "sync link up");
                        self.status.update(|l| {
                            l.link = Link::Up;
                            l.hub_offset_ms = offset_ms;
                            l.last_error = None;
                        });
                        let _ = self.cache.update_meta(|m| m.hub_offset_ms = offset_ms);
                    }
                    UnitEvent::CaughtUp { cursor } => {
                        out.progressed = true;
                        let t = now();
                        let meta = self.cache.update_meta(|m| {
                            m.last_sync_at = Some(t);
                            m.cache_as_of = Some(t.plus_ms(m.hub_offset_ms));
                        });
                        let _ = self.cache.flush();
                        info!(cursor, records = self.cache.len(), "caught up with the hub");
                        self.status.update(|l| {
                            l.caught_up = true;
                            l.rebaselining = false;
                            l.cursor = cursor;
                            l.last_sync_at = Some(t);
                            if let Ok(m) = &meta {
                                l.cache_as_of = m.cache_as_of;
                            }
                        });
                    }
                    UnitEvent::Fetched {
                        request_id,
                        result,
                        nhs,
                    } => {
                        if let FetchResult::Withdrawn = &result {
                            let _ = self.cache.remove_fetched(&nhs);
                        }
                        if let Some(w) = waiting.remove(&request_id) {
                            let _ = w.send(result);
                        }
                    }
                }
            }
            // Send what the session has queued.
            while let Some(msg) = session.poll_transmit() {
                let bytes = encode_frame(&msg)?;
                match msg.stream() {
                    StreamKind::Pull | StreamKind::Audit => pull_send.write_all(&bytes).await?,
                    StreamKind::Fetch => {
                        if fetch_stream.is_none() {
                            let (send, mut recv) = conn.open_bi().await.map_err(explain)?;
                            let tx = fetch_bytes_tx.clone();
                            tokio::spawn(async move {
                                let mut b = vec![0u8; 64 * 1024];
                                loop {
                                    match recv.read(&mut b).await {
                                        Ok(Some(n)) => {
                                            if tx.send(Ok(b[..n].to_vec())).is_err() {
                                                return;
                                            }
                                        }
                                        Ok(None) => return,
                                        Err(e) => {
                                            let _ = tx.send(Err(e.to_string()));
                                            return;
                                        }
                                    }
                                }
                            });
                            fetch_stream = Some(send);
                        }
                        if let Some(send) = fetch_stream.as_mut() {
                            send.write_all(&bytes).await?;
                        }
                    }
                }
            }
            if session.is_ended() {
                break 'conn;
            }
            let timeout = session.poll_timeout();
            let sleep_for = timeout
                .map(|t| Duration::from_millis(u64::try_from(t.0 - now().0).unwrap_or(0)))
                .unwrap_or(Duration::from_secs(3600));
            tokio::select! {
                biased;
                r = pull_recv.read(&mut buf) => match r {
                    Ok(Some(n)) => {
                        watch.touch();
                        pull_in.push(&buf[..n])?;
                        loop {
                            match pull_in.next_message::<ToUnit>() {
                                Ok(Some(ToUnit::Wipe { reason })) => {
                                    self.wipe(&reason);
                                    // Stay connected while the audit journal drains.
                                    let e = conn.closed().await;
                                    result = Err(explain(e));
                                    break 'conn;
                                }
                                Ok(Some(msg)) => {
                                    if let Err(e) = session.handle_message(now(), msg) {
                                        out.refused = matches!(
                                            e,
                                            ProtocolError::Refused { .. } | ProtocolError::VersionMismatch { .. }
                                        );
                                        result = Err(anyhow::anyhow!(e).context("the hub's sync messages were refused"));
                                        break 'conn;
                                    }
                                }
                                Ok(None) => break,
                                Err(e) => {
                                    result = Err(anyhow::anyhow!(e).context("bad frame from the hub"));
                                    break 'conn;
                                }
                            }
                        }
                    }
                    Ok(None) => { result = Err(anyhow::anyhow!("the hub closed the sync stream")); break 'conn; }
                    Err(e) => { result = Err(anyhow::anyhow!("sync stream: {e}")); break 'conn; }
                },
                Some(chunk) = fetch_bytes_rx.recv() => {
                    let chunk = match chunk { Ok(c) => c, Err(e) => { result = Err(anyhow::anyhow!("fetch stream: {e}")); break 'conn; } };
                    watch.touch();
                    fetch_in.push(&chunk)?;
                    while let Some(msg) = fetch_in.next_message::<ToUnit>()? {
                        if let Err(e) = session.handle_message(now(), msg) {
                            result = Err(anyhow::anyhow!(e).context("the hub's fetch answer was refused"));
                            break 'conn;
                        }
                    }
                }
                Some(req) = self.fetch_rx.recv() => {
                    let id = session.fetch(now(), req.nhs);
                    waiting.insert(id, req.reply);
                }
                e = conn.closed() => {
                    out.refused = !out.established && is_refusal(&e);
                    result = Err(explain(e));
                    break 'conn;
                }
                _ = tokio::time::sleep(sleep_for) => {
                    session.handle_timeout(now());
                }
                _ = watchdog.tick() => {
                    min_rtt = min_rtt.min(conn.rtt());
                    // The hub acknowledging anything (our pings included) shows the path
                    // works and the hub is reading; only silence counts as a stall.
                    let acks = conn.stats().frame_rx.acks;
                    if acks != acks_seen {
                        acks_seen = acks;
                        watch.touch();
                    }
                    let outstanding = !session.is_caught_up()
                        || !waiting.is_empty()
                        || watch.audit_waiting.load(Ordering::Relaxed);
                    if outstanding && watch.quiet_for() >= stall_timeout {
                        out.stalled = true;
                        result = Err(anyhow::anyhow!(
                            "nothing from the hub for {} ms with work outstanding (stall watchdog)",
                            watch.quiet_for().as_millis()
                        ));
                        break 'conn;
                    }
                }
            }
        }
        if watch.progressed.load(Ordering::Relaxed) {
            out.progressed = true;
        }
        session.connection_lost();
        // Applies handed out before the loss were verified: apply them (saves re-sending).
        while let Some(ev) = session.poll_event() {
            match ev {
                UnitEvent::Apply(apply) => {
                    let cache = self.cache.clone();
                    let t = now();
                    let r = tokio::task::spawn_blocking(move || {
                        cache.apply(&apply, t).map(|a| (apply.batch_no, a))
                    })
                    .await;
                    match r {
                        Ok(Ok((no, a))) => {
                            let _ = session.batch_applied(no, &a.report);
                        }
                        _ => break,
                    }
                }
                UnitEvent::Fetched {
                    request_id, result, ..
                } => {
                    if let Some(w) = waiting.remove(&request_id) {
                        let _ = w.send(result);
                    }
                }
                _ => {}
            }
        }
        for (_, w) in waiting.drain() {
            let _ = w.send(FetchResult::NotConnected);
        }
        let cursor = session.durable_state().cursor;
        self.status.update(|l| l.cursor = cursor);
        if out.established {
            // The smallest smoothed RTT seen: the path's, without the queueing of a bulk
            // transfer on a rate-limited cell.
            self.path_rtt = min_rtt.min(conn.rtt());
        }
        conn.close(0u32.into(), b"bye");
        result
    }
}

/// Once the hub has answered, how long the rest of the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Audit batches in flight at once (the hub acknowledges them in order).
const AUDIT_PIPELINE: usize = 2;
/// How often the stall watchdog looks.
const WATCHDOG_TICK: Duration = Duration::from_millis(250);
/// Stalls in a row without progress before the stall timeout starts to double.
const STALLS_BEFORE_BACKING_OFF: u32 = 3;
/// The stall timeout grows (doubling) while stalls repeat without progress, up to this.
const MAX_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The reconnection policy (see [`SyncClient::run`]): pure, so it is tested without a network.
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
}

impl Reconnect {
    pub fn new(s: &edge_runtime::config::SyncConfig) -> Self {
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
        }
    }

    /// The stall watchdog's timeout for the next connection.
    pub fn stall_timeout(&self) -> Duration {
        self.stall_timeout
    }

    /// A connection (or attempt) ended at `now` (any monotonic clock): the delay before the
    /// next attempt as (base ms, jitter spread ms); wait base + a random 0..=spread.
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
        } else if out_of_reach > self.fast_for {
            self.slow_max_ms
        } else {
            self.max_ms
        };
        let b = self.backoff_ms.min(cap);
        self.backoff_ms = (b * 2).min(cap);
        (b / 2, b / 2)
    }
}

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

/// What the stall watchdog reads, shared with the audit uploader: when the hub last sent
/// anything, and whether an upload waits for the hub's acknowledgement.
#[derive(Debug)]
struct Watch {
    start: tokio::time::Instant,
    last_heard_ms: AtomicU64,
    audit_waiting: AtomicBool,
    progressed: AtomicBool,
}

impl Watch {
    fn new() -> Self {
        Watch {
            start: tokio::time::Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            audit_waiting: AtomicBool::new(false),
            progressed: AtomicBool::new(false),
        }
    }

    fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Heard from the hub (or finished local work that kept the unit from listening).
    fn touch(&self) {
        self.last_heard_ms
            .store(self.elapsed_ms(), Ordering::Relaxed);
    }

    fn quiet_for(&self) -> Duration {
        Duration::from_millis(
            self.elapsed_ms()
                .saturating_sub(self.last_heard_ms.load(Ordering::Relaxed)),
        )
    }
}

/// True when the hub answered and refused, rather than not answering.
fn is_refusal(e: &quinn::ConnectionError) -> bool {
    matches!(
        e,
        quinn::ConnectionError::ConnectionClosed(_)
            | quinn::ConnectionError::ApplicationClosed(_)
            | quinn::ConnectionError::VersionMismatch
            | quinn::ConnectionError::TransportError(_)
    )
}

/// Aborts a task when dropped (the uploader ends with its connection).
struct AbortOnDrop(Option<tokio::task::JoinHandle<anyhow::Result<()>>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Upload the journal in order, in batches, on its own stream; mark events uploaded only on
/// the hub's acknowledgement that they are durably stored. Runs until the connection ends.
async fn upload_audit(
    conn: quinn::Connection,
    journal: crate::journal::Journal,
    status: Arc<Status>,
    watch: Arc<Watch>,
) -> anyhow::Result<()> {
    use edge_proto::sync::wire::MAX_AUDIT_BATCH;
    let (mut send, mut recv) = conn.open_bi().await.map_err(explain)?;
    let mut dec = FrameDecoder::new();
    let mut buf = vec![0u8; 64 * 1024];
    // Up to AUDIT_PIPELINE batches in flight: the next batch is read from the journal and sent
    // while the hub stores (and fsyncs) the one before. Each entry: (first seq, last seq).
    let mut in_flight: std::collections::VecDeque<(u64, u64)> = std::collections::VecDeque::new();
    let mut next_from = journal.uploaded_seq() + 1;
    loop {
        while in_flight.len() < AUDIT_PIPELINE {
            let from = next_from;
            let j = journal.clone();
            let events =
                tokio::task::spawn_blocking(move || j.read_from(from, MAX_AUDIT_BATCH, 6 << 20))
                    .await
                    .context("audit read task")?
                    .context("cannot read the audit journal")?;
            let Some(last) = events.last().map(|e| e.seq) else {
                break;
            };
            if in_flight.is_empty() {
                watch.touch();
            }
            watch.audit_waiting.store(true, Ordering::Relaxed);
            send.write_all(&encode_frame(&edge_proto::sync::ToHub::Audit { events })?)
                .await?;
            in_flight.push_back((from, last));
            next_from = last + 1;
        }
        let Some((from, last)) = in_flight.pop_front() else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // Wait for the acknowledgement of the oldest batch (the hub answers in order).
        let ack = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                if let Some(m) = dec.next_message::<ToUnit>()? {
                    return anyhow::Ok(m);
                }
                match recv.read(&mut buf).await? {
                    Some(k) => {
                        watch.touch();
                        dec.push(&buf[..k])?;
                    }
                    None => anyhow::bail!("the hub closed the audit stream"),
                }
            }
        })
        .await
        .context("no audit acknowledgement within 30 s")??;
        let ToUnit::AuditAck { upto_seq, problems } = ack else {
            anyhow::bail!("unexpected message on the audit stream");
        };
        if in_flight.is_empty() {
            watch.audit_waiting.store(false, Ordering::Relaxed);
        }
        watch.progressed.store(true, Ordering::Relaxed);
        if !problems.is_empty() {
            warn!(
                problems = problems.len(),
                "the hub reported problems in this unit's audit trail"
            );
        }
        let upto = upto_seq.min(last);
        if upto >= from {
            let j = journal.clone();
            tokio::task::spawn_blocking(move || j.mark_uploaded(upto))
                .await
                .context("audit mark task")?
                .context("cannot record the upload")?;
        }
        let (pending, uploaded) = (journal.pending(), journal.uploaded_seq());
        status.update(|l| {
            l.audit_pending = pending;
            l.audit_uploaded_seq = uploaded;
        });
        debug!(n = last + 1 - from, upto, pending, "audit events uploaded");
        if upto < last {
            // The hub kept less than was sent: start again from what it has (its store is
            // idempotent on device and sequence number, so nothing is counted twice).
            anyhow::bail!(
                "the hub acknowledged audit events up to {upto}, not {last}; resending from there"
            );
        }
    }
}

fn resolve(config: &UnitConfig) -> anyhow::Result<SocketAddr> {
    if let Some(a) = config.hub.addr.socket_addr() {
        return Ok(a);
    }
    use std::net::ToSocketAddrs;
    let text = format!("{}:{}", config.hub.addr.host(), config.hub.addr.port());
    text.to_socket_addrs()
        .with_context(|| format!("cannot resolve the hub address {text}"))?
        .next()
        .with_context(|| format!("no address for {text}"))
}

/// A connection error in words (TLS alerts explained).
fn explain(e: quinn::ConnectionError) -> anyhow::Error {
    match &e {
        quinn::ConnectionError::ConnectionClosed(c) => {
            let code = u64::from(c.error_code);
            match edge_runtime::tls::explain_quic_close(code) {
                Some(why) => anyhow::anyhow!("{e}: {why}"),
                None => anyhow::anyhow!("{e}"),
            }
        }
        quinn::ConnectionError::ApplicationClosed(c) => {
            anyhow::anyhow!(
                "the hub closed the connection: {}",
                String::from_utf8_lossy(&c.reason)
            )
        }
        _ => anyhow::anyhow!("{e}"),
    }
}

/// Up to `max` ms of jitter (from the OS's random source).
fn jitter_ms(max: u64) -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    if max == 0 || ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0;
    }
    u64::from_le_bytes(b) % (max + 1)
}
