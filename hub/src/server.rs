//! `edge-hub serve`: the QUIC sync server (mutual TLS against the fleet CA and its CRL) and
//! the admin HTTP API, around one [`HubStore`].
//!
//! Each unit connection gets a task owning one sans-IO [`HubSession`]. The unit opens its
//! streams (pull first, fetch when a tablet asks for a patient outside the cache); frames from
//! the unit are plain, frames to the unit on the pull stream are compressed with the codec the
//! unit's hello offers ([`PullFramer`]: zstd, or deflate for a unit from before zstd), fetch
//! answers are plain. Each stream has its own writer task, so a bulk
//! catch-up never delays a fetch answer. When the feed grows (ingest, objection) a `watch`
//! channel wakes every session, which pushes what concerns its unit (live push).
//!
//! Every queue between these tasks is bounded, so a slow unit slows only itself and the hub
//! never buffers for it without limit: a writer whose unit reads slowly waits on QUIC flow
//! control; its queue ([`OUTPUT_QUEUE`]) fills; the session task waits to hand it the next
//! message and stops taking the unit's input; the input queue ([`INPUT_QUEUE`]) fills; the
//! stream readers wait and stop reading, and QUIC flow control stops the unit sending. What
//! one connection holds is therefore at most these queues, the session's own window
//! (`window_batches` batches, `fetch_queue_max` fetch answers) and the QUIC stream windows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use edge_proto::audit::{AuditAction, AuditOutcome, Purpose};
use edge_proto::ids::{CohortSpec, DeviceId};
use edge_proto::sync::frame::FrameDecoder;
use edge_proto::sync::{
    encode_frame, Bytes, FetchOutcome, FetchRefusal, Hello, HubConfig as SessionConfig, HubSession,
    PullCompression, PullFramer, RefusalCode, SessionProgress, StreamKind, ToHub, ToUnit,
    UnitProfile,
};
use edge_proto::time::UnixMillis;
use edge_runtime::config::HubConfig;
use edge_runtime::inventory::Inventory;
use edge_runtime::tls::{self, CrlReloader};
use quinn::crypto::rustls::QuicServerConfig;
use ring::signature::Ed25519KeyPair;
use rustls_pki_types::CertificateDer;
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use self::fetch_gate::{FetchGate, Granted, HubEvent};
use crate::denylist::TokenDenyList;
use crate::inventory::InventoryCache;
use crate::metrics::Metrics;
use crate::store::{FeedStore, HubStore, StoreError};

/// Messages read from one unit's streams and not yet taken by its session task, at most.
/// At the bound the stream readers wait (and stop reading the unit's streams), so QUIC flow
/// control pushes back on the unit instead of the hub queueing what it sends. Generous for a
/// well-behaved unit, whose acknowledgements and fetches are few in flight (the session keeps
/// at most `window_batches` batches unacknowledged and `fetch_queue_max` fetch answers).
pub const INPUT_QUEUE: usize = 32;

/// Messages waiting for one stream's writer task, at most (per stream, per connection). At
/// the bound the session task waits until the writer has handed a message to QUIC, which
/// itself waits while the unit reads slowly (flow control); meanwhile the session takes no
/// more input from that unit. Twice the hub's batch window, so a unit that keeps up is never
/// made to wait by the queue itself.
pub const OUTPUT_QUEUE: usize = 16;

#[path = "fetch_budget.rs"]
pub mod fetch_budget;
#[path = "fetch_gate.rs"]
pub mod fetch_gate;

/// QUIC application close codes the hub uses (the reason text says the same in words).
pub mod close_code {
    /// A normal end.
    pub const BYE: u32 = 0;
    /// The unit was refused at connect (unknown, revoked).
    pub const REFUSED: u32 = 2;
    /// The fleet ordered the unit wiped: reconnect to receive the order.
    pub const WIPE_ORDERED: u32 = 3;
    /// The unit was revoked (CRL or inventory) while connected.
    pub const REVOKED: u32 = 4;
    /// Another connection with this unit's certificate replaced this one.
    pub const SUPERSEDED: u32 = 5;
}

/// How many of the latest ingests `GET /admin/feeds` answers.
pub const RECENT_INGESTS: usize = 50;

/// How many rejected lines and warnings each of those keeps (the counts are whole).
pub const RECENT_INGEST_LINES: usize = 100;

/// How often the hub looks for a changed CRL, inventory or deny list (one `stat` each).
pub const REVALIDATE_POLL: Duration = Duration::from_secs(1);

/// Every live connection is re-checked at least this often, changed files or not.
pub const REVALIDATE_EVERY: Duration = Duration::from_secs(60);

/// The wall clock, as the protocol's time type.
pub use edge_runtime::clock::wall_now as now;

/// A connected unit, as the admin API sees it.
#[derive(Debug)]
pub struct Connected {
    pub since: UnixMillis,
    pub progress: SessionProgress,
    /// The operator's latest cohort for the unit (a `watch`: one slot, the newest wins, so an
    /// operator's repeated changes can never queue up behind a busy session).
    pub cohort_tx: watch::Sender<Option<Vec<CohortSpec>>>,
    pub connection: u64,
    pub conn: quinn::Connection,
    /// The unit's certificate chain as presented (end entity first): re-verified against the
    /// CRL when it changes.
    pub certs: Vec<CertificateDer<'static>>,
    /// The connection is there to deliver a wipe order (and take the unit's last audit
    /// events): not closed again for the wipe.
    pub wiping: bool,
    /// Records the hub pushes to this unit (an ED kiosk) because a crew is bringing the
    /// patient in ([`crate::prefetch`]).
    pub prefetch_tx: mpsc::Sender<crate::prefetch::Prefetch>,
}

/// Everything the serving tasks share.
pub struct Hub {
    pub config: HubConfig,
    /// Summaries, change feed and unit records: sled in `data_dir`, or PostgreSQL
    /// (hub.toml's `[store]`).
    pub store: Arc<dyn FeedStore>,
    /// The sled database in `data_dir`: the whole store on the embedded backend; on
    /// PostgreSQL it holds nothing the hubs share.
    pub local: sled::Db,
    /// The PostgreSQL database, when that is the backend: the audit repository and the
    /// operator log live there too, shared by every hub on it.
    pub shared: Option<Arc<crate::pg::PgStore>>,
    pub audit: Arc<crate::audit::AuditRepo>,
    pub head_tx: watch::Sender<u64>,
    pub key: Arc<Ed25519KeyPair>,
    pub session_config: SessionConfig,
    pub connected: Mutex<HashMap<DeviceId, Connected>>,
    pub reloader: Option<CrlReloader>,
    /// The fleet inventory, re-read only when the file changes (see [`Hub::inventory`]).
    pub inventory_cache: InventoryCache,
    /// The CRL, deny list and inventory shared through the database (hubs on PostgreSQL).
    pub fleet_docs: crate::fleet_docs::FleetDocs,
    /// The feeds' latest ingests (`GET /admin/feeds`), on this hub's store (shared by the hubs
    /// on one database).
    pub ingest_log: crate::ingest_log::IngestLog,
    /// What `/metrics` exposes.
    pub metrics: Metrics,
    /// Shift-token checks, fetch budget and the hub's own audit events for fetches.
    pub gate: FetchGate,
    /// The fleet's token deny list (fetch gate, admin API, and what units are sent).
    pub denylist: Arc<TokenDenyList>,
    /// The signed token deny list in force (raw bytes), for every session to pass on.
    pub denylist_tx: watch::Sender<Option<Bytes>>,
    /// The fleet's renewal CA, when the hub bundle carries one (renewal over the sync).
    pub renewal: Option<crate::renewal::RenewalCa>,
    /// ED-kiosk pushes waiting for their kiosk to connect.
    pub prefetch: crate::prefetch::Pending,
    next_connection: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("name", &self.config.name)
            .finish()
    }
}

