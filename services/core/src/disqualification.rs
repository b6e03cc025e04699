//! Disqualifications: which races (or which racers altogether) no longer
//! count. Pure: the list, the operator's request to add to it, and the
//! question every service asks of it ("is this record disqualified?").
//!
//! An entry never changes once made; reinstating a racer deletes its entry.
//! So two lists differ exactly by the entries one has and the other has
//! not, and the racers whose bests must be recomputed when the list changes
//! are those of [`Disqualifications::changed_racers`].

use crate::telemetry::{MAX_SAFE_INTEGER, RaceId, RacerId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Most entries a list holds: far more than any operator files, and a
/// bound on what the list costs every process that reads it.
pub const MAX_ENTRIES: usize = 10_000;

/// Longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// An entry's id, given when it is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct DisqualificationId(pub u64);

impl fmt::Display for DisqualificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One disqualification: of one race of a racer, or of the racer in every
/// race when `race_id` is `None`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disqualification {
    /// Its id.
    pub id: DisqualificationId,
    /// The racer.
    pub racer_id: RacerId,
    /// The race; `None`: every race of the racer, past and future.
    pub race_id: Option<RaceId>,
    /// Why, as the operator wrote it.
    pub reason: String,
    /// When it was stored.
    pub created_at: DateTime<Utc>,
}

impl Disqualification {
    /// Whether this entry disqualifies `racer`'s record of `race`.
    #[must_use]
    pub fn covers(&self, racer: RacerId, race: RaceId) -> bool {
        self.racer_id == racer && self.race_id.is_none_or(|r| r == race)
    }
}

/// An operator's request: `{"racerId": X, "raceId": R, "reason": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDisqualification {
    /// The racer.
    pub racer_id: RacerId,
    /// The race, or every race.
    pub race_id: Option<RaceId>,
    /// Why.
    pub reason: String,
}

/// Why a request is refused; each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Not a JSON object of the expected shape.
    #[error("{0}")]
    Shape(String),
    /// A field breaks its rule.
    #[error("{field} {reason}")]
    Field {
        /// The field.
        field: &'static str,
        /// Its rule.
        reason: String,
    },
}

impl NewDisqualification {
    /// Parses and checks a request body: a JSON object, each field checked
    /// by name.
    pub fn parse(body: &[u8]) -> Result<NewDisqualification, RequestError> {
        let value: serde_json::Value =
            serde_json::from_slice(body).map_err(|e| RequestError::Shape(e.to_string()))?;
        let serde_json::Value::Object(mut fields) = value else {
            return Err(RequestError::Shape(
                "expected a JSON object {\"racerId\", \"raceId\", \"reason\"}".to_owned(),
            ));
        };
        let id = |field: &'static str, v: Option<serde_json::Value>| match v {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(id) if id <= MAX_SAFE_INTEGER => Ok(Some(id)),
                _ => Err(RequestError::Field {
                    field,
                    reason: format!("must be an integer from 0 to {MAX_SAFE_INTEGER}, got {v}"),
                }),
            },
        };
        let racer_id = id("racerId", fields.remove("racerId"))?
            .map(RacerId)
            .ok_or(RequestError::Field {
                field: "racerId",
                reason: "is required".to_owned(),
            })?;
        let race_id = id("raceId", fields.remove("raceId"))?.map(RaceId);
        let reason = match fields.remove("reason") {
            Some(serde_json::Value::String(reason)) => reason.trim().to_owned(),
            None => {
                return Err(RequestError::Field {
                    field: "reason",
                    reason: "is required".to_owned(),
                });
            }
            Some(other) => {
                return Err(RequestError::Field {
                    field: "reason",
                    reason: format!("must be a string, got {other}"),
                });
            }
        };
        if let Some(unknown) = fields.keys().next() {
            return Err(RequestError::Shape(format!(
                "unknown field {unknown:?}: expected racerId, raceId and reason"
            )));
        }
        let chars = reason.chars().count();
        if chars == 0 {
            return Err(RequestError::Field {
                field: "reason",
                reason: "must not be empty".to_owned(),
            });
        }
        if chars > MAX_REASON_CHARS {
            return Err(RequestError::Field {
                field: "reason",
                reason: format!("must be at most {MAX_REASON_CHARS} characters, got {chars}"),
            });
        }
        Ok(NewDisqualification {
            racer_id,
            race_id,
            reason,
        })
    }
}

