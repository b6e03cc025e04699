//! How high a bike's sensors may read: past these limits a reading is a
//! broken sensor or a cheat, and a single such record would set an all-time
//! best no honest racer can beat. The limits are settings
//! (`ALLEYCAT_MAX_CADENCE`, `ALLEYCAT_MAX_RESISTANCE`) shared by every
//! service that checks records: ingest, the transformer and the rankings.

use super::{BatchError, BodyFormat, FieldError, diagnose, fast};
use crate::telemetry::{MAX_SENSOR_VALUE, Telemetry};
use serde_json::Value;
use std::borrow::Cow;

/// Highest cadence (rpm) a record may carry unless `ALLEYCAT_MAX_CADENCE`
/// says otherwise: elite track sprinters peak around 200 rpm.
pub const DEFAULT_MAX_CADENCE: f64 = 200.0;

/// Highest resistance a record may carry unless `ALLEYCAT_MAX_RESISTANCE`
/// says otherwise: the bikes' resistance scale ends at 100.
pub const DEFAULT_MAX_RESISTANCE: f64 = 100.0;

/// The highest `cadence` and `resistance` a record may carry, each greater
/// than 0 and at most [`MAX_SENSOR_VALUE`]; checked when built, so a value
/// of this type always holds sensible limits.
///
/// Every parser of telemetry is a method of it, so no record is checked
/// without limits; the free functions of [`crate::validate`] use
/// [`Self::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SensorLimits {
    max_cadence: f64,
    max_resistance: f64,
}

/// A record ingest validated, with the limits it was validated under:
/// handed along with its bytes to readers in the same process (the
/// embedded stream's newest records), which take it instead of parsing
/// the bytes again ([`SensorLimits::parse_record_or`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Validated {
    /// The record.
    pub telemetry: Telemetry,
    /// The limits it met.
    pub limits: SensorLimits,
}

/// A limit that makes no sense as a setting.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error(
    "{field} limit must be a number greater than 0 and at most {MAX_SENSOR_VALUE}, got {value}"
)]
pub struct LimitError {
    /// `cadence` or `resistance`.
    pub field: &'static str,
    /// The refused value.
    pub value: f64,
}

impl SensorLimits {
    /// [`DEFAULT_MAX_CADENCE`] and [`DEFAULT_MAX_RESISTANCE`].
    pub const DEFAULT: SensorLimits = SensorLimits {
        max_cadence: DEFAULT_MAX_CADENCE,
        max_resistance: DEFAULT_MAX_RESISTANCE,
    };

    /// Limits of `max_cadence` and `max_resistance`, if both are greater
    /// than 0 and at most [`MAX_SENSOR_VALUE`] (NaN is neither).
    pub fn new(max_cadence: f64, max_resistance: f64) -> Result<SensorLimits, LimitError> {
        let check = |field, value: f64| {
            if sensible(value) {
                Ok(value)
            } else {
                Err(LimitError { field, value })
            }
        };
        Ok(SensorLimits {
            max_cadence: check("cadence", max_cadence)?,
            max_resistance: check("resistance", max_resistance)?,
        })
    }

    /// The highest cadence accepted.
    #[must_use]
    pub fn max_cadence(self) -> f64 {
        self.max_cadence
    }

    /// The highest resistance accepted.
    #[must_use]
    pub fn max_resistance(self) -> f64 {
        self.max_resistance
    }

    /// Parses and validates a request body: all of its records, or why not.
    pub fn parse_batch(
        self,
        body: &[u8],
        format: BodyFormat,
    ) -> Result<Vec<Telemetry>, BatchError> {
        match fast::batch(body, format, self) {
            Some(records) => Ok(records),
            None => diagnose::batch(body, format, self),
        }
    }

    /// Parses one record from raw JSON bytes (as read back from a stream).
    pub fn parse_record(self, bytes: &[u8]) -> Result<Telemetry, Vec<FieldError>> {
        fast::record(bytes, self).map_or_else(|| diagnose::record(bytes, self), Ok)
    }

    /// [`Self::parse_record`] of a stream record's `bytes`, or, when ingest
    /// handed the record along `validated` under these same limits, that
    /// record without parsing: its bytes are it serialized, and a
    /// validated record's serialization parses back to it (the round trip
    /// the property tests check).
    pub fn parse_record_or<'a>(
        self,
        bytes: &[u8],
        validated: Option<&'a Validated>,
    ) -> Result<Cow<'a, Telemetry>, Vec<FieldError>> {
        match validated {
            Some(v) if v.limits == self => Ok(Cow::Borrowed(&v.telemetry)),
            _ => self.parse_record(bytes).map(Cow::Owned),
        }
    }

    /// Validates one JSON value as a telemetry message, reporting every
    /// problem. Unknown extra fields are ignored. A [`Value`] holds each
    /// key once, so this cannot see a repeated key; request bodies and
    /// stream records are checked for those as they are parsed.
    pub fn validate_value(self, value: &Value) -> Result<Telemetry, Vec<FieldError>> {
        diagnose::validate_value(value, self)
    }
}

