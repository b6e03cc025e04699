//! The results waiting to be written: a bounded queue between the engine
//! and the results writer that a flood of made-up races cannot use to delay
//! the results of real ones.
//!
//! Results are coalesced per race (one entry per race, each racer's result
//! once), and the writer takes the heaviest races first (most results, then
//! the earliest queued): a real race has many racers finishing together,
//! while made-up ones have one `final` each, so a real race waits behind at
//! most one write batch whatever the flood. When more than the bound of
//! races wait, the lightest (then the oldest) are dropped, counted and
//! logged.

use crate::store::Final;
use alleycat_core::{ClassId, RaceId, RacerId};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Least time between two warnings about dropped results.
const WARN_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
struct Race {
    /// Each racer's result, per class.
    results: HashMap<(ClassId, RacerId), Final>,
    /// When it was first queued (queue order).
    queued: u64,
}

#[derive(Default)]
struct State {
    races: HashMap<RaceId, Race>,
    results: usize,
    next: u64,
    closed: bool,
    dropped_races: u64,
    dropped_results: u64,
    /// Dropped since the last warning.
    unreported: (u64, u64),
    warned: Option<Instant>,
}

/// The results queue.
pub(crate) struct Pending {
    state: Mutex<State>,
    ready: Notify,
    max_races: usize,
}

/// Counts of what was dropped.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Dropped {
    pub(crate) races: u64,
    pub(crate) results: u64,
}

