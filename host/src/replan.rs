//! What could not be planned, kept until it is: (user, event type) pairs
//! whose plugin failed, whose delivery's successor could not be planned, or
//! whose user changed on a replica that does not have the type. Every
//! replica that has a type works through that type's pairs (`Replanner`),
//! with backoff for pairs whose plugin keeps failing.

use crate::plugin::Registry;
use crate::scheduler;
use sqlx::{PgConnection, PgPool};
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// A pair whose planning failed, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replan {
    pub user_id: Uuid,
    pub event_type: String,
    pub reason: String,
}

impl Replan {
    pub fn failed(user_id: Uuid, event_type: &str, reason: impl Into<String>) -> Self {
        Self {
            user_id,
            event_type: event_type.to_string(),
            reason: reason.into(),
        }
    }
}

/// Why a pair waits for another replica.
pub const NOT_LOADED_HERE: &str = "the type is not loaded on the replica that took the change";

/// Records pairs whose planning failed, to plan again: each failure counts
/// one more attempt and waits `5 s · 2^(attempts−1)` (at most an hour)
/// before the next try. The first few are logged with their user.
pub async fn record(conn: &mut PgConnection, replans: &[Replan]) -> sqlx::Result<u64> {
    // One row per pair (ON CONFLICT may touch a row once per statement), in
    // key order so concurrent writers lock in the same order.
    let unique: BTreeMap<(Uuid, &str), &Replan> = replans
        .iter()
        .map(|r| ((r.user_id, r.event_type.as_str()), r))
        .collect();
    if unique.is_empty() {
        return Ok(0);
    }
    let users: Vec<Uuid> = unique.keys().map(|(u, _)| *u).collect();
    let types: Vec<&str> = unique.keys().map(|(_, t)| *t).collect();
    let reasons: Vec<&str> = unique.values().map(|r| r.reason.as_str()).collect();
    for reason in unique.values().take(10) {
        tracing::warn!(user_id = %reason.user_id, event_type = %reason.event_type, reason = %reason.reason, "could not plan; recorded to plan again");
    }
    Ok(sqlx::query(
        "INSERT INTO replans (user_id, event_type, reason, attempts, run_at) \
         SELECT r.user_id, r.event_type, r.reason, 1, now() + interval '5 seconds' \
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS r(user_id, event_type, reason) \
         ON CONFLICT (user_id, event_type) DO UPDATE SET \
             reason = EXCLUDED.reason, \
             attempts = replans.attempts + 1, \
             run_at = now() + least(interval '1 hour', \
                 interval '5 seconds' * power(2, least(replans.attempts, 12))), \
             updated_at = now()",
    )
    .bind(&users)
    .bind(&types)
    .bind(&reasons)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Forgets the pairs of `event_type` for these users: they were planned.
pub async fn resolve(
    conn: &mut PgConnection,
    event_type: &str,
    user_ids: &[Uuid],
) -> sqlx::Result<u64> {
    if user_ids.is_empty() {
        return Ok(0);
    }
    Ok(
        sqlx::query("DELETE FROM replans WHERE event_type = $1 AND user_id = ANY($2)")
            .bind(event_type)
            .bind(user_ids)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// Forgets one user's pairs of the types that were just planned for them.
pub async fn resolve_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    event_types: &[String],
) -> sqlx::Result<u64> {
    if event_types.is_empty() {
        return Ok(0);
    }
    Ok(
        sqlx::query("DELETE FROM replans WHERE user_id = $1 AND event_type = ANY($2)")
            .bind(user_id)
            .bind(event_types)
            .execute(conn)
            .await?
            .rows_affected(),
    )
}

/// After a user changed on this replica: records the types the fleet has
/// but this replica has not loaded (live in the fleet's registry, or the
/// user has live events of them), for a replica that has them.
pub async fn record_types_loaded_elsewhere(
    conn: &mut PgConnection,
    user_id: Uuid,
    loaded_here: &[String],
) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "INSERT INTO replans (user_id, event_type, reason) \
         SELECT $1, t.event_type, $3 FROM ( \
             SELECT name AS event_type FROM event_types WHERE deleted_at IS NULL \
             UNION SELECT event_type FROM events \
                   WHERE user_id = $1 AND status IN ('pending', 'processing')) t \
         WHERE t.event_type <> ALL($2) \
         ORDER BY t.event_type \
         ON CONFLICT (user_id, event_type) DO UPDATE SET \
             reason = EXCLUDED.reason, run_at = now(), updated_at = now()",
    )
    .bind(user_id)
    .bind(loaded_here)
    .bind(NOT_LOADED_HERE)
    .execute(conn)
    .await?
    .rows_affected())
}

