//! Invalidation of one id in every tier, fenced: loads in flight for it
//! cannot put the old value back, and requests after this returns start a
//! new load. Admin purges, events and policy actions all come through here.

use super::Profiles;

impl Profiles {
    /// Removes `id` from every tier; `source` is the
    /// `profile_edge_invalidations_total` label.
    pub async fn invalidate(&self, id: &str, source: &str) {
        let chain = self.chain.load_full();
        // The version bump and the memory removal happen under the id's
        // stripe, so no load can publish between them.
        self.fence.invalidate(id, || chain.memory.remove(id));
        self.flights.detach(id);
        self.throttle.clear(id);
        let ids = [id.to_string()];
        for tier in chain.lower_tiers() {
            if let Err(e) = tier.remove(&ids).await {
                tracing::warn!(tier = tier.kind().as_str(), %id, error = %e,
                    "invalidation could not reach the tier; it is retried");
            }
        }
        self.metrics
            .invalidations
            .with_label_values(&[source])
            .inc();
    }
}
