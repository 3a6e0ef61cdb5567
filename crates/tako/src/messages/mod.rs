//! Messages operators send to one user: stored first, so a user who is offline (or between
//! cell towers) gets them, in order, when they next join.

mod postgres;
mod sqlite;

use std::fmt;
use std::str::FromStr;

use async_trait::async_trait;
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::accounts::{Timestamp, UserId};
use crate::storage::StoreError;

/// Fields of a message payload that the server sets; a sender may not supply them.
pub const RESERVED_FIELDS: [&str; 4] = ["id", "user_id", "message", "inserted_at"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageId(Uuid);

impl MessageId {
    pub fn generate() -> MessageId {
        MessageId(Uuid::new_v4())
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl From<Uuid> for MessageId {
    fn from(uuid: Uuid) -> Self {
        MessageId(uuid)
    }
}

impl FromStr for MessageId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(MessageId)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: MessageId,
    pub user_id: UserId,
    pub text: String,
    /// Extra payload fields the operator sent along (never a reserved field).
    pub extra: Map<String, Value>,
    pub inserted_at: Timestamp,
    pub expires_at: Timestamp,
    pub delivered_at: Option<Timestamp>,
}

impl Message {
    /// The `msg` payload as the original sent it (`user_id`, `message`), plus the extra fields,
    /// `id` and `inserted_at`.
    pub fn payload(&self) -> Value {
        let mut payload = self.extra.clone();
        payload.insert("user_id".into(), Value::String(self.user_id.to_string()));
        payload.insert("message".into(), Value::String(self.text.clone()));
        payload.insert("id".into(), Value::String(self.id.to_string()));
        payload.insert("inserted_at".into(), Value::String(self.inserted_at.to_iso8601()));
        Value::Object(payload)
    }

    /// What is stored as the body: the text and the extra fields.
    fn body(&self) -> Value {
        let mut body = self.extra.clone();
        body.insert("message".into(), Value::String(self.text.clone()));
        Value::Object(body)
    }

    fn from_body(
        id: MessageId,
        user_id: UserId,
        body: Value,
        inserted_at: Timestamp,
        expires_at: Timestamp,
        delivered_at: Option<Timestamp>,
    ) -> Message {
        let mut extra = match body {
            Value::Object(map) => map,
            _ => Map::new(),
        };
        let text = match extra.remove("message") {
            Some(Value::String(text)) => text,
            _ => String::new(),
        };
        Message { id, user_id, text, extra, inserted_at, expires_at, delivered_at }
    }
}

/// Decodes `rows` in order and hands each message to `push` until it refuses one; returns the
/// ids it took (what a backend's `deliver_waiting` then marks delivered).
fn push_in_order<R>(
    rows: &[R],
    decode: impl Fn(&R) -> Result<Message, sqlx::Error>,
    push: &(dyn for<'m> Fn(&'m Message) -> bool + Send + Sync),
) -> Result<Vec<MessageId>, sqlx::Error> {
    let mut pushed = Vec::new();
    for row in rows {
        let message = decode(row)?;
        if !push(&message) {
            break;
        }
        pushed.push(message.id);
    }
    Ok(pushed)
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    async fn insert_message(&self, message: &Message) -> Result<(), StoreError>;
    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError>;
    /// Hands `user`'s undelivered, unexpired messages (at most `limit`), oldest first, to
    /// `push` until it returns false, and marks the pushed ones delivered at `now` — all in one
    /// transaction that holds those rows, so concurrent deliveries for the same user (on other
    /// nodes) wait and never push a message twice or out of order. Returns the pushed ids.
    async fn deliver_waiting(
        &self,
        user: UserId,
        now: Timestamp,
        limit: u32,
        push: &(dyn for<'m> Fn(&'m Message) -> bool + Send + Sync),
    ) -> Result<Vec<MessageId>, StoreError>;
    /// Users with at least one undelivered, unexpired message.
    async fn users_with_waiting_messages(&self, now: Timestamp) -> Result<Vec<UserId>, StoreError>;
    /// Deletes every message past its expiry; returns how many.
    async fn purge_expired(&self, now: Timestamp) -> Result<u64, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn payload_keeps_the_originals_fields_and_adds_id_and_time() {
        let mut extra = Map::new();
        extra.insert("booth".into(), json!("A-12"));
        let message = Message {
            id: "0b3f6a36-3c51-4b0e-9a55-3e1c3b0f8a10".parse().unwrap(),
            user_id: "681adb8b-be3d-4fca-8858-2827609d9b22".parse().unwrap(),
            text: "Testiiing".into(),
            extra,
            inserted_at: Timestamp::from_micros(1_700_000_000_000_001),
            expires_at: Timestamp::from_micros(1_700_000_000_000_002),
            delivered_at: None,
        };
        assert_eq!(
            message.payload(),
            json!({
                "user_id": "681adb8b-be3d-4fca-8858-2827609d9b22",
                "message": "Testiiing",
                "booth": "A-12",
                "id": "0b3f6a36-3c51-4b0e-9a55-3e1c3b0f8a10",
                "inserted_at": "2023-11-14T22:13:20.000001Z",
            })
        );
        let back = Message::from_body(
            message.id,
            message.user_id,
            message.body(),
            message.inserted_at,
            message.expires_at,
            None,
        );
        assert_eq!(back, message);
    }
}
