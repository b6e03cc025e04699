//! Finding new delivery objects and merging them into the class files.
//!
//! Discovery lists the delivery store's date prefixes from shortly before
//! the previous check (the listing grace) up to now, and skips the objects
//! it remembers merging. The transformer names each object by the time it
//! was written, so an object written while a merge was running appears in
//! the next check's listing; none is skipped.
//!
//! Order of effects: merge in memory, publish the changed class files, and
//! only then record the objects as merged. A crash in between merges some
//! objects again, which the max-merge makes harmless.
//!
//! Several history processes may run at once. Each write of a class file is
//! conditional on the version last read (`If-Match`, or `If-None-Match: *`
//! when creating it); when another process got there first, the file is
//! read again, merged into ours (max per key, so nothing of either side is
//! lost) and written again.

mod class_state;
mod discovery;
mod state;
#[cfg(test)]
mod tests;

use crate::HistoryArgs;
use alleycat_core::ClassId;
use alleycat_core::delivery::HistoryPoint;
use alleycat_core::history::{ClassHistory, Touched};
use alleycat_storage::ObjectStore;
use chrono::Utc;
use class_state::ClassState;
use state::MergeState;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Delivery objects merged between two publications, when catching up.
const OBJECTS_PER_PUBLICATION: usize = 64;
/// How often the state is saved when nothing new was merged.
const IDLE_STATE_SAVE: Duration = Duration::from_secs(30);

/// What one check merged.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MergeReport {
    /// Delivery objects merged.
    pub objects: usize,
    /// Records (lines) merged.
    pub records: usize,
    /// Lines refused as invalid.
    pub rejected: usize,
    /// Class files republished.
    pub published: Vec<ClassId>,
}

/// Merges delivery objects into class histories and publishes them.
pub struct Merger {
    delivery: Arc<dyn ObjectStore>,
    history: Arc<dyn ObjectStore>,
    /// Every class with a published file or merged records.
    classes: BTreeMap<ClassId, ClassState>,
    state: MergeState,
    grace: Duration,
    gzip_level: u32,
    saved_at: Option<Instant>,
}

impl Merger {
    /// Loads every published class file and the merge state, so a restart
    /// continues where the last run stopped. Refuses to start on a class file
    /// it cannot read, rather than overwrite it and lose its history.
    pub async fn load(
        delivery: Arc<dyn ObjectStore>,
        history: Arc<dyn ObjectStore>,
        args: &HistoryArgs,
    ) -> anyhow::Result<Merger> {
        let mut classes = BTreeMap::new();
        for class in ClassId::all() {
            if let Some(loaded) = ClassState::load(history.as_ref(), class, args.gzip_level).await?
            {
                classes.insert(class, loaded);
            }
        }
        let state = MergeState::load(history.as_ref()).await?;
        Ok(Merger {
            delivery,
            history,
            classes,
            state,
            grace: args.listing_grace,
            gzip_level: args.gzip_level,
            saved_at: None,
        })
    }

    /// The in-memory history of `class`.
    #[must_use]
    pub fn class(&self, class: ClassId) -> Option<&ClassHistory> {
        self.classes.get(&class).map(ClassState::history)
    }

    /// Finds delivery objects not merged yet, merges them and publishes the
    /// class files they changed.
    pub async fn merge_new(&mut self) -> anyhow::Result<MergeReport> {
        let started = Utc::now();
        let since = self.state.checked_at.map(|at| at - self.grace_delta());
        let listed = discovery::list_candidates(self.delivery.as_ref(), since).await?;
        let fresh: Vec<String> = listed
            .into_iter()
            .filter(|k| !self.state.merged.contains(k))
            .collect();
        let mut report = MergeReport::default();
        for chunk in fresh.chunks(OBJECTS_PER_PUBLICATION) {
            let mut touched = Touched::new();
            for key in chunk {
                let (points, rejected) =
                    discovery::read_points(self.delivery.as_ref(), key).await?;
                report.rejected += rejected;
                self.merge(&points, &mut touched);
                report.objects += 1;
                report.records += points.len();
            }
            self.publish(&touched).await?;
            report.published.extend(touched.into_keys());
            self.state.merged.extend(chunk.iter().cloned());
        }
        self.state
            .complete_check(started, started - self.grace_delta());
        // An idle check changes only `checked_at`; saving it now and then
        // just keeps the listing window a restart starts from short.
        if report.objects > 0
            || self
                .saved_at
                .is_none_or(|at| at.elapsed() >= IDLE_STATE_SAVE)
        {
            self.state.save(self.history.as_ref()).await?;
            self.saved_at = Some(Instant::now());
        }
        if report.objects > 0 {
            tracing::info!(objects = report.objects, records = report.records, rejected = report.rejected, published = ?report.published, "merged delivery objects");
        }
        report.published.sort_unstable();
        report.published.dedup();
        Ok(report)
    }

    fn grace_delta(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX)
    }

    /// Merges every point into its class; adds the seconds whose bests
    /// changed (and so need republishing) to `touched`. Points that change
    /// nothing are free.
    fn merge(&mut self, points: &[HistoryPoint], touched: &mut Touched) {
        for p in points {
            let class = self
                .classes
                .entry(p.class_id)
                .or_insert_with(|| ClassState::empty(self.gzip_level));
            if class.merge(p) {
                touched.entry(p.class_id).or_default().insert(p.second);
            }
        }
    }

    async fn publish(&mut self, touched: &Touched) -> anyhow::Result<()> {
        for (&class, seconds) in touched {
            self.classes
                .entry(class)
                .or_insert_with(|| ClassState::empty(self.gzip_level))
                .publish(self.history.as_ref(), class, seconds, self.gzip_level)
                .await?;
        }
        Ok(())
    }
}
