//! ED-kiosk pre-fetch, pushed by the hub on the strength of a crew's audited access.
//!
//! An ambulance crew says where they are taking the patient (`POST
//! /v1/patients/{nhs}/conveying` on their unit, journalled as a `convey` audit event with
//! `data.destination`, an ODS code). When that event reaches the hub in the unit's audit
//! upload, the hub pushes the patient's current record to the emergency-department kiosks
//! enrolled at that site (`--role kiosk --site ODS`), so triage has it before the ambulance
//! arrives — and it pushes **only** on the strength of the crew's own audited access
//! ([`decide`]):
//!
//! - the conveyance comes from a vehicle the inventory lists and has not revoked;
//! - it names a staff member (the shift token's), a patient and a destination;
//! - it is recent (recorded within [`MAX_AGE_MS`] by hub time);
//! - the same crew member on the same unit read that patient's record successfully within
//!   [`PRIOR_READ_MS`] before (their read is in the audit repository: the unit journals every
//!   read and uploads in order).
//!
//! A kiosk's certificate pulls nothing here: the kiosk does not ask, the hub decides. Each push
//! is recorded first as the hub's own access event — device the kiosk, staff the crew member,
//! purpose `TREAT`, reason `prefetch_conveyance` — so "who saw patient X" includes it. A kiosk
//! that is not connected gets the push when it next connects, if it is still fresh
//! ([`PENDING_TTL_MS`], at most [`MAX_PENDING`] per kiosk, kept in memory only).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use edge_proto::audit::{AuditAction, AuditEvent, AuditOutcome};
use edge_proto::ids::{DeviceId, OdsCode, UnitRole};
use edge_proto::nhs::NhsNumber;
use edge_proto::time::UnixMillis;
use edge_proto::token::{ShiftClaims, TOKEN_VERSION};
use edge_runtime::inventory::Inventory;

/// A conveyance older than this (by hub time) pushes nothing.
pub const MAX_AGE_MS: i64 = 6 * 60 * 60 * 1000;
/// The crew's read of the patient must be at most this long before the conveyance.
pub const PRIOR_READ_MS: i64 = 12 * 60 * 60 * 1000;
/// How long a push waits for a kiosk that is not connected.
pub const PENDING_TTL_MS: i64 = 6 * 60 * 60 * 1000;
/// Pushes waiting per kiosk, at most (the oldest is dropped).
pub const MAX_PENDING: usize = 256;

/// One record to push to one kiosk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefetch {
    pub nhs: NhsNumber,
    /// The crew member whose access this push stands on (for the hub's audit event).
    pub claims: ShiftClaims,
    /// The vehicle the crew used.
    pub from: DeviceId,
    /// Dropped if not delivered by then.
    pub expires: UnixMillis,
}

/// Why a conveyance pushes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    NotAConveyance,
    Incomplete,
    NotAVehicle,
    TooOld,
    NoPriorRead,
    NoKioskAtSite(OdsCode),
}

impl Skip {
    pub fn as_str(&self) -> &'static str {
        match self {
            Skip::NotAConveyance => "not_a_conveyance",
            Skip::Incomplete => "incomplete",
            Skip::NotAVehicle => "not_a_vehicle",
            Skip::TooOld => "too_old",
            Skip::NoPriorRead => "no_prior_read",
            Skip::NoKioskAtSite(_) => "no_kiosk_at_site",
        }
    }
}

