//! Measures server memory per idle joined socket.
//!
//! `cargo run --release --example idle_memory -- server` prints its port, then answers every line
//! on stdin with `sockets=<n> subscribers=<n> presences=<n> rss_kib=<n>` (a line `trim` first
//! returns the allocator's free memory to the system, on glibc).
//! `cargo run --release --example idle_memory -- clients <port> <n>` opens n v2 sockets, joins each
//! to one of ten topics, prints `ready`, and holds them until killed. Run them as two processes
//! so the clients' memory is not counted.
//!
//! Presence mode: `… -- clients <port> <n> presence` joins every socket to the one topic
//! `lobby` with a key and a nickname (~100 bytes of presence each, as HoloQuest's
//! `notifications`); the server tracks each. A sixth argument says which presence frames the
//! sockets ask for: `full` (the default: every joiner receives the whole state and every socket
//! the diffs), `count` (a `presence_count` at most once a second) or `none` (no frame). The
//! clients keep reading everything and print `ready` once every socket has its join reply and
//! the last diff has had time to arrive.

use std::sync::Arc;

use channels::{
    async_trait, Channel, ChannelContext, ConnectInfo, Connection, Endpoint, EndpointConfig,
    HandleIn, Payload, PresenceFeed, Refusal, SocketHandler, Value,
};
use futures_util::{SinkExt, StreamExt};
use tokio::io::AsyncBufReadExt;
use tokio_tungstenite::tungstenite::Message;

struct Handler(Arc<Room>);
struct Room;

#[async_trait]
impl SocketHandler for Handler {
    type Assigns = ();
    async fn connect(&self, _info: &ConnectInfo) -> Result<Connection<()>, Refusal> {
        Ok(Connection::new(()))
    }
    fn channel(&self, _topic: &str) -> Option<Arc<dyn Channel<()>>> {
        Some(self.0.clone())
    }
}

#[async_trait]
impl Channel<()> for Room {
    async fn join(
        &self,
        _topic: &str,
        payload: Payload,
        ctx: &ChannelContext<()>,
    ) -> Result<Value, Value> {
        if let Payload::Json(Value::Object(params)) = payload {
            if let (Some(Value::String(key)), Some(nickname)) =
                (params.get("key"), params.get("nickname"))
            {
                let meta =
                    serde_json::json!({"nickname": nickname, "online_at": 1_700_000_000_000u64});
                ctx.track(key, meta).map_err(|e| Value::String(e.to_string()))?;
            }
            let feed = match params.get("presence").and_then(Value::as_str) {
                Some("full") => Some(PresenceFeed::Full),
                Some("count") => Some(PresenceFeed::Count),
                _ => None,
            };
            ctx.watch_presence(feed);
        }
        Ok(Value::Null)
    }
    async fn handle_in(
        &self,
        _event: &str,
        _payload: Payload,
        _ctx: &ChannelContext<()>,
    ) -> HandleIn {
        HandleIn::NoReply
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    extern "C" {
        fn malloc_trim(pad: usize) -> i32;
    }
    // SAFETY: glibc's malloc_trim only releases free memory.
    unsafe {
        malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

fn rss_kib() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm.split_whitespace().nth(1).and_then(|p| p.parse().ok()).unwrap_or(0);
    pages * 4
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("server") => server().await,
        Some("clients") if args.get(4).map(String::as_str) == Some("presence") => {
            let feed = args.get(5).map_or("full", String::as_str).to_owned();
            presence_clients(args[2].parse().unwrap(), args[3].parse().unwrap(), feed).await
        }
        Some("clients") => clients(args[2].parse().unwrap(), args[3].parse().unwrap()).await,
        _ => {
            eprintln!("usage: idle_memory server | clients <port> <n> [presence [full|count|none]]")
        }
    }
}

async fn server() {
    let endpoint = Endpoint::new(Handler(Arc::new(Room)), EndpointConfig::default());
    let app = axum::Router::new().nest("/socket", endpoint.routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("port={}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let hub = endpoint.hub();
    let presence = endpoint.presence();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        // `trim`: first hand the allocator's free pages back to the system, to tell memory in
        // use from memory freed but still held by the process.
        if line.trim() == "trim" {
            trim();
        }
        let subscribers: usize =
            (0..10).map(|i| hub.subscriber_count(&format!("room:{i}"))).sum::<usize>()
                + hub.subscriber_count("lobby");
        let presences = presence.count("lobby").0;
        println!(
            "sockets={} subscribers={} presences={} rss_kib={}",
            hub.socket_count(),
            subscribers,
            presences,
            rss_kib()
        );
    }
}

async fn clients(port: u16, n: usize) {
    let url = format!("ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0");
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let join = format!(r#"["1","1","room:{}","phx_join",{{}}]"#, i % 10);
        ws.send(Message::text(join)).await.unwrap();
        let _reply = ws.next().await;
        held.push(ws);
    }
    println!("ready");
    std::future::pending::<()>().await;
}

async fn presence_clients(port: u16, n: usize, feed: String) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let url = format!("ws://127.0.0.1:{port}/socket/websocket?vsn=2.0.0");
    let replies = Arc::new(AtomicUsize::new(0));
    let largest = Arc::new(AtomicUsize::new(0));
    let mut held = Vec::with_capacity(n);
    for i in 0..n {
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str()).await.unwrap();
        let (mut tx, mut rx) = ws.split();
        let key = format!("user{i:06}");
        let nickname = format!("{key} the long-nicknamed adventurer of HoloQuest");
        let join = serde_json::json!(["1", "1", "lobby", "phx_join", {"key": key, "nickname": nickname, "presence": feed}]);
        tx.send(Message::text(join.to_string())).await.unwrap();
        let (replies, largest) = (replies.clone(), largest.clone());
        // Keep reading: a client that stops reading would be disconnected as a slow consumer.
        held.push(tokio::spawn(async move {
            let _tx = tx;
            while let Some(Ok(message)) = rx.next().await {
                let len = message.len();
                largest.fetch_max(len, Ordering::Relaxed);
                if let Message::Text(text) = message {
                    if text.as_str().contains("\"phx_reply\"") {
                        replies.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    while replies.load(Ordering::Relaxed) < n {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Let the last coalesced diffs arrive.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    println!("ready largest_frame={}", largest.load(Ordering::Relaxed));
    std::future::pending::<()>().await;
}
