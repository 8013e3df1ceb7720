//! Pin map sanity and the hold-up capacitor sizing behind the announced budget.

use hw::pins::{pin_map, BoardRev, HoldUp, CONVERTER_MIN_MV, REV_A, REV_B};
use std::collections::HashSet;

#[test]
fn every_signal_has_its_own_pin() {
    for rev in [BoardRev::RevA, BoardRev::RevB] {
        let m = pin_map(rev);
        let pins = [
            m.ignition,
            m.tamper,
            m.host_power_en,
            m.host_reset_n,
            m.led_power,
            m.led_link,
            m.led_fault,
            m.supply_sense,
            m.power_fail_comp,
            m.uart_tx,
            m.uart_rx,
        ];
        let unique: HashSet<_> = pins.iter().collect();
        assert_eq!(unique.len(), pins.len(), "{rev:?} reuses a pin");
        assert_eq!(m.rev, rev);
        assert_eq!(BoardRev::from_code(rev.code()), Some(rev));
    }
    assert_eq!(
        REV_A.tamper.to_string(),
        "PC13",
        "tamper on the RTC_TAMP1 pin"
    );
}

#[test]
fn hold_up_bank_covers_the_announced_budget_at_end_of_life() {
    for hold in [HoldUp::REV_A, HoldUp::REV_B] {
        assert!(
            hold.end_of_life_hold_up_ms() >= u64::from(hold.announced_budget_ms) + 2_000,
            "{hold:?}: {} ms at end of life",
            hold.end_of_life_hold_up_ms()
        );
    }
    // Rev A worked example (hw/README.md): 2 F, 13.5 V -> 6 V, 10 W at 90 %.
    let a = HoldUp::REV_A;
    assert_eq!(a.bank_mf(), 2_000);
    assert_eq!(a.usable_mj(a.bank_mf()), 146_250);
    assert_eq!(a.new_hold_up_ms(), 13_162);
    assert_eq!(a.end_of_life_hold_up_ms(), 10_530);
    assert_eq!(u32::from(CONVERTER_MIN_MV), a.min_mv);
    assert_eq!(
        firmware::Settings::DEFAULT_12V.hold_up_budget_ms,
        a.announced_budget_ms
    );
    assert_eq!(
        firmware::Settings::DEFAULT_12V.converter_min_mv,
        CONVERTER_MIN_MV
    );
    const { assert!(REV_B.hold_up.announced_budget_ms > REV_A.hold_up.announced_budget_ms) };
}

#[test]
fn supply_divider_reads_12_and_24_volt_systems() {
    let d = REV_A.supply_divider;
    // 4095 counts = 36.3 V: a 24 V system charging at 28.8 V stays in range.
    assert_eq!(d.millivolts(4_095), 36_300);
    assert!(d.millivolts(3_249) >= 28_790);
}
