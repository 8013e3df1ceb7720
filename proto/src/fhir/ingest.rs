//! FHIR R4 Bundle → [`Contribution`]s: what one bundle says about each patient in it.
//!
//! The hub merges contributions into each patient's summary with [`crate::assemble`]. Every
//! refusal is a typed [`IngestError`] naming the JSON path; errors and warnings never quote NHS
//! numbers or clinical text, because they end up in logs and operator replies.
//!
//! Real feeds are taken as they come (see `docs/fhir-mapping.md`, one table per shape):
//!
//! * **References** resolve by `fullUrl` (absolute URL or `urn:uuid:`), `Type/id` (also the
//!   tail of an absolute URL, `_history` dropped) and contained `#id`. A reference that resolves
//!   nowhere keeps its `display`, is marked on the item ([`CaveatKind::Unresolved`]) and warned
//!   about — never emptied, never a refusal.
//! * **Source organisation** per item, in order: a `Provenance` targeting it; the item's own
//!   organisation (`recorder`, `asserter`, `informationSource`, `performer`, `author`,
//!   `requester`, `organization`, `custodian` → an Organization, a PractitionerRole's
//!   organisation, or a Practitioner that a PractitionerRole ties to one); a document's
//!   `Composition.custodian`, then `author`; the feed's default source ([`IngestOptions`]).
//! * **Identity**: the current NHS number is the identifier that is not `use: old` and whose
//!   period has not ended; the rest are former numbers (aliases). A retired record
//!   (`active: false`, `link` replaced-by) is filed under its replacement. Name by use and
//!   period; deceased; GP practice; restricted (S-flag) patients keep no address.
//! * **Subjects**: every clinical item must be about a Patient of the bundle. In a one-patient
//!   bundle an item about someone else is rejected alone ([`ItemRejection`]); a bundle with
//!   several Patients is split by subject, or refused when an item's subject names none of them.
//! * **Withdrawals**: `DELETE` entries, and full snapshots (a `document`, or a feed marked
//!   snapshot) that no longer hold an item, withdraw it.
//! * **Bounds**: free text is cut at [`MAX_ITEM_TEXT`] characters (marked on the item); at most
//!   [`MAX_ENTRIES`] entries; unknown resource types are skipped and counted in a warning.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::Value;

use crate::codes;
use crate::fhir::{self, SectionKind};
use crate::ids::{OdsCode, SourceId};
use crate::model::*;
use crate::nhs::{NhsNumber, NhsNumberError};
use crate::time::UnixMillis;

/// The largest bundle accepted (bytes of JSON).
pub const MAX_BUNDLE_BYTES: usize = 8 * 1024 * 1024;
/// The most entries one bundle may hold.
pub const MAX_ENTRIES: usize = 10_000;
/// The most Patients one bundle may hold (a family's bundle; more is a bulk export).
pub const MAX_PATIENTS: usize = 20;
/// The most warnings reported per bundle (the rest are counted in the last one).
pub const MAX_WARNINGS: usize = 50;

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
    #[error("{path}: {why}")]
    SecondPatient { path: String, why: String },
    #[error(
        "{path}: Patient has no current NHS number (identifier system https://fhir.nhs.uk/Id/nhs-number, not use old, period not ended)"
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
    #[error("{path}: no source organisation: no Provenance targets this item, it names no organisation (recorder, asserter, informationSource, performer, author), the bundle is not a document with a custodian or author, and the feed has no default source; give one with `edge-hub ingest --source ODS` or `POST /admin/ingest?source=ODS`")]
    NoSource { path: String },
    #[error("bundle has {0} entries, more than the {MAX_ENTRIES}-entry limit")]
    TooManyEntries(usize),
    #[error("{path}: the bundle has several Patients and this item's {field} names none of them, so the bundle cannot be split by patient; send one bundle per patient or give every item a subject")]
    Unsplittable { path: String, field: &'static str },
    #[error("{path}: the Patient is retired (active false) and no link names the record that replaced it; not filed (send the current record, or a link of type replaced-by)")]
    RetiredWithoutReplacement { path: String },
}

type Result<T> = std::result::Result<T, IngestError>;

/// What the feed says about bundles that do not say it themselves.
#[derive(Debug, Clone, Default)]
pub struct IngestOptions {
    /// The feed's organisation: items with no organisation of their own are filed under it.
    pub default_source: Option<SourceId>,
    /// Every bundle of this feed is a full snapshot of its sources' records (all sections).
    pub snapshot: bool,
    /// The time of ingest: periods (names, NHS numbers) that ended before it are past; items
    /// with no date at all are dated at it. `None`: the bundle's own timestamp.
    pub now: Option<UnixMillis>,
}

/// An item rejected alone (its subject is someone else); the rest of its bundle applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemRejection {
    /// The entry's index in `Bundle.entry`.
    pub entry: usize,
    pub error: String,
}

/// What one bundle says, patient by patient.
#[derive(Debug, Clone, PartialEq)]
pub struct Ingested {
    /// One per patient (several when a bundle is split by subject).
    pub contributions: Vec<Contribution>,
    /// Items that were about someone else, rejected alone.
    pub rejected_items: Vec<ItemRejection>,
    /// What was skipped, unresolved, truncated or redirected (no clinical text, no NHS numbers).
    pub warnings: Vec<String>,
}

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
    pub fn provenance_mut(&mut self) -> &mut Provenance {
        match self {
            AnyItem::Allergy(x) => &mut x.provenance,
            AnyItem::Medication(x) => &mut x.provenance,
            AnyItem::Condition(x) => &mut x.provenance,
            AnyItem::Resuscitation(x) => &mut x.provenance,
            AnyItem::CarePlan(x) => &mut x.provenance,
            AnyItem::Alert(x) => &mut x.provenance,
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

    /// Every free-text field of the item, with its FHIR element name (for the text cap).
    fn texts_mut(&mut self) -> Vec<(&'static str, &mut String)> {
        fn concept<'a>(
            out: &mut Vec<(&'static str, &'a mut String)>,
            field: &'static str,
            c: &'a mut Concept,
        ) {
            if let Some(t) = &mut c.text {
                out.push((field, t));
            }
            if let Some(d) = c.coding.as_mut().and_then(|c| c.display.as_mut()) {
                out.push((field, d));
            }
        }
        let mut out = Vec::new();
        match self {
            AnyItem::Allergy(x) => {
                concept(&mut out, "code", &mut x.concept);
                for r in &mut x.reactions {
                    concept(&mut out, "reaction.manifestation", &mut r.manifestation);
                }
            }
            AnyItem::Medication(x) => {
                concept(&mut out, "medication", &mut x.concept);
                if let Some(d) = &mut x.dosage {
                    out.push(("dosage.text", d));
                }
            }
            AnyItem::Condition(x) => concept(&mut out, "code", &mut x.concept),
            AnyItem::Resuscitation(x) => {
                concept(&mut out, "provision.code", &mut x.decision);
                if let Some(d) = &mut x.decision_maker {
                    out.push(("performer", d));
                }
            }
            AnyItem::CarePlan(x) => {
                concept(&mut out, "type", &mut x.plan_type);
                if let Some(d) = &mut x.extract {
                    out.push(("description", d));
                }
            }
            AnyItem::Alert(x) => concept(&mut out, "code", &mut x.flag),
        }
        out
    }
}

