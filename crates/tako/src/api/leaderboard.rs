//! `GET /api/json/leaderboard`: not a JSON:API resource, the shape the web client reads.
//!
//! Without `limit` (what the web client sends) it is every ranked user, up to
//! `TAKO_LEADERBOARD_MAX`: the whole list is shown and the client bolds its own row. That
//! answer comes from an in-memory snapshot, encoded once for every reader and tagged with an
//! `ETag` (a client that has it gets a 304). A change through this node's API (registration,
//! nickname, stamps, deletion) makes the next request reload it; any other change (another
//! node, the database itself) shows within a second, the snapshot's longest life.
//! `?limit=` asks the database each time, as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::error::{ApiError, ErrorDocument};
use super::AppState;
use crate::accounts::{LeaderboardEntry, UserStore};

const MAX_LIMIT: u32 = 1000;
/// The longest a snapshot is served before it is read again.
const MAX_AGE: Duration = Duration::from_secs(1);
/// The longest a reload may take before readers get a 503.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Serialize, ToSchema)]
pub struct LeaderboardRow {
    #[schema(example = "Cruel_KFP")]
    pub nickname: String,
    #[schema(minimum = 0, example = 12)]
    pub stamps_collected: i64,
    /// 1 for the best; equal counts are ranked by who reached them first.
    #[schema(minimum = 1, example = 1)]
    pub rank: u64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Leaderboard {
    pub data: Vec<LeaderboardRow>,
}

/// The best users first; users without a nickname are left out.
#[utoipa::path(
    get, path = "/api/json/leaderboard", tag = "leaderboard",
    params(
        ("limit" = Option<u32>, Query, description = "1 to 1000; without it, every ranked user up to TAKO_LEADERBOARD_MAX (default 10,000)", minimum = 1, maximum = 1000),
        ("event" = Option<String>, Query, description = "Rank verified scans in this event (TAKO_STAMPS=verified: the default event when absent)", pattern = "^[a-z0-9-]{1,40}$"),
        ("If-None-Match" = Option<String>, Header, description = "The ETag of a leaderboard the client has (the default one: no `limit`, no event)"),
    ),
    responses(
        (status = 200, description = "The leaderboard; without `limit` it carries an ETag", body = Leaderboard),
        (status = 304, description = "Unchanged since the ETag in If-None-Match"),
        (status = 400, description = "Invalid limit", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn leaderboard(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::invalid_query("limit", e.body_text()))?;
    let limit = match query.get("limit") {
        None => None,
        Some(raw) => {
            Some(raw.parse().ok().filter(|l| (1..=MAX_LIMIT).contains(l)).ok_or_else(|| {
                ApiError::invalid_query(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                )
            })?)
        }
    };
    let entries = match super::scans::leaderboard_event(&state, query.get("event")).await? {
        // An event's ranking of verified scans: asked each time, every ranked user by default.
        Some(event) => {
            let limit = limit.unwrap_or(state.leaderboard.max());
            state.store.event_leaderboard(&event, limit).await?
        }
        None if state.rally.verified => Vec::new(),
        // The claimed stamps of the Tako-era client: without `limit`, the shared snapshot.
        None => match limit {
            None => {
                let snapshot = state.leaderboard.current(state.store.as_ref()).await?;
                return Ok(snapshot.respond(&headers));
            }
            Some(limit) => state.store.leaderboard(limit).await?,
        },
    };
    Ok(axum::Json(board(entries)).into_response())
}

fn board(entries: Vec<LeaderboardEntry>) -> Leaderboard {
    Leaderboard {
        data: entries
            .into_iter()
            .map(|e| LeaderboardRow {
                nickname: e.nickname.as_str().to_owned(),
                stamps_collected: e.stamps_collected.get(),
                rank: e.rank,
            })
            .collect(),
    }
}

/// The encoded default leaderboard, shared by every reader until it is reloaded.
pub struct Snapshot {
    body: Bytes,
    etag: HeaderValue,
    loaded_at: Instant,
    /// The change counter when it was read.
    generation: u64,
}

impl Snapshot {
    fn respond(&self, request: &HeaderMap) -> Response {
        let mut response = if etag_matches(request, &self.etag) {
            StatusCode::NOT_MODIFIED.into_response()
        } else {
            let mut ok = Response::new(Body::from(self.body.clone()));
            ok.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            ok
        };
        let headers = response.headers_mut();
        headers.insert(header::ETAG, self.etag.clone());
        // Caches may keep it but must ask again each time (a 304 costs a few bytes).
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        response
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`); weak tags compare by their value.
fn etag_matches(request: &HeaderMap, etag: &HeaderValue) -> bool {
    let Ok(ours) = etag.to_str() else { return false };
    request.get_all(header::IF_NONE_MATCH).iter().filter_map(|v| v.to_str().ok()).any(|list| {
        list.split(',').map(str::trim).any(|tag| tag == "*" || tag.trim_start_matches("W/") == ours)
    })
}

/// The default leaderboard's snapshot and what invalidates it.
pub struct LeaderboardCache {
    max: u32,
    current: RwLock<Option<Arc<Snapshot>>>,
    /// Bumped by every change made through this node.
    generation: AtomicU64,
    /// One reload at a time; readers that arrive meanwhile wait for its result.
    reload: tokio::sync::Mutex<()>,
}

impl LeaderboardCache {
    /// At most `max` rows (`TAKO_LEADERBOARD_MAX`).
    pub fn new(max: u32) -> LeaderboardCache {
        LeaderboardCache {
            max: max.max(1),
            current: RwLock::new(None),
            generation: AtomicU64::new(0),
            reload: tokio::sync::Mutex::new(()),
        }
    }

    /// Rows of a leaderboard asked for without `limit`.
    pub fn max(&self) -> u32 {
        self.max
    }

    /// A ranked user may have changed: the next request reads the database again.
    pub fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    fn fresh(&self) -> Option<Arc<Snapshot>> {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner()).clone()?;
        let generation = self.generation.load(Ordering::Acquire);
        (current.generation == generation && current.loaded_at.elapsed() < MAX_AGE)
            .then_some(current)
    }

    /// The snapshot, reloaded first if it is stale.
    pub async fn current<S: UserStore + ?Sized>(
        &self,
        store: &S,
    ) -> Result<Arc<Snapshot>, ApiError> {
        if let Some(snapshot) = self.fresh() {
            return Ok(snapshot);
        }
        let reload = async {
            let _one_at_a_time = self.reload.lock().await;
            // Another reader may have reloaded it while this one waited.
            if let Some(snapshot) = self.fresh() {
                return Ok(snapshot);
            }
            // Read before the query: a change during it makes the result stale at once.
            let generation = self.generation.load(Ordering::Acquire);
            let loaded_at = Instant::now();
            let entries = store.leaderboard(self.max).await?;
            let body = serde_json::to_vec(&board(entries)).map_err(|error| {
                tracing::error!(%error, "encoding the leaderboard failed");
                ApiError::unavailable()
            })?;
            let digest = Sha256::digest(&body);
            let tag: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
            let etag = HeaderValue::from_str(&format!("\"{tag}\""))
                .expect("hex digits in quotes are a valid header value");
            let snapshot =
                Arc::new(Snapshot { body: Bytes::from(body), etag, loaded_at, generation });
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(snapshot.clone());
            Ok(snapshot)
        };
        tokio::time::timeout(RELOAD_TIMEOUT, reload).await.unwrap_or_else(|_| {
            tracing::warn!("reloading the leaderboard timed out");
            Err(ApiError::unavailable())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_none_match_lists_weak_tags_and_star() {
        let etag = HeaderValue::from_static("\"abc\"");
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static(value));
            etag_matches(&headers, &etag)
        };
        assert!(with("\"abc\""));
        assert!(with("W/\"abc\""));
        assert!(with("\"x\", \"abc\""));
        assert!(with("*"));
        assert!(!with("\"abd\""));
        assert!(!with("abc"));
        assert!(!etag_matches(&HeaderMap::new(), &etag));
    }
}
