//! Breakers and timeouts per Redis node. A standalone Redis is one node.
//! On a cluster each primary gets its own `Guard`, so one dead node costs
//! only the ids in its slots (they fall through to the next tier) while
//! the others keep serving, and when a replica takes over its slots the
//! new primary is a node with a closed breaker: the tier is used again as
//! soon as the proxy's view of the cluster (`redis_link::topology`) says
//! so. That view is refreshed every `REFRESH_EVERY` and at once when a
//! node's call fails.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use futures_util::future::join_all;
use tokio::sync::Notify;

use super::super::breaker::Breaker;
use super::super::guard::Guard;
use crate::lifecycle::Drain;
use crate::redis_link::topology::{Node, Topology};
use crate::redis_link::Link;

/// How often the cluster's slot map is read when nothing failed. The
/// library follows MOVED on its own; this only keeps breakers on the right
/// node, so a second is plenty.
const REFRESH_EVERY: Duration = Duration::from_secs(1);
const MIN_GAP: Duration = Duration::from_millis(100);
/// Most keys per call to one cluster node. The library splits a call into
/// a command per slot, so a bulk batch (a 1 000-id warm-up) would be
/// hundreds of commands under one timeout; in parts of this size each has
/// its own, and a request's batch (at most `max_batch`, 50) is one part.
const CHUNK: usize = 64;
/// The name of the group of keys whose slot the map does not cover yet.
const UNKNOWN: &str = "unknown";

pub struct Nodes {
    cluster: bool,
    timeout: Duration,
    failures: u32,
    cooldown: Duration,
    /// Host to use for a node that reports an empty one.
    seed_host: String,
    topology: ArcSwap<Topology>,
    /// A standalone Redis's one node, made once: the request path takes
    /// no lock for it.
    single: (Node, Arc<Guard>),
    guards: Mutex<HashMap<Node, Arc<Guard>>>,
    refresh: Notify,
}

/// Items of one batch that go to one node, with that node's guard.
pub struct Group<T> {
    pub node: Node,
    pub guard: Arc<Guard>,
    pub items: Vec<T>,
}

