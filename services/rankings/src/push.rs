//! The WebSocket push message: "Here now" and "All time" for one race at one
//! second, cut to what a viewer needs (the top N, plus its own racer and
//! neighbours).
//!
//! Entries are serialized at most once per push (and only those some viewer
//! needs), and the top N's lists are joined once: each viewer's message is
//! those lists copied with its neighbourhood spliced in, so a thousand
//! viewers cost a thousand copies, not a thousand serializations or joins.

use crate::all_time::{AllTime, AllTimeRank};
use crate::race::{Race, Standing};
use alleycat_core::{RacerId, Second};
use foldhash::fast::RandomState;
use serde::Serialize;
use std::cell::OnceCell;
use std::collections::HashMap;
use std::ops::Range;

/// Neighbours shown on each side of a viewer's own racer.
pub const NEIGHBOURS: usize = 2;

/// One racer's line in `allTime`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct AllTimeEntry {
    racer_id: RacerId,
    output: f64,
    #[serde(flatten)]
    rank: AllTimeRank,
}

/// One followed racer's line in `following`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct FollowingEntry<'a> {
    rank: u32,
    following_rank: u32,
    racer_id: RacerId,
    name: &'a str,
    output: f64,
}

/// A race's standings at its latest second, ready to be cut per viewer.
///
/// Entries are serialized when a message first needs them: the top N for
/// everyone, and only the neighbourhoods of followed racers, not the whole
/// field of a large race.
pub struct Snapshot<'a> {
    race: &'a Race,
    header: String,
    second: Second,
    standings: Vec<Standing>,
    /// Racer -> its row in `standings`.
    rows: HashMap<RacerId, usize, RandomState>,
    all_time_index: Option<&'a AllTime>,
    here_now: Vec<OnceCell<String>>,
    all_time: Vec<OnceCell<String>>,
    top: usize,
    /// The top N's entries of `hereNow` and of `allTime`, joined.
    top_here_now: String,
    top_all_time: String,
    shared: String,
}

/// Room left in a viewer's message for its `ghost` and `following`, so
/// that adding them seldom grows it again.
const PERSONAL_ROOM: usize = 512;

