//! Thin pin and bus adapters between the pure supervisor and the board, generic over
//! `embedded-hal` 1.0 traits (and [`AdcChannel`], since embedded-hal 1.0 has no ADC trait).
//!
//! [`Board::sample`] turns pin and ADC readings into [`Inputs`]; [`Board::apply`] turns
//! [`Outputs`] into pin levels and backup-domain writes. A read error never stops the supervisor:
//! the last good reading is reused and the error counted. Tested on the host with
//! `embedded-hal-mock`; the MCU binary instantiates it with the HAL's pin types.

use crate::leds::Leds;
use crate::proto::HostToMcu;
use crate::supervisor::{Inputs, Outputs};
use crate::tamper::BackupDomain;
use embedded_hal::digital::{InputPin, OutputPin};

/// A single ADC channel returning raw counts (embedded-hal 1.0 defines no ADC trait).
pub trait AdcChannel {
    /// Read error.
    type Error: core::fmt::Debug;
    /// One conversion, in counts of `0..=full_scale`.
    fn read_counts(&mut self) -> Result<u16, Self::Error>;
}

/// Converts ADC counts on a resistor divider into input millivolts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Divider {
    /// ADC reference voltage in millivolts.
    pub vref_mv: u32,
    /// Counts at `vref_mv` (4095 for 12 bits).
    pub full_scale: u32,
    /// Upper resistor, ohms.
    pub r_top_ohm: u32,
    /// Lower resistor (to ground), ohms.
    pub r_bottom_ohm: u32,
}

impl Divider {
    /// Input millivolts for `counts` (saturating at `u16::MAX`).
    pub fn millivolts(&self, counts: u16) -> u16 {
        let at_pin =
            u64::from(counts) * u64::from(self.vref_mv) / u64::from(self.full_scale.max(1));
        let total = u64::from(self.r_top_ohm) + u64::from(self.r_bottom_ohm);
        let mv = at_pin * total / u64::from(self.r_bottom_ohm.max(1));
        u16::try_from(mv).unwrap_or(u16::MAX)
    }
}

/// Pin polarity: whether "active" is a high level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polarity {
    /// Active when high.
    ActiveHigh,
    /// Active when low.
    ActiveLow,
}

impl Polarity {
    fn level(self, active: bool) -> bool {
        match self {
            Polarity::ActiveHigh => active,
            Polarity::ActiveLow => !active,
        }
    }
}

/// Errors seen while sampling or applying (counted, never fatal).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BoardErrors {
    /// Failed input pin reads.
    pub input_reads: u32,
    /// Failed ADC conversions.
    pub adc_reads: u32,
    /// Failed output pin writes.
    pub output_writes: u32,
}

/// The supervisor's view of the board's pins.
#[derive(Debug)]
pub struct Board<Ign, Tamp, Pwr, Rst, LedP, LedL, LedF, Adc> {
    /// Ignition sense input (through the opto-coupler).
    pub ignition: Ign,
    /// Tamper switch input.
    pub tamper: Tamp,
    /// Host power-rail enable.
    pub host_power: Pwr,
    /// Host reset line.
    pub host_reset: Rst,
    /// Power LED.
    pub led_power: LedP,
    /// Link LED.
    pub led_link: LedL,
    /// Fault LED.
    pub led_fault: LedF,
    /// Input-voltage ADC channel.
    pub supply: Adc,
    /// Divider in front of the ADC.
    pub divider: Divider,
    /// Ignition polarity.
    pub ignition_polarity: Polarity,
    /// Tamper polarity (active = enclosure open).
    pub tamper_polarity: Polarity,
    /// Reset polarity (active = reset asserted).
    pub reset_polarity: Polarity,
    last: Inputs,
    errors: BoardErrors,
}

impl<Ign, Tamp, Pwr, Rst, LedP, LedL, LedF, Adc> Board<Ign, Tamp, Pwr, Rst, LedP, LedL, LedF, Adc>
where
    Ign: InputPin,
    Tamp: InputPin,
    Pwr: OutputPin,
    Rst: OutputPin,
    LedP: OutputPin,
    LedL: OutputPin,
    LedF: OutputPin,
    Adc: AdcChannel,
{
    /// Wrap the pins. Polarities: ignition active-high, tamper active-high (switch opens, pull-up
    /// wins), reset active-low; power enable and LEDs active-high.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ignition: Ign,
        tamper: Tamp,
        host_power: Pwr,
        host_reset: Rst,
        led_power: LedP,
        led_link: LedL,
        led_fault: LedF,
        supply: Adc,
        divider: Divider,
    ) -> Self {
        Self {
            ignition,
            tamper,
            host_power,
            host_reset,
            led_power,
            led_link,
            led_fault,
            supply,
            divider,
            ignition_polarity: Polarity::ActiveHigh,
            tamper_polarity: Polarity::ActiveHigh,
            reset_polarity: Polarity::ActiveLow,
            last: Inputs {
                ignition: false,
                tamper: false,
                supply_mv: 0,
                host: None,
            },
            errors: BoardErrors::default(),
        }
    }

    /// Error counters.
    pub fn errors(&self) -> BoardErrors {
        self.errors
    }

    /// Read every input; failed reads reuse the previous value.
    pub fn sample(&mut self, host: Option<HostToMcu>) -> Inputs {
        match self.ignition.is_high() {
            Ok(high) => self.last.ignition = self.ignition_polarity.level(high),
            Err(_) => self.errors.input_reads = self.errors.input_reads.saturating_add(1),
        }
        match self.tamper.is_high() {
            Ok(high) => self.last.tamper = self.tamper_polarity.level(high),
            Err(_) => self.errors.input_reads = self.errors.input_reads.saturating_add(1),
        }
        match self.supply.read_counts() {
            Ok(counts) => self.last.supply_mv = self.divider.millivolts(counts),
            Err(_) => self.errors.adc_reads = self.errors.adc_reads.saturating_add(1),
        }
        Inputs { host, ..self.last }
    }

    /// Drive the outputs for `out` at `now_ms` and persist what must survive power loss.
    pub fn apply(&mut self, now_ms: u64, out: &Outputs, backup: &mut impl BackupDomain) {
        if out.erase_key_share {
            backup.erase_key_share();
        }
        if let Some(p) = out.persist {
            backup.store(p.to_word());
        }
        let reset_level = self.reset_polarity.level(out.host_reset);
        let results = [
            self.host_power.set_state(out.host_power.into()).is_ok(),
            self.host_reset.set_state(reset_level.into()).is_ok(),
        ];
        let led_results = self.drive_leds(now_ms, out.leds);
        let failures = results
            .iter()
            .chain(led_results.iter())
            .filter(|ok| !**ok)
            .count();
        self.errors.output_writes = self
            .errors
            .output_writes
            .saturating_add(u32::try_from(failures).unwrap_or(u32::MAX));
    }

    fn drive_leds(&mut self, now_ms: u64, leds: Leds) -> [bool; 3] {
        [
            self.led_power
                .set_state(leds.power.level(now_ms).into())
                .is_ok(),
            self.led_link
                .set_state(leds.link.level(now_ms).into())
                .is_ok(),
            self.led_fault
                .set_state(leds.fault.level(now_ms).into())
                .is_ok(),
        ]
    }
}
