//! The admin listener: health, readiness, metrics and operations
//! (`router`), profile events handed to the invalidation policy
//! (`events`), warm-ups on demand (`warm`), and new posts for the
//! notification stream (`notify`).

pub mod events;
pub mod notify;
pub mod router;
pub mod warm;
