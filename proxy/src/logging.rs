//! Logs to stderr through `tracing`; `RUST_LOG` wins over `[log]`.
//! Colour codes only when stderr is a terminal: a file, a pipe or a log
//! collector gets plain text.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};

/// Installs the global subscriber once; later calls are ignored (tests
/// start several proxies in one process).
pub fn init(cfg: &LogConfig) {
    // RUST_LOG is read here rather than by `try_from_default_env`, whose
    // parser panics on a space before a multi-byte directive (found by
    // tests/fuzz); `parse_filter` trims directives first.
    let from_env = std::env::var(EnvFilter::DEFAULT_ENV)
        .ok()
        .map(|v| crate::config::parse_filter(&v));
    let filter = match from_env {
        Some(Ok(f)) => f,
        _ => cfg.filter().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let _ = match cfg.format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}
