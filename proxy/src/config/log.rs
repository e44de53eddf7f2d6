//! `[log]`: the tracing filter and output format.

use serde::Deserialize;

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
    /// Problems under `log.*`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.level) {
            out.push(Problem::new(
                "log.level",
                format!("not a valid filter: {e}"),
            ));
        }
        out
    }
}
