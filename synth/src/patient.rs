//! One patient: demographics, conditions, medicines, allergies, resuscitation decisions, care
//! plans and alerts, and which source organisation holds each item, all drawn from the
//! patient's own random stream.

use edge_proto::codes::{
    self, AlertFlag, AlertKind, Allergen, AllergenCategory, HighRiskClass, NoKnown, Reaction,
};

use crate::json::Uuid;
use crate::rng::Rng;
use crate::tables::{
    band, exclusive_group, resolve_med, MedRef, Org, Practice, Region, SexOnly, ACUTE,
    APIXABAN_2_5, APIXABAN_5, CLINICIAN_FAMILY, CLINICIAN_ROLE, DISTRICTS, MENTAL_HEALTH,
    NARRATIVE_ALLERGIES, PRACTICES, UCP,
};
use crate::Generator;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gender {
    Female,
    Male,
    Other,
    Unknown,
}

impl Gender {
    pub(crate) fn fhir(self) -> &'static str {
        match self {
            Gender::Female => "female",
            Gender::Male => "male",
            Gender::Other => "other",
            Gender::Unknown => "unknown",
        }
    }
}

#[derive(Debug)]
pub(crate) enum ItemKind {
    Allergy {
        what: AllergyWhat,
        reaction: Option<&'static Reaction>,
        severe: bool,
        criticality: Option<&'static str>,
        verification: &'static str,
        status: &'static str,
        intolerance: bool,
        onset_day: i64,
    },
    NoKnown(NoKnown),
    Medication {
        med: MedRef,
        status: &'static str,
        start_day: i64,
        end_day: Option<i64>,
        last_issue_day: Option<i64>,
    },
    Condition {
        rule: usize,
        status: &'static str,
        verification: &'static str,
        onset_day: i64,
    },
    Consent {
        decision: &'static codes::ResuscitationCode,
        day: i64,
        review_day: Option<i64>,
        performer: String,
        status: &'static str,
    },
    CarePlan {
        kind: &'static codes::Coded,
        day: i64,
        description: String,
    },
    Flag {
        flag: &'static AlertFlag,
        start_day: i64,
        end_day: Option<i64>,
    },
}

