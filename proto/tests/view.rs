//! The clinical view of summaries built from real-world shapes: resuscitation decisions
//! (DNACPR as a Consent deny, nested provisions, conflicts, rescinded, ReSPECT), current and
//! past groups, folded medicines, empty reasons, restricted items, expired alerts, care plans.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use edge_proto::assemble::{apply, from_contribution};
use edge_proto::fhir::ingest::{ingest_bundle, IngestOptions};
use edge_proto::ids::SourceId;
use edge_proto::model::{Cpr, DecisionState, SectionStatus, Summary};
use edge_proto::time::UnixMillis;
use edge_proto::view::{clinical_view, ResusState, View};
use serde_json::{json, Value};

const NHS: &str = "9990000018";
const SCT: &str = "http://snomed.info/sct";

fn now() -> UnixMillis {
    UnixMillis::parse_rfc3339("2026-12-04T10:00:00Z").unwrap()
}

fn org(id: &str, ods: &str, name: &str) -> Value {
    json!({"fullUrl": format!("urn:uuid:{id}"), "resource": {"resourceType": "Organization", "id": id,
        "identifier": [{"system": "https://fhir.nhs.uk/Id/ods-organization-code", "value": ods}], "name": name}})
}

fn bundle(ts: &str, items: Vec<Value>) -> Value {
    let mut entries = vec![
        json!({"fullUrl": "urn:uuid:p1", "resource": {"resourceType": "Patient", "id": "p1",
        "meta": {"lastUpdated": "2025-01-01T00:00:00Z"},
        "identifier": [{"system": "https://fhir.nhs.uk/Id/nhs-number", "value": NHS}],
        "name": [{"family": "Okafor", "given": ["Ada"]}]}}),
    ];
    entries.extend(items);
    json!({"resourceType": "Bundle", "type": "collection", "timestamp": ts, "entry": entries})
}

fn item(id: &str, mut r: Value, org_ref: Option<&str>, updated: &str) -> Value {
    let rt = r["resourceType"].as_str().unwrap().to_owned();
    r["id"] = json!(id);
    r["meta"] = json!({"lastUpdated": updated});
    let field = if rt == "AllergyIntolerance" || rt == "Consent" {
        "patient"
    } else {
        "subject"
    };
    r[field] = json!({"reference": "urn:uuid:p1"});
    if let Some(o) = org_ref {
        let f = match rt.as_str() {
            "Consent" => "organization",
            "Flag" => "author",
            "DocumentReference" => "custodian",
            "MedicationStatement" => "informationSource",
            "MedicationRequest" => "requester",
            _ => "recorder",
        };
        r[f] = if f == "organization" {
            json!([{"reference": format!("urn:uuid:{o}")}])
        } else {
            json!({"reference": format!("urn:uuid:{o}")})
        };
    }
    json!({"fullUrl": format!("urn:uuid:{id}"), "resource": r})
}

fn summary(bundles: &[Value]) -> Summary {
    let opts = IngestOptions {
        default_source: Some(SourceId::parse("Y03124").unwrap()),
        now: Some(now()),
        ..IngestOptions::default()
    };
    let mut s: Option<Summary> = None;
    for b in bundles {
        let ing = ingest_bundle(b, &opts).unwrap_or_else(|e| panic!("{e}"));
        let c = &ing.contributions[0];
        match &mut s {
            None => s = Some(from_contribution(c, now())),
            Some(s) => {
                apply(s, c).unwrap();
            }
        }
    }
    s.unwrap()
}

fn view(bundles: &[Value]) -> View {
    clinical_view(&summary(bundles), now(), false)
}

fn consent(ty: &str, code: &str, status: &str, date: &str) -> Value {
    json!({"resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "adr"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "dateTime": date,
        "provision": {"type": ty, "code": [{"coding": [{"system": SCT, "code": code, "display": "Cardiopulmonary resuscitation"}]}]}})
}

