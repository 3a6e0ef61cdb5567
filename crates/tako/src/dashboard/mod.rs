//! The operators' dashboard at `/dashboard`: three static files compiled into the binary (no
//! build step) and a server-sent-events stream of live counts.
//!
//! The page asks for the admin token once and keeps it in `sessionStorage` (gone with the tab,
//! never in a URL). It reads the stream with `fetch` (so the token travels in the
//! `Authorization` header, which `EventSource` cannot send) and calls the operators' API for
//! presence, search, messages, broadcasts and the leaderboard.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::{json, Value};

use crate::api::auth::Role;
use crate::api::error::ApiError;
use crate::api::AppState;
use crate::realtime::is_notifications_topic;

const INDEX: &str = include_str!("assets/index.html");
const SCRIPT: &str = include_str!("assets/dashboard.js");
const STYLE: &str = include_str!("assets/dashboard.css");

/// How often the stream sends a snapshot.
const TICK: Duration = Duration::from_secs(1);
/// Notifications topics whose presences a snapshot lists (the busiest).
const PRESENCE_TOPICS: usize = 10;
/// Presences listed per topic.
const PRESENCES_PER_TOPIC: usize = 200;

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/dashboard", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route("/dashboard/", get(|| async { asset(INDEX, "text/html; charset=utf-8") }))
        .route(
            "/dashboard/dashboard.js",
            get(|| async { asset(SCRIPT, "text/javascript; charset=utf-8") }),
        )
        .route(
            "/dashboard/dashboard.css",
            get(|| async { asset(STYLE, "text/css; charset=utf-8") }),
        )
        .route("/dashboard/stream", get(stream))
        .with_state(state)
}

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    response
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// `GET /dashboard/stream` (admin token): an SSE `snapshot` event every second.
async fn stream(State(state): State<AppState>, request: Request) -> Response {
    match state.tokens.role_for(bearer(&request)) {
        Some(Role::Admin) => {}
        Some(Role::Client) => {
            return ApiError::forbidden("The dashboard needs the admin token").into_response()
        }
        None => return ApiError::unauthorized().into_response(),
    }
    let ticks = futures_util::stream::unfold(
        (state, tokio::time::interval(TICK)),
        |(state, mut interval)| async move {
            interval.tick().await;
            // Ends with the server, so a graceful shutdown does not wait for open dashboards.
            if state.realtime.is_shutting_down() {
                return None;
            }
            let event = Event::default().event("snapshot").data(snapshot(&state).to_string());
            Some((Ok::<Event, Infallible>(event), (state, interval)))
        },
    );
    Sse::new(ticks).keep_alive(KeepAlive::default()).into_response()
}

/// What the page draws: counts now, totals to derive rates from, and who is online.
pub fn snapshot(state: &AppState) -> Value {
    let hub = state.realtime.hub();
    let presence = state.realtime.presence();
    let (websocket, longpoll) = state.realtime.sockets_by_transport();
    let mut topics = hub.topic_counts();
    topics.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let presence: Vec<Value> = topics
        .iter()
        .filter(|(t, _)| is_notifications_topic(t))
        .take(PRESENCE_TOPICS)
        .map(|(topic, subscribers)| {
            let list = presence.list(topic);
            let mut users: Vec<Value> = list
                .as_object()
                .map(|o| {
                    o.iter()
                        .map(|(handle, entry)| {
                            let metas = entry["metas"].as_array().cloned().unwrap_or_default();
                            let since = metas.iter().filter_map(|m| m["online_at"].as_i64()).min();
                            let nickname = metas.iter().rev().find_map(|m| m["nickname"].as_str().map(str::to_owned));
                            json!({"handle": handle, "nickname": nickname, "since": since, "connections": metas.len()})
                        })
                        .collect()
                })
                .unwrap_or_default();
            users.sort_by(|a, b| a["since"].as_i64().cmp(&b["since"].as_i64()));
            let online = users.len();
            users.truncate(PRESENCES_PER_TOPIC);
            json!({"topic": topic, "subscribers": subscribers, "online": online, "users": users})
        })
        .collect();
    let totals = state.metrics.totals();
    json!({
        "at": chrono::Utc::now().timestamp_millis(),
        "sockets": websocket + longpoll,
        "websocket": websocket,
        "longpoll": longpoll,
        "users_online": hub.user_count(),
        "messages_in": totals.messages_in.load(Ordering::Relaxed),
        "messages_out": totals.messages_out.load(Ordering::Relaxed),
        "slow_consumer_disconnects": hub.slow_consumer_disconnects(),
        "topics": topics.iter().take(20).map(|(t, n)| json!({"topic": t, "subscribers": n})).collect::<Vec<_>>(),
        "presence": presence,
    })
}
