//! Disqualifications through the operators' API: a race taken back and a
//! whole racer taken out, checked in the class files, the pushes' "All
//! time", race results and leaderboards, across a restart, then given back;
//! on the embedded all-in-one and on Kinesis and S3 with each service in
//! its own process.

use crate::common::aws::Aws;
use crate::common::*;
use futures_util::StreamExt as _;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const CLASS: u8 = 3;

/// Racer 7 rides race 10 strongly (188.75 a second) and race 20 weakly
/// (63.7, one second longer); racer 8 rides race 10 (118.75).
fn races() -> Vec<Sample> {
    let ride = |race, racer, seconds: u16, cadence_q, resistance_q| {
        (1..=seconds).map(move |second| Sample {
            race,
            class: CLASS,
            racer,
            second,
            last: second == seconds,
            cadence_q,
            resistance_q,
        })
    };
    ride(10, 7, 3, 360, 344)
        .chain(ride(20, 7, 4, 120, 132))
        .chain(ride(10, 8, 3, 240, 240))
        .collect()
}

fn without(samples: &[Sample], out: impl Fn(&Sample) -> bool) -> Bests {
    bests(samples.iter().filter(|s| !out(s)))
}

/// The operators' API of one process.
struct Admin {
    base: String,
    client: reqwest::Client,
}

impl Admin {
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let body = response.bytes().await.unwrap();
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn disqualify(&self, body: Value) -> (u16, Value) {
        let request = self
            .client
            .post(format!("{}/v1/admin/disqualifications", self.base))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body);
        self.send(request).await
    }

    async fn reinstate(&self, id: &Value) -> u16 {
        let request = self
            .client
            .delete(format!("{}/v1/admin/disqualifications/{id}", self.base))
            .bearer_auth(ADMIN_TOKEN);
        self.send(request).await.0
    }

    async fn list(&self) -> Value {
        let request = self
            .client
            .get(format!("{}/v1/admin/disqualifications", self.base))
            .bearer_auth(ADMIN_TOKEN);
        let (status, body) = self.send(request).await;
        assert_eq!(status, 200, "{body}");
        body
    }
}

fn admin_config(dir: &std::path::Path) -> alleycat::Config {
    let mut config = test_config(dir);
    config.history.admin_token = Some(alleycat_history::AdminToken::parse(ADMIN_TOKEN).unwrap());
    config
}

/// `(racerId, raceId, output)` of a class's leaderboard.
async fn leaderboard(base: &str) -> Vec<(u64, u64, f64)> {
    let body: Value = reqwest::get(format!("{base}/v1/leaderboard?classId={CLASS}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["racerId"].as_u64().unwrap(),
                e["raceId"].as_u64().unwrap(),
                e["output"].as_f64().unwrap(),
            )
        })
        .collect()
}

/// The racers of race `race`'s results in the class, in rank order.
async fn results(base: &str, race: u64) -> Vec<u64> {
    let response = reqwest::get(format!("{base}/v1/races/{race}"))
        .await
        .unwrap();
    if response.status() == 404 {
        return Vec::new();
    }
    let body: Value = response.json().await.unwrap();
    body["classes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["classId"] == CLASS)
        .flat_map(|c| c["results"].as_array().unwrap().clone())
        .map(|r| r["racerId"].as_u64().unwrap())
        .collect()
}

/// Waits for the results and leaderboard to read as expected.
async fn wait_for_boards(base: &str, race_10: &[u64], board: &[(u64, u64, f64)]) {
    eventually("race 10's results and the leaderboard", || async {
        let got = (results(base, 10).await, leaderboard(base).await);
        (got.0 == race_10 && got.1 == board).then_some(())
    })
    .await;
}

/// Racer 9 riding second 1 of `race` at 88.
fn rider(race: u64) -> Sample {
    Sample {
        race,
        class: CLASS,
        racer: 9,
        second: 1,
        last: false,
        cadence_q: 180,
        resistance_q: 180,
    }
}

/// Every racer `sent` names.
fn racers(sent: &[Sample]) -> impl Iterator<Item = u64> + '_ {
    sent.iter().map(|s| s.racer)
}

