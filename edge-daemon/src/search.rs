//! Demographic search over the unit's cache (`GET /v1/search`): pure, in memory, no I/O.
//!
//! A [`SearchIndex`] holds the demographics of every cached patient (never clinical content)
//! and a few inverted indexes — normalised family name and its parts, phonetic family name,
//! birth date, postcode district — each mapping a key to the small set of patients that have
//! it. A query gathers the patients that agree with it on at least two of family / birth date /
//! postcode from those indexes (no scan), scores them, and returns the best ten.
//!
//! The rules a crew can rely on (docs/search.md has the long form):
//!
//! * A query needs at least two of `family`, `birth_date`, `postcode` ([`SearchQuery::validate`]);
//!   a candidate must agree with it on at least two of those it gave. `given` only ranks.
//! * Names are compared after folding case and accents (`Zoë` = `Zoe`, `Łukasz` = `Lukasz`),
//!   dropping apostrophes (`O'Brien` = `OBrien` = `O Brien`) and treating hyphens and spaces as
//!   part boundaries (`Smith-Jones` = `Smith Jones` = `SmithJones`, and matches `Smith` or
//!   `Jones` at a lower score).
//! * Family names also match by sound ([`phonetic`]: `Thompson` ~ `Tomson`, `Smyth` ~ `Smith`),
//!   at a lower score; given names match exactly, by nickname (`Bob` ~ `Robert`, from
//!   `nicknames.txt`), by sound, or by initial.
//! * Results are best first, ties broken by NHS number, at most [`MAX_RESULTS`]; the number of
//!   patients that matched is returned too, for the audit event. Search never auto-selects.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::OnceLock;

use edge_proto::model::{Demographics, Gender};
use edge_proto::nhs::NhsNumber;
use serde::Serialize;

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
    /// Family name (or a part) sounds the same ([`super::phonetic`]).
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

// ---------------------------------------------------------------------------------------------
// Normalisation
// ---------------------------------------------------------------------------------------------

fn too_long(s: &str) -> bool {
    s.chars().take(MAX_PARAM_CHARS + 1).count() > MAX_PARAM_CHARS
}

