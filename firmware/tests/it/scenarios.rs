//! Time-stepped scenarios, one or more per row of the behaviour table in `docs/supervisor.md`.

use crate::harness::{HostModel, Rig, NOMINAL_MV};
use firmware::config::HOUR_MS;
use firmware::leds::Pattern;
use firmware::proto::{
    Faults, HostFaults, HostToMcu, LinkState, McuToHost, ShutdownReason, StateCode,
};
use firmware::supervisor::State;
use firmware::tamper::Persisted;
use firmware::Settings;

fn rig() -> Rig {
    Rig::new(Settings::DEFAULT_12V)
}

// --- ignition on: debounce 2 s, power-on delay 5 s, boot timeout 180 s -------------------------

#[test]
fn ignition_on_powers_host_after_debounce_and_delay() {
    let mut r = rig();
    r.ignition = true;
    r.run(6_990);
    assert!(!r.powered(), "powered too early: {:?}", r.states);
    assert!(matches!(r.state(), State::PowerOnDelay { .. }));
    assert_eq!(r.leds().power, Pattern::SlowBlink);
    r.run(10);
    assert!(r.powered());
    assert_eq!(r.power_edges, vec![(7_000, true)]);
    assert!(matches!(r.state(), State::Booting { .. }));
    r.run(20_000);
    assert_eq!(r.state(), State::Running);
    assert_eq!(r.leds().power, Pattern::On);
    assert!(matches!(
        r.sent_since(0)[0],
        McuToHost::Hello {
            version: 1,
            board_rev: 1,
            ..
        }
    ));
}

#[test]
fn ignition_blip_shorter_than_debounce_does_not_power_host() {
    let mut r = rig();
    for _ in 0..5 {
        r.ignition = true;
        r.run(1_500);
        r.ignition = false;
        r.run(500);
    }
    r.run(10_000);
    assert!(r.power_edges.is_empty());
    assert_eq!(r.state(), State::Off);
}

#[test]
fn ignition_dropping_during_power_on_delay_aborts_power_on() {
    let mut r = rig();
    r.ignition = true;
    r.run(4_000);
    r.ignition = false;
    r.run(10_000);
    assert!(r.power_edges.is_empty());
    assert_eq!(r.state(), State::Off);
}

#[test]
fn host_that_never_says_hello_is_power_cycled_after_boot_timeout() {
    let mut r = rig();
    r.host.boot_ms = None;
    r.ignition = true;
    r.run(7_000);
    assert!(r.powered());
    r.run(179_990);
    assert!(matches!(r.state(), State::Booting { .. }));
    r.run(10);
    assert!(
        matches!(r.state(), State::PowerCycle { .. }),
        "{:?}",
        r.state()
    );
    assert!(!r.powered());
    r.run(5_000);
    assert!(r.powered(), "power returns after the off time");
    assert_eq!(r.sup.status(r.now).power_cycles_last_hour, 1);
}

// --- ignition off: off-delay 15 min, shutdown request, ack or hard deadline 120 s ---------------

#[test]
fn ignition_off_runs_off_delay_then_requests_shutdown_and_cuts_after_ack() {
    let mut r = rig();
    r.boot_to_running();
    let off_at = r.now;
    r.ignition = false;
    r.run(2_000);
    assert!(matches!(r.state(), State::OffDelay { .. }));
    assert!(r
        .sent_since(off_at)
        .contains(&McuToHost::IgnitionChanged { on: false }));
    r.run(15 * 60_000 - 10);
    assert!(r.shutdown_requests().is_empty());
    r.run(10);
    assert_eq!(
        r.shutdown_requests(),
        vec![(off_at + 2_000 + 15 * 60_000, ShutdownReason::IgnitionOff)]
    );
    assert!(r.sent.iter().any(|(_, m)| *m
        == McuToHost::ShutdownRequest {
            reason: ShutdownReason::IgnitionOff,
            deadline_ms: 120_000
        }));
    let requested = r.now;
    // The healthy host acks after 10 s; power goes 3 s (halt grace) later.
    r.run(12_990);
    assert!(r.powered());
    r.run(10);
    assert!(!r.powered());
    assert_eq!(r.power_edges.last(), Some(&(requested + 13_000, false)));
    assert_eq!(r.state(), State::Off);
    assert_eq!(
        r.sup.status(r.now).last_shutdown,
        Some(ShutdownReason::IgnitionOff)
    );
}

