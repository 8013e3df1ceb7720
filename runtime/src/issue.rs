//! What a unit's operational certificate says, built in one place for both of its issuers: the
//! fleet CA (`edge-provision enrol` / `renew`, signed by the issuing CA) and the hub's renewal
//! CA (renewal over the sync, `edge-hub`'s `renewal` module). Parameters only: signing is the
//! issuer's. Behind the `issue` feature, so the unit daemon does not link a certificate
//! builder it never uses.
//!
//! The renewal CA is an intermediate the fleet root signs at `ca init` (or `ca renewal-ca`),
//! constrained to what renewal needs: path length 0 and extended key usage `clientAuth` only,
//! so a hub that holds its key can re-issue unit client certificates and nothing a unit, a
//! tablet or another hub would accept as a server.

use edge_proto::ids::{CohortSpec, DeviceId, UnitRole};
use edge_proto::time::UnixMillis;
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose,
    SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use time::OffsetDateTime;

use crate::identity::{cohort_uri, identity_uri, MAX_COHORTS};

/// Operational (client) certificate lifetime: 7 days.
pub const UNIT_CERT_LIFETIME_MS: i64 = 7 * UnixMillis::DAY;
pub use crate::identity::RENEW_AFTER_FRACTION;
/// Renewal CA lifetime (2 years; the hub warns and reports a metric in its last 60 days).
pub const RENEWAL_CA_LIFETIME_MS: i64 = 2 * 365 * UnixMillis::DAY;
/// Certificates start this far in the past, for clock skew.
pub const BACKDATE_MS: i64 = 5 * 60 * 1000;

/// Why a certificate could not be described.
#[derive(Debug, thiserror::Error)]
pub enum IssueError {
    #[error("at most {MAX_COHORTS} cohorts")]
    TooManyCohorts,
    #[error("time {0} is out of range")]
    Time(i64),
    #[error("the system random number generator failed")]
    Random,
    #[error("a certificate name is invalid: {0}")]
    Name(#[from] rcgen::Error),
}

pub use crate::identity::renew_due_at;

/// Certificates carry whole seconds.
pub fn whole_seconds(t: UnixMillis) -> UnixMillis {
    UnixMillis(t.0.div_euclid(1000) * 1000)
}

/// A time as the certificate builder wants it.
pub fn to_odt(t: UnixMillis) -> Result<OffsetDateTime, IssueError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(t.0) * 1_000_000)
        .map_err(|_| IssueError::Time(t.0))
}

/// A random positive 16-byte serial whose first byte is 0x40..=0x7f (so its DER form is exactly
/// these bytes and its hex has a fixed width).
pub fn new_serial() -> Result<Vec<u8>, IssueError> {
    let mut b = [0u8; 16];
    SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| IssueError::Random)?;
    b[0] = (b[0] & 0x3f) | 0x40;
    Ok(b.to_vec())
}

/// The serial of `params`, lower-case hex of its bytes (as `edge-provision list` shows it).
pub fn serial_hex(params: &CertificateParams) -> String {
    params
        .serial_number
        .as_ref()
        .map(|s| hex::encode(s.to_bytes()))
        .unwrap_or_default()
}

/// The subject name of a fleet certificate.
pub fn dn(org: &str, cn: &str) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    d.push(DnType::OrganizationName, org);
    d.push(DnType::CommonName, cn);
    d
}

/// The organisation name in a fleet's unit certificates.
pub fn fleet_org(fleet_id: &str) -> String {
    format!("Kerbside fleet {fleet_id}")
}

/// A unit's operational (client) certificate: subject `O=Kerbside fleet {fleet_id}, CN={device},
/// OU={role}`, the identity URI and one URI per cohort (see [`crate::identity`]), key usage
/// digitalSignature, EKU clientAuth only, a fresh random serial, validity in whole seconds.
pub fn unit_cert_params(
    fleet_id: &str,
    device_id: &DeviceId,
    role: UnitRole,
    cohorts: &[CohortSpec],
    not_before: UnixMillis,
    not_after: UnixMillis,
) -> Result<CertificateParams, IssueError> {
    if cohorts.len() > MAX_COHORTS {
        return Err(IssueError::TooManyCohorts);
    }
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(&fleet_org(fleet_id), device_id.as_str());
    p.distinguished_name
        .push(DnType::OrganizationalUnitName, role.as_str());
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(SerialNumber::from_slice(&new_serial()?));
    p.not_before = to_odt(whole_seconds(not_before))?;
    p.not_after = to_odt(whole_seconds(not_after))?;
    p.subject_alt_names
        .push(SanType::URI(identity_uri(role, device_id).try_into()?));
    for c in cohorts {
        p.subject_alt_names
            .push(SanType::URI(cohort_uri(c).try_into()?));
    }
    Ok(p)
}

/// The renewal CA: an intermediate under the fleet root, path length 0, may sign certificates
/// (not CRLs), EKU clientAuth only (a constraint verifiers apply to the whole chain).
pub fn renewal_ca_params(
    org: &str,
    fleet_id: &str,
    not_before: UnixMillis,
    not_after: UnixMillis,
) -> Result<CertificateParams, IssueError> {
    let mut p = CertificateParams::default();
    p.distinguished_name = dn(org, &format!("Kerbside fleet renewal CA {fleet_id}"));
    p.is_ca = IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    p.use_authority_key_identifier_extension = true;
    p.serial_number = Some(SerialNumber::from_slice(&new_serial()?));
    p.not_before = to_odt(whole_seconds(not_before))?;
    p.not_after = to_odt(whole_seconds(not_after))?;
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_due_two_thirds_through() {
        let nb = UnixMillis(0);
        let na = UnixMillis(UNIT_CERT_LIFETIME_MS);
        let due = renew_due_at(nb, na);
        assert_eq!(due.0, UNIT_CERT_LIFETIME_MS / 3 * 2);
        // A certificate whose end precedes its start is due at once.
        assert_eq!(renew_due_at(na, nb), na);
    }

    #[test]
    fn serials_are_positive_fixed_width() {
        for _ in 0..64 {
            let s = new_serial().unwrap();
            assert_eq!(s.len(), 16);
            assert!((0x40..=0x7f).contains(&s[0]));
        }
    }

    #[test]
    fn too_many_cohorts_are_refused() {
        let many = vec![CohortSpec::All; MAX_COHORTS + 1];
        let id = DeviceId::parse("LAS-AMB-0001").unwrap();
        assert!(matches!(
            unit_cert_params(
                "f",
                &id,
                UnitRole::Vehicle,
                &many,
                UnixMillis(0),
                UnixMillis(1)
            ),
            Err(IssueError::TooManyCohorts)
        ));
    }
}
