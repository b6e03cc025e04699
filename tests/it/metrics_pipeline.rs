//! The pipeline's metrics through `GET /metrics` of the real binary (its
//! own process, so its metrics hold only what the test did): delivery
//! objects, merges and publications counted as records flow, and the
//! freshness gauges rising while records wait and falling back once they
//! are published. On the local Kinesis and S3 servers: consumer lag per
//! shard, and records sent to `processing-failed/` by reason.

use crate::common::aws::Aws;
use crate::common::*;
use aws_sdk_kinesis::primitives::Blob;
use serde_json::Value;
use std::time::Duration;

/// One scrape of `/metrics`: each series as rendered (`name{labels}`) and
/// its value.
struct Scrape(Vec<(String, f64)>);

impl Scrape {
    async fn of(base: &str) -> Scrape {
        let response = reqwest::get(format!("{base}/metrics")).await.unwrap();
        assert_eq!(response.status(), 200);
        let text = response.text().await.unwrap();
        let series = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|line| {
                let (series, value) = line.rsplit_once(' ').expect("a series and its value");
                (series.to_owned(), value.parse().expect("a number"))
            })
            .collect();
        Scrape(series)
    }

    /// The value of the series `name` whose labels include every one of
    /// `labels`; `None` when there is none.
    fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.0.iter().find_map(|(series, value)| {
            let rest = series.strip_prefix(name)?;
            let matches = match rest.strip_prefix('{') {
                Some(labelled) => labels
                    .iter()
                    .all(|(k, v)| labelled.contains(&format!("{k}=\"{v}\""))),
                None => rest.is_empty() && labels.is_empty(),
            };
            matches.then_some(*value)
        })
    }

    /// [`Scrape::find`], 0 when absent (a counter not counted yet).
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.find(name, labels).unwrap_or(0.0)
    }
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

async fn post_race(base: &str, samples: &[Sample]) {
    let body = Value::Array(samples.iter().map(Sample::json).collect());
    let (status, answer) = post_json(&reqwest::Client::new(), base, &body).await;
    assert_eq!(status, 202, "{answer}");
}

const DELIVERY_OBJECTS: &str = "alleycat_transformer_delivery_objects_total";
const QUIET_FLUSHES: &str = "alleycat_transformer_quiet_flushes_total";
const PIPELINE_FRESHNESS: &str = "alleycat_pipeline_freshness_seconds";
const HISTORY_FRESHNESS: &str = "alleycat_history_freshness_seconds";
const TRANSFORMER_FRESHNESS: &str = "alleycat_transformer_freshness_seconds";
const CHECKS: &str = "alleycat_history_checks_total";

/// Made-up racer ids cannot grow a class file past
/// `ALLEYCAT_HISTORY_MAX_RACERS`: the racers already in it keep improving,
/// new ones are left out, counted (`reason="too_many_racers"`) and logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_file_holds_at_most_the_racers_allowed_and_says_what_it_left_out() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_alleycat(
        &[],
        &env(&[
            ("ALLEYCAT_DATA_DIR", dir.path().to_str().unwrap()),
            ("ALLEYCAT_HISTORY_MAX_RACERS", "3"),
        ]),
    )
    .await;
    let base = server.base.as_str();
    // Racers 1-3 fill class 4; then racers 1-3 ride again (a better race)
    // beside racers 4-9, of whom none may enter.
    let first: Vec<Sample> = race(41, 4, 1, 3, 2).into_iter().flatten().collect();
    post_race(base, &first).await;
    wait_for_bests(base, &bests(&first)).await;
    let mut again: Vec<Sample> = race(42, 4, 1, 9, 2).into_iter().flatten().collect();
    for s in &mut again {
        s.cadence_q += 240; // 60 rpm more: above every first-race cadence
    }
    post_race(base, &again).await;
    let admitted: Vec<Sample> = first
        .iter()
        .chain(again.iter().filter(|s| s.racer <= 3))
        .copied()
        .collect();
    wait_for_bests(base, &bests(&admitted)).await;
    let left_out = 6 * 2; // racers 4-9, 2 seconds each
    let scrape = eventually("the records left out to be counted", || async {
        let scrape = Scrape::of(base).await;
        (scrape.get(
            "alleycat_history_records_not_merged_total",
            &[("reason", "too_many_racers")],
        ) >= f64::from(left_out))
        .then_some(scrape)
    })
    .await;
    assert_eq!(
        scrape.get(
            "alleycat_history_records_not_merged_total",
            &[("reason", "too_many_racers")]
        ),
        f64::from(left_out)
    );
    let log = server.log.lock().unwrap().clone();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("ALLEYCAT_HISTORY_MAX_RACERS")),
        "{log}"
    );
    server.kill().await;
}