#[test]
fn a_consent_deny_for_cpr_is_not_for_cpr_in_words() {
    let v = view(&[bundle(
        "2025-03-02T10:00:00Z",
        vec![
            org("kch", "RJZ", "King's College Hospital"),
            item(
                "c1",
                consent("deny", "89666000", "active", "2025-03-01"),
                Some("kch"),
                "2025-03-01T12:00:00Z",
            ),
        ],
    )]);
    let d = &v.resuscitation.decision;
    assert_eq!(d.state, ResusState::NotForCpr);
    assert_eq!(
        d.headline,
        "NOT FOR CPR — DNACPR, 1 March 2025, King's College Hospital"
    );
    assert_eq!(v.resuscitation.entries[0].cpr, Cpr::NotForCpr);
}

#[test]
fn nested_provisions_and_permit() {
    let mut c = consent("permit", "89666000", "active", "2025-03-01");
    // Root permits treatment; a nested provision denies CPR.
    c["provision"] = json!({"type": "permit", "provision": [
        {"type": "deny", "code": [{"coding": [{"system": SCT, "code": "89666000"}]}]}]});
    let v = view(&[bundle(
        "2025-03-02T10:00:00Z",
        vec![item("c1", c, None, "2025-03-01T12:00:00Z")],
    )]);
    assert_eq!(v.resuscitation.decision.state, ResusState::NotForCpr);
    let v = view(&[bundle(
        "2025-03-02T10:00:00Z",
        vec![item(
            "c1",
            consent("permit", "89666000", "active", "2025-03-01"),
            None,
            "2025-03-01T12:00:00Z",
        )],
    )]);
    assert_eq!(v.resuscitation.decision.state, ResusState::ForCpr);
    assert!(v.resuscitation.decision.headline.starts_with("FOR CPR"));
}

#[test]
fn no_decision_is_never_for_cpr_and_rescinded_is_history() {
    let v = view(&[bundle("2025-03-02T10:00:00Z", vec![])]);
    assert_eq!(v.resuscitation.decision.state, ResusState::NoDecision);
    assert_eq!(
        v.resuscitation.decision.headline,
        "No resuscitation decision recorded"
    );
    let v = view(&[
        bundle(
            "2025-03-02T10:00:00Z",
            vec![item(
                "c1",
                consent("deny", "89666000", "active", "2025-03-01"),
                None,
                "2025-03-01T12:00:00Z",
            )],
        ),
        bundle(
            "2025-06-02T10:00:00Z",
            vec![item(
                "c1",
                consent("deny", "89666000", "inactive", "2025-03-01"),
                None,
                "2025-06-01T12:00:00Z",
            )],
        ),
    ]);
    assert_eq!(v.resuscitation.decision.state, ResusState::NoDecision);
    assert_eq!(v.resuscitation.history[0].state, DecisionState::Rescinded);
}

#[test]
fn disagreeing_sources_are_a_conflict() {
    let v = view(&[bundle(
        "2025-03-02T10:00:00Z",
        vec![
            org("gp", "F84001", "The Surgery"),
            org("kch", "RJZ", "King's College Hospital"),
            item(
                "c1",
                consent("deny", "89666000", "active", "2025-03-01"),
                Some("gp"),
                "2025-03-01T12:00:00Z",
            ),
            item(
                "c2",
                consent("permit", "89666000", "active", "2025-02-01"),
                Some("kch"),
                "2025-02-01T12:00:00Z",
            ),
        ],
    )]);
    assert_eq!(v.resuscitation.decision.state, ResusState::Conflict);
    assert_eq!(v.resuscitation.entries.len(), 2);
    assert!(v.resuscitation.decision.headline.contains("The Surgery"));
    assert!(v
        .resuscitation
        .decision
        .headline
        .contains("King's College Hospital"));
}