/// One change an ingested bundle makes to a patient's summary.
// Updates are short-lived (built by the mapper, consumed by `assemble`); boxing the large
// variant would cost an allocation per item for no memory benefit.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Update {
    /// Add an item, or replace an older version of it (same source and record id).
    Item(AnyItem),
    /// A source's statement about a whole section ("no known allergies").
    Marker(SectionKind, Marker),
    /// The source marked an item `entered-in-error`: remove it.
    Remove {
        section: SectionKind,
        provenance: Provenance,
    },
    /// A `DELETE` entry: the source withdrew the item with this record id or resource id
    /// (`Type/id`); no version dated at or before `at` comes back.
    Delete {
        section: SectionKind,
        source: SourceId,
        id: String,
        at: UnixMillis,
    },
    /// A full snapshot from `source` as of `as_of`: its items in `sections` dated at or
    /// before `as_of` and not in `keep` (record ids) are withdrawn.
    Snapshot {
        source: SourceId,
        sections: Vec<SectionKind>,
        as_of: UnixMillis,
        keep: Vec<String>,
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

/// Parse a one-patient bundle from JSON text with no feed options: the first contribution.
/// Feeds use [`ingest_bundle_json`], which splits several-patient bundles and reports
/// warnings and items rejected alone.
pub fn parse_bundle_json(text: &str) -> Result<Contribution> {
    one(ingest_bundle_json(text, &IngestOptions::default())?)
}

/// Map a parsed one-patient bundle with no feed options (see [`parse_bundle_json`]).
pub fn parse_bundle(bundle: &Value) -> Result<Contribution> {
    one(ingest_bundle(bundle, &IngestOptions::default())?)
}

fn one(i: Ingested) -> Result<Contribution> {
    let n = i.contributions.len();
    let mut it = i.contributions.into_iter();
    match (it.next(), n) {
        (Some(c), 1) => Ok(c),
        (None, _) => Err(IngestError::NoPatient),
        (Some(_), _) => Err(IngestError::SecondPatient {
            path: "Bundle".into(),
            why: format!("the bundle describes {n} patients (use ingest_bundle to split it)"),
        }),
    }
}

/// Parse and map a bundle from JSON text.
pub fn ingest_bundle_json(text: &str, opts: &IngestOptions) -> Result<Ingested> {
    if text.len() > MAX_BUNDLE_BYTES {
        return Err(IngestError::TooLarge(text.len()));
    }
    let v: Value = serde_json::from_str(text).map_err(|e| IngestError::Json {
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    ingest_bundle(&v, opts)
}

// ---------------------------------------------------------------------------------------------
// The bundle index: references resolved however real bundles write them
// ---------------------------------------------------------------------------------------------

struct Entry<'a> {
    rt: &'a str,
    r: &'a Value,
    path: String,
}

struct Index<'a> {
    entries: Vec<Option<Entry<'a>>>,
    by_ref: HashMap<String, usize>,
}

/// A resource a reference points at: an entry of the bundle, or a resource contained in one.
#[derive(Clone, Copy)]
enum Target<'a> {
    Entry(usize),
    Contained(&'a Value),
}

/// The forms a reference string may take for the same resource: as written, `_history`
/// dropped, and the `Type/id` tail of an absolute URL.
fn ref_forms(reference: &str) -> Vec<String> {
    let mut out = vec![reference.to_owned()];
    let base = match reference.find("/_history") {
        Some(i) => &reference[..i],
        None => reference,
    };
    if base != reference {
        out.push(base.to_owned());
    }
    let parts: Vec<&str> = base.rsplitn(3, '/').collect();
    if parts.len() >= 2 && !base.starts_with("urn:") {
        let tail = format!("{}/{}", parts[1], parts[0]);
        if tail != base {
            out.push(tail);
        }
    }
    out
}

impl<'a> Index<'a> {
    fn entry(&self, i: usize) -> Option<&Entry<'a>> {
        self.entries.get(i).and_then(Option::as_ref)
    }

    /// Resolve a Reference object, from within resource `from` (for contained `#id`).
    fn resolve(&self, reference: &'a Value, from: Option<&'a Value>) -> Option<Target<'a>> {
        let s = reference.get("reference").and_then(Value::as_str)?;
        if let Some(id) = s.strip_prefix('#') {
            return from
                .and_then(|f| f.get("contained"))
                .and_then(Value::as_array)
                .and_then(|a| {
                    a.iter()
                        .find(|c| c.get("id").and_then(Value::as_str) == Some(id))
                })
                .map(Target::Contained);
        }
        ref_forms(s)
            .iter()
            .find_map(|k| self.by_ref.get(k))
            .map(|&i| Target::Entry(i))
    }

    fn value(&self, t: Target<'a>) -> Option<&'a Value> {
        match t {
            Target::Entry(i) => self.entry(i).map(|e| e.r),
            Target::Contained(v) => Some(v),
        }
    }
}

/// An organisation as a source: its identity and name.
#[derive(Debug, Clone, PartialEq)]
struct Org {
    id: SourceId,
    name: Option<String>,
}

/// The organisation an identifier (object or array) names: ODS first; another identifier only
/// when `any_system` (the element is known to name an organisation).
fn org_identifier(v: Option<&Value>, any_system: bool) -> Option<SourceId> {
    let list: Vec<&Value> = match v {
        None => return None,
        Some(Value::Array(a)) => a.iter().collect(),
        Some(o) => vec![o],
    };
    fn value_of(id: &Value) -> Option<&str> {
        id.get("value").and_then(Value::as_str).map(str::trim)
    }
    for id in &list {
        if id.get("system").and_then(Value::as_str) == Some(fhir::ODS) {
            if let Some(o) = value_of(id).and_then(|v| OdsCode::parse(v).ok()) {
                return Some(SourceId::ods(&o));
            }
        }
    }
    if any_system {
        for id in &list {
            if let (Some(system), Some(value)) =
                (id.get("system").and_then(Value::as_str), value_of(id))
            {
                if let Ok(s) = SourceId::other(system, value) {
                    return Some(s);
                }
            }
        }
    }
    None
}

fn str_at<'v>(v: &'v Value, key: &str) -> Option<&'v str> {
    v.get(key).and_then(Value::as_str)
}

fn display_of(reference: &Value) -> Option<String> {
    str_at(reference, "display").map(str::to_owned)
}

struct Resolver<'i, 'a> {
    ix: &'i Index<'a>,
}

