//! The clinical view: what a crew or a triage nurse is shown of a summary, decided here and
//! not by the page.
//!
//! The summary keeps every item its sources sent, with their statuses; the view decides, at
//! the moment of the answer (`today` is the unit's clock, so an alert can expire while the unit
//! is offline), what is current and what is history:
//!
//! * **Resuscitation**: a decision (`not_for_cpr`, `for_cpr`, `respect_plan`), a conflict when
//!   current decisions from different sources disagree (never resolved silently), "no decision
//!   recorded" (never read as for CPR), or withheld (restricted: break-glass to see). Within one
//!   source the newest decision is current and older ones are superseded; rescinded, withdrawn
//!   and replaced ones are history. The headline is words from the model.
//! * **Allergies**: refuted and resolved/inactive ones are past, never current.
//! * **Medicines**: one line per medicine per source (statement, plan and orders folded, never
//!   different strengths or doses); current lines apart from recently stopped ones; high-risk
//!   marks only on current lines.
//! * **Alerts**: inactive or past their period's end → past.
//! * **Care plans**: superseded or replaced documents behind their replacement.
//! * **Restricted items** (per item) are withheld unless the clinician broke the glass; a
//!   section whose every item is withheld says `withheld`.

use serde::Serialize;

use crate::model::*;
use crate::time::UnixMillis;

/// Medicines stopped longer ago than this are not listed as "recently stopped" (counted).
pub const RECENTLY_STOPPED_DAYS: i64 = 365;

/// A section of the view: current entries, history, what was withheld, and the statements
/// behind an empty section.
#[derive(Debug, Clone, Serialize)]
pub struct SectionView<T: Serialize> {
    pub status: SectionStatus,
    pub entries: Vec<T>,
    pub past: Vec<T>,
    /// Restricted items not shown (break-glass to see).
    pub withheld: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub basis: Vec<Marker>,
}

/// One medicine as a crew reads it: the records of one source about the same medicine and
/// dose, folded.
#[derive(Debug, Clone, Serialize)]
pub struct MedicineLine {
    pub concept: Concept,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub form: Option<Concept>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dosage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub route: Option<Concept>,
    /// `active` for a current line; the stopping status (stopped, completed…) otherwise.
    pub status: String,
    pub current: bool,
    /// The lead record is a MedicationRequest (a plan or order), not a statement.
    pub from_request: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub started: Option<FhirDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_issued: Option<FhirDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<FhirDate>,
    /// Only on current lines.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub high_risk: Option<crate::codes::HighRiskClass>,
    /// The records folded into this line.
    pub records: Vec<MedicineRecord>,
    /// The lead record's provenance.
    pub provenance: Provenance,
}

/// A record behind a medicine line.
#[derive(Debug, Clone, Serialize)]
pub struct MedicineRecord {
    pub kind: MedicationRecordKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    pub source_ods: crate::ids::SourceId,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_name: Option<String>,
    pub record_id: String,
    pub last_updated: UnixMillis,
}

#[derive(Debug, Clone, Serialize)]
pub struct MedicationsView {
    pub status: SectionStatus,
    pub entries: Vec<MedicineLine>,
    /// Recently stopped (within [`RECENTLY_STOPPED_DAYS`]), newest first.
    pub stopped: Vec<MedicineLine>,
    /// Stopped longer ago (not listed).
    pub stopped_earlier: usize,
    pub withheld: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub basis: Vec<Marker>,
}

#[derive(Debug, Clone, Serialize)]
pub struct CarePlansView {
    pub status: SectionStatus,
    pub entries: Vec<CarePlan>,
    /// Superseded or replaced by another document.
    pub superseded: Vec<CarePlan>,
    pub withheld: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub basis: Vec<Marker>,
}

/// The resuscitation state shown first and large.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ResusState {
    NotForCpr,
    ForCpr,
    RespectPlan,
    /// Current decisions disagree: each is shown with its source and date.
    Conflict,
    /// A decision is recorded but what it says about CPR could not be read.
    Unclear,
    /// Nothing recorded: not "for CPR".
    NoDecision,
    /// Decisions exist but are restricted: break-glass to see.
    Withheld,
}

