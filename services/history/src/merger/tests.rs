//! The merger as a whole, on file-system stores.

use super::*;
use alleycat_core::delivery;
use alleycat_core::{RacerId, Second, codec};
use alleycat_storage::object_store::fs::FsStore;
use alleycat_storage::{ETag, Object, Precondition, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use chrono::DateTime;
use std::sync::Mutex;

/// Keys merged.
impl Merger {
    fn merged(&self) -> std::collections::HashSet<&str> {
        self.state.merged.iter().map(String::as_str).collect()
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    delivery: Arc<dyn ObjectStore>,
    history: Arc<dyn ObjectStore>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    Fixture {
        delivery: Arc::new(FsStore::open(&dir.path().join("delivery")).unwrap()),
        history: Arc::new(FsStore::open(&dir.path().join("history")).unwrap()),
        _dir: dir,
    }
}

/// The history settings at their defaults (clap's, the only place they
/// are written), with what these tests need: a quick poll, and no pacing
/// of publications.
fn args() -> HistoryArgs {
    HistoryArgs {
        poll_interval: Duration::from_millis(100),
        publish_pace: 0,
        ..alleycat_runtime::defaults()
    }
}

/// Writes a delivery object with the given (class, second, racer, output)
/// lines, all of race 1.
async fn deliver(
    store: &dyn ObjectStore,
    at: DateTime<Utc>,
    tag: &str,
    lines: &[(u8, u16, u64, f64)],
) -> String {
    deliver_race(store, at, tag, 1, lines).await
}

/// [`deliver`] with the lines' race.
async fn deliver_race(
    store: &dyn ObjectStore,
    at: DateTime<Utc>,
    tag: &str,
    race: u64,
    lines: &[(u8, u16, u64, f64)],
) -> String {
    let body: String = lines
        .iter()
        .map(|(c, s, r, o)| {
            format!(
                "{{\"classId\":{c},\"second\":{s},\"racerId\":{r},\"raceId\":{race},\"output\":{o},\"name\":\"x\"}}\n"
            )
        })
        .collect();
    let key = delivery::delivery_key(at, "shard-000000", tag, tag);
    store
        .put(
            &key,
            Bytes::from(codec::gzip(body.as_bytes(), 6)),
            "application/gzip",
        )
        .await
        .unwrap();
    key
}

async fn published(store: &dyn ObjectStore, class: u8) -> Option<ClassHistory> {
    let object = store.get(&format!("class-{class}.gz")).await.unwrap()?;
    Some(ClassHistory::from_gzip(&object.body).unwrap())
}

#[tokio::test]
async fn merges_new_objects_and_publishes_touched_classes() {
    let f = fixture();
    let now = Utc::now();
    deliver(
        f.delivery.as_ref(),
        now,
        "1",
        &[(1, 1, 101, 150.0), (1, 1, 102, 148.9), (2, 5, 7, 3.5)],
    )
    .await;
    let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    let report = merger.merge_new().await.unwrap();
    assert_eq!((report.objects, report.records), (1, 3));
    assert_eq!(report.published, [ClassId(1), ClassId(2)]);
    let class1 = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(class1.best(Second(1), RacerId(101)), Some(150.0));
    assert!(published(f.history.as_ref(), 3).await.is_none());

    deliver(
        f.delivery.as_ref(),
        now,
        "2",
        &[(1, 1, 101, 152.34), (1, 1, 102, 100.0)],
    )
    .await;
    let report = merger.merge_new().await.unwrap();
    assert_eq!(report.objects, 1, "only the new object is merged");
    let class1 = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(class1.best(Second(1), RacerId(101)), Some(152.34));
    assert_eq!(
        class1.best(Second(1), RacerId(102)),
        Some(148.9),
        "max, not last"
    );
}

#[tokio::test]
async fn merging_an_object_again_changes_no_file() {
    let f = fixture();
    let now = Utc::now();
    let key = deliver(f.delivery.as_ref(), now, "1", &[(3, 2, 1, 10.0)]).await;
    let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    merger.merge_new().await.unwrap();
    let before = f.history.get("class-3.gz").await.unwrap().unwrap();
    // A re-delivery of the same records under another key (a transformer
    // crash before its checkpoint) is merged but publishes nothing.
    let body = f.delivery.get(&key).await.unwrap().unwrap().body;
    let again =
        delivery::delivery_key(now + chrono::Duration::seconds(1), "shard-000000", "1", "1");
    f.delivery
        .put(&again, body, "application/gzip")
        .await
        .unwrap();
    let report = merger.merge_new().await.unwrap();
    assert_eq!(report.objects, 1);
    assert!(report.published.is_empty());
    assert_eq!(f.history.get("class-3.gz").await.unwrap().unwrap(), before);
}

#[tokio::test]
async fn a_restart_loads_published_history_and_skips_merged_objects() {
    let f = fixture();
    let now = Utc::now();
    deliver(f.delivery.as_ref(), now, "1", &[(1, 1, 1, 10.0)]).await;
    {
        let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args())
            .await
            .unwrap();
        merger.merge_new().await.unwrap();
    }
    let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    assert_eq!(
        merger
            .class(ClassId(1))
            .unwrap()
            .best(Second(1), RacerId(1)),
        Some(10.0)
    );
    assert_eq!(merger.merge_new().await.unwrap().objects, 0);
    deliver(f.delivery.as_ref(), now, "2", &[(1, 2, 1, 11.0)]).await;
    merger.merge_new().await.unwrap();
    let class1 = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(class1.len(), 2, "old and new records both present");
}

#[tokio::test]
async fn objects_written_late_within_the_grace_are_found() {
    let f = fixture();
    let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    merger.merge_new().await.unwrap();
    // Named 30 s in the past (a slow write, or another host's clock),
    // but only visible now: still inside the 60 s listing grace.
    let late = deliver(
        f.delivery.as_ref(),
        Utc::now() - chrono::Duration::seconds(30),
        "9",
        &[(4, 1, 1, 1.0)],
    )
    .await;
    assert_eq!(merger.merge_new().await.unwrap().objects, 1);
    assert!(merger.merged().contains(late.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mergers_on_the_same_stores_lose_no_update() {
    let f = fixture();
    let now = Utc::now();
    let mut a = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    let mut b = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    // Each merger sees different objects, and both publish class 1 from
    // a stale version: the second write must merge, not overwrite.
    deliver(
        f.delivery.as_ref(),
        now,
        "1",
        &[(1, 1, 1, 10.0), (1, 2, 1, 1.0)],
    )
    .await;
    a.merge_new().await.unwrap();
    deliver(
        f.delivery.as_ref(),
        now,
        "2",
        &[(1, 1, 2, 20.0), (1, 2, 1, 2.0)],
    )
    .await;
    b.merge_new().await.unwrap();
    deliver(f.delivery.as_ref(), now, "3", &[(1, 3, 3, 30.0)]).await;
    a.merge_new().await.unwrap();
    let class1 = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(class1.best(Second(1), RacerId(1)), Some(10.0));
    assert_eq!(class1.best(Second(1), RacerId(2)), Some(20.0));
    assert_eq!(class1.best(Second(2), RacerId(1)), Some(2.0));
    assert_eq!(class1.best(Second(3), RacerId(3)), Some(30.0));
    assert_eq!(class1.len(), 4);
}

#[tokio::test]
async fn invalid_lines_and_corrupt_objects_are_refused_not_merged() {
    let f = fixture();
    let now = Utc::now();
    deliver(
        f.delivery.as_ref(),
        now,
        "1",
        &[(1, 1, 1, 5.0), (9, 1, 1, 5.0), (1, 9999, 1, 5.0)],
    )
    .await;
    let junk = delivery::delivery_key(now, "shard-000000", "2", "2");
    f.delivery
        .put(&junk, Bytes::from_static(b"not gzip"), "application/gzip")
        .await
        .unwrap();
    let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    let report = merger.merge_new().await.unwrap();
    assert_eq!((report.objects, report.records, report.rejected), (2, 1, 2));
    assert_eq!(published(f.history.as_ref(), 1).await.unwrap().len(), 1);
}

/// What a [`Faulty`] store makes fail.
#[derive(Default)]
struct Faults {
    /// Every put of a key with this prefix fails.
    puts_of: Option<&'static str>,
    /// After this many more puts succeed, the next one fails (once).
    put_after: Option<usize>,
    /// Every get of these keys fails.
    gets_of: BTreeSet<String>,
    /// Puts that failed.
    failed_puts: usize,
}

/// An object store that fails the writes and reads it is told to.
struct Faulty {
    inner: Arc<dyn ObjectStore>,
    faults: Mutex<Faults>,
}

impl Faulty {
    fn new(inner: Arc<dyn ObjectStore>) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner,
            faults: Mutex::new(Faults::default()),
        })
    }

    fn set(&self, change: impl FnOnce(&mut Faults)) {
        change(&mut self.faults.lock().unwrap());
    }

    fn heal(&self) {
        self.set(|f| {
            f.puts_of = None;
            f.put_after = None;
            f.gets_of.clear();
        });
    }

    fn failed_puts(&self) -> usize {
        self.faults.lock().unwrap().failed_puts
    }
}

fn injected(operation: &'static str, key: &str) -> StoreError {
    StoreError::Io {
        operation,
        key: key.to_owned(),
        source: "injected failure".into(),
    }
}

#[async_trait]
impl ObjectStore for Faulty {
    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        content_type: &'static str,
        condition: Precondition,
    ) -> Result<ETag, StoreError> {
        {
            let mut f = self.faults.lock().unwrap();
            let mut fail = f.puts_of.is_some_and(|prefix| key.starts_with(prefix));
            match f.put_after {
                Some(0) => {
                    f.put_after = None;
                    fail = true;
                }
                Some(n) => f.put_after = Some(n - 1),
                None => {}
            }
            if fail {
                f.failed_puts += 1;
                return Err(injected("put", key));
            }
        }
        self.inner.put_if(key, body, content_type, condition).await
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        if self.faults.lock().unwrap().gets_of.contains(key) {
            return Err(injected("get", key));
        }
        self.inner.get(key).await
    }

    async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
        self.inner.head(key).await
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key).await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        self.inner.list(prefix, start_after).await
    }
}

