//! What a valid batch must pass before it is stored, in this order (the
//! first that fails answers, and nothing of the batch is stored):
//!
//! 1. authentication (401): the bearer's token is still valid. The token
//!    itself is verified before the body is read (HTTP) or before the
//!    WebSocket upgrade; a WebSocket outlives that, so its expiry is checked
//!    again for every message;
//! 2. subject (403): every record is of the token's racer;
//! 3. disqualification (403): no record is of a race (or racer) the
//!    disqualification list takes out;
//! 4. rate limit (429): each racer's bucket has a token for each of its
//!    records (all or none are taken).
//!
//! Then [`store`] puts the batch on the stream, and gives the tokens back if
//! that fails (503): a batch that was not stored costs nothing.

use crate::AppState;
use crate::auth::{AuthError, AuthSecrets, Bearer, since_epoch};
use crate::error::AppError;
use crate::metrics::METRICS;
use crate::rate_limit::{Demand, RateLimiter};
use alleycat_core::Telemetry;
use alleycat_core::disqualification::Disqualifications;
use alleycat_core::validate::RecordError;
use alleycat_storage::DisqualificationList;
use std::sync::Arc;

/// The checks of every batch, shared by HTTP and WebSocket ingest.
#[derive(Debug)]
pub struct Gate {
    secrets: Option<AuthSecrets>,
    limiter: RateLimiter,
    /// The disqualification list; `None`: nobody is refused.
    disqualifications: Option<Arc<DisqualificationList>>,
}

/// A batch that passed the gate, and what it took from the rate limit.
#[must_use]
pub(crate) struct Admitted<'a> {
    gate: &'a Gate,
    demand: Demand,
}

impl Admitted<'_> {
    /// Gives back what the batch took: it was not stored.
    pub(crate) fn refund(self) {
        self.gate.limiter.refund(&self.demand);
    }
}

impl Gate {
    /// Tokens are checked against `secrets` (open without), records counted
    /// by `limiter`.
    #[must_use]
    pub fn new(secrets: Option<AuthSecrets>, limiter: RateLimiter) -> Gate {
        Gate {
            secrets,
            limiter,
            disqualifications: None,
        }
    }

    /// Refuses the records `list` disqualifies.
    #[must_use]
    pub fn with_disqualifications(mut self, list: Arc<DisqualificationList>) -> Gate {
        self.disqualifications = Some(list);
        self
    }

    /// The secrets tokens are verified with; `None`: ingest is open.
    #[must_use]
    pub fn secrets(&self) -> Option<&AuthSecrets> {
        self.secrets.as_ref()
    }

    /// Runs the checks, in order.
    pub(crate) fn admit(
        &self,
        bearer: &Bearer,
        records: &[Telemetry],
    ) -> Result<Admitted<'_>, AppError> {
        // 1. Authentication.
        if let Bearer::Racer(token) = bearer {
            if token.expired(since_epoch().as_secs()) {
                return Err(AuthError::Expired.into());
            }
            // 2. Subject.
            check_subject(token.racer, records)?;
        }
        // 3. Disqualification: before the rate limit, so that a refused
        // batch takes no tokens.
        if let Some(list) = self.disqualifications.as_ref().and_then(|l| l.current()) {
            check_disqualified(&list, records)?;
        }
        // 4. Rate limit.
        let demand = Demand::of(records);
        self.limiter.take(&demand)?;
        Ok(Admitted { gate: self, demand })
    }
}

/// Every record must be of the token's racer; each that is not is listed.
fn check_subject(subject: alleycat_core::RacerId, records: &[Telemetry]) -> Result<(), AppError> {
    if records.iter().all(|r| r.racer_id == subject) {
        return Ok(());
    }
    let others = records
        .iter()
        .enumerate()
        .filter(|(_, r)| r.racer_id != subject)
        .map(|(index, r)| RecordError {
            index,
            field: Some("racerId"),
            reason: format!(
                "must be {subject}, the racer the token is for, got {}",
                r.racer_id
            ),
        })
        .collect();
    Err(AppError::WrongRacer {
        subject,
        total: records.len(),
        records: others,
    })
}