#[test]
fn ignition_flapping_during_off_delay_cancels_it_every_time() {
    let mut r = rig();
    r.boot_to_running();
    for _ in 0..4 {
        r.ignition = false;
        r.run(10 * 60_000);
        assert!(matches!(r.state(), State::OffDelay { .. }));
        // Flaps shorter than the debounce do not cancel.
        for _ in 0..3 {
            r.ignition = true;
            r.run(500);
            r.ignition = false;
            r.run(500);
        }
        assert!(matches!(r.state(), State::OffDelay { .. }));
        // Ignition back for real: cancelled.
        r.ignition = true;
        r.run(2_000);
        assert_eq!(r.state(), State::Running);
        r.run(60_000);
    }
    // A fresh off-delay starts from the last ignition off.
    let off_at = r.now;
    r.ignition = false;
    let asked = r.run_until(20 * 60_000, |r| !r.shutdown_requests().is_empty());
    assert_eq!(asked, Some(off_at + 2_000 + 15 * 60_000));
    assert_eq!(r.shutdown_requests().len(), 1);
}

#[test]
fn host_that_never_acknowledges_is_cut_at_the_hard_deadline() {
    let mut r = rig();
    r.host.shutdown_ack_ms = None;
    r.boot_to_running();
    r.ignition = false;
    let asked = r
        .run_until(20 * 60_000, |r| !r.shutdown_requests().is_empty())
        .expect("asked");
    assert!(matches!(
        r.state(),
        State::ShutdownPending {
            cut_at_ms: None,
            ..
        }
    ));
    r.run(119_990);
    assert!(r.powered(), "power must hold until the deadline");
    r.run(10);
    assert!(!r.powered());
    assert_eq!(r.power_edges.last(), Some(&(asked + 120_000, false)));
}

#[test]
fn ignition_returning_after_the_shutdown_request_restarts_the_host_after_the_cut() {
    let mut r = rig();
    r.settle_shutdown_pending();
    r.ignition = true;
    r.run(30_000);
    // The shutdown completes (the host is already shutting down) and the host comes back.
    assert!(r.power_edges.iter().any(|(_, on)| !on));
    assert!(r.powered());
    r.run(30_000);
    assert_eq!(r.state(), State::Running);
}

impl Rig {
    fn settle_shutdown_pending(&mut self) {
        self.host.shutdown_ack_ms = Some(5_000);
        self.boot_to_running();
        self.ignition = false;
        self.run_until(20 * 60_000, |r| !r.shutdown_requests().is_empty())
            .expect("asked");
    }
}

// --- input power lost: power-fail with the hold-up budget ---------------------------------------

#[test]
fn power_fail_is_reported_at_once_and_power_cut_at_the_ack() {
    let mut r = rig();
    r.boot_to_running();
    let lost = r.now;
    r.supply_mv = 0;
    r.run(100);
    let fails: Vec<_> = r
        .sent
        .iter()
        .filter(|(_, m)| matches!(m, McuToHost::PowerFail { .. }))
        .copied()
        .collect();
    assert_eq!(
        fails,
        vec![(lost + 100, McuToHost::PowerFail { budget_ms: 7_900 })]
    );
    assert!(matches!(r.state(), State::PowerFail { .. }));
    assert_eq!(r.leds().power, Pattern::FastBlink);
    // Host acks after 2 s: cut right away (the budget is the capacitor's).
    r.run(2_000);
    assert!(!r.powered());
    assert_eq!(r.power_edges.last(), Some(&(lost + 2_100, false)));
    assert_eq!(
        r.sup.status(r.now).last_shutdown,
        Some(ShutdownReason::PowerFail)
    );
}

