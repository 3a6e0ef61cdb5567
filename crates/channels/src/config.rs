//! Endpoint settings.

use std::time::Duration;

pub(crate) const DEFAULT_PRESENCE_INTERVAL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// A socket silent for longer is closed (clients send a heartbeat every 30 s). Default 60 s.
    pub heartbeat_timeout: Duration,
    /// Channels one socket may join at once. Default 100.
    pub max_channels: usize,
    /// Largest inbound frame; a bigger one closes the socket with 1009. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Frames queued per socket before it is disconnected as a slow consumer. Default 1024.
    pub outbound_queue: usize,
    /// Bound on [`Endpoint::shutdown`](crate::Endpoint::shutdown). Default 10 s.
    pub shutdown_timeout: Duration,
    /// Presence changes of a topic within this interval go out as one `presence_diff`; zero
    /// sends one diff per change (as Phoenix does). Default 50 ms.
    pub presence_interval: Duration,
    /// How long a LongPoll GET waits for messages before answering 204. It is kept under half
    /// the heartbeat timeout, so a client that polls is never taken for dead. Default 10 s.
    pub longpoll_window: Duration,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        EndpointConfig {
            heartbeat_timeout: Duration::from_secs(60),
            max_channels: 100,
            max_frame_bytes: 1024 * 1024,
            outbound_queue: 1024,
            shutdown_timeout: Duration::from_secs(10),
            presence_interval: DEFAULT_PRESENCE_INTERVAL,
            longpoll_window: Duration::from_secs(10),
        }
    }
}
