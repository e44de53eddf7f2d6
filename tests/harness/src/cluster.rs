//! A real six-node Redis Cluster (three primaries, each with one replica)
//! of `redis-server --cluster-enabled yes` processes on free loopback
//! ports, each node in a dir of its own under one temp dir, made into a
//! cluster by `redis-cli --cluster create`. Plain TCP, or TLS everywhere
//! (clients, cluster bus, replication) with [`RedisCluster::start_tls`].
//!
//! What tests do to it is what happens in production: a primary is killed
//! (SIGKILL) and its replica promoted by the cluster itself
//! ([`RedisCluster::kill_node`], [`RedisCluster::wait_failover`]), a slot
//! and its keys are moved live the way `redis-cli --cluster reshard` does
//! ([`RedisCluster::migrate_slot`]). Every wait polls the nodes until they
//! all agree, bounded by a generous deadline (a loaded 2-core CI machine
//! is slow to gossip); on timeout the error says what was last seen and
//! carries every node's log tail.
//!
//! Node settings, and why:
//! - `cluster-node-timeout 1000`: a dead primary is marked failed, and its
//!   replica elected, within about two seconds instead of fifteen.
//! - `cluster-require-full-coverage no`: while one primary is down only its
//!   own slots are unavailable; the other two thirds of the keyspace keep
//!   serving. With `yes` (Redis's default) every node answers CLUSTERDOWN
//!   for every key from the moment the dead primary is marked failed until
//!   its replica is promoted, so a test that "a failover costs no client
//!   errors" would be judging an outage of the whole cluster rather than
//!   the proxy's handling of one moved primary. The price: `cluster_state`
//!   alone no longer says all slots are served, so the waits here also
//!   require `cluster_slots_ok:16384` and a slot map with no dead primary.
//! - `cluster-replica-validity-factor 0`: a replica always stands for
//!   election, however long since it last heard its primary (on a loaded
//!   machine it may have lagged past the default limit, and then no one is
//!   promoted at all).
//! - `cluster-allow-replica-migration no`: replicas stay where `create` put
//!   them, so who replicates whom is what the test saw.
//! - `repl-diskless-sync-delay 0`: a replica's first full sync starts at
//!   once instead of after Redis's default five seconds.
//! - `--save "" --appendonly no`: nothing persisted but `nodes.conf`, which
//!   a restarted node needs to rejoin.
//!
//! The cluster bus listens on port + 10000, so node ports come from
//! [`free_cluster_port`], which checks both and stays below 55535.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::child::ChildServer;
use crate::redis_tls::{is_pong, TlsFiles};
use crate::resp::{Dialer, Reply};

/// Number of hash slots in a Redis Cluster.
pub const SLOTS: u16 = 16384;
/// Three primaries, three replicas.
const NODES: usize = 6;
/// `cluster-node-timeout`, ms: small, so a failover is quick.
pub const NODE_TIMEOUT_MS: u64 = 1000;
/// How long one node gets to answer `PING` after it is spawned.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the nodes get to agree (after `create`, a failover, a slot
/// move). A few seconds when idle; the room is for a loaded machine.
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `redis-cli --cluster create` may run.
const CREATE_TIMEOUT: Duration = Duration::from_secs(60);
const POLL_EVERY: Duration = Duration::from_millis(50);
/// Start attempts per node on fresh ports, in case another process takes
/// the port between [`free_cluster_port`] and `redis-server` binding it.
const START_ATTEMPTS: usize = 3;
/// Where cluster ports come from: the bus (port + 10000) must be a valid
/// port too, so the range ends 10000 below 65535.
const CLUSTER_PORTS: std::ops::Range<u16> = 20000..55535;
/// Keys moved per `MIGRATE` while resharding (what `redis-cli` uses too).
const MIGRATE_BATCH: usize = 100;

/// A port P on 127.0.0.1 for a cluster node: P and P + 10000 (its cluster
/// bus) can both be bound right now, P < 55535, and neither was handed out
/// before in this process (by this or [`crate::free_port`]).
pub fn free_cluster_port() -> io::Result<u16> {
    let span = u64::from(CLUSTER_PORTS.end - CLUSTER_PORTS.start);
    // A pseudo-random walk, so that concurrent test processes do not all
    // try the same ports in the same order.
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(nanos) ^ (u64::from(std::process::id()) << 20);
    for _ in 0..1000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let port = CLUSTER_PORTS.start + u16::try_from((x >> 33) % span).unwrap_or(0);
        let bus = port + 10000;
        let bindable = |p: u16| TcpListener::bind(("127.0.0.1", p)).is_ok();
        if bindable(port) && bindable(bus) && crate::claim_ports(&[port, bus]) {
            return Ok(port);
        }
    }
    Err(io::Error::other(
        "no free cluster port (P and P+10000 both bindable, P < 55535) in 1000 tries",
    ))
}

/// The hash slot of `key`: CRC16/XMODEM of the key, or of its hash tag
/// (the part between the first `{` and the next `}`, when not empty), mod
/// 16384.
pub fn slot_of(key: &[u8]) -> u16 {
    let hashed = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(hashed) % SLOTS
}

fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// One range of `CLUSTER SLOTS`: who serves slots `start..=end`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotRange {
    pub start: u16,
    pub end: u16,
    pub primary: u16,
    /// The replicas the node asked does not consider failed.
    pub replicas: Vec<u16>,
}

/// What [`RedisCluster::kill_node`] saw just before the kill.
struct Killed {
    at: Instant,
    /// The slot ranges it was primary for (empty for a replica).
    slots: Vec<(u16, u16)>,
    /// Its replicas then: one of them should be promoted.
    replicas: Vec<u16>,
}

struct Node {
    server: ChildServer,
    dir: PathBuf,
}

