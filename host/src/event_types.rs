//! Event types in a running replica. The fleet's registry in PostgreSQL
//! (`fleet`) says which types exist; this replica follows it: it loads each
//! type's active component (from its compiled cache when it can), swaps it
//! in, runs or takes over the type's scheduling pass, and stops serving a
//! deleted type. Changes reach the registry from the admin API (`upload`,
//! `unload`) and from this replica's plugin directory (`sync_from_dir`): a
//! file there is published when it is newer than the type's latest change.

use crate::audit::Actor;
use crate::fleet::{self, Published, Source};
use crate::plugin::{
    LoadedPlugin, PluginFile, PluginSource, Registry, valid_type_name, wasm_files,
};
use crate::scheduler::{self, PassEnd};
use anyhow::Context;
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// How a replica takes part in the fleet.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// This replica's id in `replicas` and as a pass owner.
    pub replica: Uuid,
    /// How it names itself to operators (host name and address).
    pub host: String,
    /// How often it reports itself and compares generations.
    pub heartbeat: Duration,
    /// Users per transaction in a scheduling pass.
    pub batch: usize,
    /// Whether to follow the registry after start (else only report).
    pub follow: bool,
}

pub struct EventTypes {
    pool: PgPool,
    registry: Arc<Registry>,
    plugin_dir: PathBuf,
    /// Where uploads were kept before the registry moved into the database:
    /// published once at start, then moved aside.
    legacy_uploads_dir: PathBuf,
    fleet: FleetSettings,
    /// The scheduling pass running here for each type, with its generation.
    passes: Mutex<BTreeMap<String, (i64, JoinHandle<()>)>>,
    /// What this replica made of each type of the registry.
    local: Mutex<BTreeMap<String, Local>>,
    /// One registry sync at a time.
    applying: tokio::sync::Mutex<()>,
    /// Directory syncs completed, published or not: lets a caller see that
    /// a change was looked at.
    syncs: AtomicU64,
}

/// What this replica made of one type of the registry.
#[derive(Debug, Clone, Default)]
struct Local {
    /// The generation it serves, or the deletion it applied.
    generation: Option<i64>,
    /// The registry's generation it could not load, and why.
    failed: Option<(i64, String)>,
}

/// What an upload did to the set of types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Added,
    Replaced,
}

