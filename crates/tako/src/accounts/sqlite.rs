//! Users in SQLite. Timestamps are stored as microseconds since the Unix epoch.

use async_trait::async_trait;
use sqlx::Row;

use super::{
    LeaderboardEntry, Nickname, StampCount, Timestamp, User, UserChanges, UserId, UserStore,
};
use crate::storage::{SqliteStore, StoreError};

const USER_COLUMNS: &str = "id, nickname, stamps_collected, inserted_at, updated_at";

fn user_from_row(row: &sqlx::sqlite::SqliteRow) -> Result<User, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let id = id.parse().map_err(|e: uuid::Error| sqlx::Error::Decode(Box::new(e)))?;
    Ok(User {
        id,
        nickname: row.try_get::<Option<String>, _>("nickname")?.map(Nickname::from_stored),
        stamps_collected: StampCount::from_stored(row.try_get("stamps_collected")?),
        inserted_at: Timestamp::from_micros(row.try_get("inserted_at")?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
    })
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create(&self, user: &User) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO users (id, nickname, stamps_collected, inserted_at, updated_at, stamps_changed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?4)",
        )
        .bind(user.id.to_string())
        .bind(user.nickname.as_ref().map(Nickname::as_str))
        .bind(user.stamps_collected.get())
        .bind(user.inserted_at.as_micros())
        .bind(user.updated_at.as_micros())
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    async fn get(&self, id: UserId) -> Result<Option<User>, StoreError> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn update(&self, id: UserId, changes: &UserChanges) -> Result<Option<User>, StoreError> {
        // One statement: SQLite serializes writers, so fields not named here keep whatever a
        // concurrent update wrote, and updated_at strictly increases.
        let now = Timestamp::now().as_micros();
        let row = sqlx::query(&format!(
            "UPDATE users SET
                nickname = CASE WHEN ?2 THEN ?3 ELSE nickname END,
                stamps_changed_at = CASE WHEN ?4 AND stamps_collected IS NOT ?5 THEN ?6 ELSE stamps_changed_at END,
                stamps_collected = CASE WHEN ?4 THEN ?5 ELSE stamps_collected END,
                updated_at = max(?6, updated_at + 1)
             WHERE id = ?1
             RETURNING {USER_COLUMNS}"
        ))
        .bind(id.to_string())
        .bind(changes.nickname.is_some())
        .bind(changes.nickname.as_ref().and_then(|n| n.as_ref().map(Nickname::as_str)))
        .bind(changes.stamps_collected.is_some())
        .bind(changes.stamps_collected.map(|s| s.get()))
        .bind(now)
        .fetch_optional(&self.writer)
        .await?;
        Ok(row.as_ref().map(user_from_row).transpose()?)
    }

    async fn delete(&self, id: UserId) -> Result<bool, StoreError> {
        let result = sqlx::query("DELETE FROM users WHERE id = ?1")
            .bind(id.to_string())
            .execute(&self.writer)
            .await?;
        Ok(result.rows_affected() > 0)
    }

    async fn list(&self, limit: u32, offset: u64) -> Result<(Vec<User>, u64), StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users ORDER BY inserted_at, id LIMIT ?1 OFFSET ?2"
        ))
        .bind(i64::from(limit))
        .bind(i64::try_from(offset).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        let users = rows.iter().map(user_from_row).collect::<Result<_, _>>()?;
        let total: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users").fetch_one(&self.pool).await?;
        Ok((users, total as u64))
    }

    async fn search_nickname(&self, text: &str, limit: u32) -> Result<Vec<User>, StoreError> {
        let pattern = format!("%{}%", crate::accounts::escape_like(text));
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE nickname LIKE ?1 ESCAPE '\\' ORDER BY nickname, id LIMIT ?2"
        ))
        .bind(pattern)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(user_from_row).collect::<Result<_, _>>()?)
    }

    async fn leaderboard(&self, limit: u32) -> Result<Vec<LeaderboardEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT nickname, stamps_collected FROM users
             WHERE nickname IS NOT NULL
             ORDER BY stamps_collected DESC, stamps_changed_at ASC, id
             LIMIT ?1",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .zip(1..)
            .map(|(row, rank)| {
                Ok(LeaderboardEntry {
                    nickname: Nickname::from_stored(row.try_get("nickname")?),
                    stamps_collected: StampCount::from_stored(row.try_get("stamps_collected")?),
                    rank,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn existing(
        &self,
        ids: &[UserId],
    ) -> Result<Vec<(UserId, Option<Nickname>)>, StoreError> {
        let mut found = Vec::with_capacity(ids.len());
        // SQLite binds at most 32766 parameters; batches stay far below that.
        for chunk in ids.chunks(500) {
            let placeholders = vec!["?"; chunk.len()].join(",");
            let sql = format!("SELECT id, nickname FROM users WHERE id IN ({placeholders})");
            let mut query = sqlx::query_as::<_, (String, Option<String>)>(&sql);
            for id in chunk {
                query = query.bind(id.to_string());
            }
            for (id, nickname) in query.fetch_all(&self.pool).await? {
                if let Ok(id) = id.parse() {
                    found.push((id, nickname.map(Nickname::from_stored)));
                }
            }
        }
        Ok(found)
    }
}
