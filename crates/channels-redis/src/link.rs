//! The task that owns the Redis connections: publishes what this node sends, delivers what
//! the others send, heartbeats, replicates presence, and reconnects with backoff.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use channels::{Hub, Presence, PresenceChange, PresenceEntry};
use futures_util::{FutureExt, StreamExt};
use redis::aio::{MultiplexedConnection, PubSubSink, PubSubStream};
use tokio::sync::mpsc;

use crate::wire::{self, Incoming};
use crate::{Command, RedisBusConfig};

const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Presence changes are published at most this often per topic (they coalesce meanwhile).
const SHARE_EVERY: Duration = Duration::from_millis(50);
/// Most entries (joins plus leaves) in one presence message, so none grows without bound.
const MAX_CHANGE_ENTRIES: usize = 500;
/// Commands sent to Redis in one pipeline at most.
const PIPELINE: usize = 512;
/// Messages already arrived from Redis that are read before a node is declared silent (its
/// last heartbeat may be among them).
const DRAIN_BEFORE_EXPIRY: usize = 1024;

/// Shared with [`crate::RedisBus::status`].
#[derive(Debug)]
pub struct LinkState {
    pub connected: bool,
    pub error: Option<String>,
    /// Other nodes and when they were last heard from.
    pub nodes: HashMap<u64, Instant>,
}

impl LinkState {
    pub(crate) fn new(_now: Instant) -> LinkState {
        LinkState { connected: false, error: None, nodes: HashMap::new() }
    }
}

struct Link {
    config: RedisBusConfig,
    hub: Hub,
    presence: Presence,
    node: u64,
    state: Arc<Mutex<LinkState>>,
    /// User channels this node wants, whether or not Redis is up right now.
    users: HashSet<String>,
    /// This node's presence changes not yet published, by topic.
    dirty: HashMap<String, Unsent>,
    /// Topics where this node has (or had) presences: what a sync republishes.
    presence_topics: HashSet<String>,
    /// The number of this node's last presence message (share or change).
    seq: u64,
    /// The number of the last presence message heard from each other node.
    heard_seq: HashMap<u64, u64>,
    /// A gap was seen in another node's presence messages: ask for shares at the next beat.
    resync: bool,
    leaving: bool,
}

/// This node's presence changes on one topic since the last publish, coalesced: a meta that
/// joined and left meanwhile is in neither list.
#[derive(Default)]
struct Unsent {
    joins: HashMap<String, PresenceEntry>,
    leaves: Vec<(String, String)>,
}

impl Unsent {
    fn add(&mut self, change: PresenceChange) {
        for (key, phx_ref) in change.leaves {
            if self.joins.remove(&phx_ref).is_none() {
                self.leaves.push((key, phx_ref));
            }
        }
        for entry in change.joins {
            if let Some(phx_ref) = entry.phx_ref() {
                self.joins.insert(phx_ref.to_owned(), entry);
            }
        }
    }

    /// The changes in messages of at most [`MAX_CHANGE_ENTRIES`] entries, leaves first.
    fn into_changes(self) -> Vec<PresenceChange> {
        let mut out = Vec::new();
        for leaves in self.leaves.chunks(MAX_CHANGE_ENTRIES) {
            out.push(PresenceChange { joins: Vec::new(), leaves: leaves.to_vec() });
        }
        let joins: Vec<PresenceEntry> = self.joins.into_values().collect();
        for joins in joins.chunks(MAX_CHANGE_ENTRIES) {
            out.push(PresenceChange { joins: joins.to_vec(), leaves: Vec::new() });
        }
        out
    }
}

