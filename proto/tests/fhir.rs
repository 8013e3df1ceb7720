//! FHIR R4 ↔ summary: ingest, merging of several sources, empty reasons, narrative items, the
//! `$summary` round trip, CBOR, and every class of bad input with its error.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use edge_proto::assemble::{self, from_contribution};
use edge_proto::cbor;
use edge_proto::fhir::export::summary_document;
use edge_proto::fhir::ingest::{parse_bundle, parse_bundle_json, IngestError};
use edge_proto::model::*;
use edge_proto::nhs::NhsNumberError;
use edge_proto::time::UnixMillis;
use serde_json::{json, Value};

const NHS: &str = "9990000018";

fn patient(nhs: &str, updated: &str) -> Value {
    json!({"fullUrl": "urn:uuid:p1", "resource": {
        "resourceType": "Patient", "id": "p1",
        "meta": {"lastUpdated": updated},
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": nhs,
            "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus",
                "valueCodeableConcept": {"coding": [{"system": "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland", "code": "01"}]}}]}],
        "name": [{"use": "official", "family": "Okafor", "given": ["Zoë", "Ada"]}],
        "gender": "female", "birthDate": "1941-03-07",
        "address": [{"postalCode": "SE5 8AF"}],
        "generalPractitioner": [{"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "G85001"}}]
    }})
}

fn provenance(ods: &str, name: &str, targets: &[&str]) -> Value {
    json!({"fullUrl": format!("urn:uuid:prov-{ods}"), "resource": {
        "resourceType": "Provenance",
        "target": targets.iter().map(|t| json!({"reference": t})).collect::<Vec<_>>(),
        "recorded": "2024-11-02T10:00:00Z",
        "agent": [{"who": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}, "display": name}}]
    }})
}

fn allergy(
    id: &str,
    code: Option<(&str, &str)>,
    text: Option<&str>,
    updated: &str,
    version: &str,
) -> Value {
    let mut c = json!({});
    if let Some((code, display)) = code {
        c["coding"] =
            json!([{"system": "http://snomed.info/sct", "code": code, "display": display}]);
    }
    if let Some(t) = text {
        c["text"] = json!(t);
    }
    json!({"fullUrl": format!("urn:uuid:{id}"), "resource": {
        "resourceType": "AllergyIntolerance", "id": id,
        "meta": {"versionId": version, "lastUpdated": updated, "source": "urn:kerbside:system:emis-web"},
        "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical", "code": "active"}]},
        "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification", "code": "confirmed"}]},
        "category": ["medication"], "criticality": "high", "code": c,
        "patient": {"reference": "urn:uuid:p1"},
        "recordedDate": "2019-12-10",
        "reaction": [{"manifestation": [{"coding": [{"system": "http://snomed.info/sct", "code": "39579001", "display": "Anaphylaxis"}]}], "severity": "severe"}]
    }})
}

fn bundle(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "collection", "timestamp": "2024-11-02T10:00:00Z", "entry": entries})
}

