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
    // The topic's first watcher: no diff was recorded for nobody, so its state is current and
    // holds alice herself.
    assert_eq!(keys(&state), vec!["alice"]);
    let alice_ref = state["alice"]["metas"][0]["phx_ref"].clone();
    assert!(alice_ref.is_string());
    assert_eq!(state["alice"]["metas"][0]["name"], "alice");

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
    assert_eq!(keys(&server.endpoint.presence().list("room:p")), vec!["alice"]);
}

#[tokio::test]
async fn two_connections_of_one_key_are_two_metas() {
    let server = Server::start_with(config()).await;
    let mut tab1 = server.v2("name=t1").await;
    let mut tab2 = server.v2("name=t2").await;
    join_present(&mut tab1, "room:k", "1", "same").await;
    join_present(&mut tab2, "room:k", "1", "same").await;
    let presence = server.endpoint.presence();
    server
        .eventually("two metas", || {
            presence.list("room:k")["same"]["metas"].as_array().map_or(0, Vec::len) == 2
        })
        .await;
    drop(tab1);
    server
        .eventually("one meta left", || {
            presence.list("room:k")["same"]["metas"].as_array().map_or(0, Vec::len) == 1
        })
        .await;
    assert_eq!(presence.list("room:k")["same"]["metas"][0]["name"], "t2");
    tab2.heartbeat("h").await;
}

#[tokio::test]
async fn a_closed_socket_leaves_and_watchers_see_it() {
    let server = Server::start_with(config()).await;
    let mut watcher = server.v2("name=w").await;
    join_present(&mut watcher, "room:c", "1", "w").await;
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
    let presence = server.endpoint.presence();
    assert!(presence.list("room:h").get("s").is_some());
    let started = std::time::Instant::now();
    server
        .eventually("the silent socket left", || presence.list("room:h").get("s").is_none())
        .await;
    assert!(started.elapsed() < Duration::from_millis(1000), "left after {:?}", started.elapsed());
}

#[tokio::test]
async fn untrack_failed_track_and_rejoin() {
    let server = Server::start_with(config()).await;
    let mut c = server.v2("name=c").await;
    join_present(&mut c, "room:u", "1", "c").await;
    c.send(json!(["1", "2", "room:u", "track_bad", {}])).await;
    assert_eq!(
        c.json().await,
        error_reply(
            Some("1"),
            "2",
            "room:u",
            json!({"reason": "presence meta must be a JSON object"})
        )
    );
    c.send(json!(["1", "3", "room:u", "untrack", {}])).await;
    assert_eq!(keys(&diff(&mut c).await["leaves"]), vec!["c"]);
    // A duplicate join replaces the channel (its presence leaves with it): one meta, never two.
    c.send(json!(["4", "4", "room:u", "phx_join", {"presence": "c"}])).await;
    assert_eq!(c.json().await, json!(["1", "1", "room:u", "phx_close", {}]));
    assert_eq!(c.json().await, ok_reply("4", "4", "room:u", json!({"joined": "room:u"})));
    assert_eq!(c.json().await[3], "presence_state");
    let presence = server.endpoint.presence();
    server
        .eventually("one meta", || {
            presence.list("room:u")["c"]["metas"].as_array().map_or(0, Vec::len) == 1
        })
        .await;
    // Leaving after an untrack is still clean.
    c.send(json!(["4", "5", "room:u", "phx_leave", {}])).await;
    server.eventually("gone", || presence.list("room:u").get("c").is_none()).await;
}

#[tokio::test]
async fn updating_a_users_presence_reaches_everyone() {
    let server = Server::start_with(config()).await;
    let mut u = server.v2("name=u&user=42").await;
    let first = join_present(&mut u, "room:n", "1", "h42").await["h42"]["metas"][0].clone();
    let presence = server.endpoint.presence();
    let patch = json!({"name": "renamed"});
    assert_eq!(presence.update_user("42", patch.as_object().unwrap()), 1);
    let d = diff(&mut u).await;
    assert_eq!(d["leaves"]["h42"]["metas"][0], first);
    let new = &d["joins"]["h42"]["metas"][0];
    assert_eq!(new["name"], "renamed");
    assert_eq!(new["phx_ref_prev"], first["phx_ref"]);
    assert_ne!(new["phx_ref"], first["phx_ref"]);
}

/// The engine's bound on a presence frame (`presence::MAX_FRAME_BYTES`).
const FRAME_LIMIT: usize = 16 * 1024;

/// A client's list, folded from `presence_state` and `presence_diff`s as the npm client's
/// presence.js does (`syncState` into an empty state, then `syncDiff`: joins, then leaves).
#[derive(Default)]
struct Fold(serde_json::Map<String, Value>);

impl Fold {
    fn state(&mut self, state: &Value) {
        assert!(self.0.is_empty(), "one state per join");
        self.0 = state.as_object().unwrap().clone();
    }

