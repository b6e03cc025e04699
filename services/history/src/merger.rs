//! Finding new delivery objects and merging them into the class files.
//!
//! Discovery lists the delivery store's date prefixes from shortly before
//! the previous check (the listing grace) up to now, and skips the objects
//! it remembers merging. The transformer names each object by the time it
//! was written, so an object written while a merge was running appears in
//! the next check's listing; none is skipped.
//!
//! Order of effects: merge in memory, publish the changed class files, and
//! only then record the objects as merged. A crash in between merges some
//! objects again, which the max-merge makes harmless.
//!
//! Several history processes may run at once. Each write of a class file is
//! conditional on the version last read (`If-Match`, or `If-None-Match: *`
//! when creating it); when another process got there first, the file is
//! read again, merged into ours (max per key, so nothing of either side is
//! lost) and written again.

use crate::HistoryArgs;
use alleycat_core::class_file::SegmentedClassFile;
use alleycat_core::delivery::{self, HistoryPoint};
use alleycat_core::history::{ClassHistory, Histories, Touched, class_file_key};
use alleycat_core::{ClassId, Second, codec};
use alleycat_storage::{ETag, ObjectStore, Precondition, StoreError};
use anyhow::Context as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Where the merger remembers its progress, in the history store.
const STATE_KEY: &str = "_state/history-merger.json";
/// Largest decompressed delivery object accepted (the transformer writes at
/// most its buffer size, 1 MiB by default).
const MAX_DELIVERY_BYTES: u64 = 256 << 20;
/// Delivery objects merged between two publications, when catching up.
const OBJECTS_PER_PUBLICATION: usize = 64;
/// How often the state is saved when nothing new was merged.
const IDLE_STATE_SAVE: Duration = Duration::from_secs(30);

/// What the merger has done, durably.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MergeState {
    /// Start of the last complete check; `None` before the first one.
    checked_at: Option<DateTime<Utc>>,
    /// Objects merged whose keys are recent enough to be listed again.
    merged: BTreeSet<String>,
}

/// What one check merged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// Delivery objects merged.
    pub objects: usize,
    /// Records (lines) merged.
    pub records: usize,
    /// Lines refused as invalid.
    pub rejected: usize,
    /// Class files republished.
    pub published: Vec<ClassId>,
}

/// Merges delivery objects into class histories and publishes them.
pub struct Merger {
    delivery: Arc<dyn ObjectStore>,
    history: Arc<dyn ObjectStore>,
    histories: Histories,
    /// Version of each class file as last read or written; absent: no file.
    versions: BTreeMap<ClassId, ETag>,
    /// Each class file, compressed per second.
    files: BTreeMap<ClassId, SegmentedClassFile>,
    state: MergeState,
    grace: Duration,
    gzip_level: u32,
    saved_at: Option<std::time::Instant>,
}

impl Merger {
    /// Loads every published class file and the merge state, so a restart
    /// continues where the last run stopped. Refuses to start on a class file
    /// it cannot read, rather than overwrite it and lose its history.
    pub async fn load(
        delivery: Arc<dyn ObjectStore>,
        history: Arc<dyn ObjectStore>,
        args: &HistoryArgs,
    ) -> anyhow::Result<Merger> {
        let mut histories = Histories::default();
        let mut versions = BTreeMap::new();
        let mut files = BTreeMap::new();
        for class in ClassId::all() {
            if let Some((loaded, etag)) = read_class_file(history.as_ref(), class).await? {
                tracing::info!(%class, bests = loaded.len(), "loaded class history");
                let level = args.gzip_level;
                let (loaded, file) = tokio::task::spawn_blocking(move || {
                    let file = SegmentedClassFile::new(&loaded, level);
                    (loaded, file)
                })
                .await?;
                histories.insert(class, loaded);
                versions.insert(class, etag);
                files.insert(class, file);
            }
        }
        let state = match history
            .get(STATE_KEY)
            .await
            .context("reading the merge state")?
        {
            Some(object) => serde_json::from_slice(&object.body)
                .with_context(|| format!("{STATE_KEY} is corrupt"))?,
            None => MergeState::default(),
        };
        Ok(Merger {
            delivery,
            history,
            histories,
            versions,
            files,
            state,
            grace: args.listing_grace,
            gzip_level: args.gzip_level,
            saved_at: None,
        })
    }

