//! `/event-types`: the loaded types (open to all), and the admin API that
//! uploads, replaces and unloads them (admin token, `auth::admin`).

use super::error::{ApiError, ErrorBody};
use super::json::ValidPath;
use super::{AppState, auth};
use crate::ahead::preview;
use crate::audit::Actor;
use crate::event_types::{Change, UploadError};
use crate::outbound::{self, AllowList};
use crate::plugin::{LoadedPlugin, PluginConfig, PluginFile, PluginSource, valid_type_name};
use crate::{fleet, replan};
use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::from_fn_with_state;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// Largest component accepted by `PUT /event-types/{name}`.
pub const MAX_COMPONENT: usize = 32 << 20;

pub fn router(state: &AppState) -> Router<AppState> {
    let admin = put(upload)
        .delete(unload)
        .layer(DefaultBodyLimit::max(MAX_COMPONENT))
        .route_layer(from_fn_with_state(state.clone(), auth::admin));
    Router::new()
        .route("/event-types", get(list))
        .route("/event-types/{name}", get(show).merge(admin))
}

/// The schema of a type's entry, as `describe` and `FleetView::describe`
/// build it: never constructed, it is what the OpenAPI document shows.
#[allow(dead_code)]
#[derive(serde::Serialize, utoipa::ToSchema)]
#[schema(as = EventType)]
pub(super) struct EventTypeEntry {
    name: String,
    /// `describe().version` of the component.
    version: String,
    description: String,
    /// The subject's dates the type needs.
    dates: Vec<String>,
    /// SHA-256 of the component, hex.
    sha256: String,
    loaded_at: chrono::DateTime<chrono::Utc>,
    config: BTreeMap<String, String>,
    #[schema(required = true)]
    webhook_url: Option<String>,
    /// `{"kind": "directory" | "upload" | "file", "file": name or null}`.
    #[schema(value_type = Object)]
    source: Value,
    /// `{"status": "ok" | "failing", "calls", "failures",
    /// "consecutive_failures", "recent_calls", "recent_failures",
    /// "last_error", "unplanned"}`.
    #[schema(value_type = Object)]
    health: Value,
    /// The generation this replica serves.
    #[schema(required = true)]
    generation: Option<i64>,
    /// The fleet's registry row and what each replica serves:
    /// `{"generation", "sha256", "version", "changed_at", "changed_by", "replicas": [...]}`.
    #[schema(value_type = Object)]
    fleet: Value,
    /// The type's latest scheduling pass, or null.
    #[schema(value_type = Option<Object>, required = true)]
    pass: Value,
}

/// What `PUT /event-types/{name}` answers `200` with: the type's entry, or
/// for a dry run the preview. Never constructed; for the OpenAPI document.
#[allow(dead_code, clippy::large_enum_variant)]
#[derive(serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub(super) enum PutAnswer {
    Loaded(EventTypeEntry),
    DryRun(preview::Preview),
}

/// A line of a streamed dry run: one of its keys. Never constructed.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
pub(super) struct PreviewLine {
    /// `{"users_read", "users_total"}`, after each batch of users.
    #[schema(value_type = Option<Object>)]
    progress: Option<Value>,
    /// The last line when it succeeds.
    preview: Option<preview::Preview>,
    /// The last line when it fails part-way.
    error: Option<String>,
}

/// A component's bytes, as the OpenAPI document shows a binary body.
#[allow(dead_code)]
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub(super) struct ComponentBytes(Vec<u8>);

/// A loaded type as `GET /event-types` shows it.
pub fn describe(plugin: &LoadedPlugin) -> Value {
    let health = &plugin.health;
    let (recent_failures, recent_calls) = health.recent_failures();
    json!({
        "name": plugin.info.name,
        "version": plugin.info.version,
        "description": plugin.info.description,
        "dates": plugin.info.dates,
        "sha256": plugin.sha256,
        "loaded_at": plugin.loaded_at,
        "config": plugin.config,
        "webhook_url": plugin.webhook_url,
        // Kind and file name only: the unauthenticated list does not show
        // the host's directory layout.
        "source": source(&plugin.source),
        "health": {
            "status": if health.failing() { "failing" } else { "ok" },
            "calls": health.calls.load(Ordering::Relaxed),
            "failures": health.failures.load(Ordering::Relaxed),
            "consecutive_failures": health.consecutive_failures.load(Ordering::Relaxed),
            "recent_calls": recent_calls,
            "recent_failures": recent_failures,
            "last_error": *health.last_error.lock().unwrap_or_else(|e| e.into_inner()),
        },
    })
}

