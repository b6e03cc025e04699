//! The stream on Kinesis Data Streams, through `aws-sdk-kinesis`.
//!
//! Producing ([`producer`]): PutRecords in batches of at most 500 records /
//! 5 MiB; only the records a call reports as failed are retried, with capped
//! exponential backoff and jitter, until they are all on the stream or the
//! put timeout passes (then the caller answers 503 and nothing counts as
//! accepted). With aggregation on ([`aggregator`]), puts are collected for a
//! moment and packed, per shard, into records of the KPL aggregated format
//! ([`aggregated`]).
//!
//! Consuming: every shard is read with GetShardIterator and GetRecords,
//! within the per-shard limit of 5 calls a second ([`reader`]); aggregated
//! records, whoever put them, are read as their user records, each with a
//! sub-sequence number, so a checkpoint can fall inside one. A consumer
//! name's shards are leased ([`lease`], [`coordinator`]): one process reads
//! a shard at a time, a live process takes over the shards of a dead one
//! once their leases expire, and a child shard (after resharding) is read
//! only once every parent is finished, so one racer's records stay in
//! order. Checkpoints live in the lease and are written only by its owner
//! ([`subscription`]).

mod aggregated;
mod aggregator;
mod coordinator;
mod lease;
mod producer;
mod reader;
mod shards;
mod subscription;

use super::{PutRecord, Stream, StreamError, Subscription};
use crate::freshness::Freshness;
use crate::object_store::ObjectStore;
use aggregator::Aggregator;
use async_trait::async_trait;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::SdkError;
use coordinator::Coordinator;
use lease::LeaseTable;
use std::sync::Arc;
use std::time::Duration;
use subscription::KinesisSubscription;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

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
    /// Aggregate records (KPL format), collecting puts for this long first;
    /// `None` puts one Kinesis record per record.
    pub aggregate_linger: Option<Duration>,
}

/// How long a put that gave up keeps the stream reported not ready, unless
/// a put succeeds meanwhile: long enough for a load balancer's health check
/// to see it, short enough that a stream nobody writes to any more (the
/// balancer stopped sending) is probed afresh soon.
const FAILED_PUT_COUNTS_FOR: Duration = Duration::from_secs(10);

/// The last put that gave up, until one started later succeeds: Kinesis
/// may answer DescribeStreamSummary while refusing every write (a shard
/// over its write limit), and readiness must say what bikes are told.
/// Puts overlap, so they are ordered by when they started: a put that
/// began before the outage and gave up after a newer one went through does
/// not turn readiness red again.
#[derive(Default)]
struct PutHealth(std::sync::Mutex<PutOutcomes>);

#[derive(Default)]
struct PutOutcomes {
    /// When the newest put that succeeded started.
    ok_started: Option<std::time::Instant>,
    /// When the newest failing put (started after `ok_started`) started,
    /// when it gave up, and why.
    failed: Option<(std::time::Instant, std::time::Instant, String)>,
}

impl PutHealth {
    /// Notes how a put that started at `started` ended.
    fn record(&self, started: std::time::Instant, result: &Result<(), StreamError>) {
        let mut outcomes = self.0.lock().expect("not poisoned");
        match result {
            Ok(()) => {
                if outcomes.ok_started.is_none_or(|ok| ok < started) {
                    outcomes.ok_started = Some(started);
                }
                if outcomes
                    .failed
                    .as_ref()
                    .is_some_and(|(failed, ..)| *failed <= started)
                {
                    outcomes.failed = None;
                }
            }
            Err(e) => {
                if outcomes.ok_started.is_some_and(|ok| ok >= started) {
                    return; // a newer put went through since this one began
                }
                let why = match e {
                    StreamError::Unavailable(why) => why.clone(),
                    other => other.to_string(),
                };
                outcomes.failed = Some((started, std::time::Instant::now(), why));
            }
        }
    }

    /// Why puts fail, if the newest one gave up recently.
    fn failing(&self) -> Option<String> {
        let outcomes = self.0.lock().expect("not poisoned");
        outcomes
            .failed
            .as_ref()
            .filter(|(_, gave_up, _)| gave_up.elapsed() < FAILED_PUT_COUNTS_FOR)
            .map(|(.., why)| why.clone())
    }
}

/// A Kinesis data stream; consumers keep their leases in `leases`.
#[derive(Clone)]
pub struct KinesisStream {
    client: Client,
    settings: Arc<KinesisSettings>,
    leases: Arc<dyn ObjectStore>,
    put_metrics: Arc<producer::Metrics>,
    /// Whether puts go through.
    put_health: Arc<PutHealth>,
    /// Collects puts into aggregated records, when aggregating.
    aggregator: Option<Arc<Aggregator>>,
    /// Where consumers' lag is reported, if anywhere.
    freshness: Option<Arc<Freshness>>,
}

