//! `/healthz` (the process is alive and serving) and `/readyz` (every part
//! of it can do its work now). Parts report readiness in two ways: a
//! background loop sets its state as it goes ([`Readiness::set`]), and a
//! service can add a probe that is asked at each `/readyz` (a stream or
//! store that must answer).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::BoxFuture;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Longest a probe may take before it counts as not ready.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// A probe: `Ok` when its part can work now, else why not.
type Probe = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The readiness of a process's parts, shared by everything that reports it.
#[derive(Clone, Default)]
pub struct Readiness {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    /// Part -> why it is not ready; absent parts are ready.
    problems: Mutex<BTreeMap<String, String>>,
    probes: Mutex<Vec<(String, Probe)>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("problems", &self.problems())
            .finish_non_exhaustive()
    }
}

impl Readiness {
    /// Records `part`'s state: ready (`Ok`) or not, and why. Logged when
    /// it changes.
    pub fn set(&self, part: &str, state: Result<(), String>) {
        let mut problems = self.inner.problems.lock().expect("not poisoned");
        match state {
            Ok(()) => {
                if problems.remove(part).is_some() {
                    tracing::info!(part, "ready again");
                }
            }
            Err(reason) => {
                if problems.get(part) != Some(&reason) {
                    tracing::warn!(part, %reason, "not ready");
                    problems.insert(part.to_owned(), reason);
                }
            }
        }
    }

    /// Adds a probe asked at every `/readyz`.
    pub fn probe<F>(&self, part: &str, probe: impl Fn() -> F + Send + Sync + 'static)
    where
        F: Future<Output = Result<(), String>> + Send + 'static,
    {
        let probe: Probe = Arc::new(move || Box::pin(probe()));
        let mut probes = self.inner.probes.lock().expect("not poisoned");
        // Services of one process may share a part (their one stream, their
        // one list): it is asked once.
        probes.retain(|(name, _)| name != part);
        probes.push((part.to_owned(), probe));
    }

    /// The parts set not ready.
    #[must_use]
    pub fn problems(&self) -> BTreeMap<String, String> {
        self.inner.problems.lock().expect("not poisoned").clone()
    }

    /// Every part that is not ready now, probes asked.
    pub async fn check(&self) -> BTreeMap<String, String> {
        let probes = self.inner.probes.lock().expect("not poisoned").clone();
        let mut problems = self.problems();
        let answers = futures_util::future::join_all(probes.iter().map(|(_, probe)| {
            let probe = Arc::clone(probe);
            async move {
                tokio::time::timeout(PROBE_TIMEOUT, probe())
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer within {PROBE_TIMEOUT:?}")))
            }
        }))
        .await;
        for ((part, _), answer) in probes.iter().zip(answers) {
            if let Err(reason) = answer {
                problems.insert(part.clone(), reason);
            }
        }
        problems
    }
}

#[derive(Serialize)]
struct Health {
    status: &'static str,
}

#[derive(Serialize)]
struct NotReady {
    status: &'static str,
    error: String,
    parts: BTreeMap<String, String>,
}

/// `GET /healthz` (200 once serving: it is only mounted then) and
/// `GET /readyz` (200, or 503 naming every part that is not ready).
pub(crate) fn routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { Json(Health { status: "ok" }) }))
        .route("/readyz", get(ready))
        .with_state(readiness)
}

async fn ready(State(readiness): State<Readiness>) -> Response {
    let parts = readiness.check().await;
    if parts.is_empty() {
        return Json(Health { status: "ready" }).into_response();
    }
    let error = format!(
        "not ready: {}",
        parts.keys().cloned().collect::<Vec<_>>().join(", ")
    );
    let body = NotReady {
        status: "not ready",
        error,
        parts,
    };
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    async fn get(router: &Router, path: &str) -> (StatusCode, serde_json::Value) {
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn readyz_names_every_part_that_is_not_ready_until_it_recovers() {
        let readiness = Readiness::default();
        let router = routes(readiness.clone());
        assert_eq!(get(&router, "/readyz").await.0, StatusCode::OK);

        readiness.set("history class-3", Err("corrupt class file".into()));
        let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let probe_state = Arc::clone(&failing);
        readiness.probe("stream", move || {
            let failing = probe_state.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if failing {
                    Err("disk full".to_owned())
                } else {
                    Ok(())
                }
            }
        });
        let (status, body) = get(&router, "/readyz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["parts"]["history class-3"], "corrupt class file");
        assert_eq!(body["parts"]["stream"], "disk full");
        assert!(body["error"].as_str().unwrap().contains("stream"));
        // Alive all along.
        assert_eq!(get(&router, "/healthz").await.0, StatusCode::OK);

        readiness.set("history class-3", Ok(()));
        failing.store(false, std::sync::atomic::Ordering::SeqCst);
        let (status, body) = get(&router, "/readyz").await;
        assert_eq!(
            (status, body["status"].as_str()),
            (StatusCode::OK, Some("ready"))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_that_hangs_counts_as_not_ready() {
        let readiness = Readiness::default();
        readiness.probe("store", std::future::pending);
        let problems = readiness.check().await;
        assert!(problems["store"].contains("no answer"));
    }
}
