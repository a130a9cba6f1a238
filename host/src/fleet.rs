//! The fleet's event types in PostgreSQL: the one registry every replica
//! follows. A change (an upload, a file in a plugin directory, a delete) is
//! one transaction that stores the component, gives the type a new
//! generation, resets its scheduling pass and notifies every replica on
//! `CHANNEL`; replicas also compare generations on a timer, so a missed
//! notification costs one heartbeat of delay. Replicas report themselves in
//! `replicas` every heartbeat; the pass of a generation runs on one replica
//! at a time and is taken over from one whose heartbeat went stale.

use crate::audit::{self, Actor};
use crate::plugin::{PluginConfig, PluginFile};
use crate::store;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::json;
use sha2::Digest;
use sqlx::types::Json;
use sqlx::{PgConnection, PgPool, Row};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

/// The notification channel; the payload is `NAME:GENERATION`.
pub const CHANNEL: &str = "kairos_event_types";
/// Largest component the registry stores.
pub const MAX_COMPONENT: usize = 32 << 20;
/// Heartbeats a replica may miss before it counts as stale.
pub const MISSED_HEARTBEATS: u32 = 3;

/// Who made a type's latest change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// `PUT /event-types/{name}` on some replica.
    Api,
    /// `NAME.wasm` in some replica's plugin directory.
    Directory,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Api => "api",
            Source::Directory => "directory",
        }
    }

    fn parse(text: &str) -> Self {
        if text == "directory" {
            Source::Directory
        } else {
            Source::Api
        }
    }
}

/// One type as the registry holds it.
#[derive(Debug, Clone)]
pub struct TypeRow {
    pub name: String,
    pub sha256: String,
    pub version: String,
    pub config: PluginConfig,
    pub webhook_url: Option<String>,
    pub source: Source,
    pub generation: i64,
    pub changed_at: DateTime<Utc>,
    /// Set when the type was deleted: replicas stop serving it.
    pub deleted_at: Option<DateTime<Utc>>,
    /// What a plugin directory last published for the type (`file_digest`).
    pub directory_digest: Option<String>,
}

impl TypeRow {
    pub fn live(&self) -> bool {
        self.deleted_at.is_none()
    }

    fn same_content(&self, sha256: &str, settings: &PluginFile) -> bool {
        self.sha256 == sha256
            && self.config == settings.config
            && self.webhook_url == settings.webhook_url
    }

    /// Whether a plugin directory's file (component `sha256` with
    /// `settings`, modified at `modified`) should become the type's active
    /// version: only when it is newer than the type's latest change and is
    /// not what a plugin directory published last. Else an upload or delete
    /// made since stands, whoever restarts with the same file.
    pub fn file_supersedes(
        &self,
        sha256: &str,
        settings: &PluginFile,
        modified: DateTime<Utc>,
    ) -> bool {
        modified > self.changed_at
            && self.directory_digest.as_deref() != Some(&file_digest(sha256, settings))
    }
}

/// The digest of a plugin directory's file: its component and settings.
pub fn file_digest(sha256: &str, settings: &PluginFile) -> String {
    let settings = serde_json::to_string(settings).unwrap_or_default();
    crate::plugin::hex(&sha2::Sha256::digest(format!("{sha256}\n{settings}")))
}

/// The columns `type_row` reads.
macro_rules! row_columns {
    () => {
        "name, sha256, version, config, webhook_url, source, generation, changed_at, deleted_at, \
         directory_digest"
    };
}

fn type_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<TypeRow> {
    Ok(TypeRow {
        name: row.try_get("name")?,
        sha256: row.try_get("sha256")?,
        version: row.try_get("version")?,
        config: row.try_get::<Json<PluginConfig>, _>("config")?.0,
        webhook_url: row.try_get("webhook_url")?,
        source: Source::parse(row.try_get("source")?),
        generation: row.try_get("generation")?,
        changed_at: row.try_get("changed_at")?,
        deleted_at: row.try_get("deleted_at")?,
        directory_digest: row.try_get("directory_digest")?,
    })
}

/// Every type the fleet has had, deleted ones included, by name.
pub async fn rows(pool: &PgPool) -> sqlx::Result<Vec<TypeRow>> {
    sqlx::query(concat!(
        "SELECT ",
        row_columns!(),
        " FROM event_types ORDER BY name"
    ))
    .try_map(|row| type_row(&row))
    .fetch_all(pool)
    .await
}

