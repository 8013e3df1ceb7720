//! FHIR R4 Bundle → [`Contribution`]: what one bundle says about one patient.
//!
//! The hub merges contributions into the patient's summary with [`crate::assemble`]. Every
//! refusal is a typed [`IngestError`] naming the JSON path; errors never quote NHS numbers or
//! clinical text, because they end up in logs and operator replies.
//!
//! Accepted: Bundle types `collection`, `transaction`, `document` (plus `batch`, `searchset`,
//! `message`, which carry the same entries), one Patient, and the resource types in
//! `docs/fhir-mapping.md`. Other resource types are skipped and counted.

use std::collections::HashMap;

use serde_json::Value;

use crate::codes;
use crate::fhir::{self, SectionKind};
use crate::ids::OdsCode;
use crate::model::*;
use crate::nhs::{NhsNumber, NhsNumberError};
use crate::time::UnixMillis;

/// The largest bundle accepted (bytes of JSON).
pub const MAX_BUNDLE_BYTES: usize = 8 * 1024 * 1024;
/// The most entries one bundle may hold.
pub const MAX_ENTRIES: usize = 10_000;

/// Why a bundle was refused. The bundle is refused whole: nothing of it is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IngestError {
    #[error("malformed JSON at line {line}, column {column}: {msg}")]
    Json {
        line: usize,
        column: usize,
        msg: String,
    },
    #[error("bundle is {0} bytes, more than the {MAX_BUNDLE_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("{path}: expected resourceType {expected}, found {found:?}")]
    WrongResourceType {
        path: String,
        expected: &'static str,
        found: String,
    },
    #[error("Bundle.type {0:?} is not accepted (use collection, transaction or document)")]
    BundleType(String),
    #[error("bundle has no Patient")]
    NoPatient,
    #[error("{path}: a second Patient (a bundle describes one patient)")]
    SecondPatient { path: String },
    #[error(
        "{path}: Patient has no NHS number (identifier system https://fhir.nhs.uk/Id/nhs-number)"
    )]
    NoNhsNumber { path: String },
    #[error("{path}: invalid NHS number: {reason}")]
    InvalidNhsNumber {
        path: String,
        reason: NhsNumberError,
    },
    #[error("{path}: {what} is required")]
    Missing { path: String, what: &'static str },
    #[error("{path}: {why}")]
    Invalid { path: String, why: String },
    #[error("{path}: no source organisation (no Provenance targets this item and it names no organisation)")]
    NoSource { path: String },
    #[error("bundle has {0} entries, more than the {MAX_ENTRIES}-entry limit")]
    TooManyEntries(usize),
}

type Result<T> = std::result::Result<T, IngestError>;

/// An item of any section, as ingested.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyItem {
    Allergy(Allergy),
    Medication(Medication),
    Condition(Condition),
    Resuscitation(Resuscitation),
    CarePlan(CarePlan),
    Alert(Alert),
}

impl AnyItem {
    pub fn provenance(&self) -> &Provenance {
        match self {
            AnyItem::Allergy(x) => &x.provenance,
            AnyItem::Medication(x) => &x.provenance,
            AnyItem::Condition(x) => &x.provenance,
            AnyItem::Resuscitation(x) => &x.provenance,
            AnyItem::CarePlan(x) => &x.provenance,
            AnyItem::Alert(x) => &x.provenance,
        }
    }
    pub fn section(&self) -> SectionKind {
        match self {
            AnyItem::Allergy(_) => SectionKind::Allergies,
            AnyItem::Medication(_) => SectionKind::Medications,
            AnyItem::Condition(_) => SectionKind::Conditions,
            AnyItem::Resuscitation(_) => SectionKind::Resuscitation,
            AnyItem::CarePlan(_) => SectionKind::CarePlans,
            AnyItem::Alert(_) => SectionKind::Alerts,
        }
    }
}

/// One change an ingested bundle makes to a patient's summary.
// Updates are short-lived (built by the mapper, consumed by `assemble`); boxing the large
// variant would cost an allocation per item for no memory benefit.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Add an item, or replace an older version of it (same source ODS and record id).
    Item(AnyItem),
    /// A source's statement about a whole section ("no known allergies").
    Marker(SectionKind, Marker),
    /// The source marked an item `entered-in-error`: remove it.
    Remove {
        section: SectionKind,
        provenance: Provenance,
    },
}

