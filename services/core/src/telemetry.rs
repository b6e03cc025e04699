//! The telemetry message a bike sends once a second, and its identifiers.
//!
//! Identifiers are newtypes so a racer id can never be passed where a race id
//! is expected; they are only constructed by [`crate::validate`] (or from
//! already-validated data), which enforces their ranges.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Largest integer a JavaScript frontend can represent exactly (2^53 - 1);
/// ids above it would be silently corrupted by `JSON.parse` in the browser.
pub const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// An integer written in canonical decimal, as JavaScript writes an integer
/// (an object key, a JWT subject): digits only, no sign, no leading zero.
/// `Ok(n)`, `Err(true)` when it is such an integer past `max`, `Err(false)`
/// when it is no integer at all.
pub fn canonical_integer(text: &str, max: u64) -> Result<u64, bool> {
    let digits = text.as_bytes();
    if digits.is_empty()
        || !digits.iter().all(u8::is_ascii_digit)
        || (digits.len() > 1 && digits[0] == b'0')
    {
        return Err(false);
    }
    match text.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(true),
    }
}

/// Number of racing classes.
pub const CLASS_COUNT: u8 = 6;

/// Highest `second` a message may carry (a race lasts 300 s; an hour leaves
/// room for longer formats).
pub const MAX_SECOND: u16 = 3600;

/// Longest racer name, in characters.
pub const MAX_NAME_CHARS: usize = 64;

/// Upper bound for cadence and resistance: anything above is a broken or
/// hostile sensor, and would poison the class history.
pub const MAX_SENSOR_VALUE: f64 = 1000.0;

macro_rules! id_newtype {
    ($(#[$meta:meta])* $name:ident($inner:ty)) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl $name {
            /// The raw value.
            #[must_use]
            pub const fn get(self) -> $inner {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

id_newtype!(
    /// A racer's id (non-negative, at most [`MAX_SAFE_INTEGER`]).
    RacerId(u64)
);
id_newtype!(
    /// A race's id (non-negative, at most [`MAX_SAFE_INTEGER`]); the simulator
    /// uses `floor(epoch_ms / 300000)`, the web client `Date.now()`.
    RaceId(u64)
);
id_newtype!(
    /// A racing class, 1 to [`CLASS_COUNT`].
    ClassId(u8)
);
id_newtype!(
    /// A second of a race, 1 to [`MAX_SECOND`].
    Second(u16)
);

impl ClassId {
    /// Every class, in order.
    pub fn all() -> impl Iterator<Item = ClassId> {
        (1..=CLASS_COUNT).map(ClassId)
    }

    /// Parses a class id, accepting only 1 to [`CLASS_COUNT`].
    #[must_use]
    pub fn new(raw: u64) -> Option<ClassId> {
        u8::try_from(raw)
            .ok()
            .filter(|c| (1..=CLASS_COUNT).contains(c))
            .map(ClassId)
    }
}

impl Second {
    /// Parses a second, accepting only 1 to [`MAX_SECOND`].
    #[must_use]
    pub fn new(raw: u64) -> Option<Second> {
        u16::try_from(raw)
            .ok()
            .filter(|s| (1..=MAX_SECOND).contains(s))
            .map(Second)
    }
}

/// Whether a message is an ordinary second or the racer's last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Event {
    /// Every second but the last.
    Update,
    /// The racer's last second: its output is the race result.
    Final,
}

/// One validated telemetry message, serialized in the original wire format
/// (camelCase; `uuid` omitted when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Telemetry {
    /// Client-generated message id (web client only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uuid: Option<String>,
    /// `update` or `final`.
    pub event: Event,
    /// The bike's clock, ms since the Unix epoch.
    pub device_timestamp: u64,
    /// Second of the race, from 1.
    pub second: Second,
    /// The race.
    pub race_id: RaceId,
    /// The racer's display name.
    pub name: String,
    /// The racer.
    pub racer_id: RacerId,
    /// The racer's class.
    pub class_id: ClassId,
    /// Pedal cadence (rpm).
    pub cadence: f64,
    /// Resistance setting.
    pub resistance: f64,
}

impl Telemetry {
    /// This message's output (power), by the one formula.
    #[must_use]
    pub fn output(&self) -> f64 {
        crate::output(self.cadence, self.resistance)
    }
}
