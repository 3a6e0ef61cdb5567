//! A Redis bus for the channels engine: several nodes behind a load balancer behave as one.
//!
//! Every delivery is applied to this node's hub at once (so local delivery keeps working when
//! Redis does not) and published to Redis for the others:
//! - broadcasts, topic-matching broadcasts and disconnects on `{prefix}:all`, which every node
//!   subscribes to (each node encodes a broadcast once for its own sockets);
//! - a user's messages on `{prefix}:user:{user}`, which only the nodes holding a socket of that
//!   user subscribe to (the hub tells the bus when a user's first socket arrives and its last
//!   leaves), so a targeted message wakes only the nodes that need it;
//! - presence on `{prefix}:presence`: each node publishes the changes of its own presences
//!   (what joined and left, coalesced over 50 ms: O(changes), never a whole topic per change),
//!   numbered so that a receiver that missed one notices and asks for shares; heartbeats every
//!   second, and a node not heard from within the node timeout is dropped (its users leave). A
//!   node that (re)connects asks everyone for their whole shares, so the cluster heals without
//!   restarts.
//!
//! Redis down: the link retries with backoff (logged); deliveries meanwhile stay local.

mod link;
mod wire;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use channels::{Bus, BusMessage, Hub, Presence, PresenceChange};
use tokio::sync::mpsc;

pub use link::LinkState;

#[derive(Debug, Clone)]
pub struct RedisBusConfig {
    /// `redis://host:port/db`
    pub url: String,
    /// Namespace of the channels, so several clusters can share one Redis.
    pub prefix: String,
    /// How often this node says it is alive.
    pub heartbeat: Duration,
    /// A node not heard from for this long is gone: its presences leave.
    pub node_timeout: Duration,
}

impl RedisBusConfig {
    pub fn new(url: impl Into<String>) -> RedisBusConfig {
        RedisBusConfig {
            url: url.into(),
            prefix: "channels".into(),
            heartbeat: Duration::from_secs(1),
            node_timeout: Duration::from_secs(5),
        }
    }
}

/// Commands for the link task, which owns the Redis connections.
#[derive(Debug)]
enum Command {
    Publish { channel: String, bytes: Vec<u8> },
    Subscribe(String),
    Unsubscribe(String),
    PresenceChanged(String, PresenceChange),
    Leave,
}

/// What the bus reports for health checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusStatus {
    pub connected: bool,
    /// The last connection error while disconnected.
    pub error: Option<String>,
    /// Other nodes heard from within the node timeout.
    pub nodes: usize,
}

pub struct RedisBus {
    config: RedisBusConfig,
    commands: mpsc::UnboundedSender<Command>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Command>>>,
    state: Arc<Mutex<LinkState>>,
}

impl RedisBus {
    /// A bus not yet connected; give it to `Endpoint::with_bus`, then call [`RedisBus::start`]
    /// with the endpoint's hub.
    pub fn new(config: RedisBusConfig) -> Arc<RedisBus> {
        let (tx, rx) = mpsc::unbounded_channel();
        Arc::new(RedisBus {
            config,
            commands: tx,
            receiver: Mutex::new(Some(rx)),
            state: Arc::new(Mutex::new(LinkState::new(Instant::now()))),
        })
    }

    /// Connects (and keeps reconnecting) to Redis, delivering what other nodes publish into
    /// `hub` and `presence` (the endpoint's). Call once; later calls do nothing.
    pub fn start(&self, hub: Hub, presence: Presence) {
        let Some(rx) = self.receiver.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        tokio::spawn(link::run(self.config.clone(), hub, presence, rx, self.state.clone()));
    }

    pub fn status(&self) -> BusStatus {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        BusStatus {
            connected: state.connected,
            error: state.error.clone(),
            nodes: state.nodes.len(),
        }
    }

    /// Tell the other nodes this one is leaving, so its presences leave at once rather than
    /// after the node timeout.
    pub fn leave(&self) {
        let _ = self.commands.send(Command::Leave);
    }

    fn channel_all(&self) -> String {
        format!("{}:all", self.config.prefix)
    }

    fn channel_user(&self, user: &str) -> String {
        format!("{}:user:{user}", self.config.prefix)
    }
}

impl Bus for RedisBus {
    fn publish(&self, from: u64, msg: &BusMessage) {
        let channel = match msg {
            BusMessage::User { user, .. } => self.channel_user(user),
            _ => self.channel_all(),
        };
        let bytes = wire::delivery(from, msg);
        let _ = self.commands.send(Command::Publish { channel, bytes });
    }

    fn user_arrived(&self, user: &str) {
        let _ = self.commands.send(Command::Subscribe(self.channel_user(user)));
    }

    fn user_left(&self, user: &str) {
        let _ = self.commands.send(Command::Unsubscribe(self.channel_user(user)));
    }

    fn replicates_presence(&self) -> bool {
        true
    }

    fn presence_changed(&self, topic: &str, change: PresenceChange) {
        let _ = self.commands.send(Command::PresenceChanged(topic.to_owned(), change));
    }
}