/// What one bundle says about one patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub nhs_number: NhsNumber,
    pub patient: Demographics,
    pub updates: Vec<Update>,
    /// `meta.security` confidentiality, when the bundle carries one.
    pub confidentiality: Option<Confidentiality>,
    /// For document bundles: `meta.versionId` and `timestamp` (the assembler's version and time).
    pub document_version: Option<(u64, UnixMillis)>,
    /// Entries of resource types Kerbside does not carry (Observation, Immunization…).
    pub skipped: usize,
}

/// Parse a bundle from JSON text.
pub fn parse_bundle_json(text: &str) -> Result<Contribution> {
    if text.len() > MAX_BUNDLE_BYTES {
        return Err(IngestError::TooLarge(text.len()));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| IngestError::Json {
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    parse_bundle(&v)
}

/// Map a parsed bundle.
pub fn parse_bundle(bundle: &Value) -> Result<Contribution> {
    let root = "Bundle".to_string();
    let obj = bundle.as_object().ok_or_else(|| IngestError::Invalid {
        path: root.clone(),
        why: "expected a JSON object".into(),
    })?;
    let rt = obj
        .get("resourceType")
        .and_then(Value::as_str)
        .unwrap_or("");
    if rt != "Bundle" {
        return Err(IngestError::WrongResourceType {
            path: "resourceType".into(),
            expected: "Bundle",
            found: rt.to_owned(),
        });
    }
    let btype = req_str(bundle, "type", &root)?;
    if !matches!(
        btype,
        "collection" | "transaction" | "document" | "batch" | "searchset" | "message"
    ) {
        return Err(IngestError::BundleType(btype.to_owned()));
    }
    let entries = match bundle.get("entry") {
        None => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(invalid("Bundle.entry", "expected an array")),
    };
    if entries.len() > MAX_ENTRIES {
        return Err(IngestError::TooManyEntries(entries.len()));
    }
    let bundle_time = opt_instant(bundle, "timestamp", "Bundle")?;

    // First pass: index resources by the references that may point at them.
    let mut resources: Vec<(String, &Value)> = Vec::with_capacity(entries.len());
    let mut orgs: HashMap<String, (OdsCode, Option<String>)> = HashMap::new();
    let mut prov_by_target: HashMap<String, (OdsCode, Option<String>, Option<UnixMillis>)> =
        HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let path = format!("Bundle.entry[{i}]");
        let r = e.get("resource").ok_or(IngestError::Missing {
            path: path.clone(),
            what: "resource",
        })?;
        let rpath = format!("{path}.resource");
        if !r.is_object() {
            return Err(invalid(&rpath, "expected a JSON object"));
        }
        let rt = req_str(r, "resourceType", &rpath)?;
        if rt == "Organization" {
            if let Some(ods) = ods_identifier(r.get("identifier"), &format!("{rpath}.identifier"))?
            {
                let name = opt_str(r, "name", &rpath)?.map(str::to_owned);
                for key in ref_keys(e, r) {
                    orgs.insert(key, (ods.clone(), name.clone()));
                }
            }
        }
        if rt == "Provenance" {
            let agent = r.get("agent").and_then(|a| a.get(0));
            let who = agent.and_then(|a| a.get("who"));
            let ods = match who {
                Some(w) => who_ods(w, &format!("{rpath}.agent[0].who"), &orgs)?,
                None => None,
            };
            let ods = ods.ok_or(IngestError::Missing {
                path: format!("{rpath}.agent[0].who.identifier"),
                what: "the source organisation's ODS code",
            })?;
            let name = who
                .and_then(|w| w.get("display"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            let recorded = opt_instant(r, "recorded", &rpath)?;
            let targets =
                r.get("target")
                    .and_then(Value::as_array)
                    .ok_or(IngestError::Missing {
                        path: format!("{rpath}.target"),
                        what: "target",
                    })?;
            for (j, t) in targets.iter().enumerate() {
                let reference = req_str(t, "reference", &format!("{rpath}.target[{j}]"))?;
                prov_by_target.insert(reference.to_owned(), (ods.clone(), name.clone(), recorded));
            }
        }
        resources.push((rpath, r));
    }

    let mut patient: Option<(NhsNumber, Demographics)> = None;
    let mut updates = Vec::new();
    let mut skipped = 0usize;
    let mut composition_markers = Vec::new();
    for (i, (rpath, r)) in resources.iter().enumerate() {
        let rt = req_str(r, "resourceType", rpath)?;
        let ctx = ItemCtx {
            entry: &entries[i],
            r,
            path: rpath,
            orgs: &orgs,
            provs: &prov_by_target,
            bundle_time,
        };
        match rt {
            "Patient" => {
                if patient.is_some() {
                    return Err(IngestError::SecondPatient {
                        path: rpath.clone(),
                    });
                }
                patient = Some(map_patient(r, rpath, bundle_time)?);
            }
            "AllergyIntolerance" => updates.push(map_allergy(&ctx)?),
            "MedicationStatement" | "MedicationRequest" => updates.push(map_medication(&ctx, rt)?),
            "Condition" => updates.push(map_condition(&ctx)?),
            "Consent" => {
                if is_adr_consent(r) {
                    updates.push(map_consent(&ctx)?);
                } else {
                    skipped += 1;
                }
            }
            "DocumentReference" => updates.push(map_docref(&ctx)?),
            "Flag" => updates.push(map_flag(&ctx)?),
            "Composition" => composition_markers.extend(map_composition(r, rpath)?),
            "Provenance" | "Organization" => {}
            _ => skipped += 1,
        }
    }
    let (nhs_number, demographics) = patient.ok_or(IngestError::NoPatient)?;
    updates.extend(
        composition_markers
            .into_iter()
            .map(|(k, m)| Update::Marker(k, m)),
    );

    let confidentiality = bundle_confidentiality(bundle);
    let document_version = if btype == "document" {
        let v = bundle
            .get("meta")
            .and_then(|m| m.get("versionId"))
            .and_then(Value::as_str)
            .and_then(|s| s.parse::<u64>().ok());
        match (v, bundle_time) {
            (Some(v), Some(t)) => Some((v, t)),
            _ => None,
        }
    } else {
        None
    };
    Ok(Contribution {
        nhs_number,
        patient: demographics,
        updates,
        confidentiality,
        document_version,
        skipped,
    })
}

struct ItemCtx<'a> {
    entry: &'a Value,
    r: &'a Value,
    path: &'a str,
    orgs: &'a HashMap<String, (OdsCode, Option<String>)>,
    provs: &'a HashMap<String, (OdsCode, Option<String>, Option<UnixMillis>)>,
    bundle_time: Option<UnixMillis>,
}

impl ItemCtx<'_> {
    fn at(&self, rel: &str) -> String {
        format!("{}.{rel}", self.path)
    }

    /// Provenance of this item. `own_org` is the element naming an organisation that FHIR
    /// allows on this resource type (informationSource, organization, custodian, author).
    fn provenance(&self, own_org: Option<&str>) -> Result<Provenance> {
        let mut source: Option<(OdsCode, Option<String>, Option<UnixMillis>)> = None;
        for key in ref_keys(self.entry, self.r) {
            if let Some(p) = self.provs.get(&key) {
                source = Some(p.clone());
                break;
            }
        }
        if source.is_none() {
            if let Some(field) = own_org {
                let v = self.r.get(field).map(|v| {
                    if let Value::Array(a) = v {
                        a.first().unwrap_or(v)
                    } else {
                        v
                    }
                });
                if let Some(w) = v {
                    if let Some(ods) = who_ods(w, &self.at(field), self.orgs)? {
                        let name = w.get("display").and_then(Value::as_str).map(str::to_owned);
                        source = Some((ods, name, None));
                    }
                }
            }
        }
        let (source_ods, source_name, recorded) = source.ok_or_else(|| IngestError::NoSource {
            path: self.path.to_owned(),
        })?;
        let meta = self.r.get("meta");
        let last_updated = match meta {
            Some(m) => opt_instant(m, "lastUpdated", &self.at("meta"))?,
            None => None,
        }
        .or(recorded)
        .or(self.bundle_time)
        .ok_or(IngestError::Missing {
            path: self.at("meta.lastUpdated"),
            what: "meta.lastUpdated",
        })?;
        let system = match meta {
            Some(m) => opt_str(m, "source", &self.at("meta"))?.map(str::to_owned),
            None => None,
        };
        let record_version = match meta {
            Some(m) => opt_str(m, "versionId", &self.at("meta"))?.map(str::to_owned),
            None => None,
        };
        let record_id = record_id(self.r, self.path)?;
        Ok(Provenance {
            source_ods,
            source_name,
            system,
            record_id,
            record_version,
            last_updated,
        })
    }

    fn entered_in_error(&self, status_field: &str) -> bool {
        let v = self.r.get(status_field);
        let direct = v.and_then(Value::as_str) == Some("entered-in-error");
        let coded = v
            .and_then(|c| c.get("coding"))
            .and_then(Value::as_array)
            .is_some_and(|a| {
                a.iter()
                    .any(|c| c.get("code").and_then(Value::as_str) == Some("entered-in-error"))
            });
        direct || coded
    }
}

fn invalid(path: &str, why: &str) -> IngestError {
    IngestError::Invalid {
        path: path.to_owned(),
        why: why.to_owned(),
    }
}

fn req_str<'a>(v: &'a Value, key: &'static str, path: &str) -> Result<&'a str> {
    opt_str(v, key, path)?.ok_or(IngestError::Missing {
        path: format!("{path}.{key}"),
        what: key,
    })
}

fn opt_str<'a>(v: &'a Value, key: &str, path: &str) -> Result<Option<&'a str>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.as_str())),
        Some(_) => Err(invalid(&format!("{path}.{key}"), "expected a string")),
    }
}

