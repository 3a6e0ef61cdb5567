//! A socket's bounded outbound queue.
//!
//! Producers (broadcasters on any thread, the socket's own session) push already-encoded
//! frames and never wait; the socket task drains them. The queue is bounded in frames and in
//! bytes (those queued plus those taken by the transport and not yet written): past either, the
//! client does not keep up, so the queue is dropped and the socket is closed as a slow consumer
//! rather than letting memory grow or slowing the broadcaster. A frame may carry an
//! [`Ack`](crate::delivery::Ack), confirmed when the transport reports the frame written and
//! dropped (so counted as lost) when the frame is. A `Mutex` around a list that holds one frame inline + `Notify` costs a
//! few dozen bytes while idle, unlike a channel that preallocates blocks per socket, and a
//! broadcast reaching an idle socket (one frame, taken at once) allocates nothing.

use parking_lot::Mutex;
use tokio::sync::Notify;

use smallvec::SmallVec;

use crate::delivery::{Ack, Delivery};
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

/// How much one socket may have on its way out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Capacity {
    pub frames: usize,
    pub bytes: usize,
}

/// A bound in frames only (unit tests of the engine that do not look at bytes).
impl From<usize> for Capacity {
    fn from(frames: usize) -> Capacity {
        Capacity { frames, bytes: usize::MAX }
    }
}

pub(crate) struct Outbox {
    state: Mutex<State>,
    notify: Notify,
    capacity: Capacity,
}

#[derive(Default)]
struct State {
    queue: Frames,
    close: Option<Close>,
    /// Payload bytes in `queue`.
    queued_bytes: usize,
    /// Payload bytes taken by the transport and not yet reported written.
    in_flight_bytes: usize,
    /// Frames pushed so far (a frame's sequence number is this count when it was pushed),
    /// taken by the transport, and reported written.
    pushed: u64,
    taken: u64,
    written: u64,
    /// Acknowledgements of confirmed frames, by sequence number, oldest first. Empty (and
    /// unallocated) unless the application asked for confirmations.
    acks: Vec<(u64, Ack)>,
}

impl State {
    /// Gives up on the client as a slow consumer: what is queued is dropped (its acks lost),
    /// what the transport took may still finish, and the socket is asked to close with 1013.
    fn cut_off(&mut self) {
        self.queue = Frames::new();
        self.queued_bytes = 0;
        let taken = self.taken;
        self.lose_acks_from(taken);
        self.close = Some(Close::SLOW_CONSUMER);
    }

    /// Drops the acknowledgements of frames that will never be written (sequence ≥ `from`).
    fn lose_acks_from(&mut self, from: u64) {
        let keep = self.acks.partition_point(|(seq, _)| *seq < from);
        self.acks.truncate(keep);
    }
}

impl Outbox {
    pub(crate) fn new(capacity: Capacity) -> Outbox {
        Outbox {
            state: Mutex::new(State::default()),
            notify: Notify::new(),
            capacity: Capacity { frames: capacity.frames.max(1), bytes: capacity.bytes.max(1) },
        }
    }

    pub(crate) fn push(&self, frame: Frame) -> Pushed {
        self.push_inner(frame, None)
    }

    /// As [`Outbox::push`]; `ack` is confirmed once the frame is written, and dropped (lost) if
    /// the frame is not queued or later dropped.
    pub(crate) fn push_confirmed(&self, frame: Frame, ack: Ack) -> Pushed {
        self.push_inner(frame, Some(ack))
    }

