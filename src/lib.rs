//! The all-in-one Alleycat backend: every service in one process behind one
//! HTTP listener (on the embedded backends by default).
//!
//! ```text
//! bikes --HTTP/WS--> ingest --> stream --> transformer --> delivery store
//!                                 |                            |
//!                                 +--> rankings --WS--> viewers |
//!                                                              v
//! frontends <--GET /history/class-N.gz-- history store <-- history merge
//! ```

use alleycat_history::{HistoryArgs, Merger};
use alleycat_rankings::RankingsArgs;
use alleycat_runtime::ServerArgs;
use alleycat_storage::StorageArgs;
use alleycat_storage::config::StreamKind;
use alleycat_transformer::TransformerArgs;
use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Settings of the all-in-one process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Listening address and shutdown timeout.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where the data lives.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Delivery buffering.
    #[command(flatten)]
    pub transformer: TransformerArgs,
    /// History merging.
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Live rankings.
    #[command(flatten)]
    pub rankings: RankingsArgs,
}

/// Runs every service until `shutdown` resolves, then stops them in
/// dependency order: stop taking telemetry (and close viewers), deliver what
/// the transformer holds, merge that last delivery, store the last results,
/// exit.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stream = config.storage.open_stream().await?;
    let delivery = config.storage.open_delivery_store().await?;
    let history_store = config.storage.open_history_store().await?;
    let merger = Merger::load(delivery.clone(), history_store.clone(), &config.history)
        .await
        .context("loading the class histories")?;
    let rankings_consumer = match config.storage.stream_kind {
        // One process per embedded stream: a fixed name, so a restart resumes.
        StreamKind::Embedded => "rankings".to_owned(),
        StreamKind::Kinesis => {
            alleycat_rankings::consumer_name(&config.rankings, listener.local_addr()?.port())
        }
    };

    let stop_http = CancellationToken::new();
    let stop_transformer = CancellationToken::new();
    let stop_history = CancellationToken::new();
    let stop_rankings = CancellationToken::new();
    let rankings = alleycat_rankings::start(
        stream.clone(),
        history_store.clone(),
        &rankings_consumer,
        &config.rankings,
        stop_rankings.clone(),
        stop_http.clone(),
    )
    .await
    .context("starting the rankings")?;
    let rankings_state = rankings.state;
    let mut rankings = rankings.engine;
    let mut transformer = tokio::spawn(alleycat_transformer::run_pipeline(
        stream.clone(),
        delivery,
        config.transformer.clone(),
        stop_transformer.clone(),
    ));
    let mut history = tokio::spawn(alleycat_history::run_merger(
        merger,
        config.history.poll_interval,
        stop_history.clone(),
    ));

    let router = alleycat_ingest::app(alleycat_ingest::AppState {
        stream,
        shutdown: stop_http.clone(),
    })
    .merge(alleycat_history::app(alleycat_history::AppState {
        store: history_store,
    }))
    .merge(alleycat_rankings::app(rankings_state))
    .merge(alleycat_runtime::health_routes());
    let mut http = tokio::spawn(alleycat_runtime::serve(listener, router, stop_http.clone()));

    // A background service that stops on its own is a failure: shut the
    // rest down rather than keep accepting records nobody delivers.
    let failure = tokio::select! {
        () = shutdown => None,
        r = &mut transformer => Some(("transformer", flatten(r))),
        r = &mut history => Some(("history", flatten(r))),
        r = &mut rankings => Some(("rankings", flatten(r))),
        r = &mut http => Some(("http", flatten(r))),
    };
    if let Some((service, result)) = &failure {
        tracing::error!(service, result = ?result, "service stopped unexpectedly; shutting down");
    }

    let timeout = config.server.shutdown_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    let budget = || deadline.saturating_duration_since(tokio::time::Instant::now());
    stop_http.cancel();
    if !http.is_finished() {
        alleycat_runtime::with_timeout("http", budget(), &mut http).await;
    }
    stop_transformer.cancel();
    if !transformer.is_finished() {
        alleycat_runtime::with_timeout("transformer flush", budget(), &mut transformer).await;
    }
    stop_history.cancel();
    if !history.is_finished() {
        alleycat_runtime::with_timeout("history merge", budget(), &mut history).await;
    }
    stop_rankings.cancel();
    if !rankings.is_finished() {
        alleycat_runtime::with_timeout("rankings results", budget(), &mut rankings).await;
    }
    match failure {
        Some((service, result)) => Err(result
            .err()
            .unwrap_or_else(|| anyhow::anyhow!("{service} stopped"))),
        None => Ok(()),
    }
}

fn flatten(joined: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    joined.context("service task panicked")?
}
