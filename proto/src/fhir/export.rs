//! Summary → FHIR R4 IPS-shaped document `Bundle` (the LAN `$summary` answer).
//!
//! Composition first (LOINC 60591-5) with every Kerbside section present and an `emptyReason`
//! when it is empty, then the Patient, the items, and one Provenance per source organisation.
//! Identifiers use the UK Core systems. Mapping the output back through
//! [`super::ingest::parse_bundle`] yields the same summary (tested).

use ring::digest;
use serde_json::{json, Map, Value};

use crate::fhir::{self, SectionKind};
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

fn item_urn(p: &Provenance) -> String {
    stable_urn(&format!("item|{}|{}", p.source_ods, p.record_id))
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
    Value::Object(m)
}

fn status_cc(system: &str, code: &Option<String>) -> Option<Value> {
    code.as_ref()
        .map(|c| json!({"coding": [{"system": system, "code": c}]}))
}

fn ods_ref(ods: &crate::ids::OdsCode) -> Value {
    json!({"identifier": {"system": fhir::ODS, "value": ods.as_str()}})
}

/// FHIR `id` rule: `[A-Za-z0-9\-\.]{1,64}`.
fn valid_fhir_id(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Common header of an item resource: type, id/identifier, meta.
fn item_base(rt: &str, p: &Provenance, patient_ref: &str, subject_key: &str) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("resourceType".into(), json!(rt));
    match p.record_id.split_once('|') {
        Some((system, value)) => {
            let mut id = Map::new();
            if !system.is_empty() {
                id.insert("system".into(), json!(system));
            }
            id.insert("value".into(), json!(value));
            m.insert("identifier".into(), Value::Array(vec![Value::Object(id)]));
        }
        None if valid_fhir_id(&p.record_id) => {
            m.insert("id".into(), json!(p.record_id));
        }
        None => {
            m.insert("identifier".into(), json!([{"value": p.record_id}]));
        }
    }
    let mut meta = Map::new();
    if let Some(v) = &p.record_version {
        meta.insert("versionId".into(), json!(v));
    }
    meta.insert("lastUpdated".into(), json!(p.last_updated.to_rfc3339()));
    if let Some(s) = &p.system {
        meta.insert("source".into(), json!(s));
    }
    m.insert("meta".into(), Value::Object(meta));
    m.insert(subject_key.into(), json!({"reference": patient_ref}));
    m
}

fn put<T: serde::Serialize>(m: &mut Map<String, Value>, k: &str, v: &Option<T>) {
    if let Some(v) = v {
        m.insert(k.into(), json!(v));
    }
}

const ALLERGY_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical";
const ALLERGY_VERIFICATION: &str =
    "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification";
const CONDITION_CLINICAL: &str = "http://terminology.hl7.org/CodeSystem/condition-clinical";
const CONDITION_VERIFICATION: &str = "http://terminology.hl7.org/CodeSystem/condition-ver-status";

fn allergy(a: &Allergy, pr: &str) -> Value {
    let mut m = item_base("AllergyIntolerance", &a.provenance, pr, "patient");
    if let Some(v) = status_cc(ALLERGY_CLINICAL, &a.clinical_status) {
        m.insert("clinicalStatus".into(), v);
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

fn medication(x: &Medication, pr: &str) -> Value {
    let rt = if x.from_request {
        "MedicationRequest"
    } else {
        "MedicationStatement"
    };
    let mut m = item_base(rt, &x.provenance, pr, "subject");
    put(&mut m, "status", &x.status);
    m.insert("medicationCodeableConcept".into(), cc(&x.concept));
    if x.from_request {
        put(&mut m, "authoredOn", &x.started);
    } else if let Some(s) = &x.started {
        m.insert("effectivePeriod".into(), json!({"start": s}));
    }
    if x.dosage.is_some() || x.route.is_some() {
        let mut d = Map::new();
        put(&mut d, "text", &x.dosage);
        if let Some(r) = &x.route {
            d.insert("route".into(), cc(r));
        }
        let key = if x.from_request {
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
        let key = if x.from_request {
            "requester"
        } else {
            "informationSource"
        };
        m.insert(key.into(), ods_ref(o));
    }
    Value::Object(m)
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
        json!([{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "problem-list-item"}]}]),
    );
    m.insert("code".into(), cc(&c.concept));
    put(&mut m, "onsetDateTime", &c.onset);
    put(&mut m, "recordedDate", &c.recorded);
    Value::Object(m)
}

