//! The one wasmtime `Engine` and `Linker` shared by every plugin, and the
//! per-call sandbox: a fresh `Store` with a deadline, a fuel budget, a memory
//! cap, captured stderr and no capabilities.

use super::bindings::{EventPlugin, Level};
use std::sync::Arc;
use std::time::Duration;
use wasmtime::component::{HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, ResourceLimiter, Store};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// How often the epoch ticker advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of a plugin's stderr (a panic message) kept for the error.
const STDERR_CAPACITY: usize = 4096;
/// Bytes of one log line a plugin may emit; the rest is cut.
const MAX_LOG_LINE: usize = 1024;
/// Log lines one call may emit; the rest are dropped.
const MAX_LOG_LINES_PER_CALL: u32 = 16;

/// The limits every plugin call runs under.
#[derive(Debug, Clone, Copy)]
pub struct PluginLimits {
    /// Wall-clock time one call may take.
    pub deadline: Duration,
    /// Fuel (roughly, wasm instructions) one call may burn.
    pub fuel: u64,
    /// Linear memory one instance may grow to, in bytes.
    pub memory: usize,
}

impl Default for PluginLimits {
    fn default() -> Self {
        Self {
            deadline: Duration::from_millis(500),
            fuel: 50_000_000,
            memory: 32 << 20,
        }
    }
}

/// Shared by all loaded plugins: compiling, linking and the epoch ticker are
/// paid once per process, not per call.
#[derive(Clone)]
pub struct PluginRuntime {
    pub(super) engine: Engine,
    pub(super) linker: Arc<Linker<CallState>>,
    pub(super) limits: PluginLimits,
}

impl PluginRuntime {
    pub fn new(limits: PluginLimits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(true);
        let engine = Engine::new(&config)?;

        let mut linker = Linker::<CallState>::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        EventPlugin::add_to_linker::<_, HasSelf<CallState>>(&mut linker, |state| state)?;

        let weak = engine.weak();
        std::thread::Builder::new()
            .name("kairos-epoch".into())
            .spawn(move || {
                while let Some(engine) = weak.upgrade() {
                    engine.increment_epoch();
                    drop(engine);
                    std::thread::sleep(EPOCH_TICK);
                }
            })?;

        Ok(Self {
            engine,
            linker: Arc::new(linker),
            limits,
        })
    }

    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    /// A store for one call, with every limit armed.
    pub(super) fn new_store(&self, plugin_name: &str) -> Store<CallState> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .insecure_random_seed(0)
            .build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            stderr,
            memory_limit: self.limits.memory,
            memory_exceeded: false,
            plugin_name: plugin_name.to_string(),
            log_lines: 0,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|state| state);
        store
            .set_fuel(self.limits.fuel)
            .expect("fuel is enabled on this engine");
        let ticks = self
            .limits
            .deadline
            .as_millis()
            .div_ceil(EPOCH_TICK.as_millis())
            .max(1);
        store.set_epoch_deadline(u64::try_from(ticks).unwrap_or(u64::MAX));
        store.epoch_deadline_trap();
        store
    }
}

/// The state of one call's `Store`.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(super) stderr: MemoryOutputPipe,
    memory_limit: usize,
    /// Set when the guest asked for more memory than allowed, so the error can
    /// say `memory` rather than a bare trap.
    pub(super) memory_exceeded: bool,
    plugin_name: String,
    log_lines: u32,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl ResourceLimiter for CallState {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            self.memory_exceeded = true;
            return Err(wasmtime::Error::msg("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

impl super::bindings::kairos::plugin::types::Host for CallState {}

impl super::bindings::kairos::plugin::log::Host for CallState {
    fn log(&mut self, level: Level, message: String) {
        self.log_lines += 1;
        if self.log_lines > MAX_LOG_LINES_PER_CALL {
            return;
        }
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let plugin = self.plugin_name.as_str();
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }
}

/// Plugins get no clock: both WASI clocks read zero.
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}
