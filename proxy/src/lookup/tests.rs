//! Lookups against a fake shared tier and a fake origin: coalescing,
//! fencing and the fail-safe as counts and orderings. The origin holds each
//! call at a gate the test opens, so every interleaving is chosen, not
//! raced.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Semaphore;

use super::Profiles;
use crate::config::Config;
use crate::lifecycle::Tasks;
use crate::metrics::Metrics;
use crate::origin::{LoadError, OriginCalls, OriginSource, OriginTarget};
use crate::tier::codec::Record;
use crate::tier::{now_ms, Entry, Stored, Tier, TierError, TierKind, Written};

/// A shared tier in a map, counting reads per id, with the conditional
/// writes of the `Tier` contract (what the Redis tier's scripts do).
#[derive(Default)]
struct FakeTier {
    map: Mutex<HashMap<String, Record>>,
    reads: Mutex<HashMap<String, usize>>,
    calls: Mutex<usize>,
}

impl FakeTier {
    fn body(&self, id: &str) -> Option<Bytes> {
        match self.map.lock().expect("lock").get(id) {
            Some(Record::Value(e)) => e.body.clone(),
            _ => None,
        }
    }
    /// `get_many` calls so far.
    fn calls(&self) -> usize {
        *self.calls.lock().expect("lock")
    }
    fn reads(&self, id: &str) -> usize {
        self.reads
            .lock()
            .expect("lock")
            .get(id)
            .copied()
            .unwrap_or(0)
    }
}

fn version_of(r: Option<&Record>) -> u64 {
    match r {
        Some(Record::Value(e)) => e.version,
        Some(Record::Tombstone { version }) => *version,
        None => 0,
    }
}

#[async_trait::async_trait]
impl Tier for FakeTier {
    fn kind(&self) -> TierKind {
        TierKind::Redis
    }
    async fn get_many(&self, ids: &[String]) -> Result<Vec<Stored>, TierError> {
        *self.calls.lock().expect("lock") += 1;
        let map = self.map.lock().expect("lock");
        let mut reads = self.reads.lock().expect("lock");
        Ok(ids
            .iter()
            .map(|id| {
                *reads.entry(id.clone()).or_default() += 1;
                let r = map.get(id);
                Stored::reached(
                    match r {
                        Some(Record::Value(e)) => Some(e.clone()),
                        _ => None,
                    },
                    version_of(r),
                )
            })
            .collect())
    }
    async fn put_many(&self, entries: &[(String, Entry)]) -> Result<Vec<Written>, TierError> {
        let mut map = self.map.lock().expect("lock");
        Ok(entries
            .iter()
            .map(|(id, e)| {
                let held = map.get(id);
                if version_of(held) != e.version {
                    return Written::Superseded;
                }
                if e.order != 0 && matches!(held, Some(Record::Value(h)) if h.order > e.order) {
                    return Written::Older;
                }
                map.insert(id.clone(), Record::Value(e.clone()));
                Written::Yes
            })
            .collect())
    }
    async fn remove(&self, ids: &[String]) -> Result<Vec<u64>, TierError> {
        let mut map = self.map.lock().expect("lock");
        Ok(ids
            .iter()
            .map(|id| {
                let version = version_of(map.get(id)) + 1;
                map.insert(id.clone(), Record::Tombstone { version });
                version
            })
            .collect())
    }
    async fn remove_all(&self) -> Result<u64, TierError> {
        let ids: Vec<String> = self.map.lock().expect("lock").keys().cloned().collect();
        Ok(self.remove(&ids).await?.len() as u64)
    }
}

/// The Officer as a version counter per id: a profile is
/// `{"id":..,"v":N}` with N taken when the call arrives. Calls wait at the
/// gate; `failing` makes every call fail.
struct FakeOrigin {
    versions: Mutex<HashMap<String, u64>>,
    calls: Mutex<Vec<Vec<String>>>,
    arrived: Semaphore,
    gate: Semaphore,
    failing: Mutex<bool>,
}

impl FakeOrigin {
    fn new(open: bool) -> Arc<FakeOrigin> {
        Arc::new(FakeOrigin {
            versions: Mutex::default(),
            calls: Mutex::default(),
            arrived: Semaphore::new(0),
            gate: Semaphore::new(if open { Semaphore::MAX_PERMITS } else { 0 }),
            failing: Mutex::new(false),
        })
    }
    fn bump(&self, id: &str) {
        *self
            .versions
            .lock()
            .expect("lock")
            .entry(id.to_string())
            .or_insert(1) += 1;
    }
    fn set(&self, id: &str, v: u64) {
        self.versions
            .lock()
            .expect("lock")
            .insert(id.to_string(), v);
    }
    fn calls(&self) -> usize {
        self.calls.lock().expect("lock").len()
    }
    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }
}

