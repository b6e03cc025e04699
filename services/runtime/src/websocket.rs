//! Closing a WebSocket with the code its peer's fault deserves (RFC 6455
//! section 7.4.1). When tungstenite refuses a frame it only reports the
//! error, and the peer would see a bare TCP close; every socket of every
//! service closes through here instead.

use axum::extract::ws::{CloseFrame, Message, WebSocket, close_code};
use tungstenite::error::ProtocolError;

/// Longest close reason the protocol allows (a control frame's 125 bytes,
/// less the code).
const MAX_REASON_BYTES: usize = 123;

/// The close code and reason for an error reading from a socket whose
/// messages are at most `max_message` bytes, or `None` when the connection
/// is gone already (reset, I/O error) and nothing can be sent.
#[must_use]
pub fn close_for_read_error(error: axum::Error, max_message: usize) -> Option<(u16, String)> {
    // axum hands tungstenite's error over boxed.
    let error = error.into_inner().downcast::<tungstenite::Error>().ok()?;
    close_for(&error, max_message)
}

fn close_for(error: &tungstenite::Error, max_message: usize) -> Option<(u16, String)> {
    match error {
        tungstenite::Error::Capacity(_) => Some((
            close_code::SIZE,
            format!("message too big: at most {max_message} bytes per message and frame"),
        )),
        tungstenite::Error::Utf8(_) => Some((
            close_code::INVALID,
            "a text frame must be valid UTF-8".to_owned(),
        )),
        tungstenite::Error::Protocol(
            ProtocolError::ResetWithoutClosingHandshake
            | ProtocolError::SendAfterClosing
            | ProtocolError::ReceivedAfterClosing,
        ) => None,
        tungstenite::Error::Protocol(violation) => Some((
            close_code::PROTOCOL,
            format!("WebSocket protocol violation: {violation}"),
        )),
        _ => None,
    }
}

/// Sends a close frame with `code` and `reason` (cut to what a close frame
/// holds); the caller drops the socket after it.
pub async fn close(socket: &mut WebSocket, code: u16, reason: &str) {
    let reason = truncate(reason, MAX_REASON_BYTES);
    tracing::debug!(code, reason, "closing a WebSocket");
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use tungstenite::error::CapacityError;

    #[test]
    fn read_errors_map_to_their_close_codes() {
        let too_long = CapacityError::MessageTooLong {
            size: 16 << 20,
            max_size: 1024,
        };
        let cases = [
            (
                tungstenite::Error::Capacity(too_long),
                Some(close_code::SIZE),
            ),
            (
                tungstenite::Error::Utf8("bad".into()),
                Some(close_code::INVALID),
            ),
            (
                tungstenite::Error::Protocol(ProtocolError::UnmaskedFrameFromClient),
                Some(close_code::PROTOCOL),
            ),
            (
                tungstenite::Error::Protocol(ProtocolError::UnknownDataFrameType(3)),
                Some(close_code::PROTOCOL),
            ),
            (
                tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake),
                None,
            ),
            (tungstenite::Error::ConnectionClosed, None),
            (
                tungstenite::Error::Io(std::io::ErrorKind::ConnectionReset.into()),
                None,
            ),
        ];
        for (error, code) in cases {
            let debug = format!("{error:?}");
            let close = close_for_read_error(axum::Error::new(error), 1024);
            assert_eq!(close.as_ref().map(|(c, _)| *c), code, "{debug}");
            if let Some((_, reason)) = close {
                assert!(reason.len() <= MAX_REASON_BYTES || code != Some(close_code::SIZE));
            }
        }
        let (_, reason) = close_for(&tungstenite::Error::Capacity(too_long), 1024).unwrap();
        assert!(reason.contains("1024"));
    }

    #[test]
    fn close_reasons_are_cut_at_a_character_boundary() {
        assert_eq!(truncate("abc", MAX_REASON_BYTES), "abc");
        assert_eq!(truncate("é", 1), "");
        assert_eq!(
            truncate(&"x".repeat(200), MAX_REASON_BYTES).len(),
            MAX_REASON_BYTES
        );
    }
}
