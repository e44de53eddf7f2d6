//! The plugins a config names: loading (compile off the request path,
//! type-check against the world the config uses them for, smoke-test with a
//! canned input), atomic swap, and hot reload when a `.wasm` file changes or
//! a config reload adds, removes or re-points a plugin. A plugin that fails
//! any step is rejected and the last good version keeps serving; requests in
//! flight finish on the version they started with.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use prometheus::{Histogram, IntCounter};
use serde_json::json;

use super::bindings::{lend, Action, CallInfo, Profile, ProfileRef};
use super::calls::{CallError, EnrichInstance, Limits, World, SMOKE_PATH};
use super::engine::{read, PluginRuntime, Prepared};
use super::error::PluginError;
use super::host::PluginContext;
use crate::config::{Config, PluginConfig};
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::reload::ConfigDiff;
use outcomes::Outcomes;

mod outcomes;

/// The canned input of the smoke test. A policy must handle it without
/// error before it serves.
pub const SMOKE_BODY: &str =
    r#"{"profileEdgeSmokeTest":true,"posts":[{"id":"smoke-post","userId":"5a0c3e"}]}"#;
pub const SMOKE_EVENT: &str =
    r#"{"profileEdgeSmokeTest":true,"type":"profile-updated","userId":"5a0c3e"}"#;

/// A plugin that passed loading, ready to serve.
/// Deadline of the smoke-test calls at load (or the plugin's own, if longer).
const SMOKE_DEADLINE: Duration = Duration::from_secs(1);

pub struct LoadedPlugin {
    pub name: String,
    pub path: PathBuf,
    pub sha256: String,
    pub loaded_at: SystemTime,
    prepared: Prepared,
    ctx: Arc<PluginContext>,
    limits: Limits,
    runtime: Arc<PluginRuntime>,
    /// Set once the smoke test passed: smoke-test calls are not traffic.
    meters: Option<Meters>,
    /// What this version did with traffic, for `/admin/plugins` and the
    /// failure log's rate limit.
    outcomes: Outcomes,
}

/// The plugin's metric series, resolved once.
#[derive(Clone)]
struct Meters {
    ok: IntCounter,
    error: IntCounter,
    trap: IntCounter,
    timeout: IntCounter,
    duration: Histogram,
}

impl Meters {
    fn new(m: &Metrics, name: &str) -> Meters {
        let c = |o: &str| m.plugin_calls.with_label_values(&[name, o]);
        Meters {
            ok: c("ok"),
            error: c("error"),
            trap: c("trap"),
            timeout: c("timeout"),
            duration: m.plugin_duration.with_label_values(&[name]),
        }
    }

    fn record<T>(&self, started: Instant, r: &Result<T, CallError>) {
        self.duration.observe(started.elapsed().as_secs_f64());
        match r {
            Ok(_) => self.ok.inc(),
            Err(CallError::Error(_)) => self.error.inc(),
            Err(CallError::Trap(_)) => self.trap.inc(),
            Err(CallError::Timeout(_)) => self.timeout.inc(),
        }
    }
}

impl LoadedPlugin {
    pub fn world(&self) -> World {
        self.prepared.world()
    }

