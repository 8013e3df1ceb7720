//! The test harness on the QEMU board's second UART (QEMU build only).
//!
//! QEMU cannot drive the vehicle's signals (ignition, input voltage, tamper switch), so a test
//! sends them as text lines, and the image reports what it did, in exactly the line language of
//! `hw-sim` (the simulated board on the host): the same commands in, the same `t=<ms> ...` event
//! lines out, so one scenario list drives both boards.
//!
//! In: `set KEY VALUE` and `start` (before the supervisor starts: its settings, with `hw-sim`'s
//! flag names), then `ignition on|off`, `supply MV`, `crank [DIP_MV DIP_MS REDUCED_MV REDUCED_MS]`,
//! `power-fail`, `power-restore`, `low-battery [MV]`, `tamper`, `noise`, `status`, `stats`, `panic`,
//! `hang` (the loop stops: the MCU watchdog must reset it).
//! Out: `boot ...`, `started`, `t=<ms> state Off -> PowerOnDelay`, `t=<ms> host-power on`,
//! `t=<ms> tx PowerFail { budget_ms: 8000 }`, `t=<ms> rx ShutdownAck { flushed: true }`,
//! `t=<ms> bad-frame ...`, `t=<ms> status state=... host_power=true`, `t=<ms> stats ...`,
//! `error ...` for a line it cannot use. Nothing here panics on any input.

use crate::app::Event;
use core::fmt::{self, Write};
use firmware::Settings;

/// Longest command line; longer lines are dropped whole with an `error` line.
pub const LINE_MAX: usize = 80;

/// A vehicle command (the same set as `hw::sim::script::Command`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vehicle {
    /// Ignition switch.
    Ignition(bool),
    /// Input voltage.
    Supply(u16),
    /// Engine start: a short deep dip, then a reduced level, then back.
    Crank {
        /// Dip level.
        dip_mv: u16,
        /// Dip length.
        dip_ms: u64,
        /// Level while the starter turns.
        reduced_mv: u16,
        /// Length of the reduced level.
        reduced_ms: u64,
    },
    /// Input lost (0 V).
    PowerFail,
    /// Input back at the nominal voltage.
    PowerRestore,
    /// Input at a low-battery level.
    LowBattery(u16),
    /// Enclosure opened (a 100 ms pulse of the switch).
    Tamper,
    /// Two bad frames on the line to the host ([`LINE_NOISE`]).
    Noise,
}

/// What `noise` puts on the host link: `hw::sim::LINE_NOISE`, the same bytes as the simulated
/// board (a `PowerFail` frame with one CRC bit flipped, then line noise).
pub const LINE_NOISE: [u8; 18] = [
    0x03, 0x01, 0x09, 0x04, 0x05, 0xdc, 0x1e, 0x01, 0x03, 0x25, 0xc0, 0x00, 0x55, 0xaa, 0x13, 0x37,
    0xfe, 0x00,
];

impl fmt::Display for Vehicle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Vehicle::Ignition(on) => write!(f, "ignition {}", on_off(on)),
            Vehicle::Supply(mv) => write!(f, "supply {mv}"),
            Vehicle::Crank {
                dip_mv,
                dip_ms,
                reduced_mv,
                reduced_ms,
            } => write!(f, "crank {dip_mv} {dip_ms} {reduced_mv} {reduced_ms}"),
            Vehicle::PowerFail => f.write_str("power-fail"),
            Vehicle::PowerRestore => f.write_str("power-restore"),
            Vehicle::LowBattery(mv) => write!(f, "low-battery {mv}"),
            Vehicle::Tamper => f.write_str("tamper"),
            Vehicle::Noise => f.write_str("noise"),
        }
    }
}

/// One harness command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// A vehicle signal changes.
    Vehicle(Vehicle),
    /// A setting (before `start`).
    Set(Key, u32),
    /// Start the supervisor with the settings so far.
    Start,
    /// Print the supervisor status.
    Status,
    /// Print counters: worst step time, link errors, stack use.
    Stats,
    /// Panic on purpose (tests the panic handler's safe reset).
    Panic,
    /// Stop feeding the MCU watchdog (tests the watchdog's reset).
    Hang,
}

