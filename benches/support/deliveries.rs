//! Delivery objects as the transformer writes them, for the
//! disqualification benches: every racer of one class riding each race,
//! second by second, racers partitioned over shards by id.

use alleycat_core::{codec, delivery};
use alleycat_storage::ObjectStore;
use alleycat_storage::object_store::fs::FsStore;
use bytes::Bytes;
use chrono::{Duration as Span, Utc};
use std::sync::Arc;

/// The class every record is of.
pub(crate) const CLASS: u8 = 2;

/// The history service's settings: clap's defaults, publishing unpaced.
pub(crate) fn history_args() -> alleycat_history::HistoryArgs {
    #[derive(clap::Parser)]
    struct Defaults {
        #[command(flatten)]
        history: alleycat_history::HistoryArgs,
    }
    let mut args = <Defaults as clap::Parser>::parse_from(["bench"]).history;
    // Each check publishes what it merged: these benches time one merge
    // or recomputation to its class file, not the pacing of a backlog.
    args.publish_pace = 0;
    args
}

/// A whole-number setting from the environment.
pub(crate) fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The output of `racer` in `race` at `second`: race 1 is every racer's
/// strongest, so disqualifying it changes every second of the racer.
pub(crate) fn output(racer: u64, race: u64, second: u64) -> f64 {
    let base = 100.0 + (racer % 97) as f64 + (second % 13) as f64;
    base - race as f64 * 10.0
}

async fn write_deliveries(
    store: &dyn ObjectStore,
    racers: u64,
    races: u64,
    seconds: u64,
    per_object: u64,
    shards: u64,
) -> (usize, u64) {
    let mut objects = 0;
    let mut bytes = 0;
    let start = Utc::now() - Span::hours(1);
    let mut buffers = vec![(String::new(), 0u64); shards as usize];
    let mut sequence = 0u64;
    for race in 1..=races {
        for second in 1..=seconds {
            for racer in 1..=racers {
                let shard = racer % shards;
                let (lines, in_object) = &mut buffers[shard as usize];
                lines.push_str(&format!(
                    "{{\"event\":\"update\",\"deviceTimestamp\":1,\"second\":{second},\"raceId\":{race},\"name\":\"Racer {racer}\",\"racerId\":{racer},\"classId\":{CLASS},\"cadence\":80,\"resistance\":60,\"output\":{}}}\n",
                    output(racer, race, second)
                ));
                *in_object += 1;
                if *in_object == per_object {
                    sequence += 1;
                    let at = start + Span::seconds(sequence as i64 / shards as i64);
                    let tag = format!("{sequence:020}");
                    let body = codec::gzip(lines.as_bytes(), 1);
                    bytes += body.len() as u64;
                    let shard_name = format!("shardId-{shard:012}");
                    store
                        .put(
                            &delivery::delivery_key(at, &shard_name, &tag, &tag),
                            Bytes::from(body),
                            "application/gzip",
                        )
                        .await
                        .unwrap();
                    objects += 1;
                    lines.clear();
                    *in_object = 0;
                }
            }
        }
    }
    assert!(
        buffers.iter().all(|(lines, _)| lines.is_empty()),
        "choose racers x seconds divisible by shards x lines per object"
    );
    (objects, bytes)
}

/// A class's archive as the settings (`BENCH_*`) ask, on embedded stores.
pub(crate) struct Archive {
    pub(crate) racers: u64,
    pub(crate) races: u64,
    pub(crate) shards: u64,
    /// Delivery objects written, and their bytes.
    pub(crate) objects: usize,
    pub(crate) bytes: u64,
    pub(crate) dir: tempfile::TempDir,
    pub(crate) delivery: Arc<dyn ObjectStore>,
    pub(crate) history: Arc<dyn ObjectStore>,
}

impl Archive {
    /// Writes the delivery objects of `BENCH_RACERS` racers riding
    /// `BENCH_RACES` races of `BENCH_SECONDS` seconds.
    pub(crate) async fn write() -> Archive {
        let racers = setting("BENCH_RACERS", 10_000);
        let races = setting("BENCH_RACES", 2);
        let seconds = setting("BENCH_SECONDS", 300);
        let per_object = setting("BENCH_LINES_PER_OBJECT", 5_000);
        let shards = setting("BENCH_SHARDS", 4).max(1);
        let dir = tempfile::tempdir().unwrap();
        let delivery: Arc<dyn ObjectStore> =
            Arc::new(FsStore::open(&dir.path().join("delivery")).unwrap());
        let history: Arc<dyn ObjectStore> =
            Arc::new(FsStore::open(&dir.path().join("history")).unwrap());
        let (objects, bytes) = write_deliveries(
            delivery.as_ref(),
            racers,
            races,
            seconds,
            per_object,
            shards,
        )
        .await;
        Archive {
            racers,
            races,
            shards,
            objects,
            bytes,
            dir,
            delivery,
            history,
        }
    }
}