fn source(source: &PluginSource) -> Value {
    let (kind, path) = match source {
        PluginSource::Directory(p) => ("directory", Some(p)),
        PluginSource::Upload => ("upload", None),
        PluginSource::File(p) => ("file", Some(p)),
    };
    json!({
        "kind": kind,
        "file": path.and_then(|p| p.file_name()).map(|f| f.to_string_lossy()),
    })
}

/// What the fleet knows, read once per request: the registry's rows, the
/// passes, the replicas and the pairs waiting to be planned again.
struct FleetView {
    rows: BTreeMap<String, fleet::TypeRow>,
    passes: BTreeMap<String, fleet::PassStatus>,
    replicas: Vec<fleet::Replica>,
    waiting: BTreeMap<String, i64>,
}

impl FleetView {
    async fn read(state: &AppState) -> Result<Self, ApiError> {
        let pool = &state.pool;
        Ok(Self {
            rows: fleet::rows(pool)
                .await?
                .into_iter()
                .map(|row| (row.name.clone(), row))
                .collect(),
            passes: fleet::passes(pool).await?,
            replicas: fleet::replicas(pool).await?,
            waiting: replan::waiting_by_type(pool).await?,
        })
    }

    /// A type served here, with the generation served, the fleet's view
    /// of it (the registry's generation, what each replica serves) and its
    /// scheduling pass.
    fn describe(&self, state: &AppState, plugin: &LoadedPlugin) -> Value {
        let name = plugin.name();
        let mut entry = describe(plugin);
        entry["health"]["unplanned"] = json!(self.waiting.get(name).copied().unwrap_or(0));
        entry["generation"] = json!(state.event_types.generation(name));
        let replicas: Vec<Value> = self
            .replicas
            .iter()
            .map(|replica| {
                let serving = replica.serving.get(name);
                json!({
                    "id": replica.id,
                    "host": replica.host,
                    "stale": replica.stale,
                    "heartbeat_at": replica.heartbeat_at,
                    "generation": serving.and_then(|s| s.generation),
                    "sha256": serving.and_then(|s| s.sha256.clone()),
                    "error": serving.and_then(|s| s.error.clone()),
                })
            })
            .collect();
        let row = self.rows.get(name);
        entry["fleet"] = json!({
            "generation": row.map(|r| r.generation),
            "sha256": row.map(|r| &r.sha256),
            "version": row.map(|r| &r.version),
            "changed_at": row.map(|r| r.changed_at),
            "changed_by": row.map(|r| r.source),
            "replicas": replicas,
        });
        entry["pass"] = json!(self.passes.get(name));
        entry
    }
}

