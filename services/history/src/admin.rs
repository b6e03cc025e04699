//! The operators' API: disqualifying a racer's race (or the racer), listing
//! the disqualifications and taking one back. Bearer-token protected
//! (`ALLEYCAT_ADMIN_TOKEN`); without a token configured, the routes do not
//! exist (404).
//!
//! - `POST /v1/admin/disqualifications` `{"racerId", "raceId"?, "reason"}`:
//!   201 and the stored entry (the one stored the first time, when asked
//!   again for the same racer and race);
//! - `GET /v1/admin/disqualifications`: `{"entries": [...]}`;
//! - `DELETE /v1/admin/disqualifications/{id}`: 204, the racer reinstated.
//!
//! A change is stored in the shared list at once; every process applies it
//! at its next read of the list (`ALLEYCAT_DISQUALIFICATIONS_POLL_MS`), and
//! this process's history merge at its next check.

use alleycat_core::disqualification::{DisqualificationId, NewDisqualification, RequestError};
use alleycat_storage::DisqualificationList;
use alleycat_storage::disqualifications::{Added, ListError};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use bytes::Bytes;
use serde_json::json;
use std::fmt;
use std::sync::Arc;

/// Largest request body taken.
const MAX_BODY_BYTES: usize = 16 << 10;

/// Shortest admin token accepted: a guessable token would hand anyone the
/// power to erase racers' bests.
pub(crate) const MIN_TOKEN_CHARS: usize = 16;

/// The operators' bearer token; never printed.
#[derive(Clone)]
pub struct AdminToken(String);

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// A token of at least [`MIN_TOKEN_CHARS`] characters.
    pub fn parse(text: &str) -> Result<AdminToken, String> {
        let token = AdminToken::unchecked(text).unwrap_or_else(|never| match never {});
        token.check().map(|()| token)
    }

    /// For clap's `value_parser`, which prints a refused value in its
    /// error: taken as it is, and checked by [`AdminToken::check`] when the
    /// service starts, without printing it.
    pub fn unchecked(text: &str) -> Result<AdminToken, std::convert::Infallible> {
        Ok(AdminToken(text.to_owned()))
    }

    /// Whether the token is long enough to be hard to guess.
    pub fn check(&self) -> Result<(), String> {
        let chars = self.0.chars().count();
        if chars < MIN_TOKEN_CHARS {
            return Err(format!(
                "must be at least {MIN_TOKEN_CHARS} characters, got {chars}"
            ));
        }
        Ok(())
    }

    /// Whether `presented` is this token, in time that depends on neither
    /// where they differ nor by how much their lengths do.
    fn matches(&self, presented: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        let differ = (0..ours.len().max(presented.len())).fold(
            u8::from(ours.len() != presented.len()),
            |acc, i| {
                acc | (ours.get(i).copied().unwrap_or(0)
                    ^ presented.get(i).copied().unwrap_or(0xff))
            },
        );
        differ == 0
    }
}

/// What the admin handlers share.
#[derive(Clone)]
pub(crate) struct AdminState {
    /// The token requests must carry.
    pub(crate) token: AdminToken,
    /// The shared list.
    pub(crate) list: Arc<DisqualificationList>,
}

/// The admin routes.
pub(crate) fn routes(state: AdminState) -> Router {
    Router::new()
        .route(
            "/v1/admin/disqualifications",
            get(list_entries).post(add_entry),
        )
        .route("/v1/admin/disqualifications/{id}", delete(remove_entry))
        .with_state(state)
}

/// Errors of the admin API, each a JSON body; internals are logged only.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No or the wrong bearer token.
    #[error("an admin bearer token is required: Authorization: Bearer <ALLEYCAT_ADMIN_TOKEN>")]
    Unauthorized,
    /// The body is not a request.
    #[error("invalid disqualification: {0}")]
    BadRequest(String),
    /// A field breaks its rule.
    #[error("invalid disqualification: {0}")]
    Invalid(RequestError),
    /// No such entry.
    #[error("no disqualification {0}")]
    NotFound(String),
    /// The list is full.
    #[error("{0}")]
    Full(String),
    /// The store failed.
    #[error("the disqualification list is unavailable, retry later")]
    Unavailable(#[source] ListError),
}

impl From<ListError> for AdminError {
    fn from(e: ListError) -> Self {
        match e {
            ListError::Full(full) => AdminError::Full(full.to_string()),
            other => AdminError::Unavailable(other),
        }
    }
}

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let status = match &self {
            AdminError::Unauthorized => StatusCode::UNAUTHORIZED,
            AdminError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AdminError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AdminError::NotFound(_) => StatusCode::NOT_FOUND,
            AdminError::Full(_) => StatusCode::CONFLICT,
            AdminError::Unavailable(e) => {
                tracing::error!(error = %e, "the disqualification list failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut response = alleycat_runtime::error_response(status, self.to_string());
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"alleycat-admin\""),
            );
        }
        response
    }
}

/// A request that carries the admin token.
struct Operator;

impl FromRequestParts<AdminState> for Operator {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, AdminError> {
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer "))
            .map(|v| &v[7..])
            .ok_or(AdminError::Unauthorized)?;
        if state.token.matches(presented.trim_ascii()) {
            Ok(Operator)
        } else {
            Err(AdminError::Unauthorized)
        }
    }
}

async fn list_entries(
    State(state): State<AdminState>,
    _: Operator,
) -> Result<Response, AdminError> {
    let list = state.list.refresh().await?;
    Ok(Json(json!({ "entries": list.entries() })).into_response())
}

async fn add_entry(
    State(state): State<AdminState>,
    _: Operator,
    body: Bytes,
) -> Result<Response, AdminError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(AdminError::BadRequest(format!(
            "the body is larger than {MAX_BODY_BYTES} bytes"
        )));
    }
    let request = NewDisqualification::parse(&body).map_err(|e| match e {
        RequestError::Shape(shape) => AdminError::BadRequest(shape),
        field => AdminError::Invalid(field),
    })?;
    let entry = match state.list.add(request).await? {
        Added::Created(entry) => {
            tracing::warn!(id = %entry.id, racer = %entry.racer_id, race = ?entry.race_id, reason = %entry.reason, "disqualified");
            entry
        }
        // Asked twice: the same entry, as stored the first time, and 201
        // all the same (the caller's entry exists).
        Added::Existing(entry) => entry,
    };
    let location = format!("/v1/admin/disqualifications/{}", entry.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(serde_json::to_value(&entry).expect("an entry always serializes")),
    )
        .into_response())
}

async fn remove_entry(
    State(state): State<AdminState>,
    _: Operator,
    Path(id): Path<String>,
) -> Result<StatusCode, AdminError> {
    let parsed = id
        .parse::<u64>()
        .map(DisqualificationId)
        .map_err(|_| AdminError::NotFound(format!("{id:?}: ids are whole numbers")))?;
    if state.list.remove(parsed).await? {
        tracing::warn!(id = %parsed, "disqualification taken back; the racer is reinstated");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_compared_whole_and_never_printed() {
        assert!(
            AdminToken::parse("short")
                .unwrap_err()
                .contains("at least 16")
        );
        let token = AdminToken::parse("0123456789abcdef").unwrap();
        assert!(token.matches(b"0123456789abcdef"));
        assert!(!token.matches(b"0123456789abcdeX"));
        assert!(!token.matches(b"0123456789abcdef0"));
        assert!(!token.matches(b""));
        assert!(!format!("{token:?}").contains("0123"));
    }
}
