//! Recording accesses: every LAN answer — found, not found or refused — is an audit event made
//! durable (fsync'd in the journal) **before** the answer goes out. [`Auditor::answer`] is the
//! one place that records and then replies; if the access cannot be recorded the unit refuses
//! to answer (503 `audit_unavailable`) rather than serve unaudited (hazard H5).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::response::Response;
use edge_proto::audit::{
    AccessData, AuditAction, AuditEvent, AuditOutcome, ClientInfo, Hash32, Purpose, AUDIT_SCHEMA,
};
use edge_proto::ids::DeviceId;
use edge_proto::nhs::NhsNumber;
use edge_proto::token::ShiftClaims;
use edge_runtime::clock::SharedClock;
use tracing::warn;

use super::metrics::Metrics;
use super::refusal::Refusal;
use crate::journal::Journal;
use crate::status::{Link, Status};

/// Shift tokens whose first use (a login event) has been recorded; bounded.
const MAX_SEEN_TOKENS: usize = 16_384;

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
    /// The client's address (the tablet or kiosk).
    pub client: Option<String>,
}

impl Access {
    /// An access through `interface` (`lan`, `fhir`), refused until the handler says otherwise.
    pub fn new(action: AuditAction, interface: &str) -> Access {
        Access {
            action,
            outcome: AuditOutcome::Denied,
            reason: None,
            caller: None,
            purpose: Purpose::Treat,
            break_glass_reason: None,
            incident_ref: None,
            patient: None,
            data: AccessData {
                interface: Some(interface.into()),
                asked_nhs: None,
                ..AccessData::default()
            },
            client: None,
        }
    }
}

/// The access could not be made durable.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("the audit journal refused the event: {0}")]
    Journal(#[from] crate::journal::JournalError),
    #[error("no random bytes for the event id")]
    Random,
}

/// Records accesses in the audit journal.
#[derive(Clone)]
pub struct Auditor {
    journal: Option<Journal>,
    device: DeviceId,
    status: Arc<Status>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
    seen_tokens: Arc<Mutex<HashSet<String>>>,
    wake: Option<Arc<tokio::sync::Notify>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("device", &self.device)
            .finish()
    }
}

/// A random (v4) event id; an RNG failure is an error, never a predictable id.
fn random_uuid() -> Result<String, AuditError> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| AuditError::Random)?;
    Ok(uuid::Builder::from_random_bytes(b)
        .into_uuid()
        .hyphenated()
        .to_string())
}

impl Auditor {
    /// An auditor over the unit's journal (`None`: nothing is recorded — tests only).
    pub fn new(
        journal: Option<Journal>,
        device: DeviceId,
        status: Arc<Status>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Auditor {
        Auditor {
            journal,
            device,
            status,
            clock,
            metrics,
            seen_tokens: Arc::new(Mutex::new(HashSet::new())),
            wake: None,
        }
    }

    /// Wake the audit uploader after every append (it then uploads at once, not on a timer).
    pub fn with_wake(mut self, wake: Arc<tokio::sync::Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    pub fn journal(&self) -> Option<&Journal> {
        self.journal.as_ref()
    }

    /// The journal is into the reserve kept for authenticated accesses (the last tenth of its
    /// disk budget): refusals without a token are no longer recorded, and `/healthz` says
    /// `degraded`.
    pub fn in_reserve(&self) -> bool {
        self.journal.as_ref().is_some_and(|j| {
            let st = j.status();
            st.bytes.saturating_add(st.disk_budget_bytes / 10) >= st.disk_budget_bytes
        })
    }

    fn event(
        &self,
        a: &Access,
        action: AuditAction,
        outcome: AuditOutcome,
    ) -> Result<AuditEvent, AuditError> {
        let live = self.status.live();
        Ok(AuditEvent {
            schema: AUDIT_SCHEMA,
            event_id: random_uuid()?,
            device_id: self.device.clone(),
            seq: 0,
            prev_hash: Hash32::default(),
            hash: Hash32::default(),
            recorded: self.clock.wall(),
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
            client: ClientInfo {
                address: a.client.clone(),
                identity: None,
            },
            incident_ref: a.incident_ref.clone(),
            offline: live.link == Link::Down,
        })
    }

    async fn append(&self, ev: AuditEvent) -> Result<(), AuditError> {
        let Some(j) = &self.journal else {
            return Ok(());
        };
        let t0 = std::time::Instant::now();
        let r = j.append(ev).await;
        self.metrics.audit_append(t0.elapsed(), r.is_ok());
        r?;
        if let Some(w) = &self.wake {
            w.notify_one();
        }
        // Read the journal under the status lock, so a concurrent update from the uploader
        // can never leave an older figure behind this one.
        self.status.update(|l| {
            l.audit_pending = j.pending();
            l.audit_uploaded_seq = j.uploaded_seq();
        });
        Ok(())
    }

    /// Record an access (and, the first time a token is used, a login; for break-glass, a
    /// separate security alert). Returns only once the events are durable.
    pub async fn record(&self, a: &Access) -> Result<(), AuditError> {
        if let Some(c) = &a.caller {
            let first = {
                let mut seen = self.seen_tokens.lock().unwrap_or_else(|p| p.into_inner());
                if seen.len() >= MAX_SEEN_TOKENS && !seen.contains(&c.token_id) {
                    // Forget, rather than grow: a forgotten token's next use records one more
                    // login, which is harmless.
                    seen.clear();
                }
                seen.insert(c.token_id.clone())
            };
            if first {
                let mut login = a.clone();
                login.patient = None;
                login.reason = None;
                login.data = AccessData {
                    interface: a.data.interface.clone(),
                    asked_nhs: None,
                    ..AccessData::default()
                };
                self.append(self.event(&login, AuditAction::Login, AuditOutcome::Ok)?)
                    .await?;
            }
        }
        self.append(self.event(a, a.action, a.outcome)?).await?;
        if a.purpose == Purpose::EmergencyTreat && a.break_glass_reason.is_some() {
            self.append(self.event(a, AuditAction::Alert, a.outcome)?)
                .await?;
        }
        Ok(())
    }

    /// Record `a`, then reply: `reply` goes out only once the access is durable; otherwise
    /// 503 `audit_unavailable`.
    pub async fn answer(&self, a: Access, reply: Response) -> Response {
        match self.record(&a).await {
            Ok(()) => reply,
            Err(e) => {
                warn!(error = %e, "cannot record an access: refusing to answer unaudited");
                Refusal::AuditUnavailable.response(self.status.link())
            }
        }
    }

    /// Record `a` as refused for `r`, then send the refusal.
    pub async fn refuse(&self, mut a: Access, r: Refusal) -> Response {
        a.outcome = r.outcome();
        a.reason = Some(r.reason());
        let reply = r.response(self.status.link());
        self.answer(a, reply).await
    }
}
