//! Admission and abuse limits, as configuration: Phoenix's `check_origin`, a cap on sockets
//! (per node and per client address), and a per-socket budget of inbound messages.
//!
//! The engine supplies the mechanisms; the application chooses the numbers and the origins.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap, StatusCode};
use parking_lot::Mutex;

/// Which browser origins may open a socket, as Phoenix's `check_origin`.
///
/// A request without an `Origin` header is accepted (it does not come from a browser page,
/// which always sends one on a WebSocket upgrade or a cross-origin request).
#[derive(Debug, Clone, Default)]
pub enum CheckOrigin {
    /// Every origin (Phoenix's `check_origin: false`).
    #[default]
    Any,
    /// Only these.
    List(Vec<AllowedOrigin>),
}

/// One allowed origin: `https://example.com`, `//example.com` (any scheme),
/// `//*.example.com` (the domain and its subdomains), `https://example.com:8443`. A part
/// left out matches anything, as in Phoenix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin {
    scheme: Option<String>,
    host: String,
    port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid origin {0:?}: expected scheme://host[:port] or //host, with an optional *. in front of the host")]
pub struct InvalidOrigin(pub String);

impl std::str::FromStr for AllowedOrigin {
    type Err = InvalidOrigin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidOrigin(s.to_owned());
        let (scheme, rest) = match s.trim().split_once("//") {
            Some(("", rest)) => (None, rest),
            Some((scheme, rest)) => {
                let scheme = scheme.strip_suffix(':').ok_or_else(invalid)?;
                (Some(scheme.to_ascii_lowercase()), rest)
            }
            None => return Err(invalid()),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = split_port(rest).ok_or_else(invalid)?;
        let bare = host.strip_prefix("*.").unwrap_or(host);
        if bare.is_empty() || bare.contains(['*', '/', '@', '?', '#', ' ']) {
            return Err(invalid());
        }
        Ok(AllowedOrigin { scheme, host: host.to_ascii_lowercase(), port })
    }
}

/// `host[:port]`; `None` when the port is not a number.
fn split_port(authority: &str) -> Option<(&str, Option<u16>)> {
    // An IPv6 literal keeps its colons inside brackets.
    let colon = match authority.rfind(']') {
        Some(end) => authority[end..].find(':').map(|i| i + end),
        None => authority.rfind(':'),
    };
    match colon {
        Some(i) => Some((&authority[..i], Some(authority[i + 1..].parse().ok()?))),
        None => Some((authority, None)),
    }
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

impl AllowedOrigin {
    fn matches(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        if let Some(allowed) = self.port {
            if port.or_else(|| default_port(scheme)) != Some(allowed) {
                return false;
            }
        }
        match self.host.strip_prefix("*.") {
            Some(domain) => {
                host == domain || host.strip_suffix(domain).is_some_and(|sub| sub.ends_with('.'))
            }
            None => host == self.host,
        }
    }
}

impl CheckOrigin {
    /// Parses a list such as `["https://quest.example.com", "//*.example.com"]`.
    pub fn list<S: AsRef<str>>(
        origins: impl IntoIterator<Item = S>,
    ) -> Result<CheckOrigin, InvalidOrigin> {
        let parsed =
            origins.into_iter().map(|o| o.as_ref().parse()).collect::<Result<Vec<_>, _>>()?;
        Ok(CheckOrigin::List(parsed))
    }

    /// Whether a request with these headers may proceed.
    pub fn allows(&self, headers: &HeaderMap) -> bool {
        let CheckOrigin::List(allowed) = self else { return true };
        let mut origins = headers.get_all(header::ORIGIN).iter();
        let Some(origin) = origins.next() else { return true };
        if origins.next().is_some() {
            return false;
        }
        let Some((scheme, host, port)) = origin.to_str().ok().and_then(parse_origin) else {
            return false;
        };
        allowed.iter().any(|a| a.matches(&scheme, &host, port))
    }
}

/// `scheme://host[:port]` of an `Origin` header (`null` and anything else: `None`).
fn parse_origin(origin: &str) -> Option<(String, String, Option<u16>)> {
    let (scheme, rest) = origin.trim().split_once("://")?;
    let (host, port) = split_port(rest.trim_end_matches('/'))?;
    if host.is_empty() || host.contains(['/', '@']) {
        return None;
    }
    Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), port))
}

/// Where a connection comes from: the TCP peer, or — behind a proxy that says so — the
/// left-most address of `X-Forwarded-For`.
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    trust_forwarded_for: bool,
) -> Option<IpAddr> {
    if trust_forwarded_for {
        let forwarded = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .find(|v| !v.is_empty())
            .and_then(|v| {
                v.parse::<IpAddr>().ok().or_else(|| v.parse::<SocketAddr>().ok().map(|a| a.ip()))
            });
        if forwarded.is_some() {
            return forwarded;
        }
    }
    peer.map(|p| p.ip())
}

/// A budget of inbound messages per socket: `per_second` on average, up to `burst` at once.
/// Over it, messages get an error reply `{"reason":"rate limited"}`; a socket that keeps going
/// past `burst` refused messages before its budget has refilled is closed with 1008
/// "rate limited". Heartbeats are not counted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InboundRate {
    pub per_second: f64,
    pub burst: u32,
}

