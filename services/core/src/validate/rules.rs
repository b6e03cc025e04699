//! The rule of each field once its JSON type is right. The typed fast path
//! and the diagnosing checker both call these, so the two cannot disagree
//! on what is valid or on how a broken rule is worded.
//!
//! Every reason that names a limit builds it from the constant (or the
//! configured [`SensorLimits`]) holding it.

use super::SensorLimits;
use crate::telemetry::{
    CLASS_COUNT, ClassId, Event, MAX_NAME_CHARS, MAX_SAFE_INTEGER, MAX_SECOND, Second,
};

/// `deviceTimestamp`, `raceId` and `racerId`: at most [`MAX_SAFE_INTEGER`],
/// so a browser reads them back exactly.
pub(super) fn id(v: u64) -> Result<u64, String> {
    if v <= MAX_SAFE_INTEGER {
        Ok(v)
    } else {
        Err(not_from(0, MAX_SAFE_INTEGER, v))
    }
}

/// `second`: 1 to [`MAX_SECOND`].
pub(super) fn second(v: u64) -> Result<Second, String> {
    Second::new(v).ok_or_else(|| not_from(1, MAX_SECOND.into(), v))
}

/// `classId`: 1 to [`CLASS_COUNT`].
pub(super) fn class_id(v: u64) -> Result<ClassId, String> {
    ClassId::new(v).ok_or_else(|| not_from(1, CLASS_COUNT.into(), v))
}

fn not_from(min: u64, max: u64, v: u64) -> String {
    format!("must be an integer from {min} to {max}, got {v}")
}

/// `cadence`: finite, 0 to the limits' [`SensorLimits::max_cadence`].
pub(super) fn cadence(v: f64, limits: SensorLimits) -> Result<f64, String> {
    sensor(v, limits.max_cadence())
}

/// `resistance`: finite, 0 to the limits' [`SensorLimits::max_resistance`].
pub(super) fn resistance(v: f64, limits: SensorLimits) -> Result<f64, String> {
    sensor(v, limits.max_resistance())
}

/// A sensor's reading: finite, 0 to `max` (which [`SensorLimits`] keeps
/// at most `MAX_SENSOR_VALUE`).
fn sensor(v: f64, max: f64) -> Result<f64, String> {
    if v.is_finite() && (0.0..=max).contains(&v) {
        Ok(v)
    } else if v < 0.0 {
        Err(format!("must not be negative, got {v}"))
    } else if v.is_finite() {
        Err(format!("must be at most {max}, got {v}"))
    } else {
        Err("must be a finite number".to_owned())
    }
}

/// `event`: one of the two events.
pub(super) fn event(s: &str) -> Result<Event, String> {
    match s {
        "update" => Ok(Event::Update),
        "final" => Ok(Event::Final),
        other => Err(format!("must be \"update\" or \"final\", got {other:?}")),
    }
}

