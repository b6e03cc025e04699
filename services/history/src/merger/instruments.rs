//! The merger's metrics: handles made once when it loads, counted per
//! check and per publication (never per record).

use super::MergeReport;
use alleycat_core::ClassId;
use metrics::{Counter, Gauge, Histogram};
use std::collections::BTreeMap;
use std::time::Duration;

/// Gauge: the age of the oldest delivery object that may not be in its
/// class files yet, by the time it was written (see [`super::Merger`]).
pub(crate) const FRESHNESS: &str = "alleycat_history_freshness_seconds";

/// The merger's counters and gauges.
pub(super) struct Instruments {
    checks_ok: Counter,
    checks_failed: Counter,
    check_duration: Histogram,
    objects: Counter,
    handed_over: Counter,
    reread: Counter,
    records: Counter,
    invalid: Counter,
    too_many_racers: Counter,
    disqualified: Counter,
    pending_objects: Gauge,
    /// Disqualification recomputations (one per class recomputed), the
    /// racers recomputed and the delivery objects read for them.
    pub(super) recomputations: Counter,
    pub(super) recomputed_racers: Counter,
    pub(super) recomputation_objects: Counter,
    classes: BTreeMap<ClassId, ClassInstruments>,
}

/// One class's publication metrics.
pub(super) struct ClassInstruments {
    /// Class files written.
    pub(super) publications: Counter,
    /// Writes refused because another writer changed the file (a
    /// precondition failed): merged with theirs and written again.
    pub(super) conflicts: Counter,
    /// Publications that failed (the store), tried again next check.
    pub(super) failures: Counter,
    /// Size of the class file as last read or written, in bytes.
    pub(super) file_bytes: Gauge,
}

impl ClassInstruments {
    fn new(class: ClassId) -> ClassInstruments {
        let label = class.to_string();
        ClassInstruments {
            publications: metrics::counter!("alleycat_history_publications_total", "class" => label.clone()),
            conflicts: metrics::counter!("alleycat_history_conflicts_total", "class" => label.clone()),
            failures: metrics::counter!("alleycat_history_publication_failures_total", "class" => label.clone()),
            file_bytes: metrics::gauge!("alleycat_history_class_file_bytes", "class" => label),
        }
    }
}

impl Instruments {
    pub(super) fn new() -> Instruments {
        const CHECKS: &str = "alleycat_history_checks_total";
        const NOT_MERGED: &str = "alleycat_history_records_not_merged_total";
        Instruments {
            checks_ok: metrics::counter!(CHECKS, "outcome" => "ok"),
            checks_failed: metrics::counter!(CHECKS, "outcome" => "failed"),
            check_duration: metrics::histogram!("alleycat_history_check_duration_seconds"),
            objects: metrics::counter!("alleycat_history_objects_merged_total"),
            handed_over: metrics::counter!("alleycat_history_objects_handed_over_total"),
            reread: metrics::counter!("alleycat_history_objects_reread_total"),
            records: metrics::counter!("alleycat_history_records_merged_total"),
            invalid: metrics::counter!(NOT_MERGED, "reason" => "invalid"),
            too_many_racers: metrics::counter!(NOT_MERGED, "reason" => "too_many_racers"),
            disqualified: metrics::counter!(NOT_MERGED, "reason" => "disqualified"),
            pending_objects: metrics::gauge!("alleycat_history_pending_objects"),
            recomputations: metrics::counter!(
                "alleycat_history_disqualification_recomputations_total"
            ),
            recomputed_racers: metrics::counter!("alleycat_history_recomputed_racers_total"),
            recomputation_objects: metrics::counter!(
                "alleycat_history_recomputation_objects_total"
            ),
            classes: ClassId::all()
                .map(|class| (class, ClassInstruments::new(class)))
                .collect(),
        }
    }

    /// The metrics of `class`.
    pub(super) fn class(&self, class: ClassId) -> &ClassInstruments {
        &self.classes[&class]
    }

    /// Counts one check: what it merged (whether it then succeeded or not:
    /// what it merged stays merged), how it ended and how long it took.
    pub(super) fn check(&self, report: &MergeReport, ok: bool, took: Duration) {
        if ok {
            self.checks_ok.increment(1);
        } else {
            self.checks_failed.increment(1);
        }
        self.check_duration.record(took);
        self.objects.increment(report.objects as u64);
        self.handed_over.increment(report.handed_over as u64);
        self.reread.increment(report.reread as u64);
        let too_many: usize = report.too_many_racers.values().sum();
        let not_merged = report.disqualified + too_many;
        self.records
            .increment(report.records.saturating_sub(not_merged) as u64);
        self.invalid.increment(report.rejected as u64);
        self.disqualified.increment(report.disqualified as u64);
        self.too_many_racers.increment(too_many as u64);
    }

    /// Delivery objects whose records wait for a class not published yet.
    pub(super) fn pending(&self, objects: usize) {
        self.pending_objects.set(objects as f64);
    }
}
