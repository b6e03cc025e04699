//! The original system's two REST calls, answered from Alleycat's results
//! and leaderboards, so that its frontend changes only its base URL.
//!
//! The original answered API Gateway with the DynamoDB items themselves (a
//! JSON array): `GET /getRaces?classId=N` the class's race items, whose
//! `results` is the JSON text of `{racerId: output}` (the output of each
//! racer's final message), and `GET /leaderboard?classId=N` the class's
//! best-result items, highest first, up to 1,000.
//! `frontend-contract/README.md` ("The original frontend's calls") maps
//! each field.

use crate::extract::ClassQuery;
use crate::http::{AppError, AppState, ranked_leaderboard};
use crate::period::Board;
use alleycat_core::js_number;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// Races `/getRaces` lists: the original queried at most 100.
pub(crate) const ORIGINAL_RACES: usize = 100;
/// Rows `/leaderboard` lists: the original's limit.
pub(crate) const ORIGINAL_LEADERBOARD_ROWS: usize = 1000;

/// A race's results item, as the original stored and served it.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct RaceItem {
    /// `race-<raceId>`.
    #[serde(rename = "PK")]
    pk: String,
    /// Always `results`.
    #[serde(rename = "SK")]
    sk: &'static str,
    /// The class.
    #[serde(rename = "GSI")]
    gsi: u8,
    /// The JSON text of `{racerId: output}`, as `JSON.stringify` wrote it.
    results: String,
}

/// A racer's best result in a class, as the original stored and served it.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct LeaderboardItem {
    /// `class-<classId>`.
    #[serde(rename = "PK")]
    pk: String,
    /// `racer-<racerId>`.
    #[serde(rename = "SK")]
    sk: String,
    /// The best final output.
    #[serde(rename = "GSI")]
    gsi: f64,
    /// When the racer's final message of that race arrived, ms since the
    /// epoch; `null` only for results stored before Alleycat kept that
    /// time, whose race has left the class's index of recent races too.
    ts: Option<i64>,
    /// The race of that result.
    #[serde(rename = "raceId")]
    race_id: u64,
}

/// `GET /getRaces?classId=N`: the class's most recently finished races.
pub(crate) async fn get_races(
    State(state): State<AppState>,
    ClassQuery(class_id): ClassQuery,
) -> Result<Response, AppError> {
    let index = state.results.index(class_id).await?;
    let disqualified = state.disqualified();
    let mut items = Vec::new();
    for race_id in index.newest() {
        if items.len() == ORIGINAL_RACES {
            break;
        }
        let Some(doc) = state.results.race(race_id).await? else {
            continue;
        };
        let ranked = doc.ranked(class_id, &disqualified);
        if ranked.is_empty() {
            continue;
        }
        let outputs = ranked
            .iter()
            .map(|r| (r.result.racer_id.0, r.result.output));
        items.push(RaceItem {
            pk: format!("race-{}", race_id.0),
            sk: "results",
            gsi: class_id.0,
            results: js_object_text(outputs),
        });
    }
    Ok(js_json(&items))
}

/// `GET /leaderboard?classId=N`: the class's best results, highest first.
pub(crate) async fn get_leaderboard(
    State(state): State<AppState>,
    ClassQuery(class_id): ClassQuery,
) -> Result<Response, AppError> {
    let ranked = ranked_leaderboard(&state, class_id, Board::All).await?;
    let index = state.results.index(class_id).await?;
    let items = ranked
        .iter()
        .take(ORIGINAL_LEADERBOARD_ROWS)
        .map(|entry| LeaderboardItem {
            pk: format!("class-{}", class_id.0),
            sk: format!("racer-{}", entry.racer_id.0),
            gsi: entry.output,
            ts: entry
                .finished_ms
                .or_else(|| index.races.get(&entry.race_id).copied()),
            race_id: entry.race_id.0,
        })
        .collect::<Vec<_>>();
    Ok(js_json(&items))
}

/// A JSON body with numbers written as the original's `JSON.stringify`
/// wrote them (`12`, not `12.0`).
pub(crate) fn js_json(body: &impl Serialize) -> Response {
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, js_number::JsonFormatter);
    body.serialize(&mut serializer)
        .expect("items serialize to memory");
    ([(header::CONTENT_TYPE, "application/json")], out).into_response()
}

/// `JSON.stringify` of an object with these integer keys: JavaScript lists
/// integer-like keys in ascending order, and writes numbers its own way
/// (`81`, not `81.0`). (Keys above 2^32 - 2, which JavaScript lists in
/// insertion order after the others, are sorted too: the original's
/// insertion order is not known.)
fn js_object_text(entries: impl IntoIterator<Item = (u64, f64)>) -> String {
    let mut entries: Vec<(u64, f64)> = entries.into_iter().collect();
    entries.sort_unstable_by_key(|(key, _)| *key);
    let mut out = Vec::with_capacity(entries.len() * 16 + 2);
    out.push(b'{');
    for (i, (key, value)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(format!("\"{key}\":").as_bytes());
        js_number::write(value, &mut out);
    }
    out.push(b'}');
    String::from_utf8(out).expect("digits, quotes and punctuation")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_text_is_what_json_stringify_writes() {
        // Node: JSON.stringify({102: 186.4574, 101: 81, 311: 0.1 + 0.2})
        assert_eq!(
            js_object_text([(102, 186.4574), (101, 81.0), (311, 0.1 + 0.2)]),
            r#"{"101":81,"102":186.4574,"311":0.30000000000000004}"#
        );
        assert_eq!(js_object_text([]), "{}");
    }
}
