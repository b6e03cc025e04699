//! The production backends end to end: Kinesis Data Streams and S3 (real
//! servers speaking their protocols on loopback, started by
//! `infra/local/up`), each service its own process of the real binary.
//!
//! Run by `./scripts/test`, which starts the servers; alone:
//! `eval "$(infra/local/up)"; cargo test --test it aws:: -- --include-ignored`.

use crate::common::aws::{Aws, occurrences};
use crate::common::*;
use aws_sdk_kinesis::primitives::Blob;
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

async fn post_all(base: &str, races: &[Vec<Vec<Sample>>]) {
    let client = reqwest::Client::new();
    for seconds in races {
        for samples in seconds {
            let body = Value::Array(samples.iter().map(Sample::json).collect());
            let (status, answer) = post_json(&client, base, &body).await;
            assert_eq!(status, 202, "{answer}");
        }
    }
}

/// Racers posting concurrently through ingest, while a test breaks things.
struct Posters {
    total: usize,
    acked: Arc<Mutex<Vec<Sample>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Posters {
    /// `posters` gateways, each posting `seconds` of a race of `racers`.
    fn start(base: &str, posters: u64, racers: u64, seconds: u16) -> Posters {
        let acked = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..posters)
            .map(|p| {
                let (base, acked) = (base.to_owned(), acked.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    for batch in race(100 + p, (p % 6 + 1) as u8, p * 1000, racers, seconds) {
                        let body = Value::Array(batch.iter().map(Sample::json).collect());
                        let response = client
                            .post(format!("{base}/v1/telemetry"))
                            .json(&body)
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(response.status(), 202);
                        acked.lock().unwrap().extend(&batch);
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                })
            })
            .collect();
        let total = (posters * racers * u64::from(seconds)) as usize;
        Posters {
            total,
            acked,
            tasks,
        }
    }

    /// Asserts the posting is still under way (what follows happens mid-stream).
    fn assert_mid_stream(&self) {
        let acked = self.acked.lock().unwrap().len();
        assert!(
            acked < self.total,
            "still posting ({acked} of {} records acknowledged)",
            self.total
        );
    }

