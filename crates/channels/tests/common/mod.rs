//! A real server on 127.0.0.1:0 with a small test application, and a raw WebSocket client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use channels::{
    async_trait, Channel, ChannelContext, ConnectInfo, Connection, Endpoint, EndpointConfig,
    HandleIn, Payload, PresenceFeed, Refusal, SocketHandler, Value,
};
use futures_util::{SinkExt, StreamExt};
use parking_lot::Mutex;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const WAIT: Duration = Duration::from_secs(5);

/// What the test application saw, for assertions on callbacks.
#[derive(Default)]
pub struct Log {
    entries: Mutex<Vec<String>>,
    changed: Notify,
}

impl Log {
    fn add(&self, entry: String) {
        self.entries.lock().push(entry);
        self.changed.notify_waiters();
    }

    /// Wait until an entry equal to `entry` was logged.
    pub async fn wait_for(&self, entry: &str) {
        let result = tokio::time::timeout(WAIT, async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.entries.lock().iter().any(|e| e == entry) {
                    return;
                }
                changed.await;
            }
        })
        .await;
        assert!(result.is_ok(), "log never got {entry:?}; has {:?}", self.entries.lock());
    }
}

pub struct Assigns {
    pub name: String,
    pub via_token: bool,
    pub peer: Option<SocketAddr>,
}

pub struct TestHandler {
    log: Arc<Log>,
    room: Arc<RoomChannel>,
}

#[async_trait]
impl SocketHandler for TestHandler {
    type Assigns = Assigns;

    async fn connect(&self, info: &ConnectInfo) -> Result<Connection<Assigns>, Refusal> {
        let param_token = info.params.get("token").map(String::as_str);
        let token = param_token.or(info.auth_token.as_deref());
        match token {
            Some("ok") => {}
            Some("busy") => return Err(Refusal::Unavailable),
            _ => return Err(Refusal::Forbidden),
        }
        Ok(Connection {
            assigns: Assigns {
                name: info.params.get("name").cloned().unwrap_or_else(|| "anon".into()),
                via_token: param_token.is_none(),
                peer: info.peer,
            },
            id: info.params.get("id").map(|id| format!("user_socket:{id}")),
            user: info.params.get("user").cloned(),
        })
    }

    fn channel(&self, topic: &str) -> Option<Arc<dyn Channel<Assigns>>> {
        if topic.starts_with("room:") || topic == "echo" || topic.starts_with("deny:") {
            Some(self.room.clone())
        } else {
            None
        }
    }
}

pub struct RoomChannel {
    log: Arc<Log>,
}

#[async_trait]
impl Channel<Assigns> for RoomChannel {
    async fn join(
        &self,
        topic: &str,
        payload: Payload,
        ctx: &ChannelContext<Assigns>,
    ) -> Result<Value, Value> {
        if topic.starts_with("deny:") {
            return Err(json!({"reason": "denied"}));
        }
        if let Payload::Json(p) = &payload {
            // `{"presence": key}` tracks this connection under key with `{"name": …}` and
            // watches the topic's presence in full, or as `{"feed": "count"|"none"}` says.
            if let Some(key) = p.get("presence").and_then(Value::as_str) {
                ctx.track(key, json!({"name": ctx.assigns().name}))
                    .map_err(|e| json!({"reason": e.to_string()}))?;
                ctx.watch_presence(Some(PresenceFeed::Full));
            }
            match p.get("feed").and_then(Value::as_str) {
                Some("full") => ctx.watch_presence(Some(PresenceFeed::Full)),
                Some("count") => ctx.watch_presence(Some(PresenceFeed::Count)),
                Some("none") => ctx.watch_presence(None),
                _ => {}
            }
            if p.get("push_on_join") == Some(&json!(true)) {
                ctx.push("welcome", Payload::Json(json!({"hello": ctx.assigns().name})));
            }
        }
        Ok(json!({"joined": topic}))
    }

