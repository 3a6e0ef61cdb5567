//! "Does this user exist?" for socket connects, without one query per socket.
//!
//! After a restart thousands of clients reconnect at once. Known users are remembered (users
//! are only ever deleted through this server, which calls `forget`), and concurrent lookups of
//! unknown ids are coalesced: one batcher task answers everything queued so far with a single
//! `WHERE id IN (…)` query.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use crate::accounts::{UserId, UserStore};

/// More than this many remembered users and the memory is cleared (16 bytes each: a million
/// users is 16 MB of ids plus the set's overhead).
const MAX_REMEMBERED: usize = 2_000_000;
/// Ids answered by one query at most.
const MAX_BATCH: usize = 1000;
/// Lookups waiting for the batcher at most; past it, connects are refused as unavailable.
const QUEUE: usize = 20_000;

type Answer = oneshot::Sender<Result<bool, ()>>;

pub struct UserDirectory {
    known: Mutex<HashSet<UserId>>,
    lookups: mpsc::Sender<(UserId, Answer)>,
}

impl UserDirectory {
    pub fn spawn(store: Arc<dyn UserStore>) -> Arc<UserDirectory> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let directory = Arc::new(UserDirectory { known: Mutex::new(HashSet::new()), lookups: tx });
        tokio::spawn(batcher(Arc::downgrade(&directory), store, rx));
        directory
    }

    /// `Err(())` when the database cannot answer.
    pub async fn exists(&self, id: UserId) -> Result<bool, ()> {
        if self.known.lock().unwrap_or_else(|e| e.into_inner()).contains(&id) {
            return Ok(true);
        }
        let (tx, rx) = oneshot::channel();
        self.lookups.try_send((id, tx)).map_err(|_| ())?;
        rx.await.unwrap_or(Err(()))
    }

    /// Remember a user known to exist (e.g. just registered).
    pub fn remember(&self, id: UserId) {
        let mut known = self.known.lock().unwrap_or_else(|e| e.into_inner());
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
        known.insert(id);
    }

    /// The user was deleted: the next connect asks the database.
    pub fn forget(&self, id: UserId) {
        self.known.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
    }
}

async fn batcher(
    directory: std::sync::Weak<UserDirectory>,
    store: Arc<dyn UserStore>,
    mut rx: mpsc::Receiver<(UserId, Answer)>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    // Ends when the directory (the only sender) is dropped.
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let mut waiting: HashMap<UserId, Vec<Answer>> = HashMap::new();
        for (id, answer) in batch.drain(..) {
            waiting.entry(id).or_default().push(answer);
        }
        let ids: Vec<UserId> = waiting.keys().copied().collect();
        let result = store.existing(&ids).await;
        let found: HashSet<UserId> = match &result {
            Ok(found) => found.iter().copied().collect(),
            Err(error) => {
                tracing::warn!(%error, "socket connect lookup failed");
                HashSet::new()
            }
        };
        if let Some(directory) = directory.upgrade() {
            for id in &found {
                directory.remember(*id);
            }
        }
        for (id, answers) in waiting {
            let answer = if result.is_ok() { Ok(found.contains(&id)) } else { Err(()) };
            for tx in answers {
                let _ = tx.send(answer);
            }
        }
    }
}
