//! Telling when a flow of arrivals has paused.
//!
//! The transformer delivers its open buffers once the stream goes quiet
//! (a race ended: no more records are coming to fill them), and the
//! history merger publishes what its pacer deferred once delivery objects
//! stop coming. A fixed wait for quiet fits one rate only: at 100,000
//! records a second a burst's end is plain after a tenth of a second,
//! while a trickle of a few records a second needs half a second to tell
//! a pause from the next record. So the wait follows the rate: a few times
//! the usual gap between arrivals, within a floor and a ceiling.

use std::time::{Duration, Instant};

/// How many usual gaps without an arrival make a pause.
pub const GAPS_TO_A_PAUSE: u32 = 4;

/// The shortest wait for a pause: below it, a commit or a scheduling delay
/// of a busy machine would pass for the end of a burst.
pub const SHORTEST_PAUSE: Duration = Duration::from_millis(100);

/// Follows the gaps between arrivals and tells when the flow paused.
#[derive(Debug, Clone)]
pub struct Lull {
    /// The longest wait: a flow this slow or slower always waits this long.
    ceiling: Duration,
    /// The usual gap between arrivals: a moving average, each gap counted
    /// at most at `ceiling` (a pause between races is not part of a flow).
    usual_gap: Option<Duration>,
    last: Option<Instant>,
}

impl Lull {
    /// A flow that has paused once nothing arrived for `ceiling`, or
    /// sooner when arrivals come faster (never sooner than
    /// [`SHORTEST_PAUSE`], unless `ceiling` is shorter still).
    #[must_use]
    pub fn new(ceiling: Duration) -> Lull {
        Lull {
            ceiling,
            usual_gap: None,
            last: None,
        }
    }

    /// Something arrived at `now`.
    pub fn arrived(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let gap = now.saturating_duration_since(last).min(self.ceiling);
            // An average over about the last eight gaps: steady enough that
            // one short gap does not make the next pause look early.
            self.usual_gap = Some(match self.usual_gap {
                Some(usual) => (usual * 7 + gap) / 8,
                None => gap,
            });
        }
        self.last = Some(now);
    }

    /// How long without an arrival makes a pause, at the current rate.
    #[must_use]
    pub fn wait(&self) -> Duration {
        let floor = SHORTEST_PAUSE.min(self.ceiling);
        self.usual_gap.map_or(self.ceiling, |gap| {
            (gap * GAPS_TO_A_PAUSE).clamp(floor, self.ceiling)
        })
    }

    /// When the flow will have paused, if nothing else arrives; `None`
    /// before the first arrival.
    #[must_use]
    pub fn paused_at(&self) -> Option<Instant> {
        self.last.map(|last| last + self.wait())
    }

    /// Whether the flow has paused by `now` (nothing ever arrived counts
    /// as paused).
    #[must_use]
    pub fn paused(&self, now: Instant) -> bool {
        self.paused_at().is_none_or(|at| now >= at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CEILING: Duration = Duration::from_millis(500);

    fn steady(gap: Duration, arrivals: u32) -> (Lull, Instant) {
        let mut lull = Lull::new(CEILING);
        let start = Instant::now();
        let mut now = start;
        for _ in 0..arrivals {
            lull.arrived(now);
            now += gap;
        }
        (lull, now - gap)
    }

    #[test]
    fn a_fast_flow_pauses_after_a_few_gaps_but_never_sooner_than_the_floor() {
        let (lull, last) = steady(Duration::from_millis(40), 50);
        assert_eq!(lull.wait(), Duration::from_millis(160));
        assert!(!lull.paused(last + Duration::from_millis(159)));
        assert!(lull.paused(last + Duration::from_millis(160)));

        let (lull, _) = steady(Duration::from_millis(5), 50);
        assert_eq!(lull.wait(), SHORTEST_PAUSE);
    }

    #[test]
    fn a_slow_flow_waits_the_ceiling() {
        let (lull, last) = steady(Duration::from_millis(300), 20);
        assert_eq!(lull.wait(), CEILING);
        assert!(!lull.paused(last + CEILING - Duration::from_millis(1)));
        assert!(lull.paused(last + CEILING));
    }

    #[test]
    fn before_any_gap_is_known_the_wait_is_the_ceiling() {
        let mut lull = Lull::new(CEILING);
        assert!(lull.paused(Instant::now()), "nothing arrived yet");
        assert_eq!(lull.paused_at(), None);
        let now = Instant::now();
        lull.arrived(now);
        assert_eq!(lull.wait(), CEILING);
        assert_eq!(lull.paused_at(), Some(now + CEILING));
    }

    #[test]
    fn a_long_pause_between_races_does_not_slow_the_next_race_for_long() {
        let (mut lull, last) = steady(Duration::from_millis(10), 50);
        // Ten minutes between races counts as one gap of the ceiling...
        let mut now = last + Duration::from_secs(600);
        lull.arrived(now);
        assert!(lull.wait() <= CEILING);
        // ...and a few dozen arrivals of the next race bring the wait back.
        for _ in 0..40 {
            now += Duration::from_millis(10);
            lull.arrived(now);
        }
        assert_eq!(lull.wait(), SHORTEST_PAUSE);
    }

    #[test]
    fn a_ceiling_below_the_floor_is_the_wait() {
        let mut lull = Lull::new(Duration::from_millis(30));
        let now = Instant::now();
        lull.arrived(now);
        lull.arrived(now + Duration::from_millis(1));
        assert_eq!(lull.wait(), Duration::from_millis(30));
    }
}