#[test]
fn power_fail_without_ack_is_cut_when_the_budget_runs_out() {
    let mut r = rig();
    r.host.power_fail_ack_ms = None;
    r.boot_to_running();
    let lost = r.now;
    r.supply_mv = 3_000;
    r.run(7_990);
    assert!(r.powered());
    r.run(10);
    assert!(!r.powered());
    assert_eq!(r.power_edges.last(), Some(&(lost + 8_000, false)));
}

#[test]
fn power_returning_within_the_budget_carries_on() {
    let mut r = rig();
    r.host.power_fail_ack_ms = None;
    r.boot_to_running();
    r.supply_mv = 0;
    r.run(3_000);
    assert!(matches!(r.state(), State::PowerFail { .. }));
    let back = r.now;
    r.supply_mv = NOMINAL_MV;
    r.run(300);
    assert_eq!(r.state(), State::Running);
    assert!(r.sent_since(back).contains(&McuToHost::PowerRestored));
    assert!(r.power_edges.iter().all(|(_, on)| *on));
    // And the watchdog gave the host a fresh period.
    r.run(60_000);
    assert_eq!(r.state(), State::Running);
}

#[test]
fn battery_pulled_mid_write_then_reconnected() {
    let mut r = rig();
    r.boot_to_running();
    // Battery isolator off: ignition and input both vanish at once.
    r.ignition = false;
    r.supply_mv = 0;
    r.run(3_000);
    assert_eq!(r.power_fails(), 1);
    assert!(!r.powered(), "cut at the host's ack");
    assert!(
        r.shutdown_requests().is_empty(),
        "no orderly shutdown, only power-fail"
    );
    r.run(60_000);
    // Reconnected with ignition on: normal power-up.
    r.supply_mv = NOMINAL_MV;
    r.ignition = true;
    r.run(7_010);
    assert!(r.powered());
}

#[test]
fn power_fail_during_shutdown_pending_keeps_the_earlier_deadline_and_resumes() {
    let mut r = rig();
    r.host.shutdown_ack_ms = None;
    r.host.power_fail_ack_ms = None;
    r.boot_to_running();
    r.ignition = false;
    r.run_until(20 * 60_000, |r| !r.shutdown_requests().is_empty())
        .expect("asked");
    let State::ShutdownPending { deadline_ms, .. } = r.state() else {
        panic!()
    };
    r.supply_mv = 0;
    r.run(1_000);
    assert!(matches!(r.state(), State::PowerFail { .. }));
    r.supply_mv = NOMINAL_MV;
    r.run(1_000);
    assert!(matches!(r.state(), State::ShutdownPending { deadline_ms: d, .. } if d == deadline_ms));
    r.run_until(200_000, |r| !r.powered()).expect("cut");
    assert_eq!(r.power_edges.last(), Some(&(deadline_ms, false)));
}

// --- crank dip ------------------------------------------------------------------------------------

#[test]
fn crank_dip_never_shuts_down() {
    let mut r = rig();
    r.boot_to_running();
    for depth_mv in [4_000u16, 5_500, 7_000] {
        // ISO 16750-2-like starting profile: a deep drop for tens of ms, then a reduced level
        // for seconds, then the alternator.
        r.supply_mv = 12_600 - depth_mv;
        r.run(40);
        r.supply_mv = 8_500;
        r.run(5_000);
        r.supply_mv = NOMINAL_MV;
        r.run(10_000);
    }
    assert_eq!(r.power_fails(), 0);
    assert!(r.shutdown_requests().is_empty());
    assert_eq!(r.state(), State::Running);
    assert!(r.power_edges.iter().all(|(_, on)| *on));
}

