//! The rally (issue 14): events and stamps, scans verified by the server, their broadcasts,
//! and the two stamp modes. Every test runs on SQLite and, when configured, PostgreSQL.

use std::time::Duration;

use reqwest::{Method, Response};
use serde_json::{json, Value};
use tako::config::{Config, StampsMode};

use crate::helpers::{assert_error, backends, Backend, TestApp, WsClient, JSONAPI};

const CLIENT: &str = "client-token";
const ADMIN: &str = "admin-token";

fn tokens(config: &mut Config) {
    config.api_token = Some(CLIENT.into());
    config.admin_token = Some(ADMIN.into());
}

async fn spawn(backend: Backend, configure: impl FnOnce(&mut Config)) -> TestApp {
    TestApp::spawn_with(backend, |c| {
        tokens(c);
        configure(c);
    })
    .await
}

pub(crate) async fn send(
    app: &TestApp,
    token: &str,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Response {
    let mut request =
        app.client.request(method, app.url(path)).header("accept", JSONAPI).bearer_auth(token);
    if let Some(body) = body {
        request = request.header("content-type", JSONAPI).body(body.to_string());
    }
    request.send().await.unwrap()
}

pub(crate) async fn admin(
    app: &TestApp,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> Response {
    send(app, ADMIN, method, path, body).await
}

async fn client(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Response {
    send(app, CLIENT, method, path, body).await
}

fn event_body(id: &str, attributes: Value) -> Value {
    json!({"data": {"type": "event", "id": id, "attributes": attributes}})
}

async fn create_event(app: &TestApp, id: &str, attributes: Value) -> Value {
    let response =
        admin(app, Method::POST, "/api/json/events", Some(event_body(id, attributes))).await;
    assert_eq!(response.status(), 201, "{:?}", response.text().await);
    response.json().await.unwrap()
}

/// Creates a stamp; returns (stamp id, printed code or None).
async fn create_stamp(app: &TestApp, event: &str, attributes: Value) -> (String, Option<String>) {
    let body = json!({"data": {"type": "stamp", "attributes": attributes}});
    let response =
        admin(app, Method::POST, &format!("/api/json/events/{event}/stamps"), Some(body)).await;
    assert_eq!(response.status(), 201);
    let doc: Value = response.json().await.unwrap();
    let code = doc["meta"]["code"].as_str().map(str::to_owned);
    (doc["data"]["id"].as_str().unwrap().to_owned(), code)
}

async fn scan(app: &TestApp, user: &str, code: &str) -> Response {
    let body = json!({"data": {"type": "scan", "attributes": {"code": code}}});
    client(app, Method::POST, &format!("/api/json/accounts/users/{user}/scans"), Some(body)).await
}

async fn register(app: &TestApp, nickname: Option<&str>) -> String {
    let attributes = nickname.map_or(json!({}), |n| json!({"nickname": n}));
    let body = json!({"data": {"type": "user", "attributes": attributes}});
    let response = client(app, Method::POST, "/api/json/accounts/users", Some(body)).await;
    assert_eq!(response.status(), 201);
    let doc: Value = response.json().await.unwrap();
    doc["data"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn operators_manage_events_and_clients_read_the_visible_ones() {
    for backend in backends() {
        let app = spawn(backend, |_| {}).await;
        let created = create_event(
            &app,
            "dokomi-2025",
            json!({"name": "DoKomi 2025", "stamps_required": 8, "opens_at": "2025-06-14T08:00:00Z",
                   "metadata": {"city": "Düsseldorf"}, "description": "Hall 8"}),
        )
        .await;
        let attributes = &created["data"]["attributes"];
        assert_eq!(created["data"]["id"], "dokomi-2025");
        assert_eq!(attributes["topic"], "notifications");
        assert_eq!(attributes["opens_at"], "2025-06-14T08:00:00.000000Z");
        assert_eq!(attributes["closes_at"], Value::Null);
        assert_eq!(attributes["metadata"], json!({"city": "Düsseldorf"}));
        assert_eq!(attributes["visible"], true);
        create_event(
            &app,
            "secret",
            json!({"name": "Staff", "stamps_required": 1, "visible": false}),
        )
        .await;

        // The client token cannot create; a taken id, a bad id, bad attributes are refused.
        let body = event_body("x", json!({"name": "X", "stamps_required": 1}));
        assert_error(
            client(&app, Method::POST, "/api/json/events", Some(body)).await,
            403,
            "forbidden",
        )
        .await;
        let body = event_body("dokomi-2025", json!({"name": "Again", "stamps_required": 1}));
        let error = assert_error(
            admin(&app, Method::POST, "/api/json/events", Some(body)).await,
            409,
            "conflict",
        )
        .await;
        assert_eq!(error["source"]["pointer"], "/data/id");
        let body = event_body("DoKomi!", json!({"name": "X", "stamps_required": 1}));
        let error = assert_error(
            admin(&app, Method::POST, "/api/json/events", Some(body)).await,
            400,
            "invalid_body",
        )
        .await;
        assert_eq!(error["source"]["pointer"], "/data/id");
        for (attributes, pointer) in [
            (json!({"name": "X", "stamps_required": 0}), "/data/attributes/stamps_required"),
            (json!({"name": "X", "stamps_required": "8"}), "/data/attributes/stamps_required"),
            (json!({"name": "X"}), "/data/attributes"),
            (
                json!({"name": "X", "stamps_required": 1, "colour": "red"}),
                "/data/attributes/colour",
            ),
            (
                json!({"name": "X", "stamps_required": 1, "visible": null}),
                "/data/attributes/visible",
            ),
            (
                json!({"name": "X", "stamps_required": 1, "metadata": null}),
                "/data/attributes/metadata",
            ),
            (
                json!({"name": "X", "stamps_required": 1, "topic": "room:lobby"}),
                "/data/attributes/topic",
            ),
            (
                json!({"name": "X", "stamps_required": 1, "opens_at": "tomorrow"}),
                "/data/attributes/opens_at",
            ),
            (
                json!({"name": "X", "stamps_required": 1, "description": "x".repeat(10_001)}),
                "/data/attributes/description",
            ),
        ] {
            let response = admin(
                &app,
                Method::POST,
                "/api/json/events",
                Some(event_body("x", attributes.clone())),
            )
            .await;
            assert_eq!(response.status(), 400, "{attributes}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["errors"][0]["source"]["pointer"], pointer, "{attributes}: {body}");
        }
        let backwards = event_body(
            "x",
            json!({"name": "X", "stamps_required": 1, "opens_at": "2025-06-15T00:00:00Z",
                   "closes_at": "2025-06-15T00:00:00Z", "metadata": {"nul": "a\u{0}b"}}),
        );
        let response = admin(&app, Method::POST, "/api/json/events", Some(backwards)).await;
        let error = assert_error(response, 409, "invalid_window").await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/closes_at");
        // Metadata is free JSON, a NUL in a string too (PostgreSQL's jsonb would refuse it).
        let nul = event_body(
            "nul",
            json!({"name": "X", "stamps_required": 1, "metadata": {"nul": "a\u{0}b"}}),
        );
        let response = admin(&app, Method::POST, "/api/json/events", Some(nul)).await;
        assert_eq!(response.status(), 201);
        let doc: Value =
            admin(&app, Method::GET, "/api/json/events/nul", None).await.json().await.unwrap();
        assert_eq!(doc["data"]["attributes"]["metadata"], json!({"nul": "a\u{0}b"}));
        admin(&app, Method::DELETE, "/api/json/events/nul", None).await;
        let wrong_type = json!({"data": {"type": "user", "id": "x", "attributes": {"name": "X", "stamps_required": 1}}});
        assert_error(
            admin(&app, Method::POST, "/api/json/events", Some(wrong_type)).await,
            409,
            "conflict",
        )
        .await;

        // Clients see visible events only; operators see all.
        let listed: Value =
            client(&app, Method::GET, "/api/json/events", None).await.json().await.unwrap();
        let ids: Vec<&str> =
            listed["data"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["dokomi-2025"]);
        let listed: Value =
            admin(&app, Method::GET, "/api/json/events", None).await.json().await.unwrap();
        assert_eq!(listed["data"].as_array().unwrap().len(), 2);
        assert_error(
            client(&app, Method::GET, "/api/json/events/secret", None).await,
            404,
            "not_found",
        )
        .await;
        assert_eq!(admin(&app, Method::GET, "/api/json/events/secret", None).await.status(), 200);
        assert_error(
            client(&app, Method::GET, "/api/json/events/nope", None).await,
            404,
            "not_found",
        )
        .await;
        assert_error(
            client(&app, Method::GET, "/api/json/events/dokomi-2025?include=users", None).await,
            400,
            "invalid_query",
        )
        .await;

        // PATCH changes only what is sent; null clears; the client token may not.
        let patch = json!({"data": {"type": "event", "attributes": {"stamps_required": 7, "opens_at": null}}});
        assert_error(
            client(&app, Method::PATCH, "/api/json/events/dokomi-2025", Some(patch.clone())).await,
            403,
            "forbidden",
        )
        .await;
        let response =
            admin(&app, Method::PATCH, "/api/json/events/dokomi-2025", Some(patch)).await;
        assert_eq!(response.status(), 200);
        let updated: Value = response.json().await.unwrap();
        assert_eq!(updated["data"]["attributes"]["stamps_required"], 7);
        assert_eq!(updated["data"]["attributes"]["opens_at"], Value::Null);
        assert_eq!(updated["data"]["attributes"]["name"], "DoKomi 2025");
        let other_id = json!({"data": {"type": "event", "id": "other", "attributes": {}}});
        assert_error(
            admin(&app, Method::PATCH, "/api/json/events/dokomi-2025", Some(other_id)).await,
            409,
            "conflict",
        )
        .await;
        let patch = json!({"data": {"type": "event", "attributes": {"name": 5}}});
        let error = assert_error(
            admin(&app, Method::PATCH, "/api/json/events/dokomi-2025", Some(patch)).await,
            400,
            "invalid_attribute",
        )
        .await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/name");
        let patch = json!({"data": {"type": "event", "attributes": {"visible": false}}});
        assert_error(
            admin(&app, Method::PATCH, "/api/json/events/nope", Some(patch)).await,
            404,
            "not_found",
        )
        .await;

        // Delete: 204, then 404.
        assert_error(
            client(&app, Method::DELETE, "/api/json/events/secret", None).await,
            403,
            "forbidden",
        )
        .await;
        assert_eq!(
            admin(&app, Method::DELETE, "/api/json/events/secret", None).await.status(),
            204
        );
        assert_error(
            admin(&app, Method::DELETE, "/api/json/events/secret", None).await,
            404,
            "not_found",
        )
        .await;
        app.stop().await;
    }
}

#[tokio::test]
async fn stamps_show_their_code_once_and_never_a_secret() {
    for backend in backends() {
        let app =
            spawn(backend, |c| c.scan_url = Some("https://app.example/sc/{code}".into())).await;
        create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 2})).await;
        let body = json!({"data": {"type": "stamp", "attributes": {"name": "Booth A", "booth_id": "A-12",
            "image_url": "https://img.example/a.png", "nsfw": false}}});
        let response =
            admin(&app, Method::POST, "/api/json/events/ev/stamps", Some(body.clone())).await;
        assert_eq!(response.status(), 201);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let doc: Value = response.json().await.unwrap();
        let code = doc["meta"]["code"].as_str().unwrap().to_owned();
        assert_eq!(code.len(), 22, "128 bits in base64url");
        assert_eq!(doc["meta"]["qr"], format!("https://app.example/sc/{code}"));
        assert_eq!(doc["data"]["attributes"]["mode"], "printed");
        assert_eq!(doc["data"]["relationships"]["event"]["data"]["id"], "ev");
        assert_eq!(location, format!("/api/json/stamps/{}", doc["data"]["id"].as_str().unwrap()));
        assert_error(
            client(&app, Method::POST, "/api/json/events/ev/stamps", Some(body.clone())).await,
            403,
            "forbidden",
        )
        .await;
        assert_error(
            admin(&app, Method::POST, "/api/json/events/nope/stamps", Some(body)).await,
            404,
            "not_found",
        )
        .await;
        let (screen, screen_code) =
            create_stamp(&app, "ev", json!({"name": "Screen", "mode": "screen"})).await;
        assert_eq!(screen_code, None);
        let (hidden, _) =
            create_stamp(&app, "ev", json!({"name": "Hidden", "visible": false})).await;
        for (attributes, pointer) in [
            (json!({"name": "X", "mode": "paper"}), "/data/attributes/mode"),
            (
                json!({"name": "X", "external_url": "javascript:alert(1)"}),
                "/data/attributes/external_url",
            ),
            (json!({"name": ""}), "/data/attributes/name"),
            (json!({"name": "X", "code": "mine"}), "/data/attributes/code"),
        ] {
            let body = json!({"data": {"type": "stamp", "attributes": attributes}});
            let response =
                admin(&app, Method::POST, "/api/json/events/ev/stamps", Some(body)).await;
            assert_eq!(response.status(), 400, "{attributes}");
            let error: Value = response.json().await.unwrap();
            assert_eq!(error["errors"][0]["source"]["pointer"], pointer);
        }

        // include=stamps: visible stamps for clients, no code, hash or salt anywhere.
        let response = client(&app, Method::GET, "/api/json/events/ev?include=stamps", None).await;
        let text = response.text().await.unwrap();
        assert!(
            !text.contains(&code) && !text.contains("hash") && !text.contains("salt"),
            "{text}"
        );
        let doc: Value = serde_json::from_str(&text).unwrap();
        let included: Vec<&str> =
            doc["included"].as_array().unwrap().iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(included.len(), 2);
        assert!(!included.contains(&hidden.as_str()));
        assert_eq!(doc["data"]["relationships"]["stamps"]["data"].as_array().unwrap().len(), 2);
        let doc: Value = admin(&app, Method::GET, "/api/json/events/ev?include=stamps", None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(doc["included"].as_array().unwrap().len(), 3);

        // The booth's screen reads its current code; a printed code is never shown again.
        let response =
            admin(&app, Method::GET, &format!("/api/json/stamps/{screen}/code"), None).await;
        assert_eq!(response.status(), 200);
        let current: Value = response.json().await.unwrap();
        assert!(current["qr"].as_str().unwrap().starts_with("https://app.example/sc/"));
        assert_eq!(current["step_seconds"], 30);
        let printed_id = doc["included"][0]["id"].as_str().unwrap();
        assert_error(
            admin(&app, Method::GET, &format!("/api/json/stamps/{printed_id}/code"), None).await,
            409,
            "conflict",
        )
        .await;
        assert_error(
            client(&app, Method::GET, &format!("/api/json/stamps/{screen}/code"), None).await,
            403,
            "forbidden",
        )
        .await;

        // PATCH a stamp: fields change, its code keeps working.
        let patch = json!({"data": {"type": "stamp", "attributes": {"name": "Booth A (moved)", "booth_id": null}}});
        let response = admin(
            &app,
            Method::PATCH,
            &format!("/api/json/stamps/{printed_id}"),
            Some(patch.clone()),
        )
        .await;
        assert_eq!(response.status(), 200);
        let doc: Value = response.json().await.unwrap();
        assert_eq!(doc["data"]["attributes"]["name"], "Booth A (moved)");
        assert_eq!(doc["data"]["attributes"]["booth_id"], Value::Null);
        assert_error(
            client(
                &app,
                Method::PATCH,
                &format!("/api/json/stamps/{printed_id}"),
                Some(patch.clone()),
            )
            .await,
            403,
            "forbidden",
        )
        .await;
        assert_error(
            admin(&app, Method::PATCH, "/api/json/stamps/not-a-uuid", Some(patch)).await,
            404,
            "not_found",
        )
        .await;
        let patch = json!({"data": {"type": "stamp", "attributes": {"mode": "screen"}}});
        let error = assert_error(
            admin(&app, Method::PATCH, &format!("/api/json/stamps/{printed_id}"), Some(patch))
                .await,
            400,
            "invalid_attribute",
        )
        .await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/mode");
        let user = register(&app, Some("Kiara")).await;
        assert_eq!(scan(&app, &user, &code).await.status(), 201);
        app.stop().await;
    }
}

#[tokio::test]
async fn a_scan_counts_once_and_reports_progress() {
    for backend in backends() {
        let app =
            spawn(backend, |c| c.scan_url = Some("https://app.example/sc/{code}".into())).await;
        create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 2})).await;
        let (a, code_a) = create_stamp(&app, "ev", json!({"name": "A"})).await;
        let (_, code_b) = create_stamp(&app, "ev", json!({"name": "B"})).await;
        let (code_a, code_b) = (code_a.unwrap(), code_b.unwrap());
        let user = register(&app, Some("Kiara")).await;

        let response = scan(&app, &user, &code_a).await;
        assert_eq!(response.status(), 201);
        let first: Value = response.json().await.unwrap();
        assert_eq!(first["data"]["type"], "scan");
        assert_eq!(first["data"]["relationships"]["stamp"]["data"]["id"], a.as_str());
        assert!(first["data"]["attributes"]["collected_at"].is_string());
        assert_eq!(first["included"][0]["id"], a.as_str());
        assert_eq!(
            first["meta"]["progress"],
            json!({"collected": 1, "required": 2, "completed": false})
        );

        // Again, as the URL the QR code holds: 200, the same scan, nothing counted.
        let response = scan(&app, &user, &format!("https://app.example/sc/{code_a}")).await;
        assert_eq!(response.status(), 200);
        let again: Value = response.json().await.unwrap();
        assert_eq!(again["data"]["id"], first["data"]["id"]);
        assert_eq!(again["data"]["attributes"], first["data"]["attributes"]);
        assert_eq!(again["meta"]["progress"]["collected"], 1);

        let done: Value = scan(&app, &user, &code_b).await.json().await.unwrap();
        assert_eq!(
            done["meta"]["progress"],
            json!({"collected": 2, "required": 2, "completed": true})
        );

        // Bad paths.
        let error =
            assert_error(scan(&app, &user, "AAAAAAAAAAAAAAAAAAAAAA").await, 404, "unknown_code")
                .await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/code");
        assert_error(scan(&app, &user, "../../etc/passwd").await, 404, "unknown_code").await;
        let nobody = "00000000-0000-4000-8000-000000000000";
        assert_error(scan(&app, nobody, &code_a).await, 404, "not_found").await;
        assert_error(scan(&app, "not-a-uuid", &code_a).await, 404, "not_found").await;
        let too_long = "x".repeat(2049);
        let error = assert_error(scan(&app, &user, &too_long).await, 400, "invalid_body").await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/code");
        let body = json!({"data": {"type": "scan", "attributes": {"code": 5}}});
        let response = client(
            &app,
            Method::POST,
            &format!("/api/json/accounts/users/{user}/scans"),
            Some(body),
        )
        .await;
        let error = assert_error(response, 400, "invalid_attribute").await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/code");
        let body = json!({"data": {"type": "stamp", "attributes": {"code": code_a}}});
        let response = client(
            &app,
            Method::POST,
            &format!("/api/json/accounts/users/{user}/scans"),
            Some(body),
        )
        .await;
        assert_error(response, 409, "conflict").await;

        // The user's scans, newest first, with their stamps.
        let list: Value = client(
            &app,
            Method::GET,
            &format!("/api/json/accounts/users/{user}/scans?include=stamp"),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
        let names: Vec<&str> = list["included"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["attributes"]["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["B", "A"]);
        assert_eq!(list["data"].as_array().unwrap().len(), 2);
        let list: Value =
            client(&app, Method::GET, &format!("/api/json/accounts/users/{user}/scans"), None)
                .await
                .json()
                .await
                .unwrap();
        assert!(list.get("included").is_none());
        assert_error(
            client(&app, Method::GET, &format!("/api/json/accounts/users/{nobody}/scans"), None)
                .await,
            404,
            "not_found",
        )
        .await;

        // A stamp or event with scans is deleted only with force.
        let path = format!("/api/json/stamps/{a}");
        assert_error(admin(&app, Method::DELETE, &path, None).await, 409, "has_scans").await;
        assert_error(
            admin(&app, Method::DELETE, "/api/json/events/ev", None).await,
            409,
            "has_scans",
        )
        .await;
        assert_error(
            admin(&app, Method::DELETE, &format!("{path}?force=maybe"), None).await,
            400,
            "invalid_query",
        )
        .await;
        assert_eq!(
            admin(&app, Method::DELETE, &format!("{path}?force=true"), None).await.status(),
            204
        );
        assert_error(scan(&app, &user, &code_a).await, 404, "unknown_code").await;
        assert_eq!(
            admin(&app, Method::DELETE, "/api/json/events/ev?force=true", None).await.status(),
            204
        );
        let list: Value =
            client(&app, Method::GET, &format!("/api/json/accounts/users/{user}/scans"), None)
                .await
                .json()
                .await
                .unwrap();
        assert_eq!(list["data"], json!([]));
        app.stop().await;
    }
}

#[tokio::test]
async fn two_tabs_scanning_at_once_count_once() {
    for backend in backends() {
        let app = spawn(backend, |_| {}).await;
        create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 1})).await;
        let (_, code) = create_stamp(&app, "ev", json!({"name": "A"})).await;
        let code = code.unwrap();
        let user = register(&app, Some("Kiara")).await;
        let mut socket = WsClient::connect(&app, &user).await;
        socket.join("notifications").await;
        let scans = (0..12).map(|_| scan(&app, &user, &code));
        let statuses: Vec<u16> = futures_util::future::join_all(scans)
            .await
            .iter()
            .map(|r| r.status().as_u16())
            .collect();
        assert_eq!(statuses.iter().filter(|s| **s == 201).count(), 1, "{statuses:?}");
        assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 11, "{statuses:?}");
        socket.next_event("collected-broadcast").await;
        socket.next_event("rally-completed").await;
        socket.assert_no_event("collected-broadcast", 300).await;
        let list: Value =
            client(&app, Method::GET, &format!("/api/json/accounts/users/{user}/scans"), None)
                .await
                .json()
                .await
                .unwrap();
        assert_eq!(list["data"].as_array().unwrap().len(), 1);
        app.stop().await;
    }
}

