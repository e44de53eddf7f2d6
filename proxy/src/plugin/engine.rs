//! The wasmtime side of policies: one engine for the process, components
//! compiled once per content hash, and calls that each get a fresh store and
//! instance (from a pre-linked `InstancePre`) with an epoch deadline and a
//! memory cap, so that a trap, an endless loop or leftover state can never
//! reach another request. Guests see the WIT `host` interface and the
//! small WASI of `wasi` (captured stdout/stderr, clocks, random, an empty
//! environment); every other import is linked to a trap, so no file,
//! socket, environment variable or timer is reachable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Duration;

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    StoreLimitsBuilder,
};

use super::bindings::enrich::{profile_edge::policy::host, EnrichPolicyPre};
use super::bindings::invalidate::InvalidatePolicyPre;
use super::bindings::previous::enrich::{
    profile_edge::policy::host as previous_host, EnrichPolicyPre as PreviousEnrichPre,
};
use super::bindings::previous::invalidate::InvalidatePolicyPre as PreviousInvalidatePre;
use super::bindings::{CallInfo, CURRENT, PREVIOUS};
use super::calls::{Limits, World};
use super::error::PluginError;
use super::host::{HostState, PluginContext};
use super::limiter::CallLimiter;
use super::wasi;

/// The epoch ticks every millisecond; deadlines are counted in ticks.
const TICK: Duration = Duration::from_millis(1);
/// Largest linear memory any policy may have (the pooling allocator
/// reserves slots of this size); `memory_limit` is checked against it.
pub const MAX_MEMORY: usize = 128 * 1024 * 1024;
/// Linear memory bytes per pool slot kept resident between instances.
const KEEP_RESIDENT: usize = 4 * 1024 * 1024;

/// A component linked and type-checked against its world, ready to
/// instantiate cheaply for every call: built for the current WIT version,
/// or for the previous one (`Previous*`), which a rolling upgrade still runs.
#[derive(Clone)]
pub enum Prepared {
    Enrich(EnrichPolicyPre<HostState>),
    Invalidate(InvalidatePolicyPre<HostState>),
    PreviousEnrich(PreviousEnrichPre<HostState>),
    PreviousInvalidate(PreviousInvalidatePre<HostState>),
}

impl Prepared {
    pub fn world(&self) -> World {
        match self {
            Prepared::Enrich(_) | Prepared::PreviousEnrich(_) => World::Enrich,
            Prepared::Invalidate(_) | Prepared::PreviousInvalidate(_) => World::Invalidate,
        }
    }

    /// The `profile-edge:policy` version the component was built for.
    pub fn wit_version(&self) -> &'static str {
        match self {
            Prepared::Enrich(_) | Prepared::Invalidate(_) => CURRENT,
            Prepared::PreviousEnrich(_) | Prepared::PreviousInvalidate(_) => PREVIOUS,
        }
    }
}

/// The process-wide wasmtime engine and the cache of compiled components.
pub struct PluginRuntime {
    engine: Engine,
    linker: Linker<HostState>,
    compiled: Mutex<HashMap<String, Component>>,
    ticker: Arc<Ticker>,
}

/// Runs the epoch clock only while calls are in flight: a ticker that
/// woke every millisecond for good cost an idle proxy (or one with no
/// policy at all) about a thousand wake-ups a second. Each call's store
/// holds a `Ticking` guard; the thread parks when the last one is gone.
/// Deadlines are unchanged: a store's deadline counts ticks from its
/// creation, and no tick passes before the first call after a park wakes
/// the thread, so a parked clock only ever lengthens the time before the
/// first tick, which the `+1` tick of slack already allows for.
pub(super) struct Ticker {
    /// Calls in flight; `None` once the runtime is gone.
    calls: Mutex<Option<usize>>,
    wake: Condvar,
}

impl Ticker {
    fn new() -> Arc<Ticker> {
        Arc::new(Ticker {
            calls: Mutex::new(Some(0)),
            wake: Condvar::new(),
        })
    }

    fn start(self: &Arc<Self>) -> Ticking {
        let mut calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = calls.as_mut() {
            *n += 1;
            if *n == 1 {
                self.wake.notify_one();
            }
        }
        Ticking(self.clone())
    }

