//! The critical summary: one per patient, assembled by the hub from many sources.
//!
//! Small typed structs, encoded as CBOR on the wire and at rest ([`crate::cbor`]) and mapped to
//! FHIR R4 only at the edges ([`crate::fhir`]). Rules clinicians depend on are encoded in the
//! types: every section says *why* it is empty ([`SectionStatus`]), every item carries its
//! [`Provenance`], and the summary carries its hub version and assembly time.
//!
//! Forward compatibility: fields are added with `#[serde(default)]`, unknown fields are ignored
//! on decode, and enums that may grow carry an `Unknown` catch-all, so an older unit can read a
//! newer hub's records. An incompatible change bumps [`SCHEMA_VERSION`].

use serde::{Deserialize, Serialize};

use crate::codes::HighRiskClass;
use crate::ids::{OdsCode, SourceId};
use crate::nhs::NhsNumber;
use crate::time::UnixMillis;

/// The summary schema this build writes. Readers accept this and older versions.
pub const SCHEMA_VERSION: u16 = 1;

/// Why a section has (or has no) entries. Never infer "none known" from an empty list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SectionStatus {
    /// The section has entries.
    Entries,
    /// A source positively recorded that there are none (e.g. "No known allergy", 716186003).
    NoneKnown,
    /// A source holds information but withheld it.
    Withheld,
    /// Nothing was received about this section: it is unknown, not empty. (Also what an
    /// unknown future status decodes as: the safe reading.)
    #[default]
    #[serde(other)]
    NoInformation,
}

impl SectionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SectionStatus::Entries => "entries",
            SectionStatus::NoneKnown => "none_known",
            SectionStatus::NoInformation => "no_information",
            SectionStatus::Withheld => "withheld",
        }
    }
}

/// A statement about a whole section rather than an item: "no known allergies" as recorded by
/// a source (with its provenance), or "withheld". It decides the status of an empty section.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Marker {
    /// `none_known` or `withheld`.
    pub status: SectionStatus,
    /// The code that said so, e.g. SNOMED 716186003 "No known allergy".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concept: Option<Concept>,
    /// Who said so; `None` when it came from a document's section `emptyReason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provenance: Option<Provenance>,
}

/// One section of the summary: its status, its entries, and the markers behind an empty status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Section<T> {
    pub status: SectionStatus,
    #[serde(default = "Vec::new")]
    pub entries: Vec<T>,
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub basis: Vec<Marker>,
}

impl<T> Default for Section<T> {
    fn default() -> Self {
        Section {
            status: SectionStatus::NoInformation,
            entries: Vec::new(),
            basis: Vec::new(),
        }
    }
}

impl<T> Section<T> {
    /// A section with entries (status `entries`), or `no_information` when the list is empty.
    pub fn with_entries(entries: Vec<T>) -> Self {
        let mut s = Section {
            status: SectionStatus::NoInformation,
            entries,
            basis: Vec::new(),
        };
        s.derive_status();
        s
    }

    /// Recompute the status: `entries` if any entry; else `none_known` if a source's latest
    /// statement about the section says so (a "none known" nobody vouches for is not shown, and
    /// a later "unavailable" or "not asked" from the same source replaces it); else `withheld`
    /// if a statement says so; else `no_information`.
    pub fn derive_status(&mut self) {
        self.status = if !self.entries.is_empty() {
            SectionStatus::Entries
        } else if self
            .latest_statements()
            .any(|m| m.status == SectionStatus::NoneKnown)
        {
            SectionStatus::NoneKnown
        } else if self
            .basis
            .iter()
            .any(|m| m.status == SectionStatus::Withheld)
        {
            SectionStatus::Withheld
        } else {
            SectionStatus::NoInformation
        };
    }

    /// Each source's latest statement about the section (statements without a source are not
    /// included).
    pub fn latest_statements(&self) -> impl Iterator<Item = &Marker> {
        self.basis.iter().filter(move |m| {
            let Some(p) = &m.provenance else {
                return false;
            };
            !self.basis.iter().any(|o| {
                o.provenance.as_ref().is_some_and(|q| {
                    q.source_ods == p.source_ods && q.last_updated > p.last_updated
                })
            })
        })
    }
}

/// A coding from a code system (SNOMED CT, dm+d, LOINC…).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Coding {
    pub system: String,
    pub code: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<String>,
}

