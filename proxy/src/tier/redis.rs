//! The Redis tier, shared by every proxy instance: MGET for batch reads,
//! keys made only as prefix + id. Writes and removals are one Lua script
//! call per batch, so that they are conditional inside Redis (`Tier`'s
//! contract): a write lands only while the id's version is still the one
//! its load read, and a removal replaces the value with a tombstone that
//! carries the next version. That is the fence across instances: a load
//! that started before an invalidation, on any instance, cannot put its old
//! value back, and no host clock is involved.
//!
//! Every call is bounded by a short timeout and a circuit breaker, so a slow
//! or dead Redis costs a request a few milliseconds at most. Removals that
//! fail (Redis down during an invalidation) are remembered and retried, and
//! those ids read as misses and are not written meanwhile, so a stale
//! profile cannot come back from Redis when it does.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;

use super::breaker::Breaker;
use super::codec::{self, Record};
use super::guard::{retry_removes, Guard, Pending, Retry};
use super::{now_ms, Entry, Stored, Tier, TierError, TierKind, Written};
use crate::config::{Config, Problem, RedisTierConfig};
use crate::lifecycle::Tasks;

/// Conditional batch write. KEYS: the ids' keys; ARGV, four per key: the
/// encoded entry, its PX, its version and its origin order (16 hex digits
/// each, compared as strings). Answers per key 0 written, 1 superseded
/// (the version there moved on), 2 older (a higher origin order is there;
/// an entry without an order, 0, is never older). Anything there that is
/// not a PE2 record counts as version 0, order 0.
const PUT_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local b = (i - 1) * 4
  local old = redis.call('GET', key)
  local version, order = '0000000000000000', '0000000000000000'
  if old and string.sub(old, 1, 3) == 'PE2' and string.len(old) >= 60 then
    version = string.sub(old, 29, 44)
    order = string.sub(old, 45, 60)
  end
  if version ~= ARGV[b + 3] then
    out[i] = 1
  elseif ARGV[b + 4] ~= '0000000000000000' and order > ARGV[b + 4] then
    out[i] = 2
  else
    redis.call('SET', key, ARGV[b + 1], 'PX', ARGV[b + 2])
    out[i] = 0
  end
end
return out
";

/// Batch removal. KEYS: the ids' keys; ARGV[1] the tombstone's first bytes
/// (`codec::tombstone_head`), ARGV[2] its PX. Each key gets a tombstone with
/// the version after the one it had; answers those versions.
const REMOVE_SCRIPT: &str = r"
local out = {}
for i, key in ipairs(KEYS) do
  local old = redis.call('GET', key)
  local v = 0
  if old and string.sub(old, 1, 3) == 'PE2' and string.len(old) >= 60 then
    v = tonumber(string.sub(old, 29, 44), 16) or 0
  end
  v = v + 1
  redis.call('SET', key, ARGV[1] .. string.format('%016x', v) .. '0000000000000000', 'PX', ARGV[2])
  out[i] = v
end
return out
";
pub struct RedisTier {
    conn: ConnectionManager,
    prefix: String,
    ttl: Duration,
    max_stale: Duration,
    guard: Guard,
    pending: Pending,
    put_script: Script,
    remove_script: Script,
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
            guard: Guard {
                tier: "redis",
                timeout: cfg.timeout.get(),
                breaker: Breaker::new(cfg.breaker_failures, cfg.breaker_cooldown.get()),
            },
            pending: Pending::default(),
            put_script: Script::new(PUT_SCRIPT),
            remove_script: Script::new(REMOVE_SCRIPT),
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

