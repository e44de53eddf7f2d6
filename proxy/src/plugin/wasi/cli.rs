//! `wasi:cli`: stdout and stderr (captured), stdin (empty), an empty
//! environment (no variables, no arguments, no working directory), no
//! terminals, and `exit` as a trap.

use wasmtime::component::Resource;

use super::capture::{STDERR_REP, STDOUT_REP};
use super::forbidden::PolicyExit;
use super::io::{InputStream, OutputStream};
use super::Interface;

/// `wasi:cli/terminal-input.terminal-input`; never handed out.
pub struct TerminalInput;
/// `wasi:cli/terminal-output.terminal-output`; never handed out.
pub struct TerminalOutput;

pub(super) const STDIN: Interface = Interface {
    name: "wasi:cli/stdin",
    funcs: &["get-stdin"],
    define: |linker| {
        linker.func_wrap("get-stdin", |_, (): ()| {
            Ok((Resource::<InputStream>::new_own(0),))
        })
    },
};

pub(super) const STDOUT: Interface = Interface {
    name: "wasi:cli/stdout",
    funcs: &["get-stdout"],
    define: |linker| {
        linker.func_wrap("get-stdout", |_, (): ()| {
            Ok((Resource::<OutputStream>::new_own(STDOUT_REP),))
        })
    },
};

pub(super) const STDERR: Interface = Interface {
    name: "wasi:cli/stderr",
    funcs: &["get-stderr"],
    define: |linker| {
        linker.func_wrap("get-stderr", |_, (): ()| {
            Ok((Resource::<OutputStream>::new_own(STDERR_REP),))
        })
    },
};

pub(super) const ENVIRONMENT: Interface = Interface {
    name: "wasi:cli/environment",
    funcs: &["get-environment", "get-arguments", "initial-cwd"],
    define: |linker| {
        linker.func_wrap("get-environment", |_, (): ()| {
            Ok((Vec::<(String, String)>::new(),))
        })?;
        linker.func_wrap("get-arguments", |_, (): ()| Ok((Vec::<String>::new(),)))?;
        linker.func_wrap("initial-cwd", |_, (): ()| Ok((None::<String>,)))
    },
};

pub(super) const EXIT: Interface = Interface {
    name: "wasi:cli/exit",
    funcs: &["exit", "exit-with-code"],
    define: |linker| {
        linker.func_wrap("exit", |_, (status,): (Result<(), ()>,)| {
            let how = if status.is_ok() {
                " (success)"
            } else {
                " (failure)"
            };
            Err::<(), _>(PolicyExit(how).into())
        })?;
        linker.func_wrap("exit-with-code", |_, (_,): (u8,)| {
            Err::<(), _>(PolicyExit("").into())
        })
    },
};

pub(super) const TERMINAL_STDIN: Interface = Interface {
    name: "wasi:cli/terminal-stdin",
    funcs: &["get-terminal-stdin"],
    define: |linker| {
        linker.func_wrap("get-terminal-stdin", |_, (): ()| {
            Ok((None::<Resource<TerminalInput>>,))
        })
    },
};

pub(super) const TERMINAL_STDOUT: Interface = Interface {
    name: "wasi:cli/terminal-stdout",
    funcs: &["get-terminal-stdout"],
    define: |linker| {
        linker.func_wrap("get-terminal-stdout", |_, (): ()| {
            Ok((None::<Resource<TerminalOutput>>,))
        })
    },
};

pub(super) const TERMINAL_STDERR: Interface = Interface {
    name: "wasi:cli/terminal-stderr",
    funcs: &["get-terminal-stderr"],
    define: |linker| {
        linker.func_wrap("get-terminal-stderr", |_, (): ()| {
            Ok((None::<Resource<TerminalOutput>>,))
        })
    },
};
