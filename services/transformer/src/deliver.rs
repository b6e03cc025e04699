//! Turning a shard's batch into delivery objects, then checkpointing it.
//!
//! Each delivery is announced before it is written (`begin_delivery`, kept
//! with the shard's checkpoint), so whoever reads the shard next can tell a
//! delivery that completed from one that did not: completed ones are
//! skipped ([`recover`]), never written twice.

use alleycat_core::backoff::{Attempt, Backoff, GaveUp, retry};
use alleycat_core::codec;
use alleycat_core::delivery::{self, DeliveryRecord, FailedRecord};
use alleycat_core::validate::{SensorLimits, describe};
use alleycat_runtime::Readiness;
use alleycat_storage::{
    ObjectStore, PendingDelivery, SequenceNumber, StreamError, StreamRecord, Subscription,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use std::fmt::Display;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A delivery whose object write has been failing this long is renamed with
/// a fresh write time, so the key stays inside the history service's
/// listing window.
const MAX_KEY_AGE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// One stream record after processing: its delivery line, or why it failed.
#[derive(Debug)]
pub struct Processed {
    sequence: SequenceNumber,
    outcome: Result<Vec<u8>, FailedRecord>,
}

impl Processed {
    /// Validates a stream record by the same rules as ingest, sensors
    /// within `limits` (producers other than our ingest may put anything
    /// on a Kinesis stream) and renders its delivery line; a record that
    /// breaks a rule becomes a [`FailedRecord`] saying which and why.
    #[must_use]
    pub fn from_record(record: StreamRecord, limits: SensorLimits) -> Processed {
        let outcome = match limits.parse_record(&record.data) {
            Ok(telemetry) => {
                let mut line = Vec::with_capacity(record.data.len() + 24);
                DeliveryRecord::new(&telemetry).write_line(&mut line);
                Ok(line)
            }
            Err(errors) => Err(FailedRecord::invalid(
                &record.data,
                describe(&errors),
                record.arrival_ms,
                &record.shard_id,
                &record.sequence.to_string(),
            )),
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
}

/// How a delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written and checkpointed.
    Delivered,
    /// Another process owns the shard now; the batch must be dropped.
    ShardLost,
    /// A step failed while the transformer was stopping: nothing waits for
    /// a backend that is down at shutdown. Nothing is checkpointed after
    /// this, so the records stay on the stream for the next start.
    Abandoned,
}

/// The readiness part the transformer reports.
pub(crate) const PART: &str = "transformer";

/// What paces the retries of a delivery: when to give up, where to say that
/// it cannot make progress.
#[derive(Clone, Default)]
pub(crate) struct Control {
    /// Cancelled at shutdown: a failing step is then not retried.
    pub(crate) stop: CancellationToken,
    /// Not ready while a step keeps failing; ready after one succeeds.
    pub(crate) readiness: Readiness,
}

impl Control {
    /// A step failed (and is retried unless stopping).
    pub(crate) fn failing(&self, what: &str, error: &dyn Display) {
        self.readiness
            .set(PART, Err(format!("{what} failed, retrying: {error}")));
    }

    /// The transformer progresses.
    pub(crate) fn working(&self) {
        self.readiness.set(PART, Ok(()));
    }

    /// Pauses for `pause`, or less if the transformer stops.
    async fn pause(&self, pause: Duration, what: &str, error: String) {
        tracing::warn!(what, %error, ?pause, "failed; retrying");
        tokio::select! {
            () = self.stop.cancelled() => {}
            () = tokio::time::sleep(pause) => {}
        }
    }

    /// [`retry`], reporting readiness, and giving up on a failure once the
    /// transformer is stopping.
    async fn retry<S: ?Sized, T, E: Display>(
        &self,
        backoff: &mut Backoff,
        what: &str,
        is_final: impl Fn(&E) -> bool,
        state: &mut S,
        attempt: impl FnMut(&mut S) -> Attempt<'_, T, E>,
    ) -> Result<T, GaveUp<E>> {
        retry(backoff, is_final, state, attempt, |e, pause| {
            self.failing(what, e);
            let stopping = self.stop.is_cancelled();
            let error = e.to_string();
            async move {
                if stopping {
                    tracing::warn!(what, %error, "failed while stopping; left on the stream for the next start");
                    return false;
                }
                self.pause(pause, what, error).await;
                true
            }
        })
        .await
    }
}

/// Settles what a previous reader of `shard` left half done: if its last
/// announced delivery was written, checkpoints past it and returns its last
/// sequence, so those records are skipped rather than delivered twice.
pub(crate) async fn recover(
    control: &Control,
    store: &dyn ObjectStore,
    subscription: &mut dyn Subscription,
    shard: &str,
) -> Option<SequenceNumber> {
    let mut backoff = Backoff::default();
    let pending = control
        .retry(
            &mut backoff,
            "reading the pending delivery",
            StreamError::is_lease_lost,
            &mut (&mut *subscription, shard),
            |(subscription, shard)| subscription.pending_delivery(shard),
        )
        .await
        .ok()??;
    let written = control
        .retry(
            &mut backoff,
            "checking a pending delivery",
            // A store error says nothing about who owns the shard: keep trying.
            |_| false,
            &mut (store, pending.key.as_str()),
            |(store, key)| store.exists(key),
        )
        .await
        .ok()?;
    if !written {
        // Never written: its records are simply delivered again, under a new key.
        return None;
    }
    control
        .retry(
            &mut backoff,
            "checkpoint",
            StreamError::is_lease_lost,
            &mut (&mut *subscription, shard, &pending.last),
            |(subscription, shard, last)| subscription.checkpoint(shard, last),
        )
        .await
        .ok()?;
    tracing::info!(shard, key = %pending.key, "found a delivery completed before a restart; skipping its records");
    Some(pending.last)
}

/// Writes `batch` (records of `shard`, in stream order): first the
/// `processing-failed/` object if any record failed, then the delivery
/// object; then checkpoints the shard past it. Retries until it succeeds:
/// the records stay on the stream meanwhile, so giving up would only delay
/// them. Stops early only if the shard was taken over.
pub(crate) async fn deliver(
    control: &Control,
    store: &dyn ObjectStore,
    subscription: &mut dyn Subscription,
    shard: &str,
    batch: Vec<Processed>,
) -> Outcome {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return Outcome::Delivered;
    };
    let (first, last) = (first.sequence.clone(), last.sequence.clone());
    let (first_text, last_text) = (first.to_string(), last.to_string());
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
    let failed_records = batch.len() - records;
    let (lines, failed) = tokio::task::spawn_blocking(move || {
        let gz = |data: &[u8]| {
            (!data.is_empty()).then(|| Bytes::from(codec::gzip(data, codec::DEFAULT_LEVEL)))
        };
        (gz(&lines), gz(&failed))
    })
    .await
    .expect("gzip task panicked");

    let mut backoff = Backoff::default();
    // The delivery object goes last: its existence proves the batch complete.
    let objects = [
        (
            failed,
            delivery::failed_key as fn(DateTime<Utc>, &str, &str, &str) -> String,
            failed_records,
        ),
        (lines, delivery::delivery_key, records),
    ];
    let objects: Vec<_> = objects
        .into_iter()
        .filter_map(|(body, key, n)| body.map(|b| (b, key, n)))
        .collect();
    for (i, (body, key_at, count)) in objects.iter().enumerate() {
        let is_last = i + 1 == objects.len();
        let mut written_at = Utc::now();
        // Not `retry`: an attempt that keeps failing moves to a fresh key,
        // which has to be announced again before it is written.
        loop {
            let key = key_at(written_at, shard, &first_text, &last_text);
            if is_last {
                let pending = PendingDelivery {
                    key: key.clone(),
                    first: first.clone(),
                    last: last.clone(),
                };
                let announced = control
                    .retry(
                        &mut backoff,
                        "announcing a delivery",
                        StreamError::is_lease_lost,
                        &mut (&mut *subscription, shard, &pending),
                        |(subscription, shard, pending)| {
                            subscription.begin_delivery(shard, pending)
                        },
                    )
                    .await;
                match announced {
                    Ok(()) => {}
                    Err(GaveUp::Final(_)) => return Outcome::ShardLost,
                    Err(GaveUp::Stopped) => return Outcome::Abandoned,
                }
            }
            match store.put(&key, body.clone(), "application/gzip").await {
                Ok(_) => {
                    tracing::info!(%key, records = count, bytes = body.len(), failed = !is_last || objects.len() == 1 && failed_records > 0, "delivered");
                    break;
                }
                Err(e) => {
                    control.failing("writing a delivery object", &e);
                    if control.stop.is_cancelled() {
                        tracing::warn!(%key, error = %e, "writing a delivery object failed while stopping; left on the stream for the next start");
                        return Outcome::Abandoned;
                    }
                    control
                        .pause(
                            backoff.next_delay(),
                            "writing a delivery object",
                            e.to_string(),
                        )
                        .await;
                    if Utc::now() - written_at > MAX_KEY_AGE {
                        written_at = Utc::now();
                    }
                }
            }
        }
    }
    // Only now, with every object durable, may the stream forget the batch.
    let checkpointed = control
        .retry(
            &mut backoff,
            "checkpoint",
            StreamError::is_lease_lost,
            &mut (&mut *subscription, shard, &last),
            |(subscription, shard, last)| subscription.checkpoint(shard, last),
        )
        .await;
    match checkpointed {
        Ok(()) => {
            control.working();
            Outcome::Delivered
        }
        Err(GaveUp::Final(_)) => Outcome::ShardLost,
        Err(GaveUp::Stopped) => Outcome::Abandoned,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream_record(cadence: &str, resistance: &str) -> StreamRecord {
        let data = format!(
            r#"{{"event":"update","deviceTimestamp":1,"second":3,"raceId":1,"name":"R","racerId":7,"classId":1,"cadence":{cadence},"resistance":{resistance}}}"#
        );
        StreamRecord {
            shard_id: "shard-1".to_owned(),
            sequence: SequenceNumber::from(42),
            arrival_ms: 1_700_000_000_000,
            data: Bytes::from(data),
        }
    }

    fn failure(processed: &Processed) -> Option<&FailedRecord> {
        processed.outcome.as_ref().err()
    }

    #[test]
    fn records_past_the_sensor_limits_fail_with_the_field_and_the_limit() {
        let defaults = SensorLimits::DEFAULT;
        assert!(
            failure(&Processed::from_record(
                stream_record("200", "100"),
                defaults
            ))
            .is_none()
        );
        let over = Processed::from_record(stream_record("200.01", "100"), defaults);
        let failed = failure(&over).expect("refused");
        assert_eq!(failed.error_code, "InvalidRecord");
        assert_eq!(
            failed.error_message,
            "cadence must be at most 200, got 200.01"
        );
        assert_eq!(failed.sequence_number, SequenceNumber::from(42).to_string());
        let both = Processed::from_record(stream_record("1000", "250"), defaults);
        assert_eq!(
            failure(&both).unwrap().error_message,
            "cadence must be at most 200, got 1000; resistance must be at most 100, got 250"
        );
        // Other limits, other answers.
        let custom = SensorLimits::new(1000.0, 60.0).unwrap();
        assert!(failure(&Processed::from_record(stream_record("1000", "60"), custom)).is_none());
        assert_eq!(
            failure(&Processed::from_record(stream_record("80", "60.5"), custom))
                .unwrap()
                .error_message,
            "resistance must be at most 60, got 60.5"
        );
    }
}
