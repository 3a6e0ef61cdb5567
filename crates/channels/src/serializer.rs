//! Phoenix wire formats: v1 JSON objects, v2 JSON arrays and v2 binary frames.
//!
//! This module turns bytes into [`Inbound`] messages and messages into [`Frame`]s; it knows
//! nothing of sockets, channels or queues, so every transport (WebSocket now, LongPoll later)
//! shares it. Decoding never panics: anything a client can send maps to [`Malformed`], which
//! keeps whatever refs could still be read so the session can answer with an error reply.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::payload::Payload;

/// Longest header string (join_ref, ref, topic, event, status) a v2 binary frame can carry.
pub(crate) const MAX_BINARY_HEADER: usize = 255;

const KIND_PUSH: u8 = 0;
const KIND_REPLY: u8 = 1;
const KIND_BROADCAST: u8 = 2;

/// One encoded message, ready for any transport. Cloning shares the bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Text(Utf8Bytes),
    Binary(Bytes),
}

impl Frame {
    /// Bytes of the payload as it goes on the wire (without the WebSocket header).
    pub(crate) fn len(&self) -> usize {
        match self {
            Frame::Text(t) => t.as_str().len(),
            Frame::Binary(b) => b.len(),
        }
    }

    #[cfg(test)]
    pub(crate) fn text(&self) -> &str {
        match self {
            Frame::Text(t) => t.as_str(),
            Frame::Binary(_) => panic!("expected a text frame"),
        }
    }
}

/// Which dialect a socket speaks, chosen once from the `vsn` connect parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Serializer {
    V1,
    V2,
}

impl Serializer {
    /// `vsn` absent or `1.x` → v1, `2.x` → v2, anything else is refused.
    pub(crate) fn from_vsn(vsn: Option<&str>) -> Option<Serializer> {
        match vsn {
            None | Some("1.0.0") => Some(Serializer::V1),
            Some("2.0.0") => Some(Serializer::V2),
            Some(_) => None,
        }
    }

    pub(crate) fn index(self) -> usize {
        match self {
            Serializer::V1 => 0,
            Serializer::V2 => 1,
        }
    }
}

/// A decoded client message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inbound {
    pub join_ref: Option<String>,
    pub reference: Option<String>,
    pub topic: String,
    pub event: String,
    pub payload: Payload,
}

/// A frame that could not be decoded, with whatever could be salvaged for an error reply.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Malformed {
    pub join_ref: Option<String>,
    pub reference: Option<String>,
    pub topic: Option<String>,
    pub reason: &'static str,
    /// Whether `reason` is said in the error reply (else it says "malformed message").
    pub public: bool,
}

impl Malformed {
    fn bare(reason: &'static str) -> Malformed {
        Malformed { reason, ..Malformed::default() }
    }
}

/// Reply status, `"ok"` or `"error"` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    Ok,
    Error,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
        }
    }
}

#[derive(Deserialize)]
struct V1In {
    topic: String,
    event: String,
    payload: Value,
    #[serde(default, rename = "ref")]
    reference: Option<String>,
    #[serde(default)]
    join_ref: Option<String>,
}

#[derive(Serialize)]
struct V1Out<'a, P: Serialize> {
    topic: &'a str,
    event: &'a str,
    payload: P,
    #[serde(rename = "ref")]
    reference: Option<&'a str>,
    join_ref: Option<&'a str>,
}

#[derive(Serialize)]
struct ReplyBody<'a> {
    status: &'a str,
    response: &'a Value,
}

type V2In = (Option<String>, Option<String>, String, String, Value);

/// Longest topic, event, `ref` or `join_ref` a client may send, in bytes: what the binary
/// format can carry (a one-byte length), so every serializer has the same bound.
pub const MAX_FIELD_BYTES: usize = 255;

/// A message whose topic, event or refs are over [`MAX_FIELD_BYTES`] is refused, and no field
/// over the bound is echoed back in the error reply.
fn bounded(msg: Inbound) -> Result<Inbound, Malformed> {
    let long = |s: &Option<String>| s.as_ref().is_some_and(|s| s.len() > MAX_FIELD_BYTES);
    let reason = if msg.topic.len() > MAX_FIELD_BYTES {
        "topic too long"
    } else if msg.event.len() > MAX_FIELD_BYTES {
        "event too long"
    } else if long(&msg.reference) || long(&msg.join_ref) {
        "ref too long"
    } else {
        return Ok(msg);
    };
    let keep = |s: Option<String>| s.filter(|s| s.len() <= MAX_FIELD_BYTES);
    Err(Malformed {
        join_ref: keep(msg.join_ref),
        reference: keep(msg.reference),
        topic: keep(Some(msg.topic)),
        reason,
        public: true,
    })
}

