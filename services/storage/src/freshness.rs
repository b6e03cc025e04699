//! Data freshness: how long accepted records have been waiting to reach
//! their class file, as Kinesis Data Firehose's `DataFreshness` tells of
//! its deliveries.
//!
//! A record not yet in its class file is in one of three stages:
//!
//! 1. on the stream, not read by the transformer yet
//!    ([`CONSUMER_LAG`], per consumer and shard);
//! 2. read by a transformer: in its buffer, or in a delivery being written
//!    (`alleycat_transformer_freshness_seconds`);
//! 3. in a delivery object the history service has not published in every
//!    class file yet (`alleycat_history_freshness_seconds`, by the time the
//!    object was written; its records waited up to the transformer's flush
//!    latency before that).
//!
//! Each stage records *instants* (milliseconds since the epoch) in its
//! process's [`Freshness`]: the arrival of the oldest record it holds, or
//! the time before which every delivery object is published. One task per
//! process turns them into ages every [`REFRESH`], so the gauge of a stage
//! that is stuck keeps rising even though the stage's own loop does not
//! run. A process that runs both the transformer and history (the
//! all-in-one) also knows the arrival of every delivery object's oldest
//! record, and exports the end-to-end age, [`PIPELINE_FRESHNESS`].

use metrics::Gauge;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Gauge: per consumer and shard, how far the consumer's reading position
/// is behind the newest record, in milliseconds: the age of the oldest
/// record it has not read (Kinesis: `MillisBehindLatest` of its last
/// GetRecords, aged since); 0 when it has read everything.
pub const CONSUMER_LAG: &str = "alleycat_stream_consumer_lag_milliseconds";

/// Gauge: the age of the oldest record accepted on the stream and not yet
/// in its class file, in seconds (only in a process that runs both the
/// transformer and history).
pub const PIPELINE_FRESHNESS: &str = "alleycat_pipeline_freshness_seconds";

/// How often the ages are computed again.
pub const REFRESH: Duration = Duration::from_millis(250);

/// Most delivery objects remembered for the end-to-end age: a history
/// stopped for days drops the oldest (16 bytes each).
const MAX_DELIVERED: usize = 100_000;

/// What the stages of one process hold, as instants; the ages follow.
pub struct Freshness {
    ledger: Mutex<Ledger>,
    /// Each delivery object written wakes history in this process, which
    /// then checks at once instead of at its next poll.
    delivery_written: tokio::sync::Notify,
}

impl Default for Freshness {
    fn default() -> Freshness {
        Freshness {
            ledger: Mutex::new(Ledger {
                created: now_ms(),
                unread: BTreeMap::new(),
                transformer: None,
                history: None,
                delivered: VecDeque::new(),
                pipeline: None,
            }),
            delivery_written: tokio::sync::Notify::new(),
        }
    }
}

struct Ledger {
    /// When it was made: delivery objects written before are unknown.
    created: i64,
    /// Per (consumer, shard) read by this process: the arrival of the
    /// oldest record not read yet (`None`: everything is read).
    unread: BTreeMap<(String, String), Unread>,
    transformer: Option<TransformerStage>,
    history: Option<HistoryStage>,
    /// Delivery objects this process's transformer wrote, in write order.
    delivered: VecDeque<Delivered>,
    /// The end-to-end gauge, once both stages run here.
    pipeline: Option<Gauge>,
}

struct Unread {
    oldest: Option<i64>,
    gauge: Gauge,
}

struct TransformerStage {
    /// Its consumer name on the stream (whose unread records count).
    consumer: String,
    /// The arrival of the oldest record it holds.
    oldest: Option<i64>,
    gauge: Gauge,
}

struct HistoryStage {
    /// Every delivery object written before this is in its class files.
    published_before: i64,
    gauge: Gauge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Delivered {
    /// When the object was durably written.
    written: i64,
    /// The arrival of its oldest record.
    oldest: i64,
}

/// The ages computed at one instant.
#[derive(Debug, Default, PartialEq)]
struct Ages {
    /// Per entry of `unread`, in its order: milliseconds.
    unread: Vec<f64>,
    transformer: Option<f64>,
    history: Option<f64>,
    pipeline: Option<f64>,
}

/// Milliseconds since the epoch, now.
#[must_use]
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The time from `instant` to `now`, both in milliseconds since the epoch:
/// zero when `instant` is later (the clocks of two machines disagree).
pub fn age(now: i64, instant: i64) -> Duration {
    Duration::from_millis(now.saturating_sub(instant).max(0).unsigned_abs())
}

/// Milliseconds from `instant` to `now` (0 if the clocks disagree).
fn age_ms(now: i64, instant: i64) -> f64 {
    age(now, instant).as_millis() as f64
}

fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

impl Ledger {
    fn ages(&self, now: i64) -> Ages {
        let unread = self
            .unread
            .values()
            .map(|u| u.oldest.map_or(0.0, |at| age_ms(now, at)))
            .collect();
        let transformer = self
            .transformer
            .as_ref()
            .map(|t| t.oldest.map_or(0.0, |at| age_ms(now, at)) / 1000.0);
        let history = self
            .history
            .as_ref()
            .map(|h| age_ms(now, h.published_before) / 1000.0);
        let pipeline = self
            .oldest_unpublished()
            .map(|oldest| oldest.map_or(0.0, |at| age_ms(now, at)) / 1000.0);
        Ages {
            unread,
            transformer,
            history,
            pipeline,
        }
    }

