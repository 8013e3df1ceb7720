//! `POST /v1/patients/{nhs}/conveying`: the crew says which emergency department they are
//! bringing the patient to, so the hub can put the record on that department's triage kiosks
//! before the ambulance arrives.
//!
//! Body `{"site": "RJ122"}` (the department's ODS code). Needs a clinical shift token (purpose
//! `TREAT` or `ETREAT` as for a read); answered 202 once the conveyance is journalled as a
//! `convey` audit event with `data.destination`. The hub acts on the event when the unit's
//! audit trail reaches it (at once with the link up, or when it returns), and only if the same
//! crew member read the patient's record on this unit first (hub `prefetch.rs`). Only vehicles
//! convey (409 `unit_role` on a kiosk).

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use edge_proto::audit::{AuditAction, AuditOutcome};
use edge_proto::ids::{OdsCode, StaffRole, UnitRole};
use edge_proto::nhs::NhsNumber;
use serde_json::json;

use super::audit::Access;
use super::auth::{authenticate, refuse};
use super::lookup::{set_caller, unavailable, Client};
use super::refusal::Refusal;
use super::AppState;
use crate::status::Link;

/// The most a conveyance body may hold.
const MAX_BODY: usize = 1_024;

/// `POST /v1/patients/{nhs}/conveying`
pub async fn conveying(
    State(s): State<AppState>,
    client: Client,
    Path(nhs): Path<String>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    let client: Option<SocketAddr> = client.map(|Extension(ConnectInfo(a))| a);
    if let Some(r) = unavailable(&s) {
        return r.response(s.status.link());
    }
    let mut a = Access::new(AuditAction::Convey, "lan");
    a.client = client.map(|c| c.ip().to_string());
    let caller = match authenticate(&s.policy, &h) {
        Ok(c) => c,
        Err(b) => {
            a.caller = b.claims;
            a.patient = NhsNumber::parse(&nhs).ok();
            return refuse(&s, a, b.refusal, client).await;
        }
    };
    set_caller(&mut a, &caller);
    let nhs = match NhsNumber::parse(&nhs) {
        Ok(n) => n,
        Err(e) => {
            let r = Refusal::InvalidNhsNumber {
                detail: e.to_string(),
            };
            return s.audit.refuse(a, r).await;
        }
    };
    a.patient = Some(nhs);
    if caller.claims.role != StaffRole::Clinical {
        return s.audit.refuse(a, Refusal::Role).await;
    }
    if s.status.role != UnitRole::Vehicle {
        let r = Refusal::WrongUnitRole {
            detail: "only an ambulance's unit conveys patients; this is an ED kiosk".into(),
        };
        return s.audit.refuse(a, r).await;
    }
    let site = match destination(&body) {
        Ok(site) => site,
        Err(detail) => return s.audit.refuse(a, Refusal::BadRequest { detail }).await,
    };
    a.data.destination = Some(site.clone());
    a.outcome = AuditOutcome::Ok;
    let link = s.status.link();
    let message = match link {
        Link::Up => format!(
            "{site} will be sent this patient's record for its emergency department's kiosks now"
        ),
        Link::Down => format!(
            "no link to the hub: {site} will be sent this patient's record for its emergency department's kiosks when the link returns"
        ),
    };
    let reply = (
        StatusCode::ACCEPTED,
        Json(json!({
            "site": site.as_str(),
            "link": link,
            "message": message,
        })),
    )
        .into_response();
    s.audit.answer(a, reply).await
}

/// The destination's ODS code from `{"site": "RJ122"}`.
fn destination(body: &[u8]) -> Result<OdsCode, String> {
    if body.len() > MAX_BODY {
        return Err(format!("the body is over {MAX_BODY} bytes"));
    }
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Body {
        site: String,
    }
    let b: Body = serde_json::from_slice(body)
        .map_err(|e| format!("expected {{\"site\": \"ODS code\"}}: {e}"))?;
    OdsCode::parse(b.site.trim()).map_err(|e| format!("site: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_destination_is_an_ods_code() {
        assert_eq!(
            destination(br#"{"site":"RJ122"}"#).unwrap().as_str(),
            "RJ122"
        );
        assert!(destination(br#"{"site":""}"#).is_err());
        assert!(destination(br#"{"site":"RJ122","x":1}"#).is_err());
        assert!(destination(b"not json").is_err());
        assert!(destination(&[b' '; 2_000]).is_err());
    }
}
