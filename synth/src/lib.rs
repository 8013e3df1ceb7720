//! Synthetic Londoners: `edge-hub synth`.
//!
//! Writes one FHIR R4 `Bundle` (type `collection`) per line, exactly in the shape of
//! `docs/fhir-mapping.md`: a `Patient`, the patient's `AllergyIntolerance`,
//! `MedicationStatement` and `Condition` items, for some patients a `Consent` (resuscitation
//! decision), `DocumentReference`s (care plans) and `Flag`s, and one `Provenance` per source
//! organisation targeting that organisation's items.
//!
//! Determinism: patient `i` depends only on `(seed, i)` (its own SplitMix64 stream, hand-rolled
//! here so the output can never drift with a crate version), so a run is byte-identical for a
//! seed, the first `n` patients of a larger run equal a run of `n`, and the work parallelises
//! over chunks written back in order. Dates are relative to a fixed "as of" day
//! ([`DEFAULT_AS_OF`] unless `--as-of` says otherwise), never to the clock.
//!
//! NHS numbers come from the 999 000 0000 – 999 999 9999 test range: a seed-keyed permutation
//! (a 20-bit Feistel network with cycle walking) of the [`capacity`] valid, non-repdigit numbers
//! in that range, so they are distinct within a run. That range holds only 909,090 valid numbers
//! (one prefix in eleven has check digit 10), which is the most patients one run can make.
//!
//! # Distributions
//!
//! Chosen to look like a London GP list; good enough to exercise every code path, not
//! epidemiology.
//!
//! | what | distribution |
//! | --- | --- |
//! | age | 0–4 6%, 5–17 14%, 18–29 17%, 30–44 24%, 45–64 23%, 65–74 8%, 75–84 5.5%, 85–100 2.5% |
//! | gender | female 50.5%, male 49.2%, other 0.2%, unknown 0.1% |
//! | names | 8 London name pools (British/Irish 40%, South Asian 18%, other European 14%, Black African 9%, Black Caribbean 5%, East/South-East Asian 5%, Middle Eastern/Turkish 5%, Latin American 4%), 10% mixed; accents, apostrophes, hyphens and spaces included; 35% of those with a common nickname (Robert/Bob…) also carry a `usual` name; 30% have a middle name |
//! | practice and postcode | one of 43 practices (F84001…, Y-codes); home in one of the practice's districts (90%) or anywhere in London (10%) |
//! | allergy section | no allergy resources ("no information") 10%; SNOMED 716186003 "no known allergy" 18%; 409137002 "no known drug allergy" 2%; otherwise 1 (65%), 2 (25%), 3 (7%) or 4 (3%) allergies |
//! | allergies | weighted by [`codes::ALLERGENS`] (penicillin most common; children mostly food); 3% narrative-only (text, no code); anaphylaxis or angioedema (→ `criticality: high`, `severity: severe`) in 8% of drug, 25% of food and 20% of environmental allergies to anaphylactic allergens (≈9% of all allergies); otherwise low (70%), unable-to-assess (10%) or absent; 20% unconfirmed; codeine, morphine, ibuprofen and 8% of others recorded as intolerance |
//! | conditions | per-condition prevalence by age band (e.g. hypertension 0.1% of children → 60% at 85+, AF 0% → 18%, dementia 0% → 20%); none recorded: "no current problems" 160245001 for 30% of those, nothing for the rest |
//! | medicines | from conditions (AF → anticoagulant 80%: DOAC or warfarin; T1DM → basal + bolus insulin; T2DM → metformin 85%, insulin 20%; IHD → antiplatelet + statin; bipolar → lithium 60%; RA → methotrexate 45%; epilepsy → valproate/lamotrigine/levetiracetam; chronic pain and cancer → opioids…) plus age rules (statins, paracetamol, PPIs, amlodipine, furosemide from 45–75+; PPIs with antithrombotics/steroids); at most one anticoagulant, statin and PPI each. Measured (20,000 patients): per patient <18 0.4, 18–44 0.5, 45–64 1.0, 65–74 2.3, 75–84 3.2, 85+ 3.4; 13% of 75+ anticoagulated; 25% of diabetics on insulin; 6% stopped, acute courses completed; ~4.5% narrative-only (text, no code); none at all: "no known medications" 787481004 for 25% of those, nothing for the rest |
//! | resuscitation (Consent) | base rate by age <18 0.1%, 18–64 0.4%, 65–74 3%, 75–84 7%, 85+ 15%, ×1.8 with dementia, frailty, cancer or heart failure (measured: 65–74 3.6%, 75–84 8.6%, 85+ 21%); 450476008 DNACPR 70%, 304253006 15%, 304252001 "for resuscitation" 15%; 60% with a review date |
//! | care plans (DocumentReference) | with a resuscitation decision: ReSPECT 70%, end-of-life care plan 30% (cancer, dementia, frailty, 85+), coordination summary 10%; otherwise mental-health crisis plan (30% of psychosis/bipolar), emergency health care plan (12% of epilepsy, sickle cell, T1DM), advance care plan (1% of 65+), treatment escalation plan, contingency plan (rare) |
//! | alerts (Flag) | communication needs (deafness, learning disability, autism, dementia; interpreter 1.5%), safeguarding 0.8%, risk to crew 0.8%, clinical (Addison's 80%, sickle cell 50%, 0.3% others) |
//! | sources | `--sources K`: the GP practice (EMIS Web or SystmOne) + K−1 of the local acute trust, other trusts and mental-health trusts; the Universal Care Plan (OneLondon) holds care plans and resuscitation decisions when the patient has any; items go 55% to the GP, the rest spread so every source holds at least one item when there are enough |

use std::fmt::Write as _;
use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;

use edge_proto::codes::{
    self, AlertFlag, AlertKind, Allergen, AllergenCategory, HighRiskClass, Medicine,
    NarrativeMedicine, NoKnown, Reaction,
};

/// The "as of" day used when none is given: every date in the output is on or before it.
pub const DEFAULT_AS_OF: &str = "2026-01-01";
/// Most source organisations per patient.
pub const MAX_SOURCES: usize = 8;
/// Patients per unit of parallel work.
const CHUNK_PATIENTS: u64 = 2048;

// ---------------------------------------------------------------------------------------------
// Configuration and errors
// ---------------------------------------------------------------------------------------------

/// What `edge-hub synth` was asked for, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    pub patients: u64,
    pub seed: u64,
    pub sources: usize,
    /// Days since 1970-01-01 of the "as of" day.
    pub as_of_day: i64,
}

/// Why a synth request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SynthError {
    NoPatients,
    TooManyPatients { asked: u64, max: u64 },
    Sources(usize),
    AsOf(String),
}

impl std::fmt::Display for SynthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SynthError::NoPatients => write!(f, "--patients must be at least 1"),
            SynthError::TooManyPatients { asked, max } => write!(
                f,
                "--patients {asked} is more than the {max} distinct valid NHS numbers in the \
                 999 000 0000 – 999 999 9999 test range; ask for at most {max}"
            ),
            SynthError::Sources(k) => write!(
                f,
                "--sources {k} is out of range; expected 1 to {MAX_SOURCES} (the GP practice \
                 counts as one)"
            ),
            SynthError::AsOf(s) => write!(
                f,
                "--as-of {s:?} is not a date between 1970-01-01 and 2199-12-31 (expected \
                 YYYY-MM-DD)"
            ),
        }
    }
}

impl std::error::Error for SynthError {}

impl Config {
    /// Validate a request. `as_of` is `YYYY-MM-DD`; `None` means [`DEFAULT_AS_OF`].
    pub fn new(
        patients: u64,
        seed: u64,
        sources: usize,
        as_of: Option<&str>,
    ) -> Result<Config, SynthError> {
        if patients == 0 {
            return Err(SynthError::NoPatients);
        }
        let max = capacity();
        if patients > max {
            return Err(SynthError::TooManyPatients {
                asked: patients,
                max,
            });
        }
        if !(1..=MAX_SOURCES).contains(&sources) {
            return Err(SynthError::Sources(sources));
        }
        let text = as_of.unwrap_or(DEFAULT_AS_OF);
        let as_of_day = parse_day(text).ok_or_else(|| SynthError::AsOf(text.to_owned()))?;
        Ok(Config {
            patients,
            seed,
            sources,
            as_of_day,
        })
    }
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    pub patients: u64,
    pub bytes: u64,
    /// Resources written, by type (see [`RESOURCE_TYPES`]).
    pub resources: [u64; RESOURCE_TYPES.len()],
}

/// The resource types synth writes, in [`Stats::resources`] order.
pub const RESOURCE_TYPES: [&str; 8] = [
    "Patient",
    "AllergyIntolerance",
    "MedicationStatement",
    "Condition",
    "Consent",
    "DocumentReference",
    "Flag",
    "Provenance",
];

impl Stats {
    fn add(&mut self, other: &Stats) {
        self.patients += other.patients;
        self.bytes += other.bytes;
        for (a, b) in self.resources.iter_mut().zip(other.resources) {
            *a += b;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

/// Write `cfg.patients` bundles as NDJSON to `out`, calling `progress` with the number of
/// patients written so far after each chunk (from this thread). Uses up to `threads` worker
/// threads (at least one); the bytes written do not depend on `threads`.
pub fn write_ndjson<W: Write>(
    cfg: &Config,
    out: &mut W,
    threads: usize,
    progress: &mut dyn FnMut(u64),
) -> io::Result<Stats> {
    let generator = Generator::new(cfg);
    let chunks = cfg.patients.div_ceil(CHUNK_PATIENTS);
    let threads = threads.clamp(1, 16).min(chunks as usize);
    let mut total = Stats::default();
    if threads <= 1 {
        let mut buf = String::with_capacity(CHUNK_PATIENTS as usize * 8192);
        for c in 0..chunks {
            buf.clear();
            let stats = generator.chunk(c, &mut buf);
            out.write_all(buf.as_bytes())?;
            total.add(&stats);
            progress(total.patients);
        }
        out.flush()?;
        return Ok(total);
    }
    let next = AtomicU64::new(0);
    let (tx, rx) = mpsc::sync_channel::<(u64, String, Stats)>(threads * 2);
    std::thread::scope(|scope| -> io::Result<()> {
        for _ in 0..threads {
            let tx = tx.clone();
            let (generator, next) = (&generator, &next);
            scope.spawn(move || loop {
                let c = next.fetch_add(1, Ordering::Relaxed);
                if c >= chunks {
                    break;
                }
                let mut buf = String::with_capacity(CHUNK_PATIENTS as usize * 8192);
                let stats = generator.chunk(c, &mut buf);
                if tx.send((c, buf, stats)).is_err() {
                    break; // the writer gave up (I/O error)
                }
            });
        }
        drop(tx);
        let mut pending = std::collections::BTreeMap::new();
        let mut want = 0u64;
        let result = (|| -> io::Result<()> {
            for (c, buf, stats) in rx.iter() {
                pending.insert(c, (buf, stats));
                while let Some((buf, stats)) = pending.remove(&want) {
                    out.write_all(buf.as_bytes())?;
                    total.add(&stats);
                    progress(total.patients);
                    want += 1;
                }
            }
            out.flush()
        })();
        if result.is_err() {
            // Stop the workers: claim every remaining chunk, then drain the channel so no
            // sender stays blocked.
            next.store(chunks, Ordering::Relaxed);
            for _ in rx.iter() {}
        }
        result
    })?;
    Ok(total)
}

/// Generates patients for one configuration. Cheap to share between threads.
#[derive(Debug)]
pub struct Generator {
    cfg: Config,
    perm_keys: [u64; 4],
    as_of_secs: i64,
    rules: &'static Rules,
}

impl Generator {
    pub fn new(cfg: &Config) -> Generator {
        let k = mix64(cfg.seed ^ 0x6e68_735f_7065_726d); // "nhs_perm"
        Generator {
            cfg: *cfg,
            perm_keys: [mix64(k ^ 1), mix64(k ^ 2), mix64(k ^ 3), mix64(k ^ 4)],
            as_of_secs: cfg.as_of_day * 86_400,
            rules: rules(),
        }
    }

    /// The NHS number (10 digits) of patient `index` (< [`capacity`]).
    pub fn nhs_number(&self, index: u64) -> u64 {
        let table = valid_nhs_prefixes();
        let slot = self.permute(index as u32) as usize;
        let prefix = table.get(slot).copied().unwrap_or_default() as u64;
        let body = 999_000_000 + prefix; // the first nine digits
        body * 10 + nhs_check_digit(body).unwrap_or_default()
    }

    /// Append patient `index`'s bundle (one line, with its newline) to `out`.
    pub fn patient(&self, index: u64, out: &mut String) -> Stats {
        let before = out.len();
        let mut p = PatientGen::new(self, index);
        p.generate();
        let mut stats = p.write(out);
        stats.bytes = (out.len() - before) as u64;
        stats
    }

    fn chunk(&self, c: u64, out: &mut String) -> Stats {
        let start = c * CHUNK_PATIENTS;
        let end = (start + CHUNK_PATIENTS).min(self.cfg.patients);
        let mut total = Stats::default();
        for i in start..end {
            total.add(&self.patient(i, out));
        }
        total
    }

    /// A bijection of `0..capacity()` keyed by the seed: Feistel rounds on 20 bits, walking the
    /// cycle until the value falls back inside the range.
    fn permute(&self, x: u32) -> u32 {
        let cap = valid_nhs_prefixes().len() as u32;
        let mut v = x;
        loop {
            v = self.feistel(v);
            if v < cap {
                return v;
            }
        }
    }

    fn feistel(&self, v: u32) -> u32 {
        let (mut l, mut r) = (v >> 10, v & 0x3ff);
        for k in self.perm_keys {
            let f = (mix64(r as u64 ^ k) & 0x3ff) as u32;
            (l, r) = (r, l ^ f);
        }
        (l << 10) | r
    }
}

// ---------------------------------------------------------------------------------------------
// NHS numbers
// ---------------------------------------------------------------------------------------------

/// The Modulus 11 check digit of a nine-digit NHS number body, or `None` when it would be 10
/// (such numbers are never issued).
pub fn nhs_check_digit(body: u64) -> Option<u64> {
    let mut sum = 0;
    let mut b = body;
    for weight in 2..=10 {
        sum += (b % 10) * weight;
        b /= 10;
    }
    match 11 - sum % 11 {
        11 => Some(0),
        10 => None,
        c => Some(c),
    }
}

/// The six-digit suffixes `s` for which `999 ss ssss` + check digit is a valid, non-repdigit
/// NHS number, ascending.
fn valid_nhs_prefixes() -> &'static [u32] {
    static TABLE: OnceLock<Vec<u32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        (0..1_000_000u32)
            .filter(|&s| {
                let body = 999_000_000 + s as u64;
                match nhs_check_digit(body) {
                    None => false,
                    Some(c) => body * 10 + c != 9_999_999_999, // the one repdigit in range
                }
            })
            .collect()
    })
}

