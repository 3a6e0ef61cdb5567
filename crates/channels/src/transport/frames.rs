//! RFC 6455 framing for the server side of a WebSocket, written for memory: an idle socket holds
//! no buffer at all.
//!
//! tungstenite (which does the opening handshake's key and the frame headers here) keeps a read
//! buffer and a write buffer per socket for its whole life; at tens of thousands of idle sockets
//! those buffers were the largest part of a socket's memory. Here, bytes are read into a buffer
//! on the stack and copied out only when they hold an incomplete frame; outbound frames are
//! written straight from the shared, already-encoded message bytes with vectored writes (a
//! header slice and a payload slice per frame, many frames per system call), so nothing is
//! copied per socket and no write buffer exists.

use std::future::poll_fn;
use std::io::{self, Cursor, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;

use crate::serializer::Frame;

/// Bytes read per system call; on the stack, not kept between reads.
const READ_CHUNK: usize = 4096;
/// Frames handed to one vectored write (two slices each).
const FRAMES_PER_WRITE: usize = 32;
/// A header of a server frame: no mask, so at most 10 bytes.
const MAX_HEADER: usize = 10;

/// One complete message or control frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Inbound {
    Text(String),
    Binary(Bytes),
    Ping(Bytes),
    Pong,
    /// The client's close frame: its status code, if it sent one.
    Close(Option<u16>),
}

/// Why the client's bytes cannot be read as WebSocket frames, with the close code to answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Violation {
    /// 1002: bad header, unmasked frame, bad fragmentation, bad control frame.
    Protocol(&'static str),
    /// 1007: a text message or close reason that is not UTF-8.
    NotUtf8,
    /// 1009: a frame or message over the size limit.
    TooBig,
}

impl Violation {
    pub(crate) fn code(self) -> u16 {
        match self {
            Violation::Protocol(_) => 1002,
            Violation::NotUtf8 => 1007,
            Violation::TooBig => 1009,
        }
    }

    pub(crate) fn reason(self) -> &'static str {
        match self {
            Violation::Protocol(why) => why,
            Violation::NotUtf8 => "invalid utf-8",
            Violation::TooBig => "message too big",
        }
    }
}

/// The inbound half: bytes of an unfinished frame and the parts of an unfinished fragmented
/// message. Both are empty (and unallocated) between messages.
#[derive(Default)]
pub(crate) struct Reader {
    pending: BytesMut,
    /// A fragmented message being assembled: its opcode and the payload so far.
    message: Option<(Data, BytesMut)>,
}

impl Reader {
    /// Read once from `io` into the reader. `Ok(0)` is the end of the stream. Cancel-safe:
    /// what a read returns is stored before this resolves.
    pub(crate) async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<usize> {
        poll_fn(|cx| self.poll_fill(cx, io)).await
    }

    fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut R,
    ) -> Poll<io::Result<usize>> {
        let mut chunk = [0u8; READ_CHUNK];
        let mut buf = ReadBuf::new(&mut chunk);
        ready!(Pin::new(io).poll_read(cx, &mut buf))?;
        self.pending.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    }

    /// The next complete message or control frame in what was read, or `None` until more bytes
    /// arrive. `max_bytes` bounds a frame and a reassembled message.
    pub(crate) fn next(&mut self, max_bytes: usize) -> Result<Option<Inbound>, Violation> {
        loop {
            let Some((header, payload)) = self.frame(max_bytes)? else {
                if self.pending.is_empty() {
                    // Give the memory back: an idle socket keeps no buffer.
                    self.pending = BytesMut::new();
                }
                return Ok(None);
            };
            if let Some(inbound) = self.assemble(header, payload, max_bytes)? {
                return Ok(Some(inbound));
            }
        }
    }

    /// One whole frame, unmasked. The length a header announces is checked against the limit
    /// (for a continuation, what is left of it after the message so far) before anything is
    /// kept for it, and nothing is reserved ahead of the bytes that really arrive: a client that
    /// announces a large frame and sends nothing costs nothing.
    fn frame(&mut self, max_bytes: usize) -> Result<Option<(FrameHeader, BytesMut)>, Violation> {
        let mut cursor = Cursor::new(&self.pending[..]);
        let (header, length) = match FrameHeader::parse(&mut cursor) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(_) => return Err(Violation::Protocol("invalid opcode")),
        };
        if header.rsv1 || header.rsv2 || header.rsv3 {
            return Err(Violation::Protocol("reserved bits set"));
        }
        let Some(mask) = header.mask else {
            return Err(Violation::Protocol("unmasked client frame"));
        };
        if let OpCode::Control(_) = header.opcode {
            if !header.is_final || length > 125 {
                return Err(Violation::Protocol("invalid control frame"));
            }
        }
        let so_far = match (&self.message, header.opcode) {
            (Some((_, message)), OpCode::Data(Data::Continue)) => message.len(),
            _ => 0,
        };
        let allowed = max_bytes.saturating_sub(so_far);
        // Compared as u64: a 64-bit length (up to 2^64 - 1) never reaches a usize conversion
        // or an addition unless it fits the limit.
        if length > allowed as u64 {
            return Err(Violation::TooBig);
        }
        let (start, length) = (cursor.position() as usize, length as usize);
        if self.pending.len() - start < length {
            return Ok(None);
        }
        let _ = self.pending.split_to(start);
        let mut payload = self.pending.split_to(length);
        if self.pending.is_empty() {
            // What grew to hold this frame is not kept once it is out.
            self.pending = BytesMut::new();
        }
        unmask(&mut payload, mask);
        Ok(Some((header, payload)))
    }

    /// Fold a frame into the message it belongs to; a message or control frame when complete.
    fn assemble(
        &mut self,
        header: FrameHeader,
        payload: BytesMut,
        max_bytes: usize,
    ) -> Result<Option<Inbound>, Violation> {
        match header.opcode {
            OpCode::Control(Control::Ping) => Ok(Some(Inbound::Ping(payload.freeze()))),
            OpCode::Control(Control::Pong) => Ok(Some(Inbound::Pong)),
            OpCode::Control(Control::Close) => {
                close_frame(&payload).map(|code| Some(Inbound::Close(code)))
            }
            OpCode::Control(Control::Reserved(_)) | OpCode::Data(Data::Reserved(_)) => {
                Err(Violation::Protocol("invalid opcode"))
            }
            OpCode::Data(Data::Continue) => {
                let Some((opcode, mut message)) = self.message.take() else {
                    return Err(Violation::Protocol("continuation without a message"));
                };
                if message.len() + payload.len() > max_bytes {
                    return Err(Violation::TooBig);
                }
                message.extend_from_slice(&payload);
                if header.is_final {
                    return data(opcode, message).map(Some);
                }
                self.message = Some((opcode, message));
                Ok(None)
            }
            OpCode::Data(opcode) => {
                if self.message.is_some() {
                    return Err(Violation::Protocol("new message inside a fragmented one"));
                }
                if header.is_final {
                    return data(opcode, payload).map(Some);
                }
                self.message = Some((opcode, payload));
                Ok(None)
            }
        }
    }
}

fn data(opcode: Data, payload: BytesMut) -> Result<Inbound, Violation> {
    match opcode {
        Data::Text => {
            String::from_utf8(payload.to_vec()).map(Inbound::Text).map_err(|_| Violation::NotUtf8)
        }
        _ => Ok(Inbound::Binary(payload.freeze())),
    }
}

/// A close frame's payload: empty, or a status code and a UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<Option<u16>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("invalid close frame")),
        [high, low, reason @ ..] => {
            let code = u16::from_be_bytes([*high, *low]);
            // RFC 6455 section 7.4: codes a peer may send.
            let sendable = matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999);
            if !sendable {
                return Err(Violation::Protocol("invalid close code"));
            }
            std::str::from_utf8(reason).map_err(|_| Violation::NotUtf8)?;
            Ok(Some(code))
        }
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let value = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&value.to_ne_bytes());
    }
    for (byte, key) in chunks.into_remainder().iter_mut().zip(mask) {
        *byte ^= key;
    }
}

/// A control frame the transport writes itself (messages are [`Frame`]s from the outbox).
pub(crate) enum Outbound {
    Pong(Bytes),
    Close(Bytes),
}