#[derive(Debug)]
pub(crate) enum AllergyWhat {
    Coded(&'static Allergen),
    Narrative(&'static str, Option<AllergenCategory>),
}

#[derive(Debug)]
pub(crate) struct Item {
    pub(crate) kind: ItemKind,
    /// Index into the patient's organisations.
    pub(crate) src: usize,
    pub(crate) last_updated: i64,
    pub(crate) uuid: Uuid,
}

impl Item {
    pub(crate) fn resource_slot(&self) -> usize {
        match self.kind {
            ItemKind::Allergy { .. } => 1,
            ItemKind::NoKnown(n) => match n {
                NoKnown::Medications => 2,
                NoKnown::Problems => 3,
                _ => 1,
            },
            ItemKind::Medication { .. } => 2,
            ItemKind::Condition { .. } => 3,
            ItemKind::Consent { .. } => 4,
            ItemKind::CarePlan { .. } => 5,
            ItemKind::Flag { .. } => 6,
        }
    }
    /// Only the care-plan custodian may hold care plans and resuscitation decisions.
    fn custodial(&self) -> bool {
        matches!(
            self.kind,
            ItemKind::Consent { .. } | ItemKind::CarePlan { .. }
        )
    }
}

pub(crate) struct PatientGen<'g> {
    pub(crate) g: &'g Generator,
    pub(crate) index: u64,
    rng: Rng,
    ordinal: u64,
    pub(crate) age: i64,
    pub(crate) birth_day: i64,
    pub(crate) gender: Gender,
    conditions: Vec<usize>,
    pub(crate) items: Vec<Item>,
    pub(crate) orgs: Vec<Org>,
    has_ucp: bool,
    pub(crate) patient_updated: i64,
}

impl<'g> PatientGen<'g> {
    pub(crate) fn new(g: &'g Generator, index: u64) -> PatientGen<'g> {
        PatientGen {
            g,
            index,
            rng: Rng::new(g.cfg.seed, index),
            ordinal: 0,
            age: 0,
            birth_day: 0,
            gender: Gender::Unknown,
            conditions: Vec::new(),
            items: Vec::new(),
            orgs: Vec::new(),
            has_ucp: false,
            patient_updated: 0,
        }
    }

    fn as_of(&self) -> i64 {
        self.g.cfg.as_of_day
    }

    fn next_uuid(&mut self) -> Uuid {
        self.ordinal += 1;
        Uuid::derive(self.g.cfg.seed, self.index, self.ordinal)
    }

    /// A time on `day` during working hours.
    fn time_on(&mut self, day: i64) -> i64 {
        day * 86_400 + self.rng.range(8 * 3600, 18 * 3600 + 59 * 60)
    }

    /// A last-updated time on or after `day` and not after the as-of day.
    fn updated_after(&mut self, day: i64) -> i64 {
        let as_of = self.as_of();
        let from = day.clamp(as_of - 3650, as_of);
        let d = if self.rng.chance(0.6) {
            self.rng.range(from.max(as_of - 730), as_of - 1)
        } else {
            self.rng.range(from, as_of - 1)
        };
        self.time_on(d.min(as_of - 1))
    }

    fn push(&mut self, kind: ItemKind, since_day: i64) {
        let last_updated = self.updated_after(since_day);
        let uuid = self.next_uuid();
        self.items.push(Item {
            kind,
            src: 0,
            last_updated,
            uuid,
        });
    }

    /// A day between `from` and the as-of day (exclusive), biased to recent years.
    fn day_since(&mut self, from: i64) -> i64 {
        let as_of = self.as_of();
        let from = from.min(as_of - 1);
        self.rng.range(from, as_of - 1)
    }

    pub(crate) fn generate(&mut self) {
        self.demographics_only();
        self.conditions();
        self.medications();
        self.allergies();
        self.advance_care();
        self.flags();
        self.sources();
    }

    fn demographics_only(&mut self) {
        const AGE_BANDS: [(i64, i64, u32); 8] = [
            (0, 4, 60),
            (5, 17, 140),
            (18, 29, 170),
            (30, 44, 240),
            (45, 64, 230),
            (65, 74, 80),
            (75, 84, 55),
            (85, 100, 25),
        ];
        let b = self.rng.weighted(AGE_BANDS.iter().map(|b| b.2));
        let (lo, hi, _) = AGE_BANDS[b];
        self.age = self.rng.range(lo, hi);
        let as_of = self.as_of();
        // born between age+1 years and age years before the as-of day
        self.birth_day = as_of - self.age * 36525 / 100 - self.rng.range(1, 364);
        self.patient_updated = self.updated_after(as_of - 1460);
        self.gender = match self.rng.below(1000) {
            0..=504 => Gender::Female,
            505..=996 => Gender::Male,
            997..=998 => Gender::Other,
            _ => Gender::Unknown,
        };
    }

    fn conditions(&mut self) {
        let rules = self.g.rules;
        let b = band(self.age);
        for (i, r) in rules.conditions.iter().enumerate() {
            let allowed = match r.sex {
                SexOnly::Any => true,
                SexOnly::Female => self.gender == Gender::Female,
                SexOnly::Male => self.gender == Gender::Male,
            };
            if allowed && self.rng.chance(r.prev[b]) {
                self.conditions.push(i);
            }
        }
        for &i in &self.conditions.clone() {
            let r = &rules.conditions[i];
            let min_age = if r.childhood {
                0
            } else {
                18.max(self.age - 30)
            };
            let earliest = self.birth_day + min_age * 365;
            let onset_day = self.day_since(earliest.max(self.birth_day + 30));
            let status = if r.resolvable && self.rng.chance(0.35) {
                if r.cond.code == "363346000" || r.cond.code == "254837009" {
                    "remission"
                } else {
                    "resolved"
                }
            } else {
                "active"
            };
            let verification = if self.rng.chance(0.03) {
                "provisional"
            } else {
                "confirmed"
            };
            self.push(
                ItemKind::Condition {
                    rule: i,
                    status,
                    verification,
                    onset_day,
                },
                onset_day,
            );
        }
        if self.conditions.is_empty() && self.rng.chance(0.3) {
            let day = self.day_since(self.birth_day.max(self.as_of() - 3650));
            self.push(ItemKind::NoKnown(NoKnown::Problems), day);
        }
    }

    fn has(&self, code: &str) -> bool {
        self.conditions
            .iter()
            .any(|&i| self.g.rules.conditions[i].cond.code == code)
    }

    fn meds(&self) -> impl Iterator<Item = MedRef> + '_ {
        self.items.iter().filter_map(|it| match it.kind {
            ItemKind::Medication { med, .. } => Some(med),
            _ => None,
        })
    }

