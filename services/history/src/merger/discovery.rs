//! Finding the delivery objects that may not be merged yet, and reading
//! the points out of one.

use alleycat_core::codec;
use alleycat_core::delivery::{self, HistoryPoint};
use alleycat_storage::ObjectStore;
use anyhow::Context as _;
use chrono::{DateTime, NaiveDateTime, Utc};

/// Largest decompressed delivery object accepted (the transformer's buffer
/// settings are bounded by the same constant).
const MAX_DELIVERY_BYTES: u64 = delivery::MAX_OBJECT_BYTES as u64;

/// Every delivery key written since `since` (or ever, when `None`), oldest
/// first.
pub(super) async fn list_candidates(
    store: &dyn ObjectStore,
    since: Option<DateTime<Utc>>,
) -> anyhow::Result<Vec<String>> {
    let Some(from) = since else {
        // First run ever: everything in the store is new.
        let all = store
            .list("", None)
            .await
            .context("listing the delivery store")?;
        return Ok(all
            .into_iter()
            .filter(|k| delivery::is_delivery_key(k))
            .collect());
    };
    let start_after = delivery::listing_start_after(from);
    let mut keys = Vec::new();
    for prefix in delivery::hour_prefixes(from, Utc::now()) {
        let after = (start_after.starts_with(&prefix)).then_some(start_after.as_str());
        let listed = store
            .list(&prefix, after)
            .await
            .with_context(|| format!("listing {prefix}"))?;
        keys.extend(listed.into_iter().filter(|k| delivery::is_delivery_key(k)));
    }
    Ok(keys)
}

/// Every delivery key from `first` to `last` (both included), oldest first:
/// the objects of a race's window.
pub(super) async fn list_between(
    store: &dyn ObjectStore,
    first: &str,
    last: &str,
) -> anyhow::Result<Vec<String>> {
    let hour = |key: &str| {
        key.get(..13)
            .and_then(|h| NaiveDateTime::parse_from_str(&format!("{h}:00"), "%Y/%m/%d/%H:%M").ok())
            .map(|t| t.and_utc())
            .with_context(|| format!("{key:?} is not a delivery key"))
    };
    let mut keys = Vec::new();
    for prefix in delivery::hour_prefixes(hour(first)?, hour(last)?) {
        let listed = store
            .list(&prefix, None)
            .await
            .with_context(|| format!("listing {prefix}"))?;
        keys.extend(
            listed.into_iter().filter(|k| {
                k.as_str() >= first && k.as_str() <= last && delivery::is_delivery_key(k)
            }),
        );
    }
    Ok(keys)
}

/// The points of the delivery object at `key`, and how many of its lines
/// were refused as invalid. An object that vanished or is not gzip gives
/// none: it can never be merged, so retrying it would be pointless.
pub(super) async fn read_points(
    store: &dyn ObjectStore,
    key: &str,
) -> anyhow::Result<(Vec<HistoryPoint>, usize)> {
    let Some(object) = store
        .get(key)
        .await
        .with_context(|| format!("reading {key}"))?
    else {
        tracing::warn!(%key, "listed delivery object vanished; skipping it");
        return Ok((Vec::new(), 0));
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
            Ok((points, bad.len()))
        }
        Err(e) => {
            tracing::error!(%key, error = %e, "delivery object is not gzip; skipping it");
            Ok((Vec::new(), 0))
        }
    }
}
