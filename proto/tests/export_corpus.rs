//! The `$summary` export of every summary the ingest corpus (`tests/corpus/*.json`) makes.
//!
//! Each case's steps are ingested in order into a small in-memory hub (the hub's rules for
//! former numbers and merged records, `assemble::from_contribution` / `apply`, a version bump
//! per change), and every live summary is exported as the unit answers it: with restricted items
//! removed, and — when it has any — once more as after break-glass. Each document is checked
//! here for the rules Kerbside itself promises (references resolve, the IPS sections, the R4
//! invariants the export once broke) and mapped back through ingest (the same clinical content).
//!
//! With `KERBSIDE_EXPORT_OUT=path`, the documents are also written there as NDJSON, one Bundle a
//! line, for the independent validator (`tests/fhir-validate/validate.py`, run by
//! `.ci/validate-ips`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};

use edge_proto::assemble::{self, from_contribution, merge_retired};
use edge_proto::fhir::export::summary_document;
use edge_proto::fhir::ingest::{ingest_bundle, parse_bundle_json, Contribution, IngestOptions};
use edge_proto::fhir::{SectionKind, IPS_ABSENT_UNKNOWN};
use edge_proto::ids::SourceId;
use edge_proto::model::*;
use edge_proto::nhs::NhsNumber;
use edge_proto::time::UnixMillis;
use edge_proto::view::redact;
use serde_json::Value;

/// The corpus was written on 4 December 2026: its period ends are judged against that day.
const CORPUS_NOW: &str = "2026-12-04T12:00:00Z";

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/corpus")
}