#[tokio::test]
async fn scans_are_announced_on_the_event_topic_and_completion_once() {
    for backend in backends() {
        let app = spawn(backend, |_| {}).await;
        create_event(
            &app,
            "ev",
            json!({"name": "Ev", "stamps_required": 2, "topic": "notifications:ev"}),
        )
        .await;
        let mut codes = Vec::new();
        for name in ["A", "B", "C"] {
            codes.push(create_stamp(&app, "ev", json!({"name": name})).await.1.unwrap());
        }
        let watcher = register(&app, Some("Watcher")).await;
        let mut socket = WsClient::connect(&app, &watcher).await;
        socket.join("notifications:ev").await;
        let mut elsewhere = WsClient::connect(&app, &watcher).await;
        elsewhere.join("notifications").await;

        let kiara = register(&app, Some("Kiara")).await;
        assert_eq!(scan(&app, &kiara, &codes[0]).await.status(), 201);
        let frame = socket.next_event("collected-broadcast").await;
        assert_eq!(frame[2], "notifications:ev");
        assert_eq!(frame[4], json!({"nickname": "Kiara"}));
        assert_eq!(scan(&app, &kiara, &codes[0]).await.status(), 200);
        socket.assert_no_event("collected-broadcast", 300).await;
        assert_eq!(scan(&app, &kiara, &codes[1]).await.status(), 201);
        socket.next_event("collected-broadcast").await;
        let done = socket.next_event("rally-completed").await;
        assert_eq!(done[4], json!({"nickname": "Kiara"}));
        // A third stamp is announced, the completion is not again.
        assert_eq!(scan(&app, &kiara, &codes[2]).await.status(), 201);
        socket.next_event("collected-broadcast").await;
        socket.assert_no_event("rally-completed", 300).await;
        elsewhere.assert_no_event("collected-broadcast", 100).await;

        // A user without a nickname is counted but not announced.
        let nameless = register(&app, None).await;
        let body: Value = scan(&app, &nameless, &codes[0]).await.json().await.unwrap();
        assert_eq!(body["meta"]["progress"]["collected"], 1);
        socket.assert_no_event("collected-broadcast", 300).await;
        app.stop().await;
    }
}

