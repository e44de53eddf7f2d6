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

/// A component built from plugins/ (`bash plugins/build.sh`), for the unit
/// tests of this module's parts; fails loudly when it was not built.
#[cfg(test)]
pub(crate) fn dist(name: &str) -> std::path::PathBuf {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../plugins/dist")
        .join(name);
    assert!(
        p.exists(),
        "{} is missing: run `bash plugins/build.sh`",
        p.display()
    );
    p
}