    /// The arrival of the oldest record not in its class file, when both
    /// the transformer and history run here: unread by the transformer,
    /// held by it, or in an object not published yet. Objects written
    /// before this ledger was made are unknown: while history may not have
    /// published those, its time before which everything is published
    /// stands for their records' arrival (a lower bound).
    fn oldest_unpublished(&self) -> Option<Option<i64>> {
        let (transformer, history) = (self.transformer.as_ref()?, self.history.as_ref()?);
        let mut oldest = transformer.oldest;
        for ((consumer, _), unread) in &self.unread {
            if *consumer == transformer.consumer {
                oldest = earliest(oldest, unread.oldest);
            }
        }
        for object in &self.delivered {
            if object.written >= history.published_before {
                oldest = earliest(oldest, Some(object.oldest));
            }
        }
        if history.published_before < self.created {
            oldest = earliest(oldest, Some(history.published_before));
        }
        Some(oldest)
    }

    fn prune(&mut self) {
        if let Some(history) = &self.history {
            while self
                .delivered
                .front()
                .is_some_and(|d| d.written < history.published_before)
            {
                self.delivered.pop_front();
            }
        }
        while self.delivered.len() > MAX_DELIVERED {
            self.delivered.pop_front();
        }
    }
}

/// Refreshes `freshness` every [`REFRESH`] until it is dropped.
fn spawn_refresher(
    freshness: &Arc<Freshness>,
    runtime: &tokio::runtime::Handle,
) -> tokio::task::JoinHandle<()> {
    let weak = Arc::downgrade(freshness);
    runtime.spawn(async move {
        let mut ticker = tokio::time::interval(REFRESH);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let Some(freshness) = weak.upgrade() else {
                return;
            };
            freshness.refresh(now_ms());
        }
    })
}

