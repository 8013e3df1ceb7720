//! Summary assembly: merging what many sources say about one patient into one summary.
//!
//! Rules (see `docs/fhir-mapping.md`): an item is identified by (source ODS, source record id);
//! a newer version replaces the older one, an older or equal one is ignored (so re-ingesting
//! the same bundle changes nothing), `entered-in-error` removes it. Section status is derived
//! from entries and markers, never from an empty list alone. The caller (the hub) bumps the
//! version when [`apply`] reports a change, so versions are monotonic and move only on change.

use std::collections::BTreeMap;

use crate::fhir::ingest::{AnyItem, Contribution, Update};
use crate::fhir::SectionKind;
use crate::model::*;
use crate::time::UnixMillis;

/// Why a contribution cannot apply to a summary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AssembleError {
    #[error("contribution is for a different patient")]
    WrongPatient,
}

fn same_item(a: &Provenance, b: &Provenance) -> bool {
    a.source_ods == b.source_ods && a.record_id == b.record_id
}

/// Is `new` a newer version than `old` of the same item?
fn newer(new: &Provenance, old: &Provenance) -> bool {
    if new.last_updated != old.last_updated {
        return new.last_updated > old.last_updated;
    }
    let num = |p: &Provenance| {
        p.record_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (num(new), num(old)) {
        (Some(a), Some(b)) => a > b,
        _ => new.record_version > old.record_version,
    }
}

fn upsert<T: Item + PartialEq>(section: &mut Section<T>, item: T) {
    if let Some(i) = section
        .entries
        .iter()
        .position(|e| same_item(e.provenance(), item.provenance()))
    {
        if newer(item.provenance(), section.entries[i].provenance()) {
            section.entries[i] = item;
        }
        return;
    }
    // A section marker from the same record (e.g. the source replaced its "no known allergies"
    // with a real allergy under the same id) gives way to the item.
    section.basis.retain(|m| {
        m.provenance
            .as_ref()
            .is_none_or(|p| !same_item(p, item.provenance()))
    });
    section.entries.push(item);
}

fn mark<T: Item>(section: &mut Section<T>, marker: Marker) {
    match &marker.provenance {
        Some(p) => {
            if let Some(i) = section
                .basis
                .iter()
                .position(|m| m.provenance.as_ref().is_some_and(|q| same_item(p, q)))
            {
                let replace = section.basis[i]
                    .provenance
                    .as_ref()
                    .is_some_and(|q| newer(p, q));
                if replace {
                    section.basis[i] = marker;
                }
                return;
            }
            // An item under the same record id is superseded by the marker only if the marker is newer.
            if let Some(i) = section
                .entries
                .iter()
                .position(|e| same_item(e.provenance(), p))
            {
                if !newer(p, section.entries[i].provenance()) {
                    return;
                }
                section.entries.remove(i);
            }
            section.basis.push(marker);
        }
        None => {
            // Document-level statements (a section's emptyReason): one per section.
            section.basis.retain(|m| m.provenance.is_some());
            section.basis.push(marker);
        }
    }
}

fn remove<T: Item>(section: &mut Section<T>, p: &Provenance) {
    section
        .entries
        .retain(|e| !same_item(e.provenance(), p) || newer(e.provenance(), p));
    section.basis.retain(|m| {
        m.provenance
            .as_ref()
            .is_none_or(|q| !same_item(q, p) || newer(q, p))
    });
}

macro_rules! each_section {
    ($s:expr, $k:expr, |$sec:ident| $body:expr) => {
        match $k {
            SectionKind::Allergies => {
                let $sec = &mut $s.allergies;
                $body
            }
            SectionKind::Medications => {
                let $sec = &mut $s.medications;
                $body
            }
            SectionKind::Conditions => {
                let $sec = &mut $s.conditions;
                $body
            }
            SectionKind::Resuscitation => {
                let $sec = &mut $s.resuscitation;
                $body
            }
            SectionKind::CarePlans => {
                let $sec = &mut $s.care_plans;
                $body
            }
            SectionKind::Alerts => {
                let $sec = &mut $s.alerts;
                $body
            }
        }
    };
}

/// Merge a contribution into a summary. Returns whether the summary's content changed; the
/// caller then bumps `version` and sets `assembled_at`.
pub fn apply(summary: &mut Summary, c: &Contribution) -> Result<bool, AssembleError> {
    if summary.nhs_number != c.nhs_number {
        return Err(AssembleError::WrongPatient);
    }
    let before = summary.clone();
    if c.patient.last_updated >= summary.patient.last_updated {
        summary.patient = c.patient.clone();
    }
    if let Some(conf) = c.confidentiality {
        summary.confidentiality = conf;
    }
    for u in &c.updates {
        match u {
            Update::Item(item) => match item.clone() {
                AnyItem::Allergy(x) => upsert(&mut summary.allergies, x),
                AnyItem::Medication(x) => upsert(&mut summary.medications, x),
                AnyItem::Condition(x) => upsert(&mut summary.conditions, x),
                AnyItem::Resuscitation(x) => upsert(&mut summary.resuscitation, x),
                AnyItem::CarePlan(x) => upsert(&mut summary.care_plans, x),
                AnyItem::Alert(x) => upsert(&mut summary.alerts, x),
            },
            Update::Marker(k, m) => each_section!(summary, *k, |s| mark(s, m.clone())),
            Update::Remove {
                section,
                provenance,
            } => each_section!(summary, *section, |s| remove(s, provenance)),
        }
    }
    for k in SectionKind::ALL {
        each_section!(summary, k, |s| s.derive_status());
    }
    summary.sources = derive_sources(summary);
    Ok(!before.same_content(summary))
}

/// The contributing organisations, from every item's and marker's provenance.
pub fn derive_sources(s: &Summary) -> Vec<SourceRef> {
    let mut map: BTreeMap<String, SourceRef> = BTreeMap::new();
    let mut add = |p: &Provenance| {
        let e = map
            .entry(p.source_ods.as_str().to_owned())
            .or_insert_with(|| SourceRef {
                ods: p.source_ods.clone(),
                name: None,
                system: None,
                retrieved_at: UnixMillis(i64::MIN),
            });
        if e.name.is_none() {
            e.name = p.source_name.clone();
        }
        if p.last_updated >= e.retrieved_at {
            e.retrieved_at = p.last_updated;
            if p.system.is_some() {
                e.system = p.system.clone();
            }
        }
    };
    fn provs<T: Item>(sec: &Section<T>) -> impl Iterator<Item = &Provenance> {
        sec.entries
            .iter()
            .map(Item::provenance)
            .chain(sec.basis.iter().filter_map(|m| m.provenance.as_ref()))
    }
    provs(&s.allergies).for_each(&mut add);
    provs(&s.medications).for_each(&mut add);
    provs(&s.conditions).for_each(&mut add);
    provs(&s.resuscitation).for_each(&mut add);
    provs(&s.care_plans).for_each(&mut add);
    provs(&s.alerts).for_each(&mut add);
    map.into_values().collect()
}

/// Build a summary from one contribution (a fresh patient), version 1 at `now`.
pub fn from_contribution(c: &Contribution, now: UnixMillis) -> Summary {
    let mut s = Summary::new(c.nhs_number, Demographics::default());
    // `apply` cannot fail: the NHS numbers match by construction.
    let _ = apply(&mut s, c);
    s.version = 1;
    s.assembled_at = now;
    s
}