/// How many distinct patients one run can make (valid NHS numbers in the 999 test range).
pub fn capacity() -> u64 {
    valid_nhs_prefixes().len() as u64
}

// ---------------------------------------------------------------------------------------------
// Randomness (SplitMix64: tiny, fast, and fixed forever)
// ---------------------------------------------------------------------------------------------

fn mix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64, index: u64) -> Rng {
        Rng(mix64(seed ^ mix64(index ^ 0x7061_7469_656e_7473))) // "patients"
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }
    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        lo + self.below((hi - lo + 1) as u64) as i64
    }
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64) * (1.0 / (1u64 << 53) as f64) < p
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
    fn pick_str(&mut self, items: &[&'static str]) -> &'static str {
        self.pick::<&'static str>(items)
    }
    /// Index into `weights`, proportional to weight.
    fn weighted(&mut self, weights: impl Iterator<Item = u32> + Clone) -> usize {
        let total: u64 = weights.clone().map(u64::from).sum();
        let mut r = self.below(total);
        for (i, w) in weights.enumerate() {
            let w = u64::from(w);
            if r < w {
                return i;
            }
            r -= w;
        }
        0
    }
}

// ---------------------------------------------------------------------------------------------
// Dates (days since 1970-01-01, proleptic Gregorian; Howard Hinnant's algorithms)
// ---------------------------------------------------------------------------------------------

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m as i64 + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn parse_day(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if !(1970..=2199).contains(&y) || !(1..=12).contains(&m) || d == 0 {
        return None;
    }
    let day = days_from_civil(i64::from(y), m, d);
    // reject 2025-02-30 and the like
    (civil_from_days(day) == (i64::from(y), m, d)).then_some(day)
}

fn push_2(out: &mut String, n: u32) {
    out.push(char::from(b'0' + (n / 10 % 10) as u8));
    out.push(char::from(b'0' + (n % 10) as u8));
}

fn push_date(out: &mut String, day: i64) {
    let (y, m, d) = civil_from_days(day);
    let y = y.clamp(0, 9999) as u32;
    push_2(out, y / 100);
    push_2(out, y % 100);
    out.push('-');
    push_2(out, m);
    out.push('-');
    push_2(out, d);
}

fn push_instant(out: &mut String, secs: i64) {
    let day = secs.div_euclid(86_400);
    let s = secs.rem_euclid(86_400) as u32;
    push_date(out, day);
    out.push('T');
    push_2(out, s / 3600);
    out.push(':');
    push_2(out, s / 60 % 60);
    out.push(':');
    push_2(out, s % 60);
    out.push('Z');
}

// ---------------------------------------------------------------------------------------------
// JSON
// ---------------------------------------------------------------------------------------------

/// Append `s` as JSON string content (without quotes).
fn esc(out: &mut String, s: &str) {
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        return;
    }
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `"key":"value"` with the value escaped; `key` must be a plain literal.
fn kv(out: &mut String, key: &str, value: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":\"");
    esc(out, value);
    out.push('"');
}

fn snomed_concept(out: &mut String, code: &str, display: &str) {
    out.push_str("{\"coding\":[{\"system\":\"http://snomed.info/sct\",");
    kv(out, "code", code);
    out.push(',');
    kv(out, "display", display);
    out.push_str("}]}");
}

fn coding_concept(out: &mut String, system: &str, code: &str, display: Option<&str>) {
    out.push_str("{\"coding\":[{");
    kv(out, "system", system);
    out.push(',');
    kv(out, "code", code);
    if let Some(d) = display {
        out.push(',');
        kv(out, "display", d);
    }
    out.push_str("}]}");
}

fn ods_ref(out: &mut String, org: &Org) {
    out.push_str("{\"identifier\":{\"system\":\"https://fhir.nhs.uk/Id/ods-organization-code\",");
    kv(out, "value", org.ods);
    out.push_str("},");
    kv(out, "display", org.name);
    out.push('}');
}

/// A UUID-shaped id (version 4 layout) derived from the seed, the patient and an ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Uuid(u64, u64);

impl Uuid {
    fn derive(seed: u64, patient: u64, ordinal: u64) -> Uuid {
        let a = mix64(seed ^ mix64(patient ^ mix64(ordinal ^ 0x7575_6964)));
        let b = mix64(a ^ 0x5a5a_5a5a_5a5a_5a5a);
        Uuid(
            (a & !0xf000) | 0x4000,
            (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000,
        )
    }
    fn push(self, out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = [self.0.to_be_bytes(), self.1.to_be_bytes()];
        let mut i = 0;
        for half in bytes {
            for byte in half {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                out.push(char::from(HEX[(byte >> 4) as usize]));
                out.push(char::from(HEX[(byte & 0xf) as usize]));
                i += 1;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reference data: places, organisations, names
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    Central,
    East,
    North,
    NorthWest,
    West,
    SouthWest,
    South,
    SouthEast,
}

use Region::{
    Central as RC, East as RE, North as RN, NorthWest as RNW, South as RS, SouthEast as RSE,
    SouthWest as RSW, West as RW,
};

/// Real London postcode districts.
#[rustfmt::skip]
const DISTRICTS: &[(&str, Region)] = &[
    ("EC1", RC), ("WC1", RC), ("W1", RC), ("SW1", RC), ("N1", RC), ("NW1", RC),
    ("E1", RE), ("E2", RE), ("E3", RE), ("E5", RE), ("E8", RE), ("E9", RE), ("E10", RE),
    ("E11", RE), ("E13", RE), ("E14", RE), ("E15", RE), ("E17", RE), ("IG1", RE), ("RM10", RE),
    ("N4", RN), ("N7", RN), ("N8", RN), ("N15", RN), ("N16", RN), ("N17", RN), ("N19", RN),
    ("N22", RN), ("EN1", RN),
    ("NW2", RNW), ("NW5", RNW), ("NW6", RNW), ("NW10", RNW), ("HA0", RNW), ("HA8", RNW),
    ("W2", RW), ("W3", RW), ("W6", RW), ("W10", RW), ("W12", RW), ("UB1", RW), ("TW3", RW),
    ("SW2", RSW), ("SW4", RSW), ("SW6", RSW), ("SW9", RSW), ("SW11", RSW), ("SW16", RSW),
    ("SW17", RSW), ("SW19", RSW), ("KT1", RSW), ("SM1", RSW), ("CR4", RSW),
    ("CR0", RS), ("CR7", RS), ("SE25", RS),
    ("SE1", RSE), ("SE5", RSE), ("SE6", RSE), ("SE8", RSE), ("SE10", RSE), ("SE13", RSE),
    ("SE15", RSE), ("SE17", RSE), ("SE18", RSE), ("SE22", RSE), ("SE28", RSE), ("BR1", RSE),
    ("DA15", RSE),
];

const SYS_EMIS: &str = "urn:kerbside:system:emis-web";
const SYS_TPP: &str = "urn:kerbside:system:systmone";
const SYS_CERNER: &str = "urn:kerbside:system:cerner-millennium";
const SYS_EPIC: &str = "urn:kerbside:system:epic";
const SYS_RIO: &str = "urn:kerbside:system:rio";
const SYS_UCP: &str = "urn:kerbside:system:ucp";

/// A source organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Org {
    ods: &'static str,
    name: &'static str,
    system: &'static str,
}

/// A GP practice with the districts its list is drawn from. Names are invented; codes follow
/// the ODS pattern (and the contract's `practice:F84001` example).
struct Practice {
    org: Org,
    districts: &'static [&'static str],
}

const fn gp(
    ods: &'static str,
    name: &'static str,
    emis: bool,
    districts: &'static [&'static str],
) -> Practice {
    let system = if emis { SYS_EMIS } else { SYS_TPP };
    Practice {
        org: Org { ods, name, system },
        districts,
    }
}

#[rustfmt::skip]
const PRACTICES: &[Practice] = &[
    gp("F84001", "Stepney Green Medical Practice", true, &["E1", "E14", "E3"]),
    gp("F84002", "Bow Road Surgery", true, &["E3", "E2"]),
    gp("F84003", "Dalston Lane Health Centre", true, &["E8", "E5", "N16"]),
    gp("F84004", "Hackney Wick Medical Centre", false, &["E9", "E15"]),
    gp("F84005", "Leyton Green Surgery", true, &["E10", "E11", "E17"]),
    gp("F84006", "Stratford Village Practice", true, &["E15", "E13"]),
    gp("F84007", "Canary Wharf Riverside Practice", false, &["E14"]),
    gp("F82001", "Ilford Lane Surgery", true, &["IG1", "RM10"]),
    gp("E83001", "Holloway Road Medical Centre", true, &["N7", "N19"]),
    gp("E83002", "Finsbury Park Health Centre", false, &["N4", "N8"]),
    gp("E83003", "Tottenham Hale Surgery", true, &["N15", "N17"]),
    gp("E83004", "Wood Green Medical Practice", true, &["N22", "N8"]),
    gp("E83005", "Enfield Town Surgery", false, &["EN1"]),
    gp("E84001", "Willesden Green Medical Centre", true, &["NW10", "NW2"]),
    gp("E84002", "Wembley Park Surgery", true, &["HA0", "NW10", "HA8"]),
    gp("E84003", "Kilburn High Road Practice", false, &["NW6", "NW2"]),
    gp("E84004", "Kentish Town Health Centre", true, &["NW5", "NW1"]),
    gp("E85001", "Paddington Green Health Centre", true, &["W2", "W10"]),
    gp("E85002", "Shepherd's Bush Medical Centre", false, &["W12", "W6"]),
    gp("E85003", "Acton Vale Surgery", true, &["W3", "W12"]),
    gp("E85004", "Southall Broadway Practice", true, &["UB1", "TW3"]),
    gp("E87001", "Marylebone Village Surgery", true, &["W1", "NW1"]),
    gp("E87002", "Bloomsbury Medical Practice", false, &["WC1", "EC1"]),
    gp("E87003", "Pimlico Health Centre", true, &["SW1"]),
    gp("F83001", "Angel Islington Surgery", true, &["N1", "EC1"]),
    gp("G85001", "Walworth Road Surgery", true, &["SE17", "SE1", "SE5"]),
    gp("G85002", "Camberwell Green Medical Centre", true, &["SE5", "SE15"]),
    gp("G85003", "Peckham Rye Practice", false, &["SE15", "SE22"]),
    gp("G85004", "Borough High Street Surgery", true, &["SE1"]),
    gp("G84001", "Lewisham Park Medical Centre", true, &["SE13", "SE6"]),
    gp("G84002", "Deptford Creek Surgery", false, &["SE8", "SE13"]),
    gp("G83001", "Woolwich Arsenal Surgery", true, &["SE18", "SE28"]),
    gp("G84003", "Bromley Common Practice", true, &["BR1", "DA15"]),
    gp("G85005", "Brixton Hill Group Practice", true, &["SW2", "SW9"]),
    gp("G85006", "Stockwell Park Surgery", false, &["SW9", "SW4"]),
    gp("H85001", "Clapham Junction Medical Centre", true, &["SW11", "SW4"]),
    gp("H85002", "Tooting Broadway Surgery", true, &["SW17", "SW16"]),
    gp("H85003", "Wimbledon Village Practice", false, &["SW19", "SM1", "KT1"]),
    gp("H85004", "Fulham Palace Road Surgery", true, &["SW6"]),
    gp("H83001", "Croydon Central Medical Centre", true, &["CR0", "CR7"]),
    gp("H83002", "Thornton Heath Surgery", false, &["CR7", "SE25"]),
    gp("Y02001", "Mitcham Lane Health Hub", true, &["CR4", "SW16"]),
    gp("Y03001", "Greenwich Peninsula Practice", true, &["SE10", "SE18"]),
];

const fn trust(ods: &'static str, name: &'static str, system: &'static str) -> Org {
    Org { ods, name, system }
}

/// Acute trusts with the regions they mainly serve.
const ACUTE: &[(Org, &[Region])] = &[
    (
        trust("RJ1", "Guy's and St Thomas' NHS Foundation Trust", SYS_EPIC),
        &[RSE, RC],
    ),
    (
        trust(
            "RJZ",
            "King's College Hospital NHS Foundation Trust",
            SYS_EPIC,
        ),
        &[RSE, RS],
    ),
    (trust("R1H", "Barts Health NHS Trust", SYS_CERNER), &[RE]),
    (
        trust("RYJ", "Imperial College Healthcare NHS Trust", SYS_CERNER),
        &[RW, RC],
    ),
    (
        trust("RAL", "Royal Free London NHS Foundation Trust", SYS_CERNER),
        &[RN, RNW],
    ),
    (
        trust(
            "RRV",
            "University College London Hospitals NHS Foundation Trust",
            SYS_EPIC,
        ),
        &[RC, RN],
    ),
    (
        trust(
            "RJ7",
            "St George's University Hospitals NHS Foundation Trust",
            SYS_CERNER,
        ),
        &[RSW],
    ),
    (
        trust(
            "RQM",
            "Chelsea and Westminster Hospital NHS Foundation Trust",
            SYS_CERNER,
        ),
        &[RW, RSW],
    ),
    (
        trust("RJ6", "Croydon Health Services NHS Trust", SYS_CERNER),
        &[RS],
    ),
    (
        trust(
            "RF4",
            "Barking, Havering and Redbridge University Hospitals NHS Trust",
            SYS_CERNER,
        ),
        &[RE],
    ),
    (
        trust(
            "R1K",
            "London North West University Healthcare NHS Trust",
            SYS_CERNER,
        ),
        &[RNW, RW],
    ),
    (
        trust(
            "RQX",
            "Homerton Healthcare NHS Foundation Trust",
            SYS_CERNER,
        ),
        &[RE],
    ),
    (
        trust("RKE", "Whittington Health NHS Trust", SYS_CERNER),
        &[RN],
    ),
    (
        trust("RJ2", "Lewisham and Greenwich NHS Trust", SYS_CERNER),
        &[RSE],
    ),
    (
        trust(
            "RAP",
            "North Middlesex University Hospital NHS Trust",
            SYS_CERNER,
        ),
        &[RN],
    ),
];

/// Mental-health trusts.
const MENTAL_HEALTH: &[Org] = &[
    trust(
        "RV5",
        "South London and Maudsley NHS Foundation Trust",
        SYS_RIO,
    ),
    trust(
        "RV3",
        "Central and North West London NHS Foundation Trust",
        SYS_TPP,
    ),
    trust("RWK", "East London NHS Foundation Trust", SYS_RIO),
];

/// The custodian of London's Universal Care Plans (hosted for OneLondon by South West London).
const UCP: Org = Org {
    ods: "QWE",
    name: "Universal Care Plan (OneLondon)",
    system: SYS_UCP,
};

#[rustfmt::skip]
const STREETS: &[&str] = &[
    "High Street", "Church Road", "Station Road", "Victoria Road", "Albert Road", "Manor Road",
    "Park Road", "Queen's Road", "King's Road", "Green Lanes", "Mile End Road", "Walworth Road",
    "Coldharbour Lane", "Brixton Hill", "Holloway Road", "Kilburn High Road", "Whitechapel Road",
    "Old Kent Road", "Lordship Lane", "Streatham High Road", "Uxbridge Road", "Harrow Road",
    "Seven Sisters Road", "Romford Road", "Lea Bridge Road", "Denmark Hill", "Stroud Green Road",
    "Commercial Road", "Cable Street", "Roman Road", "Balham High Road", "Tooting Bec Road",
    "Lewisham Way", "Deptford High Street", "Well Street", "Mare Street", "Caledonian Road",
    "Essex Road", "Brick Lane", "Cromwell Road",
];

#[rustfmt::skip]
const BLOCKS: &[&str] = &[
    "Brunel House", "Nightingale Court", "Thames View", "Windrush House", "Attlee Court",
    "Wren Point", "Seacole House", "Lansbury Tower", "Bevan Court", "Mandela House",
];

/// Postcode unit letters (no C, I, K, M, O, V).
const UNIT_LETTERS: &[u8] = b"ABDEFGHJLNPQRSTUWXYZ";

/// Name pools. Older British given names for those born before 1970.
struct Pool {
    weight: u32,
    family: &'static [&'static str],
    female: &'static [&'static str],
    male: &'static [&'static str],
}

