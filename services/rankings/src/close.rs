//! Close codes for the viewers' WebSocket (RFC 6455 section 7.4.1): when
//! tungstenite refuses a frame it only reports the error, and the peer would
//! see a bare TCP close; the viewer is sent a close frame saying why.

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};

/// Largest frame and message a viewer may send. Viewers send nothing but
/// control frames (ping, pong, close: at most 125 bytes of payload each);
/// 1 KiB leaves room for a small text message some clients send to keep a
/// connection alive (ignored), and caps what 10,000 viewers can make the
/// server buffer at 10 MiB, where the 64 MiB default allowed 640 GiB.
pub(crate) const VIEWER_MAX_MESSAGE: usize = 1024;

/// The close code and reason a read error deserves, or `None` when the
/// connection is already gone (reset, I/O error) and nothing can be sent.
///
/// axum hands tungstenite's error over boxed; it is told apart by its
/// variant's name (`Capacity(..)`, `Utf8(..)`, `Protocol(..)`), public,
/// stable names, and `tests/it/hostile_rankings.rs` checks every case over
/// a real socket.
pub(crate) fn for_read_error(error: axum::Error) -> Option<(u16, &'static str)> {
    classify(&format!("{:?}", error.into_inner()))
}

fn classify(debug: &str) -> Option<(u16, &'static str)> {
    if debug.starts_with("Capacity(") {
        Some((
            close_code::SIZE,
            "message too big: viewers send at most 1024 bytes",
        ))
    } else if debug.starts_with("Utf8(") {
        Some((close_code::INVALID, "a text frame must be valid UTF-8"))
    } else if debug.starts_with("Protocol(ResetWithoutClosingHandshake")
        || debug.starts_with("Protocol(SendAfterClosing")
        || debug.starts_with("Protocol(ReceivedAfterClosing")
    {
        None
    } else if debug.starts_with("Protocol(") {
        Some((close_code::PROTOCOL, "WebSocket protocol violation"))
    } else {
        None
    }
}

/// Sends a close frame with `code` and `reason` (at most 123 bytes).
pub(crate) async fn send(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_errors_map_to_their_close_codes() {
        let cases = [
            (
                "Capacity(MessageTooLong { size: 16777216, max_size: 1024 })",
                Some(close_code::SIZE),
            ),
            (
                "Utf8(\"invalid utf-8 sequence\")",
                Some(close_code::INVALID),
            ),
            (
                "Protocol(UnknownDataFrameType(3))",
                Some(close_code::PROTOCOL),
            ),
            (
                "Protocol(UnknownControlFrameType(11))",
                Some(close_code::PROTOCOL),
            ),
            ("Protocol(ResetWithoutClosingHandshake)", None),
            ("Io(Kind(ConnectionReset))", None),
            ("ConnectionClosed", None),
        ];
        for (debug, code) in cases {
            assert_eq!(classify(debug).map(|(c, _)| c), code, "{debug}");
        }
        let (_, reason) = classify("Capacity(x)").unwrap();
        assert!(reason.contains(&VIEWER_MAX_MESSAGE.to_string()));
        assert!(reason.len() <= 123);
    }
}
