//! Turning a shard's batch into delivery objects, then checkpointing it.
//!
//! Each delivery is announced before it is written (`begin_delivery`, kept
//! with the shard's checkpoint), so whoever reads the shard next can tell a
//! delivery that completed from one that did not: completed ones are
//! skipped ([`recover`]), never written twice.

use alleycat_core::backoff::{Attempt, Backoff, GaveUp, retry};
use alleycat_core::delivery::{self, DeliveryRecord, FailedRecord, HistoryPoint};
use alleycat_core::validate::{SensorLimits, describe};
use alleycat_core::{blocking, codec};
use alleycat_runtime::Readiness;
use alleycat_storage::freshness;
use alleycat_storage::{
    Freshness, Handoff, ObjectStore, PendingDelivery, SequenceNumber, StreamError, StreamRecord,
    Subscription,
};
use bytes::Bytes;
use chrono::{DateTime, Utc};
use metrics::{Counter, Histogram};
use std::fmt::Display;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// A delivery whose object write has been failing this long is renamed with
/// a fresh write time, so the key stays inside the history service's
/// listing window.
const MAX_KEY_AGE: chrono::TimeDelta = chrono::TimeDelta::seconds(30);

/// One stream record after processing: its delivery line, or why it failed.
#[derive(Debug)]
pub struct Processed {
    sequence: SequenceNumber,
    /// When the stream accepted it, ms since the epoch.
    arrival_ms: i64,
    outcome: Result<Line, FailedRecord>,
}

/// A valid record's delivery line, and what history reads back from it
/// (`None` if history would refuse the line: it is then read back from
/// the store, where history counts it).
#[derive(Debug)]
struct Line {
    text: Vec<u8>,
    point: Option<HistoryPoint>,
}

impl Processed {
    /// Validates a stream record by the same rules as ingest, sensors
    /// within `limits` (producers other than our ingest may put anything
    /// on a Kinesis stream) and renders its delivery line; a record that
    /// breaks a rule becomes a [`FailedRecord`] saying which and why.
    #[must_use]
    pub fn from_record(record: StreamRecord, limits: SensorLimits) -> Processed {
        let outcome = match limits.parse_record_or(&record.data, record.validated.as_deref()) {
            Ok(telemetry) => {
                let delivery = DeliveryRecord::new(&telemetry);
                let mut text = Vec::with_capacity(record.data.len() + 24);
                delivery.write_line(&mut text);
                Ok(Line {
                    text,
                    point: delivery.point().ok(),
                })
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
            arrival_ms: record.arrival_ms,
            outcome,
        }
    }

    /// When the stream accepted the record, ms since the epoch.
    #[must_use]
    pub fn arrival_ms(&self) -> i64 {
        self.arrival_ms
    }

    /// Bytes this record adds to the buffer.
    #[must_use]
    pub fn size(&self) -> usize {
        match &self.outcome {
            Ok(line) => line.text.len(),
            Err(failed) => failed.raw_data.len() + failed.error_message.len() + 128,
        }
    }
}

/// The transformer's counters (handles made once, counted per batch).
pub(crate) struct Metrics {
    /// Delivery objects written, their records, their bytes gzipped and not.
    objects: Counter,
    records: Counter,
    compressed_bytes: Counter,
    uncompressed_bytes: Counter,
    /// `processing-failed/` objects written, and their records by reason.
    failed_objects: Counter,
    invalid_records: Counter,
    /// Object writes that failed (and were retried).
    write_failures: Counter,
    /// Age of a batch's oldest record when its objects are durable.
    flush_latency: Histogram,
    /// Buffers delivered before their size or interval, the stream quiet.
    pub(crate) quiet_flushes: Counter,
}

/// The reason code of records that break the validation rules.
const INVALID_RECORD: &str = "InvalidRecord";

impl Metrics {
    pub(crate) fn new() -> Metrics {
        Metrics {
            objects: metrics::counter!("alleycat_transformer_delivery_objects_total"),
            records: metrics::counter!("alleycat_transformer_delivery_records_total"),
            compressed_bytes: metrics::counter!(
                "alleycat_transformer_delivery_compressed_bytes_total"
            ),
            uncompressed_bytes: metrics::counter!(
                "alleycat_transformer_delivery_uncompressed_bytes_total"
            ),
            failed_objects: metrics::counter!("alleycat_transformer_failed_objects_total"),
            invalid_records: metrics::counter!(
                "alleycat_transformer_failed_records_total",
                "reason" => INVALID_RECORD
            ),
            write_failures: metrics::counter!("alleycat_transformer_write_failures_total"),
            flush_latency: metrics::histogram!("alleycat_transformer_flush_latency_seconds"),
            quiet_flushes: metrics::counter!("alleycat_transformer_quiet_flushes_total"),
        }
    }