#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub state: ResusState,
    /// The words to show, e.g. "NOT FOR CPR — DNACPR, 1 March 2025, King's College Hospital".
    pub headline: String,
    /// A ReSPECT plan's own CPR recommendation, when the form states one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub respect_cpr: Option<Cpr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ResuscitationView {
    pub status: SectionStatus,
    pub decision: Decision,
    /// The current decisions (one per source), newest first.
    pub entries: Vec<Resuscitation>,
    /// Superseded, rescinded and withdrawn decisions, newest first.
    pub history: Vec<Resuscitation>,
    pub withheld: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub basis: Vec<Marker>,
}

/// The whole clinical view of a summary.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub resuscitation: ResuscitationView,
    pub allergies: SectionView<Allergy>,
    pub medications: MedicationsView,
    pub conditions: SectionView<Condition>,
    pub care_plans: CarePlansView,
    pub alerts: SectionView<Alert>,
    /// Restricted items withheld in all (0 after break-glass).
    pub withheld: usize,
}

/// Split a section's entries into (shown, withheld count), marking nothing.
fn visible<T: Item + Clone>(s: &Section<T>, break_glass: bool) -> (Vec<T>, usize) {
    let mut shown = Vec::new();
    let mut withheld = 0;
    for e in &s.entries {
        if e.provenance().restricted && !break_glass {
            withheld += 1;
        } else {
            shown.push(e.clone());
        }
    }
    (shown, withheld)
}

fn status_of<T>(s: &Section<T>, shown: usize, withheld: usize) -> SectionStatus {
    if shown > 0 {
        SectionStatus::Entries
    } else if withheld > 0 {
        SectionStatus::Withheld
    } else if s.status == SectionStatus::Entries {
        // Every entry is one the view never lists (entered in error); say nothing stronger
        // than "no information".
        SectionStatus::NoInformation
    } else {
        s.status
    }
}

/// The calendar date of an instant (`YYYY-MM-DD`).
fn day_of(t: UnixMillis) -> String {
    let s = t.to_rfc3339();
    s.get(..10).unwrap_or(&s).to_owned()
}

/// `2025-03-01` → "1 March 2025"; `2025-03` → "March 2025"; `2025` → "2025".
pub fn long_date(d: &FhirDate) -> String {
    long_date_str(d.as_str())
}

fn long_date_str(s: &str) -> String {
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let year = s.get(..4).unwrap_or(s);
    let month = s
        .get(5..7)
        .and_then(|m| m.parse::<usize>().ok())
        .and_then(|m| MONTHS.get(m.wrapping_sub(1)));
    let day = s.get(8..10).and_then(|d| d.parse::<u32>().ok());
    match (month, day) {
        (Some(m), Some(d)) => format!("{d} {m} {year}"),
        (Some(m), None) => format!("{m} {year}"),
        _ => year.to_owned(),
    }
}

fn source_words(p: &Provenance) -> String {
    p.source_name
        .clone()
        .unwrap_or_else(|| p.source_ods.as_str().to_owned())
}

/// The date a decision was made, else when it was last updated.
fn decision_day(r: &Resuscitation) -> String {
    match &r.decided {
        Some(d) => long_date(d),
        None => long_date_str(&day_of(r.provenance.last_updated)),
    }
}

fn decision_key(r: &Resuscitation) -> (String, UnixMillis) {
    (
        r.decided
            .as_ref()
            .map(|d| d.as_str().to_owned())
            .unwrap_or_default(),
        r.provenance.last_updated,
    )
}

/// What a decision means for CPR, a ReSPECT plan taking its form's recommendation.
fn effective(r: &Resuscitation) -> Cpr {
    match r.cpr {
        Cpr::RespectPlan => r.form_cpr.unwrap_or(Cpr::RespectPlan),
        c => c,
    }
}