impl<'a> Resolver<'_, 'a> {
    /// The organisation a Reference names: by identifier, or by pointing at an Organization, a
    /// PractitionerRole (its organisation), or a Practitioner a PractitionerRole ties to one.
    fn org(&self, reference: &'a Value, from: Option<&'a Value>, depth: u8) -> Option<Org> {
        if !reference.is_object() || depth > 3 {
            return None;
        }
        let typed_org = str_at(reference, "type") == Some("Organization");
        if let Some(id) = org_identifier(reference.get("identifier"), typed_org) {
            return Some(Org {
                id,
                name: display_of(reference),
            });
        }
        let target = self.ix.resolve(reference, from)?;
        let r = self.ix.value(target)?;
        match str_at(r, "resourceType")? {
            "Organization" => {
                let id = org_identifier(r.get("identifier"), true)?;
                let name = str_at(r, "name")
                    .map(str::to_owned)
                    .or_else(|| display_of(reference));
                Some(Org { id, name })
            }
            "PractitionerRole" => r
                .get("organization")
                .and_then(|o| self.org(o, Some(r), depth + 1)),
            "Practitioner" => {
                let Target::Entry(pi) = target else {
                    return None;
                };
                // A PractitionerRole in the bundle that ties this Practitioner to an organisation.
                self.ix.entries.iter().flatten().find_map(|e| {
                    if e.rt != "PractitionerRole" {
                        return None;
                    }
                    let p = e.r.get("practitioner")?;
                    match self.ix.resolve(p, Some(e.r)) {
                        Some(Target::Entry(i)) if i == pi => {
                            e.r.get("organization")
                                .and_then(|o| self.org(o, Some(e.r), depth + 1))
                        }
                        _ => None,
                    }
                })
            }
            _ => None,
        }
    }

    /// The first organisation named by `field` (a Reference or an array of them).
    fn org_field(&self, r: &'a Value, field: &str) -> Option<Org> {
        match r.get(field)? {
            Value::Array(a) => a.iter().find_map(|x| self.org(x, Some(r), 0)),
            v => self.org(v, Some(r), 0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Patients
// ---------------------------------------------------------------------------------------------

/// One Patient entry, mapped.
struct PatientEntry {
    entry: usize,
    nhs: NhsNumber,
    all_numbers: Vec<NhsNumber>,
    demographics: Demographics,
    /// Retired (`active: false`) and replaced by: a Patient entry of the bundle, or a number.
    replaced_by: Option<Replacement>,
}

enum Replacement {
    Entry(usize),
    Number(NhsNumber),
}

/// Who is filed where: each group is one contribution.
struct Group {
    nhs: NhsNumber,
    demographics: Demographics,
    /// Patient entries filed into this group.
    entries: Vec<usize>,
    /// Every NHS number by which an item may name this patient.
    numbers: BTreeSet<NhsNumber>,
    updates: Vec<Update>,
}

/// The whole bundle, mapped.
pub fn ingest_bundle(bundle: &Value, opts: &IngestOptions) -> Result<Ingested> {
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
    let raw_entries = match bundle.get("entry") {
        None => &[][..],
        Some(Value::Array(a)) => a.as_slice(),
        Some(_) => return Err(invalid("Bundle.entry", "expected an array")),
    };
    if raw_entries.len() > MAX_ENTRIES {
        return Err(IngestError::TooManyEntries(raw_entries.len()));
    }
    let bundle_time = opt_instant(bundle, "timestamp", "Bundle")?;
    let now = opts.now.or(bundle_time);
    let warnings = RefCell::new(Warnings::default());

    // Index every entry by the references that may point at it; collect DELETE requests.
    let mut ix = Index {
        entries: Vec::with_capacity(raw_entries.len()),
        by_ref: HashMap::with_capacity(raw_entries.len() * 2),
    };
    let mut deletes: Vec<(usize, &str)> = Vec::new();
    for (i, e) in raw_entries.iter().enumerate() {
        let path = format!("Bundle.entry[{i}]");
        let method = e
            .get("request")
            .and_then(|r| r.get("method"))
            .and_then(Value::as_str);
        if method == Some("DELETE") {
            let url = e
                .get("request")
                .and_then(|r| r.get("url"))
                .and_then(Value::as_str)
                .ok_or(IngestError::Missing {
                    path: format!("{path}.request.url"),
                    what: "the url of the resource to delete",
                })?;
            deletes.push((i, url));
            ix.entries.push(None);
            continue;
        }
        let r = e.get("resource").ok_or(IngestError::Missing {
            path: path.clone(),
            what: "resource",
        })?;
        let rpath = format!("{path}.resource");
        if !r.is_object() {
            return Err(invalid(&rpath, "expected a JSON object"));
        }
        let rt = req_str(r, "resourceType", &rpath)?;
        if let Some(u) = e.get("fullUrl").and_then(Value::as_str) {
            for k in ref_forms(u) {
                ix.by_ref.entry(k).or_insert(i);
            }
        }
        if let Some(id) = r.get("id").and_then(Value::as_str) {
            ix.by_ref.entry(format!("{rt}/{id}")).or_insert(i);
        }
        ix.entries.push(Some(Entry { rt, r, path: rpath }));
    }
    let res = Resolver { ix: &ix };

    // Provenance: the organisation behind each entry it targets.
    let mut prov_by_entry: HashMap<usize, (Org, Option<UnixMillis>)> = HashMap::new();
    for e in ix.entries.iter().flatten().filter(|e| e.rt == "Provenance") {
        let agents = e.r.get("agent").and_then(Value::as_array);
        let org = agents.into_iter().flatten().find_map(|a| {
            ["who", "onBehalfOf"]
                .iter()
                .find_map(|f| a.get(*f).and_then(|w| res.org(w, Some(e.r), 0)))
        });
        let Some(org) = org else {
            warnings.borrow_mut().push(format!(
                "{}: Provenance names no organisation that can be identified (agent.who): ignored",
                e.path
            ));
            continue;
        };
        let recorded = opt_instant(e.r, "recorded", &e.path)?;
        for t in
            e.r.get("target")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
        {
            if let Some(Target::Entry(i)) = ix.resolve(t, None) {
                prov_by_entry.insert(i, (org.clone(), recorded));
            }
        }
    }

    // A document's own source: Composition.custodian, then its author.
    let composition = ix.entries.iter().flatten().find(|e| e.rt == "Composition");
    let mut doc_source: Option<Org> = None;
    if btype == "document" {
        if let Some(c) = composition {
            doc_source = res
                .org_field(c.r, "custodian")
                .or_else(|| res.org_field(c.r, "author"));
        }
    }
    let default_source = opts.default_source.clone().map(|id| Org { id, name: None });

    // Patients, then groups: one per person (a retired record joins its replacement).
    let mut pats: Vec<PatientEntry> = Vec::new();
    for (i, e) in ix.entries.iter().enumerate() {
        let Some(e) = e else { continue };
        if e.rt != "Patient" {
            continue;
        }
        if pats.len() >= MAX_PATIENTS {
            return Err(IngestError::SecondPatient {
                path: e.path.clone(),
                why: format!("more than {MAX_PATIENTS} Patients in one bundle"),
            });
        }
        pats.push(map_patient(i, e, &res, now, &warnings)?);
    }
    if pats.is_empty() {
        return Err(IngestError::NoPatient);
    }
    let mut groups = group_patients(pats, &ix, &warnings)?;

    // Items.
    let mut rejected_items = Vec::new();
    let mut skipped_types: BTreeMap<&str, usize> = BTreeMap::new();
    let mut skipped = 0usize;
    let ctx_base = Base {
        res: &res,
        prov_by_entry: &prov_by_entry,
        doc_source: doc_source.as_ref(),
        default_source: default_source.as_ref(),
        bundle_time,
        now,
        bundle_restricted: bundle_confidentiality(bundle) == Some(Confidentiality::Restricted),
        warnings: &warnings,
    };
    for (i, e) in ix.entries.iter().enumerate() {
        let Some(e) = e else { continue };
        let kind = match e.rt {
            "AllergyIntolerance" => Some(SectionKind::Allergies),
            "MedicationStatement" | "MedicationRequest" => Some(SectionKind::Medications),
            "Condition" => Some(SectionKind::Conditions),
            "Consent" => {
                if is_resuscitation_consent(e.r) {
                    Some(SectionKind::Resuscitation)
                } else {
                    None
                }
            }
            "DocumentReference" | "CarePlan" => Some(SectionKind::CarePlans),
            "Flag" => Some(SectionKind::Alerts),
            "Patient" | "Composition" | "Provenance" | "Organization" | "Practitioner"
            | "PractitionerRole" | "Medication" | "Location" => continue,
            _ => None,
        };
        let Some(kind) = kind else {
            skipped += 1;
            *skipped_types.entry(e.rt).or_default() += 1;
            continue;
        };
        let field = if matches!(e.rt, "AllergyIntolerance" | "Consent") {
            "patient"
        } else {
            "subject"
        };
        let g = match subject_group(e, field, &ix, &groups) {
            Subject::Group(g) => g,
            Subject::Missing if groups.len() == 1 => {
                warnings.borrow_mut().push(format!(
                    "{}: {} has no {field}; filed under the bundle's only Patient",
                    e.path, e.rt
                ));
                0
            }
            Subject::Missing | Subject::Elsewhere if groups.len() > 1 => {
                return Err(IngestError::Unsplittable {
                    path: e.path.clone(),
                    field,
                })
            }
            _ => {
                rejected_items.push(ItemRejection {
                    entry: i,
                    error: format!(
                        "{}: the {} is about someone other than this bundle's Patient ({field} does not refer to it): rejected alone, filed under no one",
                        e.path, e.rt
                    ),
                });
                continue;
            }
        };
        let ctx = ItemCtx {
            base: &ctx_base,
            index: i,
            r: e.r,
            path: &e.path,
            caveats: RefCell::new(Vec::new()),
        };
        let us: Vec<Update> = match (kind, e.rt) {
            (SectionKind::Allergies, _) => vec![map_allergy(&ctx)?],
            (SectionKind::Medications, rt) => vec![map_medication(&ctx, rt)?],
            (SectionKind::Conditions, _) => vec![map_condition(&ctx)?],
            (SectionKind::Resuscitation, _) => map_consent(&ctx)?.into_iter().collect(),
            (SectionKind::CarePlans, "CarePlan") => map_careplan(&ctx)?,
            (SectionKind::CarePlans, _) => map_docref(&ctx)?,
            (SectionKind::Alerts, _) => vec![map_flag(&ctx)?],
        };
        if us.is_empty() {
            skipped += 1;
        }
        let restricted = ctx_base.bundle_restricted || item_restricted(e.r);
        let base_caveats = ctx.caveats.take();
        for mut u in us {
            if let Update::Item(item) = &mut u {
                let mut caveats = base_caveats.clone();
                for (field, text) in item.texts_mut() {
                    if cap_text(text) {
                        warnings.borrow_mut().push(format!(
                            "{}: {field} truncated to {MAX_ITEM_TEXT} characters (the full text is at the source)",
                            e.path
                        ));
                        caveats.push(Caveat {
                            kind: CaveatKind::Truncated,
                            field: field.to_owned(),
                        });
                    }
                }
                caveats.dedup();
                let p = item.provenance_mut();
                p.caveats = caveats;
                p.restricted = restricted;
            }
            groups[g].updates.push(u);
        }
    }
    if !skipped_types.is_empty() {
        let list: Vec<String> = skipped_types
            .iter()
            .map(|(t, n)| format!("{n} {t}"))
            .collect();
        warnings.borrow_mut().push(format!(
            "skipped {skipped} entries of resource types Kerbside does not carry: {}",
            list.join(", ")
        ));
    }

    // The bundle's own source, for DELETEs and snapshots: the document's, the feed's, else the
    // one organisation all its items came from.
    let bundle_source = doc_source.clone().or(default_source.clone()).or_else(|| {
        let mut srcs = groups
            .iter()
            .flat_map(|g| g.updates.iter())
            .filter_map(|u| match u {
                Update::Item(x) => Some(x.provenance().source_ods.clone()),
                _ => None,
            });
        let first = srcs.next()?;
        srcs.all(|s| s == first).then_some(Org {
            id: first,
            name: None,
        })
    });
    let stamp = bundle_time.or(now).unwrap_or(UnixMillis(i64::MAX));
    for (i, url) in deletes {
        let path = format!("Bundle.entry[{i}].request.url");
        let Some((kind, id)) = delete_target(url) else {
            warnings.borrow_mut().push(format!(
                "{path}: DELETE of a resource type Kerbside does not carry, or a url it cannot read: skipped"
            ));
            continue;
        };
        let Some(src) = &bundle_source else {
            return Err(IngestError::NoSource { path });
        };
        if groups.len() != 1 {
            return Err(invalid(
                &path,
                "a DELETE in a bundle with several Patients cannot be placed; send one bundle per patient",
            ));
        }
        groups[0].updates.push(Update::Delete {
            section: kind,
            source: src.id.clone(),
            id,
            at: stamp,
        });
    }

    // Section statements of a document's Composition, and snapshots.
    let mut covered: Vec<SectionKind> = Vec::new();
    if btype == "document" {
        if let Some(c) = composition {
            let markers = map_composition(c.r, &c.path, doc_source.as_ref(), stamp)?;
            let g = match c.r.get("subject") {
                Some(_) => match subject_group(c, "subject", &ix, &groups) {
                    Subject::Group(g) => Some(g),
                    _ => None,
                },
                None => None,
            }
            .or((groups.len() == 1).then_some(0));
            for (k, m) in markers.iter() {
                if !covered.contains(k) {
                    covered.push(*k);
                }
                if let (Some(g), Some(m)) = (g, m) {
                    groups[g].updates.push(Update::Marker(*k, m.clone()));
                }
            }
            if groups.len() > 1 && g.is_none() && markers.iter().any(|(_, m)| m.is_some()) {
                return Err(IngestError::Unsplittable {
                    path: c.path.clone(),
                    field: "subject",
                });
            }
        }
    }
    let snapshot_sources: Vec<SourceId> = if btype == "document" {
        doc_source.iter().map(|o| o.id.clone()).collect()
    } else if opts.snapshot {
        covered = SectionKind::ALL.to_vec();
        let mut s: BTreeSet<SourceId> = default_source.iter().map(|o| o.id.clone()).collect();
        for g in &groups {
            for u in &g.updates {
                if let Update::Item(x) = u {
                    s.insert(x.provenance().source_ods.clone());
                }
            }
        }
        s.into_iter().collect()
    } else {
        Vec::new()
    };
    if !covered.is_empty() {
        for g in &mut groups {
            for src in &snapshot_sources {
                let keep: Vec<String> = g
                    .updates
                    .iter()
                    .filter_map(|u| match u {
                        Update::Item(x) if &x.provenance().source_ods == src => {
                            Some(x.provenance().record_id.clone())
                        }
                        Update::Marker(_, m) => m
                            .provenance
                            .as_ref()
                            .filter(|p| &p.source_ods == src)
                            .map(|p| p.record_id.clone()),
                        _ => None,
                    })
                    .collect();
                // As of the bundle's timestamp; without one, as of its newest item from this
                // source (an item dated after that, sent separately, is not contradicted).
                let newest = g
                    .updates
                    .iter()
                    .filter_map(|u| match u {
                        Update::Item(x) if &x.provenance().source_ods == src => {
                            Some(x.provenance().last_updated)
                        }
                        _ => None,
                    })
                    .max();
                let as_of = bundle_time.or(newest).unwrap_or(stamp);
                g.updates.push(Update::Snapshot {
                    source: src.clone(),
                    sections: covered.clone(),
                    as_of,
                    keep,
                });
            }
        }
    }

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
    let contributions = groups
        .into_iter()
        .map(|g| Contribution {
            nhs_number: g.nhs,
            patient: g.demographics,
            updates: g.updates,
            confidentiality,
            document_version,
            skipped,
        })
        .collect();
    Ok(Ingested {
        contributions,
        rejected_items,
        warnings: warnings.into_inner().done(),
    })
}

/// Warnings, bounded.
#[derive(Default)]
struct Warnings {
    list: Vec<String>,
    dropped: usize,
}

impl Warnings {
    fn push(&mut self, w: String) {
        if self.list.len() < MAX_WARNINGS - 1 {
            self.list.push(w);
        } else {
            self.dropped += 1;
        }
    }
    fn done(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.list
                .push(format!("… and {} more warnings", self.dropped));
        }
        self.list
    }
}

/// Cut text longer than [`MAX_ITEM_TEXT`] characters; true when it was cut.
fn cap_text(s: &mut String) -> bool {
    match s.char_indices().nth(MAX_ITEM_TEXT) {
        None => false,
        Some((i, _)) => {
            s.truncate(i);
            s.push_str(" […]");
            true
        }
    }
}

/// The section and the id of the item a `DELETE` url names: `Type/id` or
/// `Type?identifier=system|value`.
fn delete_target(url: &str) -> Option<(SectionKind, String)> {
    let url = url.trim();
    let (path, query) = match url.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (url, None),
    };
    let forms = ref_forms(path);
    let tail = forms.last()?;
    let (rt, id) = match tail.split_once('/') {
        Some((t, id)) => (t, Some(id)),
        None => (tail.as_str(), None),
    };
    let kind = match rt {
        "AllergyIntolerance" => SectionKind::Allergies,
        "MedicationStatement" | "MedicationRequest" => SectionKind::Medications,
        "Condition" => SectionKind::Conditions,
        "Consent" => SectionKind::Resuscitation,
        "DocumentReference" => SectionKind::CarePlans,
        "Flag" => SectionKind::Alerts,
        _ => return None,
    };
    if let Some(id) = id.filter(|s| !s.is_empty()) {
        return Some((kind, format!("{rt}/{id}")));
    }
    let q = query?;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == "identifier")
        .map(|(_, v)| (kind, v.into_owned()))
        .filter(|(_, v)| !v.is_empty())
}

