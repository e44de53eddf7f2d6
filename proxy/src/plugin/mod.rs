//! WebAssembly policies: the wasmtime runtime (`runtime`), the plugins
//! loaded from config and their hot swap (`registry`), why a load failed
//! (`error`), and the generated bindings to the WIT contract in
//! `plugins/wit` (`bindings`).

pub mod bindings;
pub mod error;
pub mod registry;
pub mod runtime;
