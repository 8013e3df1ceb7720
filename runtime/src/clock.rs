//! One clock for the hub and the unit daemon. The pure policies (the sync state machines in
//! `edge-proto`, the daemon's access, connection, upload and supervisor policies) never read a
//! clock: they take `now` as an argument. Their drivers ask a [`Clock`] — [`SystemClock`] in
//! production, [`ManualClock`] in tests, which moves only when the test says so (virtual time).

use std::fmt::Debug;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use edge_proto::time::UnixMillis;

/// A source of time: the wall clock (UTC, for records and expiry) and a monotonic one (for
/// timers and windows, immune to the wall clock being set).
pub trait Clock: Debug + Send + Sync + 'static {
    /// UTC now.
    fn wall(&self) -> UnixMillis;
    /// Monotonic milliseconds since an arbitrary origin fixed when the clock was made.
    fn mono_ms(&self) -> u64;
}

/// A clock shared by a driver's tasks.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's clocks.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock {
    origin: Instant,
}

impl SystemClock {
    /// A system clock whose monotonic origin is now.
    pub fn new() -> SystemClock {
        SystemClock {
            origin: Instant::now(),
        }
    }

    /// As a [`SharedClock`].
    pub fn shared() -> SharedClock {
        Arc::new(SystemClock::new())
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        SystemClock::new()
    }
}

/// The wall clock now, as the protocol's time type (a clock before 1970 reads as the epoch).
pub fn wall_now() -> UnixMillis {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl Clock for SystemClock {
    fn wall(&self) -> UnixMillis {
        wall_now()
    }

    fn mono_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told: virtual time for tests of the policies and drivers.
#[derive(Debug)]
pub struct ManualClock {
    wall: AtomicI64,
    mono: AtomicU64,
}

impl ManualClock {
    /// Starting at wall time `wall`, monotonic 0.
    pub fn new(wall: UnixMillis) -> Arc<ManualClock> {
        Arc::new(ManualClock {
            wall: AtomicI64::new(wall.0),
            mono: AtomicU64::new(0),
        })
    }

    /// Move both clocks forward by `d`.
    pub fn advance(&self, d: Duration) {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        self.mono.fetch_add(ms, Ordering::SeqCst);
        self.wall
            .fetch_add(i64::try_from(ms).unwrap_or(i64::MAX), Ordering::SeqCst);
    }

    /// Set the wall clock (as a unit whose clock is corrected would); the monotonic clock does
    /// not move.
    pub fn set_wall(&self, wall: UnixMillis) {
        self.wall.store(wall.0, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn wall(&self) -> UnixMillis {
        UnixMillis(self.wall.load(Ordering::SeqCst))
    }

    fn mono_ms(&self) -> u64 {
        self.mono.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told_and_wall_changes_leave_mono_alone() {
        let c = ManualClock::new(UnixMillis(1_000));
        assert_eq!((c.wall(), c.mono_ms()), (UnixMillis(1_000), 0));
        c.advance(Duration::from_millis(250));
        assert_eq!((c.wall(), c.mono_ms()), (UnixMillis(1_250), 250));
        c.set_wall(UnixMillis(0));
        assert_eq!((c.wall(), c.mono_ms()), (UnixMillis(0), 250));
    }

    #[test]
    fn system_clock_is_monotonic_and_near_the_wall() {
        let c = SystemClock::new();
        let a = c.mono_ms();
        let b = c.mono_ms();
        assert!(b >= a);
        assert!(c.wall().0 > 1_600_000_000_000);
    }
}
