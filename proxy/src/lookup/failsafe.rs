//! Fail-safe and eager refresh, the two ways a lookup outlives an entry's
//! freshness:
//!
//! - Fail-safe: entries outlive their TTL by `fail_safe.max_stale`; when the
//!   origin fails, the best usable copy is served (stale) and the id is left
//!   alone for `fail_safe.throttle` before the origin is tried again.
//! - Eager refresh: a hit on an entry past `eager_refresh` of its fresh life
//!   reloads it in the background, so hot entries never expire under load.

use std::collections::HashMap;
use std::time::Duration;

use crate::tier::{Entry, TierKind};

/// Ids whose origin load failed recently, with when to try again.
pub struct Throttle {
    until: moka::sync::Cache<String, u64>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            until: moka::sync::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
        }
    }
}

impl Throttle {
    /// Whether the origin is being left alone for `id` at `now`.
    pub fn active(&self, id: &str, now: u64) -> bool {
        self.until.get(id).is_some_and(|until| until > now)
    }

    pub fn start(&self, id: &str, until: u64) {
        self.until.insert(id.to_string(), until);
    }

    pub fn clear(&self, id: &str) {
        self.until.invalidate(id);
    }

    pub fn clear_all(&self) {
        self.until.invalidate_all();
    }
}

/// The best usable copies seen while resolving ids, kept in case the
/// origin fails: the one that stays usable longest wins.
#[derive(Default)]
pub struct Fallbacks {
    best: HashMap<String, (Entry, TierKind)>,
}

impl Fallbacks {
    pub fn offer(&mut self, id: &str, entry: Entry, tier: TierKind) {
        let better = self
            .best
            .get(id)
            .is_none_or(|(f, _)| entry.stale_until > f.stale_until);
        if better {
            self.best.insert(id.to_string(), (entry, tier));
        }
    }

    /// `offer`, winning ties with the copies offered before.
    pub fn offer_preferred(&mut self, id: &str, entry: Entry, tier: TierKind) {
        let better = self
            .best
            .get(id)
            .is_none_or(|(f, _)| entry.stale_until >= f.stale_until);
        if better {
            self.best.insert(id.to_string(), (entry, tier));
        }
    }

    pub fn take(&mut self, id: &str) -> Option<(Entry, TierKind)> {
        self.best.remove(id)
    }
}

/// Whether a fresh entry is far enough into its fresh life (measured from
/// when the origin produced it) to be refreshed ahead of expiry. Relative to
/// each entry, so short-lived entries (404s) are not refreshed on every hit.
pub fn eager_due(entry: &Entry, now: u64, share: f64) -> bool {
    if share >= 1.0 {
        return false;
    }
    let life = entry.fresh_until.saturating_sub(entry.fetched_at) as f64;
    let left = entry.fresh_until.saturating_sub(now) as f64;
    left < life * (1.0 - share)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(fetched_at: u64, fresh_until: u64, stale_until: u64) -> Entry {
        Entry {
            body: None,
            fetched_at,
            fresh_until,
            stale_until,
            version: 0,
            order: 0,
        }
    }

    #[test]
    fn eager_refresh_is_relative_to_each_entry() {
        // 30 s negative entry, 10 s in: not due at 0.8.
        assert!(!eager_due(&e(0, 30_000, 30_000), 10_000, 0.8));
        assert!(eager_due(&e(0, 30_000, 30_000), 25_000, 0.8));
        // 5 min entry: due in its last minute.
        assert!(!eager_due(&e(0, 300_000, 300_000), 230_000, 0.8));
        assert!(eager_due(&e(0, 300_000, 300_000), 250_000, 0.8));
        assert!(
            !eager_due(&e(0, 300_000, 300_000), 299_999, 1.0),
            "1.0 turns it off"
        );
    }

    #[test]
    fn the_copy_usable_longest_is_kept() {
        let mut f = Fallbacks::default();
        f.offer("a", e(0, 10, 100), TierKind::Memory);
        f.offer("a", e(0, 10, 50), TierKind::Redis);
        f.offer("a", e(0, 10, 200), TierKind::Redis);
        let (best, tier) = f.take("a").expect("kept");
        assert_eq!((best.stale_until, tier), (200, TierKind::Redis));
        assert!(f.take("a").is_none());
    }

    #[test]
    fn throttles_expire_at_their_time() {
        let t = Throttle::default();
        t.start("a", 1_000);
        assert!(t.active("a", 999));
        assert!(!t.active("a", 1_000));
        assert!(!t.active("b", 0));
        t.clear("a");
        assert!(!t.active("a", 0));
    }
}