    fn diff(&mut self, diff: &Value) {
        let refs = |p: &Value| -> Vec<Value> {
            p["metas"].as_array().unwrap().iter().map(|m| m["phx_ref"].clone()).collect()
        };
        for (key, joined) in diff["joins"].as_object().unwrap() {
            let joined_refs = refs(joined);
            let mut metas: Vec<Value> = match self.0.get(key) {
                Some(current) => current["metas"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|m| !joined_refs.contains(&m["phx_ref"]))
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            metas.extend(joined["metas"].as_array().unwrap().iter().cloned());
            self.0.insert(key.clone(), json!({"metas": metas}));
        }
        for (key, left) in diff["leaves"].as_object().unwrap() {
            let Some(current) = self.0.get_mut(key) else { continue };
            let left_refs = refs(left);
            current["metas"].as_array_mut().unwrap().retain(|m| !left_refs.contains(&m["phx_ref"]));
            if current["metas"].as_array().unwrap().is_empty() {
                self.0.remove(key);
            }
        }
    }

    /// Comparable with the server's list: metas of a key in `phx_ref` order.
    fn normalized(list: &Value) -> Value {
        let mut out = serde_json::Map::new();
        for (key, p) in list.as_object().unwrap() {
            let mut metas = p["metas"].as_array().unwrap().clone();
            metas.sort_by(|a, b| a["phx_ref"].as_str().cmp(&b["phx_ref"].as_str()));
            out.insert(key.clone(), json!({"metas": metas}));
        }
        Value::Object(out)
    }
}

/// Every frame until the client has been idle for a while: (text length, message as JSON).
async fn drain(client: &mut Client) -> Vec<(usize, Value)> {
    let mut frames = Vec::new();
    while let Ok(message) = tokio::time::timeout(Duration::from_millis(300), client.next()).await {
        let tokio_tungstenite::tungstenite::Message::Text(text) = message else {
            panic!("unexpected {message:?}")
        };
        frames.push((text.len(), serde_json::from_str(text.as_str()).unwrap()));
    }
    frames
}

/// Another node's share of `count` presences (long nicknames), plus one key with so many metas
/// that they alone exceed a frame.
fn remote_share(prefix: &str, count: usize) -> Vec<channels::PresenceEntry> {
    let entry = |key: String, r: String| {
        channels::PresenceEntry {
        meta: json!({"nickname": format!("{key}, the long-nicknamed adventurer of the realm"), "online_at": 1_700_000_000_000u64, "phx_ref": r})
            .as_object()
            .unwrap()
            .clone(),
        key,
        node: 7,
    }
    };
    let mut entries: Vec<_> =
        (0..count).map(|i| entry(format!("{prefix}{i:05}"), format!("{prefix}-ref{i}"))).collect();
    entries.extend((0..300).map(|i| entry("crowd".into(), format!("{prefix}-crowd{i}"))));
    entries
}

/// (v1 or v2) joins `topic`, reads everything, and checks the frames are bounded and fold into
/// exactly the server's list. Returns the number of presence frames.
async fn join_and_fold(server: &Server, mut client: Client, topic: &str, v1: bool) -> usize {
    client.send(if v1 {
        json!({"topic": topic, "event": "phx_join", "payload": {"presence": "me"}, "ref": "1", "join_ref": "1"})
    } else {
        json!(["1", "1", topic, "phx_join", {"presence": "me"}])
    })
    .await;
    let frames = drain(&mut client).await;
    let event = |m: &Value| if v1 { m["event"].clone() } else { m[3].clone() };
    let payload = |m: &Value| if v1 { m["payload"].clone() } else { m[4].clone() };
    assert_eq!(event(&frames[0].1), "phx_reply");
    assert_eq!(event(&frames[1].1), "presence_state");
    let mut fold = Fold::default();
    for (len, message) in &frames[1..] {
        assert!(*len <= FRAME_LIMIT, "a {len}-byte presence frame");
        match event(message).as_str().unwrap() {
            "presence_state" => fold.state(&payload(message)),
            "presence_diff" => fold.diff(&payload(message)),
            other => panic!("unexpected {other}"),
        }
    }
    let list = server.endpoint.presence().list(topic);
    assert!(list.get("me").is_some());
    assert_eq!(
        Fold::normalized(&Value::Object(fold.0)),
        Fold::normalized(&list),
        "the folded list is the server's"
    );
    frames.len() - 1
}

#[tokio::test]
async fn a_big_state_arrives_in_bounded_frames_that_fold_into_the_whole_list() {
    let server = Server::start_with(config()).await;
    let presence = server.endpoint.presence();
    presence.merge(7, "room:big", remote_share("user", 3000)).unwrap();
    // Flushed: the joiners' state holds them all.
    tokio::time::sleep(Duration::from_millis(80)).await;
    let bytes = presence.list("room:big").to_string().len();
    assert!(bytes > 20 * FRAME_LIMIT, "{bytes}");
    let frames = join_and_fold(&server, server.v2("name=a").await, "room:big", false).await;
    assert!(frames > bytes / FRAME_LIMIT, "{frames} frames for {bytes} bytes");
    join_and_fold(&server, server.v1("name=b").await, "room:big", true).await;
    // An empty topic is still an (empty) state.
    join_and_fold(&server, server.v2("name=c").await, "room:empty", false).await;
}

#[tokio::test]
async fn a_big_diff_goes_out_as_bounded_diffs_leaves_first() {
    let server = Server::start_with(config()).await;
    let presence = server.endpoint.presence();
    let mut watcher = server.v2("name=w").await;
    join_and_fold(&server, server.v2("name=x").await, "room:d", false).await;
    watcher.send(json!(["1", "1", "room:d", "phx_join", {"feed": "full"}])).await;
    let mut fold = Fold::default();
    for (_, m) in drain(&mut watcher).await {
        match m[3].as_str().unwrap() {
            "presence_state" => fold.state(&m[4]),
            "presence_diff" => fold.diff(&m[4]),
            _ => {}
        }
    }
    let old = remote_share("old", 2000);
    presence.merge(7, "room:d", old.clone()).unwrap();
    for (len, m) in drain(&mut watcher).await {
        assert!(len <= FRAME_LIMIT, "a {len}-byte diff");
        fold.diff(&m[4]);
    }
    // Within one interval: half the old ones leave, 2000 new ones join, and one phx_ref leaves
    // and comes back with a new meta (a diff applies joins before leaves: it must leave first).
    let mut next: Vec<_> =
        old.iter().filter(|e| e.key.as_str() < "old01000" || e.key == "crowd").cloned().collect();
    next.extend(remote_share("new", 2000).into_iter().filter(|e| e.key != "crowd"));
    let back = next.iter().position(|e| e.key == "old00001").unwrap();
    let mut back = next.remove(back);
    presence.merge(7, "room:d", next.clone()).unwrap();
    back.meta.insert("nickname".into(), json!("came back renamed"));
    next.push(back);
    presence.merge(7, "room:d", next).unwrap();
    let frames = drain(&mut watcher).await;
    assert!(frames.len() > 2, "{} frames", frames.len());
    let mut joined = false;
    for (len, m) in &frames {
        assert!(*len <= FRAME_LIMIT, "a {len}-byte diff");
        assert_eq!(m[3], "presence_diff");
        let has = |side: &str| !m[4][side].as_object().unwrap().is_empty();
        assert!(!(joined && has("leaves")), "leaves come before joins");
        joined |= has("joins");
        fold.diff(&m[4]);
    }
    let list = presence.list("room:d");
    assert_eq!(list["old00001"]["metas"][0]["nickname"], "came back renamed");
    assert_eq!(Fold::normalized(&Value::Object(fold.0)), Fold::normalized(&list));
}

#[tokio::test]
async fn a_socket_that_asks_nothing_gets_no_presence_frame_yet_is_listed() {
    let server = Server::start_with(config()).await;
    let mut quiet = Vec::new();
    for i in 0..5 {
        let mut c = server.v2(&format!("name=q{i}")).await;
        c.send(
            json!(["1", "1", "room:q", "phx_join", {"presence": format!("q{i}"), "feed": "none"}]),
        )
        .await;
        assert_eq!(c.json().await, ok_reply("1", "1", "room:q", json!({"joined": "room:q"})));
        quiet.push(c);
    }
    let presence = server.endpoint.presence();
    assert_eq!(presence.count("room:q"), (5, 5));
    // A watcher still sees them, and their leaves.
    let mut watcher = server.v2("name=w").await;
    let state = join_present(&mut watcher, "room:q", "1", "w").await;
    assert_eq!(keys(&state), vec!["q0", "q1", "q2", "q3", "q4", "w"]);
    quiet.pop();
    assert_eq!(keys(&diff(&mut watcher).await["leaves"]), vec!["q4"]);
    for c in &mut quiet {
        c.assert_silent(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn count_watchers_get_a_small_count_event() {
    let server = Server::start_with(config()).await;
    let mut counter = server.v2("name=k").await;
    counter.send(json!(["1", "1", "room:k", "phx_join", {"feed": "count"}])).await;
    assert_eq!(counter.json().await, ok_reply("1", "1", "room:k", json!({"joined": "room:k"})));
    assert_eq!(
        counter.json().await,
        json!([null, null, "room:k", "presence_count", {"users": 0, "connections": 0}])
    );
    let mut others = Vec::new();
    for i in 0..3 {
        let mut c = server.v2(&format!("name=o{i}")).await;
        c.send(json!(["1", "1", "room:k", "phx_join", {"presence": "same", "feed": "none"}])).await;
        c.json().await;
        others.push(c);
    }
    // Coalesced: the final count within a second of the last join, a second between counts.
    let mut last: Option<std::time::Instant> = None;
    loop {
        let frame = counter.json().await;
        assert_eq!(frame[3], "presence_count", "{frame}");
        if let Some(last) = last {
            assert!(last.elapsed() >= Duration::from_millis(900), "two counts within a second");
        }
        last = Some(std::time::Instant::now());
        if frame[4] == json!({"users": 1, "connections": 3}) {
            break;
        }
    }
    // The count watcher gets no state nor diff.
    counter.assert_silent(Duration::from_millis(200)).await;
}
