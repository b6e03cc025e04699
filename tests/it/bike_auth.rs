//! Bike authentication and the per-racer rate limit, through real sockets:
//! every way a token can be wrong on HTTP and on the WebSocket, records of
//! another racer, secret rotation and `alleycat token` (the real binary),
//! the open mode without a secret, tokens kept out of the log, a WebSocket
//! outliving its token, and the 429 with `Retry-After` until the bucket
//! refills. Whatever is refused must be missing from the class file.

use crate::common::*;
use alleycat_ingest::AuthSecrets;
use alleycat_ingest::auth::{Claims, SecretSetting};
use base64::Engine as _;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message};

/// The secret that signs, and the previous one, still verifying.
const NEW: &str = "the new secret of at least thirty-two bytes";
const OLD: &str = "the old secret of at least thirty-two bytes";
const CLASS: u8 = 5;
const RACE: u64 = 4242;

fn rotated() -> String {
    format!("{NEW},{OLD}")
}

fn keys(secret: &str) -> AuthSecrets {
    AuthSecrets::parse(secret).unwrap()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token(secret: &str, racer: u64, exp: u64) -> String {
    keys(secret).sign(&Claims {
        sub: racer.to_string(),
        exp,
        iat: None,
    })
}

/// A token that verifies: signed with the first secret, an hour to go.
fn good(racer: u64) -> String {
    token(NEW, racer, now() + 3600)
}

/// Racer `racer`'s record of `second`, in [`CLASS`].
fn sample(racer: u64, second: u16) -> Sample {
    Sample {
        race: RACE,
        class: CLASS,
        racer,
        second,
        last: false,
        cadence_q: 300 + u32::from(second),
        resistance_q: 200,
    }
}

fn b64(value: &Value) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

/// Every kind of bad token, named: missing, malformed, expired, forged
/// (another secret, a changed payload), and of the wrong algorithm.
fn bad_tokens(racer: u64) -> Vec<(&'static str, Option<String>)> {
    let valid = good(racer);
    let (header, rest) = valid.split_once('.').unwrap();
    let (_, signature) = rest.split_once('.').unwrap();
    let claims = json!({"sub": racer.to_string(), "exp": now() + 3600});
    let alg = |alg: &str| b64(&json!({"alg": alg, "typ": "JWT"}));
    vec![
        ("missing", None),
        ("malformed", Some("not-a-jwt".to_owned())),
        ("malformed base64", Some("a.b.c".to_owned())),
        ("expired", Some(token(NEW, racer, now() - 10))),
        (
            "exp in milliseconds: too far in the future",
            Some(token(NEW, racer, now() * 1000)),
        ),
        (
            "forged: another secret",
            Some(token(
                "a secret nobody here knows about of 32+ bytes",
                racer,
                now() + 3600,
            )),
        ),
        (
            "forged: another racer's payload under a valid signature",
            Some(format!(
                "{header}.{}.{signature}",
                b64(&json!({"sub": (racer + 1).to_string(), "exp": now() + 3600}))
            )),
        ),
        (
            "alg none",
            Some(format!("{}.{}.", alg("none"), b64(&claims))),
        ),
        (
            "alg HS512",
            Some(format!("{}.{}.{signature}", alg("HS512"), b64(&claims))),
        ),
        (
            "no exp",
            Some(format!(
                "{header}.{}.{signature}",
                b64(&json!({"sub": racer.to_string()}))
            )),
        ),
    ]
}

async fn start(secret: Option<&str>, rate: Option<(f64, u32)>) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.ingest.auth.auth_secret = secret.map(|s| SecretSetting::from(s.to_owned()));
    if let Some((rate, burst)) = rate {
        config.ingest.racer_rate = rate;
        config.ingest.racer_burst = burst.try_into().unwrap();
    }
    (Server::start_with(config).await, dir)
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Value,
}

async fn post(base: &str, token: Option<&str>, samples: &[Sample]) -> Answer {
    let body = Value::Array(samples.iter().map(Sample::json).collect());
    let mut request = reqwest::Client::new()
        .post(format!("{base}/v1/telemetry"))
        .json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.json().await.unwrap(),
    }
}

