//! `/events`: the operator's view of events, and manual retry.

use super::AppState;
use super::error::ApiError;
use super::users::parse_id;
use crate::store::{self, Event};
use axum::extract::{Path, Query, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::BTreeMap;

const STATUSES: [&str; 5] = ["pending", "processing", "delivered", "failed", "cancelled"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/events", get(list_events))
        .route("/events/{id}/retry", post(retry_event))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventQuery {
    status: Option<String>,
    event_type: Option<String>,
    limit: Option<String>,
}

async fn list_events(
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

async fn retry_event(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Event>, ApiError> {
    let id = parse_id("id", &id)?;
    if let Some(event) = store::retry_failed_event(&state.pool, id).await? {
        return Ok(Json(event));
    }
    match store::get_event(&state.pool, id).await? {
        None => Err(ApiError::NotFound("event")),
        Some(event) => Err(ApiError::Conflict(format!(
            "only a failed event can be retried; this one is {}",
            event.status
        ))),
    }
}