#[tokio::test]
async fn scans_outside_the_window_are_refused() {
    for backend in backends() {
        let app = spawn(backend, |_| {}).await;
        create_event(
            &app,
            "later",
            json!({"name": "L", "stamps_required": 1, "opens_at": "2999-01-01T00:00:00Z"}),
        )
        .await;
        create_event(
            &app,
            "past",
            json!({"name": "P", "stamps_required": 1, "closes_at": "2001-01-01T00:00:00Z"}),
        )
        .await;
        let (_, later) = create_stamp(&app, "later", json!({"name": "A"})).await;
        let (_, past) = create_stamp(&app, "past", json!({"name": "A"})).await;
        let user = register(&app, Some("Kiara")).await;
        let error =
            assert_error(scan(&app, &user, &later.unwrap()).await, 409, "event_closed").await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/code");
        assert_error(scan(&app, &user, &past.unwrap()).await, 409, "event_closed").await;
        // Reopened by its operator, it counts.
        let patch = json!({"data": {"type": "event", "attributes": {"closes_at": null}}});
        assert_eq!(
            admin(&app, Method::PATCH, "/api/json/events/past", Some(patch)).await.status(),
            200
        );
        app.stop().await;
    }
}

#[tokio::test]
async fn failed_scans_are_limited_per_user_and_per_address() {
    for backend in backends() {
        let app = spawn(backend, |c| {
            c.failed_scans_per_minute = 3;
            c.failed_scans_per_minute_per_ip = 5;
            c.trust_proxy = channels::TrustedProxies::Hops(1);
        })
        .await;
        create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 1})).await;
        let (_, code) = create_stamp(&app, "ev", json!({"name": "A"})).await;
        let code = code.unwrap();
        let scan_from = |user: String, code: String, ip: &'static str| {
            let body = json!({"data": {"type": "scan", "attributes": {"code": code}}});
            app.client
                .post(app.url(&format!("/api/json/accounts/users/{user}/scans")))
                .bearer_auth(CLIENT)
                .header("content-type", JSONAPI)
                .header("x-forwarded-for", ip)
                .body(body.to_string())
                .send()
        };
        let guesser = register(&app, Some("Guesser")).await;
        for _ in 0..3 {
            let response =
                scan_from(guesser.clone(), "wrong".into(), "198.51.100.1").await.unwrap();
            assert_error(response, 404, "unknown_code").await;
        }
        // Over budget: refused, a right code too, with Retry-After.
        let response = scan_from(guesser.clone(), code.clone(), "198.51.100.2").await.unwrap();
        let retry: u64 = response.headers()["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=20).contains(&retry), "{retry}");
        assert_error(response, 429, "rate_limited").await;
        // Another user is not limited by this one.
        let honest = register(&app, Some("Honest")).await;
        assert_eq!(
            scan_from(honest.clone(), code.clone(), "198.51.100.1").await.unwrap().status(),
            201
        );

        // Per address: many users guessing from one address.
        for _ in 0..2 {
            let user = register(&app, None).await;
            for _ in 0..2 {
                let response =
                    scan_from(user.clone(), "wrong".into(), "203.0.113.9").await.unwrap();
                assert_eq!(response.status(), 404);
            }
        }
        let fresh = register(&app, None).await;
        // 3 failures from 198.51.100.1 + 4 here: this address spent 4 of 5, one more left.
        assert_eq!(
            scan_from(fresh.clone(), "wrong".into(), "203.0.113.9").await.unwrap().status(),
            404
        );
        let response = scan_from(fresh.clone(), code.clone(), "203.0.113.9").await.unwrap();
        assert_error(response, 429, "rate_limited").await;
        assert_eq!(scan_from(fresh, code.clone(), "203.0.113.10").await.unwrap().status(), 201);
        app.stop().await;
    }
}

