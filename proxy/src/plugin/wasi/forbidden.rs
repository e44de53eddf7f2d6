//! Traps for the WASI functions a policy may not use, and for `exit`.
//! They are host errors, not wasm traps, so that the call's error can
//! name the import instead of showing a backtrace into a stub.

use std::sync::Arc;

use wasmtime::component::LinkerInstance;

use crate::plugin::host::HostState;

/// A guest called a WASI function the proxy does not provide.
#[derive(Debug, thiserror::Error)]
#[error("called {import}, which policies may not use{hint} (see \"What a guest may import\" in plugins/README.md)")]
pub struct Forbidden {
    /// `interface@version#function`.
    pub import: Arc<str>,
    hint: &'static str,
}

/// A guest called `wasi:cli/exit`: a policy answers, it does not exit.
#[derive(Debug, thiserror::Error)]
#[error("policy called exit{0}; return an error instead")]
pub struct PolicyExit(pub &'static str);

/// Why some imports can never work, said once in the message.
fn hint(interface: &str, function: &str) -> &'static str {
    if function.starts_with("subscribe-") {
        ": policies cannot wait or sleep"
    } else if interface.starts_with("wasi:filesystem") {
        ": policies have no files"
    } else if interface.starts_with("wasi:sockets") || interface.starts_with("wasi:http") {
        ": policies have no network"
    } else {
        ""
    }
}

/// Links `function` of `interface` (the full import name, with version)
/// to a trap that names it.
pub(super) fn define(
    linker: &mut LinkerInstance<'_, HostState>,
    interface: &str,
    function: &str,
) -> wasmtime::Result<()> {
    let import: Arc<str> = format!("{interface}#{function}").into();
    let hint = hint(interface, function);
    linker.func_new(function, move |_, _, _, _| {
        Err(Forbidden {
            import: import.clone(),
            hint,
        }
        .into())
    })
}
