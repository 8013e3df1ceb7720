//! The hub's store on PostgreSQL: [`PgStore`] implements [`FeedStore`] (and so [`HubFeed`]) over
//! the schema in `migrations/`, with the same values, ingest assembly and answers as the sled
//! store (one conformance suite runs against both: `hub/tests/hub/store.rs`).
//!
//! The driver is async (tokio-postgres, a deadpool pool); the store's interface is synchronous,
//! like sled's. The store owns a small runtime that makes connections and runs their I/O; a
//! call takes a pooled connection there and drives its queries from the calling thread, which
//! works from any thread, a tokio worker included, and never nests runtimes.
//!
//! Feed positions are taken under `SELECT … FROM feed_head … FOR UPDATE`, held to commit, so
//! they commit in order and a unit reading `seq > cursor` never skips one (ARCHITECTURE.md).

pub mod audit;
pub mod budget;
pub mod fleet;
pub mod history;
pub mod migrate;

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use edge_proto::cbor;
use edge_proto::fhir::ingest::IngestOptions;
use edge_proto::ids::{CohortSpec, DeviceId};
use edge_proto::model::Summary;
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::{
    CohortFilter, CurrentMeta, CurrentRecord, FeedEntry, FeedError, HubFeed, WithdrawReason,
};
use edge_proto::time::UnixMillis;
use tokio_postgres::config::SslMode;
use tokio_postgres::{GenericClient, NoTls, Transaction};

use crate::store::{
    assemble_chunk, current_record, decode, encode, feed_entry, follow_aliases, ingest_lines,
    withdrawal, ChunkReader, ChunkWrites, CurDisk, DeviceDisk, FeedDisk, FeedStore, IngestReport,
    Parsed, StoreError,
};

/// How to reach the database. The password is never part of `url` (refused there) and never
/// printed: it comes from the environment or a file (hub.toml's `[store]`).
#[derive(Clone)]
pub struct PgOptions {
    /// `postgres://user@host:port/dbname[?sslmode=…]`, without a password.
    pub url: String,
    pub password: Option<String>,
    /// PEM root certificates to verify the server with; TLS is required when it is set.
    pub ca_file: Option<PathBuf>,
    /// Connections in the pool.
    pub pool_size: usize,
    /// How long a connection attempt may take.
    pub connect_timeout: Duration,
}

impl PgOptions {
    pub fn new(url: impl Into<String>) -> PgOptions {
        PgOptions {
            url: url.into(),
            password: None,
            ca_file: None,
            pool_size: 8,
            connect_timeout: Duration::from_secs(5),
        }
    }
}

impl PgOptions {
    /// From hub.toml's `[store]` (backend = "postgres"): the password read from the
    /// environment or the file it names.
    pub fn from_config(
        cfg: &edge_runtime::config::HubStoreConfig,
    ) -> Result<PgOptions, StoreError> {
        let url = cfg
            .url
            .clone()
            .ok_or_else(|| StoreError::Pg("[store] has no url".into()))?;
        let mut o = PgOptions::new(url);
        o.password = cfg.password().map_err(StoreError::Pg)?;
        o.ca_file = cfg.ca_file.clone();
        if let Some(n) = cfg.pool_size {
            o.pool_size = n as usize;
        }
        Ok(o)
    }
}

impl std::fmt::Debug for PgOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgOptions")
            .field("url", &self.url)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("ca_file", &self.ca_file)
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

fn pg(e: impl std::fmt::Display) -> StoreError {
    StoreError::Pg(e.to_string())
}

/// Parse and complete the driver's configuration; refuses a password inside the URL.
fn pg_config(opts: &PgOptions) -> Result<tokio_postgres::Config, StoreError> {
    let mut cfg: tokio_postgres::Config = opts.url.parse().map_err(|e| {
        StoreError::Pg(format!(
            "the database URL does not parse ({e}); expected postgres://user@host:port/dbname"
        ))
    })?;
    if cfg.get_password().is_some() {
        return Err(StoreError::Pg(
            "the database URL holds a password: give it by password_env or password_file instead"
                .into(),
        ));
    }
    if let Some(p) = &opts.password {
        cfg.password(p.as_bytes());
    }
    if cfg.get_connect_timeout().is_none() {
        cfg.connect_timeout(opts.connect_timeout);
    }
    if cfg.get_application_name().is_none() {
        cfg.application_name("edge-hub");
    }
    Ok(cfg)
}

