//! The Redis tier and the backplane on a real six-node Redis Cluster (3
//! primaries, 3 replicas, `tests/harness`): 10 000 ids over every slot
//! written, read back by a second instance and invalidated; a primary
//! killed under load (the one holding the backplane's log); a slot moved
//! under load (a profile's, and the log's). Verdicts are counts
//! (failed requests, origin calls, stale reads, hits); the waits are gates
//! on the cluster's and the instances' own state, never sleeps.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use http::{Method, StatusCode};
use profile_edge::testkit::{user_id, SimOrigin};
use profile_edge::App;
use profile_edge_harness::RedisCluster;
use serde_json::{json, Value};
use support::*;

const PREFIX: &str = "pe:test:";
const CHANNEL: &str = "pe:test:cluster";

async fn cluster() -> RedisCluster {
    RedisCluster::start()
        .await
        .unwrap_or_else(|e| panic!("cannot start the Redis Cluster: {e}"))
}

/// `[tiers.redis]` on the cluster plus the backplane on it. The timeouts
/// have room (a loaded machine must not make a healthy node look failed);
/// a dead node refuses connections at once, so they are not what a
/// failover costs.
fn cluster_config(sim: &SimOrigin, c: &RedisCluster) -> String {
    let nodes: Vec<String> = c.seeds().iter().map(|s| format!("{s:?}")).collect();
    profile_config(
        &sim.officer_url(),
        &format!(
            "[tiers.redis]\nmode = \"cluster\"\nnodes = [{}]\nttl = \"1h\"\nkey_prefix = \"{PREFIX}\"\n\
             timeout = \"2s\"\nconnect_timeout = \"500ms\"\nbreaker_cooldown = \"200ms\"\n\n\
             [backplane]\nchannel = \"{CHANNEL}\"\n\n",
            nodes.join(", ")
        ),
    )
}

/// Two instances on the cluster (tier and backplane), both backplanes
/// reading, and a client.
async fn two_instances(sim: &SimOrigin, c: &RedisCluster) -> (App, App, HttpClient) {
    let a = start_proxy(&cluster_config(sim, c)).await;
    let b = start_proxy(&cluster_config(sim, c)).await;
    let client = client();
    wait_backplane(&client, &a).await;
    wait_backplane(&client, &b).await;
    (a, b, client)
}

/// A direct cluster client for checks.
async fn direct(c: &RedisCluster) -> redis::cluster_async::ClusterConnection {
    redis::cluster::ClusterClient::new(c.seeds())
        .unwrap()
        .get_async_connection()
        .await
        .unwrap()
}

/// How many of `keys` hold a value starting with `head` (`PE2`: a record
/// of the tier; `PE2` then 2: a tombstone).
async fn count_values(
    conn: &mut redis::cluster_async::ClusterConnection,
    keys: &[String],
    head: &[u8],
) -> usize {
    let mut n = 0;
    for chunk in keys.chunks(500) {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(conn)
            .await
            .unwrap();
        n += values
            .iter()
            .filter(|v| v.as_ref().is_some_and(|v| v.starts_with(head)))
            .count();
    }
    n
}

async fn stats(client: &HttpClient, app: &App) -> Value {
    admin_stats(client, app.admin_addr()).await
}

async fn redis_hits(client: &HttpClient, app: &App) -> u64 {
    stats(client, app).await["tiers"]["redis"]["hits"]
        .as_u64()
        .expect("tiers.redis.hits")
}

async fn wait_backplane(client: &HttpClient, app: &App) {
    wait_until("backplane connected", || async {
        stats(client, app).await["backplane"]["connected"] == json!(true)
    })
    .await;
}

async fn messages_received(client: &HttpClient, app: &App) -> u64 {
    stats(client, app).await["backplane"]["messages_received"]
        .as_u64()
        .expect("backplane.messages_received")
}

