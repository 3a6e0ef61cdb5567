use serde_json::{json, Value};

use sqlx::Connection;

use crate::helpers::{assert_error, backends, update_body, Backend, TestApp};

#[tokio::test]
async fn best_first_ties_by_who_got_there_first_nameless_left_out() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let early = app.register_id(Some("Early")).await;
        let late = app.register_id(Some("Late")).await;
        let top = app.register_id(Some("Top")).await;
        let nameless = app.register_id(None).await;
        let zero = app.register_id(Some("Zero")).await;
        // Late registered after Early but Early reaches 5 after Late does.
        app.set_stamps(&late, 5).await;
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        app.set_stamps(&early, 5).await;
        app.set_stamps(&top, 9).await;
        app.set_stamps(&nameless, 50).await;
        // A nickname change does not move Late behind Early: only stamps count.
        app.patch_json(
            &format!("/api/json/accounts/users/{late}"),
            &update_body(json!({"nickname": "Late2"})),
        )
        .await;

        let response = app.get("/api/json/leaderboard").await;
        assert_eq!(response.status(), 200);
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body,
            json!({"data": [
                {"nickname": "Top", "stamps_collected": 9, "rank": 1},
                {"nickname": "Late2", "stamps_collected": 5, "rank": 2},
                {"nickname": "Early", "stamps_collected": 5, "rank": 3},
                {"nickname": "Zero", "stamps_collected": 0, "rank": 4},
            ]})
        );
        let _ = zero;
        let limited: Value = app.get("/api/json/leaderboard?limit=2").await.json().await.unwrap();
        assert_eq!(limited["data"].as_array().unwrap().len(), 2);
        let max: Value = app.get("/api/json/leaderboard?limit=1000").await.json().await.unwrap();
        assert_eq!(max["data"].as_array().unwrap().len(), 4);
        for bad in ["0", "1001", "-1", "ten", ""] {
            let response = app.get(&format!("/api/json/leaderboard?limit={bad}")).await;
            let error = assert_error(response, 400, "invalid_query").await;
            assert_eq!(error["source"]["parameter"], "limit");
        }
    }
}

#[tokio::test]
async fn without_a_limit_every_ranked_user_up_to_the_setting() {
    for backend in backends() {
        let app = TestApp::spawn(backend.clone()).await;
        for i in 0..105 {
            app.register(Some(&format!("Runner{i:03}"))).await;
        }
        app.register(None).await;
        let body: Value = app.get("/api/json/leaderboard").await.json().await.unwrap();
        let rows = body["data"].as_array().unwrap();
        assert_eq!(rows.len(), 105, "every named user, as the original answered");
        assert_eq!(rows[104]["rank"], 105);

        let capped = TestApp::spawn_with(backend, |c| c.leaderboard_max = 50).await;
        for i in 0..60 {
            capped.register(Some(&format!("Runner{i:03}"))).await;
        }
        let body: Value = capped.get("/api/json/leaderboard").await.json().await.unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 50);
        // `limit` still asks for exactly that many, up to 1000.
        let body: Value = capped.get("/api/json/leaderboard?limit=55").await.json().await.unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 55);
    }
}

#[tokio::test]
async fn etag_and_if_none_match_and_changes_show_at_once() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let ame = app.register_id(Some("Ame")).await;
        app.register_id(Some("Gura")).await;

        let first = app.get("/api/json/leaderboard").await;
        assert_eq!(first.status(), 200);
        assert_eq!(first.headers()["content-type"], "application/json");
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() > 10, "{etag}");
        let body: Value = first.json().await.unwrap();
        assert_eq!(body["data"].as_array().unwrap().len(), 2);

        // The same tag: 304, no body, the tag again.
        for header in [etag.clone(), format!("W/{etag}"), format!("\"other\", {etag}")] {
            let response = app
                .request(reqwest::Method::GET, "/api/json/leaderboard")
                .header("if-none-match", header)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 304);
            assert_eq!(response.headers()["etag"].to_str().unwrap(), etag);
            assert!(response.bytes().await.unwrap().is_empty());
        }
        let other = app
            .request(reqwest::Method::GET, "/api/json/leaderboard")
            .header("if-none-match", "\"stale\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), 200);

        // A change through the API shows on the very next request, with a new tag.
        app.set_stamps(&ame, 3).await;
        let response = app
            .request(reqwest::Method::GET, "/api/json/leaderboard")
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let new_etag = response.headers()["etag"].to_str().unwrap().to_owned();
        assert_ne!(new_etag, etag);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["data"][0], json!({"nickname": "Ame", "stamps_collected": 3, "rank": 1}));

        // A change this node did not make (another node, an operator's SQL) shows within a
        // second.
        let sql = "UPDATE users SET stamps_collected = 9 WHERE nickname = 'Gura'";
        match &app.backend {
            Backend::Sqlite => {
                let mut conn = sqlx::SqliteConnection::connect(&app.database_url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
            Backend::Postgres(_) => {
                let mut conn = sqlx::PgConnection::connect(&app.database_url).await.unwrap();
                sqlx::query(sql).execute(&mut conn).await.unwrap();
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
        let body: Value = app.get("/api/json/leaderboard").await.json().await.unwrap();
        assert_eq!(body["data"][0]["nickname"], "Gura");
    }
}
