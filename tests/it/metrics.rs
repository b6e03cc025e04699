//! `GET /metrics` and the JSON log format through real sockets: the real
//! binary (its own process, so its counters hold exactly what the test
//! did) counts records accepted and refused by reason, HTTP requests by
//! matched route, bikes and viewers connected and push latency; every
//! standalone service serves `/metrics`; in-process all-in-ones share one
//! recorder; `ALLEYCAT_LOG_FORMAT=json` writes one JSON object per line and
//! tokens reach neither metrics nor logs.

use crate::common::*;
use alleycat_core::RacerId;
use alleycat_ingest::AuthSecrets;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "the metrics test secret of at least 32 bytes";
const ADMIN: &str = "metrics-test-admin-token";
const CLASS: u8 = 1;
const RACE: u64 = 77;

/// One scrape: every series (name and labels, sorted) and its value.
struct Scrape {
    text: String,
    series: BTreeMap<String, f64>,
}

impl Scrape {
    async fn of(base: &str) -> Scrape {
        let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(response.status(), 200);
        let content_type = response.headers()["content-type"].to_str().unwrap();
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        let text = response.text().await.unwrap();
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("series and value");
                (canonical(series), value.parse().expect("a number"))
            })
            .collect();
        Scrape { text, series }
    }

    /// The series' value, 0 when absent (a counter not counted yet).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.series.get(&key(name, labels)).copied().unwrap_or(0.0)
    }

    fn has(&self, name: &str) -> bool {
        self.series.contains_key(name)
    }
}

fn key(name: &str, labels: &[(&str, &str)]) -> String {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    if labels.is_empty() {
        return name.to_owned();
    }
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

/// `name{a="x",b="y"}` as [`key`] writes it: labels sorted, unquoted.
fn canonical(series: &str) -> String {
    let Some((name, rest)) = series.split_once('{') else {
        return series.to_owned();
    };
    let body = rest.strip_suffix('}').expect("labels end with }");
    let mut labels = Vec::new();
    let mut chars = body.chars().peekable();
    while chars.peek().is_some() {
        let label: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "{series}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().expect("an escaped character")),
                '"' => break,
                c => value.push(c),
            }
        }
        if chars.peek() == Some(&',') {
            chars.next();
        }
        labels.push((label, value));
    }
    let labels: Vec<(&str, &str)> = labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    key(name, &labels)
}

fn token(racer: u64) -> String {
    AuthSecrets::parse(SECRET)
        .unwrap()
        .issue(RacerId(racer), Duration::from_secs(3600))
}

fn record(racer: u64, second: u16) -> Value {
    Sample {
        race: RACE,
        class: CLASS,
        racer,
        second,
        last: false,
        cadence_q: 300 + u32::from(second),
        resistance_q: 200 + racer as u32,
    }
    .json()
}

/// What the test expects the counters to have moved by.
#[derive(Default)]
struct Expected {
    accepted: u64,
    /// Reason -> (batches, records).
    refused: BTreeMap<&'static str, (u64, u64)>,
    /// HTTP status -> POSTs of `/v1/telemetry` answered with it.
    posts: BTreeMap<u16, u64>,
}

impl Expected {
    fn refuse(&mut self, reason: &'static str, records: u64) {
        let entry = self.refused.entry(reason).or_default();
        entry.0 += 1;
        entry.1 += records;
    }
}

/// POSTs `body` (with `racer`'s token, if any) and tallies the answer:
/// `records` is how many records the body holds, counted if they were read.
async fn post(
    base: &str,
    racer: Option<u64>,
    content_type: &str,
    body: String,
    expected: &mut Expected,
) -> (u16, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base}/v1/telemetry"))
        .header("content-type", content_type)
        .body(body);
    if let Some(racer) = racer {
        request = request.bearer_auth(token(racer));
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    *expected.posts.entry(status).or_default() += 1;
    (status, response.json().await.unwrap())
}