/// No record may be of a disqualified race or racer; each that is is listed
/// with the operator's reason.
fn check_disqualified(list: &Disqualifications, records: &[Telemetry]) -> Result<(), AppError> {
    if list.is_empty() {
        return Ok(());
    }
    let refused: Vec<RecordError> = records
        .iter()
        .enumerate()
        .filter_map(|(index, r)| {
            let entry = list.refusal(r.racer_id, r.race_id)?;
            let from = match entry.race_id {
                Some(race) => format!("race {race}"),
                None => "every race".to_owned(),
            };
            Some(RecordError {
                index,
                field: Some("racerId"),
                reason: format!(
                    "racer {} is disqualified from {from}: {}",
                    r.racer_id, entry.reason
                ),
            })
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    Err(AppError::Disqualified {
        total: records.len(),
        records: refused,
    })
}

/// Passes `records` through the gate and puts them on the stream; 202's
/// count.
pub(crate) async fn store(
    state: &AppState,
    bearer: &Bearer,
    records: Vec<Telemetry>,
) -> Result<usize, AppError> {
    let admitted = match state.gate.admit(bearer, &records) {
        Ok(admitted) => admitted,
        Err(e) => {
            METRICS.refused_records(&e, records.len());
            return Err(e);
        }
    };
    let started = std::time::Instant::now();
    let count = records.len();
    let stored = crate::put(state.stream.as_ref(), records, state.sensor_limits).await;
    match &stored {
        Ok(accepted) => METRICS.accepted(*accepted, started.elapsed()),
        Err(e) => {
            METRICS.put_failed(started.elapsed());
            METRICS.refused_records(e, count);
            admitted.refund();
        }
    }
    stored
}

/// The gate through the routes, without a socket.
#[cfg(test)]
mod tests {
    use crate::auth::Claims;
    use crate::{AppState, AuthSecrets, Gate, RateLimiter};
    use alleycat_storage::stream::embedded::EmbeddedStream;
    use axum::body::Body;
    use axum::http::{Request, StatusCode, header};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use std::num::NonZeroU32;
    use std::sync::Arc;
    use std::time::Duration;
    use tempfile::TempDir;
    use tokio_util::sync::CancellationToken;
    use tower::ServiceExt;

    const SECRET: &str = "a secret of at least thirty-two bytes";

    struct Fixture {
        state: AppState,
        _dir: TempDir,
    }

    struct Answer {
        status: StatusCode,
        headers: axum::http::HeaderMap,
        body: Value,
    }

    impl Fixture {
        fn new(secret: Option<&str>, rate: f64, burst: u32) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let secrets = secret.map(|s| AuthSecrets::parse(s).unwrap());
            let limiter = RateLimiter::new(rate, NonZeroU32::new(burst).unwrap());
            let state = AppState {
                stream: Arc::new(EmbeddedStream::open(dir.path()).unwrap()),
                shutdown: CancellationToken::new(),
                ws_idle_timeout: Duration::from_secs(60),
                gate: Arc::new(Gate::new(secrets, limiter)),
                sensor_limits: alleycat_core::validate::SensorLimits::DEFAULT,
            };
            Fixture { state, _dir: dir }
        }

        async fn send(&self, request: Request<Body>) -> Answer {
            let response = crate::app(self.state.clone())
                .oneshot(request)
                .await
                .unwrap();
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            Answer {
                status,
                headers,
                body: serde_json::from_slice(&body).unwrap_or(Value::Null),
            }
        }

        async fn post(&self, authorization: Option<&str>, body: &Value) -> Answer {
            let mut request = Request::post("/v1/telemetry");
            if let Some(value) = authorization {
                request = request.header(header::AUTHORIZATION, value);
            }
            self.send(request.body(Body::from(body.to_string())).unwrap())
                .await
        }

        async fn stored(&self) -> usize {
            let mut reader = self.state.stream.subscribe("test").await.unwrap();
            reader.poll(usize::MAX, Duration::ZERO).await.unwrap().len()
        }
    }

    fn message(racer: u64) -> Value {
        json!({
            "event": "update", "deviceTimestamp": 1_619_185_789_753_u64, "second": 3,
            "raceId": 5_397_285, "name": "Hubert", "racerId": racer, "classId": 1,
            "cadence": 80.25, "resistance": 78.5
        })
    }

    fn bearer(racer: u64) -> String {
        let token = AuthSecrets::parse(SECRET)
            .unwrap()
            .issue(alleycat_core::RacerId(racer), Duration::from_secs(600));
        format!("Bearer {token}")
    }

    #[tokio::test]
    async fn without_a_valid_token_it_is_401_with_a_challenge_and_nothing_is_stored() {
        let fixture = Fixture::new(Some(SECRET), 100.0, 100);
        let expired = AuthSecrets::parse(SECRET).unwrap().sign(&Claims {
            sub: "101".into(),
            exp: 1_000_000_000,
            iat: None,
        });
        for (authorization, challenge, error) in [
            (None, "Bearer", "a bearer token is required"),
            (
                Some("Basic abc"),
                "Bearer error=\"invalid_token\"",
                "the Authorization header must be",
            ),
            (
                Some("Bearer abc"),
                "Bearer error=\"invalid_token\"",
                "the bearer token is not a well-formed JWT",
            ),
            (
                Some(&*format!("Bearer {expired}")),
                "Bearer error=\"invalid_token\"",
                "the bearer token has expired",
            ),
        ] {
            let answer = fixture.post(authorization, &message(101)).await;
            assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{authorization:?}");
            assert_eq!(answer.headers[header::WWW_AUTHENTICATE], challenge);
            assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
            assert!(
                answer.body["error"].as_str().unwrap().starts_with(error),
                "{}",
                answer.body
            );
            assert_eq!(answer.body["records"], json!([]));
        }
        assert_eq!(fixture.stored().await, 0);
        let answer = fixture.post(Some(&bearer(101)), &message(101)).await;
        assert_eq!(
            (answer.status, answer.body),
            (StatusCode::ACCEPTED, json!({"accepted": 1}))
        );
    }

    #[tokio::test]
    async fn the_token_is_checked_before_the_body_is_read() {
        let fixture = Fixture::new(Some(SECRET), 100.0, 100);
        let never = Body::from_stream(futures_util::stream::pending::<
            Result<bytes::Bytes, std::io::Error>,
        >());
        let request = Request::post("/v1/telemetry").body(never).unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(5), fixture.send(request))
            .await
            .expect("answered without reading the body");
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn records_of_another_racer_are_403_and_nothing_of_the_batch_is_stored() {
        let fixture = Fixture::new(Some(SECRET), 100.0, 100);
        let batch = json!([message(101), message(102), message(101), message(7)]);
        let answer = fixture.post(Some(&bearer(101)), &batch).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN);
        assert_eq!(
            answer.body,
            json!({
                "error": "2 of 4 records are not of racer 101, whose token this is; nothing was accepted",
                "records": [
                    {"index": 1, "field": "racerId", "reason": "must be 101, the racer the token is for, got 102"},
                    {"index": 3, "field": "racerId", "reason": "must be 101, the racer the token is for, got 7"},
                ]
            })
        );
        assert_eq!(fixture.stored().await, 0);
    }

    #[tokio::test]
    async fn past_the_rate_it_is_429_with_retry_after_and_nothing_is_stored() {
        // One record a second, three at once.
        let fixture = Fixture::new(None, 1.0, 3);
        let two = json!([message(1), message(1)]);
        assert_eq!(fixture.post(None, &two).await.status, StatusCode::ACCEPTED);
        // Two more of racer 1 (and one of racer 2, who has room): one too
        // many, so none is taken; the second token is back in about 1 s.
        let answer = fixture
            .post(None, &json!([message(2), message(1), message(1)]))
            .await;
        assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(answer.headers[header::RETRY_AFTER], "1");
        assert_eq!(
            answer.body,
            json!({
                "error": "racer 1 is over its limit of 1 records/s (burst 3); nothing was accepted, retry in 1 s",
                "records": [],
                "retryAfter": 1
            })
        );
        assert_eq!(fixture.stored().await, 2);
        // Racer 2 lost nothing: its three fit.
        let three = json!([message(2), message(2), message(2)]);
        assert_eq!(
            fixture.post(None, &three).await.status,
            StatusCode::ACCEPTED
        );
        // More of one racer than the burst never fits: 413, not a wait.
        let four = json!([message(3), message(3), message(3), message(3)]);
        let answer = fixture.post(None, &four).await;
        assert_eq!(answer.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(answer.headers.get(header::RETRY_AFTER).is_none());
        assert_eq!(answer.body.get("retryAfter"), None);
        assert_eq!(fixture.stored().await, 5);
    }

    #[tokio::test]
    async fn a_batch_the_stream_refuses_gives_its_tokens_back() {
        let mut fixture = Fixture::new(None, 0.001, 1);
        fixture.state.stream = Arc::new(crate::http::tests::Refusing);
        for attempt in 0..3 {
            let answer = fixture.post(None, &message(1)).await;
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "attempt {attempt}"
            );
        }
    }

    #[tokio::test]
    async fn a_browser_may_send_the_authorization_header() {
        let fixture = Fixture::new(Some(SECRET), 100.0, 100);
        let preflight = Request::options("/v1/telemetry")
            .header(header::ORIGIN, "https://bike.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization,content-type",
            )
            .body(Body::empty())
            .unwrap();
        let answer = fixture.send(preflight).await;
        assert!(answer.status.is_success(), "{}", answer.status);
        // `*` does not cover Authorization (Fetch standard): it is named.
        let allowed = answer.headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap()
            .to_ascii_lowercase();
        assert!(allowed.contains("authorization"), "{allowed}");
    }
}
