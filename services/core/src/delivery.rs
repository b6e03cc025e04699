//! What the transformer writes to the delivery store and how it is named.
//!
//! A delivery object is gzipped newline-delimited JSON, one [`DeliveryRecord`]
//! per line, keyed
//! `YYYY/MM/DD/HH/alleycat-delivery-YYYY-MM-DD-HH-MM-SS-<shard>-<first>-<last>.gz`
//! (UTC, the time the object was written). Records that fail processing go to
//! the same key under `processing-failed/`, one [`FailedRecord`] per line.
//!
//! Keys sort by write time, so a reader can list "everything written since
//! T" with a start-after key ([`listing_start_after`]).

use crate::telemetry::{ClassId, RaceId, RacerId, Second, Telemetry};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// Prefix of every delivery object's file name.
pub const OBJECT_PREFIX: &str = "alleycat-delivery-";

/// Key prefix of objects holding records that failed processing.
pub const FAILED_PREFIX: &str = "processing-failed/";

/// Largest delivery object, decompressed, that history reads: the
/// transformer's buffer settings may not exceed it, or history would refuse
/// the objects it wrote.
pub const MAX_OBJECT_BYTES: usize = 256 << 20;

const HOUR_FORMAT: &str = "%Y/%m/%d/%H/";
const STAMP_FORMAT: &str = "%Y-%m-%d-%H-%M-%S";

/// One line of a delivery object: the telemetry as received plus its output.
#[derive(Debug, Serialize)]
pub struct DeliveryRecord<'a> {
    /// The validated message.
    #[serde(flatten)]
    pub telemetry: &'a Telemetry,
    /// `output(cadence, resistance)`.
    pub output: f64,
}

impl<'a> DeliveryRecord<'a> {
    /// The line for `telemetry`, its output computed by the one formula.
    #[must_use]
    pub fn new(telemetry: &'a Telemetry) -> Self {
        DeliveryRecord {
            telemetry,
            output: telemetry.output(),
        }
    }

    /// Appends this record and a newline to `buf`, its numbers written as
    /// the original's `JSON.stringify` wrote them (`81`, not `81.0`).
    pub fn write_line(&self, buf: &mut Vec<u8>) {
        let mut serializer =
            serde_json::Serializer::with_formatter(&mut *buf, crate::js_number::JsonFormatter);
        self.serialize(&mut serializer)
            .expect("serializing to a Vec cannot fail");
        buf.push(b'\n');
    }
}

/// One line of a `processing-failed/` object, in Firehose's shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailedRecord {
    /// How many times processing was attempted.
    pub attempts_made: u32,
    /// When the record reached the stream, ms since the epoch.
    pub arrival_timestamp: i64,
    /// Machine-readable reason.
    pub error_code: String,
    /// Human-readable reason.
    pub error_message: String,
    /// The record's bytes, base64.
    pub raw_data: String,
    /// Shard the record was read from.
    pub shard_id: String,
    /// Its sequence number in the shard.
    pub sequence_number: String,
}

impl FailedRecord {
    /// A record that could not be parsed or validated.
    #[must_use]
    pub fn invalid(raw: &[u8], reason: String, arrival_ms: i64, shard: &str, seq: &str) -> Self {
        FailedRecord {
            attempts_made: 1,
            arrival_timestamp: arrival_ms,
            error_code: "InvalidRecord".to_owned(),
            error_message: reason,
            raw_data: base64::engine::general_purpose::STANDARD.encode(raw),
            shard_id: shard.to_owned(),
            sequence_number: seq.to_owned(),
        }
    }

    /// Appends this record and a newline to `buf`.
    pub fn write_line(&self, buf: &mut Vec<u8>) {
        serde_json::to_writer(&mut *buf, self).expect("serializing to a Vec cannot fail");
        buf.push(b'\n');
    }
}

/// The part of a delivery line the history merge needs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryPoint {
    /// The racer's class.
    pub class_id: ClassId,
    /// Second of the race.
    pub second: Second,
    /// The racer.
    pub racer_id: RacerId,
    /// The race (what a disqualification names).
    pub race_id: RaceId,
    /// Output at that second.
    pub output: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct PointLine {
    class_id: u64,
    second: u64,
    racer_id: u64,
    race_id: u64,
    output: f64,
}

