//! Which shards this process reads: claiming, renewing, handing over and
//! finishing their leases, and starting a reader for each shard it holds.

use super::lease::{Lease, LeaseTable};
use super::shards;
use super::{KinesisSettings, unavailable};
use crate::freshness::{Freshness, now_ms};
use crate::object_store::{ETag, StoreError};
use crate::stream::{SequenceNumber, StreamError, StreamRecord};
use aws_sdk_kinesis::Client;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc};
use tokio_util::sync::CancellationToken;

/// One consumer's shards in this process; what the lease rounds, the shard
/// readers and the subscription share.
pub(super) struct Coordinator {
    pub(super) client: Client,
    pub(super) settings: Arc<KinesisSettings>,
    leases: LeaseTable,
    /// This process, as lease owner.
    pub(super) owner: String,
    pub(super) owned: Mutex<HashMap<String, Owned>>,
    /// Where the shard readers send what they read.
    pub(super) records: mpsc::Sender<Vec<StreamRecord>>,
    /// The consumer's name, as the lag's label.
    pub(super) consumer: String,
    /// Where the readers report how far behind they are, if anywhere.
    pub(super) freshness: Option<Arc<Freshness>>,
}

/// A shard this process holds the lease of.
pub(super) struct Owned {
    pub(super) lease: Lease,
    pub(super) version: ETag,
    /// Stops the shard's reader.
    pub(super) stop: CancellationToken,
    /// Set when the reader reached the end of the (closed) shard: the last
    /// sequence it read, if it read any.
    pub(super) exhausted: Option<Option<SequenceNumber>>,
}

impl Owned {
    /// Whether `lease` (this shard's, maybe with a new checkpoint) has every
    /// record of the closed shard checkpointed.
    pub(super) fn is_finished_by(&self, lease: &Lease) -> bool {
        match &self.exhausted {
            Some(None) => true,
            Some(Some(last)) => lease.checkpoint.as_ref().is_some_and(|c| c >= last),
            None => false,
        }
    }
}

struct ShardInfo {
    id: String,
    parents: Vec<String>,
}

impl Coordinator {
    /// The coordinator of `leases`' consumer, sending records to `records`.
    pub(super) fn new(
        client: Client,
        settings: Arc<KinesisSettings>,
        leases: LeaseTable,
        records: mpsc::Sender<Vec<StreamRecord>>,
        consumer: &str,
        freshness: Option<Arc<Freshness>>,
    ) -> Coordinator {
        Coordinator {
            client,
            settings,
            leases,
            owner: format!(
                "{}-{}-{:08x}",
                hostname(),
                std::process::id(),
                fastrand::u32(..)
            ),
            owned: Mutex::new(HashMap::new()),
            records,
            consumer: consumer.to_owned(),
            freshness,
        }
    }

