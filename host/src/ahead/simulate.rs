//! `GET /simulate`: every message the loaded types would send with `due_at`
//! in a window, in `due_at` then `user_id` order, streamed as NDJSON.
//!
//! Each (user, type) series starts where the scheduler left it: the pending
//! events already written (delivered as they are, formatted when sent), or,
//! with none, the next occurrence after now as the scheduler would plan it.
//! It then walks forward with `scheduler::plan_successor`, the step delivery
//! takes after each message. Lines are computed a batch of users at a time
//! and sorted through `Runs`, so a window over a million users is never
//! held in memory.

use super::runs::{MEMORY_BUDGET, Runs};
use super::{par_map, read_only, shadow, users_after};
use crate::plugin::{LoadedPlugin, PluginError, Subject};
use crate::scheduler::{PlannedEvent, plan_next_after_now, plan_successor};
use crate::store::format_local;
use axum::body::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use tokio::sync::mpsc;
use uuid::Uuid;

/// The longest window a simulation may cover, in months.
pub const MAX_WINDOW_MONTHS: u32 = 60;
/// Steps one series may take before its window ends: a guard against a type
/// that plans every second, far beyond any window a person would ask for.
const MAX_STEPS: usize = 100_000;
/// Bytes of output gathered before they are sent.
const CHUNK: usize = 64 << 10;

/// What to simulate: `[from, to)`, optionally one type or one user.
#[derive(Debug, Clone)]
pub struct Window {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub event_type: Option<String>,
    pub user_id: Option<Uuid>,
}

/// One message, as a line of the stream.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Line<'a> {
    pub user_id: Uuid,
    pub event_type: &'a str,
    /// The version of the component that would format it (as loaded now).
    pub event_type_version: &'a str,
    /// Local wall time, `YYYY-MM-DDTHH:MM:SS`.
    pub occurrence: String,
    pub timezone: &'a str,
    pub due_at: DateTime<Utc>,
    pub text: String,
}

/// The simulation of `window` over `plugins`, as NDJSON chunks. An error
/// part-way (the database went away) ends the stream with an error, which
/// aborts the response rather than end it as if complete.
pub fn stream(
    pool: PgPool,
    plugins: Vec<Arc<LoadedPlugin>>,
    window: Window,
) -> impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(4);
    tokio::spawn(async move {
        if let Err(error) = produce(&pool, &plugins, &window, &tx).await {
            tracing::error!(error = format!("{error:#}"), "a simulation failed part-way");
            let _ = tx.send(Err(io::Error::other(error.to_string()))).await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|chunk| (chunk, rx))
    })
}

/// A series' pending events, by (user, type): (occurrence, due_at).
type Pending = HashMap<(Uuid, String), Vec<(NaiveDateTime, DateTime<Utc>)>>;

async fn produce(
    pool: &PgPool,
    plugins: &[Arc<LoadedPlugin>],
    window: &Window,
    tx: &mpsc::Sender<io::Result<Bytes>>,
) -> anyhow::Result<()> {
    let plugins: Arc<Vec<LoadedPlugin>> = Arc::new(plugins.iter().map(|p| shadow(p)).collect());
    let names: Vec<String> = plugins.iter().map(|p| p.name().to_string()).collect();
    let window = Arc::new(window.clone());
    let now = Utc::now();
    let mut db = read_only(pool).await?;
    let mut runs = Runs::new(MEMORY_BUDGET);
    let mut failures = 0u64;
    let mut after = None;
    loop {
        if tx.is_closed() {
            return Ok(());
        }
        let users = users_after(&mut db, after, window.user_id).await?;
        let Some(last) = users.last() else { break };
        after = Some(last.id);
        let ids: Vec<Uuid> = users.iter().map(|u| u.id).collect();
        let pending = Arc::new(pending_events(&mut db, &ids, &names).await?);
        let subjects: Vec<Subject> = users.iter().map(|u| u.subject()).collect();
        let (plugins, window) = (plugins.clone(), window.clone());
        let batch = tokio::task::spawn_blocking(move || {
            let lines = par_map(&subjects, |subject| {
                series_lines(&plugins, subject, &pending, &window, now)
            });
            let mut failed = 0;
            for (records, f) in lines {
                failed += f;
                for (key, line) in records {
                    runs.push(key, line)?;
                }
            }
            Ok::<_, io::Error>((runs, failed))
        })
        .await??;
        runs = batch.0;
        failures += batch.1;
    }
    db.rollback().await?;
    if failures > 0 {
        tracing::warn!(
            failures,
            "simulation: plugin calls failed; each such series stops there (the scheduler would plan it again)"
        );
    }
    tracing::debug!(spilled = runs.spilled(), "simulation sorted");
    let tx = tx.clone();
    tokio::task::spawn_blocking(move || {
        let mut chunk = Vec::with_capacity(CHUNK + 1024);
        let mut open = true;
        runs.drain(|line| {
            chunk.extend_from_slice(line.as_bytes());
            chunk.push(b'\n');
            if chunk.len() >= CHUNK {
                open = tx
                    .blocking_send(Ok(Bytes::from(std::mem::take(&mut chunk))))
                    .is_ok();
            }
            open
        })?;
        if open && !chunk.is_empty() {
            let _ = tx.blocking_send(Ok(Bytes::from(chunk)));
        }
        Ok::<_, io::Error>(())
    })
    .await??;
    Ok(())
}

