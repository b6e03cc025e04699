//! The all-in-one Alleycat backend: every service in one process behind one
//! HTTP listener (on the embedded backends by default), and the `alleycat`
//! command line that runs it or any one service alone.
//!
//! ```text
//! bikes --HTTP/WS--> ingest --> stream --> transformer --> delivery store
//!                                 |                            |
//!                                 +--> rankings --WS--> viewers |
//!                                                              v
//! frontends <--GET /history/class-N.gz-- history store <-- history merge
//! ```

pub mod allocator;
pub mod cli;

use alleycat_history::HistoryArgs;
use alleycat_ingest::IngestArgs;
use alleycat_rankings::RankingsArgs;
use alleycat_runtime::{Process, ServerArgs, Service, ServiceArgs};
use alleycat_storage::StorageArgs;
use alleycat_transformer::TransformerArgs;
use tokio::net::TcpListener;

/// Settings of the all-in-one process. Every default is clap's: tests and
/// benchmarks parse this too (`Config::parse_from`) and override only what
/// they need.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "alleycat")]
pub struct Config {
    /// Listening address and shutdown timeout.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where the data lives.
    #[command(flatten)]
    pub storage: StorageArgs,
    /// Telemetry ingest.
    #[command(flatten)]
    pub ingest: IngestArgs,
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

/// Runs every service on `listener` until `shutdown` resolves, then stops
/// them in dependency order: stop taking telemetry (and close viewers),
/// deliver what the transformer holds, merge that last delivery, store the
/// last results, exit.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let process = Process::on(listener, &config.server)?;
    run_process(process, config, shutdown).await
}

async fn run_process(
    process: Process,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let context = process.context();
    let storage = &config.storage;
    // In stopping order: each stage hands its last work to the next.
    let services: Vec<Service> = vec![
        config.ingest.service(context, storage).await?,
        config.transformer.service(context, storage).await?,
        config.history.service(context, storage).await?,
        config.rankings.service(context, storage).await?,
    ];
    process.run(services, shutdown).await
}
