//! The lease protocol: the only SQL that touches a claimed event. Claim due
//! events under a lease, give leases back (expired or at shutdown), and
//! record a batch of outcomes with each finished event's successor.
//!
//! Every write about a claimed event checks its `lease_id`, so a host that
//! lost its lease (it was too slow, or presumed dead) drops its result and
//! the event is delivered again under the same id.

use crate::replan::{self, Replan};
use crate::store::{self, PlannedEvent, User};
use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use sqlx::types::Json;
use sqlx::{FromRow, PgPool};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// An event this host holds a lease on.
#[derive(Debug, Clone, FromRow)]
pub struct ClaimedEvent {
    pub id: Uuid,
    pub user_id: Uuid,
    pub event_type: String,
    pub occurrence: NaiveDateTime,
    pub timezone: String,
    pub due_at: DateTime<Utc>,
    /// Attempts including this one.
    pub attempts: i32,
    pub attempts_before_retry: i32,
    pub lease_id: Uuid,
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeliveryOutcome {
    Delivered,
    /// A retryable failure with attempts left: pending again at `run_at`.
    Retry {
        error: String,
        run_at: DateTime<Utc>,
    },
    /// Given up: a non-retryable failure or attempts exhausted.
    Failed {
        error: String,
    },
    /// Nothing to deliver to any more (the user was deleted).
    Cancelled {
        reason: String,
    },
    /// Not attempted: the type was unloaded here after the claim. The event
    /// goes back to `pending` as it was, for a replica that has the type.
    Released,
    /// Its endpoint fails everything (or is disabled): the event waits,
    /// `pending` again at `run_at` with this attempt not counted.
    Held {
        error: String,
        run_at: DateTime<Utc>,
    },
}

impl DeliveryOutcome {
    /// Whether the occurrence is over, so its series needs the next one.
    pub fn finishes_occurrence(&self) -> bool {
        matches!(self, Self::Delivered | Self::Failed { .. })
    }
}

/// The next occurrence of a finished event's series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Successor {
    /// The event did not finish (retry, released, cancelled).
    NotNeeded,
    /// Planned from the user as they were at `user_version` (`updated_at`).
    Planned {
        plan: PlannedEvent,
        user_version: DateTime<Utc>,
    },
    /// The type answered that the series has no further occurrence.
    End,
    /// Could not be planned here: recorded, and planned later by a replica
    /// that has the type (`replan`).
    Replan { reason: String },
}

#[derive(Debug, Clone)]
pub struct Completion {
    pub event: ClaimedEvent,
    pub outcome: DeliveryOutcome,
    pub successor: Successor,
    /// The version of the type whose plugin formatted this attempt's message
    /// (the body's `event_type_version`), stored on the event; `None` when
    /// the attempt got no message, which leaves the stored one as it was.
    pub event_type_version: Option<String>,
    /// What the attempt told about its endpoint; `None` when nothing was sent.
    pub attempted: Option<crate::endpoints::Attempted>,
    /// The attempt for the event's attempt log; `None` when no attempt was
    /// made (given back, the user gone, held by an endpoint's pause).
    pub attempt: Option<AttemptRecord>,
}

/// One delivery attempt as `GET /events/{id}/attempts` shows it, written
/// with its outcome (`complete`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at: DateTime<Utc>,
    /// The replica that made it.
    pub replica: Uuid,
    /// The HTTP status, when one came back.
    pub status: Option<u16>,
    pub latency: Duration,
    /// The target resolved to an address not allowed: no connection made.
    pub refused: bool,
}

impl AttemptRecord {
    /// What the attempt log says became of it; `None` for an outcome that
    /// is not an attempt's.
    fn outcome(&self, outcome: &DeliveryOutcome) -> Option<&'static str> {
        Some(match outcome {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retry { .. } | DeliveryOutcome::Held { .. } => "retry",
            DeliveryOutcome::Failed { .. } if self.refused => "refused",
            DeliveryOutcome::Failed { .. } => "failed",
            DeliveryOutcome::Cancelled { .. } | DeliveryOutcome::Released => return None,
        })
    }
}

/// A claimed event with its user as the claim read them: everything a
/// delivery needs, with no further query. `None` when the user is gone.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub event: ClaimedEvent,
    pub user: Option<User>,
}

#[derive(FromRow)]
struct ClaimRow {
    #[sqlx(flatten)]
    event: ClaimedEvent,
    first_name: Option<String>,
    last_name: Option<String>,
    user_timezone: Option<String>,
    dates: Option<Json<BTreeMap<String, NaiveDate>>>,
    attributes: Option<Json<BTreeMap<String, String>>>,
    user_created_at: Option<DateTime<Utc>>,
    user_updated_at: Option<DateTime<Utc>>,
}

