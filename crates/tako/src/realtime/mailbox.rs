//! Messages for one user: stored first, then pushed to the user's live notifications sockets,
//! exactly once and in order.
//!
//! One delivery task per node does every push of stored messages (on send, on join, on another
//! node's signal, on a retry). It collects the users asking over a short window, so a reconnect
//! storm costs one database write per burst rather than one per socket, and then:
//!
//! 1. **claims** their waiting messages in one write (a claimed message is not claimed again,
//!    on any node, unless the claim is older than [`LEASE`]: its node died);
//! 2. **pushes** them, oldest first, to the user's sockets on this node, each push confirmed
//!    once a socket wrote the frame (or refused when none took it);
//! 3. **settles** in one write: written messages are marked delivered, refused ones released
//!    to wait again, and retried by the server with a bounded backoff while the user stays
//!    connected here (else at their next join).
//!
//! A user has at most one attempt in flight on a node, so their messages leave in order. A
//! message is marked delivered only after a socket wrote it; should the settling write fail,
//! it is retried until it works (the claim keeps other attempts off meanwhile).
//!
//! On a single node, a join asks the database only for users known to have messages waiting:
//! the mailbox loads that set at start and every send adds to it, so after a restart thousands
//! of rejoining clients cost no query each. (In a cluster, a send on another node could miss
//! this node during a Redis outage, so there every join asks; and when the bus comes back the
//! node looks for waiting messages of the users it holds.)

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use channels::{ChannelContext, Delivery, Hub, Payload};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot, Notify};

use super::notifications_topics;
use super::signals;
use super::SocketUser;
use crate::accounts::{Timestamp, UserId};
use crate::messages::{IdempotencyKey, Message, MessageId, Stored};
use crate::storage::{Store, StoreError};

/// How long the delivery task collects users before claiming their messages together.
const COALESCE: Duration = Duration::from_millis(5);
/// Users per claiming write.
const USERS_PER_ATTEMPT: usize = 500;
/// Messages per user per attempt (a user with more gets another attempt at once).
const MESSAGES_PER_USER: u32 = 100;
/// A claim older than this belongs to a node that died: the message may be claimed again.
const LEASE: Duration = Duration::from_secs(300);
/// How long a withdrawal may take (the transport gives a frame under way 1 s to finish). Past
/// it, the outcome is unknown: the message stays claimed and is delivered again only once the
/// claim's lease ends (at least once rather than lost).
const WITHDRAW_TIMEOUT: Duration = Duration::from_secs(30);
/// Refused attempts for a connected user before the server stops retrying (the next join
/// tries again): 50 ms, 100 ms, … 3.2 s apart, about 6 s in all.
const MAX_RETRIES: u32 = 7;
const RETRY_BASE: Duration = Duration::from_millis(50);
/// How long `send` waits to tell whether its message reached a socket.
const SEND_WAIT: Duration = Duration::from_secs(2);

/// Pushes `msg` to `user`'s notifications sockets on this node only (each node pushes to its
/// own sockets, so a message is pushed by the one node whose attempt claimed it), confirmed
/// once a socket wrote it to the kernel (or a LongPoll response carried it).
fn push(hub: &Hub, user: UserId, payload: Value) -> Delivery {
    hub.send_to_user_confirmed(
        &user.to_string(),
        notifications_topics(),
        "msg",
        Payload::Json(payload),
    )
}

/// What became of one claimed message in an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// A socket wrote it: marked delivered.
    Written,
    /// No socket wrote it: released to wait again.
    Refused,
    /// Withdrawn without an answer in time: left claimed until its lease ends.
    Unknown,
}