#[utoipa::path(
    get,
    path = "/event-types",
    tag = "event-types",
    responses(
        (status = 200, description = "The types loaded on this replica", body = Vec<EventTypeEntry>),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Vec<Value>>, ApiError> {
    let view = FleetView::read(&state).await?;
    Ok(Json(
        state
            .registry
            .snapshot()
            .values()
            .map(|p| view.describe(&state, p))
            .collect(),
    ))
}

#[utoipa::path(
    get,
    path = "/event-types/{name}",
    tag = "event-types",
    params(("name" = String, Path, description = "The type's name: 1 to 64 of a-z, 0-9, - and _")),
    responses(
        (status = 200, description = "The type", body = EventTypeEntry),
        (status = 404, description = "No such type loaded here", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn show(
    State(state): State<AppState>,
    ValidPath(name): ValidPath<String>,
) -> Result<Json<Value>, ApiError> {
    let plugin = state
        .registry
        .get(&name)
        .ok_or(ApiError::NotFound("event type"))?;
    let view = FleetView::read(&state).await?;
    Ok(Json(view.describe(&state, &plugin)))
}

#[utoipa::path(
    put,
    path = "/event-types/{name}",
    tag = "event-types",
    security(("admin_token" = [])),
    params(
        ("name" = String, Path, description = "The type's name; must equal the component's `describe().name`"),
        ("config.{KEY}" = Option<String>, Query, description = "One config setting each, `config.send_at=09:00`: together the type's whole config"),
        ("webhook_url" = Option<String>, Query, description = "Where this type's webhooks go; refused unless its addresses are allowed (KAIROS_WEBHOOK_ALLOW)"),
        ("dry_run" = Option<bool>, Query, description = "true: check and compile as usual, then answer what loading it would change for every user (a Preview), loading, writing and cancelling nothing. With Accept: application/x-ndjson, progress lines come first"),
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "With dry_run=true: at most this many entries in changes, default 100"),
    ),
    request_body(
        description = "The WebAssembly component (at most 32 MiB)",
        content((ComponentBytes = "application/wasm"), (ComponentBytes = "application/octet-stream")),
    ),
    responses(
        (status = 201, description = "Loaded as a new type; scheduled for every user who has its dates", body = EventTypeEntry),
        (status = 200, description = "Replaced the type; pending events are recomputed. With dry_run=true: the Preview, nothing changed", content(
            (PutAnswer = "application/json"),
            (PreviewLine = "application/x-ndjson"),
        )),
        (status = 400, description = "A bad component, name, query parameter, content type or webhook_url", body = ErrorBody),
        (status = 401, description = "No admin token, or a wrong one", body = ErrorBody),
        (status = 403, description = "A client token: this route takes the admin token", body = ErrorBody),
        (status = 413, description = "The component is over 32 MiB", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn upload(
    State(state): State<AppState>,
    actor: Actor,
    ValidPath(name): ValidPath<String>,
    Query(query): Query<BTreeMap<String, String>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    check_name(&name)?;
    let (dry_run, query) = dry_run_from_query(query)?;
    let settings = settings_from_query(query)?;
    if let Some(url) = &settings.webhook_url {
        check_webhook_url(&state.webhook_allow, url).await?;
    }
    if let Some(kind) = headers.get(header::CONTENT_TYPE) {
        let kind = kind.to_str().unwrap_or("");
        if !matches!(
            kind.split(';').next().unwrap_or("").trim(),
            "application/wasm" | "application/octet-stream"
        ) {
            return Err(ApiError::bad_request(
                "content-type",
                format!("the body must be a component sent as application/wasm, not {kind:?}"),
            ));
        }
    }
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge {
                limit: MAX_COMPONENT,
            }
        } else {
            ApiError::BadRequest {
                field: Some("body".into()),
                message: e.body_text(),
            }
        }
    })?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "body",
            "the body must be a WebAssembly component (application/wasm); it is empty",
        ));
    }
    if let Some(limit) = dry_run {
        return preview(state, &name, body.to_vec(), settings, limit, &headers).await;
    }
    match state
        .event_types
        .upload(&name, body.to_vec(), settings, &actor)
        .await
    {
        Ok((change, plugin)) => {
            let status = match change {
                Change::Added => StatusCode::CREATED,
                Change::Replaced => StatusCode::OK,
            };
            let view = FleetView::read(&state).await?;
            Ok((status, Json(view.describe(&state, &plugin))).into_response())
        }
        Err(UploadError::Invalid(reason)) => Err(ApiError::bad_request("body", reason)),
        Err(UploadError::Internal(e)) => Err(ApiError::Internal(e)),
    }
}

#[utoipa::path(
    delete,
    path = "/event-types/{name}",
    tag = "event-types",
    security(("admin_token" = [])),
    params(("name" = String, Path, description = "The type's name: 1 to 64 of a-z, 0-9, - and _")),
    responses(
        (status = 204, description = "Unloaded; its pending events are cancelled"),
        (status = 401, description = "No admin token, or a wrong one", body = ErrorBody),
        (status = 403, description = "A client token: this route takes the admin token", body = ErrorBody),
        (status = 404, description = "No such type", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn unload(
    State(state): State<AppState>,
    actor: Actor,
    ValidPath(name): ValidPath<String>,
) -> Result<StatusCode, ApiError> {
    match state.event_types.unload(&name, &actor).await? {
        Some(_) => Ok(StatusCode::NO_CONTENT),
        None => Err(ApiError::NotFound("event type")),
    }
}

fn check_name(name: &str) -> Result<(), ApiError> {
    if valid_type_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "name",
            "a type name is 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit",
        ))
    }
}

