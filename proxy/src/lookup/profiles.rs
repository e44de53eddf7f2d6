//! Profile lookups, the heart of the product, read top to bottom:
//! `get`/`get_many` answer fresh memory hits with no await and no lock;
//! misses join `Flights` (one load per id however many requests want it)
//! and the owner resolves them through the chain's shared tiers, then the
//! origin through the batcher, filling the tiers above on the way back.
//! Shared-tier writes are conditional on the id's version there as the load
//! read it, and memory writes go under the id's fence ticket, so a load that
//! an invalidation superseded (here or on another instance) writes its old
//! value to neither, and its waiters look the id up again.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;

use super::chain::{Chain, Lower};
use super::dependents::Dependents;
use super::failsafe::{eager_due, Fallbacks, Throttle};
use super::fence::{Admitted, Fence, TicketGuard};
use super::ids::{IdError, IdRules};
use super::order::origin_order;
use super::stats::Counters;
use super::status::CacheStatus;
use crate::coalesce::{self, FlightEnd, FlightTx, Flights};
use crate::config::{self, Config, Problem};
use crate::http::upstream::Upstream;
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::origin::{LoadError, Origin, OriginSource, OriginTarget};
use crate::reload::ConfigDiff;
use crate::tier::{millis, now_ms, Entry, TierKind, Written};

/// How many times a lookup starts over after its load was superseded by an
/// invalidation before it gives up.
const MAX_ATTEMPTS: usize = 3;
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

impl Loaded {
    /// The `x-cache` value for this answer.
    pub fn status(&self) -> CacheStatus {
        if self.stale {
            CacheStatus::Stale
        } else if self.tier == TierKind::Origin {
            CacheStatus::Miss
        } else {
            CacheStatus::Hit
        }
    }
}

pub type Outcome = Result<Loaded, LoadError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// A miss: any fresh shared-tier value will do.
    Miss,
    /// Eager refresh: shared-tier values only count if they stay fresh for
    /// a whole memory TTL; otherwise the origin is asked.
    Refresh,
    /// Another instance refreshed the id under this version: a shared-tier
    /// value counts only if it was written under it or later (with 0, none
    /// does, and the origin is asked).
    Warm(u64),
}

impl Mode {
    /// Whether a shared tier's entry answers this load.
    fn accepts(self, e: &Entry, now: u64, memory_ttl_ms: u64) -> bool {
        match self {
            Mode::Miss => e.fresh_until > now,
            Mode::Refresh => e.fresh_until > now.saturating_add(memory_ttl_ms),
            Mode::Warm(v) => v > 0 && e.version >= v && e.fresh_until > now,
        }
    }
}

pub struct Profiles {
    pub(super) chain: ArcSwap<Chain>,
    pub(super) flights: Flights<Outcome>,
    pub(super) fence: Fence,
    pub(super) throttle: Throttle,
    pub(super) origin: Arc<dyn OriginSource>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) counters: Counters,
    /// Caches derived from profiles, forgotten with them.
    pub(super) dependents: Dependents,
    tasks: Tasks,
}

