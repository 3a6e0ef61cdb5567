//! This node's sockets, indexed by topic, by user and by socket id, and the fan-out of
//! deliveries to them.
//!
//! Fan-out takes a snapshot of the matching sockets under a read lock, releases it, then encodes
//! the message once per serializer (lazily) and pushes the shared bytes into each socket's
//! bounded queue. Nothing blocks on a slow client and no lock is held while pushing.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::bus::{Bus, BusMessage, SocketRef};
use crate::channel::Payload;
use crate::delivery::{Ack, Delivery};
use crate::observer::{Nothing, Observer};
use crate::outbox::{Capacity, Close, Outbox, Pushed};
use crate::presence::{Presence, PresenceEntry, PresenceError};
use crate::serializer::{Frame, Serializer};

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

/// The part of a socket that the hub and channel contexts share with the socket's task.
pub(crate) struct SocketShared {
    /// Number of this socket on this node.
    pub conn: u64,
    pub serializer: Serializer,
    pub socket_id: Option<Arc<str>>,
    pub user: Option<Arc<str>>,
    pub outbox: Outbox,
    /// Milliseconds since the hub's epoch at the last inbound frame.
    last_seen: AtomicU64,
    epoch: Instant,
    /// Topics this socket is subscribed to (for user deliveries); usually one, held inline.
    topics: Mutex<SmallVec<[Arc<str>; 1]>>,
    metrics: Arc<Metrics>,
}

impl SocketShared {
    /// Record inbound activity (for the heartbeat timeout).
    pub(crate) fn touch(&self) {
        self.last_seen.store(millis_since(self.epoch), Ordering::Relaxed);
    }

    /// Queue a frame; a full queue closes the socket as a slow consumer.
    pub(crate) fn send(&self, frame: Frame) -> bool {
        self.pushed(self.outbox.push(frame))
    }

    /// As [`SocketShared::send`], with an acknowledgement settled when the frame is written
    /// or lost.
    pub(crate) fn send_confirmed(&self, frame: Frame, ack: Ack) -> bool {
        self.pushed(self.outbox.push_confirmed(frame, ack))
    }

    fn pushed(&self, pushed: Pushed) -> bool {
        match pushed {
            Pushed::Queued => true,
            Pushed::Overflow => {
                self.metrics.slow_consumers.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    conn = self.conn,
                    "outbound queue full: disconnecting slow consumer"
                );
                false
            }
            Pushed::Closed => false,
        }
    }
}

#[derive(Default)]
struct Metrics {
    slow_consumers: AtomicU64,
}

type Sockets = HashMap<u64, Arc<SocketShared>>;
/// The sockets of one user or one socket id: usually one, held inline.
type Few = SmallVec<[Arc<SocketShared>; 1]>;

/// Cheap to clone; the server-side delivery API.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

struct HubInner {
    node: u64,
    epoch: Instant,
    bus: Arc<dyn Bus>,
    next_conn: AtomicU64,
    metrics: Arc<Metrics>,
    sockets: RwLock<Sockets>,
    topics: RwLock<HashMap<Arc<str>, Sockets>>,
    users: RwLock<HashMap<Arc<str>, Few>>,
    ids: RwLock<HashMap<Arc<str>, Few>>,
    presence: Presence,
    observer: Arc<dyn Observer>,
    signals: RwLock<Option<SignalHandler>>,
}

/// What the application does with a [`BusMessage::Signal`] reaching this node.
pub type SignalHandler = Arc<dyn Fn(&Hub, &str, &Value) + Send + Sync>;

/// A message encoded at most once per serializer, whatever the number of subscribers.
struct Outgoing<'a> {
    topic: &'a str,
    event: &'a str,
    payload: &'a Payload,
    encoded: [OnceLock<Option<Frame>>; 2],
}

impl<'a> Outgoing<'a> {
    fn new(topic: &'a str, event: &'a str, payload: &'a Payload) -> Self {
        Outgoing { topic, event, payload, encoded: Default::default() }
    }

    fn frame(&self, serializer: Serializer) -> Option<&Frame> {
        self.encoded[serializer.index()]
            .get_or_init(|| {
                let frame = serializer.encode_broadcast(self.topic, self.event, self.payload);
                if frame.is_none() {
                    tracing::warn!(
                        topic = self.topic,
                        event = self.event,
                        ?serializer,
                        "broadcast not expressible for these clients (binary on vsn 1, or header over 255 bytes); dropped for them"
                    );
                }
                frame
            })
            .as_ref()
    }

