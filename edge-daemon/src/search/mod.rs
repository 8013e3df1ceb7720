//! Demographic search over the unit's cache (`GET /v1/search`).
//!
//! Every cached patient is posted under pairs of what they can be searched by — (family name
//! key, birth date), (family name key, postcode district), (birth date, district) — where a
//! family name key is the normalised name, each of its parts, or their phonetic code. A query
//! reads the postings of its own pairs (no scan), re-checks each patient found against their
//! demographics, scores them, and returns the best ten. The postings live in a
//! [`PostingStore`]: on disk under keyed hashes in the unit's cache (`cache.rs`), or in memory
//! ([`SearchIndex`], for tests and tools); the matching and scoring here are the same for both.
//!
//! The rules a crew can rely on (docs/search.md has the long form):
//!
//! * A query needs at least two of `family`, `birth_date`, `postcode` ([`SearchQuery::validate`]);
//!   a candidate must agree with it on at least two of those it gave. `given` only ranks.
//! * Names are compared after folding case and accents (`Zoë` = `Zoe`, `Łukasz` = `Lukasz`),
//!   dropping apostrophes (`O'Brien` = `OBrien` = `O Brien`) and treating hyphens and spaces as
//!   part boundaries (`Smith-Jones` = `Smith Jones` = `SmithJones`, and matches `Smith` or
//!   `Jones` at a lower score).
//! * Family names also match by sound ([`phonetic`](fn@phonetic): `Thompson` ~ `Tomson`,
//!   `Smyth` ~ `Smith`), at a lower score; given names match exactly, by nickname (`Bob` ~
//!   `Robert`, from `nicknames.txt`), by sound, or by initial.
//! * Results are best first, ties broken by NHS number, at most [`MAX_RESULTS`]; the number of
//!   patients that matched is returned too, for the audit event. Search never auto-selects.
//!
//! Layout: this file holds the public API (the query, its errors, the outcome and [`points`]);
//! `normalise` folds names, postcodes and dates; `phonetic` is the sound-alike code; `nicknames`
//! the built-in nickname table; `index` the postings, matching and scoring, and [`SearchIndex`].

use edge_proto::model::Gender;
use edge_proto::nhs::NhsNumber;
use serde::Serialize;

mod index;
mod nicknames;
mod normalise;
mod phonetic;

pub use index::{
    alias_in, kind, postings, search_in, PostingKey, PostingStore, Scored, SearchFailed,
    SearchIndex,
};
pub use nicknames::{nickname_equivalent, nickname_group_count};
pub use normalise::{normalise_name, postcode_parts};
pub use phonetic::phonetic;

use index::Prepared;
use normalise::too_long;

/// The most candidates a search returns.
pub const MAX_RESULTS: usize = 10;

/// The longest accepted parameter value, in characters.
pub const MAX_PARAM_CHARS: usize = 100;

/// Points each agreement adds to a candidate's score (documented in docs/search.md).
pub mod points {
    /// Family name equal after normalisation (`Smith-Jones` = `smith jones`).
    pub const FAMILY_EXACT: u32 = 40;
    /// One part of a double-barrelled family name equals the query or one of its parts.
    pub const FAMILY_PART: u32 = 30;
    /// Family name (or a part) sounds the same ([`super::phonetic`](fn@super::phonetic)).
    pub const FAMILY_PHONETIC: u32 = 20;
    /// Birth date equal (day precision).
    pub const BIRTH_DATE: u32 = 40;
    /// Full postcode equal.
    pub const POSTCODE_FULL: u32 = 30;
    /// Postcode district equal (query gave a district, or full postcodes differ in the inward part).
    pub const POSTCODE_DISTRICT: u32 = 15;
    /// A given name equal.
    pub const GIVEN_EXACT: u32 = 20;
    /// A given name is a nickname of the other (`Bob` / `Robert`).
    pub const GIVEN_NICKNAME: u32 = 15;
    /// A given name sounds the same (`Jon` / `John`, `Steven` / `Stephen`).
    pub const GIVEN_PHONETIC: u32 = 10;
    /// One side is an initial and the other starts with it.
    pub const GIVEN_INITIAL: u32 = 5;
    /// Taken off a given-name match that is on a middle name rather than the first given name.
    pub const GIVEN_MIDDLE_PENALTY: u32 = 3;
}

