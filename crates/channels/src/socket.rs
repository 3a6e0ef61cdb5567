//! What an application implements once per socket endpoint: authenticate a connection and route
//! topics to channels.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::http::{HeaderMap, StatusCode};

use crate::channel::Channel;

/// What the transport learned at connect time. Params and token are secrets: never log them.
#[derive(Debug, Clone, Default)]
pub struct ConnectInfo {
    /// Query parameters (including `vsn`).
    pub params: HashMap<String, String>,
    /// From the `base64url.bearer.phx.<token>` WebSocket subprotocol (Phoenix 1.8 clients).
    pub auth_token: Option<String>,
    pub headers: HeaderMap,
    pub peer: Option<SocketAddr>,
}

/// An accepted connection.
#[derive(Debug, Clone)]
pub struct Connection<A> {
    pub assigns: A,
    /// Socket id, e.g. `"user_socket:42"`; [`Hub::disconnect`](crate::Hub::disconnect) closes
    /// every socket that has it.
    pub id: Option<String>,
    /// Key of the hub's user index ([`Hub::send_to_user`](crate::Hub::send_to_user)).
    pub user: Option<String>,
}

impl<A> Connection<A> {
    pub fn new(assigns: A) -> Self {
        Connection { assigns, id: None, user: None }
    }
}

/// Why a connection is refused; the upgrade is answered with an HTTP status and no socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// 403
    Forbidden,
    /// 503
    Unavailable,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::Forbidden => StatusCode::FORBIDDEN,
            Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

#[async_trait]
pub trait SocketHandler: Send + Sync + 'static {
    type Assigns: Send + Sync + 'static;

    async fn connect(&self, info: &ConnectInfo) -> Result<Connection<Self::Assigns>, Refusal>;

    /// The channel that runs `topic`, or `None` for "unmatched topic".
    fn channel(&self, topic: &str) -> Option<Arc<dyn Channel<Self::Assigns>>>;
}
