//! What the engine tells an application that wants to measure it: messages in and out by
//! event, and how long a fan-out took. The application decides what to record and how to
//! bound its label sets (events are chosen by clients).
//!
//! Counts that are state rather than events (sockets, subscriptions per topic, presences,
//! slow-consumer disconnects) are read on demand from the [`Hub`](crate::Hub) and the
//! [`Endpoint`](crate::Endpoint) instead.

use std::time::Duration;

/// Called on the hot paths: implementations must be cheap and must not block. Every method
/// does nothing by default.
pub trait Observer: Send + Sync + 'static {
    /// A message from a client was handled (`heartbeat` included), or refused (`accepted` false).
    fn inbound(&self, _event: &str, _accepted: bool) {}

    /// `count` frames with this event were queued to sockets (one per subscription reached;
    /// replies are `phx_reply`).
    fn outbound(&self, _event: &str, _count: usize) {}

    /// A delivery to a topic's (or topics') subscribers on this node took `elapsed` and
    /// reached `recipients` subscriptions.
    fn fanout(&self, _elapsed: Duration, _recipients: usize) {}
}

/// The default: observes nothing.
pub(crate) struct Nothing;

impl Observer for Nothing {}
