//! Admission and abuse limits: origin check, socket caps, per-socket inbound budget; each
//! with the path that passes and the one that is refused.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use channels::{CheckOrigin, EndpointConfig, InboundRate, Observer};
use common::*;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

async fn upgrade_status(url: &str, headers: &[(&str, &str)]) -> Result<(), u16> {
    let mut request = url.into_client_request().unwrap();
    for (k, v) in headers {
        request
            .headers_mut()
            .insert(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => Ok(()),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("unexpected error {other}"),
    }
}

fn longpoll_url(server: &Server) -> String {
    format!("http://{}/socket/longpoll?vsn=2.0.0&token=ok", server.addr)
}

#[tokio::test]
async fn origins_outside_the_list_get_403_on_websocket_and_longpoll() {
    let server = Server::start_with(EndpointConfig {
        check_origin: CheckOrigin::list(["https://quest.example.com", "//*.holo.test"]).unwrap(),
        ..Default::default()
    })
    .await;
    let url = server.url("vsn=2.0.0&token=ok");
    assert_eq!(upgrade_status(&url, &[("origin", "https://quest.example.com")]).await, Ok(()));
    assert_eq!(upgrade_status(&url, &[("origin", "https://booth.holo.test")]).await, Ok(()));
    assert_eq!(upgrade_status(&url, &[]).await, Ok(()), "no Origin: not from a browser page");
    assert_eq!(upgrade_status(&url, &[("origin", "https://evil.example")]).await, Err(403));
    assert_eq!(upgrade_status(&url, &[("origin", "http://quest.example.com")]).await, Err(403));

    let http = reqwest::Client::new();
    let ok = http
        .get(longpoll_url(&server))
        .header("origin", "https://a.holo.test")
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    assert_eq!(ok.json::<serde_json::Value>().await.unwrap()["status"], 410);
    let refused = http
        .get(longpoll_url(&server))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.json::<serde_json::Value>().await.unwrap()["status"], 403);
    let post = http
        .post(longpoll_url(&server))
        .header("origin", "https://evil.example")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 403);
}

#[tokio::test]
async fn the_node_cap_refuses_with_503_and_frees_places() {
    let server =
        Server::start_with(EndpointConfig { max_connections: Some(2), ..Default::default() }).await;
    let mut a = server.v2("").await;
    let mut b = server.v2("").await;
    a.heartbeat("1").await;
    b.heartbeat("1").await;
    assert_eq!(refused_status(&server.url("vsn=2.0.0&token=ok")).await, 503);
    let lp = reqwest::get(longpoll_url(&server))
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(lp["status"], 500, "LongPoll clients retry on 500");
    drop(a);
    server.eventually("a place is free", || server.endpoint.hub().socket_count() == 1).await;
    let mut c = Client::connect(&server.url("vsn=2.0.0&token=ok")).await;
    c.heartbeat("2").await;
}

#[tokio::test]
async fn one_address_may_hold_only_so_many_sockets() {
    let server = Server::start_with(EndpointConfig {
        max_connections_per_client: Some(1),
        trusted_proxies: channels::TrustedProxies::Hops(1),
        ..Default::default()
    })
    .await;
    let url = server.url("vsn=2.0.0&token=ok");
    let first = [("x-forwarded-for", "203.0.113.9")];
    let mut request = url.as_str().into_client_request().unwrap();
    request.headers_mut().insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
    let (_held, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(upgrade_status(&url, &first).await, Err(429));
    // Each forwarded address has its own count; loopback peers (a local proxy) none.
    assert_eq!(upgrade_status(&url, &[("x-forwarded-for", "203.0.113.10")]).await, Ok(()));
    let (mut a, mut b) = (server.v2("").await, server.v2("").await);
    a.heartbeat("1").await;
    b.heartbeat("1").await;
    // Without trust, X-Forwarded-For is ignored (and the peer here is loopback).
    let untrusting = Server::start_with(EndpointConfig {
        max_connections_per_client: Some(1),
        ..Default::default()
    })
    .await;
    let url = untrusting.url("vsn=2.0.0&token=ok");
    assert_eq!(upgrade_status(&url, &first).await, Ok(()));
    assert_eq!(upgrade_status(&url, &first).await, Ok(()));
}

#[derive(Default)]
struct Counting {
    refused: AtomicUsize,
    accepted: AtomicUsize,
}

impl Observer for Counting {
    fn inbound(&self, _event: &str, accepted: bool) {
        let counter = if accepted { &self.accepted } else { &self.refused };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

#[tokio::test]
async fn a_socket_over_its_budget_gets_error_replies_then_a_1008_close() {
    let observer = Arc::new(Counting::default());
    let server = Server::start_with(EndpointConfig {
        inbound_rate: Some(InboundRate { per_second: 1.0, burst: 3 }),
        observer: observer.clone(),
        ..Default::default()
    })
    .await;
    let mut c = server.v2("").await;
    c.join("room:1", "1").await;
    // The join used one; two more fit.
    for r in ["2", "3"] {
        c.send(json!(["1", r, "room:1", "echo", {"n": r}])).await;
        assert_eq!(c.json().await, ok_reply("1", r, "room:1", json!({"n": r})));
    }
    // Heartbeats are never counted.
    for r in ["h1", "h2", "h3", "h4", "h5"] {
        c.heartbeat(r).await;
    }
    for r in ["4", "5", "6"] {
        c.send(json!(["1", r, "room:1", "echo", {}])).await;
        assert_eq!(
            c.json().await,
            error_reply(Some("1"), r, "room:1", json!({"reason": "rate limited"}))
        );
    }
    c.send(json!(["1", "7", "room:1", "echo", {}])).await;
    assert_eq!(c.close_code().await, 1008);
    assert_eq!(observer.refused.load(Ordering::Relaxed), 4);
    assert!(observer.accepted.load(Ordering::Relaxed) >= 3 + 5);

    // Another socket has its own budget, and waiting refills it.
    let mut d = server.v2("").await;
    d.join("room:1", "1").await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for r in ["2", "3", "4"] {
        d.send(json!(["1", r, "room:1", "echo", {}])).await;
        assert_eq!(d.json().await, ok_reply("1", r, "room:1", json!({})));
    }
}
