//! The rankings routes' parameters, parsed and checked before a handler
//! runs: each extractor rejects with the service's JSON [`AppError`], so a
//! handler only ever sees valid, typed values.

use crate::AppError;
use crate::period::Period;
use crate::results::RECENT_RACES;
use crate::viewers::{Filter, MAX_FOLLOWED};
use alleycat_core::{ClassId, RaceId, RacerId};
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use chrono::{Datelike as _, NaiveDate};
use std::collections::HashMap;

/// Races `GET /v1/races` lists when no `limit` is given.
const RACES_LIMIT_DEFAULT: usize = 20;
/// Most races `GET /v1/races` lists: no more than a class's index keeps.
const RACES_LIMIT_MAX: usize = RECENT_RACES;
/// Entries of a `GET /v1/leaderboard` page when no `limit` is given.
const LEADERBOARD_LIMIT_DEFAULT: usize = 50;
/// Most entries of a `GET /v1/leaderboard` page.
const LEADERBOARD_LIMIT_MAX: usize = 1000;

/// A query string by name: unknown names are ignored, and a repeated name
/// counts once (its last value).
struct Params(HashMap<String, String>);

impl Params {
    fn from_parts(parts: &Parts) -> Result<Params, AppError> {
        let Query(params) = Query::try_from_uri(&parts.uri)?;
        Ok(Params(params))
    }

    fn integer(&self, name: &'static str) -> Result<Option<u64>, AppError> {
        self.0
            .get(name)
            .map(|value| {
                value.parse().map_err(|_| AppError::NotAnInteger {
                    name,
                    value: value.clone(),
                })
            })
            .transpose()
    }

    fn class_id(&self) -> Result<ClassId, AppError> {
        let raw = self.integer("classId")?.ok_or(AppError::ClassIdMissing)?;
        ClassId::new(raw).ok_or(AppError::ClassIdOutOfRange(raw))
    }

    /// `follow=ID,ID,...`: at most [`MAX_FOLLOWED`] racer ids.
    fn follow(&self) -> Result<Option<std::sync::Arc<[RacerId]>>, AppError> {
        let Some(list) = self.0.get("follow") else {
            return Ok(None);
        };
        let ids: Vec<&str> = list.split(',').collect();
        if ids.len() > MAX_FOLLOWED {
            return Err(AppError::TooManyFollowed {
                max: MAX_FOLLOWED,
                got: ids.len(),
            });
        }
        let mut racers = ids
            .into_iter()
            .map(|id| {
                id.parse().map(RacerId).map_err(|_| AppError::NotAnInteger {
                    name: "follow",
                    value: id.to_owned(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        racers.sort_unstable();
        racers.dedup();
        Ok(Some(racers.into()))
    }

    fn limit(&self, default: usize, max: usize) -> Result<usize, AppError> {
        let Some(got) = self.integer("limit")? else {
            return Ok(default);
        };
        usize::try_from(got)
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or(AppError::LimitOutOfRange { max, got })
    }
}

/// `GET /v1/rankings/ws?classId=N[&raceId=R][&racerId=X]`: what the viewer
/// follows.
pub(crate) struct ViewerQuery(pub(crate) Filter);

impl<S: Send + Sync> FromRequestParts<S> for ViewerQuery {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let params = Params::from_parts(parts)?;
        Ok(ViewerQuery(Filter {
            class_id: params.class_id()?,
            race_id: params.integer("raceId")?.map(RaceId),
            racer_id: params.integer("racerId")?.map(RacerId),
            follow: params.follow()?,
        }))
    }
}

/// A WebSocket upgrade; anything else is refused with a JSON 400.
pub(crate) struct Upgrade(pub(crate) WebSocketUpgrade);

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        Ok(Upgrade(
            WebSocketUpgrade::from_request_parts(parts, state).await?,
        ))
    }
}

/// `GET /v1/races?classId=N[&limit=L]`.
pub(crate) struct RacesQuery {
    /// The class.
    pub(crate) class_id: ClassId,
    /// Most races listed.
    pub(crate) limit: usize,
}

impl<S: Send + Sync> FromRequestParts<S> for RacesQuery {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let params = Params::from_parts(parts)?;
        Ok(RacesQuery {
            class_id: params.class_id()?,
            limit: params.limit(RACES_LIMIT_DEFAULT, RACES_LIMIT_MAX)?,
        })
    }
}

/// `?classId=N` alone: the original system's `/getRaces` and
/// `/leaderboard`.
pub(crate) struct ClassQuery(pub(crate) ClassId);

impl<S: Send + Sync> FromRequestParts<S> for ClassQuery {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        Ok(ClassQuery(Params::from_parts(parts)?.class_id()?))
    }
}

/// The `{raceId}` of `GET /v1/races/{raceId}`.
pub(crate) struct RaceIdPath(pub(crate) RaceId);

