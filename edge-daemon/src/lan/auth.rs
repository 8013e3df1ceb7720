//! Who is asking and why: the shift token (`Authorization: Bearer`), the purpose of use
//! (`X-Purpose-Of-Use: TREAT | ETREAT`), a break-glass reason in any language, and the CAD
//! incident reference.

use std::net::SocketAddr;

use axum::http::HeaderMap;
use axum::response::Response;
use edge_proto::audit::Purpose;
use edge_proto::token::{ShiftClaims, TokenError};

use super::audit::Access;
use super::policy::{AccessPolicy, PreAuth};
use super::refusal::Refusal;
use super::AppState;

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub claims: ShiftClaims,
    pub purpose: Purpose,
    pub reason: Option<String>,
    pub incident: Option<String>,
}

/// A refusal, with the claims when the token itself was good (so the audit names the caller).
#[derive(Debug)]
pub struct Refused {
    pub refusal: Refusal,
    pub claims: Option<ShiftClaims>,
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

/// Check the token and the purpose headers.
pub fn authenticate(policy: &AccessPolicy, h: &HeaderMap) -> Result<Caller, Box<Refused>> {
    let refuse = |refusal, claims| Box::new(Refused { refusal, claims });
    let Some(auth) = header_str(h, "authorization") else {
        return Err(refuse(Refusal::NoToken, None));
    };
    let Some(tok) = auth
        .strip_prefix("Bearer ")
        .or_else(|| auth.strip_prefix("bearer "))
    else {
        return Err(refuse(Refusal::NotBearer, None));
    };
    let claims = policy.verify(tok).map_err(|e| {
        let detail = e.to_string();
        let r = match e {
            TokenError::Expired { .. } => Refusal::ExpiredToken { detail },
            TokenError::WrongUnit { .. } => Refusal::WrongUnit { detail },
            _ => Refusal::BadToken { detail },
        };
        refuse(r, None)
    })?;
    let purpose = match header_str(h, "x-purpose-of-use") {
        None => Purpose::Treat,
        Some(p) if p.eq_ignore_ascii_case("TREAT") => Purpose::Treat,
        Some(p) if p.eq_ignore_ascii_case("ETREAT") => Purpose::EmergencyTreat,
        Some(_) => return Err(refuse(Refusal::BadPurpose, Some(claims))),
    };
    let reason = break_glass_reason(h);
    if purpose == Purpose::EmergencyTreat && reason.is_none() {
        return Err(refuse(Refusal::BreakGlassReasonRequired, Some(claims)));
    }
    let incident = header_str(h, "x-incident-ref").map(|r| r.chars().take(64).collect());
    Ok(Caller {
        claims,
        purpose,
        reason,
        incident,
    })
}

/// Refuse a request. A refusal for want of a valid token is limited and recorded in aggregate
/// per client address (one event per minute with a count; 429 past the client's rate), and is
/// not recorded at all once the journal is into the reserve kept for authenticated accesses;
/// every other refusal is recorded like any access.
pub async fn refuse(
    s: &AppState,
    mut a: Access,
    r: Refusal,
    client: Option<SocketAddr>,
) -> Response {
    let (Some(client), true) = (client, r.is_unauthenticated()) else {
        return s.audit.refuse(a, r).await;
    };
    a.client = Some(client.ip().to_string());
    match s.policy.refused_without_token(client.ip()) {
        PreAuth::TooFast => Refusal::UnauthenticatedRateLimited.response(s.status.link()),
        PreAuth::Counted => r.response(s.status.link()),
        PreAuth::Record { count } => {
            if s.audit.in_reserve() {
                s.metrics.unrecorded_refusals(count);
                return r.response(s.status.link());
            }
            a.data.refusals = Some(count);
            s.audit.refuse(a, r).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{break_glass_reason, MAX_REASON_CHARS};
    use axum::http::{HeaderMap, HeaderValue};

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
}