/// The expected history of `class` from (class, second, racer, output) lines.
fn expected(class: u8, lines: &[(u8, u16, u64, f64)]) -> ClassHistory {
    let mut h = ClassHistory::default();
    for &(c, s, r, o) in lines {
        if c == class {
            h.merge(Second(s), RacerId(r), o);
        }
    }
    h
}

fn pending(merger: &Merger, class: u8) -> BTreeSet<String> {
    merger
        .state
        .pending
        .get(&ClassId(class))
        .cloned()
        .unwrap_or_default()
}

#[tokio::test]
async fn a_failed_publication_is_published_by_a_later_check() {
    let f = fixture();
    let history = Faulty::new(f.history.clone());
    let now = Utc::now();
    let first = [(6, 1, 1, 10.0), (6, 2, 1, 11.0)];
    deliver(f.delivery.as_ref(), now, "1", &first).await;
    let mut merger = Merger::load(f.delivery.clone(), history.clone(), &args())
        .await
        .unwrap();
    merger.merge_new().await.unwrap();

    // Every write of the history store fails (the issue's `.tmp` repro).
    history.set(|f| f.puts_of = Some(""));
    let second = [(6, 1, 2, 20.0), (6, 3, 1, 12.0), (6, 1, 1, 15.0)];
    let key = deliver(f.delivery.as_ref(), now, "2", &second).await;
    for _ in 0..3 {
        let err = merger.merge_new().await.unwrap_err();
        assert!(format!("{err:#}").contains("class 6"), "{err:#}");
        assert!(
            !merger.merged().contains(key.as_str()) || pending(&merger, 6).contains(&key),
            "not marked merged for class 6 before its publication"
        );
        assert_eq!(
            published(f.history.as_ref(), 6).await.unwrap(),
            expected(6, &first)
        );
    }
    assert!(history.failed_puts() >= 3, "each check tried again");

    history.heal();
    let report = merger.merge_new().await.unwrap();
    assert_eq!(report.published, [ClassId(6)]);
    let all: Vec<_> = first.iter().chain(&second).copied().collect();
    assert_eq!(
        published(f.history.as_ref(), 6).await.unwrap(),
        expected(6, &all)
    );
    assert!(pending(&merger, 6).is_empty());
    // And a restart has it all, with nothing left to do.
    let mut again = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    assert_eq!(again.class(ClassId(6)), Some(&expected(6, &all)));
    let report = again.merge_new().await.unwrap();
    assert_eq!((report.objects, report.reread), (0, 0));
}

