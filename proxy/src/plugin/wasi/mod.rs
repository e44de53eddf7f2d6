//! The little of WASI 0.2 a policy gets, defined per component for the
//! exact import names it uses (any `@0.2.x`): stdout and stderr (captured
//! per call, then logged with the plugin's name), clocks, random bytes, an
//! empty environment and no preopened directories. Every other WASI
//! function the component imports is linked to a trap that names it
//! (`Forbidden`), so files, sockets, HTTP and timers stay out of reach.
//!
//! Not `wasmtime-wasi`: its synchronous bindings block on a tokio runtime
//! handle, which panics on our workers (policy calls run synchronously on
//! request threads); and it would bring a filesystem and sockets we deny.
//! Everything here is defined at load, so a call costs nothing extra
//! unless the guest prints.

mod capture;
mod cli;
mod clocks;
mod filesystem;
mod forbidden;
mod io;
mod random;

use wasmtime::component::types::ComponentItem;
use wasmtime::component::{Component, Linker, LinkerInstance, ResourceType};
use wasmtime::Engine;

pub use capture::{Capture, Output, MAX_CAPTURE};
pub use forbidden::{Forbidden, PolicyExit};

use super::host::HostState;

/// One WASI interface the shim answers: the functions `define` provides.
/// Functions of it that are not listed trap like any forbidden import.
struct Interface {
    /// Without the version, e.g. `wasi:io/streams`.
    name: &'static str,
    funcs: &'static [&'static str],
    define: fn(&mut LinkerInstance<'_, HostState>) -> wasmtime::Result<()>,
}

const INTERFACES: &[Interface] = &[
    io::ERROR,
    io::STREAMS,
    io::POLL,
    cli::STDIN,
    cli::STDOUT,
    cli::STDERR,
    cli::ENVIRONMENT,
    cli::EXIT,
    cli::TERMINAL_STDIN,
    cli::TERMINAL_STDOUT,
    cli::TERMINAL_STDERR,
    clocks::MONOTONIC,
    clocks::WALL,
    random::RANDOM,
    random::INSECURE,
    random::INSECURE_SEED,
    filesystem::PREOPENS,
];

/// Host types for the WASI resources the shim hands out, by name. A
/// resource is declared in one interface and `use`d by others (e.g.
/// `error` in `wasi:io/streams`); every place must name the same type.
fn resource_type(name: &str) -> Option<ResourceType> {
    Some(match name {
        "error" => ResourceType::host::<io::IoError>(),
        "input-stream" => ResourceType::host::<io::InputStream>(),
        "output-stream" => ResourceType::host::<io::OutputStream>(),
        "pollable" => ResourceType::host::<io::Pollable>(),
        "terminal-input" => ResourceType::host::<cli::TerminalInput>(),
        "terminal-output" => ResourceType::host::<cli::TerminalOutput>(),
        "descriptor" => ResourceType::host::<filesystem::Descriptor>(),
        _ => return None,
    })
}

/// Defines, in `linker`, every `wasi:*` function `component` imports:
/// the shim's where it has one (0.2.x only), a trap naming the import
/// otherwise. Resource types it does not know are left to the caller's
/// `define_unknown_imports_as_traps`.
pub fn define(
    linker: &mut Linker<HostState>,
    engine: &Engine,
    component: &Component,
) -> wasmtime::Result<()> {
    let ty = component.component_type();
    for (name, import) in ty.imports(engine) {
        if !name.starts_with("wasi:") {
            continue;
        }
        let ComponentItem::ComponentInstance(instance) = import.ty else {
            continue;
        };
        let (interface, version) = name.split_once('@').unwrap_or((name, ""));
        let known = version
            .starts_with("0.2.")
            .then(|| INTERFACES.iter().find(|i| i.name == interface))
            .flatten();
        let mut linker = linker.instance(name)?;
        for (export, item) in instance.exports(engine) {
            if let (ComponentItem::Resource(_), Some(ty)) = (&item.ty, resource_type(export)) {
                // Resources never leave the host: nothing to free.
                linker.resource(export, ty, |_, _| Ok(()))?;
            }
        }
        if let Some(known) = known {
            (known.define)(&mut linker)?;
        }
        for (export, item) in instance.exports(engine) {
            let provided = known.is_some_and(|k| k.funcs.contains(&export));
            if matches!(item.ty, ComponentItem::ComponentFunc(_)) && !provided {
                forbidden::define(&mut linker, name, export)?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
