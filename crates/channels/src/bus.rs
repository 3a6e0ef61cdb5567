//! The seam between this node and the rest of a cluster.
//!
//! Every delivery the [`Hub`] is asked for (broadcast, user message, disconnect) becomes a
//! [`BusMessage`] — plain data, so it can cross a network — handed to a [`Bus`]. The bus decides
//! where it goes; whatever reaches this node is applied with [`Hub::deliver`]. [`LocalBus`]
//! delivers straight into this node's hub. A Redis (or NATS...) bus would deliver locally,
//! publish to the other nodes, and call `hub.deliver` for what they publish, without any change
//! to channels or transports.

use crate::channel::Payload;
use crate::hub::{Hub, TopicMatch};

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

/// Carries [`BusMessage`]s to every node, this one included.
///
/// The hub calls the notification hooks (`user_arrived`, `user_left`, `presence_changed`) with
/// its index or presence locks held, so that the bus sees changes in the order they happened:
/// a hook must only record or enqueue, never call back into the hub.
pub trait Bus: Send + Sync + 'static {
    /// Deliver `msg` everywhere it belongs. Returns what this node's delivery counted
    /// (subscriptions written to, or sockets closed); other nodes' counts are not known.
    fn publish(&self, hub: &Hub, msg: BusMessage) -> usize;

    /// The first socket of `user` connected to this node: a bus that routes user messages to
    /// the nodes that hold the user starts listening for them. Default: nothing.
    fn user_arrived(&self, _user: &str) {}

    /// The last socket of `user` on this node is gone. Default: nothing.
    fn user_left(&self, _user: &str) {}

    /// Presences tracked on this node changed on `topic`: a cluster bus publishes this node's
    /// share of the topic (see [`Hub::presence_merge`]). Default: nothing.
    fn presence_changed(&self, _topic: &str) {}
}

/// A single-node bus: delivers into this node's hub, synchronously.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBus;

impl Bus for LocalBus {
    fn publish(&self, hub: &Hub, msg: BusMessage) -> usize {
        hub.deliver(msg)
    }
}