fn opt_instant(v: &Value, key: &str, path: &str) -> Result<Option<UnixMillis>> {
    match opt_str(v, key, path)? {
        None => Ok(None),
        Some(s) => UnixMillis::parse_rfc3339(s).map(Some).map_err(|_| {
            invalid(
                &format!("{path}.{key}"),
                "expected an instant like 2024-11-02T10:00:00Z",
            )
        }),
    }
}

fn opt_date(v: &Value, key: &str, path: &str) -> Result<Option<FhirDate>> {
    match opt_str(v, key, path)? {
        None => Ok(None),
        Some(s) => FhirDate::parse(s)
            .map(Some)
            .map_err(|_| invalid(&format!("{path}.{key}"), "expected a FHIR date or dateTime")),
    }
}

/// The references by which other resources may point at this entry.
fn ref_keys(entry: &Value, r: &Value) -> Vec<String> {
    let mut keys = Vec::with_capacity(2);
    if let Some(u) = entry.get("fullUrl").and_then(Value::as_str) {
        keys.push(u.to_owned());
    }
    if let (Some(t), Some(id)) = (
        r.get("resourceType").and_then(Value::as_str),
        r.get("id").and_then(Value::as_str),
    ) {
        keys.push(format!("{t}/{id}"));
    }
    keys
}

