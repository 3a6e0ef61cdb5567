//! The ballast's WebSocket client, cheap per socket: the upgrade request and the masked join
//! frame are built up front, each written at once, the `101` is checked by its status line
//! only, server frames are read without a WebSocket library (no per-message allocation, no
//! UTF-8 pass after the join), and nothing is ever answered. A socket counts as joined when
//! the server's join reply (`Proto::handshake`, the same check as `gen::open`: status "ok") has
//! been read.
//!
//! The join frame waits for the `101`, as RFC 6455 (4.1) asks of a client and as browsers do:
//! sent right behind the request, the server would find it in the buffer of the request (less
//! work than a real client causes; tungstenite's server refuses it outright).

use std::net::SocketAddr;

use anyhow::{bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::gen::{source_ip, Target};
use crate::proto::Step;

/// Any fixed key does: the client does not check `Sec-WebSocket-Accept` (the `101` is enough).
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
/// Client frames must be masked; the key need not be secret here.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const OP_TEXT: u8 = 0x1;
const OP_CLOSE: u8 = 0x8;
/// Largest response head accepted.
const MAX_HEAD: usize = 8192;
/// Largest server frame accepted (Tako's frames are far smaller: presence frames stay within
/// 16 KiB); a longer announced length is an error rather than a buffer grown to it.
const MAX_FRAME: usize = 16 << 20;

/// One client text frame, masked with `mask`.
pub fn masked_text(payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | OP_TEXT);
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Everything a client sends: the upgrade request, then (after the `101`) its first frames.
#[derive(Debug, Clone)]
pub struct Opening {
    pub request: Vec<u8>,
    /// Each initial frame, masked, one after the other.
    pub frames: Vec<u8>,
}

/// The upgrade request for `path` on `addr` and each of `frames` as a masked text frame.
pub fn opening(addr: SocketAddr, path: &str, frames: &[String]) -> Opening {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {KEY}\r\n\r\n"
    )
    .into_bytes();
    let frames = frames.iter().flat_map(|f| masked_text(f.as_bytes(), MASK)).collect();
    Opening { request, frames }
}

/// The length of the response head at the start of `buf` when it is complete and a `101`;
/// `Ok(None)` while incomplete; an error with the status line otherwise.
pub fn response_head(buf: &[u8]) -> anyhow::Result<Option<usize>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_HEAD {
            bail!("response head over {MAX_HEAD} bytes");
        }
        return Ok(None);
    };
    let status = buf[..end].split(|&b| b == b'\r').next().unwrap_or_default();
    let mut words = status.split(|&b| b == b' ');
    if words.next().is_some_and(|v| v.starts_with(b"HTTP/1.")) && words.next() == Some(b"101") {
        Ok(Some(end + 4))
    } else {
        bail!("upgrade refused: {}", String::from_utf8_lossy(status))
    }
}

/// A server frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    pub opcode: u8,
    /// Where the payload is in the buffer.
    pub payload: std::ops::Range<usize>,
}

impl Frame {
    /// Bytes of the buffer the frame takes, header included.
    pub fn len(&self) -> usize {
        self.payload.end
    }
}

/// The first frame of `buf` (server frames: unmasked, unfragmented); `Ok(None)` while
/// incomplete.
pub fn frame(buf: &[u8]) -> anyhow::Result<Option<Frame>> {
    let [b0, b1, ..] = *buf else { return Ok(None) };
    if b1 & 0x80 != 0 {
        bail!("masked frame from the server");
    }
    let opcode = b0 & 0x0f;
    if b0 & 0x80 == 0 || opcode == 0 {
        bail!("fragmented frame (not supported by the ballast's client)");
    }
    let (len, header) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (u16::from_be_bytes([b[0], b[1]]) as usize, 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10) {
            Some(b) => (u64::from_be_bytes(b.try_into().unwrap()) as usize, 10),
            None => return Ok(None),
        },
        n => (n as usize, 2),
    };
    if len > MAX_FRAME {
        bail!("server frame of {len} bytes (more than {MAX_FRAME})");
    }
    let end = header + len;
    Ok((buf.len() >= end).then_some(Frame { opcode, payload: header..end }))
}

