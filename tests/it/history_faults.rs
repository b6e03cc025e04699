//! The history store failing under the merge, and class files it cannot
//! read: no acknowledged record is lost, `/readyz` says what is broken, and
//! everything is published once the cause is gone, without a restart (or
//! across one).

use crate::common::*;
use serde_json::Value;
use std::path::Path;
use std::time::Instant;

/// Posts every second of `races` as one JSON array per second; all 202.
async fn post_races(client: &reqwest::Client, base: &str, races: &[&Vec<Vec<Sample>>]) {
    let seconds = races.iter().map(|r| r.len()).max().unwrap_or(0);
    for i in 0..seconds {
        let samples: Vec<Value> = races
            .iter()
            .filter_map(|r| r.get(i))
            .flatten()
            .map(Sample::json)
            .collect();
        let (status, answer) = post_json(client, base, &Value::Array(samples)).await;
        assert_eq!(status, 202, "{answer}");
    }
}

/// `/readyz`: its status and its not-ready parts.
async fn readyz(base: &str) -> (u16, serde_json::Map<String, Value>) {
    let response = reqwest::get(format!("{base}/readyz")).await.unwrap();
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap();
    let parts = body["parts"].as_object().cloned().unwrap_or_default();
    (status, parts)
}

/// Waits until `/readyz` is 503 with `part` not ready for a reason that
/// mentions `why`; returns the reason.
async fn wait_not_ready(base: &str, part: &str, why: &str) -> String {
    eventually(&format!("/readyz to name {part} ({why})"), || async {
        let (status, parts) = readyz(base).await;
        let reason = parts.get(part)?.as_str()?.to_owned();
        assert_eq!(status, 503);
        reason.contains(why).then_some(reason)
    })
    .await
}

/// Waits until `/readyz` no longer names any part starting with `history`.
async fn wait_history_ready(base: &str) {
    eventually("/readyz to name no history part", || async {
        let (_, parts) = readyz(base).await;
        (!parts.keys().any(|p| p.starts_with("history"))).then_some(())
    })
    .await;
}

/// The union of two sets of bests (max per key).
fn union(a: &Bests, b: &Bests) -> Bests {
    let mut all = a.clone();
    for (class, seconds) in b {
        for (second, racers) in seconds {
            for (racer, output) in racers {
                let best = all
                    .entry(*class)
                    .or_default()
                    .entry(*second)
                    .or_default()
                    .entry(*racer)
                    .or_insert(f64::MIN);
                *best = best.max(*output);
            }
        }
    }
    all
}

