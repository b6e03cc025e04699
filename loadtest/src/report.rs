//! The run's report: a table for people, JSON for machines, and a
//! self-contained HTML page with charts for operators.

use crate::stats::{Percentiles, Tick};
use crate::target::Usage;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Everything a run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The settings of the run.
    pub settings: BTreeMap<String, String>,
    /// Records sent.
    pub records_sent: u64,
    /// Records acknowledged.
    pub records_accepted: u64,
    /// Errors, by kind.
    pub errors: BTreeMap<String, u64>,
    /// Record sent -> acknowledged, ms.
    pub ingest_latency_ms: Percentiles,
    /// Record sent -> first ranking push that includes it, ms.
    pub ranking_latency_ms: Percentiles,
    /// Record acknowledged -> visible in its class file, s.
    pub history_freshness_s: Percentiles,
    /// Watched records never seen in the class file by the end.
    pub history_missing: u64,
    /// Records acknowledged per second of sending.
    pub achieved_rate: f64,
    /// Pushes received by all viewers.
    pub pushes_received: u64,
    /// Bytes of those pushes, per viewer and second of sending.
    pub push_bytes_per_viewer_s: f64,
    /// Pushes that carried `ghost` (viewers following a racer in its race).
    pub pushes_with_ghost: u64,
    /// Pushes that carried `following` (viewers with a follow list).
    pub pushes_with_following: u64,
    /// Seconds the WebSocket bikes and viewers took to connect, before
    /// sending started (not part of `--duration`).
    pub connect_seconds: f64,
    /// The target's CPU and memory, when it runs on this machine.
    pub target: Option<Usage>,
    /// Per second.
    pub timeline: Vec<Tick>,
}

impl Report {
    /// The target's CPU time per record it accepted, in microseconds: the
    /// cost of a record through the whole backend (ingest, stream,
    /// delivery, history, rankings and its pushes).
    #[must_use]
    pub fn cpu_us_per_record(&self) -> Option<f64> {
        let target = self.target.as_ref()?;
        (self.records_accepted > 0).then(|| target.cpu_seconds * 1e6 / self.records_accepted as f64)
    }

    /// Whether any record was refused or lost.
    #[must_use]
    pub fn failed(&self) -> bool {
        self.records_accepted < self.records_sent
            || self.history_missing > 0
            || self.errors.keys().any(|k| !k.starts_with("viewer"))
    }

    /// One line saying whether the run passed, and if not, why.
    #[must_use]
    pub fn verdict(&self) -> String {
        if !self.failed() {
            return "PASSED: every record accepted, none lost".to_owned();
        }
        let mut why = Vec::new();
        let refused = self.records_sent - self.records_accepted.min(self.records_sent);
        if refused > 0 {
            why.push(format!("{refused} records not acknowledged"));
        }
        let errors: Vec<String> = self
            .errors
            .iter()
            .filter(|(kind, _)| !kind.starts_with("viewer"))
            .map(|(kind, n)| format!("{kind}={n}"))
            .collect();
        if !errors.is_empty() {
            why.push(format!("errors {}", errors.join(" ")));
        }
        if self.history_missing > 0 {
            why.push(format!(
                "{} watched records not in the class file when --settle ended (lost, or history behind)",
                self.history_missing
            ));
        }
        format!("FAILED: {}", why.join("; "))
    }

    /// The readable table.
    #[must_use]
    pub fn table(&self) -> String {
        let mut out = String::new();
        let p = |p: &Percentiles, unit: &str| {
            if p.samples == 0 {
                "-".to_owned()
            } else {
                format!(
                    "p50 {:.1}{unit}  p99 {:.1}{unit}  max {:.1}{unit}  ({} samples)",
                    p.p50, p.p99, p.max, p.samples
                )
            }
        };
        let rows = [
            (
                "settings",
                self.settings
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            ),
            (
                "connecting",
                format!("{:.1} s before sending", self.connect_seconds),
            ),
            ("records sent", self.records_sent.to_string()),
            ("records accepted", self.records_accepted.to_string()),
            (
                "achieved rate",
                format!("{:.0} records/s", self.achieved_rate),
            ),
            (
                "errors",
                if self.errors.is_empty() {
                    "none".into()
                } else {
                    format!("{:?}", self.errors)
                },
            ),
            ("ingest latency", p(&self.ingest_latency_ms, " ms")),
            ("ranking latency", p(&self.ranking_latency_ms, " ms")),
            (
                "pushes received",
                format!(
                    "{} ({:.0} bytes per viewer per second; {} with ghost, {} with following)",
                    self.pushes_received,
                    self.push_bytes_per_viewer_s,
                    self.pushes_with_ghost,
                    self.pushes_with_following
                ),
            ),
            ("history freshness", p(&self.history_freshness_s, " s")),
            ("history missing", self.history_missing.to_string()),
            (
                "target",
                self.target
                    .as_ref()
                    .map_or("not on this machine".into(), |t| {
                        format!(
                            "pid {}: {:.1} CPU s ({:.2} cores, {:.1} µs a record accepted), peak RSS {:.0} MiB",
                            t.pid,
                            t.cpu_seconds,
                            t.cpu_cores,
                            self.cpu_us_per_record().unwrap_or(f64::NAN),
                            t.peak_rss_mib
                        )
                    }),
            ),
        ];
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in rows {
            let _ = writeln!(out, "{k:>width$} | {v}");
        }
        out
    }