    /// Counts `count` records sent to `processing-failed/` for `reason`.
    fn failed_records(&self, reason: &str, count: u64) {
        if reason == INVALID_RECORD {
            self.invalid_records.increment(count);
        } else {
            // No other reason exists today; a new one is counted all the same.
            metrics::counter!("alleycat_transformer_failed_records_total", "reason" => reason.to_owned())
                .increment(count);
        }
    }
}

/// What a delivery reports to besides the store and the stream.
pub(crate) struct Reporting<'a> {
    pub(crate) metrics: &'a Metrics,
    pub(crate) freshness: &'a Freshness,
    pub(crate) handoff: &'a Handoff,
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
    report: &Reporting<'_>,
    store: &dyn ObjectStore,
    subscription: &mut dyn Subscription,
    shard: &str,
    batch: Vec<Processed>,
) -> Outcome {
    let (Some(first), Some(last)) = (batch.first(), batch.last()) else {
        return Outcome::Delivered;
    };
    let range = Range {
        shard,
        first: first.sequence.clone(),
        last: last.sequence.clone(),
        first_text: first.sequence.to_string(),
        last_text: last.sequence.to_string(),
    };
    let oldest = batch.iter().map(|p| p.arrival_ms).min();
    let mut oldest_valid = None::<i64>;
    let mut lines = Vec::with_capacity(batch.iter().map(Processed::size).sum());
    let mut failed = Vec::new();
    let mut records = 0usize;
    // What history beside this transformer will merge, if one takes it;
    // `None` once a line has no point (history then reads the object).
    let mut points = report
        .handoff
        .is_open()
        .then(|| Vec::with_capacity(batch.len()));
    // Per reason code, records going to `processing-failed/`.
    let mut reasons = std::collections::BTreeMap::<&str, u64>::new();
    for item in &batch {
        match &item.outcome {
            Ok(line) => {
                lines.extend_from_slice(&line.text);
                records += 1;
                match (&mut points, line.point) {
                    (Some(points), Some(point)) => points.push(point),
                    (Some(_), None) => points = None,
                    (None, _) => {}
                }
                oldest_valid =
                    Some(oldest_valid.map_or(item.arrival_ms, |o| o.min(item.arrival_ms)));
            }
            Err(record) => {
                *reasons.entry(&record.error_code).or_default() += 1;
                record.write_line(&mut failed);
            }
        }
    }
    let failed_records = batch.len() - records;
    let uncompressed = lines.len();
    let compressed = blocking::run(move || {
        let gz = |data: &[u8]| {
            (!data.is_empty()).then(|| Bytes::from(codec::gzip(data, codec::DELIVERY_LEVEL)))
        };
        (gz(&lines), gz(&failed))
    })
    .await;
    let Ok((lines, failed)) = compressed else {
        // Nothing is written or checkpointed: the records stay on the stream
        // for the next start.
        tracing::info!("compression cancelled at shutdown");
        return Outcome::Abandoned;
    };

    let mut backoff = Backoff::default();
    let objects = [
        (failed, Kind::Failed, failed_records, None),
        (lines, Kind::Delivery, records, points),
    ];
    let mut objects: Vec<BatchObject> = objects
        .into_iter()
        .filter_map(|(body, kind, records, points)| {
            body.map(|body| BatchObject {
                body,
                kind,
                records,
                announce: false,
                points,
            })
        })
        .collect();
    // The last object goes last and is announced: its existence proves
    // the batch complete.
    if let Some(last) = objects.last_mut() {
        last.announce = true;
    }
    for object in &mut objects {
        let span = tracing::info_span!(
            "delivery_object",
            shard,
            kind = object.kind.name(),
            records = object.records,
            bytes = object.body.len(),
            key = tracing::field::Empty,
        );
        let written = write_object(
            control,
            report,
            store,
            &mut *subscription,
            &range,
            object,
            &mut backoff,
        )
        .instrument(span)
        .await;
        if let Err(outcome) = written {
            return outcome;
        }
        match object.kind {
            Kind::Delivery => {
                report.metrics.objects.increment(1);
                report.metrics.records.increment(object.records as u64);
                report
                    .metrics
                    .compressed_bytes
                    .increment(object.body.len() as u64);
                report
                    .metrics
                    .uncompressed_bytes
                    .increment(uncompressed as u64);
                if let Some(oldest) = oldest_valid {
                    report
                        .freshness
                        .delivered(Utc::now().timestamp_millis(), oldest);
                }
            }
            Kind::Failed => {
                report.metrics.failed_objects.increment(1);
                for (reason, count) in &reasons {
                    report.metrics.failed_records(reason, *count);
                }
            }
        }
    }
    if let Some(oldest) = oldest {
        report
            .metrics
            .flush_latency
            .record(freshness::age(Utc::now().timestamp_millis(), oldest));
    }
    // Only now, with every object durable, may the stream forget the batch.
    let checkpointed = control
        .retry(
            &mut backoff,
            "checkpoint",
            StreamError::is_lease_lost,
            &mut (&mut *subscription, shard, &range.last),
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

/// Which records of a shard a batch holds.
struct Range<'a> {
    shard: &'a str,
    first: SequenceNumber,
    last: SequenceNumber,
    first_text: String,
    last_text: String,
}

/// One object of a batch to write.
struct BatchObject {
    body: Bytes,
    kind: Kind,
    records: usize,
    /// Whether it is announced before it is written (the batch's last).
    announce: bool,
    /// What history reads back from it, for history in this process.
    points: Option<Vec<HistoryPoint>>,
}

/// The two objects a batch may be written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// `processing-failed/...`: the records that failed, with the reason.
    Failed,
    /// The delivery object: every valid record's line.
    Delivery,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Failed => "processing-failed",
            Kind::Delivery => "delivery",
        }
    }

    fn key(self, at: DateTime<Utc>, range: &Range<'_>) -> String {
        let key_at = match self {
            Kind::Failed => delivery::failed_key,
            Kind::Delivery => delivery::delivery_key,
        };
        key_at(at, range.shard, &range.first_text, &range.last_text)
    }
}

