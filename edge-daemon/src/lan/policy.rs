//! The access policy: who may ask, how fast, and how many different patients — decided without
//! I/O, with time from the [`Clock`] the driver passes in (virtual time in tests).
//!
//! - **Shift tokens**: Ed25519 verification is paid once per token (cache keyed by the token's
//!   SHA-256, bounded); expiry is checked on every use against the clock.
//! - **Request budget** per token: a burst of [`REQUEST_BURST`] refilled at
//!   [`REQUESTS_PER_S`] (GCRA by `governor`); past it, 429.
//! - **Bulk-browse window** per token (this product's own rule): more than
//!   [`MAX_DISTINCT_PATIENTS`] distinct patients within [`BROWSE_WINDOW_MS`] → each further
//!   lookup is slowed by [`BROWSE_DELAY_MS`] and an alert is recorded (at most once a minute).
//!
//! The driver (the LAN handlers) owns one policy per unit: nothing here is process-global.

use std::collections::{HashMap, VecDeque};
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Duration;

use edge_proto::ids::DeviceId;
use edge_proto::nhs::NhsNumber;
use edge_proto::token::{self, ShiftClaims, TokenError};
use edge_runtime::clock::SharedClock;
use governor::clock::Clock as GovernorClock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::HashMapStateStore;
use governor::{Quota, RateLimiter};

/// Request budget per token: a burst of this many, refilled at [`REQUESTS_PER_S`]; past it, 429.
/// A person never comes near it; a script does, and the distinct-patient limit below slows
/// a scripted browse to one patient per two seconds long before.
pub const REQUEST_BURST: u32 = 2_000;
/// Refill rate of the request budget.
pub const REQUESTS_PER_S: u32 = 100;
/// Distinct patients per token per window before lookups are slowed and alerted.
pub const MAX_DISTINCT_PATIENTS: usize = 30;
/// The window for distinct patients.
pub const BROWSE_WINDOW_MS: u64 = 10 * 60 * 1000;
/// The delay added to each lookup past the limit.
pub const BROWSE_DELAY_MS: u64 = 2_000;
/// At most one bulk-browse alert per token in this long.
pub const ALERT_EVERY_MS: u64 = 60_000;
/// Tokens remembered (verified claims, budgets, browse windows); past it the oldest state is
/// dropped (a shift's tokens are a few dozen; this bounds a flood of forged ones).
pub const MAX_TOKENS: usize = 4_096;

/// What the policy says about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Go ahead.
    Ok,
    /// Over the request budget: refuse (429).
    TooFast,
    /// Past the distinct-patient limit: answer after [`BROWSE_DELAY_MS`], and record an alert
    /// when `alert` is true.
    Browsing { alert: bool },
}

/// `governor`'s view of our clock: monotonic time as a `Duration` since the clock's origin.
#[derive(Debug, Clone)]
struct Mono(SharedClock);

impl GovernorClock for Mono {
    type Instant = Duration;

    fn now(&self) -> Duration {
        Duration::from_millis(self.0.mono_ms())
    }
}

#[derive(Debug, Default)]
struct Browse {
    /// (first seen, patient) within the window, oldest first.
    patients: VecDeque<(u64, NhsNumber)>,
    alerted_at: Option<u64>,
}

/// The unit's access policy.
#[derive(Debug)]
pub struct AccessPolicy {
    clock: SharedClock,
    key: [u8; 32],
    device: DeviceId,
    verified: Mutex<HashMap<[u8; 32], ShiftClaims>>,
    budget: RateLimiter<String, HashMapStateStore<String>, Mono, NoOpMiddleware<Duration>>,
    browse: Mutex<HashMap<String, Browse>>,
}

