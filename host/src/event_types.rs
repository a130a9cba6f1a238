//! Event types in a running host: loading, replacing and unloading them —
//! from the plugin directory at start, the admin API and the directory
//! watcher — and bringing the schedule in line each time. A new type is
//! scheduled for every user who has its dates, a replaced one recomputes its
//! pending, unclaimed events, an unloaded one's pending events are cancelled.

use crate::plugin::{LoadedPlugin, PluginFile, PluginSource, Registry, valid_type_name};
use crate::{scheduler, store};
use anyhow::Context;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::task::JoinHandle;

pub struct EventTypes {
    pool: PgPool,
    registry: Arc<Registry>,
    plugin_dir: PathBuf,
    /// Components uploaded through the admin API, kept so they survive a restart.
    uploads_dir: PathBuf,
    batch: usize,
    /// The scheduling pass running for each type; a newer load of the same
    /// type aborts the older pass.
    passes: Mutex<BTreeMap<String, JoinHandle<()>>>,
    /// Directory syncs completed, loaded or not: lets a caller see that a
    /// change was looked at.
    syncs: AtomicU64,
}

/// What a load did to the set of types.
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
        uploads_dir: PathBuf,
        batch: usize,
    ) -> Self {
        Self {
            pool,
            registry,
            plugin_dir,
            uploads_dir,
            batch: batch.max(1),
            passes: Mutex::new(BTreeMap::new()),
            syncs: AtomicU64::new(0),
        }
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    pub fn plugin_dir(&self) -> &Path {
        &self.plugin_dir
    }

    /// Loads the plugin directory, then the uploads (which win over a file of
    /// the same name), and schedules every type in the background. A file
    /// that fails to load is logged and skipped: the others still serve.
    pub async fn load_all(self: &Arc<Self>) -> anyhow::Result<Vec<String>> {
        std::fs::create_dir_all(&self.uploads_dir)
            .with_context(|| format!("creating {}", self.uploads_dir.display()))?;
        type Source = fn(PathBuf) -> PluginSource;
        let sources: [(PathBuf, Source); 2] = [
            (self.plugin_dir.clone(), PluginSource::Directory),
            (self.uploads_dir.clone(), PluginSource::Upload),
        ];
        for (dir, source) in sources {
            if !dir.is_dir() {
                tracing::warn!(dir = %dir.display(), "plugin directory does not exist");
                continue;
            }
            let registry = self.registry.clone();
            let (_, errors) =
                tokio::task::spawn_blocking(move || registry.load_dir(&dir, source)).await??;
            for error in errors {
                tracing::error!(error = format!("{error:#}"), "event type not loaded");
            }
        }
        let snapshot = self.registry.snapshot();
        for plugin in snapshot.values() {
            self.schedule(plugin.clone());
        }
        Ok(snapshot.keys().cloned().collect())
    }

    /// Validates, keeps on disk and swaps in an uploaded component.
    pub async fn upload(
        self: &Arc<Self>,
        name: &str,
        bytes: Vec<u8>,
        settings: PluginFile,
    ) -> Result<(Change, Arc<LoadedPlugin>), UploadError> {
        let wasm_path = self.uploads_dir.join(format!("{name}.wasm"));
        let registry = self.registry.clone();
        let (name_owned, source) = (name.to_string(), PluginSource::Upload(wasm_path.clone()));
        let (plugin, bytes, settings) = tokio::task::spawn_blocking(move || {
            registry
                .load_checked(&name_owned, &bytes, settings.clone(), source)
                .map(|plugin| (plugin, bytes, settings))
        })
        .await
        .map_err(anyhow::Error::from)?
        .map_err(|e| UploadError::Invalid(format!("{e:#}")))?;

        let toml = toml::to_string(&settings).context("writing the type's settings")?;
        let uploads_dir = self.uploads_dir.clone();
        tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
            std::fs::create_dir_all(&uploads_dir)?;
            // Settings first: a crash between the two writes leaves the old
            // component with the new settings, never a new component unconfigured.
            crate::plugin::write_atomically(&wasm_path.with_extension("toml"), toml.as_bytes())?;
            crate::plugin::write_atomically(&wasm_path, &bytes)?;
            Ok(())
        })
        .await
        .map_err(anyhow::Error::from)?
        .context("keeping the uploaded component on disk")?;
        Ok(self.swap_in(plugin))
    }

    /// Unloads a type, forgets its upload and cancels its pending events.
    /// `None` when no such type is loaded.
    pub async fn unload(&self, name: &str) -> anyhow::Result<Option<Arc<LoadedPlugin>>> {
        let Some(removed) = self.registry.remove(name) else {
            return Ok(None);
        };
        if let Some(pass) = self.take_pass(name) {
            pass.abort();
            let _ = pass.await;
        }
        if let PluginSource::Upload(path) = &removed.source {
            for file in [path.clone(), path.with_extension("toml")] {
                match std::fs::remove_file(&file) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e).context(format!("removing {}", file.display())),
                }
            }
        }
        let cancelled = store::cancel_pending_of_type(&self.pool, name).await?;
        tracing::info!(event_type = name, cancelled, "unloaded event type");
        Ok(Some(removed))
    }

    /// Brings the type `name` in line with `NAME.wasm`/`NAME.toml` in the
    /// plugin directory: loads, replaces or unloads it. A file that does not
    /// load (a partial write, a bad component) leaves the running type as it is.
    pub async fn sync_from_dir(self: &Arc<Self>, name: &str) {
        self.sync_one(name).await;
        self.syncs.fetch_add(1, Ordering::SeqCst);
    }

    /// How many directory syncs have completed.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::SeqCst)
    }

    async fn sync_one(self: &Arc<Self>, name: &str) {
        if !valid_type_name(name) {
            tracing::debug!(name, "ignoring a file that is not named like an event type");
            return;
        }
        let current = self.registry.get(name);
        if let Some(current) = &current
            && matches!(current.source, PluginSource::Upload(_))
        {
            tracing::info!(
                event_type = name,
                "plugin directory changed, but this type was uploaded through the admin API; the upload stays"
            );
            return;
        }
        let wasm = self.plugin_dir.join(format!("{name}.wasm"));
        if !wasm.is_file() {
            if current.is_some()
                && let Err(error) = self.unload(name).await
            {
                tracing::error!(
                    event_type = name,
                    error = format!("{error:#}"),
                    "unloading failed"
                );
            }
            return;
        }
        let registry = self.registry.clone();
        let (name_owned, path) = (name.to_string(), wasm.clone());
        let loaded =
            tokio::task::spawn_blocking(move || -> anyhow::Result<Option<LoadedPlugin>> {
                let settings = PluginFile::read_beside(&path)?;
                let bytes = std::fs::read(&path)?;
                let sha256 = crate::plugin::hex(&Sha256::digest(&bytes));
                if let Some(current) = registry.get(&name_owned)
                    && current.sha256 == sha256
                    && current.config == settings.config
                    && current.webhook_url == settings.webhook_url
                {
                    return Ok(None);
                }
                registry
                    .load_checked(&name_owned, &bytes, settings, PluginSource::Directory(path))
                    .map(Some)
            })
            .await;
        match loaded {
            Ok(Ok(Some(plugin))) => {
                self.swap_in(plugin);
            }
            Ok(Ok(None)) => tracing::debug!(event_type = name, "plugin files unchanged"),
            Ok(Err(error)) => tracing::warn!(
                event_type = name,
                file = %wasm.display(),
                error = format!("{error:#}"),
                "plugin file not loaded (if it is still being written, it loads when complete); the running version stays"
            ),
            Err(error) => tracing::error!(event_type = name, %error, "loading task failed"),
        }
    }

    fn swap_in(self: &Arc<Self>, plugin: LoadedPlugin) -> (Change, Arc<LoadedPlugin>) {
        let (plugin, replaced) = self.registry.insert(plugin);
        let change = if replaced.is_some() {
            Change::Replaced
        } else {
            Change::Added
        };
        tracing::info!(
            event_type = plugin.name(),
            version = %plugin.info.version,
            sha256 = %plugin.sha256,
            compiled = ?plugin.compiled,
            change = ?change,
            "event type loaded"
        );
        self.schedule(plugin.clone());
        (change, plugin)
    }

    /// Starts the scheduling pass for `plugin`, aborting an older one.
    fn schedule(self: &Arc<Self>, plugin: Arc<LoadedPlugin>) {
        let name = plugin.name().to_string();
        let (pool, batch) = (self.pool.clone(), self.batch);
        let pass = tokio::spawn(async move {
            let name = plugin.name().to_string();
            if let Err(error) = scheduler::schedule_type(&pool, plugin, batch).await {
                tracing::error!(event_type = %name, error = format!("{error:#}"), "scheduling pass failed; it runs again on the next load");
            }
        });
        let mut passes = self.passes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(older) = passes.insert(name, pass) {
            older.abort();
        }
    }

    fn take_pass(&self, name: &str) -> Option<JoinHandle<()>> {
        self.passes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
    }

    /// Waits until every scheduling pass started so far has finished.
    pub async fn settle(&self) {
        let passes: Vec<_> =
            std::mem::take(&mut *self.passes.lock().unwrap_or_else(|e| e.into_inner()))
                .into_values()
                .collect();
        for pass in passes {
            let _ = pass.await;
        }
    }

    /// Stops every scheduling pass (shutdown).
    pub fn abort_passes(&self) {
        for (_, pass) in std::mem::take(&mut *self.passes.lock().unwrap_or_else(|e| e.into_inner()))
        {
            pass.abort();
        }
    }
}
