//! The admin listener: health, readiness, metrics and operations
//! (`router`), and profile events handed to the invalidation policy
//! (`events`).

pub mod events;
pub mod router;