    /// The `profile-edge:policy` version it was built for.
    pub fn wit_version(&self) -> &'static str {
        self.prepared.wit_version()
    }

    fn call<T>(&self, f: impl FnOnce() -> Result<T, CallError>) -> Result<T, CallError> {
        let started = Instant::now();
        let r = f();
        // Smoke-test calls (before the meters are set) are not traffic: a
        // failing one is reported by the load that ran it.
        let Some(m) = &self.meters else {
            return r;
        };
        m.record(started, &r);
        if let (Some(suppressed), Err(e)) = (self.outcomes.record(&r), &r) {
            // One line, however the guest's message is shaped; at most one
            // per plugin version every 10 s, `suppressed` counting the rest.
            let error = e.to_string().replace(['\n', '\r'], " ");
            tracing::warn!(plugin = %self.name, outcome = e.outcome(), suppressed, %error,
                "policy call failed");
        }
        r
    }

    /// The calls of one response (`needed-ids`, then `enrich`), on one
    /// instance: see `EnrichCalls`.
    pub fn enrich_calls<'a>(&'a self, call: &'a CallInfo) -> EnrichCalls<'a> {
        EnrichCalls {
            plugin: self,
            call,
            kept: None,
        }
    }

    /// `needed-ids` on an instance of its own; `call` is what the policy
    /// is called for.
    pub fn needed_ids(&self, call: &CallInfo, body: &str) -> Result<Vec<String>, CallError> {
        self.enrich_calls(call).needed_ids(body)
    }

    /// `enrich` on an instance of its own; `call` is what the policy is
    /// called for.
    pub fn enrich(
        &self,
        call: &CallInfo,
        body: &str,
        profiles: &[ProfileRef<'_>],
    ) -> Result<String, CallError> {
        self.enrich_calls(call).enrich(body, profiles)
    }

    /// `on-event`; `call` is what the policy is called for.
    pub fn on_event(&self, call: &CallInfo, event: &str) -> Result<Vec<Action>, CallError> {
        if self.world() != World::Invalidate {
            return Err(CallError::Error("not an invalidation policy".into()));
        }
        let p = &self.prepared;
        self.call(|| {
            self.runtime
                .on_event(p, &self.ctx, &self.limits, call, event)
        })
    }

    /// Runs the canned input through the policy, as a response is run
    /// (both calls on one instance); the output must be usable.
    fn smoke_test(&self) -> Result<(), PluginError> {
        let fail = PluginError::SmokeTest;
        match self.world() {
            World::Enrich => {
                let call = CallInfo::response(SMOKE_PATH, "");
                let mut calls = self.enrich_calls(&call);
                let ids = calls.needed_ids(SMOKE_BODY).map_err(fail)?;
                let profiles: Vec<Profile> = ids
                    .iter()
                    .map(|id| Profile {
                        id: id.clone(),
                        json: json!({"id": id, "displayName": "Smoke Test", "avatarUrl": "https://example.invalid/a.png"})
                            .to_string(),
                    })
                    .collect();
                let out = calls.enrich(SMOKE_BODY, &lend(&profiles)).map_err(fail)?;
                serde_json::from_str::<serde::de::IgnoredAny>(&out)
                    .map_err(|e| PluginError::SmokeOutput(e.to_string()))?;
            }
            World::Invalidate => {
                self.on_event(&CallInfo::event(), SMOKE_EVENT)
                    .map_err(fail)?;
            }
        }
        Ok(())
    }
}

/// The calls of one response to an enrichment policy: `needed-ids`, then
/// `enrich`, on one instance, made at the first call and kept for the
/// next (instantiating is a large part of a small call). `release` drops it
/// while the caller waits on something slow, so that a pooled instance
/// slot is never held across a round trip; the next call then makes a
/// fresh one. Each call is metered, and fails, on its own.
pub struct EnrichCalls<'a> {
    plugin: &'a LoadedPlugin,
    call: &'a CallInfo,
    kept: Option<EnrichInstance>,
}

impl EnrichCalls<'_> {
    pub fn needed_ids(&mut self, body: &str) -> Result<Vec<String>, CallError> {
        let p = self.plugin;
        if p.world() != World::Enrich {
            return Err(CallError::Error("not an enrichment policy".into()));
        }
        let kept = &mut self.kept;
        p.call(|| {
            p.runtime
                .needed_ids_on(kept, &p.prepared, &p.ctx, &p.limits, self.call, body)
        })
    }

    pub fn enrich(&mut self, body: &str, profiles: &[ProfileRef<'_>]) -> Result<String, CallError> {
        let p = self.plugin;
        if p.world() != World::Enrich {
            return Err(CallError::Error("not an enrichment policy".into()));
        }
        let kept = &mut self.kept;
        p.call(|| {
            p.runtime.enrich_on(
                kept,
                &p.prepared,
                &p.ctx,
                &p.limits,
                self.call,
                body,
                profiles,
            )
        })
    }

    /// Drops the instance; the next call gets a fresh one.
    pub fn release(&mut self) {
        self.kept = None;
    }

    /// Whether an instance is kept for the next call.
    pub fn holds_instance(&self) -> bool {
        self.kept.is_some()
    }
}

