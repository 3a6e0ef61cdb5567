//! The WebSocket transport: `GET {mount}/websocket`.
//!
//! One task per socket selects over the client's frames and the socket's outbox. Buffers are kept small (1 KiB read, no write buffering) because an idle socket's
//! memory is mostly its buffers and its task.
//!
//! The upgrade is done here with tokio-tungstenite rather than axum's `WebSocketUpgrade`, because
//! tungstenite's write buffer grows to the largest frame ever written and never shrinks: every
//! outbound message is therefore written as RFC 6455 fragments of at most [`FRAGMENT_BYTES`] of
//! payload (which axum's `Message` cannot express), so an idle socket keeps a small write buffer
//! whatever it was sent before. Clients reassemble fragments transparently.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WireFrame;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::endpoint::{Admitted, Endpoint};
use crate::hub::SocketShared;
use crate::outbox::Close;
use crate::serializer::{Frame, Serializer};
use crate::session::Session;
use crate::socket::{ConnectInfo, SocketHandler};

type WebSocket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

const READ_BUFFER_BYTES: usize = 512;
/// Largest payload of one outbound WebSocket frame; longer messages are fragmented. Bounds the
/// capacity tungstenite's write buffer keeps for the life of the socket.
pub(crate) const FRAGMENT_BYTES: usize = 2048;
const SUBPROTOCOL: &str = "phoenix";
const TOKEN_PREFIX: &str = "base64url.bearer.phx.";
/// How long to wait for the client's answer to our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(crate) async fn upgrade<H: SocketHandler>(State(endpoint): State<Arc<Endpoint<H>>>, request: Request) -> Response {
    if endpoint.lifecycle.is_shutting_down() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let (accept_key, on_upgrade) = match check_handshake(&mut parts) {
        Ok(handshake) => handshake,
        Err(refusal) => return refusal.into_response(),
    };
    let Ok(Query(params)) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri) else {
        return (StatusCode::BAD_REQUEST, "invalid query string").into_response();
    };
    let Some(serializer) = Serializer::from_vsn(params.get("vsn").map(String::as_str)) else {
        return (StatusCode::BAD_REQUEST, "unsupported vsn").into_response();
    };
    let (auth_token, offers_phoenix) = read_subprotocols(&parts.headers);
    let peer = super::peer(&parts);
    let guard = match endpoint.admit(&parts.headers, peer) {
        Ok(admitted) => admitted,
        Err(refused) => {
            tracing::debug!(?refused, "socket not admitted");
            let mut response = refused.status().into_response();
            if refused != crate::limits::Refused::Origin {
                response.headers_mut().insert(header::RETRY_AFTER, crate::limits::RETRY_AFTER.as_secs().into());
            }
            return response;
        }
    };
    let info = ConnectInfo { params, auth_token, headers: parts.headers, peer };
    let connection = match endpoint.handler.connect(&info).await {
        Ok(connection) => connection,
        Err(refusal) => {
            tracing::debug!(?peer, ?refusal, "connect refused");
            return refusal.status().into_response();
        }
    };
    drop(info);

    let max_bytes = endpoint.config.max_frame_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(max_bytes))
        .max_frame_size(Some(max_bytes));
    endpoint.start_sweeper();
    let endpoint = endpoint.clone();
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        run(ws, endpoint, connection, serializer, guard).await;
    });

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key)
        .body(Body::empty())
        .expect("static upgrade response");
    if offers_phoenix {
        response.headers_mut().insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
    }
    response
}

/// The RFC 6455 opening handshake's request checks, refused with the statuses axum's
/// `WebSocketUpgrade` used: 405 (not GET), 400 (bad headers), 426 (connection not upgradable).
/// On success, the `Sec-WebSocket-Accept` value and the pending upgrade.
fn check_handshake(
    parts: &mut axum::http::request::Parts,
) -> Result<(HeaderValue, hyper::upgrade::OnUpgrade), (StatusCode, &'static str)> {
    if parts.method != Method::GET {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "Request method must be `GET`"));
    }
    if !header_contains(&parts.headers, header::CONNECTION, "upgrade") {
        return Err((StatusCode::BAD_REQUEST, "Connection header did not include 'upgrade'"));
    }
    if !header_eq(&parts.headers, header::UPGRADE, "websocket") {
        return Err((StatusCode::BAD_REQUEST, "`Upgrade` header did not include 'websocket'"));
    }
    let Some(key) = parts.headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err((StatusCode::BAD_REQUEST, "`Sec-WebSocket-Key` header missing"));
    };
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes())).expect("base64 is a valid header value");
    if !header_eq(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err((StatusCode::BAD_REQUEST, "`Sec-WebSocket-Version` header did not include '13'"));
    }
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err((StatusCode::UPGRADE_REQUIRED, "WebSocket request couldn't be upgraded since no upgrade state was present"));
    };
    Ok((accept, on_upgrade))
}

fn header_eq(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers.get(name).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(value.as_bytes()))
}

fn header_contains(headers: &HeaderMap, name: HeaderName, value: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(value))
}

/// `Sec-WebSocket-Protocol: phoenix, base64url.bearer.phx.<b64url(token)>` → (token, offers phoenix).
fn read_subprotocols(headers: &HeaderMap) -> (Option<String>, bool) {
    let mut token = None;
    let mut phoenix = false;
    let offered = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim);
    for protocol in offered {
        if protocol == SUBPROTOCOL {
            phoenix = true;
        } else if let Some(encoded) = protocol.strip_prefix(TOKEN_PREFIX) {
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(encoded.trim_end_matches('='))
                .ok()
                .and_then(|raw| String::from_utf8(raw).ok());
            if decoded.is_none() {
                tracing::debug!("undecodable auth token subprotocol ignored");
            }
            token = decoded;
        }
    }
    (token, phoenix)
}

