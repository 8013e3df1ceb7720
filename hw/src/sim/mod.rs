//! `SimBoard`: the real firmware (`Supervisor::step` and the link `Endpoint`) on a virtual
//! clock, with a scripted vehicle around it, talking to a host through the same framing as the
//! real board.
//!
//! The board itself is deterministic and synchronous: [`SimBoard::advance`] moves the virtual
//! clock in ticks, [`SimBoard::receive`] takes bytes from the host, [`SimBoard::take_output`]
//! returns bytes for the host, and [`SimBoard::drain_events`] tells what happened. Two drivers
//! wrap it: [`runner`] paces it against the wall clock over any [`Port`](crate::serial::Port)
//! (an in-process [`duplex`](crate::channel::duplex) or a [`Pty`](crate::serial::Pty)), and the
//! `hw-sim` binary exposes that on a pty with commands from stdin or a scenario file.

pub mod runner;
pub mod script;

use crate::pins::CONVERTER_MIN_MV;
use firmware::leds::Leds;
use firmware::link::{Endpoint, LinkConfig, Received};
use firmware::proto::{DecodeError, HostToMcu, McuToHost, StateCode, Status};
use firmware::supervisor::{Inputs, Outputs, State, Supervisor};
use firmware::tamper::{BackupDomain, Persisted};
use firmware::{Config, ConfigError, Settings, FW_VERSION};
use script::Command;
use std::collections::VecDeque;
use std::fmt;

/// Bytes buffered for the host before the oldest are dropped (a UART nobody reads).
pub const OUTPUT_LIMIT: usize = 64 * 1024;
/// Events kept before the oldest are dropped.
pub const EVENT_LIMIT: usize = 4_096;
/// Default simulation tick.
pub const DEFAULT_TICK_MS: u64 = 10;

/// What the `noise` command puts on the line to the host: a `PowerFail { budget_ms: 7900 }` frame
/// (seq 9, pinned by the firmware's golden tests) with one CRC bit flipped, then line noise. Two
/// frames that must fail to decode, be counted, and never be acted on. The MCU image's QEMU
/// harness sends the same bytes.
pub const LINE_NOISE: [u8; 18] = [
    0x03, 0x01, 0x09, 0x04, 0x05, 0xdc, 0x1e, 0x01, 0x03, 0x25, 0xc0, 0x00, // CRC c1 -> c0
    0x55, 0xaa, 0x13, 0x37, 0xfe, 0x00,
];

/// Something that happened on the simulated board.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SimEvent {
    /// The supervisor changed state.
    State {
        /// Previous coarse state.
        from: StateCode,
        /// New coarse state.
        to: StateCode,
    },
    /// The host power rail switched.
    HostPower(bool),
    /// The host reset line switched.
    HostReset(bool),
    /// A message went to the host.
    Sent(McuToHost),
    /// A message arrived from the host.
    Received(HostToMcu),
    /// Bytes from the host failed to decode.
    BadFrame(DecodeError),
    /// A message to the host was never acknowledged.
    Undelivered(McuToHost),
    /// The MCU erased its key share (tamper).
    KeyShareErased,
    /// A vehicle command was applied.
    Vehicle(Command),
}

/// An event with its virtual time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimedEvent {
    /// Virtual milliseconds since the board started.
    pub at_ms: u64,
    /// What happened.
    pub event: SimEvent,
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

impl fmt::Display for TimedEvent {
    /// One line per event, stable for tests to match: `t=<ms> <kind> <detail>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t={} ", self.at_ms)?;
        match &self.event {
            SimEvent::State { from, to } => write!(f, "state {from:?} -> {to:?}"),
            SimEvent::HostPower(on) => write!(f, "host-power {}", on_off(*on)),
            SimEvent::HostReset(on) => write!(f, "host-reset {}", on_off(*on)),
            SimEvent::Sent(m) => write!(f, "tx {m:?}"),
            SimEvent::Received(m) => write!(f, "rx {m:?}"),
            SimEvent::BadFrame(e) => write!(f, "bad-frame {e}"),
            SimEvent::Undelivered(m) => write!(f, "undelivered {m:?}"),
            SimEvent::KeyShareErased => write!(f, "key-share-erased"),
            SimEvent::Vehicle(c) => write!(f, "vehicle {c}"),
        }
    }
}

/// The MCU's battery-backed domain, in memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SimBackup {
    /// The register word.
    pub word: u32,
    /// Whether the key share was erased.
    pub key_share_erased: bool,
}

impl Default for SimBackup {
    fn default() -> Self {
        Self {
            word: Persisted::default().to_word(),
            key_share_erased: false,
        }
    }
}

