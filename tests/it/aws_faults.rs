//! The AWS backends through outages: Kinesis and S3 each down, slow and
//! throttling in turn (a fault proxy in front of the local servers) while
//! racers keep posting. The services retry with backoff, say they are not
//! ready while they cannot make progress, recover by themselves, and every
//! acknowledged record reaches its class file.

use crate::common::aws::Aws;
use crate::common::fault_proxy::{Fault, FaultProxy, Upstream};
use crate::common::gateways::{Gateways, Posted};
use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};

async fn ready(base: &str) -> (u16, Value) {
    let client = reqwest::Client::new();
    match client
        .get(format!("{base}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
    {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(_) => (0, Value::Null),
    }
}

/// Waits until `base` says it is not ready; returns the reasons.
async fn wait_not_ready(what: &str, base: &str) -> Value {
    eventually(&format!("{what} to report not ready"), || async {
        let (status, body) = ready(base).await;
        (status == 503).then_some(body)
    })
    .await
}

/// Waits until `base` is ready again; returns how long that took.
async fn wait_ready(what: &str, base: &str) -> Duration {
    let started = Instant::now();
    eventually(&format!("{what} to be ready again"), || async {
        (ready(base).await.0 == 200).then_some(())
    })
    .await;
    started.elapsed()
}

/// Waits until the acknowledged count grows (records flow again).
async fn wait_flowing(riders: &Gateways) -> Duration {
    let started = Instant::now();
    let before = riders.acked();
    eventually("acknowledgements to resume", || async {
        (riders.acked() > before).then_some(())
    })
    .await;
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn outages_slowness_and_throttling_lose_nothing_and_heal_by_themselves() {
    let aws = Aws::fresh("faults", 2).await;
    let kinesis = FaultProxy::start(
        &std::env::var("AWS_ENDPOINT_URL_KINESIS").unwrap(),
        Upstream::Kinesis,
    )
    .await;
    let s3 = FaultProxy::start(&std::env::var("AWS_ENDPOINT_URL_S3").unwrap(), Upstream::S3).await;
    let mut env = aws.env();
    env.extend([
        ("AWS_ENDPOINT_URL_KINESIS".to_owned(), kinesis.url.clone()),
        ("AWS_ENDPOINT_URL_S3".to_owned(), s3.url.clone()),
        ("ALLEYCAT_PUT_TIMEOUT_MS".to_owned(), "2000".to_owned()),
    ]);
    let ingest = spawn_alleycat(&["ingest"], &env).await;
    let transformer = spawn_alleycat(&["transformer"], &env).await;
    let history = spawn_alleycat(&["history"], &env).await;
    let riders = Gateways::start(&ingest.base, 6, 500, 10, Duration::from_millis(100));
    aws.wait_first_class_file().await;

    let mut report = Vec::new();
    // Kinesis down: ingest cannot store, so it refuses and says so.
    kinesis.set(Fault::Down);
    let reasons = wait_not_ready("ingest with Kinesis down", &ingest.base).await;
    eprintln!("ingest not ready: {reasons}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    kinesis.set(Fault::None);
    let healed = wait_ready("ingest", &ingest.base).await;
    let flowing = wait_flowing(&riders).await;
    report.push(("Kinesis down 10 s", healed, flowing));

    // Every write throttled while the stream answers everything else:
    // puts give up after their timeout (503), and readiness says so too.
    kinesis.set(Fault::ThrottleWrites);
    let reasons = wait_not_ready("ingest with its writes throttled", &ingest.base).await;
    eprintln!("ingest not ready: {reasons}");
    let reason = reasons["parts"]["stream"].as_str().unwrap_or_default();
    assert!(reason.contains("PutRecords"), "{reasons}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    kinesis.set(Fault::None);
    let healed = wait_ready("ingest", &ingest.base).await;
    let flowing = wait_flowing(&riders).await;
    report.push(("Kinesis writes throttled 5 s", healed, flowing));

    // S3 down: delivery and merging stall, then catch up.
    s3.set(Fault::Down);
    let reasons = wait_not_ready("history with S3 down", &history.base).await;
    eprintln!("history not ready: {reasons}");
    tokio::time::sleep(Duration::from_secs(10)).await;
    s3.set(Fault::None);
    let healed = wait_ready("history", &history.base)
        .await
        .max(wait_ready("transformer", &transformer.base).await);
    report.push(("S3 down 10 s", healed, Duration::ZERO));

    // Throttling and slowness: progress slows, nothing is lost.
    kinesis.set(Fault::Throttle(0.5));
    s3.set(Fault::Throttle(0.5));
    tokio::time::sleep(Duration::from_secs(5)).await;
    kinesis.set(Fault::Slow(Duration::from_millis(1500)));
    s3.set(Fault::Slow(Duration::from_millis(1500)));
    tokio::time::sleep(Duration::from_secs(5)).await;
    kinesis.set(Fault::None);
    s3.set(Fault::None);
    assert!(kinesis.faulted() > 0 && s3.faulted() > 0, "the faults bit");
    let flowing = wait_flowing(&riders).await;
    report.push(("throttled 5 s, slow 5 s", Duration::ZERO, flowing));

    let Posted {
        sent,
        acked,
        refused,
    } = riders.finish().await;
    assert!(
        acked.len() > 1000,
        "only {} records acknowledged",
        acked.len()
    );
    // A refused batch may have been stored in part (a put that timed out
    // half way): the class files hold every acknowledged record, and
    // nothing that was never sent.
    let sent = bests(&sent);
    for (class, want) in &bests(&acked) {
        eventually(
            &format!("class-{class}.gz to hold every acknowledged record"),
            || async { holds_all(&aws.class_file(*class).await?, want).then_some(()) },
        )
        .await;
        assert_only_sent(*class, &aws.class_file(*class).await.unwrap(), &sent);
    }
    for (base, name) in [
        (&ingest.base, "ingest"),
        (&transformer.base, "transformer"),
        (&history.base, "history"),
    ] {
        assert_eq!(ready(base).await.0, 200, "{name} ready at the end");
    }
    eprintln!(
        "faults: {} records acknowledged, {refused} requests refused while down, 0 lost",
        acked.len()
    );
    for (fault, healed, flowing) in report {
        eprintln!("  {fault}: ready again {healed:?} after, acks again {flowing:?} after");
    }
}
