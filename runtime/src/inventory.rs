//! The fleet inventory (`inventory.json` in the fleet directory): every hub and unit the fleet
//! has issued certificates to, every operational certificate, and every revocation.
//!
//! It is the source of truth for the revocation list: `crl.pem` is always regenerated from
//! [`Inventory::revoked`]. Times are RFC 3339 strings so the file reads well; the format carries
//! a version number so a later build can migrate it.

use std::path::PathBuf;

use edge_proto::ids::{CohortSpec, DeviceId, OdsCode, UnitRole};
use edge_proto::time::UnixMillis;
use serde::{Deserialize, Serialize};

use crate::hostport::HostPort;

/// The inventory format this build reads and writes.
pub const INVENTORY_FORMAT: u32 = 1;

/// The whole inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// [`INVENTORY_FORMAT`].
    pub format: u32,
    /// A random id for this fleet (also in its CA names).
    pub fleet_id: String,
    /// When `ca init` ran.
    #[serde(with = "rfc3339")]
    pub created_at: UnixMillis,
    /// The number of the last CRL written (monotonic).
    pub crl_number: u64,
    /// Bumped by every save (monotonic): hubs sharing a database keep the inventory with the
    /// highest revision (a file written before this field existed reads as 0).
    #[serde(default)]
    pub revision: u64,
    /// Hub certificates issued.
    #[serde(default)]
    pub hubs: Vec<HubRecord>,
    /// Enrolled units (a replaced unit's old record is dropped; its certificates stay revoked).
    #[serde(default)]
    pub units: Vec<UnitRecord>,
    /// Every revoked certificate.
    #[serde(default)]
    pub revoked: Vec<RevokedCert>,
}

/// A hub bundle written by `edge-provision hub`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HubRecord {
    /// The hub's name (its certificate SAN).
    pub name: String,
    /// Certificate serial (hex).
    pub serial: String,
    /// Certificate expiry.
    #[serde(with = "rfc3339")]
    pub not_after: UnixMillis,
    /// Where the bundle was written.
    pub bundle_dir: PathBuf,
}

/// One operational certificate issued to a unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CertRecord {
    /// Serial, lower-case hex of the DER bytes.
    pub serial: String,
    /// Start of validity.
    #[serde(with = "rfc3339")]
    pub not_before: UnixMillis,
    /// End of validity.
    #[serde(with = "rfc3339")]
    pub not_after: UnixMillis,
}

/// An enrolled unit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnitRecord {
    /// Fleet device id.
    pub device_id: DeviceId,
    /// Vehicle or kiosk.
    pub role: UnitRole,
    /// Radio callsign.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callsign: Option<String>,
    /// Site ODS code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<OdsCode>,
    /// Cohorts written into its certificates.
    #[serde(with = "crate::config::cohort_strings")]
    pub cohorts: Vec<CohortSpec>,
    /// The hub it syncs with.
    pub hub: HostPort,
    /// The hub's TLS name.
    pub hub_name: String,
    /// Its LAN listen address.
    pub lan: HostPort,
    /// Names in its LAN certificate.
    pub lan_names: Vec<String>,
    /// Where its bundle was written (renewals go there unless told otherwise).
    pub bundle_dir: PathBuf,
    /// Its operational public key (SubjectPublicKeyInfo DER, base64); renewals reuse it.
    pub public_key: String,
    /// Its LAN server public key (SubjectPublicKeyInfo DER, base64).
    pub lan_public_key: String,
    /// The current operational certificate.
    pub cert: CertRecord,
    /// The current LAN certificate.
    pub lan_cert: CertRecord,
    /// Every operational certificate issued to this key, oldest first (revocation covers all).
    pub certs: Vec<CertRecord>,
    /// When it was enrolled.
    #[serde(with = "rfc3339")]
    pub enrolled_at: UnixMillis,
    /// When it was last renewed.
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub renewed_at: Option<UnixMillis>,
    /// When it was revoked (a revoked unit cannot renew; re-enrol it with `--replace`).
    #[serde(default, with = "rfc3339_opt", skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<UnixMillis>,
}