#[test]
fn ips_absent_codes_are_statements_not_entries() {
    let absent = |code: &str| {
        json!({"resourceType": "AllergyIntolerance",
            "code": {"coding": [{"system": "http://hl7.org/fhir/uv/ips/CodeSystem/absent-unknown-uv-ips", "code": code}]}})
    };
    let v = view(&[bundle(
        "2025-03-02T10:00:00Z",
        vec![item(
            "a1",
            absent("no-allergy-info"),
            None,
            "2025-03-01T12:00:00Z",
        )],
    )]);
    assert_eq!(v.allergies.status, SectionStatus::NoInformation);
    assert!(v.allergies.entries.is_empty());
    let v = view(&[bundle(
        "2025-03-02T10:00:00Z",
        vec![item(
            "a1",
            absent("no-known-allergies"),
            None,
            "2025-03-01T12:00:00Z",
        )],
    )]);
    assert_eq!(v.allergies.status, SectionStatus::NoneKnown);
    assert!(v.allergies.basis[0].provenance.is_some());
}

#[test]
fn refuted_allergies_and_stopped_medicines_are_history() {
    let allergy = |vs: &str, cs: &str| {
        json!({"resourceType": "AllergyIntolerance", "criticality": "high",
            "clinicalStatus": {"coding": [{"code": cs}]}, "verificationStatus": {"coding": [{"code": vs}]},
            "code": {"coding": [{"system": SCT, "code": "91936005", "display": "Allergy to penicillin"}]}})
    };
    let warfarin = |status: &str, rt: &str, intent: Option<&str>| {
        let mut m = json!({"resourceType": rt, "status": status,
            "medicationCodeableConcept": {"coding": [{"system": SCT, "code": "42217511000001103", "display": "Warfarin 1mg tablets"}]},
            "dosage": [{"text": "As directed"}]});
        if let Some(i) = intent {
            m["intent"] = json!(i);
            m["dosageInstruction"] = m["dosage"].take();
        }
        m
    };
    let v = view(&[bundle(
        "2025-03-02T10:00:00Z",
        vec![
            item(
                "a1",
                allergy("refuted", "inactive"),
                None,
                "2025-03-01T12:00:00Z",
            ),
            item(
                "a2",
                allergy("confirmed", "resolved"),
                None,
                "2025-03-01T12:00:00Z",
            ),
            item(
                "m1",
                warfarin("active", "MedicationStatement", None),
                None,
                "2025-03-01T12:00:00Z",
            ),
            item(
                "m2",
                warfarin("active", "MedicationRequest", Some("plan")),
                None,
                "2025-03-01T12:00:00Z",
            ),
            item(
                "m3",
                warfarin("completed", "MedicationRequest", Some("order")),
                None,
                "2025-02-01T12:00:00Z",
            ),
            item(
                "m4",
                warfarin("completed", "MedicationRequest", Some("order")),
                None,
                "2025-01-01T12:00:00Z",
            ),
        ],
    )]);
    assert!(v.allergies.entries.is_empty());
    assert_eq!(v.allergies.past.len(), 2);
    assert_eq!(v.medications.entries.len(), 1, "{:#?}", v.medications);
    assert_eq!(v.medications.entries[0].records.len(), 4);
    assert!(v.medications.entries[0].high_risk.is_some());

    let mut stopped = warfarin("stopped", "MedicationStatement", None);
    stopped["effectivePeriod"] = json!({"start": "2020-01-01", "end": "2026-10-01"});
    let v = view(&[bundle(
        "2026-10-02T10:00:00Z",
        vec![item("m1", stopped, None, "2026-10-01T12:00:00Z")],
    )]);
    assert!(v.medications.entries.is_empty());
    assert_eq!(v.medications.stopped.len(), 1);
    assert!(v.medications.stopped[0].high_risk.is_none());
}

