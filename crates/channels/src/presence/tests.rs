//! Presence as a user of the engine sees it: frames in sockets' outboxes, lists and counts.

use super::frames::MAX_FRAME_BYTES;
use super::state::{json_len, Entry};
use super::*;
use crate::bus::LocalBus;
use crate::serializer::{Frame, Serializer};
use serde_json::json;

fn hub(interval_ms: u64) -> (Hub, Presence) {
    let hub = Hub::new(Arc::new(LocalBus));
    let presence = Presence::new(hub.clone(), Duration::from_millis(interval_ms));
    (hub, presence)
}

/// Subscribes `socket` to `topic` and makes it a `Full` watcher, dropping the state it got.
fn watch(hub: &Hub, p: &Presence, socket: &Arc<SocketShared>, topic: &str) {
    hub.subscribe(socket, topic);
    p.watch(topic, socket, PresenceFeed::Full);
    socket.outbox.take();
}

fn texts(socket: &SocketShared) -> Vec<Value> {
    let (frames, _) = socket.outbox.take();
    frames.iter().map(|f| serde_json::from_str(f.text()).unwrap()).collect()
}

fn track(p: &Presence, topic: &str, socket: &SocketShared, key: &str, meta: Value) -> String {
    p.track(topic, socket.conn, key, meta, || true).unwrap()
}

fn metas(list: &Value, key: &str) -> Vec<Value> {
    list[key]["metas"].as_array().cloned().unwrap_or_default()
}

#[test]
fn diffs_and_state_in_the_phoenix_format() {
    let (hub, p) = hub(0);
    let a = hub.register(Serializer::V2, None, Some("ua".into()), 64);
    let b = hub.register(Serializer::V1, None, None, 64);
    watch(&hub, &p, &a, "t");
    watch(&hub, &p, &b, "t");
    let r = track(&p, "t", &a, "alice", json!({"nick": "A"}));
    let expected =
        json!({"joins": {"alice": {"metas": [{"nick": "A", "phx_ref": r}]}}, "leaves": {}});
    assert_eq!(texts(&a), vec![json!([null, null, "t", "presence_diff", expected])]);
    let v1 = texts(&b);
    assert_eq!(v1[0]["event"], "presence_diff");
    assert_eq!(v1[0]["payload"], expected);

    let c = hub.register(Serializer::V2, None, None, 64);
    watch(&hub, &p, &c, "t");
    p.watch("t", &c, PresenceFeed::Full);
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
    let entry = |map: Map<String, Value>| Entry {
        key: Arc::from("k"),
        phx_ref: Arc::from("r1"),
        node: 1,
        conn: 1,
        meta: map.into(),
    };
    let kept = entry(map.clone());
    assert_eq!(kept.meta_map(), map);
    assert_eq!(
        serde_json::to_string(&kept.meta_value()).unwrap(),
        serde_json::to_string(&map).unwrap()
    );
    assert_eq!(kept.meta_json_len(), json_len(&map));
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
    let (hub, p) = hub(0);
    let a = hub.register(Serializer::V2, None, None, 8);
    assert_eq!(p.track("t", a.conn, "k", json!([1]), || true), Err(PresenceError::MetaNotObject));
    assert_eq!(p.track("t", a.conn, "k", json!({}), || false), Err(PresenceError::ChannelClosed));
    assert_eq!(p.list("t"), json!({}));
}

#[test]
fn a_key_has_one_meta_per_connection_and_leaving_one_keeps_the_other() {
    let (hub, p) = hub(0);
    let tab1 = hub.register(Serializer::V2, None, None, 64);
    let tab2 = hub.register(Serializer::V2, None, None, 64);
    let r1 = track(&p, "t", &tab1, "alice", json!({}));
    let r2 = track(&p, "t", &tab2, "alice", json!({}));
    assert_eq!(metas(&p.list("t"), "alice").len(), 2);
    watch(&hub, &p, &tab2, "t");
    p.untrack_conn("t", tab1.conn);
    assert_eq!(metas(&p.list("t"), "alice"), vec![json!({"phx_ref": r2})]);
    assert_eq!(
        texts(&tab2),
        vec![
            json!([null, null, "t", "presence_diff", {"joins": {}, "leaves": {"alice": {"metas": [{"phx_ref": r1}]}}}])
        ]
    );
    p.untrack_conn("t", tab2.conn);
    assert_eq!(p.list("t"), json!({}));
    assert!(!p.inner.topics.lock().is_empty(), "a watched topic stays");
    p.unwatch("t", tab2.conn);
    assert!(p.inner.topics.lock().is_empty(), "an empty topic keeps no state");
}

