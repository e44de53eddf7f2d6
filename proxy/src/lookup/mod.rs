//! Profile lookups, the heart of the product. A lookup reads the tiers top
//! to bottom (memory, then Redis and any other shared tier, then the origin
//! through the batcher) and fills the upper tiers on the way back.
//!
//! - Hot path: a fresh memory entry answers with no await and no lock.
//! - Misses join `Flights`, so one load runs per id however many requests
//!   want it; the load runs on its own task so a client that hangs up does
//!   not cancel it for the others.
//! - Fail-safe: entries outlive their TTL by `fail_safe.max_stale`; when the
//!   origin fails, a stale value is served and the id is left alone for
//!   `fail_safe.throttle` before the origin is tried again.
//! - Eager refresh: a hit on an entry past `eager_refresh` of its fresh
//!   life reloads it in the background, so hot entries never expire under
//!   load.
//! - Fencing: an invalidation records when it happened; a value fetched
//!   before that is never written to memory (checked under a per-id stripe
//!   lock that the invalidation also takes) and is removed again from the
//!   shared tiers it reached, and its waiters look the id up again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use prometheus::IntCounter;
use regex::Regex;
use serde_json::json;

use crate::coalesce::{self, BatchParams, Batcher, FlightEnd, FlightTx, Flights};
use crate::config::{self, Config, MemoryTierConfig, Problem, RedisTierConfig};
use crate::http::upstream::Upstream;
use crate::metrics::Metrics;
use crate::origin::{LoadError, Origin, OriginTarget};
use crate::tier::memory::MemoryTier;
use crate::tier::redis::RedisTier;
use crate::tier::{millis, now_ms, Entry, Tier, TierKind};

/// How many times a lookup starts over after its load was superseded by an
/// invalidation before it gives up.
const MAX_ATTEMPTS: usize = 3;
/// Fences must outlive every load that started before them: loads are
/// bounded by the upstream timeout, far below this.
const FENCE_TTL: Duration = Duration::from_secs(600);
const STRIPES: usize = 64;
/// Source freshness of an origin value: each tier caps it with its own TTL.
const ORIGIN_FRESH: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A lookup's answer: the entry (profile or "not found"), the tier it came
/// from, and whether it is served stale by the fail-safe.
#[derive(Clone, Debug)]
pub struct Loaded {
    pub entry: Entry,
    pub tier: TierKind,
    pub stale: bool,
}

type Outcome = Result<Loaded, LoadError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eager_refresh_is_relative_to_each_entry() {
        let e = |fetched_at, fresh_until| Entry {
            body: None,
            fetched_at,
            fresh_until,
            stale_until: fresh_until,
        };
        // 30 s negative entry, 10 s in: not due at 0.8.
        assert!(!eager_due(&e(0, 30_000), 10_000, 0.8));
        assert!(eager_due(&e(0, 30_000), 25_000, 0.8));
        // 5 min entry: due in its last minute.
        assert!(!eager_due(&e(0, 300_000), 230_000, 0.8));
        assert!(eager_due(&e(0, 300_000), 250_000, 0.8));
        assert!(!eager_due(&e(0, 300_000), 299_999, 1.0), "1.0 turns it off");
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// A miss: any usable tier value will do.
    Miss,
    /// Eager refresh: shared-tier values only count if they stay fresh for
    /// a whole memory TTL; otherwise the origin is asked.
    Refresh,
}

/// Lookup counters per tier, resolved once so the hot path does no label lookups.
struct Counters {
    hit: [IntCounter; 4],
    miss: [IntCounter; 4],
}

impl Counters {
    fn new(m: &Metrics) -> Counters {
        let tiers = [
            TierKind::Memory,
            TierKind::Redis,
            TierKind::Mongo,
            TierKind::Origin,
        ];
        let get = |result: &str| tiers.map(|t| m.lookups.with_label_values(&[t.as_str(), result]));
        Counters {
            hit: get("hit"),
            miss: get("miss"),
        }
    }

    fn record(&self, tier: TierKind, hit: bool) {
        let i = tier as usize;
        if hit {
            self.hit[i].inc();
        } else {
            self.miss[i].inc();
        }
    }
}

