//! Building the FHIR R4 JSON: one `Bundle` line per patient, written straight into a `String`
//! (no serialiser, so key order and formatting are fixed), with the deterministic UUIDs that
//! identify the bundle and its resources.

use std::fmt::Write as _;

use edge_proto::codes::{self, NoKnown};

use crate::date::{push_date, push_instant};
use crate::patient::{AllergyWhat, Gender, Item, ItemKind, PatientGen};
use crate::rng::{mix64, Rng};
use crate::tables::{
    MedRef, Org, BLOCKS, BRITISH_FEMALE_OLD, BRITISH_MALE_OLD, NICKNAMES, POOLS, STREETS, UCP,
    UNIT_LETTERS,
};
use crate::{Stats, RESOURCE_TYPES};

/// Append `s` as JSON string content (without quotes).
fn esc(out: &mut String, s: &str) {
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        return;
    }
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// `"key":"value"` with the value escaped; `key` must be a plain literal.
fn kv(out: &mut String, key: &str, value: &str) {
    out.push('"');
    out.push_str(key);
    out.push_str("\":\"");
    esc(out, value);
    out.push('"');
}

fn snomed_concept(out: &mut String, code: &str, display: &str) {
    out.push_str("{\"coding\":[{\"system\":\"http://snomed.info/sct\",");
    kv(out, "code", code);
    out.push(',');
    kv(out, "display", display);
    out.push_str("}]}");
}

fn coding_concept(out: &mut String, system: &str, code: &str, display: Option<&str>) {
    out.push_str("{\"coding\":[{");
    kv(out, "system", system);
    out.push(',');
    kv(out, "code", code);
    if let Some(d) = display {
        out.push(',');
        kv(out, "display", d);
    }
    out.push_str("}]}");
}

fn ods_ref(out: &mut String, org: &Org) {
    out.push_str("{\"identifier\":{\"system\":\"https://fhir.nhs.uk/Id/ods-organization-code\",");
    kv(out, "value", org.ods);
    out.push_str("},");
    kv(out, "display", org.name);
    out.push('}');
}

/// A UUID-shaped id (version 4 layout) derived from the seed, the patient and an ordinal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Uuid(u64, u64);

impl Uuid {
    pub(crate) fn derive(seed: u64, patient: u64, ordinal: u64) -> Uuid {
        let a = mix64(seed ^ mix64(patient ^ mix64(ordinal ^ 0x7575_6964)));
        let b = mix64(a ^ 0x5a5a_5a5a_5a5a_5a5a);
        Uuid(
            (a & !0xf000) | 0x4000,
            (b & 0x3fff_ffff_ffff_ffff) | 0x8000_0000_0000_0000,
        )
    }
    fn push(self, out: &mut String) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let bytes = [self.0.to_be_bytes(), self.1.to_be_bytes()];
        let mut i = 0;
        for half in bytes {
            for byte in half {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                out.push(char::from(HEX[(byte >> 4) as usize]));
                out.push(char::from(HEX[(byte & 0xf) as usize]));
                i += 1;
            }
        }
    }
}