fn resuscitation(r: &Resuscitation, pr: &str) -> Value {
    let mut m = item_base("Consent", &r.provenance, pr, "patient");
    put(&mut m, "status", &r.status);
    m.insert(
        "scope".into(),
        json!({"coding": [{"system": fhir::CONSENT_SCOPE, "code": "adr"}]}),
    );
    m.insert(
        "category".into(),
        json!([{"coding": [{"system": fhir::LOINC, "code": "75320-2", "display": "Advance directive"}]}]),
    );
    put(&mut m, "dateTime", &r.decided);
    if let Some(d) = &r.decision_maker {
        m.insert("performer".into(), json!([{"display": d}]));
    }
    let mut prov = Map::new();
    prov.insert("code".into(), json!([cc(&r.decision)]));
    if let Some(rv) = &r.review {
        prov.insert("period".into(), json!({"end": rv}));
    }
    m.insert("provision".into(), Value::Object(prov));
    Value::Object(m)
}

fn care_plan(c: &CarePlan, pr: &str) -> Value {
    let mut m = item_base("DocumentReference", &c.provenance, pr, "subject");
    put(&mut m, "status", &c.status);
    m.insert("type".into(), cc(&c.plan_type));
    m.insert(
        "category".into(),
        json!([{"coding": [{"system": fhir::SNOMED, "code": "734163000", "display": "Care plan"}]}]),
    );
    put(&mut m, "date", &c.date);
    if let Some(o) = &c.custodian {
        m.insert("custodian".into(), ods_ref(o));
    }
    put(&mut m, "description", &c.extract);
    let mut att = Map::new();
    att.insert("title".into(), json!(c.plan_type.label()));
    put(&mut att, "url", &c.url);
    m.insert(
        "content".into(),
        json!([{"attachment": Value::Object(att)}]),
    );
    Value::Object(m)
}