fn record_words(r: &Resuscitation) -> &'static str {
    match (r.record, r.cpr) {
        (DecisionRecord::RespectForm, _) => "ReSPECT form",
        (_, Cpr::NotForCpr) => "DNACPR",
        (DecisionRecord::CarePlan, _) => "care plan",
        (DecisionRecord::DnacprForm, _) => "DNACPR form",
        (_, Cpr::ForCpr) => "CPR decision",
        _ => "recorded decision",
    }
}

fn line_of(r: &Resuscitation) -> String {
    format!(
        "{}, {}, {}",
        record_words(r),
        decision_day(r),
        source_words(&r.provenance)
    )
}

/// Ids by which other documents may name an item (record id, `Type/id`).
fn ids_of(p: &Provenance) -> impl Iterator<Item = &str> {
    std::iter::once(p.record_id.as_str()).chain(p.resource_id.as_deref())
}

fn resuscitation(s: &Summary, break_glass: bool) -> ResuscitationView {
    let (shown, withheld) = visible(&s.resuscitation, break_glass);
    let replaced: Vec<String> = shown
        .iter()
        .filter(|r| r.state == DecisionState::Current)
        .flat_map(|r| r.replaces.iter().cloned())
        .collect();
    let mut current: Vec<Resuscitation> = Vec::new();
    let mut history: Vec<Resuscitation> = Vec::new();
    for r in shown {
        let replaced_by_other = ids_of(&r.provenance).any(|id| replaced.iter().any(|x| x == id));
        if r.state != DecisionState::Current || replaced_by_other {
            let mut r = r;
            if r.state == DecisionState::Current {
                r.state = DecisionState::Superseded;
            }
            history.push(r);
        } else {
            current.push(r);
        }
    }
    // Within one source, the newest decision stands; older ones are superseded by it.
    current.sort_by_key(|r| std::cmp::Reverse(decision_key(r)));
    let mut kept: Vec<Resuscitation> = Vec::new();
    for r in current {
        if kept
            .iter()
            .any(|k| k.provenance.source_ods == r.provenance.source_ods)
        {
            let mut r = r;
            r.state = DecisionState::Superseded;
            history.push(r);
        } else {
            kept.push(r);
        }
    }
    history.sort_by_key(|r| std::cmp::Reverse(decision_key(r)));
    let mut distinct: Vec<Cpr> = kept.iter().map(effective).collect();
    distinct.sort_by_key(|c| *c as u8);
    distinct.dedup();
    let decision = if kept.is_empty() {
        if withheld > 0 {
            Decision {
                state: ResusState::Withheld,
                headline:
                    "Resuscitation decision withheld (restricted record): break-glass to see it"
                        .into(),
                respect_cpr: None,
            }
        } else {
            Decision {
                state: ResusState::NoDecision,
                headline: "No resuscitation decision recorded".into(),
                respect_cpr: None,
            }
        }
    } else if distinct.len() > 1 {
        let lines: Vec<String> = kept
            .iter()
            .map(|r| {
                let what = match effective(r) {
                    Cpr::NotForCpr => "not for CPR",
                    Cpr::ForCpr => "for CPR",
                    Cpr::RespectPlan => "ReSPECT plan",
                    Cpr::Unknown => "unclear",
                };
                format!("{what} ({})", line_of(r))
            })
            .collect();
        Decision {
            state: ResusState::Conflict,
            headline: format!("CONFLICTING RESUSCITATION DECISIONS — {}", lines.join("; ")),
            respect_cpr: None,
        }
    } else {
        let lead = &kept[0];
        let (state, words) = match distinct[0] {
            Cpr::NotForCpr => (ResusState::NotForCpr, "NOT FOR CPR"),
            Cpr::ForCpr => (ResusState::ForCpr, "FOR CPR"),
            Cpr::RespectPlan => (ResusState::RespectPlan, "ReSPECT PLAN — read the form"),
            Cpr::Unknown => (
                ResusState::Unclear,
                "RESUSCITATION DECISION RECORDED — read it, its meaning could not be read",
            ),
        };
        let respect_cpr = kept
            .iter()
            .find(|r| r.cpr == Cpr::RespectPlan)
            .and_then(|r| r.form_cpr);
        let state = if kept.iter().all(|r| r.cpr == Cpr::RespectPlan) && respect_cpr.is_some() {
            ResusState::RespectPlan
        } else {
            state
        };
        let words = match (state, respect_cpr) {
            (ResusState::RespectPlan, Some(Cpr::NotForCpr)) => "ReSPECT PLAN — CPR NOT RECOMMENDED",
            (ResusState::RespectPlan, Some(Cpr::ForCpr)) => "ReSPECT PLAN — CPR RECOMMENDED",
            _ => words,
        };
        let mut headline = format!("{words} — {}", line_of(lead));
        if kept.len() > 1 {
            headline.push_str(&format!(" (and {} more agreeing)", kept.len() - 1));
        }
        Decision {
            state,
            headline,
            respect_cpr,
        }
    };
    let status = status_of(&s.resuscitation, kept.len() + history.len(), withheld);
    ResuscitationView {
        status,
        decision,
        entries: kept,
        history,
        withheld,
        basis: s.resuscitation.basis.clone(),
    }
}

