//! A time-stepped harness around the pure supervisor: a virtual clock, a scripted vehicle
//! (ignition, supply, tamper) and a scripted host model, with a log of everything that happened.

use firmware::leds::Leds;
use firmware::proto::{FwVersion, Health, HostToMcu, McuToHost, ShutdownReason};
use firmware::supervisor::{Inputs, Outputs, State, Supervisor};
use firmware::tamper::Persisted;
use firmware::{Config, Settings};

/// Nominal running supply on a 12 V system (alternator charging).
pub const NOMINAL_MV: u16 = 13_800;

/// How the simulated host behaves.
#[derive(Clone, Copy, Debug)]
pub struct HostModel {
    /// Time from power-on (or reset release) to the daemon's hello; `None` = never boots.
    pub boot_ms: Option<u64>,
    /// Heartbeat period while alive.
    pub heartbeat_ms: u64,
    /// Stop heartbeating this long after each boot (a hang); `None` = never hangs.
    pub hang_after_ms: Option<u64>,
    /// Acknowledge a shutdown request after this long; `None` = never.
    pub shutdown_ack_ms: Option<u64>,
    /// Acknowledge a power-fail after this long; `None` = never.
    pub power_fail_ack_ms: Option<u64>,
    /// Answer `Tamper` with `Zeroized`.
    pub zeroize: bool,
}

impl HostModel {
    pub const HEALTHY: HostModel = HostModel {
        boot_ms: Some(20_000),
        heartbeat_ms: 1_000,
        hang_after_ms: None,
        shutdown_ack_ms: Some(10_000),
        power_fail_ack_ms: Some(2_000),
        zeroize: true,
    };
}

/// The harness.
pub struct Rig {
    pub sup: Supervisor,
    pub now: u64,
    pub tick_ms: u64,
    pub ignition: bool,
    pub tamper: bool,
    pub supply_mv: u16,
    pub host: HostModel,
    pub persisted: Persisted,
    pub key_share_erased: bool,
    /// Every message the supervisor sent, with its time.
    pub sent: Vec<(u64, McuToHost)>,
    /// Every host message delivered, with its time.
    pub received: Vec<(u64, HostToMcu)>,
    /// Host power edges.
    pub power_edges: Vec<(u64, bool)>,
    /// State changes.
    pub states: Vec<(u64, State)>,
    pub last: Outputs,
    // host model bookkeeping
    host_boot_at: Option<u64>,
    host_booted_at: Option<u64>,
    next_heartbeat: u64,
    pending_host: Vec<(u64, HostToMcu)>,
}

impl Rig {
    pub fn new(settings: Settings) -> Self {
        Self::with_persisted(settings, Persisted::default())
    }

    pub fn with_persisted(settings: Settings, persisted: Persisted) -> Self {
        let cfg = Config::new(settings).expect("valid settings");
        let sup = Supervisor::new(
            cfg,
            FwVersion {
                major: 0,
                minor: 1,
                patch: 0,
            },
            persisted,
        );
        Self {
            states: vec![(0, sup.state())],
            sup,
            now: 0,
            tick_ms: 10,
            ignition: false,
            tamper: false,
            supply_mv: 12_600,
            host: HostModel::HEALTHY,
            persisted,
            key_share_erased: false,
            sent: Vec::new(),
            received: Vec::new(),
            power_edges: Vec::new(),
            last: Outputs::default(),
            host_boot_at: None,
            host_booted_at: None,
            next_heartbeat: 0,
            pending_host: Vec::new(),
        }
    }

    pub fn state(&self) -> State {
        self.sup.state()
    }

    pub fn powered(&self) -> bool {
        self.last.host_power
    }

    pub fn leds(&self) -> Leds {
        self.last.leds
    }

    /// Deliver a host message right now (one extra step).
    pub fn host_says(&mut self, msg: HostToMcu) {
        self.step(Some(msg));
    }

    fn step(&mut self, host: Option<HostToMcu>) {
        let inputs = Inputs {
            ignition: self.ignition,
            tamper: self.tamper,
            supply_mv: self.supply_mv,
            host,
        };
        if let Some(m) = host {
            self.received.push((self.now, m));
        }
        let was_powered = self.last.host_power;
        let was_reset = self.last.host_reset;
        let out = self.sup.step(self.now, &inputs);
        if out.host_power != was_powered {
            self.power_edges.push((self.now, out.host_power));
        }
        if let Some(p) = out.persist {
            self.persisted = p;
        }
        if out.erase_key_share {
            self.key_share_erased = true;
        }
        if self.states.last().map(|s| s.1) != Some(self.sup.state()) {
            self.states.push((self.now, self.sup.state()));
        }
        // Host model: (re)boot on power-on or reset release; forget everything on power loss.
        let booting_edge = (out.host_power && !was_powered) || (was_reset && !out.host_reset);
        if !out.host_power || out.host_reset {
            self.host_boot_at = None;
            self.host_booted_at = None;
            self.pending_host.clear();
        } else if booting_edge {
            self.host_booted_at = None;
            self.pending_host.clear();
            self.host_boot_at = self.host.boot_ms.map(|b| self.now + b);
        }
        for msg in &out.to_host {
            self.sent.push((self.now, *msg));
            if self.host_booted_at.is_some() {
                self.react(*msg);
            }
        }
        self.last = out;
    }

