//! What the merger keeps per class: the history, that history compressed
//! in segments, the version of the published file and what of the history
//! is not published yet; and publishing it by compare-and-swap. Or, when
//! the published file cannot be read, why not: such a class is neither
//! merged into nor published until its file is repaired, replaced or
//! deleted.

use super::instruments::ClassInstruments;
use crate::class_file::{CONTENT_TYPE, SegmentedClassFile};
use alleycat_core::delivery::HistoryPoint;
use alleycat_core::disqualification::Disqualifications;
use alleycat_core::history::{ClassHistory, class_file_key};
use alleycat_core::{ClassId, RacerId, Second};
use alleycat_storage::{ETag, ObjectStore, Precondition, StoreError};
use anyhow::Context as _;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::time::Duration;

/// One class: mergeable, or blocked by a file that cannot be read.
pub(super) enum Class {
    /// Its file was read (or there is none): records merge into it.
    Ready(Box<ClassState>),
    /// Its file cannot be read: records of the class wait.
    Blocked(Blocked),
}

/// A class whose published file cannot be read now.
pub(super) struct Blocked {
    /// Why, for the log and `/readyz`.
    pub(super) reason: String,
    /// The version of the file that is not a class file; `None` when reading
    /// it failed (the store), so it is tried again every round.
    etag: Option<ETag>,
    /// The history this process held when the class became blocked (a
    /// file overwritten under it): merged into whatever replaces the file,
    /// so that nothing it held is lost.
    pub(super) kept: Option<Box<ClassState>>,
}

/// One class's history and its class file.
pub(super) struct ClassState {
    history: ClassHistory,
    /// The history, compressed in segments, except the `dirty` seconds.
    file: SegmentedClassFile,
    /// Seconds whose bests changed since they were last compressed.
    dirty: BTreeSet<Second>,
    /// Whether `file` holds bests the published file does not.
    unwritten: bool,
    /// Version of the class file as last read or written; `None`: no file.
    version: Option<ETag>,
    /// Every racer with a best in the history. Looked up for every record
    /// merged: foldhash, seeded per process (racer ids come from clients),
    /// not SipHash (0.8% of the server's CPU in the stretch run).
    racers: HashSet<RacerId, foldhash::fast::RandomState>,
    /// Whether the records of the delivery objects pending for this class
    /// are in `history` (false after loading it: they must be read again).
    pub(super) pending_merged: bool,
    /// Racers named by disqualifications whose bests another writer's file
    /// disagreed on: left out of the merge, to be recomputed.
    stripped: BTreeSet<RacerId>,
}

/// What merging one point did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Merged {
    /// A best rose.
    Changed,
    /// No best rose.
    Unchanged,
    /// A racer new to the class, past the bound of racers: not merged.
    TooManyRacers,
}

/// Why a publication did not happen.
pub(super) enum PublishError {
    /// The store failed; trying again may work.
    Store(anyhow::Error),
    /// Another writer left a file that is not a class file: it must not be
    /// overwritten, so the class is blocked.
    NotAClassFile(Blocked),
}

/// A class file as read from the store.
pub(super) enum Loaded {
    /// There is none.
    Absent,
    /// A valid class file, its version and its size in bytes.
    Valid(ClassHistory, ETag, usize),
    /// A file that is not a class file (corrupt, or of another format).
    Invalid(Blocked),
}

impl Class {
    /// `class` as its published file in `store` says, at gzip `level`;
    /// sets the file's size in `instruments`.
    pub(super) async fn load(
        store: &dyn ObjectStore,
        class: ClassId,
        level: u32,
        instruments: &ClassInstruments,
    ) -> Class {
        match read_class_file(store, class).await {
            Ok(Loaded::Absent) => {
                instruments.file_bytes.set(0.0);
                Class::Ready(Box::new(ClassState::empty(level)))
            }
            Ok(Loaded::Valid(history, etag, size)) => {
                instruments.file_bytes.set(size as f64);
                tracing::info!(%class, bests = history.len(), "loaded class history");
                match tokio::task::spawn_blocking(move || {
                    ClassState::from_history(history, Some(etag), level)
                })
                .await
                {
                    Ok(state) => Class::Ready(Box::new(state)),
                    Err(e) => Class::Blocked(Blocked::unreadable(class, &anyhow::Error::new(e))),
                }
            }
            Ok(Loaded::Invalid(blocked)) => Class::Blocked(blocked),
            Err(e) => Class::Blocked(Blocked::unreadable(class, &e)),
        }
    }
}

impl Blocked {
    /// Reading the file failed (not its content: the store).
    fn unreadable(class: ClassId, error: &anyhow::Error) -> Blocked {
        Blocked {
            reason: format!(
                "{} cannot be read: {error:#}; retrying",
                class_file_key(class)
            ),
            etag: None,
            kept: None,
        }
    }

