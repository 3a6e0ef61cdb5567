//! Prometheus metrics: what the engine reports through its [`Observer`], what the HTTP layer
//! measures, and state read at scrape time (sockets, subscriptions, presences, the database
//! pool). Rendered in the OpenMetrics text format, which Prometheus scrapes natively.
//!
//! Label sets stay bounded whatever clients send: events outside the known list count as
//! `other`, topics beyond the busiest [`MAX_TOPIC_SERIES`] are summed as `other`, HTTP routes are
//! the router's templates (`/api/json/accounts/users/{id}`, never the id).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use channels::Observer;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Mutex;

use crate::realtime::{is_notifications_topic, Realtime};
use crate::storage::{self, Store};

/// Per-topic series kept at most (the busiest); the rest are summed under `topic="other"`.
pub const MAX_TOPIC_SERIES: usize = 50;

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Events worth a series of their own; any other event name (clients choose them) is `other`.
const KNOWN_EVENTS: &[&str] = &[
    "heartbeat",
    "phx_join",
    "phx_leave",
    "phx_reply",
    "phx_close",
    "phx_error",
    "presence_state",
    "presence_diff",
    "presence_count",
    "collected",
    "collected-broadcast",
    "rally-completed",
    "ping",
    "pong",
    "shout",
    "msg",
    "announcement",
    "malformed",
];

