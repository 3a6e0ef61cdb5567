//! A Phoenix-Channels-compatible server engine for axum.
//!
//! Speaks the wire protocol of the `phoenix` JavaScript client (v1 and v2 serializers, v2 binary
//! frames) and knows nothing of the application: an application implements [`SocketHandler`]
//! (authenticate, route topics) and [`Channel`]s, mounts [`Endpoint::routes`], and delivers
//! server-side messages through the [`Hub`].
//!
//! Layout: `serializer` (bytes ⇄ messages), `session` (the per-socket protocol state machine,
//! transport-agnostic), `transport` (WebSocket and LongPoll), `outbox` (bounded per-socket queue), `hub`
//! (indexes and fan-out), `bus` (the seam to other nodes), `presence` (above the hub: who is on
//! a topic, and the frames of those who asked), `mount` (what the transports share: the handler,
//! its hub and presence, the gate new sockets pass), `endpoint` (routes and shutdown). Modules
//! call downward only: `payload` ← `serializer` ← `outbox` ← `bus` ← `hub` ← `presence` ←
//! `channel` ← `session` ← `mount` ← `transport` ← `endpoint`.

mod bus;
mod channel;
mod config;
mod delivery;
mod endpoint;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
mod hub;
mod limits;
mod mount;
mod observer;
mod outbox;
mod payload;
mod presence;
mod serializer;
mod session;
mod socket;
mod transport;

pub use bus::{Bus, BusMessage, LocalBus, PresenceChange, PresenceEntry, SocketRef, TopicMatch};
pub use channel::{Channel, ChannelContext, HandleIn, Payload};
pub use config::EndpointConfig;
pub use delivery::Delivery;
pub use endpoint::Endpoint;
pub use hub::{Hub, SignalHandler};
pub use limits::{
    client_ip, AllowedOrigin, CheckOrigin, InboundRate, InvalidOrigin, InvalidTrustedProxies,
    TrustedProxies,
};
pub use observer::Observer;
pub use presence::{Presence, PresenceError, PresenceFeed};
pub use serde_json::Value;
pub use serializer::MAX_FIELD_BYTES;
pub use session::MAX_JOIN_BYTES;
pub use socket::{ConnectInfo, Connection, Refusal, SocketHandler};

/// Re-exported so implementors need not depend on `async-trait` themselves.
pub use async_trait::async_trait;