    /// Whether the file may have changed since it was found unreadable:
    /// asks only its version when its content was the problem.
    pub(super) async fn may_have_changed(&self, store: &dyn ObjectStore, class: ClassId) -> bool {
        let Some(known) = &self.etag else {
            return true;
        };
        match store.head(&class_file_key(class)).await {
            Ok(now) => now.as_ref() != Some(known),
            Err(e) => {
                tracing::debug!(%class, error = %e, "checking a blocked class file failed");
                false
            }
        }
    }
}

impl ClassState {
    /// A class with no history and no published file.
    pub(super) fn empty(level: u32) -> ClassState {
        ClassState::from_history(ClassHistory::default(), None, level)
    }

    /// A class with `history`, published at `version`. CPU-heavy for a
    /// large class (it compresses all of it).
    fn from_history(history: ClassHistory, version: Option<ETag>, level: u32) -> ClassState {
        let file = cpu_bound(|| SegmentedClassFile::new(&history, level));
        let racers = history.racers().collect();
        ClassState {
            history,
            file,
            dirty: BTreeSet::new(),
            unwritten: false,
            version,
            racers,
            pending_merged: false,
            stripped: BTreeSet::new(),
        }
    }

    /// Takes in the history this process held before the class was blocked
    /// (everything it held is published again, merged with the file that
    /// replaced the bad one, if any).
    pub(super) fn absorb(&mut self, kept: ClassState, level: u32) {
        self.history.merge_history(&kept.history);
        self.racers.extend(kept.racers);
        let history = &self.history;
        self.file = cpu_bound(|| SegmentedClassFile::new(history, level));
        self.dirty.clear();
        self.unwritten = true;
    }

    /// Notices a published class file that is gone (deleted under it) and
    /// makes the next publication write all of the history again.
    pub(super) async fn notice_if_gone(&mut self, store: &dyn ObjectStore, class: ClassId) {
        if self.version.is_none() || self.unwritten {
            return;
        }
        if let Ok(None) = store.head(&class_file_key(class)).await {
            tracing::warn!(%class, "the published class file is gone; publishing it again from memory");
            self.version = None;
            self.unwritten = true;
        }
    }

    /// The history, as merged so far.
    pub(super) fn history(&self) -> &ClassHistory {
        &self.history
    }

    /// Whether the history holds bests its published file does not.
    pub(super) fn is_unpublished(&self) -> bool {
        self.unwritten || !self.dirty.is_empty()
    }

    /// Whether a point of `racer` may join the history: the racer is in it,
    /// or there is room for one more.
    pub(super) fn admits(&self, racer: RacerId, max_racers: usize) -> bool {
        self.racers.contains(&racer) || self.racers.len() < max_racers
    }

    /// The racers left out of a merge with another writer's file, to be
    /// recomputed.
    pub(super) fn take_stripped(&mut self) -> BTreeSet<RacerId> {
        std::mem::take(&mut self.stripped)
    }

    /// Whether `racer` has a best in the history.
    pub(super) fn has_racer(&self, racer: RacerId) -> bool {
        self.racers.contains(&racer)
    }

    /// Replaces every best of `racer` (a disqualification or reinstatement
    /// recomputed them); no bests: the racer leaves the class.
    pub(super) fn replace_racer(&mut self, racer: RacerId, bests: &BTreeMap<Second, f64>) {
        let changed = self.history.replace_racer(racer, bests);
        self.dirty.extend(changed);
        if bests.is_empty() {
            self.racers.remove(&racer);
        } else {
            self.racers.insert(racer);
        }
    }

    /// Merges one point into the history (not yet the file). A racer new to
    /// the class is merged only while the class has fewer than
    /// `max_racers` racers.
    pub(super) fn merge(&mut self, point: &HistoryPoint, max_racers: usize) -> Merged {
        if !self.racers.contains(&point.racer_id) {
            if self.racers.len() >= max_racers {
                return Merged::TooManyRacers;
            }
            self.racers.insert(point.racer_id);
        }
        if self
            .history
            .merge(point.second, point.racer_id, point.output)
        {
            self.dirty.insert(point.second);
            Merged::Changed
        } else {
            Merged::Unchanged
        }
    }

