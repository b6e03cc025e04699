//! "All time": a live output ranked among a class's all-time personal bests
//! at the same second.
//!
//! Built once per published class file (sorting each second's bests), then
//! each lookup is a binary search: O(log n) per racer per push, never a sort
//! of the whole class.

use alleycat_core::history::{ClassHistory, HistoryError, read_class_file};
use alleycat_core::{ClassId, RacerId, Second};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

/// Each class's bests as last loaded, shared with the HTTP routes (a
/// racer's bests are answered from them).
#[derive(Debug, Default)]
pub struct ClassFiles(RwLock<HashMap<ClassId, Arc<AllTime>>>);

impl ClassFiles {
    /// The bests of `class`, if its file was loaded.
    #[must_use]
    pub fn get(&self, class: ClassId) -> Option<Arc<AllTime>> {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&class)
            .cloned()
    }

    /// Replaces the bests of `class`.
    pub fn set(&self, class: ClassId, all_time: Arc<AllTime>) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(class, all_time);
    }
}

/// A class's all-time bests, by second, ready for ranking.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct AllTime {
    seconds: HashMap<Second, SecondBests>,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct SecondBests {
    /// Every racer's best at this second, highest first.
    descending: Vec<f64>,
    /// Every racer's best at this second, by racer id: a binary search
    /// finds one (a class file lists them in this order already).
    by_racer: Vec<(RacerId, f64)>,
}

impl SecondBests {
    /// From one second's bests, ordered by racer id without repeats.
    fn new(by_racer: Vec<(RacerId, f64)>) -> SecondBests {
        let mut descending: Vec<f64> = by_racer.iter().map(|&(_, best)| best).collect();
        descending.sort_unstable_by(|a, b| b.total_cmp(a));
        SecondBests {
            descending,
            by_racer,
        }
    }

    fn best_of(&self, racer: RacerId) -> Option<f64> {
        let at = self
            .by_racer
            .binary_search_by_key(&racer, |&(r, _)| r)
            .ok()?;
        Some(self.by_racer[at].1)
    }
}

/// Where a live output stands among the all-time bests.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AllTimeRank {
    /// 1 + the number of *other* racers whose best at this second is higher.
    pub rank: u32,
    /// Racers ranked: everyone with a best at this second, plus this racer
    /// if it has none yet.
    pub of: u32,
    /// This racer's stored best at this second, if any.
    pub personal_best: Option<f64>,
    /// Whether the live output beats that stored best (or there is none).
    pub new_record: bool,
}

impl AllTime {
    /// Indexes a class history.
    #[must_use]
    pub fn from_history(history: &ClassHistory) -> AllTime {
        let seconds = history
            .iter()
            .map(|(second, racers)| {
                let by_racer = racers.iter().map(|(r, o)| (*r, *o)).collect();
                (second, SecondBests::new(by_racer))
            })
            .collect();
        AllTime { seconds }
    }

    /// Indexes a published class file (`class-N.gz`) as it is read, by the
    /// checks of [`ClassHistory::from_gzip`], without building the
    /// [`ClassHistory`] first: its maps of maps cost more than the parse
    /// (in the stretch run, loading the class files every 10 s was 7% of
    /// the server's CPU, most of it building maps).
    pub fn from_gzip(bytes: &[u8]) -> Result<AllTime, HistoryError> {
        let seconds = read_class_file(bytes)?
            .into_iter()
            .map(|(second, bests)| (second, SecondBests::new(bests)))
            .collect();
        Ok(AllTime { seconds })
    }

    /// `racer`'s best at every second it has one, in order.
    #[must_use]
    pub fn bests_of(&self, racer: RacerId) -> BTreeMap<Second, f64> {
        self.seconds
            .iter()
            .filter_map(|(second, bests)| Some((*second, bests.best_of(racer)?)))
            .collect()
    }

    /// `racer`'s best at `second`, if it has one.
    #[must_use]
    pub fn best_of(&self, second: Second, racer: RacerId) -> Option<f64> {
        self.seconds.get(&second)?.best_of(racer)
    }

    /// The class's best at `second`, if anyone has one.
    #[must_use]
    pub fn class_best(&self, second: Second) -> Option<f64> {
        self.seconds.get(&second)?.descending.first().copied()
    }

