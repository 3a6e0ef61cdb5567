//! Who is online on the notifications topics, without publishing anyone's login secret.
//!
//! A user's presence key is a public handle: the first 96 bits of SHA-256 over a fixed label
//! and the user's UUID. A UUID v4 has 122 random bits, so the handle cannot be turned back into
//! the UUID, and it is the same on every node and after every restart. Metas: `nickname` (as
//! stored when the channel joined, kept current by nickname changes through the HTTP API),
//! `online_at` (milliseconds since the Unix epoch) and the engine's `phx_ref`.

use std::sync::Arc;

use channels::ChannelContext;
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::directory::UserDirectory;
use super::sockets::SocketUser;
use crate::accounts::UserId;
use crate::storage::Store;

const LABEL: &[u8] = b"tako presence handle v1\0";

/// The public handle of `user`: 24 hex digits.
pub fn handle(user: UserId) -> String {
    let digest =
        Sha256::new().chain_update(LABEL).chain_update(user.as_uuid().as_bytes()).finalize();
    digest[..12].iter().map(|b| format!("{b:02x}")).collect()
}

/// Tracks joiners of notifications topics.
pub struct PresenceTracker {
    store: Arc<dyn Store>,
    directory: Arc<UserDirectory>,
    /// `TAKO_PRESENCE=off`: nobody is tracked, no presence frames are sent.
    enabled: bool,
}

impl PresenceTracker {
    pub fn new(
        store: Arc<dyn Store>,
        directory: Arc<UserDirectory>,
        enabled: bool,
    ) -> PresenceTracker {
        PresenceTracker { store, directory, enabled }
    }

    /// Called from the channel's join: the joiner then gets `presence_state` after its reply
    /// and everyone on the topic a `presence_diff`. A database that cannot answer leaves the
    /// nickname null rather than refusing the join.
    pub async fn track(&self, ctx: &ChannelContext<SocketUser>) {
        if !self.enabled {
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
