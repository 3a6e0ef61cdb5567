//! Prize draws of an event over JSON:API (admin token): draw N winners among the completers
//! not drawn before, and list every draw made. The domain does the picking (`rally::Draw`).

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Extension;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{require_admin, Role};
use super::body::{whole_u32, Document};
use super::error::{ApiError, ErrorDocument};
use super::events::{event_id, expect_type};
use super::jsonapi::{JsonApi, JsonApiVersion};
use super::AppState;
use crate::accounts::Timestamp;
use crate::rally::{Draw, MAX_WINNERS};

/// Completers listed at most.
const MAX_COMPLETERS: u32 = 100_000;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrawCreateAttributes {
    /// How many winners to draw.
    #[serde(deserialize_with = "whole_u32")]
    #[schema(minimum = 1, maximum = 1000, example = 3)]
    winners: u32,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DrawCreateResource {
    #[serde(rename = "type")]
    #[schema(pattern = "^draw$")]
    type_: String,
    attributes: DrawCreateAttributes,
}

/// `{"data":{"type":"draw","attributes":{"winners":3}}}`
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"data": {"type": "draw", "attributes": {"winners": 3}}}))]
pub struct DrawCreateDocument {
    data: DrawCreateResource,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct WinnerAttributes {
    #[schema(format = "uuid")]
    pub user_id: String,
    pub nickname: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrawAttributes {
    pub drawn_at: String,
    /// How many were asked for; `winners` may hold fewer when fewer were left.
    pub requested: u32,
    pub winners: Vec<WinnerAttributes>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrawResource {
    #[schema(format = "uuid")]
    pub id: String,
    /// `draw`
    #[serde(rename = "type")]
    pub type_: String,
    pub attributes: DrawAttributes,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrawDocument {
    pub data: DrawResource,
    pub jsonapi: JsonApiVersion,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DrawListDocument {
    pub data: Vec<DrawResource>,
    pub jsonapi: JsonApiVersion,
}

fn resource(draw: &Draw) -> DrawResource {
    DrawResource {
        id: draw.id.to_string(),
        type_: "draw".into(),
        attributes: DrawAttributes {
            drawn_at: draw.drawn_at.to_iso8601(),
            requested: draw.requested,
            winners: draw
                .winners
                .iter()
                .map(|w| WinnerAttributes {
                    user_id: w.user.to_string(),
                    nickname: w.nickname.clone(),
                })
                .collect(),
        },
    }
}

/// Draw winners among the event's completers not drawn before (admin token), with the
/// operating system's cryptographic RNG; the draw is recorded and listed for good.
#[utoipa::path(
    post, path = "/api/json/events/{event_id}/draws", tag = "rally",
    params(("event_id" = String, Path, description = "The event's id")),
    request_body(content = DrawCreateDocument, content_type = "application/vnd.api+json"),
    responses(
        (status = 201, description = "Drawn and recorded", body = DrawDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Malformed body or invalid attribute", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Wrong resource type, nobody left to draw, or another draw at the same moment", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    Document(body): Document<DrawCreateDocument>,
) -> Result<JsonApi<DrawDocument>, ApiError> {
    require_admin(role)?;
    let event = event_id(id)?;
    expect_type(&body.data.type_, "draw")?;
    let requested = body.data.attributes.winners;
    if !(1..=MAX_WINNERS).contains(&requested) {
        return Err(ApiError::many(
            StatusCode::BAD_REQUEST,
            vec![ApiError::invalid_attribute("winners", format!("must be 1 to {MAX_WINNERS}"))],
        ));
    }
    if state.store.event(&event).await?.is_none() {
        return Err(ApiError::not_found());
    }
    let candidates = state.store.undrawn_completers(&event).await?;
    if candidates.is_empty() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "nobody_to_draw",
            "Nobody to draw",
            "Every user who completed this event was already drawn (or nobody completed it)",
        ));
    }
    let draw = Draw::pick(event.clone(), &candidates, requested, Timestamp::now());
    if !state.store.record_draw(&draw).await? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "concurrent_draw",
            "Another draw at the same moment",
            "Another draw picked one of these winners at the same moment; nothing was recorded: draw again",
        ));
    }
    let recorded = state.store.draws(&event).await?;
    let draw = recorded.into_iter().find(|d| d.id == draw.id).unwrap_or(draw);
    Ok(JsonApi(
        StatusCode::CREATED,
        DrawDocument { data: resource(&draw), jsonapi: JsonApiVersion::default() },
    ))
}

/// Every draw of the event, oldest first, with its winners (admin token).
#[utoipa::path(
    get, path = "/api/json/events/{event_id}/draws", tag = "rally",
    params(("event_id" = String, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The draws", body = DrawListDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
) -> Result<JsonApi<DrawListDocument>, ApiError> {
    require_admin(role)?;
    let event = event_id(id)?;
    if state.store.event(&event).await?.is_none() {
        return Err(ApiError::not_found());
    }
    let draws = state.store.draws(&event).await?;
    Ok(JsonApi(
        StatusCode::OK,
        DrawListDocument {
            data: draws.iter().map(resource).collect(),
            jsonapi: JsonApiVersion::default(),
        },
    ))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompleterAttributes {
    pub nickname: Option<String>,
    pub completed_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompleterResource {
    /// The user's id.
    #[schema(format = "uuid")]
    pub id: String,
    /// `completer`
    #[serde(rename = "type")]
    pub type_: String,
    pub attributes: CompleterAttributes,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CompleterListDocument {
    pub data: Vec<CompleterResource>,
    pub jsonapi: JsonApiVersion,
}

/// Who completed the event, in the order they did (admin token: nicknames and user ids).
#[utoipa::path(
    get, path = "/api/json/events/{event_id}/completers", tag = "rally",
    params(("event_id" = String, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The completers", body = CompleterListDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn completers(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
) -> Result<JsonApi<CompleterListDocument>, ApiError> {
    require_admin(role)?;
    let event = event_id(id)?;
    if state.store.event(&event).await?.is_none() {
        return Err(ApiError::not_found());
    }
    let completers = state.store.completers(&event, MAX_COMPLETERS).await?;
    let data = completers
        .into_iter()
        .map(|c| CompleterResource {
            id: c.user.to_string(),
            type_: "completer".into(),
            attributes: CompleterAttributes {
                nickname: c.nickname,
                completed_at: c.completed_at.to_iso8601(),
            },
        })
        .collect();
    Ok(JsonApi(StatusCode::OK, CompleterListDocument { data, jsonapi: JsonApiVersion::default() }))
}
