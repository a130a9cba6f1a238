//! One loaded event type: its compiled component, ready to instantiate, and
//! the operator's settings for it. Every call gets a fresh sandboxed `Store`.

use super::bindings::{self, EventPlugin, EventPluginPre};
use super::engine::{CallState, Compiled, PluginLog, PluginRuntime};
use super::{PluginError, Subject};
use chrono::{DateTime, Datelike, NaiveDate, NaiveDateTime, Timelike, Utc};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{Store, Trap};

/// Longest message text a plugin may return.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Failures among its latest calls after which a type is reported as failing.
pub const FAILING_AFTER: u64 = 3;

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

/// Where a loaded type came from; it decides who may replace or unload it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", content = "path", rename_all = "snake_case")]
pub enum PluginSource {
    /// A `NAME.wasm` in the watched plugin directory.
    Directory(PathBuf),
    /// Uploaded through the admin API (kept in the fleet's registry).
    Upload,
    /// Loaded by a tool (`kairos plugin check`), not by a running host.
    File(PathBuf),
}

/// Counters of one loaded type's calls, for `GET /event-types` and metrics.
#[derive(Debug, Default)]
pub struct PluginHealth {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub consecutive_failures: AtomicU64,
    /// The outcomes of the last `RECENT` calls: bit i set = the i-th latest
    /// failed; the count of calls recorded sits above bit 16.
    recent: AtomicU32,
    pub last_error: Mutex<Option<String>>,
}

/// How many of the latest calls `failing` looks at.
const RECENT: u32 = 16;

impl PluginHealth {
    fn record(&self, result: Result<(), &PluginError>) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        let failed = result.is_err();
        let _ = self
            .recent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |packed| {
                let count = (packed >> 16).saturating_add(1).min(RECENT);
                let bits = ((packed & 0xffff) << 1 | u32::from(failed)) & 0xffff;
                Some(count << 16 | bits)
            });
        match result {
            Ok(()) => self.consecutive_failures.store(0, Ordering::Relaxed),
            Err(error) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                self.consecutive_failures.fetch_add(1, Ordering::Relaxed);
                *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some(error.to_string());
            }
        }
    }

    /// Failures among the latest calls (at most 16) and how many calls that is.
    pub fn recent_failures(&self) -> (u32, u32) {
        let packed = self.recent.load(Ordering::Relaxed);
        ((packed & 0xffff).count_ones(), packed >> 16)
    }

    /// Whether the type keeps failing: at least `FAILING_AFTER` of its latest
    /// calls failed, and at least half of them.
    pub fn failing(&self) -> bool {
        let (failed, calls) = self.recent_failures();
        u64::from(failed) >= FAILING_AFTER && failed * 2 >= calls
    }
}

/// What one call cost, for `kairos plugin check`.
#[derive(Debug, Clone, Copy)]
pub struct CallReport {
    pub fuel_used: u64,
    pub peak_memory: usize,
    /// The whole call: a fresh store and instance, then the function.
    pub elapsed: Duration,
    /// Of `elapsed`, making the store and the instance (an interpreter's
    /// start-up is here, not in the function).
    pub instantiation: Duration,
}

pub struct LoadedPlugin {
    pub info: PluginInfo,
    pub sha256: String,
    pub config: PluginConfig,
    /// Where this type's webhooks go; `None` means the host's default URL.
    pub webhook_url: Option<String>,
    pub loaded_at: DateTime<Utc>,
    pub source: PluginSource,
    /// Whether the machine code came from the compiled-component cache.
    pub compiled: Compiled,
    pub health: PluginHealth,
    runtime: PluginRuntime,
    pre: EventPluginPre<CallState>,
    log: Arc<PluginLog>,
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
    /// Compiles (or reads from the cache) and links `bytes`, then asks the
    /// component to describe itself.
    pub fn load(
        runtime: &PluginRuntime,
        bytes: &[u8],
        config: PluginConfig,
        webhook_url: Option<String>,
        source: PluginSource,
    ) -> anyhow::Result<Self> {
        let sha256 = hex(&Sha256::digest(bytes));
        let (component, compiled) = runtime.compile(bytes, &sha256)?;
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
            sha256,
            config,
            webhook_url,
            loaded_at: Utc::now(),
            source,
            compiled,
            health: PluginHealth::default(),
            runtime: runtime.clone(),
            pre,
            log: Arc::new(PluginLog::new("(loading)", "")),
        };
        let (info, _) =
            plugin.call(|store, p| p.kairos_plugin_event_handler().call_describe(store));
        let info = info.map_err(|e| anyhow::anyhow!("describe() failed: {e}"))?;
        anyhow::ensure!(
            valid_type_name(&info.name),
            "describe() returned the name {:?}; a type name is 1 to 64 of a-z, 0-9, '-' and '_', starting with a letter or digit",
            info.name
        );
        plugin.log = Arc::new(PluginLog::new(&info.name, &info.version));
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

