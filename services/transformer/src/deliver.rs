//! Turning a shard's batch into delivery objects, then checkpointing it.

use crate::Backoff;
use alleycat_core::codec;
use alleycat_core::delivery::{self, DeliveryRecord, FailedRecord};
use alleycat_core::validate::parse_record;
use alleycat_storage::{ObjectStore, StreamRecord, Subscription};
use bytes::Bytes;
use std::fmt::Display;

/// One stream record after processing: its delivery line, or why it failed.
#[derive(Debug)]
pub struct Processed {
    sequence: String,
    outcome: Result<Vec<u8>, FailedRecord>,
}

impl Processed {
    /// Validates a stream record (producers other than our ingest may put
    /// anything on a Kinesis stream) and renders its delivery line.
    #[must_use]
    pub fn from_record(record: StreamRecord) -> Processed {
        let outcome = match parse_record(&record.data) {
            Ok(telemetry) => {
                let mut line = Vec::with_capacity(record.data.len() + 24);
                DeliveryRecord::new(&telemetry).write_line(&mut line);
                Ok(line)
            }
            Err(errors) => {
                let reason = errors
                    .iter()
                    .map(|e| match e.field {
                        Some(field) => format!("{field} {}", e.reason),
                        None => e.reason.clone(),
                    })
                    .collect::<Vec<_>>()
                    .join("; ");
                Err(FailedRecord::invalid(
                    &record.data,
                    reason,
                    record.arrival_ms,
                    &record.shard_id,
                    &record.sequence,
                ))
            }
        };
        Processed {
            sequence: record.sequence,
            outcome,
        }
    }

    /// Bytes this record adds to the buffer.
    #[must_use]
    pub fn size(&self) -> usize {
        match &self.outcome {
            Ok(line) => line.len(),
            Err(failed) => failed.raw_data.len() + failed.error_message.len() + 128,
        }
    }

    /// The delivery line, if processing succeeded.
    #[must_use]
    pub fn line(&self) -> Option<&[u8]> {
        self.outcome.as_ref().ok().map(Vec::as_slice)
    }
}

/// Writes `batch` (records of `shard`, in stream order) as a delivery object
/// and, if any failed, a `processing-failed/` object; then checkpoints the
/// shard past it. Retries until it succeeds: the records stay on the stream
/// meanwhile, so giving up would only delay them.
pub(crate) async fn deliver(
    store: &dyn ObjectStore,
    subscription: &mut dyn Subscription,
    shard: &str,
    batch: Vec<Processed>,
) {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return;
    };
    let (first, last) = (first.sequence.clone(), last.sequence.clone());
    let mut lines = Vec::with_capacity(batch.iter().map(Processed::size).sum());
    let mut failed = Vec::new();
    let mut records = 0usize;
    for item in &batch {
        match &item.outcome {
            Ok(line) => {
                lines.extend_from_slice(line);
                records += 1;
            }
            Err(record) => record.write_line(&mut failed),
        }
    }
    let failed_count = batch.len() - records;
    let (lines, failed) = tokio::task::spawn_blocking(move || {
        let gz = |data: &[u8]| {
            (!data.is_empty()).then(|| Bytes::from(codec::gzip(data, codec::DEFAULT_LEVEL)))
        };
        (gz(&lines), gz(&failed))
    })
    .await
    .expect("gzip task panicked");

    let mut backoff = Backoff::default();
    if let Some(body) = lines {
        let key = retry(&mut backoff, "delivery object", || async {
            // The key carries the time of this attempt, so it always falls
            // inside the window the history service lists.
            let key = delivery::delivery_key(chrono::Utc::now(), shard, &first, &last);
            store
                .put(&key, body.clone(), "application/gzip")
                .await
                .map(|()| key)
        })
        .await;
        tracing::info!(%key, records, bytes = body.len(), "delivered");
    }
    if let Some(body) = failed {
        let key = retry(&mut backoff, "processing-failed object", || async {
            let key = delivery::failed_key(chrono::Utc::now(), shard, &first, &last);
            store
                .put(&key, body.clone(), "application/gzip")
                .await
                .map(|()| key)
        })
        .await;
        tracing::warn!(%key, records = failed_count, "records failed processing");
    }
    // Only now, with every object durable, may the stream forget the batch.
    while let Err(e) = subscription.checkpoint(shard, &last).await {
        let pause = backoff.next();
        tracing::warn!(what = "checkpoint", error = %e, ?pause, "write failed; retrying");
        tokio::time::sleep(pause).await;
    }
}

async fn retry<T, E: Display, F: Future<Output = Result<T, E>>>(
    backoff: &mut Backoff,
    what: &str,
    mut attempt: impl FnMut() -> F,
) -> T {
    loop {
        match attempt().await {
            Ok(value) => {
                backoff.reset();
                return value;
            }
            Err(e) => {
                let pause = backoff.next();
                tracing::warn!(what, error = %e, ?pause, "write failed; retrying");
                tokio::time::sleep(pause).await;
            }
        }
    }
}
