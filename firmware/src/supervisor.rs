//! The supervisor state machine: a pure `step(now_ms, inputs) -> outputs`.
//!
//! One hand-written [`State`] enum and one `match` decide when the host is powered, warned, reset
//! or cut. No clock is read and no pin is touched: time comes in as `now_ms`, levels and host
//! messages come in as [`Inputs`], and everything to do comes out as [`Outputs`]. The transitions,
//! with their default timings, are tabulated in `docs/supervisor.md`.
//!
//! Ordering inside one step: tamper latch, ignition debounce, supply tracking, the host message (if
//! any), then timeouts and levels. Call `step` at least every 10 ms (the crank filter and the
//! debounce are measured in samples of that resolution) and once more for every host message.

use crate::config::{Config, HOUR_MS};
use crate::leds::{fault_pattern, link_pattern, Leds, Pattern};
use crate::proto::{
    Faults, FwVersion, Health, HostFaults, HostToMcu, LinkState, McuToHost, ShutdownReason,
    StateCode, Status, PROTOCOL_VERSION,
};
use crate::tamper::Persisted;
use crate::watchdog::PowerCycleLimiter;
use heapless::Vec;

/// Most messages one step can emit.
pub const MAX_MESSAGES_PER_STEP: usize = 8;

/// What the supervisor sees in one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Inputs {
    /// Raw ignition level (debounced inside).
    pub ignition: bool,
    /// Tamper switch reports the enclosure open.
    pub tamper: bool,
    /// Vehicle input voltage, measured before the hold-up capacitor's diode.
    pub supply_mv: u16,
    /// A message from the host, already decoded and de-duplicated by the link layer.
    pub host: Option<HostToMcu>,
}

/// What the supervisor wants done after one step.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outputs {
    /// Host power rail enabled.
    pub host_power: bool,
    /// Host reset line asserted.
    pub host_reset: bool,
    /// LED patterns.
    pub leds: Leds,
    /// Messages to send to the host (through the link layer).
    pub to_host: Vec<McuToHost, MAX_MESSAGES_PER_STEP>,
    /// New persisted state to write to the backup domain.
    pub persist: Option<Persisted>,
    /// Erase the MCU's key share now (tamper).
    pub erase_key_share: bool,
    /// The host lost power or was reset: drop link state (in-flight frames, sequence memory).
    pub link_reset: bool,
}

/// Supervisor state. Times are absolute, in the caller's `now_ms` clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Host unpowered; waiting for debounced ignition (and a healthy supply).
    Off,
    /// Ignition on; waiting out the power-on delay so cranking passes first.
    PowerOnDelay {
        /// When the host may be powered.
        until_ms: u64,
    },
    /// Host powered; waiting for its hello or first heartbeat.
    Booting {
        /// When power came on or the reset was released.
        since_ms: u64,
    },
    /// Host up, heartbeats watched.
    Running,
    /// Ignition off; the host keeps running (syncing, uploading) until the off-delay ends.
    OffDelay {
        /// When the shutdown request goes out.
        until_ms: u64,
    },
    /// Shutdown requested; waiting for the acknowledgement or the hard deadline.
    ShutdownPending {
        /// Why.
        reason: ShutdownReason,
        /// Hard cut time.
        deadline_ms: u64,
        /// Set by the acknowledgement: cut time after the halt grace.
        cut_at_ms: Option<u64>,
    },
    /// Input lost; the hold-up capacitor carries the host until the budget ends.
    PowerFail {
        /// Budget end: cut power then.
        deadline_ms: u64,
    },
    /// Host reset line asserted by the watchdog.
    WatchdogReset {
        /// When the reset is released.
        until_ms: u64,
    },
    /// Host power cut by the watchdog; it comes back on at `until_ms`.
    PowerCycle {
        /// When power returns.
        until_ms: u64,
    },
    /// Power-cycle limit reached: host held off until ignition goes off and on again.
    Fault {
        /// Ignition has been seen off since the fault.
        ignition_seen_off: bool,
    },
}

impl State {
    /// The coarse code reported in `Status`.
    pub const fn code(&self) -> StateCode {
        match self {
            State::Off => StateCode::Off,
            State::PowerOnDelay { .. } => StateCode::PowerOnDelay,
            State::Booting { .. } => StateCode::Booting,
            State::Running => StateCode::Running,
            State::OffDelay { .. } => StateCode::OffDelay,
            State::ShutdownPending { .. } => StateCode::ShutdownPending,
            State::PowerFail { .. } => StateCode::PowerFail,
            State::WatchdogReset { .. } => StateCode::WatchdogReset,
            State::PowerCycle { .. } => StateCode::PowerCycle,
            State::Fault { .. } => StateCode::Fault,
        }
    }

