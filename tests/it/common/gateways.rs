//! Gateways posting races second by second while a test breaks things:
//! what they sent and what was acknowledged, for checking the class files
//! afterwards.

use super::*;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

/// What the gateways did.
#[derive(Default)]
struct Log {
    sent: Vec<Sample>,
    acked: Vec<Sample>,
    refused: u64,
}

pub struct Gateways {
    /// Where they post now: a test that restarts the server points them at
    /// the new one.
    pub base: Arc<Mutex<String>>,
    log: Arc<Mutex<Log>>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// What the gateways sent, what was acknowledged, and how many requests
/// were refused (503 or no answer).
pub struct Posted {
    pub sent: Vec<Sample>,
    pub acked: Vec<Sample>,
    pub refused: u64,
}

impl Gateways {
    /// `gateways` gateways, gateway `g` posting race `first_race + g` of
    /// `racers` racers in class `g % 6 + 1`, one second every `pause`. A
    /// 503 (which must carry `Retry-After`) or a request that gets no
    /// answer (the server is down) is counted as refused, not retried; any
    /// other status fails the test.
    pub fn start(
        base: &str,
        gateways: u64,
        first_race: u64,
        racers: u64,
        pause: Duration,
    ) -> Gateways {
        let base = Arc::new(Mutex::new(base.to_owned()));
        let log = Arc::new(Mutex::new(Log::default()));
        let stop = CancellationToken::new();
        let tasks = (0..gateways)
            .map(|g| {
                let (base, log, stop) = (base.clone(), log.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(20))
                        .build()
                        .unwrap();
                    let class = (g % 6 + 1) as u8;
                    for batch in race(first_race + g, class, g * 1000, racers, 3600) {
                        if stop.is_cancelled() {
                            return;
                        }
                        log.lock().unwrap().sent.extend(&batch);
                        let url = format!("{}/v1/telemetry", base.lock().unwrap());
                        let body = Value::Array(batch.iter().map(Sample::json).collect());
                        match client.post(url).json(&body).send().await {
                            Ok(r) if r.status() == 202 => log.lock().unwrap().acked.extend(&batch),
                            Ok(r) => {
                                assert_eq!(r.status(), 503, "only 503 while storing fails");
                                assert!(r.headers().contains_key("retry-after"));
                                log.lock().unwrap().refused += 1;
                            }
                            Err(_) => {
                                log.lock().unwrap().refused += 1;
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Gateways {
            base,
            log,
            stop,
            tasks,
        }
    }

    /// Records acknowledged so far.
    pub fn acked(&self) -> usize {
        self.log.lock().unwrap().acked.len()
    }

    /// Points the gateways at another server (after a restart).
    pub fn retarget(&self, base: &str) {
        base.clone_into(&mut self.base.lock().unwrap());
    }

    /// Stops posting and returns what was posted.
    pub async fn finish(self) -> Posted {
        self.stop.cancel();
        for task in self.tasks {
            tokio::time::timeout(PATIENCE, task).await.unwrap().unwrap();
        }
        let log = std::mem::take(&mut *self.log.lock().unwrap());
        Posted {
            sent: log.sent,
            acked: log.acked,
            refused: log.refused,
        }
    }
}