fn lock(state: &Mutex<LinkState>) -> std::sync::MutexGuard<'_, LinkState> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) async fn run(
    config: RedisBusConfig,
    hub: Hub,
    presence: Presence,
    mut rx: mpsc::UnboundedReceiver<Command>,
    state: Arc<Mutex<LinkState>>,
) {
    let node = hub.node_id();
    let mut link = Link {
        config,
        hub,
        presence,
        node,
        state,
        users: HashSet::new(),
        dirty: HashMap::new(),
        presence_topics: HashSet::new(),
        seq: 0,
        heard_seq: HashMap::new(),
        resync: false,
        leaving: false,
    };
    let mut backoff = MIN_BACKOFF;
    loop {
        match link.connect().await {
            Ok((sink, stream, conn)) => {
                tracing::info!(node = format!("{node:016x}"), "cluster bus connected to Redis");
                {
                    let mut state = lock(&link.state);
                    state.connected = true;
                    state.error = None;
                }
                backoff = MIN_BACKOFF;
                let error = link.serve(sink, stream, conn, &mut rx).await;
                let mut state = lock(&link.state);
                state.connected = false;
                match error {
                    None => return,
                    Some(error) => {
                        tracing::warn!(%error, "cluster bus lost Redis; deliveries stay local until it is back");
                        state.error = Some(error);
                    }
                }
            }
            Err(error) => {
                let mut state = lock(&link.state);
                if state.error.as_deref() != Some(error.as_str()) {
                    tracing::warn!(%error, retry_in = ?backoff, "cluster bus cannot reach Redis");
                }
                state.error = Some(error);
            }
        }
        if !link.wait_offline(backoff, &mut rx).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

impl Link {
    fn channel(&self, name: &str) -> String {
        format!("{}:{name}", self.config.prefix)
    }

    async fn connect(&self) -> Result<(PubSubSink, PubSubStream, MultiplexedConnection), String> {
        let client = redis::Client::open(self.config.url.as_str()).map_err(|e| e.to_string())?;
        let timeout = Duration::from_secs(3);
        let connect = async {
            let pubsub = client.get_async_pubsub().await?;
            let conn = client.get_multiplexed_async_connection().await?;
            Ok::<_, redis::RedisError>((pubsub, conn))
        };
        let (pubsub, conn) = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| "timed out connecting".to_owned())?
            .map_err(|e| e.to_string())?;
        let (mut sink, stream) = pubsub.split();
        let mut channels = vec![self.channel("all"), self.channel("presence")];
        channels.extend(self.users.iter().cloned());
        for chunk in channels.chunks(1000) {
            sink.subscribe(chunk).await.map_err(|e| e.to_string())?;
        }
        Ok((sink, stream, conn))
    }

    /// Serves one connection; `None` when the bus is gone (stop), else why the connection ended.
    async fn serve(
        &mut self,
        mut sink: PubSubSink,
        mut stream: PubSubStream,
        mut conn: MultiplexedConnection,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> Option<String> {
        // Ask everyone for their shares, and offer ours (others may have dropped this node).
        let mut hello = vec![(self.channel("presence"), wire::sync(self.node))];
        hello.extend(self.all_shares());
        self.resync = false;
        if let Err(error) = self.send(&mut conn, hello).await {
            return Some(error);
        }
        let mut beat = tokio::time::interval(self.config.heartbeat);
        let mut share = tokio::time::interval(SHARE_EVERY);
        share.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Fires at the moment the quietest node's silence reaches the node timeout, so a dead
        // node's presences leave within the timeout of its last message, not up to a
        // heartbeat later.
        let expiry = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(expiry);
        let mut armed: Option<Instant> = None;
        loop {
            let due = self.next_expiry();
            if due != armed {
                if let Some(due) = due {
                    expiry.as_mut().reset(tokio::time::Instant::from_std(due));
                }
                armed = due;
            }
            tokio::select! {
                command = rx.recv() => {
                    let command = command?;
                    let mut batch = vec![command];
                    while batch.len() < PIPELINE {
                        match rx.try_recv() {
                            Ok(command) => batch.push(command),
                            Err(_) => break,
                        }
                    }
                    if let Err(error) = self.apply(batch, &mut sink, &mut conn).await {
                        return Some(error);
                    }
                    if self.leaving {
                        return None;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { return Some("connection closed".into()) };
                    let mut replies = Vec::new();
                    self.receive(message.get_payload_bytes(), &mut replies);
                    if let Err(error) = self.send(&mut conn, replies).await {
                        return Some(error);
                    }
                }
                _ = &mut expiry, if armed.is_some() => {
                    armed = None;
                    // What already arrived counts as heard: read it before judging silence.
                    let mut replies = Vec::new();
                    for _ in 0..DRAIN_BEFORE_EXPIRY {
                        match stream.next().now_or_never() {
                            Some(Some(message)) => self.receive(message.get_payload_bytes(), &mut replies),
                            Some(None) => return Some("connection closed".into()),
                            None => break,
                        }
                    }
                    self.expire_nodes();
                    if let Err(error) = self.send(&mut conn, replies).await {
                        return Some(error);
                    }
                }
                _ = beat.tick() => {
                    let mut beat = vec![(self.channel("presence"), wire::heartbeat(self.node))];
                    if std::mem::take(&mut self.resync) {
                        tracing::info!("cluster bus: a presence change was missed; asking for shares");
                        beat.push((self.channel("presence"), wire::sync(self.node)));
                    }
                    if let Err(error) = self.send(&mut conn, beat).await {
                        return Some(error);
                    }
                }
                _ = share.tick(), if !self.dirty.is_empty() => {
                    let changes = self.changes();
                    if let Err(error) = self.send(&mut conn, changes).await {
                        return Some(error);
                    }
                }
            }
        }
    }

    async fn apply(
        &mut self,
        batch: Vec<Command>,
        sink: &mut PubSubSink,
        conn: &mut MultiplexedConnection,
    ) -> Result<(), String> {
        let mut publishes = Vec::new();
        for command in batch {
            match command {
                Command::Publish { channel, bytes } => publishes.push((channel, bytes)),
                Command::Subscribe(channel) => {
                    if self.users.insert(channel.clone()) {
                        sink.subscribe(&channel).await.map_err(|e| e.to_string())?;
                    }
                }
                Command::Unsubscribe(channel) => {
                    if self.users.remove(&channel) {
                        sink.unsubscribe(&channel).await.map_err(|e| e.to_string())?;
                    }
                }
                Command::PresenceChanged(topic, change) => self.presence_changed(topic, change),
                Command::Leave => {
                    publishes.push((self.channel("presence"), wire::bye(self.node)));
                    self.leaving = true;
                }
            }
        }
        self.send(conn, publishes).await
    }

    fn presence_changed(&mut self, topic: String, change: PresenceChange) {
        if !self.presence_topics.contains(&topic) {
            self.presence_topics.insert(topic.clone());
        }
        self.dirty.entry(topic).or_default().add(change);
    }

    /// The unsent changes, as numbered messages.
    fn changes(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        for (topic, unsent) in std::mem::take(&mut self.dirty) {
            for change in unsent.into_changes() {
                self.seq += 1;
                out.push((
                    self.channel("presence"),
                    wire::change(self.node, self.seq, &topic, &change),
                ));
            }
        }
        out
    }

    /// While Redis is away: keep the wanted subscriptions and presence topics current, drop
    /// publishes (they were delivered locally), expire silent nodes. False when the bus is gone.
    async fn wait_offline(
        &mut self,
        wait: Duration,
        rx: &mut mpsc::UnboundedReceiver<Command>,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            self.expire_nodes();
            let wake = match self.next_expiry() {
                Some(due) => deadline.min(tokio::time::Instant::from_std(due)),
                None => deadline,
            };
            match tokio::time::timeout_at(wake, rx.recv()).await {
                Err(_) if wake < deadline => continue,
                Err(_) => return true,
                Ok(None) => return false,
                Ok(Some(Command::Subscribe(channel))) => {
                    self.users.insert(channel);
                }
                Ok(Some(Command::Unsubscribe(channel))) => {
                    self.users.remove(&channel);
                }
                Ok(Some(Command::PresenceChanged(topic, change))) => {
                    self.presence_changed(topic, change)
                }
                Ok(Some(Command::Publish { .. })) => {}
                Ok(Some(Command::Leave)) => return false,
            }
        }
    }

    /// Applies what another node sent; `replies` gets what to publish in answer.
    fn receive(&mut self, bytes: &[u8], replies: &mut Vec<(String, Vec<u8>)>) {
        let Some((from, incoming)) = wire::decode(bytes) else {
            tracing::warn!(
                bytes = bytes.len(),
                "cluster bus: malformed message from Redis ignored"
            );
            return;
        };
        if from == self.node {
            return;
        }
        match incoming {
            Incoming::Delivery(msg) => {
                self.hub.deliver(msg);
            }
            Incoming::Heartbeat => self.heard(from),
            Incoming::Sync => {
                self.heard(from);
                replies.extend(self.all_shares());
            }
            Incoming::Share { topic, seq, entries } => {
                self.heard(from);
                self.heard_seq.insert(from, seq);
                if let Err(error) = self.presence.merge(from, &topic, entries) {
                    tracing::warn!(%error, "cluster bus: presence share refused");
                }
            }
            Incoming::Change { topic, seq, change } => {
                self.heard(from);
                let expected = self.heard_seq.get(&from).map_or(1, |last| last + 1);
                if seq != expected {
                    // Missed (or never had) some of its changes: its shares will set it right.
                    // Meanwhile apply this one; changes are idempotent.
                    self.resync = true;
                }
                self.heard_seq.insert(from, seq);
                if let Err(error) = self.presence.apply(from, &topic, change) {
                    tracing::warn!(%error, "cluster bus: presence change refused");
                }
            }
            Incoming::Bye => {
                lock(&self.state).nodes.remove(&from);
                self.heard_seq.remove(&from);
                let left = self.presence.drop_node(from);
                tracing::info!(
                    node = format!("{from:016x}"),
                    presences = left,
                    "node left the cluster"
                );
            }
        }
    }

    fn heard(&self, node: u64) {
        let mut state = lock(&self.state);
        if state.nodes.insert(node, Instant::now()).is_none() {
            tracing::info!(node = format!("{node:016x}"), "node joined the cluster");
        }
    }

    /// When the node heard from least recently reaches the node timeout, if any is known.
    fn next_expiry(&self) -> Option<Instant> {
        let oldest = lock(&self.state).nodes.values().min().copied()?;
        Some(oldest + self.config.node_timeout)
    }

    fn expire_nodes(&mut self) {
        let now = Instant::now();
        let gone: Vec<u64> = {
            let mut state = lock(&self.state);
            let gone: Vec<u64> = state
                .nodes
                .iter()
                .filter(|(_, seen)| now.duration_since(**seen) >= self.config.node_timeout)
                .map(|(n, _)| *n)
                .collect();
            for node in &gone {
                state.nodes.remove(node);
            }
            gone
        };
        for node in gone {
            self.heard_seq.remove(&node);
            let left = self.presence.drop_node(node);
            tracing::warn!(
                node = format!("{node:016x}"),
                presences = left,
                "node silent past the timeout: dropped from the cluster"
            );
        }
    }

    /// This node's presences on every topic where it has (or had) some, as share messages
    /// (what a sync asks for; topics left empty are forgotten once shared empty).
    fn all_shares(&mut self) -> Vec<(String, Vec<u8>)> {
        let mut out = Vec::new();
        let mut empty = Vec::new();
        for topic in &self.presence_topics {
            let mine = self.presence.own_entries(topic);
            if mine.is_empty() && !self.dirty.contains_key(topic) {
                empty.push(topic.clone());
            }
            self.seq += 1;
            out.push((self.channel("presence"), wire::share(self.node, self.seq, topic, &mine)));
        }
        for topic in empty {
            self.presence_topics.remove(&topic);
        }
        out
    }

    async fn send(
        &self,
        conn: &mut MultiplexedConnection,
        messages: Vec<(String, Vec<u8>)>,
    ) -> Result<(), String> {
        if messages.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for (channel, bytes) in messages {
            pipe.cmd("PUBLISH").arg(channel).arg(bytes).ignore();
        }
        tokio::time::timeout(Duration::from_secs(3), pipe.query_async::<()>(conn))
            .await
            .map_err(|_| "timed out publishing".to_owned())?
            .map_err(|e| e.to_string())
    }
}
