//! The NHS number: ten digits, the tenth a Modulus-11 check digit (NHS Data Dictionary).
//!
//! An [`NhsNumber`] can only be obtained from a successful parse, so holding one means the
//! number is well-formed, its check digit is right, and it is not a repeated-digit number
//! (those pass the checksum but are never issued). Displayed `3 3 4`: `943 476 5919`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A valid NHS number, stored as its ten digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NhsNumber([u8; 10]);

/// Why a string is not a valid NHS number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NhsNumberError {
    #[error("an NHS number has 10 digits; got {0}")]
    Length(usize),
    #[error("an NHS number has only digits (spaces allowed); found {0:?}")]
    NotDigit(char),
    #[error("check digit is wrong (the number was probably mistyped)")]
    CheckDigit,
    #[error("this number can never be issued (its check digit would be 10)")]
    NeverIssued,
    #[error("repeated-digit numbers are never issued")]
    RepeatedDigits,
}

impl NhsNumber {
    /// The FHIR identifier system for NHS numbers.
    pub const SYSTEM: &'static str = "https://fhir.nhs.uk/Id/nhs-number";

    /// Parse a number typed or received: ASCII digits, with spaces allowed anywhere
    /// (`9434765919`, `943 476 5919`). Hyphens and other characters are refused.
    pub fn parse(s: &str) -> Result<Self, NhsNumberError> {
        let mut d = [0u8; 10];
        let mut n = 0usize;
        for c in s.chars() {
            if c == ' ' {
                continue;
            }
            let v = c
                .to_digit(10)
                .filter(|_| c.is_ascii_digit())
                .ok_or(NhsNumberError::NotDigit(c))?;
            if n < 10 {
                // `v` is 0..=9, so the cast cannot truncate.
                d[n] = v as u8;
            }
            n += 1;
        }
        if n != 10 {
            return Err(NhsNumberError::Length(n));
        }
        match check_digit(&d) {
            None => Err(NhsNumberError::NeverIssued),
            Some(c) if c != d[9] => Err(NhsNumberError::CheckDigit),
            Some(_) if d.iter().all(|&x| x == d[0]) => Err(NhsNumberError::RepeatedDigits),
            Some(_) => Ok(NhsNumber(d)),
        }
    }

    /// Build a number from its first nine digits by computing the check digit; `None` when
    /// the nine digits can never form a valid number (check 10, or repeated digits).
    pub fn from_nine_digits(first9: u32) -> Option<Self> {
        if first9 > 999_999_999 {
            return None;
        }
        let mut d = [0u8; 10];
        let mut x = first9;
        for i in (0..9).rev() {
            d[i] = (x % 10) as u8;
            x /= 10;
        }
        d[9] = check_digit(&d)?;
        if d.iter().all(|&x| x == d[0]) {
            return None;
        }
        Some(NhsNumber(d))
    }

    /// The ten digits as a string, no spaces (`9434765919`): the form used in FHIR and on the wire.
    pub fn as_digits(&self) -> String {
        self.0.iter().map(|&x| char::from(b'0' + x)).collect()
    }

    /// The ten digits.
    pub fn digits(&self) -> [u8; 10] {
        self.0
    }

    /// The number as an integer (for compact keys).
    pub fn as_u64(&self) -> u64 {
        self.0.iter().fold(0u64, |a, &x| a * 10 + u64::from(x))
    }
}

/// The Modulus-11 check digit for the first nine digits, or `None` when it would be 10.
fn check_digit(d: &[u8; 10]) -> Option<u8> {
    let s: u32 = (0..9).map(|i| u32::from(d[i]) * (10 - i as u32)).sum();
    match 11 - (s % 11) {
        11 => Some(0),
        10 => None,
        c => Some(c as u8),
    }
}

impl fmt::Display for NhsNumber {
    /// `943 476 5919`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_digits();
        write!(f, "{} {} {}", &s[0..3], &s[3..6], &s[6..10])
    }
}

impl fmt::Debug for NhsNumber {
    /// Redacted to the last three digits (`NhsNumber(*******919)`), so a `{:?}` in a log line,
    /// an error or a panic message never carries a whole NHS number.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_digits();
        write!(f, "NhsNumber(*******{})", &s[7..10])
    }
}

impl FromStr for NhsNumber {
    type Err = NhsNumberError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NhsNumber::parse(s)
    }
}

