//! Shard leases, kept as small JSON objects in an object store and updated
//! only by conditional writes, as the Kinesis Client Library keeps them in
//! DynamoDB.
//!
//! A lease names the shard's owner and when its claim expires; its `token`
//! grows with every change of owner, and every write is conditional on the
//! version the writer last saw, so a process that lost its lease (it paused
//! past the expiry and someone took over) cannot overwrite the new owner's
//! checkpoint: its write fails and it learns it lost the shard. The lease
//! also carries the shard's checkpoint and pending delivery, so they move
//! with the shard.

use crate::object_store::{ETag, ObjectStore, Precondition, StoreError};
use crate::stream::{PendingDelivery, SequenceNumber};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// One shard's lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Lease {
    /// The owning process.
    pub(super) owner: String,
    /// When the claim lapses unless renewed, ms since the epoch.
    pub(super) expires_at_ms: i64,
    /// Fencing token: incremented on every change of owner.
    pub(super) token: u64,
    /// Last sequence processed, if any.
    #[serde(default)]
    pub(super) checkpoint: Option<SequenceNumber>,
    /// Every record of the (closed) shard was processed; its children may
    /// be read.
    #[serde(default)]
    pub(super) finished: bool,
    /// A delivery begun after the checkpoint.
    #[serde(default)]
    pub(super) pending: Option<PendingDelivery>,
}

impl Lease {
    /// Whether `owner` may take this lease over at `now_ms`.
    pub(super) fn is_available_to(&self, owner: &str, now_ms: i64) -> bool {
        !self.finished && (self.owner == owner || self.expires_at_ms <= now_ms)
    }

    /// This lease claimed by `owner` until `expires_at_ms`.
    pub(super) fn claimed_by(&self, owner: &str, expires_at_ms: i64) -> Lease {
        Lease {
            owner: owner.to_owned(),
            expires_at_ms,
            token: if self.owner == owner {
                self.token
            } else {
                self.token + 1
            },
            ..self.clone()
        }
    }
}

/// The leases of one consumer, under `_leases/<consumer>/<shard>.json`.
#[derive(Clone)]
pub(super) struct LeaseTable {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl LeaseTable {
    pub(super) fn new(store: Arc<dyn ObjectStore>, consumer: &str) -> LeaseTable {
        LeaseTable {
            store,
            prefix: format!("_leases/{consumer}/"),
        }
    }

    fn key(&self, shard: &str) -> String {
        format!("{}{shard}.json", self.prefix)
    }

    /// The shard's lease and its version, if it has one.
    pub(super) async fn read(&self, shard: &str) -> Result<Option<(Lease, ETag)>, StoreError> {
        let key = self.key(shard);
        let Some(object) = self.store.get(&key).await? else {
            return Ok(None);
        };
        let lease = serde_json::from_slice(&object.body).map_err(|e| StoreError::Io {
            operation: "decode lease",
            key,
            source: Box::new(e),
        })?;
        Ok(Some((lease, object.etag)))
    }

    /// Writes the lease if it is still at `version` (`None`: if there is none).
    pub(super) async fn write(
        &self,
        shard: &str,
        lease: &Lease,
        version: Option<&ETag>,
    ) -> Result<ETag, StoreError> {
        let body = Bytes::from(serde_json::to_vec(lease).expect("a lease serializes"));
        let condition =
            version.map_or(Precondition::IfAbsent, |v| Precondition::IfMatch(v.clone()));
        self.store
            .put_if(&self.key(shard), body, "application/json", condition)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::object_store::fs::FsStore;

    fn lease(owner: &str, expires_at_ms: i64) -> Lease {
        Lease {
            owner: owner.into(),
            expires_at_ms,
            token: 3,
            checkpoint: Some("42".parse().unwrap()),
            finished: false,
            pending: None,
        }
    }

    #[test]
    fn a_lease_is_taken_over_only_once_expired_and_never_once_finished() {
        let held = lease("a", 1_000);
        assert!(held.is_available_to("a", 500), "its owner renews it");
        assert!(!held.is_available_to("b", 500));
        assert!(held.is_available_to("b", 1_000));
        let taken = held.claimed_by("b", 2_000);
        assert_eq!(
            (
                taken.owner.as_str(),
                taken.token,
                taken
                    .checkpoint
                    .as_ref()
                    .map(ToString::to_string)
                    .as_deref()
            ),
            ("b", 4, Some("42"))
        );
        assert_eq!(
            held.claimed_by("a", 2_000).token,
            3,
            "renewal keeps the token"
        );
        let done = Lease {
            finished: true,
            ..held
        };
        assert!(!done.is_available_to("a", 0));
    }

    #[test]
    fn a_lease_is_stored_in_the_same_bytes_as_before() {
        let stored = r#"{"owner":"a","expiresAtMs":1000,"token":3,"checkpoint":"49617562271853452710231452089870573953214820913201119234","finished":false,"pending":{"key":"k","first":"49617562271853452710231452089870573953214820913201119235","last":"49617562271853452710231452089870573953214820913201119240"}}"#;
        let lease: Lease = serde_json::from_str(stored).unwrap();
        assert_eq!(serde_json::to_string(&lease).unwrap(), stored);
    }

    #[tokio::test]
    async fn a_stale_writer_is_fenced_off() {
        let dir = tempfile::tempdir().unwrap();
        let table = LeaseTable::new(Arc::new(FsStore::open(dir.path()).unwrap()), "transformer");
        let v1 = table
            .write("shard-1", &lease("a", 1_000), None)
            .await
            .unwrap();
        assert!(
            table
                .write("shard-1", &lease("b", 1_000), None)
                .await
                .is_err(),
            "create only once"
        );
        let (read, version) = table.read("shard-1").await.unwrap().unwrap();
        assert_eq!((read, &version), (lease("a", 1_000), &v1));
        // b takes over; a, still holding v1, can no longer write.
        table
            .write(
                "shard-1",
                &lease("a", 1_000).claimed_by("b", 3_000),
                Some(&v1),
            )
            .await
            .unwrap();
        let stale = table.write("shard-1", &lease("a", 5_000), Some(&v1)).await;
        assert!(matches!(stale, Err(StoreError::PreconditionFailed { .. })));
        assert_eq!(table.read("shard-1").await.unwrap().unwrap().0.owner, "b");
        assert_eq!(table.read("shard-2").await.unwrap(), None);
    }
}
