//! The host watchdog's power-cycle budget: at most N power-cycles in any sliding hour.
//!
//! Kept apart from the state machine so the limit can be tested (and audited) on its own.

use crate::config::{HOUR_MS, MAX_POWER_CYCLES_TRACKED};
use heapless::Vec;

/// Sliding-window counter of watchdog power-cycles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerCycleLimiter {
    limit: u8,
    starts_ms: Vec<u64, MAX_POWER_CYCLES_TRACKED>,
}

impl PowerCycleLimiter {
    /// A limiter allowing `limit` power-cycles per hour (clamped to what can be tracked).
    pub fn new(limit: u8) -> Self {
        let limit = limit.clamp(1, MAX_POWER_CYCLES_TRACKED as u8);
        Self {
            limit,
            starts_ms: Vec::new(),
        }
    }

    fn prune(&mut self, now_ms: u64) {
        self.starts_ms
            .retain(|&t| now_ms.saturating_sub(t) < HOUR_MS);
    }

    /// Power-cycles started within the hour before `now_ms`.
    pub fn count(&self, now_ms: u64) -> u8 {
        let n = self
            .starts_ms
            .iter()
            .filter(|&&t| now_ms.saturating_sub(t) < HOUR_MS)
            .count();
        u8::try_from(n).unwrap_or(u8::MAX)
    }

    /// Record a power-cycle at `now_ms` if the limit allows it; `false` means "stay off".
    pub fn try_record(&mut self, now_ms: u64) -> bool {
        self.prune(now_ms);
        if self.starts_ms.len() >= usize::from(self.limit) {
            return false;
        }
        self.starts_ms.push(now_ms).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_limit_per_hour_then_refuses_until_the_oldest_ages_out() {
        let mut l = PowerCycleLimiter::new(3);
        assert!(l.try_record(0));
        assert!(l.try_record(1_000));
        assert!(l.try_record(2_000));
        assert!(!l.try_record(3_000));
        assert_eq!(l.count(3_000), 3);
        assert!(!l.try_record(HOUR_MS - 1));
        assert!(l.try_record(HOUR_MS));
        assert_eq!(l.count(HOUR_MS), 3);
    }
}
