//! WebAssembly policies: the wasmtime runtime (`runtime`), the plugins
//! loaded from config and their hot swap (`registry`), and the generated
//! bindings to the WIT contract in `plugins/wit` (`bindings`).

pub mod bindings;
pub mod registry;
pub mod runtime;
