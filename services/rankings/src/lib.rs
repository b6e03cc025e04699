//! The rankings service: live "Here now" and "All time" standings pushed
//! over WebSocket, race results and all-time class leaderboards.
//!
//! Every rankings process reads the whole stream itself (with checkpoints of
//! its own) and serves its own viewers, so viewers scale out by adding
//! processes; results and leaderboards are shared documents that every
//! process updates with conditional writes.

pub mod all_time;
mod engine;
mod http;
pub mod push;
pub mod race;
pub mod results;
pub mod store;
pub mod viewers;

pub use http::{AppError, AppState, app};

use alleycat_runtime::{ServerArgs, parse_millis};
use alleycat_storage::{ObjectStore, StorageArgs, Stream};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Rankings settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RankingsArgs {
    /// Least time between two pushes of the same race, in milliseconds.
    #[arg(long = "rankings-push", env = "ALLEYCAT_RANKINGS_PUSH_MS", default_value = "250", value_parser = parse_millis)]
    pub push_interval: Duration,

    /// Racers listed in each push (plus the viewer's own racer and neighbours).
    #[arg(
        long = "rankings-top",
        env = "ALLEYCAT_RANKINGS_TOP",
        default_value = "50"
    )]
    pub top: NonZeroUsize,

    /// How much of the stream a restarted process reads again to rebuild
    /// the races still running, in milliseconds (a race lasts 300 s).
    #[arg(long = "rankings-replay", env = "ALLEYCAT_RANKINGS_REPLAY_MS", default_value = "330000", value_parser = parse_millis)]
    pub replay: Duration,

    /// How often the class files are checked for new versions, in
    /// milliseconds. All-time bests move slowly, and decoding a large class
    /// file costs about 0.1 s of CPU, so not every new version is needed.
    #[arg(long = "rankings-history-reload", env = "ALLEYCAT_RANKINGS_HISTORY_RELOAD_MS", default_value = "10000", value_parser = parse_millis)]
    pub history_reload: Duration,

    /// This process's name among the rankings processes reading a Kinesis
    /// stream (each keeps its own checkpoints); defaults to host and port.
    #[arg(long = "rankings-instance", env = "ALLEYCAT_RANKINGS_INSTANCE")]
    pub instance: Option<String>,
}

/// Settings of a standalone rankings process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Listening address and shutdown timeout.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where the stream and the history store are.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Rankings settings.
    #[command(flatten)]
    pub rankings: RankingsArgs,
}

/// A started rankings engine: its routes' state and its task.
pub struct Started {
    /// For [`app`].
    pub state: AppState,
    /// Ends after `stop` once the last results are written.
    pub engine: JoinHandle<anyhow::Result<()>>,
}

/// Loads the class files, subscribes to the stream as `consumer` and starts
/// the engine; it runs until `stop` is cancelled.
pub async fn start(
    stream: Arc<dyn Stream>,
    history_store: Arc<dyn ObjectStore>,
    consumer: &str,
    args: &RankingsArgs,
    stop: CancellationToken,
    shutdown_viewers: CancellationToken,
) -> anyhow::Result<Started> {
    let mut loader = engine::AllTimeLoader::new(Arc::clone(&history_store));
    let all_time = loader.changed().await?.into_iter().collect();
    let viewers = Arc::new(viewers::Viewers::default());
    let subscription = stream.subscribe(consumer).await?;
    let results = store::ResultsStore::new(history_store);
    let engine_state = engine::Engine::new(Arc::clone(&viewers), all_time, args);
    let engine = tokio::spawn(engine::run(
        subscription,
        engine_state,
        loader,
        args.history_reload,
        results.clone(),
        stop,
    ));
    Ok(Started {
        state: AppState {
            viewers,
            results,
            shutdown: shutdown_viewers,
            leaderboards: Arc::default(),
        },
        engine,
    })
}

/// The consumer name of a rankings process: one per process, stable across
/// its restarts.
#[must_use]
pub fn consumer_name(args: &RankingsArgs, listen_port: u16) -> String {
    let instance = args.instance.clone().unwrap_or_else(|| {
        let host =
            std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_else(|_| "host".into());
        format!("{}-{listen_port}", host.trim())
    });
    format!("rankings-{instance}")
}

/// Runs a standalone rankings process until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stream = config.storage.open_stream().await?;
    let history = config.storage.open_history_store().await?;
    let consumer = consumer_name(&config.rankings, listener.local_addr()?.port());
    let token = alleycat_runtime::cancel_on(shutdown);
    let stop_engine = CancellationToken::new();
    let started = start(
        stream,
        history,
        &consumer,
        &config.rankings,
        stop_engine.clone(),
        token.clone(),
    )
    .await?;
    let router = app(started.state).merge(alleycat_runtime::health_routes());
    let task = ("rankings results", started.engine, stop_engine);
    alleycat_runtime::serve_then_stop(
        listener,
        router,
        token,
        task,
        config.server.shutdown_timeout,
    )
    .await
}
