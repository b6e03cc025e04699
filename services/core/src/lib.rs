//! Alleycat's pure core: everything that decides *what* the backend does,
//! with no I/O, so it can be unit- and property-tested in isolation.
//!
//! - [`telemetry`]: the wire type a bike sends and its identifiers;
//! - [`validate`]: parsing request bodies into validated telemetry, with
//!   per-record, per-field errors;
//! - [`output`](mod@output): the power formula;
//! - [`delivery`]: the delivery-object line formats and object keys;
//! - [`backoff`]: retry delays;
//! - [`history`]: per-class, per-second personal bests and their merge;
//! - [`codec`]: gzip encoding and decoding.

pub mod backoff;
pub mod codec;
pub mod delivery;
pub mod dropped;
pub mod history;
pub mod output;
pub mod telemetry;
pub mod validate;

pub use output::output;
pub use telemetry::{ClassId, Event, RaceId, RacerId, Second, Telemetry};

/// Parses a whole number of milliseconds (the unit of every `*_MS` setting),
/// for clap's `value_parser`.
pub fn parse_millis(text: &str) -> Result<std::time::Duration, String> {
    text.trim()
        .parse::<u64>()
        .map(std::time::Duration::from_millis)
        .map_err(|_| format!("expected a whole number of milliseconds, got {text:?}"))
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
    }
}