/// What a config asks for one plugin.
#[derive(Clone, Debug, PartialEq)]
struct Wanted {
    cfg: PluginConfig,
    /// `None` when no route or section uses it yet: either world will do.
    world: Option<World>,
}

#[derive(Clone, Debug, Default)]
struct Status {
    last_error: Option<String>,
    last_error_at: Option<SystemTime>,
}

pub struct Plugins {
    runtime: Arc<PluginRuntime>,
    metrics: Arc<Metrics>,
    loaded: ArcSwap<HashMap<String, Arc<LoadedPlugin>>>,
    wanted: ArcSwap<BTreeMap<String, Wanted>>,
    status: Mutex<HashMap<String, Status>>,
    /// Serializes loads so that a file event and a config reload do not race.
    loading: Arc<tokio::sync::Mutex<()>>,
    watcher: Mutex<Option<(Vec<PathBuf>, notify::RecommendedWatcher)>>,
    tasks: Tasks,
}

impl Plugins {
    pub fn new(metrics: Arc<Metrics>, tasks: Tasks) -> Result<Arc<Plugins>, PluginError> {
        Ok(Arc::new(Plugins {
            tasks,
            runtime: PluginRuntime::global()?,
            metrics,
            loaded: ArcSwap::from_pointee(HashMap::new()),
            wanted: ArcSwap::from_pointee(BTreeMap::new()),
            status: Mutex::new(HashMap::new()),
            loading: Arc::new(tokio::sync::Mutex::new(())),
            watcher: Mutex::new(None),
        }))
    }

    /// The version serving now; hold it for the whole request.
    pub fn get(&self, name: &str) -> Option<Arc<LoadedPlugin>> {
        self.loaded.load().get(name).cloned()
    }

    /// Brings the loaded set in line with a config, all or nothing: see
    /// `stage`. Returns the problems as `(name, reason)`; with any, nothing
    /// changed. `diff` is the reload's; `None` at start-up, which loads
    /// everything and is not counted as a reload.
    pub async fn apply(
        self: &Arc<Self>,
        config: &Config,
        diff: Option<&ConfigDiff>,
    ) -> Vec<(String, PluginError)> {
        match self.stage(config, diff).await {
            Ok(staged) => {
                staged.commit();
                Vec::new()
            }
            Err(problems) => problems,
        }
    }