impl PatientGen<'_> {
    /// Append the generated patient's `Bundle` (one line, with its newline) to `out`; returns
    /// the resources written (`bytes` is left for the caller).
    pub(crate) fn write(&self, out: &mut String) -> Stats {
        let mut stats = Stats {
            patients: 1,
            ..Stats::default()
        };
        let seed = self.g.cfg.seed;
        let bundle_id = Uuid::derive(seed, self.index, u64::MAX);
        let patient_id = Uuid::derive(seed, self.index, 0);
        out.push_str("{\"resourceType\":\"Bundle\",\"id\":\"");
        bundle_id.push(out);
        out.push_str("\",\"meta\":{\"lastUpdated\":\"");
        push_instant(out, self.g.as_of_secs);
        out.push_str("\"},\"identifier\":{\"system\":\"urn:ietf:rfc:3986\",\"value\":\"urn:uuid:");
        bundle_id.push(out);
        out.push_str("\"},\"type\":\"collection\",\"timestamp\":\"");
        push_instant(out, self.g.as_of_secs);
        out.push_str("\",\"entry\":[");
        self.write_patient(out, patient_id);
        stats.resources[0] += 1;
        // items in section order
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        order.sort_by_key(|&i| self.items[i].resource_slot());
        for &i in &order {
            out.push(',');
            self.write_item(out, &self.items[i], patient_id);
            stats.resources[self.items[i].resource_slot()] += 1;
        }
        for (o, org) in self.orgs.iter().enumerate() {
            let targets: Vec<&Item> = order
                .iter()
                .map(|&i| &self.items[i])
                .filter(|it| it.src == o)
                .collect();
            if targets.is_empty() {
                continue;
            }
            out.push(',');
            let id = Uuid::derive(seed, self.index, 1_000_000 + o as u64);
            let recorded = self.g.as_of_secs - 3600 * (1 + o as i64);
            write_provenance(out, id, org, &targets, recorded);
            stats.resources[7] += 1;
        }
        out.push_str("]}\n");
        stats
    }

    fn write_patient(&self, out: &mut String, id: Uuid) {
        // names and address have their own stream, so the same seed gives the same people
        // whatever --sources says
        let mut r = Rng::new(self.g.cfg.seed ^ 0x6e61_6d65_7321, self.index);
        let nhs = self.g.nhs_number(self.index);
        let practice = self.practice();
        let district = self.home_district();
        // names: a pool, sometimes mixed
        let pool = &POOLS[r.weighted(POOLS.iter().map(|p| p.weight))];
        let family_pool = if r.chance(0.1) {
            &POOLS[r.weighted(POOLS.iter().map(|p| p.weight))]
        } else {
            pool
        };
        let family = *r.pick(family_pool.family);
        let born_before_1970 = self.birth_day < 0;
        let given_pool: &[&str] = match (self.gender, born_before_1970 && pool.weight == 40) {
            (Gender::Female, true) => BRITISH_FEMALE_OLD,
            (Gender::Male, true) => BRITISH_MALE_OLD,
            (Gender::Female, false) => pool.female,
            (Gender::Male, false) => pool.male,
            _ => {
                if r.chance(0.5) {
                    pool.female
                } else {
                    pool.male
                }
            }
        };
        let given = *r.pick(given_pool);
        let middle = r
            .chance(0.3)
            .then(|| *r.pick(given_pool))
            .filter(|m| *m != given);
        let nickname = NICKNAMES
            .iter()
            .find(|(f, _)| *f == given)
            .map(|(_, n)| *n)
            .filter(|_| r.chance(0.35));
        let prefix = if self.age < 16 {
            None
        } else {
            match self.gender {
                Gender::Male => Some("Mr"),
                Gender::Female => Some(*r.pick(&["Mrs", "Ms", "Miss", "Ms"])),
                _ => r.chance(0.5).then_some("Mx"),
            }
        };
        let prefix = if r.chance(0.03) && self.age > 30 {
            Some("Dr")
        } else {
            prefix
        };
        let last_updated = self.patient_updated;
        out.push_str("{\"fullUrl\":\"urn:uuid:");
        id.push(out);
        out.push_str("\",\"resource\":{\"resourceType\":\"Patient\",\"id\":\"");
        id.push(out);
        out.push_str("\",");
        write_meta(out, last_updated, practice.org.system);
        out.push_str(
            ",\"identifier\":[{\"extension\":[{\"url\":\"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-NHSNumberVerificationStatus\",\"valueCodeableConcept\":{\"coding\":[{\"system\":\"https://fhir.hl7.org.uk/CodeSystem/UKCore-NHSNumberVerificationStatusEngland\",\"code\":\"01\",\"display\":\"Number present and verified\"}]}}],\"system\":\"https://fhir.nhs.uk/Id/nhs-number\",\"value\":\"",
        );
        let _ = write!(out, "{nhs:010}");
        out.push_str("\"}],\"name\":[{\"use\":\"official\",");
        kv(out, "family", family);
        out.push_str(",\"given\":[\"");
        esc(out, given);
        if let Some(m) = middle {
            out.push_str("\",\"");
            esc(out, m);
        }
        out.push_str("\"]");
        if let Some(p) = prefix {
            out.push_str(",\"prefix\":[\"");
            out.push_str(p);
            out.push_str("\"]");
        }
        out.push('}');
        if let Some(n) = nickname {
            out.push_str(",{\"use\":\"usual\",");
            kv(out, "family", family);
            out.push_str(",\"given\":[\"");
            esc(out, n);
            out.push_str("\"]}");
        }
        out.push_str("],");
        kv(out, "gender", self.gender.fhir());
        out.push_str(",\"birthDate\":\"");
        push_date(out, self.birth_day);
        out.push_str("\",\"address\":[{\"use\":\"home\",\"line\":[");
        if r.chance(0.3) {
            let _ = write!(out, "\"Flat {}, ", r.range(1, 60));
            esc(out, r.pick_str(BLOCKS));
            out.push_str("\",");
        }
        let _ = write!(out, "\"{} ", r.range(1, 240));
        esc(out, r.pick_str(STREETS));
        out.push_str("\"],\"city\":\"London\",\"postalCode\":\"");
        out.push_str(district);
        out.push(' ');
        out.push(char::from(b'0' + r.below(10) as u8));
        for _ in 0..2 {
            out.push(char::from(*r.pick(UNIT_LETTERS)));
        }
        out.push_str(
            "\",\"country\":\"GB\"}],\"generalPractitioner\":[{\"type\":\"Organization\",",
        );
        let gp_ref = &mut String::new();
        ods_ref(gp_ref, &practice.org);
        out.push_str(&gp_ref[1..]);
        out.push_str("]}}");
    }

    fn write_item(&self, out: &mut String, it: &Item, patient: Uuid) {
        let org = &self.orgs[it.src.min(self.orgs.len().saturating_sub(1))];
        out.push_str("{\"fullUrl\":\"urn:uuid:");
        it.uuid.push(out);
        out.push_str("\",\"resource\":{\"resourceType\":\"");
        out.push_str(RESOURCE_TYPES[it.resource_slot()]);
        out.push_str("\",\"id\":\"");
        it.uuid.push(out);
        out.push_str("\",");
        write_meta(out, it.last_updated, org.system);
        out.push(',');
        match &it.kind {
            ItemKind::Allergy {
                what,
                reaction,
                severe,
                criticality,
                verification,
                status,
                intolerance,
                onset_day,
            } => {
                allergy_status(out, status, verification);
                out.push_str(if *intolerance {
                    ",\"type\":\"intolerance\""
                } else {
                    ",\"type\":\"allergy\""
                });
                let category = match what {
                    AllergyWhat::Coded(a) => Some(a.category),
                    AllergyWhat::Narrative(_, c) => *c,
                };
                if let Some(c) = category {
                    out.push_str(",\"category\":[\"");
                    out.push_str(c.fhir_code());
                    out.push_str("\"]");
                }
                if let Some(c) = criticality {
                    out.push(',');
                    kv(out, "criticality", c);
                }
                out.push_str(",\"code\":");
                match what {
                    AllergyWhat::Coded(a) => snomed_concept(out, a.code, a.display),
                    AllergyWhat::Narrative(text, _) => {
                        out.push('{');
                        kv(out, "text", text);
                        out.push('}');
                    }
                }
                patient_ref(out, "patient", patient);
                out.push_str(",\"onsetDateTime\":\"");
                push_date(out, *onset_day);
                out.push_str("\",\"recordedDate\":\"");
                push_date(out, (*onset_day + 14).min(it.last_updated / 86_400));
                out.push('"');
                if let Some(r) = reaction {
                    out.push_str(",\"reaction\":[{\"manifestation\":[");
                    snomed_concept(out, r.code, r.display);
                    out.push_str("],\"severity\":\"");
                    out.push_str(if *severe || r.severe {
                        "severe"
                    } else if *intolerance {
                        "mild"
                    } else {
                        "moderate"
                    });
                    out.push_str("\"}]");
                }
            }
            ItemKind::NoKnown(n) => match n {
                NoKnown::Medications => {
                    out.push_str("\"status\":\"active\",\"medicationCodeableConcept\":");
                    snomed_concept(out, n.code(), n.display());
                    patient_ref(out, "subject", patient);
                    out.push_str(",\"dateAsserted\":\"");
                    push_instant(out, it.last_updated);
                    out.push('"');
                    write_information_source(out, org);
                }
                NoKnown::Problems => {
                    condition_status(out, "active", "confirmed");
                    out.push_str(",\"code\":");
                    snomed_concept(out, n.code(), n.display());
                    patient_ref(out, "subject", patient);
                    out.push_str(",\"recordedDate\":\"");
                    push_date(out, it.last_updated / 86_400);
                    out.push('"');
                }
                _ => {
                    allergy_status(out, "active", "confirmed");
                    out.push_str(",\"code\":");
                    snomed_concept(out, n.code(), n.display());
                    patient_ref(out, "patient", patient);
                    out.push_str(",\"recordedDate\":\"");
                    push_date(out, it.last_updated / 86_400);
                    out.push('"');
                }
            },
            ItemKind::Medication {
                med,
                status,
                start_day,
                end_day,
                last_issue_day,
            } => {
                if let Some(d) = last_issue_day {
                    out.push_str("\"extension\":[{\"url\":\"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-MedicationStatementLastIssueDate\",\"valueDateTime\":\"");
                    push_date(out, *d);
                    out.push_str("\"}],");
                }
                kv(out, "status", status);
                out.push_str(",\"medicationCodeableConcept\":");
                match med {
                    MedRef::Coded(m) => snomed_concept(out, m.code, m.display),
                    MedRef::Narrative(n) => {
                        out.push('{');
                        kv(out, "text", n.text);
                        out.push('}');
                    }
                }
                patient_ref(out, "subject", patient);
                out.push_str(",\"effectivePeriod\":{\"start\":\"");
                push_date(out, *start_day);
                out.push('"');
                if let Some(e) = end_day {
                    out.push_str(",\"end\":\"");
                    push_date(out, *e);
                    out.push('"');
                }
                out.push_str("},\"dateAsserted\":\"");
                push_instant(out, it.last_updated);
                out.push('"');
                write_information_source(out, org);
                if let MedRef::Coded(m) = med {
                    out.push_str(",\"dosage\":[{");
                    kv(out, "text", m.dosage);
                    out.push_str(",\"route\":");
                    snomed_concept(out, m.route.code, m.route.display);
                    out.push_str("}]");
                }
            }
            ItemKind::Condition {
                rule,
                status,
                verification,
                onset_day,
            } => {
                let cond = self.g.rules.conditions[*rule].cond;
                out.push_str("\"extension\":[{\"url\":\"https://fhir.hl7.org.uk/StructureDefinition/Extension-UKCore-ProblemSignificance\",\"valueCode\":\"");
                out.push_str(if cond.major { "major" } else { "minor" });
                out.push_str("\"}],");
                condition_status(out, status, verification);
                out.push_str(",\"code\":");
                snomed_concept(out, cond.code, cond.display);
                patient_ref(out, "subject", patient);
                out.push_str(",\"onsetDateTime\":\"");
                push_date(out, *onset_day);
                out.push_str("\",\"recordedDate\":\"");
                push_date(out, (*onset_day + 21).min(it.last_updated / 86_400));
                out.push('"');
            }
            ItemKind::Consent {
                decision,
                day,
                review_day,
                performer,
                status,
            } => {
                kv(out, "status", status);
                out.push_str(",\"scope\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/consentscope\",\"code\":\"adr\",\"display\":\"Advanced Care Directive\"}]},\"category\":[");
                if decision.attempt_cpr {
                    coding_concept(
                        out,
                        "http://terminology.hl7.org/CodeSystem/consentcategorycodes",
                        "acd",
                        Some("Advance Directive"),
                    );
                } else {
                    coding_concept(
                        out,
                        "http://terminology.hl7.org/CodeSystem/consentcategorycodes",
                        "dnr",
                        Some("Do Not Resuscitate"),
                    );
                }
                out.push(']');
                patient_ref(out, "patient", patient);
                out.push_str(",\"dateTime\":\"");
                push_instant(out, day * 86_400 + 11 * 3600);
                out.push_str("\",\"performer\":[{");
                kv(out, "display", performer);
                out.push_str("}],\"organization\":[");
                ods_ref(out, org);
                out.push_str("],\"policy\":[{\"uri\":\"https://www.resus.org.uk/respect\"}],\"provision\":{\"type\":\"");
                out.push_str(if decision.attempt_cpr {
                    "permit"
                } else {
                    "deny"
                });
                out.push_str("\",\"period\":{\"start\":\"");
                push_date(out, *day);
                out.push('"');
                if let Some(r) = review_day {
                    out.push_str(",\"end\":\"");
                    push_date(out, *r);
                    out.push('"');
                }
                out.push_str("},\"code\":[");
                snomed_concept(out, decision.code, decision.display);
                out.push_str("]}");
            }
            ItemKind::CarePlan {
                kind,
                day,
                description,
            } => {
                out.push_str("\"status\":\"current\",\"type\":");
                snomed_concept(out, kind.code, kind.display);
                out.push_str(",\"category\":[");
                snomed_concept(
                    out,
                    codes::CARE_PLAN_CATEGORY.code,
                    codes::CARE_PLAN_CATEGORY.display,
                );
                out.push(']');
                patient_ref(out, "subject", patient);
                out.push_str(",\"date\":\"");
                push_instant(out, day * 86_400 + 14 * 3600);
                out.push_str("\",\"custodian\":");
                ods_ref(out, org);
                out.push(',');
                kv(out, "description", description);
                out.push_str(",\"content\":[{\"attachment\":{\"contentType\":\"application/pdf\",\"url\":\"https://");
                out.push_str(if org.ods == UCP.ods { "ucp" } else { "records" });
                out.push_str(".example.invalid/");
                out.push_str(&org.ods.to_ascii_lowercase());
                out.push_str("/documents/");
                it.uuid.push(out);
                out.push_str("\",");
                kv(out, "title", kind.display);
                out.push_str(",\"creation\":\"");
                push_instant(out, day * 86_400 + 14 * 3600);
                out.push_str("\"}}]");
            }
            ItemKind::Flag {
                flag,
                start_day,
                end_day,
            } => {
                out.push_str("\"status\":\"active\",\"category\":[");
                let cat = flag.kind.flag_category();
                let display = match cat {
                    "contact" => "Subject Contact",
                    "safety" => "Safety",
                    "behavioral" => "Behavioral",
                    _ => "Clinical",
                };
                coding_concept(
                    out,
                    "http://terminology.hl7.org/CodeSystem/flag-category",
                    cat,
                    Some(display),
                );
                out.push_str("],\"code\":{");
                kv(out, "text", flag.text);
                out.push('}');
                patient_ref(out, "subject", patient);
                out.push_str(",\"period\":{\"start\":\"");
                push_date(out, *start_day);
                out.push('"');
                if let Some(e) = end_day {
                    out.push_str(",\"end\":\"");
                    push_date(out, *e);
                    out.push('"');
                }
                out.push_str("},\"author\":");
                ods_ref(out, org);
            }
        }
        out.push_str("}}");
    }
}

