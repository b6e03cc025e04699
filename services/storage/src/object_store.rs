//! Object stores: the delivery store (what the transformer writes) and the
//! history store (the published class files).

pub mod fs;

use async_trait::async_trait;
use bytes::Bytes;

/// A key-value store of immutable-per-write objects, as S3 is.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes `body` under `key`, atomically: a reader sees the old object or
    /// the new one, never a torn one. Durable once this returns.
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<(), StoreError>;

    /// The object under `key`, or `None` if there is none.
    async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError>;

    /// Every key that starts with `prefix` and sorts after `start_after`, in
    /// ascending order.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;
}

/// Why an object-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A key the store cannot hold.
    #[error("invalid object key {key:?}: {reason}")]
    InvalidKey {
        /// The key.
        key: String,
        /// Why.
        reason: &'static str,
    },
    /// The store failed.
    #[error("{operation} {key:?} failed: {source}")]
    Io {
        /// What was attempted.
        operation: &'static str,
        /// The key or prefix.
        key: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}