fn event_label(event: &str) -> &'static str {
    KNOWN_EVENTS.iter().find(|e| **e == event).copied().unwrap_or("other")
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InboundLabels {
    event: &'static str,
    /// `accepted`, or `rate_limited`.
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TopicLabels {
    topic: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NameLabels {
    name: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn http_histogram() -> Histogram {
    // 1 ms … ~16 s
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// One per application; cheap to share.
pub struct Metrics {
    registry: Registry,
    messages_in: Family<InboundLabels, Counter>,
    messages_out: Family<EventLabels, Counter>,
    fanout: Histogram,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    rate_limited: Family<NameLabels, Counter>,
    /// Read at scrape time.
    sockets: Family<Vec<(String, String)>, Gauge>,
    users_online: Gauge,
    subscriptions: Family<TopicLabels, Gauge>,
    presences: Family<TopicLabels, Gauge>,
    slow_consumers: Counter,
    db_pool: Family<Vec<(String, String)>, Gauge>,
    db_errors: Counter,
    /// What the counters read at scrape time had reached at the last scrape.
    seen: Mutex<Seen>,
    /// Messages handled (in) and queued (out) since start, for the dashboard's rates.
    totals: Totals,
}

#[derive(Default)]
struct Seen {
    slow_consumers: u64,
    db_errors: u64,
}

#[derive(Default)]
pub struct Totals {
    pub messages_in: AtomicU64,
    pub messages_out: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("tako");
        let messages_in = Family::<InboundLabels, Counter>::default();
        registry.register(
            "messages_in",
            "Messages from clients, by event; rate_limited ones were refused",
            messages_in.clone(),
        );
        let messages_out = Family::<EventLabels, Counter>::default();
        registry.register(
            "messages_out",
            "Frames queued to sockets, by event (one per subscription reached)",
            messages_out.clone(),
        );
        let fanout = Histogram::new(exponential_buckets(0.000_01, 4.0, 10));
        registry.register(
            "broadcast_fanout_seconds",
            "Time to queue one delivery to every subscriber on this node",
            fanout.clone(),
        );
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests, by method, route template and status",
            http_requests.clone(),
        );
        let http_duration: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(http_histogram);
        registry.register(
            "http_request_duration_seconds",
            "HTTP request duration, by method and route template",
            http_duration.clone(),
        );
        let rate_limited = Family::<NameLabels, Counter>::default();
        registry.register(
            "rate_limited",
            "Requests refused by a rate limit, by limit",
            rate_limited.clone(),
        );
        let sockets = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register("sockets", "Open sockets, by transport", sockets.clone());
        let users_online = Gauge::default();
        registry.register(
            "users_online",
            "Distinct users with a socket on this node",
            users_online.clone(),
        );
        let subscriptions = Family::<TopicLabels, Gauge>::default();
        registry.register(
            "channel_subscriptions",
            "Joined channels, by topic (the busiest topics; the rest as other)",
            subscriptions.clone(),
        );
        let presences = Family::<TopicLabels, Gauge>::default();
        registry.register("presences", "Users present on a notifications topic", presences.clone());
        let slow_consumers = Counter::default();
        registry.register(
            "slow_consumer_disconnects",
            "Sockets closed because they did not read fast enough",
            slow_consumers.clone(),
        );
        let db_pool = Family::<Vec<(String, String)>, Gauge>::default();
        registry.register(
            "db_pool_connections",
            "Database pool connections, by state (idle, in_use, max)",
            db_pool.clone(),
        );
        let db_errors = Counter::default();
        registry.register("db_query_errors", "Database queries that failed", db_errors.clone());
        Metrics {
            registry,
            messages_in,
            messages_out,
            fanout,
            http_requests,
            http_duration,
            rate_limited,
            sockets,
            users_online,
            subscriptions,
            presences,
            slow_consumers,
            db_pool,
            db_errors,
            seen: Mutex::default(),
            totals: Totals::default(),
        }
    }

    pub fn totals(&self) -> &Totals {
        &self.totals
    }

    /// A request was refused by the rate limit named `name`.
    pub fn rate_limited(&self, name: &'static str) {
        self.rate_limited.get_or_create(&NameLabels { name }).inc();
    }

    fn http(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        // `/users/{id}` as `/users/:id`: braces inside label values trip some text parsers.
        let route = route.replace('{', ":").replace('}', "");
        let method = method.to_owned();
        self.http_duration
            .get_or_create(&RouteLabels { method: method.clone(), route: route.clone() })
            .observe(elapsed.as_secs_f64());
        self.http_requests.get_or_create(&HttpLabels { method, route, status }).inc();
    }

    /// The text exposition, with the state read now.
    pub fn render(&self, realtime: &Realtime, store: &dyn Store) -> String {
        {
            let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let (websocket, longpoll) = realtime.sockets_by_transport();
            for (transport, n) in [("websocket", websocket), ("longpoll", longpoll)] {
                self.sockets
                    .get_or_create(&vec![("transport".into(), transport.into())])
                    .set(n as i64);
            }
            let hub = realtime.hub();
            self.users_online.set(hub.user_count() as i64);
            let mut topics = hub.topic_counts();
            topics.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            self.subscriptions.clear();
            self.presences.clear();
            let mut other = 0;
            for (i, (topic, count)) in topics.into_iter().enumerate() {
                if i >= MAX_TOPIC_SERIES {
                    other += count;
                    continue;
                }
                if is_notifications_topic(&topic) {
                    let (present, _) = realtime.presence().count(&topic);
                    self.presences
                        .get_or_create(&TopicLabels { topic: topic.clone() })
                        .set(present as i64);
                }
                self.subscriptions.get_or_create(&TopicLabels { topic }).set(count as i64);
            }
            if other > 0 {
                self.subscriptions
                    .get_or_create(&TopicLabels { topic: "other".into() })
                    .set(other as i64);
            }
            let slow = hub.slow_consumer_disconnects();
            self.slow_consumers.inc_by(slow.saturating_sub(seen.slow_consumers));
            seen.slow_consumers = seen.slow_consumers.max(slow);
            let errors = storage::query_errors();
            self.db_errors.inc_by(errors.saturating_sub(seen.db_errors));
            seen.db_errors = seen.db_errors.max(errors);
            let pool = store.pool();
            for (state, n) in [
                ("idle", pool.idle),
                ("in_use", pool.size.saturating_sub(pool.idle)),
                ("max", pool.max),
            ] {
                self.db_pool.get_or_create(&vec![("state".into(), state.into())]).set(n as i64);
            }
        }
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

impl Observer for Metrics {
    fn inbound(&self, event: &str, accepted: bool) {
        let outcome = if accepted { "accepted" } else { "rate_limited" };
        self.messages_in.get_or_create(&InboundLabels { event: event_label(event), outcome }).inc();
        if accepted {
            self.totals.messages_in.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn outbound(&self, event: &str, count: usize) {
        if count > 0 {
            self.messages_out
                .get_or_create(&EventLabels { event: event_label(event) })
                .inc_by(count as u64);
            self.totals.messages_out.fetch_add(count as u64, Ordering::Relaxed);
        }
    }

    fn fanout(&self, elapsed: Duration, _recipients: usize) {
        self.fanout.observe(elapsed.as_secs_f64());
    }
}

/// The route template a request matched, carried out on its response for [`track_http`].
#[derive(Clone)]
struct Route(MatchedPath);

/// Route middleware (`route_layer`): remembers the matched route template on the response.
pub async fn mark_route(request: Request, next: Next) -> Response {
    let matched = request.extensions().get::<MatchedPath>().cloned();
    let mut response = next.run(request).await;
    if let Some(path) = matched {
        response.extensions_mut().insert(Route(path));
    }
    response
}

/// Outermost middleware: counts and times every HTTP request by its route template
/// (`unmatched` for the 404 fallback).
pub async fn track_http(
    State(metrics): State<Arc<Metrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let route = response.extensions().get::<Route>().map_or("unmatched", |r| r.0.as_str());
    metrics.http(&method, route, response.status().as_u16(), started.elapsed());
    response
}

/// The text exposition as an HTTP answer.
pub fn response(text: String) -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE))], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_outside_the_list_share_one_series() {
        assert_eq!(event_label("collected"), "collected");
        assert_eq!(event_label("anything-a-client-invents-1234"), "other");
    }
}
