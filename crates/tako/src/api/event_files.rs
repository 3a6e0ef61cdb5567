//! An event's files (admin token), beside its JSON:API resources: the prize desk's CSV exports
//! (completers, draws' winners) and the booth CSV import, which answers with the new printed
//! stamps' QR sheet as a zip (or, for `tako stamps import`, as JSON). Errors are JSON:API error
//! documents, as everywhere.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{require_admin, Role};
use super::error::{ApiError, ErrorDocument};
use super::events::event_id;
use super::jsonapi::{self, JsonApi, JsonApiVersion};
use super::AppState;
use crate::booths::MAX_CSV_BYTES;
use crate::qr_sheet::{self, Card, CardCode, NewCode};
use crate::rally::{EventId, StampMode};
use crate::stamp_import::{self, ImportError, Imported};

/// Completers exported at most.
const MAX_COMPLETERS: u32 = 100_000;
/// Line errors listed in one error document (the CLI and the page show them all).
const MAX_LINE_ERRORS: usize = 100;
/// Headers of the zip answer: how many stamps the import created and updated.
pub const CREATED_HEADER: &str = "tako-stamps-created";
pub const UPDATED_HEADER: &str = "tako-stamps-updated";

type QueryMap = Result<Query<HashMap<String, String>>, QueryRejection>;

/// `?user_ids=true` (or `false`, or absent).
fn user_ids(query: QueryMap) -> Result<bool, ApiError> {
    let query =
        query.map(|Query(q)| q).map_err(|e| ApiError::invalid_query("user_ids", e.body_text()))?;
    match query.get("user_ids").map(String::as_str) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(ApiError::invalid_query("user_ids", "user_ids must be `true` or `false`")),
    }
}

async fn known_event(
    state: &AppState,
    id: Result<Path<String>, PathRejection>,
) -> Result<EventId, ApiError> {
    let event = event_id(id)?;
    if state.store.event(&event).await?.is_none() {
        return Err(ApiError::not_found());
    }
    Ok(event)
}

fn attachment(body: Vec<u8>, content_type: &'static str, file_name: String) -> Response {
    let mut response = Response::new(Body::from(body));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Event ids are a-z, 0-9 and `-`: the name needs no quoting beyond the quotes.
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file_name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn csv_failed(error: csv::Error) -> ApiError {
    tracing::error!(%error, "writing a CSV failed");
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "csv_failed",
        "CSV failed",
        "Could not write the CSV",
    )
}

