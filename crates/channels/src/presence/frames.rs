//! Presence as frames: `presence_diff` payloads from the changes of an interval,
//! `presence_state` as of the last flush (encoded once per serializer and shared by every
//! joiner until the next flush), and `presence_count`. No frame is bigger than
//! [`MAX_FRAME_BYTES`] (unless a single meta is): a socket's WebSocket write buffer keeps the
//! size of the largest frame it ever wrote, so one 1 MB state would cost every socket 1 MB for as
//! long as it lives. A big state goes out as a `presence_state` holding the first chunk of keys
//! and `presence_diff`s joining the rest (the client folds diffs into its state, so its list ends
//! exact; a client that had a state before, on a rejoin, sees the keys of later chunks leave and
//! come back). A big diff goes out as several: its leaves, then its joins. Chunks keep a key's
//! metas together unless they alone exceed the limit.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use serde_json::{json, Map, Value};

use super::state::{json_len, Entry, Roster};
use crate::payload::Payload;
use crate::serializer::{Frame, Serializer};

pub(crate) const STATE_EVENT: &str = "presence_state";
pub(crate) const DIFF_EVENT: &str = "presence_diff";
pub(crate) const COUNT_EVENT: &str = "presence_count";

/// Largest presence frame (the encoded message, before the WebSocket header) sent to a socket.
pub(crate) const MAX_FRAME_BYTES: usize = 16 * 1024;

/// `presence_count`: users (distinct keys) and connections (metas) on the topic.
pub(crate) fn count_payload(roster: &Roster) -> Payload {
    Payload::Json(json!({"users": roster.users(), "connections": roster.connections()}))
}

/// Changes since the last flush, by phx_ref; a join and a leave within one interval cancel out.
#[derive(Default)]
pub(crate) struct Pending {
    joins: HashMap<Arc<str>, Entry>,
    leaves: HashMap<Arc<str>, Entry>,
}

impl Pending {
    pub(crate) fn joined(&mut self, entry: Entry) {
        self.joins.insert(entry.phx_ref.clone(), entry);
    }

    pub(crate) fn left(&mut self, entry: Entry) {
        if self.joins.remove(&entry.phx_ref).is_none() {
            self.leaves.insert(entry.phx_ref.clone(), entry);
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    pub(crate) fn clear(&mut self) {
        *self = Pending::default();
    }

    /// Takes the changes as `presence_diff` payloads (one unless it would exceed the frame limit
    /// on `topic`).
    pub(crate) fn take_diff(&mut self, topic: &str) -> Vec<Value> {
        if self.is_empty() {
            return Vec::new();
        }
        let joins = std::mem::take(&mut self.joins);
        let leaves = std::mem::take(&mut self.leaves);
        // A phx_ref that left and came back (another node's entry) must leave before it joins:
        // the client applies a diff's joins before its leaves.
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
}

/// `presence_state` as of a flush, encoded at most once per serializer: the first chunk as
/// `presence_state`, the others as `presence_diff` joins.
pub(crate) struct CachedState {
    payloads: Vec<Payload>,
    frames: [OnceLock<Vec<Frame>>; 2],
}

impl CachedState {
    /// The state as of the last flush: the roster minus the pending joins, plus the pending
    /// leaves.
    pub(crate) fn as_of_flush(roster: &Roster, pending: &Pending, topic: &str) -> CachedState {
        let current = roster
            .entries()
            .filter(|e| !pending.joins.contains_key(&e.phx_ref))
            .chain(pending.leaves.values().cloned());
        let mut chunks = chunk(current, chunk_budget(topic)).into_iter().map(|(m, _)| m);
        let first = Payload::Json(Value::Object(chunks.next().unwrap_or_default()));
        let payloads = std::iter::once(first)
            .chain(chunks.map(|m| Payload::Json(diff(m, Map::new()))))
            .collect();
        CachedState { payloads, frames: Default::default() }
    }

    /// The frames for clients of `serializer`, encoded by the first joiner that needs them.
    pub(crate) fn frames(&self, topic: &str, serializer: Serializer) -> &[Frame] {
        self.frames[serializer.index()].get_or_init(|| {
            let events = std::iter::once(STATE_EVENT).chain(std::iter::repeat(DIFF_EVENT));
            self.payloads
                .iter()
                .zip(events)
                .filter_map(|(payload, event)| serializer.encode_broadcast(topic, event, payload))
                .collect()
        })
    }
}

/// `{key: {"metas": [meta, …]}, …}`
pub(crate) fn group(entries: impl Iterator<Item = Entry>) -> Value {
    let mut out: Map<String, Value> = Map::new();
    for entry in entries {
        let slot = out.entry(entry.key.to_string()).or_insert_with(|| metas_value(Vec::new()));
        if let Some(Value::Array(metas)) = slot.get_mut("metas") {
            metas.push(entry.meta_value());
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
    let mut order: Vec<(Arc<str>, Vec<Entry>)> = Vec::new();
    let mut index: HashMap<Arc<str>, usize> = HashMap::new();
    for entry in entries {
        let slot = *index.entry(entry.key.clone()).or_insert_with(|| {
            order.push((entry.key.clone(), Vec::new()));
            order.len() - 1
        });
        order[slot].1.push(entry);
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
        let lens: Vec<usize> = metas.iter().map(Entry::meta_json_len).collect();
        let whole = key_len + WRAP + lens.iter().sum::<usize>() + lens.len().saturating_sub(1);
        let sep = usize::from(!current.is_empty());
        if used + sep + whole > budget && 2 + whole <= budget {
            cut(&mut current, &mut used);
        }
        if used + usize::from(!current.is_empty()) + whole <= budget {
            used += usize::from(!current.is_empty()) + whole;
            let metas = metas.iter().map(Entry::meta_value).collect();
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
                list.push(meta.meta_value());
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