/// Which kiosks get `ev`'s patient, and on whose access: the whole policy, without I/O.
/// `prior` are audit events about the patient (any order), `now` hub time.
pub fn decide(
    inv: &Inventory,
    ev: &AuditEvent,
    prior: &[AuditEvent],
    now: UnixMillis,
) -> Result<(Prefetch, Vec<DeviceId>), Skip> {
    if ev.action != AuditAction::Convey || ev.outcome != AuditOutcome::Ok {
        return Err(Skip::NotAConveyance);
    }
    let (Some(nhs), Some(site), Some(staff_id)) = (
        ev.patient,
        ev.data.destination.as_ref(),
        ev.staff_id.as_ref(),
    ) else {
        return Err(Skip::Incomplete);
    };
    match inv.unit(&ev.device_id) {
        Some(u) if u.role == UnitRole::Vehicle && !u.revoked() => {}
        _ => return Err(Skip::NotAVehicle),
    }
    // The unit's clock, corrected by its offset from the hub's at its last contact.
    let at = ev.recorded.plus_ms(ev.clock_offset_ms);
    if now.0.saturating_sub(at.0) > MAX_AGE_MS {
        return Err(Skip::TooOld);
    }
    let read_before = prior.iter().any(|p| {
        p.device_id == ev.device_id
            && p.staff_id.as_deref() == Some(staff_id.as_str())
            && p.patient == Some(nhs)
            && matches!(p.action, AuditAction::Read | AuditAction::BreakGlass)
            && p.outcome == AuditOutcome::Ok
            && p.seq < ev.seq
            && ev.recorded.0.saturating_sub(p.recorded.0) <= PRIOR_READ_MS
    });
    if !read_before {
        return Err(Skip::NoPriorRead);
    }
    let kiosks: Vec<DeviceId> = inv
        .units
        .iter()
        .filter(|u| u.role == UnitRole::Kiosk && !u.revoked() && u.site.as_ref() == Some(site))
        .map(|u| u.device_id.clone())
        .collect();
    if kiosks.is_empty() {
        return Err(Skip::NoKioskAtSite(site.clone()));
    }
    let claims = ShiftClaims {
        v: TOKEN_VERSION,
        token_id: ev.auth.clone().unwrap_or_default(),
        staff_id: staff_id.clone(),
        staff_name: ev.staff_name.clone().unwrap_or_default(),
        role: ev.role.unwrap_or(edge_proto::ids::StaffRole::Clinical),
        org_ods: ev.org_ods.clone(),
        device: Some(ev.device_id.clone()),
        issued_at: at,
        expires_at: at,
    };
    Ok((
        Prefetch {
            nhs,
            claims,
            from: ev.device_id.clone(),
            expires: now.plus_ms(PENDING_TTL_MS),
        },
        kiosks,
    ))
}

/// Pushes waiting for kiosks that were not connected.
#[derive(Debug, Default)]
pub struct Pending {
    by_kiosk: Mutex<HashMap<DeviceId, VecDeque<Prefetch>>>,
}

impl Pending {
    /// Keep `p` for `kiosk` (replacing an older push of the same patient; the oldest dropped
    /// past [`MAX_PENDING`]).
    pub fn keep(&self, kiosk: &DeviceId, p: Prefetch) {
        let mut m = self.by_kiosk.lock().unwrap_or_else(|e| e.into_inner());
        let q = m.entry(kiosk.clone()).or_default();
        q.retain(|x| x.nhs != p.nhs);
        if q.len() >= MAX_PENDING {
            q.pop_front();
        }
        q.push_back(p);
    }