/// Who completed the event, as CSV: `nickname,completed_at`, and `user_id` when asked
/// (admin token).
#[utoipa::path(
    get, path = "/api/events/{event_id}/completers.csv", tag = "rally",
    params(
        ("event_id" = String, Path, description = "The event's id"),
        ("user_ids" = Option<bool>, Query, description = "Add a user_id column (a user's id is their login secret)"),
    ),
    responses(
        (status = 200, description = "The completers, in the order they completed", body = String, content_type = "text/csv"),
        (status = 400, description = "Invalid user_ids", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn completers(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    require_admin(role)?;
    let with_ids = user_ids(query)?;
    let event = known_event(&state, id).await?;
    let completers = state.store.completers(&event, MAX_COMPLETERS).await?;
    let body = crate::prize_csv::completers(&completers, with_ids).map_err(csv_failed)?;
    Ok(attachment(body, "text/csv; charset=utf-8", format!("{event}-completers.csv")))
}

/// The draws' winners, as CSV: `draw_id,drawn_at,requested,nickname`, and `user_id` when
/// asked (admin token).
#[utoipa::path(
    get, path = "/api/events/{event_id}/draws.csv", tag = "rally",
    params(
        ("event_id" = String, Path, description = "The event's id"),
        ("user_ids" = Option<bool>, Query, description = "Add a user_id column (a user's id is their login secret)"),
    ),
    responses(
        (status = 200, description = "One row per winner, draws oldest first", body = String, content_type = "text/csv"),
        (status = 400, description = "Invalid user_ids", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn draws(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    query: QueryMap,
) -> Result<Response, ApiError> {
    require_admin(role)?;
    let with_ids = user_ids(query)?;
    let event = known_event(&state, id).await?;
    let draws = state.store.draws(&event).await?;
    let body = crate::prize_csv::draws(&draws, with_ids).map_err(csv_failed)?;
    Ok(attachment(body, "text/csv; charset=utf-8", format!("{event}-draws.csv")))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ImportedBoothAttributes {
    /// The CSV line it came from.
    pub line: u64,
    pub booth_id: String,
    pub name: String,
    #[schema(format = "uuid")]
    pub stamp_id: String,
    /// `printed` or `screen`.
    pub mode: String,
    /// Created by this import (else updated).
    pub created: bool,
    /// For a printed stamp created now: what its QR code holds. Shown this once.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub qr: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StampImportAttributes {
    pub event_name: String,
    pub created: usize,
    pub updated: usize,
    pub booths: Vec<ImportedBoothAttributes>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StampImportResource {
    /// The event's id.
    pub id: String,
    /// `stamp-import`
    #[serde(rename = "type")]
    pub type_: String,
    pub attributes: StampImportAttributes,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StampImportDocument {
    pub data: StampImportResource,
    pub jsonapi: JsonApiVersion,
}

fn wants_zip(headers: &HeaderMap) -> bool {
    headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|accept| {
        accept.split(',').any(|range| {
            let mut parts = range.split(';');
            let essence = parts.next().unwrap_or_default().trim();
            let refused = parts.any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("q")
                        && v.trim().parse::<f32>().is_ok_and(|q| q <= 0.0)
                })
            });
            essence.eq_ignore_ascii_case("application/zip") && !refused
        })
    })
}

fn is_csv(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("text/csv"))
}

fn import_failed(error: ImportError) -> ApiError {
    match error {
        ImportError::NoEvent => ApiError::not_found(),
        ImportError::Invalid(errors) => {
            let total = errors.0.len();
            let mut details: Vec<String> = errors.0.into_iter().take(MAX_LINE_ERRORS).collect();
            if total > MAX_LINE_ERRORS {
                details.push(format!("… and {} more", total - MAX_LINE_ERRORS));
            }
            ApiError::lines(
                StatusCode::BAD_REQUEST,
                "invalid_csv",
                "Invalid CSV; nothing was imported",
                details,
            )
        }
        ImportError::Unavailable(source) => ApiError::from(source),
        ImportError::Partial { line, source } => {
            tracing::error!(error = %source, line, "booth import failed part way");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
                format!("The database stopped answering at line {line}; the lines before it were imported: import the file again"),
            )
        }
    }
}

/// The QR sheet of an import: a card per booth of the file; QR files for the printed stamps
/// created now (the others' codes were shown when they were created).
fn sheet(imported: &Imported) -> anyhow::Result<Vec<u8>> {
    let mut cards = Vec::with_capacity(imported.booths.len());
    let mut codes = Vec::new();
    for booth in &imported.booths {
        let code = match (&booth.qr, booth.mode) {
            (_, StampMode::Screen) => CardCode::Screen,
            (Some(content), StampMode::Printed) => {
                let stem = qr_sheet::file_stem(&booth.booth_id, &booth.stamp.to_string());
                codes.push(NewCode { stem: stem.clone(), content: content.clone() });
                CardCode::Printed { stem }
            }
            (None, StampMode::Printed) => CardCode::Elsewhere,
        };
        cards.push(Card { name: booth.name.clone(), booth_id: booth.booth_id.clone(), code });
    }
    qr_sheet::zip(&imported.event_name, &cards, &codes)
}

