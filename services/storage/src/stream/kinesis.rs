//! The stream on Kinesis Data Streams, through `aws-sdk-kinesis`.
//!
//! Producing: PutRecords in batches of at most 500 records / 5 MiB; only the
//! records a call reports as failed are retried, with capped exponential
//! backoff and jitter, until they are all on the stream or the put timeout
//! passes (then the caller answers 503 and nothing counts as accepted).
//!
//! Consuming: every shard is read with GetShardIterator and GetRecords,
//! within the per-shard limit of 5 calls a second. A consumer name's shards
//! are leased ([`super::lease`]): one process reads a shard at a time, a live
//! process takes over the shards of a dead one once their leases expire, and
//! a child shard (after resharding) is read only once every parent is
//! finished, so one racer's records stay in order. Checkpoints live in the
//! lease and are written only by its owner.

use super::lease::{Lease, LeaseTable};
use super::{
    PendingDelivery, PutRecord, Stream, StreamError, StreamRecord, Subscription, compare_sequences,
};
use crate::object_store::{ETag, ObjectStore, StoreError};
use alleycat_core::backoff::Backoff;
use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::{ProvideErrorMetadata as _, SdkError};
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// PutRecords limits.
const MAX_PUT_RECORDS: usize = 500;
const MAX_PUT_BYTES: usize = 5 << 20;
/// GetRecords: at most 5 calls a second per shard.
const MIN_GET_INTERVAL: Duration = Duration::from_millis(200);
const GET_LIMIT: i32 = 10_000;
/// Record batches buffered between the shard readers and the consumer.
const QUEUE: usize = 64;

/// Settings of the Kinesis stream.
#[derive(Debug, Clone)]
pub struct KinesisSettings {
    /// The stream's name.
    pub stream_name: String,
    /// How long a put keeps retrying failed records before giving up.
    pub put_timeout: Duration,
    /// How long a shard lease lasts without renewal.
    pub lease_duration: Duration,
    /// How long a reader waits after an empty GetRecords.
    pub idle_poll: Duration,
}

/// A Kinesis data stream; consumers keep their leases in `leases`.
#[derive(Clone)]
pub struct KinesisStream {
    client: Client,
    settings: Arc<KinesisSettings>,
    leases: Arc<dyn ObjectStore>,
}

impl KinesisStream {
    /// The stream `settings.stream_name`, with leases in `leases`.
    #[must_use]
    pub fn new(
        client: Client,
        settings: KinesisSettings,
        leases: Arc<dyn ObjectStore>,
    ) -> KinesisStream {
        KinesisStream {
            client,
            settings: Arc::new(settings),
            leases,
        }
    }

    /// Puts one PutRecords call's worth; returns the entries to retry.
    async fn put_batch(
        &self,
        batch: Vec<PutRecordsRequestEntry>,
    ) -> Result<Vec<PutRecordsRequestEntry>, String> {
        let result = self
            .client
            .put_records()
            .stream_name(&self.settings.stream_name)
            .set_records(Some(batch.clone()))
            .send()
            .await;
        match result {
            Ok(output) if output.failed_record_count.unwrap_or(0) == 0 => Ok(Vec::new()),
            Ok(output) => Ok(batch
                .into_iter()
                .zip(output.records)
                .filter(|(_, result)| result.error_code.is_some())
                .map(|(entry, _)| entry)
                .collect()),
            // The call may or may not have stored them: retrying can only
            // duplicate, which consumers tolerate; giving up could lose.
            Err(e) => Err(describe(&e)),
        }
    }
}

fn describe<E: std::error::Error + 'static>(e: &SdkError<E>) -> String {
    match e.as_service_error() {
        Some(service) => service.to_string(),
        None => format!(
            "{}",
            aws_smithy_types::error::display::DisplayErrorContext(e)
        ),
    }
}

fn unavailable(what: &str, detail: impl std::fmt::Display) -> StreamError {
    StreamError::Unavailable(format!("{what}: {detail}"))
}

