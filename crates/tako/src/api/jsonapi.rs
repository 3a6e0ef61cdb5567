//! JSON:API plumbing: media types, content negotiation, request bodies and response documents.

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Request};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::error::ApiError;

pub const MEDIA_TYPE: &str = "application/vnd.api+json";
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// `{"version":"1.0"}`
#[derive(Debug, Serialize, ToSchema)]
pub struct JsonApiVersion {
    #[schema(example = "1.0")]
    pub version: &'static str,
}

impl Default for JsonApiVersion {
    fn default() -> Self {
        JsonApiVersion { version: "1.0" }
    }
}

/// A response body served as `application/vnd.api+json`.
pub struct JsonApi<T>(pub StatusCode, pub T);

impl<T: Serialize> IntoResponse for JsonApi<T> {
    fn into_response(self) -> Response {
        // Serialized into a buffer that fits a user document at once (axum's `Json` starts at
        // 128 bytes and grows). A failure's message is the body, with the status and media
        // type given, as when this went through `(status, Json(…))`.
        let mut buffer = Vec::with_capacity(1024);
        let body = match serde_json::to_writer(&mut buffer, &self.1) {
            Ok(()) => Body::from(buffer),
            Err(error) => Body::from(error.to_string()),
        };
        let mut response = Response::new(body);
        *response.status_mut() = self.0;
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        response
    }
}

/// One media range or media type, split into its essence and whether it has parameters
/// (a `q` weight is not a media type parameter).
struct MediaType<'a> {
    essence: String,
    has_parameters: bool,
    rejected: bool,
    _raw: &'a str,
}

fn parse_media_type(raw: &str) -> MediaType<'_> {
    let mut parts = raw.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let mut has_parameters = false;
    let mut rejected = false;
    for param in parts {
        let (name, value) = param.split_once('=').unwrap_or((param, ""));
        if name.trim().eq_ignore_ascii_case("q") {
            rejected = value.trim().parse::<f32>().map(|q| q <= 0.0).unwrap_or(false);
            // Parameters after q are accept-extensions, not media type parameters.
            break;
        }
        if !param.trim().is_empty() {
            has_parameters = true;
        }
    }
    MediaType { essence, has_parameters, rejected, _raw: raw }
}

/// JSON:API 1.0: 406 when every instance of its media type in Accept carries parameters, and
/// when nothing in Accept allows a JSON response at all.
pub fn accepts(headers: &HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT) else { return true };
    let Ok(accept) = accept.to_str() else { return false };
    if accept.trim().is_empty() {
        return true;
    }
    let ranges: Vec<MediaType> =
        accept.split(',').map(parse_media_type).filter(|m| !m.rejected).collect();
    let jsonapi: Vec<&MediaType> = ranges.iter().filter(|m| m.essence == MEDIA_TYPE).collect();
    if !jsonapi.is_empty() {
        return jsonapi.iter().any(|m| !m.has_parameters);
    }
    ranges
        .iter()
        .any(|m| matches!(m.essence.as_str(), "*/*" | "application/*" | "application/json"))
}

/// Request bodies: `application/vnd.api+json` without parameters, or plain `application/json`.
pub fn content_type_supported(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let media = parse_media_type(value);
    match media.essence.as_str() {
        MEDIA_TYPE => !media.has_parameters,
        "application/json" => true,
        _ => false,
    }
}

/// Every JSON:API route, before any handler runs: the 406 or 415 answer `request` gets from
/// content negotiation, if any.
pub fn refusal(request: &Request) -> Option<Response> {
    if !accepts(request.headers()) {
        return Some(ApiError::not_acceptable().into_response());
    }
    // A body is announced by its length or by chunked encoding; a bare `POST /api/ping` has none.
    let headers = request.headers();
    let announces_body = headers.get(header::CONTENT_LENGTH).is_some_and(|l| l.as_bytes() != b"0")
        || headers.contains_key(header::TRANSFER_ENCODING);
    let has_body =
        matches!(*request.method(), Method::POST | Method::PATCH | Method::PUT) && announces_body;
    if has_body && !content_type_supported(request.headers()) {
        return Some(ApiError::unsupported_media_type().into_response());
    }
    None
}