/// Fold a name to lowercase ASCII words: accents and other scripts transliterated, apostrophes
/// dropped (`O'Brien` → `obrien`), anything else that is not a letter a word boundary.
fn fold_words(s: &str) -> Vec<String> {
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

/// The keys a name is indexed and compared under: the joined form first, then each part of at
/// least two letters when there are several parts; and the phonetic codes of those keys.
#[derive(Debug, Clone, Default)]
struct NameKeys {
    keys: Vec<String>,
    phon: Vec<String>,
}

impl NameKeys {
    fn new(s: &str) -> NameKeys {
        let words = fold_words(s);
        let joined = words.concat();
        let mut nk = NameKeys::default();
        if joined.is_empty() {
            return nk;
        }
        nk.keys.push(joined);
        if words.len() > 1 {
            for w in words {
                if w.len() >= 2 && !nk.keys.contains(&w) {
                    nk.keys.push(w);
                }
            }
        }
        for k in &nk.keys {
            let p = phonetic(k);
            if !p.is_empty() && !nk.phon.contains(&p) {
                nk.phon.push(p);
            }
        }
        nk
    }

    fn joined(&self) -> Option<&str> {
        self.keys.first().map(String::as_str)
    }
}

/// A phonetic code for a name, a simplified Metaphone tuned for names common in London:
/// vowels count only at the start (all as `A`); doubled letters collapse; `TH`→`T`, `PH`/`V`→`F`,
/// `C`/`Q`/`CK`→`K` (`C` before e/i/y →`S`), `CH`/`SH`→`X` (`CHR`→`K`), `SCH`→`SK`, `G` before
/// e/i/y and `DGE`→`J`, `D`→`T`, `Z`→`S`, `X`→`KS`; silent: initial `KN GN PN WR PS`, `GH`
/// (but initial `GH`→`K`), `B` in final `MB`, `P` in `MPS`/`MPT` (`Thompson` ~ `Tomson`), `T`
/// in `TCH`; `H` counts only before a vowel at the start or after a vowel, `W`/`Y` only before a
/// vowel and not after one. Input may be any string; non-letters are ignored.
///
/// `Smith`/`Smyth`/`Smythe` → `SMT`; `Thompson`/`Tomson` → `TMSN`; `Chowdhury`/`Chaudhry` →
/// `XTR`; `Mohammed`/`Muhammad` → `MHMT`; `Stewart`/`Stuart` → `STRT`.
pub fn phonetic(name: &str) -> String {
    let mut s: Vec<u8> = Vec::with_capacity(name.len());
    for w in fold_words(name) {
        for &c in w.as_bytes() {
            if s.last() != Some(&c) {
                s.push(c);
            }
        }
    }
    let n = s.len();
    let at = |i: usize| s.get(i).copied().unwrap_or(0);
    let vowel = |c: u8| matches!(c, b'a' | b'e' | b'i' | b'o' | b'u');
    let mut start = 0;
    if matches!(
        (at(0), at(1)),
        (b'k', b'n') | (b'g', b'n') | (b'p', b'n') | (b'w', b'r') | (b'p', b's')
    ) {
        start = 1;
    }
    let mut out = String::with_capacity(n);
    let mut push = |ch: char| {
        if !out.ends_with(ch) {
            out.push(ch);
        }
    };
    let mut i = start;
    while i < n {
        let c = at(i);
        let prev = if i > start { at(i - 1) } else { 0 };
        let next = at(i + 1);
        let next2 = at(i + 2);
        match c {
            b'a' | b'e' | b'i' | b'o' | b'u' if i == start => push('A'),
            b'b' if !(prev == b'm' && i + 1 == n) => push('B'),
            b'c' => {
                if next == b'h' {
                    if next2 == b'r' || (i == start && next2 != 0 && !vowel(next2)) {
                        push('K');
                    } else {
                        push('X');
                    }
                    i += 1;
                } else if matches!(next, b'e' | b'i' | b'y') {
                    push('S');
                } else {
                    push('K');
                }
            }
            b'd' => {
                if next == b'g' && matches!(next2, b'e' | b'i' | b'y') {
                    push('J');
                    i += 1;
                } else {
                    push('T');
                }
            }
            b'g' => {
                if next == b'h' {
                    if i == start {
                        push('K');
                    }
                    i += 1;
                } else if next == b'n' && (i + 2 == n || (next2 == b'e' && at(i + 3) == b'd')) {
                    // silent: "Sign", "Signed"
                } else if matches!(next, b'e' | b'i' | b'y') {
                    push('J');
                } else {
                    push('K');
                }
            }
            b'h' if vowel(next) && (i == start || vowel(prev)) => push('H'),
            b'k' if prev != b'c' => push('K'),
            b'p' => {
                if next == b'h' {
                    push('F');
                    i += 1;
                } else if !(prev == b'm' && matches!(next, b's' | b't')) {
                    push('P');
                }
            }
            b'q' => push('K'),
            b's' => {
                if next == b'h' {
                    push('X');
                    i += 1;
                } else if next == b'c' && next2 == b'h' {
                    push('S');
                    push('K');
                    i += 2;
                } else if next == b'i' && matches!(next2, b'o' | b'a') {
                    push('X');
                } else {
                    push('S');
                }
            }
            b't' => {
                if next == b'h' {
                    push('T');
                    i += 1;
                } else if next == b'i' && matches!(next2, b'o' | b'a') {
                    push('X');
                } else if !(next == b'c' && next2 == b'h') {
                    push('T');
                }
            }
            b'v' | b'f' => push('F'),
            b'w' => {
                if i == start && next == b'h' {
                    push('W');
                    i += 1;
                } else if vowel(next) && !vowel(prev) {
                    push('W');
                }
            }
            b'x' => {
                push('K');
                push('S');
            }
            b'y' if vowel(next) && !vowel(prev) => push('Y'),
            b'z' => push('S'),
            b'j' => push('J'),
            b'l' => push('L'),
            b'm' => push('M'),
            b'n' => push('N'),
            b'r' => push('R'),
            // Vowels after the start, and silent B/H/K/Y.
            _ => {}
        }
        i += 1;
    }
    out
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
fn valid_birth_date(s: &str) -> bool {
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

// ---------------------------------------------------------------------------------------------
// Nicknames
// ---------------------------------------------------------------------------------------------

struct Nicknames {
    /// Name → the groups (lines of nicknames.txt) it is on.
    groups_of: HashMap<&'static str, Vec<u16>>,
}

fn nicknames() -> &'static Nicknames {
    static TABLE: OnceLock<Nicknames> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut groups_of: HashMap<&'static str, Vec<u16>> = HashMap::new();
        let lines = include_str!("nicknames.txt")
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'));
        for (group, (formal, nicks)) in lines.enumerate() {
            let Ok(group) = u16::try_from(group) else {
                break;
            };
            for name in std::iter::once(formal).chain(nicks.split_whitespace()) {
                let name = name.trim();
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase()) {
                    continue;
                }
                let g = groups_of.entry(name).or_default();
                if !g.contains(&group) {
                    g.push(group);
                }
            }
        }
        Nicknames { groups_of }
    })
}