    /// Loads what a config adds, re-points or changes (compile, type-check,
    /// smoke test) without serving any of it yet. A config that names a
    /// plugin that cannot load is refused whole, exactly as `check` and
    /// start-up would refuse it: the caller gets every problem and the
    /// running set stays. Holds the load lock until the result is
    /// committed or dropped, so a file event cannot slip in between.
    pub async fn stage(
        self: &Arc<Self>,
        config: &Config,
        diff: Option<&ConfigDiff>,
    ) -> Result<Staged, Vec<(String, PluginError)>> {
        let counted = diff.is_some();
        let guard = self.loading.clone().lock_owned().await;
        let wanted: BTreeMap<String, Wanted> = config
            .plugins
            .iter()
            .map(|(name, cfg)| {
                let w = Wanted {
                    cfg: cfg.clone(),
                    world: world_for(config, name),
                };
                (name.clone(), w)
            })
            .collect();
        let old_wanted = self.wanted.load_full();
        let mut problems = Vec::new();
        let mut next: HashMap<String, Arc<LoadedPlugin>> = HashMap::new();
        let mut fresh = Vec::new();
        let current = self.loaded.load_full();
        for (name, w) in &wanted {
            // Its section as the diff sees it, plus the world, which the
            // enrich and invalidation sections decide.
            let unchanged = diff.is_some_and(|d| !d.changed(&format!("plugins.{name}")))
                && old_wanted.get(name).map(|o| o.world) == Some(w.world);
            match current.get(name) {
                Some(p)
                    if unchanged && self.file_sha(&w.cfg).as_deref() == Some(p.sha256.as_str()) =>
                {
                    next.insert(name.clone(), p.clone());
                }
                _ => match self.load(name, w).await {
                    Ok(p) => {
                        let p = Arc::new(p);
                        fresh.push(p.clone());
                        next.insert(name.clone(), p);
                    }
                    Err(e) => {
                        self.rejected(name, &e, counted);
                        problems.push((name.clone(), e));
                    }
                },
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Staged {
            plugins: self.clone(),
            wanted,
            next,
            fresh,
            counted,
            _guard: guard,
        })
    }

    /// Reloads the plugins whose file content changed (a file event).
    pub async fn reload_changed(self: &Arc<Self>) {
        let _guard = self.loading.lock().await;
        let wanted = self.wanted.load_full();
        let mut next = (*self.loaded.load_full()).clone();
        let mut changed = false;
        for (name, w) in wanted.iter() {
            let sha = self.file_sha(&w.cfg);
            let current = next.get(name).map(|p| p.sha256.clone());
            if sha.is_none() || sha == current {
                continue;
            }
            match self.load(name, w).await {
                Ok(p) => {
                    self.loaded_ok(&p, true);
                    next.insert(name.clone(), Arc::new(p));
                    changed = true;
                }
                Err(e) => self.rejected(name, &e, true),
            }
        }
        if changed {
            self.loaded.store(Arc::new(next));
        }
    }

    fn loaded_ok(&self, p: &LoadedPlugin, counted: bool) {
        tracing::info!(plugin = %p.name, world = p.world().as_str(), wit_version = p.wit_version(), sha256 = %p.sha256,
            path = %p.path.display(), "plugin loaded");
        if counted {
            self.metrics.reload("plugin", true);
        }
        // A good load settles the last failed one: the error described a
        // file that no longer serves.
        if let Ok(mut st) = self.status.lock() {
            st.remove(&p.name);
        }
    }

    fn rejected(&self, name: &str, reason: &PluginError, counted: bool) {
        tracing::error!(plugin = %name, reason = %reason, "plugin rejected; the last good version (if any) keeps serving");
        if counted {
            self.metrics.reload("plugin", false);
        }
        if let Ok(mut st) = self.status.lock() {
            let s = st.entry(name.to_string()).or_default();
            s.last_error = Some(reason.to_string());
            s.last_error_at = Some(SystemTime::now());
        }
    }

    fn file_sha(&self, cfg: &PluginConfig) -> Option<String> {
        use sha2::{Digest, Sha256};
        std::fs::read(&cfg.path)
            .ok()
            .map(|b| super::engine::hex(&Sha256::digest(&b)))
    }

    /// Compile, type-check and smoke-test off the async workers.
    async fn load(&self, name: &str, w: &Wanted) -> Result<LoadedPlugin, PluginError> {
        let runtime = self.runtime.clone();
        let meters = Meters::new(&self.metrics, name);
        let (name, w) = (name.to_string(), w.clone());
        tokio::task::spawn_blocking(move || load_plugin(&runtime, &name, &w.cfg, w.world, meters))
            .await
            .map_err(|e| PluginError::Task(e.to_string()))?
    }

    /// Watches the directories of the plugin files; re-created when the set
    /// of directories changes.
    fn rewatch(self: &Arc<Self>, wanted: &BTreeMap<String, Wanted>) {
        let mut dirs: Vec<PathBuf> = wanted
            .values()
            .map(|w| crate::reload::fs_watch::dir_of(&w.cfg.path))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        dirs.sort();
        let Ok(mut slot) = self.watcher.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|(d, _)| *d == dirs) {
            return;
        }
        *slot = None;
        if dirs.is_empty() || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let me = Arc::downgrade(self);
        match crate::reload::fs_watch::watch_dirs(&dirs, "plugin-watch", &self.tasks, move || {
            let me = me.clone();
            async move {
                if let Some(p) = me.upgrade() {
                    p.reload_changed().await;
                }
            }
        }) {
            Ok(w) => *slot = Some((dirs, w)),
            Err(e) => {
                tracing::error!(error = %e, "cannot watch plugin files; hot swap needs /admin/reload")
            }
        }
    }