/// A rich bundle from two sources: GP (G85001) and a trust (RJ1).
fn rich() -> Value {
    bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        allergy(
            "a1",
            Some(("91936005", "Allergy to penicillin")),
            None,
            "2024-03-01T09:00:00Z",
            "1",
        ),
        allergy(
            "a2",
            None,
            Some("Reacts badly to sticking plasters"),
            "2024-03-02T09:00:00Z",
            "1",
        ),
        json!({"fullUrl": "urn:uuid:m1", "resource": {
            "resourceType": "MedicationStatement", "id": "m1", "status": "active",
            "meta": {"versionId": "2", "lastUpdated": "2024-05-01T08:00:00Z", "source": "urn:kerbside:system:emis-web"},
            "medicationCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "319740004", "display": "Warfarin 1mg tablets"}]},
            "subject": {"reference": "urn:uuid:p1"}, "effectivePeriod": {"start": "2020-01-01"},
            "dosage": [{"text": "As directed by anticoagulant clinic", "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006", "display": "Oral"}]}}],
            "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationStatementLastIssueDate", "valueDateTime": "2024-04-20"}],
            "informationSource": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "G85001"}}
        }}),
        json!({"fullUrl": "urn:uuid:m2", "resource": {
            "resourceType": "MedicationStatement", "id": "m2", "status": "active",
            "meta": {"lastUpdated": "2024-05-01T08:00:00Z"},
            "medicationCodeableConcept": {"text": "Herbal remedy (brought in by family)"},
            "subject": {"reference": "urn:uuid:p1"}
        }}),
        json!({"fullUrl": "urn:uuid:c1", "resource": {
            "resourceType": "Condition", "id": "c1",
            "meta": {"lastUpdated": "2023-02-01T08:00:00Z"},
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": "49436004", "display": "Atrial fibrillation"}]},
            "subject": {"reference": "urn:uuid:p1"}, "onsetDateTime": "2019",
            "extension": [{"url": "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-ProblemSignificance", "valueCode": "major"}]
        }}),
        json!({"fullUrl": "urn:uuid:r1", "resource": {
            "resourceType": "Consent", "id": "r1", "status": "active",
            "meta": {"lastUpdated": "2024-06-01T08:00:00Z"},
            "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "adr"}]},
            "category": [{"coding": [{"system": "http://loinc.org", "code": "75320-2"}]}],
            "patient": {"reference": "urn:uuid:p1"}, "dateTime": "2024-05-30",
            "performer": [{"display": "Dr A Consultant"}],
            "provision": {"code": [{"coding": [{"system": "http://snomed.info/sct", "code": "450476008", "display": "Not for attempted cardiopulmonary resuscitation"}]}], "period": {"end": "2025-05-30"}}
        }}),
        json!({"fullUrl": "urn:uuid:d1", "resource": {
            "resourceType": "DocumentReference", "id": "d1", "status": "current",
            "meta": {"lastUpdated": "2024-06-01T08:00:00Z"},
            "type": {"coding": [{"system": "http://snomed.info/sct", "code": "1382601000000107", "display": "ReSPECT form"}]},
            "subject": {"reference": "urn:uuid:p1"}, "date": "2024-05-30T10:00:00Z",
            "custodian": {"identifier": {"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": "RJ1"}},
            "description": "Preferred place of care: home. Ceiling of treatment: ward-based care.",
            "content": [{"attachment": {"url": "https://ucp.example.invalid/plan/123"}}]
        }}),
        json!({"fullUrl": "urn:uuid:f1", "resource": {
            "resourceType": "Flag", "id": "f1", "status": "active",
            "meta": {"lastUpdated": "2024-06-01T08:00:00Z"},
            "code": {"text": "Profoundly deaf: uses BSL"}, "subject": {"reference": "urn:uuid:p1"},
            "period": {"start": "2022-01-01"}
        }}),
        json!({"fullUrl": "urn:uuid:o1", "resource": {"resourceType": "Observation", "id": "o1"}}),
        provenance(
            "G85001",
            "The Surgery",
            &[
                "urn:uuid:a1",
                "urn:uuid:a2",
                "urn:uuid:m1",
                "urn:uuid:m2",
                "urn:uuid:c1",
            ],
        ),
        provenance(
            "RJ1",
            "Guy's and St Thomas'",
            &["urn:uuid:r1", "urn:uuid:d1", "urn:uuid:f1"],
        ),
    ])
}

fn assemble_one(b: &Value) -> Summary {
    from_contribution(
        &parse_bundle(b).expect("bundle ingests"),
        UnixMillis(1_730_541_600_000),
    )
}

