//! A message body, as channels and the bus carry it: JSON, or raw bytes.

use bytes::Bytes;
use serde_json::Value;

/// A message body: JSON, or raw bytes (v2 binary frames only).
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Json(Value),
    Binary(Bytes),
}

impl From<Value> for Payload {
    fn from(value: Value) -> Self {
        Payload::Json(value)
    }
}

impl From<Bytes> for Payload {
    fn from(data: Bytes) -> Self {
        Payload::Binary(data)
    }
}