#[tokio::test]
async fn screen_codes_change_with_a_short_step_and_expire() {
    for backend in backends() {
        let app = spawn(backend, |c| c.code_step_secs = 1).await;
        create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 5})).await;
        let (stamp, _) =
            create_stamp(&app, "ev", json!({"name": "Screen", "mode": "screen"})).await;
        let current = || async {
            let response =
                admin(&app, Method::GET, &format!("/api/json/stamps/{stamp}/code"), None).await;
            assert_eq!(response.status(), 200);
            let body: Value = response.json().await.unwrap();
            body["code"].as_str().unwrap().to_owned()
        };
        let first = current().await;
        let kiara = register(&app, Some("Kiara")).await;
        assert_eq!(scan(&app, &kiara, &first).await.status(), 201);
        // One step later the code on screen differs; the previous one still counts.
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let second = current().await;
        assert_ne!(first, second);
        let gura = register(&app, Some("Gura")).await;
        let previous = scan(&app, &gura, &first).await.status();
        // The step may have turned twice on a slow machine; then 410, never anything else.
        assert!(previous == 201 || previous == 410, "{previous}");
        // Two steps later: a photo of the first code is refused with 410.
        tokio::time::sleep(Duration::from_millis(2100)).await;
        let ame = register(&app, Some("Ame")).await;
        let error = assert_error(scan(&app, &ame, &first).await, 410, "code_expired").await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/code");
        assert_eq!(scan(&app, &ame, &current().await).await.status(), 201);
        // A forged code (right stamp and step, wrong MAC) or a future step is unknown.
        let now = current().await;
        let (prefix, _) = now.rsplit_once('.').unwrap();
        assert_error(
            scan(&app, &ame, &format!("{prefix}.AAAAAAAAAAAAAAAAAAAAAA")).await,
            404,
            "unknown_code",
        )
        .await;
        let mut parts = now.split('.');
        let (id, step) = (parts.next().unwrap(), parts.next().unwrap().parse::<u64>().unwrap());
        let future = format!("{id}.{}.{}", step + 100, parts.next().unwrap());
        assert_error(scan(&app, &ame, &future).await, 404, "unknown_code").await;
        app.stop().await;
    }
}

