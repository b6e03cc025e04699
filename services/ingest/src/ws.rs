//! `GET /v1/telemetry/ws`: a bike keeps one WebSocket open and sends one JSON
//! message (an object, or an array of up to
//! [`MAX_BATCH_RECORDS`](alleycat_core::validate::MAX_BATCH_RECORDS)) per
//! text frame. Each frame
//! is answered, in order, with an ack or an error frame; the socket stays
//! open after an error in the records.
//!
//! A frame the protocol does not allow closes the socket with a close code
//! saying why (RFC 6455 section 7.4.1): 1009 for a frame or message larger
//! than [`MAX_BODY_BYTES`] (refused on its header, before its payload is
//! read or buffered), 1007 for a text frame that is not UTF-8, 1003 for a
//! binary frame, 1002 for any other protocol violation (an unknown opcode,
//! an unmasked frame, reserved bits, a bad continuation, a fragmented or
//! oversized control frame); 1008 once the bike's token has expired.

use crate::auth::{Bearer, WsBearer};
use crate::error::AppError;
use crate::extract::Upgrade;
use crate::http::Accepted;
use crate::metrics::{METRICS, Reason};
use crate::{AppState, MAX_BODY_BYTES};
use alleycat_core::validate::BodyFormat;
use alleycat_runtime::websocket;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, close_code};
use axum::response::Response;

/// The token is checked before the upgrade (401 JSON); the socket then
/// lives until the token expires: a message received on or after its `exp`
/// is answered with the error and the socket closed with 1008 (policy
/// violation), and so is a socket still open when it expires. The bike
/// reconnects with a new token.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    WsBearer(bearer): WsBearer,
    Upgrade(ws): Upgrade,
) -> Response {
    // A bike sends about 300 bytes a second: small buffers keep ten
    // thousand open sockets from costing gigabytes (the defaults are
    // 128 KiB each way per socket), and tungstenite zero-fills the free
    // part of its read buffer before every read (1.9% of the server's CPU
    // with 4 KiB, profiled at 10,000 bikes). A frame may be no larger than a
    // message: tungstenite checks the frame limit on the frame's header
    // and reserves the frame's length only once it passed, so a header
    // announcing more than MAX_BODY_BYTES is refused before any payload is
    // read (the default 16 MiB frame limit let each socket hold 16 MiB).
    ws.max_message_size(MAX_BODY_BYTES)
        .max_frame_size(MAX_BODY_BYTES)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| serve_bike(socket, state, bearer))
}

const TOKEN_EXPIRED: &str = "the token expired: reconnect with a new one";

async fn serve_bike(mut socket: WebSocket, state: AppState, bearer: Bearer) {
    let _connected = METRICS.bike_connected();
    let expiry = match bearer {
        Bearer::Racer(token) => Some(token.deadline()),
        Bearer::Open => None,
    };
    // One timer for the socket's life, one idle timer reset after each
    // message and one shutdown future, not new ones a message (1.7% of the
    // server's CPU at 10,000 bikes, profiled).
    let expired = until(expiry);
    let idle = tokio::time::sleep(state.ws_idle_timeout);
    let shutdown = state.shutdown.clone().cancelled_owned();
    tokio::pin!(expired, idle, shutdown);
    loop {
        // Idle counts from the last answer, not from the last frame: a
        // record that took long to store is not the bike's silence.
        idle.as_mut()
            .reset(tokio::time::Instant::now() + state.ws_idle_timeout);
        let message = tokio::select! {
            message = socket.recv() => message,
            () = &mut idle => {
                // A bike sends every second: this one is gone or stuck.
                let reason = format!(
                    "nothing received for {} ms (ALLEYCAT_WS_IDLE_TIMEOUT_MS)",
                    state.ws_idle_timeout.as_millis()
                );
                websocket::close(&mut socket, close_code::AWAY, &reason).await;
                return;
            }
            () = &mut shutdown => {
                websocket::close(&mut socket, close_code::AWAY, "the server is shutting down").await;
                return;
            }
            () = &mut expired => {
                websocket::close(&mut socket, close_code::POLICY, TOKEN_EXPIRED).await;
                return;
            }
        };
        let reply = match message {
            Some(Ok(Message::Text(text))) => answer(&state, &bearer, text.as_bytes()).await,
            Some(Ok(Message::Binary(_))) => {
                METRICS.refused(&AppError::BinaryFrame);
                let reason = AppError::BinaryFrame.to_string();
                websocket::close(&mut socket, close_code::UNSUPPORTED, &reason).await;
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
            Some(Err(error)) => {
                if let Some((code, reason)) = websocket::close_for_read_error(error, MAX_BODY_BYTES)
                {
                    METRICS.refused_as(if code == close_code::SIZE {
                        Reason::TooLarge
                    } else {
                        Reason::Malformed
                    });
                    websocket::close(&mut socket, code, &reason).await;
                }
                return;
            }
            Some(Ok(Message::Close(_))) | None => return,
        };
        if socket.send(Message::Text(reply)).await.is_err() {
            return;
        }
        if expiry.is_some_and(|at| tokio::time::Instant::now() >= at) {
            websocket::close(&mut socket, close_code::POLICY, TOKEN_EXPIRED).await;
            return;
        }
    }
}

/// Resolves at `deadline`, never without one.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn answer(state: &AppState, bearer: &Bearer, frame: &[u8]) -> Utf8Bytes {
    let result = match state.sensor_limits.parse_batch(frame, BodyFormat::Json) {
        Ok(records) => crate::gate::store(state, bearer, records).await,
        Err(e) => Err(AppError::Batch(e)),
    };
    match result {
        Ok(accepted) => to_frame(&Accepted {
            kind: Some("ack"),
            accepted,
        }),
        Err(e) => error_frame(&e),
    }
}

fn error_frame(error: &AppError) -> Utf8Bytes {
    METRICS.refused(error);
    to_frame(&error.body(Some("error")))
}

fn to_frame(value: &impl serde::Serialize) -> Utf8Bytes {
    serde_json::to_string(value)
        .expect("frames always serialize")
        .into()
}
