//! The ingest service: `POST /v1/telemetry` and `GET /v1/telemetry/ws`.
//!
//! Every request is parsed and validated as a whole before anything is put
//! on the stream, and answered with success only once all of its records are
//! durably on the stream.

mod error;
mod http;
mod ws;

pub use error::AppError;

use alleycat_core::Telemetry;
use alleycat_runtime::ServerArgs;
use alleycat_storage::{PutRecord, StorageArgs, Stream};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use bytes::Bytes;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

/// Largest request body (or WebSocket message) accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Settings of a standalone ingest process.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Listening address and shutdown timeout.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Where the stream is.
    #[command(flatten)]
    pub storage: StorageArgs,
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Where accepted records go.
    pub stream: Arc<dyn Stream>,
    /// Cancelled at shutdown, so open WebSockets close and let the server stop.
    pub shutdown: CancellationToken,
}

/// The ingest routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/telemetry", post(http::post_telemetry))
        .route("/v1/telemetry/ws", get(ws::upgrade))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        // Bikes in a browser post from their own origin.
        .layer(CorsLayer::permissive())
        .with_state(state)
}

/// Runs a standalone ingest process on `listener` until `shutdown` resolves.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let stream = config.storage.open_stream().await?;
    let token = alleycat_runtime::cancel_on(shutdown);
    let state = AppState {
        stream,
        shutdown: token.clone(),
    };
    let router = app(state).merge(alleycat_runtime::health_routes());
    alleycat_runtime::serve(listener, router, token).await
}

/// Puts validated records on the stream, partitioned by racer so each
/// racer's seconds stay in order.
async fn put(stream: &dyn Stream, records: &[Telemetry]) -> Result<usize, AppError> {
    let puts = records
        .iter()
        .map(|t| PutRecord {
            partition_key: t.racer_id.to_string(),
            data: Bytes::from(serde_json::to_vec(t).expect("telemetry always serializes")),
        })
        .collect();
    stream.put_records(puts).await?;
    Ok(records.len())
}