fn nickname_groups(name: &str) -> Vec<u16> {
    nicknames().groups_of.get(name).cloned().unwrap_or_default()
}

/// Whether two given names are the same name or nicknames of each other (after
/// normalisation): `Bob`/`Robert`, `Peggy`/`Margaret`, `Rob`/`Bobby`.
pub fn nickname_equivalent(a: &str, b: &str) -> bool {
    let (a, b) = (normalise_name(a), normalise_name(b));
    if a.is_empty() || b.is_empty() {
        return false;
    }
    if a == b {
        return true;
    }
    let ga = nickname_groups(&a);
    nickname_groups(&b).iter().any(|g| ga.contains(g))
}

/// How many nickname groups the built-in table has (for tests and docs).
pub fn nickname_group_count() -> usize {
    let t = nicknames();
    let mut all: Vec<u16> = t.groups_of.values().flatten().copied().collect();
    all.sort_unstable();
    all.dedup();
    all.len()
}

// ---------------------------------------------------------------------------------------------
// The index
// ---------------------------------------------------------------------------------------------

/// One given-name token of a record or a query.
#[derive(Debug, Clone)]
struct GivenTok {
    text: String,
    phon: String,
    groups: Vec<u16>,
    /// On the first given name (not a middle name).
    first: bool,
}

fn given_tokens<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<GivenTok> {
    let mut out = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        let nk = NameKeys::new(name);
        let words = fold_words(name);
        // Keys plus single letters (initials), which NameKeys leaves out of the parts.
        let mut texts = nk.keys;
        for w in words {
            if !texts.contains(&w) {
                texts.push(w);
            }
        }
        for text in texts {
            out.push(GivenTok {
                phon: phonetic(&text),
                groups: nickname_groups(&text),
                text,
                first: i == 0,
            });
        }
    }
    out
}

#[derive(Debug)]
struct Entry {
    nhs: NhsNumber,
    family: String,
    given: Vec<String>,
    birth_date: Option<String>,
    gender: Gender,
    postcode: Option<String>,
    fam: NameKeys,
    given_toks: Vec<GivenTok>,
    dob: Option<String>,
    pc_full: Option<String>,
    pc_district: Option<String>,
    name_text: Option<String>,
    deceased: bool,
    former: Vec<NhsNumber>,
}

/// The in-memory search index over the cached patients' demographics.
///
/// Updates are incremental: [`insert`](SearchIndex::insert) (which replaces an earlier record
/// for the same NHS number) and [`remove`](SearchIndex::remove) touch only that patient's keys.
/// Not persisted; rebuild it from the cache at start. Wrap it in a lock to share.
#[derive(Debug, Default)]
pub struct SearchIndex {
    slots: Vec<Option<Entry>>,
    free: Vec<u32>,
    by_nhs: HashMap<NhsNumber, u32>,
    family: HashMap<String, Vec<u32>>,
    family_phon: HashMap<String, Vec<u32>>,
    dob: HashMap<String, Vec<u32>>,
    district: HashMap<String, Vec<u32>>,
    /// Former (superseded or merged) NHS numbers → the current one held.
    aliases: HashMap<NhsNumber, NhsNumber>,
}

const BIT_FAMILY: u8 = 1;
const BIT_DOB: u8 = 2;
const BIT_POSTCODE: u8 = 4;

