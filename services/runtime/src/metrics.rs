//! Metrics: one Prometheus recorder per process, `GET /metrics` in the
//! Prometheus text format, HTTP requests counted by method, matched route
//! and status, and the process's CPU, memory, file descriptors and uptime.
//!
//! Services record with the `metrics` crate's macros (`metrics::counter!`,
//! `gauge!`, `histogram!`) once [`install`] has run: [`Process`] runs it
//! before any service is built, and a service that keeps handles in a
//! `static` calls it first, because a handle made before the recorder
//! exists records into nothing for ever. Conventions:
//!
//! - names are `alleycat_<service>_<what>_<unit>`, counters end in
//!   `_total`; every one is listed in README.md ("Metrics");
//! - label values come from small fixed sets (a reason, a route, a status),
//!   never from clients (no racer or race id, no raw path);
//! - histograms are latencies, named `_seconds`, with buckets from 0.5 ms
//!   to 5 min; sizes and counts are counters (`_bytes_total`,
//!   `_records_total`), whose rates are what operators graph;
//! - hot paths keep handles (`Counter`, `Histogram`) made once, and count
//!   per batch rather than per record.
//!
//! The process metrics are read from `/proc/self` at each scrape (absent
//! where there is no `/proc`). Metrics accumulate over the whole process:
//! several all-in-ones in one test process share them.
//!
//! [`Process`]: crate::Process

use axum::Router;
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::fmt::Write as _;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Route label of a request no route matched (a 404): its raw path is the
/// client's to choose, and would make a new series per path.
pub const UNMATCHED: &str = "unmatched";

/// Latency buckets, in seconds: fine around the push interval (250 ms) and
/// a request's few milliseconds, coarse up to the 5-minute race.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.75,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
];
/// How often histograms are drained when nobody scrapes, so that their
/// samples do not pile up in memory.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's Prometheus recorder; later calls do nothing.
/// Safe to call from anywhere, any number of times.
pub fn install() {
    handle();
}

fn handle() -> &'static PrometheusHandle {
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        if let Err(e) = metrics::set_global_recorder(recorder) {
            // Another recorder was installed first: its metrics are not
            // ours to serve; `/metrics` then shows the process metrics only.
            tracing::warn!(error = %e, "a metrics recorder is installed already");
        }
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no metrics upkeep thread: histograms drain at scrapes only");
        }
        describe();
        handle
    })
}

/// HELP lines of the metrics recorded here.
fn describe() {
    metrics::describe_counter!(
        HTTP_REQUESTS,
        "HTTP requests answered, by method, matched route and status"
    );
    metrics::describe_histogram!(
        HTTP_DURATION,
        metrics::Unit::Seconds,
        "Time from a request's arrival to its response's headers, by method and matched route"
    );
}

const HTTP_REQUESTS: &str = "alleycat_http_requests_total";
const HTTP_DURATION: &str = "alleycat_http_request_duration_seconds";

/// One open thing (a connection) counted in a gauge until it drops.
pub struct Open(&'static metrics::Gauge);

impl Open {
    /// Counts one more in `gauge`, until the result drops.
    pub fn count(gauge: &'static metrics::Gauge) -> Open {
        gauge.increment(1.0);
        Open(gauge)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// `GET /metrics`.
pub(crate) fn routes() -> Router {
    Router::new().route("/metrics", get(scrape))
}

async fn scrape() -> Response {
    let mut text = handle().render();
    process_metrics(&mut text);
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

/// The matched route of a request as routing left it, or [`UNMATCHED`]:
/// never the raw path (nor its query, where a bike's token may be).
#[must_use]
pub(crate) fn route_of<B>(request: &axum::http::Request<B>) -> &str {
    request
        .extensions()
        .get::<MatchedPath>()
        .map_or(UNMATCHED, MatchedPath::as_str)
}

/// Counts a request by method, matched route and status, and times it to
/// its response's headers (a WebSocket's upgrade, not its life).
pub(crate) async fn track(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    // Shared by both metrics' labels: one allocation a request.
    let route = metrics::SharedString::from(std::sync::Arc::<str>::from(route_of(&request)));
    let response = next.run(request).await;
    let status = response.status().as_str().to_owned();
    metrics::histogram!(HTTP_DURATION, "method" => method, "route" => route.clone())
        .record(started.elapsed());
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route, "status" => status)
        .increment(1);
    response
}

/// The method as a label: the standard ones by name, any other (a client
/// may send any token) as `other`.
fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// The process's own figures, from `/proc/self`, appended in the text
/// format (read at scrape time: nothing runs between scrapes).
fn process_metrics(out: &mut String) {
    let Some(stat) = ProcStat::read() else {
        return;
    };
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        let _ = write!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        );
    };
    metric(
        "alleycat_process_cpu_seconds_total",
        "counter",
        "CPU time used by the process, user and system, in seconds",
        stat.cpu_seconds,
    );
    metric(
        "alleycat_process_resident_memory_bytes",
        "gauge",
        "Resident memory of the process, in bytes",
        stat.resident_bytes,
    );
    metric(
        "alleycat_process_virtual_memory_bytes",
        "gauge",
        "Virtual memory of the process, in bytes",
        stat.virtual_bytes,
    );
    metric(
        "alleycat_process_threads",
        "gauge",
        "Threads of the process",
        stat.threads,
    );
    if let Some(uptime) = stat.uptime_seconds {
        metric(
            "alleycat_process_uptime_seconds",
            "gauge",
            "Time since the process started, in seconds",
            uptime,
        );
    }
    if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
        metric(
            "alleycat_process_open_fds",
            "gauge",
            "Open file descriptors (connections included)",
            entries.count() as f64,
        );
    }
    if let Ok((soft, _)) =
        nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
    {
        metric(
            "alleycat_process_max_fds",
            "gauge",
            "The process's file descriptor limit (soft)",
            soft as f64,
        );
    }
}

