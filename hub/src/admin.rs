//! The hub's admin HTTP API (JSON), on the `admin` address of `hub.toml`.
//!
//! Plain HTTP is served only on a loopback address; elsewhere the hub refuses to start the
//! admin API until HTTPS with operator certificates is configured (see docs/hub.md).
//!
//! `GET /metrics` on the same listener is the hub's Prometheus / OpenMetrics exposition
//! ([`crate::metrics`]); every routed request is counted there by route and status.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edge_proto::ids::{CohortSpec, DeviceId};
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::WithdrawReason;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::server::{device_rows, now, Hub};
use crate::store::StoreError;

/// The most an ingest request may carry.
pub const MAX_INGEST_BYTES: usize = 512 * 1024 * 1024;

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": code, "message": message.into()})),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    warn!(error = %e, "admin request failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the hub could not complete the request; see its log",
    )
}

/// The admin router.
pub fn router(hub: Arc<Hub>) -> Router {
    let tracked = axum::middleware::from_fn_with_state(hub.clone(), crate::metrics::track);
    Router::new()
        .route("/admin/ingest", post(ingest))
        .route("/admin/devices", get(devices))
        .route("/admin/objection", post(objection))
        .route("/admin/cohort", post(cohort))
        .route("/admin/audit", get(audit_query))
        .route("/admin/audit/verify", get(audit_verify))
        .route("/admin/audit/export", get(audit_export))
        .route("/admin/alerts", get(alerts))
        .route("/admin/wipe", post(wipe))
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(crate::metrics::scrape))
        .route_layer(tracked)
        .layer(DefaultBodyLimit::max(MAX_INGEST_BYTES))
        .with_state(hub)
}

/// Split a request body or file into bundles: NDJSON (one bundle per line) or one JSON bundle
/// spread over many lines. Returns (line number, text).
pub fn bundles(text: &str) -> Vec<(u64, &str)> {
    let first = text.lines().find(|l| !l.trim().is_empty());
    let ndjson = first.is_some_and(|l| serde_json::from_str::<serde::de::IgnoredAny>(l).is_ok());
    if ndjson || first.is_none() {
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| (i as u64 + 1, l))
            .collect()
    } else {
        vec![(1, text)]
    }
}

/// `?feed=NAME&source=ODS&snapshot=true` of `POST /admin/ingest`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestQuery {
    pub feed: Option<String>,
    pub source: Option<String>,
    pub snapshot: Option<bool>,
}

/// The ingest options of a feed: the named `[[feeds]]` entry of hub.toml, then `source` and
/// `snapshot` given with the request (which win).
pub fn feed_options(
    cfg: &edge_runtime::HubConfig,
    q: &IngestQuery,
) -> Result<edge_proto::fhir::ingest::IngestOptions, String> {
    let mut opts = edge_proto::fhir::ingest::IngestOptions::default();
    if let Some(name) = &q.feed {
        let f = cfg.feeds.iter().find(|f| &f.name == name).ok_or_else(|| {
            let known: Vec<&str> = cfg.feeds.iter().map(|f| f.name.as_str()).collect();
            format!(
                "no feed named {name:?} in {} (feeds: {})",
                cfg.file.display(),
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            )
        })?;
        opts.snapshot = f.snapshot;
        if let Some(s) = &f.source {
            opts.default_source = Some(
                edge_proto::ids::SourceId::parse(s).map_err(|e| format!("feed {name:?}: {e}"))?,
            );
        }
    }
    if let Some(s) = &q.source {
        opts.default_source =
            Some(edge_proto::ids::SourceId::parse(s).map_err(|e| format!("source: {e}"))?);
    }
    if let Some(b) = q.snapshot {
        opts.snapshot = b;
    }
    Ok(opts)
}

