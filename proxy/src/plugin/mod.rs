//! WebAssembly policies: the wasmtime engine and component cache
//! (`engine`), the host functions guests import (`host`), one call and how
//! it ends (`calls`), the plugins loaded from config and their hot swap
//! (`registry`), why a load failed (`error`), and the generated bindings to
//! the WIT contract in `plugins/wit` (`bindings`).

pub mod bindings;
pub mod calls;
pub mod engine;
pub mod error;
pub mod host;
pub mod registry;