/// What [`open_store`] opens.
pub struct Stores {
    /// Summaries, change feed and unit records.
    pub feed: Arc<dyn FeedStore>,
    /// The sled database in `data_dir` (the whole store on the embedded backend).
    pub local: sled::Db,
    /// The audit repository: in `local`, or in PostgreSQL beside the feed.
    pub audit: crate::audit::AuditRepo,
    /// The PostgreSQL database every hub on it shares, when that is the backend.
    pub shared: Option<Arc<crate::pg::PgStore>>,
}

/// Open the store hub.toml's `[store]` names, the local sled database beside it, and the audit
/// repository (in the sled database, or in PostgreSQL beside the feed).
pub fn open_store(config: &HubConfig) -> anyhow::Result<Stores> {
    match config.store.backend {
        edge_runtime::config::StoreBackend::Embedded => {
            let store = HubStore::open(&config.data_dir).with_context(|| {
                format!(
                    "cannot open the hub store in {} (is another edge-hub using it?)",
                    config.data_dir.display()
                )
            })?;
            let local = store.db().clone();
            let audit = crate::audit::AuditRepo::open(&local)?;
            Ok(Stores {
                feed: Arc::new(store),
                local,
                audit,
                shared: None,
            })
        }
        edge_runtime::config::StoreBackend::Postgres => {
            let opts = crate::pg::PgOptions::from_config(&config.store)?;
            let store = Arc::new(crate::pg::PgStore::connect(&opts)?);
            std::fs::create_dir_all(&config.data_dir).with_context(|| {
                format!(
                    "cannot create the data folder {}",
                    config.data_dir.display()
                )
            })?;
            let local = sled::Config::new()
                .path(config.data_dir.join("hub-local.sled"))
                .open()
                .with_context(|| {
                    format!(
                        "cannot open the hub's local database in {} (is another edge-hub using it?)",
                        config.data_dir.display()
                    )
                })?;
            let audit = crate::audit::AuditRepo::postgres(store.clone());
            Ok(Stores {
                feed: store.clone(),
                local,
                audit,
                shared: Some(store),
            })
        }
    }
}

impl Hub {
    /// Open the hub's store and keys from its config.
    pub fn open(config: HubConfig) -> anyhow::Result<Hub> {
        let Stores {
            feed: store,
            local,
            audit,
            shared,
        } = open_store(&config)?;
        let key = edge_runtime::keys::load_ed25519_signing(&config.keys.record_signing)
            .with_context(|| "cannot load the record-signing key".to_string())?;
        let head = store.head()?;
        let (head_tx, _) = watch::channel(head);
        // Another hub on the same database moved the feed: wake this hub's sessions too.
        let tx = head_tx.clone();
        store.watch_head(Box::new(move |h| {
            tx.send_if_modified(|cur| {
                let newer = h > *cur;
                if newer {
                    *cur = h;
                }
                newer
            });
        }))?;
        let session_config = SessionConfig {
            window_batches: 8,
            batch_records_max: usize::try_from(config.sync.batch_records_max)
                .unwrap_or(512)
                .clamp(1, 4096),
            ..SessionConfig::default()
        };
        let audit = Arc::new(audit);
        let inventory_cache = InventoryCache::new(config.inventory.clone());
        let denylist = Arc::new(TokenDenyList::open(&config));
        let gate = FetchGate::new(&config, audit.clone(), denylist.clone(), shared.clone());
        let (denylist_tx, _) = watch::channel(denylist.bytes());
        let renewal = match (&config.keys.renewal_ca_cert, &config.keys.renewal_ca_key) {
            (Some(cert), Some(key)) => Some(
                crate::renewal::RenewalCa::load(cert, key)
                    .context("cannot load the renewal CA named in [keys]")?,
            ),
            _ => None,
        };
        let metrics = Metrics::new();
        match &renewal {
            Some(ca) => {
                let left = ca.not_after.0 - now().0;
                metrics.set_renewal_ca_expiry(left / 1000);
                if left < crate::renewal::CA_WARN_MS {
                    warn!(
                        expires = %ca.not_after.to_rfc3339(),
                        "the renewal CA expires soon: replace it with `edge-provision ca renewal-ca --force` and rewrite the hub bundle"
                    );
                }
            }
            None => info!(
                "no renewal CA in this hub's bundle: unit certificates are renewed only by `edge-provision renew`"
            ),
        }
        Ok(Hub {
            renewal,
            prefetch: crate::prefetch::Pending::default(),
            config,
            inventory_cache,
            fleet_docs: crate::fleet_docs::FleetDocs::default(),
            ingest_log: match &shared {
                Some(pg) => crate::ingest_log::IngestLog::Pg(pg.clone()),
                None => crate::ingest_log::IngestLog::open(&local)?,
            },
            metrics,
            gate,
            denylist,
            denylist_tx,
            audit,
            store,
            local,
            shared,
            head_tx,
            key: Arc::new(key),
            session_config,
            connected: Mutex::new(HashMap::new()),
            reloader: None,
            next_connection: std::sync::atomic::AtomicU64::new(1),
        })
    }

    fn connected(&self) -> std::sync::MutexGuard<'_, HashMap<DeviceId, Connected>> {
        self.connected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tell every session the feed has grown.
    pub fn notify_head(&self) {
        if let Ok(h) = self.store.head() {
            self.head_tx.send_replace(h);
        }
    }

    /// The fleet inventory (enrolled units), when the hub has one: the cached copy, re-read
    /// only when the file's modification time or length changed; a file that cannot be read
    /// leaves the last good copy in use (and logs a warning).
    pub fn inventory(&self) -> Option<Arc<Inventory>> {
        self.inventory_cache.get()
    }

    /// Units with a live sync session.
    pub fn units_connected(&self) -> usize {
        self.connected().len()
    }

    /// Order a unit wiped (operator): recorded, and a connected unit is disconnected so that
    /// its next hello is answered with the wipe order.
    pub fn order_wipe(&self, id: &DeviceId, cancel: bool) -> anyhow::Result<()> {
        self.store.update_device(id, |d| {
            d.wipe_requested = if cancel { None } else { Some(now()) };
        })?;
        if !cancel {
            if let Some(c) = self.connected().remove(id) {
                c.conn
                    .close(close_code::WIPE_ORDERED.into(), b"wipe ordered");
                self.metrics.session_closed("wiped");
            }
        }
        Ok(())
    }

