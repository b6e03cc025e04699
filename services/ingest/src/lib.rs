//! The ingest service: `POST /v1/telemetry` and `GET /v1/telemetry/ws`.
//!
//! Every request is parsed and validated as a whole before anything is put
//! on the stream, and answered with success only once all of its records are
//! durably on the stream. On the way, every batch passes the gate (`gate`):
//! the bike's token when `ALLEYCAT_AUTH_SECRET` is set ([`auth`]), its
//! records' racer, and the per-racer rate limit ([`rate_limit`]).

pub mod auth;
mod error;
mod extract;
mod gate;
mod http;
mod metrics;
pub mod rate_limit;
mod ws;

pub use auth::{AuthArgs, AuthSecrets, TokenArgs};
pub use error::AppError;
pub use gate::Gate;
pub use rate_limit::RateLimiter;

use alleycat_core::Telemetry;
use alleycat_core::validate::{SensorLimits, Validated};
use alleycat_runtime::{Context, Service, ServiceArgs};
use alleycat_storage::{PutRecord, StorageArgs, Stream};
use axum::Router;
use axum::routing::{get, post};
use bytes::Bytes;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowHeaders, CorsLayer};

/// Largest request body (or WebSocket message) accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// Ingest settings.
#[derive(Debug, Clone, clap::Args)]
pub struct IngestArgs {
    /// Bike authentication.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// Records per second each racer may send (its bucket refills at this
    /// rate), at least 0.001; past it, 429 with Retry-After.
    #[arg(long, env = "ALLEYCAT_RACER_RATE", default_value = "2", value_parser = rate_limit::parse_rate)]
    pub racer_rate: f64,
    /// Most records a racer may send at once (its bucket's size): room for a
    /// bike that reconnects and sends what it buffered.
    #[arg(long, env = "ALLEYCAT_RACER_BURST", default_value = "30")]
    pub racer_burst: std::num::NonZeroU32,
}

impl ServiceArgs for IngestArgs {
    /// Opens the stream; ingest has no background work. `/readyz` asks the
    /// stream whether it takes records (part `stream`).
    async fn service(&self, context: &Context, storage: &StorageArgs) -> anyhow::Result<Service> {
        let secrets = self.auth.secrets()?;
        match &secrets {
            Some(secrets) => {
                tracing::info!(secrets = secrets.len(), "bike authentication on");
            }
            None => tracing::warn!(
                "ALLEYCAT_AUTH_SECRET is not set: ingest is open, anyone can post telemetry under any racerId"
            ),
        }
        // Every series shows from the start, at zero.
        std::sync::LazyLock::force(&metrics::METRICS);
        let stream = storage.open_stream().await?;
        probe_stream(context, &stream);
        let limiter = RateLimiter::new(self.racer_rate, self.racer_burst);
        // A list that cannot be read is logged by its poller; ingest goes
        // on with its last copy rather than refusing every bike.
        let disqualifications = storage.disqualifications().await?;
        let state = AppState {
            stream,
            shutdown: context.closing.clone(),
            ws_idle_timeout: context.ws_idle_timeout,
            gate: Arc::new(Gate::new(secrets, limiter).with_disqualifications(disqualifications)),
            sensor_limits: context.sensor_limits,
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
    /// Authentication and the rate limit, checked before storing.
    pub gate: Arc<Gate>,
    /// How high a record's cadence and resistance may be.
    pub sensor_limits: alleycat_core::validate::SensorLimits,
}

/// The ingest routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/telemetry", post(http::post_telemetry))
        .route("/v1/telemetry/ws", get(ws::upgrade))
        // Bikes in a browser post from their own origin, with their token:
        // `Access-Control-Allow-Headers: *` does not cover Authorization,
        // so the headers asked for are named.
        .layer(CorsLayer::permissive().allow_headers(AllowHeaders::mirror_request()))
        .with_state(state)
}

/// Puts validated records on the stream, partitioned by racer so each
/// racer's seconds stay in order.
/// Each is handed along with its bytes, as validated under `limits`: a
/// reader in this process (the embedded stream's) need not parse it again.
async fn put(
    stream: &dyn Stream,
    records: Vec<Telemetry>,
    limits: SensorLimits,
) -> Result<usize, AppError> {
    let count = records.len();
    let puts = records
        .into_iter()
        .map(|telemetry| PutRecord {
            partition_key: telemetry.racer_id.to_string(),
            data: Bytes::from(serde_json::to_vec(&telemetry).expect("telemetry always serializes")),
            validated: Some(Arc::new(Validated { telemetry, limits })),
        })
        .collect();
    stream.put_records(puts).await?;
    Ok(count)
}
