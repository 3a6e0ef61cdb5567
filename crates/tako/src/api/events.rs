//! The rally's events and stamps over JSON:API: operators create and edit them with the admin
//! token; clients read the visible ones (never a code, a hash or a salt).

use std::collections::HashMap;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use utoipa::ToSchema;

use super::auth::{require_admin, Role};
use super::body::{nullable, present, some_whole_u32, whole_u32, Document};
use super::error::{ApiError, ErrorDocument};
use super::jsonapi::{JsonApi, JsonApiVersion};
use super::AppState;
use crate::accounts::Timestamp;
use crate::rally::{
    Deletion, Event, EventChanges, EventDraft, EventId, RallyError, Stamp, StampChanges,
    StampDraft, StampId,
};

pub const EVENTS: &str = "/api/json/events";
pub const STAMPS: &str = "/api/json/stamps";
/// Events listed at most (an operator runs a handful).
const MAX_EVENTS: u32 = 1000;

// ---- documents -------------------------------------------------------------------------------

/// The resource type `event`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum EventType {
    #[serde(rename = "event")]
    Event,
}

/// The resource type `stamp`.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum StampType {
    #[serde(rename = "stamp")]
    Stamp,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventAttributes {
    #[schema(example = "DoKomi 2025")]
    pub name: String,
    /// Distinct stamps that complete the rally.
    #[schema(minimum = 1, example = 8)]
    pub stamps_required: u32,
    /// The Phoenix topic its announcements go to.
    #[schema(example = "notifications")]
    pub topic: String,
    /// Scans count from then (null: always).
    pub opens_at: Option<String>,
    /// Scans count until then (null: always).
    pub closes_at: Option<String>,
    pub description: Option<String>,
    #[schema(value_type = Object)]
    pub metadata: Map<String, Value>,
    pub visible: bool,
    pub inserted_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Links {
    #[serde(rename = "self")]
    pub self_: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventResource {
    #[schema(example = "dokomi-2025")]
    pub id: String,
    #[serde(rename = "type")]
    pub type_: EventType,
    pub attributes: EventAttributes,
    /// With `include=stamps`: `{"stamps":{"data":[{"type":"stamp","id":…}]}}`.
    #[schema(value_type = Object)]
    pub relationships: Map<String, Value>,
    pub links: Links,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StampAttributes {
    #[schema(example = "Booth A-12")]
    pub name: String,
    pub booth_id: Option<String>,
    pub description: Option<String>,
    pub image_url: Option<String>,
    pub external_url: Option<String>,
    pub nsfw: bool,
    pub visible: bool,
    /// `printed` or `screen`.
    #[schema(example = "printed")]
    pub mode: String,
    pub inserted_at: String,
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StampResource {
    #[schema(format = "uuid")]
    pub id: String,
    #[serde(rename = "type")]
    pub type_: StampType,
    pub attributes: StampAttributes,
    /// `{"event":{"data":{"type":"event","id":…}}}`
    #[schema(value_type = Object)]
    pub relationships: Map<String, Value>,
    pub links: Links,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventDocument {
    pub data: EventResource,
    /// The event's stamps, with `include=stamps`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub included: Option<Vec<StampResource>>,
    pub jsonapi: JsonApiVersion,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventListDocument {
    pub data: Vec<EventResource>,
    pub jsonapi: JsonApiVersion,
}

/// Shown once, to the operator who created a printed stamp: the code is not kept.
#[derive(Debug, Serialize, ToSchema)]
pub struct StampCreatedMeta {
    /// The printed code (128 random bits); absent for `screen` stamps.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code: Option<String>,
    /// What to put in the QR code: `TAKO_SCAN_URL` with the code, or the code.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub qr: Option<String>,
    /// For `screen` stamps: where the booth's screen reads its current code (admin token).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub code_url: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StampDocument {
    pub data: StampResource,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub meta: Option<StampCreatedMeta>,
    pub jsonapi: JsonApiVersion,
}

/// The code a `screen` stamp shows now.
#[derive(Debug, Serialize, ToSchema)]
pub struct StampCode {
    pub code: String,
    /// What the QR code holds.
    pub qr: String,
    /// Show the next code from then.
    pub next_at: String,
    /// This code is refused (410) from then.
    pub valid_until: String,
    /// `TAKO_CODE_STEP`.
    pub step_seconds: u64,
}

fn iso(at: Option<Timestamp>) -> Option<String> {
    at.map(|t| t.to_iso8601())
}

pub fn event_resource(event: &Event, stamps: Option<&[Stamp]>) -> EventResource {
    let mut relationships = Map::new();
    if let Some(stamps) = stamps {
        let data: Vec<Value> =
            stamps.iter().map(|s| json!({"type": "stamp", "id": s.id.to_string()})).collect();
        relationships.insert("stamps".into(), json!({ "data": data }));
    }
    EventResource {
        id: event.id.to_string(),
        type_: EventType::Event,
        attributes: EventAttributes {
            name: event.name.clone(),
            stamps_required: event.stamps_required,
            topic: event.topic.clone(),
            opens_at: iso(event.opens_at),
            closes_at: iso(event.closes_at),
            description: event.description.clone(),
            metadata: event.metadata.clone(),
            visible: event.visible,
            inserted_at: event.inserted_at.to_iso8601(),
            updated_at: event.updated_at.to_iso8601(),
        },
        relationships,
        links: Links { self_: format!("{EVENTS}/{}", event.id) },
    }
}

pub fn stamp_resource(stamp: &Stamp) -> StampResource {
    let mut relationships = Map::new();
    relationships.insert(
        "event".into(),
        json!({"data": {"type": "event", "id": stamp.event_id.to_string()}}),
    );
    StampResource {
        id: stamp.id.to_string(),
        type_: StampType::Stamp,
        attributes: StampAttributes {
            name: stamp.name.clone(),
            booth_id: stamp.booth_id.clone(),
            description: stamp.description.clone(),
            image_url: stamp.image_url.clone(),
            external_url: stamp.external_url.clone(),
            nsfw: stamp.nsfw,
            visible: stamp.visible,
            mode: stamp.mode().as_str().to_owned(),
            inserted_at: stamp.inserted_at.to_iso8601(),
            updated_at: stamp.updated_at.to_iso8601(),
        },
        relationships,
        links: Links { self_: format!("{STAMPS}/{}", stamp.id) },
    }
}

// ---- request documents -----------------------------------------------------------------------

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventCreateAttributes {
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$",
        example = "DoKomi 2025"
    )]
    name: String,
    #[serde(deserialize_with = "whole_u32")]
    #[schema(minimum = 1, maximum = 10000, example = 8)]
    stamps_required: u32,
    /// `notifications` (default) or `notifications:<name>`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, pattern = r"^notifications(:[^\x00-\x1F\x7F-\x9F]{0,86})?$")]
    topic: Option<String>,
    #[serde(default)]
    opens_at: Option<DateTime<Utc>>,
    #[serde(default)]
    closes_at: Option<DateTime<Utc>>,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00]{0,10000}$")]
    description: Option<String>,
    /// Free JSON for the client (at most 16 KiB).
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object, nullable = false)]
    metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    visible: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventCreateResource {
    #[serde(rename = "type")]
    #[schema(value_type = EventType)]
    type_: String,
    /// Chosen by the operator: 1 to 40 characters of a-z, 0-9 and `-`.
    #[schema(pattern = "^[a-z0-9-]{1,40}$", example = "dokomi-2025")]
    id: String,
    attributes: EventCreateAttributes,
}

/// `{"data":{"type":"event","id":"dokomi-2025","attributes":{…}}}`
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"data": {"type": "event", "id": "dokomi-2025", "attributes": {"name": "DoKomi 2025", "stamps_required": 8}}}))]
pub struct EventCreateDocument {
    data: EventCreateResource,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventUpdateAttributes {
    #[serde(default, deserialize_with = "present")]
    #[schema(
        nullable = false,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    name: Option<String>,
    #[serde(default, deserialize_with = "some_whole_u32")]
    #[schema(nullable = false, minimum = 1, maximum = 10000)]
    stamps_required: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, pattern = r"^notifications(:[^\x00-\x1F\x7F-\x9F]{0,86})?$")]
    topic: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    opens_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<DateTime<Utc>>)]
    closes_at: Option<Option<DateTime<Utc>>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, pattern = r"^[^\x00]{0,10000}$")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Object, nullable = false)]
    metadata: Option<Map<String, Value>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    visible: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EventUpdateResource {
    #[serde(rename = "type")]
    #[schema(value_type = EventType)]
    type_: String,
    /// Optional; when sent, the id in the path.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    id: Option<String>,
    attributes: EventUpdateAttributes,
}

