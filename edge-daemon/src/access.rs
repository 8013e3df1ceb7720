//! Patient access over the LAN: lookup, FHIR `$summary`, search — with shift-token
//! authentication, roles, break-glass, freshness, on-demand fetch, and an audit event recorded
//! (fsync'd in the journal) **before** every answer, found, not found or refused.
//!
//! Every answer goes through [`Auditor::record`]; if the access cannot be recorded the unit
//! refuses to answer (503 `audit_unavailable`) rather than serve unaudited (hazard H5).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edge_proto::audit::{
    uuid_from_bytes, AccessData, AuditAction, AuditEvent, AuditOutcome, ClientInfo, Hash32,
    Purpose, AUDIT_SCHEMA,
};
use edge_proto::cbor;
use edge_proto::ids::{DeviceId, StaffRole};
use edge_proto::model::Summary;
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::FetchResult;
use edge_proto::time::UnixMillis;
use edge_proto::token::{self, ShiftClaims};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::cache::CachedRecord;
use crate::journal::Journal;
use crate::lan::{error, AppState};
use crate::search::SearchQuery;
use crate::status::{Link, Status};
use crate::sync::now;

/// Records accesses in the audit journal.
#[derive(Clone)]
pub struct Auditor {
    journal: Option<Journal>,
    device: DeviceId,
    status: Arc<Status>,
    seen_tokens: Arc<Mutex<HashSet<String>>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("device", &self.device)
            .finish()
    }
}

/// One access to record.
#[derive(Debug, Clone)]
pub struct Access {
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub reason: Option<&'static str>,
    pub caller: Option<ShiftClaims>,
    pub purpose: Purpose,
    pub break_glass_reason: Option<String>,
    pub incident_ref: Option<String>,
    pub patient: Option<NhsNumber>,
    pub data: AccessData,
}

impl Access {
    fn new(action: AuditAction, outcome: AuditOutcome) -> Access {
        Access {
            action,
            outcome,
            reason: None,
            caller: None,
            purpose: Purpose::Treat,
            break_glass_reason: None,
            incident_ref: None,
            patient: None,
            data: AccessData {
                interface: Some("lan".into()),
                asked_nhs: None,
                ..AccessData::default()
            },
        }
    }
}

fn random_uuid() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    uuid_from_bytes(b)
}

impl Auditor {
    /// An auditor over the unit's journal (`None`: nothing is recorded — tests only).
    pub fn new(journal: Option<Journal>, device: DeviceId, status: Arc<Status>) -> Auditor {
        Auditor {
            journal,
            device,
            status,
            seen_tokens: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    fn event(&self, a: &Access, action: AuditAction, outcome: AuditOutcome) -> AuditEvent {
        let live = self.status.live();
        AuditEvent {
            schema: AUDIT_SCHEMA,
            event_id: random_uuid(),
            device_id: self.device.clone(),
            seq: 0,
            prev_hash: Hash32::default(),
            hash: Hash32::default(),
            recorded: now(),
            clock_offset_ms: live.hub_offset_ms,
            action,
            outcome,
            outcome_reason: a.reason.map(str::to_owned),
            staff_id: a.caller.as_ref().map(|c| c.staff_id.clone()),
            staff_name: a.caller.as_ref().map(|c| c.staff_name.clone()),
            role: a.caller.as_ref().map(|c| c.role),
            org_ods: a.caller.as_ref().and_then(|c| c.org_ods.clone()),
            auth: a.caller.as_ref().map(|c| c.token_id.clone()),
            purpose: a.purpose,
            break_glass_reason: a.break_glass_reason.clone(),
            patient: a.patient,
            data: a.data.clone(),
            client: ClientInfo::default(),
            incident_ref: a.incident_ref.clone(),
            offline: live.link == Link::Down,
        }
    }

    async fn append(&self, ev: AuditEvent) -> Result<(), Response> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        match j.append(ev).await {
            Ok(_) => {
                let pending = j.pending();
                self.status.update(|l| l.audit_pending = pending);
                Ok(())
            }
            Err(e) => {
                warn!(error = %e, "cannot record an access: refusing to answer unaudited");
                Err(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "audit_unavailable",
                    "this access cannot be recorded (the audit journal is full or failing), so the unit will not answer it; see the unit's status and tell the fleet team",
                ))
            }
        }
    }

