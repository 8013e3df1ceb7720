//! The `hw-sim` binary end to end: start it, read the pty path, connect `SerialLink`, drive a
//! scenario from stdin, read its event lines.

use firmware::proto::{Health, McuToHost};
use hw::{Event, LinkOptions, SerialLink};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[test]
fn hw_sim_on_a_pty_drives_power_fail_and_tamper() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hw-sim"))
        .args([
            "--debounce-ms",
            "20",
            "--power-on-delay-ms",
            "20",
            "--hold-up-budget-ms",
            "2000",
            "--exit-after-ms",
            "20000",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn hw-sim");
    let stdout = child.stdout.take().expect("stdout");
    let mut stdin = child.stdin.take().expect("stdin");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = lines
        .recv_timeout(Duration::from_secs(10))
        .expect("first line");
    let path = first.strip_prefix("pty ").expect("pty line").to_string();
    let wait_line = |needle: &str| -> Option<String> {
        let end = Instant::now() + Duration::from_secs(10);
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return Some(l),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
        None
    };
    assert!(wait_line("host-power on").is_some());
    let (link, events) = SerialLink::open(
        &path,
        LinkOptions {
            baud: None,
            ..LinkOptions::default()
        },
    )
    .expect("open pty");
    link.hello().expect("hello");
    link.heartbeat(Health::Ok).expect("heartbeat");
    assert!(wait_line("rx Heartbeat").is_some());
    writeln!(stdin, "tamper").expect("stdin");
    let tamper = events.recv_timeout(Duration::from_secs(10));
    let mut saw_tamper = matches!(tamper, Ok(Event::Message(McuToHost::Tamper)));
    let end = Instant::now() + Duration::from_secs(10);
    while !saw_tamper && Instant::now() < end {
        saw_tamper = matches!(
            events.recv_timeout(Duration::from_secs(1)),
            Ok(Event::Message(McuToHost::Tamper))
        );
    }
    assert!(saw_tamper);
    link.zeroized().expect("zeroized");
    assert!(wait_line("rx Zeroized").is_some());
    writeln!(stdin, "power-fail").expect("stdin");
    assert!(wait_line("tx PowerFail").is_some());
    link.shutdown_ack(true).expect("ack");
    assert!(wait_line("host-power off").is_some());
    writeln!(stdin, "status").expect("stdin");
    let status = wait_line("status").expect("status line");
    assert!(status.contains("last_shutdown=Some(PowerFail)"), "{status}");
    assert!(status.contains("faults=0x04"), "{status}");
    writeln!(stdin, "quit").expect("stdin");
    assert!(wait_line("stopped").is_some());
    let exit = child.wait().expect("exit");
    assert!(exit.success());
}
