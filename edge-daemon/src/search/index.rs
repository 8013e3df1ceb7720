//! Matching and scoring behind search, and the postings that find candidates without a scan.
//!
//! A patient is indexed under **pair postings** — (family key, birth date), (family key,
//! postcode district), (birth date, postcode district) — because a candidate must agree with a
//! query on at least two of family / birth date / postcode: the union of the query's pairs is
//! exactly the candidate set, each pair's list is short even at London scale (a family name
//! alone, or a district alone, would be thousands long), and nothing has to be intersected.
//! Family keys are the normalised name and its parts (`k…`) and their phonetic codes (`p…`).
//! Former NHS numbers are postings too ([`kind::ALIAS`]).
//!
//! Where the postings live is a [`PostingStore`]: the unit's cache keeps them on disk under
//! keyed hashes (`cache.rs`); [`SearchIndex`] keeps them in memory (tests and tools). Every
//! candidate a store returns is re-checked against its own demographics, so a store may return
//! extra ids (a hash collision, a stale posting) but never decides a match. Names are keyed
//! with `normalise.rs`, `phonetic.rs` and `nicknames.rs`; query and result types are in `mod.rs`.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;

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

/// What a posting is keyed on.
pub mod kind {
    /// A family key and a birth date.
    pub const FAMILY_DOB: u8 = 1;
    /// A family key and a postcode district.
    pub const FAMILY_DISTRICT: u8 = 2;
    /// A birth date and a postcode district.
    pub const DOB_DISTRICT: u8 = 3;
    /// A former (superseded or merged) NHS number.
    pub const ALIAS: u8 = 4;
}

/// One posting list's key: its [`kind`] and the normalised values it pairs (never stored as
/// such on a unit: the cache keys it by a keyed hash).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PostingKey {
    pub kind: u8,
    pub material: Vec<u8>,
}

impl PostingKey {
    fn pair(kind: u8, a: &str, b: &str) -> PostingKey {
        let mut material = Vec::with_capacity(a.len() + b.len() + 1);
        material.extend_from_slice(a.as_bytes());
        material.push(0);
        material.extend_from_slice(b.as_bytes());
        PostingKey { kind, material }
    }
}

/// A patient's demographics as search compares them: built from [`Demographics`] when the
/// patient is indexed and again when they are a candidate.
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
}

/// What a patient is posted and matched under: family name keys (the current family name and
/// every other name the patient is or was known by — old, maiden, a name given only as text —
/// so a search by any of them finds them), birth day, full postcode and district.
struct Keys {
    fam: NameKeys,
    dob: Option<String>,
    pc_full: Option<String>,
    pc_district: Option<String>,
}

impl Keys {
    fn new(d: &Demographics) -> Keys {
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
        let (pc_full, pc_district) = match d.postcode.as_deref().and_then(postcode_parts) {
            Some((full, district)) => (full, Some(district)),
            None => (None, None),
        };
        Keys {
            fam: NameKeys::new(&names),
            dob: d
                .birth_date
                .as_ref()
                .and_then(|b| b.day())
                .map(str::to_owned),
            pc_full,
            pc_district,
        }
    }
}

