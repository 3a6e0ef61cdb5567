//! Logs: `TAKO_LOG` filters (default `info`), `TAKO_LOG_FORMAT=json` for machines.

use tracing_subscriber::{fmt, EnvFilter};

pub fn init() {
    let filter = EnvFilter::try_from_env("TAKO_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("TAKO_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests start several apps in one process) is not an error worth failing for.
    let _ = if json { builder.json().try_init() } else { builder.try_init() };
}
