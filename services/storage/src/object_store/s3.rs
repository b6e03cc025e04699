//! The S3 object store, through `aws-sdk-s3`: a thin wrapper mapping the
//! trait onto PutObject (with `If-Match` / `If-None-Match: *`), GetObject,
//! HeadObject and ListObjectsV2.

use super::{ETag, Object, ObjectStore, Precondition, StoreError};
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{ProvideErrorMetadata as _, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

/// One bucket of S3 (or of any server speaking its protocol).
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
}

impl S3Store {
    /// A store over `bucket`.
    #[must_use]
    pub fn new(client: Client, bucket: impl Into<String>) -> S3Store {
        S3Store {
            client,
            bucket: bucket.into(),
        }
    }
}

fn io_error<E>(operation: &'static str, key: &str, e: SdkError<E>) -> StoreError
where
    E: std::error::Error + Send + Sync + 'static,
{
    StoreError::Io {
        operation,
        key: key.to_owned(),
        source: Box::new(e),
    }
}

/// HTTP status of a failed call, if the server answered at all.
fn status<E>(e: &SdkError<E>) -> Option<u16> {
    e.raw_response().map(|r| r.status().as_u16())
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put_if(
        &self,
        key: &str,
        body: Bytes,
        content_type: &'static str,
        condition: Precondition,
    ) -> Result<ETag, StoreError> {
        let mut request = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type(content_type)
            .body(ByteStream::from(body));
        let if_match = matches!(condition, Precondition::IfMatch(_));
        request = match condition {
            Precondition::None => request,
            Precondition::IfMatch(etag) => request.if_match(etag.0),
            Precondition::IfAbsent => request.if_none_match("*"),
        };
        match request.send().await {
            Ok(output) => Ok(ETag(output.e_tag.unwrap_or_default())),
            // 409 ConditionalRequestConflict: a concurrent conditional write
            // is in flight; 404 on If-Match: the object is gone. Like 412,
            // the caller re-reads and decides again.
            Err(e)
                if matches!(status(&e), Some(412 | 409))
                    || (if_match && status(&e) == Some(404)) =>
            {
                Err(StoreError::PreconditionFailed {
                    key: key.to_owned(),
                })
            }
            Err(e) => Err(io_error("put", key, e)),
        }
    }

    async fn get(&self, key: &str) -> Result<Option<Object>, StoreError> {
        let output = match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => output,
            Err(e)
                if e.as_service_error().is_some_and(|s| s.is_no_such_key())
                    || status(&e) == Some(404) =>
            {
                return Ok(None);
            }
            Err(e) => return Err(io_error("get", key, e)),
        };
        let etag = ETag(output.e_tag.clone().unwrap_or_default());
        let body = output.body.collect().await.map_err(|e| StoreError::Io {
            operation: "get",
            key: key.to_owned(),
            source: Box::new(e),
        })?;
        Ok(Some(Object {
            body: body.into_bytes(),
            etag,
        }))
    }

    async fn head(&self, key: &str) -> Result<Option<ETag>, StoreError> {
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
        {
            Ok(output) => Ok(Some(ETag(output.e_tag.unwrap_or_default()))),
            Err(e) if status(&e) == Some(404) || e.code() == Some("NotFound") => Ok(None),
            Err(e) => Err(io_error("head", key, e)),
        }
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        // S3 answers 204 whether or not there was an object.
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .send()
            .await
            .map_err(|e| io_error("delete", key, e))?;
        Ok(())
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(prefix)
            .set_start_after(start_after.map(str::to_owned))
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| io_error("list", prefix, e))?;
            keys.extend(
                page.contents
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|o| o.key),
            );
        }
        Ok(keys)
    }
}
