//! The record stream between ingest and its consumers.
//!
//! Kinesis semantics: records are appended to shards and read in order per
//! shard; each consumer checkpoints how far it has processed and resumes
//! there after a restart, so a consumer sees every record at least once.

pub mod embedded;
pub mod kinesis;
mod lease;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;
use std::time::Duration;

/// A record to append.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRecord {
    /// Records with the same key keep their order (one racer's seconds).
    pub partition_key: String,
    /// The record's bytes (a telemetry message as JSON).
    pub data: Bytes,
}

/// A record read back from the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRecord {
    /// The shard it was read from.
    pub shard_id: String,
    /// Its position in the shard. Sequence numbers of one shard sort in
    /// stream order when compared as numbers.
    pub sequence: String,
    /// When the stream accepted it, ms since the epoch.
    pub arrival_ms: i64,
    /// The bytes that were put.
    pub data: Bytes,
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
    async fn checkpoint(&mut self, shard_id: &str, sequence: &str) -> Result<(), StreamError>;

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
    pub first: String,
    /// Sequence of its last record.
    pub last: String,
}

/// Orders two sequence numbers of one shard. They are decimal integers of
/// any length (Kinesis uses up to 128 bits), so compare them as numbers, not
/// as strings.
#[must_use]
pub fn compare_sequences(a: &str, b: &str) -> Ordering {
    let a = a.trim_start_matches('0');
    let b = b.trim_start_matches('0');
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_compare_as_numbers() {
        assert_eq!(compare_sequences("9", "10"), Ordering::Less);
        assert_eq!(
            compare_sequences("00000000000000000010", "9"),
            Ordering::Greater
        );
        let kinesis = "49617562271853452710231452089870573953214820913201119234";
        let next = "49617562271853452710231452089870573953214820913201119235";
        assert_eq!(compare_sequences(kinesis, next), Ordering::Less);
        assert_eq!(compare_sequences(kinesis, kinesis), Ordering::Equal);
        assert_eq!(compare_sequences("0", "000"), Ordering::Equal);
    }
}