    /// Tombstones for the ids, under the breaker and the timeout; answers
    /// their new versions. A tombstone lives as long as a value could (TTL
    /// plus the fail-safe window), far longer than any load.
    async fn delete(&self, ids: &[String]) -> Result<Vec<u64>, TierError> {
        let mut call = self.remove_script.prepare_invoke();
        for id in ids {
            call.key(self.key(id));
        }
        call.arg(codec::tombstone_head())
            .arg(super::millis(self.ttl + self.max_stale).max(1));
        let mut conn = self.conn.clone();
        self.guard
            .call(async move { call.invoke_async::<Vec<u64>>(&mut conn).await })
            .await
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

#[async_trait::async_trait]
impl Retry for RedisTier {
    fn pending(&self) -> &Pending {
        &self.pending
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    async fn retry_remove(&self, ids: &[String]) -> bool {
        self.delete(ids).await.is_ok()
    }
}

#[async_trait::async_trait]
impl Tier for RedisTier {
    fn kind(&self) -> TierKind {
        TierKind::Redis
    }

    fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        self.guard.stats()
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Stored>, TierError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let mut conn = self.conn.clone();
        let values: Vec<Option<Vec<u8>>> = self
            .guard
            .call(async move { redis::cmd("MGET").arg(&keys).query_async(&mut conn).await })
            .await?;
        let now = now_ms();
        let any_pending = !self.pending.is_empty();
        Ok(ids
            .iter()
            .zip(values)
            .map(|(id, v)| {
                let (entry, version) = match v.as_deref().and_then(codec::decode) {
                    Some(Record::Value(e)) => {
                        let version = e.version;
                        (Some(e).filter(|e| e.is_usable(now)), version)
                    }
                    Some(Record::Tombstone { version }) => (None, version),
                    None => (None, 0),
                };
                if any_pending && self.pending.contains(id) {
                    // Its tombstone is still to be written: nothing here
                    // counts, and writes are refused (see put_many).
                    return Stored {
                        entry: None,
                        version,
                    };
                }
                Stored { entry, version }
            })
            .collect())
    }

    async fn put_many(&self, entries: &[(String, Entry)]) -> Result<Vec<Written>, TierError> {
        let mut out = vec![Written::Skipped; entries.len()];
        let send = self.pending.writable(entries);
        if send.is_empty() {
            return Ok(out);
        }
        let now = now_ms();
        let mut call = self.put_script.prepare_invoke();
        for &i in &send {
            let (id, e) = &entries[i];
            let e = e.restamped(now, self.ttl, self.max_stale);
            let px = e.stale_until.saturating_sub(now).max(1);
            call.key(self.key(id))
                .arg(codec::encode(&e))
                .arg(px)
                .arg(codec::hex16(e.version))
                .arg(codec::hex16(e.order));
        }
        let mut conn = self.conn.clone();
        let answers: Vec<u8> = self
            .guard
            .call(async move { call.invoke_async(&mut conn).await })
            .await?;
        for (&i, a) in send.iter().zip(answers) {
            out[i] = match a {
                0 => Written::Yes,
                2 => Written::Older,
                _ => Written::Superseded,
            };
        }
        Ok(out)
    }

    async fn remove(&self, ids: &[String]) -> Result<Vec<u64>, TierError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let result = self.delete(ids).await;
        if result.is_err() {
            self.pending.remember("redis", ids);
        }
        result
    }

    async fn remove_all(&self) -> Result<u64, TierError> {
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut cursor: u64 = 0;
        let mut marked = 0;
        loop {
            let mut conn = self.conn.clone();
            let pattern = pattern.clone();
            let (next, keys): (u64, Vec<String>) = self
                .guard
                .call(async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(&mut conn)
                        .await
                })
                .await?;
            let ids: Vec<String> = keys
                .iter()
                .filter_map(|k| k.strip_prefix(self.prefix.as_str()))
                .map(str::to_string)
                .collect();
            if !ids.is_empty() {
                marked += self.delete(&ids).await?.len() as u64;
            }
            if next == 0 {
                return Ok(marked);
            }
            cursor = next;
        }
    }
}

/// Keys one SCAN step looks at: small enough that each step (and the
/// removal script after it) stays far inside the tier's timeout.
const SCAN_COUNT: u64 = 500;

/// `prefix` as a SCAN MATCH pattern that matches only itself.
fn glob_escape(prefix: &str) -> String {
    let mut out = String::with_capacity(prefix.len());
    for c in prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_globs_match_only_themselves() {
        assert_eq!(super::glob_escape("pe:user:"), "pe:user:");
        assert_eq!(super::glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
