//! The host imports (`profile_edge::policy::host::{config, log, Level}`),
//! callable from native `cargo test` too. In the proxy (wasm32) these call
//! the real imports. Natively, wit-bindgen's import stubs abort, so tests
//! get stand-ins instead: `set_config` sets what `config()` returns (default
//! `{}`), and `take_logs` returns the lines `log` wrote. Both are per test
//! thread, so tests running in parallel do not see each other's.

pub use crate::profile_edge::policy::host::Level;

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

#[cfg(not(target_arch = "wasm32"))]
pub use native::*;

#[cfg(not(target_arch = "wasm32"))]
mod native {
    use std::cell::RefCell;

    use super::Level;

    thread_local! {
        static CONFIG: RefCell<String> = RefCell::new("{}".to_string());
        static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
    }

    pub fn config() -> String {
        CONFIG.with(|c| c.borrow().clone())
    }

    pub fn log(level: Level, message: &str) {
        LOGS.with(|l| l.borrow_mut().push((level, message.to_string())));
    }

    /// Tests: what `config()` returns from now on, on this thread.
    #[allow(dead_code)]
    pub fn set_config(json: &str) {
        CONFIG.with(|c| *c.borrow_mut() = json.to_string());
    }

    /// Tests: the lines logged so far on this thread, oldest first.
    #[allow(dead_code)]
    pub fn take_logs() -> Vec<(Level, String)> {
        LOGS.with(|l| std::mem::take(&mut *l.borrow_mut()))
    }
}
