//! A unit's identity inside its certificate, and reading it back.
//!
//! An operational (client) certificate carries, as URI subject-alternative names:
//!
//! - exactly one identity: `kerbside://fleet/{role}/{device_id}`, e.g.
//!   `kerbside://fleet/vehicle/LAS-AMB-0192` (role `vehicle` or `kiosk`);
//! - one name per cohort spec: `kerbside://fleet/cohort/{spec}`, the spec in its canonical form
//!   ([`CohortSpec`]'s `Display`) percent-encoded, e.g. `kerbside://fleet/cohort/postcode%3ASE1%2CSE5`.
//!
//! Because the CA signs these names, the hub can trust the cohort without asking the unit: a
//! unit that edits its own `edge.toml` cannot widen what it receives. A certificate with no
//! cohort names leaves the cohort to the hub's operator.

use edge_proto::ids::{CohortSpec, DeviceId, UnitRole};
use edge_proto::time::UnixMillis;
use x509_parser::extensions::GeneralName;

/// The URI prefix of every Kerbside fleet name.
pub const URI_PREFIX: &str = "kerbside://fleet/";
/// The path segment that marks a cohort name.
const COHORT_SEGMENT: &str = "cohort";
/// The most cohort names a certificate may carry (a limit on outside input).
pub const MAX_COHORTS: usize = 64;

/// Who a verified client certificate belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitIdentity {
    /// The unit's fleet device id.
    pub device_id: DeviceId,
    /// Vehicle or kiosk.
    pub role: UnitRole,
    /// The cohorts the fleet assigned (empty: the hub's operator decides).
    pub cohorts: Vec<CohortSpec>,
    /// The certificate serial, lower-case hex of its DER bytes (as `edge-provision list` shows).
    pub serial: String,
    /// When the certificate expires.
    pub not_after: UnixMillis,
}

/// Why a certificate carries no usable unit identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// Not a parseable X.509 certificate.
    #[error("not a valid X.509 certificate: {0}")]
    BadCertificate(String),
    /// No `kerbside://fleet/{role}/{id}` name.
    #[error("the certificate carries no Kerbside unit identity (kerbside://fleet/ROLE/DEVICE-ID)")]
    NoIdentity,
    /// More than one identity name.
    #[error("the certificate carries more than one Kerbside unit identity")]
    AmbiguousIdentity,
    /// A Kerbside name that does not parse.
    #[error("the certificate carries an invalid Kerbside name {uri:?}: {why}")]
    BadName { uri: String, why: String },
}

/// The identity URI for a unit.
pub fn identity_uri(role: UnitRole, device_id: &DeviceId) -> String {
    format!("{URI_PREFIX}{role}/{device_id}")
}

/// The URI carrying one cohort spec.
pub fn cohort_uri(spec: &CohortSpec) -> String {
    format!(
        "{URI_PREFIX}{COHORT_SEGMENT}/{}",
        percent_encode(&spec.to_string())
    )
}

/// Read the unit identity from a DER certificate. Call it on a certificate the TLS stack has
/// already verified (e.g. quinn's `Connection::peer_identity()`, first certificate): it checks
/// names, not signatures.
pub fn peer_identity(cert_der: &[u8]) -> Result<UnitIdentity, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let mut identity: Option<(UnitRole, DeviceId)> = None;
    let mut cohorts = Vec::new();
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let Some(path) = uri.strip_prefix(URI_PREFIX) else {
            continue;
        };
        let bad = |why: String| IdentityError::BadName {
            uri: (*uri).to_owned(),
            why,
        };
        let (first, rest) = path
            .split_once('/')
            .ok_or_else(|| bad("expected ROLE/DEVICE-ID".into()))?;
        if first == COHORT_SEGMENT {
            if cohorts.len() >= MAX_COHORTS {
                return Err(bad(format!("more than {MAX_COHORTS} cohorts")));
            }
            let text = percent_decode(rest).ok_or_else(|| bad("bad percent-encoding".into()))?;
            cohorts.push(CohortSpec::parse(&text).map_err(|e| bad(e.to_string()))?);
        } else {
            let role: UnitRole = first
                .parse()
                .map_err(|e: edge_proto::ids::IdError| bad(e.to_string()))?;
            let id = DeviceId::parse(rest).map_err(|e| bad(e.to_string()))?;
            if identity.replace((role, id)).is_some() {
                return Err(IdentityError::AmbiguousIdentity);
            }
        }
    }
    let (role, device_id) = identity.ok_or(IdentityError::NoIdentity)?;
    Ok(UnitIdentity {
        device_id,
        role,
        cohorts,
        serial: hex::encode(cert.raw_serial()),
        not_after: UnixMillis(cert.validity().not_after.timestamp().saturating_mul(1000)),
    })
}

/// Percent-encode everything but RFC 3986 unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hexpair = b.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hexpair).ok()?, 16).ok()?;
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_round_trip() {
        for s in ["postcode:SE1,SE5", "all", "practice:F84001", "a%b c"] {
            assert_eq!(percent_decode(&percent_encode(s)).unwrap(), s);
        }
        assert_eq!(percent_encode("postcode:SE1,SE5"), "postcode%3ASE1%2CSE5");
        assert!(percent_decode("%").is_none());
        assert!(percent_decode("%zz").is_none());
        assert!(percent_decode("%ff").is_none(), "not UTF-8");
    }

    #[test]
    fn uris() {
        let id = DeviceId::parse("LAS-AMB-0192").unwrap();
        assert_eq!(
            identity_uri(UnitRole::Vehicle, &id),
            "kerbside://fleet/vehicle/LAS-AMB-0192"
        );
        assert_eq!(cohort_uri(&CohortSpec::All), "kerbside://fleet/cohort/all");
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        assert!(matches!(
            peer_identity(b"nope"),
            Err(IdentityError::BadCertificate(_))
        ));
        assert!(matches!(
            peer_identity(&[]),
            Err(IdentityError::BadCertificate(_))
        ));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2048)) {
            let _ = peer_identity(&b);
        }

        #[test]
        fn arbitrary_percent_text_never_panics(s in "[%0-9a-fA-F:,A-Z]{0,40}") {
            let _ = percent_decode(&s);
        }
    }
}