    /// Record an access (and, the first time a token is used, a login; for break-glass, a
    /// separate security alert). Returns only once the events are durable.
    pub async fn record(&self, a: Access) -> Result<(), Response> {
        if let Some(c) = &a.caller {
            let first = self
                .seen_tokens
                .lock()
                .map(|mut s| s.insert(c.token_id.clone()))
                .unwrap_or(false);
            if first {
                let mut login = a.clone();
                login.patient = None;
                login.reason = None;
                login.data = AccessData {
                    interface: Some("lan".into()),
                    asked_nhs: None,
                    ..AccessData::default()
                };
                self.append(self.event(&login, AuditAction::Login, AuditOutcome::Ok))
                    .await?;
            }
        }
        self.append(self.event(&a, a.action, a.outcome)).await?;
        if a.purpose == Purpose::EmergencyTreat && a.break_glass_reason.is_some() {
            self.append(self.event(&a, AuditAction::Alert, a.outcome))
                .await?;
        }
        Ok(())
    }
}

/// Who is asking and why.
struct Caller {
    claims: ShiftClaims,
    purpose: Purpose,
    reason: Option<String>,
    incident: Option<String>,
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

/// The most characters of a break-glass reason kept (the audit stores it as given, cut here).
pub const MAX_REASON_CHARS: usize = 500;

/// `X-Break-Glass-Reason` in any language: percent-encoded UTF-8 (what the page sends, since
/// browsers refuse non-ASCII header values) or raw UTF-8 bytes (what curl sends); control
/// characters dropped, at most [`MAX_REASON_CHARS`] characters. `None` when empty or not UTF-8.
pub fn break_glass_reason(h: &HeaderMap) -> Option<String> {
    let raw = h.get("x-break-glass-reason")?.as_bytes();
    let text = std::str::from_utf8(raw).ok()?;
    // `%XX` decoding (no `+` → space: this is a header, not a form); escapes that do not make
    // UTF-8 leave the text as it came.
    let decoded = percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .map_or_else(|_| text.to_owned(), |d| d.into_owned());
    let clean: String = decoded
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REASON_CHARS)
        .collect();
    let clean = clean.trim().to_owned();
    (!clean.is_empty()).then_some(clean)
}

