//! An event of the rally (a convention weekend) and the types that carry its invariants.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::accounts::Timestamp;

/// An event's id, chosen by the operator: `[a-z0-9-]{1,40}`, e.g. `dokomi-2025`. It appears
/// in links the web app shares (`?eventId=dokomi-2025`), so it is kept URL-safe.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EventId(String);

pub const MAX_EVENT_ID: usize = 40;

impl EventId {
    pub fn parse(text: &str) -> Result<EventId, RallyError> {
        let ok = !text.is_empty()
            && text.len() <= MAX_EVENT_ID
            && text.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if ok {
            Ok(EventId(text.to_owned()))
        } else {
            Err(RallyError::invalid(
                "id",
                "An event id is 1 to 40 characters of a-z, 0-9 and `-` (e.g. `dokomi-2025`)",
            ))
        }
    }

    /// As stored: written through `parse`, so trusted.
    pub(crate) fn from_stored(text: String) -> EventId {
        EventId(text)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for EventId {
    type Err = RallyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EventId::parse(s)
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A domain rule broken by a value: which attribute, and why (the API turns it into a 400
/// pointing at that attribute).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{attribute}: {detail}")]
pub struct RallyError {
    pub attribute: &'static str,
    pub detail: String,
}

impl RallyError {
    pub fn invalid(attribute: &'static str, detail: impl Into<String>) -> RallyError {
        RallyError { attribute, detail: detail.into() }
    }
}

pub const MAX_NAME_CHARS: usize = 200;
pub const MAX_DESCRIPTION_CHARS: usize = 10_000;
pub const MAX_TOPIC_CHARS: usize = 100;
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
pub const MAX_STAMPS_REQUIRED: u32 = 10_000;

/// A required name: 1 to 200 characters, not only whitespace, no control characters.
pub(crate) fn name(attribute: &'static str, text: &str) -> Result<String, RallyError> {
    if text.trim().is_empty() || text.chars().count() > MAX_NAME_CHARS {
        return Err(RallyError::invalid(attribute, "must be 1 to 200 characters"));
    }
    if text.chars().any(char::is_control) {
        return Err(RallyError::invalid(attribute, "must not contain control characters"));
    }
    Ok(text.to_owned())
}

/// Optional free text of at most `max` characters (no NUL: PostgreSQL refuses it in text).
pub(crate) fn text(
    attribute: &'static str,
    value: Option<String>,
    max: usize,
) -> Result<Option<String>, RallyError> {
    match value {
        None => Ok(None),
        Some(text) if text.contains('\0') => {
            Err(RallyError::invalid(attribute, "must not contain NUL characters"))
        }
        Some(text) if text.chars().count() > max => {
            Err(RallyError::invalid(attribute, format!("must be at most {max} characters")))
        }
        Some(text) => Ok(Some(text)),
    }
}

/// The Phoenix topic an event's announcements go to: one the web client can join
/// (`notifications` or `notifications:<anything>`).
pub(crate) fn topic(text: &str) -> Result<String, RallyError> {
    let ok = (text == "notifications" || text.starts_with("notifications:"))
        && text.chars().count() <= MAX_TOPIC_CHARS
        && !text.chars().any(char::is_control);
    if ok {
        Ok(text.to_owned())
    } else {
        Err(RallyError::invalid(
            "topic",
            "must be `notifications` or `notifications:<name>` (at most 100 characters)",
        ))
    }
}

pub(crate) fn stamps_required(value: u32) -> Result<u32, RallyError> {
    if (1..=MAX_STAMPS_REQUIRED).contains(&value) {
        Ok(value)
    } else {
        Err(RallyError::invalid("stamps_required", "must be an integer from 1 to 10000"))
    }
}

pub(crate) fn metadata(value: Map<String, Value>) -> Result<Map<String, Value>, RallyError> {
    let size = serde_json::to_vec(&value).map(|v| v.len()).unwrap_or(usize::MAX);
    if size > MAX_METADATA_BYTES {
        return Err(RallyError::invalid("metadata", "must be at most 16 KiB of JSON"));
    }
    Ok(value)
}

fn window(opens_at: Option<Timestamp>, closes_at: Option<Timestamp>) -> Result<(), RallyError> {
    match (opens_at, closes_at) {
        (Some(open), Some(close)) if close <= open => {
            Err(RallyError::invalid("closes_at", "must be after opens_at"))
        }
        _ => Ok(()),
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    pub id: EventId,
    pub name: String,
    pub stamps_required: u32,
    pub topic: String,
    pub opens_at: Option<Timestamp>,
    pub closes_at: Option<Timestamp>,
    pub description: Option<String>,
    pub metadata: Map<String, Value>,
    pub visible: bool,
    pub inserted_at: Timestamp,
    pub updated_at: Timestamp,
}

/// Whether scans count at `now`: from `opens_at` (included) to `closes_at` (excluded).
impl Event {
    pub fn is_open_at(&self, now: Timestamp) -> bool {
        self.opens_at.is_none_or(|open| now >= open)
            && self.closes_at.is_none_or(|close| now < close)
    }
}

/// What an operator gives to create an event, before it is checked.
#[derive(Clone, Debug, Default)]
pub struct EventDraft {
    pub id: String,
    pub name: String,
    pub stamps_required: u32,
    pub topic: Option<String>,
    pub opens_at: Option<Timestamp>,
    pub closes_at: Option<Timestamp>,
    pub description: Option<String>,
    pub metadata: Option<Map<String, Value>>,
    pub visible: Option<bool>,
}

impl Event {
    /// Checks every rule; the first broken one is the error.
    pub fn create(draft: EventDraft, now: Timestamp) -> Result<Event, RallyError> {
        window(draft.opens_at, draft.closes_at)?;
        Ok(Event {
            id: EventId::parse(&draft.id)?,
            name: name("name", &draft.name)?,
            stamps_required: stamps_required(draft.stamps_required)?,
            topic: topic(draft.topic.as_deref().unwrap_or("notifications"))?,
            opens_at: draft.opens_at,
            closes_at: draft.closes_at,
            description: text("description", draft.description, MAX_DESCRIPTION_CHARS)?,
            metadata: metadata(draft.metadata.unwrap_or_default())?,
            visible: draft.visible.unwrap_or(true),
            inserted_at: now,
            updated_at: now,
        })
    }

    /// This event with `changes` applied, checked as a whole (e.g. a new `closes_at` against
    /// the stored `opens_at`).
    pub fn apply(&self, changes: EventChanges, now: Timestamp) -> Result<Event, RallyError> {
        let mut event = self.clone();
        if let Some(value) = changes.name {
            event.name = name("name", &value)?;
        }
        if let Some(value) = changes.stamps_required {
            event.stamps_required = stamps_required(value)?;
        }
        if let Some(value) = changes.topic {
            event.topic = topic(&value)?;
        }
        if let Some(value) = changes.opens_at {
            event.opens_at = value;
        }
        if let Some(value) = changes.closes_at {
            event.closes_at = value;
        }
        if let Some(value) = changes.description {
            event.description = text("description", value, MAX_DESCRIPTION_CHARS)?;
        }
        if let Some(value) = changes.metadata {
            event.metadata = metadata(value)?;
        }
        if let Some(value) = changes.visible {
            event.visible = value;
        }
        window(event.opens_at, event.closes_at)?;
        event.updated_at = now.max(Timestamp::from_micros(self.updated_at.as_micros() + 1));
        Ok(event)
    }
}

/// An update: `None` keeps the stored value; `Some(None)` clears an optional one.
#[derive(Clone, Debug, Default)]
pub struct EventChanges {
    pub name: Option<String>,
    pub stamps_required: Option<u32>,
    pub topic: Option<String>,
    pub opens_at: Option<Option<Timestamp>>,
    pub closes_at: Option<Option<Timestamp>>,
    pub description: Option<Option<String>>,
    pub metadata: Option<Map<String, Value>>,
    pub visible: Option<bool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids() {
        for ok in ["dokomi-2025", "a", "0", &"x".repeat(40), "-"] {
            assert!(EventId::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Dokomi", "dokomi_2025", "dokomi 2025", &"x".repeat(41), "é", "a/b"] {
            assert!(EventId::parse(bad).is_err(), "{bad}");
        }
    }

    fn draft() -> EventDraft {
        EventDraft {
            id: "dokomi-2025".into(),
            name: " DoKomi ".into(),
            stamps_required: 8,
            ..EventDraft::default()
        }
    }

    #[test]
    fn events_check_their_rules() {
        let now = Timestamp::from_micros(1_000);
        let event = Event::create(draft(), now).unwrap();
        assert_eq!(event.name, " DoKomi ");
        assert_eq!(event.topic, "notifications");
        assert!(event.visible);
        let err = |d: EventDraft| Event::create(d, now).unwrap_err().attribute;
        assert_eq!(err(EventDraft { stamps_required: 0, ..draft() }), "stamps_required");
        assert_eq!(err(EventDraft { name: "  ".into(), ..draft() }), "name");
        assert_eq!(err(EventDraft { topic: Some("room:lobby".into()), ..draft() }), "topic");
        let closes_first = EventDraft {
            opens_at: Some(Timestamp::from_micros(10)),
            closes_at: Some(Timestamp::from_micros(5)),
            ..draft()
        };
        assert_eq!(err(closes_first), "closes_at");
        let mut big = Map::new();
        big.insert("x".into(), Value::String("y".repeat(MAX_METADATA_BYTES)));
        assert_eq!(err(EventDraft { metadata: Some(big), ..draft() }), "metadata");
    }

    #[test]
    fn changes_are_checked_against_what_is_stored() {
        let now = Timestamp::from_micros(1_000);
        let event = Event::create(
            EventDraft { opens_at: Some(Timestamp::from_micros(100)), ..draft() },
            now,
        )
        .unwrap();
        let changes = EventChanges {
            closes_at: Some(Some(Timestamp::from_micros(50))),
            ..Default::default()
        };
        assert_eq!(event.apply(changes, now).unwrap_err().attribute, "closes_at");
        let changes = EventChanges { stamps_required: Some(3), ..Default::default() };
        let changed = event.apply(changes, now).unwrap();
        assert_eq!(changed.stamps_required, 3);
        assert!(changed.updated_at > event.updated_at);
    }

    #[test]
    fn window_bounds() {
        let mut event = Event::create(draft(), Timestamp::from_micros(0)).unwrap();
        event.opens_at = Some(Timestamp::from_micros(10));
        event.closes_at = Some(Timestamp::from_micros(20));
        assert!(!event.is_open_at(Timestamp::from_micros(9)));
        assert!(event.is_open_at(Timestamp::from_micros(10)));
        assert!(event.is_open_at(Timestamp::from_micros(19)));
        assert!(!event.is_open_at(Timestamp::from_micros(20)));
    }
}