/// Waits for a push's confirmation until `deadline`, then withdraws it (see
/// [`Mailbox::write_timeout`]).
async fn confirmed(hub: &Hub, delivery: Delivery, deadline: tokio::time::Instant) -> Outcome {
    if let Ok(written) = tokio::time::timeout_at(deadline, delivery.outcome()).await {
        return if written { Outcome::Written } else { Outcome::Refused };
    }
    let (closed, outcome) = hub.withdraw(delivery);
    tracing::info!(
        sockets = closed,
        "a message stayed unwritten too long; closing the sockets holding it"
    );
    match tokio::time::timeout(WITHDRAW_TIMEOUT, outcome).await {
        Ok(true) => Outcome::Written,
        Ok(false) => Outcome::Refused,
        Err(_) => {
            tracing::warn!("a withdrawn message got no answer; it waits for its claim to lapse");
            Outcome::Unknown
        }
    }
}

/// Someone waiting to learn whether a message was delivered.
struct Waiter {
    message: MessageId,
    /// When it was marked delivered, or `None`: not by this attempt.
    reply: oneshot::Sender<Option<Timestamp>>,
}

#[derive(Default)]
struct Queue {
    /// Users asking for an attempt, with who waits on it; `order` holds the same users, FIFO.
    pending: HashMap<UserId, Vec<Waiter>>,
    order: VecDeque<UserId>,
    /// Users with an attempt not yet settled: not taken again until it is.
    in_flight: HashSet<UserId>,
    /// Refused attempts in a row, per user.
    retries: HashMap<UserId, u32>,
}

struct AttemptUser {
    user: UserId,
    waiters: Vec<Waiter>,
    /// The user's `waiting` generation when claimed.
    generation: u64,
    /// Claimed messages and what became of each.
    results: Vec<(MessageId, Outcome)>,
}

pub struct Mailbox {
    store: Arc<dyn Store>,
    ttl: Duration,
    /// Other nodes may hold the user's sockets.
    clustered: bool,
    /// Users that may have messages waiting (a superset: a stale entry costs one query), with
    /// the generation of their last send, so an attempt that began before a send does not
    /// forget the user.
    waiting: std::sync::Mutex<HashMap<UserId, u64>>,
    generation: AtomicU64,
    /// Whether `waiting` was loaded from the database; until then every join asks.
    loaded: AtomicBool,
    queue: std::sync::Mutex<Queue>,
    wake: Arc<Notify>,
    hub: OnceLock<Hub>,
    /// Bytes of one user's messages pushed but not yet written, at most.
    window: usize,
    /// How long one user's attempt waits for its sockets to confirm (`TAKO_MESSAGE_WRITE_TIMEOUT`,
    /// well inside [`LEASE`]). A push still unconfirmed then is withdrawn: the sockets sitting on
    /// it (clients that stopped reading while still sending heartbeats) are closed, and it counts
    /// as written only if a copy got out during the close; either way the answer is exact, so a
    /// withdrawn message is never received twice.
    write_timeout: Duration,
}

impl Mailbox {
    /// `max_queued_bytes`: a socket's outbound budget; a quarter of it is the window of one
    /// user's messages pushed but not yet written.
    pub fn spawn(
        store: Arc<dyn Store>,
        ttl: Duration,
        clustered: bool,
        max_queued_bytes: usize,
        write_timeout: Duration,
    ) -> Arc<Mailbox> {
        let mailbox = Arc::new(Mailbox {
            store,
            ttl,
            clustered,
            waiting: std::sync::Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            loaded: AtomicBool::new(false),
            queue: std::sync::Mutex::new(Queue::default()),
            wake: Arc::new(Notify::new()),
            hub: OnceLock::new(),
            window: (max_queued_bytes / 4).max(1),
            write_timeout: write_timeout.min(LEASE / 2),
        });
        tokio::spawn(purge_expired(Arc::downgrade(&mailbox), purge_interval(ttl)));
        // In a cluster another node's send reaches this set only through Redis, which may be
        // away at that moment: there every join asks the database.
        if !clustered {
            tokio::spawn(load_waiting(Arc::downgrade(&mailbox)));
        }
        mailbox
    }