fn post(map: &mut HashMap<String, Vec<u32>>, key: &str, id: u32) {
    match map.get_mut(key) {
        Some(ids) => ids.push(id),
        None => {
            map.insert(key.to_owned(), vec![id]);
        }
    }
}

fn unpost(map: &mut HashMap<String, Vec<u32>>, key: &str, id: u32) {
    if let Some(ids) = map.get_mut(key) {
        if let Some(pos) = ids.iter().position(|&x| x == id) {
            ids.swap_remove(pos);
        }
        if ids.is_empty() {
            map.remove(key);
        }
    }
}

impl SearchIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many patients are indexed.
    pub fn len(&self) -> usize {
        self.by_nhs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_nhs.is_empty()
    }

    pub fn contains(&self, nhs: &NhsNumber) -> bool {
        self.by_nhs.contains_key(nhs)
    }

    /// Index a patient's demographics, replacing any earlier record for the same NHS number.
    /// Returns whether one was replaced.
    pub fn insert(&mut self, nhs: NhsNumber, d: &Demographics) -> bool {
        let replaced = self.remove(&nhs);
        // The current family name, and every other name the patient is or was known by
        // (old, maiden, a name given only as text), so a search by any of them finds them.
        let mut names = d.family.clone();
        for extra in d
            .other_names
            .iter()
            .flat_map(|n| n.family.iter().chain(n.text.iter()))
            .chain(d.name_text.iter())
        {
            names.push(' ');
            names.push_str(extra);
        }
        let fam = NameKeys::new(&names);
        let (pc_full, pc_district) = match d.postcode.as_deref().and_then(postcode_parts) {
            Some((full, district)) => (full, Some(district)),
            None => (None, None),
        };
        let entry = Entry {
            nhs,
            family: d.family.clone(),
            given: d.given.clone(),
            birth_date: d.birth_date.as_ref().map(|b| b.as_str().to_owned()),
            gender: d.gender,
            postcode: d.postcode.clone(),
            given_toks: given_tokens(d.given.iter().map(String::as_str)),
            dob: d
                .birth_date
                .as_ref()
                .and_then(|b| b.day())
                .map(str::to_owned),
            pc_full,
            pc_district,
            fam,
            name_text: d.name_text.clone(),
            deceased: d.deceased,
            former: d.former_nhs_numbers.clone(),
        };
        for f in &entry.former {
            if *f != nhs {
                self.aliases.insert(*f, nhs);
            }
        }
        let id = match self.free.pop() {
            Some(id) => id,
            None => {
                // More than u32::MAX patients cannot be cached on a unit; saturate rather than
                // wrap (the slot vector would run out of memory long before).
                let id = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
                self.slots.push(None);
                id
            }
        };
        for k in &entry.fam.keys {
            post(&mut self.family, k, id);
        }
        for k in &entry.fam.phon {
            post(&mut self.family_phon, k, id);
        }
        if let Some(k) = &entry.dob {
            post(&mut self.dob, k, id);
        }
        if let Some(k) = &entry.pc_district {
            post(&mut self.district, k, id);
        }
        if let Some(slot) = self.slots.get_mut(id as usize) {
            *slot = Some(entry);
        }
        self.by_nhs.insert(nhs, id);
        replaced
    }

    /// Forget a patient (withdrawn, expired or objected). Returns whether it was indexed.
    pub fn remove(&mut self, nhs: &NhsNumber) -> bool {
        let Some(id) = self.by_nhs.remove(nhs) else {
            return false;
        };
        let Some(entry) = self.slots.get_mut(id as usize).and_then(Option::take) else {
            return false;
        };
        for k in &entry.fam.keys {
            unpost(&mut self.family, k, id);
        }
        for k in &entry.fam.phon {
            unpost(&mut self.family_phon, k, id);
        }
        if let Some(k) = &entry.dob {
            unpost(&mut self.dob, k, id);
        }
        if let Some(k) = &entry.pc_district {
            unpost(&mut self.district, k, id);
        }
        for f in &entry.former {
            if self.aliases.get(f) == Some(nhs) {
                self.aliases.remove(f);
            }
        }
        self.free.push(id);
        true
    }

    /// The current NHS number held for a former one (a superseded or merged record).
    pub fn alias(&self, nhs: &NhsNumber) -> Option<NhsNumber> {
        self.aliases.get(nhs).copied()
    }

    /// Remove everything.
    pub fn clear(&mut self) {
        *self = SearchIndex::default();
    }

    /// Search: validate the query ([`SearchQuery::validate`]), gather the patients that agree
    /// with it on at least two of family / birth date / postcode, score them, and return the
    /// best [`MAX_RESULTS`] (score descending, then NHS number ascending) with the number that
    /// matched.
    pub fn search(&self, q: &SearchQuery) -> Result<SearchOutcome, SearchError> {
        let p = Prepared::new(q)?;
        let mut flags = vec![0u8; self.slots.len()];
        let mut touched: Vec<u32> = Vec::new();
        let mut mark = |ids: Option<&Vec<u32>>, bit: u8| {
            for &id in ids.into_iter().flatten() {
                if let Some(f) = flags.get_mut(id as usize) {
                    if *f == 0 {
                        touched.push(id);
                    }
                    *f |= bit;
                }
            }
        };
        if let Some(f) = &p.family {
            for k in &f.keys {
                mark(self.family.get(k), BIT_FAMILY);
            }
            for k in &f.phon {
                mark(self.family_phon.get(k), BIT_FAMILY);
            }
        }
        if let Some(d) = &p.dob {
            mark(self.dob.get(d), BIT_DOB);
        }
        if let Some((_, district)) = &p.postcode {
            mark(self.district.get(district), BIT_POSTCODE);
        }

        let mut hits: Vec<(u32, NhsNumber, u32)> = touched
            .into_iter()
            .filter(|&id| flags.get(id as usize).is_some_and(|f| f.count_ones() >= 2))
            .filter_map(|id| {
                let e = self.slots.get(id as usize)?.as_ref()?;
                Some((p.score(e), e.nhs, id))
            })
            .collect();
        let matched = hits.len();
        let by_rank = |a: &(u32, NhsNumber, u32)| (Reverse(a.0), a.1);
        if hits.len() > MAX_RESULTS {
            hits.select_nth_unstable_by_key(MAX_RESULTS - 1, by_rank);
            hits.truncate(MAX_RESULTS);
        }
        hits.sort_unstable_by_key(by_rank);
        let candidates = hits
            .into_iter()
            .filter_map(|(score, _, id)| {
                let e = self.slots.get(id as usize)?.as_ref()?;
                Some(Candidate {
                    nhs: e.nhs,
                    score,
                    family: e.family.clone(),
                    given: e.given.clone(),
                    birth_date: e.birth_date.clone(),
                    gender: e.gender,
                    postcode: e.postcode.clone(),
                    name_text: e.name_text.clone(),
                    deceased: e.deceased,
                })
            })
            .collect();
        Ok(SearchOutcome {
            candidates,
            matched,
        })
    }
}

