//! The LongPoll transport over real HTTP: the token dance, poll windows, POST batches, 410 for
//! gone sessions, 403 for refused connects, CORS, expiry and shutdown.

mod common;

use std::time::Duration;

use base64::Engine;
use channels::EndpointConfig;
use common::*;
use serde_json::{json, Value};

fn config() -> EndpointConfig {
    EndpointConfig {
        longpoll_window: Duration::from_millis(300),
        heartbeat_timeout: Duration::from_secs(5),
        presence_interval: Duration::from_millis(10),
        ..EndpointConfig::default()
    }
}

struct Lp {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Lp {
    fn url(server: &Server) -> String {
        format!("http://{}/socket/longpoll", server.addr)
    }

    /// Starts a session the way the npm client does: connect params, no session token.
    async fn open(server: &Server, params: &str) -> Lp {
        let http = reqwest::Client::new();
        let base = format!("{}?{params}", Lp::url(server));
        let body = get(&http, &base).await;
        assert_eq!(body["status"], 410, "{body}");
        assert_eq!(body["messages"], json!([]));
        let token = body["token"].as_str().expect("a token").to_owned();
        Lp { http, base, token }
    }

    fn with_token(&self) -> String {
        format!("{}&token={}", self.base, self.token)
    }

    async fn poll(&self) -> Value {
        get(&self.http, &self.with_token()).await
    }

    /// Polls until at least `n` messages came (each parsed as JSON), failing after WAIT.
    async fn messages(&self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while out.len() < n {
            assert!(tokio::time::Instant::now() < deadline, "only got {out:?}");
            let body = self.poll().await;
            match body["status"].as_u64() {
                Some(200) => {
                    assert_eq!(body["token"], json!(self.token));
                    for m in body["messages"].as_array().unwrap() {
                        out.push(serde_json::from_str(m.as_str().unwrap()).unwrap());
                    }
                }
                Some(204) => {}
                other => panic!("unexpected poll status {other:?}: {body}"),
            }
        }
        out
    }

    async fn post(&self, body: &str) -> Value {
        post(&self.http, &self.with_token(), body, None).await
    }

