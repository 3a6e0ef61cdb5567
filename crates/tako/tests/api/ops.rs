//! Running Tako: readiness, metrics (parsed by a Prometheus text parser, moving with
//! traffic), request ids, origin checks, socket caps, rate limits, the operators' user search.

use std::collections::HashMap;

use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::{assert_error, backends, Backend, TestApp, WsClient};

const ADMIN: &str = "admin-token";
const CLIENT: &str = "client-token";

async fn spawn_with(configure: impl FnOnce(&mut tako::config::Config)) -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |c| {
        c.api_token = Some(CLIENT.into());
        c.admin_token = Some(ADMIN.into());
        configure(c);
    })
    .await
}

/// Every sample of a scrape, by `name{sorted labels}`; fails on any line the Prometheus
/// parser does not recognise.
async fn scrape(app: &TestApp) -> HashMap<String, f64> {
    let response = app.client.get(app.url("/metrics")).bearer_auth(ADMIN).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(content_type.starts_with("application/openmetrics-text"), "{content_type}");
    let text = response.text().await.unwrap();
    assert!(text.trim_end().ends_with("# EOF"), "OpenMetrics ends with # EOF");
    for line in text.lines() {
        let parsed = prometheus_parse::LineInfo::parse(line);
        let comment = line.starts_with('#');
        match parsed {
            prometheus_parse::LineInfo::Sample { .. } => assert!(!comment),
            prometheus_parse::LineInfo::Doc { .. } | prometheus_parse::LineInfo::Type { .. } => {}
            _ => assert!(line == "# EOF" || line.starts_with("# UNIT"), "unparsed line {line:?}"),
        }
    }
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
        .expect("a Prometheus text scrape");
    let mut samples = HashMap::new();
    for sample in scrape.samples {
        let mut labels: Vec<String> =
            sample.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        samples.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), value);
    }
    samples
}

fn get(samples: &HashMap<String, f64>, key: &str) -> f64 {
    samples.get(key).copied().unwrap_or_else(|| {
        let mut keys: Vec<_> = samples.keys().collect();
        keys.sort();
        panic!("no sample {key}; have {keys:#?}")
    })
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let app = spawn_with(|_| {}).await;
    let before = scrape(&app).await;
    assert_eq!(get(&before, "tako_sockets{transport=websocket}"), 0.0);
    assert_eq!(get(&before, "tako_users_online{}"), 0.0);
    assert!(get(&before, "tako_db_pool_connections{state=max}") >= 1.0);

    let id = app.register_id(Some("Metered")).await;
    let mut ws = WsClient::connect(&app, &id).await;
    ws.join("notifications").await;
    ws.send(json!(["1", "2", "notifications", "collected", {"nickname": "Metered"}])).await;
    ws.next_event("collected-broadcast").await;
    let response = app
        .client
        .post(app.url("/api/messages"))
        .bearer_auth(ADMIN)
        .header("content-type", "application/json")
        .body(json!({"user_id": id, "message": "hello"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    ws.next_event("msg").await;

    let after = scrape(&app).await;
    assert_eq!(get(&after, "tako_sockets{transport=websocket}"), 1.0);
    assert_eq!(get(&after, "tako_sockets{transport=longpoll}"), 0.0);
    assert_eq!(get(&after, "tako_users_online{}"), 1.0);
    assert_eq!(get(&after, "tako_channel_subscriptions{topic=notifications}"), 1.0);
    assert_eq!(get(&after, "tako_presences{topic=notifications}"), 1.0);
    assert_eq!(get(&after, "tako_messages_in_total{event=collected,outcome=accepted}"), 1.0);
    assert_eq!(get(&after, "tako_messages_in_total{event=phx_join,outcome=accepted}"), 1.0);
    assert_eq!(get(&after, "tako_messages_out_total{event=collected-broadcast}"), 1.0);
    assert_eq!(get(&after, "tako_messages_out_total{event=msg}"), 1.0);
    assert!(get(&after, "tako_messages_out_total{event=phx_reply}") >= 2.0);
    assert!(get(&after, "tako_broadcast_fanout_seconds_count{}") >= 2.0);
    assert_eq!(
        get(
            &after,
            "tako_http_requests_total{method=POST,route=/api/json/accounts/users/,status=201}"
        ),
        1.0
    );
    assert_eq!(
        get(&after, "tako_http_requests_total{method=POST,route=/api/messages,status=202}"),
        1.0
    );
    assert!(
        get(&after, "tako_http_request_duration_seconds_count{method=POST,route=/api/messages}")
            >= 1.0
    );
    assert_eq!(get(&after, "tako_slow_consumer_disconnects_total{}"), 0.0);
    assert!(get(&after, "tako_db_query_errors_total{}") >= 0.0);
    // A route template, never an id.
    app.get(&format!("/api/json/accounts/users/{id}")).await;
    let last = scrape(&app).await;
    assert_eq!(
        get(
            &last,
            "tako_http_requests_total{method=GET,route=/api/json/accounts/users/:id,status=200}"
        ),
        1.0
    );
    assert!(last.keys().all(|k| !k.contains(&id)));
}

#[tokio::test]
async fn metrics_need_the_admin_token_unless_on_their_own_listener() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app =
        spawn_with(|c| c.metrics_bind = Some(format!("127.0.0.1:{port}").parse().unwrap())).await;
    assert_error(app.client.get(app.url("/metrics")).send().await.unwrap(), 401, "unauthorized")
        .await;
    assert_error(
        app.client.get(app.url("/metrics")).bearer_auth(CLIENT).send().await.unwrap(),
        403,
        "forbidden",
    )
    .await;
    let open = app.client.get(format!("http://127.0.0.1:{port}/metrics")).send().await.unwrap();
    assert_eq!(open.status(), 200);
    assert!(open.text().await.unwrap().contains("tako_sockets"));
}

#[tokio::test]
async fn readiness_and_request_ids() {
    for backend in backends() {
        let app = TestApp::spawn(backend).await;
        let response = app.client.get(app.url("/readyz")).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let id = response.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "a UUID request id: {id}");
        assert_eq!(
            response.json::<Value>().await.unwrap(),
            json!({"status": "ready", "checks": {"database": "ok"}})
        );
        let echoed = app
            .client
            .get(app.url("/healthz"))
            .header("x-request-id", "from-the-proxy-1")
            .send()
            .await
            .unwrap();
        assert_eq!(echoed.headers()["x-request-id"], "from-the-proxy-1");
        app.stop().await;
    }
}

#[tokio::test]
async fn readiness_fails_with_a_reason_when_the_database_is_gone() {
    // PostgreSQL: drop the app's database from under it (SQLite cannot be taken away from an
    // open pool).
    let Some(admin_url) = crate::helpers::postgres_admin_url() else {
        eprintln!("note: TAKO_TEST_DATABASE_URL is not set; readiness failure not run");
        return;
    };
    let app = TestApp::spawn(Backend::Postgres(admin_url.clone())).await;
    assert_eq!(app.client.get(app.url("/readyz")).send().await.unwrap().status(), 200);
    let name = app.database_url.rsplit('/').next().unwrap().to_owned();
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(&format!("DROP DATABASE {name} WITH (FORCE)")).execute(&mut conn).await.unwrap();
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["status"], "unavailable");
    assert!(body["reason"].as_str().unwrap().starts_with("database"), "{body}");
    let samples = scrape(&app).await;
    assert!(get(&samples, "tako_db_query_errors_total{}") >= 1.0);
}