#[tokio::test]
async fn verified_mode_counts_only_scans() {
    for backend in backends() {
        let app = spawn(backend, |c| c.stamps = StampsMode::Verified).await;
        let kiara = register(&app, Some("Kiara")).await;
        let gura = register(&app, Some("Gura")).await;
        // PATCH stamps_collected: 403 stamps_are_verified; at registration too.
        let patch = json!({"data": {"type": "user", "attributes": {"stamps_collected": 999}}});
        let path = format!("/api/json/accounts/users/{kiara}");
        let error = assert_error(
            client(&app, Method::PATCH, &path, Some(patch)).await,
            403,
            "stamps_are_verified",
        )
        .await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/stamps_collected");
        let body = json!({"data": {"type": "user", "attributes": {"nickname": "Cheat", "stamps_collected": 5}}});
        assert_error(
            client(&app, Method::POST, "/api/json/accounts/users", Some(body)).await,
            403,
            "stamps_are_verified",
        )
        .await;
        // Nickname changes still work.
        let patch = json!({"data": {"type": "user", "attributes": {"nickname": "Kiara2"}}});
        assert_eq!(client(&app, Method::PATCH, &path, Some(patch)).await.status(), 200);

        // The one event is the default: stamps_collected reads its verified count.
        create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 3})).await;
        let mut codes = Vec::new();
        for name in ["A", "B", "C"] {
            codes.push(create_stamp(&app, "ev", json!({"name": name})).await.1.unwrap());
        }
        scan(&app, &gura, &codes[0]).await;
        scan(&app, &kiara, &codes[0]).await;
        scan(&app, &kiara, &codes[1]).await;
        tokio::time::sleep(Duration::from_millis(5)).await;
        scan(&app, &gura, &codes[1]).await;
        let user: Value = client(&app, Method::GET, &path, None).await.json().await.unwrap();
        assert_eq!(user["data"]["attributes"]["stamps_collected"], 2);
        // Ties: Kiara reached 2 first.
        let board: Value =
            client(&app, Method::GET, "/api/json/leaderboard", None).await.json().await.unwrap();
        assert_eq!(
            board,
            json!({"data": [
                {"nickname": "Kiara2", "stamps_collected": 2, "rank": 1},
                {"nickname": "Gura", "stamps_collected": 2, "rank": 2},
            ]})
        );
        scan(&app, &gura, &codes[2]).await;
        let board: Value =
            client(&app, Method::GET, "/api/json/leaderboard?event=ev&limit=1", None)
                .await
                .json()
                .await
                .unwrap();
        assert_eq!(
            board,
            json!({"data": [{"nickname": "Gura", "stamps_collected": 3, "rank": 1}]})
        );
        assert_error(
            client(&app, Method::GET, "/api/json/leaderboard?event=nope", None).await,
            404,
            "not_found",
        )
        .await;

        // Client announcements are refused and reach nobody.
        let mut pusher = WsClient::connect(&app, &kiara).await;
        pusher.join("notifications").await;
        let mut listener = WsClient::connect(&app, &gura).await;
        listener.join("notifications").await;
        for (i, (event, payload)) in [
            ("collected", json!({"nickname": "Kiara"})),
            ("rally-completed", json!({"nickname": "Kiara"})),
            ("shout", json!({"text": "hi"})),
        ]
        .into_iter()
        .enumerate()
        {
            let r = format!("p{i}");
            pusher.send(json!(["1", r, "notifications", event, payload])).await;
            let reply = pusher.next_event("phx_reply").await;
            assert_eq!(
                reply[4],
                json!({"status": "error", "response": {"reason": "stamps are verified by the server"}}),
                "{event}"
            );
        }
        listener.assert_no_event("collected-broadcast", 200).await;
        listener.assert_no_event("shout", 100).await;
        listener.assert_no_event("rally-completed", 100).await;

        // With two events and no TAKO_DEFAULT_EVENT there is no default: 0, and an empty board.
        create_event(&app, "ev2", json!({"name": "Ev2", "stamps_required": 1})).await;
        let user: Value = client(&app, Method::GET, &path, None).await.json().await.unwrap();
        assert_eq!(user["data"]["attributes"]["stamps_collected"], 0);
        let board: Value =
            client(&app, Method::GET, "/api/json/leaderboard", None).await.json().await.unwrap();
        assert_eq!(board, json!({"data": []}));
        app.stop().await;
    }
}

