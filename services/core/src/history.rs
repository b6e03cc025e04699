//! All-time per-second personal bests of a class, and their merge.
//!
//! `history[second][racerId] = max(existing, output)`. The merge is a
//! join-semilattice (per-key max), so it is idempotent, commutative and
//! associative: merging a delivery object twice, or two objects in either
//! order, gives the same history. That is what makes at-least-once delivery
//! and concurrent merges safe.

use crate::codec::{self, GunzipError};
use crate::delivery::HistoryPoint;
use crate::telemetry::{ClassId, RacerId, Second};
use std::collections::{BTreeMap, BTreeSet};

mod class_file_json;
mod original;
pub use class_file_json::{read_class_file, read_seconds};
pub use original::{DropReason, DropReport};

/// Largest decompressed class file accepted when loading (a 10,000-racer
/// class is about 50 MB of JSON).
pub const MAX_CLASS_FILE_BYTES: u64 = 1 << 30;

/// The personal bests of one class: for each second, each racer's best output.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ClassHistory {
    seconds: BTreeMap<Second, BTreeMap<RacerId, f64>>,
}

/// Why a stored class file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Not gzip.
    #[error(transparent)]
    Gzip(#[from] GunzipError),
    /// Not the class-history JSON format.
    #[error("not a class history: {0}")]
    Format(String),
}

impl ClassHistory {
    /// Raises `racer`'s best at `second` to `output` if it is higher.
    /// Returns whether anything changed.
    pub fn merge(&mut self, second: Second, racer: RacerId, output: f64) -> bool {
        let best = self
            .seconds
            .entry(second)
            .or_default()
            .entry(racer)
            .or_insert(f64::NEG_INFINITY);
        if output > *best {
            *best = output;
            true
        } else {
            false
        }
    }

    /// Merges every best of `other` into this history; returns whether
    /// anything changed.
    pub fn merge_history(&mut self, other: &ClassHistory) -> bool {
        let mut changed = false;
        for (&second, racers) in &other.seconds {
            for (&racer, &output) in racers {
                changed |= self.merge(second, racer, output);
            }
        }
        changed
    }

    /// Replaces every best of `racer` with `bests` (none: the racer leaves
    /// the history). Returns the seconds whose bests changed. This is how a
    /// disqualification takes bests back: the only way a best goes down.
    pub fn replace_racer(&mut self, racer: RacerId, bests: &BTreeMap<Second, f64>) -> Vec<Second> {
        let mut changed = Vec::new();
        self.seconds.retain(|&second, racers| {
            if !bests.contains_key(&second) && racers.remove(&racer).is_some() {
                changed.push(second);
            }
            !racers.is_empty()
        });
        for (&second, &output) in bests {
            let racers = self.seconds.entry(second).or_default();
            if racers.insert(racer, output) != Some(output) {
                changed.push(second);
            }
        }
        changed.sort_unstable();
        changed
    }

    /// Removes every best of `racers`, in one pass; whether any was there.
    pub fn remove_racers(&mut self, racers: &BTreeSet<RacerId>) -> bool {
        let mut removed = false;
        self.seconds.retain(|_, at| {
            let before = at.len();
            at.retain(|racer, _| !racers.contains(racer));
            removed |= at.len() != before;
            !at.is_empty()
        });
        removed
    }

    /// Every best of `racer`, by second.
    #[must_use]
    pub fn racer_bests(&self, racer: RacerId) -> BTreeMap<Second, f64> {
        self.seconds
            .iter()
            .filter_map(|(second, at)| Some((*second, *at.get(&racer)?)))
            .collect()
    }

    /// `racer`'s best at `second`, if it has one.
    #[must_use]
    pub fn best(&self, second: Second, racer: RacerId) -> Option<f64> {
        self.seconds.get(&second)?.get(&racer).copied()
    }

