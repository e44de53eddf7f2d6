//! The cap on remembered "not found" answers in the shared tiers. Unknown
//! ids cost an attacker nothing to invent; without a cap, 50 000 of them
//! leave 50 000 keys in Redis. Each instance may write at most
//! `profiles.max_negative_entries` negative entries per `negative_ttl`
//! window; beyond that they stay in its (bounded) memory tier only. With
//! negative entries living at most two `negative_ttl` in a shared tier,
//! an instance never keeps more than about twice the cap there.

use std::sync::atomic::{AtomicU64, Ordering};

pub struct NegativeBudget {
    cap: u64,
    window_ms: u64,
    /// Start of the current window (Unix ms) and what it has used.
    window_start: AtomicU64,
    used: AtomicU64,
}

impl NegativeBudget {
    pub fn new(cap: usize, window_ms: u64) -> NegativeBudget {
        NegativeBudget {
            cap: cap as u64,
            window_ms: window_ms.max(1),
            window_start: AtomicU64::new(0),
            used: AtomicU64::new(0),
        }
    }

    /// Whether one more negative entry may go to the shared tiers at `now`.
    pub fn admit(&self, now: u64) -> bool {
        let start = self.window_start.load(Ordering::Acquire);
        if now.saturating_sub(start) >= self.window_ms
            && self
                .window_start
                .compare_exchange(start, now, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            self.used.store(0, Ordering::Release);
        }
        self.used.fetch_add(1, Ordering::AcqRel) < self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_cap_per_window() {
        let b = NegativeBudget::new(3, 1_000);
        let admitted = (0..10).filter(|_| b.admit(5_000)).count();
        assert_eq!(admitted, 3);
        assert!(!b.admit(5_999), "same window");
        assert!(b.admit(6_000), "a new window");
    }
}
