//! The board's pin map: the one source of truth for which MCU pin does what, keyed by board
//! revision, plus the electrical constants the firmware's defaults are derived from.
//!
//! The board (see `hw/README.md`): an STM32G474 (Cortex-M4F, 170 MHz) supervisor beside the Linux
//! host module, a 6–60 V synchronous buck for the host rail, a 5 × 10 F / 2.7 V supercapacitor
//! hold-up bank behind an ideal-diode OR-ing stage, input sensing *before* the OR-ing diode so the
//! capacitor cannot hide an input loss, and the enclosure tamper switch on the RTC tamper pin
//! (battery-backed domain).

use firmware::board::Divider;

/// Board revisions this crate knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BoardRev {
    /// First production board.
    RevA,
    /// Rev B: LEDs moved to a front-panel header, larger hold-up bank (6 cells).
    RevB,
}

impl BoardRev {
    /// The revision byte the MCU reports in its hello.
    pub const fn code(self) -> u8 {
        match self {
            BoardRev::RevA => 1,
            BoardRev::RevB => 2,
        }
    }

    /// The revision for a hello's byte.
    pub const fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(BoardRev::RevA),
            2 => Some(BoardRev::RevB),
            _ => None,
        }
    }
}

/// An MCU pin: port letter and number, e.g. `PB0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Pin {
    /// GPIO port (`'A'`..).
    pub port: char,
    /// Pin number within the port.
    pub number: u8,
}

const fn pin(port: char, number: u8) -> Pin {
    Pin { port, number }
}

impl core::fmt::Display for Pin {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "P{}{}", self.port, self.number)
    }
}

/// Every signal the supervisor uses, for one board revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PinMap {
    /// Revision.
    pub rev: BoardRev,
    /// Ignition sense, through an opto-coupler; high = ignition on.
    pub ignition: Pin,
    /// Enclosure tamper switch on RTC_TAMP1 (battery-backed); high = enclosure open.
    pub tamper: Pin,
    /// Host buck-converter enable; high = host powered.
    pub host_power_en: Pin,
    /// Host reset, open-drain, active low.
    pub host_reset_n: Pin,
    /// Power LED (green).
    pub led_power: Pin,
    /// Link LED (blue).
    pub led_link: Pin,
    /// Fault LED (amber).
    pub led_fault: Pin,
    /// Input-voltage sense: ADC1 channel on this pin (divider before the OR-ing diode).
    pub supply_sense: Pin,
    /// ADC1 channel number of `supply_sense`.
    pub supply_adc_channel: u8,
    /// Fast power-fail comparator input (COMP1), same divider node.
    pub power_fail_comp: Pin,
    /// UART TX to the host (USART2).
    pub uart_tx: Pin,
    /// UART RX from the host (USART2).
    pub uart_rx: Pin,
    /// The host's serial device for the supervisor link.
    pub host_serial_device: &'static str,
    /// Link baud rate.
    pub baud: u32,
    /// Input-sense divider.
    pub supply_divider: Divider,
    /// Hold-up bank.
    pub hold_up: HoldUp,
}

/// Input-sense divider: 100 kΩ over 10 kΩ into the 3.3 V, 12-bit ADC (36.3 V full scale, so a
/// 24 V system's 28.8 V charging voltage and short surges stay in range; the TVS clamps beyond).
pub const SUPPLY_DIVIDER: Divider = Divider {
    vref_mv: 3_300,
    full_scale: 4_095,
    r_top_ohm: 100_000,
    r_bottom_ohm: 10_000,
};

/// Minimum input of the host buck converter (the firmware's `converter_min_mv`).
pub const CONVERTER_MIN_MV: u16 = 6_000;

/// Rev A pin map.
pub const REV_A: PinMap = PinMap {
    rev: BoardRev::RevA,
    ignition: pin('B', 0),
    tamper: pin('C', 13),
    host_power_en: pin('B', 1),
    host_reset_n: pin('B', 2),
    led_power: pin('B', 12),
    led_link: pin('B', 13),
    led_fault: pin('B', 14),
    supply_sense: pin('A', 0),
    supply_adc_channel: 1,
    power_fail_comp: pin('A', 1),
    uart_tx: pin('A', 2),
    uart_rx: pin('A', 3),
    host_serial_device: "/dev/ttyS1",
    baud: 115_200,
    supply_divider: SUPPLY_DIVIDER,
    hold_up: HoldUp::REV_A,
};