/// Connects from `source_ip(index)`, sends `opening` (its frames once the `101` is read), and
/// reads until the join reply. The stream and what was read past the reply.
pub async fn open(
    target: &Target,
    index: usize,
    uid: &str,
    opening: &Opening,
) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source_ip(index), 0)).context("bind source address")?;
    let mut tcp = socket.connect(target.addr).await.context("connect")?;
    tcp.set_nodelay(true)?;
    tcp.write_all(&opening.request).await.context("upgrade")?;
    let mut buf = Vec::with_capacity(1024);
    let mut upgraded = false;
    loop {
        if tcp.read_buf(&mut buf).await? == 0 {
            bail!("closed during join");
        }
        if !upgraded {
            let Some(head) = response_head(&buf).context("upgrade")? else { continue };
            buf.drain(..head);
            upgraded = true;
            tcp.write_all(&opening.frames).await?;
        }
        while let Some(f) = frame(&buf)? {
            match f.opcode {
                OP_TEXT => {
                    let text = std::str::from_utf8(&buf[f.payload.clone()])?;
                    match target.proto.handshake(text, uid) {
                        Step::Joined => {
                            buf.drain(..f.len());
                            return Ok((tcp, buf));
                        }
                        Step::Send(next) => {
                            tcp.write_all(&masked_text(next.as_bytes(), MASK)).await?
                        }
                        Step::Wait => {}
                        Step::Refused(why) => bail!("join refused: {why}"),
                    }
                }
                OP_CLOSE => bail!("closed during join"),
                _ => {}
            }
            buf.drain(..f.len());
        }
    }
}