#[test]
fn crank_during_power_on_delay_is_skipped() {
    let mut r = rig();
    r.supply_mv = 12_600;
    r.ignition = true;
    r.run(3_000);
    r.supply_mv = 5_600;
    r.run(40);
    r.supply_mv = 9_000;
    r.run(2_000);
    r.supply_mv = NOMINAL_MV;
    r.run(3_000);
    assert!(r.powered());
    assert_eq!(r.power_fails(), 0);
}

// --- low battery ----------------------------------------------------------------------------------

#[test]
fn low_battery_for_a_minute_forces_an_orderly_shutdown_with_reason() {
    let mut r = rig();
    r.boot_to_running();
    let low_at = r.now;
    r.supply_mv = 10_800;
    r.run(59_990);
    assert!(r.shutdown_requests().is_empty());
    r.run(10);
    assert_eq!(
        r.shutdown_requests(),
        vec![(low_at + 60_000, ShutdownReason::LowBattery)]
    );
    assert!(r
        .sent_since(low_at)
        .contains(&McuToHost::LowBattery { millivolts: 10_800 }));
    assert!(r.sup.faults(r.now).contains(Faults::LOW_BATTERY));
    assert_eq!(r.leds().fault, Pattern::Code(2));
    r.run(20_000);
    assert!(!r.powered());
    assert_eq!(
        r.sup.status(r.now).last_shutdown,
        Some(ShutdownReason::LowBattery)
    );
    // Ignition is still on, but the host stays off until the battery recovers.
    r.supply_mv = 11_500;
    r.run(60_000);
    assert!(!r.powered());
    r.supply_mv = NOMINAL_MV;
    r.run(7_010);
    assert!(r.powered());
    assert!(!r.sup.faults(r.now).contains(Faults::LOW_BATTERY));
}

#[test]
fn low_battery_shorter_than_a_minute_is_ignored() {
    let mut r = rig();
    r.boot_to_running();
    for _ in 0..3 {
        r.supply_mv = 10_500;
        r.run(50_000);
        r.supply_mv = 12_200;
        r.run(1_000);
    }
    assert!(r.shutdown_requests().is_empty());
    assert_eq!(r.state(), State::Running);
}

#[test]
fn low_battery_threshold_on_24v_systems() {
    let mut r = Rig::new(Settings::DEFAULT_24V);
    r.boot_to_running();
    r.supply_mv = 23_000;
    r.run(120_000);
    assert!(r.shutdown_requests().is_empty());
    r.supply_mv = 21_500;
    r.run(60_000);
    assert_eq!(r.shutdown_requests().len(), 1);
}

// --- host watchdog ----------------------------------------------------------------------------------

#[test]
fn hung_host_is_reset_then_power_cycled() {
    let mut r = rig();
    r.host.hang_after_ms = Some(60_000);
    r.boot_to_running();
    let hung = r.run_until(200_000, |r| {
        matches!(r.state(), State::WatchdogReset { .. })
    });
    let hung = hung.expect("reset");
    assert!(r.last.host_reset);
    assert!(r.powered(), "a reset keeps power on");
    assert_eq!(r.leds().power, Pattern::FastBlink);
    r.run(200);
    assert!(!r.last.host_reset);
    assert!(matches!(r.state(), State::Booting { .. }));
    // It boots, hangs again within the hour: this time a power cycle.
    let cycled = r.run_until(200_000, |r| matches!(r.state(), State::PowerCycle { .. }));
    assert!(cycled.expect("power cycle") > hung);
    assert!(!r.powered());
    assert!(r.sup.faults(r.now).contains(Faults::WATCHDOG));
    assert_eq!(r.leds().fault, Pattern::Code(1));
}

#[test]
fn heartbeat_gap_just_under_the_timeout_is_fine() {
    let mut r = rig();
    r.host.heartbeat_ms = 29_000;
    r.boot_to_running();
    r.run(10 * 60_000);
    assert_eq!(r.state(), State::Running);
    assert!(r.power_edges.iter().all(|(_, on)| *on));
}

