//! `SerialLink` against the simulated board: in-process channels and a real pty.

use firmware::proto::{Health, HostToMcu, McuToHost, ShutdownReason};
use firmware::Settings;
use hw::channel::duplex;
use hw::serial::{Port, Pty};
use hw::sim::runner::{spawn, RunOptions, RunnerEvent, SimHandle};
use hw::sim::script::Command;
use hw::sim::{SimBoard, SimEvent};
use hw::{Event, LinkOptions, SerialLink};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// Short timings so real-time tests finish quickly.
fn fast() -> Settings {
    Settings {
        ignition_debounce_ms: 20,
        power_on_delay_ms: 20,
        boot_timeout_ms: 5_000,
        off_delay_ms: 300,
        shutdown_deadline_ms: 2_000,
        halt_grace_ms: 50,
        hold_up_budget_ms: 3_000,
        watchdog_timeout_ms: 3_000,
        reset_pulse_ms: 50,
        power_cycle_off_ms: 100,
        ..Settings::DEFAULT_12V
    }
}

fn start(port: impl Port + 'static) -> SimHandle {
    let mut board = SimBoard::new(fast()).expect("valid");
    board.apply(&Command::PowerRestore);
    board.apply(&Command::Ignition(true));
    spawn(board, port, RunOptions::default())
}

fn wait_for(
    events: &Receiver<Event>,
    limit: Duration,
    mut pred: impl FnMut(&Event) -> bool,
) -> Option<Event> {
    let end = Instant::now() + limit;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(e) if pred(&e) => return Some(e),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

fn board_event(
    events: &Receiver<RunnerEvent>,
    limit: Duration,
    pred: impl Fn(&SimEvent) -> bool,
) -> Option<u64> {
    let end = Instant::now() + limit;
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        match events.recv_timeout(left) {
            Ok(RunnerEvent::Board(e)) if pred(&e.event) => return Some(e.at_ms),
            Ok(_) => {}
            Err(_) => return None,
        }
    }
    None
}

/// Host power comes on, the daemon says hello, heartbeats, and gets a power-fail it acks.
fn power_fail_flow(link: &SerialLink, events: &Receiver<Event>, sim: &mut SimHandle) {
    let sim_events = sim.take_events().expect("events");
    assert!(board_event(&sim_events, Duration::from_secs(5), |e| *e
        == SimEvent::HostPower(true))
    .is_some());
    link.hello().expect("hello");
    let hello = wait_for(events, Duration::from_secs(5), |e| {
        matches!(e, Event::Message(McuToHost::Hello { .. }))
    });
    assert!(
        matches!(
            hello,
            Some(Event::Message(McuToHost::Hello { version: 1, .. }))
        ),
        "{hello:?}"
    );
    link.heartbeat(Health::Ok).expect("heartbeat");
    link.get_status().expect("status");
    assert!(wait_for(events, Duration::from_secs(5), |e| matches!(
        e,
        Event::Message(McuToHost::Status(_))
    ))
    .is_some());
    sim.command(Command::PowerFail);
    let fail = wait_for(events, Duration::from_secs(5), |e| {
        matches!(e, Event::Message(McuToHost::PowerFail { .. }))
    });
    let Some(Event::Message(McuToHost::PowerFail { budget_ms })) = fail else {
        panic!("no power-fail: {fail:?}")
    };
    assert!(budget_ms > 2_000 && budget_ms <= 3_000, "{budget_ms}");
    link.shutdown_ack(true).expect("ack");
    let cut = board_event(&sim_events, Duration::from_secs(5), |e| {
        *e == SimEvent::HostPower(false)
    });
    assert!(cut.is_some(), "power cut at the ack");
    assert_eq!(link.stats().bad_frames, 0);
}

#[test]
fn serial_link_over_in_process_channels() {
    let (host_end, board_end) = duplex();
    let mut sim = start(board_end);
    let (reader, writer) = host_end.split();
    let (link, events) = SerialLink::new(reader, writer, LinkOptions::default());
    power_fail_flow(&link, &events, &mut sim);
    let board = sim.stop().expect("board");
    assert_eq!(
        board.status().last_shutdown,
        Some(ShutdownReason::PowerFail)
    );
}

#[test]
fn serial_link_over_a_pty() {
    let pty = Pty::open().expect("pty");
    let path = pty.path().to_path_buf();
    let mut sim = start(pty.into_port());
    let (link, events) = SerialLink::open(
        &path,
        LinkOptions {
            baud: None,
            ..LinkOptions::default()
        },
    )
    .expect("open pty");
    power_fail_flow(&link, &events, &mut sim);
    drop(sim.stop());
    // The board is gone: the link reports it closed.
    assert!(wait_for(&events, Duration::from_secs(5), |e| *e == Event::Closed).is_some());
}

