//! Scans: a visitor's client posts what it read from a QR code; the server verifies it,
//! records it once, answers with the progress, and announces it on the event's topic.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::body::Document;
use super::error::{ApiError, ErrorDocument};
use super::events::{stamp_resource, StampResource};
use super::jsonapi::{JsonApi, JsonApiVersion};
use super::scan_limits::{FailureLimiter, Turns};
use super::AppState;
use crate::accounts::{StampCount, Timestamp, User, UserId};
use crate::config::{Config, StampsMode};
use crate::rally::{EventId, Progress, Rally, Scan, ScanError, ScanOutcome, MAX_SCANNED_CHARS};
use crate::storage::Store;

/// Scans in progress at once (twice the database pool); the others wait their turn, first come
/// first served. A scan makes several queries, each waiting for a pooled connection: without
/// this bound a thousand scans at once each queued behind all the others at every query, and
/// under a busy fan-out the pool's 5 s wait ran out half-way through (503 after part of the
/// work).
const SCANS_AT_ONCE: usize = 32;
/// How long a scan waits for its turn before it is refused with 503 and `Retry-After`.
const SCAN_TURN_WAIT: Duration = Duration::from_secs(15);

/// The rally's share of the HTTP state: its rules, the mode, and the failed-scan limits.
pub struct RallyState {
    pub rally: Rally,
    pub verified: bool,
    default_event: Option<EventId>,
    per_user: Option<FailureLimiter<UserId>>,
    per_address: Option<FailureLimiter<IpAddr>>,
    trust_proxy: channels::TrustedProxies,
    turns: Turns,
}

impl RallyState {
    pub fn new(rally: Rally, config: &Config) -> RallyState {
        RallyState {
            rally,
            verified: config.stamps == StampsMode::Verified,
            default_event: config.default_event.as_deref().and_then(|e| EventId::parse(e).ok()),
            per_user: FailureLimiter::per_minute(config.failed_scans_per_minute),
            per_address: FailureLimiter::per_minute(config.failed_scans_per_minute_per_ip),
            trust_proxy: config.trust_proxy.clone(),
            turns: Turns::new(SCANS_AT_ONCE, SCAN_TURN_WAIT),
        }
    }

    /// `TAKO_DEFAULT_EVENT`, else the one event when exactly one exists.
    pub async fn default_event(&self, store: &dyn Store) -> Result<Option<EventId>, ApiError> {
        match &self.default_event {
            Some(id) => Ok(Some(id.clone())),
            None => Ok(store.sole_event().await?),
        }
    }

    /// In verified mode, `user.stamps_collected` becomes its verified count in the default
    /// event (0 without one).
    pub async fn show_verified(&self, store: &dyn Store, user: &mut User) -> Result<(), ApiError> {
        if !self.verified {
            return Ok(());
        }
        let count = match self.default_event(store).await? {
            Some(event) => store.collected(user.id, &event).await?,
            None => 0,
        };
        user.stamps_collected = StampCount::from_stored(Some(count.min(i64::MAX as u64) as i64));
        Ok(())
    }

    /// In verified mode clients may not set `stamps_collected`.
    pub fn refuse_claims(&self, sets_stamps: bool) -> Result<(), ApiError> {
        if self.verified && sets_stamps {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "stamps_are_verified",
                "Stamps are verified",
                "stamps_collected counts the scans the server verified (TAKO_STAMPS=verified); scan a stamp instead",
            )
            .at_pointer("/data/attributes/stamps_collected"));
        }
        Ok(())
    }

    fn blocked(&self, user: UserId, ip: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let by_user = self.per_user.as_ref().and_then(|l| l.blocked(&user, now));
        let by_address = match (&self.per_address, ip) {
            (Some(limiter), Some(ip)) if !ip.is_loopback() => limiter.blocked(&ip, now),
            _ => None,
        };
        by_user.max(by_address)
    }

    fn failed(&self, user: UserId, ip: Option<IpAddr>, now: Instant) {
        if let Some(limiter) = &self.per_user {
            limiter.fail(&user, now);
        }
        if let (Some(limiter), Some(ip)) = (&self.per_address, ip) {
            if !ip.is_loopback() {
                limiter.fail(&ip, now);
            }
        }
    }
}

// ---- documents -------------------------------------------------------------------------------