/// Settings the harness can change; names are `hw-sim`'s flags without `--`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `board-rev` (1/2; `a`/`b` accepted): board byte and hold-up budget.
    BoardRev,
    /// `debounce-ms`.
    Debounce,
    /// `power-on-delay-ms`.
    PowerOnDelay,
    /// `boot-timeout-ms`.
    BootTimeout,
    /// `off-delay-ms`.
    OffDelay,
    /// `shutdown-deadline-ms`.
    ShutdownDeadline,
    /// `halt-grace-ms`.
    HaltGrace,
    /// `hold-up-budget-ms`.
    HoldUpBudget,
    /// `low-battery-for-ms`.
    LowBatteryFor,
    /// `watchdog-timeout-ms`.
    WatchdogTimeout,
    /// `power-cycle-off-ms`.
    PowerCycleOff,
    /// `max-power-cycles-per-hour`.
    MaxPowerCycles,
}

const KEYS: [(&str, Key); 12] = [
    ("board-rev", Key::BoardRev),
    ("debounce-ms", Key::Debounce),
    ("power-on-delay-ms", Key::PowerOnDelay),
    ("boot-timeout-ms", Key::BootTimeout),
    ("off-delay-ms", Key::OffDelay),
    ("shutdown-deadline-ms", Key::ShutdownDeadline),
    ("halt-grace-ms", Key::HaltGrace),
    ("hold-up-budget-ms", Key::HoldUpBudget),
    ("low-battery-for-ms", Key::LowBatteryFor),
    ("watchdog-timeout-ms", Key::WatchdogTimeout),
    ("power-cycle-off-ms", Key::PowerCycleOff),
    ("max-power-cycles-per-hour", Key::MaxPowerCycles),
];

/// Board byte and announced hold-up budget of revision A and B (`hw::pins`).
pub const REV_A: (u8, u32) = (1, 8_000);
/// See [`REV_A`].
pub const REV_B: (u8, u32) = (2, 10_000);

impl Key {
    /// Apply to `s`; `Err` for a value out of the field's range.
    pub fn apply(self, s: &mut Settings, v: u32) -> Result<(), &'static str> {
        let small = |v: u32| u8::try_from(v).map_err(|_| "value too large");
        match self {
            Key::BoardRev => {
                let (code, budget) = match v {
                    1 => REV_A,
                    2 => REV_B,
                    _ => return Err("board-rev is a (1) or b (2)"),
                };
                s.board_rev = code;
                s.hold_up_budget_ms = budget;
            }
            Key::Debounce => s.ignition_debounce_ms = v,
            Key::PowerOnDelay => s.power_on_delay_ms = v,
            Key::BootTimeout => s.boot_timeout_ms = v,
            Key::OffDelay => s.off_delay_ms = v,
            Key::ShutdownDeadline => s.shutdown_deadline_ms = v,
            Key::HaltGrace => s.halt_grace_ms = v,
            Key::HoldUpBudget => s.hold_up_budget_ms = v,
            Key::LowBatteryFor => s.low_battery_for_ms = v,
            Key::WatchdogTimeout => s.watchdog_timeout_ms = v,
            Key::PowerCycleOff => s.power_cycle_off_ms = v,
            Key::MaxPowerCycles => s.max_power_cycles_per_hour = small(v)?,
        }
        Ok(())
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn number<T: core::str::FromStr>(
    word: Option<&str>,
    what: &'static str,
) -> Result<T, &'static str> {
    word.ok_or(what)?.parse().map_err(|_| what)
}

fn optional<T: core::str::FromStr>(
    word: Option<&str>,
    what: &'static str,
    default: T,
) -> Result<T, &'static str> {
    match word {
        None => Ok(default),
        Some(w) => number(Some(w), what),
    }
}