/// The TLS connector: rustls (ring) when a CA file is given, none otherwise (refused when the
/// URL asks for TLS without one).
fn tls(
    opts: &PgOptions,
    cfg: &mut tokio_postgres::Config,
) -> Result<Option<tokio_postgres_rustls::MakeRustlsConnect>, StoreError> {
    let Some(ca) = &opts.ca_file else {
        if cfg.get_ssl_mode() == SslMode::Require {
            return Err(StoreError::Pg(
                "sslmode=require needs the CA to verify the database with ([store] ca_file)".into(),
            ));
        }
        cfg.ssl_mode(SslMode::Disable);
        return Ok(None);
    };
    use rustls_pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pki_types::CertificateDer::pem_file_iter(ca)
        .map_err(|e| StoreError::Pg(format!("database CA file {}: {e}", ca.display())))?
    {
        let c = c.map_err(|e| StoreError::Pg(format!("database CA file {}: {e}", ca.display())))?;
        roots
            .add(c)
            .map_err(|e| StoreError::Pg(format!("database CA file {}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(pg)?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.ssl_mode(SslMode::Require);
    Ok(Some(tokio_postgres_rustls::MakeRustlsConnect::new(config)))
}

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Drive `fut` on this thread until it completes. The futures given here wait only on the
/// driver's channels to a connection whose I/O runs on the store's own runtime, so they need
/// no runtime of their own.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// The hub's store on PostgreSQL.
pub struct PgStore {
    pool: Pool,
    /// For the feed-head watch's own connection.
    cfg: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// Makes connections and runs their I/O.
    rt: OwnedRuntime,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore")
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// A runtime shut down in the background when dropped (a drop may happen inside another
/// runtime, where a blocking shutdown would panic).
struct OwnedRuntime(Option<tokio::runtime::Runtime>);

impl OwnedRuntime {
    fn handle(&self) -> Option<&tokio::runtime::Handle> {
        self.0.as_ref().map(|r| r.handle())
    }
}

impl Drop for OwnedRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

fn runtime() -> Result<OwnedRuntime, StoreError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("hub-pg")
        .enable_all()
        .build()
        .map(|rt| OwnedRuntime(Some(rt)))
        .map_err(|e| StoreError::Pg(format!("starting the database runtime: {e}")))
}

/// Run the embedded migrations on a connection of their own (its advisory lock ends with it).
pub fn migrate(opts: &PgOptions) -> Result<migrate::Outcome, StoreError> {
    let rt = runtime()?;
    let mut cfg = pg_config(opts)?;
    let tls = tls(opts, &mut cfg)?;
    let Some(h) = rt.handle() else {
        return Err(StoreError::Pg("the database runtime is gone".into()));
    };
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    h.spawn(async move {
        let _ = tx.send(migrate_on(cfg, tls).await);
    });
    rx.recv()
        .map_err(|_| StoreError::Pg("the migration task ended without an answer".into()))?
}

async fn migrate_on(
    cfg: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
) -> Result<migrate::Outcome, StoreError> {
    let mut client = match tls {
        Some(t) => {
            let (client, conn) = cfg.connect(t).await.map_err(connect_error)?;
            tokio::spawn(conn);
            client
        }
        None => {
            let (client, conn) = cfg.connect(NoTls).await.map_err(connect_error)?;
            tokio::spawn(conn);
            client
        }
    };
    migrate::migrate(&mut client).await
}

fn connect_error(e: impl std::fmt::Display) -> StoreError {
    StoreError::Pg(format!("cannot connect to the database: {e}"))
}

impl PgStore {
    /// Migrate the database (under the advisory lock) and open a pool on it. Fails clearly,
    /// within the connect timeout, when the database cannot be reached.
    pub fn connect(opts: &PgOptions) -> Result<PgStore, StoreError> {
        let out = migrate(opts)?;
        if !out.applied.is_empty() {
            tracing::info!(version = out.version, applied = ?out.applied, "database schema migrated");
        }
        if !out.unknown.is_empty() {
            tracing::warn!(
                unknown = ?out.unknown,
                "the database has schema migrations this hub does not know (a newer hub applied them); they only add, so this hub carries on"
            );
        }
        let store = PgStore::open(opts)?;
        let mut c = store.conn()?;
        let filled = backfill_routing(client_mut(&mut c))?;
        if filled > 0 {
            tracing::info!(
                patients = filled,
                "filled in the routing columns of patients written before schema version 6"
            );
        }
        drop(c);
        Ok(store)
    }

    /// Open a pool on an already migrated database; refuses one older than this binary.
    pub fn open(opts: &PgOptions) -> Result<PgStore, StoreError> {
        let rt = runtime()?;
        let mut cfg = pg_config(opts)?;
        let tls = tls(opts, &mut cfg)?;
        let mc = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match tls.clone() {
            Some(t) => Manager::from_config(cfg.clone(), t, mc),
            None => Manager::from_config(cfg.clone(), NoTls, mc),
        };
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(pg)?;
        let store = PgStore { pool, cfg, tls, rt };
        let c = store.conn()?;
        let version: Option<i32> =
            block_on(c.query_opt("SELECT max(version) FROM schema_migrations", &[]))
                .map_err(|e| StoreError::Pg(format!("the database has no Kerbside schema: {e}")))?
                .and_then(|r| r.get(0));
        let latest = migrate::latest();
        if version.unwrap_or(0) < latest {
            return Err(StoreError::Pg(format!(
                "the database schema is at version {}, this hub needs {latest}: run `edge-hub migrate`",
                version.unwrap_or(0)
            )));
        }
        Ok(store)
    }

    /// A pooled connection (made on the store's runtime when the pool has none idle).
    fn conn(&self) -> Result<Object, StoreError> {
        let Some(rt) = self.rt.handle() else {
            return Err(StoreError::Pg("the store is closed".into()));
        };
        // Waited for over a channel, not by polling the task's JoinHandle: a JoinHandle polled
        // from inside another runtime's task obeys that task's co-operative budget, and a
        // spent budget would make this thread spin.
        let pool = self.pool.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        rt.spawn(async move {
            let _ = tx.send(pool.get().await);
        });
        rx.recv()
            .map_err(|_| StoreError::Pg("the database task ended without an answer".into()))?
            .map_err(connect_error)
    }

    /// Lock the feed head for this transaction: `(head, oldest)`. Every feed writer calls this
    /// first, so positions are taken, and committed, one transaction at a time.
    fn lock_head(tx: &Transaction<'_>) -> Result<(u64, u64), StoreError> {
        let row = block_on(tx.query_one(
            "SELECT head, oldest FROM feed_head WHERE id = 1 FOR UPDATE",
            &[],
        ))
        .map_err(pg)?;
        Ok((u64_of(row.get(0)), u64_of(row.get(1))))
    }

    fn ingest_chunk(
        &self,
        parsed: Vec<(u64, Parsed)>,
        now: UnixMillis,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        let mut c = self.conn()?;
        let tx = block_on(client_mut(&mut c).transaction()).map_err(pg)?;
        let (head, _) = Self::lock_head(&tx)?;
        let reader = Prefetched::load(&tx, &parsed)?;
        let w = assemble_chunk(&reader, parsed, now, head, report)?;
        write_chunk(&tx, &w)?;
        block_on(tx.commit()).map_err(pg)?;
        Ok(())
    }
}

/// The driver's client inside a pooled connection.
fn client(o: &Object) -> &tokio_postgres::Client {
    o
}

fn client_mut(o: &mut Object) -> &mut tokio_postgres::Client {
    o
}

fn u64_of(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The current state of a patient, read through `c`.
fn cur_of(c: &impl GenericClient, nhs: &NhsNumber) -> Result<Option<CurDisk>, StoreError> {
    let row = block_on(c.query_opt(
        "SELECT cur FROM patient_current WHERE nhs = $1",
        &[&nhs.as_digits()],
    ))
    .map_err(pg)?;
    row.map(|r| decode(b"m", r.get::<_, &[u8]>(0))).transpose()
}

fn summary_bytes_of(
    c: &impl GenericClient,
    nhs: &NhsNumber,
) -> Result<Option<Vec<u8>>, StoreError> {
    let row = block_on(c.query_opt(
        "SELECT body FROM patient_summary WHERE nhs = $1",
        &[&nhs.as_digits()],
    ))
    .map_err(pg)?;
    Ok(row.map(|r| r.get(0)))
}

fn decode_summary(b: &[u8]) -> Result<Summary, StoreError> {
    cbor::decode_summary(b).map_err(|e| StoreError::Corrupt {
        key: "b".into(),
        why: e.to_string(),
    })
}

fn nhs_of(s: &str, what: &str) -> Result<NhsNumber, StoreError> {
    NhsNumber::parse(s).map_err(|_| StoreError::Corrupt {
        key: what.into(),
        why: "not an NHS number".into(),
    })
}

fn alias_step_of(c: &impl GenericClient, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError> {
    let row = block_on(c.query_opt(
        "SELECT current FROM nhs_alias WHERE former = $1",
        &[&nhs.as_digits()],
    ))
    .map_err(pg)?;
    row.map(|r| nhs_of(r.get::<_, &str>(0), "a")).transpose()
}

/// A chunk's reads: the patients and aliases its bundles name, fetched in three queries inside
/// the chunk's transaction (after the feed lock); anything else (an alias leading elsewhere)
/// is read on demand in the same transaction.
struct Prefetched<'t, 'c> {
    tx: &'t Transaction<'c>,
    curs: HashMap<NhsNumber, Option<CurDisk>>,
    bodies: HashMap<NhsNumber, Option<Vec<u8>>>,
    aliases: HashMap<NhsNumber, Option<NhsNumber>>,
}

impl<'t, 'c> Prefetched<'t, 'c> {
    fn load(
        tx: &'t Transaction<'c>,
        parsed: &[(u64, Parsed)],
    ) -> Result<Prefetched<'t, 'c>, StoreError> {
        let mut nums: Vec<NhsNumber> = parsed
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .flat_map(|i| &i.contributions)
            .flat_map(|c| std::iter::once(c.nhs_number).chain(c.patient.former_nhs_numbers.clone()))
            .collect();
        nums.sort_unstable();
        nums.dedup();
        let keys: Vec<String> = nums.iter().map(|n| n.as_digits().to_string()).collect();
        let mut p = Prefetched {
            tx,
            curs: nums.iter().map(|n| (*n, None)).collect(),
            bodies: nums.iter().map(|n| (*n, None)).collect(),
            aliases: nums.iter().map(|n| (*n, None)).collect(),
        };
        for r in block_on(tx.query(
            "SELECT nhs, cur FROM patient_current WHERE nhs = ANY($1)",
            &[&keys],
        ))
        .map_err(pg)?
        {
            let n = nhs_of(r.get::<_, &str>(0), "m")?;
            p.curs.insert(n, Some(decode(b"m", r.get::<_, &[u8]>(1))?));
        }
        for r in block_on(tx.query(
            "SELECT nhs, body FROM patient_summary WHERE nhs = ANY($1)",
            &[&keys],
        ))
        .map_err(pg)?
        {
            let n = nhs_of(r.get::<_, &str>(0), "b")?;
            p.bodies.insert(n, Some(r.get(1)));
        }
        for r in block_on(tx.query(
            "SELECT former, current FROM nhs_alias WHERE former = ANY($1)",
            &[&keys],
        ))
        .map_err(pg)?
        {
            let n = nhs_of(r.get::<_, &str>(0), "a")?;
            p.aliases.insert(n, Some(nhs_of(r.get::<_, &str>(1), "a")?));
        }
        Ok(p)
    }
}

impl ChunkReader for Prefetched<'_, '_> {
    fn cur(&self, nhs: &NhsNumber) -> Result<Option<CurDisk>, StoreError> {
        match self.curs.get(nhs) {
            Some(c) => Ok(c.clone()),
            None => cur_of(self.tx, nhs),
        }
    }

    fn summary(&self, nhs: &NhsNumber) -> Result<Option<Summary>, StoreError> {
        let b = match self.bodies.get(nhs) {
            Some(b) => b.clone(),
            None => summary_bytes_of(self.tx, nhs)?,
        };
        b.map(|b| decode_summary(&b)).transpose()
    }

    fn alias_step(&self, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError> {
        match self.aliases.get(nhs) {
            Some(a) => Ok(*a),
            None => alias_step_of(self.tx, nhs),
        }
    }
}

/// Write a chunk's results (batched: one statement per table) and the new head.
fn write_chunk(tx: &Transaction<'_>, w: &ChunkWrites) -> Result<(), StoreError> {
    if !w.aliases.is_empty() {
        let from: Vec<String> = w
            .aliases
            .iter()
            .map(|(f, _)| f.as_digits().to_string())
            .collect();
        let to: Vec<String> = w
            .aliases
            .iter()
            .map(|(_, t)| t.as_digits().to_string())
            .collect();
        block_on(tx.execute(
            "INSERT INTO nhs_alias (former, current) SELECT * FROM unnest($1::text[], $2::text[])
             ON CONFLICT (former) DO UPDATE SET current = EXCLUDED.current",
            &[&from, &to],
        ))
        .map_err(pg)?;
    }
    if !w.bodies.is_empty() {
        let nhs: Vec<String> = w
            .bodies
            .iter()
            .map(|(n, _)| n.as_digits().to_string())
            .collect();
        let body: Vec<&[u8]> = w.bodies.iter().map(|(_, b)| b.as_slice()).collect();
        block_on(tx.execute(
            "INSERT INTO patient_summary (nhs, body) SELECT * FROM unnest($1::text[], $2::bytea[])
             ON CONFLICT (nhs) DO UPDATE SET body = EXCLUDED.body",
            &[&nhs, &body],
        ))
        .map_err(pg)?;
    }
    if !w.curs.is_empty() {
        write_curs(tx, &w.curs)?;
    }
    if !w.feed.is_empty() {
        write_feed(tx, &w.feed)?;
    }
    block_on(tx.execute(
        "UPDATE feed_head SET head = $1 WHERE id = 1",
        &[&i64_of(w.head)],
    ))
    .map_err(pg)?;
    if !w.feed.is_empty() {
        // Delivered to every listening hub when (and only if) the transaction commits.
        block_on(tx.execute(
            "SELECT pg_notify($1, $2)",
            &[&FEED_CHANNEL, &w.head.to_string()],
        ))
        .map_err(pg)?;
    }
    Ok(())
}

/// The channel feed writers notify with the new head (`LISTEN kerbside_feed`).
pub const FEED_CHANNEL: &str = "kerbside_feed";

/// Listen for feed-head notifications on a connection of its own, calling `on_head`: first with
/// the head as read once listening (so nothing between a reconnection and the LISTEN is
/// missed), then with each notified head; on any failure wait a second and reconnect.
async fn watch_head_loop(
    cfg: tokio_postgres::Config,
    tls: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    on_head: crate::store::HeadWatcher,
) {
    loop {
        let r = match &tls {
            Some(t) => listen_once(&cfg, t.clone(), &on_head).await,
            None => listen_once(&cfg, NoTls, &on_head).await,
        };
        if let Err(e) = r {
            tracing::warn!(error = %e, "the feed-head watch lost the database; reconnecting");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
    on_head: &crate::store::HeadWatcher,
) -> Result<(), StoreError>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut conn) = cfg.connect(tls).await.map_err(connect_error)?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let pump = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                    if let Ok(h) = n.payload().parse::<u64>() {
                        if tx.send(h).is_err() {
                            return Ok(());
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(pg(e)),
                None => return Ok(()),
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {FEED_CHANNEL}"))
        .await
        .map_err(pg)?;
    let row = client
        .query_one("SELECT head FROM feed_head WHERE id = 1", &[])
        .await
        .map_err(pg)?;
    on_head(u64_of(row.get(0)));
    while let Some(h) = rx.recv().await {
        on_head(h);
    }
    drop(client);
    pump.await
        .map_err(|e| StoreError::Pg(format!("feed-head watch: {e}")))?
        .and(Err(StoreError::Pg(
            "the feed-head watch connection closed".into(),
        )))
}

fn write_curs(tx: &Transaction<'_>, curs: &[(NhsNumber, CurDisk)]) -> Result<(), StoreError> {
    let nhs: Vec<String> = curs
        .iter()
        .map(|(n, _)| n.as_digits().to_string())
        .collect();
    let seq: Vec<i64> = curs.iter().map(|(_, c)| i64_of(c.seq)).collect();
    let version: Vec<i64> = curs.iter().map(|(_, c)| i64_of(c.version)).collect();
    let withdrawn: Vec<bool> = curs.iter().map(|(_, c)| c.withdrawn.is_some()).collect();
    let cur = curs
        .iter()
        .map(|(_, c)| encode(c))
        .collect::<Result<Vec<_>, _>>()?;
    let (district, practice, flagged, critical) = routing_columns(curs.iter().map(|(_, c)| c));
    block_on(tx.execute(
        "INSERT INTO patient_current (nhs, seq, version, withdrawn, cur, district, practice, flagged, critical)
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::bool[], $5::bytea[],
                              $6::text[], $7::text[], $8::bool[], $9::bool[])
         ON CONFLICT (nhs) DO UPDATE SET seq = EXCLUDED.seq, version = EXCLUDED.version,
             withdrawn = EXCLUDED.withdrawn, cur = EXCLUDED.cur, district = EXCLUDED.district,
             practice = EXCLUDED.practice, flagged = EXCLUDED.flagged, critical = EXCLUDED.critical",
        &[&nhs, &seq, &version, &withdrawn, &cur, &district, &practice, &flagged, &critical],
    ))
    .map_err(pg)?;
    Ok(())
}

/// The routing columns of `patient_current` (migration 6) for each current state.
#[allow(clippy::type_complexity)]
fn routing_columns<'a>(
    curs: impl Iterator<Item = &'a CurDisk>,
) -> (
    Vec<Option<String>>,
    Vec<Option<String>>,
    Vec<bool>,
    Vec<bool>,
) {
    let (mut d, mut p, mut f, mut c) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for cur in curs {
        d.push(
            cur.meta
                .postcode_district
                .as_ref()
                .map(|x| x.as_str().to_owned()),
        );
        p.push(cur.meta.gp_practice.as_ref().map(|x| x.as_str().to_owned()));
        f.push(cur.meta.flagged);
        c.push(cur.meta.critical);
    }
    (d, p, f, c)
}

/// Fill in the routing columns of rows written before migration 6 (or by an older hub), a few
/// thousand at a time; returns how many. Cohort queries read such rows anyway (and filter them
/// here), so this only makes them cheaper.
fn backfill_routing(c: &mut tokio_postgres::Client) -> Result<u64, StoreError> {
    let mut done = 0u64;
    loop {
        let rows = block_on(c.query(
            "SELECT nhs, cur FROM patient_current WHERE flagged IS NULL ORDER BY nhs LIMIT 5000",
            &[],
        ))
        .map_err(pg)?;
        if rows.is_empty() {
            return Ok(done);
        }
        let mut nhs = Vec::with_capacity(rows.len());
        let mut curs = Vec::with_capacity(rows.len());
        for r in &rows {
            nhs.push(r.get::<_, String>(0));
            curs.push(decode::<CurDisk>(b"m", r.get::<_, &[u8]>(1))?);
        }
        let (district, practice, flagged, critical) = routing_columns(curs.iter());
        block_on(c.execute(
            "UPDATE patient_current p SET district = u.d, practice = u.p, flagged = u.f, critical = u.c
             FROM unnest($1::text[], $2::text[], $3::text[], $4::bool[], $5::bool[]) AS u(nhs, d, p, f, c)
             WHERE p.nhs = u.nhs",
            &[&nhs, &district, &practice, &flagged, &critical],
        ))
        .map_err(pg)?;
        done += rows.len() as u64;
    }
}

fn write_feed(tx: &Transaction<'_>, feed: &[(u64, FeedDisk)]) -> Result<(), StoreError> {
    let seq: Vec<i64> = feed.iter().map(|(s, _)| i64_of(*s)).collect();
    let nhs: Vec<String> = feed
        .iter()
        .map(|(_, e)| e.nhs.as_digits().to_string())
        .collect();
    let version: Vec<i64> = feed.iter().map(|(_, e)| i64_of(e.version)).collect();
    let at: Vec<i64> = feed.iter().map(|(_, e)| e.at.0).collect();
    let entry = feed
        .iter()
        .map(|(_, e)| encode(e))
        .collect::<Result<Vec<_>, _>>()?;
    block_on(tx.execute(
        "INSERT INTO feed (seq, nhs, version, at, entry)
         SELECT * FROM unnest($1::int8[], $2::text[], $3::int8[], $4::int8[], $5::bytea[])",
        &[&seq, &nhs, &version, &at, &entry],
    ))
    .map_err(pg)?;
    Ok(())
}

/// A former (merged) number stands for its current record.
fn resolve(c: &impl GenericClient, nhs: &NhsNumber) -> Result<NhsNumber, StoreError> {
    Ok(match cur_of(c, nhs)? {
        Some(cur) if cur.withdrawn != Some(WithdrawReason::Merged) => *nhs,
        _ => follow_aliases(nhs, |at| alias_step_of(c, at))?.unwrap_or(*nhs),
    })
}

impl FeedStore for PgStore {
    fn head(&self) -> Result<u64, StoreError> {
        let c = self.conn()?;
        let row =
            block_on(c.query_one("SELECT head FROM feed_head WHERE id = 1", &[])).map_err(pg)?;
        Ok(u64_of(row.get(0)))
    }

    fn written_at(&self, seq: u64) -> Result<Option<UnixMillis>, StoreError> {
        let c = self.conn()?;
        let row = block_on(c.query_opt("SELECT at FROM feed WHERE seq = $1", &[&i64_of(seq)]))
            .map_err(pg)?;
        Ok(row.map(|r| UnixMillis(r.get(0))))
    }

    fn patient_count(&self) -> Result<u64, StoreError> {
        let c = self.conn()?;
        let row = block_on(c.query_one(
            "SELECT count(*) FROM patient_current WHERE NOT withdrawn",
            &[],
        ))
        .map_err(pg)?;
        Ok(u64_of(row.get(0)))
    }

    fn summary(&self, nhs: &NhsNumber) -> Result<Option<Summary>, StoreError> {
        let c = self.conn()?;
        summary_bytes_of(client(&c), nhs)?
            .map(|b| decode_summary(&b))
            .transpose()
    }

    fn alias(&self, nhs: &NhsNumber) -> Result<Option<NhsNumber>, StoreError> {
        let c = self.conn()?;
        follow_aliases(nhs, |at| alias_step_of(client(&c), at))
    }

    fn ingest_from(
        &self,
        lines: &mut dyn Iterator<Item = (u64, &str)>,
        now: UnixMillis,
        threads: usize,
        opts: &IngestOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<IngestReport, StoreError> {
        let mut report = ingest_lines(
            lines,
            now,
            threads,
            opts,
            progress,
            &mut |parsed, report| self.ingest_chunk(parsed, now, report),
        )?;
        report.head = self.head()?;
        Ok(report)
    }

    fn withdraw(
        &self,
        nhs: &NhsNumber,
        reason: WithdrawReason,
        now: UnixMillis,
    ) -> Result<Option<u64>, StoreError> {
        let mut c = self.conn()?;
        let tx = block_on(client_mut(&mut c).transaction()).map_err(pg)?;
        let (head, _) = Self::lock_head(&tx)?;
        let nhs = resolve(&tx, nhs)?;
        let cur = cur_of(&tx, &nhs)?.ok_or(StoreError::UnknownPatient)?;
        if cur.withdrawn.is_some() {
            return Ok(None);
        }
        let head = head + 1;
        let (entry, cur) = withdrawal(&nhs, cur, reason, now);
        let w = ChunkWrites {
            curs: vec![(nhs, CurDisk { seq: head, ..cur })],
            feed: vec![(head, entry)],
            head,
            ..ChunkWrites::default()
        };
        write_chunk(&tx, &w)?;
        block_on(tx.commit()).map_err(pg)?;
        Ok(Some(head))
    }

    fn compact(&self, now: UnixMillis, retention_ms: i64) -> Result<u64, StoreError> {
        let cutoff = now.plus_ms(-retention_ms);
        let mut c = self.conn()?;
        let tx = block_on(client_mut(&mut c).transaction()).map_err(pg)?;
        let (head, oldest) = Self::lock_head(&tx)?;
        let oldest = oldest.max(1);
        // The prefix older than the cutoff, at most 100,000 entries per call (as the sled store).
        let first_kept = block_on(tx.query_opt(
            "SELECT seq FROM feed WHERE seq >= $1 AND at >= $2 ORDER BY seq LIMIT 1",
            &[&i64_of(oldest), &cutoff.0],
        ))
        .map_err(pg)?
        .map_or(head + 1, |r| u64_of(r.get(0)));
        let new_oldest = first_kept.min(oldest + 100_000).min(head + 1).max(oldest);
        let removed = new_oldest - oldest;
        if removed > 0 {
            block_on(tx.execute("DELETE FROM feed WHERE seq < $1", &[&i64_of(new_oldest)]))
                .map_err(pg)?;
            block_on(tx.execute(
                "UPDATE feed_head SET oldest = $1 WHERE id = 1",
                &[&i64_of(new_oldest)],
            ))
            .map_err(pg)?;
        }
        block_on(tx.commit()).map_err(pg)?;
        Ok(removed)
    }

    fn device(&self, id: &DeviceId) -> Result<DeviceDisk, StoreError> {
        let c = self.conn()?;
        let row = block_on(c.query_opt("SELECT rec FROM device WHERE id = $1", &[&id.as_str()]))
            .map_err(pg)?;
        Ok(row
            .map(|r| decode(b"d", r.get::<_, &[u8]>(0)))
            .transpose()?
            .unwrap_or_default())
    }

    fn devices(&self) -> Result<Vec<(String, DeviceDisk)>, StoreError> {
        let c = self.conn()?;
        block_on(c.query("SELECT id, rec FROM device ORDER BY id", &[]))
            .map_err(pg)?
            .iter()
            .map(|r| Ok((r.get::<_, String>(0), decode(b"d", r.get::<_, &[u8]>(1))?)))
            .collect()
    }

    fn update_device_with(
        &self,
        id: &DeviceId,
        f: &mut dyn FnMut(&mut DeviceDisk),
    ) -> Result<DeviceDisk, StoreError> {
        let mut c = self.conn()?;
        let tx = block_on(client_mut(&mut c).transaction()).map_err(pg)?;
        block_on(tx.execute(
            "INSERT INTO device (id, rec) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING",
            &[&id.as_str(), &encode(&DeviceDisk::default())?],
        ))
        .map_err(pg)?;
        let row = block_on(tx.query_one(
            "SELECT rec FROM device WHERE id = $1 FOR UPDATE",
            &[&id.as_str()],
        ))
        .map_err(pg)?;
        let mut d: DeviceDisk = decode(b"d", row.get::<_, &[u8]>(0))?;
        f(&mut d);
        block_on(tx.execute(
            "UPDATE device SET rec = $2 WHERE id = $1",
            &[&id.as_str(), &encode(&d)?],
        ))
        .map_err(pg)?;
        block_on(tx.commit()).map_err(pg)?;
        Ok(d)
    }

    /// Every commit is durable already (synchronous_commit).
    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn commit_parsed(
        &self,
        chunk: crate::store::ParsedChunk,
        now: UnixMillis,
        report: &mut IngestReport,
    ) -> Result<(), StoreError> {
        self.ingest_chunk(chunk.into_parsed(), now, report)?;
        report.head = FeedStore::head(self)?;
        Ok(())
    }

    fn watch_head(&self, on_head: crate::store::HeadWatcher) -> Result<(), StoreError> {
        let Some(rt) = self.rt.handle() else {
            return Err(StoreError::Pg("the store is closed".into()));
        };
        rt.spawn(watch_head_loop(self.cfg.clone(), self.tls.clone(), on_head));
        Ok(())
    }
}

impl PgStore {
    /// Every live patient in NHS order, filtered here (the `all` cohort, where an index
    /// would not narrow anything).
    fn current_metas_scan(
        &self,
        filter: &CohortFilter<'_>,
        after: Option<&NhsNumber>,
        limit: usize,
    ) -> Result<Vec<CurrentMeta>, FeedError> {
        let c = self.conn()?;
        let mut from = after.map(|a| a.as_digits().to_string()).unwrap_or_default();
        let page = i64_of(limit.max(1_000) as u64);
        let mut out = Vec::new();
        loop {
            let rows = block_on(c.query(
                "SELECT nhs, cur FROM patient_current WHERE NOT withdrawn AND nhs > $1
                 ORDER BY nhs LIMIT $2",
                &[&from, &page],
            ))
            .map_err(pg)?;
            let Some(last) = rows.last() else {
                return Ok(out);
            };
            from = last.get::<_, String>(0);
            let full = rows.len() as i64 == page;
            for r in &rows {
                let cur: CurDisk = decode(b"m", r.get::<_, &[u8]>(1))?;
                if filter.matches(&cur.meta) {
                    out.push(CurrentMeta {
                        seq: cur.seq,
                        version: cur.version,
                        meta: cur.meta,
                    });
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if !full {
                return Ok(out);
            }
        }
    }
}

impl HubFeed for PgStore {
    fn head_seq(&self) -> Result<u64, FeedError> {
        Ok(FeedStore::head(self)?)
    }

    fn oldest_retained_seq(&self) -> Result<u64, FeedError> {
        let c = self.conn()?;
        let row = block_on(c.query_one("SELECT head, oldest FROM feed_head WHERE id = 1", &[]))
            .map_err(pg)?;
        let (head, oldest) = (u64_of(row.get(0)), u64_of(row.get(1)));
        Ok(oldest.max(1).min(head + 1))
    }

    fn changes_after(&self, after_seq: u64, limit: usize) -> Result<Vec<FeedEntry>, FeedError> {
        let c = self.conn()?;
        let rows = block_on(c.query(
            "SELECT seq, entry FROM feed WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&i64_of(after_seq), &i64_of(limit as u64)],
        ))
        .map_err(pg)?;
        let mut out = Vec::with_capacity(rows.len());
        for r in rows {
            let e: FeedDisk = decode(b"f", r.get::<_, &[u8]>(1))?;
            out.push(feed_entry(u64_of(r.get(0)), e)?);
        }
        Ok(out)
    }

    /// Each element of the cohort (a district, a practice, `flagged`) is one ordered range
    /// scan of its index (migration 6), merged in NHS order; so a unit reads its cohort, not
    /// the hub's every patient. Rows without routing columns (written before migration 6) are
    /// read too and filtered here, as is everything (a second check).
    fn current_metas(
        &self,
        filter: &CohortFilter<'_>,
        after: Option<&NhsNumber>,
        limit: usize,
    ) -> Result<Vec<CurrentMeta>, FeedError> {
        if filter.specs.iter().any(|s| matches!(s, CohortSpec::All)) {
            return self.current_metas_scan(filter, after, limit);
        }
        let mut districts: Vec<String> = Vec::new();
        let mut practices: Vec<String> = Vec::new();
        let mut flagged = false;
        for s in filter.specs {
            match s {
                CohortSpec::All => {}
                CohortSpec::Flagged => flagged = true,
                CohortSpec::Postcode(v) => {
                    districts.extend(v.iter().map(|d| d.as_str().to_owned()))
                }
                CohortSpec::Practice(v) => {
                    practices.extend(v.iter().map(|p| p.as_str().to_owned()))
                }
            }
        }
        let c = self.conn()?;
        let mut from = after.map(|a| a.as_digits().to_string()).unwrap_or_default();
        let page = i64_of(limit.max(1) as u64);
        let mut out = Vec::with_capacity(limit.min(4096));
        // Rows of another cohort come back only when unrouted (written before migration 6):
        // a page short only because of them is read on from its last row.
        loop {
            let rows = block_on(client(&c).query(
                "SELECT DISTINCT ON (x.nhs) x.nhs, x.cur FROM (
                     SELECT l.nhs, l.cur FROM unnest($1::text[]) AS d(v), LATERAL (
                         SELECT nhs, cur FROM patient_current
                         WHERE district = d.v AND NOT withdrawn AND nhs > $3 AND ($5 = false OR critical)
                         ORDER BY nhs LIMIT $4) l
                     UNION ALL
                     SELECT l.nhs, l.cur FROM unnest($2::text[]) AS p(v), LATERAL (
                         SELECT nhs, cur FROM patient_current
                         WHERE practice = p.v AND NOT withdrawn AND nhs > $3 AND ($5 = false OR critical)
                         ORDER BY nhs LIMIT $4) l
                     UNION ALL
                     (SELECT nhs, cur FROM patient_current
                      WHERE $6 AND flagged AND NOT withdrawn AND nhs > $3 AND ($5 = false OR critical)
                      ORDER BY nhs LIMIT $4)
                     UNION ALL
                     (SELECT nhs, cur FROM patient_current
                      WHERE flagged IS NULL AND NOT withdrawn AND nhs > $3
                      ORDER BY nhs LIMIT $4)
                 ) x ORDER BY x.nhs LIMIT $4",
                &[&districts, &practices, &from, &page, &filter.critical_only, &flagged],
            ))
            .map_err(pg)?;
            for r in &rows {
                let cur: CurDisk = decode(b"m", r.get::<_, &[u8]>(1))?;
                if filter.matches(&cur.meta) && out.len() < limit {
                    out.push(CurrentMeta {
                        seq: cur.seq,
                        version: cur.version,
                        meta: cur.meta,
                    });
                }
            }
            match rows.last() {
                Some(last) if rows.len() as i64 == page && out.len() < limit => {
                    from = last.get::<_, String>(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// A former (superseded or merged) NHS number answers its current record.
    fn get(&self, nhs: &NhsNumber) -> Result<Option<CurrentRecord>, FeedError> {
        let c = self.conn()?;
        let c = client(&c);
        Ok(current_record(
            nhs,
            |n| cur_of(c, n),
            |n| follow_aliases(n, |at| alias_step_of(c, at)),
            |n| summary_bytes_of(c, n),
        )?)
    }

    /// One round trip for the lot (a baseline reads dozens at a time); a number that is not a
    /// current record of its own (merged, or a former number) is read alone, as by `get`.
    fn get_many(&self, nhs: &[NhsNumber]) -> Result<Vec<Option<CurrentRecord>>, FeedError> {
        if nhs.is_empty() {
            return Ok(Vec::new());
        }
        let digits: Vec<String> = nhs.iter().map(|n| n.as_digits().to_string()).collect();
        let rows = {
            let c = self.conn()?;
            block_on(client(&c).query(
                "SELECT c.nhs, c.cur, s.body FROM patient_current c                  LEFT JOIN patient_summary s ON s.nhs = c.nhs WHERE c.nhs = ANY($1)",
                &[&digits],
            ))
            .map_err(pg)?
        };
        let mut found: HashMap<String, (CurDisk, Option<Vec<u8>>)> = HashMap::new();
        for r in &rows {
            let cur: CurDisk = decode(b"m", r.get::<_, &[u8]>(1))?;
            found.insert(r.get(0), (cur, r.get(2)));
        }
        let mut out = Vec::with_capacity(nhs.len());
        for (n, d) in nhs.iter().zip(&digits) {
            match found.remove(d) {
                Some((cur, body)) if cur.withdrawn != Some(WithdrawReason::Merged) => {
                    out.push(current_record(
                        n,
                        |_| Ok(Some(cur.clone())),
                        |_| Ok(None),
                        |_| Ok(body),
                    )?);
                }
                _ => out.push(self.get(n)?),
            }
        }
        Ok(out)
    }
}
