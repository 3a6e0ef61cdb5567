//! What an application writes: a [`Channel`] (join, handle_in, terminate), and the
//! [`ChannelContext`] it is handed to talk back to the client and to the topic.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::Value;

use crate::bus::{BusMessage, SocketRef};
use crate::delivery::Delivery;
use crate::hub::{Hub, SocketShared};
pub use crate::payload::Payload;
use crate::presence::{Presence, PresenceError, PresenceFeed};

/// What a channel answers to a client event.
#[derive(Debug, Clone, PartialEq)]
pub enum HandleIn {
    /// `Ok` replies with status "ok", `Err` with status "error".
    Reply(Result<Payload, Payload>),
    NoReply,
    /// The channel fails: the client gets `phx_error` (and rejoins), the channel is removed.
    Stop {
        reason: String,
    },
}

/// One topic's behaviour for one socket. A single instance may serve many sockets, so it
/// keeps per-socket state in the socket's assigns or in its own maps keyed by topic.
#[async_trait]
pub trait Channel<A: Send + Sync + 'static>: Send + Sync + 'static {
    /// `Ok(response)` joins and replies `{"status":"ok","response":response}`;
    /// `Err(response)` replies status "error" and the socket stays unjoined.
    async fn join(
        &self,
        topic: &str,
        payload: Payload,
        ctx: &ChannelContext<A>,
    ) -> Result<Value, Value>;

    async fn handle_in(&self, event: &str, payload: Payload, ctx: &ChannelContext<A>) -> HandleIn;

    /// Called after a leave, a close of the socket, a failed channel or a replaced join.
    async fn terminate(&self, _ctx: &ChannelContext<A>) {}
}

/// Handed to channel callbacks: this socket's subscription to one topic. Cheap to clone, so a
/// channel may keep it to push later; pushes after the channel closed are dropped.
pub struct ChannelContext<A> {
    inner: Arc<ContextInner<A>>,
}

impl<A> Clone for ChannelContext<A> {
    fn clone(&self) -> Self {
        ChannelContext { inner: self.inner.clone() }
    }
}

struct ContextInner<A> {
    topic: String,
    join_ref: Option<String>,
    assigns: Arc<A>,
    socket: Arc<SocketShared>,
    hub: Hub,
    presence: Presence,
    open: AtomicBool,
    /// Whether this join tracked a presence (untracked when the channel closes).
    tracked: AtomicBool,
    /// The presence frames this socket asked for (see [`feed_code`]).
    feed: AtomicU8,
    /// Whether the feed started (it stops when the channel closes).
    watching: AtomicBool,
}

/// [`PresenceFeed`] as stored: 0 none, 1 full, 2 count.
fn feed_code(feed: Option<PresenceFeed>) -> u8 {
    match feed {
        None => 0,
        Some(PresenceFeed::Full) => 1,
        Some(PresenceFeed::Count) => 2,
    }
}

impl<A> ChannelContext<A> {
    pub(crate) fn new(
        topic: String,
        join_ref: Option<String>,
        assigns: Arc<A>,
        socket: Arc<SocketShared>,
        hub: Hub,
        presence: Presence,
    ) -> Self {
        ChannelContext {
            inner: Arc::new(ContextInner {
                topic,
                join_ref,
                assigns,
                socket,
                hub,
                presence,
                open: AtomicBool::new(true),
                tracked: AtomicBool::new(false),
                feed: AtomicU8::new(0),
                watching: AtomicBool::new(false),
            }),
        }
    }

    pub fn topic(&self) -> &str {
        &self.inner.topic
    }

    pub fn assigns(&self) -> &A {
        &self.inner.assigns
    }

    pub fn socket_id(&self) -> Option<&str> {
        self.inner.socket.socket_id.as_deref()
    }

    pub fn user(&self) -> Option<&str> {
        self.inner.socket.user.as_deref()
    }

    /// The join_ref of the join this context belongs to.
    pub fn join_ref(&self) -> Option<&str> {
        self.inner.join_ref.as_deref()
    }

    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Presence of every topic (lists, counts).
    pub fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// To this socket only; carries the join_ref and a null ref. Returns whether the frame was
    /// queued for the client (false when the channel closed, the socket is gone or the payload
    /// cannot be expressed for this client).
    pub fn push(&self, event: &str, payload: Payload) -> bool {
        self.push_with(event, payload, None)
    }

