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
//! objects again, which the max-merge makes harmless. Each class keeps what
//! of its history is not published yet (the seconds changed since they were
//! last compressed, and whether the file holds unwritten bests) until a
//! write succeeds: a failed publication is tried again next round, and an
//! object is recorded as merged only once every class it has records of is
//! published, or else as *pending* for the classes that are not, in the
//! saved merge state: a restart reads those objects again for them.
//!
//! A class whose published file cannot be read (corrupt, or another format)
//! is blocked: its records are not merged, its file is never overwritten,
//! and the objects holding its records stay pending; `/readyz` names it
//! (`history class-N`). Every other class goes on. Once the file is
//! replaced by a valid one, or deleted, the class loads it and merges the
//! pending records.
//!
//! A class holds at most `ALLEYCAT_HISTORY_MAX_RACERS` racers: a record of a
//! new racer past that is not merged, and counted.
//!
//! After each check, the merger tells its process's
//! [`Freshness`](alleycat_storage::Freshness) the time before which every
//! delivery object is in its class files: the start of its last complete
//! check (every object written before was listed then, and published), or
//! the write time of the oldest object still pending for a class, if
//! earlier. `alleycat_history_freshness_seconds` is that time's age.
//!
//! Several history processes may run at once. Each write of a class file is
//! conditional on the version last read (`If-Match`, or `If-None-Match: *`
//! when creating it); when another process got there first, the file is
//! read again, merged into ours (max per key, so nothing of either side is
//! lost) and written again.

mod class_state;
mod discovery;
mod disqualify;
mod instruments;
mod pacing;
mod race_index;
mod state;
#[cfg(test)]
mod tests;

use crate::HistoryArgs;
use alleycat_core::delivery::HistoryPoint;
use alleycat_core::disqualification::Disqualifications;
use alleycat_core::history::ClassHistory;
use alleycat_core::lull::Lull;
use alleycat_core::{ClassId, RacerId};
use alleycat_runtime::Readiness;
use alleycat_storage::{DisqualificationList, Freshness, Handoff, ObjectStore};
use chrono::{DateTime, Utc};
use class_state::{Class, Merged, PublishError};
use instruments::Instruments;
use pacing::Pacer;
use race_index::ClassIndex;
use state::MergeState;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::Instrument as _;

pub(crate) use instruments::FRESHNESS;

/// Delivery objects merged between two publications, when catching up.
const OBJECTS_PER_PUBLICATION: usize = 64;
/// Longest wait for delivery objects to stop coming: while records flow,
/// a transformer delivers at least every `ALLEYCAT_BUFFER_INTERVAL_MS`
/// (5 s by default).
const LONGEST_OBJECT_GAP: Duration = Duration::from_secs(5);
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
    /// Delivery objects read again for the classes they were pending for.
    pub reread: usize,
    /// Of `objects`, those whose points the transformer in this process
    /// handed over, not read from the store.
    pub handed_over: usize,
    /// Per class, records not merged because their racer is new and the
    /// class already holds the most racers it may.
    pub too_many_racers: BTreeMap<ClassId, usize>,
    /// Records not merged because their race or racer is disqualified.
    pub disqualified: usize,
    /// Racers whose bests were recomputed after the disqualification list
    /// changed.
    pub rebuilt_racers: usize,
    /// Delivery objects read to recompute them.
    pub rebuild_objects: usize,
}

/// Merges delivery objects into class histories and publishes them.
pub struct Merger {
    delivery: Arc<dyn ObjectStore>,
    history: Arc<dyn ObjectStore>,
    /// Every class.
    classes: BTreeMap<ClassId, Class>,
    state: MergeState,
    /// Whether `state` changed since it was last saved.
    state_changed: bool,
    grace: Duration,
    gzip_level: u32,
    max_racers: usize,
    saved_at: Option<Instant>,
    readiness: Readiness,
    /// Records refused by the bound of racers since the start.
    too_many_racers: u64,
    /// When the published files were last checked to still be there, and
    /// how often they are.
    verified_at: Option<Instant>,
    verify_every: Duration,
    /// Per class, where each racer's records are.
    index: BTreeMap<ClassId, ClassIndex>,
    /// The disqualification list as this process reads it; `None`: none
    /// is watched (nothing is ever disqualified).
    list: Option<Arc<DisqualificationList>>,
    /// The disqualifications the in-memory histories reflect: records they
    /// cover are not merged.
    applied: Arc<Disqualifications>,
    /// Per class, the racers whose bests are still to be recomputed.
    rebuild: BTreeMap<ClassId, BTreeSet<RacerId>>,
    instruments: Instruments,
    /// Where the time before which everything is published is reported.
    freshness: Option<Arc<Freshness>>,
    /// Where the transformer in this process leaves its objects' points.
    handoff: Option<Arc<Handoff>>,
    /// Start of the last check that completed: every object written before
    /// it is in its class files, unless pending. `None` before the first.
    complete_before: Option<DateTime<Utc>>,
    /// When the next publication may be, by what the last one cost.
    pacer: Pacer,
    /// When checks found new delivery objects: once they stop coming,
    /// nothing more will join a deferred publication, so it need not wait
    /// for the pacer.
    objects: Lull,
    /// When the last check started.
    checked: Option<Instant>,
    /// Whether the last round of publications had one fail.
    publication_failed: bool,
}

