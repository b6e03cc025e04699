//! The harness's reading of a ranking push, on pushes as the server writes
//! them: at 10,000 viewers it reads some 30,000 a second on the cores the
//! server under test uses, so its cost is taken from the server's figures.
//!   cargo bench -p alleycat-loadtest --bench read_push

use alleycat_core::history::ClassHistory;
use alleycat_core::{ClassId, Event, RaceId, RacerId, Second, Telemetry};
use alleycat_loadtest::push::Push;
use alleycat_rankings::all_time::AllTime;
use alleycat_rankings::push::Snapshot;
use alleycat_rankings::race::Race;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::sync::Arc;

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

/// A viewer's push of a race of `racers` (the stretch run's class size is
/// 16,667) at its 30th second, with its racer's ghost, top 50 as at the
/// defaults.
fn server_push(racers: u64) -> String {
    let mut history = ClassHistory::default();
    for second in 1..=30u16 {
        for racer in 0..racers {
            let t = telemetry(racer, second);
            history.merge(t.second, t.racer_id, t.output() * 0.9);
        }
    }
    let bests = Arc::new(AllTime::from_history(&history));
    let mut race = Race::new(ClassId(1), RaceId(1), Arc::clone(&bests));
    for second in 1..=30u16 {
        for racer in 0..racers {
            race.apply(
                &telemetry(racer, second),
                u64::from(second) * racers + racer,
            );
        }
    }
    let snapshot = Snapshot::new(&race, Some(&bests), 50, 0);
    snapshot
        .for_viewer(Some(RacerId(racers / 2)), None)
        .expect("the racer is riding")
}

fn read_push(c: &mut Criterion) {
    let text = server_push(16_667);
    // The top 50, then the viewer's racer and its neighbours.
    assert_eq!(Push::read(&text).map(|p| p.here_now.len()), Some(55));
    let mut group = c.benchmark_group("read_push");
    group.throughput(Throughput::Bytes(text.len() as u64));
    group.bench_function("race_ghost_and_here_now_racers", |b| {
        b.iter(|| {
            let push = Push::read(std::hint::black_box(&text)).expect("a push");
            (push.second, push.here_now.len())
        })
    });
    group.finish();
}

criterion_group!(benches, read_push);
criterion_main!(benches);