    /// A self-contained HTML page: summary table plus throughput and
    /// latency-over-time charts (inline SVG, no scripts, no network).
    #[must_use]
    pub fn html(&self) -> String {
        let t: Vec<f64> = self.timeline.iter().map(|x| x.t as f64).collect();
        let series = |f: &dyn Fn(&Tick) -> f64| self.timeline.iter().map(f).collect::<Vec<f64>>();
        let throughput = chart(
            "Throughput (records/s)",
            &t,
            &[
                ("sent", "#888", series(&|x| x.sent as f64)),
                ("accepted", "#1f77b4", series(&|x| x.accepted as f64)),
            ],
        );
        let ingest = chart(
            "Ingest latency (ms)",
            &t,
            &[
                ("p50", "#2ca02c", series(&|x| x.ingest_ms.p50)),
                ("p99", "#d62728", series(&|x| x.ingest_ms.p99)),
            ],
        );
        let ranking = chart(
            "Ranking latency (ms)",
            &t,
            &[
                ("p50", "#2ca02c", series(&|x| x.ranking_ms.p50)),
                ("p99", "#d62728", series(&|x| x.ranking_ms.p99)),
            ],
        );
        format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>Alleycat load test</title>\
             <style>body{{font-family:sans-serif;margin:2em;max-width:960px}}pre{{background:#f6f6f6;padding:1em;overflow:auto;white-space:pre-wrap}}\
             .verdict{{font-weight:bold;color:{}}}</style></head><body>\
             <h1>Alleycat load test</h1><p class=\"verdict\">{}</p><pre>{}</pre>{throughput}{ingest}{ranking}</body></html>",
            if self.failed() { "#d62728" } else { "#2ca02c" },
            escape(&self.verdict()),
            escape(&self.table())
        )
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A line chart as inline SVG.
fn chart(title: &str, x: &[f64], lines: &[(&str, &str, Vec<f64>)]) -> String {
    let (w, h, pad) = (900.0, 260.0, 40.0);
    let x_max = x.iter().copied().fold(1.0, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|(_, _, ys)| ys.iter().copied())
        .fold(1.0, f64::max)
        * 1.1;
    let mut svg = format!(
        "<h2>{}</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\">\
         <rect width=\"100%\" height=\"100%\" fill=\"#fff\" stroke=\"#ccc\"/>\
         <text x=\"4\" y=\"14\" font-size=\"11\">{y_max:.1}</text><text x=\"4\" y=\"{}\" font-size=\"11\">0</text>\
         <text x=\"{}\" y=\"{}\" font-size=\"11\">{x_max:.0} s</text>",
        escape(title),
        h - pad + 4.0,
        w - pad,
        h - 6.0
    );
    for (i, (name, color, ys)) in lines.iter().enumerate() {
        let points: Vec<String> = x
            .iter()
            .zip(ys)
            .map(|(x, y)| {
                format!(
                    "{:.1},{:.1}",
                    pad + x / x_max * (w - 2.0 * pad),
                    h - pad - y / y_max * (h - 2.0 * pad)
                )
            })
            .collect();
        let _ = write!(
            svg,
            "<polyline fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" points=\"{}\"/>\
             <text x=\"{}\" y=\"14\" font-size=\"12\" fill=\"{color}\">{name}</text>",
            points.join(" "),
            w - 200.0 + i as f64 * 70.0
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(accepted: u64) -> Report {
        Report {
            settings: BTreeMap::from([("racers".into(), "10".into())]),
            records_sent: 10,
            records_accepted: accepted,
            errors: BTreeMap::new(),
            ingest_latency_ms: Percentiles {
                p50: 1.0,
                p99: 2.0,
                max: 3.0,
                samples: 10,
            },
            ranking_latency_ms: Percentiles::default(),
            history_freshness_s: Percentiles::default(),
            history_missing: 0,
            achieved_rate: 10.0,
            pushes_received: 0,
            push_bytes_per_viewer_s: 0.0,
            pushes_with_ghost: 0,
            pushes_with_following: 0,
            connect_seconds: 0.5,
            target: None,
            timeline: vec![Tick {
                t: 0,
                sent: 10,
                accepted,
                ingest_ms: Percentiles::default(),
                ranking_ms: Percentiles::default(),
            }],
        }
    }

    #[test]
    fn a_refused_record_fails_the_run() {
        assert!(!report(10).failed());
        assert!(report(9).failed());
        let mut lost = report(10);
        lost.history_missing = 1;
        assert!(lost.failed());
    }

    #[test]
    fn the_verdict_names_what_failed() {
        assert!(report(10).verdict().starts_with("PASSED"));
        let mut r = report(8);
        r.errors.insert("ws_timeout".into(), 2);
        r.errors.insert("viewer_dropped".into(), 1);
        r.history_missing = 5;
        let verdict = r.verdict();
        assert!(
            verdict.starts_with("FAILED: 2 records not acknowledged"),
            "{verdict}"
        );
        assert!(verdict.contains("errors ws_timeout=2;"), "{verdict}");
        assert!(!verdict.contains("viewer_dropped"), "{verdict}");
        assert!(verdict.contains("5 watched records"), "{verdict}");
        assert!(r.html().contains("FAILED: 2 records"));
    }

    #[test]
    fn the_outputs_carry_the_figures() {
        let r = report(10);
        assert!(r.table().contains("p50 1.0 ms"));
        let html = r.html();
        assert!(
            html.starts_with("<!doctype html>") && html.contains("<svg") && html.contains("PASSED")
        );
        let json: serde_json::Value = serde_json::to_value(&r).unwrap();
        for key in [
            "records_sent",
            "records_accepted",
            "errors",
            "ingest_latency_ms",
            "ranking_latency_ms",
            "history_freshness_s",
            "achieved_rate",
            "target",
        ] {
            assert!(json.get(key).is_some(), "{key}");
        }
        assert_eq!(json["ingest_latency_ms"]["p99"], 2.0);
    }
}