    /// Why a live connection may no longer be served, if so: (metric reason, close code,
    /// close reason text).
    fn unservable(
        &self,
        inv: Option<&Inventory>,
        verifier: Option<&Arc<dyn rustls::server::danger::ClientCertVerifier>>,
        id: &DeviceId,
        c: &ConnSnapshot,
    ) -> Option<(&'static str, u32, &'static str)> {
        if let Some(inv) = inv {
            match inv.unit(id) {
                None => {
                    return Some((
                        "revoked",
                        close_code::REVOKED,
                        "revoked: the unit is no longer in the fleet inventory",
                    ))
                }
                Some(u) if u.revoked() => {
                    return Some((
                        "revoked",
                        close_code::REVOKED,
                        "revoked: the fleet revoked this unit",
                    ))
                }
                Some(_) => {}
            }
        }
        if let (Some(v), Some((ee, rest))) = (verifier, c.certs.split_first()) {
            let now = rustls_pki_types::UnixTime::now();
            if let Err(e) = v.verify_client_cert(ee, rest, now) {
                debug!(device = %id, error = %e, "a live unit's certificate no longer verifies");
                return Some((
                    "revoked",
                    close_code::REVOKED,
                    "revoked: the unit's certificate is revoked (CRL) or no longer valid",
                ));
            }
        }
        if !c.wiping
            && self
                .store
                .device(id)
                .is_ok_and(|d| d.wipe_requested.is_some())
        {
            return Some(("wiped", close_code::WIPE_ORDERED, "wipe ordered"));
        }
        None
    }

    /// Re-check every live connection against the inventory, the CRL (as last reloaded) and
    /// wipe orders, and close those that may no longer be served, each with an application
    /// close code and reason. They leave `/admin/devices`' `connected` at once. Returns the
    /// devices closed.
    pub fn revalidate(&self) -> Vec<DeviceId> {
        let inv = self.inventory();
        let verifier = self.reloader.as_ref().map(|r| r.client_verifier());
        let live: Vec<(DeviceId, ConnSnapshot)> = self
            .connected()
            .iter()
            .map(|(id, c)| {
                (
                    id.clone(),
                    ConnSnapshot {
                        connection: c.connection,
                        certs: c.certs.clone(),
                        wiping: c.wiping,
                    },
                )
            })
            .collect();
        let mut closed = Vec::new();
        for (id, snap) in live {
            let Some((metric, code, why)) =
                self.unservable(inv.as_deref(), verifier.as_ref(), &id, &snap)
            else {
                continue;
            };
            let gone = {
                let mut map = self.connected();
                match map.get(&id) {
                    Some(c) if c.connection == snap.connection => map.remove(&id),
                    _ => None,
                }
            };
            if let Some(c) = gone {
                warn!(device = %id, why, "closing a live unit connection");
                c.conn.close(code.into(), why.as_bytes());
                self.metrics.session_closed(metric);
                let t = now();
                let _ = self.store.update_device(&id, |d| {
                    d.last_refusal = Some(format!("{t}: {why}"));
                });
                closed.push(id);
            }
        }
        closed
    }

    /// Change a unit's cohort at the hub (operator). A connected unit is re-baselined at once,
    /// moving only the difference.
    pub fn set_cohort(&self, id: &DeviceId, cohort: Vec<CohortSpec>) -> anyhow::Result<()> {
        let text: Vec<String> = cohort.iter().map(ToString::to_string).collect();
        self.store
            .update_device(id, |d| d.cohort_override = Some(text))?;
        if let Some(c) = self.connected().get(id) {
            c.cohort_tx.send_replace(Some(cohort));
        }
        Ok(())
    }
}

/// Run the sync server until the endpoint is closed (and, beside it, the watch that closes
/// revoked or wiped units' live connections: [`watch_revocations`]).
pub async fn serve_sync(hub: Arc<Hub>, endpoint: quinn::Endpoint) {
    tokio::spawn(watch_revocations(hub.clone()));
    while let Some(incoming) = endpoint.accept().await {
        let hub = hub.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            match incoming.await {
                Ok(conn) => {
                    if let Err(e) = handle_connection(hub, conn).await {
                        debug!(%remote, error = %e, "unit connection ended");
                    }
                }
                Err(e) => {
                    let why = match &e {
                        quinn::ConnectionError::ConnectionClosed(c) => {
                            tls::explain_quic_close(u64::from(c.error_code))
                                .unwrap_or("handshake failed")
                                .to_owned()
                        }
                        other => other.to_string(),
                    };
                    warn!(%remote, error = %e, why = %why, "refused a unit's connection");
                }
            }
        });
    }
}

/// What [`Hub::revalidate`] checks of one connection.
struct ConnSnapshot {
    connection: u64,
    certs: Vec<CertificateDer<'static>>,
    wiping: bool,
}

/// A file's identity for change detection: modification time and length.
pub(crate) fn stamp(path: &std::path::Path) -> Option<(Option<std::time::SystemTime>, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok(), m.len()))
}

