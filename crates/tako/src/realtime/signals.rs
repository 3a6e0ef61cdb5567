//! What one node tells every node (itself included) through the hub's bus: messages wait for
//! a user, a user was renamed, a user was deleted. On a single node the bus is in-process and
//! these are plain calls; in a cluster they reach every node over Redis.

use std::sync::Arc;

use channels::{Hub, Presence};
use serde_json::{json, Value};

use super::directory::UserDirectory;
use super::mailbox::Mailbox;
use super::presence;
use crate::accounts::{Nickname, UserId};

const MAILBOX: &str = "tako.mailbox";
const RENAMED: &str = "tako.renamed";
const DELETED: &str = "tako.deleted";

/// Messages wait for `user`: the nodes that hold it deliver them.
pub fn messages_waiting(hub: &Hub, user: UserId) {
    hub.signal(MAILBOX, json!({ "user": user.to_string() }));
}

/// `user` is now called `nickname`: every node's directory and live presences follow.
pub fn renamed(hub: &Hub, user: UserId, nickname: Option<&Nickname>) {
    hub.signal(
        RENAMED,
        json!({ "user": user.to_string(), "nickname": nickname.map(Nickname::as_str) }),
    );
}

/// `user` was deleted: no node may let it connect from memory.
pub fn deleted(hub: &Hub, user: UserId) {
    hub.signal(DELETED, json!({ "user": user.to_string() }));
}

/// Installs this node's handler of the signals above.
pub fn listen(hub: &Hub, presence: Presence, mailbox: Arc<Mailbox>, directory: Arc<UserDirectory>) {
    hub.on_signal(Arc::new(move |hub: &Hub, name: &str, data: &Value| {
        let Some(user) =
            data.get("user").and_then(Value::as_str).and_then(|u| u.parse::<UserId>().ok())
        else {
            tracing::warn!(name, "signal without a valid user ignored");
            return;
        };
        match name {
            MAILBOX => mailbox.user_has_mail(hub, user),
            RENAMED => {
                let nickname = data
                    .get("nickname")
                    .and_then(Value::as_str)
                    .map(|n| Nickname::from_stored(n.to_owned()));
                directory.renamed(user, nickname.clone());
                let patch = presence::nickname_patch(nickname.as_ref().map(Nickname::as_str));
                presence.update_user(&user.to_string(), &patch);
            }
            DELETED => directory.forget(user),
            other => tracing::debug!(name = other, "unknown signal ignored"),
        }
    }));
}
