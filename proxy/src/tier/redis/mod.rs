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
//!
//! On a Redis Cluster (`mode = "cluster"`) a batch is split by node: one
//! MGET per node (the client library splits it further by slot and
//! follows MOVED/ASK), one script call per slot, each node under its own
//! breaker and timeout (`nodes`), so a dead primary costs only its slots,
//! and only until its replica takes over. An id whose node could not be
//! read is reported as not reached, never as a miss: nothing is written
//! for it under a version the tier did not answer.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::try_join_all;
use redis::{RedisWrite, Script, ToRedisArgs};

use super::codec::{self, Record};
use super::guard::{retry_removes, Pending, Retry};
use super::{now_ms, Entry, Stored, Tier, TierError, TierKind, Written};
use crate::config::{Config, Problem, RedisTierConfig};
use crate::lifecycle::Tasks;
use crate::redis_link::slot::slot;
use crate::redis_link::{Link, LinkError, Target};

mod nodes;
mod scripts;

use nodes::{refresh_topology, Group, Nodes};

pub struct RedisTier {
    conn: Link,
    prefix: String,
    ttl: Duration,
    max_stale: Duration,
    nodes: Arc<Nodes>,
    pending: Pending,
    put_script: Script,
    remove_script: Script,
}

/// One id of a batch: its place in the batch, the id, and its key's slot
/// (0 on a standalone Redis).
type Keyed<'a> = (usize, &'a str, u16);

/// An id's key as a command argument: prefix and id are written straight
/// into the command, with no string made per key.
struct Key<'a>(&'a str, &'a str);

impl fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)?;
        f.write_str(self.1)
    }
}

impl ToRedisArgs for Key<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        out.write_arg_fmt(self);
    }
}

impl RedisTier {
    /// Creates the tier without connecting: Redis may be down at start-up,
    /// and the connection is made (and remade) when calls need it. Must run
    /// inside the tokio runtime.
    pub fn new(
        cfg: &RedisTierConfig,
        max_stale: Duration,
        tasks: &Tasks,
    ) -> Result<Arc<RedisTier>, LinkError> {
        let endpoint = cfg.endpoint();
        let target = Target::open(&endpoint)?;
        // Every call runs under the node's guard, which has the timeout.
        let conn = target.shared_bounded_by_caller(cfg.connect_timeout.get(), cfg.timeout.get())?;
        let nodes = Arc::new(Nodes::new(
            target.is_cluster(),
            endpoint
                .urls
                .first()
                .map_or_else(String::new, |u| host_of(u)),
            cfg.timeout.get(),
            cfg.breaker_failures,
            cfg.breaker_cooldown.get(),
        ));
        if target.is_cluster() {
            let weak = Arc::downgrade(&nodes);
            let conn = conn.clone();
            tasks.spawn("redis-topology", move |drain| {
                refresh_topology(weak, conn, drain)
            });
        }
        let tier = Arc::new(RedisTier {
            conn,
            prefix: cfg.key_prefix.clone(),
            ttl: cfg.ttl.get(),
            max_stale,
            nodes,
            pending: Pending::default(),
            put_script: Script::new(scripts::PUT_SCRIPT),
            remove_script: Script::new(scripts::REMOVE_SCRIPT),
        });
        let weak = Arc::downgrade(&tier);
        tasks.spawn("redis-remove-retry", move |drain| {
            retry_removes(weak, drain)
        });
        tracing::info!(redis = %endpoint.describe(), "redis tier configured");
        Ok(tier)
    }

    fn key<'a>(&'a self, id: &'a str) -> Key<'a> {
        Key(&self.prefix, id)
    }

