//! Outbound messages longer than the fragment size go out as RFC 6455 fragments (a first frame
//! with the message's opcode, continuations, FIN on the last) so the server's write buffer stays
//! small; clients see them whole. Read with a raw-frame client to see the fragments.

mod common;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The server's fragment payload size (`transport::websocket::FRAGMENT_BYTES`).
const FRAGMENT_BYTES: usize = 2048;
const BIG: usize = 10_000;

struct WireFrame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket client that shows the frames as they are on the wire.
struct RawClient {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RawClient {
    async fn connect(server: &Server, query: &str) -> RawClient {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        let request = format!(
            "GET /socket/websocket?{query} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            server.addr
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut client = RawClient { stream, buf: Vec::new() };
        let end = loop {
            if let Some(i) = client.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            client.fill().await;
        };
        let head = String::from_utf8(client.buf.drain(..end).collect()).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // RFC 6455 section 1.3's example key and answer.
        assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"), "{head}");
        client
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk)).await.expect("read timed out").unwrap();
        assert!(n > 0, "connection closed");
        self.buf.extend_from_slice(&chunk[..n]);
    }

    async fn need(&mut self, n: usize) {
        while self.buf.len() < n {
            self.fill().await;
        }
    }

    /// A masked client frame with FIN.
    async fn send(&mut self, opcode: u8, payload: &[u8]) {
        let mut frame = vec![0x80 | opcode];
        match payload.len() {
            n if n < 126 => frame.push(0x80 | n as u8),
            n if n <= u16::MAX as usize => {
                frame.push(0x80 | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(0x80 | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        let mask = [0x12, 0x34, 0x56, 0x78];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        self.stream.write_all(&frame).await.unwrap();
    }

    async fn send_json(&mut self, value: Value) {
        self.send(1, value.to_string().as_bytes()).await;
    }

    async fn frame(&mut self) -> WireFrame {
        self.need(2).await;
        let (b0, b1) = (self.buf[0], self.buf[1]);
        assert_eq!(b1 & 0x80, 0, "server frames are not masked");
        let (len, header) = match b1 & 0x7f {
            126 => {
                self.need(4).await;
                (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4)
            }
            127 => {
                self.need(10).await;
                (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
            }
            n => (n as usize, 2),
        };
        self.need(header + len).await;
        let payload = self.buf[header..header + len].to_vec();
        self.buf.drain(..header + len);
        WireFrame { fin: b0 & 0x80 != 0, opcode: b0 & 0x0f, payload }
    }

    /// One whole data message: (opcode, payload, its frames' payload sizes).
    async fn message(&mut self) -> (u8, Vec<u8>, Vec<usize>) {
        let first = self.frame().await;
        assert!(first.opcode == 1 || first.opcode == 2, "a data frame first, got opcode {}", first.opcode);
        let (opcode, mut payload, mut sizes, mut fin) = (first.opcode, first.payload, Vec::new(), first.fin);
        sizes.push(payload.len());
        while !fin {
            let next = self.frame().await;
            assert_eq!(next.opcode, 0, "continuation frames only inside a fragmented message");
            sizes.push(next.payload.len());
            payload.extend_from_slice(&next.payload);
            fin = next.fin;
        }
        (opcode, payload, sizes)
    }

    async fn json(&mut self) -> (Value, Vec<usize>) {
        let (opcode, payload, sizes) = self.message().await;
        assert_eq!(opcode, 1);
        (serde_json::from_slice(&payload).unwrap(), sizes)
    }
}

fn assert_fragmented(sizes: &[usize], total: usize) {
    assert_eq!(sizes.iter().sum::<usize>(), total);
    assert_eq!(sizes.len(), total.div_ceil(FRAGMENT_BYTES), "frames {sizes:?}");
    assert!(sizes.iter().all(|&n| n <= FRAGMENT_BYTES), "frames {sizes:?}");
}

#[tokio::test]
async fn v2_text_bigger_than_a_fragment_is_sent_fragmented_and_arrives_whole() {
    let server = Server::start().await;
    let mut raw = RawClient::connect(&server, "vsn=2.0.0&token=ok").await;
    raw.send_json(json!(["1", "1", "echo", "phx_join", {}])).await;
    let (reply, sizes) = raw.json().await;
    assert_eq!(reply[4]["status"], json!("ok"));
    assert_eq!(sizes.len(), 1, "small messages stay one frame");

    let big = "x".repeat(BIG);
    raw.send_json(json!(["1", "2", "echo", "echo", {"big": big}])).await;
    let (opcode, payload, sizes) = raw.message().await;
    assert_eq!(opcode, 1);
    assert_fragmented(&sizes, payload.len());
    let reply: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(reply, ok_reply("1", "2", "echo", json!({"big": big})));

    // still usable afterwards
    raw.send_json(json!([null, "3", "phoenix", "heartbeat", {}])).await;
    let (reply, sizes) = raw.json().await;
    assert_eq!(reply, ok_reply_null("3"));
    assert_eq!(sizes.len(), 1);
}

fn ok_reply_null(reference: &str) -> Value {
    json!([null, reference, "phoenix", "phx_reply", {"status": "ok", "response": {}}])
}

#[tokio::test]
async fn v1_text_bigger_than_a_fragment_is_sent_fragmented_and_arrives_whole() {
    let server = Server::start().await;
    let mut raw = RawClient::connect(&server, "vsn=1.0.0&token=ok").await;
    raw.send_json(json!({"topic": "echo", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"})).await;
    let (reply, _) = raw.json().await;
    assert_eq!(reply["payload"]["status"], json!("ok"));

    let big = "é".repeat(BIG / 2); // multi-byte characters may be split between fragments
    raw.send_json(json!({"topic": "echo", "event": "echo", "payload": {"big": big}, "ref": "2", "join_ref": "1"}))
        .await;
    let (opcode, payload, sizes) = raw.message().await;
    assert_eq!(opcode, 1);
    assert_fragmented(&sizes, payload.len());
    let reply: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(reply["ref"], json!("2"));
    assert_eq!(reply["payload"], json!({"status": "ok", "response": {"big": big}}));
}

#[tokio::test]
async fn v2_binary_bigger_than_a_fragment_is_sent_fragmented_and_arrives_whole() {
    let server = Server::start().await;
    let mut raw = RawClient::connect(&server, "vsn=2.0.0&token=ok").await;
    raw.send_json(json!(["1", "1", "room:bin", "phx_join", {}])).await;
    raw.json().await;
    let data: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    raw.send(2, &binary_push("1", "22", "room:bin", "echo", &data)).await;
    let (opcode, payload, sizes) = raw.message().await;
    assert_eq!(opcode, 2);
    assert_fragmented(&sizes, payload.len());
    let mut expected = vec![1u8, 1, 2, 8, 2];
    expected.extend_from_slice(b"122room:binok");
    expected.extend_from_slice(&data);
    assert_eq!(payload, expected);
}

#[tokio::test]
async fn a_websocket_library_reassembles_big_messages_on_v1_and_v2() {
    let server = Server::start().await;
    let big = "y".repeat(BIG * 3);
    let mut v2 = server.v2("").await;
    v2.join("echo", "1").await;
    v2.send(json!(["1", "2", "echo", "echo", {"big": big}])).await;
    assert_eq!(v2.json().await, ok_reply("1", "2", "echo", json!({"big": big})));

    let mut v1 = server.v1("").await;
    v1.send(json!({"topic": "echo", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"})).await;
    v1.json().await;
    v1.send(json!({"topic": "echo", "event": "echo", "payload": {"big": big}, "ref": "2", "join_ref": "1"})).await;
    let reply = v1.json().await;
    assert_eq!(reply["payload"], json!({"status": "ok", "response": {"big": big}}));
}