    /// Blocks while no call is in flight; false once the runtime is gone.
    fn wait_for_calls(&self) -> bool {
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner());
        let calls = self
            .wake
            .wait_while(calls, |c| *c == Some(0))
            .unwrap_or_else(|p| p.into_inner());
        calls.is_some()
    }

    fn stop(&self) {
        *self.calls.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.wake.notify_one();
    }

    /// The ticker thread: one epoch increment per `TICK` while any call is
    /// in flight.
    fn run(&self, engine: wasmtime::EngineWeak) {
        while self.wait_for_calls() {
            // Sleep first: a tick is never shorter than `TICK`, so a call
            // that wakes the thread is never cut before its deadline.
            std::thread::sleep(TICK);
            let Some(engine) = engine.upgrade() else {
                return;
            };
            engine.increment_epoch();
        }
    }
}

/// Keeps the epoch ticking while one call's store is alive.
pub(super) struct Ticking(Arc<Ticker>);

impl Drop for Ticking {
    fn drop(&mut self) {
        let mut calls = self.0.calls.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = calls.as_mut() {
            *n = n.saturating_sub(1);
        }
    }
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.ticker.stop();
    }
}

impl PluginRuntime {
    /// The shared runtime; its epoch ticker thread starts with it.
    pub fn global() -> Result<Arc<PluginRuntime>, PluginError> {
        static RUNTIME: OnceLock<Result<Arc<PluginRuntime>, PluginError>> = OnceLock::new();
        RUNTIME.get_or_init(PluginRuntime::new).clone()
    }

