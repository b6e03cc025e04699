//! The frontend contract: every schema in `frontend-contract/` accepts its
//! examples and, above all, what the services really send.

use crate::common::*;
use alleycat_storage::PutRecord;
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

fn contract_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("frontend-contract")
}

pub(crate) struct Schema {
    name: &'static str,
    validator: jsonschema::Validator,
}

impl Schema {
    pub(crate) fn load(name: &'static str) -> Schema {
        let text =
            std::fs::read_to_string(contract_dir().join(format!("{name}.schema.json"))).unwrap();
        let schema: Value = serde_json::from_str(&text).unwrap();
        let validator =
            jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{name}: {e}"));
        Schema { name, validator }
    }

    #[track_caller]
    pub(crate) fn assert_valid(&self, instance: &Value) {
        let errors: Vec<String> = self
            .validator
            .iter_errors(instance)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{} rejects {instance}: {errors:?}",
            self.name
        );
    }

    #[track_caller]
    fn assert_invalid(&self, instance: &Value) {
        assert!(
            !self.validator.is_valid(instance),
            "{} accepts {instance}",
            self.name
        );
    }
}

fn read_examples(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(contract_dir().join("examples").join(file)).unwrap();
    if file.ends_with(".ndjson") {
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    } else {
        vec![serde_json::from_str(&text).unwrap()]
    }
}

#[test]
fn every_example_matches_its_schema() {
    for (schema, files) in [
        (
            "telemetry",
            &[
                "telemetry-update.json",
                "telemetry-final.json",
                "telemetry-batch.ndjson",
            ][..],
        ),
        ("telemetry-batch", &["telemetry-batch.json"]),
        ("ingest-accepted", &["ingest-accepted.json"]),
        ("ingest-error", &["ingest-error.json"]),
        ("class-history", &["class-history.json"]),
        ("original-races", &["original-races.json"]),
        ("original-leaderboard", &["original-leaderboard.json"]),
        ("racer-bests", &["racer-bests.json"]),
        ("readiness", &["readiness.ndjson"]),
        ("disqualification", &["disqualification.ndjson"]),
        ("delivery-record", &["delivery-record.ndjson"]),
        (
            "processing-failed-record",
            &["processing-failed-record.ndjson"],
        ),
    ] {
        let schema = Schema::load(schema);
        for file in files {
            for example in read_examples(file) {
                schema.assert_valid(&example);
            }
        }
    }
}

