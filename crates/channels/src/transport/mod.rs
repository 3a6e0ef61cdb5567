//! Transports carry frames between a client and its [`Session`](crate::session::Session).
pub(crate) mod frames;
pub(crate) mod longpoll;
pub(crate) mod websocket;

/// The client's address, when the server was started with connect info.
pub(crate) fn peer(parts: &axum::http::request::Parts) -> Option<std::net::SocketAddr> {
    parts.extensions.get::<axum::extract::ConnectInfo<std::net::SocketAddr>>().map(|info| info.0)
}