#[tokio::test]
async fn the_default_event_is_the_configured_one() {
    for backend in backends() {
        let app = spawn(backend, |c| {
            c.stamps = StampsMode::Verified;
            c.default_event = Some("second".into());
        })
        .await;
        create_event(&app, "first", json!({"name": "1", "stamps_required": 1})).await;
        create_event(&app, "second", json!({"name": "2", "stamps_required": 1})).await;
        let (_, code) = create_stamp(&app, "second", json!({"name": "A"})).await;
        let user = register(&app, Some("Kiara")).await;
        scan(&app, &user, &code.unwrap()).await;
        let doc: Value =
            client(&app, Method::GET, &format!("/api/json/accounts/users/{user}"), None)
                .await
                .json()
                .await
                .unwrap();
        assert_eq!(doc["data"]["attributes"]["stamps_collected"], 1);
        let board: Value =
            client(&app, Method::GET, "/api/json/leaderboard", None).await.json().await.unwrap();
        assert_eq!(board["data"][0]["nickname"], "Kiara");
        app.stop().await;
    }
}

#[tokio::test]
async fn claimed_mode_keeps_todays_behaviour_beside_the_rally() {
    for backend in backends() {
        let app = spawn(backend, |_| {}).await;
        let kiara = register(&app, Some("Kiara")).await;
        let gura = register(&app, Some("Gura")).await;
        let patch = json!({"data": {"type": "user", "attributes": {"stamps_collected": 7}}});
        let response =
            client(&app, Method::PATCH, &format!("/api/json/accounts/users/{kiara}"), Some(patch))
                .await;
        assert_eq!(response.status(), 200);
        let board: Value =
            client(&app, Method::GET, "/api/json/leaderboard", None).await.json().await.unwrap();
        assert_eq!(
            board["data"][0],
            json!({"nickname": "Kiara", "stamps_collected": 7, "rank": 1})
        );
        // Client pushes still broadcast.
        let mut pusher = WsClient::connect(&app, &kiara).await;
        pusher.join("notifications").await;
        let mut listener = WsClient::connect(&app, &gura).await;
        listener.join("notifications").await;
        pusher.send(json!(["1", "9", "notifications", "collected", {"nickname": "Kiara"}])).await;
        assert_eq!(
            listener.next_event("collected-broadcast").await[4],
            json!({"nickname": "Kiara"})
        );
        // ?event ranks verified scans in that event, whatever the claimed counts.
        create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 1})).await;
        let (_, code) = create_stamp(&app, "ev", json!({"name": "A"})).await;
        assert_eq!(scan(&app, &gura, &code.unwrap()).await.status(), 201);
        let board: Value = client(&app, Method::GET, "/api/json/leaderboard?event=ev", None)
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            board,
            json!({"data": [{"nickname": "Gura", "stamps_collected": 1, "rank": 1}]})
        );
        let doc: Value =
            client(&app, Method::GET, &format!("/api/json/accounts/users/{gura}"), None)
                .await
                .json()
                .await
                .unwrap();
        assert_eq!(doc["data"]["attributes"]["stamps_collected"], 0, "claimed: the stored count");
        app.stop().await;
    }
}