    fn react(&mut self, msg: McuToHost) {
        match msg {
            McuToHost::ShutdownRequest { .. } => {
                if let Some(d) = self.host.shutdown_ack_ms {
                    self.pending_host
                        .push((self.now + d, HostToMcu::ShutdownAck { flushed: true }));
                }
            }
            McuToHost::PowerFail { .. } => {
                if let Some(d) = self.host.power_fail_ack_ms {
                    self.pending_host
                        .push((self.now + d, HostToMcu::ShutdownAck { flushed: true }));
                }
            }
            McuToHost::Tamper if self.host.zeroize => {
                self.pending_host.push((self.now + 50, HostToMcu::Zeroized));
            }
            _ => {}
        }
    }

    fn host_alive(&self) -> bool {
        match (self.host_booted_at, self.host.hang_after_ms) {
            (Some(_), None) => true,
            (Some(t), Some(h)) => self.now < t + h,
            (None, _) => false,
        }
    }

    /// Advance `ms` of virtual time in ticks, running the host model.
    pub fn run(&mut self, ms: u64) {
        let end = self.now + ms;
        // Observe whatever the test changed at the current instant first.
        self.step(None);
        while self.now < end {
            self.now = (self.now + self.tick_ms).min(end);
            self.step(None);
            if let Some(at) = self.host_boot_at {
                if self.now >= at {
                    self.host_boot_at = None;
                    self.host_booted_at = Some(self.now);
                    self.next_heartbeat = self.now + self.host.heartbeat_ms;
                    self.step(Some(HostToMcu::Hello { version: 1 }));
                }
            }
            if self.host_alive() && self.now >= self.next_heartbeat {
                self.next_heartbeat = self.now + self.host.heartbeat_ms;
                self.step(Some(HostToMcu::Heartbeat { health: Health::Ok }));
            }
            if self.host_alive() {
                let now = self.now;
                let due: Vec<HostToMcu> = self
                    .pending_host
                    .iter()
                    .filter(|(t, _)| *t <= now)
                    .map(|(_, m)| *m)
                    .collect();
                self.pending_host.retain(|(t, _)| *t > now);
                for m in due {
                    self.step(Some(m));
                }
            }
        }
    }

    /// Run until `pred` holds or `limit_ms` passes; returns the time it held.
    pub fn run_until(&mut self, limit_ms: u64, mut pred: impl FnMut(&Rig) -> bool) -> Option<u64> {
        let end = self.now + limit_ms;
        while self.now < end {
            if pred(self) {
                return Some(self.now);
            }
            self.run(self.tick_ms);
        }
        pred(self).then_some(self.now)
    }

    /// Ignition on, wait through debounce, delay and boot to `Running`.
    pub fn boot_to_running(&mut self) {
        self.supply_mv = NOMINAL_MV;
        self.ignition = true;
        let t = self.run_until(300_000, |r| r.state() == State::Running);
        assert!(t.is_some(), "host never reached Running: {:?}", self.states);
    }

    pub fn sent_since(&self, t: u64) -> Vec<McuToHost> {
        self.sent
            .iter()
            .filter(|(at, _)| *at >= t)
            .map(|(_, m)| *m)
            .collect()
    }

    pub fn shutdown_requests(&self) -> Vec<(u64, ShutdownReason)> {
        self.sent
            .iter()
            .filter_map(|(t, m)| match m {
                McuToHost::ShutdownRequest { reason, .. } => Some((*t, *reason)),
                _ => None,
            })
            .collect()
    }

    pub fn power_fails(&self) -> usize {
        self.sent
            .iter()
            .filter(|(_, m)| matches!(m, McuToHost::PowerFail { .. }))
            .count()
    }

    pub fn power_cycle_starts(&self) -> Vec<u64> {
        self.states
            .iter()
            .filter(|(_, s)| matches!(s, State::PowerCycle { .. }))
            .map(|(t, _)| *t)
            .collect()
    }
}
