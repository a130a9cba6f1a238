//! `/users`: people, their dates, and their events.

use super::AppState;
use super::error::{ApiError, ErrorBody};
use super::json::{self, ValidJson, ValidPath};
use crate::audit::{self, Actor};
use crate::import::{self, ImportError, ImportReport, LineError};
use crate::scheduler;
use crate::store::{self, Event, User, UserFields};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{NaiveDate, Utc};
use chrono_tz::Tz;
use serde::Deserialize;
use serde_json::json;
use std::collections::BTreeMap;
use uuid::Uuid;

const MAX_NAME_CHARS: usize = 200;
const MAX_KEY_CHARS: usize = 100;
const MAX_ATTRIBUTE_CHARS: usize = 10_000;
pub const DEFAULT_PAGE: i64 = 100;
pub const MAX_PAGE: i64 = 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route(
            "/users/{id}",
            get(get_user).put(replace_user).delete(delete_user),
        )
        .route("/users/{id}/events", get(list_user_events))
        .route(
            "/users/import",
            // Streamed: the 1 MiB body limit is for whole bodies; an import
            // bounds each line instead.
            post(import_users).layer(DefaultBodyLimit::disable()),
        )
}

/// A user as a client sends it (create and full replacement).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "first_name": "Ada", "last_name": "Lovelace", "timezone": "Europe/London",
    "dates": {"birthday": "1815-12-10"}, "attributes": {"email": "ada@example.com"}
}))]
pub struct UserInput {
    /// 1 to 200 characters after trimming, no control characters.
    #[schema(min_length = 1, max_length = 200)]
    first_name: String,
    /// 1 to 200 characters after trimming, no control characters.
    #[schema(min_length = 1, max_length = 200)]
    last_name: String,
    /// An IANA timezone name, such as `Europe/London`.
    timezone: String,
    /// Named dates (`YYYY-MM-DD`, existing, not after today in `timezone`).
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, NaiveDate>)]
    dates: BTreeMap<String, String>,
    /// Free-form string attributes (keys 1 to 100 characters with no
    /// control characters; values up to 10,000 characters, any but U+0000).
    #[serde(default)]
    attributes: BTreeMap<String, String>,
}

impl UserInput {
    /// Applies every rule; the first broken one names its field.
    pub fn validate(self) -> Result<UserFields, ApiError> {
        let first_name = validate_name("first_name", &self.first_name)?;
        let last_name = validate_name("last_name", &self.last_name)?;
        let tz: Tz = self.timezone.parse().map_err(|_| {
            ApiError::invalid(
                "timezone",
                format!(
                    "unknown timezone {:?}: use an IANA name such as Europe/London",
                    self.timezone
                ),
            )
        })?;
        let today = Utc::now().with_timezone(&tz).date_naive();
        let mut dates = BTreeMap::new();
        for (key, value) in &self.dates {
            let field = format!("dates.{key}");
            validate_key(&field, key)?;
            let date = parse_date(value).ok_or_else(|| {
                ApiError::invalid(
                    &field,
                    format!("{value:?} is not a date that exists (YYYY-MM-DD)"),
                )
            })?;
            if date > today {
                return Err(ApiError::invalid(
                    &field,
                    format!("{value} is in the future (today is {today} in {tz})"),
                ));
            }
            dates.insert(key.clone(), date);
        }
        for (key, value) in &self.attributes {
            let field = format!("attributes.{key}");
            validate_key(&field, key)?;
            if value.chars().count() > MAX_ATTRIBUTE_CHARS {
                return Err(ApiError::invalid(
                    field,
                    format!("longer than {MAX_ATTRIBUTE_CHARS} characters"),
                ));
            }
            // PostgreSQL's jsonb cannot hold U+0000; every other character,
            // line breaks included, is the client's to keep.
            if value.contains('\0') {
                return Err(ApiError::invalid(
                    field,
                    "must not contain the NUL character (U+0000)",
                ));
            }
        }
        Ok(UserFields {
            first_name,
            last_name,
            timezone: self.timezone,
            dates,
            attributes: self.attributes,
        })
    }
}

fn validate_name(field: &str, value: &str) -> Result<String, ApiError> {
    let trimmed = value.trim();
    let chars = trimmed.chars().count();
    if chars == 0 {
        return Err(ApiError::invalid(field, "must not be empty"));
    }
    if chars > MAX_NAME_CHARS {
        return Err(ApiError::invalid(
            field,
            format!("longer than {MAX_NAME_CHARS} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            "must not contain control characters",
        ));
    }
    Ok(trimmed.to_string())
}

fn validate_key(field: &str, key: &str) -> Result<(), ApiError> {
    if key.is_empty() || key.chars().count() > MAX_KEY_CHARS || key.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            field,
            format!("keys are 1 to {MAX_KEY_CHARS} characters with no control characters"),
        ));
    }
    Ok(())
}