/// A running six-node cluster. Every node is killed (SIGKILL, with its
/// process group) and the temp dir removed when this is dropped.
pub struct RedisCluster {
    nodes: Vec<Node>,
    tls: Option<TlsFiles>,
    dialer: Dialer,
    killed: HashMap<u16, Killed>,
    /// `cluster-node-timeout` of every node, ms.
    node_timeout_ms: u64,
    /// Last field: dropped after the nodes are dead.
    _tmp: tempfile::TempDir,
}

impl RedisCluster {
    /// Starts a plain-TCP cluster and waits until every node says
    /// `cluster_state:ok`, all 16384 slots are served, all nodes agree on
    /// who serves them, and every replica's link to its primary is up.
    pub async fn start() -> io::Result<RedisCluster> {
        RedisCluster::launch(false, NODE_TIMEOUT_MS).await
    }

    /// Like [`RedisCluster::start`] with another `cluster-node-timeout`:
    /// a longer one gives a test room between a node going silent and the
    /// cluster marking it failed.
    pub async fn start_with_node_timeout(node_timeout: Duration) -> io::Result<RedisCluster> {
        let ms = u64::try_from(node_timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        RedisCluster::launch(false, ms).await
    }

    /// The same over TLS only (`--port 0 --tls-port P --tls-cluster yes
    /// --tls-replication yes`), with a CA and certificate made for it
    /// ([`RedisCluster::ca_pem_path`]); no client certificate required.
    pub async fn start_tls() -> io::Result<RedisCluster> {
        RedisCluster::launch(true, NODE_TIMEOUT_MS).await
    }

    async fn launch(tls: bool, node_timeout_ms: u64) -> io::Result<RedisCluster> {
        let tmp = tempfile::Builder::new()
            .prefix("redis-cluster-")
            .tempdir()?;
        let files = if tls {
            Some(TlsFiles::generate(tmp.path())?)
        } else {
            None
        };
        let dialer = Dialer {
            tls: files.as_ref().map(TlsFiles::client_config).transpose()?,
            auth: None,
        };
        let mut cluster = RedisCluster {
            nodes: Vec::with_capacity(NODES),
            tls: files,
            dialer,
            killed: HashMap::new(),
            node_timeout_ms,
            _tmp: tmp,
        };
        for i in 0..NODES {
            let dir = cluster._tmp.path().join(format!("node-{i}"));
            std::fs::create_dir_all(&dir)
                .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", dir.display())))?;
            let mut node = Node {
                server: ChildServer::new("redis-server (cluster node)", 0, dir.join("redis.log")),
                dir,
            };
            let mut started = Err(io::Error::other("redis-server did not start"));
            for _ in 0..START_ATTEMPTS {
                node.server.port = free_cluster_port()?;
                started = cluster.spawn(&mut node).await;
                if started.is_ok() {
                    break;
                }
            }
            started?;
            cluster.nodes.push(node);
        }
        cluster.create().await?;
        cluster
            .wait_for("the new cluster to be ok", |c| c.settled(true))
            .await?;
        Ok(cluster)
    }

    async fn spawn(&self, node: &mut Node) -> io::Result<()> {
        let port = node.server.port.to_string();
        let mut cmd = Command::new("redis-server");
        match &self.tls {
            None => {
                cmd.args(["--port", &port]);
            }
            Some(files) => {
                cmd.args(["--port", "0", "--tls-port", &port])
                    .args(files.server_args())
                    .args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            }
        }
        cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", "nodes.conf"])
            .args(["--cluster-node-timeout", &self.node_timeout_ms.to_string()])
            .args(["--cluster-require-full-coverage", "no"])
            .args(["--cluster-replica-validity-factor", "0"])
            .args(["--cluster-allow-replica-migration", "no"])
            .args(["--repl-diskless-sync-delay", "0"])
            .arg("--dir")
            .arg(&node.dir)
            // nodes.conf is relative to the working dir as well.
            .current_dir(&node.dir);
        let dialer = self.dialer.clone();
        node.server
            .spawn(
                &mut cmd,
                NODE_START_TIMEOUT,
                Duration::from_millis(20),
                |port| {
                    let dialer = dialer.clone();
                    async move { is_pong(dialer.cmd(port, &["PING"]).await) }
                },
            )
            .await
            .map_err(|e| match e.kind() {
                io::ErrorKind::NotFound => io::Error::new(
                    e.kind(),
                    format!("{e}; install it (apt-get install -y redis-server; tests/run.sh does)"),
                ),
                _ => e,
            })
    }

    /// `redis-cli --cluster create` over all nodes, one replica each.
    async fn create(&self) -> io::Result<()> {
        let mut cmd = tokio::process::Command::new("redis-cli");
        if let Some(files) = &self.tls {
            cmd.arg("--tls").arg("--cacert").arg(&files.ca_pem);
        }
        cmd.args(["--cluster", "create"])
            .args(self.ports().iter().map(|p| format!("127.0.0.1:{p}")))
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        let out = match tokio::time::timeout(CREATE_TIMEOUT, cmd.output()).await {
            Ok(out) => out.map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot run redis-cli --cluster create ({e})"),
                )
            })?,
            Err(_) => {
                return Err(io::Error::other(format!(
                    "redis-cli --cluster create did not finish within {CREATE_TIMEOUT:?}\n{}",
                    self.diagnostics()
                )))
            }
        };
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "redis-cli --cluster create failed ({}):\n{}{}\n{}",
                out.status,
                tail(&String::from_utf8_lossy(&out.stdout), 20),
                tail(&String::from_utf8_lossy(&out.stderr), 20),
                self.diagnostics()
            )));
        }
        Ok(())
    }

    /// `redis://127.0.0.1:P` (`rediss://` for TLS) of every node, killed
    /// ones included (a client's seed list is written before any failure).
    pub fn seeds(&self) -> Vec<String> {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        self.ports()
            .into_iter()
            .map(|p| format!("{scheme}://127.0.0.1:{p}"))
            .collect()
    }

    /// Every node's port (the TLS port for a TLS cluster), killed ones
    /// included.
    pub fn ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.server.port).collect()
    }

    /// The ports of the nodes not killed by [`RedisCluster::kill_node`].
    pub fn live_ports(&self) -> Vec<u16> {
        self.ports()
            .into_iter()
            .filter(|p| !self.killed.contains_key(p))
            .collect()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The CA certificate (PEM) a client must trust, for a TLS cluster.
    pub fn ca_pem_path(&self) -> Option<&Path> {
        self.tls.as_ref().map(|f| f.ca_pem.as_path())
    }

    /// The certificate files, for a TLS cluster.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// [`slot_of`], here for callers holding a cluster.
    pub fn slot_of(key: &[u8]) -> u16 {
        slot_of(key)
    }

    /// Sends one command to the node on `port` (no redirects followed).
    pub async fn command<A: AsRef<[u8]>>(&self, port: u16, args: &[A]) -> io::Result<Reply> {
        self.dialer.cmd(port, args).await
    }

    /// Sends a command about `key` the way a cluster client does: to the
    /// slot's primary, following `MOVED` and `ASK` (with `ASKING`)
    /// redirects. A server error other than a redirect is returned as the
    /// reply.
    pub async fn keyed_command<A: AsRef<[u8]>>(&self, key: &[u8], args: &[A]) -> io::Result<Reply> {
        let mut port = self.primary_of_slot(slot_of(key)).await?;
        let mut asking = false;
        for _ in 0..8 {
            let reply = if asking {
                let args: Vec<&[u8]> = args.iter().map(AsRef::as_ref).collect();
                self.dialer.cmd_after_asking(port, &args).await?
            } else {
                self.dialer.cmd(port, args).await?
            };
            match &reply {
                Reply::Error(e) if e.starts_with("MOVED ") || e.starts_with("ASK ") => {
                    asking = e.starts_with("ASK ");
                    port = redirect_port(e)?;
                }
                _ => return Ok(reply),
            }
        }
        Err(io::Error::other(format!(
            "too many redirects for key {:?}",
            String::from_utf8_lossy(key)
        )))
    }

    /// `SET key value` through [`RedisCluster::keyed_command`]; a server
    /// error is an `io::Error`.
    pub async fn set(&self, key: &[u8], value: &[u8]) -> io::Result<()> {
        self.keyed_command(key, &[b"SET" as &[u8], key, value])
            .await?
            .ok_or_err("SET")
            .map(drop)
    }

    /// `GET key` through [`RedisCluster::keyed_command`].
    pub async fn get(&self, key: &[u8]) -> io::Result<Option<Vec<u8>>> {
        match self
            .keyed_command(key, &[b"GET" as &[u8], key])
            .await?
            .ok_or_err("GET")?
        {
            Reply::Bulk(v) => Ok(v),
            other => Err(io::Error::other(format!("GET: unexpected {other:?}"))),
        }
    }

    /// `CLUSTER SLOTS` as one live node sees it, sorted by slot.
    pub async fn slot_map(&self) -> io::Result<Vec<SlotRange>> {
        let mut last = io::Error::other("no live node");
        for port in self.live_ports() {
            match self.slot_map_of(port).await {
                Ok(map) => return Ok(map),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// `CLUSTER SLOTS` as the node on `port` sees it, sorted by slot.
    pub async fn slot_map_of(&self, port: u16) -> io::Result<Vec<SlotRange>> {
        let reply = self
            .dialer
            .cmd(port, &["CLUSTER", "SLOTS"])
            .await?
            .ok_or_err("CLUSTER SLOTS")?;
        let bad = || io::Error::other(format!("127.0.0.1:{port}: odd CLUSTER SLOTS reply"));
        let port_of = |node: &Reply| -> io::Result<u16> {
            node.items()
                .get(1)
                .and_then(Reply::int)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or_else(bad)
        };
        let mut map = Vec::new();
        for range in reply.items() {
            let items = range.items();
            let num = |i: usize| {
                items
                    .get(i)
                    .and_then(Reply::int)
                    .and_then(|n| u16::try_from(n).ok())
                    .ok_or_else(bad)
            };
            map.push(SlotRange {
                start: num(0)?,
                end: num(1)?,
                primary: port_of(items.get(2).ok_or_else(bad)?)?,
                replicas: items[3.min(items.len())..]
                    .iter()
                    .map(port_of)
                    .collect::<io::Result<_>>()?,
            });
        }
        map.sort_by_key(|r| r.start);
        Ok(map)
    }

    /// The port of the primary serving `slot`, as a live node sees it.
    pub async fn primary_of_slot(&self, slot: u16) -> io::Result<u16> {
        let map = self.slot_map().await?;
        owner(&map, slot).ok_or_else(|| {
            io::Error::other(format!(
                "no node serves slot {slot} (CLUSTER SLOTS: {map:?})"
            ))
        })
    }

    /// The ports of the primaries that serve slots, sorted.
    pub async fn primaries(&self) -> io::Result<Vec<u16>> {
        let map = self.slot_map().await?;
        let set: BTreeSet<u16> = map.iter().map(|r| r.primary).collect();
        Ok(set.into_iter().collect())
    }

    /// A primary other than the one on `port` (where to move a slot, or a
    /// node to watch while `port` is down).
    pub async fn other_primary(&self, port: u16) -> io::Result<u16> {
        self.primaries()
            .await?
            .into_iter()
            .find(|&p| p != port)
            .ok_or_else(|| io::Error::other(format!("no primary besides 127.0.0.1:{port}")))
    }

    /// The ports of the (not failed) replicas of those primaries, sorted.
    pub async fn replicas(&self) -> io::Result<Vec<u16>> {
        let map = self.slot_map().await?;
        let set: BTreeSet<u16> = map.iter().flat_map(|r| r.replicas.clone()).collect();
        Ok(set.into_iter().collect())
    }

    /// The ports of the (not failed) replicas of `primary`, sorted.
    pub async fn replicas_of(&self, primary: u16) -> io::Result<Vec<u16>> {
        let map = self.slot_map().await?;
        let set: BTreeSet<u16> = map
            .iter()
            .filter(|r| r.primary == primary)
            .flat_map(|r| r.replicas.clone())
            .collect();
        Ok(set.into_iter().collect())
    }

    /// Waits until every primary's writes so far reached its replica
    /// (`WAIT 1`): after this, killing a primary loses no key written
    /// before. Fails when a primary has no replica acknowledging.
    pub async fn wait_replicated(&self) -> io::Result<()> {
        for primary in self.primaries().await? {
            let reply = self
                .dialer
                .cmd(primary, &["WAIT", "1", "10000"])
                .await?
                .ok_or_err("WAIT")?;
            if reply.int().unwrap_or(0) < 1 {
                return Err(io::Error::other(format!(
                    "primary 127.0.0.1:{primary}: no replica acknowledged its writes within 10 s ({reply:?})\n{}",
                    self.diagnostics()
                )));
            }
        }
        Ok(())
    }

    /// Kills the node on `port` now (SIGKILL, with its process group): to
    /// the cluster and its clients, a crashed server. Notes the slots it
    /// served and its replicas for [`RedisCluster::wait_failover`].
    pub async fn kill_node(&mut self, port: u16) -> io::Result<()> {
        let Some(i) = self.nodes.iter().position(|n| n.server.port == port) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "no node on port {port} in this cluster ({:?})",
                    self.ports()
                ),
            ));
        };
        if self.killed.contains_key(&port) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node 127.0.0.1:{port} is already killed"),
            ));
        }
        // Its own view: it is alive and knows what it serves.
        let map = self.slot_map_of(port).await?;
        let mine: Vec<&SlotRange> = map.iter().filter(|r| r.primary == port).collect();
        let slots = mine.iter().map(|r| (r.start, r.end)).collect();
        // From CLUSTER NODES, not the slot map: a replica the cluster has
        // flagged failed (paused by a test, say) is left out of CLUSTER
        // SLOTS, yet it is still the one that takes over once it is back.
        let replicas = self.all_replicas_of(port).await?;
        self.nodes[i].server.kill();
        self.killed.insert(
            port,
            Killed {
                at: Instant::now(),
                slots,
                replicas,
            },
        );
        Ok(())
    }

    /// Waits until the cluster has replaced the primary killed on
    /// `killed_port`: one of its replicas serves all its slots, and every
    /// surviving node says `cluster_state:ok`, serves all 16384 slots
    /// (`cluster_slots_ok`) and agrees on who serves them. Returns the
    /// promoted port and the time since the kill.
    pub async fn wait_failover(&self, killed_port: u16) -> io::Result<(u16, Duration)> {
        let Some(killed) = self.killed.get(&killed_port) else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node 127.0.0.1:{killed_port} was not killed by kill_node"),
            ));
        };
        if killed.slots.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "node 127.0.0.1:{killed_port} was a replica: there is no failover to wait for"
                ),
            ));
        }
        let promoted = self
            .wait_for(
                &format!("failover of 127.0.0.1:{killed_port}"),
                |c| async move {
                    let map = c.settled(false).await?;
                    let owners: BTreeSet<Option<u16>> = killed
                        .slots
                        .iter()
                        .flat_map(|&(start, end)| [owner(&map, start), owner(&map, end)])
                        .collect();
                    match owners.into_iter().collect::<Vec<_>>()[..] {
                        [Some(p)] if killed.replicas.contains(&p) => Ok(p),
                        [Some(p)] => Err(format!(
                            "its slots are served by 127.0.0.1:{p}, not one of its replicas {:?}",
                            killed.replicas
                        )),
                        ref o => Err(format!("its slots are served by {o:?}")),
                    }
                },
            )
            .await?;
        Ok((promoted, killed.at.elapsed()))
    }

    /// Freezes the node on `port` (SIGSTOP to its process group): it
    /// keeps its connections but processes nothing, replication included,
    /// until [`RedisCluster::resume_node`].
    pub fn pause_node(&self, port: u16) -> io::Result<()> {
        self.node(port)?.server.signal("STOP")
    }

    /// Lets a paused node run again (SIGCONT).
    pub fn resume_node(&self, port: u16) -> io::Result<()> {
        self.node(port)?.server.signal("CONT")
    }

    fn node(&self, port: u16) -> io::Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.server.port == port)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!(
                        "no node on port {port} in this cluster ({:?})",
                        self.ports()
                    ),
                )
            })
    }

    /// Starts a killed node again on its port and dir. Its `nodes.conf`
    /// makes it rejoin; a killed primary comes back as a replica of the
    /// primary with the fewest replicas (the one promoted in its place).
    /// Redis does that by itself only when all of its old slots went to one
    /// node; when some were migrated elsewhere meanwhile it stays a primary
    /// without slots, and this sends `CLUSTER REPLICATE` as an operator
    /// would. Waits until the cluster is settled with it (its replica link
    /// up).
    pub async fn restart_node(&mut self, port: u16) -> io::Result<()> {
        if self.killed.remove(&port).is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("node 127.0.0.1:{port} is not a killed node of this cluster"),
            ));
        }
        let Some(i) = self.nodes.iter().position(|n| n.server.port == port) else {
            return Err(io::Error::other("killed node vanished"));
        };
        let mut node = self.nodes.remove(i);
        let spawned = self.spawn(&mut node).await;
        self.nodes.insert(i, node);
        spawned?;
        self.wait_for(&format!("127.0.0.1:{port} to rejoin"), |c| async move {
            let map = c.settled(false).await?;
            if map
                .iter()
                .any(|r| r.primary == port || r.replicas.contains(&port))
            {
                return c.replica_links_up(&map).await;
            }
            c.replicate_if_orphan(port, &map).await?;
            Err(format!("127.0.0.1:{port} is in no slot range yet"))
        })
        .await?;
        Ok(())
    }

    /// When the node on `port` thinks itself a primary without slots, tells
    /// it to replicate the primary in `map` with the fewest replicas.
    async fn replicate_if_orphan(&self, port: u16, map: &[SlotRange]) -> Result<(), String> {
        let own = self
            .slot_map_of(port)
            .await
            .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
        if own.iter().any(|r| r.primary == port) {
            return Err(format!("127.0.0.1:{port} still claims slots"));
        }
        let info = self.info_replication(port).await?;
        if !info.lines().any(|l| l.trim() == "role:master") {
            return Ok(());
        }
        let mut replicas: HashMap<u16, usize> = HashMap::new();
        for r in map {
            *replicas.entry(r.primary).or_default() += r.replicas.len();
        }
        let Some((&target, _)) = replicas.iter().min_by_key(|&(p, n)| (*n, *p)) else {
            return Err("no primary to replicate".into());
        };
        let id = self.myid(target).await.map_err(|e| e.to_string())?;
        match self.dialer.cmd(port, &["CLUSTER", "REPLICATE", &id]).await {
            Ok(Reply::Error(e)) => Err(format!(
                "127.0.0.1:{port} CLUSTER REPLICATE 127.0.0.1:{target}: -{e}"
            )),
            Err(e) => Err(format!("127.0.0.1:{port}: {e}")),
            Ok(_) => Ok(()),
        }
    }

    /// Moves `slot` and its keys to the primary on `to_port`, live, the way
    /// `redis-cli --cluster reshard` does: `SETSLOT IMPORTING` on the
    /// target, `MIGRATING` on the source, `GETKEYSINSLOT` + `MIGRATE ...
    /// KEYS` in batches until the slot is empty on the source, then
    /// `SETSLOT NODE` on the target, the source and every other primary.
    /// Waits until every live node says the target serves the slot.
    /// Clients meanwhile get `ASK` for keys already moved, as in
    /// production.
    pub async fn migrate_slot(&self, slot: u16, to_port: u16) -> io::Result<()> {
        if slot >= SLOTS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("slot {slot} is not below {SLOTS}"),
            ));
        }
        let map = self.slot_map().await?;
        let from = owner(&map, slot)
            .ok_or_else(|| io::Error::other(format!("no node serves slot {slot}")))?;
        if from == to_port {
            return Ok(());
        }
        let primaries: BTreeSet<u16> = map.iter().map(|r| r.primary).collect();
        if !primaries.contains(&to_port) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("127.0.0.1:{to_port} is not a live primary ({primaries:?})"),
            ));
        }
        let from_id = self.myid(from).await?;
        let to_id = self.myid(to_port).await?;
        let slot_s = slot.to_string();
        let setslot = |state: &'static str, id: &str| {
            vec![
                "CLUSTER".to_string(),
                "SETSLOT".into(),
                slot_s.clone(),
                state.into(),
                id.into(),
            ]
        };
        self.must(to_port, &setslot("IMPORTING", &from_id)).await?;
        self.must(from, &setslot("MIGRATING", &to_id)).await?;
        let batch = MIGRATE_BATCH.to_string();
        loop {
            let keys = self
                .must(from, &["CLUSTER", "GETKEYSINSLOT", &slot_s, &batch])
                .await?;
            let keys: Vec<Vec<u8>> = keys
                .items()
                .iter()
                .filter_map(|k| match k {
                    Reply::Bulk(Some(k)) => Some(k.clone()),
                    _ => None,
                })
                .collect();
            if keys.is_empty() {
                break;
            }
            // REPLACE: a batch retried after a half-done MIGRATE must not
            // fail on the keys that already arrived.
            let to = to_port.to_string();
            let mut args: Vec<&[u8]> = vec![
                b"MIGRATE",
                b"127.0.0.1",
                to.as_bytes(),
                b"",
                b"0",
                b"10000",
                b"REPLACE",
                b"KEYS",
            ];
            args.extend(keys.iter().map(Vec::as_slice));
            self.must(from, &args).await?;
        }
        let node = setslot("NODE", &to_id);
        self.must(to_port, &node).await?;
        self.must(from, &node).await?;
        for p in primaries {
            if p != from && p != to_port {
                self.must(p, &node).await?;
            }
        }
        self.wait_for(
            &format!("slot {slot} to move to 127.0.0.1:{to_port}"),
            |c| async move {
                let map = c.settled(false).await?;
                match owner(&map, slot) {
                    Some(p) if p == to_port => Ok(()),
                    o => Err(format!("slot {slot} is served by {o:?}")),
                }
            },
        )
        .await
    }

    /// The last lines of the log of the node on `port`.
    pub fn log_tail(&self, port: u16) -> String {
        self.nodes
            .iter()
            .find(|n| n.server.port == port)
            .map(|n| n.server.log_tail())
            .unwrap_or_default()
    }

    /// Every replica of the node on `port` as it lists them in `CLUSTER
    /// NODES`, failed or not, sorted.
    async fn all_replicas_of(&self, port: u16) -> io::Result<Vec<u16>> {
        let id = self.myid(port).await?;
        let nodes = self
            .must(port, &["CLUSTER", "NODES"])
            .await?
            .text()
            .ok_or_else(|| {
                io::Error::other(format!("127.0.0.1:{port}: CLUSTER NODES is not text"))
            })?;
        let replicas: BTreeSet<u16> = nodes
            .lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                // <id> <ip:port@cport> <flags> <primary id> ...
                if fields.get(3) != Some(&id.as_str()) {
                    return None;
                }
                let addr = fields.get(1)?.split('@').next()?;
                addr.rsplit_once(':')?.1.parse().ok()
            })
            .collect();
        Ok(replicas.into_iter().collect())
    }

    async fn myid(&self, port: u16) -> io::Result<String> {
        self.must(port, &["CLUSTER", "MYID"])
            .await?
            .text()
            .ok_or_else(|| io::Error::other(format!("127.0.0.1:{port}: CLUSTER MYID is not text")))
    }

    /// Sends a command that must succeed; a server error is an `io::Error`
    /// naming the node and command, with the node's log tail.
    async fn must<A: AsRef<[u8]>>(&self, port: u16, args: &[A]) -> io::Result<Reply> {
        let what = || {
            let words: Vec<String> = args
                .iter()
                .take(5)
                .map(|a| String::from_utf8_lossy(a.as_ref()).into_owned())
                .collect();
            format!("127.0.0.1:{port} `{}`", words.join(" "))
        };
        match self.dialer.cmd(port, args).await {
            Ok(Reply::Error(e)) => Err(io::Error::other(format!(
                "{}: -{e}\n{}",
                what(),
                self.log_tail(port)
            ))),
            Ok(r) => Ok(r),
            Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", what()))),
        }
    }

    /// `Ok(slot map)` when every live node says `cluster_state:ok`, serves
    /// all 16384 slots, and reports the same primaries for the same ranges,
    /// none of them a killed node. With `initial`, also three primaries,
    /// each with a replica whose link is up. `Err` says what is not so yet.
    async fn settled(&self, initial: bool) -> Result<Vec<SlotRange>, String> {
        let mut agreed: Option<(u16, Vec<SlotRange>)> = None;
        for port in self.live_ports() {
            let info = self
                .dialer
                .cmd(port, &["CLUSTER", "INFO"])
                .await
                .map_err(|e| format!("127.0.0.1:{port}: CLUSTER INFO: {e}"))?
                .text()
                .unwrap_or_default();
            for (field, want) in [
                ("cluster_state", "ok"),
                ("cluster_slots_assigned", "16384"),
                ("cluster_slots_ok", "16384"),
            ] {
                let got = info.lines().find_map(|l| {
                    l.trim()
                        .strip_prefix(&format!("{field}:"))
                        .map(str::to_string)
                });
                if got.as_deref() != Some(want) {
                    return Err(format!("127.0.0.1:{port} says {field}:{got:?}"));
                }
            }
            let map = self
                .slot_map_of(port)
                .await
                .map_err(|e| format!("127.0.0.1:{port}: {e}"))?;
            if let Some(r) = map.iter().find(|r| self.killed.contains_key(&r.primary)) {
                return Err(format!(
                    "127.0.0.1:{port} says killed 127.0.0.1:{} serves {}-{}",
                    r.primary, r.start, r.end
                ));
            }
            let mut next = 0u32;
            for r in &map {
                if u32::from(r.start) != next || r.end < r.start {
                    return Err(format!(
                        "127.0.0.1:{port}: CLUSTER SLOTS has a gap or overlap at {next}: {map:?}"
                    ));
                }
                next = u32::from(r.end) + 1;
            }
            if next != u32::from(SLOTS) {
                return Err(format!("127.0.0.1:{port}: CLUSTER SLOTS ends at {next}"));
            }
            let primaries = |m: &[SlotRange]| -> Vec<(u16, u16, u16)> {
                m.iter().map(|r| (r.start, r.end, r.primary)).collect()
            };
            match &agreed {
                None => agreed = Some((port, map)),
                Some((first, a)) if primaries(a) != primaries(&map) => {
                    return Err(format!(
                        "127.0.0.1:{first} and 127.0.0.1:{port} disagree on who serves what: {:?} vs {:?}",
                        primaries(a),
                        primaries(&map)
                    ))
                }
                Some(_) => {}
            }
        }
        let map = agreed.map(|(_, m)| m).ok_or("no live node")?;
        if initial {
            let primaries: BTreeSet<u16> = map.iter().map(|r| r.primary).collect();
            if primaries.len() != NODES / 2 {
                return Err(format!("{} primaries, not {}", primaries.len(), NODES / 2));
            }
            if let Some(r) = map.iter().find(|r| r.replicas.is_empty()) {
                return Err(format!("slots {}-{} have no replica yet", r.start, r.end));
            }
            self.replica_links_up(&map).await?;
        }
        Ok(map)
    }

    /// `INFO replication` of the node on `port`, as text.
    async fn info_replication(&self, port: u16) -> Result<String, String> {
        Ok(self
            .dialer
            .cmd(port, &["INFO", "replication"])
            .await
            .map_err(|e| format!("127.0.0.1:{port}: INFO: {e}"))?
            .text()
            .unwrap_or_default())
    }

    /// `Ok` when every replica in `map` says `master_link_status:up`.
    async fn replica_links_up(&self, map: &[SlotRange]) -> Result<(), String> {
        let replicas: BTreeSet<u16> = map.iter().flat_map(|r| r.replicas.clone()).collect();
        for port in replicas {
            let info = self.info_replication(port).await?;
            if !info.lines().any(|l| l.trim() == "master_link_status:up") {
                return Err(format!(
                    "replica 127.0.0.1:{port}: link to its primary not up yet"
                ));
            }
        }
        Ok(())
    }

    /// Polls `check` every [`POLL_EVERY`] until it says `Ok`; after
    /// [`CONVERGE_TIMEOUT`], fails with its last `Err` and every node's
    /// log tail.
    async fn wait_for<'a, T, F, Fut>(&'a self, what: &str, mut check: F) -> io::Result<T>
    where
        F: FnMut(&'a RedisCluster) -> Fut,
        Fut: Future<Output = Result<T, String>> + 'a,
    {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        loop {
            let last = match check(self).await {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{what}: not within {CONVERGE_TIMEOUT:?}; last seen: {last}\n{}",
                        self.diagnostics()
                    ),
                ));
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    /// Every node's state and log tail, for error messages.
    fn diagnostics(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let state = if self.killed.contains_key(&n.server.port) {
                "killed"
            } else {
                "started"
            };
            out.push_str(&format!(
                "--- node 127.0.0.1:{} ({state}), {}:\n{}\n",
                n.server.port,
                n.server.log.display(),
                tail(&n.server.log_tail(), 8)
            ));
        }
        out
    }
}

