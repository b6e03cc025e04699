//! The embedded stream: one shard in a redb database under the data dir.
//!
//! Appends are group-committed: a single writer thread drains every append
//! waiting in its queue into one write transaction and one fsync, then acks
//! them all, so the fsync cost is shared by every concurrent request. Readers
//! only ever see committed records, so whatever a consumer read has been
//! acknowledged and is durable. Consumer offsets live in the same database;
//! records every registered consumer has checkpointed past are deleted.

use super::{
    PendingDelivery, PutRecord, SequenceNumber, Stream, StreamError, StreamRecord, Subscription,
};
use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase as _, ReadableTable as _, TableDefinition};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};

/// The embedded stream's only shard.
pub const SHARD_ID: &str = "shard-000000";

/// Record sequence -> `arrival_ms (i64 LE) ++ data`.
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// Consumer name -> sequence of the next record it has not processed.
const CONSUMERS: TableDefinition<&str, u64> = TableDefinition::new("consumers");
/// "next" -> sequence the next appended record gets (survives trimming).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Consumer name -> its pending delivery (JSON), until its next checkpoint.
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending");

/// Most operations folded into one transaction.
const MAX_GROUP: usize = 4096;
/// Queue depth before appenders wait (backpressure).
const QUEUE: usize = 8192;
/// Page cache of the stream database.
const CACHE_BYTES: usize = 64 << 20;

/// A durable single-shard stream on local disk. Clones share the stream;
/// dropping the last one stops the writer and closes the database.
#[derive(Clone)]
pub struct EmbeddedStream {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    writer: Option<mpsc::Sender<WriteOp>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    committed: watch::Receiver<u64>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer loop; joining it releases the
        // database file, so the same process can reopen it (a restart).
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            let _ = thread.join();
        }
    }
}

enum WriteOp {
    Append {
        records: Vec<Bytes>,
        ack: oneshot::Sender<Result<(), StreamError>>,
    },
    Checkpoint {
        consumer: String,
        next: u64,
        ack: oneshot::Sender<Result<(), StreamError>>,
    },
    BeginDelivery {
        consumer: String,
        delivery: Vec<u8>,
        ack: oneshot::Sender<Result<(), StreamError>>,
    },
}

impl WriteOp {
    fn ack(self, result: Result<(), StreamError>) {
        let (WriteOp::Append { ack, .. }
        | WriteOp::Checkpoint { ack, .. }
        | WriteOp::BeginDelivery { ack, .. }) = self;
        let _ = ack.send(result);
    }
}

impl EmbeddedStream {
    /// Opens (creating if needed) the stream in `dir`. Only one process may
    /// have it open at a time.
    pub fn open(dir: &Path) -> Result<EmbeddedStream, StreamError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable("creating the stream directory", e))?;
        // redb's page cache defaults to 1 GiB; the stream is read once, at
        // its tail, so a small cache serves it.
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(dir.join("stream.redb"))
            .map_err(|e| {
                match e {
            redb::DatabaseError::DatabaseAlreadyOpen => StreamError::Unavailable(
                "the embedded stream is already open in another process; run the services in one \
                 process (`alleycat`), or use Kinesis (ALLEYCAT_STREAM=kinesis) to run them apart"
                    .to_owned(),
            ),
            e => unavailable("opening the stream database", e),
        }
            })?;
        let next = {
            let txn = db.begin_write().map_err(|e| unavailable("opening", e))?;
            let next = {
                // Creating the tables here lets readers open them unconditionally.
                txn.open_table(CONSUMERS)
                    .map_err(|e| unavailable("opening", e))?;
                let records = txn
                    .open_table(RECORDS)
                    .map_err(|e| unavailable("opening", e))?;
                let meta = txn
                    .open_table(META)
                    .map_err(|e| unavailable("opening", e))?;
                let stored = meta
                    .get("next")
                    .map_err(|e| unavailable("opening", e))?
                    .map(|v| v.value());
                let last = records
                    .last()
                    .map_err(|e| unavailable("opening", e))?
                    .map(|(k, _)| k.value() + 1);
                stored.max(last).unwrap_or(0)
            };
            txn.commit().map_err(|e| unavailable("opening", e))?;
            next
        };
        let db = Arc::new(db);
        let (writer, queue) = mpsc::channel(QUEUE);
        let (committed_tx, committed) = watch::channel(next);
        let writer_db = Arc::clone(&db);
        let writer_thread = std::thread::Builder::new()
            .name("alleycat-stream-writer".into())
            .spawn(move || write_loop(&writer_db, queue, next, &committed_tx))
            .map_err(|e| unavailable("starting the writer", e))?;
        Ok(EmbeddedStream {
            inner: Arc::new(Inner {
                db,
                writer: Some(writer),
                writer_thread: Some(writer_thread),
                committed,
            }),
        })
    }

    async fn send(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), StreamError>>) -> WriteOp,
    ) -> Result<(), StreamError> {
        let (ack, done) = oneshot::channel();
        let writer = self.inner.writer.as_ref().ok_or(StreamError::Closed)?;
        writer
            .send(op(ack))
            .await
            .map_err(|_| StreamError::Closed)?;
        done.await.map_err(|_| StreamError::Closed)?
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StreamError {
    StreamError::Unavailable(format!("{what}: {e}"))
}

/// The writer thread: one transaction and one fsync per group of queued ops.
fn write_loop(
    db: &Arc<Database>,
    mut queue: mpsc::Receiver<WriteOp>,
    mut next: u64,
    committed: &watch::Sender<u64>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(op) = queue.blocking_recv() {
        group.push(op);
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(op) => group.push(op),
                Err(_) => break,
            }
        }
        match commit_group(db, &group, next) {
            Ok(new_next) => {
                next = new_next;
                // Publish before acking: an acknowledged record is readable.
                committed.send_replace(next);
                for op in group.drain(..) {
                    op.ack(Ok(()));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "embedded stream commit failed");
                for op in group.drain(..) {
                    op.ack(Err(StreamError::Unavailable(e.to_string())));
                }
            }
        }
    }
}