#[tokio::test]
async fn records_pending_for_a_class_are_published_after_a_restart() {
    let f = fixture();
    let history = Faulty::new(f.history.clone());
    let now = Utc::now();
    let lines = [(6, 1, 1, 10.0), (1, 1, 1, 5.0)];
    let key = deliver(f.delivery.as_ref(), now, "1", &lines).await;
    let mut merger = Merger::load(f.delivery.clone(), history.clone(), &args())
        .await
        .unwrap();
    // Only class 6's file cannot be written; the merge state can.
    history.set(|f| f.puts_of = Some("class-6"));
    merger.merge_new().await.unwrap_err();
    assert_eq!(
        published(f.history.as_ref(), 1).await.unwrap(),
        expected(1, &lines)
    );
    assert!(published(f.history.as_ref(), 6).await.is_none());
    assert_eq!(pending(&merger, 6), BTreeSet::from([key.clone()]));
    assert!(pending(&merger, 1).is_empty());
    drop(merger);

    // The process stops while the failure lasts; it is gone at the restart.
    history.heal();
    let mut merger = Merger::load(f.delivery.clone(), history.clone(), &args())
        .await
        .unwrap();
    assert_eq!(pending(&merger, 6), BTreeSet::from([key]), "saved");
    let report = merger.merge_new().await.unwrap();
    assert_eq!((report.objects, report.reread), (0, 1));
    assert_eq!(report.published, [ClassId(6)]);
    assert_eq!(
        published(f.history.as_ref(), 6).await.unwrap(),
        expected(6, &lines)
    );
    assert!(merger.state.pending.is_empty());
}

#[tokio::test]
async fn an_unsaved_state_makes_a_restart_merge_the_objects_again() {
    let f = fixture();
    let history = Faulty::new(f.history.clone());
    let now = Utc::now();
    let lines = [(2, 1, 1, 10.0)];
    deliver(f.delivery.as_ref(), now, "1", &lines).await;
    let mut merger = Merger::load(f.delivery.clone(), history.clone(), &args())
        .await
        .unwrap();
    history.set(|f| f.puts_of = Some(""));
    merger.merge_new().await.unwrap_err();
    drop(merger);
    history.heal();
    let mut merger = Merger::load(f.delivery.clone(), history.clone(), &args())
        .await
        .unwrap();
    assert_eq!(merger.merge_new().await.unwrap().objects, 1);
    assert_eq!(
        published(f.history.as_ref(), 2).await.unwrap(),
        expected(2, &lines)
    );
}

#[tokio::test]
async fn the_nth_write_failing_leaves_only_its_class_to_do() {
    let f = fixture();
    let history = Faulty::new(f.history.clone());
    let now = Utc::now();
    let lines = [(1, 1, 1, 1.0), (2, 1, 1, 2.0), (3, 1, 1, 3.0)];
    deliver(f.delivery.as_ref(), now, "1", &lines).await;
    let mut merger = Merger::load(f.delivery.clone(), history.clone(), &args())
        .await
        .unwrap();
    // Classes are published in order: the second write is class 2's.
    history.set(|f| f.put_after = Some(1));
    let err = merger.merge_new().await.unwrap_err();
    assert!(format!("{err:#}").contains("class 2"), "{err:#}");
    assert_eq!(history.failed_puts(), 1);
    assert!(published(f.history.as_ref(), 2).await.is_none());
    for class in [1, 3] {
        assert_eq!(
            published(f.history.as_ref(), class).await.unwrap(),
            expected(class, &lines)
        );
    }
    let report = merger.merge_new().await.unwrap();
    assert_eq!(report.published, [ClassId(2)]);
    for class in 1..=3 {
        assert_eq!(
            published(f.history.as_ref(), class).await.unwrap(),
            expected(class, &lines)
        );
    }
}

#[tokio::test]
async fn a_failed_read_after_merged_objects_loses_no_second() {
    let f = fixture();
    let delivery = Faulty::new(f.delivery.clone());
    let history = Faulty::new(f.history.clone());
    let now = Utc::now();
    let a = [(1, 1, 1, 1.0), (1, 2, 1, 2.0)];
    let b = [(1, 3, 1, 3.0)];
    deliver(f.delivery.as_ref(), now, "1", &a).await;
    let key_b = deliver(f.delivery.as_ref(), now, "2", &b).await;
    let mut merger = Merger::load(delivery.clone(), history.clone(), &args())
        .await
        .unwrap();
    // Reading the second object fails, and so does publishing the first:
    // its seconds are in memory only.
    delivery.set(|f| {
        f.gets_of.insert(key_b.clone());
    });
    history.set(|f| f.puts_of = Some(""));
    merger.merge_new().await.unwrap_err();
    assert!(published(f.history.as_ref(), 1).await.is_none());
    // The read works again first: merging `a` again changes nothing in
    // memory, but its seconds must still be compressed and published.
    delivery.heal();
    merger.merge_new().await.unwrap_err();
    history.heal();
    merger.merge_new().await.unwrap();
    let all: Vec<_> = a.iter().chain(&b).copied().collect();
    assert_eq!(
        published(f.history.as_ref(), 1).await.unwrap(),
        expected(1, &all)
    );
}