fn profile(id: &str, v: u64) -> Bytes {
    Bytes::from(format!("{{\"id\":\"{id}\",\"v\":{v}}}"))
}

#[async_trait::async_trait]
impl OriginSource for FakeOrigin {
    async fn fetch_batch(&self, ids: &[String]) -> Result<HashMap<String, Bytes>, LoadError> {
        self.calls.lock().expect("lock").push(ids.to_vec());
        let snapshot: HashMap<String, Bytes> = {
            let v = self.versions.lock().expect("lock");
            ids.iter()
                .map(|id| (id.clone(), profile(id, v.get(id).copied().unwrap_or(1))))
                .collect()
        };
        self.arrived.add_permits(1);
        self.gate.acquire().await.expect("gate").forget();
        if *self.failing.lock().expect("lock") {
            return Err(LoadError::Status {
                call: "batch",
                status: 503,
            });
        }
        Ok(snapshot)
    }
    async fn fetch_one(&self, id: &str) -> Result<Option<Bytes>, LoadError> {
        let mut m = self.fetch_batch(&[id.to_string()]).await?;
        Ok(m.remove(id))
    }
    fn calls(&self) -> OriginCalls {
        OriginCalls::default()
    }
    fn retarget(&self, _: OriginTarget) {}
}

struct Setup {
    cfg: Config,
    profiles: Arc<Profiles>,
    origin: Arc<FakeOrigin>,
    tier: Arc<FakeTier>,
    metrics: Arc<Metrics>,
    tasks: Tasks,
}

fn setup(open: bool) -> Setup {
    let mut cfg = Config::default();
    cfg.profiles.id_pattern = "^[a-z0-9]+$".into();
    setup_with(cfg, open)
}

fn setup_with(cfg: Config, open: bool) -> Setup {
    let origin = FakeOrigin::new(open);
    let metrics = Arc::new(Metrics::new());
    let tasks = Tasks::new();
    let profiles = Profiles::with_origin(&cfg, origin.clone(), metrics.clone(), tasks.clone())
        .expect("profiles");
    let tier = Arc::new(FakeTier::default());
    let chain = profiles
        .chain
        .load()
        .with_lower("tiers.fake", tier.clone(), &tasks);
    profiles.chain.store(Arc::new(chain));
    Setup {
        cfg,
        profiles,
        origin,
        tier,
        metrics,
        tasks,
    }
}

fn version(body: &Option<Bytes>) -> u64 {
    let v: serde_json::Value =
        serde_json::from_slice(body.as_deref().expect("a profile")).expect("json");
    v["v"].as_u64().expect("v")
}