#[test]
fn rich_bundle_maps_every_part() {
    let c = parse_bundle(&rich()).unwrap();
    assert_eq!(c.skipped, 1, "the Observation is skipped, not an error");
    let s = from_contribution(&c, UnixMillis(1));
    assert_eq!(s.nhs_number.as_digits(), NHS);
    assert_eq!(s.patient.family, "Okafor");
    assert_eq!(s.patient.given, vec!["Zoë", "Ada"]);
    assert_eq!(s.patient.postcode.as_deref(), Some("SE5 8AF"));
    assert_eq!(
        s.patient.gp_practice.as_ref().map(|o| o.as_str()),
        Some("G85001")
    );
    assert_eq!(s.patient.nhs_verification.as_deref(), Some("01"));

    assert_eq!(s.allergies.status, SectionStatus::Entries);
    assert_eq!(s.allergies.entries.len(), 2);
    let a = &s.allergies.entries[0];
    assert_eq!(a.criticality, Some(Criticality::High));
    assert_eq!(a.reactions[0].severity, Some(Severity::Severe));
    assert_eq!(a.reactions[0].manifestation.label(), "Anaphylaxis");
    assert_eq!(a.provenance.source_ods.as_str(), "G85001");
    assert_eq!(a.provenance.source_name.as_deref(), Some("The Surgery"));
    assert_eq!(
        a.provenance.system.as_deref(),
        Some("urn:kerbside:system:emis-web")
    );
    // Narrative-only items are kept.
    let text_only = &s.allergies.entries[1];
    assert!(text_only.concept.coding.is_none());
    assert_eq!(
        text_only.concept.label(),
        "Reacts badly to sticking plasters"
    );

    assert_eq!(s.medications.entries.len(), 2);
    let w = &s.medications.entries[0];
    assert!(w.high_risk.is_some(), "warfarin is a high-risk medicine");
    assert_eq!(
        w.last_issued.as_ref().map(|d| d.as_str()),
        Some("2024-04-20")
    );
    assert_eq!(
        w.dosage.as_deref(),
        Some("As directed by anticoagulant clinic")
    );
    assert_eq!(
        s.medications.entries[1].concept.label(),
        "Herbal remedy (brought in by family)"
    );

    assert_eq!(
        s.conditions.entries[0].significance,
        Some(Significance::Major)
    );
    let r = &s.resuscitation.entries[0];
    assert_eq!(r.decision.snomed(), Some("450476008"));
    assert_eq!(r.review.as_ref().map(|d| d.as_str()), Some("2025-05-30"));
    assert_eq!(r.decision_maker.as_deref(), Some("Dr A Consultant"));
    assert_eq!(r.provenance.source_ods.as_str(), "RJ1");
    assert!(s.care_plans.entries[0]
        .extract
        .as_deref()
        .unwrap()
        .contains("Ceiling of treatment"));
    assert_eq!(
        s.alerts.entries[0].flag.label(),
        "Profoundly deaf: uses BSL"
    );
    assert!(s.is_flagged());
    let ods: Vec<&str> = s.sources.iter().map(|x| x.ods.as_str()).collect();
    assert_eq!(ods, vec!["G85001", "RJ1"]);
}

#[test]
fn empty_reasons_are_distinct() {
    // No allergy resources at all: no information, not "none".
    let s = assemble_one(&bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        provenance("G85001", "GP", &[]),
    ]));
    for st in [
        s.allergies.status,
        s.medications.status,
        s.conditions.status,
        s.resuscitation.status,
    ] {
        assert_eq!(st, SectionStatus::NoInformation);
    }
    // A recorded "no known allergy" is none_known, with its source, and not an entry.
    let s = assemble_one(&bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        allergy(
            "nka",
            Some(("716186003", "No known allergy")),
            None,
            "2024-02-01T00:00:00Z",
            "1",
        ),
        provenance("G85001", "GP", &["urn:uuid:nka"]),
    ]));
    assert_eq!(s.allergies.status, SectionStatus::NoneKnown);
    assert!(s.allergies.entries.is_empty());
    assert_eq!(
        s.allergies.basis[0]
            .provenance
            .as_ref()
            .unwrap()
            .source_ods
            .as_str(),
        "G85001"
    );
    assert_eq!(s.medications.status, SectionStatus::NoInformation);
}

