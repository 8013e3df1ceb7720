//! Small validated identifiers shared by every crate: ODS organisation codes, device ids, unit
//! and staff roles, postcodes and cohort specifications.
//!
//! Each type can only be built by a successful parse ("parse, don't validate"), so code that
//! holds one never re-checks it.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Why an identifier was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("invalid ODS organisation code {0:?}: expected 3 to 8 letters and digits, e.g. F84001 or RRU")]
    Ods(String),
    #[error("invalid device id {0:?}: expected 1 to 64 characters from A-Z a-z 0-9 . _ -")]
    Device(String),
    #[error("unknown unit role {0:?}: expected vehicle or kiosk")]
    UnitRole(String),
    #[error("unknown staff role {0:?}: expected clinical or admin")]
    StaffRole(String),
    #[error("invalid postcode district {0:?}: expected an outward code such as SE1, E14 or SW1A")]
    PostcodeDistrict(String),
    #[error("invalid cohort {spec:?}: {why}; expected all, flagged, postcode:SE1,SE5 or practice:F84001")]
    Cohort { spec: String, why: String },
    #[error("invalid source organisation {0:?}: expected an ODS code (e.g. RJZ) or system|value of another identifier")]
    Source(String),
}

/// An ODS organisation code (`https://fhir.nhs.uk/Id/ods-organization-code`), upper-case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct OdsCode(String);

