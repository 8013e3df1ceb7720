//! The reconnection policy (`edge_daemon::sync::Reconnect`): how soon a unit tries again after
//! an unanswered attempt, a refusal, a lost connection or a stall; and, in virtual time, the
//! link scenarios' "reconnects within 2 s" bar (`tests/link/main.rs` only measures it unless
//! `LINK_BARS=1`; docs/reliability.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use edge_daemon::sync::{Outcome, Reconnect};
use edge_runtime::config::SyncConfig;

const UNANSWERED: Outcome = Outcome {
    established: false,
    refused: false,
    stalled: false,
    progressed: false,
};

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// The longest wait (base + full jitter) the policy can give.
fn longest((base, spread): (u64, u64)) -> u64 {
    base + spread
}

#[test]
fn unanswered_attempts_stay_about_a_second_apart_for_the_fast_window() {
    let cfg = SyncConfig::default();
    let mut p = Reconnect::new(&cfg);
    let mut t = 0.0;
    let mut waits = Vec::new();
    // The fast window of a link that does not answer: attempt + wait, repeated.
    while t < cfg.reconnect_fast_s as f64 - 10.0 {
        let w = p.after(UNANSWERED, secs(t));
        waits.push(longest(w));
        t += cfg.connect_attempt_ms as f64 / 1000.0 + longest(w) as f64 / 1000.0;
    }
    // Exponential from the minimum, then capped: never more than reconnect_max_ms.
    assert_eq!(waits[0], cfg.reconnect_min_ms);
    assert!(waits.windows(2).all(|w| w[1] >= w[0]));
    assert!(
        waits.iter().all(|&w| w <= cfg.reconnect_max_ms),
        "{waits:?}"
    );
    // So an Initial leaves at least every connect_attempt_ms + reconnect_max_ms.
    assert!(cfg.connect_attempt_ms + cfg.reconnect_max_ms <= 1_200);
}

#[test]
fn a_unit_out_of_coverage_for_long_slows_down_then_speeds_up_when_back() {
    let cfg = SyncConfig::default();
    let mut p = Reconnect::new(&cfg);
    p.after(UNANSWERED, secs(0.0));
    let mut w = 0;
    let mut t = cfg.reconnect_fast_s as f64 + 1.0;
    for _ in 0..10 {
        w = longest(p.after(UNANSWERED, secs(t)));
        t += 6.0;
    }
    assert_eq!(
        w, cfg.reconnect_slow_max_ms,
        "slow cap after the fast window"
    );
    // The link returns: one connection, then it is lost again — fast attempts at once.
    let lost = Outcome {
        established: true,
        progressed: true,
        ..UNANSWERED
    };
    assert_eq!(longest(p.after(lost, secs(t))), cfg.reconnect_min_ms);
    assert!(longest(p.after(UNANSWERED, secs(t + 1.0))) <= cfg.reconnect_max_ms);
}

#[test]
fn refusals_back_off_to_the_refused_cap() {
    let cfg = SyncConfig::default();
    let mut p = Reconnect::new(&cfg);
    let refused = Outcome {
        refused: true,
        ..UNANSWERED
    };
    let waits: Vec<u64> = (0..20)
        .map(|i| longest(p.after(refused, secs(f64::from(i)))))
        .collect();
    assert_eq!(waits[0], cfg.reconnect_min_ms);
    assert_eq!(*waits.last().unwrap(), cfg.reconnect_refused_max_ms);
    assert!(waits.windows(2).all(|w| w[1] >= w[0]));
    // Jitter: the base is half the back-off, the spread the other half.
    let (base, spread) = p.after(refused, secs(30.0));
    assert_eq!(base, spread);
}

#[test]
fn repeated_stalls_without_progress_lengthen_the_watchdog_and_progress_resets_it() {
    let cfg = SyncConfig::default();
    let mut p = Reconnect::new(&cfg);
    let base = Duration::from_millis(cfg.stall_timeout_ms);
    assert_eq!(p.stall_timeout(), base);
    let stalled = Outcome {
        established: true,
        stalled: true,
        ..UNANSWERED
    };
    // Two stalls in a row are a bad link: the watchdog stays quick.
    p.after(stalled, secs(1.0));
    p.after(stalled, secs(3.0));
    assert_eq!(p.stall_timeout(), base);
    // From the third with nothing moving in between, it doubles each time.
    p.after(stalled, secs(5.0));
    assert_eq!(p.stall_timeout(), base * 2);
    p.after(stalled, secs(9.0));
    assert_eq!(p.stall_timeout(), base * 4);
    for i in 0..20 {
        p.after(stalled, secs(10.0 + f64::from(i)));
    }
    assert_eq!(p.stall_timeout(), Duration::from_secs(60), "capped");
    // A stall after progress (a batch applied, an audit ack) is a link problem: back to 2 s.
    p.after(
        Outcome {
            progressed: true,
            ..stalled
        },
        secs(40.0),
    );
    assert_eq!(p.stall_timeout(), base);
    // A stalled connection re-tries at the minimum delay (it was established).
    assert_eq!(longest(p.after(stalled, secs(41.0))), cfg.reconnect_min_ms);
}

/// A small deterministic random source for the jitter (xorshift).
fn rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed | 1;
    move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    }
}

/// The virtual-time form of the link scenarios' "reconnects within 2 s" bar: the link is down
/// from 0 to `back` (ms); attempts each take `connect_attempt_ms` unanswered, then the jittered
/// wait. The first attempt that starts once the link is back is answered; how long after the
/// link returned did it start?
fn first_attempt_after(cfg: &SyncConfig, back: u64, random: &mut impl FnMut() -> u64) -> u64 {
    let mut p = Reconnect::new(cfg);
    // The connection was established, then lost at 0.
    let lost = Outcome {
        established: true,
        ..UNANSWERED
    };
    let mut t = Reconnect::delay_ms(p.after(lost, Duration::ZERO), random());
    while t < back {
        t += cfg.connect_attempt_ms;
        t += Reconnect::delay_ms(p.after(UNANSWERED, Duration::from_millis(t)), random());
    }
    t - back
}

#[test]
fn a_returning_link_is_tried_within_the_reconnect_bar_whatever_the_jitter() {
    let cfg = SyncConfig::default();
    let mut random = rng(0x4b45_5242);
    let mut worst = 0;
    // Outages from 0.1 s to the end of the fast window (150 s by default; later, a local
    // network change brings the next attempt: `sync::policy`), the 30 s and 120 s ones included.
    let fast_ms = cfg.reconnect_fast_s * 1000 - 10_000;
    for back in (100..fast_ms).step_by(997).chain([30_000, 120_000]) {
        worst = worst.max(first_attempt_after(&cfg, back, &mut random));
    }
    // An attempt is never more than one unanswered attempt plus the longest wait away.
    let bound = cfg.connect_attempt_ms + cfg.reconnect_max_ms;
    assert!(worst <= bound, "{worst} ms > {bound} ms");
    // So with a handshake of a couple of round trips on a 150 ms path, well inside 2 s.
    assert!(bound + 2 * 150 <= 2_000);
    // Each wait lies within base..=base + spread, whatever the random source gives.
    let mut p = Reconnect::new(&cfg);
    for i in 0..1_000u64 {
        let w = p.after(UNANSWERED, Duration::from_millis(i * 800));
        let d = Reconnect::delay_ms(w, random());
        assert!(d >= w.0 && d <= w.0 + w.1, "{w:?} {d}");
    }
}