impl Freshness {
    /// A ledger whose gauges are refreshed every [`REFRESH`] by a task that
    /// ends once the ledger is dropped. Outside a Tokio runtime nothing
    /// refreshes them.
    #[must_use]
    pub fn refreshed() -> Arc<Freshness> {
        let freshness = Arc::new(Freshness::default());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            spawn_refresher(&freshness, &runtime);
        }
        freshness
    }

    fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets every gauge to its age at `now`.
    pub fn refresh(&self, now: i64) {
        let mut ledger = self.ledger();
        let ages = ledger.ages(now);
        for (unread, age) in ledger.unread.values().zip(&ages.unread) {
            unread.gauge.set(*age);
        }
        if let (Some(stage), Some(age)) = (&ledger.transformer, ages.transformer) {
            stage.gauge.set(age);
        }
        if let (Some(stage), Some(age)) = (&ledger.history, ages.history) {
            stage.gauge.set(age);
        }
        if let Some(age) = ages.pipeline {
            ledger
                .pipeline
                .get_or_insert_with(|| metrics::gauge!(PIPELINE_FRESHNESS))
                .set(age);
        }
    }

    /// A stream reader of `consumer` on `shard` measured the arrival of the
    /// oldest record it has not read (`None`: it has read everything).
    pub fn stream_unread(&self, consumer: &str, shard: &str, oldest: Option<i64>) {
        let mut ledger = self.ledger();
        // Looked up without allocating: this runs at every poll.
        if let Some(entry) = ledger
            .unread
            .iter_mut()
            .find(|((c, s), _)| c == consumer && s == shard)
        {
            entry.1.oldest = oldest;
            return;
        }
        let gauge = metrics::gauge!(CONSUMER_LAG, "consumer" => consumer.to_owned(), "shard" => shard.to_owned());
        ledger.unread.insert(
            (consumer.to_owned(), shard.to_owned()),
            Unread { oldest, gauge },
        );
    }

    /// A stream reader of `consumer` stopped reading `shard` (handed over,
    /// finished, or the consumer stopped): its lag here is 0 from now on,
    /// whoever reads the shard next reports it.
    pub fn stream_reader_stopped(&self, consumer: &str, shard: &str) {
        if let Some(unread) = self
            .ledger()
            .unread
            .remove(&(consumer.to_owned(), shard.to_owned()))
        {
            unread.gauge.set(0.0);
        }
    }

    /// The transformer starts in this process, reading the stream as
    /// `consumer`; `gauge` gets the age of the oldest record it holds.
    pub fn transformer_started(&self, consumer: &str, gauge: Gauge) {
        self.ledger().transformer = Some(TransformerStage {
            consumer: consumer.to_owned(),
            oldest: None,
            gauge,
        });
    }

    /// The arrival of the oldest record the transformer holds (`None`:
    /// it holds none).
    pub fn transformer_holds(&self, oldest: Option<i64>) {
        if let Some(stage) = &mut self.ledger().transformer {
            stage.oldest = oldest;
        }
    }

    /// The transformer durably wrote a delivery object at `written`, the
    /// oldest of its records having arrived at `oldest`.
    pub fn delivered(&self, written: i64, oldest: i64) {
        let mut ledger = self.ledger();
        ledger.delivered.push_back(Delivered { written, oldest });
        ledger.prune();
        drop(ledger);
        self.delivery_written.notify_one();
    }

    /// Returns once this process's transformer has written a delivery
    /// object since the last return (at once if it did meanwhile, so none
    /// is missed while history checks). History in another process never
    /// hears of them and finds them at its next poll.
    pub async fn delivery_written(&self) {
        self.delivery_written.notified().await;
    }

    /// The transformer stopped: its gauge is 0 and no end-to-end age is
    /// computed any more.
    pub fn transformer_stopped(&self) {
        let mut ledger = self.ledger();
        if let Some(stage) = ledger.transformer.take() {
            stage.gauge.set(0.0);
        }
    }

    /// History starts in this process; `gauge` gets the age of the time
    /// before which every delivery object is published, which is its start
    /// until it says otherwise.
    pub fn history_started(&self, gauge: Gauge) {
        self.ledger().history = Some(HistoryStage {
            published_before: now_ms(),
            gauge,
        });
    }

    /// Every delivery object written before `instant` is in its class files.
    pub fn published_before(&self, instant: i64) {
        let mut ledger = self.ledger();
        if let Some(stage) = &mut ledger.history {
            stage.published_before = instant;
        }
        ledger.prune();
    }

    /// The arrival of the oldest record the transformer last said it
    /// holds; `None` when it holds none or does not run here.
    #[must_use]
    pub fn transformer_oldest(&self) -> Option<i64> {
        self.ledger().transformer.as_ref().and_then(|t| t.oldest)
    }

    /// The time before which history last said every delivery object is
    /// published; `None` when it does not run here.
    #[must_use]
    pub fn history_published_before(&self) -> Option<i64> {
        self.ledger().history.as_ref().map(|h| h.published_before)
    }

    /// The end-to-end age at `now`, in seconds, when both the transformer
    /// and history run here.
    #[must_use]
    pub fn pipeline_age(&self, now: i64) -> Option<f64> {
        self.ledger().ages(now).pipeline
    }

    /// What the ledger knows of `consumer`'s reading of `shard`: `None` if
    /// nothing, else the arrival of its oldest unread record, if any.
    #[cfg(test)]
    pub(crate) fn unread_of(&self, consumer: &str, shard: &str) -> Option<Option<i64>> {
        self.ledger()
            .unread
            .get(&(consumer.to_owned(), shard.to_owned()))
            .map(|u| u.oldest)
    }

    /// History stopped: its gauge is 0 and no end-to-end age is computed
    /// any more.
    pub fn history_stopped(&self) {
        let mut ledger = self.ledger();
        if let Some(stage) = ledger.history.take() {
            stage.gauge.set(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn gauge() -> Gauge {
        Gauge::noop()
    }

    /// A ledger made at `T0` with a transformer (consumer "transformer")
    /// and history, which published everything before `T0 + 10`.
    fn both() -> Freshness {
        let freshness = Freshness::default();
        freshness.transformer_started("transformer", gauge());
        freshness.history_started(gauge());
        let mut ledger = freshness.ledger();
        ledger.created = T0;
        ledger.history.as_mut().unwrap().published_before = T0 + 10;
        drop(ledger);
        freshness
    }

    fn ages(freshness: &Freshness, now: i64) -> Ages {
        freshness.ledger().ages(now)
    }

    #[test]
    fn a_stage_alone_reports_only_its_own_age() {
        let freshness = Freshness::default();
        assert_eq!(ages(&freshness, T0), Ages::default());
        freshness.stream_unread("rankings", "shard-1", Some(T0 - 1500));
        freshness.stream_unread("rankings", "shard-2", None);
        freshness.transformer_started("transformer", gauge());
        freshness.transformer_holds(Some(T0 - 2500));
        let got = ages(&freshness, T0);
        assert_eq!(got.unread, [1500.0, 0.0]);
        assert_eq!(got.transformer, Some(2.5));
        assert_eq!(got.history, None);
        assert_eq!(got.pipeline, None, "no history in this process");
        freshness.transformer_holds(None);
        assert_eq!(ages(&freshness, T0).transformer, Some(0.0));
        // A clock behind the stream's never gives a negative age.
        freshness.transformer_holds(Some(T0 + 50));
        assert_eq!(ages(&freshness, T0).transformer, Some(0.0));
        freshness.stream_reader_stopped("rankings", "shard-1");
        assert_eq!(ages(&freshness, T0).unread, [0.0]);
    }

    #[test]
    fn the_end_to_end_age_is_the_oldest_record_of_any_stage() {
        let freshness = both();
        // Nothing held, nothing delivered since the last publication.
        assert_eq!(ages(&freshness, T0 + 1000).pipeline, Some(0.0));
        // Held by the transformer, arrived at T0 + 100.
        freshness.transformer_holds(Some(T0 + 100));
        assert_eq!(ages(&freshness, T0 + 1100).pipeline, Some(1.0));
        // Delivered (written at T0 + 600, oldest record from T0 + 50) and
        // not published: older than what is held.
        freshness.delivered(T0 + 600, T0 + 50);
        freshness.transformer_holds(Some(T0 + 700));
        let got = ages(&freshness, T0 + 2050);
        assert_eq!(got.pipeline, Some(2.0));
        assert_eq!(got.transformer, Some(1.35));
        assert_eq!(got.history, Some(2.04), "published before T0 + 10");
        // Records of the transformer's consumer not read yet count; another
        // consumer's do not.
        freshness.stream_unread("transformer", "shard-0", Some(T0 + 20));
        freshness.stream_unread("rankings", "shard-0", Some(T0));
        assert_eq!(ages(&freshness, T0 + 2020).pipeline, Some(2.0));
        freshness.stream_unread("transformer", "shard-0", None);
        // History published everything written before T0 + 1000: the object
        // is in its class files, what the transformer holds is left.
        freshness.published_before(T0 + 1000);
        let got = ages(&freshness, T0 + 2700);
        assert_eq!(got.pipeline, Some(2.0));
        assert_eq!(got.history, Some(1.7));
        assert!(freshness.ledger().delivered.is_empty(), "pruned");
        freshness.transformer_holds(None);
        assert_eq!(ages(&freshness, T0 + 2700).pipeline, Some(0.0));
    }

    #[test]
    fn objects_from_before_the_ledger_count_by_the_history_age() {
        let freshness = both();
        // History's oldest pending object was written before this process.
        freshness.published_before(T0 - 5000);
        freshness.delivered(T0 + 100, T0 + 50);
        assert_eq!(ages(&freshness, T0 + 1000).pipeline, Some(6.0));
    }

    #[test]
    fn a_stopped_stage_ends_the_end_to_end_age() {
        let freshness = both();
        freshness.transformer_holds(Some(T0));
        assert!(ages(&freshness, T0 + 1).pipeline.is_some());
        freshness.history_stopped();
        assert_eq!(ages(&freshness, T0 + 1).pipeline, None);
        freshness.transformer_stopped();
        assert_eq!(ages(&freshness, T0 + 1), Ages::default());
    }

    #[test]
    fn remembered_objects_are_bounded() {
        let freshness = Freshness::default();
        for i in 0..(MAX_DELIVERED as i64 + 10) {
            freshness.delivered(T0 + i, T0 + i);
        }
        let ledger = freshness.ledger();
        assert_eq!(ledger.delivered.len(), MAX_DELIVERED);
        assert_eq!(ledger.delivered.front().unwrap().written, T0 + 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_delivery_written_wakes_its_waiter_even_one_not_waiting_yet() {
        let freshness = Freshness::default();
        let wait = Duration::from_secs(3600);
        let woken = tokio::time::timeout(wait, freshness.delivery_written()).await;
        assert!(woken.is_err(), "nothing written, nothing to wake for");
        // Written while history was busy checking: its next wait returns
        // at once, once, however many were written.
        freshness.delivered(T0, T0);
        freshness.delivered(T0 + 1, T0);
        tokio::time::timeout(Duration::ZERO, freshness.delivery_written())
            .await
            .expect("woken by the objects written meanwhile");
        let again = tokio::time::timeout(wait, freshness.delivery_written()).await;
        assert!(again.is_err(), "one wake for what one check picks up");
    }

    #[tokio::test]
    async fn the_refresher_ends_with_the_ledger() {
        let freshness = Arc::new(Freshness::default());
        let refresher = spawn_refresher(&freshness, &tokio::runtime::Handle::current());
        tokio::time::sleep(REFRESH).await;
        assert!(!refresher.is_finished());
        drop(freshness);
        tokio::time::timeout(REFRESH * 4, refresher)
            .await
            .expect("the refresher ended")
            .unwrap();
    }
}
