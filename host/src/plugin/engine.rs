//! The one wasmtime `Engine` and `Linker` shared by every plugin, and the
//! per-call sandbox: a fresh `Store` with a deadline, a fuel budget, a memory
//! cap, captured stderr and no capabilities.

use super::bindings::{EventPlugin, Level};
use rand::SeedableRng;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, ResourceLimiter,
    Store,
};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxView, WasiView};

/// How often the epoch ticker advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of a plugin's stderr (a panic message) kept for the error.
const STDERR_CAPACITY: usize = 4096;
/// Bytes of one log line a plugin may emit; the rest is cut.
pub const MAX_LOG_LINE: usize = 1024;
/// Log lines one call may emit; the rest are dropped.
pub const MAX_LOG_LINES_PER_CALL: u32 = 16;
/// Log lines one event type may emit per second, across all its calls.
const MAX_LOG_LINES_PER_SECOND: u32 = 50;
/// Plugin calls that may run at once in one process, across all types: the
/// instance slots the pooling allocator keeps. A host runs at most
/// `KAIROS_CONCURRENCY` deliveries plus a few API calls and passes at once;
/// a call beyond this fails with a typed trap rather than waiting.
pub const MAX_CONCURRENT_CALLS: u32 = 1000;
/// Core module instances and linear memories one component instance may use
/// (a Rust component has one or two of each; an interpreter's more).
const CORE_INSTANCES_PER_CALL: u32 = 4;
const MEMORIES_PER_CALL: u32 = 2;
/// Bytes of each slot's memory kept resident between calls (see `new`): a
/// Rust component's stack and heap for one call fit. Slots are reused by the
/// same component first, so few are ever warm.
const KEEP_RESIDENT: usize = 1 << 20;

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
    /// Compiled components (`.cwasm`) by sha256 and engine compatibility hash,
    /// so a restart or a re-load of a known component does not compile again.
    cache_dir: Option<PathBuf>,
}

/// Where a component's machine code came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compiled {
    Fresh,
    FromCache,
}

impl PluginRuntime {
    pub fn new(limits: PluginLimits) -> anyhow::Result<Self> {
        let mut config = Config::new();
        config.wasm_component_model(true);
        config.epoch_interruption(true);
        config.consume_fuel(true);
        // A fresh instance per call comes from a pool of slots created once,
        // rather than fresh mappings per call: profiling showed the on-demand
        // allocator's mmap/munmap (and the TLB shootdowns they cause) taking
        // a large share of the host's CPU. Each memory reserves only what the
        // memory limit allows, so a pool costs little address space.
        let memory = limits.memory.max(64 << 10);
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(MAX_CONCURRENT_CALLS)
            .total_core_instances(MAX_CONCURRENT_CALLS * CORE_INSTANCES_PER_CALL)
            .total_memories(MAX_CONCURRENT_CALLS * MEMORIES_PER_CALL)
            .total_tables(MAX_CONCURRENT_CALLS * CORE_INSTANCES_PER_CALL)
            .max_memory_size(memory)
            // A slot's memory is reset for its next call by writing back the
            // pages the call dirtied (found with the `PAGEMAP_SCAN` ioctl,
            // Linux 6.7+; elsewhere the first bytes are `memset`), rather
            // than `madvise`d away and faulted in again: profiling a backlog
            // showed `madvise`, the page faults and their TLB shootdowns at
            // ~17 % of the host's CPU. A call that dirtied more than this
            // has the rest decommitted as before.
            .linear_memory_keep_resident(KEEP_RESIDENT.min(memory))
            .table_keep_resident(64 << 10)
            .pagemap_scan(Enabled::Auto);
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        config.memory_reservation(memory as u64);
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
            cache_dir: None,
        })
    }

    /// Keeps compiled components in `dir` (created if missing).
    pub fn with_cache(mut self, dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("creating the plugin cache {}: {e}", dir.display()))?;
        self.cache_dir = Some(dir.to_path_buf());
        Ok(self)
    }

    pub fn limits(&self) -> PluginLimits {
        self.limits
    }

    /// The cache file for a component: its sha256 plus a hash of everything in
    /// this engine's configuration that compiled code depends on (a `.cwasm`
    /// made without fuel is refused by an engine with fuel, and so on).
    pub fn cache_path(&self, sha256: &str) -> Option<PathBuf> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        let dir = self.cache_dir.as_ref()?;
        Some(dir.join(format!("{sha256}-{:016x}.cwasm", hasher.finish())))
    }

    /// Compiles `bytes`, or reads the machine code compiled earlier.
    pub fn compile(&self, bytes: &[u8], sha256: &str) -> anyhow::Result<(Component, Compiled)> {
        let cached = self.cache_path(sha256);
        if let Some(path) = cached.as_deref().filter(|p| p.exists()) {
            // SAFETY: the cache directory is the host's own; files in it are
            // written by `Component::serialize` below under their content hash.
            match unsafe { Component::deserialize_file(&self.engine, path) } {
                Ok(component) => return Ok((component, Compiled::FromCache)),
                Err(error) => tracing::warn!(
                    path = %path.display(), %error, "unusable compiled component in the cache; compiling again"
                ),
            }
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| anyhow::anyhow!("not a valid WebAssembly component: {e}"))?;
        if let Some(path) = cached
            && let Err(error) = write_atomically(&path, &component.serialize()?)
        {
            tracing::warn!(path = %path.display(), %error, "could not cache the compiled component");
        }
        Ok((component, Compiled::Fresh))
    }

    /// A store for one call, with every limit armed.
    pub(super) fn new_store(&self, log: &Arc<PluginLog>) -> Store<CallState> {
        let stderr = MemoryOutputPipe::new(STDERR_CAPACITY);
        // No preopened directories, environment, arguments or sockets; clocks
        // read zero and both random sources are fixed-seed: a plugin is a pure
        // function of its inputs.
        let wasi = WasiCtx::builder()
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(rand::rngs::StdRng::seed_from_u64(0))
            .insecure_random(rand::rngs::StdRng::seed_from_u64(0))
            .insecure_random_seed(0)
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            stderr,
            memory_limit: self.limits.memory,
            memory_exceeded: false,
            peak_memory: 0,
            log: log.clone(),
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
    /// The largest linear memory the call grew to, in bytes.
    pub(super) peak_memory: usize,
    log: Arc<PluginLog>,
    log_lines: u32,
}

