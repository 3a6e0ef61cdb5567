//! The users' storage interface; the backends live in `crate::storage`.

use async_trait::async_trait;

use super::{LeaderboardEntry, Nickname, User, UserChanges, UserId};
use crate::storage::StoreError;

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    async fn create(&self, user: &User) -> Result<(), StoreError>;
    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Changes only the fields named in `changes`, atomically, and moves `updated_at` forward.
    async fn update(&self, id: UserId, changes: &UserChanges) -> Result<Option<User>, StoreError>;
    /// Deletes the user and what belongs to it (its stored messages); false when absent.
    async fn delete(&self, id: UserId) -> Result<bool, StoreError>;
    /// Users in registration order, and how many there are in all.
    async fn list(&self, limit: u32, offset: u64) -> Result<(Vec<User>, u64), StoreError>;
    /// Users whose nickname contains `text` (case-insensitive), by nickname; for operators
    /// looking someone up.
    async fn search_nickname(&self, text: &str, limit: u32) -> Result<Vec<User>, StoreError>;
    /// Best first; users without a nickname are left out. Served by an index.
    async fn leaderboard(&self, limit: u32) -> Result<Vec<LeaderboardEntry>, StoreError>;
    /// Which of `ids` exist, with their nicknames: one query for a whole batch of socket
    /// connects (and the nicknames their presences will show).
    async fn existing(&self, ids: &[UserId])
        -> Result<Vec<(UserId, Option<Nickname>)>, StoreError>;
}
