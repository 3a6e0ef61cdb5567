//! Accounts: who the users are, independent of HTTP and of the database behind them.

mod nickname;
mod postgres;
mod sqlite;
mod store;
mod user;

pub use crate::storage::StoreError;
pub use nickname::{Nickname, NicknameError, NicknamePolicy};
pub use store::UserStore;
pub use user::{LeaderboardEntry, StampCount, Timestamp, User, UserChanges, UserId};

/// `text` for a `LIKE … ESCAPE '\'` pattern: its `%`, `_` and `\` match themselves.
pub(crate) fn escape_like(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
