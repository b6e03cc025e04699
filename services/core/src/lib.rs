//! Alleycat's pure core: everything that decides *what* the backend does,
//! with no I/O, so it can be unit- and property-tested in isolation.
//!
//! - [`telemetry`]: the wire type a bike sends and its identifiers;
//! - [`validate`]: parsing request bodies into validated telemetry, with
//!   per-record, per-field errors;
//! - [`output`]: the power formula;
//! - [`delivery`]: the delivery-object line formats and object keys;
//! - [`batcher`]: size- and interval-bounded buffering (the Firehose buffer);
//! - [`history`]: per-class, per-second personal bests and their merge;
//! - [`codec`]: gzip encoding and decoding.

pub mod batcher;
pub mod codec;
pub mod delivery;
pub mod history;
pub mod output;
pub mod telemetry;
pub mod validate;

pub use output::output;
pub use telemetry::{ClassId, Event, RaceId, RacerId, Second, Telemetry};
