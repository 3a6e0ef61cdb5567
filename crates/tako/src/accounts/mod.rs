//! Accounts: who the users are, independent of HTTP and of the database behind them.

mod nickname;
mod postgres;
mod sqlite;
mod store;
mod user;

pub use nickname::{Nickname, NicknameError};
pub use crate::storage::StoreError;
pub use store::UserStore;
pub use user::{LeaderboardEntry, StampCount, Timestamp, User, UserChanges, UserId};
