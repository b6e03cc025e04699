//! The record stream between ingest and its consumers.
//!
//! Kinesis semantics: records are appended to shards and read in order per
//! shard; each consumer checkpoints how far it has processed and resumes
//! there after a restart, so a consumer sees every record at least once.

pub mod embedded;

use async_trait::async_trait;
use bytes::Bytes;
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
    /// `sequence` has been processed; a restart resumes after it.
    async fn checkpoint(&mut self, shard_id: &str, sequence: &str) -> Result<(), StreamError>;
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
}
