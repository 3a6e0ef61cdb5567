use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, backends, update_body, TestApp, JSONAPI};

#[tokio::test]
async fn registering_answers_201_with_the_document_the_client_reads() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        for path in ["/api/json/accounts/users/", "/api/json/accounts/users"] {
            let response = app.post_json(path, r#"{"data":{"type":"user","attributes":{}}}"#).await;
            assert_eq!(response.status(), 201);
            assert_eq!(response.headers()["content-type"], JSONAPI);
            let location = response.headers()["location"].to_str().unwrap().to_owned();
            let body: Value = response.json().await.unwrap();
            let id = body["data"]["id"].as_str().unwrap();
            assert!(uuid::Uuid::parse_str(id).is_ok(), "{id}");
            assert_eq!(location, format!("/api/json/accounts/users/{id}"));
            assert_eq!(body["data"]["type"], "user");
            assert_eq!(body["data"]["attributes"]["nickname"], Value::Null);
            assert_eq!(body["data"]["attributes"]["stamps_collected"], 0);
            let inserted = body["data"]["attributes"]["inserted_at"].as_str().unwrap();
            assert!(
                chrono::DateTime::parse_from_rfc3339(inserted).is_ok() && inserted.ends_with('Z'),
                "{inserted}"
            );
            assert_eq!(
                inserted.len(),
                "2024-06-01T10:20:30.123456Z".len(),
                "microseconds: {inserted}"
            );
            assert_eq!(body["data"]["attributes"]["updated_at"], inserted);
            assert_eq!(body["data"]["relationships"], json!({}));
            assert_eq!(body["data"]["links"]["self"], location);
            assert_eq!(body["links"]["self"], location);
            assert_eq!(body["jsonapi"]["version"], "1.0");
        }
    }
}

#[tokio::test]
async fn registering_with_attributes_validates_and_trims_them() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let body = app.register(Some("  Cruel_KFP  ")).await;
        assert_eq!(body["data"]["attributes"]["nickname"], "Cruel_KFP");
        let blank = app.register(Some("   ")).await;
        assert_eq!(blank["data"]["attributes"]["nickname"], Value::Null);

        let response = app
            .post_json("/api/json/accounts/users", &update_body(json!({"stamps_collected": 3})))
            .await;
        assert_eq!(response.status(), 201);
        let created: Value = response.json().await.unwrap();
        assert_eq!(created["data"]["attributes"]["stamps_collected"], 3);

        let response = app
            .post_json("/api/json/accounts/users", &update_body(json!({"nickname": "fuck"})))
            .await;
        let error = assert_error(response, 400, "invalid_attribute").await;
        assert_eq!(error["source"]["pointer"], "/data/attributes/nickname");
        assert_eq!(error["detail"], "Nickname contains profanity");
    }
}

#[tokio::test]
async fn the_server_generates_ids_and_refuses_a_clients() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let body = r#"{"data":{"type":"user","id":"681adb8b-be3d-4fca-8858-2827609d9b22","attributes":{}}}"#;
        let error =
            assert_error(app.post_json("/api/json/accounts/users", body).await, 403, "forbidden")
                .await;
        assert_eq!(error["source"]["pointer"], "/data/id");
        let missing =
            app.get("/api/json/accounts/users/681adb8b-be3d-4fca-8858-2827609d9b22").await;
        assert_error(missing, 404, "not_found").await;
    }
}

#[tokio::test]
async fn reading_a_user() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let created = app.register(Some("Gura")).await;
        let id = created["data"]["id"].as_str().unwrap();
        let response = app.get(&format!("/api/json/accounts/users/{id}")).await;
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], JSONAPI);
        let read: Value = response.json().await.unwrap();
        assert_eq!(read, created);

        let unknown = app.get(&format!("/api/json/accounts/users/{}", uuid::Uuid::new_v4())).await;
        assert_error(unknown, 404, "not_found").await;
        for malformed in ["not-a-uuid", "123", "681adb8b-be3d-4fca-8858", "%27%20OR%201%3D1"] {
            let response = app.get(&format!("/api/json/accounts/users/{malformed}")).await;
            assert_error(response, 404, "not_found").await;
        }
    }
}

