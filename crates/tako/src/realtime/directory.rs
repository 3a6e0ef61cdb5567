//! "Does this user exist, and what is its nickname?" for socket connects and joins, without
//! one query per socket.
//!
//! After a restart thousands of clients reconnect at once. Known users are remembered with
//! their nicknames (kept current by renames, forgotten on deletion — on every node of a
//! cluster, through signals), and concurrent lookups of unknown ids are coalesced: one batcher
//! task answers everything queued so far with a single `WHERE id IN (…)` query.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{mpsc, oneshot};

use crate::accounts::{Nickname, StoreError, UserId, UserStore};

/// More than this many remembered users and the memory is cleared (about 60 bytes each with a
/// nickname: a million users is some 60 MB).
const MAX_REMEMBERED: usize = 1_000_000;
/// Ids answered by one query at most.
const MAX_BATCH: usize = 1000;
/// Lookups waiting for the batcher at most; past it, connects are refused as unavailable.
const QUEUE: usize = 20_000;

type Answer = oneshot::Sender<Result<bool, ()>>;

pub struct UserDirectory {
    known: Mutex<HashMap<UserId, Option<Nickname>>>,
    lookups: mpsc::Sender<(UserId, Answer)>,
    /// Set while this node may miss deletions (cluster bus down): every connect asks.
    bypass: AtomicBool,
    store: Arc<dyn UserStore>,
}

