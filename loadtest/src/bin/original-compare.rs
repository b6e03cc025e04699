//! Our side of `benches/original/run.sh`: the same delivery batches and class
//! files as the original Node.js merge, processed by Alleycat's merge and
//! segmented class-file publication, timed per batch the same way.
//!
//! ```text
//! original-compare --data DIR --out OUT [--repeat K]
//! ```
//! Per batch (timed): gunzip the delivery object, parse its lines, merge
//! them into the class histories, and write every touched `class-N.gz`.

use alleycat_core::ClassId;
use alleycat_core::codec;
use alleycat_core::delivery::parse_points;
use alleycat_core::history::{ClassHistory, Histories};
use alleycat_history::class_file::SegmentedClassFile;
use anyhow::Context as _;
use clap::Parser;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Generated data: `classes/class-N.gz` and `batches/batch-K.gz`.
    #[arg(long)]
    data: PathBuf,
    /// Where the published class files go.
    #[arg(long)]
    out: PathBuf,
    /// Passes over all batches, each from the starting class files.
    #[arg(long, default_value = "1")]
    repeat: usize,
    /// Gzip level of the class files.
    #[arg(long, default_value = "6")]
    level: u32,
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    sorted[rank.min(sorted.len()) - 1]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out)?;
    let mut start_histories = Histories::default();
    let mut start_files = BTreeMap::new();
    for class in ClassId::all() {
        let path = args.data.join("classes").join(format!("class-{class}.gz"));
        if let Ok(bytes) = std::fs::read(&path) {
            let history =
                ClassHistory::from_gzip(&bytes).with_context(|| format!("{}", path.display()))?;
            start_files.insert(class, SegmentedClassFile::new(&history, args.level));
            start_histories.insert(class, history);
        }
    }
    let mut batches: Vec<(u64, Vec<u8>)> = Vec::new();
    for entry in std::fs::read_dir(args.data.join("batches"))? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(k) = name
            .strip_prefix("batch-")
            .and_then(|n| n.strip_suffix(".gz"))
            .and_then(|n| n.parse().ok())
        {
            batches.push((k, std::fs::read(&path)?));
        }
    }
    batches.sort_by_key(|(k, _)| *k);

    let mut times = Vec::new();
    let (mut records, mut writes) = (0usize, 0usize);
    let started = Instant::now();
    for _ in 0..args.repeat {
        let mut histories = start_histories.clone();
        let mut files = start_files.clone();
        for (_, gz) in &batches {
            let t0 = Instant::now();
            let json = codec::gunzip(gz, 1 << 30)?;
            let (points, bad) = parse_points(&json);
            anyhow::ensure!(bad.is_empty(), "{} unparsable lines", bad.len());
            records += points.len();
            for (class, seconds) in histories.merge(&points) {
                let history = histories.get(class).expect("just merged");
                let file = files.entry(class).or_insert_with(|| {
                    SegmentedClassFile::new(&ClassHistory::default(), args.level)
                });
                file.update(history, seconds);
                std::fs::write(args.out.join(format!("class-{class}.gz")), file.to_gzip())?;
                writes += 1;
            }
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let total_ms = started.elapsed().as_secs_f64() * 1000.0;
    times.sort_by(f64::total_cmp);
    let line = serde_json::json!({
        "impl": "alleycat",
        "batches": batches.len(),
        "repeat": args.repeat,
        "records": records,
        "per_batch_ms": {"median": quantile(&times, 0.5), "p90": quantile(&times, 0.9), "max": times.last().copied().unwrap_or(0.0)},
        "total_ms": total_ms,
        "writes": writes,
    });
    println!("{line}");
    Ok(())
}