/// Why an upload was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    /// The component is bad: the reason is for the operator.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl EventTypes {
    pub fn new(
        pool: PgPool,
        registry: Arc<Registry>,
        plugin_dir: PathBuf,
        legacy_uploads_dir: PathBuf,
        fleet: FleetSettings,
    ) -> Self {
        Self {
            pool,
            registry,
            plugin_dir,
            legacy_uploads_dir,
            fleet: FleetSettings {
                batch: fleet.batch.max(1),
                ..fleet
            },
            passes: Mutex::new(BTreeMap::new()),
            local: Mutex::new(BTreeMap::new()),
            applying: tokio::sync::Mutex::new(()),
            syncs: AtomicU64::new(0),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir
    }

    pub fn replica(&self) -> Uuid {
        self.fleet.replica
    }

    /// The generation of `name` this replica serves.
    pub fn generation(&self, name: &str) -> Option<i64> {
        self.registry.get(name)?;
        self.locals().get(name)?.generation
    }

    /// The types of the registry this replica could not load, and why.
    pub fn load_errors(&self) -> BTreeMap<String, String> {
        self.locals()
            .iter()
            .filter_map(|(name, local)| Some((name.clone(), local.failed.clone()?.1)))
            .collect()
    }

    fn locals(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Local>> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What this replica serves, as its heartbeat reports it.
    fn serving(&self) -> BTreeMap<String, fleet::Serving> {
        let served = self.registry.snapshot();
        self.locals()
            .iter()
            .filter_map(|(name, local)| {
                let plugin = served.get(name);
                if plugin.is_none() && local.failed.is_none() {
                    return None;
                }
                Some((
                    name.clone(),
                    fleet::Serving {
                        generation: plugin.and(local.generation),
                        sha256: plugin.map(|p| p.sha256.clone()),
                        error: local.failed.as_ref().map(|(_, e)| e.clone()),
                    },
                ))
            })
            .collect()
    }

    /// Joins the fleet: reports this replica, publishes the plugin
    /// directory's files that are newer than the registry (and uploads kept
    /// by an older version), then loads what the registry holds and starts
    /// the passes it owes. A file that does not load is logged and skipped.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<Vec<String>> {
        self.heartbeat().await?;
        self.publish_legacy_uploads().await;
        if self.plugin_dir.is_dir() {
            let dir = self.plugin_dir.clone();
            let files = tokio::task::spawn_blocking(move || wasm_files(&dir)).await??;
            for path in files {
                let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                    continue;
                };
                self.publish_logged(name).await;
            }
        } else {
            tracing::warn!(dir = %self.plugin_dir.display(), "plugin directory does not exist");
        }
        self.sync().await?;
        self.heartbeat().await?;
        Ok(self.registry.snapshot().keys().cloned().collect())
    }

    /// Checks an uploaded component, makes it the fleet's, and serves it here
    /// before answering.
    pub async fn upload(
        self: &Arc<Self>,
        name: &str,
        bytes: Vec<u8>,
        settings: PluginFile,
        actor: &Actor,
    ) -> Result<(Change, Arc<LoadedPlugin>), UploadError> {
        let (plugin, bytes) = self.load_candidate(name, bytes, settings).await?;
        let settings = PluginFile {
            config: plugin.config.clone(),
            webhook_url: plugin.webhook_url.clone(),
        };
        let published = fleet::publish(
            &self.pool,
            &fleet::Change {
                name,
                bytes: &bytes,
                sha256: &plugin.sha256,
                version: &plugin.info.version,
                settings: &settings,
                source: Source::Api,
                file_modified: None,
                actor,
            },
        )
        .await?;
        self.sync_with(Some(Arc::new(plugin))).await?;
        let served = self
            .registry
            .get(name)
            .context("the type was deleted while it was uploaded")?;
        let change = match published {
            Published::Added(_) => Change::Added,
            _ => Change::Replaced,
        };
        Ok((change, served))
    }

    /// Compiles and checks a component for the type `name` as an upload
    /// does (the name it describes itself by, the self-check), without
    /// loading it anywhere: what an upload and a dry run share. Gives the
    /// bytes back.
    pub async fn load_candidate(
        &self,
        name: &str,
        bytes: Vec<u8>,
        settings: PluginFile,
    ) -> Result<(LoadedPlugin, Vec<u8>), UploadError> {
        let registry = self.registry.clone();
        let name = name.to_string();
        tokio::task::spawn_blocking(move || {
            registry
                .load_checked(&name, &bytes, settings, PluginSource::Upload)
                .map(|plugin| (plugin, bytes))
        })
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| UploadError::Invalid(format!("{e:#}")))
    }

    /// Deletes a type for the fleet (its pending events are cancelled, once)
    /// and stops serving it here. `None` when the fleet has no such type.
    pub async fn unload(
        self: &Arc<Self>,
        name: &str,
        actor: &Actor,
    ) -> anyhow::Result<Option<fleet::Deleted>> {
        let deleted = fleet::delete(&self.pool, name, None, actor).await?;
        if let Some(deleted) = deleted {
            tracing::info!(
                event_type = name,
                generation = deleted.generation,
                cancelled = deleted.cancelled,
                "deleted event type"
            );
            self.sync().await?;
        }
        Ok(deleted)
    }

    /// Brings the registry in line with `NAME.wasm`/`NAME.toml` in the plugin
    /// directory, then serves what the registry says: a file newer than the
    /// type's latest change is published; a removed file deletes the type if
    /// the directory made its latest change. A file that does not load (a
    /// partial write, a bad component) changes nothing.
    pub async fn sync_from_dir(self: &Arc<Self>, name: &str) {
        if !valid_type_name(name) {
            tracing::debug!(name, "ignoring a file that is not named like an event type");
        } else if self.plugin_dir.join(format!("{name}.wasm")).is_file() {
            self.publish_logged(name).await;
        } else {
            match fleet::delete(
                &self.pool,
                name,
                Some(Source::Directory),
                &Actor::plugin_dir(),
            )
            .await
            {
                Ok(Some(deleted)) => tracing::info!(
                    event_type = name,
                    generation = deleted.generation,
                    cancelled = deleted.cancelled,
                    "plugin file removed: deleted event type"
                ),
                Ok(None) => {}
                Err(error) => tracing::error!(
                    event_type = name,
                    error = format!("{error:#}"),
                    "deleting event type failed"
                ),
            }
        }
        if let Err(error) = self.sync().await {
            tracing::error!(error = format!("{error:#}"), "reading the registry failed");
        }
        self.syncs.fetch_add(1, Ordering::SeqCst);
    }

    /// How many directory syncs have completed.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    async fn publish_logged(self: &Arc<Self>, name: &str) {
        let file = self.plugin_dir.join(format!("{name}.wasm"));
        match self.publish_file(&file, name, Source::Directory).await {
            Ok(Published::Added(generation) | Published::Replaced(generation)) => {
                tracing::info!(event_type = name, generation, file = %file.display(), "published plugin file to the fleet")
            }
            Ok(Published::Unchanged(_)) => {
                tracing::debug!(event_type = name, "plugin file is what the fleet has")
            }
            Ok(Published::Superseded) => tracing::info!(
                event_type = name,
                file = %file.display(),
                "plugin file is older than the type's latest change in the fleet, or was published before and changed since; the fleet's version stays"
            ),
            Err(error) => tracing::warn!(
                event_type = name,
                file = %file.display(),
                error = format!("{error:#}"),
                "plugin file not loaded (if it is still being written, it loads when complete); the running version stays"
            ),
        }
    }

    /// Publishes `NAME.wasm` (with its `NAME.toml`) when it is newer than
    /// the type's latest change and differs from it; checked first, like an
    /// upload.
    async fn publish_file(
        self: &Arc<Self>,
        wasm: &Path,
        name: &str,
        source: Source,
    ) -> anyhow::Result<Published> {
        let path = wasm.to_path_buf();
        let (bytes, settings, modified) = tokio::task::spawn_blocking(move || {
            let settings = PluginFile::read_beside(&path)?;
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let mut modified = mtime(&path)?;
            if let Ok(toml) = mtime(&path.with_extension("toml")) {
                modified = modified.max(toml);
            }
            anyhow::Ok((bytes, settings, modified))
        })
        .await??;
        let sha256 = crate::plugin::hex(&Sha256::digest(&bytes));
        // A directory's file competes with the registry's latest change; an
        // upload kept by an older version is an upload, and wins as one.
        let file_modified = (source == Source::Directory).then_some(modified);
        // Decided without compiling when the registry says so already.
        if let Some(row) = fleet::row(&self.pool, name).await? {
            if file_modified.is_some() && !row.file_supersedes(&sha256, &settings, modified) {
                return Ok(Published::Superseded);
            }
            if row.live()
                && row.sha256 == sha256
                && row.config == settings.config
                && row.webhook_url == settings.webhook_url
            {
                return Ok(Published::Unchanged(row.generation));
            }
        }
        let registry = self.registry.clone();
        let (name_owned, file) = (name.to_string(), PathBuf::from(format!("{name}.wasm")));
        let for_check = bytes.clone();
        let checked_settings = settings.clone();
        let plugin = tokio::task::spawn_blocking(move || {
            registry.load_checked(
                &name_owned,
                &for_check,
                checked_settings,
                PluginSource::Directory(file),
            )
        })
        .await??;
        // A directory's file, or an upload an older version kept: the host
        // publishes the latter by itself.
        let actor = match source {
            Source::Directory => Actor::plugin_dir(),
            Source::Api => Actor::kairos(),
        };
        fleet::publish(
            &self.pool,
            &fleet::Change {
                name,
                bytes: &bytes,
                sha256: &sha256,
                version: &plugin.info.version,
                settings: &settings,
                source,
                file_modified,
                actor: &actor,
            },
        )
        .await
    }

    /// Uploads kept under the data directory by versions before the fleet
    /// registry: each is published as an upload (it wins over a directory
    /// file, as it did), then the directory is moved aside so it is read
    /// once — unless one could not be published, to be tried again at the
    /// next start.
    async fn publish_legacy_uploads(self: &Arc<Self>) {
        let dir = self.legacy_uploads_dir.clone();
        if !dir.is_dir() {
            return;
        }
        let files = match wasm_files(&dir) {
            Ok(files) => files,
            Err(error) => {
                tracing::warn!(
                    error = format!("{error:#}"),
                    "reading the old uploads directory"
                );
                return;
            }
        };
        let mut all_published = true;
        for path in files {
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            match self.publish_file(&path, name, Source::Api).await {
                Ok(outcome) => {
                    tracing::info!(event_type = name, ?outcome, file = %path.display(), "published an upload kept by an older version")
                }
                Err(error) => {
                    all_published = false;
                    tracing::warn!(event_type = name, file = %path.display(), error = format!("{error:#}"), "an upload kept by an older version was not published; tried again at the next start")
                }
            }
        }
        if !all_published {
            return;
        }
        let aside = dir.with_extension("published");
        if let Err(error) = std::fs::rename(&dir, &aside) {
            tracing::warn!(%error, dir = %dir.display(), "could not move the old uploads directory aside");
        }
    }

    /// Serves what the registry holds: loads new and changed generations,
    /// stops serving deleted types, keeps the previous version of a type whose
    /// new component does not load here (and reports it).
    pub async fn sync(self: &Arc<Self>) -> anyhow::Result<()> {
        self.sync_with(None).await
    }

    /// `sync`, with a component just checked here, to reuse rather than load
    /// again.
    async fn sync_with(self: &Arc<Self>, checked: Option<Arc<LoadedPlugin>>) -> anyhow::Result<()> {
        let _one_at_a_time = self.applying.lock().await;
        let rows = fleet::rows(&self.pool).await?;
        let known: BTreeSet<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        for name in self.registry.snapshot().keys() {
            if !known.contains(name.as_str()) {
                tracing::warn!(event_type = %name, "the fleet's registry does not have this type; no longer serving it");
                self.stop_serving(name);
            }
        }
        for row in &rows {
            let local = self.locals().get(&row.name).cloned().unwrap_or_default();
            if local.generation == Some(row.generation) {
                continue;
            }
            if !row.live() {
                if self.stop_serving(&row.name) {
                    tracing::info!(event_type = %row.name, generation = row.generation, "event type deleted in the fleet; no longer serving it");
                    self.sweep_later(&row.name);
                }
                self.locals().insert(
                    row.name.clone(),
                    Local {
                        generation: Some(row.generation),
                        failed: None,
                    },
                );
                continue;
            }
            match self.load_row(row, checked.as_ref()).await {
                Ok(plugin) => {
                    let (plugin, replaced) = self.registry.insert(plugin);
                    self.locals().insert(
                        row.name.clone(),
                        Local {
                            generation: Some(row.generation),
                            failed: None,
                        },
                    );
                    tracing::info!(
                        event_type = plugin.name(),
                        generation = row.generation,
                        version = %plugin.info.version,
                        sha256 = %plugin.sha256,
                        compiled = ?plugin.compiled,
                        replaced = replaced.is_some(),
                        "serving event type"
                    );
                    self.schedule(plugin, row.generation);
                }
                Err(error) => {
                    let message = format!("{error:#}");
                    let first = local
                        .failed
                        .as_ref()
                        .is_none_or(|(g, _)| *g != row.generation);
                    if first {
                        tracing::error!(
                            event_type = %row.name,
                            generation = row.generation,
                            error = %message,
                            serving = ?local.generation.filter(|_| self.registry.get(&row.name).is_some()),
                            "could not load the fleet's version of this type; the previous version stays"
                        );
                    }
                    self.locals().entry(row.name.clone()).or_default().failed =
                        Some((row.generation, message));
                }
            }
        }
        Ok(())
    }

    /// A row's component with its settings: from the one just checked or
    /// served here when the component is the same, else from the registry's
    /// bytes (the compiled cache skips the compiling).
    async fn load_row(
        &self,
        row: &fleet::TypeRow,
        checked: Option<&Arc<LoadedPlugin>>,
    ) -> anyhow::Result<LoadedPlugin> {
        let source = match row.source {
            Source::Api => PluginSource::Upload,
            Source::Directory => {
                PluginSource::Directory(PathBuf::from(format!("{}.wasm", row.name)))
            }
        };
        let same = checked
            .filter(|p| p.name() == row.name && p.sha256 == row.sha256)
            .cloned()
            .or_else(|| {
                self.registry
                    .get(&row.name)
                    .filter(|p| p.sha256 == row.sha256)
            });
        if let Some(same) = same {
            // New settings can make a component fail: checked as a load is.
            let plugin = same.reconfigured(row.config.clone(), row.webhook_url.clone(), source);
            return tokio::task::spawn_blocking(move || {
                crate::plugin::check::self_check(&plugin).map_err(anyhow::Error::msg)?;
                Ok(plugin.with_fresh_health())
            })
            .await?;
        }
        let bytes = fleet::component(&self.pool, &row.sha256)
            .await?
            .with_context(|| format!("the registry has no component {}", row.sha256))?;
        let registry = self.registry.clone();
        let settings = PluginFile {
            config: row.config.clone(),
            webhook_url: row.webhook_url.clone(),
        };
        let (name, sha256) = (row.name.clone(), row.sha256.clone());
        tokio::task::spawn_blocking(move || {
            let plugin = registry.load_checked(&name, &bytes, settings, source)?;
            anyhow::ensure!(
                plugin.sha256 == sha256,
                "the stored component's bytes hash to {}, not {sha256}",
                plugin.sha256
            );
            Ok(plugin)
        })
        .await?
    }

    /// Stops serving a type here and stops its pass; whether it was served.
    fn stop_serving(&self, name: &str) -> bool {
        if let Some((_, pass)) = self.take_pass(name) {
            pass.abort();
        }
        self.registry.remove(name).is_some()
    }

    /// Cancels, a heartbeat from now, events of a deleted type that this
    /// replica planned while the deletion was on its way (a transaction in
    /// flight when it stopped serving the type).
    fn sweep_later(&self, name: &str) {
        let (pool, name, wait) = (self.pool.clone(), name.to_string(), self.fleet.heartbeat);
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            match fleet::sweep_deleted(&pool, &name).await {
                Ok(0) => {}
                Ok(cancelled) => {
                    tracing::info!(event_type = %name, cancelled, "cancelled events of a deleted type planned while it was deleted")
                }
                Err(error) => {
                    tracing::warn!(event_type = %name, error = format!("{error:#}"), "sweeping a deleted type")
                }
            }
        });
    }

    /// Runs the pass of `generation` here unless it runs here already, or
    /// another live replica runs it (`run_pass` finds out).
    fn schedule(self: &Arc<Self>, plugin: Arc<LoadedPlugin>, generation: i64) {
        let name = plugin.name().to_string();
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((running, task)) = passes.get(&name)
            && *running == generation
            && !task.is_finished()
        {
            return;
        }
        let (pool, me, batch) = (self.pool.clone(), self.fleet.replica, self.fleet.batch);
        let task = tokio::spawn(async move {
            let name = plugin.name().to_string();
            match scheduler::run_pass(&pool, plugin, generation, me, batch).await {
                Ok(PassEnd::Finished { .. } | PassEnd::NotMine) => {}
                Err(error) => {
                    tracing::error!(event_type = %name, generation, error = format!("{error:#}"), "scheduling pass failed; it is free for any replica to take");
                    let _ = fleet::release_pass(&pool, &name, generation, me).await;
                }
            }
        });
        if let Some((_, older)) = passes.insert(name, (generation, task)) {
            older.abort();
        }
    }

    /// Takes the passes of types served here whose owner went stale or gave
    /// them up.
    pub async fn take_over_passes(self: &Arc<Self>) -> anyhow::Result<()> {
        let served = self.registry.snapshot();
        let generations: Vec<(String, i64)> = served
            .keys()
            .filter_map(|name| Some((name.clone(), self.generation(name)?)))
            .collect();
        for name in fleet::orphaned_passes(&self.pool, &generations).await? {
            if let (Some(plugin), Some((_, generation))) = (
                served.get(&name),
                generations.iter().find(|(n, _)| *n == name),
            ) {
                tracing::info!(event_type = %name, generation, "taking over a scheduling pass whose replica stopped");
                self.schedule(plugin.clone(), *generation);
            }
        }
        Ok(())
    }

    /// Reports this replica and what it serves, and notes the replicas
    /// that went stale (for the operational webhooks).
    pub async fn heartbeat(&self) -> anyhow::Result<()> {
        fleet::heartbeat(
            &self.pool,
            self.fleet.replica,
            &self.fleet.host,
            self.fleet.heartbeat,
            &self.serving(),
        )
        .await
        .context("writing this replica's heartbeat")?;
        if crate::ops::note_stale_replicas(&self.pool)
            .await
            .context("looking for stale replicas")?
            > 0
        {
            tracing::warn!("a replica missed three heartbeats: replica.stale noted");
        }
        Ok(())
    }

    /// Follows the registry until `shutdown` resolves: on each notification,
    /// and on every heartbeat (a notification can be lost with a dropped
    /// connection), it compares generations and serves what changed; every
    /// heartbeat it also takes over passes left by stale replicas. Fails
    /// when the database cannot be reached (the supervisor starts it again).
    pub async fn follow(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        if !self.fleet.follow {
            return self.report_only(shutdown).await;
        }
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .context("connecting to listen for registry changes")?;
        listener.listen(fleet::CHANNEL).await?;
        // Whatever changed before the listening began.
        self.sync().await?;
        let mut tick = tokio::time::interval(self.fleet.heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                received = listener.try_recv() => match received? {
                    Some(notification) => {
                        tracing::debug!(change = notification.payload(), "registry changed");
                        self.sync().await?;
                    }
                    // The connection dropped; the next `try_recv` connects
                    // and listens again. What changed meanwhile is read now.
                    None => {
                        tracing::warn!("lost the connection that listens for registry changes; reconnecting");
                        self.sync().await?;
                    }
                },
                _ = tick.tick() => {
                    self.heartbeat().await?;
                    self.sync().await?;
                    self.take_over_passes().await?;
                }
            }
        }
    }

    /// A replica held at what it loaded at start (`KAIROS_FOLLOW=false`)
    /// still reports itself every heartbeat, so the fleet does not take it
    /// for dead.
    async fn report_only(&self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tokio::pin!(shutdown);
        let mut tick = tokio::time::interval(self.fleet.heartbeat);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                _ = tick.tick() => self.heartbeat().await?,
            }
        }
    }

    /// Leaves the fleet (shutdown): stops the passes running here and frees
    /// them for the other replicas, and removes this replica's report.
    pub async fn leave(&self) {
        self.abort_passes();
        if let Err(error) = fleet::leave(&self.pool, self.fleet.replica).await {
            tracing::warn!(%error, "could not remove this replica from the fleet's list");
        }
    }

    fn take_pass(&self, name: &str) -> Option<(i64, JoinHandle<()>)> {
        self.passes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// Waits until every scheduling pass started here so far has finished.
    pub async fn settle(&self) {
        let passes: Vec<_> =
            std::mem::take(&mut *self.passes.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        for (_, pass) in passes {
            let _ = pass.await;
        }
    }

    /// Stops every scheduling pass running here.
    pub fn abort_passes(&self) {
        for (_, (_, pass)) in
            std::mem::take(&mut *self.passes.lock().unwrap_or_else(|e| e.into_inner()))
        {
            pass.abort();
        }
    }
}

/// A file's modification time.
fn mtime(path: &Path) -> anyhow::Result<DateTime<Utc>> {
    let modified = std::fs::metadata(path)
        .and_then(|m| m.modified())
        .with_context(|| format!("reading the modification time of {}", path.display()))?;
    Ok(DateTime::<Utc>::from(modified))
}