fn allergies(s: &Summary, break_glass: bool) -> SectionView<Allergy> {
    let (shown, withheld) = visible(&s.allergies, break_glass);
    let (mut entries, mut past) = (Vec::new(), Vec::new());
    for a in shown {
        let refuted = matches!(
            a.verification_status.as_deref(),
            Some("refuted" | "entered-in-error")
        );
        let gone = matches!(a.clinical_status.as_deref(), Some("inactive" | "resolved"));
        if a.verification_status.as_deref() == Some("entered-in-error") {
            continue;
        }
        if refuted || gone {
            past.push(a);
        } else {
            entries.push(a);
        }
    }
    SectionView {
        status: status_of(&s.allergies, entries.len() + past.len(), withheld),
        entries,
        past,
        withheld,
        basis: s.allergies.basis.clone(),
    }
}

fn conditions(s: &Summary, break_glass: bool) -> SectionView<Condition> {
    let (shown, withheld) = visible(&s.conditions, break_glass);
    let (mut entries, mut past) = (Vec::new(), Vec::new());
    for c in shown {
        match c.verification_status.as_deref() {
            Some("entered-in-error") => {}
            Some("refuted") => past.push(c),
            _ => entries.push(c),
        }
    }
    SectionView {
        status: status_of(&s.conditions, entries.len() + past.len(), withheld),
        entries,
        past,
        withheld,
        basis: s.conditions.basis.clone(),
    }
}

fn alerts(s: &Summary, now: UnixMillis, break_glass: bool) -> SectionView<Alert> {
    let (shown, withheld) = visible(&s.alerts, break_glass);
    let (mut entries, mut past) = (Vec::new(), Vec::new());
    for a in shown {
        let inactive = matches!(a.status.as_deref(), Some("inactive" | "entered-in-error"));
        let expired = a.end.as_ref().is_some_and(|e| e.is_before(now));
        if inactive || expired {
            past.push(a);
        } else {
            entries.push(a);
        }
    }
    SectionView {
        status: status_of(&s.alerts, entries.len() + past.len(), withheld),
        entries,
        past,
        withheld,
        basis: s.alerts.basis.clone(),
    }
}

fn care_plans(s: &Summary, break_glass: bool) -> CarePlansView {
    let (shown, withheld) = visible(&s.care_plans, break_glass);
    let replaced: Vec<String> = shown
        .iter()
        .filter(|c| c.status.as_deref() != Some("superseded"))
        .flat_map(|c| c.replaces.iter().cloned())
        .collect();
    let (mut entries, mut superseded) = (Vec::new(), Vec::new());
    for c in shown {
        let gone = matches!(
            c.status.as_deref(),
            Some("superseded" | "revoked" | "completed" | "entered-in-error")
        ) || ids_of(&c.provenance).any(|id| replaced.iter().any(|r| r == id));
        if gone {
            superseded.push(c);
        } else {
            entries.push(c);
        }
    }
    CarePlansView {
        status: status_of(&s.care_plans, entries.len() + superseded.len(), withheld),
        entries,
        superseded,
        withheld,
        basis: s.care_plans.basis.clone(),
    }
}