#[tokio::test]
async fn a_failed_read_alone_publishes_what_was_read_and_retries_the_rest() {
    let f = fixture();
    let delivery = Faulty::new(f.delivery.clone());
    let now = Utc::now();
    let a = [(4, 1, 1, 1.0)];
    let b = [(4, 2, 1, 2.0)];
    let key_a = deliver(f.delivery.as_ref(), now, "1", &a).await;
    let key_b = deliver(f.delivery.as_ref(), now, "2", &b).await;
    let mut merger = Merger::load(delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    delivery.set(|f| {
        f.gets_of.insert(key_b.clone());
    });
    merger.merge_new().await.unwrap_err();
    assert!(merger.merged().contains(key_a.as_str()));
    assert!(!merger.merged().contains(key_b.as_str()));
    assert_eq!(
        published(f.history.as_ref(), 4).await.unwrap(),
        expected(4, &a),
        "marked merged only once published"
    );
    delivery.heal();
    assert_eq!(merger.merge_new().await.unwrap().objects, 1);
    let all: Vec<_> = a.iter().chain(&b).copied().collect();
    assert_eq!(
        published(f.history.as_ref(), 4).await.unwrap(),
        expected(4, &all)
    );
}

async fn put_corrupt(store: &dyn ObjectStore, class: u8) -> Bytes {
    let junk = Bytes::from_static(b"{\"1\":{\"5\":1.5}} is legacy JSON, not gzip");
    store
        .put(
            &format!("class-{class}.gz"),
            junk.clone(),
            "application/gzip",
        )
        .await
        .unwrap();
    junk
}

#[tokio::test]
async fn a_corrupt_class_file_blocks_only_its_class_until_it_is_replaced() {
    let f = fixture();
    let junk = put_corrupt(f.history.as_ref(), 2).await;
    let readiness = Readiness::default();
    let mut merger = Merger::load_reporting(
        f.delivery.clone(),
        f.history.clone(),
        &args(),
        readiness.clone(),
    )
    .await
    .unwrap();
    let reason = readiness.problems()["history class-2"].clone();
    assert!(
        reason.contains("class-2.gz") && reason.contains("not a valid class file"),
        "{reason}"
    );
    assert_eq!(readiness.problems().len(), 1);

    let now = Utc::now();
    let lines = [(1, 1, 1, 1.0), (2, 1, 1, 2.0), (2, 2, 3, 4.0)];
    let key = deliver(f.delivery.as_ref(), now, "1", &lines).await;
    let report = merger.merge_new().await.unwrap();
    assert_eq!(report.published, [ClassId(1)]);
    assert_eq!(pending(&merger, 2), BTreeSet::from([key.clone()]));
    assert_eq!(
        f.history.get("class-2.gz").await.unwrap().unwrap().body,
        junk
    );

    // Still blocked after a restart, still untouched.
    let mut merger = Merger::load_reporting(
        f.delivery.clone(),
        f.history.clone(),
        &args(),
        readiness.clone(),
    )
    .await
    .unwrap();
    merger.merge_new().await.unwrap();
    assert_eq!(
        f.history.get("class-2.gz").await.unwrap().unwrap().body,
        junk
    );
    assert!(merger.class(ClassId(2)).is_none());

    // Replaced by a valid file: the waiting records merge into it.
    let mut theirs = ClassHistory::default();
    theirs.merge(Second(1), RacerId(9), 9.0);
    theirs.merge(Second(1), RacerId(1), 1.0);
    f.history
        .put(
            "class-2.gz",
            Bytes::from(theirs.to_gzip(6)),
            "application/gzip",
        )
        .await
        .unwrap();
    let report = merger.merge_new().await.unwrap();
    assert_eq!(
        (report.reread, report.published.as_slice()),
        (1, &[ClassId(2)][..])
    );
    let mut want = expected(2, &lines);
    want.merge_history(&theirs);
    assert_eq!(published(f.history.as_ref(), 2).await.unwrap(), want);
    assert!(
        readiness.problems().is_empty(),
        "{:?}",
        readiness.problems()
    );
    assert!(merger.state.pending.is_empty());
}

#[tokio::test]
async fn deleting_a_corrupt_class_file_publishes_the_waiting_records() {
    let dir = tempfile::tempdir().unwrap();
    let f = fixture();
    let fs_history = FsStore::open(&dir.path().join("history")).unwrap();
    let history: Arc<dyn ObjectStore> = Arc::new(fs_history.clone());
    put_corrupt(history.as_ref(), 5).await;
    let readiness = Readiness::default();
    let mut merger = Merger::load_reporting(
        f.delivery.clone(),
        history.clone(),
        &args(),
        readiness.clone(),
    )
    .await
    .unwrap();
    let lines = [(5, 7, 1, 1.0)];
    deliver(f.delivery.as_ref(), Utc::now(), "1", &lines).await;
    merger.merge_new().await.unwrap();
    assert!(readiness.problems().contains_key("history class-5"));
    std::fs::remove_file(fs_history.root().join("class-5.gz")).unwrap();
    merger.merge_new().await.unwrap();
    assert_eq!(
        published(history.as_ref(), 5).await.unwrap(),
        expected(5, &lines)
    );
    assert!(readiness.problems().is_empty());
}

#[tokio::test]
async fn a_class_file_another_writer_corrupted_is_not_overwritten() {
    let f = fixture();
    let readiness = Readiness::default();
    let mut merger = Merger::load_reporting(
        f.delivery.clone(),
        f.history.clone(),
        &args(),
        readiness.clone(),
    )
    .await
    .unwrap();
    let now = Utc::now();
    let first = [(3, 1, 1, 1.0), (3, 2, 1, 5.0)];
    deliver(f.delivery.as_ref(), now, "1", &first).await;
    merger.merge_new().await.unwrap();
    let junk = put_corrupt(f.history.as_ref(), 3).await;
    let later = [(3, 1, 1, 2.0), (4, 1, 1, 1.0)];
    let key = deliver(f.delivery.as_ref(), now, "2", &later).await;
    let report = merger.merge_new().await.unwrap();
    assert_eq!(report.published, [ClassId(4)]);
    assert_eq!(
        f.history.get("class-3.gz").await.unwrap().unwrap().body,
        junk
    );
    assert!(readiness.problems().contains_key("history class-3"));
    assert_eq!(pending(&merger, 3), BTreeSet::from([key]));

    // The bad file deleted: everything this process held is published
    // again with what waited, not only what waited.
    f.history.delete("class-3.gz").await.unwrap();
    merger.merge_new().await.unwrap();
    let all: Vec<_> = first.iter().chain(&later).copied().collect();
    assert_eq!(
        published(f.history.as_ref(), 3).await,
        Some(expected(3, &all))
    );
    assert!(!readiness.problems().contains_key("history class-3"));
}

#[tokio::test]
async fn a_published_class_file_deleted_under_it_is_published_again_from_memory() {
    let f = fixture();
    let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap();
    merger.verify_every = Duration::ZERO;
    let lines = [(2, 1, 1, 3.0), (2, 7, 4, 9.5), (5, 1, 1, 1.0)];
    deliver(f.delivery.as_ref(), Utc::now(), "1", &lines).await;
    merger.merge_new().await.unwrap();
    for class in [2, 5] {
        f.history
            .delete(&format!("class-{class}.gz"))
            .await
            .unwrap();
    }
    // Nothing new arrives, and yet both are back, whole.
    merger.merge_new().await.unwrap();
    for class in [2, 5] {
        assert_eq!(
            published(f.history.as_ref(), class).await,
            Some(expected(class, &lines)),
            "class {class}"
        );
    }
}

#[tokio::test]
async fn new_racers_past_the_bound_are_refused_and_counted() {
    let f = fixture();
    let args = HistoryArgs {
        max_racers: 2,
        ..args()
    };
    let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args)
        .await
        .unwrap();
    let now = Utc::now();
    deliver(
        f.delivery.as_ref(),
        now,
        "1",
        &[
            (1, 1, 1, 1.0),
            (1, 2, 2, 1.0),
            (1, 1, 3, 9.0),
            (2, 1, 3, 9.0),
        ],
    )
    .await;
    let report = merger.merge_new().await.unwrap();
    assert_eq!(report.too_many_racers, BTreeMap::from([(ClassId(1), 1)]));
    let class1 = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(class1.best(Second(1), RacerId(3)), None);
    assert_eq!(published(f.history.as_ref(), 2).await.unwrap().len(), 1);

    // After a restart the bound still holds; known racers still improve.
    let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args)
        .await
        .unwrap();
    deliver(
        f.delivery.as_ref(),
        now,
        "2",
        &[(1, 1, 1, 5.0), (1, 3, 2, 1.0), (1, 1, 4, 1.0)],
    )
    .await;
    let report = merger.merge_new().await.unwrap();
    assert_eq!(report.too_many_racers, BTreeMap::from([(ClassId(1), 1)]));
    let class1 = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(class1.best(Second(1), RacerId(1)), Some(5.0));
    assert_eq!(class1.best(Second(3), RacerId(2)), Some(1.0));
    assert_eq!(class1.best(Second(1), RacerId(4)), None);
    assert_eq!(class1.len(), 3);
}