/// Map one Patient entry.
fn map_patient(
    i: usize,
    e: &Entry<'_>,
    res: &Resolver<'_, '_>,
    now: Option<UnixMillis>,
    warnings: &RefCell<Warnings>,
) -> Result<PatientEntry> {
    let (r, path) = (e.r, e.path.as_str());
    let ended = |v: &Value| -> bool {
        let end = v
            .get("period")
            .and_then(|p| p.get("end"))
            .and_then(Value::as_str)
            .and_then(|s| FhirDate::parse(s).ok());
        match (end, now) {
            (Some(end), Some(now)) => end.is_before(now),
            _ => false,
        }
    };
    // NHS numbers: the current one, and the former ones.
    let mut current: Option<(NhsNumber, Option<String>)> = None;
    let mut all: Vec<NhsNumber> = Vec::new();
    for (k, id) in r
        .get("identifier")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if str_at(id, "system") != Some(fhir::NHS_NUMBER) {
            continue;
        }
        let ipath = format!("{path}.identifier[{k}]");
        let value = req_str(id, "value", &ipath)?;
        let old = str_at(id, "use") == Some("old") || ended(id);
        let n = match NhsNumber::parse(value) {
            Ok(n) => n,
            Err(reason) if !old => {
                return Err(IngestError::InvalidNhsNumber {
                    path: format!("{ipath}.value"),
                    reason,
                })
            }
            Err(_) => {
                warnings.borrow_mut().push(format!(
                    "{ipath}: a superseded NHS number that is not valid: ignored"
                ));
                continue;
            }
        };
        if !all.contains(&n) {
            all.push(n);
        }
        if !old && current.is_none() {
            let verification = id
                .get("extension")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .find(|e| str_at(e, "url") == Some(fhir::EXT_NHS_VERIFICATION))
                .and_then(|e| e.get("valueCodeableConcept"))
                .and_then(|c| c.get("coding"))
                .and_then(|c| c.get(0))
                .and_then(|c| str_at(c, "code"))
                .map(str::to_owned);
            current = Some((n, verification));
        }
    }
    // Links: replaced-by (this record is retired) and replaces (another number is former).
    let mut replaced_by = None;
    for (k, l) in r
        .get("link")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let other = l.get("other");
        let ty = str_at(l, "type");
        let number = other
            .and_then(|o| o.get("identifier"))
            .filter(|id| str_at(id, "system") == Some(fhir::NHS_NUMBER))
            .and_then(|id| str_at(id, "value"))
            .and_then(|v| NhsNumber::parse(v).ok());
        let target = other.and_then(|o| res.ix.resolve(o, Some(r)));
        match ty {
            Some("replaced-by") => {
                replaced_by = match (target, number) {
                    (Some(Target::Entry(j)), _) if j != i => Some(Replacement::Entry(j)),
                    (_, Some(n)) => Some(Replacement::Number(n)),
                    _ => {
                        warnings.borrow_mut().push(format!(
                            "{path}.link[{k}]: replaced-by names no Patient of this bundle and no NHS number: ignored"
                        ));
                        None
                    }
                }
            }
            Some("replaces") => {
                if let Some(n) = number {
                    if !all.contains(&n) {
                        all.push(n);
                    }
                }
            }
            _ => {}
        }
    }
    let active = r.get("active").and_then(Value::as_bool) != Some(false);
    if !active && replaced_by.is_none() {
        return Err(IngestError::RetiredWithoutReplacement {
            path: path.to_owned(),
        });
    }
    let retired = replaced_by.is_some();
    let (nhs, nhs_verification) = match current {
        Some(c) => c,
        // A retired record may carry only its old number.
        None if retired && !all.is_empty() => (all[0], None),
        None => {
            return Err(IngestError::NoNhsNumber {
                path: format!("{path}.identifier"),
            })
        }
    };

    // Names: the current one by use and period; the others kept for search.
    let names: Vec<&Value> = r
        .get("name")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter(|n| n.is_object()).collect())
        .unwrap_or_default();
    let rank = |n: &Value| -> u8 {
        let use_ = str_at(n, "use");
        if matches!(use_, Some("old") | Some("maiden")) || ended(n) {
            return 9;
        }
        match use_ {
            Some("usual") => 0,
            Some("official") | None => 1,
            Some("nickname") | Some("anonymous") => 3,
            _ => 2,
        }
    };
    let chosen = names
        .iter()
        .enumerate()
        .min_by_key(|(k, n)| (rank(n), *k))
        .map(|(k, _)| k);
    let parts = |n: &Value| -> PersonName {
        PersonName {
            family: str_at(n, "family")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            given: n
                .get("given")
                .and_then(Value::as_array)
                .map(|g| {
                    g.iter()
                        .filter_map(Value::as_str)
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            text: str_at(n, "text")
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned),
            name_use: str_at(n, "use").map(str::to_owned),
        }
    };
    let (family, given, name_text) = match chosen.map(|k| parts(names[k])) {
        Some(p) if p.family.is_some() || !p.given.is_empty() => {
            (p.family.unwrap_or_default(), p.given, None)
        }
        Some(p) => (String::new(), Vec::new(), p.text),
        None => (String::new(), Vec::new(), None),
    };
    let other_names: Vec<PersonName> = names
        .iter()
        .enumerate()
        .filter(|(k, _)| Some(*k) != chosen)
        .map(|(_, n)| parts(n))
        .filter(|p| p.family.is_some() || !p.given.is_empty() || p.text.is_some())
        .take(10)
        .collect();

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
    let restricted = patient_restricted(r);
    let postcode = if restricted {
        None
    } else {
        let addrs: Vec<&Value> = r
            .get("address")
            .and_then(Value::as_array)
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let current: Vec<&Value> = addrs
            .into_iter()
            .filter(|a| str_at(a, "use") != Some("old") && !ended(a))
            .collect();
        current
            .iter()
            .find(|a| str_at(a, "use") == Some("home"))
            .or_else(|| current.first())
            .and_then(|a| str_at(a, "postalCode"))
            .map(str::to_owned)
    };
    // GP practice: an ODS identifier, or a reference resolved in the bundle.
    let mut gp_practice = None;
    let mut gp_name = None;
    for (k, gp) in r
        .get("generalPractitioner")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        match res.org(gp, Some(r), 0) {
            Some(o) => {
                if let Some(ods) = o.id.as_ods() {
                    gp_practice = Some(ods);
                    gp_name = o.name.or_else(|| display_of(gp));
                    break;
                }
            }
            None => {
                if gp.get("reference").is_some() && gp_name.is_none() {
                    gp_name = display_of(gp);
                    warnings.borrow_mut().push(format!(
                        "{path}.generalPractitioner[{k}]: unresolved reference (no ODS code found); its display kept"
                    ));
                }
            }
        }
    }
    let (deceased, deceased_at) = match (r.get("deceasedBoolean"), r.get("deceasedDateTime")) {
        (_, Some(_)) => (true, opt_date(r, "deceasedDateTime", path)?),
        (Some(Value::Bool(b)), None) => (*b, None),
        (Some(_), None) => {
            return Err(invalid(
                &format!("{path}.deceasedBoolean"),
                "expected true or false",
            ))
        }
        (None, None) => (false, None),
    };
    let last_updated = match r.get("meta") {
        Some(m) => opt_instant(m, "lastUpdated", &format!("{path}.meta"))?,
        None => None,
    }
    .or(now)
    .unwrap_or_default();
    let birth_date = opt_date(r, "birthDate", path)?;
    let mut former: Vec<NhsNumber> = all.iter().copied().filter(|n| *n != nhs).collect();
    former.sort();
    Ok(PatientEntry {
        entry: i,
        nhs,
        all_numbers: all,
        replaced_by,
        demographics: Demographics {
            family,
            given,
            name_text,
            other_names,
            birth_date,
            gender,
            postcode,
            gp_practice,
            gp_name,
            deceased,
            deceased_at,
            restricted,
            former_nhs_numbers: former,
            nhs_verification,
            last_updated,
        },
    })
}

