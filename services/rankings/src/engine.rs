//! The rankings engine: reads every shard of the stream, keeps the live
//! races, pushes standings to viewers at most every push interval per race,
//! and hands finished results to the results writer.

use crate::RankingsArgs;
use crate::all_time::AllTime;
use crate::push::Snapshot;
use crate::race::Race;
use crate::store::{Finals, ResultsStore};
use crate::viewers::Viewers;
use alleycat_core::backoff::Backoff;
use alleycat_core::history::{ClassHistory, class_file_key};
use alleycat_core::validate::parse_record;
use alleycat_core::{ClassId, RaceId};
use alleycat_storage::{ETag, ObjectStore, StreamRecord, Subscription};
use axum::extract::ws::Utf8Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A race with no new record for this long is over and forgotten.
const RACE_IDLE: Duration = Duration::from_secs(120);
/// How often finished results are written.
const RESULTS_FLUSH: Duration = Duration::from_millis(500);
/// How often the replay checkpoint moves.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);

struct LiveRace {
    race: Race,
    dirty: bool,
    last_push: Option<Instant>,
    last_data: Instant,
}

/// The engine's state.
pub(crate) struct Engine {
    races: HashMap<(ClassId, RaceId), LiveRace>,
    all_time: HashMap<ClassId, Arc<AllTime>>,
    viewers: Arc<Viewers>,
    finals: Finals,
    order: u64,
    push_interval: Duration,
    top: usize,
    replay_ms: i64,
    /// Per shard, (arrival, sequence) of records read, oldest first.
    read: HashMap<String, VecDeque<(i64, String)>>,
}

impl Engine {
    pub(crate) fn new(
        viewers: Arc<Viewers>,
        all_time: HashMap<ClassId, Arc<AllTime>>,
        args: &RankingsArgs,
    ) -> Engine {
        Engine {
            races: HashMap::new(),
            all_time,
            viewers,
            finals: Vec::new(),
            order: 0,
            push_interval: args.push_interval,
            top: args.top.get(),
            replay_ms: i64::try_from(args.replay.as_millis()).unwrap_or(i64::MAX),
            read: HashMap::new(),
        }
    }

    fn apply(&mut self, records: Vec<StreamRecord>, now: Instant) {
        let too_old = chrono::Utc::now().timestamp_millis() - self.replay_ms;
        for record in records {
            let shard = self.read.entry(record.shard_id.clone()).or_default();
            shard.push_back((record.arrival_ms, record.sequence.clone()));
            if record.arrival_ms < too_old {
                continue; // a race long over: nothing to show, its results were kept
            }
            // Invalid records are the transformer's to report.
            let Ok(t) = parse_record(&record.data) else {
                continue;
            };
            self.order += 1;
            let live = self
                .races
                .entry((t.class_id, t.race_id))
                .or_insert_with(|| LiveRace {
                    race: Race::new(t.class_id, t.race_id),
                    dirty: false,
                    last_push: None,
                    last_data: now,
                });
            let (changed, result) = live.race.apply(&t, self.order);
            if changed {
                live.dirty = true;
                live.last_data = now;
            }
            if let Some(result) = result {
                self.finals.push((t.class_id, t.race_id, result));
            }
        }
    }

    /// Pushes every dirty race whose interval has passed; returns when the
    /// next one is due.
    fn push_due(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = None;
        let ts = chrono::Utc::now().timestamp_millis();
        for live in self.races.values_mut() {
            if !live.dirty {
                continue;
            }
            let due = live.last_push.map_or(now, |at| at + self.push_interval);
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            live.dirty = false;
            live.last_push = Some(now);
            let class = live.race.class_id();
            if !self.viewers.watching(class) {
                continue;
            }
            let snapshot = Snapshot::new(
                &live.race,
                self.all_time.get(&class).map(Arc::as_ref),
                self.top,
                ts,
            );
            let shared = Utf8Bytes::from(snapshot.shared().to_owned());
            self.viewers
                .publish(class, live.race.race_id(), &shared, |racer| {
                    snapshot.for_racer(racer)
                });
        }
        next
    }

    fn expire(&mut self, now: Instant) {
        self.races
            .retain(|_, live| now.duration_since(live.last_data) < RACE_IDLE);
    }

    fn set_all_time(&mut self, class: ClassId, all_time: Arc<AllTime>) {
        self.all_time.insert(class, all_time);
        for live in self
            .races
            .values_mut()
            .filter(|l| l.race.class_id() == class)
        {
            live.dirty = true;
        }
    }

