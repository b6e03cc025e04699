//! Reading class files the original system wrote, leniently.
//!
//! The original merged records without validating them, so its files can
//! hold what a class file must not: `null` values (`JSON.stringify` of NaN),
//! keys such as `"undefined"` (a record without a second or racerId),
//! seconds out of range, racer ids that are not integers, values that are
//! not numbers or are negative. It also stored values unrounded. Reading
//! one keeps every valid best, rounded as the original's real-time path
//! rounded ([`js_number::round`]), and counts what it drops, by reason.
//!
//! The file is streamed through serde (no JSON tree), so a 50 MB class
//! costs little more memory than its history.

use super::{ClassHistory, HistoryError, MAX_CLASS_FILE_BYTES};
use crate::codec;
use crate::js_number;
use crate::output::OUTPUT_DECIMALS;
use crate::telemetry::{MAX_SAFE_INTEGER, RacerId, Second, canonical_integer};
use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::collections::BTreeMap;
use std::fmt;

/// Why a best of an original class file was not imported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// A second key that is not an integer in canonical decimal
    /// (`"undefined"`, `"1.5"`, `"01"`): the frontend never looks it up.
    SecondNotAnInteger,
    /// A second outside 1 to [`MAX_SECOND`](crate::telemetry::MAX_SECOND).
    SecondOutOfRange,
    /// A second whose value is not an object of racers (counted once).
    SecondNotAnObject,
    /// A racer id key that is not an integer in canonical decimal.
    RacerNotAnInteger,
    /// A racer id above 2^53 - 1.
    RacerOutOfRange,
    /// A `null` value.
    Null,
    /// A value that is not a number (a string, a boolean, an object, an
    /// array).
    NotANumber,
    /// A negative value.
    Negative,
    /// A value the original rounding turns into NaN: below 1e-6 or from
    /// 1e21, where JavaScript prints it with an exponent.
    Unroundable,
}

impl DropReason {
    /// Every reason, in report order.
    pub const ALL: [DropReason; 9] = [
        DropReason::SecondNotAnInteger,
        DropReason::SecondOutOfRange,
        DropReason::SecondNotAnObject,
        DropReason::RacerNotAnInteger,
        DropReason::RacerOutOfRange,
        DropReason::Null,
        DropReason::NotANumber,
        DropReason::Negative,
        DropReason::Unroundable,
    ];
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DropReason::SecondNotAnInteger => "second not an integer",
            DropReason::SecondOutOfRange => "second out of range",
            DropReason::SecondNotAnObject => "second not an object",
            DropReason::RacerNotAnInteger => "racer id not an integer",
            DropReason::RacerOutOfRange => "racer id out of range",
            DropReason::Null => "null value",
            DropReason::NotANumber => "value not a number",
            DropReason::Negative => "negative value",
            DropReason::Unroundable => "value not roundable",
        })
    }
}

/// Examples kept per reason: enough to find the problem in the file.
const EXAMPLES: usize = 3;
/// Longest example kept, in characters (keys are client-made).
const EXAMPLE_CHARS: usize = 40;

/// What reading an original class file dropped: a count per reason, and
/// the first few examples of each (bounded).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DropReport {
    counts: BTreeMap<DropReason, u64>,
    examples: BTreeMap<DropReason, Vec<String>>,
}

impl DropReport {
    /// Counts `n` bests dropped for `reason`; `example` (e.g. `"0" at
    /// second "3"`) is kept while there are few.
    pub fn add(&mut self, reason: DropReason, n: u64, example: impl FnOnce() -> String) {
        *self.counts.entry(reason).or_default() += n;
        let examples = self.examples.entry(reason).or_default();
        if examples.len() < EXAMPLES {
            let mut example = example();
            if let Some((cut, _)) = example.char_indices().nth(EXAMPLE_CHARS) {
                example.truncate(cut);
                example.push('…');
            }
            if !examples.contains(&example) {
                examples.push(example);
            }
        }
    }

    /// How many bests were dropped for `reason`.
    #[must_use]
    pub fn count(&self, reason: DropReason) -> u64 {
        self.counts.get(&reason).copied().unwrap_or(0)
    }

    /// How many bests were dropped in all.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Adds every count (and examples, bounded) of `other`.
    pub fn merge(&mut self, other: &DropReport) {
        for (&reason, &n) in &other.counts {
            *self.counts.entry(reason).or_default() += n;
            let examples = self.examples.entry(reason).or_default();
            for example in other.examples.get(&reason).into_iter().flatten() {
                if examples.len() < EXAMPLES && !examples.contains(example) {
                    examples.push(example.clone());
                }
            }
        }
    }
}

/// `null value 2; second out of range 1 (e.g. "0")`, or `nothing`.
impl fmt::Display for DropReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.counts.is_empty() {
            return f.write_str("nothing");
        }
        for (i, (reason, n)) in self.counts.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{reason} {n}")?;
            if let Some(examples) = self.examples.get(reason).filter(|e| !e.is_empty()) {
                write!(f, " (e.g. {})", examples.join(", "))?;
            }
        }
        Ok(())
    }
}