fn write_meta(out: &mut String, last_updated: i64, system: &str) {
    out.push_str("\"meta\":{\"versionId\":\"1\",\"lastUpdated\":\"");
    push_instant(out, last_updated);
    out.push_str("\",");
    kv(out, "source", system);
    out.push('}');
}

fn patient_ref(out: &mut String, key: &str, patient: Uuid) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":{\"reference\":\"urn:uuid:");
    patient.push(out);
    out.push_str("\"}");
}

fn write_information_source(out: &mut String, org: &Org) {
    out.push_str(",\"informationSource\":{\"type\":\"Organization\",");
    let mut r = String::new();
    ods_ref(&mut r, org);
    out.push_str(&r[1..]);
}

fn allergy_status(out: &mut String, clinical: &str, verification: &str) {
    out.push_str("\"clinicalStatus\":");
    coding_concept(
        out,
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
        clinical,
        None,
    );
    out.push_str(",\"verificationStatus\":");
    coding_concept(
        out,
        "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification",
        verification,
        None,
    );
}

fn condition_status(out: &mut String, clinical: &str, verification: &str) {
    out.push_str("\"clinicalStatus\":");
    coding_concept(
        out,
        "http://terminology.hl7.org/CodeSystem/condition-clinical",
        clinical,
        None,
    );
    out.push_str(",\"verificationStatus\":");
    coding_concept(
        out,
        "http://terminology.hl7.org/CodeSystem/condition-ver-status",
        verification,
        None,
    );
    out.push_str(",\"category\":[{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/condition-category\",\"code\":\"problem-list-item\",\"display\":\"Problem List Item\"}]}]");
}

