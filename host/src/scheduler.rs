//! Generation: ask each event type for a user's next occurrence in local wall
//! time, turn it into a UTC due time, and write it as a pending event. What a
//! plugin could not plan is recorded to plan again (`replan`), never dropped.

use crate::plugin::{LoadedPlugin, PluginError, Subject};
use crate::replan::{self, Replan};
use crate::{fleet, store};
use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use uuid::Uuid;

pub use crate::store::PlannedEvent;

/// The UTC instant of a local wall time in `tz`. A time inside a DST gap moves
/// forward by the length of the gap; an ambiguous time takes the earlier instant.
pub fn local_to_utc(local: NaiveDateTime, tz: Tz) -> DateTime<Utc> {
    match tz.from_local_datetime(&local).earliest() {
        Some(t) => t.with_timezone(&Utc),
        None => {
            // In a gap: read the wall time with the offset in force just before it.
            let before = tz
                .offset_from_utc_datetime(&(local - Duration::days(1)))
                .fix();
            (local - Duration::seconds(i64::from(before.local_minus_utc()))).and_utc()
        }
    }
}

/// The local wall time in `tz` at `instant`.
pub fn utc_to_local(instant: DateTime<Utc>, tz: Tz) -> NaiveDateTime {
    instant.with_timezone(&tz).naive_local()
}

/// Parses a stored timezone name; names are validated on the way in.
pub fn parse_tz(name: &str) -> Option<Tz> {
    name.parse().ok()
}

/// The next occurrence of `plugin` for `subject` strictly after the local time
/// `after`; `Ok(None)` when the type does not apply or has no further occurrence.
pub fn plan_next(
    plugin: &LoadedPlugin,
    subject: &Subject,
    after: NaiveDateTime,
) -> Result<Option<PlannedEvent>, PluginError> {
    if !plugin.applies_to(subject) {
        return Ok(None);
    }
    let Some(tz) = parse_tz(&subject.timezone) else {
        return Ok(None);
    };
    Ok(plugin
        .next_occurrence(subject, after)?
        .map(|occurrence| PlannedEvent {
            user_id: subject.id,
            event_type: plugin.name().to_string(),
            occurrence,
            timezone: subject.timezone.clone(),
            due_at: local_to_utc(occurrence, tz),
        }))
}

/// The next occurrence after the subject's local time at `now`.
pub fn plan_next_after_now(
    plugin: &LoadedPlugin,
    subject: &Subject,
    now: DateTime<Utc>,
) -> Result<Option<PlannedEvent>, PluginError> {
    match parse_tz(&subject.timezone) {
        Some(tz) => plan_next(plugin, subject, utc_to_local(now, tz)),
        None => Ok(None),
    }
}

/// The occurrence that follows a finished one, as delivery plans it: the
/// first after the later of the finished occurrence and the user's local
/// time `now`, so a long outage does not replay years of stale occurrences.
/// The simulation walks a series forward with this same step.
pub fn plan_successor(
    plugin: &LoadedPlugin,
    subject: &Subject,
    finished: NaiveDateTime,
    now: DateTime<Utc>,
) -> Result<Option<PlannedEvent>, PluginError> {
    match parse_tz(&subject.timezone) {
        Some(tz) => plan_next(plugin, subject, finished.max(utc_to_local(now, tz))),
        None => Ok(None),
    }
}

/// What every type loaded here answered for one user.
#[derive(Debug, Default)]
pub struct UserPlan {
    /// Every type loaded here when the plan was made.
    pub loaded: Vec<String>,
    /// The types that answered (with an occurrence or with none).
    pub answered: Vec<String>,
    pub plans: Vec<PlannedEvent>,
    /// The types whose plugin failed for this user.
    pub failures: Vec<Replan>,
}

/// Plans the next occurrence of every type in `plugins` for `subject`, after
/// the subject's local time at `now`. A plugin failure is kept in the plan's
/// `failures`, to be recorded and planned again: the user is still saved.
pub fn plan_for_subject<'a>(
    plugins: impl IntoIterator<Item = &'a Arc<LoadedPlugin>>,
    subject: &Subject,
    now: DateTime<Utc>,
) -> UserPlan {
    let mut plan = UserPlan::default();
    for plugin in plugins {
        let name = plugin.name().to_string();
        plan.loaded.push(name.clone());
        match plan_next_after_now(plugin, subject, now) {
            Ok(planned) => {
                plan.plans.extend(planned);
                plan.answered.push(name);
            }
            Err(error) => {
                crate::metrics::plugin_failure(&name);
                plan.failures
                    .push(Replan::failed(subject.id, &name, error.to_string()));
            }
        }
    }
    plan
}

