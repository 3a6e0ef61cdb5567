//! The rally in SQLite. Timestamps are microseconds since the Unix epoch; ids are text.

use async_trait::async_trait;
use serde_json::{Map, Value};
use sqlx::sqlite::SqliteRow;
use sqlx::Row;

use super::{
    Completer, Deletion, Draw, Event, EventId, MinuteScans, RallyStore, Recorded, Scan, ScanStats,
    Stamp, StampId, StampScans, StampSecret, StatsWindow, Winner,
};
use crate::accounts::{LeaderboardEntry, Nickname, StampCount, Timestamp, UserId};
use crate::storage::{SqliteStore, StoreError};

fn decode<E: std::error::Error + Send + Sync + 'static>(e: E) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

const EVENT_COLUMNS: &str = "id, name, stamps_required, topic, opens_at, closes_at, description, \
     metadata, visible, inserted_at, updated_at";

fn event_from_row(row: &SqliteRow) -> Result<Event, sqlx::Error> {
    let metadata: String = row.try_get("metadata")?;
    let metadata: Map<String, Value> = serde_json::from_str(&metadata).map_err(decode)?;
    let micros = |name: &str| -> Result<Option<Timestamp>, sqlx::Error> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(Timestamp::from_micros))
    };
    Ok(Event {
        id: EventId::from_stored(row.try_get("id")?),
        name: row.try_get("name")?,
        stamps_required: row.try_get::<i64, _>("stamps_required")?.clamp(1, i64::from(u32::MAX))
            as u32,
        topic: row.try_get("topic")?,
        opens_at: micros("opens_at")?,
        closes_at: micros("closes_at")?,
        description: row.try_get("description")?,
        metadata,
        visible: row.try_get("visible")?,
        inserted_at: Timestamp::from_micros(row.try_get("inserted_at")?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
    })
}

const STAMP_COLUMNS: &str = "id, event_id, name, booth_id, description, image_url, external_url, \
     nsfw, visible, mode, code_hash, screen_salt, inserted_at, updated_at";

fn stamp_from_row(row: &SqliteRow) -> Result<Stamp, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let mode: String = row.try_get("mode")?;
    let secret = match mode.as_str() {
        "screen" => StampSecret::Screen { salt: row.try_get("screen_salt")? },
        _ => StampSecret::Printed { code_hash: row.try_get("code_hash")? },
    };
    Ok(Stamp {
        id: id.parse().map_err(decode)?,
        event_id: EventId::from_stored(row.try_get("event_id")?),
        name: row.try_get("name")?,
        booth_id: row.try_get("booth_id")?,
        description: row.try_get("description")?,
        image_url: row.try_get("image_url")?,
        external_url: row.try_get("external_url")?,
        nsfw: row.try_get("nsfw")?,
        visible: row.try_get("visible")?,
        secret,
        inserted_at: Timestamp::from_micros(row.try_get("inserted_at")?),
        updated_at: Timestamp::from_micros(row.try_get("updated_at")?),
    })
}

fn scan_from_row(row: &SqliteRow) -> Result<Scan, sqlx::Error> {
    let id: String = row.try_get("id")?;
    let user: String = row.try_get("user_id")?;
    let stamp: String = row.try_get("stamp_id")?;
    Ok(Scan {
        id: id.parse().map_err(decode)?,
        user_id: user.parse().map_err(decode)?,
        stamp_id: stamp.parse().map_err(decode)?,
        event_id: EventId::from_stored(row.try_get("event_id")?),
        scanned_at: Timestamp::from_micros(row.try_get("scanned_at")?),
    })
}

fn secret_columns(secret: &StampSecret) -> (&'static str, Option<&str>, Option<&str>) {
    match secret {
        StampSecret::Printed { code_hash } => ("printed", Some(code_hash), None),
        StampSecret::Screen { salt } => ("screen", None, Some(salt)),
    }
}