/// What `/proc/self/stat` says of the process.
#[derive(Debug, PartialEq)]
struct ProcStat {
    cpu_seconds: f64,
    resident_bytes: f64,
    virtual_bytes: f64,
    threads: f64,
    uptime_seconds: Option<f64>,
}

impl ProcStat {
    fn read() -> Option<ProcStat> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let ticks = sysconf(nix::unistd::SysconfVar::CLK_TCK)?;
        let page = sysconf(nix::unistd::SysconfVar::PAGE_SIZE)?;
        let system_uptime = std::fs::read_to_string("/proc/uptime")
            .ok()
            .and_then(|u| u.split_whitespace().next()?.parse().ok());
        ProcStat::parse(&stat, ticks, page, system_uptime)
    }

    /// Parses `stat` (proc(5)): the fields after the command's closing
    /// parenthesis (a command may hold spaces and parentheses).
    fn parse(stat: &str, ticks: f64, page: f64, system_uptime: Option<f64>) -> Option<ProcStat> {
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // `fields[0]` is field 3 (state): field n is `fields[n - 3]`.
        let field = |n: usize| fields.get(n - 3)?.parse::<f64>().ok();
        let (utime, stime) = (field(14)?, field(15)?);
        let started = field(22)? / ticks;
        Some(ProcStat {
            cpu_seconds: (utime + stime) / ticks,
            threads: field(20)?,
            virtual_bytes: field(23)?,
            resident_bytes: field(24)? * page,
            uptime_seconds: system_uptime.map(|up| (up - started).max(0.0)),
        })
    }
}

fn sysconf(var: nix::unistd::SysconfVar) -> Option<f64> {
    let value = nix::unistd::sysconf(var).ok()??;
    (value > 0).then_some(value as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    #[test]
    fn parses_proc_self_stat_whatever_the_command_is_called() {
        // A command holding a space and a parenthesis; fields 3 to 24.
        let stat = "4242 (alley cat) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 50 0 0 20 0 7 0 1000 123456789 2048 18446744073709551615";
        let parsed = ProcStat::parse(stat, 100.0, 4096.0, Some(60.0)).unwrap();
        assert_eq!(
            parsed,
            ProcStat {
                cpu_seconds: 3.0,
                resident_bytes: 2048.0 * 4096.0,
                virtual_bytes: 123_456_789.0,
                threads: 7.0,
                uptime_seconds: Some(50.0),
            }
        );
        assert_eq!(ProcStat::parse("4242 (cut", 100.0, 4096.0, None), None);
        assert_eq!(
            ProcStat::parse("4242 (short) S 1 2", 100.0, 4096.0, None),
            None
        );
    }

    async fn fetch(router: &Router, path: &str) -> (u16, String) {
        let request = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    /// The value of the series `series` (name and labels, as rendered).
    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .map_or(0.0, |v| v.parse().unwrap())
    }

    #[tokio::test]
    async fn counts_requests_by_matched_route_and_serves_the_text_format() {
        install();
        install(); // idempotent
        let router = Router::new()
            .route(
                "/things/{id}",
                get(|| async { "ok" }).post(|| async { "posted" }),
            )
            .merge(routes())
            .layer(axum::middleware::from_fn(track));
        let series =
            r#"alleycat_http_requests_total{method="GET",route="/things/{id}",status="200"}"#;
        let unmatched =
            r#"alleycat_http_requests_total{method="GET",route="unmatched",status="404"}"#;
        let (_, before) = fetch(&router, "/metrics").await;
        assert_eq!(fetch(&router, "/things/42?token=secret").await.0, 200);
        assert_eq!(fetch(&router, "/things/43").await.0, 200);
        assert_eq!(fetch(&router, "/nothing/here?token=secret").await.0, 404);
        let (status, after) = fetch(&router, "/metrics").await;
        assert_eq!(status, 200);
        assert_eq!(value(&after, series) - value(&before, series), 2.0);
        assert_eq!(value(&after, unmatched) - value(&before, unmatched), 1.0);
        assert!(!after.contains("/things/42"), "{after}");
        assert!(!after.contains("secret") && !after.contains("/nothing"));
        assert!(after.contains("# TYPE alleycat_http_request_duration_seconds histogram"));
        assert!(after.contains(
            r#"alleycat_http_request_duration_seconds_bucket{method="GET",route="/things/{id}",le="0.0005"}"#
        ));
        // CPU time moves by clock ticks (10 ms): use some first.
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {
            std::hint::black_box(spin.elapsed());
        }
        let (_, after) = fetch(&router, "/metrics").await;
        assert!(value(&after, "alleycat_process_cpu_seconds_total") > 0.0);
        assert!(value(&after, "alleycat_process_resident_memory_bytes") > 1e6);
        assert!(value(&after, "alleycat_process_open_fds") >= 3.0);
    }

    #[test]
    fn methods_outside_the_standard_set_share_a_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        let made_up = Method::from_bytes(b"BREW").unwrap();
        assert_eq!(method_label(&made_up), "other");
    }
}