#[tokio::test]
async fn updating_nickname_and_stamps() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let created = app.register(None).await;
        let id = created["data"]["id"].as_str().unwrap();
        let path = format!("/api/json/accounts/users/{id}");

        let response = app
            .patch_json(&path, r#"{"data":{"type":"user","attributes":{"nickname":"Cruel_KFP"}}}"#)
            .await;
        assert_eq!(response.status(), 200);
        let after_nick: Value = response.json().await.unwrap();
        assert_eq!(after_nick["data"]["attributes"]["nickname"], "Cruel_KFP");
        assert!(after_nick["errors"].is_null());

        let after_stamps = app.set_stamps(id, 7).await;
        assert_eq!(after_stamps["data"]["attributes"]["stamps_collected"], 7);
        assert_eq!(after_stamps["data"]["attributes"]["nickname"], "Cruel_KFP", "other field kept");
        assert_eq!(
            after_stamps["data"]["attributes"]["inserted_at"],
            created["data"]["attributes"]["inserted_at"]
        );
        let updated =
            |doc: &Value| doc["data"]["attributes"]["updated_at"].as_str().unwrap().to_owned();
        assert!(updated(&after_nick) > updated(&created), "updated_at moves");
        assert!(updated(&after_stamps) > updated(&after_nick), "updated_at moves");

        // The id may be repeated in the body when it is the path's.
        let body =
            json!({"data": {"type": "user", "id": id, "attributes": {"nickname": ""}}}).to_string();
        let cleared: Value = app.patch_json(&path, &body).await.json().await.unwrap();
        assert_eq!(cleared["data"]["attributes"]["nickname"], Value::Null, "blank clears");

        let unknown = app
            .patch_json(
                &format!("/api/json/accounts/users/{}", uuid::Uuid::new_v4()),
                &update_body(json!({"stamps_collected": 1})),
            )
            .await;
        assert_error(unknown, 404, "not_found").await;
        let malformed = app
            .patch_json(
                "/api/json/accounts/users/xyz",
                &update_body(json!({"stamps_collected": 1})),
            )
            .await;
        assert_error(malformed, 404, "not_found").await;
    }
}

#[tokio::test]
async fn invalid_attributes_get_400_pointing_at_them() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let id = app.register_id(Some("Kiara")).await;
        let path = format!("/api/json/accounts/users/{id}");
        let cases = [
            (json!({"nickname": "ab"}), "nickname"),
            (json!({"nickname": "x".repeat(25)}), "nickname"),
            (json!({"nickname": "bad\u{0007}name"}), "nickname"),
            (json!({"nickname": "sh1thead"}), "nickname"),
            (json!({"nickname": "f.u.c.k"}), "nickname"),
            (json!({"nickname": 42}), "nickname"),
            (json!({"stamps_collected": -1}), "stamps_collected"),
            (json!({"stamps_collected": 1.5}), "stamps_collected"),
            (json!({"stamps_collected": "7"}), "stamps_collected"),
            (json!({"stamps_collected": 1e300}), "stamps_collected"),
            (json!({"admin": true}), "admin"),
            (json!({"inserted_at": "2020-01-01T00:00:00Z"}), "inserted_at"),
        ];
        for (attributes, field) in cases {
            let response = app.patch_json(&path, &update_body(attributes.clone())).await;
            let error = assert_error(response, 400, "invalid_attribute").await;
            assert_eq!(
                error["source"]["pointer"],
                format!("/data/attributes/{field}"),
                "{attributes}"
            );
        }
        // Nothing was changed by the refused updates.
        let user: Value = app.get(&path).await.json().await.unwrap();
        assert_eq!(user["data"]["attributes"]["nickname"], "Kiara");
        assert_eq!(user["data"]["attributes"]["stamps_collected"], 0);

        // Two bad attributes: both reported.
        let response = app
            .patch_json(&path, &update_body(json!({"nickname": "a", "stamps_collected": -5})))
            .await;
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"].as_array().unwrap().len(), 2, "{body}");
    }
}

