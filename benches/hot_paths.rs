//! Criterion benches of the hot paths: `cargo bench --bench hot_paths`.
//!
//! - parse + validate + output of one record, and of a 100-record batch;
//! - the history merge of a 2,000-record delivery batch into a class of
//!   10,000 racers;
//! - publishing a class file of 10,000 racers (3 million bests, about 50 MB
//!   of JSON): re-encoding it whole (levels 1 and 6) against re-encoding only
//!   the 5 seconds a batch touched;
//! - the rankings update: one second of a 1,000-racer race applied, ranked
//!   and turned into a push; one push of a 1,667-racer race to 167 viewers;
//!   loading a stretch-run class file (16,667 racers, 60 s) for "All time";
//! - gzipping one delivery object of the size the transformer writes while
//!   it catches up (8 MiB of delivery lines, at the delivery level).

use alleycat_core::delivery::{DeliveryRecord, HistoryPoint};
use alleycat_core::history::{ClassHistory, Histories};
use alleycat_core::validate::{BodyFormat, parse_batch, parse_record};
use alleycat_core::{ClassId, Event, RaceId, RacerId, Second, Telemetry};
use alleycat_history::class_file::SegmentedClassFile;
use alleycat_rankings::all_time::AllTime;
use alleycat_rankings::push::Snapshot;
use alleycat_rankings::race::Race;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

const RECORD: &str = r#"{"uuid":"0b7e4f1e-5a3c-4d3e-9f1a-2c7b8d9e0f12","event":"update","deviceTimestamp":1619185789753,"second":3,"raceId":5397285,"name":"Hubert","racerId":101,"classId":1,"cadence":80.25,"resistance":78.5}"#;

fn output_of(racer: u64, second: u16) -> f64 {
    let x = (racer.wrapping_mul(2_654_435_761) ^ u64::from(second).wrapping_mul(40_503)) % 10_000;
    alleycat_core::output(
        30.0 + (x % 600) as f64 / 10.0,
        33.0 + (x % 530) as f64 / 10.0,
    )
}

/// A class of `racers` racers with a best at every second of a 300 s race.
fn class_history(racers: u64) -> ClassHistory {
    let mut h = ClassHistory::default();
    for second in 1..=300u16 {
        for racer in 0..racers {
            h.merge(Second(second), RacerId(racer), output_of(racer, second));
        }
    }
    h
}

fn ingest(c: &mut Criterion) {
    let mut group = c.benchmark_group("ingest");
    group.throughput(Throughput::Elements(1));
    group.bench_function("parse_validate_output/1", |b| {
        b.iter(|| parse_record(black_box(RECORD.as_bytes())).map(|t| t.output()))
    });
    let batch = format!("[{}]", vec![RECORD; 100].join(","));
    group.throughput(Throughput::Elements(100));
    group.bench_function("parse_validate_output/100", |b| {
        b.iter(|| {
            parse_batch(black_box(batch.as_bytes()), BodyFormat::Json)
                .map(|r| r.iter().map(Telemetry::output).sum::<f64>())
        })
    });
    group.finish();
}