/// The resource type `scan`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum ScanType {
    #[serde(rename = "scan")]
    Scan,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScanAttributes {
    /// When the user first scanned this stamp.
    #[schema(example = "2025-06-14T10:20:30.123456Z")]
    pub collected_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScanResource {
    #[schema(format = "uuid")]
    pub id: String,
    #[serde(rename = "type")]
    pub type_: ScanType,
    pub attributes: ScanAttributes,
    /// `{"stamp":{"data":{"type":"stamp","id":…}},"event":{"data":{"type":"event","id":…}}}`
    #[schema(value_type = Object)]
    pub relationships: Map<String, Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressMeta {
    /// Distinct stamps of the event the user has.
    #[schema(minimum = 0)]
    pub collected: u64,
    #[schema(minimum = 1)]
    pub required: u32,
    pub completed: bool,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScanMeta {
    pub progress: ProgressMeta,
}

/// A scan, its stamp (in `included`) and the user's progress in the stamp's event.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScanDocument {
    pub data: ScanResource,
    pub included: Vec<StampResource>,
    pub meta: ScanMeta,
    pub jsonapi: JsonApiVersion,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ScanListDocument {
    pub data: Vec<ScanResource>,
    /// The scanned stamps, with `include=stamp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub included: Option<Vec<StampResource>>,
    pub jsonapi: JsonApiVersion,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanWriteAttributes {
    /// What the QR code holds: the code, or a URL ending in it.
    #[schema(
        min_length = 1,
        max_length = 2048,
        example = "https://app.holoquest.app/sc/Qm9vdGgtQTEyLXByaW50ZWQ"
    )]
    code: String,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScanWriteResource {
    #[serde(rename = "type")]
    #[schema(value_type = ScanType)]
    type_: String,
    attributes: ScanWriteAttributes,
}

/// `{"data":{"type":"scan","attributes":{"code":"…"}}}`
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"data": {"type": "scan", "attributes": {"code": "Qm9vdGgtQTEyLXByaW50ZWQ"}}}))]
pub struct ScanWriteDocument {
    data: ScanWriteResource,
}

fn scan_resource(scan: &Scan) -> ScanResource {
    let mut relationships = Map::new();
    relationships.insert(
        "stamp".into(),
        json!({"data": {"type": "stamp", "id": scan.stamp_id.to_string()}}),
    );
    relationships.insert(
        "event".into(),
        json!({"data": {"type": "event", "id": scan.event_id.to_string()}}),
    );
    ScanResource {
        id: scan.id.to_string(),
        type_: ScanType::Scan,
        attributes: ScanAttributes { collected_at: scan.scanned_at.to_iso8601() },
        relationships,
    }
}

fn progress(progress: Progress) -> ProgressMeta {
    ProgressMeta {
        collected: progress.collected,
        required: progress.required,
        completed: progress.completed,
    }
}

/// The client's address: the TCP peer, or with `TAKO_TRUST_PROXY` the first
/// `X-Forwarded-For` one.
pub struct ClientAddress(Option<IpAddr>);

impl FromRequestParts<AppState> for ClientAddress {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        Ok(ClientAddress(channels::client_ip(&parts.headers, peer, &state.rally.trust_proxy)))
    }
}

fn user_id(path: Result<Path<String>, PathRejection>) -> Result<UserId, ApiError> {
    let Ok(Path(id)) = path else { return Err(ApiError::not_found()) };
    id.parse().map_err(|_| ApiError::not_found())
}

fn rate_limited(state: &AppState, wait: Duration) -> Response {
    state.metrics.rate_limited("scans");
    let seconds = wait.as_secs_f64().ceil().max(1.0) as u64;
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "Too many requests",
        format!("Too many failed scans; retry in {seconds} s"),
    )
    .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

fn too_busy(turns: &Turns) -> Response {
    let mut response = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "Too many scans at once",
        format!(
            "{} scans were in progress for {} s; nothing was recorded, retry shortly",
            turns.at_once(),
            turns.wait().as_secs()
        ),
    )
    .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(2));
    response
}

/// The realtime half of a new scan: `collected-broadcast` (and `rally-completed` the first
/// time the user reaches the count) on the event's topic, with the stored nickname.
fn announce(state: &AppState, user: &User, outcome: &ScanOutcome) {
    let Some(nickname) = &user.nickname else { return };
    let payload = json!({ "nickname": nickname.as_str() });
    let topic = &outcome.event.topic;
    if outcome.new {
        state.realtime.broadcast(topic, "collected-broadcast", payload.clone());
    }
    if outcome.completed_now {
        state.realtime.broadcast(topic, "rally-completed", payload);
    }
}

// ---- routes ----------------------------------------------------------------------------------