impl Outbound {
    /// A close frame with `code` and `reason` (the reason cut to fit a control frame).
    pub(crate) fn close(code: u16, reason: &str) -> Outbound {
        let mut cut = reason.len().min(123);
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        let mut payload = Vec::with_capacity(2 + cut);
        payload.extend_from_slice(&code.to_be_bytes());
        payload.extend_from_slice(&reason.as_bytes()[..cut]);
        Outbound::Close(Bytes::from(payload))
    }
}

/// A batch of frames: usually one (a broadcast reaching an idle socket), held inline.
pub(crate) type Frames<F> = SmallVec<[F; 1]>;

/// What goes out as one WebSocket frame (FIN set, unmasked): its opcode and payload, shared with
/// every other socket it goes to.
pub(crate) trait WireFrame {
    /// Whether frames of this kind come from the socket's outbox (which is told when they are
    /// written), rather than being control frames of the transport's own.
    const FROM_OUTBOX: bool;

    fn parts(&self) -> (OpCode, &[u8]);
}

impl WireFrame for Frame {
    const FROM_OUTBOX: bool = true;

    fn parts(&self) -> (OpCode, &[u8]) {
        match self {
            Frame::Text(text) => (OpCode::Data(Data::Text), text.as_bytes()),
            Frame::Binary(data) => (OpCode::Data(Data::Binary), data),
        }
    }
}

impl WireFrame for Outbound {
    const FROM_OUTBOX: bool = false;

    fn parts(&self) -> (OpCode, &[u8]) {
        match self {
            Outbound::Pong(data) => (OpCode::Control(Control::Pong), data),
            Outbound::Close(data) => (OpCode::Control(Control::Close), data),
        }
    }
}

/// A frame's header, formatted where the caller keeps it.
struct Header {
    bytes: [u8; MAX_HEADER],
    len: usize,
}

impl Header {
    fn of(opcode: OpCode, payload_len: usize) -> Header {
        let mut bytes = [0u8; MAX_HEADER];
        let mut cursor = Cursor::new(&mut bytes[..]);
        let header = FrameHeader { opcode, ..FrameHeader::default() };
        header
            .format(payload_len as u64, &mut cursor)
            .expect("an unmasked header fits in 10 bytes");
        let len = cursor.position() as usize;
        Header { bytes, len }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Frames on their way out, in order: the ones not yet fully written start at `next`, and
/// `written` bytes of that one are out.
pub(crate) struct Outgoing<F> {
    frames: Frames<F>,
    next: usize,
    written: usize,
}

impl<F: WireFrame> Outgoing<F> {
    pub(crate) fn new(frames: Frames<F>) -> Outgoing<F> {
        Outgoing { frames, next: 0, written: 0 }
    }

    pub(crate) fn one(frame: F) -> Outgoing<F> {
        Outgoing::new(smallvec::smallvec![frame])
    }

    /// Frames written whole so far.
    pub(crate) fn completed(&self) -> usize {
        self.next
    }

    fn pending(&self) -> &[F] {
        &self.frames[self.next..]
    }

    /// Gives up on the frames after the one under way (if one is under way, it is still to be
    /// finished), so that a close frame can follow on a frame boundary as soon as possible.
    pub(crate) fn stop_after_current(&mut self) {
        let keep = if self.written > 0 { self.next + 1 } else { self.next };
        self.frames.truncate(keep.min(self.frames.len()));
    }

    /// Write until every frame is out (then flush), with as few system calls as the socket
    /// allows. On `Pending`, what was written is remembered and the next call goes on from there.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &mut self,
        cx: &mut Context<'_>,
        io: &mut W,
    ) -> Poll<io::Result<()>> {
        while !self.pending().is_empty() {
            // Headers and slices live on the stack for this call only.
            let batch = &self.pending()[..self.pending().len().min(FRAMES_PER_WRITE)];
            let headers: [Header; FRAMES_PER_WRITE] = std::array::from_fn(|i| match batch.get(i) {
                Some(frame) => {
                    let (opcode, payload) = frame.parts();
                    Header::of(opcode, payload.len())
                }
                None => Header { bytes: [0; MAX_HEADER], len: 0 },
            });
            let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE * 2];
            let mut count = 0;
            let mut skip = self.written;
            for (frame, header) in batch.iter().zip(&headers) {
                for part in [header.as_slice(), frame.parts().1] {
                    let cut = skip.min(part.len());
                    skip -= cut;
                    let part = &part[cut..];
                    if !part.is_empty() {
                        slices[count] = IoSlice::new(part);
                        count += 1;
                    }
                }
            }
            let n = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices[..count]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(n, &headers);
        }
        Pin::new(&mut *io).poll_flush(cx)
    }

