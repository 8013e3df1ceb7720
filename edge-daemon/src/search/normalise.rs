//! Normalisation of what a crew types and what a record holds, before anything is compared:
//! names folded to lowercase ASCII words (accents transliterated, apostrophes dropped, hyphens
//! and spaces as part boundaries), UK postcodes split into full postcode and district, birth
//! dates checked as real `YYYY-MM-DD` days, and the parameter length limit.
//!
//! Everything here is a pure function of its input. The phonetic code (`phonetic.rs`), the
//! nickname table (`nicknames.rs`) and the index (`index.rs`) build on these; [`normalise_name`]
//! and [`postcode_parts`] are public as `search::normalise_name` / `search::postcode_parts`.

use super::MAX_PARAM_CHARS;

/// Longer than [`MAX_PARAM_CHARS`] characters (counting stops just past the limit).
pub(super) fn too_long(s: &str) -> bool {
    s.chars().take(MAX_PARAM_CHARS + 1).count() > MAX_PARAM_CHARS
}

/// Fold a name to lowercase ASCII words: accents and other scripts transliterated, apostrophes
/// dropped (`O'Brien` → `obrien`), anything else that is not a letter a word boundary.
pub(super) fn fold_words(s: &str) -> Vec<String> {
    let ascii = deunicode::deunicode_with_tofu_cow(s, "");
    let mut words = Vec::new();
    let mut cur = String::new();
    for c in ascii.chars() {
        match c {
            'a'..='z' => cur.push(c),
            'A'..='Z' => cur.push(c.to_ascii_lowercase()),
            '\'' | '`' => {}
            _ => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// A name as it is compared: lowercase ASCII letters only, parts joined
/// (`Smith-Jones` → `smithjones`, `Zoë` → `zoe`, `O'Brien` → `obrien`).
pub fn normalise_name(s: &str) -> String {
    fold_words(s).concat()
}

/// A UK postcode split for matching: the full postcode (no space, upper case) when the value
/// is a well-formed full postcode, and the district (outward code). `None` when the value is
/// neither a full postcode nor a district. Spacing and case do not matter, except that a
/// district followed by more characters must be a full postcode (`SE1 7` is refused).
///
/// `"se1 7eh"` → `(Some("SE17EH"), "SE1")`; `"SE1"` → `(None, "SE1")`.
pub fn postcode_parts(s: &str) -> Option<(Option<String>, String)> {
    let compact: String = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if compact.len() > 8 || !compact.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return None;
    }
    let b = compact.as_bytes();
    if is_district(b) {
        // "SE1 7" is a sector (SE1 plus the inward code's digit), not the district SE17.
        let mut groups = s.split_whitespace();
        let first_is_district = groups
            .next()
            .is_some_and(|g| is_district(g.to_ascii_uppercase().as_bytes()));
        if first_is_district && groups.next().is_some() {
            return None;
        }
        return Some((None, compact));
    }
    let n = b.len();
    if n >= 5
        && b[n - 3].is_ascii_digit()
        && b[n - 2].is_ascii_alphabetic()
        && b[n - 1].is_ascii_alphabetic()
        && is_district(&b[..n - 3])
    {
        let district = compact[..n - 3].to_owned();
        return Some((Some(compact), district));
    }
    None
}

/// An outward code: one or two letters, a digit, then an optional letter or digit.
fn is_district(b: &[u8]) -> bool {
    let letters = b.iter().take_while(|c| c.is_ascii_alphabetic()).count();
    if !(1..=2).contains(&letters) {
        return false;
    }
    let rest = &b[letters..];
    match rest {
        [d] => d.is_ascii_digit(),
        [d, x] => d.is_ascii_digit() && x.is_ascii_alphanumeric(),
        _ => false,
    }
}

/// `YYYY-MM-DD` naming a real Gregorian calendar day.
pub(super) fn valid_birth_date(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return false;
    }
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let part = b.get(r)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(part.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0')))
    };
    let (Some(y), Some(m), Some(d)) = (num(0..4), num(5..7), num(8..10)) else {
        return false;
    };
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return false,
    };
    y >= 1 && (1..=days).contains(&d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postcode_shapes() {
        assert_eq!(
            postcode_parts(" se1  7eh "),
            Some((Some("SE17EH".into()), "SE1".into()))
        );
        assert_eq!(
            postcode_parts("W1A 1AA"),
            Some((Some("W1A1AA".into()), "W1A".into()))
        );
        assert_eq!(postcode_parts("ec1a"), Some((None, "EC1A".into())));
        assert_eq!(postcode_parts("SE17"), Some((None, "SE17".into())));
        assert_eq!(postcode_parts("SE1 7"), None);
        assert_eq!(postcode_parts("1SE"), None);
        assert_eq!(postcode_parts("SE1-7EH"), None);
        assert_eq!(postcode_parts(""), None);
    }

    #[test]
    fn birth_dates() {
        assert!(valid_birth_date("2000-02-29"));
        assert!(!valid_birth_date("1900-02-29"));
        assert!(!valid_birth_date("1950-13-01"));
        assert!(!valid_birth_date("1950-1-01"));
        assert!(!valid_birth_date("1950-01-32"));
        assert!(!valid_birth_date("1950-01-00"));
        assert!(!valid_birth_date("19500101"));
    }
}