/// The pending (and in-flight) events of `types` for `users`.
async fn pending_events(
    conn: &mut PgConnection,
    users: &[Uuid],
    types: &[String],
) -> sqlx::Result<Pending> {
    let rows: Vec<(Uuid, String, NaiveDateTime, DateTime<Utc>)> = sqlx::query_as(
        "SELECT user_id, event_type, occurrence, due_at FROM events \
         WHERE user_id = ANY($1) AND event_type = ANY($2) \
         ORDER BY user_id, event_type, occurrence",
    )
    .bind(users)
    .bind(types)
    .fetch_all(conn)
    .await?;
    let mut pending = Pending::new();
    for (user, event_type, occurrence, due_at) in rows {
        pending
            .entry((user, event_type))
            .or_default()
            .push((occurrence, due_at));
    }
    Ok(pending)
}

/// A user's lines in the window for every type, as (sort key, line), and the
/// number of plugin calls that failed.
fn series_lines(
    plugins: &[LoadedPlugin],
    subject: &Subject,
    pending: &Pending,
    window: &Window,
    now: DateTime<Utc>,
) -> (Vec<(String, String)>, u64) {
    let mut lines = Vec::new();
    let mut failed = 0;
    for plugin in plugins {
        let mine = pending
            .get(&(subject.id, plugin.name().to_string()))
            .map_or(&[][..], Vec::as_slice);
        if let Err(error) = walk(plugin, subject, mine, window, now, &mut lines) {
            failed += 1;
            tracing::debug!(
                event_type = plugin.name(),
                user_id = %subject.id,
                error = %error,
                "simulation: a series stops at a plugin error"
            );
        }
    }
    (lines, failed)
}

/// Walks one series through the window, adding a line for each message.
fn walk(
    plugin: &LoadedPlugin,
    subject: &Subject,
    pending: &[(NaiveDateTime, DateTime<Utc>)],
    window: &Window,
    now: DateTime<Utc>,
    lines: &mut Vec<(String, String)>,
) -> Result<(), PluginError> {
    let mut next = match pending.last() {
        None => plan_next_after_now(plugin, subject, now)?,
        Some(&(occurrence, due_at)) => {
            for &(occurrence, due_at) in pending {
                if window.from <= due_at && due_at < window.to {
                    lines.push(line(plugin, subject, occurrence, due_at)?);
                }
            }
            if due_at >= window.to {
                return Ok(());
            }
            plan_successor(plugin, subject, occurrence, due_at.max(now))?
        }
    };
    let mut steps = 0;
    while let Some(PlannedEvent {
        occurrence, due_at, ..
    }) = next
    {
        if due_at >= window.to || steps == MAX_STEPS {
            break;
        }
        if due_at >= window.from {
            lines.push(line(plugin, subject, occurrence, due_at)?);
        }
        next = plan_successor(plugin, subject, occurrence, due_at.max(now))?;
        steps += 1;
    }
    Ok(())
}

/// A message's sort key (`due_at`, user id, type; fixed-width hex first, so
/// keys compare as strings) and its NDJSON line.
fn line(
    plugin: &LoadedPlugin,
    subject: &Subject,
    occurrence: NaiveDateTime,
    due_at: DateTime<Utc>,
) -> Result<(String, String), PluginError> {
    let text = plugin.format_message(subject, occurrence)?;
    let micros = due_at.timestamp_micros() as u64 ^ (1 << 63);
    let key = format!("{micros:016x}{}{}", subject.id.simple(), plugin.name());
    let line = serde_json::to_string(&Line {
        user_id: subject.id,
        event_type: plugin.name(),
        event_type_version: &plugin.info.version,
        occurrence: format_local(&occurrence),
        timezone: &subject.timezone,
        due_at,
        text,
    })
    .expect("a line serialises");
    Ok((key, line))
}