/// The key two records must share to be one medicine line: the coding (a dm+d code carries
/// its strength), else the words as recorded.
fn medicine_key(m: &Medication) -> String {
    match &m.concept.coding {
        Some(c) => format!("{}|{}", c.system, c.code),
        None => m.concept.label().trim().to_lowercase(),
    }
}

fn norm(s: &Option<String>) -> Option<String> {
    s.as_ref().map(|d| {
        d.split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase()
    })
}

fn medications(s: &Summary, now: UnixMillis, break_glass: bool) -> MedicationsView {
    let (mut shown, withheld) = visible(&s.medications, break_glass);
    // Statements first (they say what is taken), then plans, then orders; newest first.
    shown.sort_by(|a, b| {
        (a.kind as u8, std::cmp::Reverse(a.provenance.last_updated))
            .cmp(&(b.kind as u8, std::cmp::Reverse(b.provenance.last_updated)))
    });
    let mut groups: Vec<Vec<Medication>> = Vec::new();
    for m in shown {
        let key = medicine_key(&m);
        let dose = norm(&m.dosage);
        let g = groups.iter_mut().find(|g| {
            let lead = &g[0];
            lead.provenance.source_ods == m.provenance.source_ods
                && medicine_key(lead) == key
                && g.iter().all(|x| {
                    let d = norm(&x.dosage);
                    d.is_none() || dose.is_none() || d == dose
                })
        });
        match g {
            Some(g) => g.push(m),
            None => groups.push(vec![m]),
        }
    }
    let cutoff = day_of(now.plus_ms(-RECENTLY_STOPPED_DAYS * 86_400_000));
    let mut entries = Vec::new();
    let mut stopped = Vec::new();
    let mut stopped_earlier = 0;
    for g in groups {
        let deciding: Vec<&Medication> = {
            let non_orders: Vec<&Medication> = g
                .iter()
                .filter(|m| m.kind != MedicationRecordKind::Order)
                .collect();
            if non_orders.is_empty() {
                g.iter().collect()
            } else {
                non_orders
            }
        };
        let current = deciding.iter().any(|m| m.is_current());
        let lead = if current {
            deciding.iter().find(|m| m.is_current()).copied()
        } else {
            deciding.first().copied()
        }
        .unwrap_or(&g[0]);
        let status = if current {
            "active".to_owned()
        } else {
            lead.status.clone().unwrap_or_else(|| "stopped".into())
        };
        let started = g.iter().filter_map(|m| m.started.clone()).min();
        let last_issued = g.iter().filter_map(|m| m.last_issued.clone()).max();
        let ended = if current {
            None
        } else {
            g.iter().filter_map(|m| m.ended.clone()).max().or_else(|| {
                g.iter()
                    .filter(|m| m.kind == MedicationRecordKind::Order)
                    .filter_map(|m| m.started.clone())
                    .max()
            })
        };
        let line = MedicineLine {
            concept: lead.concept.clone(),
            form: g.iter().find_map(|m| m.form.clone()),
            dosage: g.iter().find_map(|m| m.dosage.clone()),
            route: g.iter().find_map(|m| m.route.clone()),
            status,
            current,
            from_request: lead.from_request,
            started,
            last_issued,
            ended: ended.clone(),
            high_risk: if current { lead.high_risk } else { None },
            records: g
                .iter()
                .map(|m| MedicineRecord {
                    kind: m.kind,
                    status: m.status.clone(),
                    source_ods: m.provenance.source_ods.clone(),
                    source_name: m.provenance.source_name.clone(),
                    record_id: m.provenance.record_id.clone(),
                    last_updated: m.provenance.last_updated,
                })
                .collect(),
            provenance: lead.provenance.clone(),
        };
        if current {
            entries.push(line);
        } else {
            let when = ended
                .as_ref()
                .map(|d| d.as_str().to_owned())
                .unwrap_or_else(|| day_of(lead.provenance.last_updated));
            if when.as_str() >= cutoff.as_str() {
                stopped.push(line);
            } else {
                stopped_earlier += 1;
            }
        }
    }
    stopped.sort_by(|a, b| {
        let k = |l: &MedicineLine| l.ended.as_ref().map(|d| d.as_str().to_owned());
        k(b).cmp(&k(a))
    });
    MedicationsView {
        status: status_of(
            &s.medications,
            entries.len() + stopped.len() + stopped_earlier,
            withheld,
        ),
        entries,
        stopped,
        stopped_earlier,
        withheld,
        basis: s.medications.basis.clone(),
    }
}

