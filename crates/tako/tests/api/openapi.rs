use serde_json::Value;

use crate::helpers::{Backend, TestApp};

#[tokio::test]
async fn serves_an_openapi_3_document_of_every_route() {
    let app = TestApp::spawn(Backend::Sqlite).await;
    let response = app.get("/api/json/open_api").await;
    assert_eq!(response.status(), 200);
    let doc: Value = response.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/api/json/accounts/users", &["get", "post"][..]),
        ("/api/json/accounts/users/{id}", &["get", "patch"][..]),
        ("/api/json/leaderboard", &["get"][..]),
        ("/api/json/open_api", &["get"][..]),
    ] {
        for method in methods {
            let operation = &paths[path][method];
            assert!(operation.is_object(), "{method} {path} documented");
            let responses = operation["responses"].as_object().unwrap();
            assert!(responses.contains_key("401"), "{method} {path} documents 401");
            assert!(responses.contains_key("406"), "{method} {path} documents 406");
        }
    }
    assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
    assert!(doc["components"]["schemas"]["ErrorDocument"].is_object());
    assert!(paths["/api/json/accounts/users/{id}"]["patch"]["responses"]["409"].is_object());
}
