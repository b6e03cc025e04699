//! The rankings HTTP API: the viewers' WebSocket, race results and class
//! leaderboards.

use crate::results::{RankedEntry, RankedResult, around, page};
use crate::store::ResultsStore;
use crate::viewers::{Filter, Viewers};
use alleycat_core::{ClassId, RaceId, RacerId};
use alleycat_storage::{ETag, StoreError};
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;

/// Each class's ranked leaderboard, for the version it was read at.
pub(crate) type LeaderboardCache = Arc<Mutex<HashMap<ClassId, (ETag, Arc<Vec<RankedEntry>>)>>>;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// Connected viewers.
    pub viewers: Arc<Viewers>,
    /// Results and leaderboards.
    pub results: ResultsStore,
    /// Cancelled at shutdown: open WebSockets close.
    pub shutdown: CancellationToken,
    /// Ranked leaderboards, cached.
    pub leaderboards: LeaderboardCache,
}

/// The rankings routes.
pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/v1/rankings/ws", get(viewer))
        .route("/v1/races", get(races))
        .route("/v1/races/{race_id}", get(race))
        .route("/v1/leaderboard", get(leaderboard))
        .layer(CorsLayer::permissive())
        .with_state(state)
}

/// Errors of the rankings API, each a JSON body naming the problem.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// A parameter is missing or malformed.
    #[error("{0}")]
    BadRequest(String),
    /// No such race.
    #[error("{0}")]
    NotFound(String),
    /// The store failed (details are logged).
    #[error("results are unavailable, retry later")]
    Store(#[from] StoreError),
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = match &self {
            AppError::BadRequest(_) => StatusCode::BAD_REQUEST,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::Store(e) => {
                tracing::error!(error = %e, "reading results failed");
                StatusCode::SERVICE_UNAVAILABLE
            }
        };
        alleycat_runtime::error_response(status, self.to_string())
    }
}

type Params = Query<HashMap<String, String>>;

fn number(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, AppError> {
    params
        .get(name)
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                AppError::BadRequest(format!("{name} must be a non-negative integer, got {v:?}"))
            })
        })
        .transpose()
}

fn class_param(params: &HashMap<String, String>) -> Result<ClassId, AppError> {
    let raw = number(params, "classId")?
        .ok_or_else(|| AppError::BadRequest("classId is required (1 to 6)".into()))?;
    ClassId::new(raw)
        .ok_or_else(|| AppError::BadRequest(format!("classId must be 1 to 6, got {raw}")))
}

fn limit_param(
    params: &HashMap<String, String>,
    default: usize,
    max: usize,
) -> Result<usize, AppError> {
    match number(params, "limit")? {
        None => Ok(default),
        Some(n) if (1..=max as u64).contains(&n) => Ok(n as usize),
        Some(n) => Err(AppError::BadRequest(format!(
            "limit must be 1 to {max}, got {n}"
        ))),
    }
}

/// `GET /v1/rankings/ws?classId=N[&raceId=R][&racerId=X]`.
async fn viewer(
    State(state): State<AppState>,
    Query(params): Params,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, AppError> {
    let filter = Filter {
        class_id: class_param(&params)?,
        race_id: number(&params, "raceId")?.map(RaceId),
        racer_id: number(&params, "racerId")?.map(RacerId),
    };
    let upgrade =
        upgrade.map_err(|e| AppError::BadRequest(format!("not a WebSocket upgrade: {e}")))?;
    // Viewers only listen: a small read buffer, and pushes written at once.
    Ok(upgrade
        .read_buffer_size(1024)
        .write_buffer_size(0)
        .on_upgrade(move |socket| watch(socket, state, filter)))
}

async fn watch(mut socket: WebSocket, state: AppState, filter: Filter) {
    let mut subscription = state.viewers.add(filter);
    loop {
        tokio::select! {
            message = subscription.messages.recv() => match message {
                Some(text) => {
                    if socket.send(Message::Text(text)).await.is_err() {
                        break;
                    }
                }
                None => {
                    // Dropped for falling behind: say why, then go.
                    let _ = socket.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                        code: 1008,
                        reason: "too slow: the viewer's queue was full".into(),
                    }))).await;
                    return;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                Some(Ok(_)) => {} // viewers have nothing to say
            },
            () = state.shutdown.cancelled() => {
                let _ = socket.send(Message::Close(None)).await;
                break;
            }
        }
    }
    state.viewers.remove(filter.class_id, subscription.id);
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
    Query(params): Params,
) -> Result<Json<RacesBody>, AppError> {
    let class_id = class_param(&params)?;
    let limit = limit_param(&params, 20, 200)?;
    let index = state.results.index(class_id).await?;
    let mut races = Vec::new();
    for race_id in index.newest().take(limit) {
        if let Some(doc) = state.results.race(race_id).await? {
            races.push(RaceSummary {
                race_id,
                results: doc.ranked(class_id),
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
    Path(race_id): Path<String>,
) -> Result<Json<RaceBody>, AppError> {
    let race_id = race_id.parse::<u64>().map(RaceId).map_err(|_| {
        AppError::BadRequest(format!(
            "raceId must be a non-negative integer, got {race_id:?}"
        ))
    })?;
    let doc = state
        .results
        .race(race_id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("race {race_id} has no results")))?;
    let classes = doc
        .classes
        .keys()
        .map(|class_id| ClassResults {
            class_id: *class_id,
            results: doc.ranked(*class_id),
        })
        .collect();
    Ok(Json(RaceBody { race_id, classes }))
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct LeaderboardBody {
    class_id: ClassId,
    entries: Vec<RankedEntry>,
    next: Option<String>,
}

/// `GET /v1/leaderboard?classId=N[&limit=L][&cursor=C][&around=X]`.
async fn leaderboard(
    State(state): State<AppState>,
    Query(params): Params,
) -> Result<Json<LeaderboardBody>, AppError> {
    let class_id = class_param(&params)?;
    let limit = limit_param(&params, 50, 1000)?;
    let ranked = ranked_leaderboard(&state, class_id).await?;
    if let Some(racer) = number(&params, "around")? {
        let entries = around(&ranked, RacerId(racer), limit).ok_or_else(|| {
            AppError::NotFound(format!(
                "racer {racer} is not on the class {class_id} leaderboard"
            ))
        })?;
        return Ok(Json(LeaderboardBody {
            class_id,
            entries,
            next: None,
        }));
    }
    let offset = match params.get("cursor") {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            AppError::BadRequest(format!("cursor {c:?} is not one this API returned"))
        })?,
    };
    let (entries, next) = page(&ranked, offset, limit);
    Ok(Json(LeaderboardBody {
        class_id,
        entries,
        next: next.map(|n| n.to_string()),
    }))
}

async fn ranked_leaderboard(
    state: &AppState,
    class: ClassId,
) -> Result<Arc<Vec<RankedEntry>>, AppError> {
    let Some(version) = state.results.leaderboard_version(class).await? else {
        return Ok(Arc::default());
    };
    if let Some((cached_version, ranked)) =
        state.leaderboards.lock().expect("not poisoned").get(&class)
        && *cached_version == version
    {
        return Ok(Arc::clone(ranked));
    }
    let Some((board, version)) = state.results.leaderboard(class).await? else {
        return Ok(Arc::default());
    };
    let ranked = Arc::new(board.ranked());
    state
        .leaderboards
        .lock()
        .expect("not poisoned")
        .insert(class, (version, Arc::clone(&ranked)));
    Ok(ranked)
}
