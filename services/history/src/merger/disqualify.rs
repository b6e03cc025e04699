//! Taking bests back: when the disqualification list changes, the bests of
//! every racer an added or removed entry names are recomputed from that
//! racer's races that still count (found through the race index, not by
//! reading the whole delivery archive), plus what was imported from the
//! original system unless the racer is disqualified altogether.
//!
//! The list in memory changes first, so records merged from then on are
//! filtered by it; the recomputation is retried until it has read what it
//! needs, and the merge state records the list as applied only once every
//! class file reflecting it is published. A crash in between recomputes
//! the same racers again after the restart, with the same result.

use super::discovery;
use super::race_index::ClassIndex;
use super::{Class, MergeReport, Merger};
use crate::import::imports_prefix;
use alleycat_core::delivery;
use alleycat_core::history::ClassHistory;
use alleycat_core::{ClassId, RacerId, Second};
use anyhow::Context as _;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

/// The readiness part of recomputations that cannot be done now.
const REBUILD_PART: &str = "history disqualifications";

impl Merger {
    /// Adopts the newest disqualification list and recomputes the racers
    /// whose bests it changes. What cannot be recomputed now (a read
    /// failed, delivery objects are gone) stays to be, for the next check,
    /// and `/readyz` names it (part `history disqualifications`); merging
    /// goes on meanwhile, filtered by the new list.
    pub(super) async fn apply_disqualifications(&mut self, report: &mut MergeReport) {
        if let Some(current) = self.list.as_ref().and_then(|l| l.current())
            && current.version() != self.applied.version()
        {
            if !current.same_effect(&self.applied) {
                let racers = self.applied.changed_racers(&current);
                tracing::info!(
                    entries = current.entries().len(),
                    racers = racers.len(),
                    "the disqualification list changed; recomputing the bests of the racers it names"
                );
                for class in ClassId::all() {
                    self.rebuild
                        .entry(class)
                        .or_default()
                        .extend(racers.iter().copied());
                }
            }
            self.applied = current;
        }
        let mut problems = Vec::new();
        for class in ClassId::all() {
            if let Err(e) = self.rebuild_class(class, report).await {
                problems.push(format!("class {class}: {e:#}"));
            }
        }
        let state = if problems.is_empty() {
            Ok(())
        } else {
            let reason = format!(
                "bests not recomputed after a disqualification change, retrying: {}",
                problems.join("; ")
            );
            tracing::warn!(%reason);
            Err(reason)
        };
        self.readiness.set(REBUILD_PART, state);
    }

    /// Recomputes the racers of `class` waiting for it, if it can.
    async fn rebuild_class(
        &mut self,
        class: ClassId,
        report: &mut MergeReport,
    ) -> anyhow::Result<()> {
        let Some(racers) = self.rebuild.get(&class).filter(|r| !r.is_empty()).cloned() else {
            self.rebuild.remove(&class);
            return Ok(());
        };
        // A blocked class is recomputed once it loads again.
        let Some(Class::Ready(state)) = self.classes.get(&class) else {
            return Ok(());
        };
        let index = self.index.entry(class).or_default();
        // Only the racers the class has, or had.
        let racers: BTreeSet<RacerId> = racers
            .into_iter()
            .filter(|r| state.has_racer(*r) || index.has_racer(*r))
            .collect();
        if racers.is_empty() {
            self.rebuild.remove(&class);
            return Ok(());
        }
        if !index.is_complete() {
            self.reindex(class).await?;
        }
        let index = &self.index[&class];
        let (racers, unindexed): (BTreeSet<RacerId>, BTreeSet<RacerId>) = racers
            .into_iter()
            .partition(|r| index.races_of(*r).is_some());
        if !unindexed.is_empty() {
            tracing::error!(%class, racers = ?unindexed, "racers with more races than the index keeps cannot be recomputed; their bests stay as they are");
        }
        let started = Instant::now();
        let (bests, objects) = self.recompute(class, &racers).await?;
        if let Some(Class::Ready(state)) = self.classes.get_mut(&class) {
            for (racer, bests) in &bests {
                state.replace_racer(*racer, bests);
            }
        }
        self.rebuild.remove(&class);
        report.rebuilt_racers += racers.len();
        report.rebuild_objects += objects;
        self.instruments.recomputations.increment(1);
        self.instruments
            .recomputed_racers
            .increment(racers.len() as u64);
        self.instruments
            .recomputation_objects
            .increment(objects as u64);
        tracing::info!(%class, racers = racers.len(), objects, elapsed = ?started.elapsed(), "recomputed bests after a disqualification change");
        Ok(())
    }

