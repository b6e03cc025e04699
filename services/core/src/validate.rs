//! Turning untrusted request bodies into validated [`Telemetry`].
//!
//! Every rule reports the offending field and a reason a person can act on;
//! a batch is all-or-nothing, so the caller gets either every record or every
//! problem.

use crate::telemetry::{
    ClassId, Event, MAX_NAME_CHARS, MAX_SAFE_INTEGER, MAX_SECOND, MAX_SENSOR_VALUE, RaceId,
    RacerId, Second, Telemetry,
};
use serde::Serialize;
use serde_json::{Map, Value};
use std::borrow::Cow;

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

/// Parses and validates a request body: all of its records, or why not.
pub fn parse_batch(body: &[u8], format: BodyFormat) -> Result<Vec<Telemetry>, BatchError> {
    match fast_batch(body, format) {
        Some(records) => Ok(records),
        None => diagnose_batch(body, format),
    }
}

/// [`parse_batch`] through [`Value`]s, naming every problem.
fn diagnose_batch(body: &[u8], format: BodyFormat) -> Result<Vec<Telemetry>, BatchError> {
    let values = match format {
        BodyFormat::Json => json_values(body)?,
        BodyFormat::NdJson => ndjson_values(body)?,
    };
    if values.is_empty() {
        return Err(BatchError::Empty);
    }
    if values.len() > MAX_BATCH_RECORDS {
        return Err(BatchError::TooManyRecords(values.len()));
    }
    let total = values.len();
    let mut records = Vec::with_capacity(total);
    let mut problems = Vec::new();
    let mut invalid = 0;
    for (index, value) in values.iter().enumerate() {
        match validate_value(value) {
            Ok(record) => records.push(record),
            Err(errors) => {
                invalid += 1;
                problems.extend(errors.into_iter().map(|e| RecordError {
                    index,
                    field: e.field,
                    reason: e.reason,
                }));
            }
        }
    }
    if invalid > 0 {
        return Err(BatchError::Invalid {
            total,
            invalid,
            records: problems,
        });
    }
    Ok(records)
}

fn json_values(body: &[u8]) -> Result<Vec<Value>, BatchError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => Ok(items),
        Ok(object @ Value::Object(_)) => Ok(vec![object]),
        Ok(other) => Err(BatchError::Malformed {
            message: format!(
                "body must be a JSON object or an array of objects, got {}",
                type_name(&other)
            ),
            records: Vec::new(),
        }),
        Err(e) => Err(BatchError::Malformed {
            message: format!("body is not valid JSON: {e}"),
            records: Vec::new(),
        }),
    }
}

fn ndjson_values(body: &[u8]) -> Result<Vec<Value>, BatchError> {
    let mut values = Vec::new();
    let mut broken = Vec::new();
    for (index, line) in body
        .split(|b| *b == b'\n')
        .filter(|line| !line.trim_ascii().is_empty())
        .enumerate()
    {
        match serde_json::from_slice::<Value>(line) {
            Ok(value) => values.push(value),
            Err(e) => broken.push(RecordError {
                index,
                field: None,
                reason: format!("line is not valid JSON: {e}"),
            }),
        }
    }
    if !broken.is_empty() {
        return Err(BatchError::Malformed {
            message: format!(
                "{} NDJSON line{} not valid JSON; nothing was accepted",
                broken.len(),
                if broken.len() == 1 { " is" } else { "s are" }
            ),
            records: broken,
        });
    }
    Ok(values)
}

/// One problem with one field of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field, or `None` for the record as a whole.
    pub field: Option<&'static str>,
    /// What is wrong.
    pub reason: String,
}

/// Parses one record from raw JSON bytes (as read back from a stream).
pub fn parse_record(bytes: &[u8]) -> Result<Telemetry, Vec<FieldError>> {
    fast_record(bytes).map_or_else(|| diagnose_record(bytes), Ok)
}

/// [`parse_record`] through a [`Value`], naming every problem.
fn diagnose_record(bytes: &[u8]) -> Result<Telemetry, Vec<FieldError>> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(value) => validate_value(&value),
        Err(e) => Err(vec![FieldError {
            field: None,
            reason: format!("not valid JSON: {e}"),
        }]),
    }
}