/// Everything built from config; swapped whole on reload, reusing the
/// parts whose settings did not change (so a reload keeps the caches).
struct Core {
    memory: Arc<MemoryTier>,
    redis: Option<Arc<RedisTier>>,
    /// Shared tiers below memory, top first.
    lower: Vec<Arc<dyn Tier>>,
    batcher: Arc<Batcher>,
    id_pattern: Regex,
    max_request_ids: usize,
    negative_ttl: Duration,
    throttle_ms: u64,
    /// Share of an entry's fresh life after which a hit refreshes it.
    eager_refresh: f64,
    memory_cfg: MemoryTierConfig,
    redis_cfg: Option<RedisTierConfig>,
    max_stale: Duration,
}

pub struct Profiles {
    core: ArcSwap<Core>,
    flights: Flights<Outcome>,
    /// Last invalidation time (Unix ms) per id.
    fences: moka::sync::Cache<String, u64>,
    stripes: Vec<Mutex<()>>,
    /// Ids whose origin load failed recently: serve stale until (Unix ms).
    throttled: moka::sync::Cache<String, u64>,
    origin: Arc<Origin>,
    metrics: Arc<Metrics>,
    counters: Counters,
}

impl Profiles {
    /// Builds the tiers and the batcher; must run inside the tokio runtime.
    pub fn new(
        cfg: &Config,
        officer: Arc<Upstream>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Profiles>, Problem> {
        let origin = Arc::new(Origin::new(target(cfg, officer), metrics.clone()));
        let core = build_core(cfg, None, &origin)?;
        Ok(Arc::new(Profiles {
            core: ArcSwap::from_pointee(core),
            flights: Flights::default(),
            fences: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(FENCE_TTL)
                .build(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            throttled: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            counters: Counters::new(&metrics),
            origin,
            metrics,
        }))
    }

    /// Applies a reloaded config: cheap settings switch at once; a tier or
    /// the batcher is rebuilt only when its own settings changed.
    pub fn reconfigure(&self, cfg: &Config, officer: Arc<Upstream>) -> Result<(), Problem> {
        let prev = self.core.load_full();
        let core = build_core(cfg, Some(&prev), &self.origin)?;
        self.origin.retarget(target(cfg, officer));
        self.core.store(Arc::new(core));
        Ok(())
    }

    pub fn valid_id(&self, id: &str) -> bool {
        self.core.load().id_pattern.is_match(id)
    }

    pub fn max_request_ids(&self) -> usize {
        self.core.load().max_request_ids
    }

    /// One id. Answers fresh memory hits without awaiting anything.
    pub async fn get(self: &Arc<Self>, id: &str) -> Outcome {
        if let Some(hit) = self.memory_hit(id, now_ms()) {
            return Ok(hit);
        }
        let mut out = self.load(&[id.to_string()]).await;
        out.pop()
            .unwrap_or_else(|| Err(LoadError::Failed("lookup lost its result".into())))
    }

    /// Many distinct ids (the caller folds duplicates); answers in order.
    pub async fn get_many(self: &Arc<Self>, ids: &[String]) -> Vec<Outcome> {
        let now = now_ms();
        let mut out: Vec<Option<Outcome>> = Vec::with_capacity(ids.len());
        let mut missing = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            match self.memory_hit(id, now) {
                Some(hit) => out.push(Some(Ok(hit))),
                None => {
                    out.push(None);
                    missing.push(i);
                }
            }
        }
        if !missing.is_empty() {
            let want: Vec<String> = missing.iter().map(|&i| ids[i].clone()).collect();
            for (i, r) in missing.into_iter().zip(self.load(&want).await) {
                out[i] = Some(r);
            }
        }
        out.into_iter()
            .map(|o| o.unwrap_or_else(|| Err(LoadError::Failed("lookup lost its result".into()))))
            .collect()
    }

    /// The memory tier's answer, if it can answer: fresh, or stale while
    /// the origin is being left alone after a failure.
    fn memory_hit(self: &Arc<Self>, id: &str, now: u64) -> Option<Loaded> {
        let core = self.core.load();
        let Some(entry) = core.memory.get(id) else {
            self.counters.record(TierKind::Memory, false);
            return None;
        };
        if entry.is_fresh(now) {
            self.counters.record(TierKind::Memory, true);
            if eager_due(&entry, now, core.eager_refresh) && !self.flights.contains(id) {
                self.refresh_in_background(id);
            }
            return Some(Loaded {
                entry,
                tier: TierKind::Memory,
                stale: false,
            });
        }
        if self.throttled.get(id).is_some_and(|until| until > now) {
            self.counters.record(TierKind::Memory, true);
            return Some(Loaded {
                entry,
                tier: TierKind::Memory,
                stale: true,
            });
        }
        self.counters.record(TierKind::Memory, false);
        None
    }

    fn refresh_in_background(self: &Arc<Self>, id: &str) {
        let joined = self.flights.join(&[id.to_string()]);
        if !joined.owned.is_empty() {
            tokio::spawn(self.clone().run_flights(joined.owned, Mode::Refresh));
        }
    }

    /// Loads ids below memory through the flights; starts over for ids
    /// whose load was superseded by an invalidation.
    async fn load(self: &Arc<Self>, ids: &[String]) -> Vec<Outcome> {
        let mut results: Vec<Option<Outcome>> = vec![None; ids.len()];
        let mut todo: Vec<usize> = (0..ids.len()).collect();
        for _ in 0..MAX_ATTEMPTS {
            let want: Vec<String> = todo.iter().map(|&i| ids[i].clone()).collect();
            let joined = self.flights.join(&want);
            self.metrics.coalesced.inc_by(joined.coalesced as u64);
            if !joined.owned.is_empty() {
                // Its own task: the load finishes for every waiter even if
                // this request goes away.
                tokio::spawn(self.clone().run_flights(joined.owned, Mode::Miss));
            }
            let mut again = Vec::new();
            for (&i, (_, rx)) in todo.iter().zip(joined.waits) {
                match coalesce::wait(rx).await {
                    Ok(FlightEnd::Done(r)) => results[i] = Some(r),
                    Ok(FlightEnd::Superseded) => again.push(i),
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            if again.is_empty() {
                break;
            }
            todo = again;
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(LoadError::Failed(
                        "the profile kept being invalidated while it loaded".into(),
                    ))
                })
            })
            .collect()
    }