impl Profiles {
    /// Builds the chain and the batcher; must run inside the tokio runtime.
    /// Background work (the batcher, tier retries, loads) runs on `tasks`.
    pub fn new(
        cfg: &Config,
        officer: Arc<Upstream>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Result<Arc<Profiles>, Problem> {
        let origin = Arc::new(Origin::new(target(cfg, officer), metrics.clone()));
        Profiles::with_origin(cfg, origin, metrics, tasks)
    }

    /// Like `new`, with any origin (unit tests use a fake).
    pub fn with_origin(
        cfg: &Config,
        origin: Arc<dyn OriginSource>,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Result<Arc<Profiles>, Problem> {
        let chain = Chain::build(cfg, None, &|_| true, origin.clone(), &tasks)?;
        Ok(Arc::new(Profiles {
            chain: ArcSwap::from_pointee(chain),
            flights: Flights::default(),
            fence: Fence::default(),
            throttle: Throttle::default(),
            counters: Counters::new(&metrics),
            dependents: Dependents::default(),
            origin,
            metrics,
            tasks,
        }))
    }

    /// Applies a reloaded config: cheap settings switch at once; a tier or
    /// the batcher is rebuilt only when the diff says its section changed.
    pub fn reconfigure(
        &self,
        cfg: &Config,
        officer: Arc<Upstream>,
        diff: &ConfigDiff,
    ) -> Result<(), Problem> {
        let prev = self.chain.load_full();
        let changed = |key: &str| diff.changed(key);
        let chain = Chain::build(cfg, Some(&prev), &changed, self.origin.clone(), &self.tasks)?;
        self.origin.retarget(target(cfg, officer));
        self.chain.store(Arc::new(chain));
        Ok(())
    }

    /// The id rules in force (pattern, request limit).
    pub fn ids(&self) -> IdRules {
        self.chain.load().ids.clone()
    }

    /// The batching parameters in force (`[coalescing]`), for callers that
    /// pace their own load, like the warm-up.
    pub fn batch_params(&self) -> coalesce::BatchParams {
        self.chain.load().batcher.params()
    }

    /// One id against the rules in force, without taking a copy of them
    /// (the single-profile route's hot path).
    pub fn check_id(&self, field: &str, id: &str) -> Result<(), IdError> {
        self.chain.load().ids.check(field, id)
    }

    /// An id taken from a request path: percent-decoded, then checked.
    pub fn check_path_id<'a>(&self, field: &str, raw: &'a str) -> Result<Cow<'a, str>, IdError> {
        self.chain.load().ids.check_path(field, raw)
    }

    /// One id. Answers fresh memory hits without awaiting anything.
    pub async fn get(self: &Arc<Self>, id: &str) -> Outcome {
        if let Some(hit) = self.memory_hit(id, now_ms()) {
            return Ok(hit);
        }
        let mut out = self.load(&[id.to_string()]).await;
        out.pop()
            .unwrap_or(Err(LoadError::Abandoned("lookup lost its result")))
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
            .map(|o| o.unwrap_or(Err(LoadError::Abandoned("lookup lost its result"))))
            .collect()
    }

