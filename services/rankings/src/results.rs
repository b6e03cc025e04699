//! Race results and class leaderboards: pure merge and ranking logic.
//!
//! Both are stored as documents that several rankings processes update with
//! conditional writes; their merges are deterministic and idempotent, so
//! when a write conflicts, the writer re-reads, merges and writes again, and
//! re-reading the stream after a restart changes nothing.

use crate::race::RaceResult;
use alleycat_core::disqualification::Disqualifications;
use alleycat_core::dropped::Dropped;
use alleycat_core::{ClassId, RaceId, RacerId};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::collections::BTreeMap;

/// Races kept in a class's index of recent races.
pub const RECENT_RACES: usize = 200;

/// The results of one race, per class (a race id is shared by every class
/// racing in that slot).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaceResults {
    /// The race.
    pub race_id: RaceId,
    /// Per class, per racer.
    pub classes: BTreeMap<ClassId, BTreeMap<RacerId, RaceResult>>,
    /// When its last `final` record seen arrived, ms since the epoch (0 in
    /// documents stored before it was kept): what the retention goes by.
    #[serde(default)]
    pub finished_ms: i64,
}

impl Default for RaceResults {
    /// An empty document (its race id is set by the first result stored).
    fn default() -> Self {
        RaceResults {
            race_id: RaceId(0),
            classes: BTreeMap::new(),
            finished_ms: 0,
        }
    }
}

/// A result with its rank in its class.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RankedResult {
    /// 1 for the winner.
    pub rank: u32,
    /// The result.
    #[serde(flatten)]
    pub result: RaceResult,
}

/// Which of two results for the same racer and race to keep: the one that
/// saw more of the race, then the higher output. Deterministic, so every
/// process converges on the same document.
fn better(a: &RaceResult, b: &RaceResult) -> bool {
    (a.seconds, a.output).partial_cmp(&(b.seconds, b.output)) == Some(Ordering::Greater)
}

impl RaceResults {
    /// Records a result; returns whether the document changed.
    pub fn offer(&mut self, class: ClassId, result: RaceResult) -> bool {
        let results = self.classes.entry(class).or_default();
        match results.get(&result.racer_id) {
            Some(existing) if !better(&result, existing) => false,
            _ => {
                results.insert(result.racer_id, result);
                true
            }
        }
    }

    /// Notes a `final` record that arrived at `at` (ms since the epoch);
    /// returns whether the document changed.
    pub fn finished(&mut self, at: i64) -> bool {
        let changed = at > self.finished_ms;
        self.finished_ms = self.finished_ms.max(at);
        changed
    }

    /// Merges another version of this document; returns whether ours changed.
    pub fn merge(&mut self, other: &RaceResults) -> bool {
        let mut changed = self.finished(other.finished_ms);
        for (class, results) in &other.classes {
            for result in results.values() {
                changed |= self.offer(*class, result.clone());
            }
        }
        changed
    }

    /// A class's results, ranked by final output (ties: lower racer id),
    /// without those `disqualified` takes out. (They stay stored: a
    /// reinstatement brings them back.)
    #[must_use]
    pub fn ranked(&self, class: ClassId, disqualified: &Disqualifications) -> Vec<RankedResult> {
        let mut results: Vec<&RaceResult> = self
            .classes
            .get(&class)
            .map(|r| {
                r.values()
                    .filter(|r| !disqualified.covers(r.racer_id, self.race_id))
                    .collect()
            })
            .unwrap_or_default();
        results.sort_by(|a, b| {
            b.output
                .total_cmp(&a.output)
                .then(a.racer_id.cmp(&b.racer_id))
        });
        results
            .into_iter()
            .enumerate()
            .map(|(i, r)| RankedResult {
                rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
                result: r.clone(),
            })
            .collect()
    }
}