    /// Per shard, the newest sequence read before the replay window: a
    /// restart re-reads from there and rebuilds the races still running.
    fn replay_checkpoints(&mut self) -> Vec<(String, String)> {
        let cutoff = chrono::Utc::now().timestamp_millis() - self.replay_ms;
        let mut checkpoints = Vec::new();
        for (shard, read) in &mut self.read {
            let mut newest = None;
            while read.front().is_some_and(|(arrival, _)| *arrival < cutoff) {
                newest = read.pop_front().map(|(_, seq)| seq);
            }
            if let Some(seq) = newest {
                checkpoints.push((shard.clone(), seq));
            }
            // Only the last sequence of each poll matters; keep the queue short.
            if read.len() > 100_000 {
                read.drain(..read.len() - 100_000);
            }
        }
        checkpoints
    }
}

/// Reads the class files (now, and whenever a new version appears).
pub(crate) struct AllTimeLoader {
    store: Arc<dyn ObjectStore>,
    versions: HashMap<ClassId, ETag>,
}

impl AllTimeLoader {
    pub(crate) fn new(store: Arc<dyn ObjectStore>) -> AllTimeLoader {
        AllTimeLoader {
            store,
            versions: HashMap::new(),
        }
    }

    /// The classes whose file changed since the last call, indexed.
    pub(crate) async fn changed(&mut self) -> anyhow::Result<Vec<(ClassId, Arc<AllTime>)>> {
        let mut changed = Vec::new();
        for class in ClassId::all() {
            let key = class_file_key(class);
            let Some(version) = self.store.head(&key).await? else {
                continue;
            };
            if self.versions.get(&class) == Some(&version) {
                continue;
            }
            let Some(object) = self.store.get(&key).await? else {
                continue;
            };
            let all_time = tokio::task::spawn_blocking(move || {
                ClassHistory::from_gzip(&object.body).map(|h| Arc::new(AllTime::from_history(&h)))
            })
            .await??;
            self.versions.insert(class, version);
            changed.push((class, all_time));
        }
        Ok(changed)
    }
}

/// Runs the engine until `stop`, then writes the results it still holds.
pub(crate) async fn run(
    mut subscription: Box<dyn Subscription>,
    mut engine: Engine,
    mut loader: AllTimeLoader,
    history_reload: Duration,
    results: ResultsStore,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let (to_writer, from_engine) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_results(results, from_engine));
    let (all_time_tx, mut all_time_rx) = mpsc::unbounded_channel();
    let loader_stop = stop.child_token();
    let loading = {
        let stop = loader_stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(history_reload) => {}
                }
                match loader.changed().await {
                    Ok(changed) => {
                        for update in changed {
                            if all_time_tx.send(update).is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(
                        error = format!("{e:#}"),
                        "reading class files failed; retrying"
                    ),
                }
            }
        })
    };
    let mut next_push: Option<Instant> = None;
    let mut next_flush = Instant::now() + RESULTS_FLUSH;
    let mut next_checkpoint = Instant::now() + CHECKPOINT_EVERY;
    let mut backoff = Backoff::default();
    loop {
        let now = Instant::now();
        let wake = [next_push, Some(next_flush), Some(next_checkpoint)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now);
        let wait = wake
            .saturating_duration_since(now)
            .min(Duration::from_secs(1));
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            Some((class, all_time)) = all_time_rx.recv() => engine.set_all_time(class, all_time),
            polled = subscription.poll(10_000, wait) => match polled {
                Ok(records) => {
                    backoff.reset();
                    engine.apply(records, Instant::now());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the stream failed; retrying");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            },
        }
        let now = Instant::now();
        next_push = engine.push_due(now);
        if now >= next_flush {
            if !engine.finals.is_empty() {
                let _ = to_writer.send(std::mem::take(&mut engine.finals));
            }
            engine.expire(now);
            next_flush = now + RESULTS_FLUSH;
        }
        if now >= next_checkpoint {
            for (shard, seq) in engine.replay_checkpoints() {
                if let Err(e) = subscription.checkpoint(&shard, &seq).await {
                    tracing::warn!(%shard, error = %e, "rankings checkpoint failed");
                }
            }
            next_checkpoint = now + CHECKPOINT_EVERY;
        }
    }
    loader_stop.cancel();
    let _ = loading.await;
    if !engine.finals.is_empty() {
        let _ = to_writer.send(std::mem::take(&mut engine.finals));
    }
    drop(to_writer);
    writer.await?;
    subscription.close().await;
    Ok(())
}

/// Writes finished results, retrying until the store takes them.
async fn write_results(results: ResultsStore, mut finals: mpsc::UnboundedReceiver<Finals>) {
    while let Some(batch) = finals.recv().await {
        let mut backoff = Backoff::default();
        while let Err(e) = results.record(&batch).await {
            let pause = backoff.next_delay();
            tracing::warn!(error = %e, ?pause, "storing race results failed; retrying");
            tokio::time::sleep(pause).await;
        }
        tracing::debug!(results = batch.len(), "stored race results");
    }
}
