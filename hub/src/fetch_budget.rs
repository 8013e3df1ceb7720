//! The hub's on-demand fetch budget: how many patients one unit, and one staff member, may
//! pull from the hub in an hour. Pure: the caller passes the time in, nothing here reads a
//! clock, so the policy is tested in virtual time.
//!
//! Per device and per staff member, the distinct patients fetched in the last hour are
//! counted (fetching the same patient again within the hour does not count twice):
//!
//! - up to the budget (`per_hour`): served;
//! - past the budget: still served — a major incident must not lock crews out — and an alert
//!   is raised at once (then at most once per [`ALERT_EVERY_MS`] per device or staff member);
//! - at the hard ceiling (`ceiling_factor` × the budget): refused, and alerted likewise.
//!
//! Refused fetches are not counted (nothing was read). Memory is bounded: each window holds at
//! most the ceiling's worth of entries, and idle windows are dropped.

use std::collections::{HashMap, VecDeque};

use edge_proto::nhs::NhsNumber;
use edge_proto::time::UnixMillis;

/// The window the budget counts over.
pub const WINDOW_MS: i64 = 3_600_000;

/// The most alerts of one kind for one device or staff member in this long.
pub const ALERT_EVERY_MS: i64 = 600_000;

/// Windows kept before idle ones are swept.
const SWEEP_AT: usize = 4_096;

/// The budget's limits (hub.toml `[sync] fetch_unit_per_hour`, `fetch_staff_per_hour`,
/// `fetch_ceiling_factor`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BudgetConfig {
    pub unit_per_hour: u32,
    pub staff_per_hour: u32,
    pub ceiling_factor: u32,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            unit_per_hour: 60,
            staff_per_hour: 60,
            ceiling_factor: 10,
        }
    }
}

impl BudgetConfig {
    fn budget(&self, who: Who) -> usize {
        let b = match who {
            Who::Unit => self.unit_per_hour,
            Who::Staff => self.staff_per_hour,
        };
        usize::try_from(b.max(1)).unwrap_or(usize::MAX)
    }
    fn ceiling(&self, who: Who) -> usize {
        self.budget(who)
            .saturating_mul(usize::try_from(self.ceiling_factor.max(1)).unwrap_or(usize::MAX))
    }
}

/// Whose budget an alert concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Who {
    Unit,
    Staff,
}

impl Who {
    pub fn as_str(self) -> &'static str {
        match self {
            Who::Unit => "unit",
            Who::Staff => "staff",
        }
    }
}

/// What kind of alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AlertKind {
    /// Past the budget, still served.
    OverBudget,
    /// At the hard ceiling: refused.
    Ceiling,
}

impl AlertKind {
    /// The audit `outcome_reason` of the alert.
    pub fn reason(self) -> &'static str {
        match self {
            AlertKind::OverBudget => "fetch_over_budget",
            AlertKind::Ceiling => "fetch_ceiling",
        }
    }
}

/// An alert to raise now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    pub who: Who,
    pub kind: AlertKind,
    /// Distinct patients in the window, this fetch included when served.
    pub count: usize,
    pub budget: usize,
}

/// The budget's answer for one fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Serve it (false: refuse, past the hard ceiling).
    pub serve: bool,
    /// Past the budget (served or not).
    pub over_budget: bool,
    /// Alerts to raise now (already rate-limited).
    pub alerts: Vec<Alert>,
}

#[derive(Debug, Default)]
struct Window {
    /// (when, patient), oldest first; one entry per distinct patient in the window.
    fetched: VecDeque<(UnixMillis, NhsNumber)>,
    last_alert: HashMap<AlertKindKey, UnixMillis>,
}

type AlertKindKey = u8;

fn key(kind: AlertKind) -> AlertKindKey {
    match kind {
        AlertKind::OverBudget => 0,
        AlertKind::Ceiling => 1,
    }
}

impl Window {
    fn expire(&mut self, now: UnixMillis) {
        while self
            .fetched
            .front()
            .is_some_and(|(t, _)| now.0.saturating_sub(t.0) >= WINDOW_MS)
        {
            self.fetched.pop_front();
        }
    }
    fn holds(&self, nhs: &NhsNumber) -> bool {
        self.fetched.iter().any(|(_, n)| n == nhs)
    }
    fn idle(&self, now: UnixMillis) -> bool {
        self.fetched.is_empty()
            && self
                .last_alert
                .values()
                .all(|t| now.0.saturating_sub(t.0) >= ALERT_EVERY_MS)
    }
}

