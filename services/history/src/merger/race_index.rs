//! Where each racer's records are, so that a disqualification recomputes a
//! racer's bests from that racer's own races instead of the whole delivery
//! archive.
//!
//! Per class: each racer's races and the shards its records came through,
//! and per race and shard its *windows*: spans of delivery objects (first
//! and last key) holding its records. Keys sort by write time, so every
//! object of that shard holding a record of the race sorts inside one of
//! its windows: rebuilding a racer reads only the objects of its races, of
//! its shards (a racer's records go to one shard, as they are partitioned
//! by racer). A record that arrives long after its race (a bike replaying
//! its buffer, or one made up) opens a window of its own rather than
//! stretching one over everything written in between.
//!
//! What this costs is one race id per racer and race, and two keys per
//! window; it is kept in the history store beside the merge state, saved
//! before it (so that an object is never recorded as merged while its
//! records are missing from the index) and merged with what another history
//! process saved meanwhile.
//!
//! An index is *complete* when it covers every delivery object merged into
//! the class: one saved before the index existed, or unreadable, is not,
//! and is rebuilt from the whole archive once, before the first
//! recomputation that needs it.

use alleycat_core::delivery::{self, HistoryPoint};
use alleycat_core::dropped::Dropped;
use alleycat_core::{ClassId, RaceId, RacerId};
use alleycat_storage::{ObjectStore, Precondition, StoreError};
use anyhow::Context as _;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Objects written this long after a window's last (or before its first)
/// start a window of their own.
const WINDOW_GAP: chrono::Duration = chrono::Duration::minutes(15);

/// Most windows per race and shard; past it the two closest merge.
const MAX_WINDOWS: usize = 8;

/// Most races indexed per racer and class (a racer riding a race every
/// five minutes around the clock for a month rides 8,640). Races past it
/// are not indexed, counted and logged, and the racer can no longer be
/// recomputed (a disqualification keeps its bests, and says so).
pub(super) const MAX_RACES_PER_RACER: usize = 10_000;

static RACES_NOT_INDEXED: Dropped = Dropped::new("races not indexed: the racer rode too many");

/// Conditional writes tried before a save gives up until the next check.
const SAVE_ATTEMPTS: usize = 5;

/// A span of delivery objects.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Window {
    pub(super) first: String,
    pub(super) last: String,
}

impl Window {
    fn at(key: &str) -> Window {
        Window {
            first: key.to_owned(),
            last: key.to_owned(),
        }
    }

    /// Whether `key` is inside, or close enough to widen it.
    fn near(&self, key: &str) -> bool {
        if (self.first.as_str()..=self.last.as_str()).contains(&key) {
            return true;
        }
        let (Some(at), Some(first), Some(last)) = (
            delivery::written_at(key),
            delivery::written_at(&self.first),
            delivery::written_at(&self.last),
        ) else {
            return false;
        };
        at >= first - WINDOW_GAP && at <= last + WINDOW_GAP
    }

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

/// Adds `key` to `windows` (ordered, disjoint): widens the window it is
/// near, or opens one; past [`MAX_WINDOWS`], merges the closest two.
/// Returns whether anything changed.
fn add_key(windows: &mut Vec<Window>, key: &str) -> bool {
    let changed = match windows.iter_mut().find(|w| w.near(key)) {
        Some(window) => window.widen(key),
        None => {
            windows.push(Window::at(key));
            true
        }
    };
    if changed {
        normalize(windows);
    }
    changed
}

/// Sorts `windows`, merges those that overlap or are near and, past
/// [`MAX_WINDOWS`], the pairs with the smallest gap.
fn normalize(windows: &mut Vec<Window>) {
    windows.sort_by(|a, b| a.first.cmp(&b.first));
    let mut merged: Vec<Window> = Vec::with_capacity(windows.len());
    for window in windows.drain(..) {
        match merged.last_mut() {
            Some(previous) if window.first <= previous.last || previous.near(&window.first) => {
                if window.last > previous.last {
                    previous.last = window.last;
                }
            }
            _ => merged.push(window),
        }
    }
    while merged.len() > MAX_WINDOWS {
        // Keys sort by time, so the closest pair is the one whose gap
        // shares the longest prefix; comparing times is exact.
        let gap = |i: usize| {
            let (a, b) = (&merged[i].last, &merged[i + 1].first);
            match (delivery::written_at(a), delivery::written_at(b)) {
                (Some(a), Some(b)) => (b - a).num_seconds(),
                _ => i64::MAX,
            }
        };
        let i = (0..merged.len() - 1).min_by_key(|&i| gap(i)).unwrap_or(0);
        let next = merged.remove(i + 1);
        merged[i].last = next.last;
    }
    *windows = merged;
}

/// A racer's races, and the shards (as indexes into the class's shard
/// names) its records came through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Racer {
    races: BTreeSet<RaceId>,
    shards: BTreeSet<u16>,
    /// Whether races of it went unindexed (past [`MAX_RACES_PER_RACER`]).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    overflowed: bool,
}

