//! Hostile and broken HTTP clients through real sockets: slow headers,
//! idle connections, too many connections, slow bodies, and requests no
//! route serves. None may stop legitimate requests, hold up shutdown, or
//! get anything but the contract's JSON error.

use crate::common::*;
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

fn addr(server: &Server) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// A connection that sent part of a request's headers and stalls.
async fn slow_client(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    stream
}

/// `count` slow clients the server admitted. A connection from before (the
/// readiness check's, closed by its client) holds its place until the
/// server has seen it close, which on a loaded machine may come after the
/// first slow clients connect: a client refused meanwhile is replaced, so
/// that the cap is reached by these clients alone.
async fn admitted_slow_clients(server: &Server, count: usize) -> Vec<TcpStream> {
    let deadline = Instant::now() + PATIENCE;
    let mut held = Vec::with_capacity(count);
    while held.len() < count {
        assert!(
            Instant::now() < deadline,
            "{} slow clients admitted",
            held.len()
        );
        let mut batch = Vec::new();
        for _ in held.len()..count {
            batch.push(slow_client(&addr(server)).await);
        }
        // A refused client is answered and closed at once; an admitted
        // one hears nothing until its header timeout.
        tokio::time::sleep(Duration::from_millis(500)).await;
        for stream in batch {
            let mut byte = [0; 1];
            match stream.try_read(&mut byte) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held.push(stream),
                _ => {}
            }
        }
    }
    held
}

/// Reads until the server closes (or `limit` passes); returns what it sent.
async fn read_to_close(stream: &mut TcpStream, limit: Duration) -> Option<String> {
    let mut answer = Vec::new();
    tokio::time::timeout(limit, stream.read_to_end(&mut answer))
        .await
        .ok()?
        .ok()?;
    Some(String::from_utf8_lossy(&answer).into_owned())
}

/// Stops `server` as on SIGTERM, asserting it takes under 3 s with
/// `what` open.
async fn stops_at_once(server: Server, what: &str) {
    let started = Instant::now();
    server.stop().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "shutdown took {took:?} with {what} open"
    );
}