    /// The in-memory history of `class`.
    #[must_use]
    pub fn class(&self, class: ClassId) -> Option<&ClassHistory> {
        self.histories.get(class)
    }

    /// Finds delivery objects not merged yet, merges them and publishes the
    /// class files they changed.
    pub async fn merge_new(&mut self) -> anyhow::Result<MergeReport> {
        let started = Utc::now();
        let listed = self.list_candidates().await?;
        let fresh: Vec<String> = listed
            .into_iter()
            .filter(|k| !self.state.merged.contains(k))
            .collect();
        let mut report = MergeReport::default();
        for chunk in fresh.chunks(OBJECTS_PER_PUBLICATION) {
            let mut touched = Touched::new();
            for key in chunk {
                let points = self.read_points(key, &mut report).await?;
                for (class, seconds) in self.histories.merge(&points) {
                    touched.entry(class).or_default().extend(seconds);
                }
                report.objects += 1;
                report.records += points.len();
            }
            self.publish(&touched).await?;
            report.published.extend(touched.into_keys());
            self.state.merged.extend(chunk.iter().cloned());
        }
        // Keys older than the next check's listing window cannot come back.
        let horizon = delivery::listing_start_after(started - self.grace_delta());
        self.state.merged.retain(|k| k.as_str() > horizon.as_str());
        self.state.checked_at = Some(started);
        // An idle check changes only `checked_at`; saving it now and then
        // just keeps the listing window a restart starts from short.
        if report.objects > 0
            || self
                .saved_at
                .is_none_or(|at| at.elapsed() >= IDLE_STATE_SAVE)
        {
            self.save_state().await?;
        }
        if report.objects > 0 {
            tracing::info!(objects = report.objects, records = report.records, rejected = report.rejected, published = ?report.published, "merged delivery objects");
        }
        report.published.sort_unstable();
        report.published.dedup();
        Ok(report)
    }