impl OdsCode {
    /// Parse an ODS code; case-insensitive, stored upper-case.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let t = s.trim();
        if (3..=8).contains(&t.len()) && t.bytes().all(|b| b.is_ascii_alphanumeric()) {
            Ok(OdsCode(t.to_ascii_uppercase()))
        } else {
            Err(IdError::Ods(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A fleet device id, e.g. `LAS-AMB-0192`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

impl DeviceId {
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            Ok(DeviceId(s.to_owned()))
        } else {
            Err(IdError::Device(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What kind of unit a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnitRole {
    /// A vehicle unit (ambulance, response car) behind a supervisor board.
    Vehicle,
    /// An emergency-department triage kiosk on mains power.
    Kiosk,
}

/// What a member of staff may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StaffRole {
    /// Sees the full critical summary.
    Clinical,
    /// Sees demographics and whether a record exists, never clinical content.
    Admin,
}

macro_rules! string_enum {
    ($t:ty, $err:ident, { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
        }
        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                match s.trim().to_ascii_lowercase().as_str() {
                    $($s => Ok(Self::$v),)+
                    _ => Err(IdError::$err(s.to_owned())),
                }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result { f.write_str(self.as_str()) }
        }
    };
}
string_enum!(UnitRole, UnitRole, { Vehicle => "vehicle", Kiosk => "kiosk" });
string_enum!(StaffRole, StaffRole, { Clinical => "clinical", Admin => "admin" });

macro_rules! string_newtype {
    ($t:ident) => {
        impl TryFrom<String> for $t {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                $t::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
        impl FromStr for $t {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                $t::parse(s)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
string_newtype!(OdsCode);
string_newtype!(SourceId);
string_newtype!(DeviceId);

/// The organisation an item came from: its ODS code (upper-case, e.g. `RJZ`) or, for an
/// organisation that exchanges know only by another identifier (a care home, a hospice, a
/// service outside the NHS), that identifier as `system|value`.
///
/// Encoded as one string, so values written when this was an [`OdsCode`] decode unchanged.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SourceId(String);

impl SourceId {
    /// The longest `system|value` kept.
    pub const MAX_LEN: usize = 256;

    /// Parse an ODS code, or `system|value` (printable, no spaces in the system, at most
    /// [`Self::MAX_LEN`] bytes).
    pub fn parse(s: &str) -> Result<Self, IdError> {
        if let Ok(o) = OdsCode::parse(s) {
            return Ok(SourceId::ods(&o));
        }
        match s.split_once('|') {
            Some((system, value))
                if !system.is_empty()
                    && !value.trim().is_empty()
                    && s.len() <= Self::MAX_LEN
                    && !system.contains(char::is_whitespace)
                    && !s.chars().any(char::is_control) =>
            {
                Ok(SourceId(s.to_owned()))
            }
            _ => Err(IdError::Source(s.to_owned())),
        }
    }
    /// An organisation known by its ODS code.
    pub fn ods(code: &OdsCode) -> Self {
        SourceId(code.as_str().to_owned())
    }
    /// An organisation known by another identifier.
    pub fn other(system: &str, value: &str) -> Result<Self, IdError> {
        SourceId::parse(&format!("{system}|{}", value.trim()))
    }
    /// The ODS code, when the organisation is known by one.
    pub fn as_ods(&self) -> Option<OdsCode> {
        if self.0.contains('|') {
            None
        } else {
            OdsCode::parse(&self.0).ok()
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
string_newtype!(PostcodeDistrict);

/// A UK postcode district (the outward code), e.g. `SE1`, `E14`, `SW1A`, upper-case.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PostcodeDistrict(String);

impl PostcodeDistrict {
    /// Parse an outward code: 1–2 letters, a digit, then an optional digit or letter.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let t = s.trim().to_ascii_uppercase();
        let b = t.as_bytes();
        let letters = b.iter().take_while(|c| c.is_ascii_alphabetic()).count();
        let rest = &b[letters..];
        let ok = (1..=2).contains(&letters)
            && !rest.is_empty()
            && rest.len() <= 2
            && rest[0].is_ascii_digit()
            && rest[1..].iter().all(|c| c.is_ascii_alphanumeric());
        if ok {
            Ok(PostcodeDistrict(t))
        } else {
            Err(IdError::PostcodeDistrict(s.to_owned()))
        }
    }

    /// The district of a full or partial postcode (`"SE1 7EH"` → `SE1`, `"se17eh"` → `SE1`).
    pub fn of_postcode(postcode: &str) -> Option<Self> {
        let compact: String = postcode
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_uppercase();
        // A full postcode's inward code is always digit + two letters.
        let outward = if compact.len() >= 5 {
            let (o, i) = compact.split_at(compact.len() - 3);
            let ib = i.as_bytes();
            if ib[0].is_ascii_digit() && ib[1].is_ascii_alphabetic() && ib[2].is_ascii_alphabetic()
            {
                o.to_owned()
            } else {
                compact
            }
        } else {
            compact
        };
        Self::parse(&outward).ok()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which patients a unit receives. Decided by the fleet (it travels in the unit's certificate
/// or is set at the hub), never by the unit. A unit's cohort is the union of its specs.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CohortSpec {
    /// Every patient the hub holds.
    All,
    /// Patients whose postcode lies in one of these districts.
    Postcode(Vec<PostcodeDistrict>),
    /// Patients registered with one of these GP practices.
    Practice(Vec<OdsCode>),
    /// Every patient with a care plan or a resuscitation decision.
    Flagged,
}

impl CohortSpec {
    /// Parse `all`, `flagged`, `postcode:SE1,SE5` or `practice:F84001,F84002`.
    pub fn parse(spec: &str) -> Result<Self, IdError> {
        let err = |why: &str| IdError::Cohort {
            spec: spec.to_owned(),
            why: why.to_owned(),
        };
        let s = spec.trim();
        let (kind, list) = match s.split_once(':') {
            Some((k, l)) => (k.trim().to_ascii_lowercase(), Some(l)),
            None => (s.to_ascii_lowercase(), None),
        };
        let items = |l: Option<&str>| -> Result<Vec<String>, IdError> {
            let l = l.ok_or_else(|| err("a list is required after ':'"))?;
            let v: Vec<String> = l
                .split(',')
                .map(|x| x.trim().to_owned())
                .filter(|x| !x.is_empty())
                .collect();
            if v.is_empty() {
                return Err(err("the list is empty"));
            }
            if v.len() > 1_000 {
                return Err(err("more than 1000 entries"));
            }
            Ok(v)
        };
        match (kind.as_str(), list) {
            ("all", None) => Ok(CohortSpec::All),
            ("flagged", None) => Ok(CohortSpec::Flagged),
            ("postcode", l) => {
                let mut v = items(l)?
                    .iter()
                    .map(|x| PostcodeDistrict::parse(x).map_err(|e| err(&e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?;
                v.sort();
                v.dedup();
                Ok(CohortSpec::Postcode(v))
            }
            ("practice", l) => {
                let mut v = items(l)?
                    .iter()
                    .map(|x| OdsCode::parse(x).map_err(|e| err(&e.to_string())))
                    .collect::<Result<Vec<_>, _>>()?;
                v.sort();
                v.dedup();
                Ok(CohortSpec::Practice(v))
            }
            ("all" | "flagged", Some(_)) => Err(err("takes no list")),
            _ => Err(err("unknown kind")),
        }
    }
}

impl fmt::Display for CohortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn join<T: fmt::Display>(v: &[T]) -> String {
            v.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
        match self {
            CohortSpec::All => f.write_str("all"),
            CohortSpec::Flagged => f.write_str("flagged"),
            CohortSpec::Postcode(v) => write!(f, "postcode:{}", join(v)),
            CohortSpec::Practice(v) => write!(f, "practice:{}", join(v)),
        }
    }
}

impl FromStr for CohortSpec {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        CohortSpec::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ods_codes() {
        assert_eq!(OdsCode::parse("f84001").unwrap().as_str(), "F84001");
        assert_eq!(SourceId::parse("rjz").unwrap().as_str(), "RJZ");
        assert_eq!(
            SourceId::parse("rjz").unwrap().as_ods().unwrap().as_str(),
            "RJZ"
        );
        let other = SourceId::parse("https://example.org/care-home|CH-0042").unwrap();
        assert!(other.as_ods().is_none());
        for bad in ["", "|x", "sys|", "a b|c", "x"] {
            assert!(SourceId::parse(bad).is_err(), "{bad}");
        }
        assert!(OdsCode::parse("RRU").is_ok());
        for bad in ["", "AB", "F84 001", "F84001XYZ", "ÄBC"] {
            assert!(OdsCode::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_ids() {
        assert!(DeviceId::parse("LAS-AMB-0192").is_ok());
        for bad in ["", "a b", "x/y", &"a".repeat(65)] {
            assert!(DeviceId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn roles() {
        assert_eq!("Vehicle".parse::<UnitRole>().unwrap(), UnitRole::Vehicle);
        assert!("submarine".parse::<UnitRole>().is_err());
        assert_eq!("admin".parse::<StaffRole>().unwrap(), StaffRole::Admin);
    }

    #[test]
    fn postcode_districts() {
        for (pc, d) in [
            ("SE1 7EH", "SE1"),
            ("se17eh", "SE1"),
            ("SW1A 1AA", "SW1A"),
            ("E14 5AB", "E14"),
            ("N1", "N1"),
            ("W1D", "W1D"),
        ] {
            assert_eq!(
                PostcodeDistrict::of_postcode(pc).unwrap().as_str(),
                d,
                "{pc}"
            );
        }
        for bad in ["", "123", "SE", "ABC1", "SE1 7", "S-1"] {
            assert!(PostcodeDistrict::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cohort_specs() {
        assert_eq!(CohortSpec::parse("all").unwrap(), CohortSpec::All);
        assert_eq!(CohortSpec::parse("FLAGGED").unwrap(), CohortSpec::Flagged);
        let p = CohortSpec::parse("postcode:SE5, se1").unwrap();
        assert_eq!(p.to_string(), "postcode:SE1,SE5");
        assert_eq!(CohortSpec::parse(&p.to_string()).unwrap(), p);
        assert_eq!(
            CohortSpec::parse("practice:F84001").unwrap().to_string(),
            "practice:F84001"
        );
        for bad in [
            "",
            "everyone",
            "postcode:",
            "postcode:12",
            "practice:F8",
            "all:x",
            "postcode",
        ] {
            assert!(CohortSpec::parse(bad).is_err(), "{bad}");
        }
    }
}