    fn add_med(&mut self, med: MedRef, since_day: i64) {
        if self.meds().any(|m| m == med) {
            return;
        }
        // one anticoagulant, one statin, one proton-pump inhibitor
        if let Some(g) = exclusive_group(med) {
            if self.meds().any(|m| exclusive_group(m) == Some(g)) {
                return;
            }
        }
        let as_of = self.as_of();
        let adult = self.birth_day + 16 * 365;
        let start_day = self.day_since(
            since_day
                .max(self.birth_day + 30)
                .max(adult.min(as_of - 400)),
        );
        let acute = matches!(med, MedRef::Coded(m) if m.code == "323509004")
            || (matches!(med, MedRef::Coded(m) if m.code == "325427002") && self.rng.chance(0.7));
        let (status, end_day, last_issue_day) = if acute {
            let start = start_day.min(as_of - 10);
            ("completed", Some(start + 5), None)
        } else if self.rng.chance(0.07) {
            let end = self.rng.range(start_day, as_of - 1);
            ("stopped", Some(end), Some(self.rng.range(start_day, end)))
        } else if self.rng.chance(0.01) {
            (
                "on-hold",
                None,
                Some(self.rng.range(start_day.max(as_of - 120), as_of - 1)),
            )
        } else {
            (
                "active",
                None,
                Some(self.rng.range(start_day.max(as_of - 56), as_of - 1)),
            )
        };
        let since = end_day
            .unwrap_or(start_day)
            .max(last_issue_day.unwrap_or(start_day));
        self.push(
            ItemKind::Medication {
                med,
                status,
                start_day,
                end_day,
                last_issue_day,
            },
            since,
        );
    }

    fn pick_med(&mut self, options: &[(MedRef, u32)]) -> Option<MedRef> {
        if options.is_empty() {
            return None;
        }
        let i = self.rng.weighted(options.iter().map(|o| o.1));
        Some(options[i].0)
    }

    fn medications(&mut self) {
        let rules = self.g.rules;
        for (cond, p, options) in &rules.med_rules {
            if !self.conditions.contains(cond) || !self.rng.chance(*p) {
                continue;
            }
            let Some(mut med) = self.pick_med(options) else {
                continue;
            };
            // the reduced apixaban dose is for the very old
            if matches!(med, MedRef::Coded(m) if m.code == APIXABAN_2_5) && self.age < 80 {
                if let Some(full) = resolve_med(APIXABAN_5) {
                    med = full;
                }
            }
            let onset = self
                .items
                .iter()
                .find_map(|it| match it.kind {
                    ItemKind::Condition {
                        rule, onset_day, ..
                    } if rule == *cond => Some(onset_day),
                    _ => None,
                })
                .unwrap_or(self.birth_day);
            self.add_med(med, onset);
        }
        for (min_age, p, options) in &rules.age_rules {
            if self.age >= *min_age && self.rng.chance(*p) {
                if let Some(med) = self.pick_med(options) {
                    let since = self.birth_day + min_age * 365;
                    self.add_med(med, since);
                }
            }
        }
        // gastro-protection with antithrombotics or steroids in later life
        let protect = self.meds().any(|m| {
            matches!(
                m.high_risk(),
                Some(
                    HighRiskClass::Anticoagulant
                        | HighRiskClass::Antiplatelet
                        | HighRiskClass::Steroid
                )
            )
        });
        if protect && self.age >= 60 && self.rng.chance(0.4) {
            if let Some(ppi) = resolve_med("42354511000001109") {
                self.add_med(ppi, self.as_of() - 3650);
            }
        }
        let any = self.meds().next().is_some();
        if any && self.rng.chance(0.02) {
            let n = self.rng.pick(codes::NARRATIVE_MEDICINES);
            self.add_med(MedRef::Narrative(n), self.as_of() - 1825);
        }
        if !any && self.rng.chance(0.25) {
            let day = self.day_since(self.as_of() - 1095);
            self.push(ItemKind::NoKnown(NoKnown::Medications), day);
        }
    }

