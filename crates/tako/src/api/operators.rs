//! The operators' API (admin token): a message to one user, a broadcast to a topic, the
//! server-wide ping. Bodies and answers are plain JSON; errors are JSON:API error documents.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::{require_admin, Role};
use super::error::{ApiError, ErrorDocument};
use super::jsonapi::JsonObject;
use super::AppState;
use crate::accounts::UserId;
use crate::messages::{IdempotencyKey, Message, MessageId, RESERVED_FIELDS};

/// Longest message text, in characters.
pub const MAX_MESSAGE_CHARS: usize = 4096;
/// Longest topic or event name, in characters.
const MAX_NAME_CHARS: usize = 255;

/// `{"user_id": …, "message": …}` plus any extra payload fields.
#[derive(Debug, ToSchema)]
#[allow(dead_code)] // describes the request body for the OpenAPI document
pub struct SendMessage {
    /// The recipient's UUID.
    #[schema(format = "uuid")]
    user_id: String,
    /// Not blank: at least one character outside Unicode's White_Space set (the pattern).
    #[schema(
        min_length = 1,
        max_length = 4096,
        pattern = r"[^\t\n\x0B\x0C\r \x85\xA0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000]",
        example = "Come to booth A-12 for a prize!"
    )]
    message: String,
}

/// A stored message and whether it reached a live socket.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageStatus {
    #[schema(format = "uuid")]
    pub id: String,
    #[schema(format = "uuid")]
    pub user_id: String,
    pub message: String,
    /// Written to at least one of the user's live notifications sockets.
    pub delivered: bool,
    pub delivered_at: Option<String>,
    pub inserted_at: String,
    /// An undelivered message is dropped after this.
    pub expires_at: String,
}

impl From<&Message> for MessageStatus {
    fn from(m: &Message) -> Self {
        MessageStatus {
            id: m.id.to_string(),
            user_id: m.user_id.to_string(),
            message: m.text.clone(),
            delivered: m.delivered_at.is_some(),
            delivered_at: m.delivered_at.map(|t| t.to_iso8601()),
            inserted_at: m.inserted_at.to_iso8601(),
            expires_at: m.expires_at.to_iso8601(),
        }
    }
}

/// The request header naming a message so that a retry stores it once.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Set (to `true`) on the answer to a retry: the message was stored by an earlier request.
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

fn idempotency_key(headers: &HeaderMap) -> Result<Option<IdempotencyKey>, ApiError> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let Some(value) = values.next() else { return Ok(None) };
    let invalid = |detail: String| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_header",
            "Invalid header",
            format!("Idempotency-Key {detail}"),
        )
        .at_parameter("Idempotency-Key")
    };
    if values.next().is_some() {
        return Err(invalid("must be sent once".to_owned()));
    }
    let value = value.to_str().map_err(|_| invalid("must be printable ASCII".to_owned()))?;
    value.parse().map(Some).map_err(invalid)
}

fn field_error(field: &str, detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", "Invalid field", detail)
        .at_pointer(format!("/{field}"))
}