/// The most recently finished races of a class.
///
/// Races are ordered by when they finished (the arrival time of their last
/// `final` record seen), not by their id: race ids come from clients, so a
/// few `final` records with ids near 2^53 would otherwise outrank every real
/// race for good. Stored as `{"races": [{"raceId", "finishedMs"}]}`; the
/// earlier form, a list of ids, still reads (as finished at time 0, so any
/// race finishing since outranks them).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaceIndex {
    /// When each race finished, ms since the epoch; at most [`RECENT_RACES`].
    #[serde(with = "index_entries")]
    pub races: BTreeMap<RaceId, i64>,
}

impl RaceIndex {
    /// Adds races with when they finished (a race already listed keeps the
    /// later time), drops those finished before `cutoff` (ms since the
    /// epoch; the retention), and keeps the [`RECENT_RACES`] most recently
    /// finished (ties: the higher id). Deterministic and idempotent, so
    /// every process converges. Returns whether it changed.
    pub fn merge(&mut self, races: impl IntoIterator<Item = (RaceId, i64)>, cutoff: i64) -> bool {
        let before = self.races.clone();
        for (race, finished) in races {
            let at = self.races.entry(race).or_insert(finished);
            *at = (*at).max(finished);
        }
        self.races.retain(|_, finished| *finished >= cutoff);
        if self.races.len() > RECENT_RACES {
            let mut by_finish: Vec<(i64, RaceId)> =
                self.races.iter().map(|(race, at)| (*at, *race)).collect();
            by_finish.sort_unstable();
            for (_, race) in &by_finish[..by_finish.len() - RECENT_RACES] {
                self.races.remove(race);
            }
        }
        self.races != before
    }

    /// Most recently finished first.
    #[must_use]
    pub fn newest(&self) -> Vec<RaceId> {
        let mut by_finish: Vec<(i64, RaceId)> =
            self.races.iter().map(|(race, at)| (*at, *race)).collect();
        by_finish.sort_unstable_by(|a, b| b.cmp(a));
        by_finish.into_iter().map(|(_, race)| race).collect()
    }
}

/// The index's entries as stored, and the earlier form (bare ids).
mod index_entries {
    use alleycat_core::RaceId;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    #[derive(Serialize, Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Entry {
        race_id: RaceId,
        finished_ms: i64,
    }

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Stored {
        Entry(Entry),
        Legacy(RaceId),
    }

    pub(super) fn serialize<S: Serializer>(
        races: &BTreeMap<RaceId, i64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(races.iter().map(|(race, at)| Entry {
            race_id: *race,
            finished_ms: *at,
        }))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<BTreeMap<RaceId, i64>, D::Error> {
        let stored = Vec::<Stored>::deserialize(deserializer)?;
        Ok(stored
            .into_iter()
            .map(|s| match s {
                Stored::Entry(e) => (e.race_id, e.finished_ms),
                Stored::Legacy(race) => (race, 0),
            })
            .collect())
    }
}

/// A racer's best result in a class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderboardEntry {
    /// Its name (as in that race).
    pub name: String,
    /// The result's output.
    pub output: f64,
    /// The race it was set in.
    pub race_id: RaceId,
    /// When that race finished (its last final record's arrival), ms since
    /// the epoch; absent in entries stored before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<i64>,
}

/// Most entries a class leaderboard keeps (the best ones).
pub const MAX_LEADERBOARD_ENTRIES: usize = 100_000;

/// Races kept per racer on a leaderboard, its best included: when its best
/// race is disqualified, the next one stands in.
pub const RACES_KEPT_PER_RACER: usize = 5;

static LEADERBOARD_DROPPED: Dropped = Dropped::new("leaderboard entries past its bound");

/// All-time class leaderboard: each racer once, with its best result.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Leaderboard {
    /// Best result per racer.
    pub entries: BTreeMap<RacerId, LeaderboardEntry>,
    /// Per racer, its next best races (at most
    /// [`RACES_KEPT_PER_RACER`]` - 1`, best first).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub runners_up: BTreeMap<RacerId, Vec<LeaderboardEntry>>,
}

