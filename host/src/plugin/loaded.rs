//! One loaded event type: its compiled component, ready to instantiate, and
//! the operator's settings for it. Every call gets a fresh sandboxed `Store`.

use super::bindings::{self, EventPlugin, EventPluginPre};
use super::engine::{CallState, PluginRuntime};
use super::{PluginError, Subject};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use wasmtime::component::Component;
use wasmtime::{Store, Trap};

/// The operator's key/value settings for one event type.
pub type PluginConfig = BTreeMap<String, String>;

/// What a plugin says it is (`describe()`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub description: String,
    pub dates: Vec<String>,
}

pub struct LoadedPlugin {
    pub info: PluginInfo,
    pub sha256: String,
    pub config: PluginConfig,
    /// Where this type's webhooks go; `None` means the host's default URL.
    pub webhook_url: Option<String>,
    pub loaded_at: DateTime<Utc>,
    runtime: PluginRuntime,
    pre: EventPluginPre<CallState>,
}

impl std::fmt::Debug for LoadedPlugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedPlugin")
            .field("info", &self.info)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

impl LoadedPlugin {
    /// Compiles and links `bytes`, then asks the component to describe itself.
    pub fn load(
        runtime: &PluginRuntime,
        bytes: &[u8],
        config: PluginConfig,
        webhook_url: Option<String>,
    ) -> anyhow::Result<Self> {
        let component = Component::new(&runtime.engine, bytes)
            .map_err(|e| anyhow::anyhow!("not a valid WebAssembly component: {e}"))?;
        let instance_pre = runtime
            .linker
            .instantiate_pre(&component)
            .map_err(|e| anyhow::anyhow!("cannot link the component: {e}"))?;
        let pre = EventPluginPre::new(instance_pre).map_err(|e| {
            anyhow::anyhow!("the component does not export kairos:plugin/event-handler@0.1.x: {e}")
        })?;
        let mut plugin = Self {
            info: PluginInfo {
                name: String::new(),
                version: String::new(),
                description: String::new(),
                dates: Vec::new(),
            },
            sha256: hex(&Sha256::digest(bytes)),
            config,
            webhook_url,
            loaded_at: Utc::now(),
            runtime: runtime.clone(),
            pre,
        };
        let info = plugin
            .call(|store, p| p.kairos_plugin_event_handler().call_describe(store))
            .map_err(|e| anyhow::anyhow!("describe() failed: {e}"))?;
        plugin.info = PluginInfo {
            name: info.name,
            version: info.version,
            description: info.description,
            dates: info.dates,
        };
        Ok(plugin)
    }

    pub fn name(&self) -> &str {
        &self.info.name
    }

    /// Whether `subject` has every date this type needs.
    pub fn applies_to(&self, subject: &Subject) -> bool {
        self.info
            .dates
            .iter()
            .all(|d| subject.dates.contains_key(d))
    }

    /// The first occurrence strictly after `after`, in the subject's local time.
    pub fn next_occurrence(
        &self,
        subject: &Subject,
        after: NaiveDateTime,
    ) -> Result<Option<NaiveDateTime>, PluginError> {
        let wit_subject = to_wit_subject(subject);
        let config = self.config_list();
        let returned = self.call(|store, p| {
            p.kairos_plugin_event_handler().call_next_occurrence(
                store,
                &wit_subject,
                to_wit_datetime(after),
                &config,
            )
        })?;
        match returned.map_err(PluginError::Returned)? {
            None => Ok(None),
            Some(next) => {
                let next = from_wit_datetime(next)?;
                if next <= after {
                    return Err(PluginError::Returned(format!(
                        "next-occurrence returned {next}, which is not after {after}"
                    )));
                }
                Ok(Some(next))
            }
        }
    }

    /// The message text for `occurrence`.
    pub fn format_message(
        &self,
        subject: &Subject,
        occurrence: NaiveDateTime,
    ) -> Result<String, PluginError> {
        let wit_subject = to_wit_subject(subject);
        let config = self.config_list();
        let message = self.call(|store, p| {
            p.kairos_plugin_event_handler().call_format_message(
                store,
                &wit_subject,
                to_wit_datetime(occurrence),
                &config,
            )
        })?;
        message.map(|m| m.text).map_err(PluginError::Returned)
    }

    fn config_list(&self) -> Vec<(String, String)> {
        self.config
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Runs `f` on a fresh instance in a fresh store, and turns a wasmtime
    /// error into the limit or trap that caused it.
    fn call<R>(
        &self,
        f: impl FnOnce(&mut Store<CallState>, &EventPlugin) -> wasmtime::Result<R>,
    ) -> Result<R, PluginError> {
        let mut store = self.runtime.new_store(&self.info.name);
        let result = self
            .pre
            .instantiate(&mut store)
            .and_then(|plugin| f(&mut store, &plugin));
        result.map_err(|err| classify(&store, &err))
    }
}

fn classify(store: &Store<CallState>, err: &wasmtime::Error) -> PluginError {
    let state = store.data();
    if state.memory_exceeded {
        return PluginError::Memory;
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => PluginError::Fuel,
        Some(Trap::Interrupt) => PluginError::Timeout,
        _ => {
            let stderr = state.stderr.contents();
            let stderr = String::from_utf8_lossy(&stderr);
            let stderr = stderr.trim();
            if stderr.is_empty() {
                PluginError::Trap(err.to_string())
            } else {
                PluginError::Trap(format!("{err}: {stderr}"))
            }
        }
    }
}

fn to_wit_subject(subject: &Subject) -> bindings::Subject {
    bindings::Subject {
        id: subject.id.to_string(),
        first_name: subject.first_name.clone(),
        last_name: subject.last_name.clone(),
        timezone: subject.timezone.clone(),
        dates: subject
            .dates
            .iter()
            .map(|(name, d)| (name.clone(), to_wit_date(*d)))
            .collect(),
        attributes: subject
            .attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
    }
}

fn to_wit_date(d: NaiveDate) -> bindings::Date {
    bindings::Date {
        year: d.year(),
        month: d.month() as u8,
        day: d.day() as u8,
    }
}

fn to_wit_datetime(t: NaiveDateTime) -> bindings::LocalDatetime {
    bindings::LocalDatetime {
        year: t.year(),
        month: t.month() as u8,
        day: t.day() as u8,
        hour: t.hour() as u8,
        minute: t.minute() as u8,
        second: t.second() as u8,
    }
}

fn from_wit_datetime(t: bindings::LocalDatetime) -> Result<NaiveDateTime, PluginError> {
    NaiveDate::from_ymd_opt(t.year, t.month.into(), t.day.into())
        .and_then(|d| d.and_hms_opt(t.hour.into(), t.minute.into(), t.second.into()))
        .ok_or_else(|| {
            PluginError::InvalidDatetime(format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                t.year, t.month, t.day, t.hour, t.minute, t.second
            ))
        })
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