    /// Every second with its bests, by racer, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = (Second, &BTreeMap<RacerId, f64>)> {
        self.seconds.iter().map(|(s, r)| (*s, r))
    }

    /// The racer of every best: each racer once a second it has a best in
    /// (collect them into a set for each racer once).
    pub fn racers(&self) -> impl Iterator<Item = RacerId> + '_ {
        self.seconds
            .values()
            .flat_map(|racers| racers.keys().copied())
    }

    /// The seconds within `range` with their bests, in ascending order.
    pub fn range(
        &self,
        range: impl std::ops::RangeBounds<Second>,
    ) -> impl Iterator<Item = (Second, &BTreeMap<RacerId, f64>)> {
        self.seconds.range(range).map(|(s, r)| (*s, r))
    }

    /// The first second with a best.
    #[must_use]
    pub fn first_second(&self) -> Option<Second> {
        self.seconds.keys().next().copied()
    }

    /// The bests at `second`, by racer.
    #[must_use]
    pub fn at(&self, second: Second) -> Option<&BTreeMap<RacerId, f64>> {
        self.seconds.get(&second)
    }

    /// Whether there is no best at all.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seconds.is_empty()
    }

    /// Number of (second, racer) bests.
    #[must_use]
    pub fn len(&self) -> usize {
        self.seconds.values().map(BTreeMap::len).sum()
    }

    /// The class-file JSON: `{"1": {"101": 152.34, ...}, ...}`, seconds and
    /// racers in ascending numeric order, so equal histories give equal bytes,
    /// numbers as the original's `JSON.stringify` wrote them (`81`, not
    /// `81.0`), so the same bests give the original's bytes.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len() * 20 + 2);
        write_js_json(&self.seconds, &mut out);
        out
    }

    /// Parses class-file JSON, checking every second, racer and output
    /// ([`read_seconds`]).
    pub fn from_json(json: &[u8]) -> Result<Self, HistoryError> {
        Ok(Self::from_seconds(read_seconds(json)?))
    }

    /// From each second's bests in racer order, as the readers give them.
    fn from_seconds(seconds: BTreeMap<Second, Vec<(RacerId, f64)>>) -> Self {
        let seconds = seconds
            .into_iter()
            // In racer order: each map is built from its sorted pairs at once.
            .map(|(second, bests)| (second, bests.into_iter().collect()))
            .collect();
        ClassHistory { seconds }
    }

    /// The gzipped class file, as published.
    #[must_use]
    pub fn to_gzip(&self, level: u32) -> Vec<u8> {
        codec::gzip(&self.to_json(), level)
    }

    /// Loads a published class file.
    pub fn from_gzip(bytes: &[u8]) -> Result<Self, HistoryError> {
        Ok(Self::from_seconds(read_class_file(bytes)?))
    }
}

/// Appends one second's bests as they appear in the class-file JSON
/// (`{"101":152.34,"102":81}`): what [`ClassHistory::to_json`] writes for
/// each second, for writers that encode the file a second at a time.
pub fn write_bests_json(bests: &BTreeMap<RacerId, f64>, out: &mut Vec<u8>) {
    write_js_json(bests, out);
}

/// `value` as JSON, floats as JavaScript writes them.
fn write_js_json(value: &impl serde::Serialize, out: &mut Vec<u8>) {
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut *out, crate::js_number::JsonFormatter);
    value
        .serialize(&mut serializer)
        .expect("a map of numbers always serializes");
}

/// The seconds whose bests changed, per class.
pub type Touched = BTreeMap<ClassId, BTreeSet<Second>>;

/// The histories of every class.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Histories {
    classes: BTreeMap<ClassId, ClassHistory>,
}

impl Histories {
    /// Sets a class's history, e.g. as loaded at start.
    pub fn insert(&mut self, class: ClassId, history: ClassHistory) {
        self.classes.insert(class, history);
    }

    /// A class's history, if it has one.
    #[must_use]
    pub fn get(&self, class: ClassId) -> Option<&ClassHistory> {
        self.classes.get(&class)
    }

    /// A class's history, created empty if it has none.
    pub fn entry(&mut self, class: ClassId) -> &mut ClassHistory {
        self.classes.entry(class).or_default()
    }