/// A clinical concept: a coding and/or the text as recorded. Narrative-only items (no coding)
/// are kept, never dropped for being uncoded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Concept {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coding: Option<Coding>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Concept {
    /// What a clinician should read: the recorded text, else the coding's display, else the code.
    pub fn label(&self) -> &str {
        if let Some(t) = &self.text {
            return t;
        }
        match &self.coding {
            Some(c) => c.display.as_deref().unwrap_or(&c.code),
            None => "(not recorded)",
        }
    }

    /// The SNOMED CT code, when the coding is SNOMED.
    pub fn snomed(&self) -> Option<&str> {
        self.coding
            .as_ref()
            .filter(|c| c.system == crate::fhir::SNOMED)
            .map(|c| c.code.as_str())
    }
}

/// A FHIR `date` or `dateTime` as recorded (`1950`, `1950-01`, `1950-01-01`, or a full
/// date-time). Partial dates are normal in clinical records and are kept as they are.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FhirDate(String);

/// A string that is not a FHIR date or dateTime.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a FHIR date: {0:?}")]
pub struct BadDate(pub String);

impl FhirDate {
    pub fn parse(s: &str) -> Result<Self, BadDate> {
        let b = s.as_bytes();
        let digits =
            |r: std::ops::Range<usize>| b.get(r).is_some_and(|x| x.iter().all(u8::is_ascii_digit));
        let month_ok = |i: usize| {
            digits(i..i + 2) && (1..=12).contains(&((b[i] - b'0') * 10 + b[i + 1] - b'0'))
        };
        let day_ok = |i: usize| {
            digits(i..i + 2) && (1..=31).contains(&((b[i] - b'0') * 10 + b[i + 1] - b'0'))
        };
        let ok = match b.len() {
            4 => digits(0..4),
            7 => digits(0..4) && b[4] == b'-' && month_ok(5),
            10 => digits(0..4) && b[4] == b'-' && month_ok(5) && b[7] == b'-' && day_ok(8),
            n if n > 10 && n <= 35 => {
                digits(0..4)
                    && b[4] == b'-'
                    && month_ok(5)
                    && b[7] == b'-'
                    && day_ok(8)
                    && b[10] == b'T'
                    && UnixMillis::parse_rfc3339(s).is_ok()
            }
            _ => false,
        };
        if ok {
            Ok(FhirDate(s.to_owned()))
        } else {
            Err(BadDate(s.to_owned()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Is this date (any precision) wholly before the instant `now`? A date-time compares as an
    /// instant; a partial date ends when the whole period it names is before `now`'s calendar
    /// date (both are ISO 8601 and sort as text).
    pub fn is_before(&self, now: UnixMillis) -> bool {
        let s = self.as_str();
        if let Ok(t) = UnixMillis::parse_rfc3339(s) {
            return t < now;
        }
        let today = now.to_rfc3339();
        let today = &today[..today.len().min(10)];
        let n = s.len().min(today.len());
        s[..n] < today[..n]
    }

    /// The calendar date part (`YYYY-MM-DD`), if the value is at least day-precise.
    pub fn day(&self) -> Option<&str> {
        self.0.get(0..10).filter(|_| self.0.len() >= 10)
    }
}

impl TryFrom<String> for FhirDate {
    type Error = BadDate;
    fn try_from(s: String) -> Result<Self, BadDate> {
        FhirDate::parse(&s)
    }
}
impl From<FhirDate> for String {
    fn from(d: FhirDate) -> String {
        d.0
    }
}

/// Something a clinician should know about how an item was received: a reference that
/// resolved nowhere (its display kept), or free text cut to [`MAX_ITEM_TEXT`] characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Caveat {
    pub kind: CaveatKind,
    /// The FHIR element concerned, e.g. `medicationReference` or `description`.
    pub field: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaveatKind {
    /// A reference that resolved nowhere in the bundle: only its display text was kept.
    Unresolved,
    /// Free text longer than [`MAX_ITEM_TEXT`] characters, cut; the full text is at the source.
    Truncated,
    /// A kind a newer hub knows.
    #[serde(other)]
    Other,
}

/// The most characters of free text kept per field of an item; longer text is cut and the
/// item carries a [`CaveatKind::Truncated`] caveat naming the field.
pub const MAX_ITEM_TEXT: usize = 2_000;

/// Where an item came from: data control stays with the organisation that recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Provenance {
    /// The source organisation: its ODS code, or `system|value` of another identifier.
    pub source_ods: SourceId,
    /// The source organisation's name, when the exchange sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    /// The source system (FHIR `meta.source`), e.g. `urn:kerbside:system:emis-web`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// The item's id at its source (`identifier` system|value, or resource id).
    pub record_id: String,
    /// The FHIR resource id at the source (`Type/id`), when it had one: a `DELETE` by id finds
    /// the item by this even when `record_id` is a business identifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    /// The item's version at its source (`meta.versionId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record_version: Option<String>,
    /// When the item was last updated at its source.
    pub last_updated: UnixMillis,
    /// How the item was received, when something about it is incomplete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub caveats: Vec<Caveat>,
    /// A restricted confidentiality label on the item or its bundle (`meta.security` R or V):
    /// withheld from every answer unless the clinician breaks the glass.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restricted: bool,
}

/// Every clinical item exposes its provenance, so merging is generic.
pub trait Item {
    fn provenance(&self) -> &Provenance;
    /// Mark the item withdrawn by its source, keeping it as history; false (the default): the
    /// item is removed instead.
    fn withdraw(&mut self) -> bool {
        false
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Criticality {
    Low,
    High,
    #[serde(other)]
    UnableToAssess,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Mild,
    Moderate,
    Severe,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AllergyCategory {
    Food,
    Medication,
    Environment,
    Biologic,
}

/// A reaction recorded against an allergy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Reaction {
    pub manifestation: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub severity: Option<Severity>,
}

/// An allergy or intolerance.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Allergy {
    pub concept: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinical_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<AllergyCategory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criticality: Option<Criticality>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<FhirDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<FhirDate>,
    pub provenance: Provenance,
}

/// What kind of record a medicine line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MedicationRecordKind {
    /// A MedicationStatement: what the patient takes.
    #[default]
    Statement,
    /// A MedicationRequest that is a plan or proposal (a repeat template).
    Request,
    /// A MedicationRequest with intent `order` (an issue).
    Order,
}

/// A medicine (from a MedicationStatement or MedicationRequest).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Medication {
    pub concept: Concept,
    /// The dose form, from the referenced `Medication` resource.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dosage: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<FhirDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_issued: Option<FhirDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prescriber_ods: Option<OdsCode>,
    /// Derived from the curated list in [`crate::codes`]: anticoagulant, insulin, opioid…
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_risk: Option<HighRiskClass>,
    /// True when ingested from a MedicationRequest rather than a MedicationStatement.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub from_request: bool,
    /// Statement, request (plan) or order.
    #[serde(default)]
    pub kind: MedicationRecordKind,
    /// When it was stopped or ended (`effectivePeriod.end`, a request's validity end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<FhirDate>,
    pub provenance: Provenance,
}

impl Medication {
    /// Current (taken now) rather than stopped, completed, not taken, on hold or cancelled.
    pub fn is_current(&self) -> bool {
        !matches!(
            self.status.as_deref(),
            Some(
                "stopped"
                    | "completed"
                    | "not-taken"
                    | "on-hold"
                    | "cancelled"
                    | "entered-in-error"
                    | "revoked"
                    | "draft"
            )
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Significance {
    Major,
    Minor,
}

/// A long-term condition or problem.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Condition {
    pub concept: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinical_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onset: Option<FhirDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recorded: Option<FhirDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub significance: Option<Significance>,
    pub provenance: Provenance,
}

/// What a resuscitation decision says about CPR. Never inferred as `for_cpr` from silence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Cpr {
    /// Do not attempt CPR (DNACPR).
    NotForCpr,
    /// Attempt CPR.
    ForCpr,
    /// A ReSPECT plan: read the form (its own CPR recommendation in `form_cpr` when stated).
    RespectPlan,
    /// A decision is recorded but what it says about CPR could not be read: read the record.
    #[default]
    #[serde(other)]
    Unknown,
}

/// Where a recorded decision stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecisionState {
    /// In force at its source.
    #[default]
    Current,
    /// Replaced by a later decision or document.
    Superseded,
    /// Revoked at its source (Consent `inactive`/`rejected`, a care plan `revoked`).
    Rescinded,
    /// Withdrawn by its source (a `DELETE`, or a later snapshot that no longer holds it).
    Withdrawn,
    #[serde(other)]
    Other,
}

/// What kind of record a resuscitation decision came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DecisionRecord {
    /// A FHIR `Consent` (scope adr or treatment).
    #[default]
    Consent,
    /// A DNACPR form (`DocumentReference`).
    DnacprForm,
    /// A ReSPECT form (`DocumentReference`).
    RespectForm,
    /// A care plan (`CarePlan` or a care-plan document).
    CarePlan,
    #[serde(other)]
    Other,
}

/// A resuscitation decision (DNACPR, for CPR, a ReSPECT plan), from a `Consent`, a DNACPR or
/// ReSPECT document, or a care plan.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Resuscitation {
    /// What was recorded, as recorded (e.g. "Cardiopulmonary resuscitation" with a deny).
    pub decision: Concept,
    /// What it means for CPR.
    #[serde(default)]
    pub cpr: Cpr,
    /// A ReSPECT form's own CPR recommendation, when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_cpr: Option<Cpr>,
    /// Where it stands at its source.
    #[serde(default)]
    pub state: DecisionState,
    /// The kind of record it came from.
    #[serde(default)]
    pub record: DecisionRecord,
    /// Documents or records this one replaces (record ids or `Type/id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
    /// The FHIR status as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided: Option<FhirDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<FhirDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decision_maker: Option<String>,
    pub provenance: Provenance,
}