/// One type's row, deleted or not.
pub async fn row<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    name: &str,
) -> sqlx::Result<Option<TypeRow>> {
    sqlx::query(concat!(
        "SELECT ",
        row_columns!(),
        " FROM event_types WHERE name = $1"
    ))
    .bind(name)
    .try_map(|row| type_row(&row))
    .fetch_optional(executor)
    .await
}

/// A component's bytes.
pub async fn component(pool: &PgPool, sha256: &str) -> sqlx::Result<Option<Vec<u8>>> {
    sqlx::query_scalar("SELECT bytes FROM components WHERE sha256 = $1")
        .bind(sha256)
        .fetch_optional(pool)
        .await
}

/// A checked component to make a type's active one.
pub struct Change<'a> {
    pub name: &'a str,
    pub bytes: &'a [u8],
    pub sha256: &'a str,
    pub version: &'a str,
    pub settings: &'a PluginFile,
    pub source: Source,
    /// For a file of a plugin directory: its modification time. The file
    /// changes the registry only when it is newer than the type's latest
    /// change (an upload, a delete, an earlier file).
    pub file_modified: Option<DateTime<Utc>>,
    /// Who made the change, for the audit log.
    pub actor: &'a Actor,
}

/// What `publish` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The type is new to the fleet (or was deleted): this generation.
    Added(i64),
    /// The type's component or settings changed: this generation.
    Replaced(i64),
    /// The registry already holds exactly this: its generation.
    Unchanged(i64),
    /// A plugin directory's file that does not supersede the type's latest
    /// change (`TypeRow::file_supersedes`): nothing written.
    Superseded,
}

impl Published {
    pub fn generation(self) -> Option<i64> {
        match self {
            Published::Added(g) | Published::Replaced(g) | Published::Unchanged(g) => Some(g),
            Published::Superseded => None,
        }
    }
}

/// Serialises changes of one type across the fleet, for the transaction.
async fn lock_type(conn: &mut PgConnection, name: &str) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('kairos.event_type:' || $1, 0))")
        .bind(name)
        .execute(conn)
        .await?;
    Ok(())
}

