//! Profile lookups, the heart of the product, read top to bottom:
//! `get`/`get_many` answer fresh memory hits with no await and no lock;
//! misses join `Flights` (one load per id however many requests want it)
//! and the owner resolves them through the chain's shared tiers, in the
//! request itself and through each tier's gathered calls (one tick's misses
//! are one read, its fills one write), then, in a task, the origin through
//! the batcher, filling the tiers above on the way back.
//! Shared-tier writes are conditional on the id's version there as the load
//! read it, and memory writes go under the id's fence ticket, so a load that
//! an invalidation superseded (here or on another instance) writes its old
//! value to neither, and its waiters look the id up again.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;

use super::chain::Chain;
use super::dependents::Dependents;
use super::failsafe::{eager_due, Fallbacks, Throttle};
use super::fence::{Admitted, Fence, Ticket};
use super::ids::{IdError, IdRules};
use super::order::origin_order;
use super::stats::Counters;
use super::status::CacheStatus;
use crate::coalesce::{self, FlightEnd, FlightRx, FlightTx, Flights, Part};
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
        let mut out = self.load(&[id]).await;
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
            let want: Vec<&str> = missing.iter().map(|&i| ids[i].as_str()).collect();
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
        let Some(entry) = chain.memory.get(id) else {
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
        let (parts, _) = self.flights.join_each(std::iter::once(id));
        let owned: Vec<(usize, Arc<str>, FlightTx<Outcome>)> = parts
            .into_iter()
            .filter_map(|p| match p {
                Part::Owner(id, tx) => Some((0, id, tx)),
                Part::Waiter(_) => None,
            })
            .collect();
        if !owned.is_empty() {
            let load = Load::new(self, owned, mode, false);
            self.tasks.spawn_load(load.run());
        }
    }

    /// Loads ids below memory through the flights; starts over for ids
    /// whose load was superseded by an invalidation. The ids this request
    /// owns are read from the shared tiers right here (no task: a hit costs
    /// no spawn), together with every other load's ids of this tick; only
    /// ids that need the origin go on in a task of their own, so that call
    /// finishes for every waiter even if this request goes away.
    async fn load(self: &Arc<Self>, ids: &[&str]) -> Vec<Outcome> {
        let mut results: Vec<Option<Outcome>> = Vec::with_capacity(ids.len());
        results.resize_with(ids.len(), || None);
        let mut todo: Vec<usize> = (0..ids.len()).collect();
        for _ in 0..MAX_ATTEMPTS {
            let (parts, coalesced) = self.flights.join_each(todo.iter().map(|&i| ids[i]));
            self.metrics.coalesced.inc_by(coalesced as u64);
            let mut waits: Vec<(usize, FlightRx<Outcome>)> = Vec::new();
            let mut owned = Vec::new();
            for (&i, part) in todo.iter().zip(parts) {
                match part {
                    Part::Owner(id, tx) => owned.push((i, id, tx)),
                    Part::Waiter(rx) => waits.push((i, rx)),
                }
            }
            let mut again = Vec::new();
            if !owned.is_empty() {
                let mut load = Load::new(self, owned, Mode::Miss, true);
                load.read_shared().await;
                for item in &mut load.items {
                    match item.end.take() {
                        Some(FlightEnd::Done(r)) => results[item.pos] = Some(r),
                        Some(FlightEnd::Superseded) => again.push(item.pos),
                        None => {
                            if let Some(tx) = &item.tx {
                                waits.push((item.pos, tx.subscribe()));
                            }
                        }
                    }
                }
                if load.pending().next().is_some() {
                    load.handoff = false;
                    self.tasks.spawn_load(load.run_origin());
                }
            }
            for (i, rx) in waits {
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

    /// Origin failed for `id`: serve what we have. A value still fresh (an
    /// eager refresh that failed) is served as a hit; a stale one as stale,
    /// and the origin is left alone for this id for the throttle time.
    fn fail_safe(
        &self,
        chain: &Chain,
        ticket: &Ticket,
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
            .start(ticket.id(), now.saturating_add(chain.throttle_ms));
        if tier != TierKind::Memory {
            // Keep it near for the next requests; it stays stale. Not after
            // an invalidation, though.
            let _ = self
                .fence
                .publish(ticket, || chain.memory.put(ticket.id(), &entry));
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
        ticket: &Ticket,
        entry: Entry,
        tier: TierKind,
    ) -> FlightEnd<Outcome> {
        let id = ticket.id();
        match self.fence.publish(ticket, || chain.memory.put(id, &entry)) {
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

/// Entries for a shared tier, with the id each is for.
type Entries = Vec<(String, Entry)>;

/// One id a load owns: its flight, its fence ticket, and how it ended.
struct Item {
    /// Where the id is in the requesting caller's list.
    pos: usize,
    id: Arc<str>,
    /// The flight's sender while the flight is open.
    tx: Option<FlightTx<Outcome>>,
    /// Taken before the first tier is read, so an invalidation known here
    /// from then on supersedes this load; returned when the flight ends.
    ticket: Option<Ticket>,
    /// The end, kept for the request that runs the load.
    end: Option<FlightEnd<Outcome>>,
    /// What the shared tiers said to this load's write of the id.
    refused: Refusal,
}

/// Why a shared tier refused to take a value from a load.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Refusal {
    #[default]
    None,
    /// The tier holds a value of a higher origin order.
    Older,
    /// The id's version there moved on: the value is old.
    Superseded,
}

/// The read-through chain for ids nobody else is loading: the shared tiers
/// top first, then the origin through the batcher, filling the tiers above
/// on the way back. Dropped before every flight ended (the request running
/// it went away, or the task was stopped), it hands the open flights to a
/// load in the background (`handoff`) or fails them, so that no waiter
/// hangs.
struct Load {
    profiles: Arc<Profiles>,
    chain: Arc<Chain>,
    mode: Mode,
    now: u64,
    items: Vec<Item>,
    /// Per item, per shared tier (chain order): the version the id had
    /// there as this load read it, the condition of every write to that
    /// tier; `None` where the tier was not read or did not answer.
    versions: Vec<Option<u64>>,
    fallback: Fallbacks,
    handoff: bool,
}

impl Load {
    fn new(
        profiles: &Arc<Profiles>,
        owned: Vec<(usize, Arc<str>, FlightTx<Outcome>)>,
        mode: Mode,
        handoff: bool,
    ) -> Load {
        let chain = profiles.chain.load_full();
        let items: Vec<Item> = owned
            .into_iter()
            .map(|(pos, id, tx)| Item {
                ticket: Some(profiles.fence.begin_shared(&id)),
                pos,
                id,
                tx: Some(tx),
                end: None,
                refused: Refusal::None,
            })
            .collect();
        Load {
            versions: vec![None; items.len() * chain.lower.len()],
            profiles: profiles.clone(),
            chain,
            mode,
            now: now_ms(),
            items,
            fallback: Fallbacks::default(),
            handoff,
        }
    }

    /// The whole chain, in a task.
    async fn run(mut self) {
        self.read_shared().await;
        self.read_origin().await;
    }

    /// The origin part, in a task, after `read_shared` ran.
    async fn run_origin(mut self) {
        self.read_origin().await;
    }

    /// Items whose flights are still open.
    fn pending(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.items.len()).filter(|&i| self.items[i].tx.is_some())
    }

    fn version(&self, i: usize, depth: usize) -> Option<u64> {
        let n = self.chain.lower.len();
        if depth >= n {
            return None;
        }
        self.versions[i * n + depth]
    }

    /// Ends item `i`'s flight: its ticket goes back, the registry forgets
    /// the flight, and its waiters (if any) get `end`.
    fn end(&mut self, i: usize, end: FlightEnd<Outcome>) {
        let p = &self.profiles;
        let item = &mut self.items[i];
        let Some(tx) = item.tx.take() else {
            return;
        };
        if let Some(t) = item.ticket.take() {
            p.fence.finish(&t);
        }
        p.flights.finish(&item.id, &tx);
        if tx.receiver_count() > 0 {
            tx.send_replace(Some(end.clone()));
        }
        item.end = Some(end);
    }

    /// Reads the shared tiers, top first, for the items still open; ends
    /// those a tier answers, after filling the tiers above it and memory.
    async fn read_shared(&mut self) {
        let p = self.profiles.clone();
        let chain = self.chain.clone();
        let n = chain.lower.len();
        let now = self.now;
        let memory_ttl = millis(chain.memory.ttl());
        for (depth, l) in chain.lower.iter().enumerate() {
            let pending: Vec<usize> = self.pending().collect();
            if pending.is_empty() {
                break;
            }
            let kind = l.tier.kind();
            let ids: Vec<Arc<str>> = pending.iter().map(|&i| self.items[i].id.clone()).collect();
            let stored = match l.calls.get_many(ids).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(tier = kind.as_str(), error = %e, "tier skipped");
                    continue;
                }
            };
            let mut hits = Vec::new();
            for (&i, s) in pending.iter().zip(stored) {
                if !s.reached {
                    // Its part of the tier is down: no version to write
                    // under, so this tier is left alone for this id.
                    continue;
                }
                self.versions[i * n + depth] = Some(s.version);
                match s.entry {
                    Some(e) if self.mode.accepts(&e, now, memory_ttl) => {
                        p.counters.record(kind, true);
                        hits.push((i, e));
                    }
                    Some(e) => {
                        p.counters.record(kind, false);
                        self.fallback.offer(&self.items[i].id, e, kind);
                    }
                    None => p.counters.record(kind, false),
                }
            }
            if hits.is_empty() {
                continue;
            }
            // Fill the shared tiers above this one, then memory.
            self.write_shared(depth, &hits).await;
            for (i, e) in hits {
                let end = self.settle(i, e, kind);
                self.end(i, end);
            }
        }
    }

    /// Loads the items still open from the origin (through the batcher),
    /// fills every tier, or serves what the fail-safe has when it fails.
    async fn read_origin(&mut self) {
        let pending: Vec<usize> = self.pending().collect();
        if pending.is_empty() {
            return;
        }
        let p = self.profiles.clone();
        let chain = self.chain.clone();
        let now = self.now;
        // Memory's own copy, in case the origin fails; it wins a tie with
        // a shared tier's.
        for &i in &pending {
            let id = &self.items[i].id;
            if let Some(e) = chain.memory.get(id).filter(|e| e.is_usable(now)) {
                self.fallback.offer_preferred(id, e, TierKind::Memory);
            }
        }
        let loads = join_all(
            pending
                .iter()
                .map(|&i| chain.batcher.load(&self.items[i].id)),
        )
        .await;
        let mut fresh = Vec::new();
        for (&i, r) in pending.iter().zip(loads) {
            match r {
                Ok((body, started)) => {
                    p.counters.record(TierKind::Origin, body.is_some());
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
                    fresh.push((i, entry));
                }
                Err(e) => {
                    let end = match self.fallback.take(&self.items[i].id) {
                        Some((entry, tier)) => match &self.items[i].ticket {
                            Some(t) => p.fail_safe(&chain, t, entry, tier, now),
                            None => FlightEnd::Done(Err(e)),
                        },
                        None => FlightEnd::Done(Err(e)),
                    };
                    self.end(i, end);
                }
            }
        }
        if fresh.is_empty() {
            return;
        }
        // Shared tiers first, each write conditional on the version this
        // load read there; memory last, under the fence. "Not found"
        // answers past the cap stay in memory only.
        let shared: Vec<(usize, Entry)> = fresh
            .iter()
            .filter(|(_, e)| e.body.is_some() || chain.negatives.admit(now))
            .cloned()
            .collect();
        self.write_shared(chain.lower.len(), &shared).await;
        for (i, e) in fresh {
            let end = self.settle(i, e, TierKind::Origin);
            self.end(i, end);
        }
    }

    /// How a loaded value ends its flight: superseded when a shared tier
    /// refused it for its version (an invalidation landed while it
    /// loaded); served but not kept when a tier holds a newer origin value;
    /// else published to memory under the fence.
    fn settle(&self, i: usize, mut entry: Entry, tier: TierKind) -> FlightEnd<Outcome> {
        let item = &self.items[i];
        if item.refused == Refusal::Superseded {
            return FlightEnd::Superseded;
        }
        if let Some(v) = self.version(i, 0) {
            entry.version = v;
        }
        let Some(ticket) = item.ticket.as_ref() else {
            return FlightEnd::Superseded;
        };
        if item.refused == Refusal::Older {
            return FlightEnd::Done(Ok(Loaded {
                entry,
                tier,
                stale: false,
            }));
        }
        self.profiles.publish(&self.chain, ticket, entry, tier)
    }

    /// Writes entries to the first `upto` shared tiers, each under the
    /// version this load read in that tier; an id whose version is not
    /// known there (the tier did not answer the read) is not written to it.
    /// Notes on each item what the tiers refused.
    async fn write_shared(&mut self, upto: usize, entries: &[(usize, Entry)]) {
        if entries.is_empty() || upto == 0 {
            return;
        }
        let chain = self.chain.clone();
        // Per tier: the items written and their entries, in step.
        let batches: Vec<(Vec<usize>, Entries)> = (0..upto)
            .map(|d| {
                entries
                    .iter()
                    .filter_map(|(i, e)| {
                        let version = self.version(*i, d)?;
                        Some((
                            *i,
                            (
                                self.items[*i].id.to_string(),
                                Entry {
                                    version,
                                    ..e.clone()
                                },
                            ),
                        ))
                    })
                    .unzip()
            })
            .collect();
        let writes = chain.lower[..upto]
            .iter()
            .zip(batches)
            .filter(|(_, (_, b))| !b.is_empty())
            .map(|(l, (items, b))| async move { (l, items, l.calls.put_many(b).await) });
        for (l, items, r) in join_all(writes).await {
            match r {
                Ok(answers) => {
                    for (&i, w) in items.iter().zip(answers) {
                        let refused = &mut self.items[i].refused;
                        match w {
                            Written::Superseded => *refused = Refusal::Superseded,
                            Written::Older if *refused != Refusal::Superseded => {
                                *refused = Refusal::Older;
                            }
                            _ => {}
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(tier = l.tier.kind().as_str(), error = %e, "tier write skipped");
                }
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        let open = self.pending().next().is_some();
        if self.handoff && open && tokio::runtime::Handle::try_current().is_ok() {
            // The request went away mid-read: its flights are finished by
            // a load of their own, from the top, for whoever waits on them.
            let (rest, done): (Vec<Item>, Vec<Item>) = std::mem::take(&mut self.items)
                .into_iter()
                .partition(|it| it.tx.is_some());
            self.items = done;
            let n = self.chain.lower.len();
            let load = Load {
                profiles: self.profiles.clone(),
                chain: self.chain.clone(),
                mode: self.mode,
                now: now_ms(),
                versions: vec![None; rest.len() * n],
                items: rest,
                fallback: Fallbacks::default(),
                handoff: false,
            };
            self.profiles.tasks.spawn_load(load.run());
        }
        let p = &self.profiles;
        for item in self.items.drain(..) {
            if let Some(t) = item.ticket {
                p.fence.finish(&t);
            }
            if let Some(tx) = item.tx {
                tx.send_replace(Some(FlightEnd::Done(Err(LoadError::Abandoned(
                    "the load for this id stopped",
                )))));
                p.flights.finish(&item.id, &tx);
            }
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
