//! Profile lookups, between the routes and the tiers. `profiles` is the
//! read path (memory hit, else a flight through the chain to the origin);
//! `chain` the tiers a config builds and their reuse across reloads;
//! `fence` the per-id versions that keep a superseded load from writing
//! back; `failsafe` stale serving and eager refresh; `invalidate` removal
//! from every tier; `ids` the one id check every route uses; `status` the
//! `x-cache` value; `stats` counters and `/admin/stats`; `order` the
//! origin's own order of values (`profiles.version_field`); `dependents`
//! the caches derived from profiles (follower lists) that forget with them.

pub mod chain;
pub mod dependents;
pub mod failsafe;
pub mod fence;
pub mod ids;
pub mod invalidate;
pub mod negative;
pub mod order;
pub mod profiles;
pub mod stats;
pub mod status;

pub use dependents::Dependent;
pub use ids::{IdError, IdRules};
pub use profiles::{Loaded, Outcome, Profiles};
pub use status::CacheStatus;

#[cfg(test)]
mod tests;