impl ClaimRow {
    fn into_claimed(self) -> Claimed {
        let user = match (
            self.first_name,
            self.last_name,
            self.user_timezone,
            self.dates,
            self.attributes,
            self.user_created_at,
            self.user_updated_at,
        ) {
            (
                Some(first_name),
                Some(last_name),
                Some(timezone),
                Some(Json(dates)),
                Some(Json(attributes)),
                Some(created_at),
                Some(updated_at),
            ) => Some(User {
                id: self.event.user_id,
                first_name,
                last_name,
                timezone,
                dates,
                attributes,
                created_at,
                updated_at,
            }),
            _ => None,
        };
        Claimed {
            event: self.event,
            user,
        }
    }
}

/// The claim: due events of the given types ($4), oldest first, up to $1,
/// under lease $2 for $3 seconds, each with its user. It reads `events`
/// only, never the history.
pub const CLAIM: &str = "WITH due AS MATERIALIZED ( \
             SELECT id FROM events \
             WHERE status = 'pending' AND run_at <= now() AND event_type = ANY($4) \
             ORDER BY run_at \
             LIMIT $1 \
             FOR UPDATE SKIP LOCKED), \
         claimed AS ( \
             UPDATE events e SET status = 'processing', attempts = e.attempts + 1, \
                 lease_id = $2, lease_until = now() + make_interval(secs => $3), \
                 updated_at = now() \
             FROM due WHERE e.id = due.id \
             RETURNING e.id, e.user_id, e.event_type, e.occurrence, e.timezone, e.due_at, \
                 e.attempts, e.attempts_before_retry, e.lease_id) \
         SELECT c.*, u.first_name, u.last_name, u.timezone AS user_timezone, u.dates, \
             u.attributes, u.created_at AS user_created_at, u.updated_at AS user_updated_at \
         FROM claimed c LEFT JOIN users u ON u.id = c.user_id \
         ORDER BY c.due_at";

/// Claims up to `limit` due events of the given types, oldest first, under a
/// fresh lease, each with its user read in the same statement. Only types
/// this host has loaded are claimed: an event of a type it lacks is left for
/// a replica that has it.
pub async fn claim_due_events(
    pool: &PgPool,
    limit: usize,
    lease: Duration,
    types: &[String],
) -> sqlx::Result<Vec<Claimed>> {
    if types.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<ClaimRow> = sqlx::query_as(CLAIM)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(Uuid::new_v4())
        .bind(lease.as_secs_f64())
        .bind(types)
        .fetch_all(pool)
        .await?;
    crate::metrics::claim_batch(rows.len());
    Ok(rows.into_iter().map(ClaimRow::into_claimed).collect())
}

/// Returns events whose lease expired (their host died) to `pending`, to be
/// delivered again under the same id, hence the same idempotency key.
pub async fn release_expired_leases(pool: &PgPool) -> sqlx::Result<u64> {
    Ok(sqlx::query(
        "UPDATE events SET status = 'pending', run_at = now(), lease_id = NULL, \
         lease_until = NULL, updated_at = now() \
         WHERE status = 'processing' AND lease_until < now()",
    )
    .execute(pool)
    .await?
    .rows_affected())
}

/// Gives back leases this host holds but will not complete (shutdown): the
/// events are `pending` again at once, to be delivered under the same id.
pub async fn release_leases(pool: &PgPool, events: &[(Uuid, Uuid)]) -> sqlx::Result<u64> {
    let ids: Vec<Uuid> = events.iter().map(|(id, _)| *id).collect();
    let leases: Vec<Uuid> = events.iter().map(|(_, lease)| *lease).collect();
    Ok(sqlx::query(
        "UPDATE events e SET status = 'pending', run_at = now(), \
         lease_id = NULL, lease_until = NULL, updated_at = now() \
         FROM unnest($1::uuid[], $2::uuid[]) AS r(id, lease_id) \
         WHERE e.id = r.id AND e.lease_id = r.lease_id AND e.status = 'processing'",
    )
    .bind(&ids)
    .bind(&leases)
    .execute(pool)
    .await?
    .rows_affected())
}

/// How long until the earliest pending event of the given types may run, by
/// the database's clock; `None` when none is pending.
pub async fn time_until_next_run(
    pool: &PgPool,
    types: &[String],
) -> sqlx::Result<Option<Duration>> {
    let seconds: Option<f64> = sqlx::query_scalar(
        "SELECT EXTRACT(EPOCH FROM (min(run_at) - clock_timestamp()))::float8 \
         FROM events WHERE status = 'pending' AND event_type = ANY($1)",
    )
    .bind(types)
    .fetch_one(pool)
    .await?;
    Ok(seconds.map(|s| Duration::from_secs_f64(s.max(0.0))))
}