/// The index of one class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct ClassIndex {
    /// Whether it covers every object merged into the class.
    #[serde(default)]
    complete: bool,
    /// Every shard name seen, once.
    shards: Vec<String>,
    racers: BTreeMap<RacerId, Racer>,
    /// Per race, per shard, its windows.
    races: BTreeMap<RaceId, BTreeMap<u16, Vec<Window>>>,
    /// Whether it changed since it was last saved.
    #[serde(skip)]
    changed: bool,
    /// The version saved that this index already holds (it read or wrote
    /// it): a save writes over that version without reading it again, and
    /// reads only when another process saved since.
    #[serde(skip)]
    holds: Option<alleycat_storage::ETag>,
}

/// Where a class's index is kept.
fn index_key(class: ClassId) -> String {
    format!("_state/history-index/class-{class}.json.gz")
}

/// The index saved for `class` and its version: `None` when there is none.
async fn read(
    store: &dyn ObjectStore,
    class: ClassId,
) -> anyhow::Result<Option<(ClassIndex, alleycat_storage::ETag)>> {
    let key = index_key(class);
    let Some(object) = store
        .get(&key)
        .await
        .with_context(|| format!("reading {key}"))?
    else {
        return Ok(None);
    };
    let body = object.body;
    let parsed = tokio::task::spawn_blocking(move || {
        let json = alleycat_core::codec::gunzip(&body, 1 << 30)?;
        anyhow::Ok(serde_json::from_slice::<ClassIndex>(&json)?)
    })
    .await?;
    match parsed {
        Ok(index) => Ok(Some((index, object.etag))),
        Err(e) => {
            // Rebuilt from the archive when needed: nothing is lost.
            tracing::error!(%key, error = %e, "the race index is corrupt; it will be rebuilt from the delivery archive");
            Ok(Some((ClassIndex::default(), object.etag)))
        }
    }
}

impl ClassIndex {
    /// The saved index of `class`. Without one, an index is complete only
    /// if the class has no history yet (`empty`): then every object that
    /// will be merged is noted from the start.
    pub(super) async fn load(
        store: &dyn ObjectStore,
        class: ClassId,
        empty: bool,
    ) -> anyhow::Result<Self> {
        Ok(match read(store, class).await? {
            Some((index, etag)) => ClassIndex {
                holds: Some(etag),
                ..index
            },
            None => ClassIndex {
                complete: empty,
                ..ClassIndex::default()
            },
        })
    }

    /// Whether it covers every object merged into the class.
    pub(super) fn is_complete(&self) -> bool {
        self.complete
    }

    /// Marks it complete (rebuilt from the whole archive).
    pub(super) fn set_complete(&mut self) {
        self.complete = true;
        self.changed = true;
    }

    /// Saves the index if it changed, merged with what another process
    /// saved since (both merge every object, so the union is right).
    pub(super) async fn save(
        &mut self,
        store: &dyn ObjectStore,
        class: ClassId,
    ) -> anyhow::Result<()> {
        if !self.changed {
            return Ok(());
        }
        let key = index_key(class);
        // Reading and parsing the saved index before every save was about
        // a quarter of the history service's CPU in run 1 (profiled), for
        // an index it already held unless another process saved since.
        let mut condition = match self.holds.take() {
            Some(etag) => Precondition::IfMatch(etag),
            None => match read(store, class).await? {
                Some((theirs, etag)) => {
                    self.absorb(&theirs);
                    Precondition::IfMatch(etag)
                }
                None => Precondition::IfAbsent,
            },
        };
        for _ in 0..SAVE_ATTEMPTS {
            let json = serde_json::to_vec(&self).context("encoding the race index")?;
            let ((pairs, races), json_bytes) = (self.size(), json.len());
            let body = tokio::task::spawn_blocking(move || alleycat_core::codec::gzip(&json, 1))
                .await
                .context("compressing the race index")?;
            tracing::debug!(%class, pairs, races, json_bytes, gzip_bytes = body.len(), "saving the race index");
            match store
                .put_if(&key, Bytes::from(body), "application/gzip", condition)
                .await
            {
                Ok(etag) => {
                    self.changed = false;
                    self.holds = Some(etag);
                    return Ok(());
                }
                Err(StoreError::PreconditionFailed { .. }) => {
                    condition = match read(store, class).await? {
                        Some((theirs, etag)) => {
                            self.absorb(&theirs);
                            Precondition::IfMatch(etag)
                        }
                        None => Precondition::IfAbsent,
                    };
                }
                Err(e) => return Err(anyhow::Error::new(e).context(format!("saving {key}"))),
            }
        }
        anyhow::bail!("saving {key}: another history process kept changing it")
    }

