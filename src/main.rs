//! `alleycat`: with no subcommand, the whole backend in one process on the
//! embedded backends; with one, a single service as its own process.

use clap::Parser as _;

/// glibc's allocator spent about 15% of the server's CPU under load
/// (profiled at 10,000 racers); mimalloc's thread-local free lists cost a
/// fraction of that.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    alleycat_runtime::init_tracing()?;
    let result = alleycat::cli::Cli::parse().run().await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "exiting");
    }
    result
}
