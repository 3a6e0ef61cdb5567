//! The HTTP API, assembled in one place: which route, which layer, which state.

pub mod auth;
mod body;
mod booth;
mod draws;
pub mod error;
mod event_files;
mod events;
mod health;
pub mod jsonapi;
pub mod leaderboard;
pub mod openapi;
mod operators;
pub mod ops;
mod presence;
mod scan_limits;
pub mod scans;
mod stats;
mod users;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::Router;
use tower::ServiceBuilder;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::accounts::NicknamePolicy;
use crate::realtime::Realtime;
use crate::storage::Store;
use auth::Tokens;
use error::ApiError;

/// How long a request body may take to arrive.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tokens: Arc<Tokens>,
    pub realtime: Realtime,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub limits: Arc<ops::HttpLimits>,
    /// The nickname rules, with this server's reserved names.
    pub nicknames: Arc<NicknamePolicy>,
    /// The default leaderboard, encoded once for every reader.
    pub leaderboard: Arc<leaderboard::LeaderboardCache>,
    pub rally: Arc<scans::RallyState>,
}

/// The HTTP routes of Tako (sockets are nested in by `startup`).
pub fn router(state: AppState, cors_origins: &[String]) -> Router {
    let jsonapi = Router::new()
        .route(users::BASE, get(users::list).post(users::create))
        .route(&format!("{}/", users::BASE), get(users::list).post(users::create))
        .route(
            &format!("{}/{{id}}", users::BASE),
            get(users::show).patch(users::update).delete(users::delete),
        )
        .route(&format!("{}/{{id}}/scans", users::BASE), get(scans::list).post(scans::scan))
        .route(events::EVENTS, get(events::list_events).post(events::create_event))
        .route(
            &format!("{}/{{id}}", events::EVENTS),
            get(events::show_event).patch(events::update_event).delete(events::delete_event),
        )
        .route(&format!("{}/{{id}}/stamps", events::EVENTS), post(events::create_stamp))
        .route(&format!("{}/{{id}}/draws", events::EVENTS), get(draws::list).post(draws::create))
        .route(&format!("{}/{{id}}/completers", events::EVENTS), get(draws::completers))
        .route(&format!("{}/{{id}}/stats", events::EVENTS), get(stats::show))
        .route(
            &format!("{}/{{id}}", events::STAMPS),
            patch(events::update_stamp).delete(events::delete_stamp),
        )
        .route(&format!("{}/{{id}}/code", events::STAMPS), get(events::screen_code))
        .route(
            &format!("{}/{{id}}/booth-key", events::STAMPS),
            post(booth::create_key).delete(booth::revoke_key),
        )
        .route("/api/json/leaderboard", get(leaderboard::leaderboard))
        .route("/api/json/open_api", get(openapi::open_api))
        .route("/api/messages", post(operators::send_message))
        .route("/api/messages/{id}", get(operators::message_status))
        .route("/api/broadcasts", post(operators::broadcast))
        .route("/api/ping", post(operators::ping))
        .route("/api/users/search", get(ops::search_users))
        .route("/api/presence/{topic}", get(presence::list))
        .route_layer(from_fn_with_state(state.tokens.clone(), guard));
    // Files, not JSON:API documents: the token only (each handler negotiates its own media
    // types and reads its own body, up to its own limit).
    let files = Router::new()
        .route("/api/events/{id}/completers.csv", get(event_files::completers))
        .route("/api/events/{id}/draws.csv", get(event_files::draws))
        .route("/api/events/{id}/stamps/import", post(event_files::import))
        .route_layer(from_fn_with_state(state.tokens.clone(), token_only));

    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route(&format!("{}/{{key}}", booth::BOOTH), get(booth::page))
        .route(&format!("{}/{{key}}/code", booth::BOOTH), get(booth::code))
        .merge(jsonapi)
        .merge(files)
        .fallback(|| async { ApiError::not_found() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed().into_response() })
        // One layer, not three: each `Router::layer` boxes every route once more, and axum
        // clones a route's whole stack of boxes on every request.
        .layer(
            ServiceBuilder::new()
                .layer(cors(cors_origins))
                // A client that announces a body and never sends it does not hold a connection
                // (and a handler) forever: reading the body fails after this, and the request
                // gets a 400.
                .layer(RequestBodyTimeoutLayer::new(BODY_TIMEOUT))
                .layer(DefaultBodyLimit::max(jsonapi::MAX_BODY_BYTES)),
        )
        .with_state(state)
}

/// Every JSON:API route: the token first (401, else the caller's `Role` for the handler), then
/// content negotiation (406, 415). One route layer for both, for the reason given above.
async fn guard(State(tokens): State<Arc<Tokens>>, mut request: Request, next: Next) -> Response {
    if let Err(refused) = auth::authorize(&tokens, &mut request) {
        return refused.into_response();
    }
    if let Some(refused) = jsonapi::refusal(&request) {
        return refused;
    }
    next.run(request).await
}

/// The file routes: the token (401, else the caller's `Role`), nothing else.
async fn token_only(
    State(tokens): State<Arc<Tokens>>,
    mut request: Request,
    next: Next,
) -> Response {
    if let Err(refused) = auth::authorize(&tokens, &mut request) {
        return refused.into_response();
    }
    next.run(request).await
}

/// As the original: any origin unless `TAKO_CORS_ORIGINS` names some.
fn cors(origins: &[String]) -> CorsLayer {
    let allow_origin = if origins.is_empty() {
        AllowOrigin::from(Any)
    } else {
        AllowOrigin::list(origins.iter().filter_map(|o| HeaderValue::from_str(o.trim()).ok()))
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            header::ACCEPT,
            HeaderName::from_static("x-phoenix-authtoken"),
        ])
        .expose_headers([
            header::LOCATION,
            header::CONTENT_DISPOSITION,
            HeaderName::from_static(event_files::CREATED_HEADER),
            HeaderName::from_static(event_files::UPDATED_HEADER),
        ])
        .max_age(Duration::from_secs(3600))
}