#[test]
fn sources_merge_and_updates_replace() {
    let now = UnixMillis(10);
    let mut s = assemble_one(&rich());
    // Re-ingesting the same bundle changes nothing: no new version.
    let again = parse_bundle(&rich()).unwrap();
    assert!(!assemble::apply(&mut s, &again).unwrap());

    // A second source adds an allergy; the first keeps its own.
    let other = bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        allergy(
            "x9",
            Some(("300916003", "Latex allergy")),
            None,
            "2024-07-01T00:00:00Z",
            "1",
        ),
        provenance("RJZ", "King's", &["urn:uuid:x9"]),
    ]);
    assert!(assemble::apply(&mut s, &parse_bundle(&other).unwrap()).unwrap());
    assert_eq!(s.allergies.entries.len(), 3);
    assert_eq!(s.sources.len(), 3);

    // The GP updates a1 (newer lastUpdated, version 2): replaced, not duplicated.
    let mut upd = allergy(
        "a1",
        Some(("91936005", "Allergy to penicillin")),
        None,
        "2024-08-01T00:00:00Z",
        "2",
    );
    upd["resource"]["criticality"] = json!("low");
    let b = bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        upd,
        provenance("G85001", "The Surgery", &["urn:uuid:a1"]),
    ]);
    assert!(assemble::apply(&mut s, &parse_bundle(&b).unwrap()).unwrap());
    assert_eq!(s.allergies.entries.len(), 3);
    let a1 = s
        .allergies
        .entries
        .iter()
        .find(|a| a.provenance.record_id == "a1")
        .unwrap();
    assert_eq!(a1.criticality, Some(Criticality::Low));
    assert_eq!(a1.provenance.record_version.as_deref(), Some("2"));

    // An older version arriving late is ignored.
    let old = allergy(
        "a1",
        Some(("91936005", "Allergy to penicillin")),
        None,
        "2024-01-01T00:00:00Z",
        "0",
    );
    let b = bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        old,
        provenance("G85001", "The Surgery", &["urn:uuid:a1"]),
    ]);
    assert!(!assemble::apply(&mut s, &parse_bundle(&b).unwrap()).unwrap());

    // The same record id from a different source is a different item.
    let same_id = allergy(
        "a1",
        Some(("91936005", "Allergy to penicillin")),
        None,
        "2024-01-01T00:00:00Z",
        "1",
    );
    let b = bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        same_id,
        provenance("RJ1", "GSTT", &["urn:uuid:a1"]),
    ]);
    assert!(assemble::apply(&mut s, &parse_bundle(&b).unwrap()).unwrap());
    assert_eq!(s.allergies.entries.len(), 4);

    // entered-in-error removes the item.
    let mut eie = allergy(
        "x9",
        Some(("300916003", "Latex allergy")),
        None,
        "2024-09-01T00:00:00Z",
        "2",
    );
    eie["resource"]["verificationStatus"]["coding"][0]["code"] = json!("entered-in-error");
    let b = bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        eie,
        provenance("RJZ", "King's", &["urn:uuid:x9"]),
    ]);
    assert!(assemble::apply(&mut s, &parse_bundle(&b).unwrap()).unwrap());
    assert_eq!(s.allergies.entries.len(), 3);
    assert!(!s.sources.iter().any(|x| x.ods.as_str() == "RJZ"));
    let _ = now;
}

#[test]
fn a_real_allergy_supersedes_none_known_from_the_same_record() {
    let mut s = assemble_one(&bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        allergy(
            "g1",
            Some(("716186003", "No known allergy")),
            None,
            "2024-02-01T00:00:00Z",
            "1",
        ),
        provenance("G85001", "GP", &["urn:uuid:g1"]),
    ]));
    assert_eq!(s.allergies.status, SectionStatus::NoneKnown);
    let b = bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        allergy(
            "g1",
            Some(("91936005", "Allergy to penicillin")),
            None,
            "2024-03-01T00:00:00Z",
            "2",
        ),
        provenance("G85001", "GP", &["urn:uuid:g1"]),
    ]);
    assert!(assemble::apply(&mut s, &parse_bundle(&b).unwrap()).unwrap());
    assert_eq!(s.allergies.status, SectionStatus::Entries);
    assert!(s.allergies.basis.is_empty());
}