#[tokio::test(start_paused = true)]
async fn concurrent_misses_for_one_id_make_one_origin_call() {
    let s = setup(false);
    let mut waiters = Vec::new();
    for _ in 0..200 {
        let p = s.profiles.clone();
        waiters.push(tokio::spawn(async move { p.get("u1").await }));
    }
    // Let every request reach the flight before the origin answers.
    let _arrived = s.origin.arrived.acquire().await.expect("arrived");
    while s.metrics.coalesced.get() < 199 {
        tokio::task::yield_now().await;
    }
    s.origin.open();
    for w in waiters {
        let loaded = w.await.expect("task").expect("loaded");
        assert_eq!(version(&loaded.entry.body), 1);
    }
    assert_eq!(s.origin.calls(), 1);
    assert_eq!(s.metrics.coalesced.get(), 199);
    // Filled on the way back: memory and the shared tier.
    assert_eq!(
        s.profiles.get("u1").await.expect("hit").tier,
        TierKind::Memory
    );
    assert!(s.tier.body("u1").is_some());
    s.tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn an_invalidation_during_a_load_wins_in_every_tier() {
    let s = setup(false);
    let p = s.profiles.clone();
    let early = tokio::spawn(async move { p.get("u1").await });
    // The load of version 1 is at the origin...
    s.origin.arrived.acquire().await.expect("arrived").forget();
    // ...when the profile changes and the invalidation lands.
    s.origin.bump("u1");
    s.profiles.invalidate("u1", "admin").await;
    s.origin.open();
    let loaded = early.await.expect("task").expect("loaded");
    assert_eq!(
        version(&loaded.entry.body),
        2,
        "the waiter got the new value"
    );
    assert_eq!(s.origin.calls(), 2, "the superseded load was redone once");
    assert_eq!(
        version(&s.tier.body("u1")),
        2,
        "no old value in the shared tier"
    );
    let again = s.profiles.get("u1").await.expect("hit");
    assert_eq!(again.tier, TierKind::Memory);
    assert_eq!(version(&again.entry.body), 2, "no old value in memory");
    assert_eq!(s.profiles.fence.tracked(), 0, "every ticket returned");
    s.tasks.shutdown(Duration::from_secs(1)).await;
}

/// Two instances over one shared tier: a load on B that started before an
/// invalidation on A cannot write its old value back to the shared tier,
/// whatever B knows (no backplane here): the tier refuses the write for
/// its version, and B loads again.
#[tokio::test(start_paused = true)]
async fn a_load_on_another_instance_cannot_write_back_after_an_invalidation() {
    let a = setup(false);
    let b = Profiles::with_origin(
        &a.cfg,
        a.origin.clone(),
        Arc::new(Metrics::new()),
        a.tasks.clone(),
    )
    .expect("profiles");
    let chain = b
        .chain
        .load()
        .with_lower("tiers.fake", a.tier.clone(), &a.tasks);
    b.chain.store(Arc::new(chain));

    let pb = b.clone();
    let old = tokio::spawn(async move { pb.get("u1").await });
    // B's load has read the tier (version 0) and is at the origin...
    a.origin.arrived.acquire().await.expect("arrived").forget();
    assert_eq!(a.tier.reads("u1"), 1);
    // ...when the profile changes and A invalidates it.
    a.origin.bump("u1");
    assert_eq!(
        a.profiles.invalidate("u1", "admin").await,
        1,
        "the tombstone's version"
    );
    a.origin.open();
    let loaded = old.await.expect("task").expect("ok");
    assert_eq!(
        version(&loaded.entry.body),
        2,
        "B's waiter got the new value"
    );
    assert_eq!(
        loaded.entry.version, 1,
        "loaded under the tombstone's version"
    );
    assert_eq!(a.origin.calls(), 2, "B's refused load was redone once");
    assert_eq!(
        version(&a.tier.body("u1")),
        2,
        "no old value in the shared tier"
    );
    let again = b.get("u1").await.expect("hit");
    assert_eq!(
        (again.tier, version(&again.entry.body)),
        (TierKind::Memory, 2)
    );
    a.tasks.shutdown(Duration::from_secs(1)).await;
}

/// A refresh message names the version the other instance wrote: `warm`
/// takes a shared-tier value only if it was written under it.
#[tokio::test(start_paused = true)]
async fn warm_takes_only_a_value_written_under_the_refresh_version() {
    let s = setup(true);
    s.profiles.get("u1").await.expect("v1 everywhere");
    s.origin.bump("u1");
    let v = s.profiles.invalidate("u1", "event").await;
    s.profiles
        .get("u1")
        .await
        .expect("v2 written under the tombstone's version");
    assert_eq!(s.origin.calls(), 2);
    s.profiles.forget("u1");
    s.profiles.warm("u1", v);
    wait_for_memory(&s.profiles, "u1").await;
    assert_eq!(s.origin.calls(), 2, "warmed from the shared tier");
    // With a version the tier has not seen, the origin is asked.
    s.profiles.forget("u1");
    s.profiles.warm("u1", v + 1);
    wait_for_memory(&s.profiles, "u1").await;
    assert_eq!(s.origin.calls(), 3);
    s.tasks.shutdown(Duration::from_secs(1)).await;
}

/// A newer origin value (by `profiles.version_field`) is never replaced by
/// an older one, in memory or the shared tier.
#[tokio::test(start_paused = true)]
async fn an_older_origin_value_never_replaces_a_newer_one() {
    let mut cfg = Config::default();
    cfg.profiles.id_pattern = "^[a-z0-9]+$".into();
    cfg.profiles.version_field = Some("v".into());
    let s = setup_with(cfg, true);
    s.origin.bump("u1");
    s.origin.bump("u1");
    s.profiles.get("u1").await.expect("v3 cached");
    assert_eq!(version(&s.tier.body("u1")), 3);
    // The origin goes back in time (a lagging replica) and an eager
    // refresh-like reload runs: neither tier takes the older value.
    s.origin.set("u1", 2);
    s.profiles.forget("u1");
    s.profiles.warm("u1", 0);
    while s.origin.calls() < 2 || !s.profiles.flights.is_empty() {
        // Paused clock: the sleep lets the batcher's window pass.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(version(&s.tier.body("u1")), 3, "the shared tier kept v3");
    assert!(
        s.profiles.chain.load().memory.get("u1").is_none(),
        "memory did not take v2"
    );
    s.tasks.shutdown(Duration::from_secs(1)).await;
}

async fn wait_for_memory(p: &Profiles, id: &str) {
    while p.chain.load().memory.get(id).is_none() {
        // Paused clock: the sleep lets the batcher's window pass.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

#[tokio::test(start_paused = true)]
async fn a_failing_origin_serves_the_stale_copy_and_is_left_alone() {
    let s = setup(true);
    *s.origin.failing.lock().expect("lock") = true;
    let now = now_ms();
    // A copy past its freshness but inside max_stale, in the shared tier.
    let stale = Entry {
        body: Some(profile("u1", 1)),
        fetched_at: now - 120_000,
        fresh_until: now - 60_000,
        stale_until: now + 3_600_000,
        version: 0,
        order: 0,
    };
    s.tier
        .put_many(&[("u1".to_string(), stale)])
        .await
        .expect("put");
    let first = s.profiles.get("u1").await.expect("served stale");
    assert!(first.stale);
    assert_eq!(first.tier, TierKind::Redis);
    assert_eq!(s.origin.calls(), 1, "one refresh attempt");
    // Throttled: the next requests get the stale copy from memory without
    // asking the origin.
    for _ in 0..5 {
        let again = s.profiles.get("u1").await.expect("served stale");
        assert!(again.stale);
        assert_eq!(again.tier, TierKind::Memory);
    }
    assert_eq!(s.origin.calls(), 1);
    // Nothing to fall back on: the origin's error comes through.
    assert!(matches!(
        s.profiles.get("u2").await,
        Err(LoadError::Status { status: 503, .. })
    ));
    s.tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn get_many_answers_in_order_with_one_batch_for_the_misses() {
    let s = setup(true);
    s.profiles.get("u2").await.expect("warm");
    let ids: Vec<String> = ["u1", "u2", "u3"].iter().map(|s| s.to_string()).collect();
    let out = s.profiles.get_many(&ids).await;
    let tiers: Vec<TierKind> = out.iter().map(|r| r.as_ref().expect("ok").tier).collect();
    assert_eq!(
        tiers,
        [TierKind::Origin, TierKind::Memory, TierKind::Origin]
    );
    assert_eq!(s.origin.calls(), 2, "one call to warm, one batch for u1+u3");
    assert_eq!(
        s.origin.calls.lock().expect("lock")[1].len(),
        2,
        "the misses went out together"
    );
    s.tasks.shutdown(Duration::from_secs(1)).await;
}

/// A fresh value in the fake shared tier.
async fn in_tier(s: &Setup, id: &str) {
    let e = Entry::from_origin(Some(profile(id, 1)), now_ms(), Duration::from_secs(3600));
    s.tier.put_many(&[(id.to_string(), e)]).await.expect("put");
}

#[tokio::test(start_paused = true)]
async fn shared_tier_hits_of_one_tick_are_one_read_and_one_per_id() {
    // The origin's gate stays shut: a load that reached it would hang.
    let s = setup(false);
    for id in ["a1", "a2", "a3"] {
        in_tier(&s, id).await;
    }
    let mut joins = Vec::new();
    for id in ["a1", "a2", "a3", "a1", "a1"] {
        let p = s.profiles.clone();
        joins.push(tokio::spawn(async move { p.get(id).await }));
    }
    for j in joins {
        let loaded = j.await.expect("task").expect("hit");
        assert_eq!(loaded.tier, TierKind::Redis);
    }
    assert_eq!(s.tier.calls(), 1, "one read for the tick");
    assert_eq!(
        s.tier.reads("a1"),
        1,
        "concurrent misses of one id share it"
    );
    assert_eq!(s.metrics.coalesced.get(), 2);
    assert_eq!(s.origin.calls(), 0);
    assert_eq!(s.profiles.fence.tracked(), 0, "every ticket returned");
    assert!(s.profiles.flights.is_empty());
    let again = s.profiles.get("a2").await.expect("hit");
    assert_eq!(again.tier, TierKind::Memory, "filled on the way back");
    s.tasks.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(start_paused = true)]
async fn a_request_that_goes_away_mid_read_leaves_its_waiters_answered() {
    let s = setup(false);
    in_tier(&s, "u1").await;
    let p = s.profiles.clone();
    let mut owner = Box::pin(async move { p.get("u1").await });
    // Polled once: it owns the flight and waits on the tier's reader.
    assert!(tokio::time::timeout(Duration::ZERO, &mut owner)
        .await
        .is_err());
    let p = s.profiles.clone();
    let waiter = tokio::spawn(async move { p.get("u1").await });
    while s.metrics.coalesced.get() < 1 {
        tokio::task::yield_now().await;
    }
    drop(owner);
    let loaded = waiter.await.expect("task").expect("answered");
    assert_eq!(loaded.tier, TierKind::Redis);
    assert_eq!(s.origin.calls(), 0);
    assert!(s.profiles.flights.is_empty());
    assert_eq!(s.profiles.fence.tracked(), 0, "every ticket returned");
    s.tasks.shutdown(Duration::from_secs(1)).await;
}
