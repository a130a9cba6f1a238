//! The partition keeper: finished events (`event_history`) and delivery
//! attempts (`event_attempts`) are partitioned by the event's `due_at`, one
//! partition per UTC day. The keeper creates each day's partition a few days
//! ahead, and drops whole days once they are older than `KAIROS_RETENTION`,
//! so history never needs a long `DELETE` nor leaves bloat behind. It also
//! trims the audit log (and the operational webhooks) to
//! `KAIROS_AUDIT_RETENTION`.
//!
//! Its own code rather than `pg_partman`: the work is three statements per
//! day, it runs on the embedded cluster and any PostgreSQL without an
//! extension to install, and it knows what `pg_partman` cannot: a day whose
//! attempts belong to an event still pending is kept (retention never
//! touches a pending event, nor what is on record of it).
//!
//! One replica of the fleet keeps the partitions at a time (a session
//! advisory lock); the others skip the pass.

use chrono::{DateTime, Days, NaiveDate, Utc};
use sqlx::{AssertSqlSafe, Connection, PgConnection, PgPool};
use std::time::Duration;

/// The tables partitioned by day. Each has a `<table>_default` partition
/// for rows no day holds yet.
pub const TABLES: [&str; 2] = ["event_history", "event_attempts"];

/// Days ahead of today whose partitions exist, so that the day's finished
/// events never land in the default partition.
pub const DAYS_AHEAD: u64 = 3;

/// How often a replica runs the keeper.
pub const EVERY: Duration = Duration::from_secs(3600);

/// The session advisory lock one keeper holds (`"kairos-k"` as bytes).
const LOCK: i64 = 0x6b61_6972_6f73_2d6b;

#[derive(Debug, Clone, Copy)]
pub struct RetentionSettings {
    /// Finished events and their attempts are kept this long after `due_at`.
    pub retention: Duration,
    /// Audit entries are kept this long.
    pub audit_retention: Duration,
}

/// What one pass did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Partitions created (`event_history_p20261204`, …).
    pub created: Vec<String>,
    /// Partitions dropped as past retention.
    pub dropped: Vec<String>,
    /// Partitions past retention kept because an event still pending has
    /// attempts in them.
    pub held: Vec<String>,
    /// Rows moved from a default partition into the day created for them.
    pub moved: u64,
    /// Rows past retention found in a default partition (finished events
    /// of a day that had no partition) and deleted.
    pub stragglers: u64,
    /// Audit entries past `KAIROS_AUDIT_RETENTION` deleted.
    pub audit_deleted: u64,
}

/// A day's partition of `table`.
pub fn partition_name(table: &str, day: NaiveDate) -> String {
    format!("{table}_p{}", day.format("%Y%m%d"))
}

/// The day a partition of `table` holds, from its name.
fn day_of(table: &str, partition: &str) -> Option<NaiveDate> {
    let digits = partition.strip_prefix(table)?.strip_prefix("_p")?;
    NaiveDate::parse_from_str(digits, "%Y%m%d").ok()
}

/// The first instant of `day`, UTC, as a SQL literal.
fn bound(day: NaiveDate) -> String {
    format!("'{} 00:00:00+00'", day.format("%Y-%m-%d"))
}

/// Runs one pass as of `now`, unless another replica's keeper is running
/// (then `None`). Each partition is its own transaction: a pass cut short
/// leaves every day whole, and the next pass goes on.
pub async fn keep(
    pool: &PgPool,
    now: DateTime<Utc>,
    settings: RetentionSettings,
) -> anyhow::Result<Option<Kept>> {
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(None);
    }
    let kept = keep_locked(&mut conn, now, settings).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK)
        .execute(&mut *conn)
        .await;
    if unlocked.is_err() {
        // The lock lives as long as the session: close it rather than
        // return it to the pool holding the lock.
        conn.detach().close().await.ok();
    }
    kept.map(Some)
}

async fn keep_locked(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    settings: RetentionSettings,
) -> anyhow::Result<Kept> {
    let mut kept = Kept::default();
    let cutoff =
        now - chrono::Duration::from_std(settings.retention).unwrap_or(chrono::Duration::MAX / 2);
    // A day is dropped when all of it is past the cutoff; the day the
    // cutoff falls in is kept whole.
    let first_kept = cutoff.date_naive();
    let last = now.date_naive() + Days::new(DAYS_AHEAD);
    for table in TABLES {
        let existing = partitions(conn, table).await?;
        let mut day = first_kept;
        while day <= last {
            if !existing.contains(&day) {
                kept.moved += create_partition(conn, table, day).await?;
                kept.created.push(partition_name(table, day));
            }
            day = day + Days::new(1);
        }
        for day in existing.into_iter().filter(|d| *d < first_kept) {
            let name = partition_name(table, day);
            if table == "event_attempts" && pending_due_on(conn, day).await? {
                kept.held.push(name);
                continue;
            }
            drop_partition(conn, &name).await?;
            kept.dropped.push(name);
        }
        kept.stragglers += delete_stragglers(conn, table, first_kept, cutoff).await?;
    }
    kept.audit_deleted =
        sqlx::query("DELETE FROM audit_log WHERE at < $1::timestamptz - make_interval(secs => $2)")
            .bind(now)
            .bind(settings.audit_retention.as_secs_f64())
            .execute(&mut *conn)
            .await?
            .rows_affected();
    // Operational webhooks are kept as long as the audit log.
    sqlx::query("DELETE FROM ops_events WHERE at < $1::timestamptz - make_interval(secs => $2)")
        .bind(now)
        .bind(settings.audit_retention.as_secs_f64())
        .execute(&mut *conn)
        .await?;
    if !kept.created.is_empty() || !kept.dropped.is_empty() || kept.stragglers > 0 {
        tracing::info!(
            created = kept.created.len(),
            dropped = ?kept.dropped,
            held = ?kept.held,
            moved = kept.moved,
            stragglers = kept.stragglers,
            "kept history partitions"
        );
    }
    Ok(kept)
}