fn round_trip(s: &Summary) -> Summary {
    let doc = summary_document(s);
    let text = serde_json::to_string(&doc).unwrap();
    let c = parse_bundle_json(&text).expect("our own document ingests");
    let (version, at) = c
        .document_version
        .expect("document carries version and time");
    let mut back = from_contribution(&c, at);
    back.version = version;
    back
}

#[test]
fn summary_fhir_summary_is_identity() {
    let mut s = assemble_one(&rich());
    s.version = 42;
    // A restricted item keeps its label, and the summary is restricted because of it.
    s.alerts.entries[0].provenance.restricted = true;
    s.confidentiality = assemble::derive_confidentiality(&s);
    assert_eq!(s.confidentiality, Confidentiality::Restricted);
    assert_eq!(round_trip(&s), s);
    // none_known with a source, and document-level empty reasons, survive too.
    let mut s = assemble_one(&bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        allergy(
            "nka",
            Some(("716186003", "No known allergy")),
            None,
            "2024-02-01T00:00:00Z",
            "1",
        ),
        provenance("G85001", "GP", &["urn:uuid:nka"]),
    ]));
    s.medications.basis.push(Marker {
        status: SectionStatus::Withheld,
        concept: None,
        provenance: None,
    });
    s.medications.derive_status();
    assert_eq!(round_trip(&s), s);
}

/// Shapes the export once broke or lost, each sent by a source and mapped back unchanged: the
/// fixture the corpus export test also validates (`tests/fhir-validate/shapes.json`).
fn shapes() -> Value {
    let case: Value =
        serde_json::from_str(include_str!("../../tests/fhir-validate/shapes.json")).unwrap();
    case["steps"][0]["ingest"].clone()
}

