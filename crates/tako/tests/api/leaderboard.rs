use serde_json::{json, Value};

use crate::helpers::{assert_error, backends, update_body, TestApp};

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
async fn defaults_to_100_entries() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        for i in 0..105 {
            app.register(Some(&format!("Runner{i:03}"))).await;
        }
        let body: Value = app.get("/api/json/leaderboard").await.json().await.unwrap();
        let rows = body["data"].as_array().unwrap();
        assert_eq!(rows.len(), 100);
        assert_eq!(rows[99]["rank"], 100);
    }
}
