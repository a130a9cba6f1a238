//! `/endpoints` (admin token): the webhook URLs events go to, with their
//! health, and enabling or disabling one by hand. See `crate::endpoints`.

use super::error::{ApiError, ErrorBody};
use super::json::{ValidJson, ValidPath};
use super::{AppState, auth};
use crate::audit::Actor;
use crate::endpoints::Endpoint;
use axum::extract::State;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};
use axum::{Json, Router};

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/endpoints", get(list))
        .route("/endpoints/{id}", put(update))
        .route("/endpoints/{id}/enable", post(enable))
        .route("/endpoints/{id}/disable", post(disable))
        .route_layer(from_fn_with_state(state.clone(), auth::admin))
}

#[utoipa::path(
    get,
    path = "/endpoints",
    tag = "endpoints",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "Every endpoint the fleet has sent to or will send to", body = Vec<Endpoint>),
        (status = 401, description = "No admin token, or a wrong one", body = ErrorBody),
        (status = 403, description = "A client token: this route takes the admin token", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Vec<Endpoint>>, ApiError> {
    Ok(Json(state.endpoints.list().await?))
}

#[utoipa::path(
    post,
    path = "/endpoints/{id}/enable",
    tag = "endpoints",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint's id, as GET /endpoints lists it")),
    responses(
        (status = 200, description = "Enabled (or already active); its waiting events go out in due order", body = Endpoint),
        (status = 401, description = "No admin token, or a wrong one", body = ErrorBody),
        (status = 403, description = "A client token: this route takes the admin token", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn enable(
    State(state): State<AppState>,
    actor: Actor,
    ValidPath(id): ValidPath<String>,
) -> Result<Json<Endpoint>, ApiError> {
    by_hand(&state, &id, true, &actor).await
}

#[utoipa::path(
    post,
    path = "/endpoints/{id}/disable",
    tag = "endpoints",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint's id, as GET /endpoints lists it")),
    responses(
        (status = 200, description = "Disabled by hand: its events wait, it is not probed, until enabled by hand", body = Endpoint),
        (status = 401, description = "No admin token, or a wrong one", body = ErrorBody),
        (status = 403, description = "A client token: this route takes the admin token", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn disable(
    State(state): State<AppState>,
    actor: Actor,
    ValidPath(id): ValidPath<String>,
) -> Result<Json<Endpoint>, ApiError> {
    by_hand(&state, &id, false, &actor).await
}

/// The body of `PUT /endpoints/{id}`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct EndpointUpdate {
    /// Deliveries per second to this endpoint across the whole fleet, more
    /// than 0 and at most 100000; null lifts the cap.
    #[schema(required = true)]
    rate_per_s: Option<f64>,
}

/// The most a rate may be: beyond it, no cap is the same thing.
const MAX_RATE: f64 = 100_000.0;

#[utoipa::path(
    put,
    path = "/endpoints/{id}",
    tag = "endpoints",
    security(("admin_token" = [])),
    params(("id" = String, Path, description = "The endpoint's id, as GET /endpoints lists it")),
    request_body(content = EndpointUpdate, content_type = "application/json"),
    responses(
        (status = 200, description = "The endpoint, with its new rate", body = Endpoint),
        (status = 400, description = "Malformed JSON or an unknown field", body = ErrorBody),
        (status = 401, description = "No admin token, or a wrong one", body = ErrorBody),
        (status = 403, description = "A client token: this route takes the admin token", body = ErrorBody),
        (status = 404, description = "No such endpoint", body = ErrorBody),
        (status = 422, description = "A rate that is not more than 0 and at most 100000", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn update(
    State(state): State<AppState>,
    actor: Actor,
    ValidPath(id): ValidPath<String>,
    ValidJson(update): ValidJson<EndpointUpdate>,
) -> Result<Json<Endpoint>, ApiError> {
    if let Some(rate) = update.rate_per_s
        && !(rate > 0.0 && rate <= MAX_RATE)
    {
        return Err(ApiError::invalid(
            "rate_per_s",
            format!("must be more than 0 and at most {MAX_RATE}, or null for no cap"),
        ));
    }
    state
        .endpoints
        .set_rate(&id, update.rate_per_s, &actor)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("endpoint"))
}

async fn by_hand(
    state: &AppState,
    id: &str,
    enable: bool,
    actor: &Actor,
) -> Result<Json<Endpoint>, ApiError> {
    state
        .endpoints
        .set_by_hand(id, enable, actor)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("endpoint"))
}