/// While the history store refuses writes, records wait in a delivery
/// object merged but not published: the freshness gauges show it, and
/// fall back once the store is repaired and the class file published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_move_and_freshness_rises_until_publication() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_alleycat(
        &[],
        &env(&[("ALLEYCAT_DATA_DIR", dir.path().to_str().unwrap())]),
    )
    .await;
    let base = server.base.as_str();
    // The first check runs at the start.
    let before = eventually("the first history check", || async {
        let scrape = Scrape::of(base).await;
        (scrape.get(CHECKS, &[("outcome", "ok")]) >= 1.0
            && scrape.find(PIPELINE_FRESHNESS, &[]).is_some())
        .then_some(scrape)
    })
    .await;
    assert!(
        before.get(PIPELINE_FRESHNESS, &[]) < 1.0,
        "nothing waits yet"
    );
    let lag = [("consumer", "transformer"), ("shard", "shard-000000")];

    break_history_writes(dir.path());
    let samples: Vec<Sample> = race(31, 2, 500, 20, 3).into_iter().flatten().collect();
    post_race(base, &samples).await;

    // Delivered within the buffer interval (200 ms), not published while
    // the store refuses: meanwhile the end-to-end age of the records grows.
    let delivered = eventually("the delivery object", || async {
        let scrape = Scrape::of(base).await;
        (scrape.get(DELIVERY_OBJECTS, &[]) > before.get(DELIVERY_OBJECTS, &[])).then_some(scrape)
    })
    .await;
    let delta = |name: &str| delivered.get(name, &[]) - before.get(name, &[]);
    assert_eq!(delta(DELIVERY_OBJECTS), 1.0);
    assert_eq!(delta("alleycat_transformer_delivery_records_total"), 60.0);
    assert_eq!(delta("alleycat_stream_records_put_total"), 60.0);
    // One duration per commit (the scrapes come after the acks).
    let commits = delta("alleycat_stream_commits_total");
    assert!(commits >= 1.0, "{commits} commits");
    assert_eq!(delta("alleycat_stream_commit_seconds_count"), commits);
    assert!(delta("alleycat_stream_commit_seconds_sum") > 0.0);
    let compressed = delta("alleycat_transformer_delivery_compressed_bytes_total");
    let uncompressed = delta("alleycat_transformer_delivery_uncompressed_bytes_total");
    assert!(
        compressed > 100.0 && uncompressed > compressed,
        "{compressed} gzip bytes of {uncompressed}"
    );
    assert_eq!(
        delta("alleycat_transformer_flush_latency_seconds_count"),
        1.0
    );
    assert!(delivered.find(TRANSFORMER_FRESHNESS, &[]).is_some());
    assert_eq!(
        delivered.find("alleycat_stream_consumer_lag_milliseconds", &lag),
        Some(0.0)
    );

    let mut waiting = Vec::new();
    loop {
        let scrape = Scrape::of(base).await;
        let ages = (
            scrape.get(PIPELINE_FRESHNESS, &[]),
            scrape.get(HISTORY_FRESHNESS, &[]),
        );
        waiting.push(ages);
        if ages.0 > 2.0 && ages.1 > 2.0 {
            break;
        }
        assert!(
            waiting.len() < 300,
            "not 2 s of waiting within 30 s: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        waiting.windows(2).all(|w| w[1].0 >= w[0].0),
        "rising while waiting: {waiting:?}"
    );
    assert!(Scrape::of(base).await.get(CHECKS, &[("outcome", "failed")]) >= 1.0);
    assert_eq!(fetch_class(base, 2).await, None, "nothing published yet");

    repair_history_writes(dir.path());
    eventually("publication", || async {
        fetch_class(base, 2).await.filter(|c| c.len() == 3)
    })
    .await;

    // Published: nothing waits any more.
    let after = eventually("freshness to fall back", || async {
        let scrape = Scrape::of(base).await;
        (scrape.get(PIPELINE_FRESHNESS, &[]) < 0.5).then_some(scrape)
    })
    .await;
    assert!(after.get(HISTORY_FRESHNESS, &[]) < 5.0);
    let delta =
        |name: &str, labels: &[(&str, &str)]| after.get(name, labels) - before.get(name, labels);
    assert_eq!(delta("alleycat_history_objects_merged_total", &[]), 1.0);
    // In one process the transformer hands its points over: not read back.
    assert_eq!(
        delta("alleycat_history_objects_handed_over_total", &[]),
        1.0
    );
    assert_eq!(delta("alleycat_history_records_merged_total", &[]), 60.0);
    assert_eq!(
        delta("alleycat_history_publications_total", &[("class", "2")]),
        1.0
    );
    assert_eq!(
        delta("alleycat_history_publications_total", &[("class", "3")]),
        0.0
    );
    assert!(after.get("alleycat_history_class_file_bytes", &[("class", "2")]) > 100.0);
    assert_eq!(
        after.get("alleycat_history_class_file_bytes", &[("class", "5")]),
        0.0
    );
    assert_eq!(
        after.get("alleycat_history_conflicts_total", &[("class", "2")]),
        0.0
    );
    assert_eq!(after.get("alleycat_history_pending_objects", &[]), 0.0);
    server.terminate().await;
}

