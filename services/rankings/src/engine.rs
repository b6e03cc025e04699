//! The rankings engine: reads every shard of the stream, keeps the live
//! races, pushes standings to viewers at most every push interval per race,
//! and hands finished results to the results writer.
//!
//! [`Engine`] never reads the clock: every method that depends on the time
//! is given `now` (ms since the epoch), and only [`run`] reads the system
//! clock, so tests drive the engine with time as plain numbers.

use crate::RankingsArgs;
use crate::all_time::{AllTime, ClassFiles};
use crate::metrics::METRICS;
use crate::pending::Pending;
use crate::push::Snapshot;
use crate::race::Race;
use crate::store::{Final, Finals, ResultsStore};
use crate::viewers::Viewers;
use alleycat_core::backoff::Backoff;
use alleycat_core::history::class_file_key;
use alleycat_core::validate::{FieldError, SensorLimits, describe};
use alleycat_core::{ClassId, RaceId};
use alleycat_runtime::Readiness;
use alleycat_storage::{ETag, ObjectStore, SequenceNumber, StreamRecord, Subscription, freshness};
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
/// Most races written at once: a race finishing behind a flood of others
/// waits for at most one such batch (one document write each, plus each
/// class's index and leaderboard).
const WRITE_BATCH: usize = 32;
/// How often the replay checkpoint moves.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(5);
/// Most records read from the stream at once: enough that a turn of the
/// loop slowed by building pushes still catches up (at 10,000, the stretch
/// run's 100,000 records/s left the engine 23-35 s behind, its rankings p99
/// at 10.6 s; at 100,000 it keeps up). Each is applied and dropped, so the
/// batch is all the memory this takes.
const POLL_MAX: usize = 100_000;
/// Most (arrival, sequence) pairs kept per shard for the replay checkpoint,
/// one a second of arrival: far more than the replay window's seconds, a
/// bound should arrival times jump about.
const READ_KEPT: usize = 100_000;

/// A duration in whole milliseconds, the engine's unit of time.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

struct LiveRace {
    race: Race,
    /// Records that changed it: a race with more is kept over one with
    /// fewer when live races must be evicted.
    records: u64,
    /// The stream order of the last record that changed it.
    last_order: u64,
    dirty: bool,
    /// When it was last pushed, ms since the epoch.
    last_push: Option<i64>,
    /// When a record last changed it, ms since the epoch.
    last_data: i64,
    /// The stream arrival of the oldest change not pushed yet, ms since
    /// the epoch: its next push's latency.
    unpushed_since: Option<i64>,
}

/// The engine's state.
pub(crate) struct Engine {
    races: HashMap<(ClassId, RaceId), LiveRace>,
    /// Most live races kept.
    max_live_races: usize,
    evictions: Evictions,
    all_time: HashMap<ClassId, Arc<AllTime>>,
    viewers: Arc<Viewers>,
    finals: Finals,
    order: u64,
    push_interval_ms: i64,
    top: usize,
    replay_ms: i64,
    /// Per shard, (arrival, sequence) of records read, oldest first.
    read: HashMap<String, VecDeque<(i64, SequenceNumber)>>,
    /// How high a record's sensors may read.
    sensor_limits: SensorLimits,
    /// Records read that break the rules, counted.
    invalid: u64,
}

/// Live races evicted to stay within the bound, counted and logged.
#[derive(Debug, Default)]
struct Evictions {
    total: u64,
    /// Evicted since the last warning.
    unreported: u64,
    /// When the last warning was logged, ms since the epoch.
    warned: Option<i64>,
}

/// Least time between two warnings about evicted races, in ms.
const EVICTION_WARN_EVERY_MS: i64 = 10_000;

impl Engine {
    pub(crate) fn new(
        viewers: Arc<Viewers>,
        all_time: HashMap<ClassId, Arc<AllTime>>,
        args: &RankingsArgs,
        sensor_limits: SensorLimits,
    ) -> Engine {
        Engine {
            races: HashMap::new(),
            max_live_races: args.max_live_races.get(),
            evictions: Evictions::default(),
            all_time,
            viewers,
            finals: Vec::new(),
            order: 0,
            push_interval_ms: millis(args.push_interval),
            top: args.top.get(),
            replay_ms: millis(args.replay),
            read: HashMap::new(),
            sensor_limits,
            invalid: 0,
        }
    }

