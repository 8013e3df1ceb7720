//! The QUIC sync client: connects to the hub with the unit's fleet certificate, drives one
//! sans-IO [`UnitSession`] per connection, applies batches to the [`Cache`] (atomically with
//! the cursor, durable before the acknowledgement), answers on-demand fetches, and reconnects
//! with capped exponential back-off and jitter whenever the link drops.
//!
//! Streams: the unit opens the **pull** stream at once (hello, acks; the hub's side is
//! deflate-compressed) and a **fetch** stream the first time a tablet asks for a patient
//! outside the cache, so a bulk catch-up never delays a fetch.
//!
//! Layout: this file is the driver (I/O only); the decisions are pure and clock-passed-in:
//! [`policy`] (reconnection back-off, the stall watchdog, keep-alive and attempt budgets) and
//! [`upload`] (the audit-upload pipeline). `audit` is the uploader's I/O half, `quic` the
//! connection plumbing both share.

mod audit;
pub mod netwatch;
pub mod policy;
mod quic;
mod renew;
pub mod upload;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use edge_proto::audit::Purpose;
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::frame::FrameDecoder;
use edge_proto::sync::BearerToken;
use edge_proto::sync::{
    encode_frame, Apply, FetchResult, InflateDeframer, ProtocolError, StreamKind, ToUnit,
    UnitConfig as SessionConfig, UnitEvent, UnitSession,
};
use edge_runtime::clock::{SharedClock, SystemClock};
use edge_runtime::config::{HubLink, UnitConfig};
use quinn::crypto::rustls::QuicClientConfig;
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, info, warn};

use self::policy::{HANDSHAKE_TIMEOUT, WATCHDOG_TICK};

/// While the disk is full: how often free space is checked, and the longest wait between
/// attempts (each also uploads audit, which frees space).
const DISK_FULL_CHECK: Duration = Duration::from_secs(2);
const DISK_FULL_RETRY: Duration = Duration::from_secs(60);
use self::quic::{explain, is_refusal, random_u64, resolve};
use crate::cache::Cache;
use crate::status::{Link, Status};

pub use self::policy::{LinkDecision, LinkEvent, LinkWatch, Outcome, Reconnect, Transport};
pub use self::upload::{AuditUpload, UploadAction, UploadConfig, UploadEvent};

/// The wall clock, as the protocol's time type.
pub use edge_runtime::clock::wall_now as now;

/// A tablet's request for a patient outside the cache.
#[derive(Debug)]
pub struct FetchRequest {
    pub nhs: NhsNumber,
    /// On whose behalf, and why: the hub verifies the token and records the access.
    pub on_behalf: FetchAs,
    pub reply: oneshot::Sender<FetchResult>,
}

/// Who asks for a fetch: the caller's shift token (as presented on the LAN) and purpose. The
/// hub fetches nothing without a valid token.
#[derive(Debug, Clone, Default)]
pub struct FetchAs {
    pub token: BearerToken,
    pub purpose: Purpose,
}

impl FetchAs {
    /// From the LAN request's `Authorization: Bearer` header (already verified by the LAN's
    /// own check) and the caller's purpose.
    pub fn bearer(h: &axum::http::HeaderMap, purpose: Purpose) -> FetchAs {
        let token = h
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| {
                a.strip_prefix("Bearer ")
                    .or_else(|| a.strip_prefix("bearer "))
            })
            .map(|t| BearerToken(t.trim().to_owned()))
            .unwrap_or_default();
        FetchAs { token, purpose }
    }
}

/// What the sync task needs to honour the fleet's token deny list sent by the hub.
#[derive(Clone)]
pub struct DenyListSink {
    /// The fleet's shift-token public key (verifies the list's signature).
    pub token_key: [u8; 32],
    pub policy: Arc<crate::lan::AccessPolicy>,
}

impl std::fmt::Debug for DenyListSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyListSink").finish_non_exhaustive()
    }
}

impl DenyListSink {
    /// Verify a list the hub sent and, when newer than the one held, apply it (tokens it
    /// names are refused from then on, the verified-token cache purged of them at once).
    /// Returns whether it was applied.
    pub fn take(&self, raw: &[u8]) -> bool {
        match edge_proto::denylist::verify_denylist(raw, &self.token_key) {
            Ok(list) => {
                let version = list.version;
                let taken = self.policy.set_denylist(list);
                if taken {
                    info!(version, "took the fleet's token deny list from the hub");
                }
                taken
            }
            Err(e) => {
                warn!(error = %e, "the hub sent a token deny list that does not verify: ignored");
                false
            }
        }
    }
}

