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

/// An operator's name for one message, so a retried `POST /api/messages` stores it once: 1 to
/// 255 printable ASCII characters (no spaces), as HTTP header values allow without escaping.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for IdempotencyKey {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(format!("must be 1 to {} characters", Self::MAX_LEN));
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("must be printable ASCII without spaces".to_owned());
        }
        Ok(IdempotencyKey(s.to_owned()))
    }
}

/// What storing a message came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Stored {
    /// Stored now.
    New(Message),
    /// A message with the same idempotency key was stored before: this one is not.
    Existing(Message),
}

#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores `message`, unless one with the same idempotency key exists (then nothing is
    /// stored and that one is returned). One statement: either it is stored or it is not.
    async fn insert_message(
        &self,
        message: &Message,
        key: Option<&IdempotencyKey>,
    ) -> Result<Stored, StoreError>;
    async fn message(&self, id: MessageId) -> Result<Option<Message>, StoreError>;
    /// Takes the waiting messages of `users` for a delivery attempt, at most `per_user` each,
    /// in one write: undelivered, unexpired, and not taken by another attempt since
    /// `stale_before` (an attempt older than that died with its node). Returns them oldest
    /// first (so each user's in order). Two concurrent calls (two nodes) never take the same message.
    async fn claim_waiting(
        &self,
        users: &[UserId],
        now: Timestamp,
        stale_before: Timestamp,
        per_user: u32,
    ) -> Result<Vec<Message>, StoreError>;
    /// Ends delivery attempts in one write: `delivered` are marked delivered at `now`,
    /// `released` wait again.
    async fn settle(
        &self,
        delivered: &[MessageId],
        released: &[MessageId],
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Releases every claim made before `before` (a single node starting: no attempt of an
    /// earlier process lives).
    async fn release_claims(&self, before: Timestamp) -> Result<u64, StoreError>;
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

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        assert!("order-42:retry".parse::<IdempotencyKey>().is_ok());
        assert!("x".repeat(255).parse::<IdempotencyKey>().is_ok());
        assert!("x".repeat(256).parse::<IdempotencyKey>().is_err());
        assert!("".parse::<IdempotencyKey>().is_err());
        assert!("has space".parse::<IdempotencyKey>().is_err());
        assert!("tab\t".parse::<IdempotencyKey>().is_err());
        assert!("caf\u{e9}".parse::<IdempotencyKey>().is_err());
    }
}
