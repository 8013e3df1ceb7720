//! Configuration validation: defaults pass, nonsense is refused with a typed error.

use firmware::{Config, ConfigError, Settings};

fn check(edit: impl FnOnce(&mut Settings), expected: ConfigError) {
    let mut s = Settings::DEFAULT_12V;
    edit(&mut s);
    assert_eq!(Config::new(s), Err(expected));
}

#[test]
fn defaults_are_the_documented_timings() {
    let c = Config::new(Settings::DEFAULT_12V).expect("defaults validate");
    assert_eq!(c.ignition_debounce_ms, 2_000);
    assert_eq!(c.power_on_delay_ms, 5_000);
    assert_eq!(c.boot_timeout_ms, 180_000);
    assert_eq!(c.off_delay_ms, 900_000);
    assert_eq!(c.shutdown_deadline_ms, 120_000);
    assert_eq!(c.low_battery_mv, 11_000);
    assert_eq!(c.low_battery_for_ms, 60_000);
    assert_eq!(c.watchdog_timeout_ms, 30_000);
    assert_eq!(c.max_power_cycles_per_hour, 3);
    assert_eq!(Config::default(), c);
}

#[test]
fn nonsense_is_refused() {
    check(
        |s| s.hold_up_budget_ms = 0,
        ConfigError::Zero("hold_up_budget_ms"),
    );
    check(
        |s| s.shutdown_deadline_ms = 0,
        ConfigError::Zero("shutdown_deadline_ms"),
    );
    check(
        |s| s.watchdog_timeout_ms = 0,
        ConfigError::Zero("watchdog_timeout_ms"),
    );
    check(
        |s| s.ignition_debounce_ms = 0,
        ConfigError::Zero("ignition_debounce_ms"),
    );
    check(
        |s| s.halt_grace_ms = 120_000,
        ConfigError::GraceNotBeforeDeadline,
    );
    check(
        |s| s.power_fail_confirm_ms = 8_000,
        ConfigError::ConfirmNotWithinBudget,
    );
    check(
        |s| s.power_restore_ms = 7_950,
        ConfigError::RestoreNotWithinBudget,
    );
    check(|s| s.low_battery_mv = 5_000, ConfigError::ThresholdOrder);
    check(
        |s| s.low_battery_resume_mv = 10_000,
        ConfigError::ThresholdOrder,
    );
    check(|s| s.power_restore_mv = 6_000, ConfigError::ThresholdOrder);
    check(
        |s| s.reset_pulse_ms = 180_000,
        ConfigError::ResetNotBeforeBootTimeout,
    );
    check(
        |s| s.max_power_cycles_per_hour = 0,
        ConfigError::PowerCycleLimit,
    );
    check(
        |s| s.max_power_cycles_per_hour = 9,
        ConfigError::PowerCycleLimit,
    );
    check(
        |s| s.off_delay_ms = u32::MAX,
        ConfigError::TooLong("off_delay_ms"),
    );
    assert_eq!(
        ConfigError::GraceNotBeforeDeadline.to_string(),
        "halt_grace_ms must be shorter than shutdown_deadline_ms"
    );
}
