//! `GET /api/json/leaderboard`: not a JSON:API resource, the shape the web client reads.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::{ApiError, ErrorDocument};
use super::AppState;

const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderboardRow {
    #[schema(example = "Cruel_KFP")]
    pub nickname: String,
    #[schema(minimum = 0, example = 12)]
    pub stamps_collected: i64,
    /// 1 for the best; equal counts are ranked by who reached them first.
    #[schema(minimum = 1, example = 1)]
    pub rank: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Leaderboard {
    pub data: Vec<LeaderboardRow>,
}

/// The best users first; users without a nickname are left out.
#[utoipa::path(
    get, path = "/api/json/leaderboard", tag = "leaderboard",
    params(
        ("limit" = Option<u32>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
        ("event" = Option<String>, Query, description = "Rank verified scans in this event (TAKO_STAMPS=verified: the default event when absent)", pattern = "^[a-z0-9-]{1,40}$"),
    ),
    responses(
        (status = 200, description = "The leaderboard", body = Leaderboard),
        (status = 400, description = "Invalid limit", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn leaderboard(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Leaderboard>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_query("limit", e.body_text()))?;
    let limit = match query.get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => raw.parse().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
            ApiError::invalid_query(
                "limit",
                format!("limit must be an integer from 1 to {MAX_LIMIT}"),
            )
        })?,
    };
    let entries = match super::scans::leaderboard_event(&state, query.get("event")).await? {
        Some(event) => state.store.event_leaderboard(&event, limit).await?,
        None if state.rally.verified => Vec::new(),
        None => state.store.leaderboard(limit).await?,
    };
    Ok(Json(Leaderboard {
        data: entries
            .into_iter()
            .map(|e| LeaderboardRow {
                nickname: e.nickname.as_str().to_owned(),
                stamps_collected: e.stamps_collected.get(),
                rank: e.rank,
            })
            .collect(),
    }))
}
