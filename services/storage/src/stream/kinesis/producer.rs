//! Putting records: PutRecords calls within the API's limits, retrying only
//! the entries a call reports as failed.

use super::{KinesisSettings, describe, unavailable};
use crate::stream::{PutMetrics, PutRecord, StreamError};
use alleycat_core::backoff::Backoff;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use metrics::Counter;

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
    puts: PutMetrics,
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
    let result = put_all(client, settings, metrics, records).await;
    metrics.puts.count(count, &result);
    result
}

async fn put_all(
    client: &Client,
    settings: &KinesisSettings,
    metrics: &Metrics,
    records: Vec<PutRecord>,
) -> Result<(), StreamError> {
    let mut pending: Vec<PutRecordsRequestEntry> = records
        .into_iter()
        .map(|r| {
            PutRecordsRequestEntry::builder()
                .partition_key(r.partition_key)
                .data(Blob::new(r.data.to_vec()))
                .build()
                .expect("data and partition key are set")
        })
        .collect();
    let deadline = tokio::time::Instant::now() + settings.put_timeout;
    let mut backoff = Backoff::default();
    // Not `backoff::retry`: each round retries only the entries that failed,
    // and the whole put gives up at a deadline rather than on an error kind.
    loop {
        let mut failed = Vec::new();
        let mut last_error = None;
        for batch in batches(pending) {
            match put_batch(client, &settings.stream_name, batch.clone()).await {
                Ok(retry) => {
                    metrics.throttled.increment(retry.throttled as u64);
                    metrics
                        .failed
                        .increment((retry.entries.len() - retry.throttled) as u64);
                    failed.extend(retry.entries);
                }
                Err(e) => {
                    let counter = if e.throttled {
                        &metrics.throttled
                    } else {
                        &metrics.call_failed
                    };
                    counter.increment(batch.len() as u64);
                    failed.extend(batch);
                    last_error = Some(e.message);
                }
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        let pause = backoff.next_delay();
        if tokio::time::Instant::now() + pause > deadline {
            return Err(unavailable(
                "PutRecords kept failing",
                last_error.unwrap_or_else(|| format!("{} records throttled", failed.len())),
            ));
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

/// The entries of a PutRecords call to retry.
#[derive(Default)]
struct Retry {
    entries: Vec<PutRecordsRequestEntry>,
    /// How many of them were throttled.
    throttled: usize,
}

/// Why a whole PutRecords call failed.
struct CallFailed {
    message: String,
    /// Kinesis throttled it.
    throttled: bool,
}

/// Puts one PutRecords call's worth; returns the entries to retry.
async fn put_batch(
    client: &Client,
    stream_name: &str,
    batch: Vec<PutRecordsRequestEntry>,
) -> Result<Retry, CallFailed> {
    let result = client
        .put_records()
        .stream_name(stream_name)
        .set_records(Some(batch.clone()))
        .send()
        .await;
    match result {
        Ok(output) if output.failed_record_count.unwrap_or(0) == 0 => Ok(Retry::default()),
        Ok(output) => {
            let mut retry = Retry::default();
            for (entry, result) in batch.into_iter().zip(output.records) {
                if let Some(code) = &result.error_code {
                    retry.throttled += usize::from(THROTTLED.contains(&code.as_str()));
                    retry.entries.push(entry);
                }
            }
            Ok(retry)
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
fn batches(entries: Vec<PutRecordsRequestEntry>) -> Vec<Vec<PutRecordsRequestEntry>> {
    let mut out: Vec<Vec<PutRecordsRequestEntry>> = Vec::new();
    let mut bytes = 0;
    for entry in entries {
        let size = entry.data.as_ref().len() + entry.partition_key.len();
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

    fn entry(bytes: usize) -> PutRecordsRequestEntry {
        PutRecordsRequestEntry::builder()
            .partition_key("1")
            .data(Blob::new(vec![b'x'; bytes]))
            .build()
            .unwrap()
    }

    #[test]
    fn put_batches_respect_the_count_and_size_limits() {
        let sizes: Vec<usize> = batches((0..1201).map(|_| entry(10)).collect())
            .iter()
            .map(Vec::len)
            .collect();
        assert_eq!(sizes, [500, 500, 201]);
        let big = batches((0..6).map(|_| entry(1 << 20)).collect());
        assert_eq!(
            big.iter().map(Vec::len).collect::<Vec<_>>(),
            [4, 2],
            "5 MiB per call"
        );
        assert!(batches(Vec::new()).is_empty());
    }
}