fn commit_group(db: &Database, group: &[WriteOp], mut next: u64) -> Result<u64, redb::Error> {
    let arrival_ms = chrono::Utc::now().timestamp_millis();
    let txn = db.begin_write()?;
    {
        let mut records = txn.open_table(RECORDS)?;
        let mut consumers = txn.open_table(CONSUMERS)?;
        let mut pending = txn.open_table(PENDING)?;
        let mut trim = false;
        let mut value = Vec::new();
        for op in group {
            match op {
                WriteOp::Append { records: batch, .. } => {
                    for data in batch {
                        value.clear();
                        value.extend_from_slice(&arrival_ms.to_le_bytes());
                        value.extend_from_slice(data);
                        records.insert(next, value.as_slice())?;
                        next += 1;
                    }
                }
                WriteOp::Checkpoint {
                    consumer,
                    next: position,
                    ..
                } => {
                    let current = consumers.get(consumer.as_str())?.map(|v| v.value());
                    // Checkpoints only move forward.
                    if current.is_none_or(|c| c < *position) {
                        consumers.insert(consumer.as_str(), *position)?;
                        pending.remove(consumer.as_str())?;
                        trim = true;
                    }
                }
                WriteOp::BeginDelivery {
                    consumer, delivery, ..
                } => {
                    pending.insert(consumer.as_str(), delivery.as_slice())?;
                }
            }
        }
        if trim {
            let mut low = u64::MAX;
            for entry in consumers.iter()? {
                low = low.min(entry?.1.value());
            }
            records.retain_in(..low, |_, _| false)?;
        }
        txn.open_table(META)?.insert("next", next)?;
    }
    txn.commit()?;
    Ok(next)
}

#[async_trait]
impl Stream for EmbeddedStream {
    async fn put_records(&self, records: Vec<PutRecord>) -> Result<(), StreamError> {
        if records.is_empty() {
            return Ok(());
        }
        let records = records.into_iter().map(|r| r.data).collect();
        self.send(|ack| WriteOp::Append { records, ack }).await
    }

    async fn subscribe(&self, consumer: &str) -> Result<Box<dyn Subscription>, StreamError> {
        let db = Arc::clone(&self.inner.db);
        let name = consumer.to_owned();
        let start = tokio::task::spawn_blocking(move || -> Result<Option<u64>, redb::Error> {
            let txn = db.begin_read()?;
            if let Some(next) = txn.open_table(CONSUMERS)?.get(name.as_str())? {
                return Ok(Some(next.value()));
            }
            Ok(txn.open_table(RECORDS)?.first()?.map(|(k, _)| k.value()))
        })
        .await
        .map_err(|e| unavailable("subscribing", e))?
        .map_err(|e| unavailable("subscribing", e))?;
        let start = start.unwrap_or(*self.inner.committed.borrow());
        // Registering holds back trimming of what this consumer has not read.
        self.send(|ack| WriteOp::Checkpoint {
            consumer: consumer.to_owned(),
            next: start,
            ack,
        })
        .await?;
        Ok(Box::new(EmbeddedSubscription {
            stream: self.clone(),
            consumer: consumer.to_owned(),
            next: start,
        }))
    }
}

