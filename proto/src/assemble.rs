//! Summary assembly: merging what many sources say about one patient into one summary.
//!
//! Rules (see `docs/fhir-mapping.md`): an item is identified by (source, source record id);
//! a newer version (by `meta.lastUpdated`) replaces the older one, an older or equal one is
//! ignored (so re-ingesting the same bundle changes nothing), `entered-in-error` removes it.
//! A `DELETE` withdraws an item and leaves a tombstone; a source's full snapshot withdraws its
//! items that the snapshot no longer holds and leaves a mark: neither comes back through a late
//! or out-of-order older message ([`Ledger`]). Section status is derived from entries and
//! markers, never from an empty list alone. The caller (the hub) bumps the version when
//! [`apply`] reports a change, so versions are monotonic and move only on change.

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

/// Is `new` a newer version than `old` of the same item? By `meta.lastUpdated` only: FHIR does
/// not promise that `meta.versionId` values are ordered, so equal times never replace.
fn newer(new: &Provenance, old: &Provenance) -> bool {
    new.last_updated > old.last_updated
}

fn section_code(k: SectionKind) -> u8 {
    match k {
        SectionKind::Allergies => 0,
        SectionKind::Medications => 1,
        SectionKind::Conditions => 2,
        SectionKind::Resuscitation => 3,
        SectionKind::CarePlans => 4,
        SectionKind::Alerts => 5,
    }
}

/// Does a `DELETE` id name this item (by record id or by `Type/id`)?
fn names(p: &Provenance, source: &crate::ids::SourceId, id: &str) -> bool {
    &p.source_ods == source && (p.record_id == id || p.resource_id.as_deref() == Some(id))
}

/// Was this version of an item withdrawn by its source (a tombstone or a later snapshot)?
/// `fresh`: (source, section) pairs a snapshot in the same contribution covers, whose items
/// are the source's word as of now.
fn withdrawn(
    ledger: &Ledger,
    k: SectionKind,
    p: &Provenance,
    fresh: &[(crate::ids::SourceId, SectionKind)],
) -> bool {
    let code = section_code(k);
    let tomb = ledger
        .tombstones
        .iter()
        .any(|t| t.section == code && names(p, &t.source, &t.id) && p.last_updated <= t.at);
    if tomb {
        return true;
    }
    if fresh.iter().any(|(s, sk)| s == &p.source_ods && *sk == k) {
        return false;
    }
    ledger
        .snapshots
        .iter()
        .any(|m| m.section == code && m.source == p.source_ods && p.last_updated <= m.as_of)
}

