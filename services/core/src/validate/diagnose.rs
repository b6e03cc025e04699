//! The diagnosing path: checks records through [`serde_json::Value`]s and
//! names every problem of every record and field. Slower than the typed
//! fast path, so it runs only on what that path refuses.

use super::{BatchError, BodyFormat, FieldError, RecordError, SensorLimits, framing, rules};
use crate::telemetry::{Event, RaceId, RacerId, Telemetry};
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::fmt;

/// The key of every field of the schema, in the order problems are
/// reported.
pub(super) const FIELDS: [&str; 10] = [
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

/// Why a field whose key appears more than once is refused: `Value` (like
/// most JSON parsers) keeps only one of the values, and which one differs
/// from parser to parser, so no value of it can be trusted.
pub(super) const REPEATED: &str = "repeated key: a record may name each field only once";

/// One record as the diagnosing path reads it: its JSON value (the fields
/// of the schema only) and the fields whose key it repeats. A [`Value`]
/// keeps only the last value of a repeated key, so repeats are noted while
/// it is built. Only a record's own keys count: nested objects are not
/// part of the schema, and unknown fields stay ignored, repeated or not.
pub(super) struct Parsed {
    pub(super) value: Value,
    pub(super) repeated: Vec<&'static str>,
}

impl Parsed {
    fn plain(value: Value) -> Parsed {
        Parsed {
            value,
            repeated: Vec::new(),
        }
    }

    fn object<'de, A: MapAccess<'de>>(mut map: A) -> Result<Parsed, A::Error> {
        let mut object = Map::new();
        let mut repeated = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let Some(field) = FIELDS.iter().find(|field| **field == key) else {
                // An unknown field is skipped unread, as the fast path does:
                // a value `Value` cannot hold (a number past `f64`) must not
                // refuse here what that path accepts.
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let value = map.next_value::<Value>()?;
            if object.insert(key, value).is_some() && !repeated.contains(field) {
                repeated.push(*field);
            }
        }
        Ok(Parsed {
            value: Value::Object(object),
            repeated,
        })
    }
}

/// A JSON body's top level: the records of an array, one record, or
/// something else (named in the error).
pub(super) enum Body {
    Array(Vec<Parsed>),
    Record(Parsed),
    Other(Value),
}

/// The visits of a JSON scalar, building the same [`Value`] as
/// `serde_json` does, wrapped by `$wrap`.
macro_rules! visit_scalars {
    ($wrap:expr) => {
        fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
            Ok($wrap(Value::Bool(v)))
        }
        fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
            Ok($wrap(Value::from(v)))
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok($wrap(Value::Null))
        }
        fn visit_none<E>(self) -> Result<Self::Value, E> {
            Ok($wrap(Value::Null))
        }
    };
}

impl<'de> Deserialize<'de> for Parsed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Record;
        impl<'de> Visitor<'de> for Record {
            type Value = Parsed;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            visit_scalars!(Parsed::plain);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Value>()? {
                    items.push(item);
                }
                Ok(Parsed::plain(Value::Array(items)))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Parsed, A::Error> {
                Parsed::object(map)
            }
        }
        deserializer.deserialize_any(Record)
    }
}

impl<'de> Deserialize<'de> for Body {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Top;
        impl<'de> Visitor<'de> for Top {
            type Value = Body;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            visit_scalars!(Body::Other);
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Body, A::Error> {
                let mut records = Vec::new();
                while let Some(record) = seq.next_element::<Parsed>()? {
                    records.push(record);
                }
                Ok(Body::Array(records))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Body, A::Error> {
                Parsed::object(map).map(Body::Record)
            }
        }
        deserializer.deserialize_any(Top)
    }
}

