//! The one storage interface the rest of Tako uses, and the choice of backend by URL.

use std::sync::Arc;

use async_trait::async_trait;

use super::{postgres::PostgresStore, sqlite::SqliteStore};
use super::{LeaderboardEntry, User, UserChanges, UserId};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed; the caller answers "try again later".
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL scheme (use sqlite:// or postgres://): {0}")]
    UnsupportedUrl(String),
}

#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Applies pending migrations; safe on a database the original server created.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Answers when the database does.
    async fn ping(&self) -> Result<(), StoreError>;
    async fn create(&self, user: &User) -> Result<(), StoreError>;
    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError>;
    /// Changes only the fields named in `changes`, atomically, and moves `updated_at` forward.
    async fn update(&self, id: UserId, changes: &UserChanges) -> Result<Option<User>, StoreError>;
    /// Users in registration order, and how many there are in all.
    async fn list(&self, limit: u32, offset: u64) -> Result<(Vec<User>, u64), StoreError>;
    /// Best first; users without a nickname are left out. Served by an index.
    async fn leaderboard(&self, limit: u32) -> Result<Vec<LeaderboardEntry>, StoreError>;
    /// Which of `ids` exist: one query for a whole batch of socket connects.
    async fn existing(&self, ids: &[UserId]) -> Result<Vec<UserId>, StoreError>;
    /// Short, human-readable backend name for logs.
    fn backend(&self) -> &'static str;
}

/// Opens the database named by `url` (`sqlite://path` or `postgres://…`).
pub async fn connect(url: &str) -> Result<Arc<dyn UserStore>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::connect(url).await?))
    } else {
        let scheme = url.split(':').next().unwrap_or_default().to_owned();
        Err(StoreError::UnsupportedUrl(scheme))
    }
}
