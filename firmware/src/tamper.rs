//! The tamper latch and the state that must survive MCU power loss.
//!
//! On the board the latch lives in the MCU's battery-backed domain (STM32 TAMP backup registers,
//! which the tamper hardware also erases together with the MCU's key share). The state machine
//! never touches hardware: it starts from a [`Persisted`] value the caller loaded and reports
//! changes in `Outputs::persist`, which the caller stores through a [`BackupDomain`].

/// State kept across MCU power loss, packed into one 32-bit backup register.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Persisted {
    /// The enclosure was opened; set until a workshop clears it.
    pub tamper_latched: bool,
    /// The host confirmed it destroyed the cache data key after the latch was set.
    pub host_zeroized: bool,
}

/// Marks a valid register so a blank (all zeros) or corrupt register is recognised.
const MAGIC: u32 = 0x4b53_0000;
const MAGIC_MASK: u32 = 0xffff_0000;
const LATCHED: u32 = 0x1;
const ZEROIZED: u32 = 0x2;

impl Persisted {
    /// Pack into a register word.
    pub const fn to_word(self) -> u32 {
        let mut w = MAGIC;
        if self.tamper_latched {
            w |= LATCHED;
        }
        if self.host_zeroized {
            w |= ZEROIZED;
        }
        w
    }

    /// Unpack a register word. A word without the magic (blank or corrupt backup domain) is
    /// treated as *latched*: losing the backup domain is itself a tamper indication, and the
    /// safe side is to ask the host to destroy its key again.
    pub const fn from_word(w: u32) -> Self {
        if w & MAGIC_MASK != MAGIC || w & !(MAGIC_MASK | LATCHED | ZEROIZED) != 0 {
            return Persisted {
                tamper_latched: true,
                host_zeroized: false,
            };
        }
        Persisted {
            tamper_latched: w & LATCHED != 0,
            host_zeroized: w & ZEROIZED != 0,
        }
    }
}

/// The MCU's battery-backed domain: one register word and the MCU's key share.
pub trait BackupDomain {
    /// Read the persisted word (see [`Persisted::from_word`]).
    fn load(&mut self) -> u32;
    /// Write the persisted word.
    fn store(&mut self, word: u32);
    /// Erase the MCU-held share of the cache key-encryption secret.
    fn erase_key_share(&mut self);
    /// Format a factory-fresh board (workshop only): a valid, unlatched word.
    fn format(&mut self) {
        self.store(Persisted::default().to_word());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_round_trip_and_blank_means_latched() {
        for p in [
            Persisted {
                tamper_latched: false,
                host_zeroized: false,
            },
            Persisted {
                tamper_latched: true,
                host_zeroized: false,
            },
            Persisted {
                tamper_latched: true,
                host_zeroized: true,
            },
        ] {
            assert_eq!(Persisted::from_word(p.to_word()), p);
        }
        assert!(Persisted::from_word(0).tamper_latched);
        assert!(Persisted::from_word(0xffff_ffff).tamper_latched);
    }
}