/// Writes one object of a batch (announced first if it says so),
/// retrying until it is durable; `Err` says how the delivery ends instead.
///
/// The object's points are left for history under the key before the
/// object is written, so that history, which finds the object by listing
/// the store, finds them too; an attempt that fails takes them back.
async fn write_object(
    control: &Control,
    report: &Reporting<'_>,
    store: &dyn ObjectStore,
    subscription: &mut dyn Subscription,
    range: &Range<'_>,
    object: &mut BatchObject,
    backoff: &mut Backoff,
) -> Result<(), Outcome> {
    let BatchObject {
        body,
        kind,
        records,
        announce,
        points,
    } = object;
    let shard = range.shard;
    let mut written_at = Utc::now();
    // Not `retry`: an attempt that keeps failing moves to a fresh key,
    // which has to be announced again before it is written.
    loop {
        let key = kind.key(written_at, range);
        if *announce {
            let pending = PendingDelivery {
                key: key.clone(),
                first: range.first.clone(),
                last: range.last.clone(),
            };
            let announced = control
                .retry(
                    backoff,
                    "announcing a delivery",
                    StreamError::is_lease_lost,
                    &mut (&mut *subscription, shard, &pending),
                    |(subscription, shard, pending)| subscription.begin_delivery(shard, pending),
                )
                .await;
            match announced {
                Ok(()) => {}
                Err(GaveUp::Final(_)) => return Err(Outcome::ShardLost),
                Err(GaveUp::Stopped) => return Err(Outcome::Abandoned),
            }
        }
        if let Some(points) = points.take() {
            report.handoff.delivered(&key, points);
        }
        match store.put(&key, body.clone(), "application/gzip").await {
            Ok(_) => {
                tracing::Span::current().record("key", key.as_str());
                tracing::info!(%key, records, bytes = body.len(), failed = *kind == Kind::Failed, "delivered");
                return Ok(());
            }
            Err(e) => {
                // Only this object is written under its key: whatever is
                // there is what this attempt left.
                *points = report.handoff.take(&key);
                report.metrics.write_failures.increment(1);
                control.failing("writing a delivery object", &e);
                if control.stop.is_cancelled() {
                    tracing::warn!(%key, error = %e, "writing a delivery object failed while stopping; left on the stream for the next start");
                    return Err(Outcome::Abandoned);
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
            validated: None,
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
