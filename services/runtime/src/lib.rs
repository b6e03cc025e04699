//! What every Alleycat service process shares: typed settings, tracing,
//! the health check, and serving HTTP with graceful shutdown.

use axum::{Json, Router, routing::get};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Where a service listens, and how long it may take to shut down.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address the HTTP server binds to.
    #[arg(long, env = "ALLEYCAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Longest a graceful shutdown may take (flushing open batches) before
    /// the process exits anyway, in milliseconds. Nothing acknowledged is
    /// lost either way: unflushed records are still on the stream.
    #[arg(long, env = "ALLEYCAT_SHUTDOWN_TIMEOUT_MS", default_value = "10000", value_parser = parse_millis)]
    pub shutdown_timeout: Duration,
}

pub use alleycat_core::parse_millis;

/// Logs to stderr, filtered by `ALLEYCAT_LOG` (or `RUST_LOG`), `info` by default.
pub fn init_tracing() {
    let filter = std::env::var("ALLEYCAT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A token cancelled when `shutdown` resolves, for fanning one shutdown
/// signal out to every task of a service.
pub fn cancel_on(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        cancel.cancel();
    });
    token
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

/// `GET /healthz`: 200 once the service is serving (it is only mounted then).
pub fn health_routes() -> Router {
    Router::new().route("/healthz", get(|| async { Json(Health { status: "ok" }) }))
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then stops
/// accepting and lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

/// Serves `router` until `shutdown` is cancelled, then stops the service's
/// background `task` (cancelling `stop_task`) and waits for it to finish its
/// work (flushing, storing), at most `timeout`.
pub async fn serve_then_stop(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
    task: (
        &str,
        tokio::task::JoinHandle<anyhow::Result<()>>,
        CancellationToken,
    ),
    timeout: Duration,
) -> anyhow::Result<()> {
    let (what, handle, stop_task) = task;
    let served = serve(listener, router, shutdown).await;
    stop_task.cancel();
    if let Some(joined) = with_timeout(what, timeout, handle).await {
        joined??;
    }
    served
}

/// An error answer: `{"error": message}` with `status`.
pub fn error_response(status: axum::http::StatusCode, message: String) -> axum::response::Response {
    #[derive(Serialize)]
    struct ErrorBody {
        error: String,
    }
    axum::response::IntoResponse::into_response((status, Json(ErrorBody { error: message })))
}

/// Awaits `task`, giving up after `timeout` with a warning.
pub async fn with_timeout<T>(
    what: &str,
    timeout: Duration,
    task: impl Future<Output = T>,
) -> Option<T> {
    match tokio::time::timeout(timeout, task).await {
        Ok(value) => Some(value),
        Err(_) => {
            tracing::warn!(what, ?timeout, "shutdown timed out");
            None
        }
    }
}