fn alert(a: &Alert, pr: &str) -> Value {
    let mut m = item_base("Flag", &a.provenance, pr, "subject");
    put(&mut m, "status", &a.status);
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

/// A marker with a source becomes a positive-assertion resource ("No known allergy").
fn marker_resource(kind: SectionKind, mk: &Marker, pr: &str) -> Option<Value> {
    let p = mk.provenance.as_ref()?;
    let concept = mk.concept.as_ref()?;
    let (rt, subject, code_key) = match kind {
        SectionKind::Allergies => ("AllergyIntolerance", "patient", "code"),
        SectionKind::Medications => (
            "MedicationStatement",
            "subject",
            "medicationCodeableConcept",
        ),
        SectionKind::Conditions => ("Condition", "subject", "code"),
        _ => return None,
    };
    let mut m = item_base(rt, p, pr, subject);
    if kind == SectionKind::Medications {
        m.insert("status".into(), json!("active"));
    }
    m.insert(code_key.into(), cc(concept));
    Some(Value::Object(m))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

struct SectionOut {
    kind: SectionKind,
    status: SectionStatus,
    entries: Vec<(String, Value, String, String)>, // (fullUrl, resource, narrative line, source ODS)
    doc_marker: Option<SectionStatus>,
}

fn section<T: Item>(
    kind: SectionKind,
    s: &Section<T>,
    pr: &str,
    to_res: impl Fn(&T, &str) -> Value,
    line: impl Fn(&T) -> String,
) -> SectionOut {
    let mut entries: Vec<(String, Value, String, String)> = s
        .entries
        .iter()
        .map(|e| {
            let p = e.provenance();
            (
                item_urn(p),
                to_res(e, pr),
                line(e),
                p.source_ods.as_str().to_owned(),
            )
        })
        .collect();
    for mk in &s.basis {
        if let (Some(r), Some(p)) = (marker_resource(kind, mk, pr), mk.provenance.as_ref()) {
            let label = mk
                .concept
                .as_ref()
                .map(|c| c.label().to_owned())
                .unwrap_or_default();
            entries.push((item_urn(p), r, label, p.source_ods.as_str().to_owned()));
        }
    }
    let doc_marker = s
        .basis
        .iter()
        .find(|m| m.provenance.is_none())
        .map(|m| m.status);
    SectionOut {
        kind,
        status: s.status,
        entries,
        doc_marker,
    }
}

/// Render a summary as an IPS-shaped FHIR R4 document Bundle.
pub fn summary_document(s: &Summary) -> Value {
    let patient_url = stable_urn(&format!("patient|{}", s.nhs_number.as_digits()));
    let pr = patient_url.as_str();
    let sections = vec![
        section(SectionKind::Allergies, &s.allergies, pr, allergy, |a| {
            let crit = match a.criticality {
                Some(Criticality::High) => " (HIGH criticality)",
                _ => "",
            };
            let rx: Vec<&str> = a
                .reactions
                .iter()
                .map(|r| r.manifestation.label())
                .collect();
            format!(
                "{}{}{}",
                a.concept.label(),
                crit,
                if rx.is_empty() {
                    String::new()
                } else {
                    format!(": {}", rx.join(", "))
                }
            )
        }),
        section(
            SectionKind::Medications,
            &s.medications,
            pr,
            medication,
            |m| {
                format!(
                    "{}{}",
                    m.concept.label(),
                    m.dosage
                        .as_deref()
                        .map(|d| format!(" — {d}"))
                        .unwrap_or_default()
                )
            },
        ),
        section(SectionKind::Conditions, &s.conditions, pr, condition, |c| {
            c.concept.label().to_owned()
        }),
        section(
            SectionKind::Resuscitation,
            &s.resuscitation,
            pr,
            resuscitation,
            |r| r.decision.label().to_owned(),
        ),
        section(SectionKind::CarePlans, &s.care_plans, pr, care_plan, |c| {
            c.plan_type.label().to_owned()
        }),
        section(SectionKind::Alerts, &s.alerts, pr, alert, |a| {
            a.flag.label().to_owned()
        }),
    ];

    let mut comp_sections = Vec::new();
    let mut item_entries = Vec::new();
    for so in &sections {
        let mut sec = Map::new();
        sec.insert("title".into(), json!(so.kind.title()));
        sec.insert(
            "code".into(),
            json!({"coding": [{"system": fhir::LOINC, "code": so.kind.loinc()}]}),
        );
        if so.entries.is_empty() {
            let (reason, words) = match so.doc_marker.unwrap_or(so.status) {
                SectionStatus::NoneKnown => ("nilknown", "None known (recorded)"),
                SectionStatus::Withheld => ("withheld", "Information withheld"),
                _ => ("unavailable", "No information available"),
            };
            sec.insert("text".into(), json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\">{words}</div>")}));
            sec.insert(
                "emptyReason".into(),
                json!({"coding": [{"system": fhir::LIST_EMPTY_REASON, "code": reason}]}),
            );
        } else {
            let lis: String = so
                .entries
                .iter()
                .map(|(_, _, l, _)| format!("<li>{}</li>", esc(l)))
                .collect();
            sec.insert("text".into(), json!({"status": "generated", "div": format!("<div xmlns=\"http://www.w3.org/1999/xhtml\"><ul>{lis}</ul></div>")}));
            let refs: Vec<Value> = so
                .entries
                .iter()
                .map(|(u, _, _, _)| json!({"reference": u}))
                .collect();
            sec.insert("entry".into(), Value::Array(refs));
            for (u, r, _, _) in &so.entries {
                item_entries.push(json!({"fullUrl": u, "resource": r}));
            }
        }
        comp_sections.push(Value::Object(sec));
    }

    let conf = match s.confidentiality {
        Confidentiality::Normal => "N",
        Confidentiality::Restricted => "R",
    };
    let assembled = s.assembled_at.to_rfc3339();
    let composition = json!({
        "resourceType": "Composition",
        "status": "final",
        "type": {"coding": [{"system": fhir::LOINC, "code": "60591-5", "display": "Patient summary Document"}]},
        "subject": {"reference": patient_url},
        "date": assembled,
        "author": [{"display": "Kerbside hub"}],
        "title": "Critical summary",
        "confidentiality": conf,
        "section": comp_sections,
    });

    let mut pat = Map::new();
    pat.insert("resourceType".into(), json!("Patient"));
    pat.insert(
        "meta".into(),
        json!({"lastUpdated": s.patient.last_updated.to_rfc3339()}),
    );
    let mut ident = json!({"system": fhir::NHS_NUMBER, "value": s.nhs_number.as_digits()});
    if let Some(v) = &s.patient.nhs_verification {
        ident["extension"] = json!([{"url": fhir::EXT_NHS_VERIFICATION, "valueCodeableConcept": {"coding": [{"system": fhir::NHS_VERIFICATION_SYSTEM, "code": v}]}}]);
    }
    let mut idents = vec![ident];
    for old in &s.patient.former_nhs_numbers {
        idents.push(json!({"use": "old", "system": fhir::NHS_NUMBER, "value": old.as_digits()}));
    }
    pat.insert("identifier".into(), Value::Array(idents));
    let mut name = Map::new();
    name.insert("use".into(), json!("usual"));
    if !s.patient.family.is_empty() {
        name.insert("family".into(), json!(s.patient.family));
    }
    if !s.patient.given.is_empty() {
        name.insert("given".into(), json!(s.patient.given));
    }
    put(&mut name, "text", &s.patient.name_text);
    if name.len() == 1 {
        name.insert("text".into(), json!("(name not recorded)"));
    }
    pat.insert("name".into(), json!([Value::Object(name)]));
    if s.patient.restricted {
        pat.insert(
            "meta".into(),
            json!({"lastUpdated": s.patient.last_updated.to_rfc3339(),
                   "security": [{"system": fhir::CONFIDENTIALITY, "code": "R", "display": "restricted"}]}),
        );
    }
    if s.patient.deceased {
        match &s.patient.deceased_at {
            Some(d) => pat.insert("deceasedDateTime".into(), json!(d.as_str())),
            None => pat.insert("deceasedBoolean".into(), json!(true)),
        };
    }
    pat.insert("gender".into(), json!(s.patient.gender.as_str()));
    put(&mut pat, "birthDate", &s.patient.birth_date);
    if let Some(pc) = &s.patient.postcode {
        pat.insert("address".into(), json!([{"postalCode": pc}]));
    }
    if let Some(gp) = &s.patient.gp_practice {
        pat.insert("generalPractitioner".into(), json!([ods_ref(gp)]));
    }

    // One Provenance per source organisation, targeting its items.
    let mut provenances = Vec::new();
    for src in &s.sources {
        let targets: Vec<Value> = sections
            .iter()
            .flat_map(|so| so.entries.iter())
            .filter(|(_, _, _, ods)| ods == src.ods.as_str())
            .map(|(u, _, _, _)| json!({"reference": u}))
            .collect();
        if targets.is_empty() {
            continue;
        }
        let mut who = Map::new();
        let ident = match src.ods.as_ods() {
            Some(o) => json!({"system": fhir::ODS, "value": o.as_str()}),
            None => {
                let (system, value) = src.ods.as_str().split_once('|').unwrap_or(("", ""));
                json!({"system": system, "value": value})
            }
        };
        who.insert("identifier".into(), ident);
        put(&mut who, "display", &src.name);
        provenances.push(json!({
            "fullUrl": stable_urn(&format!("provenance|{}|{}|{}", s.nhs_number.as_digits(), s.version, src.ods)),
            "resource": {
                "resourceType": "Provenance",
                "target": targets,
                "recorded": src.retrieved_at.to_rfc3339(),
                "agent": [{"who": Value::Object(who)}],
            }
        }));
    }

    let mut entries = vec![
        json!({"fullUrl": stable_urn(&format!("composition|{}|{}", s.nhs_number.as_digits(), s.version)), "resource": composition}),
        json!({"fullUrl": patient_url, "resource": Value::Object(pat)}),
    ];
    entries.extend(item_entries);
    entries.extend(provenances);
    json!({
        "resourceType": "Bundle",
        "meta": {
            "versionId": s.version.to_string(),
            "lastUpdated": assembled,
            "security": [{"system": fhir::CONFIDENTIALITY, "code": conf}],
        },
        "identifier": {"system": "urn:ietf:rfc:3986", "value": stable_urn(&format!("summary|{}|{}", s.nhs_number.as_digits(), s.version))},
        "type": "document",
        "timestamp": assembled,
        "entry": entries,
    })
}
