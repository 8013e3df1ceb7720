//! The audit event: one per access, shaped after FHIR R4 `AuditEvent` / IHE BALP `PatientRead`,
//! with NHS identifiers, and the per-device hash chain that makes the trail tamper-evident.
//!
//! `hash = SHA-256(prev_hash ‖ canonical CBOR of the event with hash zeroed)`. The chain starts
//! from [`GENESIS`] at `seq` 1; `seq` is gap-free per device. The unit appends, the hub verifies
//! ([`verify_chain`]); both use the same functions.

use std::fmt;

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::cbor::{self, CborError};
use crate::ids::{DeviceId, OdsCode, StaffRole};
use crate::nhs::NhsNumber;
use crate::time::UnixMillis;

/// Audit event schema version.
pub const AUDIT_SCHEMA: u16 = 1;

/// The `prev_hash` of a device's first event.
pub const GENESIS: Hash32 = Hash32([0u8; 32]);

/// A SHA-256 value, shown as hex.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Hash32(#[serde(with = "hex32")] pub [u8; 32]);

impl fmt::Debug for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}
impl fmt::Display for Hash32 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", hex::encode(self.0))
    }
}

mod hex32 {
    use serde::{Deserialize, Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 32], s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.serialize_str(&hex::encode(v))
        } else {
            s.serialize_bytes(v)
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 32], D::Error> {
        use serde::de::Error;
        if d.is_human_readable() {
            let s = String::deserialize(d)?;
            let v = hex::decode(s).map_err(D::Error::custom)?;
            v.try_into()
                .map_err(|_| D::Error::custom("expected 32 bytes"))
        } else {
            let v = serde_bytes_vec(d)?;
            v.try_into()
                .map_err(|_| D::Error::custom("expected 32 bytes"))
        }
    }
    fn serde_bytes_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::with_capacity(32);
                while let Some(b) = a.next_element::<u8>()? {
                    if out.len() >= 64 {
                        return Err(serde::de::Error::custom("too many bytes"));
                    }
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

/// What was done.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    /// A summary read (`/v1/patients/{nhs}` or FHIR `$summary`).
    Read,
    /// A demographic search.
    Search,
    /// First use of a shift token on this unit.
    Login,
    /// An emergency (break-glass) access: the security-alert companion of a read.
    BreakGlass,
    /// A crew telling the unit they are bringing the patient to an emergency department
    /// (`data.destination`): the hub pushes the record to that site's kiosks.
    Convey,
    /// Something else worth an alert (bulk browsing, a refused revoked token…).
    #[serde(other)]
    Alert,
}

/// How it ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Ok,
    NotFound,
    Denied,
    #[serde(other)]
    Error,
}

/// Why the user accessed the record (v3 ActReason).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub enum Purpose {
    #[default]
    #[serde(rename = "TREAT")]
    Treat,
    /// Emergency treatment: break-glass, requires a reason.
    #[serde(rename = "ETREAT")]
    EmergencyTreat,
}

impl Purpose {
    pub fn as_str(self) -> &'static str {
        match self {
            Purpose::Treat => "TREAT",
            Purpose::EmergencyTreat => "ETREAT",
        }
    }
}

/// What data an access returned (never the data itself).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct AccessData {
    /// Summary version returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
    /// Section keys returned (`allergies`, `medications`…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sections: Vec<String>,
    /// Age of the cached record in seconds at the time of access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_age_s: Option<u64>,
    /// For searches: how many candidates were returned (not who they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub candidates: Option<u32>,
    /// The interface used: `rest`, `fhir`, `search`, `page`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// The NHS number that was asked for, when it was a former (superseded or merged) number:
    /// the event's `patient` is the current number whose record was returned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked_nhs: Option<crate::nhs::NhsNumber>,
    /// For refusals without a valid shift token, which are recorded in aggregate (one event per
    /// client address per minute): how many refusals this event stands for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusals: Option<u32>,
    /// For a conveyance: the ODS code of the emergency department the crew is bringing the
    /// patient to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<crate::ids::OdsCode>,
}

/// The tablet or kiosk that asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ClientInfo {
    /// Network address of the client.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// Client identity (user agent or MDM id) when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

/// One access, as recorded by the unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub schema: u16,
    /// UUID; the idempotency key on upload.
    pub event_id: String,
    pub device_id: DeviceId,
    /// Per-device sequence, gap-free from 1.
    pub seq: u64,
    pub prev_hash: Hash32,
    pub hash: Hash32,
    /// UTC time by the unit's clock.
    pub recorded: UnixMillis,
    /// The unit's clock offset from the hub's at the last contact (hub − unit), in ms.
    #[serde(default)]
    pub clock_offset_ms: i64,
    pub action: AuditAction,
    pub outcome: AuditOutcome,
    /// Why it was denied or failed (`no_token`, `bad_token`, `role`, `invalid_nhs_number`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staff_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<StaffRole>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_ods: Option<OdsCode>,
    /// How the user was authenticated: the shift token's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<String>,
    #[serde(default)]
    pub purpose: Purpose,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass_reason: Option<String>,
    /// The patient (none for a search that opened nobody).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patient: Option<NhsNumber>,
    #[serde(default)]
    pub data: AccessData,
    #[serde(default)]
    pub client: ClientInfo,
    /// CAD incident number when the tablet sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incident_ref: Option<String>,
    /// Whether the link to the hub was down at the time of access.
    #[serde(default)]
    pub offline: bool,
}

/// Why a chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    #[error("event seq {seq}: hash does not match its content")]
    BadHash { seq: u64 },
    #[error("event seq {seq}: prev_hash does not match the previous event's hash")]
    BrokenLink { seq: u64 },
    #[error("expected seq {expected}, found {found}")]
    Gap { expected: u64, found: u64 },
    #[error("event seq {seq}: belongs to device {found}, not this device")]
    WrongDevice { seq: u64, found: String },
    #[error("encoding failed: {0}")]
    Encode(String),
}

