//! Who may open a socket: a registered user, named by its UUID.

use std::sync::Arc;

use channels::{async_trait, Channel, ConnectInfo, Connection, Refusal, SocketHandler};

use super::directory::UserDirectory;
use super::mailbox::Mailbox;
use super::notifications::{is_notifications_topic, NotificationsChannel};
use super::presence::PresenceTracker;
use crate::accounts::UserId;

/// What a Tako socket knows about itself.
pub struct SocketUser {
    pub id: UserId,
}

pub struct TakoSockets {
    directory: Arc<UserDirectory>,
    notifications: Arc<NotificationsChannel>,
}

impl TakoSockets {
    pub fn new(
        directory: Arc<UserDirectory>,
        mailbox: Arc<Mailbox>,
        presence: Arc<PresenceTracker>,
        verified_stamps: bool,
    ) -> TakoSockets {
        TakoSockets {
            notifications: Arc::new(NotificationsChannel::new(
                mailbox,
                presence,
                directory.clone(),
                verified_stamps,
            )),
            directory,
        }
    }
}

pub fn socket_id(user: UserId) -> String {
    format!("user_socket:{user}")
}

/// The token, wherever the client put it: the Phoenix 1.8 auth subprotocol (kept out of URLs
/// and logs), `userToken` (what the web client sends) or `user_id` (the seed README's name).
fn token(info: &ConnectInfo) -> Option<&str> {
    info.auth_token
        .as_deref()
        .or_else(|| info.params.get("userToken").map(String::as_str))
        .or_else(|| info.params.get("user_id").map(String::as_str))
}

#[async_trait]
impl SocketHandler for TakoSockets {
    type Assigns = SocketUser;

    async fn connect(&self, info: &ConnectInfo) -> Result<Connection<SocketUser>, Refusal> {
        let id: UserId =
            token(info).and_then(|t| t.trim().parse().ok()).ok_or(Refusal::Forbidden)?;
        match self.directory.exists(id).await {
            Ok(true) => Ok(Connection {
                assigns: SocketUser { id },
                id: Some(socket_id(id)),
                user: Some(id.to_string()),
            }),
            Ok(false) => Err(Refusal::Forbidden),
            Err(()) => Err(Refusal::Unavailable),
        }
    }

    fn channel(&self, topic: &str) -> Option<Arc<dyn Channel<SocketUser>>> {
        is_notifications_topic(topic)
            .then(|| self.notifications.clone() as Arc<dyn Channel<SocketUser>>)
    }
}