    fn new() -> Result<Arc<PluginRuntime>, PluginError> {
        let engine = match Engine::new(&engine_config(true)) {
            Ok(e) => e,
            Err(e) => {
                // Some hosts refuse the pooling allocator's address-space
                // reservation; instances then cost ~20 us instead of ~1 us.
                tracing::warn!(error = %e, "pooling allocator unavailable; using on-demand instances");
                Engine::new(&engine_config(false))
                    .map_err(|e| PluginError::Runtime(format!("wasmtime engine: {e}")))?
            }
        };
        let mut linker = Linker::new(&engine);
        // Both versions' `host`: their instance names differ (`@0.2.0`,
        // `@0.1.0`), so a guest links to the one it was built for.
        host::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            .and_then(|()| {
                previous_host::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)
            })
            .map_err(|e| PluginError::Runtime(format!("linking host imports: {e}")))?;
        let ticker = Ticker::new();
        let weak = engine.weak();
        let thread_ticker = ticker.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || thread_ticker.run(weak))
            .map_err(|e| PluginError::Runtime(format!("starting the epoch ticker: {e}")))?;
        Ok(Arc::new(PluginRuntime {
            engine,
            linker,
            compiled: Mutex::new(HashMap::new()),
            ticker,
        }))
    }

    /// The engine every policy runs on, for `examples/policy_cost.rs`,
    /// which times instantiation and calls separately.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Compiles (or takes from the cache) a component and links it for
    /// `world`, of the current WIT version or else the previous one.
    /// Errors are written for the operator who deployed the file: a
    /// component of neither version is refused naming the version (and
    /// world) it was built for.
    pub fn prepare(&self, bytes: &[u8], world: World) -> Result<(Prepared, String), PluginError> {
        let sha = hex(&Sha256::digest(bytes));
        let component = self.compile(bytes, &sha)?;
        let mut linker = self.linker.clone();
        wasi::define(&mut linker, &self.engine, &component)
            .map_err(|e| PluginError::Link(first_line(&format!("{e:#}"))))?;
        linker
            .define_unknown_imports_as_traps(&component)
            .map_err(|e| PluginError::Link(first_line(&format!("{e:#}"))))?;
        let pre = linker
            .instantiate_pre(&component)
            .map_err(|e| PluginError::Link(first_line(&format!("{e:#}"))))?;
        // The exports are looked up by name, version included: at most one
        // of the two can match.
        let current = match world {
            World::Enrich => EnrichPolicyPre::new(pre.clone()).map(Prepared::Enrich),
            World::Invalidate => InvalidatePolicyPre::new(pre.clone()).map(Prepared::Invalidate),
        };
        let current_err = match current {
            Ok(prepared) => return Ok((prepared, sha)),
            Err(e) => e,
        };
        let previous = match world {
            World::Enrich => PreviousEnrichPre::new(pre).map(Prepared::PreviousEnrich),
            World::Invalidate => PreviousInvalidatePre::new(pre).map(Prepared::PreviousInvalidate),
        };
        match previous {
            Ok(prepared) => Ok((prepared, sha)),
            Err(previous_err) => Err(self.refusal(&component, world, current_err, previous_err)),
        }
    }

    /// Why a component fits neither version of `world`, from the
    /// `profile-edge:policy` interfaces it exports (or, failing those,
    /// imports): built for a version this proxy does not accept, for
    /// another world, or with signatures that do not match its version.
    fn refusal(
        &self,
        component: &Component,
        world: World,
        current_err: wasmtime::Error,
        previous_err: wasmtime::Error,
    ) -> PluginError {
        let ty = component.component_type();
        let exports: Vec<PolicyInterface> = ty
            .exports(&self.engine)
            .filter_map(|(name, _)| PolicyInterface::parse(name))
            .collect();
        let imports: Vec<PolicyInterface> = ty
            .imports(&self.engine)
            .filter_map(|(name, _)| PolicyInterface::parse(name))
            .collect();
        let wrong_world = |reason: String| PluginError::WrongWorld {
            world: world.as_str(),
            reason: one_line(&reason),
        };
        let Some(found) = exports.first().or(imports.first()) else {
            return wrong_world(
                "it exports no profile-edge:policy interface (not a policy, or built from another WIT package)".into(),
            );
        };
        let built_world = exports.iter().find_map(|i| i.world());
        let Some(track) = found.track() else {
            return PluginError::WrongVersion {
                built_for: found.version.clone(),
                world: built_world.map(World::as_str),
            };
        };
        match built_world {
            Some(w) if w != world => wrong_world(format!(
                "it is built for world {} of profile-edge:policy@{}",
                w.as_str(),
                found.version
            )),
            _ => {
                let e = if track == Track::Current {
                    current_err
                } else {
                    previous_err
                };
                wrong_world(format!(
                    "built for profile-edge:policy@{}, but does not match it: {e:#}",
                    found.version
                ))
            }
        }
    }

    fn compile(&self, bytes: &[u8], sha: &str) -> Result<Component, PluginError> {
        if let Some(c) = self.compiled.lock().ok().and_then(|m| m.get(sha).cloned()) {
            return Ok(c);
        }
        if wasmparser_is_core_module(bytes) {
            return Err(PluginError::CoreModule);
        }
        if !bytes.starts_with(b"\0asm") {
            // wasmtime would say so over a dozen lines of hex bytes.
            return Err(PluginError::NotAComponent(
                "not a WebAssembly file (does not start with \\0asm)".into(),
            ));
        }
        let component = Component::new(&self.engine, bytes)
            .map_err(|e| PluginError::NotAComponent(first_line(&format!("{e:#}"))))?;
        if let Ok(mut m) = self.compiled.lock() {
            m.insert(sha.to_string(), component.clone());
        }
        Ok(component)
    }

    /// A store for one call; `call` is what `host.request()` answers (a
    /// guest of the previous version has no such function: `None`).
    pub(super) fn store(
        &self,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        call: Option<&CallInfo>,
    ) -> Store<HostState> {
        let state = HostState {
            limits: CallLimiter::new(
                StoreLimitsBuilder::new()
                    .memory_size(limits.memory)
                    .instances(16)
                    .tables(16)
                    .memories(4)
                    .trap_on_grow_failure(true)
                    .build(),
            ),
            ctx: ctx.clone(),
            output: wasi::Output::default(),
            call: call.cloned(),
            _ticking: self.ticker.start(),
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.limits);
        arm_deadline(&mut store, limits);
        store.epoch_deadline_trap();
        store
    }
}

/// Gives the store's next call its whole deadline, from now.
pub(super) fn arm_deadline(store: &mut Store<HostState>, limits: &Limits) {
    // +1: the current tick is already partly over.
    let ticks = limits.deadline.as_millis().div_ceil(TICK.as_millis()) as u64 + 1;
    store.set_epoch_deadline(ticks);
}

