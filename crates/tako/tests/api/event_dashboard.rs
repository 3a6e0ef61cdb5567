//! What the dashboard's Events page reads and sends besides the JSON:API resources (issue 16):
//! an event's statistics, the completers' and draws' CSV exports, and the booth CSV import
//! with its QR sheet as a zip. Every test runs on SQLite and, when configured, PostgreSQL.

use std::io::Read;

use reqwest::{Method, Response};
use serde_json::{json, Value};
use tako::config::Config;

use crate::helpers::{assert_error, backends, Backend, TestApp, JSONAPI};
use crate::rally::{admin, send};

const CLIENT: &str = "client-token";
const ADMIN: &str = "admin-token";
const SCAN_URL: &str = "https://app.example/sc/{code}";
const SCANNED: &str = "https://app.example/sc/";

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |c: &mut Config| {
        c.api_token = Some(CLIENT.into());
        c.admin_token = Some(ADMIN.into());
        c.scan_url = Some(SCAN_URL.into());
    })
    .await
}

async fn create_event(app: &TestApp, id: &str, required: u32) {
    let body = json!({"data": {"type": "event", "id": id,
        "attributes": {"name": format!("Event {id}"), "stamps_required": required}}});
    let response = admin(app, Method::POST, "/api/json/events", Some(body)).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
}

/// (stamp id, its QR content when printed)
async fn create_stamp(
    app: &TestApp,
    event: &str,
    name: &str,
    mode: &str,
) -> (String, Option<String>) {
    let body = json!({"data": {"type": "stamp", "attributes": {"name": name, "mode": mode}}});
    let response =
        admin(app, Method::POST, &format!("/api/json/events/{event}/stamps"), Some(body)).await;
    assert_eq!(response.status(), 201);
    let doc: Value = response.json().await.unwrap();
    (doc["data"]["id"].as_str().unwrap().to_owned(), doc["meta"]["qr"].as_str().map(str::to_owned))
}

async fn register(app: &TestApp, nickname: &str) -> String {
    let body = json!({"data": {"type": "user", "attributes": {"nickname": nickname}}});
    let response = send(app, CLIENT, Method::POST, "/api/json/accounts/users", Some(body)).await;
    assert_eq!(response.status(), 201);
    let doc: Value = response.json().await.unwrap();
    doc["data"]["id"].as_str().unwrap().to_owned()
}

async fn scan(app: &TestApp, user: &str, code: &str) -> u16 {
    let body = json!({"data": {"type": "scan", "attributes": {"code": code}}});
    let path = format!("/api/json/accounts/users/{user}/scans");
    send(app, CLIENT, Method::POST, &path, Some(body)).await.status().as_u16()
}

/// Moves a user's scans two hours back, as if they had scanned then.
async fn age_scans(app: &TestApp, user: &str) {
    use sqlx::Connection;
    match app.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&app.database_url).await.unwrap();
            sqlx::query(
                "UPDATE rally_scans SET scanned_at = scanned_at - 7200000000 WHERE user_id = ?1",
            )
            .bind(user)
            .execute(&mut conn)
            .await
            .unwrap();
        }
        Backend::Postgres(_) => {
            let mut conn = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
            sqlx::query("UPDATE rally_scans SET scanned_at = scanned_at - interval '2 hours' WHERE user_id = $1")
                .bind(user.parse::<uuid::Uuid>().unwrap())
                .execute(&mut conn)
                .await
                .unwrap();
        }
    }
}