/// Strict `YYYY-MM-DD` of a date that exists.
fn parse_date(value: &str) -> Option<NaiveDate> {
    let bytes = value.as_bytes();
    let shape_ok = bytes.len() == 10
        && bytes[4] == b'-'
        && bytes[7] == b'-'
        && bytes
            .iter()
            .enumerate()
            .all(|(i, b)| i == 4 || i == 7 || b.is_ascii_digit());
    shape_ok
        .then(|| NaiveDate::parse_from_str(value, "%Y-%m-%d").ok())
        .flatten()
}

pub fn parse_id(field: &str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(text)
        .map_err(|_| ApiError::bad_request(field, format!("{text:?} is not a UUID")))
}

#[utoipa::path(
    post,
    path = "/users",
    tag = "users",
    security(("client_token" = []), ("admin_token" = [])),
    request_body(content = UserInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Created; its events are planned", body = User),
        (status = 400, description = "Malformed input: bad JSON, an unknown field, a wrong type, or an id that is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB", body = ErrorBody),
        (status = 422, description = "A rule is broken: unknown timezone, a date that does not exist or is in the future, an empty or over-long name", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn create_user(
    State(state): State<AppState>,
    actor: Actor,
    ValidJson(input): ValidJson<UserInput>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let fields = input.validate()?;
    let id = Uuid::new_v4();
    let plan = state.plan_for(fields.subject(id)).await?;
    let mut tx = state.pool.begin().await?;
    let user = store::insert_user(&mut tx, id, &fields).await?;
    scheduler::schedule_new_user(&mut tx, id, &plan).await?;
    audit::record(&mut tx, &actor, "user.create", &id.to_string(), json!({})).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// One line of `POST /users/import`: a `POST /users` body, parsed and
/// validated by the same rules, its error naming the same field.
fn parse_import_line(line: &[u8]) -> Result<UserFields, LineError> {
    json::parse::<UserInput>(line)
        .and_then(UserInput::validate)
        .map_err(|e| LineError {
            field: e.field().map(str::to_string),
            error: e.to_string(),
        })
}

/// Content types an import body may be sent as (or none).
const NDJSON_TYPES: [&str; 3] = [
    "application/x-ndjson",
    "application/jsonl",
    "application/x-jsonlines",
];

#[utoipa::path(
    post,
    path = "/users/import",
    tag = "users",
    security(("client_token" = []), ("admin_token" = [])),
    request_body(
        description = "NDJSON: one `POST /users` body per line, streamed; no size limit (`application/jsonl` and `application/x-jsonlines` are accepted too, and so is no content type)",
        content(
            (String = "application/x-ndjson"),
            (String = "application/jsonl"),
        ),
    ),
    responses(
        (status = 200, description = "Good lines imported, bad lines reported with their number", body = ImportReport),
        (status = 400, description = "Another content type, or the body could not be read", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn import_users(
    State(state): State<AppState>,
    actor: Actor,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ImportReport>, ApiError> {
    if let Some(value) = headers.get(header::CONTENT_TYPE) {
        let essence = value
            .to_str()
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase();
        if !NDJSON_TYPES.contains(&essence.as_str()) {
            return Err(ApiError::bad_request(
                "content-type",
                format!(
                    "an import body is NDJSON (one POST /users body per line): send it as application/x-ndjson, not {value:?}"
                ),
            ));
        }
    }
    let report = import::import_users(
        &state.pool,
        &state.registry,
        body.into_data_stream(),
        parse_import_line,
        &actor,
    )
    .await
    .map_err(|e| match e {
        ImportError::Body(_) => ApiError::bad_request("body", e.to_string()),
        other => ApiError::Internal(other.into()),
    })?;
    Ok(Json(report))
}

#[utoipa::path(
    put,
    path = "/users/{id}",
    tag = "users",
    security(("client_token" = []), ("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    request_body(content = UserInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced; pending events are recomputed", body = User),
        (status = 400, description = "Malformed input: bad JSON, an unknown field, a wrong type, or an id that is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 413, description = "The body is over 1 MiB", body = ErrorBody),
        (status = 422, description = "A rule is broken: unknown timezone, a date that does not exist or is in the future, an empty or over-long name", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn replace_user(
    State(state): State<AppState>,
    actor: Actor,
    ValidPath(id): ValidPath<String>,
    ValidJson(input): ValidJson<UserInput>,
) -> Result<Json<User>, ApiError> {
    let id = parse_id("id", &id)?;
    let fields = input.validate()?;
    // Planned before the transaction: no plugin runs while the user is locked.
    let plan = state.plan_for(fields.subject(id)).await?;
    let mut tx = state.pool.begin().await?;
    let user = store::update_user(&mut tx, id, &fields)
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    scheduler::reschedule_user(&mut tx, id, &plan).await?;
    audit::record(&mut tx, &actor, "user.update", &id.to_string(), json!({})).await?;
    tx.commit().await?;
    Ok(Json(user))
}

#[utoipa::path(
    get,
    path = "/users/{id}",
    tag = "users",
    security(("client_token" = []), ("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user", body = User),
        (status = 400, description = "Malformed input: bad JSON, an unknown field, a wrong type, or an id that is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn get_user(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<String>,
) -> Result<Json<User>, ApiError> {
    let id = parse_id("id", &id)?;
    store::get_user(&state.pool, id)
        .await?
        .map(Json)
        .ok_or(ApiError::NotFound("user"))
}

#[utoipa::path(
    delete,
    path = "/users/{id}",
    tag = "users",
    security(("client_token" = []), ("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 204, description = "Deleted; pending events are cancelled"),
        (status = 400, description = "Malformed input: bad JSON, an unknown field, a wrong type, or an id that is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn delete_user(
    State(state): State<AppState>,
    actor: Actor,
    ValidPath(id): ValidPath<String>,
) -> Result<StatusCode, ApiError> {
    let id = parse_id("id", &id)?;
    let mut tx = state.pool.begin().await?;
    if !store::delete_user(&mut tx, id).await? {
        return Err(ApiError::NotFound("user"));
    }
    audit::record(&mut tx, &actor, "user.delete", &id.to_string(), json!({})).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    limit: Option<String>,
    after: Option<String>,
}

#[utoipa::path(
    get,
    path = "/users",
    tag = "users",
    security(("client_token" = []), ("admin_token" = [])),
    params(
        ("limit" = Option<i64>, Query, minimum = 1, maximum = 1000, description = "Page size, default 100"),
        ("after" = Option<Uuid>, Query, description = "The last id of the previous page"),
    ),
    responses(
        (status = 200, description = "A page of users ordered by id", body = Vec<User>),
        (status = 400, description = "A bad or unknown query parameter", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn list_users(
    State(state): State<AppState>,
    Query(query): Query<BTreeMap<String, String>>,
) -> Result<Json<Vec<User>>, ApiError> {
    let query: PageQuery = super::parse_query(query)?;
    let limit = super::parse_limit(query.limit.as_deref())?;
    let after = query
        .after
        .as_deref()
        .map(|a| parse_id("after", a))
        .transpose()?;
    Ok(Json(store::list_users(&state.pool, after, limit).await?))
}

#[utoipa::path(
    get,
    path = "/users/{id}/events",
    tag = "users",
    security(("client_token" = []), ("admin_token" = [])),
    params(("id" = Uuid, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The user's events", body = Vec<Event>),
        (status = 400, description = "Malformed input: bad JSON, an unknown field, a wrong type, or an id that is not a UUID", body = ErrorBody),
        (status = 401, description = "No token, or one this host does not accept", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
        (status = 500, description = "Unexpected failure (logged, not shown)", body = ErrorBody),
    )
)]
pub(super) async fn list_user_events(
    State(state): State<AppState>,
    ValidPath(id): ValidPath<String>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let id = parse_id("id", &id)?;
    if store::get_user(&state.pool, id).await?.is_none() {
        return Err(ApiError::NotFound("user"));
    }
    Ok(Json(store::list_user_events(&state.pool, id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_must_be_strict_and_exist() {
        assert_eq!(
            parse_date("2000-02-29"),
            NaiveDate::from_ymd_opt(2000, 2, 29)
        );
        for bad in [
            "2001-02-29",
            "2000-2-29",
            "2000-02-30",
            "20000-01-01",
            "2000/02/01",
            "",
            "2000-13-01",
        ] {
            assert_eq!(parse_date(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_trimmed_and_bounded_in_characters_not_bytes() {
        assert_eq!(validate_name("first_name", "  Ada ").unwrap(), "Ada");
        assert!(validate_name("first_name", &"é".repeat(200)).is_ok());
        assert!(validate_name("first_name", &"é".repeat(201)).is_err());
        assert!(validate_name("first_name", "   ").is_err());
        assert!(validate_name("first_name", "A\u{0007}da").is_err());
    }
}