    /// Whether the host power rail is on in this state.
    pub const fn host_powered(&self) -> bool {
        matches!(
            self,
            State::Booting { .. }
                | State::Running
                | State::OffDelay { .. }
                | State::ShutdownPending { .. }
                | State::PowerFail { .. }
                | State::WatchdogReset { .. }
        )
    }
}

/// A debounced digital level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Debounce {
    raw: bool,
    raw_since_ms: u64,
    stable: bool,
}

impl Debounce {
    /// Returns `true` when the stable level changed.
    fn update(&mut self, now_ms: u64, raw: bool, debounce_ms: u32) -> bool {
        if raw != self.raw {
            self.raw = raw;
            self.raw_since_ms = now_ms;
        }
        if self.stable != self.raw
            && now_ms.saturating_sub(self.raw_since_ms) >= u64::from(debounce_ms)
        {
            self.stable = self.raw;
            return true;
        }
        false
    }
}

/// The supervisor.
#[derive(Clone, Debug)]
pub struct Supervisor {
    cfg: Config,
    fw_version: FwVersion,
    state: State,
    /// Where to return when power comes back during `PowerFail`.
    resume: State,
    ignition: Debounce,
    supply_mv: u16,
    below_min_since_ms: Option<u64>,
    restore_since_ms: Option<u64>,
    low_since_ms: Option<u64>,
    low_battery_lockout: bool,
    host_up: bool,
    last_heartbeat_ms: u64,
    health: Health,
    last_reset_ms: Option<u64>,
    cycles: PowerCycleLimiter,
    persisted: Persisted,
    link: LinkState,
    host_faults: HostFaults,
    last_shutdown: Option<ShutdownReason>,
}

impl Supervisor {
    /// A supervisor starting in `Off`, with the persisted state loaded from the backup domain.
    pub fn new(cfg: Config, fw_version: FwVersion, persisted: Persisted) -> Self {
        Self {
            cycles: PowerCycleLimiter::new(cfg.max_power_cycles_per_hour),
            cfg,
            fw_version,
            state: State::Off,
            resume: State::Off,
            ignition: Debounce {
                raw: false,
                raw_since_ms: 0,
                stable: false,
            },
            supply_mv: 0,
            below_min_since_ms: None,
            restore_since_ms: None,
            low_since_ms: None,
            low_battery_lockout: false,
            host_up: false,
            last_heartbeat_ms: 0,
            health: Health::Ok,
            last_reset_ms: None,
            persisted,
            link: LinkState::None,
            host_faults: HostFaults::empty(),
            last_shutdown: None,
        }
    }

    /// Current state.
    pub fn state(&self) -> State {
        self.state
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Persisted (backup-domain) state as the supervisor currently sees it.
    pub fn persisted(&self) -> Persisted {
        self.persisted
    }

    /// Debounced ignition.
    pub fn ignition_on(&self) -> bool {
        self.ignition.stable
    }

    /// Whether the host has said hello or heartbeated since it was last powered or reset.
    pub fn host_up(&self) -> bool {
        self.host_up
    }

    /// Health from the host's last heartbeat.
    pub fn host_health(&self) -> Health {
        self.health
    }

    /// Workshop only (debug port, never the host link): clear the tamper latch after the
    /// enclosure was inspected. Returns the state to persist.
    pub fn clear_tamper_latch(&mut self) -> Persisted {
        self.persisted = Persisted::default();
        self.persisted
    }

    /// Current fault flags.
    pub fn faults(&self, now_ms: u64) -> Faults {
        let mut f = Faults::empty();
        let recent_reset = self
            .last_reset_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < HOUR_MS);
        f.set(
            Faults::WATCHDOG,
            recent_reset || self.cycles.count(now_ms) > 0,
        );
        f.set(
            Faults::WATCHDOG_LIMIT,
            matches!(self.state, State::Fault { .. }),
        );
        f.set(Faults::LOW_BATTERY, self.low_battery_lockout);
        f.set(Faults::TAMPER, self.persisted.tamper_latched);
        f.set(
            Faults::CERT_EXPIRED,
            self.host_faults.contains(HostFaults::CERT_EXPIRED),
        );
        f
    }

