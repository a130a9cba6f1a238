//! The REST API: one router per resource, sharing `AppState`.

mod audit;
pub mod auth;
mod endpoints;
mod error;
pub mod event_types;
mod events;
mod json;
mod openapi;
mod simulate;
mod status;
mod users;

pub use error::ApiError;

use crate::event_types::EventTypes;
use crate::plugin::{Registry, Subject};
use crate::scheduler::{self, UserPlan};
use crate::supervisor::LoopState;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use error::ErrorBody;
use serde::Serialize;
use serde::de::DeserializeOwned;
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
    /// The admin and client tokens this host accepts.
    pub tokens: Arc<auth::Tokens>,
    /// The supervised background loops; `/ready` fails while one is down.
    pub loops: Arc<[Arc<LoopState>]>,
    /// Where webhooks may go: a type's `webhook_url` is checked against it.
    pub webhook_allow: Arc<crate::outbound::AllowList>,
    /// The fleet's endpoints and their health.
    pub endpoints: Arc<crate::endpoints::Endpoints>,
}

impl AppState {
    /// Plans the next occurrence of every loaded type for `subject`, off the
    /// async threads (plugin calls are CPU work with a deadline).
    pub async fn plan_for(&self, subject: Subject) -> Result<UserPlan, ApiError> {
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
    let client = Router::new()
        .merge(users::router())
        .merge(events::router())
        .merge(simulate::router())
        .route_layer(from_fn_with_state(state.clone(), auth::client));
    Router::new()
        .merge(client)
        .merge(event_types::router(&state))
        .merge(endpoints::router(&state))
        .merge(audit::router(&state))
        .route("/", get(status::page))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(|| async { ApiError::NotFound("route") })
        .method_not_allowed_fallback(|method: axum::http::Method| async move {
            ApiError::MethodNotAllowed(method)
        })
        .layer(DefaultBodyLimit::max(json::MAX_BODY))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// The body of `GET /health`.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok`: the process answers.
    status: &'static str,
}

#[utoipa::path(
    get,
    path = "/health",
    tag = "operations",
    responses((status = 200, description = "The process is up (the database is not asked)", body = Health))
)]
async fn health() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// The body of `GET /ready`, whether ready or not.
#[derive(Serialize, utoipa::ToSchema)]
struct Readiness {
    /// `ready` or `unavailable`.
    status: &'static str,
    /// `ok`, `unreachable` or `timeout`.
    database: &'static str,
    /// Each supervised loop by name: `{"running", "restarts", "last_error"}`.
    #[schema(value_type = Object)]
    loops: serde_json::Map<String, serde_json::Value>,
    /// The event types loaded on this replica.
    event_types: Vec<String>,
}

/// How long `/ready` waits for the database before answering `503`.
const READY_DATABASE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(800);

/// Ready when the database answers within `READY_DATABASE_TIMEOUT` and every
/// supervised loop runs; the body says which part is not.
#[utoipa::path(
    get,
    path = "/ready",
    tag = "operations",
    responses(
        (status = 200, description = "The database answers and every background loop runs", body = Readiness),
        (status = 503, description = "The database does not answer within 800 ms, or a loop is down", body = Readiness),
    )
)]
async fn ready(State(state): State<AppState>) -> impl IntoResponse {
    let types: Vec<String> = state.registry.snapshot().keys().cloned().collect();
    let database = match tokio::time::timeout(
        READY_DATABASE_TIMEOUT,
        sqlx::query("SELECT 1").execute(&state.pool),
    )
    .await
    {
        Ok(Ok(_)) => "ok",
        Ok(Err(error)) => {
            tracing::warn!(%error, "readiness check: database unreachable");
            "unreachable"
        }
        Err(_) => "timeout",
    };
    let loops: serde_json::Map<String, serde_json::Value> = state
        .loops
        .iter()
        .map(|l| (l.name.to_string(), l.describe()))
        .collect();
    let ready = database == "ok" && state.loops.iter().all(|l| l.is_running());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            status: if ready { "ready" } else { "unavailable" },
            database,
            loops,
            event_types: types,
        }),
    )
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    responses(
        (status = 200, description = "Prometheus text exposition format", body = String, content_type = "text/plain; version=0.0.4"),
        (status = 500, description = "The database could not be read", body = ErrorBody),
    )
)]
async fn metrics(State(state): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    // Bounded in cost whatever the table's size: a count that stops at
    // `DUE_COUNTED` on the claimer's index, and the table statistics.
    let (due, live_estimate): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM (SELECT 1 FROM events \
                 WHERE status = 'pending' AND run_at <= now() LIMIT $1) d), \
                (SELECT greatest(reltuples, 0)::bigint FROM pg_class \
                 WHERE oid = 'events'::regclass)",
    )
    .bind(crate::metrics::DUE_COUNTED)
    .fetch_one(&state.pool)
    .await?;
    let queue = crate::metrics::Queue {
        due,
        live_estimate,
        unplanned: crate::replan::waiting_by_type(&state.pool).await?,
        endpoints: state
            .endpoints
            .list()
            .await?
            .into_iter()
            .map(|e| (e.id, e.state == "disabled", e.waiting))
            .collect(),
    };
    let snapshot = state.registry.snapshot();
    Ok((
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::render(
            snapshot.values().map(|p| p.as_ref()),
            &state.event_types,
            &queue,
        ),
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