    /// Builds the race index of `class` from the whole delivery archive:
    /// once, for an index saved before it covered everything (or lost).
    async fn reindex(&mut self, class: ClassId) -> anyhow::Result<()> {
        let started = Instant::now();
        tracing::warn!(%class, "the race index does not cover every merged object; rebuilding it from the whole delivery archive (once)");
        let keys = discovery::list_candidates(self.delivery.as_ref(), None).await?;
        let mut rebuilt = ClassIndex::default();
        let named: BTreeSet<RacerId> = self.applied.racers().collect();
        let Some(Class::Ready(state)) = self.classes.get(&class) else {
            return Ok(());
        };
        for key in &keys {
            let (points, _) = discovery::read_points(self.delivery.as_ref(), key).await?;
            for p in points.iter().filter(|p| p.class_id == class) {
                if state.has_racer(p.racer_id) || named.contains(&p.racer_id) {
                    rebuilt.note(key, p);
                }
            }
        }
        let index = self.index.entry(class).or_default();
        index.absorb(&rebuilt);
        index.set_complete();
        tracing::info!(%class, objects = keys.len(), elapsed = ?started.elapsed(), "race index rebuilt");
        Ok(())
    }

    /// The bests of `racers` in `class` from their races that count, and
    /// how many delivery objects were read for them. Fails, rather than
    /// take bests away, when an object of a race that counts is gone.
    async fn recompute(
        &self,
        class: ClassId,
        racers: &BTreeSet<RacerId>,
    ) -> anyhow::Result<(BTreeMap<RacerId, BTreeMap<Second, f64>>, usize)> {
        let mut bests: BTreeMap<RacerId, BTreeMap<Second, f64>> =
            racers.iter().map(|r| (*r, BTreeMap::new())).collect();
        let Some(index) = self.index.get(&class) else {
            return Ok((bests, 0));
        };
        // The objects of every window that counts, each listed and read
        // once however many of the racers rode it.
        let mut listed: BTreeSet<(&str, &str)> = BTreeSet::new();
        let mut keys = BTreeSet::new();
        for &racer in racers {
            for (race, shard, window) in index.races_of(racer).into_iter().flatten() {
                if self.applied.covers(racer, race)
                    || !listed.insert((window.first.as_str(), window.last.as_str()))
                {
                    continue;
                }
                let mut in_window =
                    discovery::list_between(self.delivery.as_ref(), &window.first, &window.last)
                        .await?;
                in_window.retain(|k| delivery::shard_of(k) == Some(shard));
                for end in [&window.first, &window.last] {
                    anyhow::ensure!(
                        in_window.contains(end),
                        "delivery object {end} (race {race}, racer {racer}) is gone; the racer's \
                         bests cannot be recomputed without it (keep delivery objects for as long \
                         as bests may be taken back)"
                    );
                }
                keys.extend(in_window);
            }
        }
        for key in &keys {
            let (points, _) = discovery::read_points(self.delivery.as_ref(), key).await?;
            for p in points {
                if p.class_id != class || self.applied.covers(p.racer_id, p.race_id) {
                    continue;
                }
                if let Some(racer) = bests.get_mut(&p.racer_id) {
                    let best = racer.entry(p.second).or_insert(p.output);
                    *best = best.max(p.output);
                }
            }
        }
        self.add_imported(class, &mut bests).await?;
        Ok((bests, keys.len()))
    }

    /// Raises `bests` to what was imported from the original system, for
    /// the racers not disqualified altogether (an import knows no races).
    async fn add_imported(
        &self,
        class: ClassId,
        bests: &mut BTreeMap<RacerId, BTreeMap<Second, f64>>,
    ) -> anyhow::Result<()> {
        let prefix = imports_prefix(class);
        let imports = self
            .history
            .list(&prefix, None)
            .await
            .with_context(|| format!("listing {prefix}"))?;
        for key in imports {
            let Some(object) = self
                .history
                .get(&key)
                .await
                .with_context(|| format!("reading {key}"))?
            else {
                continue;
            };
            let body = object.body;
            let imported = tokio::task::spawn_blocking(move || ClassHistory::from_gzip(&body))
                .await?
                .with_context(|| format!("{key} is not an imported class history"))?;
            for (second, at) in imported.iter() {
                for (racer, best) in bests.iter_mut() {
                    if let Some(&output) = at.get(racer)
                        && !self.applied.covers_racer(*racer)
                    {
                        let best = best.entry(second).or_insert(output);
                        *best = best.max(output);
                    }
                }
            }
        }
        Ok(())
    }
}
