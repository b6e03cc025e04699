//! Record aggregation on a real Kinesis-protocol server (`infra/local/up`):
//! puts packed into KPL aggregated records, read back as their user
//! records, through a restart inside an aggregate and through every
//! service.
//!
//! Run by `./scripts/test`; alone:
//! `eval "$(infra/local/up)"; cargo test --test it kinesis_aggregation -- --include-ignored`.

use crate::common::aws::{Aws, occurrences};
use crate::common::*;
use alleycat_storage::object_store::fs::FsStore;
use alleycat_storage::stream::kinesis::{KinesisSettings, KinesisStream};
use alleycat_storage::{PutRecord, SequenceNumber, Stream as _, StreamRecord, Subscription};
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// The first bytes of a KPL aggregated record.
const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];

fn stream(aws: &Aws, leases: &tempfile::TempDir, aggregate: bool) -> KinesisStream {
    let settings = KinesisSettings {
        stream_name: aws.stream.clone(),
        put_timeout: Duration::from_secs(10),
        lease_duration: Duration::from_secs(3),
        idle_poll: Duration::from_millis(200),
        aggregate_linger: aggregate.then_some(Duration::from_millis(50)),
    };
    let leases = Arc::new(FsStore::open(leases.path()).unwrap());
    KinesisStream::new(aws.kinesis.clone(), settings, leases)
}

/// `racers` racers' seconds `seconds`, as records keyed by racer.
fn records(racers: u64, seconds: std::ops::Range<u64>) -> Vec<PutRecord> {
    seconds
        .flat_map(|second| {
            (0..racers).map(move |racer| PutRecord {
                partition_key: racer.to_string(),
                data: Bytes::from(format!("{{\"racerId\":{racer},\"second\":{second}}}")),
                validated: None,
            })
        })
        .collect()
}

/// Reads until `count` records came or the patience runs out.
async fn read(subscription: &mut dyn Subscription, count: usize) -> Vec<StreamRecord> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while got.len() < count && tokio::time::Instant::now() < deadline {
        got.extend(
            subscription
                .poll(10_000, Duration::from_millis(200))
                .await
                .unwrap(),
        );
    }
    got
}