mod disqualifications {
    use super::*;
    use alleycat_core::RaceId;
    use alleycat_core::disqualification::NewDisqualification;
    use alleycat_storage::DisqualificationList;
    use alleycat_storage::disqualifications::Added;

    /// A merger on `f`'s stores with `args`, following `list`.
    async fn watching(f: &Fixture, args: &HistoryArgs, list: &Arc<DisqualificationList>) -> Merger {
        Merger::load(f.delivery.clone(), f.history.clone(), args)
            .await
            .unwrap()
            .with_disqualifications(list.clone())
    }

    fn list(f: &Fixture) -> Arc<DisqualificationList> {
        DisqualificationList::watch(f.history.clone(), Duration::from_secs(3600))
    }

    async fn disqualify(list: &DisqualificationList, racer: u64, race: Option<u64>) -> u64 {
        let request = NewDisqualification {
            racer_id: RacerId(racer),
            race_id: race.map(RaceId),
            reason: "test".to_owned(),
        };
        match list.add(request).await.unwrap() {
            Added::Created(entry) => entry.id.0,
            Added::Existing(_) => panic!("already there"),
        }
    }

    async fn best(f: &Fixture, second: u16, racer: u64) -> Option<f64> {
        published(f.history.as_ref(), 1)
            .await
            .unwrap()
            .best(Second(second), RacerId(racer))
    }

    /// Racer 7 rides race 10 (strong) and race 20 (weaker, one second
    /// more); racer 8 rides race 10; other races fill the store around them.
    async fn two_races(f: &Fixture) -> usize {
        let now = Utc::now();
        let t = |s: i64| now - chrono::Duration::seconds(30 - s);
        let mut objects = 0;
        deliver_race(
            f.delivery.as_ref(),
            t(0),
            "a",
            10,
            &[(1, 1, 7, 300.0), (1, 1, 8, 100.0)],
        )
        .await;
        deliver_race(
            f.delivery.as_ref(),
            t(1),
            "b",
            10,
            &[(1, 2, 7, 310.0), (1, 2, 8, 110.0)],
        )
        .await;
        deliver_race(f.delivery.as_ref(), t(2), "c", 99, &[(1, 1, 9, 50.0)]).await;
        deliver_race(
            f.delivery.as_ref(),
            t(3),
            "d",
            20,
            &[(1, 1, 7, 150.0), (1, 2, 7, 160.0), (1, 3, 7, 170.0)],
        )
        .await;
        for i in 0..5 {
            deliver_race(
                f.delivery.as_ref(),
                t(10 + i),
                &format!("z{i}"),
                98,
                &[(1, 1, 9, 40.0)],
            )
            .await;
            objects += 1;
        }
        objects
    }