impl Pending {
    /// A queue holding at most `max_races` races.
    pub(crate) fn new(max_races: usize) -> Pending {
        Pending {
            state: Mutex::default(),
            ready: Notify::new(),
            max_races: max_races.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues results; a racer's result already queued is replaced only by
    /// a fuller one (as the stored document would).
    pub(crate) fn push(&self, finals: Vec<Final>) {
        if finals.is_empty() {
            return;
        }
        let mut guard = self.lock();
        let state = &mut *guard;
        for last in finals {
            let next = state.next;
            let race = state.races.entry(last.race).or_insert_with(|| Race {
                results: HashMap::new(),
                queued: next,
            });
            if race.queued == next {
                state.next += 1;
            }
            let key = (last.class, last.result.racer_id);
            let added = match race.results.get_mut(&key) {
                None => true,
                Some(queued) => {
                    let finished_ms = queued.finished_ms.max(last.finished_ms);
                    if (last.result.seconds, last.result.output)
                        > (queued.result.seconds, queued.result.output)
                    {
                        *queued = last.clone();
                    }
                    queued.finished_ms = finished_ms;
                    false
                }
            };
            if added {
                race.results.insert(key, last);
                state.results += 1;
            }
        }
        self.shed(state);
        drop(guard);
        self.ready.notify_one();
    }

    /// Drops the lightest, then oldest, races beyond the bound.
    fn shed(&self, state: &mut State) {
        let excess = state.races.len().saturating_sub(self.max_races);
        if excess == 0 {
            return;
        }
        let mut by_weight: Vec<(usize, u64, RaceId)> = state
            .races
            .iter()
            .map(|(id, race)| (race.results.len(), race.queued, *id))
            .collect();
        by_weight.select_nth_unstable(excess - 1);
        let mut results = 0;
        for (_, _, id) in &by_weight[..excess] {
            if let Some(race) = state.races.remove(id) {
                results += race.results.len();
            }
        }
        state.results -= results;
        let (races, results) = (excess as u64, results as u64);
        state.dropped_races += races;
        state.dropped_results += results;
        crate::metrics::METRICS.results_dropped.increment(results);
        state.unreported.0 += races;
        state.unreported.1 += results;
        let now = Instant::now();
        if state
            .warned
            .is_none_or(|at| now.duration_since(at) >= WARN_EVERY)
        {
            let (races, results) = std::mem::take(&mut state.unreported);
            tracing::warn!(
                races,
                results,
                total_races = state.dropped_races,
                total_results = state.dropped_results,
                bound = self.max_races,
                "results queue full: dropped the results of the races with the fewest \
                 results (a flood of made-up races?)"
            );
            state.warned = Some(now);
        }
    }

    /// Takes up to `max_races` races, heaviest first; waits while the queue
    /// is empty. `None` once it is closed and empty.
    pub(crate) async fn take(&self, max_races: usize) -> Option<Vec<Final>> {
        loop {
            let notified = self.ready.notified();
            {
                let mut state = self.lock();
                if !state.races.is_empty() {
                    return Some(Self::take_now(&mut state, max_races));
                }
                if state.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn take_now(state: &mut State, max_races: usize) -> Vec<Final> {
        let mut by_weight: Vec<(std::cmp::Reverse<usize>, u64, RaceId)> = state
            .races
            .iter()
            .map(|(id, race)| (std::cmp::Reverse(race.results.len()), race.queued, *id))
            .collect();
        let n = max_races.max(1).min(by_weight.len());
        if n < by_weight.len() {
            by_weight.select_nth_unstable(n - 1);
        }
        let mut finals = Vec::new();
        for (_, _, id) in &by_weight[..n] {
            if let Some(race) = state.races.remove(id) {
                state.results -= race.results.len();
                finals.extend(race.results.into_values());
            }
        }
        finals
    }

    /// No more results will come: [`Pending::take`] returns `None` once
    /// the queue is empty.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Races and results waiting.
    #[cfg(test)]
    pub(crate) fn len(&self) -> (usize, usize) {
        let state = self.lock();
        (state.races.len(), state.results)
    }

    /// What was dropped so far.
    #[cfg(test)]
    pub(crate) fn dropped(&self) -> Dropped {
        let state = self.lock();
        Dropped {
            races: state.dropped_races,
            results: state.dropped_results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::race::RaceResult;

    fn last(race: u64, racer: u64, seconds: u32) -> Final {
        Final {
            class: ClassId(1),
            race: RaceId(race),
            result: RaceResult {
                racer_id: RacerId(racer),
                name: format!("R{racer}"),
                output: 100.0,
                average: 100.0,
                best: 100.0,
                seconds,
            },
            finished_ms: 1,
        }
    }

    fn races(finals: &[Final]) -> Vec<u64> {
        let mut races: Vec<u64> = finals.iter().map(|f| f.race.0).collect();
        races.sort_unstable();
        races.dedup();
        races
    }

    #[tokio::test]
    async fn results_are_coalesced_per_race_and_racer() {
        let pending = Pending::new(10);
        pending.push(vec![last(1, 1, 299), last(1, 2, 300)]);
        pending.push(vec![last(1, 1, 300), last(1, 2, 10)]);
        assert_eq!(pending.len(), (1, 2));
        let mut taken = pending.take(10).await.unwrap();
        taken.sort_by_key(|f| f.result.racer_id);
        let seconds: Vec<u32> = taken.iter().map(|f| f.result.seconds).collect();
        assert_eq!(seconds, [300, 300], "the fuller result of each racer");
        assert_eq!(pending.len(), (0, 0));
    }

    #[tokio::test]
    async fn a_flood_of_one_result_races_is_bounded_and_does_not_delay_a_real_race() {
        let pending = Pending::new(1_000);
        pending.push(
            (0..20_000)
                .map(|race| last(1_000_000 + race, 1, 1))
                .collect(),
        );
        assert_eq!(pending.len(), (1_000, 1_000), "bounded");
        assert_eq!(
            pending.dropped(),
            Dropped {
                races: 19_000,
                results: 19_000
            }
        );
        // The newest flood races were kept over the oldest.
        let flood = pending.take(1).await.unwrap();
        assert!(flood[0].race.0 >= 1_019_000, "{flood:?}");

        // A real race finishes behind the flood: it is in the next batch.
        pending.push((1..=20).map(|racer| last(7, racer, 300)).collect());
        let batch = pending.take(32).await.unwrap();
        assert_eq!(batch.iter().filter(|f| f.race == RaceId(7)).count(), 20);
        // And a flood that follows does not drop it.
        pending.push((1..=5).map(|racer| last(8, racer, 300)).collect());
        pending.push(
            (0..5_000)
                .map(|race| last(2_000_000 + race, 1, 1))
                .collect(),
        );
        assert!(races(&pending.take(1).await.unwrap()) == [8]);
    }

    #[tokio::test]
    async fn take_waits_for_results_and_ends_once_closed_and_drained() {
        let pending = std::sync::Arc::new(Pending::new(10));
        let taker = {
            let pending = std::sync::Arc::clone(&pending);
            tokio::spawn(async move { pending.take(10).await })
        };
        tokio::task::yield_now().await;
        pending.push(vec![last(3, 1, 300)]);
        let got = tokio::time::timeout(Duration::from_secs(5), taker)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(races(&got.unwrap()), [3]);
        pending.push(vec![last(4, 1, 300)]);
        pending.close();
        assert_eq!(
            races(&pending.take(10).await.unwrap()),
            [4],
            "drained first"
        );
        assert!(pending.take(10).await.is_none());
    }
}
