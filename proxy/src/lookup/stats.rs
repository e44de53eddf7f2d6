//! Lookup counters and `/admin/stats`: hits and misses per tier (the
//! `profile_edge_lookups_total` series, resolved once so the hot path does
//! no label lookups), origin calls, coalescing and fail-safe counts.

use prometheus::IntCounter;
use serde_json::{json, Value};

use super::Profiles;
use crate::metrics::Metrics;
use crate::tier::TierKind;

const KINDS: [TierKind; 4] = [
    TierKind::Memory,
    TierKind::Redis,
    TierKind::Mongo,
    TierKind::Origin,
];

pub struct Counters {
    hit: [IntCounter; 4],
    miss: [IntCounter; 4],
}

impl Counters {
    pub fn new(m: &Metrics) -> Counters {
        let get = |result: &str| KINDS.map(|t| m.lookups.with_label_values(&[t.as_str(), result]));
        Counters {
            hit: get("hit"),
            miss: get("miss"),
        }
    }

    pub fn record(&self, tier: TierKind, hit: bool) {
        let i = tier as usize;
        if hit {
            self.hit[i].inc();
        } else {
            self.miss[i].inc();
        }
    }

    fn tier(&self, t: TierKind) -> serde_json::Map<String, Value> {
        let hits = self.hit[t as usize].get();
        let misses = self.miss[t as usize].get();
        let total = hits + misses;
        let mut m = serde_json::Map::new();
        m.insert("hits".into(), hits.into());
        m.insert("misses".into(), misses.into());
        m.insert(
            "hit_rate".into(),
            json!(if total == 0 {
                0.0
            } else {
                hits as f64 / total as f64
            }),
        );
        m
    }
}

impl Profiles {
    /// `/admin/stats`: per tier hits, misses and hit rate (plus what each
    /// tier adds); origin calls; coalescing and fail-safe counts.
    pub fn stats(&self) -> Value {
        let chain = self.chain.load();
        let mut tiers = serde_json::Map::new();
        let mut memory = self.counters.tier(TierKind::Memory);
        memory.insert("entries".into(), chain.memory.entry_count().into());
        tiers.insert("memory".into(), memory.into());
        for tier in chain.lower_tiers() {
            let kind = tier.kind();
            let mut t = self.counters.tier(kind);
            t.extend(tier.stats());
            tiers.insert(kind.as_str().into(), t.into());
        }
        tiers.insert("origin".into(), self.counters.tier(TierKind::Origin).into());
        let calls = self.origin.calls();
        json!({
            "tiers": tiers,
            "origin": {
                "single_calls": calls.single,
                "batch_calls": calls.batch,
                "batch_ids": calls.batch_ids,
                "mean_batch_size": if calls.batch == 0 { 0.0 } else { calls.batch_ids as f64 / calls.batch as f64 },
            },
            "coalesced": self.metrics.coalesced.get(),
            "stale_served": self.metrics.stale_served.get(),
            "loads_in_flight": self.flights.len(),
            "batching": chain.batcher.params().batching,
        })
    }
}