async fn healthz(client: &reqwest::Client, server: &Server) -> u16 {
    client
        .get(format!("{}/healthz", server.base))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_and_idle_connections_are_cut_off_and_never_block_others() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.header_timeout = Duration::from_millis(600);
    let server = Server::start_with(config).await;
    let client = reqwest::Client::new();

    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(slow_client(&addr(&server)).await);
    }
    // An idle keep-alive connection after one whole request.
    let mut idle = TcpStream::connect(addr(&server)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    // While they hang, legitimate requests are served.
    for _ in 0..5 {
        assert_eq!(healthz(&client, &server).await, 200);
    }
    let started = Instant::now();
    for stream in &mut slow {
        assert!(
            read_to_close(stream, Duration::from_secs(10))
                .await
                .is_some(),
            "a slow connection was not closed"
        );
    }
    let answer = read_to_close(&mut idle, Duration::from_secs(10))
        .await
        .expect("the idle connection is closed");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "slow connections held {:?}",
        started.elapsed()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_connection_cap_new_connections_get_503_json_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.max_connections = std::num::NonZeroUsize::new(20).unwrap();
    // Long enough that no slow client times out (freeing its place) while
    // the test checks the cap; short enough to see the room come back
    // below.
    config.server.header_timeout = Duration::from_secs(5);
    let server = Server::start_with(config).await;

    let slow = admitted_slow_clients(&server, 20).await;
    let mut refused = TcpStream::connect(addr(&server)).await.unwrap();
    let answer = read_to_close(&mut refused, Duration::from_secs(2))
        .await
        .expect("refused at once");
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after: 1"), "{answer}");
    let body: Value = serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("too many connections")
    );

    // Once the slow ones time out, there is room again.
    let client = reqwest::Client::new();
    eventually("room for a new connection", || async {
        (healthz(&client, &server).await == 200).then_some(())
    })
    .await;
    drop(slow);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_slow_and_idle_connections_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.header_timeout = Duration::from_secs(60);
    let server = Server::start_with(config).await;
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(slow_client(&addr(&server)).await);
    }
    let mut idle = TcpStream::connect(addr(&server)).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    stops_at_once(server, "slow connections").await;
    for stream in &mut slow {
        assert!(
            read_to_close(stream, Duration::from_secs(1))
                .await
                .is_some()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cuts_off_half_sent_bodies_with_a_503_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    // Far longer than the shutdown may take: only the cut ends them.
    config.server.body_timeout = Duration::from_secs(60);
    let server = Server::start_with(config).await;
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
        stream
            .write_all(
                b"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[{\"event\":",
            )
            .await
            .unwrap();
        stalled.push(stream);
    }
    // The requests are being read (their bodies awaited) before the stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stops_at_once(server, "half-sent bodies").await;
    for stream in &mut stalled {
        let answer = read_to_close(stream, Duration::from_secs(2))
            .await
            .expect("answered and closed");
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("retry-after: 1"), "{answer}");
        assert!(answer.contains("application/json"), "{answer}");
        assert!(answer.contains("shutting down"), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_stalls_is_answered_with_a_json_error_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.body_timeout = Duration::from_millis(500);
    let server = Server::start_with(config).await;
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    stream
        .write_all(
            b"POST /v1/telemetry HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n[{\"event\":",
        )
        .await
        .unwrap();
    let mut answer = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut answer))
        .await
        .expect("answered once the body timed out")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    let status: u16 = answer[9..12].parse().unwrap();
    assert!((400..500).contains(&status), "{answer}");
    assert!(answer.contains("application/json"), "{answer}");
    assert_eq!(fetch_class(&server.base, 1).await, None);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_byte_by_byte_is_cut_off_at_the_body_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.body_timeout = Duration::from_millis(1000);
    let server = Server::start_with(config).await;
    let body = Value::Array(race(1, 1, 1, 1, 1)[0].iter().map(Sample::json).collect()).to_string();
    let mut stream = TcpStream::connect(addr(&server)).await.unwrap();
    let head = format!(
        "POST /v1/telemetry HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // One byte every 200 ms: never a stall as long as a per-chunk timeout.
    let started = Instant::now();
    let mut answer = vec![0; 4096];
    let mut answered = 0;
    for byte in body.as_bytes() {
        if stream.write_all(&[*byte]).await.is_err() {
            break;
        }
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut answer)).await
        {
            answered = n;
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never cut off");
    }
    let answer = String::from_utf8_lossy(&answer[..answered]);
    assert!(answer.starts_with("HTTP/1.1 4"), "{answer}");
    assert!(answer.contains("ALLEYCAT_BODY_TIMEOUT_MS"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fetch_class(&server.base, 1).await, None, "nothing stored");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_no_route_serves_get_the_json_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let cases = [
        (reqwest::Method::GET, "/no/such/route", 404),
        (reqwest::Method::GET, "/v1/telemetry", 405),
        (reqwest::Method::DELETE, "/history/class-1.gz", 405),
        (reqwest::Method::GET, "/v1/races/%FF", 400),
        (reqwest::Method::GET, "/v1/races?classId=%FF", 400),
    ];
    for (method, path, status) in cases {
        let response = client
            .request(method.clone(), format!("{}{path}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{method} {path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{method} {path}"
        );
        if status == 405 {
            assert!(response.headers().contains_key("allow"), "{method} {path}");
        }
        let body: Value = response.json().await.unwrap();
        assert!(
            !body["error"].as_str().unwrap().is_empty(),
            "{method} {path}: {body}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_websockets_are_closed_and_answering_ones_are_kept() {
    use futures_util::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.server.ws_idle_timeout = Duration::from_millis(600);
    let server = Server::start_with(config).await;

    /// The close code the server ends the socket with, reading (and so
    /// answering pings) meanwhile; `None` if still open after `limit`.
    async fn closed_with<S>(socket: &mut S, limit: Duration) -> Option<CloseCode>
    where
        S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>>
            + Unpin,
    {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(deadline, socket.next()).await {
                Err(_) => return None,
                Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| f.code),
                Ok(Some(Ok(_))) => {}
                Ok(_) => return Some(CloseCode::Abnormal),
            }
        }
    }

    // A bike that sends nothing is closed with 1001, its place freed.
    let (mut bike, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/telemetry/ws"))
        .await
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        closed_with(&mut bike, Duration::from_secs(5)).await,
        Some(CloseCode::Away)
    );
    assert!(started.elapsed() >= Duration::from_millis(500));

    // A bike that keeps sending stays open past the timeout (each message
    // starts it again), every message answered; once silent, it is closed.
    let (mut riding, _) = tokio_tungstenite::connect_async(server.ws_url("/v1/telemetry/ws"))
        .await
        .unwrap();
    for sample in race(31, 2, 7_001, 1, 8).into_iter().flatten() {
        futures_util::SinkExt::send(&mut riding, Message::text(sample.json().to_string()))
            .await
            .unwrap();
        let ack = tokio::time::timeout(Duration::from_secs(5), riding.next())
            .await
            .expect("answered")
            .unwrap()
            .unwrap();
        assert!(ack.to_text().unwrap().contains("\"ack\""), "{ack:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        closed_with(&mut riding, Duration::from_secs(5)).await,
        Some(CloseCode::Away),
        "closed once silent"
    );

    // A viewer that answers pings (the client library does, while reading)
    // stays open past the timeout...
    let (mut viewer, _) =
        tokio_tungstenite::connect_async(server.ws_url("/v1/rankings/ws?classId=1"))
            .await
            .unwrap();
    assert_eq!(
        closed_with(&mut viewer, Duration::from_millis(1800)).await,
        None
    );
    // ...and one that answers nothing is closed.
    let (mut deaf, _) =
        tokio_tungstenite::connect_async(server.ws_url("/v1/rankings/ws?classId=1"))
            .await
            .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Closed: with 1001, or reset when the pongs it now sends to the queued
    // pings reach a socket the server has closed already.
    let code = closed_with(&mut deaf, Duration::from_secs(5)).await;
    assert!(
        matches!(code, Some(CloseCode::Away | CloseCode::Abnormal)),
        "{code:?}"
    );
    drop(viewer);
    server.stop().await;
}
