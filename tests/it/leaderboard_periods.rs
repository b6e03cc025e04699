//! Daily, weekly and monthly leaderboards over real HTTP, on a clock the
//! test sets: races ridden either side of midnight UTC, of the end of an
//! ISO week and of a month land on the right boards, and a race that ends
//! at midnight counts for the day it was ridden though some of its finals
//! arrive after it; past periods stay queryable; the current period follows
//! the clock; two rankings processes writing at once and another process
//! over the same store agree. Every answer is checked against the
//! contract's schema.

use crate::contract::Schema;
use alleycat_core::{ClassId, RaceId, RacerId};
use alleycat_rankings::race::RaceResult;
use alleycat_rankings::store::{Final, ResultsStore};
use alleycat_rankings::{AppState, app};
use alleycat_storage::object_store::fs::FsStore;
use alleycat_storage::{DisqualificationList, ObjectStore};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const CLASS: u8 = 2;

fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap()
        .timestamp_millis()
}

/// One racer's final result in race `race` (300 seconds ridden), its final
/// arriving at `finished`.
fn finished(race: u64, racer: u64, output: f64, finished: &str) -> Final {
    Final {
        class: ClassId(CLASS),
        race: RaceId(race),
        result: RaceResult {
            racer_id: RacerId(racer),
            name: format!("R{racer}"),
            output,
            average: output,
            best: output,
            seconds: 300,
        },
        finished_ms: ms(finished),
    }
}