impl<'a> Snapshot<'a> {
    /// The standings of `race` at its latest second, ranked against `all_time`.
    #[must_use]
    pub fn new(
        race: &'a Race,
        all_time: Option<&'a AllTime>,
        top: usize,
        ts_ms: i64,
    ) -> Snapshot<'a> {
        let second: Second = race.latest();
        let standings = race.standings(second);
        let rows = standings
            .iter()
            .enumerate()
            .map(|(row, s)| (s.racer_id, row))
            .collect();
        let header = format!(
            r#"{{"type":"race","classId":{},"raceId":{},"second":{},"ts":{ts_ms},"racers":{}"#,
            race.class_id(),
            race.race_id(),
            second,
            standings.len()
        );
        let top = top.min(standings.len());
        let mut snapshot = Snapshot {
            race,
            header,
            second,
            here_now: std::iter::repeat_with(OnceCell::new)
                .take(standings.len())
                .collect(),
            all_time: std::iter::repeat_with(OnceCell::new)
                .take(standings.len())
                .collect(),
            standings,
            rows,
            all_time_index: all_time,
            top,
            top_here_now: String::new(),
            top_all_time: String::new(),
            shared: String::new(),
        };
        snapshot.top_here_now = snapshot.join(0..top, Self::here_now_entry);
        snapshot.top_all_time = snapshot.join(0..top, Self::all_time_entry);
        snapshot.shared = snapshot.message(top..top);
        snapshot.shared.shrink_to_fit();
        snapshot
    }

    /// The message for viewers who follow no racer.
    #[must_use]
    pub fn shared(&self) -> &str {
        &self.shared
    }

    /// The message for a viewer following `racer`: the top N plus `racer`
    /// and its neighbours, if it is racing at this second.
    #[must_use]
    pub fn for_racer(&self, racer: RacerId) -> Option<String> {
        self.racer_rows(racer).map(|rows| self.message(rows))
    }

    /// The shared message, with room to add to it.
    fn shared_to_extend(&self) -> String {
        let mut message = String::with_capacity(self.shared.len() + PERSONAL_ROOM);
        message.push_str(&self.shared);
        message
    }

    /// The message for a viewer with its own racer and a follow list, or
    /// `None` when the shared message is all it needs. Its own racer adds
    /// `ghost` (once it has reported a second): the racer against its own
    /// bests. A follow list adds `following`: the followed racers at this
    /// second, ranked among themselves.
    #[must_use]
    pub fn for_viewer(&self, racer: Option<RacerId>, follow: Option<&[RacerId]>) -> Option<String> {
        let ghost = racer.and_then(|r| self.race.ghost(r));
        if follow.is_none() && ghost.is_none() {
            return racer.and_then(|r| self.for_racer(r));
        }
        let mut message = match racer.and_then(|r| self.racer_rows(r)) {
            Some(rows) => self.message(rows),
            None => self.shared_to_extend(),
        };
        message.pop(); // the closing brace
        if let Some(ghost) = ghost {
            message.push_str(r#","ghost":"#);
            message.push_str(&serde_json::to_string(&ghost).expect("a ghost serializes"));
        }
        let Some(follow) = follow else {
            message.push('}');
            return Some(message);
        };
        message.push_str(r#","following":["#);
        let mut followed: Vec<usize> = follow
            .iter()
            .filter_map(|r| self.rows.get(r).copied())
            .collect();
        followed.sort_unstable();
        for (n, row) in followed.into_iter().enumerate() {
            if n > 0 {
                message.push(',');
            }
            let s = &self.standings[row];
            let entry = FollowingEntry {
                rank: s.rank,
                following_rank: u32::try_from(n + 1).unwrap_or(u32::MAX),
                racer_id: s.racer_id,
                name: &s.name,
                output: s.output,
            };
            message.push_str(&serde_json::to_string(&entry).expect("an entry serializes"));
        }
        message.push_str("]}");
        Some(message)
    }

    /// The rows a viewer of `racer` sees after the top N: `racer` and its
    /// neighbours below them; `None` if it is not racing at this second or
    /// the top N shows them already.
    fn racer_rows(&self, racer: RacerId) -> Option<Range<usize>> {
        let at = *self.rows.get(&racer)?;
        let from = at.saturating_sub(NEIGHBOURS);
        let to = (at + NEIGHBOURS + 1).min(self.standings.len());
        if to <= self.top {
            return None; // the shared message already shows them
        }
        Some(from.max(self.top)..to)
    }

    fn here_now_entry(&self, row: usize) -> &str {
        self.here_now[row].get_or_init(|| {
            serde_json::to_string(&self.standings[row]).expect("a standing serializes")
        })
    }

    fn all_time_entry(&self, row: usize) -> &str {
        self.all_time[row].get_or_init(|| {
            let s = &self.standings[row];
            let empty = AllTime::default();
            let index = self.all_time_index.unwrap_or(&empty);
            let entry = AllTimeEntry {
                racer_id: s.racer_id,
                output: s.output,
                rank: index.rank(self.second, s.racer_id, s.output),
            };
            serde_json::to_string(&entry).expect("an entry serializes")
        })
    }

    /// The message of the top N followed by the rows `below` them.
    fn message(&self, below: Range<usize>) -> String {
        let here_now = self.join(below.clone(), Self::here_now_entry);
        let all_time = self.join(below, Self::all_time_entry);
        let lists = [
            (r#","hereNow":["#, &self.top_here_now, here_now),
            (r#"],"allTime":["#, &self.top_all_time, all_time),
        ];
        let length = lists
            .iter()
            .map(|(key, top, below)| key.len() + top.len() + 1 + below.len())
            .sum::<usize>();
        let mut out = String::with_capacity(self.header.len() + length + 2 + PERSONAL_ROOM);
        out.push_str(&self.header);
        for (key, top, below) in lists {
            out.push_str(key);
            out.push_str(top);
            if !top.is_empty() && !below.is_empty() {
                out.push(',');
            }
            out.push_str(&below);
        }
        out.push_str("]}");
        out
    }

    fn join(&self, rows: Range<usize>, entry: fn(&Self, usize) -> &str) -> String {
        let mut out = String::with_capacity(rows.len() * 96);
        for (n, row) in rows.enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str(entry(self, row));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::history::ClassHistory;
    use alleycat_core::{ClassId, Event, RaceId, Telemetry};
    use serde_json::Value;

    fn race(racers: u64) -> Race {
        let mut race = Race::new(ClassId(2), RaceId(7), std::sync::Arc::default());
        for r in 1..=racers {
            let t = Telemetry {
                uuid: None,
                event: Event::Update,
                device_timestamp: 0,
                second: Second(5),
                race_id: RaceId(7),
                name: format!("R{r}"),
                racer_id: RacerId(r),
                class_id: ClassId(2),
                // Racer 1 fastest, racer N slowest.
                cadence: 100.0 - r as f64,
                resistance: 50.0,
            };
            race.apply(&t, r);
        }
        race
    }

    fn ids(message: &str, list: &str) -> Vec<u64> {
        let v: Value = serde_json::from_str(message).unwrap();
        v[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["racerId"].as_u64().unwrap())
            .collect()
    }

    #[test]
    fn the_shared_message_holds_the_top_n() {
        let race = race(10);
        let snapshot = Snapshot::new(&race, None, 3, 1);
        let v: Value = serde_json::from_str(snapshot.shared()).unwrap();
        assert_eq!(
            (
                v["type"].as_str(),
                v["classId"].as_u64(),
                v["raceId"].as_u64(),
                v["second"].as_u64()
            ),
            (Some("race"), Some(2), Some(7), Some(5))
        );
        assert_eq!(v["racers"], 10);
        assert_eq!(ids(snapshot.shared(), "hereNow"), [1, 2, 3]);
        assert_eq!(ids(snapshot.shared(), "allTime"), [1, 2, 3]);
        assert_eq!(v["hereNow"][0]["rank"], 1);
        assert_eq!(v["hereNow"][0]["name"], "R1");
    }

    #[test]
    fn every_viewer_gets_the_top_n_then_its_neighbourhood_whatever_the_sizes() {
        for racers in [1u64, 4, 9] {
            let race = race(racers);
            for top in [0, 1, 3, 9, 20] {
                let snapshot = Snapshot::new(&race, None, top, 1);
                let shown = top.min(racers as usize);
                let top_ids: Vec<u64> = (1..=shown as u64).collect();
                assert_eq!(ids(snapshot.shared(), "hereNow"), top_ids);
                assert_eq!(ids(snapshot.shared(), "allTime"), top_ids);
                for racer in 1..=racers {
                    let at = racer as usize - 1;
                    let neighbourhood =
                        at.saturating_sub(NEIGHBOURS)..(at + NEIGHBOURS + 1).min(racers as usize);
                    let expected: Vec<u64> = top_ids
                        .iter()
                        .copied()
                        .chain(
                            neighbourhood
                                .filter(|&row| row >= shown)
                                .map(|row| row as u64 + 1),
                        )
                        .collect();
                    let message = snapshot.for_racer(RacerId(racer));
                    let message = message.as_deref().unwrap_or(snapshot.shared());
                    let what = format!("{racers} racers, top {top}, racer {racer}");
                    assert_eq!(ids(message, "hereNow"), expected, "{what}");
                    assert_eq!(ids(message, "allTime"), expected, "{what}");
                    // Following itself turns the shared case personal too.
                    let followed = snapshot
                        .for_viewer(Some(RacerId(racer)), Some(&[RacerId(racer)]))
                        .unwrap();
                    assert_eq!(ids(&followed, "hereNow"), expected, "{what}");
                    assert_eq!(ids(&followed, "following"), [racer], "{what}");
                }
            }
        }
    }

    #[test]
    fn a_viewer_following_a_racer_gets_it_and_its_neighbours() {
        let race = race(10);
        let snapshot = Snapshot::new(&race, None, 3, 1);
        let mine = snapshot.for_racer(RacerId(8)).unwrap();
        assert_eq!(ids(&mine, "hereNow"), [1, 2, 3, 6, 7, 8, 9, 10]);
        let mine = snapshot.for_racer(RacerId(4)).unwrap();
        assert_eq!(
            ids(&mine, "hereNow"),
            [1, 2, 3, 4, 5, 6],
            "no duplicates at the seam"
        );
        assert_eq!(
            snapshot.for_racer(RacerId(1)),
            None,
            "already in the shared message"
        );
        assert_eq!(snapshot.for_racer(RacerId(99)), None, "not racing");
    }

    #[test]
    fn a_follow_list_adds_the_followed_racers_ranked_among_themselves() {
        let race = race(10);
        let snapshot = Snapshot::new(&race, None, 3, 1);
        // 99 is not racing; 2 is in the top, 9 and 5 are not.
        let message = snapshot
            .for_viewer(
                None,
                Some(&[RacerId(9), RacerId(2), RacerId(99), RacerId(5)]),
            )
            .unwrap();
        let v: Value = serde_json::from_str(&message).unwrap();
        assert_eq!(ids(&message, "hereNow"), [1, 2, 3], "the top as shared");
        let following: Vec<(u64, u64, u64)> = v["following"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["followingRank"].as_u64().unwrap(),
                    e["rank"].as_u64().unwrap(),
                    e["racerId"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(following, [(1, 2, 2), (2, 5, 5), (3, 9, 9)]);
        assert_eq!(v["following"][0]["name"], "R2");
        // With its own racer too: the neighbourhood and the list.
        let both = snapshot
            .for_viewer(Some(RacerId(8)), Some(&[RacerId(1)]))
            .unwrap();
        assert_eq!(ids(&both, "hereNow"), [1, 2, 3, 6, 7, 8, 9, 10]);
        assert_eq!(ids(&both, "following"), [1]);
        // Nobody followed races: an empty list, still there.
        let none = snapshot.for_viewer(None, Some(&[RacerId(99)])).unwrap();
        assert_eq!(ids(&none, "following"), Vec::<u64>::new());
        // A racer in the top N with no list: the shared message and its
        // ghost; a viewer with neither: the shared message as it is.
        let leader = snapshot.for_viewer(Some(RacerId(1)), None).unwrap();
        assert_eq!(ids(&leader, "hereNow"), [1, 2, 3]);
        let v: Value = serde_json::from_str(&leader).unwrap();
        assert_eq!(v["ghost"]["racerId"], 1);
        assert_eq!(snapshot.for_viewer(None, None), None);
    }

    #[test]
    fn all_time_ranks_against_the_class_history() {
        let mut history = ClassHistory::default();
        history.merge(Second(5), RacerId(2), 1_000.0); // far above everyone
        history.merge(Second(5), RacerId(1), 1.0);
        let all_time = AllTime::from_history(&history);
        let race = race(3);
        let snapshot = Snapshot::new(&race, Some(&all_time), 3, 1);
        let v: Value = serde_json::from_str(snapshot.shared()).unwrap();
        let first = &v["allTime"][0];
        assert_eq!(
            (
                first["racerId"].as_u64(),
                first["rank"].as_u64(),
                first["newRecord"].as_bool()
            ),
            (Some(1), Some(2), Some(true))
        );
        assert_eq!(first["personalBest"], 1.0);
        let second = &v["allTime"][1];
        assert_eq!(
            (second["rank"].as_u64(), second["newRecord"].as_bool()),
            (Some(1), Some(false))
        );
        assert_eq!(v["allTime"][2]["personalBest"], Value::Null);
    }
}