/// Scan a stamp: what the QR code held, verified by the server and recorded once.
#[utoipa::path(
    post, path = "/api/json/accounts/users/{user_id}/scans", tag = "rally",
    params(("user_id" = String, Path, description = "The user's UUID")),
    request_body(content = ScanWriteDocument, content_type = "application/vnd.api+json"),
    responses(
        (status = 201, description = "A new stamp for this user", body = ScanDocument, content_type = "application/vnd.api+json"),
        (status = 200, description = "The user already had this stamp; nothing counted", body = ScanDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Malformed body", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such user, or `unknown_code`", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Wrong resource type, or `event_closed`", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 410, description = "`code_expired`: a screen code older than its window", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 429, description = "Too many failed scans by this user or address; see Retry-After", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable, or `busy`: too many scans at once for 15 s (see Retry-After); nothing recorded", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn scan(
    State(state): State<AppState>,
    ClientAddress(ip): ClientAddress,
    id: Result<Path<String>, PathRejection>,
    Document(body): Document<ScanWriteDocument>,
) -> Result<Response, Response> {
    let user = user_id(id).map_err(IntoResponse::into_response)?;
    let rally = &state.rally;
    if let Some(wait) = rally.blocked(user, ip, Instant::now()) {
        return Err(rate_limited(&state, wait));
    }
    let data = body.data;
    if data.type_ != "scan" {
        return Err(ApiError::conflict(format!(
            "Resource type `{}` does not match this endpoint's type `scan`",
            data.type_
        ))
        .at_pointer("/data/type")
        .into_response());
    }
    let code = data.attributes.code;
    if code.chars().count() > MAX_SCANNED_CHARS {
        return Err(ApiError::invalid_body(format!(
            "code is at most {MAX_SCANNED_CHARS} characters"
        ))
        .at_pointer("/data/attributes/code")
        .into_response());
    }
    let Some(_turn) = rally.turns.take().await else {
        return Err(too_busy(&rally.turns));
    };
    let store = &*state.store;
    let Some(stored_user) = store.get(user).await.map_err(|e| ApiError::from(e).into_response())?
    else {
        return Err(ApiError::not_found().into_response());
    };
    let outcome = match rally.rally.scan(store, user, &code, Timestamp::now()).await {
        Ok(outcome) => outcome,
        Err(ScanError::Store(error)) => return Err(ApiError::from(error).into_response()),
        Err(error) => {
            let (status, code_word, title) = match error {
                ScanError::UnknownCode => (StatusCode::NOT_FOUND, "unknown_code", "Unknown code"),
                ScanError::CodeExpired => (StatusCode::GONE, "code_expired", "Code expired"),
                _ => (StatusCode::CONFLICT, "event_closed", "Event closed"),
            };
            if status != StatusCode::CONFLICT {
                rally.failed(user, ip, Instant::now());
            }
            return Err(ApiError::new(status, code_word, title, error.to_string())
                .at_pointer("/data/attributes/code")
                .into_response());
        }
    };
    announce(&state, &stored_user, &outcome);
    let status = if outcome.new { StatusCode::CREATED } else { StatusCode::OK };
    let document = ScanDocument {
        data: scan_resource(&outcome.scan),
        included: vec![stamp_resource(&outcome.stamp)],
        meta: ScanMeta { progress: progress(outcome.progress) },
        jsonapi: JsonApiVersion::default(),
    };
    Ok(JsonApi(status, document).into_response())
}

/// The event a leaderboard ranks: `?event=…` (404 when there is no such event), else in
/// verified mode the default event; `None` ranks the claimed counts (or, in verified mode
/// without any event, nobody).
pub async fn leaderboard_event(
    state: &AppState,
    event: Option<&String>,
) -> Result<Option<EventId>, ApiError> {
    match event {
        Some(raw) => {
            let id =
                EventId::parse(raw).map_err(|_| ApiError::not_found().at_parameter("event"))?;
            match state.store.event(&id).await? {
                Some(_) => Ok(Some(id)),
                None => Err(ApiError::not_found().at_parameter("event")),
            }
        }
        None if state.rally.verified => state.rally.default_event(&*state.store).await,
        None => Ok(None),
    }
}

const MAX_SCANS: u32 = 1000;

/// The user's collected stamps, newest first; `include=stamp` adds the stamps.
#[utoipa::path(
    get, path = "/api/json/accounts/users/{user_id}/scans", tag = "rally",
    params(
        ("user_id" = String, Path, description = "The user's UUID"),
        ("include" = Option<String>, Query, description = "`stamp`", pattern = "^stamp$"),
    ),
    responses(
        (status = 200, description = "The user's scans (at most 1000)", body = ScanListDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Unknown include", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such user", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<JsonApi<ScanListDocument>, ApiError> {
    let user = user_id(id)?;
    let Query(query) = query.map_err(|e| ApiError::invalid_query("include", e.body_text()))?;
    let include = match query.get("include").map(String::as_str) {
        None => false,
        Some("stamp") => true,
        Some(_) => return Err(ApiError::invalid_query("include", "include may only be `stamp`")),
    };
    if state.store.get(user).await?.is_none() {
        return Err(ApiError::not_found());
    }
    let scans = state.store.scans(user, MAX_SCANS).await?;
    let included = if include {
        let mut stamps = Vec::new();
        for scan in &scans {
            if let Some(stamp) = state.store.stamp(scan.stamp_id).await? {
                stamps.push(stamp_resource(&stamp));
            }
        }
        Some(stamps)
    } else {
        None
    };
    Ok(JsonApi(
        StatusCode::OK,
        ScanListDocument {
            data: scans.iter().map(scan_resource).collect(),
            included,
            jsonapi: JsonApiVersion::default(),
        },
    ))
}
