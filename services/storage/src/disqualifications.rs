//! The disqualification list, shared by every process through one object in
//! the history store, and each process's copy of it, read again every
//! `ALLEYCAT_DISQUALIFICATIONS_POLL_MS`.
//!
//! Changes are read-modify-conditional-write loops on that object, so two
//! operators (or two processes) never lose each other's entries. The copy
//! is `None` until the object was read once: a service must not act on a
//! list it does not know (the history service would "reinstate" every
//! disqualified racer if it took an unknown list for an empty one).

use crate::{ObjectStore, Precondition, StoreError};
use alleycat_core::disqualification::{
    AddError, Disqualification, DisqualificationId, Disqualifications, NewDisqualification,
};
use bytes::Bytes;
use chrono::Utc;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::watch;

/// Where the list lives in the history store.
pub const LIST_KEY: &str = "_admin/disqualifications.json";

/// Conditional writes tried before a change gives up (each failure means
/// another writer changed the list in between).
const WRITE_ATTEMPTS: usize = 16;

/// Why the list could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// The store failed.
    #[error("the disqualification list cannot be read or written: {0}")]
    Store(#[from] StoreError),
    /// The stored object is not a list.
    #[error("{LIST_KEY} in the history store is not a disqualification list: {0}")]
    Corrupt(serde_json::Error),
    /// The list is full.
    #[error(transparent)]
    Full(#[from] AddError),
    /// Other writers kept changing it.
    #[error("the disqualification list kept changing under {WRITE_ATTEMPTS} writes; try again")]
    Contended,
}

/// What adding an entry did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Added {
    /// A new entry.
    Created(Disqualification),
    /// The list already said so: that entry.
    Existing(Disqualification),
}

/// A process's copy of the list, and the way to change it.
pub struct DisqualificationList {
    store: Arc<dyn ObjectStore>,
    current: watch::Sender<Option<Arc<Disqualifications>>>,
    /// Why the last read failed, while it does.
    error: Mutex<Option<String>>,
}

impl std::fmt::Debug for DisqualificationList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DisqualificationList")
            .field("entries", &self.current().map(|l| l.entries().len()))
            .field("error", &self.error())
            .finish_non_exhaustive()
    }
}

impl DisqualificationList {
    /// The list in `store`, read now and then every `interval` for as long
    /// as the returned handle lives.
    #[must_use]
    pub fn watch(store: Arc<dyn ObjectStore>, interval: Duration) -> Arc<DisqualificationList> {
        let list = Arc::new(DisqualificationList {
            store,
            current: watch::Sender::new(None),
            error: Mutex::new(None),
        });
        tokio::spawn(poll(Arc::downgrade(&list), interval));
        list
    }

    /// The list as last read; `None` before the first read succeeded.
    #[must_use]
    pub fn current(&self) -> Option<Arc<Disqualifications>> {
        self.current.borrow().clone()
    }

    /// Sees every new copy of the list.
    #[must_use]
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<Disqualifications>>> {
        self.current.subscribe()
    }

    /// Why the list cannot be read now, if it cannot.
    #[must_use]
    pub fn error(&self) -> Option<String> {
        self.error.lock().expect("not poisoned").clone()
    }

