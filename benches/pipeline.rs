//! Throughput and freshness of the embedded pipeline, end to end through
//! real sockets: `cargo bench --bench pipeline`.
//!
//! Three rates are measured in the same run, on the same generated records,
//! so their ratios are comparable across noisy machines:
//! 1. the embedded stream alone (group-committed appends, no HTTP): the
//!    baseline;
//! 2. HTTP ingest (POST /v1/telemetry, batches of `BENCH_BATCH`);
//! 3. end to end: from the first POST until every record is in its
//!    `class-N.gz`.
//!
//! Then freshness at the default settings (5 s delivery buffer): seconds from
//! a POST's 202 to the class file reflecting it, over `BENCH_FRESHNESS_RUNS`.
//!
//! Knobs (environment): `BENCH_RECORDS` (default 200000), `BENCH_CLIENTS`
//! (16), `BENCH_BATCH` (100), `BENCH_FRESHNESS_RUNS` (5).

use alleycat_storage::{PutRecord, StorageArgs};
use serde_json::{Value, json};
use std::io::Read as _;
use std::num::NonZeroUsize;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const PATIENCE: Duration = Duration::from_secs(600);

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Record `i`: a unique (class, second, racer), so history ends with one
/// entry per record.
fn record(i: usize) -> Value {
    let class = i % 6 + 1;
    let second = (i / 6) % 300 + 1;
    let racer = i / 1800;
    json!({
        "event": if second == 300 { "final" } else { "update" },
        "deviceTimestamp": 1_700_000_000_000_u64 + i as u64,
        "second": second, "raceId": 5_397_285, "name": format!("Racer {racer}"),
        "racerId": racer, "classId": class,
        "cadence": 30.0 + (i % 600) as f64 / 10.0, "resistance": 33.0 + (i % 530) as f64 / 10.0,
    })
}

fn config(dir: &std::path::Path, interval: Duration) -> alleycat::Config {
    alleycat::Config {
        server: alleycat_runtime::ServerArgs {
            listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_timeout: Duration::from_secs(30),
        },
        storage: StorageArgs::embedded(dir.to_path_buf()),
        transformer: alleycat_transformer::TransformerArgs {
            buffer_bytes: NonZeroUsize::new(1 << 20).unwrap(),
            buffer_interval: interval,
        },
        history: alleycat_history::HistoryArgs {
            poll_interval: Duration::from_millis(500),
            listing_grace: Duration::from_secs(60),
            gzip_level: 6,
        },
    }
}

async fn start(
    config: alleycat::Config,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let task = tokio::spawn(alleycat::run(
        listener,
        config,
        stop.clone().cancelled_owned(),
    ));
    let client = reqwest::Client::new();
    let deadline = Instant::now() + PATIENCE;
    while client.get(format!("{base}/healthz")).send().await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (base, stop, task)
}

async fn class_entries(client: &reqwest::Client, base: &str, class: usize) -> usize {
    let Ok(response) = client
        .get(format!("{base}/history/class-{class}.gz"))
        .send()
        .await
    else {
        return 0;
    };
    if response.status() != 200 {
        return 0;
    }
    let gz = response.bytes().await.unwrap();
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(&gz[..])
        .read_to_end(&mut json)
        .unwrap();
    let history: std::collections::BTreeMap<String, std::collections::BTreeMap<String, f64>> =
        serde_json::from_slice(&json).unwrap();
    history.values().map(|racers| racers.len()).sum()
}

/// Appends every batch straight to a fresh embedded stream, `clients` at a time.
async fn stream_only(batches: &[Vec<u8>], clients: usize) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let stream = StorageArgs::embedded(dir.path().to_path_buf())
        .open_stream()
        .await
        .unwrap();
    let records: usize = batches
        .iter()
        .map(|b| serde_json::from_slice::<Vec<Value>>(b).unwrap().len())
        .sum();
    let puts: Vec<Vec<PutRecord>> = batches
        .iter()
        .map(|b| {
            serde_json::from_slice::<Vec<Value>>(b)
                .unwrap()
                .iter()
                .map(|r| PutRecord {
                    partition_key: r["racerId"].to_string(),
                    data: serde_json::to_vec(r).unwrap().into(),
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let chunks: Vec<Vec<Vec<PutRecord>>> = (0..clients)
        .map(|c| puts.iter().skip(c).step_by(clients).cloned().collect())
        .collect();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|mine| {
            let stream = stream.clone();
            tokio::spawn(async move {
                for batch in mine {
                    stream.put_records(batch).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    records as f64 / started.elapsed().as_secs_f64()
}

async fn post_all(base: &str, batches: &[Vec<u8>], clients: usize) {
    let batches = std::sync::Arc::new(batches.to_vec());
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (base, batches) = (base.to_owned(), batches.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                for body in batches.iter().skip(c).step_by(clients) {
                    let r = client
                        .post(format!("{base}/v1/telemetry"))
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(r.status(), 202);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[tokio::main]
async fn main() {
    let records = knob("BENCH_RECORDS", 200_000);
    let clients = knob("BENCH_CLIENTS", 16);
    let batch = knob("BENCH_BATCH", 100);
    let runs = knob("BENCH_FRESHNESS_RUNS", 5);
    let batches: Vec<Vec<u8>> = (0..records)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|ids| serde_json::to_vec(&ids.iter().map(|&i| record(i)).collect::<Vec<_>>()).unwrap())
        .collect();
    println!("pipeline bench: {records} records, {clients} clients, batches of {batch}");

    let baseline = stream_only(&batches, clients).await;
    println!("  embedded stream alone   {baseline:>10.0} records/s   (baseline, 1.00)");

    let dir = tempfile::tempdir().unwrap();
    let (base, stop, task) = start(config(dir.path(), Duration::from_secs(5))).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    post_all(&base, &batches, clients).await;
    let ingest = records as f64 / started.elapsed().as_secs_f64();
    println!(
        "  HTTP ingest (202)       {ingest:>10.0} records/s   ({:.2} x baseline)",
        ingest / baseline
    );
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut total = 0;
        for class in 1..=6 {
            total += class_entries(&client, &base, class).await;
        }
        if total >= records {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "history incomplete: {total} of {records}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let end_to_end = records as f64 / started.elapsed().as_secs_f64();
    println!(
        "  end to end (class files) {end_to_end:>9.0} records/s   ({:.2} x baseline; includes one 5 s buffer interval)",
        end_to_end / baseline
    );

    // Freshness: one record at a time, a new racer each, default settings.
    let mut fresh = Vec::new();
    for run in 0..runs {
        let racer = 1_000_000 + run;
        let body = json!({"event": "update", "deviceTimestamp": 1, "second": 1, "raceId": 1, "name": "Fresh",
                          "racerId": racer, "classId": 6, "cadence": 60.0, "resistance": 60.0});
        let r = client
            .post(format!("{base}/v1/telemetry"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let accepted = Instant::now();
        let deadline = accepted + PATIENCE;
        loop {
            let gz = client
                .get(format!("{base}/history/class-6.gz"))
                .send()
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap();
            let mut json = Vec::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_end(&mut json)
                .unwrap();
            let history: Value = serde_json::from_slice(&json).unwrap();
            if history["1"].get(racer.to_string()).is_some() {
                break;
            }
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        fresh.push(accepted.elapsed().as_secs_f64());
    }
    fresh.sort_by(f64::total_cmp);
    println!(
        "  freshness (202 -> class file, defaults): median {:.2} s, min {:.2} s, max {:.2} s over {runs} runs",
        median(fresh.clone()),
        fresh[0],
        fresh[fresh.len() - 1]
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}