/// Whether a publication waits for the pacer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pace {
    /// Deferred while the last publication's cost says so (a backlog is
    /// being merged: more records will come with the next one).
    ByCost,
    /// Now: nothing new is waiting to be merged.
    Now,
}

/// How often published class files are checked to still be there (a
/// deleted data directory, an operator's mistake): one HEAD per class.
const VERIFY_EVERY: Duration = Duration::from_secs(10);

/// The readiness part of a class.
fn part(class: ClassId) -> String {
    format!("history class-{class}")
}

impl Merger {
    /// [`Merger::load_reporting`], reporting to a readiness no one reads.
    pub async fn load(
        delivery: Arc<dyn ObjectStore>,
        history: Arc<dyn ObjectStore>,
        args: &HistoryArgs,
    ) -> anyhow::Result<Merger> {
        Merger::load_reporting(delivery, history, args, Readiness::default()).await
    }

    /// Loads every published class file and the merge state, so a restart
    /// continues where the last run stopped. A class file it cannot read
    /// blocks only its class (reported to `readiness` as `history class-N`)
    /// and is never overwritten. Fails only when the merge state cannot be
    /// read.
    pub async fn load_reporting(
        delivery: Arc<dyn ObjectStore>,
        history: Arc<dyn ObjectStore>,
        args: &HistoryArgs,
        readiness: Readiness,
    ) -> anyhow::Result<Merger> {
        let state = MergeState::load(history.as_ref()).await?;
        let instruments = Instruments::new();
        let mut classes = BTreeMap::new();
        let mut index = BTreeMap::new();
        for class in ClassId::all() {
            let loaded = Class::load(
                history.as_ref(),
                class,
                args.gzip_level,
                instruments.class(class),
            )
            .await;
            let empty = matches!(&loaded, Class::Ready(state) if state.history().is_empty());
            index.insert(
                class,
                ClassIndex::load(history.as_ref(), class, empty).await?,
            );
            match &loaded {
                Class::Ready(_) => readiness.set(&part(class), Ok(())),
                Class::Blocked(blocked) => {
                    tracing::error!(%class, reason = %blocked.reason, "class history blocked");
                    readiness.set(&part(class), Err(blocked.reason.clone()));
                }
            }
            classes.insert(class, loaded);
        }
        let applied = Arc::new(state.applied.clone());
        // Another history process may have published bests of the named
        // racers that this process's list took back (it had not read the
        // list yet): they are recomputed once, from the index.
        let named: BTreeSet<RacerId> = applied.racers().collect();
        let rebuild = ClassId::all()
            .filter(|_| !named.is_empty())
            .map(|class| (class, named.clone()))
            .collect();
        Ok(Merger {
            delivery,
            history,
            classes,
            index,
            list: None,
            applied,
            rebuild,
            state,
            state_changed: false,
            grace: args.listing_grace,
            gzip_level: args.gzip_level,
            max_racers: usize::try_from(args.max_racers).unwrap_or(usize::MAX),
            saved_at: None,
            verified_at: None,
            verify_every: VERIFY_EVERY,
            readiness,
            too_many_racers: 0,
            instruments,
            freshness: None,
            handoff: None,
            complete_before: None,
            pacer: Pacer::new(args.publish_pace),
            objects: Lull::new(LONGEST_OBJECT_GAP),
            checked: None,
            publication_failed: false,
        })
    }