#[async_trait]
impl RallyStore for SqliteStore {
    async fn rally_secret(&self, generated: &str) -> Result<String, StoreError> {
        sqlx::query("INSERT INTO rally_secret (id, secret) VALUES (1, ?1) ON CONFLICT DO NOTHING")
            .bind(generated)
            .execute(&self.writer)
            .await?;
        Ok(sqlx::query_scalar("SELECT secret FROM rally_secret WHERE id = 1")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn create_event(&self, event: &Event) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO rally_events (id, name, stamps_required, topic, opens_at, closes_at,
                 description, metadata, visible, inserted_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING",
        )
        .bind(event.id.as_str())
        .bind(&event.name)
        .bind(i64::from(event.stamps_required))
        .bind(&event.topic)
        .bind(event.opens_at.map(|t| t.as_micros()))
        .bind(event.closes_at.map(|t| t.as_micros()))
        .bind(&event.description)
        .bind(Value::Object(event.metadata.clone()).to_string())
        .bind(event.visible)
        .bind(event.inserted_at.as_micros())
        .bind(event.updated_at.as_micros())
        .execute(&self.writer)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn event(&self, id: &EventId) -> Result<Option<Event>, StoreError> {
        let row = sqlx::query(&format!("SELECT {EVENT_COLUMNS} FROM rally_events WHERE id = ?1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(event_from_row).transpose()?)
    }

    async fn events(&self, include_hidden: bool, limit: u32) -> Result<Vec<Event>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {EVENT_COLUMNS} FROM rally_events WHERE visible OR ?1
             ORDER BY opens_at IS NOT NULL, opens_at, id LIMIT ?2"
        ))
        .bind(include_hidden)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(event_from_row).collect::<Result<_, _>>()?)
    }

    async fn sole_event(&self) -> Result<Option<EventId>, StoreError> {
        let ids: Vec<String> =
            sqlx::query_scalar("SELECT id FROM rally_events LIMIT 2").fetch_all(&self.pool).await?;
        Ok(match <[String; 1]>::try_from(ids) {
            Ok([id]) => Some(EventId::from_stored(id)),
            Err(_) => None,
        })
    }