/// `record_types_loaded_elsewhere` for users created in this transaction
/// (an import batch): they have no events yet, so only the types live in the
/// fleet's registry that this replica has not loaded are recorded.
pub async fn record_types_loaded_elsewhere_for_new_users(
    conn: &mut PgConnection,
    user_ids: &[Uuid],
    loaded_here: &[String],
) -> sqlx::Result<u64> {
    if user_ids.is_empty() {
        return Ok(0);
    }
    Ok(sqlx::query(
        "INSERT INTO replans (user_id, event_type, reason) \
         SELECT u.id, t.event_type, $3 \
         FROM unnest($1::uuid[]) AS u(id) \
         CROSS JOIN (SELECT name AS event_type FROM event_types \
                     WHERE deleted_at IS NULL AND name <> ALL($2)) t \
         ORDER BY u.id, t.event_type \
         ON CONFLICT (user_id, event_type) DO UPDATE SET \
             reason = EXCLUDED.reason, run_at = now(), updated_at = now()",
    )
    .bind(user_ids)
    .bind(loaded_here)
    .bind(NOT_LOADED_HERE)
    .execute(conn)
    .await?
    .rows_affected())
}

/// Pairs waiting to be planned, by event type (for `GET /event-types` and
/// `/metrics`).
pub async fn waiting_by_type(pool: &PgPool) -> sqlx::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_type, count(*) FROM replans GROUP BY event_type")
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().collect())
}

/// Takes up to `limit` pairs of these types that are due, and holds them for
/// `hold` (their `run_at` moves on) so another replica does not take them
/// meanwhile; a replica that dies holding them lets them come back then.
async fn take_due(
    pool: &PgPool,
    types: &[String],
    limit: i64,
    hold: Duration,
) -> sqlx::Result<Vec<(Uuid, String)>> {
    sqlx::query_as(
        "WITH due AS MATERIALIZED ( \
             SELECT user_id, event_type FROM replans \
             WHERE event_type = ANY($1) AND run_at <= now() \
             ORDER BY run_at LIMIT $2 FOR UPDATE SKIP LOCKED) \
         UPDATE replans r SET run_at = now() + make_interval(secs => $3) \
         FROM due WHERE r.user_id = due.user_id AND r.event_type = due.event_type \
         RETURNING r.user_id, r.event_type",
    )
    .bind(types)
    .bind(limit)
    .bind(hold.as_secs_f64())
    .fetch_all(pool)
    .await
}

/// Works through the pairs of the types this replica has loaded.
#[derive(Clone)]
pub struct Replanner {
    pool: PgPool,
    registry: Arc<Registry>,
    every: Duration,
}

/// Pairs one step takes at most.
const BATCH: i64 = 200;
/// How long a replica holds the pairs it took before another may take them.
const HOLD: Duration = Duration::from_secs(120);

impl Replanner {
    pub fn new(pool: PgPool, registry: Arc<Registry>, every: Duration) -> Self {
        Self {
            pool,
            registry,
            every,
        }
    }

    /// One step: plans the due pairs of the loaded types. Returns how many
    /// pairs it took.
    pub async fn run_once(&self) -> anyhow::Result<usize> {
        let plugins = self.registry.snapshot();
        let types: Vec<String> = plugins.keys().cloned().collect();
        if types.is_empty() {
            return Ok(0);
        }
        let taken = take_due(&self.pool, &types, BATCH, HOLD).await?;
        let mut by_type: BTreeMap<&str, BTreeSet<Uuid>> = BTreeMap::new();
        for (user_id, event_type) in &taken {
            by_type.entry(event_type).or_default().insert(*user_id);
        }
        for (event_type, users) in by_type {
            let Some(plugin) = plugins.get(event_type) else {
                continue;
            };
            let users: Vec<Uuid> = users.into_iter().collect();
            let outcome = scheduler::plan_users(&self.pool, plugin, &users).await?;
            tracing::info!(
                event_type,
                users = users.len(),
                planned = outcome.planned,
                failed = outcome.failed,
                "planned again what could not be planned before"
            );
        }
        Ok(taken.len())
    }

    /// Steps every `every` until `shutdown` resolves, which also stops a
    /// step midway (its pairs come back when their hold ends). A step that
    /// fails is logged and the next one tries again.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let step = tokio::select! {
                () = &mut shutdown => return Ok(()),
                step = self.run_once() => step,
            };
            let more = match step {
                Ok(taken) => taken as i64 == BATCH,
                Err(error) => {
                    tracing::error!(
                        error = format!("{error:#}"),
                        "planning recorded pairs failed"
                    );
                    false
                }
            };
            if more {
                continue;
            }
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(self.every) => {}
            }
        }
    }
}
