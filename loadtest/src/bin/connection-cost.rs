//! What one open connection costs the server, and whether it still serves
//! others while they hang: opens `--count` connections of one kind (idle
//! bike WebSockets, idle viewer WebSockets, or slow clients that send part
//! of a request's headers and stall), reads the server's resident memory
//! before and after, and times legitimate requests while they are open.
//!
//! `cargo run --release -p alleycat-loadtest --bin connection-cost -- --kind slow --count 5000`

use alleycat_loadtest::socket;
use alleycat_loadtest::target::{listening_pid, resident_kib};
use clap::{Parser, ValueEnum};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Kind {
    /// An idle telemetry WebSocket.
    Bike,
    /// An idle rankings WebSocket.
    Viewer,
    /// Part of a request's headers, then nothing.
    Slow,
}

#[derive(Parser)]
struct Args {
    /// The server (on this machine, so that its memory can be read).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    #[arg(long, value_enum)]
    kind: Kind,
    /// Connections to open.
    #[arg(long, default_value = "2000")]
    count: usize,
    /// Legitimate requests timed while they are open.
    #[arg(long, default_value = "200")]
    requests: usize,
    /// Then send the server SIGTERM and time its exit with the connections
    /// still open (it must not wait for them).
    #[arg(long)]
    terminate: bool,
}

/// An open connection, kept open for as long as it is held.
type Held = Box<dyn Send>;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let url: reqwest::Url = args.target.parse()?;
    let addr = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(80)
    );
    let pid = listening_pid(url.port().unwrap_or(80))
        .ok_or_else(|| anyhow::anyhow!("no process on this machine listens on {addr}"))?;
    let ws = args.target.replacen("http://", "ws://", 1);
    let open = |kind: Kind| {
        let (addr, ws) = (addr.clone(), ws.clone());
        async move {
            Ok::<_, anyhow::Error>(match kind {
                Kind::Bike => {
                    let url = format!("{ws}/v1/telemetry/ws");
                    Box::new(socket::bike(&url).await?) as Held
                }
                Kind::Viewer => {
                    let url = format!("{ws}/v1/rankings/ws?classId=1");
                    Box::new(socket::viewer(&url).await?) as Held
                }
                Kind::Slow => {
                    let mut stream = TcpStream::connect(&addr).await?;
                    stream
                        .write_all(b"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nX-Slow: ")
                        .await?;
                    Box::new(stream) as Held
                }
            })
        }
    };
    // Warm up allocator pools and the runtime with a few of the same kind.
    drop(futures_util::future::join_all((0..50).map(|_| open(args.kind))).await);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = resident_kib(pid).unwrap_or(0);

    let mut held = Vec::with_capacity(args.count);
    let mut failed = 0;
    for chunk in (0..args.count).collect::<Vec<_>>().chunks(200) {
        for result in futures_util::future::join_all(chunk.iter().map(|_| open(args.kind))).await {
            match result {
                Ok(h) => held.push(h),
                Err(_) => failed += 1,
            }
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = resident_kib(pid).unwrap_or(0);

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .pool_max_idle_per_host(0)
        .build()?;
    let mut latencies = Vec::new();
    let mut served = 0;
    for _ in 0..args.requests {
        let started = Instant::now();
        if client
            .get(format!("{}/healthz", args.target))
            .send()
            .await
            .is_ok_and(|r| r.status() == 200)
        {
            served += 1;
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        }
    }
    latencies.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    let per = (during as f64 - before as f64) / held.len().max(1) as f64;
    println!(
        "{:?}: {} held ({failed} failed to open); server RSS {before} -> {during} KiB: {per:.1} KiB per connection; \
         {served}/{} legitimate requests served meanwhile, p50 {:.1} ms, p99 {:.1} ms",
        args.kind,
        held.len(),
        args.requests,
        pick(0.5),
        pick(0.99),
    );
    if args.terminate {
        use nix::sys::signal::{Signal, kill};
        let started = Instant::now();
        kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGTERM)?;
        let gone = || {
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|s| s.trim_start().starts_with('Z'))
                })
        };
        while !gone() && started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        println!(
            "SIGTERM with {} {:?} connections open: exited after {:.0} ms",
            held.len(),
            args.kind,
            started.elapsed().as_secs_f64() * 1000.0
        );
    }
    Ok(())
}