    fn advance(&mut self, mut n: usize, headers: &[Header]) {
        for header in headers {
            let Some(front) = self.pending().first() else { return };
            let left = header.len + front.parts().1.len() - self.written;
            if n < left {
                self.written += n;
                return;
            }
            n -= left;
            self.written = 0;
            self.next += 1;
        }
    }

    /// Write everything. A write dropped before it is done can be started again and goes on
    /// where it stopped; until then a frame may be half sent, so nothing else may be written to
    /// the connection in between.
    pub(crate) async fn write_all<W: AsyncWrite + Unpin>(&mut self, io: &mut W) -> io::Result<()> {
        poll_fn(|cx| self.poll_write(cx, io)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
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
        let mask = [0xa1, 0x02, 0xc3, 0x44];
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    fn read_all(bytes: &[u8]) -> Vec<Result<Inbound, Violation>> {
        let mut reader = Reader::default();
        reader.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        loop {
            match reader.next(MAX) {
                Ok(Some(inbound)) => out.push(Ok(inbound)),
                Ok(None) => return out,
                Err(violation) => {
                    out.push(Err(violation));
                    return out;
                }
            }
        }
    }

    #[test]
    fn masked_text_and_binary_messages() {
        let mut bytes = client_frame(true, 1, "héllo".as_bytes());
        bytes.extend(client_frame(true, 2, &[0, 1, 2, 255]));
        assert_eq!(
            read_all(&bytes),
            vec![
                Ok(Inbound::Text("héllo".into())),
                Ok(Inbound::Binary(Bytes::from_static(&[0, 1, 2, 255])))
            ]
        );
    }

    #[test]
    fn a_message_fed_one_byte_at_a_time_arrives_once_whole() {
        let text = "x".repeat(70_000); // a 64-bit length header
        let bytes = client_frame(true, 1, text.as_bytes());
        let mut reader = Reader::default();
        let mut seen = Vec::new();
        for byte in &bytes {
            reader.pending.extend_from_slice(&[*byte]);
            if let Some(inbound) = reader.next(MAX).unwrap() {
                seen.push(inbound);
            }
        }
        assert_eq!(seen, vec![Inbound::Text(text)]);
        assert_eq!(reader.pending.capacity(), 0, "nothing kept once the message is out");
    }

    #[test]
    fn fragments_are_reassembled_with_control_frames_between_them() {
        let mut bytes = client_frame(false, 1, b"hel");
        bytes.extend(client_frame(true, 9, b"are you there"));
        bytes.extend(client_frame(false, 0, b"l"));
        bytes.extend(client_frame(true, 0, b"o"));
        assert_eq!(
            read_all(&bytes),
            vec![
                Ok(Inbound::Ping(Bytes::from_static(b"are you there"))),
                Ok(Inbound::Text("hello".into()))
            ]
        );
    }

    #[test]
    fn close_frames() {
        assert_eq!(read_all(&client_frame(true, 8, b"")), vec![Ok(Inbound::Close(None))]);
        let mut payload = 1001u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        assert_eq!(
            read_all(&client_frame(true, 8, &payload)),
            vec![Ok(Inbound::Close(Some(1001)))]
        );
        assert_eq!(
            read_all(&client_frame(true, 8, &[3])),
            vec![Err(Violation::Protocol("invalid close frame"))]
        );
        assert_eq!(
            read_all(&client_frame(true, 8, &1005u16.to_be_bytes())),
            vec![Err(Violation::Protocol("invalid close code"))]
        );
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xff);
        assert_eq!(read_all(&client_frame(true, 8, &bad_reason)), vec![Err(Violation::NotUtf8)]);
    }

    #[test]
    fn protocol_violations() {
        let mut unmasked = client_frame(true, 1, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6);
        assert_eq!(read_all(&unmasked), vec![Err(Violation::Protocol("unmasked client frame"))]);

        let mut reserved = client_frame(true, 1, b"hi");
        reserved[0] |= 0x40;
        assert_eq!(read_all(&reserved), vec![Err(Violation::Protocol("reserved bits set"))]);

        assert_eq!(
            read_all(&client_frame(true, 3, b"")),
            vec![Err(Violation::Protocol("invalid opcode"))]
        );
        assert_eq!(
            read_all(&client_frame(true, 0, b"x")),
            vec![Err(Violation::Protocol("continuation without a message"))]
        );
        let mut twice = client_frame(false, 1, b"a");
        twice.extend(client_frame(true, 1, b"b"));
        assert_eq!(
            read_all(&twice),
            vec![Err(Violation::Protocol("new message inside a fragmented one"))]
        );
        assert_eq!(
            read_all(&client_frame(false, 9, b"")),
            vec![Err(Violation::Protocol("invalid control frame"))]
        );
        assert_eq!(
            read_all(&client_frame(true, 9, &[0; 126])),
            vec![Err(Violation::Protocol("invalid control frame"))]
        );
        assert_eq!(read_all(&client_frame(true, 1, &[0xc3, 0x28])), vec![Err(Violation::NotUtf8)]);
    }

    #[test]
    fn size_limit_applies_to_frames_before_buffering_and_to_whole_messages() {
        let mut reader = Reader::default();
        // Only the header of a 2 MiB frame: refused without waiting for its payload.
        reader.pending.extend_from_slice(&client_frame(true, 2, &vec![0; 2 << 20])[..14]);
        assert_eq!(reader.next(MAX), Err(Violation::TooBig));

        let mut fragmented = client_frame(false, 2, &[0; 600]);
        fragmented.extend(client_frame(true, 0, &[0; 600]));
        let mut reader = Reader::default();
        reader.pending.extend_from_slice(&fragmented);
        assert_eq!(reader.next(1000), Err(Violation::TooBig));
    }

    /// A masked binary frame header announcing `length` bytes (64-bit form), no payload.
    fn header_announcing(length: u64) -> Vec<u8> {
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&length.to_be_bytes());
        header.extend_from_slice(&[1, 2, 3, 4]);
        header
    }

