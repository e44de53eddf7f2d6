//! The in-process tier: a moka cache bounded by entry count. Entries expire
//! from memory when their stale window ends; whether one is served as fresh
//! is decided by its `fresh_until`, which gets a random jitter so that a
//! warm-up does not expire all at once.

use std::time::{Duration, Instant};

use moka::sync::Cache;
use rand::Rng;

use super::{now_ms, Entry};

pub struct MemoryTier {
    cache: Cache<String, Entry>,
    ttl: Duration,
    jitter: f64,
    max_stale: Duration,
}

/// Evicts an entry when its stale window ends.
struct UntilStale;

impl moka::Expiry<String, Entry> for UntilStale {
    fn expire_after_create(&self, _k: &String, v: &Entry, _at: Instant) -> Option<Duration> {
        Some(Duration::from_millis(
            v.stale_until.saturating_sub(now_ms()),
        ))
    }

    fn expire_after_update(
        &self,
        _k: &String,
        v: &Entry,
        _at: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(Duration::from_millis(
            v.stale_until.saturating_sub(now_ms()),
        ))
    }
}

impl MemoryTier {
    pub fn new(capacity: u64, ttl: Duration, jitter: f64, max_stale: Duration) -> MemoryTier {
        MemoryTier {
            cache: Cache::builder()
                .max_capacity(capacity)
                .expire_after(UntilStale)
                .build(),
            ttl,
            jitter: jitter.clamp(0.0, 0.5),
            max_stale,
        }
    }

    /// The hot path: one hash lookup, no await.
    pub fn get(&self, id: &str) -> Option<Entry> {
        self.cache.get(id)
    }

    /// Stores an entry from another tier or the origin, restamped with this
    /// tier's jittered TTL, unless memory holds a value of a higher origin
    /// order (false then). Callers hold the id's fence stripe, so the check
    /// and the insert are not raced by another write of the same id.
    pub fn put(&self, id: &str, entry: &Entry) -> bool {
        if entry.order != 0
            && self
                .cache
                .get(id)
                .is_some_and(|held| held.order > entry.order)
        {
            return false;
        }
        let now = now_ms();
        self.cache.insert(
            id.to_string(),
            entry.restamped(now, self.jittered_ttl(), self.max_stale),
        );
        true
    }

    /// Stores an entry with its timestamps as they are (fail-safe throttle).
    pub fn put_exact(&self, id: &str, entry: Entry) {
        self.cache.insert(id.to_string(), entry);
    }

    /// Removes `id`; answers what was held.
    pub fn remove(&self, id: &str) -> Option<Entry> {
        self.cache.remove(id)
    }

    /// Drops every entry (the backplane lost track of invalidations).
    pub fn clear(&self) {
        self.cache.invalidate_all();
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn entry_count(&self) -> u64 {
        self.cache.run_pending_tasks();
        self.cache.entry_count()
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

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn jitter_only_shortens_and_spreads_expiry() {
        let m = MemoryTier::new(100, Duration::from_secs(100), 0.2, Duration::ZERO);
        let src = Entry::from_origin(
            Some(Bytes::from_static(b"{}")),
            now_ms(),
            Duration::from_secs(3600),
        );
        let mut seen = std::collections::HashSet::new();
        for i in 0..50 {
            let id = format!("{i}");
            m.put(&id, &src);
            let e = m.get(&id).expect("stored");
            let left = e.fresh_until.saturating_sub(now_ms());
            assert!((79_000..=100_000).contains(&left), "{left}");
            seen.insert(e.fresh_until / 1000);
        }
        assert!(seen.len() > 5, "expiries are not spread: {seen:?}");
    }

    #[test]
    fn a_lower_origin_order_never_replaces_a_higher_one() {
        let m = MemoryTier::new(100, Duration::from_secs(100), 0.0, Duration::ZERO);
        let at = |order, body: &'static [u8]| Entry {
            order,
            ..Entry::from_origin(
                Some(Bytes::from_static(body)),
                now_ms(),
                Duration::from_secs(60),
            )
        };
        assert!(m.put("a", &at(5, b"v5")));
        assert!(!m.put("a", &at(4, b"v4")), "older value refused");
        assert!(
            m.put("a", &at(5, b"v5 again")),
            "the same order may rewrite"
        );
        assert!(
            m.put("a", &at(0, b"unordered")),
            "no order: written as before"
        );
        assert_eq!(
            m.get("a").and_then(|e| e.body).as_deref(),
            Some(&b"unordered"[..])
        );
        assert!(m.remove("a").is_some());
        assert!(m.put("a", &at(1, b"v1")), "after removal anything goes");
    }

    #[test]
    fn capacity_bounds_entries() {
        let m = MemoryTier::new(10, Duration::from_secs(100), 0.0, Duration::ZERO);
        let src = Entry::from_origin(None, now_ms(), Duration::from_secs(60));
        for i in 0..100 {
            m.put(&format!("{i}"), &src);
        }
        assert!(m.entry_count() <= 10, "{}", m.entry_count());
    }
}
