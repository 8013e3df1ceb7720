//! The daemon's supervisor task against the real firmware: the `hw-sim` binary on a pty (and the
//! in-process simulated board), with a fake daemon recording what it was asked to do.
//!
//! `hw-sim` is found next to this test's target directory (`target/<profile>/hw-sim`), built
//! with cargo first if needed; `HW_SIM=/path/to/hw-sim` overrides. Timings are real time
//! (`--speed 1`) unless a test says otherwise, so budgets are measured as the daemon meets them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use edge_daemon::supervisor::{
    run_supervisor, Health, HostFaults, LinkSource, LinkState, ShutdownReason, SimCommand,
    SimOptions, Supervisor, SupervisorActions, SupervisorExit, SupervisorOptions, SupervisorStatus,
    SupervisorStatusCell,
};
use edge_runtime::config::{SupervisorConfig, SupervisorMode};
use tokio::sync::watch;
use tokio::task::JoinHandle;

// --- the fake daemon -------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Call {
    StopWrites,
    FlushStart,
    FlushEnd(bool),
    Resume,
    Shred(bool),
    Prepare(ShutdownReason),
}

struct Fake {
    calls: Mutex<Vec<(Instant, Call)>>,
    flush_time: Duration,
    flush_ok: bool,
    shred_failures: AtomicU32,
    leds: Mutex<(LinkState, HostFaults)>,
}

impl Fake {
    fn new(flush_time: Duration) -> Arc<Fake> {
        Arc::new(Fake {
            calls: Mutex::new(Vec::new()),
            flush_time,
            flush_ok: true,
            shred_failures: AtomicU32::new(0),
            leds: Mutex::new((LinkState::Cellular, HostFaults::empty())),
        })
    }

    fn record(&self, c: Call) {
        self.calls.lock().unwrap().push((Instant::now(), c));
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().iter().map(|(_, c)| *c).collect()
    }

    fn when(&self, c: Call) -> Option<Instant> {
        self.calls
            .lock()
            .unwrap()
            .iter()
            .find(|(_, x)| *x == c)
            .map(|(t, _)| *t)
    }
}

impl SupervisorActions for Fake {
    fn flush(&self) -> bool {
        self.record(Call::FlushStart);
        std::thread::sleep(self.flush_time);
        self.record(Call::FlushEnd(self.flush_ok));
        self.flush_ok
    }
    fn stop_writes(&self) {
        self.record(Call::StopWrites);
    }
    fn resume_writes(&self) {
        self.record(Call::Resume);
    }
    fn shred(&self) -> bool {
        let fail = self
            .shred_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        self.record(Call::Shred(!fail));
        !fail
    }
    fn health(&self) -> Health {
        Health::Ok
    }
    fn led_state(&self) -> (LinkState, HostFaults) {
        *self.leds.lock().unwrap()
    }
    fn prepare_shutdown(&self, reason: ShutdownReason, time_left: Duration) {
        assert!(time_left <= Duration::from_secs(120));
        self.record(Call::Prepare(reason));
    }
}

// --- hw-sim ------------------------------------------------------------------------------------

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `target/<profile>/hw-sim`, built by cargo first (a no-op when up to date).
fn hw_sim_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(p) = std::env::var_os("HW_SIM") {
            return PathBuf::from(p);
        }
        // This test runs as target/<profile>/deps/supervisor-<hash>.
        let exe = std::env::current_exe().unwrap();
        let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
        let bin = profile_dir.join("hw-sim");
        let target_dir = profile_dir.parent().unwrap();
        let mut cmd = Command::new(env!("CARGO"));
        cmd.args(["build", "--quiet", "-p", "hw", "--bin", "hw-sim"])
            .arg("--manifest-path")
            .arg(workspace_root().join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let built = cmd.status().map(|s| s.success()).unwrap_or(false);
        assert!(
            built || bin.exists(),
            "cannot build hw-sim; build it with `cargo build -p hw --bin hw-sim` or set HW_SIM"
        );
        bin
    })
}

/// A running `hw-sim`: its pty, its stdin, and its event lines with the instant each was read.
struct HwSim {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
    pty: PathBuf,
}

