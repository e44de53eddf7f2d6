//! What every remote tier puts around its calls: the circuit breaker, a
//! per-call timeout, and the mapping of failures to `TierError`; and the
//! removals it could not make, remembered and retried (`Pending`), during
//! which those ids read as misses and are not written.

use std::collections::HashSet;
use std::fmt::Display;
use std::future::Future;
use std::sync::{Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::breaker::Breaker;
use super::TierError;
use crate::lifecycle::Drain;

/// Most ids remembered for a retried removal; past it the oldest intent is
/// lost and logged (tier TTLs still bound how long a value lives).
const MAX_PENDING_REMOVES: usize = 100_000;
const RETRY_EVERY: Duration = Duration::from_millis(250);

pub struct Guard {
    pub tier: &'static str,
    pub timeout: Duration,
    pub breaker: Breaker,
}

impl Guard {
    /// What the tier adds to its `/admin/stats` object.
    pub fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("breaker_open".into(), self.breaker.is_open().into());
        m
    }

    /// Runs one call under the breaker and the timeout.
    pub async fn call<T, E: Display>(
        &self,
        f: impl Future<Output = Result<T, E>>,
    ) -> Result<T, TierError> {
        if !self.breaker.allow() {
            return Err(TierError::Open { tier: self.tier });
        }
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.breaker.failure(&e);
                Err(TierError::Failed {
                    tier: self.tier,
                    detail: e.to_string(),
                })
            }
            Err(_) => {
                self.breaker
                    .failure(&format_args!("no answer within {:?}", self.timeout));
                Err(TierError::Timeout {
                    tier: self.tier,
                    timeout: self.timeout,
                })
            }
        }
    }
}

/// Removals that could not reach the tier.
#[derive(Default)]
pub struct Pending {
    ids: Mutex<HashSet<String>>,
}

impl Pending {
    fn lock(&self) -> MutexGuard<'_, HashSet<String>> {
        self.ids.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn remember(&self, tier: &str, ids: &[String]) {
        let mut pending = self.lock();
        for id in ids {
            if pending.len() >= MAX_PENDING_REMOVES {
                tracing::error!(
                    tier,
                    pending = pending.len(),
                    "too many removals waiting for the tier; dropping the rest"
                );
                break;
            }
            pending.insert(id.clone());
        }
    }

    /// Whether `id`'s removal is still waiting.
    pub fn contains(&self, id: &str) -> bool {
        let pending = self.lock();
        !pending.is_empty() && pending.contains(id)
    }

    /// The indexes of `entries` that may be written: not those whose
    /// removal is still waiting (their tombstone must land first).
    pub fn writable<T>(&self, entries: &[(String, T)]) -> Vec<usize> {
        let pending = self.lock();
        (0..entries.len())
            .filter(|&i| pending.is_empty() || !pending.contains(&entries[i].0))
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    fn snapshot(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn done(&self, ids: &[String]) {
        let mut pending = self.lock();
        for id in ids {
            pending.remove(id);
        }
    }
}

/// A tier whose removals can be retried.
#[async_trait::async_trait]
pub trait Retry: Send + Sync + 'static {
    fn pending(&self) -> &Pending;
    fn name(&self) -> &'static str;
    /// Tries the removal again; true when the tier took it.
    async fn retry_remove(&self, ids: &[String]) -> bool;
}

/// Retries remembered removals until the tier takes them; stops on the
/// drain or when the tier is gone (a reload replaced it).
pub async fn retry_removes<T: Retry>(tier: Weak<T>, drain: Drain) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RETRY_EVERY) => {}
            _ = drain.wait() => return,
        }
        let Some(tier) = tier.upgrade() else { return };
        let ids = tier.pending().snapshot();
        if ids.is_empty() {
            continue;
        }
        if tier.retry_remove(&ids).await {
            tier.pending().done(&ids);
            tracing::info!(
                tier = tier.name(),
                count = ids.len(),
                "retried removals applied"
            );
        }
    }
}
