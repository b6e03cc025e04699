//! Shared helpers of the integration tests: an all-in-one server on a random
//! loopback port, race generators, and an independent reference for the
//! personal bests the class files must hold.
#![allow(dead_code, unreachable_pub, missing_docs)]

pub mod aws;
pub mod fault_proxy;
pub mod gateways;

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Upper bound of every wait in these tests.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// An all-in-one server running in this process.
pub struct Server {
    pub base: String,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Flags that make history and rankings appear quickly, and a per-racer
/// rate limit the tests' races (far faster than a record a second) never
/// reach; everything else is the binary's own default.
pub const QUICK_FLAGS: [(&str, &str); 7] = [
    ("ALLEYCAT_BUFFER_INTERVAL_MS", "200"),
    ("ALLEYCAT_HISTORY_POLL_MS", "50"),
    ("ALLEYCAT_RANKINGS_PUSH_MS", "100"),
    ("ALLEYCAT_RANKINGS_HISTORY_RELOAD_MS", "200"),
    ("ALLEYCAT_DISQUALIFICATIONS_POLL_MS", "200"),
    ("ALLEYCAT_RACER_RATE", "1000000"),
    ("ALLEYCAT_RACER_BURST", "1000000"),
];

/// All-in-one settings for tests: clap's defaults, the data under
/// `data_dir`, and [`QUICK_FLAGS`].
pub fn test_config(data_dir: &Path) -> alleycat::Config {
    use clap::Parser as _;
    let mut args = vec!["alleycat".to_owned(), "--data-dir".to_owned()];
    args.push(data_dir.to_str().unwrap().to_owned());
    for (variable, value) in QUICK_FLAGS {
        args.push(flag_of(variable));
        args.push(value.to_owned());
    }
    alleycat::Config::parse_from(args)
}

/// [`test_config`], but the transformer delivers nothing while it runs (an
/// hour's interval, no quiet flush), only at its shutdown flush: no class
/// file changes under a test that needs none.
pub fn test_config_without_delivery(data_dir: &Path) -> alleycat::Config {
    let mut config = test_config(data_dir);
    config.transformer.buffer_interval = Duration::from_secs(3600);
    config.transformer.buffer_idle = Duration::ZERO;
    config
}

/// The flag of an `ALLEYCAT_*` variable (both share one name scheme).
pub fn flag_of(variable: &str) -> String {
    let name = variable
        .strip_prefix("ALLEYCAT_")
        .expect("an ALLEYCAT_ variable");
    format!("--{}", name.to_lowercase().replace('_', "-"))
}

impl Server {
    pub async fn start(data_dir: &Path) -> Server {
        Server::start_with(test_config(data_dir)).await
    }

    pub async fn start_with(config: alleycat::Config) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let task = tokio::spawn(alleycat::run(
            listener,
            config,
            stop.clone().cancelled_owned(),
        ));
        let server = Server { base, stop, task };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        let url = format!("{}/healthz", self.base);
        eventually("the server to become healthy", || async {
            reqwest::get(&url)
                .await
                .ok()
                .filter(|r| r.status() == 200)
                .map(|_| ())
        })
        .await;
    }

    /// Graceful shutdown, as on SIGTERM; returns once every service stopped.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(PATIENCE, self.task)
            .await
            .expect("shutdown in time")
            .unwrap()
            .unwrap();
    }

    pub fn ws_url(&self, path: &str) -> String {
        format!("{}{path}", self.base.replacen("http://", "ws://", 1))
    }
}