#[async_trait]
impl Stream for KinesisStream {
    async fn put_records(&self, records: Vec<PutRecord>) -> Result<(), StreamError> {
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
        let deadline = tokio::time::Instant::now() + self.settings.put_timeout;
        let mut backoff = Backoff::default();
        loop {
            let mut failed = Vec::new();
            let mut last_error = None;
            for batch in batches(pending) {
                match self.put_batch(batch.clone()).await {
                    Ok(retry) => failed.extend(retry),
                    Err(e) => {
                        failed.extend(batch);
                        last_error = Some(e);
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

    async fn subscribe(&self, consumer: &str) -> Result<Box<dyn Subscription>, StreamError> {
        let (records, queue) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            client: self.client.clone(),
            settings: Arc::clone(&self.settings),
            leases: LeaseTable::new(Arc::clone(&self.leases), consumer),
            owner: format!(
                "{}-{}-{:08x}",
                hostname(),
                std::process::id(),
                fastrand::u32(..)
            ),
            owned: Mutex::new(HashMap::new()),
            records,
        });
        // The first round runs now, so a missing stream fails loudly here.
        shared.refresh().await?;
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&shared).coordinate(stop.clone()));
        tracing::info!(consumer, owner = %shared.owner, "reading the Kinesis stream");
        Ok(Box::new(KinesisSubscription {
            shared,
            queue,
            stop,
        }))
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

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned())
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What the coordinator, the readers and the subscription share.
struct Shared {
    client: Client,
    settings: Arc<KinesisSettings>,
    leases: LeaseTable,
    owner: String,
    owned: Mutex<HashMap<String, Owned>>,
    records: mpsc::Sender<Vec<StreamRecord>>,
}

/// A shard this process holds the lease of.
struct Owned {
    lease: Lease,
    version: ETag,
    /// Stops the shard's reader.
    stop: CancellationToken,
    /// Set when the reader reached the end of the (closed) shard: the last
    /// sequence it read, if it read any.
    exhausted: Option<Option<String>>,
}

impl Owned {
    /// Every record of the closed shard has been checkpointed.
    fn is_done(&self) -> bool {
        match &self.exhausted {
            Some(None) => true,
            Some(Some(last)) => self
                .lease
                .checkpoint
                .as_deref()
                .is_some_and(|c| compare_sequences(c, last).is_ge()),
            None => false,
        }
    }
}

struct ShardInfo {
    id: String,
    parents: Vec<String>,
}

impl Shared {
    /// Renews leases every third of their duration and looks for shards to take.
    async fn coordinate(self: Arc<Self>, stop: CancellationToken) {
        let period = self.settings.lease_duration / 3;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "shard lease round failed; retrying");
            }
        }
        let mut owned = self.owned.lock().await;
        for shard in owned.values() {
            shard.stop.cancel();
        }
        owned.clear();
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, StreamError> {
        let mut shards = Vec::new();
        let mut next_token: Option<String> = None;
        loop {
            let request = self.client.list_shards();
            // ListShards takes either the stream name or a continuation token.
            let request = match &next_token {
                Some(token) => request.next_token(token),
                None => request.stream_name(&self.settings.stream_name),
            };
            let page = request
                .send()
                .await
                .map_err(|e| unavailable("ListShards", describe(&e)))?;
            for shard in page.shards.unwrap_or_default() {
                let parents = [shard.parent_shard_id, shard.adjacent_parent_shard_id]
                    .into_iter()
                    .flatten()
                    .collect();
                shards.push(ShardInfo {
                    id: shard.shard_id,
                    parents,
                });
            }
            next_token = page.next_token;
            if next_token.is_none() {
                return Ok(shards);
            }
        }
    }

