//! What a disqualification costs at 10,000 racers: the time from the call
//! to a corrected class file, and what the recomputation keeps per racer.
//!
//! `cargo bench --bench disqualify` (release). Settings: `BENCH_RACERS`
//! (10000), `BENCH_RACES` (races each racer rode, 2), `BENCH_SECONDS` (300),
//! `BENCH_LINES_PER_OBJECT` (5000, about 1 MiB of NDJSON: the transformer's
//! objects before `ALLEYCAT_BUFFER_BYTES` became 4 MiB, about 20000 lines),
//! `BENCH_SHARDS` (4: racers are partitioned over them by id, as Kinesis
//! does by partition key; the embedded stream is one), `BENCH_RUNS` (3).
//!
//! It writes delivery objects as the transformer does (every racer of the
//! class riding each race, second by second) into an embedded delivery
//! store, merges them all (timed too: the baseline), then, `BENCH_RUNS`
//! times: disqualifies one race of one racer, runs merge checks until the
//! published class file no longer holds that race's bests, and reinstates
//! it the same way. Times are from the call (the list written) to the
//! class file published, on the embedded stores, reading the list at once
//! (in a deployment add up to `ALLEYCAT_DISQUALIFICATIONS_POLL_MS`).

use alleycat_core::disqualification::{DisqualificationId, NewDisqualification};
use alleycat_core::{RaceId, RacerId};
use alleycat_history::Merger;
use alleycat_storage::disqualifications::Added;
use alleycat_storage::{DisqualificationList, ObjectStore};
use std::time::{Duration, Instant};

#[path = "support/deliveries.rs"]
mod deliveries;

use deliveries::{Archive, CLASS, history_args, output, setting};

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values[values.len() / 2]
}

/// Merge checks until `done` holds of the published class file.
async fn until_published(
    merger: &mut Merger,
    history: &dyn ObjectStore,
    done: impl Fn(&alleycat_core::history::ClassHistory) -> bool,
) -> usize {
    let mut objects = 0;
    for _ in 0..100 {
        let round = Instant::now();
        let report = merger.merge_new().await.unwrap();
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!("check: {:.2?} {report:?}", round.elapsed());
        }
        objects += report.rebuild_objects;
        let file = history
            .get(&format!("class-{CLASS}.gz"))
            .await
            .unwrap()
            .unwrap();
        let published = alleycat_core::history::ClassHistory::from_gzip(&file.body).unwrap();
        if done(&published) {
            return objects;
        }
    }
    panic!("the class file was never corrected");
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| {
                    let path = e.path();
                    if path.is_dir() {
                        dir_bytes(&path)
                    } else {
                        e.metadata().map_or(0, |m| m.len())
                    }
                })
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = setting("BENCH_RUNS", 3);
    let archive = Archive::write().await;
    let Archive {
        racers,
        races,
        shards,
        objects,
        ref dir,
        ref delivery,
        ref history,
        ..
    } = archive;
    println!(
        "{racers} racers x {races} races in class {CLASS} over {shards} shards: {objects} delivery objects, {:.1} MiB",
        archive.bytes as f64 / 1048576.0
    );

    let args = history_args();
    let list = DisqualificationList::watch(history.clone(), Duration::from_secs(3600));
    let mut merger = Merger::load(delivery.clone(), history.clone(), &args)
        .await
        .unwrap()
        .with_disqualifications(list.clone());
    let started = Instant::now();
    merger.merge_new().await.unwrap();
    let merge_all = started.elapsed();
    let index_bytes = dir_bytes(
        &dir.path()
            .join("history")
            .join("_state")
            .join("history-index"),
    );
    let class_bytes =
        std::fs::metadata(dir.path().join("history").join(format!("class-{CLASS}.gz")))
            .map_or(0, |m| m.len());
    println!(
        "merging everything (baseline): {merge_all:.2?}; class file {:.1} MiB",
        class_bytes as f64 / 1048576.0
    );
    println!(
        "race index kept for the recomputation: {index_bytes} bytes on disk (gzip JSON) = {:.1} bytes per racer ({:.1} per racer and race)",
        index_bytes as f64 / racers as f64,
        index_bytes as f64 / (racers * races) as f64
    );

    let mut to_corrected = Vec::new();
    let mut to_reinstated = Vec::new();
    let mut read = 0;
    for run in 0..runs {
        let racer = RacerId(1 + run * 37 % racers);
        let strong = output(racer.0, 1, 1);
        let started = Instant::now();
        let Added::Created(entry) = list
            .add(NewDisqualification {
                racer_id: racer,
                race_id: Some(RaceId(1)),
                reason: "bench".into(),
            })
            .await
            .unwrap()
        else {
            panic!("new entry");
        };
        read = until_published(&mut merger, history.as_ref(), |h| {
            h.best(alleycat_core::Second(1), racer)
                .is_some_and(|b| b < strong)
        })
        .await;
        to_corrected.push(started.elapsed());
        let started = Instant::now();
        assert!(list.remove(DisqualificationId(entry.id.0)).await.unwrap());
        until_published(&mut merger, history.as_ref(), |h| {
            h.best(alleycat_core::Second(1), racer) == Some(strong)
        })
        .await;
        to_reinstated.push(started.elapsed());
    }
    println!(
        "disqualifying one race of one racer -> corrected class file: median {:.2?} of {runs} ({to_corrected:.2?}); {read} delivery objects read (the racer's other races), of {objects}",
        median(to_corrected.clone()),
    );
    println!(
        "reinstating it -> class file back: median {:.2?} of {runs} ({to_reinstated:.2?})",
        median(to_reinstated.clone()),
    );
    println!(
        "ratio to merging everything: {:.3}",
        median(to_corrected).as_secs_f64() / merge_all.as_secs_f64()
    );
}
