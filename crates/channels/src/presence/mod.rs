//! Presence: who is on a topic, in the wire format of Phoenix.Presence (`presence_state`,
//! `presence_diff`) that the `Presence` class of the `phoenix` npm package folds into a list.
//!
//! Built above the [`Hub`]: the hub indexes sockets and knows nothing of presence; presence keeps
//! its own audiences and writes frames into the sockets' outboxes. Split by concept: `state`
//! (who is on a topic), `frames` (diffs, state and count as frames), `replication` (other
//! nodes' shares); this file ties them together per topic and schedules the flushes.
//!
//! **Tracking and feeds are separate.** Tracking (`ChannelContext::track`) records a connection
//! on the topic: lists, counts and the cluster see it. Frames go only to sockets that watch the
//! topic's presence, as they chose at join time ([`PresenceFeed`]): `Full` gets
//! `presence_state` then `presence_diff`s (what the npm `Presence` class needs), `Count` gets a
//! small `presence_count` (`{"users": u, "connections": c}`) at most once a second. A socket
//! that watches nothing gets no presence frame, so a topic everyone joins costs O(N), not the
//! O(N²) of sending every join to everyone.
//!
//! Diffs are recorded only while the topic has `Full` watchers and coalesced per topic over
//! `interval`, longer on big topics (see [`flush_interval`]); each flush is one message, encoded
//! once per serializer. A `Full` joiner receives `presence_state` as of the last flush, encoded
//! once per flush and shared by every joiner until the next; the changes since are in the next
//! diff, which it receives because it became a watcher under the same lock that read the state.
//! Diffs are idempotent for the client (a join of a known `phx_ref` or a leave of an unknown one
//! changes nothing), so overlaps are harmless.
//!
//! Every entry carries the node that owns it. Only the owner tracks, updates and untracks its
//! entries; each of its changes goes to the bus as a [`PresenceChange`] (O(changes)), and other
//! nodes' entries arrive through `replication`.

mod frames;
mod replication;
mod state;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::time::Instant;

use crate::bus::{PresenceChange, PresenceEntry};
use crate::hub::{Hub, Outgoing, SocketShared};
use crate::observer::Observer;
use crate::payload::Payload;
use frames::{CachedState, Pending, COUNT_EVENT, DIFF_EVENT};
use state::{Entry, Roster};

/// Members per multiple of the coalescing interval: a topic of 10,000 keys flushes every 10
/// intervals (500 ms by default), so its diffs cost at most ~20,000 frames a second.
const KEYS_PER_INTERVAL: usize = 1000;
/// The longest a change waits for its diff, however large the topic.
const MAX_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// `presence_count` goes to a topic's count watchers at most this often.
pub(crate) const COUNT_INTERVAL: Duration = Duration::from_secs(1);

/// How long changes of a topic with `keys` keys are coalesced: `base` per started thousand
/// keys, at most [`MAX_FLUSH_INTERVAL`] (never less than `base`). Every diff is one frame to
/// every watcher, so on a big topic a short interval would spend the server on frames.
fn flush_interval(base: Duration, keys: usize) -> Duration {
    let multiple = keys.div_ceil(KEYS_PER_INTERVAL).max(1) as u32;
    base.saturating_mul(multiple).min(MAX_FLUSH_INTERVAL.max(base))
}

/// The presence frames a socket asked for when it joined a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceFeed {
    /// `presence_state` after the join reply, then `presence_diff`s.
    Full,
    /// `presence_count` (`{"users": u, "connections": c}`) after the join reply, then at most
    /// once a second while it changes.
    Count,
}

/// Why a track was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresenceError {
    #[error("presence meta must be a JSON object")]
    MetaNotObject,
    #[error("the channel is closed")]
    ChannelClosed,
}

/// One topic: its roster, the changes not yet sent, and who watches.
#[derive(Default)]
struct TopicPresence {
    roster: Roster,
    /// Recorded only while `full` is not empty.
    pending: Pending,
    /// The state as of the last flush (while there are `Full` watchers); cleared by a flush.
    state: Option<Arc<CachedState>>,
    full: HashMap<u64, Arc<SocketShared>>,
    count: HashMap<u64, Arc<SocketShared>>,
    flush_scheduled: bool,
    count_dirty: bool,
    count_scheduled: bool,
    /// When the last `presence_count` went to the count watchers.
    count_sent: Option<Instant>,
}