impl Entry {
    fn new(nhs: NhsNumber, d: &Demographics) -> Entry {
        let Keys {
            fam,
            dob,
            pc_full,
            pc_district,
        } = Keys::new(d);
        Entry {
            nhs,
            family: d.family.clone(),
            given: d.given.clone(),
            birth_date: d.birth_date.as_ref().map(|b| b.as_str().to_owned()),
            gender: d.gender,
            postcode: d.postcode.clone(),
            given_toks: given_tokens(d.given.iter().map(String::as_str)),
            dob,
            pc_full,
            pc_district,
            fam,
            name_text: d.name_text.clone(),
            deceased: d.deceased,
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        fn put_str(out: &mut Vec<u8>, s: &str) {
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        fn put_opt(out: &mut Vec<u8>, s: &Option<String>) {
            match s {
                Some(s) => {
                    out.push(1);
                    put_str(out, s);
                }
                None => out.push(0),
            }
        }
        fn put_strs(out: &mut Vec<u8>, v: &[String]) {
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
            for s in v {
                put_str(out, s);
            }
        }
        out.push(SCORED_FORMAT);
        put_str(out, &self.nhs.as_digits());
        put_str(out, &self.family);
        put_strs(out, &self.given);
        put_opt(out, &self.birth_date);
        out.push(match self.gender {
            Gender::Male => 1,
            Gender::Female => 2,
            Gender::Other => 3,
            Gender::Unknown => 0,
        });
        put_opt(out, &self.postcode);
        put_strs(out, &self.fam.keys);
        put_strs(out, &self.fam.phon);
        out.extend_from_slice(&(self.given_toks.len() as u32).to_le_bytes());
        for t in &self.given_toks {
            put_str(out, &t.text);
            put_str(out, &t.phon);
            out.extend_from_slice(&(t.groups.len() as u32).to_le_bytes());
            for g in &t.groups {
                out.extend_from_slice(&g.to_le_bytes());
            }
            out.push(u8::from(t.first));
        }
        put_opt(out, &self.dob);
        put_opt(out, &self.pc_full);
        put_opt(out, &self.pc_district);
        put_opt(out, &self.name_text);
        out.push(u8::from(self.deceased));
    }

    fn decode(b: &[u8]) -> Option<Entry> {
        struct Rd<'a>(&'a [u8]);
        impl Rd<'_> {
            fn take(&mut self, n: usize) -> Option<&[u8]> {
                if n > self.0.len() {
                    return None;
                }
                let (a, rest) = self.0.split_at(n);
                self.0 = rest;
                Some(a)
            }
            fn u8(&mut self) -> Option<u8> {
                self.take(1).map(|b| b[0])
            }
            fn len(&mut self) -> Option<usize> {
                let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
                // Every element takes at least a byte: a count beyond what is left is damage.
                (n <= self.0.len()).then_some(n)
            }
            fn text(&mut self) -> Option<&str> {
                let n = self.len()?;
                std::str::from_utf8(self.take(n)?).ok()
            }
            fn str(&mut self) -> Option<String> {
                self.text().map(str::to_owned)
            }
            fn opt(&mut self) -> Option<Option<String>> {
                match self.u8()? {
                    0 => Some(None),
                    1 => self.str().map(Some),
                    _ => None,
                }
            }
            fn strs(&mut self) -> Option<Vec<String>> {
                let n = self.len()?;
                (0..n).map(|_| self.str()).collect()
            }
            fn flag(&mut self) -> Option<bool> {
                match self.u8()? {
                    0 => Some(false),
                    1 => Some(true),
                    _ => None,
                }
            }
        }
        let mut r = Rd(b);
        if r.u8()? != SCORED_FORMAT {
            return None;
        }
        let nhs = NhsNumber::parse(r.text()?).ok()?;
        let family = r.str()?;
        let given = r.strs()?;
        let birth_date = r.opt()?;
        let gender = match r.u8()? {
            1 => Gender::Male,
            2 => Gender::Female,
            3 => Gender::Other,
            _ => Gender::Unknown,
        };
        let postcode = r.opt()?;
        let fam = NameKeys {
            keys: r.strs()?,
            phon: r.strs()?,
        };
        let n = r.len()?;
        let mut given_toks = Vec::with_capacity(n);
        for _ in 0..n {
            let text = r.str()?;
            let phon = r.str()?;
            let g = r.len()?;
            let groups = (0..g)
                .map(|_| Some(u16::from_le_bytes(r.take(2)?.try_into().ok()?)))
                .collect::<Option<Vec<u16>>>()?;
            given_toks.push(GivenTok {
                text,
                phon,
                groups,
                first: r.flag()?,
            });
        }
        let e = Entry {
            nhs,
            family,
            given,
            birth_date,
            gender,
            postcode,
            fam,
            given_toks,
            dob: r.opt()?,
            pc_full: r.opt()?,
            pc_district: r.opt()?,
            name_text: r.opt()?,
            deceased: r.flag()?,
        };
        r.0.is_empty().then_some(e)
    }

    fn candidate(self, score: u32) -> Candidate {
        Candidate {
            nhs: self.nhs,
            score,
            family: self.family,
            given: self.given,
            birth_date: self.birth_date,
            gender: self.gender,
            postcode: self.postcode,
            name_text: self.name_text,
            deceased: self.deceased,
        }
    }
}

