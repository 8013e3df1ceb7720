//! Summary → FHIR R4 IPS-shaped document `Bundle` (the LAN `$summary` answer).
//!
//! Composition first (LOINC 60591-5) with every Kerbside section present and an `emptyReason`
//! when it is empty; then the Patient, the Kerbside hub's Organization (the Composition's author
//! and custodian), one Organization per source organisation, the items, the Medications they
//! name, and one Provenance per source organisation. Every reference resolves to an entry.
//! Identifiers use the UK Core systems. The R4 and IPS rules the document keeps, and why each
//! choice was made, are in `docs/fhir-mapping.md` ("Output: the `$summary` document"). Mapping
//! the output back through [`super::ingest::parse_bundle`] yields the same clinical content
//! (tested over the whole ingest corpus in `proto/tests/export_corpus.rs`).

use std::collections::{BTreeMap, BTreeSet};

use ring::digest;
use serde_json::{json, Map, Value};

use crate::codes;
use crate::fhir::{self, SectionKind};
use crate::ids::{OdsCode, SourceId};
use crate::model::*;

/// A stable `urn:uuid:` from a name (SHA-256 based, version nibble 8 = "custom").
pub fn stable_urn(name: &str) -> String {
    let d = digest::digest(&digest::SHA256, name.as_bytes());
    let b = d.as_ref();
    let h = hex::encode(&b[..16]);
    format!(
        "urn:uuid:{}-{}-8{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[16..20],
        &h[20..32]
    )
}

/// The name of the Organization that authors and keeps every `$summary` document.
pub const HUB_NAME: &str = "Kerbside hub";

/// FHIR's data-absent-reason extension.
const DAR: &str = "http://hl7.org/fhir/StructureDefinition/data-absent-reason";
const ALLERGY_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
const ALLERGY_VERIFICATION: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const CONDITION_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";
const CONDITION_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/condition-category";
const CONSENT_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/consentcategorycodes";
const V3_ACT_CODE: &str = "http://terminology.hl7.org/CodeSystem/v3-ActCode";
/// SNOMED CT 89666000 "Cardiopulmonary resuscitation": the action a DNACPR decision denies.
const CPR: (&str, &str) = ("89666000", "Cardiopulmonary resuscitation");
/// SNOMED CT codes that name CPR as a procedure (read with a provision's deny / permit).
const CPR_PROCEDURES: [&str; 3] = ["89666000", "439569004", "410415008"];

const MEDICATION_STATEMENT_STATUS: [&str; 8] = [
    "active",
    "completed",
    "entered-in-error",
    "intended",
    "stopped",
    "on-hold",
    "unknown",
    "not-taken",
];
const MEDICATION_REQUEST_STATUS: [&str; 8] = [
    "active",
    "on-hold",
    "cancelled",
    "completed",
    "entered-in-error",
    "stopped",
    "draft",
    "unknown",
];
const CARE_PLAN_STATUS: [&str; 6] = [
    "draft",
    "active",
    "on-hold",
    "revoked",
    "completed",
    "unknown",
];
const FLAG_STATUS: [&str; 2] = ["active", "inactive"];

fn dar(code: &str) -> Value {
    json!({"extension": [{"url": DAR, "valueCode": code}]})
}

fn cc(c: &Concept) -> Value {
    let mut m = Map::new();
    if let Some(coding) = &c.coding {
        let mut cm = Map::new();
        cm.insert("system".into(), json!(coding.system));
        cm.insert("code".into(), json!(coding.code));
        if let Some(d) = &coding.display {
            cm.insert("display".into(), json!(d));
        }
        m.insert("coding".into(), Value::Array(vec![Value::Object(cm)]));
    }
    if let Some(t) = &c.text {
        m.insert("text".into(), json!(t));
    }
    if m.is_empty() {
        // A concept with neither (not made by ingest): say so rather than send `{}`.
        m.insert("text".into(), json!(c.label()));
    }
    Value::Object(m)
}

fn coded(system: &str, code: &str, display: &str) -> Value {
    json!({"coding": [{"system": system, "code": code, "display": display}]})
}

fn status_cc(system: &str, code: &Option<String>) -> Option<Value> {
    code.as_ref()
        .map(|c| json!({"coding": [{"system": system, "code": c}]}))
}

/// A reference to an organisation known only by its ODS code (not an entry of the bundle).
fn ods_ref(ods: &OdsCode) -> Value {
    json!({"type": "Organization", "identifier": {"system": fhir::ODS, "value": ods.as_str()}})
}

fn source_identifier(id: &SourceId) -> Value {
    match id.as_ods() {
        Some(o) => json!({"system": fhir::ODS, "value": o.as_str()}),
        None => {
            let (system, value) = id.as_str().split_once('|').unwrap_or(("", id.as_str()));
            json!({"system": system, "value": value})
        }
    }
}

fn org_url(id: &SourceId) -> String {
    stable_urn(&format!("organization|{id}"))
}

fn hub_url() -> String {
    stable_urn("organization|kerbside-hub")
}

/// FHIR `id` rule: `[A-Za-z0-9\-\.]{1,64}`.
fn valid_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// The fullUrl of the resource an item is exported as: one per (type, source, record id), so
/// a ReSPECT form that is both a care plan and a resuscitation decision is one entry.
fn res_url(rt: &str, p: &Provenance) -> String {
    stable_urn(&format!("item|{rt}|{}|{}", p.source_ods, p.record_id))
}

