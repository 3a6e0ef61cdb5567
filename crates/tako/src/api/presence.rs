//! `GET /api/presence/{topic}` (admin token): who is online on a notifications topic.

use std::collections::BTreeMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::auth::{require_admin, Role};
use super::error::{ApiError, ErrorDocument};
use super::AppState;
use crate::realtime::is_notifications_topic;

/// One connection of a present user (a tab, a device).
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceMeta {
    /// The user's nickname when it joined, kept current by nickname changes.
    pub nickname: Option<String>,
    /// When this connection joined, in milliseconds since the Unix epoch.
    pub online_at: i64,
    /// Names this meta in `presence_diff` events.
    pub phx_ref: String,
    /// The meta this one replaced (after a nickname change).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub phx_ref_prev: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceMetas {
    pub metas: Vec<PresenceMeta>,
}

/// A topic's presence, as its `presence_state` event would list it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PresenceList {
    pub topic: String,
    /// Users online (distinct handles).
    pub users: usize,
    /// Their connections (metas).
    pub connections: usize,
    /// By public handle (never the user's UUID).
    pub presences: BTreeMap<String, PresenceMetas>,
}

fn meta(value: &Value) -> PresenceMeta {
    let s = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_owned);
    PresenceMeta {
        nickname: s("nickname"),
        online_at: value.get("online_at").and_then(Value::as_i64).unwrap_or(0),
        phx_ref: s("phx_ref").unwrap_or_default(),
        phx_ref_prev: s("phx_ref_prev"),
    }
}

/// Who is online on a notifications topic (`notifications`, `notifications:scans`, …).
#[utoipa::path(
    get, path = "/api/presence/{topic}", tag = "operators",
    params(("topic" = String, Path, description = "A notifications topic, e.g. `notifications` or `notifications:scans`")),
    responses(
        (status = 200, description = "The topic's presence (empty when nobody is on it)", body = PresenceList),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "Not a notifications topic", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    topic: Result<Path<String>, PathRejection>,
) -> Result<Json<PresenceList>, ApiError> {
    require_admin(role)?;
    let Ok(Path(topic)) = topic else { return Err(ApiError::not_found()) };
    if !is_notifications_topic(&topic) {
        return Err(ApiError::not_found());
    }
    let mut presences = BTreeMap::new();
    let mut connections = 0;
    if let Value::Object(keys) = state.realtime.presence().list(&topic) {
        for (key, entry) in keys {
            let metas: Vec<PresenceMeta> = entry
                .get("metas")
                .and_then(Value::as_array)
                .map(|m| m.iter().map(meta).collect())
                .unwrap_or_default();
            connections += metas.len();
            presences.insert(key, PresenceMetas { metas });
        }
    }
    Ok(Json(PresenceList { topic, users: presences.len(), connections, presences }))
}