/// Parses one delivery line into the fields the history merge uses,
/// re-checking their ranges: the delivery store is an input like any other.
pub fn parse_point(line: &[u8]) -> Result<HistoryPoint, String> {
    let raw: PointLine = serde_json::from_slice(line).map_err(|e| e.to_string())?;
    raw.checked()
}

impl PointLine {
    fn checked(self) -> Result<HistoryPoint, String> {
        let class_id = ClassId::new(self.class_id).ok_or("classId out of range")?;
        let second = Second::new(self.second).ok_or("second out of range")?;
        if self.racer_id > crate::telemetry::MAX_SAFE_INTEGER {
            return Err("racerId out of range".to_owned());
        }
        if self.race_id > crate::telemetry::MAX_SAFE_INTEGER {
            return Err("raceId out of range".to_owned());
        }
        if !(self.output.is_finite() && self.output >= 0.0) {
            return Err("output must be a finite, non-negative number".to_owned());
        }
        Ok(HistoryPoint {
            class_id,
            second,
            racer_id: RacerId(self.racer_id),
            race_id: RaceId(self.race_id),
            // The line writes -0 as `0`, which parses as 0.
            output: self.output + 0.0,
        })
    }
}

impl DeliveryRecord<'_> {
    /// The point history reads back from this record's line, by the same
    /// checks as [`parse_point`], without writing and parsing the line: for
    /// a transformer that hands its objects' points to history in the same
    /// process.
    pub fn point(&self) -> Result<HistoryPoint, String> {
        let t = self.telemetry;
        PointLine {
            class_id: u64::from(t.class_id.0),
            second: u64::from(t.second.0),
            racer_id: t.racer_id.0,
            race_id: t.race_id.0,
            output: self.output,
        }
        .checked()
    }
}