    /// The `Status` message for `now_ms`.
    pub fn status(&self, now_ms: u64) -> Status {
        Status {
            state: self.state.code(),
            ignition_on: self.ignition.stable,
            supply_mv: self.supply_mv,
            faults: self.faults(now_ms),
            power_cycles_last_hour: self.cycles.count(now_ms),
            last_shutdown: self.last_shutdown,
        }
    }

    /// LED patterns derived from the state.
    pub fn leds(&self, now_ms: u64) -> Leds {
        let power = match self.state {
            State::Off | State::PowerCycle { .. } | State::Fault { .. } => Pattern::Off,
            State::PowerOnDelay { .. } | State::Booting { .. } => Pattern::SlowBlink,
            State::Running | State::OffDelay { .. } => Pattern::On,
            State::ShutdownPending { .. }
            | State::PowerFail { .. }
            | State::WatchdogReset { .. } => Pattern::FastBlink,
        };
        Leds {
            power,
            link: link_pattern(self.link, self.host_up),
            fault: fault_pattern(self.faults(now_ms)),
        }
    }

    /// Advance to `now_ms` with `inputs`. `now_ms` must not go backwards.
    pub fn step(&mut self, now_ms: u64, inputs: &Inputs) -> Outputs {
        let mut out = Outputs::default();

        if inputs.tamper && !self.persisted.tamper_latched {
            self.persisted = Persisted {
                tamper_latched: true,
                host_zeroized: false,
            };
            out.persist = Some(self.persisted);
            out.erase_key_share = true;
            if self.state.host_powered() {
                emit(&mut out, McuToHost::Tamper);
            }
        }

        if self
            .ignition
            .update(now_ms, inputs.ignition, self.cfg.ignition_debounce_ms)
            && self.host_up
        {
            emit(
                &mut out,
                McuToHost::IgnitionChanged {
                    on: self.ignition.stable,
                },
            );
        }

        self.track_supply(now_ms, inputs.supply_mv);

        if let Some(msg) = inputs.host {
            self.on_host(now_ms, msg, &mut out);
        }

        self.advance(now_ms, &mut out);

        out.host_power = self.state.host_powered();
        out.host_reset = matches!(self.state, State::WatchdogReset { .. });
        out.leds = self.leds(now_ms);
        out
    }

    fn track_supply(&mut self, now_ms: u64, supply_mv: u16) {
        self.supply_mv = supply_mv;
        if supply_mv < self.cfg.converter_min_mv {
            self.below_min_since_ms.get_or_insert(now_ms);
        } else {
            self.below_min_since_ms = None;
        }
        if supply_mv >= self.cfg.power_restore_mv {
            self.restore_since_ms.get_or_insert(now_ms);
        } else {
            self.restore_since_ms = None;
        }
        if supply_mv < self.cfg.low_battery_mv {
            self.low_since_ms.get_or_insert(now_ms);
        } else {
            self.low_since_ms = None;
            if supply_mv >= self.cfg.low_battery_resume_mv {
                self.low_battery_lockout = false;
            }
        }
    }