fn put<T: serde::Serialize>(m: &mut Map<String, Value>, k: &str, v: &Option<T>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

/// Common header of an item resource: type, id and identifier (so that ingest finds the same
/// record id and resource id again), meta (with the restricted label), subject.
fn item_base(rt: &str, p: &Provenance, patient_ref: &str, subject_key: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("resourceType".into(), json!(rt));
    let id = p
        .resource_id
        .as_deref()
        .and_then(|r| r.split_once('/'))
        .filter(|(t, id)| *t == rt && valid_fhir_id(id))
        .map(|(_, id)| id);
    if let Some(id) = id {
        m.insert("id".into(), json!(id));
    }
    if id != Some(p.record_id.as_str()) {
        let ident = match p.record_id.split_once('|') {
            Some((system, value)) if !system.is_empty() => {
                json!({"system": system, "value": value})
            }
            _ => json!({"value": p.record_id}),
        };
        m.insert("identifier".into(), json!([ident]));
    }
    let mut meta = Map::new();
    if let Some(v) = &p.record_version {
        meta.insert("versionId".into(), json!(v));
    }
    meta.insert("lastUpdated".into(), json!(p.last_updated.to_rfc3339()));
    if let Some(s) = &p.system {
        meta.insert("source".into(), json!(s));
    }
    if p.restricted {
        meta.insert(
            "security".into(),
            json!([{"system": fhir::CONFIDENTIALITY, "code": "R", "display": "restricted"}]),
        );
    }
    m.insert("meta".into(), Value::Object(meta));
    m.insert(subject_key.into(), json!({"reference": patient_ref}));
    m
}

// ---------------------------------------------------------------------------------------------
// Items
// ---------------------------------------------------------------------------------------------

fn allergy(a: &Allergy, pr: &str) -> Value {
    let mut m = item_base("AllergyIntolerance", &a.provenance, pr, "patient");
    let in_error = a.verification_status.as_deref() == Some("entered-in-error");
    match status_cc(ALLERGY_CLINICAL, &a.clinical_status) {
        // ait-2: no clinical status on an entry in error.
        _ if in_error => {}
        Some(v) => {
            m.insert("clinicalStatus".into(), v);
        }
        // ait-1: the source sent none; say it is unknown rather than guess "active".
        None => {
            m.insert("clinicalStatus".into(), dar("unknown"));
        }
    }
    if let Some(v) = status_cc(ALLERGY_VERIFICATION, &a.verification_status) {
        m.insert("verificationStatus".into(), v);
    }
    if let Some(c) = a.category {
        m.insert("category".into(), json!([c]));
    }
    put(&mut m, "criticality", &a.criticality);
    m.insert("code".into(), cc(&a.concept));
    if !a.reactions.is_empty() {
        let rx: Vec<Value> = a
            .reactions
            .iter()
            .map(|r| {
                let mut o = Map::new();
                o.insert("manifestation".into(), json!([cc(&r.manifestation)]));
                put(&mut o, "severity", &r.severity);
                Value::Object(o)
            })
            .collect();
        m.insert("reaction".into(), Value::Array(rx));
    }
    put(&mut m, "onsetDateTime", &a.onset);
    put(&mut m, "recordedDate", &a.recorded);
    Value::Object(m)
}

/// A medicine: a MedicationRequest (with its intent) or a MedicationStatement (with its
/// effective time), and the Medication resource it names when the dose form is known.
fn medication(x: &Medication, pr: &str) -> (Value, Option<(String, Value)>) {
    let request = x.from_request;
    let rt = if request {
        "MedicationRequest"
    } else {
        "MedicationStatement"
    };
    let mut m = item_base(rt, &x.provenance, pr, "subject");
    let allowed: &[&str] = if request {
        &MEDICATION_REQUEST_STATUS
    } else {
        &MEDICATION_STATEMENT_STATUS
    };
    let status = x
        .status
        .as_deref()
        .filter(|s| allowed.contains(s))
        .unwrap_or("unknown");
    m.insert("status".into(), json!(status));
    if request {
        let intent = match x.kind {
            MedicationRecordKind::Order => "order",
            MedicationRecordKind::Request | MedicationRecordKind::Statement => "plan",
        };
        m.insert("intent".into(), json!(intent));
    }
    let unresolved = x.concept.coding.is_none()
        && x.provenance
            .caveats
            .iter()
            .any(|c| c.kind == CaveatKind::Unresolved && c.field == "medicationReference");
    let mut med = None;
    if unresolved {
        // The source named a Medication that could not be found: keep its words, as it did.
        m.insert(
            "medicationReference".into(),
            json!({"display": x.concept.label()}),
        );
    } else if let Some(form) = &x.form {
        let url = stable_urn(&format!("medication|{}", res_url(rt, &x.provenance)));
        m.insert(
            "medicationReference".into(),
            json!({"reference": url, "display": x.concept.label()}),
        );
        med = Some((
            url,
            json!({"resourceType": "Medication", "code": cc(&x.concept), "form": cc(form)}),
        ));
    } else {
        m.insert("medicationCodeableConcept".into(), cc(&x.concept));
    }
    if request {
        put(&mut m, "authoredOn", &x.started);
        if let Some(end) = &x.ended {
            m.insert(
                "dispenseRequest".into(),
                json!({"validityPeriod": {"end": end}}),
            );
        }
    } else if x.started.is_some() || x.ended.is_some() {
        let mut p = Map::new();
        put(&mut p, "start", &x.started);
        put(&mut p, "end", &x.ended);
        m.insert("effectivePeriod".into(), Value::Object(p));
    } else {
        // IPS requires effective[x]: the source did not say when.
        m.insert("_effectiveDateTime".into(), dar("unknown"));
    }
    if x.dosage.is_some() || x.route.is_some() {
        let mut d = Map::new();
        put(&mut d, "text", &x.dosage);
        if let Some(r) = &x.route {
            d.insert("route".into(), cc(r));
        }
        let key = if request {
            "dosageInstruction"
        } else {
            "dosage"
        };
        m.insert(key.into(), Value::Array(vec![Value::Object(d)]));
    }
    if let Some(li) = &x.last_issued {
        m.insert(
            "extension".into(),
            json!([{"url": fhir::EXT_LAST_ISSUE, "valueDateTime": li}]),
        );
    }
    if let Some(o) = &x.prescriber_ods {
        let key = if request {
            "requester"
        } else {
            "informationSource"
        };
        m.insert(key.into(), ods_ref(o));
    }
    (Value::Object(m), med)
}

fn condition(c: &Condition, pr: &str) -> Value {
    let mut m = item_base("Condition", &c.provenance, pr, "subject");
    if let Some(s) = c.significance {
        m.insert(
            "extension".into(),
            json!([{"url": fhir::EXT_SIGNIFICANCE, "valueCode": s}]),
        );
    }
    if let Some(v) = status_cc(CONDITION_CLINICAL, &c.clinical_status) {
        m.insert("clinicalStatus".into(), v);
    }
    if let Some(v) = status_cc(CONDITION_VERIFICATION, &c.verification_status) {
        m.insert("verificationStatus".into(), v);
    }
    m.insert(
        "category".into(),
        json!([{"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}]),
    );
    m.insert("code".into(), cc(&c.concept));
    put(&mut m, "onsetDateTime", &c.onset);
    put(&mut m, "recordedDate", &c.recorded);
    Value::Object(m)
}

fn alert(a: &Alert, pr: &str) -> Value {
    let mut m = item_base("Flag", &a.provenance, pr, "subject");
    let status = a
        .status
        .as_deref()
        .filter(|s| FLAG_STATUS.contains(s))
        .unwrap_or("active");
    m.insert("status".into(), json!(status));
    if let Some(c) = &a.category {
        m.insert("category".into(), json!([cc(c)]));
    }
    m.insert("code".into(), cc(&a.flag));
    if a.start.is_some() || a.end.is_some() {
        let mut p = Map::new();
        put(&mut p, "start", &a.start);
        put(&mut p, "end", &a.end);
        m.insert("period".into(), Value::Object(p));
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Resuscitation decisions and care plans
// ---------------------------------------------------------------------------------------------

/// The resource type a decision or care plan is exported as: the one it came in as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Origin {
    Consent,
    DocumentReference,
    CarePlan,
}

impl Origin {
    fn rt(self) -> &'static str {
        match self {
            Origin::Consent => "Consent",
            Origin::DocumentReference => "DocumentReference",
            Origin::CarePlan => "CarePlan",
        }
    }
    fn of_resource_id(p: &Provenance) -> Option<Origin> {
        match p.resource_id.as_deref()?.split_once('/')?.0 {
            "Consent" => Some(Origin::Consent),
            "DocumentReference" => Some(Origin::DocumentReference),
            "CarePlan" => Some(Origin::CarePlan),
            _ => None,
        }
    }
    /// A document or a FHIR CarePlan, by its status when the record had no resource id.
    fn of_status(status: Option<&str>) -> Origin {
        match status {
            Some(s) if CARE_PLAN_STATUS.contains(&s) => Origin::CarePlan,
            _ => Origin::DocumentReference,
        }
    }
    fn of_decision(r: &Resuscitation) -> Origin {
        Origin::of_resource_id(&r.provenance).unwrap_or(match r.record {
            DecisionRecord::DnacprForm | DecisionRecord::RespectForm => Origin::DocumentReference,
            DecisionRecord::CarePlan => Origin::of_status(r.status.as_deref()),
            DecisionRecord::Consent | DecisionRecord::Other => Origin::Consent,
        })
    }
    fn of_plan(c: &CarePlan) -> Origin {
        match Origin::of_resource_id(&c.provenance) {
            Some(Origin::Consent) | None => Origin::of_status(c.status.as_deref()),
            Some(o) => o,
        }
    }
}

/// The resuscitation situation code that says what a decision means for CPR.
fn cpr_situation(cpr: Cpr) -> Option<Value> {
    let code = match cpr {
        Cpr::NotForCpr => "450476008",
        Cpr::ForCpr => "304252001",
        Cpr::RespectPlan | Cpr::Unknown => return None,
    };
    let r = codes::resuscitation_by_code(code)?;
    Some(coded(fhir::SNOMED, r.code, r.display))
}

/// Does the decision's own code say the same about CPR as `cpr` (so ingest reads it back)?
fn decision_reads_as(d: &Concept, cpr: Cpr) -> bool {
    let Some(code) = d.snomed() else {
        return false;
    };
    match codes::resuscitation_by_code(code) {
        Some(r) => {
            (r.attempt_cpr && cpr == Cpr::ForCpr) || (!r.attempt_cpr && cpr == Cpr::NotForCpr)
        }
        None => CPR_PROCEDURES.contains(&code),
    }
}

/// A decision recorded as a Consent: scope adr; a policy rule (R4 ppc-1); `provision.type`
/// deny / permit with CPR for not-for / for CPR, and no guessed type otherwise.
fn consent(r: &Resuscitation, pr: &str) -> Value {
    let mut m = item_base("Consent", &r.provenance, pr, "patient");
    // Consent has no "superseded" or "withdrawn": a decision not in force is inactive (or
    // rejected, when its source said so).
    let status = match r.state {
        DecisionState::Current => "active",
        DecisionState::Rescinded if r.status.as_deref() == Some("rejected") => "rejected",
        _ => "inactive",
    };
    m.insert("status".into(), json!(status));
    m.insert(
        "scope".into(),
        json!({"coding": [{"system": fhir::CONSENT_SCOPE, "code": "adr", "display": "Advanced Care Directive"}]}),
    );
    let mut category = vec![coded(fhir::LOINC, "59284-0", "Patient Consent")];
    match r.cpr {
        Cpr::NotForCpr => {
            category.push(json!({"coding": [
                {"system": CONSENT_CATEGORY, "code": "dnr", "display": "Do Not Resuscitate"},
                {"system": fhir::SNOMED, "code": "450476008", "display": "Not for attempted cardiopulmonary resuscitation"}
            ]}));
        }
        _ => category.push(coded(CONSENT_CATEGORY, "acd", "Advance Directive")),
    }
    m.insert("category".into(), Value::Array(category));
    put(&mut m, "dateTime", &r.decided);
    if let Some(d) = &r.decision_maker {
        m.insert("performer".into(), json!([{"display": d}]));
    }
    m.insert(
        "organization".into(),
        json!([{"reference": org_url(&r.provenance.source_ods)}]),
    );
    let mut prov = Map::new();
    let cpr_code = || coded(fhir::SNOMED, CPR.0, CPR.1);
    match r.cpr {
        Cpr::NotForCpr | Cpr::ForCpr => {
            let (ty, rule, rule_display) = if r.cpr == Cpr::NotForCpr {
                ("deny", "OPTOUT", "opt-out")
            } else {
                ("permit", "OPTIN", "opt-in")
            };
            m.insert("policyRule".into(), coded(V3_ACT_CODE, rule, rule_display));
            prov.insert("type".into(), json!(ty));
            // The decision as recorded first (ingest reads the first CPR code), then CPR itself
            // for readers that look for deny / permit of 89666000.
            let mut code = Vec::new();
            if decision_reads_as(&r.decision, r.cpr) {
                code.push(cc(&r.decision));
            }
            if r.decision.snomed() != Some(CPR.0) {
                code.push(cpr_code());
            }
            if !decision_reads_as(&r.decision, r.cpr) {
                code.push(cc(&r.decision));
            }
            prov.insert("code".into(), Value::Array(code));
        }
        Cpr::RespectPlan | Cpr::Unknown => {
            // What the decision says about CPR could not be read: keep it as recorded, with no
            // guessed provision type, and say that the type is unknown.
            m.insert(
                "policyRule".into(),
                json!({"text": "Advance decision as recorded at its source (its effect on resuscitation could not be read: see the source record)"}),
            );
            prov.insert("_type".into(), dar("unknown"));
            prov.insert("code".into(), json!([cc(&r.decision)]));
        }
    }
    if let Some(rv) = &r.review {
        prov.insert("period".into(), json!({"end": rv}));
    }
    m.insert("provision".into(), Value::Object(prov));
    Value::Object(m)
}

fn relates_to(replaces: &[String]) -> Option<Value> {
    if replaces.is_empty() {
        return None;
    }
    let list: Vec<Value> = replaces
        .iter()
        .map(|id| {
            let ident = match id.split_once('|') {
                Some((system, value)) if !system.is_empty() => {
                    json!({"system": system, "value": value})
                }
                _ => json!({"value": id}),
            };
            json!({"code": "replaces", "target": {"identifier": ident}})
        })
        .collect();
    Some(Value::Array(list))
}

/// A DNACPR or ReSPECT form, or a care-plan document: one DocumentReference for the decision
/// and the care plan it may also be.
fn document_reference(d: Option<&Resuscitation>, c: Option<&CarePlan>, pr: &str) -> Value {
    let p = c.map(|c| &c.provenance).or(d.map(|d| &d.provenance));
    let Some(p) = p else {
        return Value::Null;
    };
    let mut m = item_base("DocumentReference", p, pr, "subject");
    let given = c
        .and_then(|c| c.status.as_deref())
        .or(d.and_then(|d| d.status.as_deref()));
    let status = match (d, given) {
        // A decision no longer in force is never sent as a current document.
        (Some(d), _) if d.state != DecisionState::Current => "superseded",
        (_, Some(s @ ("current" | "superseded"))) => s,
        _ => "current",
    };
    m.insert("status".into(), json!(status));
    let ty = c.map(|c| &c.plan_type).or(d.map(|d| &d.decision));
    if let Some(ty) = ty {
        m.insert("type".into(), cc(ty));
    }
    if c.is_some() {
        m.insert(
            "category".into(),
            json!([coded(
                fhir::SNOMED,
                codes::CARE_PLAN_CATEGORY.code,
                codes::CARE_PLAN_CATEGORY.display
            )]),
        );
    }
    let date = c
        .and_then(|c| c.date.as_ref())
        .or(d.and_then(|d| d.decided.as_ref()));
    // DocumentReference.date is an instant: a date without a time goes to the period of the
    // documented care instead.
    let (instant, partial) = match date {
        Some(x) if x.as_str().len() > 10 => (Some(x), None),
        other => (None, other),
    };
    if let Some(date) = instant {
        m.insert("date".into(), json!(date));
    }
    if let Some(dm) = d.and_then(|d| d.decision_maker.as_ref()) {
        m.insert("author".into(), json!([{"display": dm}]));
    }
    if let Some(o) = c.and_then(|c| c.custodian.as_ref()) {
        m.insert("custodian".into(), ods_ref(o));
    }
    let replaces = c.map(|c| &c.replaces).or(d.map(|d| &d.replaces));
    if let Some(rel) = replaces.and_then(|r| relates_to(r)) {
        m.insert("relatesTo".into(), rel);
    }
    if let Some(x) = c.and_then(|c| c.extract.as_ref()) {
        m.insert("description".into(), json!(x));
    }
    let mut att = Map::new();
    att.insert(
        "title".into(),
        json!(ty.map(Concept::label).unwrap_or("Document")),
    );
    put(&mut att, "url", &c.and_then(|c| c.url.clone()));
    m.insert(
        "content".into(),
        json!([{"attachment": Value::Object(att)}]),
    );
    // What the form or plan says about CPR, where that is not its type: a ReSPECT form's own
    // recommendation, or a care plan's decision.
    let event = d.and_then(|d| match d.record {
        DecisionRecord::RespectForm => d.form_cpr.and_then(cpr_situation),
        DecisionRecord::CarePlan => cpr_situation(d.cpr),
        _ => None,
    });
    if event.is_some() || partial.is_some() {
        let mut ctx = Map::new();
        if let Some(e) = event {
            ctx.insert("event".into(), json!([e]));
        }
        if let Some(p) = partial {
            ctx.insert("period".into(), json!({"start": p}));
        }
        m.insert("context".into(), Value::Object(ctx));
    }
    Value::Object(m)
}

/// A FHIR CarePlan: the care plan and/or the resuscitation decision among its activities.
fn care_plan_resource(d: Option<&Resuscitation>, c: Option<&CarePlan>, pr: &str) -> Value {
    let p = c.map(|c| &c.provenance).or(d.map(|d| &d.provenance));
    let Some(p) = p else {
        return Value::Null;
    };
    let mut m = item_base("CarePlan", p, pr, "subject");
    let given = c
        .and_then(|c| c.status.as_deref())
        .or(d.and_then(|d| d.status.as_deref()))
        .filter(|s| CARE_PLAN_STATUS.contains(s));
    let status = match (d.map(|d| d.state), given) {
        (Some(DecisionState::Current), Some(s @ ("active" | "unknown"))) => s,
        (Some(DecisionState::Current), _) => "active",
        (Some(_), Some(s @ ("revoked" | "completed"))) => s,
        (Some(_), _) => "revoked",
        (None, Some(s)) => s,
        (None, None) => "unknown",
    };
    m.insert("status".into(), json!(status));
    m.insert("intent".into(), json!("plan"));
    if let Some(c) = c {
        m.insert("category".into(), json!([cc(&c.plan_type)]));
    }
    if let Some(x) = c.and_then(|c| c.extract.as_ref()) {
        m.insert("description".into(), json!(x));
    }
    let start = c
        .and_then(|c| c.date.as_ref())
        .or(d.and_then(|d| d.decided.as_ref()));
    let end = d.and_then(|d| d.review.as_ref());
    if start.is_some() || end.is_some() {
        let mut per = Map::new();
        if let Some(s) = start {
            per.insert("start".into(), json!(s));
        }
        if let Some(e) = end {
            per.insert("end".into(), json!(e));
        }
        m.insert("period".into(), Value::Object(per));
    }
    if let Some(o) = c.and_then(|c| c.custodian.as_ref()) {
        m.insert("author".into(), ods_ref(o));
    }
    if let Some(dm) = d.and_then(|d| d.decision_maker.as_ref()) {
        m.insert("contributor".into(), json!([{"display": dm}]));
    }
    if let Some(d) = d {
        let mut detail = Map::new();
        detail.insert("code".into(), cc(&d.decision));
        let in_force = d.state == DecisionState::Current;
        detail.insert(
            "status".into(),
            json!(if in_force { "in-progress" } else { "cancelled" }),
        );
        if d.cpr == Cpr::NotForCpr {
            detail.insert("doNotPerform".into(), json!(true));
        }
        m.insert(
            "activity".into(),
            json!([{"detail": Value::Object(detail)}]),
        );
    }
    Value::Object(m)
}

// ---------------------------------------------------------------------------------------------
// Section statements
// ---------------------------------------------------------------------------------------------

/// The IPS "no known …" code for a section, for a source's statement that came without one
/// (a document's `emptyReason` nilknown), so the statement keeps its source.
fn ips_no_known(kind: SectionKind) -> Option<Concept> {
    let (code, display) = match kind {
        SectionKind::Allergies => ("no-known-allergies", "No known allergies"),
        SectionKind::Medications => ("no-known-medications", "No known medications"),
        SectionKind::Conditions => ("no-known-problems", "No known problems"),
        _ => return None,
    };
    Some(Concept {
        coding: Some(Coding {
            system: fhir::IPS_ABSENT_UNKNOWN.into(),
            code: code.into(),
            display: Some(display.into()),
        }),
        text: None,
    })
}

/// A source's "none known" statement as the IPS positive-assertion resource ("No known
/// allergy" AllergyIntolerance, active and confirmed; "No known medications" statement…).
fn marker_resource(kind: SectionKind, mk: &Marker, pr: &str) -> Option<(String, Value)> {
    let p = mk.provenance.as_ref()?;
    if mk.status != SectionStatus::NoneKnown {
        return None;
    }
    let concept = mk.concept.clone().or_else(|| ips_no_known(kind))?;
    let (rt, subject) = match kind {
        SectionKind::Allergies => ("AllergyIntolerance", "patient"),
        SectionKind::Medications => ("MedicationStatement", "subject"),
        SectionKind::Conditions => ("Condition", "subject"),
        _ => return None,
    };
    let mut m = item_base(rt, p, pr, subject);
    match kind {
        SectionKind::Allergies => {
            m.insert(
                "clinicalStatus".into(),
                json!({"coding": [{"system": ALLERGY_CLINICAL, "code": "active"}]}),
            );
            m.insert(
                "verificationStatus".into(),
                json!({"coding": [{"system": ALLERGY_VERIFICATION, "code": "confirmed"}]}),
            );
            m.insert("code".into(), cc(&concept));
        }
        SectionKind::Medications => {
            m.insert("status".into(), json!("active"));
            m.insert("medicationCodeableConcept".into(), cc(&concept));
            // IPS requires effective[x]; a "none known" statement has no time of taking.
            m.insert("_effectiveDateTime".into(), dar("not-applicable"));
        }
        _ => {
            m.insert(
                "clinicalStatus".into(),
                json!({"coding": [{"system": CONDITION_CLINICAL, "code": "active"}]}),
            );
            m.insert(
                "verificationStatus".into(),
                json!({"coding": [{"system": CONDITION_VERIFICATION, "code": "confirmed"}]}),
            );
            m.insert(
                "category".into(),
                json!([{"coding": [{"system": CONDITION_CATEGORY, "code": "problem-list-item"}]}]),
            );
            m.insert("code".into(), cc(&concept));
        }
    }
    Some((res_url(rt, p), Value::Object(m)))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The entries of the bundle, in order, by fullUrl (a resource shared by two sections once).
#[derive(Default)]
struct Entries {
    list: Vec<(String, Value)>,
    urls: BTreeSet<String>,
    /// Item entries per source, for the Provenances.
    by_source: BTreeMap<SourceId, Vec<String>>,
    any_restricted: bool,
}

impl Entries {
    fn add(&mut self, url: &str, r: Value) {
        if self.urls.insert(url.to_owned()) {
            self.list.push((url.to_owned(), r));
        }
    }
    fn add_item(&mut self, url: &str, r: Value, p: &Provenance) {
        if self.urls.contains(url) {
            return;
        }
        self.any_restricted |= p.restricted;
        let targets = self.by_source.entry(p.source_ods.clone()).or_default();
        targets.push(url.to_owned());
        self.add(url, r);
    }
}

/// One Composition section: its entries (fullUrl, narrative line) and its status.
struct SectionOut {
    kind: SectionKind,
    status: SectionStatus,
    refs: Vec<(String, String)>,
}

fn state_words(state: DecisionState) -> &'static str {
    match state {
        DecisionState::Current => "",
        DecisionState::Superseded => " (superseded)",
        DecisionState::Rescinded => " (rescinded)",
        DecisionState::Withdrawn => " (withdrawn by its source)",
        DecisionState::Other => " (status unknown)",
    }
}

/// Render a summary as an IPS-shaped FHIR R4 document Bundle.
pub fn summary_document(s: &Summary) -> Value {
    let nhs = s.nhs_number.as_digits();
    let patient_url = stable_urn(&format!("patient|{nhs}"));
    let pr = patient_url.as_str();
    let mut items = Entries::default();
    let mut medications: Vec<(String, Value)> = Vec::new();
    let mut sections: Vec<SectionOut> = Vec::new();

    // Markers of a section (not of one that is withheld: that is what the crew is shown).
    let markers = |kind: SectionKind,
                   status: SectionStatus,
                   basis: &[Marker],
                   items: &mut Entries,
                   refs: &mut Vec<(String, String)>| {
        if status == SectionStatus::Withheld {
            return;
        }
        for mk in basis {
            if let (Some((url, r)), Some(p)) = (marker_resource(kind, mk, pr), &mk.provenance) {
                let label = mk
                    .concept
                    .clone()
                    .or_else(|| ips_no_known(kind))
                    .map(|c| c.label().to_owned())
                    .unwrap_or_default();
                items.add_item(&url, r, p);
                refs.push((url, label));
            }
        }
    };

    // Allergies.
    let mut refs = Vec::new();
    for a in &s.allergies.entries {
        let url = res_url("AllergyIntolerance", &a.provenance);
        items.add_item(&url, allergy(a, pr), &a.provenance);
        let crit = match a.criticality {
            Some(Criticality::High) => " (HIGH criticality)",
            _ => "",
        };
        let rx: Vec<&str> = a
            .reactions
            .iter()
            .map(|r| r.manifestation.label())
            .collect();
        let status = match (
            a.verification_status.as_deref(),
            a.clinical_status.as_deref(),
        ) {
            (Some("refuted"), _) => " — refuted",
            (_, Some(c @ ("inactive" | "resolved"))) => {
                if c == "inactive" {
                    " — inactive"
                } else {
                    " — resolved"
                }
            }
            _ => "",
        };
        let line = format!(
            "{}{crit}{}{status}",
            a.concept.label(),
            if rx.is_empty() {
                String::new()
            } else {
                format!(": {}", rx.join(", "))
            }
        );
        refs.push((url, line));
    }
    markers(
        SectionKind::Allergies,
        s.allergies.status,
        &s.allergies.basis,
        &mut items,
        &mut refs,
    );
    sections.push(SectionOut {
        kind: SectionKind::Allergies,
        status: s.allergies.status,
        refs,
    });

    // Medications.
    let mut refs = Vec::new();
    for x in &s.medications.entries {
        let (r, med) = medication(x, pr);
        let rt = if x.from_request {
            "MedicationRequest"
        } else {
            "MedicationStatement"
        };
        let url = res_url(rt, &x.provenance);
        items.add_item(&url, r, &x.provenance);
        if let Some(m) = med {
            medications.push(m);
        }
        let status = match x.status.as_deref() {
            Some(st) if !x.is_current() => format!(" ({st})"),
            _ => String::new(),
        };
        refs.push((
            url,
            format!(
                "{}{}{status}",
                x.concept.label(),
                x.dosage
                    .as_deref()
                    .map(|d| format!(" — {d}"))
                    .unwrap_or_default()
            ),
        ));
    }
    markers(
        SectionKind::Medications,
        s.medications.status,
        &s.medications.basis,
        &mut items,
        &mut refs,
    );
    sections.push(SectionOut {
        kind: SectionKind::Medications,
        status: s.medications.status,
        refs,
    });

    // Problems.
    let mut refs = Vec::new();
    for c in &s.conditions.entries {
        let url = res_url("Condition", &c.provenance);
        items.add_item(&url, condition(c, pr), &c.provenance);
        refs.push((url, c.concept.label().to_owned()));
    }
    markers(
        SectionKind::Conditions,
        s.conditions.status,
        &s.conditions.basis,
        &mut items,
        &mut refs,
    );
    sections.push(SectionOut {
        kind: SectionKind::Conditions,
        status: s.conditions.status,
        refs,
    });

    // Resuscitation decisions and care plans: a form or plan that is both is one resource.
    type Key = (Origin, SourceId, String);
    let key = |o: Origin, p: &Provenance| (o, p.source_ods.clone(), p.record_id.clone());
    let mut shared: BTreeMap<Key, (Option<&Resuscitation>, Option<&CarePlan>)> = BTreeMap::new();
    for d in &s.resuscitation.entries {
        let o = Origin::of_decision(d);
        if o != Origin::Consent {
            shared.entry(key(o, &d.provenance)).or_default().0 = Some(d);
        }
    }
    for c in &s.care_plans.entries {
        shared
            .entry(key(Origin::of_plan(c), &c.provenance))
            .or_default()
            .1 = Some(c);
    }
    let shared_resource = |o: Origin, p: &Provenance, items: &mut Entries| -> String {
        let url = res_url(o.rt(), p);
        if let Some((d, c)) = shared.get(&key(o, p)) {
            let r = match o {
                Origin::CarePlan => care_plan_resource(*d, *c, pr),
                _ => document_reference(*d, *c, pr),
            };
            items.add_item(&url, r, p);
        }
        url
    };
    let mut refs = Vec::new();
    for d in &s.resuscitation.entries {
        let o = Origin::of_decision(d);
        let url = if o == Origin::Consent {
            let url = res_url("Consent", &d.provenance);
            items.add_item(&url, consent(d, pr), &d.provenance);
            url
        } else {
            shared_resource(o, &d.provenance, &mut items)
        };
        refs.push((
            url,
            format!("{}{}", d.decision.label(), state_words(d.state)),
        ));
    }
    sections.push(SectionOut {
        kind: SectionKind::Resuscitation,
        status: s.resuscitation.status,
        refs,
    });
    let mut refs = Vec::new();
    for c in &s.care_plans.entries {
        let url = shared_resource(Origin::of_plan(c), &c.provenance, &mut items);
        let st = match c.status.as_deref() {
            Some(st @ ("superseded" | "revoked" | "completed")) => format!(" ({st})"),
            _ => String::new(),
        };
        refs.push((url, format!("{}{st}", c.plan_type.label())));
    }
    sections.push(SectionOut {
        kind: SectionKind::CarePlans,
        status: s.care_plans.status,
        refs,
    });

    // Alerts.
    let mut refs = Vec::new();
    for a in &s.alerts.entries {
        let url = res_url("Flag", &a.provenance);
        items.add_item(&url, alert(a, pr), &a.provenance);
        let st = match a.status.as_deref() {
            Some("inactive") => " (inactive)",
            _ => "",
        };
        refs.push((url, format!("{}{st}", a.flag.label())));
    }
    sections.push(SectionOut {
        kind: SectionKind::Alerts,
        status: s.alerts.status,
        refs,
    });

    // Composition sections: entries, or why there are none.
    let mut comp_sections = Vec::new();
    for so in &sections {
        let mut sec = Map::new();
        sec.insert("title".into(), json!(so.kind.title()));
        sec.insert(
            "code".into(),
            json!({"coding": [{"system": fhir::LOINC, "code": so.kind.loinc()}]}),
        );
        if so.refs.is_empty() {
            // The status the crew is shown: a "none known" nobody vouches for is no information.
            let (reason, display, words) = match so.status {
                SectionStatus::NoneKnown => ("nilknown", "Nil Known", "None known (recorded)"),
                SectionStatus::Withheld => (
                    "withheld",
                    "Information Withheld",
                    "Information withheld (restricted)",
                ),
                _ => ("unavailable", "Unavailable", "No information available"),
            };
            sec.insert("text".into(), json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{words}</div>")}));
            sec.insert(
                "emptyReason".into(),
                json!({"coding": [{"system": fhir::LIST_EMPTY_REASON, "code": reason, "display": display}]}),
            );
        } else {
            let lis: String = so
                .refs
                .iter()
                .map(|(_, l)| format!("<li>{}</li>", esc(l)))
                .collect();
            sec.insert("text".into(), json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><ul>{lis}</ul></div>")}));
            let mut seen = BTreeSet::new();
            let refs: Vec<Value> = so
                .refs
                .iter()
                .filter(|(u, _)| seen.insert(u.as_str()))
                .map(|(u, _)| json!({"reference": u}))
                .collect();
            sec.insert("entry".into(), Value::Array(refs));
        }
        comp_sections.push(Value::Object(sec));
    }

    // The document's confidentiality: the highest of what it carries.
    let restricted = items.any_restricted || s.patient.restricted;
    let conf = if restricted { "R" } else { "N" };
    let assembled = s.assembled_at.to_rfc3339();
    let hub = hub_url();
    let composition = json!({
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [{"system": fhir::LOINC, "code": "60591-5", "display": "Patient summary Document"}]},
        "subject": {"reference": patient_url},
        "date": assembled,
        "author": [{"reference": hub, "display": HUB_NAME}],
        "title": "Critical summary",
        "confidentiality": conf,
        "custodian": {"reference": hub, "display": HUB_NAME},
        "section": comp_sections,
    });

    let patient = patient(s);

    // The hub, then one Organization per source organisation whose items the document holds
    // (a source whose only items were withheld is not named).
    let mut orgs = vec![(
        hub.clone(),
        json!({"resourceType": "Organization", "active": true, "name": HUB_NAME}),
    )];
    let mut provenances = Vec::new();
    for (src, targets) in &items.by_source {
        let name = s
            .sources
            .iter()
            .find(|x| &x.ods == src)
            .and_then(|x| x.name.clone());
        let recorded = s
            .sources
            .iter()
            .find(|x| &x.ods == src)
            .map(|x| x.retrieved_at)
            .unwrap_or(s.assembled_at);
        let url = org_url(src);
        let mut org = Map::new();
        org.insert("resourceType".into(), json!("Organization"));
        org.insert("identifier".into(), json!([source_identifier(src)]));
        put(&mut org, "name", &name);
        orgs.push((url.clone(), Value::Object(org)));
        let mut who = Map::new();
        who.insert("reference".into(), json!(url));
        put(&mut who, "display", &name);
        provenances.push((
            stable_urn(&format!("provenance|{nhs}|{}|{src}", s.version)),
            json!({
                "resourceType": "Provenance",
                "target": targets.iter().map(|t| json!({"reference": t})).collect::<Vec<_>>(),
                "recorded": recorded.to_rfc3339(),
                "agent": [{
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type", "code": "author", "display": "Author"}]},
                    "who": Value::Object(who),
                }],
            }),
        ));
    }

    let mut entries = vec![
        json!({"fullUrl": stable_urn(&format!("composition|{nhs}|{}", s.version)), "resource": composition}),
        json!({"fullUrl": patient_url, "resource": patient}),
    ];
    for (u, r) in orgs
        .into_iter()
        .chain(items.list)
        .chain(medications)
        .chain(provenances)
    {
        entries.push(json!({"fullUrl": u, "resource": r}));
    }
    json!({
        "resourceType": "Bundle",
        "meta": {
            "versionId": s.version.to_string(),
            "lastUpdated": assembled,
        },
        "identifier": {"system": "urn:ietf:rfc:3986", "value": stable_urn(&format!("summary|{nhs}|{}", s.version))},
        "type": "document",
        "timestamp": assembled,
        "entry": entries,
    })
}

fn person_name(n: &PersonName) -> Option<Value> {
    let mut m = Map::new();
    put(&mut m, "use", &n.name_use);
    put(&mut m, "text", &n.text);
    put(&mut m, "family", &n.family);
    if !n.given.is_empty() {
        m.insert("given".into(), json!(n.given));
    }
    (m.contains_key("text") || m.contains_key("family") || m.contains_key("given"))
        .then_some(Value::Object(m))
}

/// The Patient: current NHS number (verification) and former ones, current name first and the
/// other names after it, deceased, gender, birth date, postcode (none for a restricted patient,
/// who is labelled R instead), registered GP practice.
fn patient(s: &Summary) -> Value {
    let d = &s.patient;
    let mut pat = Map::new();
    pat.insert("resourceType".into(), json!("Patient"));
    let mut meta = Map::new();
    meta.insert("lastUpdated".into(), json!(d.last_updated.to_rfc3339()));
    if d.restricted {
        meta.insert(
            "security".into(),
            json!([{"system": fhir::CONFIDENTIALITY, "code": "R", "display": "restricted"}]),
        );
    }
    pat.insert("meta".into(), Value::Object(meta));
    let mut ident = json!({"system": fhir::NHS_NUMBER, "value": s.nhs_number.as_digits()});
    if let Some(v) = &d.nhs_verification {
        ident["extension"] = json!([{"url": fhir::EXT_NHS_VERIFICATION, "valueCodeableConcept": {"coding": [{"system": fhir::NHS_VERIFICATION_SYSTEM, "code": v}]}}]);
    }
    let mut idents = vec![ident];
    for old in &d.former_nhs_numbers {
        idents.push(json!({"use": "old", "system": fhir::NHS_NUMBER, "value": old.as_digits()}));
    }
    pat.insert("identifier".into(), Value::Array(idents));
    // The current name is `usual` and first: ingest (and a reader) takes it as the one to use.
    let current = PersonName {
        family: Some(d.family.clone()).filter(|f| !f.is_empty()),
        given: d.given.clone(),
        text: d.name_text.clone(),
        name_use: Some("usual".into()),
    };
    let mut names: Vec<Value> = Vec::new();
    names.push(person_name(&current).unwrap_or_else(|| {
        // IPS requires a name with text, family or given; the sources sent none.
        json!({"text": "Name not recorded"})
    }));
    names.extend(d.other_names.iter().filter_map(person_name));
    pat.insert("name".into(), Value::Array(names));
    if d.deceased {
        match &d.deceased_at {
            Some(t) => pat.insert("deceasedDateTime".into(), json!(t.as_str())),
            None => pat.insert("deceasedBoolean".into(), json!(true)),
        };
    }
    pat.insert("gender".into(), json!(d.gender.as_str()));
    match &d.birth_date {
        Some(b) => {
            // Patient.birthDate is a date: a date-time as sent is cut to its day.
            pat.insert("birthDate".into(), json!(b.day().unwrap_or(b.as_str())));
        }
        // IPS requires a birth date: say that it is unknown.
        None => {
            pat.insert("_birthDate".into(), dar("unknown"));
        }
    }
    if let Some(pc) = d.postcode.as_ref().filter(|_| !d.restricted) {
        pat.insert("address".into(), json!([{"postalCode": pc}]));
    }
    if let Some(gp) = &d.gp_practice {
        let mut r = ods_ref(gp);
        if let Some(n) = &d.gp_name {
            r["display"] = json!(n);
        }
        pat.insert("generalPractitioner".into(), json!([r]));
    }
    Value::Object(pat)
}
