//! Entry points for the fuzz targets in `fuzz/` (cargo feature `fuzzing`; not part of the API).
//!
//! Each function feeds arbitrary bytes to one crate-private parser the way the server does, and
//! panics only when the parser breaks a property the server relies on (a panic is what the
//! fuzzer reports). They add no behaviour: the feature only makes these wrappers visible.
//! `cargo test` runs them over the committed seed corpus (`fuzz/corpus/`), so the seeds stay
//! exercised without cargo-fuzz.

use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use serde_json::Value;

use crate::channel::Payload;
use crate::serializer::{Frame, Serializer, Status};
use crate::transport::frames::{Inbound, Outgoing, Reader, Violation};
use crate::transport::longpoll;

/// Frame size limits the frame target picks from: the smallest ones make every length check
/// fire, the largest is the server's default `TAKO_MAX_FRAME_BYTES`.
const LIMITS: [usize; 6] = [0, 1, 125, 126, 65_536, 1 << 20];

/// What a reader yields, as a comparable list (a violation ends the stream, as on a socket).
type Outcome = Vec<Result<Inbound, Violation>>;

/// Feeds `data` to a fresh [`Reader`] through its `fill` (one read per chunk, as from a socket)
/// and calls `next` between reads. The first byte picks the size limit, the second the chunk
/// sizes; the rest is the client's byte stream.
///
/// Properties: no panic and no allocation beyond the limit (run with `-malloc_limit_mb`); the
/// messages and the violation are the same however the stream is cut into reads (the stream
/// read whole is the reference); every message is within the limit; after a close frame or a
/// violation, reading on (what the server does while it waits for the client's close) with the
/// same limit stays within the limit too.
pub fn frames(data: &[u8]) {
    let [limit_pick, chunk_pick, stream @ ..] = data else { return };
    let limit = LIMITS[*limit_pick as usize % LIMITS.len()];
    let chunk = 1 + (*chunk_pick as usize % 64);

    let whole = read(stream, limit, stream.len().max(1));
    let chunked = read(stream, limit, chunk);
    // A stream cut into reads yields the same messages and violation as the stream whole.
    assert_eq!(whole, chunked, "reads of {chunk} bytes changed the outcome");
    for inbound in whole.iter().flatten() {
        let size = match inbound {
            Inbound::Text(text) => text.len(),
            Inbound::Binary(data) | Inbound::Ping(data) => data.len(),
            Inbound::Pong | Inbound::Close(_) => 0,
        };
        assert!(size <= limit, "a {size}-byte message passed a {limit}-byte limit");
    }
}

/// Reads `stream` in reads of at most `chunk` bytes, draining after each; after a close frame
/// or a violation it goes on reading as the closing handshake does.
fn read(stream: &[u8], limit: usize, chunk: usize) -> Outcome {
    let mut reader = Reader::default();
    let mut out = Vec::new();
    let mut closing = false;
    for piece in stream.chunks(chunk) {
        let mut io = piece;
        while !io.is_empty() {
            match poll_once(reader.fill(&mut io)) {
                Some(Ok(n)) if n > 0 => {}
                other => panic!("a read from memory returned {other:?}"),
            }
        }
        loop {
            match reader.next(limit) {
                Ok(Some(inbound)) => {
                    let close = matches!(inbound, Inbound::Close(_));
                    if !closing {
                        out.push(Ok(inbound));
                    }
                    if close {
                        if closing {
                            return out;
                        }
                        closing = true;
                    }
                }
                Ok(None) => break,
                Err(violation) => {
                    if !closing {
                        out.push(Err(violation));
                    }
                    return out;
                }
            }
        }
    }
    out
}

/// Polls a future once: reads from a byte slice are always ready.
fn poll_once<F: std::future::Future>(future: F) -> Option<F::Output> {
    let mut cx = Context::from_waker(Waker::noop());
    match pin!(future).poll(&mut cx) {
        Poll::Ready(output) => Some(output),
        Poll::Pending => None,
    }
}