    async fn save_event(&self, event: &Event) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE rally_events SET name = ?2, stamps_required = ?3, topic = ?4, opens_at = ?5,
                 closes_at = ?6, description = ?7, metadata = ?8, visible = ?9, updated_at = ?10
             WHERE id = ?1",
        )
        .bind(event.id.as_str())
        .bind(&event.name)
        .bind(i64::from(event.stamps_required))
        .bind(&event.topic)
        .bind(event.opens_at.map(|t| t.as_micros()))
        .bind(event.closes_at.map(|t| t.as_micros()))
        .bind(&event.description)
        .bind(Value::Object(event.metadata.clone()).to_string())
        .bind(event.visible)
        .bind(event.updated_at.as_micros())
        .execute(&self.writer)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn delete_event(&self, id: &EventId, force: bool) -> Result<Deletion, StoreError> {
        let result = sqlx::query(
            "DELETE FROM rally_events WHERE id = ?1
               AND (?2 OR NOT EXISTS (SELECT 1 FROM rally_scans WHERE event_id = ?1))",
        )
        .bind(id.as_str())
        .bind(force)
        .execute(&self.writer)
        .await?;
        if result.rows_affected() == 1 {
            return Ok(Deletion::Deleted);
        }
        Ok(if self.event(id).await?.is_some() { Deletion::HasScans } else { Deletion::NotFound })
    }

    async fn create_stamp(&self, stamp: &Stamp) -> Result<bool, StoreError> {
        let (mode, code_hash, salt) = secret_columns(&stamp.secret);
        let result = sqlx::query(
            "INSERT INTO rally_stamps (id, event_id, name, booth_id, description, image_url,
                 external_url, nsfw, visible, mode, code_hash, screen_salt, inserted_at, updated_at)
             SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14
             WHERE EXISTS (SELECT 1 FROM rally_events WHERE id = ?2)",
        )
        .bind(stamp.id.to_string())
        .bind(stamp.event_id.as_str())
        .bind(&stamp.name)
        .bind(&stamp.booth_id)
        .bind(&stamp.description)
        .bind(&stamp.image_url)
        .bind(&stamp.external_url)
        .bind(stamp.nsfw)
        .bind(stamp.visible)
        .bind(mode)
        .bind(code_hash)
        .bind(salt)
        .bind(stamp.inserted_at.as_micros())
        .bind(stamp.updated_at.as_micros())
        .execute(&self.writer)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn stamp(&self, id: StampId) -> Result<Option<Stamp>, StoreError> {
        let row = sqlx::query(&format!("SELECT {STAMP_COLUMNS} FROM rally_stamps WHERE id = ?1"))
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(stamp_from_row).transpose()?)
    }

    async fn stamp_by_code_hash(&self, hash: &str) -> Result<Option<Stamp>, StoreError> {
        let row =
            sqlx::query(&format!("SELECT {STAMP_COLUMNS} FROM rally_stamps WHERE code_hash = ?1"))
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.as_ref().map(stamp_from_row).transpose()?)
    }

    async fn stamps(
        &self,
        event: &EventId,
        include_hidden: bool,
    ) -> Result<Vec<Stamp>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {STAMP_COLUMNS} FROM rally_stamps WHERE event_id = ?1 AND (visible OR ?2)
             ORDER BY inserted_at, id"
        ))
        .bind(event.as_str())
        .bind(include_hidden)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(stamp_from_row).collect::<Result<_, _>>()?)
    }

    async fn save_stamp(&self, stamp: &Stamp) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "UPDATE rally_stamps SET name = ?2, booth_id = ?3, description = ?4, image_url = ?5,
                 external_url = ?6, nsfw = ?7, visible = ?8, updated_at = ?9
             WHERE id = ?1",
        )
        .bind(stamp.id.to_string())
        .bind(&stamp.name)
        .bind(&stamp.booth_id)
        .bind(&stamp.description)
        .bind(&stamp.image_url)
        .bind(&stamp.external_url)
        .bind(stamp.nsfw)
        .bind(stamp.visible)
        .bind(stamp.updated_at.as_micros())
        .execute(&self.writer)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn set_booth_key(&self, id: StampId, hash: Option<&str>) -> Result<bool, StoreError> {
        let result = sqlx::query("UPDATE rally_stamps SET booth_key_hash = ?2 WHERE id = ?1")
            .bind(id.to_string())
            .bind(hash)
            .execute(&self.writer)
            .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn stamp_by_booth_key(&self, hash: &str) -> Result<Option<Stamp>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {STAMP_COLUMNS} FROM rally_stamps WHERE booth_key_hash = ?1"
        ))
        .bind(hash)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.as_ref().map(stamp_from_row).transpose()?)
    }

    async fn delete_stamp(&self, id: StampId, force: bool) -> Result<Deletion, StoreError> {
        let result = sqlx::query(
            "DELETE FROM rally_stamps WHERE id = ?1
               AND (?2 OR NOT EXISTS (SELECT 1 FROM rally_scans WHERE stamp_id = ?1))",
        )
        .bind(id.to_string())
        .bind(force)
        .execute(&self.writer)
        .await?;
        if result.rows_affected() == 1 {
            return Ok(Deletion::Deleted);
        }
        Ok(if self.stamp(id).await?.is_some() { Deletion::HasScans } else { Deletion::NotFound })
    }

    async fn record_scan(&self, scan: &Scan) -> Result<Recorded, StoreError> {
        let inserted = sqlx::query(
            "INSERT INTO rally_scans (id, user_id, stamp_id, event_id, scanned_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (user_id, stamp_id) DO NOTHING",
        )
        .bind(scan.id.to_string())
        .bind(scan.user_id.to_string())
        .bind(scan.stamp_id.to_string())
        .bind(scan.event_id.as_str())
        .bind(scan.scanned_at.as_micros())
        .execute(&self.writer)
        .await?;
        let row = sqlx::query(
            "SELECT id, user_id, stamp_id, event_id, scanned_at,
                 (SELECT count(*) FROM rally_scans WHERE user_id = ?1 AND event_id = ?3) AS collected
             FROM rally_scans WHERE user_id = ?1 AND stamp_id = ?2",
        )
        .bind(scan.user_id.to_string())
        .bind(scan.stamp_id.to_string())
        .bind(scan.event_id.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(Recorded {
            scan: scan_from_row(&row)?,
            new: inserted.rows_affected() == 1,
            collected: row.try_get::<i64, _>("collected")?.max(0) as u64,
        })
    }

    async fn complete(
        &self,
        user: UserId,
        event: &EventId,
        at: Timestamp,
    ) -> Result<bool, StoreError> {
        let result = sqlx::query(
            "INSERT INTO rally_completions (user_id, event_id, completed_at) VALUES (?1, ?2, ?3)
             ON CONFLICT DO NOTHING",
        )
        .bind(user.to_string())
        .bind(event.as_str())
        .bind(at.as_micros())
        .execute(&self.writer)
        .await?;
        Ok(result.rows_affected() == 1)
    }

    async fn scans(&self, user: UserId, limit: u32) -> Result<Vec<Scan>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, user_id, stamp_id, event_id, scanned_at FROM rally_scans
             WHERE user_id = ?1 ORDER BY scanned_at DESC, id LIMIT ?2",
        )
        .bind(user.to_string())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(scan_from_row).collect::<Result<_, _>>()?)
    }

    async fn collected(&self, user: UserId, event: &EventId) -> Result<u64, StoreError> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM rally_scans WHERE user_id = ?1 AND event_id = ?2",
        )
        .bind(user.to_string())
        .bind(event.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(count.max(0) as u64)
    }

    async fn event_leaderboard(
        &self,
        event: &EventId,
        limit: u32,
    ) -> Result<Vec<LeaderboardEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT u.nickname AS nickname, count(*) AS collected, max(s.scanned_at) AS reached
             FROM rally_scans s JOIN users u ON u.id = s.user_id
             WHERE s.event_id = ?1 AND u.nickname IS NOT NULL
             GROUP BY u.id ORDER BY collected DESC, reached ASC, u.id LIMIT ?2",
        )
        .bind(event.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .zip(1..)
            .map(|(row, rank)| {
                Ok(LeaderboardEntry {
                    nickname: Nickname::from_stored(row.try_get("nickname")?),
                    stamps_collected: StampCount::from_stored(row.try_get("collected")?),
                    rank,
                })
            })
            .collect::<Result<_, sqlx::Error>>()
            .map_err(StoreError::from)
    }

    async fn completers(&self, event: &EventId, limit: u32) -> Result<Vec<Completer>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.user_id AS user_id, u.nickname AS nickname, c.completed_at AS completed_at
             FROM rally_completions c JOIN users u ON u.id = c.user_id
             WHERE c.event_id = ?1 ORDER BY c.completed_at, c.user_id LIMIT ?2",
        )
        .bind(event.as_str())
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        let mut completers = Vec::with_capacity(rows.len());
        for row in &rows {
            completers.push(Completer {
                user: row.try_get::<String, _>("user_id")?.parse().map_err(decode)?,
                nickname: row.try_get("nickname")?,
                completed_at: Timestamp::from_micros(row.try_get("completed_at")?),
            });
        }
        Ok(completers)
    }

    async fn undrawn_completers(&self, event: &EventId) -> Result<Vec<UserId>, StoreError> {
        let rows = sqlx::query(
            "SELECT c.user_id AS user_id FROM rally_completions c
             WHERE c.event_id = ?1 AND NOT EXISTS (
                 SELECT 1 FROM rally_draw_winners w
                 WHERE w.event_id = c.event_id AND w.user_id = c.user_id)
             ORDER BY c.completed_at, c.user_id",
        )
        .bind(event.as_str())
        .fetch_all(&self.pool)
        .await?;
        let users: Result<Vec<UserId>, sqlx::Error> = rows
            .iter()
            .map(|row| row.try_get::<String, _>("user_id")?.parse().map_err(decode))
            .collect();
        Ok(users?)
    }

    async fn record_draw(&self, draw: &Draw) -> Result<bool, StoreError> {
        let mut tx = self.writer.begin().await?;
        sqlx::query(
            "INSERT INTO rally_draws (id, event_id, drawn_at, requested) VALUES (?1, ?2, ?3, ?4)",
        )
        .bind(draw.id.to_string())
        .bind(draw.event_id.as_str())
        .bind(draw.drawn_at.as_micros())
        .bind(i64::from(draw.requested))
        .execute(&mut *tx)
        .await?;
        for winner in &draw.winners {
            let user = winner.user;
            let result = sqlx::query(
                "INSERT INTO rally_draw_winners (draw_id, event_id, user_id) VALUES (?1, ?2, ?3)
                 ON CONFLICT DO NOTHING",
            )
            .bind(draw.id.to_string())
            .bind(draw.event_id.as_str())
            .bind(user.to_string())
            .execute(&mut *tx)
            .await?;
            if result.rows_affected() != 1 {
                tx.rollback().await?;
                return Ok(false);
            }
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn draws(&self, event: &EventId) -> Result<Vec<Draw>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, drawn_at, requested FROM rally_draws WHERE event_id = ?1
             ORDER BY drawn_at, id",
        )
        .bind(event.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut draws = Vec::with_capacity(rows.len());
        for row in &rows {
            draws.push(Draw {
                id: row.try_get::<String, _>("id")?.parse().map_err(decode)?,
                event_id: event.clone(),
                drawn_at: Timestamp::from_micros(row.try_get("drawn_at")?),
                requested: row.try_get::<i64, _>("requested")?.clamp(0, i64::from(u32::MAX)) as u32,
                winners: Vec::new(),
            });
        }
        let rows = sqlx::query(
            "SELECT w.draw_id AS draw_id, w.user_id AS user_id, u.nickname AS nickname
             FROM rally_draw_winners w JOIN users u ON u.id = w.user_id
             WHERE w.event_id = ?1 ORDER BY u.nickname, w.user_id",
        )
        .bind(event.as_str())
        .fetch_all(&self.pool)
        .await?;
        for row in &rows {
            let draw_id =
                row.try_get::<String, _>("draw_id")?.parse::<uuid::Uuid>().map_err(decode)?;
            let winner = Winner {
                user: row.try_get::<String, _>("user_id")?.parse().map_err(decode)?,
                nickname: row.try_get("nickname")?,
            };
            if let Some(draw) = draws.iter_mut().find(|d| d.id == draw_id) {
                draw.winners.push(winner);
            }
        }
        Ok(draws)
    }

    async fn scan_stats(
        &self,
        event: &EventId,
        window: StatsWindow,
    ) -> Result<ScanStats, StoreError> {
        let rows = sqlx::query(
            "SELECT st.id AS id,
                    (SELECT count(*) FROM rally_scans s WHERE s.stamp_id = st.id) AS scans
             FROM rally_stamps st WHERE st.event_id = ?1 ORDER BY st.inserted_at, st.id",
        )
        .bind(event.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut per_stamp = Vec::with_capacity(rows.len());
        for row in &rows {
            per_stamp.push(StampScans {
                stamp: row.try_get::<String, _>("id")?.parse().map_err(decode)?,
                scans: row.try_get::<i64, _>("scans")?.max(0) as u64,
            });
        }
        // Microseconds since the epoch: whole minutes by integer division.
        let rows = sqlx::query(
            "SELECT scanned_at / 60000000 AS minute, count(*) AS scans FROM rally_scans
             WHERE event_id = ?1 AND scanned_at >= ?2 AND scanned_at < ?3
             GROUP BY minute ORDER BY minute",
        )
        .bind(event.as_str())
        .bind(window.since.as_micros())
        .bind(window.until.as_micros())
        .fetch_all(&self.pool)
        .await?;
        let mut per_minute = Vec::with_capacity(rows.len());
        for row in &rows {
            per_minute.push(MinuteScans {
                minute: Timestamp::from_micros(row.try_get::<i64, _>("minute")? * 60_000_000),
                scans: row.try_get::<i64, _>("scans")?.max(0) as u64,
            });
        }
        let completers: i64 =
            sqlx::query_scalar("SELECT count(*) FROM rally_completions WHERE event_id = ?1")
                .bind(event.as_str())
                .fetch_one(&self.pool)
                .await?;
        Ok(ScanStats { per_stamp, per_minute, completers: completers.max(0) as u64 })
    }
}