/// Validates one JSON value as a telemetry message, reporting every problem.
/// Unknown extra fields are ignored.
pub fn validate_value(value: &Value) -> Result<Telemetry, Vec<FieldError>> {
    let Value::Object(object) = value else {
        return Err(vec![FieldError {
            field: None,
            reason: format!("must be a JSON object, got {}", type_name(value)),
        }]);
    };
    let mut check = Checker {
        object,
        errors: Vec::new(),
    };
    let uuid = check.uuid("uuid");
    let event = check.event("event");
    let device_timestamp = check.integer("deviceTimestamp", 0, MAX_SAFE_INTEGER);
    let second = check.integer("second", 1, u64::from(MAX_SECOND));
    let race_id = check.integer("raceId", 0, MAX_SAFE_INTEGER);
    let name = check.name("name");
    let racer_id = check.integer("racerId", 0, MAX_SAFE_INTEGER);
    let class_id = check.integer("classId", 1, u64::from(crate::telemetry::CLASS_COUNT));
    let cadence = check.sensor("cadence");
    let resistance = check.sensor("resistance");
    match (
        uuid,
        event,
        device_timestamp,
        second.and_then(Second::new),
        race_id,
        name,
        racer_id,
        class_id.and_then(ClassId::new),
        cadence,
        resistance,
    ) {
        (
            Some(uuid),
            Some(event),
            Some(device_timestamp),
            Some(second),
            Some(race_id),
            Some(name),
            Some(racer_id),
            Some(class_id),
            Some(cadence),
            Some(resistance),
        ) if check.errors.is_empty() => Ok(Telemetry {
            uuid,
            event,
            device_timestamp,
            second,
            race_id: RaceId(race_id),
            name,
            racer_id: RacerId(racer_id),
            class_id,
            cadence,
            resistance,
        }),
        _ => Err(check.errors),
    }
}

struct Checker<'a> {
    object: &'a Map<String, Value>,
    errors: Vec<FieldError>,
}

impl<'a> Checker<'a> {
    fn fail(&mut self, field: &'static str, reason: String) {
        self.errors.push(FieldError {
            field: Some(field),
            reason,
        });
    }

    fn required(&mut self, field: &'static str) -> Option<&'a Value> {
        match self.object.get(field) {
            None | Some(Value::Null) => {
                self.fail(field, "is required".to_owned());
                None
            }
            Some(value) => Some(value),
        }
    }

    fn integer(&mut self, field: &'static str, min: u64, max: u64) -> Option<u64> {
        let value = self.required(field)?;
        let reason = match value {
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(v), _) => match integer_rule(v, min, max) {
                    Ok(v) => return Some(v),
                    Err(reason) => reason,
                },
                (None, Some(v)) => format!("must not be negative, got {v}"),
                (None, None) => format!("must be an integer, got {n}"),
            },
            other => format!("must be an integer, got {}", type_name(other)),
        };
        self.fail(field, reason);
        None
    }

    fn sensor(&mut self, field: &'static str) -> Option<f64> {
        let value = self.required(field)?;
        let reason = match value.as_f64() {
            Some(v) => match sensor_rule(v) {
                Ok(v) => return Some(v),
                Err(reason) => reason,
            },
            None => format!("must be a number, got {}", type_name(value)),
        };
        self.fail(field, reason);
        None
    }

    fn event(&mut self, field: &'static str) -> Option<Event> {
        let value = self.required(field)?;
        let reason = match value {
            Value::String(s) => match event_rule(s) {
                Ok(event) => return Some(event),
                Err(reason) => reason,
            },
            other => format!("must be a string, got {}", type_name(other)),
        };
        self.fail(field, reason);
        None
    }

    fn name(&mut self, field: &'static str) -> Option<String> {
        let value = self.required(field)?;
        let reason = match value {
            Value::String(s) => match name_rule(s) {
                Ok(()) => return Some(s.clone()),
                Err(reason) => reason,
            },
            other => format!("must be a string, got {}", type_name(other)),
        };
        self.fail(field, reason);
        None
    }

    /// `uuid` is optional: absent or null is fine; if present it must be one.
    fn uuid(&mut self, field: &'static str) -> Option<Option<String>> {
        let reason = match self.object.get(field) {
            None | Some(Value::Null) => return Some(None),
            Some(Value::String(s)) => match uuid_rule(s) {
                Ok(()) => return Some(Some(s.clone())),
                Err(reason) => reason,
            },
            Some(other) => format!("must be a string, got {}", type_name(other)),
        };
        self.fail(field, reason);
        None
    }
}

