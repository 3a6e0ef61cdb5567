//! PostgreSQL, for production; works on a database the original Tako created.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::Connection;

use super::{Store, StoreError};
use crate::accounts::Timestamp;

/// How long the first connection at start may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct PostgresStore {
    pub(crate) pool: PgPool,
}

impl PostgresStore {
    /// One plain connection first, so that a wrong host, port, password or database name is
    /// reported at once with the server it concerns (the pool would retry refused connections
    /// until its timeout and then only say that it timed out).
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let options = PgConnectOptions::from_str(url)
            .map_err(|error| StoreError::Open(format!("invalid URL: {error}")))?;
        let server = format!("PostgreSQL at {}:{}", options.get_host(), options.get_port());
        match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await {
            Ok(Ok(probe)) => {
                let _ = probe.close().await;
            }
            Ok(Err(sqlx::Error::Io(error))) => {
                return Err(StoreError::Open(format!("cannot connect to {server}: {error}")))
            }
            Ok(Err(error)) => return Err(StoreError::Open(format!("{server}: {error}"))),
            Err(_) => {
                return Err(StoreError::Open(format!(
                    "cannot connect to {server}: no answer within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            // No ping before each query: it doubled the round trips of every request (a scan
            // made 14 instead of 7), and under load the wait for a pooled connection is what
            // runs out first. A connection broken meanwhile (PostgreSQL restarted) fails its
            // next query instead, which answers 503 and is not returned to the pool.
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        Ok(PostgresStore { pool })
    }
}

/// `timestamp without time zone` columns hold UTC, as the original's do.
pub(crate) fn timestamp(at: NaiveDateTime) -> Timestamp {
    Timestamp::from_datetime(at.and_utc())
}

pub(crate) fn naive(at: Timestamp) -> NaiveDateTime {
    at.as_datetime().naive_utc()
}

#[async_trait]
impl Store for PostgresStore {
    async fn migrate(&self) -> Result<(), StoreError> {
        sqlx::migrate!("migrations/postgres").run(&self.pool).await?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    fn pool(&self) -> super::PoolStats {
        super::PoolStats {
            size: self.pool.size(),
            idle: self.pool.num_idle() as u32,
            max: self.pool.options().get_max_connections(),
        }
    }

    fn backend(&self) -> &'static str {
        "postgres"
    }
}