#[test]
fn daemon_that_stops_heartbeating_is_reset_by_the_simulated_supervisor() {
    let (host_end, board_end) = duplex();
    let mut sim = start(board_end);
    let sim_events = sim.take_events().expect("events");
    let (reader, writer) = host_end.split();
    let (link, _events) = SerialLink::new(reader, writer, LinkOptions::default());
    assert!(board_event(&sim_events, Duration::from_secs(5), |e| *e
        == SimEvent::HostPower(true))
    .is_some());
    link.hello().expect("hello");
    for _ in 0..5 {
        link.heartbeat(Health::Ok).expect("heartbeat");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Silence: the 3 s watchdog fires and resets the host...
    let reset = board_event(&sim_events, Duration::from_secs(15), |e| {
        *e == SimEvent::HostReset(true)
    });
    assert!(reset.is_some());
    // ...which still says nothing: after the 5 s boot timeout it is power-cycled.
    let off = board_event(&sim_events, Duration::from_secs(15), |e| {
        *e == SimEvent::HostPower(false)
    });
    assert!(off.is_some());
    let on = board_event(&sim_events, Duration::from_secs(5), |e| {
        *e == SimEvent::HostPower(true)
    });
    assert!(on.is_some());
    let board = sim.stop().expect("board");
    assert_eq!(board.status().power_cycles_last_hour, 1);
}

#[test]
fn daemon_restart_on_the_same_pty_is_heard() {
    let pty = Pty::open().expect("pty");
    let path = pty.path().to_path_buf();
    let mut sim = start(pty.into_port());
    let sim_events = sim.take_events().expect("events");
    let on = board_event(&sim_events, Duration::from_secs(5), |e| {
        *e == SimEvent::HostPower(true)
    });
    assert!(on.is_some());
    let options = LinkOptions {
        baud: None,
        ..LinkOptions::default()
    };
    for _ in 0..3 {
        let (link, events) = SerialLink::open(&path, options).expect("open pty");
        link.hello().expect("hello");
        let hello = wait_for(&events, Duration::from_secs(5), |e| {
            matches!(e, Event::Message(McuToHost::Hello { .. }))
        });
        assert!(
            hello.is_some(),
            "each new daemon gets the supervisor's hello"
        );
        link.heartbeat(Health::Ok).expect("heartbeat");
        drop(link);
    }
    drop(sim.stop());
}

#[test]
fn unacknowledged_messages_come_back_as_undelivered() {
    // A "board" that never answers: the other end of the channel is held but never read.
    let (host_end, _silent) = duplex();
    let (reader, writer) = host_end.split();
    let options = LinkOptions {
        link: firmware::link::LinkConfig {
            retransmit_ms: 20,
            max_attempts: 2,
        },
        ..LinkOptions::default()
    };
    let (link, events) = SerialLink::new(reader, writer, options);
    link.send(HostToMcu::Zeroized).expect("queued");
    let e = wait_for(&events, Duration::from_secs(5), |e| {
        matches!(e, Event::Undelivered(_))
    });
    assert_eq!(e, Some(Event::Undelivered(HostToMcu::Zeroized)));
}

#[test]
fn bad_input_to_the_driver_is_reported_without_unbounded_buffering() {
    let (host_end, board_end) = duplex();
    let (reader, writer) = host_end.split();
    let (link, events) = SerialLink::new(reader, writer, LinkOptions::default());
    let (_board_rx, mut board_tx) = board_end.split();
    use std::io::Write;
    // A flood with no delimiter, then corrupt, wrong-version and unknown-kind frames.
    board_tx.write_all(&vec![0x55; 1_000_000]).expect("write");
    board_tx.write_all(&[0]).expect("write");
    let mut corrupt = firmware::proto::frame::encode(1, &McuToHost::Tamper).to_vec();
    corrupt[2] ^= 0x10;
    board_tx.write_all(&corrupt).expect("write");
    // Wrong direction: a host-to-MCU kind arriving at the host is an unknown kind.
    board_tx
        .write_all(&firmware::proto::frame::encode(2, &HostToMcu::GetStatus))
        .expect("write");
    board_tx
        .write_all(&firmware::proto::frame::encode(
            3,
            &McuToHost::PowerRestored,
        ))
        .expect("write");
    let mut bad = Vec::new();
    let good = wait_for(&events, Duration::from_secs(10), |e| {
        if let Event::BadFrame(err) = e {
            bad.push(*err);
        }
        matches!(e, Event::Message(_))
    });
    assert_eq!(good, Some(Event::Message(McuToHost::PowerRestored)));
    assert!(link.stats().bad_frames >= 3, "{:?}", link.stats());
}
