//! Every setting, read once at start from environment variables (flags mirror them) and
//! validated before anything listens.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub const DEFAULT_DATABASE_URL: &str = "sqlite://tako.db";

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// `TAKO_PRESENCE`: whether joiners of notifications topics are tracked, and which presence
/// frames a joiner that asks for none gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PresenceMode {
    /// Everyone tracked; frames only for sockets that ask (`{"presence": "full"|"count"}`).
    On,
    /// Nobody tracked, no presence frames (the join parameter is still checked).
    Off,
    /// As Phoenix: a joiner that asks nothing gets `presence_state` and every `presence_diff`.
    Phoenix,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Dev,
    Prod,
}

#[derive(Clone, Debug, Args)]
pub struct Config {
    /// TCP port to listen on.
    #[arg(long, env = "PORT", default_value_t = 4000)]
    pub port: u16,

    /// Address to bind.
    #[arg(long, env = "TAKO_BIND", default_value = "127.0.0.1")]
    pub bind: IpAddr,

    /// `sqlite://path` (created on first start) or `postgres://…`; `sqlite://tako.db` when unset.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// The client token HoloQuest ships in its web app (public: a client key, not a secret).
    #[arg(long, env = "HOLOQUEST_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,

    /// The operators' secret: listing users and, later, messaging.
    #[arg(long, env = "TAKO_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// `dev` accepts unauthenticated requests when no token is set; `prod` refuses to start.
    #[arg(long = "env", env = "TAKO_ENV", value_enum, default_value_t = Environment::Dev)]
    pub environment: Environment,

    /// Cluster bus (`redis://…`); without it, one node with an in-process bus.
    #[arg(long, env = "TAKO_PUBSUB_URL")]
    pub pubsub_url: Option<String>,

    /// Presence on the notifications topics. `on`: everyone who joins is tracked (admin route,
    /// dashboard, metrics) and only sockets that ask at join time (`{"presence": "full"}` or
    /// `"count"`) get presence frames. `phoenix`: a joiner that asks nothing gets the full list
    /// and every change, as Phoenix does (N² bytes on a topic all N join). `off`: nobody tracked.
    #[arg(long, env = "TAKO_PRESENCE", value_enum, default_value_t = PresenceMode::On)]
    pub presence: PresenceMode,

    /// Cluster mode: the cluster's name, which namespaces its Redis channels (several clusters,
    /// or test runs, can share one Redis).
    #[arg(long, env = "TAKO_CLUSTER", default_value = "tako")]
    pub cluster_name: String,

    /// Cluster mode: seconds after which a node not heard from is dropped (its users leave).
    #[arg(long, env = "TAKO_NODE_TIMEOUT", default_value_t = 5)]
    pub node_timeout_secs: u64,

    /// Comma-separated origins allowed by CORS; any origin when unset.
    #[arg(long, env = "TAKO_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Seconds a socket may stay silent before it is closed.
    #[arg(long, env = "TAKO_HEARTBEAT_TIMEOUT", default_value_t = 60)]
    pub heartbeat_timeout_secs: u64,

    /// Channels one socket may join at once.
    #[arg(long, env = "TAKO_MAX_CHANNELS", default_value_t = 100)]
    pub max_channels: usize,

    /// Largest inbound socket frame, in bytes (bigger closes the socket with 1009).
    #[arg(long, env = "TAKO_MAX_FRAME_BYTES", default_value_t = 1024 * 1024)]
    pub max_frame_bytes: usize,

    /// How long a message to an offline user waits before it expires (e.g. `7d`, `12h`, `30s`).
    #[arg(long, env = "TAKO_MESSAGE_TTL", default_value = "7d", value_parser = humantime::parse_duration)]
    pub message_ttl: std::time::Duration,

    /// Presence changes of a topic within this many milliseconds go out as one `presence_diff`
    /// (0: one diff per change).
    #[arg(long, env = "TAKO_PRESENCE_INTERVAL_MS", default_value_t = 50)]
    pub presence_interval_ms: u64,

    /// Seconds a LongPoll request waits for messages (kept under half the heartbeat timeout).
    #[arg(long, env = "TAKO_LONGPOLL_WINDOW", default_value_t = 10)]
    pub longpoll_window_secs: u64,

    /// Origins allowed to open sockets (Phoenix's check_origin): `https://quest.example.com`,
    /// `//*.example.com`, …, or `*` for any. Required in prod; any origin in dev when unset.
    #[arg(long, env = "TAKO_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,

    /// Sockets this node holds at most (WebSocket and LongPoll); more get 503. 0: no cap.
    #[arg(long, env = "TAKO_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Sockets one client address holds at most; more get 429. 0: no cap. Loopback is exempt.
    #[arg(long, env = "TAKO_MAX_CONNECTIONS_PER_IP", default_value_t = 1000)]
    pub max_connections_per_ip: usize,