/// `{"data":{"type":"event","attributes":{…}}}`
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"data": {"type": "event", "attributes": {"stamps_required": 7}}}))]
pub struct EventUpdateDocument {
    data: EventUpdateResource,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StampCreateAttributes {
    #[schema(
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$",
        example = "Booth A-12"
    )]
    name: String,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00]{0,100}$")]
    booth_id: Option<String>,
    #[serde(default)]
    #[schema(pattern = r"^[^\x00]{0,10000}$")]
    description: Option<String>,
    /// An http(s) URL.
    #[serde(default)]
    #[schema(
        pattern = r"^https?://[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]{0,2040}$"
    )]
    image_url: Option<String>,
    /// An http(s) URL.
    #[serde(default)]
    #[schema(
        pattern = r"^https?://[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]{0,2040}$"
    )]
    external_url: Option<String>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    nsfw: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    visible: Option<bool>,
    /// `printed` (default) or `screen`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, pattern = "^(printed|screen)$")]
    mode: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StampCreateResource {
    #[serde(rename = "type")]
    #[schema(value_type = StampType)]
    type_: String,
    attributes: StampCreateAttributes,
}

/// `{"data":{"type":"stamp","attributes":{"name":"Booth A-12"}}}`
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"data": {"type": "stamp", "attributes": {"name": "Booth A-12", "mode": "printed"}}}))]
pub struct StampCreateDocument {
    data: StampCreateResource,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StampUpdateAttributes {
    #[serde(default, deserialize_with = "present")]
    #[schema(
        nullable = false,
        max_length = 200,
        pattern = r"^[^\x00-\x1F\x7F-\x9F]*[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]*$"
    )]
    name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, pattern = r"^[^\x00]{0,100}$")]
    booth_id: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, pattern = r"^[^\x00]{0,10000}$")]
    description: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, pattern = r"^https?://[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]{0,2040}$")]
    image_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<String>, pattern = r"^https?://[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]{0,2040}$")]
    external_url: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    nsfw: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false)]
    visible: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StampUpdateResource {
    #[serde(rename = "type")]
    #[schema(value_type = StampType)]
    type_: String,
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable = false, format = "uuid")]
    id: Option<String>,
    attributes: StampUpdateAttributes,
}

