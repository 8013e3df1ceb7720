//! Supervisor timings and thresholds, validated once: a [`Config`] that exists is a config that
//! makes sense (parse, don't validate).
//!
//! Defaults follow `docs/supervisor.md` and the supervisor table in the design notes; the
//! hold-up budget comes from the capacitor sizing in `hw/README.md`.

use core::fmt;

/// One hour, the window of the watchdog power-cycle limit.
pub const HOUR_MS: u64 = 3_600_000;
/// Largest power-cycle limit the supervisor can track.
pub const MAX_POWER_CYCLES_TRACKED: usize = 8;

/// Raw settings; turn them into a [`Config`] with [`Config::new`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// Ignition must hold a level this long before it counts.
    pub ignition_debounce_ms: u32,
    /// After debounced ignition on, wait this long (skip engine cranking) before powering the host.
    pub power_on_delay_ms: u32,
    /// The host must say hello within this long of power-on or reset.
    pub boot_timeout_ms: u32,
    /// After debounced ignition off, keep the host up this long before asking it to shut down.
    pub off_delay_ms: u32,
    /// Hard cut this long after a shutdown request if the host never acknowledges.
    pub shutdown_deadline_ms: u32,
    /// After a shutdown acknowledgement, wait this long (OS halt) before cutting power.
    pub halt_grace_ms: u32,
    /// Input below this is "below the converter's minimum": the hold-up capacitor is carrying.
    pub converter_min_mv: u16,
    /// Input must stay below `converter_min_mv` this long to be a power failure (crank filter).
    pub power_fail_confirm_ms: u32,
    /// Energy budget of the hold-up capacitor, counted from the moment input dropped.
    pub hold_up_budget_ms: u32,
    /// Input at or above this, for `power_restore_ms`, means power returned.
    pub power_restore_mv: u16,
    /// Input must hold `power_restore_mv` this long to count as restored.
    pub power_restore_ms: u32,
    /// Low-battery threshold (11.0 V on 12 V systems, 22.0 V on 24 V systems).
    pub low_battery_mv: u16,
    /// Supply must stay below `low_battery_mv` this long to force a shutdown.
    pub low_battery_for_ms: u32,
    /// After a low-battery shutdown the host stays off until the supply reaches this.
    pub low_battery_resume_mv: u16,
    /// A running host that sends no heartbeat for longer than this is reset.
    pub watchdog_timeout_ms: u32,
    /// Length of the reset pulse.
    pub reset_pulse_ms: u32,
    /// How long host power stays off during a power cycle.
    pub power_cycle_off_ms: u32,
    /// At most this many watchdog power-cycles in any hour; then the host stays off (fault).
    pub max_power_cycles_per_hour: u8,
    /// Board revision reported in the MCU hello.
    pub board_rev: u8,
}

impl Settings {
    /// Defaults for a 12 V vehicle system.
    pub const DEFAULT_12V: Settings = Settings {
        ignition_debounce_ms: 2_000,
        power_on_delay_ms: 5_000,
        boot_timeout_ms: 180_000,
        off_delay_ms: 15 * 60_000,
        shutdown_deadline_ms: 120_000,
        halt_grace_ms: 3_000,
        converter_min_mv: 6_000,
        power_fail_confirm_ms: 100,
        hold_up_budget_ms: 8_000,
        power_restore_mv: 8_000,
        power_restore_ms: 200,
        low_battery_mv: 11_000,
        low_battery_for_ms: 60_000,
        low_battery_resume_mv: 12_000,
        watchdog_timeout_ms: 30_000,
        reset_pulse_ms: 200,
        power_cycle_off_ms: 5_000,
        max_power_cycles_per_hour: 3,
        board_rev: 1,
    };

    /// Defaults for a 24 V vehicle system (battery thresholds doubled).
    pub const DEFAULT_24V: Settings = Settings {
        low_battery_mv: 22_000,
        low_battery_resume_mv: 24_000,
        power_restore_mv: 8_000,
        ..Settings::DEFAULT_12V
    };
}

impl Default for Settings {
    fn default() -> Self {
        Self::DEFAULT_12V
    }
}

