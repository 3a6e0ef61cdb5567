//! PostgreSQL, for production; works on a database the original Tako created.

use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::{Store, StoreError};
use crate::accounts::Timestamp;

pub struct PostgresStore {
    pub(crate) pool: PgPool,
}

impl PostgresStore {
    pub async fn connect(url: &str) -> Result<PostgresStore, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
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
