//! The ingest API's errors and how they are answered.

use alleycat_core::validate::{BatchError, RecordError};
use alleycat_storage::StreamError;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Everything a request can fail with. Each becomes a JSON body naming the
/// problem; internal details are logged, not returned.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The records are not acceptable.
    #[error(transparent)]
    Batch(#[from] BatchError),
    /// The body exceeds [`crate::MAX_BODY_BYTES`].
    #[error("the body exceeds the limit of {} bytes", crate::MAX_BODY_BYTES)]
    BodyTooLarge,
    /// The body could not be read.
    #[error("the body could not be read: {}", .0.body_text())]
    BadBody(BytesRejection),
    /// Neither JSON nor NDJSON.
    #[error("unsupported Content-Type {0:?}: send application/json or application/x-ndjson")]
    UnsupportedMediaType(String),
    /// A `Content-Encoding` ingest does not decode.
    #[error("unsupported Content-Encoding {0:?}: send the body unencoded")]
    UnsupportedEncoding(String),
    /// `GET /v1/telemetry/ws` without a WebSocket upgrade.
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(#[from] WebSocketUpgradeRejection),
    /// A binary WebSocket frame: records come as JSON text.
    #[error("send each message as a JSON text frame")]
    BinaryFrame,
    /// The stream did not take the records; none of them count as accepted.
    #[error("the stream is unavailable; nothing from this request was stored, retry later")]
    Unavailable(#[from] StreamError),
}

/// The JSON error body (`frontend-contract/ingest-error.schema.json`).
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    pub(crate) error: String,
    pub(crate) records: &'a [RecordError],
}

impl AppError {
    /// The HTTP status this error is answered with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Batch(BatchError::Invalid { .. }) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::Batch(BatchError::TooManyRecords(_)) | AppError::BodyTooLarge => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            AppError::Batch(_)
            | AppError::BadBody(_)
            | AppError::NotUpgrade(_)
            | AppError::BinaryFrame => StatusCode::BAD_REQUEST,
            AppError::UnsupportedMediaType(_) | AppError::UnsupportedEncoding(_) => {
                StatusCode::UNSUPPORTED_MEDIA_TYPE
            }
            AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub(crate) fn body(&self, kind: Option<&'static str>) -> ErrorBody<'_> {
        if let AppError::Unavailable(cause) = self {
            tracing::warn!(error = %cause, "refusing records: stream unavailable");
        }
        ErrorBody {
            kind,
            error: self.to_string(),
            records: match self {
                AppError::Batch(e) => e.records(),
                _ => &[],
            },
        }
    }
}

/// Seconds a client is asked to wait before retrying when the stream cannot
/// store (`Retry-After` of a 503): about how long the embedded stream takes
/// to notice that a full disk has room again.
pub(crate) const RETRY_AFTER_SECONDS: u64 = 1;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body(None))).into_response();
        if let AppError::Unavailable(_) = self {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_SECONDS),
            );
        }
        response
    }
}
