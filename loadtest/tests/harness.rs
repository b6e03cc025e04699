//! The harness against a real all-in-one on loopback: a short run whose
//! report must account for every record.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

mod support;

use alleycat_loadtest::target::status_value;
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

/// `THP_enabled` of a process, as Linux reports it (1 or 0).
fn thp_enabled(pid: u32) -> u64 {
    status_value(pid, "THP_enabled").expect("Linux reports THP_enabled")
}

/// The harness's `THP_enabled` once it is under way: it has connected to a
/// target that accepts and never answers, so its `main` has run.
async fn thp_of_harness(allow: Option<&str>) -> u64 {
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_alleycat-loadtest"));
    command
        .arg("--target")
        .arg(format!("http://{}", target.local_addr().unwrap()))
        .args(["--racers", "1", "--viewers", "0", "--duration", "1"])
        .env_remove("MIMALLOC_ALLOW_THP")
        .kill_on_drop(true);
    if let Some(allow) = allow {
        command.env("MIMALLOC_ALLOW_THP", allow);
    }
    let mut harness = command.spawn().unwrap();
    let (_connection, _) = tokio::time::timeout(Duration::from_secs(30), target.accept())
        .await
        .expect("the harness connects to its target")
        .unwrap();
    let thp = thp_enabled(harness.id().unwrap());
    harness.kill().await.unwrap();
    thp
}

#[tokio::test]
async fn the_harness_turns_huge_pages_off_unless_mimalloc_is_told_otherwise() {
    // A child inherits the setting: allow them here, so that the child's 0
    // is its own doing whatever the process running the tests chose.
    nix::sys::prctl::set_thp_disable(false).unwrap();
    assert_eq!(thp_enabled(std::process::id()), 1);
    assert_eq!(thp_of_harness(None).await, 0);
    assert_eq!(thp_of_harness(Some("1")).await, 1);
}
