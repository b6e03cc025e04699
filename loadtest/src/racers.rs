//! The simulated bikes, over each transport: one WebSocket per bike, HTTP
//! batches from gym gateways, or PutRecords straight onto Kinesis.

use crate::freshness::Samples;
use crate::schedule::{Schedule, Window};
use crate::sim::{Fleet, Message};
use crate::stats::Stats;
use futures_util::{SinkExt as _, StreamExt as _};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message as Frame;

/// How long a bike waits for its answer before counting a timeout.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// What every sender shares.
#[derive(Clone)]
pub struct Run {
    /// The fleet.
    pub fleet: Fleet,
    /// Base URL of ingest.
    pub target: String,
    /// When sending starts and stops.
    pub schedule: Schedule,
    /// Measurements.
    pub stats: Arc<Stats>,
    /// Records whose appearance in the class files is tracked.
    pub samples: Arc<Samples>,
}

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The next instant at `phase_ms` into a wall-clock second.
fn next_tick(phase_ms: u64) -> tokio::time::Instant {
    let now = epoch_ms();
    let into = now % 1000;
    let wait = if into <= phase_ms {
        phase_ms - into
    } else {
        1000 - into + phase_ms
    };
    tokio::time::Instant::now() + Duration::from_millis(wait)
}

/// A sender's seconds: one at its phase of every wall-clock second of the
/// sending window.
struct Ticks {
    next: tokio::time::Instant,
    window: Window,
}

impl Ticks {
    /// Sleeps until the next second to send in; `false` once the window is over.
    async fn tick(&mut self) -> bool {
        if self.next >= self.window.until {
            return false;
        }
        tokio::time::sleep_until(self.next).await;
        self.next += Duration::from_secs(1);
        true
    }
}

impl Run {
    /// Waits for sending to start, then gives the seconds of a sender
    /// phased like racer `index`; `None` if sending never starts.
    async fn ticks(&self, index: u64) -> Option<Ticks> {
        let window = self.schedule.clone().window().await?;
        Some(Ticks {
            next: next_tick(self.fleet.phase_ms(index)),
            window,
        })
    }

    /// The messages of `racers` (indices) for the current second.
    fn messages(&self, racers: impl Iterator<Item = u64>) -> Vec<Message> {
        let now = epoch_ms();
        let (race, second) = self.fleet.race_at(now);
        racers
            .map(|i| self.fleet.message(i, race, second, now))
            .collect()
    }

    fn note_sent(&self, messages: &[Message], at: Instant) {
        self.stats.sent(messages.len() as u64);
        for m in messages {
            self.stats
                .unseen
                .insert((m.race_id, m.second, m.racer_id), at);
        }
    }

    fn note_accepted(&self, messages: &[Message], sent: Instant) {
        self.stats
            .accepted(messages.len() as u64, sent.elapsed().as_micros() as u64);
        self.samples.accepted(messages);
    }
}

/// One bike on its own WebSocket, sending its racer's message every second
/// and waiting for each answer.
pub async fn websocket_bike(run: Run, index: u64) {
    let url = format!("{}/v1/telemetry/ws", run.target.replacen("http", "ws", 1));
    let mut socket = None;
    for _ in 0..5 {
        match crate::socket::bike(&url).await {
            Ok(ws) => {
                socket = Some(ws);
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    run.stats.ready.fetch_add(1, Ordering::Relaxed);
    let Some(mut ws) = socket else {
        run.stats.error("ws_connect");
        return;
    };
    let Some(mut ticks) = run.ticks(index).await else {
        return;
    };
    while ticks.tick().await {
        let messages = run.messages(std::iter::once(index));
        let text = serde_json::to_string(&messages[0]).expect("messages serialize");
        let sent = Instant::now();
        run.note_sent(&messages, sent);
        if ws.send(Frame::text(text)).await.is_err() {
            run.stats.error("ws_send");
            return;
        }
        match tokio::time::timeout(ANSWER_TIMEOUT, ws.next()).await {
            Ok(Some(Ok(Frame::Text(answer)))) if answer.contains("\"ack\"") => {
                run.note_accepted(&messages, sent)
            }
            Ok(Some(Ok(Frame::Text(_)))) => run.stats.error("ws_refused"),
            Ok(Some(Ok(_))) => run.stats.error("ws_unexpected_frame"),
            Ok(_) => {
                run.stats.error("ws_closed");
                return;
            }
            Err(_) => run.stats.error("ws_timeout"),
        }
    }
    tokio::time::sleep_until(ticks.window.closing()).await;
    let _ = ws.close(None).await;
}

/// A gym gateway posting its racers' messages as one JSON array a second.
pub async fn http_gateway(run: Run, racers: std::ops::Range<u64>) {
    let client = reqwest::Client::builder()
        .timeout(ANSWER_TIMEOUT)
        .build()
        .expect("a client");
    let url = format!("{}/v1/telemetry", run.target);
    let Some(mut ticks) = run.ticks(racers.start).await else {
        return;
    };
    while ticks.tick().await {
        let messages = run.messages(racers.clone());
        let body = serde_json::to_vec(&messages).expect("messages serialize");
        let sent = Instant::now();
        run.note_sent(&messages, sent);
        match client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
        {
            Ok(r) if r.status() == 202 => run.note_accepted(&messages, sent),
            Ok(r) => run.stats.error(&format!("http_{}", r.status().as_u16())),
            Err(e) if e.is_timeout() => run.stats.error("http_timeout"),
            Err(_) => run.stats.error("http_connect"),
        }
    }
}

/// A simulator putting its racers' messages straight onto Kinesis, with
/// random partition keys, as the original simulator did.
pub async fn kinesis_putter(
    run: Run,
    client: aws_sdk_kinesis::Client,
    stream: String,
    racers: std::ops::Range<u64>,
) {
    use aws_sdk_kinesis::primitives::Blob;
    use aws_sdk_kinesis::types::PutRecordsRequestEntry;
    let Some(mut ticks) = run.ticks(racers.start).await else {
        return;
    };
    while ticks.tick().await {
        let messages = run.messages(racers.clone());
        let entries: Vec<PutRecordsRequestEntry> = messages
            .iter()
            .map(|m| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("{:016x}", fastrand::u64(..)))
                    .data(Blob::new(
                        serde_json::to_vec(m).expect("messages serialize"),
                    ))
                    .build()
                    .expect("key and data set")
            })
            .collect();
        let sent = Instant::now();
        run.note_sent(&messages, sent);
        match client
            .put_records()
            .stream_name(&stream)
            .set_records(Some(entries))
            .send()
            .await
        {
            Ok(out) if out.failed_record_count.unwrap_or(0) == 0 => {
                run.note_accepted(&messages, sent)
            }
            Ok(out) => {
                for _ in 0..out.failed_record_count.unwrap_or(0) {
                    run.stats.error("kinesis_throttled");
                }
            }
            Err(_) => run.stats.error("kinesis_put"),
        }
    }
}
