//! Why a plugin could not be loaded, as the operator who deployed the file
//! needs to read it (logs, `/admin/plugins`, `check`). Call-time failures
//! are `CallError` in `runtime`.

use std::path::PathBuf;

use super::bindings::{CURRENT, PREVIOUS};
use super::calls::CallError;
use super::engine::minor_of;

#[derive(Clone, Debug, thiserror::Error)]
pub enum PluginError {
    #[error("cannot read {}: {reason}", crate::config::resolved(path))]
    Read { path: PathBuf, reason: String },
    #[error("is a core WebAssembly module, not a component: build for wasm32-wasip2 (see plugins/README.md)")]
    CoreModule,
    #[error("is not a valid WebAssembly component: {0}")]
    NotAComponent(String),
    /// The host could not link the component's imports.
    #[error("linking: {0}")]
    Link(String),
    #[error("does not implement world {world}: {reason}")]
    WrongWorld { world: &'static str, reason: String },
    /// Built for a WIT version this proxy does not accept.
    #[error("{}", wrong_version(world, built_for))]
    WrongVersion {
        /// The world it exports, when it exports one.
        world: Option<&'static str>,
        /// The version it was built for ("" when its names carry none).
        built_for: String,
    },
    #[error("failed its smoke test: {0}")]
    SmokeTest(CallError),
    #[error("failed its smoke test: output is not JSON: {0}")]
    SmokeOutput(String),
    /// The wasmtime engine or its epoch ticker could not start.
    #[error("plugin runtime: {0}")]
    Runtime(String),
    #[error("loading task failed: {0}")]
    Task(String),
    #[error("no [plugins.{0}] section")]
    NotConfigured(String),
}

/// One line naming the version a component was built for and the ones
/// this proxy accepts.
fn wrong_version(world: &Option<&'static str>, built_for: &str) -> String {
    let built = match (world, built_for) {
        (Some(w), "") => format!("world {w} of profile-edge:policy without a version"),
        (Some(w), v) => format!("world {w} of profile-edge:policy@{v}"),
        (None, "") => "profile-edge:policy without a version".to_string(),
        (None, v) => format!("profile-edge:policy@{v}"),
    };
    format!(
        "is built for {built}; this proxy accepts @{} (current) and @{} (previous): rebuild it against plugins/wit",
        minor_of(CURRENT),
        minor_of(PREVIOUS)
    )
}