impl TopicPresence {
    fn join(&mut self, entry: Entry) {
        if self.full.is_empty() {
            self.state = None;
        } else {
            self.pending.joined(entry.clone());
        }
        self.roster.add(entry);
        self.count_dirty = true;
    }

    fn leave(&mut self, key: &str, phx_ref: &str) -> Option<Entry> {
        let entry = self.roster.remove(key, phx_ref)?;
        if self.full.is_empty() {
            self.state = None;
        } else {
            self.pending.left(entry.clone());
        }
        self.count_dirty = true;
        Some(entry)
    }

    fn is_empty(&self) -> bool {
        self.roster.is_empty()
            && self.full.is_empty()
            && self.count.is_empty()
            && !self.flush_scheduled
            && !self.count_scheduled
    }
}

/// This node's presence, all topics. Cheap to clone.
#[derive(Clone)]
pub struct Presence {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    topics: Mutex<HashMap<Arc<str>, TopicPresence>>,
    next_ref: AtomicU64,
    interval: Duration,
}

impl Presence {
    /// Presence over `hub`'s sockets, coalescing diffs per topic over `interval` (zero: one diff
    /// per change, as Phoenix does).
    pub fn new(hub: Hub, interval: Duration) -> Presence {
        Presence {
            inner: Arc::new(Inner {
                hub,
                topics: Mutex::default(),
                next_ref: AtomicU64::new(1),
                interval,
            }),
        }
    }

    fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    fn new_ref(&self) -> Arc<str> {
        let n = self.inner.next_ref.fetch_add(1, Ordering::Relaxed);
        // Unique on this node; the node's low bits keep refs of different nodes apart.
        Arc::from(format!("{:08x}{n:x}", self.hub().node_id() as u32))
    }

    /// Tell the bus about a change of this node's own entries, if it replicates them.
    fn replicate(&self, topic: &str, change: impl FnOnce() -> PresenceChange) {
        let bus = self.hub().bus();
        if bus.replicates_presence() {
            bus.presence_changed(topic, change());
        }
    }

    /// Sends what is due now, and schedules what must wait. Called with the topics lock held,
    /// so the frames of one topic leave in the order the changes were made.
    fn changed(&self, topic: &Arc<str>, tp: &mut TopicPresence) {
        if !tp.pending.is_empty() && !tp.flush_scheduled {
            if self.inner.interval.is_zero() {
                send_diffs(self.hub().observer(), topic, tp);
            } else {
                let wait = flush_interval(self.inner.interval, tp.roster.users());
                if self.schedule(topic, wait, false) {
                    tp.flush_scheduled = true;
                } else {
                    send_diffs(self.hub().observer(), topic, tp);
                }
            }
        }
        if !tp.count_dirty || tp.count_scheduled {
            return;
        }
        if tp.count.is_empty() {
            tp.count_dirty = false;
            return;
        }
        // At most one a second, and never sooner than the diff interval (a burst is one count).
        let now = Instant::now();
        let due = tp.count_sent.map_or(now, |sent| sent + COUNT_INTERVAL);
        let wait = due.saturating_duration_since(now).max(self.inner.interval);
        if wait.is_zero() || !self.schedule(topic, wait, true) {
            send_count(self.hub().observer(), topic, tp);
        } else {
            tp.count_scheduled = true;
        }
    }

