//! Messages for one user: stored first, then pushed to the user's live notifications sockets,
//! in order and once. A user who is offline gets what waits for them when they next join.
//!
//! Every push of stored messages for a user (on send, on join, on another node's signal) runs
//! under that user's lock on this node and, in the database, in a transaction holding the
//! messages it pushes (other nodes wait on those rows), and marks them delivered before
//! letting go: a message is never pushed twice, and a user's messages go out in order.
//!
//! On a single node, a join asks the database only for users known to have messages waiting:
//! the mailbox loads that set at start and every send adds to it, so after a restart thousands
//! of rejoining clients cost no query each. (In a cluster, a send on another node could miss
//! this node during a Redis outage, so there every join asks.)

use std::collections::hash_map::DefaultHasher;
use std::collections::HashSet;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use channels::{ChannelContext, Hub, Payload};
use serde_json::{Map, Value};
use tokio::sync::Mutex;

use super::notifications_topics;
use super::signals;
use super::SocketUser;
use crate::accounts::{Timestamp, UserId};
use crate::messages::{Message, MessageId};
use crate::storage::{Store, StoreError};

/// Locks striped by user: bounded memory, and two users rarely share one.
const STRIPES: usize = 1024;
/// Messages read per query while flushing.
const BATCH: u32 = 100;

/// In a cluster, how long a send waits to learn whether another node delivered it.
const REMOTE_WAIT: Duration = Duration::from_millis(500);

pub struct Mailbox {
    store: Arc<dyn Store>,
    ttl: Duration,
    stripes: Vec<Mutex<()>>,
    /// Other nodes may hold the user's sockets.
    clustered: bool,
    /// Users that may have messages waiting (a superset: a stale entry costs one query).
    waiting: std::sync::Mutex<HashSet<UserId>>,
    /// Whether `waiting` was loaded from the database; until then every join asks.
    loaded: AtomicBool,
}