/// Family keys as posted: `p` + the phonetic code of each name key, or `k` + the key itself
/// where it has no code. Two names that share a key share its code, so these find every
/// patient whose family name agrees by key or by sound — with the fewest postings (each is a
/// random write into the cache's tree).
fn family_tags(fam: &NameKeys) -> Vec<String> {
    let mut tags: Vec<String> = Vec::with_capacity(fam.keys.len());
    for k in &fam.keys {
        let p = phonetic(k);
        let tag = if p.is_empty() {
            format!("k{k}")
        } else {
            format!("p{p}")
        };
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    tags
}

/// Every posting a patient is listed under (on the sync's hot path: no given-name work).
pub fn postings(nhs: NhsNumber, d: &Demographics) -> Vec<PostingKey> {
    let e = Keys::new(d);
    let former = &d.former_nhs_numbers;
    let tags = family_tags(&e.fam);
    let mut out = Vec::with_capacity(2 * tags.len() + 1 + former.len());
    for t in &tags {
        if let Some(dob) = &e.dob {
            out.push(PostingKey::pair(kind::FAMILY_DOB, t, dob));
        }
        if let Some(district) = &e.pc_district {
            out.push(PostingKey::pair(kind::FAMILY_DISTRICT, t, district));
        }
    }
    if let (Some(dob), Some(district)) = (&e.dob, &e.pc_district) {
        out.push(PostingKey::pair(kind::DOB_DISTRICT, dob, district));
    }
    for f in former {
        if *f != nhs {
            out.push(alias_key(f));
        }
    }
    out
}

fn alias_key(former: &NhsNumber) -> PostingKey {
    PostingKey {
        kind: kind::ALIAS,
        material: former.as_digits().as_bytes().to_vec(),
    }
}

/// The version of [`Scored`]'s encoding. What it holds is derived by this build's
/// normalisation, phonetic code and nickname table: a change to any of them must also change
/// the cache's search layout marker, so stored cards (and postings) are rebuilt at open.
const SCORED_FORMAT: u8 = 1;

/// A patient as a search scores them: the demographics a candidate shows plus their normalised
/// search keys (folded name parts, phonetic codes, nickname groups, birth date, postcode parts),
/// derived once. The unit's cache keeps one per record, encoded, in its search cards, so a
/// search neither decodes the demographics nor normalises them again per candidate.
#[derive(Debug)]
pub struct Scored(Entry);

impl Scored {
    pub fn new(nhs: NhsNumber, d: &Demographics) -> Scored {
        Scored(Entry::new(nhs, d))
    }

    /// A compact binary encoding (length-prefixed fields, one format byte first).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        self.0.encode(&mut out);
        out
    }

    /// `None` for anything [`Scored::encode`] did not write (damage, another format).
    pub fn decode(b: &[u8]) -> Option<Scored> {
        Entry::decode(b).map(Scored)
    }

    pub fn nhs(&self) -> NhsNumber {
        self.0.nhs
    }
}

/// Where postings live and how a posted id's demographics are read.
pub trait PostingStore {
    type Id: Copy + Eq + std::hash::Hash;
    type Error;
    /// Append the ids posted under `key` to `out`.
    fn ids(&self, key: &PostingKey, out: &mut Vec<Self::Id>) -> Result<(), Self::Error>;
    /// The patient behind an id, if it is still held.
    fn patient(&self, id: Self::Id) -> Result<Option<(NhsNumber, Demographics)>, Self::Error>;
    /// The patient behind an id as a search scores them (by default derived from
    /// [`PostingStore::patient`]).
    fn scored(&self, id: Self::Id) -> Result<Option<Scored>, Self::Error> {
        Ok(self.patient(id)?.map(|(nhs, d)| Scored::new(nhs, &d)))
    }
}

/// Why a search over a [`PostingStore`] failed.
#[derive(Debug)]
pub enum SearchFailed<E> {
    /// The query was refused.
    Query(SearchError),
    /// The store could not be read.
    Store(E),
}