async fn post_records(base: &str, racer: u64, records: &[Value], expected: &mut Expected) -> u16 {
    let body = Value::Array(records.to_vec()).to_string();
    let (status, answer) = post(base, Some(racer), "application/json", body, expected).await;
    let n = records.len() as u64;
    match status {
        202 => {
            assert_eq!(answer["accepted"], n);
            expected.accepted += n;
        }
        403 if answer["error"].as_str().unwrap().contains("disqualified") => {
            expected.refuse("disqualified", n);
        }
        403 => expected.refuse("wrong_racer", n),
        422 => expected.refuse("invalid", n),
        429 => expected.refuse("rate_limited", n),
        413 => expected.refuse("too_large", n),
        other => panic!("unexpected {other}: {answer}"),
    }
    status
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(base: &str, path: &str) -> Socket {
    let url = format!("{}{path}", base.replacen("http://", "ws://", 1));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The next text frame (pings and pushes to viewers aside).
async fn next_text(ws: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("an answer in time");
        if let Some(Ok(Message::Text(text))) = message {
            return serde_json::from_str(&text).unwrap();
        }
        assert!(matches!(message, Some(Ok(_))), "socket ended: {message:?}");
    }
}

/// Waits until `check` holds of a fresh scrape; returns that scrape.
async fn scrape_until(base: &str, what: &str, check: impl Fn(&Scrape) -> bool) -> Scrape {
    eventually(what, || async {
        let scrape = Scrape::of(base).await;
        check(&scrape).then_some(scrape)
    })
    .await
}

#[tokio::test]
async fn an_all_in_one_counts_what_it_accepts_and_refuses_by_reason_and_route() {
    let dir = tempfile::tempdir().unwrap();
    let env: Vec<(String, String)> = [
        ("ALLEYCAT_DATA_DIR", dir.path().to_str().unwrap()),
        ("ALLEYCAT_AUTH_SECRET", SECRET),
        ("ALLEYCAT_ADMIN_TOKEN", ADMIN),
        ("ALLEYCAT_RACER_RATE", "0.001"),
        ("ALLEYCAT_RACER_BURST", "10"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let server = spawn_alleycat(&[], &env).await;
    let base = server.base.clone();
    let before = Scrape::of(&base).await;
    // Every series is there from the start, before anything happened.
    for name in [
        "alleycat_ingest_records_accepted_total",
        "alleycat_ingest_bike_connections",
        "alleycat_rankings_viewer_connections",
        "alleycat_rankings_viewers_dropped_total",
    ] {
        assert!(before.has(name), "{name} missing:\n{}", before.text);
    }
    let mut expected = Expected::default();

    // A viewer of the class, and a bike whose token is in the query.
    let mut viewer = connect(&base, &format!("/v1/rankings/ws?classId={CLASS}")).await;
    let bike_token = token(1);
    let mut bike = connect(&base, &format!("/v1/telemetry/ws?token={bike_token}")).await;
    scrape_until(&base, "a viewer and a bike counted", |s| {
        s.get("alleycat_rankings_viewer_connections", &[]) == 1.0
            && s.get("alleycat_ingest_bike_connections", &[]) == 1.0
    })
    .await;

    // Accepted: racer 1 over the WebSocket, racers 2 and 3 over HTTP.
    bike.send(Message::text(record(1, 1).to_string()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut bike).await["accepted"], 1);
    let four: Vec<Value> = (2..=5).map(|s| record(1, s)).collect();
    bike.send(Message::text(Value::Array(four).to_string()))
        .await
        .unwrap();
    assert_eq!(next_text(&mut bike).await["accepted"], 4);
    expected.accepted += 5;
    for racer in [2, 3] {
        let seconds: Vec<Value> = (1..=5).map(|s| record(racer, s)).collect();
        assert_eq!(
            post_records(&base, racer, &seconds, &mut expected).await,
            202
        );
    }

    // Refused, one of each reason.
    let mut bad = record(2, 7);
    bad["classId"] = json!(9);
    let invalid = [record(2, 6), bad];
    assert_eq!(post_records(&base, 2, &invalid, &mut expected).await, 422);
    let (status, _) = post(
        &base,
        Some(2),
        "application/json",
        "not json".into(),
        &mut expected,
    )
    .await;
    assert_eq!(status, 400);
    expected.refuse("malformed", 0);
    let too_many: Vec<Value> = (0..501).map(|_| record(2, 8)).collect();
    assert_eq!(post_records(&base, 2, &too_many, &mut expected).await, 413);
    let (status, _) = post(&base, Some(2), "text/csv", "a,b".into(), &mut expected).await;
    assert_eq!(status, 415);
    expected.refuse("unsupported_media_type", 0);
    let body = Value::Array(vec![record(2, 9)]).to_string();
    let (status, _) = post(&base, None, "application/json", body, &mut expected).await;
    assert_eq!(status, 401);
    expected.refuse("unauthorized", 0);
    assert_eq!(
        post_records(&base, 2, &[record(3, 9)], &mut expected).await,
        403
    );
    // Racer 3 has 5 of its 10 tokens left.
    let six: Vec<Value> = (10..16).map(|s| record(3, s)).collect();
    assert_eq!(post_records(&base, 3, &six, &mut expected).await, 429);
    let plain = reqwest::Client::new()
        .get(format!("{base}/v1/telemetry/ws"))
        .bearer_auth(token(2))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 400);
    expected.refuse("not_websocket", 0);
    // Disqualified: posts until the list reaches ingest; those before count
    // as whatever they were answered.
    let admin = reqwest::Client::new()
        .post(format!("{base}/v1/admin/disqualifications"))
        .bearer_auth(ADMIN)
        .json(&json!({"racerId": 4, "reason": "metrics test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 201);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    for second in 1.. {
        if post_records(&base, 4, &[record(4, second)], &mut expected).await == 403 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "racer 4 never refused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A binary frame closes the bike's socket.
    bike.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    expected.refuse("not_websocket", 0);

    // Routes: the matched path, never the raw one nor a query.
    let race = reqwest::get(format!("{base}/v1/races/42")).await.unwrap();
    let race_status = race.status().as_str().to_owned();
    let nowhere = reqwest::get(format!("{base}/no/such/route?token={bike_token}"))
        .await
        .unwrap();
    assert_eq!(nowhere.status(), 404);

    // Pushes reached the viewer; then it and the bike leave.
    let push = next_text(&mut viewer).await;
    assert_eq!(push["type"], "race");
    viewer.close(None).await.unwrap();
    drop(bike);
    let after = scrape_until(&base, "the viewer and the bike gone", |s| {
        s.get("alleycat_rankings_viewer_connections", &[]) == 0.0
            && s.get("alleycat_ingest_bike_connections", &[]) == 0.0
            && s.get(
                "alleycat_ingest_batches_refused_total",
                &[("reason", "not_websocket")],
            ) == 2.0
    })
    .await;

    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(
        delta("alleycat_ingest_records_accepted_total", &[]),
        expected.accepted as f64,
        "{}",
        after.text
    );
    for reason in [
        "invalid",
        "malformed",
        "too_large",
        "unsupported_media_type",
        "not_websocket",
        "unauthorized",
        "wrong_racer",
        "disqualified",
        "rate_limited",
        "rate_limiter_full",
        "unavailable",
    ] {
        let (batches, records) = expected.refused.get(reason).copied().unwrap_or_default();
        let labels = [("reason", reason)];
        assert_eq!(
            (
                delta("alleycat_ingest_batches_refused_total", &labels),
                delta("alleycat_ingest_records_refused_total", &labels)
            ),
            (batches as f64, records as f64),
            "{reason}:\n{}",
            after.text
        );
    }
    assert_eq!(expected.refused["invalid"], (1, 2));
    assert_eq!(expected.refused["too_large"], (1, 501));

    let requests = "alleycat_http_requests_total";
    for (status, count) in &expected.posts {
        let status = status.to_string();
        let labels = [
            ("method", "POST"),
            ("route", "/v1/telemetry"),
            ("status", status.as_str()),
        ];
        assert_eq!(delta(requests, &labels), *count as f64, "POST {status}");
    }
    let race = [
        ("method", "GET"),
        ("route", "/v1/races/{race_id}"),
        ("status", race_status.as_str()),
    ];
    assert_eq!(delta(requests, &race), 1.0, "{}", after.text);
    let upgrades = [
        ("method", "GET"),
        ("route", "/v1/telemetry/ws"),
        ("status", "101"),
    ];
    assert_eq!(delta(requests, &upgrades), 1.0);
    let unmatched = [("method", "GET"), ("route", "unmatched"), ("status", "404")];
    assert_eq!(delta(requests, &unmatched), 1.0);
    assert!(!after.text.contains("/v1/races/42") && !after.text.contains("/no/such"));
    assert!(!after.text.contains(&bike_token) && !after.text.contains("token="));
    let durations = "alleycat_http_request_duration_seconds_count";
    assert!(after.get(durations, &[("method", "POST"), ("route", "/v1/telemetry")]) >= 10.0);

    // Push latency: the viewer was pushed to, within reason.
    let pushes = after.get("alleycat_rankings_push_latency_seconds_count", &[]);
    let waited = after.get("alleycat_rankings_push_latency_seconds_sum", &[]);
    assert!(pushes >= 1.0, "{}", after.text);
    assert!(
        waited / pushes < 5.0,
        "mean push latency {} s",
        waited / pushes
    );
    assert!(after.get("alleycat_rankings_messages_queued_total", &[]) >= 1.0);
    let put = "alleycat_ingest_stream_put_duration_seconds_count";
    assert!(delta(put, &[]) >= 3.0, "{}", after.text);

    // The process, plausibly.
    let cpu = after.get("alleycat_process_cpu_seconds_total", &[]);
    let rss = after.get("alleycat_process_resident_memory_bytes", &[]);
    let uptime = after.get("alleycat_process_uptime_seconds", &[]);
    let fds = after.get("alleycat_process_open_fds", &[]);
    let max_fds = after.get("alleycat_process_max_fds", &[]);
    assert!(cpu > 0.0 && cpu < 600.0, "cpu {cpu}");
    assert!(rss > 1e6 && rss < 8e9, "rss {rss}");
    assert!(uptime > 0.0 && uptime < 600.0, "uptime {uptime}");
    assert!(fds >= 3.0 && fds < max_fds, "fds {fds} of {max_fds}");
    assert!(after.get("alleycat_process_threads", &[]) >= 2.0);
    server.terminate().await;
}

#[tokio::test]
async fn every_standalone_service_serves_its_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let services = ["ingest", "transformer", "history", "rankings"].map(|name| {
        let data = dir.path().join(name);
        let env = vec![(
            "ALLEYCAT_DATA_DIR".to_owned(),
            data.to_str().unwrap().to_owned(),
        )];
        async move { (name, spawn_alleycat(&[name], &env).await) }
    });
    for (name, service) in futures_util::future::join_all(services).await {
        // spawn_alleycat waited for /healthz: it is counted by its route.
        let scrape = Scrape::of(&service.base).await;
        let health = [("method", "GET"), ("route", "/healthz"), ("status", "200")];
        assert!(
            scrape.get("alleycat_http_requests_total", &health) >= 1.0,
            "{name}:\n{}",
            scrape.text
        );
        assert!(scrape.has("alleycat_process_cpu_seconds_total"), "{name}");
        assert!(
            scrape.get("alleycat_process_resident_memory_bytes", &[]) > 1e6,
            "{name}"
        );
        let own = match name {
            "ingest" => Some("alleycat_ingest_records_accepted_total"),
            "rankings" => Some("alleycat_rankings_viewer_connections"),
            _ => None,
        };
        if let Some(own) = own {
            assert!(scrape.has(own), "{name} lacks {own}:\n{}", scrape.text);
        }
        // Only its own service's metrics.
        for other in ["alleycat_ingest_", "alleycat_rankings_"] {
            if !other.contains(name) {
                assert!(!scrape.text.contains(other), "{name} shows {other}");
            }
        }
        service.terminate().await;
    }
}

#[tokio::test]
async fn all_in_ones_of_one_process_share_its_metrics() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Server::start(dir_a.path()).await;
    let b = Server::start(dir_b.path()).await;
    let accepted = "alleycat_ingest_records_accepted_total";
    let before = Scrape::of(&b.base).await.get(accepted, &[]);
    let client = reqwest::Client::new();
    let body = Value::Array((1..=3).map(|s| record(9, s)).collect());
    assert_eq!(post_json(&client, &a.base, &body).await.0, 202);
    // Other tests of this process may post too: at least these three.
    for server in [&a, &b] {
        let now = Scrape::of(&server.base).await.get(accepted, &[]);
        assert!(now - before >= 3.0, "{before} -> {now}");
    }
    a.stop().await;
    b.stop().await;
}

/// `alleycat` with `env` on a free port, its stderr kept line by line.
async fn spawn_logging(
    env: &[(&str, &str)],
) -> (tokio::process::Child, String, Arc<Mutex<Vec<String>>>) {
    use tokio::io::AsyncBufReadExt as _;
    for _ in 0..3 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let base = format!("http://127.0.0.1:{port}");
        let mut child = alleycat_command()
            .env("ALLEYCAT_LISTEN", format!("127.0.0.1:{port}"))
            .envs(QUICK_FLAGS)
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut reader = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let kept = Arc::clone(&lines);
        tokio::spawn(async move {
            while let Ok(Some(line)) = reader.next_line().await {
                kept.lock().unwrap().push(line);
            }
        });
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if child.try_wait().unwrap().is_some() {
                break; // the port was taken meanwhile: another one
            }
            if reqwest::get(format!("{base}/healthz"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return (child, base, lines);
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "not healthy in time"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    panic!("alleycat exited before serving three times");
}

#[tokio::test]
async fn the_json_log_format_writes_one_object_per_line_with_the_matched_route() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let (mut child, base, lines) = spawn_logging(&[
        ("ALLEYCAT_DATA_DIR", data),
        ("ALLEYCAT_LOG_FORMAT", "json"),
        // tower-http's request and response events are at debug (the
        // request span around them at info).
        (
            "ALLEYCAT_LOG",
            "info,tower_http=debug,alleycat_runtime=debug",
        ),
    ])
    .await;
    let secret = "a-secret-in-the-query";
    let race = reqwest::get(format!("{base}/v1/races/42?token={secret}"))
        .await
        .unwrap();
    assert!(race.status().is_client_error());
    assert_eq!(
        reqwest::get(format!("{base}/metrics"))
            .await
            .unwrap()
            .status(),
        200
    );
    // SIGTERM: the shutdown is logged too.
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    // The reader reaches the end of the pipe shortly after the exit.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let lines = lines.lock().unwrap().clone();
    assert!(lines.len() >= 3, "{lines:?}");
    let mut routes = Vec::new();
    for line in &lines {
        let value: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line}"));
        assert!(value.is_object(), "{line}");
        for field in ["timestamp", "level", "target", "message"] {
            assert!(value.get(field).is_some(), "no {field}: {line}");
        }
        if let Some(route) = value.pointer("/span/route").and_then(Value::as_str) {
            routes.push(route.to_owned());
        }
        assert!(!line.contains(secret), "the query reached the log: {line}");
    }
    assert!(
        lines.iter().any(|l| l.contains(r#""message":"listening""#)),
        "{lines:?}"
    );
    assert!(
        routes.iter().any(|r| r == "/v1/races/{race_id}"),
        "{routes:?}"
    );
    assert!(routes.iter().any(|r| r == "/metrics"), "{routes:?}");
}

#[tokio::test]
async fn an_unknown_log_format_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let output = alleycat_command()
        .env("ALLEYCAT_DATA_DIR", dir.path())
        .env("ALLEYCAT_LISTEN", "127.0.0.1:0")
        .env("ALLEYCAT_LOG_FORMAT", "xml")
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, output)
        .await
        .unwrap()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("ALLEYCAT_LOG_FORMAT must be `text` or `json`, got \"xml\""),
        "{stderr}"
    );
}