    /// Waits for every poster; every record was acknowledged.
    async fn finish(self) -> Vec<Sample> {
        for task in self.tasks {
            tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        }
        let acked = self.acked.lock().unwrap().clone();
        assert_eq!(acked.len(), self.total);
        acked
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn each_service_in_its_own_process_on_kinesis_and_s3() {
    let aws = Aws::fresh("e2e", 2).await;
    let env = aws.env();
    let ingest = spawn_alleycat(&["ingest"], &env).await;
    let _transformer = spawn_alleycat(&["transformer"], &env).await;
    let history = spawn_alleycat(&["history"], &env).await;

    let races = [
        race(1, 1, 1, 6, 15),
        race(2, 1, 4, 6, 15),
        race(1, 3, 50, 5, 20),
    ];
    post_all(&ingest.base, &races).await;

    // An existing producer putting the original format straight on the
    // stream: float sensors, no uuid, random partition keys.
    let originals: Vec<Sample> = race(7, 4, 900, 4, 10).into_iter().flatten().collect();
    let entries = originals
        .iter()
        .map(|s| {
            let mut message = s.json();
            message["cadence"] = json!(f64::from(s.cadence_q) / 4.0);
            aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                .partition_key(format!("{:016x}", fastrand::u64(..)))
                .data(Blob::new(serde_json::to_vec(&message).unwrap()))
                .build()
                .unwrap()
        })
        .collect();
    let put = aws
        .kinesis
        .put_records()
        .stream_name(&aws.stream)
        .set_records(Some(entries))
        .send()
        .await
        .unwrap();
    assert_eq!(put.failed_record_count, Some(0));

    let expected = bests(races.iter().flatten().flatten().chain(&originals));
    aws.wait_for_bests(&expected).await;
    // The same file through the history service's HTTP API.
    assert_eq!(
        fetch_class(&history.base, 4).await.as_ref(),
        expected.get(&4)
    );

    let lines = aws.delivered_lines().await;
    let seen = occurrences(&lines);
    assert_eq!(
        seen.len(),
        races.iter().flatten().flatten().count() + originals.len()
    );
    assert!(
        seen.values().all(|n| *n == 1),
        "every record delivered exactly once"
    );
    let keys = aws.delivery_keys().await;
    assert!(
        keys.iter().any(|k| k.starts_with("_leases/transformer/")),
        "{keys:?}"
    );
    assert!(
        keys.iter().any(|k| k.contains("/alleycat-delivery-")),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn transformer_and_history_killed_mid_stream_lose_and_duplicate_nothing() {
    let aws = Aws::fresh("crash", 2).await;
    let env = aws.env();
    let ingest = spawn_alleycat(&["ingest"], &env).await;
    let transformer = spawn_alleycat(&["transformer"], &env).await;
    let history = spawn_alleycat(&["history"], &env).await;

    let posters = Posters::start(&ingest.base, 4, 10, 150);
    aws.wait_first_class_file().await;
    transformer.kill().await;
    history.kill().await;
    posters.assert_mid_stream();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _transformer = spawn_alleycat(&["transformer"], &env).await;
    let _history = spawn_alleycat(&["history"], &env).await;
    let acked = posters.finish().await;
    aws.assert_delivered_exactly_once(&acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn two_transformers_and_two_history_processes_share_the_work_and_survive_a_death() {
    let aws = Aws::fresh("pair", 2).await;
    let env = aws.env();
    let ingest = spawn_alleycat(&["ingest"], &env).await;
    let first = spawn_alleycat(&["transformer"], &env).await;
    let _second = spawn_alleycat(&["transformer"], &env).await;
    let _history_a = spawn_alleycat(&["history"], &env).await;
    let _history_b = spawn_alleycat(&["history"], &env).await;

    let posters = Posters::start(&ingest.base, 6, 8, 150);
    aws.wait_first_class_file().await;
    // The survivor takes over the dead one's shards once their leases expire.
    first.kill().await;
    posters.assert_mid_stream();
    let acked = posters.finish().await;
    aws.assert_delivered_exactly_once(&acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn resharding_mid_run_loses_nothing_and_reads_children_after_parents() {
    let aws = Aws::fresh("reshard", 2).await;
    let env = aws.env();
    let ingest = spawn_alleycat(&["ingest"], &env).await;
    let _transformer = spawn_alleycat(&["transformer"], &env).await;
    let _history = spawn_alleycat(&["history"], &env).await;

    let posters = Posters::start(&ingest.base, 4, 10, 150);
    aws.wait_first_class_file().await;
    let shards = aws.shards().await;
    let parent = &shards[0];
    let range = parent.hash_key_range.as_ref().unwrap();
    let (low, high): (u128, u128) = (
        range.starting_hash_key.parse().unwrap(),
        range.ending_hash_key.parse().unwrap(),
    );
    aws.kinesis
        .split_shard()
        .stream_name(&aws.stream)
        .shard_to_split(&parent.shard_id)
        .new_starting_hash_key((low + (high - low) / 2).to_string())
        .send()
        .await
        .unwrap();
    aws.wait_active().await;
    // The posters may have finished by now on a slow machine; a race posted
    // after the split is what makes sure the children receive records (its
    // 40 racer keys fall on both halves of the parent's range).
    let after_split = race(900, 2, 9000, 40, 3);
    post_all(&ingest.base, std::slice::from_ref(&after_split)).await;
    let mut acked = posters.finish().await;
    acked.extend(after_split.into_iter().flatten());
    aws.assert_delivered_exactly_once(&acked).await;

    let shards_now = aws.shards().await;
    let children: Vec<&str> = shards_now
        .iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(parent.shard_id.as_str()))
        .map(|s| s.shard_id.as_str())
        .collect();
    assert_eq!(children.len(), 2);
    let keys = aws.delivery_keys().await;
    assert!(
        keys.iter()
            .any(|k| children.iter().any(|c| k.contains(&format!("-{c}-")))),
        "records of the child shards were delivered: {keys:?}"
    );
    let lease_key = format!("_leases/transformer/{}.json", parent.shard_id);
    let (_, lease) = aws.object(&aws.delivery, &lease_key).await.unwrap();
    let lease: Value = serde_json::from_slice(&lease).unwrap();
    assert_eq!(
        lease["finished"], true,
        "the parent was finished before its children were read: {lease}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn two_rankings_processes_each_serve_the_whole_stream_and_share_results() {
    use futures_util::StreamExt as _;
    let aws = Aws::fresh("rank", 2).await;
    let env = aws.env();
    let ingest = spawn_alleycat(&["ingest"], &env).await;
    let a = spawn_alleycat(&["rankings"], &env).await;
    let b = spawn_alleycat(&["rankings"], &env).await;
    let mut viewers = Vec::new();
    for rankings in [&a, &b] {
        let url = format!(
            "{}/v1/rankings/ws?classId=6",
            rankings.base.replacen("http://", "ws://", 1)
        );
        viewers.push(tokio_tungstenite::connect_async(url).await.unwrap().0);
    }
    // Racers spread over both shards (partition key = racer id).
    let seconds = race(900, 6, 1, 12, 5);
    post_all(&ingest.base, std::slice::from_ref(&seconds)).await;

    for ws in &mut viewers {
        // Each process pushes the whole race: all 12 racers at the last second.
        let complete = tokio::time::timeout(PATIENCE, async {
            while let Some(Ok(message)) = ws.next().await {
                let Ok(text) = message.to_text() else {
                    continue;
                };
                let push: Value = serde_json::from_str(text).unwrap();
                if push["second"] == 5 && push["racers"] == 12 {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            complete,
            Ok(true),
            "a push with every racer at the last second"
        );
    }
    let client = reqwest::Client::new();
    for rankings in [&a, &b] {
        let board: Value = eventually("the full leaderboard", || async {
            let v: Value = client
                .get(format!("{}/v1/leaderboard?classId=6", rankings.base))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            (v["entries"].as_array()?.len() == 12).then_some(v)
        })
        .await;
        let outputs: Vec<f64> = board["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["output"].as_f64().unwrap())
            .collect();
        let mut want: Vec<f64> = seconds[4].iter().map(Sample::expected_output).collect();
        want.sort_by(|x, y| y.total_cmp(x));
        assert_eq!(outputs, want);
    }
}
