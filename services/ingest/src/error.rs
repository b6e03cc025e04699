//! The ingest API's errors and how they are answered.

use crate::auth::AuthError;
use crate::rate_limit::RateLimitError;
use alleycat_core::RacerId;
use alleycat_core::validate::{BatchError, RecordError};
use alleycat_storage::StreamError;
use axum::Json;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::http::{HeaderValue, StatusCode, header};
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
    /// The server began shutting down while the body was arriving.
    #[error(transparent)]
    ShuttingDown(#[from] alleycat_runtime::ShuttingDown),
    /// The stream did not take the records; none of them count as accepted.
    #[error("the stream is unavailable; nothing from this request was stored, retry later")]
    Unavailable(#[from] StreamError),
    /// No valid bearer token, when ingest requires one.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// Records of another racer than the token's.
    #[error(
        "{} of {total} records are not of racer {subject}, whose token this is; nothing was accepted",
        .records.len()
    )]
    WrongRacer {
        /// The token's racer.
        subject: RacerId,
        /// Records in the batch.
        total: usize,
        /// One per record of another racer.
        records: Vec<RecordError>,
    },
    /// Records of a disqualified race or racer.
    #[error(
        "{} of {total} records are of a disqualified race or racer; nothing was accepted",
        .records.len()
    )]
    Disqualified {
        /// Records in the batch.
        total: usize,
        /// One per disqualified record, with the reason.
        records: Vec<RecordError>,
    },
    /// A racer of the batch is over its rate.
    #[error(transparent)]
    RateLimited(#[from] RateLimitError),
}

/// The JSON error body (`frontend-contract/ingest-error.schema.json`).
#[derive(Debug, Serialize)]
pub(crate) struct ErrorBody<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    pub(crate) error: String,
    pub(crate) records: &'a [RecordError],
    /// Seconds to wait before sending the batch again, when waiting helps
    /// (rate limited): a WebSocket frame has no `Retry-After` header.
    #[serde(rename = "retryAfter", skip_serializing_if = "Option::is_none")]
    pub(crate) retry_after: Option<u64>,
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
            AppError::Unavailable(_)
            | AppError::ShuttingDown(_)
            | AppError::RateLimited(RateLimitError::Full { .. }) => StatusCode::SERVICE_UNAVAILABLE,
            AppError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            AppError::WrongRacer { .. } | AppError::Disqualified { .. } => StatusCode::FORBIDDEN,
            AppError::RateLimited(RateLimitError::Exceeded { .. }) => StatusCode::TOO_MANY_REQUESTS,
            AppError::RateLimited(RateLimitError::LargerThanBurst { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
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
                AppError::WrongRacer { records, .. } | AppError::Disqualified { records, .. } => {
                    records
                }
                _ => &[],
            },
            retry_after: match self {
                AppError::RateLimited(e) => e.retry_after(),
                _ => None,
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
        crate::metrics::METRICS.refused(&self);
        let mut response = (self.status(), Json(self.body(None))).into_response();
        let headers = response.headers_mut();
        let retry_after = match &self {
            AppError::Unavailable(_) | AppError::ShuttingDown(_) => Some(RETRY_AFTER_SECONDS),
            AppError::RateLimited(e) => e.retry_after(),
            _ => None,
        };
        if let Some(seconds) = retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let AppError::Unauthorized(e) = &self {
            // RFC 6750 section 3: no error code when no token was sent.
            let challenge = match e {
                AuthError::Missing => "Bearer",
                _ => "Bearer error=\"invalid_token\"",
            };
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
