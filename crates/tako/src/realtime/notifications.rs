//! The `notifications` channel of HoloQuest (and `notifications:<anything>`, which older clients
//! join as `notifications:scans`); each topic is its own audience.

use channels::{async_trait, Channel, ChannelContext, HandleIn, Payload};
use serde_json::{json, Value};

use std::sync::Arc;

use super::directory::UserDirectory;
use super::mailbox::Mailbox;
use super::presence::PresenceTracker;
use super::sockets::SocketUser;

pub const NOTIFICATIONS: &str = "notifications";

pub fn is_notifications_topic(topic: &str) -> bool {
    topic == NOTIFICATIONS
        || topic.strip_prefix(NOTIFICATIONS).is_some_and(|rest| rest.starts_with(':'))
}

pub struct NotificationsChannel {
    mailbox: Arc<Mailbox>,
    presence: Arc<PresenceTracker>,
    /// Who the sender is called: the nickname the server knows, not what a push claims.
    directory: Arc<UserDirectory>,
    /// `TAKO_STAMPS=verified`: only the server announces stamps, so clients' `collected`,
    /// `rally-completed` and `shout` reach nobody.
    verified: bool,
}

/// The error reply to client announcements in verified mode.
pub const STAMPS_ARE_VERIFIED: &str = "stamps are verified by the server";

impl NotificationsChannel {
    pub fn new(
        mailbox: Arc<Mailbox>,
        presence: Arc<PresenceTracker>,
        directory: Arc<UserDirectory>,
        verified: bool,
    ) -> NotificationsChannel {
        NotificationsChannel { mailbox, presence, directory, verified }
    }

    /// Broadcasts `event` `{"nickname": …}` with the sender's stored nickname, whatever the
    /// payload claims (the web client sends its own nickname, so it sees no difference); a
    /// sender without a nickname gets an error reply and nobody hears anything.
    async fn announce(
        &self,
        event: &str,
        payload: &Payload,
        ctx: &ChannelContext<SocketUser>,
    ) -> HandleIn {
        // The payload keeps the shape the original required, though its value is not used.
        if let Err(reply) = claimed_nickname(payload) {
            return reply;
        }
        match self.directory.stored_nickname(ctx.assigns().id).await {
            Ok(Some(nick)) => {
                ctx.broadcast(event, Payload::Json(json!({ "nickname": nick.as_str() })));
                ok()
            }
            Ok(None) => error("set a nickname first"),
            Err(e) => {
                tracing::warn!(error = %e, "nickname lookup for a broadcast failed");
                error("unavailable, try again")
            }
        }
    }
}

fn error(reason: &str) -> HandleIn {
    HandleIn::Reply(Err(Payload::Json(json!({ "reason": reason }))))
}

fn ok() -> HandleIn {
    HandleIn::Reply(Ok(Payload::Json(json!({}))))
}

/// `{"nickname": "<string>"}` or the reason it is not.
fn claimed_nickname(payload: &Payload) -> Result<&str, HandleIn> {
    match payload {
        Payload::Json(Value::Object(map)) => match map.get("nickname") {
            Some(Value::String(nick)) => Ok(nick),
            Some(_) => Err(error("nickname must be a string")),
            None => Err(error("nickname is required")),
        },
        _ => Err(error("payload must be an object with a nickname")),
    }
}

#[async_trait]
impl Channel<SocketUser> for NotificationsChannel {
    async fn join(
        &self,
        _topic: &str,
        _payload: Payload,
        ctx: &ChannelContext<SocketUser>,
    ) -> Result<Value, Value> {
        // Everyone on the topic sees who joined; the joiner gets the list after its reply.
        self.presence.track(ctx).await;
        // Messages that waited for this user go out once the join is done (the mailbox collects
        // joins for a few milliseconds first, longer than the engine needs to subscribe).
        self.mailbox.deliver_waiting(ctx);
        Ok(json!({}))
    }

    async fn handle_in(
        &self,
        event: &str,
        payload: Payload,
        ctx: &ChannelContext<SocketUser>,
    ) -> HandleIn {
        if self.verified && matches!(event, "collected" | "rally-completed" | "shout") {
            return error(STAMPS_ARE_VERIFIED);
        }
        match event {
            // A stamp was scanned: everyone on the topic (the sender too) hears who.
            "collected" => self.announce("collected-broadcast", &payload, ctx).await,
            "rally-completed" => self.announce("rally-completed", &payload, ctx).await,
            "ping" => HandleIn::Reply(Ok(payload)),
            // The client's answer to the server-wide ping.
            "pong" => HandleIn::NoReply,
            "shout" => match payload {
                Payload::Json(Value::Object(_)) => {
                    ctx.broadcast("shout", payload);
                    ok()
                }
                _ => error("shout payload must be an object"),
            },
            _ => error("unknown event"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_topics() {
        assert!(is_notifications_topic("notifications"));
        assert!(is_notifications_topic("notifications:scans"));
        assert!(is_notifications_topic("notifications:"));
        assert!(!is_notifications_topic("notificationsx"));
        assert!(!is_notifications_topic("room:lobby"));
        assert!(!is_notifications_topic(""));
    }
}
