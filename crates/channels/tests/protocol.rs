//! The wire protocol as a Phoenix client sees it: bytes in, bytes out.

mod common;

use std::time::Duration;

use channels::EndpointConfig;
use common::*;
use serde_json::json;

#[tokio::test]
async fn heartbeat_v2_and_v1() {
    let server = Server::start().await;
    let mut v2 = server.v2("").await;
    v2.heartbeat("1").await;
    let mut v1 = server.v1("").await;
    v1.heartbeat_v1("7").await;
    // vsn absent means v1
    let mut none = Client::connect(&server.url("token=ok")).await;
    none.heartbeat_v1("8").await;
}

#[tokio::test]
async fn unsupported_vsn_is_refused_with_400() {
    let server = Server::start().await;
    assert_eq!(refused_status(&server.url("vsn=3.0.0&token=ok")).await, 400);
}

#[tokio::test]
async fn refused_connect_is_403_or_503_and_no_socket() {
    let server = Server::start().await;
    assert_eq!(refused_status(&server.url("vsn=2.0.0")).await, 403);
    assert_eq!(refused_status(&server.url("vsn=2.0.0&token=bad")).await, 403);
    assert_eq!(refused_status(&server.url("vsn=2.0.0&token=busy")).await, 503);
    assert_eq!(server.endpoint.hub().socket_count(), 0);
}

#[tokio::test]
async fn auth_token_from_subprotocol_and_phoenix_answered() {
    let server = Server::start().await;
    let protocols = format!("phoenix, {}", bearer_protocol("ok"));
    let mut c =
        Client::connect_with_protocols(&server.url("vsn=2.0.0&name=tok"), Some(&protocols)).await;
    assert_eq!(c.response_protocol.as_deref(), Some("phoenix"));
    assert_eq!(
        c.join("room:a", "1").await,
        ok_reply("1", "1", "room:a", json!({"joined": "room:a"}))
    );
    c.send(json!(["1", "2", "room:a", "whoami", {}])).await;
    let reply = c.json().await;
    assert_eq!(reply[4]["response"]["via_token"], json!(true));
    assert_eq!(reply[4]["response"]["name"], json!("tok"));
    assert_eq!(reply[4]["response"]["has_peer"], json!(true));
    // a bad token in the subprotocol is refused like any bad token
    let protocols = format!("phoenix, {}", bearer_protocol("nope"));
    let mut request =
        tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
            server.url("vsn=2.0.0"),
        )
        .unwrap();
    request.headers_mut().insert("sec-websocket-protocol", protocols.parse().unwrap());
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status().as_u16(), 403),
        other => panic!("expected 403, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn join_reply_v2_and_v1() {
    let server = Server::start().await;
    let mut v2 = server.v2("").await;
    v2.send(json!(["3", "4", "room:lobby", "phx_join", {}])).await;
    assert_eq!(v2.json().await, ok_reply("3", "4", "room:lobby", json!({"joined": "room:lobby"})));

    let mut v1 = server.v1("").await;
    v1.send(json!({"topic": "room:lobby", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}))
        .await;
    assert_eq!(
        v1.json().await,
        json!({"topic": "room:lobby", "event": "phx_reply", "payload": {"status": "ok", "response": {"joined": "room:lobby"}}, "ref": "1", "join_ref": "1"})
    );
    server
        .eventually("two subscribers", || server.endpoint.hub().subscriber_count("room:lobby") == 2)
        .await;
}

#[tokio::test]
async fn join_refused_by_channel_is_an_error_reply() {
    let server = Server::start().await;
    let mut c = server.v2("").await;
    assert_eq!(
        c.join("deny:x", "1").await,
        error_reply(Some("1"), "1", "deny:x", json!({"reason": "denied"}))
    );
    // not joined: events on it are unmatched
    c.send(json!(["1", "2", "deny:x", "echo", {}])).await;
    assert_eq!(
        c.json().await,
        error_reply(Some("1"), "2", "deny:x", json!({"reason": "unmatched topic"}))
    );
    assert_eq!(server.endpoint.hub().subscriber_count("deny:x"), 0);
}

#[tokio::test]
async fn unmatched_topic_join_and_event() {
    let server = Server::start().await;
    let mut c = server.v2("").await;
    assert_eq!(
        c.join("nowhere", "1").await,
        error_reply(Some("1"), "1", "nowhere", json!({"reason": "unmatched topic"}))
    );
    c.send(json!([null, "2", "room:never-joined", "echo", {}])).await;
    assert_eq!(
        c.json().await,
        error_reply(None, "2", "room:never-joined", json!({"reason": "unmatched topic"}))
    );
    c.heartbeat("3").await;
}