/// Which accepted version a `profile-edge:policy` version falls in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Track {
    Current,
    Previous,
}

/// A `profile-edge:policy/NAME@VERSION` interface a component exports or
/// imports.
struct PolicyInterface {
    name: String,
    /// "" when the name carries none.
    version: String,
}

impl PolicyInterface {
    fn parse(full: &str) -> Option<PolicyInterface> {
        let rest = full.strip_prefix("profile-edge:policy/")?;
        let (name, version) = rest.split_once('@').unwrap_or((rest, ""));
        Some(PolicyInterface {
            name: name.to_string(),
            version: version.to_string(),
        })
    }

    /// The world whose export this interface is.
    fn world(&self) -> Option<World> {
        match self.name.as_str() {
            "enricher" => Some(World::Enrich),
            "invalidator" => Some(World::Invalidate),
            _ => None,
        }
    }

    /// Whether the version is one this proxy accepts: the same major and
    /// minor as the current or the previous version (a patch adds nothing
    /// a guest can see).
    fn track(&self) -> Option<Track> {
        let v = minor_of(&self.version);
        if v == minor_of(CURRENT) {
            Some(Track::Current)
        } else if v == minor_of(PREVIOUS) {
            Some(Track::Previous)
        } else {
            None
        }
    }
}

/// The minor version track a full version is on: "0.2.0" -> "0.2".
pub fn minor_of(version: &str) -> &str {
    match version.match_indices('.').nth(1) {
        Some((i, _)) => &version[..i],
        None => version,
    }
}

/// Folds a multi-line error into one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn engine_config(pooling: bool) -> Config {
    let mut cfg = Config::new();
    cfg.wasm_component_model(true);
    cfg.epoch_interruption(true);
    // A hot swap compiles on one blocking thread instead of every core, so
    // that live requests (and their policy deadlines) keep their CPU.
    cfg.parallel_compilation(false);
    if pooling {
        let mut pool = PoolingAllocationConfig::default();
        // Calls are synchronous and short, so few instances are alive at
        // once; these bound the slots, not the request concurrency.
        pool.total_component_instances(256)
            .total_core_instances(512)
            .total_memories(256)
            .total_tables(512)
            .max_memory_size(MAX_MEMORY)
            // Every call gets a fresh instance. Resetting a slot with
            // madvise makes the next call fault every page back in, which
            // measured ~100 us per call on this VM; keeping slots resident
            // and resetting only the dirty pages (PAGEMAP_SCAN, Linux 6.7+;
            // plain memset of the low bytes elsewhere) avoids that.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 * 1024)
            .pagemap_scan(Enabled::Auto);
        cfg.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    }
    cfg
}

/// A core module starts with the wasm magic and version 1; a component
/// with the same magic and a different version/layer field.
fn wasmparser_is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [1, 0, 0, 0]
}

/// The first line of a wasmtime message, which can go on to dump bytes
/// ("bad magic number - expected=[\n 0x0, ..."): a load error is one line
/// in a log, `check` and `/admin/plugins`.
fn first_line(message: &str) -> String {
    let first = message.lines().next().unwrap_or_default().trim_end();
    let first = match first.rfind(" - ") {
        Some(i) if first.ends_with(['[', '{', '(']) => &first[..i],
        _ => first,
    };
    first.trim_end_matches([':', ' ']).to_string()
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads a plugin file, with errors that name it.
pub fn read(path: &Path) -> Result<Vec<u8>, PluginError> {
    std::fs::read(path).map_err(|e| PluginError::Read {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::first_line;

    #[test]
    fn load_errors_keep_their_first_useful_line() {
        assert_eq!(
            first_line("failed to parse WebAssembly module: magic header not detected: bad magic number - expected=[\n    0x0,\n    0x61,\n]"),
            "failed to parse WebAssembly module: magic header not detected: bad magic number"
        );
        assert_eq!(
            first_line("unexpected end-of-file (at offset 0x8)"),
            "unexpected end-of-file (at offset 0x8)"
        );
    }
}
