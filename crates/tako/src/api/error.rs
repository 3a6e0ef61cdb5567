//! The one error type of the HTTP layer, rendered as a JSON:API error document.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::jsonapi::{JsonApiVersion, MEDIA_TYPE};
use crate::accounts::StoreError;

#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    errors: Vec<ErrorObject>,
}

/// One error of an error document.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorObject {
    /// Unique per occurrence, for finding it in the logs.
    pub id: String,
    /// The HTTP status, as a string.
    pub status: String,
    /// A snake_case word a program can switch on.
    pub code: &'static str,
    pub title: &'static str,
    pub detail: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub source: Option<ErrorSource>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorSource {
    /// JSON pointer into the request document, e.g. `/data/attributes/nickname`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub pointer: Option<String>,
    /// The query parameter at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub parameter: Option<String>,
}

/// `{"errors":[…],"jsonapi":{"version":"1.0"}}`
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDocument {
    pub errors: Vec<ErrorObject>,
    pub jsonapi: JsonApiVersion,
}

impl ApiError {
    pub fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> ApiError {
        ApiError { status, errors: vec![ErrorObject::new(status, code, title, detail.into())] }
    }

    /// Several errors of the same status in one document (e.g. two invalid attributes).
    pub fn many(status: StatusCode, errors: Vec<ErrorObject>) -> ApiError {
        ApiError { status, errors }
    }

    /// One error object per detail, all of one kind (e.g. each bad line of an uploaded file).
    pub fn lines(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        details: Vec<String>,
    ) -> ApiError {
        let errors =
            details.into_iter().map(|d| ErrorObject::new(status, code, title, d)).collect();
        ApiError { status, errors }
    }

    pub fn at_pointer(mut self, pointer: impl Into<String>) -> ApiError {
        let pointer = pointer.into();
        for error in &mut self.errors {
            error.source = Some(ErrorSource { pointer: Some(pointer.clone()), parameter: None });
        }
        self
    }

    pub fn at_parameter(mut self, parameter: impl Into<String>) -> ApiError {
        let parameter = parameter.into();
        for error in &mut self.errors {
            error.source = Some(ErrorSource { pointer: None, parameter: Some(parameter.clone()) });
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn invalid_body(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", "Invalid body", detail)
    }

    pub fn invalid_attribute(name: &str, detail: impl Into<String>) -> ErrorObject {
        let mut error = ErrorObject::new(
            StatusCode::BAD_REQUEST,
            "invalid_attribute",
            "Invalid attribute",
            detail.into(),
        );
        error.source = Some(ErrorSource {
            pointer: Some(format!("/data/attributes/{name}")),
            parameter: None,
        });
        error
    }

    pub fn invalid_query(parameter: &str, detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", "Invalid query parameter", detail)
            .at_parameter(parameter)
    }

    pub fn not_found() -> ApiError {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "Not found",
            "No resource at this address",
        )
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "Unauthorized",
            "Send a valid token as `Authorization: Bearer <token>`",
        )
    }

    pub fn forbidden(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::FORBIDDEN, "forbidden", "Forbidden", detail)
    }

    pub fn conflict(detail: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", "Conflict", detail)
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "Method not allowed",
            "This address does not answer that method",
        )
    }

    pub fn not_acceptable() -> ApiError {
        ApiError::new(
            StatusCode::NOT_ACCEPTABLE,
            "not_acceptable",
            "Not acceptable",
            "Accept must allow application/vnd.api+json (without parameters) or application/json",
        )
    }

    pub fn unsupported_media_type() -> ApiError {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Unsupported media type",
            "Send the body as application/vnd.api+json (without parameters) or application/json",
        )
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "Payload too large",
            format!("Request bodies are limited to {limit} bytes"),
        )
    }

    pub fn unavailable() -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Service unavailable",
            "The database is not answering; try again shortly",
        )
    }
}

impl ErrorObject {
    fn new(
        status: StatusCode,
        code: &'static str,
        title: &'static str,
        detail: String,
    ) -> ErrorObject {
        ErrorObject {
            id: Uuid::new_v4().to_string(),
            status: status.as_str().to_owned(),
            code,
            title,
            detail,
            source: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> ApiError {
        tracing::error!(%error, "storage failed");
        ApiError::unavailable()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorDocument { errors: self.errors, jsonapi: JsonApiVersion::default() };
        let mut response = (self.status, axum::Json(body)).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(MEDIA_TYPE));
        response
    }
}
