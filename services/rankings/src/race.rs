//! A live race: every racer's output at every second, and the "Here now"
//! standings at a second.

use crate::all_time::AllTime;
use alleycat_core::dropped::Dropped;
use alleycat_core::{ClassId, Event, RaceId, RacerId, Second, Telemetry};
use foldhash::fast::RandomState;
use serde::Serialize;
use std::cmp::Ordering;
use std::collections::HashMap;
use std::sync::Arc;

/// One reading: a racer's output at a second, and when it arrived.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Reading {
    output: f64,
    /// Arrival order across the whole stream: on equal outputs, whoever
    /// reached it first ranks higher.
    order: u64,
}

/// A racer in a race.
#[derive(Debug, Clone)]
struct Racer {
    name: Arc<str>,
    /// Its readings by ascending second. Bikes send their seconds in
    /// order, so a new reading is pushed at the end and the one a push
    /// looks up, the race's latest second, is the last.
    readings: Vec<(Second, Reading)>,
    best: f64,
    sum: f64,
    /// The sum of its bests when the race started over the seconds it
    /// reported (a second without one counts 0): the ghost's `pbTotal`,
    /// kept as readings come so that no push walks a racer's readings.
    pb_total: f64,
    final_output: Option<f64>,
}

impl Racer {
    /// Its reading at `second`, if it reported it.
    fn at(&self, second: Second) -> Option<&Reading> {
        match self.readings.last() {
            Some((last, reading)) if *last == second => Some(reading),
            Some((last, _)) if *last > second => self
                .readings
                .binary_search_by_key(&second, |&(s, _)| s)
                .ok()
                .map(|i| &self.readings[i].1),
            _ => None,
        }
    }

    /// Records `reading` at `second`; `false` if it had one there.
    fn record(&mut self, second: Second, reading: Reading) -> bool {
        match self.readings.last() {
            Some((last, _)) if *last >= second => {
                match self.readings.binary_search_by_key(&second, |&(s, _)| s) {
                    Ok(_) => return false,
                    Err(at) => self.readings.insert(at, (second, reading)),
                }
            }
            _ => self.readings.push((second, reading)),
        }
        true
    }
}

/// A racer's result, set by its `final` message.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RaceResult {
    /// The racer.
    pub racer_id: RacerId,
    /// Its name.
    pub name: String,
    /// Output of the final message (the original's race result).
    pub output: f64,
    /// Average output over the seconds recorded.
    pub average: f64,
    /// Best output of the race.
    pub best: f64,
    /// Seconds recorded.
    pub seconds: u32,
}

/// One line of the "Here now" standings.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Standing {
    /// 1 for the leader.
    pub rank: u32,
    /// The racer.
    pub racer_id: RacerId,
    /// Its name.
    pub name: Arc<str>,
    /// Its output at the standings' second.
    pub output: f64,
    /// Its best output so far in this race.
    pub best: f64,
}

/// A racer against its own all-time bests ("race your best"): the figures
/// at its latest second, bests as they stood when the race started.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ghost {
    /// The racer.
    pub racer_id: RacerId,
    /// Its latest second in this race.
    pub second: Second,
    /// Its output at that second.
    pub output: f64,
    /// Its all-time best at that second, if it had one.
    pub pb: Option<f64>,
    /// The class's best at that second, if anyone had one.
    pub class_best: Option<f64>,
    /// The sum of its outputs this race up to that second.
    pub total: f64,
    /// The sum of its bests over the same seconds (a second without a best
    /// counts 0).
    pub pb_total: f64,
    /// Whether `total >= pbTotal`: ahead of its past self.
    pub ahead: bool,
}

/// Most racers one live race holds (a whole 100,000-racer fleet in one
/// class); records of further racers are refused, counted and logged.
pub const MAX_RACERS_PER_RACE: usize = 100_000;

static RACERS_REFUSED: Dropped = Dropped::new("racers of a live race past its bound");

/// A live race of one class.
#[derive(Debug, Clone)]
pub struct Race {
    class_id: ClassId,
    race_id: RaceId,
    /// Seeded per process: racer ids are the clients'.
    racers: HashMap<RacerId, Racer, RandomState>,
    /// The class's bests when the race started: what its racers race
    /// against (`ghost`), whatever is published meanwhile.
    start_bests: Arc<AllTime>,
    latest: Second,
}