async fn upgrade(app: &TestApp, id: &str, headers: &[(&'static str, &str)]) -> Result<(), u16> {
    let url = format!(
        "{}/socket/websocket?vsn=2.0.0&userToken={id}",
        app.address.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    for (k, v) in headers {
        request.headers_mut().insert(*k, v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test]
async fn sockets_from_origins_outside_the_list_get_403() {
    let app = spawn_with(|c| {
        c.allowed_origins = vec!["https://quest.example.com".into(), "//*.holo.test".into()]
    })
    .await;
    let id = app.register_id(None).await;
    assert_eq!(upgrade(&app, &id, &[("origin", "https://quest.example.com")]).await, Ok(()));
    assert_eq!(upgrade(&app, &id, &[("origin", "http://booth.holo.test")]).await, Ok(()));
    assert_eq!(upgrade(&app, &id, &[("origin", "https://evil.example")]).await, Err(403));
    let longpoll = app
        .client
        .get(app.url(&format!("/socket/longpoll?vsn=2.0.0&userToken={id}")))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(longpoll.status(), 403);
}

#[test]
fn prod_requires_allowed_origins() {
    let mut config = tako::config::Config::for_database("postgres://x/y");
    config.environment = tako::config::Environment::Prod;
    config.api_token = Some("c".into());
    config.admin_token = Some("a".into());
    assert!(config.clone().normalize().is_err());
    config.allowed_origins = vec!["https://quest.example.com".into()];
    assert!(config.clone().normalize().is_ok());
    config.allowed_origins = vec!["quest.example.com".into()];
    assert!(config.normalize().is_err(), "an origin without a scheme or // is refused at start");
}

#[tokio::test]
async fn the_node_cap_refuses_sockets_with_503() {
    let app = spawn_with(|c| c.max_connections = 1).await;
    let id = app.register_id(None).await;
    let mut first = WsClient::connect(&app, &id).await;
    first.join("notifications").await;
    assert_eq!(upgrade(&app, &id, &[]).await, Err(503));
    drop(first);
    let mut again = None;
    for _ in 0..100 {
        if upgrade(&app, &id, &[]).await.is_ok() {
            again = Some(());
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(again.is_some(), "a place frees up when a socket closes");
}

#[tokio::test]
async fn connections_per_address_behind_a_trusted_proxy() {
    let app = spawn_with(|c| {
        c.max_connections_per_ip = 1;
        c.trust_proxy = channels::TrustedProxies::Hops(1);
    })
    .await;
    let id = app.register_id(None).await;
    let url = format!(
        "{}/socket/websocket?vsn=2.0.0&userToken={id}",
        app.address.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().unwrap();
    request.headers_mut().insert("x-forwarded-for", "198.51.100.7".parse().unwrap());
    let (_held, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(upgrade(&app, &id, &[("x-forwarded-for", "198.51.100.7")]).await, Err(429));
    assert_eq!(upgrade(&app, &id, &[("x-forwarded-for", "198.51.100.8")]).await, Ok(()));
}

#[tokio::test]
async fn a_socket_flooding_messages_gets_error_replies_then_1008() {
    let app = spawn_with(|c| {
        c.socket_rate = 1;
        c.socket_burst = 2;
    })
    .await;
    let id = app.register_id(None).await;
    let mut ws = WsClient::connect(&app, &id).await;
    ws.join("notifications").await; // one of two
    ws.send(json!(["1", "2", "notifications", "ping", {}])).await;
    assert_eq!(ws.next_event("phx_reply").await[4]["status"], "ok");
    for r in ["3", "4"] {
        ws.send(json!(["1", r, "notifications", "ping", {}])).await;
        let reply = ws.next_event("phx_reply").await;
        assert_eq!(reply[4], json!({"status": "error", "response": {"reason": "rate limited"}}));
    }
    ws.send(json!(["1", "5", "notifications", "ping", {}])).await;
    assert!(ws.next_frame().await.is_none(), "closed");
    let samples = scrape(&app).await;
    assert_eq!(get(&samples, "tako_messages_in_total{event=ping,outcome=rate_limited}"), 3.0);
}

async fn register_from(app: &TestApp, ip: &str) -> u16 {
    let body = json!({"data": {"type": "user", "attributes": {}}}).to_string();
    app.client
        .post(app.url("/api/json/accounts/users"))
        .bearer_auth(CLIENT)
        .header("content-type", "application/vnd.api+json")
        .header("x-forwarded-for", ip)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn registrations_per_address_are_rate_limited() {
    let app = spawn_with(|c| {
        c.registrations_per_minute = 2;
        c.trust_proxy = channels::TrustedProxies::Hops(1);
    })
    .await;
    assert_eq!(register_from(&app, "203.0.113.5").await, 201);
    assert_eq!(register_from(&app, "203.0.113.5").await, 201);
    let body = json!({"data": {"type": "user", "attributes": {}}}).to_string();
    let refused = app
        .client
        .post(app.url("/api/json/accounts/users"))
        .bearer_auth(CLIENT)
        .header("content-type", "application/vnd.api+json")
        .header("x-forwarded-for", "203.0.113.5")
        .body(body)
        .send()
        .await
        .unwrap();
    let retry_after: u64 = refused.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_error(refused, 429, "rate_limited").await;
    assert_eq!(register_from(&app, "203.0.113.6").await, 201, "another address has its own budget");
    let samples = scrape(&app).await;
    assert_eq!(get(&samples, "tako_rate_limited_total{name=registrations}"), 1.0);

    // Without TAKO_TRUST_PROXY the header is ignored: every request here comes from loopback,
    // which is never limited.
    let untrusting = spawn_with(|c| c.registrations_per_minute = 1).await;
    for _ in 0..3 {
        assert_eq!(register_from(&untrusting, "203.0.113.5").await, 201);
    }
}

#[tokio::test]
async fn operators_find_users_by_nickname() {
    for backend in backends() {
        let app = TestApp::spawn_with(backend, |c| {
            c.api_token = Some(CLIENT.into());
            c.admin_token = Some(ADMIN.into());
        })
        .await;
        let kfp = app.register_id(Some("Cruel_KFP")).await;
        app.register_id(Some("kfp_fan")).await;
        app.register_id(Some("Other")).await;
        let search = |q: &str| {
            app.client.get(app.url(&format!("/api/users/search?{q}"))).bearer_auth(ADMIN).send()
        };
        let found: Value = search("nickname=kfp").await.unwrap().json().await.unwrap();
        let names: Vec<&str> = found["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["nickname"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["Cruel_KFP", "kfp_fan"]);
        assert_eq!(found["data"][0]["id"], kfp.as_str());
        // `_` is a letter here, not a LIKE wildcard.
        let underscore: Value = search("nickname=l_K").await.unwrap().json().await.unwrap();
        assert_eq!(underscore["data"].as_array().unwrap().len(), 1);
        let none: Value = search("nickname=%25").await.unwrap().json().await.unwrap();
        assert_eq!(none["data"], json!([]));
        assert_error(search("limit=5").await.unwrap(), 400, "invalid_query").await;
        assert_error(search("nickname=kfp&limit=0").await.unwrap(), 400, "invalid_query").await;
        let as_client = app
            .client
            .get(app.url("/api/users/search?nickname=kfp"))
            .bearer_auth(CLIENT)
            .send()
            .await
            .unwrap();
        assert_error(as_client, 403, "forbidden").await;
        app.stop().await;
    }
}
