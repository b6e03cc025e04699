//! Pacing publications by what they cost.
//!
//! Re-encoding and writing class files costs CPU in proportion to what
//! changed: little during races (the few seconds being ridden), up to whole
//! files when catching up on records that touch every second. Publishing
//! after every check would then spend most of the process's time encoding
//! the same files again, on the cores that ingest shares. So after a round
//! of publications whose encoding took `t` of CPU, the next waits until
//! `pace × t` has passed: publishing takes at most `1 / (1 + pace)` of a
//! core, and as files grow each publication carries more records.
//!
//! The cost is the CPU time of the encoding, not the round's wall time.
//! On a machine whose cores are busy, a round waits for a core far longer
//! than it computes (and it also waits for its writes): in the stretch run
//! (100,000 records a second, both cores busy) pacing by wall time held
//! about 50-100 delivery objects merged but unpublished, 6-8 s of the
//! records' time to their class file, for a CPU cost of a few percent.
//! Only a backlog is
//! paced: a check that finds nothing new publishes at once, and so does
//! one after a failed publication (a failure is never hidden by a pause).
//! A deferred class is simply not published yet: the objects holding its
//! records stay pending in the saved merge state, as after a failed write,
//! and the disqualification list is not recorded as applied, so nothing
//! is recorded as done before it is in its file.

use std::time::{Duration, Instant};

/// When the next round of publications may start.
#[derive(Debug)]
pub(super) struct Pacer {
    pace: u32,
    not_before: Option<Instant>,
}

impl Pacer {
    /// After a round that cost `t` of CPU, wait `pace × t`; 0 never waits.
    pub(super) fn new(pace: u32) -> Pacer {
        Pacer {
            pace,
            not_before: None,
        }
    }

    /// When the next round may start, if it must wait.
    pub(super) fn not_before(&self) -> Option<Instant> {
        self.not_before.filter(|at| *at > Instant::now())
    }

    /// Whether a round may start now.
    pub(super) fn ready(&self) -> bool {
        self.not_before().is_none()
    }

    /// A round (that wrote something) ended now, its encoding having cost
    /// `cpu`.
    pub(super) fn spent(&mut self, cpu: Duration) {
        self.not_before = Some(Instant::now() + cpu * self.pace);
    }

    /// From now on, rounds are never deferred (the process is stopping:
    /// everything merged must be published).
    pub(super) fn lift(&mut self) {
        self.pace = 0;
        self.not_before = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_round_defers_the_next_by_its_cost_times_the_pace() {
        let mut pacer = Pacer::new(1_000);
        assert!(pacer.ready());
        pacer.spent(Duration::from_millis(2));
        assert!(!pacer.ready());
        // At least 2 ms x 1,000 from now.
        assert!(pacer.not_before.unwrap() >= Instant::now() + Duration::from_secs(1));
        pacer.lift();
        assert!(pacer.ready());
    }

    #[test]
    fn a_pace_of_zero_never_defers() {
        let mut pacer = Pacer::new(0);
        pacer.spent(Duration::from_millis(2));
        assert!(pacer.ready());
    }
}