    /// `ids` split by the node serving their keys.
    fn groups<'a>(&self, ids: impl Iterator<Item = &'a str>) -> Vec<Group<Keyed<'a>>> {
        let cluster = self.nodes.is_cluster();
        let mut key = String::new();
        let keyed: Vec<Keyed> = ids
            .enumerate()
            .map(|(i, id)| {
                if !cluster {
                    return (i, id, 0);
                }
                key.clear();
                key.push_str(&self.prefix);
                key.push_str(id);
                (i, id, slot(key.as_bytes()))
            })
            .collect();
        self.nodes.group(keyed, |k| k.2)
    }

    /// One node's keys split into script calls: on a cluster one per slot
    /// (a script may not cross slots), standalone all in one.
    fn per_call<'a, 'b>(&self, items: &'a [Keyed<'b>]) -> Vec<Vec<&'a Keyed<'b>>> {
        if !self.nodes.is_cluster() {
            return vec![items.iter().collect()];
        }
        let mut by_slot: BTreeMap<u16, Vec<&Keyed>> = BTreeMap::new();
        for k in items {
            by_slot.entry(k.2).or_default().push(k);
        }
        by_slot.into_values().collect()
    }

    /// Tombstones for the ids, each node under its breaker and timeout;
    /// answers their new versions. A tombstone lives as long as a value
    /// could (TTL plus the fail-safe window), far longer than any load. If
    /// any node failed, the whole removal is an error (and retried whole:
    /// a second tombstone only bumps the version again).
    async fn delete(&self, ids: &[String]) -> Result<Vec<u64>, TierError> {
        let px = super::millis(self.ttl + self.max_stale).max(1);
        let wait_ms = (super::millis(self.nodes.timeout()) / 2).max(1);
        let head = codec::tombstone_head();
        let groups = self.groups(ids.iter().map(String::as_str));
        let results = self
            .nodes
            .run(&groups, |g| {
                let conn = self.conn.clone();
                let calls = self.per_call(&g.items);
                let head = &head;
                async move {
                    let work = async {
                        let mut versions: Vec<(usize, u64)> = Vec::with_capacity(g.items.len());
                        let answers = try_join_all(calls.iter().map(|keys| {
                            let mut call = self.remove_script.prepare_invoke();
                            for (_, id, _) in keys {
                                call.key(self.key(id));
                            }
                            call.arg(head).arg(px);
                            let mut conn = conn.clone();
                            async move { call.invoke_async::<Vec<u64>>(&mut conn).await }
                        }))
                        .await?;
                        for (keys, vs) in calls.iter().zip(answers) {
                            versions.extend(keys.iter().map(|(i, _, _)| *i).zip(vs));
                        }
                        Ok::<_, redis::RedisError>(versions)
                    };
                    let versions = g.guard.call(work).await?;
                    // Outside the guard: a lagging replica is no reason to stop
                    // reading from a healthy primary.
                    if self.nodes.must_replicate(&g.node) {
                        let waited = tokio::time::timeout(
                            self.nodes.timeout(),
                            replicated(&mut conn.clone(), &g.node, wait_ms),
                        )
                        .await;
                        if let Err(detail) = waited
                            .map_err(|_| "WAIT did not answer".to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                        {
                            return Err(TierError::Failed {
                                tier: "redis",
                                detail,
                            });
                        }
                    }
                    Ok(versions)
                }
            })
            .await;
        let mut out = vec![0; ids.len()];
        for r in results {
            match r {
                Ok(versions) => {
                    for (i, v) in versions {
                        out[i] = v;
                    }
                }
                Err(e) => {
                    self.nodes.failed();
                    return Err(e);
                }
            }
        }
        Ok(out)
    }
}

/// Waits until a replica of `node` has every write made so far on the
/// connection (`WAIT 1`). Redis replicates asynchronously: a tombstone the
/// primary took but no replica got would vanish in a failover, and the
/// promoted replica would serve the old value to every instance. So on a
/// cluster a removal counts only once a replica has it; otherwise it is
/// remembered and retried (on whichever node serves the slot by then).
async fn replicated(conn: &mut Link, node: &str, wait_ms: u64) -> redis::RedisResult<()> {
    let mut wait = redis::cmd("WAIT");
    wait.arg(1).arg(wait_ms);
    let acks: i64 = conn.on_node(&wait, node).await?;
    if acks >= 1 {
        Ok(())
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "no replica acknowledged the removal",
            format!("WAIT 1 {wait_ms} on {node} answered {acks}"),
        )))
    }
}

/// The host of a Redis URL (for a cluster node that reports none).
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    match host_port.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') || h.starts_with('[') => h.to_string(),
        _ => host_port.to_string(),
    }
}