#[test]
fn repeated_watchdog_resets_hit_the_hourly_limit_and_stay_off_with_a_fault() {
    let mut r = rig();
    r.tick_ms = 100;
    r.host.hang_after_ms = Some(10_000);
    r.boot_to_running();
    r.run(HOUR_MS / 2);
    let cycles = r.power_cycle_starts();
    assert_eq!(cycles.len(), 3, "{cycles:?}");
    assert!(matches!(r.state(), State::Fault { .. }), "{:?}", r.state());
    assert!(!r.powered());
    assert_eq!(r.leds().fault, Pattern::On);
    assert_eq!(r.leds().power, Pattern::Off);
    let status = r.sup.status(r.now);
    assert_eq!(status.state, StateCode::Fault);
    assert!(status.faults.contains(Faults::WATCHDOG_LIMIT));
    assert_eq!(status.power_cycles_last_hour, 3);
    // Stays off for hours while ignition stays on.
    r.run(3 * HOUR_MS);
    assert!(!r.powered());
    // The crew turns the vehicle off and on: a fresh power-up.
    r.host.hang_after_ms = None;
    r.ignition = false;
    r.run(5_000);
    r.ignition = true;
    r.run(7_010);
    assert!(r.powered());
    r.run(30_000);
    assert_eq!(r.state(), State::Running);
}

#[test]
fn watchdog_is_suspended_while_a_shutdown_is_pending() {
    let mut r = rig();
    r.host.shutdown_ack_ms = None;
    r.boot_to_running();
    r.ignition = false;
    r.run_until(20 * 60_000, |r| !r.shutdown_requests().is_empty())
        .expect("asked");
    r.host.hang_after_ms = Some(0);
    r.run(119_000);
    assert!(matches!(r.state(), State::ShutdownPending { .. }));
    assert!(!r.last.host_reset);
}

// --- tamper -----------------------------------------------------------------------------------------

#[test]
fn tamper_while_syncing_latches_tells_host_and_survives_mcu_power_loss() {
    let mut r = rig();
    r.boot_to_running();
    r.host_says(HostToMcu::SetLeds {
        link: LinkState::Syncing,
        faults: HostFaults::empty(),
    });
    assert_eq!(r.leds().link, Pattern::FastBlink);
    let opened = r.now;
    r.tamper = true;
    r.run(10);
    assert!(r.sent_since(opened).contains(&McuToHost::Tamper));
    assert!(r.key_share_erased);
    assert_eq!(
        r.persisted,
        Persisted {
            tamper_latched: true,
            host_zeroized: false
        }
    );
    assert_eq!(r.leds().fault, Pattern::Code(3));
    assert_eq!(r.leds().link, Pattern::FastBlink, "syncing continues");
    assert_eq!(r.state(), State::Running, "tamper does not cut power");
    r.tamper = false;
    r.run(1_000);
    assert_eq!(
        r.persisted,
        Persisted {
            tamper_latched: true,
            host_zeroized: true
        }
    );
    assert_eq!(
        r.sent
            .iter()
            .filter(|(_, m)| *m == McuToHost::Tamper)
            .count(),
        1
    );
    // The MCU loses power; the backup domain keeps the latch.
    let word = r.persisted.to_word();
    let mut r2 = Rig::with_persisted(Settings::DEFAULT_12V, Persisted::from_word(word));
    r2.boot_to_running();
    assert!(r2.sup.faults(r2.now).contains(Faults::TAMPER));
    assert!(
        !r2.sent.iter().any(|(_, m)| *m == McuToHost::Tamper),
        "already zeroized"
    );
}