/// The parameters of `GET /v1/search`, as typed (trimmed; empty values are absent).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SearchQuery {
    pub family: Option<String>,
    pub given: Option<String>,
    /// `YYYY-MM-DD`, matched exactly.
    pub birth_date: Option<String>,
    /// A district (`SE1`) or a full postcode (`SE1 7EH`), any case and spacing.
    pub postcode: Option<String>,
}

/// Why a search was refused (HTTP 400). Messages name the parameter and the rule, never echo a
/// value (values are patient identifiers).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SearchError {
    #[error(
        "search needs at least two of family, birth_date and postcode (given alone does not \
         count); got {got}"
    )]
    TooFewCriteria { got: &'static str },
    #[error("{param} is longer than {max} characters")]
    TooLong { param: &'static str, max: usize },
    #[error("{param} has no letters")]
    NoLetters { param: &'static str },
    #[error("birth_date must be a calendar date written YYYY-MM-DD")]
    BadBirthDate,
    #[error("postcode must be a postcode district (e.g. SE1) or a full postcode (e.g. SE1 7EH)")]
    BadPostcode,
    #[error(
        "unknown search parameter {0:?}; the parameters are family, given, birth_date, postcode"
    )]
    UnknownParam(String),
    #[error("{0} is given more than once")]
    Repeated(&'static str),
}

impl SearchQuery {
    /// Build a query from URL query parameters and validate it ([`SearchQuery::validate`]).
    ///
    /// Names are `family`, `given`, `birth_date`, `postcode` (case-sensitive); any other name
    /// is refused ([`SearchError::UnknownParam`]) so a mistyped parameter is never silently
    /// dropped, and a repeated one is refused too. Values are trimmed; an empty value is the
    /// same as an absent parameter (an empty form field).
    pub fn parse_params(params: &[(String, String)]) -> Result<SearchQuery, SearchError> {
        let mut q = SearchQuery::default();
        let mut seen = [false; 4];
        for (name, value) in params {
            let (slot, idx, pname) = match name.as_str() {
                "family" => (&mut q.family, 0, "family"),
                "given" => (&mut q.given, 1, "given"),
                "birth_date" => (&mut q.birth_date, 2, "birth_date"),
                "postcode" => (&mut q.postcode, 3, "postcode"),
                other => {
                    let shown: String = other.chars().take(40).collect();
                    return Err(SearchError::UnknownParam(shown));
                }
            };
            if std::mem::replace(&mut seen[idx], true) {
                return Err(SearchError::Repeated(pname));
            }
            if too_long(value) {
                return Err(SearchError::TooLong {
                    param: pname,
                    max: MAX_PARAM_CHARS,
                });
            }
            let v = value.trim();
            *slot = (!v.is_empty()).then(|| v.to_owned());
        }
        q.validate()?;
        Ok(q)
    }

    /// Check the query against the rules: lengths, a real `YYYY-MM-DD` date, a postcode
    /// district or full postcode, names with at least one letter, and at least two of family /
    /// birth_date / postcode. [`SearchIndex::search`] applies the same check.
    pub fn validate(&self) -> Result<(), SearchError> {
        Prepared::new(self).map(|_| ())
    }
}

/// The result of a search.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SearchOutcome {
    /// At most [`MAX_RESULTS`], best first.
    pub candidates: Vec<Candidate>,
    /// How many patients matched the query (before the limit): the audit's "number of
    /// candidates".
    pub matched: usize,
}

/// One patient that may be the one searched for: demographics only, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Candidate {
    pub nhs: NhsNumber,
    /// Sum of [`points`] for what agreed; higher is better.
    pub score: u32,
    pub family: String,
    pub given: Vec<String>,
    pub birth_date: Option<String>,
    pub gender: Gender,
    /// Absent for a restricted (S-flag) patient, whose address is never held.
    pub postcode: Option<String>,
    /// The name as text when the record gave no family or given parts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name_text: Option<String>,
    /// The patient has died.
    pub deceased: bool,
}
