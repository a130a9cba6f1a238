//! kairos: a timezone-aware event scheduler whose event types are
//! WebAssembly components.
//!
//! A request arrives in `http`, is stored by `store`, and `scheduler` asks
//! each `plugin` for the next occurrence and writes it as a pending event.
//! The `claimer` takes due events and `delivery` sends them as signed
//! (`signing`) webhooks. `startup` wires it all; `embedded_pg` is the default
//! database.

pub mod claimer;
pub mod config;
pub mod delivery;
pub mod embedded_pg;
pub mod http;
pub mod metrics;
pub mod plugin;
pub mod scheduler;
pub mod signing;
pub mod startup;
pub mod store;
pub mod telemetry;
