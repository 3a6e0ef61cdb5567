//! The OpenAPI 3 document, generated from the handlers' annotations and the response types.

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{
    booth, draws, error, event_files, events, leaderboard, operators, ops, presence, scans, stats,
    users,
};

#[derive(OpenApi)]
#[openapi(
    info(title = "Tako", description = "Accounts and leaderboard of the HoloQuest stamp rally"),
    paths(
        users::create, users::show, users::update, users::delete, users::list, leaderboard::leaderboard, open_api,
        operators::send_message, operators::message_status, operators::broadcast, operators::ping, ops::search_users, presence::list,
        events::list_events, events::show_event, events::create_event, events::update_event, events::delete_event,
        events::create_stamp, events::update_stamp, events::delete_stamp, events::screen_code, scans::scan, scans::list,
        booth::create_key, booth::revoke_key, draws::create, draws::list, draws::completers,
        stats::show, event_files::completers, event_files::draws, event_files::import,
    ),
    components(schemas(error::ErrorDocument)),
    modifiers(&BearerAuth),
    tags((name = "users", description = "The JSON:API `user` resource"), (name = "leaderboard"),
        (name = "rally", description = "Events, stamps and verified scans"),
        (name = "operators", description = "Admin token: messages, broadcasts, ping, presence"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// This document.
#[utoipa::path(
    get, path = "/api/json/open_api", tag = "meta",
    responses(
        (status = 200, description = "The OpenAPI document", content_type = "application/json", body = Object),
        (status = 401, description = "Missing or wrong token", body = error::ErrorDocument, content_type = "application/vnd.api+json"),
        (status = 406, description = "Accept allows no JSON", body = error::ErrorDocument, content_type = "application/vnd.api+json"),
    ),
    security(("bearer" = []))
)]
pub async fn open_api() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