    fn allergies(&mut self) {
        let r = self.rng.below(1000);
        if r < 100 {
            return; // no allergy information at all
        }
        let since = (self.birth_day + 180).max(self.as_of() - 7300);
        if r < 280 {
            let day = self.day_since(since);
            self.push(ItemKind::NoKnown(NoKnown::Allergy), day);
            return;
        }
        if r < 300 {
            let day = self.day_since(since);
            self.push(ItemKind::NoKnown(NoKnown::DrugAllergy), day);
            return;
        }
        let n = match self.rng.below(100) {
            0..=64 => 1,
            65..=89 => 2,
            90..=96 => 3,
            _ => 4,
        };
        let child = self.age < 16;
        let allergens = self.g.rules.allergens;
        let mut chosen: Vec<&'static Allergen> = Vec::with_capacity(n);
        for _ in 0..n {
            let onset_day = self.day_since(since);
            if self.rng.chance(0.03) {
                let (text, cat, high) = *self.rng.pick(NARRATIVE_ALLERGIES);
                let kind = ItemKind::Allergy {
                    what: AllergyWhat::Narrative(text, cat),
                    reaction: None,
                    severe: high,
                    criticality: high.then_some("high"),
                    verification: "unconfirmed",
                    status: "active",
                    intolerance: false,
                    onset_day,
                };
                self.push(kind, onset_day);
                continue;
            }
            let weights = allergens.iter().map(|a| {
                let w = u32::from(a.weight);
                match (child, a.category) {
                    (true, AllergenCategory::Food) => w * 4,
                    (true, AllergenCategory::Medication) => w / 3 + 1,
                    _ => w,
                }
            });
            let a = &allergens[self.rng.weighted(weights)];
            if chosen.iter().any(|c| c.code == a.code) {
                continue;
            }
            chosen.push(a);
            self.coded_allergy(a, onset_day);
        }
    }

    fn coded_allergy(&mut self, a: &'static Allergen, onset_day: i64) {
        let reactions = self.g.rules.reactions;
        let find = |code: &str| reactions.iter().find(|r| r.code == code);
        let p_severe = match a.category {
            AllergenCategory::Medication => 0.08,
            AllergenCategory::Food => 0.25,
            AllergenCategory::Environment => 0.2,
        };
        let severe = a.anaphylactic && self.rng.chance(p_severe);
        let intolerance = !severe
            && (matches!(a.code, "387494007" | "373529000" | "387207008") || self.rng.chance(0.08));
        let reaction = if severe {
            if self.rng.chance(0.75) {
                find("39579001")
            } else {
                find("41291007")
            }
        } else if self.rng.chance(0.1) {
            None // reaction not recorded
        } else {
            let pool: &[&str] = match (a.category, intolerance) {
                (_, true) => &["422587007", "422400008", "62315008", "21522001"],
                (AllergenCategory::Medication, false) => &[
                    "247472004",
                    "271807003",
                    "418290006",
                    "126485001",
                    "267036007",
                ],
                (AllergenCategory::Food, false) => {
                    &["126485001", "422400008", "21522001", "418290006"]
                }
                (AllergenCategory::Environment, false) => {
                    &["70076002", "9826008", "56018004", "418290006", "126485001"]
                }
            };
            find(self.rng.pick_str(pool))
        };
        let criticality = if severe {
            Some("high")
        } else {
            match self.rng.below(10) {
                0..=6 => Some("low"),
                7 => Some("unable-to-assess"),
                _ => None,
            }
        };
        let verification = if self.rng.chance(0.2) {
            "unconfirmed"
        } else {
            "confirmed"
        };
        let status = if self.rng.chance(0.04) {
            "inactive"
        } else {
            "active"
        };
        let kind = ItemKind::Allergy {
            what: AllergyWhat::Coded(a),
            reaction,
            severe,
            criticality,
            verification,
            status,
            intolerance,
            onset_day,
        };
        self.push(kind, onset_day);
    }