/// Writes a user's plan in the caller's transaction: for each type that
/// answered, pending events not yet due that the plan does not keep are
/// cancelled and the planned one inserted; each type that failed, or that
/// the fleet has but this replica has not loaded, keeps its events and is
/// recorded to plan again. Events already due (or retrying) are left to be
/// delivered.
pub async fn reschedule_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    plan: &UserPlan,
) -> sqlx::Result<()> {
    store::cancel_unplanned_pending(conn, user_id, &plan.answered, &plan.plans).await?;
    replan::resolve_user(conn, user_id, &plan.answered).await?;
    schedule_new_user(conn, user_id, plan).await
}

/// Writes a new user's plan in the caller's transaction: `reschedule_user`
/// without the cancelling, since a new user has nothing to cancel yet.
pub async fn schedule_new_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    plan: &UserPlan,
) -> sqlx::Result<()> {
    store::insert_planned(conn, &plan.plans).await?;
    replan::record(conn, &plan.failures).await?;
    replan::record_types_loaded_elsewhere(conn, user_id, &plan.loaded).await?;
    Ok(())
}

/// What every type loaded here answered for a batch of new users (an
/// import): `UserPlan` for many users at once.
#[derive(Debug, Default)]
pub struct NewUsersPlan {
    /// Every type loaded here when the plan was made.
    pub loaded: Vec<String>,
    /// The users planned.
    pub user_ids: Vec<Uuid>,
    pub plans: Vec<PlannedEvent>,
    /// The (user, type) pairs whose plugin failed: recorded to plan again.
    pub failures: Vec<Replan>,
}

/// Plans the next occurrence of every type in `plugins` for each of
/// `subjects`, after each subject's local time at `now`: `plan_for_subject`
/// for a batch, type by type. Blocking work: run it off the async threads,
/// once per batch.
pub fn plan_new_users<'a>(
    plugins: impl IntoIterator<Item = &'a Arc<LoadedPlugin>>,
    subjects: &[Subject],
    now: DateTime<Utc>,
) -> NewUsersPlan {
    let mut plan = NewUsersPlan {
        user_ids: subjects.iter().map(|s| s.id).collect(),
        ..NewUsersPlan::default()
    };
    for plugin in plugins {
        let name = plugin.name();
        plan.loaded.push(name.to_string());
        let mut failed = 0;
        for subject in subjects {
            match plan_next_after_now(plugin, subject, now) {
                Ok(planned) => plan.plans.extend(planned),
                Err(error) => {
                    failed += 1;
                    plan.failures
                        .push(Replan::failed(subject.id, name, error.to_string()));
                }
            }
        }
        crate::metrics::plugin_failures(name, failed);
    }
    plan
}

/// Writes the plans of a batch of users created in the caller's
/// transaction, in a fixed number of statements: `schedule_new_user` for
/// many users. Returns the number of events written.
pub async fn schedule_new_users(conn: &mut PgConnection, plan: &NewUsersPlan) -> sqlx::Result<u64> {
    let written = store::insert_planned_for_new_users(conn, &plan.plans).await?;
    replan::record(conn, &plan.failures).await?;
    replan::record_types_loaded_elsewhere_for_new_users(conn, &plan.user_ids, &plan.loaded).await?;
    Ok(written)
}

/// What planning one type for a set of users did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PlanOutcome {
    /// Users the type answered for.
    pub planned: u64,
    /// Users the type failed on: recorded to plan again.
    pub failed: u64,
    /// Events inserted.
    pub written: u64,
}

/// Plans `plugin` for the users `ids` and writes the result. The plugin runs
/// on users read without locks, outside any transaction; the writes then
/// happen in one short transaction with the users locked, and a user that
/// changed in between is left alone (its own change rescheduled it). For the
/// users the type answered for, pending not-yet-due events of the type that
/// the plan does not keep are cancelled, the plan is inserted and any
/// recorded pair is resolved; the users it failed on keep their events and
/// are recorded to plan again.
pub async fn plan_users(
    pool: &PgPool,
    plugin: &Arc<LoadedPlugin>,
    ids: &[Uuid],
) -> sqlx::Result<PlanOutcome> {
    let users = store::get_users(pool, ids).await?;
    let now = Utc::now();
    let for_batch = plugin.clone();
    let results = tokio::task::spawn_blocking(move || {
        users
            .into_iter()
            .map(|user| {
                let result = plan_next_after_now(&for_batch, &user.subject(), now);
                (user.id, user.updated_at, result)
            })
            .collect::<Vec<_>>()
    })
    .await
    .map_err(|e| sqlx::Error::Protocol(format!("planning task failed: {e}")))?;
    let failures = results.iter().filter(|(_, _, r)| r.is_err()).count();
    crate::metrics::plugin_failures(plugin.name(), failures as u64);
    store::retry_transient("a planning batch", || {
        write_type_plans(pool, plugin.name(), ids, &results)
    })
    .await
}

