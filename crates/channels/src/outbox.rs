//! A socket's bounded outbound queue.
//!
//! Producers (broadcasters on any thread, the socket's own session) push already-encoded
//! frames and never wait; the socket task drains them. A full queue means the client does not
//! keep up: the queue is dropped and the socket is closed rather than letting memory grow or
//! slowing the broadcaster. A `Mutex` around a list that holds one frame inline + `Notify` costs a
//! few dozen bytes while idle, unlike a channel that preallocates blocks per socket, and a
//! broadcast reaching an idle socket (one frame, taken at once) allocates nothing.

use parking_lot::Mutex;
use tokio::sync::Notify;

use smallvec::SmallVec;

use crate::serializer::Frame;

/// Frames taken from an outbox, in order.
pub(crate) type Frames = SmallVec<[Frame; 1]>;

/// Why and how the server closes a socket (a WebSocket close code and reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Close {
    pub code: u16,
    pub reason: &'static str,
}

impl Close {
    pub const DISCONNECTED: Close = Close { code: 1000, reason: "disconnected" };
    pub const GOING_AWAY: Close = Close { code: 1001, reason: "going away" };
    pub const HEARTBEAT_TIMEOUT: Close = Close { code: 1008, reason: "heartbeat timeout" };
    pub const TOO_BIG: Close = Close { code: 1009, reason: "message too big" };
    pub const SLOW_CONSUMER: Close = Close { code: 1013, reason: "slow consumer" };
    /// Policy violation: kept sending over its inbound budget after error replies.
    pub const RATE_LIMITED: Close = Close { code: 1008, reason: "rate limited" };
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Pushed {
    Queued,
    /// This push overflowed the queue; the socket is now closing.
    Overflow,
    /// The socket was already closing; the frame was dropped.
    Closed,
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: usize,
}

#[derive(Default)]
struct State {
    queue: Frames,
    close: Option<Close>,
}

impl Outbox {
    pub(crate) fn new(capacity: usize) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn push(&self, frame: Frame) -> Pushed {
        let mut state = self.state.lock();
        if state.close.is_some() {
            return Pushed::Closed;
        }
        if state.queue.len() >= self.capacity {
            state.queue = Frames::new();
            state.close = Some(Close::SLOW_CONSUMER);
            drop(state);
            self.notify.notify_one();
            return Pushed::Overflow;
        }
        let was_empty = state.queue.is_empty();
        state.queue.push(frame);
        drop(state);
        if was_empty {
            self.notify.notify_one();
        }
        Pushed::Queued
    }

    /// Ask the socket to close after sending what is queued. The first close wins.
    pub(crate) fn close(&self, close: Close) -> bool {
        let mut state = self.state.lock();
        if state.close.is_some() {
            return false;
        }
        state.close = Some(close);
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Everything queued so far, and the close request if one came.
    pub(crate) fn take(&self) -> (Frames, Option<Close>) {
        let mut state = self.state.lock();
        (std::mem::take(&mut state.queue), state.close)
    }

    pub(crate) fn close_requested(&self) -> Option<Close> {
        self.state.lock().close
    }

    /// Resolves when something was pushed or a close was asked since the last `take`.
    pub(crate) async fn ready(&self) {
        self.notify.notified().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn frame(s: &'static str) -> Frame {
        Frame::Text(Utf8Bytes::from_static(s))
    }

    #[test]
    fn overflow_closes_and_frees() {
        let outbox = Outbox::new(2);
        assert_eq!(outbox.push(frame("a")), Pushed::Queued);
        assert_eq!(outbox.push(frame("b")), Pushed::Queued);
        assert_eq!(outbox.push(frame("c")), Pushed::Overflow);
        assert_eq!(outbox.push(frame("d")), Pushed::Closed);
        let (queue, close) = outbox.take();
        assert!(queue.is_empty());
        assert_eq!(close, Some(Close::SLOW_CONSUMER));
    }

    #[test]
    fn first_close_wins_and_queue_is_kept() {
        let outbox = Outbox::new(8);
        outbox.push(frame("a"));
        assert!(outbox.close(Close::DISCONNECTED));
        assert!(!outbox.close(Close::GOING_AWAY));
        let (queue, close) = outbox.take();
        assert_eq!(queue.len(), 1);
        assert_eq!(close, Some(Close::DISCONNECTED));
    }

    #[tokio::test]
    async fn ready_is_not_lost_when_push_comes_first() {
        let outbox = Outbox::new(8);
        outbox.push(frame("a"));
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready()).await.unwrap();
    }
}