    /// Registrations one client address may make per minute; more get 429. 0: no limit.
    #[arg(long, env = "TAKO_REGISTRATIONS_PER_MINUTE", default_value_t = 300)]
    pub registrations_per_minute: u32,

    /// Inbound messages per second one socket may send on average (0: no limit) …
    #[arg(long, env = "TAKO_SOCKET_RATE", default_value_t = 20)]
    pub socket_rate: u32,

    /// … and at once. Over it: error replies, then a close with 1008 "rate limited".
    #[arg(long, env = "TAKO_SOCKET_BURST", default_value_t = 60)]
    pub socket_burst: u32,

    /// Behind a proxy: take the client address from `X-Forwarded-For`.
    #[arg(long, env = "TAKO_TRUST_PROXY", default_value_t = false, value_parser = clap::builder::FalseyValueParser::new())]
    pub trust_proxy: bool,

    /// A second listener (e.g. `127.0.0.1:9090`) serving `GET /metrics` without a token.
    #[arg(long, env = "TAKO_METRICS_BIND")]
    pub metrics_bind: Option<std::net::SocketAddr>,

    /// Seconds given to open sockets to close on shutdown.
    #[arg(long, env = "TAKO_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("TAKO_ENV=prod requires {0}")]
    MissingInProd(&'static str),
    #[error("HOLOQUEST_API_TOKEN and TAKO_ADMIN_TOKEN must differ: the client token is public")]
    SameTokens,
    #[error("TAKO_ALLOWED_ORIGINS: {0}")]
    Origins(#[from] channels::InvalidOrigin),
}

impl Config {
    /// Empty strings count as unset, so `HOLOQUEST_API_TOKEN=` means "no token".
    pub fn normalize(mut self) -> Result<Config, ConfigError> {
        self.api_token = self.api_token.filter(|t| !t.is_empty());
        self.admin_token = self.admin_token.filter(|t| !t.is_empty());
        self.pubsub_url = self.pubsub_url.filter(|t| !t.is_empty());
        self.database_url = self.database_url.filter(|t| !t.is_empty());
        self.cors_origins.retain(|o| !o.trim().is_empty());
        self.allowed_origins.retain(|o| !o.trim().is_empty());
        self.check_origin()?;
        if self.environment == Environment::Prod {
            if self.api_token.is_none() {
                return Err(ConfigError::MissingInProd("HOLOQUEST_API_TOKEN"));
            }
            if self.admin_token.is_none() {
                return Err(ConfigError::MissingInProd("TAKO_ADMIN_TOKEN"));
            }
            if self.allowed_origins.is_empty() {
                return Err(ConfigError::MissingInProd(
                    "TAKO_ALLOWED_ORIGINS (or `*` for any origin)",
                ));
            }
            if self.database_url.is_none() {
                return Err(ConfigError::MissingInProd("DATABASE_URL"));
            }
        }
        if self.api_token.is_some() && self.api_token == self.admin_token {
            return Err(ConfigError::SameTokens);
        }
        Ok(self)
    }

    pub fn database_url(&self) -> &str {
        self.database_url.as_deref().unwrap_or(DEFAULT_DATABASE_URL)
    }

    pub fn heartbeat_timeout(&self) -> Duration {
        Duration::from_secs(self.heartbeat_timeout_secs.max(1))
    }

    pub fn presence_interval(&self) -> Duration {
        Duration::from_millis(self.presence_interval_ms)
    }

    pub fn longpoll_window(&self) -> Duration {
        Duration::from_secs(self.longpoll_window_secs.max(1))
    }

    /// Which origins may open sockets: any when unset or `*`.
    pub fn check_origin(&self) -> Result<channels::CheckOrigin, channels::InvalidOrigin> {
        if self.allowed_origins.is_empty() || self.allowed_origins.iter().any(|o| o.trim() == "*") {
            return Ok(channels::CheckOrigin::Any);
        }
        channels::CheckOrigin::list(self.allowed_origins.iter().map(|o| o.trim()))
    }

    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout_secs)
    }

    /// A configuration for tests and embedding: dev mode, no tokens, the given database.
    pub fn for_database(database_url: impl Into<String>) -> Config {
        Config {
            port: 0,
            bind: IpAddr::from([127, 0, 0, 1]),
            database_url: Some(database_url.into()),
            api_token: None,
            admin_token: None,
            environment: Environment::Dev,
            pubsub_url: None,
            node_timeout_secs: 5,
            cluster_name: "tako".into(),
            presence: PresenceMode::On,
            cors_origins: Vec::new(),
            heartbeat_timeout_secs: 60,
            max_channels: 100,
            max_frame_bytes: 1024 * 1024,
            shutdown_timeout_secs: 10,
            presence_interval_ms: 50,
            longpoll_window_secs: 10,
            allowed_origins: Vec::new(),
            max_connections: 100_000,
            max_connections_per_ip: 1000,
            registrations_per_minute: 300,
            socket_rate: 20,
            socket_burst: 60,
            trust_proxy: false,
            metrics_bind: None,
            message_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
        }
    }
}