    fn send_to(&self, socket: &SocketShared) -> bool {
        match self.frame(socket.serializer) {
            Some(frame) => socket.send(frame.clone()),
            None => false,
        }
    }

    fn send_confirmed_to(&self, socket: &SocketShared, delivery: &Delivery) -> bool {
        match self.frame(socket.serializer) {
            Some(frame) => socket.send_confirmed(frame.clone(), delivery.copy()),
            None => false,
        }
    }
}

impl Hub {
    /// A hub whose deliveries go through `bus`, coalescing presence diffs over 50 ms.
    pub fn new(bus: Arc<dyn Bus>) -> Hub {
        Hub::with_presence_interval(bus, crate::config::DEFAULT_PRESENCE_INTERVAL)
    }

    /// A hub whose presence diffs are coalesced per topic over `interval` (zero: one diff per
    /// change, as Phoenix does).
    pub fn with_presence_interval(bus: Arc<dyn Bus>, interval: Duration) -> Hub {
        Hub::with_observer(bus, interval, Arc::new(Nothing))
    }

    /// As [`Hub::with_presence_interval`], telling `observer` about deliveries.
    pub fn with_observer(
        bus: Arc<dyn Bus>,
        interval: Duration,
        observer: Arc<dyn Observer>,
    ) -> Hub {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u32(std::process::id());
        Hub {
            inner: Arc::new(HubInner {
                node: hasher.finish(),
                epoch: Instant::now(),
                bus,
                next_conn: AtomicU64::new(1),
                metrics: Arc::default(),
                sockets: RwLock::default(),
                topics: RwLock::default(),
                users: RwLock::default(),
                ids: RwLock::default(),
                presence: Presence::new(interval),
                observer,
                signals: RwLock::new(None),
            }),
        }
    }

    /// A random number naming this node on the bus.
    pub fn node_id(&self) -> u64 {
        self.inner.node
    }

    /// To every subscriber of `topic`.
    pub fn broadcast(&self, topic: &str, event: &str, payload: Payload) {
        self.publish(BusMessage::Broadcast {
            topic: topic.to_owned(),
            event: event.to_owned(),
            payload,
            except: None,
        });
    }

    /// To every subscriber of every topic matching `topics` (e.g. a server-wide ping).
    pub fn broadcast_matching(&self, topics: TopicMatch, event: &str, payload: Payload) {
        self.publish(BusMessage::BroadcastMatching { topics, event: event.to_owned(), payload });
    }

    /// Push to every socket of `user` that has joined a topic matching `topics`, as a
    /// broadcast on each such topic. Returns how many local channel subscriptions got it.
    pub fn send_to_user(
        &self,
        user: &str,
        topics: TopicMatch,
        event: &str,
        payload: Payload,
    ) -> usize {
        self.publish(BusMessage::User {
            user: user.to_owned(),
            topics,
            event: event.to_owned(),
            payload,
        })
    }

    /// As [`Hub::send_to_user`] for this node's sockets only (the bus cannot confirm), with a
    /// [`Delivery`] that resolves `true` once one of them wrote it, `false` if none took it or
    /// every copy was lost (slow consumer, broken connection, shutdown).
    pub fn send_to_user_confirmed(
        &self,
        user: &str,
        topics: TopicMatch,
        event: &str,
        payload: Payload,
    ) -> Delivery {
        let started = Instant::now();
        let delivery = Delivery::new();
        let count = self.deliver_to_user(user, &topics, event, &payload, Some(&delivery));
        let observer = &self.inner.observer;
        observer.fanout(started.elapsed(), count);
        observer.outbound(event, count);
        delivery
    }

    /// Close (normally, code 1000) every socket whose id is `socket_id`; returns how many.
    pub fn disconnect(&self, socket_id: &str) -> usize {
        self.publish(BusMessage::Disconnect { socket_id: socket_id.to_owned() })
    }

    /// Hand a delivery to the bus.
    pub fn publish(&self, msg: BusMessage) -> usize {
        self.inner.bus.publish(self, msg)
    }