    /// Renews leases every third of their duration and looks for shards to take.
    pub(super) async fn coordinate(self: Arc<Self>, stop: CancellationToken) {
        let period = self.settings.lease_duration / 3;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(period) => {}
            }
            if let Err(e) = self.refresh().await {
                tracing::warn!(error = %e, "shard lease round failed; retrying");
            }
        }
        let mut owned = self.owned.lock().await;
        for shard in owned.values() {
            shard.stop.cancel();
        }
        owned.clear();
    }

    async fn list_shards(&self) -> Result<Vec<ShardInfo>, StreamError> {
        let shards = shards::list(&self.client, &self.settings.stream_name).await?;
        Ok(shards
            .into_iter()
            .map(|shard| ShardInfo {
                parents: [shard.parent_shard_id, shard.adjacent_parent_shard_id]
                    .into_iter()
                    .flatten()
                    .collect(),
                id: shard.shard_id,
            })
            .collect())
    }

    /// One round: renew what we hold (finishing exhausted shards), then
    /// claim shards nobody holds whose parents are finished.
    pub(super) async fn refresh(self: &Arc<Self>) -> Result<(), StreamError> {
        let shards = self.list_shards().await?;
        let expires =
            now_ms() + i64::try_from(self.settings.lease_duration.as_millis()).unwrap_or(i64::MAX);
        {
            let mut owned = self.owned.lock().await;
            let ids: Vec<String> = owned.keys().cloned().collect();
            for shard in ids {
                let entry = owned.get_mut(&shard).expect("listed above");
                let mut renewed = entry.lease.claimed_by(&self.owner, expires);
                renewed.finished = entry.is_finished_by(&entry.lease);
                self.write_owned(&mut owned, &shard, renewed).await.ok();
            }
        }

        let listed: HashSet<&str> = shards.iter().map(|s| s.id.as_str()).collect();
        let mut leases = HashMap::new();
        for shard in &shards {
            let lease = self
                .leases
                .read(&shard.id)
                .await
                .map_err(|e| unavailable("reading a lease", e))?;
            leases.insert(shard.id.as_str(), lease);
        }
        let finished = |id: &str| {
            // A parent no longer listed has aged out of the stream: nothing left to read.
            !listed.contains(id)
                || leases
                    .get(id)
                    .is_some_and(|l| l.as_ref().is_some_and(|(l, _)| l.finished))
        };
        for shard in &shards {
            if self.owned.lock().await.contains_key(&shard.id)
                || !shard.parents.iter().all(|p| finished(p))
            {
                continue;
            }
            let (lease, version) = match &leases[shard.id.as_str()] {
                Some((lease, _)) if !lease.is_available_to(&self.owner, now_ms()) => continue,
                Some((lease, version)) => (lease.claimed_by(&self.owner, expires), Some(version)),
                None => (
                    Lease {
                        owner: self.owner.clone(),
                        expires_at_ms: expires,
                        token: 1,
                        checkpoint: None,
                        finished: false,
                        pending: None,
                    },
                    None,
                ),
            };
            match self.leases.write(&shard.id, &lease, version).await {
                Ok(version) => self.start_reading(&shard.id, lease, version).await,
                Err(StoreError::PreconditionFailed { .. }) => {} // another process was quicker
                Err(e) => tracing::warn!(shard = %shard.id, error = %e, "claiming a shard failed"),
            }
        }
        Ok(())
    }

    async fn start_reading(self: &Arc<Self>, shard: &str, lease: Lease, version: ETag) {
        tracing::info!(shard, token = lease.token, checkpoint = ?lease.checkpoint, "took the shard's lease");
        let stop = CancellationToken::new();
        let from = lease.checkpoint.clone();
        self.owned.lock().await.insert(
            shard.to_owned(),
            Owned {
                lease,
                version,
                stop: stop.clone(),
                exhausted: None,
            },
        );
        tokio::spawn(Arc::clone(self).read_shard(shard.to_owned(), from, stop));
    }

    /// Writes `lease` for an owned shard, conditional on its version. On a
    /// conflict the shard was taken over: it is dropped and its reader stopped.
    pub(super) async fn write_owned(
        &self,
        owned: &mut HashMap<String, Owned>,
        shard: &str,
        lease: Lease,
    ) -> Result<(), StreamError> {
        let entry = owned
            .get_mut(shard)
            .ok_or_else(|| StreamError::LeaseLost(shard.to_owned()))?;
        match self.leases.write(shard, &lease, Some(&entry.version)).await {
            Ok(version) => {
                let finished = lease.finished;
                entry.version = version;
                entry.lease = lease;
                if finished {
                    tracing::info!(shard, "shard finished");
                    entry.stop.cancel();
                    owned.remove(shard);
                }
                Ok(())
            }
            Err(StoreError::PreconditionFailed { .. }) => {
                tracing::warn!(shard, "lost the shard's lease to another process");
                entry.stop.cancel();
                owned.remove(shard);
                Err(StreamError::LeaseLost(shard.to_owned()))
            }
            Err(e) => Err(unavailable("writing a lease", e)),
        }
    }

    /// Stops every reader and lets the leases expire at once, so other
    /// processes take the shards over without waiting.
    pub(super) async fn release_all(&self) {
        let mut owned = self.owned.lock().await;
        let ids: Vec<String> = owned.keys().cloned().collect();
        for shard in ids {
            let entry = &owned[&shard];
            entry.stop.cancel();
            let released = Lease {
                expires_at_ms: 0,
                ..entry.lease.clone()
            };
            if self.write_owned(&mut owned, &shard, released).await.is_ok() {
                tracing::info!(%shard, "released the shard's lease");
            }
        }
        owned.clear();
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "host".to_owned())
}
