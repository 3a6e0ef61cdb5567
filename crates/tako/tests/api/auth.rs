use serde_json::Value;

use crate::helpers::{assert_error, backends, Backend, TestApp, JSONAPI};

async fn with_tokens() -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |c| {
        c.api_token = Some("client-token".into());
        c.admin_token = Some("admin-token".into());
    })
    .await
}

#[tokio::test]
async fn every_api_route_needs_the_token() {
    let app = with_tokens().await;
    let id = app.register_id(None).await;
    let routes = [
        ("GET", format!("/api/json/accounts/users/{id}")),
        ("PATCH", format!("/api/json/accounts/users/{id}")),
        ("POST", "/api/json/accounts/users/".to_owned()),
        ("GET", "/api/json/accounts/users".to_owned()),
        ("GET", "/api/json/leaderboard".to_owned()),
        ("GET", "/api/json/open_api".to_owned()),
    ];
    for (method, path) in &routes {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("Bearer client-token-and-more"),
            Some("client-token"),
            Some("Basic Y2xpZW50"),
        ] {
            let mut request =
                app.client.request(method.clone(), app.url(path)).header("content-type", JSONAPI);
            if let Some(auth) = auth {
                request = request.header("authorization", auth);
            }
            let response = request.body(r#"{"data":{"type":"user"}}"#).send().await.unwrap();
            assert_error(response, 401, "unauthorized").await;
        }
    }
    // The right token, whatever the scheme's case.
    let response = app
        .client
        .get(app.url(&format!("/api/json/accounts/users/{id}")))
        .header("authorization", "bearer client-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The admin token works wherever the client token does.
    let response = app
        .client
        .get(app.url("/api/json/leaderboard"))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn health_needs_no_token() {
    let app = with_tokens().await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // Exactly what the README documents.
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"status": "ok", "database": "ok"}));
}

#[tokio::test]
async fn health_is_503_when_the_database_is_gone() {
    for backend in backends() {
        let Backend::Postgres(admin) = backend else { continue };
        let app = TestApp::spawn(Backend::Postgres(admin.clone())).await;
        assert_eq!(app.client.get(app.url("/healthz")).send().await.unwrap().status(), 200);
        // Drop the database under the running server.
        use sqlx::Connection;
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        let name = app.database_url.rsplit('/').next().unwrap().to_owned();
        sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await
            .unwrap();
        let response = app.client.get(app.url("/healthz")).send().await.unwrap();
        assert_eq!(response.status(), 503);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body, serde_json::json!({"status": "unavailable", "database": "error"}));
        // And the API says so as a JSON:API error, not a 500.
        let response = app.get("/api/json/leaderboard").await;
        assert_error(response, 503, "unavailable").await;
    }
}

#[tokio::test]
async fn without_tokens_in_dev_everything_is_open() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    assert!(app.token.is_none());
    let response = app.client.get(app.url("/api/json/accounts/users")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn without_an_admin_token_nobody_lists_users() {
    let app =
        TestApp::spawn_with(Backend::Sqlite, |c| c.api_token = Some("client-token".into())).await;
    assert_error(app.get("/api/json/accounts/users").await, 403, "forbidden").await;
}