fn cases() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .expect("tests/corpus exists")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    // Shapes the corpus lacks, kept with the validator.
    files.push(Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fhir-validate/shapes.json"));
    files
        .into_iter()
        .map(|p| {
            let v: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap())
                .unwrap_or_else(|e| panic!("{}: not JSON: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), v)
        })
        .collect()
}

/// The hub's filing rules, in memory: live summaries, former numbers, merged records.
#[derive(Clone, Default)]
struct Hub {
    live: BTreeMap<NhsNumber, Summary>,
    aliases: BTreeMap<NhsNumber, NhsNumber>,
    merged: BTreeSet<NhsNumber>,
}

impl Hub {
    /// Apply one contribution as the hub does (`hub/src/store.rs`); `Err` when refused.
    fn apply(&mut self, mut c: Contribution, now: UnixMillis) -> Result<(), String> {
        if let Some(current) = self.aliases.get(&c.nhs_number).copied() {
            c.patient.former_nhs_numbers.push(c.nhs_number);
            c.nhs_number = current;
            c.patient.last_updated = UnixMillis(i64::MIN);
        }
        let current = c.nhs_number;
        for f in c.patient.former_nhs_numbers.clone() {
            if f == current || self.aliases.get(&f) == Some(&current) {
                continue;
            }
            if self.aliases.get(&current) == Some(&f) {
                return Err("identity conflict".into());
            }
            self.aliases.insert(f, current);
            if self.merged.contains(&f) {
                continue;
            }
            if let Some(r) = self.live.remove(&f) {
                self.merged.insert(f);
                let target = self.live.entry(current).or_insert_with(|| {
                    let mut s = Summary::new(current, r.patient.clone());
                    s.patient.former_nhs_numbers.clear();
                    s.patient.last_updated = UnixMillis(i64::MIN);
                    s.assembled_at = now;
                    s
                });
                if merge_retired(target, &r) {
                    target.version += 1;
                    target.assembled_at = now;
                }
            }
        }
        if self.merged.contains(&current) {
            return Err("merged in the same ingest".into());
        }
        match self.live.get_mut(&current) {
            None => {
                self.live.insert(current, from_contribution(&c, now));
            }
            Some(s) => {
                if assemble::apply(s, &c).map_err(|e| e.to_string())? {
                    s.version += 1;
                    s.assembled_at = now;
                }
            }
        }
        Ok(())
    }
}

/// Run one case's steps; the live summaries at the end.
fn run_case(name: &str, case: &Value) -> Vec<Summary> {
    let mut hub = Hub::default();
    let mut now = UnixMillis::parse_rfc3339(CORPUS_NOW).unwrap();
    for (i, step) in case["steps"].as_array().unwrap().iter().enumerate() {
        let opts = IngestOptions {
            default_source: step["source"]
                .as_str()
                .map(|s| SourceId::parse(s).unwrap_or_else(|e| panic!("{name} step {i}: {e}"))),
            snapshot: step["snapshot"].as_bool() == Some(true),
            now: Some(now),
        };
        let bundles: Vec<&Value> = match &step["ingest"] {
            Value::Array(a) => a.iter().collect(),
            b => vec![b],
        };
        for b in bundles {
            now = now.plus_ms(1_000);
            // A refused bundle changes nothing (the corpus expects some refusals).
            let Ok(ing) = ingest_bundle(b, &opts) else {
                continue;
            };
            let saved = hub.clone();
            for c in ing.contributions {
                if hub.apply(c, now).is_err() {
                    hub = saved;
                    break;
                }
            }
        }
    }
    hub.live.into_values().collect()
}

fn any_restricted(s: &Summary) -> bool {
    fn any<T: Item>(sec: &Section<T>) -> bool {
        sec.entries.iter().any(|e| e.provenance().restricted)
    }
    any(&s.allergies)
        || any(&s.medications)
        || any(&s.conditions)
        || any(&s.resuscitation)
        || any(&s.care_plans)
        || any(&s.alerts)
}

/// Every `reference` string anywhere under `v`, with the JSON path it was found at.
fn references<'a>(v: &'a Value, path: &str, out: &mut Vec<(String, &'a str)>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("reference") {
                out.push((path.to_owned(), r.as_str()));
            }
            for (k, x) in m {
                references(x, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                references(x, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn codes(cc: &Value) -> Vec<(&str, &str)> {
    cc["coding"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            (
                c["system"].as_str().unwrap_or(""),
                c["code"].as_str().unwrap_or(""),
            )
        })
        .collect()
}

/// The rules Kerbside promises of its own documents; one message per broken rule.
fn check_document(doc: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    if doc["resourceType"] != "Bundle" || doc["type"] != "document" {
        bad.push("not a document Bundle".into());
    }
    let entries = doc["entry"].as_array().cloned().unwrap_or_default();
    let mut by_url: BTreeMap<&str, &Value> = BTreeMap::new();
    for (i, e) in entries.iter().enumerate() {
        match e["fullUrl"].as_str() {
            Some(u) => {
                if by_url.insert(u, &e["resource"]).is_some() {
                    bad.push(format!("entry[{i}]: fullUrl {u} used twice"));
                }
            }
            None => bad.push(format!("entry[{i}]: no fullUrl")),
        }
    }
    let mut refs = Vec::new();
    references(doc, "Bundle", &mut refs);
    for (path, r) in &refs {
        if !by_url.contains_key(r) {
            bad.push(format!("{path}: reference {r} resolves to no entry"));
        }
    }
    let comp = &entries
        .first()
        .map(|e| e["resource"].clone())
        .unwrap_or_default();
    if comp["resourceType"] != "Composition" {
        bad.push("the first entry is not a Composition".into());
    }
    let is_org = |r: &Value| {
        r["reference"]
            .as_str()
            .and_then(|u| by_url.get(u))
            .is_some_and(|x| x["resourceType"] == "Organization")
    };
    let authors = comp["author"].as_array().cloned().unwrap_or_default();
    if authors.is_empty() || !authors.iter().all(is_org) {
        bad.push("Composition.author is not a reference to an Organization entry".into());
    }
    if !is_org(&comp["custodian"]) {
        bad.push("Composition.custodian is not a reference to an Organization entry".into());
    }
    let sections = comp["section"].as_array().cloned().unwrap_or_default();
    for loinc in ["48765-2", "10160-0", "11450-4"] {
        match sections
            .iter()
            .find(|s| codes(&s["code"]).contains(&("http://loinc.org", loinc)))
        {
            None => bad.push(format!("IPS section {loinc} missing")),
            Some(s) => {
                let has_entries = s["entry"].as_array().is_some_and(|a| !a.is_empty());
                if has_entries == s.get("emptyReason").is_some() {
                    bad.push(format!(
                        "section {loinc}: needs entries or an emptyReason, not both"
                    ));
                }
            }
        }
    }
    for e in &entries {
        let r = &e["resource"];
        let at = format!(
            "{} {}",
            r["resourceType"].as_str().unwrap_or("?"),
            e["fullUrl"].as_str().unwrap_or("?")
        );
        match r["resourceType"].as_str().unwrap_or("") {
            "MedicationRequest" if r["intent"].as_str().is_none() => {
                bad.push(format!("{at}: no intent"));
            }
            "MedicationStatement"
                if r.get("effectiveDateTime").is_none()
                    && r.get("effectivePeriod").is_none()
                    && r.get("_effectiveDateTime").is_none() =>
            {
                bad.push(format!("{at}: no effective[x]"));
            }
            "AllergyIntolerance" => {
                let eie = codes(&r["verificationStatus"])
                    .iter()
                    .any(|(_, c)| *c == "entered-in-error");
                if !eie && r.get("clinicalStatus").is_none() {
                    bad.push(format!("{at}: no clinicalStatus (ait-1)"));
                }
            }
            "Consent" => {
                if r.get("policy").is_none() && r.get("policyRule").is_none() {
                    bad.push(format!("{at}: neither policy nor policyRule (ppc-1)"));
                }
                let p = &r["provision"];
                let cpr = p["code"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| codes(c).iter().any(|(_, k)| *k == "89666000"));
                if cpr && p.get("type").is_none() && p.get("_type").is_none() {
                    bad.push(format!("{at}: a CPR provision without provision.type"));
                }
            }
            "Patient" => {
                let names = r["name"].as_array().cloned().unwrap_or_default();
                if names.is_empty()
                    || names.iter().any(|n| {
                        n.get("text").is_none()
                            && n.get("family").is_none()
                            && n.get("given").is_none()
                    })
                {
                    bad.push(format!("{at}: an empty name"));
                }
            }
            _ => {}
        }
    }
    bad
}

/// Where two JSON values differ: `path: a → b`, at most `max`.
fn diff(a: &Value, b: &Value, path: &str, out: &mut Vec<String>, max: usize) {
    if out.len() >= max || a == b {
        return;
    }
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys: BTreeSet<&String> = x.keys().chain(y.keys()).collect();
            for k in keys {
                let (va, vb) = (
                    x.get(k).unwrap_or(&Value::Null),
                    y.get(k).unwrap_or(&Value::Null),
                );
                diff(va, vb, &format!("{path}.{k}"), out, max);
            }
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => {
            for (i, (va, vb)) in x.iter().zip(y).enumerate() {
                diff(va, vb, &format!("{path}[{i}]"), out, max);
            }
        }
        _ => {
            let short = |v: &Value| {
                let t = v.to_string();
                if t.len() > 300 {
                    format!(
                        "{}…",
                        &t[..t.char_indices().nth(300).map_or(t.len(), |(i, _)| i)]
                    )
                } else {
                    t
                }
            };
            out.push(format!("{path}: {} → {}", short(a), short(b)));
        }
    }
}

/// The clinical content of a summary, for the round trip: everything but the hub's bookkeeping,
/// with the differences the export makes on purpose (`docs/fhir-mapping.md`) taken out:
///
/// * a section statement is carried by the section's status (its `emptyReason`); only a
///   source's "none known" in the allergies, medications and problems sections is a resource
///   with its source, and one that came without a code gets the IPS `no-known-…` code;
/// * sources and confidentiality are those of what the document holds (a redacted summary
///   keeps the ones of the items it no longer holds).
fn content(s: &Summary) -> Value {
    fn statements<T: Item>(kind: SectionKind, sec: &mut Section<T>) {
        let ips = matches!(
            kind,
            SectionKind::Allergies | SectionKind::Medications | SectionKind::Conditions
        );
        sec.basis
            .retain(|m| ips && m.provenance.is_some() && m.status == SectionStatus::NoneKnown);
        for m in &mut sec.basis {
            if m.concept
                .as_ref()
                .and_then(|c| c.coding.as_ref())
                .is_some_and(|c| c.system == IPS_ABSENT_UNKNOWN)
            {
                m.concept = None;
            }
        }
    }
    let mut s = s.clone();
    statements(SectionKind::Allergies, &mut s.allergies);
    statements(SectionKind::Medications, &mut s.medications);
    statements(SectionKind::Conditions, &mut s.conditions);
    statements(SectionKind::Resuscitation, &mut s.resuscitation);
    statements(SectionKind::CarePlans, &mut s.care_plans);
    statements(SectionKind::Alerts, &mut s.alerts);
    s.sources = assemble::derive_sources(&s);
    s.confidentiality = assemble::derive_confidentiality(&s);
    let v = serde_json::to_value(&s).unwrap();
    let mut v = v.as_object().unwrap().clone();
    for k in ["version", "assembled_at", "ledger", "schema"] {
        v.remove(k);
    }
    Value::Object(v)
}

#[test]
fn every_corpus_summary_exports_a_valid_ips_document() {
    let cases = cases();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let mut out: Vec<String> = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut n = 0;
    for (name, case) in &cases {
        for s in run_case(name, case) {
            let mut views = vec![("", redact(&s, false))];
            if any_restricted(&s) {
                views.push((" (break-glass)", redact(&s, true)));
            }
            for (how, shown) in views {
                n += 1;
                let at = format!("{name} {}{how}", s.nhs_number.as_digits());
                let doc = summary_document(&shown);
                for b in check_document(&doc) {
                    failures.push(format!("{at}: {b}"));
                }
                let text = serde_json::to_string(&doc).unwrap();
                match parse_bundle_json(&text) {
                    Err(e) => failures.push(format!("{at}: does not ingest: {e}")),
                    Ok(c) => {
                        let back = from_contribution(&c, shown.assembled_at);
                        let (a, b) = (content(&shown), content(&back));
                        let mut d = Vec::new();
                        diff(&a, &b, "", &mut d, 12);
                        for x in d {
                            failures.push(format!("{at}: round trip: {x}"));
                        }
                    }
                }
                out.push(text);
            }
        }
    }
    if let Ok(path) = std::env::var("KERBSIDE_EXPORT_OUT") {
        if !path.is_empty() {
            let mut f = std::fs::File::create(&path).unwrap();
            for line in &out {
                writeln!(f, "{line}").unwrap();
            }
            eprintln!("{} $summary documents written to {path}", out.len());
        }
    }
    assert!(n >= 30, "only {n} summaries exported");
    assert!(
        failures.is_empty(),
        "{} of {n} exports fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every value of `v` that is a float, by path (none is expected in a wire or stored type: the
/// decoder `edge_proto::cbor` uses takes a float only at its own width, and `ciborium` writes
/// floats at the narrowest width that keeps them).
fn floats(v: &ciborium::Value, path: &str, out: &mut Vec<String>) {
    match v {
        ciborium::Value::Float(_) => out.push(path.to_owned()),
        ciborium::Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                floats(x, &format!("{path}[{i}]"), out);
            }
        }
        ciborium::Value::Map(m) => {
            for (k, x) in m {
                floats(x, &format!("{path}.{k:?}"), out);
            }
        }
        ciborium::Value::Tag(_, x) => floats(x, path, out),
        _ => {}
    }
}

/// The decoder (`cbor4ii`, for speed) reads back exactly what the encoder (`ciborium`, whose
/// bytes digests are computed over) wrote, for every corpus summary and view, and agrees with
/// `ciborium`'s own decoder; none of them holds a float.
#[test]
fn every_corpus_summary_decodes_the_same_with_both_decoders() {
    let mut n = 0;
    for (name, case) in &cases() {
        for s in run_case(name, case) {
            for shown in [s.clone(), redact(&s, false), redact(&s, true)] {
                n += 1;
                let bytes = edge_proto::cbor::encode_summary(&shown).unwrap();
                let fast = edge_proto::cbor::decode_summary(&bytes).unwrap();
                let slow: Summary = ciborium::from_reader(&bytes[..]).unwrap();
                assert_eq!(fast, slow, "{name}");
                assert_eq!(fast, shown, "{name}");
                let v: ciborium::Value = ciborium::from_reader(&bytes[..]).unwrap();
                let mut f = Vec::new();
                floats(&v, "summary", &mut f);
                assert!(f.is_empty(), "{name}: floats at {f:?}");
            }
        }
    }
    assert!(n >= 90, "{n} summaries");
}
