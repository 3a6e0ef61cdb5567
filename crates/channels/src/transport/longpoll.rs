//! The LongPoll transport: `{mount}/longpoll`, as the `phoenix` npm client's `LongPoll` (and its
//! fallback from WebSocket) speaks it.
//!
//! - `GET` without a live session token connects (same auth as the WebSocket: connect params in
//!   the query, the auth token in `X-Phoenix-AuthToken`) and answers
//!   `{"status":410,"token":T,"messages":[]}`, or `{"status":403}` when refused.
//! - `GET ?token=T` waits up to the poll window for frames: `{"status":200,"token":T,
//!   "messages":[…]}`, or `{"status":204,…}` when none came.
//! - `POST ?token=T` carries one frame, or with `Content-Type: application/x-ndjson` up to 100,
//!   one per line (text frames start with `[` or `{`, binary ones are base64): `{"status":200}`,
//!   or `{"status":410}` when the session is gone.
//! - `OPTIONS` answers CORS preflight; every answer allows any origin (nothing here rides on
//!   cookies: the session token is the credential).
//!
//! As in Phoenix, the outcome is in the body's `status` and the HTTP status is 200, except for
//! requests no client of ours sends (bad query, body over the limit, unknown vsn), which get
//! the same status in both.
//!
//! A session is one task that owns the same [`Session`] state machine as a WebSocket, fed by
//! POSTs and drained by GETs. Its token is 128 random bits. A session that nobody polls is
//! closed by the heartbeat sweeper (the window is kept under half the heartbeat timeout, so a
//! client that keeps polling is never taken for silent); so are the session's channels and
//! presences.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::hub::{Hub, SocketShared};
use crate::limits::Refused;
use crate::mount::{Admitted, Mount};
use crate::outbox::Close;
use crate::serializer::{Frame, Serializer};
use crate::session::Session;
use crate::socket::{ConnectInfo, Connection, SocketHandler};

/// Frames one ndjson POST may carry (what the npm client batches at most).
pub(crate) const MAX_BATCH: usize = 100;
const AUTH_HEADER: &str = "x-phoenix-authtoken";
const NDJSON: &str = "application/x-ndjson";
/// Commands queued per session (a well-behaved client has one GET and one POST in flight).
const COMMANDS: usize = 8;

enum Command {
    Poll(oneshot::Sender<Polled>),
    Post(Vec<Inbound>, oneshot::Sender<()>),
}

enum Polled {
    Messages(Vec<Frame>),
    Empty,
}

pub(crate) enum Inbound {
    Text(String),
    Binary(Bytes),
}

struct Live {
    commands: mpsc::Sender<Command>,
    socket: Arc<SocketShared>,
}

/// What the LongPoll routes share: the mounted handler and its live sessions.
pub(crate) struct LongPollState<H: SocketHandler> {
    mount: Arc<Mount<H>>,
    sessions: Arc<Sessions>,
}

impl<H: SocketHandler> LongPollState<H> {
    pub(crate) fn new(mount: Arc<Mount<H>>, sessions: Arc<Sessions>) -> Self {
        LongPollState { mount, sessions }
    }
}

impl<H: SocketHandler> Clone for LongPollState<H> {
    fn clone(&self) -> Self {
        LongPollState { mount: self.mount.clone(), sessions: self.sessions.clone() }
    }
}

/// The live sessions of one endpoint, by token.
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<String, Live>>,
}

impl Sessions {
    fn get(&self, token: &str) -> Option<mpsc::Sender<Command>> {
        self.live.lock().get(token).map(|live| live.commands.clone())
    }

