//! How an event is going, for the operators' dashboard (admin token): scans per stamp, scans
//! per minute over a recent window, and how many completed it. Counted by the database.

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Extension;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{require_admin, Role};
use super::error::{ApiError, ErrorDocument};
use super::events::event_id;
use super::jsonapi::{JsonApi, JsonApiVersion};
use super::AppState;
use crate::accounts::Timestamp;
use crate::rally::{StatsWindow, MAX_STATS_MINUTES};

/// The window when `minutes` is not given.
const DEFAULT_MINUTES: u32 = 60;

#[derive(Debug, Serialize, ToSchema)]
pub struct StampStats {
    #[schema(format = "uuid")]
    pub id: String,
    pub name: String,
    pub booth_id: Option<String>,
    /// `printed` or `screen`.
    pub mode: String,
    pub visible: bool,
    /// Every scan of it so far (one per visitor).
    pub scans: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MinuteStats {
    /// The minute's start.
    pub minute: String,
    pub scans: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventStatsAttributes {
    /// The window's start (a whole minute).
    pub since: String,
    /// The window's end: the end of the current minute.
    pub until: String,
    pub minutes: u32,
    /// Each stamp (hidden ones too), in creation order.
    pub stamps: Vec<StampStats>,
    /// The window's minutes that had scans, oldest first (the others had none).
    pub per_minute: Vec<MinuteStats>,
    /// Every scan of the event so far.
    pub scans: u64,
    /// Users who completed it.
    pub completers: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventStatsResource {
    /// The event's id.
    pub id: String,
    /// `event-stats`
    #[serde(rename = "type")]
    pub type_: String,
    pub attributes: EventStatsAttributes,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventStatsDocument {
    pub data: EventStatsResource,
    pub jsonapi: JsonApiVersion,
}

/// Scans per stamp and per minute of an event (admin token).
#[utoipa::path(
    get, path = "/api/json/events/{event_id}/stats", tag = "rally",
    params(
        ("event_id" = String, Path, description = "The event's id"),
        ("minutes" = Option<u32>, Query, description = "The window of per-minute counts: the last 1 to 1440 minutes (60 when absent)", minimum = 1, maximum = 1440),
    ),
    responses(
        (status = 200, description = "The event's statistics", body = EventStatsDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Invalid minutes", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<JsonApi<EventStatsDocument>, ApiError> {
    require_admin(role)?;
    let event = event_id(id)?;
    let query =
        query.map(|Query(q)| q).map_err(|e| ApiError::invalid_query("minutes", e.body_text()))?;
    let minutes = match query.get("minutes") {
        None => DEFAULT_MINUTES,
        Some(text) => {
            text.parse::<u32>().ok().filter(|m| (1..=MAX_STATS_MINUTES).contains(m)).ok_or_else(
                || {
                    ApiError::invalid_query(
                        "minutes",
                        format!("minutes must be a whole number from 1 to {MAX_STATS_MINUTES}"),
                    )
                },
            )?
        }
    };
    if state.store.event(&event).await?.is_none() {
        return Err(ApiError::not_found());
    }
    let window = StatsWindow::last(minutes, Timestamp::now());
    let stats = state.store.scan_stats(&event, window).await?;
    let stamps: HashMap<_, _> =
        state.store.stamps(&event, true).await?.into_iter().map(|s| (s.id, s)).collect();
    let per_stamp: Vec<StampStats> = stats
        .per_stamp
        .iter()
        .filter_map(|counted| {
            // A stamp created between the two reads is left for the next refresh.
            let stamp = stamps.get(&counted.stamp)?;
            Some(StampStats {
                id: stamp.id.to_string(),
                name: stamp.name.clone(),
                booth_id: stamp.booth_id.clone(),
                mode: stamp.mode().as_str().to_owned(),
                visible: stamp.visible,
                scans: counted.scans,
            })
        })
        .collect();
    let attributes = EventStatsAttributes {
        since: window.since.to_iso8601(),
        until: window.until.to_iso8601(),
        minutes,
        scans: stats.per_stamp.iter().map(|s| s.scans).sum(),
        stamps: per_stamp,
        per_minute: stats
            .per_minute
            .iter()
            .map(|m| MinuteStats { minute: m.minute.to_iso8601(), scans: m.scans })
            .collect(),
        completers: stats.completers,
    };
    Ok(JsonApi(
        StatusCode::OK,
        EventStatsDocument {
            data: EventStatsResource {
                id: event.to_string(),
                type_: "event-stats".into(),
                attributes,
            },
            jsonapi: JsonApiVersion::default(),
        },
    ))
}