    /// The memory tier's answer, if it can answer: fresh, or stale while
    /// the origin is being left alone after a failure.
    fn memory_hit(self: &Arc<Self>, id: &str, now: u64) -> Option<Loaded> {
        let chain = self.chain.load();
        let Some(entry) = chain.memory.get_at(id, now) else {
            self.counters.record(TierKind::Memory, false);
            return None;
        };
        if entry.is_fresh(now) {
            self.counters.record(TierKind::Memory, true);
            if eager_due(&entry, now, chain.eager_refresh) && !self.flights.contains(id) {
                self.refresh_in_background(id);
            }
            return Some(Loaded {
                entry,
                tier: TierKind::Memory,
                stale: false,
            });
        }
        if self.throttle.active(id, now) {
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
        self.load_in_background(id, Mode::Refresh);
    }

    /// Starts a load of `id` nobody waits on, unless one is in flight.
    pub(super) fn load_in_background(self: &Arc<Self>, id: &str, mode: Mode) {
        let joined = self.flights.join(&[id.to_string()]);
        if !joined.owned.is_empty() {
            self.tasks
                .spawn_load(self.clone().run_flights(joined.owned, mode));
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
                self.tasks
                    .spawn_load(self.clone().run_flights(joined.owned, Mode::Miss));
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
            .map(|r| r.unwrap_or(Err(LoadError::Superseded)))
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
            let end = ends
                .remove(&id)
                .unwrap_or(FlightEnd::Done(Err(LoadError::Abandoned(
                    "no result for id",
                ))));
            tx.send_replace(Some(end));
            self.flights.finish(&id, &tx);
        }
    }

    /// The read-through chain for ids nobody else is loading.
    async fn resolve(&self, ids: &[String], mode: Mode) -> HashMap<String, FlightEnd<Outcome>> {
        let chain = self.chain.load_full();
        // Tickets first: an invalidation known here from now on supersedes
        // this load. They go back when this function returns.
        let tickets: HashMap<&str, TicketGuard<'_>> = ids
            .iter()
            .map(|id| (id.as_str(), TicketGuard::new(&self.fence, id)))
            .collect();
        let now = now_ms();
        let memory_ttl = millis(chain.memory.ttl());
        let mut out = HashMap::with_capacity(ids.len());
        let mut fallback = Fallbacks::default();
        for id in ids {
            if let Some(e) = chain.memory.get(id) {
                if e.is_usable(now) {
                    fallback.offer(id, e, TierKind::Memory);
                }
            }
        }
        // Per shared tier, the version each id had there as this load
        // read it: the condition of every write to that tier.
        let mut versions: Versions = vec![HashMap::new(); chain.lower.len()];
        let mut pending: Vec<String> = ids.to_vec();
        for (depth, l) in chain.lower.iter().enumerate() {
            if pending.is_empty() {
                break;
            }
            let kind = l.tier.kind();
            let stored = match l.tier.get_many(&pending).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(tier = kind.as_str(), error = %e, "tier skipped");
                    continue;
                }
            };
            let mut hits = Vec::new();
            let mut still = Vec::new();
            for (id, s) in pending.into_iter().zip(stored) {
                if !s.reached {
                    // Its part of the tier is down: no version to write
                    // under, so this tier is left alone for this id.
                    still.push(id);
                    continue;
                }
                versions[depth].insert(id.clone(), s.version);
                match s.entry {
                    Some(e) if mode.accepts(&e, now, memory_ttl) => {
                        self.counters.record(kind, true);
                        hits.push((id, e));
                    }
                    Some(e) => {
                        self.counters.record(kind, false);
                        fallback.offer(&id, e, kind);
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
            let refused = write_shared(&chain.lower[..depth], &versions, &hits).await;
            for (id, e) in hits {
                let end = self.settle(&chain, &tickets[id.as_str()], &versions, e, kind, &refused);
                out.insert(id, end);
            }
        }

        if !pending.is_empty() {
            let loads = join_all(pending.iter().map(|id| chain.batcher.load(id))).await;
            let mut fresh = Vec::new();
            for (id, r) in pending.into_iter().zip(loads) {
                match r {
                    Ok((body, started)) => {
                        self.counters.record(TierKind::Origin, body.is_some());
                        let fresh_for = if body.is_some() {
                            ORIGIN_FRESH
                        } else {
                            chain.negative_ttl
                        };
                        let order = chain
                            .version_field
                            .as_deref()
                            .zip(body.as_deref())
                            .map_or(0, |(field, body)| origin_order(body, field));
                        let entry = Entry {
                            order,
                            ..Entry::from_origin(body, started, fresh_for)
                        };
                        fresh.push((id, entry));
                    }
                    Err(e) => {
                        let end = match fallback.take(&id) {
                            Some((entry, tier)) => {
                                self.fail_safe(&chain, &tickets[id.as_str()], entry, tier, now)
                            }
                            None => FlightEnd::Done(Err(e)),
                        };
                        out.insert(id, end);
                    }
                }
            }
            if !fresh.is_empty() {
                // Shared tiers first, each write conditional on the version
                // this load read there; memory last, under the fence. "Not
                // found" answers past the cap stay in memory only.
                let shared: Vec<(String, Entry)> = fresh
                    .iter()
                    .filter(|(_, e)| e.body.is_some() || chain.negatives.admit(now))
                    .cloned()
                    .collect();
                let refused = write_shared(&chain.lower, &versions, &shared).await;
                for (id, e) in fresh {
                    let end = self.settle(
                        &chain,
                        &tickets[id.as_str()],
                        &versions,
                        e,
                        TierKind::Origin,
                        &refused,
                    );
                    out.insert(id, end);
                }
            }
        }
        drop(tickets);
        out
    }

    /// How a loaded value ends its flight: superseded when a shared tier
    /// refused it for its version (an invalidation landed while it
    /// loaded); served but not kept when a tier holds a newer origin value;
    /// else published to memory under the fence.
    fn settle(
        &self,
        chain: &Chain,
        ticket: &TicketGuard<'_>,
        versions: &Versions,
        mut entry: Entry,
        tier: TierKind,
        refused: &Refused,
    ) -> FlightEnd<Outcome> {
        let id = ticket.ticket.id();
        if refused.superseded.contains(id) {
            return FlightEnd::Superseded;
        }
        if let Some(v) = versions.first().and_then(|m| m.get(id)) {
            entry.version = *v;
        }
        if refused.older.contains(id) {
            return FlightEnd::Done(Ok(Loaded {
                entry,
                tier,
                stale: false,
            }));
        }
        self.publish(chain, ticket, entry, tier)
    }

    /// Origin failed for `id`: serve what we have. A value still fresh (an
    /// eager refresh that failed) is served as a hit; a stale one as stale,
    /// and the origin is left alone for this id for the throttle time.
    fn fail_safe(
        &self,
        chain: &Chain,
        ticket: &TicketGuard<'_>,
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
        self.throttle
            .start(ticket.ticket.id(), now.saturating_add(chain.throttle_ms));
        if tier != TierKind::Memory {
            // Keep it near for the next requests; it stays stale. Not after
            // an invalidation, though.
            let _ = self.fence.publish(&ticket.ticket, || {
                chain.memory.put(ticket.ticket.id(), &entry)
            });
        }
        FlightEnd::Done(Ok(Loaded {
            entry,
            tier,
            stale: true,
        }))
    }

    /// Writes a loaded value to memory unless an invalidation superseded
    /// its load.
    fn publish(
        &self,
        chain: &Chain,
        ticket: &TicketGuard<'_>,
        entry: Entry,
        tier: TierKind,
    ) -> FlightEnd<Outcome> {
        let id = ticket.ticket.id();
        match self
            .fence
            .publish(&ticket.ticket, || chain.memory.put(id, &entry))
        {
            Admitted::Superseded => FlightEnd::Superseded,
            // Kept or not (memory may hold a newer origin value), the load
            // answers its waiters with what it got.
            Admitted::Yes(_) => {
                self.throttle.clear(id);
                FlightEnd::Done(Ok(Loaded {
                    entry,
                    tier,
                    stale: false,
                }))
            }
        }
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
            tx.send_replace(Some(FlightEnd::Done(Err(LoadError::Abandoned(
                "the load for this id stopped",
            )))));
            self.profiles.flights.finish(&id, &tx);
        }
    }
}

/// Per shared tier (chain order), the version each id had there when this
/// load read it.
type Versions = Vec<HashMap<String, u64>>;

/// Ids a shared tier refused to take from this load.
#[derive(Default)]
struct Refused {
    /// The id's version there moved on: the value is old.
    superseded: HashSet<String>,
    /// The tier holds a value of a higher origin order.
    older: HashSet<String>,
}

/// Writes entries to `tiers` (the first `tiers.len()` of the chain), each
/// under the version this load read in that tier; an id whose version is
/// not known there (the tier did not answer the read) is not written to it.
async fn write_shared(
    tiers: &[Lower],
    versions: &Versions,
    entries: &[(String, Entry)],
) -> Refused {
    let mut refused = Refused::default();
    if entries.is_empty() {
        return refused;
    }
    let batches: Vec<Vec<(String, Entry)>> = tiers
        .iter()
        .zip(versions)
        .map(|(_, known)| {
            entries
                .iter()
                .filter_map(|(id, e)| {
                    let version = *known.get(id)?;
                    Some((
                        id.clone(),
                        Entry {
                            version,
                            ..e.clone()
                        },
                    ))
                })
                .collect()
        })
        .collect();
    let writes = tiers
        .iter()
        .zip(&batches)
        .filter(|(_, b)| !b.is_empty())
        .map(|(l, b)| async move { (l, b, l.tier.put_many(b).await) });
    for (l, batch, r) in join_all(writes).await {
        match r {
            Ok(answers) => {
                for ((id, _), w) in batch.iter().zip(answers) {
                    match w {
                        Written::Superseded => {
                            refused.superseded.insert(id.clone());
                        }
                        Written::Older => {
                            refused.older.insert(id.clone());
                        }
                        Written::Yes | Written::Skipped => {}
                    }
                }
            }
            Err(e) => {
                tracing::debug!(tier = l.tier.kind().as_str(), error = %e, "tier write skipped");
            }
        }
    }
    refused
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
