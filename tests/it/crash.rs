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
    let must = bests(&acked);
    let may = bests(&sent);
    for (class, want) in &must {
        eventually(
            &format!("class-{class}.gz to hold every acknowledged record"),
            || async {
                let got = fetch_class(&base, *class).await?;
                let all_acked_in = want.iter().all(|(second, racers)| {
                    racers.iter().all(|(racer, best)| {
                        got.get(second)
                            .and_then(|r| r.get(racer))
                            .is_some_and(|g| g >= best)
                    })
                });
                all_acked_in.then_some(got)
            },
        )
        .await;
    }
    // And nothing that was never sent, nor any value above what was sent.
    for class in 1..=6u8 {
        let Some(got) = fetch_class(&base, class).await else {
            continue;
        };
        for (second, racers) in got {
            for (racer, value) in racers {
                let bound = may[&class][&second][&racer];
                assert!(
                    value <= bound,
                    "class {class} second {second} racer {racer}: {value} > {bound}"
                );
            }
        }
    }
}
