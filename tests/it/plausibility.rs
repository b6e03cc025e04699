//! Plausible power only: a record whose cadence or resistance is over its
//! limit (`ALLEYCAT_MAX_CADENCE`, 200 rpm by default;
//! `ALLEYCAT_MAX_RESISTANCE`, 100) is refused at ingest with 422 naming the
//! field and the limit, over HTTP and WebSocket; one put straight on the
//! stream by another producer goes to `processing-failed/` with the reason
//! and reaches no class file, race result, leaderboard or push; a limit
//! that makes no sense stops every command at start.
//!
//! The Kinesis test needs the local servers:
//! `eval "$(infra/local/up)"; cargo test --test it plausibility:: -- --include-ignored`.

use crate::common::aws::Aws;
use crate::common::*;
use alleycat_storage::PutRecord;
use aws_sdk_kinesis::primitives::Blob;
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A valid record (racer 1 of race 1, class 1) with `field` set to `value`.
fn with(field: &str, value: f64) -> Value {
    let mut record = race(1, 1, 1, 1, 1)[0][0].json();
    record[field] = json!(value);
    record
}

/// The one problem a refusal names, as (index, field, reason).
fn only_problem(answer: &Value) -> (u64, String, String) {
    let records = answer["records"].as_array().expect("records");
    assert_eq!(records.len(), 1, "{answer}");
    let r = &records[0];
    (
        r["index"].as_u64().unwrap(),
        r["field"].as_str().unwrap().to_owned(),
        r["reason"].as_str().unwrap().to_owned(),
    )
}

fn refusal(field: &str, reason: &str) -> (u64, String, String) {
    (0, field.to_owned(), reason.to_owned())
}

/// Sends `record` as one WebSocket frame; returns the answer frame.
async fn send_frame(ws: &mut Socket, record: &Value) -> Value {
    ws.send(Message::text(record.to_string())).await.unwrap();
    loop {
        let frame = tokio::time::timeout(PATIENCE, ws.next())
            .await
            .expect("an answer in time")
            .expect("the socket stays open")
            .unwrap();
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).unwrap();
        }
    }
}

/// Posts `record` over HTTP and sends it as a WebSocket frame: both take
/// it, or both refuse it with the same single problem.
async fn check_both(
    client: &reqwest::Client,
    base: &str,
    ws: &mut Socket,
    record: &Value,
    refused: Option<(u64, String, String)>,
) {
    let (status, answer) = post_json(client, base, record).await;
    let frame = send_frame(ws, record).await;
    match refused {
        None => {
            assert_eq!((status, &answer), (202, &json!({"accepted": 1})));
            assert_eq!(frame, json!({"type": "ack", "accepted": 1}));
        }
        Some(problem) => {
            assert_eq!(status, 422, "{answer}");
            assert_eq!(only_problem(&answer), problem);
            assert_eq!(
                answer["error"],
                "1 of 1 records is invalid; nothing was accepted"
            );
            assert_eq!(frame["type"], "error", "{frame}");
            assert_eq!(only_problem(&frame), problem);
        }
    }
}

async fn connect(base: &str) -> Socket {
    let url = format!("{}/v1/telemetry/ws", base.replacen("http://", "ws://", 1));
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_refuses_what_is_past_the_default_limits_over_http_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let mut ws = connect(&server.base).await;
    let cases = [
        ("cadence", 200.0, None),
        ("cadence", 0.0, None),
        ("cadence", 200.01, Some("must be at most 200, got 200.01")),
        ("cadence", 1000.0, Some("must be at most 200, got 1000")),
        ("resistance", 100.0, None),
        ("resistance", 100.5, Some("must be at most 100, got 100.5")),
    ];
    for (field, value, reason) in cases {
        let refused = reason.map(|reason| refusal(field, reason));
        check_both(&client, &server.base, &mut ws, &with(field, value), refused).await;
    }
    // A batch with one cheat is refused whole, naming the record.
    let mut batch: Vec<Value> = race(2, 3, 10, 3, 1)[0].iter().map(Sample::json).collect();
    batch[2]["cadence"] = json!(250);
    let (status, answer) = post_json(&client, &server.base, &json!(batch)).await;
    assert_eq!(status, 422);
    assert_eq!(
        only_problem(&answer),
        (2, "cadence".into(), "must be at most 200, got 250".into())
    );
    // Nothing of a refused record or batch counts: class 1 holds the best
    // of the records taken (racer 1, second 1), class 3 nothing.
    let reference = race(1, 1, 1, 1, 1)[0][0];
    let taken = [
        Sample {
            cadence_q: 800, // 200 rpm
            ..reference
        },
        Sample {
            cadence_q: 0,
            ..reference
        },
        Sample {
            resistance_q: 400, // 100
            ..reference
        },
    ];
    wait_for_bests(&server.base, &bests(&taken)).await;
    assert_eq!(fetch_class(&server.base, 3).await, None);
    server.stop().await;
    let delivered = delivered_records(dir.path());
    assert_eq!(delivered.len(), 6, "three taken, each over HTTP and WS");
    assert!(
        delivered.iter().all(
            |r| r["cadence"].as_f64() <= Some(200.0) && r["resistance"].as_f64() <= Some(100.0)
        )
    );
}