    /// Starts delivering on `hub` (once; later calls do nothing).
    pub fn start(self: &Arc<Self>, hub: Hub) {
        if self.hub.set(hub).is_err() {
            return;
        }
        let (settled, attempts) = mpsc::unbounded_channel();
        tokio::spawn(deliver(Arc::downgrade(self), self.wake.clone(), settled));
        tokio::spawn(settle(Arc::downgrade(self), attempts));
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<UserId, u64>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes that messages may wait for `user`.
    fn mark_waiting(&self, user: UserId) {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.waiting().insert(user, generation);
    }

    /// Whether a join of `user` must ask the database.
    fn may_have_mail(&self, user: UserId) -> bool {
        !self.loaded.load(Ordering::Acquire) || self.waiting().contains_key(&user)
    }

    /// Asks for a delivery attempt for `user`; `waiter` hears whether its message went out.
    fn request(&self, user: UserId, waiter: Option<Waiter>) {
        {
            let mut queue = self.queue();
            let queue = &mut *queue;
            match queue.pending.get_mut(&user) {
                Some(waiters) => waiters.extend(waiter),
                None => {
                    queue.pending.insert(user, waiter.into_iter().collect());
                    queue.order.push_back(user);
                }
            }
        }
        self.wake.notify_one();
    }

    /// Messages wait for `user` (a send here or on another node): deliver them if this node
    /// holds the user.
    pub fn user_has_mail(&self, hub: &Hub, user: UserId) {
        self.mark_waiting(user);
        if hub.has_user(&user.to_string()) {
            self.request(user, None);
        }
    }

    /// Looks for waiting messages of every user connected here (after the bus was away, a
    /// send on another node may have found no way to tell this one).
    pub async fn resync(&self, hub: &Hub) -> Result<usize, StoreError> {
        let users = self.store.users_with_waiting_messages(Timestamp::now()).await?;
        let mut asked = 0;
        for user in users {
            self.mark_waiting(user);
            if hub.has_user(&user.to_string()) {
                self.request(user, None);
                asked += 1;
            }
        }
        Ok(asked)
    }

    /// Stores a message for `user` (once per idempotency key) and pushes it to their live
    /// notifications sockets, wherever they are. Returns the message (delivered or not yet)
    /// and whether this call stored it. Only storing can fail: once stored, whatever happens
    /// to the push, the message is answered for (and delivered later if not now).
    pub async fn send(
        &self,
        hub: &Hub,
        user: UserId,
        text: String,
        extra: Map<String, Value>,
        key: Option<&IdempotencyKey>,
    ) -> Result<(Message, bool), StoreError> {
        let now = Timestamp::now();
        let ttl = i64::try_from(self.ttl.as_micros()).unwrap_or(i64::MAX);
        let expires_at = Timestamp::from_micros(now.as_micros().saturating_add(ttl));
        let message = Message {
            id: MessageId::generate(),
            user_id: user,
            text,
            extra,
            inserted_at: now,
            expires_at,
            delivered_at: None,
        };
        let message = match self.store.insert_message(&message, key).await? {
            Stored::New(message) => message,
            Stored::Existing(message) => return Ok((message, false)),
        };
        self.mark_waiting(user);
        if self.clustered {
            // The nodes holding the user deliver it; this one too, through its own signal.
            signals::messages_waiting(hub, user);
        }
        if !hub.has_user(&user.to_string()) {
            return Ok((message, true));
        }
        let (reply, delivered) = oneshot::channel();
        self.request(user, Some(Waiter { message: message.id, reply }));
        match tokio::time::timeout(SEND_WAIT, delivered).await {
            Ok(Ok(Some(at))) => Ok((Message { delivered_at: Some(at), ..message }, true)),
            // Not by this attempt: another (a join's) may have taken it; tell what is stored.
            _ => match self.store.message(message.id).await {
                Ok(Some(stored)) => Ok((stored, true)),
                _ => Ok((message, true)),
            },
        }
    }

    /// Pushes what waits for the user of `ctx` (called when it joins a notifications topic).
    pub fn deliver_waiting(&self, ctx: &ChannelContext<SocketUser>) {
        let user = ctx.assigns().id;
        if self.may_have_mail(user) {
            self.request(user, None);
        }
    }

    pub async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        self.store.message(id).await
    }

