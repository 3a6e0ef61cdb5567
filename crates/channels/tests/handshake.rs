//! The opening handshake (RFC 6455 section 4.2), done by the transport itself: request checks
//! and their refusal statuses, the accept key, the `phoenix` subprotocol.

mod common;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const KEY: &str = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

/// Sends a request with these method and header lines; returns the response head, lowercased.
async fn head(server: &Server, method: &str, headers: &str) -> String {
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "{method} /socket/websocket?vsn=2.0.0&token=ok HTTP/1.1\r\nHost: {}\r\n{headers}\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut chunk = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, stream.read(&mut chunk)).await.unwrap().unwrap();
        assert!(n > 0, "closed before a response");
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).to_ascii_lowercase()
}

#[tokio::test]
async fn malformed_upgrades_are_refused_with_axums_statuses() {
    let server = Server::start().await;
    let ok =
        "Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\nSec-WebSocket-Version: 13\r\n";
    let cases = [
        ("POST", format!("{ok}{KEY}Content-Length: 0\r\n"), "http/1.1 405"),
        ("GET", format!("Connection: keep-alive\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n{KEY}"), "http/1.1 400"),
        ("GET", format!("Connection: upgrade\r\nUpgrade: h2c\r\nSec-WebSocket-Version: 13\r\n{KEY}"), "http/1.1 400"),
        ("GET", ok.to_owned(), "http/1.1 400"),
        ("GET", format!("Connection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 8\r\n{KEY}"), "http/1.1 400"),
    ];
    for (method, headers, status) in cases {
        let got = head(&server, method, &headers).await;
        assert!(got.starts_with(status), "{method} {headers:?}: {got}");
    }
    let accepted = head(&server, "GET", &format!("{ok}{KEY}")).await;
    assert!(accepted.starts_with("http/1.1 101"), "{accepted}");
    assert!(
        accepted.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"),
        "{accepted}"
    );
    assert!(!accepted.contains("sec-websocket-protocol"), "{accepted}");
}

#[tokio::test]
async fn the_phoenix_subprotocol_is_answered_when_offered() {
    let server = Server::start().await;
    let client =
        Client::connect_with_protocols(&server.url("vsn=2.0.0&token=ok"), Some("phoenix")).await;
    assert_eq!(client.response_protocol.as_deref(), Some("phoenix"));
    let client = Client::connect(&server.url("vsn=2.0.0&token=ok")).await;
    assert_eq!(client.response_protocol, None);
}
