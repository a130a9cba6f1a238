//! The REST API: one router per resource, sharing `AppState`.

mod error;
pub mod event_types;
mod events;
mod json;
mod users;

pub use error::ApiError;

use crate::event_types::EventTypes;
use crate::plugin::{Registry, Subject};
use crate::scheduler::{self, PlannedEvent};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::json;
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::sync::Arc;
use tower_http::trace::TraceLayer;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: PgPool,
    pub registry: Arc<Registry>,
    pub event_types: Arc<EventTypes>,
    /// `KAIROS_ADMIN_TOKEN`; without it the admin API answers 401.
    pub admin_token: Option<Arc<str>>,
}

impl AppState {
    /// Plans the next occurrence of every loaded type for `subject`, off the
    /// async threads (plugin calls are CPU work with a deadline).
    pub async fn plan_for(&self, subject: Subject) -> Result<Vec<PlannedEvent>, ApiError> {
        let plugins = self.registry.snapshot();
        let now = chrono::Utc::now();
        tokio::task::spawn_blocking(move || {
            scheduler::plan_for_subject(plugins.values(), &subject, now)
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(users::router())
        .merge(events::router())
        .merge(event_types::router())
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::NotFound("route") })
        .layer(DefaultBodyLimit::max(json::MAX_BODY))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let types: Vec<String> = state.registry.snapshot().keys().cloned().collect();
    match sqlx::query("SELECT 1").execute(&state.pool).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok", "event_types": types })),
        ),
        Err(error) => {
            tracing::warn!(%error, "readiness check: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(
                    json!({ "status": "unavailable", "database": "unreachable", "event_types": types }),
                ),
            )
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE status = 'pending'")
        .fetch_one(&state.pool)
        .await?;
    let snapshot = state.registry.snapshot();
    Ok((
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::render(snapshot.values().map(|p| p.as_ref()), pending),
    ))
}

/// Query parameters into `T`, unknown ones refused by name.
fn parse_query<T: DeserializeOwned>(query: BTreeMap<String, String>) -> Result<T, ApiError> {
    let value = serde_json::to_vec(&query).map_err(|e| ApiError::Internal(e.into()))?;
    json::parse(&value)
}

/// `limit`: 1 to 1000, 100 when absent.
fn parse_limit(limit: Option<&str>) -> Result<i64, ApiError> {
    match limit {
        None => Ok(users::DEFAULT_PAGE),
        Some(text) => text
            .parse::<i64>()
            .ok()
            .filter(|n| (1..=users::MAX_PAGE).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "limit",
                    format!("must be a whole number from 1 to {}", users::MAX_PAGE),
                )
            }),
    }
}
