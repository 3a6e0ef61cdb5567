//! The database behind every store: SQLite by default, PostgreSQL in production. Each domain
//! (accounts, messages, rally) defines its own store trait; both backends implement all of them, and
//! `Store` is "all of them", handed around as one shared value.

pub mod backup;
pub(crate) mod postgres;
pub(crate) mod sqlite;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;

pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;
use crate::accounts::UserStore;
use crate::messages::MessageStore;
use crate::rally::RallyStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached or failed; the caller answers "try again later".
    #[error("database error: {0}")]
    Database(sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported DATABASE_URL scheme (use sqlite:// or postgres://): {0}")]
    UnsupportedUrl(String),
    /// The database named by `DATABASE_URL` cannot be opened at start; says which one and why.
    #[error("{0}")]
    Open(String),
    #[error("backup failed: {0}")]
    Backup(String),
}

/// Every database failure passes through here, so it is counted once (`tako_db_query_errors`).
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        QUERY_ERRORS.fetch_add(1, Ordering::Relaxed);
        StoreError::Database(error)
    }
}

static QUERY_ERRORS: AtomicU64 = AtomicU64::new(0);

/// Database errors since the process started (every store of the process).
pub fn query_errors() -> u64 {
    QUERY_ERRORS.load(Ordering::Relaxed)
}

/// The connection pool right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Connections open (idle or in use).
    pub size: u32,
    pub idle: u32,
    pub max: u32,
}

#[async_trait]
pub trait Store: UserStore + MessageStore + RallyStore {
    /// Applies pending migrations; safe on a database the original server created.
    async fn migrate(&self) -> Result<(), StoreError>;
    /// Answers when the database does.
    async fn ping(&self) -> Result<(), StoreError>;
    fn pool(&self) -> PoolStats;
    /// Short backend name for logs.
    fn backend(&self) -> &'static str;
}

/// Opens the database named by `url` (`sqlite://path` or `postgres://…`).
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if url.starts_with("sqlite:") {
        Ok(Arc::new(SqliteStore::connect(url).await?))
    } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(PostgresStore::connect(url).await?))
    } else {
        let scheme = url.split(':').next().unwrap_or_default().to_owned();
        Err(StoreError::UnsupportedUrl(scheme))
    }
}