/// Starts `alleycat <args>` on `data`, with `env`.
async fn alleycat_on(data: &Path, args: &[&str], env: &[(&str, &str)]) -> Service {
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.push(("ALLEYCAT_DATA_DIR".into(), data.to_str().unwrap().into()));
    spawn_alleycat(args, &env).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_limits_come_from_the_flags_and_variables_of_each_command() {
    let client = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();

    // `alleycat ingest --max-cadence 120.5`: lower than the default.
    let ingest = alleycat_on(
        &dir.path().join("ingest"),
        &["ingest", "--max-cadence", "120.5"],
        &[],
    )
    .await;
    let mut ws = connect(&ingest.base).await;
    for (field, value, reason) in [
        ("cadence", 120.5, None),
        ("cadence", 121.0, Some("must be at most 120.5, got 121")),
        ("resistance", 100.0, None),
        ("resistance", 101.0, Some("must be at most 100, got 101")),
    ] {
        let refused = reason.map(|reason| refusal(field, reason));
        check_both(&client, &ingest.base, &mut ws, &with(field, value), refused).await;
    }
    drop(ws);
    ingest.terminate().await;

    // The all-in-one with ALLEYCAT_MAX_CADENCE raised to the absolute
    // bound and ALLEYCAT_MAX_RESISTANCE lowered.
    let all_in_one = alleycat_on(
        &dir.path().join("all"),
        &[],
        &[
            ("ALLEYCAT_MAX_CADENCE", "1000"),
            ("ALLEYCAT_MAX_RESISTANCE", "60"),
        ],
    )
    .await;
    let mut ws = connect(&all_in_one.base).await;
    for (field, value, reason) in [
        ("cadence", 1000.0, None),
        ("cadence", 1000.5, Some("must be at most 1000, got 1000.5")),
        ("resistance", 60.0, None),
        ("resistance", 60.25, Some("must be at most 60, got 60.25")),
    ] {
        let refused = reason.map(|reason| refusal(field, reason));
        check_both(
            &client,
            &all_in_one.base,
            &mut ws,
            &with(field, value),
            refused,
        )
        .await;
    }
    drop(ws);
    all_in_one.terminate().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_that_makes_no_sense_stops_every_command_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    for command in [None, Some("ingest"), Some("transformer"), Some("rankings")] {
        for (flag, variable, bad) in [
            ("--max-cadence", "ALLEYCAT_MAX_CADENCE", "-5"),
            ("--max-cadence", "ALLEYCAT_MAX_CADENCE", "NaN"),
            ("--max-resistance", "ALLEYCAT_MAX_RESISTANCE", "0"),
            ("--max-resistance", "ALLEYCAT_MAX_RESISTANCE", "1001"),
        ] {
            for by_flag in [true, false] {
                let mut run = alleycat_command();
                run.args(command)
                    .args(["--data-dir", data, "--listen", "127.0.0.1:0"])
                    .kill_on_drop(true);
                if by_flag {
                    run.args([flag, bad]);
                } else {
                    run.env(variable, bad);
                }
                let out = tokio::time::timeout(PATIENCE, run.output())
                    .await
                    .expect("exits at once")
                    .unwrap();
                let stderr = String::from_utf8_lossy(&out.stderr);
                let what = format!("{command:?} {flag} {bad} (flag: {by_flag})");
                assert!(!out.status.success(), "{what} started");
                assert!(
                    stderr.contains(flag)
                        && stderr.contains("greater than 0 and at most 1000")
                        && stderr.contains(bad),
                    "{what}: {stderr}"
                );
            }
        }
    }
}

/// A race on the stream from another producer, checked with a cadence
/// limit of 150: honest racers 901 to 903 of class 2 (8 seconds), plus
/// records no honest bike sends: racer 666 at cadence 180 every second
/// (taken by the default limit, not by 150), racer 667 at resistance 100.5
/// every second, and racer 901 at cadence 250 in its second 5 (instead of
/// its honest record).
struct Cheats {
    honest: Vec<Sample>,
    cheats: Vec<(Value, String)>,
}

const RACE: u64 = 4242;
const CLASS: u8 = 2;
const CHEATERS: [u64; 2] = [666, 667];

impl Cheats {
    fn new() -> Cheats {
        let seconds = race(RACE, CLASS, 901, 3, 8);
        let mut honest = Vec::new();
        let mut cheats = Vec::new();
        for samples in &seconds {
            for sample in samples {
                if sample.racer == 901 && sample.second == 5 {
                    let mut cheat = sample.json();
                    cheat["cadence"] = json!(250);
                    let reason = "cadence must be at most 150, got 250".to_owned();
                    cheats.push((cheat, reason));
                } else {
                    honest.push(*sample);
                }
            }
            let first = samples[0];
            let fast = Sample {
                racer: 666,
                cadence_q: 720, // 180 rpm
                ..first
            };
            let reason = "cadence must be at most 150, got 180".to_owned();
            cheats.push((fast.json(), reason));
            let heavy = Sample {
                racer: 667,
                ..first
            };
            let mut heavy = heavy.json();
            heavy["resistance"] = json!(100.5);
            let reason = "resistance must be at most 100, got 100.5".to_owned();
            cheats.push((heavy, reason));
        }
        Cheats { honest, cheats }
    }

    /// Racer 901's best output in the race: the highest of its honest
    /// seconds (the cheat's would be far higher).
    fn best_of_901(&self) -> f64 {
        self.honest
            .iter()
            .filter(|s| s.racer == 901)
            .map(Sample::expected_output)
            .fold(f64::MIN, f64::max)
    }

    /// Whether a push, result or leaderboard entry could only come from a
    /// cheat: a cheater's, or an output higher than any honest one.
    fn shows_a_cheat(&self, entry: &Value) -> bool {
        let highest = self
            .honest
            .iter()
            .map(Sample::expected_output)
            .fold(f64::MIN, f64::max);
        let racer = entry["racerId"].as_u64().unwrap();
        let too_high = ["output", "best", "personalBest"]
            .iter()
            .any(|key| entry[*key].as_f64().is_some_and(|v| v > highest));
        CHEATERS.contains(&racer) || too_high
    }

    /// The `processing-failed/` lines hold exactly the cheats, each with
    /// its reason.
    fn assert_set_aside(&self, failed: &[Value]) {
        let mut got: Vec<(Value, String)> = failed
            .iter()
            .map(|line| {
                assert_eq!(line["errorCode"], "InvalidRecord");
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(line["rawData"].as_str().unwrap())
                    .unwrap();
                (
                    serde_json::from_slice(&raw).unwrap(),
                    line["errorMessage"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        let mut want = self.cheats.clone();
        let key = |(record, reason): &(Value, String)| {
            (
                record["racerId"].as_u64(),
                record["second"].as_u64(),
                reason.clone(),
            )
        };
        got.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(got, want);
    }

    /// No delivered line is a cheat; every honest record is delivered.
    fn assert_delivered(&self, lines: &[Value]) {
        let got: BTreeSet<(u64, u64)> = lines
            .iter()
            .map(|l| {
                (
                    l["racerId"].as_u64().unwrap(),
                    l["second"].as_u64().unwrap(),
                )
            })
            .collect();
        let want: BTreeSet<(u64, u64)> = self
            .honest
            .iter()
            .map(|s| (s.racer, u64::from(s.second)))
            .collect();
        assert_eq!(lines.len(), self.honest.len());
        assert_eq!(got, want);
    }

    /// The race's results (`/v1/races/{RACE}`) and the class leaderboard
    /// from `base` hold the honest racers only, racer 901 at its honest
    /// best.
    async fn assert_results(&self, base: &str) {
        let client = reqwest::Client::new();
        let get = |url: String| {
            let client = client.clone();
            async move {
                let response = client.get(url).send().await.ok()?;
                (response.status() == 200).then_some(())?;
                response.json::<Value>().await.ok()
            }
        };
        let results = eventually("the race's results", || async {
            let race = get(format!("{base}/v1/races/{RACE}")).await?;
            let class = race["classes"]
                .as_array()?
                .iter()
                .find(|c| c["classId"] == CLASS)?
                .clone();
            (class["results"].as_array()?.len() >= 3).then_some(class["results"].clone())
        })
        .await;
        let racers: Vec<u64> = results
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["racerId"].as_u64().unwrap())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        assert_eq!(racers, [901, 902, 903], "{results}");
        let of_901 = results
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["racerId"] == 901)
            .unwrap();
        assert_eq!(
            of_901["best"].as_f64(),
            Some(self.best_of_901()),
            "{of_901}"
        );
        assert!(
            !results
                .as_array()
                .unwrap()
                .iter()
                .any(|r| self.shows_a_cheat(r))
        );

        let board = eventually("the class leaderboard", || async {
            let board = get(format!("{base}/v1/leaderboard?classId={CLASS}")).await?;
            (board["entries"].as_array()?.len() >= 3).then_some(board)
        })
        .await;
        let entries = board["entries"].as_array().unwrap();
        assert_eq!(entries.len(), 3, "{board}");
        assert!(!entries.iter().any(|e| self.shows_a_cheat(e)), "{board}");
    }
}

/// Pushes to a viewer of class [`CLASS`] until one of the race's last
/// second (or none for a while); none may come from a cheat.
async fn assert_pushes(cheats: &Cheats, viewer: &mut Socket) {
    let mut pushes = 0;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no push of the last second"
        );
        let frame = match tokio::time::timeout(Duration::from_secs(5), viewer.next()).await {
            Err(_) => break,
            Ok(frame) => frame.expect("the viewer socket stays open").unwrap(),
        };
        let Message::Text(text) = frame else { continue };
        let push: Value = serde_json::from_str(&text).unwrap();
        if push["raceId"] != RACE {
            continue;
        }
        pushes += 1;
        for list in ["hereNow", "allTime"] {
            for entry in push[list].as_array().unwrap() {
                assert!(!cheats.shows_a_cheat(entry), "{list}: {entry} in {push}");
            }
        }
        if push["second"] == 8 {
            break;
        }
    }
    assert!(pushes > 0, "the viewer saw the race");
}

fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            files.extend(files_under(&path));
        } else {
            files.push(path);
        }
    }
    files
}

