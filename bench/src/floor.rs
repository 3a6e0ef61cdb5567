//! The floors: servers with no protocol doing the same job as the others. Connecting with
//! `?uid=<id>` is joining (the server answers `j`); a text frame `b<body>` is broadcast to every
//! connection; `t<uid> <body>` goes to that uid's connections. One task per socket, a small
//! inbox (mutex'd queue + notify) that broadcasts and targeted frames are pushed into, 1 KiB
//! read buffer and no write buffer.
//!
//! - `serve_raw`: tokio-tungstenite straight on the TCP stream: what any protocol on this
//!   stack costs at least.
//! - `serve_axum`: the same through axum's `WebSocketUpgrade` (hyper's HTTP/1 server and
//!   upgrade), as Tako's transport is built: separates the web stack's cost from Tako's own.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

struct Inbox<T> {
    queue: Mutex<VecDeque<T>>,
    notify: Notify,
}

impl<T> Inbox<T> {
    fn new() -> Inbox<T> {
        Inbox { queue: Mutex::new(VecDeque::new()), notify: Notify::new() }
    }

    fn push(&self, text: T) {
        let mut queue = self.queue.lock().unwrap();
        let was_empty = queue.is_empty();
        // Bounded: a client that stops reading loses frames rather than growing memory.
        if queue.len() < 1024 {
            queue.push_back(text);
        }
        drop(queue);
        if was_empty {
            self.notify.notify_one();
        }
    }

    fn drain(&self) -> Vec<T> {
        self.queue.lock().unwrap().drain(..).collect()
    }
}

/// A socket joined under a user id: (socket id, its inbox).
type Member<T> = (u64, Arc<Inbox<T>>);

struct Registry<T> {
    all: Mutex<HashMap<u64, Arc<Inbox<T>>>>,
    by_uid: Mutex<HashMap<String, Vec<Member<T>>>>,
}

impl<T: Clone + for<'a> From<&'a str>> Registry<T> {
    fn new() -> Registry<T> {
        Registry { all: Mutex::new(HashMap::new()), by_uid: Mutex::new(HashMap::new()) }
    }

    fn join(&self, id: u64, uid: &str) -> Arc<Inbox<T>> {
        let inbox = Arc::new(Inbox::new());
        self.all.lock().unwrap().insert(id, inbox.clone());
        self.by_uid.lock().unwrap().entry(uid.to_owned()).or_default().push((id, inbox.clone()));
        inbox
    }

    fn leave(&self, id: u64, uid: &str) {
        self.all.lock().unwrap().remove(&id);
        let mut by_uid = self.by_uid.lock().unwrap();
        if let Some(list) = by_uid.get_mut(uid) {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                by_uid.remove(uid);
            }
        }
    }

    fn handle(&self, s: &str) {
        if let Some(body) = s.strip_prefix('b') {
            let body = T::from(body);
            for inbox in self.all.lock().unwrap().values() {
                inbox.push(body.clone());
            }
        } else if let Some(rest) = s.strip_prefix('t') {
            if let Some((uid, body)) = rest.split_once(' ') {
                let body = T::from(body);
                if let Some(list) = self.by_uid.lock().unwrap().get(uid) {
                    for (_, inbox) in list {
                        inbox.push(body.clone());
                    }
                }
            }
        }
    }
}

/// Tako's listen backlog (crates/tako/src/startup.rs); tokio's `TcpListener::bind` uses 128, so
/// the floors bind the same way as Tako for storms to compare servers, not kernel SYN retries.
pub const LISTEN_BACKLOG: u32 = 4096;

fn listen(port: u16) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(([127, 0, 0, 1], port).into())?;
    socket.listen(LISTEN_BACKLOG)
}

fn uid_from_query(query: Option<&str>) -> String {
    query.and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("uid="))).unwrap_or("").to_owned()
}

pub async fn serve_raw(port: u16) -> anyhow::Result<()> {
    let listener = listen(port)?;
    let registry = Arc::new(Registry::<Utf8Bytes>::new());
    eprintln!("floor listening on {}", listener.local_addr()?);
    let mut next_id = 0u64;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off rather than spin.
                eprintln!("floor accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        next_id += 1;
        tokio::spawn(raw_connection(stream, next_id, registry.clone()));
    }
}

async fn raw_connection(stream: TcpStream, id: u64, registry: Arc<Registry<Utf8Bytes>>) {
    // Nagle stays on, as under axum::serve (which Tako uses); FLOOR_NODELAY=1 turns it off.
    if std::env::var("FLOOR_NODELAY").is_ok_and(|v| v == "1") {
        let _ = stream.set_nodelay(true);
    }
    let mut uid = String::new();
    let config = WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0);
    // tungstenite's callback type fixes the large error (an HTTP response); not ours to box.
    #[allow(clippy::result_large_err)]
    let callback = |req: &Request, resp: Response| {
        uid = uid_from_query(req.uri().query());
        Ok(resp)
    };
    let Ok(mut ws) =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await
    else {
        return;
    };
    let inbox = registry.join(id, &uid);
    if ws.send(Message::text("j")).await.is_ok() {
        loop {
            tokio::select! {
                biased;
                () = inbox.notify.notified() => {
                    let pending = inbox.drain();
                    let sent = async {
                        for text in pending { ws.feed(Message::Text(text)).await? }
                        ws.flush().await
                    };
                    if sent.await.is_err() { break }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => registry.handle(text.as_str()),
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
    }
    registry.leave(id, &uid);
}

pub async fn serve_axum(port: u16) -> anyhow::Result<()> {
    use axum::extract::ws::{
        Message as AxMessage, Utf8Bytes as AxText, WebSocket, WebSocketUpgrade,
    };
    use axum::extract::{RawQuery, State};
    use axum::response::Response as AxResponse;
    use std::sync::atomic::{AtomicU64, Ordering};

    type Shared = Arc<(Registry<AxText>, AtomicU64)>;

    async fn upgrade(
        ws: WebSocketUpgrade,
        RawQuery(query): RawQuery,
        State(shared): State<Shared>,
    ) -> AxResponse {
        let uid = uid_from_query(query.as_deref());
        ws.read_buffer_size(1024)
            .write_buffer_size(0)
            .on_upgrade(move |socket| run(socket, uid, shared))
    }

    async fn run(mut ws: WebSocket, uid: String, shared: Shared) {
        let id = shared.1.fetch_add(1, Ordering::Relaxed);
        let registry = &shared.0;
        let inbox = registry.join(id, &uid);
        if ws.send(AxMessage::text("j")).await.is_ok() {
            loop {
                tokio::select! {
                    biased;
                    () = inbox.notify.notified() => {
                        let pending = inbox.drain();
                        let sent = async {
                            for text in pending { ws.feed(AxMessage::Text(text)).await? }
                            ws.flush().await
                        };
                        if sent.await.is_err() { break }
                    }
                    msg = ws.recv() => match msg {
                        Some(Ok(AxMessage::Text(text))) => registry.handle(text.as_str()),
                        Some(Ok(_)) => {}
                        _ => break,
                    },
                }
            }
        }
        registry.leave(id, &uid);
    }

    let shared: Shared = Arc::new((Registry::new(), AtomicU64::new(0)));
    let app = axum::Router::new().route("/", axum::routing::get(upgrade)).with_state(shared);
    let listener = listen(port)?;
    eprintln!("axum floor listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_from_the_query_string() {
        assert_eq!(uid_from_query(Some("uid=abc&x=1")), "abc");
        assert_eq!(uid_from_query(Some("x=1")), "");
        assert_eq!(uid_from_query(None), "");
    }
}