#[tokio::test]
async fn type_and_id_mismatches_are_conflicts() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let id = app.register_id(None).await;
        let path = format!("/api/json/accounts/users/{id}");
        let wrong_type = r#"{"data":{"type":"users","attributes":{}}}"#;
        assert_error(app.post_json("/api/json/accounts/users", wrong_type).await, 409, "conflict")
            .await;
        assert_error(app.patch_json(&path, wrong_type).await, 409, "conflict").await;
        let other = json!({"data": {"type": "user", "id": uuid::Uuid::new_v4().to_string(), "attributes": {}}}).to_string();
        let error = assert_error(app.patch_json(&path, &other).await, 409, "conflict").await;
        assert_eq!(error["source"]["pointer"], "/data/id");
        let no_type = r#"{"data":{"attributes":{}}}"#;
        assert_error(app.patch_json(&path, no_type).await, 400, "invalid_body").await;
    }
}

#[tokio::test]
async fn concurrent_updates_of_different_fields_are_all_kept() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let mut ids = Vec::new();
        for _ in 0..15 {
            ids.push(app.register_id(None).await);
        }
        let mut tasks = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let path = format!("/api/json/accounts/users/{id}");
            let nick = update_body(json!({"nickname": format!("Player{i:03}")}));
            let stamps = update_body(json!({"stamps_collected": i + 1}));
            for body in [nick, stamps] {
                let request =
                    app.request(Method::PATCH, &path).header("content-type", JSONAPI).body(body);
                tasks.push(tokio::spawn(async move { request.send().await.unwrap().status() }));
            }
        }
        for task in tasks {
            assert_eq!(task.await.unwrap(), 200);
        }
        for (i, id) in ids.iter().enumerate() {
            let user: Value =
                app.get(&format!("/api/json/accounts/users/{id}")).await.json().await.unwrap();
            assert_eq!(user["data"]["attributes"]["nickname"], format!("Player{i:03}"));
            assert_eq!(user["data"]["attributes"]["stamps_collected"], i + 1);
        }
    }
}

#[tokio::test]
async fn listing_is_for_admins_and_pages() {
    for backend in backends() {
        let app = TestApp::spawn_with(backend, |c| {
            c.api_token = Some("client-token".into());
            c.admin_token = Some("admin-token".into());
        })
        .await;
        for i in 0..5 {
            app.register(Some(&format!("Lister{i}"))).await;
        }
        // The client token is public: it must not reveal every user's login id.
        let response = app.get("/api/json/accounts/users").await;
        assert_error(response, 403, "forbidden").await;
        let anonymous = app.client.get(app.url("/api/json/accounts/users")).send().await.unwrap();
        assert_error(anonymous, 401, "unauthorized").await;

        let admin = |path: &str| app.client.get(app.url(path)).bearer_auth("admin-token").send();
        let page: Value = admin("/api/json/accounts/users?page[limit]=2&page[offset]=1")
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let nicks: Vec<&str> = page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["attributes"]["nickname"].as_str().unwrap())
            .collect();
        assert_eq!(nicks, ["Lister1", "Lister2"]);
        assert_eq!(page["meta"]["page"]["total"], 5);
        assert!(page["links"]["next"].as_str().unwrap().contains("offset%5D=3"));
        assert!(page["links"]["prev"].is_string());
        let all: Value = admin("/api/json/accounts/users/").await.unwrap().json().await.unwrap();
        assert_eq!(all["data"].as_array().unwrap().len(), 5);
        assert!(all["links"]["next"].is_null());
        for bad in ["page[limit]=0", "page[limit]=1001", "page[limit]=x", "page[offset]=-1"] {
            let response = admin(&format!("/api/json/accounts/users?{bad}")).await.unwrap();
            assert_error(response, 400, "invalid_query").await;
        }
    }
}