fn tombstone(
    ledger: &mut Ledger,
    section: SectionKind,
    source: &crate::ids::SourceId,
    id: &str,
    at: crate::time::UnixMillis,
) {
    let code = section_code(section);
    let tombs = &mut ledger.tombstones;
    match tombs
        .iter_mut()
        .find(|t| t.section == code && &t.source == source && t.id == id)
    {
        Some(t) => t.at = t.at.max(at),
        None => {
            tombs.push(Tombstone {
                source: source.clone(),
                section: code,
                id: id.to_owned(),
                at,
            });
            if tombs.len() > Ledger::MAX_TOMBSTONES {
                tombs.sort_by_key(|t| t.at);
                let excess = tombs.len() - Ledger::MAX_TOMBSTONES;
                tombs.drain(..excess);
            }
        }
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
    // "No information" ("unavailable", "not asked", IPS `no-…-info`) is not kept as a statement:
    // it takes back what the same source said before about the section being empty.
    if marker.status == SectionStatus::NoInformation {
        match &marker.provenance {
            Some(p) => section.basis.retain(|m| {
                m.provenance
                    .as_ref()
                    .is_none_or(|q| q.source_ods != p.source_ods || q.last_updated > p.last_updated)
            }),
            None => section.basis.retain(|m| m.provenance.is_some()),
        }
        return;
    }
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

fn delete<T: Item>(
    section: &mut Section<T>,
    source: &crate::ids::SourceId,
    id: &str,
    at: crate::time::UnixMillis,
) {
    // A withdrawn item is removed, or kept as history marked withdrawn where the section keeps
    // history (resuscitation decisions).
    section.entries.retain_mut(|e| {
        if names(e.provenance(), source, id) && e.provenance().last_updated <= at {
            e.withdraw()
        } else {
            true
        }
    });
    section.basis.retain(|m| {
        m.provenance
            .as_ref()
            .is_none_or(|p| !(names(p, source, id) && p.last_updated <= at))
    });
}

/// Withdraw a source's items (and statements) dated at or before `as_of` that `keep` lacks.
fn snapshot<T: Item>(
    section: &mut Section<T>,
    source: &crate::ids::SourceId,
    as_of: crate::time::UnixMillis,
    keep: &[String],
) {
    let gone = |p: &Provenance| {
        &p.source_ods == source && p.last_updated <= as_of && !keep.contains(&p.record_id)
    };
    section.entries.retain_mut(|e| {
        if gone(e.provenance()) {
            e.withdraw()
        } else {
            true
        }
    });
    section
        .basis
        .retain(|m| m.provenance.as_ref().is_none_or(|p| !gone(p)));
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
    let mut former = summary.patient.former_nhs_numbers.clone();
    // A restriction (PDS S-flag) is sticky: a later Patient from a system that does not carry
    // PDS's label (a GP or hospital feed) must not bring the address back.
    let restricted = summary.patient.restricted || c.patient.restricted;
    if c.patient.last_updated >= summary.patient.last_updated {
        summary.patient = c.patient.clone();
    }
    if restricted {
        summary.patient.restricted = true;
        summary.patient.postcode = None;
    }
    // Former numbers accumulate: a number that once named this patient always redirects here.
    former.extend(c.patient.former_nhs_numbers.iter().copied());
    former.retain(|n| *n != summary.nhs_number);
    former.sort();
    former.dedup();
    summary.patient.former_nhs_numbers = former;
    // Confidentiality is per item (the bundle's label is on each of its items); the summary's
    // is the most restrictive of its parts, never the last bundle's.
    // Snapshots first: they say what the source holds now; an older snapshot than one already
    // applied changes nothing.
    let mut fresh: Vec<(crate::ids::SourceId, SectionKind)> = Vec::new();
    for u in &c.updates {
        let Update::Snapshot {
            source,
            sections,
            as_of,
            keep,
        } = u
        else {
            continue;
        };
        for k in sections {
            let code = section_code(*k);
            let marks = &mut summary.ledger.snapshots;
            let existing = marks
                .iter()
                .position(|m| m.section == code && &m.source == source);
            match existing {
                Some(i) if marks[i].as_of > *as_of => continue,
                Some(i) => marks[i].as_of = *as_of,
                None => marks.push(SnapshotMark {
                    source: source.clone(),
                    section: code,
                    as_of: *as_of,
                }),
            }
            fresh.push((source.clone(), *k));
            each_section!(summary, *k, |s| snapshot(s, source, *as_of, keep));
        }
    }
    for u in &c.updates {
        match u {
            Update::Item(item) => {
                if withdrawn(&summary.ledger, item.section(), item.provenance(), &fresh) {
                    continue;
                }
                match item.clone() {
                    AnyItem::Allergy(x) => upsert(&mut summary.allergies, x),
                    AnyItem::Medication(x) => upsert(&mut summary.medications, x),
                    AnyItem::Condition(x) => upsert(&mut summary.conditions, x),
                    AnyItem::Resuscitation(x) => upsert(&mut summary.resuscitation, x),
                    AnyItem::CarePlan(x) => upsert(&mut summary.care_plans, x),
                    AnyItem::Alert(x) => upsert(&mut summary.alerts, x),
                }
            }
            Update::Marker(k, m) => {
                let gone = m
                    .provenance
                    .as_ref()
                    .is_some_and(|p| withdrawn(&summary.ledger, *k, p, &fresh));
                if !gone {
                    each_section!(summary, *k, |s| mark(s, m.clone()))
                }
            }
            Update::Remove {
                section,
                provenance,
            } => {
                each_section!(summary, *section, |s| remove(s, provenance));
                // entered-in-error: no version dated at or before it comes back.
                tombstone(
                    &mut summary.ledger,
                    *section,
                    &provenance.source_ods,
                    &provenance.record_id,
                    provenance.last_updated,
                );
            }
            Update::Delete {
                section,
                source,
                id,
                at,
            } => {
                each_section!(summary, *section, |s| delete(s, source, id, *at));
                tombstone(&mut summary.ledger, *section, source, id, *at);
            }
            Update::Snapshot { .. } => {}
        }
    }
    for k in SectionKind::ALL {
        each_section!(summary, k, |s| s.derive_status());
    }
    summary.sources = derive_sources(summary);
    summary.confidentiality = derive_confidentiality(summary);
    Ok(!before.same_content(summary))
}

/// Merge a retired record's summary into its replacement's: every item and statement of the
/// retired one (newer versions win as usual), its numbers as former numbers. Returns whether
/// the replacement changed.
pub fn merge_retired(into: &mut Summary, retired: &Summary) -> bool {
    let mut updates = Vec::new();
    fn push_all<T: Clone>(
        out: &mut Vec<Update>,
        sec: &Section<T>,
        k: SectionKind,
        wrap: fn(T) -> AnyItem,
    ) {
        out.extend(sec.entries.iter().cloned().map(|x| Update::Item(wrap(x))));
        out.extend(sec.basis.iter().cloned().map(|m| Update::Marker(k, m)));
    }
    push_all(
        &mut updates,
        &retired.allergies,
        SectionKind::Allergies,
        AnyItem::Allergy,
    );
    push_all(
        &mut updates,
        &retired.medications,
        SectionKind::Medications,
        AnyItem::Medication,
    );
    push_all(
        &mut updates,
        &retired.conditions,
        SectionKind::Conditions,
        AnyItem::Condition,
    );
    push_all(
        &mut updates,
        &retired.resuscitation,
        SectionKind::Resuscitation,
        AnyItem::Resuscitation,
    );
    push_all(
        &mut updates,
        &retired.care_plans,
        SectionKind::CarePlans,
        AnyItem::CarePlan,
    );
    push_all(
        &mut updates,
        &retired.alerts,
        SectionKind::Alerts,
        AnyItem::Alert,
    );
    let mut patient = into.patient.clone();
    patient.former_nhs_numbers.push(retired.nhs_number);
    patient
        .former_nhs_numbers
        .extend(retired.patient.former_nhs_numbers.iter().copied());
    if patient.other_names.len() < 10 && !retired.patient.family.is_empty() {
        patient.other_names.push(PersonName {
            family: Some(retired.patient.family.clone()),
            given: retired.patient.given.clone(),
            text: None,
            name_use: Some("old".into()),
        });
    }
    let c = Contribution {
        nhs_number: into.nhs_number,
        patient,
        updates,
        confidentiality: (retired.confidentiality == Confidentiality::Restricted)
            .then_some(Confidentiality::Restricted),
        document_version: None,
        skipped: 0,
    };
    apply(into, &c).unwrap_or(false)
}

/// The most restrictive confidentiality of a summary's items.
pub fn derive_confidentiality(s: &Summary) -> Confidentiality {
    fn any<T: Item>(sec: &Section<T>) -> bool {
        sec.entries.iter().any(|e| e.provenance().restricted)
    }
    if any(&s.allergies)
        || any(&s.medications)
        || any(&s.conditions)
        || any(&s.resuscitation)
        || any(&s.care_plans)
        || any(&s.alerts)
    {
        Confidentiality::Restricted
    } else {
        Confidentiality::Normal
    }
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
    let mut s = Summary::new(
        c.nhs_number,
        Demographics {
            last_updated: UnixMillis(i64::MIN),
            ..Demographics::default()
        },
    );
    // `apply` cannot fail: the NHS numbers match by construction.
    let _ = apply(&mut s, c);
    if s.patient.last_updated == UnixMillis(i64::MIN) {
        s.patient.last_updated = UnixMillis(0);
    }
    s.version = 1;
    s.assembled_at = now;
    s
}