/// The primary serving `slot` in `map`.
fn owner(map: &[SlotRange], slot: u16) -> Option<u16> {
    map.iter()
        .find(|r| r.start <= slot && slot <= r.end)
        .map(|r| r.primary)
}

/// The port in `MOVED 3999 127.0.0.1:6381` / `ASK ...`.
fn redirect_port(err: &str) -> io::Result<u16> {
    err.split_whitespace()
        .nth(2)
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| io::Error::other(format!("odd redirect: {err}")))
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // Values from the Redis Cluster spec and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(slot_of(b"123456789"), 12739);
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"bar"), 5061);
        assert_eq!(
            slot_of(b"{user1000}.following"),
            slot_of(b"{user1000}.followers")
        );
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        // An empty tag does not count: the whole key is hashed.
        assert_eq!(slot_of(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        // Only the first `{` and the first `}` after it count.
        assert_eq!(slot_of(b"foo{{bar}}zap"), slot_of(b"{bar"));
        assert_eq!(slot_of(b"foo{bar}{zap}"), slot_of(b"bar"));
        assert_eq!(slot_of(b""), 0);
    }

    #[test]
    fn cluster_ports_leave_room_for_the_bus() {
        let mut seen = BTreeSet::new();
        for _ in 0..20 {
            let p = free_cluster_port().expect("port");
            assert!(p < 55535, "{p}");
            assert!(
                seen.insert(p) && seen.insert(p + 10000),
                "{p} handed out twice"
            );
        }
        for _ in 0..50 {
            let p = crate::free_port().expect("port");
            assert!(!seen.contains(&p), "free_port handed out cluster port {p}");
        }
    }

    #[test]
    fn parses_redirects() {
        assert_eq!(
            redirect_port("MOVED 3999 127.0.0.1:6381").expect("moved"),
            6381
        );
        assert_eq!(redirect_port("ASK 3999 127.0.0.1:7000").expect("ask"), 7000);
        assert!(redirect_port("MOVED").is_err());
    }
}

