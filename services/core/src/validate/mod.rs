//! Turning untrusted request bodies into validated [`Telemetry`].
//!
//! Every rule reports the offending field and a reason a person can act on;
//! a batch is all-or-nothing, so the caller gets either every record or every
//! problem.
//!
//! Two paths do the work. The typed fast path (`fast`) decodes well-formed
//! records without building a JSON tree; anything it refuses goes to the
//! diagnosing path (`diagnose`), which names every problem. Both apply the
//! same per-field `rules` and split bodies the same way (`framing`), so they
//! accept exactly the same records.
//!
//! How high cadence and resistance may go is a setting: every parser is a
//! method of [`SensorLimits`]; the free functions here check against its
//! defaults (services use the limits they are configured with).

mod diagnose;
mod fast;
mod framing;
mod limits;
mod rules;

pub use limits::{
    DEFAULT_MAX_CADENCE, DEFAULT_MAX_RESISTANCE, LimitError, SensorLimits, Validated,
    parse_sensor_limit,
};

use crate::telemetry::Telemetry;
use serde::Serialize;

/// Most records one request (or one WebSocket frame) may carry.
pub const MAX_BATCH_RECORDS: usize = 500;

/// How a request body encodes its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object, or a JSON array of objects.
    Json,
    /// Newline-delimited JSON: one object per non-blank line.
    NdJson,
}

/// One problem with one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RecordError {
    /// Position of the record in the batch (array index or NDJSON line, from 0).
    pub index: usize,
    /// The offending field, or `None` when the record as a whole is at fault.
    pub field: Option<&'static str>,
    /// What is wrong, in words.
    pub reason: String,
}

/// Why a batch was refused. Nothing of a refused batch is stored.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// The body (or some NDJSON lines) is not JSON at all.
    #[error("{message}")]
    Malformed {
        /// Summary.
        message: String,
        /// The lines at fault (NDJSON), empty for a JSON body.
        records: Vec<RecordError>,
    },
    /// No records in the body.
    #[error("the body holds no records")]
    Empty,
    /// More records than [`MAX_BATCH_RECORDS`].
    #[error("a batch holds at most {MAX_BATCH_RECORDS} records, this one has {0}")]
    TooManyRecords(usize),
    /// Well-formed JSON, but some records break the rules.
    #[error("{invalid} of {total} records {verb} invalid; nothing was accepted", verb = if *.invalid == 1 { "is" } else { "are" })]
    Invalid {
        /// Records in the batch.
        total: usize,
        /// Records with at least one problem.
        invalid: usize,
        /// Every problem found.
        records: Vec<RecordError>,
    },
}

impl BatchError {
    /// The per-record problems, if any.
    #[must_use]
    pub fn records(&self) -> &[RecordError] {
        match self {
            BatchError::Malformed { records, .. } | BatchError::Invalid { records, .. } => records,
            BatchError::Empty | BatchError::TooManyRecords(_) => &[],
        }
    }
}

