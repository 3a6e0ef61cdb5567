//! Tako's realtime half on the channels engine: who may connect, the notifications channel,
//! and the delivery API the operators' routes and CLI use.

mod directory;
mod mailbox;
mod notifications;
mod presence;
mod resync;
mod signals;
mod sockets;

use std::sync::Arc;

use std::time::Duration;

use channels::{Endpoint, EndpointConfig, Hub, Payload, Presence, TopicMatch};
use channels_redis::{BusStatus, RedisBus, RedisBusConfig};
use serde_json::{json, Map, Value};

use crate::accounts::{Nickname, UserId};
use crate::config::Config;
use crate::messages::{IdempotencyKey, Message, MessageId};
use crate::storage::{Store, StoreError};
pub use directory::UserDirectory;
pub use mailbox::Mailbox;
pub use notifications::{is_notifications_topic, NOTIFICATIONS};
pub use presence::handle as presence_handle;
pub use sockets::SocketUser;
use sockets::TakoSockets;

/// The engine endpoint with Tako's socket handler, plus the server-side delivery API.
#[derive(Clone)]
pub struct Realtime {
    endpoint: Arc<Endpoint<TakoSockets>>,
    directory: Arc<UserDirectory>,
    mailbox: Arc<Mailbox>,
    /// The Redis bus, in cluster mode.
    cluster: Option<Arc<RedisBus>>,
}

impl Realtime {
    /// `observer` hears of messages in and out (the metrics).
    pub fn new(
        store: Arc<dyn Store>,
        config: &Config,
        observer: Arc<dyn channels::Observer>,
    ) -> Realtime {
        let directory = UserDirectory::spawn(store.clone());
        let tracker = Arc::new(presence::PresenceTracker::new(
            store.clone(),
            directory.clone(),
            config.presence,
        ));
        let cluster = config.pubsub_url.as_ref().map(|url| {
            let mut bus = RedisBusConfig::new(url.clone());
            bus.prefix = config.cluster_name.clone();
            bus.node_timeout = Duration::from_secs(config.node_timeout_secs.max(1));
            RedisBus::new(bus)
        });
        let store_for_resync = store.clone();
        let mailbox = Mailbox::spawn(
            store,
            config.message_ttl,
            cluster.is_some(),
            config.max_queued_bytes,
            Duration::from_secs(config.message_write_timeout_secs),
        );
        let verified = config.stamps == crate::config::StampsMode::Verified;
        let handler = TakoSockets::new(directory.clone(), mailbox.clone(), tracker, verified);
        let endpoint_config = EndpointConfig {
            heartbeat_timeout: config.heartbeat_timeout(),
            max_channels: config.max_channels,
            max_frame_bytes: config.max_frame_bytes,
            shutdown_timeout: config.shutdown_timeout(),
            presence_interval: config.presence_interval(),
            longpoll_window: config.longpoll_window(),
            // Validated by `Config::normalize`; a config built in code that skipped it gets
            // the strictest reading: no origin at all.
            check_origin: config
                .check_origin()
                .unwrap_or_else(|_| channels::CheckOrigin::List(Vec::new())),
            max_connections: (config.max_connections > 0).then_some(config.max_connections),
            max_connections_per_client: (config.max_connections_per_ip > 0)
                .then_some(config.max_connections_per_ip),
            trusted_proxies: config.trust_proxy.clone(),
            outbound_queue_bytes: config.max_queued_bytes,
            inbound_bytes_per_second: (config.socket_bytes_per_second > 0)
                .then_some(config.socket_bytes_per_second),
            inbound_rate: (config.socket_rate > 0).then(|| channels::InboundRate {
                per_second: f64::from(config.socket_rate),
                burst: config.socket_burst.max(1),
            }),
            observer,
            ..EndpointConfig::default()
        };
        let endpoint = match &cluster {
            Some(bus) => Endpoint::with_bus(handler, endpoint_config, bus.clone()),
            None => Endpoint::new(handler, endpoint_config),
        };
        signals::listen(&endpoint.hub(), endpoint.presence(), mailbox.clone(), directory.clone());
        mailbox.start(endpoint.hub());
        if let Some(bus) = &cluster {
            bus.start(endpoint.hub(), endpoint.presence());
            resync::spawn(
                endpoint.hub(),
                endpoint.presence(),
                bus.clone(),
                directory.clone(),
                mailbox.clone(),
                store_for_resync,
            );
        }
        Realtime { endpoint, directory, mailbox, cluster }
    }