/// A buffer waiting for its interval shows in the transformer's freshness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transformer_freshness_is_the_age_of_its_oldest_buffered_record() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_alleycat(
        &[],
        &env(&[
            ("ALLEYCAT_DATA_DIR", dir.path().to_str().unwrap()),
            ("ALLEYCAT_BUFFER_INTERVAL_MS", "3000"),
            ("ALLEYCAT_BUFFER_IDLE_MS", "0"),
        ]),
    )
    .await;
    let base = server.base.as_str();
    let before = Scrape::of(base).await;
    assert_eq!(before.find(TRANSFORMER_FRESHNESS, &[]), Some(0.0));
    let samples: Vec<Sample> = race(32, 4, 1, 5, 2).into_iter().flatten().collect();
    post_race(base, &samples).await;

    let buffered = eventually("a second of buffering to show", || async {
        let scrape = Scrape::of(base).await;
        (scrape.get(TRANSFORMER_FRESHNESS, &[]) >= 1.0).then_some(scrape)
    })
    .await;
    assert_eq!(
        buffered.get(DELIVERY_OBJECTS, &[]),
        before.get(DELIVERY_OBJECTS, &[])
    );
    assert!(buffered.get(TRANSFORMER_FRESHNESS, &[]) < 3.5);
    assert!(buffered.get(PIPELINE_FRESHNESS, &[]) >= buffered.get(TRANSFORMER_FRESHNESS, &[]));

    let delivered = eventually("the delivery", || async {
        let scrape = Scrape::of(base).await;
        (scrape.get(DELIVERY_OBJECTS, &[]) > before.get(DELIVERY_OBJECTS, &[])
            && scrape.get(TRANSFORMER_FRESHNESS, &[]) == 0.0)
            .then_some(scrape)
    })
    .await;
    // The delivery waited for its interval.
    let sum = delivered.get("alleycat_transformer_flush_latency_seconds_sum", &[]);
    assert!((2.9..10.0).contains(&sum), "flush latency {sum} s");
    eventually("publication", || async {
        fetch_class(base, 4).await.filter(|c| c.len() == 2)
    })
    .await;
    server.terminate().await;
}