/// `{"data":{"type":"stamp","attributes":{…}}}`
#[derive(Debug, Deserialize, ToSchema)]
#[schema(example = json!({"data": {"type": "stamp", "attributes": {"visible": false}}}))]
pub struct StampUpdateDocument {
    data: StampUpdateResource,
}

// ---- helpers ---------------------------------------------------------------------------------

fn invalid(error: RallyError) -> ApiError {
    if error.attribute == "closes_at" {
        // Each time is valid alone; together they conflict (no schema can say "after").
        return ApiError::new(
            StatusCode::CONFLICT,
            "invalid_window",
            "Invalid window",
            error.detail,
        )
        .at_pointer("/data/attributes/closes_at");
    }
    ApiError::many(
        StatusCode::BAD_REQUEST,
        vec![ApiError::invalid_attribute(error.attribute, error.detail)],
    )
}

pub(super) fn expect_type(given: &str, expected: &str) -> Result<(), ApiError> {
    if given == expected {
        return Ok(());
    }
    Err(ApiError::conflict(format!(
        "Resource type `{given}` does not match this endpoint's type `{expected}`"
    ))
    .at_pointer("/data/type"))
}

fn at(value: DateTime<Utc>) -> Timestamp {
    Timestamp::from_datetime(value)
}

pub(super) fn event_id(path: Result<Path<String>, PathRejection>) -> Result<EventId, ApiError> {
    let Ok(Path(id)) = path else { return Err(ApiError::not_found()) };
    EventId::parse(&id).map_err(|_| ApiError::not_found())
}

pub(super) fn stamp_id(path: Result<Path<String>, PathRejection>) -> Result<StampId, ApiError> {
    let Ok(Path(id)) = path else { return Err(ApiError::not_found()) };
    id.parse().map_err(|_| ApiError::not_found())
}