/// Where racer 9, riding second 1 of a new race, stands in "All time" at
/// second 1: `(rank, of)`. Its record is added to `sent`.
async fn all_time_of_a_rider(base: &str, race: u64, sent: &mut Vec<Sample>) -> (u64, u64) {
    let url = format!(
        "{}/v1/rankings/ws?classId={CLASS}&raceId={race}",
        base.replacen("http://", "ws://", 1)
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let rider = rider(race);
    sent.push(rider);
    let client = reqwest::Client::new();
    assert_eq!(
        post_json(&client, base, &json!([rider.json()])).await.0,
        202
    );
    let push = tokio::time::timeout(PATIENCE, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    break serde_json::from_str::<Value>(&text).unwrap();
                }
                Some(Ok(_)) => {}
                other => panic!("viewer socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("a push");
    let entry = &push["allTime"][0];
    assert_eq!(entry["racerId"], 9);
    (
        entry["rank"].as_u64().unwrap(),
        entry["of"].as_u64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_race_and_a_racer_are_taken_back_everywhere_and_given_back_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(admin_config(dir.path())).await;
    let admin = Admin {
        base: server.base.clone(),
        client: reqwest::Client::new(),
    };
    let client = reqwest::Client::new();
    let mut sent = races();
    let body = Value::Array(sent.iter().map(Sample::json).collect());
    assert_eq!(post_json(&client, &server.base, &body).await.0, 202);
    wait_for_bests(&server.base, &bests(&sent)).await;
    wait_for_boards(&server.base, &[7, 8], &[(7, 10, 188.75), (8, 10, 118.75)]).await;
    wait_for_rankings_to_load_class(&server.base, CLASS, racers(&sent)).await;
    assert_eq!(
        all_time_of_a_rider(&server.base, 30, &mut sent).await,
        (3, 3)
    );

    // Race 10 of racer 7 is disqualified.
    let (status, entry) = admin
        .disqualify(json!({"racerId": 7, "raceId": 10, "reason": "cadence sensor taped"}))
        .await;
    assert_eq!(status, 201, "{entry}");
    let schema = crate::contract::Schema::load("disqualification");
    schema.assert_valid(&entry);
    assert_eq!(entry["racerId"], 7);
    assert_eq!(entry["raceId"], 10);
    assert_eq!(entry["reason"], "cadence sensor taped");
    let (again, same) = admin
        .disqualify(json!({"racerId": 7, "raceId": 10, "reason": "twice"}))
        .await;
    assert_eq!(
        (again, &same["id"]),
        (201, &entry["id"]),
        "asking twice stores one entry"
    );
    let race_taken = without(&sent, |s| s.racer == 7 && s.race == 10);
    wait_for_bests(&server.base, &race_taken).await;
    // Ingest refuses the race's new records, with the reason.
    let mut late = sent[0];
    late.second = 9;
    let (status, refusal) = post_json(&client, &server.base, &json!([late.json()])).await;
    assert_eq!(status, 403, "{refusal}");
    let reason = refusal["records"][0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("disqualified from race 10: cadence sensor taped"),
        "{refusal}"
    );
    wait_for_boards(&server.base, &[8], &[(8, 10, 118.75), (7, 20, 63.7)]).await;
    wait_for_rankings_to_load_class(&server.base, CLASS, racers(&sent)).await;
    // Racer 7's 63.7 is below racer 9's own 88 now; racer 8 is above.
    assert_eq!(
        all_time_of_a_rider(&server.base, 31, &mut sent).await,
        (2, 3)
    );

    // A restart keeps it all.
    server.stop().await;
    let server = Server::start_with(admin_config(dir.path())).await;
    let admin = Admin {
        base: server.base.clone(),
        ..admin
    };
    assert_eq!(
        fetch_class(&server.base, CLASS).await.as_ref(),
        race_taken.get(&CLASS)
    );
    wait_for_boards(&server.base, &[8], &[(8, 10, 118.75), (7, 20, 63.7)]).await;
    let listed = admin.list().await;
    assert_eq!(listed["entries"].as_array().unwrap().len(), 1, "{listed}");
    schema.assert_valid(&listed["entries"][0]);

    // Reinstated: everything is back.
    assert_eq!(admin.reinstate(&entry["id"]).await, 204);
    assert_eq!(admin.reinstate(&entry["id"]).await, 404, "already gone");
    wait_for_bests(&server.base, &bests(&sent)).await;
    wait_for_boards(&server.base, &[7, 8], &[(7, 10, 188.75), (8, 10, 118.75)]).await;

    // Racer 8 is disqualified from everything.
    let (status, _) = admin
        .disqualify(json!({"racerId": 8, "reason": "account shared"}))
        .await;
    assert_eq!(status, 201);
    wait_for_bests(&server.base, &without(&sent, |s| s.racer == 8)).await;
    wait_for_boards(&server.base, &[7], &[(7, 10, 188.75)]).await;
    let mut late = sent[0];
    (late.racer, late.race) = (8, 77);
    let (status, refusal) = post_json(&client, &server.base, &json!([late.json()])).await;
    assert_eq!(status, 403, "{refusal}");
    assert!(
        refusal["records"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("disqualified from every race: account shared"),
        "{refusal}"
    );
    wait_for_rankings_to_load_class(&server.base, CLASS, racers(&sent)).await;
    // At second 1: racer 7 (188.75) above, racer 9's own earlier best below.
    assert_eq!(
        all_time_of_a_rider(&server.base, 32, &mut sent).await,
        (2, 2)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_needs_its_token_checks_requests_and_is_absent_without_one() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_with(admin_config(dir.path())).await;
    let client = reqwest::Client::new();
    let url = format!("{}/v1/admin/disqualifications", server.base);
    let body = json!({"racerId": 7, "reason": "x"});
    for request in [
        client.post(&url).json(&body),
        client
            .post(&url)
            .bearer_auth("wrong-token-0123456789")
            .json(&body),
        client.get(&url),
        client.delete(format!("{url}/1")),
        client.get(&url).header("authorization", ADMIN_TOKEN),
        client
            .get(&url)
            .header("authorization", format!("Basic {ADMIN_TOKEN}")),
        client
            .get(&url)
            .bearer_auth(&ADMIN_TOKEN[..ADMIN_TOKEN.len() - 1]),
    ] {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401);
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"].as_str().unwrap().contains("bearer token"),
            "{error}"
        );
    }
    let admin = Admin {
        base: server.base.clone(),
        client: client.clone(),
    };
    for (body, status, names) in [
        (json!({"reason": "x"}), 422, "racerId"),
        (json!({"racerId": 7}), 422, "reason"),
        (json!({"racerId": 7, "reason": "  "}), 422, "reason"),
        (json!({"racerId": -1, "reason": "x"}), 422, "racerId"),
        (
            json!({"racerId": 9007199254740992_u64, "reason": "x"}),
            422,
            "racerId",
        ),
        (
            json!({"racerId": 7, "raceId": "ten", "reason": "x"}),
            422,
            "raceId",
        ),
        (
            json!({"racerId": 7, "reason": "x", "racer": 8}),
            400,
            "racer",
        ),
        (json!([7]), 400, "JSON object"),
    ] {
        let (got, error) = admin.disqualify(body.clone()).await;
        assert_eq!(got, status, "{body} -> {error}");
        assert!(
            error["error"].as_str().unwrap().contains(names),
            "{body} -> {error}"
        );
    }
    assert_eq!(admin.reinstate(&json!("abc")).await, 404);
    // The scheme is case-insensitive (RFC 9110).
    let lower = client
        .get(&url)
        .header("authorization", format!("bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(lower.status(), 200);
    assert_eq!(
        admin.list().await,
        json!({"entries": []}),
        "nothing was stored"
    );
    server.stop().await;

    // Without a token configured, the routes do not exist.
    let server = Server::start(dir.path()).await;
    let response = client
        .get(format!("{}/v1/admin/disqualifications", server.base))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the local Kinesis and S3 servers (./scripts/test starts them)"]
async fn on_kinesis_and_s3_every_process_applies_a_disqualification_and_its_reinstatement() {
    let aws = Aws::fresh("disq", 2).await;
    let mut env = aws.env();
    env.push(("ALLEYCAT_ADMIN_TOKEN".to_owned(), ADMIN_TOKEN.to_owned()));
    let ingest = spawn_alleycat(&["ingest"], &env).await;
    let _transformer = spawn_alleycat(&["transformer"], &env).await;
    let history = spawn_alleycat(&["history"], &env).await;
    let rankings = spawn_alleycat(&["rankings"], &env).await;
    let admin = Admin {
        base: history.base.clone(),
        client: reqwest::Client::new(),
    };
    let client = reqwest::Client::new();
    let sent = races();
    let body = Value::Array(sent.iter().map(Sample::json).collect());
    assert_eq!(post_json(&client, &ingest.base, &body).await.0, 202);
    wait_for_bests(&history.base, &bests(&sent)).await;
    wait_for_boards(&rankings.base, &[7, 8], &[(7, 10, 188.75), (8, 10, 118.75)]).await;

    let (status, entry) = admin
        .disqualify(json!({"racerId": 7, "raceId": 10, "reason": "cadence sensor taped"}))
        .await;
    assert_eq!(status, 201, "{entry}");
    wait_for_bests(
        &history.base,
        &without(&sent, |s| s.racer == 7 && s.race == 10),
    )
    .await;
    wait_for_boards(&rankings.base, &[8], &[(8, 10, 118.75), (7, 20, 63.7)]).await;
    // The ingest process, reading the list from S3, refuses the race.
    let late = json!([sent[0].json()]);
    eventually("ingest to refuse the disqualified race", || async {
        (post_json(&client, &ingest.base, &late).await.0 == 403).then_some(())
    })
    .await;

    // The history process restarts: the change holds; then a reinstatement.
    history.terminate().await;
    let history = spawn_alleycat(&["history"], &env).await;
    wait_for_bests(
        &history.base,
        &without(&sent, |s| s.racer == 7 && s.race == 10),
    )
    .await;
    let admin = Admin {
        base: history.base.clone(),
        ..admin
    };
    assert_eq!(admin.reinstate(&entry["id"]).await, 204);
    wait_for_bests(&history.base, &bests(&sent)).await;
    wait_for_boards(&rankings.base, &[7, 8], &[(7, 10, 188.75), (8, 10, 118.75)]).await;
}