#[tokio::test]
async fn codes_survive_a_restart_with_the_generated_secret() {
    // SQLite file kept across two servers: the secret lives in the database.
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tako.db").display());
    let start = || {
        let mut config = Config::for_database(&url);
        tokens(&mut config);
        config
    };
    let app = TestApp::start_config(start(), Backend::Sqlite, url.clone()).await;
    create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 1})).await;
    let (_, code) = create_stamp(&app, "ev", json!({"name": "A"})).await;
    app.stop().await;
    let app = TestApp::start_config(start(), Backend::Sqlite, url.clone()).await;
    let user = register(&app, Some("Kiara")).await;
    assert_eq!(scan(&app, &user, code.as_deref().unwrap()).await.status(), 201);
    app.stop().await;
    // Another secret: the stored hashes match nothing.
    let mut config = start();
    config.rally_secret = Some("another-secret-of-at-least-32-characters".into());
    let app = TestApp::start_config(config, Backend::Sqlite, url).await;
    let user = register(&app, Some("Gura")).await;
    assert_error(scan(&app, &user, code.as_deref().unwrap()).await, 404, "unknown_code").await;
    app.stop().await;
}

#[tokio::test]
async fn a_booth_key_reads_its_one_screen_stamp_until_revoked() {
    for backend in backends() {
        let app = spawn(backend, |_| {}).await;
        create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 2})).await;
        let (a, _) =
            create_stamp(&app, "ev", json!({"name": "Stage A", "booth_id": "A", "mode": "screen"}))
                .await;
        let (b, _) = create_stamp(&app, "ev", json!({"name": "Stage B", "mode": "screen"})).await;
        let (printed, _) = create_stamp(&app, "ev", json!({"name": "Paper"})).await;
        let make = |stamp: String| {
            let app = &app;
            async move {
                let path = format!("/api/json/stamps/{stamp}/booth-key");
                let response = admin(app, Method::POST, &path, None).await;
                assert_eq!(response.status(), 201);
                let body: Value = response.json().await.unwrap();
                let key = body["key"].as_str().unwrap().to_owned();
                assert_eq!(body["path"], format!("/booth/{key}"));
                key
            }
        };
        let code = |key: String| {
            let app = &app;
            async move { app.client.get(app.url(&format!("/booth/{key}/code"))).send().await.unwrap() }
        };
        let key_a = make(a.clone()).await;
        let key_b = make(b.clone()).await;
        assert_ne!(key_a, key_b);

        // Each key reads its own stamp's current code, which scans.
        let response = code(key_a.clone()).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["cache-control"], "no-store");
        let shown: Value = response.json().await.unwrap();
        assert_eq!(
            (shown["name"].as_str(), shown["booth_id"].as_str()),
            (Some("Stage A"), Some("A"))
        );
        let user = register(&app, Some("Booth_Fan")).await;
        let scanned = scan(&app, &user, shown["qr"].as_str().unwrap()).await;
        assert_eq!(scanned.status(), 201);
        let scanned: Value = scanned.json().await.unwrap();
        assert_eq!(scanned["data"]["relationships"]["stamp"]["data"]["id"], a.as_str());
        let shown_b: Value = code(key_b.clone()).await.json().await.unwrap();
        assert_eq!(shown_b["name"], "Stage B");

        // Only operators make keys, only for screen stamps of this server.
        let path = format!("/api/json/stamps/{a}/booth-key");
        assert_eq!(client(&app, Method::POST, &path, None).await.status(), 403);
        assert_eq!(send(&app, &key_a, Method::POST, &path, None).await.status(), 401);
        let printed_path = format!("/api/json/stamps/{printed}/booth-key");
        assert_error(admin(&app, Method::POST, &printed_path, None).await, 409, "conflict").await;
        let missing = format!("/api/json/stamps/{}/booth-key", uuid::Uuid::new_v4());
        assert_eq!(admin(&app, Method::POST, &missing, None).await.status(), 404);
        assert_eq!(admin(&app, Method::DELETE, &missing, None).await.status(), 404);

        // A new key replaces the old one; revoking stops it; deleting the stamp stops its key.
        let newer = make(a.clone()).await;
        assert_eq!(code(key_a.clone()).await.status(), 404);
        assert_eq!(code(newer.clone()).await.status(), 200);
        assert_eq!(admin(&app, Method::DELETE, &path, None).await.status(), 204);
        assert_eq!(code(newer.clone()).await.status(), 404);
        let page = app.client.get(app.url(&format!("/booth/{newer}"))).send().await.unwrap();
        assert_eq!(page.status(), 404);
        assert_eq!(code(key_b.clone()).await.status(), 200, "other booths keep theirs");
        let delete = format!("/api/json/stamps/{b}");
        assert_eq!(admin(&app, Method::DELETE, &delete, None).await.status(), 204);
        assert_eq!(code(key_b).await.status(), 404);
        app.stop().await;
    }
}