    #[tokio::test]
    async fn a_race_is_taken_back_from_the_class_file_and_given_back_on_reinstatement() {
        let f = fixture();
        two_races(&f).await;
        let list = list(&f);
        let mut merger = watching(&f, &args(), &list).await;
        merger.merge_new().await.unwrap();
        assert_eq!(best(&f, 1, 7).await, Some(300.0));

        let id = disqualify(&list, 7, Some(10)).await;
        let report = merger.merge_new().await.unwrap();
        assert_eq!(report.rebuilt_racers, 1);
        // Objects of race 20, the race that still counts, and of race 10's
        // window (listed, so read): never the other races' objects.
        assert!(report.rebuild_objects <= 4, "{report:?}");
        assert_eq!(best(&f, 1, 7).await, Some(150.0));
        assert_eq!(best(&f, 2, 7).await, Some(160.0));
        assert_eq!(best(&f, 3, 7).await, Some(170.0));
        assert_eq!(best(&f, 1, 8).await, Some(100.0), "others keep theirs");

        // The change survives a restart, and what arrives of the race
        // afterwards is not merged.
        let mut merger = watching(&f, &args(), &list).await;
        deliver_race(
            f.delivery.as_ref(),
            Utc::now(),
            "late",
            10,
            &[(1, 4, 7, 999.0)],
        )
        .await;
        let report = merger.merge_new().await.unwrap();
        assert_eq!(report.disqualified, 1);
        // A restart recomputes the racers the list names once (another
        // process may have published over them), with the same result.
        assert_eq!(report.rebuilt_racers, 1);
        assert_eq!(best(&f, 1, 7).await, Some(150.0));
        assert_eq!(best(&f, 4, 7).await, None);
        let report = merger.merge_new().await.unwrap();
        assert_eq!(report.rebuilt_racers, 0, "nothing left to recompute");

        assert!(
            list.remove(alleycat_core::disqualification::DisqualificationId(id))
                .await
                .unwrap()
        );
        let report = merger.merge_new().await.unwrap();
        assert_eq!(report.rebuilt_racers, 1);
        assert_eq!(best(&f, 1, 7).await, Some(300.0));
        assert_eq!(best(&f, 2, 7).await, Some(310.0));
        assert_eq!(best(&f, 3, 7).await, Some(170.0));
        assert_eq!(
            best(&f, 4, 7).await,
            Some(999.0),
            "the late record counts again"
        );
    }

    #[tokio::test]
    async fn a_whole_racer_leaves_every_class_file_and_imports_count_unless_it_is_out() {
        let f = fixture();
        two_races(&f).await;
        // What an import of the original's history left.
        let mut imported = ClassHistory::default();
        imported.merge(Second(5), RacerId(7), 55.0);
        imported.merge(Second(5), RacerId(8), 58.0);
        f.history
            .put(
                &format!("{}2026.json.gz", crate::import::imports_prefix(ClassId(1))),
                Bytes::from(codec::gzip(&imported.to_json(), 6)),
                "application/gzip",
            )
            .await
            .unwrap();
        let list = list(&f);
        let mut merger = watching(&f, &args(), &list).await;
        merger.merge_new().await.unwrap();

        disqualify(&list, 8, Some(10)).await;
        disqualify(&list, 7, None).await;
        merger.merge_new().await.unwrap();
        let class = published(f.history.as_ref(), 1).await.unwrap();
        for second in 1..=5 {
            assert_eq!(class.best(Second(second), RacerId(7)), None);
        }
        assert_eq!(class.best(Second(1), RacerId(8)), None);
        assert_eq!(
            class.best(Second(5), RacerId(8)),
            Some(58.0),
            "imported, no race to take back"
        );
        assert_eq!(class.best(Second(1), RacerId(9)), Some(50.0));
    }

    #[tokio::test]
    async fn a_failed_publication_leaves_the_list_unapplied_until_it_works() {
        let f = fixture();
        two_races(&f).await;
        let list = list(&f);
        let failing = Faulty::new(f.history.clone());
        let mut merger = Merger::load(f.delivery.clone(), failing.clone(), &args())
            .await
            .unwrap()
            .with_disqualifications(list.clone());
        merger.merge_new().await.unwrap();
        disqualify(&list, 7, Some(10)).await;
        failing.set(|f| f.puts_of = Some("class-"));
        assert!(merger.merge_new().await.is_err());
        assert_eq!(best(&f, 1, 7).await, Some(300.0), "not published yet");
        // A restart now recomputes again, from the durable state.
        let mut merger = watching(&f, &args(), &list).await;
        let report = merger.merge_new().await.unwrap();
        assert_eq!(report.rebuilt_racers, 1);
        assert_eq!(best(&f, 1, 7).await, Some(150.0));
    }

    #[tokio::test]
    async fn an_index_missing_after_an_upgrade_is_rebuilt_from_the_archive_not_taken_as_empty() {
        let f = fixture();
        two_races(&f).await;
        let list = list(&f);
        Merger::load(f.delivery.clone(), f.history.clone(), &args())
            .await
            .unwrap()
            .merge_new()
            .await
            .unwrap();
        // As a history store written before the index existed.
        for class in 1..=6 {
            f.history
                .delete(&format!("_state/history-index/class-{class}.json.gz"))
                .await
                .unwrap();
        }
        let mut merger = watching(&f, &args(), &list).await;
        disqualify(&list, 7, Some(10)).await;
        merger.merge_new().await.unwrap();
        assert_eq!(
            best(&f, 1, 7).await,
            Some(150.0),
            "race 20's bests, not none"
        );
        assert_eq!(best(&f, 3, 7).await, Some(170.0));
    }

