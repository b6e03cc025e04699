//! Records a second through Kinesis with and without aggregation
//! (`ALLEYCAT_KINESIS_AGGREGATE`), on the local Kinesis server.
//!
//! `eval "$(infra/local/up)"; cargo bench --bench kinesis_aggregate`
//! (release). Settings: `BENCH_RECORDS` (20000), `BENCH_CALLERS` (200
//! concurrent callers, as ingest's requests are), `BENCH_BATCH` (records a
//! put: 1 as a WebSocket bike sends them, 30 as an HTTP bike batches them),
//! `BENCH_SHARDS` (4), `BENCH_LINGER_MS` (50), `BENCH_RUNS` (3).
//!
//! Each run puts the records on a fresh stream through Alleycat's Kinesis
//! stream, timing until every put is acknowledged, then reads them all back
//! as a consumer, timing until the last arrives; plain and aggregated take
//! turns, and which goes first alternates. It prints each run, the medians,
//! and aggregated/plain as ratios. Without the local server it says so and
//! exits.

use alleycat_storage::object_store::fs::FsStore;
use alleycat_storage::stream::kinesis::{KinesisSettings, KinesisStream};
use alleycat_storage::{PutRecord, Stream as _};
use aws_sdk_kinesis::types::StreamStatus;
use bytes::Bytes;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} must be a number"))
        })
        .unwrap_or(default)
}

struct Settings {
    records: u64,
    callers: u64,
    batch: u64,
    shards: i32,
    linger: Duration,
}

/// One run's figures.
struct Run {
    put_rate: f64,
    read_rate: f64,
    /// Kinesis records the user records arrived in.
    kinesis_records: usize,
}

/// A telemetry message of about the size ingest puts.
fn message(racer: u64, second: u64) -> Bytes {
    Bytes::from(format!(
        r#"{{"raceId":"7","racerId":"{racer}","classId":3,"second":{second},"cadence":85,"resistance":42,"uuid":"5f0e9a1c-3b7d-4e2a-9c61-0d8f2b4a7e13","name":"Racer {racer}","timestamp":"2026-12-02T10:00:00.000Z"}}"#
    ))
}

async fn fresh_stream(client: &aws_sdk_kinesis::Client, shards: i32) -> String {
    let name = format!("bench-agg-{:08x}", fastrand::u32(..));
    client
        .create_stream()
        .stream_name(&name)
        .shard_count(shards)
        .send()
        .await
        .expect("creating a stream on the local Kinesis server");
    for _ in 0..600 {
        let summary = client
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await
            .ok()
            .and_then(|s| s.stream_description_summary);
        if summary.is_some_and(|s| s.stream_status == StreamStatus::Active) {
            return name;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {name} never became active");
}

async fn run(client: &aws_sdk_kinesis::Client, settings: &Settings, aggregate: bool) -> Run {
    let name = fresh_stream(client, settings.shards).await;
    let leases = tempfile::tempdir().unwrap();
    let stream = Arc::new(KinesisStream::new(
        client.clone(),
        KinesisSettings {
            stream_name: name.clone(),
            put_timeout: Duration::from_secs(30),
            lease_duration: Duration::from_secs(10),
            idle_poll: Duration::from_millis(200),
            aggregate_linger: aggregate.then_some(settings.linger),
        },
        Arc::new(FsStore::open(leases.path()).unwrap()),
    ));

    let puts_each = settings.records / settings.callers / settings.batch;
    let total = (puts_each * settings.callers * settings.batch) as usize;
    let started = Instant::now();
    let callers: Vec<_> = (0..settings.callers)
        .map(|caller| {
            let (stream, batch) = (Arc::clone(&stream), settings.batch);
            tokio::spawn(async move {
                for put in 0..puts_each {
                    // A caller is a gateway for `batch` racers.
                    let records = (0..batch)
                        .map(|i| PutRecord {
                            partition_key: (caller * batch + i).to_string(),
                            data: message(caller * batch + i, put),
                            validated: None,
                        })
                        .collect();
                    stream.put_records(records).await.expect("a put failed");
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let put_rate = total as f64 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut subscription = stream.subscribe("bench").await.unwrap();
    let mut read = 0;
    let mut positions = HashSet::new();
    while read < total {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "read {read} of {total} records in 5 minutes"
        );
        let records = subscription
            .poll(100_000, Duration::from_millis(200))
            .await
            .unwrap();
        read += records.len();
        positions.extend(
            records
                .iter()
                .map(|r| (r.shard_id.clone(), r.sequence.record_position().to_string())),
        );
    }
    let read_rate = total as f64 / started.elapsed().as_secs_f64();
    assert_eq!(read, total, "every record read once");
    subscription.close().await;
    client.delete_stream().stream_name(&name).send().await.ok();
    Run {
        put_rate,
        read_rate,
        kinesis_records: positions.len(),
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

#[tokio::main]
async fn main() {
    if std::env::var_os("AWS_ENDPOINT_URL_KINESIS").is_none() {
        eprintln!(
            "kinesis_aggregate: needs the local Kinesis server; run `eval \"$(infra/local/up)\"` first. Skipped."
        );
        return;
    }
    let settings = Settings {
        records: setting("BENCH_RECORDS", 20_000),
        callers: setting("BENCH_CALLERS", 200),
        batch: setting("BENCH_BATCH", 1),
        shards: i32::try_from(setting("BENCH_SHARDS", 4)).expect("BENCH_SHARDS fits an i32"),
        linger: Duration::from_millis(setting("BENCH_LINGER_MS", 50)),
    };
    let runs = setting("BENCH_RUNS", 3);
    let config = alleycat_storage::load_aws_config().await;
    let client = aws_sdk_kinesis::Client::new(&config);
    println!(
        "{} records, {} callers, {} a put, {} shards, linger {:?}",
        settings.records, settings.callers, settings.batch, settings.shards, settings.linger
    );
    println!("run  mode        put rec/s  read rec/s  Kinesis records");
    let (mut plain, mut aggregated) = (Vec::new(), Vec::new());
    for n in 0..runs {
        let order = if n % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for aggregate in order {
            let result = run(&client, &settings, aggregate).await;
            let mode = if aggregate { "aggregated" } else { "plain" };
            println!(
                "{n:>3}  {mode:<10} {:>10.0} {:>11.0} {:>16}",
                result.put_rate, result.read_rate, result.kinesis_records
            );
            if aggregate {
                aggregated.push(result);
            } else {
                plain.push(result);
            }
        }
    }
    let medians = |runs: &[Run]| {
        (
            median(runs.iter().map(|r| r.put_rate).collect()),
            median(runs.iter().map(|r| r.read_rate).collect()),
            median(runs.iter().map(|r| r.kinesis_records as f64).collect()),
        )
    };
    let (plain_put, plain_read, plain_records) = medians(&plain);
    let (agg_put, agg_read, agg_records) = medians(&aggregated);
    println!(
        "median plain:      put {plain_put:.0} rec/s, read {plain_read:.0} rec/s, {plain_records:.0} Kinesis records"
    );
    println!(
        "median aggregated: put {agg_put:.0} rec/s, read {agg_read:.0} rec/s, {agg_records:.0} Kinesis records"
    );
    println!(
        "aggregated / plain: put {:.2}x, read {:.2}x, Kinesis records {:.4}x",
        agg_put / plain_put,
        agg_read / plain_read,
        agg_records / plain_records
    );
}
