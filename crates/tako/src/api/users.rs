//! The JSON:API `user` resource under `/api/json/accounts/users`.

use std::collections::HashMap;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::{require_admin, Role};
use super::error::{ApiError, ErrorDocument};
use super::jsonapi::{JsonApi, JsonApiVersion, ResourceObject};
use super::ops::RegistrationAllowed;
use super::AppState;
use crate::accounts::{NicknamePolicy, StampCount, Timestamp, User, UserChanges, UserId};

pub const BASE: &str = "/api/json/accounts/users";
const TYPE: &str = "user";

fn self_link(id: UserId) -> String {
    format!("{BASE}/{id}")
}

/// A user as the client reads it.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserAttributes {
    #[schema(example = "Cruel_KFP")]
    pub nickname: Option<String>,
    #[schema(minimum = 0, example = 7)]
    pub stamps_collected: i64,
    #[schema(example = "2024-06-01T10:20:30.123456Z")]
    pub inserted_at: String,
    #[schema(example = "2024-06-01T10:20:30.123456Z")]
    pub updated_at: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct SelfLinks {
    #[serde(rename = "self")]
    pub self_: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct UserResource {
    /// The user's UUID: its login secret.
    #[schema(format = "uuid")]
    pub id: String,
    #[serde(rename = "type")]
    pub type_: UserType,
    pub attributes: UserAttributes,
    #[schema(value_type = Object)]
    pub relationships: Map<String, Value>,
    pub links: SelfLinks,
    #[schema(value_type = Object)]
    pub meta: Map<String, Value>,
}

/// A single-resource document.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserDocument {
    pub data: UserResource,
    pub jsonapi: JsonApiVersion,
    pub links: SelfLinks,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PageLinks {
    #[serde(rename = "self")]
    pub self_: String,
    pub first: String,
    /// Absent on the first page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub prev: Option<String>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub next: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PageMeta {
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ListMeta {
    pub page: PageMeta,
}

/// A page of users, in registration order.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserListDocument {
    pub data: Vec<UserResource>,
    pub jsonapi: JsonApiVersion,
    pub links: PageLinks,
    pub meta: ListMeta,
}

/// The resource type of users; a request document naming any other is refused with 409.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub enum UserType {
    #[serde(rename = "user")]
    User,
}

/// Writable attributes; unknown ones are refused with 400.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // describes the request body for the OpenAPI document
pub struct UserWriteAttributes {
    /// NFKC-normalised and trimmed (Unicode whitespace); blank or null clears it; otherwise 3
    /// to 24 characters without control characters (the pattern says that much). No pattern
    /// can say the rest, refused with 400: invisible, bidi or line-breaking characters, more
    /// than 3 combining marks on a letter, a name that shows nothing, a look-alike of a
    /// reserved name (admin, moderator, staff, …) and profanity.
    #[schema(
        pattern = r"^[\t\n\x0B\x0C\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*(?:[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000][^\x00-\x1F\x7F-\x9F]{1,22}[^\x00-\x20\x7F-\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000])?[\t\n\x0B\x0C\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]*$",
        example = "Cruel_KFP"
    )]
    nickname: Option<String>,
    /// A whole number (not null) from 0 to 2^63 - 1.
    #[schema(nullable = false, minimum = 0, maximum = 9223372036854775807_i64, example = 7)]
    stamps_collected: Option<i64>,
}

/// `relationships`, when sent, must be empty: this resource has no writable relationships.
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(max_properties = 0)]
pub struct NoRelationships {}

/// The resource object of a create request: the server generates ids, so `id` is refused (403).
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UserCreateResource {
    #[serde(rename = "type")]
    type_: UserType,
    attributes: Option<UserWriteAttributes>,
    #[schema(nullable = false)]
    relationships: Option<NoRelationships>,
}

