//! What crosses Redis between nodes: one small JSON envelope per message, carrying the
//! delivery (topic, event, payload, …) and the sender's node — nothing per subscriber, and
//! no encoded frames: each node encodes once for its own sockets.

use std::borrow::Cow;

use base64::Engine;
use bytes::Bytes;
use channels::{BusMessage, Payload, PresenceChange, PresenceEntry, SocketRef, TopicMatch};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Node ids are random u64s; JSON numbers lose precision past 2^53, so they travel as hex.
fn node_hex(node: u64) -> String {
    format!("{node:016x}")
}

fn parse_node(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

// What nodes write. `decode` reads it through `Received`; the derived `Deserialize` of
// `Envelope` is kept for the tests, as the decoder `decode` is compared with (`old_decode`).
#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
#[serde(tag = "k")]
enum Wire {
    /// A broadcast to a topic.
    #[serde(rename = "b")]
    Broadcast {
        t: String,
        e: String,
        #[serde(flatten)]
        p: WirePayload,
        #[serde(skip_serializing_if = "Option::is_none", default)]
        x: Option<(String, u64)>,
    },
    /// A broadcast to every topic matching.
    #[serde(rename = "m")]
    Matching {
        m: WireMatch,
        e: String,
        #[serde(flatten)]
        p: WirePayload,
    },
    /// To one user's sockets on matching topics.
    #[serde(rename = "u")]
    User {
        u: String,
        m: WireMatch,
        e: String,
        #[serde(flatten)]
        p: WirePayload,
    },
    /// Close the sockets with this id.
    #[serde(rename = "d")]
    Disconnect { s: String },
    /// An application signal.
    #[serde(rename = "s")]
    Signal { s: String, d: Value },
    /// The sender is alive.
    #[serde(rename = "h")]
    Heartbeat,
    /// The sender is leaving the cluster (clean shutdown).
    #[serde(rename = "bye")]
    Bye,
    /// Everyone: publish your presence shares (sent by a node that just (re)connected).
    #[serde(rename = "sync")]
    Sync,
    /// The sender's presence entries on a topic, replacing what it published before; `s` is
    /// the sender's presence sequence number.
    #[serde(rename = "ps")]
    Share { t: String, s: u64, e: Vec<(String, Map<String, Value>)> },
    /// A change of the sender's presences on a topic: `l` (key, phx_ref) left, then `j` joined.
    /// `s` follows the sequence of the sender's previous share or change: a receiver that sees
    /// a gap asks for shares.
    #[serde(rename = "pc")]
    Change { t: String, s: u64, j: Vec<(String, Map<String, Value>)>, l: Vec<(String, String)> },
}

#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
enum WirePayload {
    /// JSON payload.
    #[serde(rename = "p")]
    Json(Value),
    /// Binary payload, base64.
    #[serde(rename = "b")]
    Binary(String),
}

#[derive(Debug, Serialize, Deserialize)]
enum WireMatch {
    #[serde(rename = "x")]
    Exact(String),
    #[serde(rename = "p")]
    Prefix(String),
    #[serde(rename = "a")]
    Any,
}

#[derive(Debug, Serialize)]
#[cfg_attr(test, derive(Deserialize))]
struct Envelope {
    /// Sender node.
    n: String,
    #[serde(flatten)]
    body: Wire,
}

/// What a node can receive.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Delivery(BusMessage),
    Heartbeat,
    Bye,
    Sync,
    Share { topic: String, seq: u64, entries: Vec<PresenceEntry> },
    Change { topic: String, seq: u64, change: PresenceChange },
}

fn payload_out(payload: &Payload) -> WirePayload {
    match payload {
        Payload::Json(v) => WirePayload::Json(v.clone()),
        Payload::Binary(b) => {
            WirePayload::Binary(base64::engine::general_purpose::STANDARD.encode(b))
        }
    }
}

fn payload_in(payload: WirePayload) -> Option<Payload> {
    match payload {
        WirePayload::Json(v) => Some(Payload::Json(v)),
        WirePayload::Binary(b) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .ok()
            .map(|b| Payload::Binary(Bytes::from(b))),
    }
}

fn match_out(m: &TopicMatch) -> WireMatch {
    match m {
        TopicMatch::Exact(t) => WireMatch::Exact(t.clone()),
        TopicMatch::Prefix(p) => WireMatch::Prefix(p.clone()),
        TopicMatch::Any => WireMatch::Any,
    }
}

fn match_in(m: WireMatch) -> TopicMatch {
    match m {
        WireMatch::Exact(t) => TopicMatch::Exact(t),
        WireMatch::Prefix(p) => TopicMatch::Prefix(p),
        WireMatch::Any => TopicMatch::Any,
    }
}

fn seal(node: u64, body: Wire) -> Vec<u8> {
    serde_json::to_vec(&Envelope { n: node_hex(node), body }).unwrap_or_default()
}

pub fn delivery(node: u64, msg: &BusMessage) -> Vec<u8> {
    let body = match msg {
        BusMessage::Broadcast { topic, event, payload, except } => Wire::Broadcast {
            t: topic.clone(),
            e: event.clone(),
            p: payload_out(payload),
            x: except.map(|r| (node_hex(r.node), r.socket)),
        },
        BusMessage::BroadcastMatching { topics, event, payload } => {
            Wire::Matching { m: match_out(topics), e: event.clone(), p: payload_out(payload) }
        }
        BusMessage::User { user, topics, event, payload } => Wire::User {
            u: user.clone(),
            m: match_out(topics),
            e: event.clone(),
            p: payload_out(payload),
        },
        BusMessage::Disconnect { socket_id } => Wire::Disconnect { s: socket_id.clone() },
        BusMessage::Signal { name, data } => Wire::Signal { s: name.clone(), d: data.clone() },
    };
    seal(node, body)
}