    /// Takes up to [`USERS_PER_ATTEMPT`] pending users that have no attempt in flight.
    fn take_batch(&self) -> Vec<(UserId, Vec<Waiter>)> {
        let mut queue = self.queue();
        let queue = &mut *queue;
        let mut batch = Vec::new();
        let mut busy = Vec::new();
        while batch.len() < USERS_PER_ATTEMPT {
            let Some(user) = queue.order.pop_front() else { break };
            if queue.in_flight.contains(&user) {
                busy.push(user);
                continue;
            }
            let waiters = queue.pending.remove(&user).unwrap_or_default();
            queue.in_flight.insert(user);
            batch.push((user, waiters));
        }
        // Still pending, in their order, for after their attempt settles.
        for user in busy.into_iter().rev() {
            queue.order.push_front(user);
        }
        batch
    }

    /// Asks again for `user` after the `retry`-th refused attempt, unless it is the last.
    fn retry_later(self: &Arc<Self>, user: UserId) {
        let retry = {
            let mut queue = self.queue();
            let retries = queue.retries.entry(user).or_insert(0);
            *retries += 1;
            let retry = *retries;
            if retry > MAX_RETRIES {
                queue.retries.remove(&user);
                None
            } else {
                Some(retry)
            }
        };
        let Some(retry) = retry else {
            tracing::info!(
                "messages refused by every socket of a user; they wait for the next join"
            );
            return;
        };
        let wait = RETRY_BASE * 2u32.pow(retry - 1);
        let mailbox = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            if let Some(mailbox) = mailbox.upgrade() {
                mailbox.request(user, None);
            }
        });
    }
}

/// The delivery task: collects users, claims their messages in one write, pushes them, and
/// hands each attempt's confirmations to the settling task. Ends with the mailbox.
async fn deliver(
    mailbox: Weak<Mailbox>,
    wake: Arc<Notify>,
    settled: mpsc::UnboundedSender<AttemptUser>,
) {
    loop {
        // A request while this task is busy leaves a permit: nothing is missed. The timeout
        // only bounds how long a dropped mailbox keeps this task.
        let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
        // A reconnect storm's joins arrive over a few milliseconds: one claim for them all.
        tokio::time::sleep(COALESCE).await;
        let Some(mailbox) = mailbox.upgrade() else { return };
        let Some(hub) = mailbox.hub.get().cloned() else { return };
        loop {
            // Users with an attempt in flight stay pending; their settling wakes this task.
            let batch = mailbox.take_batch();
            if batch.is_empty() {
                break;
            }
            attempt(&mailbox, &hub, batch, &settled).await;
        }
    }
}

