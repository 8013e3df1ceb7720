//! The LAN HTTP API the crew's tablets and the triage kiosk call, on the unit's `lan` address:
//! HTTPS with the unit's LAN certificate from its bundle; plain HTTP only when `edge.toml`
//! says `tls = false` and the address is loopback (the demo, tests).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use edge_runtime::config::UnitConfig;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::{debug, warn};

use crate::cache::Cache;
use crate::status::Status;
use crate::sync::Fetcher;

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub cache: Arc<Cache>,
    pub status: Arc<Status>,
    pub fetcher: Fetcher,
    pub config: Arc<UnitConfig>,
    /// The hub's shift-token verification key (from the bundle).
    pub token_key: Arc<[u8; 32]>,
    /// Where every access is recorded before it is answered.
    pub audit: crate::access::Auditor,
    /// What the supervisor board link reports.
    pub supervisor: crate::supervisor::SupervisorStatusCell,
    /// Power is failing: no new accesses (each would need a journal write).
    pub writes_stopped: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A JSON error body: `{"error": code, "message": text}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

/// The router.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(page_index))
        .route("/app.js", get(page_js))
        .route("/style.css", get(page_css))
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics))
        .route("/v1/patients/{nhs}", get(crate::access::patient))
        .route("/v1/patients/", get(crate::access::patient_empty))
        .route("/fhir/Patient/$summary", get(crate::access::fhir_summary))
        .route("/v1/search", get(crate::access::search))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}

/// The kiosk / tablet page: static files compiled into the binary (no CDN, no network).
async fn page_index() -> Response {
    static_file(
        "text/html; charset=utf-8",
        include_str!("../static/index.html"),
    )
}

async fn page_js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("../static/app.js"),
    )
}

async fn page_css() -> Response {
    static_file(
        "text/css; charset=utf-8",
        include_str!("../static/style.css"),
    )
}

fn static_file(kind: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

async fn status(State(s): State<AppState>) -> Response {
    let mut v = s.status.view(s.cache.len());
    if v.last_sync_at.is_none() {
        v.last_sync_at = s.cache.meta().last_sync_at.map(|t| t.to_rfc3339());
    }
    if v.cache_as_of.is_none() {
        v.cache_as_of = s.cache.meta().cache_as_of.map(|t| t.to_rfc3339());
    }
    let mut body = serde_json::to_value(&v).unwrap_or_default();
    if let serde_json::Value::Object(m) = &mut body {
        m.insert(
            "supervisor".into(),
            serde_json::to_value(s.supervisor.get()).unwrap_or_default(),
        );
        m.insert("shredded".into(), json!(s.cache.is_shredded()));
    }
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let l = s.status.live();
    let body = format!(
        "# HELP kerbside_records Critical summaries held in the cohort cache.\n\
         # TYPE kerbside_records gauge\nkerbside_records {}\n\
         # HELP kerbside_link_up 1 when the sync link to the hub is up.\n\
         # TYPE kerbside_link_up gauge\nkerbside_link_up {}\n\
         # HELP kerbside_sync_cursor The last hub feed sequence number applied.\n\
         # TYPE kerbside_sync_cursor gauge\nkerbside_sync_cursor {}\n\
         # HELP kerbside_sync_connects_total Connections made to the hub.\n\
         # TYPE kerbside_sync_connects_total counter\nkerbside_sync_connects_total {}\n\
         # HELP kerbside_sync_stalls_total Connections closed by the stall watchdog.\n\
         # TYPE kerbside_sync_stalls_total counter\nkerbside_sync_stalls_total {}\n\
         # HELP kerbside_sync_batches_total Sync batches applied.\n\
         # TYPE kerbside_sync_batches_total counter\nkerbside_sync_batches_total {}\n\
         # HELP kerbside_sync_records_total Records received from the hub.\n\
         # TYPE kerbside_sync_records_total counter\nkerbside_sync_records_total {}\n\
         # HELP kerbside_audit_pending Audit events not yet acknowledged by the hub.\n\
         # TYPE kerbside_audit_pending gauge\nkerbside_audit_pending {}\n",
        s.cache.len(),
        u8::from(l.link == crate::status::Link::Up),
        l.cursor,
        l.connects,
        l.link_stalls,
        l.batches_applied,
        l.records_received,
        l.audit_pending,
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// Bind the LAN listener (so the caller knows at once if the address is taken).
pub async fn bind(config: &UnitConfig) -> anyhow::Result<TcpListener> {
    let addr: SocketAddr = config
        .lan
        .listen
        .socket_addr()
        .context("the LAN address must be an IP:PORT")?;
    if !config.lan.tls && !addr.ip().is_loopback() {
        anyhow::bail!(
            "edge.toml: lan: tls = false is only allowed on a loopback address ({addr} is not): tablets must use HTTPS"
        );
    }
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen for tablets on {addr}"))
}

/// Serve the API on `listener` until the process ends.
pub async fn serve(listener: TcpListener, app: Router, config: &UnitConfig) -> anyhow::Result<()> {
    if !config.lan.tls {
        axum::serve(listener, app).await.context("LAN API")?;
        return Ok(());
    }
    let tls = edge_runtime::tls::lan_server_config(config)
        .context("cannot build the LAN TLS config from the unit's bundle")?;
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "LAN accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "LAN TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let svc = TowerToHyperService::new(app);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                debug!(%peer, error = %e, "LAN connection ended");
            }
        });
    }
}
