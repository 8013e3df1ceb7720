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

/// The real board's image (`firmware/image/src/board/g474.rs`) wires the pins of `REV_B`: its
/// source is checked against the pin map so that the two cannot drift apart.
#[test]
fn the_g474_image_uses_the_rev_b_pin_map() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../firmware/image/src/board/g474.rs");
    let src = std::fs::read_to_string(&path).unwrap();
    let pin = |p: hw::pins::Pin| {
        let port = p.port.to_ascii_lowercase();
        format!("gpio{port}.p{port}{}", p.number)
    };
    let m = &REV_B;
    let expected = [
        format!("{}.into_pull_down_input()", pin(m.ignition)),
        format!("{}.into_pull_up_input()", pin(m.tamper)),
        format!(
            "host_power = {}.into_push_pull_output()",
            pin(m.host_power_en)
        ),
        format!(
            "host_reset = {}.into_open_drain_output()",
            pin(m.host_reset_n)
        ),
        format!("{}.into_push_pull_output(),", pin(m.led_power)),
        format!("{}.into_push_pull_output(),", pin(m.led_link)),
        format!("{}.into_push_pull_output(),", pin(m.led_fault)),
        format!("pin: {}.into_analog()", pin(m.supply_sense)),
        format!("tx = {}.into_alternate()", pin(m.uart_tx)),
        format!("rx = {}.into_alternate()", pin(m.uart_rx)),
        format!("baudrate({}_{:03}.bps())", m.baud / 1000, m.baud % 1000),
        "dp.ADC1,".to_string(),
        format!(
            "hold_up_budget_ms: {}_{:03},",
            m.hold_up.announced_budget_ms / 1000,
            m.hold_up.announced_budget_ms % 1000
        ),
        format!("board_rev: {},", BoardRev::RevB.code()),
    ];
    for e in &expected {
        assert!(
            src.contains(e.as_str()),
            "{} does not contain {e:?}",
            path.display()
        );
    }
    // The board's LEDs in Board::new's order: power, link, fault.
    let leds: Vec<usize> = [m.led_power, m.led_link, m.led_fault]
        .iter()
        .map(|p| {
            src.find(&format!("{}.into_push_pull_output(),", pin(*p)))
                .unwrap()
        })
        .collect();
    assert!(leds.windows(2).all(|w| w[0] < w[1]), "LED order");
    assert_eq!(m.supply_adc_channel, 1, "PA0 is ADC1_IN1");
}
