//! Other nodes' presences, as a cluster bus reports them: their changes as they happen
//! ([`Presence::apply`], O(changes)), a node's whole share when it (re)connects or is asked
//! ([`Presence::merge`]), and its departure ([`Presence::drop_node`]). This node's own entries
//! are owned here and never replaced from outside; what changes in other nodes' entries goes to
//! this node's watchers as diffs and counts like any local change.

use std::collections::HashSet;
use std::sync::Arc;

use super::state::Entry;
use super::{get_key_value_mut, topic_key, Presence, PresenceError};
use crate::bus::{PresenceChange, PresenceEntry};

/// `entry` as kept, owned by `node`; every replicated entry needs a `phx_ref`.
fn incoming(node: u64, entry: PresenceEntry) -> Result<Entry, PresenceError> {
    let phx_ref: Arc<str> = match entry.phx_ref() {
        Some(r) => Arc::from(r),
        None => return Err(PresenceError::MetaNotObject),
    };
    Ok(Entry {
        key: Arc::from(entry.key.as_str()),
        phx_ref,
        node,
        conn: 0,
        meta: entry.meta.into(),
    })
}

impl Presence {
    /// Applies a change of `node`'s entries on `topic`: its leaves, then its joins. Idempotent:
    /// a leave of an unknown meta or a join of a known one changes nothing. Changes claiming to
    /// be this node's are ignored (it owns its entries).
    pub fn apply(
        &self,
        node: u64,
        topic: &str,
        change: PresenceChange,
    ) -> Result<(), PresenceError> {
        if node == self.hub().node_id() {
            return Ok(());
        }
        let joins =
            change.joins.into_iter().map(|e| incoming(node, e)).collect::<Result<Vec<_>, _>>()?;
        let mut topics = self.inner.topics.lock();
        let topic = topic_key(&topics, topic);
        let tp = topics.entry(topic.clone()).or_default();
        for (key, phx_ref) in &change.leaves {
            // Only `node`'s own entries: a forged leave cannot remove another node's.
            if tp.roster.owner(key, phx_ref) == Some(node) {
                tp.leave(key, phx_ref);
            }
        }
        for entry in joins {
            if !tp.roster.contains(&entry.key, &entry.phx_ref) {
                tp.join(entry);
            }
        }
        self.changed(&topic, tp);
        if tp.is_empty() {
            topics.remove(&topic);
        }
        Ok(())
    }

    /// Replaces what this node knows of `node`'s entries on `topic` with `entries` (its whole
    /// share); the difference goes to watchers as a diff.
    pub fn merge(
        &self,
        node: u64,
        topic: &str,
        entries: Vec<PresenceEntry>,
    ) -> Result<(), PresenceError> {
        if node == self.hub().node_id() {
            return Ok(());
        }
        let incoming =
            entries.into_iter().map(|e| incoming(node, e)).collect::<Result<Vec<_>, _>>()?;
        let mut topics = self.inner.topics.lock();
        let topic = topic_key(&topics, topic);
        let tp = topics.entry(topic.clone()).or_default();
        let existing = tp.roster.refs_of_node(node);
        let keep: HashSet<&str> = incoming.iter().map(|e| &*e.phx_ref).collect();
        for (key, phx_ref) in &existing {
            if !keep.contains(&**phx_ref) {
                tp.leave(key, phx_ref);
            }
        }
        let known: HashSet<Arc<str>> = existing.into_iter().map(|(_, r)| r).collect();
        for entry in incoming {
            if !known.contains(&entry.phx_ref) {
                tp.join(entry);
            }
        }
        self.changed(&topic, tp);
        if tp.is_empty() {
            topics.remove(&topic);
        }
        Ok(())
    }

    /// `node` is gone: its entries leave every topic. Returns how many.
    pub fn drop_node(&self, node: u64) -> usize {
        if node == self.hub().node_id() {
            return 0;
        }
        let mut topics = self.inner.topics.lock();
        let mut count = 0;
        let names: Vec<Arc<str>> = topics.keys().cloned().collect();
        for name in names {
            let Some((topic, tp)) = get_key_value_mut(&mut topics, &name) else { continue };
            let gone = tp.roster.refs_of_node(node);
            count += gone.len();
            for (key, phx_ref) in gone {
                tp.leave(&key, &phx_ref);
            }
            self.changed(&topic, tp);
            if tp.is_empty() {
                topics.remove(&topic);
            }
        }
        count
    }

    /// This node's own entries on `topic`: its share, as a cluster bus publishes it when
    /// another node asks.
    pub fn own_entries(&self, topic: &str) -> Vec<PresenceEntry> {
        let node = self.hub().node_id();
        match self.inner.topics.lock().get(topic) {
            Some(tp) => {
                tp.roster.entries().filter(|e| e.node == node).map(|e| e.to_public()).collect()
            }
            None => Vec::new(),
        }
    }
}
