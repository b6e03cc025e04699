//! Capped exponential backoff with jitter, for retrying a failing backend.

use std::time::Duration;

/// Retry delays: 100 ms doubling up to a cap, each with "equal jitter"
/// (half fixed, half random) so that many retrying clients spread out
/// instead of hammering a recovering server in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(5))
    }
}

impl Backoff {
    /// Delays from `base`, doubling, never above `cap`.
    #[must_use]
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1 << self.attempt.min(20))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let half = ceiling / 2;
        half + half.mul_f64(fastrand::f64())
    }

    /// Starts over after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_jitter_in_the_upper_half() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(1000));
        for ceiling in [100, 200, 400, 800, 1000, 1000, 1000] {
            let d = b.next_delay().as_millis();
            assert!(
                (ceiling / 2..=ceiling).contains(&d),
                "{d} ms not in {}..={ceiling}",
                ceiling / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
