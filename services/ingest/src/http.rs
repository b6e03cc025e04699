//! `POST /v1/telemetry`.

use crate::auth::HttpBearer;
use crate::extract::Records;
use crate::{AppError, AppState};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;

/// The success body (`frontend-contract/ingest-accepted.schema.json`).
#[derive(Debug, Serialize)]
pub(crate) struct Accepted {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub(crate) kind: Option<&'static str>,
    pub(crate) accepted: usize,
}

/// Takes one object, an array of up to
/// [`MAX_BATCH_RECORDS`](alleycat_core::validate::MAX_BATCH_RECORDS), or
/// NDJSON; 202 once all are on the stream.
pub(crate) async fn post_telemetry(
    State(state): State<AppState>,
    HttpBearer(bearer): HttpBearer,
    Records(records): Records,
) -> Result<(StatusCode, Json<Accepted>), AppError> {
    let accepted = crate::gate::store(&state, &bearer, records).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Accepted {
            kind: None,
            accepted,
        }),
    ))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::MAX_BODY_BYTES;
    use alleycat_core::validate::MAX_BATCH_RECORDS;
    use alleycat_storage::stream::embedded::EmbeddedStream;
    use axum::body::Body;
    use axum::http::{Request, header};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use std::sync::Arc;
    use std::time::Duration;
    use tempfile::TempDir;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    /// The routes over an embedded stream in a temporary directory.
    struct Fixture {
        state: AppState,
        _dir: TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let stream = EmbeddedStream::open(dir.path()).unwrap();
            let state = AppState {
                stream: Arc::new(stream),
                shutdown: CancellationToken::new(),
                ws_idle_timeout: std::time::Duration::from_secs(60),
                gate: open_gate(),
                sensor_limits: alleycat_core::validate::SensorLimits::DEFAULT,
            };
            Fixture { state, _dir: dir }
        }

        /// Status and JSON body of the answer to `request`.
        async fn send(&self, request: Request<Body>) -> (StatusCode, Value) {
            let response = crate::app(self.state.clone())
                .oneshot(request)
                .await
                .unwrap();
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice(&body).unwrap())
        }

        async fn post(&self, content_type: &str, body: impl Into<Body>) -> (StatusCode, Value) {
            let request = Request::post("/v1/telemetry")
                .header(header::CONTENT_TYPE, content_type)
                .body(body.into())
                .unwrap();
            self.send(request).await
        }

        /// How many records are on the stream.
        async fn stored(&self) -> usize {
            let mut reader = self.state.stream.subscribe("test").await.unwrap();
            let records = reader.poll(usize::MAX, Duration::ZERO).await.unwrap();
            records.len()
        }
    }

    /// No secret, and a rate limit no test here reaches.
    fn open_gate() -> Arc<crate::Gate> {
        let limiter = crate::RateLimiter::new(1e6, std::num::NonZeroU32::new(1_000_000).unwrap());
        Arc::new(crate::Gate::new(None, limiter))
    }

    fn message(racer: u64) -> Value {
        json!({
            "event": "update", "deviceTimestamp": 1_619_185_789_753_u64, "second": 3,
            "raceId": 5_397_285, "name": "Hubert", "racerId": racer, "classId": 1,
            "cadence": 80.25, "resistance": 78.5
        })
    }

    fn refused(error: &str) -> Value {
        json!({ "error": error, "records": [] })
    }

    #[tokio::test]
    async fn takes_an_object_an_array_or_ndjson() {
        let fixture = Fixture::new();
        let one = message(1).to_string();
        let two = json!([message(2), message(3)]).to_string();
        let lines = format!("{}\n\n{}\n", message(4), message(5));
        for (content_type, body, accepted) in [
            ("application/json", one.clone(), 1),
            ("application/json; charset=utf-8", two, 2),
            ("application/x-ndjson", lines, 2),
        ] {
            assert_eq!(
                fixture.post(content_type, body).await,
                (StatusCode::ACCEPTED, json!({ "accepted": accepted })),
                "{content_type}"
            );
        }
        let untyped = Request::post("/v1/telemetry")
            .body(Body::from(one))
            .unwrap();
        assert_eq!(
            fixture.send(untyped).await,
            (StatusCode::ACCEPTED, json!({ "accepted": 1 })),
            "JSON when no Content-Type is given"
        );
        assert_eq!(fixture.stored().await, 6);
    }

    /// Each record goes on the stream as its validated telemetry
    /// serialized, and that telemetry is handed along with the limits it
    /// met: what a reader in this process takes instead of parsing again
    /// must be exactly what parsing the bytes gives.
    #[tokio::test]
    async fn records_are_handed_along_as_validated() {
        let fixture = Fixture::new();
        let body = json!([message(1), message(2)]).to_string();
        assert_eq!(
            fixture.post("application/json", body).await.0,
            StatusCode::ACCEPTED
        );
        let mut reader = fixture.state.stream.subscribe("test").await.unwrap();
        let records = reader.poll(usize::MAX, Duration::ZERO).await.unwrap();
        assert_eq!(records.len(), 2);
        let limits = fixture.state.sensor_limits;
        for (record, racer) in records.iter().zip([1, 2]) {
            let validated = record.validated.as_ref().expect("read from memory");
            assert_eq!(validated.limits, limits);
            assert_eq!(validated.telemetry.racer_id.0, racer);
            assert_eq!(
                limits.parse_record(&record.data).unwrap(),
                validated.telemetry
            );
        }
    }

    #[tokio::test]
    async fn an_unsupported_content_type_is_415() {
        let fixture = Fixture::new();
        assert_eq!(
            fixture.post("text/csv", "a,b").await,
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                refused(
                    r#"unsupported Content-Type "text/csv": send application/json or application/x-ndjson"#
                )
            )
        );
    }

    #[tokio::test]
    async fn an_encoded_body_is_415_and_an_oversize_announced_to_100_continue_is_413_unread() {
        let fixture = Fixture::new();
        let request = Request::post("/v1/telemetry")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_ENCODING, "gzip")
            .body(Body::from(message(1).to_string()))
            .unwrap();
        assert_eq!(
            fixture.send(request).await,
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                refused(r#"unsupported Content-Encoding "gzip": send the body unencoded"#)
            )
        );
        // Announced too large to a client waiting for `100 Continue`:
        // refused on the header, the body never read (this one never ends).
        let never = Body::from_stream(futures_util::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >());
        let request = Request::post("/v1/telemetry")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::CONTENT_LENGTH, (MAX_BODY_BYTES + 1).to_string())
            .header(header::EXPECT, "100-continue")
            .body(never)
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), fixture.send(request))
            .await
            .expect("answered without reading the body");
        assert_eq!(answer.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(fixture.stored().await, 0);
    }

    #[tokio::test]
    async fn too_large_a_body_or_batch_is_413() {
        let fixture = Fixture::new();
        assert_eq!(
            fixture
                .post("application/json", vec![b' '; MAX_BODY_BYTES + 1])
                .await,
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                refused(&format!(
                    "the body exceeds the limit of {MAX_BODY_BYTES} bytes"
                ))
            )
        );
        let (status, _) = fixture
            .post("application/json", vec![b' '; MAX_BODY_BYTES])
            .await;
        assert_ne!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE,
            "the limit itself is allowed"
        );
        let batch = Value::Array(vec![message(1); MAX_BATCH_RECORDS + 1]);
        assert_eq!(
            fixture.post("application/json", batch.to_string()).await,
            (
                StatusCode::PAYLOAD_TOO_LARGE,
                refused(&format!(
                    "a batch holds at most {MAX_BATCH_RECORDS} records, this one has {}",
                    MAX_BATCH_RECORDS + 1
                ))
            )
        );
        assert_eq!(fixture.stored().await, 0);
    }

    #[tokio::test]
    async fn a_body_that_is_not_json_or_holds_nothing_is_400() {
        let fixture = Fixture::new();
        let (status, body) = fixture.post("application/json", r#"{"racerId": "#).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{body}"
        );
        assert_eq!(body["records"], json!([]), "{body}");

        let lines = format!("{}\nnot json\n", message(1));
        let (status, body) = fixture.post("application/x-ndjson", lines).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let problems = body["records"].as_array().unwrap();
        assert_eq!(problems.len(), 1, "{body}");
        assert_eq!(
            (&problems[0]["index"], &problems[0]["field"]),
            (&json!(1), &Value::Null),
            "{body}"
        );

        assert_eq!(
            fixture.post("application/json", "[]").await,
            (
                StatusCode::BAD_REQUEST,
                refused("the body holds no records")
            )
        );
        assert_eq!(fixture.stored().await, 0);
    }

    #[tokio::test]
    async fn invalid_records_are_422_with_every_problem_and_nothing_is_stored() {
        let fixture = Fixture::new();
        let mut bad_class = message(2);
        bad_class["classId"] = json!(9);
        let mut bad_second = message(3);
        bad_second["second"] = json!(0);
        let body = json!([message(1), bad_class, bad_second]).to_string();
        assert_eq!(
            fixture.post("application/json", body).await,
            (
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({
                    "error": "2 of 3 records are invalid; nothing was accepted",
                    "records": [
                        { "index": 1, "field": "classId", "reason": "must be an integer from 1 to 6, got 9" },
                        { "index": 2, "field": "second", "reason": "must be an integer from 1 to 3600, got 0" },
                    ]
                })
            )
        );
        assert_eq!(fixture.stored().await, 0);
    }

    #[tokio::test]
    async fn a_plain_get_of_the_websocket_is_400() {
        let fixture = Fixture::new();
        let request = Request::get("/v1/telemetry/ws")
            .body(Body::empty())
            .unwrap();
        let (status, body) = fixture.send(request).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let error = body["error"].as_str().unwrap();
        assert!(error.starts_with("not a WebSocket upgrade: "), "{body}");
        assert_eq!(body["records"], json!([]));
        assert_eq!(
            body.get("type"),
            None,
            "HTTP error bodies have no frame type"
        );
    }

    /// A stream that cannot store (a full disk). The trait's methods as
    /// `#[async_trait]` declares them.
    pub(crate) struct Refusing;

    type Boxed<'a, T> = std::pin::Pin<
        Box<dyn Future<Output = Result<T, alleycat_storage::StreamError>> + Send + 'a>,
    >;

    impl alleycat_storage::Stream for Refusing {
        fn put_records<'a, 'b>(&'a self, _: Vec<alleycat_storage::PutRecord>) -> Boxed<'b, ()>
        where
            'a: 'b,
        {
            Box::pin(async {
                Err(alleycat_storage::StreamError::Unavailable(
                    "No space left on device".into(),
                ))
            })
        }

        fn subscribe<'a, 'b, 'c>(
            &'a self,
            _: &'b str,
        ) -> Boxed<'c, Box<dyn alleycat_storage::Subscription>>
        where
            'a: 'c,
            'b: 'c,
        {
            Box::pin(async { Err(alleycat_storage::StreamError::Closed) })
        }
    }

    #[tokio::test]
    async fn a_stream_that_cannot_store_is_503_with_retry_after_and_no_internals() {
        let state = AppState {
            stream: Arc::new(Refusing),
            shutdown: CancellationToken::new(),
            ws_idle_timeout: std::time::Duration::from_secs(60),
            gate: open_gate(),
            sensor_limits: alleycat_core::validate::SensorLimits::DEFAULT,
        };
        let request = Request::post("/v1/telemetry")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(message(1).to_string()))
            .unwrap();
        let response = crate::app(state).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            refused("the stream is unavailable; nothing from this request was stored, retry later")
        );
    }
}
