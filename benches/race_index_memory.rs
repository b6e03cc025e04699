//! The memory the disqualification recomputation keeps per racer: the
//! history service's race index, measured on the heap with dhat.
//!
//! `cargo bench --bench race_index_memory` (release). Same settings as
//! `benches/disqualify.rs` (`BENCH_RACERS`, `BENCH_RACES`, `BENCH_SECONDS`,
//! `BENCH_LINES_PER_OBJECT`, `BENCH_SHARDS`). It merges the delivery
//! objects, then loads the history service twice under the heap profiler:
//! with its race index and without it (the files moved aside); the
//! difference is what the index keeps in memory. (A separate bench, as the
//! profiling allocator would slow the timed one.)

#[path = "support/deliveries.rs"]
mod deliveries;

use alleycat_history::Merger;
use alleycat_storage::ObjectStore;
use deliveries::{Archive, history_args};
use std::sync::Arc;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

async fn loaded_bytes(delivery: &Arc<dyn ObjectStore>, history: &Arc<dyn ObjectStore>) -> usize {
    let profiler = dhat::Profiler::builder().testing().build();
    let merger = Merger::load(delivery.clone(), history.clone(), &history_args())
        .await
        .unwrap();
    let bytes = dhat::HeapStats::get().curr_bytes;
    drop(merger);
    drop(profiler);
    bytes
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let archive = Archive::write().await;
    let Archive {
        racers,
        races,
        shards,
        objects,
        bytes,
        ref dir,
        ref delivery,
        ref history,
        ..
    } = archive;
    Merger::load(delivery.clone(), history.clone(), &history_args())
        .await
        .unwrap()
        .merge_new()
        .await
        .unwrap();

    let with_index = loaded_bytes(delivery, history).await;
    let index_dir = dir.path().join("history/_state/history-index");
    let aside = dir.path().join("index-aside");
    std::fs::rename(&index_dir, &aside).unwrap();
    let without_index = loaded_bytes(delivery, history).await;
    std::fs::rename(&aside, &index_dir).unwrap();
    let index = with_index.saturating_sub(without_index);
    println!(
        "{racers} racers x {races} races over {shards} shards ({objects} delivery objects, {:.1} MiB): the history service holds {:.1} MiB, of which the race index {:.1} KiB = {:.0} bytes per racer ({:.0} per racer and race)",
        bytes as f64 / 1048576.0,
        with_index as f64 / 1048576.0,
        index as f64 / 1024.0,
        index as f64 / racers as f64,
        index as f64 / (racers * races) as f64,
    );
}