    /// As [`ChannelContext::push`], with a [`Delivery`] that resolves `true` once the socket
    /// wrote it and `false` if it was not taken or was lost (slow consumer, broken connection).
    pub fn push_confirmed(&self, event: &str, payload: Payload) -> Delivery {
        let delivery = Delivery::new();
        self.push_with(event, payload, Some(&delivery));
        delivery
    }

    fn push_with(&self, event: &str, payload: Payload, delivery: Option<&Delivery>) -> bool {
        if !self.is_open() {
            tracing::debug!(topic = %self.inner.topic, event, "push on a closed channel dropped");
            return false;
        }
        let socket = &self.inner.socket;
        match socket.serializer.encode_push(self.join_ref(), &self.inner.topic, event, &payload) {
            Some(frame) => match delivery {
                Some(delivery) => socket.send_confirmed(frame, delivery.copy()),
                None => socket.send(frame),
            },
            None => {
                tracing::warn!(
                    topic = %self.inner.topic,
                    event,
                    "push not expressible for this client (binary payload on vsn 1, or header over 255 bytes); dropped"
                );
                false
            }
        }
    }

    /// To every subscriber of the topic, this socket included.
    pub fn broadcast(&self, event: &str, payload: Payload) {
        self.inner.hub.broadcast(&self.inner.topic, event, payload);
    }

    /// To every subscriber of the topic except this socket.
    pub fn broadcast_from(&self, event: &str, payload: Payload) {
        let hub = &self.inner.hub;
        hub.publish(BusMessage::Broadcast {
            topic: self.inner.topic.clone(),
            event: event.to_owned(),
            payload,
            except: Some(SocketRef { node: hub.node_id(), socket: self.inner.socket.conn }),
        });
    }

    /// Tracks this connection on the topic's presence under `key` with `meta` (a JSON object;
    /// the engine adds `phx_ref`), and returns the `phx_ref`. Lists, counts and other nodes see
    /// it; sockets that watch the topic's presence (see [`ChannelContext::watch_presence`]) get
    /// it in their next `presence_diff` or `presence_count`. The presence leaves by itself when
    /// the channel leaves or closes, or the socket dies. A key may have many metas (one per
    /// connection, or more).
    pub fn track(&self, key: &str, meta: Value) -> Result<String, PresenceError> {
        self.inner.tracked.store(true, Ordering::SeqCst);
        let inner = &self.inner;
        inner.presence.track(&inner.topic, inner.socket.conn, key, meta, || self.is_open())
    }

    /// Everything this connection tracked on the topic leaves now.
    pub fn untrack(&self) {
        if self.inner.tracked.swap(false, Ordering::SeqCst) {
            let inner = &self.inner;
            inner.presence.untrack_conn(&inner.topic, inner.socket.conn);
        }
    }

    /// Which presence frames of the topic this socket receives once joined (call it from
    /// `join`): `Some(Full)` gets `presence_state` right after the join reply then
    /// `presence_diff`s, `Some(Count)` gets `presence_count`, `None` (the default) gets none.
    /// Watching is independent of tracking: a socket may watch without being tracked.
    pub fn watch_presence(&self, feed: Option<PresenceFeed>) {
        self.inner.feed.store(feed_code(feed), Ordering::SeqCst);
    }

    /// The join succeeded and its reply is queued: the presence feed, if any, starts.
    pub(crate) fn joined(&self) {
        let inner = &self.inner;
        let feed = match inner.feed.load(Ordering::SeqCst) {
            1 => PresenceFeed::Full,
            2 => PresenceFeed::Count,
            _ => return,
        };
        inner.watching.store(true, Ordering::SeqCst);
        inner.presence.watch(&inner.topic, &inner.socket, feed);
    }

    pub(crate) fn is_open(&self) -> bool {
        self.inner.open.load(Ordering::SeqCst)
    }

    /// No more pushes nor presence frames, and what it tracked leaves.
    pub(crate) fn close(&self) {
        let inner = &self.inner;
        inner.open.store(false, Ordering::SeqCst);
        if inner.watching.swap(false, Ordering::SeqCst) {
            inner.presence.unwatch(&inner.topic, inner.socket.conn);
        }
        self.untrack();
    }
}