/// Keeps the partitions every `EVERY` until `shutdown` resolves. A failed
/// pass is logged and tried again at the next turn: until then finished
/// events land in the default partition, and nothing is lost.
pub async fn run(
    pool: PgPool,
    settings: RetentionSettings,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tokio::pin!(shutdown);
    loop {
        if let Err(error) = keep(&pool, Utc::now(), settings).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "keeping history partitions failed"
            );
        }
        tokio::select! {
            _ = &mut shutdown => return Ok(()),
            _ = tokio::time::sleep(EVERY) => {}
        }
    }
}

/// The days `table` has a partition for.
async fn partitions(conn: &mut PgConnection, table: &str) -> sqlx::Result<Vec<NaiveDate>> {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
         WHERE i.inhparent = $1::regclass",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await?;
    let mut days: Vec<NaiveDate> = names.iter().filter_map(|n| day_of(table, n)).collect();
    days.sort();
    Ok(days)
}

/// Creates `day`'s partition of `table`, moving into it the rows the
/// default partition holds for that day; returns how many moved. The table
/// is locked against writes (not reads) for the moment it takes: an insert
/// routed before the attach would land in the default partition and fail
/// its new constraint, and one that waited on the lock routes by the new
/// partitions.
async fn create_partition(
    conn: &mut PgConnection,
    table: &str,
    day: NaiveDate,
) -> sqlx::Result<u64> {
    let name = partition_name(table, day);
    let next = day + Days::new(1);
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '10s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(AssertSqlSafe(format!(
        "LOCK TABLE {table} IN EXCLUSIVE MODE"
    )))
    .execute(&mut *tx)
    .await?;
    sqlx::query(AssertSqlSafe(format!(
        "CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
    )))
    .execute(&mut *tx)
    .await?;
    let moved = sqlx::query(AssertSqlSafe(format!(
        "WITH moved AS (DELETE FROM {table}_default WHERE due_at >= {from} AND due_at < {to} \
         RETURNING *) INSERT INTO {name} SELECT * FROM moved",
        from = bound(day),
        to = bound(next),
    )))
    .execute(&mut *tx)
    .await?
    .rows_affected();
    sqlx::query(AssertSqlSafe(format!(
        "ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM ({}) TO ({})",
        bound(day),
        bound(next)
    )))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(moved)
}

async fn drop_partition(conn: &mut PgConnection, name: &str) -> sqlx::Result<()> {
    let mut tx = conn.begin().await?;
    sqlx::query("SET LOCAL lock_timeout = '10s'")
        .execute(&mut *tx)
        .await?;
    sqlx::query(AssertSqlSafe(format!("DROP TABLE {name}")))
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Whether an event still to be delivered is due on `day` (its attempts,
/// if any, are in that day's partition).
async fn pending_due_on(conn: &mut PgConnection, day: NaiveDate) -> sqlx::Result<bool> {
    let from = day.and_time(chrono::NaiveTime::MIN).and_utc();
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM events WHERE due_at >= $1 AND due_at < $1 + interval '1 day')",
    )
    .bind(from)
    .fetch_one(&mut *conn)
    .await
}

/// Deletes from `table`'s default partition the rows due before
/// `first_kept` that were also written before `cutoff`: finished events of
/// a day that had no partition when they finished (delivered more than a
/// retention late, or history from before partitioning). A backlog event
/// due a year ago and delivered a minute ago stays on record for a whole
/// retention; attempts of an event still pending stay.
async fn delete_stragglers(
    conn: &mut PgConnection,
    table: &str,
    first_kept: NaiveDate,
    cutoff: DateTime<Utc>,
) -> sqlx::Result<u64> {
    let written = if table == "event_attempts" {
        "d.at < $1 AND NOT EXISTS (SELECT 1 FROM events e WHERE e.id = d.event_id)"
    } else {
        "d.updated_at < $1"
    };
    Ok(sqlx::query(AssertSqlSafe(format!(
        "DELETE FROM {table}_default d WHERE d.due_at < {} AND {written}",
        bound(first_kept)
    )))
    .bind(cutoff)
    .execute(&mut *conn)
    .await?
    .rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_partition_name_gives_back_its_day() {
        let day = NaiveDate::from_ymd_opt(2026, 12, 4).unwrap();
        let name = partition_name("event_history", day);
        assert_eq!(name, "event_history_p20261204");
        assert_eq!(day_of("event_history", &name), Some(day));
        assert_eq!(day_of("event_attempts", &name), None);
        assert_eq!(day_of("event_history", "event_history_default"), None);
        assert_eq!(bound(day), "'2026-12-04 00:00:00+00'");
    }
}
