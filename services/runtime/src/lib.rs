//! What every Alleycat service process shares: typed settings, tracing,
//! metrics ([`metrics`]), the health check, and assembling services into a
//! process that serves HTTP and shuts down in order ([`Process`]).

mod body_deadline;
mod errors;
mod health;
mod limits;
pub mod memory;
pub mod metrics;
mod process;
mod server;
mod shutdown;
pub mod websocket;

pub use body_deadline::{ShuttingDown, is_shutdown_cut};
pub use health::Readiness;
pub use limits::SensorLimitArgs;
pub use process::{Context, Process, Service, ServiceArgs, Task};
pub use shutdown::shutdown_signal;

/// Makes `/readyz` report the disqualification list (part
/// `disqualifications`) as not ready while it cannot be read: the process
/// then acts on its last copy, which may miss changes.
pub fn probe_disqualifications(
    readiness: &Readiness,
    list: &std::sync::Arc<alleycat_storage::DisqualificationList>,
) {
    let list = std::sync::Arc::clone(list);
    readiness.probe("disqualifications", move || {
        let error = list.error();
        async move { error.map_or(Ok(()), Err) }
    });
}

use axum::Json;
use serde::Serialize;
use std::net::SocketAddr;
use std::time::Duration;

/// Where a service listens, how long it may take to shut down, and what
/// the process's services accept.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    /// Address the HTTP server binds to.
    #[arg(long, env = "ALLEYCAT_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Longest a graceful shutdown may take (flushing open batches) before
    /// the process exits anyway, in milliseconds. Nothing acknowledged is
    /// lost either way: unflushed records are still on the stream.
    #[arg(long = "shutdown-timeout-ms", env = "ALLEYCAT_SHUTDOWN_TIMEOUT_MS", default_value = "10000", value_parser = parse_positive_millis)]
    pub shutdown_timeout: Duration,

    /// Longest a client may take to send a request's headers, in
    /// milliseconds; also how long an idle keep-alive connection is kept.
    #[arg(long = "header-timeout-ms", env = "ALLEYCAT_HEADER_TIMEOUT_MS", default_value = "10000", value_parser = parse_positive_millis)]
    pub header_timeout: Duration,

    /// Longest a client may take to send a request's body, in milliseconds.
    #[arg(long = "body-timeout-ms", env = "ALLEYCAT_BODY_TIMEOUT_MS", default_value = "30000", value_parser = parse_positive_millis)]
    pub body_timeout: Duration,

    /// Longest a WebSocket may stay silent, in milliseconds: a bike that
    /// sends nothing for this long, or a viewer that answers no ping for
    /// this long, is closed (its place freed for others).
    #[arg(long = "ws-idle-timeout-ms", env = "ALLEYCAT_WS_IDLE_TIMEOUT_MS", default_value = "60000", value_parser = parse_positive_millis)]
    pub ws_idle_timeout: Duration,

    /// Most connections (WebSockets included) open at once; past it a new
    /// connection is answered 503 at once. Lowered to what the process's
    /// file limit allows.
    #[arg(
        long = "max-connections",
        env = "ALLEYCAT_MAX_CONNECTIONS",
        default_value = "50000"
    )]
    pub max_connections: std::num::NonZeroUsize,

    /// How high telemetry's sensors may read: every service of the process
    /// that checks records (ingest, transformer, rankings) uses these.
    #[command(flatten)]
    pub sensor_limits: SensorLimitArgs,
}

pub use alleycat_core::{parse_millis, parse_positive_millis};

/// How log lines are written (`ALLEYCAT_LOG_FORMAT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: one line per event, colored on a terminal.
    Text,
    /// For log stores: one JSON object per line, the event's fields at its
    /// top level beside `timestamp`, `level`, `target` and its spans.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = anyhow::Error;

    fn from_str(value: &str) -> anyhow::Result<LogFormat> {
        match value {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => anyhow::bail!("ALLEYCAT_LOG_FORMAT must be `text` or `json`, got {other:?}"),
        }
    }
}

/// Logs to stderr, filtered by `ALLEYCAT_LOG` (or `RUST_LOG`), `info` by
/// default, as `ALLEYCAT_LOG_FORMAT` says (`text` by default, or `json`).
/// Read before the command line, so that parsing it can log.
///
/// # Errors
/// An unknown `ALLEYCAT_LOG_FORMAT`.
pub fn init_tracing() -> anyhow::Result<()> {
    let format = match std::env::var("ALLEYCAT_LOG_FORMAT") {
        Ok(value) => value.parse()?,
        Err(std::env::VarError::NotPresent) => LogFormat::Text,
        Err(std::env::VarError::NotUnicode(value)) => {
            anyhow::bail!("ALLEYCAT_LOG_FORMAT must be `text` or `json`, got {value:?}")
        }
    };
    let filter = std::env::var("ALLEYCAT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_owned());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).init(),
    }
    Ok(())
}

/// An error answer: `{"error": message}` with `status`.
pub fn error_response(status: axum::http::StatusCode, message: String) -> axum::response::Response {
    #[derive(Serialize)]
    struct ErrorBody {
        error: String,
    }
    axum::response::IntoResponse::into_response((status, Json(ErrorBody { error: message })))
}

/// Settings `T` at their defaults (clap's, the one place they are written),
/// whatever `ALLEYCAT_*` variables the environment holds: for tests, which
/// then set only what they need.
#[must_use]
pub fn defaults<T: clap::Args + clap::FromArgMatches>() -> T {
    let command = T::augment_args(clap::Command::new("defaults")).mut_args(|arg| arg.env(None));
    let matches = command.get_matches_from(["defaults"]);
    T::from_arg_matches(&matches).expect("the defaults parse")
}
