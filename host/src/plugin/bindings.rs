//! Host-side bindings generated from `wit/` (`kairos:plugin/event-plugin`).

wasmtime::component::bindgen!({
    world: "event-plugin",
    path: "../wit",
});

pub use self::kairos::plugin::log::Level;
pub use self::kairos::plugin::types::{Date, LocalDatetime, Subject};
