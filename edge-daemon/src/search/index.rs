//! The in-memory search index and the matching and scoring behind [`SearchIndex::search`].
//!
//! Each cached patient is an `Entry` (demographics only) in a slot; inverted indexes map each
//! normalised family-name key and its phonetic code, birth date and postcode district to the
//! slots that have it. A query is validated and normalised once (`Prepared`); the patients
//! that agree with it on at least two of family / birth date / postcode are gathered from the
//! inverted indexes (no scan), scored with [`points`](super::points), and the best
//! [`MAX_RESULTS`] returned. Names are keyed with `normalise.rs`, `phonetic.rs` and
//! `nicknames.rs`; the query and result types are in `mod.rs`. Nothing here is persisted: the
//! index is rebuilt from the cache at start.

use std::cmp::Reverse;
use std::collections::HashMap;

use edge_proto::model::{Demographics, Gender};
use edge_proto::nhs::NhsNumber;

use super::nicknames::nickname_groups;
use super::normalise::{fold_words, postcode_parts, too_long, valid_birth_date};
use super::phonetic::phonetic;
use super::{
    points, Candidate, SearchError, SearchOutcome, SearchQuery, MAX_PARAM_CHARS, MAX_RESULTS,
};

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
pub(super) struct Prepared {
    family: Option<NameKeys>,
    given: Vec<GivenTok>,
    dob: Option<String>,
    /// (full postcode if one was given, district)
    postcode: Option<(Option<String>, String)>,
}

impl Prepared {
    pub(super) fn new(q: &SearchQuery) -> Result<Prepared, SearchError> {
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