    /// Reports to `freshness` after each check the time before which every
    /// delivery object is in its class files.
    #[must_use]
    pub fn with_freshness(mut self, freshness: Arc<Freshness>) -> Merger {
        self.freshness = Some(freshness);
        self
    }

    /// Takes the points of the delivery objects the transformer in this
    /// process writes from `handoff` instead of reading the objects back
    /// (see [`alleycat_storage::handoff`]); opens it, so that it keeps them.
    #[must_use]
    pub fn with_handoff(mut self, handoff: Arc<Handoff>) -> Merger {
        handoff.open();
        self.handoff = Some(handoff);
        self
    }

    /// Returns once this process's transformer wrote a delivery object
    /// (see [`Freshness::delivery_written`]); never without a freshness
    /// ledger to hear it from.
    pub async fn delivery_written(&self) {
        match &self.freshness {
            Some(freshness) => freshness.delivery_written().await,
            None => std::future::pending().await,
        }
    }

    /// Follows `list`: records it disqualifies are not merged, and when it
    /// changes, the bests of the racers it names are recomputed.
    #[must_use]
    pub fn with_disqualifications(mut self, list: Arc<DisqualificationList>) -> Merger {
        self.list = Some(list);
        self
    }

    /// Returns when a publication the pacer deferred may go: when the
    /// pacer lets it, or sooner once delivery objects stopped coming (a
    /// burst ended: the check then finds nothing new and publishes at
    /// once, instead of the records waiting out a pause that no more
    /// records will share). Never while every class is published.
    pub async fn deferred_publication(&self) {
        let Some(paced) = self.pacer.not_before().filter(|_| !self.all_published()) else {
            return std::future::pending().await;
        };
        // Only once per pause: the check it wakes starts after it.
        let paused = self
            .objects
            .paused_at()
            .filter(|at| self.checked.is_none_or(|checked| checked < *at));
        let at = paused.map_or(paced, |paused| paused.min(paced));
        tokio::time::sleep_until(at.into()).await;
    }

    /// From now on publishes after every check (the process is stopping).
    pub fn stop_pacing(&mut self) {
        self.pacer.lift();
    }

    /// The in-memory history of `class`; `None` while the class is blocked.
    #[must_use]
    pub fn class(&self, class: ClassId) -> Option<&ClassHistory> {
        match self.classes.get(&class)? {
            Class::Ready(state) => Some(state.history()),
            Class::Blocked(_) => None,
        }
    }

    /// Finds delivery objects not merged yet, merges them and publishes the
    /// class files they changed; first publishes what an earlier check could
    /// not, and unblocks the classes whose file became readable. Fails when
    /// a read or a publication failed: what it concerned stays to be done
    /// by the next check.
    pub async fn merge_new(&mut self) -> anyhow::Result<MergeReport> {
        let started = Utc::now();
        let timer = Instant::now();
        self.checked = Some(timer);
        let mut report = MergeReport::default();
        let checked = self
            .check(started, &mut report)
            .instrument(tracing::info_span!("merge_check"))
            .await;
        self.instruments
            .check(&report, checked.is_ok(), timer.elapsed());
        if checked.is_ok() {
            self.complete_before = Some(started);
        }
        self.report_freshness();
        checked?;
        report.published.sort_unstable();
        report.published.dedup();
        Ok(report)
    }

    /// Tells the process's freshness the time before which every delivery
    /// object is in its class files, once this process knows one; and how
    /// many objects wait for a class.
    fn report_freshness(&self) {
        let pending = self.state.pending.values();
        self.instruments
            .pending(pending.clone().map(BTreeSet::len).sum());
        // Keys sort by write time: a class's first pending key is its oldest.
        let oldest_pending = pending
            .filter_map(|keys| keys.first())
            .filter_map(|key| alleycat_core::delivery::written_at(key))
            .min();
        let before = match (self.complete_before, oldest_pending) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let (Some(freshness), Some(before)) = (&self.freshness, before) {
            freshness.published_before(before.timestamp_millis());
        }
    }