impl Nodes {
    pub fn new(
        cluster: bool,
        seed_host: String,
        timeout: Duration,
        failures: u32,
        cooldown: Duration,
    ) -> Nodes {
        let node = Node::from("redis");
        let guard = Arc::new(Guard {
            tier: "redis",
            timeout,
            breaker: Breaker::new(failures, cooldown),
        });
        let mut guards = HashMap::new();
        if !cluster {
            guards.insert(node.clone(), guard.clone());
        }
        Nodes {
            cluster,
            timeout,
            failures,
            cooldown,
            seed_host,
            topology: ArcSwap::from_pointee(Topology::default()),
            single: (node, guard),
            guards: Mutex::new(guards),
            refresh: Notify::new(),
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    fn guard(&self, node: &Node) -> Arc<Guard> {
        let mut guards = self.guards.lock().unwrap_or_else(|p| p.into_inner());
        guards
            .entry(node.clone())
            .or_insert_with(|| {
                Arc::new(Guard {
                    tier: "redis",
                    timeout: self.timeout,
                    breaker: Breaker::new(self.failures, self.cooldown),
                })
            })
            .clone()
    }

    /// Splits `items` by the node serving each one's key slot (`slot_of`), in
    /// first-seen order of nodes; standalone, one group.
    pub fn group<T>(&self, items: Vec<T>, slot_of: impl Fn(&T) -> u16) -> Vec<Group<T>> {
        if !self.cluster {
            return vec![Group {
                node: self.single.0.clone(),
                guard: self.single.1.clone(),
                items,
            }];
        }
        let topology = self.topology.load();
        let mut groups: Vec<Group<T>> = Vec::new();
        for item in items {
            let node = topology
                .node_of(slot_of(&item))
                .cloned()
                .unwrap_or_else(|| Node::from(UNKNOWN));
            // The open group of this node, unless it is full.
            match groups
                .iter_mut()
                .rev()
                .find(|g| g.node == node)
                .filter(|g| g.items.len() < CHUNK)
            {
                Some(g) => g.items.push(item),
                None => groups.push(Group {
                    guard: self.guard(&node),
                    node,
                    items: vec![item],
                }),
            }
        }
        groups
    }

    /// Runs `call` on every group: one node's groups one after another,
    /// each under its own timeout, different nodes side by side. Answers
    /// in the order of `groups`.
    pub async fn run<'a, T, R, F, Fut>(&self, groups: &'a [Group<T>], call: F) -> Vec<R>
    where
        F: Fn(&'a Group<T>) -> Fut,
        Fut: Future<Output = R>,
    {
        let mut lanes: Vec<Vec<usize>> = Vec::new();
        for (i, g) in groups.iter().enumerate() {
            match lanes.iter_mut().find(|l| groups[l[0]].node == g.node) {
                Some(lane) => lane.push(i),
                None => lanes.push(vec![i]),
            }
        }
        let call = &call;
        let done = join_all(lanes.into_iter().map(|lane| async move {
            let mut out = Vec::with_capacity(lane.len());
            for i in lane {
                out.push((i, call(&groups[i]).await));
            }
            out
        }))
        .await;
        let mut all: Vec<(usize, R)> = done.into_iter().flatten().collect();
        all.sort_by_key(|(i, _)| *i);
        all.into_iter().map(|(_, r)| r).collect()
    }

    /// The primaries a full scan visits, each with its guard.
    pub fn primaries(&self) -> Vec<(Node, Arc<Guard>)> {
        if !self.cluster {
            return vec![self.single.clone()];
        }
        self.topology
            .load()
            .primaries()
            .into_iter()
            .map(|n| {
                let g = self.guard(&n);
                (n, g)
            })
            .collect()
    }

    /// Whether a removal on `node` must be acknowledged by a replica: a
    /// cluster primary that has one.
    pub fn must_replicate(&self, node: &str) -> bool {
        self.cluster && self.topology.load().has_replica(node)
    }

    /// A call to a node failed: read the slot map again now (a failover or
    /// a slot move is the likely reason).
    pub fn failed(&self) {
        if self.cluster {
            self.refresh.notify_one();
        }
    }

    /// `breaker_open` for a standalone Redis (as before); on a cluster also
    /// each node's, and the nodes the map knows.
    pub fn stats(&self) -> serde_json::Map<String, serde_json::Value> {
        let guards: Vec<(Node, Arc<Guard>)> = {
            let g = self.guards.lock().unwrap_or_else(|p| p.into_inner());
            g.iter().map(|(n, g)| (n.clone(), g.clone())).collect()
        };
        let mut m = serde_json::Map::new();
        m.insert(
            "breaker_open".into(),
            guards.iter().any(|(_, g)| g.breaker.is_open()).into(),
        );
        if self.cluster {
            let mut nodes = serde_json::Map::new();
            for (n, g) in &guards {
                nodes.insert(
                    n.to_string(),
                    serde_json::json!({ "breaker_open": g.breaker.is_open() }),
                );
            }
            m.insert("mode".into(), "cluster".into());
            m.insert("nodes".into(), nodes.into());
            m.insert(
                "primaries".into(),
                self.topology
                    .load()
                    .primaries()
                    .iter()
                    .map(|n| serde_json::Value::from(n.to_string()))
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        m
    }

    async fn read_topology(&self, conn: &Link) -> Result<(), String> {
        let mut conn = conn.clone();
        let mut cmd = redis::cmd("CLUSTER");
        cmd.arg("SLOTS");
        let read = cmd.query_async::<redis::Value>(&mut conn);
        let reply = tokio::time::timeout(self.timeout.max(Duration::from_millis(500)), read)
            .await
            .map_err(|_| "CLUSTER SLOTS did not answer in time".to_string())?
            .map_err(|e| e.to_string())?;
        let t = Topology::parse(&reply, &self.seed_host)
            .ok_or("CLUSTER SLOTS answered no slot ranges")?;
        let old = self.topology.load();
        if **old != t {
            if !old.is_empty() {
                tracing::info!(primaries = ?t.primaries(), "redis cluster slot map changed");
            }
            self.topology.store(Arc::new(t));
        }
        Ok(())
    }
}

/// Keeps the slot map current while the tier lives (a reload that drops
/// the tier ends it).
pub async fn refresh_topology(nodes: Weak<Nodes>, conn: Link, drain: Drain) {
    let mut logged = false;
    loop {
        let Some(n) = nodes.upgrade() else { return };
        match n.read_topology(&conn).await {
            Ok(()) => logged = false,
            Err(e) if !logged => {
                tracing::warn!(error = %e, "cannot read the redis cluster slot map; retrying");
                logged = true;
            }
            Err(e) => tracing::debug!(error = %e, "redis cluster slot map still unreadable"),
        }
        // Failing calls ask for a refresh at request rate; one read per
        // MIN_GAP is enough to follow a failover.
        let wake = async {
            tokio::time::sleep(MIN_GAP).await;
            n.refresh.notified().await;
        };
        tokio::select! {
            _ = tokio::time::sleep(REFRESH_EVERY) => {}
            _ = wake => {}
            _ = drain.wait() => return,
        }
    }
}
