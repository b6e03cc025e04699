//! The embedded stream: one shard in a redb database under the data dir.
//!
//! Appends are group-committed: a single writer thread drains every append
//! waiting in its queue into one write transaction and one fsync, then acks
//! them all, so the fsync cost is shared by every concurrent request. Readers
//! only ever see committed records, so whatever a consumer read has been
//! acknowledged and is durable. Consumer offsets live in the same database;
//! records every registered consumer has checkpointed past are deleted.
//!
//! # Faults
//!
//! The writer heals the stream by itself (see [`EmbeddedStream::health`]):
//!
//! - **A failed write** (a full disk, an I/O error): redb refuses every later
//!   call until the database is closed and opened again. The writer answers
//!   the group with an error (nothing of it was acknowledged), marks the
//!   stream broken (appends fail at once, readiness says why), closes the
//!   database once no reader holds it, and opens it again (redb repairs it
//!   to its last commit) with backoff from 50 ms to 1 s until that works.
//! - **The database file deleted or replaced** (the data directory removed
//!   while running): a commit into an unlinked file is not durable, so the
//!   writer compares the path's inode with the open file's after every
//!   commit (and every second when idle) and refuses the group when they
//!   differ. The unlinked file is still readable through the writer's own
//!   handle, so it is copied back to the path (directories recreated, the
//!   copy fsynced and renamed into place) and reopened: every record
//!   acknowledged before the deletion, the consumers' checkpoints and the
//!   sequence numbers survive. Until that copy lands, appends are refused.
//!
//! Sequence numbers never go back, whatever the reopened file holds.

mod pack;
mod tail;

use super::{
    PendingDelivery, PutMetrics, PutRecord, SequenceNumber, Stream, StreamError, StreamRecord,
    Subscription,
};
use crate::freshness::Freshness;
use async_trait::async_trait;
use bytes::Bytes;
use redb::{
    Database, ReadableDatabase as _, ReadableTable as _, TableDefinition, TableHandle as _,
};
use std::fs::File;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};
use tail::{Appended, Tail};
use tokio::sync::{mpsc, oneshot, watch};

/// The embedded stream's only shard.
pub const SHARD_ID: &str = "shard-000000";

/// The database file in the stream's directory.
const FILE_NAME: &str = "stream.redb";
/// Where a rescued copy is written before it is renamed into place.
const RESCUE_NAME: &str = "stream.redb.rescue";

/// Sequence of a value's first record -> the records of a commit from
/// there, packed (see [`pack`]).
const RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("packed_records");
/// The layout before packing, one entry per record: sequence ->
/// `arrival_ms (i64 LE) ++ data`. Moved into [`RECORDS`] when a database
/// written by an earlier version is opened.
const UNPACKED_RECORDS: TableDefinition<u64, &[u8]> = TableDefinition::new("records");
/// Consumer name -> sequence of the next record it has not processed.
const CONSUMERS: TableDefinition<&str, u64> = TableDefinition::new("consumers");
/// "next" -> sequence the next appended record gets (survives trimming).
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Consumer name -> its pending delivery (JSON), until its next checkpoint.
const PENDING: TableDefinition<&str, &[u8]> = TableDefinition::new("pending");

/// Longest a gathering writer sleeps for more writes before it decides
/// none are coming: the pipeline bench's 16 clients, each waiting for the
/// commit, wait this long a commit (a quarter of a 20 ms linger, 5 ms,
/// halved that bench's ingest rate).
const QUIET_SLICE: Duration = Duration::from_micros(1250);
/// Most operations folded into one transaction.
const MAX_GROUP: usize = 4096;
/// Queue depth before appenders wait (backpressure).
const QUEUE: usize = 8192;
/// Page cache of the stream database (reads and the write buffer). Readers
/// close behind ingest read [`tail`]'s memory instead; one further behind
/// reads the stream once, so a cache of pages it already passed serves
/// nothing: in the stretch run the transformer reads about 4 s behind,
/// past 64 MiB, which the heap profile found full (README, "Where the
/// stretch run's memory goes").
const CACHE_BYTES: usize = 16 << 20;
/// First pause between attempts to reopen a broken database...
const REOPEN_FIRST: Duration = Duration::from_millis(50);
/// ...doubling up to this: how long a healed disk may wait to be noticed.
const REOPEN_CAP: Duration = Duration::from_secs(1);
/// How often an idle writer checks that its file is still in place.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Longest the writer waits for readers to let go of a database it closes.
const READERS_WAIT: Duration = Duration::from_secs(5);

/// A durable single-shard stream on local disk. Clones share the stream;
/// dropping the last one stops the writer and closes the database.
#[derive(Clone)]
pub struct EmbeddedStream {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    writer: Option<mpsc::Sender<WriteOp>>,
    writer_thread: Option<std::thread::JoinHandle<()>>,
    committed: watch::Receiver<u64>,
    put_metrics: PutMetrics,
    reads: Reads,
    /// Where consumers' lag is reported, if anywhere.
    freshness: OnceLock<Arc<Freshness>>,
}

/// Records read by consumers, by where they came from: a reader that
/// falls behind the in-memory tail reads the database (and parses again).
struct Reads {
    memory: metrics::Counter,
    database: metrics::Counter,
}

impl Reads {
    fn new() -> Reads {
        let read = |from: &'static str| metrics::counter!("alleycat_stream_records_read_total", "from" => from);
        Reads {
            memory: read("memory"),
            database: read("database"),
        }
    }
}

/// What the handles and the writer thread share.
struct Shared {
    /// The database file.
    path: PathBuf,
    /// The open database; `None` while the writer reopens it.
    db: RwLock<Option<Arc<Database>>>,
    /// Why the stream cannot take records now; `None` when it can.
    problem: Mutex<Option<String>>,
    /// Device and inode of the open file, to tell when the path no longer
    /// leads to it.
    identity: Mutex<Option<(u64, u64)>>,
    /// Set when the last handle is dropped: the writer stops.
    closing: AtomicBool,
    /// The newest committed records, which readers close behind take
    /// from memory.
    tail: Mutex<Tail>,
    /// Transactions committed, for the tests to read (the service counts
    /// them in `alleycat_stream_commits_total`).
    #[cfg(test)]
    commits: std::sync::atomic::AtomicU64,
    /// Faults the unit tests inject.
    #[cfg(test)]
    faults: tests::Faults,
}