    /// Apply a delivery to this node's sockets (called by the bus). Returns the number of
    /// subscriptions written to, or of sockets closed for a disconnect.
    pub fn deliver(&self, msg: BusMessage) -> usize {
        let started = Instant::now();
        let fanout = !matches!(msg, BusMessage::Disconnect { .. } | BusMessage::Signal { .. });
        let event = match &msg {
            BusMessage::Broadcast { event, .. }
            | BusMessage::BroadcastMatching { event, .. }
            | BusMessage::User { event, .. } => Some(event.clone()),
            _ => None,
        };
        let count = self.deliver_here(msg);
        if fanout {
            let observer = &self.inner.observer;
            observer.fanout(started.elapsed(), count);
            if let Some(event) = event {
                observer.outbound(&event, count);
            }
        }
        count
    }

    fn deliver_here(&self, msg: BusMessage) -> usize {
        match msg {
            BusMessage::Broadcast { topic, event, payload, except } => {
                let except =
                    except.filter(|r| r.node == self.inner.node).map(|r: SocketRef| r.socket);
                let subscribers = self.snapshot_topic(&topic);
                let out = Outgoing::new(&topic, &event, &payload);
                subscribers
                    .iter()
                    .filter(|s| Some(s.conn) != except)
                    .filter(|s| out.send_to(s))
                    .count()
            }
            BusMessage::BroadcastMatching { topics, event, payload } => {
                let groups: Vec<(Arc<str>, Vec<Arc<SocketShared>>)> = {
                    let index = self.inner.topics.read();
                    match &topics {
                        TopicMatch::Exact(t) => index
                            .get_key_value(t.as_str())
                            .map(|(k, v)| (k.clone(), v.values().cloned().collect()))
                            .into_iter()
                            .collect(),
                        _ => index
                            .iter()
                            .filter(|(k, _)| topics.matches(k))
                            .map(|(k, v)| (k.clone(), v.values().cloned().collect()))
                            .collect(),
                    }
                };
                let mut count = 0;
                for (topic, subscribers) in groups {
                    let out = Outgoing::new(&topic, &event, &payload);
                    count += subscribers.iter().filter(|s| out.send_to(s)).count();
                }
                count
            }
            BusMessage::User { user, topics, event, payload } => {
                self.deliver_to_user(&user, &topics, &event, &payload, None)
            }
            BusMessage::Disconnect { socket_id } => {
                let sockets: Few = match self.inner.ids.read().get(socket_id.as_str()) {
                    Some(sockets) => sockets.clone(),
                    None => return 0,
                };
                sockets.iter().filter(|s| s.outbox.close(Close::DISCONNECTED)).count()
            }
            BusMessage::Signal { name, data } => {
                let handler = self.inner.signals.read().clone();
                match handler {
                    Some(handler) => handler(self, &name, &data),
                    None => tracing::debug!(name, "signal with no handler ignored"),
                }
                0
            }
        }
    }

    /// Sends an application signal to every node (this one included), through the bus.
    pub fn signal(&self, name: &str, data: Value) {
        self.inner.bus.publish(self, BusMessage::Signal { name: name.to_owned(), data });
    }

    /// Sets what this node does with signals; it runs on the delivering task, so it should
    /// only look and spawn.
    pub fn on_signal(&self, handler: SignalHandler) {
        *self.inner.signals.write() = Some(handler);
    }

    /// This node's own presences on `topic` changed (not another node's share): the bus may
    /// want to tell the cluster.
    pub(crate) fn local_presence_changed(&self, topic: &str) {
        self.inner.bus.presence_changed(topic);
    }

    /// Whether `user` (the hub's user key) has a socket on this node.
    /// The users with a socket on this node.
    pub fn local_users(&self) -> Vec<String> {
        self.inner.users.read().keys().map(|user| user.to_string()).collect()
    }

    pub fn has_user(&self, user: &str) -> bool {
        self.inner.users.read().contains_key(user)
    }

    /// Who is on `topic` (every node's entries this node knows), in the `presence_state`
    /// format: `{key: {"metas": [{"phx_ref": …, …meta}, …]}, …}`.
    pub fn presence_list(&self, topic: &str) -> Value {
        self.inner.presence.list(topic)
    }

    /// The entries of `topic`, each with its owning node (what a cluster bus replicates).
    pub fn presence_entries(&self, topic: &str) -> Vec<PresenceEntry> {
        self.inner.presence.entries(topic)
    }

    /// Merges `patch` into the metas of every presence that the sockets of `user` (the hub's
    /// user key) tracked on this node, on every topic: a leave of each old meta and a join of
    /// the new one with `phx_ref_prev`. Returns how many metas changed.
    pub fn presence_update_user(&self, user: &str, patch: &Map<String, Value>) -> usize {
        let sockets: Few = match self.inner.users.read().get(user) {
            Some(sockets) => sockets.clone(),
            None => return 0,
        };
        let conns: Vec<(Arc<str>, u64)> = sockets
            .iter()
            .flat_map(|s| s.topics.lock().iter().map(|t| (t.clone(), s.conn)).collect::<Vec<_>>())
            .collect();
        self.inner.presence.update(self, &conns, patch)
    }