#[test]
fn restricted_items_are_withheld_and_expired_flags_are_past() {
    let mut cond =
        json!({"resourceType": "Condition", "code": {"text": "Restricted sexual-health item"}});
    cond["meta"] = json!({});
    let restricted = {
        let mut e = item("k1", cond, None, "2025-03-01T12:00:00Z");
        e["resource"]["meta"]["security"] = json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]);
        e
    };
    let flag = |id: &str, end: &str| {
        item(
            id,
            json!({"resourceType": "Flag", "status": "active", "code": {"text": "Risk to crew"}, "period": {"start": "2023-01-01", "end": end}}),
            None,
            "2025-03-01T12:00:00Z",
        )
    };
    let s = summary(&[
        bundle("2025-03-02T10:00:00Z", vec![restricted]),
        bundle(
            "2025-04-02T10:00:00Z",
            vec![flag("f1", "2024-06-30"), flag("f2", "2027-06-30")],
        ),
    ]);
    let v = clinical_view(&s, now(), false);
    assert_eq!(v.conditions.status, SectionStatus::Withheld);
    assert_eq!(v.conditions.withheld, 1);
    assert!(!serde_json::to_string(&v).unwrap().contains("sexual-health"));
    assert_eq!(
        s.confidentiality,
        edge_proto::model::Confidentiality::Restricted
    );
    let v = clinical_view(&s, now(), true);
    assert_eq!(v.conditions.entries.len(), 1);
    assert_eq!(v.alerts.entries.len(), 1);
    assert_eq!(v.alerts.past.len(), 1);
}

#[test]
fn shown_items_copies_only_when_something_is_withheld() {
    use edge_proto::view::{redact, shown_items, withholds};
    use std::borrow::Cow;
    let restricted = {
        let c = json!({"resourceType": "Condition", "code": {"text": "Restricted item"}});
        let mut e = item("c1", c, None, "2025-03-01T12:00:00Z");
        e["resource"]["meta"]["security"] = json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]);
        e
    };
    let plain = item(
        "c2",
        json!({"resourceType": "Condition", "code": {"text": "Asthma"}}),
        None,
        "2025-03-01T12:00:00Z",
    );
    let with = summary(&[bundle(
        "2025-03-02T10:00:00Z",
        vec![restricted, plain.clone()],
    )]);
    let without = summary(&[bundle("2025-03-02T10:00:00Z", vec![plain])]);
    assert!(withholds(&with, false));
    assert!(
        !withholds(&with, true),
        "the glass broken withholds nothing"
    );
    assert!(!withholds(&without, false));
    // Something withheld: the redacted copy, the restricted item gone.
    let shown = shown_items(&with, false);
    assert!(matches!(shown, Cow::Owned(_)));
    assert_eq!(
        shown.conditions.entries,
        redact(&with, false).conditions.entries
    );
    assert_eq!(shown.conditions.entries.len(), 1);
    // Nothing withheld: the summary itself, which is redact's copy but for the ledger (so a
    // rule added to redact and not to withholds fails here).
    for (s, bg) in [(&with, true), (&without, false), (&without, true)] {
        let shown = shown_items(s, bg);
        assert!(matches!(shown, Cow::Borrowed(_)));
        let mut whole = shown.into_owned();
        whole.ledger = Default::default();
        assert_eq!(whole, redact(s, bg));
    }
}

#[test]
fn only_care_plan_types_are_care_plans_and_replaced_ones_hide() {
    let doc = |ty: &str, display: &str| {
        json!({"resourceType": "DocumentReference", "status": "current",
            "type": {"coding": [{"system": SCT, "code": ty, "display": display}]},
            "date": "2025-03-01T10:00:00Z",
            "content": [{"attachment": {"url": "https://example.invalid/x"}}]})
    };
    let mut newer = doc("736373009", "End of life care plan");
    newer["relatesTo"] =
        json!([{"code": "replaces", "target": {"reference": "DocumentReference/d1"}}]);
    let v = view(&[bundle(
        "2025-03-02T10:00:00Z",
        vec![
            item(
                "d0",
                doc("373942005", "Discharge summary"),
                None,
                "2025-03-01T12:00:00Z",
            ),
            item(
                "d1",
                doc("736373009", "End of life care plan"),
                None,
                "2025-03-01T12:00:00Z",
            ),
            item("d2", newer, None, "2025-04-01T12:00:00Z"),
        ],
    )]);
    assert_eq!(v.care_plans.entries.len(), 1);
    assert_eq!(v.care_plans.superseded.len(), 1);
}