async fn ingest(
    State(hub): State<Arc<Hub>>,
    q: Result<Query<IngestQuery>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Response {
    let q = match q {
        Ok(Query(q)) => q,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the query takes feed=NAME, source=ODS and snapshot=true|false: {e}"),
            )
        }
    };
    let opts = match feed_options(&hub.config, &q) {
        Ok(o) => o,
        Err(why) => return error(StatusCode::BAD_REQUEST, "bad_request", why),
    };
    let text = match std::str::from_utf8(&body) {
        Ok(t) => t.to_owned(),
        Err(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "not_utf8",
                "the body must be FHIR R4 JSON or NDJSON (UTF-8)",
            )
        }
    };
    let store = hub.store.clone();
    let r = tokio::task::spawn_blocking(move || {
        let lines = bundles(&text);
        store.ingest(lines, now(), 2, &opts, &mut |_, _| {})
    })
    .await;
    match r {
        Ok(Ok(report)) => {
            info!(
                accepted = report.accepted,
                rejected = report.rejected.len(),
                warnings = report.warnings_total,
                changed = report.changed,
                "ingest over the admin API"
            );
            hub.metrics.ingest(&report);
            hub.notify_head();
            Json(
                json!({"accepted": report.accepted, "rejected": report.rejected,
                "warnings": report.warnings, "warnings_total": report.warnings_total,
                "changed": report.changed, "head": report.head}),
            )
            .into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

async fn devices(State(hub): State<Arc<Hub>>) -> Response {
    match device_rows(&hub) {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct ObjectionReq {
    nhs_number: String,
}

async fn objection(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let req: ObjectionReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"nhs_number\": \"…\"}}: {e}"),
            )
        }
    };
    let nhs = match NhsNumber::parse(&req.nhs_number) {
        Ok(n) => n,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_nhs_number", e.to_string()),
    };
    let store = hub.store.clone();
    let r =
        tokio::task::spawn_blocking(move || store.withdraw(&nhs, WithdrawReason::Objection, now()))
            .await;
    match r {
        Ok(Ok(seq)) => {
            info!("objection recorded: summary withdrawn from every unit");
            hub.notify_head();
            Json(json!({"withdrawn": true, "seq": seq, "already": seq.is_none()})).into_response()
        }
        Ok(Err(StoreError::UnknownPatient)) => error(
            StatusCode::NOT_FOUND,
            "unknown_patient",
            "the hub holds no summary for that NHS number",
        ),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct CohortReq {
    device_id: String,
    cohort: Vec<String>,
}

async fn cohort(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let req: CohortReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!(
                    "expected {{\"device_id\": \"…\", \"cohort\": [\"postcode:SE1\", …]}}: {e}"
                ),
            )
        }
    };
    let id = match DeviceId::parse(&req.device_id) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_device_id", e.to_string()),
    };
    let mut specs = Vec::new();
    for s in &req.cohort {
        match CohortSpec::parse(s) {
            Ok(c) => specs.push(c),
            Err(e) => return error(StatusCode::BAD_REQUEST, "bad_cohort", format!("{s:?}: {e}")),
        }
    }
    if specs.is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_cohort",
            "a cohort needs at least one spec (all, postcode:…, practice:…, flagged)",
        );
    }
    match hub.set_cohort(&id, specs) {
        Ok(()) => Json(json!({"device_id": id.as_str(), "cohort": req.cohort})).into_response(),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct AuditQuery {
    patient: Option<String>,
    staff: Option<String>,
    limit: Option<usize>,
}

async fn audit_query(State(hub): State<Arc<Hub>>, Query(q): Query<AuditQuery>) -> Response {
    let limit = q.limit.unwrap_or(10_000).clamp(1, 100_000);
    let (kind, who) = match (&q.patient, &q.staff) {
        (Some(p), None) => match crate::audit::parse_patient(p) {
            Some(n) => (b'p', n.as_digits()),
            None => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_nhs_number",
                    "patient= must be a valid NHS number",
                )
            }
        },
        (None, Some(s)) if !s.is_empty() && s.len() <= 64 => (b's', s.clone()),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "give exactly one of patient=NHS or staff=SDSID",
            )
        }
    };
    // Every admin audit query is itself logged (the patient or staff id only at debug level).
    info!(by = "admin (loopback)", kind = %(kind as char), "audit trail queried");
    tracing::debug!(who = %who, "audit trail queried for");
    let repo = hub.audit.clone();
    match tokio::task::spawn_blocking(move || repo.query(kind, &who, limit)).await {
        Ok(Ok(events)) => {
            let events: Vec<serde_json::Value> =
                events.iter().map(crate::audit::event_json).collect();
            Json(json!({"events": events})).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct VerifyQuery {
    device: String,
}

async fn audit_verify(State(hub): State<Arc<Hub>>, Query(q): Query<VerifyQuery>) -> Response {
    if DeviceId::parse(&q.device).is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_device_id",
            "device= must be a device id",
        );
    }
    info!(device = %q.device, "audit chain verification requested");
    let repo = hub.audit.clone();
    match tokio::task::spawn_blocking(move || repo.verify(&q.device)).await {
        Ok(Ok(v)) => Json(v).into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct ExportQuery {
    since: Option<String>,
}

async fn audit_export(State(hub): State<Arc<Hub>>, Query(q): Query<ExportQuery>) -> Response {
    let since = match q.since.as_deref() {
        None => edge_proto::time::UnixMillis(0),
        Some(s) => match edge_proto::time::UnixMillis::parse_rfc3339(s) {
            Ok(t) => t,
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_since",
                    "since= must be an RFC 3339 time, e.g. 2026-11-27T00:00:00Z",
                )
            }
        },
    };
    info!("audit export requested");
    let repo = hub.audit.clone();
    match tokio::task::spawn_blocking(move || repo.since(since, 1_000_000)).await {
        Ok(Ok(events)) => {
            let mut body = String::new();
            for e in &events {
                body.push_str(&crate::audit::event_fhir(e).to_string());
                body.push('\n');
            }
            (
                [(axum::http::header::CONTENT_TYPE, "application/fhir+ndjson")],
                body,
            )
                .into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

/// `GET /admin/alerts`: break-glass accesses and security alerts (bulk browsing) from every
/// unit, newest first, for the privacy officer's review.
async fn alerts(State(hub): State<Arc<Hub>>) -> Response {
    use edge_proto::audit::AuditAction;
    info!("alert review list requested");
    let repo = hub.audit.clone();
    match tokio::task::spawn_blocking(move || {
        repo.since(edge_proto::time::UnixMillis(0), usize::MAX)
    })
    .await
    {
        Ok(Ok(mut events)) => {
            events.retain(|e| matches!(e.action, AuditAction::BreakGlass | AuditAction::Alert));
            events.sort_by_key(|e| std::cmp::Reverse(e.recorded));
            events.truncate(10_000);
            let v: Vec<serde_json::Value> = events.iter().map(crate::audit::event_json).collect();
            Json(json!({"alerts": v})).into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct WipeReq {
    device_id: String,
    #[serde(default)]
    cancel: bool,
}

/// `POST /admin/wipe {"device_id", "cancel"?}`: order a unit to destroy its cache's data key at
/// its next connection (stolen or decommissioned); its pending audit events still upload.
async fn wipe(State(hub): State<Arc<Hub>>, body: Bytes) -> Response {
    let req: WipeReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"device_id\": \"…\"}}: {e}"),
            )
        }
    };
    let id = match DeviceId::parse(&req.device_id) {
        Ok(i) => i,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_device_id", e.to_string()),
    };
    // A mistyped id must not order a wipe of nothing, or create a phantom device: the unit
    // must be in the fleet inventory or already known to this hub.
    let in_inventory = hub
        .inventory()
        .is_some_and(|inv| inv.units.iter().any(|u| u.device_id == id));
    let seen = match hub.store.devices() {
        Ok(d) => d.iter().any(|(k, _)| k == id.as_str()),
        Err(e) => return internal(e),
    };
    if !in_inventory && !seen {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_device",
            "no unit with that device id is enrolled in this fleet or known to this hub; check the id (GET /admin/devices lists them)",
        );
    }
    warn!(device = %id, cancel = req.cancel, "remote wipe ordered");
    match hub.order_wipe(&id, req.cancel) {
        Ok(()) => {
            Json(json!({"device_id": id.as_str(), "wipe_ordered": !req.cancel})).into_response()
        }
        Err(e) => internal(e),
    }
}
