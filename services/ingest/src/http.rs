//! `POST /v1/telemetry`.

use crate::{AppError, AppState};
use alleycat_core::validate::{BodyFormat, parse_batch};
use axum::Json;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode, header};
use bytes::Bytes;
use serde::Serialize;

/// The success body (`frontend-contract/ingest-accepted.schema.json`).
#[derive(Debug, Serialize)]
pub(crate) struct Accepted {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    pub(crate) accepted: usize,
}

/// Takes one object, an array of up to 500, or NDJSON; 202 once all are on the stream.
pub(crate) async fn post_telemetry(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Accepted>), AppError> {
    let format = body_format(&headers)?;
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            AppError::BodyTooLarge
        } else {
            AppError::BadBody(rejection.body_text())
        }
    })?;
    let records = parse_batch(&body, format)?;
    let accepted = crate::put(state.stream.as_ref(), &records).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            kind: None,
            accepted,
        }),
    ))
}

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