/// Whole-cluster tests: real processes, a few seconds each.
#[cfg(test)]
mod cluster_tests {
    use super::*;

    fn keys(n: usize) -> Vec<Vec<u8>> {
        (0..n).map(|i| format!("key:{i}").into_bytes()).collect()
    }

    async fn write_and_check(cluster: &RedisCluster, keys: &[Vec<u8>]) {
        for k in keys {
            cluster.set(k, k).await.expect("SET");
        }
        check_all(cluster, keys).await;
    }

    async fn check_all(cluster: &RedisCluster, keys: &[Vec<u8>]) {
        for k in keys {
            let got = cluster.get(k).await.expect("GET");
            assert_eq!(
                got.as_deref(),
                Some(k.as_slice()),
                "key {}",
                String::from_utf8_lossy(k)
            );
        }
    }

    #[tokio::test]
    async fn cluster_fails_over_and_reshards_without_losing_keys() {
        let mut cluster = RedisCluster::start().await.expect("start cluster");
        let ports = cluster.ports();
        assert_eq!(ports.len(), 6);
        assert!(ports.iter().all(|&p| p < 55535), "{ports:?}");
        assert_eq!(
            cluster.seeds()[0],
            format!("redis://127.0.0.1:{}", ports[0])
        );
        let primaries = cluster.primaries().await.expect("primaries");
        let replicas = cluster.replicas().await.expect("replicas");
        assert_eq!(primaries.len(), 3, "{primaries:?}");
        assert_eq!(replicas.len(), 3, "{replicas:?}");

        // The harness's slot function is the server's.
        for k in [
            &b"foo"[..],
            b"123456789",
            b"{user1000}.following",
            b"key:17",
        ] {
            let r = cluster
                .command(ports[0], &[b"CLUSTER" as &[u8], b"KEYSLOT", k])
                .await
                .expect("KEYSLOT");
            assert_eq!(r, Reply::Int(i64::from(slot_of(k))));
        }

        let keys = keys(600);
        let slots: BTreeSet<u16> = keys.iter().map(|k| slot_of(k)).collect();
        assert!(slots.len() > 500, "keys over {} slots only", slots.len());
        write_and_check(&cluster, &keys).await;
        cluster.wait_replicated().await.expect("replicated");

        // Fail over the primary of "key:0".
        let victim = cluster
            .primary_of_slot(slot_of(b"key:0"))
            .await
            .expect("owner");
        let its_replicas = cluster.replicas_of(victim).await.expect("replicas_of");
        cluster.kill_node(victim).await.expect("kill");
        let (promoted, took) = cluster.wait_failover(victim).await.expect("failover");
        eprintln!("failover of 127.0.0.1:{victim} to 127.0.0.1:{promoted} took {took:?}");
        assert!(
            its_replicas.contains(&promoted),
            "{promoted} not in {its_replicas:?}"
        );
        assert_eq!(
            cluster
                .primary_of_slot(slot_of(b"key:0"))
                .await
                .expect("owner"),
            promoted
        );
        assert!(!cluster.live_ports().contains(&victim));
        check_all(&cluster, &keys).await;
        assert!(cluster.wait_failover(promoted).await.is_err(), "not killed");

        // Move the slot of "key:0" (with its keys) from the promoted node
        // to another primary. (So the killed node's old slots are now on
        // two nodes: restarting it below takes CLUSTER REPLICATE.)
        let slot = slot_of(b"key:0");
        let from = cluster.primary_of_slot(slot).await.expect("owner");
        assert_eq!(from, promoted);
        let to = cluster.other_primary(from).await.expect("another primary");
        let in_slot = keys.iter().filter(|k| slot_of(k) == slot).count();
        assert!(in_slot > 0);
        cluster.migrate_slot(slot, to).await.expect("migrate");
        assert_eq!(cluster.primary_of_slot(slot).await.expect("owner"), to);
        let count = |port| {
            let cluster = &cluster;
            async move {
                cluster
                    .command(port, &["CLUSTER", "COUNTKEYSINSLOT", &slot.to_string()])
                    .await
                    .expect("COUNTKEYSINSLOT")
            }
        };
        assert_eq!(count(to).await, Reply::Int(in_slot as i64));
        assert_eq!(count(from).await, Reply::Int(0));
        // Every node, replicas included, redirects there.
        for p in cluster.live_ports() {
            if p == to {
                continue;
            }
            let r = cluster.command(p, &["GET", "key:0"]).await.expect("GET");
            let want = format!("MOVED {slot} 127.0.0.1:{to}");
            assert_eq!(r, Reply::Error(want), "127.0.0.1:{p}");
        }
        check_all(&cluster, &keys).await;

        // The killed primary comes back as a replica of its successor.
        cluster.restart_node(victim).await.expect("restart");
        assert_eq!(
            cluster.replicas_of(promoted).await.expect("replicas_of"),
            vec![victim]
        );
        check_all(&cluster, &keys).await;
    }

