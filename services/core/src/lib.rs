//! Alleycat's pure core: everything that decides *what* the backend does,
//! with no I/O, so it can be unit- and property-tested in isolation.
//!
//! - [`telemetry`]: the wire type a bike sends and its identifiers;
//! - [`validate`]: parsing request bodies into validated telemetry, with
//!   per-record, per-field errors;
//! - [`output`](mod@output): the power formula;
//! - [`js_number`]: numbers rounded and written exactly as the original's
//!   JavaScript did;
//! - [`delivery`]: the delivery-object line formats and object keys;
//! - [`backoff`]: retry delays;
//! - [`lull`]: when a flow of arrivals has paused, at its own rate;
//! - [`disqualification`]: which races and racers no longer count;
//! - [`history`]: per-class, per-second personal bests and their merge;
//! - [`codec`]: gzip encoding and decoding.

pub mod backoff;
pub mod blocking;
pub mod codec;
pub mod delivery;
pub mod disqualification;
pub mod dropped;
pub mod history;
pub mod js_number;
pub mod lull;
pub mod output;
pub mod telemetry;
pub mod validate;

pub use output::output;
pub use telemetry::{ClassId, Event, RaceId, RacerId, Second, Telemetry};

/// Longest duration any `*_MS` setting takes: ten years, far beyond any
/// sensible setting and far below what time arithmetic overflows at.
pub const MAX_SETTING_MILLIS: u64 = 10 * 365 * 24 * 3600 * 1000;

/// Parses a whole number of milliseconds, at most [`MAX_SETTING_MILLIS`]
/// (the unit of every `*_MS` setting), for clap's `value_parser`.
pub fn parse_millis(text: &str) -> Result<std::time::Duration, String> {
    let millis = text
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("expected a whole number of milliseconds, got {text:?}"))?;
    if millis > MAX_SETTING_MILLIS {
        return Err(format!(
            "at most {MAX_SETTING_MILLIS} milliseconds (ten years), got {millis}"
        ));
    }
    Ok(std::time::Duration::from_millis(millis))
}

/// [`parse_millis`] for intervals and timeouts, where zero would spin a
/// loop or time everything out at once.
pub fn parse_positive_millis(text: &str) -> Result<std::time::Duration, String> {
    let duration = parse_millis(text)?;
    if duration.is_zero() {
        return Err("must be at least 1 millisecond".to_owned());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn parses_milliseconds() {
        assert_eq!(parse_millis("5000"), Ok(Duration::from_secs(5)));
        assert!(parse_millis("5s").unwrap_err().contains("milliseconds"));
        assert!(parse_millis("-1").is_err());
        assert_eq!(parse_millis("0"), Ok(Duration::ZERO));
        assert!(
            parse_millis("18446744073709551615")
                .unwrap_err()
                .contains("at most")
        );
        assert!(
            parse_positive_millis("0")
                .unwrap_err()
                .contains("at least 1")
        );
        assert_eq!(parse_positive_millis("1"), Ok(Duration::from_millis(1)));
    }
}
