//! Object stores: the delivery store (what the transformer writes) and the
//! history store (the published class files).
//!
//! Two implementations: [`fs::FsStore`] (files under the data directory, the
//! embedded default) and [`s3::S3Store`]. Both give atomic writes, ETags,
//! and conditional writes, which is what lets several processes update the
//! same object without losing each other's changes.

pub mod fs;
pub mod s3;

use async_trait::async_trait;
use bytes::Bytes;
use std::fmt;

/// An object's version tag: it changes whenever the object does.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// An object's bytes and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Object {
    /// The bytes.
    pub body: Bytes,
    /// Its version, for a later conditional write.
    pub etag: ETag,
}

/// When a write may happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Always.
    None,
    /// Only if the object is still at this version (S3 `If-Match`).
    IfMatch(ETag),
    /// Only if there is no such object yet (S3 `If-None-Match: *`).
    IfAbsent,
}

/// A key-value store of whole objects, as S3 is.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Writes `body` under `key` if `condition` holds, atomically: a reader
    /// sees the old object or the new one, never a torn one; two conditional
    /// writers never both succeed against the same version. Durable once
    /// this returns. Fails with [`StoreError::PreconditionFailed`] when the
    /// condition does not hold.
    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        content_type: &'static str,
        condition: Precondition,
    ) -> Result<ETag, StoreError>;

    /// The object under `key`, or `None` if there is none.
    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError>;

    /// The version of the object under `key`, without its bytes.
    async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError>;

    /// Every key that starts with `prefix` and sorts after `start_after`, in
    /// ascending order.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, StoreError>;

    /// Removes the object under `key` (none there is no error), durably.
    async fn delete(&self, key: &str) -> Result<(), StoreError>;

    /// Whether there is an object under `key`.
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        Ok(self.head(key).await?.is_some())
    }

    /// Writes `body` under `key` unconditionally.
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        content_type: &'static str,
    ) -> Result<ETag, StoreError> {
        self.put_if(key, body, content_type, Precondition::None)
            .await
    }
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
        reason: std::borrow::Cow<'static, str>,
    },
    /// A conditional write found the object changed (or present).
    #[error("{key:?} changed since it was read")]
    PreconditionFailed {
        /// The key.
        key: String,
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
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
