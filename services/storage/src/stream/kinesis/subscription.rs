//! The [`Subscription`] a consumer gets: records of the shards this process
//! holds, checkpoints and pending deliveries written into their leases.

use super::coordinator::Coordinator;
use super::lease::Lease;
use crate::stream::{PendingDelivery, SequenceNumber, StreamError, StreamRecord, Subscription};
use async_trait::async_trait;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// A consumer's view of the stream: records of the shards it holds.
pub(super) struct KinesisSubscription {
    coordinator: Arc<Coordinator>,
    queue: mpsc::Receiver<Vec<StreamRecord>>,
    /// Stops the coordinator (and with it every shard reader).
    stop: CancellationToken,
}

impl KinesisSubscription {
    /// Reads `queue`, fed by `coordinator`'s readers until `stop` is cancelled.
    pub(super) fn new(
        coordinator: Arc<Coordinator>,
        queue: mpsc::Receiver<Vec<StreamRecord>>,
        stop: CancellationToken,
    ) -> KinesisSubscription {
        KinesisSubscription {
            coordinator,
            queue,
            stop,
        }
    }
}

impl Drop for KinesisSubscription {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[async_trait]
impl Subscription for KinesisSubscription {
    async fn poll(&mut self, max: usize, wait: Duration) -> Result<Vec<StreamRecord>, StreamError> {
        let mut records = match tokio::time::timeout(wait, self.queue.recv()).await {
            Err(_elapsed) => return Ok(Vec::new()),
            Ok(None) => return Err(StreamError::Closed),
            Ok(Some(batch)) => batch,
        };
        while records.len() < max {
            match self.queue.try_recv() {
                Ok(more) => records.extend(more),
                Err(_) => break,
            }
        }
        // Records of a shard lost meanwhile belong to its new owner now.
        let owned = self.coordinator.owned.lock().await;
        records.retain(|r| owned.contains_key(&r.shard_id));
        Ok(records)
    }

    async fn checkpoint(
        &mut self,
        shard_id: &str,
        sequence: &SequenceNumber,
    ) -> Result<(), StreamError> {
        let mut owned = self.coordinator.owned.lock().await;
        let entry = owned
            .get_mut(shard_id)
            .ok_or_else(|| StreamError::LeaseLost(shard_id.to_owned()))?;
        let mut lease = entry.lease.clone();
        if lease.checkpoint.as_ref().is_none_or(|c| c < sequence) {
            lease.checkpoint = Some(sequence.clone());
        }
        lease.pending = None;
        lease.finished = entry.is_finished_by(&lease);
        self.coordinator
            .write_owned(&mut owned, shard_id, lease)
            .await
    }

    async fn begin_delivery(
        &mut self,
        shard_id: &str,
        delivery: &PendingDelivery,
    ) -> Result<(), StreamError> {
        let mut owned = self.coordinator.owned.lock().await;
        let entry = owned
            .get(shard_id)
            .ok_or_else(|| StreamError::LeaseLost(shard_id.to_owned()))?;
        let lease = Lease {
            pending: Some(delivery.clone()),
            ..entry.lease.clone()
        };
        self.coordinator
            .write_owned(&mut owned, shard_id, lease)
            .await
    }

    async fn pending_delivery(
        &mut self,
        shard_id: &str,
    ) -> Result<Option<PendingDelivery>, StreamError> {
        let owned = self.coordinator.owned.lock().await;
        let entry = owned
            .get(shard_id)
            .ok_or_else(|| StreamError::LeaseLost(shard_id.to_owned()))?;
        Ok(entry.lease.pending.clone())
    }

    async fn close(&mut self) {
        self.stop.cancel();
        self.coordinator.release_all().await;
    }
}