/// The JSON error of the ingest contract (`ingest-error.schema.json`).
fn assert_error_shape(body: &Value) {
    static SCHEMA: std::sync::OnceLock<jsonschema::Validator> = std::sync::OnceLock::new();
    let schema = SCHEMA.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/frontend-contract/ingest-error.schema.json"
        );
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    });
    let errors: Vec<String> = schema.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "{body}: {errors:?}");
    assert!(
        body["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{body}"
    );
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens the bike WebSocket with `token` in the header or the query.
async fn open_ws(
    server: &Server,
    header: Option<&str>,
    query: Option<&str>,
) -> Result<Socket, tungstenite::Error> {
    let path = match query {
        Some(token) => format!("/v1/telemetry/ws?token={token}"),
        None => "/v1/telemetry/ws".to_owned(),
    };
    let mut request = server.ws_url(&path).into_client_request().unwrap();
    if let Some(token) = header {
        request
            .headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    tokio_tungstenite::connect_async(request)
        .await
        .map(|(socket, _)| socket)
}

/// Sends one frame and reads its answer.
async fn exchange(socket: &mut Socket, samples: &[Sample]) -> Value {
    let frame = Value::Array(samples.iter().map(Sample::json).collect()).to_string();
    socket.send(Message::text(frame)).await.unwrap();
    let answer = tokio::time::timeout(PATIENCE, socket.next())
        .await
        .expect("an answer in time")
        .unwrap()
        .unwrap();
    serde_json::from_str(answer.to_text().unwrap()).unwrap()
}

/// Waits until the class file holds exactly `accepted`'s bests. Refused
/// records were all sent before the last accepted one, of the same racers:
/// had one been stored, it would be there too.
async fn wait_for_exactly(base: &str, accepted: &[Sample]) {
    wait_for_bests(base, &bests(accepted)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_refuses_every_bad_token_with_401_and_stores_nothing() {
    let (server, _dir) = start(Some(&rotated()), None).await;
    for (i, (what, token)) in bad_tokens(101).into_iter().enumerate() {
        let answer = post(&server.base, token.as_deref(), &[sample(101, i as u16 + 1)]).await;
        assert_eq!(answer.status, 401, "{what}: {}", answer.body);
        let challenge = answer.headers["www-authenticate"].to_str().unwrap();
        assert!(challenge.starts_with("Bearer"), "{what}: {challenge}");
        assert_eq!(answer.body["records"], json!([]), "{what}");
        assert_error_shape(&answer.body);
    }
    // Another scheme, and a bearer with nothing after it.
    for authorization in ["Basic MTAxOnB3", "Bearer ", "Bearer"] {
        let response = reqwest::Client::new()
            .post(format!("{}/v1/telemetry", server.base))
            .header("authorization", authorization)
            .json(&sample(101, 50).json())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
    }
    let accepted = [sample(101, 100)];
    let answer = post(&server.base, Some(&good(101)), &accepted).await;
    assert_eq!((answer.status, answer.body), (202, json!({"accepted": 1})));
    wait_for_exactly(&server.base, &accepted).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_websocket_refuses_every_bad_token_before_the_upgrade() {
    let (server, _dir) = start(Some(&rotated()), None).await;
    for (what, token) in bad_tokens(101) {
        let token = token.as_deref();
        for (place, header, query) in [("header", token, None), ("query", None, token)] {
            if token.is_none() && place == "query" {
                continue; // "missing" is the same either way
            }
            let Err(tungstenite::Error::Http(response)) = open_ws(&server, header, query).await
            else {
                panic!("{what} in the {place}: the upgrade was not refused");
            };
            assert_eq!(response.status(), 401, "{what} in the {place}");
            assert!(
                response.headers()["www-authenticate"]
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer")
            );
            let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
            assert_error_shape(&body);
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_another_racer_are_403_and_nothing_of_their_batch_is_stored() {
    let (server, _dir) = start(Some(&rotated()), None).await;
    // HTTP: a batch of the token's racer with one record of another.
    let answer = post(
        &server.base,
        Some(&good(101)),
        &[sample(101, 1), sample(102, 1), sample(101, 2)],
    )
    .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert_eq!(
        answer.body["records"],
        json!([{"index": 1, "field": "racerId", "reason": "must be 101, the racer the token is for, got 102"}])
    );
    assert_error_shape(&answer.body);

    // WebSocket, with the token in the header and in the query: the frame is
    // answered with the error, and the socket stays open for the next.
    let mut accepted = Vec::new();
    for (second, header, query) in [(10, Some(good(101)), None), (20, None, Some(good(101)))] {
        let mut socket = open_ws(&server, header.as_deref(), query.as_deref())
            .await
            .unwrap();
        let refused = exchange(&mut socket, &[sample(101, second), sample(103, second)]).await;
        assert_eq!(refused["type"], "error", "{refused}");
        assert_eq!(refused["records"][0]["index"], 1, "{refused}");
        assert_eq!(refused["records"][0]["field"], "racerId", "{refused}");
        assert_error_shape(&refused);
        let ok = [sample(101, second + 1)];
        assert_eq!(
            exchange(&mut socket, &ok).await,
            json!({"type": "ack", "accepted": 1})
        );
        accepted.extend(ok);
    }
    let last = [sample(101, 30)];
    assert_eq!(
        post(&server.base, Some(&good(101)), &last).await.status,
        202
    );
    accepted.extend(last);
    wait_for_exactly(&server.base, &accepted).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_is_closed_with_1008_when_its_token_expires() {
    let (server, _dir) = start(Some(&rotated()), None).await;
    let mut socket = open_ws(&server, None, Some(&token(NEW, 101, now() + 2)))
        .await
        .unwrap();
    assert_eq!(
        exchange(&mut socket, &[sample(101, 1)]).await,
        json!({"type": "ack", "accepted": 1})
    );
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| f.code),
                Some(Ok(_)) => {}
                _ => return None,
            }
        }
    })
    .await
    .expect("closed once the token expired");
    assert_eq!(closed, Some(CloseCode::Policy));
    server.stop().await;
}

/// `alleycat token` as a bike's operator runs it: (exit success, stdout,
/// stderr).
async fn alleycat_token(args: &[&str], secret: Option<&str>) -> (bool, String, String) {
    let mut command = alleycat_command();
    command.arg("token").args(args);
    if let Some(secret) = secret {
        command.env("ALLEYCAT_AUTH_SECRET", secret);
    }
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .unwrap()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_the_first_secret_signs_and_every_secret_verifies() {
    let (server, _dir) = start(Some(&rotated()), None).await;
    // A token of the old secret, issued before the rotation, still works.
    let before = token(OLD, 101, now() + 3600);
    assert_eq!(
        post(&server.base, Some(&before), &[sample(101, 1)])
            .await
            .status,
        202
    );
    let mut socket = open_ws(&server, Some(&before), None).await.unwrap();
    assert_eq!(
        exchange(&mut socket, &[sample(101, 2)]).await["type"],
        "ack"
    );

    // `alleycat token` signs with the first secret; its last line is the token.
    let (ok, stdout, stderr) =
        alleycat_token(&["--racer", "101", "--ttl", "1h"], Some(&rotated())).await;
    assert!(ok, "{stderr}");
    let issued = stdout
        .lines()
        .last()
        .expect("a line of output")
        .trim()
        .to_owned();
    let verified = keys(NEW)
        .verify(&issued)
        .expect("signed with the first secret");
    assert_eq!(verified.racer.get(), 101);
    assert!((now() + 3590..=now() + 3600).contains(&verified.expires));
    assert!(keys(OLD).verify(&issued).is_err(), "not with the second");
    assert_eq!(
        post(&server.base, Some(&issued), &[sample(101, 3)])
            .await
            .status,
        202
    );

    // A server that dropped the old secret refuses what it signed.
    let (after, _dir2) = start(Some(NEW), None).await;
    assert_eq!(
        post(&after.base, Some(&before), &[sample(101, 4)])
            .await
            .status,
        401
    );
    assert_eq!(
        post(&after.base, Some(&issued), &[sample(101, 5)])
            .await
            .status,
        202
    );

    // Days, minutes and seconds too; a bad lifetime or no secret is a clear error.
    let (ok, stdout, _) = alleycat_token(&["--racer", "7", "--ttl", "2d"], Some(&rotated())).await;
    assert!(ok);
    let days = keys(NEW).verify(stdout.lines().last().unwrap()).unwrap();
    assert!(days.expires >= now() + 2 * 86_400 - 10);
    let (ok, _, stderr) = alleycat_token(&["--racer", "7", "--ttl", "2w"], Some(&rotated())).await;
    assert!(!ok && stderr.contains("unit s, m, h or d"), "{stderr}");
    // Ten years at most: ingest would refuse a token valid for longer.
    let (ok, stdout, _) =
        alleycat_token(&["--racer", "7", "--ttl", "3650d"], Some(&rotated())).await;
    assert!(ok);
    assert_eq!(
        post(&server.base, stdout.lines().last(), &[sample(7, 1)])
            .await
            .status,
        202
    );
    let (ok, stdout, stderr) =
        alleycat_token(&["--racer", "7", "--ttl", "3651d"], Some(&rotated())).await;
    assert!(!ok && stderr.contains("from 1s to 3650d"), "{stderr}");
    assert!(stdout.trim().is_empty(), "{stdout}");
    let (ok, stdout, stderr) = alleycat_token(&["--racer", "7"], None).await;
    assert!(!ok, "{stdout}");
    assert!(stderr.contains("ALLEYCAT_AUTH_SECRET"), "{stderr}");
    assert!(stdout.trim().is_empty(), "{stdout}");

    drop(socket);
    after.stop().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secret_ingest_is_open_and_says_so_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let service = spawn_all_in_one(dir.path(), &[]).await;
    let (base, log) = (service.base.clone(), Arc::clone(&service.log));
    let answer = post(&base, None, &[sample(101, 1), sample(102, 1)]).await;
    assert_eq!((answer.status, answer.body), (202, json!({"accepted": 2})));
    // Any token at all is ignored, not checked.
    assert_eq!(
        post(&base, Some("whatever"), &[sample(103, 1)])
            .await
            .status,
        202
    );
    let log = log.lock().unwrap().clone();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("ALLEYCAT_AUTH_SECRET is not set")),
        "{log}"
    );
    service.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_in_the_query_is_never_logged() {
    let dir = tempfile::tempdir().unwrap();
    let secret = rotated();
    let service = spawn_all_in_one(
        dir.path(),
        &[("ALLEYCAT_AUTH_SECRET", &secret), ("ALLEYCAT_LOG", "debug")],
    )
    .await;
    let (base, log) = (service.base.clone(), Arc::clone(&service.log));
    let valid = good(101);
    let forged = token(
        "a secret nobody here knows about of 32+ bytes",
        101,
        now() + 60,
    );
    let url = |token: &str| {
        format!(
            "{}/v1/telemetry/ws?token={token}",
            base.replacen("http://", "ws://", 1)
        )
    };
    let (mut socket, _) = tokio_tungstenite::connect_async(url(&valid)).await.unwrap();
    assert_eq!(
        exchange(&mut socket, &[sample(101, 1)]).await["type"],
        "ack"
    );
    socket.close(None).await.unwrap();
    assert!(
        tokio_tungstenite::connect_async(url(&forged))
            .await
            .is_err()
    );
    // Both requests were logged (by path, the refused one with its
    // status), and neither token is in the log.
    eventually("the requests to be logged", || async {
        let log = log.lock().unwrap();
        log.lines()
            .any(|l| l.contains("/v1/telemetry/ws") && l.contains("status=401"))
            .then_some(())
    })
    .await;
    let log = log.lock().unwrap().clone();
    for token in [&valid, &forged] {
        let signature = token.rsplit('.').next().unwrap();
        assert!(!log.contains(signature), "a token is in the log:\n{log}");
    }
    assert!(
        !log.contains(NEW) && !log.contains(OLD),
        "a secret is in the log"
    );
    service.kill().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_rate_it_is_429_with_retry_after_nothing_is_stored_and_it_refills() {
    // Two records a second, four at once.
    let (server, _dir) = start(Some(&rotated()), Some((2.0, 4))).await;
    let token = good(101);
    let mut accepted = vec![sample(101, 1), sample(101, 2), sample(101, 3)];
    assert_eq!(
        post(&server.base, Some(&token), &accepted).await.status,
        202
    );
    // Two more do not fit (one token is left): none is taken.
    let answer = post(
        &server.base,
        Some(&token),
        &[sample(101, 4), sample(101, 5)],
    )
    .await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    let retry_after: u64 = answer.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(retry_after, 1, "a token comes back every half second");
    assert_eq!(answer.body["retryAfter"], json!(retry_after));
    assert_error_shape(&answer.body);
    // On the WebSocket: an error frame with the same wait, the socket open.
    let mut socket = open_ws(&server, Some(&token), None).await.unwrap();
    let refused = exchange(&mut socket, &[sample(101, 6), sample(101, 7)]).await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_error_shape(&refused);
    assert!(
        refused["retryAfter"]
            .as_u64()
            .is_some_and(|s| (1..=2).contains(&s)),
        "{refused}"
    );
    // The one token left is still there: a single record fits.
    let one = [sample(101, 8)];
    assert_eq!(exchange(&mut socket, &one).await["type"], "ack");
    accepted.extend(one);

    // After waiting what Retry-After said, the batch fits.
    tokio::time::sleep(Duration::from_secs(retry_after)).await;
    let two = [sample(101, 9), sample(101, 10)];
    assert_eq!(exchange(&mut socket, &two).await["type"], "ack");
    accepted.extend(two);

    // Without authentication (another server), a gateway's batch of
    // several racers is all or nothing: racer 2 is over, so racer 1's
    // record is not stored either.
    let (open, _open_dir) = start(None, Some((2.0, 4))).await;
    let full: Vec<Sample> = (1..=4).map(|s| sample(2, s)).collect();
    assert_eq!(post(&open.base, None, &full).await.status, 202);
    let answer = post(&open.base, None, &[sample(1, 1), sample(2, 5)]).await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert!(
        answer.body["error"].as_str().unwrap().contains("racer 2 "),
        "{}",
        answer.body
    );
    let last = [sample(1, 2)];
    assert_eq!(post(&open.base, None, &last).await.status, 202);
    let mut open_accepted = full.clone();
    open_accepted.extend(last);
    wait_for_exactly(&open.base, &open_accepted).await;

    let last = [sample(101, 11)];
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(post(&server.base, Some(&token), &last).await.status, 202);
    accepted.extend(last);
    wait_for_exactly(&server.base, &accepted).await;
    drop(socket);
    open.stop().await;
    server.stop().await;
}
