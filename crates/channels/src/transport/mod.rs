//! Transports carry frames between a client and its [`Session`](crate::session::Session).
pub(crate) mod longpoll;
pub(crate) mod websocket;