/// The last records of a race go once the stream is quiet, not an
/// interval after the first: counted as a quiet flush.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_stream_delivers_its_open_buffer_before_the_interval() {
    let dir = tempfile::tempdir().unwrap();
    let server = spawn_alleycat(
        &[],
        &env(&[
            ("ALLEYCAT_DATA_DIR", dir.path().to_str().unwrap()),
            ("ALLEYCAT_BUFFER_INTERVAL_MS", "3600000"),
            ("ALLEYCAT_BUFFER_IDLE_MS", "300"),
        ]),
    )
    .await;
    let base = server.base.as_str();
    let before = Scrape::of(base).await;
    assert_eq!(before.find(QUIET_FLUSHES, &[]), Some(0.0));
    let samples: Vec<Sample> = race(32, 4, 1, 5, 2).into_iter().flatten().collect();
    post_race(base, &samples).await;
    eventually("publication", || async {
        fetch_class(base, 4).await.filter(|c| c.len() == 2)
    })
    .await;
    let after = Scrape::of(base).await;
    assert!(after.get(QUIET_FLUSHES, &[]) >= 1.0);
    let latency = after.get("alleycat_transformer_flush_latency_seconds_sum", &[]);
    assert!(latency < 60.0, "flush latency {latency} s");
    server.terminate().await;
}

/// Each shard's reader reports how far behind it is; a record other
/// producers put that breaks the rules goes to `processing-failed/`,
/// counted by its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn consumer_lag_per_shard_and_failed_records_on_kinesis() {
    let aws = Aws::fresh("metrics", 2).await;
    let env = aws.env();
    let ingest = spawn_alleycat(&["ingest"], &env).await;
    let transformer = spawn_alleycat(&["transformer"], &env).await;
    let before = Scrape::of(&transformer.base).await;
    let failed = [("reason", "InvalidRecord")];

    let samples: Vec<Sample> = race(41, 3, 1, 10, 2).into_iter().flatten().collect();
    post_race(&ingest.base, &samples).await;
    let put = Scrape::of(&ingest.base).await;
    assert_eq!(put.get("alleycat_stream_records_put_total", &[]), 20.0);
    assert_eq!(put.get("alleycat_stream_put_failures_total", &[]), 0.0);
    // Straight on the stream, past ingest: cadence 250 breaks the rules.
    let mut bad = samples[0].json();
    bad["cadence"] = serde_json::json!(250);
    aws.kinesis
        .put_record()
        .stream_name(&aws.stream)
        .partition_key("bad")
        .data(Blob::new(serde_json::to_vec(&bad).unwrap()))
        .send()
        .await
        .unwrap();

    let shards: Vec<String> = aws.shards().await.into_iter().map(|s| s.shard_id).collect();
    assert_eq!(shards.len(), 2);
    let after = eventually("every record delivered, lag reported per shard", || async {
        let scrape = Scrape::of(&transformer.base).await;
        let records = scrape.get("alleycat_transformer_delivery_records_total", &[]);
        let lags = shards.iter().all(|shard| {
            let labels = [("consumer", "transformer"), ("shard", shard.as_str())];
            scrape
                .find("alleycat_stream_consumer_lag_milliseconds", &labels)
                .is_some()
        });
        (records == 20.0
            && lags
            && scrape.get("alleycat_transformer_failed_records_total", &failed) == 1.0)
            .then_some(scrape)
    })
    .await;
    assert_eq!(
        before.get("alleycat_transformer_failed_records_total", &failed),
        0.0
    );
    assert_eq!(
        after.get("alleycat_transformer_failed_objects_total", &[]),
        1.0
    );
    assert!(after.get(DELIVERY_OBJECTS, &[]) >= 1.0);
    for shard in &shards {
        let labels = [("consumer", "transformer"), ("shard", shard.as_str())];
        let lag = after.get("alleycat_stream_consumer_lag_milliseconds", &labels);
        assert!((0.0..60_000.0).contains(&lag), "{shard}: {lag} ms behind");
    }
    transformer.terminate().await;
    ingest.terminate().await;
}
