//! Invalidation of ids on this instance. `invalidate` is the local half of
//! every invalidation (admin purges, events, policy actions come through
//! `crate::invalidation`, which also tells the other instances); `forget`,
//! `forget_all` and `warm` are what a message from another instance does
//! here.
//!
//! The order matters: the shared tiers get their tombstones first, then
//! this instance's fence and memory. A load that starts in between reads a
//! tombstone, never the old value, and one that read the old value before
//! the tombstone is superseded by the fence, so memory cannot get it back.

use std::sync::Arc;

use super::profiles::Mode;
use super::Profiles;
use crate::tier::{Entry, TierError, TierKind};

impl Profiles {
    /// Removes `id` from every tier; `source` is the
    /// `profile_edge_invalidations_total` label. Answers the id's new
    /// version in the top shared tier (0 without one, or when it could not
    /// be reached: the removal is then retried by the tier).
    pub async fn invalidate(&self, id: &str, source: &str) -> u64 {
        let chain = self.chain.load_full();
        let ids = [id.to_string()];
        let mut version = None;
        for tier in chain.lower_tiers() {
            match tier.remove(&ids).await {
                Ok(v) => {
                    version.get_or_insert(v.first().copied().unwrap_or(0));
                }
                Err(e) => {
                    version.get_or_insert(0);
                    tracing::warn!(tier = tier.kind().as_str(), %id, error = %e,
                        "invalidation could not reach the tier; it is retried");
                }
            }
        }
        self.forget(id);
        self.metrics
            .invalidations
            .with_label_values(&[source])
            .inc();
        version.unwrap_or(0)
    }

    /// Removes every id from every tier (a change stream lost its history):
    /// the shared tiers' marks first, then this instance's fence and
    /// memory, as for one id. Answers, per shared tier, how many ids were
    /// marked or why it could not be done (that tier then keeps what it
    /// has until its TTL: it cannot remember "everything" as pending).
    pub async fn invalidate_all(&self, source: &str) -> Vec<(TierKind, Result<u64, TierError>)> {
        let chain = self.chain.load_full();
        let mut done = Vec::new();
        for tier in chain.lower_tiers() {
            let result = tier.remove_all().await;
            if let Err(e) = &result {
                tracing::error!(tier = tier.kind().as_str(), error = %e,
                    "could not clear the tier; its values expire with its TTL");
            }
            done.push((tier.kind(), result));
        }
        self.forget_all();
        self.metrics
            .invalidations
            .with_label_values(&[source])
            .inc();
        done
    }

    /// This instance's half of an invalidation: loads in flight for `id`
    /// are superseded and memory drops it. Answers what memory held.
    pub fn forget(&self, id: &str) -> Option<Entry> {
        let chain = self.chain.load();
        let mut held = None;
        // The version bump and the memory removal happen under the id's
        // stripe, so no load can publish between them.
        self.fence.invalidate(id, || held = chain.memory.remove(id));
        self.flights.detach(id);
        self.throttle.clear(id);
        self.dependents.forget(id);
        held
    }

    /// Forgets every id: memory is emptied and every load in flight is
    /// superseded (the backplane cannot tell what this instance missed).
    pub fn forget_all(&self) {
        let chain = self.chain.load();
        self.fence.invalidate_all(|| chain.memory.clear());
        self.flights.detach_all();
        self.throttle.clear_all();
        self.dependents.forget_all();
    }

    /// Registers a cache derived from profiles: it forgets an id whenever
    /// this instance does.
    pub fn add_dependent(&self, d: Arc<dyn super::Dependent>) {
        self.dependents.add(d);
    }

    /// Loads `id` again in the background, once however many ask (another
    /// instance refreshed it under `version`): a shared-tier value counts
    /// only if written under that version or later, else the origin is
    /// asked. Nothing happens if a load of it is already in flight.
    pub fn warm(self: &Arc<Self>, id: &str, version: u64) {
        self.load_in_background(id, Mode::Warm(version));
    }

    /// Entries in memory now (stats, and whether a clear drops anything).
    pub fn memory_entries(&self) -> u64 {
        self.chain.load().memory.entry_count()
    }
}
