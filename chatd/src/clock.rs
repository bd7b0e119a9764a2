//! The driver's clock, on its own because both the driver (timers) and the
//! connection tasks (write-progress stamps for the outbound bound) read it,
//! and because it is the one place where wall-clock time enters chatd.

use std::time::Duration;

use chatcore::Time;
use tokio::time::Instant;

/// The core's clock: wall-clock milliseconds, advanced by tokio's monotonic
/// clock from one wall-clock reading at startup. Deadlines therefore never
/// jump when NTP steps the system clock, and `tokio::time::pause()` drives
/// the core's time in tests.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    base_wall: u64,
    base: Instant,
}

impl Clock {
    /// A clock that reads the system time once, now.
    pub fn start() -> Clock {
        Clock {
            base_wall: Time::from_system(std::time::SystemTime::now()).unix_millis(),
            base: Instant::now(),
        }
    }

    /// The current time.
    pub fn now(&self) -> Time {
        Time::from_unix_millis(self.base_wall.saturating_add(self.elapsed_ms()))
    }

    /// Milliseconds since the clock started.
    pub fn elapsed_ms(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The tokio instant at which [`Clock::now`] reaches `t`.
    pub fn instant_of(&self, t: Time) -> Instant {
        let ms = t.unix_millis().saturating_sub(self.base_wall);
        // Far-future deadlines are capped: a year is "never" for a timer.
        let ms = ms.min(365 * 24 * 3600 * 1000);
        self.base + Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn clock_is_monotonic_and_maps_deadlines() {
        let clock = Clock::start();
        let t0 = clock.now();
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now().unix_millis() - t0.unix_millis(), 1500);
        let deadline = t0 + Duration::from_secs(3);
        assert_eq!(
            clock.instant_of(deadline) - clock.base,
            Duration::from_secs(3)
        );
        assert_eq!(clock.instant_of(Time::EPOCH), clock.base);
    }
}