/// The PDS "S-flag": a restricted confidentiality label on the Patient.
fn patient_restricted(r: &Value) -> bool {
    r.get("meta")
        .and_then(|m| m.get("security"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|s| {
            let code = str_at(s, "code");
            (str_at(s, "system") == Some(fhir::CONFIDENTIALITY)
                && matches!(code, Some("R") | Some("V")))
                || matches!(code, Some("restricted") | Some("very-restricted"))
        })
}

/// Gather Patient entries into groups: one per person.
fn group_patients(
    pats: Vec<PatientEntry>,
    ix: &Index<'_>,
    warnings: &RefCell<Warnings>,
) -> Result<Vec<Group>> {
    // Where each patient entry is filed: follow replaced-by links within the bundle.
    let entry_pos: HashMap<usize, usize> =
        pats.iter().enumerate().map(|(k, p)| (p.entry, k)).collect();
    let mut home: Vec<usize> = Vec::with_capacity(pats.len());
    for k in 0..pats.len() {
        let mut at = k;
        let mut hops = 0;
        while let Some(Replacement::Entry(j)) = &pats[at].replaced_by {
            match entry_pos.get(j) {
                Some(&next) if hops < 8 => {
                    at = next;
                    hops += 1;
                }
                _ => {
                    let path = ix
                        .entry(pats[k].entry)
                        .map_or(String::new(), |e| e.path.clone());
                    return Err(invalid(
                        &path,
                        "Patient.link replaced-by forms a loop; not filed",
                    ));
                }
            }
        }
        home.push(at);
    }
    let mut groups: Vec<Group> = Vec::new();
    let mut group_of_home: HashMap<NhsNumber, usize> = HashMap::new();
    // Live records first (their demographics lead), then the retired ones joining them.
    let mut order: Vec<usize> = (0..pats.len()).collect();
    order.sort_by_key(|&k| (home[k] != k, k));
    for k in order {
        let h = home[k];
        let p = &pats[k];
        let target_nhs = match (&pats[h].replaced_by, h == k) {
            (Some(Replacement::Number(n)), _) => *n,
            _ => pats[h].nhs,
        };
        let g = match group_of_home.get(&target_nhs) {
            Some(&g) => g,
            None => {
                let mut d = pats[h].demographics.clone();
                if target_nhs != pats[h].nhs {
                    // Retired into a record not in this bundle: its demographics stand in
                    // only where the hub knows nothing of the replacement.
                    d.last_updated = UnixMillis(i64::MIN);
                    d.nhs_verification = None;
                }
                groups.push(Group {
                    nhs: target_nhs,
                    demographics: d,
                    entries: Vec::new(),
                    numbers: BTreeSet::from([target_nhs]),
                    updates: Vec::new(),
                });
                group_of_home.insert(target_nhs, groups.len() - 1);
                groups.len() - 1
            }
        };
        if p.replaced_by.is_some() {
            warnings.borrow_mut().push(format!(
                "{}: a retired record (active false, replaced-by): filed under its replacement",
                ix.entry(p.entry).map_or("Bundle", |e| e.path.as_str())
            ));
        }
        let grp = &mut groups[g];
        grp.entries.push(p.entry);
        for n in &p.all_numbers {
            grp.numbers.insert(*n);
        }
        grp.numbers.insert(p.nhs);
        if h != k && grp.demographics.other_names.len() < 10 {
            // Keep the retired record's names for search.
            let d = &p.demographics;
            if !d.family.is_empty() || d.name_text.is_some() {
                grp.demographics.other_names.push(PersonName {
                    family: Some(d.family.clone()).filter(|f| !f.is_empty()),
                    given: d.given.clone(),
                    text: d.name_text.clone(),
                    name_use: Some("old".into()),
                });
            }
        }
    }
    for g in &mut groups {
        let mut former: Vec<NhsNumber> =
            g.numbers.iter().copied().filter(|n| *n != g.nhs).collect();
        former.sort();
        g.demographics.former_nhs_numbers = former;
    }
    Ok(groups)
}

enum Subject {
    Group(usize),
    Missing,
    /// Names a patient who is not in the bundle.
    Elsewhere,
}

/// Which group an item's subject names.
fn subject_group(e: &Entry<'_>, field: &str, ix: &Index<'_>, groups: &[Group]) -> Subject {
    let Some(s) = e.r.get(field) else {
        return Subject::Missing;
    };
    if let Some(t) = ix.resolve(s, Some(e.r)) {
        if let Target::Entry(j) = t {
            if let Some(g) = groups.iter().position(|g| g.entries.contains(&j)) {
                return Subject::Group(g);
            }
        }
        return Subject::Elsewhere;
    }
    // By NHS number: an identifier on the reference, or an id that is one.
    let by_ident = s
        .get("identifier")
        .filter(|id| str_at(id, "system") == Some(fhir::NHS_NUMBER))
        .and_then(|id| str_at(id, "value"))
        .and_then(|v| NhsNumber::parse(v).ok());
    let by_id = str_at(s, "reference")
        .and_then(|r| r.rsplit('/').next())
        .and_then(|v| NhsNumber::parse(v).ok());
    match by_ident.or(by_id) {
        Some(n) => groups
            .iter()
            .position(|g| g.numbers.contains(&n))
            .map_or(Subject::Elsewhere, Subject::Group),
        None if s.get("reference").is_none() && s.get("identifier").is_none() => Subject::Missing,
        None => Subject::Elsewhere,
    }
}

// ---------------------------------------------------------------------------------------------
// Items
// ---------------------------------------------------------------------------------------------

struct Base<'b, 'i, 'a> {
    res: &'b Resolver<'i, 'a>,
    prov_by_entry: &'b HashMap<usize, (Org, Option<UnixMillis>)>,
    doc_source: Option<&'b Org>,
    default_source: Option<&'b Org>,
    bundle_time: Option<UnixMillis>,
    now: Option<UnixMillis>,
    /// The bundle carries a restricted confidentiality label: every item is restricted.
    bundle_restricted: bool,
    warnings: &'b RefCell<Warnings>,
}

struct ItemCtx<'c, 'b, 'i, 'a> {
    base: &'c Base<'b, 'i, 'a>,
    index: usize,
    r: &'a Value,
    path: &'c str,
    caveats: RefCell<Vec<Caveat>>,
}

/// The elements by which an item names its own organisation, in order of preference.
const OWN_ORG_FIELDS: [&str; 8] = [
    "recorder",
    "asserter",
    "informationSource",
    "performer",
    "author",
    "requester",
    "organization",
    "custodian",
];

