//! The transformer's loop: poll the stream, buffer per shard, deliver when
//! a buffer is full or due, checkpoint after each durable delivery.

use crate::batcher::{BatchLimits, Batcher};
use crate::deliver::{self, Control, Metrics, Processed};
use crate::{CONSUMER, TransformerArgs};
use alleycat_core::backoff::Backoff;
use alleycat_core::lull::Lull;
use alleycat_core::validate::SensorLimits;
use alleycat_runtime::Readiness;
use alleycat_storage::{
    Freshness, Handoff, ObjectStore, SequenceNumber, Stream, StreamRecord, Subscription,
};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Gauge: the age of the oldest record read and not yet durably delivered.
const FRESHNESS: &str = "alleycat_transformer_freshness_seconds";

/// Most records taken from the stream per poll. A loop that falls behind
/// catches up only as fast as this many records per turn: in the stretch
/// run (100,000 records/s, the cores shared with 10,000 viewers' pushes) a
/// turn took long enough that 10,000 held the reader to about 9,000
/// records/s, and its lag grew past 30 s. On Kinesis a poll joins what the
/// shard readers fetched, each GetRecords call at most 10,000 records.
const POLL_RECORDS: usize = 100_000;
/// How long before the poll that brought it a record must have arrived
/// for its shard's buffer to fill at `ALLEYCAT_BUFFER_CATCH_UP_BYTES`: the
/// transformer is reading a backlog. One that keeps up reads a record
/// milliseconds after it arrives on the embedded stream, and within about
/// a second on Kinesis (its readers call GetRecords every 200 ms, and
/// arrival is Kinesis's clock). A local clock off by more than the margin
/// left only changes object sizes: ahead, larger; behind, the usual size.
const BEHIND_AFTER_MS: i64 = 2000;
/// Longest a poll waits when no batch is due sooner.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Reads the stream and delivers batches until `stop` is cancelled, then
/// delivers every open batch and returns. Records that break the rules
/// (`limits` saying how high their sensors may read) go to
/// `processing-failed/` with the reason.
pub async fn run_pipeline(
    stream: Arc<dyn Stream>,
    store: Arc<dyn ObjectStore>,
    args: TransformerArgs,
    limits: SensorLimits,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    run_pipeline_reporting(
        stream,
        store,
        args,
        limits,
        stop,
        Readiness::default(),
        InProcess::default(),
    )
    .await
}

/// What the transformer tells the services beside it in its process.
#[derive(Clone, Default)]
pub struct InProcess {
    /// The arrival of the oldest record it holds, and each object written.
    pub freshness: Arc<Freshness>,
    /// The points of each delivery object written, for history beside it.
    pub handoff: Arc<Handoff>,
}

/// [`run_pipeline`], reporting to `readiness` (part `transformer`): not
/// ready while reading the stream or a delivery step keeps failing. At
/// shutdown a failing step is not retried: what is not delivered stays on
/// the stream, so stopping never waits for a backend that is down.
///
/// Reports to `beside.freshness` the arrival of the oldest record it holds
/// and each delivery object it writes (`alleycat_transformer_freshness_seconds`),
/// and leaves each object's points in `beside.handoff` while history there
/// takes them.
pub async fn run_pipeline_reporting(
    stream: Arc<dyn Stream>,
    store: Arc<dyn ObjectStore>,
    args: TransformerArgs,
    limits: SensorLimits,
    stop: CancellationToken,
    readiness: Readiness,
    beside: InProcess,
) -> anyhow::Result<()> {
    let InProcess { freshness, handoff } = beside;
    let subscription = stream.subscribe(CONSUMER).await?;
    freshness.transformer_started(CONSUMER, metrics::gauge!(FRESHNESS));
    let mut pipeline = Pipeline {
        store,
        subscription,
        limits: args.limits(),
        quiet: args.quiet().map(Lull::new),
        sensor_limits: limits,
        shards: HashMap::new(),
        control: Control {
            stop: stop.clone(),
            readiness,
        },
        abandoned: false,
        metrics: Metrics::new(),
        freshness,
        handoff,
        delivering: None,
        polled: None,
        polled_at_ms: None,
    };
    let mut backoff = Backoff::default();
    tracing::info!(
        buffer_bytes = pipeline.limits.max_bytes,
        buffer_catch_up_bytes = pipeline.limits.catch_up_bytes,
        buffer_interval = ?pipeline.limits.max_age,
        buffer_idle = ?args.quiet(),
        max_cadence = limits.max_cadence(),
        max_resistance = limits.max_resistance(),
        "transformer started"
    );
    loop {
        let wait = pipeline.wait();
        let polled = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            polled = pipeline.subscription.poll(POLL_RECORDS, wait) => polled,
        };
        match polled {
            Ok(records) => {
                backoff.reset();
                // Deliveries retry until they succeed, so a poll comes only
                // after every earlier step succeeded.
                pipeline.control.working();
                if records.is_empty() {
                    pipeline.flush_if_quiet().await;
                } else {
                    pipeline.arrived();
                    // Held from now on, though not buffered yet (taking the
                    // first record of a shard settles its past first).
                    pipeline.polled = records.iter().map(|r| r.arrival_ms).min();
                    pipeline.report_held();
                    pipeline.polled_at_ms = Some(chrono::Utc::now().timestamp_millis());
                    for record in records {
                        pipeline.take(record).await;
                    }
                    pipeline.polled = None;
                    pipeline.report_held();
                }
            }
            Err(e) => {
                pipeline.control.failing("reading the stream", &e);
                tracing::warn!(error = %e, "reading the stream failed; retrying");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff.next_delay()) => {}
                }
            }
        }
        pipeline.flush_due().await;
    }
    pipeline.flush_all().await;
    pipeline.subscription.close().await;
    pipeline.freshness.transformer_stopped();
    if pipeline.abandoned {
        tracing::warn!(
            "transformer stopped; batches it could not deliver stay on the stream for the next start"
        );
    } else {
        tracing::info!("transformer stopped; open batches delivered");
    }
    Ok(())
}