    async fn run_flights(self: Arc<Self>, owned: Vec<(String, FlightTx<Outcome>)>, mode: Mode) {
        let mut guard = FlightGuard {
            profiles: &self,
            owned,
        };
        let ids: Vec<String> = guard.owned.iter().map(|(id, _)| id.clone()).collect();
        let mut ends = self.resolve(&ids, mode).await;
        for (id, tx) in guard.owned.drain(..) {
            let end = ends.remove(&id).unwrap_or_else(|| {
                FlightEnd::Done(Err(LoadError::Failed("no result for id".into())))
            });
            tx.send_replace(Some(end));
            self.flights.finish(&id, &tx);
        }
    }

    /// The read-through chain for ids nobody else is loading.
    async fn resolve(&self, ids: &[String], mode: Mode) -> HashMap<String, FlightEnd<Outcome>> {
        let core = self.core.load_full();
        let now = now_ms();
        let min_fresh = match mode {
            Mode::Miss => 0,
            Mode::Refresh => millis(core.memory.ttl()),
        };
        let mut out = HashMap::with_capacity(ids.len());
        // Fallbacks for the fail-safe, best (latest stale_until) first.
        let mut fallback: HashMap<String, (Entry, TierKind)> = HashMap::new();
        for id in ids {
            if let Some(e) = core.memory.get(id) {
                if e.is_usable(now) && !self.fenced(id, e.fetched_at) {
                    fallback.insert(id.clone(), (e, TierKind::Memory));
                }
            }
        }
        let mut superseded: Vec<String> = Vec::new();

        let mut pending: Vec<String> = ids.to_vec();
        for (depth, tier) in core.lower.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            let kind = tier.kind();
            let entries = match tier.get_many(&pending).await {
                Ok(e) => e,
                Err(e) => {
                    tracing::debug!(tier = kind.as_str(), error = %e, "tier skipped");
                    continue;
                }
            };
            let mut hits = Vec::new();
            let mut still = Vec::new();
            for (id, entry) in pending.into_iter().zip(entries) {
                let entry = entry.filter(|e| !self.fenced(&id, e.fetched_at));
                match entry {
                    Some(e) if e.fresh_until > now.saturating_add(min_fresh) => {
                        self.counters.record(kind, true);
                        hits.push((id, e));
                    }
                    Some(e) => {
                        self.counters.record(kind, false);
                        let better = fallback
                            .get(&id)
                            .is_none_or(|(f, _)| e.stale_until > f.stale_until);
                        if better {
                            fallback.insert(id.clone(), (e, kind));
                        }
                        still.push(id);
                    }
                    None => {
                        self.counters.record(kind, false);
                        still.push(id);
                    }
                }
            }
            pending = still;
            if hits.is_empty() {
                continue;
            }
            // Fill the shared tiers above this one, then memory.
            put_all(&core.lower[..depth], &hits).await;
            for (id, e) in hits {
                let end = self.publish(&core, &id, e, kind);
                if matches!(end, FlightEnd::Superseded) {
                    superseded.push(id.clone());
                }
                out.insert(id, end);
            }
        }