const BRITISH_FEMALE_OLD: &[&str] = &[
    "Margaret",
    "Elizabeth",
    "Patricia",
    "Susan",
    "Dorothy",
    "Jean",
    "Joan",
    "Barbara",
    "Kathleen",
    "Christine",
    "Brenda",
    "Sheila",
    "Maureen",
    "Pauline",
    "Valerie",
    "Eileen",
];
const BRITISH_MALE_OLD: &[&str] = &[
    "Robert", "William", "Richard", "James", "Edward", "Anthony", "Michael", "Peter", "John",
    "David", "Albert", "Kenneth", "Derek", "Brian", "Raymond", "Terence",
];

#[rustfmt::skip]
const POOLS: &[Pool] = &[
    Pool {
        // British / Irish
        weight: 40,
        family: &[
            "Smith", "Jones", "Williams", "Taylor", "Brown", "Davies", "Evans", "Wilson", "Johnson",
            "Roberts", "Walker", "Wright", "Thompson", "White", "Hughes", "Edwards", "Green",
            "Hall", "Wood", "Harris", "O'Brien", "O'Connor", "O'Sullivan", "Murphy", "Kelly",
            "McDonald", "MacLeod", "Smith-Jones", "Ashworth-Clarke", "Taylor-Johnson",
            "Fitzgerald", "Gallagher", "Doherty", "Lloyd", "Price", "Morgan",
        ],
        female: &[
            "Olivia", "Amelia", "Isla", "Ava", "Emily", "Sophie", "Grace", "Chloë", "Zoë",
            "Siobhán", "Aoife", "Niamh", "Elizabeth", "Katherine", "Rebecca", "Victoria",
            "Jennifer", "Charlotte", "Hannah", "Lucy", "Mary-Jane", "Renée",
        ],
        male: &[
            "Oliver", "George", "Harry", "Noah", "Jack", "Leo", "Oscar", "Thomas", "William",
            "James", "Daniel", "Joseph", "Christopher", "Alexander", "Seán", "Ciarán", "Robert",
            "Michael", "Edward", "Richard", "Matthew", "Callum",
        ],
    },
    Pool {
        // South Asian
        weight: 18,
        family: &[
            "Patel", "Shah", "Khan", "Ahmed", "Begum", "Ali", "Hussain", "Rahman", "Islam",
            "Miah", "Uddin", "Singh", "Kaur", "Sharma", "Gupta", "Chowdhury", "Mistry", "Desai",
            "Iqbal", "Akhtar", "Ali-Khan", "Nair", "Fernando", "Perera", "Sivakumar",
        ],
        female: &[
            "Fatima", "Aisha", "Priya", "Anjali", "Nusrat", "Shabana", "Farzana", "Ayesha",
            "Sunita", "Harpreet", "Zainab", "Maryam", "Nadia", "Sana", "Kavya", "Tahmina",
        ],
        male: &[
            "Muhammad", "Mohammed", "Ahmed", "Ibrahim", "Yusuf", "Arjun", "Rahul", "Imran",
            "Abdul", "Sanjay", "Harjit", "Amir", "Omar", "Rohan", "Shafiq", "Rajesh",
        ],
    },
    Pool {
        // Other European (Polish, Romanian, Portuguese, Italian, Greek…)
        weight: 14,
        family: &[
            "Kowalski", "Nowak", "Wiśniewska", "Kowalczyk", "Popescu", "Ionescu", "Rossi",
            "Russo", "Ferreira", "Gonçalves", "DaCosta", "Silva", "García", "Nuñez", "Müller",
            "Schmidt", "Dvořák", "Papadopoulos", "Georgiou", "Ødegaard", "Nagy", "Kovács",
            "Dubois", "Venter", "D'Souza",
        ],
        female: &[
            "Anna", "Agnieszka", "Małgorzata", "Ioana", "Elena", "Giulia", "Ana-Maria", "Maria",
            "Sofia", "Ágnes", "Katarzyna", "Lucía", "Inês", "Élodie", "Ingrid", "Zuzana",
        ],
        male: &[
            "Piotr", "Łukasz", "Andrei", "Mihai", "Marco", "Giuseppe", "João", "José", "Miguel",
            "Tomasz", "Zoltán", "Björn", "François", "Jürgen", "Nikolaos", "Pavel",
        ],
    },
    Pool {
        // Black African
        weight: 9,
        family: &[
            "Okafor", "Adeyemi", "Adebayo", "Okonkwo", "Mensah", "Owusu", "Asante", "Boateng",
            "Mohamed", "Abdi", "Hassan", "Osei", "Nwosu", "Eze", "Mensah-Bonsu", "Owusu-Ansah",
            "Tesfaye", "Kamara",
        ],
        female: &[
            "Chiamaka", "Ngozi", "Adaeze", "Abena", "Akosua", "Ama", "Fadumo", "Hodan", "Folake",
            "Blessing", "Yetunde", "Efua", "Amina", "Chipo",
        ],
        male: &[
            "Chukwuemeka", "Oluwaseun", "Kwame", "Kofi", "Yaw", "Abdirahman", "Abdullahi",
            "Tunde", "Emeka", "Femi", "Kwabena", "Tendai", "Samuel", "Daniel",
        ],
    },
    Pool {
        // Black Caribbean
        weight: 5,
        family: &[
            "Campbell", "Williams", "Brown", "Clarke", "Thompson", "Morgan", "Grant", "Francis",
            "Bailey", "Bennett", "Richards", "Henry", "Samuels", "Reid",
        ],
        female: &[
            "Marcia", "Beverley", "Claudette", "Shanice", "Keisha", "Jasmine", "Patricia",
            "Marlene", "Yvonne", "Tanisha",
        ],
        male: &[
            "Winston", "Delroy", "Errol", "Jermaine", "Tyrone", "Leroy", "Marcus", "Trevor",
            "Dwayne", "Andre",
        ],
    },
    Pool {
        // East / South-East Asian
        weight: 5,
        family: &[
            "Wong", "Chan", "Li", "Zhang", "Wang", "Chen", "Liu", "Nguyễn", "Tran", "Le", "Santos",
            "Reyes", "Cruz", "Kim", "Lee",
        ],
        female: &[
            "Mei", "Xin", "Li Na", "Thi Lan", "Hoa", "Maria Clara", "Joy", "Ji-woo", "Yuki",
            "Grace",
        ],
        male: &[
            "Wei", "Jun", "Hao", "Minh", "Tuan", "Jose Mari", "Paolo", "Min-jun", "Hiroshi",
            "Kevin",
        ],
    },
    Pool {
        // Middle Eastern, Turkish, Kurdish
        weight: 5,
        family: &[
            "Yılmaz", "Şahin", "Öztürk", "Demir", "Kaya", "Çelik", "Al-Sayed", "Haddad",
            "Mansour", "Karimi", "Hosseini", "Ahmadi", "Abdullah", "Aziz",
        ],
        female: &[
            "Ayşe", "Elif", "Zeynep", "Leyla", "Yasmin", "Noor", "Rana", "Shirin", "Dilan",
            "Mariam",
        ],
        male: &[
            "Mehmet", "Mustafa", "Emre", "Ali", "Hassan", "Karim", "Reza", "Omar", "Serkan",
            "Dara",
        ],
    },
    Pool {
        // Latin American / Brazilian
        weight: 4,
        family: &[
            "Rodríguez", "González", "Hernández", "López", "Martínez", "Pereira", "Oliveira",
            "Souza", "Ramírez", "Gómez", "Santos", "Alves",
        ],
        female: &[
            "María José", "Camila", "Valentina", "Luisa", "Gabriela", "Fernanda", "Ana Paula",
            "Daniela",
        ],
        male: &[
            "Juan Carlos", "Luis", "Carlos", "Andrés", "Felipe", "Thiago", "Rafael", "Mateus",
        ],
    },
];

/// Formal names with the nickname a crew may be told.
const NICKNAMES: &[(&str, &str)] = &[
    ("Robert", "Bob"),
    ("Elizabeth", "Liz"),
    ("William", "Bill"),
    ("Margaret", "Peggy"),
    ("Richard", "Dick"),
    ("James", "Jim"),
    ("Katherine", "Kate"),
    ("Edward", "Ted"),
    ("Thomas", "Tom"),
    ("Anthony", "Tony"),
    ("Patricia", "Pat"),
    ("Susan", "Sue"),
    ("Jennifer", "Jenny"),
    ("Michael", "Mike"),
    ("Alexander", "Alex"),
    ("Victoria", "Vicky"),
    ("Rebecca", "Becky"),
    ("Christopher", "Chris"),
    ("Daniel", "Dan"),
    ("Joseph", "Joe"),
];

const CLINICIAN_FAMILY: &[&str] = &[
    "Okafor",
    "Shah",
    "Williams",
    "Nowak",
    "Chen",
    "O'Neill",
    "Mensah",
    "Rahman",
    "Taylor",
    "Haddad",
    "Fernandes",
    "Campbell",
];

const CLINICIAN_ROLE: &[&str] = &[
    "GP",
    "Consultant geriatrician",
    "Palliative care consultant",
    "Consultant physician",
    "Specialty registrar",
    "Community matron",
];

// ---------------------------------------------------------------------------------------------
// Clinical rules (codes from edge_proto::codes, resolved once)
// ---------------------------------------------------------------------------------------------

