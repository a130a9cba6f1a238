//! Event types as WebAssembly components: the engine and its limits
//! (`engine`), one loaded component (`LoadedPlugin`), and the set of loaded
//! types the rest of the host reads (`registry`).

mod bindings;
mod engine;
mod loaded;
mod registry;

pub use engine::{PluginLimits, PluginRuntime};
pub use loaded::{LoadedPlugin, PluginConfig, PluginInfo};
pub use registry::Registry;

use chrono::NaiveDate;
use std::collections::BTreeMap;

/// Why a plugin call failed. "The plugin trapped" (a limit or a wasm trap)
/// stays apart from "the plugin returned `err`"; the `Display` form is what
/// lands in an event's `last_error`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PluginError {
    #[error("timeout: the call ran past its deadline")]
    Timeout,
    #[error("fuel: the call ran out of fuel")]
    Fuel,
    #[error("memory: the call exceeded the memory limit")]
    Memory,
    #[error("trap: {0}")]
    Trap(String),
    #[error("plugin error: {0}")]
    Returned(String),
    #[error("plugin error: returned an invalid local datetime {0}")]
    InvalidDatetime(String),
}

/// What a plugin sees of a user: the `subject` record, in host types.
#[derive(Debug, Clone)]
pub struct Subject {
    pub id: uuid::Uuid,
    pub first_name: String,
    pub last_name: String,
    pub timezone: String,
    pub dates: BTreeMap<String, NaiveDate>,
    pub attributes: BTreeMap<String, String>,
}