impl AuditEvent {
    /// The bytes the hash covers: the event's CBOR with `hash` zeroed.
    pub fn canonical_bytes(&self) -> Result<Vec<u8>, CborError> {
        let mut e = self.clone();
        e.hash = Hash32::default();
        cbor::to_vec(&e)
    }

    /// Compute this event's hash from its `prev_hash` and content.
    pub fn compute_hash(&self) -> Result<Hash32, CborError> {
        let body = self.canonical_bytes()?;
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(&self.prev_hash.0);
        ctx.update(&body);
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        Ok(Hash32(out))
    }

    /// Link this event after `prev` (seq and prev_hash) and seal it with its hash.
    pub fn seal(&mut self, seq: u64, prev_hash: Hash32) -> Result<(), CborError> {
        self.seq = seq;
        self.prev_hash = prev_hash;
        self.hash = self.compute_hash()?;
        Ok(())
    }

    /// Does the stored hash match the content?
    pub fn hash_ok(&self) -> bool {
        self.compute_hash().is_ok_and(|h| h == self.hash)
    }
}

/// Verify a run of events: each hash matches its content, each `prev_hash` matches the
/// previous event's hash (or `start_prev` for the first), and `seq` rises by one from
/// `start_seq`. Returns the first problem found.
pub fn verify_chain(
    events: &[AuditEvent],
    start_seq: u64,
    start_prev: Hash32,
) -> Result<Hash32, ChainError> {
    let mut prev = start_prev;
    for (expected, e) in (start_seq..).zip(events) {
        if e.seq != expected {
            return Err(ChainError::Gap {
                expected,
                found: e.seq,
            });
        }
        if e.prev_hash != prev {
            return Err(ChainError::BrokenLink { seq: e.seq });
        }
        if !e.hash_ok() {
            return Err(ChainError::BadHash { seq: e.seq });
        }
        prev = e.hash;
    }
    Ok(prev)
}

/// Format 16 random bytes (from the caller: this crate has no RNG) as a UUID v4 string.
pub fn uuid_from_bytes(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn event(n: u8) -> AuditEvent {
        AuditEvent {
            schema: AUDIT_SCHEMA,
            event_id: uuid_from_bytes([n; 16]),
            device_id: DeviceId::parse("LAS-AMB-0001").unwrap(),
            seq: 0,
            prev_hash: GENESIS,
            hash: Hash32::default(),
            recorded: UnixMillis(1_700_000_000_000 + i64::from(n)),
            clock_offset_ms: -120,
            action: AuditAction::Read,
            outcome: AuditOutcome::Ok,
            outcome_reason: None,
            staff_id: Some("555000111222".into()),
            staff_name: Some("PARAMEDIC, Test".into()),
            role: Some(StaffRole::Clinical),
            org_ods: None,
            auth: Some("tok-1".into()),
            purpose: Purpose::Treat,
            break_glass_reason: None,
            patient: Some(NhsNumber::parse("9990000018").unwrap()),
            data: AccessData {
                version: Some(3),
                sections: vec!["allergies".into()],
                cache_age_s: Some(60),
                candidates: None,
                interface: Some("rest".into()),
                asked_nhs: None,
                refusals: None,
                destination: None,
            },
            client: ClientInfo {
                address: Some("10.0.0.5".into()),
                identity: None,
            },
            incident_ref: Some("CAD-1".into()),
            offline: true,
        }
    }

    fn chain(n: u8) -> Vec<AuditEvent> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|i| {
                let mut e = event(i);
                e.seal(u64::from(i), prev).unwrap();
                prev = e.hash;
                e
            })
            .collect()
    }

    #[test]
    fn chain_verifies() {
        let c = chain(5);
        assert_eq!(verify_chain(&c, 1, GENESIS).unwrap(), c[4].hash);
        // A suffix verifies from its predecessor.
        assert!(verify_chain(&c[2..], 3, c[1].hash).is_ok());
    }

    #[test]
    fn tampering_is_detected() {
        let mut c = chain(5);
        c[2].staff_id = Some("someone-else".into());
        assert_eq!(
            verify_chain(&c, 1, GENESIS),
            Err(ChainError::BadHash { seq: 3 })
        );

        let mut c = chain(5);
        c.remove(2);
        assert_eq!(
            verify_chain(&c, 1, GENESIS),
            Err(ChainError::Gap {
                expected: 3,
                found: 4
            })
        );

        let mut c = chain(5);
        c.swap(1, 2);
        assert!(matches!(
            verify_chain(&c, 1, GENESIS),
            Err(ChainError::Gap { .. })
        ));

        // Re-sealing a modified event breaks the next link.
        let mut c = chain(5);
        c[2].patient = None;
        let prev = c[1].hash;
        c[2].seal(3, prev).unwrap();
        assert_eq!(
            verify_chain(&c, 1, GENESIS),
            Err(ChainError::BrokenLink { seq: 4 })
        );
    }

    #[test]
    fn cbor_and_json_round_trip() {
        let c = chain(2);
        let bytes = cbor::to_vec(&c[1]).unwrap();
        let back: AuditEvent = cbor::from_slice(&bytes).unwrap();
        assert_eq!(back, c[1]);
        assert!(back.hash_ok());
        let j = serde_json::to_string(&c[1]).unwrap();
        assert!(j.contains(&c[1].hash.to_string()));
        let back: AuditEvent = serde_json::from_str(&j).unwrap();
        assert_eq!(back, c[1]);
    }

    #[test]
    fn uuid_shape() {
        let u = uuid_from_bytes([0xff; 16]);
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4");
    }
}