impl BackupDomain for SimBackup {
    fn load(&mut self) -> u32 {
        self.word
    }
    fn store(&mut self, word: u32) {
        self.word = word;
    }
    fn erase_key_share(&mut self) {
        self.key_share_erased = true;
    }
}

/// The simulated vehicle around the board.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vehicle {
    /// Ignition switch.
    pub ignition: bool,
    /// Input voltage when no transient is playing.
    pub supply_mv: u16,
    /// Enclosure open.
    pub tamper: bool,
    /// Healthy running voltage (`power-restore` returns here).
    pub nominal_mv: u16,
}

/// The simulated supervisor board.
#[derive(Debug)]
pub struct SimBoard {
    sup: Supervisor,
    link: Endpoint<McuToHost, HostToMcu>,
    backup: SimBackup,
    vehicle: Vehicle,
    /// Supply transient being played: `(until_ms, mv)` segments.
    transient: VecDeque<(u64, u16)>,
    /// Tamper switch pulse end.
    tamper_until_ms: Option<u64>,
    now_ms: u64,
    tick_ms: u64,
    output: VecDeque<u8>,
    events: VecDeque<TimedEvent>,
    events_dropped: u64,
    last: Outputs,
    last_state: StateCode,
}

impl SimBoard {
    /// A 12 V board with `settings`, ignition off, battery at 12.6 V, a fresh backup domain.
    pub fn new(settings: Settings) -> Result<Self, ConfigError> {
        Self::with_backup(settings, SimBackup::default())
    }

    /// A board whose backup domain survived from an earlier run (tamper latch).
    pub fn with_backup(settings: Settings, mut backup: SimBackup) -> Result<Self, ConfigError> {
        let cfg = Config::new(settings)?;
        let persisted = Persisted::from_word(backup.load());
        let nominal_mv = if settings.low_battery_mv > 15_000 {
            27_600
        } else {
            13_800
        };
        let resting_mv = if settings.low_battery_mv > 15_000 {
            25_200
        } else {
            12_600
        };
        Ok(Self {
            sup: Supervisor::new(cfg, FW_VERSION, persisted),
            link: Endpoint::new(LinkConfig::default()),
            backup,
            vehicle: Vehicle {
                ignition: false,
                supply_mv: resting_mv,
                tamper: false,
                nominal_mv,
            },
            transient: VecDeque::new(),
            tamper_until_ms: None,
            now_ms: 0,
            tick_ms: DEFAULT_TICK_MS,
            output: VecDeque::new(),
            events: VecDeque::new(),
            events_dropped: 0,
            last: Outputs::default(),
            last_state: StateCode::Off,
        })
    }

    /// Change the tick (default 10 ms; the crank filter needs ≤ 50 ms).
    pub fn set_tick_ms(&mut self, tick_ms: u64) {
        self.tick_ms = tick_ms.max(1);
    }

    /// Virtual time.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Supervisor state.
    pub fn state(&self) -> State {
        self.sup.state()
    }

    /// Whether the host rail is on.
    pub fn host_powered(&self) -> bool {
        self.last.host_power
    }

    /// Whether the host reset line is asserted.
    pub fn host_reset(&self) -> bool {
        self.last.host_reset
    }

    /// LED patterns.
    pub fn leds(&self) -> Leds {
        self.last.leds
    }

    /// What a `GetStatus` would answer now.
    pub fn status(&self) -> Status {
        self.sup.status(self.now_ms)
    }

    /// The vehicle.
    pub fn vehicle(&self) -> Vehicle {
        self.vehicle
    }

    /// The backup domain (carry it into [`SimBoard::with_backup`] to model MCU power loss).
    pub fn backup(&self) -> SimBackup {
        self.backup
    }

    /// Events dropped because nobody drained them.
    pub fn events_dropped(&self) -> u64 {
        self.events_dropped
    }

    /// Input voltage seen now (transient if one is playing).
    pub fn supply_mv(&self) -> u16 {
        self.transient
            .front()
            .map_or(self.vehicle.supply_mv, |&(_, mv)| mv)
    }