pub fn heartbeat(node: u64) -> Vec<u8> {
    seal(node, Wire::Heartbeat)
}

pub fn bye(node: u64) -> Vec<u8> {
    seal(node, Wire::Bye)
}

pub fn sync(node: u64) -> Vec<u8> {
    seal(node, Wire::Sync)
}

/// This node's entries on `topic` (the entries' own node fields are implied by the sender).
pub fn share(node: u64, seq: u64, topic: &str, entries: &[PresenceEntry]) -> Vec<u8> {
    let e = entries.iter().map(|e| (e.key.clone(), e.meta.clone())).collect();
    seal(node, Wire::Share { t: topic.to_owned(), s: seq, e })
}

/// A change of this node's entries on `topic`.
pub fn change(node: u64, seq: u64, topic: &str, change: &PresenceChange) -> Vec<u8> {
    let j = change.joins.iter().map(|e| (e.key.clone(), e.meta.clone())).collect();
    seal(node, Wire::Change { t: topic.to_owned(), s: seq, j, l: change.leaves.clone() })
}

/// Every key any message has, in one flat struct: read in one pass. (`Envelope`'s own derive,
/// with `flatten` and an internally tagged enum, buffered the whole message into serde's
/// `Content` tree and read it a second time.) The two keys whose type depends on the kind,
/// `e` and `s`, are kept as raw text and read once the kind is known.
#[derive(Deserialize)]
struct Received<'a> {
    #[serde(borrow)]
    n: Cow<'a, str>,
    #[serde(borrow)]
    k: Cow<'a, str>,
    t: Option<String>,
    #[serde(borrow)]
    e: Option<&'a RawValue>,
    #[serde(borrow)]
    s: Option<&'a RawValue>,
    #[serde(default, deserialize_with = "present")]
    p: Option<Value>,
    b: Option<String>,
    x: Option<(Cow<'a, str>, u64)>,
    m: Option<WireMatch>,
    u: Option<String>,
    #[serde(default, deserialize_with = "present")]
    d: Option<Value>,
    j: Option<Entries>,
    l: Option<Vec<(String, String)>>,
}

type Entries = Vec<(String, Map<String, Value>)>;

/// A JSON value that is there, `null` included (a payload or signal may be `null`).
fn present<'de, D: serde::Deserializer<'de>>(value: D) -> Result<Option<Value>, D::Error> {
    Value::deserialize(value).map(Some)
}

impl Received<'_> {
    fn payload(&mut self) -> Option<WirePayload> {
        match (self.p.take(), self.b.take()) {
            (Some(json), _) => Some(WirePayload::Json(json)),
            (None, Some(binary)) => Some(WirePayload::Binary(binary)),
            (None, None) => None,
        }
    }
}

/// A key whose type depends on the message's kind, read as this kind wants it.
fn raw<'a, T: Deserialize<'a>>(value: Option<&'a RawValue>) -> Option<T> {
    serde_json::from_str(value?.get()).ok()
}

