//! Running Tako: readiness, metrics, the registration rate limit, and the operators' user
//! search (the dashboard's "send to one user" form).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::{ConnectInfo, FromRequestParts, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::auth::{require_admin, Role};
use super::error::{ApiError, ErrorDocument};
use super::AppState;

/// Client addresses remembered by the registration limiter before idle ones are dropped.
const LIMITER_KEYS: usize = 10_000;

/// Tako's limits on HTTP requests (the socket limits are the engine's configuration).
pub struct HttpLimits {
    registrations: Option<DefaultKeyedRateLimiter<IpAddr>>,
    trust_proxy: channels::TrustedProxies,
}

impl HttpLimits {
    /// `registrations_per_minute` per client address; 0: no limit.
    pub fn new(registrations_per_minute: u32, trust_proxy: channels::TrustedProxies) -> HttpLimits {
        HttpLimits {
            registrations: NonZeroU32::new(registrations_per_minute)
                .map(|n| RateLimiter::keyed(Quota::per_minute(n))),
            trust_proxy,
        }
    }

    /// `Err(wait)` when `ip` registered too often. Loopback is not limited (a local proxy
    /// without `TAKO_TRUST_PROXY`, or the operators' own tools).
    fn registration(&self, ip: Option<IpAddr>) -> Result<(), Duration> {
        let (Some(limiter), Some(ip)) = (&self.registrations, ip) else { return Ok(()) };
        if ip.is_loopback() {
            return Ok(());
        }
        if limiter.len() > LIMITER_KEYS {
            limiter.retain_recent();
        }
        limiter
            .check_key(&ip)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// Extractor on user registration: 429 with `Retry-After` over the per-address rate. Taken
/// before the body, as a middleware would (an extractor rather than a handler layer: that one
/// builds its layer and clones the state on every request).
pub struct RegistrationAllowed;

impl FromRequestParts<AppState> for RegistrationAllowed {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0);
        let ip = channels::client_ip(&parts.headers, peer, &state.limits.trust_proxy);
        match state.limits.registration(ip) {
            Ok(()) => Ok(RegistrationAllowed),
            Err(wait) => Err(registration_refused(state, wait)),
        }
    }
}

fn registration_refused(state: &AppState, wait: Duration) -> Response {
    state.metrics.rate_limited("registrations");
    let seconds = wait.as_secs().max(1);
    tracing::info!(retry_after = seconds, "registration refused: rate limit for this address");
    let mut response = ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        "Too many requests",
        format!("Too many registrations from this address; retry in {seconds} s"),
    )
    .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    response
}

/// `GET /readyz`: 200 when this node can serve (database answers, not shutting down), else
/// 503 with the reason. Load balancers route by it; `/healthz` is the liveness probe.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    if state.realtime.is_shutting_down() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "unavailable", "reason": "shutting down"})),
        );
    }
    // In cluster mode, a node cut off from Redis still serves its own sockets but not the
    // cluster: balancers should send new clients elsewhere until it is back.
    if let Some(cluster) = state.realtime.cluster_status() {
        if !cluster.connected {
            let error = cluster.error.unwrap_or_else(|| "connecting".into());
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({"status": "unavailable", "reason": format!("redis unreachable: {error}"), "checks": {"redis": "error"}}),
                ),
            );
        }
    }
    match tokio::time::timeout(Duration::from_secs(2), state.store.ping()).await {
        Ok(Ok(())) => {
            (StatusCode::OK, Json(json!({"status": "ready", "checks": {"database": "ok"}})))
        }
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness: database unavailable");
            let reason = "database unreachable";
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({"status": "unavailable", "reason": reason, "checks": {"database": "error"}}),
                ),
            )
        }
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "unavailable", "reason": "database did not answer within 2 s", "checks": {"database": "timeout"}}),
            ),
        ),
    }
}

/// `GET /metrics` on the main listener: the admin token (as a bearer token).
pub async fn metrics(State(state): State<AppState>, request: Request) -> Response {
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match state.tokens.role_for(bearer) {
        Some(Role::Admin) => crate::metrics::response(render(&state)),
        Some(Role::Client) => ApiError::forbidden("Metrics need the admin token").into_response(),
        None => ApiError::unauthorized().into_response(),
    }
}

pub fn render(state: &AppState) -> String {
    state.metrics.render(&state.realtime, &*state.store)
}

/// The router of the separate `TAKO_METRICS_BIND` listener: `GET /metrics`, no token.
pub fn metrics_only(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/metrics",
            axum::routing::get(|State(state): State<AppState>| async move {
                crate::metrics::response(render(&state))
            }),
        )
        .with_state(state)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FoundUser {
    /// The user's UUID (its login secret: operators only).
    #[schema(format = "uuid")]
    pub id: String,
    pub nickname: String,
    #[schema(minimum = 0)]
    pub stamps_collected: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct FoundUsers {
    pub data: Vec<FoundUser>,
}

const MAX_SEARCH_CHARS: usize = 40;

/// Users whose nickname contains the text (case-insensitive), to message one of them.
#[utoipa::path(
    get, path = "/api/users/search", tag = "operators",
    params(
        ("nickname" = String, Query, description = "Part of the nickname, 1 to 40 characters", min_length = 1, max_length = 40),
        ("limit" = Option<u32>, Query, description = "1 to 50, default 20", minimum = 1, maximum = 50),
    ),
    responses(
        (status = 200, description = "Matching users, by nickname", body = FoundUsers),
        (status = 400, description = "Missing or invalid parameter", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn search_users(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<FoundUsers>, ApiError> {
    require_admin(role)?;
    let Query(query) = query.map_err(|e| ApiError::invalid_query("nickname", e.body_text()))?;
    let text = query.get("nickname").map(String::as_str).unwrap_or_default();
    if text.is_empty() || text.chars().count() > MAX_SEARCH_CHARS {
        return Err(ApiError::invalid_query(
            "nickname",
            format!("nickname must be 1 to {MAX_SEARCH_CHARS} characters"),
        ));
    }
    let limit = match query.get("limit") {
        None => 20,
        Some(raw) => raw.parse().ok().filter(|l| (1..=50).contains(l)).ok_or_else(|| {
            ApiError::invalid_query("limit", "limit must be an integer from 1 to 50")
        })?,
    };
    if text.chars().any(char::is_control) {
        // No nickname has one (and PostgreSQL refuses NUL in text).
        return Ok(Json(FoundUsers { data: Vec::new() }));
    }
    let users = state.store.search_nickname(text, limit).await?;
    Ok(Json(FoundUsers {
        data: users
            .into_iter()
            .filter_map(|u| {
                let nickname = u.nickname?.as_str().to_owned();
                Some(FoundUser {
                    id: u.id.to_string(),
                    nickname,
                    stamps_collected: u.stamps_collected.get(),
                })
            })
            .collect(),
    }))
}