impl Default for SensorLimits {
    fn default() -> SensorLimits {
        SensorLimits::DEFAULT
    }
}

/// Whether `limit` may be a limit: greater than 0 and at most
/// [`MAX_SENSOR_VALUE`] (NaN is neither).
fn sensible(limit: f64) -> bool {
    limit > 0.0 && limit <= MAX_SENSOR_VALUE
}

/// Parses one limit setting (`ALLEYCAT_MAX_CADENCE`,
/// `ALLEYCAT_MAX_RESISTANCE`) for clap's `value_parser`: a number greater
/// than 0 and at most [`MAX_SENSOR_VALUE`].
pub fn parse_sensor_limit(text: &str) -> Result<f64, String> {
    let value = text.trim().parse::<f64>().ok();
    match value {
        Some(v) if sensible(v) => Ok(v),
        _ => Err(format!(
            "must be a number greater than 0 and at most {MAX_SENSOR_VALUE}, got {text:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonsense_limits_are_refused() {
        for bad in [
            0.0,
            -0.0,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            MAX_SENSOR_VALUE + 0.001,
        ] {
            let err = SensorLimits::new(bad, 100.0).unwrap_err();
            assert_eq!(err.field, "cadence");
            assert!(
                err.to_string().starts_with("cadence limit must be"),
                "{err}"
            );
            assert_eq!(
                SensorLimits::new(200.0, bad).unwrap_err().field,
                "resistance"
            );
        }
        for bad in [
            "0", "-5", "NaN", "inf", "1000.5", "1e9", "", "fast", "200rpm",
        ] {
            let err = parse_sensor_limit(bad).unwrap_err();
            assert!(err.contains("at most 1000"), "{bad}: {err}");
            assert!(err.contains(&format!("{bad:?}")), "{bad}: {err}");
        }
    }

    /// A handed-along record is taken only under the limits it was
    /// validated under; otherwise the bytes decide, as they would alone.
    #[test]
    fn a_validated_record_stands_for_its_bytes_only_under_its_limits() {
        let telemetry = SensorLimits::DEFAULT
            .validate_value(&crate::validate::fixtures::valid())
            .unwrap();
        let bytes = serde_json::to_vec(&telemetry).unwrap();
        let strict = SensorLimits::new(telemetry.cadence - 1.0, 100.0).unwrap();
        let handed = Validated {
            telemetry: telemetry.clone(),
            limits: SensorLimits::DEFAULT,
        };
        let taken = SensorLimits::DEFAULT
            .parse_record_or(&bytes, Some(&handed))
            .unwrap();
        assert!(matches!(taken, Cow::Borrowed(_)), "not parsed again");
        assert_eq!(*taken, telemetry);
        // Under other limits the bytes are parsed, and the stricter ones
        // refuse the cadence the default limits took.
        let errors = strict.parse_record_or(&bytes, Some(&handed)).unwrap_err();
        assert_eq!(errors, strict.parse_record(&bytes).unwrap_err());
        assert_eq!(errors[0].field, Some("cadence"));
        // Nothing handed along: parsed.
        let parsed = SensorLimits::DEFAULT.parse_record_or(&bytes, None).unwrap();
        assert!(matches!(parsed, Cow::Owned(_)));
        assert_eq!(*parsed, telemetry);
    }

    #[test]
    fn sensible_limits_are_taken() {
        assert_eq!(parse_sensor_limit("200"), Ok(200.0));
        assert_eq!(parse_sensor_limit(" 0.5 "), Ok(0.5));
        assert_eq!(parse_sensor_limit("1000"), Ok(MAX_SENSOR_VALUE));
        let limits = SensorLimits::new(150.5, MAX_SENSOR_VALUE).unwrap();
        assert_eq!(limits.max_cadence(), 150.5);
        assert_eq!(limits.max_resistance(), MAX_SENSOR_VALUE);
        assert_eq!(
            SensorLimits::default(),
            SensorLimits::new(DEFAULT_MAX_CADENCE, DEFAULT_MAX_RESISTANCE).unwrap()
        );
    }
}
