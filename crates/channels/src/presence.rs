//! Presence: who is on a topic, in the wire format of Phoenix.Presence (`presence_state`,
//! `presence_diff`) that the `Presence` class of the `phoenix` npm package folds into a list.
//!
//! State lives per topic, never per socket: a socket that tracks nothing costs nothing here.
//! A topic holds its entries by key (a key has one meta per connection, each with its own
//! `phx_ref`) and, for this node's entries, an index by connection so a leaving socket is
//! untracked without scanning the topic.
//!
//! Every entry carries the node that owns it. Only the owner tracks, updates and untracks its
//! entries; another node's entries arrive wholesale through [`Hub::presence_merge`] and go away
//! with [`Hub::presence_drop_node`], so a cluster bus can later replicate each node's share.
//!
//! Presence on a topic everyone joins grows as N²: each join sends a diff to everyone. Changes
//! are therefore coalesced per topic over `interval`, longer on big topics (see
//! [`flush_interval`]; joins and leaves of the same `phx_ref` within one interval cancel out)
//! and each flush is one broadcast, encoded once per serializer. A joiner receives `presence_state` as of the last flush, encoded once per flush
//! and shared by every joiner until the next; the changes since are in the next diff, which it
//! receives because it subscribed before reading the state. Diffs are idempotent for the client
//! (a join of a known `phx_ref` or a leave of an unknown one changes nothing), so overlaps are
//! harmless.
//!
//! No presence frame is bigger than [`MAX_FRAME_BYTES`] (unless a single meta is): a socket's
//! WebSocket write buffer keeps the size of the largest frame it ever wrote, so one 1 MB state
//! would cost every socket 1 MB for as long as it lives. A big state goes out as a
//! `presence_state` holding the first chunk of keys and `presence_diff`s joining the rest (the
//! client folds diffs into its state, so its list ends exact; a client that had a state before,
//! on a rejoin, sees the keys of later chunks leave and come back). A big diff goes out as
//! several: its leaves, then its joins. Chunks keep a key's metas together unless they alone
//! exceed the limit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::bus::BusMessage;
use crate::channel::Payload;
use crate::hub::{Hub, SocketShared};
use crate::serializer::{Frame, Serializer};

pub(crate) const STATE_EVENT: &str = "presence_state";
pub(crate) const DIFF_EVENT: &str = "presence_diff";

/// Members per multiple of the coalescing interval: a topic of 10,000 keys flushes every 10
/// intervals (500 ms by default), so its diffs cost at most ~20,000 frames a second.
const KEYS_PER_INTERVAL: usize = 1000;
/// The longest a change waits for its diff, however large the topic.
const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(1);

/// How long changes of a topic with `keys` keys are coalesced: `base` per started thousand
/// keys, at most [`MAX_FLUSH_INTERVAL`] (never less than `base`). Every diff is one frame to
/// every subscriber, so on a big topic a short interval would spend the server on frames.
fn flush_interval(base: Duration, keys: usize) -> Duration {
    let multiple = keys.div_ceil(KEYS_PER_INTERVAL).max(1) as u32;
    base.saturating_mul(multiple).min(MAX_FLUSH_INTERVAL.max(base))
}

/// Largest presence frame (the encoded message, before the WebSocket header) sent to a socket.
pub(crate) const MAX_FRAME_BYTES: usize = 16 * 1024;

/// One meta of one key on one topic, as a cluster would replicate it.
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

/// Why a track was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence meta must be a JSON object")]
    MetaNotObject,
    #[error("the channel is closed")]
    ChannelClosed,
}

#[derive(Clone)]
struct Entry {
    key: Arc<str>,
    phx_ref: Arc<str>,
    node: u64,
    /// The owning connection on its node (0 for merged remote entries).
    conn: u64,
    /// The wire meta, `phx_ref` included.
    meta: Arc<Meta>,
}

/// A meta as kept: its fields in one allocation, sorted by name as serde_json's `Map` orders
/// them (so it serializes the same), rather than a `Map`, whose first B-tree node alone takes
/// about 600 bytes for a meta of three fields. Every tracked socket has one.
#[derive(Debug, PartialEq)]
struct Meta(Box<[(Arc<str>, Value)]>);

impl From<Map<String, Value>> for Meta {
    fn from(map: Map<String, Value>) -> Meta {
        let mut fields: Vec<(Arc<str>, Value)> =
            map.into_iter().map(|(k, v)| (field_name(k), v)).collect();
        fields.sort_by(|a, b| a.0.cmp(&b.0));
        Meta(fields.into_boxed_slice())
    }
}

/// Most field names a process shares; names past these are allocated per meta, so metas with
/// ever new field names cannot grow the shared set without bound.
const SHARED_FIELD_NAMES: usize = 64;

/// `name`, shared with every meta that has a field of that name (metas of an application have
/// the same few: `nickname`, `online_at`, `phx_ref`…).
fn field_name(name: String) -> Arc<str> {
    static NAMES: Mutex<Vec<Arc<str>>> = Mutex::new(Vec::new());
    let mut names = NAMES.lock();
    if let Some(shared) = names.iter().find(|n| ***n == *name) {
        return shared.clone();
    }
    let fresh: Arc<str> = Arc::from(name);
    if names.len() < SHARED_FIELD_NAMES {
        names.push(fresh.clone());
    }
    fresh
}

impl Meta {
    fn to_map(&self) -> Map<String, Value> {
        self.0.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    fn to_value(&self) -> Value {
        Value::Object(self.to_map())
    }
}

impl serde::Serialize for Meta {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            map.serialize_entry(&**k, v)?;
        }
        map.end()
    }
}

/// `presence_state` as of a flush, encoded at most once per serializer: the first chunk as
/// `presence_state`, the others as `presence_diff` joins.
struct CachedState {
    payloads: Vec<Payload>,
    frames: [OnceLock<Vec<Frame>>; 2],
}