/// The tier `[tiers.redis]` describes, if the section is present (the
/// entry in `lookup::chain`'s list of tiers).
pub fn build(cfg: &Config, tasks: &Tasks) -> Option<Result<Arc<dyn Tier>, Problem>> {
    let r = cfg.tiers.redis.as_ref()?;
    Some(
        RedisTier::new(r, cfg.fail_safe.max_stale.get(), tasks)
            .map(|t| t as Arc<dyn Tier>)
            .map_err(|e| {
                let cluster = r.mode == crate::config::RedisMode::Cluster;
                Problem::new(e.key("tiers.redis", cluster), e.to_string())
            }),
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
        let mut m = self.nodes.stats();
        m.insert("pending_removals".into(), self.pending.len().into());
        m
    }

    async fn get_many(&self, ids: &[String]) -> Result<Vec<Stored>, TierError> {
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        self.get_many_str(&ids).await
    }

    async fn get_many_str(&self, ids: &[&str]) -> Result<Vec<Stored>, TierError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let groups = self.groups(ids.iter().copied());
        let results = self
            .nodes
            .run(&groups, |g| {
                let mut conn = self.conn.clone();
                let mut mget = redis::cmd("MGET");
                for (_, id, _) in &g.items {
                    mget.arg(self.key(id));
                }
                async move {
                    g.guard
                            .call(async move {
                                mget.query_async::<Vec<Option<Vec<u8>>>>(&mut conn).await
                            })
                            .await
                }
            })
            .await;
        // Per id: None while its node was not reached.
        let mut values: Vec<Option<Option<Vec<u8>>>> = vec![None; ids.len()];
        let mut reached = false;
        let mut first_error = None;
        for (g, r) in groups.iter().zip(results) {
            match r {
                Ok(vals) => {
                    reached = true;
                    for ((i, _, _), v) in g.items.iter().zip(vals) {
                        values[*i] = Some(v);
                    }
                }
                Err(e) => {
                    self.nodes.failed();
                    tracing::debug!(node = %g.node, error = %e, "redis node skipped");
                    first_error.get_or_insert(e);
                }
            }
        }
        if let (false, Some(e)) = (reached, first_error) {
            return Err(e);
        }
        let now = now_ms();
        let any_pending = !self.pending.is_empty();
        Ok(ids
            .iter()
            .zip(values)
            .map(|(id, v)| {
                let Some(v) = v else {
                    return Stored::unreached();
                };
                let (entry, version) = match v.and_then(codec::decode_vec) {
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
                    return Stored::reached(None, version);
                }
                Stored::reached(entry, version)
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
        let stamped: Vec<Entry> = send
            .iter()
            .map(|&i| entries[i].1.restamped(now, self.ttl, self.max_stale))
            .collect();
        let groups = self.groups(send.iter().map(|&i| entries[i].0.as_str()));
        let results = self
            .nodes
            .run(&groups, |g| {
                let calls = self.per_call(&g.items);
                let conn = self.conn.clone();
                let stamped = &stamped;
                async move {
                    let work = async {
                        let answers = try_join_all(calls.iter().map(|keys| {
                            let mut call = self.put_script.prepare_invoke();
                            for (j, id, _) in keys {
                                let e = &stamped[*j];
                                let px = e.stale_until.saturating_sub(now).max(1);
                                call.key(self.key(id))
                                    .arg(codec::encode(e))
                                    .arg(px)
                                    .arg(codec::hex16(e.version))
                                    .arg(codec::hex16(e.order));
                            }
                            let mut conn = conn.clone();
                            async move { call.invoke_async::<Vec<u8>>(&mut conn).await }
                        }))
                        .await?;
                        let mut written: Vec<(usize, u8)> = Vec::with_capacity(g.items.len());
                        for (keys, a) in calls.iter().zip(answers) {
                            written.extend(keys.iter().map(|(j, _, _)| *j).zip(a));
                        }
                        Ok::<_, redis::RedisError>(written)
                    };
                    g.guard.call(work).await
                }
            })
            .await;
        let mut reached = false;
        let mut first_error = None;
        for r in results {
            match r {
                Ok(written) => {
                    reached = true;
                    for (j, a) in written {
                        out[send[j]] = match a {
                            0 => Written::Yes,
                            2 => Written::Older,
                            _ => Written::Superseded,
                        };
                    }
                }
                Err(e) => {
                    self.nodes.failed();
                    first_error.get_or_insert(e);
                }
            }
        }
        match (reached, first_error) {
            (false, Some(e)) => Err(e),
            _ => Ok(out),
        }
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
        let primaries = self.nodes.primaries();
        if primaries.is_empty() {
            return Err(TierError::Failed {
                tier: "redis",
                detail: "the cluster's slot map is not known yet".into(),
            });
        }
        let pattern = format!("{}*", glob_escape(&self.prefix));
        let mut marked = 0;
        for (node, guard) in primaries {
            let mut cursor: u64 = 0;
            loop {
                let mut conn = self.conn.clone();
                let mut scan = redis::cmd("SCAN");
                scan.arg(cursor)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(SCAN_COUNT);
                let node = node.clone();
                let (next, keys): (u64, Vec<String>) = guard
                    .call(async move { conn.on_node(&scan, &node).await })
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
                    break;
                }
                cursor = next;
            }
        }
        Ok(marked)
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
