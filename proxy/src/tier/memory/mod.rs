//! The in-process tier, first on every lookup: a table bounded by entry
//! count (`store`) of packed records (`record`). Whether an entry is served
//! as fresh is decided by its `fresh_until`, which gets a random jitter so
//! that a warm-up does not expire all at once; an entry past its
//! `stale_until` is never answered, and is dropped when a read or an
//! eviction comes across it (no timer per entry).
//!
//! Why not moka (kept until issue 15): RSS growth per cached 320-byte
//! profile, 100k and 1M entries, measured with the same ids and bodies:
//! moka with a per-entry `expire_after` 1 077 B, without expiry 1 030 B,
//! with a global `time_to_live` 1 063 B; with a u64 key and one packed
//! buffer per value 770 B (802 B with `time_to_live`); the packed buffers
//! alone 448 B. moka's own share, about 320 B an entry, is more than the
//! budget left beside the value (the goal is 50 MiB per 100k, 524 B), so
//! the index here is an open-addressing table per shard and a slot vector,
//! about 45 B an entry: 490 B per cached profile in all at 1M (46.8 MiB per
//! 100k), `examples/memory_footprint.rs`.

mod index;
mod record;
mod store;
#[cfg(test)]
mod tests;

use std::time::Duration;

use rand::Rng;

use super::{now_ms, Entry};
use record::Record;
use store::Store;

pub struct MemoryTier {
    store: Store,
    ttl: Duration,
    jitter: f64,
    max_stale: Duration,
}

impl MemoryTier {
    pub fn new(capacity: u64, ttl: Duration, jitter: f64, max_stale: Duration) -> MemoryTier {
        MemoryTier {
            store: Store::new(capacity),
            ttl,
            jitter: jitter.clamp(0.0, 0.5),
            max_stale,
        }
    }

    /// The hot path: one shard lock and one hash probe, no await.
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.get_at(id, now_ms())
    }

    /// `get` for a caller that has read the clock already.
    pub fn get_at(&self, id: &str, now: u64) -> Option<Entry> {
        self.store.get(id, now)
    }

    /// Stores an entry from another tier or the origin, restamped with this
    /// tier's jittered TTL, unless memory holds a value of a higher origin
    /// order (false then). Callers hold the id's fence stripe, so the check
    /// and the insert are not raced by another write of the same id.
    pub fn put(&self, id: &str, entry: &Entry) -> bool {
        let now = now_ms();
        let stamped = entry.restamped(now, self.jittered_ttl(), self.max_stale);
        let Some(record) = Record::pack(id, &stamped) else {
            return true;
        };
        let order = entry.order;
        self.store
            .insert(id, record, now, |held| order != 0 && held.order() > order)
    }

    /// Stores an entry with its timestamps as they are (fail-safe throttle).
    pub fn put_exact(&self, id: &str, entry: Entry) {
        if let Some(record) = Record::pack(id, &entry) {
            self.store.insert(id, record, now_ms(), |_| false);
        }
    }

    /// Removes `id`; answers what was held (nothing past its stale window).
    pub fn remove(&self, id: &str) -> Option<Entry> {
        let now = now_ms();
        self.store
            .remove(id)
            .filter(|r| r.stale_until() > now)
            .map(|r| r.entry())
    }

    /// Drops every entry (the backplane lost track of invalidations).
    pub fn clear(&self) {
        self.store.clear();
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn entry_count(&self) -> u64 {
        self.store.len() as u64
    }

    fn jittered_ttl(&self) -> Duration {
        if self.jitter == 0.0 {
            return self.ttl;
        }
        // Up to `jitter` shorter, never longer than configured.
        let cut = rand::rng().random_range(0.0..self.jitter);
        self.ttl.mul_f64(1.0 - cut)
    }
}
