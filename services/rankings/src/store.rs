//! Race results and leaderboards in the object store, updated by
//! read-merge-conditional-write loops so that several rankings processes
//! never lose each other's updates.

use crate::race::RaceResult;
use crate::results::{Leaderboard, LeaderboardEntry, RaceIndex, RaceResults};
use alleycat_core::{ClassId, RaceId};
use alleycat_storage::{ETag, ObjectStore, Precondition, StoreError};
use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Results and leaderboards, as documents in a store.
#[derive(Clone)]
pub struct ResultsStore {
    store: Arc<dyn ObjectStore>,
}

/// A class's finished results, as handed to [`ResultsStore::record`].
pub type Finals = Vec<(ClassId, RaceId, RaceResult)>;

fn race_key(race: RaceId) -> String {
    format!("results/races/{race}.json")
}

fn index_key(class: ClassId) -> String {
    format!("results/index/class-{class}.json")
}

fn leaderboard_key(class: ClassId) -> String {
    format!("results/leaderboards/class-{class}.json")
}

impl ResultsStore {
    /// Results kept in `store`.
    #[must_use]
    pub fn new(store: Arc<dyn ObjectStore>) -> ResultsStore {
        ResultsStore { store }
    }

    /// Stores race results: each race's document, each class's index of
    /// recent races and its leaderboard, one conditional write each.
    pub async fn record(&self, finals: &Finals) -> Result<(), StoreError> {
        let mut by_race: BTreeMap<RaceId, Vec<(ClassId, &RaceResult)>> = BTreeMap::new();
        let mut by_class: BTreeMap<ClassId, Vec<(RaceId, &RaceResult)>> = BTreeMap::new();
        for (class, race, result) in finals {
            by_race.entry(*race).or_default().push((*class, result));
            by_class.entry(*class).or_default().push((*race, result));
        }
        for (race, results) in &by_race {
            self.update(&race_key(*race), |doc: &mut RaceResults| {
                doc.race_id = *race;
                let mut changed = false;
                for (class, result) in results {
                    changed |= doc.offer(*class, (*result).clone());
                }
                changed
            })
            .await?;
        }
        for (class, results) in &by_class {
            self.update(&index_key(*class), |index: &mut RaceIndex| {
                index.merge(results.iter().map(|(race, _)| *race))
            })
            .await?;
            self.update(&leaderboard_key(*class), |board: &mut Leaderboard| {
                let mut changed = false;
                for (race, result) in results {
                    let entry = LeaderboardEntry {
                        name: result.name.clone(),
                        output: result.output,
                        race_id: *race,
                    };
                    changed |= board.offer(result.racer_id, entry);
                }
                changed
            })
            .await?;
        }
        Ok(())
    }

    /// One race's results.
    pub async fn race(&self, race: RaceId) -> Result<Option<RaceResults>, StoreError> {
        Ok(self.read(&race_key(race)).await?.map(|(doc, _)| doc))
    }

    /// A class's recent races.
    pub async fn index(&self, class: ClassId) -> Result<RaceIndex, StoreError> {
        Ok(self
            .read(&index_key(class))
            .await?
            .map(|(doc, _)| doc)
            .unwrap_or_default())
    }

    /// A class's leaderboard and its version (for caching).
    pub async fn leaderboard(
        &self,
        class: ClassId,
    ) -> Result<Option<(Leaderboard, ETag)>, StoreError> {
        self.read(&leaderboard_key(class)).await
    }

    /// The leaderboard's version, without reading it.
    pub async fn leaderboard_version(&self, class: ClassId) -> Result<Option<ETag>, StoreError> {
        self.store.head(&leaderboard_key(class)).await
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
                        let finals =
                            vec![(ClassId(1), RaceId(100 + r), result(racer, racer as f64))];
                        store.record(&finals).await.unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.await.unwrap();
        }
        let (board, _) = store.leaderboard(ClassId(1)).await.unwrap().unwrap();
        assert_eq!(board.entries.len(), 40);
        assert_eq!(store.index(ClassId(1)).await.unwrap().races.len(), 5);
        let race = store.race(RaceId(100)).await.unwrap().unwrap();
        assert_eq!(race.ranked(ClassId(1)).len(), 8);
        // Recording the same finals again changes nothing.
        let before = store.leaderboard_version(ClassId(1)).await.unwrap();
        store
            .record(&vec![(ClassId(1), RaceId(100), result(0, 0.0))])
            .await
            .unwrap();
        assert_eq!(store.leaderboard_version(ClassId(1)).await.unwrap(), before);
    }
}
