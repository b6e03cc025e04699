//! The rankings service: live "Here now" and "All time" standings pushed
//! over WebSocket, race results and all-time class leaderboards.
//!
//! Every rankings process reads the whole stream itself (with checkpoints of
//! its own) and serves its own viewers, so viewers scale out by adding
//! processes; results and leaderboards are shared documents that every
//! process updates with conditional writes.

pub mod all_time;
pub mod board_cache;
mod engine;
mod extract;
mod http;
mod metrics;
mod original;
mod page;
mod pending;
pub mod period;
pub mod push;
pub mod race;
pub mod results;
pub mod store;
pub mod viewers;

pub use http::{AppError, AppState, app};

use alleycat_runtime::{Context, Service, ServiceArgs, Task, parse_millis, parse_positive_millis};
use alleycat_storage::config::StreamKind;
use alleycat_storage::{DisqualificationList, ObjectStore, StorageArgs, Stream};
use anyhow::Context as _;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Rankings settings.
#[derive(Debug, Clone, clap::Args)]
pub struct RankingsArgs {
    /// Least time between two pushes of the same race, in milliseconds. A
    /// record waits up to this long for its first push, so 200 keeps the
    /// ranking p99 within 250 ms (README, "Benchmarks and measurements").
    #[arg(long = "rankings-push-ms", env = "ALLEYCAT_RANKINGS_PUSH_MS", default_value = "200", value_parser = parse_positive_millis)]
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
    #[arg(long = "rankings-replay-ms", env = "ALLEYCAT_RANKINGS_REPLAY_MS", default_value = "330000", value_parser = parse_positive_millis)]
    pub replay: Duration,

    /// How often the class files are checked for new versions, in
    /// milliseconds. All-time bests move slowly, and indexing a class file
    /// costs about 0.1 s of CPU a million bests, so not every new version
    /// is needed.
    #[arg(long = "rankings-history-reload-ms", env = "ALLEYCAT_RANKINGS_HISTORY_RELOAD_MS", default_value = "10000", value_parser = parse_positive_millis)]
    pub history_reload: Duration,

    /// Most live races kept (all classes). Race ids come from clients: past
    /// this, the races with the fewest records (the least recently updated
    /// first) are evicted, counted and logged. A real race has a record per
    /// racer per second, so made-up one-record races go first.
    #[arg(
        long = "rankings-max-live-races",
        env = "ALLEYCAT_RANKINGS_MAX_LIVE_RACES",
        default_value = "1000"
    )]
    pub max_live_races: NonZeroUsize,

    /// Most races whose results wait to be written. Past this, the races
    /// with the fewest results (the oldest first) are dropped, counted and
    /// logged; the heaviest races are written first, so a flood of
    /// made-up one-result races does not delay a real race's results.
    #[arg(
        long = "rankings-max-pending-races",
        env = "ALLEYCAT_RANKINGS_MAX_PENDING_RACES",
        default_value = "1000"
    )]
    pub max_pending_races: NonZeroUsize,

    /// How long a race's results are listed (`/v1/races`) and served
    /// (`/v1/races/{raceId}`) after it finished, in milliseconds (e.g.
    /// 2592000000 for 30 days); 0 keeps them for ever. Leaderboards keep
    /// every racer's best whatever its age.
    #[arg(long = "rankings-results-retention-ms", env = "ALLEYCAT_RANKINGS_RESULTS_RETENTION_MS", default_value = "0", value_parser = parse_millis)]
    pub results_retention: Duration,

    /// This process's name among the rankings processes reading a Kinesis
    /// stream (each keeps its own checkpoints); defaults to host and port.
    #[arg(long = "rankings-instance", env = "ALLEYCAT_RANKINGS_INSTANCE")]
    pub instance: Option<String>,
}

impl RankingsArgs {
    /// How long race results are kept, `None` for ever.
    #[must_use]
    pub fn results_retention(&self) -> Option<Duration> {
        (!self.results_retention.is_zero()).then_some(self.results_retention)
    }
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
    context: &Context,
    disqualifications: Arc<DisqualificationList>,
) -> anyhow::Result<Started> {
    let mut loader = engine::AllTimeLoader::new(Arc::clone(&history_store));
    // A history store that does not answer now must not stop the process:
    // start without all-time ranks; the reload loop retries (and says so).
    let all_time: std::collections::HashMap<_, _> = match loader.changed().await {
        Ok(changed) => changed.into_iter().collect(),
        Err(e) => {
            let reason = format!("reading class files failed: {e:#}");
            tracing::warn!(%reason, "starting without all-time ranks");
            context.readiness.set(engine::CLASS_FILES_PART, Err(reason));
            Default::default()
        }
    };
    let class_files = Arc::new(all_time::ClassFiles::default());
    for (class, loaded) in &all_time {
        class_files.set(*class, Arc::clone(loaded));
    }
    let viewers = Arc::new(viewers::Viewers::default());
    let subscription = stream.subscribe(consumer).await?;
    let results = store::ResultsStore::new(history_store).with_retention(args.results_retention());
    let engine_state =
        engine::Engine::new(Arc::clone(&viewers), all_time, args, context.sensor_limits);
    let pending = Arc::new(pending::Pending::new(args.max_pending_races.get()));
    let parts = engine::Parts {
        subscription,
        engine: engine_state,
        loader,
        history_reload: args.history_reload,
        results: results.clone(),
        pending,
        readiness: context.readiness.clone(),
        class_files: Arc::clone(&class_files),
    };
    let engine = tokio::spawn(engine::run(parts, stop));
    Ok(Started {
        state: AppState {
            viewers,
            results,
            shutdown: context.closing.clone(),
            ws_idle_timeout: context.ws_idle_timeout,
            leaderboards: Arc::default(),
            disqualifications,
            class_files,
            clock: period::system_clock(),
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

impl ServiceArgs for RankingsArgs {
    /// Loads the class files, reads the stream into live races until
    /// stopped (then stores the last results), and serves viewers, results
    /// and leaderboards.
    async fn service(&self, context: &Context, storage: &StorageArgs) -> anyhow::Result<Service> {
        let consumer = match storage.stream_kind {
            // One process per embedded stream: a fixed name, so a restart resumes.
            StreamKind::Embedded => "rankings".to_owned(),
            StreamKind::Kinesis => consumer_name(self, context.port),
        };
        // Every series shows from the start, at zero.
        std::sync::LazyLock::force(&metrics::METRICS);
        let stop = CancellationToken::new();
        let disqualifications = storage.disqualifications().await?;
        alleycat_runtime::probe_disqualifications(&context.readiness, &disqualifications);
        let started = start(
            storage.open_stream().await?,
            storage.open_history_store().await?,
            &consumer,
            self,
            stop.clone(),
            context,
            disqualifications,
        )
        .await
        .context("starting the rankings")?;
        let engine = Task::from_handle("rankings results", stop, started.engine);
        Ok(Service::new("rankings", app(started.state)).with_task(engine))
    }
}
