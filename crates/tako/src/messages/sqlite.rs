//! Messages in SQLite. Every write goes through the store's one writing connection, so none of
//! them can fail for another connection's write (see `storage::sqlite`).

use async_trait::async_trait;
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{IdempotencyKey, Message, MessageId, MessageStore, Stored};
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

/// A list bound as one JSON array parameter (`json_each`), whatever its length.
fn json_list<T: ToString>(items: &[T]) -> String {
    serde_json::Value::Array(
        items.iter().map(|i| serde_json::Value::String(i.to_string())).collect(),
    )
    .to_string()
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn insert_message(
        &self,
        message: &Message,
        key: Option<&IdempotencyKey>,
    ) -> Result<Stored, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO messages
                (id, user_id, body, inserted_at, expires_at, delivered_at, idempotency_key)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(message.id.to_string())
        .bind(message.user_id.to_string())
        .bind(message.body().to_string())
        .bind(message.inserted_at.as_micros())
        .bind(message.expires_at.as_micros())
        .bind(message.delivered_at.map(|t| t.as_micros()))
        .bind(key.map(IdempotencyKey::as_str))
        .execute(&self.writer)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Stored::New(message.clone()));
        }
        // The key exists (the only conflict this statement ignores): read it where it was
        // written, so a replica lag cannot hide it.
        let row =
            sqlx::query(&format!("SELECT {COLUMNS} FROM messages WHERE idempotency_key = ?1"))
                .bind(key.map(IdempotencyKey::as_str))
                .fetch_optional(&self.writer)
                .await?;
        match row {
            Some(row) => Ok(Stored::Existing(message_from_row(&row)?)),
            // Purged between the two statements: store it as new.
            None => self.insert_message(message, key).await,
        }
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM messages WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(message_from_row).transpose()?)
    }

    async fn claim_waiting(
        &self,
        users: &[UserId],
        now: Timestamp,
        stale_before: Timestamp,
        per_user: u32,
    ) -> Result<Vec<Message>, StoreError> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        // One statement on the one writer: nothing else claims between its read and its write.
        let rows = sqlx::query(&format!(
            "UPDATE messages SET claimed_at = ?2
             WHERE seq IN (
                SELECT seq FROM (
                    SELECT seq, row_number() OVER (PARTITION BY user_id ORDER BY seq) AS n
                    FROM messages
                    WHERE user_id IN (SELECT value FROM json_each(?1))
                      AND delivered_at IS NULL AND expires_at > ?2
                      AND (claimed_at IS NULL OR claimed_at < ?3)
                ) WHERE n <= ?4
             )
             RETURNING seq, {COLUMNS}"
        ))
        .bind(json_list(users))
        .bind(now.as_micros())
        .bind(stale_before.as_micros())
        .bind(i64::from(per_user))
        .fetch_all(&self.writer)
        .await?;
        let mut claimed = rows
            .iter()
            .map(|row| Ok((row.try_get::<i64, _>("seq")?, message_from_row(row)?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        // Oldest first, so each user's messages are in their order.
        claimed.sort_by_key(|(seq, _)| *seq);
        Ok(claimed.into_iter().map(|(_, m)| m).collect())
    }

    async fn settle(
        &self,
        delivered: &[MessageId],
        released: &[MessageId],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let mut tx = self.writer.begin_with("BEGIN IMMEDIATE").await?;
        if !delivered.is_empty() {
            sqlx::query(
                "UPDATE messages SET delivered_at = ?2
                 WHERE id IN (SELECT value FROM json_each(?1)) AND delivered_at IS NULL",
            )
            .bind(json_list(delivered))
            .bind(now.as_micros())
            .execute(&mut *tx)
            .await?;
        }
        if !released.is_empty() {
            sqlx::query(
                "UPDATE messages SET claimed_at = NULL
                 WHERE id IN (SELECT value FROM json_each(?1)) AND delivered_at IS NULL",
            )
            .bind(json_list(released))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_claims(&self, before: Timestamp) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE messages SET claimed_at = NULL
             WHERE claimed_at < ?1 AND delivered_at IS NULL",
        )
        .bind(before.as_micros())
        .execute(&self.writer)
        .await?;
        Ok(result.rows_affected())
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
            .execute(&self.writer)
            .await?;
        Ok(result.rows_affected())
    }
}
