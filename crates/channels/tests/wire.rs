//! The WebSocket wire as RFC 6455 says, seen with a raw-frame client: outbound messages go out
//! whole (one frame with FIN, whatever their size), inbound fragments are reassembled, pings are
//! answered, and frames that break the protocol are answered with the close code the RFC names.

mod common;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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
        let head =
            String::from_utf8(client.buf.drain(..end).collect()).unwrap().to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 101"), "{head}");
        // RFC 6455 section 1.3's example key and answer.
        assert!(head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=\r\n"), "{head}");
        client
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("read timed out")
            .unwrap();
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
        self.send_frame(true, opcode, payload).await
    }

    /// A masked client frame.
    async fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        let mut frame = vec![if fin { 0x80 } else { 0 } | opcode];
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
        assert!(
            first.opcode == 1 || first.opcode == 2,
            "a data frame first, got opcode {}",
            first.opcode
        );
        let (opcode, mut payload, mut sizes, mut fin) =
            (first.opcode, first.payload, Vec::new(), first.fin);
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

fn assert_whole(sizes: &[usize], total: usize) {
    assert_eq!(sizes, [total], "one frame per message");
}

impl RawClient {
    /// The server's close frame: (code, reason); then the server closes the connection.
    async fn close_frame(&mut self) -> (u16, String) {
        loop {
            let frame = self.frame().await;
            if frame.opcode == 8 {
                let code = u16::from_be_bytes([frame.payload[0], frame.payload[1]]);
                return (code, String::from_utf8(frame.payload[2..].to_vec()).unwrap());
            }
        }
    }

    async fn closed(&mut self) {
        let mut chunk = [0u8; 64];
        let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
            .await
            .expect("server did not close");
        assert!(matches!(n, Ok(0) | Err(_)), "expected the end of the stream, got {n:?}");
    }
}

#[tokio::test]
async fn v2_big_text_is_sent_as_one_frame() {
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
    assert_whole(&sizes, payload.len());
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
async fn v1_big_text_is_sent_as_one_frame() {
    let server = Server::start().await;
    let mut raw = RawClient::connect(&server, "vsn=1.0.0&token=ok").await;
    raw.send_json(
        json!({"topic": "echo", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}),
    )
    .await;
    let (reply, _) = raw.json().await;
    assert_eq!(reply["payload"]["status"], json!("ok"));

    let big = "é".repeat(BIG / 2);
    raw.send_json(json!({"topic": "echo", "event": "echo", "payload": {"big": big}, "ref": "2", "join_ref": "1"}))
        .await;
    let (opcode, payload, sizes) = raw.message().await;
    assert_eq!(opcode, 1);
    assert_whole(&sizes, payload.len());
    let reply: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(reply["ref"], json!("2"));
    assert_eq!(reply["payload"], json!({"status": "ok", "response": {"big": big}}));
}

#[tokio::test]
async fn v2_big_binary_is_sent_as_one_frame() {
    let server = Server::start().await;
    let mut raw = RawClient::connect(&server, "vsn=2.0.0&token=ok").await;
    raw.send_json(json!(["1", "1", "room:bin", "phx_join", {}])).await;
    raw.json().await;
    let data: Vec<u8> = (0..BIG).map(|i| (i % 251) as u8).collect();
    raw.send(2, &binary_push("1", "22", "room:bin", "echo", &data)).await;
    let (opcode, payload, sizes) = raw.message().await;
    assert_eq!(opcode, 2);
    assert_whole(&sizes, payload.len());
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
    v1.send(
        json!({"topic": "echo", "event": "phx_join", "payload": {}, "ref": "1", "join_ref": "1"}),
    )
    .await;
    v1.json().await;
    v1.send(json!({"topic": "echo", "event": "echo", "payload": {"big": big}, "ref": "2", "join_ref": "1"})).await;
    let reply = v1.json().await;
    assert_eq!(reply["payload"], json!({"status": "ok", "response": {"big": big}}));
}

#[tokio::test]
async fn fragmented_client_messages_are_reassembled_and_pings_answered_between_fragments() {
    let server = Server::start().await;
    let mut raw = RawClient::connect(&server, "vsn=2.0.0&token=ok").await;
    raw.send_json(json!(["1", "1", "echo", "phx_join", {}])).await;
    raw.json().await;
    let text = json!(["1", "2", "echo", "echo", {"word": "héllo"}]).to_string();
    let (a, b) = text.as_bytes().split_at(text.find('é').unwrap() + 1); // inside a character
    raw.send_frame(false, 1, a).await;
    raw.send(9, b"still there?").await;
    let pong = raw.frame().await;
    assert_eq!((pong.opcode, pong.fin, pong.payload.as_slice()), (10, true, &b"still there?"[..]));
    raw.send_frame(true, 0, b).await;
    let (reply, _) = raw.json().await;
    assert_eq!(reply, ok_reply("1", "2", "echo", json!({"word": "héllo"})));
}

#[tokio::test]
async fn a_client_close_is_echoed_and_the_server_closes_the_connection() {
    let server = Server::start().await;
    let mut raw = RawClient::connect(&server, "vsn=2.0.0&token=ok").await;
    let mut payload = 4001u16.to_be_bytes().to_vec();
    payload.extend_from_slice(b"bye");
    raw.send(8, &payload).await;
    assert_eq!(raw.close_frame().await.0, 4001);
    raw.closed().await;
}

#[tokio::test]
async fn protocol_violations_close_with_the_codes_of_rfc_6455() {
    let server = Server::start().await;
    // A text message that is not UTF-8: 1007.
    let mut raw = RawClient::connect(&server, "vsn=2.0.0&token=ok").await;
    raw.send(1, &[0x5b, 0xc3, 0x28, 0x5d]).await;
    assert_eq!(raw.close_frame().await, (1007, "invalid utf-8".into()));
    raw.closed().await;

    // An unmasked client frame: 1002.
    let mut raw = RawClient::connect(&server, "vsn=2.0.0&token=ok").await;
    raw.stream.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    assert_eq!(raw.close_frame().await, (1002, "unmasked client frame".into()));
    raw.closed().await;

    // A continuation with no message to continue: 1002.
    let mut raw = RawClient::connect(&server, "vsn=2.0.0&token=ok").await;
    raw.send(0, b"x").await;
    assert_eq!(raw.close_frame().await.0, 1002);
    raw.closed().await;
}