/// Which of two entries ranks first: the higher output, then the earlier race.
fn entry_order(a: &LeaderboardEntry, b: &LeaderboardEntry) -> Ordering {
    b.output
        .total_cmp(&a.output)
        .then(a.race_id.cmp(&b.race_id))
}

/// A leaderboard line.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RankedEntry {
    /// 1 for the best.
    pub rank: u32,
    /// The racer.
    pub racer_id: RacerId,
    /// Its name.
    pub name: String,
    /// Its best result's output.
    pub output: f64,
    /// The race of that result.
    pub race_id: RaceId,
    /// When that race finished, if known (for the original system's `ts`;
    /// not part of this API's answers).
    #[serde(skip)]
    pub finished_ms: Option<i64>,
}

impl Leaderboard {
    /// Keeps `entry` if it beats the racer's current best (on a tie, the
    /// earlier race keeps it), or among the racer's next best races.
    /// Returns whether it changed. What is kept per racer is the best
    /// [`RACES_KEPT_PER_RACER`] races of everything offered, so merges
    /// converge in any order.
    pub fn offer(&mut self, racer: RacerId, entry: LeaderboardEntry) -> bool {
        match self.entries.get(&racer) {
            Some(current)
                if current.race_id != entry.race_id
                    && entry_order(current, &entry) != Ordering::Greater =>
            {
                self.offer_runner_up(racer, entry)
            }
            Some(current) if current.race_id == entry.race_id && current.output >= entry.output => {
                false
            }
            _ => {
                if self.entries.len() >= MAX_LEADERBOARD_ENTRIES
                    && !self.entries.contains_key(&racer)
                    && !self.admit(racer, &entry)
                {
                    LEADERBOARD_DROPPED.add(MAX_LEADERBOARD_ENTRIES);
                    return false;
                }
                let race = entry.race_id;
                // The new best's race leaves the runners-up first, so that
                // the old best does not push out a race that stays kept.
                if let Some(others) = self.runners_up.get_mut(&racer) {
                    others.retain(|e| e.race_id != race);
                    if others.is_empty() {
                        self.runners_up.remove(&racer);
                    }
                }
                if let Some(previous) = self.entries.insert(racer, entry)
                    && previous.race_id != race
                {
                    self.offer_runner_up(racer, previous);
                }
                true
            }
        }
    }

    /// Keeps `entry` among the racer's next best races if it is one of them.
    fn offer_runner_up(&mut self, racer: RacerId, entry: LeaderboardEntry) -> bool {
        let others = self.runners_up.entry(racer).or_default();
        let before = others.clone();
        match others.iter_mut().find(|e| e.race_id == entry.race_id) {
            Some(same) if same.output >= entry.output => {}
            Some(same) => *same = entry,
            None => others.push(entry),
        }
        others.sort_by(entry_order);
        others.truncate(RACES_KEPT_PER_RACER - 1);
        let changed = *others != before;
        if others.is_empty() {
            self.runners_up.remove(&racer);
        }
        changed
    }

    /// On a full board, a new racer enters only above the lowest entry,
    /// which leaves (counted): made-up racer ids cannot grow the board, and
    /// every process drops the same entry, so merges still converge.
    fn admit(&mut self, racer: RacerId, entry: &LeaderboardEntry) -> bool {
        let rank_key =
            |racer: &RacerId, entry: &LeaderboardEntry| (entry.output, std::cmp::Reverse(*racer));
        let Some(lowest) = self
            .entries
            .iter()
            .min_by(|a, b| {
                rank_key(a.0, a.1)
                    .partial_cmp(&rank_key(b.0, b.1))
                    .unwrap_or(std::cmp::Ordering::Equal)
            })
            .map(|(racer, entry)| (*racer, rank_key(racer, entry)))
        else {
            return true;
        };
        if rank_key(&racer, entry) <= lowest.1 {
            return false;
        }
        self.entries.remove(&lowest.0);
        self.runners_up.remove(&lowest.0);
        LEADERBOARD_DROPPED.add(MAX_LEADERBOARD_ENTRIES);
        true
    }

