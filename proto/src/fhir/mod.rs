//! FHIR R4 at Kerbside's edges: ingest of Bundles into the internal model ([`ingest`]), the
//! IPS-shaped `$summary` document ([`export`]). See `docs/fhir-mapping.md` for the mapping.

pub mod export;
pub mod ingest;

/// SNOMED CT (dm+d codes are SNOMED identifiers too).
pub const SNOMED: &str = "http://snomed.info/sct";
/// LOINC (IPS section codes).
pub const LOINC: &str = "http://loinc.org";
/// ODS organisation codes.
pub const ODS: &str = "https://fhir.nhs.uk/Id/ods-organization-code";
/// NHS number.
pub const NHS_NUMBER: &str = "https://fhir.nhs.uk/Id/nhs-number";
/// SDS user id.
pub const SDS_USER: &str = "https://fhir.nhs.uk/Id/sds-user-id";
/// Section empty reasons.
pub const LIST_EMPTY_REASON: &str = "http://terminology.hl7.org/CodeSystem/list-empty-reason";
/// UK Core NHS number verification status extension.
pub const EXT_NHS_VERIFICATION: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus";
/// UK Core NHS number verification status code system (England).
pub const NHS_VERIFICATION_SYSTEM: &str =
    "https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland";
/// UK Core last issue date of a medication.
pub const EXT_LAST_ISSUE: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationStatementLastIssueDate";
/// UK Core problem significance (simplified to a `valueCode`).
pub const EXT_SIGNIFICANCE: &str =
    "https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-ProblemSignificance";
/// Consent scope code system.
pub const CONSENT_SCOPE: &str = "http://terminology.hl7.org/CodeSystem/consentscope";
/// IPS absent and unknown data codes (`no-allergy-info`, `no-known-allergies`…).
pub const IPS_ABSENT_UNKNOWN: &str = "http://hl7.org/fhir/uv/ips/CodeSystem/absent-unknown-uv-ips";
/// v3 confidentiality.
pub const CONFIDENTIALITY: &str = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality";

/// The IPS sections Kerbside carries, with their LOINC codes and titles.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SectionKind {
    Allergies,
    Medications,
    Conditions,
    Resuscitation,
    CarePlans,
    Alerts,
}

impl SectionKind {
    pub const ALL: [SectionKind; 6] = [
        SectionKind::Allergies,
        SectionKind::Medications,
        SectionKind::Conditions,
        SectionKind::Resuscitation,
        SectionKind::CarePlans,
        SectionKind::Alerts,
    ];
    pub fn loinc(self) -> &'static str {
        match self {
            SectionKind::Allergies => "48765-2",
            SectionKind::Medications => "10160-0",
            SectionKind::Conditions => "11450-4",
            SectionKind::Resuscitation => "42348-3",
            SectionKind::CarePlans => "18776-5",
            SectionKind::Alerts => "104605-1",
        }
    }
    pub fn title(self) -> &'static str {
        match self {
            SectionKind::Allergies => "Allergies and adverse reactions",
            SectionKind::Medications => "Medication summary",
            SectionKind::Conditions => "Problem list",
            SectionKind::Resuscitation => "Advance directives (resuscitation)",
            SectionKind::CarePlans => "Plan of care",
            SectionKind::Alerts => "Alerts",
        }
    }
    /// The JSON key of the section in the summary.
    pub fn key(self) -> &'static str {
        match self {
            SectionKind::Allergies => "allergies",
            SectionKind::Medications => "medications",
            SectionKind::Conditions => "conditions",
            SectionKind::Resuscitation => "resuscitation",
            SectionKind::CarePlans => "care_plans",
            SectionKind::Alerts => "alerts",
        }
    }
    pub fn from_loinc(code: &str) -> Option<SectionKind> {
        SectionKind::ALL.into_iter().find(|k| k.loinc() == code)
    }
}
