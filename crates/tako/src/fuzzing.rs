//! Entry point for the JSON:API fuzz target in `fuzz/` (cargo feature `fuzzing`; not part of the
//! API). It feeds arbitrary bytes to the request-body parser as a request would reach it, and
//! panics only when a property the server relies on breaks. `cargo test` runs it over the
//! committed seeds (`fuzz/corpus/jsonapi_body/`).

use axum::body::Body;
use axum::extract::{FromRequest, Request};
use axum::http::header;
use serde_json::Value;

use crate::accounts::Nickname;
use crate::api::jsonapi::{self, ResourceObject};

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime");
}

/// Parses `data` as the body of a `PATCH` of a user, as the users routes do: the media-type
/// check, the `data` resource object, its `type`, its attributes, and a `nickname` attribute
/// through the domain's nickname rules.
///
/// Properties: no panic; every refusal is a 4xx, never a 5xx; what is accepted is a JSON
/// object whose `data` was an object.
pub fn jsonapi_body(data: &[u8]) {
    let request = Request::builder()
        .method("PATCH")
        .uri("/api/json/accounts/users/681adb8b-0000-4000-8000-000000000000")
        .header(header::CONTENT_TYPE, jsonapi::MEDIA_TYPE)
        .header(header::CONTENT_LENGTH, data.len())
        .body(Body::from(data.to_vec()))
        .expect("a valid request");
    assert!(jsonapi::refusal(&request).is_none(), "a JSON:API body was refused by media type");
    let parsed = RUNTIME.with(|rt| rt.block_on(ResourceObject::from_request(request, &())));
    let resource = match parsed {
        Ok(resource) => resource,
        Err(error) => {
            assert!(error.status().is_client_error(), "a body got {}", error.status());
            return;
        }
    };
    let document: Value = serde_json::from_slice(data).expect("an accepted body is JSON");
    assert!(document.get("data").is_some_and(Value::is_object), "accepted without a data object");
    if let Err(error) = resource.expect_type("user") {
        assert!(error.status().is_client_error(), "a type got {}", error.status());
        return;
    }
    match resource.attributes() {
        Ok(attributes) => {
            if let Some(Value::String(nickname)) = attributes.get("nickname") {
                if let Ok(Some(nick)) = Nickname::parse(nickname) {
                    let len = nick.as_str().chars().count();
                    assert!((3..=20).contains(&len), "a {len}-character nickname passed");
                }
            }
        }
        Err(error) => {
            assert!(error.status().is_client_error(), "attributes got {}", error.status())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn jsonapi_seeds() {
        let dir: PathBuf =
            [env!("CARGO_MANIFEST_DIR"), "..", "..", "fuzz", "corpus", "jsonapi_body"]
                .iter()
                .collect();
        let seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|entry| std::fs::read(entry.unwrap().path()).unwrap())
            .collect();
        assert!(seeds.len() >= 3, "{} holds {} seeds", dir.display(), seeds.len());
        seeds.iter().for_each(|seed| super::jsonapi_body(seed));
    }
}