    /// Runs a flush of `topic` after `wait` (counts if `count`, else diffs); false outside a
    /// runtime, where nothing could run later.
    fn schedule(&self, topic: &Arc<str>, wait: Duration, count: bool) -> bool {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return false };
        let (presence, topic) = (self.clone(), topic.clone());
        runtime.spawn(async move {
            tokio::time::sleep(wait).await;
            presence.flush(&topic, count);
        });
        true
    }

    fn flush(&self, topic: &Arc<str>, count: bool) {
        let mut topics = self.inner.topics.lock();
        let Some(tp) = topics.get_mut(topic) else { return };
        if count {
            tp.count_scheduled = false;
            if tp.count_dirty {
                send_count(self.hub().observer(), topic, tp);
            }
        } else {
            tp.flush_scheduled = false;
            send_diffs(self.hub().observer(), topic, tp);
        }
        if tp.is_empty() {
            topics.remove(topic);
        }
    }

    /// Track `key` with `meta` for connection `conn` on `topic`; returns its `phx_ref`.
    /// `still_open` is checked under the lock so a track racing a close cannot outlive it.
    pub(crate) fn track(
        &self,
        topic: &str,
        conn: u64,
        key: &str,
        meta: Value,
        still_open: impl FnOnce() -> bool,
    ) -> Result<String, PresenceError> {
        let Value::Object(meta) = meta else { return Err(PresenceError::MetaNotObject) };
        let phx_ref = self.new_ref();
        let mut topics = self.inner.topics.lock();
        if !still_open() {
            return Err(PresenceError::ChannelClosed);
        }
        let topic = topic_key(&topics, topic);
        let tp = topics.entry(topic.clone()).or_default();
        let entry = Entry {
            key: Arc::from(key),
            phx_ref: phx_ref.clone(),
            node: self.hub().node_id(),
            conn,
            meta: meta.into(),
        };
        self.replicate(&topic, || PresenceChange {
            joins: vec![entry.to_public()],
            leaves: Vec::new(),
        });
        tp.join(entry);
        self.changed(&topic, tp);
        Ok(phx_ref.to_string())
    }

    /// Everything `conn` tracked on `topic` leaves.
    pub(crate) fn untrack_conn(&self, topic: &str, conn: u64) {
        let mut topics = self.inner.topics.lock();
        let Some((topic, tp)) = get_key_value_mut(&mut topics, topic) else { return };
        let tracked = tp.roster.take_conn(conn);
        if tracked.is_empty() {
            return;
        }
        let mut leaves = Vec::with_capacity(tracked.len());
        for (key, phx_ref) in tracked {
            if tp.leave(&key, &phx_ref).is_some() {
                leaves.push((key.to_string(), phx_ref.to_string()));
            }
        }
        self.replicate(&topic, || PresenceChange { joins: Vec::new(), leaves });
        self.changed(&topic, tp);
        if tp.is_empty() {
            topics.remove(&topic);
        }
    }

    /// `socket` (subscribed to `topic` already) receives `feed` from now on: for `Full`, the
    /// state as of the last flush now (broadcast-form frames shared by every joiner until the
    /// next flush) and every diff after it; for `Count`, the count now and its changes.
    pub(crate) fn watch(&self, topic: &str, socket: &Arc<SocketShared>, feed: PresenceFeed) {
        let mut topics = self.inner.topics.lock();
        let topic = topic_key(&topics, topic);
        let tp = topics.entry(topic.clone()).or_default();
        // Queued under the lock: no diff of this topic can slip between reading the state and
        // becoming a watcher, nor between the chunks.
        match feed {
            PresenceFeed::Full => {
                let state = match &tp.state {
                    Some(state) => state.clone(),
                    None => {
                        let state =
                            Arc::new(CachedState::as_of_flush(&tp.roster, &tp.pending, &topic));
                        tp.state = Some(state.clone());
                        state
                    }
                };
                for frame in state.frames(&topic, socket.serializer) {
                    if !socket.send(frame.clone()) {
                        break;
                    }
                }
                self.hub().observer().outbound(frames::STATE_EVENT, 1);
                tp.full.insert(socket.conn, socket.clone());
            }
            PresenceFeed::Count => {
                let payload = frames::count_payload(&tp.roster);
                if Outgoing::new(&topic, COUNT_EVENT, &payload).send_to(socket) {
                    self.hub().observer().outbound(COUNT_EVENT, 1);
                }
                tp.count.insert(socket.conn, socket.clone());
            }
        }
    }

    /// `conn` receives no more presence frames of `topic`.
    pub(crate) fn unwatch(&self, topic: &str, conn: u64) {
        let mut topics = self.inner.topics.lock();
        let Some((topic, tp)) = get_key_value_mut(&mut topics, topic) else { return };
        tp.count.remove(&conn);
        if tp.full.remove(&conn).is_some() && tp.full.is_empty() {
            // Nobody left to send diffs to: stop recording them.
            tp.pending.clear();
            tp.state = None;
        }
        if tp.is_empty() {
            topics.remove(&topic);
        }
    }

    /// Who is on `topic` (every node's entries this node knows), in the `presence_state`
    /// format: `{key: {"metas": [{"phx_ref": …, …meta}, …]}, …}`.
    pub fn list(&self, topic: &str) -> Value {
        match self.inner.topics.lock().get(topic) {
            Some(tp) => frames::group(tp.roster.entries()),
            None => Value::Object(Map::new()),
        }
    }

    /// Users (distinct keys) and connections (metas) on `topic`, every node's; cheap.
    pub fn count(&self, topic: &str) -> (usize, usize) {
        match self.inner.topics.lock().get(topic) {
            Some(tp) => (tp.roster.users(), tp.roster.connections()),
            None => (0, 0),
        }
    }

    /// The entries of `topic`, each with its owning node.
    pub fn entries(&self, topic: &str) -> Vec<PresenceEntry> {
        match self.inner.topics.lock().get(topic) {
            Some(tp) => tp.roster.entries().map(|e| e.to_public()).collect(),
            None => Vec::new(),
        }
    }

    /// Replaces this node's metas of every presence that `user`'s sockets tracked with `patch`
    /// merged in: each is a leave of the old meta and a join of a new one carrying
    /// `phx_ref_prev`. Returns how many metas changed.
    pub fn update_user(&self, user: &str, patch: &Map<String, Value>) -> usize {
        let conns = self.hub().user_subscriptions(user);
        let node = self.hub().node_id();
        let mut topics = self.inner.topics.lock();
        let mut count = 0;
        let mut touched: Vec<(&Arc<str>, PresenceChange)> = Vec::new();
        for (topic, conn) in &conns {
            let Some(tp) = topics.get_mut(&**topic) else { continue };
            let tracked = tp.roster.take_conn(*conn);
            let slot = match touched.iter().position(|(t, _)| *t == topic) {
                Some(i) => i,
                None => {
                    touched.push((topic, PresenceChange::default()));
                    touched.len() - 1
                }
            };
            let change = &mut touched[slot].1;
            let mut renewed = Vec::with_capacity(tracked.len());
            for (key, old_ref) in tracked {
                let Some(old) = tp.leave(&key, &old_ref) else { continue };
                let mut meta = old.meta_map();
                for (field, value) in patch {
                    if field != "phx_ref" && field != "phx_ref_prev" {
                        meta.insert(field.clone(), value.clone());
                    }
                }
                let phx_ref = self.new_ref();
                meta.insert("phx_ref_prev".into(), Value::String(old_ref.to_string()));
                change.leaves.push((key.to_string(), old_ref.to_string()));
                renewed.push(Entry { key, phx_ref, node, conn: *conn, meta: meta.into() });
                count += 1;
            }
            for entry in renewed {
                change.joins.push(entry.to_public());
                tp.join(entry);
            }
        }
        // One diff per topic, however many of the user's connections are on it.
        for (topic, change) in touched {
            if let Some(tp) = topics.get_mut(&**topic) {
                if !change.joins.is_empty() || !change.leaves.is_empty() {
                    self.replicate(topic, || change);
                }
                self.changed(topic, tp);
            }
        }
        count
    }
}

