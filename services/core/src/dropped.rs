//! Counting what a bound refused: every structure or queue that clients
//! fill is bounded, and what it drops is counted and logged. The running
//! total is logged when it reaches 1, 2, 4, 8, ...: a flood shows in the
//! log without flooding it.

use std::sync::atomic::{AtomicU64, Ordering};

/// A count of what one bound dropped.
#[derive(Debug)]
pub struct Dropped {
    what: &'static str,
    count: AtomicU64,
}

impl Dropped {
    /// A counter for the bound described by `what`.
    #[must_use]
    pub const fn new(what: &'static str) -> Dropped {
        Dropped {
            what,
            count: AtomicU64::new(0),
        }
    }

    /// Counts one more dropped item; logs the total at powers of two.
    pub fn add(&self, limit: usize) {
        let total = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if total.is_power_of_two() {
            tracing::warn!(what = self.what, total, limit, "bound reached; dropping");
        }
    }

    /// How many were dropped so far.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_every_drop() {
        let dropped = Dropped::new("test");
        for _ in 0..5 {
            dropped.add(10);
        }
        assert_eq!(dropped.total(), 5);
    }
}