    #[tokio::test]
    async fn follows_ask_during_a_half_done_migration() {
        let cluster = RedisCluster::start().await.expect("start cluster");
        // Two keys in one slot (one hash tag).
        let (a, b) = (&b"{tag}a"[..], &b"{tag}b"[..]);
        cluster.set(a, b"1").await.expect("SET a");
        cluster.set(b, b"2").await.expect("SET b");
        let slot = slot_of(a);
        let from = cluster.primary_of_slot(slot).await.expect("owner");
        let to = cluster.other_primary(from).await.expect("another primary");
        let id = |p: u16| {
            let cluster = &cluster;
            async move { cluster.myid(p).await.expect("myid") }
        };
        let (from_id, to_id) = (id(from).await, id(to).await);
        let s = slot.to_string();
        cluster
            .must(to, &["CLUSTER", "SETSLOT", &s, "IMPORTING", &from_id])
            .await
            .expect("IMPORTING");
        cluster
            .must(from, &["CLUSTER", "SETSLOT", &s, "MIGRATING", &to_id])
            .await
            .expect("MIGRATING");
        let to_s = to.to_string();
        cluster
            .must(
                from,
                &[
                    b"MIGRATE" as &[u8],
                    b"127.0.0.1",
                    to_s.as_bytes(),
                    a,
                    b"0",
                    b"5000",
                ],
            )
            .await
            .expect("MIGRATE one key");
        // a is on the target now (ASK), b still on the source.
        let r = cluster
            .command(from, &[b"GET" as &[u8], a])
            .await
            .expect("GET");
        assert!(
            matches!(&r, Reply::Error(e) if e.starts_with("ASK ")),
            "{r:?}"
        );
        assert_eq!(
            cluster.get(a).await.expect("GET a").as_deref(),
            Some(&b"1"[..])
        );
        assert_eq!(
            cluster.get(b).await.expect("GET b").as_deref(),
            Some(&b"2"[..])
        );
        // migrate_slot finishes a migration already under way.
        cluster.migrate_slot(slot, to).await.expect("migrate");
        assert_eq!(cluster.primary_of_slot(slot).await.expect("owner"), to);
        assert_eq!(
            cluster.get(b).await.expect("GET b").as_deref(),
            Some(&b"2"[..])
        );
    }