/// The transformer's state: one buffer per shard it reads.
struct Pipeline {
    store: Arc<dyn ObjectStore>,
    subscription: Box<dyn Subscription>,
    limits: BatchLimits,
    /// Open buffers are delivered once the stream pauses (for at most
    /// `ALLEYCAT_BUFFER_IDLE_MS`, sooner at high rates): waiting out the
    /// interval would only delay the last records of a race, as no more
    /// are coming to fill them.
    quiet: Option<Lull>,
    /// How high a record's sensors may read.
    sensor_limits: SensorLimits,
    shards: HashMap<String, Shard>,
    control: Control,
    /// A delivery was given up while stopping: nothing more is delivered or
    /// checkpointed, as a later checkpoint would skip its records.
    abandoned: bool,
    metrics: Metrics,
    /// Where the oldest record held and the objects written are reported.
    freshness: Arc<Freshness>,
    /// Where each object's points are left for history in this process.
    handoff: Arc<Handoff>,
    /// The arrival of the oldest record of the batch being delivered...
    delivering: Option<i64>,
    /// ...and of the records polled and not all taken into buffers yet.
    polled: Option<i64>,
    /// When the last poll returned (ms since the epoch), to tell the age
    /// of the records it brought.
    polled_at_ms: Option<i64>,
}

struct Shard {
    batcher: Batcher<Processed>,
    /// Its last record came from a backlog.
    catching_up: bool,
    /// Records up to here were delivered by a previous reader whose
    /// checkpoint did not land; they are skipped, not delivered again.
    delivered_through: Option<SequenceNumber>,
}

impl Pipeline {
    /// How long the next poll may wait: until the earliest batch is due,
    /// and, while any is open, no longer than until the stream has paused.
    fn wait(&self) -> Duration {
        let next_due = self
            .shards
            .values()
            .filter_map(|s| s.batcher.deadline())
            .min();
        next_due.map_or(IDLE_POLL, |due| {
            let now = Instant::now();
            let until_paused = self.quiet.as_ref().map_or(IDLE_POLL, |quiet| {
                quiet.paused_at().map_or_else(
                    || quiet.wait(),
                    |at| at.saturating_duration_since(now.into_std()),
                )
            });
            due.saturating_duration_since(now)
                .min(IDLE_POLL)
                .min(until_paused)
        })
    }

    /// A poll brought records.
    fn arrived(&mut self) {
        if let Some(quiet) = &mut self.quiet {
            quiet.arrived(Instant::now().into_std());
        }
    }

    /// After a poll that brought nothing: if the stream has paused,
    /// delivers every open buffer now. A stream that keeps bringing
    /// records (a steady race, or a backlog being read) does not pause, so
    /// its buffers still fill by size or interval.
    async fn flush_if_quiet(&mut self) {
        let now = Instant::now().into_std();
        if self.quiet.as_ref().is_some_and(|quiet| quiet.paused(now)) {
            let flushed = self.flush_all().await;
            self.metrics.quiet_flushes.increment(flushed as u64);
        }
    }

    /// Reports the arrival of the oldest record held: buffered, in the
    /// batch being delivered, or polled and not taken yet. Buffers hold
    /// records in stream order, so their first is their oldest.
    fn report_held(&self) {
        let buffered = self
            .shards
            .values()
            .filter_map(|s| s.batcher.first().map(Processed::arrival_ms));
        let oldest = buffered.chain(self.delivering).chain(self.polled).min();
        self.freshness.transformer_holds(oldest);
    }

    async fn take(&mut self, record: StreamRecord) {
        if self.abandoned {
            return;
        }
        if !self.shards.contains_key(&record.shard_id) {
            let delivered_through = deliver::recover(
                &self.control,
                self.store.as_ref(),
                self.subscription.as_mut(),
                &record.shard_id,
            )
            .await;
            let shard = Shard {
                batcher: Batcher::new(self.limits),
                catching_up: false,
                delivered_through,
            };
            self.shards.insert(record.shard_id.clone(), shard);
        }
        let shard = self
            .shards
            .get_mut(&record.shard_id)
            .expect("inserted above");
        if let Some(through) = &shard.delivered_through {
            if record.sequence <= *through {
                return;
            }
            shard.delivered_through = None;
        }
        let shard_id = record.shard_id.clone();
        let processed = Processed::from_record(record, self.sensor_limits);
        let size = processed.size();
        let behind = self
            .polled_at_ms
            .is_some_and(|at| at.saturating_sub(processed.arrival_ms()) > BEHIND_AFTER_MS);
        if behind != shard.catching_up {
            shard.catching_up = behind;
            if behind {
                tracing::info!(
                    shard = shard_id,
                    bytes = self.limits.catch_up_bytes,
                    "transformer behind the stream: delivering larger objects until it catches up"
                );
            } else {
                tracing::info!(shard = shard_id, "transformer caught up with the stream");
            }
        }
        if let Some(batch) = shard.batcher.push(processed, size, behind) {
            self.deliver(&shard_id, batch).await;
        }
    }

    async fn flush_due(&mut self) {
        let due: Vec<(String, Vec<Processed>)> = self
            .shards
            .iter_mut()
            .filter_map(|(id, shard)| shard.batcher.take_if_due().map(|batch| (id.clone(), batch)))
            .collect();
        for (shard, batch) in due {
            self.deliver(&shard, batch).await;
        }
    }

