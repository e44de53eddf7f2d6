//! profile-edge: an edge cache proxy for the Officer user-profile API.
//!
//! A request enters through `http::server` (listeners, limits), is routed by
//! `routes::router` (profile lookup, batch, enrich, or passthrough), and
//! leaves through `http::upstream`; profile lookups go through `lookup`
//! (tiers, fences, fail-safe), `coalesce` and `origin`. `state` holds the
//! live config that `reload` swaps; `lifecycle` owns every background task;
//! `admin` serves health, metrics and operations on a second listener;
//! `warm_up` loads the most requested profiles again before they are asked
//! for.

pub mod admin;
pub mod app;
pub mod backplane;
pub mod coalesce;
pub mod config;
pub mod demo;
pub mod http;
pub mod invalidation;
pub mod lifecycle;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod mongo;
pub mod notifications;
pub mod origin;
pub mod plugin;
pub mod plugin_cli;
pub mod redis_link;
pub mod reload;
pub mod routes;
pub mod state;
pub mod tier;
pub mod units;
pub mod warm_up;

pub use app::App;
pub use config::Config;

/// The one door to the simulated Officer and Posts API that the demo runs,
/// for the integration tests in `tests/` and the programs in `bench/`.
/// It is not part of the proxy's API and changes with them; the simulator
/// itself stays private to `demo`.
#[doc(hidden)]
pub mod testkit {
    pub use crate::demo::sim::{
        user_id, PostSnapshots, Profile, SimConfig, SimMode, SimOrigin, SimStats,
    };
}
