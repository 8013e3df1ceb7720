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
//!
//! Server certificates carry a marker URI saying what kind of server they are, so one kind can
//! never stand in for the other ([`server_role`]):
//!
//! - the hub's: `kerbside://hub/{name}` (the hub's `--name`, percent-encoded);
//! - a unit's LAN certificate: `kerbside://lan/{device_id}`, beside a DNS name derived from the
//!   device id under the fleet's LAN domain ([`lan_dns_name`]:
//!   `LAS-AMB-0192` → `las-amb-0192.units.kerbside.invalid`) and its LAN address.
//!
//! The unit's hub verifier requires the hub marker; a tablet (or [`crate::tls::lan_client_config`])
//! verifies the unit's DNS name and LAN marker, so another unit's LAN key does not pass.

use edge_proto::ids::{CohortSpec, DeviceId, UnitRole};
use edge_proto::time::UnixMillis;
use x509_parser::extensions::GeneralName;

/// The URI prefix of every Kerbside fleet name.
pub const URI_PREFIX: &str = "kerbside://fleet/";
/// The URI prefix marking the hub's server certificate.
pub const HUB_URI_PREFIX: &str = "kerbside://hub/";
/// The URI prefix marking a unit's LAN server certificate.
pub const LAN_URI_PREFIX: &str = "kerbside://lan/";
/// The LAN domain a fleet uses when `ca init` is given none (`.invalid` never resolves on the
/// internet, so the names only mean something to the fleet's own tablets).
pub const DEFAULT_LAN_DOMAIN: &str = "units.kerbside.invalid";
/// The path segment that marks a cohort name.
const COHORT_SEGMENT: &str = "cohort";
/// The most cohort names a certificate may carry (a limit on outside input).
pub const MAX_COHORTS: usize = 64;

/// A unit renews once this much of its certificate's lifetime has passed (2/3: about 2.3 days
/// before a 7-day certificate expires, so a unit out of coverage for two days still renews).
pub const RENEW_AFTER_FRACTION: (i64, i64) = (2, 3);

/// When a certificate valid from `not_before` to `not_after` is due for renewal.
pub fn renew_due_at(not_before: UnixMillis, not_after: UnixMillis) -> UnixMillis {
    let (num, den) = RENEW_AFTER_FRACTION;
    let life = not_after.0.saturating_sub(not_before.0).max(0);
    UnixMillis(not_before.0.saturating_add(life / den * num))
}

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
    /// A server certificate without a `kerbside://hub/` or `kerbside://lan/` marker.
    #[error("the certificate carries no Kerbside server marker (kerbside://hub/NAME or kerbside://lan/DEVICE-ID)")]
    NoServerRole,
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

/// The URI marking the hub's server certificate for `name`.
pub fn hub_uri(name: &str) -> String {
    format!("{HUB_URI_PREFIX}{}", percent_encode(name))
}

/// The URI marking a unit's LAN server certificate.
pub fn lan_uri(device_id: &DeviceId) -> String {
    format!("{LAN_URI_PREFIX}{device_id}")
}

/// Why a LAN domain or a device id does not make a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("LAN domain {0:?}: expected 1 to 180 characters")]
    DomainLength(String),
    #[error("LAN domain {0:?}: expected at least two labels, e.g. units.kerbside.invalid")]
    DomainLabels(String),
    #[error("LAN domain {domain:?}: label {label:?} is not 1-63 of a-z 0-9 - (not starting or ending with -)")]
    DomainLabel { domain: String, label: String },
    #[error("device id {device} does not make a DNS label ({label:?}: 1-63 of a-z 0-9 -, not starting or ending with -)")]
    DeviceLabel { device: String, label: String },
}

/// Check and normalise a fleet's LAN domain: a DNS name of at least two labels, each 1–63 of
/// `a-z 0-9 -` not starting or ending with `-`, at most 180 bytes (room for a device label),
/// returned lower-case without a trailing dot.
pub fn check_lan_domain(domain: &str) -> Result<String, NameError> {
    let d = domain.trim().trim_end_matches('.').to_ascii_lowercase();
    if d.is_empty() || d.len() > 180 {
        return Err(NameError::DomainLength(domain.to_owned()));
    }
    let labels: Vec<&str> = d.split('.').collect();
    if labels.len() < 2 {
        return Err(NameError::DomainLabels(domain.to_owned()));
    }
    if let Some(bad) = labels.iter().find(|l| !valid_label(l)) {
        return Err(NameError::DomainLabel {
            domain: domain.to_owned(),
            label: (*bad).to_owned(),
        });
    }
    Ok(d)
}