    /// One round: renew what we hold (finishing exhausted shards), then
    /// claim shards nobody holds whose parents are finished.
    async fn refresh(self: &Arc<Self>) -> Result<(), StreamError> {
        let shards = self.list_shards().await?;
        let expires =
            now_ms() + i64::try_from(self.settings.lease_duration.as_millis()).unwrap_or(i64::MAX);
        {
            let mut owned = self.owned.lock().await;
            let ids: Vec<String> = owned.keys().cloned().collect();
            for shard in ids {
                let entry = owned.get_mut(&shard).expect("listed above");
                let mut renewed = entry.lease.claimed_by(&self.owner, expires);
                renewed.finished = entry.is_done();
                self.write_owned(&mut owned, &shard, renewed).await.ok();
            }
        }

        let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        let mut leases = HashMap::new();
        for shard in &shards {
            let lease = self
                .leases
                .read(&shard.id)
                .await
                .map_err(|e| unavailable("reading a lease", e))?;
            leases.insert(shard.id.as_str(), lease);
        }
        let finished = |id: &str| {
            // A parent no longer listed has aged out of the stream: nothing left to read.
            !listed.contains(id)
                || leases
                    .get(id)
                    .is_some_and(|l| l.as_ref().is_some_and(|(l, _)| l.finished))
        };
        for shard in &shards {
            if self.owned.lock().await.contains_key(&shard.id)
                || !shard.parents.iter().all(|p| finished(p))
            {
                continue;
            }
            let (lease, version) = match &leases[shard.id.as_str()] {
                Some((lease, _)) if !lease.is_available_to(&self.owner, now_ms()) => continue,
                Some((lease, version)) => (lease.claimed_by(&self.owner, expires), Some(version)),
                None => (
                    Lease {
                        owner: self.owner.clone(),
                        expires_at_ms: expires,
                        token: 1,
                        checkpoint: None,
                        finished: false,
                        pending: None,
                    },
                    None,
                ),
            };
            match self.leases.write(&shard.id, &lease, version).await {
                Ok(version) => self.start_reading(&shard.id, lease, version).await,
                Err(StoreError::PreconditionFailed { .. }) => {} // another process was quicker
                Err(e) => tracing::warn!(shard = %shard.id, error = %e, "claiming a shard failed"),
            }
        }
        Ok(())
    }

    async fn start_reading(self: &Arc<Self>, shard: &str, lease: Lease, version: ETag) {
        tracing::info!(shard, token = lease.token, checkpoint = ?lease.checkpoint, "took the shard's lease");
        let stop = CancellationToken::new();
        let from = lease.checkpoint.clone();
        self.owned.lock().await.insert(
            shard.to_owned(),
            Owned {
                lease,
                version,
                stop: stop.clone(),
                exhausted: None,
            },
        );
        tokio::spawn(Arc::clone(self).read_shard(shard.to_owned(), from, stop));
    }

    /// Writes `lease` for an owned shard, conditional on its version. On a
    /// conflict the shard was taken over: it is dropped and its reader stopped.
    async fn write_owned(
        &self,
        owned: &mut HashMap<String, Owned>,
        shard: &str,
        lease: Lease,
    ) -> Result<(), StreamError> {
        let entry = owned
            .get_mut(shard)
            .ok_or_else(|| StreamError::LeaseLost(shard.to_owned()))?;
        match self.leases.write(shard, &lease, Some(&entry.version)).await {
            Ok(version) => {
                let finished = lease.finished;
                entry.version = version;
                entry.lease = lease;
                if finished {
                    tracing::info!(shard, "shard finished");
                    entry.stop.cancel();
                    owned.remove(shard);
                }
                Ok(())
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                tracing::warn!(shard, "lost the shard's lease to another process");
                entry.stop.cancel();
                owned.remove(shard);
                Err(StreamError::LeaseLost(shard.to_owned()))
            }
            Err(e) => Err(unavailable("writing a lease", e)),
        }
    }

