//! The nickname policy as a client meets it: JSON:API errors pointing at the attribute, the
//! normalised name stored, reserved names from the settings; and the socket broadcasts that
//! carry the sender's stored nickname, whatever the push claims.

use serde_json::{json, Value};

use crate::helpers::{assert_error, backends, update_body, TestApp, WsClient};

#[tokio::test]
async fn refused_nicknames_get_400_at_the_attribute_with_the_reason() {
    for backend in backends() {
        let app = TestApp::spawn_with(backend, |c| {
            c.reserved_nicknames = vec!["Dokomi 2025".into()];
        })
        .await;
        let cases = [
            ("\u{202e}kcuf", "direction"),
            ("ab\u{2028}cd", "line or paragraph"),
            ("zero\u{200b}width", "invisible"),
            ("\u{3164}\u{3164}\u{3164}", "invisible"),
            ("\u{2800}\u{2800}\u{2800}", "visible"),
            ("a\u{301}\u{301}\u{301}\u{301}\u{301}", "combining marks"),
            ("\u{430}dmin", "reserved"),
            ("Ａｄｍｉｎ", "reserved"),
            ("dokomi 2025", "reserved"),
            ("блять", "profanity"),
            ("scheisse", "profanity"),
            ("ちんこ", "profanity"),
            ("1488", "profanity"),
            ("x".repeat(25).leak(), "between 3 and 24"),
        ];
        for (nickname, reason) in cases {
            let body = update_body(json!({ "nickname": nickname }));
            let response = app.post_json("/api/json/accounts/users/", &body).await;
            let error = assert_error(response, 400, "invalid_attribute").await;
            assert_eq!(error["source"]["pointer"], "/data/attributes/nickname", "{nickname:?}");
            let detail = error["detail"].as_str().unwrap();
            assert!(detail.contains(reason), "{nickname:?}: {detail}");
        }
    }
}

#[tokio::test]
async fn fair_names_register_and_are_stored_normalised() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        for name in ["Lovely_Houshou", "Confident_Mion_Family", "Sneaky_Kabumin", "Shiitake"] {
            let body = app.register(Some(name)).await;
            assert_eq!(body["data"]["attributes"]["nickname"], name);
        }
        // Fullwidth letters are stored as the letters they show (NFKC).
        let body = app.register(Some("Ｋｉａｒａ")).await;
        assert_eq!(body["data"]["attributes"]["nickname"], "Kiara");
    }
}

/// A push frame on `notifications`.
fn push(event: &str, payload: Value) -> Value {
    json!([null, "9", "notifications", event, payload])
}

#[tokio::test]
async fn broadcasts_carry_the_stored_nickname_not_the_claim() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let honest = app.register_id(Some("Honest")).await;
        let listener = app.register_id(Some("Listener")).await;
        let nameless = app.register_id(None).await;
        let mut sender = WsClient::connect(&app, &honest).await;
        let mut audience = WsClient::connect(&app, &listener).await;
        let mut anonymous = WsClient::connect(&app, &nameless).await;
        sender.join("notifications").await;
        audience.join("notifications").await;
        anonymous.join("notifications").await;

        for claim in [json!("Honest"), json!("Admin"), json!("fuck"), json!("x".repeat(5000))] {
            sender.send(push("collected", json!({ "nickname": claim }))).await;
            let reply = sender.next_event("phx_reply").await;
            assert_eq!(reply[4]["status"], "ok");
            let heard = audience.next_event("collected-broadcast").await;
            assert_eq!(heard[4], json!({"nickname": "Honest"}));
        }
        sender.send(push("rally-completed", json!({"nickname": "Listener"}))).await;
        let heard = audience.next_event("rally-completed").await;
        assert_eq!(heard[4], json!({"nickname": "Honest"}));

        // A rename through the API shows in the next broadcast.
        let response = app
            .patch_json(
                &format!("/api/json/accounts/users/{honest}"),
                &update_body(json!({"nickname": "Renamed"})),
            )
            .await;
        assert_eq!(response.status(), 200);
        sender.send(push("collected", json!({"nickname": "Honest"}))).await;
        let heard = audience.next_event("collected-broadcast").await;
        assert_eq!(heard[4], json!({"nickname": "Renamed"}));

        // No nickname: an error reply, and nobody hears anything.
        anonymous.send(push("collected", json!({"nickname": "Honest"}))).await;
        let reply = anonymous.next_event("phx_reply").await;
        assert_eq!(reply[4]["status"], "error");
        assert_eq!(reply[4]["response"]["reason"], "set a nickname first");
        audience.assert_no_event("collected-broadcast", 300).await;
    }
}
