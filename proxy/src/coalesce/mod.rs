//! Coalescing below `lookup`: `flights`, then `gather` for the shared tiers
//! and `batcher` for the origin:
//!
//! - `Flights`: single-flight per id. The first request for a cold id
//!   registers a flight and loads it; every concurrent request for the same
//!   id waits on that flight instead of loading again.
//! - `Batcher`: misses from many flights are merged into origin batch calls
//!   of at most `max_batch` ids. A batch goes out when it is full, when no
//!   new miss joined it for `window`, or `max_wait` after its first miss; at
//!   most `max_inflight_batches` are in flight and further ids queue for the
//!   next (full) batch. Results fan out per id; an origin error fails only
//!   the ids of its batch.
//! - `Gathered`: the shared-tier reads of one scheduler tick, from every
//!   load, go to the tier as one call (one Redis MGET), and so do the
//!   writes (one script call), with no window.

pub mod batcher;
pub mod flights;
pub mod gather;

pub use batcher::{BatchParams, Batcher, OriginResult};
pub use flights::{wait, FlightEnd, FlightRx, FlightTx, Flights, Joined, Part};
pub use gather::Gathered;
