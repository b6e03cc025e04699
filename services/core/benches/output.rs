//! The output formula per record, and writing numbers as JavaScript does:
//! `cargo bench -p alleycat-core --bench output`.
//!
//! Inputs are the realistic range (cadence 30.00-90.00 with 2 decimals,
//! resistance 33.0-86.0 with 1), where about a tenth of the values sit on
//! a rounding tie of the 4th decimal.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn inputs() -> Vec<(f64, f64)> {
    let mut rng = fastrand::Rng::with_seed(7);
    (0..1024)
        .map(|_| {
            (
                f64::from(rng.u32(3000..=9000)) / 100.0,
                f64::from(rng.u32(330..=860)) / 10.0,
            )
        })
        .collect()
}

fn output(c: &mut Criterion) {
    let inputs = inputs();
    let mut group = c.benchmark_group("output");
    group.throughput(Throughput::Elements(inputs.len() as u64));
    group.bench_function("realistic_1024", |b| {
        b.iter(|| {
            black_box(&inputs)
                .iter()
                .map(|&(cadence, resistance)| alleycat_core::output(cadence, resistance))
                .sum::<f64>()
        })
    });
    // The formula before it matched JavaScript (it rounded the double, not
    // its text), for the ratio in one run.
    group.bench_function("previous_formula_realistic_1024", |b| {
        b.iter(|| {
            black_box(&inputs)
                .iter()
                .map(|&(cadence, resistance)| {
                    ((cadence + 35.0) * (resistance + 65.0) * 100.0).round() / 10_000.0
                })
                .sum::<f64>()
        })
    });
    group.finish();

    // Writing numbers: as JSON.stringify does, against serde_json's own
    // formatting (81.0), for the three numbers of every delivery line.
    let outputs: Vec<f64> = inputs
        .iter()
        .flat_map(|&(c, r)| [c, r, alleycat_core::output(c, r)])
        .collect();
    let mut group = c.benchmark_group("write_number");
    group.throughput(Throughput::Elements(outputs.len() as u64));
    let mut buf = Vec::with_capacity(outputs.len() * 24);
    group.bench_function("javascript_3072", |b| {
        b.iter(|| {
            buf.clear();
            for &v in black_box(&outputs) {
                alleycat_core::js_number::write(v, &mut buf);
            }
            buf.len()
        })
    });
    group.bench_function("serde_json_3072", |b| {
        b.iter(|| {
            buf.clear();
            for &v in black_box(&outputs) {
                serde_json::to_writer(&mut buf, &v).unwrap();
            }
            buf.len()
        })
    });
    group.finish();
}

criterion_group!(benches, output);
criterion_main!(benches);
