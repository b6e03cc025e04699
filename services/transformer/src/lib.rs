//! The transformer (what Kinesis Data Firehose and its transform Lambda did):
//! reads the stream, adds `output` to each record, buffers newline-delimited
//! JSON per shard, and delivers gzipped objects to the delivery store when
//! the buffer reaches its size or age. Records that fail processing go to a
//! `processing-failed/` object instead.
//!
//! A shard's checkpoint moves only after its objects are durably written, so
//! a crash re-delivers (never loses) what was in flight; the history merge
//! is idempotent, so a re-delivered record changes nothing.

mod batcher;
mod deliver;
mod pipeline;

use crate::batcher::BatchLimits;
use alleycat_runtime::{Context, Service, ServiceArgs, Task, parse_millis, parse_positive_millis};
use alleycat_storage::StorageArgs;
use axum::Router;
use std::num::NonZeroUsize;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use deliver::Processed;
pub use pipeline::{InProcess, run_pipeline, run_pipeline_reporting};

/// The transformer's consumer name on the stream.
pub const CONSUMER: &str = "transformer";

/// Buffering settings.
#[derive(Debug, Clone, clap::Args)]
pub struct TransformerArgs {
    /// Deliver a shard's buffer once it holds this many bytes of NDJSON
    /// (at most 256 MiB, the largest object history reads). Each object
    /// costs a write, a checkpoint and a merge with publication of its
    /// classes: 4 MiB rather than 1 took 9% off the server's CPU a record
    /// at 10,000 racers, for class files about 1.5 s later (README,
    /// "Delivery objects of 4 MiB"). Firehose's default is 5 MiB.
    #[arg(long, env = "ALLEYCAT_BUFFER_BYTES", default_value = "4194304", value_parser = parse_buffer_bytes)]
    pub buffer_bytes: NonZeroUsize,

    /// While the transformer reads a backlog (records it takes arrived
    /// more than `BEHIND_AFTER_MS` before it polled them), deliver a
    /// shard's buffer at this many bytes instead (the larger of this and
    /// `ALLEYCAT_BUFFER_BYTES`; at most 256 MiB): fewer, larger objects
    /// catch up faster. Set it to `ALLEYCAT_BUFFER_BYTES` to keep one size.
    #[arg(long, env = "ALLEYCAT_BUFFER_CATCH_UP_BYTES", default_value = "8388608", value_parser = parse_buffer_bytes)]
    pub buffer_catch_up_bytes: NonZeroUsize,

    /// Deliver a shard's buffer once its oldest record has waited this long,
    /// in milliseconds.
    #[arg(long = "buffer-interval-ms", env = "ALLEYCAT_BUFFER_INTERVAL_MS", default_value = "5000", value_parser = parse_positive_millis)]
    pub buffer_interval: Duration,

    /// Deliver every open buffer once the stream has paused: brought
    /// nothing new for this long, in milliseconds, or sooner at high rates
    /// (four usual gaps between polls that brought records, at least
    /// 100 ms). A race ended: its last records need not wait out the
    /// interval. 0 delivers by size and interval only.
    #[arg(long = "buffer-idle-ms", env = "ALLEYCAT_BUFFER_IDLE_MS", default_value = "500", value_parser = parse_millis)]
    pub buffer_idle: Duration,
}

impl TransformerArgs {
    pub(crate) fn limits(&self) -> BatchLimits {
        BatchLimits {
            max_bytes: self.buffer_bytes,
            catch_up_bytes: self.buffer_catch_up_bytes.max(self.buffer_bytes),
            max_age: self.buffer_interval,
        }
    }

    /// How long the stream must stay quiet for open buffers to go early.
    pub(crate) fn quiet(&self) -> Option<Duration> {
        (!self.buffer_idle.is_zero()).then_some(self.buffer_idle)
    }
}

/// Parses a buffer size: a number of bytes from 1 to
/// [`MAX_OBJECT_BYTES`](alleycat_core::delivery::MAX_OBJECT_BYTES).
fn parse_buffer_bytes(text: &str) -> Result<NonZeroUsize, String> {
    let max = alleycat_core::delivery::MAX_OBJECT_BYTES;
    match text.parse::<NonZeroUsize>() {
        Ok(bytes) if bytes.get() <= max => Ok(bytes),
        Ok(_) => Err(format!(
            "{text} bytes is more than {max}, the largest delivery object history reads"
        )),
        Err(_) => Err(format!("{text:?} is not a number of bytes from 1 to {max}")),
    }
}

impl ServiceArgs for TransformerArgs {
    /// Reads the stream into the delivery store until stopped, then delivers
    /// what it holds.
    async fn service(&self, context: &Context, storage: &StorageArgs) -> anyhow::Result<Service> {
        let stream = storage.open_stream().await?;
        let delivery = storage.open_delivery_store().await?;
        let stop = CancellationToken::new();
        let pipeline = run_pipeline_reporting(
            stream,
            delivery,
            self.clone(),
            context.sensor_limits,
            stop.clone(),
            context.readiness.clone(),
            InProcess {
                freshness: storage.freshness(),
                handoff: storage.handoff(),
            },
        );
        let pipeline = Task::spawn("transformer flush", stop, pipeline);
        Ok(Service::new("transformer", Router::new()).with_task(pipeline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_sizes_are_bounded_by_what_history_reads() {
        assert_eq!(parse_buffer_bytes("1048576").unwrap().get(), 1 << 20);
        assert_eq!(parse_buffer_bytes("268435456").unwrap().get(), 256 << 20);
        for bad in ["0", "-1", "1MiB", "", "268435457"] {
            let error = parse_buffer_bytes(bad).unwrap_err();
            assert!(error.contains("bytes"), "{bad}: {error}");
        }
    }
}
