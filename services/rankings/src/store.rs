//! Race results and leaderboards in the object store, updated by
//! read-merge-conditional-write loops so that several rankings processes
//! never lose each other's updates.

use crate::period::Board;
use crate::race::RaceResult;
use crate::results::{Leaderboard, LeaderboardEntry, RaceIndex, RaceResults};
use alleycat_core::{ClassId, RaceId};
use alleycat_storage::{ETag, ObjectStore, Precondition, StoreError};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Results and leaderboards, as documents in a store.
#[derive(Clone)]
pub struct ResultsStore {
    store: Arc<dyn ObjectStore>,
    /// How long a race's results are listed and served after it finished.
    retention: Option<Duration>,
}

/// A racer's result, from its `final` record.
#[derive(Debug, Clone, PartialEq)]
pub struct Final {
    /// The racer's class.
    pub class: ClassId,
    /// The race.
    pub race: RaceId,
    /// The result.
    pub result: RaceResult,
    /// When the `final` record arrived on the stream, ms since the epoch:
    /// races are listed by it.
    pub finished_ms: i64,
}

impl Final {
    /// When the racer rode this race, for its period boards: the middle of
    /// its ride (its final's arrival less half its recorded seconds), ms
    /// since the epoch. Races start and end on the clock's 5-minute slots,
    /// so the last race of a day ends at midnight, and its racers' finals
    /// arrive either side of it; their middles all fall in the day they
    /// rode.
    #[must_use]
    pub fn ridden_ms(&self) -> i64 {
        self.finished_ms
            .saturating_sub(i64::from(self.result.seconds).saturating_mul(500))
    }
}

/// Finished results, as handed to [`ResultsStore::record`].
pub type Finals = Vec<Final>;

/// Where race documents live.
const RACES_PREFIX: &str = "results/races/";

fn race_key(race: RaceId) -> String {
    format!("{RACES_PREFIX}{race}.json")
}

fn index_key(class: ClassId) -> String {
    format!("results/index/class-{class}.json")
}

/// The all-time board keeps the key it had before there were periods;
/// the others live below it by period, e.g.
/// `results/leaderboards/week/2026-W49/class-1.json`.
fn leaderboard_key(class: ClassId, board: &Board) -> String {
    match board {
        Board::All => format!("results/leaderboards/class-{class}.json"),
        other => format!(
            "results/leaderboards/{}/class-{class}.json",
            other.key_part()
        ),
    }
}

impl ResultsStore {
    /// Results kept in `store`.
    #[must_use]
    pub fn new(store: Arc<dyn ObjectStore>) -> ResultsStore {
        ResultsStore {
            store,
            retention: None,
        }
    }

    /// Lists and serves a race's results for `retention` after it finished
    /// (`None`: for ever). Older races leave the class indexes; their
    /// documents answer as absent.
    #[must_use]
    pub fn with_retention(mut self, retention: Option<Duration>) -> ResultsStore {
        self.retention = retention;
        self
    }

    /// Races that finished before this (ms since the epoch) are past the
    /// retention.
    fn cutoff(&self) -> i64 {
        self.retention.map_or(i64::MIN, |keep| {
            let keep = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
            chrono::Utc::now().timestamp_millis().saturating_sub(keep)
        })
    }

    fn expired(&self, doc: &RaceResults, cutoff: i64) -> bool {
        // Documents stored before finish times were kept (0) stay.
        doc.finished_ms != 0 && doc.finished_ms < cutoff
    }

