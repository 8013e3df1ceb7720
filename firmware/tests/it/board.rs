//! The embedded-hal adapters against `embedded-hal-mock` pins and a fake ADC.

use embedded_hal_mock::eh1::digital::{Mock as Pin, State as Level, Transaction as T};
use embedded_hal_mock::eh1::MockError;
use firmware::board::{AdcChannel, Board, Divider};
use firmware::leds::{Leds, Pattern};
use firmware::supervisor::Outputs;
use firmware::tamper::{BackupDomain, Persisted};
use std::io::ErrorKind;

/// A fake ADC returning scripted counts (`None` = conversion error).
struct FakeAdc(Vec<Option<u16>>);

impl AdcChannel for FakeAdc {
    type Error = ();
    fn read_counts(&mut self) -> Result<u16, ()> {
        if self.0.is_empty() {
            return Err(());
        }
        self.0.remove(0).ok_or(())
    }
}

#[derive(Default)]
struct FakeBackup {
    word: u32,
    erased: bool,
}

impl BackupDomain for FakeBackup {
    fn load(&mut self) -> u32 {
        self.word
    }
    fn store(&mut self, word: u32) {
        self.word = word;
    }
    fn erase_key_share(&mut self) {
        self.erased = true;
    }
}

/// 100k over 10k divider into a 3.3 V, 12-bit ADC: 36.3 V full scale.
const DIVIDER: Divider = Divider {
    vref_mv: 3_300,
    full_scale: 4_095,
    r_top_ohm: 100_000,
    r_bottom_ohm: 10_000,
};

fn pins(t: &[T]) -> Pin {
    Pin::new(t)
}

#[test]
fn divider_converts_counts_to_input_millivolts() {
    assert_eq!(DIVIDER.millivolts(0), 0);
    assert_eq!(DIVIDER.millivolts(4_095), 36_300);
    // 13.8 V at the input is 1.2545 V at the pin: 1556 counts.
    let mv = DIVIDER.millivolts(1_557);
    assert!((13_780..=13_820).contains(&mv), "{mv}");
}

#[test]
fn sample_reads_pins_and_keeps_last_good_value_on_error() {
    let ign = pins(&[
        T::get(Level::High),
        T::get(Level::High).with_error(MockError::Io(ErrorKind::Other)),
    ]);
    let tamp = pins(&[T::get(Level::Low), T::get(Level::High)]);
    let mut board = Board::new(
        ign,
        tamp,
        pins(&[]),
        pins(&[]),
        pins(&[]),
        pins(&[]),
        pins(&[]),
        FakeAdc(vec![Some(1_557), None]),
        DIVIDER,
    );
    let first = board.sample(None);
    assert!(first.ignition);
    assert!(!first.tamper);
    assert!((13_780..=13_820).contains(&first.supply_mv));
    let second = board.sample(None);
    assert!(second.ignition, "read error keeps the last good value");
    assert!(second.tamper);
    assert_eq!(second.supply_mv, first.supply_mv);
    assert_eq!(board.errors().input_reads, 1);
    assert_eq!(board.errors().adc_reads, 1);
    board.ignition.done();
    board.tamper.done();
    board.host_power.done();
    board.host_reset.done();
    board.led_power.done();
    board.led_link.done();
    board.led_fault.done();
}

#[test]
fn apply_drives_power_reset_leds_and_backup_domain() {
    let mut board = Board::new(
        pins(&[]),
        pins(&[]),
        pins(&[T::set(Level::High), T::set(Level::High)]),
        // Active-low reset: released = high, asserted = low.
        pins(&[T::set(Level::High), T::set(Level::Low)]),
        pins(&[T::set(Level::High), T::set(Level::High)]),
        pins(&[T::set(Level::Low), T::set(Level::High)]),
        // Code(3) at t=0 is lit; at t=300 (between flashes) dark.
        pins(&[T::set(Level::High), T::set(Level::Low)]),
        FakeAdc(vec![]),
        DIVIDER,
    );
    let mut backup = FakeBackup::default();
    let leds = Leds {
        power: Pattern::On,
        link: Pattern::Off,
        fault: Pattern::Code(3),
    };
    let persisted = Persisted {
        tamper_latched: true,
        host_zeroized: false,
    };
    let out = Outputs {
        host_power: true,
        leds,
        persist: Some(persisted),
        erase_key_share: true,
        ..Outputs::default()
    };
    board.apply(0, &out, &mut backup);
    assert!(backup.erased);
    assert_eq!(Persisted::from_word(backup.load()), persisted);
    let out2 = Outputs {
        host_power: true,
        host_reset: true,
        leds: Leds {
            link: Pattern::On,
            ..leds
        },
        ..Outputs::default()
    };
    board.apply(300, &out2, &mut backup);
    assert_eq!(board.errors().output_writes, 0);
    board.host_power.done();
    board.host_reset.done();
    board.led_power.done();
    board.led_link.done();
    board.led_fault.done();
    board.ignition.done();
    board.tamper.done();
}
