//! `alleycat`: with no subcommand, the whole backend in one process on the
//! embedded backends; with one, a single service as its own process.

use clap::{Parser, Subcommand};

/// glibc's allocator spent about 15% of the server's CPU under load
/// (profiled at 10,000 racers); mimalloc's thread-local free lists cost a
/// fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::net::SocketAddr;
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(
    name = "alleycat",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    service: Option<Service>,
    #[command(flatten)]
    all_in_one: alleycat::Config,
}

#[derive(Subcommand)]
enum Service {
    /// Only the ingest service (POST /v1/telemetry, /v1/telemetry/ws).
    Ingest(alleycat_ingest::Config),
    /// Only the transformer (stream -> delivery objects).
    Transformer(alleycat_transformer::Config),
    /// Only the history service (delivery objects -> class-N.gz).
    History(alleycat_history::Config),
    /// Only the rankings service (live standings, results, leaderboards).
    Rankings(alleycat_rankings::Config),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    alleycat_runtime::init_tracing();
    let cli = Cli::parse();
    let shutdown = alleycat_runtime::shutdown_signal();
    let result = match cli.service {
        None => {
            let config = cli.all_in_one;
            alleycat::run(bind(config.server.listen).await?, config, shutdown).await
        }
        Some(Service::Ingest(config)) => {
            alleycat_ingest::run(bind(config.server.listen).await?, config, shutdown).await
        }
        Some(Service::Transformer(config)) => {
            alleycat_transformer::run(bind(config.server.listen).await?, config, shutdown).await
        }
        Some(Service::Rankings(config)) => {
            alleycat_rankings::run(bind(config.server.listen).await?, config, shutdown).await
        }
        Some(Service::History(config)) => {
            alleycat_history::run(bind(config.server.listen).await?, config, shutdown).await
        }
    };
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "exiting");
    }
    result
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))
}
