//! Who is on one topic: its entries by key (a key has one meta per connection, each with its
//! own `phx_ref`) and, for this node's entries, an index by connection so a leaving socket is
//! untracked without scanning the topic. Knows nothing of frames or of other nodes.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use smallvec::SmallVec;

use crate::bus::PresenceEntry;

/// A key's metas, or a connection's presences: usually one, held inline.
pub(crate) type One<T> = SmallVec<[T; 1]>;

/// One of a connection's presences: (key, phx_ref).
pub(crate) type KeyRef = (Arc<str>, Arc<str>);

#[derive(Clone)]
pub(crate) struct Entry {
    pub key: Arc<str>,
    pub phx_ref: Arc<str>,
    pub node: u64,
    /// The owning connection on its node (0 for another node's entries).
    pub conn: u64,
    /// The wire meta, `phx_ref` included.
    pub meta: Arc<Meta>,
}

impl Entry {
    pub(crate) fn to_public(&self) -> PresenceEntry {
        PresenceEntry { key: self.key.to_string(), node: self.node, meta: self.meta.to_map() }
    }
}

/// A meta as kept: its fields in one allocation, sorted by name as serde_json's `Map` orders
/// them (so it serializes the same), rather than a `Map`, whose first B-tree node alone takes
/// about 600 bytes for a meta of three fields. Every tracked socket has one.
#[derive(Debug, PartialEq)]
pub(crate) struct Meta(pub(super) Box<[(Arc<str>, Value)]>);

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
    pub(crate) fn to_map(&self) -> Map<String, Value> {
        self.0.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    pub(crate) fn to_value(&self) -> Value {
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

/// The entries of one topic, every node's as this node knows them.
#[derive(Default)]
pub(crate) struct Roster {
    keys: HashMap<Arc<str>, One<Entry>>,
    /// This node's entries by connection.
    by_conn: HashMap<u64, One<KeyRef>>,
    /// Metas (connections) in `keys`.
    metas: usize,
}

impl Roster {
    pub(crate) fn add(&mut self, entry: Entry) {
        if entry.conn != 0 {
            self.by_conn
                .entry(entry.conn)
                .or_default()
                .push((entry.key.clone(), entry.phx_ref.clone()));
        }
        self.keys.entry(entry.key.clone()).or_default().push(entry);
        self.metas += 1;
    }

    /// Removes one meta (not from the connection index: see [`Roster::take_conn`]).
    pub(crate) fn remove(&mut self, key: &str, phx_ref: &str) -> Option<Entry> {
        let metas = self.keys.get_mut(key)?;
        let index = metas.iter().position(|e| &*e.phx_ref == phx_ref)?;
        let entry = metas.remove(index);
        if metas.is_empty() {
            self.keys.remove(key);
        }
        self.metas -= 1;
        Some(entry)
    }

    pub(crate) fn get(&self, key: &str, phx_ref: &str) -> Option<&Entry> {
        self.keys.get(key)?.iter().find(|e| &*e.phx_ref == phx_ref)
    }

    pub(crate) fn contains(&self, key: &str, phx_ref: &str) -> bool {
        self.get(key, phx_ref).is_some()
    }

    /// What connection `conn` tracked, forgotten by the index (the entries stay until removed).
    pub(crate) fn take_conn(&mut self, conn: u64) -> One<KeyRef> {
        self.by_conn.remove(&conn).unwrap_or_default()
    }

    /// (key, phx_ref) of every entry `node` owns on this topic.
    pub(crate) fn refs_of_node(&self, node: u64) -> Vec<KeyRef> {
        self.entries()
            .filter(|e| e.node == node)
            .map(|e| (e.key.clone(), e.phx_ref.clone()))
            .collect()
    }

    pub(crate) fn entries(&self) -> impl Iterator<Item = &Entry> {
        self.keys.values().flatten()
    }

    /// Distinct keys (users).
    pub(crate) fn users(&self) -> usize {
        self.keys.len()
    }

    /// Metas (connections).
    pub(crate) fn connections(&self) -> usize {
        self.metas
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(key: &str, phx_ref: &str, conn: u64) -> Entry {
        Entry {
            key: key.into(),
            phx_ref: phx_ref.into(),
            node: 1,
            conn,
            meta: Arc::new(json!({"phx_ref": phx_ref}).as_object().unwrap().clone().into()),
        }
    }

    #[test]
    fn counts_users_and_connections_and_indexes_connections() {
        let mut roster = Roster::default();
        roster.add(entry("a", "r1", 1));
        roster.add(entry("a", "r2", 2));
        roster.add(entry("b", "r3", 0));
        assert_eq!((roster.users(), roster.connections()), (2, 3));
        assert!(roster.contains("a", "r2") && !roster.contains("b", "r1"));
        let tracked = roster.take_conn(1);
        assert_eq!(tracked.len(), 1);
        assert!(roster.take_conn(1).is_empty(), "the index forgets what it gave");
        assert!(roster.remove("a", "r1").is_some());
        assert!(roster.remove("a", "r1").is_none());
        assert_eq!((roster.users(), roster.connections()), (2, 2));
        roster.remove("a", "r2");
        roster.remove("b", "r3");
        assert!(roster.is_empty());
        assert_eq!(roster.connections(), 0);
    }

    #[test]
    fn a_meta_serializes_as_its_map() {
        let map = json!({"z": 1, "a": [true], "phx_ref": "x"}).as_object().unwrap().clone();
        let meta: Meta = map.clone().into();
        assert_eq!(serde_json::to_string(&meta).unwrap(), serde_json::to_string(&map).unwrap());
        assert_eq!(meta.to_map(), map);
    }
}
