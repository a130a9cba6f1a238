//! `GET /openapi.json`: the OpenAPI 3.1 document of the REST API, generated
//! by utoipa from the handlers' `#[utoipa::path]` attributes and the types
//! they take and answer.

use super::error::ErrorBody;
use super::{audit, endpoints, event_types, events, simulate, status, users};
use axum::http::header;
use axum::response::IntoResponse;
use std::sync::LazyLock;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Security scheme of client routes: a `KAIROS_API_TOKENS` token (the admin
/// token is accepted too).
pub const CLIENT_TOKEN: &str = "client_token";
/// Security scheme of admin routes: only `KAIROS_ADMIN_TOKEN`.
pub const ADMIN_TOKEN: &str = "admin_token";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "kairos",
        description = "Timezone-aware event scheduler whose event types are WebAssembly plugins. \
            Client routes take a client token (`KAIROS_API_TOKENS`) or the admin token; \
            with no client tokens configured, a host bound to loopback serves them openly. \
            Admin routes take only the admin token (`KAIROS_ADMIN_TOKEN`). Open routes take none."
    ),
    paths(
        users::create_user,
        users::list_users,
        users::get_user,
        users::replace_user,
        users::delete_user,
        users::list_user_events,
        users::import_users,
        events::list_events,
        events::retry_event,
        events::event_attempts,
        simulate::simulate,
        event_types::list,
        event_types::show,
        event_types::upload,
        event_types::unload,
        endpoints::list,
        endpoints::update,
        endpoints::enable,
        endpoints::disable,
        audit::list,
        status::page,
        super::health,
        super::ready,
        super::metrics,
        openapi_json,
    ),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "users", description = "People and their dates (client routes)"),
        (name = "events", description = "Scheduled events (client routes)"),
        (name = "simulate", description = "Every message the loaded types would send in a window (client routes)"),
        (name = "event-types", description = "Loaded event types: listing is open, changes take the admin token"),
        (name = "endpoints", description = "Where webhooks go, and their health (admin routes)"),
        (name = "audit", description = "Every change made through the API or the plugin directory (admin route)"),
        (name = "operations", description = "Probes, metrics and this document (open routes)"),
    )
)]
pub struct ApiDoc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = |description: &str| {
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(description))
                    .build(),
            )
        };
        components.add_security_scheme(
            CLIENT_TOKEN,
            bearer("One of KAIROS_API_TOKENS (comma-separated). Client routes also take the admin token."),
        );
        components.add_security_scheme(
            ADMIN_TOKEN,
            bearer("KAIROS_ADMIN_TOKEN. A client token on an admin route is 403."),
        );
    }
}

/// Rendered once: the document does not change while the host runs.
static DOCUMENT: LazyLock<String> = LazyLock::new(|| {
    ApiDoc::openapi()
        .to_pretty_json()
        .expect("the OpenAPI document serialises")
});

#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "operations",
    responses(
        (status = 200, description = "This document (OpenAPI 3.1)", body = Object, content_type = "application/json"),
    )
)]
pub(super) async fn openapi_json() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_is_openapi_3_1_with_both_bearer_schemes() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
        let schemes = &doc["components"]["securitySchemes"];
        for name in [CLIENT_TOKEN, ADMIN_TOKEN] {
            assert_eq!(schemes[name]["scheme"], "bearer", "{name}");
        }
    }
}