/// A care plan pointer with a short extract (ReSPECT, end of life, mental-health crisis…).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CarePlan {
    pub plan_type: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custodian: Option<OdsCode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<FhirDate>,
    /// Short extract: preferred place of care, ceiling of treatment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extract: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Documents this one replaces (`relatesTo` replaces: record ids or `Type/id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replaces: Vec<String>,
    pub provenance: Provenance,
}

/// An alert flag: communication needs, safeguarding, risk to crew.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Alert {
    pub flag: Concept,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<Concept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<FhirDate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<FhirDate>,
    pub provenance: Provenance,
}

macro_rules! impl_item {
    ($($t:ty),*) => { $(impl Item for $t { fn provenance(&self) -> &Provenance { &self.provenance } })* };
}
impl_item!(Allergy, Medication, Condition, CarePlan, Alert);

impl Item for Resuscitation {
    fn provenance(&self) -> &Provenance {
        &self.provenance
    }
    /// A withdrawn resuscitation decision stays as history, marked withdrawn: a crew must be
    /// able to see that a DNACPR existed and was withdrawn.
    fn withdraw(&mut self) -> bool {
        self.state = DecisionState::Withdrawn;
        true
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Male,
    Female,
    Other,
    #[default]
    #[serde(other)]
    Unknown,
}

impl Gender {
    pub fn as_str(self) -> &'static str {
        match self {
            Gender::Male => "male",
            Gender::Female => "female",
            Gender::Other => "other",
            Gender::Unknown => "unknown",
        }
    }
}

