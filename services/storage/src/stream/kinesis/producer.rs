//! Putting records: PutRecords calls within the API's limits, retrying only
//! the entries a call reports as failed.

use super::{KinesisSettings, describe, unavailable};
use crate::stream::{PutMetrics, PutRecord, StreamError};
use alleycat_core::backoff::Backoff;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use bytes::Bytes;
use metrics::Counter;
use std::collections::HashSet;
use tokio::time::Instant;

/// PutRecords limits.
const MAX_PUT_RECORDS: usize = 500;
const MAX_PUT_BYTES: usize = 5 << 20;

/// Error codes Kinesis answers when a shard or the account is over its
/// throughput (per entry, or for the whole call once the SDK's own retries
/// gave up).
const THROTTLED: [&str; 3] = [
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "LimitExceededException",
];

/// The producer's counters (handles made once per stream).
pub(super) struct Metrics {
    pub(super) puts: PutMetrics,
    /// Records retried because Kinesis throttled them...
    throttled: Counter,
    /// ...because it failed them otherwise (`InternalFailure`)...
    failed: Counter,
    /// ...or because their whole call failed (network, 5xx).
    call_failed: Counter,
}

impl Metrics {
    pub(super) fn new() -> Metrics {
        const RETRIES: &str = "alleycat_stream_put_retries_total";
        Metrics {
            puts: PutMetrics::new(),
            throttled: metrics::counter!(RETRIES, "reason" => "throttled"),
            failed: metrics::counter!(RETRIES, "reason" => "failed"),
            call_failed: metrics::counter!(RETRIES, "reason" => "call_failed"),
        }
    }
}

/// Puts every record, retrying failed entries until all are on the stream or
/// `settings.put_timeout` would pass.
pub(super) async fn put_records(
    client: &Client,
    settings: &KinesisSettings,
    metrics: &Metrics,
    records: Vec<PutRecord>,
) -> Result<(), StreamError> {
    let count = records.len();
    let entries = records
        .into_iter()
        .map(|r| Entry::new(r.partition_key, r.data))
        .collect();
    let deadline = Instant::now() + settings.put_timeout;
    let placed = put_entries(client, &settings.stream_name, metrics, entries, deadline).await;
    let result = placed.into_result();
    metrics.puts.count(count, &result);
    result
}

/// A PutRecords entry, and the shard it is meant for when that matters.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    request: PutRecordsRequestEntry,
    /// The shard an explicit hash key sends it to, as last listed.
    shard: Option<String>,
}

impl Entry {
    /// A record put by its partition key's hash.
    pub(super) fn new(partition_key: String, data: Bytes) -> Entry {
        Entry {
            request: request(partition_key, data, None),
            shard: None,
        }
    }

    /// A record sent to `shard` by its explicit hash key (a decimal
    /// 128-bit number in the shard's range).
    pub(super) fn to_shard(
        partition_key: String,
        data: Bytes,
        explicit_hash_key: u128,
        shard: String,
    ) -> Entry {
        Entry {
            request: request(partition_key, data, Some(explicit_hash_key.to_string())),
            shard: Some(shard),
        }
    }

    /// Bytes it counts for against PutRecords' limits.
    fn size(&self) -> usize {
        self.request.data.as_ref().len() + self.request.partition_key.len()
    }

    #[cfg(test)]
    pub(super) fn request(&self) -> &PutRecordsRequestEntry {
        &self.request
    }
}

fn request(
    partition_key: String,
    data: Bytes,
    explicit_hash_key: Option<String>,
) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .partition_key(partition_key)
        .data(Blob::new(data.to_vec()))
        .set_explicit_hash_key(explicit_hash_key)
        .build()
        .expect("data and partition key are set")
}

/// How a put of entries ended, entry by entry (by their index in the put).
#[derive(Debug, Default)]
pub(super) struct Placed {
    /// Entries not on the stream when the deadline came.
    pub(super) failed: Vec<usize>,
    /// Entries stored, but on a shard other than the one they were meant
    /// for (the shards changed since they were listed).
    pub(super) misplaced: Vec<usize>,
    /// Why the last failed attempt failed.
    pub(super) last_error: Option<String>,
}

impl Placed {
    /// `Ok` when every entry is on the stream.
    pub(super) fn into_result(self) -> Result<(), StreamError> {
        if self.failed.is_empty() {
            return Ok(());
        }
        Err(unavailable(
            "PutRecords kept failing",
            self.last_error
                .unwrap_or_else(|| format!("{} records throttled", self.failed.len())),
        ))
    }
}