    #[tokio::test]
    async fn a_racer_whose_delivery_objects_are_gone_keeps_its_bests_and_readiness_says_why() {
        let f = fixture();
        two_races(&f).await;
        let list = list(&f);
        let readiness = Readiness::default();
        let mut merger = Merger::load_reporting(
            f.delivery.clone(),
            f.history.clone(),
            &args(),
            readiness.clone(),
        )
        .await
        .unwrap()
        .with_disqualifications(list.clone());
        merger.merge_new().await.unwrap();
        // Race 20's only object expires.
        let race_20 = f
            .delivery
            .list("", None)
            .await
            .unwrap()
            .into_iter()
            .find(|k| k.contains("-d.gz"))
            .unwrap();
        let kept = f.delivery.get(&race_20).await.unwrap().unwrap();
        f.delivery.delete(&race_20).await.unwrap();
        disqualify(&list, 7, Some(10)).await;
        merger.merge_new().await.unwrap();
        assert_eq!(best(&f, 1, 7).await, Some(300.0), "not taken away blindly");
        let problems = readiness.problems();
        assert!(
            problems["history disqualifications"].contains("is gone"),
            "{problems:?}"
        );
        // Once it is back, the change applies and readiness recovers.
        f.delivery
            .put(&race_20, kept.body, "application/gzip")
            .await
            .unwrap();
        merger.merge_new().await.unwrap();
        assert_eq!(best(&f, 1, 7).await, Some(150.0));
        assert!(
            readiness.problems().is_empty(),
            "{:?}",
            readiness.problems()
        );
    }

    #[tokio::test]
    async fn a_reinstatement_deferred_by_the_pacer_is_not_recorded_as_applied() {
        let f = fixture();
        two_races(&f).await;
        let list = list(&f);
        let paced = HistoryArgs {
            publish_pace: 1_000_000,
            ..args()
        };
        let mut merger = watching(&f, &args(), &list).await;
        merger.merge_new().await.unwrap();
        let id = disqualify(&list, 7, Some(10)).await;
        merger.merge_new().await.unwrap();
        assert_eq!(best(&f, 1, 7).await, Some(150.0));

        // Paced, with a backlog: the reinstatement is recomputed in memory
        // but its publication deferred...
        let mut merger = watching(&f, &paced, &list).await;
        deliver_race(
            f.delivery.as_ref(),
            Utc::now(),
            "one",
            20,
            &[(2, 9, 8, 1.0)],
        )
        .await;
        assert_eq!(merger.merge_new().await.unwrap().published, [ClassId(2)]);
        assert!(
            list.remove(alleycat_core::disqualification::DisqualificationId(id))
                .await
                .unwrap()
        );
        deliver_race(
            f.delivery.as_ref(),
            Utc::now(),
            "more",
            20,
            &[(2, 9, 8, 1.0)],
        )
        .await;
        let report = merger.merge_new().await.unwrap();
        assert_eq!(report.rebuilt_racers, 1);
        assert!(report.published.is_empty(), "deferred: {report:?}");
        assert_eq!(best(&f, 1, 7).await, Some(150.0));
        // ...so the saved state must still name the racer: a process
        // starting now (this one crashed) recomputes and publishes it.
        drop(merger);
        let mut restarted = watching(&f, &args(), &list).await;
        restarted.merge_new().await.unwrap();
        assert_eq!(
            best(&f, 1, 7).await,
            Some(300.0),
            "reinstated after the restart"
        );
    }
}

/// What the merger tells its process's freshness, read back.
fn published_before(freshness: &Freshness) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(freshness.history_published_before().unwrap()).unwrap()
}

#[tokio::test]
async fn freshness_follows_complete_checks_and_the_oldest_pending_object() {
    let f = fixture();
    let history = Faulty::new(f.history.clone());
    let freshness = Arc::new(Freshness::default());
    freshness.history_started(metrics::Gauge::noop());
    let started = published_before(&freshness);
    let mut merger = Merger::load(f.delivery.clone(), history.clone(), &args())
        .await
        .unwrap()
        .with_freshness(Arc::clone(&freshness));

    // Before any check, the service's start stands.
    assert_eq!(published_before(&freshness), started);

    // A failed check does not move the time on; the object whose class it
    // could not publish holds it back to the object's write time.
    let written = Utc::now() - chrono::Duration::seconds(30);
    let key = deliver(f.delivery.as_ref(), written, "1", &[(3, 1, 1, 1.0)]).await;
    history.set(|f| f.puts_of = Some("class-3"));
    merger.merge_new().await.unwrap_err();
    assert_eq!(
        published_before(&freshness),
        delivery::written_at(&key).unwrap()
    );

    // Healed: everything written before the check's start is published.
    history.heal();
    let before_check = Utc::now();
    merger.merge_new().await.unwrap();
    let after_check = published_before(&freshness);
    assert!(after_check >= before_check - chrono::Duration::milliseconds(1));
    assert!(after_check <= Utc::now());

    // A corrupt class file keeps its records pending: the oldest pending
    // object's write time (to the second of its key) holds freshness back.
    put_corrupt(f.history.as_ref(), 5).await;
    let mut blocked = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .unwrap()
        .with_freshness(Arc::clone(&freshness));
    let old = Utc::now() - chrono::Duration::seconds(20);
    let pending_key = deliver(f.delivery.as_ref(), old, "2", &[(5, 1, 1, 1.0)]).await;
    blocked.merge_new().await.unwrap();
    assert_eq!(pending(&blocked, 5), BTreeSet::from([pending_key.clone()]));
    assert_eq!(
        published_before(&freshness),
        delivery::written_at(&pending_key).unwrap()
    );
    assert_ne!(key, pending_key);
}

/// Settings pacing publications at `pace`, and a merger with them that
/// has merged and published one delivery object (written at `now`).
async fn paced_after_one_publication(
    f: &Fixture,
    pace: u32,
    now: DateTime<Utc>,
) -> (HistoryArgs, Merger) {
    let args = HistoryArgs {
        publish_pace: pace,
        ..args()
    };
    deliver(f.delivery.as_ref(), now, "1", &[(1, 1, 101, 150.0)]).await;
    let mut merger = Merger::load(f.delivery.clone(), f.history.clone(), &args)
        .await
        .unwrap();
    assert_eq!(merger.merge_new().await.unwrap().published, [ClassId(1)]);
    (args, merger)
}

