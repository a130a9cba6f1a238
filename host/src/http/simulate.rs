//! `GET /simulate`: every message the loaded types would send in a window,
//! streamed as NDJSON (client token). See `crate::ahead::simulate`.

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::users::parse_id;
use crate::ahead::simulate::{self, MAX_WINDOW_MONTHS, Window};
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{DateTime, Months, Utc};
use serde::Deserialize;
use std::collections::BTreeMap;

pub fn router() -> Router<AppState> {
    Router::new().route("/simulate", get(simulate))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SimulateQuery {
    from: Option<String>,
    to: Option<String>,
    event_type: Option<String>,
    user_id: Option<String>,
}

#[utoipa::path(
    get,
    path = "/simulate",
    tag = "simulate",
    security(("client_token" = []), ("admin_token" = [])),
    params(
        ("from" = String, Query, description = "Start of the window (RFC 3339), included"),
        ("to" = String, Query, description = "End of the window (RFC 3339), excluded; at most five years after `from`"),
        ("event_type" = Option<String>, Query, description = "Only this type (one loaded here)"),
        ("user_id" = Option<String>, Query, description = "Only this user"),
    ),
    responses(
        (status = 200, description = "One line per message, in due_at then user_id order", body = simulate::Line, content_type = "application/x-ndjson"),
        (status = 400, description = "A missing or bad parameter, to <= from, a window over five years, or a type not loaded here", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn simulate(
    State(state): State<AppState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Response, ApiError> {
    let query: SimulateQuery = super::parse_query(query)?;
    let from = instant("from", query.from.as_deref())?;
    let to = instant("to", query.to.as_deref())?;
    if to <= from {
        return Err(ApiError::bad_request("to", "must be after from"));
    }
    if from
        .checked_add_months(Months::new(MAX_WINDOW_MONTHS))
        .is_some_and(|limit| to > limit)
    {
        return Err(ApiError::bad_request(
            "to",
            "the window may be at most five years long",
        ));
    }
    let mut plugins: Vec<_> = state.registry.snapshot().values().cloned().collect();
    if let Some(name) = &query.event_type {
        plugins.retain(|p| p.name() == name);
        if plugins.is_empty() {
            return Err(ApiError::bad_request(
                "event_type",
                format!("no event type named {name:?} is loaded here"),
            ));
        }
    }
    let user_id = match query.user_id.as_deref() {
        Some(text) => {
            let id = parse_id("user_id", text)?;
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM users WHERE id = $1)")
                    .bind(id)
                    .fetch_one(&state.pool)
                    .await?;
            if !exists {
                return Err(ApiError::NotFound("user"));
            }
            Some(id)
        }
        None => None,
    };
    let window = Window {
        from,
        to,
        event_type: query.event_type,
        user_id,
    };
    let body = Body::from_stream(simulate::stream(state.pool.clone(), plugins, window));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

fn instant(field: &str, text: Option<&str>) -> Result<DateTime<Utc>, ApiError> {
    let text = text.ok_or_else(|| ApiError::bad_request(field, "is required (RFC 3339)"))?;
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            ApiError::bad_request(
                field,
                format!("{text:?} is not an RFC 3339 time such as 2027-01-01T00:00:00Z: {e}"),
            )
        })
}
