//! `[plugins.NAME]`, `[[enrich]]` and `[invalidation]`: the WebAssembly
//! policies and the routes and events that use them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::{file_must_exist, Config, Problem};
use crate::units::{ByteSize, Dur};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Serve the unenriched body.
    #[default]
    Open,
    /// Answer 502.
    Closed,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The `.wasm` component; watched and hot-swapped when it changes.
    pub path: PathBuf,
    #[serde(default = "defaults::plugin_deadline")]
    pub deadline: Dur,
    #[serde(default = "defaults::plugin_memory")]
    pub memory_limit: ByteSize,
    #[serde(default)]
    pub on_error: OnError,
    /// Free-form settings handed to the policy.
    #[serde(default)]
    pub config: BTreeMap<String, toml::Value>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnrichRoute {
    /// Requests whose path starts with this go to `upstream` and are enriched.
    pub path_prefix: String,
    pub upstream: String,
    pub plugin: String,
    /// Larger answers pass through unenriched.
    #[serde(default = "defaults::enrich_max_body")]
    pub max_body_size: ByteSize,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InvalidationConfig {
    pub plugin: String,
}

mod defaults {
    use crate::units::{ByteSize, Dur};
    pub fn plugin_deadline() -> Dur {
        Dur::millis(10)
    }
    pub fn plugin_memory() -> ByteSize {
        ByteSize::mib(32)
    }
    pub fn enrich_max_body() -> ByteSize {
        ByteSize::mib(2)
    }
}

/// Problems in every `[plugins.NAME]` table.
pub(super) fn validate_plugins(plugins: &BTreeMap<String, PluginConfig>) -> Vec<Problem> {
    plugins
        .iter()
        .flat_map(|(name, plugin)| plugin.validate(name))
        .collect()
}

impl PluginConfig {
    /// Problems under `plugins.{name}.*`.
    pub fn validate(&self, name: &str) -> Vec<Problem> {
        let mut out = Vec::new();
        let key = |k: &str| format!("plugins.{name}.{k}");
        file_must_exist(&mut out, &key("path"), &self.path);
        if self.deadline.get().is_zero() {
            out.push(Problem::new(key("deadline"), "must be more than 0"));
        }
        if self.memory_limit.bytes() < 1 << 16 {
            out.push(Problem::new(
                key("memory_limit"),
                "must be at least 64KiB (one wasm page)",
            ));
        }
        out
    }
}

/// Problems in every `[[enrich]]` route.
pub(super) fn validate_enrich(config: &Config) -> Vec<Problem> {
    config
        .enrich
        .iter()
        .enumerate()
        .flat_map(|(i, route)| route.validate(i, config))
        .collect()
}

impl EnrichRoute {
    /// Problems under `enrich[{i}].*`; `config` is there because a route
    /// names an upstream and a plugin defined elsewhere in the file.
    pub fn validate(&self, i: usize, config: &Config) -> Vec<Problem> {
        let mut out = Vec::new();
        let key = |k: &str| format!("enrich[{i}].{k}");
        if !self.path_prefix.starts_with('/') {
            out.push(Problem::new(key("path_prefix"), "must start with '/'"));
        }
        if !config.upstreams.contains_key(&self.upstream) {
            out.push(Problem::new(
                key("upstream"),
                format!("names no [upstreams.{}] table", self.upstream),
            ));
        }
        if !config.plugins.contains_key(&self.plugin) {
            out.push(Problem::new(
                key("plugin"),
                format!("names no [plugins.{}] table", self.plugin),
            ));
        }
        out
    }
}

impl InvalidationConfig {
    /// Problems under `invalidation.*`; `config` is there because the plugin
    /// is defined in `[plugins]` and must not also serve an `[[enrich]]` route.
    pub fn validate(&self, config: &Config) -> Vec<Problem> {
        let mut out = Vec::new();
        if config.enrich.iter().any(|r| r.plugin == self.plugin) {
            out.push(Problem::new(
                "invalidation.plugin",
                format!(
                    "{} is also an enrichment policy; one plugin fulfils one world",
                    self.plugin
                ),
            ));
        }
        if !config.plugins.contains_key(&self.plugin) {
            out.push(Problem::new(
                "invalidation.plugin",
                format!("names no [plugins.{}] table", self.plugin),
            ));
        }
        out
    }
}
