//! `PUT /event-types/{name}?dry_run=true`: for every user who has the type's
//! dates, the live version's next occurrence, due time and message beside
//! the candidate's. Nothing is loaded, written or cancelled.

use super::{par_map, read_only, shadow, users_after};
use crate::plugin::{LoadedPlugin, PluginError, Subject};
use crate::scheduler::plan_next_after_now;
use crate::store::format_local;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use std::sync::Arc;
use uuid::Uuid;

/// Entries in `changes` when the caller does not say.
pub const DEFAULT_LIMIT: usize = 100;
/// The most entries `changes` may hold.
pub const MAX_LIMIT: usize = 1_000;

/// What loading the candidate would change.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Preview {
    pub event_type: String,
    /// The version served here now; null for a new type.
    pub live_version: Option<String>,
    pub candidate_version: String,
    /// Users who have the dates of the live type or of the candidate.
    pub users: u64,
    /// Users whose next occurrence, due time or text would differ.
    pub changed: u64,
    /// Users the candidate returns an error for, or traps on.
    pub failed: u64,
    /// Failed users first, then changed ones, then unchanged ones (each by
    /// id), up to `limit`.
    pub changes: Vec<UserChange>,
}

/// One user's next message before and after.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UserChange {
    pub user_id: Uuid,
    /// What the live version plans; null when there is no live version, it
    /// plans nothing for this user, or it fails for them.
    pub before: Option<Planned>,
    /// What the candidate plans; null when it plans nothing or fails.
    pub after: Option<Planned>,
    /// The candidate's error or trap for this user.
    pub error: Option<String>,
}

/// A user's next message: its local occurrence, UTC due time and text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Planned {
    /// Local wall time, `YYYY-MM-DDTHH:MM:SS`.
    pub occurrence: String,
    pub due_at: DateTime<Utc>,
    pub text: String,
}

/// How far a preview has gone.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Progress {
    pub users_read: u64,
    pub users_total: u64,
}

/// Compares `candidate` with `live` (the type as served here, if any) for
/// every user, reading them in batches in one read-only transaction and
/// planning as a real `PUT`'s scheduling pass would at this instant.
/// `progress` hears after each batch.
pub async fn run(
    pool: &PgPool,
    live: Option<Arc<LoadedPlugin>>,
    candidate: LoadedPlugin,
    limit: usize,
    mut progress: impl FnMut(Progress),
) -> anyhow::Result<Preview> {
    let live = live.map(|l| Arc::new(shadow(&l)));
    let candidate = Arc::new(candidate);
    let now = Utc::now();
    let mut tx = read_only(pool).await?;
    let users_total: i64 = sqlx::query_scalar("SELECT count(*) FROM users")
        .fetch_one(&mut *tx)
        .await?;
    let mut preview = Preview {
        event_type: candidate.name().to_string(),
        live_version: live.as_ref().map(|l| l.info.version.clone()),
        candidate_version: candidate.info.version.clone(),
        users: 0,
        changed: 0,
        failed: 0,
        changes: Vec::new(),
    };
    let (mut failed, mut changed, mut unchanged) = (Vec::new(), Vec::new(), Vec::new());
    let mut read = 0u64;
    let mut after = None;
    loop {
        let users = users_after(&mut tx, after, None).await?;
        let Some(last) = users.last() else { break };
        after = Some(last.id);
        read += users.len() as u64;
        let subjects: Vec<Subject> = users
            .iter()
            .map(|u| u.subject())
            .filter(|s| candidate.applies_to(s) || live.as_ref().is_some_and(|l| l.applies_to(s)))
            .collect();
        let (live, candidate) = (live.clone(), candidate.clone());
        let compared = tokio::task::spawn_blocking(move || {
            par_map(&subjects, |subject| {
                compare(live.as_deref(), &candidate, subject, now)
            })
        })
        .await?;
        for change in compared {
            preview.users += 1;
            let list = if change.error.is_some() {
                preview.failed += 1;
                &mut failed
            } else if change.before != change.after {
                preview.changed += 1;
                &mut changed
            } else {
                &mut unchanged
            };
            if list.len() < limit {
                list.push(change);
            }
        }
        progress(Progress {
            users_read: read,
            users_total: users_total.max(read as i64) as u64,
        });
    }
    tx.rollback().await?;
    preview.changes = failed
        .into_iter()
        .chain(changed)
        .chain(unchanged)
        .take(limit)
        .collect();
    Ok(preview)
}

fn compare(
    live: Option<&LoadedPlugin>,
    candidate: &LoadedPlugin,
    subject: &Subject,
    now: DateTime<Utc>,
) -> UserChange {
    let before = live.and_then(|l| planned(l, subject, now).ok().flatten());
    let (after, error) = match planned(candidate, subject, now) {
        Ok(after) => (after, None),
        Err(error) => (None, Some(error.to_string())),
    };
    UserChange {
        user_id: subject.id,
        before,
        after,
        error,
    }
}

/// The next occurrence after now and its text, as the scheduler plans it and
/// delivery formats it.
fn planned(
    plugin: &LoadedPlugin,
    subject: &Subject,
    now: DateTime<Utc>,
) -> Result<Option<Planned>, PluginError> {
    let Some(plan) = plan_next_after_now(plugin, subject, now)? else {
        return Ok(None);
    };
    let text = plugin.format_message(subject, plan.occurrence)?;
    Ok(Some(Planned {
        occurrence: format_local(&plan.occurrence),
        due_at: plan.due_at,
        text,
    }))
}
