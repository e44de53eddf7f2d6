//! The Redis tier, shared by every proxy instance: MGET for batch reads,
//! pipelined `SET .. PX` for batch writes, keys made only as prefix + id.
//! Every call is bounded by a short timeout and a circuit breaker, so a slow
//! or dead Redis costs a request a few milliseconds at most. Removals that
//! fail (Redis down during an invalidation) are remembered and retried, and
//! those ids read as misses meanwhile, so a stale profile cannot come back
//! from Redis when it does.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::breaker::Breaker;
use super::{codec, now_ms, Entry, Tier, TierError, TierKind};
use crate::config::{Config, Problem, RedisTierConfig};
use crate::lifecycle::{Drain, Tasks};

/// Most ids remembered for a retried removal; past it the oldest intent is
/// lost and logged (Redis TTLs still bound how long a value lives).
const MAX_PENDING_REMOVES: usize = 100_000;
const RETRY_EVERY: Duration = Duration::from_millis(250);

pub struct RedisTier {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    max_stale: Duration,
    timeout: Duration,
    breaker: Breaker,
    pending_removes: Mutex<HashSet<String>>,
}

impl RedisTier {
    /// Creates the tier without connecting: Redis may be down at start-up,
    /// and the connection is made (and remade) when calls need it. Must run
    /// inside the tokio runtime.
    pub fn new(
        cfg: &RedisTierConfig,
        max_stale: Duration,
        tasks: &Tasks,
    ) -> Result<Arc<RedisTier>, redis::RedisError> {
        let client = redis::Client::open(cfg.url.as_str())?;
        let manager_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout.get()))
            .set_response_timeout(Some(cfg.timeout.get()))
            // The breaker decides when to try again; the manager should not
            // keep a request waiting through a long retry ladder.
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(100));
        let conn = ConnectionManager::new_lazy_with_config(client, manager_cfg)?;
        let tier = Arc::new(RedisTier {
            conn,
            prefix: cfg.key_prefix.clone(),
            ttl: cfg.ttl.get(),
            max_stale,
            timeout: cfg.timeout.get(),
            breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown.get()),
            pending_removes: Mutex::new(HashSet::new()),
        });
        let weak = Arc::downgrade(&tier);
        tasks.spawn("redis-remove-retry", move |drain| {
            retry_removes(weak, drain)
        });
        Ok(tier)
    }

    fn key(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    pub fn breaker_open(&self) -> bool {
        self.breaker.is_open()
    }

    /// Runs one Redis call under the breaker and the timeout.
    async fn call<T, F>(&self, f: F) -> Result<T, TierError>
    where
        F: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.breaker.allow() {
            return Err(TierError::Open { tier: "redis" });
        }
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => {
                self.breaker.success();
                Ok(v)
            }
            Ok(Err(e)) => {
                self.breaker.failure(&e);
                Err(TierError::Failed {
                    tier: "redis",
                    detail: e.to_string(),
                })
            }
            Err(_) => {
                self.breaker
                    .failure(&format_args!("no answer within {:?}", self.timeout));
                Err(TierError::Timeout {
                    tier: "redis",
                    timeout: self.timeout,
                })
            }
        }
    }

    /// `DEL` of the ids' keys, under the breaker and the timeout.
    async fn delete(&self, ids: &[String]) -> Result<(), TierError> {
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let mut conn = self.conn.clone();
        self.call(async move {
            redis::cmd("DEL")
                .arg(&keys)
                .query_async::<i64>(&mut conn)
                .await
        })
        .await
        .map(|_| ())
    }

    fn remember_removes(&self, ids: &[String]) {
        let Ok(mut pending) = self.pending_removes.lock() else {
            return;
        };
        for id in ids {
            if pending.len() >= MAX_PENDING_REMOVES {
                tracing::error!(
                    pending = pending.len(),
                    "too many Redis removals waiting for Redis; dropping the rest"
                );
                break;
            }
            pending.insert(id.clone());
        }
    }

    fn pending_snapshot(&self) -> Vec<String> {
        self.pending_removes
            .lock()
            .map(|p| p.iter().cloned().collect())
            .unwrap_or_default()
    }
}

/// The tier `[tiers.redis]` describes, if the section is present (the
/// entry in `lookup::chain`'s list of tiers).
pub fn build(cfg: &Config, tasks: &Tasks) -> Option<Result<Arc<dyn Tier>, Problem>> {
    let r = cfg.tiers.redis.as_ref()?;
    Some(
        RedisTier::new(r, cfg.fail_safe.max_stale.get(), tasks)
            .map(|t| t as Arc<dyn Tier>)
            .map_err(|e| Problem::new("tiers.redis.url", e.to_string())),
    )
}

/// Retries remembered removals until Redis takes them; stops on the drain
/// or when the tier is gone (a reload replaced it).
async fn retry_removes(tier: Weak<RedisTier>, drain: Drain) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(RETRY_EVERY) => {}
            _ = drain.wait() => return,
        }
        let Some(tier) = tier.upgrade() else { return };
        let ids = tier.pending_snapshot();
        if ids.is_empty() {
            continue;
        }
        if tier.delete(&ids).await.is_ok() {
            if let Ok(mut pending) = tier.pending_removes.lock() {
                for id in &ids {
                    pending.remove(id);
                }
            }
            tracing::info!(count = ids.len(), "retried Redis removals applied");
        }
    }
}

#[async_trait::async_trait]
impl Tier for RedisTier {
    fn kind(&self) -> TierKind {
        TierKind::Redis
    }

    fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("breaker_open".into(), self.breaker_open().into());
        m
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Option<Entry>>, TierError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<Vec<u8>>> = self
            .call(async move { redis::cmd("MGET").arg(&keys).query_async(&mut conn).await })
            .await?;
        let now = now_ms();
        let pending = self.pending_removes.lock().ok().filter(|p| !p.is_empty());
        Ok(ids
            .iter()
            .zip(values)
            .map(|(id, v)| {
                if pending.as_ref().is_some_and(|p| p.contains(id)) {
                    return None;
                }
                v.as_deref()
                    .and_then(codec::decode)
                    .filter(|e| e.is_usable(now))
            })
            .collect())
    }

    async fn put_many(&self, entries: &[(String, Entry)]) -> Result<(), TierError> {
        if entries.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        let mut pipe = redis::pipe();
        for (id, e) in entries {
            let e = e.restamped(now, self.ttl, self.max_stale);
            let px = e.stale_until.saturating_sub(now).max(1);
            pipe.cmd("SET")
                .arg(self.key(id))
                .arg(codec::encode(&e))
                .arg("PX")
                .arg(px)
                .ignore();
        }
        let mut conn = self.conn.clone();
        self.call(async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    async fn remove(&self, ids: &[String]) -> Result<(), TierError> {
        if ids.is_empty() {
            return Ok(());
        }
        let result = self.delete(ids).await;
        if result.is_err() {
            self.remember_removes(ids);
        }
        result
    }
}
