//! LED patterns, derived purely from supervisor state so they are unit-testable.
//!
//! Three LEDs: power, link and fault. The state machine decides a [`Pattern`] for each; a pattern
//! turns into a pin level with [`Pattern::level`] at any instant, so the board adapter only copies
//! levels to pins.
//!
//! | LED | pattern | meaning |
//! | --- | --- | --- |
//! | power | off | host unpowered (off, power-cycle, fault) |
//! | power | slow blink | power-on delay or host booting |
//! | power | on | host running (including the off-delay) |
//! | power | fast blink | shutdown pending, power fail, watchdog reset |
//! | link | off / slow blink / on / fast blink | no link / cellular / depot Wi-Fi / syncing |
//! | fault | code 1 | watchdog reset or power-cycle in the last hour |
//! | fault | on | watchdog power-cycle limit reached, host held off |
//! | fault | code 2 | low battery |
//! | fault | code 3 | tamper latched |
//! | fault | code 4 | host certificate expired |
//!
//! A code *n* is *n* short flashes then a pause. With several faults, the most serious shows:
//! tamper, then watchdog limit, then watchdog, then low battery, then certificate.

use crate::proto::{Faults, LinkState};

/// Slow blink period.
pub const SLOW_PERIOD_MS: u64 = 1_000;
/// Fast blink period.
pub const FAST_PERIOD_MS: u64 = 250;
/// One flash of a fault code (on for half).
pub const CODE_FLASH_MS: u64 = 400;
/// Pause after a fault code.
pub const CODE_PAUSE_MS: u64 = 1_600;

/// A blink pattern.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pattern {
    /// Dark.
    #[default]
    Off,
    /// Lit.
    On,
    /// 1 Hz, 50 % duty.
    SlowBlink,
    /// 4 Hz, 50 % duty.
    FastBlink,
    /// `n` flashes then a pause.
    Code(u8),
}

impl Pattern {
    /// Whether the LED is lit at `now_ms`.
    pub fn level(self, now_ms: u64) -> bool {
        match self {
            Pattern::Off => false,
            Pattern::On => true,
            Pattern::SlowBlink => now_ms % SLOW_PERIOD_MS < SLOW_PERIOD_MS / 2,
            Pattern::FastBlink => now_ms % FAST_PERIOD_MS < FAST_PERIOD_MS / 2,
            Pattern::Code(0) => false,
            Pattern::Code(n) => {
                let cycle = u64::from(n) * CODE_FLASH_MS + CODE_PAUSE_MS;
                let t = now_ms % cycle;
                t < u64::from(n) * CODE_FLASH_MS && t % CODE_FLASH_MS < CODE_FLASH_MS / 2
            }
        }
    }
}

/// Patterns for the three LEDs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Leds {
    /// Power LED.
    pub power: Pattern,
    /// Link LED.
    pub link: Pattern,
    /// Fault LED.
    pub fault: Pattern,
}

/// Link LED pattern for a link state (dark whenever the host is down).
pub fn link_pattern(link: LinkState, host_up: bool) -> Pattern {
    if !host_up {
        return Pattern::Off;
    }
    match link {
        LinkState::None => Pattern::Off,
        LinkState::Cellular => Pattern::SlowBlink,
        LinkState::DepotWifi => Pattern::On,
        LinkState::Syncing => Pattern::FastBlink,
    }
}

/// Fault LED pattern: the most serious fault wins.
pub fn fault_pattern(faults: Faults) -> Pattern {
    if faults.contains(Faults::TAMPER) {
        Pattern::Code(3)
    } else if faults.contains(Faults::WATCHDOG_LIMIT) {
        Pattern::On
    } else if faults.contains(Faults::WATCHDOG) {
        Pattern::Code(1)
    } else if faults.contains(Faults::LOW_BATTERY) {
        Pattern::Code(2)
    } else if faults.contains(Faults::CERT_EXPIRED) {
        Pattern::Code(4)
    } else {
        Pattern::Off
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_three_flashes_three_times_per_cycle() {
        let cycle = 3 * CODE_FLASH_MS + CODE_PAUSE_MS;
        let mut rising = 0;
        let mut prev = false;
        for t in 0..cycle {
            let lit = Pattern::Code(3).level(t);
            if lit && !prev {
                rising += 1;
            }
            prev = lit;
        }
        assert_eq!(rising, 3);
    }

    #[test]
    fn tamper_outranks_everything() {
        let mut f = Faults::empty();
        f.set(Faults::LOW_BATTERY, true);
        f.set(Faults::WATCHDOG, true);
        assert_eq!(fault_pattern(f), Pattern::Code(1));
        f.set(Faults::TAMPER, true);
        assert_eq!(fault_pattern(f), Pattern::Code(3));
    }
}
