//! The main loop, the same on every board: the pure `Supervisor::step` and the link `Endpoint`
//! from the `firmware` crate, fed by a [`Platform`].
//!
//! Every [`TICK_MS`] the supervisor steps with fresh pin readings, and once more for every host
//! message (as `SimBoard` does on the host, so the two boards behave alike). Bytes from a host that
//! is unpowered or held in reset are dropped (a host without power cannot drive its UART), and
//! nothing is written to it then.

use firmware::link::{Endpoint, LinkConfig, Received};
use firmware::proto::{DecodeError, HostToMcu, McuToHost, StateCode};
use firmware::supervisor::{Inputs, Outputs, Supervisor};
use firmware::tamper::Persisted;
use firmware::{Config, FW_VERSION};

/// Step period (the supervisor asks for at least one step every 10 ms).
pub const TICK_MS: u64 = 10;

/// Bytes read from the host UART per pass (at most 16 frames fit: a frame is at least 2 bytes).
const RX_CHUNK: usize = 32;

/// Something the observer (the QEMU harness) may want to report, in `SimBoard`'s order.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "qemu"), allow(dead_code))]
pub enum Event {
    /// The supervisor changed state.
    State {
        /// Previous state.
        from: StateCode,
        /// New state.
        to: StateCode,
    },
    /// The host power pin changed level (read back from the pin).
    HostPower(bool),
    /// The host reset line changed (read back from the pin; `true` = asserted).
    HostReset(bool),
    /// A message went to the host.
    Sent(McuToHost),
    /// A message arrived from the host.
    Received(HostToMcu),
    /// Bytes from the host failed to decode (counted, never acted on).
    BadFrame(DecodeError),
    /// A message to the host was never acknowledged.
    Undelivered(McuToHost),
    /// The MCU erased its key share.
    KeyShareErased,
}

/// What a board gives the loop.
pub trait Platform {
    /// Milliseconds since start-up.
    fn now_ms(&mut self) -> u64;
    /// A free-running cycle count (the core clock), for timing one step.
    fn cycles(&mut self) -> u64;
    /// Bytes received from the host link since the last call, into `buf`; returns how many.
    fn link_read(&mut self, buf: &mut [u8]) -> usize;
    /// Write bytes to the host link.
    fn link_write(&mut self, bytes: &[u8]);
    /// Read the input pins and the supply ADC.
    fn sample(&mut self, host: Option<HostToMcu>) -> Inputs;
    /// Drive the output pins and write the backup domain.
    fn apply(&mut self, now_ms: u64, out: &Outputs);
    /// Host power and reset levels as the pins are driven now: `(powered, reset asserted)`.
    fn host_rail(&mut self) -> (bool, bool);
    /// Refresh the MCU's independent watchdog.
    fn feed_watchdog(&mut self);
    /// Sleep until the next interrupt (SysTick at least every millisecond).
    fn wait(&mut self);
    /// Report an event (the QEMU harness prints it; the real board ignores it).
    fn observe(&mut self, _now_ms: u64, _event: Event) {}
    /// Time one step took, in core cycles.
    fn step_cycles(&mut self, _cycles: u64) {}
    /// Once per pass: the harness reads its commands and may apply a vehicle change, after which
    /// the supervisor steps at once. Returns whether it did.
    fn poll_harness(&mut self, _now_ms: u64, _sup: &Supervisor, _rail: (bool, bool)) -> bool {
        false
    }
    /// Link counters after each pass (the harness reports them).
    fn link_stats(&mut self, _stats: firmware::link::LinkStats) {}
}

/// The supervisor, its link and what was last driven.
pub struct App {
    sup: Supervisor,
    link: Endpoint<McuToHost, HostToMcu>,
    rail: (bool, bool),
    state: StateCode,
}

impl App {
    /// A supervisor with `cfg`, starting from the backup domain's `persisted` state.
    pub fn new(cfg: Config, persisted: Persisted) -> Self {
        Self {
            sup: Supervisor::new(cfg, FW_VERSION, persisted),
            link: Endpoint::new(LinkConfig::default()),
            rail: (false, false),
            state: StateCode::Off,
        }
    }

    /// Take over pins already driven (a warm start that held host power): the loop reports
    /// changes from these levels.
    pub fn set_rail(&mut self, rail: (bool, bool)) {
        self.rail = rail;
    }