// The rules of each field once its JSON type is right, shared by the typed
// fast path and the diagnosing `Checker`, so the two cannot disagree.

fn integer_rule(v: u64, min: u64, max: u64) -> Result<u64, String> {
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be an integer from {min} to {max}, got {v}"))
    }
}

fn sensor_rule(v: f64) -> Result<f64, String> {
    if v.is_finite() && (0.0..=MAX_SENSOR_VALUE).contains(&v) {
        Ok(v)
    } else if v < 0.0 {
        Err(format!("must not be negative, got {v}"))
    } else if v.is_finite() {
        Err(format!("must be at most {MAX_SENSOR_VALUE}, got {v}"))
    } else {
        Err("must be a finite number".to_owned())
    }
}

fn event_rule(s: &str) -> Result<Event, String> {
    match s {
        "update" => Ok(Event::Update),
        "final" => Ok(Event::Final),
        other => Err(format!("must be \"update\" or \"final\", got {other:?}")),
    }
}

fn name_rule(s: &str) -> Result<(), String> {
    let chars = s.chars().count();
    if chars > MAX_NAME_CHARS {
        Err(format!(
            "must be at most {MAX_NAME_CHARS} characters, got {chars}"
        ))
    } else if s.chars().any(char::is_control) {
        Err("must not contain control characters".to_owned())
    } else {
        Ok(())
    }
}

fn uuid_rule(s: &str) -> Result<(), String> {
    if is_hyphenated_uuid(s) {
        Ok(())
    } else {
        Err("must be a UUID such as \"0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12\"".to_owned())
    }
}

/// A well-typed message as it arrives, strings borrowed where the JSON has
/// no escapes: decoding it costs no allocation per field, unlike a
/// [`Value`] map. Anything it refuses (a wrong type, a missing or repeated
/// field) goes to the [`Checker`], which says what is wrong.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Wire<'a> {
    #[serde(borrow, default)]
    uuid: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    device_timestamp: u64,
    second: u64,
    race_id: u64,
    #[serde(borrow)]
    name: Cow<'a, str>,
    racer_id: u64,
    class_id: u64,
    cadence: f64,
    resistance: f64,
}

impl Wire<'_> {
    /// The record, if every rule holds; `None` sends the caller to the
    /// diagnosing path.
    fn into_telemetry(self) -> Option<Telemetry> {
        let uuid = match self.uuid {
            Some(uuid) => {
                uuid_rule(&uuid).ok()?;
                Some(uuid.into_owned())
            }
            None => None,
        };
        name_rule(&self.name).ok()?;
        Some(Telemetry {
            uuid,
            event: event_rule(&self.event).ok()?,
            device_timestamp: integer_rule(self.device_timestamp, 0, MAX_SAFE_INTEGER).ok()?,
            second: Second::new(integer_rule(self.second, 1, u64::from(MAX_SECOND)).ok()?)?,
            race_id: RaceId(integer_rule(self.race_id, 0, MAX_SAFE_INTEGER).ok()?),
            name: self.name.into_owned(),
            racer_id: RacerId(integer_rule(self.racer_id, 0, MAX_SAFE_INTEGER).ok()?),
            class_id: ClassId::new(
                integer_rule(self.class_id, 1, u64::from(crate::telemetry::CLASS_COUNT)).ok()?,
            )?,
            cadence: sensor_rule(self.cadence).ok()?,
            resistance: sensor_rule(self.resistance).ok()?,
        })
    }
}

/// Deserializes `T` only from a JSON object: a derived struct would also
/// take the positional array form, which the contract does not allow.
struct ObjectOnly<T>(T);