impl KinesisStream {
    /// The stream `settings.stream_name`, with leases in `leases`. Call
    /// within a Tokio runtime: an aggregating stream starts its collector.
    #[must_use]
    pub fn new(
        client: Client,
        settings: KinesisSettings,
        leases: Arc<dyn ObjectStore>,
    ) -> KinesisStream {
        let settings = Arc::new(settings);
        let put_metrics = Arc::new(producer::Metrics::new());
        let aggregator = settings.aggregate_linger.map(|linger| {
            Arc::new(Aggregator::start(
                client.clone(),
                Arc::clone(&settings),
                Arc::clone(&put_metrics),
                linger,
            ))
        });
        KinesisStream {
            client,
            settings,
            leases,
            put_metrics,
            put_health: Arc::default(),
            aggregator,
            freshness: None,
        }
    }

    /// Reports its consumers' lag (`MillisBehindLatest`) to `freshness`.
    #[must_use]
    pub fn reporting_to(mut self, freshness: Arc<Freshness>) -> KinesisStream {
        self.freshness = Some(freshness);
        self
    }
}

#[async_trait]
impl Stream for KinesisStream {
    async fn put_records(&self, records: Vec<PutRecord>) -> Result<(), StreamError> {
        let started = std::time::Instant::now();
        let result = match &self.aggregator {
            Some(aggregator) => aggregator.put(records).await,
            None => {
                producer::put_records(&self.client, &self.settings, &self.put_metrics, records)
                    .await
            }
        };
        self.put_health.record(started, &result);
        result
    }

    async fn subscribe(&self, consumer: &str) -> Result<Box<dyn Subscription>, StreamError> {
        let (records, queue) = mpsc::channel(QUEUE);
        let coordinator = Arc::new(Coordinator::new(
            self.client.clone(),
            Arc::clone(&self.settings),
            LeaseTable::new(Arc::clone(&self.leases), consumer),
            records,
            consumer,
            self.freshness.clone(),
        ));
        // The first round runs now, so a missing stream fails loudly here.
        coordinator.refresh().await?;
        let stop = CancellationToken::new();
        tokio::spawn(Arc::clone(&coordinator).coordinate(stop.clone()));
        tracing::info!(consumer, owner = %coordinator.owner, "reading the Kinesis stream");
        Ok(Box::new(KinesisSubscription::new(coordinator, queue, stop)))
    }

    /// Kinesis answers, the stream takes writes (active, or updating
    /// during a reshard), and no put gave up in the last
    /// [`FAILED_PUT_COUNTS_FOR`] without one succeeding since.
    async fn ready(&self) -> Result<(), StreamError> {
        use aws_sdk_kinesis::types::StreamStatus;
        if let Some(reason) = self.put_health.failing() {
            return Err(unavailable("puts are failing", reason));
        }
        let summary = self
            .client
            .describe_stream_summary()
            .stream_name(&self.settings.stream_name)
            .send()
            .await
            .map_err(|e| unavailable("DescribeStreamSummary", describe(&e)))?;
        let status = summary
            .stream_description_summary()
            .map(|s| s.stream_status().clone());
        match status {
            Some(StreamStatus::Active | StreamStatus::Updating) => Ok(()),
            other => Err(unavailable(
                "the stream",
                format!("status {other:?}, not taking records"),
            )),
        }
    }
}

/// An SDK error as one line: the service's own message when it answered.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_put_counts_until_one_started_later_succeeds() {
        use std::time::Instant;
        let health = PutHealth::default();
        let throttled = || {
            Err(StreamError::Unavailable(
                "PutRecords kept failing: x".into(),
            ))
        };
        assert_eq!(health.failing(), None);
        let t0 = Instant::now();
        let [t1, t2, t3] = [1, 2, 3].map(|ms| t0 + Duration::from_millis(ms));
        health.record(t1, &throttled());
        assert_eq!(
            health.failing().as_deref(),
            Some("PutRecords kept failing: x")
        );
        // A put that started before the failing one succeeds late: the
        // failure stands.
        health.record(t0, &Ok(()));
        assert!(health.failing().is_some());
        // One started after it succeeds: ready again.
        health.record(t2, &Ok(()));
        assert_eq!(health.failing(), None);
        // A put that began before that success gives up late: still ready.
        health.record(t1, &throttled());
        assert_eq!(health.failing(), None);
        // A newer one fails: not ready.
        health.record(t3, &Err(StreamError::Closed));
        assert!(health.failing().is_some());
        // A failure long past no longer counts (nobody has put since).
        health.0.lock().unwrap().failed =
            Some((t3, Instant::now() - FAILED_PUT_COUNTS_FOR, "old".into()));
        assert_eq!(health.failing(), None);
    }
}
