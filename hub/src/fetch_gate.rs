//! What stands between a unit's on-demand fetch and the hub's records: the requesting shift
//! token (verified with the fleet's `token_verify` key, bound to the connection's unit,
//! checked against the fleet's signed deny list), the fetch budget
//! ([`super::fetch_budget`]), and the hub's own audit trail of every fetch.
//!
//! The hub records its own access events in the audit repository under a device id of its own
//! (`hub-<name>`), hash-chained like a unit's journal, so `/admin/audit` and
//! `/admin/verify` treat them alike: one event per fetch (device in `client.identity`, staff,
//! patient, purpose, outcome) and an alert event (`action: alert`) for each budget alert and
//! for two live sessions on one unit certificate. A fetch is answered only once its event is
//! stored; a fetch that cannot be recorded is refused (`audit_unavailable`).

use std::sync::{Arc, Mutex};

use edge_proto::audit::{
    uuid_from_bytes, AccessData, AuditAction, AuditEvent, AuditOutcome, ClientInfo, Hash32,
    Purpose, AUDIT_SCHEMA, GENESIS,
};
use edge_proto::ids::{DeviceId, StaffRole};
use edge_proto::nhs::NhsNumber;
use edge_proto::sync::wire::MAX_FETCH_TOKEN_BYTES;
use edge_proto::sync::{BearerToken, FetchRefusal};
use edge_proto::time::UnixMillis;
use edge_proto::token::{self, ShiftClaims, TokenError};
use edge_runtime::config::HubConfig;
use tracing::warn;

use super::fetch_budget::{Alert, BudgetConfig, FetchBudget};
use crate::audit::AuditRepo;
use crate::denylist::TokenDenyList;

/// A fetch the gate let through.
#[derive(Debug, Clone)]
pub struct Granted {
    pub claims: ShiftClaims,
    pub purpose: Purpose,
    pub nhs: NhsNumber,
    /// Past the budget (served, alerted).
    pub over_budget: bool,
}

/// The gate's verdict on one fetch, and the budget alerts to raise.
#[derive(Debug)]
pub struct Verdict {
    pub result: Result<Granted, FetchRefusal>,
    /// The token's claims, when it verified (for the audit of a refusal).
    pub claims: Option<ShiftClaims>,
    pub alerts: Vec<Alert>,
}

/// One event the hub records itself.
#[derive(Debug, Clone)]
pub struct HubEvent<'a> {
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    pub reason: Option<&'a str>,
    pub claims: Option<&'a ShiftClaims>,
    pub purpose: Purpose,
    pub patient: Option<NhsNumber>,
    pub version: Option<u64>,
    /// The unit concerned.
    pub device: &'a DeviceId,
    pub remote: Option<String>,
}

/// Token checks, budget and the hub's own audit trail.
#[derive(Debug)]
pub struct FetchGate {
    hub_device: DeviceId,
    token_key: Option<[u8; 32]>,
    denylist: Arc<TokenDenyList>,
    budget: Mutex<FetchBudget>,
    /// The database every hub shares, when on PostgreSQL: the budget is counted there, so a
    /// unit or staff member has one budget across hubs. `budget` above is the fallback while
    /// the database cannot be reached.
    shared: Option<Arc<crate::pg::PgStore>>,
    budget_config: BudgetConfig,
    audit: Arc<AuditRepo>,
}

/// The device id the hub records its own events under.
pub fn hub_device_id(name: &str) -> DeviceId {
    let clean: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(60)
        .collect();
    DeviceId::parse(&format!("hub-{clean}"))
        .or_else(|_| DeviceId::parse("hub"))
        .unwrap_or_else(|_| unreachable_device())
}

#[allow(clippy::unwrap_used)] // "hub" always parses: a constant, checked by a test.
fn unreachable_device() -> DeviceId {
    DeviceId::parse("hub").unwrap()
}

impl FetchGate {
    /// The gate for a hub: its shift-token key (a key that cannot be read refuses every fetch,
    /// with a warning), the hub's deny list, and the budget from `[sync]`.
    pub fn new(
        config: &HubConfig,
        audit: Arc<AuditRepo>,
        denylist: Arc<TokenDenyList>,
        shared: Option<Arc<crate::pg::PgStore>>,
    ) -> FetchGate {
        let budget_config = BudgetConfig {
            unit_per_hour: config.sync.fetch_unit_per_hour,
            staff_per_hour: config.sync.fetch_staff_per_hour,
            ceiling_factor: config.sync.fetch_ceiling_factor,
        };
        let token_key = match edge_runtime::keys::load_ed25519_public(&config.keys.token_verify) {
            Ok(k) => Some(k),
            Err(e) => {
                warn!(error = %e, "cannot load the shift-token key ([keys] token_verify): every on-demand fetch will be refused");
                None
            }
        };
        FetchGate {
            hub_device: hub_device_id(&config.name),
            token_key,
            denylist,
            budget: Mutex::new(FetchBudget::new(budget_config)),
            shared,
            budget_config,
            audit,
        }
    }