/// The longest frame [`outgoing`] makes: a 16-bit length plus 65,536 (the 64-bit header case).
const MAX_OUTGOING_LEN: usize = u16::MAX as usize + 65_536;

/// Writes frames through [`Outgoing`] to a writer that takes a fuzzer-chosen number of bytes
/// per call (0: not ready now), as a slow client's socket does. The first byte is the number of
/// frames (up to 40, so batches of 32 split); each frame then takes three bytes: text or binary
/// and a length (under 512, or 65,536 more for one frame in eight; its bytes are made up); the
/// rest are the write sizes, used in turn.
///
/// Properties: no panic; the bytes written are exactly each frame's server header and payload,
/// in order; `completed()` counts exactly the frames whose last byte was taken.
pub fn outgoing(data: &[u8]) {
    let [count, rest @ ..] = data else { return };
    let count = (*count as usize % 41).min(rest.len() / 3);
    let (specs, sizes) = rest.split_at(count * 3);
    let frames: Vec<Frame> = specs
        .chunks_exact(3)
        .enumerate()
        .map(|(i, spec)| {
            let len = u16::from_be_bytes([spec[1], spec[2]]) as usize;
            // Lengths past 65,535 need the 64-bit header: one frame in eight gets one, the
            // others stay small so that runs stay fast.
            let len = if i % 8 == 3 { len + 65_536 } else { len % 512 }.min(MAX_OUTGOING_LEN);
            if spec[0] % 2 == 0 {
                Frame::Text(String::from_utf8(vec![b'a' + (i % 26) as u8; len]).unwrap().into())
            } else {
                Frame::Binary(Bytes::from(vec![i as u8; len]))
            }
        })
        .collect();
    let mut expected = Vec::new();
    let mut ends = Vec::new();
    for frame in &frames {
        let (opcode, payload) = match frame {
            Frame::Text(text) => (0x81u8, text.as_bytes()),
            Frame::Binary(data) => (0x82u8, &data[..]),
        };
        expected.push(opcode);
        match payload.len() {
            n if n < 126 => expected.push(n as u8),
            n if n <= 0xffff => {
                expected.push(126);
                expected.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                expected.push(127);
                expected.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        expected.extend_from_slice(payload);
        ends.push(expected.len());
    }
    let mut out = Outgoing::new(frames.into_iter().collect());
    let mut io = Trickle { out: Vec::new(), sizes, next: 0 };
    let mut cx = Context::from_waker(Waker::noop());
    // Every size 0 would never finish; a bound on the calls keeps each run short (a big frame
    // written a byte at a time is checked as far as it gets).
    let mut checked = 0;
    for _ in 0..2_000 {
        let done = out.poll_write(&mut cx, &mut io);
        let written = io.out.len();
        assert!(written <= expected.len(), "more bytes written than the frames hold");
        assert_eq!(io.out[checked..], expected[checked..written], "bytes {checked}..{written}");
        checked = written;
        let whole = ends.iter().take_while(|end| **end <= written).count();
        assert_eq!(out.completed(), whole, "frames counted as written vs written whole");
        match done {
            Poll::Ready(Ok(())) => {
                assert_eq!(io.out, expected);
                assert_eq!(out.completed(), ends.len());
                return;
            }
            Poll::Ready(Err(e)) => panic!("an in-memory write failed: {e}"),
            Poll::Pending => {}
        }
    }
}

/// A writer taking `sizes[i]` bytes on its i-th call, cycling (`Pending` for 0); everything
/// when no sizes were given.
struct Trickle<'a> {
    out: Vec<u8>,
    sizes: &'a [u8],
    next: usize,
}

impl Trickle<'_> {
    fn take(&mut self, bufs: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        let mut left = match self.sizes {
            [] => usize::MAX,
            sizes => {
                let size = sizes[self.next % sizes.len()] as usize;
                self.next += 1;
                if size == 0 {
                    return Poll::Pending;
                }
                // Small writes mostly, a large one now and then.
                if size > 250 {
                    size * 1024
                } else {
                    size
                }
            }
        };
        let mut n = 0;
        for buf in bufs {
            let take = buf.len().min(left);
            self.out.extend_from_slice(&buf[..take]);
            left -= take;
            n += take;
        }
        Poll::Ready(Ok(n))
    }
}

