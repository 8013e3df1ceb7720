//! The access policy: who may ask, how fast, and how many different patients — decided without
//! I/O, with time from the [`Clock`] the driver passes in (virtual time in tests).
//!
//! - **Shift tokens**: Ed25519 verification is paid once per token (cache keyed by the token's
//!   SHA-256, bounded); expiry is checked on every use against the clock.
//! - **Request budget** per token: a burst of [`REQUEST_BURST`] refilled at
//!   [`REQUESTS_PER_S`] (GCRA by `governor`); past it, 429.
//! - **Bulk-browse window** per token (this product's own rule): more than
//!   [`MAX_DISTINCT_PATIENTS`] distinct patients within [`BROWSE_WINDOW_MS`] → each further
//!   lookup waits its turn, [`BROWSE_DELAY_MS`] after the previous one of that token (so
//!   parallel requests queue rather than share one delay), and an alert is recorded (at most
//!   once a minute). A queue longer than [`MAX_BROWSE_QUEUE_MS`] is refused (429).
//! - **Before authentication**, per client address: requests without a valid token are
//!   limited to `[lan] unauthenticated_per_s` (burst 5×; past it 429) and recorded in
//!   aggregate — one audit event per client per [`PREAUTH_WINDOW_MS`] carrying the count —
//!   so noise cannot fill the journal or bury real accesses.
//! - **Requests in flight per client address**: at most `[lan] max_requests_per_client`.
//!
//! The driver (the LAN handlers) owns one policy per unit: nothing here is process-global.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use edge_proto::denylist::DenyList;
use edge_proto::ids::DeviceId;
use edge_proto::nhs::NhsNumber;
use edge_proto::time::UnixMillis;
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
/// The longest a browsing token's queue may get before further lookups are refused.
pub const MAX_BROWSE_QUEUE_MS: u64 = 60_000;
/// Refusals without a valid token are recorded once per client per this window, with a count.
pub const PREAUTH_WINDOW_MS: u64 = 60_000;
/// Client addresses remembered for the pre-authentication limits.
pub const MAX_CLIENTS: usize = 4_096;

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
    /// Past the distinct-patient limit: answer after `delay_ms` (this token's turn in the
    /// queue), and record an alert when `alert` is true.
    Browsing { alert: bool, delay_ms: u64 },
}

/// What to do with a refusal that had no valid token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreAuth {
    /// Record one event standing for `count` refusals from this client.
    Record { count: u32 },
    /// Counted; recorded with the client's next aggregate event.
    Counted,
    /// Over the client's pre-authentication rate: 429, counted, not recorded now.
    TooFast,
}

/// The per-client limits from `[lan]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_requests_per_client: u32,
    pub unauthenticated_per_s: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_requests_per_client: 16,
            unauthenticated_per_s: 5,
        }
    }
}

impl From<&edge_runtime::config::LanConfig> for Limits {
    fn from(l: &edge_runtime::config::LanConfig) -> Self {
        Limits {
            max_requests_per_client: l.max_requests_per_client,
            unauthenticated_per_s: l.unauthenticated_per_s,
        }
    }
}

/// A request slot held for a client while its request is in flight.
#[derive(Debug)]
pub struct Slot {
    client: IpAddr,
    slots: Arc<Mutex<HashMap<IpAddr, u32>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.client);
            }
        }
    }
}

#[derive(Debug, Default)]
struct PreAuthWindow {
    started: Option<u64>,
    pending: u32,
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
    /// When this token's next slowed lookup may be answered.
    next_turn: u64,
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
    limits: Limits,
    preauth_rate: RateLimiter<IpAddr, HashMapStateStore<IpAddr>, Mono, NoOpMiddleware<Duration>>,
    preauth: Mutex<HashMap<IpAddr, PreAuthWindow>>,
    in_flight: Arc<Mutex<HashMap<IpAddr, u32>>>,
    denied: Mutex<Option<DenyList>>,
}