/// One problem with one field of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, or `None` for the record as a whole.
    pub field: Option<&'static str>,
    /// What is wrong.
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    /// The field, then what is wrong with it: "cadence must be at most
    /// 200, got 250".
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.field {
            Some(field) => write!(f, "{field} {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

/// Every problem of one record in one line, as `processing-failed/`
/// objects and logs give them.
#[must_use]
pub fn describe(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// [`SensorLimits::parse_batch`] at the default limits.
pub fn parse_batch(body: &[u8], format: BodyFormat) -> Result<Vec<Telemetry>, BatchError> {
    SensorLimits::DEFAULT.parse_batch(body, format)
}

/// [`SensorLimits::parse_record`] at the default limits.
pub fn parse_record(bytes: &[u8]) -> Result<Telemetry, Vec<FieldError>> {
    SensorLimits::DEFAULT.parse_record(bytes)
}

/// [`SensorLimits::validate_value`] at the default limits.
pub fn validate_value(value: &serde_json::Value) -> Result<Telemetry, Vec<FieldError>> {
    SensorLimits::DEFAULT.validate_value(value)
}

/// The property tests' configuration: `default_cases` cases, or as many as
/// `PROPTEST_CASES` says (the longer run, see the README's Tests section).
#[cfg(test)]
pub(crate) fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
    proptest::test_runner::Config {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(default_cases),
        ..proptest::test_runner::Config::default()
    }
}

/// Records to validate, shared by the tests of every path.
#[cfg(test)]
mod fixtures {
    use super::validate_value;
    use serde_json::{Value, json};

    /// The reference message, valid in every field.
    pub(super) fn valid() -> Value {
        json!({"uuid": "0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12", "event": "update",
               "deviceTimestamp": 1_619_185_789_753_u64, "second": 3, "raceId": 5_397_285,
               "name": "Hubert", "racerId": 101, "classId": 1, "cadence": 80.25, "resistance": 78.5})
    }

    /// [`valid`] with `field` set to `value`.
    pub(super) fn with(field: &str, value: Value) -> Value {
        let mut v = valid();
        v[field] = value;
        v
    }

    /// [`valid`] without `field`.
    pub(super) fn without(field: &str) -> Value {
        let mut v = valid();
        v.as_object_mut().unwrap().remove(field);
        v
    }

    /// The single error a value produces, as (field, reason).
    pub(super) fn only_error(value: &Value) -> (Option<&'static str>, String) {
        let errors = validate_value(value).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        (errors[0].field, errors[0].reason.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{valid, without};
    use super::*;

    #[test]
    fn validated_telemetry_round_trips_through_its_wire_format() {
        let t = validate_value(&valid()).unwrap();
        let bytes = serde_json::to_vec(&t).unwrap();
        assert_eq!(parse_record(&bytes).unwrap(), t);
        let t = validate_value(&without("uuid")).unwrap();
        let text = serde_json::to_string(&t).unwrap();
        assert!(!text.contains("uuid"), "{text}");
    }
}

/// Property tests of the parser and validator on generated input: any
/// bytes, and JSON-ish bodies of records with valid, invalid, missing,
/// repeated (perhaps escaped) and unknown keys in any order, in every
/// format, perhaps damaged byte by byte. Nothing panics, both paths agree,
/// an accepted record holds what its input said and round-trips, and a
/// repeated field is refused.
#[cfg(test)]
mod fuzz {
    use super::diagnose::{self, REPEATED};
    use super::*;
    use crate::telemetry::{CLASS_COUNT, MAX_SAFE_INTEGER, MAX_SECOND, MAX_SENSOR_VALUE};
    use proptest::prelude::*;
    use proptest::sample::select;
    use serde_json::Value;

    /// The schema's keys, in the order the checker reports them.
    const KEYS: [&str; 10] = diagnose::FIELDS;

    /// `s` as a JSON string, each character for which `escape` says so
    /// (and every control character) written as `\uXXXX` escapes (UTF-16,
    /// so surrogate pairs too).
    fn quoted(s: &str, escape: &[bool]) -> String {
        let mut out = String::from("\"");
        for (i, c) in s.chars().enumerate() {
            if escape.get(i).copied().unwrap_or(false) || c.is_control() {
                let mut units = [0; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            } else if c == '"' || c == '\\' {
                out.push('\\');
                out.push(c);
            } else {
                out.push(c);
            }
        }
        out.push('"');
        out
    }

    fn escapes(len: usize) -> impl Strategy<Value = Vec<bool>> {
        prop::collection::vec(prop::bool::weighted(0.1), len)
    }

    /// A key as written (quoted, perhaps escaped) and as meant.
    fn key() -> impl Strategy<Value = (String, String)> {
        let name = prop_oneof![
            1 => select(&KEYS[..]).prop_map(str::to_owned),
            2 => select(&["firmware", "", "ClassId", "uuid ", "é"][..]).prop_map(str::to_owned),
            1 => ".{0,8}",
        ];
        (name, escapes(16)).prop_map(|(name, escape)| (quoted(&name, &escape), name))
    }

    /// Any JSON value (and a few numbers out of `f64`'s range), nested a
    /// few levels.
    fn json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            select(
                &[
                    "null", "true", "false", "0", "-0", "1e400", "-1e-400", "[]", "{}"
                ][..]
            )
            .prop_map(str::to_owned),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| f.to_string()),
            "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
            (".{0,12}", escapes(12)).prop_map(|(s, escape)| quoted(&s, &escape)),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((key(), inner), 0..5).prop_map(|members| {
                    let members: Vec<_> = members
                        .iter()
                        .map(|((key, _), value)| format!("{key}:{value}"))
                        .collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }

    /// A valid value of field `field`, as JSON text.
    fn valid_value(field: usize) -> BoxedStrategy<String> {
        match KEYS[field] {
            "uuid" => prop_oneof![
                "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
                    .prop_map(|uuid| format!("\"{uuid}\"")),
                Just("null".to_owned()),
            ]
            .boxed(),
            "event" => (select(&["update", "final"][..]), escapes(5))
                .prop_map(|(event, escape)| quoted(event, &escape))
                .boxed(),
            "second" => (1..=MAX_SECOND).prop_map(|n| n.to_string()).boxed(),
            "classId" => (1..=CLASS_COUNT).prop_map(|n| n.to_string()).boxed(),
            "name" => ("[^\\p{Cc}]{0,64}", escapes(64))
                .prop_map(|(name, escape)| quoted(&name, &escape))
                .boxed(),
            // Valid at the default limits (what `jsonish_bodies...` checks
            // acceptance against); `agree` also runs under other limits.
            "cadence" => sensor_value(DEFAULT_MAX_CADENCE, &["200.0", "2e2", "2E+2"]),
            "resistance" => sensor_value(DEFAULT_MAX_RESISTANCE, &["100.0", "1e2", "1E2"]),
            _ => (0..=MAX_SAFE_INTEGER).prop_map(|n| n.to_string()).boxed(),
        }
    }

    /// A valid sensor value up to `max`, as JSON text; `at_max` spells
    /// `max` itself.
    fn sensor_value(max: f64, at_max: &'static [&'static str]) -> BoxedStrategy<String> {
        prop_oneof![
            (0u32..=max as u32).prop_map(|n| n.to_string()),
            (0.0..=max).prop_map(|f| f.to_string()),
            (0.0..=max).prop_map(|f| format!("{f:E}")),
            select(&["-0", "-0.0", "0E0", "0.5e-3"][..]).prop_map(str::to_owned),
            select(at_max).prop_map(str::to_owned),
        ]
        .boxed()
    }

    /// Sensor limits other than the defaults.
    fn limits() -> impl Strategy<Value = SensorLimits> {
        let limit = prop_oneof![
            0.001..=MAX_SENSOR_VALUE,
            select(&[0.5, 1.0, 99.5, 150.0, 250.0, MAX_SENSOR_VALUE][..]),
        ];
        (limit.clone(), limit).prop_map(|(c, r)| SensorLimits::new(c, r).unwrap())
    }

    /// One member of a record.
    #[derive(Debug, Clone)]
    struct Member {
        /// The key as written.
        key: String,
        /// The key as meant.
        meant: String,
        value: String,
        /// Whether `value` is known to be valid for the key.
        valid: bool,
        /// Whitespace around the member.
        space: &'static str,
    }

    /// One record: its text, and what its generator knows of it.
    #[derive(Debug, Clone)]
    struct Record {
        text: String,
        /// Every field once with a valid value (`uuid` perhaps absent).
        valid: bool,
        /// The fields whose key it repeats.
        repeated: Vec<&'static str>,
    }

    fn space() -> impl Strategy<Value = &'static str> {
        select(&["", "", " ", "\t", "\r", " \t "][..])
    }

    fn record() -> impl Strategy<Value = Record> {
        let fields: Vec<_> = (0..KEYS.len())
            .map(|field| {
                prop_oneof![
                    30 => valid_value(field).prop_map(|v| (Some(v), true)),
                    1 => json().prop_map(|v| (Some(v), false)),
                    1 => Just((None, false)),
                ]
            })
            .collect();
        let repeat = (0..KEYS.len())
            .prop_flat_map(|field| (Just(field), prop_oneof![valid_value(field), json().boxed()]));
        (
            fields,
            prop::collection::vec(escapes(16), KEYS.len()),
            prop::option::weighted(0.2, prop::collection::vec((repeat, escapes(16)), 1..3)),
            prop::collection::vec((key(), json()), 0..3),
            prop::collection::vec(space(), 16),
        )
            .prop_flat_map(|(fields, key_escapes, repeats, unknown, spaces)| {
                let mut members = Vec::new();
                for (field, ((value, valid), escape)) in
                    fields.into_iter().zip(key_escapes).enumerate()
                {
                    if let Some(value) = value {
                        members.push((field, value, valid, escape));
                    }
                }
                for ((field, value), escape) in repeats.unwrap_or_default() {
                    members.push((field, value, false, escape));
                }
                let mut members: Vec<Member> = members
                    .into_iter()
                    .map(|(field, value, valid, escape)| Member {
                        key: quoted(KEYS[field], &escape),
                        meant: KEYS[field].to_owned(),
                        value,
                        valid,
                        space: "",
                    })
                    .collect();
                members.extend(unknown.into_iter().map(|((key, meant), value)| Member {
                    key,
                    meant,
                    value,
                    valid: false,
                    space: "",
                }));
                for (member, space) in members.iter_mut().zip(spaces) {
                    member.space = space;
                }
                Just(members).prop_shuffle()
            })
            .prop_map(|members| {
                let count = |key: &str| members.iter().filter(|m| m.meant == key).count();
                let valid = KEYS.iter().all(|key| {
                    let mut with_key = members.iter().filter(|m| m.meant == *key);
                    match (with_key.next(), with_key.next()) {
                        (Some(member), None) => member.valid,
                        (None, None) => *key == "uuid",
                        _ => false,
                    }
                });
                let repeated = KEYS.iter().copied().filter(|key| count(key) > 1).collect();
                let text: Vec<_> = members
                    .iter()
                    .map(|m| format!("{s}{}{s}:{s}{}{s}", m.key, m.value, s = m.space))
                    .collect();
                Record {
                    text: format!("{{{}}}", text.join(",")),
                    valid,
                    repeated,
                }
            })
    }

    /// How records are put in a body.
    #[derive(Debug, Clone)]
    enum Shape {
        /// A JSON object (one record) or array, records apart by these.
        Json(&'static str),
        /// NDJSON: each line ended by `\r\n` or `\n`, a blank line before
        /// some, a last newline or not.
        NdJson {
            crlf: Vec<bool>,
            blank: Vec<Option<&'static str>>,
            trailing: bool,
        },
    }

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            select(&["", " ", "\n", "\r\n\t"][..]).prop_map(Shape::Json),
            (
                prop::collection::vec(any::<bool>(), 8),
                prop::collection::vec(
                    prop::option::weighted(0.2, select(&["", " ", "\r", "\t \r"][..])),
                    8
                ),
                any::<bool>(),
            )
                .prop_map(|(crlf, blank, trailing)| Shape::NdJson {
                    crlf,
                    blank,
                    trailing
                }),
        ]
    }

    fn body(records: &[Record], shape: &Shape) -> (Vec<u8>, BodyFormat) {
        let texts = records.iter().map(|r| r.text.as_str());
        match shape {
            Shape::Json(apart) if records.len() == 1 => (
                format!("{apart}{}{apart}", records[0].text).into_bytes(),
                BodyFormat::Json,
            ),
            Shape::Json(apart) => {
                let items: Vec<_> = texts.map(|t| format!("{apart}{t}")).collect();
                (
                    format!("[{}{apart}]", items.join(",")).into_bytes(),
                    BodyFormat::Json,
                )
            }
            Shape::NdJson {
                crlf,
                blank,
                trailing,
            } => {
                let mut body = String::new();
                for (i, text) in texts.enumerate() {
                    let end = if crlf[i % crlf.len()] { "\r\n" } else { "\n" };
                    if let Some(blank) = blank[i % blank.len()] {
                        body.push_str(blank);
                        body.push_str(end);
                    }
                    body.push_str(text);
                    if *trailing || i + 1 < records.len() {
                        body.push_str(end);
                    }
                }
                (body.into_bytes(), BodyFormat::NdJson)
            }
        }
    }

    /// Up to three byte edits: (position, byte, 0 replace / 1 insert / 2
    /// delete / 3 cut there).
    fn damage() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
        let byte = prop_oneof![
            select(&b"{}[]\":,\\-.0123456789eEnu \t\r\n"[..]),
            any::<u8>()
        ];
        prop::option::weighted(
            0.3,
            prop::collection::vec((any::<usize>(), byte, 0u8..4), 1..4),
        )
        .prop_map(Option::unwrap_or_default)
    }

    fn apply(mut body: Vec<u8>, damage: &[(usize, u8, u8)]) -> Vec<u8> {
        for &(at, byte, how) in damage {
            let at = at % (body.len() + 1);
            match how {
                0 if at < body.len() => body[at] = byte,
                1 => body.insert(at, byte),
                2 if at < body.len() => {
                    body.remove(at);
                }
                3 => body.truncate(at),
                _ => {}
            }
        }
        body
    }

    /// The records of a body as `serde_json` reads them (the last of
    /// repeated keys wins), framed independently of `framing`; `None` when
    /// it is not JSON.
    fn json_records(body: &[u8], format: BodyFormat) -> Option<Vec<Value>> {
        match format {
            BodyFormat::Json => match serde_json::from_slice(body).ok()? {
                Value::Array(items) => Some(items),
                object @ Value::Object(_) => Some(vec![object]),
                _ => None,
            },
            BodyFormat::NdJson => body
                .split(|b| *b == b'\n')
                .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                .map(|line| serde_json::from_slice(line).ok())
                .collect(),
        }
    }

    /// The schema's fields of a record as `serde_json` reads them, every
    /// other field skipped unread (it may hold what a [`Value`] cannot, such
    /// as a number past `f64`'s range).
    #[derive(serde::Deserialize)]
    struct Input {
        uuid: Option<Value>,
        event: Option<Value>,
        #[serde(rename = "deviceTimestamp")]
        device_timestamp: Option<Value>,
        second: Option<Value>,
        #[serde(rename = "raceId")]
        race_id: Option<Value>,
        name: Option<Value>,
        #[serde(rename = "racerId")]
        racer_id: Option<Value>,
        #[serde(rename = "classId")]
        class_id: Option<Value>,
        cadence: Option<Value>,
        resistance: Option<Value>,
    }

    impl Input {
        fn get(&self, key: &str) -> Option<&Value> {
            match key {
                "uuid" => self.uuid.as_ref(),
                "event" => self.event.as_ref(),
                "deviceTimestamp" => self.device_timestamp.as_ref(),
                "second" => self.second.as_ref(),
                "raceId" => self.race_id.as_ref(),
                "name" => self.name.as_ref(),
                "racerId" => self.racer_id.as_ref(),
                "classId" => self.class_id.as_ref(),
                "cadence" => self.cadence.as_ref(),
                "resistance" => self.resistance.as_ref(),
                _ => unreachable!("{key}"),
            }
        }
    }

    /// The records of an accepted body, framed independently of `framing`.
    fn inputs(body: &[u8], format: BodyFormat) -> Vec<Input> {
        match format {
            BodyFormat::Json if body.trim_ascii_start().starts_with(b"[") => {
                serde_json::from_slice(body).expect("accepted")
            }
            BodyFormat::Json => vec![serde_json::from_slice(body).expect("accepted")],
            BodyFormat::NdJson => body
                .split(|b| *b == b'\n')
                .filter(|line| !line.iter().all(u8::is_ascii_whitespace))
                .map(|line| serde_json::from_slice(line).expect("accepted"))
                .collect(),
        }
    }

    /// The accepted records hold exactly what their input said.
    fn hold_the_input(
        body: &[u8],
        format: BodyFormat,
        accepted: &[Telemetry],
    ) -> Result<(), TestCaseError> {
        let inputs = inputs(body, format);
        prop_assert_eq!(inputs.len(), accepted.len());
        for (input, record) in inputs.iter().zip(accepted) {
            let stored = serde_json::to_value(record).unwrap();
            for key in KEYS {
                let same = match (input.get(key), stored.get(key)) {
                    (None | Some(Value::Null), None) => true,
                    (Some(Value::Number(a)), Some(Value::Number(b))) => a.as_f64() == b.as_f64(),
                    (Some(a), Some(b)) => a == b,
                    _ => false,
                };
                prop_assert!(same, "{}: {:?} stored as {}", key, input.get(key), stored);
            }
        }
        Ok(())
    }

    /// Accepted records re-serialize, alone, as an array and as NDJSON, to
    /// text that parses to the same records.
    fn round_trip(accepted: &[Telemetry]) -> Result<(), TestCaseError> {
        let array = serde_json::to_vec(accepted).unwrap();
        prop_assert_eq!(&parse_batch(&array, BodyFormat::Json).unwrap(), accepted);
        let lines: Vec<_> = accepted
            .iter()
            .map(|t| serde_json::to_string(t).unwrap())
            .collect();
        let ndjson = lines.join("\n");
        prop_assert_eq!(
            &parse_batch(ndjson.as_bytes(), BodyFormat::NdJson).unwrap(),
            accepted
        );
        for (line, record) in lines.iter().zip(accepted) {
            prop_assert_eq!(&parse_record(line.as_bytes()).unwrap(), record);
        }
        Ok(())
    }

    /// Both paths give the same answer, for the body in either format and
    /// as one record, at the default limits and at `limits`; what is
    /// accepted round-trips.
    fn agree(body: &[u8], limits: SensorLimits) -> Result<(), TestCaseError> {
        for format in [BodyFormat::Json, BodyFormat::NdJson] {
            let result = parse_batch(body, format);
            prop_assert_eq!(
                &result,
                &diagnose::batch(body, format, SensorLimits::DEFAULT)
            );
            if let Ok(accepted) = &result {
                round_trip(accepted)?;
                hold_the_input(body, format, accepted)?;
            }
            prop_assert_eq!(
                limits.parse_batch(body, format),
                diagnose::batch(body, format, limits)
            );
        }
        let one = parse_record(body);
        prop_assert_eq!(&one, &diagnose::record(body, SensorLimits::DEFAULT));
        if let Ok(record) = one {
            round_trip(&[record])?;
        }
        prop_assert_eq!(limits.parse_record(body), diagnose::record(body, limits));
        Ok(())
    }

    /// Bytes to fuzz with: anything, or a soup of JSON tokens.
    fn bytes() -> impl Strategy<Value = Vec<u8>> {
        const TOKENS: [&str; 24] = [
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "0",
            "17",
            "-1.5e3",
            "null",
            "true",
            " ",
            "\n",
            "\r\n",
            "\\u0041",
            "\\",
            "\"classId\"",
            "\"cadence\"",
            "\"update\"",
            "\"x\"",
            "1e400",
            "\u{e9}",
            "\u{0}",
        ];
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..256),
            prop::collection::vec(select(&TOKENS[..]), 0..64).prop_map(|t| t.concat().into_bytes()),
        ]
    }

    proptest! {
        #![proptest_config(proptest_config(1000))]

        #[test]
        fn any_bytes_are_answered_alike_by_both_paths(bytes in bytes(), limits in limits()) {
            agree(&bytes, limits)?;
        }

        #[test]
        fn jsonish_bodies_are_checked_by_the_rules(
            records in prop::collection::vec(record(), 0..5),
            shape in shape(),
            damage in damage(),
            limits in limits(),
        ) {
            let (body, format) = body(&records, &shape);
            let damaged = apply(body.clone(), &damage);
            agree(&damaged, limits)?;
            agree(&body, limits)?;
            let result = parse_batch(&body, format);
            if json_records(&body, format).is_some() {
                // Undamaged and JSON: what the generator knows holds.
                for (index, record) in records.iter().enumerate() {
                    for field in &record.repeated {
                        let refused = RecordError {
                            index,
                            field: Some(field),
                            reason: REPEATED.to_owned(),
                        };
                        prop_assert!(
                            result.as_ref().is_err_and(|e| e.records().contains(&refused)),
                            "{:?} for {}", result, String::from_utf8_lossy(&body)
                        );
                    }
                }
                if !records.is_empty() && records.iter().all(|r| r.valid) {
                    prop_assert_eq!(
                        result.as_ref().map(Vec::len),
                        Ok(records.len()),
                        "{}", String::from_utf8_lossy(&body)
                    );
                }
            }
        }
    }
}