/// A type's webhook must go where delivery may send: checked now, as far as
/// DNS says today, so the operator hears of it at once (delivery checks
/// again at every send).
async fn check_webhook_url(allow: &AllowList, url: &str) -> Result<(), ApiError> {
    const RESOLVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(5);
    let parsed = reqwest::Url::parse(url)
        .map_err(|e| ApiError::bad_request("webhook_url", format!("not a URL: {e}")))?;
    match tokio::time::timeout(RESOLVE_WITHIN, outbound::check_url(&parsed, allow)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(refused)) => Err(ApiError::bad_request("webhook_url", refused.to_string())),
        Err(_) => Err(ApiError::bad_request(
            "webhook_url",
            format!("its host did not resolve within {RESOLVE_WITHIN:?}"),
        )),
    }
}

/// `dry_run=true` (with `limit`, 1 to 1000) taken out of the query: the
/// limit of a dry run, or `None` for a real upload.
fn dry_run_from_query(
    mut query: BTreeMap<String, String>,
) -> Result<(Option<usize>, BTreeMap<String, String>), ApiError> {
    let dry_run = match query.remove("dry_run").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::bad_request(
                "dry_run",
                format!("must be true or false, not {other:?}"),
            ));
        }
    };
    let limit = match query.remove("limit") {
        None => preview::DEFAULT_LIMIT,
        Some(_) if !dry_run => {
            return Err(ApiError::bad_request(
                "limit",
                "limit applies to a dry run (dry_run=true) only",
            ));
        }
        Some(text) => text
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=preview::MAX_LIMIT).contains(n))
            .ok_or_else(|| {
                ApiError::bad_request(
                    "limit",
                    format!("must be a whole number from 1 to {}", preview::MAX_LIMIT),
                )
            })?,
    };
    Ok((dry_run.then_some(limit), query))
}

/// A dry run: the candidate is compiled and checked as an upload would be,
/// then compared with the live type for every user (`ahead::preview`).
/// With `Accept: application/x-ndjson` the answer is a stream: a
/// `{"progress": {"users_read", "users_total"}}` line per batch, then
/// `{"preview": {...}}` (or `{"error": "..."}` should it fail part-way).
async fn preview(
    state: AppState,
    name: &str,
    bytes: Vec<u8>,
    settings: PluginFile,
    limit: usize,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    let candidate = match state
        .event_types
        .load_candidate(name, bytes, settings)
        .await
    {
        Ok((candidate, _)) => candidate,
        Err(UploadError::Invalid(reason)) => return Err(ApiError::bad_request("body", reason)),
        Err(UploadError::Internal(e)) => return Err(ApiError::Internal(e)),
    };
    let live = state.registry.get(name);
    let streamed = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if !streamed {
        let preview = preview::run(&state.pool, live, candidate, limit, |_| {}).await?;
        return Ok(Json(preview).into_response());
    }
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Value>();
    tokio::spawn(async move {
        let progress = tx.clone();
        let line = match preview::run(&state.pool, live, candidate, limit, move |p| {
            let _ = progress.send(json!({ "progress": p }));
        })
        .await
        {
            Ok(preview) => json!({ "preview": preview }),
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), "a dry run failed part-way");
                json!({ "error": "the dry run failed part-way; the host's log says why" })
            }
        };
        let _ = tx.send(line);
    });
    let lines = futures::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut bytes = serde_json::to_vec(&line).expect("a line serialises");
        bytes.push(b'\n');
        Some((Ok::<_, std::convert::Infallible>(Bytes::from(bytes)), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(lines),
    )
        .into_response())
}

/// `?config.KEY=VALUE…` is the type's whole config; nothing else is accepted.
fn settings_from_query(query: BTreeMap<String, String>) -> Result<PluginFile, ApiError> {
    let mut config = PluginConfig::new();
    let mut webhook_url = None;
    for (key, value) in query {
        if key == "webhook_url" {
            // Parsed and checked by `check_webhook_url`.
            webhook_url = Some(value);
        } else if let Some(name) = key.strip_prefix("config.").filter(|k| !k.is_empty()) {
            config.insert(name.to_string(), value);
        } else {
            return Err(ApiError::bad_request(
                key,
                "unknown query parameter; use config.KEY=VALUE or webhook_url",
            ));
        }
    }
    Ok(PluginFile {
        config,
        webhook_url,
    })
}
