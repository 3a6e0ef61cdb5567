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

/// `path` with everything UUID-shaped replaced by its [`user_tag`]; never the query.
///
/// What the router accepts is not only the canonical spelling: percent-encoded characters
/// (even doubly encoded), braces (`%7B…%7D`), `urn:uuid:`, upper case and the hyphen-less form
/// all reach a handler as the same id. So the path is percent-decoded first (until nothing
/// changes, a few rounds at most), and any run of hex digits and hyphens holding 32 or more
/// hex digits is masked, whatever surrounds it.
pub fn redact_path(path: &str) -> String {
    let mut decoded = path.to_owned();
    for _ in 0..3 {
        let next = percent_encoding::percent_decode_str(&decoded).decode_utf8_lossy().into_owned();
        if next == decoded {
            break;
        }
        decoded = next;
    }
    let mut out = String::with_capacity(decoded.len());
    let mut run = String::new();
    let flush = |run: &mut String, out: &mut String| {
        let hex = run.chars().filter(char::is_ascii_hexdigit).count();
        if hex >= 32 {
            let digits: String = run.chars().filter(char::is_ascii_hexdigit).collect();
            match uuid::Uuid::parse_str(&digits) {
                Ok(id) => out.push_str(&user_tag(&id)),
                Err(_) => out.push_str("u-redacted"),
            }
        } else {
            out.push_str(run);
        }
        run.clear();
    };
    for c in decoded.chars() {
        if c.is_ascii_hexdigit() || c == '-' {
            run.push(c);
        } else {
            flush(&mut run, &mut out);
            // Control characters would let a path forge log lines.
            if c.is_control() {
                out.push('\u{fffd}');
            } else {
                out.push(c);
            }
        }
    }
    flush(&mut run, &mut out);
    out
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

    #[test]
    fn uuids_are_masked_in_every_spelling() {
        let id = "681adb8b-3c8a-4f7e-9d6e-2f1f6a1b2c3d";
        let tag = user_tag(&uuid::Uuid::parse_str(id).unwrap());
        let simple = id.replace('-', "");
        let spellings = [
            format!("/api/json/accounts/users/%7B{id}%7D"),
            format!("/api/json/accounts/users/{{{id}}}"),
            format!("/api/json/accounts/users/urn:uuid:{id}"),
            format!("/api/json/accounts/users/{}", id.to_uppercase()),
            format!("/api/json/accounts/users/{simple}"),
            format!("/api/json/accounts/users/%36{}", &id[1..]),
            format!("/api/json/accounts/users/%2536{}", &id[1..]),
            format!("/api/json/accounts/users/{id}/scans"),
            format!("/x/prefix{id}suffix"),
        ];
        for path in spellings {
            let redacted = redact_path(&path);
            assert!(redacted.contains(&tag), "{path} -> {redacted}");
            for leak in [&id[..8], &simple[24..], &id.to_uppercase()[..8]] {
                assert!(!redacted.contains(leak), "{path} -> {redacted}");
            }
        }
        assert_eq!(redact_path("/api/json/leaderboard"), "/api/json/leaderboard");
        assert!(!redact_path("/a%0aforged").contains('\n'));
    }
}