    /// Replaces what this node knows of `node`'s entries on `topic` (another node's share, as a
    /// cluster bus reports it); the difference goes to local subscribers as a diff. Entries of
    /// this node are owned here and never replaced. Every entry needs a `phx_ref`.
    pub fn presence_merge(
        &self,
        node: u64,
        topic: &str,
        entries: Vec<PresenceEntry>,
    ) -> Result<(), PresenceError> {
        self.inner.presence.merge(self, node, topic, entries)
    }

    /// `node` is gone: its entries leave every topic. Returns how many.
    pub fn presence_drop_node(&self, node: u64) -> usize {
        self.inner.presence.drop_node(self, node)
    }

    pub(crate) fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    pub(crate) fn observer(&self) -> &dyn Observer {
        &*self.inner.observer
    }

    /// Distinct users (the hub's user key) with a socket on this node.
    pub fn user_count(&self) -> usize {
        self.inner.users.read().len()
    }

    /// Every topic with local subscriptions, and how many.
    pub fn topic_counts(&self) -> Vec<(String, usize)> {
        self.inner.topics.read().iter().map(|(t, s)| (t.to_string(), s.len())).collect()
    }

    /// Sockets connected to this node.
    pub fn socket_count(&self) -> usize {
        self.inner.sockets.read().len()
    }