    /// `/websocket` and `/longpoll`, to nest under `/socket`.
    pub fn routes(&self) -> axum::Router {
        self.endpoint.routes()
    }

    pub fn hub(&self) -> Hub {
        self.endpoint.hub()
    }

    /// Who is on each topic, every node's presences included.
    pub fn presence(&self) -> Presence {
        self.endpoint.presence()
    }

    /// Open sockets: (WebSocket, LongPoll).
    pub fn sockets_by_transport(&self) -> (usize, usize) {
        (self.endpoint.websocket_count(), self.endpoint.longpoll_sessions())
    }

    /// Once shutdown has begun (readiness then fails, so balancers stop sending).
    pub fn is_shutting_down(&self) -> bool {
        self.endpoint.is_shutting_down()
    }

    /// Stores a message for `user` (once per idempotency key) and pushes `msg`
    /// `{"user_id","message",…extra,"id","inserted_at"}` to their joined notifications topics
    /// if they are online; otherwise it waits for their next join. Returns the message (its
    /// `delivered_at` set if a socket wrote it already) and whether this call stored it (false:
    /// the key's earlier message). An error means nothing was stored.
    pub async fn send_message(
        &self,
        user: UserId,
        text: String,
        extra: Map<String, Value>,
        key: Option<&IdempotencyKey>,
    ) -> Result<(Message, bool), StoreError> {
        self.mailbox.send(&self.hub(), user, text, extra, key).await
    }

    /// A stored message and its delivery state.
    pub async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        self.mailbox.message(id).await
    }

    /// Remember a user that was just registered, so its first connect needs no query.
    pub fn user_registered(&self, user: UserId, nickname: Option<Nickname>) {
        self.directory.remember(user, nickname);
    }

    /// The user's nickname changed: their live presences (every notifications topic, every
    /// tab, every node) get the new one, as a leave of the old meta and a join of the new.
    pub fn nickname_changed(&self, user: UserId, nickname: Option<&Nickname>) {
        signals::renamed(&self.hub(), user, nickname);
    }

    /// Any event to everyone on `topic`.
    pub fn broadcast(&self, topic: &str, event: &str, payload: Value) {
        self.hub().broadcast(topic, event, Payload::Json(payload));
    }

    /// The original's server-wide `ping`: `{"msg":"ping"}` on every notifications topic; the
    /// client answers with a `pong` push.
    pub fn ping_everyone(&self) {
        self.hub().broadcast_matching(
            notifications_topics(),
            "ping",
            Payload::Json(json!({"msg": "ping"})),
        );
    }

    /// Closes every socket of `user` (socket id `user_socket:<uuid>`) and forgets that the user
    /// exists, so a deleted user cannot reconnect from the cache.
    pub fn disconnect_user(&self, user: UserId) -> usize {
        self.directory.forget(user);
        signals::deleted(&self.hub(), user);
        self.hub().disconnect(&sockets::socket_id(user))
    }

    /// In cluster mode, the link to Redis (`None` on a single node).
    pub fn cluster_status(&self) -> Option<BusStatus> {
        self.cluster.as_ref().map(|bus| bus.status())
    }

    /// Closes every socket with 1001 and waits for them, bounded by the shutdown timeout.
    pub async fn shutdown(&self) {
        // Leaving first: the other nodes drop this node's presences at once, not after the
        // node timeout, and its clients reconnect to them.
        if let Some(bus) = &self.cluster {
            bus.leave();
        }
        self.endpoint.shutdown().await;
    }
}

fn notifications_topics() -> TopicMatch {
    TopicMatch::Prefix(NOTIFICATIONS.to_owned())
}