type PlanResult = (
    Uuid,
    DateTime<Utc>,
    Result<Option<PlannedEvent>, PluginError>,
);

async fn write_type_plans(
    pool: &PgPool,
    event_type: &str,
    ids: &[Uuid],
    results: &[PlanResult],
) -> sqlx::Result<PlanOutcome> {
    let mut tx = pool.begin().await?;
    let versions = store::lock_user_versions(&mut tx, ids).await?;
    // Users that are gone have nothing left to plan.
    let mut resolved: Vec<Uuid> = ids
        .iter()
        .filter(|id| !versions.contains_key(id))
        .copied()
        .collect();
    let mut answered = Vec::new();
    let mut plans = Vec::new();
    let mut failures = Vec::new();
    for (id, version, result) in results {
        if versions.get(id) != Some(version) {
            continue;
        }
        match result {
            Ok(plan) => {
                answered.push(*id);
                plans.extend(plan.clone());
            }
            Err(error) => failures.push(Replan::failed(*id, event_type, error.to_string())),
        }
    }
    store::cancel_unplanned_pending_of_type(&mut tx, event_type, &answered, &plans).await?;
    let written = store::insert_planned(&mut tx, &plans).await?;
    resolved.extend(&answered);
    replan::resolve(&mut tx, event_type, &resolved).await?;
    replan::record(&mut tx, &failures).await?;
    tx.commit().await?;
    Ok(PlanOutcome {
        planned: answered.len() as u64,
        failed: failures.len() as u64,
        written,
    })
}

/// How a replica's turn at a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassEnd {
    /// This replica finished it: events written in this turn.
    Finished { written: u64 },
    /// Another replica runs it, it was complete already, or a newer
    /// generation replaced it.
    NotMine,
}