impl Mailbox {
    pub fn spawn(store: Arc<dyn Store>, ttl: Duration, clustered: bool) -> Arc<Mailbox> {
        let stripes = (0..STRIPES).map(|_| Mutex::new(())).collect();
        let mailbox = Arc::new(Mailbox {
            store,
            ttl,
            stripes,
            clustered,
            waiting: std::sync::Mutex::new(HashSet::new()),
            loaded: AtomicBool::new(false),
        });
        tokio::spawn(purge_expired(Arc::downgrade(&mailbox), purge_interval(ttl)));
        // In a cluster another node's send reaches this set only through Redis, which may be
        // away at that moment: there every join asks the database.
        if !clustered {
            tokio::spawn(load_waiting(Arc::downgrade(&mailbox)));
        }
        mailbox
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a join of `user` must ask the database.
    fn may_have_mail(&self, user: UserId) -> bool {
        !self.loaded.load(Ordering::Acquire) || self.waiting().contains(&user)
    }

    /// Messages wait for `user` (another node's signal): deliver them if this node holds it.
    pub fn user_has_mail(self: &Arc<Self>, hub: &Hub, user: UserId) {
        self.waiting().insert(user);
        if !hub.has_user(&user.to_string()) {
            return;
        }
        let (mailbox, hub) = (self.clone(), hub.clone());
        tokio::spawn(async move {
            if let Err(error) = mailbox.flush(&hub, user).await {
                tracing::warn!(%error, "delivering waiting messages failed; they stay waiting");
            }
        });
    }

    fn stripe(&self, user: UserId) -> &Mutex<()> {
        let mut hasher = DefaultHasher::new();
        user.hash(&mut hasher);
        &self.stripes[(hasher.finish() as usize) % STRIPES]
    }

    /// Stores a message for `user` and pushes what waits for them (this one included) to
    /// their live notifications sockets, wherever they are. Returns the message and whether it
    /// was delivered.
    pub async fn send(
        &self,
        hub: &Hub,
        user: UserId,
        text: String,
        extra: Map<String, Value>,
    ) -> Result<(Message, bool), StoreError> {
        let now = Timestamp::now();
        let ttl = i64::try_from(self.ttl.as_micros()).unwrap_or(i64::MAX);
        let expires_at = Timestamp::from_micros(now.as_micros().saturating_add(ttl));
        let mut message = Message {
            id: MessageId::generate(),
            user_id: user,
            text,
            extra,
            inserted_at: now,
            expires_at,
            delivered_at: None,
        };
        self.store.insert_message(&message).await?;
        self.waiting().insert(user);
        if hub.has_user(&user.to_string()) && self.flush(hub, user).await?.contains(&message.id) {
            message.delivered_at = Some(now);
        } else {
            // Another path may have delivered it meanwhile (a join of this user flushing), or,
            // in a cluster, the nodes holding the user will: ask them, and wait a little.
            let wait = if self.clustered {
                signals::messages_waiting(hub, user);
                REMOTE_WAIT
            } else {
                Duration::ZERO
            };
            let deadline = tokio::time::Instant::now() + wait;
            loop {
                if let Some(stored) = self.store.message(message.id).await? {
                    if stored.delivered_at.is_some() {
                        message = stored;
                        break;
                    }
                }
                if tokio::time::Instant::now() >= deadline {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        let delivered = message.delivered_at.is_some();
        Ok((message, delivered))
    }

    /// Pushes what waits for the user of `ctx` (called when it joins a notifications topic).
    pub async fn deliver_waiting(
        &self,
        ctx: &ChannelContext<SocketUser>,
    ) -> Result<usize, StoreError> {
        let user = ctx.assigns().id;
        if !self.may_have_mail(user) {
            return Ok(0);
        }
        let failed = AtomicBool::new(false);
        let key = user.to_string();
        // To every joined notifications socket of the user (another tab may have joined while
        // this flush waited for the lock), and at least to this one even if the engine has not
        // yet indexed its join.
        let push = |message: &Message| {
            let payload = Payload::Json(message.payload());
            let pushed =
                ctx.hub().send_to_user(&key, notifications_topics(), "msg", payload.clone()) > 0
                    || ctx.push("msg", payload);
            if !pushed {
                failed.store(true, Ordering::Relaxed);
            }
            pushed
        };
        let delivered = self.drain(user, &push).await?;
        // Nothing more waits, unless a push failed (the channel closed): then the marker stays
        // for the next join. A send racing this adds it again after its insert.
        if !failed.load(Ordering::Relaxed) {
            self.waiting().remove(&user);
        }
        Ok(delivered.len())
    }

    /// Pushes what waits for `user` to all its notifications sockets (this node's and, through
    /// the bus, the others'); returns what was pushed.
    async fn flush(&self, hub: &Hub, user: UserId) -> Result<Vec<MessageId>, StoreError> {
        let key = user.to_string();
        let push = |message: &Message| {
            hub.send_to_user(&key, notifications_topics(), "msg", Payload::Json(message.payload()))
                > 0
        };
        self.drain(user, &push).await
    }

    /// Under the user's lock: hands what waits for `user` to `push`, oldest first, until it
    /// fails or nothing is left; returns what was pushed (and so marked delivered).
    async fn drain(
        &self,
        user: UserId,
        push: &(dyn for<'m> Fn(&'m Message) -> bool + Send + Sync),
    ) -> Result<Vec<MessageId>, StoreError> {
        let _guard = self.stripe(user).lock().await;
        let mut delivered = Vec::new();
        loop {
            let pushed = self.store.deliver_waiting(user, Timestamp::now(), BATCH, push).await?;
            let done = pushed.len() < BATCH as usize;
            delivered.extend(pushed);
            if done {
                return Ok(delivered);
            }
        }
    }

    pub async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        self.store.message(id).await
    }
}

/// Loads the users with messages waiting (retrying while the database is away).
async fn load_waiting(mailbox: Weak<Mailbox>) {
    let mut wait = Duration::from_millis(200);
    loop {
        let Some(mailbox) = mailbox.upgrade() else { return };
        match mailbox.store.users_with_waiting_messages(Timestamp::now()).await {
            Ok(users) => {
                mailbox.waiting().extend(users);
                mailbox.loaded.store(true, Ordering::Release);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "loading users with waiting messages failed; joins ask the database until it works")
            }
        }
        drop(mailbox);
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
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