/// The resource object of an update request.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
pub struct UserUpdateResource {
    #[serde(rename = "type")]
    type_: UserType,
    /// Optional; when sent, it must be the id in the path (409 otherwise).
    #[schema(format = "uuid", nullable = false)]
    id: Option<String>,
    attributes: Option<UserWriteAttributes>,
    #[schema(nullable = false)]
    relationships: Option<NoRelationships>,
}

/// `{"data":{"type":"user","attributes":{…}}}`
#[derive(Debug, ToSchema)]
#[schema(example = json!({"data": {"type": "user", "attributes": {"nickname": "Cruel_KFP", "stamps_collected": 0}}}))]
#[allow(dead_code)]
pub struct UserCreateDocument {
    data: UserCreateResource,
}

/// `{"data":{"type":"user","id":"…","attributes":{…}}}`
#[derive(Debug, ToSchema)]
#[schema(example = json!({"data": {"type": "user", "attributes": {"stamps_collected": 7}}}))]
#[allow(dead_code)]
pub struct UserUpdateDocument {
    data: UserUpdateResource,
}

fn resource(user: &User) -> UserResource {
    let inserted_at = user.inserted_at.to_iso8601();
    // A new user's two timestamps are the same instant: format it once.
    let updated_at = if user.updated_at == user.inserted_at {
        inserted_at.clone()
    } else {
        user.updated_at.to_iso8601()
    };
    UserResource {
        id: user.id.to_string(),
        type_: UserType::User,
        attributes: UserAttributes {
            nickname: user.nickname.as_ref().map(|n| n.as_str().to_owned()),
            stamps_collected: user.stamps_collected.get(),
            inserted_at,
            updated_at,
        },
        relationships: Map::new(),
        links: SelfLinks { self_: self_link(user.id) },
        meta: Map::new(),
    }
}

fn document(user: &User) -> UserDocument {
    let data = resource(user);
    let links = SelfLinks { self_: data.links.self_.clone() };
    UserDocument { data, jsonapi: JsonApiVersion::default(), links }
}

/// Reads the writable attributes, collecting every problem into one 400 document.
fn changes(
    policy: &NicknamePolicy,
    attributes: Map<String, Value>,
) -> Result<UserChanges, ApiError> {
    let mut changes = UserChanges::default();
    let mut errors = Vec::new();
    for (name, value) in attributes {
        match (name.as_str(), value) {
            ("nickname", Value::Null) => changes.nickname = Some(None),
            ("nickname", Value::String(s)) => match policy.parse(&s) {
                Ok(nick) => changes.nickname = Some(nick),
                Err(e) => errors.push(ApiError::invalid_attribute("nickname", e.to_string())),
            },
            ("nickname", _) => errors
                .push(ApiError::invalid_attribute("nickname", "Nickname must be a string or null")),
            ("stamps_collected", value) => match whole_number(&value).and_then(StampCount::new) {
                Some(count) => changes.stamps_collected = Some(count),
                None => errors.push(ApiError::invalid_attribute(
                    "stamps_collected",
                    "stamps_collected must be an integer greater than or equal to 0",
                )),
            },
            (other, _) => errors.push(ApiError::invalid_attribute(
                other,
                format!(
                    "`{other}` is not a writable attribute of user (nickname, stamps_collected)"
                ),
            )),
        }
    }
    if errors.is_empty() {
        Ok(changes)
    } else {
        Err(ApiError::many(StatusCode::BAD_REQUEST, errors))
    }
}

/// An `i64` from a JSON number with no fractional part. JSON Schema (and so the OpenAPI
/// document) counts `7.0` as the integer 7, so it is accepted like `7`; `7.5` is not.
fn whole_number(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    // 2^63 is exactly representable; every f64 below it with no fraction fits an i64.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    value.as_f64().filter(|f| f.fract() == 0.0 && (-LIMIT..LIMIT).contains(f)).map(|f| f as i64)
}

/// The `{id}` segment as a user id. Whatever is not one, including a segment that is not even
/// UTF-8 once percent-decoded (axum's own rejection would be a text/plain 400), is a 404.
fn parse_id(id: Result<Path<String>, PathRejection>) -> Result<UserId, ApiError> {
    let Ok(Path(id)) = id else { return Err(ApiError::not_found()) };
    id.parse().map_err(|_| ApiError::not_found())
}