/// GETs `ids` through `main`, 32 at a time; answers (id, status, tier).
async fn get_all(
    client: &HttpClient,
    main: SocketAddr,
    ids: &[String],
) -> Vec<(String, u16, String)> {
    stream::iter(ids.iter().cloned())
        .map(|id| async move {
            let (status, headers, _) = get(client, &format!("http://{main}/api/users/{id}")).await;
            let tier = headers
                .get("x-cache-tier")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            (id, status.as_u16(), tier)
        })
        .buffer_unordered(32)
        .collect()
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_ids_over_every_slot_are_written_read_back_and_invalidated() {
    const N: usize = 10_000;
    let c = cluster().await;
    let sim = sim_origin(N, Duration::ZERO).await;
    let (a, b, client) = two_instances(&sim, &c).await;
    let ids: Vec<String> = (0..N).map(user_id).collect();

    // Written: A loads every id from the origin into the cluster.
    for (id, status, tier) in get_all(&client, a.main_addr(), &ids).await {
        assert_eq!((status, tier.as_str()), (200, "origin"), "{id} through A");
    }
    let slots: BTreeSet<u16> = ids
        .iter()
        .map(|id| RedisCluster::slot_of(format!("{PREFIX}{id}").as_bytes()))
        .collect();
    let mut per_primary = HashMap::new();
    for s in &slots {
        *per_primary
            .entry(c.primary_of_slot(*s).await.unwrap())
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_primary.len(),
        3,
        "the ids' slots span every primary: {per_primary:?}"
    );
    let mut conn = direct(&c).await;
    let keys: Vec<String> = ids.iter().map(|id| format!("{PREFIX}{id}")).collect();
    let stored = count_values(&mut conn, &keys, b"PE2").await;
    assert_eq!(stored, N, "every id is in the cluster");

    // Read back by a second instance: every answer from Redis, no origin call.
    let origin_before = sim.stats().origin_calls();
    let hits_before = redis_hits(&client, &b).await;
    for (id, status, tier) in get_all(&client, b.main_addr(), &ids).await {
        assert_eq!((status, tier.as_str()), (200, "redis"), "{id} through B");
    }
    assert_eq!(sim.stats().origin_calls(), origin_before, "0 origin calls");
    assert_eq!(redis_hits(&client, &b).await - hits_before, N as u64);

    // Removed by an invalidation on A: every key is a tombstone, and B,
    // told by the backplane, loads each again from the origin.
    let received_before = messages_received(&client, &b).await;
    let a_admin = a.admin_addr();
    stream::iter(ids.iter())
        .for_each_concurrent(32, |id| {
            let client = &client;
            async move { purge(client, a_admin, id).await }
        })
        .await;
    let tombstones = count_values(&mut conn, &keys, b"PE2\x02").await;
    assert_eq!(tombstones, N, "every id removed from the cluster");
    wait_until("B applies every invalidation", || async {
        messages_received(&client, &b).await >= received_before + N as u64
    })
    .await;
    let origin_before = sim.stats().origin_calls();
    let sample: Vec<String> = ids.iter().step_by(100).cloned().collect();
    for (id, status, tier) in get_all(&client, b.main_addr(), &sample).await {
        assert_eq!(
            (status, tier.as_str()),
            (200, "origin"),
            "{id} after the invalidation"
        );
    }
    assert!(sim.stats().origin_calls() > origin_before);
    a.shutdown().await;
    b.shutdown().await;
}

/// Clients looping on ids through both instances until `stop`: counts
/// requests and failures (anything but a 200, or no answer).
struct Load {
    stop: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    failures: Arc<AtomicU64>,
    longest_us: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(mains: &[SocketAddr], warm: &[String], cold: Vec<String>) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let requests = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let longest_us = Arc::new(AtomicU64::new(0));
        let cold = Arc::new(std::sync::Mutex::new(cold));
        let mut tasks = Vec::new();
        for w in 0..8 {
            let main = mains[w % mains.len()];
            let warm = warm.to_vec();
            let (stop, requests, failures, longest_us, cold) = (
                stop.clone(),
                requests.clone(),
                failures.clone(),
                longest_us.clone(),
                cold.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let client = client();
                let mut i = w;
                while !stop.load(Ordering::SeqCst) {
                    // Every other request a cold id, while there are any.
                    let id = match (i % 2, cold.lock().unwrap().pop()) {
                        (0, Some(id)) => id,
                        _ => warm[i % warm.len()].clone(),
                    };
                    i += 1;
                    let started = Instant::now();
                    let req = http::Request::get(format!("http://{main}/api/users/{id}"))
                        .body(full(""))
                        .unwrap();
                    let ok =
                        match tokio::time::timeout(Duration::from_secs(30), client.request(req))
                            .await
                        {
                            Ok(Ok(resp)) => resp.status() == StatusCode::OK,
                            _ => false,
                        };
                    longest_us.fetch_max(started.elapsed().as_micros() as u64, Ordering::SeqCst);
                    requests.fetch_add(1, Ordering::SeqCst);
                    if !ok {
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }));
        }
        Load {
            stop,
            requests,
            failures,
            longest_us,
            tasks,
        }
    }

    /// Waits until `n` more requests were made (load really ran across
    /// whatever just happened).
    async fn run_past(&self, n: u64) {
        let target = self.requests.load(Ordering::SeqCst) + n;
        wait_until("the load makes progress", || async {
            self.requests.load(Ordering::SeqCst) >= target
        })
        .await;
    }

    async fn stop(self) -> (u64, u64, Duration) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.tasks {
            t.await.unwrap();
        }
        (
            self.requests.load(Ordering::SeqCst),
            self.failures.load(Ordering::SeqCst),
            Duration::from_micros(self.longest_us.load(Ordering::SeqCst)),
        )
    }
}