/// The clinical view of a summary at `now` (the unit's clock); `break_glass` shows restricted
/// items (the access is audited as such by the caller).
pub fn clinical_view(s: &Summary, now: UnixMillis, break_glass: bool) -> View {
    let resuscitation = resuscitation(s, break_glass);
    let allergies = allergies(s, break_glass);
    let medications = medications(s, now, break_glass);
    let conditions = conditions(s, break_glass);
    let care_plans = care_plans(s, break_glass);
    let alerts = alerts(s, now, break_glass);
    let withheld = resuscitation.withheld
        + allergies.withheld
        + medications.withheld
        + conditions.withheld
        + care_plans.withheld
        + alerts.withheld;
    View {
        resuscitation,
        allergies,
        medications,
        conditions,
        care_plans,
        alerts,
        withheld,
    }
}

/// Whether [`redact`] would remove anything: some item is restricted and the glass is not
/// broken.
pub fn withholds(s: &Summary, break_glass: bool) -> bool {
    fn any<T: Item>(sec: &Section<T>) -> bool {
        sec.entries.iter().any(|e| e.provenance().restricted)
    }
    !break_glass
        && (any(&s.allergies)
            || any(&s.medications)
            || any(&s.conditions)
            || any(&s.resuscitation)
            || any(&s.care_plans)
            || any(&s.alerts))
}

/// What this caller may see of the summary's items: the summary itself when nothing is
/// withheld from them (no copy; its ledger is still in it), else [`redact`]'s copy. For
/// readers of its items and sections (the sources, the FHIR document), never for an answer
/// that serialises the summary whole.
pub fn shown_items(s: &Summary, break_glass: bool) -> std::borrow::Cow<'_, Summary> {
    if withholds(s, break_glass) {
        std::borrow::Cow::Owned(redact(s, break_glass))
    } else {
        std::borrow::Cow::Borrowed(s)
    }
}

/// The summary with restricted items removed (unless `break_glass`) and its ledger cleared: a
/// section left empty by it says `withheld`. The lookup reaches it through [`shown_items`],
/// which skips the copy when this would remove nothing; [`withholds`] must change with it.
pub fn redact(s: &Summary, break_glass: bool) -> Summary {
    fn strip<T: Item>(sec: &mut Section<T>, break_glass: bool) {
        if break_glass {
            return;
        }
        let before = sec.entries.len();
        sec.entries.retain(|e| !e.provenance().restricted);
        if sec.entries.is_empty() && before > 0 {
            sec.status = SectionStatus::Withheld;
        }
    }
    let mut out = s.clone();
    out.ledger = Ledger::default();
    strip(&mut out.allergies, break_glass);
    strip(&mut out.medications, break_glass);
    strip(&mut out.conditions, break_glass);
    strip(&mut out.resuscitation, break_glass);
    strip(&mut out.care_plans, break_glass);
    strip(&mut out.alerts, break_glass);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_dates() {
        for (d, w) in [
            ("2025-03-01", "1 March 2025"),
            ("2025-12", "December 2025"),
            ("2025", "2025"),
            ("2024-11-02T10:00:00Z", "2 November 2024"),
        ] {
            assert_eq!(long_date(&FhirDate::parse(d).unwrap()), w);
        }
    }
}
