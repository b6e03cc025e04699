//! The harness against a real all-in-one on loopback: a short run whose
//! report must account for every record.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod support;

use support::quick_config;

async fn run_harness(transport: &str) -> (std::process::ExitStatus, serde_json::Value, String) {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    let server = tokio::spawn(alleycat::run(
        listener,
        quick_config(dir.path()),
        stop.clone().cancelled_owned(),
    ));
    let json = dir.path().join("report.json");
    let html = dir.path().join("report.html");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_alleycat-loadtest"))
        .args([
            "--target",
            &base,
            "--racers",
            "24",
            "--viewers",
            "6",
            "--duration",
            "4",
            "--race-seconds",
            "60",
        ])
        .args([
            "--transport",
            transport,
            "--batch",
            "8",
            "--settle",
            "20",
            "--seed",
            "3",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(120), output)
        .await
        .unwrap()
        .unwrap();
    stop.cancel();
    server.await.unwrap().unwrap();
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    (
        output.status,
        report,
        std::fs::read_to_string(html).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_websocket_run_accounts_for_every_record() {
    let (status, report, html) = run_harness("ws").await;
    assert!(status.success(), "{report}");
    let sent = report["records_sent"].as_u64().unwrap();
    assert!(sent >= 24 * 3, "{sent} records sent");
    assert_eq!(report["records_accepted"], sent);
    assert_eq!(report["errors"], serde_json::json!({}));
    assert!(report["ingest_latency_ms"]["samples"].as_u64().unwrap() >= sent);
    assert!(
        report["ranking_latency_ms"]["samples"].as_u64().unwrap() > 0,
        "viewers saw records in pushes"
    );
    assert!(report["history_freshness_s"]["samples"].as_u64().unwrap() > 0);
    assert_eq!(report["history_missing"], 0);
    // The target is this test process (it listens on the target port).
    assert_eq!(report["target"]["pid"], std::process::id());
    assert!(html.contains("<svg") && html.contains("PASSED"));
    // Bikes and viewers connected before the clock started: sending fills
    // the timeline from its first second, and the connect time is apart.
    let connect = report["connect_seconds"].as_f64().unwrap();
    assert!((0.0..60.0).contains(&connect), "{connect}");
    let timeline = report["timeline"].as_array().unwrap();
    assert_eq!(timeline[0]["t"], 0);
    assert!(timeline[0]["sent"].as_u64().unwrap() > 0, "{timeline:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_http_gateway_run_accounts_for_every_record() {
    let (status, report, _) = run_harness("http").await;
    assert!(status.success(), "{report}");
    assert_eq!(report["records_accepted"], report["records_sent"]);
    assert!(report["achieved_rate"].as_f64().unwrap() > 10.0);
}