/// Reads and drops every frame until the server closes the socket (a close frame or the end
/// of the stream); answers nothing.
pub async fn idle(mut tcp: TcpStream, mut buf: Vec<u8>) {
    loop {
        loop {
            match frame(&buf) {
                Ok(Some(f)) if f.opcode == OP_CLOSE => return,
                Ok(Some(f)) => drop(buf.drain(..f.len())),
                Ok(None) => break,
                Err(_) => return,
            }
        }
        buf.shrink_to(1024);
        match tcp.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload of a client frame, unmasked.
    fn unmask(frame: &[u8]) -> Vec<u8> {
        assert_eq!(frame[0], 0x81);
        assert!(frame[1] & 0x80 != 0, "client frames are masked");
        let (len, at) = match frame[1] & 0x7f {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            127 => (u64::from_be_bytes(frame[2..10].try_into().unwrap()) as usize, 10),
            n => (n as usize, 2),
        };
        let mask = &frame[at..at + 4];
        let payload = &frame[at + 4..];
        assert_eq!(payload.len(), len);
        payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]).collect()
    }

    #[test]
    fn client_frames_are_masked_with_the_right_length() {
        let short = br#"["1","1","notifications","phx_join",{}]"#;
        let f = masked_text(short, MASK);
        assert_eq!(f.len(), 2 + 4 + short.len());
        assert_ne!(&f[6..], short.as_slice());
        assert_eq!(unmask(&f), short);
        let medium = vec![b'x'; 300];
        let f = masked_text(&medium, MASK);
        assert_eq!(f[1], 0x80 | 126);
        assert_eq!(unmask(&f), medium);
        let long = vec![b'y'; 70_000];
        let f = masked_text(&long, MASK);
        assert_eq!(f[1], 0x80 | 127);
        assert_eq!(unmask(&f), long);
    }

    #[test]
    fn opening_is_the_request_then_the_frames() {
        let addr: SocketAddr = "127.0.0.1:4001".parse().unwrap();
        let join = r#"["1","1","notifications","phx_join",{}]"#.to_owned();
        let two = [join.clone(), join.clone()];
        let bytes = opening(addr, "/socket/websocket?vsn=2.0.0&userToken=u", &two);
        assert!(bytes.request.ends_with(b"\r\n\r\n"));
        let head = std::str::from_utf8(&bytes.request).unwrap();
        assert!(head.starts_with("GET /socket/websocket?vsn=2.0.0&userToken=u HTTP/1.1\r\n"));
        assert!(head.contains("\r\nHost: 127.0.0.1:4001\r\n"));
        assert!(head.contains("\r\nUpgrade: websocket\r\n"));
        assert!(head.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        let (first, second) = bytes.frames.split_at(bytes.frames.len() / 2);
        assert_eq!(unmask(first), join.as_bytes());
        assert_eq!(unmask(second), join.as_bytes());
    }

    #[test]
    fn response_heads() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi";
        assert_eq!(response_head(ok).unwrap(), Some(ok.len() - 4));
        assert_eq!(response_head(&ok[..20]).unwrap(), None);
        let refused = b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n";
        let e = response_head(refused).unwrap_err().to_string();
        assert!(e.contains("HTTP/1.1 403 Forbidden"), "{e}");
        assert!(response_head(b"HTTP/1.1 1010 x\r\n\r\n").is_err());
        assert!(response_head(&vec![b'a'; MAX_HEAD + 1]).is_err());
    }

    /// Against a tokio-tungstenite server: the join frame sent behind the request is read,
    /// frames before the reply are skipped, a refusal is an error, the close ends `idle`.
    #[tokio::test]
    async fn joins_a_real_server_and_idles_until_closed() {
        use futures_util::{SinkExt, StreamExt};
        use tokio_tungstenite::tungstenite::Message;

        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            for status in ["ok", "error"] {
                let (tcp, _) = listener.accept().await.unwrap();
                let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
                let join = ws.next().await.unwrap().unwrap().into_text().unwrap();
                assert_eq!(join.as_str(), r#"["1","1","notifications","phx_join",{}]"#);
                ws.send(Message::text(r#"[null,null,"notifications","other",{}]"#)).await.unwrap();
                let reply = format!(
                    r#"["1","1","notifications","phx_reply",{{"status":"{status}","response":{{}}}}]"#
                );
                ws.send(Message::text(reply)).await.unwrap();
                ws.send(Message::text("after")).await.unwrap();
                ws.close(None).await.unwrap();
            }
        });
        let target = Target { proto: crate::proto::Proto::Phoenix, addr, http_base: None };
        let uid = crate::proto::user_id(1);
        let bytes = opening(addr, &target.proto.path(&uid), &target.proto.initial());
        let (tcp, rest) = open(&target, 1, &uid, &bytes).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), idle(tcp, rest))
            .await
            .expect("idle returns once the server closes");
        let refused = open(&target, 2, &uid, &bytes).await.unwrap_err().to_string();
        assert!(refused.contains("join refused"), "{refused}");
    }

    #[test]
    fn server_frames() {
        let reply = br#"["1","1","notifications","phx_reply",{"status":"ok","response":{}}]"#;
        let mut buf = vec![0x81, reply.len() as u8];
        buf.extend_from_slice(reply);
        buf.extend_from_slice(&[0x89, 0x00]); // a ping behind it
        let f = frame(&buf).unwrap().unwrap();
        assert_eq!((f.opcode, f.payload.clone()), (OP_TEXT, 2..2 + reply.len()));
        assert_eq!(&buf[f.payload.clone()], reply.as_slice());
        let ping = frame(&buf[f.len()..]).unwrap().unwrap();
        assert_eq!((ping.opcode, ping.len()), (0x9, 2));
        // Incomplete: no header, half a header, half a payload.
        assert_eq!(frame(&[]).unwrap(), None);
        assert_eq!(frame(&[0x81]).unwrap(), None);
        assert_eq!(frame(&buf[..10]).unwrap(), None);
        // 16- and 64-bit lengths.
        let mut medium = vec![0x81, 126, 0x01, 0x2c];
        medium.extend(vec![b'a'; 300]);
        assert_eq!(frame(&medium).unwrap().unwrap().payload, 4..304);
        assert_eq!(frame(&medium[..3]).unwrap(), None);
        let mut long = vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0];
        long.extend(vec![0; 65_536]);
        assert_eq!(frame(&long).unwrap().unwrap().payload, 10..65_546);
        assert_eq!(frame(&long[..9]).unwrap(), None);
        assert_eq!(frame(&[0x88, 0x00]).unwrap().unwrap().opcode, OP_CLOSE);
        // What the ballast does not take.
        assert!(frame(&[0x81, 0x81, 1, 2, 3, 4, 5]).is_err(), "masked");
        assert!(frame(&[0x01, 0x01, b'a']).is_err(), "first fragment");
        assert!(frame(&[0x80, 0x01, b'a']).is_err(), "continuation");
        let huge = [0x81, 127, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        assert!(frame(&huge).is_err(), "a length past the limit is refused, not waited for");
    }
}