/// A refused request: the answer, the audit reason, and the caller when the token was good.
type Refusal = (Response, &'static str, Option<ShiftClaims>);

/// Check the token and the purpose headers. Errors carry the response and the audit reason.
fn authenticate(s: &AppState, h: &HeaderMap) -> Result<Caller, Box<Refusal>> {
    let Some(auth) = header_str(h, "authorization") else {
        return Err(Box::new((
            error(
                StatusCode::UNAUTHORIZED,
                "no_token",
                "sign in with your shift token (Authorization: Bearer <token>)",
            ),
            "no_token",
            None,
        )));
    };
    let Some(tok) = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
    else {
        return Err(Box::new((
            error(
                StatusCode::UNAUTHORIZED,
                "bad_token",
                "the Authorization header must be 'Bearer <shift token>'",
            ),
            "bad_token",
            None,
        )));
    };
    let claims = match verify_cached(tok, s) {
        Ok(c) => c,
        Err(e) => {
            let (code, why) = match &e {
                token::TokenError::Expired { .. } => ("expired_token", "expired_token"),
                token::TokenError::WrongUnit { .. } => ("wrong_unit", "wrong_unit"),
                _ => ("bad_token", "bad_token"),
            };
            return Err(Box::new((
                error(
                    StatusCode::UNAUTHORIZED,
                    code,
                    format!("{e}; sign in again"),
                ),
                why,
                None,
            )));
        }
    };
    let purpose = match header_str(h, "x-purpose-of-use") {
        None => Purpose::Treat,
        Some(p) if p.eq_ignore_ascii_case("TREAT") => Purpose::Treat,
        Some(p) if p.eq_ignore_ascii_case("ETREAT") => Purpose::EmergencyTreat,
        Some(_) => {
            return Err(Box::new((
                error(
                    StatusCode::BAD_REQUEST,
                    "bad_purpose",
                    "X-Purpose-Of-Use must be TREAT or ETREAT",
                ),
                "bad_purpose",
                Some(claims),
            )))
        }
    };
    let reason = break_glass_reason(h);
    if purpose == Purpose::EmergencyTreat && reason.is_none() {
        return Err(Box::new((
            error(
                StatusCode::BAD_REQUEST,
                "break_glass_reason_required",
                "emergency access (ETREAT) needs a reason in X-Break-Glass-Reason",
            ),
            "break_glass_reason_required",
            Some(claims),
        )));
    }
    let incident = header_str(h, "x-incident-ref").map(|r| r.chars().take(64).collect());
    Ok(Caller {
        claims,
        purpose,
        reason,
        incident,
    })
}

/// Tokens already verified (by SHA-256 of the token), so a shift's many lookups pay for the
/// Ed25519 verification once. Expiry is checked on every use; the cache is bounded.
static VERIFIED: std::sync::LazyLock<Mutex<std::collections::HashMap<[u8; 32], ShiftClaims>>> =
    std::sync::LazyLock::new(|| Mutex::new(std::collections::HashMap::new()));

fn verify_cached(tok: &str, s: &AppState) -> Result<ShiftClaims, token::TokenError> {
    let t = now();
    let mut key = [0u8; 32];
    key.copy_from_slice(
        ring::digest::digest(&ring::digest::SHA256, tok.trim().as_bytes()).as_ref(),
    );
    if let Some(c) = VERIFIED.lock().ok().and_then(|m| m.get(&key).cloned()) {
        if c.expires_at > t {
            return Ok(c);
        }
        if let Ok(mut m) = VERIFIED.lock() {
            m.remove(&key);
        }
    }
    let c = token::verify(tok, &s.token_key[..], t, &s.config.device_id)?;
    if let Ok(mut m) = VERIFIED.lock() {
        if m.len() >= 4_096 {
            m.clear();
        }
        m.insert(key, c.clone());
    }
    Ok(c)
}

/// Bulk-browse defence: per shift token, requests per second and distinct patients opened in
/// a sliding window. Past the request rate → 429; past the distinct-patient limit → each
/// further lookup is slowed and an alert event is recorded.
#[derive(Debug, Default)]
struct Usage {
    /// Token bucket: tokens left and when it was last refilled.
    bucket: f64,
    refilled: i64,
    patients: std::collections::VecDeque<(i64, NhsNumber)>,
    alerted_at: i64,
}

/// Request budget per token: a burst of this many, refilled at [`REQUESTS_PER_S`]; past it, 429.
/// A person never comes near it; a script does, and the distinct-patient limit below slows
/// a scripted browse to one patient per two seconds long before.
pub const REQUEST_BURST: f64 = 2_000.0;
/// Refill rate of the request budget.
pub const REQUESTS_PER_S: f64 = 100.0;
/// Distinct patients per token per window before lookups are slowed and alerted.
pub const MAX_DISTINCT_PATIENTS: usize = 30;
/// The window for distinct patients.
pub const BROWSE_WINDOW_MS: i64 = 10 * 60 * 1000;
/// The delay added to each lookup past the limit.
pub const BROWSE_DELAY_MS: u64 = 2_000;

static USAGE: std::sync::LazyLock<Mutex<std::collections::HashMap<String, Usage>>> =
    std::sync::LazyLock::new(|| Mutex::new(std::collections::HashMap::new()));

enum Pace {
    Ok,
    TooFast,
    /// Slow down, and record an alert if true.
    Browsing(bool),
}

fn pace(token_id: &str, patient: Option<NhsNumber>) -> Pace {
    let t = now().0;
    let Ok(mut all) = USAGE.lock() else {
        return Pace::Ok;
    };
    if all.len() > 10_000 {
        all.clear();
    }
    let u = all.entry(token_id.to_owned()).or_insert_with(|| Usage {
        bucket: REQUEST_BURST,
        refilled: t,
        ..Usage::default()
    });
    u.bucket = (u.bucket + (t - u.refilled) as f64 / 1000.0 * REQUESTS_PER_S).min(REQUEST_BURST);
    u.refilled = t;
    if u.bucket < 1.0 {
        return Pace::TooFast;
    }
    u.bucket -= 1.0;
    let Some(p) = patient else {
        return Pace::Ok;
    };
    while u
        .patients
        .front()
        .is_some_and(|(x, _)| t - x > BROWSE_WINDOW_MS)
    {
        u.patients.pop_front();
    }
    if !u.patients.iter().any(|(_, q)| *q == p) {
        u.patients.push_back((t, p));
    }
    if u.patients.len() > MAX_DISTINCT_PATIENTS {
        let alert = t - u.alerted_at > 60_000;
        if alert {
            u.alerted_at = t;
        }
        return Pace::Browsing(alert);
    }
    Pace::Ok
}

/// What a lookup found.
struct Found {
    summary: Summary,
    rec: CachedRecord,
    on_demand: bool,
}

enum Lookup {
    Found(Box<Found>),
    NotCached(&'static str),
}

async fn lookup(s: &AppState, nhs: &NhsNumber) -> Result<Lookup, Response> {
    let t = now();
    // A stored value that fails its AEAD tag or digest is never served: it is treated as a
    // miss and fetched afresh from the hub (and repaired at the next sync).
    let damaged = |e: &crate::cache::CacheError| {
        matches!(
            e,
            crate::cache::CacheError::Seal { .. } | crate::cache::CacheError::Decode { .. }
        )
    };
    let rec = match s.cache.get(nhs) {
        Ok(Some(r)) => Some((r, false)),
        Err(e) if damaged(&e) => {
            warn!(error = %e, "a cached record failed its integrity check; fetching it again");
            None
        }
        Err(e) => return Err(cache_error(e)),
        Ok(None) => match s.cache.get_fetched(nhs, t) {
            Ok(Some(r)) => Some((r, true)),
            Ok(None) => None,
            Err(e) if damaged(&e) => None,
            Err(e) => return Err(cache_error(e)),
        },
    };
    let (rec, on_demand) = match rec {
        Some(x) => x,
        None => match s.fetcher.fetch(*nhs).await {
            FetchResult::Found { version, record } => {
                let ttl = i64::try_from(s.config.cache.on_demand_ttl_s)
                    .unwrap_or(259_200)
                    .saturating_mul(1000);
                let t = now();
                if let Err(e) = s.cache.put_fetched(nhs, version, record, t, t.plus_ms(ttl)) {
                    return Err(cache_error(e));
                }
                match s.cache.get_fetched(nhs, t) {
                    Ok(Some(r)) => (r, true),
                    _ => return Ok(Lookup::NotCached("fetch_store_failed")),
                }
            }
            FetchResult::NotFound | FetchResult::Withdrawn => {
                return Ok(Lookup::NotCached("not_at_hub"))
            }
            FetchResult::NotConnected => return Ok(Lookup::NotCached("link_down")),
            FetchResult::TimedOut => return Ok(Lookup::NotCached("fetch_timed_out")),
            FetchResult::Busy => return Ok(Lookup::NotCached("fetch_busy")),
        },
    };
    match cbor::decode_summary(rec.record.as_slice()) {
        Ok(summary) => Ok(Lookup::Found(Box::new(Found {
            summary,
            rec,
            on_demand,
        }))),
        Err(e) => {
            warn!(error = %e, "a cached summary does not decode");
            Err(error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "cache_damaged",
                "this patient's cached record is damaged; it will be refreshed at the next sync",
            ))
        }
    }
}

fn cache_error(e: crate::cache::CacheError) -> Response {
    warn!(error = %e, "cache read failed");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "cache_unavailable",
        "the unit's cache cannot be read; see the unit's status",
    )
}