impl<'de, T: serde::Deserialize<'de>> serde::Deserialize<'de> for ObjectOnly<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Object<T>(std::marker::PhantomData<T>);
        impl<'de, T: serde::Deserialize<'de>> serde::de::Visitor<'de> for Object<T> {
            type Value = ObjectOnly<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(ObjectOnly)
            }
        }
        deserializer.deserialize_map(Object(std::marker::PhantomData))
    }
}

/// The typed fast path of one record.
fn fast_record(bytes: &[u8]) -> Option<Telemetry> {
    serde_json::from_slice::<ObjectOnly<Wire<'_>>>(bytes)
        .ok()?
        .0
        .into_telemetry()
}

/// The typed fast path of a whole body: every record, or `None` when any
/// record (or the batch's size) needs the diagnosing path.
fn fast_batch(body: &[u8], format: BodyFormat) -> Option<Vec<Telemetry>> {
    let records: Vec<Telemetry> = match format {
        BodyFormat::Json => match body.trim_ascii_start().first()? {
            b'[' => serde_json::from_slice::<Vec<ObjectOnly<Wire<'_>>>>(body)
                .ok()?
                .into_iter()
                .map(|wire| wire.0.into_telemetry())
                .collect::<Option<_>>()?,
            _ => vec![fast_record(body)?],
        },
        BodyFormat::NdJson => body
            .split(|b| *b == b'\n')
            .filter(|line| !line.trim_ascii().is_empty())
            .map(fast_record)
            .collect::<Option<_>>()?,
    };
    (1..=MAX_BATCH_RECORDS)
        .contains(&records.len())
        .then_some(records)
}