    /// Ranks `output` of `racer` at `second`.
    #[must_use]
    pub fn rank(&self, second: Second, racer: RacerId, output: f64) -> AllTimeRank {
        let Some(bests) = self.seconds.get(&second) else {
            return AllTimeRank {
                rank: 1,
                of: 1,
                personal_best: None,
                new_record: true,
            };
        };
        let higher = bests.descending.partition_point(|&best| best > output);
        let personal_best = bests.best_of(racer);
        // The racer's own stored best is not a rival.
        let own_above = usize::from(personal_best.is_some_and(|b| b > output));
        let of = bests.descending.len() + usize::from(personal_best.is_none());
        AllTimeRank {
            rank: u32::try_from(higher - own_above + 1).unwrap_or(u32::MAX),
            of: u32::try_from(of).unwrap_or(u32::MAX),
            personal_best,
            new_record: personal_best.is_none_or(|b| output > b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn history(bests: &[(u16, u64, f64)]) -> ClassHistory {
        let mut h = ClassHistory::default();
        for &(s, r, o) in bests {
            h.merge(Second(s), RacerId(r), o);
        }
        h
    }

    #[test]
    fn a_racers_bests_are_its_own_at_every_second_it_has_one() {
        let all_time = AllTime::from_history(&history(&[
            (1, 7, 100.0),
            (1, 8, 120.0),
            (3, 7, 90.5),
            (2, 8, 99.0),
        ]));
        let bests: Vec<(u16, f64)> = all_time
            .bests_of(RacerId(7))
            .into_iter()
            .map(|(s, b)| (s.0, b))
            .collect();
        assert_eq!(bests, [(1, 100.0), (3, 90.5)]);
        assert!(all_time.bests_of(RacerId(9)).is_empty());
    }

    #[test]
    fn ranks_against_the_other_racers_bests() {
        let all = AllTime::from_history(&history(&[
            (3, 1, 158.4416),
            (3, 2, 151.7761),
            (3, 101, 150.0),
        ]));
        // Racer 101 at 165.38: above everyone; beats its own 150.0.
        assert_eq!(
            all.rank(Second(3), RacerId(101), 165.38),
            AllTimeRank {
                rank: 1,
                of: 3,
                personal_best: Some(150.0),
                new_record: true
            }
        );
        // Racer 1 at 155: racer 1's own 158 is not a rival; nobody else is higher.
        assert_eq!(all.rank(Second(3), RacerId(1), 155.0).rank, 1);
        assert!(!all.rank(Second(3), RacerId(1), 155.0).new_record);
        // A newcomer at 152: behind racer 1 only.
        assert_eq!(
            all.rank(Second(3), RacerId(7), 152.0),
            AllTimeRank {
                rank: 2,
                of: 4,
                personal_best: None,
                new_record: true
            }
        );
        // A second nobody has ridden.
        assert_eq!(all.rank(Second(9), RacerId(7), 1.0).rank, 1);
    }

    /// What a class file's JSON indexes as, read directly and through a
    /// [`ClassHistory`]; both, or the error of each.
    fn both_ways(json: &str) -> (Result<AllTime, String>, Result<AllTime, String>) {
        let gz = alleycat_core::codec::gzip(json.as_bytes(), 1);
        (
            AllTime::from_gzip(&gz).map_err(|e| e.to_string()),
            ClassHistory::from_gzip(&gz)
                .map(|h| AllTime::from_history(&h))
                .map_err(|e| e.to_string()),
        )
    }

    #[test]
    fn a_class_file_read_directly_indexes_as_its_history_does() {
        for json in [
            r#"{}"#,
            r#"{"3": {"101": 150.5, "7": 151.25, "101": 149}}"#,
            r#"{"3": {"1": 1}, "2": {"9": 0, "8": 2.5}, "3": {"5": 5}}"#,
            r#"{"4": {}, "5": {"1": 1}, "5": {}}"#,
            r#"{"300": {"18446744073709551615": 1e300, "0": 0}}"#,
        ] {
            let (direct, through) = both_ways(json);
            assert_eq!(direct.unwrap(), through.unwrap(), "{json}");
        }
    }

    #[test]
    fn a_class_file_either_way_refuses_what_is_not_a_class_history() {
        for json in [
            r#"{"0": {"1": 1}}"#,
            r#"{"65536": {"1": 1}}"#,
            r#"{"1": {"1": -1}}"#,
            r#"{"1": {"x": 1}}"#,
            r#"{"01": {"1": 1}}"#,
            r#"{"1": [1]}"#,
            r#"[]"#,
            r#"{"1": {"1": 1}"#,
        ] {
            let (direct, through) = both_ways(json);
            assert!(
                direct.is_err() && through.is_err(),
                "{json}: {direct:?} / {through:?}"
            );
        }
        assert!(AllTime::from_gzip(b"not gzip").is_err());
    }

    proptest! {
        #[test]
        fn a_published_class_file_indexes_as_the_history_it_was_made_from(
            bests in prop::collection::vec((1u16..=300, 0u64..50, 0u32..100_000), 0..200),
        ) {
            let h = history(&bests.iter().map(|&(s, r, o)| (s, r, f64::from(o) / 100.0)).collect::<Vec<_>>());
            prop_assert_eq!(AllTime::from_gzip(&h.to_gzip(1)).unwrap(), AllTime::from_history(&h));
        }

        #[test]
        fn binary_search_rank_equals_brute_force(
            bests in prop::collection::vec((0u64..30, 0u32..1000), 0..60),
            racer in 0u64..35,
            output in 0u32..1000,
        ) {
            let h = history(&bests.iter().map(|&(r, o)| (1, r, f64::from(o) / 10.0)).collect::<Vec<_>>());
            let output = f64::from(output) / 10.0;
            let got = AllTime::from_history(&h).rank(Second(1), RacerId(racer), output);
            let stored = h.at(Second(1)).cloned().unwrap_or_default();
            let rivals_above = stored.iter().filter(|(r, o)| r.0 != racer && **o > output).count();
            let own = stored.get(&RacerId(racer)).copied();
            prop_assert_eq!(got.rank as usize, rivals_above + 1);
            prop_assert_eq!(got.of as usize, stored.len() + usize::from(own.is_none()));
            prop_assert_eq!(got.personal_best, own);
            prop_assert_eq!(got.new_record, own.is_none_or(|b| output > b));
        }
    }
}
