//! The set of loaded event types. Readers take a snapshot (`ArcSwap`), so a
//! type replaced while a call is in flight finishes that call on the old
//! version and the next call uses the new one.

use super::{LoadedPlugin, PluginConfig, PluginRuntime, PluginSource, check};
use anyhow::Context;
use arc_swap::ArcSwap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub type PluginMap = BTreeMap<String, Arc<LoadedPlugin>>;

pub struct Registry {
    runtime: PluginRuntime,
    plugins: ArcSwap<PluginMap>,
}

/// `NAME.toml` beside `NAME.wasm`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginFile {
    // Plain values before tables: TOML needs `webhook_url` ahead of `[config]`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    #[serde(default)]
    pub config: PluginConfig,
}

impl PluginFile {
    /// Reads `NAME.toml` beside `wasm`; a missing file is an empty config.
    pub fn read_beside(wasm: &Path) -> anyhow::Result<Self> {
        let path = wasm.with_extension("toml");
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let file: Self =
                    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
                if let Some(url) = &file.webhook_url {
                    reqwest::Url::parse(url)
                        .with_context(|| format!("{}: webhook_url", path.display()))?;
                }
                Ok(file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(e).context(format!("reading {}", path.display())),
        }
    }
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

    /// Adds or replaces a type; returns it as loaded and the one it replaced.
    pub fn insert(&self, plugin: LoadedPlugin) -> (Arc<LoadedPlugin>, Option<Arc<LoadedPlugin>>) {
        let plugin = Arc::new(plugin);
        let mut replaced = None;
        self.plugins.rcu(|current| {
            let mut next = PluginMap::clone(current);
            replaced = next.insert(plugin.name().to_string(), plugin.clone());
            next
        });
        (plugin, replaced)
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

    /// Loads every `*.wasm` in `dir` (with its `NAME.toml`), named by file
    /// stem. Every file is tried; the errors are returned beside the names loaded.
    pub fn load_dir(
        &self,
        dir: &Path,
        source: fn(PathBuf) -> PluginSource,
    ) -> anyhow::Result<(Vec<String>, Vec<anyhow::Error>)> {
        let (mut loaded, mut errors) = (Vec::new(), Vec::new());
        for path in wasm_files(dir)? {
            match self.load_file(&path, source(path.clone())) {
                Ok(plugin) => {
                    tracing::info!(
                        event_type = plugin.name(),
                        version = %plugin.info.version,
                        sha256 = %plugin.sha256,
                        compiled = ?plugin.compiled,
                        "loaded event type"
                    );
                    loaded.push(plugin.name().to_string());
                    self.insert(plugin);
                }
                Err(e) => errors.push(e.context(format!("loading plugin {}", path.display()))),
            }
        }
        Ok((loaded, errors))
    }

    /// Loads `NAME.wasm` with its `NAME.toml`, checking the name it describes
    /// itself by and running the self-check. Does not insert it.
    pub fn load_file(&self, path: &Path, source: PluginSource) -> anyhow::Result<LoadedPlugin> {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .context("plugin file name is not UTF-8")?;
        let settings = PluginFile::read_beside(path)?;
        let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        self.load_checked(stem, &bytes, settings, source)
    }

    /// Loads a component for the type `name`: it must describe itself by that
    /// name and pass the self-check. Does not insert it.
    pub fn load_checked(
        &self,
        name: &str,
        bytes: &[u8],
        settings: PluginFile,
        source: PluginSource,
    ) -> anyhow::Result<LoadedPlugin> {
        let plugin = LoadedPlugin::load(
            &self.runtime,
            bytes,
            settings.config,
            settings.webhook_url,
            source,
        )?;
        anyhow::ensure!(
            plugin.name() == name,
            "the component describes itself as {:?}, but is loaded as {name:?}",
            plugin.name()
        );
        check::self_check(&plugin).map_err(anyhow::Error::msg)?;
        Ok(plugin.with_fresh_health())
    }
}

/// The `*.wasm` files of `dir`, sorted.
pub fn wasm_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("reading plugin directory {}", dir.display()))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wasm") && p.is_file())
        .collect();
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::PluginFile;

    #[test]
    fn settings_written_for_an_upload_read_back_the_same() {
        let file = PluginFile {
            webhook_url: Some("https://example.test/hook".into()),
            config: [("send_at".to_string(), "10:30".to_string())].into(),
        };
        let text = toml::to_string(&file).unwrap();
        assert_eq!(toml::from_str::<PluginFile>(&text).unwrap(), file);
        let dir = std::env::temp_dir().join(format!("kairos-pf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("t.toml"), &text).unwrap();
        assert_eq!(PluginFile::read_beside(&dir.join("t.wasm")).unwrap(), file);
        std::fs::write(dir.join("t.toml"), "[config]\nsend_at = 9\n").unwrap();
        assert!(
            PluginFile::read_beside(&dir.join("t.wasm")).is_err(),
            "values are strings"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