    /// Stores race results: each race's document, each class's index of
    /// recent races and its leaderboard, one conditional write each.
    pub async fn record(&self, finals: &[Final]) -> Result<(), StoreError> {
        let mut by_race: BTreeMap<RaceId, Vec<&Final>> = BTreeMap::new();
        let mut by_class: BTreeMap<ClassId, Vec<&Final>> = BTreeMap::new();
        for last in finals {
            by_race.entry(last.race).or_default().push(last);
            by_class.entry(last.class).or_default().push(last);
        }
        for (race, results) in &by_race {
            self.update(&race_key(*race), |doc: &mut RaceResults| {
                doc.race_id = *race;
                let mut changed = false;
                for last in results {
                    changed |= doc.offer(last.class, last.result.clone());
                    changed |= doc.finished(last.finished_ms);
                }
                changed
            })
            .await?;
        }
        let cutoff = self.cutoff();
        for (class, results) in &by_class {
            self.update(&index_key(*class), |index: &mut RaceIndex| {
                index.merge(results.iter().map(|f| (f.race, f.finished_ms)), cutoff)
            })
            .await?;
            // Each result goes to the day, week and month it was ridden in,
            // and to all time: one conditional write per board.
            let mut by_board: BTreeMap<String, Vec<&Final>> = BTreeMap::new();
            for last in results {
                for board in Board::all_holding(last.ridden_ms()) {
                    by_board
                        .entry(leaderboard_key(*class, &board))
                        .or_default()
                        .push(last);
                }
            }
            for (key, results) in &by_board {
                self.update(key, |board: &mut Leaderboard| {
                    let mut changed = false;
                    for Final {
                        race,
                        result,
                        finished_ms,
                        ..
                    } in results.iter().copied()
                    {
                        let entry = LeaderboardEntry {
                            name: result.name.clone(),
                            output: result.output,
                            race_id: *race,
                            finished_ms: Some(*finished_ms),
                        };
                        changed |= board.offer(result.racer_id, entry);
                    }
                    changed
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Deletes the documents of races past the retention; returns how many.
    /// Their indexes drop them at their next write (and hide them before).
    pub async fn sweep(&self) -> Result<usize, StoreError> {
        if self.retention.is_none() {
            return Ok(0);
        }
        let cutoff = self.cutoff();
        let mut deleted = 0;
        for key in self.store.list(RACES_PREFIX, None).await? {
            let Some((doc, _)) = self.read::<RaceResults>(&key).await? else {
                continue;
            };
            if self.expired(&doc, cutoff) {
                self.store.delete(&key).await?;
                deleted += 1;
            }
        }
        Ok(deleted)
    }

    /// One race's results (`None` past the retention).
    pub async fn race(&self, race: RaceId) -> Result<Option<RaceResults>, StoreError> {
        let cutoff = self.cutoff();
        Ok(self
            .read(&race_key(race))
            .await?
            .map(|(doc, _)| doc)
            .filter(|doc| !self.expired(doc, cutoff)))
    }

    /// A class's recent races (without those past the retention).
    pub async fn index(&self, class: ClassId) -> Result<RaceIndex, StoreError> {
        let mut index: RaceIndex = self
            .read(&index_key(class))
            .await?
            .map(|(doc, _)| doc)
            .unwrap_or_default();
        index.merge([], self.cutoff());
        Ok(index)
    }

    /// One of a class's leaderboards and its version (for caching).
    pub async fn leaderboard(
        &self,
        class: ClassId,
        board: &Board,
    ) -> Result<Option<(Leaderboard, ETag)>, StoreError> {
        self.read(&leaderboard_key(class, board)).await
    }

    /// A leaderboard's version, without reading it.
    pub async fn leaderboard_version(
        &self,
        class: ClassId,
        board: &Board,
    ) -> Result<Option<ETag>, StoreError> {
        self.store.head(&leaderboard_key(class, board)).await
    }

    async fn read<T: DeserializeOwned>(&self, key: &str) -> Result<Option<(T, ETag)>, StoreError> {
        let Some(object) = self.store.get(key).await? else {
            return Ok(None);
        };
        let doc = serde_json::from_slice(&object.body).map_err(|e| StoreError::Io {
            operation: "decode",
            key: key.to_owned(),
            source: Box::new(e),
        })?;
        Ok(Some((doc, object.etag)))
    }

    /// Read, apply `change`, write back if it changed anything; on a
    /// conflicting write, start over from the newer version.
    async fn update<T>(
        &self,
        key: &str,
        mut change: impl FnMut(&mut T) -> bool,
    ) -> Result<(), StoreError>
    where
        T: Serialize + DeserializeOwned + Default,
    {
        loop {
            let (mut doc, version) = match self.read::<T>(key).await? {
                Some((doc, etag)) => (doc, Some(etag)),
                None => (T::default(), None),
            };
            if !change(&mut doc) {
                return Ok(());
            }
            let body = Bytes::from(serde_json::to_vec(&doc).expect("documents serialize"));
            let condition = version.map_or(Precondition::IfAbsent, Precondition::IfMatch);
            match self
                .store
                .put_if(key, body, "application/json", condition)
                .await
            {
                Ok(_) => return Ok(()),
                Err(StoreError::PreconditionFailed { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::RacerId;
    use alleycat_storage::object_store::fs::FsStore;

    fn result(racer: u64, output: f64) -> RaceResult {
        RaceResult {
            racer_id: RacerId(racer),
            name: format!("R{racer}"),
            output,
            average: output,
            best: output,
            seconds: 300,
        }
    }

    fn last(class: u8, race: u64, result: RaceResult, finished_ms: i64) -> Final {
        Final {
            class: ClassId(class),
            race: RaceId(race),
            result,
            finished_ms,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_lose_no_result() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultsStore::new(Arc::new(FsStore::open(dir.path()).unwrap()));
        let writers: Vec<_> = (0..8u64)
            .map(|w| {
                let store = store.clone();
                tokio::spawn(async move {
                    for r in 0..5u64 {
                        let racer = w * 10 + r;
                        let finals = vec![last(1, 100 + r, result(racer, racer as f64), 1_000)];
                        store.record(&finals).await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let (board, _) = store
            .leaderboard(ClassId(1), &Board::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(board.entries.len(), 40);
        assert_eq!(store.index(ClassId(1)).await.unwrap().races.len(), 5);
        let race = store.race(RaceId(100)).await.unwrap().unwrap();
        assert_eq!(race.ranked(ClassId(1), &Default::default()).len(), 8);
        // Recording the same finals again changes nothing.
        let before = store
            .leaderboard_version(ClassId(1), &Board::All)
            .await
            .unwrap();
        store
            .record(&[last(1, 100, result(0, 0.0), 1_000)])
            .await
            .unwrap();
        assert_eq!(
            store
                .leaderboard_version(ClassId(1), &Board::All)
                .await
                .unwrap(),
            before
        );
    }

    #[tokio::test]
    async fn each_result_goes_to_its_races_day_week_month_and_all_time_boards() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultsStore::new(Arc::new(FsStore::open(dir.path()).unwrap()));
        let at = |rfc3339: &str| {
            chrono::DateTime::parse_from_rfc3339(rfc3339)
                .unwrap()
                .timestamp_millis()
        };
        // Racer 1 rides a race that ends at a Sunday midnight (ISO week 48
        // of 2026, the last day of November but one), its final arriving
        // just after it, and the first race of Monday (week 49). A 300 s
        // ride counts where its middle falls.
        store
            .record(&[
                last(3, 1, result(1, 100.0), at("2026-11-30T00:00:00.020Z")),
                last(3, 2, result(1, 80.0), at("2026-11-30T00:05:01Z")),
            ])
            .await
            .unwrap();
        let best_on = |board: Board| {
            let store = store.clone();
            async move {
                let (board, _) = store.leaderboard(ClassId(3), &board).await.unwrap()?;
                Some((board.entries[&RacerId(1)].output, board.entries.len()))
            }
        };
        let day = |d: &str| Board::Day(d.parse().unwrap());
        assert_eq!(best_on(day("2026-11-29")).await, Some((100.0, 1)));
        assert_eq!(
            best_on(day("2026-11-30")).await,
            Some((80.0, 1)),
            "that day's best"
        );
        assert_eq!(best_on(day("2026-12-01")).await, None);
        let week = |week| Board::Week { year: 2026, week };
        assert_eq!(best_on(week(48)).await, Some((100.0, 1)));
        assert_eq!(best_on(week(49)).await, Some((80.0, 1)));
        let november = Board::Month {
            year: 2026,
            month: 11,
        };
        assert_eq!(best_on(november).await, Some((100.0, 1)));
        assert_eq!(best_on(Board::All).await, Some((100.0, 1)));
        // The all-time board keeps the key it always had.
        assert!(
            dir.path()
                .join("results/leaderboards/class-3.json")
                .exists()
        );
        assert!(
            dir.path()
                .join("results/leaderboards/week/2026-W49/class-3.json")
                .exists()
        );
        // Recorded again (a replay after a restart), nothing changes.
        let before = store
            .leaderboard_version(ClassId(3), &week(49))
            .await
            .unwrap();
        store
            .record(&[last(3, 2, result(1, 80.0), at("2026-11-30T00:05:01Z"))])
            .await
            .unwrap();
        assert_eq!(
            store
                .leaderboard_version(ClassId(3), &week(49))
                .await
                .unwrap(),
            before
        );
    }

    #[tokio::test]
    async fn races_past_the_retention_are_neither_listed_nor_served() {
        let dir = tempfile::tempdir().unwrap();
        let store = ResultsStore::new(Arc::new(FsStore::open(dir.path()).unwrap()))
            .with_retention(Some(Duration::from_secs(3600)));
        let now = chrono::Utc::now().timestamp_millis();
        let two_hours = 2 * 3_600_000;
        store
            .record(&[
                last(2, 1, result(1, 10.0), now - two_hours),
                last(2, 2, result(1, 20.0), now),
            ])
            .await
            .unwrap();
        assert_eq!(store.index(ClassId(2)).await.unwrap().newest(), [RaceId(2)]);
        assert!(store.race(RaceId(1)).await.unwrap().is_none(), "expired");
        let kept = store.race(RaceId(2)).await.unwrap().unwrap();
        assert_eq!(kept.finished_ms, now);
        // Without a retention, the old race is still there.
        let forever = store.clone().with_retention(None);
        assert!(forever.race(RaceId(1)).await.unwrap().is_some());
        // The leaderboard keeps every result, whatever its age.
        let (board, _) = store
            .leaderboard(ClassId(2), &Board::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(board.entries[&RacerId(1)].output, 20.0);

        // A sweep deletes the expired document for good, and only it.
        assert_eq!(forever.sweep().await.unwrap(), 0, "no retention, no sweep");
        assert_eq!(store.sweep().await.unwrap(), 1);
        assert!(forever.race(RaceId(1)).await.unwrap().is_none(), "deleted");
        assert!(forever.race(RaceId(2)).await.unwrap().is_some());
        assert_eq!(store.sweep().await.unwrap(), 0);
    }
}
