//! Property: whatever the bundle, no item ends up under a patient other than its subject.
//!
//! Bundles are generated with one to three Patients (some retired into another, some with a
//! former number), and items whose subject is one of them (by `urn:uuid`, by `Patient/id`, by an
//! absolute URL, by an NHS-number identifier, by a former number), a patient outside the
//! bundle, or nobody. Each item's record id names the patient it is about, so every filed item
//! can be checked against the contribution it landed in.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use edge_proto::fhir::ingest::{ingest_bundle, IngestError, IngestOptions, Update};
use edge_proto::ids::SourceId;
use edge_proto::nhs::NhsNumber;
use proptest::prelude::*;
use serde_json::{json, Value};

/// Valid test-range numbers (Modulus 11).
fn numbers() -> Vec<String> {
    let mut out = Vec::new();
    let mut n: u64 = 9_990_000_000;
    while out.len() < 8 {
        n += 1;
        let s = n.to_string();
        if NhsNumber::parse(&s).is_ok() {
            out.push(s);
        }
    }
    out
}

#[derive(Debug, Clone)]
enum SubjectForm {
    Urn,
    TypeId,
    Absolute,
    Identifier,
    FormerIdentifier,
}

#[derive(Debug, Clone)]
enum About {
    /// One of the bundle's Patients (index), written in some form.
    Patient(usize, SubjectForm),
    /// Someone not in the bundle.
    Outsider,
    /// No subject at all.
    Nobody,
}

#[derive(Debug, Clone)]
struct Spec {
    patients: usize,
    /// Patient k (k ≥ 1) retired into patient 0.
    retired: Vec<bool>,
    items: Vec<(u8, About)>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (1usize..=3).prop_flat_map(|n| {
        let form = prop_oneof![
            Just(SubjectForm::Urn),
            Just(SubjectForm::TypeId),
            Just(SubjectForm::Absolute),
            Just(SubjectForm::Identifier),
            Just(SubjectForm::FormerIdentifier),
        ];
        let about = prop_oneof![
            6 => (0..n, form).prop_map(|(k, f)| About::Patient(k, f)),
            1 => Just(About::Outsider),
            1 => Just(About::Nobody),
        ];
        (
            Just(n),
            proptest::collection::vec(any::<bool>(), n),
            proptest::collection::vec((0u8..6, about), 0..8),
        )
            .prop_map(|(patients, retired, items)| Spec {
                patients,
                retired,
                items,
            })
    })
}

fn build(s: &Spec) -> Value {
    let nums = numbers();
    let mut entries = Vec::new();
    for k in 0..s.patients {
        let mut ids =
            vec![json!({"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nums[k]})];
        // Each patient has a former number too.
        ids.push(json!({"use": "old", "system": "https://fhir.nhs.uk/Id/nhs-number", "value": nums[k + 4]}));
        let mut p = json!({"resourceType": "Patient", "id": format!("pat{k}"),
            "meta": {"lastUpdated": "2025-01-01T00:00:00Z"},
            "identifier": ids, "name": [{"family": format!("Family{k}")}]});
        if k > 0 && s.retired[k] {
            p["active"] = json!(false);
            p["link"] = json!([{"type": "replaced-by", "other": {"reference": "urn:uuid:p0"}}]);
        }
        entries.push(json!({"fullUrl": format!("urn:uuid:p{k}"), "resource": p}));
    }
    for (i, (kind, about)) in s.items.iter().enumerate() {
        let (subject, tag) = match about {
            About::Patient(k, f) => (
                Some(match f {
                    SubjectForm::Urn => json!({"reference": format!("urn:uuid:p{k}")}),
                    SubjectForm::TypeId => json!({"reference": format!("Patient/pat{k}")}),
                    SubjectForm::Absolute => {
                        json!({"reference": format!("https://ehr.example.nhs.uk/fhir/Patient/pat{k}/_history/2")})
                    }
                    SubjectForm::Identifier => {
                        json!({"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nums[*k]}})
                    }
                    SubjectForm::FormerIdentifier => {
                        json!({"identifier": {"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nums[k + 4]}})
                    }
                }),
                format!("p{k}"),
            ),
            About::Outsider => (
                Some(json!({"reference": "Patient/someone-else"})),
                "out".into(),
            ),
            About::Nobody => (None, "none".into()),
        };
        let id = format!("item{i}-{tag}");
        let code = json!({"text": format!("thing {i}")});
        let (rt, field, mut r) = match kind {
            0 => ("AllergyIntolerance", "patient", json!({"code": code})),
            1 => ("Condition", "subject", json!({"code": code})),
            2 => (
                "MedicationStatement",
                "subject",
                json!({"status": "active", "medicationCodeableConcept": code}),
            ),
            3 => ("Flag", "subject", json!({"status": "active", "code": code})),
            4 => (
                "DocumentReference",
                "subject",
                json!({"status": "current", "type": code}),
            ),
            _ => (
                "Consent",
                "patient",
                json!({"status": "active",
                "scope": {"coding": [{"code": "adr"}]}, "provision": {"code": [code]}}),
            ),
        };
        r["resourceType"] = json!(rt);
        r["id"] = json!(id);
        r["meta"] = json!({"lastUpdated": "2025-02-01T00:00:00Z"});
        if let Some(sj) = subject {
            r[field] = sj;
        }
        entries.push(json!({"fullUrl": format!("urn:uuid:{id}"), "resource": r}));
    }
    json!({"resourceType": "Bundle", "type": "collection", "timestamp": "2025-03-01T00:00:00Z", "entry": entries})
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn no_item_is_filed_under_anyone_but_its_subject(s in spec()) {
        let nums = numbers();
        let opts = IngestOptions {
            default_source: Some(SourceId::parse("Y03124").unwrap()),
            ..IngestOptions::default()
        };
        let b = build(&s);
        match ingest_bundle(&b, &opts) {
            Ok(ing) => {
                for c in &ing.contributions {
                    for u in &c.updates {
                        let Update::Item(item) = u else { continue };
                        let id = &item.provenance().record_id;
                        let tag = id.rsplit('-').next().unwrap();
                        let Some(k) = tag.strip_prefix('p').and_then(|k| k.parse::<usize>().ok()) else {
                            // Only a one-patient bundle files an item with no subject (under its
                            // only Patient); an outsider's item is never filed.
                            prop_assert_eq!(tag, "none", "{} filed", id);
                            prop_assert_eq!(ing.contributions.len(), 1);
                            continue;
                        };
                        // Filed under the patient it is about, or, for a retired record, under
                        // the record that replaced it.
                        let home = if k > 0 && s.retired[k] { 0 } else { k };
                        prop_assert_eq!(c.nhs_number.as_digits(), nums[home].as_str(), "{} filed elsewhere", id);
                    }
                }
                // Every outsider's item was rejected alone.
                let outsiders = s.items.iter().filter(|(_, a)| matches!(a, About::Outsider)).count();
                prop_assert_eq!(ing.rejected_items.len(), outsiders);
            }
            Err(IngestError::Unsplittable { .. }) => {
                // Refused only when the bundle holds several people and some item names none.
                let people = (0..s.patients).filter(|&k| k == 0 || !s.retired[k]).count();
                prop_assert!(people > 1);
                prop_assert!(s.items.iter().any(|(_, a)| matches!(a, About::Outsider | About::Nobody)));
            }
            Err(e) => prop_assert!(false, "unexpected refusal: {}", e),
        }
    }
}