/// Send `msg` to one user: now if they are online, else when they next join. Stored once per
/// `Idempotency-Key`: a retry with the same key answers the first request's message.
#[utoipa::path(
    post, path = "/api/messages", tag = "operators",
    params(("Idempotency-Key" = Option<String>, Header,
        min_length = 1, max_length = 255, pattern = r"^[\x21-\x7E]{1,255}$",
        description = "1 to 255 printable ASCII characters without spaces naming this message: a retry with the same key stores nothing and answers the message stored first (with `Idempotent-Replayed: true`); kept as long as the message is")),
    request_body(content = SendMessage, content_type = "application/json",
        description = "Extra fields are passed along in the payload (not id, inserted_at)."),
    responses(
        (status = 202, description = "Stored (or stored before, under this Idempotency-Key), and delivered if the user is online", body = MessageStatus),
        (status = 400, description = "Missing or wrong fields, malformed JSON, or an invalid Idempotency-Key", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such user", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 422, description = "The Idempotency-Key names another message (another user, text or fields)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable: nothing was stored", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn send_message(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    headers: HeaderMap,
    JsonObject(mut body): JsonObject,
) -> Result<(StatusCode, HeaderMap, Json<MessageStatus>), ApiError> {
    require_admin(role)?;
    let key = idempotency_key(&headers)?;
    let user: UserId = match body.remove("user_id") {
        Some(Value::String(id)) => {
            id.parse().map_err(|_| field_error("user_id", "user_id must be a user's UUID"))?
        }
        Some(_) => return Err(field_error("user_id", "user_id must be a string (a user's UUID)")),
        None => return Err(field_error("user_id", "user_id is required")),
    };
    let text = match body.remove("message") {
        Some(Value::String(text))
            if !text.trim().is_empty() && text.chars().count() <= MAX_MESSAGE_CHARS =>
        {
            text
        }
        Some(Value::String(_)) => {
            return Err(field_error(
                "message",
                format!("message must be 1 to {MAX_MESSAGE_CHARS} characters, not blank"),
            ))
        }
        Some(_) => return Err(field_error("message", "message must be a string")),
        None => return Err(field_error("message", "message is required")),
    };
    if let Some(reserved) = RESERVED_FIELDS.iter().find(|f| body.contains_key(**f)) {
        return Err(field_error(reserved, format!("`{reserved}` is set by the server")));
    }
    if state.store.get(user).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            "No user has this id",
        )
        .at_pointer("/user_id"));
    }
    let (message, stored_now) =
        state.realtime.send_message(user, text.clone(), body.clone(), key.as_ref()).await?;
    let mut answer = HeaderMap::new();
    if !stored_now {
        if message.user_id != user || message.text != text || message.extra != body {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                "Idempotency-Key reused",
                "This Idempotency-Key names another message (another user, text or fields)",
            )
            .at_parameter("Idempotency-Key"));
        }
        answer.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok((StatusCode::ACCEPTED, answer, Json(MessageStatus::from(&message))))
}

/// A message's delivery state (kept until it expires).
#[utoipa::path(
    get, path = "/api/messages/{id}", tag = "operators",
    params(("id" = String, Path, description = "The message id")),
    responses(
        (status = 200, description = "The message", body = MessageStatus),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such message (or expired)", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn message_status(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<MessageStatus>, ApiError> {
    require_admin(role)?;
    let Ok(Path(id)) = id else { return Err(ApiError::not_found()) };
    let id: MessageId = id.parse().map_err(|_| ApiError::not_found())?;
    let message = state.realtime.message(id).await?.ok_or_else(ApiError::not_found)?;
    Ok(Json(MessageStatus::from(&message)))
}

/// `{"topic": …, "event": …, "payload": {…}}`
#[derive(Debug, ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub struct Broadcast {
    #[schema(min_length = 1, max_length = 255, example = "notifications")]
    topic: String,
    /// Not `phx_*` nor `presence_*`: those belong to the protocol.
    #[schema(min_length = 1, max_length = 255, example = "announcement")]
    event: String,
    /// Defaults to `{}`.
    #[schema(value_type = Option<Object>)]
    payload: Option<Map<String, Value>>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BroadcastSent {
    pub topic: String,
    pub event: String,
    /// Sockets on this node subscribed to the topic when it was sent.
    pub subscribers: usize,
}

fn name(body: &mut Map<String, Value>, field: &str) -> Result<String, ApiError> {
    match body.remove(field) {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_NAME_CHARS => Ok(s),
        Some(Value::String(_)) => {
            Err(field_error(field, format!("{field} must be 1 to {MAX_NAME_CHARS} characters")))
        }
        Some(_) => Err(field_error(field, format!("{field} must be a string"))),
        None => Err(field_error(field, format!("{field} is required"))),
    }
}

