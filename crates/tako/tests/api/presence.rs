//! Presence on the notifications topics, the admin presence route, and LongPoll through Tako.

use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Value};

use crate::helpers::{assert_error, update_body, Backend, TestApp, WsClient};

const ADMIN: &str = "admin-token";

/// The join payload of a client that shows who is online (the npm `Presence` class).
fn full() -> Value {
    json!({"presence": "full"})
}

async fn spawn() -> TestApp {
    TestApp::spawn_with(Backend::Sqlite, |c| {
        c.api_token = Some("client-token".into());
        c.admin_token = Some(ADMIN.into());
        c.presence_interval_ms = 10;
    })
    .await
}

async fn presence(app: &TestApp, topic: &str, token: &str) -> reqwest::Response {
    app.client
        .get(app.url(&format!("/api/presence/{topic}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

/// Folds presence_state and presence_diff frames as the npm client's Presence class does.
fn apply(state: &mut serde_json::Map<String, Value>, frame: &Value) {
    match frame[3].as_str() {
        Some("presence_state") => *state = frame[4].as_object().unwrap().clone(),
        Some("presence_diff") => {
            for (key, joined) in frame[4]["joins"].as_object().unwrap() {
                let entry = state.entry(key.clone()).or_insert_with(|| json!({"metas": []}));
                let metas = entry["metas"].as_array_mut().unwrap();
                for m in joined["metas"].as_array().unwrap() {
                    if !metas.iter().any(|x| x["phx_ref"] == m["phx_ref"]) {
                        metas.push(m.clone());
                    }
                }
            }
            for (key, left) in frame[4]["leaves"].as_object().unwrap() {
                if let Some(entry) = state.get_mut(key) {
                    let gone: Vec<&Value> =
                        left["metas"].as_array().unwrap().iter().map(|m| &m["phx_ref"]).collect();
                    entry["metas"]
                        .as_array_mut()
                        .unwrap()
                        .retain(|m| !gone.contains(&&m["phx_ref"]));
                    if entry["metas"].as_array().unwrap().is_empty() {
                        state.remove(key);
                    }
                }
            }
        }
        _ => {}
    }
}

/// Reads frames into `state` until `done` holds.
async fn until(
    ws: &mut WsClient,
    state: &mut serde_json::Map<String, Value>,
    done: impl Fn(&serde_json::Map<String, Value>) -> bool,
) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !done(state) {
            let frame = ws.next_frame().await.expect("socket open");
            apply(state, &frame);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("presence never got there: {state:?}"));
}

fn nicknames(state: &serde_json::Map<String, Value>) -> Vec<String> {
    let mut n: Vec<String> = state
        .values()
        .flat_map(|e| {
            e["metas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["nickname"].as_str().unwrap_or("").to_owned())
        })
        .collect();
    n.sort();
    n
}

#[tokio::test]
async fn joiners_are_listed_by_a_public_handle_and_nickname_changes_follow() {
    let app = spawn().await;
    let alice = app.register_id(Some("Alice")).await;
    let bob = app.register_id(Some("Bob")).await;
    let mut a = WsClient::connect(&app, &alice).await;
    a.join_with("notifications", full()).await;
    let first = a.next_frame().await.unwrap();
    assert_eq!(first[3], "presence_state", "presence_state right after the join reply");
    let mut seen_by_a = serde_json::Map::new();
    apply(&mut seen_by_a, &first);
    let mut b = WsClient::connect(&app, &bob).await;
    b.join_with("notifications", full()).await;
    let mut seen_by_b = serde_json::Map::new();
    until(&mut a, &mut seen_by_a, |s| s.len() == 2).await;
    until(&mut b, &mut seen_by_b, |s| s.len() == 2).await;
    assert_eq!(nicknames(&seen_by_a), vec!["Alice", "Bob"]);
    for (key, entry) in &seen_by_a {
        assert_eq!(key.len(), 24, "a 96-bit hex handle");
        assert!(!key.contains(&alice[..8]) && !key.contains(&bob[..8]));
        let meta = &entry["metas"][0];
        assert!(meta["online_at"].as_i64().unwrap() > 1_600_000_000_000);
        assert!(meta["phx_ref"].is_string());
    }
    let wire = serde_json::to_string(&seen_by_a).unwrap();
    assert!(!wire.contains(&alice) && !wire.contains(&bob), "no UUID on the wire");

    // The admin route lists the same, with counts; a second tab is a second meta of one user.
    let mut a2 = WsClient::connect(&app, &alice).await;
    a2.join("notifications").await;
    until(&mut b, &mut seen_by_b, |s| {
        s.values().map(|e| e["metas"].as_array().unwrap().len()).sum::<usize>() == 3
    })
    .await;
    let res = presence(&app, "notifications", ADMIN).await;
    assert_eq!(res.status(), 200);
    let list: Value = res.json().await.unwrap();
    assert_eq!(list["topic"], "notifications");
    assert_eq!(list["users"], 2);
    assert_eq!(list["connections"], 3);
    assert_eq!(list["presences"].as_object().unwrap().len(), 2);
    assert!(!list.to_string().contains(&alice));

    // A nickname change through the API: a leave of the old meta and a join of the new.
    let res = app
        .patch_json(
            &format!("/api/json/accounts/users/{alice}"),
            &update_body(json!({"nickname": "Alicia"})),
        )
        .await;
    assert_eq!(res.status(), 200);
    let diff = b.next_event("presence_diff").await;
    let (key, joined) = diff[4]["joins"].as_object().unwrap().iter().next().unwrap();
    assert_eq!(joined["metas"].as_array().unwrap().len(), 2, "both of alice's tabs");
    for m in joined["metas"].as_array().unwrap() {
        assert_eq!(m["nickname"], "Alicia");
        assert!(m["phx_ref_prev"].is_string());
    }
    assert_eq!(diff[4]["leaves"][key]["metas"].as_array().unwrap().len(), 2);
    apply(&mut seen_by_b, &diff);
    assert_eq!(nicknames(&seen_by_b), vec!["Alicia", "Alicia", "Bob"]);
    // Stamps only: presence unchanged.
    let res = app
        .patch_json(
            &format!("/api/json/accounts/users/{bob}"),
            &update_body(json!({"stamps_collected": 3})),
        )
        .await;
    assert_eq!(res.status(), 200);
    b.assert_no_event("presence_diff", 150).await;

    // Leaving: the tab's meta goes, the user stays while another tab is on.
    drop(a2);
    until(&mut b, &mut seen_by_b, |s| {
        s.values().map(|e| e["metas"].as_array().unwrap().len()).sum::<usize>() == 2
    })
    .await;
    drop(a);
    until(&mut b, &mut seen_by_b, |s| s.len() == 1).await;
    assert_eq!(nicknames(&seen_by_b), vec!["Bob"]);
    let list: Value = presence(&app, "notifications", ADMIN).await.json().await.unwrap();
    assert_eq!((list["users"].as_u64(), list["connections"].as_u64()), (Some(1), Some(1)));
    app.stop().await;
}

#[tokio::test]
async fn a_joiner_that_asks_nothing_gets_no_presence_frame_yet_is_listed() {
    let app = spawn().await;
    let mut quiet = Vec::new();
    for nick in ["Quinn", "Quade", "Quill"] {
        let id = app.register_id(Some(nick)).await;
        let mut ws = WsClient::connect(&app, &id).await;
        ws.join("notifications").await;
        quiet.push(ws);
    }
    let list: Value = presence(&app, "notifications", ADMIN).await.json().await.unwrap();
    assert_eq!((list["users"].as_u64(), list["connections"].as_u64()), (Some(3), Some(3)));
    // A watcher sees them all and their leaves; the quiet ones see nothing of it.
    let id = app.register_id(Some("Watcher")).await;
    let mut watcher = WsClient::connect(&app, &id).await;
    watcher.join_with("notifications", full()).await;
    let mut seen = serde_json::Map::new();
    until(&mut watcher, &mut seen, |s| s.len() == 4).await;
    quiet.pop();
    until(&mut watcher, &mut seen, |s| s.len() == 3).await;
    assert_eq!(nicknames(&seen), vec!["Quade", "Quinn", "Watcher"]);
    for ws in &mut quiet {
        ws.assert_no_event("presence_state", 100).await;
        ws.assert_no_event("presence_diff", 100).await;
        ws.assert_no_event("presence_count", 100).await;
    }
    app.stop().await;
}

#[tokio::test]
async fn a_count_joiner_gets_users_and_connections() {
    let app = spawn().await;
    let alice = app.register_id(Some("Alice")).await;
    let mut counter = WsClient::connect(&app, &alice).await;
    counter.join_with("notifications", json!({"presence": "count"})).await;
    let first = counter.next_event("presence_count").await;
    assert_eq!(first[4], json!({"users": 1, "connections": 1}));
    let bob = app.register_id(Some("Bob")).await;
    let mut tabs = Vec::new();
    for _ in 0..2 {
        let mut ws = WsClient::connect(&app, &bob).await;
        ws.join("notifications").await;
        tabs.push(ws);
    }
    let started = std::time::Instant::now();
    loop {
        let count = counter.next_event("presence_count").await;
        if count[4] == json!({"users": 2, "connections": 3}) {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_millis(2500));
    counter.assert_no_event("presence_diff", 100).await;
    app.stop().await;
}

#[tokio::test]
async fn an_unknown_presence_parameter_is_refused_with_a_reason() {
    let app = spawn().await;
    let id = app.register_id(Some("Odd")).await;
    let mut ws = WsClient::connect(&app, &id).await;
    for bad in [json!({"presence": "everything"}), json!({"presence": 1})] {
        let reply = ws.try_join("notifications", bad).await;
        assert_eq!(reply[4]["status"], "error");
        assert_eq!(reply[4]["response"]["reason"], r#"presence must be "full", "count" or "none""#);
    }
    let list: Value = presence(&app, "notifications", ADMIN).await.json().await.unwrap();
    assert_eq!(list["users"], 0, "a refused join is not tracked");
    ws.join_with("notifications", json!({"presence": "none"})).await;
    app.stop().await;
}

#[tokio::test]
async fn phoenix_mode_sends_the_list_to_joiners_that_ask_nothing() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.admin_token = Some(ADMIN.into());
        c.presence_interval_ms = 10;
        c.presence = tako::config::PresenceMode::Phoenix;
    })
    .await;
    let id = app.register_id(Some("Classic")).await;
    let mut ws = WsClient::connect(&app, &id).await;
    ws.join("notifications").await;
    let state = ws.next_event("presence_state").await;
    assert_eq!(state[4].as_object().unwrap().len(), 1);
    // Still free to opt out.
    let other = app.register_id(Some("Quiet")).await;
    let mut quiet = WsClient::connect(&app, &other).await;
    quiet.join_with("notifications", json!({"presence": "none"})).await;
    quiet.assert_no_event("presence_state", 200).await;
    let diff = ws.next_event("presence_diff").await;
    assert_eq!(diff[4]["joins"].as_object().unwrap().len(), 1);
    app.stop().await;
}

#[tokio::test]
async fn the_presence_route_is_for_operators_only() {
    let app = spawn().await;
    assert_error(presence(&app, "notifications", "client-token").await, 403, "forbidden").await;
    let res = app.client.get(app.url("/api/presence/notifications")).send().await.unwrap();
    assert_eq!(res.status(), 401);
    assert_error(presence(&app, "room:lobby", ADMIN).await, 404, "not_found").await;
    let empty: Value = presence(&app, "notifications:scans", ADMIN).await.json().await.unwrap();
    assert_eq!(
        empty,
        json!({"topic": "notifications:scans", "users": 0, "connections": 0, "presences": {}})
    );
    app.stop().await;
}

#[tokio::test]
async fn presence_can_be_switched_off_for_huge_events() {
    let app = TestApp::spawn_with(Backend::Sqlite, |c| {
        c.admin_token = Some(ADMIN.into());
        c.presence = tako::config::PresenceMode::Off;
    })
    .await;
    let id = app.register_id(Some("Quiet")).await;
    let mut ws = WsClient::connect(&app, &id).await;
    ws.join("notifications").await;
    ws.assert_no_event("presence_state", 300).await;
    let listed: Value = presence(&app, "notifications", ADMIN).await.json().await.unwrap();
    assert_eq!(listed["users"], 0);
    // Everything else works as before.
    ws.send(json!(["1", "5", "notifications", "collected", {"nickname": "Quiet"}])).await;
    assert_eq!(ws.next_event("collected-broadcast").await[4], json!({"nickname": "Quiet"}));
    app.stop().await;
}

#[tokio::test]
async fn longpoll_is_mounted_with_the_same_auth() {
    let app = spawn().await;
    let alice = app.register_id(Some("Alice")).await;
    let url = app.url("/socket/longpoll");
    let get = |q: String| {
        let client = app.client.clone();
        async move {
            client.request(Method::GET, q).send().await.unwrap().json::<Value>().await.unwrap()
        }
    };
    assert_eq!(
        get(format!("{url}?vsn=2.0.0&userToken=00000000-0000-4000-8000-000000000000")).await,
        json!({"status": 403})
    );
    let opened = get(format!("{url}?vsn=2.0.0&userToken={alice}")).await;
    assert_eq!(opened["status"], 410);
    let token = opened["token"].as_str().unwrap();
    let post = app
        .client
        .post(format!("{url}?vsn=2.0.0&userToken={alice}&token={token}"))
        .header("content-type", "application/x-ndjson")
        .body(r#"["1","1","notifications","phx_join",{}]"#)
        .send()
        .await
        .unwrap();
    assert_eq!(post.json::<Value>().await.unwrap(), json!({"status": 200}));
    let polled = get(format!("{url}?vsn=2.0.0&userToken={alice}&token={token}")).await;
    assert_eq!(polled["status"], 200);
    let first: Value = serde_json::from_str(polled["messages"][0].as_str().unwrap()).unwrap();
    assert_eq!(
        first,
        json!(["1", "1", "notifications", "phx_reply", {"status": "ok", "response": {}}])
    );
    app.stop().await;
}
