//! Fresh Kinesis streams and S3 buckets on the local servers that
//! `infra/local/up` starts (`./scripts/test` starts them and exports their
//! endpoints), so each test has its own.

use super::*;
use aws_sdk_kinesis::types::StreamStatus;
use bytes::Bytes;

/// Clients of the local servers, and one test's stream and buckets.
pub struct Aws {
    pub kinesis: aws_sdk_kinesis::Client,
    pub s3: aws_sdk_s3::Client,
    pub stream: String,
    pub delivery: String,
    pub history: String,
}

const NEEDS: &str = "needs the local Kinesis and S3 servers: run ./scripts/test, or eval \"$(infra/local/up)\" first";

impl Aws {
    /// A new stream of `shards` shards and two new buckets.
    pub async fn fresh(test: &str, shards: i32) -> Aws {
        for var in ["AWS_ENDPOINT_URL_KINESIS", "AWS_ENDPOINT_URL_S3"] {
            assert!(
                std::env::var_os(var).is_some(),
                "{var} is not set: this test {NEEDS}"
            );
        }
        let config = alleycat_storage::load_aws_config().await;
        let kinesis = aws_sdk_kinesis::Client::new(&config);
        let s3 = aws_sdk_s3::Client::from_conf(
            aws_sdk_s3::config::Builder::from(&config)
                .force_path_style(true)
                .build(),
        );
        let id = format!("{test}-{:08x}", fastrand::u32(..));
        let aws = Aws {
            kinesis,
            s3,
            stream: id.clone(),
            delivery: format!("{id}-delivery"),
            history: format!("{id}-history"),
        };
        aws.kinesis
            .create_stream()
            .stream_name(&aws.stream)
            .shard_count(shards)
            .send()
            .await
            .unwrap();
        aws.wait_active().await;
        for bucket in [&aws.delivery, &aws.history] {
            aws.s3.create_bucket().bucket(bucket).send().await.unwrap();
        }
        aws
    }

    pub async fn wait_active(&self) {
        eventually("the stream to be ACTIVE", || async {
            let summary = self
                .kinesis
                .describe_stream_summary()
                .stream_name(&self.stream)
                .send()
                .await
                .ok()?;
            (summary.stream_description_summary?.stream_status == StreamStatus::Active)
                .then_some(())
        })
        .await;
    }

    /// Environment for a service process on this test's resources.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("ALLEYCAT_STREAM", "kinesis"),
            ("ALLEYCAT_STORE", "s3"),
            ("ALLEYCAT_STREAM_NAME", self.stream.as_str()),
            ("ALLEYCAT_DELIVERY_BUCKET", self.delivery.as_str()),
            ("ALLEYCAT_HISTORY_BUCKET", self.history.as_str()),
            ("ALLEYCAT_LEASE_MS", "3000"),
            ("ALLEYCAT_KINESIS_IDLE_POLL_MS", "200"),
            ("ALLEYCAT_BUFFER_INTERVAL_MS", "300"),
            ("ALLEYCAT_HISTORY_POLL_MS", "100"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// The stream's shards, as ListShards lists them.
    pub async fn shards(&self) -> Vec<aws_sdk_kinesis::types::Shard> {
        self.kinesis
            .list_shards()
            .stream_name(&self.stream)
            .send()
            .await
            .unwrap()
            .shards
            .unwrap_or_default()
    }

    /// An object's content type and body, or `None` if it cannot be read
    /// (absent, or the server is down).
    pub async fn object(&self, bucket: &str, key: &str) -> Option<(Option<String>, Bytes)> {
        let object = self
            .s3
            .get_object()
            .bucket(bucket)
            .key(key)
            .send()
            .await
            .ok()?;
        let content_type = object.content_type().map(str::to_owned);
        Some((content_type, object.body.collect().await.ok()?.into_bytes()))
    }

    /// `class-N.gz` read straight from the history bucket with GetObject,
    /// gunzipped and parsed as the original frontend did.
    pub async fn class_file(&self, class: u8) -> Option<BTreeMap<u16, BTreeMap<u64, f64>>> {
        let (content_type, bytes) = self
            .object(&self.history, &format!("class-{class}.gz"))
            .await?;
        assert_eq!(content_type.as_deref(), Some("application/gzip"));
        Some(serde_json::from_value(decode_class_file(&bytes)).unwrap())
    }

    /// Waits until some class file is published (the pipeline is flowing).
    pub async fn wait_first_class_file(&self) {
        eventually("a first class file", || async {
            self.class_file(1).await.map(|_| ())
        })
        .await;
    }

    /// Waits until every class of `expected` is in the history bucket exactly as expected.
    pub async fn wait_for_bests(&self, expected: &Bests) {
        for (class, want) in expected {
            eventually(
                &format!("class-{class}.gz in S3 to hold the expected bests"),
                || async { (self.class_file(*class).await.as_ref() == Some(want)).then_some(()) },
            )
            .await;
        }
    }

    /// Every line of every delivery object (not failed records, not leases).
    pub async fn delivered_lines(&self) -> Vec<Value> {
        use std::io::Read as _;
        let mut lines = Vec::new();
        for key in self.delivery_keys().await {
            if !key.ends_with(".gz") || key.starts_with("processing-failed/") {
                continue;
            }
            let (_, gz) = self.object(&self.delivery, &key).await.unwrap();
            let mut text = String::new();
            flate2::read::GzDecoder::new(&gz[..])
                .read_to_string(&mut text)
                .unwrap();
            lines.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
        lines
    }

    /// Waits until the class files hold every acknowledged record, then
    /// checks each was delivered exactly once.
    pub async fn assert_delivered_exactly_once(&self, acked: &[Sample]) {
        self.wait_for_bests(&bests(acked)).await;
        let seen = occurrences(&self.delivered_lines().await);
        assert_eq!(
            seen.len(),
            acked.len(),
            "every acknowledged record delivered"
        );
        let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
        assert!(twice.is_empty(), "delivered more than once: {twice:?}");
    }

    /// Every key of the delivery bucket.
    pub async fn delivery_keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut pages = self
            .s3
            .list_objects_v2()
            .bucket(&self.delivery)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            keys.extend(
                page.unwrap()
                    .contents
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|o| o.key),
            );
        }
        keys
    }
}

/// (raceId, racerId, second) of each delivered line, with how often it occurs.
pub fn occurrences(lines: &[Value]) -> BTreeMap<(u64, u64, u64), usize> {
    let mut seen = BTreeMap::new();
    for line in lines {
        let id = (
            line["raceId"].as_u64().unwrap(),
            line["racerId"].as_u64().unwrap(),
            line["second"].as_u64().unwrap(),
        );
        *seen.entry(id).or_insert(0) += 1;
    }
    seen
}
