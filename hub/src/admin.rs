//! The hub's admin HTTP API (JSON), on the `admin` address of `hub.toml`.
//!
//! Plain HTTP is served only on a loopback address; elsewhere the hub refuses to start the
//! admin API until HTTPS with operator certificates is configured (see docs/hub.md).
//!
//! Every admin call (all routes but `/healthz` and `/metrics`) carries
//! `Authorization: Bearer <operator token>` and passes the checks of [`crate::operator`]
//! (Host and Origin, token, deny list, role, body type), and is recorded with the operator's
//! identity in the operator log ([`crate::oplog`], `GET /admin/operator-log`), refusals included.
//!
//! `GET /metrics` on the same listener is the hub's Prometheus / OpenMetrics exposition
//! ([`crate::metrics`]); every routed
//! request is counted there by route and status.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRef, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use edge_proto::ids::{CohortSpec, DeviceId};
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::WithdrawReason;
use edge_proto::token::OperatorClaims;
use serde::Deserialize;
use serde_json::json;
use tracing::{info, warn};

use crate::operator::{AdminAuth, Refusal};
use crate::oplog::{OperatorLog, OperatorLogEntry};
use crate::server::{blocking, device_rows, now, Hub};
use crate::store::StoreError;

/// The most one `POST /admin/ingest` may carry (64 MiB). The body is read as it arrives and
/// refused with 413 `too_large` as soon as it passes this (or at once when its
/// `Content-Length` says so); bigger loads go through `edge-hub ingest` with the hub stopped,
/// or in several requests.
pub const MAX_INGEST_BYTES: usize = 64 * 1024 * 1024;

/// The most other POST bodies (objection, cohort, wipe) may carry (413 past it).
pub const MAX_JSON_BYTES: usize = 1024 * 1024;

/// Default and largest page of `GET /admin/alerts`, `/admin/audit` and `/admin/operator-log`.
pub const PAGE_DEFAULT: usize = 1_000;
/// See [`PAGE_DEFAULT`].
pub const PAGE_MAX: usize = 10_000;

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

fn refusal(r: &Refusal) -> Response {
    error(
        StatusCode::from_u16(r.status).unwrap_or(StatusCode::FORBIDDEN),
        r.code,
        r.message.clone(),
    )
}

/// What the admin handlers share: the hub, the operator checks and the operator log.
#[derive(Debug, Clone)]
pub struct AdminState {
    pub hub: Arc<Hub>,
    pub auth: Arc<AdminAuth>,
    pub log: Arc<OperatorLog>,
    /// The privacy officer's reviews of alerts.
    pub reviews: Arc<crate::review::Reviews>,
    /// The units' sampled history (lag, audit backlog, link) for the console.
    pub history: Arc<crate::history::History>,
}

impl FromRef<AdminState> for Arc<Hub> {
    fn from_ref(s: &AdminState) -> Arc<Hub> {
        s.hub.clone()
    }
}

impl AdminState {
    /// The admin state of `hub` with `auth` (see [`AdminAuth::load`]); opens the operator log.
    pub fn open(hub: Arc<Hub>, auth: Arc<AdminAuth>) -> Result<AdminState, StoreError> {
        let log = Arc::new(match &hub.shared {
            Some(pg) => OperatorLog::postgres(pg.clone()),
            None => OperatorLog::open(&hub.local)?,
        });
        let reviews = Arc::new(match &hub.shared {
            Some(pg) => crate::review::Reviews::Pg(pg.clone()),
            None => crate::review::Reviews::open(&hub.local)?,
        });
        let history = Arc::new(crate::history::History::of_hub(&hub)?);
        Ok(AdminState {
            hub,
            auth,
            log,
            reviews,
            history,
        })
    }
}