fn only_class(bests: &Bests, class: u8) -> Bests {
    bests
        .iter()
        .filter(|(c, _)| **c == class)
        .map(|(c, s)| (*c, s.clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_whose_publication_failed_are_published_once_writes_work_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let first = race(6001, 6, 1, 4, 6);
    post_races(&client, &server.base, &[&first]).await;
    let before = bests(first.iter().flatten());
    wait_for_bests(&server.base, &before).await;

    break_history_writes(dir.path());
    // The same racers, better in some seconds, and two new ones.
    let second = race(6002, 6, 3, 4, 9);
    post_races(&client, &server.base, &[&second]).await;
    wait_not_ready(&server.base, "history", "class 6").await;
    assert_eq!(
        fetch_class(&server.base, 6).await.as_ref(),
        before.get(&6),
        "the published file is the one before the failure"
    );

    repair_history_writes(dir.path());
    let repaired = Instant::now();
    let all = union(&before, &bests(second.iter().flatten()));
    assert_ne!(all, before);
    wait_for_bests(&server.base, &all).await;
    wait_history_ready(&server.base).await;
    eprintln!(
        "history published the records that waited {:?} after the store was repaired",
        repaired.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_whose_publication_failed_until_shutdown_are_published_after_a_restart() {
    // The real binary: its process ends, whatever is still retrying.
    let dir = tempfile::tempdir().unwrap();
    let env = [(
        "ALLEYCAT_DATA_DIR".to_owned(),
        dir.path().to_str().unwrap().to_owned(),
    )];
    let server = spawn_alleycat(&[], &env).await;
    let client = reqwest::Client::new();
    let first = race(6101, 6, 1, 4, 6);
    post_races(&client, &server.base, &[&first]).await;
    let before = bests(first.iter().flatten());
    wait_for_bests(&server.base, &before).await;

    break_history_writes(dir.path());
    let second = race(6102, 6, 2, 4, 8);
    post_races(&client, &server.base, &[&second]).await;
    wait_not_ready(&server.base, "history", "class 6").await;
    // Stopped while writes still fail: the last merge at shutdown fails too.
    server.terminate().await;
    // (The embedded store cannot open with `.tmp` broken: repaired first.)
    repair_history_writes(dir.path());

    let server = spawn_alleycat(&[], &env).await;
    let all = union(&before, &bests(second.iter().flatten()));
    wait_for_bests(&server.base, &all).await;
    wait_history_ready(&server.base).await;
    server.terminate().await;
}

/// Makes writes of one class file fail (`chattr +i`: not even root may
/// replace it); reads still work. `false` where the file system or the
/// process's capabilities do not allow it.
fn make_immutable(file: &Path, immutable: bool) -> bool {
    let flag = if immutable { "+i" } else { "-i" };
    std::process::Command::new("chattr")
        .arg(flag)
        .arg(file)
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_class_file_that_cannot_be_written_across_a_restart_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let class6 = dir.path().join("history/class-6.gz");
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let first = race(6201, 6, 1, 4, 6);
    post_races(&client, &server.base, &[&first]).await;
    let before = bests(first.iter().flatten());
    wait_for_bests(&server.base, &before).await;
    if !make_immutable(&class6, true) {
        eprintln!("skipped: `chattr +i` is not available here (needs root and ext4-like fs)");
        server.stop().await;
        return;
    }
    // Only class 6's file cannot be written: the merge state can.
    let second = race(6202, 6, 2, 4, 8);
    post_races(&client, &server.base, &[&second]).await;
    wait_not_ready(&server.base, "history", "class 6").await;
    server.stop().await;

    // Restarted while the file still cannot be written.
    let server = Server::start(dir.path()).await;
    wait_not_ready(&server.base, "history", "class 6").await;
    // Ingest and the other classes work meanwhile.
    let other = race(6203, 1, 1, 3, 5);
    post_races(&client, &server.base, &[&other]).await;
    wait_for_bests(&server.base, &bests(other.iter().flatten())).await;
    assert_eq!(fetch_class(&server.base, 6).await.as_ref(), before.get(&6));

    assert!(make_immutable(&class6, false));
    let repaired = Instant::now();
    let all = union(&before, &bests(second.iter().flatten()));
    wait_for_bests(&server.base, &all).await;
    wait_history_ready(&server.base).await;
    eprintln!(
        "after a restart, history published the records that waited {:?} after the class \
         file became writable",
        repaired.elapsed()
    );
    server.stop().await;
}

fn gzip(json: &[u8]) -> Vec<u8> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(json).unwrap();
    encoder.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_class_file_blocks_only_its_class_until_it_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("history");
    std::fs::create_dir_all(&history).unwrap();
    let class3 = history.join("class-3.gz");
    // A legacy file: the class JSON, not gzipped.
    let legacy = br#"{"1":{"999":1.5}}"#;
    std::fs::write(&class3, legacy).unwrap();

    let server = Server::start(dir.path()).await;
    wait_not_ready(&server.base, "history class-3", "not a valid class file").await;
    let client = reqwest::Client::new();
    let three = race(7001, 3, 1, 4, 6);
    let one = race(7002, 1, 1, 4, 6);
    let five = race(7003, 5, 10, 2, 4);
    post_races(&client, &server.base, &[&three, &one, &five]).await;
    let expected = bests(three.iter().chain(&one).chain(&five).flatten());
    wait_for_bests(&server.base, &only_class(&expected, 1)).await;
    wait_for_bests(&server.base, &only_class(&expected, 5)).await;
    // Other merges went on past class 3's records: it stays as it was.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(std::fs::read(&class3).unwrap(), legacy);
    let (status, parts) = readyz(&server.base).await;
    assert_eq!(status, 503);
    assert!(parts.contains_key("history class-3"), "{parts:?}");
    assert!(!parts.contains_key("history"), "{parts:?}");

    // Replaced by a valid class file (written aside, then renamed in).
    let staged = history.join("class-3.gz.new");
    std::fs::write(&staged, gzip(legacy)).unwrap();
    std::fs::rename(&staged, &class3).unwrap();
    let repaired = Instant::now();
    let mut want = only_class(&expected, 3);
    want.get_mut(&3)
        .unwrap()
        .entry(1)
        .or_default()
        .insert(999, 1.5);
    wait_for_bests(&server.base, &want).await;
    wait_history_ready(&server.base).await;
    eprintln!(
        "class 3 published the records that waited {:?} after its file was replaced",
        repaired.elapsed()
    );
    server.stop().await;
}
