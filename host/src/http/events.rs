//! `/events`: the operator's view of events, and manual retry.

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::json::ValidPath;
use super::users::parse_id;
use crate::audit::{self, Actor};
use crate::store::{self, Attempt, Event};
use axum::extract::{Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;

const STATUSES: [&str; 5] = ["pending", "processing", "delivered", "failed", "cancelled"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", get(list_events))
        .route("/events/{id}/retry", post(retry_event))
        .route("/events/{id}/attempts", get(event_attempts))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    status: Option<String>,
    event_type: Option<String>,
    limit: Option<String>,
}

#[utoipa::path(
    get,
    path = "/events",
    tag = "events",
    security(("client_token" = []), ("admin_token" = [])),
    params(
        ("status" = Option<String>, Query, description = "pending, processing, delivered, failed or cancelled"),
        ("event_type" = Option<String>, Query, description = "Only events of this type"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "At most this many, default 100"),
    ),
    responses(
        (status = 200, description = "Events", body = Vec<Event>),
        (status = 400, description = "A bad or unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn list_events(
    State(state): State<AppState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let query: EventQuery = super::parse_query(query)?;
    if let Some(status) = &query.status
        && !STATUSES.contains(&status.as_str())
    {
        return Err(ApiError::bad_request(
            "status",
            format!("must be one of {}", STATUSES.join(", ")),
        ));
    }
    let limit = super::parse_limit(query.limit.as_deref())?;
    let events = store::list_events(
        &state.pool,
        query.status.as_deref(),
        query.event_type.as_deref(),
        limit,
    )
    .await?;
    Ok(Json(events))
}

#[utoipa::path(
    post,
    path = "/events/{id}/retry",
    tag = "events",
    security(("client_token" = []), ("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The failed event is pending again with a fresh round of attempts", body = Event),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 409, description = "The event is not failed", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn retry_event(
    State(state): State<AppState>,
    actor: Actor,
    ValidPath(id): ValidPath<String>,
) -> Result<Json<Event>, ApiError> {
    let id = parse_id("id", &id)?;
    let mut tx = state.pool.begin().await?;
    if let Some(event) = store::retry_failed_event(&mut tx, id).await? {
        let detail = json!({"event_type": event.event_type, "attempts": event.attempts});
        audit::record(&mut tx, &actor, "event.retry", &id.to_string(), detail).await?;
        tx.commit().await?;
        return Ok(Json(event));
    }
    drop(tx);
    match store::get_event(&state.pool, id).await? {
        None => Err(ApiError::NotFound("event")),
        Some(event) => Err(ApiError::Conflict(format!(
            "only a failed event can be retried; this one is {}",
            event.status
        ))),
    }
}

#[utoipa::path(
    get,
    path = "/events/{id}/attempts",
    tag = "events",
    security(("client_token" = []), ("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The event's id")),
    responses(
        (status = 200, description = "Every attempt of the event whose outcome was recorded, oldest first", body = Vec<Attempt>),
        (status = 400, description = "The id is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn event_attempts(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<String>,
) -> Result<Json<Vec<Attempt>>, ApiError> {
    let id = parse_id("id", &id)?;
    store::event_attempts(&state.pool, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("event"))
}