/// The admin router of `hub`, with the operator key and deny list its config names. Without
/// `[keys] operator_verify` (or when it cannot be read) every admin call is refused with 401;
/// `edge-hub serve` refuses to start in that case and builds its router with
/// [`admin_router`] and [`AdminAuth::load`] instead.
pub fn router(hub: Arc<Hub>) -> Router {
    let auth = match AdminAuth::load(&hub.config, hub.denylist.clone()) {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %format!("{e:#}"), "the admin API can identify no operator: every admin call is refused");
            AdminAuth::unconfigured(&hub.config)
        }
    };
    match AdminState::open(hub, Arc::new(auth)) {
        Ok(state) => admin_router(state),
        Err(e) => {
            warn!(error = %e, "cannot open the operator log: the admin API refuses every call");
            Router::new().fallback(|| async {
                error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "operator_log_unavailable",
                    "the hub cannot record admin calls; see its log",
                )
            })
        }
    }
}

/// The admin router over `state`.
pub fn admin_router(state: AdminState) -> Router {
    let tracked = axum::middleware::from_fn_with_state(state.hub.clone(), crate::metrics::track);
    let guarded = axum::middleware::from_fn_with_state(state.clone(), guard);
    let admin = Router::new()
        .route("/admin/ingest", post(ingest))
        .route("/admin/devices", get(devices))
        .route("/admin/objection", post(objection))
        .route("/admin/objection/status", get(objection_status))
        .route("/admin/cohort", post(cohort))
        .route("/admin/audit", get(audit_query))
        .route("/admin/audit/verify", get(audit_verify))
        .route("/admin/audit/export", get(audit_export))
        .route("/admin/alerts", get(alerts))
        .route("/admin/alerts/review", post(review_alert))
        .route("/admin/wipe", post(wipe))
        .route("/admin/operator-log", get(operator_log))
        .route("/admin/whoami", get(whoami))
        .route("/admin/feeds", get(feeds))
        .route("/admin/history", get(history))
        .route_layer(guarded);
    Router::new()
        .merge(admin)
        .merge(crate::console::router())
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(scrape))
        .route_layer(tracked)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_JSON_BYTES))
        .with_state(state)
}

/// `GET /metrics`: the hub's metrics, with the values read at scrape time (units connected,
/// feed head, whether the CRL is past its `nextUpdate`).
async fn scrape(State(st): State<AdminState>) -> Response {
    let head = st.hub.store.head().unwrap_or(0);
    let units = st.hub.units_connected();
    let body = st
        .hub
        .metrics
        .encode(units, head, st.auth.crl_status().expired);
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// The verified operator of a request (set by [`guard`] for the handlers).
#[derive(Debug, Clone)]
pub struct Operator(pub OperatorClaims);

/// Host/Origin, operator token, deny list, role and body type; then the handler; then the
/// operator log entry, written before the answer leaves.
async fn guard(State(st): State<AdminState>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let checked = check(&st, &method, &route, req.headers());
    let (resp, who, refused) = match checked {
        Ok(claims) => {
            req.extensions_mut().insert(Operator(claims.clone()));
            (next.run(req).await, Some(claims), None)
        }
        Err(refused) => {
            let (r, who) = *refused;
            warn!(route = %route, code = r.code, operator = who.as_ref().map(|c| c.operator_id.as_str()), "admin call refused");
            (refusal(&r), who, Some(r.code.to_owned()))
        }
    };
    let entry = OperatorLogEntry {
        at: now().to_rfc3339(),
        operator_id: who.as_ref().map(|c| c.operator_id.clone()),
        operator_name: who.as_ref().map(|c| c.operator_name.clone()),
        role: who.as_ref().map(|c| c.role.as_str().to_owned()),
        token_id: who.as_ref().map(|c| c.token_id.clone()),
        method,
        route,
        query,
        status: resp.status().as_u16(),
        refused,
        target: resp.extensions().get::<OpTarget>().map(|t| t.0.clone()),
    };
    let log = st.log.clone();
    match tokio::task::spawn_blocking(move || log.append(entry)).await {
        Ok(Ok(())) => resp,
        Ok(Err(e)) => {
            warn!(error = %e, "cannot record an admin call in the operator log");
            resp
        }
        Err(e) => {
            warn!(error = %e, "cannot record an admin call in the operator log");
            resp
        }
    }
}

type Checked = Result<OperatorClaims, Box<(Refusal, Option<OperatorClaims>)>>;

fn check(st: &AdminState, method: &str, route: &str, headers: &HeaderMap) -> Checked {
    let pairs: Vec<(&str, &[u8])> = headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_bytes()))
        .collect();
    let head = crate::operator::precheck(method, &pairs, st.auth.hosts())
        .map_err(|r| Box::new((r, None)))?;
    let claims = st
        .auth
        .authenticate(head.bearer, now())
        .map_err(|r| Box::new((r, None)))?;
    match crate::operator::required_role(route) {
        Some(role) if role == claims.role => Ok(claims),
        None if route == "/admin/whoami" => Ok(claims),
        need => Err(Box::new((
            Refusal {
                status: 403,
                code: "role",
                message: format!(
                    "{} needs the {} operator role; this token is {}",
                    route,
                    need.map_or("(no such)", |r| r.as_str()),
                    claims.role
                ),
            },
            Some(claims),
        ))),
    }
}