    /// Merges another version; returns whether ours changed.
    pub fn merge(&mut self, other: &Leaderboard) -> bool {
        let mut changed = false;
        for (racer, entry) in &other.entries {
            changed |= self.offer(*racer, entry.clone());
        }
        for (racer, others) in &other.runners_up {
            for entry in others {
                changed |= self.offer(*racer, entry.clone());
            }
        }
        changed
    }

    /// Every racer, best first (ties: lower racer id), each with its best
    /// race that `disqualified` leaves standing.
    #[must_use]
    pub fn ranked(&self, disqualified: &Disqualifications) -> Vec<RankedEntry> {
        let mut entries: Vec<(&RacerId, &LeaderboardEntry)> = self
            .entries
            .iter()
            .filter_map(|(racer, best)| {
                if !disqualified.names(*racer) {
                    return Some((racer, best));
                }
                std::iter::once(best)
                    .chain(self.runners_up.get(racer).into_iter().flatten())
                    .find(|e| !disqualified.covers(*racer, e.race_id))
                    .map(|e| (racer, e))
            })
            .collect();
        entries.sort_by(|a, b| b.1.output.total_cmp(&a.1.output).then(a.0.cmp(b.0)));
        entries
            .into_iter()
            .enumerate()
            .map(|(i, (racer, e))| RankedEntry {
                rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
                racer_id: *racer,
                name: e.name.clone(),
                output: e.output,
                race_id: e.race_id,
                finished_ms: e.finished_ms,
            })
            .collect()
    }
}

/// A page of a ranked list: `limit` entries from `offset`, and the offset
/// of the next page if there is one.
#[must_use]
pub fn page<T: Clone>(ranked: &[T], offset: usize, limit: usize) -> (Vec<T>, Option<usize>) {
    let end = offset.saturating_add(limit).min(ranked.len());
    let start = offset.min(end);
    let next = (end < ranked.len()).then_some(end);
    (ranked[start..end].to_vec(), next)
}