    #[tokio::test]
    async fn tls_cluster_serves_and_reshards() {
        let cluster = RedisCluster::start_tls().await.expect("start TLS cluster");
        assert!(cluster.is_tls());
        assert!(cluster
            .seeds()
            .iter()
            .all(|s| s.starts_with("rediss://127.0.0.1:")));
        let ca = cluster.ca_pem_path().expect("CA");
        let port = cluster.ports()[0];

        // redis-cli over TLS, cluster mode, trusting only the test CA.
        let out = Command::new("redis-cli")
            .arg("--tls")
            .arg("--cacert")
            .arg(ca)
            .args(["-c", "-p", &port.to_string(), "CLUSTER", "INFO"])
            .output()
            .expect("redis-cli");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("cluster_state:ok"), "{text}");

        let keys = keys(100);
        write_and_check(&cluster, &keys).await;
        // MIGRATE between nodes goes over TLS too (tls-cluster).
        let slot = slot_of(&keys[0]);
        let from = cluster.primary_of_slot(slot).await.expect("owner");
        let to = cluster.other_primary(from).await.expect("another primary");
        cluster.migrate_slot(slot, to).await.expect("migrate");
        check_all(&cluster, &keys).await;
        cluster
            .wait_replicated()
            .await
            .expect("replicated over TLS");
    }
}