/// Age bands for prevalence: <18, 18–44, 45–64, 65–74, 75–84, 85+.
fn band(age: i64) -> usize {
    match age {
        ..=17 => 0,
        18..=44 => 1,
        45..=64 => 2,
        65..=74 => 3,
        75..=84 => 4,
        _ => 5,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SexOnly {
    Any,
    Female,
    Male,
}

/// (SNOMED code, prevalence by age band, sex, may resolve)
type Prev = (&'static str, [f64; 6], SexOnly, bool);

#[rustfmt::skip]
const PREVALENCE: &[Prev] = &[
    ("38341003", [0.001, 0.05, 0.22, 0.45, 0.55, 0.60], SexOnly::Any, false), // hypertension
    ("44054006", [0.0005, 0.02, 0.10, 0.18, 0.20, 0.18], SexOnly::Any, false), // T2DM
    ("46635009", [0.003, 0.005, 0.005, 0.004, 0.003, 0.002], SexOnly::Any, false), // T1DM
    ("195967001", [0.09, 0.08, 0.08, 0.08, 0.08, 0.07], SexOnly::Any, true), // asthma
    ("13645005", [0.0, 0.002, 0.03, 0.07, 0.09, 0.09], SexOnly::Any, false), // COPD
    ("49436004", [0.0, 0.002, 0.015, 0.07, 0.12, 0.18], SexOnly::Any, false), // AF
    ("84114007", [0.0, 0.001, 0.008, 0.03, 0.06, 0.10], SexOnly::Any, false), // heart failure
    ("414545008", [0.0, 0.003, 0.04, 0.10, 0.14, 0.16], SexOnly::Any, false), // IHD
    ("22298006", [0.0, 0.001, 0.015, 0.04, 0.06, 0.07], SexOnly::Any, false), // MI
    ("230690007", [0.0, 0.002, 0.01, 0.03, 0.05, 0.08], SexOnly::Any, false), // stroke
    ("266257000", [0.0, 0.001, 0.008, 0.02, 0.03, 0.04], SexOnly::Any, false), // TIA
    ("84757009", [0.005, 0.008, 0.008, 0.008, 0.008, 0.008], SexOnly::Any, false), // epilepsy
    ("52448006", [0.0, 0.0, 0.002, 0.02, 0.07, 0.20], SexOnly::Any, false), // dementia
    ("709044004", [0.0, 0.005, 0.03, 0.10, 0.18, 0.25], SexOnly::Any, false), // CKD
    ("363346000", [0.001, 0.004, 0.02, 0.04, 0.05, 0.05], SexOnly::Any, true), // cancer
    ("254837009", [0.0, 0.002, 0.02, 0.04, 0.05, 0.05], SexOnly::Female, true), // breast
    ("399068003", [0.0, 0.0, 0.01, 0.04, 0.07, 0.08], SexOnly::Male, false), // prostate
    ("35489007", [0.02, 0.10, 0.10, 0.08, 0.07, 0.06], SexOnly::Any, true), // depression
    ("197480006", [0.03, 0.08, 0.07, 0.05, 0.04, 0.03], SexOnly::Any, true), // anxiety
    ("58214004", [0.0, 0.007, 0.007, 0.005, 0.004, 0.003], SexOnly::Any, false), // schizophrenia
    ("13746004", [0.0, 0.006, 0.006, 0.005, 0.004, 0.003], SexOnly::Any, false), // bipolar
    ("40930008", [0.001, 0.01, 0.03, 0.05, 0.06, 0.06], SexOnly::Any, false), // hypothyroidism
    ("69896004", [0.0005, 0.004, 0.01, 0.015, 0.015, 0.015], SexOnly::Any, false), // RA
    ("396275006", [0.0, 0.01, 0.10, 0.20, 0.25, 0.28], SexOnly::Any, false), // OA
    ("127040003", [0.002, 0.001, 0.0005, 0.0003, 0.0, 0.0], SexOnly::Any, false), // sickle cell
    ("86406008", [0.0005, 0.004, 0.005, 0.003, 0.001, 0.0005], SexOnly::Any, false), // HIV
    ("49049000", [0.0, 0.0, 0.002, 0.006, 0.015, 0.02], SexOnly::Any, false), // Parkinson's
    ("24700007", [0.0, 0.002, 0.003, 0.002, 0.001, 0.001], SexOnly::Any, false), // MS
    ("128053003", [0.0, 0.003, 0.008, 0.015, 0.02, 0.02], SexOnly::Any, true), // DVT
    ("59282003", [0.0, 0.001, 0.004, 0.008, 0.01, 0.01], SexOnly::Any, true), // PE
    ("248279007", [0.0, 0.0, 0.005, 0.05, 0.20, 0.45], SexOnly::Any, false), // frailty
    ("363732003", [0.0001, 0.0002, 0.0002, 0.0002, 0.0002, 0.0002], SexOnly::Any, false), // Addison's
    ("110359009", [0.008, 0.005, 0.004, 0.003, 0.002, 0.001], SexOnly::Any, false), // LD
    ("408856003", [0.015, 0.008, 0.003, 0.001, 0.0005, 0.0], SexOnly::Any, false), // autism
    ("190905008", [0.0004, 0.0003, 0.0001, 0.0, 0.0, 0.0], SexOnly::Any, false), // CF
    ("41040004", [0.001, 0.0008, 0.0005, 0.0002, 0.0, 0.0], SexOnly::Any, false), // Down's
    ("82423001", [0.002, 0.03, 0.07, 0.08, 0.09, 0.09], SexOnly::Any, false), // chronic pain
    ("15188001", [0.002, 0.003, 0.02, 0.08, 0.15, 0.30], SexOnly::Any, false), // hearing loss
    ("7200002", [0.0, 0.01, 0.012, 0.008, 0.004, 0.002], SexOnly::Any, true), // alcoholism
];

/// Conditions that can begin in childhood (onset from birth).
const CHILDHOOD_ONSET: &[&str] = &[
    "46635009",
    "195967001",
    "84757009",
    "110359009",
    "408856003",
    "190905008",
    "127040003",
    "41040004",
];

/// With probability `p`, a patient with `condition` gets one medicine chosen from `options`
/// (dm+d code, or `~` + the start of a narrative medicine's text), by weight.
struct MedRule {
    condition: &'static str,
    p: f64,
    options: &'static [(&'static str, u32)],
}

const fn rule(condition: &'static str, p: f64, options: &'static [(&'static str, u32)]) -> MedRule {
    MedRule {
        condition,
        p,
        options,
    }
}

const APIXABAN_5: &str = "42206511000001102";
const APIXABAN_2_5: &str = "42206411000001101";
const DOACS_AND_WARFARIN: &[(&str, u32)] = &[
    (APIXABAN_5, 35),
    (APIXABAN_2_5, 10),
    ("19842211000001107", 15),
    ("29903411000001101", 10),
    ("19469811000001101", 4),
    ("13532811000001109", 2),
    ("42217511000001103", 8),
    ("42217611000001104", 6),
    ("42217911000001105", 4),
    ("~Warfarin - dose as per INR", 1),
];
const STATINS: &[(&str, u32)] = &[
    ("39695411000001103", 6),
    ("320000009", 3),
    ("42297211000001100", 2),
];
const PPIS: &[(&str, u32)] = &[
    ("42354511000001109", 3),
    ("42354611000001108", 1),
    ("42353711000001101", 1),
];

#[rustfmt::skip]
const MED_RULES: &[MedRule] = &[
    rule("38341003", 0.6, &[("319283006", 20), ("~Ramipril", 1), ("~Bisoprolol", 1)]),
    rule("44054006", 0.85, &[("325278007", 1)]),
    rule("44054006", 0.2, &[("11933011000001106", 5), ("17608511000001103", 3), ("3277211000001104", 3)]),
    rule("46635009", 1.0, &[("11933011000001106", 3), ("7589411000001100", 2)]),
    rule("46635009", 0.95, &[
        ("3282211000001106", 3), ("13877811000001105", 2), ("~Insulin as per diabetes team", 1),
    ]),
    rule("195967001", 0.9, &[("39113611000001102", 1)]),
    rule("195967001", 0.4, &[("408063002", 1)]),
    rule("195967001", 0.05, &[("325427002", 1)]),
    rule("13645005", 0.8, &[("39113611000001102", 1)]),
    rule("13645005", 0.4, &[("408063002", 6), ("~Tiotropium", 1)]),
    rule("13645005", 0.1, &[("325427002", 1)]),
    rule("49436004", 0.8, DOACS_AND_WARFARIN),
    rule("49436004", 0.08, &[("~Digoxin", 1)]),
    rule("84114007", 0.8, &[("317972000", 1)]),
    rule("414545008", 0.75, &[
        ("319773006", 40), ("319781007", 15), ("319799004", 30), ("704465002", 10), ("443469008", 3),
    ]),
    rule("414545008", 0.7, STATINS),
    rule("414545008", 0.1, &[("~GTN spray", 1)]),
    rule("22298006", 0.7, &[("319773006", 3), ("704465002", 2), ("319799004", 2)]),
    rule("22298006", 0.7, STATINS),
    rule("230690007", 0.7, &[("319799004", 1)]),
    rule("230690007", 0.7, STATINS),
    rule("266257000", 0.6, &[("319799004", 1)]),
    rule("128053003", 0.4, &[(APIXABAN_5, 1), ("19842211000001107", 1)]),
    rule("59282003", 0.5, &[(APIXABAN_5, 1), ("19842211000001107", 1), ("~Enoxaparin", 1)]),
    rule("84757009", 0.35, &[("11475211000001102", 1)]),
    rule("84757009", 0.35, &[("10225811000001107", 1)]),
    rule("84757009", 0.25, &[("~Levetiracetam", 1)]),
    rule("84757009", 0.1, &[("~Buccal midazolam", 1)]),
    rule("52448006", 0.15, &[("~Donepezil", 1)]),
    rule("363346000", 0.3, &[
        ("36128311000001101", 3), ("42009811000001101", 3), ("36120011000001101", 2),
        ("3077711000001104", 1),
    ]),
    rule("363346000", 0.1, &[("~Capecitabine", 1)]),
    rule("35489007", 0.06, &[("~Sertraline", 1)]),
    rule("58214004", 0.2, &[("~Clozapine", 1)]),
    rule("13746004", 0.6, &[("766311000001100", 2), ("13177001000001108", 1), ("~Lithium - dose", 1)]),
    rule("40930008", 0.8, &[("374296008", 12), ("~Levothyroxine", 1)]),
    rule("69896004", 0.45, &[("326874007", 6), ("~Methotrexate 15mg", 1)]),
    rule("69896004", 0.15, &[("325443009", 1)]),
    rule("69896004", 0.05, &[("~Azathioprine", 1)]),
    rule("396275006", 0.4, &[("322236009", 4), ("42009811000001101", 2), ("42010411000001105", 1)]),
    rule("396275006", 0.05, &[("9567411000001100", 1)]),
    rule("82423001", 0.5, &[
        ("42009811000001101", 6), ("3077711000001104", 2), ("9567411000001100", 2),
        ("23657811000001102", 1), ("14985811000001101", 1), ("36126511000001106", 1),
    ]),
    rule("127040003", 0.3, &[("36128311000001101", 2), ("~Oramorph", 1)]),
    rule("363732003", 0.9, &[("~Hydrocortisone 10mg", 1)]),
];

/// Age-based prescribing not tied to one condition: (min age, probability, options).
/// (minimum age, probability, options) — see [`MedRule`].
type AgeRule = (i64, f64, &'static [(&'static str, u32)]);

#[rustfmt::skip]
const AGE_RULES: &[AgeRule] = &[
    (45, 0.12, STATINS),
    (65, 0.35, STATINS),
    (18, 0.06, &[("322236009", 1)]),
    (65, 0.20, &[("322236009", 1)]),
    (75, 0.20, &[("322236009", 1)]),
    (65, 0.12, PPIS),
    (75, 0.15, PPIS),
    (65, 0.08, &[("319773006", 1)]),
    (60, 0.10, &[("319283006", 1)]),
    (70, 0.10, &[("317972000", 1)]),
    (75, 0.08, &[("374296008", 1)]),
    (75, 0.08, &[("42009811000001101", 2), ("42010411000001105", 1)]),
    (0, 0.025, &[("323509004", 1)]),
    (18, 0.001, &[("~Tacrolimus", 1)]),
    (5, 0.004, &[("~EpiPen", 1)]),
];

/// Allergies as sources send them in free text: (text, category, high criticality).
const NARRATIVE_ALLERGIES: &[(&str, Option<AllergenCategory>, bool)] = &[
    (
        "Allergic to Elastoplast - blisters",
        Some(AllergenCategory::Environment),
        false,
    ),
    (
        "Penicillin? rash as a child - mother unsure",
        Some(AllergenCategory::Medication),
        false,
    ),
    (
        "Reaction to iodinated contrast 2016 - flushing and breathlessness",
        Some(AllergenCategory::Medication),
        true,
    ),
    (
        "Statins - muscle pains (intolerance)",
        Some(AllergenCategory::Medication),
        false,
    ),
    (
        "NSAIDs make asthma worse",
        Some(AllergenCategory::Medication),
        false,
    ),
    (
        "Nickel - contact dermatitis",
        Some(AllergenCategory::Environment),
        false,
    ),
    (
        "Kiwi fruit - mouth and lip swelling",
        Some(AllergenCategory::Food),
        true,
    ),
    (
        "Chlorhexidine - anaphylaxis in theatre 2019",
        Some(AllergenCategory::Medication),
        true,
    ),
    ("Hair dye (PPD) - facial swelling", None, true),
    (
        "Bee and wasp stings - carries EpiPen",
        Some(AllergenCategory::Environment),
        true,
    ),
];

/// Weighted medicine choices.
type Options = Vec<(MedRef, u32)>;

/// Everything resolved against `edge_proto::codes` once.
#[derive(Debug)]
struct Rules {
    conditions: Vec<CondRule>,
    /// (index into `conditions`, probability, options)
    med_rules: Vec<(usize, f64, Options)>,
    /// (minimum age, probability, options)
    age_rules: Vec<(i64, f64, Options)>,
    allergens: &'static [Allergen],
    reactions: &'static [Reaction],
}

#[derive(Debug)]
struct CondRule {
    cond: &'static codes::Condition,
    prev: [f64; 6],
    sex: SexOnly,
    resolvable: bool,
    childhood: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MedRef {
    Coded(&'static Medicine),
    Narrative(&'static NarrativeMedicine),
}

impl MedRef {
    fn high_risk(self) -> Option<HighRiskClass> {
        match self {
            MedRef::Coded(m) => m.high_risk,
            MedRef::Narrative(n) => n.high_risk,
        }
    }
}

/// Medicines a patient takes only one of at a time.
fn exclusive_group(med: MedRef) -> Option<&'static str> {
    let code = match med {
        MedRef::Coded(m) => m.code,
        MedRef::Narrative(_) => "",
    };
    if med.high_risk() == Some(HighRiskClass::Anticoagulant) {
        Some("anticoagulant")
    } else if STATINS.iter().any(|s| s.0 == code) {
        Some("statin")
    } else if PPIS.iter().any(|s| s.0 == code) {
        Some("ppi")
    } else {
        None
    }
}

fn resolve_med(key: &str) -> Option<MedRef> {
    match key.strip_prefix('~') {
        Some(prefix) => codes::NARRATIVE_MEDICINES
            .iter()
            .find(|n| n.text.starts_with(prefix))
            .map(MedRef::Narrative),
        None => codes::medicine(key)
            .filter(|m| m.code == key)
            .map(MedRef::Coded),
    }
}

fn resolve_options(options: &[(&str, u32)]) -> Vec<(MedRef, u32)> {
    options
        .iter()
        .filter_map(|(k, w)| resolve_med(k).map(|m| (m, *w)))
        .collect()
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let conditions: Vec<CondRule> = PREVALENCE
            .iter()
            .filter_map(|(code, prev, sex, resolvable)| {
                codes::condition_by_code(code).map(|cond| CondRule {
                    cond,
                    prev: *prev,
                    sex: *sex,
                    resolvable: *resolvable,
                    childhood: CHILDHOOD_ONSET.contains(code),
                })
            })
            .collect();
        let med_rules = MED_RULES
            .iter()
            .filter_map(|r| {
                let i = conditions.iter().position(|c| c.cond.code == r.condition)?;
                Some((i, r.p, resolve_options(r.options)))
            })
            .collect();
        let age_rules = AGE_RULES
            .iter()
            .map(|(age, p, o)| (*age, *p, resolve_options(o)))
            .collect();
        Rules {
            conditions,
            med_rules,
            age_rules,
            allergens: codes::ALLERGENS,
            reactions: codes::REACTIONS,
        }
    })
}

// ---------------------------------------------------------------------------------------------
// One patient
// ---------------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gender {
    Female,
    Male,
    Other,
    Unknown,
}

impl Gender {
    fn fhir(self) -> &'static str {
        match self {
            Gender::Female => "female",
            Gender::Male => "male",
            Gender::Other => "other",
            Gender::Unknown => "unknown",
        }
    }
}