impl CachedState {
    fn empty() -> CachedState {
        CachedState {
            payloads: vec![Payload::Json(Value::Object(Map::new()))],
            frames: Default::default(),
        }
    }
}

/// A key's metas, or a connection's presences: usually one, held inline.
type One<T> = SmallVec<[T; 1]>;

/// One of a connection's presences: (key, phx_ref).
type KeyRef = (Arc<str>, Arc<str>);

#[derive(Default)]
struct TopicPresence {
    keys: HashMap<Arc<str>, One<Entry>>,
    /// This node's entries by connection.
    by_conn: HashMap<u64, One<KeyRef>>,
    /// Changes since the last flush, by phx_ref.
    pending_joins: HashMap<Arc<str>, Entry>,
    pending_leaves: HashMap<Arc<str>, Entry>,
    flush_scheduled: bool,
    /// The state as of the last flush; cleared by the next flush.
    state: Option<Arc<CachedState>>,
}

impl TopicPresence {
    /// (key, phx_ref) of every entry `node` owns on this topic.
    fn refs_of_node(&self, node: u64) -> Vec<(Arc<str>, Arc<str>)> {
        self.keys
            .values()
            .flatten()
            .filter(|e| e.node == node)
            .map(|e| (e.key.clone(), e.phx_ref.clone()))
            .collect()
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty()
            && self.pending_joins.is_empty()
            && self.pending_leaves.is_empty()
            && !self.flush_scheduled
    }

    fn has_pending(&self) -> bool {
        !self.pending_joins.is_empty() || !self.pending_leaves.is_empty()
    }

    fn add(&mut self, entry: Entry) {
        if entry.conn != 0 {
            self.by_conn
                .entry(entry.conn)
                .or_default()
                .push((entry.key.clone(), entry.phx_ref.clone()));
        }
        self.keys.entry(entry.key.clone()).or_default().push(entry.clone());
        self.pending_joins.insert(entry.phx_ref.clone(), entry);
    }

    /// Removes one meta from `keys` (not from `by_conn`) and records the leave.
    fn remove(&mut self, key: &str, phx_ref: &str) -> Option<Entry> {
        let metas = self.keys.get_mut(key)?;
        let index = metas.iter().position(|e| &*e.phx_ref == phx_ref)?;
        let entry = metas.remove(index);
        if metas.is_empty() {
            self.keys.remove(key);
        }
        // A join and a leave within one interval cancel out.
        if self.pending_joins.remove(phx_ref).is_none() {
            self.pending_leaves.insert(entry.phx_ref.clone(), entry.clone());
        }
        Some(entry)
    }

    /// Takes the pending changes as `presence_diff` payloads (one unless it would exceed the
    /// frame limit on `topic`), and forgets the cached state.
    fn take_diff(&mut self, topic: &str) -> Vec<Value> {
        if !self.has_pending() {
            return Vec::new();
        }
        self.state = None;
        let joins = std::mem::take(&mut self.pending_joins);
        let leaves = std::mem::take(&mut self.pending_leaves);
        // A phx_ref that left and came back (a merged entry) must leave before it joins: the
        // client applies a diff's joins before its leaves.
        let overlap = leaves.keys().any(|r| joins.contains_key(r));
        let budget = chunk_budget(topic);
        let joins = chunk(joins.into_values(), budget);
        let leaves = chunk(leaves.into_values(), budget);
        let size =
            |chunks: &[(Map<String, Value>, usize)]| chunks.iter().map(|(_, n)| n).sum::<usize>();
        if !overlap
            && joins.len() <= 1
            && leaves.len() <= 1
            && size(&joins) + size(&leaves) <= budget
        {
            let single = |mut chunks: Vec<(Map<String, Value>, usize)>| {
                chunks.pop().map(|(m, _)| m).unwrap_or_default()
            };
            return vec![diff(single(joins), single(leaves))];
        }
        let leaves = leaves.into_iter().map(|(m, _)| diff(Map::new(), m));
        let joins = joins.into_iter().map(|(m, _)| diff(m, Map::new()));
        leaves.chain(joins).collect()
    }

    /// The state as of the last flush: the current entries minus the pending joins, plus the
    /// pending leaves.
    fn flushed_state(&mut self, topic: &str) -> Arc<CachedState> {
        if let Some(state) = &self.state {
            return state.clone();
        }
        let current = self
            .keys
            .values()
            .flatten()
            .filter(|e| !self.pending_joins.contains_key(&e.phx_ref))
            .chain(self.pending_leaves.values())
            .cloned();
        let mut chunks = chunk(current, chunk_budget(topic)).into_iter().map(|(m, _)| m);
        let first = Payload::Json(Value::Object(chunks.next().unwrap_or_default()));
        let payloads = std::iter::once(first)
            .chain(chunks.map(|m| Payload::Json(diff(m, Map::new()))))
            .collect();
        let state = Arc::new(CachedState { payloads, frames: Default::default() });
        self.state = Some(state.clone());
        state
    }

    fn current(&self) -> Value {
        group(self.keys.values().flatten().cloned())
    }
}

/// `{key: {"metas": [meta, …]}, …}`
fn group(entries: impl Iterator<Item = Entry>) -> Value {
    let mut out: Map<String, Value> = Map::new();
    for entry in entries {
        let slot = out.entry(entry.key.to_string()).or_insert_with(|| {
            let mut metas = Map::new();
            metas.insert("metas".into(), Value::Array(Vec::new()));
            Value::Object(metas)
        });
        if let Some(Value::Array(metas)) = slot.get_mut("metas") {
            metas.push(entry.meta.to_value());
        }
    }
    Value::Object(out)
}

fn diff(joins: Map<String, Value>, leaves: Map<String, Value>) -> Value {
    let mut diff = Map::new();
    diff.insert("joins".into(), Value::Object(joins));
    diff.insert("leaves".into(), Value::Object(leaves));
    Value::Object(diff)
}