/// Parses every non-blank line of a (decompressed) delivery object; lines
/// that do not parse are returned with their index and reason.
#[must_use]
pub fn parse_points(body: &[u8]) -> (Vec<HistoryPoint>, Vec<(usize, String)>) {
    let mut points = Vec::with_capacity(body.len() / 200);
    let mut bad = Vec::new();
    for (index, line) in body
        .split(|b| *b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .enumerate()
    {
        match parse_point(line) {
            Ok(point) => points.push(point),
            Err(reason) => bad.push((index, reason)),
        }
    }
    (points, bad)
}

/// `YYYY/MM/DD/HH/` of `at` (UTC).
#[must_use]
pub fn hour_prefix(at: DateTime<Utc>) -> String {
    at.format(HOUR_FORMAT).to_string()
}

/// The key of a delivery object written at `at`, holding the records of
/// `shard` from sequence `first` to `last`.
#[must_use]
pub fn delivery_key(at: DateTime<Utc>, shard: &str, first: &str, last: &str) -> String {
    format!(
        "{}{OBJECT_PREFIX}{}-{shard}-{first}-{last}.gz",
        hour_prefix(at),
        at.format(STAMP_FORMAT)
    )
}

/// The key of the object holding the failed records of that same range.
#[must_use]
pub fn failed_key(at: DateTime<Utc>, shard: &str, first: &str, last: &str) -> String {
    format!("{FAILED_PREFIX}{}", delivery_key(at, shard, first, last))
}

/// A start-after key that lists, within `at`'s hour prefix, exactly the
/// delivery objects written at or after `at` (to the second).
#[must_use]
pub fn listing_start_after(at: DateTime<Utc>) -> String {
    // Every key written in that second extends this string, so sorts after it.
    format!(
        "{}{OBJECT_PREFIX}{}",
        hour_prefix(at),
        at.format(STAMP_FORMAT)
    )
}

/// The shard a delivery object's records were read from, from its key.
#[must_use]
pub fn shard_of(key: &str) -> Option<&str> {
    // `...alleycat-delivery-YYYY-MM-DD-HH-MM-SS-<shard>-<first>-<last>.gz`;
    // the shard may hold dashes, the sequence numbers do not.
    let name = key.rsplit('/').next()?.strip_prefix(OBJECT_PREFIX)?;
    let rest = name.get(STAMP_CHARS + 1..)?.strip_suffix(".gz")?;
    let mut parts = rest.rsplitn(3, '-');
    let (_last, _first) = (parts.next()?, parts.next()?);
    parts.next()
}

/// When a delivery object was written, from its key (to the second).
#[must_use]
pub fn written_at(key: &str) -> Option<DateTime<Utc>> {
    let name = key.rsplit('/').next()?.strip_prefix(OBJECT_PREFIX)?;
    chrono::NaiveDateTime::parse_from_str(name.get(..STAMP_CHARS)?, STAMP_FORMAT)
        .ok()
        .map(|t| t.and_utc())
}

/// Characters of a key's time stamp (`YYYY-MM-DD-HH-MM-SS`).
const STAMP_CHARS: usize = 19;

/// Whether `key` names a delivery object (not a failed-records object or
/// anything else that may share the store).
#[must_use]
pub fn is_delivery_key(key: &str) -> bool {
    key.len() > 14
        && key.as_bytes()[..14]
            .iter()
            .all(|b| b.is_ascii_digit() || *b == b'/')
        && key[14..].starts_with(OBJECT_PREFIX)
        && key.ends_with(".gz")
}

/// The hour prefixes that cover `from..=to`, oldest first.
#[must_use]
pub fn hour_prefixes(from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
    let mut prefixes = Vec::new();
    let mut at = from;
    while at <= to {
        prefixes.push(hour_prefix(at));
        at += chrono::Duration::hours(1);
    }
    let last = hour_prefix(to);
    if prefixes.last() != Some(&last) {
        prefixes.push(last);
    }
    prefixes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::{Event, RaceId};
    use chrono::TimeZone;
    use proptest::strategy::Strategy as _;

    fn telemetry() -> Telemetry {
        Telemetry {
            uuid: None,
            event: Event::Final,
            device_timestamp: 1_619_185_789_753,
            second: Second(300),
            race_id: RaceId(5_397_285),
            name: "Hubert".into(),
            racer_id: RacerId(101),
            class_id: ClassId(2),
            cadence: 80.25,
            resistance: 78.5,
        }
    }

    #[test]
    fn a_delivery_line_is_the_message_plus_output() {
        let mut buf = Vec::new();
        DeliveryRecord::new(&telemetry()).write_line(&mut buf);
        assert_eq!(buf.last(), Some(&b'\n'));
        let value: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        assert_eq!(value["output"], 165.3838);
        assert_eq!(value["racerId"], 101);
        assert_eq!(value["event"], "final");
        // Numbers as JavaScript writes them.
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(
            text.ends_with("\"cadence\":80.25,\"resistance\":78.5,\"output\":165.3838}\n"),
            "{text}"
        );
        let whole = Telemetry {
            cadence: 65.0,
            resistance: 35.0,
            ..telemetry()
        };
        let mut line = Vec::new();
        DeliveryRecord::new(&whole).write_line(&mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(
            line.ends_with("\"cadence\":65,\"resistance\":35,\"output\":100}\n"),
            "{line}"
        );
        let point = parse_point(&buf[..buf.len() - 1]).unwrap();
        assert_eq!(
            point,
            HistoryPoint {
                class_id: ClassId(2),
                second: Second(300),
                racer_id: RacerId(101),
                race_id: telemetry().race_id,
                output: 165.3838
            }
        );
    }

    proptest::proptest! {
        /// What a transformer hands to history in memory is what history
        /// would read back from the line it wrote, for any record,
        /// within the limits or not, whole or fractional, zero included.
        #[test]
        fn a_handed_over_point_is_the_point_its_line_reads_back_as(
            class in 0u8..=8,
            second in 0u16..=400,
            racer in 0u64..=(crate::telemetry::MAX_SAFE_INTEGER + 1),
            race in proptest::prop_oneof![0u64..1_000_000, proptest::num::u64::ANY],
            cadence in proptest::prop_oneof![0.0..200.0f64, proptest::strategy::Just(0.0), proptest::strategy::Just(-0.0)],
            resistance in proptest::prop_oneof![0.0..200.0f64, (0u32..200).prop_map(f64::from)],
        ) {
            let t = Telemetry {
                second: Second(second),
                race_id: RaceId(race),
                racer_id: RacerId(racer),
                class_id: ClassId(class),
                cadence,
                resistance,
                ..telemetry()
            };
            let record = DeliveryRecord::new(&t);
            let mut line = Vec::new();
            record.write_line(&mut line);
            let read = parse_point(&line[..line.len() - 1]);
            let handed = record.point();
            proptest::prop_assert_eq!(&handed, &read);
            if let (Ok(handed), Ok(read)) = (handed, read) {
                // Equal as numbers, and as bits: -0 is not handed over as -0.
                proptest::prop_assert_eq!(handed.output.to_bits(), read.output.to_bits());
            }
        }
    }

    #[test]
    fn poisoned_lines_are_reported_not_merged() {
        let body = b"{\"classId\":9,\"second\":1,\"racerId\":1,\"output\":1}\n\
                     {\"classId\":1,\"second\":1,\"racerId\":1,\"output\":-1}\n\
                     garbage\n\
                     {\"classId\":1,\"second\":2,\"racerId\":7,\"raceId\":3,\"output\":99.5}\n\
                     {\"classId\":1,\"second\":2,\"racerId\":7,\"output\":99.5}\n";
        let (points, bad) = parse_points(body);
        assert_eq!(points.len(), 1);
        assert_eq!(points[0].racer_id, RacerId(7));
        // A line without its raceId cannot be told apart from a
        // disqualified race's: refused too.
        assert_eq!(bad.iter().map(|b| b.0).collect::<Vec<_>>(), [0, 1, 2, 4]);
    }

    #[test]
    fn the_shard_is_read_back_from_a_key() {
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 9, 5, 7).unwrap();
        let key = delivery_key(at, "shardId-000000000003", "4968", "4970");
        assert_eq!(shard_of(&key), Some("shardId-000000000003"));
        assert_eq!(shard_of(&delivery_key(at, "0", "1", "2")), Some("0"));
        assert_eq!(shard_of("2026/11/26/09/other.gz"), None);
        assert_eq!(written_at(&key), Some(at));
        assert_eq!(written_at("2026/11/26/09/other.gz"), None);
    }

    #[test]
    fn keys_are_date_prefixed_and_sort_by_write_time() {
        let at = Utc.with_ymd_and_hms(2026, 11, 26, 9, 5, 7).unwrap();
        let key = delivery_key(
            at,
            "shard-0",
            "00000000000000000010",
            "00000000000000000020",
        );
        assert_eq!(
            key,
            "2026/11/26/09/alleycat-delivery-2026-11-26-09-05-07-shard-0-00000000000000000010-00000000000000000020.gz"
        );
        assert!(is_delivery_key(&key));
        assert!(!is_delivery_key(&failed_key(at, "s", "1", "2")));
        assert!(failed_key(at, "s", "1", "2").starts_with("processing-failed/2026/11/26/09/"));
        assert!(!is_delivery_key("class-1.gz"));
        let start = listing_start_after(at);
        assert!(key.as_str() > start.as_str());
        let earlier = delivery_key(at - chrono::Duration::seconds(1), "shard-9", "9", "9");
        assert!(earlier.as_str() < start.as_str());
    }

    #[test]
    fn hour_prefixes_cover_the_range() {
        let from = Utc.with_ymd_and_hms(2026, 12, 31, 22, 59, 0).unwrap();
        let to = Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 1).unwrap();
        assert_eq!(
            hour_prefixes(from, to),
            ["2026/12/31/22/", "2026/12/31/23/", "2027/01/01/00/"]
        );
        assert_eq!(hour_prefixes(to, to), ["2027/01/01/00/"]);
    }
}
