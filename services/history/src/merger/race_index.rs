//! Where each racer's records are, so that a disqualification recomputes a
//! racer's bests from that racer's own races instead of the whole delivery
//! archive.
//!
//! Per class: each racer's races and the shards its records came through,
//! and per race and shard the *window*, the first and last delivery object
//! holding its records. Keys sort by write time, so every object of that
//! shard holding a record of the race sorts inside its window: rebuilding a
//! racer reads only the objects of its races, of its shards (a racer's
//! records go to one shard, as they are partitioned by racer). What this
//! costs is one race id per racer and race, and two keys per race and
//! shard; it is kept in the history store beside the merge state, and saved
//! before it, so that an object is never recorded as merged while its
//! records are missing from the index.

use alleycat_core::delivery::{self, HistoryPoint};
use alleycat_core::{ClassId, RaceId, RacerId};
use alleycat_storage::ObjectStore;
use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// The first and last delivery object holding records of a race.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Window {
    pub(super) first: String,
    pub(super) last: String,
}

impl Window {
    fn widen(&mut self, key: &str) -> bool {
        if key < self.first.as_str() {
            key.clone_into(&mut self.first);
            true
        } else if key > self.last.as_str() {
            key.clone_into(&mut self.last);
            true
        } else {
            false
        }
    }
}

/// A racer's races, and the shards (as indexes into the class's shard
/// names) its records came through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Racer {
    races: BTreeSet<RaceId>,
    shards: BTreeSet<u16>,
}

/// The index of one class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ClassIndex {
    /// Every shard name seen, once.
    shards: Vec<String>,
    racers: BTreeMap<RacerId, Racer>,
    /// Per race, per shard, its window.
    races: BTreeMap<RaceId, BTreeMap<u16, Window>>,
    /// Whether it changed since it was last saved.
    #[serde(skip)]
    changed: bool,
}

/// Where a class's index is kept.
fn index_key(class: ClassId) -> String {
    format!("_state/history-index/class-{class}.json.gz")
}

impl ClassIndex {
    /// The saved index of `class`, or an empty one.
    pub(super) async fn load(store: &dyn ObjectStore, class: ClassId) -> anyhow::Result<Self> {
        let key = index_key(class);
        let Some(object) = store
            .get(&key)
            .await
            .with_context(|| format!("reading {key}"))?
        else {
            return Ok(ClassIndex::default());
        };
        let json = alleycat_core::codec::gunzip(&object.body, 1 << 30)
            .with_context(|| format!("{key} is not gzip"))?;
        serde_json::from_slice(&json).with_context(|| format!("{key} is corrupt"))
    }

    /// Saves the index if it changed.
    pub(super) async fn save(
        &mut self,
        store: &dyn ObjectStore,
        class: ClassId,
    ) -> anyhow::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let key = index_key(class);
        let json = serde_json::to_vec(&self).context("encoding the race index")?;
        let (pairs, races, json_bytes) = (self.size().0, self.size().1, json.len());
        let body = tokio::task::spawn_blocking(move || alleycat_core::codec::gzip(&json, 1))
            .await
            .context("compressing the race index")?;
        tracing::debug!(%class, pairs, races, json_bytes, gzip_bytes = body.len(), "saving the race index");
        store
            .put(&key, Bytes::from(body), "application/gzip")
            .await
            .with_context(|| format!("saving {key}"))?;
        self.changed = false;
        Ok(())
    }

    /// Notes that the object at `key` holds `point` (of this class).
    pub(super) fn note(&mut self, key: &str, point: &HistoryPoint) {
        let shard_name = delivery::shard_of(key).unwrap_or_default();
        let shard = match self.shards.iter().position(|s| s == shard_name) {
            Some(at) => at,
            None => {
                self.shards.push(shard_name.to_owned());
                self.shards.len() - 1
            }
        };
        let shard = u16::try_from(shard).unwrap_or(u16::MAX);
        let racer = self.racers.entry(point.racer_id).or_default();
        self.changed |= racer.races.insert(point.race_id);
        self.changed |= racer.shards.insert(shard);
        let windows = self.races.entry(point.race_id).or_default();
        match windows.get_mut(&shard) {
            Some(window) => self.changed |= window.widen(key),
            None => {
                windows.insert(
                    shard,
                    Window {
                        first: key.to_owned(),
                        last: key.to_owned(),
                    },
                );
                self.changed = true;
            }
        }
    }

    /// The races of `racer`, each with the windows of the racer's shards
    /// and those shards' names.
    pub(super) fn races_of(&self, racer: RacerId) -> impl Iterator<Item = (RaceId, &str, &Window)> {
        self.racers.get(&racer).into_iter().flat_map(move |r| {
            r.races.iter().flat_map(move |race| {
                let windows = self.races.get(race);
                r.shards.iter().filter_map(move |shard| {
                    let window = windows?.get(shard)?;
                    let name = self.shards.get(usize::from(*shard))?;
                    Some((*race, name.as_str(), window))
                })
            })
        })
    }

    /// Racer-race pairs and races held: what the index costs.
    pub(super) fn size(&self) -> (usize, usize) {
        (
            self.racers.values().map(|r| r.races.len()).sum(),
            self.races.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::Second;

    fn point(racer: u64, race: u64) -> HistoryPoint {
        HistoryPoint {
            class_id: ClassId(1),
            second: Second(1),
            racer_id: RacerId(racer),
            race_id: RaceId(race),
            output: 1.0,
        }
    }

    fn key(second: u32, shard: &str) -> String {
        let at = chrono::DateTime::from_timestamp(1_800_000_000 + i64::from(second), 0).unwrap();
        delivery::delivery_key(at, shard, "1", "2")
    }

    #[test]
    fn windows_cover_every_object_of_a_race_per_shard_and_racers_their_races() {
        let mut index = ClassIndex::default();
        index.note(&key(2, "s0"), &point(1, 10));
        index.note(&key(1, "s0"), &point(2, 10));
        index.note(&key(3, "s0"), &point(1, 11));
        index.note(&key(4, "s0"), &point(1, 10));
        index.note(&key(9, "s1"), &point(5, 10));
        let of_1: Vec<(u64, &str, String, String)> = index
            .races_of(RacerId(1))
            .map(|(race, shard, w)| (race.0, shard, w.first.clone(), w.last.clone()))
            .collect();
        assert_eq!(
            of_1,
            [
                (10, "s0", key(1, "s0"), key(4, "s0")),
                (11, "s0", key(3, "s0"), key(3, "s0"))
            ]
        );
        let of_5: Vec<(u64, &str)> = index
            .races_of(RacerId(5))
            .map(|(r, s, _)| (r.0, s))
            .collect();
        assert_eq!(of_5, [(10, "s1")], "only the racer's own shard");
        assert_eq!(index.size(), (4, 2));
        assert_eq!(index.races_of(RacerId(3)).count(), 0);
        index.changed = false;
        index.note(&key(3, "s0"), &point(1, 10));
        assert!(!index.changed, "a key inside the window changes nothing");
    }
}