/// Register a user; the server generates its UUID.
#[utoipa::path(
    post, path = "/api/json/accounts/users", tag = "users",
    request_body(content = UserCreateDocument, content_type = "application/vnd.api+json"),
    responses(
        (status = 201, description = "Registered", body = UserDocument, content_type = "application/vnd.api+json",
            headers(("location" = String, description = "The new user's address"))),
        (status = 400, description = "Malformed body or invalid attribute", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "A client-generated id was sent, or `stamps_are_verified` (TAKO_STAMPS=verified)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Wrong resource type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 429, description = "Too many registrations from this client address (`TAKO_REGISTRATIONS_PER_MINUTE`); see Retry-After", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    _: RegistrationAllowed,
    body: ResourceObject,
) -> Result<Response, ApiError> {
    body.expect_type(TYPE)?;
    if body.id().is_some() {
        return Err(ApiError::forbidden("The server generates user ids; do not send one")
            .at_pointer("/data/id"));
    }
    let changes = changes(&state.nicknames, body.attributes()?)?;
    state.rally.refuse_claims(changes.stamps_collected.is_some())?;
    let now = Timestamp::now();
    let user = User {
        id: UserId::generate(),
        nickname: changes.nickname.flatten(),
        stamps_collected: changes.stamps_collected.unwrap_or_default(),
        inserted_at: now,
        updated_at: now,
    };
    state.store.create(&user).await?;
    state.realtime.user_registered(user.id, user.nickname.clone());
    if user.nickname.is_some() {
        state.leaderboard.changed();
    }
    let document = document(&user);
    let location = HeaderValue::from_str(&document.links.self_);
    let mut response = JsonApi(StatusCode::CREATED, document).into_response();
    if let Ok(location) = location {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Read one user.
#[utoipa::path(
    get, path = "/api/json/accounts/users/{id}", tag = "users",
    params(("id" = String, Path, description = "The user's UUID")),
    responses(
        (status = 200, description = "The user", body = UserDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such user (or not a UUID)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn show(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> Result<JsonApi<UserDocument>, ApiError> {
    let id = parse_id(id)?;
    let mut user = state.store.get(id).await?.ok_or_else(ApiError::not_found)?;
    state.rally.show_verified(&*state.store, &mut user).await?;
    Ok(JsonApi(StatusCode::OK, document(&user)))
}

/// Update a user's nickname and/or stamps_collected; other fields keep their values.
#[utoipa::path(
    patch, path = "/api/json/accounts/users/{id}", tag = "users",
    params(("id" = String, Path, description = "The user's UUID")),
    request_body(content = UserUpdateDocument, content_type = "application/vnd.api+json"),
    responses(
        (status = 200, description = "Updated", body = UserDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Malformed body or invalid attribute", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "`stamps_are_verified`: stamps_collected is read-only with TAKO_STAMPS=verified", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such user (or not a UUID)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "Wrong resource type, or an id other than the path's", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn update(
    State(state): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: ResourceObject,
) -> Result<JsonApi<UserDocument>, ApiError> {
    let id = parse_id(id)?;
    body.expect_type(TYPE)?;
    match body.id() {
        None => {}
        Some(Value::String(given)) if given.parse::<UserId>().is_ok_and(|g| g == id) => {}
        Some(_) => {
            return Err(ApiError::conflict("`data.id` does not match the id in the path")
                .at_pointer("/data/id"))
        }
    }
    let changes = changes(&state.nicknames, body.attributes()?)?;
    state.rally.refuse_claims(changes.stamps_collected.is_some())?;
    let user = if changes.is_empty() {
        state.store.get(id).await?
    } else {
        state.store.update(id, &changes).await?
    };
    let mut user = user.ok_or_else(ApiError::not_found)?;
    if !changes.is_empty() {
        state.leaderboard.changed();
    }
    if changes.nickname.is_some() {
        state.realtime.nickname_changed(user.id, user.nickname.as_ref());
    }
    state.rally.show_verified(&*state.store, &mut user).await?;
    Ok(JsonApi(StatusCode::OK, document(&user)))
}

const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

fn page_link(limit: u32, offset: u64) -> String {
    format!("{BASE}?page%5Blimit%5D={limit}&page%5Boffset%5D={offset}")
}

/// List users, for operators only: user ids are login secrets and the client token is public.
#[utoipa::path(
    get, path = "/api/json/accounts/users", tag = "users",
    params(
        ("page[limit]" = Option<u32>, Query, description = "1 to 1000, default 100", minimum = 1, maximum = 1000),
        ("page[offset]" = Option<u64>, Query, description = "Users to skip, default 0", minimum = 0, maximum = 9223372036854775807_i64),
    ),
    responses(
        (status = 200, description = "A page of users", body = UserListDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Invalid page parameter", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<JsonApi<UserListDocument>, ApiError> {
    require_admin(role)?;
    let Query(query) = query.map_err(|e| ApiError::invalid_query("page", e.body_text()))?;
    let limit = match query.get("page[limit]") {
        None => DEFAULT_PAGE,
        Some(raw) => raw.parse().ok().filter(|l| (1..=MAX_PAGE).contains(l)).ok_or_else(|| {
            ApiError::invalid_query(
                "page[limit]",
                format!("page[limit] must be an integer from 1 to {MAX_PAGE}"),
            )
        })?,
    };
    let offset = match query.get("page[offset]") {
        None => 0,
        Some(raw) => raw.parse().ok().filter(|o| *o <= i64::MAX as u64).ok_or_else(|| {
            ApiError::invalid_query("page[offset]", "page[offset] must be a non-negative integer")
        })?,
    };
    let (users, total) = state.store.list(limit, offset).await?;
    let next = offset.saturating_add(u64::from(limit));
    let links = PageLinks {
        self_: page_link(limit, offset),
        first: page_link(limit, 0),
        prev: (offset > 0).then(|| page_link(limit, offset.saturating_sub(u64::from(limit)))),
        next: (next < total).then(|| page_link(limit, next)),
    };
    Ok(JsonApi(
        StatusCode::OK,
        UserListDocument {
            data: users.iter().map(resource).collect(),
            jsonapi: JsonApiVersion::default(),
            links,
            meta: ListMeta { page: PageMeta { total, limit, offset } },
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn whole_numbers_as_json_schema_counts_them() {
        assert_eq!(whole_number(&json!(7)), Some(7));
        assert_eq!(whole_number(&json!(7.0)), Some(7));
        assert_eq!(whole_number(&json!(-0.0)), Some(0));
        assert_eq!(whole_number(&json!(1e3)), Some(1000));
        assert_eq!(whole_number(&json!(i64::MAX)), Some(i64::MAX));
        assert_eq!(whole_number(&json!(7.5)), None);
        assert_eq!(whole_number(&json!(9_223_372_036_854_775_808.0)), None);
        assert_eq!(whole_number(&json!(u64::MAX)), None);
        assert_eq!(whole_number(&json!(1e300)), None);
        assert_eq!(whole_number(&json!("7")), None);
        assert_eq!(whole_number(&json!(null)), None);
    }
}

/// Delete a user (operators only): its stored messages go with it and its sockets are closed.
#[utoipa::path(
    delete, path = "/api/json/accounts/users/{id}", tag = "users",
    params(("id" = String, Path, description = "The user's UUID")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such user (or not a UUID)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    require_admin(role)?;
    let id = parse_id(id)?;
    if !state.store.delete(id).await? {
        return Err(ApiError::not_found());
    }
    state.leaderboard.changed();
    let sockets = state.realtime.disconnect_user(id);
    tracing::info!(sockets, "user deleted");
    Ok(StatusCode::NO_CONTENT)
}