    /// One check of [`Merger::merge_new`], which started at `started`.
    async fn check(
        &mut self,
        started: DateTime<Utc>,
        report: &mut MergeReport,
    ) -> anyhow::Result<()> {
        // Classes whose publication failed in this check: not tried again
        // before the next one.
        let mut failed = BTreeMap::new();
        self.retry_blocked().await;
        self.republish_if_gone().await;
        self.apply_disqualifications(report).await;
        self.merge_pending(report).await?;
        self.publish_all(report, &mut failed, Pace::ByCost).await;

        let since = self.state.checked_at.map(|at| at - self.grace_delta());
        let listed = discovery::list_candidates(self.delivery.as_ref(), since).await?;
        let fresh: Vec<String> = listed
            .into_iter()
            .filter(|k| !self.state.merged.contains(k))
            .collect();
        if fresh.is_empty() {
            // Caught up: what waited for the pacer is published now, once,
            // rather than after the pause a backlog calls for.
            self.publish_all(report, &mut failed, Pace::Now).await;
        } else {
            self.objects.arrived(Instant::now());
        }
        for chunk in fresh.chunks(OBJECTS_PER_PUBLICATION) {
            let mut read = Vec::with_capacity(chunk.len());
            let mut read_error = None;
            for key in chunk {
                let handed_over = self.handoff.as_ref().and_then(|h| h.take(key));
                report.handed_over += usize::from(handed_over.is_some());
                let points = match handed_over {
                    Some(points) => Ok((points, 0)),
                    None => discovery::read_points(self.delivery.as_ref(), key).await,
                };
                match points {
                    Ok((points, rejected)) => {
                        report.rejected += rejected;
                        report.objects += 1;
                        report.records += points.len();
                        read.push((key, self.merge(key, &points, report)));
                    }
                    Err(e) => {
                        read_error = Some(e);
                        break;
                    }
                }
            }
            self.publish_all(report, &mut failed, Pace::ByCost).await;
            for (key, classes) in read {
                for class in classes {
                    if !self.is_published(class) {
                        self.state
                            .pending
                            .entry(class)
                            .or_default()
                            .insert(key.clone());
                    }
                }
                self.state.merged.insert(key.clone());
                self.state_changed = true;
            }
            if let Some(e) = read_error {
                self.log_report(report);
                return Err(e);
            }
        }
        // The index is saved before the state records its objects as
        // merged: unsaved, the state is not saved either, so a restart
        // reads those objects again.
        let mut index_error = None;
        for (class, index) in &mut self.index {
            if let Err(e) = index.save(self.history.as_ref(), *class).await {
                index_error = Some(e);
                break;
            }
        }
        if let Some(e) = index_error {
            if failed.is_empty() {
                return Err(e);
            }
            // The failed publication is the error to report.
            tracing::warn!(error = format!("{e:#}"), "saving the race index failed");
            self.log_report(report);
            return Err(self.publication_failed(&failed));
        }
        if failed.is_empty()
            && self.rebuild.is_empty()
            && self.all_published()
            && self.state.applied.version() != self.applied.version()
        {
            // Every class file now reflects the list.
            self.state.applied = self.applied.compact();
            self.state_changed = true;
        }
        self.state
            .complete_check(started, started - self.grace_delta());
        // An idle check changes only `checked_at`; saving it now and then
        // just keeps the listing window a restart starts from short.
        if self.state_changed
            || self
                .saved_at
                .is_none_or(|at| at.elapsed() >= IDLE_STATE_SAVE)
        {
            match self.state.save(self.history.as_ref()).await {
                Ok(()) => {
                    self.saved_at = Some(Instant::now());
                    self.state_changed = false;
                }
                // The failed publication is the error to report.
                Err(e) if !failed.is_empty() => {
                    tracing::warn!(error = format!("{e:#}"), "saving the merge state failed");
                }
                Err(e) => return Err(e),
            }
        }
        self.log_report(report);
        if !failed.is_empty() {
            return Err(self.publication_failed(&failed));
        }
        Ok(())
    }

    /// The error of a check whose publications `failed`.
    fn publication_failed(&self, failed: &BTreeMap<ClassId, String>) -> anyhow::Error {
        let classes: Vec<String> = failed.keys().map(ToString::to_string).collect();
        let (class, error) = failed.first_key_value().expect("some publication failed");
        anyhow::anyhow!(
            "publishing class {} failed (class {class}: {error}); their records stay to be \
             published by the next check",
            classes.join(", ")
        )
    }

