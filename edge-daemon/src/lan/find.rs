//! `GET /v1/search?family=&given=&birth_date=&postcode=`: demographic search over the cache
//! (no clinical content; every role may search), audited like a lookup.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use edge_proto::audit::{AuditAction, AuditOutcome};
use serde_json::json;

use super::audit::Access;
use axum::extract::ConnectInfo;
use axum::Extension;

use super::auth::{authenticate, refuse};
use super::lookup::{unavailable, Client};
use super::policy::Pace;
use super::refusal::Refusal;
use super::AppState;
use crate::search::{SearchFailed, SearchQuery};

/// Decode `a=b&c=d` (`application/x-www-form-urlencoded`: percent-decoding, `+` as space,
/// malformed escapes kept as they are); at most 32 pairs.
pub fn query_pairs(q: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(q.as_bytes())
        .take(32)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// `GET /v1/search`
pub async fn search(
    State(s): State<AppState>,
    client: Client,
    RawQuery(q): RawQuery,
    h: HeaderMap,
) -> Response {
    if let Some(r) = unavailable(&s) {
        return r.response(s.status.link());
    }
    let client = client.map(|Extension(ConnectInfo(a))| a);
    let mut a = Access::new(AuditAction::Search, "lan");
    a.client = client.map(|c| c.ip().to_string());
    let caller = match authenticate(&s.policy, &h) {
        Ok(c) => c,
        Err(b) => {
            a.caller = b.claims;
            return refuse(&s, a, b.refusal, client).await;
        }
    };
    a.caller = Some(caller.claims.clone());
    a.purpose = caller.purpose;
    a.break_glass_reason = caller.reason.clone();
    a.incident_ref = caller.incident.clone();
    if let Pace::TooFast = s.policy.pace(&caller.claims.token_id, None) {
        return s.audit.refuse(a, Refusal::RateLimited).await;
    }
    let pairs = query_pairs(q.as_deref().unwrap_or(""));
    let outcome = match SearchQuery::parse_params(&pairs)
        .map_err(SearchFailed::Query)
        .and_then(|query| s.cache.search(&query))
    {
        Ok(o) => o,
        Err(SearchFailed::Query(e)) => {
            let detail = e.to_string();
            return s.audit.refuse(a, Refusal::BadSearch { detail }).await;
        }
        Err(SearchFailed::Store(crate::cache::CacheError::SearchBuilding)) => {
            return s.audit.refuse(a, Refusal::SearchBuilding).await;
        }
        Err(SearchFailed::Store(e)) => {
            tracing::error!(error = %e, "search: the cache cannot be read");
            return s.audit.refuse(a, Refusal::CacheUnavailable).await;
        }
    };
    a.outcome = if outcome.candidates.is_empty() {
        AuditOutcome::NotFound
    } else {
        AuditOutcome::Ok
    };
    a.data.candidates = Some(u32::try_from(outcome.candidates.len()).unwrap_or(u32::MAX));
    let reply = (
        [(header::CACHE_CONTROL, "no-store")],
        Json(json!({
            "candidates": outcome.candidates,
            "matched": outcome.matched,
            "link": s.status.link(),
        })),
    )
        .into_response();
    s.audit.answer(a, reply).await
}

#[cfg(test)]
mod tests {
    use super::query_pairs;
    use proptest::prelude::*;

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