impl Serializer {
    pub(crate) fn decode_text(self, text: &str) -> Result<Inbound, Malformed> {
        self.decode_text_unbounded(text).and_then(bounded)
    }

    fn decode_text_unbounded(self, text: &str) -> Result<Inbound, Malformed> {
        match self {
            Serializer::V2 => match serde_json::from_str::<V2In>(text) {
                Ok((join_ref, reference, topic, event, payload)) => Ok(Inbound {
                    join_ref,
                    reference,
                    topic,
                    event,
                    payload: Payload::Json(payload),
                }),
                Err(_) => Err(salvage_v2(text)),
            },
            Serializer::V1 => match serde_json::from_str::<V1In>(text) {
                Ok(m) => Ok(Inbound {
                    join_ref: m.join_ref,
                    reference: m.reference,
                    topic: m.topic,
                    event: m.event,
                    payload: Payload::Json(m.payload),
                }),
                Err(_) => Err(salvage_v1(text)),
            },
        }
    }

    /// Binary frames exist only in v2, and only kind 0 (push) travels client → server.
    pub(crate) fn decode_binary(self, data: Bytes) -> Result<Inbound, Malformed> {
        if self == Serializer::V1 {
            return Err(Malformed::bare("binary frames need vsn 2.0.0"));
        }
        let Some(&kind) = data.first() else {
            return Err(Malformed::bare("empty binary frame"));
        };
        if kind != KIND_PUSH {
            return Err(Malformed::bare("unknown binary frame kind"));
        }
        if data.len() < 5 {
            return Err(Malformed::bare("short binary header"));
        }
        let lens = [data[1] as usize, data[2] as usize, data[3] as usize, data[4] as usize];
        let mut offset = 5;
        let mut fields: [Option<String>; 4] = Default::default();
        for (i, len) in lens.iter().enumerate() {
            let end = offset + len;
            let Some(raw) = data.get(offset..end) else {
                return Err(Malformed {
                    join_ref: fields[0].clone(),
                    reference: fields[1].clone(),
                    topic: fields[2].clone(),
                    reason: "binary header longer than frame",
                    public: false,
                });
            };
            let Ok(s) = std::str::from_utf8(raw) else {
                return Err(Malformed {
                    join_ref: fields[0].clone(),
                    reference: fields[1].clone(),
                    topic: fields[2].clone(),
                    reason: "binary header is not UTF-8",
                    public: false,
                });
            };
            fields[i] = Some(s.to_owned());
            offset = end;
        }
        let [join_ref, reference, topic, event] = fields;
        Ok(Inbound {
            // The JS client writes refs as strings; an empty one stands for "none".
            join_ref: join_ref.filter(|s| !s.is_empty()),
            reference: reference.filter(|s| !s.is_empty()),
            topic: topic.unwrap_or_default(),
            event: event.unwrap_or_default(),
            payload: Payload::Binary(data.slice(offset..)),
        })
    }

    /// A JSON message with explicit refs (phx_close, phx_error, heartbeat replies...).
    pub(crate) fn encode_json(
        self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Value,
    ) -> Frame {
        let text = match self {
            Serializer::V2 => serde_json::to_string(&(join_ref, reference, topic, event, payload)),
            Serializer::V1 => {
                serde_json::to_string(&V1Out { topic, event, payload, reference, join_ref })
            }
        };
        // Serialising a Value with string keys cannot fail.
        Frame::Text(Utf8Bytes::from(text.unwrap_or_default()))
    }

    /// `phx_reply` to a request. `None` when the payload cannot be expressed in this dialect.
    pub(crate) fn encode_reply(
        self,
        join_ref: Option<&str>,
        reference: Option<&str>,
        topic: &str,
        status: Status,
        response: &Payload,
    ) -> Option<Frame> {
        match response {
            Payload::Json(value) => {
                let body = ReplyBody { status: status.as_str(), response: value };
                let text = match self {
                    Serializer::V2 => {
                        serde_json::to_string(&(join_ref, reference, topic, "phx_reply", body))
                    }
                    Serializer::V1 => serde_json::to_string(&V1Out {
                        topic,
                        event: "phx_reply",
                        payload: body,
                        reference,
                        join_ref,
                    }),
                };
                text.ok().map(|t| Frame::Text(Utf8Bytes::from(t)))
            }
            Payload::Binary(data) => {
                if self == Serializer::V1 {
                    return None;
                }
                let header =
                    [join_ref.unwrap_or(""), reference.unwrap_or(""), topic, status.as_str()];
                binary_frame(KIND_REPLY, &header, data)
            }
        }
    }