/// Search `store`: validate the query ([`SearchQuery::validate`]), gather the patients posted
/// under its pairs, keep those that agree with it on at least two of family / birth date /
/// postcode, score them, and return the best [`MAX_RESULTS`] (score descending, then NHS number
/// ascending) with the number that matched.
pub fn search_in<S: PostingStore>(
    store: &S,
    q: &SearchQuery,
) -> Result<SearchOutcome, SearchFailed<S::Error>> {
    let p = Prepared::new(q).map_err(SearchFailed::Query)?;
    let mut ids = Vec::new();
    for key in p.probes() {
        store.ids(&key, &mut ids).map_err(SearchFailed::Store)?;
    }
    let mut seen = HashSet::with_capacity(ids.len());
    let mut hits: Vec<(u32, NhsNumber, Entry)> = Vec::new();
    for id in ids {
        if !seen.insert(id) {
            continue;
        }
        let Some(Scored(e)) = store.scored(id).map_err(SearchFailed::Store)? else {
            continue;
        };
        if p.agreements(&e) >= 2 {
            hits.push((p.score(&e), e.nhs, e));
        }
    }
    let matched = hits.len();
    let by_rank = |a: &(u32, NhsNumber, Entry)| (Reverse(a.0), a.1);
    if hits.len() > MAX_RESULTS {
        hits.select_nth_unstable_by_key(MAX_RESULTS - 1, by_rank);
        hits.truncate(MAX_RESULTS);
    }
    hits.sort_unstable_by_key(by_rank);
    let candidates = hits
        .into_iter()
        .map(|(score, _, e)| e.candidate(score))
        .collect();
    Ok(SearchOutcome {
        candidates,
        matched,
    })
}

/// The current NHS number `store` holds for a former (superseded or merged) one: a patient
/// posted under it whose record lists it as former.
pub fn alias_in<S: PostingStore>(
    store: &S,
    former: &NhsNumber,
) -> Result<Option<NhsNumber>, S::Error> {
    let mut ids = Vec::new();
    store.ids(&alias_key(former), &mut ids)?;
    for id in ids {
        if let Some((nhs, d)) = store.patient(id)? {
            if nhs != *former && d.former_nhs_numbers.contains(former) {
                return Ok(Some(nhs));
            }
        }
    }
    Ok(None)
}

/// Search postings held in memory: the reference [`PostingStore`] the search tests run on
/// (the unit's cache keeps the same postings on disk).
///
/// [`insert`](SearchIndex::insert) replaces an earlier record for the same NHS number;
/// [`remove`](SearchIndex::remove) forgets one. Wrap it in a lock to share.
#[derive(Debug, Default)]
pub struct SearchIndex {
    records: HashMap<NhsNumber, Demographics>,
    postings: HashMap<PostingKey, Vec<NhsNumber>>,
}

impl SearchIndex {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many patients are indexed.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    pub fn contains(&self, nhs: &NhsNumber) -> bool {
        self.records.contains_key(nhs)
    }

    /// Index a patient's demographics, replacing any earlier record for the same NHS number.
    /// Returns whether one was replaced.
    pub fn insert(&mut self, nhs: NhsNumber, d: &Demographics) -> bool {
        let replaced = self.remove(&nhs);
        for k in postings(nhs, d) {
            self.postings.entry(k).or_default().push(nhs);
        }
        self.records.insert(nhs, d.clone());
        replaced
    }

    /// Forget a patient (withdrawn, expired or objected). Returns whether it was indexed.
    pub fn remove(&mut self, nhs: &NhsNumber) -> bool {
        let Some(d) = self.records.remove(nhs) else {
            return false;
        };
        for k in postings(*nhs, &d) {
            if let Some(ids) = self.postings.get_mut(&k) {
                ids.retain(|x| x != nhs);
                if ids.is_empty() {
                    self.postings.remove(&k);
                }
            }
        }
        true
    }

    /// The current NHS number held for a former one (a superseded or merged record).
    pub fn alias(&self, nhs: &NhsNumber) -> Option<NhsNumber> {
        alias_in(self, nhs).unwrap_or_else(|never| match never {})
    }

    /// Remove everything.
    pub fn clear(&mut self) {
        *self = SearchIndex::default();
    }