    /// Merges every point; returns the classes whose history changed (and so
    /// need republishing). Points that change nothing are free.
    pub fn merge<'a>(&mut self, points: impl IntoIterator<Item = &'a HistoryPoint>) -> Touched {
        let mut changed = Touched::new();
        for p in points {
            if self
                .classes
                .entry(p.class_id)
                .or_default()
                .merge(p.second, p.racer_id, p.output)
            {
                changed.entry(p.class_id).or_default().insert(p.second);
            }
        }
        changed
    }
}

/// The key a class's history is published under: `class-<N>.gz`.
#[must_use]
pub fn class_file_key(class: ClassId) -> String {
    format!("class-{class}.gz")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn point(class: u8, second: u16, racer: u64, output: f64) -> HistoryPoint {
        HistoryPoint {
            class_id: ClassId(class),
            second: Second(second),
            racer_id: RacerId(racer),
            race_id: crate::RaceId(1),
            output,
        }
    }

    #[test]
    fn keeps_the_maximum_per_second_and_racer() {
        let mut h = Histories::default();
        let changed = h.merge(&[
            point(1, 1, 101, 150.0),
            point(1, 1, 101, 152.34),
            point(1, 1, 101, 140.0),
        ]);
        assert_eq!(
            changed,
            Touched::from([(ClassId(1), BTreeSet::from([Second(1)]))])
        );
        assert_eq!(
            h.get(ClassId(1)).unwrap().best(Second(1), RacerId(101)),
            Some(152.34)
        );
        assert!(
            h.merge(&[point(1, 1, 101, 152.34)]).is_empty(),
            "equal output is no change"
        );
        assert_eq!(
            h.merge(&[point(2, 1, 101, 1.0), point(2, 7, 9, 1.0)]),
            Touched::from([(ClassId(2), BTreeSet::from([Second(1), Second(7)]))])
        );
    }

    #[test]
    fn serializes_in_the_reference_format() {
        let mut h = ClassHistory::default();
        h.merge(Second(2), RacerId(101), 153.1);
        h.merge(Second(1), RacerId(102), 148.9);
        h.merge(Second(1), RacerId(101), 152.34);
        h.merge(Second(10), RacerId(9), 1.0);
        assert_eq!(
            String::from_utf8(h.to_json()).unwrap(),
            r#"{"1":{"101":152.34,"102":148.9},"2":{"101":153.1},"10":{"9":1}}"#
        );
        assert_eq!(h.len(), 4);
    }

    #[test]
    fn gzip_round_trip() {
        let mut h = ClassHistory::default();
        for s in 1..=300 {
            for r in 0..20 {
                h.merge(Second(s), RacerId(r), f64::from(s) + r as f64 / 7.0);
            }
        }
        let back = ClassHistory::from_gzip(&h.to_gzip(6)).unwrap();
        assert_eq!(back, h);
    }

    #[test]
    fn refuses_files_that_are_not_class_histories() {
        assert!(
            ClassHistory::from_gzip(br#"{"1":{"1":1}}"#).is_err(),
            "plain JSON is not gzip"
        );
        for bad in [
            r#"{"0":{"1":1}}"#,
            r#"{"1":{"1":-1}}"#,
            r#"{"1":{"x":1}}"#,
            r#"[1]"#,
        ] {
            assert!(ClassHistory::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
        assert!(ClassHistory::from_json(b"{}").unwrap().is_empty());
        for bad in [
            r#"{"3601":{"1":1}}"#,
            r#"{"1":{"1":1}} {"2":{"1":1}}"#,
            r#"{"1":{"1":"1"}}"#,
            r#"{"1":{"1":1e999}}"#,
        ] {
            assert!(ClassHistory::from_json(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_class_file_reads_as_a_map_of_maps_would() {
        // Racers out of order; a racer, and a second, listed twice: the
        // later stands; a second with no bests is no second.
        let h = ClassHistory::from_json(
            br#"{"2":{"9":1.5,"3":2,"9":0.5},"1":{"1":7},"1":{"4":8},"5":{},"6":{"1":1},"6":{}}"#,
        )
        .unwrap();
        let read: Vec<(u16, Vec<(u64, f64)>)> = h
            .iter()
            .map(|(s, bests)| (s.0, bests.iter().map(|(r, o)| (r.0, *o)).collect()))
            .collect();
        assert_eq!(read, [(1, vec![(4, 8.0)]), (2, vec![(3, 2.0), (9, 0.5)])]);
    }

    #[test]
    fn a_read_second_holds_no_more_room_than_its_bests() {
        // Kept as read by the rankings' all-time index, a vector grown by
        // doubling would carry up to as much slack as bests; sorted input
        // (as Alleycat writes it) and unsorted input both come out tight.
        for count in [1_u64, 5, 1000, 1025] {
            let mut h = ClassHistory::default();
            for racer in 0..count {
                h.merge(Second(1), RacerId(racer), racer as f64);
            }
            let sorted = h.to_json();
            let unsorted = format!(
                "{{\"1\":{{{}}}}}",
                (0..count)
                    .rev()
                    .map(|r| format!("\"{r}\":{r}"))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            for json in [sorted, unsorted.into_bytes()] {
                let seconds = read_seconds(&json).unwrap();
                let bests = &seconds[&Second(1)];
                assert_eq!(bests.len() as u64, count);
                assert_eq!(bests.capacity(), bests.len(), "{count} racers");
            }
        }
    }

    #[test]
    fn merging_a_whole_history_keeps_the_maxima_of_both() {
        let mut ours = ClassHistory::default();
        ours.merge(Second(1), RacerId(1), 10.0);
        ours.merge(Second(1), RacerId(2), 5.0);
        let mut theirs = ClassHistory::default();
        theirs.merge(Second(1), RacerId(1), 9.0);
        theirs.merge(Second(2), RacerId(3), 7.0);
        assert!(ours.merge_history(&theirs));
        assert_eq!(ours.best(Second(1), RacerId(1)), Some(10.0));
        assert_eq!(ours.best(Second(2), RacerId(3)), Some(7.0));
        assert!(
            !ours.merge_history(&theirs),
            "a second merge changes nothing"
        );
    }

    fn points() -> impl Strategy<Value = Vec<HistoryPoint>> {
        prop::collection::vec(
            (1u8..=6, 1u16..=5, 0u64..8, 0u32..100_000)
                .prop_map(|(c, s, r, o)| point(c, s, r, f64::from(o) / 100.0)),
            0..60,
        )
    }

    proptest! {
        #[test]
        fn merge_is_idempotent(batch in points()) {
            let mut once = Histories::default();
            once.merge(&batch);
            let mut twice = once.clone();
            prop_assert!(twice.merge(&batch).is_empty());
            prop_assert_eq!(twice, once);
        }

        #[test]
        fn merge_is_order_independent(a in points(), b in points(), seed in any::<u64>()) {
            let mut ab = Histories::default();
            ab.merge(&a);
            ab.merge(&b);
            let mut ba = Histories::default();
            ba.merge(&b);
            ba.merge(&a);
            prop_assert_eq!(&ab, &ba);

            // Any interleaving of the records gives the same history too.
            let mut all: Vec<_> = a.iter().chain(&b).copied().collect();
            let n = all.len();
            for i in (1..n).rev() {
                let j = (seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(i as u64) % (i as u64 + 1)) as usize;
                all.swap(i, j);
            }
            let mut shuffled = Histories::default();
            shuffled.merge(&all);
            prop_assert_eq!(&shuffled, &ab);
        }

        #[test]
        fn merge_equals_the_per_key_maximum(batch in points()) {
            let mut h = Histories::default();
            h.merge(&batch);
            for p in &batch {
                let expected = batch
                    .iter()
                    .filter(|q| (q.class_id, q.second, q.racer_id) == (p.class_id, p.second, p.racer_id))
                    .map(|q| q.output)
                    .fold(f64::NEG_INFINITY, f64::max);
                prop_assert_eq!(h.get(p.class_id).unwrap().best(p.second, p.racer_id), Some(expected));
            }
        }
    }
}
