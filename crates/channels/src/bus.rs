//! The seam between this node and the rest of a cluster.
//!
//! Every delivery the [`Hub`](crate::Hub) is asked for (broadcast, user message, disconnect)
//! becomes a [`BusMessage`] — plain data, so it can cross a network. The hub applies it to its
//! own sockets and hands it to a [`Bus`], which carries it to the other nodes; whatever they
//! send is applied there with `Hub::deliver`. [`LocalBus`] is a cluster of one: it carries
//! nothing. A Redis (or NATS...) bus publishes to the other nodes and delivers what they publish,
//! without any change to channels or transports.
//!
//! Presence replicates through the same seam as changes ([`PresenceChange`]: the metas that
//! joined and left), never as a whole topic per change. This module knows nothing of the hub or
//! of presence: both call down into it.

use serde_json::{Map, Value};

use crate::payload::Payload;

/// Which topics a delivery is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicMatch {
    Exact(String),
    Prefix(String),
    Any,
}

impl TopicMatch {
    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicMatch::Exact(t) => t == topic,
            TopicMatch::Prefix(p) => topic.starts_with(p.as_str()),
            TopicMatch::Any => true,
        }
    }
}

/// Names one socket across a cluster: the node that holds it and its number on that node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketRef {
    pub node: u64,
    pub socket: u64,
}

/// A delivery request, as plain data.
#[derive(Debug, Clone, PartialEq)]
pub enum BusMessage {
    /// To every subscriber of `topic`, except the `except` socket if any.
    Broadcast { topic: String, event: String, payload: Payload, except: Option<SocketRef> },
    /// To every subscriber of every topic matching `topics`.
    BroadcastMatching { topics: TopicMatch, event: String, payload: Payload },
    /// To the sockets of `user` on their joined topics matching `topics`.
    User { user: String, topics: TopicMatch, event: String, payload: Payload },
    /// Close every socket whose id is `socket_id`.
    Disconnect { socket_id: String },
    /// A note from the application to itself on every node (e.g. "work waits for this user"),
    /// handed to the hub's signal handler; reaches no socket.
    Signal { name: String, data: serde_json::Value },
}

/// One meta of one key on one topic, as a cluster replicates it.
#[derive(Debug, Clone, PartialEq)]
pub struct PresenceEntry {
    pub key: String,
    /// The node that owns (tracked) it.
    pub node: u64,
    /// The meta as clients see it, `phx_ref` (and `phx_ref_prev` after an update) included.
    pub meta: Map<String, Value>,
}

impl PresenceEntry {
    pub fn phx_ref(&self) -> Option<&str> {
        self.meta.get("phx_ref").and_then(Value::as_str)
    }
}

/// What changed in this node's own presences on one topic: the metas that joined, and the
/// `(key, phx_ref)` of those that left, in that order of application (leaves first).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PresenceChange {
    pub joins: Vec<PresenceEntry>,
    pub leaves: Vec<(String, String)>,
}

/// Carries [`BusMessage`]s to the other nodes of a cluster.
///
/// The hub calls the notification hooks (`user_arrived`, `user_left`) with its index locks held,
/// and presence calls `presence_changed` with its lock held, so that the bus sees changes in the
/// order they happened: a hook must only record or enqueue, never call back into the engine.
pub trait Bus: Send + Sync + 'static {
    /// Carry `msg`, which this node (`from`) has applied to its own sockets already, to every
    /// other node.
    fn publish(&self, from: u64, msg: &BusMessage);

    /// The first socket of `user` connected to this node: a bus that routes user messages to
    /// the nodes that hold the user starts listening for them. Default: nothing.
    fn user_arrived(&self, _user: &str) {}

    /// The last socket of `user` on this node is gone. Default: nothing.
    fn user_left(&self, _user: &str) {}

    /// Whether this bus wants [`Bus::presence_changed`] (building a change costs a copy of
    /// each meta, which a single node does not need). Default: no.
    fn replicates_presence(&self) -> bool {
        false
    }

    /// This node's own presences on `topic` changed by `change` (another node's share never
    /// comes here): a cluster bus forwards the change to the other nodes. Default: nothing.
    fn presence_changed(&self, _topic: &str, _change: PresenceChange) {}
}

/// A single-node bus: there is no other node to carry anything to.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBus;

impl Bus for LocalBus {
    fn publish(&self, _from: u64, _msg: &BusMessage) {}
}
