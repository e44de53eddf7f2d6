//! The host side of the WIT `host` interface: what a guest can see (its
//! name, its config as JSON) and its rate-limited log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::StoreLimits;

use super::bindings::enrich::profile_edge::policy::host;
use super::bindings::Level;

/// Log lines a plugin may write per second; more are dropped and counted.
const LOG_LINES_PER_SEC: u64 = 100;

/// What a guest's host imports can see: its name (for logs), its config
/// as JSON, and a log rate limiter.
pub struct PluginContext {
    pub name: String,
    pub config_json: String,
    log_window: Mutex<(Instant, u64)>,
    pub logs_dropped: AtomicU64,
}

impl PluginContext {
    pub fn new(name: &str, config_json: String) -> PluginContext {
        PluginContext {
            name: name.to_string(),
            config_json,
            log_window: Mutex::new((Instant::now(), 0)),
            logs_dropped: AtomicU64::new(0),
        }
    }

    fn may_log(&self) -> bool {
        let Ok(mut w) = self.log_window.lock() else {
            return false;
        };
        if w.0.elapsed() >= Duration::from_secs(1) {
            *w = (Instant::now(), 0);
        }
        w.1 += 1;
        w.1 <= LOG_LINES_PER_SEC
    }
}

/// A store's data.
pub struct HostState {
    pub(super) limits: StoreLimits,
    pub(super) ctx: Arc<PluginContext>,
}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        if !self.ctx.may_log() {
            self.ctx.logs_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Bound what a guest can push into our logs per line.
        let message: String = message.chars().take(1024).collect();
        let plugin = self.ctx.name.as_str();
        match level {
            Level::Trace => tracing::trace!(plugin, "{message}"),
            Level::Debug => tracing::debug!(plugin, "{message}"),
            Level::Info => tracing::info!(plugin, "{message}"),
            Level::Warn => tracing::warn!(plugin, "{message}"),
            Level::Error => tracing::error!(plugin, "{message}"),
        }
    }

    fn config(&mut self) -> String {
        self.ctx.config_json.clone()
    }
}
