//! The `notifications` channel of HoloQuest (and `notifications:<anything>`, which older clients
//! join as `notifications:scans`); each topic is its own audience.

use channels::{async_trait, Channel, ChannelContext, HandleIn, Payload};
use serde_json::{json, Value};

use std::sync::Arc;

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
        verified: bool,
    ) -> NotificationsChannel {
        NotificationsChannel { mailbox, presence, verified }
    }
}

fn error(reason: &str) -> HandleIn {
    HandleIn::Reply(Err(Payload::Json(json!({ "reason": reason }))))
}

fn ok() -> HandleIn {
    HandleIn::Reply(Ok(Payload::Json(json!({}))))
}

/// `{"nickname": "<string>"}` or the reason it is not.
fn nickname(payload: &Payload) -> Result<&str, HandleIn> {
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
            "collected" => match nickname(&payload) {
                Ok(nick) => {
                    ctx.broadcast(
                        "collected-broadcast",
                        Payload::Json(json!({ "nickname": nick })),
                    );
                    ok()
                }
                Err(reply) => reply,
            },
            "rally-completed" => match nickname(&payload) {
                Ok(nick) => {
                    ctx.broadcast("rally-completed", Payload::Json(json!({ "nickname": nick })));
                    ok()
                }
                Err(reply) => reply,
            },
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