#[tokio::test]
async fn stats_count_scans_per_stamp_and_per_minute() {
    for backend in backends() {
        let app = spawn(backend).await;
        create_event(&app, "ev", 2).await;
        create_event(&app, "other", 1).await;
        let (a, code_a) = create_stamp(&app, "ev", "A", "printed").await;
        let (b, code_b) = create_stamp(&app, "ev", "B", "printed").await;
        let (screen, _) = create_stamp(&app, "ev", "Stage", "screen").await;
        let (_, code_other) = create_stamp(&app, "other", "O", "printed").await;
        let (code_a, code_b) = (code_a.unwrap(), code_b.unwrap());
        let early = register(&app, "Early_Bird").await;
        let ana = register(&app, "Ana").await;
        let ben = register(&app, "Ben").await;
        assert_eq!(scan(&app, &early, &code_a).await, 201);
        age_scans(&app, &early).await;
        assert_eq!(scan(&app, &ana, &code_a).await, 201);
        assert_eq!(scan(&app, &ana, &code_b).await, 201);
        assert_eq!(scan(&app, &ana, &code_a).await, 200, "a repeat counts nothing");
        assert_eq!(scan(&app, &ben, &code_b).await, 201);
        assert_eq!(scan(&app, &ben, &code_other.unwrap()).await, 201, "another event's");

        let response = admin(&app, Method::GET, "/api/json/events/ev/stats", None).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], JSONAPI);
        let doc: Value = response.json().await.unwrap();
        let a_ = &doc["data"]["attributes"];
        assert_eq!(doc["data"]["type"], "event-stats");
        assert_eq!(a_["minutes"], 60);
        let per_stamp: Vec<(&str, u64)> = a_["stamps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| (s["id"].as_str().unwrap(), s["scans"].as_u64().unwrap()))
            .collect();
        assert_eq!(per_stamp, [(a.as_str(), 2), (b.as_str(), 2), (screen.as_str(), 0)], "{doc}");
        assert_eq!(a_["stamps"][2]["mode"], "screen");
        assert_eq!(a_["scans"], 4);
        assert_eq!(a_["completers"], 1, "Ana has both");
        // The last hour: the four recent scans, in this minute (or the one before, at a
        // minute's turn); the two-hour-old scan is outside.
        let minutes = a_["per_minute"].as_array().unwrap();
        let in_window: u64 = minutes.iter().map(|m| m["scans"].as_u64().unwrap()).sum();
        assert_eq!(in_window, 3, "{doc}");
        assert!(
            minutes.len() <= 2 && minutes[0]["minute"].as_str().unwrap().ends_with(":00.000000Z")
        );
        let since = chrono::DateTime::parse_from_rfc3339(a_["since"].as_str().unwrap()).unwrap();
        let until = chrono::DateTime::parse_from_rfc3339(a_["until"].as_str().unwrap()).unwrap();
        assert_eq!((until - since).num_minutes(), 60);

        let day: Value = admin(&app, Method::GET, "/api/json/events/ev/stats?minutes=1440", None)
            .await
            .json()
            .await
            .unwrap();
        let all: u64 = day["data"]["attributes"]["per_minute"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["scans"].as_u64().unwrap())
            .sum();
        assert_eq!(all, 4, "the day holds the early scan too");

        for bad in ["0", "1441", "x", "-1"] {
            let path = format!("/api/json/events/ev/stats?minutes={bad}");
            assert_error(admin(&app, Method::GET, &path, None).await, 400, "invalid_query").await;
        }
        let path = "/api/json/events/ev/stats";
        assert_eq!(send(&app, CLIENT, Method::GET, path, None).await.status(), 403);
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 401);
        let response = admin(&app, Method::GET, "/api/json/events/nope/stats", None).await;
        assert_eq!(response.status(), 404);
        let empty: Value = admin(&app, Method::GET, "/api/json/events/other/stats", None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(empty["data"]["attributes"]["scans"], 1);
        app.stop().await;
    }
}