/// Why a [`Settings`] was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigError {
    /// A duration or threshold that must be non-zero is zero.
    Zero(&'static str),
    /// A duration exceeds its sane upper bound.
    TooLong(&'static str),
    /// `halt_grace_ms` must be shorter than `shutdown_deadline_ms`.
    GraceNotBeforeDeadline,
    /// `power_fail_confirm_ms` must be shorter than `hold_up_budget_ms`.
    ConfirmNotWithinBudget,
    /// `power_restore_ms` must be shorter than the budget left after confirmation.
    RestoreNotWithinBudget,
    /// Thresholds must rise: converter minimum < restore, converter minimum < low battery <
    /// low-battery resume.
    ThresholdOrder,
    /// `reset_pulse_ms` must be shorter than `boot_timeout_ms`.
    ResetNotBeforeBootTimeout,
    /// `max_power_cycles_per_hour` must be within `1..=MAX_POWER_CYCLES_TRACKED`.
    PowerCycleLimit,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zero(field) => write!(f, "{field} must be greater than zero"),
            Self::TooLong(field) => write!(f, "{field} is longer than its upper bound"),
            Self::GraceNotBeforeDeadline => {
                f.write_str("halt_grace_ms must be shorter than shutdown_deadline_ms")
            }
            Self::ConfirmNotWithinBudget => {
                f.write_str("power_fail_confirm_ms must be shorter than hold_up_budget_ms")
            }
            Self::RestoreNotWithinBudget => f.write_str(
                "power_fail_confirm_ms + power_restore_ms must be shorter than hold_up_budget_ms",
            ),
            Self::ThresholdOrder => f.write_str(
                "need converter_min_mv < power_restore_mv and \
                 converter_min_mv < low_battery_mv < low_battery_resume_mv",
            ),
            Self::ResetNotBeforeBootTimeout => {
                f.write_str("reset_pulse_ms must be shorter than boot_timeout_ms")
            }
            Self::PowerCycleLimit => write!(
                f,
                "max_power_cycles_per_hour must be between 1 and {MAX_POWER_CYCLES_TRACKED}"
            ),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Validated supervisor configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config(Settings);

const DAY_MS: u32 = 24 * 3_600_000;

impl Config {
    /// Validate `s`.
    pub fn new(s: Settings) -> Result<Self, ConfigError> {
        let nonzero: [(&'static str, u32); 12] = [
            ("ignition_debounce_ms", s.ignition_debounce_ms),
            ("boot_timeout_ms", s.boot_timeout_ms),
            ("shutdown_deadline_ms", s.shutdown_deadline_ms),
            ("power_fail_confirm_ms", s.power_fail_confirm_ms),
            ("hold_up_budget_ms", s.hold_up_budget_ms),
            ("power_restore_ms", s.power_restore_ms),
            ("low_battery_for_ms", s.low_battery_for_ms),
            ("watchdog_timeout_ms", s.watchdog_timeout_ms),
            ("reset_pulse_ms", s.reset_pulse_ms),
            ("power_cycle_off_ms", s.power_cycle_off_ms),
            ("converter_min_mv", u32::from(s.converter_min_mv)),
            ("low_battery_mv", u32::from(s.low_battery_mv)),
        ];
        for (field, value) in nonzero {
            if value == 0 {
                return Err(ConfigError::Zero(field));
            }
        }
        let bounded: [(&'static str, u32, u32); 8] = [
            ("ignition_debounce_ms", s.ignition_debounce_ms, 60_000),
            ("power_on_delay_ms", s.power_on_delay_ms, 600_000),
            ("boot_timeout_ms", s.boot_timeout_ms, 3_600_000),
            ("off_delay_ms", s.off_delay_ms, DAY_MS),
            ("shutdown_deadline_ms", s.shutdown_deadline_ms, 3_600_000),
            ("hold_up_budget_ms", s.hold_up_budget_ms, 600_000),
            ("low_battery_for_ms", s.low_battery_for_ms, 3_600_000),
            ("watchdog_timeout_ms", s.watchdog_timeout_ms, 3_600_000),
        ];
        for (field, value, max) in bounded {
            if value > max {
                return Err(ConfigError::TooLong(field));
            }
        }
        if s.halt_grace_ms >= s.shutdown_deadline_ms {
            return Err(ConfigError::GraceNotBeforeDeadline);
        }
        if s.power_fail_confirm_ms >= s.hold_up_budget_ms {
            return Err(ConfigError::ConfirmNotWithinBudget);
        }
        if s.power_fail_confirm_ms.saturating_add(s.power_restore_ms) >= s.hold_up_budget_ms {
            return Err(ConfigError::RestoreNotWithinBudget);
        }
        if !(s.converter_min_mv < s.power_restore_mv
            && s.converter_min_mv < s.low_battery_mv
            && s.low_battery_mv < s.low_battery_resume_mv)
        {
            return Err(ConfigError::ThresholdOrder);
        }
        if s.reset_pulse_ms >= s.boot_timeout_ms {
            return Err(ConfigError::ResetNotBeforeBootTimeout);
        }
        if s.max_power_cycles_per_hour == 0
            || usize::from(s.max_power_cycles_per_hour) > MAX_POWER_CYCLES_TRACKED
        {
            return Err(ConfigError::PowerCycleLimit);
        }
        Ok(Config(s))
    }

    /// The validated settings.
    pub const fn settings(&self) -> &Settings {
        &self.0
    }
}

impl Default for Config {
    fn default() -> Self {
        // The defaults are checked by a unit test; they always validate.
        Config(Settings::DEFAULT_12V)
    }
}

impl core::ops::Deref for Config {
    type Target = Settings;
    fn deref(&self) -> &Settings {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        assert_eq!(
            Config::new(Settings::DEFAULT_12V).map(|c| *c.settings()),
            Ok(Settings::DEFAULT_12V)
        );
        assert!(Config::new(Settings::DEFAULT_24V).is_ok());
    }
}