impl Race {
    /// An empty race, its racers racing against `start_bests`: the class's
    /// bests as the race starts.
    #[must_use]
    pub fn new(class_id: ClassId, race_id: RaceId, start_bests: Arc<AllTime>) -> Race {
        Race {
            class_id,
            race_id,
            racers: HashMap::default(),
            start_bests,
            latest: Second(1),
        }
    }

    /// The race's class.
    #[must_use]
    pub fn class_id(&self) -> ClassId {
        self.class_id
    }

    /// The race.
    #[must_use]
    pub fn race_id(&self) -> RaceId {
        self.race_id
    }

    /// The latest second any racer reported.
    #[must_use]
    pub fn latest(&self) -> Second {
        self.latest
    }

    /// Records a message (arrival `order`). A second already recorded for
    /// the racer is kept as first seen, so a re-read stream changes nothing.
    /// Returns whether anything changed, and the racer's result when this
    /// was its `final` message.
    pub fn apply(&mut self, t: &Telemetry, order: u64) -> (bool, Option<RaceResult>) {
        if self.racers.len() >= MAX_RACERS_PER_RACE && !self.racers.contains_key(&t.racer_id) {
            // Made-up racer ids cannot grow a race without bound.
            RACERS_REFUSED.add(MAX_RACERS_PER_RACE);
            return (false, None);
        }
        let output = t.output();
        let racer = self.racers.entry(t.racer_id).or_insert_with(|| Racer {
            name: Arc::from(t.name.as_str()),
            readings: Vec::new(),
            best: f64::NEG_INFINITY,
            sum: 0.0,
            pb_total: 0.0,
            final_output: None,
        });
        if !racer.record(t.second, Reading { output, order }) {
            return (false, None);
        }
        racer.best = racer.best.max(output);
        racer.sum += output;
        racer.pb_total += self
            .start_bests
            .best_of(t.second, t.racer_id)
            .unwrap_or(0.0);
        self.latest = self.latest.max(t.second);
        let result = (t.event == Event::Final).then(|| {
            racer.final_output = Some(output);
            RaceResult {
                racer_id: t.racer_id,
                name: racer.name.to_string(),
                output,
                average: round4(racer.sum / racer.readings.len() as f64),
                best: racer.best,
                seconds: u32::try_from(racer.readings.len()).unwrap_or(u32::MAX),
            }
        });
        (true, result)
    }

    /// `racer` against its own bests (the class's bests when the race
    /// started) at its latest second: `None` if it has not reported any
    /// second.
    #[must_use]
    pub fn ghost(&self, racer: RacerId) -> Option<Ghost> {
        let riding = self.racers.get(&racer)?;
        let &(second, reading) = riding.readings.last()?;
        let total = round4(riding.sum);
        let pb_total = round4(riding.pb_total);
        Some(Ghost {
            racer_id: racer,
            second,
            output: reading.output,
            pb: self.start_bests.best_of(second, racer),
            class_best: self.start_bests.class_best(second),
            total,
            pb_total,
            ahead: total >= pb_total,
        })
    }

    /// The standings at `second`: every racer who reported it, by output
    /// (ties: whoever reached it first, then the lower racer id).
    #[must_use]
    pub fn standings(&self, second: Second) -> Vec<Standing> {
        let mut at: Vec<(RacerId, &Racer, Reading)> = self
            .racers
            .iter()
            .filter_map(|(id, r)| r.at(second).map(|reading| (*id, r, *reading)))
            .collect();
        at.sort_by(|a, b| by_standing((a.0, a.2), (b.0, b.2)));
        at.into_iter()
            .enumerate()
            .map(|(i, (racer_id, racer, reading))| Standing {
                rank: u32::try_from(i + 1).unwrap_or(u32::MAX),
                racer_id,
                name: Arc::clone(&racer.name),
                output: reading.output,
                best: racer.best,
            })
            .collect()
    }
}

fn by_standing(a: (RacerId, Reading), b: (RacerId, Reading)) -> Ordering {
    b.1.output
        .total_cmp(&a.1.output)
        .then(a.1.order.cmp(&b.1.order))
        .then(a.0.cmp(&b.0))
}

