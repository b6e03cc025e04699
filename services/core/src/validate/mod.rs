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

mod diagnose;
mod fast;
mod framing;
mod rules;

pub use diagnose::validate_value;

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

/// Parses and validates a request body: all of its records, or why not.
pub fn parse_batch(body: &[u8], format: BodyFormat) -> Result<Vec<Telemetry>, BatchError> {
    match fast::batch(body, format) {
        Some(records) => Ok(records),
        None => diagnose::batch(body, format),
    }
}

/// Parses one record from raw JSON bytes (as read back from a stream).
pub fn parse_record(bytes: &[u8]) -> Result<Telemetry, Vec<FieldError>> {
    fast::record(bytes).map_or_else(|| diagnose::record(bytes), Ok)
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
    use proptest::prelude::*;
    use serde_json::Value;

    /// The schema's keys, in the order the checker reports them.
    const KEYS: [&str; 10] = [
        "uuid",
        "event",
        "deviceTimestamp",
        "second",
        "raceId",
        "name",
        "racerId",
        "classId",
        "cadence",
        "resistance",
    ];

    /// `s` as a JSON string, each character for which `escape` says so
    /// written as `\uXXXX` escapes (UTF-16, so surrogate pairs too).
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

    fn string() -> impl Strategy<Value = String> {
        (".{0,12}", prop::collection::vec(any::<bool>(), 12))
            .prop_map(|(s, escape)| quoted(&s, &escape))
    }

    /// Any JSON value, nested a few levels.
    fn json() -> impl Strategy<Value = String> {
        let leaf = prop_oneof![
            Just("null".to_owned()),
            Just("true".to_owned()),
            Just("false".to_owned()),
            any::<i64>().prop_map(|n| n.to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
            prop::num::f64::NORMAL
                | prop::num::f64::SUBNORMAL
                | prop::num::f64::ZERO
                | prop::num::f64::NEGATIVE
                | prop::num::f64::POSITIVE,
        ]
        .prop_map(|leaf| leaf);
        let leaf = prop_oneof![
            leaf.clone(),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| format!("{f:e}")),
            "-?(0|[1-9][0-9]{0,24})(\\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
            string(),
        ];
        leaf.prop_recursive(3, 24, 5, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(|v| format!("[{}]", v.join(","))),
                prop::collection::vec((key(), inner), 0..5).prop_map(|members| {
                    let members: Vec<_> = members.iter().map(|(k, v)| format!("{}:{v}", k.1)).collect();
                    format!("{{{}}}", members.join(","))
                }),
            ]
        })
    }
