//! Screen booths: a booth link (`/booth/<key>`) is a page for a phone or tablet on the booth's
//! table that shows the stamp's current screen code as a full-screen QR code. The key in the
//! link reads that one stamp's current code and nothing else; the operators make and revoke it
//! with the admin token. The server keeps only the key's keyed hash.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use qrcode::render::svg;
use qrcode::{EcLevel, QrCode};
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{require_admin, Role};
use super::error::{ApiError, ErrorDocument};
use super::events::stamp_id;
use super::AppState;
use crate::accounts::Timestamp;
use crate::rally::{booth_key_well_formed, Stamp, StampMode};

/// Where booth pages are served.
pub const BOOTH: &str = "/booth";
const PAGE: &str = include_str!("booth.html");

/// A new booth link, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct BoothKey {
    /// The booth key (128 random bits): whoever has it sees the stamp's current code.
    pub key: String,
    /// The page to open on the booth's screen, relative to the server's URL.
    #[schema(example = "/booth/q3V8…")]
    pub path: String,
}

/// What a booth page reads every step.
#[derive(Debug, Serialize, ToSchema)]
pub struct BoothCode {
    pub name: String,
    pub booth_id: Option<String>,
    /// What the QR code holds.
    pub qr: String,
    /// The QR code as an SVG image.
    pub svg: String,
    /// Show the next code from then.
    pub next_at: String,
    pub step_seconds: u64,
}

fn not_screen() -> ApiError {
    ApiError::conflict("Only a `screen` stamp has a booth link; a printed stamp's code is on paper")
}

/// Make a booth link for a `screen` stamp (admin token); an earlier link of it stops working.
#[utoipa::path(
    post, path = "/api/json/stamps/{stamp_id}/booth-key", tag = "rally",
    params(("stamp_id" = String, Path, description = "The stamp's id (UUID)")),
    responses(
        (status = 201, description = "The new key, shown once", body = BoothKey),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such stamp", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 409, description = "A printed stamp", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create_key(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<BoothKey>), ApiError> {
    require_admin(role)?;
    let id = stamp_id(id)?;
    let stamp = state.store.stamp(id).await?.ok_or_else(ApiError::not_found)?;
    if stamp.mode() != StampMode::Screen {
        return Err(not_screen());
    }
    let (key, hash) = state.rally.rally.new_booth_key();
    if !state.store.set_booth_key(id, Some(&hash)).await? {
        return Err(ApiError::not_found());
    }
    let path = format!("{BOOTH}/{key}");
    Ok((StatusCode::CREATED, Json(BoothKey { key, path })))
}

/// Revoke a stamp's booth link (admin token): its page stops showing codes at its next step.
#[utoipa::path(
    delete, path = "/api/json/stamps/{stamp_id}/booth-key", tag = "rally",
    params(("stamp_id" = String, Path, description = "The stamp's id (UUID)")),
    responses(
        (status = 204, description = "Revoked (also when it had none)"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such stamp", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn revoke_key(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    require_admin(role)?;
    let id = stamp_id(id)?;
    if !state.store.set_booth_key(id, None).await? {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// The stamp a booth key opens: none when the key is malformed, unknown or revoked.
async fn keyed_stamp(state: &AppState, key: &str) -> Result<Option<Stamp>, ApiError> {
    if !booth_key_well_formed(key) {
        return Ok(None);
    }
    let hash = state.rally.rally.booth_key_hash(key);
    let stamp = state.store.stamp_by_booth_key(&hash).await?;
    Ok(stamp.filter(|s| s.mode() == StampMode::Screen))
}

fn private(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    response
}

/// The booth page (no token: the key in the path is the credential).
pub async fn page(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(key)) = key else { return ApiError::not_found().into_response() };
    match keyed_stamp(&state, &key).await {
        Ok(Some(_)) => {}
        Ok(None) => return private(ApiError::not_found().into_response()),
        Err(error) => return error.into_response(),
    }
    let mut response = PAGE.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
             img-src data:; connect-src 'self'; frame-ancestors 'none'",
        ),
    );
    private(response)
}

/// The current code of the key's stamp, for its page.
pub async fn code(
    State(state): State<AppState>,
    key: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(key)) = key else { return ApiError::not_found().into_response() };
    let stamp = match keyed_stamp(&state, &key).await {
        Ok(Some(stamp)) => stamp,
        Ok(None) => return private(ApiError::not_found().into_response()),
        Err(error) => return error.into_response(),
    };
    let rally = &state.rally.rally;
    let Some(current) = rally.screen_code(&stamp, Timestamp::now()) else {
        return private(not_screen().into_response());
    };
    let svg = match QrCode::with_error_correction_level(current.qr.as_bytes(), EcLevel::M) {
        Ok(qr) => qr.render::<svg::Color>().min_dimensions(256, 256).build(),
        Err(_) => {
            let detail = "TAKO_SCAN_URL is too long for a QR code";
            return ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "qr_too_long",
                "QR code too long",
                detail,
            )
            .into_response();
        }
    };
    private(
        Json(BoothCode {
            name: stamp.name,
            booth_id: stamp.booth_id,
            qr: current.qr,
            svg,
            next_at: current.next_at.to_iso8601(),
            step_seconds: rally.step().seconds(),
        })
        .into_response(),
    )
}