#[tokio::test]
async fn a_paced_publication_waits_with_its_objects_pending_until_caught_up() {
    let f = fixture();
    let now = Utc::now();
    // After any publication, the next waits a million times its cost.
    let (args, mut merger) = paced_after_one_publication(&f, 1_000_000, now).await;

    // A backlog: new objects keep coming, so the publication is deferred.
    let second = deliver(f.delivery.as_ref(), now, "2", &[(1, 2, 101, 160.0)]).await;
    let report = merger.merge_new().await.unwrap();
    assert_eq!(report.objects, 1);
    assert!(report.published.is_empty(), "deferred by the pacer");
    let file = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(file.best(Second(2), RacerId(101)), None);
    // Not marked done: the saved state keeps the object pending for its
    // class, so a process starting now reads it again.
    assert!(merger.state.pending[&ClassId(1)].contains(&second));
    let mut restarted = Merger::load(f.delivery.clone(), f.history.clone(), &args)
        .await
        .unwrap();
    restarted.merge_new().await.unwrap();
    assert_eq!(
        published(f.history.as_ref(), 1)
            .await
            .unwrap()
            .best(Second(2), RacerId(101)),
        Some(160.0),
        "a restarted process publishes what the other deferred"
    );

    // Caught up (nothing new): the deferred class is published at once.
    let mut paced = Merger::load(f.delivery.clone(), f.history.clone(), &args)
        .await
        .unwrap();
    deliver(f.delivery.as_ref(), now, "3", &[(1, 3, 101, 170.0)]).await;
    paced.merge_new().await.unwrap();
    deliver(f.delivery.as_ref(), now, "4", &[(1, 4, 101, 180.0)]).await;
    assert!(paced.merge_new().await.unwrap().published.is_empty());
    assert_eq!(paced.merge_new().await.unwrap().published, [ClassId(1)]);
    let file = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(file.best(Second(4), RacerId(101)), Some(180.0));
    assert!(!paced.state.pending.contains_key(&ClassId(1)));
}

#[tokio::test]
async fn a_deferred_publication_goes_when_the_pacer_lets_it_not_at_the_next_poll() {
    let f = fixture();
    let now = Utc::now();
    let (_, mut merger) = paced_after_one_publication(&f, 1, now).await;
    let nothing_deferred =
        tokio::time::timeout(Duration::from_millis(50), merger.deferred_publication()).await;
    assert!(nothing_deferred.is_err(), "every class is published");

    // As if that publication had cost a second of CPU: the next waits one.
    merger.pacer.spent(Duration::from_secs(1));
    deliver(f.delivery.as_ref(), now, "2", &[(1, 2, 101, 160.0)]).await;
    assert!(
        merger.merge_new().await.unwrap().published.is_empty(),
        "deferred"
    );
    // Objects came far apart so far: no pause comes before the pacer.
    merger.objects = Lull::new(Duration::from_secs(60));
    merger.objects.arrived(Instant::now());
    let waiting = Instant::now();
    tokio::time::timeout(Duration::from_secs(30), merger.deferred_publication())
        .await
        .expect("the deferred publication falls due");
    assert!(
        waiting.elapsed() >= Duration::from_millis(900),
        "{:?}",
        waiting.elapsed()
    );
    assert_eq!(merger.merge_new().await.unwrap().published, [ClassId(1)]);
    let file = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(file.best(Second(2), RacerId(101)), Some(160.0));
}

/// Objects that came close together and then stopped: the deferred
/// publication goes a pause after the last (four usual gaps, at least
/// 100 ms), long before the pacer would let it, as no more records are
/// coming to share it.
#[tokio::test]
async fn a_deferred_publication_goes_once_objects_stop_coming() {
    let f = fixture();
    let now = Utc::now();
    let (_, mut merger) = paced_after_one_publication(&f, 1, now).await;
    merger.pacer.spent(Duration::from_secs(10));
    deliver(f.delivery.as_ref(), now, "2", &[(1, 2, 101, 160.0)]).await;
    assert!(
        merger.merge_new().await.unwrap().published.is_empty(),
        "deferred"
    );
    let waiting = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), merger.deferred_publication())
        .await
        .expect("objects stopped coming: the deferred publication goes");
    let waited = waiting.elapsed();
    assert!(
        waited < Duration::from_secs(5) && merger.pacer.not_before().is_some(),
        "before the pacer lets it: {waited:?}"
    );
    assert_eq!(merger.merge_new().await.unwrap().published, [ClassId(1)]);
    let file = published(f.history.as_ref(), 1).await.unwrap();
    assert_eq!(file.best(Second(2), RacerId(101)), Some(160.0));

    // Published: nothing more to wake for, pause or not.
    let woke = tokio::time::timeout(Duration::from_millis(300), merger.deferred_publication());
    assert!(woke.await.is_err(), "every class is published");
}

#[tokio::test]
async fn the_pacer_never_defers_retrying_a_failed_publication() {
    let f = fixture();
    let history = Faulty::new(f.history.clone());
    let args = HistoryArgs {
        publish_pace: 1_000_000,
        ..args()
    };
    let now = Utc::now();
    history.set(|f| f.puts_of = Some("class-2"));
    deliver(
        f.delivery.as_ref(),
        now,
        "1",
        &[(1, 1, 1, 10.0), (2, 1, 1, 20.0)],
    )
    .await;
    let mut merger = Merger::load(f.delivery.clone(), history.clone(), &args)
        .await
        .unwrap();
    // Class 1 is published (the pacer starts counting), class 2 fails.
    assert!(merger.merge_new().await.is_err());
    assert!(published(f.history.as_ref(), 1).await.is_some());
    // A backlog would be paced, but the failure is tried again: the check
    // still fails rather than passing without having published.
    deliver(f.delivery.as_ref(), now, "2", &[(1, 2, 1, 11.0)]).await;
    let failed = history.failed_puts();
    assert!(merger.merge_new().await.is_err());
    assert!(history.failed_puts() > failed, "tried again");

    history.heal();
    deliver(f.delivery.as_ref(), now, "3", &[(1, 3, 1, 12.0)]).await;
    let report = merger.merge_new().await.unwrap();
    assert!(report.published.contains(&ClassId(2)), "{report:?}");
    let class2 = published(f.history.as_ref(), 2).await.unwrap();
    assert_eq!(class2.best(Second(1), RacerId(1)), Some(20.0));
    assert!(pending(&merger, 2).is_empty());
}