struct EmbeddedSubscription {
    stream: EmbeddedStream,
    consumer: String,
    next: u64,
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<StreamRecord>, StreamError> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut committed = self.stream.inner.committed.clone();
        let end = loop {
            let end = *committed.borrow_and_update();
            if end > self.next {
                break end;
            }
            match tokio::time::timeout_at(deadline, committed.changed()).await {
                Err(_elapsed) => return Ok(Vec::new()),
                Ok(Err(_closed)) => return Err(StreamError::Closed),
                Ok(Ok(())) => {}
            }
        };
        let db = Arc::clone(&self.stream.inner.db);
        let from = self.next;
        let to = end.min(from.saturating_add(max.max(1) as u64));
        let records = tokio::task::spawn_blocking(move || read_range(&db, from, to))
            .await
            .map_err(|e| unavailable("reading", e))?
            .map_err(|e| unavailable("reading", e))?;
        // Advanced only once the read completed: dropping this future skips nothing.
        self.next = to;
        Ok(records)
    }

    async fn checkpoint(
        &mut self,
        shard_id: &str,
        sequence: &SequenceNumber,
    ) -> Result<(), StreamError> {
        check_shard(shard_id)?;
        let sequence = sequence
            .to_u64()
            .ok_or_else(|| StreamError::InvalidCheckpoint(format!("bad sequence {sequence}")))?;
        let consumer = self.consumer.clone();
        self.stream
            .send(|ack| WriteOp::Checkpoint {
                consumer,
                next: sequence + 1,
                ack,
            })
            .await
    }

    async fn begin_delivery(
        &mut self,
        shard_id: &str,
        delivery: &PendingDelivery,
    ) -> Result<(), StreamError> {
        check_shard(shard_id)?;
        let consumer = self.consumer.clone();
        let delivery = serde_json::to_vec(delivery).expect("a pending delivery serializes");
        self.stream
            .send(|ack| WriteOp::BeginDelivery {
                consumer,
                delivery,
                ack,
            })
            .await
    }

    async fn pending_delivery(
        &mut self,
        shard_id: &str,
    ) -> Result<Option<PendingDelivery>, StreamError> {
        check_shard(shard_id)?;
        let db = Arc::clone(&self.stream.inner.db);
        let consumer = self.consumer.clone();
        let stored =
            tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>, redb::Error> {
                let txn = db.begin_read()?;
                Ok(txn
                    .open_table(PENDING)?
                    .get(consumer.as_str())?
                    .map(|v| v.value().to_vec()))
            })
            .await
            .map_err(|e| unavailable("reading", e))?
            .map_err(|e| unavailable("reading", e))?;
        stored
            .map(|json| {
                serde_json::from_slice(&json)
                    .map_err(|e| unavailable("decoding a pending delivery", e))
            })
            .transpose()
    }
}

fn check_shard(shard_id: &str) -> Result<(), StreamError> {
    if shard_id == SHARD_ID {
        Ok(())
    } else {
        Err(StreamError::InvalidCheckpoint(format!(
            "unknown shard {shard_id:?}"
        )))
    }
}