/// Token bucket of one socket (owned by the socket's task: no locking).
#[derive(Debug)]
pub(crate) struct InboundBudget {
    rate: InboundRate,
    tokens: f64,
    last: Instant,
    refused: u32,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allowed,
    Refused,
    /// Refused, and the socket has had enough chances: close it.
    Close,
}

impl InboundBudget {
    pub(crate) fn new(rate: InboundRate) -> Self {
        InboundBudget {
            rate,
            tokens: f64::from(rate.burst.max(1)),
            last: Instant::now(),
            refused: 0,
        }
    }

    pub(crate) fn check(&mut self) -> Verdict {
        self.check_at(Instant::now())
    }

    fn check_at(&mut self, now: Instant) -> Verdict {
        let burst = f64::from(self.rate.burst.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate.per_second.max(0.0)).min(burst);
        if self.tokens >= burst {
            // Quiet long enough to refill completely: past refusals are forgiven.
            self.refused = 0;
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Allowed;
        }
        self.refused += 1;
        if self.refused > self.rate.burst.max(1) {
            Verdict::Close
        } else {
            Verdict::Refused
        }
    }
}

/// Counts admitted sockets, in all and per client address, against the configured caps.
#[derive(Default)]
pub(crate) struct Admission {
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// Why a socket was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The origin is not allowed: 403.
    Origin,
    /// The node is full: 503.
    Full,
    /// Too many sockets from this address: 429.
    TooManyFromClient,
}

impl Refused {
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Refused::Origin => StatusCode::FORBIDDEN,
            Refused::Full => StatusCode::SERVICE_UNAVAILABLE,
            Refused::TooManyFromClient => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

/// Held while a socket is admitted; gives back its place in the per-client count.
pub(crate) struct ClientSlot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Admission {
    pub(crate) fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<ClientSlot> {
        let mut counts = self.per_client.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            if *count == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(ClientSlot { admission: self.clone(), ip })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut counts = self.admission.per_client.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// How long a refused client should wait, for a `Retry-After`.
pub(crate) const RETRY_AFTER: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_origin(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, HeaderValue::from_str(origin).unwrap());
        h
    }

    #[test]
    fn origins_as_phoenix_checks_them() {
        let check = CheckOrigin::list([
            "https://quest.example.com",
            "//*.holo.test",
            "http://localhost:4000",
        ])
        .unwrap();
        for ok in [
            "https://quest.example.com",
            "https://QUEST.example.com/",
            "http://holo.test",
            "https://a.b.holo.test",
            "http://localhost:4000",
        ] {
            assert!(check.allows(&with_origin(ok)), "{ok}");
        }
        for refused in [
            "http://quest.example.com",
            "https://evil.com",
            "https://evilholo.test",
            "https://holo.test.evil.com",
            "http://localhost:4001",
            "http://localhost",
            "null",
            "garbage",
        ] {
            assert!(!check.allows(&with_origin(refused)), "{refused}");
        }
        assert!(check.allows(&HeaderMap::new()), "no Origin: not a browser page");
        assert!(CheckOrigin::Any.allows(&with_origin("https://evil.com")));
        let ports = CheckOrigin::list(["https://x.test:443"]).unwrap();
        assert!(ports.allows(&with_origin("https://x.test")));
        assert!(CheckOrigin::list(["example.com"]).is_err());
        assert!(CheckOrigin::list(["//*.*.example.com"]).is_err());
        assert!(CheckOrigin::list(["https://x:notaport"]).is_err());
    }

    #[test]
    fn client_ip_from_peer_or_trusted_proxy() {
        let peer: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.7, 10.0.0.2"));
        assert_eq!(client_ip(&h, Some(peer), false), Some(peer.ip()));
        assert_eq!(client_ip(&h, Some(peer), true), Some("203.0.113.7".parse().unwrap()));
        h.insert("x-forwarded-for", HeaderValue::from_static("not an ip"));
        assert_eq!(client_ip(&h, Some(peer), true), Some(peer.ip()));
    }

    #[test]
    fn budget_refuses_then_closes_and_forgives_after_a_quiet_spell() {
        let start = Instant::now();
        let mut b = InboundBudget::new(InboundRate { per_second: 10.0, burst: 3 });
        b.last = start;
        assert_eq!((0..3).map(|_| b.check_at(start)).filter(|v| *v == Verdict::Allowed).count(), 3);
        assert_eq!(b.check_at(start), Verdict::Refused);
        assert_eq!(b.check_at(start), Verdict::Refused);
        assert_eq!(b.check_at(start), Verdict::Refused);
        assert_eq!(b.check_at(start), Verdict::Close);
        let later = start + Duration::from_secs(1);
        assert_eq!(b.check_at(later), Verdict::Allowed);
        assert_eq!(b.refused, 0);
        // At the average rate, never refused.
        let mut b = InboundBudget::new(InboundRate { per_second: 10.0, burst: 1 });
        b.last = start;
        for i in 0..50 {
            assert_eq!(b.check_at(start + Duration::from_millis(100 * i)), Verdict::Allowed);
        }
    }

    #[test]
    fn per_client_slots_are_given_back() {
        let admission = Arc::new(Admission::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = admission.take(ip, 2).unwrap();
        let _b = admission.take(ip, 2).unwrap();
        assert!(admission.take(ip, 2).is_none());
        drop(a);
        assert!(admission.take(ip, 2).is_some());
        assert!(admission.take("192.0.2.2".parse().unwrap(), 2).is_some());
    }
}
