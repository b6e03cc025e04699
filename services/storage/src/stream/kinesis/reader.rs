//! Reading one leased shard with GetShardIterator and GetRecords, within
//! the per-shard limit of 5 calls a second, into the consumer's queue.

use super::coordinator::Coordinator;
use super::{aggregated, describe};
use crate::freshness::now_ms;
use crate::stream::{SequenceNumber, StreamRecord};
use alleycat_core::backoff::Backoff;
use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// GetRecords: at most 5 calls a second per shard.
const MIN_GET_INTERVAL: Duration = Duration::from_millis(200);
const GET_LIMIT: i32 = 10_000;

impl Coordinator {
    /// Reads one shard into the queue until told to stop or the shard ends.
    //
    // Not `backoff::retry`: a failed GetRecords is retried with a new
    // iterator, an expired one without pause, and one backoff spans both
    // calls until records come back, all while watching `stop`.
    pub(super) async fn read_shard(
        self: Arc<Self>,
        shard: String,
        from: Option<SequenceNumber>,
        stop: CancellationToken,
    ) {
        let mut last = from;
        let mut iterator = None;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let lag = LagReport {
            coordinator: &self,
            shard: &shard,
        };
        while !stop.is_cancelled() {
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.shard_iterator(&shard, last.as_ref()).await {
                    Ok(it) => it,
                    Err(e) => {
                        tracing::warn!(%shard, error = %e, "GetShardIterator failed; retrying");
                        sleep_or_stop(&stop, backoff.next_delay()).await;
                        continue;
                    }
                },
            };
            let started = tokio::time::Instant::now();
            let output = match self
                .client
                .get_records()
                .shard_iterator(&it)
                .limit(GET_LIMIT)
                .send()
                .await
            {
                Ok(output) => output,
                Err(e) => {
                    // An expired iterator is renewed from the last record read.
                    if !e
                        .as_service_error()
                        .is_some_and(|s| s.is_expired_iterator_exception())
                    {
                        tracing::warn!(%shard, error = %describe(&e), code = ?e.code(), "GetRecords failed; retrying");
                        sleep_or_stop(&stop, backoff.next_delay()).await;
                    }
                    continue;
                }
            };
            let mut records = match to_stream_records(&shard, output.records) {
                Ok(records) => records,
                Err(e) => {
                    // Kinesis promises decimal sequence numbers; a server
                    // that breaks that is retried (and logged), not trusted.
                    tracing::warn!(%shard, error = %e, "GetRecords returned a bad sequence number; retrying");
                    sleep_or_stop(&stop, backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();
            lag.behind(output.millis_behind_latest);
            // Reading resumes at the aggregated record holding `last`: its
            // user records up to `last` were read already.
            if let Some(last) = &last {
                records.retain(|r| r.sequence > *last);
            }
            let got_records = !records.is_empty();
            if let Some(newest) = records.last() {
                last = Some(newest.sequence.clone());
                tokio::select! {
                    () = stop.cancelled() => return,
                    sent = self.records.send(records) => if sent.is_err() { return },
                }
            }
            match output.next_shard_iterator {
                Some(next) => iterator = Some(next),
                None => {
                    // A closed shard, read to its end.
                    if let Some(owned) = self.owned.lock().await.get_mut(&shard) {
                        owned.exhausted = Some(last.clone());
                    }
                    tracing::info!(%shard, "read a closed shard to its end");
                    return;
                }
            }
            let pause = if got_records {
                MIN_GET_INTERVAL
            } else {
                self.settings.idle_poll.max(MIN_GET_INTERVAL)
            };
            sleep_or_stop(&stop, pause.saturating_sub(started.elapsed())).await;
        }
    }

    async fn shard_iterator(
        &self,
        shard: &str,
        after: Option<&SequenceNumber>,
    ) -> Result<String, String> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(&self.settings.stream_name)
            .shard_id(shard);
        let request = match after {
            // Within an aggregated record: read it again, and the caller
            // drops the user records up to `sequence`.
            Some(sequence) if sequence.sub_sequence().is_some() => request
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(sequence.record_position().to_string()),
            Some(sequence) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence.to_string()),
            None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let output = request.send().await.map_err(|e| describe(&e))?;
        output
            .shard_iterator
            .ok_or_else(|| "no shard iterator returned".to_owned())
    }
}

/// Reports how far one shard's reader is behind, and that it stopped
/// when dropped (whatever way the reader ends).
struct LagReport<'a> {
    coordinator: &'a Coordinator,
    shard: &'a str,
}

impl LagReport<'_> {
    /// GetRecords said the reader is `millis` behind the newest record: the
    /// oldest record not read yet arrived that long ago.
    fn behind(&self, millis: Option<i64>) {
        if let Some(freshness) = &self.coordinator.freshness {
            let oldest = millis.filter(|m| *m > 0).map(|m| now_ms() - m);
            freshness.stream_unread(&self.coordinator.consumer, self.shard, oldest);
        }
    }
}

impl Drop for LagReport<'_> {
    fn drop(&mut self) {
        if let Some(freshness) = &self.coordinator.freshness {
            freshness.stream_reader_stopped(&self.coordinator.consumer, self.shard);
        }
    }
}

/// GetRecords' records as stream records of `shard`: an aggregated record
/// becomes its user records, numbered by sub-sequence.
fn to_stream_records(
    shard: &str,
    records: Vec<aws_sdk_kinesis::types::Record>,
) -> Result<Vec<StreamRecord>, crate::stream::ParseSequenceError> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        let sequence: SequenceNumber = r.sequence_number.parse()?;
        let arrival_ms = r
            .approximate_arrival_timestamp
            .and_then(|t| t.to_millis().ok())
            .unwrap_or_else(now_ms);
        let data = Bytes::from(r.data.into_inner());
        let record = |sequence, data| StreamRecord {
            shard_id: shard.to_owned(),
            sequence,
            arrival_ms,
            data,
            validated: None,
        };
        match aggregated::user_records(&data) {
            Some(users) => out.extend(
                users
                    .into_iter()
                    .zip(0..)
                    .map(|(data, sub)| record(sequence.clone().with_sub_sequence(sub), data)),
            ),
            None => out.push(record(sequence, data)),
        }
    }
    Ok(out)
}

async fn sleep_or_stop(stop: &CancellationToken, pause: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(pause) => {}
    }
}
