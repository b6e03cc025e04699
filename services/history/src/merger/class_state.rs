//! What the merger keeps per class: the history, that history compressed
//! per second, and the version of the published file; and publishing it by
//! compare-and-swap.

use crate::class_file::SegmentedClassFile;
use alleycat_core::delivery::HistoryPoint;
use alleycat_core::history::{ClassHistory, class_file_key};
use alleycat_core::{ClassId, Second};
use alleycat_storage::{ETag, ObjectStore, Precondition, StoreError};
use anyhow::Context as _;
use bytes::Bytes;
use std::collections::BTreeSet;

/// One class's history and its class file.
pub(super) struct ClassState {
    history: ClassHistory,
    /// The history, compressed per second.
    file: SegmentedClassFile,
    /// Version of the class file as last read or written; `None`: no file.
    version: Option<ETag>,
}

impl ClassState {
    /// A class with no history and no published file.
    pub(super) fn empty(level: u32) -> ClassState {
        ClassState {
            history: ClassHistory::default(),
            file: SegmentedClassFile::new(&ClassHistory::default(), level),
            version: None,
        }
    }

    /// The published file of `class`, encoded at `level`, if there is one.
    pub(super) async fn load(
        store: &dyn ObjectStore,
        class: ClassId,
        level: u32,
    ) -> anyhow::Result<Option<ClassState>> {
        let Some((history, etag)) = read_class_file(store, class).await? else {
            return Ok(None);
        };
        tracing::info!(%class, bests = history.len(), "loaded class history");
        let (history, file) = tokio::task::spawn_blocking(move || {
            let file = SegmentedClassFile::new(&history, level);
            (history, file)
        })
        .await?;
        Ok(Some(ClassState {
            history,
            file,
            version: Some(etag),
        }))
    }

    /// The history, as merged so far.
    pub(super) fn history(&self) -> &ClassHistory {
        &self.history
    }

    /// Merges one point into the history (not yet the file); returns whether
    /// its best changed.
    pub(super) fn merge(&mut self, point: &HistoryPoint) -> bool {
        self.history
            .merge(point.second, point.racer_id, point.output)
    }

    /// Re-encodes the touched `seconds` of the class file and writes it,
    /// conditionally on the version we last saw; on a conflict, merges the
    /// newer file in and tries again.
    pub(super) async fn publish(
        &mut self,
        store: &dyn ObjectStore,
        class: ClassId,
        seconds: &BTreeSet<Second>,
        level: u32,
    ) -> anyhow::Result<()> {
        let key = class_file_key(class);
        self.file.update(&self.history, seconds.iter().copied());
        loop {
            let body = self.file.to_gzip();
            let condition = match &self.version {
                Some(etag) => Precondition::IfMatch(etag.clone()),
                None => Precondition::IfAbsent,
            };
            match store
                .put_if(&key, Bytes::from(body), "application/gzip", condition)
                .await
            {
                Ok(etag) => {
                    self.version = Some(etag);
                    return Ok(());
                }
                Err(StoreError::PreconditionFailed { .. }) => {
                    tracing::debug!(%key, "class file changed by another writer; merging it in");
                    match read_class_file(store, class).await? {
                        Some((theirs, etag)) => {
                            self.history.merge_history(&theirs);
                            // Rare (only with several history processes): encode it all.
                            self.file = SegmentedClassFile::new(&self.history, level);
                            self.version = Some(etag);
                        }
                        None => self.version = None,
                    }
                }
                Err(e) => return Err(e).with_context(|| format!("publishing {key}")),
            }
        }
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