#[derive(Debug)]
enum ItemKind {
    Allergy {
        what: AllergyWhat,
        reaction: Option<&'static Reaction>,
        severe: bool,
        criticality: Option<&'static str>,
        verification: &'static str,
        status: &'static str,
        intolerance: bool,
        onset_day: i64,
    },
    NoKnown(NoKnown),
    Medication {
        med: MedRef,
        status: &'static str,
        start_day: i64,
        end_day: Option<i64>,
        last_issue_day: Option<i64>,
    },
    Condition {
        rule: usize,
        status: &'static str,
        verification: &'static str,
        onset_day: i64,
    },
    Consent {
        decision: &'static codes::ResuscitationCode,
        day: i64,
        review_day: Option<i64>,
        performer: String,
        status: &'static str,
    },
    CarePlan {
        kind: &'static codes::Coded,
        day: i64,
        description: String,
    },
    Flag {
        flag: &'static AlertFlag,
        start_day: i64,
        end_day: Option<i64>,
    },
}

#[derive(Debug)]
enum AllergyWhat {
    Coded(&'static Allergen),
    Narrative(&'static str, Option<AllergenCategory>),
}

#[derive(Debug)]
struct Item {
    kind: ItemKind,
    /// Index into the patient's organisations.
    src: usize,
    last_updated: i64,
    uuid: Uuid,
}

impl Item {
    fn resource_slot(&self) -> usize {
        match self.kind {
            ItemKind::Allergy { .. } => 1,
            ItemKind::NoKnown(n) => match n {
                NoKnown::Medications => 2,
                NoKnown::Problems => 3,
                _ => 1,
            },
            ItemKind::Medication { .. } => 2,
            ItemKind::Condition { .. } => 3,
            ItemKind::Consent { .. } => 4,
            ItemKind::CarePlan { .. } => 5,
            ItemKind::Flag { .. } => 6,
        }
    }
    /// Only the care-plan custodian may hold care plans and resuscitation decisions.
    fn custodial(&self) -> bool {
        matches!(
            self.kind,
            ItemKind::Consent { .. } | ItemKind::CarePlan { .. }
        )
    }
}

struct PatientGen<'g> {
    g: &'g Generator,
    index: u64,
    rng: Rng,
    ordinal: u64,
    age: i64,
    birth_day: i64,
    gender: Gender,
    conditions: Vec<usize>,
    items: Vec<Item>,
    orgs: Vec<Org>,
    has_ucp: bool,
    patient_updated: i64,
}

impl<'g> PatientGen<'g> {
    fn new(g: &'g Generator, index: u64) -> PatientGen<'g> {
        PatientGen {
            g,
            index,
            rng: Rng::new(g.cfg.seed, index),
            ordinal: 0,
            age: 0,
            birth_day: 0,
            gender: Gender::Unknown,
            conditions: Vec::new(),
            items: Vec::new(),
            orgs: Vec::new(),
            has_ucp: false,
            patient_updated: 0,
        }
    }

    fn as_of(&self) -> i64 {
        self.g.cfg.as_of_day
    }

    fn next_uuid(&mut self) -> Uuid {
        self.ordinal += 1;
        Uuid::derive(self.g.cfg.seed, self.index, self.ordinal)
    }

    /// A time on `day` during working hours.
    fn time_on(&mut self, day: i64) -> i64 {
        day * 86_400 + self.rng.range(8 * 3600, 18 * 3600 + 59 * 60)
    }

    /// A last-updated time on or after `day` and not after the as-of day.
    fn updated_after(&mut self, day: i64) -> i64 {
        let as_of = self.as_of();
        let from = day.clamp(as_of - 3650, as_of);
        let d = if self.rng.chance(0.6) {
            self.rng.range(from.max(as_of - 730), as_of - 1)
        } else {
            self.rng.range(from, as_of - 1)
        };
        self.time_on(d.min(as_of - 1))
    }

    fn push(&mut self, kind: ItemKind, since_day: i64) {
        let last_updated = self.updated_after(since_day);
        let uuid = self.next_uuid();
        self.items.push(Item {
            kind,
            src: 0,
            last_updated,
            uuid,
        });
    }

    /// A day between `from` and the as-of day (exclusive), biased to recent years.
    fn day_since(&mut self, from: i64) -> i64 {
        let as_of = self.as_of();
        let from = from.min(as_of - 1);
        self.rng.range(from, as_of - 1)
    }

    fn generate(&mut self) {
        self.demographics_only();
        self.conditions();
        self.medications();
        self.allergies();
        self.advance_care();
        self.flags();
        self.sources();
    }

    fn demographics_only(&mut self) {
        const AGE_BANDS: [(i64, i64, u32); 8] = [
            (0, 4, 60),
            (5, 17, 140),
            (18, 29, 170),
            (30, 44, 240),
            (45, 64, 230),
            (65, 74, 80),
            (75, 84, 55),
            (85, 100, 25),
        ];
        let b = self.rng.weighted(AGE_BANDS.iter().map(|b| b.2));
        let (lo, hi, _) = AGE_BANDS[b];
        self.age = self.rng.range(lo, hi);
        let as_of = self.as_of();
        // born between age+1 years and age years before the as-of day
        self.birth_day = as_of - self.age * 36525 / 100 - self.rng.range(1, 364);
        self.patient_updated = self.updated_after(as_of - 1460);
        self.gender = match self.rng.below(1000) {
            0..=504 => Gender::Female,
            505..=996 => Gender::Male,
            997..=998 => Gender::Other,
            _ => Gender::Unknown,
        };
    }

    fn conditions(&mut self) {
        let rules = self.g.rules;
        let b = band(self.age);
        for (i, r) in rules.conditions.iter().enumerate() {
            let allowed = match r.sex {
                SexOnly::Any => true,
                SexOnly::Female => self.gender == Gender::Female,
                SexOnly::Male => self.gender == Gender::Male,
            };
            if allowed && self.rng.chance(r.prev[b]) {
                self.conditions.push(i);
            }
        }
        for &i in &self.conditions.clone() {
            let r = &rules.conditions[i];
            let min_age = if r.childhood {
                0
            } else {
                18.max(self.age - 30)
            };
            let earliest = self.birth_day + min_age * 365;
            let onset_day = self.day_since(earliest.max(self.birth_day + 30));
            let status = if r.resolvable && self.rng.chance(0.35) {
                if r.cond.code == "363346000" || r.cond.code == "254837009" {
                    "remission"
                } else {
                    "resolved"
                }
            } else {
                "active"
            };
            let verification = if self.rng.chance(0.03) {
                "provisional"
            } else {
                "confirmed"
            };
            self.push(
                ItemKind::Condition {
                    rule: i,
                    status,
                    verification,
                    onset_day,
                },
                onset_day,
            );
        }
        if self.conditions.is_empty() && self.rng.chance(0.3) {
            let day = self.day_since(self.birth_day.max(self.as_of() - 3650));
            self.push(ItemKind::NoKnown(NoKnown::Problems), day);
        }
    }

    fn has(&self, code: &str) -> bool {
        self.conditions
            .iter()
            .any(|&i| self.g.rules.conditions[i].cond.code == code)
    }

    fn meds(&self) -> impl Iterator<Item = MedRef> + '_ {
        self.items.iter().filter_map(|it| match it.kind {
            ItemKind::Medication { med, .. } => Some(med),
            _ => None,
        })
    }

    fn add_med(&mut self, med: MedRef, since_day: i64) {
        if self.meds().any(|m| m == med) {
            return;
        }
        // one anticoagulant, one statin, one proton-pump inhibitor
        if let Some(g) = exclusive_group(med) {
            if self.meds().any(|m| exclusive_group(m) == Some(g)) {
                return;
            }
        }
        let as_of = self.as_of();
        let adult = self.birth_day + 16 * 365;
        let start_day = self.day_since(
            since_day
                .max(self.birth_day + 30)
                .max(adult.min(as_of - 400)),
        );
        let acute = matches!(med, MedRef::Coded(m) if m.code == "323509004")
            || (matches!(med, MedRef::Coded(m) if m.code == "325427002") && self.rng.chance(0.7));
        let (status, end_day, last_issue_day) = if acute {
            let start = start_day.min(as_of - 10);
            ("completed", Some(start + 5), None)
        } else if self.rng.chance(0.07) {
            let end = self.rng.range(start_day, as_of - 1);
            ("stopped", Some(end), Some(self.rng.range(start_day, end)))
        } else if self.rng.chance(0.01) {
            (
                "on-hold",
                None,
                Some(self.rng.range(start_day.max(as_of - 120), as_of - 1)),
            )
        } else {
            (
                "active",
                None,
                Some(self.rng.range(start_day.max(as_of - 56), as_of - 1)),
            )
        };
        let since = end_day
            .unwrap_or(start_day)
            .max(last_issue_day.unwrap_or(start_day));
        self.push(
            ItemKind::Medication {
                med,
                status,
                start_day,
                end_day,
                last_issue_day,
            },
            since,
        );
    }

    fn pick_med(&mut self, options: &[(MedRef, u32)]) -> Option<MedRef> {
        if options.is_empty() {
            return None;
        }
        let i = self.rng.weighted(options.iter().map(|o| o.1));
        Some(options[i].0)
    }

    fn medications(&mut self) {
        let rules = self.g.rules;
        for (cond, p, options) in &rules.med_rules {
            if !self.conditions.contains(cond) || !self.rng.chance(*p) {
                continue;
            }
            let Some(mut med) = self.pick_med(options) else {
                continue;
            };
            // the reduced apixaban dose is for the very old
            if matches!(med, MedRef::Coded(m) if m.code == APIXABAN_2_5) && self.age < 80 {
                if let Some(full) = resolve_med(APIXABAN_5) {
                    med = full;
                }
            }
            let onset = self
                .items
                .iter()
                .find_map(|it| match it.kind {
                    ItemKind::Condition {
                        rule, onset_day, ..
                    } if rule == *cond => Some(onset_day),
                    _ => None,
                })
                .unwrap_or(self.birth_day);
            self.add_med(med, onset);
        }
        for (min_age, p, options) in &rules.age_rules {
            if self.age >= *min_age && self.rng.chance(*p) {
                if let Some(med) = self.pick_med(options) {
                    let since = self.birth_day + min_age * 365;
                    self.add_med(med, since);
                }
            }
        }
        // gastro-protection with antithrombotics or steroids in later life
        let protect = self.meds().any(|m| {
            matches!(
                m.high_risk(),
                Some(
                    HighRiskClass::Anticoagulant
                        | HighRiskClass::Antiplatelet
                        | HighRiskClass::Steroid
                )
            )
        });
        if protect && self.age >= 60 && self.rng.chance(0.4) {
            if let Some(ppi) = resolve_med("42354511000001109") {
                self.add_med(ppi, self.as_of() - 3650);
            }
        }
        let any = self.meds().next().is_some();
        if any && self.rng.chance(0.02) {
            let n = self.rng.pick(codes::NARRATIVE_MEDICINES);
            self.add_med(MedRef::Narrative(n), self.as_of() - 1825);
        }
        if !any && self.rng.chance(0.25) {
            let day = self.day_since(self.as_of() - 1095);
            self.push(ItemKind::NoKnown(NoKnown::Medications), day);
        }
    }

    fn allergies(&mut self) {
        let r = self.rng.below(1000);
        if r < 100 {
            return; // no allergy information at all
        }
        let since = (self.birth_day + 180).max(self.as_of() - 7300);
        if r < 280 {
            let day = self.day_since(since);
            self.push(ItemKind::NoKnown(NoKnown::Allergy), day);
            return;
        }
        if r < 300 {
            let day = self.day_since(since);
            self.push(ItemKind::NoKnown(NoKnown::DrugAllergy), day);
            return;
        }
        let n = match self.rng.below(100) {
            0..=64 => 1,
            65..=89 => 2,
            90..=96 => 3,
            _ => 4,
        };
        let child = self.age < 16;
        let allergens = self.g.rules.allergens;
        let mut chosen: Vec<&'static Allergen> = Vec::with_capacity(n);
        for _ in 0..n {
            let onset_day = self.day_since(since);
            if self.rng.chance(0.03) {
                let (text, cat, high) = *self.rng.pick(NARRATIVE_ALLERGIES);
                let kind = ItemKind::Allergy {
                    what: AllergyWhat::Narrative(text, cat),
                    reaction: None,
                    severe: high,
                    criticality: high.then_some("high"),
                    verification: "unconfirmed",
                    status: "active",
                    intolerance: false,
                    onset_day,
                };
                self.push(kind, onset_day);
                continue;
            }
            let weights = allergens.iter().map(|a| {
                let w = u32::from(a.weight);
                match (child, a.category) {
                    (true, AllergenCategory::Food) => w * 4,
                    (true, AllergenCategory::Medication) => w / 3 + 1,
                    _ => w,
                }
            });
            let a = &allergens[self.rng.weighted(weights)];
            if chosen.iter().any(|c| c.code == a.code) {
                continue;
            }
            chosen.push(a);
            self.coded_allergy(a, onset_day);
        }
    }

    fn coded_allergy(&mut self, a: &'static Allergen, onset_day: i64) {
        let reactions = self.g.rules.reactions;
        let find = |code: &str| reactions.iter().find(|r| r.code == code);
        let p_severe = match a.category {
            AllergenCategory::Medication => 0.08,
            AllergenCategory::Food => 0.25,
            AllergenCategory::Environment => 0.2,
        };
        let severe = a.anaphylactic && self.rng.chance(p_severe);
        let intolerance = !severe
            && (matches!(a.code, "387494007" | "373529000" | "387207008") || self.rng.chance(0.08));
        let reaction = if severe {
            if self.rng.chance(0.75) {
                find("39579001")
            } else {
                find("41291007")
            }
        } else if self.rng.chance(0.1) {
            None // reaction not recorded
        } else {
            let pool: &[&str] = match (a.category, intolerance) {
                (_, true) => &["422587007", "422400008", "62315008", "21522001"],
                (AllergenCategory::Medication, false) => &[
                    "247472004",
                    "271807003",
                    "418290006",
                    "126485001",
                    "267036007",
                ],
                (AllergenCategory::Food, false) => {
                    &["126485001", "422400008", "21522001", "418290006"]
                }
                (AllergenCategory::Environment, false) => {
                    &["70076002", "9826008", "56018004", "418290006", "126485001"]
                }
            };
            find(self.rng.pick_str(pool))
        };
        let criticality = if severe {
            Some("high")
        } else {
            match self.rng.below(10) {
                0..=6 => Some("low"),
                7 => Some("unable-to-assess"),
                _ => None,
            }
        };
        let verification = if self.rng.chance(0.2) {
            "unconfirmed"
        } else {
            "confirmed"
        };
        let status = if self.rng.chance(0.04) {
            "inactive"
        } else {
            "active"
        };
        let kind = ItemKind::Allergy {
            what: AllergyWhat::Coded(a),
            reaction,
            severe,
            criticality,
            verification,
            status,
            intolerance,
            onset_day,
        };
        self.push(kind, onset_day);
    }

