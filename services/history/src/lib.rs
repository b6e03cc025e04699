//! The history service: merges every delivery object into the all-time
//! per-second personal bests of each class it touches, publishes them as
//! `class-<N>.gz`, and serves those files at `GET /history/class-{N}.gz`.

mod admin;
pub mod class_file;
mod http;
pub mod import;
mod merger;

pub use admin::{AdminError, AdminToken};
pub use http::{AppError, AppState, app};
pub use merger::{MergeReport, Merger};

use alleycat_core::backoff::Backoff;
use alleycat_runtime::{
    Context, Readiness, Service, ServiceArgs, Task, parse_millis, parse_positive_millis,
};
use alleycat_storage::{ObjectStore, StorageArgs};
use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Merge settings.
#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// How often the delivery store is checked for new objects, in milliseconds.
    #[arg(long = "history-poll-ms", env = "ALLEYCAT_HISTORY_POLL_MS", default_value = "500", value_parser = parse_positive_millis)]
    pub poll_interval: Duration,

    /// How far before the previous check each check lists again, in
    /// milliseconds: covers clock skew between processes and objects whose
    /// write was still in flight during the previous check.
    #[arg(long = "history-listing-grace-ms", env = "ALLEYCAT_HISTORY_LISTING_GRACE_MS", default_value = "60000", value_parser = parse_millis)]
    pub listing_grace: Duration,

    /// Gzip level of published class files (0-9).
    #[arg(long = "history-gzip-level", env = "ALLEYCAT_HISTORY_GZIP_LEVEL", default_value = "6", value_parser = clap::value_parser!(u32).range(0..=9))]
    pub gzip_level: u32,

    /// Pacing of publications: after re-encoding class files took `t` of
    /// CPU, the next publication waits until this many times `t` has
    /// passed, so that publishing takes at most 1/(1+N) of a core however
    /// large the files (records merged meanwhile wait in memory, their
    /// delivery objects pending). 0: publish after every check.
    #[arg(
        long = "history-publish-pace",
        env = "ALLEYCAT_HISTORY_PUBLISH_PACE",
        default_value = "3"
    )]
    pub publish_pace: u32,

    /// Most racers a class file holds: a record of a new racer past it is
    /// not merged (counted and logged); racers already in it still improve
    /// their bests. Bounds what made-up racerIds can add to the files every
    /// frontend downloads.
    #[arg(long = "history-max-racers", env = "ALLEYCAT_HISTORY_MAX_RACERS", default_value = "100000", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_racers: u64,

    /// Bearer token of the operators' API (`/v1/admin/disqualifications`),
    /// at least 16 characters; unset, that API does not exist (404).
    #[arg(long, env = "ALLEYCAT_ADMIN_TOKEN", hide_env_values = true, value_parser = AdminToken::unchecked)]
    pub admin_token: Option<AdminToken>,
}

impl ServiceArgs for HistoryArgs {
    /// Serves the class files, and in the background loads the published
    /// class files, then merges new delivery objects until stopped. Neither
    /// a store that does not answer nor a class file that cannot be read
    /// stops the process: `/readyz` says what does not work.
    async fn service(&self, context: &Context, storage: &StorageArgs) -> anyhow::Result<Service> {
        if let Some(token) = &self.admin_token {
            token
                .check()
                .map_err(|e| anyhow::anyhow!("ALLEYCAT_ADMIN_TOKEN {e}"))?;
        }
        let delivery = storage.open_delivery_store().await?;
        let history = storage.open_history_store().await?;
        let list = storage.disqualifications().await?;
        alleycat_runtime::probe_disqualifications(&context.readiness, &list);
        let stop = CancellationToken::new();
        // Counts from now until the first check completes.
        let freshness = storage.freshness();
        freshness.history_started(metrics::gauge!(merger::FRESHNESS));
        let handoff = storage.handoff();
        let merging = {
            let (args, history, readiness, stop, list) = (
                self.clone(),
                history.clone(),
                context.readiness.clone(),
                stop.clone(),
                list.clone(),
            );
            async move {
                let merged =
                    match load_merger(delivery, history, &args, readiness.clone(), &stop).await {
                        Some(merger) => {
                            let merger = merger
                                .with_disqualifications(list)
                                .with_freshness(Arc::clone(&freshness))
                                .with_handoff(Arc::clone(&handoff));
                            run_merger(merger, args.poll_interval, stop, readiness).await
                        }
                        None => Ok(()),
                    };
                freshness.history_stopped();
                handoff.close();
                merged
            }
        };
        let merging = Task::spawn("history merge", stop, merging);
        let mut router = app(AppState { store: history });
        if let Some(token) = &self.admin_token {
            router = router.merge(admin::routes(admin::AdminState {
                token: token.clone(),
                list,
            }));
        }
        Ok(Service::new("history", router).with_task(merging))
    }
}

/// The readiness part of the merge as a whole.
const PART: &str = "history";

/// [`Merger::load_reporting`], tried again with backoff until it works;
/// `None` when stopped first.
async fn load_merger(
    delivery: Arc<dyn ObjectStore>,
    history: Arc<dyn ObjectStore>,
    args: &HistoryArgs,
    readiness: Readiness,
    stop: &CancellationToken,
) -> Option<Merger> {
    let mut backoff = Backoff::default();
    loop {
        match Merger::load_reporting(delivery.clone(), history.clone(), args, readiness.clone())
            .await
            .context("loading the class histories")
        {
            Ok(merger) => return Some(merger),
            Err(e) => {
                let error = format!("{e:#}");
                let pause = backoff.next_delay();
                tracing::warn!(%error, ?pause, "loading the class histories failed; retrying");
                readiness.set(PART, Err(error));
                tokio::select! {
                    () = stop.cancelled() => return None,
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Merges new delivery objects every `interval`, as soon as this
/// process's transformer wrote one (in the all-in-one, a record need not
/// wait for the next poll), and as soon as the pacer lets a deferred
/// publication go (its records need not wait for the next poll either),
/// until `stop` is cancelled,
/// then merges once more (to pick up the transformer's final delivery).
/// Reports to `readiness` (part `history`) whether the last check worked.
pub async fn run_merger(
    mut merger: Merger,
    interval: Duration,
    stop: CancellationToken,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let stopping = tokio::select! {
            () = stop.cancelled() => true,
            _ = ticker.tick() => false,
            () = merger.delivery_written() => {
                ticker.reset();
                false
            }
            () = merger.deferred_publication() => {
                ticker.reset();
                false
            }
        };
        if stopping {
            // Everything merged is published before the process ends.
            merger.stop_pacing();
        }
        match merger.merge_new().await {
            Ok(_) => readiness.set(PART, Ok(())),
            Err(e) => {
                // What failed is still to be done: the next check retries it.
                let error = format!("{e:#}");
                tracing::warn!(%error, "merging delivery objects failed; will retry");
                readiness.set(PART, Err(error));
            }
        }
        if stopping {
            return Ok(());
        }
    }
}
