//! Messages for one user: stored first, then pushed to the user's live notifications sockets,
//! in order and once. A user who is offline gets what waits for them when they next join.
//!
//! Every push of stored messages for a user (on send, on join) runs under that user's lock and
//! marks what it pushed as delivered before the lock is released, so two paths never push the
//! same message, and a message sent while a join is flushing queues behind it.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};
use std::time::Duration;

use channels::{ChannelContext, Hub, Payload};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::notifications_topics;
use super::SocketUser;
use crate::accounts::{Timestamp, UserId};
use crate::messages::{Message, MessageId};
use crate::storage::{Store, StoreError};

/// Locks striped by user: bounded memory, and two users rarely share one.
const STRIPES: usize = 1024;
/// Messages read per query while flushing.
const BATCH: u32 = 100;

pub struct Mailbox {
    store: Arc<dyn Store>,
    ttl: Duration,
    stripes: Vec<Mutex<()>>,
}

impl Mailbox {
    pub fn spawn(store: Arc<dyn Store>, ttl: Duration) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox { store, ttl, stripes: (0..STRIPES).map(|_| Mutex::new(())).collect() });
        tokio::spawn(purge_expired(Arc::downgrade(&mailbox), purge_interval(ttl)));
        mailbox
    }

    fn stripe(&self, user: UserId) -> &Mutex<()> {
        let mut hasher = DefaultHasher::new();
        user.hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % STRIPES]
    }

    /// Stores a message for `user` and pushes what waits for them (this one included) to
    /// their live notifications sockets. Returns the message and whether it was delivered.
    pub async fn send(&self, hub: &Hub, user: UserId, text: String, extra: Map<String, Value>) -> Result<(Message, bool), StoreError> {
        let now = Timestamp::now();
        let expires_at = Timestamp::from_micros(now.as_micros().saturating_add(self.ttl.as_micros().min(i64::MAX as u128) as i64));
        let mut message = Message { id: MessageId::generate(), user_id: user, text, extra, inserted_at: now, expires_at, delivered_at: None };
        self.store.insert_message(&message).await?;
        let key = user.to_string();
        let delivered = self
            .flush(user, |payload| hub.send_to_user(&key, notifications_topics(), "msg", payload) > 0)
            .await?;
        if let Some(at) = delivered.iter().find(|(id, _)| *id == message.id).map(|(_, at)| *at) {
            message.delivered_at = Some(at);
        }
        Ok((message.clone(), message.delivered_at.is_some()))
    }

    /// Pushes what waits for the user of `ctx` to that channel (called when it joins).
    pub async fn deliver_waiting(&self, ctx: &ChannelContext<SocketUser>) -> Result<usize, StoreError> {
        let delivered = self.flush(ctx.assigns().id, |payload| ctx.push("msg", payload)).await?;
        Ok(delivered.len())
    }

    /// Under the user's lock: push waiting messages oldest first with `push` until it fails,
    /// and mark the pushed ones delivered.
    async fn flush(&self, user: UserId, push: impl Fn(Payload) -> bool) -> Result<Vec<(MessageId, Timestamp)>, StoreError> {
        let _guard = self.stripe(user).lock().await;
        let mut delivered = Vec::new();
        loop {
            let now = Timestamp::now();
            let waiting = self.store.pending_messages(user, now, BATCH).await?;
            let mut pushed = Vec::new();
            for message in &waiting {
                if !push(Payload::Json(message.payload())) {
                    break;
                }
                pushed.push(message.id);
            }
            if !pushed.is_empty() {
                self.store.mark_delivered(&pushed, now).await?;
                delivered.extend(pushed.iter().map(|id| (*id, now)));
            }
            if pushed.len() < BATCH as usize {
                return Ok(delivered);
            }
        }
    }

    pub async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        self.store.message(id).await
    }
}

fn purge_interval(ttl: Duration) -> Duration {
    (ttl / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// Deletes expired messages now and then; ends when the mailbox is dropped.
async fn purge_expired(mailbox: Weak<Mailbox>, every: Duration) {
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let Some(mailbox) = mailbox.upgrade() else { return };
        match mailbox.store.purge_expired(Timestamp::now()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "expired messages deleted"),
            Err(error) => tracing::warn!(%error, "purging expired messages failed"),
        }
    }
}