/// Polls `check` until it yields a value, panicking after [`PATIENCE`]
/// (a check that hangs, such as a request a stuck server never answers,
/// counts against it too).
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, check()).await {
            Ok(Some(value)) => return value,
            Ok(None) => {}
            Err(_) => panic!("timed out waiting for {what} (the last check hung)"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One racer's telemetry for one second. Cadence and resistance are whole
/// quarters, so the reference below can compute outputs exactly.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub race: u64,
    pub class: u8,
    pub racer: u64,
    pub second: u16,
    pub last: bool,
    pub cadence_q: u32,
    pub resistance_q: u32,
}

impl Sample {
    pub fn json(&self) -> Value {
        json!({
            "event": if self.last { "final" } else { "update" },
            "deviceTimestamp": 1_619_185_789_753_u64 + u64::from(self.second) * 1000,
            "second": self.second,
            "raceId": self.race,
            "name": format!("Racer {}", self.racer),
            "racerId": self.racer,
            "classId": self.class,
            "cadence": f64::from(self.cadence_q) / 4.0,
            "resistance": f64::from(self.resistance_q) / 4.0,
        })
    }

    /// `((c + 35) * (r + 65)) / 100` rounded half-up to 4 decimals, in exact
    /// integer arithmetic (independent of the service's float formula).
    pub fn expected_output(&self) -> f64 {
        let sixteenths = u64::from(self.cadence_q + 140) * u64::from(self.resistance_q + 260);
        // output * 10^4 = sixteenths / 16 * 100 = sixteenths * 25 / 4
        let scaled = (sixteenths * 25 + 2) / 4;
        scaled as f64 / 10_000.0
    }
}

/// A deterministic race: `racers` racers of `class` riding `seconds` seconds.
pub fn race(race: u64, class: u8, first_racer: u64, racers: u64, seconds: u16) -> Vec<Vec<Sample>> {
    let mut state = race.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ u64::from(class);
    let mut next = move || {
        // xorshift: repeatable, no dependency.
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    (1..=seconds)
        .map(|second| {
            (first_racer..first_racer + racers)
                .map(|racer| Sample {
                    race,
                    class,
                    racer,
                    second,
                    last: second == seconds,
                    cadence_q: 120 + (next() % 240) as u32,
                    resistance_q: 132 + (next() % 212) as u32,
                })
                .collect()
        })
        .collect()
}

/// Per class: second -> racer -> best output, as the class files must hold.
pub type Bests = BTreeMap<u8, BTreeMap<u16, BTreeMap<u64, f64>>>;

pub fn bests<'a>(samples: impl IntoIterator<Item = &'a Sample>) -> Bests {
    let mut bests = Bests::new();
    for s in samples {
        let best = bests
            .entry(s.class)
            .or_default()
            .entry(s.second)
            .or_default()
            .entry(s.racer)
            .or_insert(f64::MIN);
        *best = best.max(s.expected_output());
    }
    bests
}

/// Whether a class file holds every best of `want` (at least as good): all
/// acknowledged records are in it. Records that were refused may be too
/// (a put that failed part way), so it may hold more.
pub fn holds_all(
    got: &BTreeMap<u16, BTreeMap<u64, f64>>,
    want: &BTreeMap<u16, BTreeMap<u64, f64>>,
) -> bool {
    want.iter().all(|(second, racers)| {
        racers.iter().all(|(racer, best)| {
            got.get(second)
                .and_then(|r| r.get(racer))
                .is_some_and(|g| g >= best)
        })
    })
}

/// Panics if a class file holds anything that was never sent, or a value
/// above the best sent.
pub fn assert_only_sent(class: u8, got: &BTreeMap<u16, BTreeMap<u64, f64>>, sent: &Bests) {
    for (second, racers) in got {
        for (racer, value) in racers {
            let bound = sent
                .get(&class)
                .and_then(|c| c.get(second))
                .and_then(|s| s.get(racer));
            assert!(
                bound.is_some_and(|b| value <= b),
                "class {class} second {second} racer {racer}: {value} was never sent (best sent {bound:?})"
            );
        }
    }
}

/// A class file as the original frontend reads it: gunzip, then JSON.
pub fn decode_class_file(gz: &[u8]) -> Value {
    use std::io::Read;
    let mut json = Vec::new();
    flate2::read::GzDecoder::new(gz)
        .read_to_end(&mut json)
        .expect("class file is gzip");
    serde_json::from_slice(&json).expect("class file is JSON")
}

/// `class-N.gz` decoded into the [`Bests`] shape, or `None` on 404.
pub async fn fetch_class(base: &str, class: u8) -> Option<BTreeMap<u16, BTreeMap<u64, f64>>> {
    let response = reqwest::get(format!("{base}/history/class-{class}.gz"))
        .await
        .unwrap();
    if response.status() == 404 {
        return None;
    }
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/gzip");
    let value = decode_class_file(&response.bytes().await.unwrap());
    Some(serde_json::from_value(value).expect("class file has the reference shape"))
}

/// Waits until the rankings' all-time standings of `class` hold, for each
/// of `racers`, what its published class file holds now (nothing, for a
/// racer the file does not list). The rankings re-read class files on
/// their own schedule after history publishes them: a fixed sleep is a
/// guess on a loaded machine.
pub async fn wait_for_rankings_to_load_class(
    base: &str,
    class: u8,
    racers: impl IntoIterator<Item = u64>,
) {
    let racers: std::collections::BTreeSet<u64> = racers.into_iter().collect();
    let client = reqwest::Client::new();
    eventually(
        &format!("the rankings to hold class-{class}.gz"),
        || async {
            let file = fetch_class(base, class).await.unwrap_or_default();
            for &racer in &racers {
                let published: BTreeMap<u16, f64> = file
                    .iter()
                    .filter_map(|(second, bests)| bests.get(&racer).map(|best| (*second, *best)))
                    .collect();
                let response = client
                    .get(format!("{base}/v1/racers/{racer}/bests?classId={class}"))
                    .send()
                    .await
                    .ok()?;
                let held: BTreeMap<u16, f64> = if response.status() == 404 {
                    BTreeMap::new()
                } else {
                    let body: Value = response.json().await.ok()?;
                    serde_json::from_value(body["seconds"].clone()).ok()?
                };
                if held != published {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;
}

/// Waits until every class of `expected` is published exactly as expected.
pub async fn wait_for_bests(base: &str, expected: &Bests) {
    for (class, want) in expected {
        eventually(
            &format!("class-{class}.gz to hold the expected bests"),
            || async { (fetch_class(base, *class).await.as_ref() == Some(want)).then_some(()) },
        )
        .await;
    }
}

/// POSTs a JSON body; returns (status, JSON answer).
pub async fn post_json(client: &reqwest::Client, base: &str, body: &Value) -> (u16, Value) {
    let response = client
        .post(format!("{base}/v1/telemetry"))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

pub async fn post_raw(
    client: &reqwest::Client,
    base: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (u16, Value) {
    let response = client
        .post(format!("{base}/v1/telemetry"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A service process of the real `alleycat` binary.
pub struct Service {
    pub child: tokio::process::Child,
    pub base: String,
    /// Its log so far (stderr), for tests that check what it says.
    pub log: Arc<std::sync::Mutex<String>>,
}

impl Service {
    /// SIGKILL: no flush, no goodbye.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }

    /// SIGTERM, then wait for a graceful exit.
    pub async fn terminate(mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        let pid = self.child.id().expect("running");
        kill(Pid::from_raw(pid as i32), Signal::SIGTERM).unwrap();
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .expect("exits in time")
            .unwrap();
        assert!(status.success(), "exit status {status}");
    }
}

/// A loopback port no other child of this test run was given: bound by the
/// kernel's choice, then released for the child to bind.
fn free_port() -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if GIVEN.lock().unwrap().get_or_insert_default().insert(port) {
            return port;
        }
    }
}

/// The `alleycat` binary, to be run with only the settings the test gives
/// it: none of the `ALLEYCAT_*` (or `RUST_LOG`) variables of the shell that
/// runs the tests, which a developer's may export.
pub fn alleycat_command() -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_alleycat"));
    for (name, _) in std::env::vars_os() {
        if name
            .to_str()
            .is_some_and(|n| n.starts_with("ALLEYCAT_") || n == "RUST_LOG")
        {
            command.env_remove(name);
        }
    }
    command
}

/// The real binary (all-in-one) over `dir` with `env` added; its log is
/// kept in [`Service::log`].
pub async fn spawn_all_in_one(dir: &std::path::Path, env: &[(&str, &str)]) -> Service {
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    env.push((
        "ALLEYCAT_DATA_DIR".to_owned(),
        dir.to_string_lossy().into_owned(),
    ));
    spawn_alleycat(&[], &env).await
}

/// Starts `alleycat <args>` on a free loopback port with `env` added (and
/// [`QUICK_FLAGS`]); returns once its `/healthz` answers 200.
pub async fn spawn_alleycat(args: &[&str], env: &[(String, String)]) -> Service {
    let name = args.first().copied().unwrap_or("all-in-one").to_owned();
    // A port released for the child can be taken by someone else before the
    // child binds it: then the child exits, and another port is tried.
    for _ in 0..3 {
        let base = format!("http://127.0.0.1:{}", free_port());
        let mut command = alleycat_command();
        command
            .args(args)
            .env("ALLEYCAT_LISTEN", base.trim_start_matches("http://"))
            .env("ALLEYCAT_LOG", "info")
            .envs(QUICK_FLAGS)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().unwrap();
        let log = drain_log(&name, child.stderr.take().unwrap());
        let healthz = format!("{base}/healthz");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                eprintln!("alleycat {name} exited before serving ({status}); trying another port");
                break;
            }
            let healthy = reqwest::get(&healthz)
                .await
                .is_ok_and(|r| r.status() == 200);
            if healthy {
                return Service { child, base, log };
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "alleycat {name} did not become healthy in time"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    panic!("alleycat {name} exited before serving three times (ALLEYCAT_TEST_LOGS=1 shows why)");
}

/// Most of a child's log kept for the test to read; the rest is read and
/// dropped.
const LOG_KEPT: usize = 4 << 20;

/// Reads a child's log to the end, so it never blocks on a full pipe, and
/// keeps it (up to [`LOG_KEPT`] bytes) for the test; shows it when
/// `ALLEYCAT_TEST_LOGS` is set.
fn drain_log(name: &str, stderr: tokio::process::ChildStderr) -> Arc<std::sync::Mutex<String>> {
    use tokio::io::{AsyncBufReadExt as _, BufReader};
    let name = name.to_owned();
    let show = std::env::var_os("ALLEYCAT_TEST_LOGS").is_some();
    let kept = Arc::new(std::sync::Mutex::new(String::new()));
    let sink = Arc::clone(&kept);
    tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if show {
                eprintln!("[{name}] {line}");
            }
            let mut log = sink.lock().unwrap();
            if log.len() + line.len() < LOG_KEPT {
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
    kept
}

/// Makes every write of the history store fail: its `.tmp` directory
/// becomes a file (the reproduction). Reads still work.
pub fn break_history_writes(data: &std::path::Path) {
    let tmp = data.join("history/.tmp");
    std::fs::rename(&tmp, data.join("history/.tmp.bak")).unwrap();
    std::fs::write(&tmp, b"").unwrap();
}

/// Undoes [`break_history_writes`]. The store makes its `.tmp` again by
/// itself as soon as the file is gone (it recreates what it needs), and a
/// write may be staged in it before the old directory is put back: then
/// the old one holds only writes that failed, and goes.
pub fn repair_history_writes(data: &std::path::Path) {
    let tmp = data.join("history/.tmp");
    let old = data.join("history/.tmp.bak");
    std::fs::remove_file(&tmp).unwrap();
    if let Err(e) = std::fs::rename(&old, &tmp) {
        assert!(
            tmp.is_dir(),
            "history/.tmp neither put back nor recreated: {e}"
        );
        std::fs::remove_dir_all(&old).unwrap();
    }
}