fn history(c: &mut Criterion) {
    let racers = 10_000 / 6;
    let start = class_history(racers);
    let mut histories = Histories::default();
    histories.insert(ClassId(1), start.clone());
    // A delivery batch: 5 seconds of the race being ridden, some bests beaten.
    let points: Vec<HistoryPoint> = (0..2000u64)
        .map(|i| HistoryPoint {
            class_id: ClassId(1),
            second: Second(101 + (i % 5) as u16),
            racer_id: RacerId(i % racers),
            race_id: RaceId(1),
            output: output_of(i % racers, 101 + (i % 5) as u16)
                + if i % 5 == 0 { 1.0 } else { -1.0 },
        })
        .collect();
    let mut group = c.benchmark_group("history");
    group.throughput(Throughput::Elements(points.len() as u64));
    group.bench_function("merge_2000_records_into_10k_racer_class", |b| {
        b.iter_batched_ref(
            || histories.clone(),
            |h| h.merge(black_box(&points)),
            BatchSize::LargeInput,
        )
    });
    group.finish();

    // The publication case: one class of 10,000 racers.
    let racers = 10_000;
    let start = class_history(racers);
    let points: Vec<HistoryPoint> = (0..2000u64)
        .map(|i| HistoryPoint {
            class_id: ClassId(1),
            second: Second(101 + (i % 5) as u16),
            racer_id: RacerId(i * 5 % racers),
            race_id: RaceId(1),
            output: output_of(i * 5 % racers, 101 + (i % 5) as u16) + 1.0,
        })
        .collect();
    let mut group = c.benchmark_group("class_file_publication_10k_racers");
    group.sample_size(10);
    for level in [1, 6] {
        group.bench_function(format!("whole_file_level_{level}"), |b| {
            b.iter(|| start.to_gzip(black_box(level)))
        });
    }
    // Another backend, for choosing one: libdeflate compresses a whole
    // buffer at once (no streaming, so it cannot keep segments open).
    let json = start.to_json();
    for level in [1, 6] {
        group.bench_function(format!("whole_file_libdeflate_level_{level}"), |b| {
            let mut compressor =
                libdeflater::Compressor::new(libdeflater::CompressionLvl::new(level).unwrap());
            let mut out = vec![0; compressor.gzip_compress_bound(json.len())];
            b.iter(|| {
                compressor
                    .gzip_compress(black_box(&json), &mut out)
                    .unwrap()
            })
        });
    }
    let mut merged = start.clone();
    let touched: Vec<Second> = (101..=105).map(Second).collect();
    for p in &points {
        merged.merge(p.second, p.racer_id, p.output);
    }
    for level in [1, 6] {
        let file = SegmentedClassFile::new(&start, level);
        // What every racer downloads, against one gzip of the same JSON.
        let whole = start.to_gzip(level).len();
        let segmented = file.to_gzip().len();
        println!(
            "class file of {racers} racers at level {level}: {segmented} bytes segmented, \
             {whole} whole ({:.4}x)",
            segmented as f64 / whole as f64
        );
        group.bench_function(format!("segmented_5_seconds_level_{level}"), |b| {
            b.iter_batched_ref(
                || file.clone(),
                |f| {
                    f.update(&merged, touched.iter().copied());
                    f.to_gzip()
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

fn rankings(c: &mut Criterion) {
    let all_time = std::sync::Arc::new(AllTime::from_history(&class_history(1000)));
    let mut race = Race::new(ClassId(1), RaceId(1), std::sync::Arc::clone(&all_time));
    for second in 1..=99u16 {
        for racer in 0..1000u64 {
            race.apply(&telemetry(racer, second), u64::from(second) * 1000 + racer);
        }
    }
    let mut group = c.benchmark_group("rankings");
    group.throughput(Throughput::Elements(1000));
    group.bench_function("apply_rank_and_push_one_second_of_1000_racers", |b| {
        b.iter_batched_ref(
            || race.clone(),
            |race| {
                for racer in 0..1000u64 {
                    race.apply(&telemetry(racer, 100), 200_000 + racer);
                }
                let snapshot = Snapshot::new(race, Some(&all_time), 50, 0);
                (
                    snapshot.shared().len(),
                    snapshot.for_racer(RacerId(700)).map(|m| m.len()),
                )
            },
            BatchSize::LargeInput,
        )
    });

    // One push of a race at the 10,000-racer load (1,667 racers a class) to
    // its 167 viewers, each following a racer: what the engine does every
    // push interval for every race.
    let mut race = Race::new(ClassId(1), RaceId(1), std::sync::Arc::clone(&all_time));
    for second in 1..=100u16 {
        for racer in 0..1667u64 {
            race.apply(&telemetry(racer, second), u64::from(second) * 2000 + racer);
        }
    }
    group.throughput(Throughput::Elements(167));
    group.bench_function("push_one_race_of_1667_racers_to_167_viewers", |b| {
        b.iter(|| {
            let snapshot = Snapshot::new(&race, Some(&all_time), 50, 0);
            (0..167u64)
                .map(|v| snapshot.for_racer(RacerId(v * 10)).map_or(0, |m| m.len()))
                .sum::<usize>()
                + snapshot.shared().len()
        })
    });

    // The same at the stretch run's load (100,000 racers, 10,000 viewers:
    // 16,667 racers and 1,667 viewers a class), each viewer riding in the
    // race, so its push carries its ghost, 150 seconds in.
    let mut race = Race::new(ClassId(1), RaceId(1), std::sync::Arc::clone(&all_time));
    for second in 1..=150u16 {
        for racer in 0..16_667u64 {
            race.apply(
                &telemetry(racer, second),
                u64::from(second) * 20_000 + racer,
            );
        }
    }
    group.throughput(Throughput::Elements(1667));
    group.bench_function("push_one_race_of_16667_racers_to_1667_riders", |b| {
        b.iter(|| {
            let snapshot = Snapshot::new(&race, Some(&all_time), 50, 0);
            (0..1667u64)
                .map(|v| {
                    snapshot
                        .for_viewer(Some(RacerId(v * 10)), None)
                        .map_or(0, |m| m.len())
                })
                .sum::<usize>()
                + snapshot.shared().len()
        })
    });

    // Loading a class file for "All time", as the engine does every
    // `ALLEYCAT_RANKINGS_HISTORY_RELOAD_MS` for each class whose file
    // changed: a stretch-run class (16,667 racers) 60 s in, a million bests.
    // Read directly, and through a `ClassHistory` as before, in one run.
    let mut stretch_class = ClassHistory::default();
    for second in 1..=60u16 {
        for racer in 0..16_667u64 {
            stretch_class.merge(Second(second), RacerId(racer), output_of(racer, second));
        }
    }
    let gz = stretch_class.to_gzip(6);
    group.throughput(Throughput::Elements(stretch_class.len() as u64));
    group.sample_size(10);
    group.bench_function("all_time_from_class_file_of_16667_racers/direct", |b| {
        b.iter(|| AllTime::from_gzip(black_box(&gz)).unwrap())
    });
    group.bench_function(
        "all_time_from_class_file_of_16667_racers/through_class_history",
        |b| b.iter(|| AllTime::from_history(&ClassHistory::from_gzip(black_box(&gz)).unwrap())),
    );
    group.finish();
}

fn transformer(c: &mut Criterion) {
    // 8 MiB of delivery lines, as the transformer buffers them while it
    // reads a backlog (`ALLEYCAT_BUFFER_CATCH_UP_BYTES`).
    let mut lines = Vec::with_capacity(8 << 20);
    'fill: for second in 1..=300u16 {
        for racer in 0..100_000u64 {
            if lines.len() >= 8 << 20 {
                break 'fill;
            }
            let mut t = telemetry(racer, second);
            t.device_timestamp = 1_700_000_000_000 + u64::from(second) * 1000 + racer % 1000;
            DeliveryRecord::new(&t).write_line(&mut lines);
        }
    }
    let mut group = c.benchmark_group("transformer");
    group.throughput(Throughput::Bytes(lines.len() as u64));
    group.bench_function("gzip_8_mib_delivery_object", |b| {
        b.iter(|| {
            alleycat_core::codec::gzip(black_box(&lines), alleycat_core::codec::DELIVERY_LEVEL)
        })
    });
    group.finish();
}

fn telemetry(racer: u64, second: u16) -> Telemetry {
    Telemetry {
        uuid: None,
        event: Event::Update,
        device_timestamp: 0,
        second: Second(second),
        race_id: RaceId(1),
        name: format!("Racer {racer}"),
        racer_id: RacerId(racer),
        class_id: ClassId(1),
        cadence: 30.0 + (racer % 60) as f64,
        resistance: 33.0 + (u64::from(second) % 50) as f64,
    }
}

criterion_group!(benches, ingest, history, rankings, transformer);
criterion_main!(benches);