    /// Forgets the calls made so far (the self-check's), so health counts
    /// only calls made in service.
    pub fn with_fresh_health(mut self) -> Self {
        self.health = PluginHealth::default();
        self
    }

    /// The same component with other settings (a change of config or
    /// webhook only): no compiling, and fresh health counters.
    pub fn reconfigured(
        &self,
        config: PluginConfig,
        webhook_url: Option<String>,
        source: PluginSource,
    ) -> Self {
        Self {
            info: self.info.clone(),
            sha256: self.sha256.clone(),
            config,
            webhook_url,
            loaded_at: Utc::now(),
            source,
            compiled: self.compiled,
            health: PluginHealth::default(),
            runtime: self.runtime.clone(),
            pre: self.pre.clone(),
            log: self.log.clone(),
        }
    }

    /// Log lines this type wrote to the host's log, and lines the caps dropped.
    pub fn log_counts(&self) -> (u64, u64) {
        (
            self.log.logged.load(Ordering::Relaxed),
            self.log.dropped.load(Ordering::Relaxed),
        )
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
        self.next_occurrence_reported(subject, after).0
    }

    /// `next_occurrence`, with what the call cost.
    pub fn next_occurrence_reported(
        &self,
        subject: &Subject,
        after: NaiveDateTime,
    ) -> (Result<Option<NaiveDateTime>, PluginError>, CallReport) {
        let wit_subject = to_wit_subject(subject);
        let config = self.config_list();
        let (returned, report) = self.call(|store, p| {
            p.kairos_plugin_event_handler().call_next_occurrence(
                store,
                &wit_subject,
                to_wit_datetime(after),
                &config,
            )
        });
        let result = returned.and_then(|r| Self::check_next(r, after));
        self.health.record(result.as_ref().map(|_| ()));
        (result, report)
    }

    fn check_next(
        returned: Result<Option<bindings::LocalDatetime>, String>,
        after: NaiveDateTime,
    ) -> Result<Option<NaiveDateTime>, PluginError> {
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
        self.format_message_reported(subject, occurrence).0
    }

    /// `format_message`, with what the call cost.
    pub fn format_message_reported(
        &self,
        subject: &Subject,
        occurrence: NaiveDateTime,
    ) -> (Result<String, PluginError>, CallReport) {
        let wit_subject = to_wit_subject(subject);
        let config = self.config_list();
        let (returned, report) = self.call(|store, p| {
            p.kairos_plugin_event_handler().call_format_message(
                store,
                &wit_subject,
                to_wit_datetime(occurrence),
                &config,
            )
        });
        let result = returned.and_then(|message| {
            let text = message.map_err(PluginError::Returned)?.text;
            if text.len() > MAX_MESSAGE_BYTES {
                return Err(PluginError::Output(format!(
                    "message text is {} bytes; the limit is {MAX_MESSAGE_BYTES}",
                    text.len()
                )));
            }
            Ok(text)
        });
        self.health.record(result.as_ref().map(|_| ()));
        (result, report)
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
    ) -> (Result<R, PluginError>, CallReport) {
        let started = Instant::now();
        let mut store = self.runtime.new_store(&self.log);
        let instance = self.pre.instantiate(&mut store);
        let instantiation = started.elapsed();
        let result = instance.and_then(|plugin| f(&mut store, &plugin));
        let report = CallReport {
            fuel_used: self
                .runtime
                .limits
                .fuel
                .saturating_sub(store.get_fuel().unwrap_or(0)),
            peak_memory: store.data().peak_memory,
            elapsed: started.elapsed(),
            instantiation,
        };
        // The call that asks a component being loaded for its name has none yet.
        if !self.info.name.is_empty() {
            crate::metrics::plugin_call(&self.info.name, report.elapsed);
        }
        (result.map_err(|err| classify(&store, &err)), report)
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
        trap => {
            // The trap itself, not wasmtime's backtrace; then what the guest
            // said on stderr (a Rust panic message), without the hint lines.
            let what = match trap {
                Some(trap) => trap.to_string(),
                None => err
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            };
            let stderr = state.stderr.contents();
            let said: Vec<&str> = std::str::from_utf8(&stderr)
                .unwrap_or_default()
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with("note: run with"))
                .collect();
            if said.is_empty() {
                PluginError::Trap(what)
            } else {
                PluginError::Trap(format!("{what}; {}", said.join(" ")))
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

/// A type name: 1 to 64 of `a-z`, `0-9`, `-`, `_`, starting with a letter or digit.
/// It names files and URL paths, so nothing else is allowed.
pub fn valid_type_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !name.starts_with(['-', '_'])
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