impl UserDirectory {
    pub fn spawn(store: Arc<dyn UserStore>) -> Arc<UserDirectory> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let directory = Arc::new(UserDirectory {
            known: Mutex::new(HashMap::new()),
            lookups: tx,
            bypass: AtomicBool::new(false),
            store: store.clone(),
        });
        tokio::spawn(batcher(Arc::downgrade(&directory), store, rx));
        directory
    }

    fn known(&self) -> MutexGuard<'_, HashMap<UserId, Option<Nickname>>> {
        self.known.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Err(())` when the database cannot answer.
    pub async fn exists(&self, id: UserId) -> Result<bool, ()> {
        if !self.bypass.load(Ordering::Acquire) && self.known().contains_key(&id) {
            return Ok(true);
        }
        let (tx, rx) = oneshot::channel();
        self.lookups.try_send((id, tx)).map_err(|_| ())?;
        rx.await.unwrap_or(Err(()))
    }

    /// The nickname of a remembered user (`None` when the user is not remembered).
    pub fn nickname(&self, id: UserId) -> Option<Option<Nickname>> {
        self.known().get(&id).cloned()
    }

    /// The nickname the server knows for `id` (renames keep it current), from memory or else
    /// from the database; `Ok(None)` when the user has none or no longer exists.
    pub async fn stored_nickname(&self, id: UserId) -> Result<Option<Nickname>, StoreError> {
        // While this node may miss other nodes' renames (bus down), ask the database.
        if !self.bypass.load(Ordering::Acquire) {
            if let Some(nickname) = self.nickname(id) {
                return Ok(nickname);
            }
        }
        let nickname = match self.store.get(id).await? {
            Some(user) => {
                self.remember(id, user.nickname.clone());
                user.nickname
            }
            None => None,
        };
        Ok(nickname)
    }

    /// Remember a user known to exist (e.g. just registered).
    pub fn remember(&self, id: UserId, nickname: Option<Nickname>) {
        let mut known = self.known();
        if known.len() >= MAX_REMEMBERED {
            known.clear();
        }
        known.insert(id, nickname);
    }

    /// The user's nickname changed (remembered users only).
    pub fn renamed(&self, id: UserId, nickname: Option<Nickname>) {
        if let Some(known) = self.known().get_mut(&id) {
            *known = nickname;
        }
    }

    /// The user was deleted: the next connect asks the database.
    pub fn forget(&self, id: UserId) {
        self.known().remove(&id);
    }

    /// While set, connects ask the database even for remembered users (this node may have
    /// missed a deletion); lookups are still coalesced.
    pub fn set_bypass(&self, bypass: bool) {
        self.bypass.store(bypass, Ordering::Release);
    }

    /// Forgets every user but those `keep` says.
    pub fn retain(&self, keep: impl Fn(&UserId) -> bool) {
        self.known().retain(|id, _| keep(id));
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
        let found: HashSet<UserId> = match result {
            Ok(found) => {
                let ids = found.iter().map(|(id, _)| *id).collect();
                if let Some(directory) = directory.upgrade() {
                    for (id, nickname) in found {
                        directory.remember(id, nickname);
                    }
                }
                ids
            }
            Err(error) => {
                tracing::warn!(%error, "socket connect lookup failed");
                for answers in waiting.into_values() {
                    for tx in answers {
                        let _ = tx.send(Err(()));
                    }
                }
                continue;
            }
        };
        for (id, answers) in waiting {
            for tx in answers {
                let _ = tx.send(Ok(found.contains(&id)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::accounts::{LeaderboardEntry, User, UserChanges};

    /// Knows a fixed set of users and counts the lookups it is asked.
    struct CountingStore {
        users: HashSet<UserId>,
        queries: AtomicUsize,
    }

    #[async_trait]
    impl UserStore for CountingStore {
        async fn create(&self, _: &User) -> Result<(), StoreError> {
            unreachable!("not used by the directory")
        }
        async fn get(&self, _: UserId) -> Result<Option<User>, StoreError> {
            unreachable!("not used by the directory")
        }
        async fn update(&self, _: UserId, _: &UserChanges) -> Result<Option<User>, StoreError> {
            unreachable!("not used by the directory")
        }
        async fn delete(&self, _: UserId) -> Result<bool, StoreError> {
            unreachable!("not used by the directory")
        }
        async fn list(&self, _: u32, _: u64) -> Result<(Vec<User>, u64), StoreError> {
            unreachable!("not used by the directory")
        }
        async fn leaderboard(&self, _: u32) -> Result<Vec<LeaderboardEntry>, StoreError> {
            unreachable!("not used by the directory")
        }
        async fn search_nickname(&self, _: &str, _: u32) -> Result<Vec<User>, StoreError> {
            unreachable!("not used by the directory")
        }
        async fn existing(
            &self,
            ids: &[UserId],
        ) -> Result<Vec<(UserId, Option<Nickname>)>, StoreError> {
            self.queries.fetch_add(1, Ordering::SeqCst);
            // A database round trip, so concurrent connects pile up behind it.
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            Ok(ids
                .iter()
                .filter(|id| self.users.contains(id))
                .map(|id| (*id, Nickname::parse("Known").unwrap()))
                .collect())
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connect_storm_costs_a_few_batched_queries() {
        let known: Vec<UserId> = (0..2000).map(|_| UserId::generate()).collect();
        let store = Arc::new(CountingStore {
            users: known.iter().copied().collect(),
            queries: AtomicUsize::new(0),
        });
        let directory = UserDirectory::spawn(store.clone());

        let unknown = UserId::generate();
        let mut lookups = Vec::new();
        for id in known.iter().copied().chain(std::iter::once(unknown)) {
            let directory = directory.clone();
            lookups.push(tokio::spawn(async move { (id, directory.exists(id).await) }));
        }
        for lookup in lookups {
            let (id, exists) = lookup.await.unwrap();
            assert_eq!(exists, Ok(id != unknown));
        }
        let storm = store.queries.load(Ordering::SeqCst);
        assert!(storm <= 20, "2001 concurrent connects took {storm} queries");

        // Known users reconnecting again cost nothing; the unknown one is asked again.
        for id in &known[..100] {
            assert_eq!(directory.exists(*id).await, Ok(true));
        }
        assert_eq!(store.queries.load(Ordering::SeqCst), storm);
        assert_eq!(directory.exists(unknown).await, Ok(false));
        assert_eq!(store.queries.load(Ordering::SeqCst), storm + 1);

        // Nicknames came with the lookup, so joins need no query either; renames keep them current.
        assert_eq!(
            directory.nickname(known[1]).flatten().map(|n| n.to_string()).as_deref(),
            Some("Known")
        );
        directory.renamed(known[1], None);
        assert_eq!(directory.nickname(known[1]), Some(None));
        assert_eq!(directory.nickname(unknown), None);

        // A deleted user is forgotten and asked about again.
        directory.forget(known[0]);
        assert_eq!(directory.exists(known[0]).await, Ok(true));
        assert_eq!(store.queries.load(Ordering::SeqCst), storm + 2);
    }
}
