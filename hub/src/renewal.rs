//! Renewing units' certificates over the sync, with the fleet's renewal CA.
//!
//! A unit's operational certificate lasts 7 days. When two thirds of that has passed the unit
//! sends [`ToHub::Renew`](edge_proto::sync::ToHub::Renew) on its live connection; the hub
//! re-issues the certificate the unit presented on that connection — the same public key, the
//! same identity and cohort names, a fresh serial, 7 days from now — signed by the renewal CA
//! (an intermediate under the fleet root, `clientAuth` only, path length 0: see
//! `edge_runtime::issue`). The request needs no signature of its own: the TLS handshake on
//! this connection proved the unit holds its current key, and the hub copies everything it
//! signs from that verified certificate, never from the unit's words.
//!
//! Refused ([`Refusal`]): a hub without a renewal CA or without the fleet inventory; a unit the
//! inventory does not list or marks revoked; a unit with a wipe order; a certificate not yet
//! due (more than an hour before two thirds of its lifetime); a renewal CA about to expire.
//!
//! Revocation of renewed certificates is by device, not serial: the fleet's CRL is the issuing
//! CA's and does not list the renewal CA's serials, so the hub's client verifier accepts an
//! unknown revocation status for them and the inventory check at connect and on every
//! revalidation (`edge-provision revoke` marks the device) refuses every certificate of a
//! revoked unit, whatever its serial.

use std::path::Path;

use anyhow::Context as _;
use edge_proto::time::UnixMillis;
use edge_runtime::identity::UnitIdentity;
use edge_runtime::issue::{self, BACKDATE_MS, UNIT_CERT_LIFETIME_MS};
use edge_runtime::keys;
use rcgen::{CertificateParams, KeyPair, SubjectPublicKeyInfo};

/// A unit may ask this long before its renewal is due (clock skew between unit and hub).
pub const EARLY_MS: i64 = 60 * 60 * 1000;
/// The hub stops renewing with a renewal CA that has less than this left (its certificates
/// would be cut short), and warns from [`CA_WARN_MS`].
pub const CA_MIN_LEFT_MS: i64 = UnixMillis::DAY;
/// The hub warns (log and metric) when its renewal CA has less than this left.
pub const CA_WARN_MS: i64 = 60 * UnixMillis::DAY;

/// Why the hub will not renew a certificate now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// This hub holds no renewal CA.
    NoRenewalCa,
    /// This hub has no fleet inventory to check the unit against.
    NoInventory,
    /// The inventory does not list the unit, or marks it revoked.
    Revoked,
    /// An operator ordered the unit wiped.
    Wiped,
    /// Not due yet.
    NotDue { due: UnixMillis },
    /// The renewal CA expires too soon.
    CaExpiring { not_after: UnixMillis },
    /// The certificate on the connection could not be re-issued.
    BadCertificate(String),
}

impl Refusal {
    /// Metric label.
    pub fn as_str(&self) -> &'static str {
        match self {
            Refusal::NoRenewalCa => "no_renewal_ca",
            Refusal::NoInventory => "no_inventory",
            Refusal::Revoked => "revoked",
            Refusal::Wiped => "wiped",
            Refusal::NotDue { .. } => "not_due",
            Refusal::CaExpiring { .. } => "ca_expiring",
            Refusal::BadCertificate(_) => "bad_certificate",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::NoRenewalCa => f.write_str("this hub has no renewal CA (renew with `edge-provision renew`; give the hub one with `edge-provision ca renewal-ca` and `hub --force`)"),
            Refusal::NoInventory => f.write_str("this hub has no fleet inventory to check the unit against"),
            Refusal::Revoked => f.write_str("the fleet revoked this unit"),
            Refusal::Wiped => f.write_str("a wipe is ordered for this unit"),
            Refusal::NotDue { due } => write!(f, "not due until {}", due.to_rfc3339()),
            Refusal::CaExpiring { not_after } => write!(
                f,
                "the renewal CA expires at {}; the fleet's custodian must replace it (`edge-provision ca renewal-ca --force`)",
                not_after.to_rfc3339()
            ),
            Refusal::BadCertificate(why) => write!(f, "the unit's certificate cannot be re-issued: {why}"),
        }
    }
}

/// A certificate just renewed.
#[derive(Debug, Clone)]
pub struct Renewed {
    /// DER: the unit's new certificate, then the renewal CA.
    pub chain: Vec<Vec<u8>>,
    /// Serial, lower-case hex.
    pub serial: String,
    pub not_after: UnixMillis,
}

/// The hub's renewal CA.
pub struct RenewalCa {
    ca_der: Vec<u8>,
    issuer: rcgen::Certificate,
    key: KeyPair,
    /// The renewal CA's own expiry.
    pub not_after: UnixMillis,
}

