//! Time as plain values. `edge-proto` never reads a clock: every "now" comes in as an argument.
//!
//! [`UnixMillis`] is milliseconds since the Unix epoch (UTC). It is what travels on the wire (a
//! CBOR integer) and what the state machines compare; it renders as RFC 3339 for people and
//! FHIR.

use std::fmt;

use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// A UTC instant in milliseconds since the Unix epoch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

/// An instant could not be parsed as RFC 3339 / FHIR `instant`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an RFC 3339 instant: {0:?}")]
pub struct BadInstant(pub String);

impl UnixMillis {
    /// Milliseconds in one second.
    pub const SECOND: i64 = 1_000;
    /// Milliseconds in one hour.
    pub const HOUR: i64 = 3_600_000;
    /// Milliseconds in one day.
    pub const DAY: i64 = 86_400_000;

    /// Parse an RFC 3339 instant (`2024-11-02T10:00:00Z`, fractional seconds and offsets allowed).
    pub fn parse_rfc3339(s: &str) -> Result<Self, BadInstant> {
        let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|_| BadInstant(s.to_owned()))?;
        let ms = t.unix_timestamp_nanos() / 1_000_000;
        i64::try_from(ms)
            .map(UnixMillis)
            .map_err(|_| BadInstant(s.to_owned()))
    }

    /// Render as RFC 3339 in UTC with millisecond precision when needed (`…T10:00:00Z` or
    /// `…T10:00:00.123Z`). Out-of-range values render as the epoch rather than panicking.
    pub fn to_rfc3339(self) -> String {
        let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(self.0) * 1_000_000)
            .unwrap_or(OffsetDateTime::UNIX_EPOCH);
        let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
        let (h, mi, s) = (t.hour(), t.minute(), t.second());
        let ms = t.millisecond();
        if ms == 0 {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
        } else {
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{ms:03}Z")
        }
    }

    /// `self - earlier` in whole seconds, never negative.
    pub fn seconds_since(self, earlier: UnixMillis) -> u64 {
        u64::try_from((self.0.saturating_sub(earlier.0)) / 1_000).unwrap_or(0)
    }

    /// `self + ms`, saturating.
    pub fn plus_ms(self, ms: i64) -> UnixMillis {
        UnixMillis(self.0.saturating_add(ms))
    }
}

impl fmt::Display for UnixMillis {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trip() {
        for s in [
            "2024-11-02T10:00:00Z",
            "1950-01-01T00:00:00.123Z",
            "2026-11-23T19:29:17Z",
        ] {
            let t = UnixMillis::parse_rfc3339(s).unwrap();
            assert_eq!(t.to_rfc3339(), s);
        }
        let t = UnixMillis::parse_rfc3339("2024-11-02T11:00:00+01:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2024-11-02T10:00:00Z");
        assert!(UnixMillis::parse_rfc3339("2024-11-02").is_err());
        assert!(UnixMillis::parse_rfc3339("yesterday").is_err());
    }

    #[test]
    fn seconds_since_never_negative() {
        assert_eq!(UnixMillis(5_000).seconds_since(UnixMillis(1_000)), 4);
        assert_eq!(UnixMillis(1_000).seconds_since(UnixMillis(5_000)), 0);
    }
}
