//! The set of loaded event types. Readers take a snapshot (`ArcSwap`), so a
//! type replaced while a call is in flight finishes that call on the old
//! version and the next call uses the new one.

use super::{LoadedPlugin, PluginConfig, PluginRuntime};
use anyhow::Context;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub type PluginMap = BTreeMap<String, Arc<LoadedPlugin>>;

pub struct Registry {
    runtime: PluginRuntime,
    plugins: ArcSwap<PluginMap>,
}

/// `NAME.toml` beside `NAME.wasm`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginFile {
    #[serde(default)]
    config: PluginConfig,
    webhook_url: Option<String>,
}

impl Registry {
    pub fn new(runtime: PluginRuntime) -> Self {
        Self {
            runtime,
            plugins: ArcSwap::from_pointee(PluginMap::new()),
        }
    }

    pub fn runtime(&self) -> &PluginRuntime {
        &self.runtime
    }

    /// A consistent view of every loaded type.
    pub fn snapshot(&self) -> Arc<PluginMap> {
        self.plugins.load_full()
    }

    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.plugins.load().get(name).cloned()
    }

    /// Adds or replaces a type; returns the one it replaced.
    pub fn insert(&self, plugin: LoadedPlugin) -> Option<Arc<LoadedPlugin>> {
        let plugin = Arc::new(plugin);
        let mut replaced = None;
        self.plugins.rcu(|current| {
            let mut next = PluginMap::clone(current);
            replaced = next.insert(plugin.name().to_string(), plugin.clone());
            next
        });
        replaced
    }

    pub fn remove(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        let mut removed = None;
        self.plugins.rcu(|current| {
            let mut next = PluginMap::clone(current);
            removed = next.remove(name);
            next
        });
        removed
    }

    /// Loads every `*.wasm` in `dir` (with its `NAME.toml`), named by file stem.
    pub fn load_dir(&self, dir: &Path) -> anyhow::Result<Vec<String>> {
        let mut loaded = Vec::new();
        let entries = std::fs::read_dir(dir)
            .with_context(|| format!("reading plugin directory {}", dir.display()))?;
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "wasm"))
            .collect();
        paths.sort();
        for path in paths {
            let plugin = self
                .load_file(&path)
                .with_context(|| format!("loading plugin {}", path.display()))?;
            tracing::info!(
                event_type = plugin.name(),
                version = %plugin.info.version,
                sha256 = %plugin.sha256,
                "loaded event type"
            );
            loaded.push(plugin.name().to_string());
            self.insert(plugin);
        }
        Ok(loaded)
    }

    fn load_file(&self, path: &Path) -> anyhow::Result<LoadedPlugin> {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("plugin file name is not UTF-8")?;
        let settings_path = path.with_extension("toml");
        let settings: PluginFile = match std::fs::read_to_string(&settings_path) {
            Ok(text) => toml::from_str(&text)
                .with_context(|| format!("parsing {}", settings_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => PluginFile::default(),
            Err(e) => return Err(e).context(format!("reading {}", settings_path.display())),
        };
        let bytes = std::fs::read(path)?;
        let plugin =
            LoadedPlugin::load(&self.runtime, &bytes, settings.config, settings.webhook_url)?;
        anyhow::ensure!(
            plugin.name() == stem,
            "the component describes itself as {:?}, but its file is named {stem:?}",
            plugin.name()
        );
        Ok(plugin)
    }
}
