//! The floor: a raw tokio-tungstenite server with no protocol, doing the same job as the
//! others. Connecting with `?uid=<id>` is joining (the server answers `j`); a text frame
//! `b<body>` is broadcast to every connection; `t<uid> <body>` goes to that uid's connections.
//! One task per socket, a small inbox (mutex'd queue + notify) that broadcasts and targeted
//! frames are pushed into, 1 KiB read buffer and no write buffer: what any protocol on this
//! stack costs at least.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

#[derive(Default)]
struct Inbox {
    queue: Mutex<VecDeque<Utf8Bytes>>,
    notify: Notify,
}

impl Inbox {
    fn push(&self, text: Utf8Bytes) {
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
}

#[derive(Default)]
struct Registry {
    all: Mutex<HashMap<u64, Arc<Inbox>>>,
    by_uid: Mutex<HashMap<String, Vec<(u64, Arc<Inbox>)>>>,
}

pub async fn serve(port: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    let registry = Arc::new(Registry::default());
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
        tokio::spawn(connection(stream, next_id, registry.clone()));
    }
}

async fn connection(stream: TcpStream, id: u64, registry: Arc<Registry>) {
    // Same as axum::serve, which Tako uses: Nagle left on unless FLOOR_NODELAY=1.
    if std::env::var("FLOOR_NODELAY").is_ok_and(|v| v == "1") {
        let _ = stream.set_nodelay(true);
    }
    let mut uid = String::new();
    let config = WebSocketConfig::default().read_buffer_size(1024).write_buffer_size(0);
    let callback = |req: &Request, resp: Response| {
        if let Some(q) = req.uri().query() {
            uid = q.split('&').find_map(|kv| kv.strip_prefix("uid=")).unwrap_or("").to_owned();
        }
        Ok(resp)
    };
    let Ok(mut ws) = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config)).await else {
        return;
    };
    let inbox = Arc::new(Inbox::default());
    registry.all.lock().unwrap().insert(id, inbox.clone());
    registry.by_uid.lock().unwrap().entry(uid.clone()).or_default().push((id, inbox.clone()));
    if ws.send(Message::text("j")).await.is_ok() {
        loop {
            tokio::select! {
                biased;
                () = inbox.notify.notified() => {
                    let pending: Vec<Utf8Bytes> = inbox.queue.lock().unwrap().drain(..).collect();
                    let sent = async {
                        for text in pending { ws.feed(Message::Text(text)).await? }
                        ws.flush().await
                    };
                    if sent.await.is_err() { break }
                }
                msg = ws.next() => match msg {
                    Some(Ok(Message::Text(text))) => handle(&text, &registry),
                    Some(Ok(_)) => {}
                    _ => break,
                },
            }
        }
    }
    registry.all.lock().unwrap().remove(&id);
    let mut by_uid = registry.by_uid.lock().unwrap();
    if let Some(list) = by_uid.get_mut(&uid) {
        list.retain(|(i, _)| *i != id);
        if list.is_empty() {
            by_uid.remove(&uid);
        }
    }
}

fn handle(text: &Utf8Bytes, registry: &Registry) {
    let s = text.as_str();
    if let Some(body) = s.strip_prefix('b') {
        let body = Utf8Bytes::from(body);
        for inbox in registry.all.lock().unwrap().values() {
            inbox.push(body.clone());
        }
    } else if let Some(rest) = s.strip_prefix('t') {
        if let Some((uid, body)) = rest.split_once(' ') {
            let body = Utf8Bytes::from(body);
            if let Some(list) = registry.by_uid.lock().unwrap().get(uid) {
                for (_, inbox) in list {
                    inbox.push(body.clone());
                }
            }
        }
    }
}
