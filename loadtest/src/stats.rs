//! What a run measures, shared by every task of the harness.

use dashmap::DashMap;
use foldhash::fast::RandomState;
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Latencies are recorded in microseconds, up to an hour.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// p50, p99 and max of a latency, in the report's unit.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest seen.
    pub max: f64,
    /// Samples.
    pub samples: u64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>, scale: f64) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            p50: h.value_at_quantile(0.5) as f64 / scale,
            p99: h.value_at_quantile(0.99) as f64 / scale,
            max: h.max() as f64 / scale,
            samples: h.len(),
        }
    }
}

/// One second of the run, for the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Tick {
    /// Seconds since the start.
    pub t: u64,
    /// Records sent in that second.
    pub sent: u64,
    /// Records acknowledged in that second.
    pub accepted: u64,
    /// Ingest latency that second, ms.
    pub ingest_ms: Percentiles,
    /// Ranking latency that second, ms.
    pub ranking_ms: Percentiles,
}

struct Window {
    sent: u64,
    accepted: u64,
    ingest: Histogram<u64>,
    ranking: Histogram<u64>,
}

impl Default for Window {
    fn default() -> Self {
        Window {
            sent: 0,
            accepted: 0,
            ingest: histogram(),
            ranking: histogram(),
        }
    }
}

/// Counters and histograms of a run.
pub struct Stats {
    base: Instant,
    /// When sending began, in ms after `base`: the timeline counts from it.
    begin_ms: AtomicU64,
    /// Bikes and viewers done connecting (connected or given up).
    pub ready: AtomicU64,
    /// Records sent.
    pub sent: AtomicU64,
    /// Records acknowledged (202 or ack frame).
    pub accepted: AtomicU64,
    /// Pushes received by viewers.
    pub pushes: AtomicU64,
    /// Bytes of the pushes received (text frames' payloads).
    pub push_bytes: AtomicU64,
    /// Pushes that carried `ghost` (the followed racer against its best).
    pub ghost_pushes: AtomicU64,
    /// Pushes that carried `following` (a follow list's standings).
    pub following_pushes: AtomicU64,
    errors: DashMap<String, u64>,
    ingest: Mutex<Histogram<u64>>,
    ranking: Mutex<Histogram<u64>>,
    windows: Mutex<BTreeMap<u64, Window>>,
    /// Records sent and not yet seen in a push: (race, second, racer) -> when
    /// sent. Every racer of every push is looked up in it (millions a second
    /// in the stretch run): SipHash made it 7% of the machine's CPU.
    pub unseen: DashMap<(u64, u16, u64), Instant, RandomState>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new()
    }
}

impl Stats {
    /// Starts counting now.
    #[must_use]
    pub fn new() -> Stats {
        Stats {
            base: Instant::now(),
            begin_ms: AtomicU64::new(0),
            ready: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            pushes: AtomicU64::new(0),
            push_bytes: AtomicU64::new(0),
            ghost_pushes: AtomicU64::new(0),
            following_pushes: AtomicU64::new(0),
            errors: DashMap::new(),
            ingest: Mutex::new(histogram()),
            ranking: Mutex::new(histogram()),
            windows: Mutex::new(BTreeMap::new()),
            unseen: DashMap::with_hasher(RandomState::default()),
        }
    }

    /// Sending begins now: the timeline's second 0.
    pub fn begin_now(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.begin_ms.store(ms, Ordering::Relaxed);
    }

    fn window<T>(&self, f: impl FnOnce(&mut Window) -> T) -> T {
        let elapsed_ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        let second = elapsed_ms.saturating_sub(self.begin_ms.load(Ordering::Relaxed)) / 1000;
        let mut windows = self.windows.lock().expect("not poisoned");
        f(windows.entry(second).or_default())
    }

    /// `n` records went out.
    pub fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        self.window(|w| w.sent += n);
    }

    /// `n` records were acknowledged `latency_us` after they were sent.
    pub fn accepted(&self, n: u64, latency_us: u64) {
        self.accepted.fetch_add(n, Ordering::Relaxed);
        self.ingest
            .lock()
            .expect("not poisoned")
            .saturating_record(latency_us.max(1));
        self.window(|w| {
            w.accepted += n;
            w.ingest.saturating_record(latency_us.max(1));
        });
    }

    /// A record first appeared in a push `latency_us` after it was sent.
    pub fn ranked(&self, latency_us: u64) {
        self.ranking
            .lock()
            .expect("not poisoned")
            .saturating_record(latency_us.max(1));
        self.window(|w| w.ranking.saturating_record(latency_us.max(1)));
    }

    /// Something went wrong, of `kind`.
    pub fn error(&self, kind: &str) {
        *self.errors.entry(kind.to_owned()).or_insert(0) += 1;
    }

    /// Errors so far, by kind.
    #[must_use]
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors
            .iter()
            .map(|e| (e.key().clone(), *e.value()))
            .collect()
    }

    /// Ingest latency, ms.
    #[must_use]
    pub fn ingest_ms(&self) -> Percentiles {
        Percentiles::of(&self.ingest.lock().expect("not poisoned"), 1000.0)
    }

    /// Ranking latency, ms.
    #[must_use]
    pub fn ranking_ms(&self) -> Percentiles {
        Percentiles::of(&self.ranking.lock().expect("not poisoned"), 1000.0)
    }

    /// Every second of the run.
    #[must_use]
    pub fn timeline(&self) -> Vec<Tick> {
        self.windows
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(t, w)| Tick {
                t: *t,
                sent: w.sent,
                accepted: w.accepted,
                ingest_ms: Percentiles::of(&w.ingest, 1000.0),
                ranking_ms: Percentiles::of(&w.ranking, 1000.0),
            })
            .collect()
    }

    /// Forgets records sent more than `max_age` ago that no push showed (a
    /// racer outside every viewer's top N): they have no ranking latency.
    pub fn prune_unseen(&self, max_age: std::time::Duration) {
        self.unseen.retain(|_, sent| sent.elapsed() < max_age);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let stats = Stats::new();
        for ms in 1..=100u64 {
            stats.accepted(1, ms * 1000);
        }
        let p = stats.ingest_ms();
        assert!((49.0..=51.0).contains(&p.p50), "{p:?}");
        assert!((98.0..=100.0).contains(&p.p99), "{p:?}");
        assert_eq!(p.samples, 100);
        assert_eq!(stats.accepted.load(Ordering::Relaxed), 100);
        stats.error("http_503");
        stats.error("http_503");
        assert_eq!(stats.errors()["http_503"], 2);
        assert_eq!(stats.timeline()[0].accepted, 100);
    }
}
