//! The WebSocket transport: `GET {mount}/websocket`.
//!
//! One task per socket selects over the client's bytes and the socket's outbox. The opening
//! handshake is answered here (through hyper's upgrade), and the frames are read and written by
//! [`frames`](super::frames) rather than by tungstenite's `WebSocketStream`, whose read and
//! write buffers live as long as the socket: here an idle socket holds no buffer, and outbound
//! messages are written whole, straight from the bytes shared by every subscriber, many frames
//! per vectored write.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use super::frames::{Inbound, Outbound, Outgoing, Reader, WireFrame};
use crate::hub::SocketShared;
use crate::mount::{Admitted, Mount};
use crate::outbox::Close;
use crate::serializer::Serializer;
use crate::session::Session;
use crate::socket::{ConnectInfo, SocketHandler};

type Io = TokioIo<hyper::upgrade::Upgraded>;

const SUBPROTOCOL: &str = "phoenix";
const TOKEN_PREFIX: &str = "base64url.bearer.phx.";
/// How long to wait for the client's answer to our close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// How long a socket asked to close may take to finish the frame under way (so the close frame
/// can follow it): two chances for a client that reads once a second.
const FRAME_GRACE: Duration = Duration::from_secs(2);

pub(crate) async fn upgrade<H: SocketHandler>(
    State(mount): State<Arc<Mount<H>>>,
    request: Request,
) -> Response {
    if mount.lifecycle.is_shutting_down() {
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
    let guard = match mount.admit(&parts.headers, peer) {
        Ok(admitted) => admitted,
        Err(refused) => {
            tracing::debug!(?refused, "socket not admitted");
            let mut response = refused.status().into_response();
            if refused != crate::limits::Refused::Origin {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, crate::limits::RETRY_AFTER.as_secs().into());
            }
            return response;
        }
    };
    let info = ConnectInfo { params, auth_token, headers: parts.headers, peer };
    let connection = match mount.handler.connect(&info).await {
        Ok(connection) => connection,
        Err(refusal) => {
            tracing::debug!(?peer, ?refusal, "connect refused");
            return refusal.status().into_response();
        }
    };
    drop(info);

    mount.start_sweeper();
    // Registered now rather than in the task, so the task keeps no copy of the connection's
    // id and user; if the upgrade then fails, the task unregisters it.
    let socket = mount.hub.register(
        serializer,
        connection.id,
        connection.user,
        mount.config.outbox_capacity(),
    );
    tokio::spawn(run(on_upgrade, mount, socket, connection.assigns, guard));

    let mut response = Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, HeaderValue::from_static("upgrade"))
        .header(header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(header::SEC_WEBSOCKET_ACCEPT, accept_key)
        .body(Body::empty())
        .expect("static upgrade response");
    if offers_phoenix {
        response
            .headers_mut()
            .insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(SUBPROTOCOL));
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
    if !valid_key(key.as_bytes()) {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Key` must be 16 bytes in base64 (RFC 6455 section 4.1)",
        ));
    }
    let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
        .expect("base64 is a valid header value");
    if !header_eq(&parts.headers, header::SEC_WEBSOCKET_VERSION, "13") {
        return Err((
            StatusCode::BAD_REQUEST,
            "`Sec-WebSocket-Version` header did not include '13'",
        ));
    }
    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        return Err((
            StatusCode::UPGRADE_REQUIRED,
            "WebSocket request couldn't be upgraded since no upgrade state was present",
        ));
    };
    Ok((accept, on_upgrade))
}

/// RFC 6455: the key is a random 16-byte value, base64-encoded (24 characters).
fn valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && base64::engine::general_purpose::STANDARD.decode(key).is_ok_and(|raw| raw.len() == 16)
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

/// The socket's task. An idle socket's memory is mostly this future, so what is only needed at
/// the end (closing) is boxed then rather than laid out in it, and the arguments are captured by
/// an `async move` block (an `async fn` would keep a second copy of each).
#[allow(clippy::manual_async_fn, reason = "an async fn would copy its arguments into the future")]
fn run<H: SocketHandler>(
    on_upgrade: hyper::upgrade::OnUpgrade,
    mount: Arc<Mount<H>>,
    socket: Arc<SocketShared>,
    assigns: H::Assigns,
    guard: Admitted,
) -> impl std::future::Future<Output = ()> + Send {
    async move {
        let hub = &mount.hub;
        let config = &mount.config;
        // Leaves the hub's indexes even if a channel callback panics and unwinds this task.
        let registration = Registration { hub, socket: &socket };
        let mut io = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(error) => {
                tracing::debug!(%error, "websocket upgrade failed");
                return;
            }
        };
        // A shutdown that started after the upgrade began may have missed this socket.
        if mount.lifecycle.is_shutting_down() {
            socket.outbox.close(Close::GOING_AWAY);
        }
        tracing::debug!(conn = socket.conn, serializer = ?socket.serializer, "socket connected");
        let mut session = Session::new(
            mount.handler.clone(),
            assigns,
            socket.clone(),
            hub.clone(),
            mount.presence.clone(),
            config.max_channels,
        )
        .with_inbound_rate(config.inbound_rate)
        .with_inbound_bytes(config.inbound_bytes_per_second, config.max_frame_bytes);

        let mut reader = Reader::default();
        let end = drive(&mut io, &mut reader, &mut session, &socket, config.max_frame_bytes).await;
        Box::pin(session.terminate_all()).await;
        drop(registration);
        tracing::debug!(conn = socket.conn, ?end, "socket closed");

        Box::pin(close(io, reader, end, config.max_frame_bytes)).await;
        drop(guard);
    }
}

/// The closing handshake, bounded in time: a client that stopped reading cannot hold the task.
async fn close(mut io: Io, mut reader: Reader, end: End, max_bytes: usize) {
    match end {
        End::Close(code, reason) => {
            let mut close = Outgoing::one(Outbound::close(code, reason));
            if let Ok(Ok(())) = tokio::time::timeout(CLOSE_GRACE, close.write_all(&mut io)).await {
                finish(&mut io, &mut reader, max_bytes).await;
            }
        }
        End::PeerClosed(code) => {
            // Echo the client's code (RFC 6455 section 5.5.1), then the server closes TCP.
            let mut close = Outgoing::one(Outbound::close(code.unwrap_or(1000), ""));
            let _ = tokio::time::timeout(CLOSE_GRACE, close.write_all(&mut io)).await;
        }
        End::Broken => {}
    }
    let _ = tokio::time::timeout(CLOSE_GRACE, io.shutdown()).await;
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
    /// We close, with this code and reason.
    Close(u16, &'static str),
    /// The client sent a close frame (with this code, if any).
    PeerClosed(Option<u16>),
    /// The connection failed.
    Broken,
}

impl From<Close> for End {
    fn from(close: Close) -> End {
        End::Close(close.code, close.reason)
    }
}

/// Heartbeat timeouts are not timed here: a per-socket timer would cost more memory than the
/// rest of an idle socket's state. The endpoint's sweeper closes silent sockets through the
/// outbox instead; this loop only records activity.
async fn drive<H: SocketHandler>(
    io: &mut Io,
    reader: &mut Reader,
    session: &mut Session<H>,
    socket: &SocketShared,
    max_bytes: usize,
) -> End {
    loop {
        tokio::select! {
            biased;
            () = socket.outbox.ready() => {
                // Drain until empty, so the next `ready` cannot miss a push.
                loop {
                    // Scoped, so that only the boxed rest of a blocked write lives across the await.
                    let blocked = {
                        let (frames, close) = socket.outbox.take();
                        if frames.is_empty() {
                            if let Some(close) = close {
                                return close.into();
                            }
                            break;
                        }
                        match send(io, Outgoing::new(frames), socket) {
                            Ok(None) => continue,
                            Ok(Some(blocked)) => blocked,
                            Err(end) => return end,
                        }
                    };
                    if let Some(end) = blocked.await {
                        return end;
                    }
                }
            }
            read = reader.fill(io) => {
                match read {
                    Ok(0) | Err(_) => return End::Broken,
                    Ok(_) => socket.touch(),
                }
                loop {
                    let inbound = match reader.next(max_bytes) {
                        Ok(Some(inbound)) => inbound,
                        Ok(None) => break,
                        Err(violation) => {
                            tracing::debug!(conn = socket.conn, reason = violation.reason(), "websocket protocol violation");
                            return End::Close(violation.code(), violation.reason());
                        }
                    };
                    match inbound {
                        Inbound::Text(text) => Box::pin(session.handle_text(&text)).await,
                        Inbound::Binary(data) => Box::pin(session.handle_binary(data)).await,
                        Inbound::Ping(data) => match send(io, Outgoing::one(Outbound::Pong(data)), socket) {
                            Ok(None) => {}
                            Ok(Some(blocked)) => {
                                if let Some(end) = blocked.await {
                                    return end;
                                }
                            }
                            Err(end) => return end,
                        },
                        Inbound::Pong => {}
                        Inbound::Close(code) => return End::PeerClosed(code),
                    }
                }
            }
        }
    }
}

/// The rest of a write the socket did not take at once, with the close requests that may
/// interrupt it: `Some(end)` if the socket must end.
type Blocked<'a> = Pin<Box<dyn Future<Output = Option<End>> + Send + 'a>>;

/// Writes frames as far as the socket takes them now, without a future: `Ok(None)` when all went
/// out (the usual case), `Ok(Some(rest))` when the client's window is full. The socket task's
/// future holds only the box, and only while blocked. Frames from the outbox are reported back
/// to it (how many were written) once the write is over, however it ends.
fn send<'a, F: WireFrame + Send + 'a>(
    io: &'a mut Io,
    mut out: Outgoing<F>,
    socket: &'a SocketShared,
) -> Result<Option<Blocked<'a>>, End> {
    // A no-op waker: if the socket is not writable now, `send_blocked` polls again at once with
    // the task's own waker, which is what then gets registered.
    match out.poll_write(&mut Context::from_waker(Waker::noop()), io) {
        Poll::Ready(result) => {
            report(&out, socket);
            match result {
                Ok(()) => Ok(None),
                Err(_) => Err(End::Broken),
            }
        }
        Poll::Pending => Ok(Some(Box::pin(send_blocked(io, out, socket)))),
    }
}

/// Tells the outbox how many of its frames this write got out.
fn report<F: WireFrame>(out: &Outgoing<F>, socket: &SocketShared) {
    if F::FROM_OUTBOX {
        socket.outbox.written(out.completed());
    }
}

/// A client that stops reading blocks the rest of a write, so a close request (slow consumer,
/// disconnect, shutdown) interrupts it: the frames after the one under way are given up on (not
/// reported written, so confirmed ones count as not delivered), and that frame gets a short grace
/// to finish, so the close frame (1013 for a slow consumer) can follow it on a clean frame
/// boundary; a client that does not take even that is cut off without one.
async fn send_blocked<F: WireFrame>(
    io: &mut Io,
    mut out: Outgoing<F>,
    socket: &SocketShared,
) -> Option<End> {
    let end = loop {
        // The write goes on from where the last poll left it, whichever future polls it.
        tokio::select! {
            biased;
            written = out.write_all(io) => break written.err().map(|_| End::Broken),
            () = socket.outbox.ready() => {
                if let Some(close) = socket.outbox.close_requested() {
                    out.stop_after_current();
                    break match tokio::time::timeout(FRAME_GRACE, out.write_all(io)).await {
                        Ok(Ok(())) => Some(End::from(close)),
                        _ => Some(End::Broken),
                    };
                }
            }
        }
    };
    report(&out, socket);
    end
}

/// Read until the client answers our close frame (or a short grace passes), so it sees a
/// clean close with our code. The frame limit still holds: what a client announces after a
/// close is checked like anything else.
async fn finish(io: &mut Io, reader: &mut Reader, max_bytes: usize) {
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        loop {
            match reader.next(max_bytes) {
                Ok(Some(Inbound::Close(_))) | Err(_) => return,
                Ok(Some(_)) => continue,
                Ok(None) => {}
            }
            if !matches!(reader.fill(io).await, Ok(n) if n > 0) {
                return;
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::valid_key;

    #[test]
    fn only_a_base64_sixteen_byte_key_is_valid() {
        assert!(valid_key(b"dGhlIHNhbXBsZSBub25jZQ=="));
        for bad in
            [&b""[..], b"not base64 at all!!!!!!!", b"dGhlIHNhbXBsZSBub25jZQ", &[b'A'; 10_000]]
        {
            assert!(!valid_key(bad), "{:?}", String::from_utf8_lossy(&bad[..bad.len().min(30)]));
        }
        // 24 characters of base64 that are not 16 bytes.
        assert!(!valid_key(b"dGhlIHNhbXBsZSBub25jZQ=A"));
    }
}
