//! History freshness: how long after its acknowledgement a record's output
//! is visible in its `class-N.gz`. One class is watched (decoding every
//! class file of a large fleet each second would load the machine under
//! test); its file is fetched with `If-None-Match`, so only new versions are
//! downloaded and decoded.

use crate::sim::Message;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::io::Read as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Acknowledged records of the watched class, waiting to appear.
pub struct Samples {
    class: u8,
    pending: Mutex<Vec<(u16, u64, f64, Instant)>>,
    fresh: Mutex<Histogram<u64>>,
}

impl Samples {
    /// Watches `class` (0: none).
    #[must_use]
    pub fn new(class: u8) -> Samples {
        Samples {
            class,
            pending: Mutex::new(Vec::new()),
            fresh: Mutex::new(Histogram::new_with_bounds(1, 3_600_000, 3).expect("valid bounds")),
        }
    }

    /// Records just acknowledged.
    pub fn accepted(&self, messages: &[crate::sim::Message]) {
        if self.class == 0 {
            return;
        }
        let now = Instant::now();
        let mut pending = self.pending.lock().expect("not poisoned");
        pending.extend(
            messages
                .iter()
                .filter(|m: &&Message| m.class_id == self.class)
                .map(|m| (m.second, m.racer_id, m.output(), now)),
        );
    }

    /// Settles the records the class file now shows.
    fn seen(&self, history: &HashMap<u16, HashMap<u64, f64>>) {
        let now = Instant::now();
        let mut fresh = self.fresh.lock().expect("not poisoned");
        self.pending
            .lock()
            .expect("not poisoned")
            .retain(|(second, racer, output, acked)| {
                let visible = history
                    .get(second)
                    .and_then(|r| r.get(racer))
                    .is_some_and(|best| *best >= *output - 1e-9);
                if visible {
                    fresh.saturating_record(now.duration_since(*acked).as_millis().max(1) as u64);
                }
                !visible
            });
    }

    /// Records still waiting.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.lock().expect("not poisoned").len()
    }

    /// Freshness, in seconds.
    #[must_use]
    pub fn freshness_s(&self) -> crate::stats::Percentiles {
        let h = self.fresh.lock().expect("not poisoned");
        if h.is_empty() {
            return crate::stats::Percentiles::default();
        }
        crate::stats::Percentiles {
            p50: h.value_at_quantile(0.5) as f64 / 1000.0,
            p99: h.value_at_quantile(0.99) as f64 / 1000.0,
            max: h.max() as f64 / 1000.0,
            samples: h.len(),
        }
    }

    /// Polls the class file every `every` until `until`.
    pub async fn watch(&self, history_base: &str, every: Duration, until: tokio::time::Instant) {
        if self.class == 0 {
            return;
        }
        let client = reqwest::Client::new();
        let url = format!("{history_base}/history/class-{}.gz", self.class);
        let mut etag: Option<String> = None;
        while tokio::time::Instant::now() < until {
            let mut request = client.get(&url);
            if let Some(tag) = &etag {
                request = request.header("if-none-match", tag);
            }
            if let Ok(response) = request.send().await
                && response.status() == 200
            {
                etag = response
                    .headers()
                    .get("etag")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                if let Ok(gz) = response.bytes().await {
                    let decoded = tokio::task::spawn_blocking(move || {
                        let mut json = Vec::new();
                        flate2::read::MultiGzDecoder::new(&gz[..])
                            .read_to_end(&mut json)
                            .ok()?;
                        serde_json::from_slice::<HashMap<u16, HashMap<u64, f64>>>(&json).ok()
                    })
                    .await
                    .ok()
                    .flatten();
                    if let Some(history) = decoded {
                        self.seen(&history);
                    }
                }
            }
            if self.pending() == 0 && tokio::time::Instant::now() + every > until {
                break;
            }
            tokio::time::sleep(every).await;
        }
    }
}
