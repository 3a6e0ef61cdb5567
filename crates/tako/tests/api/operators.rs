//! The operators' API: messages (live and waiting), broadcasts, ping, deleting users.

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, backends, Backend, TestApp, WsClient};

const ADMIN: &str = "admin-token";

async fn spawn(backend: Backend) -> TestApp {
    TestApp::spawn_with(backend, |c| {
        c.api_token = Some("client-token".into());
        c.admin_token = Some(ADMIN.into());
    })
    .await
}

async fn admin_post(app: &TestApp, path: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(path))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_message_reaches_only_its_user_live() {
    for backend in backends() {
        let app = spawn(backend).await;
        let alice = app.register_id(Some("Alice")).await;
        let bob = app.register_id(Some("Bob")).await;
        let mut alice_ws = WsClient::connect(&app, &alice).await;
        alice_ws.join("notifications").await;
        let mut alice_scans = WsClient::connect(&app, &alice).await;
        alice_scans.join("notifications:scans").await;
        let mut bob_ws = WsClient::connect(&app, &bob).await;
        bob_ws.join("notifications").await;

        let response = admin_post(
            &app,
            "/api/messages",
            json!({"user_id": alice, "message": "Testiiing", "booth": "A-12"}),
        )
        .await;
        assert_eq!(response.status(), 202);
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["delivered"], true, "on {:?}: {status}", app.backend);
        assert_eq!(status["user_id"], alice);

        for ws in [&mut alice_ws, &mut alice_scans] {
            let frame = ws.next_event("msg").await;
            let payload = &frame[4];
            assert_eq!(payload["user_id"], alice);
            assert_eq!(payload["message"], "Testiiing");
            assert_eq!(payload["booth"], "A-12");
            assert_eq!(payload["id"], status["id"]);
            assert!(payload["inserted_at"].is_string());
        }
        bob_ws.assert_no_event("msg", 300).await;

        // Delivered once: a reconnect does not bring it again.
        let mut again = WsClient::connect(&app, &alice).await;
        again.join("notifications").await;
        again.assert_no_event("msg", 300).await;

        let read: Value = app
            .client
            .get(app.url(&format!("/api/messages/{}", status["id"].as_str().unwrap())))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(read["delivered"], true);
        assert!(read["delivered_at"].is_string());
    }
}

#[tokio::test]
async fn messages_wait_for_offline_users_and_arrive_in_order_on_join() {
    for backend in backends() {
        let app = spawn(backend).await;
        let carol = app.register_id(Some("Carol")).await;
        let mut ids = Vec::new();
        for i in 0..3 {
            let response = admin_post(
                &app,
                "/api/messages",
                json!({"user_id": carol, "message": format!("m{i}")}),
            )
            .await;
            let status: Value = response.json().await.unwrap();
            assert_eq!(status["delivered"], false, "offline");
            ids.push(status["id"].as_str().unwrap().to_owned());
        }
        let pending: Value = app
            .client
            .get(app.url(&format!("/api/messages/{}", ids[0])))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(pending["delivered"], false);
        assert!(pending["delivered_at"].is_null());

        let mut ws = WsClient::connect(&app, &carol).await;
        ws.join("notifications:scans").await;
        for (i, id) in ids.iter().enumerate() {
            let frame = ws.next_event("msg").await;
            assert_eq!(frame[4]["message"], format!("m{i}"));
            assert_eq!(&frame[4]["id"], id);
        }
        // Once: a second tab joining later gets nothing more.
        let mut second = WsClient::connect(&app, &carol).await;
        second.join("notifications").await;
        second.assert_no_event("msg", 300).await;
        let delivered: Value = app
            .client
            .get(app.url(&format!("/api/messages/{}", ids[2])))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(delivered["delivered"], true);
    }
}

#[tokio::test]
async fn undelivered_messages_expire() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.admin_token = Some(ADMIN.into());
        c.message_ttl = std::time::Duration::from_millis(300);
    })
    .await;
    let dave = app.register_id(Some("Dave")).await;
    let status: Value =
        admin_post(&app, "/api/messages", json!({"user_id": dave, "message": "too late"}))
            .await
            .json()
            .await
            .unwrap();
    assert_eq!(status["delivered"], false);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let mut ws = WsClient::connect(&app, &dave).await;
    ws.join("notifications").await;
    ws.assert_no_event("msg", 300).await;
    // The purger deleted it.
    let response = app
        .client
        .get(app.url(&format!("/api/messages/{}", status["id"].as_str().unwrap())))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_error(response, 404, "not_found").await;
}

