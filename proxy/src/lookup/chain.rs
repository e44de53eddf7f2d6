//! The tier chain a config builds: memory on top, then the shared tiers in
//! `LOWER_TIERS` order, then the origin through the batcher. On a reload
//! each part is reused when its own settings did not change, so a reload
//! keeps the caches; a new tier is one entry in `LOWER_TIERS`.

use std::sync::Arc;
use std::time::Duration;

use regex::Regex;

use super::ids::IdRules;
use super::negative::NegativeBudget;
use crate::coalesce::batcher::OriginSource;
use crate::coalesce::{BatchParams, Batcher, Gathered};
use crate::config::{Config, Problem};
use crate::lifecycle::Tasks;
use crate::tier::memory::MemoryTier;
use crate::tier::{millis, Tier};

/// Builds a shared tier from config when its section is present.
type BuildTier = fn(&Config, &Tasks) -> Option<Result<Arc<dyn Tier>, Problem>>;

/// The shared tiers below memory, top first, each with the config section
/// whose change rebuilds it.
const LOWER_TIERS: &[(&str, BuildTier)] = &[
    ("tiers.redis", crate::tier::redis::build),
    ("tiers.mongo", crate::tier::mongo::build),
];

/// A shared tier, the section it was built from, and its gathered calls
/// (lookups read and fill through them, so one tick's reads are one call,
/// and its writes another).
pub struct Lower {
    pub key: &'static str,
    pub tier: Arc<dyn Tier>,
    pub calls: Arc<Gathered>,
}

/// Everything lookups need from one config; swapped whole on reload.
pub struct Chain {
    pub memory: Arc<MemoryTier>,
    /// Shared tiers below memory, top first.
    pub lower: Vec<Lower>,
    pub batcher: Arc<Batcher>,
    pub ids: IdRules,
    pub negative_ttl: Duration,
    /// The cap on "not found" entries written to the shared tiers; kept
    /// across reloads that leave `[profiles]` alone.
    pub negatives: Arc<NegativeBudget>,
    pub throttle_ms: u64,
    /// Share of an entry's fresh life after which a hit refreshes it.
    pub eager_refresh: f64,
    /// The profile field that orders the origin's values, if it has one.
    pub version_field: Option<String>,
    /// Values kept past their TTL for the fail-safe; every tier's entries
    /// are stamped with it, so a change rebuilds them all.
    max_stale: Duration,
}

impl Chain {
    /// Builds the chain for `cfg`. With `prev`, parts whose sections did
    /// not change (`changed(key)` is false) are taken over as they are.
    pub fn build(
        cfg: &Config,
        prev: Option<&Chain>,
        changed: &dyn Fn(&str) -> bool,
        origin: Arc<dyn OriginSource>,
        tasks: &Tasks,
    ) -> Result<Chain, Problem> {
        let max_stale = cfg.fail_safe.max_stale.get();
        let keep = |key: &str| {
            prev.filter(|p| p.max_stale == max_stale && !changed(key))
                .is_some()
        };
        let mem = &cfg.tiers.memory;
        let memory = match prev {
            Some(p) if keep("tiers.memory") => p.memory.clone(),
            _ => {
                if prev.is_some() {
                    tracing::info!("memory tier settings changed; starting an empty memory tier");
                }
                Arc::new(MemoryTier::new(
                    mem.capacity,
                    mem.ttl.get(),
                    mem.ttl_jitter,
                    max_stale,
                ))
            }
        };
        let mut lower = Vec::new();
        for &(key, build) in LOWER_TIERS {
            let reused = prev
                .filter(|_| keep(key))
                .and_then(|p| p.lower.iter().find(|l| l.key == key));
            match reused {
                // Present before and unchanged, so present now.
                Some(l) => lower.push(Lower {
                    key,
                    tier: l.tier.clone(),
                    calls: l.calls.clone(),
                }),
                None => {
                    if let Some(tier) = build(cfg, tasks) {
                        let tier = tier?;
                        let calls = Arc::new(Gathered::start(tier.clone(), tasks));
                        lower.push(Lower { key, tier, calls });
                    }
                }
            }
        }
        let c = &cfg.coalescing;
        let params = BatchParams {
            batching: c.batching,
            max_batch: c.max_batch,
            window: c.window.get(),
            max_wait: c.max_wait.get(),
            max_inflight: c.max_inflight_batches,
        };
        let batcher = match prev {
            Some(p) if p.batcher.params() == params => p.batcher.clone(),
            _ => Arc::new(Batcher::start(params, origin, tasks)),
        };
        let pattern = Regex::new(&cfg.profiles.id_pattern)
            .map_err(|e| Problem::new("profiles.id_pattern", e.to_string()))?;
        let negatives = match prev {
            Some(p) if !changed("profiles") => p.negatives.clone(),
            _ => Arc::new(NegativeBudget::new(
                cfg.profiles.max_negative_entries,
                millis(cfg.profiles.negative_ttl.get()),
            )),
        };
        Ok(Chain {
            memory,
            lower,
            batcher,
            ids: IdRules::new(pattern, cfg.profiles.max_request_ids),
            negative_ttl: cfg.profiles.negative_ttl.get(),
            negatives,
            throttle_ms: millis(cfg.fail_safe.throttle.get()),
            eager_refresh: mem.eager_refresh,
            version_field: cfg.profiles.version_field.clone(),
            max_stale,
        })
    }

    /// This chain with `tier` added below the configured ones (unit tests
    /// put a fake shared tier there).
    #[cfg(test)]
    pub fn with_lower(&self, key: &'static str, tier: Arc<dyn Tier>, tasks: &Tasks) -> Chain {
        let mut lower: Vec<Lower> = self
            .lower
            .iter()
            .map(|l| Lower {
                key: l.key,
                tier: l.tier.clone(),
                calls: l.calls.clone(),
            })
            .collect();
        let calls = Arc::new(Gathered::start(tier.clone(), tasks));
        lower.push(Lower { key, tier, calls });
        Chain {
            memory: self.memory.clone(),
            lower,
            batcher: self.batcher.clone(),
            ids: self.ids.clone(),
            negative_ttl: self.negative_ttl,
            negatives: self.negatives.clone(),
            throttle_ms: self.throttle_ms,
            eager_refresh: self.eager_refresh,
            version_field: self.version_field.clone(),
            max_stale: self.max_stale,
        }
    }

    pub fn lower_tiers(&self) -> impl Iterator<Item = &Arc<dyn Tier>> {
        self.lower.iter().map(|l| &l.tier)
    }
}