    /// Reads the list now.
    pub async fn refresh(&self) -> Result<Arc<Disqualifications>, ListError> {
        match read(self.store.as_ref()).await {
            Ok((list, _)) => {
                let list = Arc::new(list);
                *self.error.lock().expect("not poisoned") = None;
                self.adopt(&list);
                Ok(list)
            }
            Err(e) => {
                *self.error.lock().expect("not poisoned") = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// Adds an entry, unless one already says the same.
    pub async fn add(&self, request: NewDisqualification) -> Result<Added, ListError> {
        self.change(|list| {
            if let Some(existing) = list.existing(&request) {
                return Ok((None, Added::Existing(existing.clone())));
            }
            let (changed, entry) = list.with(request.clone(), Utc::now())?;
            Ok((Some(changed), Added::Created(entry)))
        })
        .await
    }

    /// Removes entry `id`; whether there was one.
    pub async fn remove(&self, id: DisqualificationId) -> Result<bool, ListError> {
        self.change(|list| Ok(list.without(id).map_or((None, false), |l| (Some(l), true))))
            .await
    }

    /// Applies `change` to the stored list and writes the result (if any)
    /// conditionally on the version read; again on a conflict.
    async fn change<T>(
        &self,
        change: impl Fn(&Disqualifications) -> Result<(Option<Disqualifications>, T), ListError>,
    ) -> Result<T, ListError> {
        for _ in 0..WRITE_ATTEMPTS {
            let (list, version) = read(self.store.as_ref()).await?;
            let (changed, outcome) = change(&list)?;
            let Some(changed) = changed else {
                self.adopt(&Arc::new(list));
                return Ok(outcome);
            };
            let condition = version.map_or(Precondition::IfAbsent, Precondition::IfMatch);
            match self
                .store
                .put_if(
                    LIST_KEY,
                    Bytes::from(changed.to_json()),
                    "application/json",
                    condition,
                )
                .await
            {
                Ok(_) => {
                    self.adopt(&Arc::new(changed));
                    return Ok(outcome);
                }
                Err(StoreError::PreconditionFailed { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(ListError::Contended)
    }

    /// Makes `list` the current copy, telling subscribers only if it is
    /// newer: a poll that read the list before a change here finished must
    /// not bring the older copy back. (So the stored object is changed
    /// through [`DisqualificationList::add`] and
    /// [`DisqualificationList::remove`] only, which raise its version.)
    fn adopt(&self, list: &Arc<Disqualifications>) {
        self.current.send_if_modified(|current| match current {
            Some(known) if known.version() >= list.version() => false,
            _ => {
                *current = Some(Arc::clone(list));
                true
            }
        });
    }
}

/// The stored list and its version (an absent object is an empty list).
async fn read(
    store: &dyn ObjectStore,
) -> Result<(Disqualifications, Option<crate::ETag>), ListError> {
    match store.get(LIST_KEY).await? {
        None => Ok((Disqualifications::default(), None)),
        Some(object) => {
            let list = Disqualifications::from_json(&object.body).map_err(ListError::Corrupt)?;
            Ok((list, Some(object.etag)))
        }
    }
}

/// Reads the list every `interval` while its handle lives.
async fn poll(list: Weak<DisqualificationList>, interval: Duration) {
    let mut failing = false;
    loop {
        {
            let Some(list) = list.upgrade() else { return };
            match list.refresh().await {
                Ok(_) if failing => {
                    tracing::info!("the disqualification list can be read again");
                    failing = false;
                }
                Ok(_) => {}
                Err(e) => {
                    if !failing {
                        tracing::warn!(error = %e, "reading the disqualification list failed; keeping the last copy and retrying");
                    }
                    failing = true;
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object_store::fs::FsStore;
    use alleycat_core::{RaceId, RacerId};

    fn request(racer: u64, race: Option<u64>) -> NewDisqualification {
        NewDisqualification {
            racer_id: RacerId(racer),
            race_id: race.map(RaceId),
            reason: "test".to_owned(),
        }
    }

    #[tokio::test]
    async fn changes_are_stored_seen_by_other_copies_and_never_lost() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        let one = DisqualificationList::watch(store.clone(), Duration::from_millis(20));
        let other = DisqualificationList::watch(store.clone(), Duration::from_millis(20));
        // Two writers at once: both entries are kept.
        let (a, b) = tokio::join!(one.add(request(1, Some(5))), other.add(request(2, None)));
        let (Added::Created(a), Added::Created(b)) = (a.unwrap(), b.unwrap()) else {
            panic!("both are new");
        };
        assert_ne!(a.id, b.id);
        let again = one.add(request(1, Some(5))).await.unwrap();
        assert_eq!(again, Added::Existing(a.clone()));
        // The other copy sees the first's entry by polling.
        let mut seen = other.subscribe();
        tokio::time::timeout(
            Duration::from_secs(5),
            seen.wait_for(|l| l.as_ref().is_some_and(|l| l.entries().len() == 2)),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(one.remove(a.id).await.unwrap());
        assert!(!one.remove(a.id).await.unwrap());
        let stored = other.refresh().await.unwrap();
        assert!(!stored.covers(RacerId(1), RaceId(5)));
        assert!(stored.covers(RacerId(2), RaceId(9)));
    }

    #[tokio::test]
    async fn an_older_copy_read_late_never_replaces_a_newer_one() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        let list = DisqualificationList::watch(store.clone(), Duration::from_secs(3600));
        list.add(request(1, None)).await.unwrap();
        let old = list.current().unwrap();
        list.add(request(2, None)).await.unwrap();
        list.adopt(&old);
        assert!(list.current().unwrap().covers_racer(RacerId(2)));
    }

    #[tokio::test]
    async fn a_corrupt_list_is_an_error_and_the_last_copy_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
        let list = DisqualificationList::watch(store.clone(), Duration::from_secs(3600));
        list.add(request(1, None)).await.unwrap();
        store
            .put(
                LIST_KEY,
                Bytes::from_static(b"{not json"),
                "application/json",
            )
            .await
            .unwrap();
        assert!(matches!(list.refresh().await, Err(ListError::Corrupt(_))));
        assert!(
            list.error()
                .unwrap()
                .contains("not a disqualification list")
        );
        assert!(list.current().unwrap().covers_racer(RacerId(1)));
        assert!(list.add(request(2, None)).await.is_err());
    }
}
