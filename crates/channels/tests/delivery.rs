//! Server-side delivery and lifecycle: the hub's indexes, slow consumers, disconnect, shutdown.

mod common;

use std::time::Duration;

use channels::{EndpointConfig, Payload, TopicMatch};
use common::*;
use serde_json::json;

#[tokio::test]
async fn send_to_user_reaches_only_that_users_matching_subscriptions() {
    let server = Server::start().await;
    let hub = server.endpoint.hub();
    let mut alice1 = server.v2("user=alice").await;
    let mut alice2 = server.v1("user=alice").await;
    let mut bob = server.v2("user=bob").await;
    let mut nobody = server.v2("").await;
    alice1.join("room:a", "1").await;
    alice1.join("room:b", "2").await;
    alice1.join("echo", "3").await;
    alice2.send(json!({"topic": "room:a", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"})).await;
    alice2.json().await;
    bob.join("room:a", "1").await;
    nobody.join("room:a", "1").await;

    let n = hub.send_to_user(
        "alice",
        TopicMatch::Prefix("room:".into()),
        "note",
        json!({"k": 1}).into(),
    );
    assert_eq!(n, 3);
    let mut got = vec![alice1.json().await, alice1.json().await];
    got.sort_by_key(|v| v[2].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        vec![
            json!([null, null, "room:a", "note", {"k": 1}]),
            json!([null, null, "room:b", "note", {"k": 1}])
        ]
    );
    assert_eq!(alice2.json().await["event"], json!("note"));
    alice1.heartbeat("h").await; // nothing on "echo"
    bob.heartbeat("h").await;
    nobody.heartbeat("h").await;

    assert_eq!(
        hub.send_to_user("alice", TopicMatch::Exact("echo".into()), "e", json!(2).into()),
        1
    );
    assert_eq!(alice1.json().await, json!([null, null, "echo", "e", 2]));
    assert_eq!(hub.send_to_user("carol", TopicMatch::Any, "e", json!(2).into()), 0);

    // the index follows leaves and closes
    alice1.send(json!(["1", "9", "room:a", "phx_leave", {}])).await;
    alice1.json().await;
    alice1.json().await;
    assert_eq!(
        hub.send_to_user("alice", TopicMatch::Exact("room:a".into()), "e", json!(3).into()),
        1
    );
    drop(alice2);
    server
        .eventually("alice2 gone", || {
            hub.send_to_user("alice", TopicMatch::Exact("room:a".into()), "e", json!(4).into()) == 0
        })
        .await;
}

#[tokio::test]
async fn broadcast_matching_prefix_and_any() {
    let server = Server::start().await;
    let hub = server.endpoint.hub();
    let mut a = server.v2("").await;
    let mut b = server.v2("").await;
    a.join("room:1", "1").await;
    b.join("echo", "1").await;
    hub.broadcast_matching(TopicMatch::Prefix("room:".into()), "ping", json!({}).into());
    assert_eq!(a.json().await, json!([null, null, "room:1", "ping", {}]));
    b.heartbeat("h").await;
    hub.broadcast_matching(TopicMatch::Any, "ping", json!(1).into());
    assert_eq!(a.json().await, json!([null, null, "room:1", "ping", 1]));
    assert_eq!(b.json().await, json!([null, null, "echo", "ping", 1]));
}

#[tokio::test]
async fn disconnect_closes_every_socket_with_that_id() {
    let server = Server::start().await;
    let hub = server.endpoint.hub();
    let mut one = server.v2("id=1").await;
    let mut one_again = server.v1("id=1").await;
    let mut two = server.v2("id=2").await;
    one.join("room:a", "1").await;
    server.eventually("3 sockets", || hub.socket_count() == 3).await;
    assert_eq!(hub.disconnect("user_socket:1"), 2);
    assert_eq!(one.close_code().await, 1000);
    assert_eq!(one_again.close_code().await, 1000);
    two.heartbeat("h").await;
    server.log.wait_for("terminate room:a 1").await;
    server.eventually("one socket left", || hub.socket_count() == 1).await;
    assert_eq!(hub.disconnect("user_socket:1"), 0);
    assert_eq!(hub.subscriber_count("room:a"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_without_blocking_others() {
    let server =
        Server::start_with(EndpointConfig { outbound_queue: 4, ..Default::default() }).await;
    let hub = server.endpoint.hub();
    let mut slow = server.v2("").await;
    let mut fast = server.v2("").await;
    slow.join("room:big", "1").await;
    fast.join("room:fast", "1").await;
    // `slow` stops reading; big broadcasts fill its TCP buffers, then its queue.
    let chunk = "x".repeat(64 * 1024);
    let started = std::time::Instant::now();
    for i in 0..400 {
        hub.broadcast("room:big", "blob", json!({"i": i, "pad": chunk}).into());
        if hub.slow_consumer_disconnects() > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(started.elapsed() < Duration::from_secs(5), "broadcasting must not block");
    server.eventually("slow consumer counted", || hub.slow_consumer_disconnects() == 1).await;
    server.eventually("slow socket removed", || hub.subscriber_count("room:big") == 0).await;
    fast.heartbeat("h").await;
    assert_eq!(hub.socket_count(), 1);
    // what the slow client eventually reads ends with the server's close (1013), unless the
    // close frame itself could not be written in time, in which case the connection is dropped
    let end = slow.ended().await;
    assert!(end.is_none() || end == Some(1013), "unexpected close {end:?}");
}

/// A confirmed push to a client that stopped reading stays unconfirmed; withdrawing it closes
/// that socket and resolves to the truth: not written, and never written afterwards (the
/// exactly-once guarantee of a sender that gives up after a deadline).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_withdrawn_push_is_never_written_later() {
    let server = Server::start_with(EndpointConfig {
        outbound_queue: 100_000,
        outbound_queue_bytes: 256 * 1024 * 1024,
        ..Default::default()
    })
    .await;
    let hub = server.endpoint.hub();
    let mut stalled = server.v2("user=alice").await;
    stalled.join("room:a", "1").await;
    // The client reads no more: 64 MiB of broadcasts fill the kernel's buffers both ways.
    let chunk = "x".repeat(64 * 1024);
    for i in 0..1024 {
        hub.broadcast("room:a", "blob", json!({"i": i, "pad": chunk}).into());
    }
    let delivery = hub.send_to_user_confirmed(
        "alice",
        TopicMatch::Exact("room:a".into()),
        "msg",
        json!({"m": 1}).into(),
    );
    assert_eq!(delivery.pending(), 1);
    let waited = tokio::time::timeout(Duration::from_millis(300), delivery.outcome()).await;
    assert!(waited.is_err(), "a client that does not read cannot have taken it");

    let (closed, outcome) = hub.withdraw(delivery);
    assert_eq!(closed, 1);
    let written = tokio::time::timeout(Duration::from_secs(5), outcome).await.expect("resolves");
    assert!(!written);
    assert_eq!(hub.slow_consumer_disconnects(), 1);
    // Whatever the client reads now, the withdrawn push is not in it.
    let (texts, _) = stalled.drain().await;
    assert!(texts.iter().all(|t| !t.contains("\"msg\"")), "the withdrawn push arrived");
}

/// Withdrawing a push a socket already wrote closes nothing and says it was written.
#[tokio::test]
async fn withdrawing_a_written_push_changes_nothing() {
    let server = Server::start().await;
    let hub = server.endpoint.hub();
    let mut alice = server.v2("user=alice").await;
    alice.join("room:a", "1").await;
    let delivery = hub.send_to_user_confirmed(
        "alice",
        TopicMatch::Exact("room:a".into()),
        "msg",
        json!({"m": 1}).into(),
    );
    assert_eq!(alice.json().await, json!([null, null, "room:a", "msg", {"m": 1}]));
    assert!(tokio::time::timeout(Duration::from_secs(5), delivery.outcome()).await.unwrap());
    let (closed, outcome) = hub.withdraw(delivery);
    assert_eq!(closed, 0);
    assert!(outcome.await);
    alice.heartbeat("h").await;
}

#[tokio::test]
async fn shutdown_closes_with_1001_and_refuses_new_sockets() {
    let server = Server::start_with(EndpointConfig {
        shutdown_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .await;
    let mut a = server.v2("").await;
    let mut b = server.v1("").await;
    a.join("room:a", "1").await;
    b.heartbeat_v1("h").await;
    let endpoint = server.endpoint.clone();
    let shutdown = tokio::spawn(async move { endpoint.shutdown().await });
    assert_eq!(a.close_code().await, 1001);
    assert_eq!(b.close_code().await, 1001);
    tokio::time::timeout(WAIT, shutdown).await.expect("shutdown hung").unwrap();
    assert_eq!(server.endpoint.hub().socket_count(), 0);
    server.log.wait_for("terminate room:a 1").await;
    assert_eq!(refused_status(&server.url("vsn=2.0.0&token=ok")).await, 503);
}

#[tokio::test]
async fn shutdown_returns_after_timeout_when_a_client_never_answers_close() {
    let server = Server::start_with(EndpointConfig {
        shutdown_timeout: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let _client = server.v2("").await; // never reads: the close handshake never completes
    server.eventually("socket registered", || server.endpoint.hub().socket_count() == 1).await;
    let started = std::time::Instant::now();
    server.endpoint.shutdown().await;
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn counts_follow_joins_leaves_and_closes() {
    let server = Server::start().await;
    let hub = server.endpoint.hub();
    let mut a = server.v2("").await;
    let mut b = server.v2("").await;
    a.join("room:c", "1").await;
    b.join("room:c", "1").await;
    assert_eq!(hub.subscriber_count("room:c"), 2);
    b.send(json!(["1", "2", "room:c", "phx_leave", {}])).await;
    b.json().await;
    b.json().await;
    assert_eq!(hub.subscriber_count("room:c"), 1);
    drop(a);
    server
        .eventually("a gone", || hub.subscriber_count("room:c") == 0 && hub.socket_count() == 1)
        .await;
    server.log.wait_for("terminate room:c 1").await;
}

#[tokio::test]
async fn binary_broadcast_from_the_hub_skips_v1_but_reaches_v2() {
    let server = Server::start().await;
    let hub = server.endpoint.hub();
    let mut v2 = server.v2("").await;
    let mut v1 = server.v1("").await;
    v2.join("room:b", "1").await;
    v1.send(
        json!({"topic": "room:b", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}),
    )
    .await;
    v1.json().await;
    hub.broadcast("room:b", "bin", Payload::Binary(bytes::Bytes::from_static(b"\x07")));
    assert_eq!(&v2.binary().await[..], b"\x02\x06\x03room:bbin\x07");
    v1.heartbeat_v1("h").await;
}

#[tokio::test]
async fn a_panicking_channel_loses_its_socket_but_not_the_server() {
    let server = Server::start().await;
    let hub = server.endpoint.hub();
    let mut doomed = server.v2("user=u&id=1").await;
    let mut other = server.v2("").await;
    doomed.join("room:p", "1").await;
    other.join("room:p", "1").await;
    doomed.send(json!(["1", "2", "room:p", "panic", {}])).await;
    assert_eq!(doomed.ended().await, None);
    server
        .eventually("indexes cleaned", || {
            hub.socket_count() == 1 && hub.subscriber_count("room:p") == 1
        })
        .await;
    assert_eq!(hub.send_to_user("u", TopicMatch::Any, "e", json!(1).into()), 0);
    other.heartbeat("h").await;
}