fn record_id(r: &Value, path: &str) -> Result<String> {
    if let Some(first) = r.get("identifier").and_then(|i| {
        if let Value::Array(a) = i {
            a.first()
        } else {
            Some(i)
        }
    }) {
        if let Some(value) = first.get("value").and_then(Value::as_str) {
            return Ok(match first.get("system").and_then(Value::as_str) {
                Some(system) if !system.is_empty() => format!("{system}|{value}"),
                _ => value.to_owned(),
            });
        }
    }
    r.get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or(IngestError::Missing {
            path: format!("{path}.id"),
            what: "an id or identifier",
        })
}

/// An ODS code from an identifier (object or array of identifiers).
fn ods_identifier(v: Option<&Value>, path: &str) -> Result<Option<OdsCode>> {
    let list: Vec<&Value> = match v {
        None => return Ok(None),
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o) => vec![o],
    };
    for id in list {
        if id.get("system").and_then(Value::as_str) == Some(fhir::ODS) {
            let value = id.get("value").and_then(Value::as_str).unwrap_or("");
            return OdsCode::parse(value)
                .map(Some)
                .map_err(|e| invalid(path, &e.to_string()));
        }
    }
    Ok(None)
}

/// The ODS code a reference names, by identifier or by pointing at an Organization in the bundle.
fn who_ods(
    who: &Value,
    path: &str,
    orgs: &HashMap<String, (OdsCode, Option<String>)>,
) -> Result<Option<OdsCode>> {
    if let Some(ods) = ods_identifier(who.get("identifier"), &format!("{path}.identifier"))? {
        return Ok(Some(ods));
    }
    Ok(who
        .get("reference")
        .and_then(Value::as_str)
        .and_then(|r| orgs.get(r))
        .map(|(o, _)| o.clone()))
}