    /// Asks the session to end (its task then closes its channels).
    fn close(&self, token: &str, close: Close) {
        if let Some(live) = self.live.lock().get(token) {
            live.socket.outbox.close(close);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.live.lock().len()
    }
}

/// 128 bits from the OS's generator, base64url: unguessable, so a session cannot be taken over.
fn new_token() -> Option<String> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// `{"status": status, …extra}` with CORS, HTTP 200 (Phoenix's convention).
fn status_json(status: u16, extra: Value) -> Response {
    let mut body = match extra {
        Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    body.insert("status".into(), json!(status));
    with_cors(
        (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            Value::Object(body).to_string(),
        )
            .into_response(),
    )
}

/// A request that no Phoenix client sends: the same status in the HTTP line and the body.
fn bad(status: StatusCode) -> Response {
    let body = json!({ "status": status.as_u16() }).to_string();
    with_cors((status, [(header::CONTENT_TYPE, "application/json")], body).into_response())
}

fn with_cors(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    response
}

/// Query parameters in order (the client appends `token` after the connect params, which may
/// have their own `token`).
fn query(request: &Request) -> Option<Vec<(String, String)>> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(request.uri()).ok().map(|q| q.0)
}

/// `OPTIONS`: CORS preflight.
pub(crate) async fn preflight(headers: HeaderMap) -> Response {
    let asked = headers
        .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(", ");
    let mut response = with_cors(StatusCode::OK.into_response());
    let h = response.headers_mut();
    if let Ok(asked) = HeaderValue::from_str(&asked) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked);
    }
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("3600"));
    response
}

/// A refused origin: 403, in the HTTP line and the body (the client then stops, as for a
/// refused connect).
fn forbidden_origin() -> Response {
    bad(StatusCode::FORBIDDEN)
}

/// Any other method.
pub(crate) async fn other_method() -> Response {
    bad(StatusCode::BAD_REQUEST)
}

/// `GET`: poll a live session, or start one.
pub(crate) async fn poll<H: SocketHandler>(
    State(state): State<LongPollState<H>>,
    request: Request,
) -> Response {
    if state.mount.check_origin(request.headers()).is_err() {
        return forbidden_origin();
    }
    let Some(params) = query(&request) else { return bad(StatusCode::BAD_REQUEST) };
    let token = params.iter().rev().find(|(k, _)| k == "token").map(|(_, v)| v.clone());
    if let Some(token) = &token {
        if let Some(session) = state.sessions.get(token) {
            let (tx, rx) = oneshot::channel();
            if session.send(Command::Poll(tx)).await.is_ok() {
                match rx.await {
                    Ok(Polled::Messages(frames)) => {
                        let messages: Vec<Value> = frames.into_iter().map(frame_json).collect();
                        return status_json(200, json!({ "token": token, "messages": messages }));
                    }
                    Ok(Polled::Empty) => {
                        return status_json(204, json!({ "token": token, "messages": [] }))
                    }
                    // The session ended while we waited.
                    Err(_) => {}
                }
            }
        }
    }
    // No live session for this token: a new one (as Phoenix does), or a refusal.
    connect(state, request, params).await
}

/// How a frame travels in `messages`: text as is, binary as base64.
fn frame_json(frame: Frame) -> Value {
    match frame {
        Frame::Text(text) => Value::String(text.as_str().to_owned()),
        Frame::Binary(data) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(data))
        }
    }
}

