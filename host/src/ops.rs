//! Operational webhooks: the fleet tells `KAIROS_OPS_WEBHOOK_URL` when an
//! endpoint is disabled or enabled, a replica goes stale, or a type fails
//! for more than 1 % of its users in a pass.
//!
//! A change is written to `ops_events` by the statement that makes it (or
//! that first sees it), under a key that names the change, so however many
//! replicas see it the change is told once. Any replica with the URL set
//! sends what is unsent — taken with `FOR UPDATE SKIP LOCKED`, held while it
//! is sent — signed like every webhook (`webhook-id` is the row's id, the
//! same on every attempt), through the same allow list, and retried with
//! the delivery retry policy until `KAIROS_MAX_ATTEMPTS`.

use crate::delivery::RetryPolicy;
use crate::outbound::{self, AllowList};
use crate::signing;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// How often a sender looks for unsent messages.
const POLL: Duration = Duration::from_millis(500);
/// Messages taken by one look.
const BATCH: i64 = 20;
/// How long a taken message is held from the other replicas: longer than
/// a send may take.
const HOLD: Duration = Duration::from_secs(60);
/// A message that could not be sent for this long is given up: an alert
/// from yesterday is noise, and a newly set URL does not get a backlog.
const GIVE_UP_AFTER: &str = "1 day";
/// A type fails "for more than 1 % of users" in a pass.
const FAILING_SHARE: f64 = 0.01;

#[derive(Debug, Clone)]
pub struct OpsSettings {
    pub url: reqwest::Url,
    pub signing_key: Option<Vec<u8>>,
    pub retry: RetryPolicy,
    pub allow: Arc<AllowList>,
    pub timeout: Duration,
}

/// A message as the ops receiver gets it.
#[derive(Debug, Serialize)]
struct Message<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    at: DateTime<Utc>,
    detail: &'a Value,
}

/// Notes every replica whose heartbeat is three of its own periods old: one
/// `replica.stale` per silence (keyed by its last heartbeat; a replica that
/// comes back and goes silent again is told again). A replica that left
/// with a goodbye has no row, and is not stale.
pub async fn note_stale_replicas(pool: &PgPool) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO ops_events (id, key, type, detail) \
         SELECT gen_random_uuid(), \
             'replica.stale:' || id || ':' || extract(epoch FROM heartbeat_at), \
             'replica.stale', \
             jsonb_build_object('replica', id, 'host', host, 'heartbeat_at', heartbeat_at, \
                 'heartbeat_ms', heartbeat_ms) \
         FROM replicas \
         WHERE heartbeat_at < now() - heartbeat_ms * $1 * interval '1 millisecond' \
         ON CONFLICT (key) DO NOTHING",
    )
    .bind(crate::fleet::MISSED_HEARTBEATS as i32)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Notes a pass of `event_type` at `generation` that ended with the type
/// failing for more than 1 % of `users`: once per generation, fleet-wide.
/// `failing` counts the users it fails on now (the fleet's replans).
pub async fn note_type_failing(
    pool: &PgPool,
    event_type: &str,
    generation: i64,
    users: i64,
) -> sqlx::Result<bool> {
    // A pair waiting only for a replica with the type has no attempts.
    let failing: i64 =
        sqlx::query_scalar("SELECT count(*) FROM replans WHERE event_type = $1 AND attempts > 0")
            .bind(event_type)
            .fetch_one(pool)
            .await?;
    if users == 0 || (failing as f64) <= FAILING_SHARE * users as f64 {
        return Ok(false);
    }
    let inserted = sqlx::query(
        "INSERT INTO ops_events (id, key, type, detail) \
         VALUES (gen_random_uuid(), $1, 'type.failing', $2) ON CONFLICT (key) DO NOTHING",
    )
    .bind(format!("type.failing:{event_type}:{generation}"))
    .bind(sqlx::types::Json(json!({
        "event_type": event_type,
        "generation": generation,
        "users": users,
        "failing": failing,
    })))
    .execute(pool)
    .await?
    .rows_affected();
    if inserted > 0 {
        tracing::warn!(
            event_type,
            generation,
            users,
            failing,
            "type failing: its plugin failed for more than 1 % of users in a pass"
        );
    }
    Ok(inserted > 0)
}