/// Close revoked or wiped units' live connections: every [`REVALIDATE_POLL`] look for a
/// changed CRL (then reload it), inventory or token deny list; when one changed, and at least
/// every [`REVALIDATE_EVERY`], re-check every connection ([`Hub::revalidate`]). A newer deny
/// list is also re-read on the CRL reload cadence and passed to every session.
pub async fn watch_revocations(hub: Arc<Hub>) {
    let mut tick = tokio::time::interval(REVALIDATE_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let reread = Duration::from_secs(hub.config.tls.crl_reload_s.clamp(1, 3600));
    let crl_path = hub.config.tls.crl.clone();
    let dl_path = hub.config.keys.token_denylist.clone();
    let mut crl_stamp = stamp(&crl_path);
    let mut dl_stamp = dl_path.as_deref().and_then(stamp);
    let mut inv = hub.inventory();
    let mut last_full = std::time::Instant::now();
    let mut last_dl = std::time::Instant::now();
    loop {
        tick.tick().await;
        let h = hub.clone();
        let state = (crl_stamp, dl_stamp, inv.clone(), last_full, last_dl);
        let crl_path = crl_path.clone();
        let dl_path = dl_path.clone();
        let step = tokio::task::spawn_blocking(move || {
            let (mut crl_s, mut dl_s, mut inv, mut full, mut dl_at) = state;
            let mut changed = false;
            if let Some(db) = &h.shared {
                // Hubs sharing a database decide on its copies; the files only feed them in.
                changed |= h.fleet_docs.step(&h, db).any();
            } else {
                let s = stamp(&crl_path);
                if s != crl_s {
                    crl_s = s;
                    changed = true;
                    if let Some(r) = &h.reloader {
                        match r.reload() {
                            Ok(x) => info!(revoked = x.revoked_serials, "CRL changed: reloaded"),
                            Err(e) => warn!(error = %e, "the CRL changed but cannot be reloaded; keeping the previous one"),
                        }
                    }
                }
                let s = dl_path.as_deref().and_then(stamp);
                if s != dl_s || dl_at.elapsed() >= reread {
                    dl_s = s;
                    dl_at = std::time::Instant::now();
                    match h.denylist.reload() {
                        Ok(true) => {
                            info!("token deny list changed: passing it to every unit");
                            h.denylist_tx.send_replace(h.denylist.bytes());
                        }
                        Ok(false) => {}
                        Err(e) => {
                            warn!(error = %e, "cannot take the token deny list; keeping the previous one")
                        }
                    }
                }
            }
            let i = h.inventory();
            let same = match (&i, &inv) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if !same {
                inv = i;
                changed = true;
            }
            if changed || full.elapsed() >= REVALIDATE_EVERY {
                full = std::time::Instant::now();
                h.revalidate();
            }
            (crl_s, dl_s, inv, full, dl_at)
        })
        .await;
        match step {
            Ok(next) => (crl_stamp, dl_stamp, inv, last_full, last_dl) = next,
            Err(e) => warn!(error = %e, "the revocation watch failed a step"),
        }
    }
}

/// Build the QUIC endpoint for the sync server.
pub fn sync_endpoint(hub: &mut Hub) -> anyhow::Result<quinn::Endpoint> {
    let (endpoint, reloader) = make_endpoint(&hub.config)?;
    hub.reloader = Some(reloader);
    Ok(endpoint)
}

/// A QUIC endpoint for the sync server from the hub's config (mutual TLS, CRL).
pub fn make_endpoint(config: &HubConfig) -> anyhow::Result<(quinn::Endpoint, CrlReloader)> {
    let (tls_cfg, reloader) =
        tls::hub_server_config(config).context("cannot build the hub's TLS config")?;
    let quic = QuicServerConfig::try_from(tls_cfg).context("QUIC server config")?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            // Longer than a unit's (two keep-alives + 5 s): the unit's decides.
            quinn::IdleTimeout::try_from(Duration::from_secs(130)).context("idle timeout")?,
        ))
        // Units keep their own paths alive (their keep-alive, 15 s by default, and a PING at
        // once when their network changes); the hub sending its own PINGs too would double an
        // idle link's cost on every unit's metered contract.
        .keep_alive_interval(None)
        // A unit's probes (one-byte datagrams while it waits on the hub) are ACKed and never
        // read: keep only a few.
        .datagram_receive_buffer_size(Some(4096))
        .max_concurrent_bidi_streams(8u32.into())
        .max_concurrent_uni_streams(8u32.into());
    server.transport_config(Arc::new(transport));
    let addr: SocketAddr = config
        .listen
        .socket_addr()
        .context("the hub's listen address must be an IP:PORT")?;
    let endpoint = quinn::Endpoint::server(server, addr)
        .with_context(|| format!("cannot listen for units on {addr} (UDP)"))?;
    Ok((endpoint, reloader))
}

enum Input {
    Msg(ToHub, StreamKind, mpsc::Sender<ToUnit>),
    StreamError(String),
}