    fn grace_delta(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.grace).unwrap_or(chrono::Duration::MAX)
    }

    fn log_report(&mut self, report: &MergeReport) {
        if report.objects > 0 || report.reread > 0 {
            tracing::info!(objects = report.objects, reread = report.reread, records = report.records, rejected = report.rejected, disqualified = report.disqualified, published = ?report.published, "merged delivery objects");
        }
        for (&class, &refused) in &report.too_many_racers {
            self.too_many_racers += refused as u64;
            tracing::warn!(%class, refused, total = self.too_many_racers, max_racers = self.max_racers, "records of new racers not merged: the class holds the most racers ALLEYCAT_HISTORY_MAX_RACERS allows");
        }
    }

    /// Whether every ready class's merged bests are in its published file
    /// (none failed, none deferred by the pacer).
    fn all_published(&self) -> bool {
        self.classes.values().all(|class| match class {
            Class::Ready(state) => !state.is_unpublished(),
            Class::Blocked(_) => true,
        })
    }

    /// Whether every merged best of `class` is in its published file.
    fn is_published(&self, class: ClassId) -> bool {
        match self.classes.get(&class) {
            Some(Class::Ready(state)) => !state.is_unpublished(),
            Some(Class::Blocked(_)) | None => false,
        }
    }

    /// Merges every point of the object at `key` into its class, unless
    /// the class is blocked or the point disqualified, and notes where the
    /// point is in the class's index; returns the classes the points belong
    /// to.
    fn merge(
        &mut self,
        key: &str,
        points: &[HistoryPoint],
        report: &mut MergeReport,
    ) -> BTreeSet<ClassId> {
        let mut classes = BTreeSet::new();
        for p in points {
            classes.insert(p.class_id);
            let class = self.classes.entry(p.class_id).or_insert_with(|| {
                Class::Ready(Box::new(class_state::ClassState::empty(self.gzip_level)))
            });
            // A blocked class's records wait (the caller keeps them pending).
            let Class::Ready(state) = class else { continue };
            let index = self.index.entry(p.class_id).or_default();
            if self.applied.covers(p.racer_id, p.race_id) {
                // Not merged, but indexed: a reinstatement brings it back.
                report.disqualified += 1;
                if index.has_racer(p.racer_id) || state.admits(p.racer_id, self.max_racers) {
                    index.note(key, p);
                }
            } else if state.merge(p, self.max_racers) == Merged::TooManyRacers {
                *report.too_many_racers.entry(p.class_id).or_default() += 1;
            } else {
                index.note(key, p);
            }
        }
        classes
    }

    /// Every [`VERIFY_EVERY`], notices published class files that are gone
    /// and publishes them again from memory.
    async fn republish_if_gone(&mut self) {
        if self
            .verified_at
            .is_some_and(|at| at.elapsed() < self.verify_every)
        {
            return;
        }
        self.verified_at = Some(Instant::now());
        for (&class, slot) in &mut self.classes {
            if let Class::Ready(state) = slot {
                state.notice_if_gone(self.history.as_ref(), class).await;
            }
        }
    }

    /// Loads again every blocked class whose file may have changed (been
    /// replaced or deleted), or could not be read.
    async fn retry_blocked(&mut self) {
        for class in ClassId::all() {
            let Some(Class::Blocked(blocked)) = self.classes.get_mut(&class) else {
                continue;
            };
            if !blocked.may_have_changed(self.history.as_ref(), class).await {
                continue;
            }
            let kept = blocked.kept.take();
            let previous_reason = blocked.reason.clone();
            let mut loaded = Class::load(
                self.history.as_ref(),
                class,
                self.gzip_level,
                self.instruments.class(class),
            )
            .await;
            match &mut loaded {
                Class::Ready(state) => {
                    if let Some(kept) = kept {
                        state.absorb(*kept, self.gzip_level);
                    }
                    // The file that replaced the bad one may hold bests the
                    // list takes back, or lack some it gives back.
                    let named = self
                        .applied
                        .racers()
                        .chain(self.state.applied.changed_racers(&self.applied));
                    self.rebuild.entry(class).or_default().extend(named);
                    tracing::info!(%class, pending = self.state.pending.get(&class).map_or(0, BTreeSet::len), "class file readable again; merging the records that waited for it");
                    self.readiness.set(&part(class), Ok(()));
                }
                Class::Blocked(now) => {
                    now.kept = kept;
                    if now.reason != previous_reason {
                        tracing::error!(%class, reason = %now.reason, "class history blocked");
                    }
                    self.readiness.set(&part(class), Err(now.reason.clone()));
                }
            }
            self.classes.insert(class, loaded);
        }
    }

    /// Reads again the delivery objects pending for a class whose history
    /// was (re)loaded since, and merges their records of that class.
    async fn merge_pending(&mut self, report: &mut MergeReport) -> anyhow::Result<()> {
        let mut wanted: BTreeMap<String, BTreeSet<ClassId>> = BTreeMap::new();
        let mut rereading = Vec::new();
        for (&class, slot) in &mut self.classes {
            let Class::Ready(state) = slot else { continue };
            if state.pending_merged {
                continue;
            }
            match self.state.pending.get(&class) {
                Some(keys) if !keys.is_empty() => {
                    for key in keys {
                        wanted.entry(key.clone()).or_default().insert(class);
                    }
                    rereading.push(class);
                }
                _ => state.pending_merged = true,
            }
        }
        if wanted.is_empty() {
            return Ok(());
        }
        tracing::info!(objects = wanted.len(), classes = ?rereading, "reading again the delivery objects whose records wait for their class");
        for (key, classes) in &wanted {
            let (mut points, _) = discovery::read_points(self.delivery.as_ref(), key).await?;
            points.retain(|p| classes.contains(&p.class_id));
            report.reread += 1;
            report.records += points.len();
            self.merge(key, &points, report);
        }
        for class in rereading {
            if let Some(Class::Ready(state)) = self.classes.get_mut(&class) {
                state.pending_merged = true;
            }
        }
        Ok(())
    }

    /// Publishes every class whose history holds unpublished bests, except
    /// those whose publication failed in this check; forgets the objects
    /// pending for a class once its file holds their records.
    async fn publish_all(
        &mut self,
        report: &mut MergeReport,
        failed: &mut BTreeMap<ClassId, String>,
        pace: Pace,
    ) {
        // A publication that failed is retried at once: the pacer never
        // turns an unresolved failure into a check that looks fine.
        if pace == Pace::ByCost && !self.publication_failed && !self.pacer.ready() {
            // Deferred: what is unpublished stays pending, to the next check.
            return;
        }
        let published = report.published.len();
        let mut cpu = Duration::ZERO;
        self.publish_classes(report, failed, &mut cpu).await;
        // `failed` holds this check's failures so far.
        self.publication_failed = !failed.is_empty();
        if report.published.len() > published {
            self.pacer.spent(cpu);
        }
    }

    /// [`Merger::publish_all`], now.
    async fn publish_classes(
        &mut self,
        report: &mut MergeReport,
        failed: &mut BTreeMap<ClassId, String>,
        cpu: &mut Duration,
    ) {
        for (&class, slot) in &mut self.classes {
            let Class::Ready(state) = slot else { continue };
            if failed.contains_key(&class) {
                continue;
            }
            let instruments = self.instruments.class(class);
            // A span only for a publication that writes.
            let span = if state.is_unpublished() {
                tracing::info_span!(
                    "publish_class",
                    %class,
                    bytes = tracing::field::Empty,
                    conflicts = tracing::field::Empty,
                )
            } else {
                tracing::Span::none()
            };
            match state
                .publish(
                    self.history.as_ref(),
                    class,
                    self.gzip_level,
                    &self.applied,
                    instruments,
                    cpu,
                )
                .instrument(span)
                .await
            {
                Ok(wrote) => {
                    let stripped = state.take_stripped();
                    if !stripped.is_empty() {
                        self.rebuild.entry(class).or_default().extend(stripped);
                    }
                    if wrote {
                        instruments.publications.increment(1);
                        report.published.push(class);
                    }
                    if state.pending_merged
                        && let Some(keys) = self.state.pending.remove(&class)
                    {
                        tracing::info!(%class, objects = keys.len(), "published the records that waited for their class");
                        self.state_changed = true;
                    }
                }
                Err(PublishError::Store(e)) => {
                    instruments.failures.increment(1);
                    let error = format!("{e:#}");
                    tracing::warn!(%class, %error, "publishing the class file failed; its records stay to be published");
                    failed.insert(class, error);
                }
                Err(PublishError::NotAClassFile(blocked)) => {
                    tracing::error!(%class, reason = %blocked.reason, "class history blocked");
                    self.readiness
                        .set(&part(class), Err(blocked.reason.clone()));
                    // What this process holds is kept for whatever replaces
                    // the bad file.
                    if let Class::Ready(held) = std::mem::replace(slot, Class::Blocked(blocked))
                        && let Class::Blocked(now) = slot
                    {
                        now.kept = Some(held);
                    }
                }
            }
        }
    }
}