fn gunzip_lines(gz: &[u8]) -> Vec<Value> {
    use std::io::Read as _;
    let mut text = String::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// The lines of the embedded delivery store's objects: `processing-failed/`
/// ones if `failed`, else delivery ones.
fn delivery_lines(data: &Path, failed: bool) -> Vec<Value> {
    let delivery = data.join("delivery");
    let failed_dir = delivery.join("processing-failed");
    files_under(&delivery)
        .into_iter()
        .filter(|f| f.extension().is_some_and(|e| e == "gz"))
        .filter(|f| f.starts_with(&failed_dir) == failed)
        .flat_map(|f| gunzip_lines(&std::fs::read(f).unwrap()))
        .collect()
}

fn delivered_records(data: &Path) -> Vec<Value> {
    delivery_lines(data, false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_put_straight_on_the_embedded_stream_reach_no_class_file_result_or_push() {
    let dir = tempfile::tempdir().unwrap();
    let cheats = Cheats::new();
    // Another producer wrote the cheats on the stream before the services
    // started: by the time the honest race is in, they were all read.
    {
        let stream =
            alleycat_storage::stream::embedded::EmbeddedStream::open(&dir.path().join("stream"))
                .unwrap();
        let puts = cheats
            .cheats
            .iter()
            .map(|(record, _)| PutRecord {
                partition_key: record["racerId"].to_string(),
                data: serde_json::to_vec(record).unwrap().into(),
                validated: None,
            })
            .collect();
        alleycat_storage::Stream::put_records(&stream, puts)
            .await
            .unwrap();
        // Dropped here: the services open the stream next.
    }
    let mut config = test_config(dir.path());
    config.server.sensor_limits.max_cadence = 150.0;
    let server = Server::start_with(config).await;
    let (mut viewer, _) = tokio_tungstenite::connect_async(
        server.ws_url(&format!("/v1/rankings/ws?classId={CLASS}&raceId={RACE}")),
    )
    .await
    .unwrap();
    let client = reqwest::Client::new();
    for second in 1..=8 {
        let batch: Vec<Value> = cheats
            .honest
            .iter()
            .filter(|s| s.second == second)
            .map(Sample::json)
            .collect();
        let (status, answer) = post_json(&client, &server.base, &json!(batch)).await;
        assert_eq!(status, 202, "{answer}");
    }
    wait_for_bests(&server.base, &bests(&cheats.honest)).await;
    cheats.assert_results(&server.base).await;
    assert_pushes(&cheats, &mut viewer).await;
    server.stop().await;
    cheats.assert_set_aside(&delivery_lines(dir.path(), true));
    cheats.assert_delivered(&delivered_records(dir.path()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn records_put_straight_on_kinesis_reach_no_class_file_result_or_push() {
    let aws = Aws::fresh("plausible", 1).await;
    let env = aws.env();
    // Each service its own process, the limit set by flag or variable.
    let mut lower = env.clone();
    lower.push(("ALLEYCAT_MAX_CADENCE".into(), "150".into()));
    let ingest = spawn_alleycat(&["ingest", "--max-cadence", "150"], &env).await;
    let _transformer = spawn_alleycat(&["transformer", "--max-cadence", "150"], &env).await;
    let _history = spawn_alleycat(&["history"], &env).await;
    let rankings = spawn_alleycat(&["rankings"], &lower).await;
    let url = format!(
        "{}/v1/rankings/ws?classId={CLASS}&raceId={RACE}",
        rankings.base.replacen("http://", "ws://", 1)
    );
    let (mut viewer, _) = tokio_tungstenite::connect_async(url).await.unwrap();

    // Ingest refuses a cheat by the same rule and limit.
    let cheats = Cheats::new();
    let client = reqwest::Client::new();
    let (status, answer) = post_json(&client, &ingest.base, &cheats.cheats[0].0).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(
        only_problem(&answer),
        refusal("cadence", "must be at most 150, got 180")
    );

    // Another producer puts the original format straight on the stream:
    // the cheats, then the honest race (one shard: in that order).
    let put = |records: Vec<Value>| {
        let entries = records
            .iter()
            .map(|record| {
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .partition_key(format!("{:016x}", fastrand::u64(..)))
                    .data(Blob::new(serde_json::to_vec(record).unwrap()))
                    .build()
                    .unwrap()
            })
            .collect();
        let request = aws
            .kinesis
            .put_records()
            .stream_name(&aws.stream)
            .set_records(Some(entries));
        async move {
            let put = request.send().await.unwrap();
            assert_eq!(put.failed_record_count, Some(0));
        }
    };
    put(cheats.cheats.iter().map(|(r, _)| r.clone()).collect()).await;
    for second in 1..=8 {
        put(cheats
            .honest
            .iter()
            .filter(|s| s.second == second)
            .map(Sample::json)
            .collect())
        .await;
    }

    aws.wait_for_bests(&bests(&cheats.honest)).await;
    cheats.assert_results(&rankings.base).await;
    assert_pushes(&cheats, &mut viewer).await;
    cheats.assert_delivered(&aws.delivered_lines().await);
    let failed = eventually("the cheats in processing-failed/", || async {
        let mut lines = Vec::new();
        for key in aws.delivery_keys().await {
            if !key.starts_with("processing-failed/") {
                continue;
            }
            let (_, gz) = aws.object(&aws.delivery, &key).await?;
            lines.extend(gunzip_lines(&gz));
        }
        (lines.len() >= cheats.cheats.len()).then_some(lines)
    })
    .await;
    cheats.assert_set_aside(&failed);
}
