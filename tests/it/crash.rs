//! Crash safety of the real binary: records acknowledged right before a
//! `kill -9` all reach the class files after a restart.

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::process::Child;

async fn spawn(data_dir: &Path) -> (Child, String) {
    let data_dir = data_dir.to_str().unwrap().to_owned();
    let service = spawn_alleycat(&[], &[("ALLEYCAT_DATA_DIR".into(), data_dir)]).await;
    (service.child, service.base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_acknowledged_before_kill_9_reach_history_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn(dir.path()).await;

    let sent = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let acked = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let posters: Vec<_> = (0..8u64)
        .map(|p| {
            let (base, sent, acked) = (base.clone(), sent.clone(), acked.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::new();
                let seconds = race(p, (p % 6 + 1) as u8, p * 1000, 25, 3600);
                for batch in seconds {
                    sent.lock().unwrap().extend(&batch);
                    let body = Value::Array(batch.iter().map(Sample::json).collect());
                    match client
                        .post(format!("{base}/v1/telemetry"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 202 => acked.lock().unwrap().extend(&batch),
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        Err(_) => return, // the server is gone
                    }
                }
            })
        })
        .collect();

    // Let deliveries and merges happen, then kill mid-stream.
    eventually("some history to be published", || async {
        let r = reqwest::get(format!("{base}/history/class-1.gz"))
            .await
            .ok()?;
        (r.status() == 200).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    for poster in posters {
        tokio::time::timeout(PATIENCE, poster)
            .await
            .unwrap()
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(
        acked.len() >= 1000,
        "the load was real: {} records acked",
        acked.len()
    );
    eprintln!(
        "killed with {} records sent, {} acknowledged",
        sent.len(),
        acked.len()
    );

    let (_child, base) = spawn(dir.path()).await;
    assert_acknowledged_in_history(&base, &acked, &sent).await;
}

/// Every acknowledged record is in its class file (at least as good), and
/// nothing in the class files was never sent.
async fn assert_acknowledged_in_history(base: &str, acked: &[Sample], sent: &[Sample]) {
    for (class, want) in &bests(acked) {
        eventually(
            &format!("class-{class}.gz to hold every acknowledged record"),
            || async { holds_all(&fetch_class(base, *class).await?, want).then_some(()) },
        )
        .await;
    }
    let sent = bests(sent);
    for class in 1..=6u8 {
        if let Some(got) = fetch_class(base, class).await {
            assert_only_sent(class, &got, &sent);
        }
    }
}

/// Fault injection: the binary is SIGKILLed at random points (mid-request,
/// mid-delivery, mid-merge, right after a start) and restarted, several
/// times, while gateways keep posting to whichever process is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kills_and_restarts_lose_no_acknowledged_record() {
    const KILLS: usize = 5;
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base) = spawn(dir.path()).await;
    let current = Arc::new(Mutex::new(base));
    let sent = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let acked = Arc::new(Mutex::new(Vec::<Sample>::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let posters: Vec<_> = (0..6u64)
        .map(|p| {
            let (current, sent, acked, stop) =
                (current.clone(), sent.clone(), acked.clone(), stop.clone());
            tokio::spawn(async move {
                let client = reqwest::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                for batch in race(900 + p, (p % 6 + 1) as u8, p * 1000, 20, 3600) {
                    if stop.is_cancelled() {
                        return;
                    }
                    sent.lock().unwrap().extend(&batch);
                    let base = current.lock().unwrap().clone();
                    let body = Value::Array(batch.iter().map(Sample::json).collect());
                    match client
                        .post(format!("{base}/v1/telemetry"))
                        .json(&body)
                        .send()
                        .await
                    {
                        Ok(r) if r.status() == 202 => acked.lock().unwrap().extend(&batch),
                        Ok(r) => panic!("unexpected status {}", r.status()),
                        // Down between a kill and its restart.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            })
        })
        .collect();

    let mut kills = Vec::new();
    for _ in 0..KILLS {
        // Anywhere from right after the start to a few deliveries in.
        let after = Duration::from_millis(fastrand::u64(50..1500));
        tokio::time::sleep(after).await;
        let acked_at_kill = acked.lock().unwrap().len();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        kills.push((after, acked_at_kill));
        let (next, base) = spawn(dir.path()).await;
        child = next;
        *current.lock().unwrap() = base;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    for poster in posters {
        tokio::time::timeout(PATIENCE, poster)
            .await
            .unwrap()
            .unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    let sent = sent.lock().unwrap().clone();
    assert!(
        acked.len() >= 1000,
        "the load was real: {} acked",
        acked.len()
    );
    eprintln!(
        "{KILLS} kills at {kills:?} (time after start, records acked by then); {} sent, {} acknowledged",
        sent.len(),
        acked.len()
    );
    let base = current.lock().unwrap().clone();
    assert_acknowledged_in_history(&base, &acked, &sent).await;
}