    fn advance_care(&mut self) {
        let b = band(self.age);
        let mut p: f64 = [0.001, 0.004, 0.004, 0.03, 0.07, 0.15][b];
        let serious = ["52448006", "248279007", "363346000", "84114007"]
            .iter()
            .any(|c| self.has(c));
        if serious {
            p = (p * 1.8).min(0.5);
        }
        let as_of = self.as_of();
        let mut resus: Option<bool> = None;
        if self.rng.chance(p) {
            let i = match self.rng.below(100) {
                0..=69 => 0,
                70..=84 => 1,
                _ => 2,
            };
            let decision = &codes::RESUSCITATION_CODES[i.min(codes::RESUSCITATION_CODES.len() - 1)];
            let day = self.day_since(as_of - 1460);
            let review_day = if self.rng.chance(0.6) {
                Some(day + if self.rng.chance(0.5) { 182 } else { 365 })
            } else {
                None
            };
            let performer = format!(
                "Dr {} ({})",
                self.rng.pick(CLINICIAN_FAMILY),
                self.rng.pick(CLINICIAN_ROLE)
            );
            let status = if self.rng.chance(0.03) {
                "inactive"
            } else {
                "active"
            };
            resus = Some(decision.attempt_cpr);
            self.push(
                ItemKind::Consent {
                    decision,
                    day,
                    review_day,
                    performer,
                    status,
                },
                day,
            );
        }
        let types = codes::CARE_PLAN_TYPES;
        let by = |code: &str| types.iter().find(|t| t.code == code);
        let mut plans: Vec<&'static codes::Coded> = Vec::new();
        if resus.is_some() {
            if self.rng.chance(0.7) {
                plans.extend(by("1382601000000107"));
            }
            let eol = serious || self.age >= 85;
            if eol && self.rng.chance(0.3) {
                plans.extend(by("736373009"));
            }
            if self.rng.chance(0.1) {
                plans.extend(by("861421000000109"));
            }
        }
        if (self.has("58214004") || self.has("13746004")) && self.rng.chance(0.3) {
            plans.extend(by("736253002"));
        }
        if (self.has("84757009") || self.has("127040003") || self.has("46635009"))
            && self.rng.chance(0.12)
        {
            plans.extend(by("887701000000100"));
        }
        if self.age >= 65 && self.rng.chance(0.01) {
            plans.extend(by("736366004"));
        }
        if self.rng.chance(0.002) {
            plans.extend(by("735324008"));
        }
        if self.rng.chance(0.001) {
            plans.extend(by("325691000000100"));
        }
        for kind in plans {
            let day = self.day_since(as_of - 1095);
            let description = self.care_plan_text(kind.code, resus);
            self.push(
                ItemKind::CarePlan {
                    kind,
                    day,
                    description,
                },
                day,
            );
        }
    }

    fn care_plan_text(&mut self, code: &str, resus: Option<bool>) -> String {
        let cpr = match resus {
            Some(false) => "DNACPR in place. ",
            Some(true) => "For CPR. ",
            None => "",
        };
        match code {
            "736253002" => format!(
                "Crisis plan: {}. Known triggers: {}. Preferred place of assessment: {}.",
                self.rng.pick(&[
                    "contact home treatment team 24/7",
                    "call care coordinator first",
                    "crisis line then GP"
                ]),
                self.rng.pick(&[
                    "stopping medication",
                    "housing stress",
                    "anniversaries",
                    "substance use"
                ]),
                self.rng.pick(&[
                    "home",
                    "Section 136 suite only if police involved",
                    "crisis house"
                ]),
            ),
            "887701000000100" => format!(
                "Emergency plan: {}",
                self.rng.pick(&[
                    "seizure over 5 minutes - give buccal midazolam, call 999",
                    "sickle crisis - analgesia per individual pain plan, direct to haematology",
                    "hypoglycaemia - glucose gel then recheck, family trained in glucagon",
                ]),
            ),
            _ => {
                let place = self.rng.pick(&["home", "care home", "hospice", "hospital"]);
                let ceiling = self.rng.pick(&[
                    "full active treatment",
                    "ward-based care, not for ICU",
                    "symptom control and comfort only",
                    "treat reversible causes at home where possible",
                ]);
                format!("{cpr}Preferred place of care: {place}. Ceiling of treatment: {ceiling}.")
            }
        }
    }

