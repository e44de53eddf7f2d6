//! `wasi:filesystem/preopens`: a policy has no directories. Runtimes that
//! list them at start-up (wasi-libc, JavaScript engines) get an empty
//! list; every other filesystem function traps.

use wasmtime::component::Resource;

use super::Interface;

/// `wasi:filesystem/types.descriptor`; never handed out.
pub struct Descriptor;

pub(super) const PREOPENS: Interface = Interface {
    name: "wasi:filesystem/preopens",
    funcs: &["get-directories"],
    define: |linker| {
        linker.func_wrap("get-directories", |_, (): ()| {
            Ok((Vec::<(Resource<Descriptor>, String)>::new(),))
        })
    },
};
