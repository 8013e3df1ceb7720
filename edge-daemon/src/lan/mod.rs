//! The LAN HTTP API the crew's tablets and the triage kiosk call, on the unit's `lan` address:
//! HTTPS with the unit's LAN certificate from its bundle; plain HTTP only when `edge.toml`
//! says `tls = false` and the address is loopback (the demo, tests).
//!
//! Patient access — lookup, FHIR `$summary`, search — with shift-token authentication, roles,
//! break-glass, freshness, on-demand fetch, and an audit event recorded (fsync'd in the
//! journal) **before** every answer, found, not found or refused.
//!
//! | module | what |
//! | --- | --- |
//! | [`policy`] | the access policy: token cache, request budget, bulk-browse window (pure, clock passed in) |
//! | [`auth`] | the caller: shift token, purpose of use, break-glass reason, incident |
//! | [`refusal`] | every refusal as one enum: status, code, message, audit reason and outcome |
//! | [`audit`] | [`Auditor`]: record, then answer (`answer`, `refuse`) |
//! | `lookup` | `GET /v1/patients/{nhs}` and `GET /fhir/Patient/$summary` |
//! | `find` | `GET /v1/search` |
//! | [`metrics`] | `/metrics` (prometheus-client) and the request-tracking layer |
//! | `serve` | the listener: HTTPS (rustls) or loopback HTTP |

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use edge_runtime::clock::SharedClock;
use edge_runtime::config::UnitConfig;
use serde_json::json;

use crate::cache::Cache;
use crate::status::Status;
use crate::sync::Fetcher;

pub mod audit;
pub mod auth;
mod convey;
mod find;
mod lookup;
pub mod metrics;
pub mod policy;
pub mod refusal;
mod serve;

pub use audit::{Access, Auditor};
pub use auth::{break_glass_reason, MAX_REASON_CHARS};
pub use find::query_pairs;
pub use metrics::Metrics;
pub use policy::AccessPolicy;
pub use refusal::Refusal;
pub use serve::{bind, serve};

/// What every handler shares: one `Arc`, so the clones axum makes for every request (each
/// middleware layer and the handler) are one reference count each, not a copy of every field
/// (a profile of the closed-loop lookup had the field-by-field clone and drop at 1.4 % of the
/// daemon's CPU).
#[derive(Debug, Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The fields of [`AppState`].
#[derive(Debug)]
pub struct Shared {
    pub cache: Arc<Cache>,
    pub status: Arc<Status>,
    pub fetcher: Fetcher,
    pub config: Arc<UnitConfig>,
    /// The unit's clock (wall time for freshness and expiry).
    pub clock: SharedClock,
    /// Who may ask, how fast, how many patients (verifies shift tokens with the hub's key).
    pub policy: Arc<AccessPolicy>,
    /// Where every access is recorded before it is answered.
    pub audit: Auditor,
    /// What `/metrics` reports.
    pub metrics: Arc<Metrics>,
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
    let tracked = state.metrics.clone();
    Router::new()
        .route("/", get(page_index))
        .route("/app.js", get(page_js))
        .route("/style.css", get(page_css))
        .route("/healthz", get(healthz))
        .route("/v1/status", get(status))
        .route("/metrics", get(metrics::metrics))
        .route("/v1/patients/{nhs}", get(lookup::patient))
        .route("/v1/patients/", get(lookup::patient_empty))
        .route(
            "/v1/patients/{nhs}/conveying",
            axum::routing::post(convey::conveying),
        )
        .route("/fhir/Patient/$summary", get(lookup::fhir_summary))
        .route("/v1/search", get(find::search))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            per_client_slot,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            tracked,
            metrics::track,
        ))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .with_state(state)
}

/// `GET /healthz`: `ok`, or `degraded: …` (still 200: the unit answers) when the audit
/// journal is into the reserve kept for authenticated accesses, or the unit's certificate
/// expires within a day (it renews over the sync; a unit that cannot reach the hub before
/// expiry must be renewed by hand).
async fn healthz(State(s): State<AppState>) -> String {
    let mut problems = Vec::new();
    if s.audit.in_reserve() {
        problems.push("the audit journal is near its disk budget (uploads are behind); accesses are still answered".to_owned());
    }
    if let Some(t) = s.status.live().cert_not_after {
        let left = t.0 - s.clock.wall().0;
        if left < CERT_WARN_MS {
            problems.push(if left <= 0 {
                format!("the unit's certificate expired at {}: it cannot sync until renewed (`edge-provision renew`)", t.to_rfc3339())
            } else {
                format!("the unit's certificate expires at {}; it renews over the sync once the hub is reachable", t.to_rfc3339())
            });
        }
    }
    if problems.is_empty() {
        "ok".to_owned()
    } else {
        format!("degraded: {}", problems.join("; "))
    }
}

/// `/healthz` says `degraded` when the certificate has less than this left.
const CERT_WARN_MS: i64 = edge_proto::time::UnixMillis::DAY;

/// At most `[lan] max_requests_per_client` requests in flight per client address (429 past
/// it); requests without a known client (in-process tests) are not limited here.
async fn per_client_slot(
    State(s): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let client = req
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|c| c.0.ip());
    let _slot = match client {
        None => None,
        Some(ip) => match s.policy.slot(ip) {
            Some(slot) => Some(slot),
            None => return Refusal::TooManyInFlight.response(s.status.link()),
        },
    };
    next.run(req).await
}

/// Record the refusals without a token counted since each client's last aggregate event (a
/// burst that stopped is still recorded), once a minute, until the process ends.
pub async fn flush_preauth(s: AppState) {
    let mut tick =
        tokio::time::interval(std::time::Duration::from_millis(policy::PREAUTH_WINDOW_MS));
    loop {
        tick.tick().await;
        for (ip, count) in s.policy.drain_preauth() {
            if s.audit.in_reserve() {
                s.metrics.unrecorded_refusals(count);
                continue;
            }
            let mut a = Access::new(edge_proto::audit::AuditAction::Read, "lan");
            a.client = Some(ip.to_string());
            a.data.refusals = Some(count);
            a.outcome = edge_proto::audit::AuditOutcome::Denied;
            a.reason = Some("no_valid_token");
            if let Err(e) = s.audit.record(&a).await {
                tracing::warn!(error = %e, "cannot record refusals without a token");
            }
        }
    }
}

/// The kiosk / tablet page: static files compiled into the binary (no CDN, no network).
async fn page_index() -> Response {
    static_file(
        "text/html; charset=utf-8",
        include_str!("../../static/index.html"),
    )
}

async fn page_js() -> Response {
    static_file(
        "text/javascript; charset=utf-8",
        include_str!("../../static/app.js"),
    )
}

async fn page_css() -> Response {
    static_file(
        "text/css; charset=utf-8",
        include_str!("../../static/style.css"),
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
    let mut v = s.status.view(s.cache.len(), s.cache.free_bytes());
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