    /// A server push on a joined channel: its join_ref and a null ref.
    pub(crate) fn encode_push(
        self,
        join_ref: Option<&str>,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Option<Frame> {
        match payload {
            Payload::Json(value) => Some(self.encode_json(join_ref, None, topic, event, value)),
            Payload::Binary(data) => {
                if self == Serializer::V1 {
                    return None;
                }
                binary_frame(KIND_PUSH, &[join_ref.unwrap_or(""), topic, event], data)
            }
        }
    }

    /// A broadcast: null join_ref and ref.
    pub(crate) fn encode_broadcast(
        self,
        topic: &str,
        event: &str,
        payload: &Payload,
    ) -> Option<Frame> {
        match payload {
            Payload::Json(value) => Some(self.encode_json(None, None, topic, event, value)),
            Payload::Binary(data) => {
                if self == Serializer::V1 {
                    return None;
                }
                binary_frame(KIND_BROADCAST, &[topic, event], data)
            }
        }
    }
}

fn binary_frame(kind: u8, header: &[&str], data: &Bytes) -> Option<Frame> {
    if header.iter().any(|s| s.len() > MAX_BINARY_HEADER) {
        return None;
    }
    let len = 1 + header.len() + header.iter().map(|s| s.len()).sum::<usize>() + data.len();
    let mut buf = BytesMut::with_capacity(len);
    buf.put_u8(kind);
    for s in header {
        buf.put_u8(s.len() as u8);
    }
    for s in header {
        buf.put_slice(s.as_bytes());
    }
    buf.put_slice(data);
    Some(Frame::Binary(buf.freeze()))
}

/// A field salvaged for an error reply; one over the bound is not echoed.
fn opt_string(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str).filter(|s| s.len() <= MAX_FIELD_BYTES).map(str::to_owned)
}

fn salvage_v2(text: &str) -> Malformed {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Malformed::bare("invalid JSON");
    };
    let Some(items) = value.as_array() else {
        return Malformed::bare("expected a JSON array");
    };
    Malformed {
        join_ref: opt_string(items.first()),
        reference: opt_string(items.get(1)),
        topic: opt_string(items.get(2)),
        reason: "malformed message",
        public: false,
    }
}