/// Who a plugin's log lines are attributed to, and the per-second budget all
/// calls of that type share.
#[derive(Debug)]
pub struct PluginLog {
    name: String,
    version: String,
    /// (start of the current one-second window, lines logged in it, lines dropped)
    window: Mutex<(Instant, u32, u64)>,
    /// Lines written to the host's log, and lines dropped by either cap.
    pub logged: AtomicU64,
    pub dropped: AtomicU64,
}

impl PluginLog {
    pub fn new(name: &str, version: &str) -> Self {
        Self {
            name: name.to_string(),
            version: version.to_string(),
            window: Mutex::new((Instant::now(), 0, 0)),
            logged: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
        }
    }

    /// Whether one more line fits in this second's budget. When a new window
    /// opens, the lines dropped in the previous ones are reported once.
    fn admit(&self) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|e| e.into_inner());
        let (started, used, dropped) = &mut *window;
        if started.elapsed() >= Duration::from_secs(1) {
            if *dropped > 0 {
                tracing::warn!(
                    event_type = %self.name,
                    version = %self.version,
                    dropped = *dropped,
                    "plugin log lines dropped (over {MAX_LOG_LINES_PER_SECOND}/s)"
                );
            }
            *started = Instant::now();
            *used = 0;
            *dropped = 0;
        }
        if *used < MAX_LOG_LINES_PER_SECOND {
            *used += 1;
            true
        } else {
            *dropped += 1;
            false
        }
    }
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
        self.peak_memory = self.peak_memory.max(desired);
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
        if self.log_lines > MAX_LOG_LINES_PER_CALL || !self.log.admit() {
            self.log.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.log.logged.fetch_add(1, Ordering::Relaxed);
        let mut message = message;
        if message.len() > MAX_LOG_LINE {
            let mut cut = MAX_LOG_LINE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let event_type = self.log.name.as_str();
        let version = self.log.version.as_str();
        match level {
            Level::Trace => {
                tracing::trace!(target: "kairos::plugin_log", event_type, version, "{message}")
            }
            Level::Debug => {
                tracing::debug!(target: "kairos::plugin_log", event_type, version, "{message}")
            }
            Level::Info => {
                tracing::info!(target: "kairos::plugin_log", event_type, version, "{message}")
            }
            Level::Warn => {
                tracing::warn!(target: "kairos::plugin_log", event_type, version, "{message}")
            }
            Level::Error => {
                tracing::error!(target: "kairos::plugin_log", event_type, version, "{message}")
            }
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

/// Writes `path` through a temporary file and a rename, so a reader never sees
/// half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = path.with_extension(format!("tmp-{}-{n}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