/// Why an entry cannot be added.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddError {
    /// The list is full.
    #[error("the list holds {MAX_ENTRIES} disqualifications, the most it may")]
    Full,
}

/// The list, as stored (`{"entries": [...], "nextId", "version"}`),
/// ordered by id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredList", rename_all = "camelCase")]
pub struct Disqualifications {
    entries: Vec<Disqualification>,
    /// The id the next entry gets: ids are never reused, so a process that
    /// knew entry 5 never takes another entry 5 for the same one.
    next_id: u64,
    /// Raised by every change: a copy read before a change never replaces
    /// one read after it.
    version: u64,
    /// Fast lookups: per racer, the indexes of its entries.
    #[serde(skip)]
    by_racer: BTreeMap<RacerId, Vec<usize>>,
}

/// The stored form, indexed once read.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredList {
    entries: Vec<Disqualification>,
    #[serde(default)]
    next_id: u64,
    #[serde(default)]
    version: u64,
}

impl From<StoredList> for Disqualifications {
    fn from(stored: StoredList) -> Self {
        Disqualifications::new(stored.entries, stored.next_id, stored.version)
    }
}

/// What identifies an entry's effect: the racer and race of entry `id`.
pub type EntryKey = (DisqualificationId, RacerId, Option<RaceId>);

impl Disqualifications {
    /// The list of `entries` at `version`; the next id is at least
    /// `next_id`.
    fn new(mut entries: Vec<Disqualification>, next_id: u64, version: u64) -> Disqualifications {
        entries.sort_by_key(|e| e.id);
        let mut by_racer: BTreeMap<RacerId, Vec<usize>> = BTreeMap::new();
        for (i, e) in entries.iter().enumerate() {
            by_racer.entry(e.racer_id).or_default().push(i);
        }
        let next_id = next_id.max(entries.last().map_or(1, |e| e.id.0 + 1));
        Disqualifications {
            entries,
            next_id,
            version,
            by_racer,
        }
    }

    /// The version: raised by every change.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// This list without what only people read (reasons, times): what a
    /// service keeps to remember which list it applied.
    #[must_use]
    pub fn compact(&self) -> Disqualifications {
        let entries = self
            .entries
            .iter()
            .map(|e| Disqualification {
                reason: String::new(),
                created_at: DateTime::<Utc>::UNIX_EPOCH,
                ..e.clone()
            })
            .collect();
        Disqualifications::new(entries, self.next_id, self.version)
    }

    /// Whether both lists disqualify the same races and racers by the same
    /// entries (reasons and times aside).
    #[must_use]
    pub fn same_effect(&self, other: &Disqualifications) -> bool {
        self.keys().eq(other.keys())
    }