/// A name the patient is or was known by (kept for search and for the crew to recognise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct PersonName {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub given: Vec<String>,
    /// The name as text, when the source sent it that way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// FHIR `HumanName.use`: usual, official, old, maiden, nickname…
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub name_use: Option<String>,
}

/// Who the patient is: shown with every summary so the crew can confirm the right person.
///
/// Identity is the *current* record: the current NHS number (former ones listed in
/// `former_nhs_numbers`, which redirect), the current name by use and period, deceased when
/// recorded, and no address at all for a restricted (S-flag) patient.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Demographics {
    /// The current name's family name (empty when the name came only as text: see `name_text`).
    pub family: String,
    #[serde(default)]
    pub given: Vec<String>,
    /// The current name as text, when the source gave no family or given parts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name_text: Option<String>,
    /// Other names, current or past (old, maiden, nickname), for search.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub other_names: Vec<PersonName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub birth_date: Option<FhirDate>,
    #[serde(default)]
    pub gender: Gender,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gp_practice: Option<OdsCode>,
    /// The GP practice's name, when the exchange sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gp_name: Option<String>,
    /// The patient has died (FHIR `deceasedBoolean` / `deceasedDateTime`).
    #[serde(default)]
    pub deceased: bool,
    /// When, if recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deceased_at: Option<FhirDate>,
    /// A restricted record (PDS "S-flag"): the address is withheld everywhere (never stored,
    /// never shown, never searchable).
    #[serde(default)]
    pub restricted: bool,
    /// NHS numbers this patient was known by (superseded or merged records). A lookup by one
    /// answers this record, saying it was redirected.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub former_nhs_numbers: Vec<NhsNumber>,
    /// NHS number verification status (UK Core England code, e.g. `01` verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nhs_verification: Option<String>,
    /// When the demographics were last updated at their source.
    #[serde(default)]
    pub last_updated: UnixMillis,
}

/// A source organisation contributing to a summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    /// The organisation: its ODS code, or `system|value` of another identifier.
    pub ods: SourceId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    /// Latest time anything from this source was updated.
    pub retrieved_at: UnixMillis,
}

/// Confidentiality of the summary (`meta.security`, v3-Confidentiality `N` / `R`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Confidentiality {
    #[default]
    Normal,
    /// Restricted content: shown only with a break-glass purpose and reason.
    #[serde(other)]
    Restricted,
}

