//! The ingest routes' inputs, read and checked before a handler runs: each
//! extractor rejects with the service's JSON [`AppError`].

use crate::{AppError, AppState, MAX_BODY_BYTES};
use alleycat_core::Telemetry;
use alleycat_core::validate::BodyFormat;
use axum::body::Body;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use http_body_util::Limited;

/// Every record of a `POST /v1/telemetry` body, validated: one JSON object,
/// a JSON array, or NDJSON (by `Content-Type`), of at most
/// [`MAX_BODY_BYTES`], checked against the service's sensor limits.
pub(crate) struct Records(pub(crate) Vec<Telemetry>);

impl FromRequest<AppState> for Records {
    type Rejection = AppError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, AppError> {
        // Refused before reading: a body of the wrong type or in an
        // encoding nobody decodes is not read at all.
        let format = body_format(request.headers())?;
        if let Some(encoding) = request.headers().get(header::CONTENT_ENCODING)
            && encoding.as_bytes() != b"identity"
        {
            let encoding = String::from_utf8_lossy(encoding.as_bytes()).into_owned();
            return Err(AppError::UnsupportedEncoding(encoding));
        }
        // A client that waits for `100 Continue` is refused before it sends
        // a body announced too large. (One that sends at once is read up to
        // the limit: refused on its header, it would see a broken pipe
        // while writing, not the answer.)
        let headers = request.headers();
        let announced = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        let waits = headers
            .get(header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        if waits && announced.is_some_and(|length| length > MAX_BODY_BYTES) {
            return Err(AppError::BodyTooLarge);
        }
        // The limit is enforced while reading, so an oversized body is cut
        // off at the limit rather than buffered whole.
        let request = request.map(|body| Body::new(Limited::new(body, MAX_BODY_BYTES)));
        let body = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    AppError::BodyTooLarge
                } else if alleycat_runtime::is_shutdown_cut(&rejection) {
                    AppError::ShuttingDown(alleycat_runtime::ShuttingDown)
                } else {
                    AppError::BadBody(rejection)
                }
            })?;
        Ok(Records(state.sensor_limits.parse_batch(&body, format)?))
    }
}

/// The body's format, from its `Content-Type` (JSON when there is none).
fn body_format(headers: &HeaderMap) -> Result<BodyFormat, AppError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(BodyFormat::Json);
    };
    let text = value.to_str().unwrap_or_default();
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(BodyFormat::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => {
            Ok(BodyFormat::NdJson)
        }
        _ => Err(AppError::UnsupportedMediaType(text.to_owned())),
    }
}

/// A WebSocket upgrade; anything else is refused with a JSON 400.
pub(crate) struct Upgrade(pub(crate) WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        Ok(Upgrade(
            WebSocketUpgrade::from_request_parts(parts, state).await?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_type(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn picks_the_format_from_the_content_type() {
        assert_eq!(body_format(&HeaderMap::new()).unwrap(), BodyFormat::Json);
        assert_eq!(
            body_format(&with_type("application/json; charset=utf-8")).unwrap(),
            BodyFormat::Json
        );
        assert_eq!(
            body_format(&with_type("Application/X-NDJSON")).unwrap(),
            BodyFormat::NdJson
        );
        assert!(matches!(
            body_format(&with_type("text/csv")),
            Err(AppError::UnsupportedMediaType(t)) if t == "text/csv"
        ));
    }
}