async fn handle_connection(hub: Arc<Hub>, conn: quinn::Connection) -> anyhow::Result<()> {
    let certs = conn
        .peer_identity()
        .and_then(|a| a.downcast::<Vec<CertificateDer<'static>>>().ok())
        .context("a verified unit has certificates")?;
    let cert = certs.first().context("no certificate")?;
    let ident = tls::peer_identity(cert.as_ref()).context("certificate identity")?;
    let device = ident.device_id.clone();
    let t = now();

    // Known to the fleet and not revoked (the CRL already refused revoked certificates at the
    // handshake; the inventory catches a unit the hub was never told about).
    let refusal = match hub.inventory() {
        Some(inv) => match inv.unit(&device) {
            None => Some((RefusalCode::UnknownUnit, "this hub does not know the unit")),
            Some(u) if u.revoked() => Some((RefusalCode::UnknownUnit, "the unit is revoked")),
            Some(_) => None,
        },
        None => None,
    };
    let (override_cohort, wipe_ordered) = {
        let store = hub.store.clone();
        let device = device.clone();
        blocking(move || -> Result<_, StoreError> {
            let cohort = store.cohort_override(&device)?;
            store.update_device(&device, |d| {
                d.last_seen = Some(t);
                if let Some((_, why)) = refusal {
                    d.last_refusal = Some(format!("{t}: {why}"));
                }
            })?;
            Ok((cohort, store.device(&device)?.wipe_requested.is_some()))
        })
        .await??
    };
    let cohort = match override_cohort {
        Some(c) => c,
        None if ident.cohorts.is_empty() => vec![CohortSpec::All],
        None => ident.cohorts.clone(),
    };

    let (in_tx, mut in_rx) = mpsc::channel::<Input>(INPUT_QUEUE);
    // Audit uploads go straight to the repository (never to a refused unit).
    let audit_sink = if refusal.is_none() {
        Some((hub.clone(), device.clone()))
    } else {
        None
    };
    // Accept the unit's streams; each reader tags its messages with the stream's kind.
    {
        let conn = conn.clone();
        let in_tx = in_tx.clone();
        tokio::spawn(async move {
            while let Ok((send, recv)) = conn.accept_bi().await {
                tokio::spawn(stream_reader(send, recv, in_tx.clone(), audit_sink.clone()));
            }
        });
    }

    if let Some((code, why)) = refusal {
        warn!(device = %device, why, "refused a unit");
        hub.metrics.refused();
        // Answer its hello with the refusal, then close.
        if let Some(Input::Msg(_, _, out)) =
            tokio::time::timeout(Duration::from_secs(5), in_rx.recv())
                .await
                .ok()
                .flatten()
        {
            let _ = out.send(ToUnit::refused(code, why)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        conn.close(2u32.into(), why.as_bytes());
        return Ok(());
    }

    let connection = hub
        .next_connection
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (cohort_tx, mut cohort_rx) = watch::channel(None);
    let remote = conn.remote_address();
    let (prefetch_tx, mut prefetch_rx) = mpsc::channel(PREFETCH_QUEUE);
    for p in hub.prefetch.take(&device, t) {
        let _ = prefetch_tx.try_send(p);
    }
    let older = hub.connected().insert(
        device.clone(),
        Connected {
            since: t,
            progress: SessionProgress::default(),
            cohort_tx,
            connection,
            conn: conn.clone(),
            certs: certs.iter().map(|c| c.clone().into_owned()).collect(),
            wiping: wipe_ordered,
            prefetch_tx,
        },
    );
    if let Some(old) = older {
        superseded(&hub, &device, old, remote).await;
    }
    info!(device = %device, role = %ident.role, "unit connected");
    let mut session = HubSession::new(
        UnitProfile {
            device_id: device.clone(),
            cohort,
        },
        hub.key.clone(),
        hub.session_config.clone(),
    );
    let mut head_rx = hub.head_tx.subscribe();
    let mut denylist_rx = hub.denylist_tx.subscribe();
    if let Some(list) = denylist_rx.borrow_and_update().clone() {
        session.set_denylist(list);
    }
    // Fetches let through by the gate and not yet answered: recorded when answered.
    let mut granted: HashMap<u64, Granted> = HashMap::new();
    // Refusals of fetches without a valid token recorded on this connection (bounded, so a
    // stolen certificate cannot flood the audit repository; the metric counts them all).
    let mut refusals_recorded = 0u32;
    let mut pull: Option<mpsc::Sender<ToUnit>> = None;
    let mut fetch: Option<mpsc::Sender<ToUnit>> = None;
    let mut saved_cursor = None;
    let mut reported_sent = 0u64;
    let result: anyhow::Result<()> = loop {
        let step = tokio::select! {
            input = in_rx.recv() => match input {
                Some(Input::Msg(ToHub::Hello(_), StreamKind::Pull, out)) if wipe_ordered => {
                    warn!(device = %device, "sending the unit its wipe order");
                    let _ = out.send(ToUnit::Wipe { reason: "ordered by the fleet operator".into() }).await;
                    let store = hub.store.clone();
                    let dev = device.clone();
                    let _ = blocking(move || store.update_device(&dev, |d| d.wipe_sent = Some(now()))).await;
                    // Keep the connection: the unit's pending audit events still upload.
                    continue;
                }
                Some(Input::Msg(ToHub::Renew, StreamKind::Pull, out)) => {
                    let answer = renew(&hub, &device, &ident, &certs).await;
                    let _ = out.send(answer).await;
                    pull = Some(out);
                    continue;
                }
                Some(Input::Msg(ToHub::Fetch { request_id, nhs, token, purpose }, StreamKind::Fetch, out)) => {
                    fetch = Some(out);
                    let t = now();
                    // Off the async workers: on PostgreSQL the budget is a database transaction.
                    let v = {
                        let (h, dev, tok) = (hub.clone(), device.clone(), token.clone());
                        match blocking(move || h.gate.admit(t, &dev, &tok, purpose, nhs)).await {
                            Ok(v) => v,
                            Err(e) => break Err(e),
                        }
                    };
                    for a in &v.alerts {
                        budget_alert(&hub, &device, v.claims.as_ref(), purpose, a, remote).await;
                    }
                    match v.result {
                        Ok(g) => {
                            granted.insert(request_id, g);
                            let msg = ToHub::Fetch { request_id, nhs, token, purpose };
                            off_worker(&hub, || session.handle_message(t, msg, &*hub.store))
                        }
                        Err(reason) => {
                            debug!(device = %device, reason = reason.as_str(), "refused a fetch");
                            if v.claims.is_some() || refusals_recorded < MAX_REFUSALS_RECORDED {
                                refusals_recorded += 1;
                                let ev = OwnedEvent {
                                    action: AuditAction::Read,
                                    outcome: AuditOutcome::Denied,
                                    reason: Some(reason.as_str()),
                                    claims: v.claims.clone(),
                                    purpose,
                                    patient: Some(nhs),
                                    version: None,
                                };
                                if let Err(e) = record(&hub, &device, remote, ev).await {
                                    warn!(device = %device, error = %e, "cannot record a refused fetch at the hub");
                                }
                            }
                            session.refuse_fetch(request_id, reason)
                        }
                    }
                }
                Some(Input::Msg(msg, kind, out)) => {
                    match kind {
                        StreamKind::Pull => pull = Some(out),
                        StreamKind::Fetch => fetch = Some(out),
                        StreamKind::Audit => {}
                    }
                    if let ToHub::Hello(Hello { health: Some(h), .. }) = &msg {
                        let (h, t) = (edge_proto::sync::UnitHealth::clone(h), now());
                        let store = hub.store.clone();
                        let dev = device.clone();
                        let _ = tokio::task::spawn_blocking(move || {
                            store.update_device(&dev, |d| {
                                // The unit's journal head as it says; from a unit too old
                                // to say, what the hub has stored plus the backlog it
                                // reported (which counts events whose acknowledgement was
                                // lost, so it can only over-count).
                                d.audit_head_reported = Some(h.audit_last_seq.unwrap_or_else(
                                    || d.audit_received_seq.saturating_add(h.audit_backlog),
                                ));
                                d.health = Some((h, t));
                            })
                        })
                        .await;
                    }
                    let store = hub.store.clone();
                    off_worker(&hub, || session.handle_message(now(), msg, &*store))
                }
                Some(Input::StreamError(e)) => break Err(anyhow::anyhow!("stream: {e}")),
                None => break Ok(()),
            },
            Some(p) = prefetch_rx.recv(), if pull.is_some() => {
                if let Some(out) = &pull {
                    push_prefetch(&hub, &device, remote, p, out).await;
                }
                continue;
            }
            changed = head_rx.changed() => {
                if changed.is_err() { break Ok(()); }
                off_worker(&hub, || session.notify_new_changes(now(), &*hub.store))
            }
            Ok(()) = denylist_rx.changed() => {
                if let Some(list) = denylist_rx.borrow_and_update().clone() {
                    debug!(device = %device, "passing the unit the newer token deny list");
                    session.set_denylist(list);
                }
                Ok(())
            }
            Ok(()) = cohort_rx.changed() => {
                let Some(c) = cohort_rx.borrow_and_update().clone() else { continue };
                info!(device = %device, "cohort changed by the operator: re-baselining the unit");
                off_worker(&hub, || session.set_cohort(now(), &c, &*hub.store))
            }
            _ = conn.closed() => break Ok(()),
        };
        // Send whatever the session produced, each on its stream. A full writer queue makes
        // this wait (back-pressure from a slow unit) until the writer catches up or the
        // connection goes.
        while let Some(mut msg) = session.poll_transmit() {
            if let ToUnit::Fetched {
                request_id,
                outcome,
            } = &mut msg
            {
                // Recorded at the hub before it is served; unrecordable, it is not served.
                if let Some(g) = granted.remove(request_id) {
                    let (out_come, reason, version) = match &*outcome {
                        FetchOutcome::Found { version, .. } => {
                            (AuditOutcome::Ok, None, Some(*version))
                        }
                        FetchOutcome::NotFound => {
                            (AuditOutcome::NotFound, Some("not_at_hub"), None)
                        }
                        FetchOutcome::Withdrawn => {
                            (AuditOutcome::NotFound, Some("withdrawn"), None)
                        }
                        FetchOutcome::Refused { reason } => {
                            (AuditOutcome::Denied, Some(reason.as_str()), None)
                        }
                    };
                    let reason = if g.over_budget && out_come == AuditOutcome::Ok {
                        Some("fetch_over_budget")
                    } else {
                        reason
                    };
                    let ev = OwnedEvent {
                        action: if g.purpose == Purpose::EmergencyTreat {
                            AuditAction::BreakGlass
                        } else {
                            AuditAction::Read
                        },
                        outcome: out_come,
                        reason,
                        claims: Some(g.claims),
                        purpose: g.purpose,
                        patient: Some(g.nhs),
                        version,
                    };
                    if let Err(e) = record(&hub, &device, remote, ev).await {
                        warn!(device = %device, error = %e, "cannot record a fetch at the hub: not serving it");
                        *outcome = FetchOutcome::Refused {
                            reason: FetchRefusal::AuditUnavailable,
                        };
                    }
                }
                hub.metrics.fetch(outcome);
            }
            let out = match msg.stream() {
                StreamKind::Pull => pull.as_ref(),
                StreamKind::Fetch => fetch.as_ref(),
                StreamKind::Audit => None,
            };
            if let Some(out) = out {
                tokio::select! {
                    sent = out.send(msg) => { let _ = sent; }
                    _ = conn.closed() => break,
                }
            }
        }
        let progress = session.progress().clone();
        if progress.acked_cursor != saved_cursor || progress.records_sent != reported_sent {
            saved_cursor = progress.acked_cursor;
            let delta = progress.records_sent - reported_sent;
            reported_sent = progress.records_sent;
            let store = hub.store.clone();
            let dev = device.clone();
            let cursor = saved_cursor;
            let _ = blocking(move || {
                store.update_device(&dev, |d| {
                    if cursor.is_some() {
                        d.cursor = cursor;
                    }
                    d.last_seen = Some(now());
                    d.records_sent += delta;
                })
            })
            .await;
        }
        if let Some(c) = hub.connected().get_mut(&device) {
            if c.connection == connection {
                c.progress = progress;
            }
        }
        if let Err(e) = step {
            warn!(device = %device, error = %e, "sync session with the unit failed");
            tokio::time::sleep(Duration::from_millis(200)).await;
            break Err(e.into());
        }
        if session.is_closed() {
            break Ok(());
        }
    };
    {
        let mut map = hub.connected();
        if map.get(&device).is_some_and(|c| c.connection == connection) {
            map.remove(&device);
        }
    }
    let _ = hub
        .store
        .update_device(&device, |d| d.last_seen = Some(now()));
    info!(device = %device, "unit disconnected");
    conn.close(close_code::BYE.into(), b"bye");
    result
}

/// Answer a unit's renewal request on this connection: the certificate it presented,
/// re-issued by the renewal CA, or why not (see [`crate::renewal`]).
async fn renew(
    hub: &Arc<Hub>,
    device: &DeviceId,
    ident: &edge_runtime::identity::UnitIdentity,
    certs: &[CertificateDer<'static>],
) -> ToUnit {
    let t = now();
    let inv = hub.inventory();
    let wiped = hub
        .store
        .device(device)
        .map_or(true, |d| d.wipe_requested.is_some());
    let result = crate::renewal::decide(
        hub.renewal.as_ref(),
        inv.as_deref(),
        wiped,
        ident,
        certs.first().map(|c| c.as_ref()),
        t,
    );
    match result {
        Ok(r) => {
            info!(device = %device, serial = %r.serial, expires = %r.not_after.to_rfc3339(), "renewed a unit's certificate");
            hub.metrics.renewal("renewed");
            let store = hub.store.clone();
            let dev = device.clone();
            let renewed = (r.serial.clone(), r.not_after, t);
            let _ = blocking(move || store.update_device(&dev, |d| d.cert_renewed = Some(renewed)))
                .await;
            ToUnit::Certificate {
                chain: r.chain.into_iter().map(Bytes::from).collect(),
            }
        }
        Err(why) => {
            match &why {
                crate::renewal::Refusal::NotDue { .. } => {
                    debug!(device = %device, why = %why, "refused a certificate renewal")
                }
                _ => warn!(device = %device, why = %why, "refused a certificate renewal"),
            }
            hub.metrics.renewal(why.as_str());
            ToUnit::RenewalRefused {
                why: why.to_string(),
            }
        }
    }
}

/// Pushes queued for one connected kiosk, at most (more wait in [`Hub::prefetch`]).
const PREFETCH_QUEUE: usize = 64;

/// A conveyance reached the hub in a vehicle's audit upload: push the patient's record to the
/// destination's ED kiosks if the crew's own audited read stands behind it
/// ([`crate::prefetch::decide`]).
async fn conveyance(hub: Arc<Hub>, ev: edge_proto::audit::AuditEvent) {
    let Some(inv) = hub.inventory() else {
        debug!("a conveyance, but no fleet inventory to find kiosks in");
        return;
    };
    let Some(nhs) = ev.patient else { return };
    let repo = hub.audit.clone();
    let prior = match tokio::task::spawn_blocking(move || repo.query(b'p', &nhs.as_digits(), 1_000))
        .await
    {
        Ok(Ok(p)) => p,
        _ => {
            warn!(device = %ev.device_id, "cannot read the audit repository for a conveyance: no pre-fetch");
            return;
        }
    };
    match crate::prefetch::decide(&inv, &ev, &prior, now()) {
        Ok((p, kiosks)) => {
            info!(from = %p.from, kiosks = kiosks.len(), "a crew is bringing a patient in: pushing the record to the destination's ED kiosks");
            for k in kiosks {
                let sent = hub
                    .connected()
                    .get(&k)
                    .is_some_and(|c| c.prefetch_tx.try_send(p.clone()).is_ok());
                if !sent {
                    hub.prefetch.keep(&k, p.clone());
                }
                hub.metrics
                    .prefetch(if sent { "queued" } else { "pending" });
            }
        }
        Err(skip) => {
            info!(device = %ev.device_id, reason = skip.as_str(), "a conveyance pushed nothing");
            hub.metrics.prefetch(skip.as_str());
        }
    }
}

/// Send one pushed record to a connected kiosk, recorded first as the hub's own access event
/// (device the kiosk, staff the crew member whose access it stands on).
async fn push_prefetch(
    hub: &Arc<Hub>,
    kiosk: &DeviceId,
    remote: SocketAddr,
    p: crate::prefetch::Prefetch,
    out: &mpsc::Sender<ToUnit>,
) {
    let store = hub.store.clone();
    let nhs = p.nhs;
    let cur =
        tokio::task::spawn_blocking(move || edge_proto::sync::HubFeed::get(&*store, &nhs)).await;
    let (version, body) = match cur {
        Ok(Ok(Some(c))) if !c.meta.withdrawn => match c.body {
            edge_proto::sync::FeedBody::Record(r) => (c.version, r),
            _ => return,
        },
        Ok(Ok(_)) => {
            debug!(kiosk = %kiosk, "a pushed patient is not (or no longer) at the hub");
            return;
        }
        _ => {
            warn!(kiosk = %kiosk, "cannot read a pushed patient's record");
            return;
        }
    };
    let ev = OwnedEvent {
        action: AuditAction::Read,
        outcome: AuditOutcome::Ok,
        reason: Some("prefetch_conveyance"),
        claims: Some(p.claims),
        purpose: Purpose::Treat,
        patient: Some(nhs),
        version: Some(version),
    };
    if let Err(e) = record(hub, kiosk, remote, ev).await {
        warn!(kiosk = %kiosk, error = %e, "cannot record a pre-fetch at the hub: not pushing it");
        return;
    }
    let signature = edge_proto::sync::sign::sign_fetched(&hub.key, &nhs, version, body.as_slice());
    let _ = out
        .send(ToUnit::Prefetched {
            nhs,
            version,
            record: body,
            signature,
        })
        .await;
    hub.metrics.prefetch("delivered");
}

/// Refusals of fetches without a valid token recorded per connection, at most.
const MAX_REFUSALS_RECORDED: u32 = 32;

/// A hub audit event built on the connection task, recorded on a blocking thread.
struct OwnedEvent {
    action: AuditAction,
    outcome: AuditOutcome,
    reason: Option<&'static str>,
    claims: Option<edge_proto::token::ShiftClaims>,
    purpose: Purpose,
    patient: Option<edge_proto::nhs::NhsNumber>,
    version: Option<u64>,
}

/// Record one of the hub's own audit events (durable on return).
async fn record(
    hub: &Arc<Hub>,
    device: &DeviceId,
    remote: SocketAddr,
    ev: OwnedEvent,
) -> anyhow::Result<()> {
    let hub = hub.clone();
    let device = device.clone();
    tokio::task::spawn_blocking(move || {
        hub.gate.record(
            now(),
            &HubEvent {
                action: ev.action,
                outcome: ev.outcome,
                reason: ev.reason,
                claims: ev.claims.as_ref(),
                purpose: ev.purpose,
                patient: ev.patient,
                version: ev.version,
                device: &device,
                remote: Some(remote.ip().to_string()),
            },
        )
    })
    .await
    .map_err(|e| anyhow::anyhow!("audit task: {e}"))?
}

/// A fetch-budget alert: logged, counted and recorded as an alert event at once.
async fn budget_alert(
    hub: &Arc<Hub>,
    device: &DeviceId,
    claims: Option<&edge_proto::token::ShiftClaims>,
    purpose: Purpose,
    a: &fetch_budget::Alert,
    remote: SocketAddr,
) {
    let kind = a.kind.reason();
    warn!(
        device = %device,
        staff_id = claims.map_or("", |c| c.staff_id.as_str()),
        who = a.who.as_str(),
        count = a.count,
        budget = a.budget,
        kind,
        "on-demand fetches past the budget: alerting"
    );
    hub.metrics.fetch_alert(kind);
    let ev = OwnedEvent {
        action: AuditAction::Alert,
        outcome: if a.kind == fetch_budget::AlertKind::Ceiling {
            AuditOutcome::Denied
        } else {
            AuditOutcome::Ok
        },
        reason: Some(kind),
        claims: claims.cloned(),
        purpose,
        patient: None,
        version: None,
    };
    if let Err(e) = record(hub, device, remote, ev).await {
        warn!(device = %device, error = %e, "cannot record a fetch-budget alert at the hub");
    }
}

/// Two live sessions on one unit certificate: the older is closed. A unit that reconnects
/// before the hub noticed its old connection drop looks the same, so the alert event goes to
/// the audit repository when the two came from different addresses, or when the unit's
/// sessions supersede each other again within [`SUPERSEDE_ALERT_MS`] (two holders of one
/// key fighting); a lone same-address reconnect is logged and counted only.
async fn superseded(hub: &Arc<Hub>, device: &DeviceId, old: Connected, remote: SocketAddr) {
    let old_remote = old.conn.remote_address();
    old.conn.close(
        close_code::SUPERSEDED.into(),
        b"superseded: another connection with this unit's certificate replaced this one",
    );
    hub.metrics.session_closed("superseded");
    let t = now();
    let again = {
        let mut m = SUPERSEDED_AT.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 4_096 {
            m.retain(|_, at: &mut UnixMillis| t.0.saturating_sub(at.0) < SUPERSEDE_ALERT_MS);
        }
        let prev = m.insert(device.clone(), t);
        prev.is_some_and(|p| t.0.saturating_sub(p.0) < SUPERSEDE_ALERT_MS)
    };
    let alert = again || old_remote.ip() != remote.ip();
    warn!(
        device = %device,
        old = %old_remote,
        new = %remote,
        alert,
        "two live sessions on one unit certificate: closed the older"
    );
    if alert {
        let ev = OwnedEvent {
            action: AuditAction::Alert,
            outcome: AuditOutcome::Denied,
            reason: Some("duplicate_session"),
            claims: None,
            purpose: Purpose::Treat,
            patient: None,
            version: None,
        };
        if let Err(e) = record(hub, device, remote, ev).await {
            warn!(device = %device, error = %e, "cannot record a duplicate-session alert at the hub");
        }
    }
}

/// Within this long, a unit's sessions superseding each other again is alerted.
const SUPERSEDE_ALERT_MS: i64 = 600_000;

static SUPERSEDED_AT: std::sync::LazyLock<Mutex<HashMap<DeviceId, UnixMillis>>> =
    std::sync::LazyLock::new(|| Mutex::new(HashMap::new()));

/// Read frames from one of the unit's streams; start a writer for the stream's other half
/// once its kind is known (from its first message).
async fn stream_reader(
    send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    in_tx: mpsc::Sender<Input>,
    audit: Option<(Arc<Hub>, DeviceId)>,
) {
    let mut decoder = FrameDecoder::new();
    let mut send = Some(send);
    let mut out: Option<mpsc::Sender<ToUnit>> = None;
    let mut kind = None;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match recv.read(&mut buf).await {
            Ok(Some(n)) => n,
            Ok(None) => return,
            Err(e) => {
                let _ = in_tx.send(Input::StreamError(e.to_string())).await;
                return;
            }
        };
        if let Err(e) = decoder.push(&buf[..n]) {
            let _ = in_tx.send(Input::StreamError(e.to_string())).await;
            return;
        }
        loop {
            match decoder.next_message::<ToHub>() {
                Ok(Some(ToHub::Audit { events })) => {
                    let Some((hub, device)) = &audit else {
                        return;
                    };
                    if out.is_none() {
                        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
                        if let Some(s) = send.take() {
                            tokio::spawn(stream_writer(s, rx, None));
                        }
                        out = Some(tx);
                    }
                    let n = events.len();
                    let repo = hub.audit.clone();
                    let dev = device.clone();
                    let stored =
                        tokio::task::spawn_blocking(move || repo.store(&dev, &events)).await;
                    match stored {
                        Ok(Ok(mut st)) => {
                            hub.metrics.audit(st.new, st.duplicates, st.problems.len());
                            if !st.problems.is_empty() {
                                warn!(device = %device, problems = st.problems.len(), "audit upload has problems (stored and reported)");
                            }
                            debug!(device = %device, n, upto = st.upto_seq, "audit events stored");
                            for ev in std::mem::take(&mut st.conveyances) {
                                tokio::spawn(conveyance(hub.clone(), ev));
                            }
                            let store = hub.store.clone();
                            let dev = device.clone();
                            let upto = st.upto_seq;
                            let _ = blocking(move || {
                                store.update_device(&dev, |d| {
                                    d.audit_received_seq = d.audit_received_seq.max(upto);
                                })
                            })
                            .await;
                            if let Some(o) = &out {
                                // Bounded: a unit not reading its acks stops being read.
                                let _ = o
                                    .send(ToUnit::AuditAck {
                                        upto_seq: st.upto_seq,
                                        problems: st.problems,
                                    })
                                    .await;
                            }
                        }
                        _ => {
                            warn!(device = %device, "cannot store audit events; the unit will retry");
                            let _ = in_tx
                                .send(Input::StreamError("audit store failed".into()))
                                .await;
                            return;
                        }
                    }
                }
                Ok(Some(msg)) => {
                    let k = msg.stream();
                    if kind.is_some_and(|known| known != k) {
                        let _ = in_tx
                            .send(Input::StreamError(
                                "a message on the wrong stream".to_owned(),
                            ))
                            .await;
                        return;
                    }
                    kind = Some(k);
                    if out.is_none() {
                        let (tx, rx) = mpsc::channel(OUTPUT_QUEUE);
                        if let Some(s) = send.take() {
                            // The pull stream is compressed with the codec its hello asks for
                            // (zstd, or deflate for a unit from before zstd); the rest are plain.
                            let codec = match &msg {
                                ToHub::Hello(h) if k == StreamKind::Pull => {
                                    Some(PullCompression::choose(&h.compression))
                                }
                                _ if k == StreamKind::Pull => Some(PullCompression::Deflate),
                                _ => None,
                            };
                            tokio::spawn(stream_writer(s, rx, codec));
                        }
                        out = Some(tx);
                    }
                    if let Some(o) = &out {
                        // Bounded: waits while the session is behind (see INPUT_QUEUE).
                        if in_tx.send(Input::Msg(msg, k, o.clone())).await.is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let _ = in_tx.send(Input::StreamError(e.to_string())).await;
                    return;
                }
            }
        }
    }
}

async fn stream_writer(
    mut send: quinn::SendStream,
    mut rx: mpsc::Receiver<ToUnit>,
    codec: Option<PullCompression>,
) {
    let mut framer = match codec.map(PullFramer::new).transpose() {
        Ok(f) => f,
        Err(e) => {
            warn!(error = %e, "cannot start a unit's stream compressor");
            return;
        }
    };
    while let Some(msg) = rx.recv().await {
        let bytes = match framer.as_mut() {
            Some(f) => f.encode(&msg),
            None => encode_frame(&msg),
        };
        let bytes = match bytes {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "cannot encode a message for a unit");
                return;
            }
        };
        if send.write_all(&bytes).await.is_err() {
            return;
        }
    }
    let _ = send.finish();
}

/// Run a unit session's step, which reads the feed synchronously, where it is — but on a hub
/// on PostgreSQL (each read a database round trip) hand this async worker's other tasks to
/// another worker first (`block_in_place`), so one unit's reads never hold up the rest. The
/// embedded store's reads are memory-speed and run as they are (as they do on a runtime that
/// is not multi-threaded, where there is no other worker to hand to).
fn off_worker<R>(hub: &Hub, f: impl FnOnce() -> R) -> R {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if hub.shared.is_some() && multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Run store work — a sled read or write, or a PostgreSQL round trip, which can wait up to the
/// connect timeout while the database is away — on the blocking pool, never on an async
/// worker: a stalled database must not stall the units' sessions.
pub async fn blocking<R: Send + 'static>(
    f: impl FnOnce() -> R + Send + 'static,
) -> anyhow::Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| anyhow::anyhow!("a store task failed: {e}"))
}

