//! The typed fast path: decodes well-typed records straight into a
//! borrowing struct, without building a [`serde_json::Value`] tree. Whatever
//! it refuses, it leaves to the diagnosing path, which says what is wrong.

use super::{BodyFormat, SensorLimits, framing, rules};
use crate::telemetry::{RaceId, RacerId, Telemetry};
use std::borrow::Cow;

/// A well-typed message as it arrives, strings borrowed where the JSON has
/// no escapes: decoding it costs no allocation per field, unlike a
/// `Value` map. Anything it refuses (a wrong type, a missing or repeated
/// field: the derived visitor refuses a repeated key, so the fast path
/// never takes one value of several) goes to the diagnosing path, which
/// says what is wrong.
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
    /// The record, if every rule holds under `limits`; `None` sends the
    /// caller to the diagnosing path.
    fn into_telemetry(self, limits: SensorLimits) -> Option<Telemetry> {
        let uuid = match self.uuid {
            Some(uuid) => {
                rules::uuid(&uuid).ok()?;
                Some(uuid.into_owned())
            }
            None => None,
        };
        rules::name(&self.name).ok()?;
        Some(Telemetry {
            uuid,
            event: rules::event(&self.event).ok()?,
            device_timestamp: rules::id(self.device_timestamp).ok()?,
            second: rules::second(self.second).ok()?,
            race_id: RaceId(rules::id(self.race_id).ok()?),
            name: self.name.into_owned(),
            racer_id: RacerId(rules::id(self.racer_id).ok()?),
            class_id: rules::class_id(self.class_id).ok()?,
            cadence: rules::cadence(self.cadence, limits).ok()?,
            resistance: rules::resistance(self.resistance, limits).ok()?,
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
pub(super) fn record(bytes: &[u8], limits: SensorLimits) -> Option<Telemetry> {
    serde_json::from_slice::<ObjectOnly<Wire<'_>>>(bytes)
        .ok()?
        .0
        .into_telemetry(limits)
}

/// The typed fast path of a whole body: every record, or `None` when any
/// record (or the batch's size) needs the diagnosing path.
pub(super) fn batch(
    body: &[u8],
    format: BodyFormat,
    limits: SensorLimits,
) -> Option<Vec<Telemetry>> {
    let records: Vec<Telemetry> = match format {
        BodyFormat::Json => match body.trim_ascii_start().first()? {
            b'[' => serde_json::from_slice::<Vec<ObjectOnly<Wire<'_>>>>(body)
                .ok()?
                .into_iter()
                .map(|wire| wire.0.into_telemetry(limits))
                .collect::<Option<_>>()?,
            _ => vec![record(body, limits)?],
        },
        BodyFormat::NdJson => framing::ndjson_lines(body)
            .map(|line| record(line, limits))
            .collect::<Option<_>>()?,
    };
    framing::check_size(records.len()).ok()?;
    Some(records)
}

/// The fast path must agree with the diagnosing path on every input:
/// the same records, or (by falling back) the same errors, at the default
/// sensor limits and at any others.
#[cfg(test)]
mod fast_path_agrees {
    use super::super::diagnose::{self, REPEATED};
    use super::super::proptest_config;
    use super::super::{BatchError, BodyFormat, RecordError, SensorLimits};
    use crate::telemetry::{MAX_SENSOR_VALUE, Telemetry};
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
        ("resistance", "100"),
    ];

    /// Values of every JSON type, in and out of each field's range (and
    /// around the sensors' default and custom limits).
    const OTHERS: [&str; 38] = [
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
        "100.0",
        "100.0000001",
        "120.5",
        "120.50001",
        "200",
        "200.01",
        "2E2",
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
    /// left out), perhaps one field repeated (its key perhaps escaped),
    /// perhaps an extra field; as an object and in the positional array
    /// form; and the field the object really repeats, if any.
    fn record() -> impl Strategy<Value = (String, String, Option<&'static str>)> {
        let change = (
            0..FIELDS.len(),
            proptest::option::weighted(0.9, proptest::sample::select(&OTHERS[..])),
        );
        (
            proptest::collection::vec(change, 0..=2),
            proptest::option::weighted(
                0.15,
                (
                    0..FIELDS.len(),
                    proptest::sample::select(&OTHERS[..]),
                    any::<bool>(),
                ),
            ),
            any::<bool>(),
        )
            .prop_map(|(changes, repeat, extra)| {
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
                let mut repeated = None;
                if let Some((field, v, escaped)) = repeat {
                    let key = FIELDS[field].0;
                    let written = if escaped {
                        format!(r"\u{:04x}{}", key.as_bytes()[0], &key[1..])
                    } else {
                        key.to_owned()
                    };
                    members.push(format!(r#""{written}":{v}"#));
                    repeated = values[field].is_some().then_some(key);
                }
                if extra {
                    members.push(r#""firmware":"1.2.3""#.to_owned());
                }
                let positional: Vec<&str> = values.iter().map(|v| v.unwrap_or("null")).collect();
                (
                    format!("{{{}}}", members.join(",")),
                    format!("[{}]", positional.join(",")),
                    repeated,
                )
            })
    }

    /// Whether `result` refuses record `index` for repeating `field`.
    fn refuses_repeated(
        result: &Result<Vec<Telemetry>, BatchError>,
        index: usize,
        field: &'static str,
    ) -> bool {
        result.as_ref().is_err_and(|err| {
            err.records().contains(&RecordError {
                index,
                field: Some(field),
                reason: REPEATED.to_owned(),
            })
        })
    }

    /// Sensor limits: the defaults, ones the values above sit on, and any.
    fn limits() -> impl Strategy<Value = SensorLimits> {
        let any_limit = prop_oneof![
            0.001..=MAX_SENSOR_VALUE,
            proptest::sample::select(&[1.0, 1.5, 100.0, 120.5, 200.0, MAX_SENSOR_VALUE][..]),
        ];
        prop_oneof![
            1 => Just(SensorLimits::DEFAULT),
            2 => (any_limit.clone(), any_limit)
                .prop_map(|(cadence, resistance)| SensorLimits::new(cadence, resistance).unwrap()),
        ]
    }

    /// A sensor reading, often exactly on or just past a limit above.
    fn sensor() -> impl Strategy<Value = f64> {
        prop_oneof![
            0.0..=MAX_SENSOR_VALUE,
            proptest::sample::select(&[0.0, 1.0, 1.5, 100.0, 100.01, 120.5, 200.0, 200.01][..]),
        ]
    }

    proptest! {
        #![proptest_config(proptest_config(4096))]

        #[test]
        fn on_single_records((object, positional, repeated) in record(), limits in limits()) {
            for text in [&object, &positional] {
                let fast = limits.parse_record(text.as_bytes());
                prop_assert_eq!(&fast, &diagnose::record(text.as_bytes(), limits), "{}", text);
                prop_assert_eq!(
                    limits.parse_batch(text.as_bytes(), BodyFormat::Json),
                    diagnose::batch(text.as_bytes(), BodyFormat::Json, limits),
                    "{}", text
                );
                if let Ok(t) = &fast {
                    prop_assert!(t.cadence <= limits.max_cadence(), "{:?} {}", limits, text);
                    prop_assert!(t.resistance <= limits.max_resistance(), "{:?} {}", limits, text);
                }
            }
            prop_assert!(limits.parse_record(positional.as_bytes()).is_err(), "positional form refused");
            if let Some(field) = repeated {
                // Refused, naming the field once, whatever its values.
                prop_assert!(super::record(object.as_bytes(), limits).is_none(), "{}", object);
                let errors = limits.parse_record(object.as_bytes()).unwrap_err();
                let about: Vec<_> = errors.iter().filter(|e| e.field == Some(field)).collect();
                prop_assert_eq!(about.len(), 1, "{:?}", errors);
                prop_assert_eq!(&about[0].reason, REPEATED);
                let batch = limits.parse_batch(object.as_bytes(), BodyFormat::Json);
                prop_assert!(refuses_repeated(&batch, 0, field), "{:?}", batch);
            }
        }

        #[test]
        fn on_batches(
            (a, _, repeated_a) in record(),
            (b, positional, repeated_b) in record(),
            limits in limits(),
        ) {
            for body in [format!("[{a},{b}]"), format!("[{a},{positional}]"), format!(" [{a}]")] {
                prop_assert_eq!(
                    limits.parse_batch(body.as_bytes(), BodyFormat::Json),
                    diagnose::batch(body.as_bytes(), BodyFormat::Json, limits),
                    "{}", body
                );
            }
            for body in [format!("{a}\n{b}\n"), format!("{a}\r\n\n{positional}")] {
                prop_assert_eq!(
                    limits.parse_batch(body.as_bytes(), BodyFormat::NdJson),
                    diagnose::batch(body.as_bytes(), BodyFormat::NdJson, limits),
                    "{}", body
                );
            }
            for (body, format) in [
                (format!("[{a},{b}]"), BodyFormat::Json),
                (format!("{a}\r\n\n{b}\n"), BodyFormat::NdJson),
            ] {
                let result = limits.parse_batch(body.as_bytes(), format);
                for (index, repeated) in [repeated_a, repeated_b].into_iter().enumerate() {
                    if let Some(field) = repeated {
                        prop_assert!(refuses_repeated(&result, index, field), "{:?}", result);
                    }
                }
            }
        }

        /// A sensor value is taken exactly when it is at most its limit,
        /// by both paths, and refused naming the field and that limit.
        #[test]
        fn sensors_are_taken_up_to_their_limit(
            limits in limits(),
            cadence in sensor(),
            resistance in sensor(),
        ) {
            let mut members: Vec<String> = FIELDS[..8]
                .iter()
                .map(|(field, v)| format!(r#""{field}":{v}"#))
                .collect();
            members.push(format!(r#""cadence":{cadence}"#));
            members.push(format!(r#""resistance":{resistance}"#));
            let text = format!("{{{}}}", members.join(","));
            let result = limits.parse_record(text.as_bytes());
            prop_assert_eq!(&result, &diagnose::record(text.as_bytes(), limits));
            let mut expected = Vec::new();
            for (field, value, max) in [
                ("cadence", cadence, limits.max_cadence()),
                ("resistance", resistance, limits.max_resistance()),
            ] {
                if value > max {
                    expected.push((Some(field), format!("must be at most {max}, got {value}")));
                }
            }
            match result {
                Ok(t) => {
                    prop_assert!(expected.is_empty(), "{:?}", expected);
                    prop_assert_eq!((t.cadence, t.resistance), (cadence, resistance));
                }
                Err(errors) => {
                    let got: Vec<_> = errors.into_iter().map(|e| (e.field, e.reason)).collect();
                    prop_assert_eq!(got, expected);
                }
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
        let limits = SensorLimits::DEFAULT;
        let t = super::record(record.as_bytes(), limits).expect("the fast path takes it");
        assert_eq!(t.name, "Hubert é", "escapes decoded");
        assert_eq!(
            t.resistance,
            limits.max_resistance(),
            "the limit itself is valid"
        );
        assert_eq!(Ok(t), diagnose::record(record.as_bytes(), limits));
        let body = format!("[{record},{record}]");
        assert_eq!(
            super::batch(body.as_bytes(), BodyFormat::Json, limits).map(|r| r.len()),
            Some(2)
        );
        // Past the limit, the fast path leaves the record to the other.
        let lower = SensorLimits::new(200.0, 99.5).unwrap();
        assert_eq!(super::record(record.as_bytes(), lower), None);
        assert_eq!(super::batch(body.as_bytes(), BodyFormat::Json, lower), None);
    }
}