#[test]
fn tamper_latched_while_host_off_is_reported_at_the_next_hello_until_zeroized() {
    let mut r = rig();
    r.host.zeroize = false;
    r.tamper = true;
    r.run(100);
    r.tamper = false;
    assert!(r.persisted.tamper_latched);
    assert!(r.sent.is_empty());
    r.boot_to_running();
    assert!(r.sent.iter().any(|(_, m)| *m == McuToHost::Tamper));
    // The daemon restarts without zeroizing: told again.
    let t = r.now;
    r.host_says(HostToMcu::Hello { version: 1 });
    assert!(r.sent_since(t).contains(&McuToHost::Tamper));
    r.host_says(HostToMcu::Zeroized);
    assert!(r.persisted.host_zeroized);
    r.run(10);
    let t = r.now;
    r.host_says(HostToMcu::Hello { version: 1 });
    assert!(!r.sent_since(t).contains(&McuToHost::Tamper));
}

#[test]
fn blank_backup_domain_counts_as_tampered() {
    let mut r = Rig::with_persisted(Settings::DEFAULT_12V, Persisted::from_word(0));
    r.boot_to_running();
    assert!(r.sent.iter().any(|(_, m)| *m == McuToHost::Tamper));
}

// --- LEDs and status ------------------------------------------------------------------------------

#[test]
fn leds_follow_state_link_and_faults() {
    let mut r = rig();
    r.run(100);
    assert_eq!(r.leds().power, Pattern::Off);
    assert_eq!(r.leds().link, Pattern::Off);
    assert_eq!(r.leds().fault, Pattern::Off);
    r.boot_to_running();
    for (link, pattern) in [
        (LinkState::None, Pattern::Off),
        (LinkState::Cellular, Pattern::SlowBlink),
        (LinkState::DepotWifi, Pattern::On),
        (LinkState::Syncing, Pattern::FastBlink),
    ] {
        r.host_says(HostToMcu::SetLeds {
            link,
            faults: HostFaults::empty(),
        });
        assert_eq!(r.leds().link, pattern);
    }
    r.host_says(HostToMcu::SetLeds {
        link: LinkState::Cellular,
        faults: HostFaults::CERT_EXPIRED,
    });
    assert_eq!(r.leds().fault, Pattern::Code(4));
    // Link LED goes dark when the host goes down.
    r.supply_mv = 0;
    r.run(3_000);
    assert!(!r.powered());
    assert_eq!(r.leds().link, Pattern::Off);
}

#[test]
fn get_status_reports_state_supply_and_faults() {
    let mut r = rig();
    r.boot_to_running();
    let t = r.now;
    r.host_says(HostToMcu::GetStatus);
    let status = r.sent_since(t).into_iter().find_map(|m| match m {
        McuToHost::Status(s) => Some(s),
        _ => None,
    });
    let s = status.expect("status sent");
    assert_eq!(s.state, StateCode::Running);
    assert!(s.ignition_on);
    assert_eq!(s.supply_mv, NOMINAL_MV);
    assert!(s.faults.is_empty());
    assert_eq!(s.last_shutdown, None);
}

#[test]
fn messages_from_an_unpowered_host_are_ignored() {
    let mut r = rig();
    r.host_says(HostToMcu::Hello { version: 1 });
    r.host_says(HostToMcu::GetStatus);
    assert!(r.sent.is_empty());
    assert_eq!(r.state(), State::Off);
}

#[test]
fn host_restarting_mid_shutdown_hears_the_request_again() {
    let mut r = rig();
    r.host = HostModel {
        shutdown_ack_ms: None,
        ..HostModel::HEALTHY
    };
    r.boot_to_running();
    r.ignition = false;
    r.run_until(20 * 60_000, |r| !r.shutdown_requests().is_empty())
        .expect("asked");
    r.run(30_000);
    r.host_says(HostToMcu::Hello { version: 1 });
    let again = r.shutdown_requests();
    assert_eq!(again.len(), 2);
    assert!(r.sent.iter().any(|(_, m)| *m
        == McuToHost::ShutdownRequest {
            reason: ShutdownReason::IgnitionOff,
            deadline_ms: 90_000
        }));
}
