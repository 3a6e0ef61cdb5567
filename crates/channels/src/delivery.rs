//! Confirmed deliveries: a push that tells its sender whether a socket really wrote it.
//!
//! A frame handed to a socket's outbox may still be lost: the client stops reading and the
//! queue is dropped as a slow consumer's, the connection breaks mid-write, the server shuts
//! down. An application that must deliver exactly once (a message marked delivered in a
//! database) needs to know which: each copy of a confirmed push carries an [`Ack`], which the
//! transport confirms once the frame's bytes were written to the kernel (WebSocket) or handed
//! to a poll's response (LongPoll), and which, dropped unconfirmed anywhere (an overflowing or
//! abandoned outbox, a failed write), counts as lost. The [`Delivery`] the sender holds resolves
//! when one copy is confirmed or every copy is lost, so it always resolves, at the latest when
//! the sockets it went to close.

use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::Notify;

struct Tracker {
    /// Copies neither confirmed nor lost yet.
    outstanding: AtomicUsize,
    written: AtomicBool,
    notify: Notify,
}

/// What the sender of a confirmed push awaits: `true` once at least one socket wrote it,
/// `false` when none took it or every copy was lost.
pub struct Delivery {
    tracker: Arc<Tracker>,
}

/// One copy of a confirmed push, travelling with its frame.
pub(crate) struct Ack {
    tracker: Arc<Tracker>,
}

impl Delivery {
    /// A delivery with no copy yet; [`Delivery::copy`] makes one per socket.
    pub(crate) fn new() -> Delivery {
        Delivery {
            tracker: Arc::new(Tracker {
                outstanding: AtomicUsize::new(0),
                written: AtomicBool::new(false),
                notify: Notify::new(),
            }),
        }
    }

    /// An acknowledgement for one more copy.
    pub(crate) fn copy(&self) -> Ack {
        self.tracker.outstanding.fetch_add(1, Ordering::AcqRel);
        Ack { tracker: self.tracker.clone() }
    }

    /// Copies neither confirmed nor lost yet.
    pub fn pending(&self) -> usize {
        self.tracker.outstanding.load(Ordering::Acquire)
    }

    /// Whether a copy was already written (without waiting).
    pub fn is_written(&self) -> bool {
        self.tracker.written.load(Ordering::Acquire)
    }

    /// Resolves as the delivery itself does, without consuming it (so the sender can still
    /// [`withdraw`](crate::Hub::withdraw) it).
    pub fn outcome(&self) -> impl Future<Output = bool> + Send + 'static {
        Self::resolve(self.tracker.clone())
    }

    async fn resolve(tracker: Arc<Tracker>) -> bool {
        loop {
            let notified = tracker.notify.notified();
            tokio::pin!(notified);
            // Registered before the checks, so a change between them and the wait is not lost.
            notified.as_mut().enable();
            if tracker.written.load(Ordering::Acquire) {
                return true;
            }
            if tracker.outstanding.load(Ordering::Acquire) == 0 {
                return false;
            }
            notified.await;
        }
    }
}

impl IntoFuture for Delivery {
    type Output = bool;
    type IntoFuture = Pin<Box<dyn Future<Output = bool> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(Self::resolve(self.tracker))
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("pending", &self.pending())
            .field("written", &self.is_written())
            .finish()
    }
}

impl Ack {
    /// Whether this is a copy of `delivery`.
    pub(crate) fn is_of(&self, delivery: &Delivery) -> bool {
        Arc::ptr_eq(&self.tracker, &delivery.tracker)
    }

    /// The frame's bytes are out: the delivery resolves `true`.
    pub(crate) fn confirm(self) {
        self.tracker.written.store(true, Ordering::Release);
        self.tracker.notify.notify_waiters();
        // Dropping `self` then counts this copy as settled.
    }
}

impl Drop for Ack {
    fn drop(&mut self) {
        if self.tracker.outstanding.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tracker.notify.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn settle(delivery: Delivery) -> bool {
        tokio::time::timeout(Duration::from_secs(1), delivery).await.expect("resolves")
    }

    #[tokio::test]
    async fn no_copy_is_not_delivered() {
        assert!(!settle(Delivery::new()).await);
    }

    #[tokio::test]
    async fn one_confirmed_copy_is_enough() {
        let delivery = Delivery::new();
        let (a, b) = (delivery.copy(), delivery.copy());
        drop(a);
        let waiting = tokio::spawn(settle(delivery));
        tokio::task::yield_now().await;
        b.confirm();
        assert!(waiting.await.unwrap());
    }

    #[tokio::test]
    async fn every_copy_lost_is_not_delivered() {
        let delivery = Delivery::new();
        let copies: Vec<Ack> = (0..3).map(|_| delivery.copy()).collect();
        let waiting = tokio::spawn(settle(delivery));
        tokio::task::yield_now().await;
        drop(copies);
        assert!(!waiting.await.unwrap());
    }
}