    fn grace_delta(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX)
    }

    /// Every delivery key that may not have been merged yet, oldest first.
    async fn list_candidates(&self) -> anyhow::Result<Vec<String>> {
        let Some(checked_at) = self.state.checked_at else {
            // First run ever: everything in the store is new.
            let all = self
                .delivery
                .list("", None)
                .await
                .context("listing the delivery store")?;
            return Ok(all
                .into_iter()
                .filter(|k| delivery::is_delivery_key(k))
                .collect());
        };
        let from = checked_at - self.grace_delta();
        let start_after = delivery::listing_start_after(from);
        let mut keys = Vec::new();
        for prefix in delivery::hour_prefixes(from, Utc::now()) {
            let after = (start_after.starts_with(&prefix)).then_some(start_after.as_str());
            let listed = self
                .delivery
                .list(&prefix, after)
                .await
                .with_context(|| format!("listing {prefix}"))?;
            keys.extend(listed.into_iter().filter(|k| delivery::is_delivery_key(k)));
        }
        Ok(keys)
    }

    async fn read_points(
        &self,
        key: &str,
        report: &mut MergeReport,
    ) -> anyhow::Result<Vec<HistoryPoint>> {
        let Some(object) = self
            .delivery
            .get(key)
            .await
            .with_context(|| format!("reading {key}"))?
        else {
            tracing::warn!(%key, "listed delivery object vanished; skipping it");
            return Ok(Vec::new());
        };
        let body = object.body;
        let decoded = tokio::task::spawn_blocking(move || {
            codec::gunzip(&body, MAX_DELIVERY_BYTES).map(|json| delivery::parse_points(&json))
        })
        .await?;
        match decoded {
            Ok((points, bad)) => {
                if let Some((line, reason)) = bad.first() {
                    tracing::warn!(%key, rejected = bad.len(), first_line = line, first_reason = %reason, "refused invalid delivery lines");
                }
                report.rejected += bad.len();
                Ok(points)
            }
            Err(e) => {
                // It can never become readable; merging it is impossible, retrying pointless.
                tracing::error!(%key, error = %e, "delivery object is not gzip; skipping it");
                Ok(Vec::new())
            }
        }
    }

    async fn publish(&mut self, touched: &Touched) -> anyhow::Result<()> {
        for (class, seconds) in touched {
            self.publish_class(*class, seconds).await?;
        }
        Ok(())
    }

    /// Re-encodes the touched seconds of a class file and writes it,
    /// conditionally on the version we last saw; on a conflict, merges the
    /// newer file in and tries again.
    async fn publish_class(
        &mut self,
        class: ClassId,
        seconds: &BTreeSet<Second>,
    ) -> anyhow::Result<()> {
        let key = class_file_key(class);
        let level = self.gzip_level;
        let history = self.histories.entry(class);
        self.files
            .entry(class)
            .or_insert_with(|| SegmentedClassFile::new(&ClassHistory::default(), level))
            .update(history, seconds.iter().copied());
        loop {
            let body = self.files[&class].to_gzip();
            let condition = match self.versions.get(&class) {
                Some(etag) => Precondition::IfMatch(etag.clone()),
                None => Precondition::IfAbsent,
            };
            match self
                .history
                .put_if(&key, Bytes::from(body), "application/gzip", condition)
                .await
            {
                Ok(etag) => {
                    self.versions.insert(class, etag);
                    return Ok(());
                }
                Err(StoreError::PreconditionFailed { .. }) => {
                    tracing::debug!(%key, "class file changed by another writer; merging it in");
                    match read_class_file(self.history.as_ref(), class).await? {
                        Some((theirs, etag)) => {
                            let history = self.histories.entry(class);
                            history.merge_history(&theirs);
                            // Rare (only with several history processes): encode it all.
                            self.files
                                .insert(class, SegmentedClassFile::new(history, level));
                            self.versions.insert(class, etag);
                        }
                        None => {
                            self.versions.remove(&class);
                        }
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("publishing {key}")),
            }
        }
    }

    async fn save_state(&mut self) -> anyhow::Result<()> {
        let body = serde_json::to_vec(&self.state).context("encoding the merge state")?;
        self.history
            .put(STATE_KEY, Bytes::from(body), "application/json")
            .await
            .context("saving the merge state")?;
        self.saved_at = Some(std::time::Instant::now());
        Ok(())
    }
}

/// A published class file and its version, if there is one.
async fn read_class_file(
    store: &dyn ObjectStore,
    class: ClassId,
) -> anyhow::Result<Option<(ClassHistory, ETag)>> {
    let key = class_file_key(class);
    let Some(object) = store
        .get(&key)
        .await
        .with_context(|| format!("reading {key}"))?
    else {
        return Ok(None);
    };
    let body = object.body;
    let history = tokio::task::spawn_blocking(move || ClassHistory::from_gzip(&body))
        .await?
        .with_context(|| format!("{key} in the history store is not a valid class file"))?;
    Ok(Some((history, object.etag)))
}

/// Keys merged, for tests.
#[cfg(test)]
impl Merger {
    fn merged(&self) -> std::collections::HashSet<&str> {
        self.state.merged.iter().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_core::RacerId;
    use alleycat_storage::object_store::fs::FsStore;

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
            .map(|(c, s, r, o)| format!("{{\"classId\":{c},\"second\":{s},\"racerId\":{r},\"output\":{o},\"name\":\"x\"}}\n"))
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
}