        if !pending.is_empty() {
            let loads = join_all(pending.iter().map(|id| core.batcher.load(id))).await;
            let mut fresh = Vec::new();
            for (id, r) in pending.into_iter().zip(loads) {
                match r {
                    Ok((body, started)) => {
                        self.counters.record(TierKind::Origin, body.is_some());
                        let fresh_for = if body.is_some() {
                            ORIGIN_FRESH
                        } else {
                            core.negative_ttl
                        };
                        fresh.push((id, Entry::from_origin(body, started, fresh_for)));
                    }
                    Err(e) => {
                        let end = match fallback.remove(&id) {
                            Some((entry, tier)) => self.fail_safe(&core, &id, entry, tier, now),
                            None => FlightEnd::Done(Err(e)),
                        };
                        out.insert(id, end);
                    }
                }
            }
            if !fresh.is_empty() {
                // Shared tiers first, memory last under the fence check: a
                // fenced value is then taken out of the shared tiers again.
                put_all(&core.lower, &fresh).await;
                for (id, e) in fresh {
                    let end = self.publish(&core, &id, e, TierKind::Origin);
                    if matches!(end, FlightEnd::Superseded) {
                        superseded.push(id.clone());
                    }
                    out.insert(id, end);
                }
            }
        }

        if !superseded.is_empty() {
            tracing::debug!(
                count = superseded.len(),
                "loads superseded by invalidations"
            );
            for tier in &core.lower {
                if let Err(e) = tier.remove(&superseded).await {
                    tracing::warn!(tier = tier.kind().as_str(), error = %e, "could not remove a superseded value");
                }
            }
        }
        out
    }

    /// Origin failed for `id`: serve what we have. A value still fresh (an
    /// eager refresh that failed) is served as a hit; a stale one as stale,
    /// and the origin is left alone for this id for the throttle time.
    fn fail_safe(
        &self,
        core: &Core,
        id: &str,
        entry: Entry,
        tier: TierKind,
        now: u64,
    ) -> FlightEnd<Outcome> {
        if entry.is_fresh(now) {
            return FlightEnd::Done(Ok(Loaded {
                entry,
                tier,
                stale: false,
            }));
        }
        self.throttled
            .insert(id.to_string(), now.saturating_add(core.throttle_ms));
        if tier != TierKind::Memory {
            // Keep it near for the next requests; it stays stale.
            let _g = self.stripe(id);
            if !self.fenced(id, entry.fetched_at) {
                core.memory.put(id, &entry);
            }
        }
        FlightEnd::Done(Ok(Loaded {
            entry,
            tier,
            stale: true,
        }))
    }

    /// Writes a loaded value to memory unless an invalidation fenced it.
    fn publish(&self, core: &Core, id: &str, entry: Entry, tier: TierKind) -> FlightEnd<Outcome> {
        let _g = self.stripe(id);
        if self.fenced(id, entry.fetched_at) {
            return FlightEnd::Superseded;
        }
        core.memory.put(id, &entry);
        self.throttled.invalidate(id);
        FlightEnd::Done(Ok(Loaded {
            entry,
            tier,
            stale: false,
        }))
    }

    fn fenced(&self, id: &str, fetched_at: u64) -> bool {
        self.fences.get(id).is_some_and(|at| fetched_at <= at)
    }

    fn stripe(&self, id: &str) -> MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::hash::DefaultHasher::new();
        id.hash(&mut h);
        let i = (h.finish() as usize) % self.stripes.len();
        // The guarded sections cannot panic, so a poisoned stripe is still sound.
        self.stripes[i].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Removes `id` from every tier; loads in flight for it cannot put the
    /// old value back, and requests after this return start a new load.
    pub async fn invalidate(&self, id: &str, source: &str) {
        let core = self.core.load_full();
        {
            let _g = self.stripe(id);
            self.fences.insert(id.to_string(), now_ms());
            core.memory.remove(id);
        }
        self.flights.detach(id);
        self.throttled.invalidate(id);
        let ids = [id.to_string()];
        for tier in &core.lower {
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

    /// `/admin/stats`: per tier hits, misses and hit rate; origin calls;
    /// coalescing and fail-safe counts.
    pub fn stats(&self) -> serde_json::Value {
        let core = self.core.load();
        let tier = |t: TierKind| {
            let hits = self.counters.hit[t as usize].get();
            let misses = self.counters.miss[t as usize].get();
            let total = hits + misses;
            json!({
                "hits": hits,
                "misses": misses,
                "hit_rate": if total == 0 { 0.0 } else { hits as f64 / total as f64 },
            })
        };
        let mut tiers = serde_json::Map::new();
        let mut memory = tier(TierKind::Memory);
        memory["entries"] = json!(core.memory.entry_count());
        tiers.insert("memory".into(), memory);
        if let Some(r) = &core.redis {
            let mut redis = tier(TierKind::Redis);
            redis["breaker_open"] = json!(r.breaker_open());
            tiers.insert("redis".into(), redis);
        }
        tiers.insert("origin".into(), tier(TierKind::Origin));
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
            "batching": core.batcher.params().batching,
        })
    }
}

