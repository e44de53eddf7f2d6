//! `[log]`: the tracing filter and output format.

use serde::Deserialize;
use tracing_subscriber::filter::ParseError;
use tracing_subscriber::EnvFilter;

use super::Problem;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// A `tracing` filter such as `info` or `profile_edge=debug,info`;
    /// `RUST_LOG` wins when set.
    pub level: String,
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl LogConfig {
    /// `level` as a filter, each comma-separated directive trimmed first:
    /// tracing-subscriber 0.3 trims a directive but slices the untrimmed
    /// text at the trimmed offsets, which panics on leading whitespace
    /// before a multi-byte character (`" \u{e9}=info"`; found by tests/fuzz).
    pub fn filter(&self) -> Result<EnvFilter, ParseError> {
        parse_filter(&self.level)
    }

    /// Problems under `log.*`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Err(e) = self.filter() {
            out.push(Problem::new(
                "log.level",
                format!("not a valid filter: {e}"),
            ));
        }
        out
    }
}

/// A tracing filter with each comma-separated directive trimmed first (see
/// `LogConfig::filter`); `RUST_LOG` goes through it too.
pub fn parse_filter(text: &str) -> Result<EnvFilter, ParseError> {
    let mut directives: Vec<&str> = text.split(',').map(str::trim).collect();
    // The Redis client library logs each reconnect attempt at WARN, many a
    // second while a cluster node is down; the proxy's own breaker lines
    // say the same once per cooldown. Kept to errors unless asked for.
    if !directives.iter().any(|d| d.starts_with("redis")) {
        directives.push(QUIET_REDIS);
    }
    EnvFilter::try_new(directives.join(","))
}

const QUIET_REDIS: &str = "redis=error";

#[cfg(test)]
mod tests {
    use super::*;

    fn level(level: &str) -> LogConfig {
        LogConfig {
            level: level.into(),
            ..LogConfig::default()
        }
    }

    /// Found by tests/fuzz (config): this level panicked inside
    /// tracing-subscriber instead of being read or refused.
    #[test]
    fn the_redis_library_is_quiet_unless_named() {
        let quiet = parse_filter("info").expect("parses").to_string();
        assert!(quiet.contains("redis=error"), "{quiet}");
        let asked = parse_filter("info,redis=debug")
            .expect("parses")
            .to_string();
        assert!(!asked.contains("redis=error"), "{asked}");
    }

    #[test]
    fn leading_space_before_a_multibyte_directive_does_not_panic() {
        assert!(level(" \u{e9}=info").validate().is_empty());
        assert!(level("info, \u{e9}x=debug").validate().is_empty());
        assert_eq!(level(" \u{e9}=nonsense").validate().len(), 1);
    }
}
