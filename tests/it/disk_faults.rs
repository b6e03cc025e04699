//! Disk faults under the embedded stream, over real sockets: a full disk (a
//! small tmpfs this test mounts when it runs as root) and the data
//! directory deleted while running. Ingest refuses with 503 and
//! `Retry-After` while it cannot store, `/readyz` names the stream, the
//! service recovers without a restart once the cause is gone, and every
//! record acknowledged with 202 reaches its class file.

use crate::common::{PATIENCE, Sample, Server, bests, eventually, race, wait_for_bests};
use serde_json::Value;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// A tmpfs mounted on a temporary directory, unmounted when dropped (also
/// when the test fails).
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts an 8 MiB tmpfs, or says why it cannot.
    fn mount() -> Result<Tmpfs, String> {
        // /proc/self belongs to the process's effective user.
        let uid = std::os::unix::fs::MetadataExt::uid(
            &std::fs::metadata("/proc/self").map_err(|e| e.to_string())?,
        );
        if uid != 0 {
            return Err(format!("not running as root (uid {uid})"));
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=8m", "tmpfs"])
            .arg(dir.path())
            .status()
            .map_err(|e| format!("running mount: {e}"))?;
        if !status.success() {
            return Err(format!("mount -t tmpfs failed ({status})"));
        }
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !unmounted {
            // Still busy (a test failed with the server running): detach it.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Fills the filesystem of `dir` with a file until it is full.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0x5a_u8; 64 * 1024];
    loop {
        if file.write_all(&chunk).is_err() {
            break;
        }
    }
    // Whatever is left is smaller than a chunk: take it byte by byte.
    let byte = [0x5a_u8; 1];
    while file.write_all(&byte).is_ok() {}
    path
}

/// One POST of `samples`: status, `Retry-After`, JSON body.
async fn post(
    client: &reqwest::Client,
    base: &str,
    samples: &[Sample],
) -> (u16, Option<String>, Value) {
    let body = Value::Array(samples.iter().map(Sample::json).collect());
    let response = client
        .post(format!("{base}/v1/telemetry"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, retry_after, response.json().await.unwrap())
}

/// A 503 as the contract says: a JSON error, `Retry-After` in seconds.
fn assert_refused(answer: &(u16, Option<String>, Value)) {
    let (status, retry_after, body) = answer;
    assert_eq!(*status, 503, "{body}");
    let seconds: u64 = retry_after
        .as_deref()
        .expect("a 503 carries Retry-After")
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&seconds), "Retry-After: {seconds}");
    assert!(
        body["error"].as_str().is_some_and(|e| e.contains("stream")),
        "{body}"
    );
    assert_eq!(body["records"], Value::Array(vec![]), "{body}");
}

/// `/readyz`: status and body.
async fn readyz(base: &str) -> (u16, Value) {
    let response = reqwest::get(format!("{base}/readyz")).await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

/// Posts `samples` again and again until it is accepted; returns how long
/// that took.
async fn post_until_accepted(client: &reqwest::Client, base: &str, samples: &[Sample]) -> Duration {
    let started = Instant::now();
    loop {
        let answer = post(client, base, samples).await;
        if answer.0 == 202 {
            return started.elapsed();
        }
        assert_refused(&answer);
        assert!(started.elapsed() < PATIENCE, "never accepted again");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_refused_with_503_and_ingest_recovers_once_space_is_freed() {
    let tmpfs = match Tmpfs::mount() {
        Ok(tmpfs) => tmpfs,
        Err(reason) => {
            eprintln!("skipping the full-disk test: {reason}");
            return;
        }
    };
    let data = tmpfs.path().join("data");
    let server = Server::start(&data).await;
    let client = reqwest::Client::new();
    let seconds = race(9101, 6, 1, 40, 300);
    let mut acked: Vec<Sample> = Vec::new();
    let mut seconds = seconds.into_iter();

    // Before: accepted and published.
    for second in seconds.by_ref().take(5) {
        let answer = post(&client, &server.base, &second).await;
        assert_eq!(answer.0, 202, "{}", answer.2);
        acked.extend(second);
    }
    wait_for_bests(&server.base, &bests(&acked)).await;

    // Full: posts go on until the stream cannot store. A reopened database
    // may still take what fits in pages it freed, so it can answer 202
    // between two 503s; whatever it acknowledges is durable and counted.
    let filler = fill(tmpfs.path());
    let mut refused = None;
    let mut refusals = 0;
    'full: for second in seconds.by_ref() {
        // Each second is posted until it is acknowledged, or refused while
        // /readyz says the stream is broken: none is given up on.
        loop {
            let answer = post(&client, &server.base, &second).await;
            if answer.0 == 202 {
                acked.extend(second);
                break;
            }
            assert_refused(&answer);
            refusals += 1;
            let (status, body) = readyz(&server.base).await;
            if status == 503 {
                assert_eq!(body["status"], "not ready");
                assert!(body["parts"]["stream"].is_string(), "{body}");
                refused = Some(second);
                break 'full;
            }
            assert!(refusals < 100, "/readyz never said the stream is broken");
        }
    }
    let refused = refused.expect("the full disk made ingest refuse");
    eprintln!(
        "{} records acknowledged before the stream refused with /readyz 503 ({refusals} refusals)",
        acked.len()
    );

    // Space freed: accepted again, without a restart.
    std::fs::remove_file(&filler).unwrap();
    let took = post_until_accepted(&client, &server.base, &refused).await;
    eprintln!("freeing space to the first 202: {took:?}");
    assert!(took < Duration::from_secs(5), "recovered after {took:?}");
    acked.extend(refused);
    for second in seconds.by_ref().take(5) {
        let answer = post(&client, &server.base, &second).await;
        assert_eq!(answer.0, 202, "{}", answer.2);
        acked.extend(second);
    }
    eventually("/readyz to be 200 again", || async {
        (readyz(&server.base).await.0 == 200).then_some(())
    })
    .await;

    // Every acknowledged record, before and after, is in its class file.
    wait_for_bests(&server.base, &bests(&acked)).await;
    let stopping = Instant::now();
    server.stop().await;
    eprintln!("graceful stop took {:?}", stopping.elapsed());
    drop(tmpfs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_deleted_while_running_is_refused_until_it_is_restored_and_nothing_acknowledged_is_lost()
 {
    let root = tempfile::tempdir().unwrap();
    let data = root.path().join("data");
    let server = Server::start(&data).await;
    let client = reqwest::Client::new();

    let before: Vec<Sample> = race(9201, 1, 1, 20, 3).into_iter().flatten().collect();
    assert_eq!(post(&client, &server.base, &before).await.0, 202);
    wait_for_bests(&server.base, &bests(&before)).await;

    // Deleted, and a file in its place: it cannot be restored yet. (The
    // running services may write a file into a folder being removed, as
    // they would under an operator's `rm -rf`: removed again.)
    let mut removal = std::fs::remove_dir_all(&data);
    for _ in 0..20 {
        if removal.is_ok() {
            break;
        }
        removal = std::fs::remove_dir_all(&data);
    }
    removal.unwrap();
    std::fs::write(&data, b"in the way").unwrap();
    let after: Vec<Vec<Sample>> = race(9202, 2, 100, 20, 10);
    let mut after = after.into_iter();
    let first = after.next().unwrap();
    for _ in 0..5 {
        // Never a 202 for records that would be in a deleted file.
        assert_refused(&post(&client, &server.base, &first).await);
    }
    let (status, body) = readyz(&server.base).await;
    assert_eq!(status, 503, "{body}");
    let reason = body["parts"]["stream"].as_str().expect("the stream named");
    assert!(reason.contains("stream.redb"), "{reason}");

    // The way cleared: the stream puts its records back and takes new ones.
    std::fs::remove_file(&data).unwrap();
    let took = post_until_accepted(&client, &server.base, &first).await;
    eprintln!("clearing the way to the first 202: {took:?}");
    assert!(took < Duration::from_secs(5), "recovered after {took:?}");
    let mut acked = first;
    for second in after {
        let answer = post(&client, &server.base, &second).await;
        assert_eq!(answer.0, 202, "{}", answer.2);
        acked.extend(second);
    }
    assert!(data.join("stream").join("stream.redb").is_file());
    wait_for_bests(&server.base, &bests(&acked)).await;
    // What was acknowledged before the deletion too: its class file was
    // deleted with the directory, and is published again.
    wait_for_bests(&server.base, &bests(&before)).await;
    server.stop().await;

    // Durable: a restart on the same directory still has them, those
    // acknowledged before the deletion and after it.
    let server = Server::start(&data).await;
    wait_for_bests(&server.base, &bests(&acked)).await;
    wait_for_bests(&server.base, &bests(&before)).await;
    assert_eq!(readyz(&server.base).await.0, 200);
    server.stop().await;
}