impl ClassHistory {
    /// Reads a class file the original system wrote (gzip or plain JSON
    /// `{"<second>": {"<racerId>": <output>}}`), keeping every valid best
    /// rounded as the original's real-time path rounded
    /// (`Number(Math.round(v+'e'+4)+'e-'+4)`), and reports what it dropped.
    /// Fails only when the whole file is not such an object (not JSON, not
    /// gzip of it, or larger than [`MAX_CLASS_FILE_BYTES`] decompressed).
    pub fn from_original(bytes: &[u8]) -> Result<(ClassHistory, DropReport), HistoryError> {
        let json;
        let text = if bytes.starts_with(&[0x1f, 0x8b]) {
            json = codec::gunzip(bytes, MAX_CLASS_FILE_BYTES)?;
            &json[..]
        } else if bytes.len() as u64 > MAX_CLASS_FILE_BYTES {
            return Err(HistoryError::Format(format!(
                "larger than {MAX_CLASS_FILE_BYTES} bytes"
            )));
        } else {
            bytes
        };
        let mut history = ClassHistory::default();
        let mut report = DropReport::default();
        let mut deserializer = serde_json::Deserializer::from_slice(text);
        Seconds {
            history: &mut history,
            report: &mut report,
        }
        .deserialize(&mut deserializer)
        .and_then(|()| deserializer.end())
        .map_err(|e| HistoryError::Format(e.to_string()))?;
        Ok((history, report))
    }
}

fn quoted(key: &str) -> String {
    format!("{key:?}")
}

/// The top-level object: seconds.
struct Seconds<'a> {
    history: &'a mut ClassHistory,
    report: &'a mut DropReport,
}

impl<'de> DeserializeSeed<'de> for Seconds<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Seconds<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of seconds")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let second = match canonical_integer(&key, u64::from(u16::MAX)) {
                Ok(n) => Second::new(n).ok_or(DropReason::SecondOutOfRange),
                Err(true) => Err(DropReason::SecondOutOfRange),
                Err(false) => Err(DropReason::SecondNotAnInteger),
            };
            map.next_value_seed(Racers {
                key: &key,
                second,
                history: self.history,
                report: self.report,
            })?;
        }
        Ok(())
    }
}

/// One second's value: an object of racers, or something to drop.
struct Racers<'a> {
    key: &'a str,
    second: Result<Second, DropReason>,
    history: &'a mut ClassHistory,
    report: &'a mut DropReport,
}

impl Racers<'_> {
    /// The second's whole value is dropped (counted once).
    fn drop_all<E>(self) -> Result<(), E> {
        let reason = self.second.err().unwrap_or(DropReason::SecondNotAnObject);
        let key = self.key;
        self.report.add(reason, 1, || quoted(key));
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Racers<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Racers<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object of racers")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(racer) = map.next_key::<String>()? {
            let value: Value = map.next_value()?;
            let second = match self.second {
                Ok(second) => second,
                Err(reason) => {
                    let key = self.key;
                    self.report.add(reason, 1, || quoted(key));
                    continue;
                }
            };
            let racer_id = match canonical_integer(&racer, MAX_SAFE_INTEGER) {
                Ok(id) => RacerId(id),
                Err(out_of_range) => {
                    let reason = if out_of_range {
                        DropReason::RacerOutOfRange
                    } else {
                        DropReason::RacerNotAnInteger
                    };
                    self.report.add(reason, 1, || {
                        format!("{} at second {second}", quoted(&racer))
                    });
                    continue;
                }
            };
            let example = |what: &str| format!("{what} of racer {racer_id} at second {second}");
            match value {
                Value::Null => self.report.add(DropReason::Null, 1, || example("null")),
                Value::Other => self
                    .report
                    .add(DropReason::NotANumber, 1, || example("a non-number")),
                Value::Number(v) if v < 0.0 => self.report.add(DropReason::Negative, 1, || {
                    example(&js_number::to_string(v))
                }),
                Value::Number(v) => {
                    let rounded = js_number::round(v, OUTPUT_DECIMALS);
                    if rounded.is_finite() {
                        self.history.merge(second, racer_id, rounded);
                    } else {
                        self.report.add(DropReason::Unroundable, 1, || {
                            example(&js_number::to_string(v))
                        });
                    }
                }
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        self.drop_all()
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.drop_all()
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.drop_all()
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.drop_all()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.drop_all()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.drop_all()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.drop_all()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.drop_all()
    }
}

/// A racer's value, as far as importing cares.
enum Value {
    Number(f64),
    Null,
    Other,
}

