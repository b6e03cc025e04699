//! Throughput and freshness of the whole pipeline, end to end through real
//! sockets: `cargo bench --bench pipeline`.
//!
//! Every setting comes from the same defaults and variables as the service
//! (`ALLEYCAT_STREAM`, `ALLEYCAT_STORE`, `ALLEYCAT_BUFFER_INTERVAL_MS`, ...):
//! embedded by default; after `eval "$(infra/local/up)"`, Kinesis and S3 on
//! the local servers.
//!
//! 1. Baseline: appending the same records straight to the stream, no HTTP.
//! 2. Throughput: `BENCH_RECORDS` records posted by `BENCH_CLIENTS` clients
//!    in batches of `BENCH_BATCH`; the HTTP ingest rate (until the last 202)
//!    and the end-to-end rate (until every record is in its `class-N.gz`),
//!    each also as a ratio of the baseline; and the rate until the class
//!    files held all but the last step of records (the final partial
//!    buffer, which goes once the stream pauses, at most
//!    `ALLEYCAT_BUFFER_IDLE_MS`, or with 0 waits out the buffer interval).
//! 3. Freshness: `BENCH_RATE` records/s for `BENCH_SECONDS` s at the default
//!    delivery settings; for every batch, the time from its 202 to the class
//!    files holding all of its records; p50, p99, max.

use alleycat_core::history::read_class_file;
use alleycat_core::{RacerId, Second};
use alleycat_storage::PutRecord;
use clap::Parser as _;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The allocator `alleycat` runs with, so that the server in this process
/// costs what it does in the binary.
#[global_allocator]
static ALLOCATOR: alleycat::allocator::Allocator = mimalloc::MiMalloc;

const PATIENCE: Duration = Duration::from_secs(900);

fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The all-in-one's settings as `alleycat` with no flags takes them: its
/// defaults, and any `ALLEYCAT_*` variables set.
#[derive(clap::Parser)]
struct FromEnv {
    #[command(flatten)]
    config: alleycat::Config,
}

/// Record `i` of a run: a unique (class, second, racer), so that history
/// holds exactly one entry per record and its arrival can be seen.
fn record(run: u64, i: usize) -> Value {
    let class = i % 6 + 1;
    let second = (i / 6) % 300 + 1;
    let racer = run * 10_000_000 + (i / 1800) as u64;
    json!({
        "event": if second == 300 { "final" } else { "update" },
        "deviceTimestamp": 1_700_000_000_000_u64 + i as u64,
        "second": second, "raceId": 5_397_285, "name": format!("Racer {racer}"),
        "racerId": racer, "classId": class,
        "cadence": 30.0 + (i % 600) as f64 / 10.0, "resistance": 33.0 + (i % 530) as f64 / 10.0,
    })
}

fn key_of(record: &Value) -> (u64, u64, u64) {
    let n = |f: &str| record[f].as_u64().unwrap();
    (n("classId"), n("second"), n("racerId"))
}

