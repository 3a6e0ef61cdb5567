//! Who is on one topic: its entries by key (a key has one meta per connection, each with its
//! own `phx_ref`) and, for this node's entries, an index by connection so a leaving socket is
//! untracked without scanning the topic. Knows nothing of frames or of other nodes.

use std::collections::HashMap;
use std::sync::Arc;

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
    /// The meta's other fields (the wire meta is these plus `phx_ref`).
    pub meta: Meta,
}

impl Entry {
    pub(crate) fn to_public(&self) -> PresenceEntry {
        PresenceEntry { key: self.key.to_string(), node: self.node, meta: self.meta_map() }
    }

    /// The meta as clients see it: its fields and `phx_ref`.
    pub(crate) fn meta_map(&self) -> Map<String, Value> {
        let mut map = self.meta.fields();
        map.insert(PHX_REF.into(), Value::String(self.phx_ref.to_string()));
        map
    }

    pub(crate) fn meta_value(&self) -> Value {
        Value::Object(self.meta_map())
    }

    /// Bytes [`Entry::meta_value`] takes as JSON, counted without building it.
    pub(crate) fn meta_json_len(&self) -> usize {
        let fields = self.meta.0.len();
        // `"phx_ref":` and the string, plus a comma unless the fields are `{}`.
        fields + PHX_REF.len() + 3 + json_len(&*self.phx_ref) + usize::from(fields > 2)
    }
}

const PHX_REF: &str = "phx_ref";

/// A meta as kept: the JSON text of its fields but `phx_ref` (which the entry holds once, for
/// the index and the wire alike), in one allocation of the text's size. Every tracked socket
/// has one; as a `Map` a meta of three fields took about 600 bytes, as `Value`s about 160,
/// as text (HoloQuest's `nickname` and `online_at`) 64 to 80.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Meta(Arc<str>);

impl From<Map<String, Value>> for Meta {
    fn from(mut map: Map<String, Value>) -> Meta {
        map.remove(PHX_REF);
        Meta(Arc::from(Value::Object(map).to_string()))
    }
}

impl Meta {
    /// The fields, read back from the text this type wrote.
    fn fields(&self) -> Map<String, Value> {
        serde_json::from_str(&self.0).unwrap_or_default()
    }
}

/// Bytes a value takes as JSON, without writing it anywhere.
pub(crate) fn json_len<T: serde::Serialize + ?Sized>(value: &T) -> usize {
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

/// An entry as a roster keeps it: without its key, which the roster's map holds once.
#[derive(Clone)]
struct Held {
    phx_ref: Arc<str>,
    node: u64,
    conn: u64,
    meta: Meta,
}

impl Held {
    fn with_key(&self, key: &Arc<str>) -> Entry {
        Entry {
            key: key.clone(),
            phx_ref: self.phx_ref.clone(),
            node: self.node,
            conn: self.conn,
            meta: self.meta.clone(),
        }
    }
}

/// The entries of one topic, every node's as this node knows them. Every tracked socket has a
/// place here, so it is kept small: a key's metas inline beside the key, and the connection
/// index holds keys only (a connection's metas under a key carry the connection).
#[derive(Default)]
pub(crate) struct Roster {
    keys: HashMap<Arc<str>, One<Held>>,
    /// This node's connections, each with the keys it tracked.
    by_conn: HashMap<u64, One<Arc<str>>>,
    /// Metas (connections) in `keys`.
    metas: usize,
}

impl Roster {
    pub(crate) fn add(&mut self, entry: Entry) {
        let Entry { key, phx_ref, node, conn, meta } = entry;
        if conn != 0 {
            let keys = self.by_conn.entry(conn).or_default();
            if !keys.contains(&key) {
                keys.push(key.clone());
            }
        }
        self.keys.entry(key).or_default().push(Held { phx_ref, node, conn, meta });
        self.metas += 1;
    }

    /// Removes one meta (not from the connection index: see [`Roster::take_conn`]).
    pub(crate) fn remove(&mut self, key: &str, phx_ref: &str) -> Option<Entry> {
        let key = self.keys.get_key_value(key)?.0.clone();
        let metas = self.keys.get_mut(&key)?;
        let index = metas.iter().position(|e| &*e.phx_ref == phx_ref)?;
        let entry = metas.remove(index).with_key(&key);
        if metas.is_empty() {
            self.keys.remove(&key);
        }
        self.metas -= 1;
        Some(entry)
    }

    /// The node that owns the meta `phx_ref` of `key`, if the topic has it.
    pub(crate) fn owner(&self, key: &str, phx_ref: &str) -> Option<u64> {
        self.keys.get(key)?.iter().find(|e| &*e.phx_ref == phx_ref).map(|e| e.node)
    }

    pub(crate) fn contains(&self, key: &str, phx_ref: &str) -> bool {
        self.owner(key, phx_ref).is_some()
    }

    /// (key, phx_ref) of what connection `conn` tracked, forgotten by the index (the entries
    /// stay until removed).
    pub(crate) fn take_conn(&mut self, conn: u64) -> One<KeyRef> {
        let keys = self.by_conn.remove(&conn).unwrap_or_default();
        let mut refs = One::new();
        for key in keys {
            for held in self.keys.get(&key).into_iter().flatten().filter(|e| e.conn == conn) {
                refs.push((key.clone(), held.phx_ref.clone()));
            }
        }
        refs
    }

    /// (key, phx_ref) of every entry `node` owns on this topic.
    pub(crate) fn refs_of_node(&self, node: u64) -> Vec<KeyRef> {
        self.keys
            .iter()
            .flat_map(|(key, metas)| metas.iter().map(move |held| (key, held)))
            .filter(|(_, held)| held.node == node)
            .map(|(key, held)| (key.clone(), held.phx_ref.clone()))
            .collect()
    }

    /// Every entry (a copy: a few reference counts each).
    pub(crate) fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        self.keys.iter().flat_map(|(key, metas)| metas.iter().map(move |held| held.with_key(key)))
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
        Entry { key: key.into(), phx_ref: phx_ref.into(), node: 1, conn, meta: Map::new().into() }
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
    fn a_meta_reads_back_as_its_map_with_the_entrys_phx_ref() {
        for map in [
            json!({"z": 1, "a": [true], "phx_ref": "x"}),
            json!({"phx_ref": "x"}),
            json!({"nickname": "é\"\\\u{1}", "online_at": 1, "phx_ref": "x", "phx_ref_prev": "w"}),
            json!({"": null, "phx_ref": "x\"y"}),
        ] {
            let map = map.as_object().unwrap().clone();
            let mut entry = entry("k", map["phx_ref"].as_str().unwrap(), 1);
            entry.meta = map.clone().into();
            assert!(!entry.meta.0.contains("phx_ref\""), "phx_ref is kept once, in the entry");
            assert_eq!(entry.meta_map(), map);
            assert_eq!(entry.meta_json_len(), json_len(&map), "{map:?}");
        }
    }
}
