//! The plausibility limits of telemetry as settings: declared once here and
//! carried to every service in [`Context`](crate::Context), since ingest,
//! the transformer and the rankings must all check records by the same
//! limits (one clap argument cannot be declared by three services that the
//! all-in-one flattens side by side).

use alleycat_core::validate::{
    DEFAULT_MAX_CADENCE, DEFAULT_MAX_RESISTANCE, LimitError, SensorLimits, parse_sensor_limit,
};

/// How high a record's `cadence` and `resistance` may be. A record over
/// either is refused at ingest (422), and one put on the stream by another
/// producer goes to `processing-failed/` and is skipped by the rankings.
#[derive(Debug, Clone, clap::Args)]
pub struct SensorLimitArgs {
    /// Highest cadence (rpm) a record may carry; greater than 0, at most
    /// 1000.
    #[arg(long, env = "ALLEYCAT_MAX_CADENCE", default_value_t = DEFAULT_MAX_CADENCE, value_parser = parse_sensor_limit, allow_negative_numbers = true)]
    pub max_cadence: f64,

    /// Highest resistance a record may carry; greater than 0, at most 1000.
    #[arg(long, env = "ALLEYCAT_MAX_RESISTANCE", default_value_t = DEFAULT_MAX_RESISTANCE, value_parser = parse_sensor_limit, allow_negative_numbers = true)]
    pub max_resistance: f64,
}

impl SensorLimitArgs {
    /// The limits, or why they make no sense (only for values set by hand:
    /// clap's parser refuses those already).
    pub fn limits(&self) -> Result<SensorLimits, LimitError> {
        SensorLimits::new(self.max_cadence, self.max_resistance)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Settings {
        #[command(flatten)]
        limits: SensorLimitArgs,
    }

    #[test]
    fn defaults_flags_and_refusals() {
        let defaults = Settings::parse_from(["x"]).limits.limits().unwrap();
        assert_eq!(defaults, SensorLimits::DEFAULT);
        let set = Settings::parse_from(["x", "--max-cadence", "150.5", "--max-resistance", "80"]);
        let set = set.limits.limits().unwrap();
        assert_eq!((set.max_cadence(), set.max_resistance()), (150.5, 80.0));
        // A negative limit reaches the parser (not taken for a flag), which
        // says what is wrong with it.
        for (flag, bad) in [
            ("--max-cadence", "-1"),
            ("--max-cadence", "NaN"),
            ("--max-cadence", "0"),
            ("--max-resistance", "1000.01"),
            ("--max-resistance", "lots"),
        ] {
            let err = Settings::try_parse_from(["x", flag, bad]).err().unwrap();
            let text = err.to_string();
            assert!(
                text.contains(flag) && text.contains("at most 1000"),
                "{text}"
            );
        }
        let by_hand = SensorLimitArgs {
            max_cadence: f64::NAN,
            max_resistance: 100.0,
        };
        assert_eq!(by_hand.limits().unwrap_err().field, "cadence");
    }
}