    fn apply(&mut self, records: Vec<StreamRecord>, now: i64) {
        let too_old = now.saturating_sub(self.replay_ms);
        for record in records {
            let shard = self.read.entry(record.shard_id.clone()).or_default();
            // One entry a second of arrival is enough for the checkpoint (the
            // newest record of that second, which ages out last), and keeps
            // the window's entries few however busy the shard.
            match shard.back_mut() {
                Some((arrival, sequence))
                    if arrival.div_euclid(1000) == record.arrival_ms.div_euclid(1000) =>
                {
                    *arrival = (*arrival).max(record.arrival_ms);
                    *sequence = record.sequence.clone();
                }
                _ => shard.push_back((record.arrival_ms, record.sequence.clone())),
            }
            if record.arrival_ms < too_old {
                continue; // a race long over: nothing to show, its results were kept
            }
            let t = match self
                .sensor_limits
                .parse_record_or(&record.data, record.validated.as_deref())
            {
                Ok(t) => t,
                Err(errors) => {
                    self.skip_invalid(&record, &errors);
                    continue;
                }
            };
            self.order += 1;
            let key = (t.class_id, t.race_id);
            if !self.races.contains_key(&key) && self.races.len() >= self.max_live_races {
                self.evict(now);
            }
            let all_time = &self.all_time;
            let live = self.races.entry(key).or_insert_with(|| LiveRace {
                race: Race::new(
                    t.class_id,
                    t.race_id,
                    all_time.get(&t.class_id).cloned().unwrap_or_default(),
                ),
                records: 0,
                last_order: 0,
                dirty: false,
                last_push: None,
                last_data: now,
                unpushed_since: None,
            });
            let (changed, result) = live.race.apply(&t, self.order);
            if changed {
                live.dirty = true;
                live.last_data = now;
                live.records += 1;
                live.last_order = self.order;
                let arrival = record.arrival_ms;
                live.unpushed_since = Some(live.unpushed_since.map_or(arrival, |u| u.min(arrival)));
            }
            if let Some(result) = result {
                self.finals.push(Final {
                    class: t.class_id,
                    race: t.race_id,
                    result,
                    finished_ms: record.arrival_ms,
                });
            }
        }
        METRICS.live_races.set(self.races.len() as f64);
    }

    /// Skips a record that breaks the rules (put on the stream by another
    /// producer than ingest, or before the limits were lowered): it must
    /// reach no push, result or "All time". The transformer sets it aside
    /// in `processing-failed/` with its reason; here it is counted and
    /// logged, the running total at 1, 2, 4, 8, ... so that a flood shows
    /// in the log without flooding it.
    fn skip_invalid(&mut self, record: &StreamRecord, errors: &[FieldError]) {
        self.invalid += 1;
        METRICS.records_skipped.increment(1);
        if self.invalid.is_power_of_two() {
            tracing::warn!(
                shard = %record.shard_id,
                sequence = %record.sequence,
                reason = describe(errors),
                total = self.invalid,
                "skipped an invalid record on the stream"
            );
        }
    }

    /// Makes room for a new race: evicts the live races with the fewest
    /// records, the least recently updated first, an eighth of the bound at
    /// once (so a flood of new races costs one pass per many races, not
    /// one per race). A real race has a record per racer per second and
    /// outweighs made-up one-record races; evicted ones are counted and
    /// logged at most every [`EVICTION_WARN_EVERY_MS`].
    fn evict(&mut self, now: i64) {
        let mut by_weight: Vec<(u64, u64, (ClassId, RaceId))> = self
            .races
            .iter()
            .map(|(key, live)| (live.records, live.last_order, *key))
            .collect();
        let target = self.max_live_races - self.max_live_races / 8;
        let excess = (by_weight.len() + 1).saturating_sub(target).max(1);
        let excess = excess.min(by_weight.len());
        if excess == 0 {
            return;
        }
        by_weight.select_nth_unstable(excess - 1);
        for (_, _, key) in &by_weight[..excess] {
            self.races.remove(key);
            self.viewers.forget(key.0, key.1);
        }
        METRICS.races_evicted.increment(excess as u64);
        let evictions = &mut self.evictions;
        evictions.total += excess as u64;
        evictions.unreported += excess as u64;
        let due = evictions
            .warned
            .is_none_or(|at| now.saturating_sub(at) >= EVICTION_WARN_EVERY_MS || now < at);
        if due {
            tracing::warn!(
                evicted = evictions.unreported,
                total = evictions.total,
                bound = self.max_live_races,
                "too many live races: evicted those with the fewest records \
                 (made-up race ids?)"
            );
            evictions.unreported = 0;
            evictions.warned = Some(now);
        }
    }

