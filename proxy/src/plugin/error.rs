//! Why a plugin could not be loaded, as the operator who deployed the file
//! needs to read it (logs, `/admin/plugins`, `check`). Call-time failures
//! are `CallError` in `runtime`.

use std::path::PathBuf;

use super::calls::CallError;

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
    #[error("does not implement world {world} of profile-edge:policy@0.1.0 (built for another world or WIT version?): {reason}")]
    WrongWorld { world: &'static str, reason: String },
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