/// A rankings API over the results kept in `dir`, on a real loopback
/// socket, whose clock reads `clock`.
struct Rankings {
    base: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Rankings {
    async fn start(dir: &Path, clock: Arc<AtomicI64>) -> Rankings {
        let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir).unwrap());
        let state = AppState {
            viewers: Arc::default(),
            results: ResultsStore::new(Arc::clone(&store)),
            shutdown: CancellationToken::new(),
            ws_idle_timeout: Duration::from_secs(60),
            leaderboards: Arc::default(),
            disqualifications: DisqualificationList::watch(store, Duration::from_secs(3600)),
            class_files: Arc::default(),
            clock: Arc::new(move || clock.load(Ordering::Relaxed)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                axum::serve(listener, app(state))
                    .with_graceful_shutdown(stop.cancelled_owned())
                    .await
                    .unwrap();
            }
        });
        Rankings {
            base: format!("http://{addr}"),
            stop,
            server,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.server)
            .await
            .expect("stops")
            .unwrap();
    }

    /// Status and body of `GET /v1/leaderboard?classId=CLASS&<query>`.
    async fn board(&self, query: &str) -> (u16, Value) {
        let response = reqwest::get(format!(
            "{}/v1/leaderboard?classId={CLASS}&{query}",
            self.base
        ))
        .await
        .unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// `(racerId, output, raceId)` of a board, best first, checked against
    /// the schema, and its `from` and `to`.
    async fn entries(&self, query: &str) -> (Vec<(u64, f64, u64)>, Value, Value) {
        let (status, body) = self.board(query).await;
        assert_eq!(status, 200, "{query}: {body}");
        Schema::load("leaderboard").assert_valid(&body);
        let entries: Vec<(u64, f64, u64)> = body["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["racerId"].as_u64().unwrap(),
                    e["output"].as_f64().unwrap(),
                    e["raceId"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(body["total"].as_u64(), Some(entries.len() as u64), "{body}");
        (entries, body["from"].clone(), body["to"].clone())
    }
}

/// Five-minute races around a Sunday midnight UTC and a Monday midnight
/// that ends a month (2026-11-29 is a Sunday; 2026-11-30, a Monday, ends
/// November):
/// - race 1, Sunday 23:50-23:55: racer 1 at 100, racer 2 at 50;
/// - race 2, Monday 00:00-00:05 (new day, new ISO week, same month):
///   racer 1 at 80, racer 3 at 90;
/// - race 3, Monday 23:55-24:00, the last of November: racer 3 at 95, its
///   final 10 ms before midnight; racer 4 at 60, its final 20 ms after;
/// - race 4, Tuesday 00:00-00:05 (1 December, same week): racer 2 at 120.
fn races() -> Vec<Final> {
    vec![
        finished(1, 1, 100.0, "2026-11-29T23:55:00Z"),
        finished(1, 2, 50.0, "2026-11-29T23:55:00Z"),
        finished(2, 1, 80.0, "2026-11-30T00:05:00Z"),
        finished(2, 3, 90.0, "2026-11-30T00:05:00Z"),
        finished(3, 3, 95.0, "2026-11-30T23:59:59.990Z"),
        finished(3, 4, 60.0, "2026-12-01T00:00:00.020Z"),
        finished(4, 2, 120.0, "2026-12-01T00:05:00Z"),
    ]
}

#[tokio::test]
async fn races_land_on_their_day_week_and_month_boards() {
    let dir = tempfile::tempdir().unwrap();
    // Two rankings processes (two stores over one directory) record the
    // races at the same time, each every other final, one at a time.
    let finals = races();
    let writers: Vec<_> = (0..2)
        .map(|writer| {
            let store = ResultsStore::new(Arc::new(FsStore::open(dir.path()).unwrap()));
            let mine: Vec<Final> = finals.iter().skip(writer).step_by(2).cloned().collect();
            tokio::spawn(async move {
                for last in mine {
                    store.record(&[last]).await.unwrap();
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap();
    }

    let clock = Arc::new(AtomicI64::new(ms("2026-12-01T12:00:00Z")));
    let rankings = Rankings::start(dir.path(), Arc::clone(&clock)).await;

    // Today (Tuesday 1 December): only race 4.
    let (today, from, to) = rankings.entries("period=day").await;
    assert_eq!(today, [(2, 120.0, 4)]);
    assert_eq!(
        (from.as_str(), to.as_str()),
        (Some("2026-12-01"), Some("2026-12-01"))
    );
    // Monday: racer 3's best of the day is race 3's 95; racer 1's is 80,
    // not Sunday's 100; racer 4 rode race 3 on Monday, though its final
    // arrived on Tuesday.
    let (monday, ..) = rankings.entries("period=day&at=2026-11-30").await;
    assert_eq!(monday, [(3, 95.0, 3), (1, 80.0, 2), (4, 60.0, 3)]);
    let (sunday, ..) = rankings.entries("period=day&at=2026-11-29").await;
    assert_eq!(sunday, [(1, 100.0, 1), (2, 50.0, 1)]);
    let (saturday, ..) = rankings.entries("period=day&at=2026-11-28").await;
    assert!(saturday.is_empty(), "a day without races is an empty board");

    // This ISO week (Monday 30 November to Sunday 6 December): races 2-4.
    let (week, from, to) = rankings.entries("period=week").await;
    assert_eq!(
        week,
        [(2, 120.0, 4), (3, 95.0, 3), (1, 80.0, 2), (4, 60.0, 3)]
    );
    assert_eq!(
        (from.as_str(), to.as_str()),
        (Some("2026-11-30"), Some("2026-12-06"))
    );
    // Any day of the week names the same week.
    assert_eq!(rankings.entries("period=week&at=2026-12-06").await.0, week);
    // The week before ended on Sunday: race 1 only.
    let (last_week, from, _) = rankings.entries("period=week&at=2026-11-29").await;
    assert_eq!(last_week, [(1, 100.0, 1), (2, 50.0, 1)]);
    assert_eq!(from.as_str(), Some("2026-11-23"));

    // December so far: race 4; November: races 1-3, each racer's best.
    let (december, from, to) = rankings.entries("period=month").await;
    assert_eq!(december, [(2, 120.0, 4)]);
    assert_eq!(
        (from.as_str(), to.as_str()),
        (Some("2026-12-01"), Some("2026-12-31"))
    );
    let (november, ..) = rankings.entries("period=month&at=2026-11-15").await;
    assert_eq!(
        november,
        [(1, 100.0, 1), (3, 95.0, 3), (4, 60.0, 3), (2, 50.0, 1)]
    );

    // All time, and the default, hold every racer's best; no dates.
    let (all, from, to) = rankings.entries("period=all").await;
    assert_eq!(
        all,
        [(2, 120.0, 4), (1, 100.0, 1), (3, 95.0, 3), (4, 60.0, 3)]
    );
    assert!(from.is_null() && to.is_null());
    assert_eq!(rankings.entries("").await.0, all);
    assert_eq!(
        rankings.entries("at=2020-01-01").await.0,
        all,
        "at means nothing for all time"
    );

    // Paging, around and percentiles work on a period's board as on all
    // time's.
    let (_, page) = rankings.board("period=month&at=2026-11-01&limit=2").await;
    assert_eq!(page["total"], 4);
    assert_eq!(page["next"], "2");
    assert_eq!(page["entries"][0]["percentile"], 75.0);
    assert_eq!(page["entries"][1]["percentile"], 50.0);
    let (_, page) = rankings
        .board("period=month&at=2026-11-01&limit=2&cursor=2")
        .await;
    assert_eq!(page["entries"][0]["racerId"], 4);
    assert_eq!(page["entries"][0]["percentile"], 25.0);
    assert_eq!(page["entries"][1]["racerId"], 2);
    assert_eq!(page["entries"][1]["percentile"], 0.0);
    let (_, around) = rankings
        .board("period=day&at=2026-11-30&around=1&limit=1")
        .await;
    assert_eq!(around["entries"][0]["rank"], 2);
    let (status, missing) = rankings.board("period=day&around=1").await;
    assert_eq!(status, 404, "racer 1 did not race today: {missing}");

    // Midnight passes: "today" and "this week" follow the clock, and
    // yesterday stays queryable.
    clock.store(ms("2026-12-02T00:00:00Z"), Ordering::Relaxed);
    assert!(
        rankings.entries("period=day").await.0.is_empty(),
        "a new day"
    );
    assert_eq!(rankings.entries("period=week").await.0, week);
    assert_eq!(rankings.entries("period=day&at=2026-12-01").await.0, today);
    clock.store(ms("2026-12-07T00:00:00Z"), Ordering::Relaxed);
    assert!(
        rankings.entries("period=week").await.0.is_empty(),
        "a new week"
    );

    // Another process over the same store (as after a restart) answers the
    // same.
    rankings.stop().await;
    let rankings = Rankings::start(dir.path(), clock).await;
    assert_eq!(rankings.entries("period=day&at=2026-11-30").await.0, monday);
    assert_eq!(rankings.entries("period=week&at=2026-12-01").await.0, week);
    assert_eq!(
        rankings.entries("period=month&at=2026-11-30").await.0,
        november
    );
    rankings.stop().await;
}

#[tokio::test]
async fn a_new_year_splits_months_but_not_its_iso_week() {
    let dir = tempfile::tempdir().unwrap();
    let store = ResultsStore::new(Arc::new(FsStore::open(dir.path()).unwrap()));
    // Thursday 31 December 2026 and Sunday 3 January 2027 are both in ISO
    // week 53 of 2026; Monday 4 January starts week 1 of 2027.
    store
        .record(&[
            finished(10, 1, 70.0, "2026-12-31T23:59:59Z"),
            finished(11, 2, 60.0, "2027-01-04T00:00:00.050Z"),
            finished(12, 3, 50.0, "2027-01-04T00:05:00Z"),
        ])
        .await
        .unwrap();
    let clock = Arc::new(AtomicI64::new(ms("2027-01-04T08:00:00Z")));
    let rankings = Rankings::start(dir.path(), clock).await;
    let (week, from, to) = rankings.entries("period=week&at=2027-01-01").await;
    assert_eq!(week, [(1, 70.0, 10), (2, 60.0, 11)]);
    assert_eq!(
        (from.as_str(), to.as_str()),
        (Some("2026-12-28"), Some("2027-01-03"))
    );
    assert_eq!(rankings.entries("period=week").await.0, [(3, 50.0, 12)]);
    assert_eq!(
        rankings.entries("period=month&at=2026-12-31").await.0,
        [(1, 70.0, 10)]
    );
    assert_eq!(
        rankings.entries("period=month").await.0,
        [(2, 60.0, 11), (3, 50.0, 12)]
    );
    rankings.stop().await;
}

#[tokio::test]
async fn a_bad_period_or_date_is_a_400_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(AtomicI64::new(ms("2026-12-01T12:00:00Z")));
    let rankings = Rankings::start(dir.path(), clock).await;
    for (query, message) in [
        (
            "period=year",
            r#"period must be day, week, month or all, got "year""#,
        ),
        (
            "period=Day",
            r#"period must be day, week, month or all, got "Day""#,
        ),
        (
            "period=",
            r#"period must be day, week, month or all, got """#,
        ),
        (
            "period=day&at=2026-13-01",
            r#"at must be a date YYYY-MM-DD in the years 1970 to 9998, got "2026-13-01""#,
        ),
        (
            "period=day&at=2026-02-29",
            r#"at must be a date YYYY-MM-DD in the years 1970 to 9998, got "2026-02-29""#,
        ),
        (
            "period=week&at=yesterday",
            r#"at must be a date YYYY-MM-DD in the years 1970 to 9998, got "yesterday""#,
        ),
        (
            "period=day&at=2026-1-5",
            r#"at must be a date YYYY-MM-DD in the years 1970 to 9998, got "2026-1-5""#,
        ),
        (
            "period=week&at=0001-01-01",
            r#"at must be a date YYYY-MM-DD in the years 1970 to 9998, got "0001-01-01""#,
        ),
        (
            "period=day&at=2026-+1-+5",
            r#"at must be a date YYYY-MM-DD in the years 1970 to 9998, got "2026- 1- 5""#,
        ),
        (
            "period=day&at=%2B12026-01-01",
            r#"at must be a date YYYY-MM-DD in the years 1970 to 9998, got "+12026-01-01""#,
        ),
    ] {
        let (status, body) = rankings.board(query).await;
        assert_eq!(status, 400, "{query}");
        assert_eq!(body["error"], message, "{query}");
        Schema::load("error").assert_valid(&body);
    }
    rankings.stop().await;
}