impl<'a> ItemCtx<'_, '_, '_, 'a> {
    fn at(&self, rel: &str) -> String {
        format!("{}.{rel}", self.path)
    }

    fn unresolved(&self, field: &str) {
        self.caveats.borrow_mut().push(Caveat {
            kind: CaveatKind::Unresolved,
            field: field.to_owned(),
        });
        self.base.warnings.borrow_mut().push(format!(
            "{}: unresolved reference ({field} points at nothing in the bundle); its display text kept",
            self.at(field)
        ));
    }

    /// Provenance of this item (see the module docs for the order of sources).
    fn provenance(&self) -> Result<Provenance> {
        let b = self.base;
        let mut recorded = None;
        let org = if let Some((o, rec)) = b.prov_by_entry.get(&self.index) {
            recorded = *rec;
            Some(o.clone())
        } else {
            OWN_ORG_FIELDS
                .iter()
                .find_map(|f| b.res.org_field(self.r, f))
                .or_else(|| b.doc_source.cloned())
                .or_else(|| b.default_source.cloned())
        };
        let org = org.ok_or_else(|| IngestError::NoSource {
            path: self.path.to_owned(),
        })?;
        let meta = self.r.get("meta");
        let mut last_updated = match meta {
            Some(m) => opt_instant(m, "lastUpdated", &self.at("meta"))?,
            None => None,
        }
        .or(recorded)
        .or(b.bundle_time);
        if last_updated.is_none() {
            if let Some(now) = b.now {
                b.warnings.borrow_mut().push(format!(
                    "{}: no meta.lastUpdated and no bundle timestamp: dated at receipt",
                    self.path
                ));
                last_updated = Some(now);
            }
        }
        let last_updated = last_updated.ok_or(IngestError::Missing {
            path: self.at("meta.lastUpdated"),
            what: "meta.lastUpdated (or a Bundle.timestamp)",
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
        let resource_id = match (str_at(self.r, "resourceType"), str_at(self.r, "id")) {
            (Some(t), Some(id)) => Some(format!("{t}/{id}")),
            _ => None,
        };
        Ok(Provenance {
            source_ods: org.id,
            source_name: org.name,
            system,
            record_id,
            resource_id,
            record_version,
            last_updated,
            caveats: Vec::new(),
            restricted: false,
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
    match (str_at(r, "resourceType"), str_at(r, "id")) {
        (_, Some(id)) => Ok(id.to_owned()),
        _ => Err(IngestError::Missing {
            path: format!("{path}.id"),
            what: "an id or identifier",
        }),
    }
}

/// A CodeableConcept: the preferred coding (SNOMED first) and the text (else a coding's
/// display, so an item whose coding is unusable still reads as recorded).
fn concept(v: &Value, path: &str) -> Result<Concept> {
    if !v.is_object() {
        return Err(invalid(path, "expected a CodeableConcept object"));
    }
    let mut text = opt_str(v, "text", path)?
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    let mut coding = None;
    let mut any_display = None;
    if let Some(c) = v.get("coding") {
        let arr = c
            .as_array()
            .ok_or_else(|| invalid(&format!("{path}.coding"), "expected an array"))?;
        let mut best: Option<Coding> = None;
        for (i, c) in arr.iter().enumerate() {
            let cp = format!("{path}.coding[{i}]");
            let display = opt_str(c, "display", &cp)?.map(str::to_owned);
            if any_display.is_none() {
                any_display.clone_from(&display);
            }
            let (Some(system), Some(code)) = (opt_str(c, "system", &cp)?, opt_str(c, "code", &cp)?)
            else {
                continue;
            };
            let this = Coding {
                system: system.to_owned(),
                code: code.to_owned(),
                display,
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
        text = any_display;
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

fn marker_or_item(
    ctx: &ItemCtx<'_, '_, '_, '_>,
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
    if let Some(c) = code
        .coding
        .as_ref()
        .filter(|c| c.system == fhir::IPS_ABSENT_UNKNOWN)
    {
        // IPS absent/unknown codes are statements about the section, never entries.
        let (status, about) = match c.code.as_str() {
            "no-allergy-info" => (SectionStatus::NoInformation, SectionKind::Allergies),
            "no-medication-info" => (SectionStatus::NoInformation, SectionKind::Medications),
            "no-problem-info" => (SectionStatus::NoInformation, SectionKind::Conditions),
            "no-known-allergies" => (SectionStatus::NoneKnown, SectionKind::Allergies),
            "no-known-medications" => (SectionStatus::NoneKnown, SectionKind::Medications),
            "no-known-problems" => (SectionStatus::NoneKnown, SectionKind::Conditions),
            _ => (SectionStatus::NoInformation, section),
        };
        if about == section {
            return Ok(Update::Marker(
                section,
                Marker {
                    status,
                    concept: Some(code),
                    provenance: Some(prov),
                },
            ));
        }
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

fn map_allergy(ctx: &ItemCtx<'_, '_, '_, '_>) -> Result<Update> {
    let r = ctx.r;
    let code = opt_concept(r, "code", ctx.path)?.ok_or(IngestError::Missing {
        path: ctx.at("code"),
        what: "code",
    })?;
    let prov = ctx.provenance()?;
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
                .take(20)
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

/// The medicine a MedicationStatement or MedicationRequest names: its CodeableConcept, or the
/// `Medication` its reference resolves to (codes, form, text), or the reference's display.
fn medication_concept(ctx: &ItemCtx<'_, '_, '_, '_>) -> Result<(Concept, Option<Concept>)> {
    let r = ctx.r;
    if let Some(c) = r.get("medicationCodeableConcept") {
        return Ok((concept(c, &ctx.at("medicationCodeableConcept"))?, None));
    }
    let Some(reference) = r.get("medicationReference") else {
        return Err(IngestError::Missing {
            path: ctx.at("medicationCodeableConcept"),
            what: "the medication (medicationCodeableConcept or medicationReference)",
        });
    };
    let res = ctx.base.res;
    let target = res
        .ix
        .resolve(reference, Some(r))
        .and_then(|t| res.ix.value(t));
    if let Some(m) = target.filter(|m| str_at(m, "resourceType") == Some("Medication")) {
        let mpath = ctx.at("medicationReference");
        let code = match m.get("code") {
            Some(c) => Some(concept(c, &format!("{mpath}→Medication.code"))?),
            None => None,
        };
        let form = match m.get("form") {
            Some(f) => concept(f, &format!("{mpath}→Medication.form")).ok(),
            None => None,
        };
        let code = match (code, display_of(reference)) {
            (Some(c), _) => c,
            (None, Some(d)) => Concept {
                coding: None,
                text: Some(d),
            },
            (None, None) => {
                return Err(IngestError::Missing {
                    path: format!("{mpath}→Medication.code"),
                    what: "the medication's code or text",
                })
            }
        };
        return Ok((code, form));
    }
    ctx.unresolved("medicationReference");
    let text = display_of(reference)
        .filter(|d| !d.trim().is_empty())
        .unwrap_or_else(|| {
            "Medicine not named (the record's reference could not be resolved)".into()
        });
    Ok((
        Concept {
            coding: None,
            text: Some(text),
        },
        None,
    ))
}

fn map_medication(ctx: &ItemCtx<'_, '_, '_, '_>, rt: &str) -> Result<Update> {
    let r = ctx.r;
    let (code, form) = medication_concept(ctx)?;
    let prov = ctx.provenance()?;
    if opt_str(r, "status", ctx.path)? == Some("entered-in-error") {
        return Ok(Update::Remove {
            section: SectionKind::Medications,
            provenance: prov,
        });
    }
    let own = if rt == "MedicationStatement" {
        "informationSource"
    } else {
        "requester"
    };
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
            let prescriber_ods = ctx.base.res.org_field(r, own).and_then(|o| o.id.as_ods());
            let high_risk = codes::high_risk_class(code.snomed(), code.label());
            let kind = match (rt, str_at(r, "intent")) {
                ("MedicationStatement", _) => MedicationRecordKind::Statement,
                (
                    _,
                    Some(
                        "order" | "original-order" | "reflex-order" | "filler-order"
                        | "instance-order",
                    ),
                ) => MedicationRecordKind::Order,
                _ => MedicationRecordKind::Request,
            };
            let ended = match r.get("effectivePeriod") {
                Some(p) => opt_date(p, "end", &ctx.at("effectivePeriod"))?,
                None => None,
            }
            .or(
                match r
                    .get("dispenseRequest")
                    .and_then(|d| d.get("validityPeriod"))
                {
                    Some(p) => opt_date(p, "end", &ctx.at("dispenseRequest.validityPeriod"))?,
                    None => None,
                },
            );
            Ok(AnyItem::Medication(Medication {
                concept: code,
                form,
                status: opt_str(r, "status", ctx.path)?.map(str::to_owned),
                dosage: dosage_text,
                route,
                started,
                last_issued,
                prescriber_ods,
                high_risk,
                from_request: rt == "MedicationRequest",
                kind,
                ended,
                provenance,
            }))
        },
    )
}

fn map_condition(ctx: &ItemCtx<'_, '_, '_, '_>) -> Result<Update> {
    let r = ctx.r;
    let code = opt_concept(r, "code", ctx.path)?.ok_or(IngestError::Missing {
        path: ctx.at("code"),
        what: "code",
    })?;
    let prov = ctx.provenance()?;
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

/// SNOMED CT codes that name cardiopulmonary resuscitation as a procedure: with a Consent's
/// `deny` they mean "do not attempt", with `permit` "attempt".
const CPR_PROCEDURE_CODES: [&str; 3] = [
    "89666000",  // Cardiopulmonary resuscitation
    "439569004", // Resuscitation
    "410415008", // Resuscitation - action (care plan activity)
];

/// What a code alone says about CPR: the DNACPR / for-resuscitation situations.
fn cpr_of_situation(code: &str) -> Option<Cpr> {
    codes::resuscitation_by_code(code).map(|r| {
        if r.attempt_cpr {
            Cpr::ForCpr
        } else {
            Cpr::NotForCpr
        }
    })
}

/// Every code of a CodeableConcept (any system).
fn codes_of(v: Option<&Value>) -> Vec<&str> {
    v.and_then(|c| c.get("coding"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| str_at(c, "code"))
        .collect()
}

/// A Consent that records a resuscitation decision: scope `adr` (advance directive), or scope
/// `treatment` whose provisions name CPR or a resuscitation situation.
fn is_resuscitation_consent(r: &Value) -> bool {
    let scope = codes_of(r.get("scope"));
    if scope.contains(&"adr") {
        return true;
    }
    scope.contains(&"treatment") && provision_cpr(r.get("provision"), None, 0).is_some()
}

/// What a Consent's provision tree says about CPR: `provision.type` × `provision.code`, nested
/// provisions inheriting their parent's type. The most specific (deepest) statement wins; a
/// situation code ("not for attempted CPR") means what it says whatever the type.
fn provision_cpr(p: Option<&Value>, inherited: Option<&str>, depth: u8) -> Option<(Cpr, Concept)> {
    let p = p?;
    if depth > 8 {
        return None;
    }
    let ty = str_at(p, "type").or(inherited);
    // Nested provisions are more specific than their parent.
    for child in p
        .get("provision")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(found) = provision_cpr(Some(child), ty, depth + 1) {
            return Some(found);
        }
    }
    for c in p
        .get("code")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Ok(concept) = concept(c, "provision.code") else {
            continue;
        };
        for code in codes_of(Some(c)) {
            if let Some(cpr) = cpr_of_situation(code) {
                return Some((cpr, concept));
            }
            if CPR_PROCEDURE_CODES.contains(&code) {
                let cpr = match ty {
                    Some("deny") => Cpr::NotForCpr,
                    Some("permit") => Cpr::ForCpr,
                    _ => Cpr::Unknown,
                };
                return Some((cpr, concept));
            }
        }
    }
    None
}

/// The state of a decision from its record's FHIR status.
fn decision_state(status: Option<&str>) -> Option<DecisionState> {
    match status {
        None | Some("active" | "current" | "final" | "amended" | "corrected" | "unknown") => {
            Some(DecisionState::Current)
        }
        Some("inactive" | "rejected" | "revoked" | "completed") => Some(DecisionState::Rescinded),
        Some("superseded") => Some(DecisionState::Superseded),
        // draft, proposed, on-hold, preliminary: not in force, not a decision.
        _ => None,
    }
}

fn map_consent(ctx: &ItemCtx<'_, '_, '_, '_>) -> Result<Option<Update>> {
    let r = ctx.r;
    let prov = ctx.provenance()?;
    let status = opt_str(r, "status", ctx.path)?;
    if status == Some("entered-in-error") {
        return Ok(Some(Update::Remove {
            section: SectionKind::Resuscitation,
            provenance: prov,
        }));
    }
    let Some(state) = decision_state(status) else {
        ctx.base.warnings.borrow_mut().push(format!(
            "{}: a resuscitation Consent with status {:?} is not in force: skipped",
            ctx.path,
            status.unwrap_or("")
        ));
        return Ok(None);
    };
    let provision = r.get("provision");
    let (cpr, decision) = match provision_cpr(provision, None, 0) {
        Some(x) => x,
        None => {
            // An advance-directive Consent whose provisions name no CPR code: kept as recorded,
            // `unknown` (never read as for-CPR).
            let decision = provision
                .and_then(|p| p.get("code"))
                .and_then(|c| c.get(0))
                .map(|c| concept(c, &ctx.at("provision.code[0]")))
                .transpose()?
                .or_else(|| {
                    r.get("category")
                        .and_then(|c| c.get(0))
                        .and_then(|c| concept(c, "category").ok())
                })
                .ok_or(IngestError::Missing {
                    path: ctx.at("provision.code"),
                    what: "the resuscitation decision",
                })?;
            (Cpr::Unknown, decision)
        }
    };
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
    Ok(Some(Update::Item(AnyItem::Resuscitation(Resuscitation {
        decision,
        cpr,
        form_cpr: None,
        state,
        record: DecisionRecord::Consent,
        replaces: Vec::new(),
        status: status.map(str::to_owned),
        decided: opt_date(r, "dateTime", ctx.path)?,
        review,
        decision_maker,
        provenance: prov,
    }))))
}

/// A DNACPR form by its document type: the UK DNACPR situation codes, or a type whose text
/// names DNACPR.
fn is_dnacpr_type(t: &Concept, codes_: &[&str]) -> bool {
    codes_
        .iter()
        .any(|c| cpr_of_situation(c) == Some(Cpr::NotForCpr))
        || t.label().to_ascii_uppercase().contains("DNACPR")
        || t.label()
            .to_ascii_lowercase()
            .contains("do not attempt cardiopulmonary resuscitation")
}

/// The documents a DocumentReference replaces (`relatesTo` code `replaces`), by the ids the
/// replaced items carry: record id when the target is in the bundle, else the reference.
fn replaced_ids(ctx: &ItemCtx<'_, '_, '_, '_>) -> Vec<String> {
    let res = ctx.base.res;
    let mut out = Vec::new();
    for rel in ctx
        .r
        .get("relatesTo")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if str_at(rel, "code") != Some("replaces") {
            continue;
        }
        let Some(t) = rel.get("target") else { continue };
        if let Some(v) = res.ix.resolve(t, Some(ctx.r)).and_then(|t| res.ix.value(t)) {
            if let Ok(id) = record_id(v, "relatesTo") {
                out.push(id);
            }
            if let (Some(rt), Some(id)) = (str_at(v, "resourceType"), str_at(v, "id")) {
                out.push(format!("{rt}/{id}"));
            }
        } else if let Some(reference) = str_at(t, "reference") {
            out.extend(ref_forms(reference));
        }
        if let Some(id) = t.get("identifier") {
            if let Some(v) = str_at(id, "value") {
                out.push(match str_at(id, "system") {
                    Some(sys) => format!("{sys}|{v}"),
                    None => v.to_owned(),
                });
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

/// A ReSPECT form's own CPR recommendation, from the codes of `context.event`.
fn form_cpr(r: &Value) -> Option<Cpr> {
    r.get("context")
        .and_then(|c| c.get("event"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .flat_map(|e| codes_of(Some(e)))
        .find_map(cpr_of_situation)
}

fn map_docref(ctx: &ItemCtx<'_, '_, '_, '_>) -> Result<Vec<Update>> {
    let r = ctx.r;
    let plan_type = opt_concept(r, "type", ctx.path)?.ok_or(IngestError::Missing {
        path: ctx.at("type"),
        what: "type",
    })?;
    let type_codes = codes_of(r.get("type"));
    let respect = type_codes.contains(&codes::RESPECT_TYPE);
    let dnacpr = !respect && is_dnacpr_type(&plan_type, &type_codes);
    let care_plan = respect
        || type_codes
            .iter()
            .any(|c| codes::care_plan_type(c).is_some());
    if !care_plan && !dnacpr {
        ctx.base.warnings.borrow_mut().push(format!(
            "{}: a DocumentReference whose type is not a care plan, ReSPECT or DNACPR form: skipped",
            ctx.path
        ));
        return Ok(Vec::new());
    }
    let prov = ctx.provenance()?;
    let status = opt_str(r, "status", ctx.path)?;
    if status == Some("entered-in-error") {
        let mut out = vec![Update::Remove {
            section: SectionKind::CarePlans,
            provenance: prov.clone(),
        }];
        out.push(Update::Remove {
            section: SectionKind::Resuscitation,
            provenance: prov,
        });
        return Ok(out);
    }
    let replaces = replaced_ids(ctx);
    let date = opt_date(r, "date", ctx.path)?;
    let mut out = Vec::new();
    // A document that states a CPR decision is also a resuscitation decision.
    let event_cpr = form_cpr(r);
    let decision = if respect {
        Some((Cpr::RespectPlan, event_cpr, DecisionRecord::RespectForm))
    } else if dnacpr {
        Some((Cpr::NotForCpr, None, DecisionRecord::DnacprForm))
    } else {
        event_cpr.map(|c| (c, None, DecisionRecord::CarePlan))
    };
    if let Some((cpr, form, record)) = decision {
        if let Some(state) = decision_state(status) {
            out.push(Update::Item(AnyItem::Resuscitation(Resuscitation {
                decision: plan_type.clone(),
                cpr,
                form_cpr: form,
                state,
                record,
                replaces: replaces.clone(),
                status: status.map(str::to_owned),
                decided: date.clone(),
                review: None,
                decision_maker: r.get("author").and_then(|a| a.get(0)).and_then(display_of),
                provenance: prov.clone(),
            })));
        }
    }
    if care_plan {
        let custodian = ctx
            .base
            .res
            .org_field(r, "custodian")
            .and_then(|o| o.id.as_ods());
        let url = r
            .get("content")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("attachment"))
            .and_then(|a| a.get("url"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        out.push(Update::Item(AnyItem::CarePlan(CarePlan {
            plan_type,
            status: status.map(str::to_owned),
            custodian,
            date,
            extract: opt_str(r, "description", ctx.path)?.map(str::to_owned),
            url,
            replaces,
            provenance: prov,
        })));
    }
    Ok(out)
}

/// A FHIR `CarePlan`: a care plan when its category is one of the care-plan types, and a
/// resuscitation decision when an activity names one.
fn map_careplan(ctx: &ItemCtx<'_, '_, '_, '_>) -> Result<Vec<Update>> {
    let r = ctx.r;
    let prov = ctx.provenance()?;
    let status = opt_str(r, "status", ctx.path)?;
    if status == Some("entered-in-error") {
        return Ok(vec![
            Update::Remove {
                section: SectionKind::CarePlans,
                provenance: prov.clone(),
            },
            Update::Remove {
                section: SectionKind::Resuscitation,
                provenance: prov,
            },
        ]);
    }
    let categories: Vec<&Value> = r
        .get("category")
        .and_then(Value::as_array)
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let plan_cat = categories.iter().find(|c| {
        codes_of(Some(c))
            .iter()
            .any(|code| codes::care_plan_type(code).is_some() || *code == codes::RESPECT_TYPE)
    });
    let mut out = Vec::new();
    let date = match r.get("period") {
        Some(p) => opt_date(p, "start", &ctx.at("period"))?,
        None => None,
    }
    .or(opt_date(r, "created", ctx.path)?);
    // Activities that state a CPR decision (a care plan's "do not attempt CPR").
    let mut cpr = None;
    for (i, a) in r
        .get("activity")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(code) = a.get("detail").and_then(|d| d.get("code")) else {
            continue;
        };
        let prohibited = a
            .get("detail")
            .and_then(|d| d.get("doNotPerform"))
            .and_then(Value::as_bool)
            == Some(true);
        for c in codes_of(Some(code)) {
            let found = cpr_of_situation(c).or_else(|| {
                CPR_PROCEDURE_CODES.contains(&c).then_some(if prohibited {
                    Cpr::NotForCpr
                } else {
                    Cpr::ForCpr
                })
            });
            if let Some(found) = found {
                cpr = Some((
                    found,
                    concept(code, &ctx.at(&format!("activity[{i}].detail.code")))?,
                ));
                break;
            }
        }
        if cpr.is_some() {
            break;
        }
    }
    if let Some((cpr, decision)) = cpr {
        if let Some(state) = decision_state(status) {
            out.push(Update::Item(AnyItem::Resuscitation(Resuscitation {
                decision,
                cpr,
                form_cpr: None,
                state,
                record: DecisionRecord::CarePlan,
                replaces: Vec::new(),
                status: status.map(str::to_owned),
                decided: date.clone(),
                review: match r.get("period") {
                    Some(p) => opt_date(p, "end", &ctx.at("period"))?,
                    None => None,
                },
                decision_maker: r.get("author").and_then(display_of).or_else(|| {
                    r.get("contributor")
                        .and_then(|c| c.get(0))
                        .and_then(display_of)
                }),
                provenance: prov.clone(),
            })));
        }
    }
    if let Some(cat) = plan_cat {
        let plan_type = concept(cat, &ctx.at("category"))?;
        out.push(Update::Item(AnyItem::CarePlan(CarePlan {
            plan_type,
            status: status.map(str::to_owned),
            custodian: ctx
                .base
                .res
                .org_field(r, "author")
                .and_then(|o| o.id.as_ods()),
            date,
            extract: opt_str(r, "description", ctx.path)?
                .or(opt_str(r, "title", ctx.path)?)
                .map(str::to_owned),
            url: None,
            replaces: Vec::new(),
            provenance: prov,
        })));
    }
    if out.is_empty() {
        ctx.base.warnings.borrow_mut().push(format!(
            "{}: a CarePlan that is neither a care-plan type nor a resuscitation decision: skipped",
            ctx.path
        ));
    }
    Ok(out)
}

/// A restricted confidentiality label on the resource itself (`meta.security` R or V).
fn item_restricted(r: &Value) -> bool {
    r.get("meta")
        .and_then(|m| m.get("security"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|s| {
            str_at(s, "system") == Some(fhir::CONFIDENTIALITY)
                && matches!(str_at(s, "code"), Some("R" | "V"))
        })
}

fn map_flag(ctx: &ItemCtx<'_, '_, '_, '_>) -> Result<Update> {
    let r = ctx.r;
    let prov = ctx.provenance()?;
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

/// The sections a document's Composition covers, each with the statement its `emptyReason`
/// makes (`None`: the section is covered but says nothing about being empty).
fn map_composition(
    r: &Value,
    path: &str,
    source: Option<&Org>,
    at: UnixMillis,
) -> Result<Vec<(SectionKind, Option<Marker>)>> {
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
            .and_then(Value::as_array)
            .and_then(|a| {
                a.iter()
                    .filter_map(|c| c.get("code").and_then(Value::as_str))
                    .find(|c| SectionKind::from_loinc(c).is_some())
            })
        else {
            continue;
        };
        let Some(kind) = SectionKind::from_loinc(code) else {
            continue;
        };
        let reason = s
            .get("emptyReason")
            .and_then(|c| c.get("coding"))
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("code"))
            .and_then(Value::as_str);
        let status = match reason {
            None => None,
            Some("nilknown") => Some(SectionStatus::NoneKnown),
            Some("withheld") => Some(SectionStatus::Withheld),
            // "Not asked" / "unavailable" are statements too: from the same source they replace
            // an earlier "nil known" (the section is then unknown, not empty).
            Some("notasked" | "unavailable" | "notstarted" | "closed") => {
                Some(SectionStatus::NoInformation)
            }
            Some(_) => {
                return Err(invalid(
                    &format!("{path}.section[{i}].emptyReason"),
                    "unknown list-empty-reason code",
                ))
            }
        };
        let marker = status.map(|status| Marker {
            status,
            concept: None,
            provenance: source.map(|o| Provenance {
                source_ods: o.id.clone(),
                source_name: o.name.clone(),
                system: None,
                record_id: format!("Composition.section|{}", kind.loinc()),
                resource_id: None,
                record_version: None,
                last_updated: at,
                caveats: Vec::new(),
                restricted: false,
            }),
        });
        out.push((kind, marker));
    }
    Ok(out)
}

fn bundle_confidentiality(bundle: &Value) -> Option<Confidentiality> {
    let sec = bundle.get("meta")?.get("security")?.as_array()?;
    let mut out = None;
    for s in sec {
        if s.get("system").and_then(Value::as_str) == Some(fhir::CONFIDENTIALITY) {
            out = match s.get("code").and_then(Value::as_str) {
                Some("U") | Some("N") | Some("L") | Some("M") => Some(Confidentiality::Normal),
                Some(_) => Some(Confidentiality::Restricted),
                None => out,
            };
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_forms() {
        assert_eq!(
            ref_forms("https://x.nhs.uk/fhir/Patient/abc/_history/3"),
            vec![
                "https://x.nhs.uk/fhir/Patient/abc/_history/3".to_owned(),
                "https://x.nhs.uk/fhir/Patient/abc".to_owned(),
                "Patient/abc".to_owned()
            ]
        );
        assert_eq!(ref_forms("urn:uuid:1234"), vec!["urn:uuid:1234".to_owned()]);
        assert_eq!(ref_forms("Patient/abc"), vec!["Patient/abc".to_owned()]);
    }

    #[test]
    fn delete_urls() {
        assert_eq!(
            delete_target("AllergyIntolerance/123"),
            Some((SectionKind::Allergies, "AllergyIntolerance/123".into()))
        );
        assert_eq!(
            delete_target("Condition?identifier=https%3A%2F%2Fx.org%2Fid%7Cc-9"),
            Some((SectionKind::Conditions, "https://x.org/id|c-9".into()))
        );
        assert_eq!(delete_target("Observation/1"), None);
        assert_eq!(delete_target("Flag?status=active"), None);
        assert_eq!(delete_target("%"), None);
    }

    #[test]
    fn text_cap_counts_characters() {
        let mut s = "é".repeat(MAX_ITEM_TEXT);
        assert!(!cap_text(&mut s));
        let mut s = "é".repeat(MAX_ITEM_TEXT + 1);
        assert!(cap_text(&mut s));
        assert_eq!(s.chars().count(), MAX_ITEM_TEXT + 4);
    }

    #[test]
    fn partial_dates_end() {
        let now = UnixMillis::parse_rfc3339("2026-12-04T10:00:00Z").unwrap();
        for (d, before) in [
            ("1990", true),
            ("2026", false),
            ("2026-11", true),
            ("2026-12", false),
            ("2026-12-03", true),
            ("2026-12-04", false),
            ("2027-01-01", false),
            ("2026-12-04T09:00:00Z", true),
        ] {
            assert_eq!(FhirDate::parse(d).unwrap().is_before(now), before, "{d}");
        }
    }
}