#[test]
fn every_shape_survives_the_round_trip() {
    std::fs::write(
        "/tmp/shapes.json",
        serde_json::to_string_pretty(&shapes()).unwrap(),
    )
    .unwrap();
    let mut s = assemble_one(&shapes());
    s.version = 7;
    // What the bundle holds, as the model holds it.
    assert_eq!(s.patient.name_text.as_deref(), Some("Zoë Okafor-Adeyemi"));
    assert_eq!(s.patient.other_names.len(), 1);
    assert_eq!(s.patient.gp_name.as_deref(), Some("The Surgery"));
    assert_eq!(s.allergies.entries[0].clinical_status, None);
    let kinds: Vec<(bool, MedicationRecordKind)> = s
        .medications
        .entries
        .iter()
        .map(|m| (m.from_request, m.kind))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (false, MedicationRecordKind::Statement),
            (false, MedicationRecordKind::Statement),
            (true, MedicationRecordKind::Request),
            (true, MedicationRecordKind::Order),
        ]
    );
    assert!(s.medications.entries[1].form.is_some());
    assert_eq!(s.medications.entries[3].provenance.caveats.len(), 1);
    let resus: Vec<(Cpr, DecisionState, DecisionRecord)> = s
        .resuscitation
        .entries
        .iter()
        .map(|r| (r.cpr, r.state, r.record))
        .collect();
    assert_eq!(
        resus,
        vec![
            (
                Cpr::Unknown,
                DecisionState::Current,
                DecisionRecord::Consent
            ),
            (Cpr::ForCpr, DecisionState::Current, DecisionRecord::Consent),
            (
                Cpr::NotForCpr,
                DecisionState::Rescinded,
                DecisionRecord::Consent
            ),
            (
                Cpr::RespectPlan,
                DecisionState::Current,
                DecisionRecord::RespectForm
            ),
            (
                Cpr::NotForCpr,
                DecisionState::Current,
                DecisionRecord::DnacprForm
            ),
            (
                Cpr::NotForCpr,
                DecisionState::Current,
                DecisionRecord::CarePlan
            ),
        ]
    );
    assert_eq!(s.resuscitation.entries[3].form_cpr, Some(Cpr::NotForCpr));
    assert_eq!(s.care_plans.entries.len(), 2);
    assert_eq!(round_trip(&s), s);

    // The R4 and IPS rules the export once broke.
    let d = summary_document(&s);
    let res = |rt: &str| -> Vec<Value> {
        d["entry"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["resource"].clone())
            .filter(|r| r["resourceType"] == rt)
            .collect()
    };
    let intents: Vec<Value> = res("MedicationRequest")
        .iter()
        .map(|r| r["intent"].clone())
        .collect();
    assert_eq!(intents, vec![json!("plan"), json!("order")]);
    for m in res("MedicationStatement") {
        assert!(
            m.get("effectivePeriod").is_some() || m.get("_effectiveDateTime").is_some(),
            "{m}"
        );
    }
    assert_eq!(
        res("AllergyIntolerance")[0]["clinicalStatus"]["extension"][0]["valueCode"],
        "unknown"
    );
    let consents = res("Consent");
    assert_eq!(consents.len(), 3);
    for c in &consents {
        assert!(
            c.get("policyRule").is_some() || c.get("policy").is_some(),
            "{c}"
        );
    }
    assert!(consents[0]["provision"].get("type").is_none());
    assert_eq!(
        consents[0]["provision"]["_type"]["extension"][0]["valueCode"],
        "unknown"
    );
    assert_eq!(consents[1]["provision"]["type"], "permit");
    assert_eq!(consents[1]["policyRule"]["coding"][0]["code"], "OPTIN");
    assert_eq!(consents[2]["provision"]["type"], "deny");
    assert_eq!(consents[2]["status"], "rejected");
    // The ReSPECT form is one DocumentReference in both sections.
    assert_eq!(res("DocumentReference").len(), 2);
    assert_eq!(res("CarePlan").len(), 1);
    assert_eq!(res("Medication").len(), 1);
    let names = res("Patient")[0]["name"].clone();
    assert_eq!(names[0]["text"], "Zoë Okafor-Adeyemi");
    assert_eq!(names[1]["use"], "maiden");
}

#[test]
fn a_patient_without_a_name_or_birth_date_still_has_the_ips_elements() {
    let mut b = bundle(vec![patient(NHS, "2024-01-01T00:00:00Z")]);
    let p = &mut b["entry"][0]["resource"];
    p.as_object_mut().unwrap().remove("name");
    p.as_object_mut().unwrap().remove("birthDate");
    let s = assemble_one(&b);
    assert!(s.patient.family.is_empty() && s.patient.name_text.is_none());
    let d = summary_document(&s);
    let pat = &d["entry"][1]["resource"];
    assert_eq!(pat["name"], json!([{"text": "Name not recorded"}]));
    assert_eq!(pat["_birthDate"]["extension"][0]["valueCode"], "unknown");
}