async fn start(
    mut config: alleycat::Config,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    // Flushing 200,000 records at the end may take longer than the default.
    config.server.shutdown_timeout = Duration::from_secs(30);
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

/// A class file as the bench reads it: each second's bests in racer order.
type Seconds = BTreeMap<Second, Vec<(RacerId, f64)>>;

/// The published class files as last downloaded. Each poll downloads
/// again only the files that changed (`If-None-Match`), so that watching
/// costs the pipeline under test as little as possible: it shares the cores.
#[derive(Default)]
struct Published {
    /// Per class: the file's ETag and its bests.
    files: BTreeMap<u64, (String, Seconds)>,
}

impl Published {
    /// Downloads the class files that changed. Read with the class-file
    /// reader alone, not into a `ClassHistory`: this check shares the
    /// cores with the pipeline it times, and after the last publication it
    /// reads every file again (a million bests) before it can stop the
    /// clock.
    async fn refresh(&mut self, client: &reqwest::Client, base: &str) {
        for class in 1..=6u64 {
            let mut request = client.get(format!("{base}/history/class-{class}.gz"));
            if let Some((etag, _)) = self.files.get(&class) {
                request = request.header("if-none-match", etag);
            }
            let Ok(response) = request.send().await else {
                continue;
            };
            if response.status() != 200 {
                continue;
            }
            let etag = response.headers()["etag"].to_str().unwrap().to_owned();
            let gz = response.bytes().await.unwrap();
            self.files
                .insert(class, (etag, read_class_file(&gz).unwrap()));
        }
    }

    /// Bests published, over every class.
    fn len(&self) -> usize {
        self.files
            .values()
            .flat_map(|(_, seconds)| seconds.values())
            .map(Vec::len)
            .sum()
    }

    fn contains(&self, (class, second, racer): (u64, u64, u64)) -> bool {
        self.files.get(&class).is_some_and(|(_, seconds)| {
            let second = Second(u16::try_from(second).unwrap());
            seconds.get(&second).is_some_and(|bests| {
                bests
                    .binary_search_by_key(&RacerId(racer), |&(r, _)| r)
                    .is_ok()
            })
        })
    }
}

async fn post(client: &reqwest::Client, base: &str, body: Vec<u8>) {
    let r = client
        .post(format!("{base}/v1/telemetry"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main]
async fn main() {
    alleycat::allocator::prefer_small_pages();
    // The server's log lines, when asked for (`ALLEYCAT_LOG=info`).
    if std::env::var_os("ALLEYCAT_LOG").is_some() {
        alleycat_runtime::init_tracing().expect("ALLEYCAT_LOG_FORMAT");
    }
    let mut config = FromEnv::parse_from(["bench"]).config;
    // Each racer's 1,800 records are posted at once: the per-racer rate
    // limit (a bike's record a second) is not what this measures.
    config.ingest.racer_rate = 1e9;
    config.ingest.racer_burst = std::num::NonZeroU32::MAX;
    let records = knob("BENCH_RECORDS", 200_000);
    let clients = knob("BENCH_CLIENTS", 16);
    let batch = knob("BENCH_BATCH", 100);
    let rate = knob("BENCH_RATE", 1_000);
    let seconds = knob("BENCH_SECONDS", 30);
    println!(
        "pipeline bench on {:?} stream / {:?} store: {records} records, {clients} clients, batches of {batch}",
        config.storage.stream_kind, config.storage.store_kind
    );
    let dir = tempfile::tempdir().unwrap();
    config.storage.data_dir = dir.path().to_path_buf();

    let bodies: Vec<Vec<u8>> = (0..records)
        .collect::<Vec<_>>()
        .chunks(batch)
        .map(|ids| {
            serde_json::to_vec(&ids.iter().map(|&i| record(1, i)).collect::<Vec<_>>()).unwrap()
        })
        .collect();

    // 1. Baseline: the stream alone (a separate data dir / stream consumer-free).
    let baseline = {
        // Settings of its own: a clone would share what they open (one
        // stream per process), handing this stream to the server below.
        let mut alone = FromEnv::parse_from(["bench"]).config.storage;
        let alone_dir = tempfile::tempdir().unwrap();
        alone.data_dir = alone_dir.path().to_path_buf();
        let stream = alone.open_stream().await.unwrap();
        let puts: Vec<Vec<PutRecord>> = (0..records)
            .collect::<Vec<_>>()
            .chunks(batch)
            .map(|ids| {
                ids.iter()
                    .map(|&i| {
                        let r = record(0, i);
                        PutRecord {
                            partition_key: r["racerId"].to_string(),
                            data: serde_json::to_vec(&r).unwrap().into(),
                            validated: None,
                        }
                    })
                    .collect()
            })
            .collect();
        let puts = Arc::new(puts);
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|c| {
                let (stream, puts) = (stream.clone(), puts.clone());
                tokio::spawn(async move {
                    for put in puts.iter().skip(c).step_by(clients) {
                        stream.put_records(put.clone()).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        records as f64 / started.elapsed().as_secs_f64()
    };
    println!("  stream alone (baseline)   {baseline:>9.0} records/s   1.00");

    // 2. Throughput.
    let transformer = config.transformer.clone();
    let (base, stop, task) = start(config).await;
    let client = reqwest::Client::new();
    let started = Instant::now();
    let bodies = Arc::new(bodies);
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let (base, bodies, client) = (base.clone(), bodies.clone(), client.clone());
            tokio::spawn(async move {
                for body in bodies.iter().skip(c).step_by(clients) {
                    post(&client, &base, body.clone()).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let ingest = records as f64 / started.elapsed().as_secs_f64();
    println!(
        "  HTTP ingest (202)         {ingest:>9.0} records/s   {:.2}",
        ingest / baseline
    );
    let deadline = Instant::now() + PATIENCE;
    let mut published = Published::default();
    // When each count of bests was first seen: the last step up is, in
    // a run this size, the transformer's final partial buffer, which waits
    // for the stream to pause (at most `ALLEYCAT_BUFFER_IDLE_MS`), or for
    // `ALLEYCAT_BUFFER_INTERVAL_MS` with that 0, as nothing more arrives.
    let mut seen: Vec<(usize, Duration)> = Vec::new();
    // Every record is a distinct (class, second, racer) of an empty
    // history: all are in once the files hold as many bests.
    while published.len() < records {
        assert!(Instant::now() < deadline, "history incomplete");
        // A check of unchanged files is six 304s: cheap enough to look
        // often, so the clock stops close to the last publication.
        tokio::time::sleep(Duration::from_millis(50)).await;
        published.refresh(&client, &base).await;
        if seen
            .last()
            .is_none_or(|&(count, _)| count < published.len())
        {
            seen.push((published.len(), started.elapsed()));
        }
    }
    let end_to_end = records as f64 / started.elapsed().as_secs_f64();
    assert!(
        (0..records).all(|i| published.contains(key_of(&record(1, i)))),
        "the class files hold other bests than the records posted"
    );
    println!(
        "  end to end (class files)  {end_to_end:>9.0} records/s   {:.2}   (the last buffer waits {})",
        end_to_end / baseline,
        match transformer.buffer_idle {
            idle if idle.is_zero() =>
                format!("out the {:?} buffer interval", transformer.buffer_interval),
            idle => format!("for the stream to pause, at most {idle:?}"),
        }
    );
    if let [.., (before_last, at), _] = seen[..] {
        println!(
            "    all but the last {} records in class files after {:.2} s: {:>9.0} records/s   {:.2}",
            records - before_last,
            at.as_secs_f64(),
            before_last as f64 / at.as_secs_f64(),
            before_last as f64 / at.as_secs_f64() / baseline
        );
    }

    // 3. Freshness at a steady rate.
    let per_tick = batch.min(rate).max(1);
    let tick = Duration::from_secs_f64(per_tick as f64 / rate as f64);
    let total = rate * seconds;
    type Keys = Vec<(u64, u64, u64)>;
    let mut acked: Vec<(Instant, Keys)> = Vec::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
    let sender = {
        let (base, client) = (base.clone(), client.clone());
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(tick);
            for start in (0..total).step_by(per_tick) {
                ticker.tick().await;
                let batch: Vec<Value> = (start..(start + per_tick).min(total))
                    .map(|i| record(2, i))
                    .collect();
                let keys = batch.iter().map(key_of).collect::<Vec<_>>();
                let body = serde_json::to_vec(&batch).unwrap();
                let (base, client, done_tx) = (base.clone(), client.clone(), done_tx.clone());
                tokio::spawn(async move {
                    post(&client, &base, body).await;
                    let _ = done_tx.send((Instant::now(), keys));
                });
            }
        })
    };
    let mut fresh: Vec<f64> = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while fresh.len() < total.div_ceil(per_tick) {
        assert!(Instant::now() < deadline, "freshness run incomplete");
        while let Ok(item) = done_rx.try_recv() {
            acked.push(item);
        }
        published.refresh(&client, &base).await;
        let now = Instant::now();
        acked.retain(|(at, keys)| {
            if keys.iter().all(|k| published.contains(*k)) {
                fresh.push(now.duration_since(*at).as_secs_f64());
                false
            } else {
                true
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sender.await.unwrap();
    fresh.sort_by(f64::total_cmp);
    println!(
        "  freshness at {rate} records/s for {seconds} s (202 -> class file, default settings, {} batches): p50 {:.2} s, p99 {:.2} s, max {:.2} s",
        fresh.len(),
        percentile(&fresh, 0.5),
        percentile(&fresh, 0.99),
        fresh[fresh.len() - 1]
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}
