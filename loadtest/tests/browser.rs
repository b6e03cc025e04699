//! The live race page (`/`) in a real browser: the all-in-one on a loopback
//! port fed by the load-test harness, and `tests/browser/page.test.mjs`
//! driving Debian's chromium through playwright-core. The script checks the
//! page; this test serves it, and stops and starts the server when the
//! script asks (to see the page reconnect).
//!
//! Needs `chromium` and `tests/browser/node_modules`: `./scripts/test`
//! installs both (`tests/browser/install`). Screenshots go to
//! `target/browser-test/`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long the whole browser script may take.
const SCRIPT_PATIENCE: Duration = Duration::from_secs(240);

mod support;

use support::quick_config;

/// The all-in-one, in this process, on `addr`.
struct Server {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Server {
    async fn start(listener: TcpListener, dir: &Path) -> Server {
        let stop = CancellationToken::new();
        let task = tokio::spawn(alleycat::run(
            listener,
            quick_config(dir),
            stop.clone().cancelled_owned(),
        ));
        Server { stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the server stops in time")
            .unwrap()
            .unwrap();
    }
}

/// The harness sending 60 racers of class 1 for `seconds` (races follow the
/// clock; the data directory is new, so their first outputs at each second
/// are new records).
fn harness(base: &str, seed: &str, seconds: &str) -> tokio::process::Child {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_alleycat-loadtest"))
        .args(["--target", base, "--racers", "60", "--classes", "1"])
        .args(["--duration", seconds, "--seed", seed])
        .args(["--settle", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// A finished race of 15 racers in class 1, so that results and a
/// leaderboard of two pages are there from the start. The winner's name
/// looks like markup: the page must show it as text.
async fn post_finished_race(base: &str) {
    let finals: Vec<serde_json::Value> = (0..15u64)
        .map(|i| {
            let name = if i == 0 {
                "<img src=x onerror=alert(1)>".to_owned()
            } else {
                format!("Finisher {i}")
            };
            serde_json::json!({
                "uuid": format!("5f0e9a1c-3b7d-4e2a-9c61-{i:012x}"),
                "event": "final", "deviceTimestamp": 1_700_000_000_000_i64,
                "second": 300, "raceId": 1, "racerId": 999_000 + i, "classId": 1,
                "name": name, "cadence": 150 - i, "resistance": 100,
            })
        })
        .collect();
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/telemetry"))
        .json(&finals)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap());
}

/// Kills a process group when dropped.
struct KillGroup(u32);

impl Drop for KillGroup {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, killpg};
        use nix::unistd::Pid;
        let _ = killpg(Pid::from_raw(self.0 as i32), Signal::SIGKILL);
    }
}

/// `addr` once more, retried for a while: while the server was down, a
/// client socket may have been given that port.
async fn bind_again(addr: std::net::SocketAddr) -> TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return listener,
            Err(e) if tokio::time::Instant::now() < deadline => {
                eprintln!("binding {addr} again: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot bind {addr} again: {e}"),
        }
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and tests/browser/node_modules (./scripts/test installs them)"]
async fn the_live_page_works_in_a_real_browser() {
    let browser_dir = repo().join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser/node_modules is missing: run tests/browser/install (./scripts/test does)"
    );
    let dir = tempfile::tempdir().unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let base = format!("http://{addr}");
    let mut server = Some(Server::start(listener, dir.path()).await);
    // Until the script asks for the restart (it is killed then).
    let mut load = harness(&base, "1", "240");
    post_finished_race(&base).await;
    // The first race's first seconds are on the stream: the page opens on a
    // server under load, as a viewer would.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let shots = repo().join("target/browser-test");
    // In a process group of its own, so that chromium, which playwright
    // starts detached, goes with it whatever way the test ends.
    let mut script = tokio::process::Command::new("node")
        .arg(browser_dir.join("page.test.mjs"))
        .arg(&base)
        .arg(&shots)
        // The harness's racer 3 with seed 1 (`Fleet::racer_id`).
        .arg("1000003")
        .current_dir(&browser_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .expect("node runs");
    let _group = KillGroup(script.id().expect("running"));
    let mut answers = script.stdin.take().unwrap();
    let mut lines = BufReader::new(script.stdout.take().unwrap()).lines();
    let mut checks = Vec::new();
    let mut result = None;
    let run = async {
        while let Some(line) = lines.next_line().await.unwrap() {
            eprintln!("[browser] {line}");
            match line.as_str() {
                "ASK stop" => {
                    load.kill().await.ok();
                    server.take().expect("running").stop().await;
                    answers.write_all(b"done stop\n").await.unwrap();
                }
                "ASK start" => {
                    // The same port and data: the page's address still holds.
                    let listener = bind_again(addr).await;
                    server = Some(Server::start(listener, dir.path()).await);
                    load = harness(&base, "2", "30");
                    answers.write_all(b"done start\n").await.unwrap();
                }
                _ => {
                    if let Some(json) = line.strip_prefix("RESULT ") {
                        result = Some(serde_json::from_str::<serde_json::Value>(json).unwrap());
                    } else if let Some(check) = line.strip_prefix("ok - ") {
                        checks.push(check.to_owned());
                    }
                }
            }
        }
        script.wait().await.unwrap()
    };
    let status = tokio::time::timeout(SCRIPT_PATIENCE, run)
        .await
        .expect("the browser script ends in time");
    assert!(
        status.success(),
        "the browser script failed after these checks passed: {checks:#?}"
    );
    let result = result.expect("the script reports its figures");
    eprintln!("page: {result}");
    assert!(result["pageBytes"].as_u64().unwrap() > 1000);
    assert!(checks.len() >= 15, "{checks:#?}");
    for shot in ["page-desktop.png", "page-phone.png"] {
        let size = std::fs::metadata(shots.join(shot)).unwrap().len();
        assert!(size > 10_000, "{shot}: {size} bytes");
    }
    load.kill().await.ok();
    if let Some(server) = server {
        server.stop().await;
    }
}