    /// Pushes every dirty race whose interval has passed; returns when the
    /// next one is due (ms since the epoch).
    fn push_due(&mut self, now: i64) -> Option<i64> {
        let mut next: Option<i64> = None;
        for live in self.races.values_mut() {
            if !live.dirty {
                continue;
            }
            // A push stamped after `now` means the clock stepped back: push
            // now rather than stall until the clock catches up.
            let due = live
                .last_push
                .filter(|&at| at <= now)
                .map_or(now, |at| at.saturating_add(self.push_interval_ms));
            if due > now {
                next = Some(next.map_or(due, |n| n.min(due)));
                continue;
            }
            live.dirty = false;
            live.last_push = Some(now);
            let waited_since = live.unpushed_since.take();
            let class = live.race.class_id();
            if !self.viewers.watching(class) {
                continue;
            }
            let snapshot = Snapshot::new(
                &live.race,
                self.all_time.get(&class).map(Arc::as_ref),
                self.top,
                now,
            );
            let shared = Utf8Bytes::from(snapshot.shared().to_owned());
            let sent = self
                .viewers
                .publish(class, live.race.race_id(), &shared, |filter| {
                    snapshot.for_viewer(filter.racer_id, filter.follow.as_deref())
                });
            if let Some(since) = waited_since.filter(|_| sent > 0) {
                // A clock behind the stream's counts as no wait.
                METRICS.push_latency.record(freshness::age(now, since));
            }
        }
        next
    }

    /// The results of the racers who finished since the last call.
    fn take_finals(&mut self) -> Finals {
        std::mem::take(&mut self.finals)
    }