#[test]
fn the_schemas_refuse_what_the_services_refuse() {
    let telemetry = Schema::load("telemetry");
    let valid = read_examples("telemetry-update.json").remove(0);
    for (field, bad) in [
        ("classId", json!(9)),
        ("second", json!(0)),
        ("racerId", json!(-1)),
        ("cadence", json!(1001)),
        ("event", json!("start")),
    ] {
        let mut v = valid.clone();
        v[field] = bad;
        telemetry.assert_invalid(&v);
    }
    // The sensors' limits at the services' defaults: the limit itself is
    // taken, a hair above it is refused, by the schemas and by the rules.
    let batch = Schema::load("telemetry-batch");
    let limits = alleycat_core::validate::SensorLimits::DEFAULT;
    for (field, max) in [
        ("cadence", limits.max_cadence()),
        ("resistance", limits.max_resistance()),
    ] {
        for (value, taken) in [(max, true), (max + 0.01, false), (1000.0, false)] {
            let mut v = valid.clone();
            v[field] = json!(value);
            let by_rules = alleycat_core::validate::validate_value(&v).is_ok();
            assert_eq!(by_rules, taken, "{field} {value}");
            if taken {
                telemetry.assert_valid(&v);
                batch.assert_valid(&json!([v]));
            } else {
                telemetry.assert_invalid(&v);
                batch.assert_invalid(&json!([v]));
            }
        }
    }
    let history = Schema::load("class-history");
    history.assert_invalid(&json!({"0": {"1": 1.0}}));
    history.assert_invalid(&json!({"1": {"01": 1.0}}));
    let readiness = Schema::load("readiness");
    readiness.assert_invalid(&json!({"status": "not ready"}));
    readiness.assert_invalid(&json!({"status": "ok"}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_answers_frames_class_files_and_delivery_lines_match_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let telemetry = Schema::load("telemetry");
    let accepted = Schema::load("ingest-accepted");
    let error = Schema::load("ingest-error");

    let samples = race(77, 2, 40, 5, 10);
    for sample in samples.iter().flatten() {
        telemetry.assert_valid(&sample.json());
    }
    let body = Value::Array(samples.iter().flatten().map(Sample::json).collect());
    let (status, answer) = post_json(&client, &server.base, &body).await;
    assert_eq!(status, 202);
    accepted.assert_valid(&answer);

    let mut bad = samples[0][0].json();
    bad["classId"] = json!("one");
    bad.as_object_mut().unwrap().remove("name");
    for (content_type, body) in [
        (
            "application/json",
            serde_json::to_vec(&json!([samples[0][0].json(), bad])).unwrap(),
        ),
        ("application/json", b"{oops".to_vec()),
        ("application/x-ndjson", b"{}\n[1\n".to_vec()),
        ("application/json", b"[]".to_vec()),
        ("text/plain", b"hi".to_vec()),
        ("application/json", vec![b' '; 2 << 20]),
    ] {
        let (status, answer) = post_raw(&client, &server.base, content_type, body).await;
        assert!((400..500).contains(&status));
        error.assert_valid(&answer);
    }

    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/telemetry/ws"))
        .await
        .unwrap();
    ws.send(Message::text(samples[1][0].json().to_string()))
        .await
        .unwrap();
    ws.send(Message::text(bad.to_string())).await.unwrap();
    for schema in [&accepted, &error] {
        let frame = ws.next().await.unwrap().unwrap();
        schema.assert_valid(&serde_json::from_str(frame.to_text().unwrap()).unwrap());
    }

    wait_for_bests(&server.base, &bests(samples.iter().flatten())).await;
    let response = reqwest::get(format!("{}/history/class-2.gz", server.base))
        .await
        .unwrap();
    Schema::load("class-history")
        .assert_valid(&decode_class_file(&response.bytes().await.unwrap()));
    server.stop().await;

    let delivery = Schema::load("delivery-record");
    let mut lines = 0;
    for object in files_under(&dir.path().join("delivery")) {
        for line in gunzip_lines(&object) {
            delivery.assert_valid(&line);
            lines += 1;
        }
    }
    assert_eq!(lines, 51, "every accepted record delivered once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_fail_processing_go_to_processing_failed_in_the_contract_shape() {
    // A producer other than our ingest (on Kinesis, anyone with access) can
    // put anything on the stream; the transformer must set it aside.
    let dir = tempfile::tempdir().unwrap();
    let storage = test_config(dir.path()).storage;
    let stream = storage.open_stream().await.unwrap();
    let store = storage.open_delivery_store().await.unwrap();
    let good = race(5, 3, 1, 1, 1)[0][0].json().to_string();
    let raw = [
        good.as_str(),
        "{\"racerId\": 1, \"classId\": 9}",
        "\u{1}binary junk",
    ];
    stream
        .put_records(
            raw.iter()
                .map(|r| PutRecord {
                    partition_key: "1".into(),
                    data: r.as_bytes().to_vec().into(),
                    validated: None,
                })
                .collect(),
        )
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let pipeline = tokio::spawn(alleycat_transformer::run_pipeline(
        stream,
        store,
        alleycat_transformer::TransformerArgs {
            buffer_bytes: std::num::NonZeroUsize::new(1 << 20).unwrap(),
            buffer_catch_up_bytes: std::num::NonZeroUsize::new(1 << 20).unwrap(),
            buffer_interval: Duration::from_millis(100),
            buffer_idle: Duration::ZERO,
        },
        alleycat_core::validate::SensorLimits::DEFAULT,
        stop.clone(),
    ));
    let failed_dir = dir.path().join("delivery").join("processing-failed");
    eventually("a processing-failed object", || async {
        (!files_under(&failed_dir).is_empty()).then_some(())
    })
    .await;
    stop.cancel();
    pipeline.await.unwrap().unwrap();

    let schema = Schema::load("processing-failed-record");
    let failed: Vec<Value> = files_under(&failed_dir)
        .iter()
        .flat_map(|f| gunzip_lines(f))
        .collect();
    assert_eq!(failed.len(), 2);
    for (record, original) in failed.iter().zip(&raw[1..]) {
        schema.assert_valid(record);
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(record["rawData"].as_str().unwrap())
            .unwrap();
        assert_eq!(bytes, original.as_bytes());
    }
    assert!(
        failed[0]["errorMessage"]
            .as_str()
            .unwrap()
            .contains("classId"),
        "{}",
        failed[0]
    );
    let delivered: Vec<Value> = files_under(&dir.path().join("delivery"))
        .iter()
        .filter(|p| !p.starts_with(&failed_dir))
        .flat_map(|f| gunzip_lines(f))
        .collect();
    assert_eq!(delivered.len(), 1, "the valid record is delivered");
}

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
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
    files.sort();
    files
}

fn gunzip_lines(path: &Path) -> Vec<Value> {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rankings_pushes_results_leaderboards_and_errors_match_the_contract() {
    use futures_util::StreamExt as _;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let (mut ws, _) = tokio_tungstenite::connect_async(
        server.ws_url("/v1/rankings/ws?classId=4&racerId=3&follow=1,2,99"),
    )
    .await
    .unwrap();
    let seconds = race(31, 4, 1, 4, 3);
    for samples in &seconds {
        let body = Value::Array(samples.iter().map(Sample::json).collect());
        assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    }
    let message = loop {
        match ws.next().await.unwrap().unwrap() {
            Message::Text(text) => break serde_json::from_str::<Value>(&text).unwrap(),
            _ => continue,
        }
    };
    Schema::load("rankings-message").assert_valid(&message);
    assert!(message["following"].is_array(), "{message}");

    let get = |path: String| {
        let client = client.clone();
        async move {
            let response = client.get(path).send().await.unwrap();
            (
                response.status().as_u16(),
                response.json::<Value>().await.unwrap(),
            )
        }
    };
    let races = eventually("the race's results", || async {
        let (status, body) = get(format!("{}/v1/races?classId=4", server.base)).await;
        (status == 200 && body["races"].as_array().is_some_and(|r| !r.is_empty())).then_some(body)
    })
    .await;
    Schema::load("races-list").assert_valid(&races);
    let (status, one) = get(format!("{}/v1/races/31", server.base)).await;
    assert_eq!(status, 200);
    Schema::load("race").assert_valid(&one);
    let (status, board) = get(format!("{}/v1/leaderboard?classId=4&limit=2", server.base)).await;
    assert_eq!(status, 200);
    Schema::load("leaderboard").assert_valid(&board);
    // The original frontend's two calls, in the original's shapes, holding
    // the same results as the API above.
    let (status, original_races) = get(format!("{}/getRaces?classId=4", server.base)).await;
    assert_eq!(status, 200);
    Schema::load("original-races").assert_valid(&original_races);
    let first = &original_races[0];
    assert_eq!(first["PK"], format!("race-{}", races["races"][0]["raceId"]));
    let results: Value = serde_json::from_str(first["results"].as_str().unwrap()).unwrap();
    for result in races["races"][0]["results"].as_array().unwrap() {
        let output = results[result["racerId"].to_string()].as_f64();
        assert_eq!(output, result["output"].as_f64(), "{results}");
    }
    let (status, original_board) = get(format!("{}/leaderboard?classId=4", server.base)).await;
    assert_eq!(status, 200);
    Schema::load("original-leaderboard").assert_valid(&original_board);
    assert_eq!(
        original_board[0]["SK"],
        format!("racer-{}", board["entries"][0]["racerId"])
    );
    assert_eq!(original_board[0]["GSI"], board["entries"][0]["output"]);
    // A racer's bests, once the class file holding them is loaded: the
    // bests of exactly the seconds it rode.
    let racer = seconds[0][0].racer;
    let expected = bests(seconds.iter().flatten());
    let mine: BTreeMap<String, f64> = expected[&4]
        .iter()
        .filter_map(|(second, racers)| Some((second.to_string(), *racers.get(&racer)?)))
        .collect();
    let racer_bests = eventually("the racer's bests", || async {
        let (status, body) =
            get(format!("{}/v1/racers/{racer}/bests?classId=4", server.base)).await;
        (status == 200 && body["seconds"].as_object()?.len() == mine.len()).then_some(body)
    })
    .await;
    Schema::load("racer-bests").assert_valid(&racer_bests);
    let got: BTreeMap<String, f64> =
        serde_json::from_value(racer_bests["seconds"].clone()).unwrap();
    assert_eq!(got, mine);
    let (status, health) = get(format!("{}/healthz", server.base)).await;
    assert_eq!(status, 200);
    Schema::load("health").assert_valid(&health);
    let (status, readiness) = get(format!("{}/readyz", server.base)).await;
    assert_eq!(status, 200);
    Schema::load("readiness").assert_valid(&readiness);
    let error = Schema::load("error");
    for path in [
        "/v1/leaderboard?classId=0",
        "/getRaces?classId=9",
        "/v1/racers/424242/bests?classId=4",
        "/leaderboard",
        "/v1/races/404404",
        "/history/class-9.gz",
        "/v1/rankings/ws?classId=2",
    ] {
        let (status, body) = get(format!("{}{path}", server.base)).await;
        assert!((400..500).contains(&status), "{path}");
        error.assert_valid(&body);
    }
    // A plain GET of the telemetry WebSocket is an ingest error too.
    let (status, body) = get(format!("{}/v1/telemetry/ws", server.base)).await;
    assert_eq!(status, 400);
    Schema::load("ingest-error").assert_valid(&body);
    server.stop().await;
}

#[test]
fn the_openapi_document_covers_every_route_and_its_refs_resolve() {
    let text = std::fs::read_to_string(contract_dir().join("openapi.json")).unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for route in [
        "/v1/telemetry",
        "/v1/telemetry/ws",
        "/history/class-{N}.gz",
        "/v1/rankings/ws",
        "/v1/races",
        "/v1/races/{raceId}",
        "/v1/leaderboard",
        "/healthz",
        "/readyz",
        "/metrics",
        "/v1/admin/disqualifications",
        "/v1/admin/disqualifications/{id}",
        "/getRaces",
        "/leaderboard",
        "/",
        "/v1/racers/{racerId}/bests",
    ] {
        assert!(paths.contains_key(route), "{route} is not documented");
    }
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 10);
    for r in refs.iter().filter(|r| !r.starts_with('#')) {
        let file = r.trim_start_matches("./").split('#').next().unwrap();
        let schema: Value =
            serde_json::from_str(&std::fs::read_to_string(contract_dir().join(file)).unwrap())
                .unwrap();
        jsonschema::validator_for(&schema).unwrap_or_else(|e| panic!("{file}: {e}"));
    }
}

fn collect_refs(value: &Value, refs: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                refs.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, refs));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, refs)),
        _ => {}
    }
}