/// `limit` and `cursor` of a paginated list.
#[derive(Debug, Default, Deserialize)]
pub struct PageQuery {
    pub limit: Option<usize>,
    pub cursor: Option<String>,
}

/// The page size asked for: [`PAGE_DEFAULT`] unless given, at most [`PAGE_MAX`].
pub fn page_limit(limit: Option<usize>) -> usize {
    limit.unwrap_or(PAGE_DEFAULT).clamp(1, PAGE_MAX)
}

fn bad_cursor() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_cursor",
        "cursor= must be the next_cursor of the previous page of this same list",
    )
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
    op: Option<axum::Extension<Operator>>,
    q: Result<Query<IngestQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
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
    let feed_label = json!({"feed": q.feed, "source": q.source, "snapshot": q.snapshot});
    let opts = match feed_options(&hub.config, &q) {
        Ok(o) => o,
        Err(why) => return error(StatusCode::BAD_REQUEST, "bad_request", why),
    };
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!(
                "an ingest request carries at most {} MiB: split the feed, or use `edge-hub ingest` with the hub stopped",
                MAX_INGEST_BYTES / (1024 * 1024)
            ),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_INGEST_BYTES as u64) {
        return too_large();
    }
    // Read as it arrives, never past the limit.
    let body = match axum::body::to_bytes(body, MAX_INGEST_BYTES).await {
        Ok(b) => b,
        Err(e) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(s) = src {
                if s.is::<http_body_util::LengthLimitError>() {
                    return too_large();
                }
                src = s.source();
            }
            return error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("the request body could not be read: {e}"),
            );
        }
    };
    let text = match String::from_utf8(Vec::from(body)) {
        Ok(t) => t,
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
            let entry = crate::ingest_log::entry(
                now(),
                op.as_ref().map(|o| o.0 .0.operator_id.as_str()),
                "admin-api",
                &feed_label,
                &report,
            );
            let h = hub.clone();
            match blocking(move || h.ingest_log.record(&entry)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(error = %e, "cannot keep the ingest's report for the console"),
                Err(e) => warn!(error = %e, "cannot keep the ingest's report for the console"),
            }
            let h = hub.clone();
            let _ = blocking(move || h.notify_head()).await;
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

/// `GET /admin/feeds`: the latest ingests (admin API and offline, every hub on the store),
/// newest first, with the lines each rejected and warned about.
async fn feeds(State(hub): State<Arc<Hub>>) -> Response {
    let h = hub.clone();
    match blocking(move || h.ingest_log.latest(crate::server::RECENT_INGESTS)).await {
        Ok(Ok(ingests)) => Json(json!({"ingests": ingests, "scope": "the latest ingests into this hub's store, over the admin API or offline"}))
            .into_response(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct HistoryQuery {
    device: Option<String>,
    hours: Option<u32>,
}

/// `GET /admin/history[?device=ID][&hours=N]`: the last N hours (1-26, default 24) of sampled
/// history — one unit's samples with `device`, else the fleet's totals per sample time.
async fn history(
    State(st): State<AdminState>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "expected ?device=ID and/or ?hours=1..26",
        );
    };
    let hours = q.hours.unwrap_or(24);
    if !(1..=26).contains(&hours) {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "hours must be 1 to 26 (the hub keeps 26 hours)",
        );
    }
    if let Some(d) = &q.device {
        if let Err(e) = DeviceId::parse(d) {
            return error(StatusCode::BAD_REQUEST, "invalid_device_id", e.to_string());
        }
    }
    let since = crate::server::now().0 - i64::from(hours) * 3_600_000;
    let every_s = st.hub.config.sync.history_every_s;
    let h = st.history.clone();
    let device = q.device.clone();
    let at = |ms: i64| edge_proto::time::UnixMillis(ms).to_rfc3339();
    let body = match device {
        Some(d) => match blocking(move || h.since(Some(&d), since)).await {
            Ok(Ok(samples)) => json!({
                "device_id": q.device,
                "every_s": every_s,
                "since": at(since),
                "samples": samples.iter().map(|s| json!({
                    "at": at(s.at),
                    "lag": s.lag,
                    "behind_s": s.behind_s,
                    "audit_backlog": s.audit_backlog,
                    "records": s.records,
                    "connected": s.connected,
                })).collect::<Vec<_>>(),
            }),
            Ok(Err(e)) => return internal(e),
            Err(e) => return internal(e),
        },
        None => match blocking(move || h.fleet(since)).await {
            Ok(Ok(points)) => json!({
                "every_s": every_s,
                "since": at(since),
                "points": points.iter().map(|p| json!({
                    "at": at(p.at),
                    "units": p.units,
                    "connected": p.connected,
                    "behind": p.behind,
                    "max_lag": p.max_lag,
                    "audit_backlog": p.audit_backlog,
                })).collect::<Vec<_>>(),
            }),
            Ok(Err(e)) => return internal(e),
            Err(e) => return internal(e),
        },
    };
    Json(body).into_response()
}

/// `GET /admin/whoami`: the operator the token names, for any role (the console's sign-in).
async fn whoami(axum::Extension(Operator(c)): axum::Extension<Operator>) -> Response {
    Json(json!({
        "operator_id": c.operator_id,
        "operator_name": c.operator_name,
        "role": c.role.as_str(),
        "expires_at": c.expires_at.to_rfc3339(),
    }))
    .into_response()
}

async fn devices(State(hub): State<Arc<Hub>>) -> Response {
    match blocking(move || device_rows(&hub)).await {
        Ok(Ok(rows)) => Json(rows).into_response(),
        Ok(Err(e)) | Err(e) => internal(e),
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
    let target = format!("objection {}", nhs.as_digits());
    let resp = match r {
        Ok(Ok(seq)) => {
            info!("objection recorded: summary withdrawn from every unit");
            let h = hub.clone();
            let _ = blocking(move || h.notify_head()).await;
            Json(json!({"withdrawn": true, "seq": seq, "already": seq.is_none()})).into_response()
        }
        Ok(Err(StoreError::UnknownPatient)) => error(
            StatusCode::NOT_FOUND,
            "unknown_patient",
            "the hub holds no summary for that NHS number",
        ),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    };
    with_target(resp, target)
}

/// What an admin call acted on, for the operator log (the device of a wipe or cohort change,
/// the patient of an objection), carried from the handler to [`guard`] on the response.
#[derive(Debug, Clone)]
struct OpTarget(String);

fn with_target(mut resp: Response, target: String) -> Response {
    resp.extensions_mut().insert(OpTarget(target));
    resp
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
    let target = format!("cohort {id} = {}", req.cohort.join(" "));
    let (h, dev) = (hub.clone(), id.clone());
    let r = blocking(move || -> anyhow::Result<bool> {
        if !known_device(&h, &dev)? {
            return Ok(false);
        }
        h.set_cohort(&dev, specs)?;
        Ok(true)
    })
    .await;
    let resp = match r {
        Ok(Ok(true)) => {
            Json(json!({"device_id": id.as_str(), "cohort": req.cohort})).into_response()
        }
        Ok(Ok(false)) => unknown_device(),
        Ok(Err(e)) | Err(e) => internal(e),
    };
    with_target(resp, target)
}

#[derive(Deserialize)]
struct AuditQuery {
    patient: Option<String>,
    staff: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

/// `GET /admin/audit?patient=NHS|staff=SDSID[&limit=N][&cursor=…]`: one page, newest first.
async fn audit_query(
    State(hub): State<Arc<Hub>>,
    op: Option<axum::Extension<Operator>>,
    Query(q): Query<AuditQuery>,
) -> Response {
    let limit = page_limit(q.limit);
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
    // Every admin audit query is itself logged; who it was about is in the operator log
    // (privacy role) only.
    info!(operator = op.as_ref().map_or("?", |o| o.0 .0.operator_id.as_str()), kind = %(kind as char), "audit trail queried");
    let repo = hub.audit.clone();
    let cursor = q.cursor;
    match tokio::task::spawn_blocking(move || repo.query_page(kind, &who, cursor.as_deref(), limit))
        .await
    {
        Ok(Ok(Ok(page))) => {
            let events: Vec<serde_json::Value> =
                page.events.iter().map(crate::audit::event_json).collect();
            Json(json!({"events": events, "next_cursor": page.next_cursor})).into_response()
        }
        Ok(Ok(Err(_))) => bad_cursor(),
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
    until: Option<String>,
}

/// `GET /admin/audit/export[?since=RFC3339][&until=RFC3339]`: every audit event recorded in
/// `[since, until)` as FHIR R4 `AuditEvent` NDJSON, in device and sequence order, streamed as it
/// is read (the hub holds one chunk of the export in memory at a time, however large the
/// repository; a client that stops reading stops the scan).
async fn audit_export(State(hub): State<Arc<Hub>>, Query(q): Query<ExportQuery>) -> Response {
    let parse = |v: Option<&str>, default: i64| match v {
        None => Some(edge_proto::time::UnixMillis(default)),
        Some(s) => edge_proto::time::UnixMillis::parse_rfc3339(s).ok(),
    };
    let bad = |name: &str| {
        error(
            StatusCode::BAD_REQUEST,
            &format!("bad_{name}"),
            format!("{name}= must be an RFC 3339 time, e.g. 2026-11-27T00:00:00Z"),
        )
    };
    let Some(since) = parse(q.since.as_deref(), 0) else {
        return bad("since");
    };
    let Some(until) = parse(q.until.as_deref(), i64::MAX) else {
        return bad("until");
    };
    if until <= since {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_until",
            "until= must be later than since=",
        );
    }
    info!("audit export requested");
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<axum::body::Bytes, std::io::Error>>(4);
    let repo = hub.audit.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunk = String::new();
        let mut open = true;
        let r = repo.each_between(since, until, |e| {
            chunk.push_str(&crate::audit::event_fhir(&e).to_string());
            chunk.push('\n');
            if chunk.len() >= EXPORT_CHUNK {
                let full = std::mem::take(&mut chunk);
                open = tx.blocking_send(Ok(full.into())).is_ok();
            }
            open
        });
        match r {
            Ok(()) if open && !chunk.is_empty() => {
                let _ = tx.blocking_send(Ok(chunk.into()));
            }
            Ok(()) => {}
            Err(e) => {
                // The status line has gone: cut the body short so the client sees a failure,
                // never a silently partial export.
                warn!(error = %e, "the audit export failed part-way");
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (
        [(axum::http::header::CONTENT_TYPE, "application/fhir+ndjson")],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

/// Bytes of NDJSON the export sends at a time.
const EXPORT_CHUNK: usize = 64 * 1024;

/// `GET /admin/alerts[?limit=N][&cursor=…]`: break-glass accesses and security alerts (bulk
/// browsing) from every unit, newest first, one page at a time, for the privacy officer's
/// review; and the hub's own alerts (`hub_alerts`: a CRL past its `nextUpdate`).
async fn alerts(
    State(st): State<AdminState>,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_page_query();
    };
    let limit = page_limit(q.limit);
    info!("alert review list requested");
    let mut hub_alerts = Vec::new();
    let crl = st.auth.crl_status();
    if crl.expired {
        hub_alerts.push(json!({
            "kind": "crl_expired",
            "next_update": crl.next_update.map(|t| t.to_rfc3339()),
            "message": "the fleet CRL is past its nextUpdate: re-sign it with `edge-provision crl` so revocations stay current",
        }));
    }
    let repo = st.hub.audit.clone();
    match tokio::task::spawn_blocking(move || repo.alerts_page(q.cursor.as_deref(), limit)).await {
        Ok(Ok(Ok(page))) => {
            let keys: Vec<(String, u64)> = page
                .events
                .iter()
                .map(|e| (e.device_id.as_str().to_owned(), e.seq))
                .collect();
            let reviews = st.reviews.clone();
            let found = match blocking(move || reviews.of(&keys)).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => return internal(e),
                Err(e) => return internal(e),
            };
            let v: Vec<serde_json::Value> = page
                .events
                .iter()
                .map(|e| {
                    let mut j = crate::audit::event_json(e);
                    if let Some(m) = j.as_object_mut() {
                        let r = found.get(&(e.device_id.as_str().to_owned(), e.seq));
                        m.insert("review".into(), json!(r));
                    }
                    j
                })
                .collect();
            Json(json!({"alerts": v, "next_cursor": page.next_cursor, "hub_alerts": hub_alerts}))
                .into_response()
        }
        Ok(Ok(Err(_))) => bad_cursor(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}

#[derive(Deserialize)]
struct ObjectionStatusQuery {
    seq: u64,
}

/// `GET /admin/objection/status?seq=S`: which units have dropped the record an objection
/// withdrew at feed position `S` (the `seq` `POST /admin/objection` answered): a unit has, once
/// it has acknowledged every change up to `S`. Revoked units are listed apart (they sync no
/// more; a wipe is their remedy).
async fn objection_status(
    State(hub): State<Arc<Hub>>,
    q: Result<Query<ObjectionStatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "give seq=N, the position POST /admin/objection answered",
        );
    };
    let rows = match blocking(move || device_rows(&hub)).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    let mut pending = 0u64;
    let units: Vec<serde_json::Value> = rows
        .iter()
        .map(|d| {
            let cursor = d["cursor"].as_u64();
            let revoked = d["revoked"].as_bool().unwrap_or(false);
            let dropped = cursor.is_some_and(|c| c >= q.seq);
            if !dropped && !revoked {
                pending += 1;
            }
            json!({
                "device_id": d["device_id"],
                "dropped": dropped,
                "revoked": revoked,
                "cursor": cursor,
                "connected": d["connected"],
                "last_seen": d["last_seen"],
            })
        })
        .collect();
    Json(json!({"seq": q.seq, "pending": pending, "units": units})).into_response()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewReq {
    device_id: String,
    seq: u64,
    note: String,
}

/// `POST /admin/alerts/review` `{"device_id", "seq", "note"}`: mark a break-glass access or
/// security alert reviewed, with a note (1 to 2,000 characters). One review per event: a second
/// is refused with 409 `already_reviewed`.
async fn review_alert(
    State(st): State<AdminState>,
    axum::Extension(Operator(op)): axum::Extension<Operator>,
    body: Bytes,
) -> Response {
    let req: ReviewReq = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("the body is {{\"device_id\", \"seq\", \"note\"}}: {e}"),
            )
        }
    };
    let note = req.note.trim().to_owned();
    if note.is_empty() || note.chars().count() > crate::review::MAX_NOTE_CHARS {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "a review needs a note of 1 to {} characters",
                crate::review::MAX_NOTE_CHARS
            ),
        );
    }
    let target = format!("review {}#{}", req.device_id, req.seq);
    let repo = st.hub.audit.clone();
    let (dev, seq) = (req.device_id.clone(), req.seq);
    let event = match blocking(move || repo.event(&dev, seq)).await {
        Ok(Ok(e)) => e,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    let Some(event) = event else {
        return error(
            StatusCode::NOT_FOUND,
            "unknown_event",
            format!(
                "the hub holds no audit event {}",
                target.trim_start_matches("review ")
            ),
        );
    };
    if !crate::audit::is_alert(&event) {
        return error(
            StatusCode::BAD_REQUEST,
            "not_an_alert",
            "only break-glass accesses and security alerts are reviewed",
        );
    }
    let review = crate::review::Review {
        reviewed_at: now().to_rfc3339(),
        operator_id: op.operator_id.clone(),
        operator_name: op.operator_name.clone(),
        note,
    };
    let reviews = st.reviews.clone();
    let (dev, r) = (req.device_id.clone(), review.clone());
    let stored = match blocking(move || reviews.record(&dev, seq, &r)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return internal(e),
        Err(e) => return internal(e),
    };
    let mut resp = if stored {
        info!(operator = %op.operator_id, "an alert was marked reviewed");
        Json(json!({"reviewed": true, "review": review})).into_response()
    } else {
        error(
            StatusCode::CONFLICT,
            "already_reviewed",
            "this alert has been reviewed already",
        )
    };
    resp.extensions_mut().insert(OpTarget(target));
    resp
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
    let target = format!("wipe {id}{}", if req.cancel { " (cancelled)" } else { "" });
    // A mistyped id must not order a wipe of nothing, or create a phantom device: the unit
    // must be in the fleet inventory or already known to this hub.
    let (h, dev, cancel) = (hub.clone(), id.clone(), req.cancel);
    let r = blocking(move || -> anyhow::Result<bool> {
        if !known_device(&h, &dev)? {
            return Ok(false);
        }
        warn!(device = %dev, cancel, "remote wipe ordered");
        h.order_wipe(&dev, cancel)?;
        Ok(true)
    })
    .await;
    let resp = match r {
        Ok(Ok(true)) => {
            Json(json!({"device_id": id.as_str(), "wipe_ordered": !req.cancel})).into_response()
        }
        Ok(Ok(false)) => unknown_device(),
        Ok(Err(e)) | Err(e) => internal(e),
    };
    with_target(resp, target)
}

/// Whether `id` is a unit of the fleet inventory or one this hub has already seen.
fn known_device(hub: &Hub, id: &DeviceId) -> Result<bool, StoreError> {
    let in_inventory = hub
        .inventory()
        .is_some_and(|inv| inv.units.iter().any(|u| u.device_id == *id));
    if in_inventory {
        return Ok(true);
    }
    Ok(hub.store.devices()?.iter().any(|(k, _)| k == id.as_str()))
}

fn unknown_device() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown_device",
        "no unit with that device id is enrolled in this fleet or known to this hub; check the id (GET /admin/devices lists them)",
    )
}

/// The 400 for a paged list's query that is not `limit` and `cursor`.
fn bad_page_query() -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        "the query takes limit=N and cursor=…",
    )
}

/// `GET /admin/operator-log?limit=&cursor=`: every admin call, newest first (privacy role).
async fn operator_log(
    State(st): State<AdminState>,
    q: Result<Query<PageQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(Query(q)) = q else {
        return bad_page_query();
    };
    let limit = page_limit(q.limit);
    let log = st.log.clone();
    match tokio::task::spawn_blocking(move || log.page(q.cursor.as_deref(), limit)).await {
        Ok(Ok(Some(page))) => Json(page).into_response(),
        Ok(Ok(None)) => bad_cursor(),
        Ok(Err(e)) => internal(e),
        Err(e) => internal(e),
    }
}