/// One unsent message, taken.
#[derive(sqlx::FromRow)]
struct Taken {
    id: Uuid,
    #[sqlx(rename = "type")]
    kind: String,
    at: DateTime<Utc>,
    detail: sqlx::types::Json<Value>,
    attempts: i32,
}

/// Sends unsent messages until `shutdown`.
pub async fn run(
    pool: PgPool,
    settings: OpsSettings,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let client = outbound::client_builder(settings.allow.clone())
        .timeout(settings.timeout)
        .build()?;
    tokio::pin!(shutdown);
    loop {
        send_due(&pool, &client, &settings).await?;
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(POLL) => {}
        }
    }
}

/// Takes the unsent messages that are due and sends each once; returns how
/// many were sent.
pub async fn send_due(
    pool: &PgPool,
    client: &reqwest::Client,
    settings: &OpsSettings,
) -> anyhow::Result<usize> {
    let taken: Vec<Taken> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE ops_events SET next_at = now() + make_interval(secs => $1), \
             attempts = attempts + 1 \
         WHERE id IN (SELECT id FROM ops_events \
             WHERE sent_at IS NULL AND next_at <= now() AND attempts < $2 \
               AND at > now() - interval '{GIVE_UP_AFTER}' \
             ORDER BY at LIMIT $3 FOR UPDATE SKIP LOCKED) \
         RETURNING id, type, at, detail, attempts"
    )))
    .bind(HOLD.as_secs_f64())
    .bind(settings.retry.max_attempts as i32)
    .bind(BATCH)
    .fetch_all(pool)
    .await?;
    let mut sent = 0;
    for message in taken {
        match send(client, settings, &message).await {
            Ok(()) => {
                sqlx::query(
                    "UPDATE ops_events SET sent_at = now(), last_error = NULL WHERE id = $1",
                )
                .bind(message.id)
                .execute(pool)
                .await?;
                sent += 1;
            }
            Err(error) => {
                let delay = settings.retry.backoff(message.attempts.max(1) as u32);
                tracing::warn!(
                    id = %message.id,
                    kind = message.kind,
                    attempts = message.attempts,
                    error,
                    "operational webhook not delivered; retried later"
                );
                sqlx::query(
                    "UPDATE ops_events SET last_error = $2, \
                         next_at = now() + make_interval(secs => $3) WHERE id = $1",
                )
                .bind(message.id)
                .bind(&error)
                .bind(delay.as_secs_f64())
                .execute(pool)
                .await?;
            }
        }
    }
    Ok(sent)
}

/// One attempt at one message: `Err` with what went wrong (no URL
/// credentials or query in it).
async fn send(
    client: &reqwest::Client,
    settings: &OpsSettings,
    message: &Taken,
) -> Result<(), String> {
    outbound::check_literal(&settings.url, &settings.allow).map_err(|e| e.to_string())?;
    let body = serde_json::to_vec(&Message {
        kind: &message.kind,
        at: message.at,
        detail: &message.detail,
    })
    .expect("a message serialises");
    let id = message.id.to_string();
    let timestamp = Utc::now().timestamp();
    let mut request = client
        .post(settings.url.clone())
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &id)
        .header("webhook-timestamp", timestamp.to_string());
    if let Some(key) = &settings.signing_key {
        request = request.header(
            "webhook-signature",
            signing::sign(key, &id, timestamp, &body),
        );
    }
    let response = request
        .body(body)
        .send()
        .await
        .map_err(outbound::describe_send_error)?;
    let status = response.status();
    if status.is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {status}"))
    }
}
