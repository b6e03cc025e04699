//! A deadline for a whole request body: a client that trickles one byte
//! now and then would pass a timeout between chunks for ever, holding a
//! connection; the body must have arrived within the deadline, counted
//! from when the request's headers did. At shutdown a body still arriving
//! is cut off at once ([`ShuttingDown`]) instead of holding the process
//! until its deadline: nothing of it was stored, and the client is told to
//! send it again.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::Sleep;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Why a request body ended early: the server began shutting down while it
/// was still arriving. Routes that read bodies answer it with 503 and
/// `Retry-After` (see [`is_shutdown_cut`]).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the server is shutting down; nothing from this request was stored, send it again")]
pub struct ShuttingDown;

/// Whether `error` (or any error it wraps, such as axum's rejection of a
/// body that could not be read) is a body cut off by the shutdown.
#[must_use]
pub fn is_shutdown_cut(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if e.is::<ShuttingDown>() {
            return true;
        }
        next = e.source();
    }
    false
}

/// Gives `request`'s body `limit` to arrive whole, and cuts it off when
/// `closing` is cancelled.
pub(crate) async fn limit_body(
    limit: Duration,
    closing: CancellationToken,
    request: Request,
    next: Next,
) -> Response {
    let request = request.map(|body| {
        Body::new(Deadline {
            body,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
            closing: Box::pin(closing.cancelled_owned()),
        })
    });
    next.run(request).await
}

struct Deadline {
    body: Body,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
    closing: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl http_body::Body for Deadline {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            let message = format!(
                "the request body did not arrive within {} ms (ALLEYCAT_BODY_TIMEOUT_MS)",
                self.limit.as_millis()
            );
            return Poll::Ready(Some(Err(axum::Error::new(message))));
        }
        // What has arrived is taken even while closing: only a body still
        // waiting for its client is cut off.
        let frame = Pin::new(&mut self.body).poll_frame(cx);
        if frame.is_pending() && self.closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(axum::Error::new(ShuttingDown))));
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
