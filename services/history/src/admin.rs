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
use axum::extract::{FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
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
    /// The server began shutting down while the body was arriving.
    #[error(transparent)]
    ShuttingDown(#[from] alleycat_runtime::ShuttingDown),
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
            AdminError::ShuttingDown(_) => StatusCode::SERVICE_UNAVAILABLE,
            AdminError::Unavailable(e) => {
                tracing::error!(error = %e, "the disqualification list failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        let mut response = alleycat_runtime::error_response(status, self.to_string());
        if matches!(self, AdminError::ShuttingDown(_)) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
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

/// `POST`'s body: a disqualification asked for, read up to
/// [`MAX_BODY_BYTES`] and checked field by field.
struct NewEntry(NewDisqualification);

impl<S: Send + Sync> FromRequest<S> for NewEntry {
    type Rejection = AdminError;

    async fn from_request(request: Request, _: &S) -> Result<Self, AdminError> {
        let too_large =
            || AdminError::BadRequest(format!("the body is larger than {MAX_BODY_BYTES} bytes"));
        let body = axum::body::to_bytes(request.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|e| {
                // A length past the limit, or a body that broke off.
                if std::error::Error::source(&e)
                    .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
                {
                    too_large()
                } else if alleycat_runtime::is_shutdown_cut(&e) {
                    AdminError::ShuttingDown(alleycat_runtime::ShuttingDown)
                } else {
                    AdminError::BadRequest(format!("the body could not be read: {e}"))
                }
            })?;
        NewDisqualification::parse(&body)
            .map(NewEntry)
            .map_err(|e| match e {
                RequestError::Shape(shape) => AdminError::BadRequest(shape),
                field => AdminError::Invalid(field),
            })
    }
}

/// `{id}` of `DELETE`: an id is a whole number, so anything else names no
/// entry (404).
struct EntryId(DisqualificationId);

impl<S: Send + Sync> FromRequestParts<S> for EntryId {
    type Rejection = AdminError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AdminError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e| AdminError::NotFound(e.body_text()))?;
        id.parse::<u64>()
            .map(|id| EntryId(DisqualificationId(id)))
            .map_err(|_| AdminError::NotFound(format!("{id:?}: ids are whole numbers")))
    }
}

async fn add_entry(
    State(state): State<AdminState>,
    _: Operator,
    NewEntry(request): NewEntry,
) -> Result<Response, AdminError> {
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
    EntryId(id): EntryId,
) -> Result<StatusCode, AdminError> {
    if state.list.remove(id).await? {
        tracing::warn!(%id, "disqualification taken back; the racer is reinstated");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(AdminError::NotFound(id.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alleycat_storage::ObjectStore;
    use alleycat_storage::object_store::fs::FsStore;
    use axum::body::Body;
    use http_body_util::BodyExt as _;
    use serde_json::Value;
    use tower::ServiceExt as _;

    const TOKEN: &str = "an operator's token of 32 bytes.";

    /// The admin routes over a list kept in a temporary directory.
    struct Fixture {
        state: AdminState,
        _dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
            Fixture {
                state: AdminState {
                    token: AdminToken::parse(TOKEN).unwrap(),
                    list: DisqualificationList::watch(store, std::time::Duration::from_secs(3600)),
                },
                _dir: dir,
            }
        }

        /// Status, headers and JSON body (`Null` when empty) of a request.
        async fn send(
            &self,
            method: &str,
            uri: &str,
            token: Option<&str>,
            body: impl Into<Body>,
        ) -> (StatusCode, axum::http::HeaderMap, Value) {
            let mut request = axum::http::Request::builder().method(method).uri(uri);
            if let Some(token) = token {
                request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
            }
            let response = routes(self.state.clone())
                .oneshot(request.body(body.into()).unwrap())
                .await
                .unwrap();
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.unwrap().to_bytes();
            let json = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            (parts.status, parts.headers, json)
        }
    }

    const PATH: &str = "/v1/admin/disqualifications";

    #[tokio::test]
    async fn without_the_token_every_route_is_401_with_a_challenge() {
        let fixture = Fixture::new();
        for (method, uri) in [
            ("GET", PATH),
            ("POST", PATH),
            ("DELETE", "/v1/admin/disqualifications/1"),
        ] {
            for token in [None, Some("not the operator's token at all"), Some("")] {
                let (status, headers, body) = fixture
                    .send(method, uri, token, r#"{"racerId":1,"reason":"x"}"#)
                    .await;
                assert_eq!(status, StatusCode::UNAUTHORIZED, "{method} {uri} {token:?}");
                assert_eq!(
                    headers[header::WWW_AUTHENTICATE],
                    "Bearer realm=\"alleycat-admin\""
                );
                assert!(
                    body["error"]
                        .as_str()
                        .unwrap()
                        .contains("ALLEYCAT_ADMIN_TOKEN")
                );
            }
        }
    }

    #[tokio::test]
    async fn bad_bodies_and_ids_are_refused_naming_the_problem_and_change_nothing() {
        let fixture = Fixture::new();
        let post = |body: Body| fixture.send("POST", PATH, Some(TOKEN), body);
        let (status, _, body) = post(Body::from(vec![b' '; MAX_BODY_BYTES + 1])).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            body["error"],
            format!("invalid disqualification: the body is larger than {MAX_BODY_BYTES} bytes")
        );
        let (status, _, body) = post(Body::from("not json")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let (status, _, body) = post(Body::from(r#"{"racerId":-1,"reason":"x"}"#)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert!(
            body["error"].as_str().unwrap().contains("racerId"),
            "{body}"
        );
        for (id, message) in [
            ("abc", r#"no disqualification "abc": ids are whole numbers"#),
            ("-1", r#"no disqualification "-1": ids are whole numbers"#),
            ("7", "no disqualification 7"),
        ] {
            let uri = format!("{PATH}/{id}");
            let (status, _, body) = fixture
                .send("DELETE", &uri, Some(TOKEN), Body::empty())
                .await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{id}");
            assert_eq!(body["error"], message);
        }
        let (status, _, list) = fixture.send("GET", PATH, Some(TOKEN), Body::empty()).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["entries"], serde_json::json!([]), "nothing was stored");
    }

    #[tokio::test]
    async fn an_entry_is_created_once_listed_and_taken_back() {
        let fixture = Fixture::new();
        let ask = r#"{"racerId":101,"raceId":5,"reason":"sensor taped"}"#;
        let (status, headers, entry) = fixture.send("POST", PATH, Some(TOKEN), ask).await;
        assert_eq!(status, StatusCode::CREATED, "{entry}");
        let id = entry["id"].as_u64().unwrap();
        assert_eq!(headers[header::LOCATION], format!("{PATH}/{id}"));
        assert_eq!(
            (entry["racerId"].as_u64(), entry["raceId"].as_u64()),
            (Some(101), Some(5))
        );
        // Asked again: the same entry.
        let (status, _, again) = fixture.send("POST", PATH, Some(TOKEN), ask).await;
        assert_eq!((status, &again), (StatusCode::CREATED, &entry));
        let (_, _, list) = fixture.send("GET", PATH, Some(TOKEN), Body::empty()).await;
        assert_eq!(list["entries"], serde_json::json!([entry]));
        let uri = format!("{PATH}/{id}");
        let (status, _, body) = fixture
            .send("DELETE", &uri, Some(TOKEN), Body::empty())
            .await;
        assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
        let (status, _, _) = fixture
            .send("DELETE", &uri, Some(TOKEN), Body::empty())
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "taken back already");
    }

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