impl HwSim {
    fn start(args: &[&str]) -> HwSim {
        let mut child = Command::new(hw_sim_path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hw-sim");
        let stdout = child.stdout.take().unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let (_, first) = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("pty line");
        let pty = PathBuf::from(first.strip_prefix("pty ").expect("pty line"));
        let mut sim = HwSim {
            child,
            stdin,
            lines,
            seen: Vec::new(),
            pty,
        };
        sim.wait_for("host-power on", Duration::from_secs(10))
            .expect("host powered");
        sim
    }

    fn cmd(&mut self, line: &str) -> Instant {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
        Instant::now()
    }

    /// The next line containing `needle` (lines before it are kept in `seen`).
    fn wait_for(&mut self, needle: &str, timeout: Duration) -> Option<(Instant, String)> {
        let end = Instant::now() + timeout;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok((t, l)) => {
                    self.seen.push((t, l.clone()));
                    if l.contains(needle) {
                        return Some((t, l));
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Every line so far, after collecting for `settle`.
    fn lines_after(&mut self, settle: Duration) -> Vec<String> {
        let end = Instant::now() + settle;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(l) => self.seen.push(l),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
        }
        self.seen.iter().map(|(_, l)| l.clone()).collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HwSim {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Virtual time of an `hw-sim` line (`t=<ms> ...`).
fn t_of(line: &str) -> u64 {
    line.strip_prefix("t=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"))
}

const FAST_BOOT: [&str; 4] = ["--debounce-ms", "20", "--power-on-delay-ms", "20"];

fn sim_args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut v: Vec<&str> = FAST_BOOT.to_vec();
    v.extend_from_slice(extra);
    v
}

fn test_options() -> SupervisorOptions {
    SupervisorOptions {
        heartbeat: Duration::from_secs(1),
        tick: Duration::from_millis(50),
        baud: None,
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_millis(500),
        shred_retry: Duration::from_millis(300),
        ack_linger: Duration::from_millis(300),
        power_cut_grace: Duration::from_secs(2),
    }
}

struct Running {
    task: JoinHandle<SupervisorExit>,
    status: SupervisorStatusCell,
    stop: watch::Sender<bool>,
}

fn start(source: LinkSource, fake: &Arc<Fake>) -> Running {
    let sup = Supervisor::new(source, test_options()).unwrap();
    run(sup, fake)
}

fn run(sup: Supervisor, fake: &Arc<Fake>) -> Running {
    let status = sup.status();
    let (stop, _) = watch::channel(false);
    let actions: Arc<dyn SupervisorActions> = fake.clone();
    let task = tokio::spawn(sup.run(actions, stop.clone()));
    Running { task, status, stop }
}

fn wait_status(
    status: &SupervisorStatusCell,
    timeout: Duration,
    f: impl Fn(&SupervisorStatus) -> bool,
) -> SupervisorStatus {
    let end = Instant::now() + timeout;
    loop {
        let s = status.get();
        if f(&s) {
            return s;
        }
        assert!(Instant::now() < end, "status never matched: {s:#?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_calls(fake: &Fake, timeout: Duration, f: impl Fn(&[Call]) -> bool) -> Vec<Call> {
    let end = Instant::now() + timeout;
    loop {
        let c = fake.calls();
        if f(&c) {
            return c;
        }
        assert!(Instant::now() < end, "calls never matched: {c:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Start `hw-sim`, connect the supervisor task and wait for the handshake.
fn connected(extra: &[&str], fake: &Arc<Fake>) -> (HwSim, Running) {
    let mut sim = HwSim::start(&sim_args(extra));
    let r = start(LinkSource::Serial(sim.pty.clone()), fake);
    sim.wait_for("rx Hello", Duration::from_secs(10))
        .expect("daemon hello");
    sim.wait_for("rx Heartbeat", Duration::from_secs(10))
        .expect("daemon heartbeat");
    wait_status(&r.status, Duration::from_secs(10), |s| s.connected);
    (sim, r)
}

// --- (1) ignition off → shutdown ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ignition_off_shutdown_flushes_before_the_ack_and_stops_the_daemon() {
    let fake = Fake::new(Duration::from_millis(300));
    let (mut sim, r) = connected(
        &[
            "--off-delay-ms",
            "300",
            "--shutdown-deadline-ms",
            "10000",
            "--halt-grace-ms",
            "500",
        ],
        &fake,
    );
    wait_status(&r.status, Duration::from_secs(5), |s| {
        s.mcu_status.is_some()
    });
    let mut stopped = r.stop.subscribe();
    sim.cmd("ignition off");
    let (_, req) = sim
        .wait_for("tx ShutdownRequest", Duration::from_secs(10))
        .expect("shutdown request");
    assert!(req.contains("IgnitionOff"), "{req}");
    let (ack_seen, ack) = sim
        .wait_for("rx ShutdownAck", Duration::from_secs(10))
        .expect("shutdown ack");
    assert!(ack.contains("flushed: true"), "{ack}");
    let (_, cut) = sim
        .wait_for("host-power off", Duration::from_secs(5))
        .expect("power cut");
    // The ack came after the whole flush (300 ms of virtual = real time)...
    // (The board stamps lines at its 5 ms polling rounds: allow that much jitter.)
    assert!(t_of(&ack) - t_of(&req) >= 290, "{req} / {ack}");
    let flushed_at = fake.when(Call::FlushEnd(true)).expect("flushed");
    assert!(flushed_at <= ack_seen);
    // ...and power went at the ack plus the halt grace.
    let grace = t_of(&cut) - t_of(&ack);
    assert!((500..=520).contains(&grace), "{ack} / {cut}");
    assert_eq!(
        fake.calls(),
        [
            Call::Prepare(ShutdownReason::IgnitionOff),
            Call::StopWrites,
            Call::FlushStart,
            Call::FlushEnd(true)
        ]
    );
    // The daemon was told to stop, and the supervisor task ended.
    tokio::time::timeout(Duration::from_secs(5), stopped.wait_for(|v| *v))
        .await
        .expect("daemon stop signalled")
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("supervisor task ends")
        .unwrap();
    assert_eq!(
        exit,
        SupervisorExit::ShutdownRequested {
            reason: ShutdownReason::IgnitionOff,
            flushed: true
        }
    );
    let s = r.status.get();
    assert_eq!(s.ignition_on, Some(false));
    assert_eq!(s.shutdown_requested.as_deref(), Some("IgnitionOff"));
    assert_eq!(s.shutdown_acked, Some(true));
    eprintln!(
        "shutdown: request t={} ack t={} cut t={}",
        t_of(&req),
        t_of(&ack),
        t_of(&cut)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_battery_shutdown_is_handled_like_ignition_off() {
    let fake = Fake::new(Duration::from_millis(50));
    let (mut sim, r) = connected(&["--low-battery-for-ms", "300"], &fake);
    sim.cmd("low-battery 10500");
    let (_, req) = sim
        .wait_for("tx ShutdownRequest", Duration::from_secs(10))
        .expect("shutdown request");
    assert!(req.contains("LowBattery"), "{req}");
    sim.wait_for("rx ShutdownAck { flushed: true }", Duration::from_secs(10))
        .expect("ack");
    let exit = tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("supervisor task ends")
        .unwrap();
    assert_eq!(
        exit,
        SupervisorExit::ShutdownRequested {
            reason: ShutdownReason::LowBattery,
            flushed: true
        }
    );
    let s = r.status.get();
    assert_eq!(s.low_battery_mv, Some(10_500));
    assert_eq!(s.shutdown_requested.as_deref(), Some("LowBattery"));
    assert!(*r.stop.borrow());
}

// --- (2) power fail -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_fail_stops_writes_and_flushes_within_the_budget() {
    let fake = Fake::new(Duration::from_millis(200));
    let (mut sim, r) = connected(&[], &fake); // rev A: 8 s hold-up budget
    let asked = sim.cmd("power-fail");
    let (_, pf) = sim
        .wait_for("tx PowerFail", Duration::from_secs(5))
        .expect("power fail");
    let budget: u64 = pf
        .split("budget_ms: ")
        .nth(1)
        .and_then(|r| r.trim_end_matches(" }").parse().ok())
        .expect("budget");
    let (ack_seen, ack) = sim
        .wait_for("rx ShutdownAck", Duration::from_secs(10))
        .expect("ack");
    assert!(ack.contains("flushed: true"), "{ack}");
    let (_, cut) = sim
        .wait_for("host-power off", Duration::from_secs(5))
        .expect("cut");
    assert_eq!(t_of(&cut), t_of(&ack), "cut at the ack");
    let virtual_ms = t_of(&ack) - t_of(&pf);
    let real_ms = u64::try_from((ack_seen - asked).as_millis()).unwrap();
    // Well within the budget: the daemon aims for half.
    assert!(virtual_ms * 2 < budget, "{virtual_ms} ms of {budget}");
    assert!(real_ms * 2 < budget, "{real_ms} ms of {budget}");
    let calls = fake.calls();
    assert_eq!(
        calls[..3],
        [Call::StopWrites, Call::FlushStart, Call::FlushEnd(true)]
    );
    let s = r.status.get();
    assert_eq!(s.power_fails, 1);
    let ack_ms = s.last_power_fail_ack_ms.expect("ack latency");
    assert!(ack_ms >= 200 && ack_ms * 2 < budget, "{ack_ms}");
    eprintln!(
        "power-fail: budget {budget} ms; PowerFail→ack {virtual_ms} ms (board clock), \
         stdin→ack line {real_ms} ms (wall), daemon receipt→ack {ack_ms} ms (flush 200 ms)"
    );
    // The simulated rail is only a signal: the daemon lives on, notices it was not cut and
    // resumes, and the board (ignition still on, input gone) keeps it off.
    wait_calls(&fake, Duration::from_secs(5), |c| c.contains(&Call::Resume));
    assert!(!r.status.get().power_fail);
    assert!(!r.task.is_finished());
    // Its heartbeats now go unanswered: shown as a fault, not fatal.
    let s = wait_status(&r.status, Duration::from_secs(10), |s| !s.connected);
    assert!(
        s.fault.as_deref().unwrap_or("").contains("not answering"),
        "{s:?}"
    );
    assert!(s.link_up);
    r.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_restored_during_the_flush_resumes_without_acknowledging() {
    let fake = Fake::new(Duration::from_millis(1_500));
    let (mut sim, r) = connected(&[], &fake);
    sim.cmd("power-fail");
    sim.wait_for("tx PowerFail", Duration::from_secs(5))
        .expect("power fail");
    sim.cmd("power-restore");
    sim.wait_for("tx PowerRestored", Duration::from_secs(5))
        .expect("restored");
    let calls = wait_calls(&fake, Duration::from_secs(5), |c| c.contains(&Call::Resume));
    assert_eq!(
        calls,
        [
            Call::StopWrites,
            Call::FlushStart,
            Call::FlushEnd(true),
            Call::Resume
        ]
    );
    let lines = sim.lines_after(Duration::from_millis(1_000));
    assert!(
        !lines
            .iter()
            .any(|l| l.contains("rx ShutdownAck") || l.contains("host-power off")),
        "{lines:#?}"
    );
    let s = r.status.get();
    assert!(!s.power_fail);
    assert_eq!((s.power_fails, s.power_restores), (1, 1));
    assert!(s.connected);
    r.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flush_slower_than_the_budget_is_acknowledged_unflushed_in_time() {
    let fake = Fake::new(Duration::from_millis(2_500));
    let (mut sim, r) = connected(&["--hold-up-budget-ms", "2000"], &fake);
    sim.cmd("power-fail");
    let (_, pf) = sim
        .wait_for("tx PowerFail", Duration::from_secs(5))
        .expect("power fail");
    let (_, ack) = sim
        .wait_for("rx ShutdownAck", Duration::from_secs(5))
        .expect("ack");
    assert!(ack.contains("flushed: false"), "{ack}");
    let took = t_of(&ack) - t_of(&pf);
    assert!((1_400..2_000).contains(&took), "acked after {took} ms");
    assert!(!fake.calls().contains(&Call::FlushEnd(true)));
    r.task.abort();
}

// --- (3) tamper ---------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tamper_shreds_the_key_then_reports_zeroized() {
    let fake = Fake::new(Duration::ZERO);
    let (mut sim, r) = connected(&[], &fake);
    sim.cmd("tamper");
    sim.wait_for("key-share-erased", Duration::from_secs(5))
        .expect("mcu share erased");
    sim.wait_for("tx Tamper", Duration::from_secs(5))
        .expect("tamper sent");
    let (zeroized_seen, _) = sim
        .wait_for("rx Zeroized", Duration::from_secs(5))
        .expect("zeroized");
    let shredded = fake.when(Call::Shred(true)).expect("shredded");
    assert!(shredded <= zeroized_seen);
    assert_eq!(fake.calls(), [Call::Shred(true)]);
    let s = wait_status(&r.status, Duration::from_secs(5), |s| s.zeroized);
    assert!(s.tamper_seen);
    // The daemon keeps running (serving refuses: the cache is gone) and keeps heartbeating.
    sim.wait_for("rx Heartbeat", Duration::from_secs(5))
        .expect("heartbeats go on");
    sim.cmd("status");
    let (_, st) = sim
        .wait_for(" status ", Duration::from_secs(5))
        .expect("status");
    assert!(st.contains("faults=0x04"), "{st}");
    assert!(!r.task.is_finished());
    r.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_shred_is_retried_and_zeroized_only_after_success() {
    let fake = Fake::new(Duration::ZERO);
    fake.shred_failures.store(2, Ordering::SeqCst);
    let (mut sim, r) = connected(&[], &fake);
    sim.cmd("tamper");
    sim.wait_for("rx Zeroized", Duration::from_secs(10))
        .expect("zeroized");
    assert_eq!(
        fake.calls(),
        [Call::Shred(false), Call::Shred(false), Call::Shred(true)]
    );
    let s = wait_status(&r.status, Duration::from_secs(5), |s| s.zeroized);
    assert_eq!(s.shred_failures, 2);
    r.task.abort();
}

// --- (4) watchdog -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_the_watchdog_quiet_and_silence_trips_it() {
    let fake = Fake::new(Duration::ZERO);
    let (mut sim, r) = connected(
        &["--watchdog-timeout-ms", "3000", "--boot-timeout-ms", "5000"],
        &fake,
    );
    let lines = sim.lines_after(Duration::from_secs(10));
    let trouble: Vec<&String> = lines
        .iter()
        .filter(|l| {
            l.contains("host-reset") || l.contains("-> PowerCycle") || l.contains("-> Fault")
        })
        .collect();
    assert!(trouble.is_empty(), "{trouble:#?}");
    let beats = lines.iter().filter(|l| l.contains("rx Heartbeat")).count();
    assert!(beats >= 9, "{beats} heartbeats in 10 s");
    // A wedged daemon stops heartbeating: the watchdog resets the host ~3 s later.
    r.task.abort();
    let quiet_from = Instant::now();
    sim.wait_for("host-reset on", Duration::from_secs(6))
        .expect("watchdog reset");
    let after = quiet_from.elapsed();
    assert!(after >= Duration::from_secs(2), "{after:?}");
    eprintln!("watchdog: {beats} heartbeats in 10 s, no reset; reset {after:?} after silence");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_heartbeat_satisfies_the_default_watchdog_at_4x_speed() {
    // 10 s of wall time = 40 s on the board's clock; the 30 s watchdog would fire without
    // heartbeats (every 5 s = 20 s of board time).
    let fake = Fake::new(Duration::ZERO);
    let mut sim = HwSim::start(&sim_args(&["--speed", "4"]));
    let sup = Supervisor::new(
        LinkSource::Serial(sim.pty.clone()),
        SupervisorOptions {
            baud: None,
            ..SupervisorOptions::default()
        },
    )
    .unwrap();
    let r = run(sup, &fake);
    sim.wait_for("rx Hello", Duration::from_secs(5))
        .expect("hello");
    let mut lines = sim.lines_after(Duration::from_secs(10));
    sim.cmd("status");
    let (_, st) = sim
        .wait_for(" status ", Duration::from_secs(5))
        .expect("status");
    assert!(t_of(&st) >= 38_000, "board time: {st}");
    assert!(st.contains("state=Running"), "{st}");
    lines.push(st);
    assert!(
        !lines.iter().any(|l| l.contains("host-reset")),
        "{lines:#?}"
    );
    assert!(lines.iter().filter(|l| l.contains("rx Heartbeat")).count() >= 2);
    r.task.abort();
}

// --- (5) the device vanishing -------------------------------------------------------------------

fn point(link: &Path, target: &Path) {
    let tmp = link.with_extension("new");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp).unwrap();
    std::fs::rename(&tmp, link).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_the_device_vanishing_and_reconnects_to_a_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("ttyMCU");
    let fake = Fake::new(Duration::ZERO);
    // Absent at start: the task waits, reports the fault, and does not exit.
    let r = start(LinkSource::Serial(dev.clone()), &fake);
    let s = wait_status(&r.status, Duration::from_secs(5), |s| s.link_failures >= 2);
    assert!(!s.link_up && !s.connected);
    assert!(s.fault.as_deref().unwrap_or("").contains("ttyMCU"), "{s:?}");

    let mut a = HwSim::start(&FAST_BOOT);
    point(&dev, &a.pty);
    a.wait_for("rx Hello", Duration::from_secs(5))
        .expect("hello to the first board");
    wait_status(&r.status, Duration::from_secs(5), |s| s.connected);

    // The board (and its pty) vanish.
    a.kill();
    let s = wait_status(&r.status, Duration::from_secs(5), |s| !s.connected);
    assert!(s.fault.is_some(), "{s:?}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(!r.task.is_finished());

    // A new board appears behind the same name.
    let mut b = HwSim::start(&FAST_BOOT);
    point(&dev, &b.pty);
    let appeared = Instant::now();
    b.wait_for("rx Hello", Duration::from_secs(5))
        .expect("hello to the second board");
    b.wait_for("rx Heartbeat", Duration::from_secs(5))
        .expect("heartbeat to the second board");
    let s = wait_status(&r.status, Duration::from_secs(5), |s| s.connected);
    let took = appeared.elapsed();
    assert!(s.link_opens >= 2 && s.fault.is_none(), "{s:?}");
    assert!(!r.task.is_finished());
    eprintln!("reconnect: hello to the new board {took:?} after it appeared; {s:?}");

    // And the daemon still obeys the new board.
    b.cmd("tamper");
    b.wait_for("rx Zeroized", Duration::from_secs(5))
        .expect("zeroized on the new board");
    r.task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn led_changes_are_sent() {
    let fake = Fake::new(Duration::ZERO);
    let (mut sim, r) = connected(&[], &fake);
    *fake.leds.lock().unwrap() = (LinkState::Syncing, HostFaults::CERT_EXPIRED);
    let (_, l) = sim
        .wait_for("rx SetLeds", Duration::from_secs(5))
        .expect("leds");
    let l = if l.contains("Syncing") {
        l
    } else {
        sim.wait_for("Syncing", Duration::from_secs(5))
            .expect("syncing leds")
            .1
    };
    assert!(l.contains("Syncing"), "{l}");
    sim.cmd("status");
    let (_, st) = sim
        .wait_for(" status ", Duration::from_secs(5))
        .expect("status");
    assert!(st.contains("faults=0x08"), "{st}");
    r.task.abort();
}

// --- in-process board and configuration ----------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_in_process_simulated_board_works_too() {
    let mut settings = SimOptions::default().settings;
    settings.ignition_debounce_ms = 20;
    settings.power_on_delay_ms = 20;
    let sup = Supervisor::new(
        LinkSource::Sim(SimOptions {
            settings,
            ..SimOptions::default()
        }),
        test_options(),
    )
    .unwrap();
    let commands = sup.sim_commands().expect("sim commands");
    let fake = Fake::new(Duration::from_millis(100));
    let r = run(sup, &fake);
    let s = wait_status(&r.status, Duration::from_secs(10), |s| s.connected);
    assert_eq!(s.mode, "sim");
    commands.send(SimCommand::PowerFail).expect("board running");
    let s = wait_status(&r.status, Duration::from_secs(10), |s| {
        s.last_power_fail_ack_ms.is_some()
    });
    assert!(
        s.power_fails == 1 && s.last_power_fail_ack_ms.unwrap() < 1_000,
        "{s:?}"
    );
    assert_eq!(
        fake.calls()[..3],
        [Call::StopWrites, Call::FlushStart, Call::FlushEnd(true)]
    );
    r.stop.send_replace(true);
    let exit = tokio::time::timeout(Duration::from_secs(5), r.task)
        .await
        .expect("stops")
        .unwrap();
    assert_eq!(exit, SupervisorExit::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_supervisor_follows_the_config() {
    let fake: Arc<dyn SupervisorActions> = Fake::new(Duration::ZERO);
    // none: returns at once.
    let (stop, _) = watch::channel(false);
    let status = SupervisorStatusCell::default();
    let exit = tokio::time::timeout(
        Duration::from_secs(1),
        run_supervisor(
            &SupervisorConfig::default(),
            fake.clone(),
            status.clone(),
            stop,
        ),
    )
    .await
    .expect("immediate");
    assert_eq!(exit, SupervisorExit::Disabled);
    assert_eq!(status.get().mode, "none");
    // serial to a device that is not there: keeps trying, reports it, stops with the daemon.
    let cfg = SupervisorConfig {
        mode: SupervisorMode::Serial,
        device: Some("/dev/kerbside-no-such-tty".into()),
    };
    let (stop, _) = watch::channel(false);
    let status = SupervisorStatusCell::default();
    let task = tokio::spawn({
        let (fake, status, stop) = (fake.clone(), status.clone(), stop.clone());
        async move { run_supervisor(&cfg, fake, status, stop).await }
    });
    let s = wait_status(&status, Duration::from_secs(5), |s| s.fault.is_some());
    assert_eq!(s.mode, "serial");
    assert!(
        s.fault.as_deref().unwrap().contains("kerbside-no-such-tty"),
        "{s:?}"
    );
    assert!(!task.is_finished());
    stop.send_replace(true);
    let exit = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("stops promptly")
        .unwrap();
    assert_eq!(exit, SupervisorExit::Stopped);
}
