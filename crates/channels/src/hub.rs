//! This node's sockets, indexed by topic, by user and by socket id, and the fan-out of
//! deliveries to them. The hub is an index and a fan-out, nothing more: presence is built above
//! it (see `presence`), and other nodes are reached through the [`Bus`] below it.
//!
//! Fan-out takes a snapshot of the matching sockets under a read lock, releases it, then encodes
//! the message once per serializer (lazily) and pushes the shared bytes into each socket's
//! bounded queue. Nothing blocks on a slow client and no lock is held while pushing.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::future::{Future, IntoFuture};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use serde_json::Value;
use smallvec::SmallVec;

use crate::bus::{Bus, BusMessage, SocketRef, TopicMatch};
use crate::delivery::{Ack, Delivery};
use crate::observer::{Nothing, Observer};
use crate::outbox::{Capacity, Close, Outbox, Pushed};
use crate::payload::Payload;
use crate::serializer::{Frame, Serializer};

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
    observer: Arc<dyn Observer>,
    signals: RwLock<Option<SignalHandler>>,
}

/// What the application does with a [`BusMessage::Signal`] reaching this node.
pub type SignalHandler = Arc<dyn Fn(&Hub, &str, &Value) + Send + Sync>;

/// A message encoded at most once per serializer, whatever the number of subscribers.
pub(crate) struct Outgoing<'a> {
    topic: &'a str,
    event: &'a str,
    payload: &'a Payload,
    encoded: [OnceLock<Option<Frame>>; 2],
}

impl<'a> Outgoing<'a> {
    pub(crate) fn new(topic: &'a str, event: &'a str, payload: &'a Payload) -> Self {
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

    pub(crate) fn send_to(&self, socket: &SocketShared) -> bool {
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
    /// A hub whose deliveries also go through `bus` to other nodes.
    pub fn new(bus: Arc<dyn Bus>) -> Hub {
        Hub::with_observer(bus, Arc::new(Nothing))
    }

    /// As [`Hub::new`], telling `observer` about deliveries.
    pub fn with_observer(bus: Arc<dyn Bus>, observer: Arc<dyn Observer>) -> Hub {
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

    /// Stops waiting politely on a confirmed push: every socket on this node still holding an
    /// unconfirmed copy of it (a client that stopped reading) is closed as a slow consumer, its
    /// queue dropped, and the result resolves to whether a copy was written after all (a frame
    /// already being written gets the transport's short close grace to finish). So a sender
    /// that gives up after a deadline learns the truth instead of guessing: a copy that was
    /// not written is never written later. Returns how many sockets were closed with it.
    pub fn withdraw(&self, delivery: Delivery) -> (usize, impl Future<Output = bool> + Send) {
        let holders: Vec<Arc<SocketShared>> = self.inner.sockets.read().values().cloned().collect();
        let closed = holders.iter().filter(|s| s.outbox.cut_off_holding(&delivery)).count();
        if closed > 0 {
            self.inner.metrics.slow_consumers.fetch_add(closed as u64, Ordering::Relaxed);
        }
        (closed, delivery.into_future())
    }

    /// Close (normally, code 1000) every socket whose id is `socket_id`; returns how many.
    pub fn disconnect(&self, socket_id: &str) -> usize {
        self.publish(BusMessage::Disconnect { socket_id: socket_id.to_owned() })
    }

    /// Apply a delivery here and hand it to the bus for the other nodes. Returns what this
    /// node's delivery counted (other nodes' counts are not known).
    pub fn publish(&self, msg: BusMessage) -> usize {
        self.inner.bus.publish(self.inner.node, &msg);
        self.deliver(msg)
    }

    /// Apply a delivery to this node's sockets (what another node published). Returns the number of
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
        self.publish(BusMessage::Signal { name: name.to_owned(), data });
    }

    /// Sets what this node does with signals; it runs on the delivering task, so it should
    /// only look and spawn.
    pub fn on_signal(&self, handler: SignalHandler) {
        *self.inner.signals.write() = Some(handler);
    }

    /// The users with a socket on this node.
    pub fn local_users(&self) -> Vec<String> {
        self.inner.users.read().keys().map(|user| user.to_string()).collect()
    }

    /// Whether `user` (the hub's user key) has a socket on this node.
    pub fn has_user(&self, user: &str) -> bool {
        self.inner.users.read().contains_key(user)
    }

    /// Every (topic, socket number) subscription of `user`'s sockets on this node.
    pub(crate) fn user_subscriptions(&self, user: &str) -> Vec<(Arc<str>, u64)> {
        let sockets: Few = match self.inner.users.read().get(user) {
            Some(sockets) => sockets.clone(),
            None => return Vec::new(),
        };
        sockets
            .iter()
            .flat_map(|s| s.topics.lock().iter().map(|t| (t.clone(), s.conn)).collect::<Vec<_>>())
            .collect()
    }

    /// The bus to the other nodes.
    pub(crate) fn bus(&self) -> &dyn Bus {
        &*self.inner.bus
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

    /// Records what crosses the bus.
    #[derive(Default)]
    struct RecordingBus(Mutex<Vec<BusMessage>>);

    impl Bus for RecordingBus {
        fn publish(&self, _from: u64, msg: &BusMessage) {
            self.0.lock().push(msg.clone());
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
