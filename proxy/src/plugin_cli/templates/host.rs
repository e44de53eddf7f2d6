//! The host imports (`profile_edge::policy::host::{config, log, request}`),
//! callable from native `cargo test` too. In the proxy (wasm32) these call
//! the real imports. Natively, wit-bindgen's import stubs abort, so tests
//! get stand-ins instead: `set_config` sets what `config()` returns (default
//! `{}`), `set_request` what `request()` returns (default: a response on
//! no particular route), and `take_logs` returns the lines `log` wrote. All
//! are per test thread, so tests running in parallel do not see each other's.
// A policy uses what it needs of these; the rest is not a warning.
#![allow(dead_code, unused_imports)]

pub use crate::profile_edge::policy::host::{CallInfo, CallKind, Level};

/// This plugin's `config` table (`[plugins.NAME] config = {...}`) as JSON.
#[cfg(target_arch = "wasm32")]
pub fn config() -> String {
    crate::profile_edge::policy::host::config()
}

/// Writes a line to the proxy's log, tagged with the plugin name.
#[cfg(target_arch = "wasm32")]
pub fn log(level: Level, message: &str) {
    crate::profile_edge::policy::host::log(level, message)
}

/// The call this instance was made for: what kind, and for a response
/// the request path and the `[[enrich]]` route.
#[cfg(target_arch = "wasm32")]
pub fn request() -> CallInfo {
    crate::profile_edge::policy::host::request()
}

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::cell::RefCell;

    use super::{CallInfo, CallKind, Level};

    thread_local! {
        static CONFIG: RefCell<String> = RefCell::new("{}".to_string());
        static REQUEST: RefCell<Option<CallInfo>> = const { RefCell::new(None) };
        static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn config() -> String {
        CONFIG.with(|c| c.borrow().clone())
    }

    pub fn log(level: Level, message: &str) {
        LOGS.with(|l| l.borrow_mut().push((level, message.to_string())));
    }

    pub fn request() -> CallInfo {
        REQUEST.with(|r| r.borrow().clone()).unwrap_or(CallInfo {
            kind: CallKind::Response,
            path: String::new(),
            route: String::new(),
        })
    }

    /// Tests: what `config()` returns from now on, on this thread.
    pub fn set_config(json: &str) {
        CONFIG.with(|c| *c.borrow_mut() = json.to_string());
    }

    /// Tests: what `request()` returns from now on, on this thread.
    pub fn set_request(info: CallInfo) {
        REQUEST.with(|r| *r.borrow_mut() = Some(info));
    }

    /// Tests: the lines logged so far on this thread, oldest first.
    pub fn take_logs() -> Vec<(Level, String)> {
        LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }
}