    fn push_inner(&self, frame: Frame, ack: Option<Ack>) -> Pushed {
        let mut state = self.state.lock();
        if state.close.is_some() {
            return Pushed::Closed;
        }
        let size = frame.len();
        let held = state.queued_bytes + state.in_flight_bytes;
        // One frame larger than the byte budget still goes to a socket that has nothing else on
        // its way out: the budget bounds what piles up, not what the server itself sends.
        let over_bytes = held > 0 && held.saturating_add(size) > self.capacity.bytes;
        if state.queue.len() >= self.capacity.frames || over_bytes {
            state.cut_off();
            drop(state);
            self.notify.notify_one();
            return Pushed::Overflow;
        }
        let was_empty = state.queue.is_empty();
        if let Some(ack) = ack {
            let seq = state.pushed;
            state.acks.push((seq, ack));
        }
        state.pushed += 1;
        state.queued_bytes += size;
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

    /// If a copy of `delivery` is here unconfirmed (queued, or taken and still being written),
    /// closes the socket as a slow consumer: the queue is dropped with its acks, and a frame
    /// under way gets the transport's close grace to finish. Returns whether it did.
    pub(crate) fn cut_off_holding(&self, delivery: &Delivery) -> bool {
        let mut state = self.state.lock();
        if !state.acks.iter().any(|(_, ack)| ack.is_of(delivery)) {
            return false;
        }
        // Acks of frames dropped here are lost when `state` is released below.
        state.cut_off();
        drop(state);
        self.notify.notify_one();
        true
    }

    /// Everything queued so far, and the close request if one came. The frames' bytes count
    /// against the budget until the transport reports them with [`Outbox::written`].
    pub(crate) fn take(&self) -> (Frames, Option<Close>) {
        let mut state = self.state.lock();
        let frames = std::mem::take(&mut state.queue);
        state.taken += frames.len() as u64;
        state.in_flight_bytes += std::mem::take(&mut state.queued_bytes);
        (frames, state.close)
    }

    /// The transport is done with everything it took: the first `count` of those frames (in
    /// order) were written, the rest never will be. Confirms and settles their acks.
    pub(crate) fn written(&self, count: usize) {
        let mut state = self.state.lock();
        state.in_flight_bytes = 0;
        state.written += count as u64;
        let written = state.written;
        if state.acks.is_empty() {
            return;
        }
        let done = state.acks.partition_point(|(seq, _)| *seq < written);
        let confirmed: Vec<Ack> = state.acks.drain(..done).map(|(_, ack)| ack).collect();
        // Frames taken and not written are lost with their socket.
        let taken = state.taken;
        if written < taken {
            let lost = state.acks.partition_point(|(seq, _)| *seq < taken);
            state.acks.drain(..lost);
        }
        drop(state);
        confirmed.into_iter().for_each(Ack::confirm);
    }

    /// The socket is gone: whatever is still queued or unconfirmed is lost.
    pub(crate) fn abandon(&self) {
        let mut state = self.state.lock();
        state.queue = Frames::new();
        state.queued_bytes = 0;
        state.in_flight_bytes = 0;
        let acks = std::mem::take(&mut state.acks);
        if state.close.is_none() {
            state.close = Some(Close::GOING_AWAY);
        }
        drop(state);
        drop(acks);
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
    use crate::delivery::Delivery;
    use tokio_tungstenite::tungstenite::Utf8Bytes;

    fn frame(s: &'static str) -> Frame {
        Frame::Text(Utf8Bytes::from_static(s))
    }

    fn frames(frames: usize) -> Outbox {
        Outbox::new(Capacity { frames, bytes: 1 << 20 })
    }

    #[test]
    fn overflow_closes_and_frees() {
        let outbox = frames(2);
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
        let outbox = frames(8);
        outbox.push(frame("a"));
        assert!(outbox.close(Close::DISCONNECTED));
        assert!(!outbox.close(Close::GOING_AWAY));
        let (queue, close) = outbox.take();
        assert_eq!(queue.len(), 1);
        assert_eq!(close, Some(Close::DISCONNECTED));
    }

    #[tokio::test]
    async fn ready_is_not_lost_when_push_comes_first() {
        let outbox = frames(8);
        outbox.push(frame("a"));
        tokio::time::timeout(std::time::Duration::from_secs(1), outbox.ready()).await.unwrap();
    }

    #[test]
    fn the_byte_budget_counts_queued_and_unwritten_bytes() {
        let outbox = Outbox::new(Capacity { frames: 100, bytes: 10 });
        // One frame over the budget goes out when nothing else is held.
        assert_eq!(outbox.push(frame("0123456789abc")), Pushed::Queued);
        let (taken, _) = outbox.take();
        assert_eq!(taken.len(), 1);
        // Taken but not written: still held, so the next frame overflows.
        assert_eq!(outbox.push(frame("x")), Pushed::Overflow);
        assert_eq!(outbox.take().1, Some(Close::SLOW_CONSUMER));

        let outbox = Outbox::new(Capacity { frames: 100, bytes: 10 });
        assert_eq!(outbox.push(frame("01234")), Pushed::Queued);
        let _ = outbox.take();
        outbox.written(1);
        // Written: the budget is free again.
        for _ in 0..2 {
            assert_eq!(outbox.push(frame("01234")), Pushed::Queued);
        }
        assert_eq!(outbox.push(frame("0")), Pushed::Overflow);
    }

    async fn outcome(delivery: Delivery) -> bool {
        tokio::time::timeout(std::time::Duration::from_secs(1), delivery).await.unwrap()
    }

    #[tokio::test]
    async fn acks_are_confirmed_when_written_and_lost_when_dropped() {
        let outbox = frames(8);
        let (a, b, c) = (Delivery::new(), Delivery::new(), Delivery::new());
        outbox.push_confirmed(frame("a"), a.copy());
        outbox.push(frame("plain"));
        outbox.push_confirmed(frame("b"), b.copy());
        let (taken, _) = outbox.take();
        assert_eq!(taken.len(), 3);
        outbox.push_confirmed(frame("c"), c.copy());
        // Two of the three taken frames were written before the connection broke.
        outbox.written(2);
        assert!(outcome(a).await);
        assert!(!outcome(b).await, "taken, not written: lost");
        outbox.abandon();
        assert!(!outcome(c).await, "still queued when the socket went: lost");
    }

    #[tokio::test]
    async fn an_overflow_loses_the_queued_acks_but_not_those_in_flight() {
        let outbox = frames(1);
        let (a, b) = (Delivery::new(), Delivery::new());
        outbox.push_confirmed(frame("a"), a.copy());
        let _ = outbox.take();
        outbox.push_confirmed(frame("b"), b.copy());
        assert_eq!(outbox.push(frame("c")), Pushed::Overflow);
        assert!(!outcome(b).await);
        outbox.written(1);
        assert!(outcome(a).await);
    }
}
