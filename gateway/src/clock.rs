//! Time, passed in. Nothing else in the gateway reads the system clock: deadlines, token
//! expiry, time windows and back-off are computed from a [`Clock`], so tests run them with
//! `tokio::time::pause()` and a [`TestClock`] instead of sleeping.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A source of wall-clock and monotonic time.
pub trait Clock: Send + Sync + 'static {
    /// Wall-clock time (audit timestamps, token `iat`/`exp`, policy time windows).
    fn now(&self) -> SystemTime;
    /// Monotonic time (session deadlines, idle timers). Tokio's instant, so a paused runtime
    /// controls it.
    fn instant(&self) -> Instant;
    /// Whole seconds since the Unix epoch.
    fn unix(&self) -> u64 {
        unix_secs(self.now())
    }
}

/// A shared clock.
pub type SharedClock = Arc<dyn Clock>;

/// Seconds since the epoch of `t` (0 before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// `secs` since the epoch as a `SystemTime`.
pub fn from_unix(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The machine's clocks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// Seconds since the epoch by the system clock, for the call sites that do not take a
/// [`Clock`] yet.
pub fn unix_now() -> u64 {
    SystemClock.unix()
}

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock for tests: wall time starts at `start` and advances exactly as tokio's (possibly
/// paused) monotonic clock does, so `tokio::time::advance` moves both.
#[derive(Debug, Clone)]
pub struct TestClock {
    wall: SystemTime,
    mono: Instant,
}

impl TestClock {
    /// A clock reading `start` now.
    pub fn starting_at(start: SystemTime) -> TestClock {
        TestClock {
            wall: start,
            mono: Instant::now(),
        }
    }
}

impl Clock for TestClock {
    fn now(&self) -> SystemTime {
        self.wall + Instant::now().saturating_duration_since(self.mono)
    }
    fn instant(&self) -> Instant {
        Instant::now()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn test_clock_follows_paused_time() {
        let start = from_unix(1_800_000_000);
        let c = TestClock::starting_at(start);
        assert_eq!(c.unix(), 1_800_000_000);
        tokio::time::advance(Duration::from_secs(90)).await;
        assert_eq!(c.unix(), 1_800_000_090);
    }
}
