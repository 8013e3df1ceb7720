//! `SimBoard` scenarios through the real framing, on the virtual clock.

use crate::daemon::{Behaviour, Bench, HEALTHY};
use firmware::leds::Pattern;
use firmware::proto::{HostFaults, HostToMcu, LinkState, McuToHost, ShutdownReason, StateCode};
use firmware::tamper::Persisted;
use firmware::Settings;
use hw::sim::script::{parse_line, parse_script, Command};
use hw::sim::{SimBoard, SimEvent, TimedEvent};

fn quick() -> Settings {
    Settings {
        off_delay_ms: 60_000,
        ..Settings::DEFAULT_12V
    }
}

fn running(behaviour: Behaviour) -> Bench {
    let mut b = Bench::new(quick(), behaviour);
    b.board.apply(&Command::PowerRestore);
    b.board.apply(&Command::Ignition(true));
    b.run(7_000 + behaviour.boot_ms + 1_000);
    assert_eq!(
        b.board.status().state,
        StateCode::Running,
        "{:?}",
        b.board.drain_events()
    );
    b
}

fn events(b: &mut Bench) -> Vec<TimedEvent> {
    b.board.drain_events()
}

#[test]
fn power_fail_is_acknowledged_within_the_budget_and_power_cut_at_the_ack() {
    let mut b = running(HEALTHY);
    events(&mut b);
    let lost = b.board.now_ms();
    b.board.apply(&Command::PowerFail);
    b.run(3_000);
    let told = b.received(|m| matches!(m, McuToHost::PowerFail { .. }));
    assert_eq!(told.len(), 1);
    assert!(told[0] - lost <= 150, "told after {} ms", told[0] - lost);
    let ev = events(&mut b);
    let acked = ev
        .iter()
        .find(|e| e.event == SimEvent::Received(HostToMcu::ShutdownAck { flushed: true }));
    let cut = ev.iter().find(|e| e.event == SimEvent::HostPower(false));
    let (acked, cut) = (acked.expect("ack"), cut.expect("cut"));
    assert!(acked.at_ms - lost < 8_000, "ack within the budget");
    assert_eq!(cut.at_ms, acked.at_ms, "cut at the ack");
    assert_eq!(
        b.board.status().last_shutdown,
        Some(ShutdownReason::PowerFail)
    );
}

#[test]
fn battery_pulled_mid_write_then_reconnected() {
    let mut b = running(HEALTHY);
    b.board.apply(&Command::Ignition(false));
    b.board.apply(&Command::PowerFail);
    b.run(2_000);
    assert!(!b.board.host_powered());
    assert!(b
        .received(|m| matches!(m, McuToHost::ShutdownRequest { .. }))
        .is_empty());
    b.board.apply(&Command::PowerRestore);
    b.board.apply(&Command::Ignition(true));
    b.run(7_000 + HEALTHY.boot_ms + 1_000);
    assert_eq!(b.board.status().state, StateCode::Running);
}

#[test]
fn power_returning_within_the_budget_carries_on() {
    let mut b = running(Behaviour {
        power_fail_ack_ms: None,
        ..HEALTHY
    });
    b.board.apply(&Command::PowerFail);
    b.run(2_000);
    b.board.apply(&Command::PowerRestore);
    b.run(1_000);
    assert!(b.board.host_powered());
    assert_eq!(b.received(|m| *m == McuToHost::PowerRestored).len(), 1);
    assert_eq!(b.board.status().state, StateCode::Running);
}

#[test]
fn crank_dip_through_the_board_never_shuts_down() {
    let mut b = running(HEALTHY);
    for _ in 0..5 {
        b.board.apply(&Command::Crank {
            dip_mv: 5_000,
            dip_ms: 40,
            reduced_mv: 8_000,
            reduced_ms: 4_000,
        });
        b.run(10_000);
    }
    assert!(b
        .received(|m| matches!(m, McuToHost::PowerFail { .. }))
        .is_empty());
    assert!(b
        .received(|m| matches!(m, McuToHost::ShutdownRequest { .. }))
        .is_empty());
    assert!(!events(&mut b)
        .iter()
        .any(|e| e.event == SimEvent::HostPower(false)));
}

#[test]
fn ignition_flapping_during_off_delay_never_shuts_down_then_off_for_good_does() {
    let mut b = running(HEALTHY);
    for _ in 0..5 {
        b.board.apply(&Command::Ignition(false));
        b.run(45_000);
        b.board.apply(&Command::Ignition(true));
        b.run(3_000);
    }
    assert!(b
        .received(|m| matches!(m, McuToHost::ShutdownRequest { .. }))
        .is_empty());
    assert_eq!(
        b.received(|m| *m == McuToHost::IgnitionChanged { on: false })
            .len(),
        5
    );
    b.board.apply(&Command::Ignition(false));
    b.run(70_000);
    let asked = b.received(|m| {
        *m == McuToHost::ShutdownRequest {
            reason: ShutdownReason::IgnitionOff,
            deadline_ms: 120_000,
        }
    });
    assert_eq!(asked.len(), 1);
    assert!(!b.board.host_powered(), "cut after the ack and halt grace");
}

#[test]
fn host_that_never_acknowledges_is_cut_at_the_deadline() {
    let mut b = running(Behaviour {
        shutdown_ack_ms: None,
        ..HEALTHY
    });
    b.board.apply(&Command::Ignition(false));
    b.run(62_000);
    let asked = b.received(|m| matches!(m, McuToHost::ShutdownRequest { .. }));
    assert_eq!(asked.len(), 1);
    events(&mut b);
    b.run(125_000);
    let cut = events(&mut b)
        .into_iter()
        .find(|e| e.event == SimEvent::HostPower(false));
    assert_eq!(cut.map(|e| e.at_ms), Some(asked[0] + 120_000));
}