    /// Everything still fresh for `kiosk`, taken.
    pub fn take(&self, kiosk: &DeviceId, now: UnixMillis) -> Vec<Prefetch> {
        let mut m = self.by_kiosk.lock().unwrap_or_else(|e| e.into_inner());
        m.remove(kiosk)
            .map(|q| q.into_iter().filter(|p| p.expires.0 > now.0).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::audit::{AccessData, ClientInfo, Hash32, Purpose, AUDIT_SCHEMA};

    fn inv() -> Inventory {
        let json = serde_json::json!({
            "format": edge_runtime::inventory::INVENTORY_FORMAT,
            "fleet_id": "f",
            "created_at": "2026-01-01T00:00:00Z",
            "crl_number": 1,
            "hubs": [],
            "revoked": [],
            "units": [
                unit("LAS-AMB-0001", "vehicle", None),
                unit("RJ122-ED-1", "kiosk", Some("RJ122")),
                unit("RJ122-ED-2", "kiosk", Some("RJ122")),
                unit("RJ1-ED-1", "kiosk", Some("RJ1")),
            ],
        });
        serde_json::from_value(json).unwrap()
    }

    fn unit(id: &str, role: &str, site: Option<&str>) -> serde_json::Value {
        let cert = serde_json::json!({
            "serial": "00", "not_before": "2026-01-01T00:00:00Z", "not_after": "2026-01-08T00:00:00Z"
        });
        serde_json::json!({
            "device_id": id, "role": role, "site": site, "cohorts": [],
            "hub": "127.0.0.1:4433", "hub_name": "h", "lan": "127.0.0.1:8443", "lan_names": [],
            "bundle_dir": "/x", "public_key": "", "lan_public_key": "",
            "cert": cert.clone(), "lan_cert": cert, "certs": [],
            "enrolled_at": "2026-01-01T00:00:00Z"
        })
    }

    fn event(seq: u64, action: AuditAction, at: i64) -> AuditEvent {
        AuditEvent {
            schema: AUDIT_SCHEMA,
            event_id: format!("e{seq}"),
            device_id: DeviceId::parse("LAS-AMB-0001").unwrap(),
            seq,
            prev_hash: Hash32::default(),
            hash: Hash32::default(),
            recorded: UnixMillis(at),
            clock_offset_ms: 0,
            action,
            outcome: AuditOutcome::Ok,
            outcome_reason: None,
            staff_id: Some("555000111222".into()),
            staff_name: Some("PARAMEDIC, Test".into()),
            role: None,
            org_ods: None,
            auth: Some("t".into()),
            purpose: Purpose::Treat,
            break_glass_reason: None,
            patient: Some(NhsNumber::parse("9990000018").unwrap()),
            data: AccessData::default(),
            client: ClientInfo::default(),
            incident_ref: None,
            offline: false,
        }
    }

    fn convey(seq: u64, at: i64, site: &str) -> AuditEvent {
        let mut e = event(seq, AuditAction::Convey, at);
        e.data.destination = Some(OdsCode::parse(site).unwrap());
        e
    }

    #[test]
    fn a_conveyance_after_the_crews_read_goes_to_that_sites_kiosks_only() {
        let now = 10 * 3_600_000;
        let read = event(1, AuditAction::Read, now - 60_000);
        let c = convey(2, now - 30_000, "RJ122");
        let (p, kiosks) = decide(&inv(), &c, std::slice::from_ref(&read), UnixMillis(now)).unwrap();
        assert_eq!(p.claims.staff_id, "555000111222");
        let names: Vec<&str> = kiosks.iter().map(DeviceId::as_str).collect();
        assert_eq!(names, ["RJ122-ED-1", "RJ122-ED-2"]);
        // Without the crew's own read: nothing.
        assert_eq!(
            decide(&inv(), &c, &[], UnixMillis(now)).unwrap_err(),
            Skip::NoPriorRead
        );
        // Another staff member's read does not count.
        let mut other = read.clone();
        other.staff_id = Some("555000999888".into());
        assert_eq!(
            decide(&inv(), &c, &[other], UnixMillis(now)).unwrap_err(),
            Skip::NoPriorRead
        );
        // A refused read does not count.
        let mut denied = read.clone();
        denied.outcome = AuditOutcome::Denied;
        assert_eq!(
            decide(&inv(), &c, &[denied], UnixMillis(now)).unwrap_err(),
            Skip::NoPriorRead
        );
        // Too old.
        assert_eq!(
            decide(
                &inv(),
                &c,
                std::slice::from_ref(&read),
                UnixMillis(now + MAX_AGE_MS)
            )
            .unwrap_err(),
            Skip::TooOld
        );
        // A site without kiosks.
        let c2 = convey(2, now - 30_000, "RXX");
        assert!(matches!(
            decide(&inv(), &c2, std::slice::from_ref(&read), UnixMillis(now)),
            Err(Skip::NoKioskAtSite(_))
        ));
        // From a kiosk, not a vehicle.
        let mut k = c.clone();
        k.device_id = DeviceId::parse("RJ1-ED-1").unwrap();
        let mut kr = read;
        kr.device_id = k.device_id.clone();
        assert_eq!(
            decide(&inv(), &k, &[kr], UnixMillis(now)).unwrap_err(),
            Skip::NotAVehicle
        );
    }

    #[test]
    fn pending_pushes_are_bounded_and_expire() {
        let k = DeviceId::parse("RJ122-ED-1").unwrap();
        let pend = Pending::default();
        let c = convey(2, 0, "RJ122");
        let read = event(1, AuditAction::Read, 0);
        let (p, _) = decide(&inv(), &c, &[read], UnixMillis(1_000)).unwrap();
        pend.keep(&k, p.clone());
        pend.keep(&k, p.clone());
        assert_eq!(pend.take(&k, UnixMillis(2_000)).len(), 1, "one per patient");
        pend.keep(&k, p);
        assert!(pend.take(&k, UnixMillis(1_000 + PENDING_TTL_MS)).is_empty());
    }
}