    /// Stops watching plugin files (shutdown).
    pub fn stop_watching(&self) {
        if let Ok(mut slot) = self.watcher.lock() {
            *slot = None;
        }
    }

    /// `/admin/plugins`.
    pub fn list(&self) -> serde_json::Value {
        let loaded = self.loaded.load();
        let status = self.status.lock().map(|s| s.clone()).unwrap_or_default();
        let wanted = self.wanted.load();
        let list: Vec<serde_json::Value> = wanted
            .iter()
            .map(|(name, w)| {
                let p = loaded.get(name);
                let st = status.get(name).cloned().unwrap_or_default();
                let (calls, last_call_error) = p.map(|p| p.outcomes.json()).unzip();
                json!({
                    "name": name,
                    "path": w.cfg.path.display().to_string(),
                    "world": p.map(|p| p.world().as_str()).or(w.world.map(World::as_str)),
                    "wit_version": p.map(|p| p.wit_version()),
                    "loaded": p.is_some(),
                    "sha256": p.map(|p| p.sha256.clone()),
                    "loaded_at": p.map(|p| rfc3339(p.loaded_at)),
                    "last_error": st.last_error,
                    "last_error_at": st.last_error_at.map(rfc3339),
                    "log_lines_dropped": p.map(|p| p.ctx.logs_dropped.load(std::sync::atomic::Ordering::Relaxed)),
                    "calls": calls,
                    "last_call_error": last_call_error,
                })
            })
            .collect();
        json!({ "plugins": list })
    }

    /// Name -> sha256 of what serves now, for `/admin/stats`.
    pub fn versions(&self) -> serde_json::Value {
        let loaded = self.loaded.load();
        let map: serde_json::Map<String, serde_json::Value> = loaded
            .iter()
            .map(|(n, p)| (n.clone(), json!(p.sha256)))
            .collect();
        serde_json::Value::Object(map)
    }
}

