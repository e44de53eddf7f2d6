//! Host bindings generated from `plugins/wit` (the contract with guests):
//! the current version (`enrich`, `invalidate`) and the previous one
//! (`previous`), so that a fleet can be upgraded one instance at a time.
//! The invalidation worlds reuse the enrichment world's `host` and `types`
//! so that the host implements each version's `host` once; the previous
//! version's `types` are the current ones (identical records and variants),
//! so calls hand both versions the same `Profile` and get the same `Action`.

/// The WIT package version guests are built against now.
pub const CURRENT: &str = "0.2.0";
/// The one before, still accepted.
pub const PREVIOUS: &str = "0.1.0";

pub mod enrich {
    wasmtime::component::bindgen!({
        world: "enrich-policy",
        path: "../plugins/wit",
    });
}

pub mod invalidate {
    wasmtime::component::bindgen!({
        world: "invalidate-policy",
        path: "../plugins/wit",
        with: {
            "profile-edge:policy/host": super::enrich::profile_edge::policy::host,
            "profile-edge:policy/types": super::enrich::profile_edge::policy::types,
        },
    });
}

/// `profile-edge:policy@0.1.0`, kept as it was in `plugins/wit/previous`.
pub mod previous {
    pub mod enrich {
        wasmtime::component::bindgen!({
            world: "enrich-policy",
            path: "../plugins/wit/previous/0.1.0",
            with: {
                "profile-edge:policy/types": crate::plugin::bindings::enrich::profile_edge::policy::types,
            },
        });
    }

    pub mod invalidate {
        wasmtime::component::bindgen!({
            world: "invalidate-policy",
            path: "../plugins/wit/previous/0.1.0",
            with: {
                "profile-edge:policy/host": super::enrich::profile_edge::policy::host,
                "profile-edge:policy/types": crate::plugin::bindings::enrich::profile_edge::policy::types,
            },
        });
    }
}

pub use enrich::profile_edge::policy::host::{CallInfo, CallKind, Level};
pub use enrich::profile_edge::policy::types::{Action, Profile};