#[tokio::test]
async fn too_many_channels() {
    let server = Server::start_with(EndpointConfig { max_channels: 2, ..Default::default() }).await;
    let mut c = server.v2("").await;
    assert_eq!(c.join("room:1", "1").await[4]["status"], json!("ok"));
    assert_eq!(c.join("room:2", "2").await[4]["status"], json!("ok"));
    assert_eq!(
        c.join("room:3", "3").await,
        error_reply(Some("3"), "3", "room:3", json!({"reason": "too many channels joined"}))
    );
    // rejoining an already joined topic is not an extra channel
    assert_eq!(c.join("room:2", "4").await[3], json!("phx_close"));
    assert_eq!(c.json().await, ok_reply("4", "4", "room:2", json!({"joined": "room:2"})));
}

#[tokio::test]
async fn leave_replies_ok_then_phx_close_and_terminates() {
    let server = Server::start().await;
    let mut c = server.v2("").await;
    c.join("room:a", "5").await;
    c.send(json!(["5", "6", "room:a", "phx_leave", {}])).await;
    assert_eq!(c.json().await, ok_reply("5", "6", "room:a", json!({})));
    assert_eq!(c.json().await, json!(["5", "5", "room:a", "phx_close", {}]));
    server.log.wait_for("terminate room:a 5").await;
    assert_eq!(server.endpoint.hub().subscriber_count("room:a"), 0);
    // after leaving, events are unmatched; leaving again is fine
    c.send(json!(["5", "7", "room:a", "echo", {}])).await;
    assert_eq!(
        c.json().await,
        error_reply(Some("5"), "7", "room:a", json!({"reason": "unmatched topic"}))
    );
    c.send(json!(["5", "8", "room:a", "phx_leave", {}])).await;
    assert_eq!(c.json().await, ok_reply("5", "8", "room:a", json!({})));
}

#[tokio::test]
async fn duplicate_join_closes_old_channel_first() {
    let server = Server::start().await;
    let mut c = server.v2("").await;
    c.join("room:a", "1").await;
    c.send(json!(["2", "2", "room:a", "phx_join", {}])).await;
    assert_eq!(c.json().await, json!(["1", "1", "room:a", "phx_close", {}]));
    assert_eq!(c.json().await, ok_reply("2", "2", "room:a", json!({"joined": "room:a"})));
    server.log.wait_for("terminate room:a 1").await;
    assert_eq!(server.endpoint.hub().subscriber_count("room:a"), 1);
    // the new join answers, the old join_ref is stale
    c.send(json!(["2", "3", "room:a", "echo", {"x": 1}])).await;
    assert_eq!(c.json().await, ok_reply("2", "3", "room:a", json!({"x": 1})));
}

#[tokio::test]
async fn stale_join_ref_is_ignored() {
    let server = Server::start().await;
    let mut c = server.v2("").await;
    c.join("room:a", "1").await;
    c.join("room:a", "2").await; // phx_close for 1
    c.json().await; // ok reply for 2
    c.send(json!(["1", "3", "room:a", "echo", {}])).await;
    c.send(json!(["1", "4", "room:a", "phx_leave", {}])).await;
    // nothing answered the stale messages: the heartbeat reply comes next
    c.heartbeat("5").await;
    assert_eq!(server.endpoint.hub().subscriber_count("room:a"), 1);
}

#[tokio::test]
async fn replies_pushes_and_stop() {
    let server = Server::start().await;
    let mut c = server.v2("").await;
    c.send(json!(["1", "1", "room:a", "phx_join", {"push_on_join": true}])).await;
    // a push from join precedes the join reply; it carries the join_ref and a null ref
    assert_eq!(c.json().await, json!(["1", null, "room:a", "welcome", {"hello": "anon"}]));
    assert_eq!(c.json().await[3], json!("phx_reply"));
    c.send(json!(["1", "2", "room:a", "echo", {"a": [1, 2]}])).await;
    assert_eq!(c.json().await, ok_reply("1", "2", "room:a", json!({"a": [1, 2]})));
    c.send(json!(["1", "3", "room:a", "fail", {}])).await;
    assert_eq!(c.json().await, error_reply(Some("1"), "3", "room:a", json!({"oops": 1})));
    c.send(json!(["1", "4", "room:a", "push_me", {"p": true}])).await;
    assert_eq!(c.json().await, json!(["1", null, "room:a", "pushed", {"p": true}]));
    c.send(json!(["1", "5", "room:a", "stop", {}])).await;
    assert_eq!(c.json().await, json!(["1", "1", "room:a", "phx_error", {"reason": "asked"}]));
    server.log.wait_for("terminate room:a 1").await;
    c.send(json!(["1", "6", "room:a", "echo", {}])).await;
    assert_eq!(
        c.json().await,
        error_reply(Some("1"), "6", "room:a", json!({"reason": "unmatched topic"}))
    );
    // the client rejoins after phx_error
    assert_eq!(c.join("room:a", "7").await[4]["status"], json!("ok"));
}

