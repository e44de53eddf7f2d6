//! profile-edge: an edge cache proxy for the Officer user-profile API.
//!
//! A request enters through `server` (listeners, limits), is routed by
//! `router` (profile lookup, batch, enrich, or `passthrough`), and leaves
//! through `upstream`. `state` holds the live config that `reload` swaps;
//! `admin` serves health, metrics and operations on a second listener.

pub mod admin;
pub mod app;
pub mod body;
pub mod coalesce;
pub mod config;
pub mod demo;
pub mod enrich;
pub mod error;
pub mod events;
pub mod headers;
pub mod logging;
pub mod lookup;
pub mod metrics;
pub mod origin;
pub mod passthrough;
pub mod plugin;
pub mod profile_routes;
pub mod reload;
pub mod router;
pub mod server;
pub mod sim;
pub mod state;
pub mod tier;
pub mod tls;
pub mod units;
pub mod upstream;
pub mod watch;

pub use app::App;
pub use config::Config;
