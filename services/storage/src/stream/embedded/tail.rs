//! The stream's newest committed records, kept in memory.
//!
//! Consumers read close behind ingest: the transformer and the rankings a
//! moment after each commit. Serving them from memory spares a database
//! read and a copy of every record, and lets each record carry what ingest
//! validated to the readers in this process, which then need not parse the
//! same JSON again. In a profile of the pipeline bench, those second and
//! third parses and the reads were about 18% of the process's CPU.
//!
//! Bounded by bytes: a reader further behind (catching up after a restart,
//! or slower than ingest for longer than the tail holds) reads the
//! database, as every reader did before.

use super::stream_record;
use crate::stream::StreamRecord;
use alleycat_core::validate::Validated;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::Arc;

/// Most bytes the tail holds: about 37,000 records of telemetry, seconds
/// of run 1's 10,000 a second, a third of a second of the stretch run's
/// 100,000 (where the rankings read right behind ingest, and the
/// transformer, seconds behind with both cores busy, reads the database).
pub(super) const TAIL_BYTES: usize = 16 << 20;

/// What an entry costs besides its data: the entry, the data's allocation
/// (a serialized record's buffer is larger than its length) and the
/// validated record with its name.
const ENTRY_OVERHEAD: usize = 256;

/// A record appended: its bytes, and what was handed along with them.
pub(super) type Appended = (Bytes, Option<Arc<Validated>>);

struct Entry {
    arrival_ms: i64,
    data: Bytes,
    validated: Option<Arc<Validated>>,
}

impl Entry {
    fn cost(&self) -> usize {
        self.data.len() + ENTRY_OVERHEAD
    }
}

/// The newest committed records, in sequence order from `first`.
pub(super) struct Tail {
    first: u64,
    entries: VecDeque<Entry>,
    bytes: usize,
    limit: usize,
}

impl Tail {
    /// An empty tail that holds at most `limit` bytes.
    pub(super) fn new(limit: usize) -> Tail {
        Tail {
            first: 0,
            entries: VecDeque::new(),
            bytes: 0,
            limit,
        }
    }

    /// The sequence after the last record held.
    fn end(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    /// Adds records just committed with consecutive sequences from `first`,
    /// all arrived at `arrival_ms`; drops the oldest past the limit. Records
    /// that do not follow the last one held start the tail afresh.
    pub(super) fn extend<'a>(
        &mut self,
        first: u64,
        arrival_ms: i64,
        records: impl IntoIterator<Item = &'a Appended>,
    ) {
        if first != self.end() {
            self.clear();
            self.first = first;
        }
        for (data, validated) in records {
            let entry = Entry {
                arrival_ms,
                data: data.clone(),
                validated: validated.clone(),
            };
            self.bytes += entry.cost();
            self.entries.push_back(entry);
        }
        while self.bytes > self.limit {
            let Some(oldest) = self.entries.pop_front() else {
                break;
            };
            self.bytes -= oldest.cost();
            self.first += 1;
        }
    }

    /// Forgets every record (the database was reopened: what it holds is
    /// what readers must see).
    pub(super) fn clear(&mut self) {
        self.first = self.end();
        self.entries.clear();
        self.bytes = 0;
    }

    /// Records `from..to` and, when `peek`, the arrival of record `to`, as
    /// [`super::read_range`] would read them; `None` unless the tail holds
    /// every one of them.
    pub(super) fn read(
        &self,
        from: u64,
        to: u64,
        peek: bool,
    ) -> Option<(Vec<StreamRecord>, Option<i64>)> {
        let held = if peek { to + 1 } else { to };
        if from < self.first || held > self.end() || from > to {
            return None;
        }
        let start = usize::try_from(from - self.first).ok()?;
        let count = usize::try_from(to - from).ok()?;
        let records = (from..)
            .zip(self.entries.range(start..start + count))
            .map(|(sequence, entry)| {
                stream_record(
                    sequence,
                    entry.arrival_ms,
                    entry.data.clone(),
                    entry.validated.clone(),
                )
            })
            .collect();
        let unread = peek.then(|| self.entries[start + count].arrival_ms);
        Some((records, unread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::validate::SensorLimits;

    fn appended(i: u64) -> Appended {
        let data = Bytes::from(format!("record {i}"));
        (data, None)
    }

    fn sequences(records: &[StreamRecord]) -> Vec<u64> {
        records
            .iter()
            .map(|r| r.sequence.to_u64().unwrap())
            .collect()
    }

    #[test]
    fn serves_what_it_holds_and_nothing_else() {
        let mut tail = Tail::new(TAIL_BYTES);
        let batch: Vec<_> = (10..15).map(appended).collect();
        tail.extend(10, 7, &batch);
        let (records, unread) = tail.read(11, 13, true).unwrap();
        assert_eq!(sequences(&records), [11, 12]);
        assert_eq!(records[0].data, Bytes::from("record 11"));
        assert_eq!(records[0].arrival_ms, 7);
        assert_eq!(records[0].shard_id, super::super::SHARD_ID);
        assert_eq!(unread, Some(7), "record 13's arrival");
        assert_eq!(
            sequences(&tail.read(10, 15, false).unwrap().0),
            [10, 11, 12, 13, 14]
        );
        assert!(tail.read(9, 12, false).is_none(), "before the tail");
        assert!(tail.read(12, 16, false).is_none(), "past the tail");
        assert!(
            tail.read(12, 15, true).is_none(),
            "record 15 to peek at is not held"
        );
    }

    #[test]
    fn hands_along_what_was_validated() {
        let mut tail = Tail::new(TAIL_BYTES);
        let validated = Arc::new(Validated {
            telemetry: SensorLimits::DEFAULT
                .parse_record(
                    br#"{"event":"update","deviceTimestamp":1,"second":1,"raceId":1,"name":"A","racerId":1,"classId":1,"cadence":80,"resistance":50}"#,
                )
                .unwrap(),
            limits: SensorLimits::DEFAULT,
        });
        tail.extend(
            0,
            1,
            &[(Bytes::from("x"), Some(validated.clone())), appended(1)],
        );
        let (records, _) = tail.read(0, 2, false).unwrap();
        assert!(Arc::ptr_eq(
            records[0].validated.as_ref().unwrap(),
            &validated
        ));
        assert!(records[1].validated.is_none());
    }

    #[test]
    fn drops_the_oldest_past_its_limit() {
        let cost = appended(0).0.len() + ENTRY_OVERHEAD;
        let mut tail = Tail::new(3 * cost);
        for i in 0..5 {
            tail.extend(i, 1, &[appended(i)]);
        }
        assert!(tail.read(1, 2, false).is_none(), "dropped");
        assert_eq!(sequences(&tail.read(2, 5, false).unwrap().0), [2, 3, 4]);
        assert!(tail.bytes <= 3 * cost);
    }

    #[test]
    fn a_gap_or_a_clear_starts_it_afresh() {
        let mut tail = Tail::new(TAIL_BYTES);
        tail.extend(0, 1, &[appended(0), appended(1)]);
        // A commit that does not follow (sequences after a reopen).
        tail.extend(5, 2, &[appended(5)]);
        assert!(tail.read(0, 2, false).is_none());
        assert_eq!(sequences(&tail.read(5, 6, false).unwrap().0), [5]);
        tail.clear();
        assert!(tail.read(5, 6, false).is_none());
        assert_eq!(tail.read(6, 6, false).map(|(r, _)| r.len()), Some(0));
        tail.extend(6, 3, &[appended(6)]);
        assert_eq!(sequences(&tail.read(6, 7, false).unwrap().0), [6]);
    }
}
