//! Logs: `TAKO_LOG` filters (default `info`), `TAKO_LOG_FORMAT=json` for machines. Text logs
//! are coloured only when stderr is a terminal and `NO_COLOR` is unset (a file or journald
//! gets plain text).
//!
//! What never reaches a log line: tokens (the `Authorization` header, the socket's auth
//! subprotocol), query strings (the socket's `userToken` is a user's UUID, its login secret) and
//! UUIDs in paths, which are replaced by a short hash ([`user_tag`]) that still lets an operator
//! follow one user through the logs.

use tracing_subscriber::{fmt, EnvFilter};

pub fn init() {
    let filter = EnvFilter::try_from_env("TAKO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TAKO_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder =
        fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(!json && colour());
    // A second init (tests start several apps in one process) is not an error worth failing for.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}

/// Colour for a person at a terminal, not for files, pipes or `NO_COLOR` (https://no-color.org:
/// set and not empty).
fn colour() -> bool {
    use std::io::IsTerminal;
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    !no_color && std::io::stderr().is_terminal()
}

/// The span of one HTTP request: method, path with ids hashed, request id. Its answer is
/// logged at info by the trace layer (status, latency).
pub fn http_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    let request_id =
        request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or("-");
    tracing::info_span!(
        "http",
        method = %request.method(),
        path = %redact_path(request.uri().path()),
        request_id = %request_id,
    )
}

/// `path` with every segment that is a UUID replaced by its [`user_tag`]; never the query.
pub fn redact_path(path: &str) -> String {
    path.split('/')
        .map(|segment| match uuid::Uuid::parse_str(segment) {
            Ok(id) => user_tag(&id),
            Err(_) => segment.to_owned(),
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// A short, stable name for a user (or any UUID) in logs: `u-` and 8 hex digits of SHA-256.
/// 32 bits of a hash cannot give back the 122 random bits of the UUID.
pub fn user_tag(id: &uuid::Uuid) -> String {
    use sha2::{Digest, Sha256};
    let digest =
        Sha256::new().chain_update(b"tako log tag\0").chain_update(id.as_bytes()).finalize();
    format!("u-{:02x}{:02x}{:02x}{:02x}", digest[0], digest[1], digest[2], digest[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_in_paths_are_hashed() {
        let id = "681adb8b-3c8a-4f7e-9d6e-2f1f6a1b2c3d";
        let redacted = redact_path(&format!("/api/json/accounts/users/{id}"));
        assert!(!redacted.contains(id) && !redacted.contains("681adb8b"), "{redacted}");
        assert!(
            redacted.starts_with("/api/json/accounts/users/u-")
                && redacted.len() == "/api/json/accounts/users/u-".len() + 8
        );
        assert_eq!(redact_path("/socket/websocket"), "/socket/websocket");
    }
}
