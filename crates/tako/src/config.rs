//! Every setting, read once at start from environment variables (flags mirror them) and
//! validated before anything listens.

use std::net::IpAddr;
use std::time::Duration;

use clap::{Args, ValueEnum};

pub const DEFAULT_DATABASE_URL: &str = "sqlite://tako.db";
/// The largest `TAKO_LEADERBOARD_MAX`: some 60 MB of JSON.
pub const MAX_LEADERBOARD: u32 = 1_000_000;

/// `TAKO_MAX_FRAME_BYTES` bounds: below 1 KiB a join with its token may not fit; above 256 MiB
/// one socket could hold the machine's memory.
const MIN_FRAME: u64 = 1024;
const MAX_FRAME: u64 = 256 * 1024 * 1024;

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

/// What `stamps_collected` is: what clients claim (the Tako-era client), or what the server
/// verified from scans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StampsMode {
    Claimed,
    Verified,
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

    /// Seconds a message handed to a user's socket may stay unwritten (a client that keeps its
    /// connection alive but stopped reading) before that socket is closed and the message waits
    /// for the user's next connection.
    #[arg(long, env = "TAKO_MESSAGE_WRITE_TIMEOUT", default_value_t = 120)]
    pub message_write_timeout_secs: u64,

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

    /// Behind proxies: which of them may say where a client comes from in `X-Forwarded-For`
    /// (read from the right): `off`, `on` (one proxy), a number of proxies, or the proxies'
    /// networks (`10.0.0.0/8,192.168.1.7`).
    #[arg(long, env = "TAKO_TRUST_PROXY", default_value = "off")]
    pub trust_proxy: channels::TrustedProxies,

    /// Bytes one socket may have waiting to be written before it is closed as a slow consumer
    /// (1013).
    #[arg(long, env = "TAKO_MAX_QUEUED_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_queued_bytes: usize,

    /// Bytes of messages per second one socket may send on average, in bursts of up to
    /// `TAKO_MAX_FRAME_BYTES` (0: no byte budget). Over it: error replies, then 1008.
    #[arg(long, env = "TAKO_SOCKET_BYTES_PER_SECOND", default_value_t = 64 * 1024)]
    pub socket_bytes_per_second: u64,

    /// Seconds a client may take to send a request's headers (and an idle keep-alive connection
    /// may wait for its next request) before the connection is closed.
    #[arg(long, env = "TAKO_HEADER_TIMEOUT", default_value_t = 10)]
    pub header_timeout_secs: u64,

    /// HTTP connections (sockets included) this node keeps open at most. When full, a new
    /// connection closes the oldest one that has not finished sending a request; 0: derived
    /// from the open-files limit.
    #[arg(long, env = "TAKO_MAX_HTTP_CONNECTIONS", default_value_t = 0)]
    pub max_http_connections: usize,

    /// A second listener (e.g. `127.0.0.1:9090`) serving `GET /metrics` without a token.
    #[arg(long, env = "TAKO_METRICS_BIND")]
    pub metrics_bind: Option<std::net::SocketAddr>,

    /// Seconds given to open sockets to close on shutdown.
    #[arg(long, env = "TAKO_SHUTDOWN_TIMEOUT", default_value_t = 10)]
    pub shutdown_timeout_secs: u64,

    /// Comma-separated names no visitor may take, nor a look-alike of (the event's name, …),
    /// besides the built-in admin, administrator, moderator, mod, staff, operator, official,
    /// support, system, root and holoquest.
    #[arg(long, env = "TAKO_RESERVED_NICKNAMES", value_delimiter = ',')]
    pub reserved_nicknames: Vec<String>,

    /// Rows of `GET /api/json/leaderboard` without `limit` at most (1 to 1,000,000).
    #[arg(long, env = "TAKO_LEADERBOARD_MAX", default_value_t = 10_000)]
    pub leaderboard_max: u32,

    /// `claimed`: clients set `stamps_collected` and push `collected` themselves (the
    /// Tako-era client). `verified`: only scans the server verified count.
    #[arg(long, env = "TAKO_STAMPS", value_enum, default_value_t = StampsMode::Claimed)]
    pub stamps: StampsMode,

    /// The event whose verified count `stamps_collected` shows (verified mode); unset: the one
    /// event when exactly one exists.
    #[arg(long, env = "TAKO_DEFAULT_EVENT")]
    pub default_event: Option<String>,

    /// Seconds a `screen` stamp's code is shown (the previous one is still accepted).
    #[arg(long, env = "TAKO_CODE_STEP", default_value_t = 30)]
    pub code_step_secs: u64,

    /// What a stamp's QR code holds: this URL with `{code}` replaced; the bare code when unset.
    #[arg(long, env = "TAKO_SCAN_URL")]
    pub scan_url: Option<String>,

    /// The key of stamp codes (at least 32 characters; the same on every node). Unset: one is
    /// generated and kept in the database.
    #[arg(long, env = "TAKO_RALLY_SECRET", hide_env_values = true)]
    pub rally_secret: Option<String>,

    /// Failed scans (unknown or expired codes) one user may make per minute; more get 429.
    #[arg(long, env = "TAKO_FAILED_SCANS_PER_MINUTE", default_value_t = 10)]
    pub failed_scans_per_minute: u32,

    /// Failed scans one client address may make per minute (loopback is exempt); more get 429.
    #[arg(long, env = "TAKO_FAILED_SCANS_PER_MINUTE_PER_IP", default_value_t = 60)]
    pub failed_scans_per_minute_per_ip: u32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Every missing setting at once, so one restart is enough to fix them all.
    #[error("TAKO_ENV=prod requires {}", .0.join(", "))]
    MissingInProd(Vec<&'static str>),
    /// Settings that make no sense (`0` timeouts and sizes, …), each naming its variable.
    #[error("invalid settings: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("HOLOQUEST_API_TOKEN and TAKO_ADMIN_TOKEN must differ: the client token is public")]
    SameTokens,
    #[error("TAKO_LEADERBOARD_MAX must be from 1 to {MAX_LEADERBOARD}")]
    LeaderboardMax,
    #[error("TAKO_ALLOWED_ORIGINS: {0}")]
    Origins(#[from] channels::InvalidOrigin),
    #[error("TAKO_DEFAULT_EVENT: an event id is 1 to 40 characters of a-z, 0-9 and `-`")]
    DefaultEvent,
    #[error("TAKO_CODE_STEP must be at least 1 (seconds)")]
    CodeStep,
    #[error("TAKO_SCAN_URL must contain `{{code}}` (e.g. https://app.example/sc/{{code}})")]
    ScanUrl,
    #[error("TAKO_RALLY_SECRET must be at least 32 characters")]
    RallySecret,
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
        self.reserved_nicknames.retain(|n| !n.trim().is_empty());
        self.default_event = self.default_event.filter(|t| !t.is_empty());
        self.scan_url = self.scan_url.filter(|t| !t.is_empty());
        self.rally_secret = self.rally_secret.filter(|t| !t.is_empty());
        self.check_origin()?;
        if !(1..=MAX_LEADERBOARD).contains(&self.leaderboard_max) {
            return Err(ConfigError::LeaderboardMax);
        }
        if self.default_event.as_deref().is_some_and(|e| crate::rally::EventId::parse(e).is_err()) {
            return Err(ConfigError::DefaultEvent);
        }
        if self.code_step_secs == 0 {
            return Err(ConfigError::CodeStep);
        }
        if self.scan_url.as_deref().is_some_and(|u| !u.contains("{code}")) {
            return Err(ConfigError::ScanUrl);
        }
        if self
            .rally_secret
            .as_deref()
            .is_some_and(|s| s.chars().count() < crate::rally::MIN_SECRET_CHARS)
        {
            return Err(ConfigError::RallySecret);
        }
        if self.environment == Environment::Prod {
            let missing: Vec<&'static str> = [
                (self.api_token.is_none(), "HOLOQUEST_API_TOKEN"),
                (self.admin_token.is_none(), "TAKO_ADMIN_TOKEN"),
                (self.allowed_origins.is_empty(), "TAKO_ALLOWED_ORIGINS (or `*` for any origin)"),
                (self.database_url.is_none(), "DATABASE_URL"),
            ]
            .into_iter()
            .filter_map(|(missing, name)| missing.then_some(name))
            .collect();
            if !missing.is_empty() {
                return Err(ConfigError::MissingInProd(missing));
            }
        }
        if self.api_token.is_some() && self.api_token == self.admin_token {
            return Err(ConfigError::SameTokens);
        }
        let problems = self.problems();
        if !problems.is_empty() {
            return Err(ConfigError::Invalid(problems));
        }
        Ok(self)
    }

    /// Values that parse but make no sense: a `0` timeout closes every socket at once, a `0`
    /// frame limit refuses every message; past the upper bounds, times overflow.
    fn problems(&self) -> Vec<String> {
        const DAY: u64 = 24 * 3600;
        let mut problems = Vec::new();
        let mut check =
            |name: &str, value: u64, range: std::ops::RangeInclusive<u64>, unit: &str| {
                if !range.contains(&value) {
                    problems.push(format!(
                        "{name}={value} is out of range: from {} to {} {unit}",
                        range.start(),
                        range.end()
                    ));
                }
            };
        check("TAKO_HEARTBEAT_TIMEOUT", self.heartbeat_timeout_secs, 1..=DAY, "seconds");
        check("TAKO_LONGPOLL_WINDOW", self.longpoll_window_secs, 1..=3600, "seconds");
        check("TAKO_NODE_TIMEOUT", self.node_timeout_secs, 1..=3600, "seconds");
        check("TAKO_SHUTDOWN_TIMEOUT", self.shutdown_timeout_secs, 1..=3600, "seconds");
        check("TAKO_PRESENCE_INTERVAL_MS", self.presence_interval_ms, 0..=60_000, "milliseconds");
        check("TAKO_MAX_FRAME_BYTES", self.max_frame_bytes as u64, MIN_FRAME..=MAX_FRAME, "bytes");
        check("TAKO_MAX_CHANNELS", self.max_channels as u64, 1..=100_000, "channels");
        check("TAKO_HEADER_TIMEOUT", self.header_timeout_secs, 1..=3600, "seconds");
        // Well inside a message claim's lease (300 s), so no other attempt takes it meanwhile.
        check("TAKO_MESSAGE_WRITE_TIMEOUT", self.message_write_timeout_secs, 1..=240, "seconds");
        let queued = self.max_queued_bytes as u64;
        check("TAKO_MAX_QUEUED_BYTES", queued, MIN_FRAME..=1024 * 1024 * 1024, "bytes");
        if !(1..=3650 * DAY).contains(&self.message_ttl.as_secs()) {
            problems.push(format!(
                "TAKO_MESSAGE_TTL={} is out of range: from 1s to 3650d",
                humantime::format_duration(self.message_ttl)
            ));
        }
        if self.socket_rate > 0 && self.socket_burst == 0 {
            problems.push(format!(
                "TAKO_SOCKET_BURST=0 with TAKO_SOCKET_RATE={}: no message could ever pass (set \
                 the burst to at least 1, or TAKO_SOCKET_RATE=0 for no limit)",
                self.socket_rate
            ));
        }
        problems
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
            trust_proxy: channels::TrustedProxies::None,
            max_queued_bytes: 4 * 1024 * 1024,
            socket_bytes_per_second: 64 * 1024,
            header_timeout_secs: 10,
            max_http_connections: 0,
            metrics_bind: None,
            message_ttl: std::time::Duration::from_secs(7 * 24 * 3600),
            message_write_timeout_secs: 120,
            reserved_nicknames: Vec::new(),
            leaderboard_max: 10_000,
            stamps: StampsMode::Claimed,
            default_event: None,
            code_step_secs: 30,
            scan_url: None,
            rally_secret: None,
            failed_scans_per_minute: 10,
            failed_scans_per_minute_per_ip: 60,
        }
    }
}