/// A CodeableConcept: the preferred coding (SNOMED first) and the text.
fn concept(v: &Value, path: &str) -> Result<Concept> {
    if !v.is_object() {
        return Err(invalid(path, "expected a CodeableConcept object"));
    }
    let text = opt_str(v, "text", path)?.map(str::to_owned);
    let mut coding = None;
    if let Some(c) = v.get("coding") {
        let arr = c
            .as_array()
            .ok_or_else(|| invalid(&format!("{path}.coding"), "expected an array"))?;
        let mut best: Option<Coding> = None;
        for (i, c) in arr.iter().enumerate() {
            let cp = format!("{path}.coding[{i}]");
            let (Some(system), Some(code)) = (opt_str(c, "system", &cp)?, opt_str(c, "code", &cp)?)
            else {
                continue;
            };
            let this = Coding {
                system: system.to_owned(),
                code: code.to_owned(),
                display: opt_str(c, "display", &cp)?.map(str::to_owned),
            };
            let better = best
                .as_ref()
                .is_none_or(|b| b.system != fhir::SNOMED && this.system == fhir::SNOMED);
            if better {
                best = Some(this);
            }
        }
        coding = best;
    }
    if coding.is_none() && text.is_none() {
        return Err(invalid(path, "has neither a coding nor text"));
    }
    Ok(Concept { coding, text })
}

fn opt_concept(v: &Value, key: &str, path: &str) -> Result<Option<Concept>> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(c) => concept(c, &format!("{path}.{key}")).map(Some),
    }
}