impl AccessPolicy {
    /// A policy for `device`, verifying shift tokens with the hub's `key`.
    pub fn new(
        clock: SharedClock,
        key: [u8; 32],
        device: DeviceId,
        limits: Limits,
    ) -> AccessPolicy {
        let burst = NonZeroU32::new(REQUEST_BURST).unwrap_or(NonZeroU32::MIN);
        let rate = NonZeroU32::new(REQUESTS_PER_S).unwrap_or(NonZeroU32::MIN);
        let quota = Quota::per_second(rate).allow_burst(burst);
        let pre = NonZeroU32::new(limits.unauthenticated_per_s).unwrap_or(NonZeroU32::MIN);
        let pre_burst = pre.saturating_mul(NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN));
        let pre_quota = Quota::per_second(pre).allow_burst(pre_burst);
        AccessPolicy {
            budget: RateLimiter::hashmap_with_clock(quota, Mono(clock.clone())),
            preauth_rate: RateLimiter::hashmap_with_clock(pre_quota, Mono(clock.clone())),
            clock,
            key,
            device,
            verified: Mutex::new(HashMap::new()),
            browse: Mutex::new(HashMap::new()),
            limits,
            preauth: Mutex::new(HashMap::new()),
            in_flight: Arc::new(Mutex::new(HashMap::new())),
            denied: Mutex::new(None),
        }
    }

    /// Take the fleet's shift-token deny list (already verified against the token key), if it
    /// is newer than the one held; every verified token it denies is purged at once. Returns
    /// whether it was taken.
    pub fn set_denylist(&self, list: DenyList) -> bool {
        let mut held = self.denied.lock().unwrap_or_else(|p| p.into_inner());
        if held.as_ref().is_some_and(|h| !list.supersedes(h)) {
            return false;
        }
        let now = self.clock.wall();
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|_, c| !list.denies(c, now));
        *held = Some(list);
        true
    }

    /// The version of the deny list held (0: none).
    pub fn denylist_version(&self) -> u64 {
        self.denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, |d| d.version)
    }

    /// Take a request slot for `client`, or `None` when it already has
    /// `max_requests_per_client` in flight.
    pub fn slot(&self, client: IpAddr) -> Option<Slot> {
        let mut m = self.in_flight.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_CLIENTS && !m.contains_key(&client) {
            return None;
        }
        let n = m.entry(client).or_insert(0);
        if *n >= self.limits.max_requests_per_client {
            return None;
        }
        *n += 1;
        Some(Slot {
            client,
            slots: self.in_flight.clone(),
        })
    }

    /// A request from `client` was refused for want of a valid token.
    pub fn refused_without_token(&self, client: IpAddr) -> PreAuth {
        if self.preauth_rate.len() > MAX_CLIENTS {
            self.preauth_rate.retain_recent();
        }
        let over = self.preauth_rate.check_key(&client).is_err();
        let t = self.clock.mono_ms();
        let mut m = self.preauth.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() >= MAX_CLIENTS && !m.contains_key(&client) {
            // Remembering every address of a flood is the flood's goal: forget windows whose
            // count has been recorded.
            m.retain(|_, w| w.pending > 0);
        }
        let w = m.entry(client).or_default();
        w.pending = w.pending.saturating_add(1);
        let due = w
            .started
            .is_none_or(|s| t.saturating_sub(s) >= PREAUTH_WINDOW_MS);
        if over {
            return PreAuth::TooFast;
        }
        if due {
            w.started = Some(t);
            let count = std::mem::take(&mut w.pending);
            return PreAuth::Record { count };
        }
        PreAuth::Counted
    }

    /// Counts of refusals without a token not yet recorded, for clients whose window has
    /// ended: the driver records one event for each (a periodic flush, so a burst that stops
    /// is still recorded).
    pub fn drain_preauth(&self) -> Vec<(IpAddr, u32)> {
        let t = self.clock.mono_ms();
        let mut m = self.preauth.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (ip, w) in m.iter_mut() {
            let ended = w
                .started
                .is_none_or(|s| t.saturating_sub(s) >= PREAUTH_WINDOW_MS);
            if ended && w.pending > 0 {
                out.push((*ip, std::mem::take(&mut w.pending)));
                w.started = Some(t);
            }
        }
        m.retain(|_, w| {
            w.pending > 0
                || w.started
                    .is_some_and(|s| t.saturating_sub(s) < PREAUTH_WINDOW_MS)
        });
        out
    }

    /// The clock the policy decides by.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Verify a shift token (signature once per token, expiry and unit every time).
    pub fn verify(&self, tok: &str) -> Result<ShiftClaims, TokenError> {
        let t = self.clock.wall();
        let c = self.verify_signature(tok, t)?;
        let denied = self
            .denied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|d| d.denies(&c, t));
        if denied {
            return Err(TokenError::Revoked);
        }
        Ok(c)
    }

    fn verify_signature(&self, tok: &str, t: UnixMillis) -> Result<ShiftClaims, TokenError> {
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
            // This token's turn: BROWSE_DELAY_MS after the previous slowed lookup's, so
            // concurrent requests are spaced out rather than all waiting the same delay.
            let turn = b.next_turn.max(t).saturating_add(BROWSE_DELAY_MS);
            let delay_ms = turn - t;
            if delay_ms > MAX_BROWSE_QUEUE_MS {
                return Pace::TooFast;
            }
            b.next_turn = turn;
            let alert = b
                .alerted_at
                .is_none_or(|a| t.saturating_sub(a) > ALERT_EVERY_MS);
            if alert {
                b.alerted_at = Some(t);
            }
            return Pace::Browsing { alert, delay_ms };
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
            Limits::default(),
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
        assert_eq!(
            p.pace("tok", Some(extra)),
            Pace::Browsing {
                alert: true,
                delay_ms: BROWSE_DELAY_MS
            }
        );
        // Asked at the same moment: queued behind the first.
        assert_eq!(
            p.pace("tok", Some(people[MAX_DISTINCT_PATIENTS + 1])),
            Pace::Browsing {
                alert: false,
                delay_ms: 2 * BROWSE_DELAY_MS
            }
        );
        clock.advance(Duration::from_millis(ALERT_EVERY_MS + 1));
        assert_eq!(
            p.pace("tok", Some(people[MAX_DISTINCT_PATIENTS + 2])),
            Pace::Browsing {
                alert: true,
                delay_ms: BROWSE_DELAY_MS
            }
        );
        // Another token is not slowed.
        assert_eq!(p.pace("other", Some(extra)), Pace::Ok);
        // Once the window has passed, the token is back to normal.
        clock.advance(Duration::from_millis(BROWSE_WINDOW_MS + 1));
        assert_eq!(p.pace("tok", Some(people[0])), Pace::Ok);
    }

    #[test]
    fn parallel_requests_past_the_limit_queue_one_delay_apart_and_a_long_queue_is_refused() {
        // 60 distinct patients asked "at once": the 31st onwards are answered one
        // BROWSE_DELAY_MS apart (not all after the same delay), and once the queue would pass
        // MAX_BROWSE_QUEUE_MS further lookups are refused.
        let (_clock, p) = policy();
        let people = distinct(MAX_DISTINCT_PATIENTS + 40);
        let paces: Vec<Pace> = people.iter().map(|n| p.pace("tok", Some(*n))).collect();
        let delays: Vec<u64> = paces
            .iter()
            .filter_map(|x| match x {
                Pace::Browsing { delay_ms, .. } => Some(*delay_ms),
                _ => None,
            })
            .collect();
        let queued = usize::try_from(MAX_BROWSE_QUEUE_MS / BROWSE_DELAY_MS).unwrap();
        assert_eq!(delays.len(), queued);
        for (i, d) in delays.iter().enumerate() {
            assert_eq!(*d, (i as u64 + 1) * BROWSE_DELAY_MS);
        }
        assert_eq!(
            paces.iter().filter(|x| **x == Pace::TooFast).count(),
            40 - queued
        );
        assert!(paces[..MAX_DISTINCT_PATIENTS]
            .iter()
            .all(|x| *x == Pace::Ok));
    }

    #[test]
    fn refusals_without_a_token_are_recorded_once_per_client_per_minute_with_a_count() {
        let (clock, p) = policy();
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        let b: IpAddr = "10.0.0.6".parse().unwrap();
        assert_eq!(p.refused_without_token(a), PreAuth::Record { count: 1 });
        assert_eq!(p.refused_without_token(b), PreAuth::Record { count: 1 });
        // The burst (5 × 5/s) then the rate.
        let mut too_fast = 0;
        for _ in 0..100 {
            match p.refused_without_token(a) {
                PreAuth::Counted => {}
                PreAuth::TooFast => too_fast += 1,
                PreAuth::Record { .. } => panic!("a second record within the minute"),
            }
        }
        assert_eq!(too_fast, 100 - 24, "burst of 25, one used by the first");
        // Nothing due yet; after the window the 100 are drained for the flush.
        assert!(p.drain_preauth().is_empty());
        clock.advance(Duration::from_millis(PREAUTH_WINDOW_MS));
        assert_eq!(p.drain_preauth(), vec![(a, 100)]);
        assert!(p.drain_preauth().is_empty());
        // The next refusal after a drain starts a new window.
        clock.advance(Duration::from_millis(PREAUTH_WINDOW_MS));
        assert_eq!(p.refused_without_token(a), PreAuth::Record { count: 1 });
    }

    #[test]
    fn requests_in_flight_per_client_are_capped_and_released() {
        let (_clock, p) = policy();
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        let held: Vec<Slot> = (0..16).map(|_| p.slot(a).unwrap()).collect();
        assert!(p.slot(a).is_none());
        assert!(p.slot("10.0.0.7".parse().unwrap()).is_some());
        drop(held);
        assert!(p.slot(a).is_some());
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
        let p = AccessPolicy::new(clock.clone(), public, device, Limits::default());
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
        assert_eq!(
            p.verify(&tok).unwrap().token_id,
            claims.token_id,
            "from the cache"
        );
        // A deny list naming the token purges it from the cache at once; an older list is
        // not taken.
        use edge_proto::denylist::{DenyEntry, DenySubject};
        let mut list = DenyList::empty(2, UnixMillis(T0));
        list.add(DenyEntry::new(
            DenySubject::Token(claims.token_id.clone()),
            UnixMillis(T0),
            None,
        ));
        assert!(p.set_denylist(list));
        assert!(matches!(p.verify(&tok), Err(TokenError::Revoked)));
        assert!(!p.set_denylist(DenyList::empty(1, UnixMillis(T0))));
        assert!(matches!(p.verify(&tok), Err(TokenError::Revoked)));
        assert!(p.set_denylist(DenyList::empty(3, UnixMillis(T0))));
        assert_eq!(p.denylist_version(), 3);
        assert!(p.verify(&tok).is_ok(), "a newer list without the entry");
        clock.advance(Duration::from_secs(61));
        assert!(matches!(p.verify(&tok), Err(TokenError::Expired { .. })));
        assert!(p.verify("not-a-token").is_err());
    }
}