async fn csv(app: &TestApp, token: &str, path: &str) -> Response {
    app.client
        .get(app.url(path))
        .bearer_auth(token)
        .header("accept", "text/csv")
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn completers_and_draws_export_as_csv() {
    for backend in backends() {
        let app = spawn(backend).await;
        create_event(&app, "fest", 1).await;
        let (_, code) = create_stamp(&app, "fest", "A", "printed").await;
        let code = code.unwrap();
        let mut users = Vec::new();
        for nickname in ["Kiara", "Ina", "Gura"] {
            let user = register(&app, nickname).await;
            assert_eq!(scan(&app, &user, &code).await, 201);
            users.push(user);
        }
        let response = csv(&app, ADMIN, "/api/events/fest/completers.csv").await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
        assert!(response.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("fest-completers.csv"));
        let text = response.text().await.unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(reader.headers().unwrap(), vec!["nickname", "completed_at"]);
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        let names: Vec<&str> = rows.iter().map(|r| &r[0]).collect();
        assert_eq!(names, ["Kiara", "Ina", "Gura"], "in completion order");
        assert!(chrono::DateTime::parse_from_rfc3339(&rows[0][1]).is_ok());
        assert!(users.iter().all(|u| !text.contains(u.as_str())), "no ids unless asked");

        let text = csv(&app, ADMIN, "/api/events/fest/completers.csv?user_ids=true")
            .await
            .text()
            .await
            .unwrap();
        assert!(text.starts_with("nickname,completed_at,user_id\n"));
        assert!(users.iter().all(|u| text.contains(u.as_str())));

        // Draws: empty, then one row per winner.
        let text = csv(&app, ADMIN, "/api/events/fest/draws.csv").await.text().await.unwrap();
        assert_eq!(text, "draw_id,drawn_at,requested,nickname\n");
        let body = json!({"data": {"type": "draw", "attributes": {"winners": 2}}});
        let drawn = admin(&app, Method::POST, "/api/json/events/fest/draws", Some(body)).await;
        assert_eq!(drawn.status(), 201);
        let drawn: Value = drawn.json().await.unwrap();
        let text = csv(&app, ADMIN, "/api/events/fest/draws.csv?user_ids=true")
            .await
            .text()
            .await
            .unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        assert_eq!(
            reader.headers().unwrap(),
            vec!["draw_id", "drawn_at", "requested", "nickname", "user_id"]
        );
        let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
        assert_eq!(rows.len(), 2);
        for row in &rows {
            assert_eq!(&row[0], drawn["data"]["id"].as_str().unwrap());
            assert_eq!(&row[2], "2");
            assert!(users.contains(&row[4].to_owned()));
        }

        for path in ["/api/events/fest/completers.csv", "/api/events/fest/draws.csv"] {
            assert_eq!(csv(&app, CLIENT, path).await.status(), 403);
            assert_eq!(csv(&app, "wrong", path).await.status(), 401);
            let bad = format!("{path}?user_ids=yes");
            assert_error(csv(&app, ADMIN, &bad).await, 400, "invalid_query").await;
        }
        assert_error(csv(&app, ADMIN, "/api/events/nope/draws.csv").await, 404, "not_found").await;
        assert_error(csv(&app, ADMIN, "/api/events/NOPE!/completers.csv").await, 404, "not_found")
            .await;
        app.stop().await;
    }
}

async fn import(app: &TestApp, event: &str, accept: &str, body: &str) -> Response {
    app.client
        .post(app.url(&format!("/api/events/{event}/stamps/import")))
        .bearer_auth(ADMIN)
        .header("accept", accept)
        .header("content-type", "text/csv")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

async fn stamps(app: &TestApp, event: &str) -> Vec<Value> {
    let path = format!("/api/json/events/{event}?include=stamps");
    let doc: Value = admin(app, Method::GET, &path, None).await.json().await.unwrap();
    doc["included"].as_array().unwrap().clone()
}

fn unzip(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).unwrap();
    let mut files = std::collections::BTreeMap::new();
    for i in 0..archive.len() {
        let mut file = archive.by_index(i).unwrap();
        let mut content = Vec::new();
        file.read_to_end(&mut content).unwrap();
        files.insert(file.name().unwrap().into_owned(), content);
    }
    files
}

fn decode_png(png: &[u8]) -> String {
    let image = image::load_from_memory(png).unwrap().to_luma8();
    let mut prepared = rqrr::PreparedImage::prepare(image);
    let grids = prepared.detect_grids();
    assert_eq!(grids.len(), 1);
    grids[0].decode().unwrap().1
}

/// A refused file's errors: 400 `invalid_csv`, one error object per problem.
async fn line_errors(response: Response) -> Vec<String> {
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], JSONAPI);
    let body: Value = response.json().await.unwrap();
    body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["code"], "invalid_csv", "{body}");
            e["detail"].as_str().unwrap().to_owned()
        })
        .collect()
}