    /// Apply a vehicle command at the current virtual time. `Wait`, `Status` and `Quit` are
    /// for drivers and do nothing here.
    pub fn apply(&mut self, cmd: &Command) {
        let now = self.now_ms;
        match *cmd {
            Command::Ignition(on) => self.vehicle.ignition = on,
            Command::Supply(mv) => {
                self.transient.clear();
                self.vehicle.supply_mv = mv;
            }
            Command::Crank {
                dip_mv,
                dip_ms,
                reduced_mv,
                reduced_ms,
            } => {
                self.transient.clear();
                self.transient.push_back((now + dip_ms, dip_mv));
                self.transient
                    .push_back((now + dip_ms + reduced_ms, reduced_mv));
            }
            Command::PowerFail => {
                self.transient.clear();
                self.vehicle.supply_mv = 0;
            }
            Command::PowerRestore => {
                self.transient.clear();
                self.vehicle.supply_mv = self.vehicle.nominal_mv;
            }
            Command::LowBattery(mv) => {
                self.transient.clear();
                self.vehicle.supply_mv = mv;
            }
            Command::Tamper => {
                self.vehicle.tamper = true;
                self.tamper_until_ms = Some(now + 100);
            }
            Command::Noise => {
                if self.last.host_power && !self.last.host_reset {
                    for b in LINE_NOISE {
                        if self.output.len() >= OUTPUT_LIMIT {
                            self.output.pop_front();
                        }
                        self.output.push_back(b);
                    }
                }
            }
            Command::Wait(_) | Command::Status | Command::Quit => return,
        }
        self.record(SimEvent::Vehicle(*cmd));
        self.step(None);
    }

    /// Bytes from the host. A host without power cannot drive its UART, so bytes arriving while
    /// the rail is off are dropped.
    pub fn receive(&mut self, bytes: &[u8]) {
        if !self.last.host_power || self.last.host_reset {
            return;
        }
        let mut got = Vec::new();
        self.link.receive(self.now_ms, bytes, |r| got.push(r));
        for r in got {
            match r {
                Received::Message(msg) => {
                    self.record(SimEvent::Received(msg));
                    self.step(Some(msg));
                }
                Received::Error(e) => self.record(SimEvent::BadFrame(e)),
            }
        }
        self.flush_link();
    }

    /// Advance the virtual clock by `ms`, stepping every tick.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now_ms.saturating_add(ms);
        while self.now_ms < end {
            self.now_ms = (self.now_ms + self.tick_ms).min(end);
            while self
                .transient
                .front()
                .is_some_and(|&(until, _)| self.now_ms >= until)
            {
                self.transient.pop_front();
            }
            if self.tamper_until_ms.is_some_and(|t| self.now_ms >= t) {
                self.tamper_until_ms = None;
                self.vehicle.tamper = false;
            }
            self.step(None);
            self.flush_link();
        }
    }

    /// Bytes waiting for the host.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.output.drain(..).collect()
    }

    /// Events since the last drain.
    pub fn drain_events(&mut self) -> Vec<TimedEvent> {
        self.events.drain(..).collect()
    }

    fn record(&mut self, event: SimEvent) {
        if self.events.len() >= EVENT_LIMIT {
            self.events.pop_front();
            self.events_dropped += 1;
        }
        self.events.push_back(TimedEvent {
            at_ms: self.now_ms,
            event,
        });
    }

    fn step(&mut self, host: Option<HostToMcu>) {
        let inputs = Inputs {
            ignition: self.vehicle.ignition,
            tamper: self.vehicle.tamper,
            supply_mv: self.supply_mv(),
            host,
        };
        let out = self.sup.step(self.now_ms, &inputs);
        if out.erase_key_share {
            self.backup.erase_key_share();
            self.record(SimEvent::KeyShareErased);
        }
        if let Some(p) = out.persist {
            self.backup.store(p.to_word());
        }
        if out.link_reset {
            self.link.reset();
        }
        let state = self.sup.state().code();
        if state != self.last_state {
            self.record(SimEvent::State {
                from: self.last_state,
                to: state,
            });
            self.last_state = state;
        }
        if out.host_power != self.last.host_power {
            self.record(SimEvent::HostPower(out.host_power));
        }
        if out.host_reset != self.last.host_reset {
            self.record(SimEvent::HostReset(out.host_reset));
        }
        for msg in &out.to_host {
            self.record(SimEvent::Sent(*msg));
            // A full queue drops the message; every demand is repeated at the host's next hello.
            let _ = self.link.send(*msg);
        }
        self.last = out;
    }

    fn flush_link(&mut self) {
        while let Some(frame) = self.link.poll_transmit(self.now_ms) {
            if self.last.host_power && !self.last.host_reset {
                for b in frame {
                    if self.output.len() >= OUTPUT_LIMIT {
                        self.output.pop_front();
                    }
                    self.output.push_back(b);
                }
            }
        }
        while let Some(frame) = self.link.poll_expired() {
            self.record(SimEvent::Undelivered(frame.msg));
        }
    }
}

/// Settings for a converter-minimum consistent with the board in [`crate::pins`].
pub fn board_settings() -> Settings {
    Settings {
        converter_min_mv: CONVERTER_MIN_MV,
        ..Settings::DEFAULT_12V
    }
}
