//! Live rankings, race results and leaderboards through real WebSockets and
//! HTTP, on the all-in-one.

use crate::common::*;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn viewer(server: &Server, query: &str) -> Socket {
    let (ws, _) =
        tokio_tungstenite::connect_async(server.ws_url(&format!("/v1/rankings/ws?{query}")))
            .await
            .unwrap();
    ws
}

/// The next push, or `None` if none comes within `wait`.
async fn next_push(ws: &mut Socket, wait: Duration) -> Option<Value> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => return None,
            Ok(Some(Ok(Message::Text(text)))) => return Some(serde_json::from_str(&text).unwrap()),
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("viewer socket ended: {other:?}"),
        }
    }
}

/// Expected standings at one second: racer ids by output (desc; ties: the
/// earlier post, here the lower id), with outputs and bests so far.
fn expected_standings(seconds: &[Vec<Sample>], second: usize) -> Vec<(u64, f64, f64)> {
    let mut rows: Vec<(u64, f64, f64)> = seconds[second]
        .iter()
        .map(|s| {
            let best = seconds[..=second]
                .iter()
                .flatten()
                .filter(|p| p.racer == s.racer)
                .map(Sample::expected_output)
                .fold(f64::MIN, f64::max);
            (s.racer, s.expected_output(), best)
        })
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    rows
}

