//! The state every request reads: the live `Runtime` (config plus what is
//! built from it: upstream clients, TLS config) behind an `ArcSwap`, so a
//! reload publishes a new one atomically while requests in flight finish on
//! the one they loaded; plus the process-wide metrics and readiness.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::config::{Config, ConfigError, Problem, OFFICER};
use crate::http::server::ConnLimits;
use crate::http::tls;
use crate::http::upstream::Upstream;
use crate::invalidation::Invalidations;
use crate::lifecycle::Tasks;
use crate::lookup::Profiles;
use crate::metrics::Metrics;
use crate::mongo::change_stream::ChangeStreams;
use crate::mongo::post_snapshots::PostSnapshots;
use crate::notifications::Notifications;
use crate::plugin::registry::Plugins;
use crate::warm_up::WarmUp;

/// Everything derived from one config file, built before it is published.
pub struct Runtime {
    pub config: Arc<Config>,
    /// `profiles.user_path` without its `/{id}`.
    pub user_prefix: String,
    pub upstreams: BTreeMap<String, Arc<Upstream>>,
    pub officer: Arc<Upstream>,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub admin_token: Option<String>,
}

impl Runtime {
    /// Builds clients and TLS from a validated config; what fails here
    /// (unreadable certificate, bad CA bundle) is reported by key like a
    /// validation problem.
    pub fn build(config: Config, file: &str) -> Result<Runtime, ConfigError> {
        let mut problems = Vec::new();
        let mut upstreams = BTreeMap::new();
        for (name, cfg) in &config.upstreams {
            match Upstream::build(name, cfg) {
                Ok(u) => {
                    upstreams.insert(name.clone(), u);
                }
                Err(e) => problems.push(Problem::new(e.key, e.reason)),
            }
        }
        let tls = match &config.server.tls {
            None => None,
            Some(t) => match tls::server_config(&t.cert, &t.key, config.server.http2) {
                Ok(c) => Some(c),
                Err(e) => {
                    problems.push(Problem::new("server.tls", e.to_string()));
                    None
                }
            },
        };
        let officer = upstreams.get(OFFICER).cloned();
        match officer {
            Some(officer) if problems.is_empty() => Ok(Runtime {
                admin_token: config.admin.resolved_token(),
                user_prefix: crate::config::user_path_prefix(&config.profiles.user_path)
                    .unwrap_or("/api/users")
                    .to_string(),
                config: Arc::new(config),
                upstreams,
                officer,
                tls,
            }),
            _ => {
                if problems.is_empty() {
                    problems.push(Problem::new("upstreams.officer", "is required"));
                }
                Err(ConfigError {
                    file: file.to_string(),
                    problems,
                })
            }
        }
    }

    pub fn conn_limits(&self) -> ConnLimits {
        let s = &self.config.server;
        ConnLimits {
            header_read_timeout: s.header_read_timeout.get(),
            max_header_size: s.max_header_size.as_usize(),
            max_headers: s.max_headers,
            idle_timeout: s.idle_timeout.get(),
            write_timeout: s.write_timeout.get(),
            http2: s.http2,
            max_concurrent_streams: s.max_concurrent_streams,
            http2_keepalive_interval: s.http2_keepalive_interval.get(),
            http2_keepalive_timeout: s.http2_keepalive_timeout.get(),
        }
    }
}

pub struct State {
    runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    /// Profile lookups: tiers, coalescing, fail-safe. Lives across reloads.
    pub profiles: Arc<Profiles>,
    /// Every invalidation, local and through the backplane. Lives across
    /// reloads.
    pub invalidations: Arc<Invalidations>,
    /// The WebAssembly policies the config names. Lives across reloads.
    pub plugins: Arc<Plugins>,
    /// Where `refresh-post-snapshots` writes. Lives across reloads.
    pub posts: PostSnapshots,
    /// The `[[change_streams]]` watchers; started by `App` once the state
    /// is shared. Lives across reloads.
    pub streams: ChangeStreams,
    /// The notification stream (`[notifications]`). Lives across reloads.
    pub notifications: Notifications,
    /// Request counting and warm-ups (`[warm_up]`, `POST /admin/warm`).
    /// Lives across reloads.
    pub warm_up: WarmUp,
    ready: AtomicBool,
    /// Every background task; drained by `App::shutdown`.
    pub tasks: Tasks,
    /// The file reloads read; `None` when the config was given in memory.
    pub config_path: Option<PathBuf>,
    /// Serializes reloads and remembers the last file content tried, so an
    /// unchanged file (a touch, a chmod) is not parsed and counted again.
    pub(crate) reload_guard: tokio::sync::Mutex<Option<u64>>,
}

impl State {
    /// For unit tests: a real `State` from the smallest valid config (an
    /// Officer upstream nobody answers on, no tiers below memory, no
    /// policy loaded).
    #[cfg(test)]
    pub(crate) fn minimal() -> Arc<State> {
        let text = "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
                    [upstreams.officer]\nurl = \"http://127.0.0.1:9\"\n";
        let config = Config::parse(text, "t.toml").expect("config");
        let runtime = Runtime::build(config, "t.toml").expect("runtime");
        Arc::new(State::new(runtime, None::<PathBuf>).expect("state"))
    }

    /// Builds the long-lived services from the first runtime; must run
    /// inside the tokio runtime.
    pub fn new(runtime: Runtime, config_path: Option<PathBuf>) -> Result<State, ConfigError> {
        let metrics = Arc::new(Metrics::new());
        let tasks = Tasks::new();
        let file = config_path.as_ref().map_or_else(
            || "(in-memory config)".to_string(),
            |p| p.display().to_string(),
        );
        let profiles = Profiles::new(
            &runtime.config,
            runtime.officer.clone(),
            metrics.clone(),
            tasks.clone(),
        )
        .map_err(|p| ConfigError {
            file: file.clone(),
            problems: vec![p],
        })?;
        let invalidations = Invalidations::new(
            &runtime.config,
            profiles.clone(),
            metrics.clone(),
            tasks.clone(),
        )
        .map_err(|p| ConfigError {
            file,
            problems: vec![p],
        })?;
        let plugins = Plugins::new(metrics.clone(), tasks.clone()).map_err(|e| ConfigError {
            file: "(plugins)".into(),
            problems: vec![Problem::new("plugins", e.to_string())],
        })?;
        let posts = PostSnapshots::new(&runtime.config, metrics.clone());
        let streams = ChangeStreams::new(metrics.clone(), tasks.clone());
        let notifications = Notifications::new(
            &runtime.config,
            metrics.clone(),
            &profiles,
            tasks.clone(),
            Arc::from(invalidations.instance()),
        );
        // Last: it may start a task, and nothing after it can fail.
        let warm_up = WarmUp::new(&runtime.config, profiles.clone(), &metrics, tasks.clone());
        Ok(State {
            posts,
            streams,
            notifications,
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            profiles,
            invalidations: Arc::new(invalidations),
            plugins,
            warm_up,
            ready: AtomicBool::new(false),
            tasks,
            config_path,
            reload_guard: tokio::sync::Mutex::new(None),
        })
    }

    /// The runtime in force now; hold it for the whole request.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    pub(crate) fn publish(&self, runtime: Runtime) {
        self.runtime.store(Arc::new(runtime));
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}