async fn run<H: SocketHandler>(
    mut ws: WebSocket,
    endpoint: Arc<Endpoint<H>>,
    connection: crate::socket::Connection<H::Assigns>,
    serializer: Serializer,
    _guard: Admitted,
) {
    let hub = endpoint.hub.clone();
    let config = &endpoint.config;
    let socket = hub.register(serializer, connection.id, connection.user, config.outbound_queue);
    // Leaves the hub's indexes even if a channel callback panics and unwinds this task.
    let registration = Registration { hub: &hub, socket: &socket };
    // A shutdown that started after the upgrade began may have missed this socket.
    if endpoint.lifecycle.is_shutting_down() {
        socket.outbox.close(Close::GOING_AWAY);
    }
    tracing::debug!(conn = socket.conn, ?serializer, "socket connected");
    let mut session = Session::new(
        endpoint.handler.clone(),
        connection.assigns,
        socket.clone(),
        hub.clone(),
        config.max_channels,
    )
    .with_inbound_rate(config.inbound_rate);

    let end = drive(&mut ws, &mut session, &socket).await;
    Box::pin(session.terminate_all()).await;
    drop(registration);
    tracing::debug!(conn = socket.conn, ?end, "socket closed");

    match end {
        End::Close(close) => {
            let frame = CloseFrame { code: CloseCode::from(close.code), reason: Utf8Bytes::from_static(close.reason) };
            // Bounded: a client that stopped reading cannot hold the task.
            let sent = tokio::time::timeout(CLOSE_GRACE, ws.send(Message::Close(Some(frame)))).await;
            if let Ok(Ok(())) = sent {
                finish(&mut ws).await;
            }
        }
        End::PeerClosed => finish(&mut ws).await,
        End::Broken => {}
    }
}

struct Registration<'a> {
    hub: &'a crate::hub::Hub,
    socket: &'a SocketShared,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.hub.unregister(self.socket);
    }
}

#[derive(Debug)]
enum End {
    /// We close, with this code.
    Close(Close),
    /// The client sent a close frame.
    PeerClosed,
    /// The connection failed.
    Broken,
}

/// Heartbeat timeouts are not timed here: a per-socket timer would cost more memory than the
/// rest of an idle socket's state. The endpoint's sweeper closes silent sockets through the
/// outbox instead; this loop only records activity.
async fn drive<H: SocketHandler>(ws: &mut WebSocket, session: &mut Session<H>, socket: &SocketShared) -> End {
    loop {
        tokio::select! {
            biased;
            () = socket.outbox.ready() => {
                // Drain until empty, so the next `ready` cannot miss a push.
                loop {
                    let (frames, close) = socket.outbox.take();
                    if frames.is_empty() {
                        if let Some(close) = close {
                            return End::Close(close);
                        }
                        break;
                    }
                    if let Some(end) = send_all(ws, frames, socket).await {
                        return end;
                    }
                }
            }
            received = ws.next() => {
                socket.touch();
                match received {
                    Some(Ok(Message::Text(text))) => Box::pin(session.handle_text(text.as_str())).await,
                    Some(Ok(Message::Binary(data))) => Box::pin(session.handle_binary(data)).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) => return End::PeerClosed,
                    Some(Err(error)) => {
                        if is_too_big(error) {
                            tracing::debug!(conn = socket.conn, "inbound frame over the limit");
                            return End::Close(Close::TOO_BIG);
                        }
                        return End::Broken;
                    }
                    None => return End::Broken,
                }
            }
        }
    }
}

/// Write frames; `None` when all went out. A client that stops reading blocks this write, so a
/// close request (slow consumer, disconnect, shutdown) interrupts it.
async fn send_all(ws: &mut WebSocket, frames: VecDeque<Frame>, socket: &SocketShared) -> Option<End> {
    let write = async {
        for frame in frames {
            let (opcode, payload) = match frame {
                Frame::Text(text) => (Data::Text, Bytes::from(text)),
                Frame::Binary(data) => (Data::Binary, data),
            };
            for message in fragments(opcode, payload) {
                ws.feed(message).await?;
            }
        }
        ws.flush().await
    };
    tokio::pin!(write);
    loop {
        tokio::select! {
            biased;
            written = &mut write => return written.err().map(|_| End::Broken),
            () = socket.outbox.ready() => {
                if let Some(close) = socket.outbox.close_requested() {
                    return Some(End::Close(close));
                }
            }
        }
    }
}

/// One message as WebSocket frames of at most [`FRAGMENT_BYTES`] of payload: the first with the
/// message's opcode, the rest continuations, the last with FIN. Slices share `payload`.
fn fragments(opcode: Data, payload: Bytes) -> impl Iterator<Item = Message> {
    let len = payload.len();
    let count = len.div_ceil(FRAGMENT_BYTES).max(1);
    (0..count).map(move |i| {
        let start = i * FRAGMENT_BYTES;
        let end = (start + FRAGMENT_BYTES).min(len);
        let code = if i == 0 { opcode } else { Data::Continue };
        Message::Frame(WireFrame::message(payload.slice(start..end), OpCode::Data(code), i + 1 == count))
    })
}

/// Read until the closing handshake completes (or a short grace passes), so the client sees a
/// clean close with our code.
async fn finish(ws: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

fn is_too_big(error: tungstenite::Error) -> bool {
    matches!(error, tungstenite::Error::Capacity(_))
}
