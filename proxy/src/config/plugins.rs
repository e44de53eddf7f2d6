//! `[plugins.NAME]`, `[[enrich]]` and `[invalidation]`: the WebAssembly
//! policies and the routes and events that use them.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

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