/// The unit cannot answer at all: power is failing, or its cache has been shredded.
fn unavailable(s: &AppState) -> Option<Response> {
    if s.writes_stopped.load(std::sync::atomic::Ordering::SeqCst) {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "power_failing",
            "the unit is losing power and is saving its data; try again when it is back",
        ));
    }
    if s.cache.is_shredded() {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unit_wiped",
            "this unit's records were destroyed (tamper or remote wipe) and it serves nothing until it is re-provisioned; use another unit",
        ));
    }
    None
}

/// Days since the unit last reached the hub, when that is longer than the offline limit.
fn past_offline_limit(s: &AppState) -> Option<u64> {
    let live = s.status.live();
    if live.link == Link::Up {
        return None;
    }
    let last = live.last_sync_at.or(s.cache.meta().last_sync_at)?;
    let secs = now().seconds_since(last);
    (secs > s.config.cache.offline_limit_s).then_some(secs / 86_400)
}

/// Freshness of a found record: (age in seconds, stale, synced_at).
fn freshness(s: &AppState, f: &Found) -> (u64, bool) {
    let live = s.status.live();
    let offset = live.hub_offset_ms;
    let hub_now = now().plus_ms(offset);
    let synced = f.rec.synced_at.plus_ms(offset);
    // When the unit last knew this record to be current, in hub time: now while the link is
    // up and the cache caught up; otherwise the last time it was caught up.
    let confirmed = if f.on_demand {
        synced
    } else if live.link == Link::Up && live.caught_up {
        hub_now
    } else {
        let as_of = live.cache_as_of.or(s.cache.meta().cache_as_of);
        as_of.map_or(synced, |a| a.max(synced))
    };
    let age = hub_now.seconds_since(confirmed);
    (age, age > s.config.cache.stale_after_s)
}

