//! The admin listener: health, readiness, metrics and operations
//! (`router`), profile events handed to the invalidation policy
//! (`events`), and warm-ups on demand (`warm`).

pub mod events;
pub mod router;
pub mod warm;
