//! The seed README's way to message one user, a broadcast of `msg` with `{user_id, message}`,
//! is a message to that user: stored, delivered only to their sockets, answered as
//! `POST /api/messages` answers. No broadcast carries a user's UUID to anyone else.

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

async fn broadcast(app: &TestApp, body: Value) -> reqwest::Response {
    app.client
        .post(app.url("/api/broadcasts"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_msg_broadcast_with_a_user_id_reaches_that_user_alone() {
    for backend in backends() {
        let app = spawn(backend).await;
        let alice = app.register_id(Some("Alice")).await;
        let bob = app.register_id(Some("Bob")).await;
        let mut alice_ws = WsClient::connect(&app, &alice).await;
        alice_ws.join("notifications:scans").await;
        let mut bob_ws = WsClient::connect(&app, &bob).await;
        bob_ws.join("notifications:scans").await;

        let body = json!({"topic": "notifications:scans", "event": "msg",
            "payload": {"user_id": alice, "message": "Your prize waits at booth A-12", "kind": "prize"}});
        let response = broadcast(&app, body).await;
        assert_eq!(response.status(), 202);
        let status: Value = response.json().await.unwrap();
        assert_eq!(status["user_id"], alice);
        assert_eq!(status["delivered"], true);
        assert_eq!(status["message"], "Your prize waits at booth A-12");
        let id = status["id"].as_str().unwrap().to_owned();

        let frame = alice_ws.next_event("msg").await;
        assert_eq!(frame[4]["user_id"], alice);
        assert_eq!(frame[4]["message"], "Your prize waits at booth A-12");
        assert_eq!(frame[4]["kind"], "prize");
        assert_eq!(frame[4]["id"], id);
        bob_ws.assert_no_event("msg", 300).await;

        // Stored like any message: its state can be read back.
        let stored: Value = app
            .client
            .get(app.url(&format!("/api/messages/{id}")))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(stored["delivered"], true);

        // Offline: it waits for the user's next join.
        drop(bob_ws);
        let body = json!({"topic": "notifications:scans", "event": "msg",
            "payload": {"user_id": bob, "message": "Later"}});
        let status: Value = broadcast(&app, body).await.json().await.unwrap();
        assert_eq!(status["delivered"], false);
        let mut bob_again = WsClient::connect(&app, &bob).await;
        bob_again.join("notifications").await;
        assert_eq!(bob_again.next_event("msg").await[4]["message"], "Later");
        alice_ws.assert_no_event("msg", 200).await;
    }
}

#[tokio::test]
async fn a_user_id_never_goes_out_to_a_whole_topic() {
    let app = spawn(Backend::Sqlite).await;
    let alice = app.register_id(Some("Alice")).await;
    let mut watcher = WsClient::connect(&app, &alice).await;
    watcher.join("notifications").await;
    let cases = [
        (
            json!({"event": "announcement", "payload": {"user_id": alice, "text": "x"}}),
            400,
            "/payload/user_id",
        ),
        (
            json!({"event": "msg", "payload": {"user_id": "nope", "message": "x"}}),
            400,
            "/payload/user_id",
        ),
        (
            json!({"event": "msg", "payload": {"user_id": 7, "message": "x"}}),
            400,
            "/payload/user_id",
        ),
        (json!({"event": "msg", "payload": {"user_id": alice}}), 400, "/payload/message"),
        (
            json!({"event": "msg", "payload": {"user_id": alice, "message": "  "}}),
            400,
            "/payload/message",
        ),
        (
            json!({"event": "msg", "payload": {"user_id": alice, "message": "x", "id": "1"}}),
            400,
            "/payload/id",
        ),
        (
            json!({"event": "msg", "payload": {"user_id": "681adb8b-be3d-4fca-8858-2827609d9b22", "message": "x"}}),
            404,
            "/payload/user_id",
        ),
    ];
    for (mut body, status, pointer) in cases {
        body["topic"] = json!("notifications");
        let code = if status == 404 { "not_found" } else { "invalid_field" };
        let error = assert_error(broadcast(&app, body.clone()).await, status, code).await;
        assert_eq!(error["source"]["pointer"], pointer, "{body}");
    }
    watcher.assert_no_event("announcement", 200).await;
    watcher.assert_no_event("msg", 200).await;
    // A msg without a user_id is still an ordinary broadcast.
    let response =
        broadcast(&app, json!({"topic": "notifications", "event": "msg", "payload": {"message": "All: doors close at 6"}})).await;
    assert_eq!(response.status(), 202);
    assert_eq!(watcher.next_event("msg").await[4], json!({"message": "All: doors close at 6"}));
}
