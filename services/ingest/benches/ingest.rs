//! Ingest throughput through the router (`oneshot` requests, no socket)
//! into an in-memory stream, with bike authentication off and on, in one
//! run: `cargo bench -p alleycat-ingest`.
//!
//! Requests are what bikes send: one record (a bike posting every second)
//! and 30 records of one racer (a bike that reconnects and sends what it
//! buffered), from 1,000 racers in turn, each with its own token. The rate
//! limit is on in both runs (with room for everything), so the difference
//! is authentication alone: reading the header, verifying the HS256
//! signature, the claims and the subject of every record.
//!
//! After criterion's report (time and records/s of each) it prints, per
//! batch size, the ratio of their throughputs (on / off), measured in
//! alternating rounds so that a change of the machine's load while it runs
//! does not fall on one side.

use alleycat_core::RacerId;
use alleycat_ingest::{AppState, AuthSecrets, Gate, RateLimiter};
use alleycat_storage::{PutRecord, Stream, StreamError, Subscription};
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use criterion::{Criterion, Throughput};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt as _;

const SECRET: &str = "a bench secret of at least thirty-two bytes";
const RACERS: u64 = 1_000;

/// A stream that keeps nothing: what is measured is ingest, not storage.
#[derive(Default)]
struct Memory {
    records: AtomicUsize,
}

#[async_trait::async_trait]
impl Stream for Memory {
    async fn put_records(&self, records: Vec<PutRecord>) -> Result<(), StreamError> {
        self.records.fetch_add(records.len(), Ordering::Relaxed);
        Ok(())
    }

    async fn subscribe(&self, _: &str) -> Result<Box<dyn Subscription>, StreamError> {
        Err(StreamError::Closed)
    }
}

fn router(secret: Option<&str>) -> Router {
    let secrets = secret.map(|s| AuthSecrets::parse(s).unwrap());
    // Room for everything: the limit is checked, never reached.
    let limiter = RateLimiter::new(1e9, NonZeroU32::new(u32::MAX).unwrap());
    alleycat_ingest::app(AppState {
        stream: Arc::new(Memory::default()),
        shutdown: CancellationToken::new(),
        ws_idle_timeout: Duration::from_secs(60),
        gate: Arc::new(Gate::new(secrets, limiter)),
        sensor_limits: alleycat_core::validate::SensorLimits::DEFAULT,
    })
}

/// Each racer's request body of `batch` records, and its token.
fn requests(batch: usize) -> Vec<(bytes::Bytes, String)> {
    let secrets = AuthSecrets::parse(SECRET).unwrap();
    (0..RACERS)
        .map(|racer| {
            let records: Vec<String> = (1..=batch)
                .map(|second| {
                    format!(
                        r#"{{"event":"update","deviceTimestamp":1619185789753,"second":{second},"raceId":5397285,"name":"Racer {racer}","racerId":{racer},"classId":{},"cadence":{}.25,"resistance":78.5}}"#,
                        racer % 6 + 1,
                        60 + second % 30
                    )
                })
                .collect();
            let body = if batch == 1 {
                records[0].clone()
            } else {
                format!("[{}]", records.join(","))
            };
            let token = secrets.issue(RacerId(racer), Duration::from_secs(86_400));
            (bytes::Bytes::from(body), format!("Bearer {token}"))
        })
        .collect()
}

/// Sends `iters` requests, racers in turn; the time they took.
async fn send(app: &Router, requests: &[(bytes::Bytes, String)], iters: u64) -> Duration {
    let started = Instant::now();
    for i in 0..iters {
        let (body, token) = &requests[i as usize % requests.len()];
        let request = Request::post("/v1/telemetry")
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::AUTHORIZATION, token)
            .body(Body::from(body.clone()))
            .unwrap();
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
    }
    started.elapsed()
}

/// The throughput ratio on / off, robust to a machine whose load changes
/// while it runs (other builds, other benches): `rounds` rounds of
/// `per_round` requests each way, in alternating order, and the median of
/// the rounds' ratios.
fn paired_ratio(
    runtime: &tokio::runtime::Runtime,
    off: &Router,
    on: &Router,
    requests: &[(bytes::Bytes, String)],
    rounds: usize,
    per_round: u64,
) -> f64 {
    let mut ratios: Vec<f64> = (0..rounds)
        .map(|round| {
            runtime.block_on(async {
                let (t_off, t_on) = if round % 2 == 0 {
                    let t_off = send(off, requests, per_round).await;
                    (t_off, send(on, requests, per_round).await)
                } else {
                    let t_on = send(on, requests, per_round).await;
                    (send(off, requests, per_round).await, t_on)
                };
                t_off.as_secs_f64() / t_on.as_secs_f64()
            })
        })
        .collect();
    ratios.sort_by(f64::total_cmp);
    ratios[ratios.len() / 2]
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut criterion = Criterion::default().configure_from_args();
    let mut ratios = Vec::new();
    for batch in [1, 30] {
        let requests = requests(batch);
        let off = router(None);
        let on = router(Some(SECRET));
        let mut group = criterion.benchmark_group(format!("ingest/{batch}"));
        group.throughput(Throughput::Elements(batch as u64));
        for (name, app) in [("auth off", &off), ("auth on", &on)] {
            group.bench_function(name, |b| {
                b.iter_custom(|iters| runtime.block_on(send(app, &requests, iters)));
            });
        }
        group.finish();
        let per_round = if batch == 1 { 500 } else { 50 };
        ratios.push((
            batch,
            paired_ratio(&runtime, &off, &on, &requests, 201, per_round),
        ));
    }
    println!("\ningest throughput, authentication on / off (median of 201 paired rounds):");
    for (batch, ratio) in ratios {
        println!("  {batch:>2} record(s) per request: {ratio:.3}");
    }
    criterion.final_summary();
}