fn round4(x: f64) -> f64 {
    (x * 10_000.0).round() / 10_000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(racer: u64, second: u16, cadence: f64, last: bool) -> Telemetry {
        Telemetry {
            uuid: None,
            event: if last { Event::Final } else { Event::Update },
            device_timestamp: 0,
            second: Second(second),
            race_id: RaceId(9),
            name: format!("R{racer}"),
            racer_id: RacerId(racer),
            class_id: ClassId(1),
            cadence,
            resistance: 65.0,
        }
    }

    fn order(standings: &[Standing]) -> Vec<u64> {
        standings.iter().map(|s| s.racer_id.0).collect()
    }

    #[test]
    fn a_race_holds_at_most_its_bound_of_racers() {
        let mut race = Race::new(ClassId(1), RaceId(1), Arc::default());
        let record = |racer: u64| msg(racer, 1, 60.0, false);
        for racer in 0..MAX_RACERS_PER_RACE as u64 {
            race.apply(&record(racer), racer);
        }
        let refused = RACERS_REFUSED.total();
        assert_eq!(race.apply(&record(u64::MAX), 0), (false, None));
        assert_eq!(race.racers.len(), MAX_RACERS_PER_RACE);
        assert_eq!(RACERS_REFUSED.total(), refused + 1);
        // Racers already in it go on.
        assert!(race.apply(&msg(5, 2, 60.0, false), 1).0);
    }

    #[test]
    fn ranks_by_output_at_the_second() {
        let mut race = Race::new(ClassId(1), RaceId(9), Arc::default());
        race.apply(&msg(1, 1, 50.0, false), 1);
        race.apply(&msg(2, 1, 70.0, false), 2);
        race.apply(&msg(3, 1, 60.0, false), 3);
        race.apply(&msg(1, 2, 90.0, false), 4);
        assert_eq!(order(&race.standings(Second(1))), [2, 3, 1]);
        assert_eq!(race.standings(Second(1))[0].rank, 1);
        assert_eq!(
            order(&race.standings(Second(2))),
            [1],
            "only who reported that second"
        );
        assert_eq!(race.latest(), Second(2));
        // best is the racer's best so far in the race.
        assert_eq!(
            race.standings(Second(1))[2].best,
            msg(1, 2, 90.0, false).output()
        );
    }

    #[test]
    fn ties_go_to_who_reached_the_output_first_then_the_lower_id() {
        let mut race = Race::new(ClassId(1), RaceId(9), Arc::default());
        race.apply(&msg(5, 1, 60.0, false), 10);
        race.apply(&msg(3, 1, 60.0, false), 11);
        race.apply(&msg(4, 1, 60.0, false), 10);
        assert_eq!(order(&race.standings(Second(1))), [4, 5, 3]);
        let ranks: Vec<u32> = race.standings(Second(1)).iter().map(|s| s.rank).collect();
        assert_eq!(ranks, [1, 2, 3]);
    }

    #[test]
    fn a_reread_message_changes_nothing() {
        let mut race = Race::new(ClassId(1), RaceId(9), Arc::default());
        assert!(race.apply(&msg(1, 1, 50.0, false), 1).0);
        assert!(!race.apply(&msg(1, 1, 99.0, false), 2).0);
        assert_eq!(
            race.standings(Second(1))[0].output,
            msg(1, 1, 50.0, false).output()
        );
    }

    #[test]
    fn the_final_message_yields_the_result() {
        let mut race = Race::new(ClassId(1), RaceId(9), Arc::default());
        race.apply(&msg(1, 1, 40.0, false), 1);
        race.apply(&msg(1, 2, 80.0, false), 2);
        let (_, result) = race.apply(&msg(1, 3, 60.0, true), 3);
        let outputs = [40.0, 80.0, 60.0].map(|c| msg(1, 1, c, false).output());
        assert_eq!(
            result.unwrap(),
            RaceResult {
                racer_id: RacerId(1),
                name: "R1".into(),
                output: outputs[2],
                average: round4(outputs.iter().sum::<f64>() / 3.0),
                best: outputs[1],
                seconds: 3,
            }
        );
    }

    #[test]
    fn a_racer_races_its_own_bests_at_its_latest_second() {
        use alleycat_core::history::ClassHistory;
        let out = |second: u16, cadence: f64| msg(5, second, cadence, false).output();
        let mut history = ClassHistory::default();
        history.merge(Second(1), RacerId(5), out(1, 65.0));
        history.merge(Second(3), RacerId(5), out(3, 60.0));
        history.merge(Second(3), RacerId(6), out(3, 90.0));
        let bests = Arc::new(AllTime::from_history(&history));
        let mut race = Race::new(ClassId(1), RaceId(9), Arc::clone(&bests));
        let mut without = Race::new(ClassId(1), RaceId(9), Arc::default());
        // Second 2 comes last: a late reading counts as any other.
        for (second, cadence) in [(1, 60.0), (3, 70.0), (2, 80.0)] {
            race.apply(&msg(5, second, cadence, false), u64::from(second));
            without.apply(&msg(5, second, cadence, false), u64::from(second));
        }
        let ghost = race.ghost(RacerId(5)).unwrap();
        let total = round4(out(1, 60.0) + out(2, 80.0) + out(3, 70.0));
        let pb_total = round4(out(1, 65.0) + out(3, 60.0));
        assert_eq!(
            ghost,
            Ghost {
                racer_id: RacerId(5),
                second: Second(3),
                output: out(3, 70.0),
                pb: Some(out(3, 60.0)),
                class_best: Some(out(3, 90.0)),
                total,
                pb_total,
                ahead: total >= pb_total,
            }
        );
        assert!(ghost.ahead, "second 2 had no best: it counts 0");
        assert_eq!(race.ghost(RacerId(6)), None, "not in this race");
        let none = without.ghost(RacerId(5)).unwrap();
        assert_eq!((none.pb, none.class_best, none.pb_total), (None, None, 0.0));
    }

    proptest::proptest! {
        /// Readings in any order, repeated or not, give the standings and
        /// ghosts of a plain map of every racer's first reading per second.
        #[test]
        fn any_order_of_readings_is_one_map_of_them(
            readings in proptest::collection::vec((0..5u64, 1..12u16, 0..4u8), 0..120),
            bests in proptest::collection::vec((0..5u64, 1..12u16, 0..4u8), 0..30),
        ) {
            use alleycat_core::history::ClassHistory;
            use std::collections::BTreeMap;
            let cadence = |c: u8| 40.0 + 10.0 * f64::from(c);
            let mut history = ClassHistory::default();
            for &(racer, second, c) in &bests {
                history.merge(Second(second), RacerId(racer), msg(racer, second, cadence(c), false).output());
            }
            let start = Arc::new(AllTime::from_history(&history));
            let mut race = Race::new(ClassId(1), RaceId(9), Arc::clone(&start));
            let mut model: BTreeMap<(u64, u16), (f64, u64)> = BTreeMap::new();
            for (order, &(racer, second, c)) in readings.iter().enumerate() {
                let t = msg(racer, second, cadence(c), false);
                let order = order as u64;
                let (changed, _) = race.apply(&t, order);
                let new = !model.contains_key(&(racer, second));
                proptest::prop_assert_eq!(changed, new);
                model.entry((racer, second)).or_insert((t.output(), order));
            }
            for second in 1..12u16 {
                let mut expected: Vec<(u64, f64, u64)> = model
                    .iter()
                    .filter(|((_, s), _)| *s == second)
                    .map(|(&(racer, _), &(output, order))| (racer, output, order))
                    .collect();
                expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.2.cmp(&b.2)).then(a.0.cmp(&b.0)));
                let got: Vec<(u64, f64)> = race
                    .standings(Second(second))
                    .iter()
                    .map(|s| (s.racer_id.0, s.output))
                    .collect();
                let expected: Vec<(u64, f64)> = expected.iter().map(|&(r, o, _)| (r, o)).collect();
                proptest::prop_assert_eq!(got, expected);
            }
            for racer in 0..5u64 {
                let mine: Vec<(u16, f64)> = model
                    .iter()
                    .filter(|((r, _), _)| *r == racer)
                    .map(|(&(_, s), &(output, _))| (s, output))
                    .collect();
                let ghost = race.ghost(RacerId(racer));
                let Some(&(last, output)) = mine.last() else {
                    proptest::prop_assert!(ghost.is_none());
                    continue;
                };
                let ghost = ghost.unwrap();
                let pb_total: f64 = mine
                    .iter()
                    .filter_map(|&(s, _)| start.best_of(Second(s), RacerId(racer)))
                    .sum();
                let total: f64 = mine.iter().map(|&(_, o)| o).sum();
                proptest::prop_assert_eq!(ghost.second, Second(last));
                proptest::prop_assert_eq!(ghost.output, output);
                proptest::prop_assert!((ghost.pb_total - round4(pb_total)).abs() < 1e-3);
                proptest::prop_assert!((ghost.total - round4(total)).abs() < 1e-3);
            }
        }
    }
}
