//! A deadline for a whole request body: a client that trickles one byte
//! now and then would pass a timeout between chunks for ever, holding a
//! connection; the body must have arrived within the deadline, counted
//! from when the request's headers did.

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

/// Gives `request`'s body `limit` to arrive whole.
pub(crate) async fn limit_body(limit: Duration, request: Request, next: Next) -> Response {
    let request = request.map(|body| {
        Body::new(Deadline {
            body,
            limit,
            deadline: Box::pin(tokio::time::sleep(limit)),
        })
    });
    next.run(request).await
}

struct Deadline {
    body: Body,
    limit: Duration,
    deadline: Pin<Box<Sleep>>,
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
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