/// Fetch budgets per device and per staff member.
#[derive(Debug, Default)]
pub struct FetchBudget {
    config: BudgetConfig,
    units: HashMap<String, Window>,
    staff: HashMap<String, Window>,
}

impl FetchBudget {
    pub fn new(config: BudgetConfig) -> Self {
        FetchBudget {
            config,
            units: HashMap::new(),
            staff: HashMap::new(),
        }
    }

    pub fn config(&self) -> BudgetConfig {
        self.config
    }

    /// Decide on one fetch of `nhs` by `device` for `staff` at `now`, and count it when served.
    pub fn check(
        &mut self,
        now: UnixMillis,
        device: &str,
        staff: &str,
        nhs: &NhsNumber,
    ) -> Decision {
        let cfg = self.config;
        if self.units.len() + self.staff.len() > SWEEP_AT {
            self.units.retain(|_, w| {
                w.expire(now);
                !w.idle(now)
            });
            self.staff.retain(|_, w| {
                w.expire(now);
                !w.idle(now)
            });
        }
        let u = self.units.entry(device.to_owned()).or_default();
        u.expire(now);
        let unit = Side {
            count: u.fetched.len(),
            holds: u.holds(nhs),
            last_alert: [u.last_alert.get(&0).copied(), u.last_alert.get(&1).copied()],
        };
        let s = self.staff.entry(staff.to_owned()).or_default();
        s.expire(now);
        let staff_side = Side {
            count: s.fetched.len(),
            holds: s.holds(nhs),
            last_alert: [s.last_alert.get(&0).copied(), s.last_alert.get(&1).copied()],
        };
        let d = decide(cfg, now, &unit, &staff_side);
        for a in &d.alerts {
            let w = match a.who {
                Who::Unit => self.units.entry(device.to_owned()).or_default(),
                Who::Staff => self.staff.entry(staff.to_owned()).or_default(),
            };
            w.last_alert.insert(key(a.kind), now);
        }
        if d.serve {
            let u = self.units.entry(device.to_owned()).or_default();
            if !u.holds(nhs) {
                u.fetched.push_back((now, *nhs));
            }
            let s = self.staff.entry(staff.to_owned()).or_default();
            if !s.holds(nhs) {
                s.fetched.push_back((now, *nhs));
            }
        }
        d
    }
}

/// What one side (the unit, or the staff member) has fetched in the window, as the budget
/// needs it: kept in memory ([`FetchBudget`]) or in the shared database (PostgreSQL hubs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Side {
    /// Distinct patients fetched in the window.
    pub count: usize,
    /// This patient is one of them (fetching it again does not count twice).
    pub holds: bool,
    /// When each kind of alert ([`AlertKind::OverBudget`], [`AlertKind::Ceiling`]) was last
    /// raised.
    pub last_alert: [Option<UnixMillis>; 2],
}

impl AlertKind {
    /// Index into [`Side::last_alert`] (and the database's `kind` column).
    pub fn index(self) -> usize {
        usize::from(key(self))
    }
}