async fn attempt(
    mailbox: &Arc<Mailbox>,
    hub: &Hub,
    batch: Vec<(UserId, Vec<Waiter>)>,
    settled: &mpsc::UnboundedSender<AttemptUser>,
) {
    // Users that left this node meanwhile get their messages at their next join.
    let (here, gone): (Vec<_>, Vec<_>) =
        batch.into_iter().partition(|(user, _)| hub.has_user(&user.to_string()));
    if !gone.is_empty() {
        let mut queue = mailbox.queue();
        for (user, _) in &gone {
            queue.in_flight.remove(user);
            queue.retries.remove(user);
        }
    }
    // Dropping the waiters tells them "not delivered".
    drop(gone);
    if here.is_empty() {
        return;
    }
    let users: Vec<UserId> = here.iter().map(|(user, _)| *user).collect();
    let generations: Vec<u64> = {
        let waiting = mailbox.waiting();
        users.iter().map(|user| waiting.get(user).copied().unwrap_or(0)).collect()
    };
    let now = Timestamp::now();
    let stale_before = Timestamp::from_micros(
        now.as_micros().saturating_sub(i64::try_from(LEASE.as_micros()).unwrap_or(i64::MAX)),
    );
    let claimed = match mailbox
        .store
        .claim_waiting(&users, now, stale_before, MESSAGES_PER_USER)
        .await
    {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::warn!(%error, users = users.len(), "claiming waiting messages failed; retrying");
            {
                let mut queue = mailbox.queue();
                for user in &users {
                    queue.in_flight.remove(user);
                }
            }
            for user in users {
                mailbox.retry_later(user);
            }
            return;
        }
    };
    tracing::debug!(users = users.len(), messages = claimed.len(), "messages claimed");
    let mut by_user: HashMap<UserId, Vec<Message>> = HashMap::new();
    for message in claimed {
        by_user.entry(message.user_id).or_default().push(message);
    }
    // Each user's in its own task: a client that does not read holds up only itself.
    for ((user, waiters), generation) in here.into_iter().zip(generations) {
        let messages = by_user.remove(&user).unwrap_or_default();
        let attempt = AttemptUser { user, waiters, generation, results: Vec::new() };
        if messages.is_empty() {
            // Nothing to push (in a cluster every join asks): settled as is, without a task.
            let _ = settled.send(attempt);
            continue;
        }
        let (hub, settled) = (hub.clone(), settled.clone());
        let (window, write_timeout) = (mailbox.window, mailbox.write_timeout);
        tokio::spawn(async move {
            let attempt = push_in_window(&hub, attempt, messages, window, write_timeout).await;
            let _ = settled.send(attempt);
        });
    }
}

/// Pushes `messages` to the user in order, with at most `window` bytes pushed but not yet
/// confirmed (so a burst of waiting messages never overflows the socket's outbound budget);
/// after a push no socket wrote, the rest are not pushed (they wait again, still in order).
async fn push_in_window(
    hub: &Hub,
    mut attempt: AttemptUser,
    messages: Vec<Message>,
    window: usize,
    write_timeout: Duration,
) -> AttemptUser {
    let mut in_flight: VecDeque<(MessageId, usize, Delivery)> = VecDeque::new();
    let mut bytes = 0;
    let mut refused = false;
    // One deadline for the whole attempt, well inside the claim's lease.
    let deadline = tokio::time::Instant::now() + write_timeout;
    for message in messages {
        let payload = message.payload();
        // The frame is a little more than its payload: topic, event and refs.
        let size = payload.to_string().len() + 64;
        while !refused && !in_flight.is_empty() && bytes + size > window {
            if let Some((id, size, delivery)) = in_flight.pop_front() {
                bytes -= size;
                let outcome = confirmed(hub, delivery, deadline).await;
                refused |= outcome != Outcome::Written;
                attempt.results.push((id, outcome));
            }
        }
        if refused {
            attempt.results.push((message.id, Outcome::Refused));
            continue;
        }
        in_flight.push_back((message.id, size, push(hub, attempt.user, payload)));
        bytes += size;
    }
    while let Some((id, _, delivery)) = in_flight.pop_front() {
        attempt.results.push((id, confirmed(hub, delivery, deadline).await));
    }
    attempt
}