#[tokio::test]
async fn draws_pick_completers_never_twice_and_are_kept() {
    for backend in backends() {
        let app = spawn(backend, |_| {}).await;
        create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 1})).await;
        let (_, code) = create_stamp(&app, "ev", json!({"name": "A"})).await;
        let code = code.unwrap();
        let mut completers = Vec::new();
        for n in 0..5 {
            let user = register(&app, Some(&format!("Winner_{n}"))).await;
            assert_eq!(scan(&app, &user, &code).await.status(), 201);
            completers.push(user);
        }
        // Registered but never completed: never drawn, not listed.
        let idle = register(&app, Some("Idle")).await;
        let listed = "/api/json/events/ev/completers";
        assert_eq!(client(&app, Method::GET, listed, None).await.status(), 403);
        let response = admin(&app, Method::GET, listed, None).await;
        assert_eq!(response.status(), 200);
        let doc: Value = response.json().await.unwrap();
        let ids: Vec<&str> =
            doc["data"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(
            ids,
            completers.iter().map(String::as_str).collect::<Vec<_>>(),
            "in completion order"
        );
        assert_eq!(doc["data"][0]["attributes"]["nickname"], "Winner_0");
        let path = "/api/json/events/ev/draws";
        let draw = |n: u32| {
            let app = &app;
            async move {
                let body = json!({"data": {"type": "draw", "attributes": {"winners": n}}});
                admin(app, Method::POST, path, Some(body)).await
            }
        };
        let winners = |doc: &Value| -> Vec<String> {
            doc["attributes"]["winners"]
                .as_array()
                .unwrap()
                .iter()
                .map(|w| w["user_id"].as_str().unwrap().to_owned())
                .collect()
        };
        let first = draw(3).await;
        assert_eq!(first.status(), 201);
        let first: Value = first.json().await.unwrap();
        let first = winners(&first["data"]);
        assert_eq!(first.len(), 3);
        let second: Value = draw(3).await.json().await.unwrap();
        assert_eq!(second["data"]["attributes"]["requested"], 3);
        let second = winners(&second["data"]);
        assert_eq!(second.len(), 2, "only two were left");
        let mut all: Vec<String> = first.iter().chain(&second).cloned().collect();
        assert!(all.iter().all(|w| completers.contains(w) && *w != idle));
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 5, "nobody drawn twice");
        assert_error(draw(1).await, 409, "nobody_to_draw").await;
        assert_error(draw(0).await, 400, "invalid_attribute").await;
        let body = json!({"data": {"type": "draw", "attributes": {"winners": 1}}});
        assert_eq!(client(&app, Method::POST, path, Some(body)).await.status(), 403);
        assert_eq!(client(&app, Method::GET, path, None).await.status(), 403);
        let missing = json!({"data": {"type": "draw", "attributes": {"winners": 1}}});
        let response =
            admin(&app, Method::POST, "/api/json/events/nope/draws", Some(missing)).await;
        assert_eq!(response.status(), 404);

        // Listed, oldest first, with nicknames.
        let listed: Value = admin(&app, Method::GET, path, None).await.json().await.unwrap();
        let draws = listed["data"].as_array().unwrap();
        assert_eq!(draws.len(), 2);
        assert_eq!(winners(&draws[0]).len(), 3);
        assert!(draws[0]["attributes"]["winners"][0]["nickname"]
            .as_str()
            .unwrap()
            .starts_with("Winner_"));
        app.stop().await;
    }
}

#[tokio::test]
async fn a_draw_survives_a_restart_and_is_not_rerolled() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("tako.db").display());
    let start = || {
        let mut config = Config::for_database(&url);
        tokens(&mut config);
        config
    };
    let app = TestApp::start_config(start(), Backend::Sqlite, url.clone()).await;
    create_event(&app, "ev", json!({"name": "Ev", "stamps_required": 1})).await;
    let (_, code) = create_stamp(&app, "ev", json!({"name": "A"})).await;
    let user = register(&app, Some("Only_One")).await;
    assert_eq!(scan(&app, &user, code.as_deref().unwrap()).await.status(), 201);
    let body = json!({"data": {"type": "draw", "attributes": {"winners": 1}}});
    let path = "/api/json/events/ev/draws";
    assert_eq!(admin(&app, Method::POST, path, Some(body.clone())).await.status(), 201);
    app.stop().await;
    let app = TestApp::start_config(start(), Backend::Sqlite, url.clone()).await;
    let listed: Value = admin(&app, Method::GET, path, None).await.json().await.unwrap();
    assert_eq!(listed["data"][0]["attributes"]["winners"][0]["user_id"], user.as_str());
    assert_error(admin(&app, Method::POST, path, Some(body)).await, 409, "nobody_to_draw").await;
    app.stop().await;
}
