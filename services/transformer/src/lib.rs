//! The transformer (what Kinesis Data Firehose and its transform Lambda did):
//! reads the stream, adds `output` to each record, buffers newline-delimited
//! JSON per shard, and delivers gzipped objects to the delivery store when
//! the buffer reaches its size or age. Records that fail processing go to a
//! `processing-failed/` object instead.
//!
//! A shard's checkpoint moves only after its objects are durably written, so
//! a crash re-delivers (never loses) what was in flight; the history merge
//! is idempotent, so a re-delivered record changes nothing.

mod deliver;

use alleycat_core::backoff::Backoff;
use alleycat_core::batcher::{BatchLimits, Batcher};
use alleycat_runtime::{ServerArgs, parse_millis};
use alleycat_storage::{
    ObjectStore, StorageArgs, Stream, StreamRecord, Subscription, compare_sequences,
};
use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use deliver::Processed;

/// The transformer's consumer name on the stream.
pub const CONSUMER: &str = "transformer";

/// Most records taken from the stream per poll.
const POLL_RECORDS: usize = 10_000;
/// Longest a poll waits when no batch is due sooner.
const IDLE_POLL: Duration = Duration::from_secs(1);

/// Buffering settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TransformerArgs {
    /// Deliver a shard's buffer once it holds this many bytes of NDJSON.
    #[arg(long, env = "ALLEYCAT_BUFFER_BYTES", default_value = "1048576")]
    pub buffer_bytes: NonZeroUsize,

    /// Deliver a shard's buffer once its oldest record has waited this long,
    /// in milliseconds.
    #[arg(long, env = "ALLEYCAT_BUFFER_INTERVAL_MS", default_value = "5000", value_parser = parse_millis)]
    pub buffer_interval: Duration,
}

impl TransformerArgs {
    fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_bytes: self.buffer_bytes,
            max_age: self.buffer_interval,
        }
    }
}

/// Settings of a standalone transformer process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Health-check address and shutdown timeout.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where the stream and the delivery store are.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Buffering.
    #[command(flatten)]
    pub transformer: TransformerArgs,
}

/// Runs a standalone transformer process until `shutdown` resolves, then
/// delivers what it holds.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stream = config.storage.open_stream().await?;
    let delivery = config.storage.open_delivery_store().await?;
    let token = alleycat_runtime::cancel_on(shutdown);
    let stop = CancellationToken::new();
    let pipeline = tokio::spawn(run_pipeline(
        stream,
        delivery,
        config.transformer,
        stop.clone(),
    ));
    let router = alleycat_runtime::health_routes();
    let task = ("transformer flush", pipeline, stop);
    alleycat_runtime::serve_then_stop(
        listener,
        router,
        token,
        task,
        config.server.shutdown_timeout,
    )
    .await
}

/// Reads the stream and delivers batches until `stop` is cancelled, then
/// delivers every open batch and returns.
pub async fn run_pipeline(
    stream: Arc<dyn Stream>,
    store: Arc<dyn ObjectStore>,
    args: TransformerArgs,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let subscription = stream.subscribe(CONSUMER).await?;
    let mut pipeline = Pipeline {
        store,
        subscription,
        limits: args.limits(),
        shards: HashMap::new(),
    };
    let mut backoff = Backoff::default();
    tracing::info!(buffer_bytes = pipeline.limits.max_bytes, buffer_interval = ?pipeline.limits.max_age, "transformer started");
    loop {
        let polled = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            polled = pipeline.subscription.poll(POLL_RECORDS, pipeline.wait()) => polled,
        };
        match polled {
            Ok(records) => {
                backoff.reset();
                for record in records {
                    pipeline.take(record).await;
                }
            }
            Err(e) => {
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
    tracing::info!("transformer stopped; open batches delivered");
    Ok(())
}

/// The transformer's state: one buffer per shard it reads.
struct Pipeline {
    store: Arc<dyn ObjectStore>,
    subscription: Box<dyn Subscription>,
    limits: BatchLimits,
    shards: HashMap<String, Shard>,
}

struct Shard {
    batcher: Batcher<Processed>,
    /// Records up to here were delivered by a previous reader whose
    /// checkpoint did not land; they are skipped, not delivered again.
    delivered_through: Option<String>,
}

impl Pipeline {
    /// How long the next poll may wait: until the earliest batch is due.
    fn wait(&self) -> Duration {
        let next_due = self
            .shards
            .values()
            .filter_map(|s| s.batcher.deadline())
            .min();
        next_due.map_or(IDLE_POLL, |due| {
            due.saturating_duration_since(Instant::now()).min(IDLE_POLL)
        })
    }

    async fn take(&mut self, record: StreamRecord) {
        if !self.shards.contains_key(&record.shard_id) {
            let delivered_through = deliver::recover(
                self.store.as_ref(),
                self.subscription.as_mut(),
                &record.shard_id,
            )
            .await;
            let shard = Shard {
                batcher: Batcher::new(self.limits),
                delivered_through,
            };
            self.shards.insert(record.shard_id.clone(), shard);
        }
        let shard = self
            .shards
            .get_mut(&record.shard_id)
            .expect("inserted above");
        if let Some(through) = &shard.delivered_through {
            if compare_sequences(&record.sequence, through).is_le() {
                return;
            }
            shard.delivered_through = None;
        }
        let shard_id = record.shard_id.clone();
        let processed = Processed::from_record(record);
        let size = processed.size();
        if let Some(batch) = shard.batcher.push(processed, size) {
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

    async fn flush_all(&mut self) {
        let open: Vec<(String, Vec<Processed>)> = self
            .shards
            .iter_mut()
            .map(|(id, shard)| (id.clone(), shard.batcher.take()))
            .filter(|(_, batch)| !batch.is_empty())
            .collect();
        for (shard, batch) in open {
            self.deliver(&shard, batch).await;
        }
    }

    async fn deliver(&mut self, shard: &str, batch: Vec<Processed>) {
        let outcome = deliver::deliver(
            self.store.as_ref(),
            self.subscription.as_mut(),
            shard,
            batch,
        )
        .await;
        if outcome == deliver::Outcome::ShardLost {
            // Its new owner re-reads it from the last checkpoint.
            tracing::info!(
                shard,
                "shard taken over by another transformer; dropping its buffer"
            );
            self.shards.remove(shard);
        }
    }
}
