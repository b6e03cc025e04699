//! `GET /history/class-{N}.gz`: the published class file, as stored.

use alleycat_core::ClassId;
use alleycat_core::history::class_file_key;
use alleycat_core::telemetry::CLASS_COUNT;
use alleycat_storage::ObjectStore;
use axum::Router;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
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
    #[error(
        "no such file {file:?}: class files are {first} to {last}",
        file = .0,
        first = class_file_key(ClassId(1)),
        last = class_file_key(ClassId(CLASS_COUNT))
    )]
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

/// The class of a `/history/{file}` path: only the exact name of a class
/// file (`class-1.gz`, not `class-01.gz`) is one.
struct ClassFile(ClassId);

impl<S: Send + Sync> FromRequestParts<S> for ClassFile {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        let file = match Path::<String>::from_request_parts(parts, state).await {
            Ok(Path(file)) => file,
            // Not even UTF-8: no class file has that name either.
            Err(_) => parts
                .uri
                .path()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_owned(),
        };
        parse_file_name(&file)
            .map(ClassFile)
            .ok_or(AppError::NoSuchFile(file))
    }
}

async fn class_file(
    State(state): State<AppState>,
    ClassFile(class): ClassFile,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let object = state
        .store
        .get(&class_file_key(class))
        .await
        .map_err(AppError::Store)?
        .ok_or(AppError::NoHistoryYet(class))?;
    let etag = HeaderValue::from_str(&format!("\"{}\"", object.etag.0.trim_matches('"'))).ok();
    if let (Some(etag), Some(seen)) = (&etag, headers.get(header::IF_NONE_MATCH))
        && matches_any(seen, etag)
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

/// The class whose published key is exactly `file`.
fn parse_file_name(file: &str) -> Option<ClassId> {
    ClassId::all().find(|&class| class_file_key(class) == file)
}

/// Whether an `If-None-Match` list names `etag` (RFC 9110 13.1.2: `*`, or
/// any entry, weak or strong, compared weakly).
fn matches_any(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let (Ok(list), Ok(etag)) = (if_none_match.to_str(), etag.to_str()) else {
        return false;
    };
    list.split(',')
        .map(str::trim)
        .any(|entry| entry == "*" || entry.strip_prefix("W/").unwrap_or(entry) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::history::ClassHistory;
    use alleycat_core::{RacerId, Second};
    use alleycat_storage::Precondition;
    use alleycat_storage::object_store::fs::FsStore;
    use axum::body::{Body, Bytes};
    use axum::http::Request;
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use tempfile::TempDir;
    use tower::ServiceExt;

    /// The route over a history store in a temporary directory.
    struct Fixture {
        store: Arc<dyn ObjectStore>,
        dir: TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(FsStore::open(dir.path()).unwrap());
            Fixture { store, dir }
        }

        async fn get(&self, request: Request<Body>) -> (StatusCode, HeaderMap, Bytes) {
            let state = AppState {
                store: Arc::clone(&self.store),
            };
            let response = app(state).oneshot(request).await.unwrap();
            let (parts, body) = response.into_parts();
            (
                parts.status,
                parts.headers,
                body.collect().await.unwrap().to_bytes(),
            )
        }

        /// Status and JSON body of an error answer to `GET uri`.
        async fn error(&self, uri: &str) -> (StatusCode, Value) {
            let request = Request::get(uri).body(Body::empty()).unwrap();
            let (status, headers, body) = self.get(request).await;
            assert_eq!(headers[header::CONTENT_TYPE], "application/json", "{uri}");
            (status, serde_json::from_slice(&body).unwrap())
        }
    }

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

    #[tokio::test]
    async fn names_other_than_class_files_are_404() {
        let fixture = Fixture::new();
        for (uri, file) in [
            ("/history/class-7.gz", "class-7.gz"),
            ("/history/class-01.gz", "class-01.gz"),
            ("/history/passwd", "passwd"),
            // Not UTF-8 once decoded.
            ("/history/%FF", "%FF"),
        ] {
            let message =
                format!("no such file {file:?}: class files are class-1.gz to class-6.gz");
            assert_eq!(
                fixture.error(uri).await,
                (StatusCode::NOT_FOUND, json!({ "error": message })),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn a_class_without_history_is_404() {
        assert_eq!(
            Fixture::new().error("/history/class-3.gz").await,
            (
                StatusCode::NOT_FOUND,
                json!({ "error": "class 3 has no history yet" })
            )
        );
    }

    #[tokio::test]
    async fn a_failing_store_is_503_without_its_details() {
        let fixture = Fixture::new();
        // A directory where the file should be: reading it fails.
        let key = class_file_key(ClassId(4));
        std::fs::create_dir(fixture.dir.path().join(key)).unwrap();
        assert_eq!(
            fixture.error("/history/class-4.gz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({ "error": "the history store is unavailable, retry later" })
            )
        );
    }

    #[tokio::test]
    async fn a_published_class_file_is_served_as_stored_with_its_version() {
        let fixture = Fixture::new();
        let mut history = ClassHistory::default();
        history.merge(Second(3), RacerId(101), 165.3838);
        let published = Bytes::from(history.to_gzip(6));
        fixture
            .store
            .put_if(
                &class_file_key(ClassId(2)),
                published.clone(),
                "application/gzip",
                Precondition::IfAbsent,
            )
            .await
            .unwrap();
        let request = Request::get("/history/class-2.gz")
            .header(header::ORIGIN, "https://racer.example")
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = fixture.get(request).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers[header::CONTENT_TYPE], "application/gzip");
        assert_eq!(headers.get(header::CONTENT_ENCODING), None);
        assert_eq!(headers[header::CACHE_CONTROL], "no-cache");
        assert_eq!(headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(body, published);

        let etag = headers[header::ETAG].clone();
        let request = Request::get("/history/class-2.gz")
            .header(header::IF_NONE_MATCH, etag.clone())
            .body(Body::empty())
            .unwrap();
        let (status, headers, body) = fixture.get(request).await;
        assert_eq!(status, StatusCode::NOT_MODIFIED);
        assert_eq!(headers[header::ETAG], etag);
        assert!(body.is_empty());
        // A list, a weak tag, or `*` naming it are the same.
        let tag = etag.to_str().unwrap();
        for seen in [
            format!("\"other\", {tag}"),
            format!("W/{tag}"),
            "*".to_owned(),
        ] {
            let request = Request::get("/history/class-2.gz")
                .header(header::IF_NONE_MATCH, seen.as_str())
                .body(Body::empty())
                .unwrap();
            assert_eq!(
                fixture.get(request).await.0,
                StatusCode::NOT_MODIFIED,
                "{seen}"
            );
        }
        let request = Request::get("/history/class-2.gz")
            .header(header::IF_NONE_MATCH, "\"other\"")
            .body(Body::empty())
            .unwrap();
        assert_eq!(fixture.get(request).await.0, StatusCode::OK);
    }
}