type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;

fn query(query: QueryMap, name: &str) -> Result<HashMap<String, String>, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError::invalid_query(name, e.body_text()))
}

/// `?force=true` (or `false`, or absent).
fn force(query_map: QueryMap) -> Result<bool, ApiError> {
    match query(query_map, "force")?.get("force").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid_query("force", "force must be `true` or `false`")),
    }
}

fn has_scans(what: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "has_scans",
        "Has scans",
        format!("Visitors have scanned this {what}; add `?force=true` to delete it and its scans"),
    )
}

fn created(document: impl Serialize, location: &str) -> Response {
    let mut response = JsonApi(StatusCode::CREATED, document).into_response();
    if let Ok(location) = HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    response
}

// ---- events ----------------------------------------------------------------------------------

/// The events: visible ones for the client token, all of them for operators.
#[utoipa::path(
    get, path = "/api/json/events", tag = "rally",
    responses(
        (status = 200, description = "Events, by opening time", body = EventListDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list_events(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
) -> Result<JsonApi<EventListDocument>, ApiError> {
    let events = state.store.events(role == Role::Admin, MAX_EVENTS).await?;
    Ok(JsonApi(
        StatusCode::OK,
        EventListDocument {
            data: events.iter().map(|e| event_resource(e, None)).collect(),
            jsonapi: JsonApiVersion::default(),
        },
    ))
}

/// One event; `include=stamps` adds its stamps (visible ones for the client token).
#[utoipa::path(
    get, path = "/api/json/events/{event_id}", tag = "rally",
    params(
        ("event_id" = String, Path, description = "The event's id"),
        ("include" = Option<String>, Query, description = "`stamps`", pattern = "^stamps$"),
    ),
    responses(
        (status = 200, description = "The event", body = EventDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Unknown include", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event (or hidden)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn show_event(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    query_map: QueryMap,
) -> Result<JsonApi<EventDocument>, ApiError> {
    let id = event_id(id)?;
    let include = match query(query_map, "include")?.get("include").map(String::as_str) {
        None => false,
        Some("stamps") => true,
        Some(_) => return Err(ApiError::invalid_query("include", "include may only be `stamps`")),
    };
    let admin = role == Role::Admin;
    let event = state.store.event(&id).await?.filter(|e| admin || e.visible);
    let event = event.ok_or_else(ApiError::not_found)?;
    let stamps = if include { Some(state.store.stamps(&event.id, admin).await?) } else { None };
    Ok(JsonApi(
        StatusCode::OK,
        EventDocument {
            data: event_resource(&event, stamps.as_deref()),
            included: stamps.map(|s| s.iter().map(stamp_resource).collect()),
            jsonapi: JsonApiVersion::default(),
        },
    ))
}

/// Create an event (admin token); its id is chosen by the operator.
#[utoipa::path(
    post, path = "/api/json/events", tag = "rally",
    request_body(content = EventCreateDocument, content_type = "application/vnd.api+json"),
    responses(
        (status = 201, description = "Created", body = EventDocument, content_type = "application/vnd.api+json",
            headers(("location" = String, description = "The event's address"))),
        (status = 400, description = "Malformed body or invalid attribute", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Wrong resource type, an event with this id exists, or `invalid_window` (closes_at not after opens_at)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_event(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    Document(body): Document<EventCreateDocument>,
) -> Result<Response, ApiError> {
    require_admin(role)?;
    let data = body.data;
    expect_type(&data.type_, "event")?;
    let a = data.attributes;
    let draft = EventDraft {
        id: data.id,
        name: a.name,
        stamps_required: a.stamps_required,
        topic: a.topic,
        opens_at: a.opens_at.map(at),
        closes_at: a.closes_at.map(at),
        description: a.description,
        metadata: a.metadata,
        visible: a.visible,
    };
    let event = Event::create(draft, Timestamp::now()).map_err(|e| {
        if e.attribute == "id" {
            ApiError::invalid_body(e.detail).at_pointer("/data/id")
        } else {
            invalid(e)
        }
    })?;
    if !state.store.create_event(&event).await? {
        return Err(ApiError::conflict(format!("An event with id `{}` exists", event.id))
            .at_pointer("/data/id"));
    }
    let document = EventDocument {
        data: event_resource(&event, None),
        included: None,
        jsonapi: JsonApiVersion::default(),
    };
    let location = document.data.links.self_.clone();
    Ok(created(document, &location))
}

/// Update an event (admin token); only the attributes sent change.
#[utoipa::path(
    patch, path = "/api/json/events/{event_id}", tag = "rally",
    params(("event_id" = String, Path, description = "The event's id")),
    request_body(content = EventUpdateDocument, content_type = "application/vnd.api+json"),
    responses(
        (status = 200, description = "Updated", body = EventDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Malformed body or invalid attribute", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Wrong resource type, an id other than the path's, or `invalid_window` (closes_at not after opens_at)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn update_event(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    Document(body): Document<EventUpdateDocument>,
) -> Result<JsonApi<EventDocument>, ApiError> {
    require_admin(role)?;
    let id = event_id(id)?;
    let data = body.data;
    expect_type(&data.type_, "event")?;
    if data.id.as_deref().is_some_and(|given| given != id.as_str()) {
        return Err(ApiError::conflict("`data.id` does not match the id in the path")
            .at_pointer("/data/id"));
    }
    let a = data.attributes;
    let changes = EventChanges {
        name: a.name,
        stamps_required: a.stamps_required,
        topic: a.topic,
        opens_at: a.opens_at.map(|v| v.map(at)),
        closes_at: a.closes_at.map(|v| v.map(at)),
        description: a.description,
        metadata: a.metadata,
        visible: a.visible,
    };
    let stored = state.store.event(&id).await?.ok_or_else(ApiError::not_found)?;
    let event = stored.apply(changes, Timestamp::now()).map_err(invalid)?;
    if !state.store.save_event(&event).await? {
        return Err(ApiError::not_found());
    }
    Ok(JsonApi(
        StatusCode::OK,
        EventDocument {
            data: event_resource(&event, None),
            included: None,
            jsonapi: JsonApiVersion::default(),
        },
    ))
}

/// Delete an event and its stamps (admin token); refused while scans exist unless `force=true`.
#[utoipa::path(
    delete, path = "/api/json/events/{event_id}", tag = "rally",
    params(
        ("event_id" = String, Path, description = "The event's id"),
        ("force" = Option<bool>, Query, description = "Delete its scans too"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid force", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Scans exist (`has_scans`)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_event(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    query_map: QueryMap,
) -> Result<StatusCode, ApiError> {
    require_admin(role)?;
    let id = event_id(id)?;
    match state.store.delete_event(&id, force(query_map)?).await? {
        Deletion::Deleted => Ok(StatusCode::NO_CONTENT),
        Deletion::NotFound => Err(ApiError::not_found()),
        Deletion::HasScans => Err(has_scans("event")),
    }
}

// ---- stamps ----------------------------------------------------------------------------------

/// Create a stamp of an event (admin token). A printed stamp's code is in `meta.code`, shown
/// this once: print its `meta.qr`.
#[utoipa::path(
    post, path = "/api/json/events/{event_id}/stamps", tag = "rally",
    params(("event_id" = String, Path, description = "The event's id")),
    request_body(content = StampCreateDocument, content_type = "application/vnd.api+json"),
    responses(
        (status = 201, description = "Created; `meta.code` is the printed code", body = StampDocument, content_type = "application/vnd.api+json",
            headers(("location" = String, description = "The stamp's address"))),
        (status = 400, description = "Malformed body or invalid attribute", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token, or a client-generated id", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Wrong resource type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_stamp(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    Document(body): Document<StampCreateDocument>,
) -> Result<Response, ApiError> {
    require_admin(role)?;
    let event = event_id(id)?;
    let data = body.data;
    expect_type(&data.type_, "stamp")?;
    let a = data.attributes;
    let draft = StampDraft {
        name: a.name,
        booth_id: a.booth_id,
        description: a.description,
        image_url: a.image_url,
        external_url: a.external_url,
        nsfw: a.nsfw,
        visible: a.visible,
        mode: a.mode,
    };
    let (stamp, code) =
        state.rally.rally.new_stamp(event, draft, Timestamp::now()).map_err(invalid)?;
    if !state.store.create_stamp(&stamp).await? {
        return Err(ApiError::not_found());
    }
    let meta = StampCreatedMeta {
        qr: code.as_deref().map(|c| state.rally.rally.qr(c)),
        code_url: code.is_none().then(|| format!("{STAMPS}/{}/code", stamp.id)),
        code,
    };
    let document = StampDocument {
        data: stamp_resource(&stamp),
        meta: Some(meta),
        jsonapi: JsonApiVersion::default(),
    };
    let location = document.data.links.self_.clone();
    Ok(created(document, &location))
}

/// Update a stamp (admin token); only the attributes sent change. The mode and the code stay.
#[utoipa::path(
    patch, path = "/api/json/stamps/{stamp_id}", tag = "rally",
    params(("stamp_id" = String, Path, description = "The stamp's id (UUID)")),
    request_body(content = StampUpdateDocument, content_type = "application/vnd.api+json"),
    responses(
        (status = 200, description = "Updated", body = StampDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Malformed body or invalid attribute", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such stamp", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Wrong resource type, or an id other than the path's", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn update_stamp(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    Document(body): Document<StampUpdateDocument>,
) -> Result<JsonApi<StampDocument>, ApiError> {
    require_admin(role)?;
    let id = stamp_id(id)?;
    let data = body.data;
    expect_type(&data.type_, "stamp")?;
    if data.id.as_deref().is_some_and(|given| given.parse::<StampId>().ok() != Some(id)) {
        return Err(ApiError::conflict("`data.id` does not match the id in the path")
            .at_pointer("/data/id"));
    }
    let a = data.attributes;
    let changes = StampChanges {
        name: a.name,
        booth_id: a.booth_id,
        description: a.description,
        image_url: a.image_url,
        external_url: a.external_url,
        nsfw: a.nsfw,
        visible: a.visible,
    };
    let stored = state.store.stamp(id).await?.ok_or_else(ApiError::not_found)?;
    let stamp = stored.apply(changes, Timestamp::now()).map_err(invalid)?;
    if !state.store.save_stamp(&stamp).await? {
        return Err(ApiError::not_found());
    }
    Ok(JsonApi(
        StatusCode::OK,
        StampDocument {
            data: stamp_resource(&stamp),
            meta: None,
            jsonapi: JsonApiVersion::default(),
        },
    ))
}

/// Delete a stamp (admin token); refused while scans of it exist unless `force=true`.
#[utoipa::path(
    delete, path = "/api/json/stamps/{stamp_id}", tag = "rally",
    params(
        ("stamp_id" = String, Path, description = "The stamp's id (UUID)"),
        ("force" = Option<bool>, Query, description = "Delete its scans too"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 400, description = "Invalid force", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such stamp", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Scans exist (`has_scans`)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete_stamp(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    query_map: QueryMap,
) -> Result<StatusCode, ApiError> {
    require_admin(role)?;
    let id = stamp_id(id)?;
    match state.store.delete_stamp(id, force(query_map)?).await? {
        Deletion::Deleted => Ok(StatusCode::NO_CONTENT),
        Deletion::NotFound => Err(ApiError::not_found()),
        Deletion::HasScans => Err(has_scans("stamp")),
    }
}

/// The code a `screen` stamp shows now, for the booth's screen (admin token).
#[utoipa::path(
    get, path = "/api/json/stamps/{stamp_id}/code", tag = "rally",
    params(("stamp_id" = String, Path, description = "The stamp's id (UUID)")),
    responses(
        (status = 200, description = "The current code", body = StampCode),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such stamp", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "A printed stamp: its code was shown once, at creation", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn screen_code(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
) -> Result<axum::Json<StampCode>, ApiError> {
    require_admin(role)?;
    let id = stamp_id(id)?;
    let stamp = state.store.stamp(id).await?.ok_or_else(ApiError::not_found)?;
    let rally = &state.rally.rally;
    let current = rally.screen_code(&stamp, Timestamp::now()).ok_or_else(|| {
        ApiError::conflict("A printed stamp's code is shown once, when it is created")
    })?;
    Ok(axum::Json(StampCode {
        code: current.code,
        qr: current.qr,
        next_at: current.next_at.to_iso8601(),
        valid_until: current.valid_until.to_iso8601(),
        step_seconds: rally.step().seconds(),
    }))
}