impl AccessPolicy {
    /// A policy for `device`, verifying shift tokens with the hub's `key`.
    pub fn new(clock: SharedClock, key: [u8; 32], device: DeviceId) -> AccessPolicy {
        let burst = NonZeroU32::new(REQUEST_BURST).unwrap_or(NonZeroU32::MIN);
        let rate = NonZeroU32::new(REQUESTS_PER_S).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        AccessPolicy {
            budget: RateLimiter::hashmap_with_clock(quota, Mono(clock.clone())),
            clock,
            key,
            device,
            verified: Mutex::new(HashMap::new()),
            browse: Mutex::new(HashMap::new()),
        }
    }

    /// The clock the policy decides by.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Verify a shift token (signature once per token, expiry and unit every time).
    pub fn verify(&self, tok: &str) -> Result<ShiftClaims, TokenError> {
        let t = self.clock.wall();
        let mut key = [0u8; 32];
        key.copy_from_slice(
            ring::digest::digest(&ring::digest::SHA256, tok.trim().as_bytes()).as_ref(),
        );
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = cache.get(&key) {
            if c.expires_at > t {
                return Ok(c.clone());
            }
            cache.remove(&key);
        }
        drop(cache);
        let c = token::verify(tok, &self.key[..], t, &self.device)?;
        let mut cache = self.verified.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_TOKENS {
            cache.clear();
        }
        cache.insert(key, c.clone());
        Ok(c)
    }

