//! What crosses Redis between nodes: one small JSON envelope per message, carrying the
//! delivery (topic, event, payload, …) and the sender's node — nothing per subscriber, and
//! no encoded frames: each node encodes once for its own sockets.

use base64::Engine;
use bytes::Bytes;
use channels::{BusMessage, Payload, PresenceChange, PresenceEntry, SocketRef, TopicMatch};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Node ids are random u64s; JSON numbers lose precision past 2^53, so they travel as hex.
fn node_hex(node: u64) -> String {
    format!("{node:016x}")
}

fn parse_node(hex: &str) -> Option<u64> {
    u64::from_str_radix(hex, 16).ok()
}

#[derive(Debug, Serialize, Deserialize)]
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

#[derive(Debug, Serialize, Deserialize)]
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

#[derive(Debug, Serialize, Deserialize)]
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

/// The sender's node and what it sent; `None` for anything malformed (logged by the caller).
pub fn decode(bytes: &[u8]) -> Option<(u64, Incoming)> {
    let envelope: Envelope = serde_json::from_slice(bytes).ok()?;
    let node = parse_node(&envelope.n)?;
    let incoming = match envelope.body {
        Wire::Broadcast { t, e, p, x } => {
            let except = match x {
                Some((n, socket)) => Some(SocketRef { node: parse_node(&n)?, socket }),
                None => None,
            };
            Incoming::Delivery(BusMessage::Broadcast {
                topic: t,
                event: e,
                payload: payload_in(p)?,
                except,
            })
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
        Wire::Share { t, s, e } => Incoming::Share {
            topic: t,
            seq: s,
            entries: e.into_iter().map(|(key, meta)| PresenceEntry { key, node, meta }).collect(),
        },
        Wire::Change { t, s, j, l } => Incoming::Change {
            topic: t,
            seq: s,
            change: PresenceChange {
                joins: j.into_iter().map(|(key, meta)| PresenceEntry { key, node, meta }).collect(),
                leaves: l,
            },
        },
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

    #[test]
    fn malformed_input_is_none() {
        for bad in [
            &b""[..],
            b"{",
            b"[]",
            br#"{"n":"zz","k":"h"}"#,
            br#"{"n":"01","k":"nope"}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","b":"%%%"}"#,
            br#"{"n":"01","k":"b","t":"x","e":"y","p":{},"x":["qq",1]}"#,
        ] {
            assert_eq!(decode(bad), None, "{}", String::from_utf8_lossy(bad));
        }
    }
}
