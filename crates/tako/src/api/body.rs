//! Request documents deserialized into request types: a serde failure becomes a 400 whose
//! `source.pointer` is where in the document it happened (`serde_path_to_error`).

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use serde_path_to_error::Segment;

use super::error::ApiError;
use super::jsonapi::MAX_BODY_BYTES;

/// A JSON body of at most 64 KiB, as `T`.
pub struct Document<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Document<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::payload_too_large(MAX_BODY_BYTES)
            } else {
                ApiError::invalid_body(format!("Could not read the body: {rejection}"))
            }
        })?;
        parse(&bytes).map(Document)
    }
}

/// `bytes` as `T`, or a 400 pointing at the first thing that is wrong.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    require_objects(bytes)?;
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
        let pointer = pointer(error.path());
        let inner = error.into_inner();
        if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            return ApiError::invalid_body(format!("The body is not valid JSON: {inner}"));
        }
        let error = if pointer.starts_with("/data/attributes/") {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_attribute",
                "Invalid attribute",
                inner.to_string(),
            )
        } else {
            ApiError::invalid_body(inner.to_string())
        };
        error.at_pointer(pointer)
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::invalid_body(format!("The body is not valid JSON: {e}")))?;
    Ok(value)
}

/// JSON:API's `data` and `data.attributes` are objects. serde's derived structs also accept
/// a JSON array (fields by position), so `"attributes": []` would read as "nothing to change":
/// refused here, with the pointer, before the typed parse.
fn require_objects(bytes: &[u8]) -> Result<(), ApiError> {
    let Ok(serde_json::Value::Object(document)) = serde_json::from_slice(bytes) else {
        return Ok(()); // the typed parse says what is wrong
    };
    let not_object = |pointer: &str| {
        ApiError::invalid_body(format!("{pointer} must be a JSON object")).at_pointer(pointer)
    };
    match document.get("data") {
        Some(serde_json::Value::Object(data)) => match data.get("attributes") {
            Some(serde_json::Value::Object(_)) | None => Ok(()),
            Some(_) => Err(not_object("/data/attributes")),
        },
        Some(serde_json::Value::Null) | None => Ok(()),
        Some(_) => Err(not_object("/data")),
    }
}

/// A JSON pointer (RFC 6901) from a serde path.
fn pointer(path: &serde_path_to_error::Path) -> String {
    let mut out = String::new();
    for segment in path.iter() {
        out.push('/');
        match segment {
            Segment::Seq { index } => out.push_str(&index.to_string()),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                out.push_str(&key.replace('~', "~0").replace('/', "~1"))
            }
            Segment::Unknown => out.push('?'),
        }
    }
    out
}

/// For `Option<Option<T>>` fields: absent → `None`, `null` → `Some(None)`.
pub fn nullable<'de, D, T>(deserializer: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Some)
}

/// For optional fields that may be absent but not `null` (the schema says `nullable: false`):
/// absent → `None`, a value → `Some`, `null` → a 400 pointing at the field.
pub fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

/// A whole number as JSON Schema counts one (`8` and `8.0`), within `u32`.
pub fn whole_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u32, D::Error> {
    let number = serde_json::Number::deserialize(deserializer)?;
    let whole = number.as_u64().or_else(|| {
        number
            .as_f64()
            .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 4_294_967_296.0)
            .map(|f| f as u64)
    });
    whole.and_then(|n| u32::try_from(n).ok()).ok_or_else(|| {
        serde::de::Error::custom(format!("expected a whole number from 0 to {}", u32::MAX))
    })
}

pub fn some_whole_u32<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<u32>, D::Error> {
    whole_u32(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Attributes {
        #[allow(dead_code)]
        name: String,
        #[serde(default, deserialize_with = "nullable")]
        note: Option<Option<String>>,
        #[serde(default, deserialize_with = "some_whole_u32")]
        count: Option<u32>,
    }

    #[derive(Debug, Deserialize)]
    struct Data {
        attributes: Attributes,
    }

    #[derive(Debug, Deserialize)]
    struct Doc {
        data: Data,
    }

    fn error_pointer(body: serde_json::Value) -> String {
        let error = parse::<Doc>(body.to_string().as_bytes()).unwrap_err();
        let response = axum::response::IntoResponse::into_response(error);
        assert_eq!(response.status(), StatusCode::BAD_REQUEST);
        format!("{response:?}")
    }

    #[test]
    fn attributes_given_as_an_array_are_refused() {
        for body in [
            json!({"data": {"attributes": []}}),
            json!({"data": {"attributes": ["x", null, 8]}}),
            json!({"data": []}),
        ] {
            assert!(parse::<Doc>(body.to_string().as_bytes()).is_err(), "{body}");
        }
    }

    #[test]
    fn pointers_name_the_attribute_at_fault() {
        let ok: Doc =
            parse(br#"{"data":{"attributes":{"name":"x","note":null,"count":8.0}}}"#).unwrap();
        assert_eq!(ok.data.attributes.note, Some(None));
        assert_eq!(ok.data.attributes.count, Some(8));
        let doc: Doc = parse(br#"{"data":{"attributes":{"name":"x"}}}"#).unwrap();
        assert_eq!(doc.data.attributes.note, None);
        let _ = error_pointer(json!({"data": {"attributes": {"name": 5}}}));
        let mut deserializer =
            serde_json::Deserializer::from_str(r#"{"data":{"attributes":{"name":"x","nope":1}}}"#);
        let err = serde_path_to_error::deserialize::<_, Doc>(&mut deserializer).unwrap_err();
        assert_eq!(pointer(err.path()), "/data/attributes/nope");
        let mut deserializer = serde_json::Deserializer::from_str(
            r#"{"data":{"attributes":{"name":"x","count":1.5}}}"#,
        );
        let err = serde_path_to_error::deserialize::<_, Doc>(&mut deserializer).unwrap_err();
        assert_eq!(pointer(err.path()), "/data/attributes/count");
    }
}
