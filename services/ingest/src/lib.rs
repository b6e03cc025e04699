//! The ingest service: `POST /v1/telemetry` and `GET /v1/telemetry/ws`.
//!
//! Every request is parsed and validated as a whole before anything is put
//! on the stream, and answered with success only once all of its records are
//! durably on the stream.

mod error;
mod extract;
mod http;
mod ws;

pub use error::AppError;

use alleycat_core::Telemetry;
use alleycat_runtime::{Context, Service, ServiceArgs};
use alleycat_storage::{PutRecord, StorageArgs, Stream};
use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

/// Largest request body (or WebSocket message) accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Ingest settings (none of its own yet beyond the storage it shares).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IngestArgs {}

impl ServiceArgs for IngestArgs {
    /// Opens the stream; ingest has no background work. `/readyz` asks the
    /// stream whether it takes records (part `stream`).
    async fn service(&self, context: &Context, storage: &StorageArgs) -> anyhow::Result<Service> {
        let stream = storage.open_stream().await?;
        probe_stream(context, &stream);
        let state = AppState {
            stream,
            shutdown: context.closing.clone(),
            ws_idle_timeout: context.ws_idle_timeout,
        };
        Ok(Service::new("ingest", app(state)))
    }
}

/// Makes `/readyz` report the stream (part `stream`) as not ready while it
/// cannot take records (a failed write not yet healed, its file deleted).
fn probe_stream(context: &Context, stream: &Arc<dyn Stream>) {
    let stream = Arc::clone(stream);
    context.readiness.probe("stream", move || {
        let stream = Arc::clone(&stream);
        async move { stream.ready().await.map_err(|e| e.to_string()) }
    });
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Where accepted records go.
    pub stream: Arc<dyn Stream>,
    /// Cancelled at shutdown, so open WebSockets close and let the server stop.
    pub shutdown: CancellationToken,
    /// A bike's WebSocket that sends nothing for this long is closed.
    pub ws_idle_timeout: std::time::Duration,
}

/// The ingest routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/telemetry", post(http::post_telemetry))
        .route("/v1/telemetry/ws", get(ws::upgrade))
        // Bikes in a browser post from their own origin.
        .layer(CorsLayer::permissive())
        .with_state(state)
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