fn here_now(push: &Value) -> Vec<(u64, f64, f64)> {
    push["hereNow"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["racerId"].as_u64().unwrap(),
                e["output"].as_f64().unwrap(),
                e["best"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_posted_second_by_second_is_pushed_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // No delivery, so no history while the race runs: every live output is
    // a new personal record however slowly the pushes come. (With history
    // flowing, a later push of a second may already rank against this
    // race's own published bests.)
    let server = Server::start_with(test_config_without_delivery(dir.path())).await;
    let client = reqwest::Client::new();
    let mut ws = viewer(&server, "classId=2").await;
    let mut other_class = viewer(&server, "classId=3").await;
    let seconds = race(4242, 2, 10, 6, 8);

    let mut pushes: BTreeMap<u64, Vec<Value>> = BTreeMap::new();
    for (i, samples) in seconds.iter().enumerate() {
        let body = Value::Array(samples.iter().map(Sample::json).collect());
        assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
        // Wait for the push of this second, keeping every push seen.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let push = next_push(&mut ws, PATIENCE).await.expect("a push");
            let second = push["second"].as_u64().unwrap();
            pushes.entry(second).or_default().push(push);
            if second == i as u64 + 1 {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline);
        }
    }
    for (i, _) in seconds.iter().enumerate() {
        let at = &pushes[&(i as u64 + 1)];
        let last = at.last().unwrap();
        assert_eq!(
            (
                last["type"].as_str(),
                last["classId"].as_u64(),
                last["raceId"].as_u64()
            ),
            (Some("race"), Some(2), Some(4242))
        );
        assert_eq!(last["racers"], 6);
        assert_eq!(
            here_now(last),
            expected_standings(&seconds, i),
            "second {}",
            i + 1
        );
        let ranks: Vec<u64> = last["hereNow"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["rank"].as_u64().unwrap())
            .collect();
        assert_eq!(ranks, (1..=6).collect::<Vec<_>>());
        // allTime covers the same racers; with no history, every live
        // output is a new personal record.
        let all_time = last["allTime"].as_array().unwrap();
        assert_eq!(all_time.len(), 6);
        assert!(
            all_time
                .iter()
                .all(|e| e["newRecord"] == true && e["personalBest"].is_null())
        );
    }
    assert!(
        next_push(&mut other_class, Duration::from_millis(300))
            .await
            .is_none(),
        "class 3 saw nothing"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_time_ranks_come_from_the_published_class_files() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    // A first race sets everyone's bests...
    let first = race(1, 5, 1, 4, 3);
    let body = Value::Array(first.iter().flatten().map(Sample::json).collect());
    assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    wait_for_bests(&server.base, &bests(first.iter().flatten())).await;
    wait_for_rankings_to_load_class(&server.base, 5, 1..=4).await;

    // ...then racer 1 rides again at second 1, slower than everyone's best.
    let mut ws = viewer(&server, "classId=5&raceId=2").await;
    let mut again = first[0][0];
    again.race = 2;
    again.cadence_q = 0;
    again.resistance_q = 0;
    assert_eq!(
        post_json(&client, &server.base, &json!([again.json()]))
            .await
            .0,
        202
    );
    let push = next_push(&mut ws, PATIENCE).await.unwrap();
    let entry = &push["allTime"][0];
    assert_eq!(entry["racerId"], 1);
    let stored = bests(first.iter().flatten())[&5][&1].clone();
    let rivals_above = stored
        .iter()
        .filter(|(r, o)| **r != 1 && **o > again.expected_output())
        .count();
    assert_eq!(entry["rank"].as_u64().unwrap() as usize, rivals_above + 1);
    assert_eq!(entry["of"], 4);
    assert_eq!(entry["personalBest"].as_f64(), stored.get(&1).copied());
    assert_eq!(entry["newRecord"], false);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_following_a_racer_gets_its_rank_and_neighbours() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rankings.top = std::num::NonZeroUsize::new(2).unwrap();
    let server = Server::start_with(config).await;
    let client = reqwest::Client::new();
    let seconds = race(77, 1, 100, 9, 1);
    let order = expected_standings(&seconds, 0);
    let slowest = order.last().unwrap().0;
    let mut mine = viewer(&server, &format!("classId=1&racerId={slowest}")).await;
    let mut anyone = viewer(&server, "classId=1").await;
    let body = Value::Array(seconds[0].iter().map(Sample::json).collect());
    assert_eq!(post_json(&client, &server.base, &body).await.0, 202);

    let push = next_push(&mut mine, PATIENCE).await.unwrap();
    let ids: Vec<u64> = here_now(&push).iter().map(|r| r.0).collect();
    let mut want: Vec<u64> = order[..2].iter().map(|r| r.0).collect();
    want.extend(order[6..].iter().map(|r| r.0));
    assert_eq!(
        ids, want,
        "top 2, then the racer and its 2 neighbours above"
    );
    assert_eq!(
        push["hereNow"].as_array().unwrap().last().unwrap()["rank"],
        9
    );
    let shared = next_push(&mut anyone, PATIENCE).await.unwrap();
    assert_eq!(here_now(&shared).len(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_with_a_follow_list_gets_the_followed_racers_ranked_among_themselves() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.rankings.top = std::num::NonZeroUsize::new(2).unwrap();
    let server = Server::start_with(config).await;
    let client = reqwest::Client::new();
    let seconds = race(66, 3, 500, 9, 1);
    let order = expected_standings(&seconds, 0);
    // Three of the field, out of order, and one who is not racing.
    let followed = [order[7].0, order[1].0, order[4].0];
    let query = format!(
        "classId=3&follow={},{},{},424242",
        followed[0], followed[1], followed[2]
    );
    let mut ws = viewer(&server, &query).await;
    let body = Value::Array(seconds[0].iter().map(Sample::json).collect());
    assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    let push = next_push(&mut ws, PATIENCE).await.unwrap();
    let following: Vec<(u64, u64, u64, f64)> = push["following"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["followingRank"].as_u64().unwrap(),
                e["rank"].as_u64().unwrap(),
                e["racerId"].as_u64().unwrap(),
                e["output"].as_f64().unwrap(),
            )
        })
        .collect();
    let want: Vec<(u64, u64, u64, f64)> = [1, 4, 7]
        .iter()
        .enumerate()
        .map(|(n, &row)| (n as u64 + 1, row as u64 + 1, order[row].0, order[row].1))
        .collect();
    assert_eq!(following, want);
    assert_eq!(here_now(&push).len(), 2, "the top as everyone gets it");
    server.stop().await;
}

/// `racer`'s bests in `class` as the rankings service answers them, once it
/// holds `seconds` of them.
async fn wait_bests(server: &Server, racer: u64, class: u8, want: &BTreeMap<String, f64>) {
    let url = format!("{}/v1/racers/{racer}/bests?classId={class}", server.base);
    eventually("the racer's bests loaded", || async {
        let body: Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
        let got: BTreeMap<String, f64> = serde_json::from_value(body["seconds"].clone()).ok()?;
        (got == *want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_racer_races_its_own_bests_as_they_stood_when_the_race_started() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let post = |samples: &[Sample]| {
        let body = Value::Array(samples.iter().map(Sample::json).collect());
        let (client, base) = (client.clone(), server.base.clone());
        async move { assert_eq!(post_json(&client, &base, &body).await.0, 202) }
    };
    // Race 1: racer 700 and a rival set the bests.
    let past = race(1, 5, 700, 2, 3);
    for second in &past {
        post(second).await;
    }
    let bests_of = |races: &[&Vec<Vec<Sample>>], racer: u64| -> BTreeMap<String, f64> {
        let all = bests(races.iter().flat_map(|r| r.iter().flatten()));
        all[&5]
            .iter()
            .filter_map(|(s, by)| Some((s.to_string(), *by.get(&racer)?)))
            .collect()
    };
    let past_bests = bests_of(&[&past], 700);
    wait_bests(&server, 700, 5, &past_bests).await;

    // Race 2 starts: its first two seconds go into the class file too...
    let now = race(2, 5, 700, 1, 3);
    let mut ws = viewer(&server, "classId=5&raceId=2&racerId=700").await;
    post(&now[0]).await;
    post(&now[1]).await;
    wait_bests(
        &server,
        700,
        5,
        &bests_of(&[&past, &now[..2].to_vec()], 700),
    )
    .await;
    // ...but the racer races the bests of when race 2 started.
    post(&now[2]).await;
    let push = loop {
        let push = next_push(&mut ws, PATIENCE).await.unwrap();
        if push["second"] == 3 && push["ghost"]["second"] == 3 {
            break push;
        }
    };
    let ghost = &push["ghost"];
    let outputs: Vec<f64> = now.iter().map(|s| s[0].expected_output()).collect();
    let total: f64 = outputs.iter().sum();
    let pb_total: f64 = past_bests.values().sum();
    let class_best_3 = past[2]
        .iter()
        .map(Sample::expected_output)
        .fold(f64::MIN, f64::max);
    assert_eq!(ghost["racerId"], 700);
    assert_eq!(ghost["output"].as_f64().unwrap(), outputs[2]);
    assert_eq!(ghost["pb"].as_f64().unwrap(), past_bests["3"]);
    assert_eq!(ghost["classBest"].as_f64().unwrap(), class_best_3);
    assert!(
        (ghost["total"].as_f64().unwrap() - total).abs() < 1e-6,
        "{ghost}"
    );
    assert!(
        (ghost["pbTotal"].as_f64().unwrap() - pb_total).abs() < 1e-6,
        "{ghost}"
    );
    assert_eq!(ghost["ahead"], total >= pb_total, "{ghost}");
    // A viewer following nobody gets no ghost.
    let mut anyone = viewer(&server, "classId=5&raceId=2").await;
    let shared = next_push(&mut anyone, PATIENCE).await.unwrap();
    assert!(shared.get("ghost").is_none(), "{shared}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_connects_mid_race_gets_its_latest_state_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let mut first = viewer(&server, "classId=2").await;
    let seconds = race(88, 2, 300, 4, 2);
    for samples in &seconds {
        let body = Value::Array(samples.iter().map(Sample::json).collect());
        assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    }
    let mut latest = next_push(&mut first, PATIENCE).await.unwrap();
    while latest["second"] != 2 {
        latest = next_push(&mut first, PATIENCE).await.unwrap();
    }
    // Nothing new is posted: a viewer connecting (or reconnecting) now sees
    // the race as it stands, without waiting for its next change.
    for query in ["classId=2", "classId=2&raceId=88", "classId=2&racerId=301"] {
        let mut late = viewer(&server, query).await;
        let push = next_push(&mut late, Duration::from_secs(2))
            .await
            .unwrap_or_else(|| panic!("{query}: no state on connect"));
        assert_eq!(push["second"], 2, "{query}");
        assert_eq!(here_now(&push), here_now(&latest), "{query}");
    }
    let mut other_race = viewer(&server, "classId=2&raceId=89").await;
    assert!(
        next_push(&mut other_race, Duration::from_millis(500))
            .await
            .is_none()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_vanished_viewer_never_delays_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    // The attentive viewer follows one race; the stalled one, every race of
    // the class, and never reads.
    let mut fast = viewer(&server, "classId=4&raceId=1000").await;
    let mut stalled = viewer(&server, "classId=4").await;
    let vanished = viewer(&server, "classId=4").await;
    drop(vanished);

    // Many big races at once: far more than a stalled socket can buffer.
    let races: Vec<_> = (0..40)
        .map(|r| race(1000 + r, 4, r * 1000, 60, 30))
        .collect();
    // When each second of race 1000 (the attentive viewer's) was posted.
    let posted = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let poster = {
        let (client, base, posted) = (client.clone(), server.base.clone(), posted.clone());
        tokio::spawn(async move {
            for second in 0..30 {
                for seconds in &races {
                    if seconds[0][0].race == 1000 {
                        posted.lock().unwrap().push(tokio::time::Instant::now());
                    }
                    let body = Value::Array(seconds[second].iter().map(Sample::json).collect());
                    assert_eq!(post_json(&client, &base, &body).await.0, 202);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    // Each second of race 1000 reaches the attentive viewer promptly, however
    // far behind the stalled one is.
    let mut delays = Vec::new();
    while delays.len() < 30 {
        let push = next_push(&mut fast, PATIENCE)
            .await
            .expect("a push for every second");
        let second = push["second"].as_u64().unwrap() as usize;
        if second > delays.len() {
            let at = tokio::time::Instant::now();
            let sent = posted.lock().unwrap()[second - 1];
            delays.resize(second, Duration::ZERO);
            delays[second - 1] = at.duration_since(sent);
        }
    }
    poster.await.unwrap();
    let worst = delays.iter().max().unwrap();
    assert!(
        *worst < Duration::from_secs(2),
        "a push came {worst:?} after its data"
    );

    // The stalled viewer is cut off once its pushes have waited
    // STALLED_AFTER (5 s) untaken, at the next push: races go on until then.
    let still_racing = {
        let (client, base) = (client.clone(), server.base.clone());
        let seconds = race(2000, 4, 90_000, 5, 300);
        tokio::spawn(async move {
            for second in &seconds {
                let body = Value::Array(second.iter().map(Sample::json).collect());
                assert_eq!(post_json(&client, &base, &body).await.0, 202);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(6)).await;
    // After what its socket buffered, a close frame saying why.
    let close = tokio::time::timeout(PATIENCE, async {
        while let Some(Ok(message)) = stalled.next().await {
            if let Message::Close(frame) = message {
                return frame;
            }
        }
        None
    })
    .await
    .expect("the stalled viewer's socket ends");
    assert_eq!(close.as_ref().map(|f| u16::from(f.code)), Some(1008));
    assert!(close.unwrap().reason.contains("too slow"));
    still_racing.abort();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_and_leaderboards_after_several_races_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path()).await;
    let client = reqwest::Client::new();
    let races = [
        race(501, 3, 1, 5, 6),
        race(502, 3, 3, 5, 6),
        race(503, 3, 1, 3, 6),
    ];
    for seconds in &races {
        for samples in seconds {
            let body = Value::Array(samples.iter().map(Sample::json).collect());
            assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
        }
    }
    // Expected: per race, per racer, the final output, average, best, seconds.
    let mut board: BTreeMap<u64, (f64, u64)> = BTreeMap::new();
    let mut expected_races = Vec::new();
    for seconds in &races {
        let race_id = seconds[0][0].race;
        let mut results: Vec<(u64, f64, f64, f64, usize)> = seconds[0]
            .iter()
            .map(|s| {
                let all: Vec<f64> = seconds
                    .iter()
                    .flatten()
                    .filter(|p| p.racer == s.racer)
                    .map(Sample::expected_output)
                    .collect();
                let last = *all.last().unwrap();
                let average =
                    ((all.iter().sum::<f64>() / all.len() as f64) * 10_000.0).round() / 10_000.0;
                (
                    s.racer,
                    last,
                    average,
                    all.iter().copied().fold(f64::MIN, f64::max),
                    all.len(),
                )
            })
            .collect();
        results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        for r in &results {
            let e = board.entry(r.0).or_insert((r.1, race_id));
            if r.1 > e.0 {
                *e = (r.1, race_id);
            }
        }
        expected_races.push((race_id, results));
    }
    let check = |base: String| {
        let client = client.clone();
        let expected_races = expected_races.clone();
        let board = board.clone();
        async move {
            let list: Value = eventually("every race's results", || async {
                let v: Value = client
                    .get(format!("{base}/v1/races?classId=3"))
                    .send()
                    .await
                    .ok()?
                    .json()
                    .await
                    .ok()?;
                let complete = v["races"].as_array()?.len() == 3
                    && v["races"]
                        .as_array()?
                        .iter()
                        .all(|r| r["results"].as_array().is_some_and(|x| x.len() >= 3));
                complete.then_some(v)
            })
            .await;
            let ids: Vec<u64> = list["races"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["raceId"].as_u64().unwrap())
                .collect();
            assert_eq!(ids, [503, 502, 501], "newest first");
            for (race_id, results) in &expected_races {
                let one: Value = client
                    .get(format!("{base}/v1/races/{race_id}"))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let got: Vec<(u64, f64, f64, f64, usize)> = one["classes"][0]["results"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            r["racerId"].as_u64().unwrap(),
                            r["output"].as_f64().unwrap(),
                            r["average"].as_f64().unwrap(),
                            r["best"].as_f64().unwrap(),
                            r["seconds"].as_u64().unwrap() as usize,
                        )
                    })
                    .collect();
                assert_eq!(&got, results, "race {race_id}");
            }
            // Leaderboard: each racer once with its best result, paged by 3.
            let mut want: Vec<(u64, f64, u64)> =
                board.iter().map(|(r, (o, race))| (*r, *o, *race)).collect();
            want.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let mut got = Vec::new();
            let mut cursor: Option<String> = None;
            for _ in 0..10 {
                let url = match &cursor {
                    Some(c) => format!("{base}/v1/leaderboard?classId=3&limit=3&cursor={c}"),
                    None => format!("{base}/v1/leaderboard?classId=3&limit=3"),
                };
                let page: Value = client.get(url).send().await.unwrap().json().await.unwrap();
                for e in page["entries"].as_array().unwrap() {
                    got.push((
                        e["racerId"].as_u64().unwrap(),
                        e["output"].as_f64().unwrap(),
                        e["raceId"].as_u64().unwrap(),
                    ));
                }
                cursor = page["next"].as_str().map(str::to_owned);
                if cursor.is_none() {
                    break;
                }
            }
            assert_eq!(got, want);
            let around: Value = client
                .get(format!(
                    "{base}/v1/leaderboard?classId=3&around={}&limit=3",
                    want[3].0
                ))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let ids: Vec<u64> = around["entries"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["racerId"].as_u64().unwrap())
                .collect();
            assert_eq!(ids, [want[2].0, want[3].0, want[4].0]);
        }
    };
    check(server.base.clone()).await;
    server.stop().await;

    let server = Server::start(dir.path()).await;
    check(server.base.clone()).await;
    for (url, status) in [
        ("/v1/leaderboard", 400),
        ("/v1/leaderboard?classId=9", 400),
        ("/v1/leaderboard?classId=3&limit=0", 400),
        ("/v1/leaderboard?classId=3&cursor=abc", 400),
        ("/v1/leaderboard?classId=3&around=999999", 404),
        ("/v1/races?classId=x", 400),
        ("/v1/races/123456789", 404),
        ("/v1/races/abc", 400),
        ("/v1/rankings/ws?classId=3", 400),
        ("/v1/rankings/ws", 400),
    ] {
        let response = client
            .get(format!("{}{url}", server.base))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{url}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{url}: {body}"
        );
    }
    server.stop().await;
}
