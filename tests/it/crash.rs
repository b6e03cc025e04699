//! Crash safety of the real binary: records acknowledged right before a
//! `kill -9` all reach the class files after a restart.

use crate::common::gateways::{Gateways, Posted};
use crate::common::*;
use std::path::Path;
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

    let gateways = Gateways::start(&base, 8, 0, 25, Duration::ZERO);

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
    let Posted { sent, acked, .. } = gateways.finish().await;
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
    let gateways = Gateways::start(&base, 6, 900, 20, Duration::ZERO);

    let mut kills = Vec::new();
    for _ in 0..KILLS {
        // Anywhere from right after the start to a few deliveries in.
        let after = Duration::from_millis(fastrand::u64(50..1500));
        tokio::time::sleep(after).await;
        let acked_at_kill = gateways.acked();
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        kills.push((after, acked_at_kill));
        let (next, base) = spawn(dir.path()).await;
        child = next;
        gateways.retarget(&base);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = gateways.base.lock().unwrap().clone();
    let Posted { sent, acked, .. } = gateways.finish().await;
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
    assert_acknowledged_in_history(&base, &acked, &sent).await;
}