    /// Forgets the races that got no new record for [`RACE_IDLE`].
    fn expire(&mut self, now: i64) {
        let idle = millis(RACE_IDLE);
        let viewers = &self.viewers;
        self.races.retain(|_, live| {
            let keep = now.saturating_sub(live.last_data) < idle;
            if !keep {
                viewers.forget(live.race.class_id(), live.race.race_id());
            }
            keep
        });
        METRICS.live_races.set(self.races.len() as f64);
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
    fn replay_checkpoints(&mut self, now: i64) -> Vec<(String, SequenceNumber)> {
        let cutoff = now.saturating_sub(self.replay_ms);
        let mut checkpoints = Vec::new();
        for (shard, read) in &mut self.read {
            let mut newest = None;
            while read.front().is_some_and(|(arrival, _)| *arrival < cutoff) {
                newest = read.pop_front().map(|(_, seq)| seq);
            }
            if let Some(seq) = newest {
                checkpoints.push((shard.clone(), seq));
            }
            if read.len() > READ_KEPT {
                read.drain(..read.len() - READ_KEPT);
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
            let all_time =
                tokio::task::spawn_blocking(move || AllTime::from_gzip(&object.body).map(Arc::new))
                    .await?;
            // Remembered either way: a file that is not a class file is
            // skipped (logged once per version), not read again and again.
            self.versions.insert(class, version);
            match all_time {
                Ok(all_time) => changed.push((class, all_time)),
                Err(e) => tracing::error!(
                    %class,
                    %key,
                    error = %e,
                    "not a valid class file; its all-time standings stay as they were"
                ),
            }
        }
        Ok(changed)
    }
}

/// How often race documents past the retention are looked for.
const RESULTS_SWEEP: Duration = Duration::from_secs(3600);

/// Readiness parts: reading the stream, storing results, reading class files.
const STREAM_PART: &str = "rankings stream";
const RESULTS_PART: &str = "rankings results";
pub(crate) const CLASS_FILES_PART: &str = "rankings class files";

/// What the engine's loop works with.
pub(crate) struct Parts {
    pub(crate) subscription: Box<dyn Subscription>,
    pub(crate) engine: Engine,
    pub(crate) loader: AllTimeLoader,
    pub(crate) history_reload: Duration,
    pub(crate) results: ResultsStore,
    pub(crate) pending: Arc<Pending>,
    pub(crate) readiness: Readiness,
    /// Where loaded class files are shared with the HTTP routes.
    pub(crate) class_files: Arc<ClassFiles>,
}

/// Runs the engine until `stop`, then writes the results it still holds.
pub(crate) async fn run(parts: Parts, stop: CancellationToken) -> anyhow::Result<()> {
    let Parts {
        mut subscription,
        mut engine,
        mut loader,
        history_reload,
        results,
        pending,
        readiness,
        class_files,
    } = parts;
    let writer = tokio::spawn(write_results(
        results,
        Arc::clone(&pending),
        readiness.clone(),
    ));
    let (all_time_tx, mut all_time_rx) = mpsc::unbounded_channel();
    let loader_stop = stop.child_token();
    let loading = {
        let stop = loader_stop.clone();
        let readiness = readiness.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(history_reload) => {}
                }
                let loaded = loader.changed().await;
                readiness.set(
                    CLASS_FILES_PART,
                    loaded.as_ref().map(|_| ()).map_err(|e| format!("{e:#}")),
                );
                match loaded {
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
    let mut stream_failing = false;
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
            Some((class, all_time)) = all_time_rx.recv() => {
                class_files.set(class, Arc::clone(&all_time));
                engine.set_all_time(class, all_time);
            }
            polled = subscription.poll(POLL_MAX, wait) => match polled {
                Ok(records) => {
                    backoff.reset();
                    if std::mem::take(&mut stream_failing) {
                        readiness.set(STREAM_PART, Ok(()));
                    }
                    engine.apply(records, wall_clock_ms());
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the stream failed; retrying");
                    stream_failing = true;
                    readiness.set(STREAM_PART, Err(format!("reading the stream failed: {e}")));
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            },
        }
        let (now, wall) = (Instant::now(), wall_clock_ms());
        // The loop sleeps on the monotonic clock; the engine speaks wall time.
        next_push = engine.push_due(wall).map(|due| {
            now + Duration::from_millis(u64::try_from(due.saturating_sub(wall)).unwrap_or(0))
        });
        if now >= next_flush {
            pending.push(engine.take_finals());
            engine.expire(wall);
            next_flush = now + RESULTS_FLUSH;
        }
        if now >= next_checkpoint {
            for (shard, seq) in engine.replay_checkpoints(wall) {
                if let Err(e) = subscription.checkpoint(&shard, &seq).await {
                    tracing::warn!(%shard, error = %e, "rankings checkpoint failed");
                }
            }
            next_checkpoint = now + CHECKPOINT_EVERY;
        }
    }
    loader_stop.cancel();
    let _ = loading.await;
    pending.push(engine.take_finals());
    pending.close();
    writer.await?;
    subscription.close().await;
    Ok(())
}

/// The system clock, ms since the epoch: the engine's `now`, read here only.
fn wall_clock_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Writes finished results, heaviest races first, [`WRITE_BATCH`] races at
/// a time, retrying until the store takes them; returns once `pending` is
/// closed and empty.
async fn write_results(results: ResultsStore, pending: Arc<Pending>, readiness: Readiness) {
    let mut next_sweep = Instant::now();
    while let Some(batch) = pending.take(WRITE_BATCH).await {
        if Instant::now() >= next_sweep {
            // Races past the retention: their documents are deleted here,
            // between writes, so the sweep never races a write of its own.
            match results.sweep().await {
                Ok(0) => {}
                Ok(deleted) => tracing::info!(deleted, "deleted race results past the retention"),
                Err(e) => {
                    tracing::warn!(error = %e, "deleting old race results failed; will retry")
                }
            }
            next_sweep = Instant::now() + RESULTS_SWEEP;
        }
        let mut backoff = Backoff::default();
        while let Err(e) = results.record(&batch).await {
            let pause = backoff.next_delay();
            tracing::warn!(error = %e, ?pause, "storing race results failed; retrying");
            readiness.set(
                RESULTS_PART,
                Err(format!("storing race results failed: {e}")),
            );
            tokio::time::sleep(pause).await;
        }
        readiness.set(RESULTS_PART, Ok(()));
        tracing::debug!(results = batch.len(), "stored race results");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::race::RaceResult;
    use crate::viewers::{Filter, Subscription as Viewer};
    use alleycat_core::history::ClassHistory;
    use alleycat_core::{Event, RacerId, Second, Telemetry};
    use alleycat_storage::object_store::fs::FsStore;
    use alleycat_storage::stream::embedded::EmbeddedStream;
    use alleycat_storage::{PutRecord, Stream};
    use serde_json::{Value, json};
    use std::num::NonZeroUsize;

    /// The engine's clock in these tests: any fixed instant will do.
    const T0: i64 = 1_700_000_000_000;
    const PUSH: Duration = Duration::from_millis(250);
    const REPLAY: Duration = Duration::from_secs(330);
    const SHARD: &str = "shard-0";

    /// The rankings settings at their defaults (clap's, the only place
    /// they are written), with the push interval and replay window these
    /// tests count with.
    fn args() -> RankingsArgs {
        RankingsArgs {
            push_interval: PUSH,
            replay: REPLAY,
            ..alleycat_runtime::defaults()
        }
    }

    fn engine(viewers: &Arc<Viewers>) -> Engine {
        Engine::new(
            Arc::clone(viewers),
            HashMap::new(),
            &args(),
            SensorLimits::DEFAULT,
        )
    }

    /// Racer `racer` of class `class`, race 7, at `second`; a higher
    /// `cadence` is a higher output.
    fn telemetry(class: u8, racer: u64, second: u16, cadence: f64, event: Event) -> Telemetry {
        Telemetry {
            uuid: None,
            event,
            device_timestamp: 0,
            second: Second(second),
            race_id: RaceId(7),
            name: format!("R{racer}"),
            racer_id: RacerId(racer),
            class_id: ClassId(class),
            cadence,
            resistance: 50.0,
        }
    }

    fn update(class: u8, racer: u64, second: u16, cadence: f64) -> Telemetry {
        telemetry(class, racer, second, cadence, Event::Update)
    }

    /// `t` as read from the stream at position `seq`, arrived at `arrival`.
    fn record(seq: u64, arrival: i64, t: &Telemetry) -> StreamRecord {
        StreamRecord {
            shard_id: SHARD.to_owned(),
            sequence: SequenceNumber::from(seq),
            arrival_ms: arrival,
            data: serde_json::to_vec(t).unwrap().into(),
            validated: None,
        }
    }

    /// Records arrived just now, numbered from `first_seq`.
    fn fresh(first_seq: u64, now: i64, messages: &[Telemetry]) -> Vec<StreamRecord> {
        (first_seq..)
            .zip(messages)
            .map(|(seq, t)| record(seq, now, t))
            .collect()
    }

    fn watch(viewers: &Viewers, class: u8) -> Viewer {
        viewers.add(Filter {
            class_id: ClassId(class),
            race_id: None,
            racer_id: None,
            follow: None,
        })
    }

    fn next_message(viewer: &mut Viewer) -> Option<Value> {
        let text = viewer.messages.try_recv()?;
        Some(serde_json::from_str(&text).unwrap())
    }

    fn racer_ids(message: &Value, list: &str) -> Vec<u64> {
        message[list]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["racerId"].as_u64().unwrap())
            .collect()
    }

    fn sequences(checkpoints: Vec<(String, SequenceNumber)>) -> Vec<(String, Option<u64>)> {
        checkpoints
            .into_iter()
            .map(|(shard, seq)| (shard, seq.to_u64()))
            .collect()
    }

    #[test]
    fn the_replay_checkpoint_advances_however_many_records_a_second_arrive() {
        let viewers = Arc::new(Viewers::default());
        let mut engine = engine(&viewers);
        // 150,000 records over three seconds: more than `READ_KEPT` pairs,
        // which once dropped the older ones before they aged out.
        let message = update(1, 1, 1, 60.0);
        let records: Vec<StreamRecord> = (0..150_000u64)
            .map(|seq| record(seq, T0 + (seq as i64 / 50), &message))
            .collect();
        engine.apply(records, T0 + 3_000);
        assert!(engine.read[SHARD].len() <= 4, "one entry a second");
        let replay = millis(REPLAY);
        assert_eq!(
            sequences(engine.replay_checkpoints(T0 + replay + 1_000)),
            [(SHARD.to_owned(), Some(49_999))],
            "the newest record of the first second, once all of it is older than the window"
        );
        assert_eq!(
            sequences(engine.replay_checkpoints(T0 + replay + 3_001)),
            [(SHARD.to_owned(), Some(149_999))]
        );
    }

    #[test]
    fn applied_records_are_pushed_to_their_classes_viewers_stamped_with_now() {
        let viewers = Arc::new(Viewers::default());
        let mut class_1 = watch(&viewers, 1);
        let mut class_2 = watch(&viewers, 2);
        let mut engine = engine(&viewers);
        engine.apply(
            fresh(1, T0, &[update(1, 1, 1, 60.0), update(1, 2, 1, 90.0)]),
            T0,
        );
        assert_eq!(engine.push_due(T0), None, "nothing else is pending");
        let message = next_message(&mut class_1).unwrap();
        assert_eq!(
            (&message["type"], &message["classId"], &message["raceId"]),
            (&json!("race"), &json!(1), &json!(7))
        );
        assert_eq!(
            (&message["second"], &message["ts"]),
            (&json!(1), &json!(T0))
        );
        assert_eq!(racer_ids(&message, "hereNow"), [2, 1]);
        assert_eq!(next_message(&mut class_1), None, "one push per race");
        assert_eq!(next_message(&mut class_2), None, "another class's race");
    }

    #[test]
    fn records_past_the_sensor_limits_reach_no_push_and_no_result_but_are_counted() {
        let viewers = Arc::new(Viewers::default());
        let mut viewer = watch(&viewers, 1);
        let mut engine = engine(&viewers);
        // Racer 2 cheats (cadence 1000, then 200.01 on its final second);
        // a record of racer 3 is not even JSON.
        let mut records = fresh(
            1,
            T0,
            &[
                update(1, 1, 1, 200.0),
                update(1, 2, 1, 1000.0),
                telemetry(1, 2, 2, 200.01, Event::Final),
            ],
        );
        records.push(StreamRecord {
            data: "{oops".into(),
            ..record(4, T0, &update(1, 3, 1, 60.0))
        });
        engine.apply(records, T0);
        assert_eq!(engine.invalid, 3, "counted");
        assert!(engine.take_finals().is_empty(), "no result of a cheat");
        engine.push_due(T0);
        let message = next_message(&mut viewer).unwrap();
        assert_eq!(racer_ids(&message, "hereNow"), [1], "only the honest racer");
        assert_eq!(
            sequences(engine.replay_checkpoints(T0 + millis(REPLAY) + 1)),
            [(SHARD.to_owned(), Some(4))],
            "skipped records are read past all the same"
        );

        // Limits raised: the same records count.
        let mut lenient = Engine::new(
            Arc::clone(&viewers),
            HashMap::new(),
            &args(),
            SensorLimits::new(1000.0, 1000.0).unwrap(),
        );
        lenient.apply(
            fresh(1, T0, &[telemetry(1, 2, 2, 1000.0, Event::Final)]),
            T0,
        );
        assert_eq!(lenient.invalid, 0);
        assert_eq!(lenient.take_finals().len(), 1);
    }

    #[test]
    fn a_race_is_pushed_at_most_once_per_push_interval() {
        let viewers = Arc::new(Viewers::default());
        let mut viewer = watch(&viewers, 1);
        let mut engine = engine(&viewers);
        engine.apply(fresh(1, T0, &[update(1, 1, 1, 60.0)]), T0);
        engine.push_due(T0);
        assert_eq!(next_message(&mut viewer).unwrap()["second"], 1);

        let soon = T0 + 100;
        engine.apply(fresh(2, soon, &[update(1, 1, 2, 60.0)]), soon);
        let due = T0 + millis(PUSH);
        assert_eq!(engine.push_due(soon), Some(due), "held back until due");
        assert_eq!(next_message(&mut viewer), None);
        assert_eq!(engine.push_due(due), None);
        let message = next_message(&mut viewer).unwrap();
        assert_eq!(
            (&message["second"], &message["ts"]),
            (&json!(2), &json!(due))
        );

        assert_eq!(engine.push_due(due + 1_000), None, "nothing new, no push");
        assert_eq!(next_message(&mut viewer), None);

        // The clock stepped back: a push is not held until it catches up.
        let earlier = T0 - 60_000;
        engine.apply(fresh(3, earlier, &[update(1, 1, 3, 60.0)]), earlier);
        assert_eq!(engine.push_due(earlier), None);
        assert_eq!(next_message(&mut viewer).unwrap()["second"], 3);
    }

    #[test]
    fn records_older_than_the_replay_window_are_skipped_but_checkpointed() {
        let viewers = Arc::new(Viewers::default());
        let mut engine = engine(&viewers);
        let replay = millis(REPLAY);
        let finished = telemetry(1, 1, 300, 60.0, Event::Final);
        engine.apply(
            vec![
                record(1, T0 - replay - 1, &finished),
                StreamRecord {
                    data: "not telemetry".into(),
                    ..record(2, T0 - 1_000, &finished)
                },
                record(3, T0 - 1_000, &update(2, 5, 1, 60.0)),
            ],
            T0,
        );
        assert_eq!(
            engine.races.keys().collect::<Vec<_>>(),
            [&(ClassId(2), RaceId(7))],
            "only the recent, valid record makes a race"
        );
        assert!(
            engine.take_finals().is_empty(),
            "that race's results were kept"
        );

        assert_eq!(
            sequences(engine.replay_checkpoints(T0)),
            [(SHARD.to_owned(), Some(1))],
            "the newest record before the window"
        );
        assert!(
            engine.replay_checkpoints(T0).is_empty(),
            "nothing newer left it"
        );
        assert_eq!(
            sequences(engine.replay_checkpoints(T0 + replay)),
            [(SHARD.to_owned(), Some(3))]
        );
    }

    #[test]
    fn a_final_message_hands_its_result_over_once() {
        let viewers = Arc::new(Viewers::default());
        let mut engine = engine(&viewers);
        let messages = [
            update(1, 1, 1, 60.0),
            telemetry(1, 1, 2, 80.0, Event::Final),
        ];
        engine.apply(fresh(1, T0, &messages), T0);
        let outputs: Vec<f64> = messages.iter().map(Telemetry::output).collect();
        assert_eq!(
            engine.take_finals(),
            [Final {
                class: ClassId(1),
                race: RaceId(7),
                result: RaceResult {
                    racer_id: RacerId(1),
                    name: "R1".into(),
                    output: outputs[1],
                    average: ((outputs[0] + outputs[1]) / 2.0 * 1e4).round() / 1e4,
                    best: outputs[1],
                    seconds: 2,
                },
                finished_ms: T0,
            }]
        );
        assert!(engine.take_finals().is_empty(), "handed over once");
        // The stream read again after a restart: no second result.
        engine.apply(fresh(1, T0, &messages), T0);
        assert!(engine.take_finals().is_empty());
    }

    #[test]
    fn a_history_reload_reranks_the_live_races_of_its_class_only() {
        let viewers = Arc::new(Viewers::default());
        let mut class_1 = watch(&viewers, 1);
        let mut class_2 = watch(&viewers, 2);
        let mut engine = engine(&viewers);
        let mine = update(1, 1, 1, 60.0);
        engine.apply(fresh(1, T0, &[mine.clone(), update(2, 2, 1, 60.0)]), T0);
        engine.push_due(T0);
        let before = next_message(&mut class_1).unwrap();
        assert_eq!(before["allTime"][0]["rank"], 1);
        assert_eq!(before["allTime"][0]["personalBest"], Value::Null);
        assert!(next_message(&mut class_2).is_some());

        let mut history = ClassHistory::default();
        history.merge(Second(1), RacerId(9), mine.output() + 100.0);
        history.merge(Second(1), RacerId(1), mine.output() - 1.0);
        engine.set_all_time(ClassId(1), Arc::new(AllTime::from_history(&history)));
        let later = T0 + 1_000;
        engine.push_due(later);
        let after = next_message(&mut class_1).expect("pushed again without new records");
        assert_eq!(after["ts"], later);
        let entry = &after["allTime"][0];
        assert_eq!((&entry["rank"], &entry["of"]), (&json!(2), &json!(2)));
        assert_eq!(entry["personalBest"], mine.output() - 1.0);
        assert_eq!(entry["newRecord"], true);
        assert_eq!(
            next_message(&mut class_2),
            None,
            "other classes are unchanged"
        );
    }

    #[test]
    fn a_race_without_records_for_the_idle_time_is_forgotten() {
        let viewers = Arc::new(Viewers::default());
        let mut engine = engine(&viewers);
        engine.apply(fresh(1, T0, &[update(1, 1, 1, 60.0)]), T0);
        let idle = millis(RACE_IDLE);
        engine.apply(fresh(2, T0 + 10, &[update(1, 1, 2, 60.0)]), T0 + 10);
        engine.expire(T0 + 10 + idle - 1);
        assert_eq!(engine.races.len(), 1, "a record keeps it alive");
        engine.expire(T0 + 10 + idle);
        assert!(engine.races.is_empty());
    }

    #[test]
    fn a_flood_of_made_up_races_is_bounded_and_evicts_them_not_the_real_race() {
        let viewers = Arc::new(Viewers::default());
        let mut viewer = viewers.add(Filter {
            class_id: ClassId(1),
            race_id: Some(RaceId(7)),
            racer_id: None,
            follow: None,
        });
        let mut engine = Engine::new(
            Arc::clone(&viewers),
            HashMap::new(),
            &RankingsArgs {
                max_live_races: NonZeroUsize::new(100).unwrap(),
                ..args()
            },
            SensorLimits::DEFAULT,
        );
        // A real race of 20 racers, second 1.
        let real: Vec<Telemetry> = (1..=20).map(|r| update(1, r, 1, 60.0)).collect();
        engine.apply(fresh(1, T0, &real), T0);
        // 10,000 one-record races with made-up ids.
        let flood: Vec<StreamRecord> = (0..10_000u64)
            .map(|i| {
                let t = Telemetry {
                    race_id: RaceId(1_000_000 + i),
                    ..update(1, 1, 1, 60.0)
                };
                record(100 + i, T0, &t)
            })
            .collect();
        engine.apply(flood, T0);
        assert!(
            engine.races.len() <= 100,
            "{} live races",
            engine.races.len()
        );
        assert!(engine.races.contains_key(&(ClassId(1), RaceId(7))));
        // Every race not kept was evicted and counted.
        assert_eq!(
            engine.evictions.total,
            10_001 - engine.races.len() as u64,
            "every race not kept was evicted"
        );
        // The real race goes on and is pushed with all its racers.
        let second: Vec<Telemetry> = (1..=20).map(|r| update(1, r, 2, 60.0)).collect();
        engine.apply(fresh(20_000, T0 + 1_000, &second), T0 + 1_000);
        engine.push_due(T0 + 1_000);
        let mut pushed = None;
        while let Some(message) = next_message(&mut viewer) {
            if message["raceId"] == 7 {
                pushed = Some(message);
            }
        }
        let pushed = pushed.expect("the real race was pushed");
        assert_eq!(pushed["second"], 2);
        assert_eq!(racer_ids(&pushed, "hereNow").len(), 20);
    }

    #[tokio::test]
    async fn the_results_writer_stores_every_batch_it_is_handed() {
        let dir = tempfile::tempdir().unwrap();
        let results = ResultsStore::new(Arc::new(FsStore::open(dir.path()).unwrap()));
        let pending = Arc::new(Pending::new(10));
        let viewers = Arc::new(Viewers::default());
        let mut engine = engine(&viewers);
        for (seq, racer) in [(1, 1), (2, 2)] {
            let last = telemetry(3, racer, 1, 60.0 + racer as f64, Event::Final);
            engine.apply(fresh(seq, T0 + seq as i64, &[last]), T0);
            pending.push(engine.take_finals());
        }
        pending.close();
        write_results(results.clone(), pending, Readiness::default()).await;
        let race = results.race(RaceId(7)).await.unwrap().unwrap();
        let ranked: Vec<u64> = race
            .ranked(ClassId(3), &Default::default())
            .iter()
            .map(|r| r.result.racer_id.0)
            .collect();
        assert_eq!(ranked, [2, 1]);
        assert_eq!(race.finished_ms, T0 + 2, "the last final's arrival");
        let (board, _) = results
            .leaderboard(ClassId(3), &crate::period::Board::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(board.entries.len(), 2);
        let index = results.index(ClassId(3)).await.unwrap();
        assert_eq!(index.races[&RaceId(7)], T0 + 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_stores_the_results_of_the_races_it_reads() {
        let dir = tempfile::tempdir().unwrap();
        let stream = EmbeddedStream::open(&dir.path().join("stream")).unwrap();
        let store: Arc<dyn ObjectStore> =
            Arc::new(FsStore::open(&dir.path().join("history")).unwrap());
        let results = ResultsStore::new(Arc::clone(&store));
        let subscription = stream.subscribe("rankings").await.unwrap();
        let stop = CancellationToken::new();
        let parts = Parts {
            subscription,
            engine: engine(&Arc::new(Viewers::default())),
            loader: AllTimeLoader::new(store),
            history_reload: args().history_reload,
            results: results.clone(),
            pending: Arc::new(Pending::new(10)),
            readiness: Readiness::default(),
            class_files: Arc::default(),
        };
        let running = tokio::spawn(run(parts, stop.clone()));
        let last = telemetry(4, 1, 1, 60.0, Event::Final);
        stream
            .put_records(vec![PutRecord {
                partition_key: "1".into(),
                data: serde_json::to_vec(&last).unwrap().into(),
                validated: None,
            }])
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while results.race(RaceId(7)).await.unwrap().is_none() {
            assert!(Instant::now() < deadline, "the result was never stored");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        stop.cancel();
        running.await.unwrap().unwrap();
        let (board, _) = results
            .leaderboard(ClassId(4), &crate::period::Board::All)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(board.entries[&RacerId(1)].output, last.output());
    }
}
