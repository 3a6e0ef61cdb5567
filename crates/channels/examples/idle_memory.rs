//! Measures server memory per idle joined socket.
//!
//! `cargo run --release --example idle_memory -- server` prints its port, then answers every line
//! on stdin with `sockets=<n> subscribers=<n> rss_kib=<n>`.
//! `cargo run --release --example idle_memory -- clients <port> <n>` opens n v2 sockets, joins each
//! to one of ten topics, prints `ready`, and holds them until killed. Run them as two processes
//! so the clients' memory is not counted.

use std::sync::Arc;

use channels::{
    async_trait, Channel, ChannelContext, ConnectInfo, Connection, Endpoint, EndpointConfig, HandleIn, Payload,
    Refusal, SocketHandler, Value,
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
    async fn join(&self, _topic: &str, _payload: Payload, _ctx: &ChannelContext<()>) -> Result<Value, Value> {
        Ok(Value::Null)
    }
    async fn handle_in(&self, _event: &str, _payload: Payload, _ctx: &ChannelContext<()>) -> HandleIn {
        HandleIn::NoReply
    }
}

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
        Some("clients") => clients(args[2].parse().unwrap(), args[3].parse().unwrap()).await,
        _ => eprintln!("usage: idle_memory server | clients <port> <n>"),
    }
}

async fn server() {
    let endpoint = Endpoint::new(Handler(Arc::new(Room)), EndpointConfig::default());
    let app = axum::Router::new().nest("/socket", endpoint.routes());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    println!("port={}", listener.local_addr().unwrap().port());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let hub = endpoint.hub();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(_)) = lines.next_line().await {
        let subscribers: usize = (0..10).map(|i| hub.subscriber_count(&format!("room:{i}"))).sum();
        println!("sockets={} subscribers={} rss_kib={}", hub.socket_count(), subscribers, rss_kib());
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