/// [`super::parse_batch`] through [`Value`]s, naming every problem.
/// Cold and never inlined: it must not weigh on the fast path's caller.
#[cold]
#[inline(never)]
pub(super) fn batch(
    body: &[u8],
    format: BodyFormat,
    limits: SensorLimits,
) -> Result<Vec<Telemetry>, BatchError> {
    let values = framing::values(body, format)?;
    framing::check_size(values.len())?;
    let total = values.len();
    let mut records = Vec::with_capacity(total);
    let mut problems = Vec::new();
    let mut invalid = 0;
    for (index, parsed) in values.iter().enumerate() {
        match validate_parsed(parsed, limits) {
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

/// [`super::parse_record`] through a [`Value`], naming every problem.
/// Cold and never inlined, like [`batch`].
#[cold]
#[inline(never)]
pub(super) fn record(bytes: &[u8], limits: SensorLimits) -> Result<Telemetry, Vec<FieldError>> {
    match serde_json::from_slice::<Parsed>(bytes) {
        Ok(parsed) => validate_parsed(&parsed, limits),
        Err(e) => Err(vec![FieldError {
            field: None,
            reason: format!("not valid JSON: {e}"),
        }]),
    }
}

/// [`SensorLimits::validate_value`].
pub(super) fn validate_value(
    value: &Value,
    limits: SensorLimits,
) -> Result<Telemetry, Vec<FieldError>> {
    validate(value, &[], limits)
}

/// [`validate_value`] of a parsed record, refusing its repeated fields.
fn validate_parsed(parsed: &Parsed, limits: SensorLimits) -> Result<Telemetry, Vec<FieldError>> {
    validate(&parsed.value, &parsed.repeated, limits)
}

fn validate(
    value: &Value,
    repeated: &[&'static str],
    limits: SensorLimits,
) -> Result<Telemetry, Vec<FieldError>> {
    let Value::Object(object) = value else {
        return Err(vec![FieldError {
            field: None,
            reason: format!("must be a JSON object, got {}", type_name(value)),
        }]);
    };
    let mut check = Checker {
        object,
        repeated,
        errors: Vec::new(),
    };
    let uuid = check.uuid("uuid");
    let event = check.event("event");
    let device_timestamp = check.integer("deviceTimestamp", rules::id);
    let second = check.integer("second", rules::second);
    let race_id = check.integer("raceId", rules::id);
    let name = check.name("name");
    let racer_id = check.integer("racerId", rules::id);
    let class_id = check.integer("classId", rules::class_id);
    let cadence = check.sensor("cadence", |v| rules::cadence(v, limits));
    let resistance = check.sensor("resistance", |v| rules::resistance(v, limits));
    match (
        uuid,
        event,
        device_timestamp,
        second,
        race_id,
        name,
        racer_id,
        class_id,
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

/// How a value of the wrong JSON type is named in a reason.
pub(super) fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks the fields of one object, collecting a [`FieldError`] for each
/// that is repeated, missing, of the wrong JSON type, or breaks its rule.
struct Checker<'a> {
    object: &'a Map<String, Value>,
    repeated: &'a [&'static str],
    errors: Vec<FieldError>,
}

impl<'a> Checker<'a> {
    fn fail(&mut self, field: &'static str, reason: String) {
        self.errors.push(FieldError {
            field: Some(field),
            reason,
        });
    }

    /// The field's value, unless its key is repeated (which is reported:
    /// no value of a repeated field is checked or taken).
    fn unique(&mut self, field: &'static str) -> Result<Option<&'a Value>, ()> {
        if self.repeated.contains(&field) {
            self.fail(field, REPEATED.to_owned());
            Err(())
        } else {
            Ok(self.object.get(field))
        }
    }

    fn required(&mut self, field: &'static str) -> Option<&'a Value> {
        match self.unique(field).ok()? {
            None | Some(Value::Null) => {
                self.fail(field, "is required".to_owned());
                None
            }
            Some(value) => Some(value),
        }
    }

    fn integer<T>(&mut self, field: &'static str, rule: fn(u64) -> Result<T, String>) -> Option<T> {
        let value = self.required(field)?;
        let reason = match value {
            Value::Number(n) => match (n.as_u64(), n.as_i64()) {
                (Some(v), _) => match rule(v) {
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

    fn sensor(
        &mut self,
        field: &'static str,
        rule: impl Fn(f64) -> Result<f64, String>,
    ) -> Option<f64> {
        let value = self.required(field)?;
        let reason = match value.as_f64() {
            Some(v) => match rule(v) {
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
            Value::String(s) => match rules::event(s) {
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
            Value::String(s) => match rules::name(s) {
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
        let reason = match self.unique(field).ok()? {
            None | Some(Value::Null) => return Some(None),
            Some(Value::String(s)) => match rules::uuid(s) {
                Ok(()) => return Some(Some(s.clone())),
                Err(reason) => reason,
            },
            Some(other) => format!("must be a string, got {}", type_name(other)),
        };
        self.fail(field, reason);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{only_error, valid, with, without};
    use super::super::{parse_batch, parse_record, validate_value};
    use super::*;
    use crate::telemetry::{CLASS_COUNT, ClassId, Second};
    use serde_json::json;

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

    /// The reference message as JSON text, with `first` as its first
    /// member and `last` as its last.
    fn text_with(first: &str, last: &str) -> String {
        text_of(&valid(), first, last)
    }

    /// `value` as JSON text, with `first` as its first member and `last`
    /// as its last.
    fn text_of(value: &Value, first: &str, last: &str) -> String {
        let text = serde_json::to_string(value).unwrap();
        let members = &text[1..text.len() - 1];
        let first = if first.is_empty() {
            String::new()
        } else {
            format!("{first},")
        };
        let last = if last.is_empty() {
            String::new()
        } else {
            format!(",{last}")
        };
        format!("{{{first}{members}{last}}}")
    }

    fn repeated(field: &'static str) -> FieldError {
        FieldError {
            field: Some(field),
            reason: REPEATED.to_owned(),
        }
    }

    /// Refused by every entry point: one record, a JSON array (as its
    /// second record) and NDJSON (its second line), with only `errors`.
    fn assert_refused(text: &str, errors: &[FieldError]) {
        assert_eq!(parse_record(text.as_bytes()).unwrap_err(), errors, "{text}");
        assert_eq!(
            record(text.as_bytes(), SensorLimits::DEFAULT).unwrap_err(),
            errors,
            "{text}"
        );
        let line = serde_json::to_string(&valid()).unwrap();
        for (body, format) in [
            (format!("[{line},{text}]"), BodyFormat::Json),
            (format!("{line}\r\n\n{text}\n"), BodyFormat::NdJson),
        ] {
            let err = parse_batch(body.as_bytes(), format).unwrap_err();
            let expected: Vec<_> = errors
                .iter()
                .map(|e| RecordError {
                    index: 1,
                    field: e.field,
                    reason: e.reason.clone(),
                })
                .collect();
            assert_eq!(err.records(), expected, "{body}");
            assert!(matches!(
                err,
                BatchError::Invalid {
                    total: 2,
                    invalid: 1,
                    ..
                }
            ));
        }
    }

    #[test]
    fn the_repeated_keys_of_the_issue_are_refused() {
        // The class would have been 1 and the cadence 1000: the last won.
        assert_refused(&text_with(r#""classId":7"#, ""), &[repeated("classId")]);
        assert_refused(&text_with("", r#""cadence":1000"#), &[repeated("cadence")]);
    }

    #[test]
    fn every_field_repeated_is_refused_whatever_its_values() {
        let reference = valid();
        for field in FIELDS {
            let same = reference[field].to_string();
            for again in [same.as_str(), "7", "1000", "null", r#""x""#, "{}"] {
                let text = text_with("", &format!(r#""{field}":{again}"#));
                assert_refused(&text, &[repeated(field)]);
                // Repeated a third time, it is still named once.
                let text = text_with(
                    &format!(r#""{field}":{again}"#),
                    &format!(r#""{field}":{same}"#),
                );
                assert_refused(&text, &[repeated(field)]);
            }
        }
    }

    #[test]
    fn a_repeated_field_is_named_among_the_other_problems() {
        let v = with("cadence", json!(-1));
        let text = text_of(&v, r#""racerId":-1"#, r#""name":"again""#);
        let cadence = validate_value(&v).unwrap_err().remove(0);
        assert_eq!(cadence.field, Some("cadence"));
        assert_refused(&text, &[repeated("name"), repeated("racerId"), cadence]);
    }

    #[test]
    fn an_escaped_key_is_the_same_key() {
        // \u0049 is "I": both keys are classId.
        assert_refused(
            &text_with("", r#""class\u0049d":1"#),
            &[repeated("classId")],
        );
        assert_refused(&text_with("", r#""\u0075uid":null"#), &[repeated("uuid")]);
    }

    #[test]
    fn repeated_unknown_and_nested_keys_are_ignored() {
        for extra in [
            r#""firmware":"1.2.3","firmware":"1.2.4""#,
            r#""meta":{"classId":7,"classId":1}"#,
            r#""meta":[{"a":1,"a":2}]"#,
            r#""ClassId":7,"classid":7"#,
        ] {
            let text = text_with("", extra);
            assert_eq!(
                parse_record(text.as_bytes()).unwrap(),
                validate_value(&valid()).unwrap(),
                "{text}"
            );
            assert_eq!(
                parse_batch(text.as_bytes(), BodyFormat::Json)
                    .unwrap()
                    .len(),
                1
            );
        }
    }

    #[test]
    fn unknown_fields_are_skipped_unread_by_both_paths() {
        // Found by the long fuzz run: `Value` cannot hold 1e400, so the
        // diagnosing path refused as "not valid JSON" a record the fast
        // path took. Both take it now, and name other records' problems.
        let text = text_with("", r#""firmware":{"build":1e400}"#);
        assert_eq!(
            parse_record(text.as_bytes()).unwrap(),
            validate_value(&valid()).unwrap()
        );
        assert_eq!(
            record(text.as_bytes(), SensorLimits::DEFAULT),
            parse_record(text.as_bytes())
        );
        let bad = with("classId", json!(9));
        let body = format!("[{text},{bad}]");
        assert_eq!(
            parse_batch(body.as_bytes(), BodyFormat::Json)
                .unwrap_err()
                .records()[0]
                .index,
            1
        );
        // A schema field is read, so there it is not JSON it can take.
        let text = text_of(&without("cadence"), "", r#""cadence":1e400"#);
        assert!(parse_batch(text.as_bytes(), BodyFormat::Json).is_err());
    }

    #[test]
    fn every_field_checked_is_a_field_whose_repeats_are_noted() {
        // FIELDS must list every key the checker reads: each one missing
        // is reported under that very name.
        let checked: Vec<_> = FIELDS
            .iter()
            .filter(|f| **f != "uuid")
            .map(|f| only_error(&without(f)).0.unwrap())
            .collect();
        assert_eq!(checked, FIELDS[1..]);
        assert_eq!(without("uuid").as_object().unwrap().len(), FIELDS.len() - 1);
        assert_eq!(valid().as_object().unwrap().len(), FIELDS.len());
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
                reason: format!("must be an integer from 1 to {CLASS_COUNT}, got 9")
            }]
        );
        assert_eq!(
            err.to_string(),
            "1 of 3 records is invalid; nothing was accepted"
        );
    }
}
