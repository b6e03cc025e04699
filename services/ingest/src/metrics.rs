//! The ingest service's metrics (README.md, "Metrics"): records accepted,
//! batches and records refused by reason, open bike WebSockets, and how
//! long the stream takes a batch. Handles are made once; everything is
//! counted per batch.

use crate::AppError;
use crate::rate_limit::RateLimitError;
use alleycat_core::validate::BatchError;
use alleycat_runtime::metrics::Open;
use metrics::{Counter, Gauge, Histogram};
use std::sync::LazyLock;
use std::time::Duration;

/// The process's ingest metrics.
pub(crate) static METRICS: LazyLock<IngestMetrics> = LazyLock::new(IngestMetrics::new);

/// Why a batch was refused: the `reason` label, a fixed set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// Records that break the rules (422).
    Invalid,
    /// Not JSON, no records, a body that could not be read, a WebSocket
    /// frame the protocol does not allow (400, close 1002 or 1007).
    Malformed,
    /// A body, batch or message over its limit, or more of one racer's
    /// records than its burst (413, close 1009).
    TooLarge,
    /// A `Content-Type` or `Content-Encoding` ingest does not take (415).
    UnsupportedMediaType,
    /// A plain GET of the WebSocket route, a binary frame (400, close 1003).
    NotWebSocket,
    /// No valid token (401, close 1008).
    Unauthorized,
    /// Records of another racer than the token's (403).
    WrongRacer,
    /// Records of a disqualified race or racer (403).
    Disqualified,
    /// A racer over its rate (429).
    RateLimited,
    /// Too many racers limited at once (503).
    RateLimiterFull,
    /// The stream did not take the batch (503).
    Unavailable,
}

impl Reason {
    const ALL: [Reason; 11] = [
        Reason::Invalid,
        Reason::Malformed,
        Reason::TooLarge,
        Reason::UnsupportedMediaType,
        Reason::NotWebSocket,
        Reason::Unauthorized,
        Reason::WrongRacer,
        Reason::Disqualified,
        Reason::RateLimited,
        Reason::RateLimiterFull,
        Reason::Unavailable,
    ];

    /// The label value.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Reason::Invalid => "invalid",
            Reason::Malformed => "malformed",
            Reason::TooLarge => "too_large",
            Reason::UnsupportedMediaType => "unsupported_media_type",
            Reason::NotWebSocket => "not_websocket",
            Reason::Unauthorized => "unauthorized",
            Reason::WrongRacer => "wrong_racer",
            Reason::Disqualified => "disqualified",
            Reason::RateLimited => "rate_limited",
            Reason::RateLimiterFull => "rate_limiter_full",
            Reason::Unavailable => "unavailable",
        }
    }

    /// Why `error` refused its batch.
    pub(crate) fn of(error: &AppError) -> Reason {
        match error {
            AppError::Batch(BatchError::Invalid { .. }) => Reason::Invalid,
            AppError::Batch(BatchError::TooManyRecords(_))
            | AppError::BodyTooLarge
            | AppError::RateLimited(RateLimitError::LargerThanBurst { .. }) => Reason::TooLarge,
            AppError::Batch(BatchError::Malformed { .. } | BatchError::Empty)
            | AppError::BadBody(_) => Reason::Malformed,
            AppError::UnsupportedMediaType(_) | AppError::UnsupportedEncoding(_) => {
                Reason::UnsupportedMediaType
            }
            AppError::NotUpgrade(_) | AppError::BinaryFrame => Reason::NotWebSocket,
            AppError::Unauthorized(_) => Reason::Unauthorized,
            AppError::WrongRacer { .. } => Reason::WrongRacer,
            AppError::Disqualified { .. } => Reason::Disqualified,
            AppError::RateLimited(RateLimitError::Exceeded { .. }) => Reason::RateLimited,
            AppError::RateLimited(RateLimitError::Full { .. }) => Reason::RateLimiterFull,
            AppError::Unavailable(_) | AppError::ShuttingDown(_) => Reason::Unavailable,
        }
    }
}

const REASONS: usize = Reason::ALL.len();

/// Handles of every ingest metric.
pub(crate) struct IngestMetrics {
    accepted: Counter,
    refused_batches: [Counter; REASONS],
    refused_records: [Counter; REASONS],
    bikes: Gauge,
    put: Histogram,
}

impl IngestMetrics {
    fn new() -> IngestMetrics {
        // Before any handle: one made without the recorder records nothing.
        alleycat_runtime::metrics::install();
        metrics::describe_counter!(
            "alleycat_ingest_records_accepted_total",
            "Records put on the stream and acknowledged (202 or ack)"
        );
        metrics::describe_counter!(
            "alleycat_ingest_batches_refused_total",
            "Requests and WebSocket messages refused, nothing of them stored, by reason"
        );
        metrics::describe_counter!(
            "alleycat_ingest_records_refused_total",
            "Records of refused batches, where they were read, by reason"
        );
        metrics::describe_gauge!("alleycat_ingest_bike_connections", "Bike WebSockets open");
        metrics::describe_histogram!(
            "alleycat_ingest_stream_put_duration_seconds",
            metrics::Unit::Seconds,
            "Time the stream took to store an accepted batch (or refuse it)"
        );
        let by_reason = |name: &'static str| {
            Reason::ALL.map(|reason| metrics::counter!(name, "reason" => reason.label()))
        };
        IngestMetrics {
            accepted: metrics::counter!("alleycat_ingest_records_accepted_total"),
            refused_batches: by_reason("alleycat_ingest_batches_refused_total"),
            refused_records: by_reason("alleycat_ingest_records_refused_total"),
            bikes: metrics::gauge!("alleycat_ingest_bike_connections"),
            put: metrics::histogram!("alleycat_ingest_stream_put_duration_seconds"),
        }
    }

    /// `records` were stored, taking `put` to store.
    pub(crate) fn accepted(&self, records: usize, put: Duration) {
        self.accepted.increment(records as u64);
        self.put.record(put);
    }

    /// The stream refused a batch after `put`.
    pub(crate) fn put_failed(&self, put: Duration) {
        self.put.record(put);
    }

    /// A request or message was answered with `error`; the records of a
    /// batch refused as a whole by validation are counted here, those
    /// refused at the gate or by the stream by [`refused_records`].
    ///
    /// [`refused_records`]: IngestMetrics::refused_records
    pub(crate) fn refused(&self, error: &AppError) {
        let reason = Reason::of(error);
        self.refused_as(reason);
        let records = match error {
            AppError::Batch(BatchError::Invalid { total, .. }) => *total,
            AppError::Batch(BatchError::TooManyRecords(total)) => *total,
            _ => return,
        };
        self.refused_records[reason as usize].increment(records as u64);
    }

    /// A batch was refused for `reason` without an answer of its own (a
    /// WebSocket closed on a frame it may not send).
    pub(crate) fn refused_as(&self, reason: Reason) {
        self.refused_batches[reason as usize].increment(1);
    }

    /// `records` parsed records were refused by the gate or the stream
    /// with `error`.
    pub(crate) fn refused_records(&self, error: &AppError, records: usize) {
        self.refused_records[Reason::of(error) as usize].increment(records as u64);
    }

    /// A bike's WebSocket opened; counted until the guard drops.
    pub(crate) fn bike_connected(&'static self) -> Open {
        Open::count(&self.bikes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_index_their_own_handles() {
        for (index, reason) in Reason::ALL.into_iter().enumerate() {
            assert_eq!(reason as usize, index, "{reason:?}");
        }
        let labels: std::collections::HashSet<_> = Reason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), REASONS);
    }
}
