//! The merger as a whole, on file-system stores.

use super::*;
use alleycat_core::delivery;
use alleycat_core::{RacerId, Second, codec};
use alleycat_storage::object_store::fs::FsStore;
use bytes::Bytes;
use chrono::DateTime;

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

fn args() -> HistoryArgs {
    HistoryArgs {
        poll_interval: Duration::from_millis(100),
        listing_grace: Duration::from_secs(60),
        gzip_level: 6,
    }
}

/// Writes a delivery object with the given (class, second, racer, output) lines.
async fn deliver(
    store: &dyn ObjectStore,
    at: DateTime<Utc>,
    tag: &str,
    lines: &[(u8, u16, u64, f64)],
) -> String {
    let body: String = lines
        .iter()
        .map(|(c, s, r, o)| {
            format!(
                "{{\"classId\":{c},\"second\":{s},\"racerId\":{r},\"output\":{o},\"name\":\"x\"}}\n"
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
async fn refuses_to_start_over_a_corrupt_class_file() {
    let f = fixture();
    f.history
        .put(
            "class-2.gz",
            Bytes::from_static(b"{\"1\":{}}"),
            "application/gzip",
        )
        .await
        .unwrap();
    let err = Merger::load(f.delivery.clone(), f.history.clone(), &args())
        .await
        .err()
        .unwrap();
    assert!(format!("{err:#}").contains("class-2.gz"), "{err:#}");
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
