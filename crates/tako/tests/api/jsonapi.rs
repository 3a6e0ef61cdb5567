use reqwest::Method;
use serde_json::Value;

use crate::helpers::{assert_error, Backend, TestApp, JSONAPI};

#[tokio::test]
async fn malformed_bodies_are_400_invalid_body() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let id = app.register_id(None).await;
    let path = format!("/api/json/accounts/users/{id}");
    // The web client interpolates nicknames into its JSON: a quote breaks it.
    let broken = r#"{"data":{"type":"user","attributes":{"nickname":"Ina"s fan"}}}"#;
    let bodies = [
        broken,
        "",
        "{",
        "null",
        "[]",
        "42",
        r#"{"data":null}"#,
        r#"{"data":[]}"#,
        r#"{"nodata":{}}"#,
        r#"{"data":{"type":"user","attributes":[]}}"#,
        r#"{"data":{"type":"user","relationships":{"x":{}}}}"#,
        "\u{0}\u{1}",
        r#"{"data":{"type":1}}"#,
    ];
    for body in bodies {
        assert_error(app.patch_json(&path, body).await, 400, "invalid_body").await;
        assert_error(app.post_json("/api/json/accounts/users", body).await, 400, "invalid_body")
            .await;
    }
    let invalid_utf8 = app
        .request(Method::POST, "/api/json/accounts/users")
        .header("content-type", JSONAPI)
        .body(vec![0xff, 0xfe, b'{'])
        .send()
        .await
        .unwrap();
    assert_error(invalid_utf8, 400, "invalid_body").await;
}

#[tokio::test]
async fn bodies_over_64_kib_are_413() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let padding = "x".repeat(65 * 1024);
    let body =
        format!(r#"{{"data":{{"type":"user","attributes":{{}}}},"meta":{{"pad":"{padding}"}}}}"#);
    assert_error(app.post_json("/api/json/accounts/users", &body).await, 413, "payload_too_large")
        .await;
    // Just under the limit is fine.
    let padding = "x".repeat(60 * 1024);
    let body =
        format!(r#"{{"data":{{"type":"user","attributes":{{}}}},"meta":{{"pad":"{padding}"}}}}"#);
    assert_eq!(app.post_json("/api/json/accounts/users", &body).await.status(), 201);
}

#[tokio::test]
async fn media_types_are_negotiated() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let body = r#"{"data":{"type":"user","attributes":{}}}"#;
    let post = |content_type: Option<&'static str>| {
        let mut request = app.client.post(app.url("/api/json/accounts/users")).body(body);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        request.send()
    };
    assert_eq!(post(Some("application/vnd.api+json")).await.unwrap().status(), 201);
    assert_eq!(post(Some("application/json")).await.unwrap().status(), 201);
    for refused in [
        Some("application/vnd.api+json; charset=utf-8"),
        Some("application/vnd.api+json; ext=bulk"),
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        assert_error(post(refused).await.unwrap(), 415, "unsupported_media_type").await;
    }
    for refused in ["text/html", "application/vnd.api+json; charset=utf-8", "image/png, text/plain"]
    {
        let response = app
            .client
            .get(app.url("/api/json/leaderboard"))
            .header("accept", refused)
            .send()
            .await
            .unwrap();
        assert_error(response, 406, "not_acceptable").await;
    }
    for accepted in
        ["application/vnd.api+json", "application/json", "*/*", "text/html, application/*;q=0.1"]
    {
        let response = app
            .client
            .get(app.url("/api/json/leaderboard"))
            .header("accept", accepted)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{accepted}");
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_get_error_documents() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    assert_error(app.get("/api/json/nothing-here").await, 404, "not_found").await;
    assert_error(app.get("/nothing").await, 404, "not_found").await;
    let response = app.request(Method::DELETE, "/api/json/leaderboard").send().await.unwrap();
    assert_error(response, 405, "method_not_allowed").await;
    let response = app.request(Method::PUT, "/api/json/accounts/users").send().await.unwrap();
    assert_error(response, 405, "method_not_allowed").await;
}

#[tokio::test]
async fn cors_allows_any_origin_by_default() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let response = app
        .client
        .request(Method::OPTIONS, app.url("/api/json/accounts/users/"))
        .header("origin", "https://holoquest.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization, content-type")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let allowed =
        response.headers()["access-control-allow-headers"].to_str().unwrap().to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("content-type"), "{allowed}");
}

#[tokio::test]
async fn cors_origins_can_be_narrowed() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.cors_origins = vec!["https://holoquest.example".into()]
    })
    .await;
    let preflight = |origin: &'static str| {
        app.client
            .request(Method::OPTIONS, app.url("/api/json/leaderboard"))
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .send()
    };
    let allowed = preflight("https://holoquest.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://holoquest.example");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    let body: Value = app.get("/api/json/leaderboard").await.json().await.unwrap();
    assert!(body["data"].is_array());
}
