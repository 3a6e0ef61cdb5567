//! Who is online on the notifications topics, without publishing anyone's login secret.
//!
//! A user's presence key is a public handle: the first 96 bits of SHA-256 over a fixed label
//! and the user's UUID. A UUID v4 has 122 random bits, so the handle cannot be turned back into
//! the UUID, and it is the same on every node and after every restart. Metas: `nickname` (as
//! stored when the channel joined, kept current by nickname changes through the HTTP API),
//! `online_at` (milliseconds since the Unix epoch) and the engine's `phx_ref`.
//!
//! Tracking and frames are separate: everyone who joins is tracked (unless `TAKO_PRESENCE=off`),
//! and a socket gets presence frames only if its join payload asks (`"presence": "full"`,
//! `"count"` or `"none"`); one that asks nothing gets what `TAKO_PRESENCE` says (`on`: none,
//! `phoenix`: full).

use std::fmt::Write;
use std::sync::Arc;

use channels::{ChannelContext, Payload, PresenceFeed};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::directory::UserDirectory;
use super::sockets::SocketUser;
use crate::accounts::UserId;
use crate::config::PresenceMode;
use crate::storage::Store;

const LABEL: &[u8] = b"tako presence handle v1\0";

/// The public handle of `user`: 24 hex digits.
pub fn handle(user: UserId) -> String {
    let digest =
        Sha256::new().chain_update(LABEL).chain_update(user.as_uuid().as_bytes()).finalize();
    let mut hex = String::with_capacity(24);
    for byte in &digest[..12] {
        // Writing to a String cannot fail.
        let _ = write!(hex, "{byte:02x}");
    }
    hex
}

/// What a join asked of presence: `Some(None)` is an explicit `"none"`.
type Asked = Option<Option<PresenceFeed>>;

/// The join payload's `presence` parameter: absent, `"full"`, `"count"` or `"none"`.
pub fn asked_feed(payload: &Payload) -> Result<Asked, String> {
    let Payload::Json(serde_json::Value::Object(params)) = payload else { return Ok(None) };
    match params.get("presence") {
        None => Ok(None),
        Some(Value::String(s)) if s == "full" => Ok(Some(Some(PresenceFeed::Full))),
        Some(Value::String(s)) if s == "count" => Ok(Some(Some(PresenceFeed::Count))),
        Some(Value::String(s)) if s == "none" => Ok(Some(None)),
        Some(_) => Err(r#"presence must be "full", "count" or "none""#.to_owned()),
    }
}

/// What it asked, else the mode's default; with presence off, none (nothing is tracked).
fn feed_for(mode: PresenceMode, asked: Asked) -> Option<PresenceFeed> {
    match (mode, asked) {
        (PresenceMode::Off, _) => None,
        (_, Some(feed)) => feed,
        (PresenceMode::Phoenix, None) => Some(PresenceFeed::Full),
        (PresenceMode::On, None) => None,
    }
}

/// Tracks joiners of notifications topics and starts the presence frames they asked for.
pub struct PresenceTracker {
    store: Arc<dyn Store>,
    directory: Arc<UserDirectory>,
    mode: PresenceMode,
}

impl PresenceTracker {
    pub fn new(
        store: Arc<dyn Store>,
        directory: Arc<UserDirectory>,
        mode: PresenceMode,
    ) -> PresenceTracker {
        PresenceTracker { store, directory, mode }
    }

    /// The presence frames a joiner gets once joined.
    pub fn feed(&self, asked: Asked) -> Option<PresenceFeed> {
        feed_for(self.mode, asked)
    }

    /// Called from the channel's join: lists, counts and the sockets watching the topic see
    /// the joiner. A database that cannot answer leaves the nickname null rather than refusing
    /// the join.
    pub async fn track(&self, ctx: &ChannelContext<SocketUser>) {
        if self.mode == PresenceMode::Off {
            return;
        }
        let user = ctx.assigns().id;
        // The connect remembered the nickname (renames keep it current): no query per join.
        let nickname = match self.directory.nickname(user) {
            Some(nickname) => nickname,
            None => match self.store.get(user).await {
                Ok(found) => found.and_then(|u| u.nickname),
                Err(error) => {
                    tracing::warn!(%error, "nickname lookup for presence failed");
                    None
                }
            },
        };
        let nickname = nickname.map(|n| n.as_str().to_owned());
        let online_at = chrono::Utc::now().timestamp_millis();
        let meta = json!({ "nickname": nickname, "online_at": online_at });
        if let Err(error) = ctx.track(&handle(user), meta) {
            tracing::debug!(%error, "presence not tracked");
        }
    }
}

/// The `nickname` meta patch for a user whose nickname changed.
pub fn nickname_patch(nickname: Option<&str>) -> Map<String, Value> {
    let mut patch = Map::new();
    patch.insert("nickname".into(), nickname.map_or(Value::Null, |n| Value::String(n.to_owned())));
    patch
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_join_parameter_and_the_mode_decide_the_feed() {
        let asked = |v: Value| asked_feed(&Payload::Json(v));
        assert_eq!(asked(json!({})), Ok(None));
        assert_eq!(asked(json!(null)), Ok(None));
        assert_eq!(asked(json!({"presence": "full"})), Ok(Some(Some(PresenceFeed::Full))));
        assert_eq!(asked(json!({"presence": "count"})), Ok(Some(Some(PresenceFeed::Count))));
        assert_eq!(asked(json!({"presence": "none"})), Ok(Some(None)));
        for bad in
            [json!({"presence": "all"}), json!({"presence": true}), json!({"presence": null})]
        {
            assert!(asked(bad).is_err());
        }
        use PresenceMode::*;
        let full = Some(PresenceFeed::Full);
        assert_eq!(feed_for(On, None), None, "nothing asked, nothing sent");
        assert_eq!(feed_for(Phoenix, None), full, "Phoenix's default");
        assert_eq!(feed_for(On, Some(full)), full);
        assert_eq!(feed_for(Phoenix, Some(None)), None, "an explicit none wins");
        assert_eq!(feed_for(On, Some(Some(PresenceFeed::Count))), Some(PresenceFeed::Count));
        assert_eq!(feed_for(Off, Some(full)), None, "off: nothing tracked, nothing sent");
    }

    #[test]
    fn handles_are_stable_distinct_and_reveal_nothing() {
        let a: UserId = "6f1c2f9e-8d1b-4e55-9a1e-2b7d3c4e5f60".parse().unwrap();
        let b: UserId = "6f1c2f9e-8d1b-4e55-9a1e-2b7d3c4e5f61".parse().unwrap();
        // Pinned: the same handle on every node and after restarts.
        assert_eq!(handle(a), handle(a));
        assert_eq!(handle(a).len(), 24);
        assert_ne!(handle(a), handle(b));
        let uuid_hex = a.as_uuid().simple().to_string();
        assert!(!uuid_hex.contains(&handle(a)[..8]) && !handle(a).contains(&uuid_hex[..8]));
        let expected: String = Sha256::digest([LABEL, a.as_uuid().as_bytes().as_slice()].concat())
            [..12]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(handle(a), expected);
    }
}