/// Broadcast any event to everyone on a topic. A `msg` whose payload names a `user_id` (the
/// seed README's way to message one user) is a message to that user instead: stored,
/// delivered only to their sockets and answered as `POST /api/messages` answers; no other
/// broadcast may carry a `user_id`, since it would reach everyone on the topic.
#[utoipa::path(
    post, path = "/api/broadcasts", tag = "operators",
    request_body(content = Broadcast, content_type = "application/json"),
    responses(
        (status = 202, description = "Sent; for `msg` with a `user_id`, the stored message (as `POST /api/messages`)", body = BroadcastSent),
        (status = 404, description = "`msg` to a user that does not exist", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 400, description = "Missing or wrong fields, a reserved event, or malformed JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 64 KiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn broadcast(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    JsonObject(mut body): JsonObject,
) -> Result<Response, ApiError> {
    require_admin(role)?;
    let topic = name(&mut body, "topic")?;
    let event = name(&mut body, "event")?;
    if event.starts_with("phx_") || event.starts_with("presence_") {
        return Err(field_error(
            "event",
            "phx_* and presence_* events are reserved for the protocol",
        ));
    }
    let payload = match body.remove("payload") {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::Object(map)) => Value::Object(map),
        Some(_) => return Err(field_error("payload", "payload must be an object")),
    };
    if let Some(unknown) = body.keys().next() {
        return Err(field_error(
            unknown,
            format!("unknown field `{unknown}` (topic, event, payload)"),
        ));
    }
    if let Value::Object(map) = &payload {
        if map.contains_key("user_id") {
            if event != "msg" {
                return Err(field_error(
                    "payload/user_id",
                    "a user_id in a broadcast would reach everyone on the topic; \
                     send event `msg` (or POST /api/messages) to message that user",
                ));
            }
            let Value::Object(map) = payload else { unreachable!("matched above") };
            let message = message_to_one_user(&state, map).await?;
            return Ok((StatusCode::ACCEPTED, Json(MessageStatus::from(&message))).into_response());
        }
    }
    let subscribers = state.realtime.hub().subscriber_count(&topic);
    state.realtime.broadcast(&topic, &event, payload);
    Ok((StatusCode::ACCEPTED, Json(BroadcastSent { topic, event, subscribers })).into_response())
}

/// A broadcast `msg` payload `{"user_id", "message", …extra}` sent through the mailbox, as
/// `POST /api/messages` sends it (errors point into `/payload`).
async fn message_to_one_user(
    state: &AppState,
    mut payload: Map<String, Value>,
) -> Result<Message, ApiError> {
    let user: UserId = match payload.remove("user_id") {
        Some(Value::String(id)) => id
            .parse()
            .map_err(|_| field_error("payload/user_id", "user_id must be a user's UUID"))?,
        _ => {
            return Err(field_error("payload/user_id", "user_id must be a string (a user's UUID)"))
        }
    };
    let text = match payload.remove("message") {
        Some(Value::String(text))
            if !text.trim().is_empty() && text.chars().count() <= MAX_MESSAGE_CHARS =>
        {
            text
        }
        Some(Value::String(_)) => {
            return Err(field_error(
                "payload/message",
                format!("message must be 1 to {MAX_MESSAGE_CHARS} characters, not blank"),
            ))
        }
        Some(_) => return Err(field_error("payload/message", "message must be a string")),
        None => return Err(field_error("payload/message", "message is required")),
    };
    if let Some(reserved) = RESERVED_FIELDS.iter().find(|f| payload.contains_key(**f)) {
        return Err(field_error(
            &format!("payload/{reserved}"),
            format!("`{reserved}` is set by the server"),
        ));
    }
    if state.store.get(user).await?.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            "No user has this id",
        )
        .at_pointer("/payload/user_id"));
    }
    let (message, _) = state.realtime.send_message(user, text, payload, None).await?;
    Ok(message)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PingSent {
    /// Sockets connected to this node when it was sent.
    pub sockets: usize,
}

/// The original's server-wide `ping` (`{"msg":"ping"}` on every notifications topic).
#[utoipa::path(
    post, path = "/api/ping", tag = "operators",
    responses(
        (status = 202, description = "Sent", body = PingSent),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "A body with an unsupported Content-Type", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn ping(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
) -> Result<(StatusCode, Json<PingSent>), ApiError> {
    require_admin(role)?;
    state.realtime.ping_everyone();
    Ok((StatusCode::ACCEPTED, Json(PingSent { sockets: state.realtime.hub().socket_count() })))
}