#[test]
fn low_battery_shuts_down_in_order_with_the_reason() {
    let mut b = running(HEALTHY);
    b.board.apply(&Command::LowBattery(10_700));
    b.run(65_000);
    assert_eq!(
        b.received(|m| *m == McuToHost::LowBattery { millivolts: 10_700 })
            .len(),
        1
    );
    assert_eq!(
        b.received(|m| matches!(
            m,
            McuToHost::ShutdownRequest {
                reason: ShutdownReason::LowBattery,
                ..
            }
        ))
        .len(),
        1
    );
    assert!(!b.board.host_powered());
    assert_eq!(
        b.board.status().last_shutdown,
        Some(ShutdownReason::LowBattery)
    );
}

#[test]
fn hung_host_is_reset_then_power_cycled_then_held_off_at_the_limit() {
    let mut b = running(Behaviour {
        hang_after_ms: Some(20_000),
        ..HEALTHY
    });
    b.run(60 * 60_000);
    let ev = events(&mut b);
    let resets = ev
        .iter()
        .filter(|e| e.event == SimEvent::HostReset(true))
        .count();
    let cycles = ev
        .iter()
        .filter(|e| {
            e.event
                == SimEvent::State {
                    from: StateCode::Running,
                    to: StateCode::PowerCycle,
                }
        })
        .count();
    assert_eq!(resets, 1, "one reset, then escalation");
    assert_eq!(cycles, 3, "three power cycles in the hour");
    assert_eq!(b.board.status().state, StateCode::Fault);
    assert!(!b.board.host_powered());
    assert_eq!(b.board.leds().fault, Pattern::On);
}

#[test]
fn tamper_while_syncing_is_reported_zeroized_and_latched() {
    let mut b = running(HEALTHY);
    let _ = b.host.send(HostToMcu::SetLeds {
        link: LinkState::Syncing,
        faults: HostFaults::empty(),
    });
    b.run(100);
    assert_eq!(b.board.leds().link, Pattern::FastBlink);
    b.board.apply(&Command::Tamper);
    b.run(1_000);
    assert_eq!(b.received(|m| *m == McuToHost::Tamper).len(), 1);
    let backup = b.board.backup();
    assert!(backup.key_share_erased);
    assert_eq!(
        Persisted::from_word(backup.word),
        Persisted {
            tamper_latched: true,
            host_zeroized: true
        }
    );
    assert_eq!(b.board.leds().fault, Pattern::Code(3));
    assert_eq!(b.board.leds().link, Pattern::FastBlink);
    assert!(b.board.host_powered());
    // The MCU restarts (battery swap): the latch is still there.
    let again = SimBoard::with_backup(quick(), backup).expect("valid");
    assert!(again
        .status()
        .faults
        .contains(firmware::proto::Faults::TAMPER));
}

#[test]
fn garbage_from_the_host_is_rejected_and_the_link_carries_on() {
    let mut b = running(HEALTHY);
    events(&mut b);
    b.board.receive(&[0x42; 500]);
    b.board.receive(&[0x00, 0x13, 0x37, 0x00]);
    b.run(2_000);
    let ev = events(&mut b);
    assert!(ev.iter().any(|e| matches!(e.event, SimEvent::BadFrame(_))));
    assert_eq!(b.board.status().state, StateCode::Running);
}

#[test]
fn bytes_from_an_unpowered_host_are_dropped() {
    let mut board = SimBoard::new(quick()).expect("valid");
    let frame = firmware::proto::frame::encode(0, &HostToMcu::Hello { version: 1 });
    board.receive(&frame);
    board.advance(1_000);
    assert!(board.take_output().is_empty());
    assert!(!board
        .drain_events()
        .iter()
        .any(|e| matches!(e.event, SimEvent::Received(_))));
}

#[test]
fn event_lines_are_stable() {
    let e = TimedEvent {
        at_ms: 42,
        event: SimEvent::Sent(McuToHost::PowerFail { budget_ms: 7_900 }),
    };
    assert_eq!(e.to_string(), "t=42 tx PowerFail { budget_ms: 7900 }");
    let e = TimedEvent {
        at_ms: 7,
        event: SimEvent::HostPower(true),
    };
    assert_eq!(e.to_string(), "t=7 host-power on");
    let e = TimedEvent {
        at_ms: 0,
        event: SimEvent::Vehicle(Command::Ignition(false)),
    };
    assert_eq!(e.to_string(), "t=0 vehicle ignition off");
}

#[test]
fn script_parsing() {
    let text = "# a scenario\nignition on\nwait 7000\ncrank\npower-fail   # pull it\n\npower-restore\nlow-battery 10500\ntamper\nsupply 12600\nstatus\nquit\n";
    let cmds = parse_script(text).expect("parses");
    assert_eq!(
        cmds,
        vec![
            Command::Ignition(true),
            Command::Wait(7_000),
            Command::Crank {
                dip_mv: 5_000,
                dip_ms: 40,
                reduced_mv: 8_500,
                reduced_ms: 3_000
            },
            Command::PowerFail,
            Command::PowerRestore,
            Command::LowBattery(10_500),
            Command::Tamper,
            Command::Supply(12_600),
            Command::Status,
            Command::Quit,
        ]
    );
    for cmd in &cmds {
        assert_eq!(
            parse_line(&cmd.to_string()),
            Ok(Some(*cmd)),
            "display round-trips"
        );
    }
    let err = parse_script("ignition on\nignition maybe\n").expect_err("bad");
    assert_eq!(err.line, 2);
    assert!(parse_line("wait soon").is_err());
    assert!(parse_line("tamper now").is_err());
    assert!(parse_line("launch").is_err());
    assert_eq!(parse_line("   # nothing"), Ok(None));
}
