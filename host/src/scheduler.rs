//! Generation: ask each event type for a user's next occurrence in local wall
//! time, turn it into a UTC due time, and write it as a pending event.

use crate::plugin::{LoadedPlugin, PluginError, Subject};
use crate::store;
use chrono::{DateTime, Duration, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use uuid::Uuid;

/// An occurrence ready to be written as a pending event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedEvent {
    pub user_id: Uuid,
    pub event_type: String,
    pub occurrence: NaiveDateTime,
    pub timezone: String,
    pub due_at: DateTime<Utc>,
}

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

/// Plans the next occurrence of every type in `plugins` for `subject`, after
/// the subject's local time at `now`. A plugin failure skips that type and is
/// logged: the user is still saved.
pub fn plan_for_subject<'a>(
    plugins: impl IntoIterator<Item = &'a std::sync::Arc<LoadedPlugin>>,
    subject: &Subject,
    now: DateTime<Utc>,
) -> Vec<PlannedEvent> {
    let Some(tz) = parse_tz(&subject.timezone) else {
        return Vec::new();
    };
    let local_now = utc_to_local(now, tz);
    plugins
        .into_iter()
        .filter_map(|plugin| match plan_next(plugin, subject, local_now) {
            Ok(plan) => plan,
            Err(error) => {
                crate::metrics::plugin_failure(plugin.name());
                tracing::warn!(
                    event_type = plugin.name(),
                    user_id = %subject.id,
                    %error,
                    "event type failed to generate an occurrence"
                );
                None
            }
        })
        .collect()
}

/// Brings a user's pending, not-yet-due events in line with `plans`: events
/// that no plan keeps are cancelled, planned ones are inserted. Events already
/// due (or retrying) are left to be delivered.
pub async fn reschedule_user(
    conn: &mut PgConnection,
    user_id: Uuid,
    plans: &[PlannedEvent],
) -> sqlx::Result<()> {
    store::cancel_unplanned_pending(conn, user_id, plans).await?;
    store::insert_planned(conn, plans).await?;
    Ok(())
}

/// Brings one type's schedule in line for every user who has its dates: the
/// next occurrence is planned, and pending, not-yet-due events the type no
/// longer plans are cancelled. Walks users by id in batches of `batch`,
/// logging progress; each batch is one transaction with its users locked, so
/// concurrent user updates and other replicas doing the same pass are safe
/// (the unique key makes the inserts idempotent). Skipped when a complete
/// pass was already made with this component and config. Returns the number
/// of events written.
pub async fn schedule_type(
    pool: &PgPool,
    plugin: Arc<LoadedPlugin>,
    batch: usize,
) -> anyhow::Result<u64> {
    let name = plugin.name().to_string();
    let config = serde_json::to_value(&plugin.config)?;
    if store::pass_done(pool, &name, &plugin.sha256, &config).await? {
        tracing::info!(event_type = %name, "schedule already made with this component and config");
        return Ok(0);
    }
    let dates = plugin.info.dates.clone();
    let total = store::count_users_with_dates(pool, &dates).await?;
    tracing::info!(event_type = %name, users = total, "scheduling event type");
    let started = std::time::Instant::now();
    let (mut after, mut seen, mut written, mut failed) = (None, 0i64, 0u64, 0u64);
    let mut last_progress = std::time::Instant::now();
    loop {
        let ids = store::user_ids_with_dates(pool, &dates, after, batch as i64).await?;
        let Some(last) = ids.last().copied() else {
            break;
        };
        let mut tries = 0;
        let (batch_written, failures) = loop {
            match schedule_batch(pool, &plugin, &ids).await {
                Err(error) if tries < 4 && store::is_transient(&error) => {
                    tries += 1;
                    tracing::debug!(event_type = %name, %error, tries, "scheduling batch collided with another transaction; trying again");
                }
                result => break result?,
            }
        };
        written += batch_written;
        failed += failures;
        seen += ids.len() as i64;
        after = Some(last);
        if last_progress.elapsed() >= std::time::Duration::from_secs(5) {
            tracing::info!(event_type = %name, done = seen, total, "scheduling event type: progress");
            last_progress = std::time::Instant::now();
        }
    }
    if failed > 0 {
        crate::metrics::plugin_failure(&name);
        tracing::warn!(event_type = %name, failed, "scheduling pass finished with users the type failed on; it will run again on the next load");
    } else {
        store::record_pass(pool, &name, &plugin.sha256, &config).await?;
    }
    tracing::info!(
        event_type = %name,
        users = seen,
        events_written = written,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "scheduled event type"
    );
    Ok(written)
}

/// One batch of a scheduling pass, in one transaction with its users locked:
/// returns the events written and how many users the type failed on.
async fn schedule_batch(
    pool: &PgPool,
    plugin: &Arc<LoadedPlugin>,
    ids: &[Uuid],
) -> sqlx::Result<(u64, u64)> {
    let mut tx = pool.begin().await?;
    let users = store::lock_users(&mut tx, ids).await?;
    let now = Utc::now();
    let plugin_for_batch = plugin.clone();
    let (plans, failures) = tokio::task::spawn_blocking(move || {
        let mut failures = 0u64;
        let mut plans = Vec::with_capacity(users.len());
        for user in &users {
            let subject = user.subject();
            let Some(tz) = parse_tz(&subject.timezone) else {
                continue;
            };
            match plan_next(&plugin_for_batch, &subject, utc_to_local(now, tz)) {
                Ok(plan) => plans.extend(plan),
                Err(error) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(event_type = plugin_for_batch.name(), user_id = %subject.id, %error, "event type failed to generate an occurrence");
                    }
                }
            }
        }
        (plans, failures)
    })
    .await
    .map_err(|e| sqlx::Error::Protocol(format!("planning task failed: {e}")))?;
    store::cancel_unplanned_pending_of_type(&mut tx, plugin.name(), ids, &plans).await?;
    let written = store::insert_planned(&mut tx, &plans).await?;
    tx.commit().await?;
    Ok((written, failures))
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