fn write_provenance(out: &mut String, id: Uuid, org: &Org, targets: &[&Item], recorded: i64) {
    out.push_str("{\"fullUrl\":\"urn:uuid:");
    id.push(out);
    out.push_str("\",\"resource\":{\"resourceType\":\"Provenance\",\"id\":\"");
    id.push(out);
    out.push_str("\",\"target\":[");
    for (i, t) in targets.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"reference\":\"urn:uuid:");
        t.uuid.push(out);
        out.push_str("\"}");
    }
    out.push_str("],\"recorded\":\"");
    push_instant(out, recorded);
    out.push_str("\",\"agent\":[{\"type\":{\"coding\":[{\"system\":\"http://terminology.hl7.org/CodeSystem/provenance-participant-type\",\"code\":\"custodian\",\"display\":\"Custodian\"}]},\"who\":");
    ods_ref(out, org);
    out.push_str("}]}}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::run;
    use serde_json::Value;

    #[test]
    fn escaping_is_json() {
        let mut s = String::from("\"");
        esc(&mut s, "O'Brien \"Bob\" \\ \n\u{1}Zoë");
        s.push('"');
        let v: Value = serde_json::from_str(&s).expect("valid JSON string");
        assert_eq!(v, "O'Brien \"Bob\" \\ \n\u{1}Zoë");
    }

    #[test]
    fn names_include_accents_hyphens_and_nicknames() {
        let (out, _) = run(3000, 21, 2, 2);
        let text = String::from_utf8(out).expect("utf-8");
        for needle in ["\"use\":\"usual\"", "-", "'"] {
            assert!(text.contains(needle), "{needle}");
        }
        assert!(!text.is_ascii(), "no accented names");
        assert!(text.contains("\"Bob\"") || text.contains("\"Liz\"") || text.contains("\"Bill\""));
    }
}