async fn notify(conn: &mut PgConnection, name: &str, generation: i64) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(CHANNEL)
        .bind(format!("{name}:{generation}"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Makes a checked component the type's active one for the whole fleet, in
/// one transaction: the component stored (once per sha256), the row with a
/// new generation, the pass reset (kept when a complete pass was made with
/// this component and config) and every replica notified.
pub async fn publish(pool: &PgPool, change: &Change<'_>) -> anyhow::Result<Published> {
    anyhow::ensure!(
        change.bytes.len() <= MAX_COMPONENT,
        "the component is {} bytes; the most a type may have is {MAX_COMPONENT}",
        change.bytes.len()
    );
    let mut tx = pool.begin().await?;
    lock_type(&mut tx, change.name).await?;
    let current = row(&mut *tx, change.name).await?;
    if let (Some(modified), Some(row)) = (change.file_modified, &current)
        && !row.file_supersedes(change.sha256, change.settings, modified)
    {
        return Ok(Published::Superseded);
    }
    if let Some(row) = current.as_ref().filter(|r| r.live())
        && row.same_content(change.sha256, change.settings)
    {
        return Ok(Published::Unchanged(row.generation));
    }
    let stored: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM components WHERE sha256 = $1)")
            .bind(change.sha256)
            .fetch_one(&mut *tx)
            .await?;
    if !stored {
        sqlx::query(
            "INSERT INTO components (sha256, bytes) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(change.sha256)
        .bind(change.bytes)
        .execute(&mut *tx)
        .await?;
    }
    let generation: i64 = sqlx::query_scalar(
        "INSERT INTO event_types AS t \
             (name, sha256, version, config, webhook_url, source, generation, directory_digest) \
         VALUES ($1, $2, $3, $4, $5, $6, nextval('event_type_generation'), $7) \
         ON CONFLICT (name) DO UPDATE SET sha256 = EXCLUDED.sha256, version = EXCLUDED.version, \
             config = EXCLUDED.config, webhook_url = EXCLUDED.webhook_url, \
             source = EXCLUDED.source, generation = EXCLUDED.generation, \
             changed_at = now(), deleted_at = NULL, \
             directory_digest = coalesce(EXCLUDED.directory_digest, t.directory_digest) \
         RETURNING generation",
    )
    .bind(change.name)
    .bind(change.sha256)
    .bind(change.version)
    .bind(Json(&change.settings.config))
    .bind(&change.settings.webhook_url)
    .bind(change.source.as_str())
    .bind((change.source == Source::Directory).then(|| file_digest(change.sha256, change.settings)))
    .fetch_one(&mut *tx)
    .await?;
    reset_pass(
        &mut tx,
        change.name,
        change.sha256,
        &change.settings.config,
        generation,
    )
    .await?;
    let replaced = current.as_ref().is_some_and(TypeRow::live);
    audit::record(
        &mut tx,
        change.actor,
        if replaced {
            "type.replace"
        } else {
            "type.load"
        },
        change.name,
        json!({
            "version": change.version,
            "sha256": change.sha256,
            "generation": generation,
            "source": change.source.as_str(),
        }),
    )
    .await?;
    notify(&mut tx, change.name, generation).await?;
    tx.commit().await?;
    Ok(if replaced {
        Published::Replaced(generation)
    } else {
        Published::Added(generation)
    })
}

/// What `delete` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub generation: i64,
    /// Pending events cancelled, once, by this transaction.
    pub cancelled: u64,
}

/// Deletes a live type for the whole fleet, in one transaction: the row
/// marked deleted with a new generation, its pending events cancelled, its
/// pass and what waited to be planned for it forgotten, every replica
/// notified. With `only_from` set, a type whose latest change came from
/// elsewhere is left alone. `None` when there is nothing to delete.
pub async fn delete(
    pool: &PgPool,
    name: &str,
    only_from: Option<Source>,
    actor: &Actor,
) -> anyhow::Result<Option<Deleted>> {
    let mut tx = pool.begin().await?;
    lock_type(&mut tx, name).await?;
    let Some(row) = row(&mut *tx, name).await?.filter(TypeRow::live) else {
        return Ok(None);
    };
    if only_from.is_some_and(|source| source != row.source) {
        return Ok(None);
    }
    let generation: i64 = sqlx::query_scalar(
        "UPDATE event_types SET deleted_at = now(), changed_at = now(), \
             generation = nextval('event_type_generation') \
         WHERE name = $1 RETURNING generation",
    )
    .bind(name)
    .fetch_one(&mut *tx)
    .await?;
    let cancelled = store::cancel_pending_of_type(&mut tx, name).await?;
    audit::record(
        &mut tx,
        actor,
        "type.delete",
        name,
        json!({"version": row.version, "generation": generation, "cancelled": cancelled}),
    )
    .await?;
    notify(&mut tx, name, generation).await?;
    tx.commit().await?;
    Ok(Some(Deleted {
        generation,
        cancelled,
    }))
}

/// Cancels what is still pending of a deleted type: events a replica
/// planned while the deletion was on its way to it. Each is cancelled once;
/// a type that is live again is left alone.
pub async fn sweep_deleted(pool: &PgPool, name: &str) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await?;
    lock_type(&mut tx, name).await?;
    let deleted = row(&mut *tx, name).await?.is_some_and(|row| !row.live());
    if !deleted {
        return Ok(0);
    }
    let cancelled = store::cancel_pending_of_type(&mut tx, name).await?;
    tx.commit().await?;
    Ok(cancelled)
}

/// Starts the type's pass for `generation` afresh, unless a complete pass
/// was made with this very component and config (a change of webhook only,
/// or a replica publishing what the registry already scheduled).
async fn reset_pass(
    conn: &mut PgConnection,
    name: &str,
    sha256: &str,
    config: &PluginConfig,
    generation: i64,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO event_type_passes AS p \
             (event_type, sha256, config, generation, started_at, completed_at, owner, cursor, done, total) \
         VALUES ($1, $2, $3, $4, now(), NULL, NULL, NULL, 0, NULL) \
         ON CONFLICT (event_type) DO UPDATE SET generation = EXCLUDED.generation, \
             started_at = CASE WHEN p.completed_at IS NOT NULL AND p.sha256 = EXCLUDED.sha256 \
                               AND p.config = EXCLUDED.config THEN p.started_at ELSE now() END, \
             completed_at = CASE WHEN p.sha256 = EXCLUDED.sha256 AND p.config = EXCLUDED.config \
                                 THEN p.completed_at END, \
             owner = NULL, \
             cursor = CASE WHEN p.completed_at IS NOT NULL AND p.sha256 = EXCLUDED.sha256 \
                           AND p.config = EXCLUDED.config THEN p.cursor END, \
             done = CASE WHEN p.completed_at IS NOT NULL AND p.sha256 = EXCLUDED.sha256 \
                         AND p.config = EXCLUDED.config THEN p.done ELSE 0 END, \
             total = CASE WHEN p.completed_at IS NOT NULL AND p.sha256 = EXCLUDED.sha256 \
                          AND p.config = EXCLUDED.config THEN p.total END, \
             sha256 = EXCLUDED.sha256, config = EXCLUDED.config",
    )
    .bind(name)
    .bind(sha256)
    .bind(Json(config))
    .bind(generation)
    .execute(conn)
    .await?;
    Ok(())
}