impl Shared {
    fn db(&self) -> Result<Arc<Database>, StreamError> {
        let db = self
            .db
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        db.as_ref().map(Arc::clone).ok_or_else(|| {
            StreamError::Unavailable(self.problem().unwrap_or_else(|| "reopening".to_owned()))
        })
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn problem(&self) -> Option<String> {
        self.problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn set_problem(&self, problem: Option<String>) {
        let mut current = self
            .problem
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match (&*current, &problem) {
            (None, Some(p)) => {
                tracing::error!(problem = %p, "embedded stream broken; refusing records until it heals")
            }
            (Some(_), None) => tracing::info!("embedded stream healed; taking records again"),
            _ => {}
        }
        *current = problem;
    }

    /// Whether the path still leads to the file the database has open.
    fn check_in_place(&self) -> Result<(), String> {
        let expected = *self
            .identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Some(expected) = expected else {
            return Ok(());
        };
        match std::fs::metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) == expected => Ok(()),
            Ok(_) => Err(format!(
                "the stream database {} was replaced by another file while open",
                self.path.display()
            )),
            Err(e) => Err(format!(
                "the stream database {} is gone ({e}): its directory was deleted or moved while open",
                self.path.display()
            )),
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue ends the writer loop; joining it releases the
        // database file, so the same process can reopen it (a restart).
        self.shared.closing.store(true, Ordering::SeqCst);
        self.writer.take();
        if let Some(thread) = self.writer_thread.take() {
            thread.thread().unpark();
            let _ = thread.join();
        }
    }
}

enum WriteOp {
    Append {
        records: Vec<Appended>,
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

/// The open file's own handle: the way back to its bytes if its path is
/// deleted, and its identity.
struct OpenFile {
    file: File,
    id: (u64, u64),
}

impl OpenFile {
    fn open(path: &Path) -> std::io::Result<OpenFile> {
        let file = File::open(path)?;
        let meta = file.metadata()?;
        Ok(OpenFile {
            file,
            id: (meta.dev(), meta.ino()),
        })
    }
}

impl EmbeddedStream {
    /// Opens (creating if needed) the stream in `dir`, committing each
    /// write as soon as the writer is free. Only one process may have it
    /// open at a time.
    pub fn open(dir: &Path) -> Result<EmbeddedStream, StreamError> {
        EmbeddedStream::open_lingering(dir, Duration::ZERO)
    }

    /// Opens the stream in `dir`; the writer gathers writes for up to
    /// `linger` after the first of a group, while they keep coming, before
    /// committing them together. A commit costs two fsyncs and a dozen page
    /// writes whatever its size, so under load a few milliseconds save most
    /// of them (README, "Group commit"), for at most that much latency.
    pub fn open_lingering(dir: &Path, linger: Duration) -> Result<EmbeddedStream, StreamError> {
        let path = dir.join(FILE_NAME);
        create_dirs(dir).map_err(|e| unavailable("creating the stream directory", e))?;
        // A file left by a rescue that did not finish was never renamed into
        // place: the database it copied is the one at `path`, or gone.
        let _ = std::fs::remove_file(dir.join(RESCUE_NAME));
        let (db, next) = open_db(&path, 0).map_err(|e| match e {
            OpenError::Database(redb::DatabaseError::DatabaseAlreadyOpen) => {
                StreamError::Unavailable(
                    "the embedded stream is already open in another process; run the services \
                     in one process (`alleycat`), or use Kinesis (ALLEYCAT_STREAM=kinesis) to run \
                     them apart"
                        .to_owned(),
                )
            }
            e => unavailable("opening the stream database", e),
        })?;
        let open_file = OpenFile::open(&path).map_err(|e| unavailable("opening", e))?;
        let shared = Arc::new(Shared {
            path,
            db: RwLock::new(Some(Arc::new(db))),
            problem: Mutex::new(None),
            identity: Mutex::new(Some(open_file.id)),
            closing: AtomicBool::new(false),
            tail: Mutex::new(Tail::new(tail::TAIL_BYTES)),
            #[cfg(test)]
            commits: std::sync::atomic::AtomicU64::new(0),
            #[cfg(test)]
            faults: tests::Faults::default(),
        });
        let (writer, queue) = mpsc::channel(QUEUE);
        let (committed_tx, committed) = watch::channel(next);
        let mut state = Writer {
            shared: Arc::clone(&shared),
            queue,
            committed: committed_tx,
            next,
            open_file: Some(open_file),
            commits: metrics::counter!("alleycat_stream_commits_total"),
            commit_seconds: metrics::histogram!("alleycat_stream_commit_seconds"),
            linger,
        };
        let writer_thread = std::thread::Builder::new()
            .name("alleycat-stream-writer".into())
            .spawn(move || state.run())
            .map_err(|e| unavailable("starting the writer", e))?;
        Ok(EmbeddedStream {
            inner: Arc::new(Inner {
                shared,
                writer: Some(writer),
                writer_thread: Some(writer_thread),
                committed,
                put_metrics: PutMetrics::new(),
                reads: Reads::new(),
                freshness: OnceLock::new(),
            }),
        })
    }

    /// Reports its consumers' lag to `freshness` (the first one given).
    #[must_use]
    pub fn reporting_to(self, freshness: Arc<Freshness>) -> EmbeddedStream {
        let _ = self.inner.freshness.set(freshness);
        self
    }

    /// `Ok` when the stream takes records now, else why not: a write failed
    /// and the database is being reopened, or its file was deleted. Cheap
    /// (a lock and a `stat`): readiness probes ask it.
    pub fn health(&self) -> Result<(), String> {
        if let Some(problem) = self.inner.shared.problem() {
            return Err(problem);
        }
        self.inner.shared.check_in_place().inspect_err(|_| {
            // Let the writer see to it now rather than at its next check.
            self.wake_writer();
        })
    }

    fn wake_writer(&self) {
        if let Some(thread) = &self.inner.writer_thread {
            thread.thread().unpark();
        }
    }

    async fn send(
        &self,
        op: impl FnOnce(oneshot::Sender<Result<(), StreamError>>) -> WriteOp,
    ) -> Result<(), StreamError> {
        // A broken stream refuses at once: nothing would be stored.
        if let Some(problem) = self.inner.shared.problem() {
            return Err(StreamError::Unavailable(problem));
        }
        let (ack, done) = oneshot::channel();
        let writer = self.inner.writer.as_ref().ok_or(StreamError::Closed)?;
        writer
            .send(op(ack))
            .await
            .map_err(|_| StreamError::Closed)?;
        self.wake_writer();
        done.await.map_err(|_| StreamError::Closed)?
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> StreamError {
    StreamError::Unavailable(format!("{what}: {e}"))
}

/// Creates `dir` and its missing ancestors, each made durable in its parent.
fn create_dirs(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        create_dirs(parent)?;
    }
    match std::fs::create_dir(dir) {
        Ok(()) => sync_parent(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes `path`'s entry in its directory durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => File::open(parent)?.sync_all(),
        None => File::open(".")?.sync_all(),
    }
}

#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error(transparent)]
    Database(#[from] redb::DatabaseError),
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Malformed(#[from] pack::Malformed),
    #[error("record {0} of the unpacked layout is shorter than its arrival time")]
    Unpacked(u64),
}

/// Why a commit or a read failed.
#[derive(Debug, thiserror::Error)]
enum DbError {
    #[error(transparent)]
    Redb(#[from] redb::Error),
    #[error(transparent)]
    Malformed(#[from] pack::Malformed),
}

/// redb's narrower error types, each into the `Redb` variant of `$target`.
macro_rules! from_redb_errors {
    ($($target:ty),*) => {$(
        from_redb_errors!(@each $target: redb::TransactionError, redb::TableError, redb::StorageError, redb::CommitError);
    )*};
    (@each $target:ty: $($error:ty),*) => {$(
        impl From<$error> for $target {
            fn from(e: $error) -> Self {
                Self::Redb(e.into())
            }
        }
    )*};
}
from_redb_errors!(OpenError, DbError);

/// Opens (creating, or repairing to its last commit) the database at `path`
/// and returns it with the sequence the next record gets: never below
/// `at_least`, so that sequences never go back.
fn open_db(path: &Path, at_least: u64) -> Result<(Database, u64), OpenError> {
    // redb's page cache defaults to 1 GiB; the stream is read once, at
    // its tail, so a small cache serves it.
    let db = Database::builder()
        .set_cache_size(CACHE_BYTES)
        .create(path)?;
    // One commit: proves the file takes writes again after a fault.
    let txn = db.begin_write()?;
    let next = {
        // Creating the tables here lets readers open them unconditionally.
        txn.open_table(CONSUMERS)?;
        txn.open_table(PENDING)?;
        let mut records = txn.open_table(RECORDS)?;
        pack_unpacked_records(&txn, &mut records)?;
        let mut meta = txn.open_table(META)?;
        let stored = meta.get("next")?.map(|v| v.value());
        let last = match records.last()? {
            Some((key, value)) => Some(key.value() + pack::count(value.value())?),
            None => None,
        };
        let next = stored.max(last).unwrap_or(0).max(at_least);
        meta.insert("next", next)?;
        next
    };
    txn.commit()?;
    // A database file just created is durable only once its entry is.
    sync_parent(path)?;
    Ok((db, next))
}

/// Moves the records of a database written before records were packed
/// into `records`, in the transaction that opens it: all or nothing.
fn pack_unpacked_records(
    txn: &redb::WriteTransaction,
    records: &mut redb::Table<u64, &[u8]>,
) -> Result<(), OpenError> {
    if !txn
        .list_tables()?
        .any(|t| t.name() == UNPACKED_RECORDS.name())
    {
        return Ok(());
    }
    {
        let unpacked = txn.open_table(UNPACKED_RECORDS)?;
        // Packed a value at a time, so that memory stays bounded whatever
        // the backlog; a gap in the sequences (none is expected) starts a
        // value of its own, as a value's records are consecutive.
        let mut run: Vec<(u64, i64, Vec<u8>)> = Vec::new();
        let mut run_bytes = 0;
        let mut flush = |run: &mut Vec<(u64, i64, Vec<u8>)>| -> Result<(), redb::StorageError> {
            if let Some(&(first, ..)) = run.first() {
                pack::pack(
                    first,
                    run.iter()
                        .map(|(_, arrival, data)| (*arrival, data.as_slice())),
                    |key, value| records.insert(key, value).map(drop),
                )?;
            }
            run.clear();
            Ok(())
        };
        for entry in unpacked.iter()? {
            let (key, value) = entry?;
            let (sequence, value) = (key.value(), value.value());
            let (arrival, data) = value
                .split_at_checked(8)
                .ok_or(OpenError::Unpacked(sequence))?;
            let arrival = i64::from_le_bytes(arrival.try_into().expect("8 bytes"));
            if run.last().is_some_and(|(last, ..)| last + 1 != sequence)
                || run_bytes >= pack::PACK_BYTES
            {
                flush(&mut run)?;
                run_bytes = 0;
            }
            run_bytes += data.len();
            run.push((sequence, arrival, data.to_vec()));
        }
        flush(&mut run)?;
    }
    txn.delete_table(UNPACKED_RECORDS)?;
    tracing::info!("embedded stream: records of an earlier version packed");
    Ok(())
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    queue: mpsc::Receiver<WriteOp>,
    committed: watch::Sender<u64>,
    /// Sequence of the next record appended.
    next: u64,
    /// Our own handle on the database file (`None` only if reopening the
    /// file failed after the database was opened).
    open_file: Option<OpenFile>,
    /// Transactions committed.
    commits: metrics::Counter,
    /// How long each committed transaction took, fsync included: every
    /// acknowledgement of its group waited that long, so a slow disk shows
    /// here before it shows as ingest latency.
    commit_seconds: metrics::Histogram,
    /// How long a group gathers writes before its commit.
    linger: Duration,
}

impl Writer {
    /// One transaction and one fsync per group of queued ops.
    fn run(&mut self) {
        let mut group = Vec::with_capacity(MAX_GROUP);
        let mut checked = Instant::now();
        loop {
            if self.shared.closing.load(Ordering::SeqCst) {
                break;
            }
            match self.queue.try_recv() {
                Ok(op) => group.push(op),
                Err(mpsc::error::TryRecvError::Empty) => {
                    // Appenders unpark this thread after queueing.
                    std::thread::park_timeout(IDLE_CHECK);
                    if checked.elapsed() >= IDLE_CHECK {
                        checked = Instant::now();
                        if let Err(problem) = self.shared.check_in_place() {
                            self.recover(problem);
                        }
                    }
                    continue;
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
            // Gather: take what is queued, then, while writes keep coming,
            // sleep a slice and take them, for at most the linger. A slice
            // that brings nothing ends it: the writers are all waiting for
            // this commit (a few clients, or a lone write), and waiting
            // longer would only delay them. The slice is short whatever the
            // linger (a quarter of it, at most `QUIET_SLICE`): a long
            // linger gathers more only while writes keep coming, and never
            // makes closed-loop writers wait a long quiet slice. Sleeps, not
            // parks: appenders unpark this thread as they queue, and being
            // woken for each of them would cost more than the commits saved.
            let gather_until = Instant::now() + self.linger;
            let slice = (self.linger / 4).clamp(Duration::from_micros(100), QUIET_SLICE);
            let mut slept = false;
            loop {
                let before = group.len();
                while group.len() < MAX_GROUP {
                    match self.queue.try_recv() {
                        Ok(op) => group.push(op),
                        Err(_) => break,
                    }
                }
                let now = Instant::now();
                let quiet = slept && group.len() == before;
                if quiet
                    || self.linger.is_zero()
                    || group.len() >= MAX_GROUP
                    || now >= gather_until
                    || self.shared.closing.load(Ordering::SeqCst)
                {
                    break;
                }
                std::thread::sleep(slice.min(gather_until - now));
                slept = true;
            }
            #[cfg(test)]
            let group_fails = self.shared.faults.fail_commit();
            #[cfg(not(test))]
            let group_fails = false;
            let commit_started = Instant::now();
            let committed = self
                .shared
                .db()
                .map_err(|e| e.to_string())
                .and_then(|db| {
                    if group_fails {
                        Err("injected I/O error".to_owned())
                    } else {
                        Ok(db)
                    }
                })
                .and_then(|db| commit_group(&db, &group, self.next).map_err(|e| e.to_string()));
            match committed {
                Ok((new_next, arrival_ms)) => {
                    self.commit_seconds.record(commit_started.elapsed());
                    self.commits.increment(1);
                    #[cfg(test)]
                    self.shared.commits.fetch_add(1, Ordering::Relaxed);
                    // Readable (the records are in the open file), but only
                    // durable if that file is still the one at the path.
                    // In the tail before readers hear of them.
                    self.shared
                        .tail()
                        .extend(self.next, arrival_ms, appended(&group));
                    self.next = new_next;
                    self.committed.send_replace(new_next);
                    checked = Instant::now();
                    match self.shared.check_in_place() {
                        Ok(()) => {
                            for op in group.drain(..) {
                                op.ack(Ok(()));
                            }
                        }
                        Err(problem) => {
                            // Broken before anyone hears of it: a retry is
                            // refused until the stream has healed.
                            self.shared.set_problem(Some(problem.clone()));
                            for op in group.drain(..) {
                                op.ack(Err(StreamError::Unavailable(problem.clone())));
                            }
                            self.recover(problem);
                        }
                    }
                }
                Err(e) => {
                    let problem = format!("a write to the stream database failed: {e}");
                    self.shared.set_problem(Some(problem.clone()));
                    for op in group.drain(..) {
                        op.ack(Err(StreamError::Unavailable(problem.clone())));
                    }
                    self.recover(problem);
                }
            }
        }
    }

    /// Marks the stream broken and reopens it, with backoff, until that
    /// works or the stream is closed. Ops queued meanwhile are refused.
    fn recover(&mut self, problem: String) {
        self.shared.set_problem(Some(problem.clone()));
        let mut pause = REOPEN_FIRST;
        let mut attempts = 0u32;
        let started = Instant::now();
        loop {
            while let Ok(op) = self.queue.try_recv() {
                op.ack(Err(StreamError::Unavailable(problem.clone())));
            }
            if self.shared.closing.load(Ordering::SeqCst) {
                return;
            }
            attempts += 1;
            match self.reopen() {
                Ok(()) => {
                    tracing::info!(attempts, took = ?started.elapsed(), next = self.next, "embedded stream reopened");
                    self.shared.set_problem(None);
                    return;
                }
                Err(e) => {
                    let problem = format!("{problem}; reopening failed, retrying: {e}");
                    if attempts == 1 || attempts.is_power_of_two() {
                        tracing::warn!(attempts, error = %e, "reopening the embedded stream failed; retrying");
                    }
                    self.shared.set_problem(Some(problem));
                }
            }
            std::thread::park_timeout(pause);
            pause = (pause * 2).min(REOPEN_CAP);
        }
    }

    /// Closes the database and opens it again; first copies it back into
    /// place if its path no longer leads to it.
    fn reopen(&mut self) -> Result<(), String> {
        #[cfg(test)]
        if self.shared.faults.reopen_blocked.load(Ordering::SeqCst) {
            return Err("injected: the disk is still full".to_owned());
        }
        if let (Err(gone), Some(open_file)) = (self.shared.check_in_place(), &self.open_file) {
            self.rescue(open_file)
                .map_err(|e| format!("{gone}; copying it back failed: {e}"))?;
            tracing::warn!(path = %self.shared.path.display(), "copied the deleted stream database back into place");
        }
        self.close_db()?;
        let (db, next) = open_db(&self.shared.path, self.next).map_err(|e| e.to_string())?;
        let open_file = OpenFile::open(&self.shared.path).map_err(|e| e.to_string())?;
        *self
            .shared
            .identity
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(open_file.id);
        self.open_file = Some(open_file);
        *self
            .shared
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(db));
        self.next = next;
        self.shared.tail().clear();
        self.committed.send_replace(next);
        Ok(())
    }

    /// Copies the open (deleted) file to a new file at the path: written
    /// aside, fsynced, renamed into place, the directory fsynced. The
    /// writer is this thread, so no commit runs meanwhile; the copy is the
    /// file as of its last commit, which redb opens as after a crash.
    fn rescue(&self, open_file: &OpenFile) -> std::io::Result<()> {
        use std::io::Seek as _;
        let path = &self.shared.path;
        let dir = path.parent().expect("the database file is in a directory");
        create_dirs(dir)?;
        let aside = dir.join(RESCUE_NAME);
        let copy = || -> std::io::Result<()> {
            let mut out = File::create(&aside)?;
            let mut from = &open_file.file;
            from.seek(std::io::SeekFrom::Start(0))?;
            std::io::copy(&mut from, &mut out)?;
            out.sync_all()?;
            std::fs::rename(&aside, path)?;
            sync_parent(path)
        };
        copy().inspect_err(|_| {
            let _ = std::fs::remove_file(&aside);
        })
    }

    /// Closes the database once no reader holds it.
    fn close_db(&self) -> Result<(), String> {
        let taken = self
            .shared
            .db
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let Some(mut db) = taken else {
            return Ok(());
        };
        let deadline = Instant::now() + READERS_WAIT;
        loop {
            match Arc::try_unwrap(db) {
                Ok(db) => {
                    if let Err(e) = db.close() {
                        // Expected after an I/O error: the next open repairs.
                        tracing::debug!(error = %e, "closing the broken stream database");
                    }
                    return Ok(());
                }
                Err(shared) if Instant::now() < deadline => {
                    db = shared;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(shared) => {
                    *self
                        .shared
                        .db
                        .write()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(shared);
                    return Err(format!(
                        "readers held the database for more than {READERS_WAIT:?}"
                    ));
                }
            }
        }
    }
}

/// The records `group` appends, in queue order.
fn appended(group: &[WriteOp]) -> impl Iterator<Item = &Appended> {
    group.iter().flat_map(|op| match op {
        WriteOp::Append { records, .. } => records.as_slice(),
        _ => &[],
    })
}

/// Commits `group`, its records from sequence `next` on; returns the
/// sequence after them and the arrival time they were given.
fn commit_group(db: &Database, group: &[WriteOp], next: u64) -> Result<(u64, i64), DbError> {
    let arrival_ms = chrono::Utc::now().timestamp_millis();
    let txn = db.begin_write()?;
    let next = {
        let mut records = txn.open_table(RECORDS)?;
        let mut consumers = txn.open_table(CONSUMERS)?;
        let mut pending = txn.open_table(PENDING)?;
        // Appends first, in queue order: a checkpoint in the same group
        // names a record committed before it, so the order between them
        // does not matter.
        let next = pack::pack(
            next,
            appended(group).map(|(data, _)| (arrival_ms, data.as_ref())),
            |key, value| records.insert(key, value).map(drop),
        )?;
        let mut trim = false;
        for op in group {
            match op {
                WriteOp::Append { .. } => {}
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
            // Values go whole: the one holding `low` stays, and with it
            // the records before `low` that it packs.
            let keep_from = match records.range(..=low)?.next_back() {
                Some(entry) => {
                    let (key, value) = entry?;
                    let passed = key.value() + pack::count(value.value())? <= low;
                    key.value() + u64::from(passed)
                }
                None => 0,
            };
            records.retain_in(..keep_from, |_, _| false)?;
        }
        txn.open_table(META)?.insert("next", next)?;
        next
    };
    txn.commit()?;
    Ok((next, arrival_ms))
}

#[async_trait]
impl Stream for EmbeddedStream {
    async fn put_records(&self, records: Vec<PutRecord>) -> Result<(), StreamError> {
        if records.is_empty() {
            return Ok(());
        }
        let count = records.len();
        let records = records.into_iter().map(|r| (r.data, r.validated)).collect();
        let result = self.send(|ack| WriteOp::Append { records, ack }).await;
        self.inner.put_metrics.count(count, &result);
        result
    }

    async fn subscribe(&self, consumer: &str) -> Result<Box<dyn Subscription>, StreamError> {
        let db = self.inner.shared.db()?;
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

    async fn ready(&self) -> Result<(), StreamError> {
        self.health().map_err(StreamError::Unavailable)
    }
}

struct EmbeddedSubscription {
    stream: EmbeddedStream,
    consumer: String,
    next: u64,
}

impl EmbeddedSubscription {
    /// Reports the arrival of the oldest record not read yet, if any.
    fn report_unread(&self, oldest: Option<i64>) {
        if let Some(freshness) = self.stream.inner.freshness.get() {
            freshness.stream_unread(&self.consumer, SHARD_ID, oldest);
        }
    }
}

impl Drop for EmbeddedSubscription {
    fn drop(&mut self) {
        if let Some(freshness) = self.stream.inner.freshness.get() {
            freshness.stream_reader_stopped(&self.consumer, SHARD_ID);
        }
    }
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
                Err(_elapsed) => {
                    self.report_unread(None);
                    return Ok(Vec::new());
                }
                Ok(Err(_closed)) => return Err(StreamError::Closed),
                Ok(Ok(())) => {}
            }
        };
        let from = self.next;
        let to = end.min(from.saturating_add(max.max(1) as u64));
        // The record after the last one returned, if committed, tells the
        // consumer's lag: how long the oldest record it has not read waited.
        let peek = to < end;
        let in_memory = self.stream.inner.shared.tail().read(from, to, peek);
        let (records, unread) = match in_memory {
            Some(read) => {
                self.stream.inner.reads.memory.increment(to - from);
                read
            }
            None => {
                let db = self.stream.inner.shared.db()?;
                let read = tokio::task::spawn_blocking(move || read_range(&db, from, to, peek))
                    .await
                    .map_err(|e| unavailable("reading", e))?
                    .map_err(|e| unavailable("reading", e))?;
                self.stream.inner.reads.database.increment(to - from);
                read
            }
        };
        // Advanced only once the read completed: dropping this future skips nothing.
        self.next = to;
        self.report_unread(unread);
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
        let db = self.stream.inner.shared.db()?;
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

/// Record `sequence` of the shard as readers get it, from the database
/// or the tail.
fn stream_record(
    sequence: u64,
    arrival_ms: i64,
    data: Bytes,
    validated: Option<Arc<alleycat_core::validate::Validated>>,
) -> StreamRecord {
    StreamRecord {
        shard_id: SHARD_ID.to_owned(),
        sequence: SequenceNumber::from(sequence),
        arrival_ms,
        data,
        validated,
    }
}

/// The records `from..to`, and when `peek`, the arrival of record `to`.
fn read_range(
    db: &Database,
    from: u64,
    to: u64,
    peek: bool,
) -> Result<(Vec<StreamRecord>, Option<i64>), DbError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(RECORDS)?;
    // The value holding `from` starts at or before it.
    let start = match table.range(..=from)?.next_back() {
        Some(entry) => entry?.0.value(),
        None => from,
    };
    let mut out = Vec::with_capacity((to - from) as usize);
    for entry in table.range(start..)? {
        let (key, value) = entry?;
        for (sequence, record) in (key.value()..).zip(pack::unpack(value.value())?) {
            let (arrival_ms, data) = record?;
            if sequence >= to {
                return Ok((out, peek.then_some(arrival_ms)));
            }
            if sequence >= from {
                out.push(stream_record(
                    sequence,
                    arrival_ms,
                    Bytes::copy_from_slice(data),
                    None,
                ));
            }
        }
    }
    Ok((out, None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU32;

    /// Faults injected into the writer.
    #[derive(Default)]
    pub(super) struct Faults {
        /// Commits still to fail.
        failing_commits: AtomicU32,
        /// Reopening fails while set (the disk is still full).
        pub(super) reopen_blocked: AtomicBool,
    }

    impl Faults {
        pub(super) fn fail_commit(&self) -> bool {
            self.failing_commits
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        }
    }

    /// Waits (at most 10 s) until the stream says it takes records again.
    async fn healed(stream: &EmbeddedStream) -> Duration {
        let started = Instant::now();
        while let Err(problem) = stream.health() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "still broken: {problem}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        started.elapsed()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_within_the_linger_are_committed_together_and_each_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        // Far longer than spawning the puts takes: they all fall within it.
        let stream =
            EmbeddedStream::open_lingering(dir.path(), Duration::from_millis(300)).unwrap();
        let commits = || stream.inner.shared.commits.load(Ordering::Relaxed);
        let before = commits();
        let puts: Vec<_> = (0..50u32)
            .map(|i| {
                let stream = stream.clone();
                tokio::spawn(async move {
                    stream
                        .put_records(vec![PutRecord {
                            partition_key: i.to_string(),
                            data: Bytes::from(i.to_string()),
                            validated: None,
                        }])
                        .await
                })
            })
            .collect();
        for put in puts {
            put.await.unwrap().unwrap();
        }
        assert_eq!(commits() - before, 1, "one commit for the 50 puts");
        // All of them readable, once each.
        let mut sub = stream.subscribe("reader").await.unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            for record in sub.poll(100, WAIT).await.unwrap() {
                assert!(seen.insert(record.data.clone()), "read twice");
            }
            if seen.len() == 50 {
                break;
            }
        }
        assert_eq!(seen.len(), 50);
        // Without a linger, each lone write is committed at once.
        drop(sub);
        drop(stream);
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let before = stream.inner.shared.commits.load(Ordering::Relaxed);
        for i in 0..3u32 {
            stream
                .put_records(vec![PutRecord {
                    partition_key: "k".into(),
                    data: Bytes::from(i.to_string()),
                    validated: None,
                }])
                .await
                .unwrap();
        }
        assert_eq!(
            stream.inner.shared.commits.load(Ordering::Relaxed) - before,
            3
        );
    }

    fn refused(result: Result<(), StreamError>) -> String {
        match result {
            Err(StreamError::Unavailable(reason)) => reason,
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }

    fn put(data: &str) -> PutRecord {
        PutRecord {
            partition_key: "1".into(),
            data: Bytes::copy_from_slice(data.as_bytes()),
            validated: None,
        }
    }

    fn datas(records: &[StreamRecord]) -> Vec<&[u8]> {
        records.iter().map(|r| r.data.as_ref()).collect()
    }

    const WAIT: Duration = Duration::from_millis(200);

    /// Records kept in the database.
    fn stored(stream: &EmbeddedStream) -> u64 {
        let txn = stream.inner.shared.db().unwrap().begin_read().unwrap();
        let table = txn.open_table(RECORDS).unwrap();
        table
            .iter()
            .unwrap()
            .map(|entry| pack::count(entry.unwrap().1.value()).unwrap())
            .sum()
    }

    #[tokio::test]
    async fn records_committed_together_are_read_from_any_position_and_trimmed_together() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        // Read from the database, not the tail in memory.
        *stream.inner.shared.tail() = Tail::new(0);
        let mut reader = stream.subscribe("reader").await.unwrap();
        // Large enough to span several packed values, in one commit.
        let big = "x".repeat(100 << 10);
        let mut batch: Vec<PutRecord> = (0..10).map(|i| put(&format!("{i}{big}"))).collect();
        batch.push(put("last"));
        stream.put_records(batch).await.unwrap();
        stream.put_records(vec![put("later")]).await.unwrap();
        let mut read = Vec::new();
        // Polls of 3 start inside a packed value and end inside another.
        for _ in 0..5 {
            read.extend(reader.poll(3, WAIT).await.unwrap());
        }
        let firsts: Vec<u8> = read.iter().map(|r| r.data[0]).collect();
        assert_eq!(firsts, b"0123456789ll");
        assert_eq!(&read[10].data[..], b"last");
        assert_eq!(&read[11].data[..], b"later");
        let sequences: Vec<u64> = read.iter().map(|r| r.sequence.to_u64().unwrap()).collect();
        assert_eq!(sequences, (0..12).collect::<Vec<_>>());
        assert!(reader.poll(3, Duration::ZERO).await.unwrap().is_empty());

        // A checkpoint inside the first commit keeps the value holding it.
        reader
            .checkpoint(SHARD_ID, &read[4].sequence)
            .await
            .unwrap();
        let kept = stored(&stream);
        assert!((7..12).contains(&kept), "kept {kept} of 12");
        let mut late = stream.subscribe("late").await.unwrap();
        let first = late.poll(1, WAIT).await.unwrap();
        assert!(
            first[0].sequence.to_u64().unwrap() <= 5,
            "record 5 was trimmed"
        );
        late.checkpoint(SHARD_ID, &read[11].sequence).await.unwrap();
        reader
            .checkpoint(SHARD_ID, &read[11].sequence)
            .await
            .unwrap();
        assert_eq!(
            stored(&stream),
            0,
            "records every consumer passed are dropped"
        );
    }

    /// Readers close behind take the newest records from memory, with
    /// what ingest handed along; a reader the tail no longer covers (or
    /// after a reopen emptied it) reads the very same records from the
    /// database, without it, whatever the size of the polls. (The tail's
    /// own tests check the arrival a poll reports of the record after.)
    #[tokio::test]
    async fn the_tail_in_memory_serves_what_the_database_holds() {
        use alleycat_core::validate::{SensorLimits, Validated};
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let mut near = stream.subscribe("near").await.unwrap();
        let mut far = stream.subscribe("far").await.unwrap();
        let telemetry = SensorLimits::DEFAULT
            .parse_record(br#"{"event":"update","deviceTimestamp":1,"second":1,"raceId":1,"name":"A","racerId":1,"classId":1,"cadence":80,"resistance":50}"#)
            .unwrap();
        let mut handed = Vec::new();
        for commit in 0..5 {
            let batch: Vec<PutRecord> = (0..=commit)
                .map(|i| {
                    let mut record = put(&format!("{commit}.{i}"));
                    if i % 2 == 0 {
                        let validated = Arc::new(Validated {
                            telemetry: telemetry.clone(),
                            limits: SensorLimits::DEFAULT,
                        });
                        handed.push(validated.clone());
                        record.validated = Some(validated);
                    }
                    record
                })
                .collect();
            stream.put_records(batch).await.unwrap();
        }
        async fn read_all(sub: &mut Box<dyn Subscription>) -> Vec<StreamRecord> {
            let mut all = Vec::new();
            for max in [1, 2, 3, 5, 100] {
                all.extend(sub.poll(max, Duration::ZERO).await.unwrap());
            }
            all
        }
        let from_memory = read_all(&mut near).await;
        let memory_reads = stream.inner.shared.tail().read(0, 15, false);
        assert!(memory_reads.is_some(), "all 15 records are in the tail");
        stream.inner.shared.tail().clear();
        let from_disk = read_all(&mut far).await;
        assert_eq!(from_memory.len(), 15);
        let without = |records: &[StreamRecord]| -> Vec<StreamRecord> {
            records
                .iter()
                .map(|r| StreamRecord {
                    validated: None,
                    ..r.clone()
                })
                .collect()
        };
        assert_eq!(without(&from_memory), from_disk, "the same records");
        assert!(from_disk.iter().all(|r| r.validated.is_none()));
        let carried: Vec<_> = from_memory
            .iter()
            .filter_map(|r| r.validated.clone())
            .collect();
        assert_eq!(carried.len(), handed.len());
        assert!(
            carried.iter().zip(&handed).all(|(a, b)| Arc::ptr_eq(a, b)),
            "each record carries what its own put handed along"
        );
        // After the tail was emptied, new records are held again.
        stream.put_records(vec![put("after")]).await.unwrap();
        let after = near.poll(10, WAIT).await.unwrap();
        assert_eq!(datas(&after), [b"after"]);
        assert!(stream.inner.shared.tail().read(15, 16, false).is_some());
    }

    /// The same reads as [`the_tail_in_memory_serves_what_the_database_holds`]'s
    /// reader further behind, without the tail at all: the database path
    /// keeps its own test however the tail is sized.
    #[tokio::test]
    async fn without_the_tail_every_read_is_from_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        *stream.inner.shared.tail() = Tail::new(0);
        let mut sub = stream.subscribe("t").await.unwrap();
        stream
            .put_records((0..10).map(|i| put(&i.to_string())).collect())
            .await
            .unwrap();
        assert!(
            stream.inner.shared.tail().read(9, 10, false).is_none(),
            "holds nothing"
        );
        let mut read = Vec::new();
        for _ in 0..4 {
            read.extend(sub.poll(3, Duration::ZERO).await.unwrap());
        }
        let expected: Vec<Vec<u8>> = (0..10).map(|i: u32| i.to_string().into_bytes()).collect();
        assert_eq!(datas(&read), expected);
    }

    #[tokio::test]
    async fn a_database_of_the_unpacked_layout_is_read_on_and_packed_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE_NAME);
        {
            // What an earlier version left: records 7..10 (0..7 trimmed),
            // and a consumer that has processed up to 8.
            let db = Database::create(&path).unwrap();
            let txn = db.begin_write().unwrap();
            {
                let mut records = txn.open_table(UNPACKED_RECORDS).unwrap();
                for sequence in 7..10u64 {
                    let mut value = (1_000 + sequence as i64).to_le_bytes().to_vec();
                    value.extend_from_slice(format!("record {sequence}").as_bytes());
                    records.insert(sequence, value.as_slice()).unwrap();
                }
                txn.open_table(CONSUMERS).unwrap().insert("old", 8).unwrap();
                txn.open_table(META).unwrap().insert("next", 10).unwrap();
            }
            txn.commit().unwrap();
        }
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let mut old = stream.subscribe("old").await.unwrap();
        let read = old.poll(10, WAIT).await.unwrap();
        let seen: Vec<(u64, i64, &[u8])> = read
            .iter()
            .map(|r| (r.sequence.to_u64().unwrap(), r.arrival_ms, r.data.as_ref()))
            .collect();
        assert_eq!(
            seen,
            [(8, 1_008, &b"record 8"[..]), (9, 1_009, &b"record 9"[..])]
        );
        stream.put_records(vec![put("new")]).await.unwrap();
        let new = old.poll(10, WAIT).await.unwrap();
        assert_eq!(new[0].sequence.to_u64(), Some(10), "sequences go on");
        let txn = stream.inner.shared.db().unwrap().begin_read().unwrap();
        let tables: Vec<String> = txn
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_owned())
            .collect();
        assert!(!tables.contains(&"records".to_owned()), "{tables:?}");
        drop(txn);
        // A new consumer starts at the oldest record kept: 7.
        let mut late = stream.subscribe("late").await.unwrap();
        assert_eq!(
            late.poll(1, WAIT).await.unwrap()[0].sequence.to_u64(),
            Some(7)
        );
    }

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
    async fn a_consumer_reports_the_arrival_of_its_oldest_unread_record() {
        let dir = tempfile::tempdir().unwrap();
        let freshness = Arc::new(Freshness::default());
        let stream = EmbeddedStream::open(dir.path())
            .unwrap()
            .reporting_to(Arc::clone(&freshness));
        let mut sub = stream.subscribe("t").await.unwrap();
        assert_eq!(freshness.unread_of("t", SHARD_ID), None, "not polled yet");
        stream
            .put_records(vec![put("a"), put("b"), put("c")])
            .await
            .unwrap();
        let first = sub.poll(1, WAIT).await.unwrap();
        let unread = freshness.unread_of("t", SHARD_ID).unwrap();
        // "b" is the oldest unread record: committed with "a", same arrival.
        assert_eq!(unread, Some(first[0].arrival_ms));
        assert_eq!(sub.poll(10, WAIT).await.unwrap().len(), 2);
        assert_eq!(freshness.unread_of("t", SHARD_ID), Some(None), "read all");
        assert!(
            sub.poll(10, Duration::from_millis(20))
                .await
                .unwrap()
                .is_empty()
        );
        assert_eq!(freshness.unread_of("t", SHARD_ID), Some(None));
        drop(sub);
        assert_eq!(
            freshness.unread_of("t", SHARD_ID),
            None,
            "a dropped reader reports nothing"
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
        // One commit each, so that each can be trimmed on its own.
        for i in 0..5 {
            stream.put_records(vec![put(&i.to_string())]).await.unwrap();
        }
        let all = fast.poll(10, WAIT).await.unwrap();
        fast.checkpoint(SHARD_ID, &all[4].sequence).await.unwrap();
        // "slow" has checkpointed nothing: every record must still be there.
        assert_eq!(slow.poll(10, WAIT).await.unwrap().len(), 5);
        let count = || stored(&stream);
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_write_is_refused_and_the_stream_reopens_by_itself() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let mut sub = stream.subscribe("t").await.unwrap();
        stream.put_records(vec![put("a"), put("b")]).await.unwrap();
        let got = sub.poll(10, WAIT).await.unwrap();
        sub.checkpoint(SHARD_ID, &got[0].sequence).await.unwrap();

        let faults = &stream.inner.shared.faults;
        faults.reopen_blocked.store(true, Ordering::SeqCst);
        faults.failing_commits.store(1, Ordering::SeqCst);
        let reason = refused(stream.put_records(vec![put("lost")]).await);
        assert!(reason.contains("injected I/O error"), "{reason}");
        // Broken: refused at once, and said so, until the disk heals.
        let problem = stream.health().unwrap_err();
        assert!(
            problem.contains("write to the stream database failed"),
            "{problem}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(stream.health().unwrap_err().contains("reopening failed"));
        refused(stream.put_records(vec![put("refused")]).await);
        assert!(sub.poll(10, Duration::from_millis(20)).await.is_err() || stream.health().is_err());

        faults.reopen_blocked.store(false, Ordering::SeqCst);
        let took = healed(&stream).await;
        assert!(took < Duration::from_millis(1500), "healed after {took:?}");
        stream.put_records(vec![put("c")]).await.unwrap();
        // The subscription from before the fault reads on, after "b".
        let got = sub.poll(10, WAIT).await.unwrap();
        assert_eq!(datas(&got), [b"c"]);
        assert_eq!(
            got[0].sequence.to_string(),
            "00000000000000000002",
            "the refused records took no sequence"
        );
        drop(sub);
        drop(stream);
        // Durable: a restart finds the checkpoint and every acknowledged record.
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        let mut sub = stream.subscribe("t").await.unwrap();
        assert_eq!(datas(&sub.poll(10, WAIT).await.unwrap()), [b"b", b"c"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_reopen_waits_for_readers_and_they_read_on_afterwards() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(dir.path()).unwrap();
        stream
            .put_records((0..100).map(|i| put(&i.to_string())).collect())
            .await
            .unwrap();
        // Readers polling all along, each from the start.
        let mut subs = Vec::new();
        for i in 0..4 {
            subs.push(stream.subscribe(&format!("r{i}")).await.unwrap());
        }
        let readers: Vec<_> = subs
            .into_iter()
            .map(|mut sub| {
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let deadline = Instant::now() + Duration::from_secs(10);
                    while seen.len() < 200 && Instant::now() < deadline {
                        if let Ok(records) = sub.poll(7, Duration::from_millis(20)).await {
                            seen.extend(records.into_iter().map(|r| r.data));
                        }
                    }
                    seen
                })
            })
            .collect();
        for round in 0..5 {
            stream
                .inner
                .shared
                .faults
                .failing_commits
                .store(1, Ordering::SeqCst);
            refused(stream.put_records(vec![put("refused")]).await);
            healed(&stream).await;
            stream
                .put_records(
                    (0..20)
                        .map(|i| put(&(100 + round * 20 + i).to_string()))
                        .collect(),
                )
                .await
                .unwrap();
        }
        let expected: Vec<Bytes> = (0..200).map(|i: u32| Bytes::from(i.to_string())).collect();
        for reader in readers {
            assert_eq!(
                reader.await.unwrap(),
                expected,
                "every record once, in order"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_deleted_database_is_refused_then_copied_back_without_losing_anything() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data").join("stream");
        let stream = EmbeddedStream::open(&dir).unwrap();
        let mut sub = stream.subscribe("t").await.unwrap();
        stream.put_records(vec![put("a"), put("b")]).await.unwrap();
        let got = sub.poll(10, WAIT).await.unwrap();
        sub.checkpoint(SHARD_ID, &got[0].sequence).await.unwrap();
        let pending = PendingDelivery {
            key: "k".into(),
            first: SequenceNumber::from(1),
            last: SequenceNumber::from(1),
        };
        sub.begin_delivery(SHARD_ID, &pending).await.unwrap();

        // The data directory deleted, and a file where it was: it cannot
        // be recreated yet.
        std::fs::remove_dir_all(root.path().join("data")).unwrap();
        std::fs::write(root.path().join("data"), b"in the way").unwrap();
        let problem = stream.health().unwrap_err();
        assert!(problem.contains("is gone"), "{problem}");
        let reason = refused(stream.put_records(vec![put("not durable")]).await);
        assert!(reason.contains("stream.redb"), "{reason}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        refused(stream.put_records(vec![put("refused")]).await);
        assert!(
            stream
                .health()
                .unwrap_err()
                .contains("copying it back failed")
        );

        std::fs::remove_file(root.path().join("data")).unwrap();
        healed(&stream).await;
        assert!(dir.join(FILE_NAME).is_file(), "copied back into place");
        stream.put_records(vec![put("c")]).await.unwrap();
        drop(sub);
        drop(stream);

        let stream = EmbeddedStream::open(&dir).unwrap();
        let mut sub = stream.subscribe("t").await.unwrap();
        assert_eq!(sub.pending_delivery(SHARD_ID).await.unwrap(), Some(pending));
        let got = sub.poll(10, WAIT).await.unwrap();
        let data = datas(&got);
        // "b" and "c" were acknowledged; the refused record that reached the
        // deleted file may come along (a retried request's duplicate).
        assert_eq!(data.first(), Some(&&b"b"[..]), "{data:?}");
        assert_eq!(data.last(), Some(&&b"c"[..]), "{data:?}");
        assert!(
            data.len() <= 3 && !data.contains(&&b"refused"[..]),
            "{data:?}"
        );
        let sequences: Vec<_> = got.iter().map(|r| r.sequence.to_u64().unwrap()).collect();
        assert!(sequences.is_sorted() && sequences[0] == 1, "{sequences:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_stream_notices_its_file_was_deleted_and_restores_it() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("stream");
        let stream = EmbeddedStream::open(&dir).unwrap();
        stream.put_records(vec![put("a")]).await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        // No request needed: the writer's idle check copies it back.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !dir.join(FILE_NAME).is_file() {
            assert!(Instant::now() < deadline, "not restored");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        healed(&stream).await;
        stream.put_records(vec![put("b")]).await.unwrap();
        drop(stream);
        let stream = EmbeddedStream::open(&dir).unwrap();
        let mut sub = stream.subscribe("t").await.unwrap();
        assert_eq!(datas(&sub.poll(10, WAIT).await.unwrap()), [b"a", b"b"]);
    }
}