    /// Search ([`search_in`]).
    pub fn search(&self, q: &SearchQuery) -> Result<SearchOutcome, SearchError> {
        search_in(self, q).map_err(|e| match e {
            SearchFailed::Query(e) => e,
            SearchFailed::Store(never) => match never {},
        })
    }
}

impl PostingStore for SearchIndex {
    type Id = NhsNumber;
    type Error = Infallible;
    fn ids(&self, key: &PostingKey, out: &mut Vec<NhsNumber>) -> Result<(), Infallible> {
        out.extend(self.postings.get(key).into_iter().flatten().copied());
        Ok(())
    }
    fn patient(&self, id: NhsNumber) -> Result<Option<(NhsNumber, Demographics)>, Infallible> {
        Ok(self.records.get(&id).map(|d| (id, d.clone())))
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

    /// The postings whose union is every patient agreeing on at least two criteria.
    fn probes(&self) -> Vec<PostingKey> {
        let tags = self.family.as_ref().map(family_tags).unwrap_or_default();
        let district = self.postcode.as_ref().map(|(_, d)| d);
        let mut out = Vec::new();
        for t in &tags {
            if let Some(dob) = &self.dob {
                out.push(PostingKey::pair(kind::FAMILY_DOB, t, dob));
            }
            if let Some(d) = district {
                out.push(PostingKey::pair(kind::FAMILY_DISTRICT, t, d));
            }
        }
        if let (Some(dob), Some(d)) = (&self.dob, district) {
            out.push(PostingKey::pair(kind::DOB_DISTRICT, dob, d));
        }
        out
    }

    /// On how many of family / birth date / postcode district `e` agrees with the query.
    fn agreements(&self, e: &Entry) -> u32 {
        let family = self.family.as_ref().is_some_and(|f| {
            f.keys.iter().any(|k| e.fam.keys.contains(k))
                || f.phon.iter().any(|k| e.fam.phon.contains(k))
        });
        let dob = self.dob.is_some() && self.dob == e.dob;
        let district = self
            .postcode
            .as_ref()
            .is_some_and(|(_, d)| e.pc_district.as_ref() == Some(d));
        u32::from(family) + u32::from(dob) + u32::from(district)
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
mod scored_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use edge_proto::model::FhirDate;

    fn demo() -> Demographics {
        Demographics {
            family: "Smith-Jones".into(),
            given: vec!["Mary-Ann".into(), "Zoë".into()],
            birth_date: FhirDate::parse("1950-02-03").ok(),
            gender: Gender::Female,
            postcode: Some("SE1 7EH".into()),
            name_text: None,
            deceased: true,
            ..Demographics::default()
        }
    }

    #[test]
    fn a_scored_patient_survives_its_encoding_and_scores_the_same() {
        let nhs = NhsNumber::parse("9434765919").unwrap();
        let d = demo();
        let s = Scored::new(nhs, &d);
        let bytes = s.encode();
        let back = Scored::decode(&bytes).unwrap();
        assert_eq!(back.encode(), bytes);
        assert_eq!(back.nhs(), nhs);
        let q = SearchQuery {
            family: Some("Smith".into()),
            given: Some("Mary".into()),
            birth_date: Some("1950-02-03".into()),
            postcode: Some("SE1".into()),
        };
        let p = Prepared::new(&q).unwrap();
        assert_eq!(p.score(&back.0), p.score(&s.0));
        assert_eq!(p.agreements(&back.0), p.agreements(&s.0));
        assert_eq!(
            format!("{:?}", back.0.candidate(1)),
            format!("{:?}", Entry::new(nhs, &d).candidate(1))
        );
    }

    #[test]
    fn damaged_encodings_are_refused_without_panicking() {
        let nhs = NhsNumber::parse("9434765919").unwrap();
        let bytes = Scored::new(nhs, &demo()).encode();
        for cut in 0..bytes.len() {
            assert!(Scored::decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Scored::decode(&longer).is_none());
        for i in 0..bytes.len() {
            for v in [0u8, 1, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = Scored::decode(&b);
            }
        }
        assert!(Scored::decode(&[SCORED_FORMAT, 0xff, 0xff, 0xff, 0xff]).is_none());
    }
}