    async fn post_ndjson(&self, lines: &[&str]) -> Value {
        post(&self.http, &self.with_token(), &lines.join("\n"), Some("application/x-ndjson")).await
    }
}

async fn get(http: &reqwest::Client, url: &str) -> Value {
    let res = http.get(url).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    res.json().await.unwrap()
}

async fn post(http: &reqwest::Client, url: &str, body: &str, content_type: Option<&str>) -> Value {
    let mut req = http.post(url).body(body.to_owned());
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn token_dance_join_and_messages() {
    let server = Server::start_with(config()).await;
    let lp = Lp::open(&server, "vsn=2.0.0&token=ok&name=poller").await;
    assert!(lp.token.len() >= 22, "128 random bits at least");
    // Nothing yet: the poll window passes and the answer is 204.
    let started = std::time::Instant::now();
    let body = lp.poll().await;
    assert_eq!(body, json!({"status": 204, "token": lp.token, "messages": []}));
    assert!(started.elapsed() >= Duration::from_millis(250), "held for the window");

    assert_eq!(lp.post(r#"["1","1","room:lp","phx_join",{}]"#).await, json!({"status": 200}));
    assert_eq!(
        lp.messages(1).await,
        vec![ok_reply("1", "1", "room:lp", json!({"joined": "room:lp"}))]
    );

    // A batch, answered in order.
    let batch = [
        r#"[null,"2","phoenix","heartbeat",{}]"#,
        r#"["1","3","room:lp","echo",{"n":1}]"#,
        r#"["1","4","room:lp","whoami",{}]"#,
    ];
    assert_eq!(lp.post_ndjson(&batch).await, json!({"status": 200}));
    let got = lp.messages(3).await;
    assert_eq!(
        got[0],
        json!([null, "2", "phoenix", "phx_reply", {"status": "ok", "response": {}}])
    );
    assert_eq!(got[1], ok_reply("1", "3", "room:lp", json!({"n": 1})));
    assert_eq!(got[2][4]["response"]["name"], "poller");
    assert_eq!(got[2][4]["response"]["has_peer"], true);

    // A WebSocket client's broadcast reaches the poller.
    let mut ws = server.v2("").await;
    ws.join("room:lp", "9").await;
    ws.send(json!(["9", "10", "room:lp", "shout", {"hi": "all"}])).await;
    assert_eq!(lp.messages(1).await, vec![json!([null, null, "room:lp", "shout", {"hi": "all"}])]);
    assert_eq!(server.endpoint.longpoll_sessions(), 1);
}

#[tokio::test]
async fn a_held_poll_is_answered_as_soon_as_a_message_arrives() {
    let server =
        Server::start_with(EndpointConfig { longpoll_window: Duration::from_secs(3), ..config() })
            .await;
    let lp = Lp::open(&server, "vsn=2.0.0&token=ok").await;
    lp.post(r#"["1","1","room:hold","phx_join",{}]"#).await;
    lp.messages(1).await;
    let hub = server.endpoint.hub();
    let poll = tokio::spawn({
        let (http, url) = (lp.http.clone(), lp.with_token());
        async move { get(&http, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    hub.broadcast("room:hold", "news", channels::Payload::Json(json!({"n": 1})));
    let body = poll.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(body["status"], 200);
    assert_eq!(body["messages"], json!([r#"[null,null,"room:hold","news",{"n":1}]"#]));
}

#[tokio::test]
async fn refused_connect_is_403_and_unknown_sessions_are_410() {
    let server = Server::start_with(config()).await;
    let http = reqwest::Client::new();
    let url = Lp::url(&server);
    assert_eq!(get(&http, &format!("{url}?vsn=2.0.0&token=nope")).await, json!({"status": 403}));
    assert_eq!(get(&http, &format!("{url}?vsn=2.0.0")).await, json!({"status": 403}));
    // POST to a session that does not exist (or never did).
    assert_eq!(
        post(&http, &format!("{url}?vsn=2.0.0&token=forged"), "[]", None).await,
        json!({"status": 410})
    );
    assert_eq!(post(&http, &format!("{url}?vsn=2.0.0"), "[]", None).await, json!({"status": 410}));
    // An unsupported vsn is a plain 400.
    let res = http.get(format!("{url}?vsn=9.9.9&token=ok")).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": 400}));
    // Other methods.
    let res = http.put(format!("{url}?vsn=2.0.0&token=ok")).send().await.unwrap();
    assert_eq!(res.status(), 400);
}

#[tokio::test]
async fn auth_token_header_and_stale_tokens() {
    let server = Server::start_with(config()).await;
    let http = reqwest::Client::new();
    let url = format!("{}?vsn=2.0.0", Lp::url(&server));
    let res = http.get(&url).header("x-phoenix-authtoken", "ok").send().await.unwrap();
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["status"], 410);
    let token = body["token"].as_str().unwrap().to_owned();
    let lp = Lp { http: http.clone(), base: url.clone(), token };
    lp.post(r#"["1","1","room:t","phx_join",{}]"#).await;
    lp.post(r#"["1","2","room:t","whoami",{}]"#).await;
    let got = lp.messages(2).await;
    assert_eq!(got[1][4]["response"]["via_token"], true);
    // A refused header token is 403.
    let res = http.get(&url).header("x-phoenix-authtoken", "nope").send().await.unwrap();
    assert_eq!(res.json::<Value>().await.unwrap(), json!({"status": 403}));
    // A stale token starts a new session (as Phoenix does); the client sees 410.
    let body = get(&http, &format!("{url}&token=ok&token=stale")).await;
    assert_eq!(body["status"], 410);
    assert_ne!(body["token"], json!(lp.token));
}

#[tokio::test]
async fn cors_preflight() {
    let server = Server::start_with(config()).await;
    let res = reqwest::Client::new()
        .request(reqwest::Method::OPTIONS, Lp::url(&server))
        .header("origin", "https://holoquest.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type, x-phoenix-authtoken")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let h = res.headers();
    assert_eq!(h["access-control-allow-origin"], "*");
    assert_eq!(h["access-control-allow-headers"], "content-type, x-phoenix-authtoken");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
}

#[tokio::test]
async fn malformed_posts_never_break_the_session() {
    let server = Server::start_with(EndpointConfig { max_frame_bytes: 4096, ..config() }).await;
    let lp = Lp::open(&server, "vsn=2.0.0&token=ok").await;
    let bad = |body: String, ct: Option<&'static str>| {
        let (http, url) = (lp.http.clone(), lp.with_token());
        async move {
            let mut req = http.post(url).body(body);
            if let Some(ct) = ct {
                req = req.header("content-type", ct);
            }
            let res = req.send().await.unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        }
    };
    let ndjson = Some("application/x-ndjson");
    assert_eq!(bad("[1]\n".repeat(101), ndjson).await, (400, json!({"status": 400})));
    assert_eq!(bad("[1]\n%%%not-base64".into(), ndjson).await, (400, json!({"status": 400})));
    assert_eq!(bad(String::new(), None).await, (400, json!({"status": 400})));
    // Broken JSON gets the same answer as on a WebSocket: an error reply when a ref is readable.
    assert_eq!(lp.post(r#"[null,"5","room:x","phx_join"]"#).await, json!({"status": 200}));
    assert_eq!(lp.post("{not json").await, json!({"status": 200}));
    assert_eq!(lp.post(r#"["1","6","nowhere","evt",{}]"#).await, json!({"status": 200}));
    let got = lp.messages(2).await;
    assert_eq!(got[0], error_reply(None, "5", "room:x", json!({"reason": "malformed message"})));
    assert_eq!(
        got[1],
        error_reply(Some("1"), "6", "nowhere", json!({"reason": "unmatched topic"}))
    );
    // Binary frames travel base64 in both directions.
    lp.post(r#"["1","7","room:bin","phx_join",{}]"#).await;
    lp.messages(1).await;
    let push = binary_push("1", "8", "room:bin", "echo", &[0xde, 0xad]);
    let line = base64::engine::general_purpose::STANDARD.encode(&push);
    assert_eq!(lp.post_ndjson(&[&line]).await, json!({"status": 200}));
    let body = lp.poll().await;
    let reply = base64::engine::general_purpose::STANDARD
        .decode(body["messages"][0].as_str().unwrap())
        .unwrap();
    assert_eq!(reply[0], 1, "a binary reply");
    assert!(reply.ends_with(&[0xde, 0xad]));
    // A body over the limit ends the session, as a too-big frame closes a WebSocket.
    assert_eq!(bad("[".repeat(5000), None).await, (413, json!({"status": 413})));
    server.eventually("session gone", || server.endpoint.longpoll_sessions() == 0).await;
    assert_eq!(lp.post("[]").await, json!({"status": 410}));
}

#[tokio::test]
async fn an_abandoned_session_expires_and_its_presence_leaves() {
    let server = Server::start_with(EndpointConfig {
        heartbeat_timeout: Duration::from_millis(400),
        longpoll_window: Duration::from_secs(10),
        ..config()
    })
    .await;
    let lp = Lp::open(&server, "vsn=2.0.0&token=ok").await;
    lp.post(r#"["1","1","room:gone","phx_join",{"presence":"poller"}]"#).await;
    let got = lp.messages(2).await;
    assert_eq!(got[1][3], "presence_state");
    // Polling keeps it alive well past the heartbeat timeout: the window is clamped under it.
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(1000) {
        let body = lp.poll().await;
        assert!(matches!(body["status"].as_u64(), Some(200 | 204)), "{body}");
    }
    let presence = server.endpoint.presence();
    assert!(presence.list("room:gone").get("poller").is_some());
    // Nobody polls any more: the session expires, its channel terminates, its presence leaves.
    server.log.wait_for("terminate room:gone 1").await;
    assert!(presence.list("room:gone").get("poller").is_none());
    assert_eq!(server.endpoint.longpoll_sessions(), 0);
    assert_eq!(lp.post("[]").await, json!({"status": 410}));
}

#[tokio::test]
async fn shutdown_ends_sessions_and_refuses_new_ones() {
    let server =
        Server::start_with(EndpointConfig { longpoll_window: Duration::from_secs(3), ..config() })
            .await;
    let lp = Lp::open(&server, "vsn=2.0.0&token=ok").await;
    lp.post(r#"["1","1","room:s","phx_join",{}]"#).await;
    lp.messages(1).await;
    let held = tokio::spawn({
        let (http, url) = (lp.http.clone(), lp.with_token());
        async move { get(&http, &url).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    tokio::time::timeout(Duration::from_secs(2), server.endpoint.shutdown())
        .await
        .expect("shutdown waits for sessions");
    assert_eq!(held.await.unwrap()["status"], 204);
    server.log.wait_for("terminate room:s 1").await;
    let http = reqwest::Client::new();
    assert_eq!(
        get(&http, &format!("{}?vsn=2.0.0&token=ok", Lp::url(&server))).await,
        json!({"status": 500})
    );
    assert_eq!(lp.post("[]").await, json!({"status": 410}));
}

#[tokio::test]
async fn the_hub_disconnects_longpoll_sessions_too() {
    let server = Server::start_with(config()).await;
    let lp = Lp::open(&server, "vsn=2.0.0&token=ok&id=7").await;
    assert_eq!(server.endpoint.hub().disconnect("user_socket:7"), 1);
    server.eventually("session gone", || server.endpoint.longpoll_sessions() == 0).await;
    let body = lp.poll().await;
    assert_eq!(
        body["status"], 410,
        "a new session, which the client takes as: the old one is gone"
    );
}
