//! Endpoint settings.

use std::sync::Arc;
use std::time::Duration;

use crate::limits::{CheckOrigin, InboundRate, TrustedProxies};
use crate::observer::Observer;

pub(crate) const DEFAULT_PRESENCE_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct EndpointConfig {
    /// A socket silent for longer is closed (clients send a heartbeat every 30 s). Default 60 s.
    pub heartbeat_timeout: Duration,
    /// Channels one socket may join at once. Default 100.
    pub max_channels: usize,
    /// Largest inbound frame; a bigger one closes the socket with 1009. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Frames queued per socket before it is disconnected as a slow consumer. Default 1024.
    pub outbound_queue: usize,
    /// Bytes one socket may have on their way out (queued, or taken and not yet written to the
    /// kernel) before it is disconnected as a slow consumer with 1013. A single frame larger
    /// than this still goes to a socket that has nothing else pending. Default 4 MiB.
    pub outbound_queue_bytes: usize,
    /// Bound on [`Endpoint::shutdown`](crate::Endpoint::shutdown). Default 10 s.
    pub shutdown_timeout: Duration,
    /// Presence changes of a topic within this interval go out as one `presence_diff`; zero
    /// sends one diff per change (as Phoenix does). Default 50 ms.
    pub presence_interval: Duration,
    /// How long a LongPoll GET waits for messages before answering 204. It is kept under half
    /// the heartbeat timeout, so a client that polls is never taken for dead. Default 10 s.
    pub longpoll_window: Duration,
    /// Origins allowed to open sockets (WebSocket upgrades and LongPoll requests); others get
    /// 403. Default: any.
    pub check_origin: CheckOrigin,
    /// Sockets (WebSocket and LongPoll) this endpoint holds at most; more are refused with
    /// 503. Default: no cap.
    pub max_connections: Option<usize>,
    /// Sockets one client address holds at most; more are refused with 429. Loopback
    /// addresses are not capped (a local proxy or load generator). Default: no cap.
    pub max_connections_per_client: Option<usize>,
    /// Proxies whose `X-Forwarded-For` entries say where a client comes from. Default: none.
    pub trusted_proxies: TrustedProxies,
    /// Inbound message budget per socket. Default: none.
    pub inbound_rate: Option<InboundRate>,
    /// Inbound byte budget per socket: bytes of messages per second on average, with a burst
    /// of `max_frame_bytes` (so one message of the largest size always passes). Messages over
    /// it are refused like those over `inbound_rate`. Heartbeats are not counted. Default: none.
    pub inbound_bytes_per_second: Option<u64>,
    /// Told about messages in and out and fan-out times. Default: nothing.
    pub observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for EndpointConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointConfig")
            .field("heartbeat_timeout", &self.heartbeat_timeout)
            .field("max_channels", &self.max_channels)
            .field("max_frame_bytes", &self.max_frame_bytes)
            .field("outbound_queue", &self.outbound_queue)
            .field("outbound_queue_bytes", &self.outbound_queue_bytes)
            .field("shutdown_timeout", &self.shutdown_timeout)
            .field("presence_interval", &self.presence_interval)
            .field("longpoll_window", &self.longpoll_window)
            .field("check_origin", &self.check_origin)
            .field("max_connections", &self.max_connections)
            .field("max_connections_per_client", &self.max_connections_per_client)
            .field("trusted_proxies", &self.trusted_proxies)
            .field("inbound_rate", &self.inbound_rate)
            .field("inbound_bytes_per_second", &self.inbound_bytes_per_second)
            .finish_non_exhaustive()
    }
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            heartbeat_timeout: Duration::from_secs(60),
            max_channels: 100,
            max_frame_bytes: 1024 * 1024,
            outbound_queue: 1024,
            outbound_queue_bytes: 4 << 20,
            shutdown_timeout: Duration::from_secs(10),
            presence_interval: DEFAULT_PRESENCE_INTERVAL,
            longpoll_window: Duration::from_secs(10),
            check_origin: CheckOrigin::Any,
            max_connections: None,
            max_connections_per_client: None,
            trusted_proxies: TrustedProxies::None,
            inbound_rate: None,
            inbound_bytes_per_second: None,
            observer: Arc::new(crate::observer::Nothing),
        }
    }
}

impl EndpointConfig {
    pub(crate) fn outbox_capacity(&self) -> crate::outbox::Capacity {
        crate::outbox::Capacity { frames: self.outbound_queue, bytes: self.outbound_queue_bytes }
    }
}