#[tokio::test]
async fn connection_identity_reaches_the_channel() {
    let server = Server::start().await;
    let mut c = server.v2("name=ann&id=9&user=u9").await;
    c.join("room:a", "1").await;
    c.send(json!(["1", "2", "room:a", "whoami", {}])).await;
    assert_eq!(
        c.json().await[4]["response"],
        json!({"name": "ann", "via_token": false, "has_peer": true, "socket_id": "user_socket:9", "user": "u9", "topic": "room:a"})
    );
}

#[tokio::test]
async fn broadcast_reaches_all_subscribers_in_their_dialect() {
    let server = Server::start().await;
    let mut a = server.v2("").await;
    let mut b = server.v2("").await;
    let mut old = server.v1("").await;
    let mut other_room = server.v2("").await;
    a.join("room:x", "1").await;
    b.join("room:x", "1").await;
    other_room.join("room:y", "1").await;
    old.send(
        json!({"topic": "room:x", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}),
    )
    .await;
    old.json().await;

    a.send(json!(["1", "2", "room:x", "shout", {"m": 1}])).await;
    let expected = json!([null, null, "room:x", "shout", {"m": 1}]);
    assert_eq!(a.json().await, expected);
    assert_eq!(b.json().await, expected);
    assert_eq!(
        old.json().await,
        json!({"topic": "room:x", "event": "shout", "payload": {"m": 1}, "ref": null, "join_ref": null})
    );
    other_room.heartbeat("h").await;

    // broadcast_from skips the sender
    a.send(json!(["1", "3", "room:x", "shout_others", {"m": 2}])).await;
    assert_eq!(b.json().await, json!([null, null, "room:x", "shout", {"m": 2}]));
    assert_eq!(old.json().await["payload"], json!({"m": 2}));
    a.heartbeat("h").await;

    // server-side broadcast through the hub
    server.endpoint.hub().broadcast("room:x", "news", json!({"n": 3}).into());
    assert_eq!(a.json().await, json!([null, null, "room:x", "news", {"n": 3}]));
    assert_eq!(b.json().await, json!([null, null, "room:x", "news", {"n": 3}]));
}