/// A validated, normalised query.
struct Prepared {
    family: Option<NameKeys>,
    given: Vec<GivenTok>,
    dob: Option<String>,
    /// (full postcode if one was given, district)
    postcode: Option<(Option<String>, String)>,
}

impl Prepared {
    fn new(q: &SearchQuery) -> Result<Prepared, SearchError> {
        let field =
            |v: &Option<String>, param: &'static str| -> Result<Option<String>, SearchError> {
                match v.as_deref().map(str::trim) {
                    None | Some("") => Ok(None),
                    Some(s) if too_long(s) => Err(SearchError::TooLong {
                        param,
                        max: MAX_PARAM_CHARS,
                    }),
                    Some(s) => Ok(Some(s.to_owned())),
                }
            };
        let family = match field(&q.family, "family")? {
            None => None,
            Some(s) => {
                let nk = NameKeys::new(&s);
                if nk.keys.is_empty() {
                    return Err(SearchError::NoLetters { param: "family" });
                }
                Some(nk)
            }
        };
        let given = match field(&q.given, "given")? {
            None => Vec::new(),
            Some(s) => {
                let toks = given_tokens([s.as_str()]);
                if toks.is_empty() {
                    return Err(SearchError::NoLetters { param: "given" });
                }
                // The query's given name is one name: every token counts as "first".
                toks
            }
        };
        let dob = match field(&q.birth_date, "birth_date")? {
            None => None,
            Some(s) if valid_birth_date(&s) => Some(s),
            Some(_) => return Err(SearchError::BadBirthDate),
        };
        let postcode = match field(&q.postcode, "postcode")? {
            None => None,
            Some(s) => Some(postcode_parts(&s).ok_or(SearchError::BadPostcode)?),
        };
        let got = match (family.is_some(), dob.is_some(), postcode.is_some()) {
            (true, true, _) | (true, _, true) | (_, true, true) => None,
            (true, false, false) => Some("only family"),
            (false, true, false) => Some("only birth_date"),
            (false, false, true) => Some("only postcode"),
            (false, false, false) => Some("none of them"),
        };
        if let Some(got) = got {
            return Err(SearchError::TooFewCriteria { got });
        }
        Ok(Prepared {
            family,
            given,
            dob,
            postcode,
        })
    }

    fn score(&self, e: &Entry) -> u32 {
        let mut s = 0;
        if let Some(f) = &self.family {
            s += family_points(f, &e.fam);
        }
        if let (Some(d), Some(ed)) = (&self.dob, &e.dob) {
            if d == ed {
                s += points::BIRTH_DATE;
            }
        }
        if let Some((full, district)) = &self.postcode {
            if full.is_some() && full == &e.pc_full {
                s += points::POSTCODE_FULL;
            } else if e.pc_district.as_ref() == Some(district) {
                s += points::POSTCODE_DISTRICT;
            }
        }
        s + given_points(&self.given, &e.given_toks)
    }
}