impl tokio::io::AsyncWrite for Trickle<'_> {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().take(&[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().take(bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Decodes `data` as a client frame in the dialect its first byte picks (0: v1 text, 1: v2
/// text, 2: v2 binary), then re-encodes what was decoded as the server would answer it and
/// decodes that again.
///
/// Properties: no panic; a malformed frame has a reason; a decoded text message re-encodes
/// (`encode_json`) to a frame that decodes to the same message; a decoded binary message's
/// reply and push encode (its header fields fit) and carry the same fields and bytes.
pub fn serializer(data: &[u8]) {
    let [pick, rest @ ..] = data else { return };
    match pick % 3 {
        0 | 1 => {
            let Ok(text) = std::str::from_utf8(rest) else { return };
            let serializer = if pick % 3 == 0 { Serializer::V1 } else { Serializer::V2 };
            text_round_trip(serializer, text);
        }
        _ => binary_round_trip(Bytes::copy_from_slice(rest)),
    }
}

fn text_round_trip(serializer: Serializer, text: &str) {
    let inbound = match serializer.decode_text(text) {
        Ok(inbound) => inbound,
        Err(malformed) => {
            assert!(!malformed.reason.is_empty());
            return;
        }
    };
    let Payload::Json(payload) = &inbound.payload else {
        panic!("a text frame decoded to a binary payload")
    };
    let frame = serializer.encode_json(
        inbound.join_ref.as_deref(),
        inbound.reference.as_deref(),
        &inbound.topic,
        &inbound.event,
        payload,
    );
    let Frame::Text(encoded) = &frame else { panic!("encode_json made a binary frame") };
    let again = serializer
        .decode_text(encoded.as_str())
        .unwrap_or_else(|m| panic!("re-encoded {encoded:?} does not decode: {}", m.reason));
    assert_eq!(
        (&again.join_ref, &again.reference, &again.topic, &again.event),
        (&inbound.join_ref, &inbound.reference, &inbound.topic, &inbound.event)
    );
    let Payload::Json(again_payload) = &again.payload else { panic!("binary after re-encoding") };
    assert!(same_json(payload, again_payload), "{payload} became {again_payload}");
}

/// Equal JSON, floats within a rounding step (serde_json's default float parsing may differ
/// from the shortest printed form in the last bit; that is not a serializer bug).
fn same_json(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap_or(f64::NAN), y.as_f64().unwrap_or(f64::NAN));
            x == y || (x - y).abs() <= f64::EPSILON * 4.0 * x.abs().max(y.abs())
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same_json(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same_json(v, w)))
        }
        _ => a == b,
    }
}

fn binary_round_trip(data: Bytes) {
    let inbound = match Serializer::V2.decode_binary(data.clone()) {
        Ok(inbound) => inbound,
        Err(malformed) => {
            assert!(!malformed.reason.is_empty());
            return;
        }
    };
    assert!(Serializer::V1.decode_binary(data).is_err(), "v1 accepted a binary frame");
    let Payload::Binary(payload) = &inbound.payload else {
        panic!("a binary frame decoded to a JSON payload")
    };
    let join_ref = inbound.join_ref.as_deref();
    let reply = Serializer::V2
        .encode_reply(
            join_ref,
            inbound.reference.as_deref(),
            &inbound.topic,
            Status::Ok,
            &inbound.payload,
        )
        .expect("the fields of a decoded frame fit a reply");
    let fields = binary_fields(&reply, 1, 4);
    assert_eq!(
        fields.0,
        [join_ref.unwrap_or(""), inbound.reference.as_deref().unwrap_or(""), &inbound.topic, "ok"]
    );
    assert_eq!(&fields.1, payload);
    let push = Serializer::V2
        .encode_push(join_ref, &inbound.topic, &inbound.event, &inbound.payload)
        .expect("the fields of a decoded frame fit a push");
    let fields = binary_fields(&push, 0, 3);
    assert_eq!(fields.0, [join_ref.unwrap_or(""), &inbound.topic, &inbound.event]);
    assert_eq!(&fields.1, payload);
    assert!(Serializer::V1.encode_push(join_ref, &inbound.topic, "e", &inbound.payload).is_none());
}