    /// Run forever.
    pub fn run<P: Platform>(mut self, p: &mut P) -> ! {
        let mut next_tick = p.now_ms();
        loop {
            p.feed_watchdog();
            let now = p.now_ms();
            self.receive(p, now);
            if p.poll_harness(now, &self.sup, self.rail) {
                self.step(p, now, None);
            }
            if now >= next_tick {
                self.step(p, now, None);
                next_tick = now.saturating_add(TICK_MS);
            }
            self.transmit(p, now);
            p.link_stats(self.link.stats());
            p.wait();
        }
    }

    fn host_can_speak(&self) -> bool {
        self.rail.0 && !self.rail.1
    }

    fn receive<P: Platform>(&mut self, p: &mut P, now: u64) {
        let mut buf = [0u8; RX_CHUNK];
        loop {
            let n = p.link_read(&mut buf).min(RX_CHUNK);
            if n == 0 {
                return;
            }
            if !self.host_can_speak() {
                continue;
            }
            let mut got: heapless::Vec<Received<HostToMcu>, RX_CHUNK> = heapless::Vec::new();
            self.link.receive(now, &buf[..n], |r| {
                // Cannot overflow: each received item ends at a delimiter byte of this chunk.
                let _ = got.push(r);
            });
            for r in got {
                match r {
                    Received::Message(msg) => {
                        p.observe(now, Event::Received(msg));
                        self.step(p, now, Some(msg));
                    }
                    Received::Error(e) => p.observe(now, Event::BadFrame(e)),
                }
            }
            self.transmit(p, now);
        }
    }

    fn step<P: Platform>(&mut self, p: &mut P, now: u64, host: Option<HostToMcu>) {
        let inputs = p.sample(host);
        let t0 = p.cycles();
        let out = self.sup.step(now, &inputs);
        let t1 = p.cycles();
        p.step_cycles(t1.saturating_sub(t0));
        p.apply(now, &out);
        if out.erase_key_share {
            p.observe(now, Event::KeyShareErased);
        }
        if out.link_reset {
            self.link.reset();
        }
        let state = self.sup.state().code();
        if state != self.state {
            p.observe(
                now,
                Event::State {
                    from: self.state,
                    to: state,
                },
            );
            self.state = state;
        }
        let rail = p.host_rail();
        if rail.0 != self.rail.0 {
            p.observe(now, Event::HostPower(rail.0));
        }
        if rail.1 != self.rail.1 {
            p.observe(now, Event::HostReset(rail.1));
        }
        self.rail = rail;
        for msg in &out.to_host {
            p.observe(now, Event::Sent(*msg));
            // A full queue drops the message; every demand is repeated at the host's next hello.
            let _ = self.link.send(*msg);
        }
    }

    fn transmit<P: Platform>(&mut self, p: &mut P, now: u64) {
        while let Some(frame) = self.link.poll_transmit(now) {
            if self.host_can_speak() {
                p.link_write(&frame);
            }
        }
        while let Some(frame) = self.link.poll_expired() {
            p.observe(now, Event::Undelivered(frame.msg));
        }
    }
}

/// After an MCU reset with the host powered (a panic or the MCU watchdog), keep the host rail on
/// until the supervisor, which starts in `Off`, powers it itself (ignition debounce and power-on
/// delay) — or, if it does not by then, the vehicle is off and the rail follows the supervisor.
/// An MCU fault must never cut a running host mid-write.
#[derive(Clone, Copy, Debug)]
pub struct PowerHold {
    until_ms: Option<u64>,
}

impl PowerHold {
    /// A hold if the host was powered before the reset.
    pub fn new(was_powered: bool, now_ms: u64, s: &firmware::Settings) -> Self {
        let span = u64::from(s.ignition_debounce_ms) + u64::from(s.power_on_delay_ms) + 1_000;
        Self {
            until_ms: was_powered.then_some(now_ms.saturating_add(span)),
        }
    }

    /// The host-power level to drive for `out`.
    pub fn host_power(&mut self, now_ms: u64, out: &Outputs) -> bool {
        match self.until_ms {
            Some(until) if !out.host_power && now_ms < until => true,
            Some(_) => {
                self.until_ms = None;
                out.host_power
            }
            None => out.host_power,
        }
    }
}