/// Puts every entry (plain or aggregated records), retrying failed ones
/// until all are on the stream or the next try would end past `deadline`.
pub(super) async fn put_entries(
    client: &Client,
    stream_name: &str,
    metrics: &Metrics,
    entries: Vec<Entry>,
    deadline: Instant,
) -> Placed {
    let mut pending: Vec<(usize, Entry)> = entries.into_iter().enumerate().collect();
    let mut placed = Placed::default();
    let mut backoff = Backoff::default();
    // Not `backoff::retry`: each round retries only the entries that failed,
    // and the whole put gives up at a deadline rather than on an error kind.
    loop {
        let mut failed = Vec::new();
        for batch in batches(pending) {
            match put_batch(client, stream_name, &batch).await {
                Ok(outcome) => {
                    metrics.throttled.increment(outcome.throttled as u64);
                    metrics
                        .failed
                        .increment((outcome.retry.len() - outcome.throttled) as u64);
                    placed.misplaced.extend(outcome.misplaced);
                    let retry: HashSet<usize> = outcome.retry.into_iter().collect();
                    failed.extend(batch.into_iter().filter(|(i, _)| retry.contains(i)));
                }
                Err(e) => {
                    let counter = if e.throttled {
                        &metrics.throttled
                    } else {
                        &metrics.call_failed
                    };
                    counter.increment(batch.len() as u64);
                    failed.extend(batch);
                    placed.last_error = Some(e.message);
                }
            }
        }
        if failed.is_empty() {
            return placed;
        }
        let pause = backoff.next_delay();
        if Instant::now() + pause > deadline {
            placed.failed = failed.into_iter().map(|(i, _)| i).collect();
            return placed;
        }
        tracing::debug!(
            records = failed.len(),
            ?pause,
            "retrying failed PutRecords entries"
        );
        tokio::time::sleep(pause).await;
        pending = failed;
    }
}

/// What one PutRecords call did with its entries (by their index).
#[derive(Default)]
struct CallOutcome {
    /// Entries to put again.
    retry: Vec<usize>,
    /// How many of them were throttled.
    throttled: usize,
    /// Entries stored on another shard than they were meant for.
    misplaced: Vec<usize>,
}

/// Why a whole PutRecords call failed.
struct CallFailed {
    message: String,
    /// Kinesis throttled it.
    throttled: bool,
}

/// Puts one PutRecords call's worth.
async fn put_batch(
    client: &Client,
    stream_name: &str,
    batch: &[(usize, Entry)],
) -> Result<CallOutcome, CallFailed> {
    let requests = batch.iter().map(|(_, e)| e.request.clone()).collect();
    let result = client
        .put_records()
        .stream_name(stream_name)
        .set_records(Some(requests))
        .send()
        .await;
    match result {
        Ok(output) => {
            let mut outcome = CallOutcome::default();
            for ((index, entry), result) in batch.iter().zip(output.records) {
                if let Some(code) = &result.error_code {
                    outcome.throttled += usize::from(THROTTLED.contains(&code.as_str()));
                    outcome.retry.push(*index);
                } else if let (Some(meant), Some(landed)) = (&entry.shard, &result.shard_id)
                    && meant != landed
                {
                    outcome.misplaced.push(*index);
                }
            }
            Ok(outcome)
        }
        // The call may or may not have stored them: retrying can only
        // duplicate, which consumers tolerate; giving up could lose.
        Err(e) => Err(CallFailed {
            throttled: e.code().is_some_and(|code| THROTTLED.contains(&code)),
            message: describe(&e),
        }),
    }
}

/// Splits entries into PutRecords calls within the count and size limits.
fn batches(entries: Vec<(usize, Entry)>) -> Vec<Vec<(usize, Entry)>> {
    let mut out: Vec<Vec<(usize, Entry)>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let size = entry.1.size();
        match out.last_mut() {
            Some(last) if last.len() < MAX_PUT_RECORDS && bytes + size <= MAX_PUT_BYTES => {
                bytes += size;
                last.push(entry);
            }
            _ => {
                bytes = size;
                out.push(vec![entry]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(count: usize, bytes: usize) -> Vec<(usize, Entry)> {
        (0..count)
            .map(|i| (i, Entry::new("1".into(), Bytes::from(vec![b'x'; bytes]))))
            .collect()
    }

    #[test]
    fn put_batches_respect_the_count_and_size_limits() {
        let sizes: Vec<usize> = batches(entries(1201, 10)).iter().map(Vec::len).collect();
        assert_eq!(sizes, [500, 500, 201]);
        let big = batches(entries(6, 1 << 20));
        assert_eq!(
            big.iter().map(Vec::len).collect::<Vec<_>>(),
            [4, 2],
            "5 MiB per call"
        );
        let order: Vec<usize> = batches(entries(1201, 10))
            .into_iter()
            .flatten()
            .map(|(i, _)| i)
            .collect();
        assert_eq!(order, (0..1201).collect::<Vec<_>>(), "in order, each once");
        assert!(batches(Vec::new()).is_empty());
    }
}
