//! The rankings HTTP API: the viewers' WebSocket, race results and class
//! leaderboards.

use crate::all_time::ClassFiles;
use crate::board_cache::BoardCache;
use crate::extract::{
    ClassQuery, LeaderboardQuery, Position, RaceIdPath, RacerIdPath, RacesQuery, Upgrade,
    ViewerQuery,
};
use crate::period::{Board, Clock, Period, today};
use crate::results::{RankedEntry, RankedResult, around, page};
use crate::store::ResultsStore;
use crate::viewers::{Filter, STALLED_AFTER, Viewers};
use alleycat_core::disqualification::Disqualifications;
use alleycat_core::telemetry::CLASS_COUNT;
use alleycat_core::{ClassId, RaceId, RacerId};
use alleycat_runtime::websocket;
use alleycat_storage::DisqualificationList;
use alleycat_storage::StoreError;
use axum::extract::State;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, close_code};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::NaiveDate;
use serde::Serialize;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

/// Largest frame and message a viewer may send. Viewers send nothing but
/// control frames (ping, pong, close: at most 125 bytes of payload each);
/// 1 KiB leaves room for a small text message some clients send to keep a
/// connection alive (ignored), and caps what 10,000 viewers can make the
/// server buffer at 10 MiB, where the 64 MiB default allowed 640 GiB.
pub(crate) const VIEWER_MAX_MESSAGE: usize = 1024;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Connected viewers.
    pub viewers: Arc<Viewers>,
    /// Results and leaderboards.
    pub results: ResultsStore,
    /// Cancelled at shutdown: open WebSockets close.
    pub shutdown: CancellationToken,
    /// A viewer that answers no ping for this long is closed.
    pub ws_idle_timeout: std::time::Duration,
    /// Ranked leaderboards, cached.
    pub leaderboards: Arc<BoardCache>,
    /// What results and leaderboards leave out.
    pub disqualifications: Arc<DisqualificationList>,
    /// Each class's bests, as last loaded from its class file.
    pub class_files: Arc<ClassFiles>,
    /// The current time: which day, week and month are the current ones.
    pub clock: Clock,
}

impl AppState {
    /// The disqualification list as last read (empty before the first
    /// read: one shared empty list, so cached rankings stay valid).
    pub(crate) fn disqualified(&self) -> Arc<Disqualifications> {
        static NONE_READ: std::sync::LazyLock<Arc<Disqualifications>> =
            std::sync::LazyLock::new(Arc::default);
        self.disqualifications
            .current()
            .unwrap_or_else(|| Arc::clone(&NONE_READ))
    }
}

/// The rankings routes, the live race page at `/` among them.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(crate::page::index))
        .route("/getRaces", get(crate::original::get_races))
        .route("/leaderboard", get(crate::original::get_leaderboard))
        .route("/v1/rankings/ws", get(viewer))
        .route("/v1/races", get(races))
        .route("/v1/races/{race_id}", get(race))
        .route("/v1/leaderboard", get(leaderboard))
        .route("/v1/racers/{racer_id}/bests", get(racer_bests))
        .layer(CorsLayer::permissive())
        .with_state(state)
}