    #[test]
    fn announced_lengths_are_refused_before_anything_is_reserved_whatever_the_limit() {
        // The limits a server uses in every state (open, closing): none reserves what a header
        // announces, and lengths past 2^63 neither panic nor wrap.
        for limit in [1000, MAX, usize::MAX / 2, usize::MAX] {
            for length in [1u64 << 40, 1 << 63, u64::MAX] {
                let mut reader = Reader::default();
                reader.pending.extend_from_slice(&header_announcing(length));
                let verdict = reader.next(limit);
                if length > limit as u64 {
                    assert_eq!(verdict, Err(Violation::TooBig), "{length} under {limit}");
                } else {
                    assert_eq!(verdict, Ok(None), "{length} under {limit}: waits for bytes");
                }
                assert!(reader.pending.capacity() < 1024, "nothing reserved for {length}");
            }
        }
        // Within the limit, announced but not sent: still nothing reserved ahead.
        let mut reader = Reader::default();
        reader.pending.extend_from_slice(&header_announcing(MAX as u64));
        assert_eq!(reader.next(MAX), Ok(None));
        assert!(reader.pending.capacity() < 1024);
    }

    #[test]
    fn a_continuation_is_refused_on_its_header_when_the_message_would_pass_the_limit() {
        let mut reader = Reader::default();
        reader.pending.extend_from_slice(&client_frame(false, 2, &[0; 600]));
        assert_eq!(reader.next(1000), Ok(None));
        // Only the header of the next 600-byte fragment: 1,200 in all, refused at once.
        reader.pending.extend_from_slice(&client_frame(true, 0, &[0; 600])[..8]);
        assert_eq!(reader.next(1000), Err(Violation::TooBig));
    }

    fn wire(frame: &impl WireFrame) -> Vec<u8> {
        let (opcode, payload) = frame.parts();
        let mut out = Header::of(opcode, payload.len()).as_slice().to_vec();
        out.extend_from_slice(payload);
        out
    }

    fn text(s: impl Into<String>) -> Frame {
        Frame::Text(s.into().into())
    }

