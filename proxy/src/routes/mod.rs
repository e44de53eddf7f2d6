//! The main listener's routes: `router` picks one per request; profile
//! lookups, batch lookups, enrichment, the notification stream and
//! passthrough each live in their own file.

pub mod batch;
pub mod enrich;
pub mod notifications;
pub mod passthrough;
pub mod profile;
pub mod router;