    /// Delivers every open buffer; returns how many there were.
    async fn flush_all(&mut self) -> usize {
        let open: Vec<(String, Vec<Processed>)> = self
            .shards
            .iter_mut()
            .filter(|(_, shard)| !shard.batcher.is_empty())
            .map(|(id, shard)| (id.clone(), shard.batcher.take()))
            .collect();
        let flushed = open.len();
        for (shard, batch) in open {
            self.deliver(&shard, batch).await;
        }
        flushed
    }

    async fn deliver(&mut self, shard: &str, batch: Vec<Processed>) {
        if self.abandoned {
            return;
        }
        self.delivering = batch.iter().map(Processed::arrival_ms).min();
        self.report_held();
        let report = deliver::Reporting {
            metrics: &self.metrics,
            freshness: &self.freshness,
            handoff: &self.handoff,
        };
        let outcome = deliver::deliver(
            &self.control,
            &report,
            self.store.as_ref(),
            self.subscription.as_mut(),
            shard,
            batch,
        )
        .await;
        self.delivering = None;
        if outcome == deliver::Outcome::ShardLost {
            // Its new owner re-reads it from the last checkpoint.
            tracing::info!(
                shard,
                "shard taken over by another transformer; dropping its buffer"
            );
            self.shards.remove(shard);
        }
        if outcome == deliver::Outcome::Abandoned {
            self.abandoned = true;
        }
        self.report_held();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::codec;
    use alleycat_core::lull::SHORTEST_PAUSE;
    use alleycat_storage::object_store::fs::FsStore;
    use alleycat_storage::stream::embedded::{EmbeddedStream, SHARD_ID};
    use alleycat_storage::{
        ETag, Object, PendingDelivery, Precondition, PutRecord, StoreError, StreamError,
    };
    use async_trait::async_trait;
    use bytes::Bytes;
    use std::num::NonZeroUsize;
    use tokio::sync::Notify;

    fn record(i: u32) -> PutRecord {
        let json = format!(
            r#"{{"event":"update","deviceTimestamp":1,"second":{},"raceId":1,"name":"R","racerId":{i},"classId":1,"cadence":50.5,"resistance":60}}"#,
            i % 300 + 1
        );
        PutRecord {
            partition_key: i.to_string(),
            data: json.into_bytes().into(),
            validated: None,
        }
    }

    /// An embedded stream and a delivery store in a fresh directory, which
    /// lives as long as the `TempDir` returned.
    /// Puts the records of racers `racers` on `stream`.
    async fn put(stream: &(impl Stream + ?Sized), racers: std::ops::Range<u32>) {
        stream
            .put_records(racers.map(record).collect())
            .await
            .unwrap();
    }

    fn stores() -> (tempfile::TempDir, EmbeddedStream, FsStore) {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(&dir.path().join("stream")).unwrap();
        let store = FsStore::open(&dir.path().join("delivery")).unwrap();
        (dir, stream, store)
    }

    /// The pipeline running from `stream` into `store`, and what stops it.
    fn spawn_pipeline(
        stream: Arc<dyn Stream>,
        store: &FsStore,
        args: TransformerArgs,
    ) -> (
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_pipeline(
            stream,
            Arc::new(store.clone()),
            args,
            SensorLimits::DEFAULT,
            stop.clone(),
        ));
        (stop, task)
    }

    fn args(buffer_bytes: usize, buffer_interval: Duration) -> TransformerArgs {
        TransformerArgs {
            buffer_bytes: NonZeroUsize::new(buffer_bytes).unwrap(),
            buffer_catch_up_bytes: NonZeroUsize::new(buffer_bytes).unwrap(),
            buffer_interval,
            buffer_idle: Duration::ZERO,
        }
    }