/// `GET /admin/devices` rows.
pub fn device_rows(hub: &Hub) -> anyhow::Result<Vec<serde_json::Value>> {
    let head = hub.store.head()?;
    let mut rows: HashMap<String, serde_json::Value> = HashMap::new();
    let known: HashMap<String, crate::store::DeviceDisk> =
        hub.store.devices()?.into_iter().collect();
    let inventory = hub.inventory();
    let connected = hub.connected();
    let mut push = |id: &str, unit: Option<&edge_runtime::inventory::UnitRecord>, revoked: bool| {
        let role = unit.map(|u| u.role);
        let d = known.get(id).cloned().unwrap_or_default();
        // The certificate in use: the one the hub renewed last, else the one issued at
        // enrolment.
        let cert_not_after = d
            .cert_renewed
            .as_ref()
            .map(|(_, not_after, _)| *not_after)
            .or_else(|| unit.map(|u| u.cert.not_after));
        let cohort: Option<String> =
            d.cohort_override.as_ref().map(|c| c.join(" ")).or_else(|| {
                unit.map(|u| {
                    u.cohorts
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                })
            });
        let live = DeviceId::parse(id)
            .ok()
            .and_then(|dev| connected.get(&dev).map(|c| c.progress.clone()));
        let cursor = live.as_ref().and_then(|p| p.acked_cursor).or(d.cursor);
        // The oldest change the unit has not acknowledged: when it was written.
        let oldest_missing_at = match cursor {
            Some(c) if c < head => hub.store.written_at(c + 1).ok().flatten(),
            _ => None,
        };
        rows.insert(
            id.to_owned(),
            serde_json::json!({
                "device_id": id,
                "role": role.map(|r| r.to_string()),
                "callsign": unit.and_then(|u| u.callsign.clone()),
                "site": unit.and_then(|u| u.site.as_ref().map(|s| s.as_str().to_owned())),
                "cohort": cohort,
                "cert_not_after": cert_not_after.map(|t| t.to_rfc3339()),
                "last_seen": d.last_seen.map(|t| t.to_rfc3339()),
                "cursor": cursor,
                "head": head,
                "oldest_missing_at": oldest_missing_at.map(|t| t.to_rfc3339()),
                "audit_received_seq": d.audit_received_seq,
                "audit_backlog": d.audit_head_reported.map(|h| h.saturating_sub(d.audit_received_seq)),
                "revoked": revoked,
                "connected": live.is_some(),
                "live": live.as_ref().is_some_and(|p| p.live),
                "records_sent": d.records_sent,
                "cohort_override": d.cohort_override,
                "last_refusal": d.last_refusal,
                "wipe_requested": d.wipe_requested.map(|t| t.to_rfc3339()),
                "wipe_sent": d.wipe_sent.map(|t| t.to_rfc3339()),
                "cert_renewed": d.cert_renewed.as_ref().map(|(serial, not_after, at)| serde_json::json!({
                    "serial": serial,
                    "not_after": not_after.to_rfc3339(),
                    "at": at.to_rfc3339(),
                })),
                "health": d.health.as_ref().map(|(h, at)| {
                    let mut v = serde_json::to_value(h).unwrap_or_default();
                    if let Some(m) = v.as_object_mut() {
                        m.insert("at".into(), at.to_rfc3339().into());
                    }
                    v
                }),
                "software_version": d.health.as_ref().map(|(h, _)| h.software.clone()),
                "firmware_version": d.health.as_ref().and_then(|(h, _)| h.firmware.clone()),
            }),
        );
    };
    if let Some(inv) = &inventory {
        for u in &inv.units {
            push(u.device_id.as_str(), Some(u), u.revoked());
        }
    }
    let listed: std::collections::HashSet<String> = inventory
        .as_ref()
        .map(|inv| {
            inv.units
                .iter()
                .map(|u| u.device_id.as_str().to_owned())
                .collect()
        })
        .unwrap_or_default();
    for id in known.keys() {
        if !listed.contains(id) {
            push(id, None, false);
        }
    }
    let mut out: Vec<serde_json::Value> = rows.into_values().collect();
    out.sort_by(|a, b| a["device_id"].as_str().cmp(&b["device_id"].as_str()));
    Ok(out)
}

/// Where the hub keeps its data.
pub fn data_dir(cfg: &HubConfig) -> PathBuf {
    cfg.data_dir.clone()
}