    async fn shard_iterator(&self, shard: &str, after: Option<&str>) -> Result<String, String> {
        let request = self
            .client
            .get_shard_iterator()
            .stream_name(&self.settings.stream_name)
            .shard_id(shard);
        let request = match after {
            Some(sequence) => request
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(sequence),
            None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let output = request.send().await.map_err(|e| describe(&e))?;
        output
            .shard_iterator
            .ok_or_else(|| "no shard iterator returned".to_owned())
    }

    /// Reads one shard into the queue until told to stop or the shard ends.
    async fn read_shard(
        self: Arc<Self>,
        shard: String,
        from: Option<String>,
        stop: CancellationToken,
    ) {
        let mut last = from;
        let mut iterator = None;
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while !stop.is_cancelled() {
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.shard_iterator(&shard, last.as_deref()).await {
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
            backoff.reset();
            let records: Vec<StreamRecord> = output
                .records
                .into_iter()
                .map(|r| StreamRecord {
                    shard_id: shard.clone(),
                    arrival_ms: r
                        .approximate_arrival_timestamp
                        .and_then(|t| t.to_millis().ok())
                        .unwrap_or_else(now_ms),
                    sequence: r.sequence_number,
                    data: Bytes::from(r.data.into_inner()),
                })
                .collect();
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

    async fn release_all(&self) {
        let mut owned = self.owned.lock().await;
        let ids: Vec<String> = owned.keys().cloned().collect();
        for shard in ids {
            let entry = &owned[&shard];
            entry.stop.cancel();
            let released = Lease {
                expires_at_ms: 0,
                ..entry.lease.clone()
            };
            if self.write_owned(&mut owned, &shard, released).await.is_ok() {
                tracing::info!(%shard, "released the shard's lease");
            }
        }
        owned.clear();
    }
}

async fn sleep_or_stop(stop: &CancellationToken, pause: Duration) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = tokio::time::sleep(pause) => {}
    }
}

/// A consumer's view of the stream: records of the shards it holds.
struct KinesisSubscription {
    shared: Arc<Shared>,
    queue: mpsc::Receiver<Vec<StreamRecord>>,
    stop: CancellationToken,
}

impl Drop for KinesisSubscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Subscription for KinesisSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<StreamRecord>, StreamError> {
        let mut records = match tokio::time::timeout(wait, self.queue.recv()).await {
            Err(_elapsed) => return Ok(Vec::new()),
            Ok(None) => return Err(StreamError::Closed),
            Ok(Some(batch)) => batch,
        };
        while records.len() < max {
            match self.queue.try_recv() {
                Ok(more) => records.extend(more),
                Err(_) => break,
            }
        }
        // Records of a shard lost meanwhile belong to its new owner now.
        let owned = self.shared.owned.lock().await;
        records.retain(|r| owned.contains_key(&r.shard_id));
        Ok(records)
    }

    async fn checkpoint(&mut self, shard_id: &str, sequence: &str) -> Result<(), StreamError> {
        let mut owned = self.shared.owned.lock().await;
        let entry = owned
            .get_mut(shard_id)
            .ok_or_else(|| StreamError::LeaseLost(shard_id.to_owned()))?;
        let mut lease = entry.lease.clone();
        if lease
            .checkpoint
            .as_deref()
            .is_none_or(|c| compare_sequences(c, sequence).is_lt())
        {
            lease.checkpoint = Some(sequence.to_owned());
        }
        lease.pending = None;
        let probe = Owned {
            lease: lease.clone(),
            version: entry.version.clone(),
            stop: entry.stop.clone(),
            exhausted: entry.exhausted.clone(),
        };
        lease.finished = probe.is_done();
        self.shared.write_owned(&mut owned, shard_id, lease).await
    }

    async fn begin_delivery(
        &mut self,
        shard_id: &str,
        delivery: &PendingDelivery,
    ) -> Result<(), StreamError> {
        let mut owned = self.shared.owned.lock().await;
        let entry = owned
            .get(shard_id)
            .ok_or_else(|| StreamError::LeaseLost(shard_id.to_owned()))?;
        let lease = Lease {
            pending: Some(delivery.clone()),
            ..entry.lease.clone()
        };
        self.shared.write_owned(&mut owned, shard_id, lease).await
    }

    async fn pending_delivery(
        &mut self,
        shard_id: &str,
    ) -> Result<Option<PendingDelivery>, StreamError> {
        let owned = self.shared.owned.lock().await;
        let entry = owned
            .get(shard_id)
            .ok_or_else(|| StreamError::LeaseLost(shard_id.to_owned()))?;
        Ok(entry.lease.pending.clone())
    }

    async fn close(&mut self) {
        self.stop.cancel();
        self.shared.release_all().await;
    }
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
