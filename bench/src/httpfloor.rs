//! Scenario 5's yardstick: a minimal axum + sqlx server doing Tako's two queries (register a
//! user, read the leaderboard) with the same SQL and pool size, and no validation, auth,
//! JSON:API negotiation or tracing. Like Tako, the leaderboard without `limit` is every ranked
//! user up to 10,000 (Tako's `TAKO_LEADERBOARD_MAX` default); `limit` is 1 to 1000.

use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::Row;

#[derive(Deserialize)]
struct Limit {
    limit: Option<i64>,
}

async fn leaderboard(
    State(pool): State<PgPool>,
    Query(q): Query<Limit>,
) -> Result<Json<Value>, StatusCode> {
    let rows = sqlx::query(
        "SELECT nickname, stamps_collected FROM users
         WHERE nickname IS NOT NULL
         ORDER BY stamps_collected DESC NULLS LAST, stamps_changed_at ASC NULLS LAST, id
         LIMIT $1",
    )
    .bind(q.limit.map_or(crate::leaderboard::ROWS as i64, |l| l.clamp(1, 1000)))
    .fetch_all(&pool)
    .await
    .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let data: Vec<Value> = rows
        .iter()
        .zip(1u64..)
        .map(|(r, rank)| {
            json!({
                "nickname": r.get::<Option<String>, _>("nickname"),
                "stamps_collected": r.get::<Option<i64>, _>("stamps_collected").unwrap_or(0),
                "rank": rank,
            })
        })
        .collect();
    Ok(Json(json!({ "data": data })))
}

async fn register(
    State(pool): State<PgPool>,
    Json(body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), StatusCode> {
    let nickname = body["data"]["attributes"]["nickname"].as_str().map(str::to_owned);
    let id = uuid::Uuid::new_v4();
    let now = chrono::Utc::now().naive_utc();
    sqlx::query(
        "INSERT INTO users (id, nickname, stamps_collected, inserted_at, updated_at, stamps_changed_at)
         VALUES ($1, $2, $3, $4, $5, $4)",
    )
    .bind(id)
    .bind(&nickname)
    .bind(0i64)
    .bind(now)
    .bind(now)
    .execute(&pool)
    .await
    .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
    let at = now.and_utc().to_rfc3339();
    Ok((
        StatusCode::CREATED,
        Json(json!({"data": {"id": id, "type": "user", "attributes": {
            "nickname": nickname, "stamps_collected": 0, "inserted_at": at, "updated_at": at}}})),
    ))
}

pub async fn serve(port: u16, database_url: &str) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .acquire_timeout(Duration::from_secs(5))
        .connect(database_url)
        .await?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/api/json/leaderboard", get(leaderboard))
        .route("/api/json/accounts/users", axum::routing::post(register))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
