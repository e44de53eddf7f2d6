//! Host bindings generated from `plugins/wit` (the contract with guests).
//! The invalidation world reuses the enrichment world's `host` and `types`
//! so that the host implements them once.

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

pub use enrich::profile_edge::policy::host::Level;
pub use enrich::profile_edge::policy::types::{Action, Profile};