    /// Takes in everything `other` knows. Complete if either is: every
    /// history process merges every object.
    pub(super) fn absorb(&mut self, other: &ClassIndex) {
        self.complete |= other.complete;
        for (racer, theirs) in &other.racers {
            let ours = self.racers.entry(*racer).or_default();
            ours.races.extend(theirs.races.iter().copied());
            ours.overflowed |= theirs.overflowed;
            for shard in &theirs.shards {
                if let Some(name) = other.shards.get(usize::from(*shard)) {
                    let shard = self.shard(name);
                    self.racers.entry(*racer).or_default().shards.insert(shard);
                }
            }
        }
        for (race, shards) in &other.races {
            for (shard, windows) in shards {
                let Some(name) = other.shards.get(usize::from(*shard)) else {
                    continue;
                };
                let shard = self.shard(name);
                let ours = self
                    .races
                    .entry(*race)
                    .or_default()
                    .entry(shard)
                    .or_default();
                ours.extend(windows.iter().cloned());
                normalize(ours);
            }
        }
    }

    /// The index of shard `name`, added if new.
    fn shard(&mut self, name: &str) -> u16 {
        let at = match self.shards.iter().position(|s| s == name) {
            Some(at) => at,
            None => {
                self.shards.push(name.to_owned());
                self.shards.len() - 1
            }
        };
        u16::try_from(at).unwrap_or(u16::MAX)
    }

    /// Notes that the object at `key` holds `point` (of this class).
    pub(super) fn note(&mut self, key: &str, point: &HistoryPoint) {
        let shard = self.shard(delivery::shard_of(key).unwrap_or_default());
        let racer = self.racers.entry(point.racer_id).or_default();
        if !racer.races.contains(&point.race_id) {
            if racer.races.len() >= MAX_RACES_PER_RACER {
                if !racer.overflowed {
                    racer.overflowed = true;
                    self.changed = true;
                }
                RACES_NOT_INDEXED.add(MAX_RACES_PER_RACER);
                return;
            }
            racer.races.insert(point.race_id);
            self.changed = true;
        }
        self.changed |= racer.shards.insert(shard);
        let windows = self
            .races
            .entry(point.race_id)
            .or_default()
            .entry(shard)
            .or_default();
        self.changed |= add_key(windows, key);
    }

    /// The races of `racer`, each with the windows of the racer's shards
    /// and those shards' names; `None` if races of it went unindexed.
    pub(super) fn races_of(
        &self,
        racer: RacerId,
    ) -> Option<impl Iterator<Item = (RaceId, &str, &Window)>> {
        let r = self.racers.get(&racer);
        if r.is_some_and(|r| r.overflowed) {
            return None;
        }
        Some(r.into_iter().flat_map(move |r| {
            r.races.iter().flat_map(move |race| {
                let windows = self.races.get(race);
                r.shards.iter().flat_map(move |shard| {
                    let name = self
                        .shards
                        .get(usize::from(*shard))
                        .map_or("", String::as_str);
                    windows
                        .and_then(|w| w.get(shard))
                        .into_iter()
                        .flatten()
                        .map(move |window| (*race, name, window))
                })
            })
        }))
    }