/// Rev B pin map: LEDs on the front-panel header (PC6–PC8), six-cell hold-up bank.
pub const REV_B: PinMap = PinMap {
    rev: BoardRev::RevB,
    led_power: pin('C', 6),
    led_link: pin('C', 7),
    led_fault: pin('C', 8),
    hold_up: HoldUp::REV_B,
    ..REV_A
};

/// The pin map of a revision.
pub const fn pin_map(rev: BoardRev) -> &'static PinMap {
    match rev {
        BoardRev::RevA => &REV_A,
        BoardRev::RevB => &REV_B,
    }
}

/// Hold-up capacitor bank and the load it must carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldUp {
    /// Cells in series.
    pub cells: u32,
    /// Capacitance of one cell, millifarads.
    pub cell_mf: u32,
    /// Charge voltage of the bank, millivolts.
    pub charged_mv: u32,
    /// Lowest bank voltage the buck still regulates from, millivolts.
    pub min_mv: u32,
    /// Host draw at the buck output, milliwatts.
    pub load_mw: u32,
    /// Buck efficiency, percent.
    pub efficiency_pct: u32,
    /// Capacitance left at end of life, percent (supercaps lose ~20 %).
    pub end_of_life_pct: u32,
    /// Budget the firmware announces (≤ the end-of-life estimate, with margin), milliseconds.
    pub announced_budget_ms: u32,
}

impl HoldUp {
    /// Rev A: 5 × 10 F / 2.7 V in series (2 F at 13.5 V), host 10 W.
    pub const REV_A: HoldUp = HoldUp {
        cells: 5,
        cell_mf: 10_000,
        charged_mv: 13_500,
        min_mv: CONVERTER_MIN_MV as u32,
        load_mw: 10_000,
        efficiency_pct: 90,
        end_of_life_pct: 80,
        announced_budget_ms: 8_000,
    };
    /// Rev B: 6 × 10 F / 2.7 V in series (1.67 F at 16.2 V), host 10 W.
    pub const REV_B: HoldUp = HoldUp {
        cells: 6,
        cell_mf: 10_000,
        charged_mv: 16_200,
        min_mv: CONVERTER_MIN_MV as u32,
        load_mw: 10_000,
        efficiency_pct: 90,
        end_of_life_pct: 80,
        announced_budget_ms: 10_000,
    };

    /// Bank capacitance in millifarads (cells in series divide).
    pub const fn bank_mf(&self) -> u32 {
        self.cell_mf / self.cells
    }

    /// Usable energy in millijoules: E = ½·C·(V₁² − V₂²).
    pub const fn usable_mj(&self, capacitance_mf: u32) -> u64 {
        let v1 = self.charged_mv as u64;
        let v2 = self.min_mv as u64;
        // mF · mV² = 1e-3 F · 1e-6 V² = 1e-9 J; /2 for the ½; /1e6 to millijoules.
        capacitance_mf as u64 * (v1 * v1 - v2 * v2) / 2 / 1_000_000
    }

    /// Hold-up time in milliseconds for a capacitance: usable energy × efficiency / load.
    pub const fn hold_up_ms(&self, capacitance_mf: u32) -> u64 {
        self.usable_mj(capacitance_mf) * self.efficiency_pct as u64 * 1_000
            / 100
            / self.load_mw as u64
    }

    /// Hold-up time of a new bank.
    pub const fn new_hold_up_ms(&self) -> u64 {
        self.hold_up_ms(self.bank_mf())
    }

    /// Hold-up time at end of life.
    pub const fn end_of_life_hold_up_ms(&self) -> u64 {
        self.hold_up_ms(self.bank_mf() * self.end_of_life_pct / 100)
    }
}