    fn flags(&mut self) {
        let as_of = self.as_of();
        let mut chosen: Vec<&'static AlertFlag> = Vec::new();
        let by = |text: &str| codes::ALERT_FLAGS.iter().find(|f| f.text.starts_with(text));
        let deaf = self.has("15188001") && self.rng.chance(0.15);
        if deaf {
            chosen.extend(by("Deaf"));
        }
        if self.has("110359009") && self.rng.chance(0.5) {
            chosen.extend(by("Learning disability"));
        }
        if self.has("408856003") && self.rng.chance(0.3) {
            chosen.extend(by("Autism"));
        }
        if self.has("363732003") && self.rng.chance(0.8) {
            chosen.extend(by("Steroid dependent"));
        }
        if self.has("127040003") && self.rng.chance(0.5) {
            chosen.extend(by("Sickle cell"));
        }
        if self.rng.chance(0.015) {
            let interpreters: Vec<&'static AlertFlag> = codes::ALERT_FLAGS
                .iter()
                .filter(|f| f.text.starts_with("Requires interpreter"))
                .collect();
            if !interpreters.is_empty() {
                chosen.push(interpreters[self.rng.below(interpreters.len() as u64) as usize]);
            }
        }
        for (kind, p) in [
            (AlertKind::Safeguarding, 0.008),
            (AlertKind::RiskToCrew, 0.008),
            (AlertKind::Clinical, 0.003),
        ] {
            if self.rng.chance(p) {
                let pool: Vec<&'static AlertFlag> = codes::ALERT_FLAGS
                    .iter()
                    .filter(|f| f.kind == kind)
                    .filter(|f| self.age < 18 || !f.text.starts_with("Child"))
                    .filter(|f| !f.text.starts_with("Steroid") && !f.text.starts_with("Sickle"))
                    .collect();
                if !pool.is_empty() {
                    chosen.push(pool[self.rng.below(pool.len() as u64) as usize]);
                }
            }
        }
        chosen.dedup_by(|a, b| a.text == b.text);
        for flag in chosen {
            let start_day = self.day_since(as_of - 1825);
            let end_day = (flag.kind == AlertKind::Safeguarding && self.rng.chance(0.5))
                .then(|| as_of + self.rng.range(30, 365));
            self.push(
                ItemKind::Flag {
                    flag,
                    start_day,
                    end_day,
                },
                start_day,
            );
        }
    }

    /// Choose the patient's source organisations and spread the items over them.
    fn sources(&mut self) {
        let k = self.g.cfg.sources;
        let custodial = self.items.iter().any(Item::custodial);
        // organisation 0 is the GP practice, chosen with the address in write_patient; here
        // only the others are chosen
        let district = self.home_district();
        let region = DISTRICTS
            .iter()
            .find(|d| d.0 == district)
            .map_or(Region::Central, |d| d.1);
        let mut others: Vec<Org> = Vec::new();
        if k >= 2 && custodial {
            others.push(UCP);
            self.has_ucp = true;
        }
        let local: Vec<&Org> = ACUTE
            .iter()
            .filter(|(_, rs)| rs.contains(&region))
            .map(|(o, _)| o)
            .collect();
        if !local.is_empty() && others.len() + 1 < k {
            others.push(*local[self.rng.below(local.len() as u64) as usize]);
        }
        while others.len() + 1 < k {
            let mh = self.rng.chance(0.2);
            let org = if mh {
                *self.rng.pick(MENTAL_HEALTH)
            } else {
                self.rng.pick(ACUTE).0
            };
            if !others.iter().any(|o| o.ods == org.ods) {
                others.push(org);
            }
        }
        let gp = self.practice().org;
        self.orgs = std::iter::once(gp).chain(others).collect();
        let n_orgs = self.orgs.len();
        let ucp = self.has_ucp.then_some(1usize);
        let general: Vec<usize> = (0..n_orgs).filter(|&i| Some(i) != ucp).collect();
        for it in &mut self.items {
            it.src = if it.custodial() {
                ucp.unwrap_or(0)
            } else if general.len() <= 1 || self.rng.chance(0.55) {
                0
            } else {
                general[1 + self.rng.below(general.len() as u64 - 1) as usize]
            };
        }
        // every source holds at least one item when there are enough to go round
        for org in 0..n_orgs {
            if Some(org) == ucp || self.items.iter().any(|it| it.src == org) {
                continue;
            }
            let mut counts = vec![0usize; n_orgs];
            for it in &self.items {
                counts[it.src] += 1;
            }
            let donor = (0..n_orgs)
                .filter(|&o| Some(o) != ucp)
                .max_by_key(|&o| counts[o]);
            if let Some(donor) = donor.filter(|&d| counts[d] >= 2) {
                if let Some(it) = self
                    .items
                    .iter_mut()
                    .rev()
                    .find(|it| it.src == donor && !it.custodial())
                {
                    it.src = org;
                }
            }
        }
    }

    /// The practice and home district are a pure function of the patient (so the address and
    /// the source list agree); drawn from a separate stream so they never shift other choices.
    pub(crate) fn practice(&self) -> &'static Practice {
        let mut r = Rng::new(self.g.cfg.seed ^ 0x7072_6163, self.index);
        &PRACTICES[r.below(PRACTICES.len() as u64) as usize]
    }