fn http_date(t: UnixMillis) -> Option<HeaderValue> {
    let dt = time::OffsetDateTime::from_unix_timestamp(t.0.div_euclid(1000)).ok()?;
    let fmt = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    HeaderValue::from_str(&dt.format(&fmt).ok()?).ok()
}

fn sections(s: &Summary) -> Vec<String> {
    let mut v = Vec::new();
    if !s.allergies.entries.is_empty() {
        v.push("allergies".into());
    }
    if !s.medications.entries.is_empty() {
        v.push("medications".into());
    }
    if !s.conditions.entries.is_empty() {
        v.push("conditions".into());
    }
    if !s.resuscitation.entries.is_empty() {
        v.push("resuscitation".into());
    }
    if !s.care_plans.entries.is_empty() {
        v.push("care_plans".into());
    }
    if !s.alerts.entries.is_empty() {
        v.push("alerts".into());
    }
    v
}

enum Format {
    Json,
    Fhir,
}

async fn read_patient(s: AppState, h: HeaderMap, raw: Option<String>, format: Format) -> Response {
    if let Some(resp) = unavailable(&s) {
        return resp;
    }
    let mut a = Access::new(AuditAction::Read, AuditOutcome::Denied);
    a.data.interface = Some(match format {
        Format::Json => "lan".into(),
        Format::Fhir => "fhir".into(),
    });
    let caller = match authenticate(&s, &h) {
        Ok(c) => c,
        Err(b) => {
            let (resp, why, claims) = *b;
            a.reason = Some(why);
            a.caller = claims;
            a.patient = raw.as_deref().and_then(|r| NhsNumber::parse(r).ok());
            return s.audit.record(a).await.err().unwrap_or(resp);
        }
    };
    a.caller = Some(caller.claims.clone());
    a.purpose = caller.purpose;
    a.break_glass_reason = caller.reason.clone();
    a.incident_ref = caller.incident.clone();
    let nhs = match raw.as_deref().map(NhsNumber::parse) {
        Some(Ok(n)) => n,
        Some(Err(e)) => {
            a.reason = Some("invalid_nhs_number");
            let resp = error(StatusCode::BAD_REQUEST, "invalid_nhs_number", e.to_string());
            return s.audit.record(a).await.err().unwrap_or(resp);
        }
        None => {
            a.reason = Some("invalid_nhs_number");
            let resp = error(
                StatusCode::BAD_REQUEST,
                "invalid_nhs_number",
                "give the NHS number as identifier=https://fhir.nhs.uk/Id/nhs-number|NNNNNNNNNN",
            );
            return s.audit.record(a).await.err().unwrap_or(resp);
        }
    };
    a.patient = Some(nhs);
    match pace(&caller.claims.token_id, Some(nhs)) {
        Pace::Ok => {}
        Pace::TooFast => {
            a.reason = Some("rate_limited");
            let resp = error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "too many requests with this shift token; slow down",
            );
            return s.audit.record(a).await.err().unwrap_or(resp);
        }
        Pace::Browsing(alert) => {
            if alert {
                let mut al = a.clone();
                al.action = AuditAction::Alert;
                al.outcome = AuditOutcome::Ok;
                al.reason = Some("bulk_browse");
                al.patient = None;
                warn!(staff_token = %caller.claims.token_id, "many distinct patients opened with one shift token: slowing down and alerting");
                if let Err(resp) = s.audit.record(al).await {
                    return resp;
                }
            }
            tokio::time::sleep(std::time::Duration::from_millis(BROWSE_DELAY_MS)).await;
        }
    }
    if caller.claims.role != StaffRole::Clinical {
        a.reason = Some("role");
        let resp = error(
            StatusCode::FORBIDDEN,
            "role",
            "your role may search and see demographics, not clinical content",
        );
        return s.audit.record(a).await.err().unwrap_or(resp);
    }
    if let Some(days) = past_offline_limit(&s) {
        a.outcome = AuditOutcome::Denied;
        a.reason = Some("offline_limit");
        let resp = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "offline_too_long",
            format!(
                "this unit has not reached the hub for {days} days, longer than its limit of {} days: its records are too old to trust and are not shown until it syncs. Connect the unit (vehicle in range, or the depot network) and try again",
                s.config.cache.offline_limit_s / 86_400
            ),
        );
        return s.audit.record(a).await.err().unwrap_or(resp);
    }
    // A former (superseded or merged) number answers the current record, saying so.
    let target = if s.cache.contains(&nhs) {
        nhs
    } else {
        s.cache.alias(&nhs).unwrap_or(nhs)
    };
    let found = match lookup(&s, &target).await {
        Ok(Lookup::Found(f)) => f,
        Ok(Lookup::NotCached(why)) => {
            a.outcome = AuditOutcome::NotFound;
            a.reason = Some(why);
            let msg = match why {
                "link_down" => {
                    "this unit holds no record for this patient and the link to the hub is down"
                }
                "not_at_hub" => {
                    "this unit holds no record for this patient and the hub has none to share"
                }
                _ => "this unit holds no record for this patient and could not fetch one in time",
            };
            let resp = (
                StatusCode::NOT_FOUND,
                Json(json!({"error": "not_cached", "reason": why, "message": msg, "link": s.status.link()})),
            )
                .into_response();
            return s.audit.record(a).await.err().unwrap_or(resp);
        }
        Err(resp) => {
            a.outcome = AuditOutcome::Error;
            a.reason = Some("cache");
            return s.audit.record(a).await.err().unwrap_or(resp);
        }
    };
    // Restricted items are withheld from the answer unless the clinician broke the glass
    // (`ETREAT` with a reason): the rest of the record is still shown, and every section says
    // how many items it withheld.
    let break_glass = caller.purpose == Purpose::EmergencyTreat;
    if break_glass {
        a.action = AuditAction::BreakGlass;
    }
    let redirected_from = (found.summary.nhs_number != nhs).then_some(nhs);
    if redirected_from.is_some() {
        a.patient = Some(found.summary.nhs_number);
        a.data.asked_nhs = Some(nhs);
    }
    let (age, stale) = freshness(&s, &found);
    a.outcome = AuditOutcome::Ok;
    a.data.version = Some(found.summary.version);
    // What this caller may see: restricted items removed unless the glass was broken.
    let shown = edge_proto::view::redact(&found.summary, break_glass);
    a.data.sections = sections(&shown);
    a.data.cache_age_s = Some(age);
    if let Err(resp) = s.audit.record(a).await {
        return resp;
    }
    let live = s.status.live();
    let mut headers = HeaderMap::new();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if let Some(d) = http_date(found.summary.assembled_at) {
        headers.insert(header::LAST_MODIFIED, d);
    }
    if let Ok(v) = HeaderValue::from_str(&age.to_string()) {
        headers.insert(header::AGE, v);
    }
    if stale {
        headers.insert("x-kerbside-stale", HeaderValue::from_static("true"));
    }
    let body = match format {
        Format::Json => {
            let mut v = serde_json::to_value(&found.summary).unwrap_or(Value::Null);
            if let Value::Object(m) = &mut v {
                m.remove("ledger");
                // Only the sources of what is shown: a restricted item's organisation is not
                // named unless the glass is broken.
                m.insert(
                    "sources".into(),
                    serde_json::to_value(edge_proto::assemble::derive_sources(&shown))
                        .unwrap_or(Value::Null),
                );
                // The sections as a clinician reads them (current and past, folded, withheld).
                let view = edge_proto::view::clinical_view(&found.summary, now(), break_glass);
                if let Ok(Value::Object(sections)) = serde_json::to_value(&view) {
                    for (k, val) in sections {
                        m.insert(k, val);
                    }
                }
                if let Some(old) = redirected_from {
                    m.insert("redirected_from".into(), json!(old));
                }
                m.insert(
                    "as_of".into(),
                    json!(found.summary.assembled_at.to_rfc3339()),
                );
                m.insert("synced_at".into(), json!(found.rec.synced_at.to_rfc3339()));
                m.insert("age_seconds".into(), json!(age));
                m.insert("stale".into(), json!(stale));
                m.insert(
                    "origin".into(),
                    json!(if found.on_demand {
                        "on_demand"
                    } else {
                        "cache"
                    }),
                );
                m.insert("link".into(), json!(live.link));
            }
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            v
        }
        Format::Fhir => {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/fhir+json"),
            );
            edge_proto::fhir::export::summary_document(&shown)
        }
    };
    debug!(on_demand = found.on_demand, age, stale, "summary served");
    (StatusCode::OK, headers, body.to_string()).into_response()
}