    fn advance_care(&mut self) {
        let b = band(self.age);
        let mut p: f64 = [0.001, 0.004, 0.004, 0.03, 0.07, 0.15][b];
        let serious = ["52448006", "248279007", "363346000", "84114007"]
            .iter()
            .any(|c| self.has(c));
        if serious {
            p = (p * 1.8).min(0.5);
        }
        let as_of = self.as_of();
        let mut resus: Option<bool> = None;
        if self.rng.chance(p) {
            let i = match self.rng.below(100) {
                0..=69 => 0,
                70..=84 => 1,
                _ => 2,
            };
            let decision = &codes::RESUSCITATION_CODES[i.min(codes::RESUSCITATION_CODES.len() - 1)];
            let day = self.day_since(as_of - 1460);
            let review_day = if self.rng.chance(0.6) {
                Some(day + if self.rng.chance(0.5) { 182 } else { 365 })
            } else {
                None
            };
            let performer = format!(
                "Dr {} ({})",
                self.rng.pick(CLINICIAN_FAMILY),
                self.rng.pick(CLINICIAN_ROLE)
            );
            let status = if self.rng.chance(0.03) {
                "inactive"
            } else {
                "active"
            };
            resus = Some(decision.attempt_cpr);
            self.push(
                ItemKind::Consent {
                    decision,
                    day,
                    review_day,
                    performer,
                    status,
                },
                day,
            );
        }
        let types = codes::CARE_PLAN_TYPES;
        let by = |code: &str| types.iter().find(|t| t.code == code);
        let mut plans: Vec<&'static codes::Coded> = Vec::new();
        if resus.is_some() {
            if self.rng.chance(0.7) {
                plans.extend(by("1382601000000107"));
            }
            let eol = serious || self.age >= 85;
            if eol && self.rng.chance(0.3) {
                plans.extend(by("736373009"));
            }
            if self.rng.chance(0.1) {
                plans.extend(by("861421000000109"));
            }
        }
        if (self.has("58214004") || self.has("13746004")) && self.rng.chance(0.3) {
            plans.extend(by("736253002"));
        }
        if (self.has("84757009") || self.has("127040003") || self.has("46635009"))
            && self.rng.chance(0.12)
        {
            plans.extend(by("887701000000100"));
        }
        if self.age >= 65 && self.rng.chance(0.01) {
            plans.extend(by("736366004"));
        }
        if self.rng.chance(0.002) {
            plans.extend(by("735324008"));
        }
        if self.rng.chance(0.001) {
            plans.extend(by("325691000000100"));
        }
        for kind in plans {
            let day = self.day_since(as_of - 1095);
            let description = self.care_plan_text(kind.code, resus);
            self.push(
                ItemKind::CarePlan {
                    kind,
                    day,
                    description,
                },
                day,
            );
        }
    }

    fn care_plan_text(&mut self, code: &str, resus: Option<bool>) -> String {
        let cpr = match resus {
            Some(false) => "DNACPR in place. ",
            Some(true) => "For CPR. ",
            None => "",
        };
        match code {
            "736253002" => format!(
                "Crisis plan: {}. Known triggers: {}. Preferred place of assessment: {}.",
                self.rng.pick(&[
                    "contact home treatment team 24/7",
                    "call care coordinator first",
                    "crisis line then GP"
                ]),
                self.rng.pick(&[
                    "stopping medication",
                    "housing stress",
                    "anniversaries",
                    "substance use"
                ]),
                self.rng.pick(&[
                    "home",
                    "Section 136 suite only if police involved",
                    "crisis house"
                ]),
            ),
            "887701000000100" => format!(
                "Emergency plan: {}",
                self.rng.pick(&[
                    "seizure over 5 minutes - give buccal midazolam, call 999",
                    "sickle crisis - analgesia per individual pain plan, direct to haematology",
                    "hypoglycaemia - glucose gel then recheck, family trained in glucagon",
                ]),
            ),
            _ => {
                let place = self.rng.pick(&["home", "care home", "hospice", "hospital"]);
                let ceiling = self.rng.pick(&[
                    "full active treatment",
                    "ward-based care, not for ICU",
                    "symptom control and comfort only",
                    "treat reversible causes at home where possible",
                ]);
                format!("{cpr}Preferred place of care: {place}. Ceiling of treatment: {ceiling}.")
            }
        }
    }

    fn flags(&mut self) {
        let as_of = self.as_of();
        let mut chosen: Vec<&'static AlertFlag> = Vec::new();
        let by = |text: &str| codes::ALERT_FLAGS.iter().find(|f| f.text.starts_with(text));
        let deaf = self.has("15188001") && self.rng.chance(0.15);
        if deaf {
            chosen.extend(by("Deaf"));
        }
        if self.has("110359009") && self.rng.chance(0.5) {
            chosen.extend(by("Learning disability"));
        }
        if self.has("408856003") && self.rng.chance(0.3) {
            chosen.extend(by("Autism"));
        }
        if self.has("363732003") && self.rng.chance(0.8) {
            chosen.extend(by("Steroid dependent"));
        }
        if self.has("127040003") && self.rng.chance(0.5) {
            chosen.extend(by("Sickle cell"));
        }
        if self.rng.chance(0.015) {
            let interpreters: Vec<&'static AlertFlag> = codes::ALERT_FLAGS
                .iter()
                .filter(|f| f.text.starts_with("Requires interpreter"))
                .collect();
            if !interpreters.is_empty() {
                chosen.push(interpreters[self.rng.below(interpreters.len() as u64) as usize]);
            }
        }
        for (kind, p) in [
            (AlertKind::Safeguarding, 0.008),
            (AlertKind::RiskToCrew, 0.008),
            (AlertKind::Clinical, 0.003),
        ] {
            if self.rng.chance(p) {
                let pool: Vec<&'static AlertFlag> = codes::ALERT_FLAGS
                    .iter()
                    .filter(|f| f.kind == kind)
                    .filter(|f| self.age < 18 || !f.text.starts_with("Child"))
                    .filter(|f| !f.text.starts_with("Steroid") && !f.text.starts_with("Sickle"))
                    .collect();
                if !pool.is_empty() {
                    chosen.push(pool[self.rng.below(pool.len() as u64) as usize]);
                }
            }
        }
        chosen.dedup_by(|a, b| a.text == b.text);
        for flag in chosen {
            let start_day = self.day_since(as_of - 1825);
            let end_day = (flag.kind == AlertKind::Safeguarding && self.rng.chance(0.5))
                .then(|| as_of + self.rng.range(30, 365));
            self.push(
                ItemKind::Flag {
                    flag,
                    start_day,
                    end_day,
                },
                start_day,
            );
        }
    }

    /// Choose the patient's source organisations and spread the items over them.
    fn sources(&mut self) {
        let k = self.g.cfg.sources;
        let custodial = self.items.iter().any(Item::custodial);
        // organisation 0 is the GP practice, chosen with the address in write_patient; here
        // only the others are chosen
        let district = self.home_district();
        let region = DISTRICTS
            .iter()
            .find(|d| d.0 == district)
            .map_or(Region::Central, |d| d.1);
        let mut others: Vec<Org> = Vec::new();
        if k >= 2 && custodial {
            others.push(UCP);
            self.has_ucp = true;
        }
        let local: Vec<&Org> = ACUTE
            .iter()
            .filter(|(_, rs)| rs.contains(&region))
            .map(|(o, _)| o)
            .collect();
        if !local.is_empty() && others.len() + 1 < k {
            others.push(*local[self.rng.below(local.len() as u64) as usize]);
        }
        while others.len() + 1 < k {
            let mh = self.rng.chance(0.2);
            let org = if mh {
                *self.rng.pick(MENTAL_HEALTH)
            } else {
                self.rng.pick(ACUTE).0
            };
            if !others.iter().any(|o| o.ods == org.ods) {
                others.push(org);
            }
        }
        let gp = self.practice().org;
        self.orgs = std::iter::once(gp).chain(others).collect();
        let n_orgs = self.orgs.len();
        let ucp = self.has_ucp.then_some(1usize);
        let general: Vec<usize> = (0..n_orgs).filter(|&i| Some(i) != ucp).collect();
        for it in &mut self.items {
            it.src = if it.custodial() {
                ucp.unwrap_or(0)
            } else if general.len() <= 1 || self.rng.chance(0.55) {
                0
            } else {
                general[1 + self.rng.below(general.len() as u64 - 1) as usize]
            };
        }
        // every source holds at least one item when there are enough to go round
        for org in 0..n_orgs {
            if Some(org) == ucp || self.items.iter().any(|it| it.src == org) {
                continue;
            }
            let mut counts = vec![0usize; n_orgs];
            for it in &self.items {
                counts[it.src] += 1;
            }
            let donor = (0..n_orgs)
                .filter(|&o| Some(o) != ucp)
                .max_by_key(|&o| counts[o]);
            if let Some(donor) = donor.filter(|&d| counts[d] >= 2) {
                if let Some(it) = self
                    .items
                    .iter_mut()
                    .rev()
                    .find(|it| it.src == donor && !it.custodial())
                {
                    it.src = org;
                }
            }
        }
    }

    /// The practice and home district are a pure function of the patient (so the address and
    /// the source list agree); drawn from a separate stream so they never shift other choices.
    fn practice(&self) -> &'static Practice {
        let mut r = Rng::new(self.g.cfg.seed ^ 0x7072_6163, self.index);
        &PRACTICES[r.below(PRACTICES.len() as u64) as usize]
    }