impl std::fmt::Debug for RenewalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RenewalCa")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl RenewalCa {
    /// Load the renewal CA from its certificate and key files, checking they are a pair.
    pub fn load(cert: &Path, key: &Path) -> anyhow::Result<RenewalCa> {
        let ca_der = keys::load_certs(cert)?
            .into_iter()
            .next()
            .context("no certificate")?
            .to_vec();
        let key_pem = String::from_utf8(
            edge_runtime::fsutil::read_limited(key, edge_runtime::fsutil::MAX_FILE_BYTES)
                .with_context(|| format!("cannot read {}", key.display()))?,
        )
        .with_context(|| format!("{} is not text", key.display()))?;
        let key_pair = KeyPair::from_pem(&key_pem)
            .with_context(|| format!("{} is not a PEM private key", key.display()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(&ca_der)
            .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
        anyhow::ensure!(
            parsed.public_key().raw == key_pair.public_key_der().as_slice(),
            "{} is not the key of {}",
            key.display(),
            cert.display()
        );
        anyhow::ensure!(parsed.is_ca(), "{} is not a CA certificate", cert.display());
        let not_after = UnixMillis(parsed.validity().not_after.timestamp() * 1000);
        let issuer = CertificateParams::from_ca_cert_der(&ca_der.clone().into())
            .with_context(|| format!("{}", cert.display()))?
            .self_signed(&key_pair)
            .context("renewal CA")?;
        Ok(RenewalCa {
            ca_der,
            issuer,
            key: key_pair,
            not_after,
        })
    }

    /// Re-issue `current` (the DER certificate the unit presented, already verified on this
    /// connection, whose identity is `ident`) at `now`, for the fleet `fleet_id`. The caller
    /// has checked the inventory and wipe orders.
    pub fn renew(
        &self,
        now: UnixMillis,
        fleet_id: &str,
        ident: &UnitIdentity,
        current: &[u8],
    ) -> Result<Renewed, Refusal> {
        let (_, cert) = x509_parser::parse_x509_certificate(current)
            .map_err(|e| Refusal::BadCertificate(e.to_string()))?;
        let not_before = UnixMillis(cert.validity().not_before.timestamp() * 1000);
        let due = issue::renew_due_at(not_before, ident.not_after);
        if now.0 < due.0.saturating_sub(EARLY_MS) {
            return Err(Refusal::NotDue { due });
        }
        if self.not_after.0.saturating_sub(now.0) < CA_MIN_LEFT_MS {
            return Err(Refusal::CaExpiring {
                not_after: self.not_after,
            });
        }
        let spki = SubjectPublicKeyInfo::from_der(cert.public_key().raw)
            .map_err(|e| Refusal::BadCertificate(e.to_string()))?;
        let not_after = UnixMillis(now.plus_ms(UNIT_CERT_LIFETIME_MS).0.min(self.not_after.0));
        let params = issue::unit_cert_params(
            fleet_id,
            &ident.device_id,
            ident.role,
            &ident.cohorts,
            now.plus_ms(-BACKDATE_MS),
            not_after,
        )
        .map_err(|e| Refusal::BadCertificate(e.to_string()))?;
        let serial = issue::serial_hex(&params);
        let leaf = params
            .signed_by(&spki, &self.issuer, &self.key)
            .map_err(|e| Refusal::BadCertificate(e.to_string()))?;
        Ok(Renewed {
            chain: vec![leaf.der().to_vec(), self.ca_der.clone()],
            serial,
            not_after: issue::whole_seconds(not_after),
        })
    }
}

/// Whether and how to renew: `ca` the hub's renewal CA, `inventory` the fleet's, `wiped` a
/// wipe order stands for the unit, `ident` and `current` the verified certificate on the
/// connection. The hub's whole renewal policy, without I/O.
pub fn decide(
    ca: Option<&RenewalCa>,
    inventory: Option<&edge_runtime::inventory::Inventory>,
    wiped: bool,
    ident: &UnitIdentity,
    current: Option<&[u8]>,
    now: UnixMillis,
) -> Result<Renewed, Refusal> {
    let ca = ca.ok_or(Refusal::NoRenewalCa)?;
    let inv = inventory.ok_or(Refusal::NoInventory)?;
    match inv.unit(&ident.device_id) {
        Some(u) if !u.revoked() => {}
        _ => return Err(Refusal::Revoked),
    }
    if wiped {
        return Err(Refusal::Wiped);
    }
    let current = current.ok_or_else(|| Refusal::BadCertificate("no certificate".into()))?;
    ca.renew(now, &inv.fleet_id, ident, current)
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::ids::{CohortSpec, DeviceId, UnitRole};
    use edge_provision::fleet::{Fleet, InitOptions};

    fn now() -> UnixMillis {
        UnixMillis(1_790_000_000_000)
    }

    /// A fleet, its renewal CA, and a unit certificate issued `age_ms` ago.
    fn setup(age_ms: i64) -> (tempfile::TempDir, RenewalCa, Vec<u8>, UnitIdentity, String) {
        let dir = tempfile::tempdir().unwrap();
        let fleet_dir = dir.path().join("fleet");
        let t = now();
        Fleet::init(
            &fleet_dir,
            &InitOptions {
                org: "Test".into(),
                force: false,
            },
            t.plus_ms(-30 * UnixMillis::DAY),
        )
        .unwrap();
        let fleet = Fleet::open(&fleet_dir).unwrap();
        let ca = RenewalCa::load(
            &fleet_dir.join("renewal-ca.crt"),
            &fleet_dir.join("renewal-ca.key"),
        )
        .unwrap();
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let id = DeviceId::parse("LAS-AMB-0007").unwrap();
        let cohorts = vec![CohortSpec::All];
        let nb = t.plus_ms(-age_ms);
        let issued = fleet
            .issue_unit_cert(
                &key,
                &id,
                UnitRole::Vehicle,
                &cohorts,
                nb,
                nb.plus_ms(UNIT_CERT_LIFETIME_MS),
            )
            .unwrap();
        let ident = edge_runtime::identity::peer_identity(&issued.der).unwrap();
        let fleet_id = fleet.inventory().fleet_id.clone();
        (dir, ca, issued.der, ident, fleet_id)
    }

    #[test]
    fn a_due_certificate_is_reissued_with_the_same_key_and_names() {
        let (_d, ca, der, ident, fleet_id) = setup(5 * UnixMillis::DAY);
        let r = ca.renew(now(), &fleet_id, &ident, &der).unwrap();
        assert_eq!(r.chain.len(), 2);
        let new = edge_runtime::identity::peer_identity(&r.chain[0]).unwrap();
        assert_eq!(new.device_id, ident.device_id);
        assert_eq!(new.role, ident.role);
        assert_eq!(new.cohorts, ident.cohorts);
        assert_ne!(new.serial, ident.serial);
        assert_eq!(new.not_after, r.not_after);
        assert!(new.not_after.0 > ident.not_after.0);
        let (_, old) = x509_parser::parse_x509_certificate(&der).unwrap();
        let (_, fresh) = x509_parser::parse_x509_certificate(&r.chain[0]).unwrap();
        assert_eq!(old.public_key().raw, fresh.public_key().raw);
        // Signed by the renewal CA.
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&r.chain[1]).unwrap();
        fresh.verify_signature(Some(ca_cert.public_key())).unwrap();
    }

    #[test]
    fn revoked_unknown_wiped_and_caless_units_are_refused() {
        let (d, ca, der, ident, _) = setup(5 * UnixMillis::DAY);
        let fleet_dir = d.path().join("fleet");
        let inv_path = fleet_dir.join("inventory.json");
        let read = || -> edge_runtime::inventory::Inventory {
            serde_json::from_str(&std::fs::read_to_string(&inv_path).unwrap()).unwrap()
        };
        // Not in the inventory (setup issued a certificate without enrolling).
        let inv = read();
        assert_eq!(
            decide(Some(&ca), Some(&inv), false, &ident, Some(&der), now()).unwrap_err(),
            Refusal::Revoked
        );
        // Enrolled: renewed; wiped: refused; revoked: refused.
        let mut fleet = Fleet::open(&fleet_dir).unwrap();
        let out = d.path().join("unit");
        let plan = edge_provision::fleet::EnrolPlan {
            device_id: ident.device_id.clone(),
            role: UnitRole::Vehicle,
            hub: "127.0.0.1:4433".parse().unwrap(),
            hub_name: "127.0.0.1".into(),
            more_hubs: Vec::new(),
            lan: "127.0.0.1:8443".parse().unwrap(),
            lan_names: Vec::new(),
            callsign: None,
            site: None,
            cohorts: vec![CohortSpec::All],
            supervisor: Default::default(),
            replace: false,
            force: false,
            out: out.clone(),
        };
        fleet
            .enrol(&plan, now().plus_ms(-5 * UnixMillis::DAY))
            .unwrap();
        let der = keys::load_certs(&out.join("unit.crt")).unwrap()[0].to_vec();
        let ident = edge_runtime::identity::peer_identity(&der).unwrap();
        let inv = read();
        assert!(decide(Some(&ca), Some(&inv), false, &ident, Some(&der), now()).is_ok());
        assert_eq!(
            decide(Some(&ca), Some(&inv), true, &ident, Some(&der), now()).unwrap_err(),
            Refusal::Wiped
        );
        assert_eq!(
            decide(None, Some(&inv), false, &ident, Some(&der), now()).unwrap_err(),
            Refusal::NoRenewalCa
        );
        assert_eq!(
            decide(Some(&ca), None, false, &ident, Some(&der), now()).unwrap_err(),
            Refusal::NoInventory
        );
        fleet
            .revoke(
                &ident.device_id,
                edge_runtime::inventory::RevokeReason::Stolen,
                now().plus_ms(-UnixMillis::DAY),
            )
            .unwrap();
        let inv = read();
        assert_eq!(
            decide(Some(&ca), Some(&inv), false, &ident, Some(&der), now()).unwrap_err(),
            Refusal::Revoked
        );
    }

    #[test]
    fn a_fresh_certificate_is_not_due() {
        let (_d, ca, der, ident, fleet_id) = setup(UnixMillis::DAY);
        match ca.renew(now(), &fleet_id, &ident, &der) {
            Err(Refusal::NotDue { due }) => assert!(due.0 > now().0),
            other => panic!("expected not due, got {other:?}"),
        }
    }
}
