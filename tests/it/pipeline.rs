//! End to end through real sockets: telemetry in over HTTP and WebSocket,
//! class files out, on the embedded backends.

use crate::common::*;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn races_over_http_ndjson_and_websocket_reach_the_class_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();

    // Two races in each of three classes; racer 7 rides in two races of class 1.
    let races = [
        race(1001, 1, 1, 8, 20),
        race(1002, 1, 7, 8, 20),
        race(1001, 2, 100, 6, 20),
        race(1003, 2, 100, 6, 15),
        race(1004, 5, 500, 5, 20),
        race(1005, 5, 510, 5, 20),
    ];
    let (ws, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/telemetry/ws"))
        .await
        .unwrap();
    let (mut ws_tx, mut ws_rx) = ws.split();

    for (i, seconds) in races.iter().enumerate() {
        for samples in seconds {
            match i % 3 {
                // A gym gateway: one JSON array per second.
                0 => {
                    let body = Value::Array(samples.iter().map(Sample::json).collect());
                    let (status, answer) = post_json(&client, &server.base, &body).await;
                    assert_eq!((status, answer), (202, json!({"accepted": samples.len()})));
                }
                // NDJSON.
                1 => {
                    let body: String = samples.iter().map(|s| format!("{}\n", s.json())).collect();
                    let (status, answer) = post_raw(
                        &client,
                        &server.base,
                        "application/x-ndjson",
                        body.into_bytes(),
                    )
                    .await;
                    assert_eq!((status, answer), (202, json!({"accepted": samples.len()})));
                }
                // Bikes on a WebSocket: one message per frame, each acked in order.
                _ => {
                    for s in samples {
                        ws_tx
                            .send(Message::text(s.json().to_string()))
                            .await
                            .unwrap();
                    }
                    for _ in samples {
                        let frame = ws_rx.next().await.unwrap().unwrap();
                        let ack: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
                        assert_eq!(ack, json!({"type": "ack", "accepted": 1}));
                    }
                }
            }
        }
    }
    let expected = bests(races.iter().flatten().flatten());
    assert_eq!(expected.len(), 3);
    wait_for_bests(&server.base, &expected).await;
    assert_eq!(
        fetch_class(&server.base, 3).await,
        None,
        "an unraced class has no file"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_batch_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let good = race(1, 4, 1, 3, 5);
    let body = Value::Array(good.iter().flatten().map(Sample::json).collect());
    assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    let expected = bests(good.iter().flatten());
    wait_for_bests(&server.base, &expected).await;

    // A batch whose valid records would raise bests, spoiled by one bad record.
    let mut better = good[0][0];
    better.cadence_q = 800; // 200 rpm: the highest cadence taken by default
    let mut bad = better.json();
    bad["classId"] = json!(9);
    let (status, answer) = post_json(&client, &server.base, &json!([better.json(), bad])).await;
    assert_eq!(status, 422);
    assert_eq!(
        answer["records"],
        json!([{"index": 1, "field": "classId", "reason": "must be an integer from 1 to 6, got 9"}])
    );
    for (content_type, body, want) in [
        ("application/json", b"{\"racerId\": ".to_vec(), 400),
        ("application/json", b"[]".to_vec(), 400),
        ("text/csv", b"a,b".to_vec(), 415),
        (
            "application/x-ndjson",
            format!("{}\nnot json\n", better.json()).into_bytes(),
            400,
        ),
        (
            "application/json",
            serde_json::to_vec(&vec![better.json(); 501]).unwrap(),
            413,
        ),
        ("application/json", vec![b' '; (1 << 20) + 1], 413),
    ] {
        let (status, answer) = post_raw(&client, &server.base, content_type, body).await;
        assert_eq!(status, want, "{content_type}: {answer}");
        assert!(
            answer["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{answer}"
        );
    }

    // The stream is ordered: once a later record reached history, anything
    // of the refused batches would have too.
    let sentinel = race(2, 6, 1, 1, 1);
    let body = Value::Array(sentinel.iter().flatten().map(Sample::json).collect());
    assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    wait_for_bests(&server.base, &bests(sentinel.iter().flatten())).await;
    assert_eq!(
        fetch_class(&server.base, 4).await.as_ref(),
        expected.get(&4)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_naming_a_field_twice_are_refused_naming_it_over_http_and_websocket() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let sample = race(3, 5, 1, 1, 1)[0][0];
    let text = sample.json().to_string();
    // Where the last key won, these were stored: in class 5 (not 7), and
    // with a cadence of 1000 (past every limit, unseen by the check).
    let class_twice = text.replacen('{', r#"{"classId":7,"#, 1);
    let cadence_twice = format!(r#"{},"cadence":1000}}"#, &text[..text.len() - 1]);
    let repeated = |field: &str| {
        json!({
            "index": 0,
            "field": field,
            "reason": "repeated key: a record may name each field only once"
        })
    };
    for (body, field) in [(&class_twice, "classId"), (&cadence_twice, "cadence")] {
        for (content_type, body) in [
            ("application/json", format!("[{body}]")),
            ("application/json", body.clone()),
            ("application/x-ndjson", format!("{body}\n")),
        ] {
            let (status, answer) = post_raw(
                &client,
                &server.base,
                content_type,
                body.clone().into_bytes(),
            )
            .await;
            assert_eq!(status, 422, "{content_type} {body}: {answer}");
            assert_eq!(answer["records"], json!([repeated(field)]), "{body}");
        }
    }
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/telemetry/ws"))
        .await
        .unwrap();
    for (body, field) in [(&class_twice, "classId"), (&cadence_twice, "cadence")] {
        ws.send(Message::text(body.as_str())).await.unwrap();
        let frame = ws.next().await.unwrap().unwrap();
        let answer: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
        assert_eq!(answer["type"], "error", "{answer}");
        assert_eq!(answer["records"], json!([repeated(field)]), "{answer}");
    }
    // The same record once: accepted on the same socket.
    ws.send(Message::text(text.as_str())).await.unwrap();
    let frame = ws.next().await.unwrap().unwrap();
    let answer: Value = serde_json::from_str(frame.to_text().unwrap()).unwrap();
    assert_eq!(answer, json!({"type": "ack", "accepted": 1}));
    // Only that one reached class 5, with its own cadence's output.
    wait_for_bests(&server.base, &bests([&sample])).await;
    assert_eq!(fetch_class(&server.base, 7).await, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_are_answered_in_order_and_errors_keep_the_socket() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/telemetry/ws"))
        .await
        .unwrap();
    let samples = race(9, 3, 1, 2, 2);
    let frames = [
        samples[0][0].json().to_string(),
        "{\"racerId\": -1}".to_owned(),
        "not json".to_owned(),
        Value::Array(samples[1].iter().map(Sample::json).collect()).to_string(),
    ];
    for frame in &frames {
        ws.send(Message::text(frame.as_str())).await.unwrap();
    }
    let mut answers = Vec::new();
    for _ in &frames {
        let frame = ws.next().await.unwrap().unwrap();
        answers.push(serde_json::from_str::<Value>(frame.to_text().unwrap()).unwrap());
    }
    assert_eq!(answers[0], json!({"type": "ack", "accepted": 1}));
    assert_eq!(answers[1]["type"], "error");
    assert!(
        answers[1]["records"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["field"] == "racerId")
    );
    assert_eq!(answers[2]["type"], "error");
    assert_eq!(answers[3], json!({"type": "ack", "accepted": 2}));
    let acked = [samples[0][0], samples[1][0], samples[1][1]];
    wait_for_bests(&server.base, &bests(&acked)).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_survives_a_restart_and_merges_new_records() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let before = race(1, 2, 1, 4, 10);
    let after = race(2, 2, 3, 4, 12);

    let server = Server::start(dir.path()).await;
    let body = Value::Array(before.iter().flatten().map(Sample::json).collect());
    assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    wait_for_bests(&server.base, &bests(before.iter().flatten())).await;
    server.stop().await;

    let server = Server::start(dir.path()).await;
    assert_eq!(
        fetch_class(&server.base, 2).await.as_ref(),
        bests(before.iter().flatten()).get(&2),
        "served right after the restart"
    );
    let body = Value::Array(after.iter().flatten().map(Sample::json).collect());
    assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    wait_for_bests(&server.base, &bests(before.iter().chain(&after).flatten())).await;
    server.stop().await;
}

/// In one process, history hears of each delivery object as it is
/// written: with an hour between its polls, a race is still published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_checks_as_soon_as_the_transformer_in_its_process_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let mut config = test_config(dir.path());
    config.history.poll_interval = std::time::Duration::from_secs(3600);
    let server = Server::start_with(config).await;
    // The first check, at start, finds nothing; the next poll is an hour off.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    // Two races one after the other: each is published by a wake of its own.
    let mut posted: Vec<Sample> = Vec::new();
    for race_id in [1, 2] {
        let samples: Vec<Sample> = race(race_id, 2, race_id * 100, 3, 4)
            .into_iter()
            .flatten()
            .collect();
        let body = Value::Array(samples.iter().map(Sample::json).collect());
        assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
        posted.extend(samples);
        wait_for_bests(&server.base, &bests(&posted)).await;
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_delivers_what_the_transformer_holds() {
    let dir = tempfile::tempdir().unwrap();
    let client = reqwest::Client::new();
    let config = test_config_without_delivery(dir.path());
    let server = Server::start_with(config.clone()).await;
    let samples = race(1, 1, 1, 3, 3);
    let body = Value::Array(samples.iter().flatten().map(Sample::json).collect());
    assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(fetch_class(&server.base, 1).await, None);
    server.stop().await;

    let server = Server::start_with(config).await;
    assert_eq!(
        fetch_class(&server.base, 1).await.as_ref(),
        bests(samples.iter().flatten()).get(&1)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_history_files_are_404_with_json_and_cors_allows_any_origin() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    for file in ["class-1.gz", "class-7.gz", "passwd"] {
        let response = client
            .get(format!("{}/history/{file}", server.base))
            .header("origin", "https://racer.example")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 404);
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        let body: Value = response.json().await.unwrap();
        assert!(body["error"].is_string(), "{body}");
    }
    server.stop().await;
}