#[tokio::test]
async fn binary_frames_in_and_out() {
    let server = Server::start().await;
    let mut a = server.v2("").await;
    let mut b = server.v2("").await;
    let mut old = server.v1("").await;
    a.join("room:bin", "1").await;
    b.join("room:bin", "9").await;
    old.send(json!({"topic": "room:bin", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"})).await;
    old.json().await;

    // binary request -> binary reply (kind 1): join_ref, ref, topic, status, data
    a.send_binary(binary_push("1", "22", "room:bin", "echo", &[0, 1, 255])).await;
    let reply = a.binary().await;
    let mut expected = vec![1u8, 1, 2, 8, 2];
    expected.extend_from_slice(b"122room:binok");
    expected.extend_from_slice(&[0, 1, 255]);
    assert_eq!(&reply[..], &expected[..]);

    // binary push (kind 0): join_ref, topic, event, data
    a.send_binary(binary_push("1", "23", "room:bin", "push_me", b"xyz")).await;
    let push = a.binary().await;
    let mut expected = vec![0u8, 1, 8, 6];
    expected.extend_from_slice(b"1room:binpushedxyz");
    assert_eq!(&push[..], &expected[..]);

    // binary broadcast (kind 2): topic, event, data; v1 sockets cannot receive it
    a.send_binary(binary_push("1", "24", "room:bin", "shout", b"\x00\x00")).await;
    let mut expected = vec![2u8, 8, 5];
    expected.extend_from_slice(b"room:binshout\x00\x00");
    assert_eq!(&a.binary().await[..], &expected[..]);
    assert_eq!(&b.binary().await[..], &expected[..]);
    old.heartbeat_v1("h").await;

    // a binary frame from a v1 client is dropped; the socket lives on
    old.send_binary(binary_push("1", "25", "room:bin", "echo", b"x")).await;
    old.heartbeat_v1("h2").await;
}

#[tokio::test]
async fn malformed_v2_text_frames() {
    let server = Server::start().await;
    let mut c = server.v2("").await;
    c.join("room:a", "1").await;
    let no_ref = [
        "",
        "not json",
        "{\"topic\":\"room:a\"}",
        "[]",
        "[null]",
        "42",
        "\"str\"",
        "null",
        "[\"1\", 2, \"room:a\", \"echo\", {}]",
        "[[], [], [], [], []]",
        "[\"1\",\"2\",\"room:a\",\"echo\",{}",
    ];
    for (i, text) in no_ref.iter().enumerate() {
        c.send_text(text).await;
        c.heartbeat(&format!("h{i}")).await;
    }
    let with_ref = [
        ("[\"1\",\"2\",\"room:a\",\"echo\"]", Some("1"), "2", "room:a"),
        ("[\"1\",\"3\",\"room:a\",\"echo\",{},{}]", Some("1"), "3", "room:a"),
        ("[\"1\",\"4\",7,\"echo\",{}]", Some("1"), "4", "phoenix"),
        ("[null,\"5\",\"room:a\",false,{}]", None, "5", "room:a"),
        ("[1,\"6\",\"room:a\",\"echo\",{}]", None, "6", "room:a"),
    ];
    for (text, jr, reference, topic) in with_ref {
        c.send_text(text).await;
        assert_eq!(
            c.json().await,
            error_reply(jr, reference, topic, json!({"reason": "malformed message"})),
            "{text}"
        );
        c.heartbeat("after").await;
    }
    // still joined and working
    c.send(json!(["1", "9", "room:a", "echo", {"ok": 1}])).await;
    assert_eq!(c.json().await, ok_reply("1", "9", "room:a", json!({"ok": 1})));
}

#[tokio::test]
async fn malformed_v1_text_frames() {
    let server = Server::start().await;
    let mut c = server.v1("").await;
    for (i, text) in
        ["", "[]", "[null,\"1\",\"phoenix\",\"heartbeat\",{}]", "{\"event\":1}", "nope"]
            .iter()
            .enumerate()
    {
        c.send_text(text).await;
        c.heartbeat_v1(&format!("h{i}")).await;
    }
    c.send_text("{\"topic\":\"room:a\",\"event\":\"phx_join\",\"ref\":\"4\"}").await;
    assert_eq!(
        c.json().await,
        json!({"topic": "room:a", "event": "phx_reply", "payload": {"status": "error", "response": {"reason": "malformed message"}}, "ref": "4", "join_ref": null})
    );
    c.heartbeat_v1("last").await;
}

#[tokio::test]
async fn malformed_binary_frames() {
    let server = Server::start().await;
    let mut c = server.v2("").await;
    c.join("room:a", "1").await;
    let no_ref: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        vec![0, 0, 0, 0],
        vec![1, 0, 0, 0, 0],
        vec![2, 0, 0],
        vec![3, 1, 1, 1, 1, b'a', b'b', b'c', b'd'],
        vec![255; 300],
        vec![0, 200, 0, 0, 0, b'x'],
        vec![0, 1, 1, 1, 1, 0xff, b'r', b't', b'e'],
    ];
    for (i, raw) in no_ref.into_iter().enumerate() {
        c.send_binary(raw).await;
        c.heartbeat(&format!("h{i}")).await;
    }
    // the ref is readable but the topic runs past the end of the frame
    c.send_binary(vec![0, 1, 1, 50, 4, b'1', b'7', b'r']).await;
    assert_eq!(
        c.json().await,
        error_reply(Some("1"), "7", "phoenix", json!({"reason": "malformed message"}))
    );
    c.heartbeat("end").await;
}

#[tokio::test]
async fn frame_over_the_limit_closes_with_1009() {
    let server =
        Server::start_with(EndpointConfig { max_frame_bytes: 1024, ..Default::default() }).await;
    let mut c = server.v2("").await;
    c.heartbeat("1").await;
    let big =
        format!("[null,\"2\",\"phoenix\",\"heartbeat\",{{\"pad\":\"{}\"}}]", "x".repeat(2000));
    c.send_text(&big).await;
    assert_eq!(c.close_code().await, 1009);
    server.eventually("socket gone", || server.endpoint.hub().socket_count() == 0).await;
    // the server is fine
    server.v2("").await.heartbeat("3").await;
}

#[tokio::test]
async fn silent_socket_is_closed_after_heartbeat_timeout() {
    let server = Server::start_with(EndpointConfig {
        heartbeat_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    let mut silent = server.v2("").await;
    let mut chatty = server.v2("").await;
    // activity keeps a socket open past the timeout
    for i in 0..6 {
        chatty.heartbeat(&i.to_string()).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(silent.close_code().await, 1008);
    chatty.heartbeat("still").await;
}