/// The budget's rule, pure: the decision on one fetch given what each side has fetched. Every
/// alert returned is due (past [`ALERT_EVERY_MS`] since the last of its kind for that side);
/// the caller records it as raised at `now`, and counts the patient for both sides when the
/// fetch is served.
pub fn decide(cfg: BudgetConfig, now: UnixMillis, unit: &Side, staff: &Side) -> Decision {
    let u_next = unit.count + usize::from(!unit.holds);
    let s_next = staff.count + usize::from(!staff.holds);
    let u_refuse = u_next > cfg.ceiling(Who::Unit);
    let s_refuse = s_next > cfg.ceiling(Who::Staff);
    let serve = !u_refuse && !s_refuse;
    let mut alerts = Vec::new();
    let mut over_budget = false;
    for (who, side, next, refuse) in [
        (Who::Unit, unit, u_next, u_refuse),
        (Who::Staff, staff, s_next, s_refuse),
    ] {
        let budget = cfg.budget(who);
        if next <= budget {
            continue;
        }
        over_budget = true;
        let kind = if refuse {
            AlertKind::Ceiling
        } else {
            AlertKind::OverBudget
        };
        let due = side.last_alert[kind.index()]
            .is_none_or(|t| now.0.saturating_sub(t.0) >= ALERT_EVERY_MS);
        if due {
            alerts.push(Alert {
                who,
                kind,
                count: if serve { next } else { next - 1 },
                budget,
            });
        }
    }
    Decision {
        serve,
        over_budget,
        alerts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nhs(i: u64) -> NhsNumber {
        // Valid NHS numbers: 9 digits and a mod-11 check digit.
        let mut n = 900_000_000 + i * 7;
        loop {
            let digits: Vec<u64> = (0..9).rev().map(|k| (n / 10u64.pow(k)) % 10).collect();
            let sum: u64 = digits
                .iter()
                .enumerate()
                .map(|(k, d)| d * (10 - k as u64))
                .sum();
            let check = (11 - sum % 11) % 11;
            if check != 10 {
                let s = format!("{n:09}{check}");
                return NhsNumber::parse(&s).expect("valid");
            }
            n += 1;
        }
    }

    fn cfg(per_hour: u32) -> BudgetConfig {
        BudgetConfig {
            unit_per_hour: per_hour,
            staff_per_hour: per_hour,
            ceiling_factor: 10,
        }
    }

    #[test]
    fn within_budget_serves_silently_then_alerts_once_then_refuses_at_the_ceiling() {
        let mut b = FetchBudget::new(cfg(3));
        let t = UnixMillis(1_000_000);
        for i in 0..3 {
            let d = b.check(t, "U1", "S1", &nhs(i));
            assert!(
                d.serve && !d.over_budget && d.alerts.is_empty(),
                "{i}: {d:?}"
            );
        }
        // The fourth patient: past the budget, still served, alerted at once (unit and staff).
        let d = b.check(t, "U1", "S1", &nhs(3));
        assert!(d.serve && d.over_budget);
        assert_eq!(d.alerts.len(), 2);
        assert!(d.alerts.iter().all(|a| a.kind == AlertKind::OverBudget));
        // Then served without another alert until the ceiling (30).
        for i in 4..30 {
            let d = b.check(t, "U1", "S1", &nhs(i));
            assert!(d.serve && d.alerts.is_empty(), "{i}: {d:?}");
        }
        let d = b.check(t, "U1", "S1", &nhs(30));
        assert!(!d.serve);
        assert!(d.alerts.iter().any(|a| a.kind == AlertKind::Ceiling));
        // Refused again, no new alert within ALERT_EVERY_MS.
        let d = b.check(UnixMillis(t.0 + 1_000), "U1", "S1", &nhs(31));
        assert!(!d.serve && d.alerts.is_empty());
        // A patient already fetched this hour does not count again, even at the ceiling.
        let d = b.check(UnixMillis(t.0 + 2_000), "U1", "S1", &nhs(5));
        assert!(d.serve);
    }

    #[test]
    fn the_window_slides_in_virtual_time() {
        let mut b = FetchBudget::new(cfg(2));
        let t0 = UnixMillis(0);
        for i in 0..20 {
            assert!(b.check(t0, "U1", "S1", &nhs(i)).serve);
        }
        assert!(!b.check(t0, "U1", "S1", &nhs(20)).serve);
        // An hour later the window is empty again.
        let t1 = UnixMillis(WINDOW_MS);
        let d = b.check(t1, "U1", "S1", &nhs(21));
        assert!(d.serve && !d.over_budget);
    }

    #[test]
    fn staff_and_units_are_counted_separately() {
        let mut b = FetchBudget::new(BudgetConfig {
            unit_per_hour: 100,
            staff_per_hour: 2,
            ceiling_factor: 2,
        });
        let t = UnixMillis(5);
        // One staff member across two units: their own budget binds.
        for i in 0..4 {
            let unit = if i % 2 == 0 { "U1" } else { "U2" };
            assert!(b.check(t, unit, "S1", &nhs(i)).serve);
        }
        let d = b.check(t, "U1", "S1", &nhs(4));
        assert!(!d.serve);
        assert_eq!(d.alerts[0].who, Who::Staff);
        // Another staff member on the same unit is unaffected.
        assert!(b.check(t, "U1", "S2", &nhs(4)).serve);
    }

    #[test]
    fn alerts_repeat_after_the_alert_interval() {
        let mut b = FetchBudget::new(cfg(1));
        let t = UnixMillis(0);
        b.check(t, "U1", "S1", &nhs(0));
        assert_eq!(b.check(t, "U1", "S1", &nhs(1)).alerts.len(), 2);
        assert!(b.check(t, "U1", "S1", &nhs(2)).alerts.is_empty());
        let later = UnixMillis(ALERT_EVERY_MS);
        assert_eq!(b.check(later, "U1", "S1", &nhs(3)).alerts.len(), 2);
    }
}