    async fn handle_in(
        &self,
        event: &str,
        payload: Payload,
        ctx: &ChannelContext<Assigns>,
    ) -> HandleIn {
        match event {
            "echo" => HandleIn::Reply(Ok(payload)),
            "fail" => HandleIn::Reply(Err(Payload::Json(json!({"oops": 1})))),
            "shout" => {
                ctx.broadcast("shout", payload);
                HandleIn::NoReply
            }
            "shout_others" => {
                ctx.broadcast_from("shout", payload);
                HandleIn::NoReply
            }
            "push_me" => {
                ctx.push("pushed", payload);
                HandleIn::NoReply
            }
            "stop" => HandleIn::Stop { reason: "asked".into() },
            "panic" => panic!("a bug in the application's channel"),
            "untrack" => {
                ctx.untrack();
                HandleIn::NoReply
            }
            "track_bad" => match ctx.track("k", json!("not an object")) {
                Ok(_) => HandleIn::NoReply,
                Err(e) => HandleIn::Reply(Err(Payload::Json(json!({"reason": e.to_string()})))),
            },
            "whoami" => {
                let a = ctx.assigns();
                HandleIn::Reply(Ok(Payload::Json(json!({
                    "name": a.name,
                    "via_token": a.via_token,
                    "has_peer": a.peer.is_some(),
                    "socket_id": ctx.socket_id(),
                    "user": ctx.user(),
                    "topic": ctx.topic(),
                }))))
            }
            _ => HandleIn::NoReply,
        }
    }

    async fn terminate(&self, ctx: &ChannelContext<Assigns>) {
        self.log.add(format!("terminate {} {}", ctx.topic(), ctx.join_ref().unwrap_or("-")));
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub endpoint: Arc<Endpoint<TestHandler>>,
    pub log: Arc<Log>,
}

impl Server {
    pub async fn start() -> Server {
        Server::start_with(EndpointConfig::default()).await
    }

    pub async fn start_with(config: EndpointConfig) -> Server {
        let log = Arc::new(Log::default());
        let handler =
            TestHandler { log: log.clone(), room: Arc::new(RoomChannel { log: log.clone() }) };
        let endpoint = Endpoint::new(handler, config);
        let app = axum::Router::new().nest("/socket", endpoint.routes());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
                .await
                .unwrap();
        });
        Server { addr, endpoint, log }
    }

    pub fn url(&self, query: &str) -> String {
        format!("ws://{}/socket/websocket?{}", self.addr, query)
    }

    /// A v2 client with token=ok and extra query params.
    pub async fn v2(&self, extra: &str) -> Client {
        Client::connect(&self.url(&format!("vsn=2.0.0&token=ok&{extra}"))).await
    }

    pub async fn v1(&self, extra: &str) -> Client {
        Client::connect(&self.url(&format!("vsn=1.0.0&token=ok&{extra}"))).await
    }

    /// Poll a condition on the server until it holds (or fail after WAIT).
    pub async fn eventually(&self, what: &str, mut check: impl FnMut() -> bool) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "never happened: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// Status of a refused upgrade.
pub async fn refused_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => panic!("upgrade unexpectedly accepted"),
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("unexpected error {other}"),
    }
}

pub fn bearer_protocol(token: &str) -> String {
    format!(
        "base64url.bearer.phx.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(token)
    )
}

pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub response_protocol: Option<String>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        Client::connect_with_protocols(url, None).await
    }

    pub async fn connect_with_protocols(url: &str, protocols: Option<&str>) -> Client {
        let mut request = url.into_client_request().unwrap();
        if let Some(p) = protocols {
            request.headers_mut().insert("sec-websocket-protocol", p.parse().unwrap());
        }
        let (ws, response) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("connect timed out")
            .expect("connect failed");
        let response_protocol = response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap().to_owned());
        Client { ws, response_protocol }
    }

    pub async fn send(&mut self, v: Value) {
        self.ws.send(Message::text(v.to_string())).await.unwrap();
    }

    pub async fn send_text(&mut self, s: &str) {
        self.ws.send(Message::text(s)).await.unwrap();
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws.send(Message::binary(data)).await.unwrap();
    }

    /// Next data frame or close (pings/pongs skipped); fails after WAIT.
    pub async fn next(&mut self) -> Message {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")
                .expect("stream ended")
                .expect("read error");
            match msg {
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                other => return other,
            }
        }
    }

    /// Fails if a data frame arrives within `wait`.
    pub async fn assert_silent(&mut self, wait: Duration) {
        if let Ok(Some(Ok(msg))) = tokio::time::timeout(wait, self.ws.next()).await {
            assert!(matches!(msg, Message::Ping(_) | Message::Pong(_)), "unexpected {msg:?}");
        }
    }

    pub async fn json(&mut self) -> Value {
        match self.next().await {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    pub async fn binary(&mut self) -> Bytes {
        match self.next().await {
            Message::Binary(b) => b,
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// The close code the server sent (skipping any data frames still in flight).
    pub async fn close_code(&mut self) -> u16 {
        loop {
            let msg = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match msg {
                Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
                Some(Ok(Message::Close(None))) => panic!("close without code"),
                Some(Ok(_)) => continue,
                Some(Err(e)) => panic!("read error before close: {e}"),
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Reads until the server ends the connection: `Some(code)` for a close frame, `None` when
    /// the connection was dropped without one. Fails if it stays open past WAIT.
    pub async fn ended(&mut self) -> Option<u16> {
        loop {
            let msg =
                tokio::time::timeout(WAIT, self.ws.next()).await.expect("connection stayed open");
            match msg {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// As [`Client::ended`], also returning the text frames read on the way.
    pub async fn drain(&mut self) -> (Vec<String>, Option<u16>) {
        let mut texts = Vec::new();
        loop {
            let msg =
                tokio::time::timeout(WAIT, self.ws.next()).await.expect("connection stayed open");
            match msg {
                Some(Ok(Message::Text(text))) => texts.push(text.as_str().to_owned()),
                Some(Ok(Message::Close(frame))) => {
                    return (texts, frame.map(|f| u16::from(f.code)))
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return (texts, None),
            }
        }
    }

    /// v2 join; returns the reply frame.
    pub async fn join(&mut self, topic: &str, join_ref: &str) -> Value {
        self.send(json!([join_ref, join_ref, topic, "phx_join", {}])).await;
        self.json().await
    }

    /// Sends a v2 heartbeat and asserts that the next frame is its reply: proves the socket is
    /// alive and that nothing else was queued before it.
    pub async fn heartbeat(&mut self, reference: &str) {
        self.send(json!([null, reference, "phoenix", "heartbeat", {}])).await;
        assert_eq!(
            self.json().await,
            json!([null, reference, "phoenix", "phx_reply", {"status": "ok", "response": {}}])
        );
    }

    pub async fn heartbeat_v1(&mut self, reference: &str) {
        self.send(
            json!({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": reference}),
        )
        .await;
        assert_eq!(
            self.json().await,
            json!({"topic": "phoenix", "event": "phx_reply", "payload": {"status": "ok", "response": {}}, "ref": reference, "join_ref": null})
        );
    }
}

pub fn ok_reply(join_ref: &str, reference: &str, topic: &str, response: Value) -> Value {
    json!([join_ref, reference, topic, "phx_reply", {"status": "ok", "response": response}])
}

pub fn error_reply(join_ref: Option<&str>, reference: &str, topic: &str, response: Value) -> Value {
    json!([join_ref, reference, topic, "phx_reply", {"status": "error", "response": response}])
}

/// A v2 binary push frame (client → server).
pub fn binary_push(
    join_ref: &str,
    reference: &str,
    topic: &str,
    event: &str,
    data: &[u8],
) -> Vec<u8> {
    let mut out =
        vec![0, join_ref.len() as u8, reference.len() as u8, topic.len() as u8, event.len() as u8];
    for s in [join_ref, reference, topic, event] {
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(data);
    out
}