fn salvage_v1(text: &str) -> Malformed {
    let Ok(value) = serde_json::from_str::<Value>(text) else {
        return Malformed::bare("invalid JSON");
    };
    let Some(map) = value.as_object() else {
        return Malformed::bare("expected a JSON object");
    };
    Malformed {
        join_ref: opt_string(map.get("join_ref")),
        reference: opt_string(map.get("ref")),
        topic: opt_string(map.get("topic")),
        reason: "malformed message",
        public: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn json_of(frame: &Frame) -> Value {
        serde_json::from_str(frame.text()).unwrap()
    }

    #[test]
    fn vsn_selection() {
        assert_eq!(Serializer::from_vsn(None), Some(Serializer::V1));
        assert_eq!(Serializer::from_vsn(Some("1.0.0")), Some(Serializer::V1));
        assert_eq!(Serializer::from_vsn(Some("2.0.0")), Some(Serializer::V2));
        assert_eq!(Serializer::from_vsn(Some("3.0.0")), None);
        assert_eq!(Serializer::from_vsn(Some("")), None);
    }

    #[test]
    fn v2_text_decodes() {
        let m = Serializer::V2.decode_text(r#"["1","2","room:a","phx_join",{"x":1}]"#).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.reference.as_deref(), Some("2"));
        assert_eq!(m.topic, "room:a");
        assert_eq!(m.event, "phx_join");
        assert_eq!(m.payload, Payload::Json(json!({"x":1})));
        let hb = Serializer::V2.decode_text(r#"[null,"5","phoenix","heartbeat",{}]"#).unwrap();
        assert_eq!(hb.join_ref, None);
        assert_eq!(hb.reference.as_deref(), Some("5"));
    }

    #[test]
    fn v2_text_round_trip() {
        let f = Serializer::V2.encode_json(Some("1"), Some("2"), "t", "ev", &json!({"a":[1,2]}));
        let back = Serializer::V2.decode_text(f.text()).unwrap();
        assert_eq!(back.join_ref.as_deref(), Some("1"));
        assert_eq!(back.reference.as_deref(), Some("2"));
        assert_eq!(back.topic, "t");
        assert_eq!(back.event, "ev");
        assert_eq!(back.payload, Payload::Json(json!({"a":[1,2]})));
    }

    #[test]
    fn v1_text_round_trip() {
        let f = Serializer::V1.encode_json(Some("1"), None, "t", "ev", &json!({"a":true}));
        assert_eq!(
            json_of(&f),
            json!({"topic":"t","event":"ev","payload":{"a":true},"ref":null,"join_ref":"1"})
        );
        let back = Serializer::V1.decode_text(f.text()).unwrap();
        assert_eq!(back.join_ref.as_deref(), Some("1"));
        assert_eq!(back.reference, None);
        assert_eq!(back.payload, Payload::Json(json!({"a":true})));
        // join_ref and ref are optional in v1
        let m = Serializer::V1.decode_text(r#"{"topic":"t","event":"e","payload":{}}"#).unwrap();
        assert_eq!((m.join_ref, m.reference), (None, None));
    }

    #[test]
    fn replies_have_status_and_response() {
        let f = Serializer::V2
            .encode_reply(Some("1"), Some("2"), "t", Status::Ok, &Payload::Json(json!({"k":1})))
            .unwrap();
        assert_eq!(
            json_of(&f),
            json!(["1","2","t","phx_reply",{"status":"ok","response":{"k":1}}])
        );
        let f = Serializer::V1
            .encode_reply(None, Some("3"), "phoenix", Status::Error, &Payload::Json(json!({})))
            .unwrap();
        assert_eq!(
            json_of(&f),
            json!({"topic":"phoenix","event":"phx_reply","payload":{"status":"error","response":{}},"ref":"3","join_ref":null})
        );
    }

    #[test]
    fn broadcast_and_push_refs() {
        let b = Serializer::V2.encode_broadcast("t", "e", &Payload::Json(json!(1))).unwrap();
        assert_eq!(json_of(&b), json!([null, null, "t", "e", 1]));
        let p = Serializer::V2.encode_push(Some("9"), "t", "e", &Payload::Json(json!(1))).unwrap();
        assert_eq!(json_of(&p), json!(["9", null, "t", "e", 1]));
    }

    #[test]
    fn binary_push_in_decodes() {
        let mut raw = vec![0u8, 1, 2, 3, 2];
        raw.extend_from_slice(b"1");
        raw.extend_from_slice(b"22");
        raw.extend_from_slice(b"a:b");
        raw.extend_from_slice(b"up");
        raw.extend_from_slice(&[0, 255, 7]);
        let m = Serializer::V2.decode_binary(Bytes::from(raw)).unwrap();
        assert_eq!(m.join_ref.as_deref(), Some("1"));
        assert_eq!(m.reference.as_deref(), Some("22"));
        assert_eq!(m.topic, "a:b");
        assert_eq!(m.event, "up");
        assert_eq!(m.payload, Payload::Binary(Bytes::from_static(&[0, 255, 7])));
    }

    #[test]
    fn binary_out_layouts() {
        let data = Payload::Binary(Bytes::from_static(b"\x01\x02"));
        let Frame::Binary(r) =
            Serializer::V2.encode_reply(Some("1"), Some("22"), "t", Status::Ok, &data).unwrap()
        else {
            panic!()
        };
        assert_eq!(&r[..], b"\x01\x01\x02\x01\x02122tok\x01\x02");
        let Frame::Binary(p) = Serializer::V2.encode_push(Some("1"), "t", "ev", &data).unwrap()
        else {
            panic!()
        };
        assert_eq!(&p[..], b"\x00\x01\x01\x021tev\x01\x02");
        let Frame::Binary(b) = Serializer::V2.encode_broadcast("t", "ev", &data).unwrap() else {
            panic!()
        };
        assert_eq!(&b[..], b"\x02\x01\x02tev\x01\x02");
        // v1 cannot carry binary payloads
        assert!(Serializer::V1.encode_broadcast("t", "ev", &data).is_none());
        assert!(Serializer::V1.encode_push(Some("1"), "t", "ev", &data).is_none());
        assert!(Serializer::V1.encode_reply(None, None, "t", Status::Ok, &data).is_none());
        // header strings are limited to 255 bytes
        let long = "x".repeat(256);
        assert!(Serializer::V2.encode_broadcast(&long, "ev", &data).is_none());
        assert!(Serializer::V2.encode_broadcast(&"x".repeat(255), "ev", &data).is_some());
    }

    #[test]
    fn malformed_text_frames() {
        let cases_v2 = [
            ("", None),
            ("not json", None),
            ("{}", None),
            ("[]", None),
            ("[null]", None),
            (r#"["1","2","t","e"]"#, Some("2")),
            (r#"["1","2","t","e",{},6]"#, Some("2")),
            (r#"["1","2",3,"e",{}]"#, Some("2")),
            (r#"["1","2","t",null,{}]"#, Some("2")),
            (r#"[1,"2","t","e",{}]"#, Some("2")),
            (r#"["1",2,"t","e",{}]"#, None),
            ("\"just a string\"", None),
            ("123", None),
        ];
        for (text, reference) in cases_v2 {
            let err = Serializer::V2.decode_text(text).expect_err(text);
            assert_eq!(err.reference.as_deref(), reference, "{text}");
        }
        let cases_v1 = [
            ("[]", None),
            ("nope", None),
            (r#"{"topic":"t","event":"e","ref":"4"}"#, Some("4")),
            (r#"{"topic":1,"event":"e","payload":{},"ref":"4"}"#, Some("4")),
            (r#"{"topic":"t","event":"e","payload":{},"ref":4}"#, None),
        ];
        for (text, reference) in cases_v1 {
            let err = Serializer::V1.decode_text(text).expect_err(text);
            assert_eq!(err.reference.as_deref(), reference, "{text}");
        }
    }

    #[test]
    fn malformed_binary_frames() {
        let bad: Vec<(Vec<u8>, Option<&str>)> = vec![
            (vec![], None),
            (vec![1, 0, 0, 0, 0], None), // reply kind is server -> client only
            (vec![2, 0, 0], None),       // broadcast kind likewise
            (vec![9, 0, 0, 0, 0], None), // unknown kind
            (vec![0, 0, 0, 0], None),    // short header
            (vec![0, 5, 0, 0, 0, b'a'], None), // join_ref longer than frame
            (vec![0, 1, 1, 9, 0, b'a', b'b', b't'], Some("b")), // topic longer than frame
            (vec![0, 0, 1, 1, 0, 0xff, b't'], None), // ref not UTF-8
            (vec![0, 0, 1, 1, 1, b'r', b't', 0xc3], Some("r")), // event not UTF-8
        ];
        for (raw, reference) in bad {
            let err =
                Serializer::V2.decode_binary(Bytes::from(raw.clone())).expect_err("must fail");
            assert_eq!(err.reference.as_deref(), reference, "{raw:?}");
        }
        assert!(Serializer::V1.decode_binary(Bytes::from_static(&[0, 0, 0, 0, 0])).is_err());
        // empty header strings and empty data are fine
        let m = Serializer::V2.decode_binary(Bytes::from_static(&[0, 0, 0, 0, 0])).unwrap();
        assert_eq!((m.join_ref, m.reference, m.topic.as_str()), (None, None, ""));
    }

    #[test]
    fn fields_over_the_bound_are_refused_and_never_echoed() {
        let long = "t".repeat(MAX_FIELD_BYTES + 1);
        let ok = "t".repeat(MAX_FIELD_BYTES);
        for serializer in [Serializer::V1, Serializer::V2] {
            let frame = |jr: &str, r: &str, topic: &str, event: &str| match serializer {
                Serializer::V2 => json!([jr, r, topic, event, {}]).to_string(),
                Serializer::V1 => {
                    json!({"join_ref": jr, "ref": r, "topic": topic, "event": event, "payload": {}})
                        .to_string()
                }
            };
            assert!(serializer.decode_text(&frame("1", "2", &ok, &ok)).is_ok());
            let bad = serializer.decode_text(&frame("1", "2", &long, "phx_join")).unwrap_err();
            assert_eq!((bad.reason, bad.public, bad.topic), ("topic too long", true, None));
            assert_eq!(bad.reference.as_deref(), Some("2"));
            let bad = serializer.decode_text(&frame("1", "2", "room", &long)).unwrap_err();
            assert_eq!(bad.reason, "event too long");
            let bad = serializer.decode_text(&frame("1", &long, "room", "e")).unwrap_err();
            assert_eq!((bad.reason, bad.reference), ("ref too long", None));
            // Salvaged for a reply from a malformed frame: a long ref is not echoed either.
            let bad = serializer
                .decode_text(&frame("1", &long, "room", "e").replace("{}", "["))
                .unwrap_err();
            assert_eq!(bad.reference, None);
        }
    }
}
