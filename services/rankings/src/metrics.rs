//! The rankings service's metrics (README.md, "Metrics"): viewers
//! connected and dropped, push latency, messages queued, records skipped,
//! live races and what the bounds dropped. Handles are made once.

use alleycat_runtime::metrics::Open;
use metrics::{Counter, Gauge, Histogram};
use std::sync::LazyLock;

/// The process's rankings metrics.
pub(crate) static METRICS: LazyLock<RankingsMetrics> = LazyLock::new(RankingsMetrics::new);

/// Handles of every rankings metric.
pub(crate) struct RankingsMetrics {
    /// Viewer WebSockets open.
    pub(crate) viewers: Gauge,
    /// Viewers dropped because their socket took no push for a while.
    pub(crate) viewers_dropped: Counter,
    /// Per push, from the arrival on the stream of the oldest record it is
    /// the first to show to the push, in seconds.
    pub(crate) push_latency: Histogram,
    /// Messages queued to viewers.
    pub(crate) messages: Counter,
    /// Messages that replaced one still waiting for its viewer.
    pub(crate) messages_replaced: Counter,
    /// Records on the stream skipped as breaking the rules.
    pub(crate) records_skipped: Counter,
    /// Live races held.
    pub(crate) live_races: Gauge,
    /// Live races evicted to stay within the bound.
    pub(crate) races_evicted: Counter,
    /// Racers' results dropped unwritten to stay within the bound.
    pub(crate) results_dropped: Counter,
}

impl RankingsMetrics {
    fn new() -> RankingsMetrics {
        // Before any handle: one made without the recorder records nothing.
        alleycat_runtime::metrics::install();
        metrics::describe_gauge!(
            "alleycat_rankings_viewer_connections",
            "Viewer WebSockets open"
        );
        metrics::describe_counter!(
            "alleycat_rankings_viewers_dropped_total",
            "Viewers dropped (closed 1008) because their socket took no push for 5 s"
        );
        metrics::describe_histogram!(
            "alleycat_rankings_push_latency_seconds",
            metrics::Unit::Seconds,
            "Per push, time from the stream arrival of the oldest record it is the first to show"
        );
        metrics::describe_counter!(
            "alleycat_rankings_messages_queued_total",
            "Push messages queued to viewers"
        );
        metrics::describe_counter!(
            "alleycat_rankings_messages_replaced_total",
            "Push messages that replaced one of the same race still waiting for its viewer"
        );
        metrics::describe_counter!(
            "alleycat_rankings_records_skipped_total",
            "Records read from the stream and skipped as invalid or implausible"
        );
        metrics::describe_gauge!("alleycat_rankings_live_races", "Live races held");
        metrics::describe_counter!(
            "alleycat_rankings_races_evicted_total",
            "Live races evicted past ALLEYCAT_RANKINGS_MAX_LIVE_RACES"
        );
        metrics::describe_counter!(
            "alleycat_rankings_results_dropped_total",
            "Racers' results dropped unwritten past ALLEYCAT_RANKINGS_MAX_PENDING_RACES"
        );
        RankingsMetrics {
            viewers: metrics::gauge!("alleycat_rankings_viewer_connections"),
            viewers_dropped: metrics::counter!("alleycat_rankings_viewers_dropped_total"),
            push_latency: metrics::histogram!("alleycat_rankings_push_latency_seconds"),
            messages: metrics::counter!("alleycat_rankings_messages_queued_total"),
            messages_replaced: metrics::counter!("alleycat_rankings_messages_replaced_total"),
            records_skipped: metrics::counter!("alleycat_rankings_records_skipped_total"),
            live_races: metrics::gauge!("alleycat_rankings_live_races"),
            races_evicted: metrics::counter!("alleycat_rankings_races_evicted_total"),
            results_dropped: metrics::counter!("alleycat_rankings_results_dropped_total"),
        }
    }

    /// A viewer's WebSocket opened; counted until the guard drops.
    pub(crate) fn viewer_connected(&'static self) -> Open {
        Open::count(&self.viewers)
    }
}