/// Ids whose keys live on `port` (by the cluster's map), from `range`.
async fn ids_on(
    c: &RedisCluster,
    port: u16,
    range: std::ops::Range<usize>,
    n: usize,
) -> Vec<String> {
    let mut out = Vec::new();
    for i in range {
        let id = user_id(i);
        let slot = RedisCluster::slot_of(format!("{PREFIX}{id}").as_bytes());
        if c.primary_of_slot(slot).await.unwrap() == port {
            out.push(id);
            if out.len() == n {
                break;
            }
        }
    }
    assert_eq!(out.len(), n, "enough ids on 127.0.0.1:{port}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_primary_killed_under_load_fails_no_request_and_the_tier_comes_back() {
    let mut c = cluster().await;
    let sim = sim_origin(5_000, Duration::ZERO).await;
    let (a, b, client) = two_instances(&sim, &c).await;

    // The victim: the primary holding the backplane's log, so the
    // subscriptions must come back too.
    let victim = c
        .primary_of_slot(RedisCluster::slot_of(format!("{CHANNEL}:log").as_bytes()))
        .await
        .unwrap();
    let warm: Vec<String> = (0..200).map(user_id).collect();
    get_all(&client, a.main_addr(), &warm).await;
    get_all(&client, b.main_addr(), &warm).await;
    c.wait_replicated().await.unwrap();
    let cold: Vec<String> = (1_000..3_000).map(user_id).collect();
    let load = Load::start(&[a.main_addr(), b.main_addr()], &warm, cold);
    load.run_past(200).await;

    // Ids on another primary, in Redis but not yet in B's memory.
    let survivor = c.other_primary(victim).await.unwrap();
    let elsewhere = ids_on(&c, survivor, 3_000..4_000, 20).await;
    get_all(&client, a.main_addr(), &elsewhere).await;

    c.kill_node(victim).await.unwrap();
    // Breakers are per node: while the victim is down and not yet
    // replaced, the other primaries' ids are still Redis hits.
    for (id, status, tier) in get_all(&client, b.main_addr(), &elsewhere).await {
        assert_eq!(
            (status, tier.as_str()),
            (200, "redis"),
            "{id} on a live node while another is down"
        );
    }
    load.run_past(200).await;
    let (promoted, took) = c.wait_failover(victim).await.unwrap();
    eprintln!("failover: 127.0.0.1:{victim} -> 127.0.0.1:{promoted} in {took:?}");
    load.run_past(500).await;
    let (requests, failures, longest) = load.stop().await;
    eprintln!("{requests} requests during the failover, longest {longest:?}");
    assert_eq!(failures, 0, "no client request failed ({requests} made)");

    // The tier is used again without a restart, once each instance's view
    // of the cluster has the promoted node (it reads the slot map every
    // second, and at once when a node fails): ids on the promoted node,
    // loaded by A now, are Redis hits on B.
    for app in [&a, &b] {
        wait_until("the instance sees the promoted primary", || async {
            let primaries = stats(&client, app).await["tiers"]["redis"]["primaries"].clone();
            let has = |p: u16| {
                primaries
                    .as_array()
                    .is_some_and(|a| a.contains(&json!(format!("127.0.0.1:{p}"))))
            };
            has(promoted) && !has(victim)
        })
        .await;
    }
    let fresh = ids_on(&c, promoted, 4_000..5_000, 20).await;
    for (id, status, tier) in get_all(&client, a.main_addr(), &fresh).await {
        assert_eq!((status, tier.as_str()), (200, "origin"), "{id} through A");
    }
    let hits_before = redis_hits(&client, &b).await;
    for (id, status, tier) in get_all(&client, b.main_addr(), &fresh).await {
        assert_eq!(
            (status, tier.as_str()),
            (200, "redis"),
            "{id} through B, from the promoted node"
        );
    }
    assert_eq!(
        redis_hits(&client, &b).await - hits_before,
        fresh.len() as u64,
        "hits on the promoted node are counted"
    );

    // Invalidations still reach every instance: B holds id X in memory,
    // it changes at the origin, A hears of it, B serves the new version.
    wait_backplane(&client, &a).await;
    wait_backplane(&client, &b).await;
    let x = fresh[0].clone();
    let (v0, _) = served(&client, b.main_addr(), &x).await;
    let (_, tier) = served(&client, b.main_addr(), &x).await;
    assert_eq!(tier, "memory");
    assert!(sim.update_user(&x));
    let received = messages_received(&client, &b).await;
    let body = json!({"type": "profile-updated", "userId": x}).to_string();
    let (status, _, _) = send(
        &client,
        Method::POST,
        &format!("http://{}/admin/events", a.admin_addr()),
        &[("content-type", "application/json")],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    wait_until("B applies the invalidation", || async {
        messages_received(&client, &b).await > received
    })
    .await;
    let (v1, _) = served(&client, b.main_addr(), &x).await;
    assert!(v1 > v0, "B serves the new version ({v0} -> {v1})");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slot_moved_under_load_fails_no_request_and_serves_nothing_stale() {
    let c = cluster().await;
    let sim = sim_origin(5_000, Duration::ZERO).await;
    let (a, b, client) = two_instances(&sim, &c).await;

    let x = user_id(7);
    let slot = RedisCluster::slot_of(format!("{PREFIX}{x}").as_bytes());
    let from = c.primary_of_slot(slot).await.unwrap();
    let to = c.other_primary(from).await.unwrap();
    let warm: Vec<String> = (0..200).map(user_id).collect();
    get_all(&client, a.main_addr(), &warm).await;
    let cold: Vec<String> = (1_000..3_000).map(user_id).collect();
    let load = Load::start(&[a.main_addr(), b.main_addr()], &warm, cold);
    load.run_past(200).await;
    c.migrate_slot(slot, to).await.unwrap();
    // The backplane's log moves too: its readers follow it.
    let log_slot = RedisCluster::slot_of(format!("{CHANNEL}:log").as_bytes());
    let log_from = c.primary_of_slot(log_slot).await.unwrap();
    let log_to = c.other_primary(log_from).await.unwrap();
    c.migrate_slot(log_slot, log_to).await.unwrap();
    load.run_past(300).await;
    let (requests, failures, _) = load.stop().await;
    assert_eq!(failures, 0, "no client request failed ({requests} made)");
    assert_eq!(c.primary_of_slot(slot).await.unwrap(), to);

    // X changes at the origin and is invalidated on A: from then on no
    // instance serves the old version, from any tier.
    let (v0, _) = served(&client, b.main_addr(), &x).await;
    assert!(sim.update_user(&x));
    let received = messages_received(&client, &b).await;
    purge(&client, a.admin_addr(), &x).await;
    wait_until("B applies the invalidation", || async {
        messages_received(&client, &b).await > received
    })
    .await;
    let mut stale = 0;
    for round in 0..50 {
        let app = if round % 2 == 0 { &a } else { &b };
        let (v, _) = served(&client, app.main_addr(), &x).await;
        if v <= v0 {
            stale += 1;
        }
    }
    assert_eq!(stale, 0, "no stale read after the invalidation");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_unreachable_at_start_up_costs_no_request() {
    // Seeds where nothing listens: the proxy starts, is ready, and answers
    // from the origin with the tier's breaker open.
    let sim = sim_origin(100, Duration::ZERO).await;
    let seeds: Vec<String> = (0..3)
        .map(|_| format!("\"redis://127.0.0.1:{}\"", free_port()))
        .collect();
    let app = start_proxy(&profile_config(
        &sim.officer_url(),
        &format!(
            "[tiers.redis]\nmode = \"cluster\"\nnodes = [{}]\ntimeout = \"2s\"\nconnect_timeout = \"500ms\"\nbreaker_failures = 2\nbreaker_cooldown = \"1h\"\n\n[backplane]\nchannel = \"{CHANNEL}\"\n",
            seeds.join(", ")
        ),
    ))
    .await;
    let client = client();
    let (status, _, _) = get(&client, &format!("http://{}/readyz", app.admin_addr())).await;
    assert_eq!(status, StatusCode::OK);
    for i in 0..10 {
        let (v, tier) = served(&client, app.main_addr(), &user_id(i)).await;
        assert!(v > 0);
        assert_eq!(tier, "origin");
    }
    let s = stats(&client, &app).await;
    assert_eq!(s["tiers"]["redis"]["breaker_open"], json!(true), "{s}");
    assert_eq!(s["backplane"]["connected"], json!(false), "{s}");
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clearing_the_tier_marks_every_id_on_every_primary() {
    // What a change stream that lost its history does (`remove_all`):
    // every primary scanned, every id tombstoned, so no load in flight
    // anywhere can write its value back.
    use profile_edge::tier::{Entry, Tier};
    let c = cluster().await;
    let cfg: profile_edge::config::RedisTierConfig = toml::from_str(&format!(
        "mode = \"cluster\"\nnodes = [{}]\nkey_prefix = \"{PREFIX}\"\ntimeout = \"2s\"\n",
        c.seeds()
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    ))
    .unwrap();
    let tasks = profile_edge::lifecycle::Tasks::new();
    let tier =
        profile_edge::tier::redis::RedisTier::new(&cfg, Duration::from_secs(60), &tasks).unwrap();
    wait_until("the tier knows the cluster's primaries", || async {
        tier.stats()["primaries"]
            .as_array()
            .is_some_and(|p| p.len() == 3)
    })
    .await;
    let now = profile_edge::tier::now_ms();
    let entries: Vec<(String, Entry)> = (0..2_000)
        .map(|i| {
            let body = bytes::Bytes::from(format!("{{\"id\":{i}}}"));
            (
                user_id(i),
                Entry::from_origin(Some(body), now, Duration::from_secs(600)),
            )
        })
        .collect();
    // One call: each node's part goes in pieces of at most 64 keys.
    let written = tier.put_many(&entries).await.unwrap();
    assert!(written
        .iter()
        .all(|w| *w == profile_edge::tier::Written::Yes));
    let ids: Vec<String> = entries.iter().map(|(id, _)| id.clone()).collect();
    let before = tier.get_many(&ids).await.unwrap();
    assert!(before.iter().all(|s| s.entry.is_some() && s.version == 0));
    let marked = tier.remove_all().await.unwrap();
    assert_eq!(marked, 2_000);
    let after = tier.get_many(&ids).await.unwrap();
    assert!(after
        .iter()
        .all(|s| s.entry.is_none() && s.version == 1 && s.reached));
    // A write under the version read before the clear is refused.
    let late = tier.put_many(&entries[..10]).await.unwrap();
    assert!(
        late.iter()
            .all(|w| *w == profile_edge::tier::Written::Superseded),
        "{late:?}"
    );
    tasks.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_removal_no_replica_acknowledged_stays_pending_and_lands_on_the_promoted_node() {
    // Redis replicates asynchronously: a tombstone only the primary took is
    // lost if it dies, and its promoted replica would serve the removed
    // value. So a removal on a cluster counts once a replica acknowledged
    // it (WAIT 1); until then it stays pending and is retried wherever the
    // slot is served. Shown here: pending while the replica is frozen, then
    // applied on the promoted replica, and no instance serving the old
    // value. (A frozen replica still finds the tombstone in its socket
    // buffer when resumed, so the last check would pass without the wait
    // too; the first two are what the wait changes.) A node timeout of
    // 5 s gives room between freezing the replica and the cluster calling
    // it failed, which drops it from the slot map the proxy waits on.
    let mut c = RedisCluster::start_with_node_timeout(Duration::from_secs(5))
        .await
        .unwrap_or_else(|e| panic!("cannot start the Redis Cluster: {e}"));
    let sim = sim_origin(100, Duration::ZERO).await;
    let (a, b, client) = two_instances(&sim, &c).await;
    let x = user_id(11);
    let (v0, tier) = served(&client, a.main_addr(), &x).await;
    assert_eq!(tier, "origin");
    c.wait_replicated().await.unwrap();
    let primary = c
        .primary_of_slot(RedisCluster::slot_of(format!("{PREFIX}{x}").as_bytes()))
        .await
        .unwrap();
    let replica = c.replicas_of(primary).await.unwrap()[0];

    // The replica stops taking writes; X changes and is invalidated on A.
    // The tombstone lands on the primary, no replica acknowledges it, so A
    // keeps the removal pending.
    c.pause_node(replica).unwrap();
    assert!(sim.update_user(&x));
    purge(&client, a.admin_addr(), &x).await;
    let pending = stats(&client, &a).await["tiers"]["redis"]["pending_removals"].clone();
    assert_eq!(pending, json!(1), "the removal waits for a replica");

    // The primary dies before the replica got the tombstone; the replica,
    // resumed, is promoted with X's old value. A's retry puts the
    // tombstone there.
    c.kill_node(primary).await.unwrap();
    c.resume_node(replica).unwrap();
    let (promoted, _) = c.wait_failover(primary).await.unwrap();
    assert_eq!(promoted, replica);
    wait_until("A's removal lands on the promoted node", || async {
        stats(&client, &a).await["tiers"]["redis"]["pending_removals"] == json!(0)
    })
    .await;
    let received = messages_received(&client, &b).await;
    assert!(received >= 1, "B heard of the invalidation");
    for app in [&a, &b] {
        let (v, _) = served(&client, app.main_addr(), &x).await;
        assert!(
            v > v0,
            "no instance serves the value the invalidation removed ({v0} -> {v})"
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