    /// Input below the converter minimum for longer than the crank filter.
    fn power_failed(&self, now_ms: u64) -> bool {
        self.below_min_since_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= u64::from(self.cfg.power_fail_confirm_ms))
    }

    fn power_restored(&self, now_ms: u64) -> bool {
        self.restore_since_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= u64::from(self.cfg.power_restore_ms))
    }

    fn battery_low(&self, now_ms: u64) -> bool {
        self.low_since_ms
            .is_some_and(|t| now_ms.saturating_sub(t) >= u64::from(self.cfg.low_battery_for_ms))
    }

    fn input_present(&self) -> bool {
        self.below_min_since_ms.is_none()
    }

    fn on_host(&mut self, now_ms: u64, msg: HostToMcu, out: &mut Outputs) {
        if !self.state.host_powered() || matches!(self.state, State::WatchdogReset { .. }) {
            // A host without power or held in reset cannot speak; whatever arrived is stale.
            return;
        }
        match msg {
            HostToMcu::Hello { .. } => {
                self.host_alive(now_ms);
                emit(
                    out,
                    McuToHost::Hello {
                        version: PROTOCOL_VERSION,
                        board_rev: self.cfg.board_rev,
                        fw_version: self.fw_version,
                    },
                );
                if self.persisted.tamper_latched && !self.persisted.host_zeroized {
                    emit(out, McuToHost::Tamper);
                }
                // A host that restarted mid-demand hears the demand again.
                match self.state {
                    State::ShutdownPending {
                        reason,
                        deadline_ms,
                        ..
                    } => emit(
                        out,
                        McuToHost::ShutdownRequest {
                            reason,
                            deadline_ms: remaining(deadline_ms, now_ms),
                        },
                    ),
                    State::PowerFail { deadline_ms } => emit(
                        out,
                        McuToHost::PowerFail {
                            budget_ms: remaining(deadline_ms, now_ms),
                        },
                    ),
                    _ => {}
                }
            }
            HostToMcu::Heartbeat { health } => {
                self.health = health;
                self.host_alive(now_ms);
            }
            HostToMcu::ShutdownAck { .. } => match self.state {
                State::ShutdownPending {
                    reason,
                    deadline_ms,
                    cut_at_ms: None,
                } => {
                    let cut = now_ms
                        .saturating_add(u64::from(self.cfg.halt_grace_ms))
                        .min(deadline_ms);
                    self.state = State::ShutdownPending {
                        reason,
                        deadline_ms,
                        cut_at_ms: Some(cut),
                    };
                }
                State::PowerFail { .. } => self.cut(Some(ShutdownReason::PowerFail), out),
                _ => {}
            },
            HostToMcu::Zeroized => {
                if self.persisted.tamper_latched && !self.persisted.host_zeroized {
                    self.persisted.host_zeroized = true;
                    out.persist = Some(self.persisted);
                }
            }
            HostToMcu::SetLeds { link, faults } => {
                self.link = link;
                self.host_faults = faults;
            }
            HostToMcu::GetStatus => emit(out, McuToHost::Status(self.status(now_ms))),
            HostToMcu::Ack { .. } => {}
        }
    }

    fn host_alive(&mut self, now_ms: u64) {
        self.host_up = true;
        self.last_heartbeat_ms = now_ms;
        if let State::Booting { .. } = self.state {
            self.state = State::Running;
        }
    }

    fn advance(&mut self, now_ms: u64, out: &mut Outputs) {
        let cfg = self.cfg;
        match self.state {
            State::Off => {
                if self.ignition.stable && !self.low_battery_lockout && self.input_present() {
                    self.state = State::PowerOnDelay {
                        until_ms: after(now_ms, cfg.power_on_delay_ms),
                    };
                }
            }
            State::PowerOnDelay { until_ms } => {
                if !self.ignition.stable || self.low_battery_lockout {
                    self.state = State::Off;
                } else if now_ms >= until_ms && self.input_present() {
                    self.power_on(now_ms);
                }
            }
            State::Booting { since_ms } => {
                if self.power_failed(now_ms) {
                    self.enter_power_fail(now_ms, out);
                } else if self.battery_low(now_ms) {
                    self.low_battery(now_ms, out);
                } else if now_ms.saturating_sub(since_ms) >= u64::from(cfg.boot_timeout_ms) {
                    if self.ignition.stable {
                        self.power_cycle_or_fault(now_ms, out);
                    } else {
                        self.cut(None, out);
                    }
                }
            }
            State::Running | State::OffDelay { .. } => {
                if self.power_failed(now_ms) {
                    self.enter_power_fail(now_ms, out);
                } else if self.battery_low(now_ms) {
                    self.low_battery(now_ms, out);
                } else if now_ms.saturating_sub(self.last_heartbeat_ms)
                    > u64::from(cfg.watchdog_timeout_ms)
                {
                    self.watchdog_expired(now_ms, out);
                } else if let State::OffDelay { until_ms } = self.state {
                    if self.ignition.stable {
                        self.state = State::Running;
                    } else if now_ms >= until_ms {
                        self.request_shutdown(now_ms, ShutdownReason::IgnitionOff, out);
                    }
                } else if !self.ignition.stable {
                    self.state = State::OffDelay {
                        until_ms: after(now_ms, cfg.off_delay_ms),
                    };
                }
            }
            State::ShutdownPending {
                reason,
                deadline_ms,
                cut_at_ms,
            } => {
                if self.power_failed(now_ms) {
                    self.enter_power_fail(now_ms, out);
                } else if now_ms >= deadline_ms || cut_at_ms.is_some_and(|c| now_ms >= c) {
                    self.cut(Some(reason), out);
                }
            }
            State::PowerFail { deadline_ms } => {
                if self.power_restored(now_ms) {
                    self.state = self.resume;
                    // The host spent the outage flushing; give it a fresh watchdog period.
                    self.last_heartbeat_ms = now_ms;
                    emit(out, McuToHost::PowerRestored);
                } else if now_ms >= deadline_ms {
                    self.cut(Some(ShutdownReason::PowerFail), out);
                }
            }
            State::WatchdogReset { until_ms } => {
                if now_ms >= until_ms {
                    self.state = State::Booting { since_ms: now_ms };
                }
            }
            State::PowerCycle { until_ms } => {
                if now_ms >= until_ms {
                    if self.ignition.stable && !self.low_battery_lockout && self.input_present() {
                        self.power_on(now_ms);
                    } else {
                        self.state = State::Off;
                    }
                }
            }
            State::Fault { ignition_seen_off } => {
                if !self.ignition.stable {
                    self.state = State::Fault {
                        ignition_seen_off: true,
                    };
                } else if ignition_seen_off {
                    self.state = State::PowerOnDelay {
                        until_ms: after(now_ms, cfg.power_on_delay_ms),
                    };
                }
            }
        }
    }

    fn power_on(&mut self, now_ms: u64) {
        self.host_up = false;
        self.state = State::Booting { since_ms: now_ms };
    }

    fn request_shutdown(&mut self, now_ms: u64, reason: ShutdownReason, out: &mut Outputs) {
        let deadline_ms = after(now_ms, self.cfg.shutdown_deadline_ms);
        self.state = State::ShutdownPending {
            reason,
            deadline_ms,
            cut_at_ms: None,
        };
        emit(
            out,
            McuToHost::ShutdownRequest {
                reason,
                deadline_ms: self.cfg.shutdown_deadline_ms,
            },
        );
    }

    fn low_battery(&mut self, now_ms: u64, out: &mut Outputs) {
        self.low_battery_lockout = true;
        emit(
            out,
            McuToHost::LowBattery {
                millivolts: self.supply_mv,
            },
        );
        self.request_shutdown(now_ms, ShutdownReason::LowBattery, out);
    }

    fn enter_power_fail(&mut self, now_ms: u64, out: &mut Outputs) {
        let lost_at = self.below_min_since_ms.unwrap_or(now_ms);
        let mut deadline_ms = after(lost_at, self.cfg.hold_up_budget_ms);
        if let State::ShutdownPending { deadline_ms: d, .. } = self.state {
            deadline_ms = deadline_ms.min(d);
        }
        self.resume = self.state;
        self.state = State::PowerFail { deadline_ms };
        emit(
            out,
            McuToHost::PowerFail {
                budget_ms: remaining(deadline_ms, now_ms),
            },
        );
    }

    fn watchdog_expired(&mut self, now_ms: u64, out: &mut Outputs) {
        let reset_recently = self
            .last_reset_ms
            .is_some_and(|t| now_ms.saturating_sub(t) < HOUR_MS);
        if reset_recently {
            // A reset already failed to cure this host within the hour: escalate.
            self.power_cycle_or_fault(now_ms, out);
        } else {
            self.last_reset_ms = Some(now_ms);
            self.host_down(out);
            self.state = State::WatchdogReset {
                until_ms: after(now_ms, self.cfg.reset_pulse_ms),
            };
        }
    }

    fn power_cycle_or_fault(&mut self, now_ms: u64, out: &mut Outputs) {
        self.host_down(out);
        if self.cycles.try_record(now_ms) {
            self.state = State::PowerCycle {
                until_ms: after(now_ms, self.cfg.power_cycle_off_ms),
            };
        } else {
            self.state = State::Fault {
                ignition_seen_off: false,
            };
        }
    }

    fn cut(&mut self, reason: Option<ShutdownReason>, out: &mut Outputs) {
        self.host_down(out);
        if reason.is_some() {
            self.last_shutdown = reason;
        }
        self.state = State::Off;
    }

    fn host_down(&mut self, out: &mut Outputs) {
        self.host_up = false;
        self.link = LinkState::None;
        out.link_reset = true;
    }
}

fn emit(out: &mut Outputs, msg: McuToHost) {
    // Capacity covers the worst case of one step; should it not, the message is dropped rather
    // than panic (every demand is repeated on the host's next hello).
    let _ = out.to_host.push(msg);
}

fn after(now_ms: u64, delay_ms: u32) -> u64 {
    now_ms.saturating_add(u64::from(delay_ms))
}

fn remaining(deadline_ms: u64, now_ms: u64) -> u32 {
    u32::try_from(deadline_ms.saturating_sub(now_ms)).unwrap_or(u32::MAX)
}
