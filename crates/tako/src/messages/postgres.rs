//! Messages in PostgreSQL.

use async_trait::async_trait;
use chrono::NaiveDateTime;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::{IdempotencyKey, Message, MessageId, MessageStore, Stored};
use crate::accounts::{Timestamp, UserId};
use crate::storage::postgres::{naive, timestamp};
use crate::storage::{PostgresStore, StoreError};

const COLUMNS: &str = "id, user_id, body, inserted_at, expires_at, delivered_at";

fn message_from_row(row: &PgRow) -> Result<Message, sqlx::Error> {
    Ok(Message::from_body(
        MessageId::from(row.try_get::<Uuid, _>("id")?),
        UserId::from(row.try_get::<Uuid, _>("user_id")?),
        row.try_get::<sqlx::types::Json<serde_json::Value>, _>("body")?.0,
        timestamp(row.try_get("inserted_at")?),
        timestamp(row.try_get("expires_at")?),
        row.try_get::<Option<NaiveDateTime>, _>("delivered_at")?.map(timestamp),
    ))
}

fn uuids(ids: &[MessageId]) -> Vec<Uuid> {
    ids.iter().map(MessageId::as_uuid).collect()
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn insert_message(
        &self,
        message: &Message,
        key: Option<&IdempotencyKey>,
    ) -> Result<Stored, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO messages
                (id, user_id, body, inserted_at, expires_at, delivered_at, idempotency_key)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING",
        )
        .bind(message.id.as_uuid())
        .bind(message.user_id.as_uuid())
        .bind(sqlx::types::Json(message.body()))
        .bind(naive(message.inserted_at))
        .bind(naive(message.expires_at))
        .bind(message.delivered_at.map(naive))
        .bind(key.map(IdempotencyKey::as_str))
        .execute(&self.pool)
        .await?
        .rows_affected();
        if inserted == 1 {
            return Ok(Stored::New(message.clone()));
        }
        let row =
            sqlx::query(&format!("SELECT {COLUMNS} FROM messages WHERE idempotency_key = $1"))
                .bind(key.map(IdempotencyKey::as_str))
                .fetch_optional(&self.pool)
                .await?;
        match row {
            Some(row) => Ok(Stored::Existing(message_from_row(&row)?)),
            // Purged between the two statements: store it as new.
            None => self.insert_message(message, key).await,
        }
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM messages WHERE id = $1"))
            .bind(id.as_uuid())
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
        let users: Vec<Uuid> = users.iter().map(UserId::as_uuid).collect();
        // The claim condition is repeated on the updated row itself: when another node's claim
        // holds a row, this statement waits for it, then sees it claimed and skips it.
        let rows = sqlx::query(&format!(
            "UPDATE messages m SET claimed_at = $2
             FROM (
                SELECT seq FROM (
                    SELECT seq, row_number() OVER (PARTITION BY user_id ORDER BY seq) AS n
                    FROM messages
                    WHERE user_id = ANY($1) AND delivered_at IS NULL AND expires_at > $2
                      AND (claimed_at IS NULL OR claimed_at < $3)
                ) w WHERE n <= $4
             ) pick
             WHERE m.seq = pick.seq AND m.delivered_at IS NULL
               AND (m.claimed_at IS NULL OR m.claimed_at < $3)
             RETURNING m.seq, {}",
            COLUMNS.split(", ").map(|c| format!("m.{c}")).collect::<Vec<_>>().join(", ")
        ))
        .bind(&users)
        .bind(naive(now))
        .bind(naive(stale_before))
        .bind(i64::from(per_user))
        .fetch_all(&self.pool)
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
        let mut tx = self.pool.begin().await?;
        if !delivered.is_empty() {
            sqlx::query(
                "UPDATE messages SET delivered_at = $2
                 WHERE id = ANY($1) AND delivered_at IS NULL",
            )
            .bind(uuids(delivered))
            .bind(naive(now))
            .execute(&mut *tx)
            .await?;
        }
        if !released.is_empty() {
            sqlx::query(
                "UPDATE messages SET claimed_at = NULL WHERE id = ANY($1) AND delivered_at IS NULL",
            )
            .bind(uuids(released))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn release_claims(&self, before: Timestamp) -> Result<u64, StoreError> {
        let result = sqlx::query(
            "UPDATE messages SET claimed_at = NULL
             WHERE claimed_at < $1 AND delivered_at IS NULL",
        )
        .bind(naive(before))
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    async fn users_with_waiting_messages(&self, now: Timestamp) -> Result<Vec<UserId>, StoreError> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT DISTINCT user_id FROM messages WHERE delivered_at IS NULL AND expires_at > $1",
        )
        .bind(naive(now))
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().map(UserId::from).collect())
    }

    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError> {
        let result = sqlx::query("DELETE FROM messages WHERE expires_at <= $1")
            .bind(naive(now))
            .execute(&self.pool)
            .await?;
        Ok(result.rows_affected())
    }
}