/// Bytes a value takes as JSON, without writing it anywhere.
fn json_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    // Serializing a `Value` or a string into a writer that cannot fail does not fail.
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Bytes a chunk (`{key: {"metas": […]}, …}`) may take so that its frame, `presence_state` or
/// `presence_diff` in either serializer, stays within [`MAX_FRAME_BYTES`].
fn chunk_budget(topic: &str) -> usize {
    let empty = Payload::Json(diff(Map::new(), Map::new()));
    // The diff's envelope (with its two empty maps) is larger than the state's.
    let envelope = [Serializer::V1, Serializer::V2]
        .into_iter()
        .filter_map(|s| s.encode_broadcast(topic, DIFF_EVENT, &empty))
        .map(|f| f.len())
        .max()
        .unwrap_or(0);
    MAX_FRAME_BYTES.saturating_sub(envelope).max(2)
}

/// `{key: {"metas": [meta, …]}, …}` maps of at most `budget` bytes of JSON each (a single meta
/// bigger than that gets a chunk of its own), with each one's size. A key's metas stay in one
/// chunk unless they alone exceed the budget. Nothing in, no chunk out.
fn chunk(entries: impl Iterator<Item = Entry>, budget: usize) -> Vec<(Map<String, Value>, usize)> {
    // Group by key, in the order keys come.
    let mut order: Vec<(Arc<str>, Vec<Arc<Meta>>)> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    for entry in entries {
        let slot = *index.entry(entry.key.clone()).or_insert_with(|| {
            order.push((entry.key.clone(), Vec::new()));
            order.len() - 1
        });
        order[slot].1.push(entry.meta);
    }
    // `{"metas":[` … `]}`
    const WRAP: usize = 12;
    let mut chunks = Vec::new();
    let mut current: Map<String, Value> = Map::new();
    let mut used = 2; // `{}`
    let mut cut = |current: &mut Map<String, Value>, used: &mut usize| {
        if !current.is_empty() {
            chunks.push((std::mem::take(current), *used));
            *used = 2;
        }
    };
    for (key, metas) in order {
        let key_len = json_len(&*key) + 1; // `"key":`
        let lens: Vec<usize> = metas.iter().map(|m| json_len(&**m)).collect();
        let whole = key_len + WRAP + lens.iter().sum::<usize>() + lens.len().saturating_sub(1);
        let sep = usize::from(!current.is_empty());
        if used + sep + whole > budget && 2 + whole <= budget {
            cut(&mut current, &mut used);
        }
        if used + usize::from(!current.is_empty()) + whole <= budget {
            used += usize::from(!current.is_empty()) + whole;
            let metas = metas.iter().map(|m| m.to_value()).collect();
            current.insert(key.to_string(), metas_value(metas));
            continue;
        }
        // Too many metas for one chunk: spread them over several.
        let mut open = false; // whether `current` holds this key
        for (meta, len) in metas.iter().zip(lens) {
            let cost = if open {
                1 + len
            } else {
                usize::from(!current.is_empty()) + key_len + WRAP + len
            };
            if used + cost > budget && !current.is_empty() {
                cut(&mut current, &mut used);
                open = false;
            }
            let cost = if open {
                1 + len
            } else {
                usize::from(!current.is_empty()) + key_len + WRAP + len
            };
            used += cost;
            let slot = current.entry(key.to_string()).or_insert_with(|| metas_value(Vec::new()));
            if let Some(Value::Array(list)) = slot.get_mut("metas") {
                list.push(meta.to_value());
            }
            open = true;
        }
    }
    cut(&mut current, &mut used);
    chunks
}

fn metas_value(metas: Vec<Value>) -> Value {
    let mut wrap = Map::new();
    wrap.insert("metas".into(), Value::Array(metas));
    Value::Object(wrap)
}

/// This node's presence, all topics.
pub(crate) struct Presence {
    topics: Mutex<HashMap<Arc<str>, TopicPresence>>,
    next_ref: AtomicU64,
    interval: Duration,
}

impl Presence {
    pub(crate) fn new(interval: Duration) -> Presence {
        Presence { topics: Mutex::default(), next_ref: AtomicU64::new(1), interval }
    }

    fn new_ref(&self, node: u64) -> Arc<str> {
        let n = self.next_ref.fetch_add(1, Ordering::Relaxed);
        // Unique on this node; the node's low bits keep refs of different nodes apart.
        Arc::from(format!("{:08x}{n:x}", node as u32))
    }