/// The entries around `racer`: it and up to `limit - 1` neighbours, as
/// evenly above and below as the list allows. `None` if it is not listed.
#[must_use]
pub fn around(ranked: &[RankedEntry], racer: RacerId, limit: usize) -> Option<Vec<RankedEntry>> {
    let at = ranked.iter().position(|e| e.racer_id == racer)?;
    let limit = limit.max(1).min(ranked.len());
    let start = at.saturating_sub((limit - 1) / 2).min(ranked.len() - limit);
    Some(ranked[start..start + limit].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(racer: u64, output: f64, seconds: u32) -> RaceResult {
        RaceResult {
            racer_id: RacerId(racer),
            name: format!("R{racer}"),
            output,
            average: output,
            best: output,
            seconds,
        }
    }

    fn entry(output: f64, race: u64) -> LeaderboardEntry {
        LeaderboardEntry {
            name: "x".into(),
            output,
            race_id: RaceId(race),
            finished_ms: None,
        }
    }

    #[test]
    fn race_results_keep_the_fullest_result_and_rank_by_output() {
        let mut race = RaceResults {
            race_id: RaceId(1),
            ..Default::default()
        };
        assert!(race.offer(ClassId(1), result(1, 100.0, 299)));
        assert!(
            race.offer(ClassId(1), result(1, 90.0, 300)),
            "saw more of the race"
        );
        assert!(!race.offer(ClassId(1), result(1, 100.0, 299)));
        assert!(!race.offer(ClassId(1), result(1, 90.0, 300)), "idempotent");
        race.offer(ClassId(1), result(2, 120.0, 300));
        race.offer(ClassId(1), result(3, 90.0, 300));
        let ranked: Vec<(u32, u64)> = race
            .ranked(ClassId(1), &Disqualifications::default())
            .iter()
            .map(|r| (r.rank, r.result.racer_id.0))
            .collect();
        assert_eq!(ranked, [(1, 2), (2, 1), (3, 3)]);
        assert!(
            race.ranked(ClassId(2), &Disqualifications::default())
                .is_empty()
        );
    }

    #[test]
    fn race_result_merges_converge_in_any_order() {
        let mut a = RaceResults {
            race_id: RaceId(1),
            ..Default::default()
        };
        a.offer(ClassId(1), result(1, 100.0, 299));
        a.offer(ClassId(2), result(5, 10.0, 300));
        let mut b = RaceResults {
            race_id: RaceId(1),
            ..Default::default()
        };
        b.offer(ClassId(1), result(1, 90.0, 300));
        b.offer(ClassId(1), result(2, 50.0, 300));
        let mut ab = a.clone();
        ab.merge(&b);
        let mut ba = b.clone();
        ba.merge(&a);
        assert_eq!(ab, ba);
        assert!(!ab.clone().merge(&b), "merging again changes nothing");
    }

    #[test]
    fn leaderboard_keeps_each_racers_best_once() {
        let mut board = Leaderboard::default();
        assert!(board.offer(RacerId(1), entry(100.0, 5)));
        assert!(
            board.offer(RacerId(1), entry(90.0, 6)),
            "kept as a runner-up"
        );
        assert!(!board.offer(RacerId(1), entry(90.0, 6)), "idempotent");
        assert!(
            !board.offer(RacerId(1), entry(80.0, 5)),
            "race 5 did better"
        );
        assert!(board.offer(RacerId(1), entry(100.0, 7)));
        assert_eq!(
            board.entries[&RacerId(1)].race_id,
            RaceId(5),
            "a tie keeps the earlier race"
        );
        assert!(board.offer(RacerId(1), entry(110.0, 8)));
        board.offer(RacerId(2), entry(120.0, 5));
        board.offer(RacerId(3), entry(110.0, 5));
        let ranked: Vec<(u32, u64, f64)> = board
            .ranked(&Disqualifications::default())
            .iter()
            .map(|e| (e.rank, e.racer_id.0, e.output))
            .collect();
        assert_eq!(ranked, [(1, 2, 120.0), (2, 1, 110.0), (3, 3, 110.0)]);
        let mut other = Leaderboard::default();
        other.offer(RacerId(3), entry(130.0, 9));
        assert!(board.merge(&other));
        assert_eq!(
            board.ranked(&Disqualifications::default())[0].racer_id,
            RacerId(3)
        );
    }

    #[test]
    fn a_full_leaderboard_admits_only_racers_above_its_lowest_entry() {
        let mut board = Leaderboard::default();
        for r in 0..MAX_LEADERBOARD_ENTRIES as u64 {
            board.offer(RacerId(r + 1), entry(100.0 + (r % 1000) as f64, 1));
        }
        let dropped = LEADERBOARD_DROPPED.total();
        // A made-up racer with a low result does not get in.
        assert!(!board.offer(RacerId(u64::MAX - 1), entry(1.0, 2)));
        assert_eq!(board.entries.len(), MAX_LEADERBOARD_ENTRIES);
        // A better one does, and the lowest entry leaves.
        assert!(board.offer(RacerId(u64::MAX - 2), entry(5000.0, 2)));
        assert_eq!(board.entries.len(), MAX_LEADERBOARD_ENTRIES);
        assert_eq!(
            board.ranked(&Disqualifications::default())[0].racer_id,
            RacerId(u64::MAX - 2)
        );
        assert!(board.entries.values().all(|e| e.output >= 100.0));
        // A racer already on the board still improves.
        assert!(board.offer(RacerId(1), entry(6000.0, 3)));
        assert!(LEADERBOARD_DROPPED.total() >= dropped + 2);
    }

    #[test]
    fn pages_and_neighbourhoods() {
        let mut board = Leaderboard::default();
        for r in 1..=10u64 {
            board.offer(RacerId(r), entry(100.0 - r as f64, 1));
        }
        let ranked = board.ranked(&Disqualifications::default());
        let (first, next) = page(&ranked, 0, 4);
        assert_eq!((first.len(), next), (4, Some(4)));
        let (last, next) = page(&ranked, 8, 4);
        assert_eq!(
            (last.iter().map(|e| e.rank).collect::<Vec<_>>(), next),
            (vec![9, 10], None)
        );
        assert!(page(&ranked, 50, 4).0.is_empty());
        let ids = |v: Vec<RankedEntry>| v.iter().map(|e| e.racer_id.0).collect::<Vec<_>>();
        assert_eq!(ids(around(&ranked, RacerId(5), 3).unwrap()), [4, 5, 6]);
        assert_eq!(ids(around(&ranked, RacerId(1), 3).unwrap()), [1, 2, 3]);
        assert_eq!(ids(around(&ranked, RacerId(10), 3).unwrap()), [8, 9, 10]);
        assert_eq!(ids(around(&ranked, RacerId(10), 50).unwrap()).len(), 10);
        assert_eq!(around(&ranked, RacerId(99), 3), None);
    }

    #[test]
    fn the_index_keeps_the_most_recently_finished_races() {
        let mut index = RaceIndex::default();
        assert!(index.merge((0..250).map(|r| (RaceId(r), 1_000 + r as i64)), 0));
        assert_eq!(index.races.len(), RECENT_RACES);
        assert_eq!(index.newest().first(), Some(&RaceId(249)));
        assert_eq!(index.newest().last(), Some(&RaceId(50)));
        assert!(!index.merge([(RaceId(249), 1_249)], 0), "idempotent");
        assert!(!index.merge([(RaceId(249), 5)], 0), "keeps the later time");

        // 200 races with ids near 2^53 finished long ago: a race finishing
        // now still heads the list, and they do not push it out.
        let huge = (1u64 << 53) - 1;
        index.merge((0..200).map(|i| (RaceId(huge - i), 2_000)), 0);
        assert_eq!(index.newest().first(), Some(&RaceId(huge)));
        assert!(index.merge([(RaceId(7), 3_000)], 0));
        assert_eq!(index.newest().first(), Some(&RaceId(7)));
        assert!(index.races.contains_key(&RaceId(7)));
        assert_eq!(index.races.len(), RECENT_RACES);

        // Retention: what finished before the cutoff goes.
        assert!(index.merge([], 2_500));
        assert_eq!(index.newest(), [RaceId(7)]);
    }

    #[test]
    fn index_merges_converge_in_any_order() {
        let a: Vec<(RaceId, i64)> = (0..150).map(|r| (RaceId(r), r as i64 % 40)).collect();
        let b: Vec<(RaceId, i64)> = (100..300).map(|r| (RaceId(r), 300 - r as i64)).collect();
        let mut ab = RaceIndex::default();
        ab.merge(a.clone(), 0);
        ab.merge(b.clone(), 0);
        let mut ba = RaceIndex::default();
        ba.merge(b, 0);
        ba.merge(a, 0);
        assert_eq!(ab, ba);
    }

    #[test]
    fn the_index_reads_its_earlier_form_and_writes_finish_times() {
        let legacy: RaceIndex = serde_json::from_str(r#"{"races":[5,9]}"#).unwrap();
        assert_eq!(
            legacy.races,
            BTreeMap::from([(RaceId(5), 0), (RaceId(9), 0)])
        );
        assert_eq!(legacy.newest(), [RaceId(9), RaceId(5)]);
        let mut index = legacy;
        index.merge([(RaceId(1), 10)], 0);
        let json = serde_json::to_value(&index).unwrap();
        assert_eq!(
            json["races"][0],
            serde_json::json!({"raceId": 1, "finishedMs": 10})
        );
        let back: RaceIndex = serde_json::from_value(json).unwrap();
        assert_eq!(back, index);
        assert_eq!(back.newest()[0], RaceId(1));
    }
}

#[cfg(test)]
mod disqualified {
    use super::*;
    use alleycat_core::disqualification::NewDisqualification;
    use chrono::Utc;
    use proptest::prelude::*;

    fn entry(output: f64, race: u64) -> LeaderboardEntry {
        LeaderboardEntry {
            name: "x".into(),
            output,
            race_id: RaceId(race),
            finished_ms: None,
        }
    }

    fn list(requests: &[(u64, Option<u64>)]) -> Disqualifications {
        requests
            .iter()
            .fold(Disqualifications::default(), |list, (racer, race)| {
                let request = NewDisqualification {
                    racer_id: RacerId(*racer),
                    race_id: race.map(RaceId),
                    reason: "x".into(),
                };
                list.with(request, Utc::now()).unwrap().0
            })
    }

    #[test]
    fn a_disqualified_best_race_gives_way_to_the_next_and_a_racer_leaves() {
        let mut board = Leaderboard::default();
        for (output, race) in [(100.0, 1), (150.0, 2), (120.0, 3)] {
            board.offer(RacerId(7), entry(output, race));
        }
        board.offer(RacerId(8), entry(130.0, 2));
        let ranked = |dq: &Disqualifications| -> Vec<(u64, f64, u64)> {
            board
                .ranked(dq)
                .iter()
                .map(|e| (e.racer_id.0, e.output, e.race_id.0))
                .collect()
        };
        assert_eq!(ranked(&list(&[])), [(7, 150.0, 2), (8, 130.0, 2)]);
        assert_eq!(
            ranked(&list(&[(7, Some(2))])),
            [(8, 130.0, 2), (7, 120.0, 3)]
        );
        assert_eq!(
            ranked(&list(&[(7, Some(2)), (7, Some(3))])),
            [(8, 130.0, 2), (7, 100.0, 1)]
        );
        assert_eq!(ranked(&list(&[(7, None)])), [(8, 130.0, 2)]);
        // The store keeps all of it: nothing to undo on a reinstatement.
        assert_eq!(ranked(&list(&[])), [(7, 150.0, 2), (8, 130.0, 2)]);
    }

    #[test]
    fn race_results_leave_out_the_disqualified_and_rank_again() {
        let mut race = RaceResults {
            race_id: RaceId(4),
            ..Default::default()
        };
        for (racer, output) in [(1, 100.0), (2, 200.0), (3, 150.0)] {
            race.offer(
                ClassId(1),
                crate::race::RaceResult {
                    racer_id: RacerId(racer),
                    name: String::new(),
                    output,
                    average: output,
                    best: output,
                    seconds: 300,
                },
            );
        }
        let ranked: Vec<(u32, u64)> = race
            .ranked(ClassId(1), &list(&[(2, Some(4)), (1, Some(5))]))
            .iter()
            .map(|r| (r.rank, r.result.racer_id.0))
            .collect();
        assert_eq!(ranked, [(1, 3), (2, 1)]);
    }

    proptest! {
        /// Whatever the order results arrive in, or how they are split
        /// between two writers, every process ends with the same board.
        #[test]
        fn merges_converge_in_any_order(
            offers in proptest::collection::vec((0u64..3, 0u64..8, 0u32..20), 0..40),
            split in 0usize..40,
        ) {
            let offers: Vec<(RacerId, LeaderboardEntry)> = offers
                .into_iter()
                .map(|(racer, race, output)| (RacerId(racer), entry(f64::from(output), race)))
                .collect();
            let mut whole = Leaderboard::default();
            for (racer, e) in &offers {
                whole.offer(*racer, e.clone());
            }
            let mut reversed = Leaderboard::default();
            for (racer, e) in offers.iter().rev() {
                reversed.offer(*racer, e.clone());
            }
            let (left, right) = offers.split_at(split.min(offers.len()));
            let (mut a, mut b) = (Leaderboard::default(), Leaderboard::default());
            for (racer, e) in left {
                a.offer(*racer, e.clone());
            }
            for (racer, e) in right {
                b.offer(*racer, e.clone());
            }
            a.merge(&b);
            prop_assert_eq!(&whole, &reversed);
            prop_assert_eq!(&whole, &a);
        }
    }
}