    fn home_district(&self) -> &'static str {
        let mut r = Rng::new(self.g.cfg.seed ^ 0x6469_7374, self.index);
        let p = self.practice();
        if r.chance(0.9) {
            r.pick_str(p.districts)
        } else {
            r.pick(DISTRICTS).0
        }
    }

    // -----------------------------------------------------------------------------------------
    // JSON
    // -----------------------------------------------------------------------------------------

    fn write(&self, out: &mut String) -> Stats {
        let mut stats = Stats {
            patients: 1,
            ..Stats::default()
        };
        let seed = self.g.cfg.seed;
        let bundle_id = Uuid::derive(seed, self.index, u64::MAX);
        let patient_id = Uuid::derive(seed, self.index, 0);
        out.push_str("{\"resourceType\":\"Bundle\",\"id\":\"");
        bundle_id.push(out);
        out.push_str("\",\"meta\":{\"lastUpdated\":\"");
        push_instant(out, self.g.as_of_secs);
        out.push_str("\"},\"identifier\":{\"system\":\"urn:ietf:rfc:3986\",\"value\":\"urn:uuid:");
        bundle_id.push(out);
        out.push_str("\"},\"type\":\"collection\",\"timestamp\":\"");
        push_instant(out, self.g.as_of_secs);
        out.push_str("\",\"entry\":[");
        self.write_patient(out, patient_id);
        stats.resources[0] += 1;
        // items in section order
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by_key(|&i| self.items[i].resource_slot());
        for &i in &order {
            out.push(',');
            self.write_item(out, &self.items[i], patient_id);
            stats.resources[self.items[i].resource_slot()] += 1;
        }
        for (o, org) in self.orgs.iter().enumerate() {
            let targets: Vec<&Item> = order
                .iter()
                .map(|&i| &self.items[i])
                .filter(|it| it.src == o)
                .collect();
            if targets.is_empty() {
                continue;
            }
            out.push(',');
            let id = Uuid::derive(seed, self.index, 1_000_000 + o as u64);
            let recorded = self.g.as_of_secs - 3600 * (1 + o as i64);
            write_provenance(out, id, org, &targets, recorded);
            stats.resources[7] += 1;
        }
        out.push_str("]}\n");
        stats
    }

    fn write_patient(&self, out: &mut String, id: Uuid) {
        // names and address have their own stream, so the same seed gives the same people
        // whatever --sources says
        let mut r = Rng::new(self.g.cfg.seed ^ 0x6e61_6d65_7321, self.index);
        let nhs = self.g.nhs_number(self.index);
        let practice = self.practice();
        let district = self.home_district();
        // names: a pool, sometimes mixed
        let pool = &POOLS[r.weighted(POOLS.iter().map(|p| p.weight))];
        let family_pool = if r.chance(0.1) {
            &POOLS[r.weighted(POOLS.iter().map(|p| p.weight))]
        } else {
            pool
        };
        let family = *r.pick(family_pool.family);
        let born_before_1970 = self.birth_day < 0;
        let given_pool: &[&str] = match (self.gender, born_before_1970 && pool.weight == 40) {
            (Gender::Female, true) => BRITISH_FEMALE_OLD,
            (Gender::Male, true) => BRITISH_MALE_OLD,
            (Gender::Female, false) => pool.female,
            (Gender::Male, false) => pool.male,
            _ => {
                if r.chance(0.5) {
                    pool.female
                } else {
                    pool.male
                }
            }
        };
        let given = *r.pick(given_pool);
        let middle = r
            .chance(0.3)
            .then(|| *r.pick(given_pool))
            .filter(|m| *m != given);
        let nickname = NICKNAMES
            .iter()
            .find(|(f, _)| *f == given)
            .map(|(_, n)| *n)
            .filter(|_| r.chance(0.35));
        let prefix = if self.age < 16 {
            None
        } else {
            match self.gender {
                Gender::Male => Some("Mr"),
                Gender::Female => Some(*r.pick(&["Mrs", "Ms", "Miss", "Ms"])),
                _ => r.chance(0.5).then_some("Mx"),
            }
        };
        let prefix = if r.chance(0.03) && self.age > 30 {
            Some("Dr")
        } else {
            prefix
        };
        let last_updated = self.patient_updated;
        out.push_str("{\"fullUrl\":\"urn:uuid:");
        id.push(out);
        out.push_str("\",\"resource\":{\"resourceType\":\"Patient\",\"id\":\"");
        id.push(out);
        out.push_str("\",");
        write_meta(out, last_updated, practice.org.system);
        out.push_str(
            ",\"identifier\":[{\"extension\":[{\"url\":\"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus\",\"valueCodeableConcept\":{\"coding\":[{\"system\":\"https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland\",\"code\":\"01\",\"display\":\"Number present and verified\"}]}}],\"system\":\"https://fhir.nhs.uk/Id/nhs-number\",\"value\":\"",
        );
        let _ = write!(out, "{nhs:010}");
        out.push_str("\"}],\"name\":[{\"use\":\"official\",");
        kv(out, "family", family);
        out.push_str(",\"given\":[\"");
        esc(out, given);
        if let Some(m) = middle {
            out.push_str("\",\"");
            esc(out, m);
        }
        out.push_str("\"]");
        if let Some(p) = prefix {
            out.push_str(",\"prefix\":[\"");
            out.push_str(p);
            out.push_str("\"]");
        }
        out.push('}');
        if let Some(n) = nickname {
            out.push_str(",{\"use\":\"usual\",");
            kv(out, "family", family);
            out.push_str(",\"given\":[\"");
            esc(out, n);
            out.push_str("\"]}");
        }
        out.push_str("],");
        kv(out, "gender", self.gender.fhir());
        out.push_str(",\"birthDate\":\"");
        push_date(out, self.birth_day);
        out.push_str("\",\"address\":[{\"use\":\"home\",\"line\":[");
        if r.chance(0.3) {
            let _ = write!(out, "\"Flat {}, ", r.range(1, 60));
            esc(out, r.pick_str(BLOCKS));
            out.push_str("\",");
        }
        let _ = write!(out, "\"{} ", r.range(1, 240));
        esc(out, r.pick_str(STREETS));
        out.push_str("\"],\"city\":\"London\",\"postalCode\":\"");
        out.push_str(district);
        out.push(' ');
        out.push(char::from(b'0' + r.below(10) as u8));
        for _ in 0..2 {
            out.push(char::from(*r.pick(UNIT_LETTERS)));
        }
        out.push_str(
            "\",\"country\":\"GB\"}],\"generalPractitioner\":[{\"type\":\"Organization\",",
        );
        let gp_ref = &mut String::new();
        ods_ref(gp_ref, &practice.org);
        out.push_str(&gp_ref[1..]);
        out.push_str("]}}");
    }

    fn write_item(&self, out: &mut String, it: &Item, patient: Uuid) {
        let org = &self.orgs[it.src.min(self.orgs.len().saturating_sub(1))];
        out.push_str("{\"fullUrl\":\"urn:uuid:");
        it.uuid.push(out);
        out.push_str("\",\"resource\":{\"resourceType\":\"");
        out.push_str(RESOURCE_TYPES[it.resource_slot()]);
        out.push_str("\",\"id\":\"");
        it.uuid.push(out);
        out.push_str("\",");
        write_meta(out, it.last_updated, org.system);
        out.push(',');
        match &it.kind {
            ItemKind::Allergy {
                what,
                reaction,
                severe,
                criticality,
                verification,
                status,
                intolerance,
                onset_day,
            } => {
                allergy_status(out, status, verification);
                out.push_str(if *intolerance {
                    ",\"type\":\"intolerance\""
                } else {
                    ",\"type\":\"allergy\""
                });
                let category = match what {
                    AllergyWhat::Coded(a) => Some(a.category),
                    AllergyWhat::Narrative(_, c) => *c,
                };
                if let Some(c) = category {
                    out.push_str(",\"category\":[\"");
                    out.push_str(c.fhir_code());
                    out.push_str("\"]");
                }
                if let Some(c) = criticality {
                    out.push(',');
                    kv(out, "criticality", c);
                }
                out.push_str(",\"code\":");
                match what {
                    AllergyWhat::Coded(a) => snomed_concept(out, a.code, a.display),
                    AllergyWhat::Narrative(text, _) => {
                        out.push('{');
                        kv(out, "text", text);
                        out.push('}');
                    }
                }
                patient_ref(out, "patient", patient);
                out.push_str(",\"onsetDateTime\":\"");
                push_date(out, *onset_day);
                out.push_str("\",\"recordedDate\":\"");
                push_date(out, (*onset_day + 14).min(it.last_updated / 86_400));
                out.push('"');
                if let Some(r) = reaction {
                    out.push_str(",\"reaction\":[{\"manifestation\":[");
                    snomed_concept(out, r.code, r.display);
                    out.push_str("],\"severity\":\"");
                    out.push_str(if *severe || r.severe {
                        "severe"
                    } else if *intolerance {
                        "mild"
                    } else {
                        "moderate"
                    });
                    out.push_str("\"}]");
                }
            }
            ItemKind::NoKnown(n) => match n {
                NoKnown::Medications => {
                    out.push_str("\"status\":\"active\",\"medicationCodeableConcept\":");
                    snomed_concept(out, n.code(), n.display());
                    patient_ref(out, "subject", patient);
                    out.push_str(",\"dateAsserted\":\"");
                    push_instant(out, it.last_updated);
                    out.push('"');
                    write_information_source(out, org);
                }
                NoKnown::Problems => {
                    condition_status(out, "active", "confirmed");
                    out.push_str(",\"code\":");
                    snomed_concept(out, n.code(), n.display());
                    patient_ref(out, "subject", patient);
                    out.push_str(",\"recordedDate\":\"");
                    push_date(out, it.last_updated / 86_400);
                    out.push('"');
                }
                _ => {
                    allergy_status(out, "active", "confirmed");
                    out.push_str(",\"code\":");
                    snomed_concept(out, n.code(), n.display());
                    patient_ref(out, "patient", patient);
                    out.push_str(",\"recordedDate\":\"");
                    push_date(out, it.last_updated / 86_400);
                    out.push('"');
                }
            },
            ItemKind::Medication {
                med,
                status,
                start_day,
                end_day,
                last_issue_day,
            } => {
                if let Some(d) = last_issue_day {
                    out.push_str("\"extension\":[{\"url\":\"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationStatementLastIssueDate\",\"valueDateTime\":\"");
                    push_date(out, *d);
                    out.push_str("\"}],");
                }
                kv(out, "status", status);
                out.push_str(",\"medicationCodeableConcept\":");
                match med {
                    MedRef::Coded(m) => snomed_concept(out, m.code, m.display),
                    MedRef::Narrative(n) => {
                        out.push('{');
                        kv(out, "text", n.text);
                        out.push('}');
                    }
                }
                patient_ref(out, "subject", patient);
                out.push_str(",\"effectivePeriod\":{\"start\":\"");
                push_date(out, *start_day);
                out.push('"');
                if let Some(e) = end_day {
                    out.push_str(",\"end\":\"");
                    push_date(out, *e);
                    out.push('"');
                }
                out.push_str("},\"dateAsserted\":\"");
                push_instant(out, it.last_updated);
                out.push('"');
                write_information_source(out, org);
                if let MedRef::Coded(m) = med {
                    out.push_str(",\"dosage\":[{");
                    kv(out, "text", m.dosage);
                    out.push_str(",\"route\":");
                    snomed_concept(out, m.route.code, m.route.display);
                    out.push_str("}]");
                }
            }
            ItemKind::Condition {
                rule,
                status,
                verification,
                onset_day,
            } => {
                let cond = self.g.rules.conditions[*rule].cond;
                out.push_str("\"extension\":[{\"url\":\"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-ProblemSignificance\",\"valueCode\":\"");
                out.push_str(if cond.major { "major" } else { "minor" });
                out.push_str("\"}],");
                condition_status(out, status, verification);
                out.push_str(",\"code\":");
                snomed_concept(out, cond.code, cond.display);
                patient_ref(out, "subject", patient);
                out.push_str(",\"onsetDateTime\":\"");
                push_date(out, *onset_day);
                out.push_str("\",\"recordedDate\":\"");
                push_date(out, (*onset_day + 21).min(it.last_updated / 86_400));
                out.push('"');
            }
            ItemKind::Consent {
                decision,
                day,
                review_day,
                performer,
                status,
            } => {
                kv(out, "status", status);
                out.push_str(",\"scope\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/consentscope\",\"code\":\"adr\",\"display\":\"Advanced Care Directive\"}]},\"category\":[");
                if decision.attempt_cpr {
                    coding_concept(
                        out,
                        "http://terminology.hl7.org/CodeSystem/consentcategorycodes",
                        "acd",
                        Some("Advance Directive"),
                    );
                } else {
                    coding_concept(
                        out,
                        "http://terminology.hl7.org/CodeSystem/consentcategorycodes",
                        "dnr",
                        Some("Do Not Resuscitate"),
                    );
                }
                out.push(']');
                patient_ref(out, "patient", patient);
                out.push_str(",\"dateTime\":\"");
                push_instant(out, day * 86_400 + 11 * 3600);
                out.push_str("\",\"performer\":[{");
                kv(out, "display", performer);
                out.push_str("}],\"organization\":[");
                ods_ref(out, org);
                out.push_str("],\"policy\":[{\"uri\":\"https://www.resus.org.uk/respect\"}],\"provision\":{\"type\":\"");
                out.push_str(if decision.attempt_cpr {
                    "permit"
                } else {
                    "deny"
                });
                out.push_str("\",\"period\":{\"start\":\"");
                push_date(out, *day);
                out.push('"');
                if let Some(r) = review_day {
                    out.push_str(",\"end\":\"");
                    push_date(out, *r);
                    out.push('"');
                }
                out.push_str("},\"code\":[");
                snomed_concept(out, decision.code, decision.display);
                out.push_str("]}");
            }
            ItemKind::CarePlan {
                kind,
                day,
                description,
            } => {
                out.push_str("\"status\":\"current\",\"type\":");
                snomed_concept(out, kind.code, kind.display);
                out.push_str(",\"category\":[");
                snomed_concept(
                    out,
                    codes::CARE_PLAN_CATEGORY.code,
                    codes::CARE_PLAN_CATEGORY.display,
                );
                out.push(']');
                patient_ref(out, "subject", patient);
                out.push_str(",\"date\":\"");
                push_instant(out, day * 86_400 + 14 * 3600);
                out.push_str("\",\"custodian\":");
                ods_ref(out, org);
                out.push(',');
                kv(out, "description", description);
                out.push_str(",\"content\":[{\"attachment\":{\"contentType\":\"application/pdf\",\"url\":\"https://");
                out.push_str(if org.ods == UCP.ods { "ucp" } else { "records" });
                out.push_str(".example.invalid/");
                out.push_str(&org.ods.to_ascii_lowercase());
                out.push_str("/documents/");
                it.uuid.push(out);
                out.push_str("\",");
                kv(out, "title", kind.display);
                out.push_str(",\"creation\":\"");
                push_instant(out, day * 86_400 + 14 * 3600);
                out.push_str("\"}}]");
            }
            ItemKind::Flag {
                flag,
                start_day,
                end_day,
            } => {
                out.push_str("\"status\":\"active\",\"category\":[");
                let cat = flag.kind.flag_category();
                let display = match cat {
                    "contact" => "Subject Contact",
                    "safety" => "Safety",
                    "behavioral" => "Behavioral",
                    _ => "Clinical",
                };
                coding_concept(
                    out,
                    "http://terminology.hl7.org/CodeSystem/flag-category",
                    cat,
                    Some(display),
                );
                out.push_str("],\"code\":{");
                kv(out, "text", flag.text);
                out.push('}');
                patient_ref(out, "subject", patient);
                out.push_str(",\"period\":{\"start\":\"");
                push_date(out, *start_day);
                out.push('"');
                if let Some(e) = end_day {
                    out.push_str(",\"end\":\"");
                    push_date(out, *e);
                    out.push('"');
                }
                out.push_str("},\"author\":");
                ods_ref(out, org);
            }
        }
        out.push_str("}}");
    }
}

fn write_meta(out: &mut String, last_updated: i64, system: &str) {
    out.push_str("\"meta\":{\"versionId\":\"1\",\"lastUpdated\":\"");
    push_instant(out, last_updated);
    out.push_str("\",");
    kv(out, "source", system);
    out.push('}');
}

fn patient_ref(out: &mut String, key: &str, patient: Uuid) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":{\"reference\":\"urn:uuid:");
    patient.push(out);
    out.push_str("\"}");
}

fn write_information_source(out: &mut String, org: &Org) {
    out.push_str(",\"informationSource\":{\"type\":\"Organization\",");
    let mut r = String::new();
    ods_ref(&mut r, org);
    out.push_str(&r[1..]);
}

fn allergy_status(out: &mut String, clinical: &str, verification: &str) {
    out.push_str("\"clinicalStatus\":");
    coding_concept(
        out,
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
        clinical,
        None,
    );
    out.push_str(",\"verificationStatus\":");
    coding_concept(
        out,
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
        verification,
        None,
    );
}

fn condition_status(out: &mut String, clinical: &str, verification: &str) {
    out.push_str("\"clinicalStatus\":");
    coding_concept(
        out,
        "http://terminology.hl7.org/CodeSystem/condition-clinical",
        clinical,
        None,
    );
    out.push_str(",\"verificationStatus\":");
    coding_concept(
        out,
        "http://terminology.hl7.org/CodeSystem/condition-ver-status",
        verification,
        None,
    );
    out.push_str(",\"category\":[{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-category\",\"code\":\"problem-list-item\",\"display\":\"Problem List Item\"}]}]");
}