impl<S: Send + Sync> FromRequestParts<S> for RaceIdPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        path_id(parts, state, "raceId", 0)
            .await
            .map(|id| RaceIdPath(RaceId(id)))
    }
}

/// The `{racerId}` of `GET /v1/racers/{racerId}/bests`.
pub(crate) struct RacerIdPath(pub(crate) RacerId);

impl<S: Send + Sync> FromRequestParts<S> for RacerIdPath {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, AppError> {
        path_id(parts, state, "racerId", 1)
            .await
            .map(|id| RacerIdPath(RacerId(id)))
    }
}

/// A route's one id parameter, `name`, the path's segment `from_end`
/// places before its last.
async fn path_id<S: Send + Sync>(
    parts: &mut Parts,
    state: &S,
    name: &'static str,
    from_end: usize,
) -> Result<u64, AppError> {
    let not_an_integer = |value: String| AppError::NotAnInteger { name, value };
    // A segment that is not even UTF-8 is no integer either.
    let Path(raw) = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|_| not_an_integer(segment(parts, from_end)))?;
    raw.parse().map_err(|_| not_an_integer(raw))
}

fn segment(parts: &Parts, from_end: usize) -> String {
    let path = parts.uri.path();
    path.rsplit('/').nth(from_end).unwrap_or(path).to_owned()
}

/// Years `at` may name: a period's first and last days must stay four-digit
/// years (a week of 1 January can begin in the year before).
pub(crate) const AT_YEARS: std::ops::RangeInclusive<i32> = 1970..=9998;

/// A day written exactly `YYYY-MM-DD` (chrono alone would also take signs,
/// spaces and one-digit fields), in [`AT_YEARS`].
fn parse_day(text: &str) -> Option<NaiveDate> {
    let bytes = text.as_bytes();
    let shape = bytes.len() == 10
        && bytes.iter().enumerate().all(|(i, b)| match i {
            4 | 7 => *b == b'-',
            _ => b.is_ascii_digit(),
        });
    let date = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    (shape && AT_YEARS.contains(&date.year())).then_some(date)
}

/// `GET /v1/leaderboard?classId=N[&period=P][&at=YYYY-MM-DD][&limit=L][&cursor=C][&around=X]`.
pub(crate) struct LeaderboardQuery {
    /// The class.
    pub(crate) class_id: ClassId,
    /// Which period's board (`all` when not given).
    pub(crate) period: Period,
    /// A day in the period asked for (the current period when not given;
    /// without meaning for `all`).
    pub(crate) at: Option<NaiveDate>,
    /// Entries in the answer.
    pub(crate) limit: usize,
    /// Which entries.
    pub(crate) position: Position,
}

/// Which part of a leaderboard is asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Position {
    /// A page, from this offset (`cursor`, a `next` this API returned).
    Page(usize),
    /// A racer and its neighbours (`around`); `cursor` is then ignored.
    Around(RacerId),
}

impl<S: Send + Sync> FromRequestParts<S> for LeaderboardQuery {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        let params = Params::from_parts(parts)?;
        let class_id = params.class_id()?;
        let limit = params.limit(LEADERBOARD_LIMIT_DEFAULT, LEADERBOARD_LIMIT_MAX)?;
        let period = match params.0.get("period") {
            None => Period::All,
            Some(name) => {
                Period::from_name(name).ok_or_else(|| AppError::UnknownPeriod(name.clone()))?
            }
        };
        let at = params
            .0
            .get("at")
            .map(|at| parse_day(at).ok_or_else(|| AppError::NotADate(at.clone())))
            .transpose()?;
        let position = match params.integer("around")? {
            Some(racer) => Position::Around(RacerId(racer)),
            None => match params.0.get("cursor") {
                None => Position::Page(0),
                Some(cursor) => cursor
                    .parse()
                    .map(Position::Page)
                    .map_err(|_| AppError::UnknownCursor(cursor.clone()))?,
            },
        };
        Ok(LeaderboardQuery {
            class_id,
            period,
            at,
            limit,
            position,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_exactly_yyyy_mm_dd_in_range() {
        assert_eq!(parse_day("2026-12-02"), "2026-12-02".parse().ok());
        assert_eq!(parse_day("1970-01-01"), "1970-01-01".parse().ok());
        assert_eq!(parse_day("9998-12-31"), "9998-12-31".parse().ok());
        for refused in [
            "2026-1-5",
            "2026-01-5",
            "2026- 1- 5",
            "2026-+1-+5",
            " 2026-1-05",
            "+2026-01-1",
            "-001-01-01",
            "  26-01-01",
            "0000-01-01",
            "1969-12-31",
            "9999-12-31",
            "2026-02-29",
            "2026-13-01",
            "2026/12/02",
            "20261202",
            "",
            "2026-12-02 ",
        ] {
            assert_eq!(parse_day(refused), None, "{refused:?}");
        }
    }
}