/// Records outcomes where this host still holds the lease (a lost lease
/// drops the result), and in the same transaction writes each finished
/// event's successor, or the record that it must be planned later. No plugin
/// runs here: successors were planned during delivery, so the transaction is
/// a few statements whatever the plugins do.
pub async fn complete(pool: &PgPool, completions: &[Completion]) -> anyhow::Result<()> {
    if completions.is_empty() {
        return Ok(());
    }
    // A scheduling pass inserting the same next occurrences may deadlock
    // with the batch.
    Ok(store::retry_transient("recording outcomes", || complete_once(pool, completions)).await?)
}

/// Records finished outcomes: the events leave `events` for the history.
/// An outcome with no `event_type_version` (no message was made) keeps the
/// event's, as `AGAIN` does. The attempt that finished the event is kept on
/// its history row (`attempt_*`; its error is `last_error` unless
/// delivered), not as a row of `event_attempts`: most events finish at their
/// first attempt, and a row and index entry of their own per delivery cost
/// 8 % of the delivery rate.
const FINISH: &str = "WITH c AS ( \
        SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::text[], \
            $6::timestamptz[], $7::uuid[], $8::smallint[], $9::int[], $10::text[]) \
        AS c(id, lease_id, status, error, version, a_at, a_replica, a_status, a_latency, \
            a_outcome)), \
    finished AS ( \
        DELETE FROM events e USING c \
        WHERE e.id = c.id AND e.lease_id = c.lease_id AND e.status = 'processing' \
        RETURNING e.*, c.status AS outcome, c.error AS outcome_error, \
            c.version AS outcome_version, c.a_at, c.a_replica, c.a_status, c.a_latency, \
            c.a_outcome) \
    INSERT INTO event_history (id, user_id, event_type, occurrence, timezone, due_at, \
        run_at, status, attempts, attempts_before_retry, last_error, lease_id, \
        lease_until, delivered_at, created_at, updated_at, event_type_version, \
        attempt_at, attempt_replica, attempt_status, attempt_latency_ms, attempt_outcome) \
    SELECT id, user_id, event_type, occurrence, timezone, due_at, run_at, outcome, \
        attempts, attempts_before_retry, \
        CASE WHEN outcome = 'delivered' THEN last_error ELSE outcome_error END, \
        NULL, NULL, CASE WHEN outcome = 'delivered' THEN now() END, created_at, now(), \
        coalesce(outcome_version, event_type_version), \
        a_at, a_replica, a_status, a_latency, a_outcome \
    FROM finished \
    RETURNING id";

/// Records outcomes that leave an event pending (retried, given back).
///
/// A held event whose attempt was sent (its endpoint is disabled or fails
/// everything) is logged as an attempt to retry, though its count is given
/// back: the log records what the receiver saw.
const AGAIN: &str = "WITH again AS ( \
        UPDATE events e SET \
            status = 'pending', \
            attempts = e.attempts - (c.status IN ('released', 'held'))::int, \
            last_error = CASE WHEN c.status = 'released' THEN e.last_error ELSE c.error END, \
            run_at = coalesce(c.run_at, e.run_at), \
            event_type_version = coalesce(c.version, e.event_type_version), \
            lease_id = NULL, lease_until = NULL, updated_at = now() \
        FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[], \
            $6::text[], $7::timestamptz[], $8::uuid[], $9::smallint[], $10::int[], \
            $11::text[]) \
            AS c(id, lease_id, status, error, run_at, version, a_at, a_replica, a_status, \
                a_latency, a_outcome) \
        WHERE e.id = c.id AND e.lease_id = c.lease_id AND e.status = 'processing' \
        RETURNING e.id, e.due_at, c.error, c.a_at, c.a_replica, c.a_status, c.a_latency, \
            c.a_outcome), \
    attempts AS ( \
        INSERT INTO event_attempts (event_id, due_at, at, replica, status, latency_ms, error, \
            outcome) \
        SELECT id, due_at, a_at, a_replica, a_status, a_latency, error, a_outcome \
        FROM again WHERE a_outcome IS NOT NULL) \
    SELECT id FROM again";

/// Outcomes as the arrays one statement binds.
#[derive(Default)]
struct Outcomes<'a> {
    ids: Vec<Uuid>,
    leases: Vec<Uuid>,
    statuses: Vec<&'a str>,
    errors: Vec<Option<&'a str>>,
    run_ats: Vec<Option<DateTime<Utc>>>,
    versions: Vec<Option<&'a str>>,
    /// The attempt log's columns; `outcome` is `None` for no attempt.
    attempt_ats: Vec<Option<DateTime<Utc>>>,
    attempt_replicas: Vec<Option<Uuid>>,
    attempt_statuses: Vec<Option<i16>>,
    attempt_latencies: Vec<Option<i32>>,
    attempt_outcomes: Vec<Option<&'static str>>,
}