/// Create or update an event's stamps from a CSV of booths (admin token; body `text/csv`, at
/// most 4 MiB). The whole file is checked first: one bad line imports nothing and every bad
/// line is named. Known booth ids are updated (in the file's columns only), the others created.
/// With `Accept: application/zip` the answer is the QR sheet (`index.html`, and an SVG and a PNG
/// per printed stamp created now: codes are shown only once); otherwise JSON with each new
/// printed stamp's QR content.
#[utoipa::path(
    post, path = "/api/events/{event_id}/stamps/import", tag = "rally",
    params(("event_id" = String, Path, description = "The event's id")),
    request_body(content = String, content_type = "text/csv",
        description = "Columns: name, booth_id (required), description, external_url, image_url, nsfw, visible, mode"),
    responses(
        (status = 201, description = "Imported", content(
            (StampImportDocument = "application/vnd.api+json"),
            (Vec<u8> = "application/zip"),
        ), headers(
            ("tako-stamps-created" = u32, description = "Stamps created"),
            ("tako-stamps-updated" = u32, description = "Stamps updated"),
        )),
        (status = 400, description = "Invalid CSV (`invalid_csv`, one error per line at fault); nothing was imported", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 401, description = "Missing or wrong token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 403, description = "Not the admin token", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 404, description = "No such event", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows neither JSON nor a zip", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 413, description = "Body over 4 MiB", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 415, description = "Not `text/csv`", body = ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 503, description = "Database unavailable", body = ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn import(
    State(state): State<AppState>,
    Extension(role): Extension<Role>,
    id: Result<Path<String>, PathRejection>,
    request: Request,
) -> Result<Response, ApiError> {
    require_admin(role)?;
    let zip = wants_zip(request.headers());
    if !zip && !jsonapi::accepts(request.headers()) {
        return Err(ApiError::not_acceptable());
    }
    if !is_csv(request.headers()) {
        return Err(ApiError::unsupported_media_type());
    }
    let event = event_id(id)?;
    let bytes = axum::body::to_bytes(request.into_body(), MAX_CSV_BYTES).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::payload_too_large(MAX_CSV_BYTES)
        } else {
            ApiError::invalid_body(format!("Could not read the body: {e}"))
        }
    })?;
    let imported = stamp_import::import(state.store.as_ref(), &state.rally.rally, &event, &bytes)
        .await
        .map_err(import_failed)?;
    let (created, updated) = (imported.created(), imported.updated());
    let mut response = if zip {
        let built = tokio::task::spawn_blocking(move || sheet(&imported)).await;
        let archive = match built {
            Ok(Ok(archive)) => archive,
            Ok(Err(error)) => {
                tracing::error!(%error, "building a QR sheet failed");
                return Err(sheet_failed());
            }
            Err(error) => {
                tracing::error!(%error, "building a QR sheet panicked");
                return Err(sheet_failed());
            }
        };
        let mut response = attachment(archive, "application/zip", format!("{event}-qr-codes.zip"));
        *response.status_mut() = StatusCode::CREATED;
        response
    } else {
        let booths = imported
            .booths
            .iter()
            .map(|b| ImportedBoothAttributes {
                line: b.line,
                booth_id: b.booth_id.clone(),
                name: b.name.clone(),
                stamp_id: b.stamp.to_string(),
                mode: b.mode.as_str().to_owned(),
                created: b.created,
                qr: b.qr.clone(),
            })
            .collect();
        let document = StampImportDocument {
            data: StampImportResource {
                id: event.to_string(),
                type_: "stamp-import".into(),
                attributes: StampImportAttributes {
                    event_name: imported.event_name,
                    created,
                    updated,
                    booths,
                },
            },
            jsonapi: JsonApiVersion::default(),
        };
        JsonApi(StatusCode::CREATED, document).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(CREATED_HEADER, HeaderValue::from(created));
    headers.insert(UPDATED_HEADER, HeaderValue::from(updated));
    Ok(response)
}

fn sheet_failed() -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "qr_sheet_failed",
        "QR sheet failed",
        "The stamps were imported but their QR sheet could not be made; delete the new printed stamps and import again for new codes",
    )
}