#[test]
fn document_shape() {
    let s = assemble_one(&rich());
    let d = summary_document(&s);
    assert_eq!(d["type"], "document");
    let entries = d["entry"].as_array().unwrap();
    let comp = &entries[0]["resource"];
    assert_eq!(comp["resourceType"], "Composition");
    assert_eq!(comp["type"]["coding"][0]["code"], "60591-5");
    assert_eq!(entries[1]["resource"]["resourceType"], "Patient");
    let sections = comp["section"].as_array().unwrap();
    let codes: Vec<&str> = sections
        .iter()
        .map(|s| s["code"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(
        codes,
        vec!["48765-2", "10160-0", "11450-4", "42348-3", "18776-5", "104605-1"]
    );
    // Author and custodian: the hub's Organization, an entry of the bundle.
    let by_url = |u: &Value| {
        entries
            .iter()
            .find(|e| &e["fullUrl"] == u)
            .map(|e| e["resource"].clone())
            .unwrap_or_else(|| panic!("{u} is not an entry"))
    };
    let hub = by_url(&comp["custodian"]["reference"]);
    assert_eq!(hub["resourceType"], "Organization");
    assert_eq!(hub["name"], "Kerbside hub");
    assert_eq!(
        comp["author"][0]["reference"],
        comp["custodian"]["reference"]
    );
    // One Organization per source, with its ODS code and name, named by its Provenance.
    let orgs: Vec<(String, String)> = entries
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Organization" && r.get("identifier").is_some())
        .map(|r| {
            (
                r["identifier"][0]["value"].as_str().unwrap().to_owned(),
                r["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        orgs,
        vec![
            ("G85001".to_owned(), "The Surgery".to_owned()),
            ("RJ1".to_owned(), "Guy's and St Thomas'".to_owned())
        ]
    );
    let provs: Vec<&Value> = entries
        .iter()
        .map(|e| &e["resource"])
        .filter(|r| r["resourceType"] == "Provenance")
        .collect();
    assert_eq!(provs.len(), 2);
    for p in &provs {
        assert_eq!(
            by_url(&p["agent"][0]["who"]["reference"])["resourceType"],
            "Organization"
        );
    }
    // Every reference resolves, and every fullUrl is used once.
    let mut urls: Vec<&str> = entries
        .iter()
        .map(|e| e["fullUrl"].as_str().unwrap())
        .collect();
    urls.sort_unstable();
    let n = urls.len();
    urls.dedup();
    assert_eq!(urls.len(), n, "fullUrls are unique");
    let text = d.to_string();
    for r in text.split("\"reference\":\"").skip(1) {
        let r = &r[..r.find('"').unwrap()];
        assert!(urls.contains(&r), "{r} resolves to no entry");
    }
    // An empty section carries an empty reason, and a document of no items names no source.
    let e = assemble_one(&bundle(vec![patient(NHS, "2024-01-01T00:00:00Z")]));
    let d = summary_document(&e);
    let sec = &d["entry"][0]["resource"]["section"][0];
    assert_eq!(sec["emptyReason"]["coding"][0]["code"], "unavailable");
    assert!(sec.get("entry").is_none());
    let kinds: Vec<&str> = d["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["resourceType"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, vec!["Composition", "Patient", "Organization"]);
}

#[test]
fn cbor_round_trip_and_forward_compatibility() {
    let s = assemble_one(&rich());
    let bytes = cbor::encode_summary(&s).unwrap();
    assert_eq!(cbor::decode_summary(&bytes).unwrap(), s);

    // A newer writer adds fields at the same schema: an older reader ignores them.
    let mut v: ciborium::Value = ciborium::from_reader(bytes.as_slice()).unwrap();
    if let ciborium::Value::Map(m) = &mut v {
        m.push((
            ciborium::Value::Text("future_field".into()),
            ciborium::Value::Integer(7.into()),
        ));
    }
    let mut extended = Vec::new();
    ciborium::into_writer(&v, &mut extended).unwrap();
    assert_eq!(cbor::decode_summary(&extended).unwrap(), s);

    // A newer schema is refused clearly.
    let mut newer = s.clone();
    newer.schema = SCHEMA_VERSION + 1;
    let b = cbor::to_vec(&newer).unwrap();
    assert!(matches!(
        cbor::decode_summary(&b),
        Err(cbor::CborError::UnsupportedSchema { .. })
    ));

    // Garbage never panics.
    for junk in [
        &b""[..],
        &[0xff, 0x00],
        &[0xa1, 0x61],
        &bytes[..bytes.len() / 2],
    ] {
        assert!(cbor::decode_summary(junk).is_err());
    }
}

#[test]
fn bad_input_each_has_its_error() {
    let e = parse_bundle_json("{\"resourceType\": \"Bundle\", ").unwrap_err();
    assert!(matches!(e, IngestError::Json { line: 1, .. }), "{e}");

    let e = parse_bundle(&json!({"resourceType": "Patient"})).unwrap_err();
    assert!(matches!(e, IngestError::WrongResourceType { .. }), "{e}");

    let e = parse_bundle(&json!({"resourceType": "Bundle", "type": "history", "entry": []}))
        .unwrap_err();
    assert_eq!(e, IngestError::BundleType("history".into()));

    let e = parse_bundle(&bundle(vec![])).unwrap_err();
    assert_eq!(e, IngestError::NoPatient);

    let mut p = patient(NHS, "2024-01-01T00:00:00Z");
    p["resource"]["identifier"] = json!([]);
    let e = parse_bundle(&bundle(vec![p])).unwrap_err();
    assert_eq!(
        e,
        IngestError::NoNhsNumber {
            path: "Bundle.entry[0].resource.identifier".into()
        }
    );

    let e = parse_bundle(&bundle(vec![patient("9990000019", "2024-01-01T00:00:00Z")])).unwrap_err();
    assert_eq!(
        e,
        IngestError::InvalidNhsNumber {
            path: "Bundle.entry[0].resource.identifier[0].value".into(),
            reason: NhsNumberError::CheckDigit
        }
    );
    assert!(
        !e.to_string().contains("9990000019"),
        "errors never quote NHS numbers: {e}"
    );

    let e = parse_bundle(&bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        allergy(
            "a1",
            Some(("91936005", "Allergy to penicillin")),
            None,
            "2024-03-01T09:00:00Z",
            "1",
        ),
    ]))
    .unwrap_err();
    assert_eq!(
        e,
        IngestError::NoSource {
            path: "Bundle.entry[1].resource".into()
        }
    );

    // The same person twice is one patient; two people are two contributions, which the
    // one-patient convenience refuses (feeds use `ingest_bundle`, which splits them).
    let c = parse_bundle(&bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        patient(NHS, "2024-01-01T00:00:00Z"),
    ]))
    .unwrap();
    assert_eq!(c.nhs_number.as_digits(), NHS);
    let mut other = patient("9990000026", "2024-01-01T00:00:00Z");
    other["fullUrl"] = json!("urn:uuid:p2");
    other["resource"]["id"] = json!("p2");
    let e = parse_bundle(&bundle(vec![patient(NHS, "2024-01-01T00:00:00Z"), other])).unwrap_err();
    assert!(matches!(e, IngestError::SecondPatient { .. }));

    let mut a = allergy(
        "a1",
        Some(("91936005", "x")),
        None,
        "2024-03-01T09:00:00Z",
        "1",
    );
    a["resource"]["criticality"] = json!("extreme");
    let e = parse_bundle(&bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        a,
        provenance("G85001", "GP", &["urn:uuid:a1"]),
    ]))
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "Bundle.entry[1].resource.criticality: expected low, high or unable-to-assess"
    );

    let mut a = allergy("a1", Some(("91936005", "x")), None, "yesterday", "1");
    a["resource"]["code"] = json!(5);
    let e = parse_bundle(&bundle(vec![
        patient(NHS, "2024-01-01T00:00:00Z"),
        a,
        provenance("G85001", "GP", &["urn:uuid:a1"]),
    ]))
    .unwrap_err();
    assert!(
        e.to_string().starts_with("Bundle.entry[1].resource.code"),
        "{e}"
    );

    let mut p = patient(NHS, "2024-01-01T00:00:00Z");
    p["resource"]["birthDate"] = json!("07/03/1941");
    let e = parse_bundle(&bundle(vec![p])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "Bundle.entry[0].resource.birthDate: expected a FHIR date or dateTime"
    );

    let e = parse_bundle(
        &json!({"resourceType": "Bundle", "type": "collection", "entry": [{"fullUrl": "x"}]}),
    )
    .unwrap_err();
    assert!(matches!(
        e,
        IngestError::Missing {
            what: "resource",
            ..
        }
    ));

    let e = parse_bundle_json(&" ".repeat(9 * 1024 * 1024)).unwrap_err();
    assert!(matches!(e, IngestError::TooLarge(_)));
}