/// The settling task: marks what sockets wrote delivered and releases the rest, several
/// users' attempts per write, retrying the write until it works. Ends with the mailbox.
async fn settle(mailbox: Weak<Mailbox>, mut attempts: mpsc::UnboundedReceiver<AttemptUser>) {
    while let Some(first) = attempts.recv().await {
        let mut batch = vec![first];
        while batch.len() < USERS_PER_ATTEMPT {
            match attempts.try_recv() {
                Ok(attempt) => batch.push(attempt),
                Err(_) => break,
            }
        }
        let Some(mailbox) = mailbox.upgrade() else { return };
        let users = batch;
        let (mut delivered, mut released) = (Vec::new(), Vec::new());
        for user in &users {
            for (id, outcome) in &user.results {
                match outcome {
                    Outcome::Written => delivered.push(*id),
                    Outcome::Refused => released.push(*id),
                    Outcome::Unknown => {}
                }
            }
        }
        tracing::debug!(
            users = users.len(),
            delivered = delivered.len(),
            released = released.len(),
            "settling delivery attempts"
        );
        let mut wait = Duration::from_millis(50);
        let at = Timestamp::now();
        while !delivered.is_empty() || !released.is_empty() {
            match mailbox.store.settle(&delivered, &released, at).await {
                Ok(()) => break,
                Err(error) => {
                    tracing::warn!(%error, "marking messages delivered failed; retrying");
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        }
        for user in users {
            finish(&mailbox, user, at);
        }
        mailbox.wake.notify_one();
    }
}

/// After an attempt's settling write: tells its waiters, asks again where something is left.
fn finish(mailbox: &Arc<Mailbox>, attempt: AttemptUser, at: Timestamp) {
    let AttemptUser { user, waiters, generation, results } = attempt;
    let refused = results.iter().any(|(_, outcome)| *outcome != Outcome::Written);
    let full = results.len() >= MESSAGES_PER_USER as usize;
    for waiter in waiters {
        let written = results
            .iter()
            .any(|(id, outcome)| *id == waiter.message && *outcome == Outcome::Written);
        let _ = waiter.reply.send(written.then_some(at));
    }
    if results.iter().any(|(_, outcome)| *outcome == Outcome::Unknown) {
        // Nothing of this user goes out before that claim lapses: a later message would pass
        // the one left claimed. The user stays in flight until then.
        let mailbox = Arc::downgrade(mailbox);
        tokio::spawn(async move {
            tokio::time::sleep(LEASE + Duration::from_secs(1)).await;
            if let Some(mailbox) = mailbox.upgrade() {
                mailbox.queue().in_flight.remove(&user);
                mailbox.request(user, None);
            }
        });
        return;
    }
    {
        let mut queue = mailbox.queue();
        queue.in_flight.remove(&user);
        if !refused {
            queue.retries.remove(&user);
        }
    }
    if refused {
        mailbox.retry_later(user);
    } else if full {
        mailbox.request(user, None);
    } else {
        // Nothing left for this user, unless a send came after the claim.
        let mut waiting = mailbox.waiting();
        if waiting.get(&user) == Some(&generation) {
            waiting.remove(&user);
        }
    }
}

/// Loads the users with messages waiting (retrying while the database is away), after
/// releasing the claims of an earlier process (a single node: none of its attempts lives).
async fn load_waiting(mailbox: Weak<Mailbox>) {
    // This process's own claims come later than this.
    let started = Timestamp::now();
    let mut wait = Duration::from_millis(200);
    let mut released = false;
    loop {
        let Some(mailbox) = mailbox.upgrade() else { return };
        if !released {
            match mailbox.store.release_claims(started).await {
                Ok(0) => released = true,
                Ok(n) => {
                    tracing::info!(messages = n, "claims of an earlier process released");
                    released = true;
                }
                Err(error) => tracing::warn!(%error, "releasing earlier claims failed; retrying"),
            }
        }
        if released {
            match mailbox.store.users_with_waiting_messages(Timestamp::now()).await {
                Ok(users) => {
                    for user in users {
                        mailbox.mark_waiting(user);
                    }
                    mailbox.loaded.store(true, Ordering::Release);
                    return;
                }
                Err(error) => {
                    tracing::warn!(%error, "loading users with waiting messages failed; joins ask the database until it works")
                }
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