    pub(crate) fn home_district(&self) -> &'static str {
        let mut r = Rng::new(self.g.cfg.seed ^ 0x6469_7374, self.index);
        let p = self.practice();
        if r.chance(0.9) {
            r.pick_str(p.districts)
        } else {
            r.pick(DISTRICTS).0
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::tests::{bundles, resources, run};
    use edge_proto::codes::{self, HighRiskClass};
    use serde_json::Value;
    use std::collections::HashSet;

    #[test]
    fn sources_are_distinct_and_spread() {
        let (out, _) = run(500, 3, 4, 1);
        let mut max_seen = 0;
        for b in bundles(&out) {
            let agents: Vec<String> = resources(&b)
                .filter(|r| r["resourceType"] == "Provenance")
                .map(|r| r["agent"][0]["who"]["identifier"]["value"].to_string())
                .collect();
            let distinct: HashSet<&String> = agents.iter().collect();
            assert_eq!(
                distinct.len(),
                agents.len(),
                "one Provenance per organisation"
            );
            assert!(agents.len() <= 4);
            max_seen = max_seen.max(agents.len());
            let items = resources(&b)
                .filter(|r| r["resourceType"] != "Patient" && r["resourceType"] != "Provenance")
                .count();
            if items >= 6 {
                assert!(
                    agents.len() >= 3,
                    "{items} items over only {} sources",
                    agents.len()
                );
            }
        }
        assert_eq!(max_seen, 4);
        let (one, _) = run(200, 3, 1, 1);
        for b in bundles(&one) {
            assert!(
                resources(&b)
                    .filter(|r| r["resourceType"] == "Provenance")
                    .count()
                    <= 1
            );
        }
    }

    #[test]
    fn sources_change_attribution_not_people_or_items() {
        let (a, _) = run(300, 5, 1, 1);
        let (b, _) = run(300, 5, 6, 1);
        for (x, y) in bundles(&a).iter().zip(bundles(&b).iter()) {
            let px = resources(x).next().cloned().unwrap_or_default();
            let py = resources(y).next().cloned().unwrap_or_default();
            assert_eq!(px, py, "the Patient must not depend on --sources");
            let items = |b: &Value| -> Vec<(String, String)> {
                resources(b)
                    .filter(|r| r["resourceType"] != "Provenance")
                    .map(|r| (r["resourceType"].to_string(), r["id"].to_string()))
                    .collect()
            };
            assert_eq!(items(x), items(y));
        }
    }

    #[test]
    fn older_patients_carry_more_medicines_and_conditions() {
        let (out, _) = run(4000, 5, 2, 2);
        let (mut young, mut old) = ((0usize, 0usize), (0usize, 0usize));
        let mut anticoag_old = 0;
        for b in bundles(&out) {
            let birth = resources(&b)
                .next()
                .and_then(|p| p["birthDate"].as_str())
                .unwrap_or("2000");
            let year: i64 = birth[..4].parse().unwrap_or(2000);
            let meds = resources(&b)
                .filter(|r| r["resourceType"] == "MedicationStatement")
                .count();
            let conds = resources(&b)
                .filter(|r| r["resourceType"] == "Condition")
                .count();
            if year >= 2008 {
                young.0 += meds + conds;
                young.1 += 1;
            } else if year <= 1950 {
                old.0 += meds + conds;
                old.1 += 1;
                let classes = resources(&b)
                    .filter(|r| r["resourceType"] == "MedicationStatement")
                    .filter_map(|r| {
                        let c = r["medicationCodeableConcept"]["coding"][0]["code"].as_str();
                        let t = r["medicationCodeableConcept"]["coding"][0]["display"]
                            .as_str()
                            .or(r["medicationCodeableConcept"]["text"].as_str())
                            .unwrap_or("");
                        codes::high_risk_class(c, t)
                    })
                    .collect::<Vec<_>>();
                if classes.contains(&HighRiskClass::Anticoagulant) {
                    anticoag_old += 1;
                }
            }
        }
        let per = |(n, p): (usize, usize)| n as f64 / p.max(1) as f64;
        assert!(
            per(old) > 4.0 * per(young),
            "old {:.2} vs young {:.2}",
            per(old),
            per(young)
        );
        assert!(
            anticoag_old as f64 > 0.08 * old.1 as f64,
            "{anticoag_old} of {} 75+ anticoagulated",
            old.1
        );
    }
}