/// Where a pass picks up: the last user done and how many were done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PassClaim {
    pub cursor: Option<Uuid>,
    pub done: i64,
    pub total: Option<i64>,
}

/// The SQL condition "the pass `p`'s owner is gone": none, or its
/// heartbeat is older than `MISSED_HEARTBEATS` of its own periods, the count
/// bound as the parameter named.
macro_rules! owner_gone {
    ($missed:literal) => {
        concat!(
            "(p.owner IS NULL OR NOT EXISTS (SELECT 1 FROM replicas r WHERE r.id = p.owner ",
            "AND r.heartbeat_at > now() - r.heartbeat_ms * ",
            $missed,
            " * interval '1 millisecond'))"
        )
    };
}

/// Takes the pass of `generation` for replica `me`, when it is incomplete
/// and has no live owner (or is `me`'s already). `None` when another
/// replica runs it, it is complete, or a newer generation replaced it.
pub async fn claim_pass(
    pool: &PgPool,
    name: &str,
    generation: i64,
    me: Uuid,
) -> sqlx::Result<Option<PassClaim>> {
    let row = sqlx::query(concat!(
        "UPDATE event_type_passes p SET owner = $3 \
         WHERE p.event_type = $1 AND p.generation = $2 AND p.completed_at IS NULL \
           AND (p.owner = $3 OR ",
        owner_gone!("$4"),
        ") RETURNING p.cursor, p.done, p.total"
    ))
    .bind(name)
    .bind(generation)
    .bind(me)
    .bind(i64::from(MISSED_HEARTBEATS))
    .fetch_optional(pool)
    .await?;
    row.map(|row| {
        Ok(PassClaim {
            cursor: row.try_get("cursor")?,
            done: row.try_get("done")?,
            total: row.try_get("total")?,
        })
    })
    .transpose()
}

/// Records the pass's progress: users up to `cursor` are done. `false`
/// when `me` no longer owns it (taken over, or replaced by a newer
/// generation): the caller stops.
pub async fn pass_progress(
    pool: &PgPool,
    name: &str,
    generation: i64,
    me: Uuid,
    cursor: Uuid,
    done: i64,
    total: i64,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE event_type_passes SET cursor = $4, done = $5, total = $6 \
         WHERE event_type = $1 AND generation = $2 AND owner = $3 AND completed_at IS NULL",
    )
    .bind(name)
    .bind(generation)
    .bind(me)
    .bind(cursor)
    .bind(done)
    .bind(total)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Marks the pass complete; `false` when `me` no longer owns it.
pub async fn finish_pass(
    pool: &PgPool,
    name: &str,
    generation: i64,
    me: Uuid,
    total: i64,
) -> sqlx::Result<bool> {
    Ok(sqlx::query(
        "UPDATE event_type_passes SET completed_at = now(), owner = NULL, done = $4, total = $4 \
         WHERE event_type = $1 AND generation = $2 AND owner = $3 AND completed_at IS NULL",
    )
    .bind(name)
    .bind(generation)
    .bind(me)
    .bind(total)
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Gives up `me`'s pass of `generation` (it failed, or the replica stops),
/// so any replica may take it at once.
pub async fn release_pass(
    pool: &PgPool,
    name: &str,
    generation: i64,
    me: Uuid,
) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE event_type_passes SET owner = NULL \
         WHERE event_type = $1 AND generation = $2 AND owner = $3",
    )
    .bind(name)
    .bind(generation)
    .bind(me)
    .execute(pool)
    .await?;
    Ok(())
}