    fn keys(&self) -> impl Iterator<Item = EntryKey> + '_ {
        self.entries.iter().map(|e| (e.id, e.racer_id, e.race_id))
    }

    /// Parses a stored list.
    pub fn from_json(json: &[u8]) -> Result<Disqualifications, serde_json::Error> {
        serde_json::from_slice(json)
    }

    /// The stored form.
    #[must_use]
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("a list of entries always serializes")
    }

    /// Every entry, by id.
    #[must_use]
    pub fn entries(&self) -> &[Disqualification] {
        &self.entries
    }

    /// Whether there is no entry.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries that name `racer`.
    fn of_racer(&self, racer: RacerId) -> impl Iterator<Item = &Disqualification> {
        self.by_racer
            .get(&racer)
            .into_iter()
            .flatten()
            .map(|&i| &self.entries[i])
    }

    /// The entry that disqualifies `racer`'s record of `race`, if any.
    #[must_use]
    pub fn refusal(&self, racer: RacerId, race: RaceId) -> Option<&Disqualification> {
        self.of_racer(racer).find(|e| e.covers(racer, race))
    }

    /// Whether `racer`'s record of `race` is disqualified.
    #[must_use]
    pub fn covers(&self, racer: RacerId, race: RaceId) -> bool {
        self.refusal(racer, race).is_some()
    }

    /// Whether `racer` is disqualified from every race.
    #[must_use]
    pub fn covers_racer(&self, racer: RacerId) -> bool {
        self.of_racer(racer).any(|e| e.race_id.is_none())
    }

    /// Whether any entry names `racer`.
    #[must_use]
    pub fn names(&self, racer: RacerId) -> bool {
        self.by_racer.contains_key(&racer)
    }

    /// The entry `id`.
    #[must_use]
    pub fn get(&self, id: DisqualificationId) -> Option<&Disqualification> {
        self.entries
            .binary_search_by_key(&id, |e| e.id)
            .ok()
            .map(|i| &self.entries[i])
    }

    /// The entry that already says what `request` asks, if any: asking
    /// twice stores nothing new.
    #[must_use]
    pub fn existing(&self, request: &NewDisqualification) -> Option<&Disqualification> {
        self.of_racer(request.racer_id)
            .find(|e| e.race_id == request.race_id)
    }

    /// This list with `request` added as a new entry made at `now`, and that
    /// entry.
    pub fn with(
        &self,
        request: NewDisqualification,
        now: DateTime<Utc>,
    ) -> Result<(Disqualifications, Disqualification), AddError> {
        if self.entries.len() >= MAX_ENTRIES {
            return Err(AddError::Full);
        }
        let id = DisqualificationId(self.next_id.max(1));
        let entry = Disqualification {
            id,
            racer_id: request.racer_id,
            race_id: request.race_id,
            reason: request.reason,
            created_at: now,
        };
        let mut entries = self.entries.clone();
        entries.push(entry.clone());
        Ok((
            Disqualifications::new(entries, id.0 + 1, self.version + 1),
            entry,
        ))
    }

    /// This list without entry `id`, or `None` if it has no such entry.
    #[must_use]
    pub fn without(&self, id: DisqualificationId) -> Option<Disqualifications> {
        self.get(id)?;
        Some(Disqualifications::new(
            self.entries
                .iter()
                .filter(|e| e.id != id)
                .cloned()
                .collect(),
            self.next_id,
            self.version + 1,
        ))
    }

    /// The racers of the entries one list has and the other has not: those
    /// whose bests differ between the two.
    #[must_use]
    pub fn changed_racers(&self, other: &Disqualifications) -> BTreeSet<RacerId> {
        let ours: BTreeSet<EntryKey> = self.keys().collect();
        let theirs: BTreeSet<EntryKey> = other.keys().collect();
        ours.symmetric_difference(&theirs)
            .map(|(_, racer, _)| *racer)
            .collect()
    }

    /// Every racer an entry names.
    pub fn racers(&self) -> impl Iterator<Item = RacerId> + '_ {
        self.by_racer.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(racer: u64, race: Option<u64>) -> NewDisqualification {
        NewDisqualification {
            racer_id: RacerId(racer),
            race_id: race.map(RaceId),
            reason: "cadence sensor taped".to_owned(),
        }
    }

    fn list(requests: &[(u64, Option<u64>)]) -> Disqualifications {
        requests
            .iter()
            .fold(Disqualifications::default(), |list, (racer, race)| {
                list.with(request(*racer, *race), Utc::now()).unwrap().0
            })
    }

    #[test]
    fn a_race_entry_covers_that_race_only_and_a_racer_entry_every_race() {
        let list = list(&[(7, Some(100)), (9, None)]);
        assert!(list.covers(RacerId(7), RaceId(100)));
        assert!(!list.covers(RacerId(7), RaceId(101)));
        assert!(!list.covers_racer(RacerId(7)));
        assert!(list.covers(RacerId(9), RaceId(1)));
        assert!(list.covers(RacerId(9), RaceId(u64::MAX)));
        assert!(list.covers_racer(RacerId(9)));
        assert!(!list.covers(RacerId(8), RaceId(100)));
        assert_eq!(
            list.refusal(RacerId(9), RaceId(5)).unwrap().reason,
            "cadence sensor taped"
        );
    }

    #[test]
    fn ids_increase_and_survive_a_round_trip() {
        let list = list(&[(1, None), (2, Some(3)), (4, None)]);
        let ids: Vec<u64> = list.entries().iter().map(|e| e.id.0).collect();
        assert_eq!(ids, [1, 2, 3]);
        let back = Disqualifications::from_json(&list.to_json()).unwrap();
        assert_eq!(back, list);
        assert!(back.covers(RacerId(2), RaceId(3)));
        // An id is never reused, even after the last entry is deleted, and
        // across a round trip.
        let shorter = list.without(DisqualificationId(3)).unwrap();
        let shorter = Disqualifications::from_json(&shorter.to_json()).unwrap();
        let (after, next) = shorter.with(request(5, None), Utc::now()).unwrap();
        assert_eq!(next.id, DisqualificationId(4));
        // Every change raises the version.
        assert_eq!(
            (list.version(), shorter.version(), after.version()),
            (3, 4, 5)
        );
        // Another racer under a reused id would still count as a change.
        assert_eq!(
            shorter
                .changed_racers(&after)
                .into_iter()
                .collect::<Vec<_>>(),
            [RacerId(5)]
        );
        assert!(after.compact().same_effect(&after));
        assert!(
            after
                .compact()
                .entries()
                .iter()
                .all(|e| e.reason.is_empty())
        );
    }

    #[test]
    fn removing_reinstates_and_unknown_ids_are_none() {
        let list = list(&[(7, Some(100))]);
        let after = list.without(DisqualificationId(1)).unwrap();
        assert!(!after.covers(RacerId(7), RaceId(100)));
        assert!(after.without(DisqualificationId(1)).is_none());
        assert!(list.without(DisqualificationId(99)).is_none());
    }

    #[test]
    fn changed_racers_are_those_of_added_or_removed_entries() {
        let before = list(&[(1, None), (2, Some(3))]);
        let (after, _) = before.with(request(5, Some(9)), Utc::now()).unwrap();
        let after = after.without(DisqualificationId(1)).unwrap();
        let changed: Vec<u64> = before
            .changed_racers(&after)
            .into_iter()
            .map(RacerId::get)
            .collect();
        assert_eq!(changed, [1, 5]);
        assert!(after.changed_racers(&after).is_empty());
    }

    #[test]
    fn an_existing_entry_is_found_for_the_same_request() {
        let list = list(&[(7, Some(100)), (7, None)]);
        assert_eq!(
            list.existing(&request(7, Some(100))).unwrap().id,
            DisqualificationId(1)
        );
        assert_eq!(
            list.existing(&request(7, None)).unwrap().id,
            DisqualificationId(2)
        );
        assert!(list.existing(&request(7, Some(101))).is_none());
    }

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = NewDisqualification::parse(br#"{"racerId": 7, "reason": " doped "}"#).unwrap();
        assert_eq!(
            ok,
            NewDisqualification {
                racer_id: RacerId(7),
                race_id: None,
                reason: "doped".to_owned()
            }
        );
        let with_race =
            NewDisqualification::parse(br#"{"racerId": 7, "raceId": 3, "reason": "x"}"#).unwrap();
        assert_eq!(with_race.race_id, Some(RaceId(3)));
        let refused = |body: &str| NewDisqualification::parse(body.as_bytes()).unwrap_err();
        assert!(matches!(
            refused(r#"{"racerId": 7, "reason": "  "}"#),
            RequestError::Field {
                field: "reason",
                ..
            }
        ));
        assert!(matches!(
            refused(r#"{"racerId": 9007199254740992, "reason": "x"}"#),
            RequestError::Field {
                field: "racerId",
                ..
            }
        ));
        let long = "x".repeat(MAX_REASON_CHARS + 1);
        assert!(
            refused(&format!(r#"{{"racerId": 1, "reason": "{long}"}}"#))
                .to_string()
                .contains("at most 500")
        );
        assert_eq!(
            refused(r#"{"reason": "x"}"#).to_string(),
            "racerId is required"
        );
        assert!(
            refused(r#"{"racerId": -1, "reason": "x"}"#)
                .to_string()
                .contains("racerId must be an integer")
        );
        assert!(
            refused(r#"{"racerId": 1, "raceId": "ten", "reason": "x"}"#)
                .to_string()
                .contains("raceId must be")
        );
        assert!(
            refused(r#"{"racerId": 1, "reason": 5}"#)
                .to_string()
                .contains("reason must be a string")
        );
        assert!(
            refused(r#"{"racerId": 1, "reason": "x", "extra": 1}"#)
                .to_string()
                .contains("extra")
        );
        assert!(matches!(refused("[1]"), RequestError::Shape(_)));
    }

    #[test]
    fn a_full_list_refuses_more() {
        let entries = (1..=MAX_ENTRIES as u64)
            .map(|i| Disqualification {
                id: DisqualificationId(i),
                racer_id: RacerId(i),
                race_id: None,
                reason: String::new(),
                created_at: Utc::now(),
            })
            .collect();
        let full = Disqualifications::new(entries, 0, 0);
        assert_eq!(
            full.with(request(1, None), Utc::now()).unwrap_err(),
            AddError::Full
        );
    }
}