/// `GET /v1/patients/{nhs}`
pub async fn patient(State(s): State<AppState>, Path(nhs): Path<String>, h: HeaderMap) -> Response {
    read_patient(s, h, Some(nhs), Format::Json).await
}

/// `GET /v1/patients/` (no number): 404, as for any unknown path.
pub async fn patient_empty() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "give an NHS number: /v1/patients/{nhs}",
    )
}

/// `GET /fhir/Patient/$summary?identifier=https://fhir.nhs.uk/Id/nhs-number|{nhs}`
pub async fn fhir_summary(
    State(s): State<AppState>,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Response {
    let nhs = q.as_deref().and_then(|q| {
        query_pairs(q)
            .into_iter()
            .find(|(k, _)| k == "identifier")
            .and_then(|(_, v)| {
                v.strip_prefix("https://fhir.nhs.uk/Id/nhs-number|")
                    .map(str::to_owned)
            })
    });
    read_patient(s, h, nhs, Format::Fhir).await
}

/// Decode `a=b&c=d` (`application/x-www-form-urlencoded`: percent-decoding, `+` as space,
/// malformed escapes kept as they are); at most 32 pairs.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .take(32)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `GET /v1/search?family=&given=&birth_date=&postcode=`
pub async fn search(State(s): State<AppState>, RawQuery(q): RawQuery, h: HeaderMap) -> Response {
    if let Some(resp) = unavailable(&s) {
        return resp;
    }
    let mut a = Access::new(AuditAction::Search, AuditOutcome::Denied);
    let caller = match authenticate(&s, &h) {
        Ok(c) => c,
        Err(b) => {
            let (resp, why, claims) = *b;
            a.reason = Some(why);
            a.caller = claims;
            return s.audit.record(a).await.err().unwrap_or(resp);
        }
    };
    a.caller = Some(caller.claims.clone());
    a.purpose = caller.purpose;
    a.break_glass_reason = caller.reason.clone();
    a.incident_ref = caller.incident.clone();
    if let Pace::TooFast = pace(&caller.claims.token_id, None) {
        a.reason = Some("rate_limited");
        let resp = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "too many requests with this shift token; slow down",
        );
        return s.audit.record(a).await.err().unwrap_or(resp);
    }
    let pairs = query_pairs(q.as_deref().unwrap_or(""));
    let query = match SearchQuery::parse_params(&pairs) {
        Ok(q) => q,
        Err(e) => {
            a.reason = Some("bad_search");
            let resp = error(StatusCode::BAD_REQUEST, "bad_search", e.to_string());
            return s.audit.record(a).await.err().unwrap_or(resp);
        }
    };
    let outcome = match s.cache.search(&query) {
        Ok(o) => o,
        Err(e) => {
            a.reason = Some("bad_search");
            let resp = error(StatusCode::BAD_REQUEST, "bad_search", e.to_string());
            return s.audit.record(a).await.err().unwrap_or(resp);
        }
    };
    a.outcome = if outcome.candidates.is_empty() {
        AuditOutcome::NotFound
    } else {
        AuditOutcome::Ok
    };
    a.data.candidates = Some(u32::try_from(outcome.candidates.len()).unwrap_or(u32::MAX));
    if let Err(resp) = s.audit.record(a).await {
        return resp;
    }
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "candidates": outcome.candidates,
            "matched": outcome.matched,
            "link": s.status.link(),
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::{break_glass_reason, query_pairs, MAX_REASON_CHARS};
    use axum::http::{HeaderMap, HeaderValue};
    use proptest::prelude::*;

    #[test]
    fn break_glass_reasons_in_any_language() {
        let reason = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert(
                "x-break-glass-reason",
                HeaderValue::from_bytes(v).expect("a header value"),
            );
            break_glass_reason(&h)
        };
        // A smart apostrophe, raw UTF-8 (curl) and percent-encoded (the page).
        assert_eq!(
            reason("patient’s unconscious".as_bytes()).as_deref(),
            Some("patient’s unconscious")
        );
        assert_eq!(
            reason(b"patient%E2%80%99s%20unconscious").as_deref(),
            Some("patient’s unconscious")
        );
        assert_eq!(reason(b"100% sure").as_deref(), Some("100% sure"));
        assert_eq!(reason(b"   ").as_deref(), None);
        assert_eq!(reason(b"\xff\xfe").as_deref(), None);
        let long = "é".repeat(MAX_REASON_CHARS + 10);
        assert_eq!(
            reason(long.as_bytes()).map(|r| r.chars().count()),
            Some(MAX_REASON_CHARS)
        );
    }

    #[test]
    fn query_pairs_decode_percent_and_plus() {
        assert_eq!(
            query_pairs("family=O%27Brien&given=Mary+Ann&x"),
            vec![
                ("family".to_owned(), "O'Brien".to_owned()),
                ("given".to_owned(), "Mary Ann".to_owned()),
                ("x".to_owned(), String::new()),
            ]
        );
        assert_eq!(query_pairs("a=%"), vec![("a".to_owned(), "%".to_owned())]);
        assert_eq!(query_pairs("a=%4"), vec![("a".to_owned(), "%4".to_owned())]);
        assert_eq!(
            query_pairs("a=%zz"),
            vec![("a".to_owned(), "%zz".to_owned())]
        );
        // Only two hex digits make an escape (`%+1` is not byte 0x01; `+` is a space).
        assert_eq!(
            query_pairs("a=%+1"),
            vec![("a".to_owned(), "% 1".to_owned())]
        );
        assert_eq!(query_pairs(&"a=1&".repeat(100)).len(), 32, "bounded");
    }

    proptest! {
        #[test]
        fn query_parsing_never_panics(q in ".{0,300}") {
            let pairs = query_pairs(&q);
            let _ = crate::search::SearchQuery::parse_params(&pairs);
        }

        #[test]
        fn query_parsing_never_panics_on_percent_soup(q in "[%a-f0-9=&+]{0,200}") {
            let _ = query_pairs(&q);
        }
    }
}
