//! Presence over real WebSockets: what each client sees, and that presences leave with their
//! channel, their socket, or a socket that went silent.

mod common;

use std::time::Duration;

use channels::EndpointConfig;
use common::*;
use serde_json::{json, Value};

fn config() -> EndpointConfig {
    EndpointConfig { presence_interval: Duration::from_millis(20), ..EndpointConfig::default() }
}

async fn join_present(client: &mut Client, topic: &str, join_ref: &str, key: &str) -> Value {
    client.send(json!([join_ref, join_ref, topic, "phx_join", {"presence": key}])).await;
    assert_eq!(client.json().await, ok_reply(join_ref, join_ref, topic, json!({"joined": topic})));
    let state = client.json().await;
    assert_eq!(state[3], "presence_state", "presence_state follows the join reply: {state}");
    assert_eq!(state[2], topic);
    state[4].clone()
}

/// Reads frames until a presence_diff, skipping nothing else silently.
async fn diff(client: &mut Client) -> Value {
    let frame = client.json().await;
    assert_eq!(frame[3], "presence_diff", "{frame}");
    frame[4].clone()
}

fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
    k.sort();
    k
}

#[tokio::test]
async fn joiners_get_state_and_everyone_gets_joins_and_leaves() {
    let server = Server::start_with(config()).await;
    let mut alice = server.v2("name=alice").await;
    let state = join_present(&mut alice, "room:p", "1", "alice").await;
    // The state as of the last flush; alice's own join comes in the next diff.
    assert!(state.as_object().unwrap().get("bob").is_none());
    let d = diff(&mut alice).await;
    assert_eq!(keys(&d["joins"]), vec!["alice"]);
    let alice_ref = d["joins"]["alice"]["metas"][0]["phx_ref"].clone();
    assert!(alice_ref.is_string());
    assert_eq!(d["joins"]["alice"]["metas"][0]["name"], "alice");

    let mut bob = server.v2("name=bob").await;
    let state = join_present(&mut bob, "room:p", "7", "bob").await;
    assert_eq!(state, json!({"alice": {"metas": [{"name": "alice", "phx_ref": alice_ref}]}}));
    let d = diff(&mut alice).await;
    assert_eq!(keys(&d["joins"]), vec!["bob"]);
    assert_eq!(d["leaves"], json!({}));
    assert_eq!(keys(&diff(&mut bob).await["joins"]), vec!["bob"]);

    // A leave: bob's presence goes with his channel.
    bob.send(json!(["7", "8", "room:p", "phx_leave", {}])).await;
    assert_eq!(bob.json().await, ok_reply("7", "8", "room:p", json!({})));
    let d = diff(&mut alice).await;
    assert_eq!(keys(&d["leaves"]), vec!["bob"]);
    assert_eq!(d["joins"], json!({}));
    assert_eq!(keys(&server.endpoint.hub().presence_list("room:p")), vec!["alice"]);
}

#[tokio::test]
async fn two_connections_of_one_key_are_two_metas() {
    let server = Server::start_with(config()).await;
    let mut tab1 = server.v2("name=t1").await;
    let mut tab2 = server.v2("name=t2").await;
    join_present(&mut tab1, "room:k", "1", "same").await;
    join_present(&mut tab2, "room:k", "1", "same").await;
    let hub = server.endpoint.hub();
    server
        .eventually("two metas", || hub.presence_list("room:k")["same"]["metas"].as_array().map_or(0, Vec::len) == 2)
        .await;
    drop(tab1);
    server
        .eventually("one meta left", || hub.presence_list("room:k")["same"]["metas"].as_array().map_or(0, Vec::len) == 1)
        .await;
    assert_eq!(hub.presence_list("room:k")["same"]["metas"][0]["name"], "t2");
    tab2.heartbeat("h").await;
}

#[tokio::test]
async fn a_closed_socket_leaves_and_watchers_see_it() {
    let server = Server::start_with(config()).await;
    let mut watcher = server.v2("name=w").await;
    join_present(&mut watcher, "room:c", "1", "w").await;
    diff(&mut watcher).await;
    let mut gone = server.v2("name=g").await;
    join_present(&mut gone, "room:c", "1", "g").await;
    assert_eq!(keys(&diff(&mut watcher).await["joins"]), vec!["g"]);
    drop(gone); // TCP closed without a close frame
    let d = diff(&mut watcher).await;
    assert_eq!(keys(&d["leaves"]), vec!["g"]);
}

#[tokio::test]
async fn a_silent_socket_leaves_within_the_heartbeat_timeout() {
    let server = Server::start_with(EndpointConfig {
        heartbeat_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let mut silent = server.v2("name=s").await;
    join_present(&mut silent, "room:h", "1", "s").await;
    let hub = server.endpoint.hub();
    assert!(hub.presence_list("room:h").get("s").is_some());
    let started = std::time::Instant::now();
    server.eventually("the silent socket left", || hub.presence_list("room:h").get("s").is_none()).await;
    assert!(started.elapsed() < Duration::from_millis(1000), "left after {:?}", started.elapsed());
}

#[tokio::test]
async fn untrack_failed_track_and_rejoin() {
    let server = Server::start_with(config()).await;
    let mut c = server.v2("name=c").await;
    join_present(&mut c, "room:u", "1", "c").await;
    diff(&mut c).await;
    c.send(json!(["1", "2", "room:u", "track_bad", {}])).await;
    assert_eq!(
        c.json().await,
        error_reply(Some("1"), "2", "room:u", json!({"reason": "presence meta must be a JSON object"}))
    );
    c.send(json!(["1", "3", "room:u", "untrack", {}])).await;
    assert_eq!(keys(&diff(&mut c).await["leaves"]), vec!["c"]);
    // A duplicate join replaces the channel (its presence leaves with it): one meta, never two.
    c.send(json!(["4", "4", "room:u", "phx_join", {"presence": "c"}])).await;
    assert_eq!(c.json().await, json!(["1", "1", "room:u", "phx_close", {}]));
    assert_eq!(c.json().await, ok_reply("4", "4", "room:u", json!({"joined": "room:u"})));
    assert_eq!(c.json().await[3], "presence_state");
    let hub = server.endpoint.hub();
    server
        .eventually("one meta", || hub.presence_list("room:u")["c"]["metas"].as_array().map_or(0, Vec::len) == 1)
        .await;
    // Leaving after an untrack is still clean.
    c.send(json!(["4", "5", "room:u", "phx_leave", {}])).await;
    server.eventually("gone", || hub.presence_list("room:u").get("c").is_none()).await;
}

#[tokio::test]
async fn updating_a_users_presence_reaches_everyone() {
    let server = Server::start_with(config()).await;
    let mut u = server.v2("name=u&user=42").await;
    join_present(&mut u, "room:n", "1", "h42").await;
    let first = diff(&mut u).await["joins"]["h42"]["metas"][0].clone();
    let hub = server.endpoint.hub();
    let patch = json!({"name": "renamed"});
    assert_eq!(hub.presence_update_user("42", patch.as_object().unwrap()), 1);
    let d = diff(&mut u).await;
    assert_eq!(d["leaves"]["h42"]["metas"][0], first);
    let new = &d["joins"]["h42"]["metas"][0];
    assert_eq!(new["name"], "renamed");
    assert_eq!(new["phx_ref_prev"], first["phx_ref"]);
    assert_ne!(new["phx_ref"], first["phx_ref"]);
}