#[tokio::test]
async fn a_booth_csv_imports_once_and_answers_with_its_qr_sheet() {
    for backend in backends() {
        let app = spawn(backend).await;
        create_event(&app, "fest", 2).await;
        let file = "name,booth_id,description,nsfw,visible,mode\n\
                    Kitsune Prints,4C16,\"Prints, stickers\",false,true,printed\n\
                    Hidden Cafe,5A01,,,false,\n\
                    Live Stage,STAGE,,,,screen\n";
        let response = import(&app, "fest", "application/zip", file).await;
        assert_eq!(response.status(), 201);
        assert_eq!(response.headers()["content-type"], "application/zip");
        assert_eq!(response.headers()["tako-stamps-created"], "3");
        assert_eq!(response.headers()["tako-stamps-updated"], "0");
        let files = unzip(&response.bytes().await.unwrap());
        let names: Vec<&str> = files.keys().map(String::as_str).collect();
        assert_eq!(names.len(), 5, "index.html and an SVG and a PNG per printed stamp: {names:?}");
        let index = String::from_utf8(files["index.html"].clone()).unwrap();
        for text in ["Event fest", "Kitsune Prints", "4C16", "Hidden Cafe", "Screen booth"] {
            assert!(index.contains(text), "{text} in {index}");
        }
        let pngs: Vec<&String> = files.keys().filter(|n| n.ends_with(".png")).collect();
        assert_eq!(pngs.len(), 2);
        let user = register(&app, "Scanner").await;
        for png in &pngs {
            let svg = png.replace(".png", ".svg");
            assert!(files.contains_key(&svg) && index.contains(&format!("src=\"{svg}\"")));
            let url = decode_png(&files[*png]);
            assert!(url.starts_with(SCANNED), "{url}");
            assert_eq!(scan(&app, &user, &url).await, 201, "the decoded code is accepted");
        }
        let listed = stamps(&app, "fest").await;
        assert_eq!(listed.len(), 3);
        let names: Vec<&str> =
            listed.iter().map(|s| s["attributes"]["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["Kitsune Prints", "Hidden Cafe", "Live Stage"], "in the file's order");

        // Again, as the CLI asks (JSON): known booths are updated in the file's columns only,
        // no code is shown again, the new one gets its code.
        let again = "name,booth_id,visible\nKitsune Prints & Co,4C16,true\nHidden Cafe,5A01,true\nNew,7B02,\n";
        let response = import(&app, "fest", JSONAPI, again).await;
        assert_eq!(response.status(), 201);
        let doc: Value = response.json().await.unwrap();
        let a = &doc["data"]["attributes"];
        assert_eq!((a["created"].as_u64(), a["updated"].as_u64()), (Some(1), Some(2)));
        let booths = a["booths"].as_array().unwrap();
        assert!(booths[0]["qr"].is_null() && booths[1]["qr"].is_null());
        assert_eq!(booths[2]["line"], 4);
        assert!(booths[2]["qr"].as_str().unwrap().starts_with(SCANNED));
        let listed = stamps(&app, "fest").await;
        assert_eq!(listed.len(), 4, "no duplicates");
        assert_eq!(listed[0]["attributes"]["name"], "Kitsune Prints & Co");
        assert_eq!(
            listed[0]["attributes"]["description"], "Prints, stickers",
            "column absent: kept"
        );
        assert_eq!(listed[1]["attributes"]["visible"], true);
        // A zip of known booths only: the index, no QR files.
        let response = import(&app, "fest", "application/zip", again).await;
        let files = unzip(&response.bytes().await.unwrap());
        assert_eq!(files.keys().collect::<Vec<_>>(), ["index.html"]);
        let index = String::from_utf8(files["index.html"].clone()).unwrap();
        assert_eq!(index.matches("issued by an earlier import").count(), 3);

        // A malformed file: every bad line named, nothing imported.
        let bad = "name,booth_id,nsfw\nFine,9Z99,false\n,8Y88,\nBad,7X77,perhaps\n";
        let details = line_errors(import(&app, "fest", JSONAPI, bad).await).await;
        assert_eq!(details.len(), 2, "{details:?}");
        assert!(details[0].starts_with("line 3: name") && details[1].starts_with("line 4: nsfw"));
        let body = "name,booth_id,mode\nRenamed,9Q01,\nLive Stage,STAGE,printed\n";
        let details = line_errors(import(&app, "fest", JSONAPI, body).await).await;
        assert_eq!(details.len(), 1, "{details:?}");
        assert!(details[0].starts_with("line 3: booth \"STAGE\" is a screen stamp"), "{details:?}");
        let short_row = "name,booth_id\nA,A1\nB\n";
        let details = line_errors(import(&app, "fest", JSONAPI, short_row).await).await;
        assert!(details[0].starts_with("line 3: "), "{details:?}");
        assert_eq!(stamps(&app, "fest").await.len(), 4, "nothing imported");

        // Bounds and media types.
        let huge =
            format!("name,booth_id\n{}", "A,B\n".repeat(tako::booths::MAX_CSV_BYTES / 4 + 1));
        assert_error(import(&app, "fest", JSONAPI, &huge).await, 413, "payload_too_large").await;
        let response = app
            .client
            .post(app.url("/api/events/fest/stamps/import"))
            .bearer_auth(ADMIN)
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_error(response, 415, "unsupported_media_type").await;
        assert_error(import(&app, "fest", "image/png", again).await, 406, "not_acceptable").await;
        assert_error(import(&app, "nope", JSONAPI, again).await, 404, "not_found").await;
        let response = app
            .client
            .post(app.url("/api/events/fest/stamps/import"))
            .bearer_auth(CLIENT)
            .header("content-type", "text/csv")
            .body(again)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 403);
        assert_eq!(stamps(&app, "fest").await.len(), 4);
        app.stop().await;
    }
}
