//! Messages in SQLite.

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{push_in_order, Message, MessageId, MessageStore};
use crate::accounts::{Timestamp, UserId};
use crate::storage::{SqliteStore, StoreError};

const COLUMNS: &str = "id, user_id, body, inserted_at, expires_at, delivered_at";

fn decode_error(e: impl std::error::Error + Send + Sync + 'static) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

fn message_from_row(row: &SqliteRow) -> Result<Message, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let user_id: String = row.try_get("user_id")?;
    let body: String = row.try_get("body")?;
    Ok(Message::from_body(
        id.parse::<MessageId>().map_err(decode_error)?,
        user_id.parse::<UserId>().map_err(decode_error)?,
        serde_json::from_str(&body).map_err(decode_error)?,
        Timestamp::from_micros(row.try_get("inserted_at")?),
        Timestamp::from_micros(row.try_get("expires_at")?),
        row.try_get::<Option<i64>, _>("delivered_at")?.map(Timestamp::from_micros),
    ))
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn insert_message(&self, message: &Message) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO messages (id, user_id, body, inserted_at, expires_at, delivered_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .bind(message.id.to_string())
        .bind(message.user_id.to_string())
        .bind(message.body().to_string())
        .bind(message.inserted_at.as_micros())
        .bind(message.expires_at.as_micros())
        .bind(message.delivered_at.map(|t| t.as_micros()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM messages WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(message_from_row).transpose()?)
    }

    async fn deliver_waiting(
        &self,
        user: UserId,
        now: Timestamp,
        limit: u32,
        push: &(dyn for<'m> Fn(&'m Message) -> bool + Send + Sync),
    ) -> Result<Vec<MessageId>, StoreError> {
        // One node: the mailbox's per-user lock already orders deliveries of a user.
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM messages
             WHERE user_id = ?1 AND delivered_at IS NULL AND expires_at > ?2
             ORDER BY seq LIMIT ?3"
        ))
        .bind(user.to_string())
        .bind(now.as_micros())
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let pushed = push_in_order(&rows, message_from_row, push)?;
        for id in &pushed {
            sqlx::query("UPDATE messages SET delivered_at = ?2 WHERE id = ?1")
                .bind(id.to_string())
                .bind(now.as_micros())
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(pushed)
    }

    async fn users_with_waiting_messages(&self, now: Timestamp) -> Result<Vec<UserId>, StoreError> {
        let ids: Vec<String> = sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM messages WHERE delivered_at IS NULL AND expires_at > ?1",
        )
        .bind(now.as_micros())
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.iter().filter_map(|id| id.parse().ok()).collect())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM messages WHERE expires_at <= ?1")
            .bind(now.as_micros())
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}