/// `name`: at most [`MAX_NAME_CHARS`] characters, none of them control
/// characters.
pub(super) fn name(s: &str) -> Result<(), String> {
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

/// `uuid`, when present: only the canonical 8-4-4-4-12 form, as the
/// contract's schema says; the `uuid` crate alone would also take braced,
/// URN and unhyphenated forms.
pub(super) fn uuid(s: &str) -> Result<(), String> {
    if s.len() == 36 && s.as_bytes()[8] == b'-' && ::uuid::Uuid::try_parse(s).is_ok() {
        Ok(())
    } else {
        Err("must be a UUID such as \"0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12\"".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::super::fixtures::{only_error, with};
    use super::super::{parse_record, validate_value};
    use super::*;
    use serde_json::json;

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
    fn class_must_be_from_one_to_the_class_count() {
        for bad in [0, u64::from(CLASS_COUNT) + 1, 9] {
            let (field, reason) = only_error(&with("classId", json!(bad)));
            assert_eq!(field, Some("classId"));
            assert_eq!(
                reason,
                format!("must be an integer from 1 to {CLASS_COUNT}, got {bad}")
            );
        }
        for good in 1..=CLASS_COUNT {
            assert!(validate_value(&with("classId", json!(good))).is_ok());
        }
    }

    #[test]
    fn second_must_be_from_one_to_max_second() {
        assert_eq!(only_error(&with("second", json!(0))).0, Some("second"));
        let (field, reason) = only_error(&with("second", json!(MAX_SECOND + 1)));
        assert_eq!(field, Some("second"));
        assert_eq!(
            reason,
            format!(
                "must be an integer from 1 to {MAX_SECOND}, got {}",
                MAX_SECOND + 1
            )
        );
        assert_eq!(only_error(&with("second", json!(2.5))).0, Some("second"));
        assert!(validate_value(&with("second", json!(1))).is_ok());
        assert!(validate_value(&with("second", json!(MAX_SECOND))).is_ok());
    }

    #[test]
    fn ids_are_at_most_the_largest_safe_integer() {
        for field in ["deviceTimestamp", "racerId", "raceId"] {
            let over = MAX_SAFE_INTEGER + 1;
            assert_eq!(
                only_error(&with(field, json!(over))),
                (
                    Some(field),
                    format!("must be an integer from 0 to {MAX_SAFE_INTEGER}, got {over}")
                )
            );
            assert!(validate_value(&with(field, json!(MAX_SAFE_INTEGER))).is_ok());
        }
    }

    #[test]
    fn sensors_must_be_finite_non_negative_and_at_most_their_limit() {
        let defaults = SensorLimits::DEFAULT;
        for (field, max) in [
            ("cadence", defaults.max_cadence()),
            ("resistance", defaults.max_resistance()),
        ] {
            assert_eq!(
                only_error(&with(field, json!(-0.5))),
                (Some(field), "must not be negative, got -0.5".into())
            );
            let over = max + 0.01;
            assert_eq!(
                only_error(&with(field, json!(over))),
                (Some(field), format!("must be at most {max}, got {over}"))
            );
            assert!(validate_value(&with(field, json!(max))).is_ok());
            assert!(validate_value(&with(field, json!(0))).is_ok());
        }
        // JSON has no NaN or infinity; an overflowing literal fails to parse.
        assert!(parse_record(br#"{"cadence": 1e400}"#).is_err());
        assert_eq!(
            cadence(f64::INFINITY, defaults).unwrap_err(),
            "must be a finite number"
        );
        assert_eq!(
            resistance(f64::NAN, defaults).unwrap_err(),
            "must be a finite number"
        );
    }

    #[test]
    fn the_default_limits_are_200_rpm_and_resistance_100() {
        // The issue's example: one record at cadence 1000 set a best of
        // 11,022 no honest racer could beat.
        let (field, reason) = only_error(&with("cadence", json!(1000)));
        assert_eq!(field, Some("cadence"));
        assert_eq!(reason, "must be at most 200, got 1000");
        assert!(validate_value(&with("cadence", json!(200))).is_ok());
        assert!(validate_value(&with("cadence", json!(200.0))).is_ok());
        assert_eq!(
            only_error(&with("cadence", json!(200.01))),
            (Some("cadence"), "must be at most 200, got 200.01".into())
        );
        assert!(validate_value(&with("resistance", json!(100))).is_ok());
        assert_eq!(
            only_error(&with("resistance", json!(100.000_001))),
            (
                Some("resistance"),
                "must be at most 100, got 100.000001".into()
            )
        );
        // Both over: both named, each with its own limit.
        let mut v = with("cadence", json!(250));
        v["resistance"] = json!(101);
        let errors = validate_value(&v).unwrap_err();
        let named: Vec<_> = errors
            .iter()
            .map(|e| (e.field, e.reason.as_str()))
            .collect();
        assert_eq!(
            named,
            [
                (Some("cadence"), "must be at most 200, got 250"),
                (Some("resistance"), "must be at most 100, got 101"),
            ]
        );
    }

    #[test]
    fn custom_limits_are_what_every_entry_point_checks() {
        let limits = SensorLimits::new(120.5, 60.0).unwrap();
        let record = |cadence: f64, resistance: f64| {
            let mut v = with("cadence", json!(cadence));
            v["resistance"] = json!(resistance);
            v
        };
        let check = |v: &serde_json::Value| {
            let text = serde_json::to_vec(v).unwrap();
            let one = limits.parse_record(&text);
            let batch = limits
                .parse_batch(&text, super::super::BodyFormat::Json)
                .map(|mut records| records.remove(0))
                .map_err(|e| e.records().to_vec());
            assert_eq!(limits.validate_value(v), one, "{v}");
            match (&one, &batch) {
                (Ok(a), Ok(b)) => assert_eq!(a, b),
                (Err(a), Err(b)) => {
                    let a: Vec<_> = a.iter().map(|e| (e.field, e.reason.clone())).collect();
                    let b: Vec<_> = b.iter().map(|e| (e.field, e.reason.clone())).collect();
                    assert_eq!(a, b);
                }
                _ => panic!("{one:?} but {batch:?}"),
            }
            one
        };
        assert!(check(&record(120.5, 60.0)).is_ok());
        let errors = check(&record(120.51, 60.0)).unwrap_err();
        assert_eq!(errors[0].field, Some("cadence"));
        assert_eq!(errors[0].reason, "must be at most 120.5, got 120.51");
        let errors = check(&record(80.0, 61.0)).unwrap_err();
        assert_eq!(errors[0].field, Some("resistance"));
        assert_eq!(errors[0].reason, "must be at most 60, got 61");
        // Raised up to the absolute bound: what the defaults refuse passes.
        let raised = SensorLimits::new(1000.0, 1000.0).unwrap();
        assert!(raised.validate_value(&record(1000.0, 1000.0)).is_ok());
        assert!(validate_value(&record(1000.0, 1000.0)).is_err());
    }

    #[test]
    fn name_is_at_most_max_name_chars_characters() {
        let long: String = "é".repeat(MAX_NAME_CHARS + 1);
        assert_eq!(
            only_error(&with("name", json!(long))),
            (
                Some("name"),
                format!(
                    "must be at most {MAX_NAME_CHARS} characters, got {}",
                    MAX_NAME_CHARS + 1
                )
            )
        );
        assert!(validate_value(&with("name", json!("é".repeat(MAX_NAME_CHARS)))).is_ok());
        assert_eq!(only_error(&with("name", json!("a\u{0}b"))).0, Some("name"));
    }

    #[test]
    fn uuid_must_be_hyphenated() {
        assert!(uuid("0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12").is_ok());
        for bad in [
            "not-a-uuid",
            "0b7e4f1e5a3c4d3e9f1a2c7b8d9e0f12",
            "{0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12}",
            "urn:uuid:0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12",
        ] {
            assert!(uuid(bad).is_err(), "{bad}");
        }
    }
}
