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
use super::{Class, MergeReport, Merger};
use crate::import::imports_prefix;
use alleycat_core::history::{ClassHistory, MAX_CLASS_FILE_BYTES};
use alleycat_core::{ClassId, RaceId, RacerId, Second};
use alleycat_core::{codec, delivery};
use anyhow::Context as _;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

impl Merger {
    /// Adopts the newest disqualification list and recomputes the racers
    /// whose bests it changes. Fails when a read failed: the racers not
    /// recomputed yet stay to be, for the next check.
    pub(super) async fn apply_disqualifications(
        &mut self,
        report: &mut MergeReport,
    ) -> anyhow::Result<()> {
        if let Some(current) = self.list.as_ref().and_then(|l| l.current())
            && *current != *self.applied
        {
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
            self.applied = current;
        }
        for class in ClassId::all() {
            let Some(racers) = self.rebuild.get(&class).filter(|r| !r.is_empty()).cloned() else {
                self.rebuild.remove(&class);
                continue;
            };
            // A blocked class is recomputed once it loads again.
            let Some(Class::Ready(state)) = self.classes.get(&class) else {
                continue;
            };
            // Only the racers the class has, or had.
            let index = self.index.get(&class);
            let racers: BTreeSet<RacerId> = racers
                .into_iter()
                .filter(|r| {
                    state.has_racer(*r) || index.is_some_and(|i| i.races_of(*r).next().is_some())
                })
                .collect();
            if racers.is_empty() {
                self.rebuild.remove(&class);
                continue;
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
            tracing::info!(%class, racers = racers.len(), objects, elapsed = ?started.elapsed(), "recomputed bests after a disqualification change");
        }
        Ok(())
    }

    /// The bests of `racers` in `class` from their races that count, and
    /// how many delivery objects were read for them.
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
        // The objects of every race that counts, each listed and read once
        // however many of the racers rode it.
        let mut listed: BTreeMap<(RaceId, &str), Vec<String>> = BTreeMap::new();
        let mut keys = BTreeSet::new();
        for &racer in racers {
            for (race, shard, window) in index.races_of(racer) {
                if self.applied.covers(racer, race) {
                    continue;
                }
                if let std::collections::btree_map::Entry::Vacant(slot) =
                    listed.entry((race, shard))
                {
                    let mut in_window = discovery::list_between(
                        self.delivery.as_ref(),
                        &window.first,
                        &window.last,
                    )
                    .await?;
                    in_window.retain(|k| delivery::shard_of(k) == Some(shard));
                    keys.extend(in_window.iter().cloned());
                    slot.insert(in_window);
                }
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
            let imported = tokio::task::spawn_blocking(move || {
                let json = codec::gunzip(&body, MAX_CLASS_FILE_BYTES)?;
                anyhow::Ok(ClassHistory::from_json(&json)?)
            })
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
