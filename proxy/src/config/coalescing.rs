//! `[coalescing]`: how concurrent misses are folded into origin batch calls.

use serde::Deserialize;

use super::Problem;
use crate::units::Dur;

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CoalescingConfig {
    /// Most ids in one origin batch call.
    pub max_batch: usize,
    /// How long the first miss waits for company before its batch is sent.
    pub window: Dur,
    /// Batch calls in flight at once; further ids queue for the next batch.
    pub max_inflight_batches: usize,
    /// Upper bound on how long a batch stays open while misses keep
    /// arriving less than `window` apart.
    pub max_wait: Dur,
    /// Load misses with the Officer's batch route; when false, one single-id
    /// call per id (still one per id however many requests want it).
    pub batching: bool,
}

impl Default for CoalescingConfig {
    fn default() -> Self {
        CoalescingConfig {
            max_batch: 50,
            window: Dur::millis(1),
            max_inflight_batches: 8,
            max_wait: Dur::millis(10),
            batching: true,
        }
    }
}

impl CoalescingConfig {
    /// Problems under `coalescing.*`.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        if self.max_batch == 0 || self.max_batch > 1000 {
            out.push(Problem::new(
                "coalescing.max_batch",
                "must be between 1 and 1000",
            ));
        }
        if self.max_inflight_batches == 0 {
            out.push(Problem::new(
                "coalescing.max_inflight_batches",
                "must be at least 1",
            ));
        }
        let one_second = std::time::Duration::from_secs(1);
        if self.max_wait.get() < self.window.get() || self.max_wait.get() > one_second {
            out.push(Problem::new(
                "coalescing.max_wait",
                "must be at least coalescing.window and at most 1s",
            ));
        }
        if self.window.get() > one_second {
            out.push(Problem::new(
                "coalescing.window",
                "must be at most 1s: every cold lookup waits this long",
            ));
        }
        out
    }
}