    /// Whether the index knows `racer`.
    pub(super) fn has_racer(&self, racer: RacerId) -> bool {
        self.racers.contains_key(&racer)
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

    fn key(second: i64, shard: &str) -> String {
        let at = chrono::DateTime::from_timestamp(1_800_000_000 + second, 0).unwrap();
        delivery::delivery_key(at, shard, "1", "2")
    }

    fn windows(index: &ClassIndex, racer: u64) -> Vec<(u64, String, String, String)> {
        index
            .races_of(RacerId(racer))
            .unwrap()
            .map(|(race, shard, w)| (race.0, shard.to_owned(), w.first.clone(), w.last.clone()))
            .collect()
    }

    #[test]
    fn windows_cover_every_object_of_a_race_per_shard_and_racers_their_races() {
        let mut index = ClassIndex::default();
        index.note(&key(2, "s0"), &point(1, 10));
        index.note(&key(1, "s0"), &point(2, 10));
        index.note(&key(3, "s0"), &point(1, 11));
        index.note(&key(4, "s0"), &point(1, 10));
        index.note(&key(9, "s1"), &point(5, 10));
        assert_eq!(
            windows(&index, 1),
            [
                (10, "s0".into(), key(1, "s0"), key(4, "s0")),
                (11, "s0".into(), key(3, "s0"), key(3, "s0"))
            ]
        );
        assert_eq!(
            windows(&index, 5),
            [(10, "s1".into(), key(9, "s1"), key(9, "s1"))],
            "only the racer's own shard"
        );
        assert_eq!(index.size(), (4, 2));
        assert_eq!(windows(&index, 3), []);
        index.changed = false;
        index.note(&key(3, "s0"), &point(1, 10));
        assert!(!index.changed, "a key inside the window changes nothing");
    }

    #[test]
    fn a_late_record_opens_a_window_of_its_own_and_windows_stay_few() {
        let mut index = ClassIndex::default();
        index.note(&key(0, "s0"), &point(1, 10));
        index.note(&key(300, "s0"), &point(1, 10));
        // A day later: not the whole day in between.
        index.note(&key(86_400, "s0"), &point(1, 10));
        assert_eq!(
            windows(&index, 1),
            [
                (10, "s0".into(), key(0, "s0"), key(300, "s0")),
                (10, "s0".into(), key(86_400, "s0"), key(86_400, "s0"))
            ]
        );
        for day in 2..40 {
            index.note(&key(day * 86_400, "s0"), &point(1, 10));
        }
        let all = windows(&index, 1);
        assert_eq!(all.len(), MAX_WINDOWS);
        assert_eq!(all[0].2, key(0, "s0"));
        assert_eq!(all[MAX_WINDOWS - 1].3, key(39 * 86_400, "s0"));
    }

    #[test]
    fn too_many_races_of_a_racer_are_not_indexed_and_the_racer_says_so() {
        let mut index = ClassIndex::default();
        for race in 0..MAX_RACES_PER_RACER as u64 + 5 {
            index.note(&key(0, "s0"), &point(1, race));
        }
        assert!(index.races_of(RacerId(1)).is_none());
        assert_eq!(index.size().0, MAX_RACES_PER_RACER);
    }

    #[tokio::test]
    async fn saves_from_two_processes_keep_both_whichever_version_each_holds() {
        use alleycat_storage::object_store::fs::FsStore;
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(dir.path()).unwrap();
        let class = ClassId(1);
        let mut a = ClassIndex::load(&store, class, true).await.unwrap();
        let mut b = ClassIndex::load(&store, class, true).await.unwrap();
        a.note(&key(1, "s0"), &point(1, 10));
        a.save(&store, class).await.unwrap();
        // b holds no saved version yet: it must merge a's, not overwrite it.
        b.note(&key(2, "s1"), &point(2, 20));
        b.save(&store, class).await.unwrap();
        // a holds the version it wrote, which b has replaced since.
        a.note(&key(3, "s0"), &point(3, 30));
        a.save(&store, class).await.unwrap();
        // a now holds the latest version: a save writes over it directly.
        a.note(&key(4, "s0"), &point(4, 40));
        a.save(&store, class).await.unwrap();
        let saved = ClassIndex::load(&store, class, false).await.unwrap();
        for (racer, race, second, shard) in [
            (1, 10, 1, "s0"),
            (2, 20, 2, "s1"),
            (3, 30, 3, "s0"),
            (4, 40, 4, "s0"),
        ] {
            let at = key(second, shard);
            assert_eq!(
                windows(&saved, racer),
                [(race, shard.into(), at.clone(), at)],
                "racer {racer}"
            );
        }
        assert!(saved.is_complete());
    }

    #[test]
    fn two_processes_indexes_merge_into_their_union() {
        let mut ours = ClassIndex::default();
        ours.note(&key(5, "s0"), &point(1, 10));
        let mut theirs = ClassIndex::default();
        theirs.note(&key(1, "s9"), &point(2, 11));
        theirs.note(&key(9, "s0"), &point(1, 10));
        ours.absorb(&theirs);
        assert_eq!(
            windows(&ours, 1),
            [(10, "s0".into(), key(5, "s0"), key(9, "s0"))]
        );
        assert_eq!(
            windows(&ours, 2),
            [(11, "s9".into(), key(1, "s9"), key(1, "s9"))]
        );
    }
}