/// The critical summary of one patient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Schema version this value was written with.
    pub schema: u16,
    pub nhs_number: NhsNumber,
    pub patient: Demographics,
    #[serde(default)]
    pub allergies: Section<Allergy>,
    #[serde(default)]
    pub medications: Section<Medication>,
    #[serde(default)]
    pub conditions: Section<Condition>,
    #[serde(default)]
    pub resuscitation: Section<Resuscitation>,
    #[serde(default)]
    pub care_plans: Section<CarePlan>,
    #[serde(default)]
    pub alerts: Section<Alert>,
    #[serde(default)]
    pub sources: Vec<SourceRef>,
    #[serde(default)]
    pub confidentiality: Confidentiality,
    /// The patient objected to sharing: the summary is withdrawn and carries no clinical content.
    #[serde(default)]
    pub objection: bool,
    /// Hub version: rises by one whenever the content changes, never otherwise.
    pub version: u64,
    /// When the hub assembled this version.
    pub assembled_at: UnixMillis,
    /// What the hub remembers so that late or out-of-order messages cannot bring back what a
    /// source withdrew (not clinical content; not shown on the LAN).
    #[serde(default, skip_serializing_if = "Ledger::is_empty")]
    pub ledger: Ledger,
}

/// A source's full snapshot of a section: its items older than `as_of` that the snapshot did
/// not contain were withdrawn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotMark {
    pub source: SourceId,
    pub section: u8,
    pub as_of: UnixMillis,
}

/// An item a source withdrew (`DELETE`): a version no newer than `at` never comes back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub source: SourceId,
    pub section: u8,
    pub id: String,
    pub at: UnixMillis,
}

/// Withdrawal memory of one summary (bounded: [`Ledger::MAX_TOMBSTONES`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Ledger {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub snapshots: Vec<SnapshotMark>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tombstones: Vec<Tombstone>,
}

impl Ledger {
    /// The most tombstones kept per summary (the oldest are forgotten first).
    pub const MAX_TOMBSTONES: usize = 256;
    pub fn is_empty(&self) -> bool {
        self.snapshots.is_empty() && self.tombstones.is_empty()
    }
}

impl Summary {
    /// An empty summary for a patient: every section `no_information`, version 0.
    pub fn new(nhs_number: NhsNumber, patient: Demographics) -> Self {
        Summary {
            schema: SCHEMA_VERSION,
            nhs_number,
            patient,
            allergies: Section::default(),
            medications: Section::default(),
            conditions: Section::default(),
            resuscitation: Section::default(),
            care_plans: Section::default(),
            alerts: Section::default(),
            sources: Vec::new(),
            confidentiality: Confidentiality::Normal,
            objection: false,
            version: 0,
            assembled_at: UnixMillis(0),
            ledger: Ledger::default(),
        }
    }

    /// True when the patient has a care plan or a resuscitation decision (the `flagged` cohort).
    pub fn is_flagged(&self) -> bool {
        !self.care_plans.entries.is_empty() || !self.resuscitation.entries.is_empty()
    }

    /// Content equality ignoring version, assembly time and the ledger: used to decide whether a
    /// merge produced a new version (a ledger-only change is stored without one).
    pub fn same_content(&self, other: &Summary) -> bool {
        self.nhs_number == other.nhs_number
            && self.patient == other.patient
            && self.allergies == other.allergies
            && self.medications == other.medications
            && self.conditions == other.conditions
            && self.resuscitation == other.resuscitation
            && self.care_plans == other.care_plans
            && self.alerts == other.alerts
            && self.sources == other.sources
            && self.confidentiality == other.confidentiality
            && self.objection == other.objection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fhir_dates() {
        for ok in [
            "1950",
            "1950-01",
            "1950-01-31",
            "2024-11-02T10:00:00Z",
            "2024-11-02T10:00:00.5+01:00",
        ] {
            assert!(FhirDate::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "50",
            "1950-13",
            "1950-1-1",
            "1950-01-32",
            "01/01/1950",
            "1950-01-01T",
            "1950-01-01 10:00",
        ] {
            assert!(FhirDate::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            FhirDate::parse("1950-01-31").unwrap().day(),
            Some("1950-01-31")
        );
        assert_eq!(FhirDate::parse("1950").unwrap().day(), None);
    }

    #[test]
    fn empty_section_is_no_information_not_none() {
        let s: Section<Allergy> = Section::with_entries(vec![]);
        assert_eq!(s.status, SectionStatus::NoInformation);
        assert_eq!(
            Section::<Allergy>::default().status,
            SectionStatus::NoInformation
        );
    }
}