/// The first code of a CodeableConcept status (`clinicalStatus` and friends).
fn status_code(v: &Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(|c| c.get("coding"))
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("code"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn map_patient(
    r: &Value,
    path: &str,
    bundle_time: Option<UnixMillis>,
) -> Result<(NhsNumber, Demographics)> {
    let ids = r.get("identifier").and_then(Value::as_array);
    let mut nhs = None;
    for (i, id) in ids.into_iter().flatten().enumerate() {
        if id.get("system").and_then(Value::as_str) == Some(fhir::NHS_NUMBER) {
            let ipath = format!("{path}.identifier[{i}]");
            let value = req_str(id, "value", &ipath)?;
            let n = NhsNumber::parse(value).map_err(|reason| IngestError::InvalidNhsNumber {
                path: format!("{ipath}.value"),
                reason,
            })?;
            let verification = id
                .get("extension")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(fhir::EXT_NHS_VERIFICATION))
                .and_then(|e| e.get("valueCodeableConcept"))
                .and_then(|c| c.get("coding"))
                .and_then(|c| c.get(0))
                .and_then(|c| c.get("code"))
                .and_then(Value::as_str)
                .map(str::to_owned);
            nhs = Some((n, verification));
            break;
        }
    }
    let (nhs_number, nhs_verification) = nhs.ok_or(IngestError::NoNhsNumber {
        path: format!("{path}.identifier"),
    })?;
    let names = r.get("name").and_then(Value::as_array);
    let name = names.and_then(|n| {
        n.iter()
            .find(|x| x.get("use").and_then(Value::as_str) == Some("official"))
            .or_else(|| n.first())
    });
    let family = name
        .and_then(|n| n.get("family"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let given = name
        .and_then(|n| n.get("given"))
        .and_then(Value::as_array)
        .map(|g| {
            g.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let gender = match opt_str(r, "gender", path)? {
        None => Gender::Unknown,
        Some("male") => Gender::Male,
        Some("female") => Gender::Female,
        Some("other") => Gender::Other,
        Some("unknown") => Gender::Unknown,
        Some(_) => {
            return Err(invalid(
                &format!("{path}.gender"),
                "expected male, female, other or unknown",
            ))
        }
    };
    let postcode = r
        .get("address")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(|a| a.get("postalCode"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let gp_practice = match r.get("generalPractitioner").and_then(Value::as_array) {
        Some(gps) => {
            let mut found = None;
            for (i, gp) in gps.iter().enumerate() {
                if let Some(o) = ods_identifier(
                    gp.get("identifier"),
                    &format!("{path}.generalPractitioner[{i}].identifier"),
                )? {
                    found = Some(o);
                    break;
                }
            }
            found
        }
        None => None,
    };
    let last_updated = match r.get("meta") {
        Some(m) => opt_instant(m, "lastUpdated", &format!("{path}.meta"))?,
        None => None,
    }
    .or(bundle_time)
    .unwrap_or_default();
    let birth_date = opt_date(r, "birthDate", path)?;
    Ok((
        nhs_number,
        Demographics {
            family,
            given,
            birth_date,
            gender,
            postcode,
            gp_practice,
            nhs_verification,
            last_updated,
        },
    ))
}

fn marker_or_item(
    ctx: &ItemCtx<'_>,
    section: SectionKind,
    status_field: &str,
    code: Concept,
    prov: Provenance,
    item: impl FnOnce(Concept, Provenance) -> Result<AnyItem>,
) -> Result<Update> {
    if ctx.entered_in_error(status_field) {
        return Ok(Update::Remove {
            section,
            provenance: prov,
        });
    }
    if let Some(marked) = code.snomed().and_then(codes::no_known_section) {
        if marked == section {
            return Ok(Update::Marker(
                section,
                Marker {
                    status: SectionStatus::NoneKnown,
                    concept: Some(code),
                    provenance: Some(prov),
                },
            ));
        }
    }
    item(code, prov).map(Update::Item)
}

fn map_allergy(ctx: &ItemCtx<'_>) -> Result<Update> {
    let r = ctx.r;
    let code = opt_concept(r, "code", ctx.path)?.ok_or(IngestError::Missing {
        path: ctx.at("code"),
        what: "code",
    })?;
    let prov = ctx.provenance(None)?;
    marker_or_item(
        ctx,
        SectionKind::Allergies,
        "verificationStatus",
        code,
        prov,
        |code, provenance| {
            let category = match r
                .get("category")
                .and_then(|c| c.get(0))
                .and_then(Value::as_str)
            {
                None => None,
                Some("food") => Some(AllergyCategory::Food),
                Some("medication") => Some(AllergyCategory::Medication),
                Some("environment") => Some(AllergyCategory::Environment),
                Some("biologic") => Some(AllergyCategory::Biologic),
                Some(_) => {
                    return Err(invalid(
                        &ctx.at("category[0]"),
                        "expected food, medication, environment or biologic",
                    ))
                }
            };
            let criticality = match opt_str(r, "criticality", ctx.path)? {
                None => None,
                Some("low") => Some(Criticality::Low),
                Some("high") => Some(Criticality::High),
                Some("unable-to-assess") => Some(Criticality::UnableToAssess),
                Some(_) => {
                    return Err(invalid(
                        &ctx.at("criticality"),
                        "expected low, high or unable-to-assess",
                    ))
                }
            };
            let mut reactions = Vec::new();
            for (i, rx) in r
                .get("reaction")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .enumerate()
            {
                let rp = ctx.at(&format!("reaction[{i}]"));
                let m =
                    rx.get("manifestation")
                        .and_then(|m| m.get(0))
                        .ok_or(IngestError::Missing {
                            path: format!("{rp}.manifestation"),
                            what: "manifestation",
                        })?;
                let severity = match opt_str(rx, "severity", &rp)? {
                    None => None,
                    Some("mild") => Some(Severity::Mild),
                    Some("moderate") => Some(Severity::Moderate),
                    Some("severe") => Some(Severity::Severe),
                    Some(_) => {
                        return Err(invalid(
                            &format!("{rp}.severity"),
                            "expected mild, moderate or severe",
                        ))
                    }
                };
                reactions.push(Reaction {
                    manifestation: concept(m, &format!("{rp}.manifestation[0]"))?,
                    severity,
                });
            }
            Ok(AnyItem::Allergy(Allergy {
                concept: code,
                clinical_status: status_code(r, "clinicalStatus"),
                verification_status: status_code(r, "verificationStatus"),
                category,
                criticality,
                reactions,
                onset: opt_date(r, "onsetDateTime", ctx.path)?,
                recorded: opt_date(r, "recordedDate", ctx.path)?,
                provenance,
            }))
        },
    )
}

fn map_medication(ctx: &ItemCtx<'_>, rt: &str) -> Result<Update> {
    let r = ctx.r;
    let code = match r.get("medicationCodeableConcept") {
        Some(c) => concept(c, &ctx.at("medicationCodeableConcept"))?,
        None => match r
            .get("medicationReference")
            .and_then(|m| m.get("display"))
            .and_then(Value::as_str)
        {
            Some(d) => Concept {
                coding: None,
                text: Some(d.to_owned()),
            },
            None => {
                return Err(IngestError::Missing {
                    path: ctx.at("medicationCodeableConcept"),
                    what: "the medication",
                })
            }
        },
    };
    let own = if rt == "MedicationStatement" {
        "informationSource"
    } else {
        "requester"
    };
    let prov = ctx.provenance(Some(own))?;
    if opt_str(r, "status", ctx.path)? == Some("entered-in-error") {
        return Ok(Update::Remove {
            section: SectionKind::Medications,
            provenance: prov,
        });
    }
    marker_or_item(
        ctx,
        SectionKind::Medications,
        "status",
        code,
        prov,
        |code, provenance| {
            let dosage = r
                .get("dosage")
                .or_else(|| r.get("dosageInstruction"))
                .and_then(|d| d.get(0));
            let dosage_text = match dosage {
                Some(d) => opt_str(d, "text", &ctx.at("dosage[0]"))?.map(str::to_owned),
                None => None,
            };
            let route = match dosage {
                Some(d) => opt_concept(d, "route", &ctx.at("dosage[0]"))?,
                None => None,
            };
            let started = match r.get("effectivePeriod") {
                Some(p) => opt_date(p, "start", &ctx.at("effectivePeriod"))?,
                None => opt_date(r, "effectiveDateTime", ctx.path)?.or(opt_date(
                    r,
                    "authoredOn",
                    ctx.path,
                )?),
            };
            let last_issued = r
                .get("extension")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(fhir::EXT_LAST_ISSUE))
                .map(|e| opt_date(e, "valueDateTime", &ctx.at("extension")))
                .transpose()?
                .flatten();
            let prescriber_ods = match r.get(own) {
                Some(w) => who_ods(w, &ctx.at(own), ctx.orgs)?,
                None => None,
            };
            let high_risk = codes::high_risk_class(code.snomed(), code.label());
            Ok(AnyItem::Medication(Medication {
                concept: code,
                status: opt_str(r, "status", ctx.path)?.map(str::to_owned),
                dosage: dosage_text,
                route,
                started,
                last_issued,
                prescriber_ods,
                high_risk,
                from_request: rt == "MedicationRequest",
                provenance,
            }))
        },
    )
}

fn map_condition(ctx: &ItemCtx<'_>) -> Result<Update> {
    let r = ctx.r;
    let code = opt_concept(r, "code", ctx.path)?.ok_or(IngestError::Missing {
        path: ctx.at("code"),
        what: "code",
    })?;
    let prov = ctx.provenance(None)?;
    marker_or_item(
        ctx,
        SectionKind::Conditions,
        "verificationStatus",
        code,
        prov,
        |code, provenance| {
            let significance = r
                .get("extension")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|e| e.get("url").and_then(Value::as_str) == Some(fhir::EXT_SIGNIFICANCE))
                .and_then(|e| e.get("valueCode"))
                .and_then(Value::as_str)
                .and_then(|s| match s {
                    "major" => Some(Significance::Major),
                    "minor" => Some(Significance::Minor),
                    _ => None,
                });
            Ok(AnyItem::Condition(Condition {
                concept: code,
                clinical_status: status_code(r, "clinicalStatus"),
                verification_status: status_code(r, "verificationStatus"),
                onset: opt_date(r, "onsetDateTime", ctx.path)?,
                recorded: opt_date(r, "recordedDate", ctx.path)?,
                significance,
                provenance,
            }))
        },
    )
}

fn is_adr_consent(r: &Value) -> bool {
    r.get("scope")
        .and_then(|s| s.get("coding"))
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|c| c.get("code").and_then(Value::as_str) == Some("adr"))
        })
}

fn map_consent(ctx: &ItemCtx<'_>) -> Result<Update> {
    let r = ctx.r;
    let prov = ctx.provenance(Some("organization"))?;
    if opt_str(r, "status", ctx.path)? == Some("entered-in-error") {
        return Ok(Update::Remove {
            section: SectionKind::Resuscitation,
            provenance: prov,
        });
    }
    let provision = r.get("provision");
    let decision = provision
        .and_then(|p| p.get("code"))
        .and_then(|c| c.get(0))
        .map(|c| concept(c, &ctx.at("provision.code[0]")))
        .transpose()?
        .ok_or(IngestError::Missing {
            path: ctx.at("provision.code"),
            what: "the resuscitation decision",
        })?;
    let review = match provision.and_then(|p| p.get("period")) {
        Some(p) => opt_date(p, "end", &ctx.at("provision.period"))?,
        None => None,
    };
    let decision_maker = r
        .get("performer")
        .and_then(|p| p.get(0))
        .and_then(|p| p.get("display"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Update::Item(AnyItem::Resuscitation(Resuscitation {
        decision,
        status: opt_str(r, "status", ctx.path)?.map(str::to_owned),
        decided: opt_date(r, "dateTime", ctx.path)?,
        review,
        decision_maker,
        provenance: prov,
    })))
}

fn map_docref(ctx: &ItemCtx<'_>) -> Result<Update> {
    let r = ctx.r;
    let prov = ctx.provenance(Some("custodian"))?;
    if opt_str(r, "status", ctx.path)? == Some("entered-in-error") {
        return Ok(Update::Remove {
            section: SectionKind::CarePlans,
            provenance: prov,
        });
    }
    let plan_type = opt_concept(r, "type", ctx.path)?.ok_or(IngestError::Missing {
        path: ctx.at("type"),
        what: "type",
    })?;
    let custodian = match r.get("custodian") {
        Some(w) => who_ods(w, &ctx.at("custodian"), ctx.orgs)?,
        None => None,
    };
    let url = r
        .get("content")
        .and_then(|c| c.get(0))
        .and_then(|c| c.get("attachment"))
        .and_then(|a| a.get("url"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    Ok(Update::Item(AnyItem::CarePlan(CarePlan {
        plan_type,
        status: opt_str(r, "status", ctx.path)?.map(str::to_owned),
        custodian,
        date: opt_date(r, "date", ctx.path)?,
        extract: opt_str(r, "description", ctx.path)?.map(str::to_owned),
        url,
        provenance: prov,
    })))
}

fn map_flag(ctx: &ItemCtx<'_>) -> Result<Update> {
    let r = ctx.r;
    let prov = ctx.provenance(Some("author"))?;
    if opt_str(r, "status", ctx.path)? == Some("entered-in-error") {
        return Ok(Update::Remove {
            section: SectionKind::Alerts,
            provenance: prov,
        });
    }
    let flag = opt_concept(r, "code", ctx.path)?.ok_or(IngestError::Missing {
        path: ctx.at("code"),
        what: "code",
    })?;
    let category = match r.get("category").and_then(|c| c.get(0)) {
        Some(c) => Some(concept(c, &ctx.at("category[0]"))?),
        None => None,
    };
    let (start, end) = match r.get("period") {
        Some(p) => (
            opt_date(p, "start", &ctx.at("period"))?,
            opt_date(p, "end", &ctx.at("period"))?,
        ),
        None => (None, None),
    };
    Ok(Update::Item(AnyItem::Alert(Alert {
        flag,
        category,
        status: opt_str(r, "status", ctx.path)?.map(str::to_owned),
        start,
        end,
        provenance: prov,
    })))
}

/// Section empty reasons from a document's Composition.
fn map_composition(r: &Value, path: &str) -> Result<Vec<(SectionKind, Marker)>> {
    let mut out = Vec::new();
    for (i, s) in r
        .get("section")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(code) = s
            .get("code")
            .and_then(|c| c.get("coding"))
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("code"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let Some(kind) = SectionKind::from_loinc(code) else {
            continue;
        };
        let Some(reason) = s
            .get("emptyReason")
            .and_then(|c| c.get("coding"))
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("code"))
            .and_then(Value::as_str)
        else {
            continue;
        };
        let status = match reason {
            "nilknown" => SectionStatus::NoneKnown,
            "withheld" => SectionStatus::Withheld,
            "notasked" | "unavailable" | "notstarted" | "closed" => continue,
            _ => {
                return Err(invalid(
                    &format!("{path}.section[{i}].emptyReason"),
                    "unknown list-empty-reason code",
                ))
            }
        };
        out.push((
            kind,
            Marker {
                status,
                concept: None,
                provenance: None,
            },
        ));
    }
    Ok(out)
}

fn bundle_confidentiality(bundle: &Value) -> Option<Confidentiality> {
    let sec = bundle.get("meta")?.get("security")?.as_array()?;
    let mut out = None;
    for s in sec {
        if s.get("system").and_then(Value::as_str) == Some(fhir::CONFIDENTIALITY) {
            out = match s.get("code").and_then(Value::as_str) {
                Some("N") | Some("L") | Some("M") => Some(Confidentiality::Normal),
                Some(_) => Some(Confidentiality::Restricted),
                None => out,
            };
        }
    }
    out
}
