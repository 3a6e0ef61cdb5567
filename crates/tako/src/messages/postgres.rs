//! Messages in PostgreSQL.

use async_trait::async_trait;
use chrono::NaiveDateTime;
use sqlx::postgres::PgRow;
use sqlx::Row;
use uuid::Uuid;

use super::{push_in_order, Message, MessageId, MessageStore};
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

#[async_trait]
impl MessageStore for PostgresStore {
    async fn insert_message(&self, message: &Message) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO messages (id, user_id, body, inserted_at, expires_at, delivered_at)
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(message.id.as_uuid())
        .bind(message.user_id.as_uuid())
        .bind(sqlx::types::Json(message.body()))
        .bind(naive(message.inserted_at))
        .bind(naive(message.expires_at))
        .bind(message.delivered_at.map(naive))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM messages WHERE id = $1"))
            .bind(id.as_uuid())
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
        // FOR UPDATE holds the rows until the commit: another node delivering to the same user
        // waits here, then sees them delivered and goes on with the next ones, in order.
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM messages
             WHERE user_id = $1 AND delivered_at IS NULL AND expires_at > $2
             ORDER BY seq LIMIT $3 FOR UPDATE"
        ))
        .bind(user.as_uuid())
        .bind(naive(now))
        .bind(i64::from(limit))
        .fetch_all(&mut *tx)
        .await?;
        let pushed = push_in_order(&rows, message_from_row, push)?;
        if !pushed.is_empty() {
            let uuids: Vec<Uuid> = pushed.iter().map(MessageId::as_uuid).collect();
            sqlx::query("UPDATE messages SET delivered_at = $2 WHERE id = ANY($1)")
                .bind(&uuids)
                .bind(naive(now))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(pushed)
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
