//! kairos: a timezone-aware event scheduler whose event types are
//! WebAssembly components.
//!
//! A request arrives in `http`, is stored by `store`, and `scheduler` asks
//! each `plugin` for the next occurrence and writes it as a pending event;
//! what a plugin could not plan waits in `replan` until it is. The `claimer`
//! takes due events under a `lease` and `delivery` sends them as signed
//! (`signing`) webhooks; `outbound` decides which addresses a webhook may
//! reach and keeps URLs out of stored errors. `event_types` loads, replaces
//! and unloads types in a running host; `plugin_kit` is `kairos plugin
//! check|new`. `startup` wires it all and `supervisor` keeps its loops
//! running; `retention` keeps history's daily partitions, `audit` the
//! record of every change, and `ops` tells an operator's webhook when
//! things go wrong; `embedded_pg` is
//! the default database.

pub mod ahead;
pub mod ahead_cli;
pub mod audit;
pub mod audit_cli;
pub mod claimer;
pub mod config;
pub mod delivery;
pub mod embedded_pg;
pub mod endpoints;
pub mod event_types;
pub mod fleet;
pub mod http;
pub mod import;
pub mod import_cli;
pub mod lease;
pub mod metrics;
pub mod ops;
pub mod outbound;
pub mod plugin;
pub mod plugin_kit;
pub mod replan;
pub mod retention;
pub mod scheduler;
pub mod signing;
pub mod startup;
pub mod store;
pub mod supervisor;
pub mod telemetry;