    /// Local subscriptions to `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.inner.topics.read().get(topic).map_or(0, HashMap::len)
    }

    /// Sockets disconnected because their outbound queue overflowed, since start.
    pub fn slow_consumer_disconnects(&self) -> u64 {
        self.inner.metrics.slow_consumers.load(Ordering::Relaxed)
    }

    fn snapshot_topic(&self, topic: &str) -> Vec<Arc<SocketShared>> {
        match self.inner.topics.read().get(topic) {
            Some(sockets) => sockets.values().cloned().collect(),
            None => Vec::new(),
        }
    }

    pub(crate) fn register(
        &self,
        serializer: Serializer,
        socket_id: Option<String>,
        user: Option<String>,
        capacity: impl Into<Capacity>,
    ) -> Arc<SocketShared> {
        let conn = self.inner.next_conn.fetch_add(1, Ordering::Relaxed);
        let socket = Arc::new(SocketShared {
            conn,
            serializer,
            socket_id: socket_id.map(Arc::from),
            user: user.map(Arc::from),
            outbox: Outbox::new(capacity.into()),
            last_seen: AtomicU64::new(millis_since(self.inner.epoch)),
            epoch: self.inner.epoch,
            topics: Mutex::new(SmallVec::new()),
            metrics: self.inner.metrics.clone(),
        });
        self.inner.sockets.write().insert(conn, socket.clone());
        if let Some(user) = &socket.user {
            // The bus hears of arrivals and departures under the index lock, so it sees them
            // in the order they happened.
            let mut users = self.inner.users.write();
            let sockets = users.entry(user.clone()).or_default();
            if sockets.is_empty() {
                self.inner.bus.user_arrived(user);
            }
            sockets.push(socket.clone());
        }
        if let Some(id) = &socket.socket_id {
            insert(&self.inner.ids, id, &socket);
        }
        socket
    }

    pub(crate) fn unregister(&self, socket: &SocketShared) {
        // What the socket did not write is lost with it (confirmed pushes learn so now).
        socket.outbox.abandon();
        let topics = std::mem::take(&mut *socket.topics.lock());
        for topic in topics {
            remove(&self.inner.topics, &topic, socket.conn);
        }
        if let Some(user) = &socket.user {
            let mut users = self.inner.users.write();
            if let Some(sockets) = users.get_mut(user.as_ref()) {
                if take_out(sockets, socket.conn) && sockets.is_empty() {
                    users.remove(user.as_ref());
                    self.inner.bus.user_left(user);
                }
            }
        }
        if let Some(id) = &socket.socket_id {
            let mut ids = self.inner.ids.write();
            if let Some(sockets) = ids.get_mut(id.as_ref()) {
                if take_out(sockets, socket.conn) && sockets.is_empty() {
                    ids.remove(id.as_ref());
                }
            }
        }
        self.inner.sockets.write().remove(&socket.conn);
    }

    pub(crate) fn subscribe(&self, socket: &Arc<SocketShared>, topic: &str) {
        let key = {
            let mut index = self.inner.topics.write();
            // Share one allocation of the topic name between the index and every socket.
            let key = match index.get_key_value(topic) {
                Some((key, _)) => key.clone(),
                None => Arc::from(topic),
            };
            index.entry(key.clone()).or_default().insert(socket.conn, socket.clone());
            key
        };
        let mut topics = socket.topics.lock();
        if !topics.iter().any(|t| **t == *topic) {
            topics.push(key);
        }
    }

    pub(crate) fn unsubscribe(&self, socket: &SocketShared, topic: &str) {
        socket.topics.lock().retain(|t| **t != *topic);
        remove(&self.inner.topics, topic, socket.conn);
    }

    /// To every local socket of `user` joined to a topic matching `topics`, confirmed through
    /// `delivery` if given. Returns the subscriptions written to.
    fn deliver_to_user(
        &self,
        user: &str,
        topics: &TopicMatch,
        event: &str,
        payload: &Payload,
        delivery: Option<&Delivery>,
    ) -> usize {
        let sockets: Few = match self.inner.users.read().get(user) {
            Some(sockets) => sockets.clone(),
            None => return 0,
        };
        // A user has few sockets: group their matching topics so each is encoded once.
        let mut by_topic: Vec<(Arc<str>, Vec<&Arc<SocketShared>>)> = Vec::new();
        for socket in &sockets {
            for topic in socket.topics.lock().iter().filter(|t| topics.matches(t)) {
                match by_topic.iter_mut().find(|(t, _)| t == topic) {
                    Some((_, list)) => list.push(socket),
                    None => by_topic.push((topic.clone(), vec![socket])),
                }
            }
        }
        let mut count = 0;
        for (topic, list) in by_topic {
            let out = Outgoing::new(&topic, event, payload);
            count += list
                .iter()
                .filter(|s| match delivery {
                    Some(delivery) => out.send_confirmed_to(s, delivery),
                    None => out.send_to(s),
                })
                .count();
        }
        count
    }

    /// Close the sockets silent for longer than `timeout`; returns how many.
    pub(crate) fn close_idle(&self, timeout: Duration) -> usize {
        let now = millis_since(self.inner.epoch);
        let limit = timeout.as_millis() as u64;
        let idle: Vec<Arc<SocketShared>> = self
            .inner
            .sockets
            .read()
            .values()
            .filter(|s| now.saturating_sub(s.last_seen.load(Ordering::Relaxed)) > limit)
            .cloned()
            .collect();
        idle.iter()
            .filter(|s| {
                tracing::debug!(conn = s.conn, "heartbeat timeout");
                s.outbox.close(Close::HEARTBEAT_TIMEOUT)
            })
            .count()
    }

    /// Ask every socket to close; returns how many were asked.
    pub(crate) fn close_all(&self, close: Close) -> usize {
        let sockets: Vec<Arc<SocketShared>> = self.inner.sockets.read().values().cloned().collect();
        sockets.iter().filter(|s| s.outbox.close(close)).count()
    }
}

fn millis_since(epoch: Instant) -> u64 {
    epoch.elapsed().as_millis() as u64
}

fn insert(index: &RwLock<HashMap<Arc<str>, Few>>, key: &Arc<str>, socket: &Arc<SocketShared>) {
    index.write().entry(key.clone()).or_default().push(socket.clone());
}

/// Removes socket `conn` from `sockets`; whether it was there.
fn take_out(sockets: &mut Few, conn: u64) -> bool {
    let before = sockets.len();
    sockets.retain(|s| s.conn != conn);
    if sockets.spilled() && sockets.len() <= 1 {
        sockets.shrink_to_fit();
    }
    sockets.len() < before
}

