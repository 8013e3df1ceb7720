//! Every way the LAN API refuses or cannot answer, as one enum: the HTTP status, the JSON
//! error code and message the tablet shows, and the reason and outcome the audit event records
//! come from the same variant, so they cannot drift apart.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use edge_proto::audit::AuditOutcome;
use serde_json::json;

use crate::status::Link;

/// Why a patient the unit does not hold could not be fetched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotCached {
    /// The link to the hub is down.
    LinkDown,
    /// The hub holds no record (or it was withdrawn).
    NotAtHub,
    /// The hub did not answer in time.
    TimedOut,
    /// Too many fetches in flight.
    Busy,
    /// The fetched record could not be stored.
    StoreFailed,
    /// The hub refused to share it with this unit and caller (token, deny list, role, or the
    /// fetch ceiling).
    Refused,
}

impl NotCached {
    /// The audit and JSON `reason`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotCached::LinkDown => "link_down",
            NotCached::NotAtHub => "not_at_hub",
            NotCached::TimedOut => "fetch_timed_out",
            NotCached::Busy => "fetch_busy",
            NotCached::StoreFailed => "fetch_store_failed",
            NotCached::Refused => "fetch_refused",
        }
    }
}

/// A refused or failed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization` header.
    NoToken,
    /// `Authorization` is not `Bearer <token>`.
    NotBearer,
    /// The token does not verify (`detail` says why).
    BadToken { detail: String },
    /// The token has expired.
    ExpiredToken { detail: String },
    /// The token is bound to another unit.
    WrongUnit { detail: String },
    /// `X-Purpose-Of-Use` is neither TREAT nor ETREAT.
    BadPurpose,
    /// ETREAT without a reason.
    BreakGlassReasonRequired,
    /// Not a valid NHS number (or none given).
    InvalidNhsNumber { detail: String },
    /// Over the token's request budget.
    RateLimited,
    /// Too many requests without a valid token from this client address.
    UnauthenticatedRateLimited,
    /// Too many requests in flight from this client address.
    TooManyInFlight,
    /// The caller's role may not see clinical content.
    Role,
    /// The unit has been offline longer than its limit.
    OfflineTooLong { days: u64, limit_days: u64 },
    /// Not held, and not fetched.
    NotCached(NotCached),
    /// The cache cannot be read.
    CacheUnavailable,
    /// A cached record does not decode.
    CacheDamaged,
    /// A search that cannot be run.
    BadSearch { detail: String },
    /// The search postings are built once a cold fill finishes; not yet.
    SearchBuilding,
    /// A request body that cannot be used (`detail` says why), e.g. a conveyance's site.
    BadRequest { detail: String },
    /// This unit's role cannot do that (a kiosk does not convey patients).
    WrongUnitRole { detail: String },
    /// The access cannot be recorded, so it is not answered (never itself audited).
    AuditUnavailable,
    /// Power is failing (not audited: no new journal writes).
    PowerFailing,
    /// The unit's records were destroyed (not audited).
    UnitWiped,
}

impl Refusal {
    /// A refusal for want of a valid shift token (recorded in aggregate per client).
    pub fn is_unauthenticated(&self) -> bool {
        matches!(
            self,
            Refusal::NoToken
                | Refusal::NotBearer
                | Refusal::BadToken { .. }
                | Refusal::ExpiredToken { .. }
                | Refusal::WrongUnit { .. }
        )
    }

