//! Cohorts on the hub side of sync: which records a unit receives.
//!
//! The hub filters by [`RecordMeta`], a few fields it extracts once per version at ingest, so it
//! never decodes a summary to decide where it goes. A unit's cohort is the union of its
//! [`CohortSpec`]s; a withdrawn record (objection, deletion) is in no cohort.

use ring::digest;
use serde::{Deserialize, Serialize};

use crate::ids::{CohortSpec, OdsCode, PostcodeDistrict};
use crate::model::Summary;
use crate::nhs::NhsNumber;

/// The most list entries (districts, practices, kinds) a cohort may have on the wire.
pub const MAX_COHORT_ENTRIES: usize = 10_000;

/// What the hub needs to know about one version of a record to route it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RecordMeta {
    pub nhs: NhsNumber,
    /// The district of the patient's postcode, when known and valid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcode_district: Option<PostcodeDistrict>,
    /// The patient's registered GP practice, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gp_practice: Option<OdsCode>,
    /// A care plan or a resuscitation decision (the `flagged` cohort).
    #[serde(default)]
    pub flagged: bool,
    /// Content a crew needs first (flagged, or any recorded allergy): sent first in a baseline.
    #[serde(default)]
    pub critical: bool,
    /// Withdrawn (objection or deletion): in no cohort.
    #[serde(default)]
    pub withdrawn: bool,
}

impl RecordMeta {
    /// The routing facts of a summary.
    pub fn of_summary(s: &Summary) -> Self {
        let flagged = s.is_flagged();
        RecordMeta {
            nhs: s.nhs_number,
            postcode_district: s
                .patient
                .postcode
                .as_deref()
                .and_then(PostcodeDistrict::of_postcode),
            gp_practice: s.patient.gp_practice.clone(),
            flagged,
            critical: flagged || !s.allergies.entries.is_empty(),
            withdrawn: s.objection,
        }
    }

    /// The same facts, marked withdrawn (the meta of a withdrawal entry).
    pub fn into_withdrawn(mut self) -> Self {
        self.withdrawn = true;
        self
    }
}

/// Whether a record with these facts belongs to the cohort made of `specs` (their union).
/// Withdrawn records belong to none; an empty list is the empty cohort.
pub fn in_cohort(specs: &[CohortSpec], meta: &RecordMeta) -> bool {
    !meta.withdrawn
        && specs.iter().any(|spec| match spec {
            CohortSpec::All => true,
            CohortSpec::Flagged => meta.flagged,
            CohortSpec::Postcode(districts) => meta
                .postcode_district
                .as_ref()
                .is_some_and(|d| districts.contains(d)),
            CohortSpec::Practice(practices) => meta
                .gp_practice
                .as_ref()
                .is_some_and(|p| practices.contains(p)),
        })
}

/// A cohort filter as the hub's feed receives it: the cohort, optionally narrowed to critical
/// records (the first pass of a baseline).
#[derive(Debug, Clone, Copy)]
pub struct CohortFilter<'a> {
    pub specs: &'a [CohortSpec],
    pub critical_only: bool,
}

impl CohortFilter<'_> {
    pub fn matches(&self, meta: &RecordMeta) -> bool {
        (!self.critical_only || meta.critical) && in_cohort(self.specs, meta)
    }
}

/// A canonical form of a cohort: lists sorted and de-duplicated, specs sorted by their text
/// form and de-duplicated, so two descriptions of the same cohort compare equal.
pub fn normalize_cohort(specs: &[CohortSpec]) -> Vec<CohortSpec> {
    let mut out: Vec<CohortSpec> = specs
        .iter()
        .map(|s| match s {
            CohortSpec::Postcode(v) => {
                let mut v = v.clone();
                v.sort();
                v.dedup();
                CohortSpec::Postcode(v)
            }
            CohortSpec::Practice(v) => {
                let mut v = v.clone();
                v.sort();
                v.dedup();
                CohortSpec::Practice(v)
            }
            other => other.clone(),
        })
        .collect();
    out.sort_by_key(|s| s.to_string());
    out.dedup();
    out
}

/// Whether two cohort descriptions name the same cohort (after [`normalize_cohort`]).
pub fn same_cohort(a: &[CohortSpec], b: &[CohortSpec]) -> bool {
    normalize_cohort(a) == normalize_cohort(b)
}

/// A short, stable fingerprint of a cohort (SHA-256 of its canonical text form), for status
/// pages and logs.
pub fn cohort_fingerprint(specs: &[CohortSpec]) -> [u8; 32] {
    let text: Vec<String> = normalize_cohort(specs)
        .iter()
        .map(|s| s.to_string())
        .collect();
    let d = digest::digest(&digest::SHA256, text.join(";").as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// How many entries a cohort description has (each spec counts one plus its list's length).
pub fn cohort_entries(specs: &[CohortSpec]) -> usize {
    specs
        .iter()
        .map(|s| match s {
            CohortSpec::Postcode(v) => 1 + v.len(),
            CohortSpec::Practice(v) => 1 + v.len(),
            _ => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pc: Option<&str>, gp: Option<&str>, flagged: bool) -> RecordMeta {
        RecordMeta {
            nhs: NhsNumber::parse("9434765919").unwrap(),
            postcode_district: pc.map(|p| PostcodeDistrict::parse(p).unwrap()),
            gp_practice: gp.map(|g| OdsCode::parse(g).unwrap()),
            flagged,
            critical: flagged,
            withdrawn: false,
        }
    }

    #[test]
    fn union_of_specs() {
        let c = vec![
            CohortSpec::parse("postcode:SE1,SE5").unwrap(),
            CohortSpec::Flagged,
        ];
        assert!(in_cohort(&c, &meta(Some("SE1"), None, false)));
        assert!(in_cohort(&c, &meta(Some("E14"), None, true)));
        assert!(!in_cohort(&c, &meta(Some("E14"), None, false)));
        assert!(!in_cohort(&c, &meta(None, Some("F84001"), false)));
        let p = vec![CohortSpec::parse("practice:F84001").unwrap()];
        assert!(in_cohort(&p, &meta(None, Some("F84001"), false)));
        assert!(!in_cohort(&[], &meta(Some("SE1"), None, true)));
        assert!(in_cohort(&[CohortSpec::All], &meta(None, None, false)));
        assert!(!in_cohort(
            &[CohortSpec::All],
            &meta(None, None, false).into_withdrawn()
        ));
    }

    #[test]
    fn normalization() {
        let a = vec![
            CohortSpec::Flagged,
            CohortSpec::parse("postcode:SE5,SE1").unwrap(),
        ];
        let b = vec![
            CohortSpec::Postcode(vec![
                PostcodeDistrict::parse("SE5").unwrap(),
                PostcodeDistrict::parse("SE1").unwrap(),
                PostcodeDistrict::parse("SE1").unwrap(),
            ]),
            CohortSpec::Flagged,
            CohortSpec::Flagged,
        ];
        assert!(same_cohort(&a, &b));
        assert_eq!(cohort_fingerprint(&a), cohort_fingerprint(&b));
        assert!(!same_cohort(&a, &[CohortSpec::Flagged]));
        assert_eq!(cohort_entries(&a), 4);
    }
}