fn remove(index: &RwLock<HashMap<Arc<str>, Sockets>>, key: &str, conn: u64) {
    let mut index = index.write();
    if let Some(sockets) = index.get_mut(key) {
        sockets.remove(&conn);
        if sockets.is_empty() {
            index.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Records what crosses the bus, then delivers locally like `LocalBus`.
    #[derive(Default)]
    struct RecordingBus(Mutex<Vec<BusMessage>>);

    impl Bus for RecordingBus {
        fn publish(&self, hub: &Hub, msg: BusMessage) -> usize {
            self.0.lock().push(msg.clone());
            hub.deliver(msg)
        }
    }

    fn text_ptr(socket: &SocketShared) -> (*const u8, String) {
        let (frames, _) = socket.outbox.take();
        match frames.into_iter().next() {
            Some(Frame::Text(t)) => (t.as_str().as_ptr(), t.as_str().to_owned()),
            other => panic!("expected one text frame, got {other:?}"),
        }
    }

    #[test]
    fn a_broadcast_is_encoded_once_per_serializer_and_shared() {
        let hub = Hub::new(Arc::new(crate::bus::LocalBus));
        let a = hub.register(Serializer::V2, None, None, 8);
        let b = hub.register(Serializer::V2, None, None, 8);
        let c = hub.register(Serializer::V1, None, None, 8);
        for s in [&a, &b, &c] {
            hub.subscribe(s, "t");
        }
        hub.broadcast("t", "e", Payload::Json(json!({"x": 1})));
        let (pa, ta) = text_ptr(&a);
        let (pb, tb) = text_ptr(&b);
        let (pc, tc) = text_ptr(&c);
        assert_eq!(pa, pb, "v2 subscribers share one buffer");
        assert_eq!(ta, tb);
        assert_ne!(pa, pc);
        assert_eq!(ta, r#"[null,null,"t","e",{"x":1}]"#);
        assert!(tc.contains(r#""event":"e""#));
    }

    #[test]
    fn deliveries_cross_the_bus_as_plain_data() {
        let bus = Arc::new(RecordingBus::default());
        let hub = Hub::new(bus.clone());
        let s = hub.register(Serializer::V2, Some("sid".into()), Some("u".into()), 8);
        hub.subscribe(&s, "room:1");
        hub.broadcast("room:1", "e", Payload::Json(json!(1)));
        assert_eq!(
            hub.send_to_user("u", TopicMatch::Prefix("room:".into()), "m", Payload::Json(json!(2))),
            1
        );
        assert_eq!(hub.disconnect("sid"), 1);
        let seen = bus.0.lock().clone();
        assert_eq!(
            seen,
            vec![
                BusMessage::Broadcast {
                    topic: "room:1".into(),
                    event: "e".into(),
                    payload: Payload::Json(json!(1)),
                    except: None
                },
                BusMessage::User {
                    user: "u".into(),
                    topics: TopicMatch::Prefix("room:".into()),
                    event: "m".into(),
                    payload: Payload::Json(json!(2))
                },
                BusMessage::Disconnect { socket_id: "sid".into() },
            ]
        );
    }

    #[test]
    fn except_only_skips_the_socket_on_its_own_node() {
        let hub = Hub::new(Arc::new(crate::bus::LocalBus));
        let s = hub.register(Serializer::V2, None, None, 8);
        hub.subscribe(&s, "t");
        let msg = |node| BusMessage::Broadcast {
            topic: "t".into(),
            event: "e".into(),
            payload: Payload::Json(json!(null)),
            except: Some(SocketRef { node, socket: s.conn }),
        };
        assert_eq!(hub.deliver(msg(hub.node_id())), 0);
        assert_eq!(hub.deliver(msg(hub.node_id().wrapping_add(1))), 1);
    }

    #[test]
    fn unregister_cleans_every_index() {
        let hub = Hub::new(Arc::new(crate::bus::LocalBus));
        let s = hub.register(Serializer::V2, Some("sid".into()), Some("u".into()), 8);
        hub.subscribe(&s, "a");
        hub.subscribe(&s, "b");
        hub.unregister(&s);
        assert_eq!(hub.socket_count(), 0);
        assert_eq!(hub.subscriber_count("a") + hub.subscriber_count("b"), 0);
        assert_eq!(hub.send_to_user("u", TopicMatch::Any, "e", Payload::Json(json!(0))), 0);
        assert_eq!(hub.disconnect("sid"), 0);
        assert!(
            hub.inner.topics.read().is_empty()
                && hub.inner.users.read().is_empty()
                && hub.inner.ids.read().is_empty()
        );
    }

    #[test]
    fn topic_match() {
        assert!(TopicMatch::Any.matches("x"));
        assert!(TopicMatch::Prefix("room:".into()).matches("room:1"));
        assert!(!TopicMatch::Prefix("room:".into()).matches("rooms"));
        assert!(TopicMatch::Exact("a".into()).matches("a"));
        assert!(!TopicMatch::Exact("a".into()).matches("ab"));
    }
}
