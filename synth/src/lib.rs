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
//! | allergies | weighted by [`codes::ALLERGENS`](edge_proto::codes::ALLERGENS) (penicillin most common; children mostly food); 3% narrative-only (text, no code); anaphylaxis or angioedema (→ `criticality: high`, `severity: severe`) in 8% of drug, 25% of food and 20% of environmental allergies to anaphylactic allergens (≈9% of all allergies); otherwise low (70%), unable-to-assess (10%) or absent; 20% unconfirmed; codeine, morphine, ibuprofen and 8% of others recorded as intolerance |
//! | conditions | per-condition prevalence by age band (e.g. hypertension 0.1% of children → 60% at 85+, AF 0% → 18%, dementia 0% → 20%); none recorded: "no current problems" 160245001 for 30% of those, nothing for the rest |
//! | medicines | from conditions (AF → anticoagulant 80%: DOAC or warfarin; T1DM → basal + bolus insulin; T2DM → metformin 85%, insulin 20%; IHD → antiplatelet + statin; bipolar → lithium 60%; RA → methotrexate 45%; epilepsy → valproate/lamotrigine/levetiracetam; chronic pain and cancer → opioids…) plus age rules (statins, paracetamol, PPIs, amlodipine, furosemide from 45–75+; PPIs with antithrombotics/steroids); at most one anticoagulant, statin and PPI each. Measured (20,000 patients): per patient <18 0.4, 18–44 0.5, 45–64 1.0, 65–74 2.3, 75–84 3.2, 85+ 3.4; 13% of 75+ anticoagulated; 25% of diabetics on insulin; 6% stopped, acute courses completed; ~4.5% narrative-only (text, no code); none at all: "no known medications" 787481004 for 25% of those, nothing for the rest |
//! | resuscitation (Consent) | base rate by age <18 0.1%, 18–64 0.4%, 65–74 3%, 75–84 7%, 85+ 15%, ×1.8 with dementia, frailty, cancer or heart failure (measured: 65–74 3.6%, 75–84 8.6%, 85+ 21%); 450476008 DNACPR 70%, 304253006 15%, 304252001 "for resuscitation" 15%; 60% with a review date |
//! | care plans (DocumentReference) | with a resuscitation decision: ReSPECT 70%, end-of-life care plan 30% (cancer, dementia, frailty, 85+), coordination summary 10%; otherwise mental-health crisis plan (30% of psychosis/bipolar), emergency health care plan (12% of epilepsy, sickle cell, T1DM), advance care plan (1% of 65+), treatment escalation plan, contingency plan (rare) |
//! | alerts (Flag) | communication needs (deafness, learning disability, autism, dementia; interpreter 1.5%), safeguarding 0.8%, risk to crew 0.8%, clinical (Addison's 80%, sickle cell 50%, 0.3% others) |
//! | sources | `--sources K`: the GP practice (EMIS Web or SystmOne) + K−1 of the local acute trust, other trusts and mental-health trusts; the Universal Care Plan (OneLondon) holds care plans and resuscitation decisions when the patient has any; items go 55% to the GP, the rest spread so every source holds at least one item when there are enough |
//!
//! # Layout
//!
//! The crate root holds the public API (configuration, the NDJSON driver, [`Generator`], NHS
//! numbers). Private modules: `rng` (the SplitMix64 stream and the NHS-number permutation),
//! `date` (day arithmetic and formatting), `tables` (reference data and clinical rules),
//! `patient` (generating one patient) and `json` (writing that patient as a FHIR `Bundle`).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::OnceLock;

mod date;
mod json;
mod patient;
mod rng;
mod tables;

use date::parse_day;
use patient::PatientGen;
use rng::NhsPermutation;
use tables::{rules, Rules};

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
    pub(crate) cfg: Config,
    perm: NhsPermutation,
    pub(crate) as_of_secs: i64,
    pub(crate) rules: &'static Rules,
}

impl Generator {
    pub fn new(cfg: &Config) -> Generator {
        Generator {
            cfg: *cfg,
            perm: NhsPermutation::new(cfg.seed),
            as_of_secs: cfg.as_of_day * 86_400,
            rules: rules(),
        }
    }

    /// The NHS number (10 digits) of patient `index` (< [`capacity`]).
    pub fn nhs_number(&self, index: u64) -> u64 {
        let table = valid_nhs_prefixes();
        let slot = self.perm.permute(index as u32, table.len() as u32) as usize;
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
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::{HashMap, HashSet};

    pub(crate) fn run(
        patients: u64,
        seed: u64,
        sources: usize,
        threads: usize,
    ) -> (Vec<u8>, Stats) {
        let cfg = Config::new(patients, seed, sources, None).expect("valid config");
        let mut out = Vec::new();
        let stats = write_ndjson(&cfg, &mut out, threads, &mut |_| {}).expect("write");
        (out, stats)
    }

    pub(crate) fn bundles(out: &[u8]) -> Vec<Value> {
        std::str::from_utf8(out)
            .expect("utf-8")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each line is JSON"))
            .collect()
    }

    pub(crate) fn resources(b: &Value) -> impl Iterator<Item = &Value> {
        b["entry"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| &e["resource"])
    }

    pub(crate) fn nhs_valid(n: &str) -> bool {
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
    fn bad_requests_are_refused() {
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
}
