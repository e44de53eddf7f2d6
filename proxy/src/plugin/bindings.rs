//! Host bindings generated from `plugins/wit` (the contract with guests):
//! the current version (`enrich`, `invalidate`) and the previous one
//! (`previous`), so that a fleet can be upgraded one instance at a time.
//! The invalidation worlds reuse the enrichment world's `host` and `types`
//! so that the host implements each version's `host` once; the previous
//! version's `types` are the current ones (identical records and variants),
//! so calls hand both versions the same `Profile` and get the same `Action`.
//! `enrich` is called with `ProfileRef`s, the same record with its text
//! borrowed, so that cached profile bytes go into the guest's memory with
//! no copy on the host (the generated bindings would own every string;
//! their `Borrowing` mode cannot be used here: it emits an undeclared
//! lifetime for the `action` variant, which no enrichment function uses).

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

/// The `enricher` interface of each accepted version, where `enrich` is
/// found on an instance.
pub const CURRENT_ENRICHER: &str = "profile-edge:policy/enricher@0.2.0";
pub const PREVIOUS_ENRICHER: &str = "profile-edge:policy/enricher@0.1.0";

/// The WIT `profile` record with its id and JSON text borrowed.
#[derive(wasmtime::component::ComponentType, wasmtime::component::Lower, Clone, Copy, Debug)]
#[component(record)]
pub struct ProfileRef<'a> {
    pub id: &'a str,
    pub json: &'a str,
}

impl Profile {
    pub fn lend(&self) -> ProfileRef<'_> {
        ProfileRef {
            id: &self.id,
            json: &self.json,
        }
    }
}

/// Owned profiles lent to `enrich`.
pub fn lend(profiles: &[Profile]) -> Vec<ProfileRef<'_>> {
    profiles.iter().map(Profile::lend).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_enricher_names_carry_the_versions() {
        assert_eq!(
            CURRENT_ENRICHER,
            format!("profile-edge:policy/enricher@{CURRENT}")
        );
        assert_eq!(
            PREVIOUS_ENRICHER,
            format!("profile-edge:policy/enricher@{PREVIOUS}")
        );
    }
}