/// A plugin set that loaded in full and waits to serve; dropping it
/// discards it and the running set stays.
pub struct Staged {
    plugins: Arc<Plugins>,
    wanted: BTreeMap<String, Wanted>,
    next: HashMap<String, Arc<LoadedPlugin>>,
    /// Loaded by this stage (not kept from the running set).
    fresh: Vec<Arc<LoadedPlugin>>,
    counted: bool,
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Staged {
    /// Serves the staged set: new requests get it, requests in flight
    /// finish on the version they hold.
    pub fn commit(self) {
        let p = &self.plugins;
        for fresh in &self.fresh {
            p.loaded_ok(fresh, self.counted);
        }
        p.wanted.store(Arc::new(self.wanted.clone()));
        p.loaded.store(Arc::new(self.next));
        if let Ok(mut st) = p.status.lock() {
            st.retain(|name, _| self.wanted.contains_key(name));
        }
        p.rewatch(&self.wanted);
    }
}

/// The world a config uses a plugin for.
pub fn world_for(config: &Config, name: &str) -> Option<World> {
    let notifies = config
        .notifications
        .as_ref()
        .is_some_and(|n| n.plugin.as_deref() == Some(name));
    if notifies || config.enrich.iter().any(|r| r.plugin == name) {
        Some(World::Enrich)
    } else if config
        .invalidation
        .as_ref()
        .is_some_and(|i| i.plugin == name)
    {
        Some(World::Invalidate)
    } else {
        None
    }
}

fn load_plugin(
    runtime: &Arc<PluginRuntime>,
    name: &str,
    cfg: &PluginConfig,
    world: Option<World>,
    meters: Meters,
) -> Result<LoadedPlugin, PluginError> {
    let bytes = read(&cfg.path)?;
    let (prepared, sha256) = match world {
        Some(w) => runtime.prepare(&bytes, w)?,
        // Not used by any route yet: accept either world (a version this
        // proxy does not accept is refused as such, whatever the world).
        None => runtime
            .prepare(&bytes, World::Enrich)
            .or_else(|e| match e {
                PluginError::WrongVersion { .. } => Err(e),
                _ => runtime.prepare(&bytes, World::Invalidate),
            })?,
    };
    let config_json = serde_json::to_string(&cfg.config).unwrap_or_else(|_| "{}".into());
    let mut plugin = LoadedPlugin {
        name: name.to_string(),
        path: cfg.path.clone(),
        sha256,
        loaded_at: SystemTime::now(),
        prepared,
        ctx: Arc::new(PluginContext::new(name, config_json)),
        // The smoke test asks "does it work", not "is it fast": on a busy
        // machine a good policy can miss a 10 ms deadline once, and that
        // must not refuse it at start or reload. Its memory cap is the real one.
        limits: Limits {
            deadline: cfg.deadline.get().max(SMOKE_DEADLINE),
            memory: cfg.memory_limit.as_usize(),
        },
        runtime: runtime.clone(),
        meters: None,
        outcomes: Outcomes::default(),
    };
    plugin.smoke_test()?;
    plugin.limits.deadline = cfg.deadline.get();
    plugin.meters = Some(meters);
    Ok(plugin)
}

/// Checks one plugin the way a load does, for `profile-edge check`.
pub fn check_plugin(config: &Config, name: &str, cfg: &PluginConfig) -> Result<World, PluginError> {
    let runtime = PluginRuntime::global()?;
    let metrics = Metrics::new();
    let meters = Meters::new(&metrics, name);
    load_plugin(&runtime, name, cfg, world_for(config, name), meters).map(|p| p.world())
}

/// Loads one plugin file outside a running proxy, for `profile-edge plugin
/// run`: the same compile and type check against `world` as a load, the
/// given limits, guest lines to `ctx` (a capturing one keeps them for the
/// caller). No smoke test (the caller's input is the test) and no metrics.
pub fn load_standalone(
    path: &Path,
    world: World,
    limits: Limits,
    ctx: Arc<PluginContext>,
) -> Result<LoadedPlugin, PluginError> {
    let runtime = PluginRuntime::global()?;
    let (prepared, sha256) = runtime.prepare(&read(path)?, world)?;
    Ok(LoadedPlugin {
        name: ctx.name.clone(),
        path: path.to_path_buf(),
        sha256,
        loaded_at: SystemTime::now(),
        prepared,
        ctx,
        limits,
        runtime,
        meters: None,
        outcomes: Outcomes::default(),
    })
}

/// Loads one plugin outside a running proxy, for the `policy_cost` example.
pub fn load_for_bench(config: &Config, name: &str) -> Result<LoadedPlugin, PluginError> {
    let cfg = config
        .plugins
        .get(name)
        .ok_or_else(|| PluginError::NotConfigured(name.to_string()))?;
    let runtime = PluginRuntime::global()?;
    let metrics = Metrics::new();
    load_plugin(
        &runtime,
        name,
        cfg,
        world_for(config, name),
        Meters::new(&metrics, name),
    )
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests;