#[tokio::test(start_paused = true)]
async fn changes_within_the_interval_go_out_as_one_diff() {
    let (hub, p) = hub(50);
    let watcher = hub.register(Serializer::V2, None, None, 64);
    watch(&hub, &p, &watcher, "t");
    let socks: Vec<_> = (0..10).map(|_| hub.register(Serializer::V2, None, None, 8)).collect();
    let mut refs = Vec::new();
    for (i, s) in socks.iter().enumerate() {
        refs.push(track(&p, "t", s, &format!("k{i}"), json!({})));
    }
    // A join and a leave within the interval cancel out.
    p.untrack_conn("t", socks[9].conn);
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
    track(&p, "t", &s, "ghost", json!({}));
    p.untrack_conn("t", s.conn);
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert!(texts(&watcher).is_empty());
}

#[tokio::test(start_paused = true)]
async fn state_is_as_of_the_last_flush_and_the_next_diff_completes_it() {
    let (hub, p) = hub(50);
    // Diffs are recorded while someone watches the topic in full.
    let watcher = hub.register(Serializer::V2, None, None, 64);
    watch(&hub, &p, &watcher, "t");
    let a = hub.register(Serializer::V2, None, None, 64);
    let b = hub.register(Serializer::V2, None, None, 64);
    let ra = track(&p, "t", &a, "a", json!({}));
    tokio::time::sleep(Duration::from_millis(60)).await;
    // Within the next interval: b joins, a leaves.
    let rb = track(&p, "t", &b, "b", json!({}));
    p.untrack_conn("t", a.conn);
    let joiner = hub.register(Serializer::V2, None, None, 64);
    hub.subscribe(&joiner, "t");
    p.watch("t", &joiner, PresenceFeed::Full);
    let other = hub.register(Serializer::V2, None, None, 64);
    hub.subscribe(&other, "t");
    p.watch("t", &other, PresenceFeed::Full);
    let state = texts(&joiner);
    assert_eq!(
        state,
        vec![json!([null, null, "t", "presence_state", {"a": {"metas": [{"phx_ref": ra}]}}])]
    );
    {
        let (f1, _) = {
            p.watch("t", &joiner, PresenceFeed::Full);
            joiner.outbox.take()
        };
        let (f2, _) = {
            p.watch("t", &other, PresenceFeed::Full);
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
    assert_eq!(p.list("t"), json!({"b": {"metas": [{"phx_ref": rb}]}}));
}

#[test]
fn updating_a_users_metas_is_a_leave_and_a_join_with_phx_ref_prev() {
    let (hub, p) = hub(0);
    let s1 = hub.register(Serializer::V2, None, Some("u1".into()), 64);
    let s2 = hub.register(Serializer::V2, None, Some("u1".into()), 64);
    let other = hub.register(Serializer::V2, None, Some("u2".into()), 64);
    for s in [&s1, &s2, &other] {
        watch(&hub, &p, s, "room:a");
    }
    watch(&hub, &p, &s1, "room:b");
    let r1 = track(&p, "room:a", &s1, "h1", json!({"nickname": "old", "online_at": 1}));
    let _r2 = track(&p, "room:a", &s2, "h1", json!({"nickname": "old", "online_at": 2}));
    let r3 = track(&p, "room:b", &s1, "h1", json!({"nickname": "old", "online_at": 3}));
    let ro = track(&p, "room:a", &other, "h2", json!({"nickname": "them"}));
    texts(&other);
    let patch = json!({"nickname": "new", "phx_ref": "forged"});
    assert_eq!(p.update_user("u1", patch.as_object().unwrap()), 3);
    assert_eq!(p.update_user("nobody", patch.as_object().unwrap()), 0);
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
    let b = p.list("room:b");
    assert_eq!(metas(&b, "h1")[0]["phx_ref_prev"], json!(r3));
    assert_eq!(metas(&p.list("room:a"), "h2"), vec![json!({"nickname": "them", "phx_ref": ro})]);
    // The renewed entries still leave with their connection.
    p.untrack_conn("room:a", s1.conn);
    p.untrack_conn("room:a", s2.conn);
    assert!(p.list("room:a").get("h1").is_none());
}

#[test]
fn a_phx_ref_that_leaves_and_comes_back_in_one_interval_leaves_first() {
    let (hub, p) = hub(0);
    let watcher = hub.register(Serializer::V2, None, None, 64);
    watch(&hub, &p, &watcher, "t");
    let remote = hub.node_id().wrapping_add(1);
    let entry = |nick: &str| PresenceEntry {
        key: "x".into(),
        node: remote,
        meta: json!({"phx_ref": "r1", "nick": nick}).as_object().unwrap().clone(),
    };
    p.merge(remote, "t", vec![entry("old")]).unwrap();
    texts(&watcher);
    // As within one interval: it leaves, and comes back with another meta.
    let mut topics = p.inner.topics.lock();
    let tp = topics.get_mut("t").unwrap();
    tp.leave("x", "r1");
    tp.join(Entry {
        key: "x".into(),
        phx_ref: "r1".into(),
        node: remote,
        conn: 0,
        meta: entry("new").meta.into(),
    });
    let diffs = tp.pending.take_diff("t");
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
    let (hub, p) = hub(0);
    let watcher = hub.register(Serializer::V2, None, None, 64);
    watch(&hub, &p, &watcher, "t");
    let local = hub.register(Serializer::V2, None, None, 64);
    let rl = track(&p, "t", &local, "me", json!({}));
    let me = hub.node_id();
    let remote = me.wrapping_add(1);
    let entry = |key: &str, r: &str| PresenceEntry {
        key: key.into(),
        node: remote,
        meta: json!({"phx_ref": r}).as_object().unwrap().clone(),
    };
    p.merge(remote, "t", vec![entry("x", "r1"), entry("y", "r2")]).unwrap();
    let mut entries = p.entries("t");
    entries.sort_by(|a, b| a.key.cmp(&b.key));
    assert_eq!(
        entries.iter().map(|e| (e.key.as_str(), e.node)).collect::<Vec<_>>(),
        vec![("me", me), ("x", remote), ("y", remote)]
    );
    texts(&watcher);
    // The remote node's new share: y left, z joined; x unchanged sends nothing for x.
    p.merge(remote, "t", vec![entry("x", "r1"), entry("z", "r3")]).unwrap();
    assert_eq!(
        texts(&watcher),
        vec![json!([null, null, "t", "presence_diff", {
            "joins": {"z": {"metas": [{"phx_ref": "r3"}]}},
            "leaves": {"y": {"metas": [{"phx_ref": "r2"}]}}
        }])]
    );
    // Nobody can replace this node's own entries through a merge.
    p.merge(me, "t", vec![]).unwrap();
    assert_eq!(metas(&p.list("t"), "me"), vec![json!({"phx_ref": rl})]);
    // A meta without phx_ref cannot be merged.
    let bad = PresenceEntry { key: "q".into(), node: remote, meta: Map::new() };
    assert_eq!(p.merge(remote, "t", vec![bad]), Err(PresenceError::MetaNotObject));
    // The remote node goes away: its entries leave, ours stay.
    assert_eq!(p.drop_node(remote), 2);
    assert_eq!(p.drop_node(me), 0);
    let list = p.list("t");
    assert_eq!(list.as_object().unwrap().keys().collect::<Vec<_>>(), vec!["me"]);
}

/// Records what presence hands a bus that replicates it.
#[derive(Default)]
struct ReplicatingBus(parking_lot::Mutex<Vec<(String, PresenceChange)>>);

impl crate::bus::Bus for ReplicatingBus {
    fn publish(&self, _from: u64, _msg: &crate::bus::BusMessage) {}
    fn replicates_presence(&self) -> bool {
        true
    }
    fn presence_changed(&self, topic: &str, change: PresenceChange) {
        self.0.lock().push((topic.to_owned(), change));
    }
}

#[tokio::test(start_paused = true)]
async fn a_socket_that_watches_nothing_gets_no_presence_frame() {
    let (hub, p) = hub(50);
    let sockets: Vec<_> = (0..50).map(|_| hub.register(Serializer::V2, None, None, 8)).collect();
    for (i, s) in sockets.iter().enumerate() {
        hub.subscribe(s, "t");
        track(&p, "t", s, &format!("k{}", i % 40), json!({}));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.untrack_conn("t", sockets[0].conn);
    tokio::time::sleep(Duration::from_secs(2)).await;
    for s in &sockets {
        assert!(texts(s).is_empty(), "no presence frame without asking");
    }
    // Still tracked: lists and counts see everyone.
    assert_eq!(p.count("t"), (40, 49));
    assert_eq!(p.list("t").as_object().unwrap().len(), 40);
    let tp = p.inner.topics.lock();
    assert!(tp["t"].pending.is_empty(), "no diff is recorded for nobody");
}

#[tokio::test(start_paused = true)]
async fn count_watchers_get_the_count_now_then_at_most_once_a_second() {
    let (hub, p) = hub(50);
    let counter = hub.register(Serializer::V2, None, None, 64);
    hub.subscribe(&counter, "t");
    p.watch("t", &counter, PresenceFeed::Count);
    let count = |users: usize, connections: usize| json!([null, null, "t", "presence_count", {"users": users, "connections": connections}]);
    assert_eq!(texts(&counter), vec![count(0, 0)], "the count at once");
    let sockets: Vec<_> = (0..10).map(|_| hub.register(Serializer::V2, None, None, 8)).collect();
    for (i, s) in sockets.iter().enumerate() {
        track(&p, "t", s, &format!("k{}", i % 5), json!({}));
    }
    assert!(texts(&counter).is_empty(), "a burst is coalesced");
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(texts(&counter), vec![count(5, 10)]);
    p.untrack_conn("t", sockets[0].conn);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(texts(&counter).is_empty(), "not twice within a second");
    p.untrack_conn("t", sockets[1].conn);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(texts(&counter), vec![count(5, 8)], "the latest count, within the second");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(texts(&counter).is_empty(), "nothing when nothing changed");
    // A count watcher gets no diff, and leaving the feed stops the counts.
    p.unwatch("t", counter.conn);
    track(&p, "t", &sockets[0], "k0", json!({}));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(texts(&counter).is_empty());
}

#[test]
fn only_the_changes_go_to_a_replicating_bus() {
    let bus = Arc::new(ReplicatingBus::default());
    let hub = Hub::new(bus.clone());
    let p = Presence::new(hub.clone(), Duration::ZERO);
    let sockets: Vec<_> =
        (0..100).map(|i| hub.register(Serializer::V2, None, Some(format!("u{i}")), 8)).collect();
    for (i, s) in sockets.iter().enumerate() {
        hub.subscribe(s, "t");
        track(&p, "t", s, &format!("k{i}"), json!({"n": i}));
    }
    let seen = std::mem::take(&mut *bus.0.lock());
    assert_eq!(seen.len(), 100);
    assert!(seen.iter().all(|(t, c)| t == "t" && c.joins.len() == 1 && c.leaves.is_empty()));
    assert_eq!(seen[99].1.joins[0].key, "k99");
    assert_eq!(seen[99].1.joins[0].node, hub.node_id());
    p.untrack_conn("t", sockets[5].conn);
    p.update_user("u7", json!({"n": "x"}).as_object().unwrap());
    let seen = std::mem::take(&mut *bus.0.lock());
    assert_eq!(seen.len(), 2);
    let r5 = &seen[0].1;
    assert!(r5.joins.is_empty());
    assert_eq!(r5.leaves.len(), 1);
    assert_eq!(r5.leaves[0].0, "k5");
    let update = &seen[1].1;
    assert_eq!((update.joins.len(), update.leaves.len()), (1, 1));
    assert_eq!(update.joins[0].meta["n"], "x");
    assert_eq!(update.joins[0].meta["phx_ref_prev"], json!(update.leaves[0].1));
}

#[test]
fn another_nodes_changes_apply_in_place_and_only_to_its_own_entries() {
    let (hub, p) = hub(0);
    let watcher = hub.register(Serializer::V2, None, None, 64);
    watch(&hub, &p, &watcher, "t");
    let local = hub.register(Serializer::V2, None, None, 64);
    let mine = track(&p, "t", &local, "me", json!({}));
    texts(&watcher);
    let (a, b) = (hub.node_id().wrapping_add(1), hub.node_id().wrapping_add(2));
    let entry = |node: u64, key: &str, r: &str| PresenceEntry {
        key: key.into(),
        node,
        meta: json!({"phx_ref": r}).as_object().unwrap().clone(),
    };
    let joins = |entries: Vec<PresenceEntry>| PresenceChange { joins: entries, leaves: vec![] };
    p.apply(a, "t", joins(vec![entry(a, "x", "ra")])).unwrap();
    p.apply(b, "t", joins(vec![entry(b, "y", "rb")])).unwrap();
    // Again: known metas change nothing.
    p.apply(a, "t", joins(vec![entry(a, "x", "ra")])).unwrap();
    assert_eq!(p.count("t"), (3, 3));
    assert_eq!(texts(&watcher).len(), 2, "one diff per change that changed something");
    // A leave names only its sender's entries: a cannot remove b's nor this node's.
    let leave = |key: &str, r: &str| PresenceChange {
        joins: vec![],
        leaves: vec![(key.to_owned(), r.to_owned())],
    };
    p.apply(a, "t", leave("y", "rb")).unwrap();
    p.apply(a, "t", leave("me", &mine)).unwrap();
    p.apply(hub.node_id(), "t", leave("me", &mine)).unwrap();
    assert_eq!(p.count("t"), (3, 3));
    assert!(texts(&watcher).is_empty());
    p.apply(a, "t", leave("x", "ra")).unwrap();
    assert_eq!(
        texts(&watcher),
        vec![
            json!([null, null, "t", "presence_diff", {"joins": {}, "leaves": {"x": {"metas": [{"phx_ref": "ra"}]}}}])
        ]
    );
    let bad = PresenceChange {
        joins: vec![PresenceEntry { key: "q".into(), node: a, meta: Map::new() }],
        leaves: vec![],
    };
    assert_eq!(p.apply(a, "t", bad), Err(PresenceError::MetaNotObject));
    assert_eq!(p.own_entries("t").len(), 1);
    assert_eq!(p.drop_node(b), 1);
    assert_eq!(p.count("t"), (1, 1));
}

/// Frames and bytes that thousands of joins on one topic cost, with and without coalescing.
/// `cargo test -p channels --lib presence_cost -- --nocapture` prints the numbers.
mod cost {
    use super::*;
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
            payload: Payload,
            ctx: &ChannelContext<()>,
        ) -> Result<Value, Value> {
            if let Payload::Json(p) = &payload {
                if p.get("presence") == Some(&json!("full")) {
                    ctx.watch_presence(Some(PresenceFeed::Full));
                }
            }
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
    async fn run(n: usize, interval: Duration, gap: Duration, join: &str) -> (Tally, Value) {
        let hub = Hub::new(Arc::new(LocalBus));
        let presence = Presence::new(hub.clone(), interval);
        let handler = Arc::new(Handler(Arc::new(Tracking)));
        let mut sockets = Vec::with_capacity(n);
        let mut sessions = Vec::with_capacity(n);
        let mut tally = Tally::default();
        for i in 0..n {
            let socket = hub.register(Serializer::V2, None, Some(format!("user{i:05}")), 4096);
            let mut session = Session::new(
                handler.clone(),
                (),
                socket.clone(),
                hub.clone(),
                presence.clone(),
                10,
            );
            session.handle_text(join).await;
            sockets.push(socket);
            sessions.push(session);
            tokio::time::sleep(gap).await;
            drain(&sockets, &mut tally);
        }
        tokio::time::sleep(interval * 2 + Duration::from_millis(1)).await;
        drain(&sockets, &mut tally);
        (tally, presence.list("lobby"))
    }

    #[tokio::test(start_paused = true)]
    async fn presence_cost_of_thousands_of_joins() {
        const N: usize = 2000;
        let gap = Duration::from_micros(500);
        let full = r#"["1","1","lobby","phx_join",{"presence":"full"}]"#;
        let (plain, list_plain) = run(N, Duration::ZERO, gap, full).await;
        let (coalesced, list_coalesced) = run(N, Duration::from_millis(50), gap, full).await;
        let none = r#"["1","1","lobby","phx_join",{}]"#;
        let (unasked, list_unasked) = run(N, Duration::from_millis(50), gap, none).await;
        for (name, t) in [
            ("full, one diff per change", plain),
            ("full, coalesced over 50 ms", coalesced),
            ("nothing asked", unasked),
        ] {
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
        // Nothing asked: everyone tracked, no presence frame at all (the join replies only).
        assert_eq!(list_unasked.as_object().unwrap().len(), N);
        assert_eq!(unasked.state_frames + unasked.diff_frames, 0, "{unasked:?}");
        assert_eq!(unasked.frames, N as u64);
    }
}

/// This test binary's allocator: the system's, counting what each thread holds (bytes asked
/// for minus bytes freed), so a test can measure what a structure keeps.
mod counting {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        static NET: Cell<isize> = const { Cell::new(0) };
    }

    pub struct Counting;

    fn add(bytes: isize) {
        let _ = NET.try_with(|net| net.set(net.get() + bytes));
    }

    /// Bytes this thread allocated and has not freed (frees of its memory on other threads
    /// count there).
    pub fn net() -> isize {
        NET.with(Cell::get)
    }

    // SAFETY: every call is passed to `System` unchanged; the counter is a const-initialized
    // thread-local `Cell`, which neither allocates nor needs a destructor.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let p = unsafe { System.alloc_zeroed(layout) };
            if !p.is_null() {
                add(layout.size() as isize);
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            add(-(layout.size() as isize));
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            let p = unsafe { System.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                add(new_size as isize - layout.size() as isize);
            }
            p
        }
    }
}

#[global_allocator]
static ALLOCATOR: counting::Counting = counting::Counting;

/// Every socket that joins a notifications topic is tracked, so what tracking keeps per
/// connection is paid 10,000 times on a big topic: HoloQuest's meta (`nickname`, `online_at`)
/// under a 24-character key. Bytes asked for (which do not depend on the allocator): 483
/// before the meta was kept as text and the roster's copies of keys and refs were dropped, 317
/// after (582 and 352 in glibc's chunks).
#[test]
fn a_tracked_connection_keeps_under_400_bytes() {
    let (_hub, p) = hub(50);
    let n = 10_000usize;
    let keys: Vec<String> = (0..n).map(|i| format!("{:024x}", i * 7919)).collect();
    let before = counting::net();
    for (i, key) in keys.iter().enumerate() {
        let meta = json!({"nickname": format!("visitor{i}"), "online_at": 1_764_990_000_000u64 + i as u64});
        p.track("notifications", 1 + i as u64, key, meta, || true).unwrap();
    }
    let per_connection = (counting::net() - before) / n as isize;
    eprintln!("{per_connection} bytes per tracked connection");
    assert_eq!(p.count("notifications"), (n, n));
    assert!(per_connection < 400, "{per_connection} bytes per tracked connection");
    // Untracking gives it back: what is left is the table of topics, which keeps its capacity.
    for i in 0..n {
        p.untrack_conn("notifications", 1 + i as u64);
    }
    assert_eq!(p.count("notifications"), (0, 0));
    let left = counting::net() - before;
    assert!(left < 4096, "{left} bytes left after every connection left");
}