/// Errors of the rankings API, each a JSON body naming the problem
/// (`frontend-contract/error.schema.json`); store failures are logged, not
/// shown.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The query string cannot be read at all.
    #[error("malformed query string: {0}")]
    MalformedQuery(#[from] QueryRejection),
    /// `classId` is missing.
    #[error("classId is required (1 to {CLASS_COUNT})")]
    ClassIdMissing,
    /// `classId` names no class.
    #[error("classId must be 1 to {CLASS_COUNT}, got {0}")]
    ClassIdOutOfRange(u64),
    /// A parameter that must be an id or a count is not.
    #[error("{name} must be a non-negative integer, got {value:?}")]
    NotAnInteger {
        /// The parameter.
        name: &'static str,
        /// What was sent.
        value: String,
    },
    /// `follow` lists more racers than a viewer may follow.
    #[error("follow lists at most {max} racerIds, got {got}")]
    TooManyFollowed {
        /// The most allowed.
        max: usize,
        /// How many were given.
        got: usize,
    },
    /// `limit` is 0 or above the route's maximum.
    #[error("limit must be 1 to {max}, got {got}")]
    LimitOutOfRange {
        /// The route's maximum.
        max: usize,
        /// What was sent.
        got: u64,
    },
    /// `period` names no period.
    #[error("period must be day, week, month or all, got {0:?}")]
    UnknownPeriod(String),
    /// `at` is not a date.
    #[error(
        "at must be a date YYYY-MM-DD in the years {first} to {last}, got {0:?}",
        first = crate::extract::AT_YEARS.start(),
        last = crate::extract::AT_YEARS.end()
    )]
    NotADate(String),
    /// `cursor` is not a `next` this API returned.
    #[error("cursor {0:?} is not one this API returned")]
    UnknownCursor(String),
    /// A WebSocket route was asked for something else.
    #[error("not a WebSocket upgrade: {0}")]
    NotUpgrade(#[from] WebSocketUpgradeRejection),
    /// No results are stored for the race.
    #[error("race {0} has no results")]
    NoResults(RaceId),
    /// `around` names a racer without a result in the class.
    #[error("racer {racer} is not on the class {class} leaderboard")]
    NotOnLeaderboard {
        /// The racer asked for.
        racer: RacerId,
        /// Its class.
        class: ClassId,
    },
    /// The racer has no best in the class's file.
    #[error("racer {racer} has no bests in class {class}")]
    NoBests {
        /// The racer asked for.
        racer: RacerId,
        /// Its class.
        class: ClassId,
    },
    /// The store failed (details are logged).
    #[error("results are unavailable, retry later")]
    Store(#[from] StoreError),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::MalformedQuery(_)
            | AppError::ClassIdMissing
            | AppError::ClassIdOutOfRange(_)
            | AppError::NotAnInteger { .. }
            | AppError::LimitOutOfRange { .. }
            | AppError::UnknownCursor(_)
            | AppError::UnknownPeriod(_)
            | AppError::NotADate(_)
            | AppError::TooManyFollowed { .. }
            | AppError::NotUpgrade(_) => StatusCode::BAD_REQUEST,
            AppError::NoResults(_)
            | AppError::NotOnLeaderboard { .. }
            | AppError::NoBests { .. } => StatusCode::NOT_FOUND,
            AppError::Store(e) => {
                tracing::error!(error = %e, "reading results failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        alleycat_runtime::error_response(status, self.to_string())
    }
}

/// `GET /v1/rankings/ws?classId=N[&raceId=R][&racerId=X]`.
async fn viewer(
    State(state): State<AppState>,
    ViewerQuery(filter): ViewerQuery,
    Upgrade(upgrade): Upgrade,
) -> Response {
    // Viewers only listen: small frame and message limits (checked on a
    // frame's header, before its payload is read), a small read buffer, and
    // pushes written at once.
    upgrade
        .max_frame_size(VIEWER_MAX_MESSAGE)
        .max_message_size(VIEWER_MAX_MESSAGE)
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| watch(socket, state, filter))
}

async fn watch(mut socket: WebSocket, state: AppState, filter: Filter) {
    let _connected = crate::metrics::METRICS.viewer_connected();
    let class_id = filter.class_id;
    let subscription = state.viewers.add(filter);
    // Viewers only listen: a ping every half idle timeout asks them to
    // answer (browsers do by themselves), and one that answers nothing for
    // the whole timeout is gone.
    let mut pings = tokio::time::interval(state.ws_idle_timeout / 2);
    pings.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    pings.tick().await;
    let mut heard = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = pings.tick() => {
                if heard.elapsed() >= state.ws_idle_timeout {
                    let reason = format!(
                        "no answer to pings for {} ms (ALLEYCAT_WS_IDLE_TIMEOUT_MS)",
                        state.ws_idle_timeout.as_millis()
                    );
                    websocket::close(&mut socket, close_code::AWAY, &reason).await;
                    break;
                }
                if socket.send(Message::Ping(bytes::Bytes::new())).await.is_err() {
                    break;
                }
            }
            message = subscription.messages.recv() => match message {
                Some(text) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                None => {
                    // Dropped as stalled: say why, then go.
                    let reason = format!("too slow: the socket took no push for {} s", STALLED_AFTER.as_secs());
                    websocket::close(&mut socket, close_code::POLICY, &reason).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming.inspect(|_| heard = tokio::time::Instant::now()) {
                Some(Ok(Message::Close(_))) | None => break,
                Some(Ok(Message::Binary(_))) => {
                    websocket::close(&mut socket, close_code::UNSUPPORTED, "viewers send no binary frames").await;
                    break;
                }
                Some(Err(error)) => {
                    if let Some((code, reason)) =
                        websocket::close_for_read_error(error, VIEWER_MAX_MESSAGE)
                    {
                        websocket::close(&mut socket, code, &reason).await;
                    }
                    break;
                }
                Some(Ok(_)) => {} // pings, and small texts some clients send to stay alive
            },
            () = state.shutdown.cancelled() => {
                websocket::close(&mut socket, close_code::AWAY, "the server is shutting down").await;
                break;
            }
        }
    }
    state.viewers.remove(class_id, subscription.id);
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RaceSummary {
    race_id: RaceId,
    results: Vec<RankedResult>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RacesBody {
    class_id: ClassId,
    races: Vec<RaceSummary>,
}

/// `GET /v1/races?classId=N[&limit=L]`: recent races, newest first.
async fn races(
    State(state): State<AppState>,
    RacesQuery { class_id, limit }: RacesQuery,
) -> Result<Json<RacesBody>, AppError> {
    let index = state.results.index(class_id).await?;
    let disqualified = state.disqualified();
    let mut races = Vec::new();
    for race_id in index.newest().into_iter().take(limit) {
        if let Some(doc) = state.results.race(race_id).await? {
            races.push(RaceSummary {
                race_id,
                results: doc.ranked(class_id, &disqualified),
            });
        }
    }
    Ok(Json(RacesBody { class_id, races }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ClassResults {
    class_id: ClassId,
    results: Vec<RankedResult>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RaceBody {
    race_id: RaceId,
    classes: Vec<ClassResults>,
}

/// `GET /v1/races/{raceId}`: one race, every class that rode it.
async fn race(
    State(state): State<AppState>,
    RaceIdPath(race_id): RaceIdPath,
) -> Result<Json<RaceBody>, AppError> {
    let doc = state
        .results
        .race(race_id)
        .await?
        .ok_or(AppError::NoResults(race_id))?;
    let disqualified = state.disqualified();
    let classes = doc
        .classes
        .keys()
        .map(|class_id| ClassResults {
            class_id: *class_id,
            results: doc.ranked(*class_id, &disqualified),
        })
        .collect();
    Ok(Json(RaceBody { race_id, classes }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LeaderboardBody {
    class_id: ClassId,
    /// `day`, `week`, `month` or `all`.
    period: Period,
    /// The period's first and last day (UTC), both included; absent for
    /// all time.
    #[serde(skip_serializing_if = "Option::is_none")]
    from: Option<NaiveDate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<NaiveDate>,
    /// Entries on the whole board.
    total: usize,
    entries: Vec<BoardEntry>,
    next: Option<String>,
}

/// A leaderboard line with where it stands among all of them.
#[derive(Serialize)]
struct BoardEntry {
    #[serde(flatten)]
    entry: RankedEntry,
    /// Share of the board ranked below it, in percent, one decimal.
    percentile: f64,
}

impl BoardEntry {
    fn on_board_of(total: usize, entry: RankedEntry) -> BoardEntry {
        let below = total.saturating_sub(entry.rank as usize);
        let percentile = if total == 0 {
            0.0
        } else {
            (below as f64 * 1000.0 / total as f64).round() / 10.0
        };
        BoardEntry { entry, percentile }
    }
}

/// `GET /v1/leaderboard?classId=N[&period=P][&at=YYYY-MM-DD][&limit=L][&cursor=C][&around=X]`.
async fn leaderboard(
    State(state): State<AppState>,
    LeaderboardQuery {
        class_id,
        period,
        at,
        limit,
        position,
    }: LeaderboardQuery,
) -> Result<Json<LeaderboardBody>, AppError> {
    let board = period.board_of(at.unwrap_or_else(|| today(&state.clock)));
    let ranked = ranked_leaderboard(&state, class_id, board).await?;
    let (entries, next) = match position {
        Position::Around(racer) => {
            let entries = around(&ranked, racer, limit).ok_or(AppError::NotOnLeaderboard {
                racer,
                class: class_id,
            })?;
            (entries, None)
        }
        Position::Page(offset) => page(&ranked, offset, limit),
    };
    let total = ranked.len();
    let (from, to) = board.days().unzip();
    Ok(Json(LeaderboardBody {
        class_id,
        period,
        from,
        to,
        total,
        entries: entries
            .into_iter()
            .map(|e| BoardEntry::on_board_of(total, e))
            .collect(),
        next: next.map(|n| n.to_string()),
    }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BestsBody {
    racer_id: RacerId,
    class_id: ClassId,
    /// Second (as a string key, in order) -> the racer's best.
    seconds: std::collections::BTreeMap<alleycat_core::Second, f64>,
}

/// `GET /v1/racers/{racerId}/bests?classId=N`: a racer's all-time best at
/// every second, from the class file (as last loaded: every
/// `ALLEYCAT_RANKINGS_HISTORY_RELOAD_MS`).
async fn racer_bests(
    State(state): State<AppState>,
    RacerIdPath(racer): RacerIdPath,
    ClassQuery(class): ClassQuery,
) -> Result<Response, AppError> {
    let seconds = state
        .class_files
        .get(class)
        .map(|bests| bests.bests_of(racer))
        .unwrap_or_default();
    if seconds.is_empty() {
        return Err(AppError::NoBests { racer, class });
    }
    Ok(crate::original::js_json(&BestsBody {
        racer_id: racer,
        class_id: class,
        seconds,
    }))
}

/// A class's board of a period, ranked (cached while its version and the
/// disqualification list stay the same); empty if it has no results.
pub(crate) async fn ranked_leaderboard(
    state: &AppState,
    class: ClassId,
    board: Board,
) -> Result<Arc<Vec<RankedEntry>>, AppError> {
    let Some(version) = state.results.leaderboard_version(class, &board).await? else {
        return Ok(Arc::default());
    };
    let disqualified = state.disqualified();
    if let Some(ranked) = state
        .leaderboards
        .get(class, board, &version, &disqualified)
    {
        return Ok(ranked);
    }
    let Some((stored, version)) = state.results.leaderboard(class, &board).await? else {
        return Ok(Arc::default());
    };
    let ranked = Arc::new(stored.ranked(&disqualified));
    state
        .leaderboards
        .put(class, board, version, disqualified, Arc::clone(&ranked));
    Ok(ranked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::race::RaceResult;
    use crate::store::Final;
    use alleycat_storage::object_store::fs::FsStore;
    use alleycat_storage::{ObjectStore, Precondition};
    use axum::body::Body;
    use axum::http::{Request, header};
    use http_body_util::BodyExt;
    use serde_json::{Value, json};
    use tempfile::TempDir;
    use tower::ServiceExt;

    /// The routes over results kept in a temporary directory.
    struct Fixture {
        state: AppState,
        store: Arc<dyn ObjectStore>,
        _dir: TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn ObjectStore> = Arc::new(FsStore::open(dir.path()).unwrap());
            let state = AppState {
                viewers: Arc::default(),
                results: ResultsStore::new(Arc::clone(&store)),
                shutdown: CancellationToken::new(),
                ws_idle_timeout: std::time::Duration::from_secs(60),
                leaderboards: Arc::default(),
                disqualifications: DisqualificationList::watch(
                    Arc::clone(&store),
                    std::time::Duration::from_secs(3600),
                ),
                class_files: Arc::default(),
                clock: crate::period::system_clock(),
            };
            Fixture {
                state,
                store,
                _dir: dir,
            }
        }

        /// Status and JSON body of `GET uri`.
        async fn get(&self, uri: &str) -> (StatusCode, Value) {
            let request = Request::get(uri).body(Body::empty()).unwrap();
            let response = app(self.state.clone()).oneshot(request).await.unwrap();
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/json",
                "{uri}"
            );
            let status = response.status();
            let body = response.into_body().collect().await.unwrap().to_bytes();
            (status, serde_json::from_slice(&body).unwrap())
        }

        /// Stores the finals of race `race` in `class`, racer `r` at output `r`.
        async fn finals(&self, class: u8, race: u64, racers: &[u64]) {
            let finals: Vec<Final> = racers
                .iter()
                .map(|&r| {
                    let result = RaceResult {
                        racer_id: RacerId(r),
                        name: format!("R{r}"),
                        output: r as f64,
                        average: r as f64,
                        best: r as f64,
                        seconds: 300,
                    };
                    Final {
                        class: ClassId(class),
                        race: RaceId(race),
                        result,
                        finished_ms: race as i64,
                    }
                })
                .collect();
            self.state.results.record(&finals).await.unwrap();
        }
    }

    fn error(message: &str) -> Value {
        json!({ "error": message })
    }

    #[tokio::test]
    async fn malformed_parameters_are_400_naming_the_problem() {
        let fixture = Fixture::new();
        for (uri, message) in [
            ("/v1/races", "classId is required (1 to 6)"),
            ("/v1/races?classId=9", "classId must be 1 to 6, got 9"),
            ("/v1/races?classId=0", "classId must be 1 to 6, got 0"),
            (
                "/v1/races?classId=x",
                r#"classId must be a non-negative integer, got "x""#,
            ),
            (
                "/v1/races?classId=-1",
                r#"classId must be a non-negative integer, got "-1""#,
            ),
            (
                "/v1/races?classId=1&limit=0",
                "limit must be 1 to 200, got 0",
            ),
            (
                "/v1/races?classId=1&limit=201",
                "limit must be 1 to 200, got 201",
            ),
            (
                "/v1/races?classId=1&limit=many",
                r#"limit must be a non-negative integer, got "many""#,
            ),
            (
                "/v1/races/abc",
                r#"raceId must be a non-negative integer, got "abc""#,
            ),
            (
                "/v1/races/-5",
                r#"raceId must be a non-negative integer, got "-5""#,
            ),
            ("/v1/leaderboard", "classId is required (1 to 6)"),
            (
                "/v1/leaderboard?classId=1&period=year",
                r#"period must be day, week, month or all, got "year""#,
            ),
            (
                "/v1/leaderboard?classId=1&period=day&at=2026-02-30",
                r#"at must be a date YYYY-MM-DD in the years 1970 to 9998, got "2026-02-30""#,
            ),
            (
                "/v1/leaderboard?classId=1&at=12/01/2026",
                r#"at must be a date YYYY-MM-DD in the years 1970 to 9998, got "12/01/2026""#,
            ),
            (
                "/v1/leaderboard?classId=7&limit=0",
                "classId must be 1 to 6, got 7",
            ),
            (
                "/v1/leaderboard?classId=1&limit=1001",
                "limit must be 1 to 1000, got 1001",
            ),
            (
                "/v1/leaderboard?classId=1&cursor=abc",
                r#"cursor "abc" is not one this API returned"#,
            ),
            (
                "/v1/leaderboard?classId=1&around=me",
                r#"around must be a non-negative integer, got "me""#,
            ),
            ("/getRaces", "classId is required (1 to 6)"),
            (
                "/v1/rankings/ws?classId=1&follow=1,x",
                r#"follow must be a non-negative integer, got "x""#,
            ),
            ("/v1/racers/7/bests", "classId is required (1 to 6)"),
            (
                "/v1/racers/x7/bests?classId=1",
                r#"racerId must be a non-negative integer, got "x7""#,
            ),
            ("/getRaces?classId=7", "classId must be 1 to 6, got 7"),
            (
                "/leaderboard?classId=",
                r#"classId must be a non-negative integer, got """#,
            ),
            ("/leaderboard?classId=0", "classId must be 1 to 6, got 0"),
            ("/v1/rankings/ws", "classId is required (1 to 6)"),
            (
                "/v1/rankings/ws?classId=1&raceId=x",
                r#"raceId must be a non-negative integer, got "x""#,
            ),
            (
                "/v1/rankings/ws?classId=1&racerId=1.5",
                r#"racerId must be a non-negative integer, got "1.5""#,
            ),
        ] {
            assert_eq!(
                fixture.get(uri).await,
                (StatusCode::BAD_REQUEST, error(message)),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn a_plain_request_to_the_websocket_is_400() {
        let (status, body) = Fixture::new().get("/v1/rankings/ws?classId=1").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let message = body["error"].as_str().unwrap();
        assert!(message.starts_with("not a WebSocket upgrade: "), "{body}");
        assert_eq!(body.as_object().unwrap().len(), 1, "{body}");
    }

    #[tokio::test]
    async fn unknown_races_and_racers_are_404() {
        let fixture = Fixture::new();
        fixture.finals(3, 10, &[1]).await;
        for (uri, message) in [
            ("/v1/races/123", "race 123 has no results"),
            (
                "/v1/leaderboard?classId=3&around=9",
                "racer 9 is not on the class 3 leaderboard",
            ),
            // With `around`, `cursor` is ignored, even one this API never gave.
            (
                "/v1/leaderboard?classId=3&around=9&cursor=abc",
                "racer 9 is not on the class 3 leaderboard",
            ),
            (
                "/v1/leaderboard?classId=4&around=1",
                "racer 1 is not on the class 4 leaderboard",
            ),
        ] {
            assert_eq!(
                fixture.get(uri).await,
                (StatusCode::NOT_FOUND, error(message)),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn a_failing_store_is_503_without_its_details() {
        let fixture = Fixture::new();
        fixture
            .store
            .put_if(
                "results/races/5.json",
                "not a document".into(),
                "application/json",
                Precondition::IfAbsent,
            )
            .await
            .unwrap();
        assert_eq!(
            fixture.get("/v1/races/5").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                error("results are unavailable, retry later")
            )
        );
    }

    #[tokio::test]
    async fn valid_parameters_reach_the_stored_results() {
        let fixture = Fixture::new();
        fixture.finals(2, 10, &[1, 2]).await;
        fixture.finals(2, 11, &[3]).await;
        let (status, races) = fixture.get("/v1/races?classId=2&limit=1").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(races["classId"], 2);
        assert_eq!(races["races"].as_array().unwrap().len(), 1);
        assert_eq!(races["races"][0]["raceId"], 11, "newest first");
        assert_eq!(
            fixture.get("/v1/races?classId=5").await,
            (StatusCode::OK, json!({ "classId": 5, "races": [] }))
        );

        let (status, race) = fixture.get("/v1/races/10").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(race["classes"][0]["classId"], 2);
        assert_eq!(race["classes"][0]["results"][0]["racerId"], 2);

        let ids = |board: &Value| -> Vec<u64> {
            let entries = board["entries"].as_array().unwrap();
            entries
                .iter()
                .map(|e| e["racerId"].as_u64().unwrap())
                .collect()
        };
        let (status, first) = fixture.get("/v1/leaderboard?classId=2&limit=2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!((ids(&first), &first["next"]), (vec![3, 2], &json!("2")));
        // Where each stands among the 3: 2 of 3 below the first, 1 below
        // the second, none below the last (on every page, and around).
        assert_eq!(first["total"], 3);
        let percentiles = |board: &Value| -> Vec<f64> {
            let entries = board["entries"].as_array().unwrap();
            entries
                .iter()
                .map(|e| e["percentile"].as_f64().unwrap())
                .collect()
        };
        assert_eq!(percentiles(&first), [66.7, 33.3]);
        let (_, last) = fixture
            .get("/v1/leaderboard?classId=2&limit=2&cursor=2")
            .await;
        assert_eq!((ids(&last), &last["next"]), (vec![1], &Value::Null));
        assert_eq!((percentiles(&last), &last["total"]), (vec![0.0], &json!(3)));
        let (_, around) = fixture
            .get("/v1/leaderboard?classId=2&limit=1&around=2")
            .await;
        assert_eq!((ids(&around), &around["next"]), (vec![2], &Value::Null));
        assert_eq!(percentiles(&around), [33.3]);
        assert_eq!(
            fixture.get("/v1/leaderboard?classId=6").await,
            (
                StatusCode::OK,
                json!({ "classId": 6, "period": "all", "total": 0, "entries": [], "next": null })
            )
        );
    }

    #[tokio::test]
    async fn the_original_calls_answer_the_items_the_original_stored() {
        let fixture = Fixture::new();
        fixture.finals(2, 10, &[1, 12, 2]).await;
        fixture.finals(2, 11, &[3]).await;
        fixture.finals(4, 12, &[7]).await;
        let (status, races) = fixture.get("/getRaces?classId=2").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            races,
            json!([
                { "PK": "race-11", "SK": "results", "GSI": 2, "results": r#"{"3":3}"# },
                // Keys in ascending order, numbers as JSON.stringify writes them.
                { "PK": "race-10", "SK": "results", "GSI": 2, "results": r#"{"1":1,"2":2,"12":12}"# },
            ])
        );
        let (status, board) = fixture.get("/leaderboard?classId=2").await;
        assert_eq!(status, StatusCode::OK);
        // Highest first, numbers as JSON.stringify writes them (12, not
        // 12.0); `ts` is when the final arrived (the fixture's finals
        // arrive at their race's id, in ms).
        assert_eq!(
            board,
            json!([
                { "PK": "class-2", "SK": "racer-12", "GSI": 12, "ts": 10, "raceId": 10 },
                { "PK": "class-2", "SK": "racer-3", "GSI": 3, "ts": 11, "raceId": 11 },
                { "PK": "class-2", "SK": "racer-2", "GSI": 2, "ts": 10, "raceId": 10 },
                { "PK": "class-2", "SK": "racer-1", "GSI": 1, "ts": 10, "raceId": 10 },
            ])
        );
        assert_eq!(
            fixture.get("/getRaces?classId=5").await,
            (StatusCode::OK, json!([]))
        );
        assert_eq!(
            fixture.get("/leaderboard?classId=5").await,
            (StatusCode::OK, json!([]))
        );
    }

    #[tokio::test]
    async fn the_page_is_served_at_the_root_as_html_that_loads_nothing_else() {
        let request = Request::get("/").body(Body::empty()).unwrap();
        let response = app(Fixture::new().state).oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers().clone();
        assert_eq!(headers[header::CONTENT_TYPE], "text/html; charset=utf-8");
        let policy = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
        assert!(policy.starts_with("default-src 'none'"), "{policy}");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        let page = std::str::from_utf8(&body).unwrap();
        assert!(page.starts_with("<!doctype html>"));
        // No build step, no CDN: nothing but the page itself is loaded.
        for external in [
            "<script src",
            "<link",
            "@import",
            "src=\"http",
            "href=\"http",
            "url(",
        ] {
            assert!(!page.contains(external), "the page loads {external}");
        }
        // Data is written as text, never as markup (racer names are any string).
        assert!(!page.contains("innerHTML"));
    }

    #[tokio::test]
    async fn a_racers_bests_come_from_the_loaded_class_file() {
        use alleycat_core::Second;
        use alleycat_core::history::ClassHistory;
        let fixture = Fixture::new();
        let mut history = ClassHistory::default();
        history.merge(Second(2), RacerId(7), 81.0);
        history.merge(Second(10), RacerId(7), 99.5);
        history.merge(Second(1), RacerId(8), 120.0);
        let loaded = crate::all_time::AllTime::from_history(&history);
        fixture.state.class_files.set(ClassId(3), Arc::new(loaded));
        let (status, bests) = fixture.get("/v1/racers/7/bests?classId=3").await;
        assert_eq!(status, StatusCode::OK);
        // Seconds in order; numbers as in the class file (81, not 81.0).
        assert_eq!(
            bests,
            json!({ "racerId": 7, "classId": 3, "seconds": { "2": 81, "10": 99.5 } })
        );
        for (uri, message) in [
            (
                "/v1/racers/9/bests?classId=3",
                "racer 9 has no bests in class 3",
            ),
            (
                "/v1/racers/7/bests?classId=4",
                "racer 7 has no bests in class 4",
            ),
        ] {
            assert_eq!(
                fixture.get(uri).await,
                (StatusCode::NOT_FOUND, error(message)),
                "{uri}"
            );
        }
    }

    #[tokio::test]
    async fn a_follow_list_of_more_than_100_is_400() {
        let fixture = Fixture::new();
        let list: Vec<String> = (0..101).map(|i| i.to_string()).collect();
        let uri = format!("/v1/rankings/ws?classId=1&follow={}", list.join(","));
        assert_eq!(
            fixture.get(&uri).await,
            (
                StatusCode::BAD_REQUEST,
                error("follow lists at most 100 racerIds, got 101")
            )
        );
        // 100 is fine: past the parameters, the plain GET is refused as
        // not a WebSocket upgrade.
        let uri = format!("/v1/rankings/ws?classId=1&follow={}", list[..100].join(","));
        let (status, body) = fixture.get(&uri).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert!(
            body["error"]
                .as_str()
                .unwrap()
                .starts_with("not a WebSocket upgrade"),
            "{body}"
        );
    }
}