fn write_provenance(out: &mut String, id: Uuid, org: &Org, targets: &[&Item], recorded: i64) {
    out.push_str("{\"fullUrl\":\"urn:uuid:");
    id.push(out);
    out.push_str("\",\"resource\":{\"resourceType\":\"Provenance\",\"id\":\"");
    id.push(out);
    out.push_str("\",\"target\":[");
    for (i, t) in targets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"reference\":\"urn:uuid:");
        t.uuid.push(out);
        out.push_str("\"}");
    }
    out.push_str("],\"recorded\":\"");
    push_instant(out, recorded);
    out.push_str("\",\"agent\":[{\"type\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/provenance-participant-type\",\"code\":\"custodian\",\"display\":\"Custodian\"}]},\"who\":");
    ods_ref(out, org);
    out.push_str("}]}}");
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::{HashMap, HashSet};

    fn run(patients: u64, seed: u64, sources: usize, threads: usize) -> (Vec<u8>, Stats) {
        let cfg = Config::new(patients, seed, sources, None).expect("valid config");
        let mut out = Vec::new();
        let stats = write_ndjson(&cfg, &mut out, threads, &mut |_| {}).expect("write");
        (out, stats)
    }

    fn bundles(out: &[u8]) -> Vec<Value> {
        std::str::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    fn resources(b: &Value) -> impl Iterator<Item = &Value> {
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| &e["resource"])
    }

    fn nhs_valid(n: &str) -> bool {
        let d: Vec<u32> = n.chars().filter_map(|c| c.to_digit(10)).collect();
        if d.len() != 10 || n.len() != 10 || d.iter().all(|&x| x == d[0]) {
            return false;
        }
        let s: u32 = (0..9).map(|i| d[i] * (10 - i as u32)).sum();
        let c = match 11 - s % 11 {
            11 => 0,
            c => c,
        };
        c != 10 && c == d[9]
    }

    #[test]
    fn nhs_check_digits_match_the_data_model_vectors() {
        assert_eq!(nhs_check_digit(943_476_591), Some(9));
        assert_eq!(nhs_check_digit(911_123_113), Some(0)); // 11 → 0
        assert_eq!(nhs_check_digit(123_456_789), None); // 10 → never issued
        assert_eq!(nhs_check_digit(999_000_001), Some(8));
        assert_eq!(nhs_check_digit(999_000_002), Some(6));
        assert_eq!(capacity(), valid_nhs_prefixes().len() as u64);
        assert!((900_000..=910_000).contains(&capacity()), "{}", capacity());
    }

    #[test]
    fn permutation_is_a_bijection_onto_valid_test_numbers() {
        let cfg = Config::new(capacity(), 7, 2, None).expect("config");
        let g = Generator::new(&cfg);
        let mut seen = HashSet::new();
        for i in 0..capacity() {
            let n = g.nhs_number(i);
            assert!((9_990_000_000..=9_999_999_999).contains(&n));
            assert!(seen.insert(n), "duplicate NHS number {n} at {i}");
        }
        for n in seen.iter().take(5000) {
            assert!(nhs_valid(&format!("{n:010}")), "{n}");
        }
    }

    #[test]
    fn deterministic_and_independent_of_thread_count() {
        let (a, sa) = run(3000, 11, 2, 1);
        let (b, sb) = run(3000, 11, 2, 4);
        assert!(a == b, "same seed, different threads: outputs differ");
        assert_eq!(sa, sb);
        assert_eq!(sa.bytes, a.len() as u64);
        // a prefix of a larger run equals the smaller run
        let (c, _) = run(5000, 11, 2, 3);
        assert!(c.starts_with(&a));
    }

    #[test]
    fn different_seeds_give_different_people() {
        let (a, _) = run(200, 11, 2, 1);
        let (b, _) = run(200, 12, 2, 1);
        assert!(a != b);
        let nhs = |out: &[u8]| -> HashSet<String> {
            bundles(out)
                .iter()
                .map(|b| {
                    resources(b)
                        .next()
                        .map(|p| p["identifier"][0]["value"].to_string())
                        .unwrap_or_default()
                })
                .collect()
        };
        let common = nhs(&a).intersection(&nhs(&b)).count();
        assert!(common < 20, "{common} NHS numbers shared between seeds");
    }

    #[test]
    fn two_thousand_patients_have_every_kind_and_valid_references() {
        let (out, stats) = run(2000, 11, 3, 2);
        let bundles = bundles(&out);
        assert_eq!(bundles.len(), 2000);
        let mut kinds: HashMap<String, usize> = HashMap::new();
        let mut nhs = HashSet::new();
        let (mut nka, mut text_only_allergy, mut text_only_med, mut high_crit) = (0, 0, 0, 0);
        for b in &bundles {
            assert_eq!(b["resourceType"], "Bundle");
            assert_eq!(b["type"], "collection");
            let urls: HashSet<&str> = b["entry"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|e| e["fullUrl"].as_str())
                .collect();
            let mut patients = 0;
            let mut targeted = HashSet::new();
            for r in resources(b) {
                let rt = r["resourceType"].as_str().unwrap_or("?").to_owned();
                *kinds.entry(rt.clone()).or_default() += 1;
                match rt.as_str() {
                    "Patient" => {
                        patients += 1;
                        let v = r["identifier"][0]["value"].as_str().unwrap_or("");
                        assert_eq!(
                            r["identifier"][0]["system"],
                            "https://fhir.nhs.uk/Id/nhs-number"
                        );
                        assert!(nhs_valid(v) && v.starts_with("999"), "{v}");
                        assert!(nhs.insert(v.to_owned()), "duplicate {v}");
                        assert!(r["name"][0]["family"].is_string() && r["birthDate"].is_string());
                        assert!(r["generalPractitioner"][0]["identifier"]["value"].is_string());
                    }
                    "Provenance" => {
                        let t = r["target"].as_array().expect("targets");
                        assert!(!t.is_empty());
                        for x in t {
                            let reference = x["reference"].as_str().unwrap_or("");
                            assert!(urls.contains(reference), "dangling target {reference}");
                            targeted.insert(reference.to_owned());
                        }
                        assert!(r["agent"][0]["who"]["identifier"]["value"].is_string());
                    }
                    _ => {
                        assert_eq!(r["meta"]["versionId"], "1");
                        assert!(r["meta"]["lastUpdated"].is_string());
                        assert!(r["meta"]["source"]
                            .as_str()
                            .unwrap_or("")
                            .starts_with("urn:kerbside:system:"));
                    }
                }
                if rt == "AllergyIntolerance" {
                    let codes: Vec<&str> = r["code"]["coding"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|c| c["code"].as_str())
                        .collect();
                    if codes.contains(&"716186003") {
                        nka += 1;
                    }
                    if codes.is_empty() && r["code"]["text"].is_string() {
                        text_only_allergy += 1;
                    }
                    if r["criticality"] == "high" {
                        high_crit += 1;
                    }
                }
                if rt == "MedicationStatement" && r["medicationCodeableConcept"]["coding"].is_null()
                {
                    text_only_med += 1;
                }
            }
            assert_eq!(patients, 1);
            // every clinical item is the target of exactly one source's Provenance
            for e in b["entry"].as_array().into_iter().flatten() {
                let rt = e["resource"]["resourceType"].as_str().unwrap_or("");
                if rt != "Patient" && rt != "Provenance" {
                    assert!(
                        targeted.contains(e["fullUrl"].as_str().unwrap_or("")),
                        "item without provenance"
                    );
                }
            }
        }
        for k in [
            "Patient",
            "AllergyIntolerance",
            "MedicationStatement",
            "Condition",
            "Consent",
            "DocumentReference",
            "Flag",
            "Provenance",
        ] {
            assert!(
                kinds.get(k).copied().unwrap_or(0) > 0,
                "no {k} in 2000 patients: {kinds:?}"
            );
        }
        assert!(
            (250..=450).contains(&nka),
            "no-known-allergy records: {nka}"
        );
        assert!(text_only_allergy > 0 && text_only_med > 0 && high_crit > 0);
        assert_eq!(stats.resources[0], 2000);
        assert_eq!(
            stats.resources.iter().sum::<u64>(),
            kinds.values().sum::<usize>() as u64
        );
    }

    #[test]
    fn sources_are_distinct_and_spread() {
        let (out, _) = run(500, 3, 4, 1);
        let mut max_seen = 0;
        for b in bundles(&out) {
            let agents: Vec<String> = resources(&b)
                .filter(|r| r["resourceType"] == "Provenance")
                .map(|r| r["agent"][0]["who"]["identifier"]["value"].to_string())
                .collect();
            let distinct: HashSet<&String> = agents.iter().collect();
            assert_eq!(
                distinct.len(),
                agents.len(),
                "one Provenance per organisation"
            );
            assert!(agents.len() <= 4);
            max_seen = max_seen.max(agents.len());
            let items = resources(&b)
                .filter(|r| r["resourceType"] != "Patient" && r["resourceType"] != "Provenance")
                .count();
            if items >= 6 {
                assert!(
                    agents.len() >= 3,
                    "{items} items over only {} sources",
                    agents.len()
                );
            }
        }
        assert_eq!(max_seen, 4);
        let (one, _) = run(200, 3, 1, 1);
        for b in bundles(&one) {
            assert!(
                resources(&b)
                    .filter(|r| r["resourceType"] == "Provenance")
                    .count()
                    <= 1
            );
        }
    }

    #[test]
    fn sources_change_attribution_not_people_or_items() {
        let (a, _) = run(300, 5, 1, 1);
        let (b, _) = run(300, 5, 6, 1);
        for (x, y) in bundles(&a).iter().zip(bundles(&b).iter()) {
            let px = resources(x).next().cloned().unwrap_or_default();
            let py = resources(y).next().cloned().unwrap_or_default();
            assert_eq!(px, py, "the Patient must not depend on --sources");
            let items = |b: &Value| -> Vec<(String, String)> {
                resources(b)
                    .filter(|r| r["resourceType"] != "Provenance")
                    .map(|r| (r["resourceType"].to_string(), r["id"].to_string()))
                    .collect()
            };
            assert_eq!(items(x), items(y));
        }
    }

    #[test]
    fn older_patients_carry_more_medicines_and_conditions() {
        let (out, _) = run(4000, 5, 2, 2);
        let (mut young, mut old) = ((0usize, 0usize), (0usize, 0usize));
        let mut anticoag_old = 0;
        for b in bundles(&out) {
            let birth = resources(&b)
                .next()
                .and_then(|p| p["birthDate"].as_str())
                .unwrap_or("2000");
            let year: i64 = birth[..4].parse().unwrap_or(2000);
            let meds = resources(&b)
                .filter(|r| r["resourceType"] == "MedicationStatement")
                .count();
            let conds = resources(&b)
                .filter(|r| r["resourceType"] == "Condition")
                .count();
            if year >= 2008 {
                young.0 += meds + conds;
                young.1 += 1;
            } else if year <= 1950 {
                old.0 += meds + conds;
                old.1 += 1;
                let classes = resources(&b)
                    .filter(|r| r["resourceType"] == "MedicationStatement")
                    .filter_map(|r| {
                        let c = r["medicationCodeableConcept"]["coding"][0]["code"].as_str();
                        let t = r["medicationCodeableConcept"]["coding"][0]["display"]
                            .as_str()
                            .or(r["medicationCodeableConcept"]["text"].as_str())
                            .unwrap_or("");
                        codes::high_risk_class(c, t)
                    })
                    .collect::<Vec<_>>();
                if classes.contains(&HighRiskClass::Anticoagulant) {
                    anticoag_old += 1;
                }
            }
        }
        let per = |(n, p): (usize, usize)| n as f64 / p.max(1) as f64;
        assert!(
            per(old) > 4.0 * per(young),
            "old {:.2} vs young {:.2}",
            per(old),
            per(young)
        );
        assert!(
            anticoag_old as f64 > 0.08 * old.1 as f64,
            "{anticoag_old} of {} 75+ anticoagulated",
            old.1
        );
    }

    #[test]
    fn rules_resolve_against_the_code_lists() {
        let r = rules();
        assert_eq!(
            r.conditions.len(),
            PREVALENCE.len(),
            "every prevalence code is in codes::CONDITIONS"
        );
        assert_eq!(
            r.med_rules.len(),
            MED_RULES.len(),
            "every rule's condition is known"
        );
        for (rule, (_, _, options)) in MED_RULES.iter().zip(&r.med_rules) {
            assert_eq!(
                options.len(),
                rule.options.len(),
                "unresolved option in rule for {}",
                rule.condition
            );
        }
        for ((_, _, o), (_, _, resolved)) in AGE_RULES.iter().zip(&r.age_rules) {
            assert_eq!(o.len(), resolved.len());
        }
        for code in CHILDHOOD_ONSET {
            assert!(codes::condition_by_code(code).is_some(), "{code}");
        }
        assert!(resolve_med(APIXABAN_5).is_some() && resolve_med("42354511000001109").is_some());
        for p in PRACTICES {
            for d in p.districts {
                assert!(
                    DISTRICTS.iter().any(|x| x.0 == *d),
                    "{} lists unknown district {d}",
                    p.org.ods
                );
            }
        }
    }

    #[test]
    fn dates_round_trip_and_bad_input_is_refused() {
        for day in [-1000, 0, 1, 59, 60, 365, 10_957, 20_454, 40_000] {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
        assert_eq!(parse_day("1970-01-01"), Some(0));
        assert_eq!(parse_day("2026-01-01"), Some(20_454));
        for bad in [
            "2025-02-30",
            "2025-13-01",
            "26-01-01",
            "2026/01/01",
            "",
            "1969-12-31",
        ] {
            assert_eq!(parse_day(bad), None, "{bad}");
        }
        let mut s = String::new();
        push_instant(&mut s, 20_454 * 86_400 + 3661);
        assert_eq!(s, "2026-01-01T01:01:01Z");
        assert_eq!(Config::new(0, 1, 2, None), Err(SynthError::NoPatients));
        assert!(matches!(
            Config::new(capacity() + 1, 1, 2, None),
            Err(SynthError::TooManyPatients { .. })
        ));
        assert_eq!(Config::new(10, 1, 0, None), Err(SynthError::Sources(0)));
        assert_eq!(Config::new(10, 1, 9, None), Err(SynthError::Sources(9)));
        assert!(matches!(
            Config::new(10, 1, 2, Some("yesterday")),
            Err(SynthError::AsOf(_))
        ));
    }

    #[test]
    fn escaping_is_json() {
        let mut s = String::from("\"");
        esc(&mut s, "O'Brien \"Bob\" \\ \n\u{1}Zoë");
        s.push('"');
        let v: Value = serde_json::from_str(&s).expect("valid JSON string");
        assert_eq!(v, "O'Brien \"Bob\" \\ \n\u{1}Zoë");
    }

    #[test]
    fn names_include_accents_hyphens_and_nicknames() {
        let (out, _) = run(3000, 21, 2, 2);
        let text = String::from_utf8(out).expect("utf-8");
        for needle in ["\"use\":\"usual\"", "-", "'"] {
            assert!(text.contains(needle), "{needle}");
        }
        assert!(!text.is_ascii(), "no accented names");
        assert!(text.contains("\"Bob\"") || text.contains("\"Liz\"") || text.contains("\"Bill\""));
    }
}
