//! The history service: merges every delivery object into the all-time
//! per-second personal bests of each class it touches, publishes them as
//! `class-<N>.gz`, and serves those files at `GET /history/class-{N}.gz`.

mod http;
mod merger;

pub use http::{AppError, AppState, app};
pub use merger::{MergeReport, Merger};

use alleycat_runtime::{ServerArgs, parse_millis};
use alleycat_storage::StorageArgs;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Merge settings.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// How often the delivery store is checked for new objects, in milliseconds.
    #[arg(long, env = "ALLEYCAT_HISTORY_POLL_MS", default_value = "500", value_parser = parse_millis)]
    pub poll_interval: Duration,

    /// How far before the previous check each check lists again, in
    /// milliseconds: covers clock skew between processes and objects whose
    /// write was still in flight during the previous check.
    #[arg(long, env = "ALLEYCAT_HISTORY_LISTING_GRACE_MS", default_value = "60000", value_parser = parse_millis)]
    pub listing_grace: Duration,

    /// Gzip level of published class files (0-9).
    #[arg(long, env = "ALLEYCAT_HISTORY_GZIP_LEVEL", default_value = "6", value_parser = clap::value_parser!(u32).range(0..=9))]
    pub gzip_level: u32,
}

/// Settings of a standalone history process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Listening address and shutdown timeout.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where the delivery and history stores are.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Merge settings.
    #[command(flatten)]
    pub history: HistoryArgs,
}

/// Runs a standalone history process until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let delivery = config.storage.open_delivery_store().await?;
    let history = config.storage.open_history_store().await?;
    let merger = Merger::load(delivery, history.clone(), &config.history).await?;
    let token = alleycat_runtime::cancel_on(shutdown);
    let stop = CancellationToken::new();
    let merging = tokio::spawn(run_merger(
        merger,
        config.history.poll_interval,
        stop.clone(),
    ));
    let router = app(AppState { store: history }).merge(alleycat_runtime::health_routes());
    let task = ("history merge", merging, stop);
    alleycat_runtime::serve_then_stop(
        listener,
        router,
        token,
        task,
        config.server.shutdown_timeout,
    )
    .await
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
