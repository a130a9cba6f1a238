//! `GET /audit` (admin token): what was changed through the API and the
//! plugin directory, by whom, oldest first. See `crate::audit`.

use super::error::{ApiError, ErrorBody};
use super::{AppState, auth};
use crate::audit::{self, Entry};
use axum::extract::{Query, State};
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use std::collections::BTreeMap;

pub fn router(state: &AppState) -> Router<AppState> {
    Router::new()
        .route("/audit", get(list))
        .route_layer(from_fn_with_state(state.clone(), auth::admin))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    limit: Option<String>,
    after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/audit",
    tag = "audit",
    security(("admin_token" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"),
        ("after" = Option<i64>, Query, minimum = 0, description = "The last id of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of the audit log, oldest first", body = Vec<Entry>),
        (status = 400, description = "A bad or unknown query parameter", body = ErrorBody),
        (status = 401, description = "No admin token, or a wrong one", body = ErrorBody),
        (status = 403, description = "A client token: this route takes the admin token", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn list(
    State(state): State<AppState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Vec<Entry>>, ApiError> {
    let query: AuditQuery = super::parse_query(query)?;
    let limit = super::parse_limit(query.limit.as_deref())?;
    let after = query
        .after
        .as_deref()
        .map(|a| {
            a.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_request("after", "must be an entry's id: a whole number, 0 or more")
            })
        })
        .transpose()?;
    Ok(Json(audit::list(&state.pool, after, limit).await?))
}