    /// Broadcasts the diff now (no coalescing) or makes sure a flush is scheduled. Called with
    /// the topic's lock held, so diffs of one topic leave in the order they were made.
    fn changed(&self, hub: &Hub, topic: &Arc<str>, tp: &mut TopicPresence) {
        if !tp.has_pending() {
            return;
        }
        if self.interval.is_zero() {
            send_diffs(hub, topic, tp.take_diff(topic));
            return;
        }
        if tp.flush_scheduled {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tp.flush_scheduled = true;
                let interval = flush_interval(self.interval, tp.keys.len());
                let (hub, topic) = (hub.clone(), topic.clone());
                runtime.spawn(async move {
                    tokio::time::sleep(interval).await;
                    hub.presence().flush(&hub, &topic);
                });
            }
            // Outside a runtime nothing could flush later: send now.
            Err(_) => send_diffs(hub, topic, tp.take_diff(topic)),
        }
    }

    pub(crate) fn flush(&self, hub: &Hub, topic: &Arc<str>) {
        let mut topics = self.topics.lock();
        let Some(tp) = topics.get_mut(topic) else { return };
        tp.flush_scheduled = false;
        send_diffs(hub, topic, tp.take_diff(topic));
        if tp.is_empty() {
            topics.remove(topic);
        }
    }

    fn topic_key(topics: &HashMap<Arc<str>, TopicPresence>, topic: &str) -> Arc<str> {
        match topics.get_key_value(topic) {
            Some((k, _)) => k.clone(),
            None => Arc::from(topic),
        }
    }

    /// Track `key` with `meta` for connection `conn` on `topic`; returns its `phx_ref`.
    /// `still_open` is checked under the lock so a track racing a close cannot outlive it.
    pub(crate) fn track(
        &self,
        hub: &Hub,
        topic: &str,
        conn: u64,
        key: &str,
        meta: Value,
        still_open: impl FnOnce() -> bool,
    ) -> Result<String, PresenceError> {
        let Value::Object(mut meta) = meta else { return Err(PresenceError::MetaNotObject) };
        let node = hub.node_id();
        let phx_ref = self.new_ref(node);
        meta.insert("phx_ref".into(), Value::String(phx_ref.to_string()));
        let mut topics = self.topics.lock();
        if !still_open() {
            return Err(PresenceError::ChannelClosed);
        }
        let topic = Self::topic_key(&topics, topic);
        let tp = topics.entry(topic.clone()).or_default();
        tp.add(Entry {
            key: Arc::from(key),
            phx_ref: phx_ref.clone(),
            node,
            conn,
            meta: Arc::new(meta.into()),
        });
        self.changed(hub, &topic, tp);
        hub.local_presence_changed(&topic);
        Ok(phx_ref.to_string())
    }

    /// Everything `conn` tracked on `topic` leaves.
    pub(crate) fn untrack_conn(&self, hub: &Hub, topic: &str, conn: u64) {
        let mut topics = self.topics.lock();
        let Some((topic, tp)) = topics.get_key_value_mut_compat(topic) else { return };
        let Some(tracked) = tp.by_conn.remove(&conn) else { return };
        for (key, phx_ref) in tracked {
            tp.remove(&key, &phx_ref);
        }
        self.changed(hub, &topic, tp);
        hub.local_presence_changed(&topic);
        if tp.is_empty() {
            topics.remove(&topic);
        }
    }

    /// Pushes the topic's state (as of the last flush) to `socket`, as broadcast-form frames
    /// (`presence_state`, then `presence_diff`s for a big state) shared by every joiner until
    /// the next flush.
    pub(crate) fn push_state(&self, topic: &str, socket: &SocketShared) {
        let mut topics = self.topics.lock();
        let state = match topics.get_mut(topic) {
            Some(tp) => tp.flushed_state(topic),
            None => Arc::new(CachedState::empty()),
        };
        // Pushed under the lock: no diff of this topic can slip between reading and queueing,
        // nor between the chunks.
        for frame in state_frames(&state, topic, socket.serializer) {
            if !socket.send(frame.clone()) {
                break;
            }
        }
    }

    pub(crate) fn list(&self, topic: &str) -> Value {
        match self.topics.lock().get(topic) {
            Some(tp) => tp.current(),
            None => Value::Object(Map::new()),
        }
    }

    pub(crate) fn entries(&self, topic: &str) -> Vec<PresenceEntry> {
        match self.topics.lock().get(topic) {
            Some(tp) => tp
                .keys
                .values()
                .flatten()
                .map(|e| PresenceEntry {
                    key: e.key.to_string(),
                    node: e.node,
                    meta: e.meta.to_map(),
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// Replaces this node's metas of every presence that `conns` tracked on their topics with
    /// `patch` merged in: each is a leave of the old meta and a join of a new one carrying
    /// `phx_ref_prev`. Returns how many metas changed.
    pub(crate) fn update(
        &self,
        hub: &Hub,
        conns: &[(Arc<str>, u64)],
        patch: &Map<String, Value>,
    ) -> usize {
        let node = hub.node_id();
        let mut topics = self.topics.lock();
        let mut count = 0;
        let mut touched: Vec<&Arc<str>> = Vec::new();
        for (topic, conn) in conns {
            let Some(tp) = topics.get_mut(&**topic) else { continue };
            if !touched.contains(&topic) {
                touched.push(topic);
            }
            let Some(tracked) = tp.by_conn.remove(conn) else { continue };
            let mut renewed = Vec::with_capacity(tracked.len());
            for (key, old_ref) in tracked {
                let Some(old) = tp.remove(&key, &old_ref) else { continue };
                let mut meta = old.meta.to_map();
                for (field, value) in patch {
                    if field != "phx_ref" && field != "phx_ref_prev" {
                        meta.insert(field.clone(), value.clone());
                    }
                }
                let phx_ref = self.new_ref(node);
                meta.insert("phx_ref".into(), Value::String(phx_ref.to_string()));
                meta.insert("phx_ref_prev".into(), Value::String(old_ref.to_string()));
                renewed.push(Entry {
                    key,
                    phx_ref,
                    node,
                    conn: *conn,
                    meta: Arc::new(meta.into()),
                });
                count += 1;
            }
            for entry in renewed {
                tp.add(entry);
            }
        }
        // One diff per topic, however many of the user's connections are on it.
        for topic in touched {
            if let Some(tp) = topics.get_mut(&**topic) {
                self.changed(hub, topic, tp);
                hub.local_presence_changed(topic);
            }
        }
        count
    }

    /// Replaces `node`'s entries on `topic` with `entries` (e.g. another node's share, as its
    /// bus reported it); the difference goes out as a diff. This node's own entries are never
    /// replaced: it owns them.
    pub(crate) fn merge(
        &self,
        hub: &Hub,
        node: u64,
        topic: &str,
        entries: Vec<PresenceEntry>,
    ) -> Result<(), PresenceError> {
        if node == hub.node_id() {
            return Ok(());
        }
        let mut incoming: Vec<Entry> = Vec::with_capacity(entries.len());
        for e in entries {
            let phx_ref: Arc<str> = match e.phx_ref() {
                Some(r) => Arc::from(r),
                None => return Err(PresenceError::MetaNotObject),
            };
            incoming.push(Entry {
                key: Arc::from(e.key.as_str()),
                phx_ref,
                node,
                conn: 0,
                meta: Arc::new(e.meta.into()),
            });
        }
        let mut topics = self.topics.lock();
        let topic = Self::topic_key(&topics, topic);
        let tp = topics.entry(topic.clone()).or_default();
        let existing = tp.refs_of_node(node);
        let keep: std::collections::HashSet<&str> = incoming.iter().map(|e| &*e.phx_ref).collect();
        for (key, phx_ref) in &existing {
            if !keep.contains(&**phx_ref) {
                tp.remove(key, phx_ref);
            }
        }
        let known: std::collections::HashSet<Arc<str>> =
            existing.into_iter().map(|(_, r)| r).collect();
        for entry in incoming {
            if !known.contains(&entry.phx_ref) {
                tp.add(entry);
            }
        }
        self.changed(hub, &topic, tp);
        if tp.is_empty() {
            topics.remove(&topic);
        }
        Ok(())
    }

    /// Every entry of `node` leaves (the node is gone).
    pub(crate) fn drop_node(&self, hub: &Hub, node: u64) -> usize {
        if node == hub.node_id() {
            return 0;
        }
        let mut topics = self.topics.lock();
        let mut count = 0;
        let names: Vec<Arc<str>> = topics.keys().cloned().collect();
        for topic in names {
            let Some(tp) = topics.get_mut(&topic) else { continue };
            let gone = tp.refs_of_node(node);
            count += gone.len();
            for (key, phx_ref) in gone {
                tp.remove(&key, &phx_ref);
            }
            self.changed(hub, &topic, tp);
            if tp.is_empty() {
                topics.remove(&topic);
            }
        }
        count
    }
}

fn state_frames<'a>(state: &'a CachedState, topic: &str, serializer: Serializer) -> &'a [Frame] {
    state.frames[serializer.index()].get_or_init(|| {
        let events = std::iter::once(STATE_EVENT).chain(std::iter::repeat(DIFF_EVENT));
        state
            .payloads
            .iter()
            .zip(events)
            .filter_map(|(payload, event)| serializer.encode_broadcast(topic, event, payload))
            .collect()
    })
}

/// `HashMap::get_key_value` with mutable access to the value.
trait GetKeyValueMut {
    fn get_key_value_mut_compat(&mut self, key: &str) -> Option<(Arc<str>, &mut TopicPresence)>;
}

impl GetKeyValueMut for HashMap<Arc<str>, TopicPresence> {
    fn get_key_value_mut_compat(&mut self, key: &str) -> Option<(Arc<str>, &mut TopicPresence)> {
        let name = self.get_key_value(key)?.0.clone();
        self.get_mut(key).map(|tp| (name, tp))
    }
}

/// Diffs go to this node's subscribers only: every node computes the diffs of its own view
/// (its tracks and the shares merged from other nodes), so nothing is sent twice.
/// Several diffs go out in order, each encoded once for all subscribers.
fn send_diffs(hub: &Hub, topic: &str, diffs: Vec<Value>) {
    for diff in diffs {
        hub.deliver(BusMessage::Broadcast {
            topic: topic.to_owned(),
            event: DIFF_EVENT.to_owned(),
            payload: Payload::Json(diff),
            except: None,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::LocalBus;
    use serde_json::json;

    fn hub(interval_ms: u64) -> Hub {
        Hub::with_presence_interval(Arc::new(LocalBus), Duration::from_millis(interval_ms))
    }

    fn texts(socket: &SocketShared) -> Vec<Value> {
        let (frames, _) = socket.outbox.take();
        frames.iter().map(|f| serde_json::from_str(f.text()).unwrap()).collect()
    }

    fn track(hub: &Hub, topic: &str, socket: &SocketShared, key: &str, meta: Value) -> String {
        hub.presence().track(hub, topic, socket.conn, key, meta, || true).unwrap()
    }

    fn metas(list: &Value, key: &str) -> Vec<Value> {
        list[key]["metas"].as_array().cloned().unwrap_or_default()
    }

    #[test]
    fn diffs_and_state_in_the_phoenix_format() {
        let hub = hub(0);
        let a = hub.register(Serializer::V2, None, Some("ua".into()), 64);
        let b = hub.register(Serializer::V1, None, None, 64);
        hub.subscribe(&a, "t");
        hub.subscribe(&b, "t");
        let r = track(&hub, "t", &a, "alice", json!({"nick": "A"}));
        let expected =
            json!({"joins": {"alice": {"metas": [{"nick": "A", "phx_ref": r}]}}, "leaves": {}});
        assert_eq!(texts(&a), vec![json!([null, null, "t", "presence_diff", expected])]);
        let v1 = texts(&b);
        assert_eq!(v1[0]["event"], "presence_diff");
        assert_eq!(v1[0]["payload"], expected);

        let c = hub.register(Serializer::V2, None, None, 64);
        hub.subscribe(&c, "t");
        hub.presence().push_state("t", &c);
        assert_eq!(
            texts(&c),
            vec![
                json!([null, null, "t", "presence_state", {"alice": {"metas": [{"nick": "A", "phx_ref": r}]}}])
            ]
        );
    }

    #[test]
    fn a_kept_meta_serializes_as_the_map_it_came_from() {
        let map = json!({"zeta": [1, {"b": 2, "a": 1}], "nickname": "é\"x", "online_at": 17, "phx_ref": "r1", "": null})
            .as_object()
            .unwrap()
            .clone();
        let meta = Meta::from(map.clone());
        assert_eq!(serde_json::to_string(&meta).unwrap(), serde_json::to_string(&map).unwrap());
        assert_eq!(meta.to_map(), map);
        assert_eq!(json_len(&meta), json_len(&map));
        let again = Meta::from(map);
        assert!(Arc::ptr_eq(&meta.0[1].0, &again.0[1].0), "field names are shared");
    }

    #[test]
    fn big_topics_coalesce_longer() {
        let base = Duration::from_millis(50);
        assert_eq!(flush_interval(base, 0), base);
        assert_eq!(flush_interval(base, 1000), base);
        assert_eq!(flush_interval(base, 1001), base * 2);
        assert_eq!(flush_interval(base, 10_000), Duration::from_millis(500));
        assert_eq!(flush_interval(base, 1_000_000), MAX_FLUSH_INTERVAL);
        assert_eq!(flush_interval(Duration::from_secs(3), 50_000), Duration::from_secs(3));
    }

    #[test]
    fn meta_must_be_an_object_and_closed_channels_cannot_track() {
        let hub = hub(0);
        let a = hub.register(Serializer::V2, None, None, 8);
        assert_eq!(
            hub.presence().track(&hub, "t", a.conn, "k", json!([1]), || true),
            Err(PresenceError::MetaNotObject)
        );
        assert_eq!(
            hub.presence().track(&hub, "t", a.conn, "k", json!({}), || false),
            Err(PresenceError::ChannelClosed)
        );
        assert_eq!(hub.presence_list("t"), json!({}));
    }

    #[test]
    fn a_key_has_one_meta_per_connection_and_leaving_one_keeps_the_other() {
        let hub = hub(0);
        let tab1 = hub.register(Serializer::V2, None, None, 64);
        let tab2 = hub.register(Serializer::V2, None, None, 64);
        let r1 = track(&hub, "t", &tab1, "alice", json!({}));
        let r2 = track(&hub, "t", &tab2, "alice", json!({}));
        assert_eq!(metas(&hub.presence_list("t"), "alice").len(), 2);
        hub.subscribe(&tab2, "t");
        hub.presence().untrack_conn(&hub, "t", tab1.conn);
        assert_eq!(metas(&hub.presence_list("t"), "alice"), vec![json!({"phx_ref": r2})]);
        assert_eq!(
            texts(&tab2),
            vec![
                json!([null, null, "t", "presence_diff", {"joins": {}, "leaves": {"alice": {"metas": [{"phx_ref": r1}]}}}])
            ]
        );
        hub.presence().untrack_conn(&hub, "t", tab2.conn);
        assert_eq!(hub.presence_list("t"), json!({}));
        assert!(hub.presence().topics.lock().is_empty(), "an empty topic keeps no state");
    }

    #[tokio::test(start_paused = true)]
    async fn changes_within_the_interval_go_out_as_one_diff() {
        let hub = hub(50);
        let watcher = hub.register(Serializer::V2, None, None, 64);
        hub.subscribe(&watcher, "t");
        let socks: Vec<_> = (0..10).map(|_| hub.register(Serializer::V2, None, None, 8)).collect();
        let mut refs = Vec::new();
        for (i, s) in socks.iter().enumerate() {
            refs.push(track(&hub, "t", s, &format!("k{i}"), json!({})));
        }
        // A join and a leave within the interval cancel out.
        hub.presence().untrack_conn(&hub, "t", socks[9].conn);
        assert!(texts(&watcher).is_empty(), "nothing before the interval ends");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let frames = texts(&watcher);
        assert_eq!(frames.len(), 1);
        let diff = &frames[0][4];
        assert_eq!(diff["joins"].as_object().unwrap().len(), 9);
        assert!(diff["joins"].get("k9").is_none());
        assert_eq!(diff["leaves"], json!({}));

        // Join-and-leave only: no diff at all.
        let s = hub.register(Serializer::V2, None, None, 8);
        track(&hub, "t", &s, "ghost", json!({}));
        hub.presence().untrack_conn(&hub, "t", s.conn);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(texts(&watcher).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn state_is_as_of_the_last_flush_and_the_next_diff_completes_it() {
        let hub = hub(50);
        let a = hub.register(Serializer::V2, None, None, 64);
        let b = hub.register(Serializer::V2, None, None, 64);
        let ra = track(&hub, "t", &a, "a", json!({}));
        tokio::time::sleep(Duration::from_millis(60)).await;
        // Within the next interval: b joins, a leaves.
        let rb = track(&hub, "t", &b, "b", json!({}));
        hub.presence().untrack_conn(&hub, "t", a.conn);
        let joiner = hub.register(Serializer::V2, None, None, 64);
        hub.subscribe(&joiner, "t");
        hub.presence().push_state("t", &joiner);
        let other = hub.register(Serializer::V2, None, None, 64);
        hub.subscribe(&other, "t");
        hub.presence().push_state("t", &other);
        let state = texts(&joiner);
        assert_eq!(
            state,
            vec![json!([null, null, "t", "presence_state", {"a": {"metas": [{"phx_ref": ra}]}}])]
        );
        {
            let (f1, _) = {
                hub.presence().push_state("t", &joiner);
                joiner.outbox.take()
            };
            let (f2, _) = {
                hub.presence().push_state("t", &other);
                other.outbox.take()
            };
            let ptr = |f: &Frame| f.text().as_ptr();
            assert_eq!(ptr(&f1[0]), ptr(&f2[1]), "joiners of one interval share the encoded state");
        }
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert_eq!(
            texts(&joiner),
            vec![json!([null, null, "t", "presence_diff", {
                "joins": {"b": {"metas": [{"phx_ref": rb}]}},
                "leaves": {"a": {"metas": [{"phx_ref": ra}]}}
            }])]
        );
        assert_eq!(hub.presence_list("t"), json!({"b": {"metas": [{"phx_ref": rb}]}}));
    }

    #[test]
    fn updating_a_users_metas_is_a_leave_and_a_join_with_phx_ref_prev() {
        let hub = hub(0);
        let s1 = hub.register(Serializer::V2, None, Some("u1".into()), 64);
        let s2 = hub.register(Serializer::V2, None, Some("u1".into()), 64);
        let other = hub.register(Serializer::V2, None, Some("u2".into()), 64);
        for s in [&s1, &s2, &other] {
            hub.subscribe(s, "room:a");
        }
        hub.subscribe(&s1, "room:b");
        let r1 = track(&hub, "room:a", &s1, "h1", json!({"nickname": "old", "online_at": 1}));
        let _r2 = track(&hub, "room:a", &s2, "h1", json!({"nickname": "old", "online_at": 2}));
        let r3 = track(&hub, "room:b", &s1, "h1", json!({"nickname": "old", "online_at": 3}));
        let ro = track(&hub, "room:a", &other, "h2", json!({"nickname": "them"}));
        texts(&other);
        let patch = json!({"nickname": "new", "phx_ref": "forged"});
        assert_eq!(hub.presence_update_user("u1", patch.as_object().unwrap()), 3);
        assert_eq!(hub.presence_update_user("nobody", patch.as_object().unwrap()), 0);
        let frames = texts(&other);
        assert_eq!(frames.len(), 1, "one diff for room:a (other is not on room:b)");
        let diff = &frames[0][4];
        assert_eq!(diff["leaves"]["h1"]["metas"].as_array().unwrap().len(), 2);
        let joins = diff["joins"]["h1"]["metas"].as_array().unwrap();
        assert_eq!(joins.len(), 2);
        let j1 = joins
            .iter()
            .find(|m| m["phx_ref_prev"] == json!(r1))
            .expect("phx_ref_prev names the old meta");
        assert_eq!(j1["nickname"], "new");
        assert_eq!(j1["online_at"], 1);
        assert_ne!(j1["phx_ref"], json!(r1));
        assert_ne!(j1["phx_ref"], json!("forged"));
        let b = hub.presence_list("room:b");
        assert_eq!(metas(&b, "h1")[0]["phx_ref_prev"], json!(r3));
        assert_eq!(
            metas(&hub.presence_list("room:a"), "h2"),
            vec![json!({"nickname": "them", "phx_ref": ro})]
        );
        // The renewed entries still leave with their connection.
        hub.presence().untrack_conn(&hub, "room:a", s1.conn);
        hub.presence().untrack_conn(&hub, "room:a", s2.conn);
        assert!(hub.presence_list("room:a").get("h1").is_none());
    }

    #[test]
    fn a_phx_ref_that_leaves_and_comes_back_in_one_interval_leaves_first() {
        let hub = hub(0);
        let watcher = hub.register(Serializer::V2, None, None, 64);
        hub.subscribe(&watcher, "t");
        let remote = hub.node_id().wrapping_add(1);
        let entry = |nick: &str| PresenceEntry {
            key: "x".into(),
            node: remote,
            meta: json!({"phx_ref": "r1", "nick": nick}).as_object().unwrap().clone(),
        };
        hub.presence_merge(remote, "t", vec![entry("old")]).unwrap();
        texts(&watcher);
        // As within one interval: it leaves, and comes back with another meta.
        let mut topics = hub.presence().topics.lock();
        let tp = topics.get_mut("t").unwrap();
        tp.remove("x", "r1");
        tp.add(Entry {
            key: "x".into(),
            phx_ref: "r1".into(),
            node: remote,
            conn: 0,
            meta: Arc::new(entry("new").meta.into()),
        });
        let diffs = tp.take_diff("t");
        drop(topics);
        // The client applies a diff's joins before its leaves: in one diff, r1 would be gone.
        assert_eq!(
            diffs,
            vec![
                json!({"joins": {}, "leaves": {"x": {"metas": [{"phx_ref": "r1", "nick": "old"}]}}}),
                json!({"joins": {"x": {"metas": [{"phx_ref": "r1", "nick": "new"}]}}, "leaves": {}}),
            ]
        );
    }

    #[test]
    fn entries_carry_their_node_and_only_their_node_replaces_them() {
        let hub = hub(0);
        let watcher = hub.register(Serializer::V2, None, None, 64);
        hub.subscribe(&watcher, "t");
        let local = hub.register(Serializer::V2, None, None, 64);
        let rl = track(&hub, "t", &local, "me", json!({}));
        let me = hub.node_id();
        let remote = me.wrapping_add(1);
        let entry = |key: &str, r: &str| PresenceEntry {
            key: key.into(),
            node: remote,
            meta: json!({"phx_ref": r}).as_object().unwrap().clone(),
        };
        hub.presence_merge(remote, "t", vec![entry("x", "r1"), entry("y", "r2")]).unwrap();
        let mut entries = hub.presence_entries("t");
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            entries.iter().map(|e| (e.key.as_str(), e.node)).collect::<Vec<_>>(),
            vec![("me", me), ("x", remote), ("y", remote)]
        );
        texts(&watcher);
        // The remote node's new share: y left, z joined; x unchanged sends nothing for x.
        hub.presence_merge(remote, "t", vec![entry("x", "r1"), entry("z", "r3")]).unwrap();
        assert_eq!(
            texts(&watcher),
            vec![json!([null, null, "t", "presence_diff", {
                "joins": {"z": {"metas": [{"phx_ref": "r3"}]}},
                "leaves": {"y": {"metas": [{"phx_ref": "r2"}]}}
            }])]
        );
        // Nobody can replace this node's own entries through a merge.
        hub.presence_merge(me, "t", vec![]).unwrap();
        assert_eq!(metas(&hub.presence_list("t"), "me"), vec![json!({"phx_ref": rl})]);
        // A meta without phx_ref cannot be merged.
        let bad = PresenceEntry { key: "q".into(), node: remote, meta: Map::new() };
        assert_eq!(hub.presence_merge(remote, "t", vec![bad]), Err(PresenceError::MetaNotObject));
        // The remote node goes away: its entries leave, ours stay.
        assert_eq!(hub.presence_drop_node(remote), 2);
        assert_eq!(hub.presence_drop_node(me), 0);
        let list = hub.presence_list("t");
        assert_eq!(list.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["me"]);
    }
}

/// Frames and bytes that thousands of joins on one topic cost, with and without coalescing.
/// `cargo test -p channels --lib presence_cost -- --nocapture` prints the numbers.
#[cfg(test)]
mod cost {
    use super::*;
    use crate::bus::LocalBus;
    use crate::channel::{Channel, ChannelContext, HandleIn};
    use crate::session::Session;
    use crate::socket::{ConnectInfo, Connection, Refusal, SocketHandler};
    use async_trait::async_trait;
    use serde_json::json;

    struct Tracking;

    #[async_trait]
    impl Channel<()> for Tracking {
        async fn join(
            &self,
            _topic: &str,
            _payload: Payload,
            ctx: &ChannelContext<()>,
        ) -> Result<Value, Value> {
            let key = ctx.user().unwrap_or("anon").to_owned();
            ctx.track(&key, json!({"nickname": key, "online_at": 1_700_000_000_000u64}))
                .map_err(|e| json!({"reason": e.to_string()}))?;
            Ok(json!({}))
        }
        async fn handle_in(
            &self,
            _event: &str,
            _payload: Payload,
            _ctx: &ChannelContext<()>,
        ) -> HandleIn {
            HandleIn::NoReply
        }
    }

    struct Handler(Arc<Tracking>);

    #[async_trait]
    impl SocketHandler for Handler {
        type Assigns = ();
        async fn connect(&self, _info: &ConnectInfo) -> Result<Connection<()>, Refusal> {
            Ok(Connection::new(()))
        }
        fn channel(&self, _topic: &str) -> Option<Arc<dyn Channel<()>>> {
            Some(self.0.clone())
        }
    }

    #[derive(Default, Debug, Clone, Copy)]
    struct Tally {
        frames: u64,
        bytes: u64,
        state_frames: u64,
        state_bytes: u64,
        diff_frames: u64,
        diff_bytes: u64,
        largest: u64,
    }

    fn drain(sockets: &[Arc<SocketShared>], tally: &mut Tally) {
        for socket in sockets {
            let (frames, close) = socket.outbox.take();
            assert!(close.is_none(), "no socket may overflow");
            for frame in frames {
                let text = frame.text();
                let len = text.len() as u64;
                tally.frames += 1;
                tally.bytes += len;
                tally.largest = tally.largest.max(len);
                if text.starts_with(r#"[null,null,"lobby","presence_state""#) {
                    tally.state_frames += 1;
                    tally.state_bytes += len;
                } else if text.starts_with(r#"[null,null,"lobby","presence_diff""#) {
                    tally.diff_frames += 1;
                    tally.diff_bytes += len;
                }
            }
        }
    }

    /// `n` sockets join one topic, one every `gap`; everything sent is counted.
    async fn run(n: usize, interval: Duration, gap: Duration) -> (Tally, Value) {
        let hub = Hub::with_presence_interval(Arc::new(LocalBus), interval);
        let handler = Arc::new(Handler(Arc::new(Tracking)));
        let mut sockets = Vec::with_capacity(n);
        let mut sessions = Vec::with_capacity(n);
        let mut tally = Tally::default();
        for i in 0..n {
            let socket = hub.register(Serializer::V2, None, Some(format!("user{i:05}")), 4096);
            let mut session = Session::new(handler.clone(), (), socket.clone(), hub.clone(), 10);
            session.handle_text(r#"["1","1","lobby","phx_join",{}]"#).await;
            sockets.push(socket);
            sessions.push(session);
            tokio::time::sleep(gap).await;
            drain(&sockets, &mut tally);
        }
        tokio::time::sleep(interval * 2 + Duration::from_millis(1)).await;
        drain(&sockets, &mut tally);
        (tally, hub.presence_list("lobby"))
    }

    #[tokio::test(start_paused = true)]
    async fn presence_cost_of_thousands_of_joins() {
        const N: usize = 2000;
        let gap = Duration::from_micros(500);
        let (plain, list_plain) = run(N, Duration::ZERO, gap).await;
        let (coalesced, list_coalesced) = run(N, Duration::from_millis(50), gap).await;
        for (name, t) in [("one diff per change", plain), ("coalesced over 50 ms", coalesced)] {
            println!(
                "{N} joins, one per {gap:?}, {name}: {} frames, {} bytes (presence_state {} frames / {} bytes, presence_diff {} frames / {} bytes)",
                t.frames, t.bytes, t.state_frames, t.state_bytes, t.diff_frames, t.diff_bytes
            );
        }
        // Both end with everyone listed once.
        assert_eq!(list_plain.as_object().unwrap().len(), N);
        assert_eq!(list_coalesced.as_object().unwrap().len(), N);
        // Every joiner gets its reply and one state.
        assert_eq!(plain.state_frames, N as u64);
        assert_eq!(coalesced.state_frames, N as u64);
        // One diff per join to everyone already on the topic: N(N-1)/2, plus the diffs carrying
        // the rest of each state bigger than a frame (each of those but the last over half full).
        let per_change = (N * (N - 1) / 2) as u64;
        assert!(plain.diff_frames >= per_change, "{plain:?}");
        let state_chunks = (json_len(&list_plain) / (MAX_FRAME_BYTES / 2) + 1) as u64;
        assert!(plain.diff_frames - per_change <= N as u64 * state_chunks, "{plain:?}");
        assert!(
            plain.largest <= MAX_FRAME_BYTES as u64 && coalesced.largest <= MAX_FRAME_BYTES as u64
        );
        // Coalesced: about one diff per interval (here 1 s of joins → ~20) to everyone, plus the
        // rest of each state.
        assert!(coalesced.diff_frames <= 22 * N as u64 + N as u64 * state_chunks, "{coalesced:?}");
        assert!(coalesced.diff_frames * 20 < plain.diff_frames);
        assert!(coalesced.bytes < plain.bytes);
    }
}
