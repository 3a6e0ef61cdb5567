//! The WebSocket transport: `GET {mount}/websocket`.
//!
//! One task per socket selects over the client's frames and the socket's outbox. Buffers are kept small (1 KiB read, no write buffering) because an idle socket's
//! memory is mostly its buffers and its task.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Query, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use futures_util::SinkExt;

use crate::endpoint::{Admitted, Endpoint};
use crate::hub::SocketShared;
use crate::outbox::Close;
use crate::serializer::{Frame, Serializer};
use crate::session::Session;
use crate::socket::{ConnectInfo, SocketHandler};

const READ_BUFFER_BYTES: usize = 512;
const SUBPROTOCOL: &str = "phoenix";
const TOKEN_PREFIX: &str = "base64url.bearer.phx.";
/// How long to wait for the client's answer to our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(crate) async fn upgrade<H: SocketHandler>(State(endpoint): State<Arc<Endpoint<H>>>, request: Request) -> Response {
    if endpoint.lifecycle.is_shutting_down() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let (mut parts, _body) = request.into_parts();
    let ws = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    let Ok(Query(params)) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri) else {
        return (StatusCode::BAD_REQUEST, "invalid query string").into_response();
    };
    let Some(serializer) = Serializer::from_vsn(params.get("vsn").map(String::as_str)) else {
        return (StatusCode::BAD_REQUEST, "unsupported vsn").into_response();
    };
    let (auth_token, offers_phoenix) = read_subprotocols(&parts.headers);
    let peer = parts
        .extensions
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| info.0);
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

    let config = &endpoint.config;
    let mut ws = ws
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(config.max_frame_bytes)
        .max_frame_size(config.max_frame_bytes);
    if offers_phoenix {
        ws = ws.protocols([SUBPROTOCOL]);
    }
    endpoint.start_sweeper();
    let endpoint = endpoint.clone();
    ws.on_failed_upgrade(|error| tracing::debug!(%error, "websocket upgrade failed"))
        .on_upgrade(move |socket| run(socket, endpoint, connection, serializer, guard))
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
            let frame = CloseFrame { code: close.code, reason: Utf8Bytes::from_static(close.reason) };
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
            received = ws.recv() => {
                socket.touch();
                match received {
                    Some(Ok(Message::Text(text))) => Box::pin(session.handle_text(text.as_str())).await,
                    Some(Ok(Message::Binary(data))) => Box::pin(session.handle_binary(data)).await,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
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
            let message = match frame {
                Frame::Text(text) => Message::Text(text),
                Frame::Binary(data) => Message::Binary(data),
            };
            ws.feed(message).await?;
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

/// Read until the closing handshake completes (or a short grace passes), so the client sees a
/// clean close with our code.
async fn finish(ws: &mut WebSocket) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = ws.recv().await {}
    })
    .await;
}

fn is_too_big(error: axum::Error) -> bool {
    matches!(
        error.into_inner().downcast_ref::<tungstenite::Error>(),
        Some(tungstenite::Error::Capacity(_))
    )
}