/// Only the canonical 8-4-4-4-12 form, as the contract's schema says; the
/// `uuid` crate alone would also take braced, URN and unhyphenated forms.
fn is_hyphenated_uuid(s: &str) -> bool {
    s.len() == 36 && s.as_bytes()[8] == b'-' && uuid::Uuid::try_parse(s).is_ok()
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn valid() -> Value {
        json!({"uuid": "0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12", "event": "update",
               "deviceTimestamp": 1_619_185_789_753_u64, "second": 3, "raceId": 5_397_285,
               "name": "Hubert", "racerId": 101, "classId": 1, "cadence": 80.25, "resistance": 78.5})
    }

    fn with(field: &str, value: Value) -> Value {
        let mut v = valid();
        v[field] = value;
        v
    }

    fn without(field: &str) -> Value {
        let mut v = valid();
        v.as_object_mut().unwrap().remove(field);
        v
    }

    /// The single error a value produces, as (field, reason).
    fn only_error(value: &Value) -> (Option<&'static str>, String) {
        let errors = validate_value(value).unwrap_err();
        assert_eq!(errors.len(), 1, "{errors:?}");
        (errors[0].field, errors[0].reason.clone())
    }

    #[test]
    fn accepts_the_reference_message() {
        let t = validate_value(&valid()).unwrap();
        assert_eq!(t.racer_id, RacerId(101));
        assert_eq!(t.class_id, ClassId(1));
        assert_eq!(t.second, Second(3));
        assert_eq!(t.event, Event::Update);
        assert_eq!(t.cadence, 80.25);
        assert_eq!(
            t.uuid.as_deref(),
            Some("0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12")
        );
    }

    #[test]
    fn uuid_is_optional_and_extra_fields_are_ignored() {
        let t = validate_value(&without("uuid")).unwrap();
        assert_eq!(t.uuid, None);
        assert!(validate_value(&with("uuid", Value::Null)).is_ok());
        assert!(validate_value(&with("firmware", json!("1.2.3"))).is_ok());
    }

    #[test]
    fn every_required_field_is_reported_missing() {
        for field in [
            "event",
            "deviceTimestamp",
            "second",
            "raceId",
            "name",
            "racerId",
            "classId",
            "cadence",
            "resistance",
        ] {
            let (f, reason) = only_error(&without(field));
            assert_eq!(f, Some(field));
            assert_eq!(reason, "is required");
            assert_eq!(only_error(&with(field, Value::Null)).0, Some(field));
        }
    }

    #[test]
    fn wrong_types_are_named() {
        assert_eq!(
            only_error(&with("racerId", json!("101"))),
            (Some("racerId"), "must be an integer, got a string".into())
        );
        assert_eq!(
            only_error(&with("cadence", json!("fast"))),
            (Some("cadence"), "must be a number, got a string".into())
        );
        assert_eq!(
            only_error(&with("event", json!(1))),
            (Some("event"), "must be a string, got a number".into())
        );
        assert_eq!(only_error(&with("name", json!(7))).0, Some("name"));
        assert_eq!(only_error(&with("uuid", json!(7))).0, Some("uuid"));
        assert_eq!(
            only_error(&with("uuid", json!("not-a-uuid"))).0,
            Some("uuid")
        );
        let unhyphenated = "0b7e4f1e5a3c4d3e9f1a2c7b8d9e0f12";
        assert_eq!(
            only_error(&with("uuid", json!(unhyphenated))).0,
            Some("uuid")
        );
    }

    #[test]
    fn unknown_event_is_rejected() {
        let (field, reason) = only_error(&with("event", json!("start")));
        assert_eq!(field, Some("event"));
        assert!(reason.contains("\"start\""), "{reason}");
        assert_eq!(
            validate_value(&with("event", json!("final")))
                .unwrap()
                .event,
            Event::Final
        );
    }

    #[test]
    fn class_must_be_one_to_six() {
        for bad in [0, 7, 9] {
            let (field, reason) = only_error(&with("classId", json!(bad)));
            assert_eq!(field, Some("classId"));
            assert_eq!(reason, format!("must be an integer from 1 to 6, got {bad}"));
        }
        for good in 1..=6 {
            assert!(validate_value(&with("classId", json!(good))).is_ok());
        }
    }

    #[test]
    fn second_must_be_one_to_3600() {
        assert_eq!(only_error(&with("second", json!(0))).0, Some("second"));
        assert_eq!(only_error(&with("second", json!(3601))).0, Some("second"));
        assert_eq!(only_error(&with("second", json!(2.5))).0, Some("second"));
        assert!(validate_value(&with("second", json!(1))).is_ok());
        assert!(validate_value(&with("second", json!(3600))).is_ok());
    }

    #[test]
    fn ids_must_be_non_negative_integers() {
        for field in ["racerId", "raceId"] {
            assert_eq!(
                only_error(&with(field, json!(-1))),
                (Some(field), "must not be negative, got -1".into())
            );
            assert_eq!(
                only_error(&with(field, json!(1.5))),
                (Some(field), "must be an integer, got 1.5".into())
            );
            assert_eq!(only_error(&with(field, json!(1u64 << 60))).0, Some(field));
            assert!(validate_value(&with(field, json!(0))).is_ok());
        }
    }

    #[test]
    fn sensors_must_be_finite_non_negative_and_at_most_1000() {
        for field in ["cadence", "resistance"] {
            assert_eq!(
                only_error(&with(field, json!(-0.5))),
                (Some(field), "must not be negative, got -0.5".into())
            );
            assert_eq!(
                only_error(&with(field, json!(1000.5))),
                (Some(field), "must be at most 1000, got 1000.5".into())
            );
            assert!(validate_value(&with(field, json!(1000))).is_ok());
            assert!(validate_value(&with(field, json!(0))).is_ok());
        }
        // JSON has no NaN or infinity; an overflowing literal fails to parse.
        assert!(parse_record(br#"{"cadence": 1e400}"#).is_err());
    }

    #[test]
    fn name_is_at_most_64_characters() {
        let long: String = "é".repeat(65);
        assert_eq!(
            only_error(&with("name", json!(long))),
            (Some("name"), "must be at most 64 characters, got 65".into())
        );
        assert!(validate_value(&with("name", json!("é".repeat(64)))).is_ok());
        assert_eq!(only_error(&with("name", json!("a\u{0}b"))).0, Some("name"));
    }

    #[test]
    fn every_problem_of_a_record_is_reported() {
        let mut v = with("classId", json!(9));
        v["cadence"] = json!(-1);
        v.as_object_mut().unwrap().remove("name");
        let fields: Vec<_> = validate_value(&v)
            .unwrap_err()
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, [Some("name"), Some("classId"), Some("cadence")]);
    }

    #[test]
    fn non_objects_are_rejected_as_a_whole() {
        assert_eq!(only_error(&json!([1])).0, None);
        assert_eq!(only_error(&json!("x")).0, None);
    }

    #[test]
    fn a_batch_is_all_or_nothing() {
        let body =
            serde_json::to_vec(&json!([valid(), with("classId", json!(9)), valid()])).unwrap();
        let err = parse_batch(&body, BodyFormat::Json).unwrap_err();
        assert_eq!(
            err.records(),
            [RecordError {
                index: 1,
                field: Some("classId"),
                reason: "must be an integer from 1 to 6, got 9".into()
            }]
        );
        assert_eq!(
            err.to_string(),
            "1 of 3 records is invalid; nothing was accepted"
        );
    }

    #[test]
    fn json_body_may_be_an_object_or_an_array() {
        let one = serde_json::to_vec(&valid()).unwrap();
        assert_eq!(parse_batch(&one, BodyFormat::Json).unwrap().len(), 1);
        let many = serde_json::to_vec(&vec![valid(); 500]).unwrap();
        assert_eq!(parse_batch(&many, BodyFormat::Json).unwrap().len(), 500);
        let too_many = serde_json::to_vec(&vec![valid(); 501]).unwrap();
        assert_eq!(
            parse_batch(&too_many, BodyFormat::Json).unwrap_err(),
            BatchError::TooManyRecords(501)
        );
        assert_eq!(
            parse_batch(b"[]", BodyFormat::Json).unwrap_err(),
            BatchError::Empty
        );
        assert!(matches!(
            parse_batch(b"{not json", BodyFormat::Json).unwrap_err(),
            BatchError::Malformed { .. }
        ));
        assert!(matches!(
            parse_batch(b"42", BodyFormat::Json).unwrap_err(),
            BatchError::Malformed { .. }
        ));
    }

    #[test]
    fn ndjson_reports_broken_lines_by_index() {
        let line = serde_json::to_string(&valid()).unwrap();
        let body = format!("{line}\n\n{line}\r\n{line}\n");
        assert_eq!(
            parse_batch(body.as_bytes(), BodyFormat::NdJson)
                .unwrap()
                .len(),
            3
        );
        let body = format!("{line}\n{{oops\n{line}\n");
        let err = parse_batch(body.as_bytes(), BodyFormat::NdJson).unwrap_err();
        assert!(matches!(err, BatchError::Malformed { .. }));
        assert_eq!(err.records()[0].index, 1);
        assert_eq!(err.records()[0].field, None);
    }

    #[test]
    fn validated_telemetry_round_trips_through_its_wire_format() {
        let t = validate_value(&valid()).unwrap();
        let bytes = serde_json::to_vec(&t).unwrap();
        assert_eq!(parse_record(&bytes).unwrap(), t);
        let t = validate_value(&without("uuid")).unwrap();
        let text = serde_json::to_string(&t).unwrap();
        assert!(!text.contains("uuid"), "{text}");
    }

    /// The fast path must agree with the diagnosing path on every input:
    /// the same records, or (by falling back) the same errors.
    mod fast_path_agrees {
        use super::super::*;
        use proptest::prelude::*;

        const FIELDS: [(&str, &str); 10] = [
            ("uuid", r#""0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12""#),
            ("event", r#""final""#),
            ("deviceTimestamp", "1619185789753"),
            ("second", "3600"),
            ("raceId", "9007199254740991"),
            ("name", r#""Hub\u0065rt \u00e9""#),
            ("racerId", "0"),
            ("classId", "6"),
            ("cadence", "80.25"),
            ("resistance", "1000"),
        ];

        /// Values of every JSON type, in and out of each field's range.
        const OTHERS: [&str; 31] = [
            "null",
            "true",
            r#""x""#,
            r#""update""#,
            r#""final""#,
            r#""0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f1""#,
            r#""{0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12}""#,
            r#""a\u0007b""#,
            r#""ééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé""#,
            r#""éééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééééé""#,
            "-1",
            "0",
            "1",
            "6",
            "7",
            "3601",
            "-0",
            "1.5",
            "3.0",
            "1e3",
            "1000.0000001",
            "9007199254740992",
            "18446744073709551615",
            "18446744073709551616",
            "1e308",
            "-1e-320",
            "[]",
            "{}",
            "[1]",
            r#"{"a":1}"#,
            r#""""#,
        ];

        /// A valid record with up to two fields changed (to another value or
        /// left out), perhaps one field repeated, perhaps an extra field; as
        /// an object and in the positional array form.
        fn record() -> impl Strategy<Value = (String, String)> {
            let change = (
                0..FIELDS.len(),
                proptest::option::weighted(0.9, proptest::sample::select(&OTHERS[..])),
            );
            (
                proptest::collection::vec(change, 0..=2),
                proptest::option::weighted(
                    0.1,
                    (0..FIELDS.len(), proptest::sample::select(&OTHERS[..])),
                ),
                any::<bool>(),
            )
                .prop_map(|(changes, repeated, extra)| {
                    let mut values: Vec<Option<&str>> =
                        FIELDS.iter().map(|(_, valid)| Some(*valid)).collect();
                    for (field, value) in changes {
                        values[field] = value;
                    }
                    let mut members: Vec<String> = FIELDS
                        .iter()
                        .zip(&values)
                        .filter_map(|((field, _), v)| v.map(|v| format!(r#""{field}":{v}"#)))
                        .collect();
                    if let Some((field, v)) = repeated {
                        members.push(format!(r#""{}":{v}"#, FIELDS[field].0));
                    }
                    if extra {
                        members.push(r#""firmware":"1.2.3""#.to_owned());
                    }
                    let positional: Vec<&str> =
                        values.iter().map(|v| v.unwrap_or("null")).collect();
                    (
                        format!("{{{}}}", members.join(",")),
                        format!("[{}]", positional.join(",")),
                    )
                })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]

            #[test]
            fn on_single_records((object, positional) in record()) {
                for text in [&object, &positional] {
                    let fast = parse_record(text.as_bytes());
                    prop_assert_eq!(&fast, &diagnose_record(text.as_bytes()), "{}", text);
                    prop_assert_eq!(
                        parse_batch(text.as_bytes(), BodyFormat::Json),
                        diagnose_batch(text.as_bytes(), BodyFormat::Json),
                        "{}", text
                    );
                }
                prop_assert!(parse_record(positional.as_bytes()).is_err(), "positional form refused");
            }

            #[test]
            fn on_batches((a, _) in record(), (b, positional) in record()) {
                for body in [format!("[{a},{b}]"), format!("[{a},{positional}]"), format!(" [{a}]")] {
                    prop_assert_eq!(
                        parse_batch(body.as_bytes(), BodyFormat::Json),
                        diagnose_batch(body.as_bytes(), BodyFormat::Json),
                        "{}", body
                    );
                }
                for body in [format!("{a}\n{b}\n"), format!("{a}\r\n\n{positional}")] {
                    prop_assert_eq!(
                        parse_batch(body.as_bytes(), BodyFormat::NdJson),
                        diagnose_batch(body.as_bytes(), BodyFormat::NdJson),
                        "{}", body
                    );
                }
            }
        }

        #[test]
        fn the_fast_path_takes_valid_records() {
            let valid = FIELDS
                .iter()
                .map(|(field, v)| format!(r#""{field}":{v}"#))
                .collect::<Vec<_>>()
                .join(",");
            let record = format!("{{{valid}}}");
            let t = fast_record(record.as_bytes()).expect("the fast path takes it");
            assert_eq!(t.name, "Hubert é", "escapes decoded");
            assert_eq!(Ok(t), diagnose_record(record.as_bytes()));
            let body = format!("[{record},{record}]");
            assert_eq!(
                fast_batch(body.as_bytes(), BodyFormat::Json).map(|r| r.len()),
                Some(2)
            );
        }
    }
}