/// A JSON object body of at most 64 KiB. Malformed JSON (the web client interpolates strings
/// into its bodies) is a 400, never a 500.
pub struct JsonObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(MAX_BODY_BYTES)
            } else {
                ApiError::invalid_body(format!("Could not read the body: {rejection}"))
            }
        })?;
        let document: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::invalid_body(format!("The body is not valid JSON: {e}")))?;
        match document {
            Value::Object(object) => Ok(JsonObject(object)),
            _ => Err(ApiError::invalid_body("The body must be a JSON object").at_pointer("")),
        }
    }
}

/// The `data` object of a JSON:API request document.
pub struct ResourceObject(pub Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for ResourceObject {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let JsonObject(mut document) = JsonObject::from_request(request, state).await?;
        match document.remove("data") {
            Some(Value::Object(data)) => Ok(ResourceObject(data)),
            Some(_) => {
                Err(ApiError::invalid_body("`data` must be a resource object").at_pointer("/data"))
            }
            None => {
                Err(ApiError::invalid_body("The document has no `data` member").at_pointer("/data"))
            }
        }
    }
}

impl ResourceObject {
    /// Checks `type` (400 when missing, 409 when another type) and returns the attributes.
    pub fn expect_type(&self, expected: &str) -> Result<(), ApiError> {
        match self.0.get("type") {
            Some(Value::String(t)) if t == expected => Ok(()),
            Some(Value::String(t)) => Err(ApiError::conflict(format!(
                "Resource type `{t}` does not match this endpoint's type `{expected}`"
            ))
            .at_pointer("/data/type")),
            Some(_) => {
                Err(ApiError::invalid_body("`type` must be a string").at_pointer("/data/type"))
            }
            None => Err(ApiError::invalid_body("The resource object has no `type`")
                .at_pointer("/data/type")),
        }
    }

    pub fn id(&self) -> Option<&Value> {
        self.0.get("id")
    }

    /// The attributes object (empty when absent); relationships are not writable here.
    pub fn attributes(mut self) -> Result<Map<String, Value>, ApiError> {
        match self.0.get("relationships") {
            None => {}
            Some(Value::Object(r)) if r.is_empty() => {}
            Some(_) => {
                return Err(ApiError::invalid_body("This resource has no writable relationships")
                    .at_pointer("/data/relationships"))
            }
        }
        match self.0.remove("attributes") {
            None | Some(Value::Null) => Ok(Map::new()),
            Some(Value::Object(attributes)) => Ok(attributes),
            Some(_) => Err(ApiError::invalid_body("`attributes` must be an object")
                .at_pointer("/data/attributes")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: header::HeaderName, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn accept_negotiation() {
        assert!(accepts(&HeaderMap::new()));
        for ok in [
            "application/vnd.api+json",
            "application/json",
            "*/*",
            "application/*",
            "text/html, application/json;q=0.9",
            "application/vnd.api+json; ext=\"x\", application/vnd.api+json",
            "application/vnd.api+json;q=0.5",
        ] {
            assert!(accepts(&headers(header::ACCEPT, ok)), "{ok}");
        }
        for refused in [
            "text/html",
            "application/vnd.api+json; charset=utf-8",
            "application/xml, image/png",
            "application/json;q=0",
        ] {
            assert!(!accepts(&headers(header::ACCEPT, refused)), "{refused}");
        }
    }

    #[test]
    fn content_type_rules() {
        assert!(content_type_supported(&headers(header::CONTENT_TYPE, "application/vnd.api+json")));
        assert!(content_type_supported(&headers(header::CONTENT_TYPE, "application/json")));
        assert!(content_type_supported(&headers(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8"
        )));
        assert!(!content_type_supported(&headers(
            header::CONTENT_TYPE,
            "application/vnd.api+json; charset=utf-8"
        )));
        assert!(!content_type_supported(&headers(header::CONTENT_TYPE, "text/plain")));
        assert!(!content_type_supported(&HeaderMap::new()));
    }
}