/// Runs the fleet's scheduling pass of `plugin` at `generation` on this
/// replica (`me`), if no live replica owns it: brings the type's schedule in
/// line for every user who has its dates, in batches of `batch` users by
/// id (`plan_users`), from where the pass stands (a replica that died
/// part-way left its cursor), recording progress after each batch and
/// logging it every few seconds. Users the type fails on are recorded to
/// plan again, so the pass completes either way. Stops when it loses the
/// pass (a newer generation, or a takeover after this replica went stale).
pub async fn run_pass(
    pool: &PgPool,
    plugin: Arc<LoadedPlugin>,
    generation: i64,
    me: Uuid,
    batch: usize,
) -> anyhow::Result<PassEnd> {
    let name = plugin.name().to_string();
    let Some(claim) = fleet::claim_pass(pool, &name, generation, me).await? else {
        return Ok(PassEnd::NotMine);
    };
    let dates = plugin.info.dates.clone();
    let total = match claim.total {
        Some(total) => total,
        None => store::count_users_with_dates(pool, &dates).await?,
    };
    tracing::info!(event_type = %name, generation, users = total, done = claim.done, "scheduling event type");
    let started = std::time::Instant::now();
    let (mut after, mut seen) = (claim.cursor, claim.done);
    let mut done = PlanOutcome::default();
    let mut last_progress = std::time::Instant::now();
    loop {
        let ids = store::user_ids_with_dates(pool, &dates, after, batch as i64).await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        let outcome = plan_users(pool, &plugin, &ids).await?;
        done.written += outcome.written;
        done.failed += outcome.failed;
        seen += ids.len() as i64;
        after = Some(last);
        let total = total.max(seen);
        if !fleet::pass_progress(pool, &name, generation, me, last, seen, total).await? {
            tracing::info!(event_type = %name, generation, "the scheduling pass moved on without this replica");
            return Ok(PassEnd::NotMine);
        }
        if last_progress.elapsed() >= std::time::Duration::from_secs(5) {
            tracing::info!(event_type = %name, done = seen, total, "scheduling event type: progress");
            last_progress = std::time::Instant::now();
        }
    }
    if !fleet::finish_pass(pool, &name, generation, me, seen).await? {
        return Ok(PassEnd::NotMine);
    }
    if done.failed > 0 {
        tracing::warn!(event_type = %name, failed = done.failed, "the type failed for some users; they keep their events and are planned again later");
        crate::ops::note_type_failing(pool, &name, generation, seen).await?;
    }
    tracing::info!(
        event_type = %name,
        generation,
        users = seen,
        events_written = done.written,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "scheduled event type"
    );
    Ok(PassEnd::Finished {
        written: done.written,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::NaiveDate;

    fn local(y: i32, m: u32, d: u32, h: u32, min: u32) -> NaiveDateTime {
        NaiveDate::from_ymd_opt(y, m, d)
            .unwrap()
            .and_hms_opt(h, min, 0)
            .unwrap()
    }

    fn utc(y: i32, m: u32, d: u32, h: u32, min: u32) -> DateTime<Utc> {
        local(y, m, d, h, min).and_utc()
    }

    #[test]
    fn fixed_offsets_of_every_kind_convert_exactly() {
        let cases = [
            ("UTC", utc(2026, 12, 10, 9, 0)),
            ("Asia/Tokyo", utc(2026, 12, 10, 0, 0)), // +09:00
            ("America/New_York", utc(2026, 12, 10, 14, 0)), // -05:00
            ("Asia/Kolkata", utc(2026, 12, 10, 3, 30)), // +05:30
            ("Asia/Kathmandu", utc(2026, 12, 10, 3, 15)), // +05:45
            ("Pacific/Kiritimati", utc(2026, 12, 9, 19, 0)), // +14:00
            ("Pacific/Pago_Pago", utc(2026, 12, 10, 20, 0)), // -11:00
            ("Australia/Sydney", utc(2026, 12, 9, 22, 0)), // +11:00, southern summer
        ];
        for (zone, expected) in cases {
            let tz: Tz = zone.parse().unwrap();
            assert_eq!(
                local_to_utc(local(2026, 12, 10, 9, 0), tz),
                expected,
                "{zone}"
            );
        }
    }

    #[test]
    fn a_time_in_a_spring_forward_gap_moves_forward_by_the_gap() {
        // New York, 2026-03-08: 02:00 jumps to 03:00 (EST -5 → EDT -4).
        let tz: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            local_to_utc(local(2026, 3, 8, 2, 30), tz),
            utc(2026, 3, 8, 7, 30)
        );
        // 07:30 UTC is 03:30 EDT: the wall time moved forward by one hour.
        assert_eq!(
            utc_to_local(utc(2026, 3, 8, 7, 30), tz),
            local(2026, 3, 8, 3, 30)
        );
    }

    #[test]
    fn an_ambiguous_fall_back_time_takes_the_earlier_instant() {
        // New York, 2026-11-01: 01:30 happens twice, first in EDT (-4).
        let tz: Tz = "America/New_York".parse().unwrap();
        assert_eq!(
            local_to_utc(local(2026, 11, 1, 1, 30), tz),
            utc(2026, 11, 1, 5, 30)
        );
    }

    #[test]
    fn southern_hemisphere_dst_gap_and_overlap() {
        // Sydney, 2026-10-04: 02:00 → 03:00 (AEST +10 → AEDT +11).
        let tz: Tz = "Australia/Sydney".parse().unwrap();
        assert_eq!(
            local_to_utc(local(2026, 10, 4, 2, 30), tz),
            utc(2026, 10, 3, 16, 30)
        );
        // 2026-04-05: 02:30 happens twice; the earlier is AEDT (+11).
        assert_eq!(
            local_to_utc(local(2026, 4, 5, 2, 30), tz),
            utc(2026, 4, 4, 15, 30)
        );
    }

    #[test]
    fn a_half_hour_dst_zone_gap_moves_forward_by_half_an_hour() {
        // Lord Howe, 2026-10-04: 02:00 → 02:30 (+10:30 → +11:00).
        let tz: Tz = "Australia/Lord_Howe".parse().unwrap();
        assert_eq!(
            local_to_utc(local(2026, 10, 4, 2, 15), tz),
            utc(2026, 10, 3, 15, 45)
        );
        assert_eq!(
            utc_to_local(utc(2026, 10, 3, 15, 45), tz),
            local(2026, 10, 4, 2, 45)
        );
    }
}