/// Ends every flight a load task still owns if the task stops early (it
/// panicked or the runtime is shutting down), so waiters get an error
/// instead of waiting on a registry entry nobody will finish.
struct FlightGuard<'a> {
    profiles: &'a Profiles,
    owned: Vec<(String, FlightTx<Outcome>)>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        for (id, tx) in self.owned.drain(..) {
            tx.send_replace(Some(FlightEnd::Done(Err(LoadError::Failed(
                "the load for this id stopped".into(),
            )))));
            self.profiles.flights.finish(&id, &tx);
        }
    }
}

/// Whether a fresh entry is far enough into its fresh life (measured from
/// when the origin produced it) to be refreshed ahead of expiry. Relative to
/// each entry, so short-lived entries (404s) are not refreshed on every hit.
fn eager_due(entry: &Entry, now: u64, share: f64) -> bool {
    if share >= 1.0 {
        return false;
    }
    let life = entry.fresh_until.saturating_sub(entry.fetched_at) as f64;
    let left = entry.fresh_until.saturating_sub(now) as f64;
    left < life * (1.0 - share)
}

async fn put_all(tiers: &[Arc<dyn Tier>], entries: &[(String, Entry)]) {
    if tiers.is_empty() || entries.is_empty() {
        return;
    }
    for (tier, r) in tiers
        .iter()
        .zip(join_all(tiers.iter().map(|t| t.put_many(entries))).await)
    {
        if let Err(e) = r {
            tracing::debug!(tier = tier.kind().as_str(), error = %e, "tier write skipped");
        }
    }
}

fn target(cfg: &Config, upstream: Arc<Upstream>) -> OriginTarget {
    OriginTarget {
        upstream,
        user_prefix: config::user_path_prefix(&cfg.profiles.user_path)
            .unwrap_or("/api/users")
            .to_string(),
        batch_path: cfg.profiles.batch_path.clone(),
    }
}

fn build_core(cfg: &Config, prev: Option<&Core>, origin: &Arc<Origin>) -> Result<Core, Problem> {
    let max_stale = cfg.fail_safe.max_stale.get();
    let mem = &cfg.tiers.memory;
    let memory = match prev {
        Some(p) if p.memory_cfg == *mem && p.max_stale == max_stale => p.memory.clone(),
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
    let redis = match (&cfg.tiers.redis, prev) {
        (None, _) => None,
        (Some(r), Some(p)) if p.redis_cfg.as_ref() == Some(r) && p.max_stale == max_stale => {
            p.redis.clone()
        }
        (Some(r), _) => Some(
            RedisTier::new(r, max_stale)
                .map_err(|e| Problem::new("tiers.redis.url", e.to_string()))?,
        ),
    };
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
        _ => Arc::new(Batcher::start(params, origin.clone())),
    };
    let id_pattern = Regex::new(&cfg.profiles.id_pattern)
        .map_err(|e| Problem::new("profiles.id_pattern", e.to_string()))?;
    let mut lower: Vec<Arc<dyn Tier>> = Vec::new();
    if let Some(r) = &redis {
        lower.push(r.clone());
    }
    Ok(Core {
        memory,
        redis,
        lower,
        batcher,
        id_pattern,
        max_request_ids: cfg.profiles.max_request_ids,
        negative_ttl: cfg.profiles.negative_ttl.get(),
        throttle_ms: millis(cfg.fail_safe.throttle.get()),
        eager_refresh: mem.eager_refresh,
        memory_cfg: mem.clone(),
        redis_cfg: cfg.tiers.redis.clone(),
        max_stale,
    })
}
