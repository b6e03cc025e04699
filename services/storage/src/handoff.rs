//! Delivery objects' history points, handed from the transformer to history
//! when both run in one process (the all-in-one).
//!
//! History reads every delivery object back from the store: it gunzips the
//! object and parses each line into the few fields it merges. In the stretch
//! run (100,000 records a second) that was 43% of history's CPU, and history,
//! one task on a busy machine, fell behind by about 50 objects: most of the
//! records' time to their class file. The transformer had those fields in
//! hand when it wrote the lines. So once an object is durable, it leaves
//! them here under the object's key, and history takes them instead of
//! reading the object. Nothing else changes: history finds the object by
//! listing the store as before, marks it merged the same way, and reads it
//! from the store whenever the points are not here (a restart, history in
//! another process, an object read again for a disqualification).
//!
//! Points are only left while history runs here and takes them, and at most
//! [`MAX_POINTS`]; past that an object's points are not kept (counted in
//! `alleycat_transformer_handoff_refused_total`) and history reads it.
//! The transformer leaves them before it writes the object (history cannot
//! list it sooner) and takes them back if the write fails. Points history
//! never took (a write that failed yet landed, and was read from the store)
//! are dropped after [`STALE_AFTER`].

use alleycat_core::delivery::HistoryPoint;
use metrics::Counter;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Most points held (32 bytes each: 32 MB), about ten seconds of the
/// stretch run's records, waiting for history.
pub const MAX_POINTS: usize = 1_000_000;

/// Points left this long are not taken any more: history has read their
/// object from the store.
pub const STALE_AFTER: Duration = Duration::from_secs(600);

/// The points of delivery objects written in this process, by key, until
/// history takes them.
pub struct Handoff {
    state: Mutex<State>,
    refused: Counter,
}

#[derive(Default)]
struct State {
    /// Whether history runs in this process and takes points.
    open: bool,
    objects: HashMap<String, (Instant, Vec<HistoryPoint>)>,
    points: usize,
    /// Objects refused since the last warning.
    unreported: u64,
}

impl Default for Handoff {
    fn default() -> Handoff {
        Handoff {
            state: Mutex::default(),
            refused: metrics::counter!("alleycat_transformer_handoff_refused_total"),
        }
    }
}

impl Handoff {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// History runs in this process from now on, and takes points.
    pub fn open(&self) {
        self.state().open = true;
    }

    /// History stopped: no more points are kept, and those held are dropped
    /// (the objects are in the store).
    pub fn close(&self) {
        let mut state = self.state();
        state.open = false;
        state.objects.clear();
        state.points = 0;
    }

    /// Whether points are wanted at all: a transformer with no history beside
    /// it need not collect them.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.state().open
    }

    /// The delivery object `key` is durably written and holds `points`.
    /// Kept for history unless no history takes them or the bound is reached.
    pub fn delivered(&self, key: &str, points: Vec<HistoryPoint>) {
        let mut state = self.state();
        if !state.open {
            return;
        }
        state.drop_stale(Instant::now());
        if state.points + points.len() > MAX_POINTS {
            state.unreported += 1;
            self.refused.increment(1);
            // At 1, 2, 4, ...: a history far behind shows without flooding the log.
            if state.unreported.is_power_of_two() {
                tracing::warn!(
                    %key,
                    refused = state.unreported,
                    held = state.points,
                    "history is behind: delivery objects' points not kept in memory; it reads them from the store"
                );
            }
            return;
        }
        state.unreported = 0;
        state.points += points.len();
        if let Some((_, replaced)) = state
            .objects
            .insert(key.to_owned(), (Instant::now(), points))
        {
            state.points -= replaced.len();
        }
    }

    /// The points of `key`, if the transformer left them: each is taken once.
    #[must_use]
    pub fn take(&self, key: &str) -> Option<Vec<HistoryPoint>> {
        let mut state = self.state();
        let (_, points) = state.objects.remove(key)?;
        state.points -= points.len();
        Some(points)
    }

    /// Points held, over every object.
    #[must_use]
    pub fn points(&self) -> usize {
        self.state().points
    }
}

impl State {
    fn drop_stale(&mut self, now: Instant) {
        let before = self.objects.len();
        self.objects
            .retain(|_, (left, _)| now.saturating_duration_since(*left) < STALE_AFTER);
        if self.objects.len() < before {
            self.points = self.objects.values().map(|(_, p)| p.len()).sum();
            tracing::info!(
                dropped = before - self.objects.len(),
                "delivery objects' points history never took were dropped"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::{ClassId, RaceId, RacerId, Second};

    fn points(n: usize) -> Vec<HistoryPoint> {
        (0..n)
            .map(|i| HistoryPoint {
                class_id: ClassId(1),
                second: Second(1),
                racer_id: RacerId(i as u64),
                race_id: RaceId(1),
                output: 1.0,
            })
            .collect()
    }

    #[test]
    fn points_are_kept_only_while_history_takes_them_and_each_is_taken_once() {
        let handoff = Handoff::default();
        handoff.delivered("a", points(3));
        assert_eq!(handoff.take("a"), None, "no history here: nothing kept");
        handoff.open();
        handoff.delivered("a", points(3));
        handoff.delivered("b", points(2));
        assert_eq!(handoff.points(), 5);
        assert_eq!(handoff.take("a"), Some(points(3)));
        assert_eq!(handoff.take("a"), None, "taken once");
        assert_eq!(handoff.points(), 2);
        handoff.close();
        assert_eq!(handoff.points(), 0);
        assert_eq!(handoff.take("b"), None, "dropped when history stops");
    }

    #[test]
    fn past_the_bound_an_object_is_refused_whole_and_the_rest_stay() {
        let handoff = Handoff::default();
        handoff.open();
        handoff.delivered("full", points(MAX_POINTS - 1));
        handoff.delivered("too many", points(2));
        assert_eq!(
            handoff.take("too many"),
            None,
            "history reads it from the store"
        );
        handoff.delivered("fits", points(1));
        assert_eq!(handoff.points(), MAX_POINTS);
        assert_eq!(handoff.take("fits").map(|p| p.len()), Some(1));
        assert_eq!(handoff.take("full").map(|p| p.len()), Some(MAX_POINTS - 1));
        assert_eq!(handoff.points(), 0);
    }

    #[test]
    fn points_never_taken_are_dropped_once_stale() {
        let handoff = Handoff::default();
        handoff.open();
        handoff.delivered("old", points(3));
        let later = Instant::now() + STALE_AFTER;
        handoff.delivered("new", points(2));
        handoff.state().objects.get_mut("new").unwrap().0 = later;
        handoff.state().drop_stale(later);
        assert_eq!(handoff.points(), 2);
        assert_eq!(handoff.take("old"), None);
        assert_eq!(handoff.take("new"), Some(points(2)));
    }

    #[test]
    fn an_object_delivered_again_under_its_key_replaces_its_points() {
        let handoff = Handoff::default();
        handoff.open();
        handoff.delivered("a", points(3));
        handoff.delivered("a", points(1));
        assert_eq!(handoff.points(), 1);
        assert_eq!(handoff.take("a"), Some(points(1)));
    }
}