    /// Every object in the store, gunzipped, by key.
    async fn delivered(store: &FsStore) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for key in store.list("", None).await.unwrap() {
            let body = store.get(&key).await.unwrap().unwrap();
            out.push((key, codec::gunzip(&body.body, 1 << 30).unwrap()));
        }
        out
    }

    /// The racer ids of every delivered line, sorted.
    fn racers(objects: &[(String, Vec<u8>)]) -> Vec<u64> {
        let mut racers: Vec<u64> = objects
            .iter()
            .flat_map(|(_, body)| body.split(|b| *b == b'\n').filter(|l| !l.is_empty()))
            .map(|line| {
                serde_json::from_slice::<serde_json::Value>(line).unwrap()["racerId"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        racers.sort_unstable();
        racers
    }

    /// Uncompressed sizes of the objects whose keys are not in `before`.
    async fn new_object_sizes(store: &FsStore, before: &[(String, Vec<u8>)]) -> Vec<usize> {
        delivered(store)
            .await
            .into_iter()
            .filter(|(key, _)| !before.iter().any(|(seen, _)| seen == key))
            .map(|(_, body)| body.len())
            .collect()
    }

    #[tokio::test]
    async fn a_backlog_is_delivered_in_larger_objects_until_caught_up() {
        let (_dir, stream, store) = stores();
        let args = TransformerArgs {
            buffer_catch_up_bytes: NonZeroUsize::new(64 * 1024).unwrap(),
            ..args(16 * 1024, Duration::from_secs(3600))
        };
        let mut pipeline = pipeline(&stream, &store, &args).await;
        for phase in 0..2u32 {
            put(&stream, phase * 1000..(phase + 1) * 1000).await;
            let before = delivered(&store).await;
            let records = pipeline.subscription.poll(1000, WAIT).await.unwrap();
            let newest = records.iter().map(|r| r.arrival_ms).max().unwrap();
            // The first poll comes well after its records arrived (a
            // backlog), the second 10 ms after (caught up).
            let late = if phase == 0 {
                BEHIND_AFTER_MS + 500
            } else {
                10
            };
            pipeline.polled_at_ms = Some(newest + late);
            for record in records {
                pipeline.take(record).await;
            }
            if phase == 1 {
                pipeline.flush_all().await;
            }
            let sizes = new_object_sizes(&store, &before).await;
            if phase == 0 {
                assert!(
                    sizes.len() >= 2 && sizes.iter().all(|&b| b > 16 * 1024 && b <= 64 * 1024),
                    "a backlog fills objects at the catch-up size: {sizes:?}"
                );
            } else {
                // What the backlog left in the buffer goes first, whole;
                // then objects are of the usual size again.
                let larger = sizes.iter().filter(|&&b| b > 16 * 1024).count();
                assert!(
                    sizes.len() > 5 && larger <= 1 && sizes.iter().all(|&b| b <= 64 * 1024),
                    "caught up, objects fill at the usual size: {sizes:?}"
                );
            }
        }
        assert_eq!(
            racers(&delivered(&store).await),
            (0..2000).collect::<Vec<_>>(),
            "every record exactly once"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_read_late_fill_objects_at_the_catch_up_size() {
        let (_dir, stream, store) = stores();
        let stream: Arc<dyn Stream> = Arc::new(stream);
        put(&*stream, 0..2000).await;
        // The transformer starts after the records have waited past
        // BEHIND_AFTER_MS: it reads a backlog.
        tokio::time::sleep(Duration::from_millis(BEHIND_AFTER_MS as u64 + 200)).await;
        let (stop, task) = spawn_pipeline(
            stream.clone(),
            &store,
            TransformerArgs {
                buffer_catch_up_bytes: NonZeroUsize::new(64 * 1024).unwrap(),
                ..args(16 * 1024, Duration::from_secs(3600))
            },
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while delivered(&store).await.len() < 2 {
            assert!(Instant::now() < deadline, "no size flush happened");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap().unwrap();
        let objects = delivered(&store).await;
        assert!(
            objects.iter().any(|(_, body)| body.len() > 16 * 1024),
            "{:?}",
            objects.iter().map(|(_, b)| b.len()).collect::<Vec<_>>()
        );
        assert_eq!(racers(&objects), (0..2000).collect::<Vec<_>>());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn objects_respect_the_buffer_size_and_hold_every_record_once() {
        let (_dir, stream, store) = stores();
        let stream: Arc<dyn Stream> = Arc::new(stream);
        put(&*stream, 0..2000).await;

        let (stop, task) = spawn_pipeline(
            stream.clone(),
            &store,
            args(16 * 1024, Duration::from_secs(3600)),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        // Size flushes alone deliver all but the last partial buffer.
        let lines = |objects: Vec<(String, Vec<u8>)>| {
            objects
                .iter()
                .map(|(_, b)| b.iter().filter(|c| **c == b'\n').count())
                .sum::<usize>()
        };
        while lines(delivered(&store).await) < 1800 {
            assert!(Instant::now() < deadline, "size flushes did not happen");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap().unwrap();

        let objects = delivered(&store).await;
        assert!(objects.len() > 10, "{} objects", objects.len());
        for (key, body) in &objects {
            assert!(body.len() <= 16 * 1024, "{key} holds {} bytes", body.len());
            assert!(
                key.starts_with(&chrono::Utc::now().format("%Y/%m/%d/").to_string()),
                "{key}"
            );
            for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let v: serde_json::Value = serde_json::from_slice(line).unwrap();
                assert_eq!(v["output"], 106.875, "((50.5 + 35) * (60 + 65)) / 100");
            }
        }
        assert_eq!(
            racers(&objects),
            (0..2000).collect::<Vec<_>>(),
            "every record exactly once, shutdown flush included"
        );

        // Everything was checkpointed: a restarted transformer delivers nothing new.
        let (stop, task) =
            spawn_pipeline(stream, &store, args(16 * 1024, Duration::from_millis(10)));
        tokio::time::sleep(Duration::from_millis(200)).await;
        stop.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(delivered(&store).await.len(), objects.len());
    }

    /// A store whose writes go wrong as a test needs.
    struct FaultyStore {
        inner: FsStore,
        fault: Fault,
    }

    enum Fault {
        /// A write lands, then never returns: a process dying right after
        /// its delivery object became durable, before the checkpoint.
        DiesAfterWrite(Notify),
        /// The first this many writes fail (a full disk, an S3 error).
        FailsFirst(std::sync::atomic::AtomicUsize),
    }

    impl FaultyStore {
        fn dies_after_write(inner: &FsStore) -> FaultyStore {
            let fault = Fault::DiesAfterWrite(Notify::new());
            FaultyStore {
                inner: inner.clone(),
                fault,
            }
        }

        fn fails_first(inner: &FsStore, writes: usize) -> FaultyStore {
            let fault = Fault::FailsFirst(writes.into());
            FaultyStore {
                inner: inner.clone(),
                fault,
            }
        }

        async fn written(&self) {
            let Fault::DiesAfterWrite(written) = &self.fault else {
                unreachable!("only a store that dies tells of its write")
            };
            written.notified().await;
        }
    }

    #[async_trait]
    impl ObjectStore for FaultyStore {
        async fn put_if(
            &self,
            key: &str,
            body: Bytes,
            content_type: &'static str,
            condition: Precondition,
        ) -> Result<ETag, StoreError> {
            match &self.fault {
                Fault::DiesAfterWrite(written) => {
                    self.inner
                        .put_if(key, body, content_type, condition)
                        .await?;
                    written.notify_one();
                    std::future::pending().await
                }
                Fault::FailsFirst(failures) => {
                    use std::sync::atomic::Ordering::SeqCst;
                    if failures
                        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                        .is_ok()
                    {
                        return Err(StoreError::Io {
                            operation: "put",
                            key: key.to_owned(),
                            source: "No space left on device".into(),
                        });
                    }
                    self.inner.put_if(key, body, content_type, condition).await
                }
            }
        }
        async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
            self.inner.get(key).await
        }
        async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
            self.inner.head(key).await
        }
        async fn delete(&self, key: &str) -> Result<(), StoreError> {
            self.inner.delete(key).await
        }
        async fn list(
            &self,
            prefix: &str,
            start_after: Option<&str>,
        ) -> Result<Vec<String>, StoreError> {
            self.inner.list(prefix, start_after).await
        }
    }

    /// With history beside it, each delivery object's points are left
    /// under its key: exactly what history reads back from the object, a
    /// failed write's included once, however many attempts it took.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_object_written_leaves_the_points_history_would_read_back_from_it() {
        for (history_beside, failures) in [(true, 0), (true, 2), (false, 0)] {
            let (_dir, stream, store) = stores();
            put(&stream, 0..50).await;
            let handoff = Arc::new(Handoff::default());
            if history_beside {
                handoff.open();
            }
            let stop = CancellationToken::new();
            let task = tokio::spawn(run_pipeline_reporting(
                Arc::new(stream),
                Arc::new(FaultyStore::fails_first(&store, failures)),
                args(1 << 20, Duration::from_millis(20)),
                SensorLimits::DEFAULT,
                stop.clone(),
                Readiness::default(),
                InProcess {
                    freshness: Arc::default(),
                    handoff: Arc::clone(&handoff),
                },
            ));
            let deadline = Instant::now() + Duration::from_secs(30);
            while racers(&delivered(&store).await).len() < 50 {
                assert!(Instant::now() < deadline, "not delivered");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            stop.cancel();
            task.await.unwrap().unwrap();
            let objects = delivered(&store).await;
            if !history_beside {
                assert_eq!(handoff.points(), 0, "no history here: nothing kept");
                continue;
            }
            assert_eq!(handoff.points(), 50, "{failures} failed writes");
            for (key, body) in objects {
                let (read_back, bad) = alleycat_core::delivery::parse_points(&body);
                assert!(bad.is_empty());
                assert_eq!(handoff.take(&key), Some(read_back), "{key}");
            }
            assert_eq!(handoff.points(), 0, "nothing left under other keys");
        }
    }

    /// An object never written leaves no points: history must not merge
    /// records that are not durable.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_object_not_written_leaves_no_points() {
        let (_dir, stream, store) = stores();
        put(&stream, 0..50).await;
        let handoff = Arc::new(Handoff::default());
        handoff.open();
        let readiness = Readiness::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_pipeline_reporting(
            Arc::new(stream),
            Arc::new(FaultyStore::fails_first(&store, usize::MAX)),
            args(1 << 20, Duration::from_millis(20)),
            SensorLimits::DEFAULT,
            stop.clone(),
            readiness.clone(),
            InProcess {
                freshness: Arc::default(),
                handoff: Arc::clone(&handoff),
            },
        ));
        until("a failing write", || {
            readiness
                .problems()
                .get(deliver::PART)
                .is_some_and(|p| p.contains("No space"))
        })
        .await;
        stop.cancel();
        task.await.unwrap().unwrap();
        assert!(delivered(&store).await.is_empty());
        assert_eq!(handoff.points(), 0, "taken back after each failed write");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_delivery_completed_before_a_crash_is_not_delivered_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = FsStore::open(&dir.path().join("delivery")).unwrap();
        let args = args(1 << 20, Duration::from_millis(50));
        {
            let stream: Arc<dyn Stream> =
                Arc::new(EmbeddedStream::open(&dir.path().join("stream")).unwrap());
            put(&*stream, 0..10).await;
            let dying = Arc::new(FaultyStore::dies_after_write(&store));
            let task = tokio::spawn(run_pipeline(
                stream,
                dying.clone(),
                args.clone(),
                SensorLimits::DEFAULT,
                CancellationToken::new(),
            ));
            tokio::time::timeout(Duration::from_secs(30), dying.written())
                .await
                .unwrap();
            task.abort();
            let _ = task.await;
        }
        assert_eq!(
            delivered(&store).await.len(),
            1,
            "the object was written, the checkpoint was not"
        );

        let stream: Arc<dyn Stream> =
            Arc::new(EmbeddedStream::open(&dir.path().join("stream")).unwrap());
        put(&*stream, 10..20).await;
        let (stop, task) = spawn_pipeline(stream, &store, args);
        let deadline = Instant::now() + Duration::from_secs(30);
        while delivered(&store).await.len() < 2 {
            assert!(
                Instant::now() < deadline,
                "the new records were not delivered"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop.cancel();
        task.await.unwrap().unwrap();
        assert_eq!(
            racers(&delivered(&store).await),
            (0..20).collect::<Vec<_>>(),
            "each record once: the first batch was not re-delivered"
        );
    }

    const WAIT: Duration = Duration::from_millis(200);
    /// The key a previous reader announced for records 0..=4.
    const EARLIER: &str = "earlier-delivery.gz";

    /// A pipeline over a new subscription, as `run_pipeline` builds it.
    async fn pipeline(
        stream: &EmbeddedStream,
        store: &FsStore,
        args: &TransformerArgs,
    ) -> Pipeline {
        Pipeline {
            store: Arc::new(store.clone()),
            subscription: stream.subscribe(CONSUMER).await.unwrap(),
            limits: args.limits(),
            quiet: args.quiet().map(Lull::new),
            sensor_limits: SensorLimits::DEFAULT,
            shards: HashMap::new(),
            control: Control::default(),
            abandoned: false,
            metrics: Metrics::new(),
            freshness: Arc::new(Freshness::default()),
            handoff: Arc::default(),
            delivering: None,
            polled: None,
            polled_at_ms: None,
        }
    }

    /// Feeds everything on the stream to `pipeline`, as a poll of the loop
    /// does.
    async fn take_all(pipeline: &mut Pipeline) {
        let records = pipeline.subscription.poll(1000, WAIT).await.unwrap();
        if !records.is_empty() {
            pipeline.arrived();
        }
        for record in records {
            pipeline.take(record).await;
        }
    }

    /// Ten records on the stream, of which a previous reader announced the
    /// delivery of the first five, and wrote it if `written`, but crashed
    /// before its checkpoint.
    async fn after_a_crash(written: bool) -> (tempfile::TempDir, EmbeddedStream, FsStore) {
        let (dir, stream, store) = stores();
        put(&stream, 0..10).await;
        let mut previous = stream.subscribe(CONSUMER).await.unwrap();
        let announced = PendingDelivery {
            key: EARLIER.into(),
            first: SequenceNumber::from(0),
            last: SequenceNumber::from(4),
        };
        previous.begin_delivery(SHARD_ID, &announced).await.unwrap();
        if written {
            let body = Bytes::from(codec::gzip(b"", codec::DELIVERY_LEVEL));
            store.put(EARLIER, body, "application/gzip").await.unwrap();
        }
        (dir, stream, store)
    }

    #[tokio::test]
    async fn records_a_previous_reader_delivered_are_skipped() {
        let (_dir, stream, store) = after_a_crash(true).await;
        let mut pipeline =
            pipeline(&stream, &store, &args(1 << 20, Duration::from_secs(3600))).await;
        take_all(&mut pipeline).await;
        pipeline.flush_all().await;
        let new: Vec<_> = delivered(&store)
            .await
            .into_iter()
            .filter(|(key, _)| key != EARLIER)
            .collect();
        assert_eq!(new.len(), 1);
        assert_eq!(racers(&new), [5, 6, 7, 8, 9]);
        // The completed delivery was checkpointed, so it is settled for good.
        let mut next = stream.subscribe(CONSUMER).await.unwrap();
        assert_eq!(next.pending_delivery(SHARD_ID).await.unwrap(), None);
    }

    #[tokio::test]
    async fn records_of_a_delivery_never_written_are_delivered_again() {
        let (_dir, stream, store) = after_a_crash(false).await;
        let mut pipeline =
            pipeline(&stream, &store, &args(1 << 20, Duration::from_secs(3600))).await;
        take_all(&mut pipeline).await;
        pipeline.flush_all().await;
        let objects = delivered(&store).await;
        assert_eq!(objects.len(), 1);
        assert_eq!(racers(&objects), (0..10).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_delivered_once_its_oldest_record_is_due() {
        let (_dir, stream, store) = stores();
        let interval = Duration::from_millis(500);
        let mut pipeline = pipeline(&stream, &store, &args(1 << 20, interval)).await;
        assert_eq!(pipeline.wait(), IDLE_POLL, "nothing buffered");

        put(&stream, 0..3).await;
        take_all(&mut pipeline).await;
        let wait = pipeline.wait();
        assert!(wait > Duration::ZERO && wait <= interval, "{wait:?}");
        pipeline.flush_due().await;
        assert!(delivered(&store).await.is_empty(), "not due yet");

        tokio::time::advance(wait).await;
        assert_eq!(pipeline.wait(), Duration::ZERO);
        pipeline.flush_due().await;
        let objects = delivered(&store).await;
        assert_eq!(objects.len(), 1);
        assert_eq!(racers(&objects), [0, 1, 2]);
        assert_eq!(pipeline.wait(), IDLE_POLL, "the buffer is empty again");
    }

    #[tokio::test(start_paused = true)]
    async fn open_buffers_go_once_the_stream_is_quiet_and_not_before() {
        let (_dir, stream, store) = stores();
        let quiet = Duration::from_millis(300);
        let args = TransformerArgs {
            buffer_idle: quiet,
            ..args(1 << 20, Duration::from_secs(3600))
        };
        let mut pipeline = pipeline(&stream, &store, &args).await;
        pipeline.flush_if_quiet().await;
        assert_eq!(
            pipeline.wait(),
            IDLE_POLL,
            "nothing buffered, nothing to hurry"
        );

        put(&stream, 0..3).await;
        take_all(&mut pipeline).await;
        assert_eq!(
            pipeline.wait(),
            quiet,
            "an open buffer polls no longer than that"
        );
        tokio::time::advance(quiet - Duration::from_millis(1)).await;
        pipeline.flush_if_quiet().await;
        assert!(delivered(&store).await.is_empty(), "not quiet long enough");

        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(pipeline.wait(), Duration::ZERO);
        pipeline.flush_if_quiet().await;
        let objects = delivered(&store).await;
        assert_eq!(racers(&objects), [0, 1, 2]);
        assert_eq!(pipeline.wait(), IDLE_POLL, "the buffer is empty again");
        // Delivered and checkpointed: a new reader starts after them.
        let mut next = stream.subscribe(CONSUMER).await.unwrap();
        assert!(next.poll(10, Duration::ZERO).await.unwrap().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn with_no_idle_setting_only_size_and_interval_deliver() {
        let (_dir, stream, store) = stores();
        let interval = Duration::from_secs(60);
        let mut pipeline = pipeline(&stream, &store, &args(1 << 20, interval)).await;
        put(&stream, 0..3).await;
        take_all(&mut pipeline).await;
        assert_eq!(pipeline.wait(), IDLE_POLL.min(interval));
        tokio::time::advance(Duration::from_secs(30)).await;
        pipeline.flush_if_quiet().await;
        assert!(delivered(&store).await.is_empty());
    }

    /// A stream bringing records every 10 ms has paused after
    /// [`SHORTEST_PAUSE`], not after the whole idle setting: the last
    /// records of a fast burst wait a tenth of a second, not half of one.
    #[tokio::test(start_paused = true)]
    async fn a_fast_stream_is_quiet_sooner_than_the_idle_setting() {
        let (_dir, stream, store) = stores();
        let idle = Duration::from_millis(500);
        let args = TransformerArgs {
            buffer_idle: idle,
            ..args(1 << 20, Duration::from_secs(3600))
        };
        let mut pipeline = pipeline(&stream, &store, &args).await;
        for i in 0..30 {
            put(&stream, i..i + 1).await;
            take_all(&mut pipeline).await;
            tokio::time::advance(Duration::from_millis(10)).await;
            pipeline.flush_if_quiet().await;
        }
        assert!(delivered(&store).await.is_empty(), "records kept coming");
        let wait = pipeline.wait();
        assert!(wait < idle && wait > Duration::ZERO, "{wait:?}");

        tokio::time::advance(SHORTEST_PAUSE - Duration::from_millis(11)).await;
        pipeline.flush_if_quiet().await;
        assert!(delivered(&store).await.is_empty(), "not paused yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        pipeline.flush_if_quiet().await;
        assert_eq!(
            racers(&delivered(&store).await),
            (0..30).collect::<Vec<_>>()
        );
    }

    /// Through the whole loop and a real stream: records arriving every
    /// 100 ms keep the buffer open (no object per poll; the stream pauses
    /// after four gaps), and the buffer goes once the stream paused, not
    /// an hour after the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_steady_stream_keeps_filling_the_buffer_a_quiet_one_delivers_it() {
        let (_dir, stream, store) = stores();
        let stream: Arc<dyn Stream> = Arc::new(stream);
        let args = TransformerArgs {
            buffer_idle: Duration::from_secs(1),
            ..args(1 << 20, Duration::from_secs(3600))
        };
        let (stop, task) = spawn_pipeline(stream.clone(), &store, args);
        for i in 0..25 {
            stream.put_records(vec![record(i)]).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            delivered(&store).await.is_empty(),
            "delivered while records kept coming"
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while delivered(&store).await.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the quiet stream's buffer stayed open"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let objects = delivered(&store).await;
        assert_eq!(objects.len(), 1, "one object for the whole burst");
        assert_eq!(racers(&objects), (0..25).collect::<Vec<_>>());
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn the_oldest_record_held_and_each_delivery_are_reported() {
        let (_dir, stream, store) = stores();
        let mut pipeline =
            pipeline(&stream, &store, &args(1 << 20, Duration::from_secs(3600))).await;
        let freshness = Arc::clone(&pipeline.freshness);
        freshness.transformer_started(CONSUMER, metrics::Gauge::noop());
        freshness.history_started(metrics::Gauge::noop());
        // History has published everything written before now.
        freshness.published_before(chrono::Utc::now().timestamp_millis());

        put(&stream, 0..3).await;
        take_all(&mut pipeline).await;
        pipeline.report_held();
        let arrival = freshness.transformer_oldest().expect("holds records");
        let now = chrono::Utc::now().timestamp_millis();
        assert!(arrival <= now && arrival > now - 10_000, "{arrival}");

        pipeline.flush_all().await;
        assert_eq!(freshness.transformer_oldest(), None, "delivered");
        // The delivered object is not published: its oldest record counts.
        let now = chrono::Utc::now().timestamp_millis();
        let age = freshness.pipeline_age(now).unwrap();
        assert!(
            (age - (now - arrival) as f64 / 1000.0).abs() < 1e-9,
            "{age}"
        );
        freshness.published_before(now + 1);
        assert_eq!(freshness.pipeline_age(now + 1000), Some(0.0));
    }

    /// The embedded stream, telling when its reader has polled records.
    struct Watched {
        inner: EmbeddedStream,
        read: Arc<Notify>,
    }

    #[async_trait]
    impl Stream for Watched {
        async fn put_records(&self, records: Vec<PutRecord>) -> Result<(), StreamError> {
            self.inner.put_records(records).await
        }

        async fn subscribe(&self, consumer: &str) -> Result<Box<dyn Subscription>, StreamError> {
            Ok(Box::new(WatchedSubscription {
                inner: self.inner.subscribe(consumer).await?,
                read: Arc::clone(&self.read),
            }))
        }
    }

    struct WatchedSubscription {
        inner: Box<dyn Subscription>,
        read: Arc<Notify>,
    }

    #[async_trait]
    impl Subscription for WatchedSubscription {
        async fn poll(
            &mut self,
            max: usize,
            wait: Duration,
        ) -> Result<Vec<StreamRecord>, StreamError> {
            let records = self.inner.poll(max, wait).await?;
            if !records.is_empty() {
                self.read.notify_one();
            }
            Ok(records)
        }

        async fn checkpoint(
            &mut self,
            shard_id: &str,
            sequence: &SequenceNumber,
        ) -> Result<(), StreamError> {
            self.inner.checkpoint(shard_id, sequence).await
        }

        async fn begin_delivery(
            &mut self,
            shard_id: &str,
            delivery: &PendingDelivery,
        ) -> Result<(), StreamError> {
            self.inner.begin_delivery(shard_id, delivery).await
        }

        async fn pending_delivery(
            &mut self,
            shard_id: &str,
        ) -> Result<Option<PendingDelivery>, StreamError> {
            self.inner.pending_delivery(shard_id).await
        }

        async fn close(&mut self) {
            self.inner.close().await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_delivers_and_checkpoints_what_is_buffered() {
        let (_dir, embedded, store) = stores();
        let read = Arc::new(Notify::new());
        let stream = Arc::new(Watched {
            inner: embedded.clone(),
            read: Arc::clone(&read),
        });
        put(&*stream, 0..10).await;
        let (stop, task) = spawn_pipeline(stream, &store, args(1 << 20, Duration::from_secs(3600)));
        tokio::time::timeout(Duration::from_secs(30), read.notified())
            .await
            .unwrap();
        // A poll's records are all buffered before the loop looks at `stop`.
        assert!(delivered(&store).await.is_empty(), "neither limit reached");
        stop.cancel();
        task.await.unwrap().unwrap();

        let objects = delivered(&store).await;
        assert_eq!(objects.len(), 1);
        assert_eq!(racers(&objects), (0..10).collect::<Vec<_>>());
        let mut next = embedded.subscribe(CONSUMER).await.unwrap();
        assert!(
            next.poll(10, WAIT).await.unwrap().is_empty(),
            "checkpointed past every record"
        );
    }

    /// A subscription whose announcements fail while `broken` is set (a
    /// stream whose disk is full).
    struct Breakable {
        inner: Box<dyn Subscription>,
        broken: Arc<std::sync::atomic::AtomicBool>,
    }

    struct BreakableStream {
        inner: EmbeddedStream,
        broken: Arc<std::sync::atomic::AtomicBool>,
    }

    #[async_trait]
    impl Stream for BreakableStream {
        async fn put_records(&self, records: Vec<PutRecord>) -> Result<(), StreamError> {
            self.inner.put_records(records).await
        }

        async fn subscribe(&self, consumer: &str) -> Result<Box<dyn Subscription>, StreamError> {
            Ok(Box::new(Breakable {
                inner: self.inner.subscribe(consumer).await?,
                broken: Arc::clone(&self.broken),
            }))
        }
    }

    #[async_trait]
    impl Subscription for Breakable {
        async fn poll(
            &mut self,
            max: usize,
            wait: Duration,
        ) -> Result<Vec<StreamRecord>, StreamError> {
            self.inner.poll(max, wait).await
        }

        async fn checkpoint(
            &mut self,
            shard_id: &str,
            sequence: &SequenceNumber,
        ) -> Result<(), StreamError> {
            self.inner.checkpoint(shard_id, sequence).await
        }

        async fn begin_delivery(
            &mut self,
            shard_id: &str,
            delivery: &PendingDelivery,
        ) -> Result<(), StreamError> {
            if self.broken.load(std::sync::atomic::Ordering::SeqCst) {
                return Err(StreamError::Unavailable("No space left on device".into()));
            }
            self.inner.begin_delivery(shard_id, delivery).await
        }

        async fn pending_delivery(
            &mut self,
            shard_id: &str,
        ) -> Result<Option<PendingDelivery>, StreamError> {
            self.inner.pending_delivery(shard_id).await
        }
    }

    async fn until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn not_ready_while_deliveries_fail_ready_again_once_they_succeed() {
        let (_dir, embedded, store) = stores();
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let stream = Arc::new(BreakableStream {
            inner: embedded.clone(),
            broken: Arc::clone(&broken),
        });
        put(&*stream, 0..10).await;
        let readiness = Readiness::default();
        let stop = CancellationToken::new();
        let task = tokio::spawn(run_pipeline_reporting(
            stream,
            Arc::new(store.clone()),
            args(1 << 20, Duration::from_millis(50)),
            SensorLimits::DEFAULT,
            stop.clone(),
            readiness.clone(),
            InProcess::default(),
        ));
        until("the transformer to say it cannot deliver", || {
            readiness
                .problems()
                .get(deliver::PART)
                .is_some_and(|p| p.contains("announcing a delivery") && p.contains("No space"))
        })
        .await;
        assert!(delivered(&store).await.is_empty());

        broken.store(false, std::sync::atomic::Ordering::SeqCst);
        until("the transformer to be ready again", || {
            readiness.problems().is_empty()
        })
        .await;
        assert_eq!(
            racers(&delivered(&store).await),
            (0..10).collect::<Vec<_>>()
        );
        stop.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stopping_does_not_wait_for_a_broken_stream_and_checkpoints_nothing() {
        let (_dir, embedded, store) = stores();
        let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let stream = Arc::new(BreakableStream {
            inner: embedded.clone(),
            broken: Arc::clone(&broken),
        });
        put(&*stream, 0..10).await;
        let readiness = Readiness::default();
        let stop = CancellationToken::new();
        // Batches fall due at once and fail: the retries back off meanwhile.
        let task = tokio::spawn(run_pipeline_reporting(
            stream,
            Arc::new(store.clone()),
            args(1 << 20, Duration::from_millis(1)),
            SensorLimits::DEFAULT,
            stop.clone(),
            readiness.clone(),
            InProcess::default(),
        ));
        until("a failing delivery", || {
            readiness.problems().contains_key(deliver::PART)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let stopping = Instant::now();
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("stops within 2 s although the stream is broken")
            .unwrap()
            .unwrap();
        let took = stopping.elapsed();
        assert!(took < Duration::from_millis(500), "stopping took {took:?}");
        assert!(delivered(&store).await.is_empty());
        // Nothing was checkpointed: the next start reads every record again.
        let mut next = embedded.subscribe(CONSUMER).await.unwrap();
        assert_eq!(next.poll(100, WAIT).await.unwrap().len(), 10);
    }
}