fn read_range(db: &Database, from: u64, to: u64) -> Result<Vec<StreamRecord>, redb::Error> {
    let txn = db.begin_read()?;
    let table = txn.open_table(RECORDS)?;
    let mut out = Vec::with_capacity((to - from) as usize);
    for entry in table.range(from..to)? {
        let (key, value) = entry?;
        let value = value.value();
        let (arrival, data) = value.split_at(8);
        out.push(StreamRecord {
            shard_id: SHARD_ID.to_owned(),
            sequence: SequenceNumber::from(key.value()),
            arrival_ms: i64::from_le_bytes(arrival.try_into().expect("8 bytes")),
            data: Bytes::copy_from_slice(data),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableTableMetadata as _;

    fn put(data: &str) -> PutRecord {
        PutRecord {
            partition_key: "1".into(),
            data: Bytes::copy_from_slice(data.as_bytes()),
        }
    }

    fn datas(records: &[StreamRecord]) -> Vec<&[u8]> {
        records.iter().map(|r| r.data.as_ref()).collect()
    }

    const WAIT: Duration = Duration::from_millis(200);

    #[tokio::test]
    async fn consumers_read_in_order_and_resume_from_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        {
            let stream = EmbeddedStream::open(dir.path()).unwrap();
            let mut sub = stream.subscribe("t").await.unwrap();
            stream
                .put_records(vec![put("a"), put("b"), put("c")])
                .await
                .unwrap();
            let got = sub.poll(2, WAIT).await.unwrap();
            assert_eq!(datas(&got), [b"a", b"b"]);
            assert_eq!(got[0].sequence.to_string(), "00000000000000000000");
            assert!(got[0].arrival_ms > 1_600_000_000_000);
            sub.checkpoint(SHARD_ID, &got[0].sequence).await.unwrap();
            assert_eq!(datas(&sub.poll(10, WAIT).await.unwrap()), [b"c"]);
            assert!(
                sub.poll(10, Duration::from_millis(20))
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
        // Reopened: the consumer resumes after its checkpoint ("a").
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let mut sub = stream.subscribe("t").await.unwrap();
        assert_eq!(datas(&sub.poll(10, WAIT).await.unwrap()), [b"b", b"c"]);
        stream.put_records(vec![put("d")]).await.unwrap();
        let d = sub.poll(10, WAIT).await.unwrap();
        assert_eq!(
            d[0].sequence.to_string(),
            "00000000000000000003",
            "sequences continue after reopen"
        );
    }

    #[tokio::test]
    async fn poll_wakes_up_when_records_arrive() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let mut sub = stream.subscribe("t").await.unwrap();
        let writer = stream.clone();
        let put_later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            writer.put_records(vec![put("late")]).await.unwrap();
        });
        let got = sub.poll(10, Duration::from_secs(5)).await.unwrap();
        assert_eq!(datas(&got), [b"late"]);
        put_later.await.unwrap();
    }

    #[tokio::test]
    async fn each_consumer_has_its_own_position_and_trimming_waits_for_the_slowest() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let mut fast = stream.subscribe("fast").await.unwrap();
        let mut slow = stream.subscribe("slow").await.unwrap();
        stream
            .put_records((0..5).map(|i| put(&i.to_string())).collect())
            .await
            .unwrap();
        let all = fast.poll(10, WAIT).await.unwrap();
        fast.checkpoint(SHARD_ID, &all[4].sequence).await.unwrap();
        // "slow" has checkpointed nothing: every record must still be there.
        assert_eq!(slow.poll(10, WAIT).await.unwrap().len(), 5);
        let count = || {
            let txn = stream.inner.db.begin_read().unwrap();
            txn.open_table(RECORDS).unwrap().len().unwrap()
        };
        assert_eq!(count(), 5);
        slow.checkpoint(SHARD_ID, &all[2].sequence).await.unwrap();
        assert_eq!(count(), 2, "records both consumers passed are dropped");
        slow.checkpoint(SHARD_ID, &all[1].sequence).await.unwrap();
        assert_eq!(count(), 2, "checkpoints never move back");
        // A new consumer starts at the oldest record kept.
        let mut late = stream.subscribe("late").await.unwrap();
        assert_eq!(datas(&late.poll(10, WAIT).await.unwrap()), [b"3", b"4"]);
    }

    #[tokio::test]
    async fn concurrent_appends_are_all_stored_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let tasks: Vec<_> = (0..50)
            .map(|t| {
                let s = stream.clone();
                tokio::spawn(async move {
                    for i in 0..20 {
                        s.put_records(vec![put(&format!("{t}-{i}"))]).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let mut sub = stream.subscribe("t").await.unwrap();
        let got = sub.poll(10_000, WAIT).await.unwrap();
        let mut seen: Vec<_> = got.iter().map(|r| r.data.clone()).collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 1000);
    }

    #[tokio::test]
    async fn a_second_process_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let _first = EmbeddedStream::open(dir.path()).unwrap();
        let err = EmbeddedStream::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("already open"), "{err}");
    }

    #[tokio::test]
    async fn a_pending_delivery_survives_a_reopen_until_the_next_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let pending = PendingDelivery {
            key: "2026/11/26/10/x.gz".into(),
            first: SequenceNumber::from(0),
            last: SequenceNumber::from(1),
        };
        {
            let stream = EmbeddedStream::open(dir.path()).unwrap();
            let mut sub = stream.subscribe("t").await.unwrap();
            assert_eq!(sub.pending_delivery(SHARD_ID).await.unwrap(), None);
            stream.put_records(vec![put("a"), put("b")]).await.unwrap();
            sub.begin_delivery(SHARD_ID, &pending).await.unwrap();
        }
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let mut sub = stream.subscribe("t").await.unwrap();
        assert_eq!(
            sub.pending_delivery(SHARD_ID).await.unwrap(),
            Some(pending.clone())
        );
        let mut other = stream.subscribe("other").await.unwrap();
        assert_eq!(
            other.pending_delivery(SHARD_ID).await.unwrap(),
            None,
            "per consumer"
        );
        sub.checkpoint(SHARD_ID, &pending.last).await.unwrap();
        assert_eq!(sub.pending_delivery(SHARD_ID).await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_checkpoints_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let mut sub = stream.subscribe("t").await.unwrap();
        assert!(
            sub.checkpoint("shard-9", &SequenceNumber::from(1))
                .await
                .is_err()
        );
        let beyond_u64 = "18446744073709551616".parse().unwrap();
        assert!(sub.checkpoint(SHARD_ID, &beyond_u64).await.is_err());
    }
}