/// Every Kinesis record on the stream, as the server holds it.
async fn raw_records(aws: &Aws) -> Vec<Bytes> {
    let mut all = Vec::new();
    for shard in aws.shards().await {
        let iterator = aws
            .kinesis
            .get_shard_iterator()
            .stream_name(&aws.stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator
            .unwrap();
        let mut iterator = Some(iterator);
        while let Some(it) = iterator.take() {
            let page = aws
                .kinesis
                .get_records()
                .shard_iterator(it)
                .send()
                .await
                .unwrap();
            let empty = page.records.is_empty();
            all.extend(
                page.records
                    .into_iter()
                    .map(|r| Bytes::from(r.data.into_inner())),
            );
            if !empty {
                iterator = page.next_shard_iterator;
            }
        }
    }
    all
}

/// (racer, second) of a record read back.
fn racer_second(record: &StreamRecord) -> (u64, u64) {
    let json: Value = serde_json::from_slice(&record.data).unwrap();
    (
        json["racerId"].as_u64().unwrap(),
        json["second"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn concurrent_puts_are_packed_per_shard_and_read_back_once_in_order() {
    let aws = Aws::fresh("agg-read", 2).await;
    let leases = tempfile::tempdir().unwrap();
    let producer = Arc::new(stream(&aws, &leases, true));

    // 40 callers at once, as ingest's requests are: each a racer's 25
    // seconds, one put a second.
    let callers: Vec<_> = (0..40u64)
        .map(|racer| {
            let producer = Arc::clone(&producer);
            tokio::spawn(async move {
                for second in 0..25u64 {
                    let record = PutRecord {
                        partition_key: racer.to_string(),
                        data: Bytes::from(format!("{{\"racerId\":{racer},\"second\":{second}}}")),
                        validated: None,
                    };
                    producer.put_records(vec![record]).await.unwrap();
                }
            })
        })
        .collect();
    for caller in callers {
        caller.await.unwrap();
    }
    let total = 40 * 25;

    let raw = raw_records(&aws).await;
    assert!(
        raw.iter().all(|r| r.starts_with(&MAGIC)),
        "every Kinesis record is an aggregate"
    );
    assert!(
        raw.len() * 4 <= total,
        "concurrent puts share records: {} Kinesis records for {total}",
        raw.len()
    );

    let mut subscription = producer.subscribe("reader").await.unwrap();
    let got = read(subscription.as_mut(), total).await;
    assert_eq!(got.len(), total);
    let mut per_racer: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    for record in &got {
        let (racer, second) = racer_second(record);
        per_racer.entry(racer).or_default().push(second);
    }
    for (racer, seconds) in &per_racer {
        assert_eq!(*seconds, (0..25).collect::<Vec<_>>(), "racer {racer}");
    }
    assert_eq!(per_racer.len(), 40);
    let sequences: HashSet<String> = got.iter().map(|r| r.sequence.to_string()).collect();
    assert_eq!(sequences.len(), total, "each user record its own position");
    assert!(got.iter().all(|r| r.sequence.sub_sequence().is_some()));
    subscription.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn a_consumer_restarted_inside_an_aggregate_resumes_at_the_next_user_record() {
    let aws = Aws::fresh("agg-resume", 1).await;
    let leases = tempfile::tempdir().unwrap();
    let producer = stream(&aws, &leases, true);
    // One put of 300 records (one aggregate of about 10 KB), a plain
    // record put by another producer, then 60 more records aggregated.
    let first = records(30, 0..10);
    producer.put_records(first.clone()).await.unwrap();
    let plain = stream(&aws, &leases, false);
    let foreign = records(1, 100..101);
    plain.put_records(foreign.clone()).await.unwrap();
    let last = records(30, 10..12);
    producer.put_records(last.clone()).await.unwrap();
    let all: Vec<Bytes> = first
        .iter()
        .chain(&foreign)
        .chain(&last)
        .map(|r| r.data.clone())
        .collect();

    let consumer = stream(&aws, &leases, false);
    let mut subscription = consumer.subscribe("resumer").await.unwrap();
    let got = read(subscription.as_mut(), all.len()).await;
    let data: Vec<Bytes> = got.iter().map(|r| r.data.clone()).collect();
    assert_eq!(data, all, "one shard: everything once, in put order");
    assert_eq!(
        got[300].sequence.sub_sequence(),
        None,
        "the plain record has no sub-sequence"
    );

    // Checkpoints inside the first aggregate, then on the plain record,
    // each followed by a restart.
    for (at, name) in [(137, "inside an aggregate"), (300, "on a plain record")] {
        let checkpoint: SequenceNumber = got[at].sequence.clone();
        subscription
            .checkpoint(&got[at].shard_id, &checkpoint)
            .await
            .unwrap();
        subscription.close().await;
        subscription = consumer.subscribe("resumer").await.unwrap();
        let rest = read(subscription.as_mut(), all.len() - at - 1).await;
        let rest: Vec<Bytes> = rest.iter().map(|r| r.data.clone()).collect();
        assert!(
            rest == all[at + 1..],
            "{name}: resumes right after record {at}, not with {} records from {:?}",
            rest.len(),
            rest.first()
        );
    }
    subscription.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn aggregated_records_reach_class_files_exactly_once_through_a_transformer_kill() {
    let aws = Aws::fresh("agg-e2e", 2).await;
    let mut env = aws.env();
    env.push(("ALLEYCAT_KINESIS_AGGREGATE".into(), "true".into()));
    let ingest = spawn_alleycat(&["ingest"], &env).await;
    let transformer = spawn_alleycat(&["transformer"], &env).await;
    let _history = spawn_alleycat(&["history"], &env).await;

    // Racers post concurrently, so their records share aggregates; the
    // transformer is killed while they do and started again.
    let client = reqwest::Client::new();
    let posters: Vec<_> = (0..12u64)
        .map(|p| {
            let (base, client) = (ingest.base.clone(), client.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                for batch in race(200 + p, (p % 6 + 1) as u8, p * 100, 3, 30) {
                    let body = Value::Array(batch.iter().map(Sample::json).collect());
                    let (status, answer) = post_json(&client, &base, &body).await;
                    assert_eq!(status, 202, "{answer}");
                    acked.extend(batch);
                    tokio::time::sleep(Duration::from_millis(15)).await;
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(400)).await;
    transformer.kill().await;
    let _transformer = spawn_alleycat(&["transformer"], &env).await;
    let mut acked = Vec::new();
    for poster in posters {
        acked.extend(poster.await.unwrap());
    }

    aws.wait_for_bests(&bests(&acked)).await;
    aws.assert_delivered_exactly_once(&acked).await;
    let seen = occurrences(&aws.delivered_lines().await);
    assert_eq!(seen.len(), acked.len());

    let raw = raw_records(&aws).await;
    assert!(raw.iter().all(|r| r.starts_with(&MAGIC)));
    assert!(
        raw.len() < acked.len(),
        "{} Kinesis records for {} telemetry records",
        raw.len(),
        acked.len()
    );
    // Deliveries end where the buffer ends, mostly inside an aggregate:
    // their keys name the user record (`<sequence>.<sub>`).
    let keys = aws.delivery_keys().await;
    let ends_inside_an_aggregate = |key: &str| {
        key.contains("/alleycat-delivery-")
            && key
                .strip_suffix(".gz")
                .is_some_and(|stem| stem.rsplit('-').take(2).any(|s| s.contains('.')))
    };
    assert!(keys.iter().any(|k| ends_inside_an_aggregate(k)), "{keys:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn aggregates_sent_by_an_outdated_shard_listing_are_put_again_on_the_right_shard() {
    use md5::{Digest as _, Md5};
    let aws = Aws::fresh("agg-reshard", 1).await;
    let leases = tempfile::tempdir().unwrap();
    let producer = stream(&aws, &leases, true);
    // The producer lists the one shard now, and trusts that for 10 s.
    producer.put_records(records(40, 0..1)).await.unwrap();
    let parent = aws.shards().await.remove(0);
    aws.kinesis
        .split_shard()
        .stream_name(&aws.stream)
        .shard_to_split(parent.shard_id())
        .new_starting_hash_key((u128::MAX / 2 + 1).to_string())
        .send()
        .await
        .unwrap();
    aws.wait_active().await;
    // Sent to the closed parent's range by the old listing: they land on a
    // child, half of them on the wrong one.
    let after = records(40, 1..3);
    producer.put_records(after.clone()).await.unwrap();

    let children: Vec<(String, u128, u128)> = aws
        .shards()
        .await
        .into_iter()
        .filter(|s| s.parent_shard_id.as_deref() == Some(parent.shard_id()))
        .map(|s| {
            let range = s.hash_key_range.unwrap();
            (
                s.shard_id,
                range.starting_hash_key.parse().unwrap(),
                range.ending_hash_key.parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(children.len(), 2);
    let home = |key: &str| {
        let hash = u128::from_be_bytes(Md5::digest(key.as_bytes()).into());
        children
            .iter()
            .find(|(_, low, high)| (*low..=*high).contains(&hash))
            .map(|(id, _, _)| id.clone())
            .unwrap()
    };
    let mut subscription = stream(&aws, &leases, false)
        .subscribe("checker")
        .await
        .unwrap();
    // What a KCL consumer keeps: the user records within its shard's range.
    let expected: HashSet<(u64, u64)> = (1..3)
        .flat_map(|second| (0..40).map(move |racer| (racer, second)))
        .collect();
    let mut on_home_shard = HashSet::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !expected.is_subset(&on_home_shard) && tokio::time::Instant::now() < deadline {
        let polled = subscription
            .poll(10_000, Duration::from_millis(200))
            .await
            .unwrap();
        on_home_shard.extend(
            polled
                .iter()
                .filter(|r| r.shard_id == home(&racer_second(r).0.to_string()))
                .map(racer_second),
        );
        // Children are read once the parent is checkpointed to its end.
        let newest: BTreeMap<&str, &SequenceNumber> = polled
            .iter()
            .map(|r| (r.shard_id.as_str(), &r.sequence))
            .collect();
        for (shard, sequence) in newest {
            subscription.checkpoint(shard, sequence).await.unwrap();
        }
    }
    let missing: Vec<_> = expected.difference(&on_home_shard).collect();
    assert!(
        missing.is_empty(),
        "records not on the shard their key maps to: {missing:?}"
    );
    subscription.close().await;
}
