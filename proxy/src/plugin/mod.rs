//! WebAssembly policies: the wasmtime engine and component cache
//! (`engine`), the host functions guests import (`host`) and the WASI they
//! may use (`wasi`), one call and how it ends (`calls`), how a failed call
//! is told (`diagnose`), a call's resource limiter (`limiter`), the plugins
//! loaded from config and their hot swap (`registry`), why a load failed
//! (`error`), and the generated bindings to the WIT contract in
//! `plugins/wit` (`bindings`).

pub mod bindings;
pub mod calls;
pub mod diagnose;
pub mod engine;
pub mod error;
pub mod host;
pub mod limiter;
pub mod registry;
pub mod wasi;