    pub fn hub_device(&self) -> &DeviceId {
        &self.hub_device
    }

    /// Verify a fetch's token for `device` at `now`.
    pub fn check_token(
        &self,
        now: UnixMillis,
        device: &DeviceId,
        token: &BearerToken,
    ) -> Result<ShiftClaims, Box<(FetchRefusal, Option<ShiftClaims>)>> {
        if token.is_empty() {
            return Err(Box::new((FetchRefusal::NoToken, None)));
        }
        if token.as_str().len() > MAX_FETCH_TOKEN_BYTES {
            return Err(Box::new((FetchRefusal::BadToken, None)));
        }
        let Some(key) = &self.token_key else {
            return Err(Box::new((FetchRefusal::BadToken, None)));
        };
        let claims = token::verify(token.as_str(), key, now, device).map_err(|e| match e {
            TokenError::WrongUnit { .. } => Box::new((FetchRefusal::WrongUnit, None)),
            _ => Box::new((FetchRefusal::BadToken, None)),
        })?;
        if self.denylist.denies(&claims, now) {
            return Err(Box::new((FetchRefusal::DeniedToken, Some(claims))));
        }
        if claims.role != StaffRole::Clinical {
            return Err(Box::new((FetchRefusal::Role, Some(claims))));
        }
        Ok(claims)
    }

    /// Decide on one fetch: token, then budget.
    pub fn admit(
        &self,
        now: UnixMillis,
        device: &DeviceId,
        token: &BearerToken,
        purpose: Purpose,
        nhs: NhsNumber,
    ) -> Verdict {
        let claims = match self.check_token(now, device, token) {
            Ok(c) => c,
            Err(e) => {
                let (reason, claims) = *e;
                return Verdict {
                    result: Err(reason),
                    claims,
                    alerts: Vec::new(),
                };
            }
        };
        let local = || {
            self.budget.lock().unwrap_or_else(|p| p.into_inner()).check(
                now,
                device.as_str(),
                &claims.staff_id,
                &nhs,
            )
        };
        let d = match &self.shared {
            None => local(),
            Some(pg) => match pg.fetch_check(
                self.budget_config,
                now,
                device.as_str(),
                &claims.staff_id,
                &nhs,
            ) {
                Ok(d) => d,
                Err(e) => {
                    warn!(error = %e, "cannot reach the shared fetch budget; counting on this hub alone until it returns");
                    local()
                }
            },
        };
        let result = if d.serve {
            Ok(Granted {
                claims: claims.clone(),
                purpose,
                nhs,
                over_budget: d.over_budget,
            })
        } else {
            Err(FetchRefusal::OverCeiling)
        };
        Verdict {
            result,
            claims: Some(claims),
            alerts: d.alerts,
        }
    }

    /// Append one event to the hub's own chain in the audit repository (durable on return).
    pub fn record(&self, now: UnixMillis, ev: &HubEvent<'_>) -> anyhow::Result<()> {
        let mut id = [0u8; 16];
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new()
            .fill(&mut id)
            .map_err(|_| anyhow::anyhow!("no randomness for an event id"))?;
        let e = AuditEvent {
            schema: AUDIT_SCHEMA,
            event_id: uuid_from_bytes(id),
            device_id: self.hub_device.clone(),
            seq: 0,
            prev_hash: GENESIS,
            hash: Hash32::default(),
            recorded: now,
            clock_offset_ms: 0,
            action: ev.action,
            outcome: ev.outcome,
            outcome_reason: ev.reason.map(str::to_owned),
            staff_id: ev.claims.map(|c| c.staff_id.clone()),
            staff_name: ev.claims.map(|c| c.staff_name.clone()),
            role: ev.claims.map(|c| c.role),
            org_ods: ev.claims.and_then(|c| c.org_ods.clone()),
            auth: ev.claims.map(|c| c.token_id.clone()),
            purpose: ev.purpose,
            break_glass_reason: None,
            patient: ev.patient,
            data: AccessData {
                version: ev.version,
                interface: Some("hub_fetch".into()),
                ..AccessData::default()
            },
            client: ClientInfo {
                address: ev.remote.clone(),
                identity: Some(ev.device.as_str().to_owned()),
            },
            incident_ref: None,
            offline: false,
        };
        // Sealed with the chain's next seq inside the repository's lock (a row lock on
        // PostgreSQL): hubs sharing the database append to the chain in turn.
        let st = self.audit.append(&self.hub_device, e)?;
        anyhow::ensure!(
            st.problems.is_empty() && st.new == 1,
            "the hub's own audit chain refused an event: {:?}",
            st.problems
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_device_ids_parse() {
        assert_eq!(hub_device_id("127.0.0.1").as_str(), "hub-127.0.0.1");
        assert_eq!(hub_device_id("hub one/α").as_str(), "hub-hub-one--");
        assert_eq!(unreachable_device().as_str(), "hub");
    }
}
