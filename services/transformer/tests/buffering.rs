//! The transformer against the embedded stream and store: size-bounded
//! objects, date-prefixed keys, every record delivered once, checkpoints.

use alleycat_core::codec;
use alleycat_storage::object_store::fs::FsStore;
use alleycat_storage::stream::embedded::EmbeddedStream;
use alleycat_storage::{ObjectStore, PutRecord, Stream};
use alleycat_transformer::{TransformerArgs, run_pipeline};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn record(i: u32) -> PutRecord {
    let json = format!(
        r#"{{"event":"update","deviceTimestamp":1,"second":{},"raceId":1,"name":"R","racerId":{i},"classId":1,"cadence":50.5,"resistance":60}}"#,
        i % 300 + 1
    );
    PutRecord {
        partition_key: i.to_string(),
        data: json.into_bytes().into(),
    }
}

async fn delivered(store: &FsStore) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for key in store.list("", None).await.unwrap() {
        let body = store.get(&key).await.unwrap().unwrap();
        out.push((key, codec::gunzip(&body.body, 1 << 30).unwrap()));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn objects_respect_the_buffer_size_and_hold_every_record_once() {
    let dir = tempfile::tempdir().unwrap();
    let stream: Arc<dyn Stream> =
        Arc::new(EmbeddedStream::open(&dir.path().join("stream")).unwrap());
    let store = FsStore::open(&dir.path().join("delivery")).unwrap();
    stream
        .put_records((0..2000).map(record).collect())
        .await
        .unwrap();

    let stop = CancellationToken::new();
    let args = TransformerArgs {
        buffer_bytes: NonZeroUsize::new(16 * 1024).unwrap(),
        buffer_interval: Duration::from_secs(3600),
    };
    let task = tokio::spawn(run_pipeline(
        stream.clone(),
        Arc::new(store.clone()),
        args,
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // Size flushes alone deliver all but the last partial buffer.
    let lines = |objects: Vec<(String, Vec<u8>)>| {
        objects
            .iter()
            .map(|(_, b)| b.iter().filter(|c| **c == b'\n').count())
            .sum::<usize>()
    };
    while lines(delivered(&store).await) < 1800 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "size flushes did not happen"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();

    let objects = delivered(&store).await;
    assert!(objects.len() > 10, "{} objects", objects.len());
    let mut racers = Vec::new();
    for (key, body) in &objects {
        assert!(body.len() <= 16 * 1024, "{key} holds {} bytes", body.len());
        assert!(
            key.starts_with(&chrono::Utc::now().format("%Y/%m/%d/").to_string()),
            "{key}"
        );
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            assert_eq!(v["output"], 106.875, "((50.5 + 35) * (60 + 65)) / 100");
            racers.push(v["racerId"].as_u64().unwrap());
        }
    }
    racers.sort_unstable();
    assert_eq!(
        racers,
        (0..2000).collect::<Vec<_>>(),
        "every record exactly once, shutdown flush included"
    );

    // Everything was checkpointed: a restarted transformer delivers nothing new.
    let stop = CancellationToken::new();
    let args = TransformerArgs {
        buffer_bytes: NonZeroUsize::new(16 * 1024).unwrap(),
        buffer_interval: Duration::from_millis(10),
    };
    let task = tokio::spawn(run_pipeline(
        stream,
        Arc::new(store.clone()),
        args,
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(delivered(&store).await.len(), objects.len());
}

/// A store whose writes land, then never return: a process dying right
/// after its delivery object became durable, before the checkpoint.
struct DiesAfterWrite {
    inner: FsStore,
    written: tokio::sync::Notify,
}

#[async_trait::async_trait]
impl ObjectStore for DiesAfterWrite {
    async fn put_if(
        &self,
        key: &str,
        body: bytes::Bytes,
        content_type: &'static str,
        condition: alleycat_storage::Precondition,
    ) -> Result<alleycat_storage::ETag, alleycat_storage::StoreError> {
        self.inner
            .put_if(key, body, content_type, condition)
            .await?;
        self.written.notify_one();
        std::future::pending().await
    }
    async fn get(
        &self,
        key: &str,
    ) -> Result<Option<alleycat_storage::Object>, alleycat_storage::StoreError> {
        self.inner.get(key).await
    }
    async fn head(
        &self,
        key: &str,
    ) -> Result<Option<alleycat_storage::ETag>, alleycat_storage::StoreError> {
        self.inner.head(key).await
    }
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, alleycat_storage::StoreError> {
        self.inner.list(prefix, start_after).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_completed_before_a_crash_is_not_delivered_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = FsStore::open(&dir.path().join("delivery")).unwrap();
    let args = TransformerArgs {
        buffer_bytes: NonZeroUsize::new(1 << 20).unwrap(),
        buffer_interval: Duration::from_millis(50),
    };
    {
        let stream: Arc<dyn Stream> =
            Arc::new(EmbeddedStream::open(&dir.path().join("stream")).unwrap());
        stream
            .put_records((0..10).map(record).collect())
            .await
            .unwrap();
        let dying = Arc::new(DiesAfterWrite {
            inner: store.clone(),
            written: tokio::sync::Notify::new(),
        });
        let task = tokio::spawn(run_pipeline(
            stream,
            dying.clone(),
            args.clone(),
            CancellationToken::new(),
        ));
        tokio::time::timeout(Duration::from_secs(30), dying.written.notified())
            .await
            .unwrap();
        task.abort();
        let _ = task.await;
    }
    assert_eq!(
        delivered(&store).await.len(),
        1,
        "the object was written, the checkpoint was not"
    );

    let stream: Arc<dyn Stream> =
        Arc::new(EmbeddedStream::open(&dir.path().join("stream")).unwrap());
    stream
        .put_records((10..20).map(record).collect())
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(run_pipeline(
        stream,
        Arc::new(store.clone()),
        args,
        stop.clone(),
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while delivered(&store).await.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new records were not delivered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap().unwrap();
    let mut racers: Vec<u64> = delivered(&store)
        .await
        .iter()
        .flat_map(|(_, body)| {
            body.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(|l| {
                    serde_json::from_slice::<serde_json::Value>(l).unwrap()["racerId"]
                        .as_u64()
                        .unwrap()
                })
                .collect::<Vec<_>>()
        })
        .collect();
    racers.sort_unstable();
    assert_eq!(
        racers,
        (0..20).collect::<Vec<_>>(),
        "each record once: the first batch was not re-delivered"
    );
}
