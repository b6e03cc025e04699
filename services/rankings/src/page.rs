//! The live race page at `/`: plain HTML, CSS and JavaScript in one file,
//! compiled into the binary (no build step, nothing fetched from elsewhere).
//! It uses the public APIs only (the class file, the rankings WebSocket,
//! results and the leaderboard), so it also shows that they are enough.

use axum::http::header;
use axum::response::IntoResponse;

/// The page.
pub(crate) const INDEX: &str = include_str!("page/index.html");

/// What the page may do: its own inline script and style, and connect to
/// any API (`?api=` and `?history=` may name other origins); nothing else.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src * ws: wss:; base-uri 'none'; \
     form-action 'self'; frame-ancestors 'none'";

/// `GET /`.
pub(crate) async fn index() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        INDEX,
    )
}