/// A server binary frame's kind, header strings and payload.
fn binary_fields(frame: &Frame, kind: u8, count: usize) -> (Vec<String>, Bytes) {
    let Frame::Binary(bytes) = frame else { panic!("a binary payload made a text frame") };
    assert_eq!(bytes[0], kind);
    let mut offset = 1 + count;
    let mut fields = Vec::new();
    for &len in &bytes[1..=count] {
        let end = offset + len as usize;
        fields.push(String::from_utf8(bytes[offset..end].to_vec()).expect("UTF-8 header"));
        offset = end;
    }
    (fields, bytes.slice(offset..))
}

/// Parses `data` as a LongPoll POST body (first byte odd: ndjson), then decodes each frame as
/// the session would (text with v2, binary with v2).
///
/// Properties: no panic; at most `MAX_BATCH` frames; an ndjson batch is its non-empty lines in
/// order; a text frame is its line verbatim.
pub fn longpoll_body(data: &[u8]) {
    let [pick, rest @ ..] = data else { return };
    let ndjson = pick % 2 == 1;
    let body = Bytes::copy_from_slice(rest);
    let Ok(frames) = longpoll::parse_body(&body, ndjson) else { return };
    assert!(frames.len() <= longpoll::MAX_BATCH);
    let lines: Vec<&[u8]> = if ndjson {
        rest.split(|b| *b == b'\n')
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        vec![rest.strip_suffix(b"\r").unwrap_or(rest)]
    };
    assert_eq!(frames.len(), lines.len());
    for (frame, line) in frames.into_iter().zip(lines) {
        match frame {
            longpoll::Inbound::Text(text) => {
                assert_eq!(text.as_bytes(), line);
                let _ = Serializer::V2.decode_text(&text);
            }
            longpoll::Inbound::Binary(raw) => {
                let _ = Serializer::V2.decode_binary(raw);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    /// Every file of `fuzz/corpus/<target>/`, which must hold a few.
    fn seeds(target: &str) -> Vec<Vec<u8>> {
        let dir: PathBuf =
            [env!("CARGO_MANIFEST_DIR"), "..", "..", "fuzz", "corpus", target].iter().collect();
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        assert!(seeds.len() >= 3, "{} holds {} seeds", dir.display(), seeds.len());
        seeds
    }

    #[test]
    fn frame_seeds() {
        seeds("frames").iter().for_each(|seed| super::frames(seed));
    }

    #[test]
    fn outgoing_seeds() {
        seeds("outgoing").iter().for_each(|seed| super::outgoing(seed));
    }

    #[test]
    fn serializer_seeds() {
        seeds("serializer").iter().for_each(|seed| super::serializer(seed));
    }

    #[test]
    fn longpoll_seeds() {
        seeds("longpoll_body").iter().for_each(|seed| super::longpoll_body(seed));
    }

    /// The properties are real: a frame over the limit is refused however it is cut.
    #[test]
    fn a_frame_over_the_limit_is_refused_in_every_chunking() {
        // limit 125 (index 2), then a masked binary frame announcing 2^40 bytes.
        let mut data = vec![2, 0, 0x82, 0xff];
        data.extend_from_slice(&(1u64 << 40).to_be_bytes());
        data.extend_from_slice(&[1, 2, 3, 4]);
        for chunk in 0..64u8 {
            data[1] = chunk;
            let out = super::read(&data[2..], 125, 1 + chunk as usize);
            assert_eq!(out, vec![Err(super::Violation::TooBig)]);
        }
    }
}
