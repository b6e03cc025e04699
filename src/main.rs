//! `alleycat`: with no subcommand, the whole backend in one process on the
//! embedded backends; with one, a single service as its own process.

use clap::Parser as _;

#[global_allocator]
static ALLOCATOR: alleycat::allocator::Allocator = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    alleycat_runtime::init_tracing()?;
    alleycat::allocator::prefer_small_pages();
    let result = alleycat::cli::Cli::parse().run().await;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "exiting");
    }
    result
}
