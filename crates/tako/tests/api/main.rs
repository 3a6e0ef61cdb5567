//! Black-box tests of the HTTP API: the real application, real HTTP, real databases.

mod auth;
mod broadcast_msg;
mod event_dashboard;
mod helpers;
mod jsonapi;
mod leaderboard;
mod nicknames;
mod openapi;
mod operators;
mod ops;
mod presence;
mod rally;
mod storage;
mod users;