fn topic_key(topics: &HashMap<Arc<str>, TopicPresence>, topic: &str) -> Arc<str> {
    match topics.get_key_value(topic) {
        Some((k, _)) => k.clone(),
        None => Arc::from(topic),
    }
}

/// `HashMap::get_key_value` with mutable access to the value.
fn get_key_value_mut<'a>(
    topics: &'a mut HashMap<Arc<str>, TopicPresence>,
    key: &str,
) -> Option<(Arc<str>, &'a mut TopicPresence)> {
    let name = topics.get_key_value(key)?.0.clone();
    topics.get_mut(key).map(|tp| (name, tp))
}

/// The pending changes go to the topic's `Full` watchers on this node only: every node
/// computes the diffs of its own view (its tracks and the shares of other nodes), so nothing
/// is sent twice. Several diffs go out in order, each encoded once for all watchers.
fn send_diffs(observer: &dyn Observer, topic: &str, tp: &mut TopicPresence) {
    let diffs = tp.pending.take_diff(topic);
    if diffs.is_empty() {
        return;
    }
    tp.state = None;
    for diff in diffs {
        let payload = Payload::Json(diff);
        let out = Outgoing::new(topic, DIFF_EVENT, &payload);
        let sent = tp.full.values().filter(|s| out.send_to(s)).count();
        observer.outbound(DIFF_EVENT, sent);
    }
}

fn send_count(observer: &dyn Observer, topic: &str, tp: &mut TopicPresence) {
    tp.count_dirty = false;
    tp.count_sent = Some(Instant::now());
    let payload = frames::count_payload(&tp.roster);
    let out = Outgoing::new(topic, COUNT_EVENT, &payload);
    let sent = tp.count.values().filter(|s| out.send_to(s)).count();
    observer.outbound(COUNT_EVENT, sent);
}

#[cfg(test)]
mod tests;