/// How the LAN API asks the sync task for on-demand fetches.
#[derive(Debug, Clone)]
pub struct Fetcher {
    tx: mpsc::Sender<FetchRequest>,
    status: Arc<Status>,
    budget: Duration,
}

impl Fetcher {
    /// Fetch one summary within the budget, on behalf of the caller (`on_behalf`). With the
    /// link down the answer is immediate.
    pub async fn fetch(&self, nhs: NhsNumber, on_behalf: FetchAs) -> FetchResult {
        if self.status.link() == Link::Down {
            return FetchResult::NotConnected;
        }
        let (reply, rx) = oneshot::channel();
        let req = FetchRequest {
            nhs,
            on_behalf,
            reply,
        };
        if self.tx.try_send(req).is_err() {
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
    /// The hubs the unit may sync with, in order ([`UnitConfig::hub_links`]).
    hubs: Vec<HubLink>,
    /// Which of `hubs` the next attempt goes to: the unit stays with a hub while it answers
    /// and moves to the next after an attempt that did not get a session.
    hub_at: usize,
    /// The address of the hub last tried.
    hub_addr: SocketAddr,
    fetch_rx: mpsc::Receiver<FetchRequest>,
    /// The audit journal, uploaded on its own stream (issue 6).
    journal: Option<crate::journal::Journal>,
    /// Signalled by the journal's owner after each append: the uploader wakes at once instead
    /// of polling (see [`SyncClient::with_audit_wake`]).
    audit_wake: Option<Arc<Notify>>,
    /// The last connection's path round-trip time (sizes connection attempts).
    path_rtt: Duration,
    transport: Transport,
    clock: SharedClock,
    /// Where a deny list from the hub goes (see [`SyncClient::with_denylist`]).
    denylist: Option<DenyListSink>,
    /// The certificate the unit presents (renewed over the sync when due: [`renew`]).
    cert: std::sync::Mutex<renew::CertState>,
    /// A renewed certificate was written: rebuild the TLS config before the next connection.
    tls_changed: std::sync::atomic::AtomicBool,
    /// Local network changes (watched from [`SyncClient::run`]).
    net: netwatch::NetWatch,
    /// The health summary sent in each hello (see [`SyncClient::with_health`]).
    health: Option<Health>,
}

/// Where the hello's health summary comes from.
struct Health {
    source: HealthSource,
    /// Whether the summary is worth sending yet (the supervisor has said who it is).
    ready: Arc<dyn Fn() -> bool + Send + Sync>,
}

/// How long the first connection waits for the health summary to be ready (a supervisor that
/// has not answered by then is reported as such, and the next connection reports it again).
pub const HEALTH_WAIT: Duration = Duration::from_secs(3);

/// What the unit reports about itself in each hello, read when it connects.
pub type HealthSource = Arc<dyn Fn() -> edge_proto::sync::UnitHealth + Send + Sync>;

impl std::fmt::Debug for SyncClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncClient")
            .field("hub", &self.hub_addr)
            .field("hubs", &self.hubs.len())
            .finish()
    }
}

/// Where the connection loop goes next.
enum Flow {
    Go,
    End(anyhow::Result<()>),
}

/// One connection's state, beside the client's.
struct Conn {
    conn: quinn::Connection,
    session: UnitSession,
    watch: LinkWatch,
    /// What the audit uploader tells the watchdog.
    signals: mpsc::Receiver<(u64, LinkEvent)>,
    /// Fetches awaiting the hub's answer, by request id.
    waiting: HashMap<u64, oneshot::Sender<FetchResult>>,
    /// UDP bytes received over the earlier connections.
    base_rx: u64,
    /// The smallest smoothed RTT seen.
    min_rtt: Duration,
    /// Renewal of the unit's certificate was asked for on this connection.
    renew_asked: bool,
    /// The apply running on the blocking pool, while this task reads, decodes and verifies the
    /// batches after it (see [`MAX_APPLIES_QUEUED`]).
    applying: Option<Applying>,
    /// Verified applies waiting for it, in order.
    queued: VecDeque<Apply>,
    /// An apply failed (a full disk, say): nothing after it may be written, or the stored
    /// cursor would pass the batch that was not.
    apply_failed: bool,
}

/// One batch being written to the cache.
struct Applying {
    batch_no: u64,
    task: tokio::task::JoinHandle<Result<crate::cache::Applied, crate::cache::CacheError>>,
}

/// Verified batches held decoded behind the running apply before the pull stream stops being
/// read (QUIC flow control then holds the hub back). One is enough to overlap decoding,
/// signature and digest checks of the next batch with the write and fsync of this one. The
/// bound is checked before each read, and a read (at most 256 KiB, ≈ 2 MB decoded) is decoded
/// whole, so at most one read's batches more can be held: memory stays flat either way.
const MAX_APPLIES_QUEUED: usize = 1;