/// The sender's node and what it sent; `None` for anything malformed (logged by the caller).
pub fn decode(bytes: &[u8]) -> Option<(u64, Incoming)> {
    // Checked as UTF-8 once, so the parser need not check each string (JSON text is UTF-8:
    // this refuses nothing the parser would take).
    let text = std::str::from_utf8(bytes).ok()?;
    let mut msg: Received = serde_json::from_str(text).ok()?;
    let node = parse_node(&msg.n)?;
    let entries = |entries: Entries| -> Vec<PresenceEntry> {
        entries.into_iter().map(|(key, meta)| PresenceEntry { key, node, meta }).collect()
    };
    let incoming = match &*msg.k {
        "b" => {
            let except = match msg.x.take() {
                Some((n, socket)) => Some(SocketRef { node: parse_node(&n)?, socket }),
                None => None,
            };
            Incoming::Delivery(BusMessage::Broadcast {
                topic: msg.t.take()?,
                event: raw(msg.e)?,
                payload: payload_in(msg.payload()?)?,
                except,
            })
        }
        "m" => Incoming::Delivery(BusMessage::BroadcastMatching {
            topics: match_in(msg.m.take()?),
            event: raw(msg.e)?,
            payload: payload_in(msg.payload()?)?,
        }),
        "u" => Incoming::Delivery(BusMessage::User {
            user: msg.u.take()?,
            topics: match_in(msg.m.take()?),
            event: raw(msg.e)?,
            payload: payload_in(msg.payload()?)?,
        }),
        "d" => Incoming::Delivery(BusMessage::Disconnect { socket_id: raw(msg.s)? }),
        "s" => Incoming::Delivery(BusMessage::Signal { name: raw(msg.s)?, data: msg.d.take()? }),
        "h" => Incoming::Heartbeat,
        "bye" => Incoming::Bye,
        "sync" => Incoming::Sync,
        "ps" => Incoming::Share {
            topic: msg.t.take()?,
            seq: raw(msg.s)?,
            entries: entries(raw(msg.e)?),
        },
        "pc" => Incoming::Change {
            topic: msg.t.take()?,
            seq: raw(msg.s)?,
            change: PresenceChange { joins: entries(msg.j.take()?), leaves: msg.l.take()? },
        },
        _ => return None,
    };
    Some((node, incoming))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn round_trip(msg: BusMessage) {
        let bytes = delivery(0xdead_beef_0123_4567, &msg);
        assert_eq!(decode(&bytes), Some((0xdead_beef_0123_4567, Incoming::Delivery(msg))));
    }

    #[test]
    fn deliveries_round_trip() {
        round_trip(BusMessage::Broadcast {
            topic: "notifications".into(),
            event: "shout".into(),
            payload: Payload::Json(json!({"a": [1, 2]})),
            except: Some(SocketRef { node: u64::MAX, socket: 7 }),
        });
        round_trip(BusMessage::Broadcast {
            topic: "t".into(),
            event: "bin".into(),
            payload: Payload::Binary(Bytes::from_static(&[0, 255, 10])),
            except: None,
        });
        round_trip(BusMessage::BroadcastMatching {
            topics: TopicMatch::Prefix("notifications".into()),
            event: "ping".into(),
            payload: Payload::Json(json!({"msg": "ping"})),
        });
        round_trip(BusMessage::User {
            user: "u1".into(),
            topics: TopicMatch::Any,
            event: "msg".into(),
            payload: Payload::Json(json!({})),
        });
        round_trip(BusMessage::Disconnect { socket_id: "user_socket:x".into() });
        round_trip(BusMessage::Signal { name: "mailbox".into(), data: json!({"user": "u1"}) });
    }

    #[test]
    fn a_broadcast_carries_what_is_needed_and_no_more() {
        let msg = BusMessage::Broadcast {
            topic: "notifications".into(),
            event: "collected-broadcast".into(),
            payload: Payload::Json(json!({"nickname": "Ina"})),
            except: None,
        };
        let text = String::from_utf8(delivery(1, &msg)).unwrap();
        assert_eq!(
            text,
            r#"{"n":"0000000000000001","k":"b","t":"notifications","e":"collected-broadcast","p":{"nickname":"Ina"}}"#
        );
    }

    #[test]
    fn presence_shares_round_trip_with_the_senders_node() {
        let mut meta = Map::new();
        meta.insert("phx_ref".into(), json!("F1"));
        let entries = vec![PresenceEntry { key: "k1".into(), node: 42, meta }];
        assert_eq!(
            decode(&share(42, 3, "notifications", &entries)),
            Some((
                42,
                Incoming::Share { topic: "notifications".into(), seq: 3, entries: entries.clone() }
            ))
        );
        let change = PresenceChange { joins: entries, leaves: vec![("k0".into(), "F0".into())] };
        assert_eq!(
            decode(&super::change(42, 4, "notifications", &change)),
            Some((42, Incoming::Change { topic: "notifications".into(), seq: 4, change }))
        );
        assert_eq!(decode(&heartbeat(9)), Some((9, Incoming::Heartbeat)));
        assert_eq!(decode(&sync(9)), Some((9, Incoming::Sync)));
        assert_eq!(decode(&bye(9)), Some((9, Incoming::Bye)));
    }

    /// Nodes of the old and the new version share a cluster: every kind is written byte for
    /// byte as it always was.
    #[test]
    fn every_kind_is_written_as_before() {
        let text = |bytes: Vec<u8>| String::from_utf8(bytes).unwrap();
        let node = 0xdead_beef_0123_4567;
        let mut meta = Map::new();
        meta.insert("phx_ref".into(), json!("F1"));
        meta.insert("nickname".into(), json!("Ina"));
        let entries = vec![PresenceEntry { key: "k1".into(), node, meta }];
        assert_eq!(
            text(share(node, 3, "notifications", &entries)),
            r#"{"n":"deadbeef01234567","k":"ps","t":"notifications","s":3,"e":[["k1",{"nickname":"Ina","phx_ref":"F1"}]]}"#
        );
        assert_eq!(
            text(share(node, 0, "t", &[])),
            r#"{"n":"deadbeef01234567","k":"ps","t":"t","s":0,"e":[]}"#
        );
        let change = PresenceChange { joins: entries, leaves: vec![("k0".into(), "F0".into())] };
        assert_eq!(
            text(super::change(node, 4, "notifications", &change)),
            r#"{"n":"deadbeef01234567","k":"pc","t":"notifications","s":4,"j":[["k1",{"nickname":"Ina","phx_ref":"F1"}]],"l":[["k0","F0"]]}"#
        );
        assert_eq!(text(heartbeat(9)), r#"{"n":"0000000000000009","k":"h"}"#);
        assert_eq!(text(bye(9)), r#"{"n":"0000000000000009","k":"bye"}"#);
        assert_eq!(text(sync(9)), r#"{"n":"0000000000000009","k":"sync"}"#);
        for (msg, expected) in [
            (
                BusMessage::Broadcast {
                    topic: "t".into(),
                    event: "bin".into(),
                    payload: Payload::Binary(Bytes::from_static(&[0, 255, 10])),
                    except: Some(SocketRef { node: u64::MAX, socket: 7 }),
                },
                r#"{"n":"deadbeef01234567","k":"b","t":"t","e":"bin","b":"AP8K","x":["ffffffffffffffff",7]}"#,
            ),
            (
                BusMessage::BroadcastMatching {
                    topics: TopicMatch::Prefix("room:".into()),
                    event: "ping".into(),
                    payload: Payload::Json(json!({"msg": "ping"})),
                },
                r#"{"n":"deadbeef01234567","k":"m","m":{"p":"room:"},"e":"ping","p":{"msg":"ping"}}"#,
            ),
            (
                BusMessage::BroadcastMatching {
                    topics: TopicMatch::Exact("room:1".into()),
                    event: "ping".into(),
                    payload: Payload::Json(json!(null)),
                },
                r#"{"n":"deadbeef01234567","k":"m","m":{"x":"room:1"},"e":"ping","p":null}"#,
            ),
            (
                BusMessage::User {
                    user: "u1".into(),
                    topics: TopicMatch::Any,
                    event: "msg".into(),
                    payload: Payload::Json(json!({})),
                },
                r#"{"n":"deadbeef01234567","k":"u","u":"u1","m":"a","e":"msg","p":{}}"#,
            ),
            (
                BusMessage::Disconnect { socket_id: "user_socket:x".into() },
                r#"{"n":"deadbeef01234567","k":"d","s":"user_socket:x"}"#,
            ),
            (
                BusMessage::Signal { name: "mailbox".into(), data: json!({"user": "u1"}) },
                r#"{"n":"deadbeef01234567","k":"s","s":"mailbox","d":{"user":"u1"}}"#,
            ),
        ] {
            assert_eq!(text(delivery(node, &msg)), expected);
        }
    }

    /// JSON objects are unordered: a sender may put `n` and `k` anywhere.
    #[test]
    fn keys_come_in_any_order() {
        assert_eq!(
            decode(br#"{"k":"pc","t":"x","s":4,"j":[],"l":[],"n":"01"}"#),
            Some((
                1,
                Incoming::Change {
                    topic: "x".into(),
                    seq: 4,
                    change: PresenceChange { joins: vec![], leaves: vec![] }
                }
            ))
        );
        let mut meta = Map::new();
        meta.insert("a".into(), json!(1));
        assert_eq!(
            decode(br#"{"e":[["k1",{"a":1}]],"s":2,"t":"x","k":"ps","n":"02"}"#),
            Some((
                2,
                Incoming::Share {
                    topic: "x".into(),
                    seq: 2,
                    entries: vec![PresenceEntry { key: "k1".into(), node: 2, meta }]
                }
            ))
        );
        assert_eq!(
            decode(br#"{"x":["03",5],"p":[1],"e":"ev","t":"x","n":"01","k":"b"}"#),
            Some((
                1,
                Incoming::Delivery(BusMessage::Broadcast {
                    topic: "x".into(),
                    event: "ev".into(),
                    payload: Payload::Json(json!([1])),
                    except: Some(SocketRef { node: 3, socket: 5 }),
                })
            ))
        );
        assert_eq!(
            decode(br#"{"p":{},"e":"ev","m":{"x":"t"},"u":"u1","k":"u","n":"01"}"#),
            Some((
                1,
                Incoming::Delivery(BusMessage::User {
                    user: "u1".into(),
                    topics: TopicMatch::Exact("t".into()),
                    event: "ev".into(),
                    payload: Payload::Json(json!({})),
                })
            ))
        );
        assert_eq!(
            decode(br#"{"d":true,"s":"sig","n":"01","k":"s"}"#),
            Some((
                1,
                Incoming::Delivery(BusMessage::Signal { name: "sig".into(), data: json!(true) })
            ))
        );
        assert_eq!(decode(br#"{"k":"h","n":"01"}"#), Some((1, Incoming::Heartbeat)));
    }

    /// Strings with escapes (quotes, backslashes, `\u` escapes, non-ASCII) in keys, metas,
    /// topics, events, and in the object's own keys.
    #[test]
    fn escaped_strings_decode() {
        let mut meta = Map::new();
        meta.insert("nick\"name".into(), json!("O'Neil \"the\\one\" \u{e9}\n"));
        meta.insert("list".into(), json!(["\t", "\u{1f600}"]));
        let entries = vec![PresenceEntry { key: "k\"1\\".into(), node: 7, meta }];
        let topic = "room:\"\u{e9}\\";
        let change =
            PresenceChange { joins: entries.clone(), leaves: vec![("k\"0".into(), "F\\0".into())] };
        assert_eq!(
            decode(&share(7, 1, topic, &entries)),
            Some((7, Incoming::Share { topic: topic.into(), seq: 1, entries }))
        );
        assert_eq!(
            decode(&super::change(7, 2, topic, &change)),
            Some((7, Incoming::Change { topic: topic.into(), seq: 2, change }))
        );
        round_trip(BusMessage::Broadcast {
            topic: topic.into(),
            event: "ev\"\u{1}".into(),
            payload: Payload::Json(json!({"q\"": "\\"})),
            except: None,
        });
        round_trip(BusMessage::User {
            user: "u\"1".into(),
            topics: TopicMatch::Prefix("p\\".into()),
            event: "e".into(),
            payload: Payload::Json(json!("\u{e9}")),
        });
        round_trip(BusMessage::Disconnect { socket_id: "s\"\\".into() });
        // Written by hand: keys and values spelled with `\u` escapes.
        let input = r#"{"\u006e":"\u0030a","\u006b":"\u0070c","t":"\u00e9","s":1,
            "j":[["\"k\"",{"\u00e9":"\ud83d\ude00"}]],"l":[["\\","\/"]]}"#;
        let meta = Map::from_iter([("\u{e9}".to_owned(), json!("\u{1f600}"))]);
        assert_eq!(
            decode(input.as_bytes()),
            Some((
                10,
                Incoming::Change {
                    topic: "\u{e9}".into(),
                    seq: 1,
                    change: PresenceChange {
                        joins: vec![PresenceEntry { key: "\"k\"".into(), node: 10, meta }],
                        leaves: vec![("\\".into(), "/".into())],
                    }
                }
            ))
        );
    }

    /// Beyond what nodes write, still accepted: unknown keys, keys the kind does not use (of
    /// any JSON type but their own key's), `null` payloads, `m` as `"a"` or `{"a":null}`,
    /// whitespace. What the old decoder also took and no node writes is not kept: `k` as a
    /// variant's index, `{"a":{}}` for any topic, two payloads (the first won), a key the
    /// kind does not use given twice or of another type.
    #[test]
    fn what_no_node_writes_but_is_harmless_is_accepted() {
        let matching = |topics| {
            Some((
                1,
                Incoming::Delivery(BusMessage::BroadcastMatching {
                    topics,
                    event: "e".into(),
                    payload: Payload::Json(json!(1)),
                }),
            ))
        };
        let broadcast = |payload| {
            Some((
                1,
                Incoming::Delivery(BusMessage::Broadcast {
                    topic: "t".into(),
                    event: "e".into(),
                    payload,
                    except: None,
                }),
            ))
        };
        let json = |v| Payload::Json(v);
        for (input, expected) in [
            (
                r#"{"n":"01","k":"h","s":"x","e":{},"p":null,"zz":[{"a":-1.5e3}]}"#,
                Some((1, Incoming::Heartbeat)),
            ),
            (r#"{"n":"01","k":"m","m":"a","e":"e","p":1}"#, matching(TopicMatch::Any)),
            (r#"{"n":"01","k":"m","m":{"a":null},"e":"e","p":1}"#, matching(TopicMatch::Any)),
            (r#"{"n":"01","k":"b","t":"t","e":"e","p":1,"b":"AA=="}"#, broadcast(json(json!(1)))),
            (
                r#"{"n":"01","k":"b","t":"t","e":"e","p":1,"x":null,"s":4}"#,
                broadcast(json(json!(1))),
            ),
            (
                r#"{"n":"01","k":"pc","t":"t","s":1,"j":[],"l":[],"e":5,"p":"x"}"#,
                Some((
                    1,
                    Incoming::Change {
                        topic: "t".into(),
                        seq: 1,
                        change: PresenceChange { joins: vec![], leaves: vec![] },
                    },
                )),
            ),
            (
                r#"{"n":"01","k":"s","s":"x","d":null}"#,
                Some((
                    1,
                    Incoming::Delivery(BusMessage::Signal { name: "x".into(), data: json!(null) }),
                )),
            ),
            (" {\"n\" : \"01\" ,\n\"k\":\"h\"} \n", Some((1, Incoming::Heartbeat))),
        ] {
            assert_eq!(decode(input.as_bytes()), expected, "{input}");
        }
    }

    #[test]
    fn malformed_input_is_none() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            b"null",
            br#"["01","h"]"#,
            br#"{"n":"zz","k":"h"}"#,
            br#"{"n":"01","k":"nope"}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","b":"%%%"}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","p":{},"x":["qq",1]}"#,
            // `n` and `k`: missing, twice, of the wrong type, unknown.
            br#"{"k":"h"}"#,
            br#"{"n":"01"}"#,
            br#"{"n":1,"k":"h"}"#,
            br#"{"n":"01","n":"01","k":"h"}"#,
            br#"{"n":"01","k":"h","k":"h"}"#,
            br#"{"n":"01","k":"H"}"#,
            br#"{"n":"01","k":10}"#,
            br#"{"n":"01","k":-1}"#,
            br#"{"n":"01","k":true}"#,
            br#"{"n":"01","k":["h"]}"#,
            br#"{"n":"01","k":null}"#,
            br#"{"n":"01","k":"h"} x"#,
            br#"{"n":"01","k":"h",}"#,
            // Missing fields, kind by kind.
            br#"{"n":"01","k":"b","e":"y","p":{}}"#,
            br#"{"n":"01","k":"b","t":"x","p":{}}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y"}"#,
            br#"{"n":"01","k":"m","e":"y","p":{}}"#,
            br#"{"n":"01","k":"m","m":"a","p":{}}"#,
            br#"{"n":"01","k":"m","m":"a","e":"y"}"#,
            br#"{"n":"01","k":"u","m":"a","e":"y","p":{}}"#,
            br#"{"n":"01","k":"u","u":"u","e":"y","p":{}}"#,
            br#"{"n":"01","k":"d"}"#,
            br#"{"n":"01","k":"s","s":"x"}"#,
            br#"{"n":"01","k":"s","d":{}}"#,
            br#"{"n":"01","k":"ps","s":1,"e":[]}"#,
            br#"{"n":"01","k":"ps","t":"x","e":[]}"#,
            br#"{"n":"01","k":"ps","t":"x","s":1}"#,
            br#"{"n":"01","k":"pc","s":1,"j":[],"l":[]}"#,
            br#"{"n":"01","k":"pc","t":"x","j":[],"l":[]}"#,
            br#"{"n":"01","k":"pc","t":"x","s":1,"l":[]}"#,
            br#"{"n":"01","k":"pc","t":"x","s":1,"j":[]}"#,
            // Wrong types: `s` is a string in `d`/`s`, a number in `ps`/`pc`; `e` a string in
            // deliveries, entries in `ps`.
            br#"{"n":"01","k":"pc","t":"x","s":"4","j":[],"l":[]}"#,
            br#"{"n":"01","k":"pc","t":"x","s":-4,"j":[],"l":[]}"#,
            br#"{"n":"01","k":"pc","t":"x","s":4.5,"j":[],"l":[]}"#,
            br#"{"n":"01","k":"pc","t":"x","s":18446744073709551616,"j":[],"l":[]}"#,
            br#"{"n":"01","k":"ps","t":"x","s":"1","e":[]}"#,
            br#"{"n":"01","k":"ps","t":"x","s":1,"e":"y"}"#,
            br#"{"n":"01","k":"d","s":4}"#,
            br#"{"n":"01","k":"s","s":4,"d":{}}"#,
            br#"{"n":"01","k":"b","t":"x","e":[],"p":{}}"#,
            br#"{"n":"01","k":"b","t":1,"e":"y","p":{}}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","b":[]}"#,
            br#"{"n":"01","k":"u","u":null,"m":"a","e":"y","p":{}}"#,
            // Entries and leaves of the wrong shape.
            br#"{"n":"01","k":"ps","t":"x","s":1,"e":[["k"]]}"#,
            br#"{"n":"01","k":"ps","t":"x","s":1,"e":[["k",{},1]]}"#,
            br#"{"n":"01","k":"ps","t":"x","s":1,"e":[["k",null]]}"#,
            br#"{"n":"01","k":"ps","t":"x","s":1,"e":[["k",[]]]}"#,
            br#"{"n":"01","k":"ps","t":"x","s":1,"e":[[1,{}]]}"#,
            br#"{"n":"01","k":"ps","t":"x","s":1,"e":{}}"#,
            br#"{"n":"01","k":"pc","t":"x","s":1,"j":[],"l":[["k",1]]}"#,
            br#"{"n":"01","k":"pc","t":"x","s":1,"j":{},"l":[]}"#,
            // `m` and `x` of the wrong shape.
            br#"{"n":"01","k":"m","m":"x","e":"y","p":{}}"#,
            br#"{"n":"01","k":"m","m":{},"e":"y","p":{}}"#,
            br#"{"n":"01","k":"m","m":{"x":"t","p":"u"},"e":"y","p":{}}"#,
            br#"{"n":"01","k":"m","m":{"x":"t","x":"t"},"e":"y","p":{}}"#,
            br#"{"n":"01","k":"m","m":{"q":"t"},"e":"y","p":{}}"#,
            br#"{"n":"01","k":"m","m":{"x":1},"e":"y","p":{}}"#,
            br#"{"n":"01","k":"m","m":{"a":[]},"e":"y","p":{}}"#,
            br#"{"n":"01","k":"m","m":{"a":{"b":1}},"e":"y","p":{}}"#,
            br#"{"n":"01","k":"m","m":{"a":1},"e":"y","p":{}}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","p":{},"x":["01"]}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","p":{},"x":["01",-1]}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","p":{},"x":["01",1,2]}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","p":{},"x":{}}"#,
            // A key the message uses, twice.
            br#"{"n":"01","k":"b","t":"x","t":"x","e":"y","p":{}}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","p":{},"x":null,"x":null}"#,
            br#"{"n":"01","k":"pc","t":"x","s":1,"s":1,"j":[],"l":[]}"#,
            // What JSON itself rejects, also under keys the message does not use (the values
            // of unknown keys are skipped: an out-of-range number or a lone surrogate there
            // is not refused).
            br#"{"n":"01","k":"h","z":"\x"}"#,
            b"{\"n\":\"01\",\"k\":\"h\",\"z\":\"\xff\"}",
            b"{\"n\":\"01\",\"k\":\"h\",\"z\":\"\x01\"}",
        ] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }

    /// The decoder as it was before `decode` read a message in one pass: serde's flatten and
    /// internal tagging, which buffer the whole message into serde's `Content` tree and read it
    /// again from there. Kept as the reference `decode` is compared with, and measured against
    /// in `decode_cost`.
    fn old_decode(bytes: &[u8]) -> Option<(u64, Incoming)> {
        let envelope: Envelope = serde_json::from_slice(bytes).ok()?;
        let node = parse_node(&envelope.n)?;
        let entries = |e: Vec<(String, Map<String, Value>)>| {
            e.into_iter().map(|(key, meta)| PresenceEntry { key, node, meta }).collect()
        };
        let incoming = match envelope.body {
            Wire::Broadcast { t, e, p, x } => {
                let except = match x {
                    Some((n, socket)) => Some(SocketRef { node: parse_node(&n)?, socket }),
                    None => None,
                };
                let payload = payload_in(p)?;
                Incoming::Delivery(BusMessage::Broadcast { topic: t, event: e, payload, except })
            }
            Wire::Matching { m, e, p } => Incoming::Delivery(BusMessage::BroadcastMatching {
                topics: match_in(m),
                event: e,
                payload: payload_in(p)?,
            }),
            Wire::User { u, m, e, p } => Incoming::Delivery(BusMessage::User {
                user: u,
                topics: match_in(m),
                event: e,
                payload: payload_in(p)?,
            }),
            Wire::Disconnect { s } => Incoming::Delivery(BusMessage::Disconnect { socket_id: s }),
            Wire::Signal { s, d } => Incoming::Delivery(BusMessage::Signal { name: s, data: d }),
            Wire::Heartbeat => Incoming::Heartbeat,
            Wire::Bye => Incoming::Bye,
            Wire::Sync => Incoming::Sync,
            Wire::Share { t, s, e } => Incoming::Share { topic: t, seq: s, entries: entries(e) },
            Wire::Change { t, s, j, l } => Incoming::Change {
                topic: t,
                seq: s,
                change: PresenceChange { joins: entries(j), leaves: l },
            },
        };
        Some((node, incoming))
    }

    /// xorshift64*: generated cases that reproduce run after run.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn chance(&mut self, percent: usize) -> bool {
            self.below(100) < percent
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[self.below(items.len())]
        }

        fn string(&mut self) -> String {
            const PIECES: [&str; 10] =
                ["a", "room:1", "\"", "\\", "é", "\n", "\u{1}", "😀", "x y", ""];
            (0..self.below(4)).map(|_| *self.pick(&PIECES)).collect()
        }

        fn value(&mut self, depth: usize) -> Value {
            match self.below(if depth == 0 { 6 } else { 8 }) {
                0 => Value::Null,
                1 => Value::Bool(self.chance(50)),
                2 => json!(self.next() >> self.below(64)),
                3 => json!(-(self.below(1000) as i64) - 1),
                4 => json!(self.below(1000) as f64 / 8.0 - 60.0),
                5 => Value::String(self.string()),
                6 => Value::Array((0..self.below(3)).map(|_| self.value(depth - 1)).collect()),
                _ => Value::Object(self.meta(depth - 1)),
            }
        }

        fn meta(&mut self, depth: usize) -> Map<String, Value> {
            (0..self.below(3)).map(|_| (self.string(), self.value(depth))).collect()
        }

        fn topics(&mut self) -> TopicMatch {
            match self.below(3) {
                0 => TopicMatch::Exact(self.string()),
                1 => TopicMatch::Prefix(self.string()),
                _ => TopicMatch::Any,
            }
        }

        fn payload(&mut self) -> Payload {
            if self.chance(20) {
                Payload::Binary((0..self.below(5)).map(|_| self.next() as u8).collect())
            } else {
                Payload::Json(self.value(2))
            }
        }

        /// One message of any kind, as `delivery`, `share`, … write it.
        fn message(&mut self) -> Vec<u8> {
            let node = if self.chance(50) { self.next() } else { self.below(3) as u64 };
            let entries = |rng: &mut Rng| {
                (0..rng.below(4))
                    .map(|_| PresenceEntry { key: rng.string(), node, meta: rng.meta(2) })
                    .collect::<Vec<_>>()
            };
            let msg = match self.below(11) {
                0 => BusMessage::Broadcast {
                    topic: self.string(),
                    event: self.string(),
                    payload: self.payload(),
                    except: self
                        .chance(50)
                        .then(|| SocketRef { node: self.next(), socket: self.next() }),
                },
                1 => BusMessage::BroadcastMatching {
                    topics: self.topics(),
                    event: self.string(),
                    payload: self.payload(),
                },
                2 => BusMessage::User {
                    user: self.string(),
                    topics: self.topics(),
                    event: self.string(),
                    payload: self.payload(),
                },
                3 => BusMessage::Disconnect { socket_id: self.string() },
                4 => BusMessage::Signal { name: self.string(), data: self.value(2) },
                5 => return heartbeat(node),
                6 => return bye(node),
                7 => return sync(node),
                8 => return share(node, self.next(), &self.string(), &entries(self)),
                _ => {
                    let joins = entries(self);
                    let leaves =
                        (0..self.below(3)).map(|_| (self.string(), self.string())).collect();
                    let change = PresenceChange { joins, leaves };
                    return super::change(node, self.next(), &self.string(), &change);
                }
            };
            delivery(node, &msg)
        }

        /// A value to put under a key: of each type some key takes, in each shape serde took.
        fn field(&mut self) -> Value {
            const SHAPES: [&str; 30] = [
                r#""x""#,
                r#""01""#,
                r#""a""#,
                r#""AA==""#,
                r#""%%""#,
                r#""h""#,
                r#""pc""#,
                "4",
                "0",
                "-1",
                "1.5",
                "18446744073709551615",
                "5",
                "null",
                "true",
                "[]",
                "{}",
                r#"["01",1]"#,
                r#"["01"]"#,
                r#"["zz",1]"#,
                r#"[["k",{}]]"#,
                r#"[["k","r"]]"#,
                r#"[["k"]]"#,
                r#"[["k",null]]"#,
                r#"{"a":null}"#,
                r#"{"a":{}}"#,
                r#"{"x":"t"}"#,
                r#"{"p":"t","x":"t"}"#,
                r#"{"a":[]}"#,
                r#"{"q":"t"}"#,
            ];
            if self.chance(20) {
                self.value(2)
            } else {
                serde_json::from_str(self.pick::<&str>(&SHAPES)).unwrap()
            }
        }

        /// `bytes` with its keys in another order, as any JSON writer may put them.
        fn reorder(&mut self, bytes: &[u8]) -> Vec<u8> {
            let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
                unreachable!("every message is an object")
            };
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            for i in (1..entries.len()).rev() {
                entries.swap(i, self.below(i + 1));
            }
            let body: Vec<String> =
                entries.iter().map(|(key, value)| format!("{}:{value}", json!(key))).collect();
            format!("{{{}}}", body.join(",")).into_bytes()
        }

        /// `bytes` with its keys reordered, dropped, repeated, retyped or added, `k` changed,
        /// or its text cut or a byte replaced.
        fn mutate(&mut self, bytes: &[u8]) -> Vec<u8> {
            const KEYS: [&str; 14] =
                ["n", "k", "t", "e", "s", "p", "b", "x", "m", "u", "d", "j", "l", "zz"];
            const KINDS: [&str; 14] = [
                r#""b""#,
                r#""m""#,
                r#""u""#,
                r#""d""#,
                r#""s""#,
                r#""h""#,
                r#""bye""#,
                r#""sync""#,
                r#""ps""#,
                r#""pc""#,
                r#""nope""#,
                "5",
                "9",
                "10",
            ];
            let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(bytes) else {
                unreachable!("every message is an object")
            };
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            if self.chance(70) {
                // Most as nodes write them, `n` and `k` first; the rest in `Map`'s order.
                entries.sort_by_key(|(key, _)| key != "n" && key != "k");
            }
            for _ in 0..self.below(4) {
                let (at, to) = (self.below(entries.len()), self.below(entries.len()));
                match self.below(6) {
                    0 => entries.swap(at, to),
                    1 if entries.len() > 1 => drop(entries.remove(at)),
                    2 => entries.insert(to, entries[at].clone()),
                    3 => entries[at].1 = self.field(),
                    4 => entries.push((self.pick(&KEYS).to_string(), self.field())),
                    _ => {
                        let kind = serde_json::from_str(self.pick::<&str>(&KINDS)).unwrap();
                        match entries.iter_mut().find(|(key, _)| key == "k") {
                            Some(entry) => entry.1 = kind,
                            None => entries.push(("k".into(), kind)),
                        }
                    }
                }
            }
            let body: Vec<String> =
                entries.iter().map(|(key, value)| format!("{}:{value}", json!(key))).collect();
            let mut text = format!("{{{}}}", body.join(",")).into_bytes();
            if self.chance(5) {
                text.truncate(self.below(text.len()));
            } else if self.chance(5) {
                let at = self.below(text.len());
                text[at] = *self.pick(b"{}[]\",:\\0x\xff");
            }
            text
        }
    }

    /// Messages as nodes write them, in any key order: `decode` reads each as the old decoder
    /// did. Damaged or mistyped ones may be read differently where no node writes them (see
    /// `what_no_node_writes_may_be_read_differently`), but where both decoders accept one,
    /// they agree, except for a message with both payload keys.
    #[test]
    fn decode_agrees_with_the_old_decoder() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let (mut agreed, mut refused) = (0, 0);
        for i in 0..20_000 {
            let written = rng.message();
            let bytes = if i % 2 == 0 { written } else { rng.reorder(&written) };
            let expected = old_decode(&bytes);
            assert!(expected.is_some(), "{}", String::from_utf8_lossy(&bytes));
            assert_eq!(decode(&bytes), expected, "{}", String::from_utf8_lossy(&bytes));
            let damaged = rng.mutate(&bytes);
            let both_payloads = {
                let text = String::from_utf8_lossy(&damaged);
                text.contains(r#""p":"#) && text.contains(r#""b":"#)
            };
            match (decode(&damaged), old_decode(&damaged)) {
                (Some(new), Some(old)) if !both_payloads => {
                    assert_eq!(new, old, "{}", String::from_utf8_lossy(&damaged));
                    agreed += 1;
                }
                (None, _) => refused += 1,
                _ => {}
            }
        }
        // Both answers are common among damaged messages, so both are exercised.
        assert!(agreed > 5_000 && refused > 4_000, "{agreed} agreed, {refused} refused");
    }

    /// Decodes a presence change of 500 joins, 100 heartbeats and 100 broadcasts, `WIRE_ROUNDS`
    /// times (20 by default), with the old decoder if `WIRE_DECODER=old`; `WIRE_KIND=change`,
    /// `heartbeat` or `broadcast` keeps one kind. For instruction counts under callgrind (see
    /// BENCHMARKS.md, "Redis wire decoding"): only `decode_all` is of interest.
    #[test]
    #[ignore]
    fn decode_cost() {
        let var = |name: &str| std::env::var(name).unwrap_or_default();
        let kind = var("WIRE_KIND");
        let wanted = |name: &str| kind.is_empty() || kind == "all" || kind == name;
        let rounds = var("WIRE_ROUNDS").parse().unwrap_or(20);
        let decoder: fn(&[u8]) -> Option<(u64, Incoming)> =
            if var("WIRE_DECODER") == "old" { old_decode } else { decode };
        let mut rng = Rng(42);
        let node = 0x1234_5678_9abc_def0;
        let mut messages = Vec::new();
        if wanted("change") {
            let joins = (0..500)
                .map(|i| {
                    let key = format!(
                        "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                        rng.next() as u32,
                        rng.next() as u16,
                        rng.below(0x1000),
                        rng.below(0x1000),
                        rng.next() >> 16
                    );
                    let mut meta = Map::new();
                    meta.insert("nickname".into(), json!(format!("Nick{}", 1000 + i)));
                    meta.insert("online_at".into(), json!("1733400000000"));
                    meta.insert("phx_ref".into(), json!(format!("F{:x}", rng.next() >> 8)));
                    PresenceEntry { key, node, meta }
                })
                .collect();
            let change = PresenceChange { joins, leaves: vec![] };
            messages.push(super::change(node, 7, "room:lobby", &change));
        }
        if wanted("heartbeat") {
            messages.extend((0..100).map(|i| heartbeat(node + i)));
        }
        if wanted("broadcast") {
            messages.extend((0..100).map(|i| {
                delivery(
                    node,
                    &BusMessage::Broadcast {
                        topic: "room:lobby".into(),
                        event: "new_msg".into(),
                        payload: Payload::Json(json!({"body": format!("hello {i}"), "user": i})),
                        except: (i % 2 == 1).then_some(SocketRef { node, socket: i }),
                    },
                )
            }));
        }
        let bytes: usize = messages.iter().map(Vec::len).sum();
        let decoded = decode_all(&messages, rounds, decoder);
        assert_eq!(decoded, messages.len() * rounds);
        println!("{} messages ({bytes} bytes) decoded {rounds} times", messages.len());
    }

    #[inline(never)]
    fn decode_all(
        messages: &[Vec<u8>],
        rounds: usize,
        decode: fn(&[u8]) -> Option<(u64, Incoming)>,
    ) -> usize {
        let mut decoded = 0;
        for _ in 0..rounds {
            for message in messages {
                decoded += usize::from(std::hint::black_box(decode(message)).is_some());
            }
        }
        decoded
    }
}