#[tokio::test]
async fn message_input_is_checked() {
    let app = spawn(Backend::Sqlite).await;
    let erin = app.register_id(None).await;
    let cases = [
        (json!({"message": "x"}), "/user_id"),
        (json!({"user_id": "nope", "message": "x"}), "/user_id"),
        (json!({"user_id": 42, "message": "x"}), "/user_id"),
        (json!({"user_id": erin}), "/message"),
        (json!({"user_id": erin, "message": ""}), "/message"),
        (json!({"user_id": erin, "message": "   "}), "/message"),
        (json!({"user_id": erin, "message": "\u{85}\u{3000}"}), "/message"),
        (json!({"user_id": erin, "message": {"x": 1}}), "/message"),
        (json!({"user_id": erin, "message": "x".repeat(4097)}), "/message"),
        (json!({"user_id": erin, "message": "x", "id": "mine"}), "/id"),
        (json!({"user_id": erin, "message": "x", "inserted_at": "now"}), "/inserted_at"),
    ];
    for (body, pointer) in cases {
        let error = assert_error(
            admin_post(&app, "/api/messages", body.clone()).await,
            400,
            "invalid_field",
        )
        .await;
        assert_eq!(error["source"]["pointer"], pointer, "{body}");
    }
    let unknown = admin_post(
        &app,
        "/api/messages",
        json!({"user_id": uuid::Uuid::new_v4().to_string(), "message": "x"}),
    )
    .await;
    assert_error(unknown, 404, "not_found").await;
    let broken = app
        .client
        .post(app.url("/api/messages"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(r#"{"user_id": "a"b"}"#)
        .send()
        .await
        .unwrap();
    assert_error(broken, 400, "invalid_body").await;
    let not_object = admin_post(&app, "/api/messages", json!([1, 2])).await;
    assert_error(not_object, 400, "invalid_body").await;
    let malformed_id = app
        .client
        .get(app.url("/api/messages/not-a-uuid"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_error(malformed_id, 404, "not_found").await;
}

#[tokio::test]
async fn operators_routes_need_the_admin_token() {
    let app = spawn(Backend::Sqlite).await;
    let id = app.register_id(None).await;
    let routes = [
        (Method::POST, "/api/messages".to_owned(), Some(json!({"user_id": id, "message": "x"}))),
        (Method::GET, format!("/api/messages/{}", uuid::Uuid::new_v4()), None),
        (
            Method::POST,
            "/api/broadcasts".to_owned(),
            Some(json!({"topic": "notifications", "event": "x"})),
        ),
        (Method::POST, "/api/ping".to_owned(), None),
        (Method::DELETE, format!("/api/json/accounts/users/{id}"), None),
    ];
    for (method, path, body) in routes {
        let build = |token: Option<&str>| {
            let mut request = app.client.request(method.clone(), app.url(&path));
            if let Some(token) = token {
                request = request.bearer_auth(token);
            }
            if let Some(body) = &body {
                request = request.header("content-type", "application/json").body(body.to_string());
            }
            request.send()
        };
        assert_error(build(Some("client-token")).await.unwrap(), 403, "forbidden").await;
        assert_error(build(None).await.unwrap(), 401, "unauthorized").await;
    }
}

#[tokio::test]
async fn broadcasts_reach_a_topic_and_reserved_events_are_refused() {
    let app = spawn(Backend::Sqlite).await;
    let frank = app.register_id(None).await;
    let mut plain = WsClient::connect(&app, &frank).await;
    plain.join("notifications").await;
    let mut scans = WsClient::connect(&app, &frank).await;
    scans.join("notifications:scans").await;

    let response = admin_post(&app, "/api/broadcasts", json!({"topic": "notifications", "event": "announcement", "payload": {"text": "Doors close at 6"}})).await;
    assert_eq!(response.status(), 202);
    let sent: Value = response.json().await.unwrap();
    assert_eq!(sent["subscribers"], 1);
    let frame = plain.next_event("announcement").await;
    assert_eq!(
        frame,
        json!([null, null, "notifications", "announcement", {"text": "Doors close at 6"}])
    );
    scans.assert_no_event("announcement", 300).await;

    // Names are counted in characters: 255 multi-byte ones are fine.
    let long = admin_post(
        &app,
        "/api/broadcasts",
        json!({"topic": "ぺ".repeat(255), "event": "ぺ".repeat(255)}),
    )
    .await;
    assert_eq!(long.status(), 202);

    let no_payload = admin_post(
        &app,
        "/api/broadcasts",
        json!({"topic": "notifications:scans", "event": "bare"}),
    )
    .await;
    assert_eq!(no_payload.status(), 202);
    assert_eq!(scans.next_event("bare").await[4], json!({}));

    for (body, pointer) in [
        (json!({"topic": "notifications", "event": "phx_close"}), "/event"),
        (json!({"topic": "notifications", "event": "presence_diff"}), "/event"),
        (json!({"topic": "notifications", "event": "x", "payload": [1]}), "/payload"),
        (json!({"topic": "", "event": "x"}), "/topic"),
        (json!({"topic": "t".repeat(256), "event": "x"}), "/topic"),
        (json!({"event": "x"}), "/topic"),
        (json!({"topic": "notifications"}), "/event"),
        (json!({"topic": "notifications", "event": "x", "extra": 1}), "/extra"),
    ] {
        let error = assert_error(
            admin_post(&app, "/api/broadcasts", body.clone()).await,
            400,
            "invalid_field",
        )
        .await;
        assert_eq!(error["source"]["pointer"], pointer, "{body}");
    }
}

#[tokio::test]
async fn the_server_wide_ping_reaches_every_notifications_socket() {
    let app = spawn(Backend::Sqlite).await;
    let gina = app.register_id(None).await;
    let mut a = WsClient::connect(&app, &gina).await;
    a.join("notifications").await;
    let mut b = WsClient::connect(&app, &gina).await;
    b.join("notifications:scans").await;
    let response = app.client.post(app.url("/api/ping")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(a.next_event("ping").await[4], json!({"msg": "ping"}));
    assert_eq!(b.next_event("ping").await[4], json!({"msg": "ping"}));
    // The client's answer is a pong push; the channel takes it quietly and stays up.
    a.send(json!(["1", "9", "notifications", "pong", {}])).await;
    a.send(json!(["1", "10", "notifications", "ping", {"still": "here"}])).await;
    assert_eq!(
        a.next_event("phx_reply").await[4],
        json!({"status": "ok", "response": {"still": "here"}})
    );
}

#[tokio::test]
async fn deleting_a_user_disconnects_it_and_removes_its_messages() {
    for backend in backends() {
        let app = spawn(backend).await;
        let hank = app.register_id(Some("Hank")).await;
        let offline = app.register_id(Some("Ivy")).await;
        let waiting: Value =
            admin_post(&app, "/api/messages", json!({"user_id": offline, "message": "x"}))
                .await
                .json()
                .await
                .unwrap();
        let mut ws = WsClient::connect(&app, &hank).await;
        ws.join("notifications").await;

        for id in [&hank, &offline] {
            let response = app
                .client
                .delete(app.url(&format!("/api/json/accounts/users/{id}")))
                .bearer_auth(ADMIN)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 204);
        }
        assert!(
            tokio::time::timeout(std::time::Duration::from_secs(5), async {
                while ws.next_frame().await.is_some() {}
            })
            .await
            .is_ok(),
            "socket closed"
        );
        assert_error(app.get(&format!("/api/json/accounts/users/{hank}")).await, 404, "not_found")
            .await;
        let gone = app
            .client
            .get(app.url(&format!("/api/messages/{}", waiting["id"].as_str().unwrap())))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_error(gone, 404, "not_found").await;
        // A deleted user cannot connect again (no stale cache).
        let url = format!(
            "{}/socket/websocket?vsn=2.0.0&userToken={hank}",
            app.address.replace("http://", "ws://")
        );
        assert!(tokio_tungstenite::connect_async(url).await.is_err());
        let again = app
            .client
            .delete(app.url(&format!("/api/json/accounts/users/{hank}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_error(again, 404, "not_found").await;
        let _ = Method::DELETE;
    }
}

async fn post_with_key(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/messages"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_retry_with_the_same_idempotency_key_stores_and_pushes_once() {
    for backend in backends() {
        let app = spawn(backend).await;
        let erin = app.register_id(Some("Erin")).await;
        let mut ws = WsClient::connect(&app, &erin).await;
        ws.join("notifications").await;
        let body = json!({"user_id": erin, "message": "Stamp rally ends at 6", "booth": "B-3"});

        let first = post_with_key(&app, "rally-end-42", body.clone()).await;
        assert_eq!(first.status(), 202);
        assert!(first.headers().get("idempotent-replayed").is_none());
        let first: Value = first.json().await.unwrap();
        let retry = post_with_key(&app, "rally-end-42", body.clone()).await;
        assert_eq!(retry.status(), 202, "on {:?}", app.backend);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        let retry: Value = retry.json().await.unwrap();
        assert_eq!(retry["id"], first["id"], "the same message answers the retry");
        assert_eq!(retry["delivered"], true);

        let frame = ws.next_event("msg").await;
        assert_eq!(frame[4]["id"], first["id"]);
        ws.assert_no_event("msg", 300).await;

        // The key names that message: another message under it is refused, nothing stored.
        let other = post_with_key(
            &app,
            "rally-end-42",
            json!({"user_id": erin, "message": "Something else", "booth": "B-3"}),
        )
        .await;
        assert_error(other, 422, "idempotency_key_reused").await;
        ws.assert_no_event("msg", 300).await;

        // Another key is another message.
        let second = post_with_key(&app, "rally-end-43", body.clone()).await;
        assert_eq!(second.status(), 202);
        let second: Value = second.json().await.unwrap();
        assert_ne!(second["id"], first["id"]);
        assert_eq!(ws.next_event("msg").await[4]["id"], second["id"]);

        // Keys are bounded and printable.
        for bad in ["x".repeat(256), "two words".to_owned(), String::new()] {
            let response = post_with_key(&app, &bad, body.clone()).await;
            assert_error(response, 400, "invalid_header").await;
        }
        ws.assert_no_event("msg", 300).await;
    }
}

#[tokio::test]
async fn concurrent_sends_and_joins_never_fail_and_deliver_each_message_once() {
    for backend in backends() {
        let app = spawn(backend).await;
        let mut users = Vec::new();
        for i in 0..8 {
            users.push(app.register_id(Some(&format!("Busy{i}"))).await);
        }
        // Half online, half offline; many writers at once (sends, registrations, stamp updates).
        let mut online = Vec::new();
        for user in &users[..4] {
            let mut ws = WsClient::connect(&app, user).await;
            ws.join("notifications").await;
            online.push(ws);
        }
        let mut tasks = Vec::new();
        for round in 0..25 {
            for user in &users {
                let (client, url) = (app.client.clone(), app.url("/api/messages"));
                let body = json!({"user_id": user, "message": format!("m{round}")});
                tasks.push(tokio::spawn(async move {
                    client
                        .post(url)
                        .bearer_auth(ADMIN)
                        .header("content-type", "application/json")
                        .body(body.to_string())
                        .send()
                        .await
                        .unwrap()
                        .status()
                        .as_u16()
                }));
            }
            let (client, url) = (app.client.clone(), app.url("/api/json/accounts/users/"));
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth("client-token")
                    .header("content-type", "application/vnd.api+json")
                    .body(r#"{"data":{"type":"user","attributes":{}}}"#)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        for task in tasks {
            let status = task.await.unwrap();
            assert!(status == 202 || status == 201, "{status} on {:?}", app.backend);
        }
        // Sent concurrently, so in no set order: each exactly once.
        let expected: std::collections::BTreeSet<String> =
            (0..25).map(|round| format!("m{round}")).collect();
        let mut offline = Vec::new();
        for user in &users[4..] {
            let mut ws = WsClient::connect(&app, user).await;
            ws.join("notifications").await;
            offline.push(ws);
        }
        for ws in online.iter_mut().chain(offline.iter_mut()) {
            let mut got = std::collections::BTreeSet::new();
            for _ in 0..25 {
                let frame = ws.next_event("msg").await;
                assert!(got.insert(frame[4]["message"].as_str().unwrap().to_owned()), "twice");
            }
            assert_eq!(got, expected);
            ws.assert_no_event("msg", 200).await;
        }
    }
}