impl TryFrom<String> for NhsNumber {
    type Error = NhsNumberError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        NhsNumber::parse(&s)
    }
}

impl From<NhsNumber> for String {
    fn from(n: NhsNumber) -> String {
        n.as_digits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn data_model_vectors() {
        for ok in [
            "9434765919",
            "9111231130",
            "9990000018",
            "9990000026",
            "9990000034",
            "9000000009",
        ] {
            assert!(NhsNumber::parse(ok).is_ok(), "{ok} should be valid");
        }
        assert_eq!(
            NhsNumber::parse("1234567890"),
            Err(NhsNumberError::NeverIssued)
        );
        assert_eq!(
            NhsNumber::parse("9876544321"),
            Err(NhsNumberError::CheckDigit)
        );
        assert_eq!(
            NhsNumber::parse("9434765918"),
            Err(NhsNumberError::CheckDigit)
        );
    }

    #[test]
    fn spaces_and_display() {
        let n = NhsNumber::parse("943 476 5919").unwrap();
        assert_eq!(n.to_string(), "943 476 5919");
        assert_eq!(n.as_digits(), "9434765919");
        assert_eq!(NhsNumber::parse(" 9434765919 ").unwrap(), n);
        assert_eq!(n.as_u64(), 9_434_765_919);
    }

    #[test]
    fn bad_shapes() {
        assert_eq!(NhsNumber::parse(""), Err(NhsNumberError::Length(0)));
        assert_eq!(
            NhsNumber::parse("123456789"),
            Err(NhsNumberError::Length(9))
        );
        assert_eq!(
            NhsNumber::parse("94347659190"),
            Err(NhsNumberError::Length(11))
        );
        assert_eq!(
            NhsNumber::parse("94347659XX"),
            Err(NhsNumberError::NotDigit('X'))
        );
        assert_eq!(
            NhsNumber::parse("943-476-5919"),
            Err(NhsNumberError::NotDigit('-'))
        );
        // Non-ASCII digits are not NHS digits.
        assert!(NhsNumber::parse("٩٤٣٤٧٦٥٩١٩").is_err());
    }

    #[test]
    fn repeated_digits_rejected() {
        for d in 0..=9u8 {
            let s: String = std::iter::repeat_n(char::from(b'0' + d), 10).collect();
            assert!(NhsNumber::parse(&s).is_err(), "{s}");
        }
        assert_eq!(
            NhsNumber::parse("1111111111"),
            Err(NhsNumberError::RepeatedDigits)
        );
    }

    #[test]
    fn from_nine_digits_matches_parse() {
        assert_eq!(
            NhsNumber::from_nine_digits(943_476_591)
                .unwrap()
                .as_digits(),
            "9434765919"
        );
        assert_eq!(NhsNumber::from_nine_digits(123_456_789), None);
        assert_eq!(NhsNumber::from_nine_digits(111_111_111), None);
    }

    #[test]
    fn serde_as_string() {
        let n = NhsNumber::parse("9990000018").unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), "\"9990000018\"");
        assert!(serde_json::from_str::<NhsNumber>("\"9990000019\"").is_err());
    }

    proptest! {
        #[test]
        fn valid_numbers_round_trip(first9 in 0u32..=999_999_999) {
            if let Some(n) = NhsNumber::from_nine_digits(first9) {
                prop_assert_eq!(NhsNumber::parse(&n.as_digits()).unwrap(), n);
                prop_assert_eq!(NhsNumber::parse(&n.to_string()).unwrap(), n);
            }
        }

        /// The check digit's guarantee: any single-digit change of a valid number is caught.
        #[test]
        fn single_digit_changes_are_caught(first9 in 0u32..=999_999_999, pos in 0usize..10, delta in 1u8..10) {
            if let Some(n) = NhsNumber::from_nine_digits(first9) {
                let mut d = n.digits();
                d[pos] = (d[pos] + delta) % 10;
                let s: String = d.iter().map(|&x| char::from(b'0' + x)).collect();
                prop_assert!(NhsNumber::parse(&s).is_err(), "{} accepted after changing digit {}", s, pos);
            }
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,40}") {
            let _ = NhsNumber::parse(&s);
        }
    }

    #[test]
    fn debug_never_prints_the_whole_number() {
        let n = NhsNumber::parse("9434765919").unwrap();
        assert_eq!(format!("{n:?}"), "NhsNumber(*******919)");
        assert!(!format!("{:?}", Some(n)).contains("9434765"));
    }
}