    /// The `outcome_reason` recorded in the audit event.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::NotBearer | Refusal::BadToken { .. } => "bad_token",
            Refusal::ExpiredToken { .. } => "expired_token",
            Refusal::WrongUnit { .. } => "wrong_unit",
            Refusal::BadPurpose => "bad_purpose",
            Refusal::BreakGlassReasonRequired => "break_glass_reason_required",
            Refusal::InvalidNhsNumber { .. } => "invalid_nhs_number",
            Refusal::RateLimited => "rate_limited",
            Refusal::UnauthenticatedRateLimited => "rate_limited_unauthenticated",
            Refusal::TooManyInFlight => "too_many_requests",
            Refusal::Role => "role",
            Refusal::OfflineTooLong { .. } => "offline_limit",
            Refusal::NotCached(why) => why.as_str(),
            Refusal::CacheUnavailable | Refusal::CacheDamaged => "cache",
            Refusal::BadSearch { .. } => "bad_search",
            Refusal::SearchBuilding => "search_building",
            Refusal::BadRequest { .. } => "bad_request",
            Refusal::WrongUnitRole { .. } => "unit_role",
            Refusal::AuditUnavailable => "audit_unavailable",
            Refusal::PowerFailing => "power_failing",
            Refusal::UnitWiped => "unit_wiped",
        }
    }

    /// The audit outcome.
    pub fn outcome(&self) -> AuditOutcome {
        match self {
            Refusal::NotCached(_) => AuditOutcome::NotFound,
            Refusal::CacheUnavailable
            | Refusal::CacheDamaged
            | Refusal::AuditUnavailable
            | Refusal::SearchBuilding => AuditOutcome::Error,
            _ => AuditOutcome::Denied,
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::NoToken
            | Refusal::NotBearer
            | Refusal::BadToken { .. }
            | Refusal::ExpiredToken { .. }
            | Refusal::WrongUnit { .. } => StatusCode::UNAUTHORIZED,
            Refusal::BadPurpose
            | Refusal::BreakGlassReasonRequired
            | Refusal::InvalidNhsNumber { .. }
            | Refusal::BadSearch { .. }
            | Refusal::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Refusal::WrongUnitRole { .. } => StatusCode::CONFLICT,
            Refusal::RateLimited
            | Refusal::UnauthenticatedRateLimited
            | Refusal::TooManyInFlight => StatusCode::TOO_MANY_REQUESTS,
            Refusal::Role => StatusCode::FORBIDDEN,
            Refusal::NotCached(_) => StatusCode::NOT_FOUND,
            Refusal::CacheUnavailable | Refusal::CacheDamaged => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::OfflineTooLong { .. }
            | Refusal::AuditUnavailable
            | Refusal::SearchBuilding
            | Refusal::PowerFailing
            | Refusal::UnitWiped => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The JSON `error` code (the contract's names).
    pub fn code(&self) -> &'static str {
        match self {
            Refusal::OfflineTooLong { .. } => "offline_too_long",
            Refusal::NotBearer => "bad_token",
            Refusal::UnauthenticatedRateLimited => "rate_limited",
            Refusal::NotCached(_) => "not_cached",
            Refusal::CacheUnavailable => "cache_unavailable",
            Refusal::CacheDamaged => "cache_damaged",
            other => other.reason(),
        }
    }

    /// What the tablet shows.
    pub fn message(&self) -> String {
        match self {
            Refusal::NoToken => "sign in with your shift token (Authorization: Bearer <token>)".into(),
            Refusal::NotBearer => "the Authorization header must be 'Bearer <shift token>'".into(),
            Refusal::BadToken { detail }
            | Refusal::ExpiredToken { detail }
            | Refusal::WrongUnit { detail } => format!("{detail}; sign in again"),
            Refusal::BadPurpose => "X-Purpose-Of-Use must be TREAT or ETREAT".into(),
            Refusal::BreakGlassReasonRequired => {
                "emergency access (ETREAT) needs a reason in X-Break-Glass-Reason".into()
            }
            Refusal::InvalidNhsNumber { detail }
            | Refusal::BadSearch { detail }
            | Refusal::BadRequest { detail }
            | Refusal::WrongUnitRole { detail } => detail.clone(),
            Refusal::RateLimited => "too many requests with this shift token; slow down".into(),
            Refusal::UnauthenticatedRateLimited => {
                "too many requests without a valid shift token from this device; sign in with your shift token".into()
            }
            Refusal::TooManyInFlight => {
                "too many requests at once from this device; wait for the answers already asked for".into()
            }
            Refusal::Role => {
                "your role may search and see demographics, not clinical content".into()
            }
            Refusal::OfflineTooLong { days, limit_days } => format!(
                "this unit has not reached the hub for {days} days, longer than its limit of {limit_days} days: its records are too old to trust and are not shown until it syncs. Connect the unit (vehicle in range, or the depot network) and try again"
            ),
            Refusal::NotCached(NotCached::LinkDown) => {
                "this unit holds no record for this patient and the link to the hub is down".into()
            }
            Refusal::NotCached(NotCached::NotAtHub) => {
                "this unit holds no record for this patient and the hub has none to share".into()
            }
            Refusal::NotCached(NotCached::Refused) => {
                "this unit holds no record for this patient and the hub refused to share one with this unit (your sign-in, or the unit's fetch limit): ask control for the patient's details".into()
            }
            Refusal::NotCached(_) => {
                "this unit holds no record for this patient and could not fetch one in time".into()
            }
            Refusal::CacheUnavailable => {
                "the unit's cache cannot be read; see the unit's status".into()
            }
            Refusal::CacheDamaged => {
                "this patient's cached record is damaged; it will be refreshed at the next sync".into()
            }
            Refusal::SearchBuilding => "this unit is still filling its cache from the hub, and its search by name, birth date and postcode is ready only when that finishes; look up by NHS number meanwhile (that works now)".into(),
            Refusal::AuditUnavailable => "this access cannot be recorded (the audit journal is full or failing), so the unit will not answer it; see the unit's status and tell the fleet team".into(),
            Refusal::PowerFailing => {
                "the unit is losing power and is saving its data; try again when it is back".into()
            }
            Refusal::UnitWiped => "this unit's records were destroyed (tamper or remote wipe) and it serves nothing until it is re-provisioned; use another unit".into(),
        }
    }

    /// The answer: `{"error", "message"}` (plus `reason` and `link` for `not_cached`).
    pub fn response(&self, link: Link) -> Response {
        let body = match self {
            Refusal::NotCached(why) => json!({
                "error": self.code(),
                "reason": why.as_str(),
                "message": self.message(),
                "link": link,
            }),
            _ => json!({"error": self.code(), "message": self.message()}),
        };
        (self.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_statuses_and_audit_reasons_keep_the_contract_names() {
        let cases = [
            (Refusal::NoToken, 401, "no_token", "no_token"),
            (Refusal::NotBearer, 401, "bad_token", "bad_token"),
            (
                Refusal::ExpiredToken { detail: "x".into() },
                401,
                "expired_token",
                "expired_token",
            ),
            (Refusal::RateLimited, 429, "rate_limited", "rate_limited"),
            (Refusal::Role, 403, "role", "role"),
            (
                Refusal::OfflineTooLong {
                    days: 9,
                    limit_days: 7,
                },
                503,
                "offline_too_long",
                "offline_limit",
            ),
            (
                Refusal::NotCached(NotCached::TimedOut),
                404,
                "not_cached",
                "fetch_timed_out",
            ),
            (Refusal::CacheDamaged, 500, "cache_damaged", "cache"),
            (
                Refusal::AuditUnavailable,
                503,
                "audit_unavailable",
                "audit_unavailable",
            ),
        ];
        for (r, status, code, reason) in cases {
            assert_eq!(r.status().as_u16(), status, "{r:?}");
            assert_eq!(r.code(), code, "{r:?}");
            assert_eq!(r.reason(), reason, "{r:?}");
            assert!(!r.message().is_empty());
        }
        assert_eq!(
            Refusal::NotCached(NotCached::LinkDown).outcome(),
            AuditOutcome::NotFound
        );
        assert_eq!(Refusal::CacheUnavailable.outcome(), AuditOutcome::Error);
        assert_eq!(Refusal::Role.outcome(), AuditOutcome::Denied);
    }
}
