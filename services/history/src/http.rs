//! `GET /history/class-{N}.gz`: the published class file, as stored.

use alleycat_core::ClassId;
use alleycat_core::history::class_file_key;
use alleycat_storage::ObjectStore;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use std::sync::Arc;
use tower_http::cors::{Any, CorsLayer};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Where class files are published.
    pub store: Arc<dyn ObjectStore>,
}

/// The history routes; any origin may GET them (frontends download class
/// files from their own origin).
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/history/{file}", get(class_file))
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods([Method::GET, Method::HEAD]),
        )
        .with_state(state)
}

/// Errors of the history API, each a JSON body; internals are logged only.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Not a class file name.
    #[error("no such file {0:?}: class files are class-1.gz to class-6.gz")]
    NoSuchFile(String),
    /// The class exists but nobody has raced it yet.
    #[error("class {0} has no history yet")]
    NoHistoryYet(ClassId),
    /// The store failed.
    #[error("the history store is unavailable, retry later")]
    Store(#[source] alleycat_storage::StoreError),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::NoSuchFile(_) | AppError::NoHistoryYet(_) => StatusCode::NOT_FOUND,
            AppError::Store(e) => {
                tracing::error!(error = %e, "reading a class file failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        alleycat_runtime::error_response(status, self.to_string())
    }
}

async fn class_file(
    State(state): State<AppState>,
    Path(file): Path<String>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let class = parse_file_name(&file).ok_or_else(|| AppError::NoSuchFile(file.clone()))?;
    let object = state
        .store
        .get(&class_file_key(class))
        .await
        .map_err(AppError::Store)?
        .ok_or(AppError::NoHistoryYet(class))?;
    let etag = HeaderValue::from_str(&format!("\"{}\"", object.etag.0.trim_matches('"'))).ok();
    if let (Some(etag), Some(seen)) = (&etag, headers.get(header::IF_NONE_MATCH))
        && seen == etag
    {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, etag.clone())]).into_response());
    }
    let mut response = (
        [
            // The bytes are a gzip *file*, not a gzip-encoded JSON response:
            // no Content-Encoding, so clients get exactly what was published.
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/gzip"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        object.body,
    )
        .into_response();
    if let Some(etag) = etag {
        response.headers_mut().insert(header::ETAG, etag);
    }
    Ok(response)
}

fn parse_file_name(file: &str) -> Option<ClassId> {
    let digits = file.strip_prefix("class-")?.strip_suffix(".gz")?;
    if digits.len() != 1 {
        return None;
    }
    ClassId::new(digits.parse().ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_class_file_names_map_to_classes() {
        assert_eq!(parse_file_name("class-1.gz"), Some(ClassId(1)));
        assert_eq!(parse_file_name("class-6.gz"), Some(ClassId(6)));
        for bad in [
            "class-0.gz",
            "class-7.gz",
            "class-01.gz",
            "class-1",
            "class-1.json",
            "x-1.gz",
            "class-+1.gz",
        ] {
            assert_eq!(parse_file_name(bad), None, "{bad}");
        }
    }
}
