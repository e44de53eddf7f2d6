//! The host side of the WIT `host` interface: what a guest can see (its
//! name, its config as JSON) and its rate-limited log. Where a guest's lines
//! go is the context's sink: the proxy's log when serving, a buffer when
//! `profile-edge plugin run` wants to print them after the call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::bindings::enrich::profile_edge::policy::host;
use super::bindings::previous::enrich::profile_edge::policy::host as previous_host;
use super::bindings::{CallInfo, CallKind, Level};
use super::limiter::CallLimiter;
use super::wasi;

/// Log lines a plugin may write per second; more are dropped and counted.
const LOG_LINES_PER_SEC: u64 = 100;
/// Longest line kept from a guest, in characters.
pub const MAX_LINE_CHARS: usize = 1024;

/// One line a guest wrote: through `host.log` (`source` "log") or, where
/// the runtime provides them, its stdout or stderr.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GuestLine {
    /// "log", "stdout" or "stderr".
    pub source: &'static str,
    /// "trace", "debug", "info", "warn" or "error".
    pub level: &'static str,
    pub message: String,
}

/// Where a context's guest lines go.
enum Sink {
    /// The proxy's log (tracing), tagged with the plugin name.
    Tracing,
    /// Kept for the caller (`plugin run`), at most `MAX_KEPT` lines.
    Keep(Mutex<Vec<GuestLine>>),
}

/// Lines a keeping context holds before it counts the rest as dropped.
const MAX_KEPT: usize = 10_000;

/// What a guest's host imports can see: its name (for logs), its config
/// as JSON, and a log rate limiter.
pub struct PluginContext {
    pub name: String,
    pub config_json: String,
    log_window: Mutex<(Instant, u64)>,
    pub logs_dropped: AtomicU64,
    sink: Sink,
}

impl PluginContext {
    /// A context whose guest lines go to the proxy's log.
    pub fn new(name: &str, config_json: String) -> PluginContext {
        PluginContext::with_sink(name, config_json, Sink::Tracing)
    }

    /// A context that keeps its guest lines (see `take_lines`) instead of
    /// logging them; the rate limit still applies.
    pub fn capturing(name: &str, config_json: String) -> PluginContext {
        PluginContext::with_sink(name, config_json, Sink::Keep(Mutex::new(Vec::new())))
    }

    fn with_sink(name: &str, config_json: String, sink: Sink) -> PluginContext {
        PluginContext {
            name: name.to_string(),
            config_json,
            log_window: Mutex::new((Instant::now(), 0)),
            logs_dropped: AtomicU64::new(0),
            sink,
        }
    }

    /// The lines kept so far (a capturing context), oldest first; empty for
    /// a context that logs.
    pub fn take_lines(&self) -> Vec<GuestLine> {
        match &self.sink {
            Sink::Tracing => Vec::new(),
            Sink::Keep(lines) => lines
                .lock()
                .map(|mut l| std::mem::take(&mut *l))
                .unwrap_or_default(),
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

    /// Writes one guest line through the rate limit to the sink, cut at
    /// `MAX_LINE_CHARS`. `source` is "log", "stdout" or "stderr".
    pub fn emit(&self, source: &'static str, level: Level, message: &str) {
        if !self.may_log() {
            self.logs_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // Bound what a guest can push into our logs per line.
        let message: String = message.chars().take(MAX_LINE_CHARS).collect();
        match &self.sink {
            Sink::Tracing => {
                let plugin = self.name.as_str();
                match level {
                    Level::Trace => tracing::trace!(plugin, source, "{message}"),
                    Level::Debug => tracing::debug!(plugin, source, "{message}"),
                    Level::Info => tracing::info!(plugin, source, "{message}"),
                    Level::Warn => tracing::warn!(plugin, source, "{message}"),
                    Level::Error => tracing::error!(plugin, source, "{message}"),
                }
            }
            Sink::Keep(lines) => {
                let Ok(mut lines) = lines.lock() else {
                    return;
                };
                if lines.len() >= MAX_KEPT {
                    self.logs_dropped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                lines.push(GuestLine {
                    source,
                    level: level_str(level),
                    message,
                });
            }
        }
    }
}

pub fn level_str(level: Level) -> &'static str {
    match level {
        Level::Trace => "trace",
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warn => "warn",
        Level::Error => "error",
    }
}

/// A store's data.
pub struct HostState {
    pub(super) limits: CallLimiter,
    pub(super) ctx: Arc<PluginContext>,
    /// What the guest wrote to stdout and stderr in this call.
    pub(super) output: wasi::Output,
    /// What `host.request()` answers; `None` for a guest of the previous
    /// WIT version, which cannot ask.
    pub(super) call: Option<CallInfo>,
    /// Keeps the epoch clock running (and so the deadline enforced) for as
    /// long as this call's store lives.
    pub(super) _ticking: super::engine::Ticking,
}

impl host::Host for HostState {
    fn log(&mut self, level: Level, message: String) {
        self.ctx.emit("log", level, &message);
    }

    fn config(&mut self) -> String {
        self.ctx.config_json.clone()
    }

    fn request(&mut self) -> CallInfo {
        self.call.clone().unwrap_or(CallInfo {
            kind: CallKind::Response,
            path: String::new(),
            route: String::new(),
        })
    }
}

/// The previous WIT version's `host`: the same functions, minus `request`.
impl previous_host::Host for HostState {
    fn log(&mut self, level: previous_host::Level, message: String) {
        let level = match level {
            previous_host::Level::Trace => Level::Trace,
            previous_host::Level::Debug => Level::Debug,
            previous_host::Level::Info => Level::Info,
            previous_host::Level::Warn => Level::Warn,
            previous_host::Level::Error => Level::Error,
        };
        self.ctx.emit("log", level, &message);
    }

    fn config(&mut self) -> String {
        self.ctx.config_json.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_capturing_context_keeps_lines_within_the_rate_limit() {
        let ctx = PluginContext::capturing("p", "{}".into());
        for i in 0..(LOG_LINES_PER_SEC + 5) {
            ctx.emit("log", Level::Info, &format!("line {i}"));
        }
        ctx.emit("log", Level::Warn, &"x".repeat(MAX_LINE_CHARS + 10));
        let lines = ctx.take_lines();
        // The window may roll over on a slow machine: count, do not time.
        let dropped = ctx.logs_dropped.load(Ordering::Relaxed) as usize;
        assert_eq!(lines.len() + dropped, LOG_LINES_PER_SEC as usize + 6);
        assert_eq!(lines[0].message, "line 0");
        assert_eq!(lines[0].source, "log");
        assert!(lines
            .iter()
            .all(|l| l.message.chars().count() <= MAX_LINE_CHARS));
        assert!(ctx.take_lines().is_empty(), "take drains");
    }
}
