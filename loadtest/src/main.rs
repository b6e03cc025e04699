//! `alleycat-loadtest`: simulates a fleet of racers (and ranking viewers)
//! against an Alleycat deployment and reports what it achieved.
//!
//! ```text
//! cargo run --release -p alleycat-loadtest -- --racers 1000 --viewers 100 --duration 60
//! ```

use alleycat_loadtest::{freshness, racers, report, schedule, sim, stats, target, viewers};

use clap::Parser;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// The harness shares the machine with the server it measures, so its own
/// cost is taken from the server: on glibc's allocator, `malloc` and
/// `free` were about a tenth of the harness's CPU in the stretch run.
/// Transparent huge pages are turned off as the server turns them off
/// (`alleycat_runtime::memory`): mimalloc asks for them, and zeroing 2 MiB
/// pages as 10,000 bikes connect put a spike into the first second of run 1.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Longest the bikes and viewers may take to connect before sending starts.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Transport {
    /// One WebSocket per bike.
    Ws,
    /// HTTP batches, as a gym gateway sends them.
    Http,
    /// PutRecords straight onto a Kinesis stream, like the original simulator.
    Kinesis,
}

/// Load-test an Alleycat deployment with simulated racers and viewers.
#[derive(Debug, Parser)]
#[command(name = "alleycat-loadtest", version)]
struct Args {
    /// Base URL of the ingest (or all-in-one) service.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    target: String,
    /// Base URL of the rankings service, if not the target.
    #[arg(long)]
    rankings: Option<String>,
    /// Base URL serving /history, if not the target.
    #[arg(long)]
    history: Option<String>,
    /// Racers, each sending one message a second.
    #[arg(long, default_value = "1000", value_parser = clap::value_parser!(u64).range(1..=100_000))]
    racers: u64,
    /// Classes the racers are spread over.
    #[arg(long, default_value = "6", value_parser = clap::value_parser!(u8).range(1..=6))]
    classes: u8,
    /// Seconds of sending.
    #[arg(long, default_value = "60", value_parser = clap::value_parser!(u64).range(1..))]
    duration: u64,
    /// Seconds per race; a new race starts every this many seconds.
    #[arg(long, default_value = "300", value_parser = clap::value_parser!(u16).range(2..=3600))]
    race_seconds: u16,
    /// How the racers send.
    #[arg(long, value_enum, default_value = "ws")]
    transport: Transport,
    /// Racers per HTTP gateway (or per Kinesis PutRecords call).
    #[arg(long, default_value = "100", value_parser = clap::value_parser!(u64).range(1..=500))]
    batch: u64,
    /// Ranking viewers (WebSockets), each following one racer.
    #[arg(long, default_value = "0")]
    viewers: u64,
    /// Racers of its class in a viewer's follow list (`&follow=`), besides
    /// the racer it follows (0: no list).
    #[arg(long, default_value = "0", value_parser = clap::value_parser!(u64).range(0..=100))]
    follow: u64,
    /// Every this many viewers, one sends a follow list (1: all of them).
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u64).range(1..))]
    follow_every: u64,
    /// Seed of the racers' rides.
    #[arg(long, default_value = "1")]
    seed: u64,
    /// Class whose file is watched for history freshness (0: none).
    #[arg(long, default_value = "1", value_parser = clap::value_parser!(u8).range(0..=6))]
    freshness_class: u8,
    /// Longest wait after sending for records to show up in history.
    #[arg(long, default_value = "30")]
    settle: u64,
    /// Kinesis stream for `--transport kinesis` (AWS settings from the environment).
    #[arg(long, env = "ALLEYCAT_STREAM_NAME", default_value = "alleycat")]
    stream_name: String,
    /// Pid of the target process (default: whoever listens on the target's port here).
    #[arg(long)]
    target_pid: Option<u32>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
    /// Write a self-contained HTML report with charts here.
    #[arg(long)]
    html: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    alleycat_runtime::memory::prefer_small_pages();
    let args = Args::parse();
    let target_url = args.target.trim_end_matches('/').to_owned();
    let rankings_url = args.rankings.clone().unwrap_or_else(|| target_url.clone());
    let history_url = args.history.clone().unwrap_or_else(|| target_url.clone());
    let fleet = sim::Fleet {
        racers: args.racers,
        classes: args.classes,
        race_seconds: args.race_seconds,
        seed: args.seed,
    };
    let stats = Arc::new(stats::Stats::new());
    let samples = Arc::new(freshness::Samples::new(args.freshness_class));
    let port = reqwest::Url::parse(&target_url)?
        .port_or_known_default()
        .unwrap_or(80);
    let target_pid = args.target_pid.or_else(|| target::listening_pid(port));

    let (starter, schedule) = schedule::new();
    let run = racers::Run {
        fleet,
        target: target_url.clone(),
        schedule: schedule.clone(),
        stats: Arc::clone(&stats),
        samples: Arc::clone(&samples),
    };

    let mut tasks = Vec::new();
    for v in 0..args.viewers {
        let racer = v % args.racers;
        let follow = if v % args.follow_every == 0 {
            fleet
                .classmates(racer, args.follow as usize)
                .into_iter()
                .map(|i| fleet.racer_id(i))
                .collect()
        } else {
            Vec::new()
        };
        tasks.push(tokio::spawn(viewers::viewer(
            rankings_url.clone(),
            fleet.class_of(racer),
            fleet.racer_id(racer),
            follow,
            schedule.clone(),
            Arc::clone(&stats),
        )));
    }
    match args.transport {
        Transport::Ws => {
            for i in 0..args.racers {
                tasks.push(tokio::spawn(racers::websocket_bike(run.clone(), i)));
            }
        }
        Transport::Http => {
            for start in (0..args.racers).step_by(args.batch as usize) {
                tasks.push(tokio::spawn(racers::http_gateway(
                    run.clone(),
                    start..(start + args.batch).min(args.racers),
                )));
            }
        }
        Transport::Kinesis => {
            let client = aws_sdk_kinesis::Client::new(&alleycat_storage::load_aws_config().await);
            for start in (0..args.racers).step_by(args.batch as usize) {
                let racers = start..(start + args.batch).min(args.racers);
                tasks.push(tokio::spawn(racers::kinesis_putter(
                    run.clone(),
                    client.clone(),
                    args.stream_name.clone(),
                    racers,
                )));
            }
        }
    }

    // Everyone connects before the clock starts; a WebSocket bike or viewer
    // counts as ready once connected or given up.
    let connecting = args.viewers
        + if args.transport == Transport::Ws {
            args.racers
        } else {
            0
        };
    let connect_started = tokio::time::Instant::now();
    let spinner = indicatif::ProgressBar::new(connecting);
    spinner.set_message("connecting bikes and viewers");
    while stats.ready.load(Ordering::Relaxed) < connecting
        && connect_started.elapsed() < CONNECT_TIMEOUT
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
        spinner.set_position(stats.ready.load(Ordering::Relaxed));
    }
    spinner.finish_and_clear();
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let target = target_pid.and_then(target::Target::new);
    stats.begin_now();
    let window = starter.start(Duration::from_secs(args.duration));
    let (start, until) = (window.begin, window.until);

    let watcher = {
        let (samples, history_url) = (Arc::clone(&samples), history_url.clone());
        let watch_until = until + Duration::from_secs(args.settle);
        tokio::spawn(async move {
            samples
                .watch(&history_url, Duration::from_millis(500), watch_until)
                .await
        })
    };

    let progress = indicatif::ProgressBar::new(args.duration);
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} s  {msg}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    while tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_secs(1)).await;
        stats.prune_unseen(Duration::from_secs(10));
        progress.set_position(start.elapsed().as_secs().min(args.duration));
        progress.set_message(format!(
            "sent {} accepted {} errors {} pushes {}",
            stats.sent.load(Ordering::Relaxed),
            stats.accepted.load(Ordering::Relaxed),
            stats.errors().values().sum::<u64>(),
            stats.pushes.load(Ordering::Relaxed)
        ));
    }
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(15), task).await;
    }
    // Every send falls in the window [begin, until).
    let sending = args.duration as f64;
    progress.finish_with_message("sending done; waiting for history");
    let usage = target.as_ref().and_then(target::Target::usage);
    let _ = watcher.await;

    let report = report::Report {
        settings: BTreeMap::from([
            ("target".to_owned(), target_url),
            ("racers".to_owned(), args.racers.to_string()),
            ("classes".to_owned(), args.classes.to_string()),
            ("duration".to_owned(), args.duration.to_string()),
            (
                "transport".to_owned(),
                format!("{:?}", args.transport).to_lowercase(),
            ),
            ("viewers".to_owned(), args.viewers.to_string()),
            ("follow".to_owned(), args.follow.to_string()),
            ("follow_every".to_owned(), args.follow_every.to_string()),
            ("seed".to_owned(), args.seed.to_string()),
        ]),
        records_sent: stats.sent.load(Ordering::Relaxed),
        records_accepted: stats.accepted.load(Ordering::Relaxed),
        errors: stats.errors(),
        ingest_latency_ms: stats.ingest_ms(),
        ranking_latency_ms: stats.ranking_ms(),
        history_freshness_s: samples.freshness_s(),
        history_missing: samples.pending() as u64,
        achieved_rate: stats.accepted.load(Ordering::Relaxed) as f64 / sending,
        pushes_received: stats.pushes.load(Ordering::Relaxed),
        push_bytes_per_viewer_s: stats.push_bytes.load(Ordering::Relaxed) as f64
            / args.viewers.max(1) as f64
            / sending,
        pushes_with_ghost: stats.ghost_pushes.load(Ordering::Relaxed),
        pushes_with_following: stats.following_pushes.load(Ordering::Relaxed),
        connect_seconds,
        target: usage,
        timeline: stats.timeline(),
    };
    println!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)?;
    }
    if let Some(path) = &args.html {
        std::fs::write(path, report.html())?;
    }
    if report.failed() {
        eprintln!("{}", report.verdict());
        std::process::exit(1);
    }
    Ok(())
}