/// Parse one line (`Ok(None)` for a blank line or a comment).
pub fn parse(line: &str) -> Result<Option<Command>, &'static str> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or("");
    let cmd = match verb {
        "ignition" => match words.next() {
            Some("on") => Command::Vehicle(Vehicle::Ignition(true)),
            Some("off") => Command::Vehicle(Vehicle::Ignition(false)),
            _ => return Err("ignition needs on or off"),
        },
        "supply" => Command::Vehicle(Vehicle::Supply(number(
            words.next(),
            "supply needs millivolts",
        )?)),
        "crank" => Command::Vehicle(Vehicle::Crank {
            dip_mv: optional(words.next(), "invalid dip millivolts", 5_000)?,
            dip_ms: optional(words.next(), "invalid dip milliseconds", 40)?,
            reduced_mv: optional(words.next(), "invalid reduced millivolts", 8_500)?,
            reduced_ms: optional(words.next(), "invalid reduced milliseconds", 3_000)?,
        }),
        "power-fail" => Command::Vehicle(Vehicle::PowerFail),
        "power-restore" => Command::Vehicle(Vehicle::PowerRestore),
        "low-battery" => Command::Vehicle(Vehicle::LowBattery(optional(
            words.next(),
            "invalid millivolts",
            10_800,
        )?)),
        "tamper" => Command::Vehicle(Vehicle::Tamper),
        "noise" => Command::Vehicle(Vehicle::Noise),
        "status" => Command::Status,
        "stats" => Command::Stats,
        "panic" => Command::Panic,
        "hang" => Command::Hang,
        "start" => Command::Start,
        "set" => {
            let name = words.next().ok_or("set needs a key")?;
            let key = KEYS
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, k)| *k)
                .ok_or("unknown setting")?;
            let value = match (key, words.next()) {
                (Key::BoardRev, Some("a" | "A")) => 1,
                (Key::BoardRev, Some("b" | "B")) => 2,
                (_, w) => number(w, "set needs a number")?,
            };
            Command::Set(key, value)
        }
        _ => return Err("unknown command"),
    };
    if words.next().is_some() {
        return Err("unexpected words after the command");
    }
    Ok(Some(cmd))
}

/// Collects bytes into lines.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: heapless::Vec<u8, LINE_MAX>,
    overflow: bool,
    complete: bool,
}

/// What one byte completed.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A whole line (without the newline).
    Text(&'a str),
    /// A line too long or not UTF-8: dropped.
    Bad,
}

impl LineReader {
    /// Feed one byte; returns a line when `byte` ends one.
    pub fn push(&mut self, byte: u8) -> Option<Line<'_>> {
        if core::mem::replace(&mut self.complete, false) {
            self.buf.clear();
        }
        if byte == b'\n' || byte == b'\r' {
            if core::mem::replace(&mut self.overflow, false) {
                self.buf.clear();
                return Some(Line::Bad);
            }
            if self.buf.is_empty() {
                return None;
            }
            self.complete = true;
            return Some(match core::str::from_utf8(&self.buf) {
                Ok(s) => Line::Text(s),
                Err(_) => Line::Bad,
            });
        }
        if self.buf.push(byte).is_err() {
            self.overflow = true;
        }
        None
    }
}

/// A `t=<ms> ...` event line, `SimEvent`'s `Display` in `hw::sim`.
pub fn write_event(w: &mut impl Write, now_ms: u64, event: &Event) -> fmt::Result {
    write!(w, "t={now_ms} ")?;
    match event {
        Event::State { from, to } => write!(w, "state {from:?} -> {to:?}"),
        Event::HostPower(on) => write!(w, "host-power {}", on_off(*on)),
        Event::HostReset(on) => write!(w, "host-reset {}", on_off(*on)),
        Event::Sent(m) => write!(w, "tx {m:?}"),
        Event::Received(m) => write!(w, "rx {m:?}"),
        Event::BadFrame(e) => write!(w, "bad-frame {e}"),
        Event::Undelivered(m) => write!(w, "undelivered {m:?}"),
        Event::KeyShareErased => w.write_str("key-share-erased"),
    }?;
    w.write_str("\n")
}
