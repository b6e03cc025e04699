//! The merge state: which delivery objects are merged, and which wait to be
//! merged into a class whose publication failed or whose file cannot be
//! read; kept in the history store so a restart neither merges everything
//! again nor misses anything.

use alleycat_core::ClassId;
use alleycat_core::delivery;
use alleycat_core::disqualification::Disqualifications;
use alleycat_storage::ObjectStore;
use anyhow::Context as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where the merger remembers its progress, in the history store.
const STATE_KEY: &str = "_state/history-merger.json";

/// What the merger has done, durably.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct MergeState {
    /// Start of the last complete check; `None` before the first one.
    pub(super) checked_at: Option<DateTime<Utc>>,
    /// Objects merged whose keys are recent enough to be listed again:
    /// their records are in every class file they belong in, except the
    /// classes they are `pending` for.
    pub(super) merged: BTreeSet<String>,
    /// Per class, the objects whose records of that class are not in its
    /// published file yet (its publication failed, or its file cannot be
    /// read): read again once the class can be published. Kept however old.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(super) pending: BTreeMap<ClassId, BTreeSet<String>>,
    /// The disqualification list every published class file reflects.
    #[serde(default, skip_serializing_if = "Disqualifications::is_empty")]
    pub(super) applied: Disqualifications,
}

impl MergeState {
    /// The saved state, or a fresh one if none was ever saved.
    pub(super) async fn load(store: &dyn ObjectStore) -> anyhow::Result<MergeState> {
        match store
            .get(STATE_KEY)
            .await
            .context("reading the merge state")?
        {
            Some(object) => serde_json::from_slice(&object.body)
                .with_context(|| format!("{STATE_KEY} is corrupt")),
            None => Ok(MergeState::default()),
        }
    }

    /// Records a complete check that started at `started`, and forgets the
    /// keys written before `next_listing_from`: the next check's listing
    /// starts there, so they cannot come back.
    pub(super) fn complete_check(
        &mut self,
        started: DateTime<Utc>,
        next_listing_from: DateTime<Utc>,
    ) {
        let horizon = delivery::listing_start_after(next_listing_from);
        self.merged.retain(|k| k.as_str() > horizon.as_str());
        self.checked_at = Some(started);
    }

    /// Saves the state.
    pub(super) async fn save(&self, store: &dyn ObjectStore) -> anyhow::Result<()> {
        let body = serde_json::to_vec(self).context("encoding the merge state")?;
        store
            .put(STATE_KEY, Bytes::from(body), "application/json")
            .await
            .context("saving the merge state")?;
        Ok(())
    }
}
