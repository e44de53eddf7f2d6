//! A circuit breaker for remote tiers: after `threshold` consecutive
//! failures the tier is skipped for `cooldown`, then one trial call decides
//! whether it is used again. A dead Redis then costs requests nothing
//! instead of a timeout each.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: AtomicU32,
    /// Milliseconds since `epoch` when the breaker may next let a trial
    /// through; 0 while closed.
    open_until: AtomicU64,
    epoch: Instant,
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Breaker {
        Breaker {
            threshold: threshold.max(1),
            cooldown_ms: super::millis(cooldown).max(1),
            failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }

    fn now(&self) -> u64 {
        super::millis(self.epoch.elapsed()) + 1
    }

    /// Whether a call may go ahead. While open, exactly one caller per
    /// cooldown gets through as the trial.
    pub fn allow(&self) -> bool {
        let until = self.open_until.load(Ordering::Acquire);
        if until == 0 {
            return true;
        }
        let now = self.now();
        if now < until {
            return false;
        }
        // Push the window out again; whoever wins the swap makes the trial.
        self.open_until
            .compare_exchange(
                until,
                now + self.cooldown_ms,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    pub fn success(&self) {
        self.failures.store(0, Ordering::Release);
        if self.open_until.swap(0, Ordering::AcqRel) != 0 {
            tracing::info!("tier recovered; circuit breaker closed");
        }
    }

    /// Counts a failed call. `cause` goes into the log when the breaker
    /// opens and when a trial fails (once per cooldown), so that "open"
    /// always comes with why: a wrong password reads differently from a
    /// dead host.
    pub fn failure(&self, cause: &dyn std::fmt::Display) {
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        if n >= self.threshold {
            let was = self
                .open_until
                .swap(self.now() + self.cooldown_ms, Ordering::AcqRel);
            if was == 0 {
                tracing::warn!(
                    failures = n,
                    cooldown_ms = self.cooldown_ms,
                    %cause,
                    "tier failing; circuit breaker open"
                );
            } else if n > self.threshold {
                tracing::warn!(%cause, cooldown_ms = self.cooldown_ms, "tier still failing; circuit breaker stays open");
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_and_lets_one_trial_through_after_cooldown() {
        let b = Breaker::new(2, Duration::from_millis(30));
        assert!(b.allow());
        b.failure(&"boom");
        assert!(b.allow(), "one failure is under the threshold");
        b.failure(&"boom");
        assert!(!b.allow(), "open after two");
        std::thread::sleep(Duration::from_millis(40));
        assert!(b.allow(), "trial after cooldown");
        assert!(!b.allow(), "only one trial");
        b.success();
        assert!(b.allow() && b.allow(), "closed again");
    }
}