/// Of the (type, generation) pairs this replica serves, those whose pass is
/// incomplete and has no live owner: the ones it should take.
pub async fn orphaned_passes(pool: &PgPool, served: &[(String, i64)]) -> sqlx::Result<Vec<String>> {
    let (names, generations): (Vec<&str>, Vec<i64>) =
        served.iter().map(|(n, g)| (n.as_str(), *g)).unzip();
    sqlx::query_scalar(concat!(
        "SELECT p.event_type FROM event_type_passes p \
         JOIN unnest($1::text[], $2::bigint[]) AS s(name, generation) \
           ON s.name = p.event_type AND s.generation = p.generation \
         WHERE p.completed_at IS NULL AND ",
        owner_gone!("$3")
    ))
    .bind(&names)
    .bind(&generations)
    .bind(i64::from(MISSED_HEARTBEATS))
    .fetch_all(pool)
    .await
}

/// A pass as `GET /event-types` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PassStatus {
    pub generation: Option<i64>,
    pub state: &'static str,
    pub done: i64,
    pub total: Option<i64>,
    pub owner: Option<Uuid>,
    pub started_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
}

/// Every type's pass, by type.
pub async fn passes(pool: &PgPool) -> sqlx::Result<BTreeMap<String, PassStatus>> {
    let rows = sqlx::query(
        "SELECT event_type, generation, done, total, owner, started_at, completed_at \
         FROM event_type_passes",
    )
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|row| {
            let completed_at: Option<DateTime<Utc>> = row.try_get("completed_at")?;
            let owner: Option<Uuid> = row.try_get("owner")?;
            let state = match (completed_at, owner) {
                (Some(_), _) => "done",
                (None, Some(_)) => "running",
                (None, None) => "waiting",
            };
            Ok((
                row.try_get("event_type")?,
                PassStatus {
                    generation: row.try_get("generation")?,
                    state,
                    done: row.try_get("done")?,
                    total: row.try_get("total")?,
                    owner,
                    started_at: row.try_get("started_at")?,
                    completed_at,
                },
            ))
        })
        .collect()
}

/// What one replica serves of one type, as it reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Serving {
    /// The generation it serves; `None` when it could never load the type.
    pub generation: Option<i64>,
    pub sha256: Option<String>,
    /// Why it could not load the registry's generation, when it could not.
    pub error: Option<String>,
}

/// Records that replica `me` is alive and what it serves; forgets replicas
/// silent for a day.
pub async fn heartbeat(
    pool: &PgPool,
    me: Uuid,
    host: &str,
    every: Duration,
    serving: &BTreeMap<String, Serving>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO replicas (id, host, heartbeat_ms, serving) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), host = EXCLUDED.host, \
             heartbeat_ms = EXCLUDED.heartbeat_ms, serving = EXCLUDED.serving",
    )
    .bind(me)
    .bind(host)
    .bind(every.as_millis() as i64)
    .bind(Json(serving))
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM replicas WHERE heartbeat_at < now() - interval '1 day'")
        .execute(pool)
        .await?;
    Ok(())
}

/// A replica stopping: its row goes, and its passes are free to take.
pub async fn leave(pool: &PgPool, me: Uuid) -> sqlx::Result<()> {
    sqlx::query("UPDATE event_type_passes SET owner = NULL WHERE owner = $1")
        .bind(me)
        .execute(pool)
        .await?;
    sqlx::query("DELETE FROM replicas WHERE id = $1")
        .bind(me)
        .execute(pool)
        .await?;
    Ok(())
}

/// A replica as `GET /event-types` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Replica {
    pub id: Uuid,
    pub host: String,
    pub started_at: DateTime<Utc>,
    pub heartbeat_at: DateTime<Utc>,
    /// It missed three heartbeats.
    pub stale: bool,
    #[serde(skip)]
    pub serving: BTreeMap<String, Serving>,
}

/// Every replica that reported in the last day, oldest first.
pub async fn replicas(pool: &PgPool) -> sqlx::Result<Vec<Replica>> {
    sqlx::query(
        "SELECT id, host, started_at, heartbeat_at, serving, \
             heartbeat_at < now() - heartbeat_ms * $1 * interval '1 millisecond' AS stale \
         FROM replicas ORDER BY started_at, id",
    )
    .bind(i64::from(MISSED_HEARTBEATS))
    .try_map(|row: sqlx::postgres::PgRow| {
        Ok(Replica {
            id: row.try_get("id")?,
            host: row.try_get("host")?,
            started_at: row.try_get("started_at")?,
            heartbeat_at: row.try_get("heartbeat_at")?,
            stale: row.try_get("stale")?,
            serving: row
                .try_get::<Json<BTreeMap<String, Serving>>, _>("serving")?
                .0,
        })
    })
    .fetch_all(pool)
    .await
}
