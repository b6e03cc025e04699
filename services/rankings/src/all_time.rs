//! "All time": a live output ranked among a class's all-time personal bests
//! at the same second.
//!
//! Built once per published class file (sorting each second's bests), then
//! each lookup is a binary search: O(log n) per racer per push, never a sort
//! of the whole class.

use alleycat_core::history::ClassHistory;
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
#[derive(Debug, Default, Clone)]
pub struct AllTime {
    seconds: HashMap<Second, SecondBests>,
}

#[derive(Debug, Default, Clone)]
struct SecondBests {
    /// Every racer's best at this second, highest first.
    descending: Vec<f64>,
    by_racer: HashMap<RacerId, f64>,
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
        let mut seconds: HashMap<Second, SecondBests> = HashMap::new();
        for (second, racers) in history.iter() {
            let mut descending: Vec<f64> = racers.values().copied().collect();
            descending.sort_unstable_by(|a, b| b.total_cmp(a));
            let by_racer = racers.iter().map(|(r, o)| (*r, *o)).collect();
            seconds.insert(
                second,
                SecondBests {
                    descending,
                    by_racer,
                },
            );
        }
        AllTime { seconds }
    }

    /// `racer`'s best at every second it has one, in order.
    #[must_use]
    pub fn bests_of(&self, racer: RacerId) -> BTreeMap<Second, f64> {
        self.seconds
            .iter()
            .filter_map(|(second, bests)| Some((*second, *bests.by_racer.get(&racer)?)))
            .collect()
    }

    /// `racer`'s best at `second`, if it has one.
    #[must_use]
    pub fn best_of(&self, second: Second, racer: RacerId) -> Option<f64> {
        self.seconds.get(&second)?.by_racer.get(&racer).copied()
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
        let personal_best = bests.by_racer.get(&racer).copied();
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

    proptest! {
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
