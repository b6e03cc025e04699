//! An HTTP proxy in front of the local Kinesis or S3 server that breaks on
//! command, as the real services do: down (connections dropped, none
//! accepted), slow (each answer delayed), throttling (a share of requests
//! answered with the service's throttling error). The server behind keeps
//! its data, as Kinesis and S3 do through an outage.

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Which service's throttling error to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    Kinesis,
    S3,
}

/// What the proxy does to requests now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Forward as is.
    None,
    /// Drop every connection; accept none.
    Down,
    /// Forward, then hold each answer this long.
    Slow(Duration),
    /// Answer this share of requests (0..=1) with the throttling error.
    Throttle(f64),
    /// Answer every write (Kinesis PutRecord(s)) with the throttling
    /// error, and forward everything else: a shard over its write limit
    /// while the stream itself answers.
    ThrottleWrites,
}

pub struct FaultProxy {
    pub url: String,
    fault: watch::Sender<Fault>,
    /// Requests answered with a fault, for the test to check it bit.
    pub faulted: Arc<Mutex<u64>>,
}

impl FaultProxy {
    pub async fn start(upstream: &str, kind: Upstream) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (fault, watcher) = watch::channel(Fault::None);
        let faulted = Arc::new(Mutex::new(0));
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let upstream = upstream.trim_end_matches('/').to_owned();
        let counter = faulted.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                if *watcher.borrow() == Fault::Down {
                    drop(stream);
                    continue;
                }
                let mut down = watcher.clone();
                let (client, upstream, counter) =
                    (client.clone(), upstream.clone(), counter.clone());
                let faults = watcher.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request| {
                        let fault = *faults.borrow();
                        forward(
                            client.clone(),
                            upstream.clone(),
                            kind,
                            fault,
                            counter.clone(),
                            request,
                        )
                    });
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        _ = down.wait_for(|f| *f == Fault::Down) => {}
                    }
                });
            }
        });
        FaultProxy {
            url,
            fault,
            faulted,
        }
    }

    pub fn set(&self, fault: Fault) {
        eprintln!("[fault proxy {}] {fault:?}", self.url);
        self.fault.send_replace(fault);
    }

    pub fn faulted(&self) -> u64 {
        *self.faulted.lock().unwrap()
    }
}

async fn forward(
    client: reqwest::Client,
    upstream: String,
    kind: Upstream,
    fault: Fault,
    faulted: Arc<Mutex<u64>>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let is_write = request
        .headers()
        .get("x-amz-target")
        .and_then(|t| t.to_str().ok())
        .is_some_and(|t| t.ends_with(".PutRecords") || t.ends_with(".PutRecord"));
    let throttle = match fault {
        Fault::Throttle(share) => fastrand::f64() < share,
        Fault::ThrottleWrites => is_write,
        _ => false,
    };
    if throttle {
        *faulted.lock().unwrap() += 1;
        return Ok(throttled(kind));
    }
    let (parts, body) = request.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forwarded = client.request(parts.method.clone(), format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        if !matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding"
        ) {
            forwarded = forwarded.header(name, value);
        }
    }
    let answer = match forwarded.body(body).send().await {
        Ok(answer) => answer,
        Err(e) => {
            let mut response = Response::new(Full::new(Bytes::from(e.to_string())));
            *response.status_mut() = hyper::StatusCode::BAD_GATEWAY;
            return Ok(response);
        }
    };
    let mut response = Response::builder().status(answer.status());
    for (name, value) in answer.headers() {
        if !matches!(
            name.as_str(),
            "connection" | "content-length" | "transfer-encoding"
        ) {
            response = response.header(name, value);
        }
    }
    let bytes = answer.bytes().await.unwrap_or_default();
    if let Fault::Slow(pause) = fault {
        *faulted.lock().unwrap() += 1;
        tokio::time::sleep(pause).await;
    }
    Ok(response.body(Full::new(bytes)).unwrap())
}

/// The service's own "slow down" answer, which its SDK classifies as
/// throttling.
fn throttled(kind: Upstream) -> Response<Full<Bytes>> {
    let (status, content_type, body, error_type) = match kind {
        Upstream::Kinesis => (
            400,
            "application/x-amz-json-1.1",
            r#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard"}"#,
            Some("ProvisionedThroughputExceededException"),
        ),
        Upstream::S3 => (
            503,
            "application/xml",
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message><RequestId>fault</RequestId><HostId>fault</HostId></Error>",
            None,
        ),
    };
    let mut response = Response::builder()
        .status(status)
        .header("content-type", content_type);
    if let Some(error_type) = error_type {
        response = response.header("x-amzn-errortype", error_type);
    }
    response.body(Full::new(Bytes::from(body))).unwrap()
}