fn valid_label(l: &str) -> bool {
    !l.is_empty()
        && l.len() <= 63
        && !l.starts_with('-')
        && !l.ends_with('-')
        && l.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// The DNS label for a device id: lower-case, `.` and `_` become `-`
/// (`LAS-AMB-0192` → `las-amb-0192`). Fails when the result is not a valid DNS label (longer
/// than 63, or starting or ending with `-`).
pub fn lan_label(device_id: &DeviceId) -> Result<String, NameError> {
    let label: String = device_id
        .as_str()
        .chars()
        .map(|c| match c {
            '.' | '_' => '-',
            c => c.to_ascii_lowercase(),
        })
        .collect();
    if valid_label(&label) {
        Ok(label)
    } else {
        Err(NameError::DeviceLabel {
            device: device_id.to_string(),
            label,
        })
    }
}

/// The unit's LAN DNS name: its [`lan_label`] under the fleet's LAN domain, e.g.
/// `las-amb-0192.units.kerbside.invalid`.
pub fn lan_dns_name(device_id: &DeviceId, lan_domain: &str) -> Result<String, NameError> {
    let domain = check_lan_domain(lan_domain)?;
    Ok(format!("{}.{domain}", lan_label(device_id)?))
}

/// What kind of server a certificate was issued to, by its marker URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerRole {
    /// The hub (`kerbside://hub/{name}`), with the name decoded.
    Hub(String),
    /// A unit's LAN API (`kerbside://lan/{device_id}`).
    Lan(DeviceId),
}

/// Read the server marker from a DER certificate: exactly one `kerbside://hub/` or
/// `kerbside://lan/` name. Checks names, not signatures (call it on a verified certificate).
pub fn server_role(cert_der: &[u8]) -> Result<ServerRole, IdentityError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| IdentityError::BadCertificate(e.to_string()))?;
    let mut found: Option<ServerRole> = None;
    for name in san.iter().flat_map(|s| s.value.general_names.iter()) {
        let GeneralName::URI(uri) = name else {
            continue;
        };
        let bad = |why: &str| IdentityError::BadName {
            uri: (*uri).to_owned(),
            why: why.to_owned(),
        };
        let role = if let Some(rest) = uri.strip_prefix(HUB_URI_PREFIX) {
            ServerRole::Hub(percent_decode(rest).ok_or_else(|| bad("bad percent-encoding"))?)
        } else if let Some(rest) = uri.strip_prefix(LAN_URI_PREFIX) {
            ServerRole::Lan(DeviceId::parse(rest).map_err(|e| bad(&e.to_string()))?)
        } else {
            continue;
        };
        if found.replace(role).is_some() {
            return Err(IdentityError::AmbiguousIdentity);
        }
    }
    found.ok_or(IdentityError::NoServerRole)
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
    fn lan_names_and_markers() {
        let id = DeviceId::parse("LAS-AMB-0192").unwrap();
        assert_eq!(
            lan_dns_name(&id, DEFAULT_LAN_DOMAIN).unwrap(),
            "las-amb-0192.units.kerbside.invalid"
        );
        assert_eq!(
            lan_dns_name(&DeviceId::parse("Kiosk_1.A").unwrap(), "LAS.Example.").unwrap(),
            "kiosk-1-a.las.example"
        );
        assert!(lan_label(&DeviceId::parse("-X").unwrap()).is_err());
        assert!(lan_label(&DeviceId::parse(&"A".repeat(64)).unwrap()).is_err());
        for bad in ["", "invalid", "a..b", "-a.b", "a_b.c", "a b.c"] {
            assert!(check_lan_domain(bad).is_err(), "{bad:?}");
        }
        assert_eq!(lan_uri(&id), "kerbside://lan/LAS-AMB-0192");
        assert_eq!(hub_uri("::1"), "kerbside://hub/%3A%3A1");
        assert!(server_role(b"nope").is_err());
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
