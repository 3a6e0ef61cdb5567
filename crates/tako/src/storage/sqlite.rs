//! The embedded default: one SQLite file, created on first start, in WAL mode.
//!
//! Writes go through one connection (`writer`), reads through a pool of read-only connections
//! (`pool`). SQLite allows one writer at a time anyway; with several writing connections, a
//! transaction that began as a reader and then writes fails at once with
//! `SQLITE_BUSY_SNAPSHOT` (517) when another connection wrote meanwhile — the busy timeout never
//! applies to it. One writing connection cannot race itself: writers queue for it in the pool
//! (bounded by the acquire timeout) instead of failing, and readers never wait for them (WAL).

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::{Store, StoreError};

/// Read-only connections: readers run in parallel beside the writer.
const READERS: u32 = 8;
/// How long a write waits for its turn on the writer before the request gives up.
const WRITE_QUEUE_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SqliteStore {
    /// Read-only connections.
    pub(crate) pool: SqlitePool,
    /// The one connection that writes.
    pub(crate) writer: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str) -> Result<SqliteStore, StoreError> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(|error| StoreError::Open(format!("invalid URL {url:?}: {error}")))?;
        let path = options.get_filename().to_owned();
        let in_memory = path.as_os_str() == ":memory:" || url.contains("mode=memory");
        if !in_memory {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    return Err(StoreError::Open(format!(
                        "SQLite database {}: the directory {} does not exist (create it, or \
                         point DATABASE_URL elsewhere)",
                        path.display(),
                        dir.display()
                    )));
                }
            }
        }
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // Another process writing the same file (a second `tako` by mistake) is waited for.
            .busy_timeout(Duration::from_secs(5));
        let named = |error: sqlx::Error| {
            StoreError::Open(format!("cannot open SQLite database {}: {error}", path.display()))
        };
        // The writer first: it creates the file and switches it to WAL before readers open it.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(WRITE_QUEUE_TIMEOUT)
            .connect_with(options.clone())
            .await
            .map_err(named)?;
        if in_memory {
            // Each connection to `:memory:` is a database of its own: the writer reads too.
            return Ok(SqliteStore { pool: writer.clone(), writer });
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.read_only(true))
            .await
            .map_err(named)?;
        Ok(SqliteStore { pool, writer })
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/sqlite").run(&self.writer).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool(&self) -> super::PoolStats {
        super::PoolStats {
            size: self.pool.size() + self.writer.size(),
            idle: (self.pool.num_idle() + self.writer.num_idle()) as u32,
            max: self.pool.options().get_max_connections()
                + self.writer.options().get_max_connections(),
        }
    }

    fn backend(&self) -> &'static str {
        "sqlite"
    }
}