async fn complete_once(pool: &PgPool, completions: &[Completion]) -> sqlx::Result<()> {
    let n = completions.len();
    // Finished events leave `events` for the history; the others (retried,
    // given back) stay. Each statement gets only its own events, and is not
    // sent when it has none.
    let mut finished = Outcomes::default();
    let mut again = Outcomes::default();
    for c in completions {
        let (status, error, run_at) = match &c.outcome {
            DeliveryOutcome::Delivered => ("delivered", None, None),
            DeliveryOutcome::Retry { error, run_at } => {
                ("pending", Some(error.as_str()), Some(*run_at))
            }
            DeliveryOutcome::Failed { error } => ("failed", Some(error.as_str()), None),
            DeliveryOutcome::Cancelled { reason } => ("cancelled", Some(reason.as_str()), None),
            DeliveryOutcome::Released => ("released", None, None),
            DeliveryOutcome::Held { error, run_at } => {
                ("held", Some(error.as_str()), Some(*run_at))
            }
        };
        let into = if matches!(status, "pending" | "released" | "held") {
            &mut again
        } else {
            &mut finished
        };
        into.ids.push(c.event.id);
        into.leases.push(c.event.lease_id);
        into.statuses.push(status);
        into.errors.push(error);
        into.run_ats.push(run_at);
        into.versions.push(c.event_type_version.as_deref());
        let attempt = c
            .attempt
            .as_ref()
            .and_then(|a| Some((a, a.outcome(&c.outcome)?)));
        into.attempt_ats.push(attempt.map(|(a, _)| a.at));
        into.attempt_replicas.push(attempt.map(|(a, _)| a.replica));
        into.attempt_statuses
            .push(attempt.and_then(|(a, _)| a.status.map(|s| s as i16)));
        into.attempt_latencies
            .push(attempt.map(|(a, _)| i32::try_from(a.latency.as_millis()).unwrap_or(i32::MAX)));
        into.attempt_outcomes
            .push(attempt.map(|(_, outcome)| outcome));
    }

    let mut tx = pool.begin().await?;
    let finished_users: Vec<Uuid> = completions
        .iter()
        .filter(|c| c.outcome.finishes_occurrence())
        .map(|c| c.event.user_id)
        .collect();
    // Locked so no user change commits between the check below and the
    // successors' insert.
    let versions = store::lock_user_versions(&mut tx, &finished_users).await?;

    // A finished event (delivered, failed, cancelled) leaves `events` for
    // the history in this transaction; one retried or given back stays.
    let mut applied: Vec<Uuid> = Vec::with_capacity(n);
    if !finished.ids.is_empty() {
        applied.extend(
            sqlx::query_scalar::<_, Uuid>(FINISH)
                .bind(&finished.ids)
                .bind(&finished.leases)
                .bind(&finished.statuses)
                .bind(&finished.errors)
                .bind(&finished.versions)
                .bind(&finished.attempt_ats)
                .bind(&finished.attempt_replicas)
                .bind(&finished.attempt_statuses)
                .bind(&finished.attempt_latencies)
                .bind(&finished.attempt_outcomes)
                .fetch_all(&mut *tx)
                .await?,
        );
    }
    if !again.ids.is_empty() {
        applied.extend(
            sqlx::query_scalar::<_, Uuid>(AGAIN)
                .bind(&again.ids)
                .bind(&again.leases)
                .bind(&again.statuses)
                .bind(&again.errors)
                .bind(&again.run_ats)
                .bind(&again.versions)
                .bind(&again.attempt_ats)
                .bind(&again.attempt_replicas)
                .bind(&again.attempt_statuses)
                .bind(&again.attempt_latencies)
                .bind(&again.attempt_outcomes)
                .fetch_all(&mut *tx)
                .await?,
        );
    }
    if applied.len() < n {
        tracing::warn!(
            lost = n - applied.len(),
            "dropped outcomes of events whose lease this host no longer holds"
        );
    }

    let applied: std::collections::HashSet<Uuid> = applied.into_iter().collect();
    let mut plans = Vec::new();
    let mut replans = Vec::new();
    for c in completions.iter().filter(|c| applied.contains(&c.event.id)) {
        // A user that is gone needs nothing; one changed since delivery read
        // it was rescheduled by that change, which saw this event as due.
        let Some(version) = versions.get(&c.event.user_id) else {
            continue;
        };
        match &c.successor {
            Successor::Planned { plan, user_version } if user_version == version => {
                plans.push(plan.clone());
            }
            Successor::Replan { reason } => replans.push(Replan::failed(
                c.event.user_id,
                &c.event.event_type,
                format!("next occurrence after {}: {reason}", c.event.id),
            )),
            Successor::Planned { .. } | Successor::End | Successor::NotNeeded => {}
        }
    }
    store::insert_planned(&mut tx, &plans).await?;
    replan::record(&mut tx, &replans).await?;
    tx.commit().await?;
    Ok(())
}
