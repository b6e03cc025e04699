//! The history service: merges every delivery object into the all-time
//! per-second personal bests of each class it touches, publishes them as
//! `class-<N>.gz`, and serves those files at `GET /history/class-{N}.gz`.

pub mod class_file;
mod http;
mod merger;

pub use http::{AppError, AppState, app};
pub use merger::{MergeReport, Merger};

use alleycat_runtime::{Context, Service, ServiceArgs, Task, parse_millis};
use alleycat_storage::StorageArgs;
use anyhow::Context as _;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Merge settings.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// How often the delivery store is checked for new objects, in milliseconds.
    #[arg(long = "history-poll-ms", env = "ALLEYCAT_HISTORY_POLL_MS", default_value = "500", value_parser = parse_millis)]
    pub poll_interval: Duration,

    /// How far before the previous check each check lists again, in
    /// milliseconds: covers clock skew between processes and objects whose
    /// write was still in flight during the previous check.
    #[arg(long = "history-listing-grace-ms", env = "ALLEYCAT_HISTORY_LISTING_GRACE_MS", default_value = "60000", value_parser = parse_millis)]
    pub listing_grace: Duration,

    /// Gzip level of published class files (0-9).
    #[arg(long = "history-gzip-level", env = "ALLEYCAT_HISTORY_GZIP_LEVEL", default_value = "6", value_parser = clap::value_parser!(u32).range(0..=9))]
    pub gzip_level: u32,
}

impl ServiceArgs for HistoryArgs {
    /// Loads the published class files, then merges new delivery objects
    /// until stopped, and serves the class files.
    async fn service(&self, _: &Context, storage: &StorageArgs) -> anyhow::Result<Service> {
        let delivery = storage.open_delivery_store().await?;
        let history = storage.open_history_store().await?;
        let merger = Merger::load(delivery, history.clone(), self)
            .await
            .context("loading the class histories")?;
        let stop = CancellationToken::new();
        let merging = run_merger(merger, self.poll_interval, stop.clone());
        let merging = Task::spawn("history merge", stop, merging);
        Ok(Service::new("history", app(AppState { store: history })).with_task(merging))
    }
}

/// Merges new delivery objects every `interval` until `stop` is cancelled,
/// then merges once more (to pick up the transformer's final delivery).
pub async fn run_merger(
    mut merger: Merger,
    interval: Duration,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = ticker.tick() => false,
        };
        if let Err(e) = merger.merge_new().await {
            // Nothing was marked merged, so the next round retries it all.
            tracing::warn!(
                error = format!("{e:#}"),
                "merging delivery objects failed; will retry"
            );
        }
        if stopping {
            return Ok(());
        }
    }
}