impl<'de> de::Deserialize<'de> for Value {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(Value::Number(v))
    }

    // JSON.parse reads every number as the nearest double: so does `as`.
    #[allow(clippy::cast_precision_loss)]
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }

    #[allow(clippy::cast_precision_loss)]
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v as f64))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Value, E> {
        Ok(Value::Other)
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<Value, E> {
        Ok(Value::Other)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Value::Other)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Value::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(json: &str) -> (ClassHistory, DropReport) {
        ClassHistory::from_original(json.as_bytes()).unwrap()
    }

    #[test]
    fn keeps_valid_bests_rounded_as_javascript() {
        let (history, report) =
            read(r#"{"1":{"101":83.53784999999999,"102":165.38375,"7":81},"300":{"101":22.75}}"#);
        assert_eq!(report.total(), 0, "{report}");
        assert_eq!(history.best(Second(1), RacerId(101)), Some(83.5378));
        assert_eq!(history.best(Second(1), RacerId(102)), Some(165.3838));
        assert_eq!(history.best(Second(1), RacerId(7)), Some(81.0));
        assert_eq!(history.best(Second(300), RacerId(101)), Some(22.75));
        assert_eq!(history.len(), 4);
        assert_eq!(report.to_string(), "nothing");
    }

    #[test]
    fn accepts_gzip_and_plain() {
        let json = br#"{"2":{"5":100.123456}}"#;
        let (plain, _) = ClassHistory::from_original(json).unwrap();
        let (gzipped, _) = ClassHistory::from_original(&codec::gzip(json, 6)).unwrap();
        assert_eq!(plain, gzipped);
        assert_eq!(plain.best(Second(2), RacerId(5)), Some(100.1235));
        // Concatenated members, as Node's gunzipSync accepts them.
        let mut two = codec::gzip(br#"{"2":{"5":1,"#, 6);
        two.extend(codec::gzip(br#""6":2}}"#, 6));
        assert_eq!(ClassHistory::from_original(&two).unwrap().0.len(), 2);
    }

    #[test]
    fn drops_every_kind_of_invalid_entry_and_says_why() {
        let (history, report) = read(
            r#"{
                "undefined": {"1": 10, "2": 20},
                "1.5": {"1": 10},
                "01": {"1": 10},
                "0": {"1": 10},
                "3601": {"1": 10, "2": 11, "3": 12},
                "99999999999999999999999": {"1": 10},
                "4": null,
                "5": 12.5,
                "6": [1, 2],
                "7": "x",
                "10": {
                    "undefined": 1,
                    "-3": 1,
                    "1.0": 1,
                    "007": 1,
                    "9007199254740992": 1,
                    "9007199254740991": 1,
                    "101": null,
                    "102": "12.5",
                    "103": true,
                    "104": {"a": 1},
                    "105": [1],
                    "106": -0.5,
                    "107": 1e21,
                    "108": 1e-7,
                    "109": 0.00001,
                    "110": 1e300
                }
            }"#,
        );
        use DropReason::*;
        let counts: Vec<(DropReason, u64)> = DropReason::ALL
            .iter()
            .map(|&r| (r, report.count(r)))
            .collect();
        assert_eq!(
            counts,
            [
                (SecondNotAnInteger, 4),
                (SecondOutOfRange, 5),
                (SecondNotAnObject, 4),
                (RacerNotAnInteger, 4),
                (RacerOutOfRange, 1),
                (Null, 1),
                (NotANumber, 4),
                (Negative, 1),
                (Unroundable, 3),
            ]
        );
        assert_eq!(report.total(), 27);
        // Kept: the largest safe racer id, and 0.00001 rounded to 0.
        assert_eq!(history.len(), 2);
        assert_eq!(
            history.best(Second(10), RacerId(9_007_199_254_740_991)),
            Some(1.0)
        );
        assert_eq!(history.best(Second(10), RacerId(109)), Some(0.0));
        let text = report.to_string();
        assert!(
            text.contains(r#"second not an integer 4 (e.g. "undefined""#),
            "{text}"
        );
        assert!(
            text.contains("null value 1 (e.g. null of racer 101 at second 10)"),
            "{text}"
        );
        assert!(
            text.contains("value not roundable 3 (e.g. 1e+21 of racer 107"),
            "{text}"
        );
    }

    #[test]
    fn refuses_what_is_not_a_class_file_at_all() {
        for bad in ["[1]", "nope", "", "{\"1\":{}", "{} {}", "null"] {
            assert!(
                ClassHistory::from_original(bad.as_bytes()).is_err(),
                "{bad:?}"
            );
        }
        assert!(ClassHistory::from_original(&[0x1f, 0x8b, 0, 1]).is_err());
        let (empty, report) = read("{}");
        assert!(empty.is_empty() && report.total() == 0);
    }

    #[test]
    fn duplicate_keys_keep_the_maximum_and_examples_are_bounded() {
        let (history, report) = read(r#"{"1":{"5":10,"5":12.00004,"5":11}}"#);
        assert_eq!(history.best(Second(1), RacerId(5)), Some(12.0));
        assert_eq!(report.total(), 0);
        let many: Vec<String> = (0..100).map(|i| format!(r#""x{i}":{{"1":1}}"#)).collect();
        let (_, report) = read(&format!("{{{}}}", many.join(",")));
        assert_eq!(report.count(DropReason::SecondNotAnInteger), 100);
        assert_eq!(report.to_string().matches("\"x").count(), EXAMPLES);
        let mut merged = report.clone();
        merged.merge(&report);
        assert_eq!(merged.total(), 200);
        assert_eq!(merged.to_string(), report.to_string().replace("100", "200"));
    }
}