async fn connect<H: SocketHandler>(
    state: LongPollState<H>,
    request: Request,
    pairs: Vec<(String, String)>,
) -> Response {
    let mount = &state.mount;
    if mount.lifecycle.is_shutting_down() {
        // The client retries on 500 (there is no status for "unavailable" it understands).
        return status_json(500, json!({}));
    }
    let mut params: HashMap<String, String> = HashMap::new();
    for (k, v) in pairs {
        params.entry(k).or_insert(v);
    }
    let Some(serializer) = Serializer::from_vsn(params.get("vsn").map(String::as_str)) else {
        return bad(StatusCode::BAD_REQUEST);
    };
    let (parts, _body) = request.into_parts();
    let auth_token =
        parts.headers.get(AUTH_HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let peer = super::peer(&parts);
    let guard = match mount.admit(&parts.headers, peer) {
        Ok(admitted) => admitted,
        // The client retries on 500 (it knows no status for "busy").
        Err(refused) => {
            tracing::debug!(?refused, "longpoll session not admitted");
            return match refused {
                Refused::Origin => forbidden_origin(),
                Refused::Full | Refused::TooManyFromClient => status_json(500, json!({})),
            };
        }
    };
    let info = ConnectInfo { params, auth_token, headers: parts.headers, peer };
    let connection = match mount.handler.connect(&info).await {
        Ok(connection) => connection,
        Err(refusal) => {
            tracing::debug!(?peer, ?refusal, "longpoll connect refused");
            return match refusal {
                crate::socket::Refusal::Forbidden => status_json(403, json!({})),
                crate::socket::Refusal::Unavailable => status_json(500, json!({})),
            };
        }
    };
    drop(info);
    let Some(token) = new_token() else {
        tracing::error!("no randomness for a longpoll token");
        return status_json(500, json!({}));
    };
    mount.start_sweeper();
    let (tx, rx) = mpsc::channel(COMMANDS);
    let hub = mount.hub.clone();
    let socket = hub.register(
        serializer,
        connection.id.clone(),
        connection.user.clone(),
        mount.config.outbox_capacity(),
    );
    state.sessions.live.lock().insert(token.clone(), Live { commands: tx, socket: socket.clone() });
    if mount.lifecycle.is_shutting_down() {
        socket.outbox.close(Close::GOING_AWAY);
    }
    tracing::debug!(conn = socket.conn, ?serializer, "longpoll session started");
    tokio::spawn(run(state, connection, socket, token.clone(), rx, guard));
    status_json(410, json!({ "token": token, "messages": [] }))
}

/// `POST`: frames from the client.
pub(crate) async fn publish<H: SocketHandler>(
    State(state): State<LongPollState<H>>,
    request: Request,
) -> Response {
    if state.mount.check_origin(request.headers()).is_err() {
        return forbidden_origin();
    }
    let Some(params) = query(&request) else { return bad(StatusCode::BAD_REQUEST) };
    let token = params.iter().rev().find(|(k, _)| k == "token").map(|(_, v)| v.clone());
    let Some(session) = token.as_deref().and_then(|t| state.sessions.get(t)) else {
        return status_json(410, json!({}));
    };
    let ndjson =
        request.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(
            |v| v.split(';').next().is_some_and(|t| t.trim().eq_ignore_ascii_case(NDJSON)),
        );
    let limit = state.mount.config.max_frame_bytes;
    let body = match axum::body::to_bytes(request.into_body(), limit).await {
        Ok(body) => body,
        Err(_) => {
            // Like a WebSocket frame over the limit (1009): the session ends.
            tracing::debug!("longpoll body over the limit");
            if let Some(token) = &token {
                state.sessions.close(token, Close::TOO_BIG);
            }
            return bad(StatusCode::PAYLOAD_TOO_LARGE);
        }
    };
    let frames = match parse_body(&body, ndjson) {
        Ok(frames) => frames,
        Err(reason) => {
            tracing::debug!(reason, "bad longpoll body");
            return bad(StatusCode::BAD_REQUEST);
        }
    };
    let (tx, rx) = oneshot::channel();
    if session.send(Command::Post(frames, tx)).await.is_err() || rx.await.is_err() {
        return status_json(410, json!({}));
    }
    status_json(200, json!({}))
}

/// One frame, or ndjson lines: text frames start with `[` (v2) or `{` (v1); anything else is a
/// base64 binary frame. Empty lines are skipped.
pub(crate) fn parse_body(body: &Bytes, ndjson: bool) -> Result<Vec<Inbound>, &'static str> {
    let lines: Vec<&[u8]> = if ndjson {
        body.split(|b| *b == b'\n').map(trim_cr).filter(|l| !l.is_empty()).collect()
    } else {
        vec![trim_cr(body)]
    };
    if lines.len() > MAX_BATCH {
        return Err("more than 100 frames in one batch");
    }
    lines
        .into_iter()
        .map(|line| match line.first() {
            Some(b'[' | b'{') => std::str::from_utf8(line)
                .map(|s| Inbound::Text(s.to_owned()))
                .map_err(|_| "text frame is not UTF-8"),
            Some(_) => base64::engine::general_purpose::STANDARD
                .decode(line)
                .map(|raw| Inbound::Binary(Bytes::from(raw)))
                .map_err(|_| "binary frame is not base64"),
            None => Err("empty body"),
        })
        .collect()
}

fn trim_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Removes the session from the live sessions and the hub however its task ends (even by a panic in
/// a channel callback).
struct Registration<'a> {
    sessions: &'a Sessions,
    hub: Hub,
    socket: Arc<SocketShared>,
    token: String,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.sessions.live.lock().remove(&self.token);
        self.hub.unregister(&self.socket);
    }
}