    /// Compresses the changed seconds and writes the class file, if the
    /// history holds bests it does not, conditionally on the version we last
    /// saw; on a conflict, merges the newer file in and tries again. Returns
    /// whether it wrote. On an error, what is unpublished stays so, for the
    /// next call. Counts conflicts and sets the file's size in
    /// `instruments`, and records them in the current span (`bytes`,
    /// `conflicts`).
    ///
    /// The bests of racers `applied` names are never taken from the other
    /// writer's file: they are recomputed here, and the other writer may
    /// not have applied the list yet.
    ///
    /// Adds to `cpu` the CPU time its encoding took (not the writes, nor
    /// waiting for a core), which paces the next publications.
    pub(super) async fn publish(
        &mut self,
        store: &dyn ObjectStore,
        class: ClassId,
        level: u32,
        applied: &Disqualifications,
        instruments: &ClassInstruments,
        cpu: &mut Duration,
    ) -> Result<bool, PublishError> {
        if !self.is_unpublished() {
            return Ok(false);
        }
        let key = class_file_key(class);
        let dirty = std::mem::take(&mut self.dirty);
        if !dirty.is_empty() {
            self.unwritten = true;
        }
        let (history, file) = (&self.history, &mut self.file);
        let mut body = Bytes::from(cpu_bound_costed(cpu, || {
            file.update(history, dirty);
            file.to_gzip()
        }));
        let mut conflicts = 0u32;
        loop {
            let size = body.len();
            let condition = match &self.version {
                Some(etag) => Precondition::IfMatch(etag.clone()),
                None => Precondition::IfAbsent,
            };
            match store
                .put_if(&key, body.clone(), CONTENT_TYPE, condition)
                .await
            {
                Ok(etag) => {
                    self.version = Some(etag);
                    self.unwritten = false;
                    instruments.file_bytes.set(size as f64);
                    tracing::Span::current()
                        .record("bytes", size)
                        .record("conflicts", conflicts);
                    return Ok(true);
                }
                Err(StoreError::PreconditionFailed { .. }) => {
                    conflicts += 1;
                    instruments.conflicts.increment(1);
                    tracing::debug!(%key, "class file changed by another writer; merging it in");
                    match read_class_file(store, class).await {
                        Ok(Loaded::Valid(mut theirs, etag, _)) => {
                            let named: BTreeSet<RacerId> = applied.racers().collect();
                            let differ: Vec<RacerId> = named
                                .iter()
                                .copied()
                                .filter(|r| theirs.racer_bests(*r) != self.history.racer_bests(*r))
                                .collect();
                            theirs.remove_racers(&named);
                            // Recomputed next check: the other writer may
                            // hold what this process lacks (an import).
                            self.stripped.extend(differ);
                            self.history.merge_history(&theirs);
                            self.racers.extend(theirs.racers());
                            // Rare (several history processes, or an
                            // import): encode it all.
                            let history = &self.history;
                            self.file =
                                cpu_bound_costed(cpu, || SegmentedClassFile::new(history, level));
                            body = Bytes::from(self.file.to_gzip());
                            self.version = Some(etag);
                        }
                        Ok(Loaded::Absent) => self.version = None,
                        Ok(Loaded::Invalid(blocked)) => {
                            return Err(PublishError::NotAClassFile(blocked));
                        }
                        Err(e) => return Err(PublishError::Store(e)),
                    }
                }
                Err(e) => {
                    return Err(PublishError::Store(
                        anyhow::Error::new(e).context(format!("publishing {key}")),
                    ));
                }
            }
        }
    }
}

/// The published class file of `class`: absent, valid or not a class file.
/// An error is the store's (reading failed).
pub(super) async fn read_class_file(
    store: &dyn ObjectStore,
    class: ClassId,
) -> anyhow::Result<Loaded> {
    let key = class_file_key(class);
    let Some(object) = store
        .get(&key)
        .await
        .with_context(|| format!("reading {key}"))?
    else {
        return Ok(Loaded::Absent);
    };
    let body = object.body;
    let size = body.len();
    let decoded = tokio::task::spawn_blocking(move || ClassHistory::from_gzip(&body)).await?;
    Ok(match decoded {
        Ok(history) => Loaded::Valid(history, object.etag, size),
        Err(e) => {
            let reason = format!(
                "{key} in the history store is not a valid class file ({e}); class {class} is \
                 neither merged nor published, its records wait until the file is repaired, \
                 replaced or deleted"
            );
            Loaded::Invalid(Blocked {
                reason,
                etag: Some(object.etag),
                kept: None,
            })
        }
    })
}

/// Runs `f`, CPU-heavy (compressing a class file takes up to seconds),
/// without stalling the other tasks of this runtime's worker: on a
/// multi-threaded runtime the worker hands them to another thread first.
fn cpu_bound<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// [`cpu_bound`], adding to `cpu` the CPU time `f` took: on a busy machine
/// its wall time is mostly waiting for a core.
fn cpu_bound_costed<R>(cpu: &mut Duration, f: impl FnOnce() -> R) -> R {
    cpu_bound(|| {
        let started = thread_cpu_time();
        let result = f();
        *cpu += thread_cpu_time().saturating_sub(started);
        result
    })
}

/// The CPU time this thread has used (zero where the clock is missing).
fn thread_cpu_time() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_encoding_costs_the_cpu_it_computes_not_the_time_it_waits() {
        let mut computed = Duration::ZERO;
        let text = vec![b'7'; 16 << 20];
        let gz = cpu_bound_costed(&mut computed, || alleycat_core::codec::gzip(&text, 6).len());
        assert!(gz > 0);
        assert!(computed > Duration::ZERO, "{computed:?}");
        let mut waited = Duration::ZERO;
        cpu_bound_costed(&mut waited, || {
            std::thread::sleep(Duration::from_millis(200));
        });
        assert!(waited < Duration::from_millis(100), "{waited:?}");
        assert_eq!(
            cpu_bound_costed(&mut waited, || 7),
            7,
            "and returns what it computed"
        );
    }
}