impl Conn {
    /// Hand the uploader's news to the watchdog.
    fn drain_signals(&mut self) {
        while let Ok((t, ev)) = self.signals.try_recv() {
            self.watch.on_event(t, ev);
        }
    }
}

impl SyncClient {
    /// Build the client from the unit's config (TLS from its bundle).
    pub fn new(
        config: UnitConfig,
        cache: Arc<Cache>,
        status: Arc<Status>,
    ) -> anyhow::Result<(SyncClient, Fetcher)> {
        let policy = Transport::new(&config.sync);
        let client = client_config(&config, &policy)?;
        let cert = renew::CertState::read(&config.tls.cert)
            .with_context(|| format!("cannot read {}", config.tls.cert.display()))?;
        status.update(|l| l.cert_not_after = Some(cert.not_after));
        let hubs = config.hub_links();
        // The first hub's address decides the socket's family; a hub of the other family is
        // reached by rebinding when it is tried ([`SyncClient::connect`]). A name that does
        // not resolve yet is tried again at each attempt.
        let hub_addr = resolve(&hubs[0]).unwrap_or_else(|e| {
            warn!(error = %format!("{e:#}"), "cannot resolve the first hub's address yet; trying at each attempt");
            SocketAddr::from(([0, 0, 0, 0], hubs[0].addr.port()))
        });
        let bind: SocketAddr = if hub_addr.is_ipv6() {
            "[::]:0".parse()?
        } else {
            "0.0.0.0:0".parse()?
        };
        let mut endpoint = quinn::Endpoint::client(bind).context("cannot open a UDP socket")?;
        endpoint.set_default_client_config(client);
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
                hubs,
                hub_at: 0,
                hub_addr,
                fetch_rx,
                journal: None,
                audit_wake: None,
                path_rtt: Duration::ZERO,
                transport: policy,
                clock: SystemClock::shared(),
                denylist: None,
                cert: std::sync::Mutex::new(cert),
                tls_changed: std::sync::atomic::AtomicBool::new(false),
                net: netwatch::NetWatch::never(),
                health: None,
            },
            fetcher,
        ))
    }

    /// Upload this journal's events whenever the link is up.
    pub fn with_journal(mut self, journal: crate::journal::Journal) -> Self {
        self.journal = Some(journal);
        self
    }

    /// Report this health summary (software and firmware versions, supervisor, backlog) to the
    /// hub in each hello, for the fleet view. `ready` says when the summary is complete (the
    /// supervisor's hello has arrived): the first connection waits for it up to
    /// [`HEALTH_WAIT`].
    pub fn with_health(
        mut self,
        source: HealthSource,
        ready: Arc<dyn Fn() -> bool + Send + Sync>,
    ) -> Self {
        self.health = Some(Health { source, ready });
        self
    }

    /// Take the fleet's token deny list from the hub: verified with `sink.token_key`, applied
    /// to the LAN's access policy.
    pub fn with_denylist(mut self, sink: DenyListSink) -> Self {
        self.denylist = Some(sink);
        self
    }

    /// Wake the audit uploader on this [`Notify`]: the journal's owner calls `notify_one()`
    /// after each append, and the upload starts at once. Without it the uploader looks at the
    /// journal every 200 ms; with it, every 5 s as a safety net.
    pub fn with_audit_wake(mut self, wake: Arc<Notify>) -> Self {
        self.audit_wake = Some(wake);
        self
    }

    /// Read time from this clock (the system clock by default).
    pub fn with_clock(mut self, clock: SharedClock) -> Self {
        self.clock = clock;
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
    /// (60 s), since retrying fast would not change the answer. The decisions are
    /// [`Reconnect`]'s; this loop only sleeps.
    pub async fn run(mut self) {
        let mut policy = Reconnect::new(&self.config.sync);
        self.net = netwatch::NetWatch::spawn();
        if let Some(h) = &self.health {
            let waited = std::time::Instant::now();
            while !(h.ready)() && waited.elapsed() < HEALTH_WAIT {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
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
            // Several hubs: an attempt that got no session moves to the next hub (one that is
            // down, unreachable or refusing); a session that ended tries the same hub first.
            if self.hubs.len() > 1 && !out.established {
                self.hub_at = (self.hub_at + 1) % self.hubs.len();
                let next = &self.hubs[self.hub_at];
                debug!(hub = %next.name, "trying the next hub");
            }
            let at = Duration::from_millis(self.clock.mono_ms());
            let wait =
                Duration::from_millis(Reconnect::delay_ms(policy.after(out, at), random_u64()));
            // On a full disk, wait for room as well (every attempt would fetch a batch only to
            // fail writing it), but try at least once every DISK_FULL_RETRY: the connection
            // also uploads the audit backlog, which frees the journal's space.
            let mut disk_full = self.status.live().disk_full;
            let mut space_check = tokio::time::interval(DISK_FULL_CHECK);
            let retry_anyway = tokio::time::sleep(DISK_FULL_RETRY.max(wait));
            tokio::pin!(retry_anyway);
            // Answer fetches while waiting: the link is down.
            let sleep = tokio::time::sleep(wait);
            tokio::pin!(sleep);
            let mut slept = false;
            loop {
                tokio::select! {
                    _ = &mut sleep, if !slept => {
                        slept = true;
                        if !disk_full {
                            break;
                        }
                    }
                    _ = &mut retry_anyway, if disk_full => break,
                    _ = space_check.tick(), if disk_full => {
                        if self.cache.free_bytes().is_none_or(|b| b >= crate::disk::RESUME_FREE_BYTES) {
                            disk_full = false;
                            if slept {
                                break;
                            }
                        }
                    }
                    Some(req) = self.fetch_rx.recv() => {
                        let _ = req.reply.send(FetchResult::NotConnected);
                    }
                    Ok(()) = self.net.changes.changed() => {
                        info!("the local network changed: trying the hub now");
                        policy.network_changed(Duration::from_millis(self.clock.mono_ms()));
                        break;
                    }
                }
            }
        }
    }

    /// One connection attempt: the hub's first answer within the attempt budget, then the
    /// rest of the handshake within [`HANDSHAKE_TIMEOUT`].
    async fn connect(&mut self, out: &mut Outcome) -> anyhow::Result<quinn::Connection> {
        if self
            .tls_changed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            match client_config(&self.config, &self.transport) {
                Ok(c) => {
                    self.endpoint.set_default_client_config(c);
                    info!("presenting the renewed certificate from this connection");
                }
                Err(e) => {
                    warn!(error = %format!("{e:#}"), "cannot load the renewed certificate; keeping the previous TLS config")
                }
            }
        }
        let hub = self.hubs[self.hub_at % self.hubs.len()].clone();
        self.status
            .update(|l| l.hub = Some(format!("{} ({})", hub.name, hub.addr)));
        self.hub_addr = resolve(&hub)?;
        let local_v6 = self.endpoint.local_addr().is_ok_and(|a| a.is_ipv6());
        if local_v6 != self.hub_addr.is_ipv6() {
            self.rebind();
        }
        let mut connecting = self
            .endpoint
            .connect(self.hub_addr, &hub.name)
            .context("cannot start a connection")?;
        // A link that is down costs one datagram per attempt. Once the hub has answered, the
        // handshake is given time to finish: a slow handshake is never abandoned half-way.
        let answer_within = self.transport.answer_within(self.path_rtt);
        match tokio::time::timeout(answer_within, connecting.handshake_data()).await {
            Err(_) => anyhow::bail!("the hub did not answer within {answer_within:?}"),
            Ok(Err(e)) => {
                out.refused = is_refusal(&e);
                return Err(explain(e));
            }
            Ok(Ok(_)) => {}
        }
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
            Err(_) => anyhow::bail!(
                "the handshake with the hub did not finish within {HANDSHAKE_TIMEOUT:?}"
            ),
            Ok(Err(e)) => {
                out.refused = is_refusal(&e);
                Err(explain(e))
            }
            Ok(Ok(c)) => Ok(c),
        }
    }

    async fn connect_and_sync(
        &mut self,
        out: &mut Outcome,
        stall_timeout: Duration,
    ) -> anyhow::Result<()> {
        let conn = self.connect(out).await?;
        if self.hubs.len() > 1 {
            info!(hub = %self.hubs[self.hub_at % self.hubs.len()].name, addr = %self.hub_addr, "connected to the hub");
        } else {
            debug!(hub = %self.hub_addr, "connected to the hub");
        }
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
        if let Some(h) = &self.health {
            session.set_health((h.source)());
        }
        let base_rx = self.status.update(|l| {
            l.connects += 1;
            l.link_bytes_received
        });
        let (signal_tx, signals) = mpsc::channel(audit::LINK_SIGNALS);
        let mut c = Conn {
            min_rtt: conn.rtt(),
            conn,
            session,
            watch: LinkWatch::new(self.clock.mono_ms(), stall_timeout),
            signals,
            waiting: HashMap::new(),
            base_rx,
            renew_asked: false,
            applying: None,
            queued: VecDeque::new(),
            apply_failed: false,
        };
        // Audit upload on its own stream, not waiting for the pull.
        let uploader = self.journal.clone().map(|journal| {
            tokio::spawn(
                audit::Uploader {
                    conn: c.conn.clone(),
                    journal,
                    status: self.status.clone(),
                    clock: self.clock.clone(),
                    wake: self.audit_wake.clone(),
                    link: signal_tx,
                }
                .run(),
            )
        });
        // The uploader ends with its connection.
        let _abort_uploader = uploader.map(tokio_util::task::AbortOnDropHandle::new);
        let mut pull_in = InflateDeframer::new();
        // The fetch stream, opened with the first fetch; its answers are read in this loop
        // (no queue between: the hub's answers wait in QUIC flow control until read).
        let mut fetch_stream: Option<(quinn::SendStream, quinn::RecvStream)> = None;
        let mut fetch_in = FrameDecoder::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut fetch_buf = vec![0u8; 64 * 1024];
        let mut watchdog = tokio::time::interval(WATCHDOG_TICK);
        watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Every way out of the loop, `?` included, comes to the code after it, which finishes
        // the running apply: none may outlive this connection (the next one's applies would
        // overlap it, and the cache has one writer).
        let result: anyhow::Result<()> = async {
            'conn: loop {
                // Handle the session's events (applies in order, durable before the ack).
                while let Some(ev) = c.session.poll_event() {
                    self.on_session_event(&mut c, ev, out).await?;
                }
                // Send what the session has queued.
                while let Some(msg) = c.session.poll_transmit() {
                    let bytes = encode_frame(&msg)?;
                    match msg.stream() {
                        StreamKind::Pull | StreamKind::Audit => pull_send.write_all(&bytes).await?,
                        StreamKind::Fetch => {
                            if fetch_stream.is_none() {
                                fetch_stream = Some(c.conn.open_bi().await.map_err(explain)?);
                            }
                            if let Some((send, _)) = fetch_stream.as_mut() {
                                send.write_all(&bytes).await?;
                            }
                        }
                    }
                }
                if c.session.is_ended() {
                    break 'conn Ok(());
                }
                let sleep_for = c
                    .session
                    .poll_timeout()
                    .map(|t| {
                        Duration::from_millis(u64::try_from(t.0 - self.clock.wall().0).unwrap_or(0))
                    })
                    .unwrap_or(Duration::from_secs(3600));
                let flow = tokio::select! {
                    biased;
                    r = async {
                        match c.applying.as_mut() {
                            Some(a) => (&mut a.task).await,
                            None => std::future::pending().await,
                        }
                    },
                        if c.applying.is_some() =>
                    {
                        match self.finish_apply(&mut c, r).await {
                            Ok(()) => {
                                self.start_apply(&mut c);
                                out.progressed = true;
                                Flow::Go
                            }
                            Err(e) => Flow::End(Err(e)),
                        }
                    }
                    r = pull_recv.read(&mut buf), if c.queued.len() < MAX_APPLIES_QUEUED => match r {
                        Ok(Some(n)) => {
                            c.watch.on_event(self.clock.mono_ms(), LinkEvent::Heard);
                            pull_in.push(&buf[..n])?;
                            self.on_pull(&mut c, &mut pull_in, out).await
                        }
                        Ok(None) => Flow::End(Err(anyhow::anyhow!("the hub closed the sync stream"))),
                        Err(e) => Flow::End(Err(anyhow::anyhow!("sync stream: {e}"))),
                    },
                    r = read_fetch(&mut fetch_stream, &mut fetch_buf) => match r {
                        Ok(Some(n)) => {
                            c.watch.on_event(self.clock.mono_ms(), LinkEvent::Heard);
                            fetch_in.push(&fetch_buf[..n])?;
                            self.on_fetch_answers(&mut c, &mut fetch_in)?
                        }
                        Ok(None) => Flow::End(Err(anyhow::anyhow!("the hub closed the fetch stream"))),
                        Err(e) => Flow::End(Err(anyhow::anyhow!("fetch stream: {e}"))),
                    },
                    Some(req) = self.fetch_rx.recv() => {
                        let id = c.session.fetch(
                            self.clock.wall(),
                            req.nhs,
                            req.on_behalf.token,
                            req.on_behalf.purpose,
                        );
                        c.waiting.insert(id, req.reply);
                        Flow::Go
                    }
                    e = c.conn.closed() => {
                        out.refused = !out.established && is_refusal(&e);
                        Flow::End(Err(explain(e)))
                    }
                    _ = tokio::time::sleep(sleep_for) => {
                        c.session.handle_timeout(self.clock.wall());
                        Flow::Go
                    }
                    _ = watchdog.tick() => self.on_watchdog(&mut c, out),
                    Ok(()) = self.net.changes.changed() => {
                        self.rebind();
                        Flow::Go
                    }
                };
                if let Flow::End(r) = flow {
                    break 'conn r;
                }
            }
        }
        .await;
        c.drain_signals();
        if c.watch.progressed() {
            out.progressed = true;
        }
        c.session.connection_lost();
        // Applies handed out before the loss were verified: they go behind the queued ones, and
        // the running one and all of them are written in order (saves re-sending).
        while let Some(ev) = c.session.poll_event() {
            match ev {
                UnitEvent::Apply(apply) => c.queued.push_back(apply),
                UnitEvent::Fetched {
                    request_id, result, ..
                } => {
                    if let Some(w) = c.waiting.remove(&request_id) {
                        let _ = w.send(result);
                    }
                }
                _ => {}
            }
        }
        self.drain_applies(&mut c).await;
        for (_, w) in c.waiting.drain() {
            let _ = w.send(FetchResult::NotConnected);
        }
        let cursor = c.session.durable_state().cursor;
        self.status.update(|l| l.cursor = cursor);
        if out.established {
            // The smallest smoothed RTT seen: the path's, without the queueing of a bulk
            // transfer on a rate-limited cell.
            self.path_rtt = c.min_rtt.min(c.conn.rtt());
        }
        c.conn.close(0u32.into(), b"bye");
        result
    }

    /// The watchdog's turn: sample the transport, hand the watchdog what it needs, and close
    /// the connection if it declares a stall.
    /// The local network changed while connected: move the connection to a fresh socket.
    /// quinn sends a PING from it at once, so the hub's path follows a new address now rather
    /// than at the next keep-alive (a change that kept the address costs one PING).
    fn rebind(&self) {
        let bind = if self.hub_addr.is_ipv6() {
            "[::]:0"
        } else {
            "0.0.0.0:0"
        };
        match std::net::UdpSocket::bind(bind).and_then(|s| self.endpoint.rebind(s)) {
            Ok(()) => info!("the local network changed: the link moved to a fresh socket"),
            Err(e) => warn!(error = %e, "the local network changed; cannot open a fresh socket"),
        }
    }

    fn on_watchdog(&self, c: &mut Conn, out: &mut Outcome) -> Flow {
        c.min_rtt = c.min_rtt.min(c.conn.rtt());
        c.drain_signals();
        let now = self.clock.mono_ms();
        if c.applying.is_some() {
            // Writing a batch (a cold fill's last one builds the search files: seconds) keeps
            // the pull stream unread on purpose; that is not the hub going quiet.
            c.watch.on_event(now, LinkEvent::Heard);
        }
        c.watch
            .on_event(now, LinkEvent::Acks(c.conn.stats().frame_rx.acks));
        c.watch.on_event(
            now,
            LinkEvent::Session {
                catching_up: !c.session.is_caught_up(),
                fetches: !c.waiting.is_empty(),
            },
        );
        match c.watch.on_event(now, LinkEvent::Tick) {
            LinkDecision::Continue => Flow::Go,
            LinkDecision::Probe => {
                // One ack-eliciting byte; the hub's transport ACKs it (the hub does not read
                // datagrams: it keeps at most a few KB of them and drops the oldest).
                if let Err(e) = c.conn.send_datagram(bytes::Bytes::from_static(&[0])) {
                    debug!(error = %e, "cannot send a probe");
                }
                Flow::Go
            }
            LinkDecision::Stalled { quiet_ms } => {
                out.stalled = true;
                Flow::End(Err(anyhow::anyhow!(
                    "nothing from the hub for {quiet_ms} ms with work outstanding (stall watchdog)"
                )))
            }
        }
    }

    /// Messages decoded from the pull stream, into the session (a wipe order is carried out
    /// here: the connection stays up while the audit journal drains).
    async fn on_pull(
        &self,
        c: &mut Conn,
        pull_in: &mut InflateDeframer,
        out: &mut Outcome,
    ) -> Flow {
        loop {
            match pull_in.next_message::<ToUnit>() {
                Ok(Some(ToUnit::Wipe { reason })) => {
                    // A running apply passed its shredded check already: let it end before the
                    // key goes, and write nothing after it.
                    if let Some(a) = c.applying.take() {
                        let _ = a.task.await;
                    }
                    c.queued.clear();
                    c.apply_failed = true;
                    self.wipe(&reason);
                    let e = c.conn.closed().await;
                    return Flow::End(Err(explain(e)));
                }
                Ok(Some(msg)) => {
                    if let Err(e) = c.session.handle_message(self.clock.wall(), msg) {
                        out.refused = matches!(
                            e,
                            ProtocolError::Refused { .. } | ProtocolError::VersionMismatch { .. }
                        );
                        return Flow::End(Err(
                            anyhow::anyhow!(e).context("the hub's sync messages were refused")
                        ));
                    }
                }
                Ok(None) => return Flow::Go,
                Err(e) => {
                    return Flow::End(Err(anyhow::anyhow!(e).context("bad frame from the hub")))
                }
            }
        }
    }

    /// Messages decoded from the fetch stream, into the session.
    fn on_fetch_answers(&self, c: &mut Conn, fetch_in: &mut FrameDecoder) -> anyhow::Result<Flow> {
        while let Some(msg) = fetch_in.next_message::<ToUnit>()? {
            if let Err(e) = c.session.handle_message(self.clock.wall(), msg) {
                return Ok(Flow::End(Err(
                    anyhow::anyhow!(e).context("the hub's fetch answer was refused")
                )));
            }
        }
        Ok(Flow::Go)
    }

    /// One event from the session while connected.
    async fn on_session_event(
        &self,
        c: &mut Conn,
        ev: UnitEvent,
        out: &mut Outcome,
    ) -> anyhow::Result<()> {
        match ev {
            UnitEvent::Apply(apply) => {
                // Written in order on the blocking pool while this task goes on reading and
                // verifying the next batches (finished in the connection loop).
                c.queued.push_back(apply);
                self.start_apply(c);
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
                self.maybe_renew(c);
            }
            UnitEvent::CaughtUp { cursor } => {
                out.progressed = true;
                let t = self.clock.wall();
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
            UnitEvent::FetchRefused { reason, .. } => {
                warn!(
                    reason = reason.as_str(),
                    "the hub refused an on-demand fetch (answered as busy)"
                );
            }
            UnitEvent::DenyList { list } => match &self.denylist {
                Some(sink) => {
                    sink.take(list.as_slice());
                }
                None => {
                    debug!("the hub sent a token deny list; this unit has no policy to apply it to")
                }
            },
            UnitEvent::Certificate { chain } => self.take_certificate(&chain),
            UnitEvent::Prefetched {
                nhs,
                version,
                record,
            } => {
                // An ED kiosk: a crew is bringing this patient in. Kept as an on-demand copy
                // (same expiry), so triage finds it even if the link drops.
                let ttl = i64::try_from(self.config.cache.on_demand_ttl_s)
                    .unwrap_or(259_200)
                    .saturating_mul(1000);
                let t = self.clock.wall();
                match self
                    .cache
                    .put_fetched(&nhs, version, record, t, t.plus_ms(ttl))
                {
                    Ok(_) => {
                        info!("the hub pushed the record of a patient a crew is bringing in");
                        self.status.update(|l| l.prefetched += 1);
                    }
                    Err(e) => warn!(error = %e, "cannot keep a record the hub pushed"),
                }
            }
            UnitEvent::RenewalRefused { why } => {
                warn!(why, "the hub did not renew this unit's certificate; asking again on the next connection");
                self.status.update(|l| l.cert_renewal_error = Some(why));
            }
            UnitEvent::Fetched {
                request_id,
                result,
                nhs,
            } => {
                if let FetchResult::Withdrawn = &result {
                    let _ = self.cache.remove_fetched(&nhs);
                }
                if let Some(w) = c.waiting.remove(&request_id) {
                    let _ = w.send(result);
                }
            }
        }
        Ok(())
    }

    /// Ask the hub to renew the unit's certificate once per connection when it is due.
    fn maybe_renew(&self, c: &mut Conn) {
        if c.renew_asked {
            return;
        }
        let now = self.clock.wall();
        let cert = self.cert.lock().unwrap_or_else(|p| p.into_inner()).clone();
        if cert.due(now) {
            c.renew_asked = c.session.renew_certificate();
            info!(
                expires = %cert.not_after.to_rfc3339(),
                "asking the hub to renew this unit's certificate"
            );
        }
    }

    /// A renewed certificate from the hub: checked, written, used from the next connection.
    fn take_certificate(&self, chain: &[edge_proto::sync::Bytes]) {
        let now = self.clock.wall();
        let mut cert = self.cert.lock().unwrap_or_else(|p| p.into_inner());
        match renew::take(&self.config, &self.config.device_id, &cert, chain, now) {
            Ok(fresh) => {
                info!(
                    expires = %fresh.not_after.to_rfc3339(),
                    "the hub renewed this unit's certificate"
                );
                self.status.update(|l| {
                    l.cert_not_after = Some(fresh.not_after);
                    l.cert_renewed_at = Some(now);
                    l.cert_renewal_error = None;
                });
                *cert = fresh;
                self.tls_changed
                    .store(true, std::sync::atomic::Ordering::Release);
            }
            Err(e) => {
                let why = format!("{e:#}");
                warn!(error = %why, "refused the certificate the hub sent; keeping the current one");
                self.status.update(|l| l.cert_renewal_error = Some(why));
            }
        }
    }

    /// Apply one verified batch to the cache (off the async threads; the batch and the cursor
    /// are one durable write), report it to the session (which then acknowledges it to the
    /// hub), update the status, and drop any on-demand copy of a patient the batch withdrew or
    /// evicted. The one place a batch is applied, connected or just after the link was lost.
    /// Start the next queued apply on the blocking pool, unless one is running or one failed.
    fn start_apply(&self, c: &mut Conn) {
        if c.applying.is_some() || c.apply_failed {
            return;
        }
        let Some(apply) = c.queued.pop_front() else {
            return;
        };
        let cache = self.cache.clone();
        let t = self.clock.wall();
        c.applying = Some(Applying {
            batch_no: apply.batch_no,
            task: tokio::task::spawn_blocking(move || cache.apply(&apply, t)),
        });
    }

    /// Finish the running apply and every queued one, in order, stopping at the first that
    /// fails (after the connection is lost: nothing left to overlap).
    async fn drain_applies(&self, c: &mut Conn) {
        loop {
            self.start_apply(c);
            let Some(a) = c.applying.as_mut() else {
                return;
            };
            let r = (&mut a.task).await;
            // A failure sets `apply_failed`, which stops `start_apply`.
            let _ = self.finish_apply(c, r).await;
        }
    }

    /// The running apply ended with `r`: tell the session (which acknowledges the batch) and
    /// the status.
    async fn finish_apply(
        &self,
        c: &mut Conn,
        r: Result<Result<crate::cache::Applied, crate::cache::CacheError>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let Some(Applying { batch_no, .. }) = c.applying.take() else {
            return Ok(());
        };
        // Time spent applying is not time the hub was silent.
        c.watch.on_event(self.clock.mono_ms(), LinkEvent::Heard);
        let r = self.finish_apply_inner(c, batch_no, r).await;
        if r.is_err() {
            c.apply_failed = true;
            c.queued.clear();
        }
        r
    }

    async fn finish_apply_inner(
        &self,
        c: &mut Conn,
        batch_no: u64,
        r: Result<Result<crate::cache::Applied, crate::cache::CacheError>, tokio::task::JoinError>,
    ) -> anyhow::Result<()> {
        let applied = match r.context("apply task")? {
            Ok(a) => a,
            Err(e) if e.is_disk_full() => {
                if !self
                    .status
                    .update(|l| std::mem::replace(&mut l.disk_full, true))
                {
                    warn!("the unit's disk is full: sync paused until there is room; lookups keep answering from the cache");
                }
                return Err(anyhow::Error::new(e).context(
                    "cannot write the batch to the cache: the disk is full (nothing was applied)",
                ));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context("cannot write the batch to the cache"))
            }
        };
        if self
            .status
            .update(|l| std::mem::replace(&mut l.disk_full, false))
        {
            info!("the unit's disk has room again: sync resumed");
        }
        let n = applied.report.written;
        c.session.batch_applied(batch_no, &applied.report)?;
        let cursor = c.session.durable_state().cursor;
        let rebaselining = c.session.in_baseline();
        let rx = c.conn.stats().udp_rx.bytes;
        let (base_rx, now) = (c.base_rx, self.clock.wall());
        self.status.update(|l| {
            l.link_bytes_received = base_rx + rx;
            l.cursor = cursor;
            l.rebaselining = rebaselining;
            l.last_sync_at = Some(now);
            l.batches_applied += 1;
            l.records_received += n;
            if l.caught_up {
                l.cache_as_of = Some(now.plus_ms(l.hub_offset_ms));
            }
        });
        for nhs in &applied.removed {
            let _ = self.cache.remove_fetched(nhs);
        }
        Ok(())
    }
}

/// The QUIC client config: the unit's TLS from its bundle (certificate chain as on disk now),
/// keep-alive and idle timeout from the transport policy.
fn client_config(config: &UnitConfig, policy: &Transport) -> anyhow::Result<quinn::ClientConfig> {
    let tls = edge_runtime::tls::unit_client_config(config)
        .context("cannot build the unit's TLS config from its bundle")?;
    let quic = QuicClientConfig::try_from(tls).context("QUIC client config")?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(policy.keepalive))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(policy.idle_timeout).context("idle timeout")?,
        ));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// Read the fetch stream's next bytes; never ready while no fetch stream is open.
async fn read_fetch(
    stream: &mut Option<(quinn::SendStream, quinn::RecvStream)>,
    buf: &mut [u8],
) -> Result<Option<usize>, quinn::ReadError> {
    match stream.as_mut() {
        Some((_, recv)) => recv.read(buf).await,
        None => std::future::pending().await,
    }
}