async fn run<H: SocketHandler>(
    state: LongPollState<H>,
    connection: Connection<H::Assigns>,
    socket: Arc<SocketShared>,
    token: String,
    mut commands: mpsc::Receiver<Command>,
    _guard: Admitted,
) {
    let mount = &state.mount;
    let hub = mount.hub.clone();
    let registration =
        Registration { sessions: &state.sessions, hub: hub.clone(), socket: socket.clone(), token };
    let config = &mount.config;
    let window = config.longpoll_window.min(config.heartbeat_timeout / 2);
    let mut session = Session::new(
        mount.handler.clone(),
        connection.assigns,
        socket.clone(),
        hub,
        mount.presence.clone(),
        config.max_channels,
    )
    .with_inbound_rate(config.inbound_rate)
    .with_inbound_bytes(config.inbound_bytes_per_second, config.max_frame_bytes);
    let mut waiting: Option<(oneshot::Sender<Polled>, Instant)> = None;
    // Frames taken from the outbox whose poll went away before it could take them.
    let mut unsent: VecDeque<Frame> = VecDeque::new();
    let close = loop {
        let deadline = waiting.as_ref().map(|(_, d)| *d);
        tokio::select! {
            biased;
            () = socket.outbox.ready() => {
                if waiting.is_some() {
                    answer(&mut waiting, &mut unsent, &socket);
                }
                if let Some(close) = socket.outbox.close_requested() {
                    break close;
                }
            }
            command = commands.recv() => match command {
                Some(Command::Post(frames, ack)) => {
                    socket.touch();
                    for frame in frames {
                        match frame {
                            Inbound::Text(text) => Box::pin(session.handle_text(&text)).await,
                            Inbound::Binary(data) => Box::pin(session.handle_binary(data)).await,
                        }
                    }
                    let _ = ack.send(());
                }
                Some(Command::Poll(reply)) => {
                    socket.touch();
                    // A newer poll replaces an older one still held (its client gave up on it).
                    if let Some((older, _)) = waiting.take() {
                        let _ = older.send(Polled::Empty);
                    }
                    waiting = Some((reply, Instant::now() + window));
                    answer(&mut waiting, &mut unsent, &socket);
                }
                None => break Close::DISCONNECTED,
            },
            () = sleep_until(deadline), if deadline.is_some() => {
                socket.touch();
                if let Some((reply, _)) = waiting.take() {
                    let _ = reply.send(Polled::Empty);
                }
            }
        }
    };
    // Whatever was queued before the close still goes to a held poll.
    answer(&mut waiting, &mut unsent, &socket);
    if let Some((reply, _)) = waiting.take() {
        let _ = reply.send(Polled::Empty);
    }
    tracing::debug!(conn = socket.conn, ?close, "longpoll session closed");
    Box::pin(session.terminate_all()).await;
    drop(registration);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Hands the queued frames to the held poll, if there are any.
fn answer(
    waiting: &mut Option<(oneshot::Sender<Polled>, Instant)>,
    unsent: &mut VecDeque<Frame>,
    socket: &SocketShared,
) {
    if waiting.is_none() {
        return;
    }
    let (frames, _) = socket.outbox.take();
    unsent.extend(frames);
    if unsent.is_empty() {
        return;
    }
    let Some((reply, _)) = waiting.take() else { return };
    let count = unsent.len();
    match reply.send(Polled::Messages(unsent.drain(..).collect())) {
        // Handed to the poll's response: as written as a LongPoll frame gets.
        Ok(()) => socket.outbox.written(count),
        // Its HTTP request is gone: keep the frames for the next poll.
        Err(Polled::Messages(back)) => unsent.extend(back),
        Err(Polled::Empty) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let ok = |b: &str, nd| parse_body(&Bytes::from(b.to_owned()), nd);
        assert!(matches!(
            ok(r#"[null,"1","phoenix","heartbeat",{}]"#, false).unwrap()[..],
            [Inbound::Text(_)]
        ));
        assert_eq!(ok("[1]\n{\"a\":1}\r\n\nAAEC\n", true).unwrap().len(), 3);
        match &ok("AAEC", true).unwrap()[0] {
            Inbound::Binary(b) => assert_eq!(&b[..], &[0, 1, 2]),
            Inbound::Text(_) => panic!("binary expected"),
        }
        assert!(ok("not base64!", true).is_err());
        assert!(ok("", false).is_err());
        assert!(ok(&"[1]\n".repeat(101), true).is_err());
        assert_eq!(ok(&"[1]\n".repeat(100), true).unwrap().len(), 100);
        assert!(parse_body(&Bytes::from_static(b"[\xff]"), false).is_err());
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_eq!(a.len(), 22);
        assert_ne!(a, b);
    }
}