fn family_points(q: &NameKeys, r: &NameKeys) -> u32 {
    if q.joined().is_some() && q.joined() == r.joined() {
        points::FAMILY_EXACT
    } else if q.keys.iter().any(|k| r.keys.contains(k)) {
        points::FAMILY_PART
    } else if q.phon.iter().any(|k| r.phon.contains(k)) {
        points::FAMILY_PHONETIC
    } else {
        0
    }
}

fn given_points(q: &[GivenTok], r: &[GivenTok]) -> u32 {
    let mut best = 0;
    for a in q {
        for b in r {
            let p = if a.text == b.text {
                points::GIVEN_EXACT
            } else if a.text.len() == 1 || b.text.len() == 1 {
                if a.text.as_bytes().first() == b.text.as_bytes().first() {
                    points::GIVEN_INITIAL
                } else {
                    0
                }
            } else if a.groups.iter().any(|g| b.groups.contains(g)) {
                points::GIVEN_NICKNAME
            } else if !a.phon.is_empty() && a.phon == b.phon {
                points::GIVEN_PHONETIC
            } else {
                0
            };
            let p = if p > 0 && !b.first {
                p.saturating_sub(points::GIVEN_MIDDLE_PENALTY).max(1)
            } else {
                p
            };
            best = best.max(p);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phonetic_codes() {
        for (a, code) in [
            ("Smith", "SMT"),
            ("Smyth", "SMT"),
            ("Smythe", "SMT"),
            ("Thompson", "TMSN"),
            ("Tomson", "TMSN"),
            ("Thomson", "TMSN"),
            ("Chowdhury", "XTR"),
            ("Chaudhry", "XTR"),
            ("Choudhury", "XTR"),
            ("Mohammed", "MHMT"),
            ("Muhammad", "MHMT"),
            ("Stewart", "STRT"),
            ("Stuart", "STRT"),
            ("Khan", "KN"),
            ("Kahn", "KN"),
            ("Knight", "NT"),
            ("Wright", "RT"),
            ("Christopher", "KRSTFR"),
            ("Phillips", "FLPS"),
            ("Philips", "FLPS"),
            ("", ""),
        ] {
            assert_eq!(phonetic(a), code, "{a}");
        }
    }

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

    #[test]
    fn nickname_table_is_well_formed() {
        assert!(nickname_group_count() >= 100);
        for name in nicknames().groups_of.keys() {
            assert!(name.bytes().all(|b| b.is_ascii_lowercase()), "{name}");
        }
    }
}
