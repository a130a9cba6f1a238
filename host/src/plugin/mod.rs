//! Event types as WebAssembly components: the engine and its limits
//! (`engine`), one loaded component (`LoadedPlugin`), and the set of loaded
//! types the rest of the host reads (`registry`).

mod bindings;
pub mod check;
mod engine;
mod loaded;
mod registry;
pub mod watcher;

pub use engine::{
    Compiled, MAX_CONCURRENT_CALLS, MAX_LOG_LINE, MAX_LOG_LINES_PER_CALL, PluginLimits,
    PluginRuntime, write_atomically,
};
pub(crate) use loaded::hex;
pub use loaded::{
    CallReport, FAILING_AFTER, LoadedPlugin, MAX_MESSAGE_BYTES, PluginConfig, PluginHealth,
    PluginInfo, PluginSource, valid_type_name,
};
pub use registry::{PluginFile, Registry, wasm_files};

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
    #[error("plugin error: output too large: {0}")]
    Output(String),
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