    /// Charge one request to `token_id`, opening `patient` when given.
    pub fn pace(&self, token_id: &str, patient: Option<NhsNumber>) -> Pace {
        if self.budget.len() > MAX_TOKENS {
            self.budget.retain_recent();
        }
        if self.budget.check_key(&token_id.to_owned()).is_err() {
            return Pace::TooFast;
        }
        let Some(p) = patient else {
            return Pace::Ok;
        };
        let t = self.clock.mono_ms();
        let mut all = self.browse.lock().unwrap_or_else(|e| e.into_inner());
        if all.len() > MAX_TOKENS && !all.contains_key(token_id) {
            all.retain(|_, b| {
                b.patients
                    .back()
                    .is_some_and(|(x, _)| t.saturating_sub(*x) <= BROWSE_WINDOW_MS)
            });
        }
        let b = all.entry(token_id.to_owned()).or_default();
        while b
            .patients
            .front()
            .is_some_and(|(x, _)| t.saturating_sub(*x) > BROWSE_WINDOW_MS)
        {
            b.patients.pop_front();
        }
        if !b.patients.iter().any(|(_, q)| *q == p) {
            b.patients.push_back((t, p));
        }
        if b.patients.len() > MAX_DISTINCT_PATIENTS {
            let alert = b
                .alerted_at
                .is_none_or(|a| t.saturating_sub(a) > ALERT_EVERY_MS);
            if alert {
                b.alerted_at = Some(t);
            }
            return Pace::Browsing { alert };
        }
        Pace::Ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use edge_proto::ids::StaffRole;
    use edge_proto::time::UnixMillis;
    use edge_runtime::clock::ManualClock;

    const T0: i64 = 1_800_000_000_000;

    fn distinct(n: usize) -> Vec<NhsNumber> {
        let mut out: Vec<NhsNumber> = Vec::new();
        let mut k = 9_990_000_000u64;
        while out.len() < n {
            if let Ok(x) = NhsNumber::parse(&k.to_string()) {
                out.push(x);
            }
            k += 1;
        }
        out
    }

    fn policy() -> (std::sync::Arc<ManualClock>, AccessPolicy) {
        let clock = ManualClock::new(UnixMillis(T0));
        let p = AccessPolicy::new(
            clock.clone(),
            [0u8; 32],
            DeviceId::parse("LAS-AMB-0001").unwrap(),
        );
        (clock, p)
    }

    #[test]
    fn the_request_budget_is_a_burst_refilled_at_its_rate_in_virtual_time() {
        let (clock, p) = policy();
        for i in 0..REQUEST_BURST {
            assert_eq!(p.pace("tok", None), Pace::Ok, "request {i}");
        }
        assert_eq!(p.pace("tok", None), Pace::TooFast);
        // Another token has its own budget.
        assert_eq!(p.pace("other", None), Pace::Ok);
        // 10 ms refills one request at 100/s, and not two.
        clock.advance(Duration::from_millis(10));
        assert_eq!(p.pace("tok", None), Pace::Ok);
        assert_eq!(p.pace("tok", None), Pace::TooFast);
        // A second refills a hundred.
        clock.advance(Duration::from_secs(1));
        for _ in 0..REQUESTS_PER_S {
            assert_eq!(p.pace("tok", None), Pace::Ok);
        }
        assert_eq!(p.pace("tok", None), Pace::TooFast);
    }

    #[test]
    fn browsing_many_patients_is_slowed_and_alerted_once_a_minute_and_the_window_slides() {
        let (clock, p) = policy();
        let people = distinct(MAX_DISTINCT_PATIENTS + 5);
        for (i, n) in people.iter().take(MAX_DISTINCT_PATIENTS).enumerate() {
            assert_eq!(p.pace("tok", Some(*n)), Pace::Ok, "patient {i}");
        }
        // Opening the same patients again does not count.
        assert_eq!(p.pace("tok", Some(people[0])), Pace::Ok);
        // One more distinct patient: slowed, with an alert.
        let extra = people[MAX_DISTINCT_PATIENTS];
        assert_eq!(p.pace("tok", Some(extra)), Pace::Browsing { alert: true });
        assert_eq!(
            p.pace("tok", Some(people[MAX_DISTINCT_PATIENTS + 1])),
            Pace::Browsing { alert: false }
        );
        clock.advance(Duration::from_millis(ALERT_EVERY_MS + 1));
        assert_eq!(
            p.pace("tok", Some(people[MAX_DISTINCT_PATIENTS + 2])),
            Pace::Browsing { alert: true }
        );
        // Another token is not slowed.
        assert_eq!(p.pace("other", Some(extra)), Pace::Ok);
        // Once the window has passed, the token is back to normal.
        clock.advance(Duration::from_millis(BROWSE_WINDOW_MS + 1));
        assert_eq!(p.pace("tok", Some(people[0])), Pace::Ok);
    }

    #[test]
    fn parallel_requests_cannot_beat_the_browse_window() {
        // The window is counted when the request is admitted, not when it is answered: 60
        // distinct patients asked "at once" are slowed from the 31st.
        let (_clock, p) = policy();
        let people = distinct(60);
        let slowed = people
            .iter()
            .filter(|n| matches!(p.pace("tok", Some(**n)), Pace::Browsing { .. }))
            .count();
        assert_eq!(slowed, 60 - MAX_DISTINCT_PATIENTS);
    }

    #[test]
    fn a_verified_token_is_cached_until_it_expires_by_the_clock() {
        let clock = ManualClock::new(UnixMillis(T0));
        let device = DeviceId::parse("LAS-AMB-0001").unwrap();
        let seed = [7u8; 32];
        let kp = ring::signature::Ed25519KeyPair::from_seed_unchecked(&seed).unwrap();
        let public: [u8; 32] = ring::signature::KeyPair::public_key(&kp)
            .as_ref()
            .try_into()
            .unwrap();
        let p = AccessPolicy::new(clock.clone(), public, device);
        let claims = ShiftClaims {
            v: 1,
            token_id: format!("{:032x}", 1),
            staff_id: "555000111222".into(),
            staff_name: "PARAMEDIC, Test".into(),
            role: StaffRole::Clinical,
            org_ods: None,
            device: None,
            issued_at: UnixMillis(T0 - 1_000),
            expires_at: UnixMillis(T0 + 60_000),
        };
        let tok = token::sign(&claims, &kp);
        assert_eq!(p.verify(&tok).unwrap().token_id, claims.token_id);
        assert_eq!(p.verify(&tok).unwrap().token_id, claims.token_id, "from the cache");
        clock.advance(Duration::from_secs(61));
        assert!(matches!(p.verify(&tok), Err(TokenError::Expired { .. })));
        assert!(p.verify("not-a-token").is_err());
    }
}
