//! The record stream between ingest and its consumers.
//!
//! Kinesis semantics: records are appended to shards and read in order per
//! shard; each consumer checkpoints how far it has processed and resumes
//! there after a restart, so a consumer sees every record at least once.

pub mod embedded;
pub mod kinesis;
mod sequence;

pub use sequence::{ParseSequenceError, SequenceNumber};

use alleycat_core::validate::Validated;
use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// Counters of appends, for both implementations (handles made once per
/// stream).
pub(crate) struct PutMetrics {
    /// Records durably appended.
    records: metrics::Counter,
    /// Appends given up: their records count as not stored.
    failures: metrics::Counter,
}

impl PutMetrics {
    pub(crate) fn new() -> PutMetrics {
        PutMetrics {
            records: metrics::counter!("alleycat_stream_records_put_total"),
            failures: metrics::counter!("alleycat_stream_put_failures_total"),
        }
    }

    /// Counts how an append of `records` records ended.
    pub(crate) fn count<T>(&self, records: usize, result: &Result<T, StreamError>) {
        match result {
            Ok(_) => self.records.increment(records as u64),
            Err(_) => self.failures.increment(1),
        }
    }
}

/// A record to append.
#[derive(Debug, Clone, PartialEq)]
pub struct PutRecord {
    /// Records with the same key keep their order (one racer's seconds).
    pub partition_key: String,
    /// The record's bytes (a telemetry message as JSON).
    pub data: Bytes,
    /// The record `data` serializes, as ingest validated it: the embedded
    /// stream hands it to readers in this process along with the bytes,
    /// so that they need not parse them again. Never stored or sent.
    pub validated: Option<Arc<Validated>>,
}

/// A record read back from the stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamRecord {
    /// The shard it was read from.
    pub shard_id: String,
    /// Its position in the shard.
    pub sequence: SequenceNumber,
    /// When the stream accepted it, ms since the epoch.
    pub arrival_ms: i64,
    /// The bytes that were put.
    pub data: Bytes,
    /// What the put handed along with the bytes, when the record was read
    /// from this process's memory (the embedded stream's newest records);
    /// `None` from disk or Kinesis. Take it through
    /// [`SensorLimits::parse_record_or`](alleycat_core::validate::SensorLimits::parse_record_or).
    pub validated: Option<Arc<Validated>>,
}

/// A durable, ordered, multi-consumer record stream.
#[async_trait]
pub trait Stream: Send + Sync + 'static {
    /// Appends every record. `Ok` means all of them are durably on the
    /// stream; on `Err` the caller must treat none as stored (some may be,
    /// which consumers tolerate as duplicates).
    async fn put_records(&self, records: Vec<PutRecord>) -> Result<(), StreamError>;

    /// Starts (or resumes, from its last checkpoint) reading as `consumer`.
    /// A consumer seen for the first time starts at the oldest record kept.
    async fn subscribe(&self, consumer: &str) -> Result<Box<dyn Subscription>, StreamError>;

    /// Whether the stream can take records now, as far as it knows without
    /// writing (readiness probes ask it, so it must be cheap); `Err` says
    /// why not. The embedded stream reports a failed write until it has
    /// reopened its database, and a database file deleted while open.
    async fn ready(&self) -> Result<(), StreamError> {
        Ok(())
    }
}

/// One consumer's reading position.
#[async_trait]
pub trait Subscription: Send {
    /// The next records after those already returned, at most `max`; waits
    /// up to `wait` for some to arrive and returns an empty batch if none do.
    /// Cancel-safe: if the future is dropped, no record is skipped.
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<StreamRecord>, StreamError>;

    /// Durably records that every record of `shard_id` up to and including
    /// `sequence` has been processed; a restart resumes after it. Clears the
    /// shard's pending delivery. Fails with [`StreamError::LeaseLost`] when
    /// another consumer has taken the shard over.
    async fn checkpoint(
        &mut self,
        shard_id: &str,
        sequence: &SequenceNumber,
    ) -> Result<(), StreamError>;

    /// Durably records, before writing it, the delivery of `shard_id`'s
    /// records `first..=last` under `key`, so that whoever reads the shard
    /// next (this process after a crash, or another one) can tell whether it
    /// completed and skip it instead of delivering it twice.
    async fn begin_delivery(
        &mut self,
        shard_id: &str,
        delivery: &PendingDelivery,
    ) -> Result<(), StreamError>;

    /// The delivery begun on `shard_id` after its last checkpoint, if any.
    async fn pending_delivery(
        &mut self,
        shard_id: &str,
    ) -> Result<Option<PendingDelivery>, StreamError>;

    /// Stops reading and hands the shards over at once (rather than when
    /// their leases expire). Call after the last checkpoint.
    async fn close(&mut self) {}
}

/// A delivery that was begun but not yet checkpointed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingDelivery {
    /// The key of the last object the delivery writes.
    pub key: String,
    /// Sequence of its first record.
    pub first: SequenceNumber,
    /// Sequence of its last record.
    pub last: SequenceNumber,
}

/// Why a stream operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StreamError {
    /// The stream cannot take or serve records right now.
    #[error("stream unavailable: {0}")]
    Unavailable(String),
    /// The stream was shut down.
    #[error("the stream is closed")]
    Closed,
    /// A checkpoint names a shard or sequence this stream never produced.
    #[error("invalid checkpoint: {0}")]
    InvalidCheckpoint(String),
    /// Another consumer process owns the shard now: drop what is buffered
    /// of it (the new owner reads it again from the last checkpoint).
    #[error("shard {0} is now owned by another consumer")]
    LeaseLost(String),
}

impl StreamError {
    /// Whether the shard was taken over: retrying cannot help, the work on
    /// it must be dropped.
    #[must_use]
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, StreamError::LeaseLost(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pending_delivery_is_stored_in_the_same_bytes_as_before() {
        let stored = r#"{"key":"2026/11/26/10/x.gz","first":"49617562271853452710231452089870573953214820913201119234","last":"49617562271853452710231452089870573953214820913201119299"}"#;
        let pending: PendingDelivery = serde_json::from_str(stored).unwrap();
        assert!(pending.first < pending.last);
        assert_eq!(serde_json::to_string(&pending).unwrap(), stored);
        let embedded = PendingDelivery {
            key: "k".into(),
            first: SequenceNumber::from(0),
            last: SequenceNumber::from(1),
        };
        assert_eq!(
            serde_json::to_string(&embedded).unwrap(),
            r#"{"key":"k","first":"00000000000000000000","last":"00000000000000000001"}"#
        );
    }
}