impl UnitRecord {
    /// Whether the unit has been revoked.
    pub fn revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// Why a certificate was revoked (RFC 5280 reason codes, in workshop words).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RevokeReason {
    /// No reason given.
    Unspecified,
    /// Stolen or lost: its key may be in someone else's hands (keyCompromise).
    Stolen,
    /// Taken out of service (cessationOfOperation).
    Decommissioned,
    /// Replaced by a new enrolment of the same device id (superseded).
    Replaced,
}

impl std::str::FromStr for RevokeReason {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "unspecified" => Ok(RevokeReason::Unspecified),
            "stolen" | "lost" | "compromised" => Ok(RevokeReason::Stolen),
            "decommissioned" => Ok(RevokeReason::Decommissioned),
            "replaced" => Ok(RevokeReason::Replaced),
            _ => Err(format!(
                "unknown reason {s:?}: expected stolen, decommissioned, replaced or unspecified"
            )),
        }
    }
}

/// A revoked certificate, as listed in the CRL.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RevokedCert {
    /// Serial, lower-case hex.
    pub serial: String,
    /// Whose it was.
    pub device_id: DeviceId,
    /// When it was revoked.
    #[serde(with = "rfc3339")]
    pub revoked_at: UnixMillis,
    /// Its expiry (after which the CRL may drop it: an expired certificate is refused anyway).
    #[serde(with = "rfc3339")]
    pub not_after: UnixMillis,
    /// Why.
    pub reason: RevokeReason,
}

impl Inventory {
    /// Read an inventory file without locking the fleet (for the hub's fleet registry, which
    /// only reads it). Refuses files over 16 MiB and formats this build does not know.
    pub fn load(path: &std::path::Path) -> Result<Inventory, crate::keys::LoadError> {
        use crate::keys::LoadError;
        let bytes =
            crate::fsutil::read_limited(path, crate::fsutil::MAX_FILE_BYTES).map_err(|source| {
                LoadError::Read {
                    path: path.to_owned(),
                    source,
                }
            })?;
        Inventory::from_slice(&bytes).map_err(|problem| LoadError::Invalid {
            path: path.to_owned(),
            problem,
        })
    }

    /// Parse an inventory (a file's bytes, or the copy hubs share in their database); refuses
    /// more than 16 MiB and formats this build does not know.
    pub fn from_slice(bytes: &[u8]) -> Result<Inventory, String> {
        if bytes.len() as u64 > crate::fsutil::MAX_FILE_BYTES {
            return Err(format!(
                "an inventory of {} bytes is over the {} limit",
                bytes.len(),
                crate::fsutil::MAX_FILE_BYTES
            ));
        }
        let inv: Inventory =
            serde_json::from_slice(bytes).map_err(|e| format!("not a fleet inventory: {e}"))?;
        if inv.format != INVENTORY_FORMAT {
            return Err(format!(
                "inventory format {} is not supported (expected {INVENTORY_FORMAT})",
                inv.format
            ));
        }
        Ok(inv)
    }

    /// The unit with this device id.
    pub fn unit(&self, id: &DeviceId) -> Option<&UnitRecord> {
        self.units.iter().find(|u| &u.device_id == id)
    }

    /// The unit with this device id, mutably.
    pub fn unit_mut(&mut self, id: &DeviceId) -> Option<&mut UnitRecord> {
        self.units.iter_mut().find(|u| &u.device_id == id)
    }

    /// Record every not-yet-listed certificate of `unit` as revoked.
    pub fn revoke_certs(&mut self, unit: &UnitRecord, reason: RevokeReason, now: UnixMillis) {
        for c in &unit.certs {
            if !self.revoked.iter().any(|r| r.serial == c.serial) {
                self.revoked.push(RevokedCert {
                    serial: c.serial.clone(),
                    device_id: unit.device_id.clone(),
                    revoked_at: now,
                    not_after: c.not_after,
                    reason,
                });
            }
        }
    }
}

/// Serde for [`UnixMillis`] as an RFC 3339 string.
pub(crate) mod rfc3339 {
    use edge_proto::time::UnixMillis;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &UnixMillis, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<UnixMillis, D::Error> {
        let s = String::deserialize(d)?;
        UnixMillis::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

/// Serde for `Option<UnixMillis>` as an optional RFC 3339 string.
pub(crate) mod rfc3339_opt {
    use edge_proto::time::UnixMillis;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<UnixMillis>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&t.to_rfc3339()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UnixMillis>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| UnixMillis::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}