    #[test]
    fn server_frames_are_formatted_unmasked() {
        assert_eq!(wire(&text("hi")), [0x81, 2, b'h', b'i']);
        let long = wire(&Frame::Binary(Bytes::from(vec![7; 300])));
        assert_eq!(long[..4], [0x82, 126, 1, 44]);
        assert_eq!(long.len(), 304);
        let close = wire(&Outbound::close(1009, "message too big"));
        assert_eq!(close[..4], [0x88, 17, 0x03, 0xf1]);
        assert_eq!(&close[4..], b"message too big");
        assert_eq!(wire(&Outbound::Pong(Bytes::from_static(b"p")))[..2], [0x8a, 1]);
        let reason = "é".repeat(100); // cut at a character boundary to fit 125 bytes
        assert_eq!(wire(&Outbound::close(1000, &reason)).len(), 2 + 2 + 122);
    }

    /// Takes at most `limit` bytes per write, to exercise partial writes, and `budget` bytes
    /// in all, then is not ready (as a socket whose client stopped reading).
    struct Trickle {
        out: Vec<u8>,
        limit: usize,
        calls: usize,
        budget: usize,
    }

    impl Trickle {
        fn new(limit: usize, budget: usize) -> Trickle {
            Trickle { out: Vec::new(), limit, calls: 0, budget }
        }
    }

    impl AsyncWrite for Trickle {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.calls += 1;
            let n = buf.len().min(this.limit).min(this.budget);
            if n == 0 {
                return Poll::Pending;
            }
            this.budget -= n;
            this.out.extend_from_slice(&buf[..n]);
            Poll::Ready(Ok(n))
        }
        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.calls += 1;
            let take = this.limit.min(this.budget);
            let mut left = take;
            for buf in bufs {
                let n = buf.len().min(left);
                this.out.extend_from_slice(&buf[..n]);
                left -= n;
            }
            if take - left == 0 {
                return Poll::Pending;
            }
            this.budget -= take - left;
            Poll::Ready(Ok(take - left))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    #[test]
    fn stopping_after_the_current_frame_finishes_it_and_gives_up_the_rest() {
        let frames: Vec<Frame> = (0..4).map(|i| text(format!("{i}{}", "y".repeat(99)))).collect();
        let one = wire(&frames[0]).len();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        // Stalled in the middle of the second frame: that one is finished, the others dropped.
        let mut io = Trickle::new(usize::MAX, one + 10);
        let mut out = Outgoing::new(frames.iter().cloned().collect());
        assert!(out.poll_write(&mut cx, &mut io).is_pending());
        assert_eq!(out.completed(), 1);
        out.stop_after_current();
        io.budget = usize::MAX;
        assert!(matches!(out.poll_write(&mut cx, &mut io), Poll::Ready(Ok(()))));
        assert_eq!(out.completed(), 2);
        let two: Vec<u8> = frames[..2].iter().flat_map(wire).collect();
        assert_eq!(io.out, two);
        // Stalled on a frame boundary: nothing more is written.
        let mut io = Trickle::new(usize::MAX, one);
        let mut out = Outgoing::new(frames.iter().cloned().collect());
        assert!(out.poll_write(&mut cx, &mut io).is_pending());
        out.stop_after_current();
        io.budget = usize::MAX;
        assert!(matches!(out.poll_write(&mut cx, &mut io), Poll::Ready(Ok(()))));
        assert_eq!((out.completed(), io.out.len()), (1, one));
    }

    #[tokio::test]
    async fn frames_survive_partial_writes_in_order() {
        let messages: Vec<String> =
            (0..100).map(|i| format!("message {i} {}", "z".repeat(i * 7))).collect();
        let expected: Vec<u8> = messages.iter().flat_map(|m| wire(&text(m.clone()))).collect();
        for limit in [1, 3, 10, 64, 1 << 20] {
            let mut io = Trickle::new(limit, usize::MAX);
            let mut out = Outgoing::new(messages.iter().cloned().map(text).collect());
            out.write_all(&mut io).await.unwrap();
            assert!(out.pending().is_empty());
            assert_eq!(io.out, expected, "limit {limit}");
            if limit == 1 << 20 {
                assert_eq!(io.calls, 100usize.div_ceil(FRAMES_PER_WRITE), "many frames per write");
            }
        }
    }
}
