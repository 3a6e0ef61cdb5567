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

/// Which proxies in front of the server may say where a client comes from, in
/// `X-Forwarded-For`. Each proxy appends the address it received the request from, so only the
/// right-most entries — those the trusted proxies wrote — can be believed; what is further left
/// is whatever the client sent.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TrustedProxies {
    /// The header is ignored: the client is the TCP peer.
    #[default]
    None,
    /// This many proxies stand in front (the nearest is the TCP peer): the client is the
    /// address the outermost one appended, the `hops`-th entry from the right.
    Hops(usize),
    /// Proxies are the peers within these networks: entries are read from the right, skipping
    /// those within the networks; the first one outside is the client. A peer outside them is
    /// the client itself, whatever the header says.
    Networks(Vec<ipnet::IpNet>),
}

/// A `TAKO_TRUST_PROXY`-style setting that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is neither off/on, a number of proxies, nor a list of networks (e.g. 10.0.0.0/8,192.168.1.7)")]
pub struct InvalidTrustedProxies(pub String);

impl std::str::FromStr for TrustedProxies {
    type Err = InvalidTrustedProxies;

    /// `off`/`false`/`no`/`0`/empty; `on`/`true`/`yes` (one proxy); a count; or networks and
    /// addresses separated by commas.
    fn from_str(value: &str) -> Result<TrustedProxies, InvalidTrustedProxies> {
        let trimmed = value.trim();
        match trimmed.to_ascii_lowercase().as_str() {
            "" | "off" | "false" | "no" | "0" => return Ok(TrustedProxies::None),
            "on" | "true" | "yes" => return Ok(TrustedProxies::Hops(1)),
            _ => {}
        }
        if let Ok(hops) = trimmed.parse::<usize>() {
            return Ok(TrustedProxies::Hops(hops));
        }
        let networks = trimmed
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(|n| {
                n.parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| InvalidTrustedProxies(value.to_owned()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        if networks.is_empty() {
            return Err(InvalidTrustedProxies(value.to_owned()));
        }
        Ok(TrustedProxies::Networks(networks))
    }
}

/// Where a connection comes from: the TCP peer, or — behind trusted proxies — the address the
/// outermost of them received it from (see [`TrustedProxies`]).
pub fn client_ip(
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    proxies: &TrustedProxies,
) -> Option<IpAddr> {
    let peer = peer.map(|p| p.ip());
    let forwarded = || {
        // Entries in the order the proxies appended them; an unreadable one stops the walk
        // (nothing left of it can be attributed).
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .collect();
        entries
    };
    let parse =
        |v: &str| v.parse::<IpAddr>().ok().or_else(|| v.parse::<SocketAddr>().ok().map(|a| a.ip()));
    match proxies {
        TrustedProxies::None | TrustedProxies::Hops(0) => peer,
        TrustedProxies::Hops(hops) => {
            let entries = forwarded();
            if entries.is_empty() {
                return peer;
            }
            // Fewer entries than proxies: all of them were written by trusted proxies.
            let index = entries.len().saturating_sub(*hops);
            parse(entries[index]).or(peer)
        }
        TrustedProxies::Networks(networks) => {
            let trusted = |ip: &IpAddr| networks.iter().any(|n| n.contains(ip));
            let mut client = peer?;
            if !trusted(&client) {
                return Some(client);
            }
            for entry in forwarded().iter().rev() {
                match parse(entry) {
                    Some(ip) => {
                        client = ip;
                        if !trusted(&ip) {
                            break;
                        }
                    }
                    None => break,
                }
            }
            Some(client)
        }
    }
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

/// Token buckets of one socket (owned by the socket's task: no locking): messages, and
/// optionally bytes.
#[derive(Debug)]
pub(crate) struct InboundBudget {
    rate: InboundRate,
    tokens: f64,
    last: Instant,
    refused: u32,
    bytes: Option<ByteBucket>,
}

/// Bytes per second on average, up to `burst` at once.
#[derive(Debug)]
struct ByteBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
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
            bytes: None,
        }
    }

    /// A message budget of no practical limit (only bytes are budgeted).
    pub(crate) fn unlimited() -> Self {
        InboundBudget::new(InboundRate { per_second: f64::MAX, burst: u32::MAX })
    }

    /// Also budget bytes: `per_second` on average, `burst` at once (at least one largest
    /// message, so that one always passes a rested socket).
    pub(crate) fn with_bytes(mut self, per_second: u64, burst: usize) -> Self {
        let burst = (burst as f64).max(per_second as f64).max(1.0);
        self.bytes = Some(ByteBucket { per_second: per_second as f64, burst, tokens: burst });
        self
    }

    /// Whether a message of `size` bytes may be handled now.
    pub(crate) fn check(&mut self, size: usize) -> Verdict {
        self.check_at(Instant::now(), size)
    }

    fn check_at(&mut self, now: Instant, size: usize) -> Verdict {
        let burst = f64::from(self.rate.burst.max(1));
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate.per_second.max(0.0)).min(burst);
        let bytes_rested = match &mut self.bytes {
            Some(bucket) => {
                bucket.tokens = (bucket.tokens + elapsed * bucket.per_second).min(bucket.burst);
                bucket.tokens >= bucket.burst
            }
            None => true,
        };
        if self.tokens >= burst && bytes_rested {
            // Quiet long enough to refill completely: past refusals are forgiven.
            self.refused = 0;
        }
        let bytes_ok = self.bytes.as_ref().is_none_or(|b| b.tokens >= size as f64);
        if self.tokens >= 1.0 && bytes_ok {
            self.tokens -= 1.0;
            if let Some(bucket) = &mut self.bytes {
                bucket.tokens -= size as f64;
            }
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
        let (none, one, two) =
            (TrustedProxies::None, TrustedProxies::Hops(1), TrustedProxies::Hops(2));
        assert_eq!(client_ip(&h, Some(peer), &none), Some(peer.ip()));
        assert_eq!(client_ip(&h, Some(peer), &one), Some("10.0.0.2".parse().unwrap()));
        assert_eq!(client_ip(&h, Some(peer), &two), Some("203.0.113.7".parse().unwrap()));
        h.insert("x-forwarded-for", HeaderValue::from_static("not an ip"));
        assert_eq!(client_ip(&h, Some(peer), &one), Some(peer.ip()));
    }

    #[test]
    fn budget_refuses_then_closes_and_forgives_after_a_quiet_spell() {
        let start = Instant::now();
        let mut b = InboundBudget::new(InboundRate { per_second: 10.0, burst: 3 });
        b.last = start;
        assert_eq!(
            (0..3).map(|_| b.check_at(start, 1)).filter(|v| *v == Verdict::Allowed).count(),
            3
        );
        assert_eq!(b.check_at(start, 1), Verdict::Refused);
        assert_eq!(b.check_at(start, 1), Verdict::Refused);
        assert_eq!(b.check_at(start, 1), Verdict::Refused);
        assert_eq!(b.check_at(start, 1), Verdict::Close);
        let later = start + Duration::from_secs(1);
        assert_eq!(b.check_at(later, 1), Verdict::Allowed);
        assert_eq!(b.refused, 0);
        // At the average rate, never refused.
        let mut b = InboundBudget::new(InboundRate { per_second: 10.0, burst: 1 });
        b.last = start;
        for i in 0..50 {
            assert_eq!(b.check_at(start + Duration::from_millis(100 * i), 1), Verdict::Allowed);
        }
    }

    #[test]
    fn the_byte_budget_refuses_a_flood_of_large_messages_and_refills() {
        let start = Instant::now();
        let mut b = InboundBudget::unlimited().with_bytes(64 * 1024, 1 << 20);
        b.last = start;
        // One message of the largest size passes a rested socket; the next ones are refused
        // until the budget refills (16 s at 64 KiB/s), and a socket that persists is closed.
        assert_eq!(b.check_at(start, 1 << 20), Verdict::Allowed);
        assert_eq!(b.check_at(start, 1 << 20), Verdict::Refused);
        assert_eq!(b.check_at(start, 100), Verdict::Refused);
        assert_eq!(b.check_at(start + Duration::from_secs(1), 1000), Verdict::Allowed);
        assert_eq!(b.check_at(start + Duration::from_secs(17), 1 << 20), Verdict::Allowed);
        let mut flood = InboundBudget::new(InboundRate { per_second: 1000.0, burst: 3 })
            .with_bytes(64 * 1024, 1 << 20);
        flood.last = start;
        let verdicts: Vec<Verdict> =
            (0..6).map(|i| flood.check_at(start + Duration::from_millis(i), 1 << 20)).collect();
        assert_eq!(verdicts[0], Verdict::Allowed);
        assert_eq!(verdicts[5], Verdict::Close);
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

    fn forwarded(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn forwarded_for_is_read_from_the_right() {
        let peer: Option<SocketAddr> = Some("10.0.0.2:5000".parse().unwrap());
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // The client wrote "127.0.0.1"; the one proxy appended the real address.
        let spoofed = forwarded("127.0.0.1, 203.0.113.9");
        let one: TrustedProxies = "on".parse().unwrap();
        assert_eq!(client_ip(&spoofed, peer, &one), Some(ip("203.0.113.9")));
        let two: TrustedProxies = "2".parse().unwrap();
        assert_eq!(client_ip(&spoofed, peer, &two), Some(ip("127.0.0.1")));
        assert_eq!(client_ip(&spoofed, peer, &TrustedProxies::None), Some(ip("10.0.0.2")));
        assert_eq!(client_ip(&HeaderMap::new(), peer, &one), Some(ip("10.0.0.2")));

        let nets: TrustedProxies = "10.0.0.0/8, 192.168.1.7".parse().unwrap();
        let chain = forwarded("127.0.0.1, 198.51.100.4, 192.168.1.7");
        assert_eq!(client_ip(&chain, peer, &nets), Some(ip("198.51.100.4")));
        // A peer outside the trusted networks is the client, whatever it claims.
        let outsider: Option<SocketAddr> = Some("198.51.100.99:1".parse().unwrap());
        assert_eq!(client_ip(&chain, outsider, &nets), Some(ip("198.51.100.99")));
        // Garbage in the header: what the trusted proxy appended still counts.
        let junk = forwarded("127.0.0.1, not-an-ip, 198.51.100.4");
        assert_eq!(client_ip(&junk, peer, &one), Some(ip("198.51.100.4")));
    }

    #[test]
    fn trusted_proxies_parse() {
        assert_eq!("off".parse::<TrustedProxies>().unwrap(), TrustedProxies::None);
        assert_eq!("".parse::<TrustedProxies>().unwrap(), TrustedProxies::None);
        assert_eq!("true".parse::<TrustedProxies>().unwrap(), TrustedProxies::Hops(1));
        assert_eq!("3".parse::<TrustedProxies>().unwrap(), TrustedProxies::Hops(3));
        assert!(
            matches!("::1, 10.1.0.0/16".parse(), Ok(TrustedProxies::Networks(n)) if n.len() == 2)
        );
        assert!("10.0.0.0/99".parse::<TrustedProxies>().is_err());
        assert!("proxy.example".parse::<TrustedProxies>().is_err());
    }
}
