//! Scenario 11: the Redis tier on a six-node Redis Cluster (3 primaries, 3
//! replicas, `tests/harness`). (a) L2 hits: a filler proxy writes N
//! profiles, then a fresh reader reads each once (Redis hits), against a
//! standalone redis-server and against the cluster in alternating rounds.
//! (b) Read shapes, with the redis crate directly on the cluster: one MGET
//! per node (the crate splits it by slot; what the tier does), concurrent
//! per-key GETs, and a one-key MGET (and GET). (c) Failover: two instances
//! with the backplane on the cluster, a primary SIGKILLed under load;
//! failures and latency before, during and after, and Redis hits after.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures_util::future::join_all;
use profile_edge::testkit::{user_id, SimOrigin};
use profile_edge_harness::RedisCluster;
use rand::{Rng, SeedableRng};
use redis::cluster_async::ClusterConnection;

use super::{
    note_proxy_log, rate_cells, ratio, read_pass, start_sim, user_path, warm_batch, Ctx, Stats,
};
use crate::load::{self, fmt_us, median, micros, Dist, Req, Sample, Spec};
use crate::procs::{Proxy, ProxyOpts, Redis};
use crate::report::{Section, Table, Target};

/// The tier's default key prefix (the bench's proxies keep it).
const PREFIX: &str = "pe:profile:";
/// The bench's backplane channel (`procs::proxy_config`).
const CHANNEL: &str = "pe:bench";
const CONCURRENCY: usize = 64;
const USERS: usize = 100_000;
/// Keys per batch in the read-shape measurement.
const BATCH: usize = 50;
/// Batches in flight in the read-shape measurement.
const SHAPE_IN_FLIGHT: [usize; 2] = [1, 16];
/// Clients per instance in the failover run (16 in all).
const FAILOVER_CLIENTS: usize = 8;
const WARM_IDS: usize = 2000;
const COLD_BASE: usize = 50_000;
/// Fresh ids for the after-failover hit check (no load touches them).
const PROBE_IDS: std::ops::Range<usize> = 95_000..USERS;
const PROBES: usize = 20;
// The proxy's defaults, for the failover bound.
const REDIS_TIMEOUT_MS: f64 = 50.0;
const CONNECT_TIMEOUT_MS: f64 = 250.0;
const ORIGIN_MS: f64 = 20.0;
const MAX_WAIT_MS: f64 = 10.0;
/// Goals for the cluster against standalone Redis, same run.
const MIN_THROUGHPUT_RATIO: f64 = 0.8;
const MAX_P99_RATIO: f64 = 1.5;

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let n = if ctx.quick { 10_000 } else { 50_000 };
    let shape_secs = if ctx.quick { 1 } else { 2 };
    sec.client = format!(
        "(a) the bench's hyper client (HTTP/1.1 keep-alive, closed loop), {CONCURRENCY} in flight, {n} ids each once per pass, a fresh reader per pass, standalone and cluster alternated for {} round(s); (b) the redis crate 1.8 `ClusterConnection` in the bench process, {BATCH}-key batches of random filled ids, {SHAPE_IN_FLIGHT:?} batches in flight, {shape_secs} s per shape per round, shapes rotated for {} round(s); (c) {} clients (half per instance) looping, 1 in 5 a never-seen id. Proxies use the tier's defaults (timeout 50 ms, connect_timeout 250 ms, breaker_cooldown 1 s); the cluster is redis-server 7 with cluster-node-timeout {} ms",
        ctx.rounds,
        ctx.rounds,
        2 * FAILOVER_CLIENTS,
        profile_edge_harness::NODE_TIMEOUT_MS
    );
    let tmp = ctx.tempdir("cluster")?;
    let sim = start_sim(USERS, Duration::from_millis(20)).await?;
    let mut cluster = RedisCluster::start()
        .await
        .context("starting the 6-node Redis Cluster")?;

    l2_hits(ctx, sec, tmp.path(), &sim, &cluster, n).await?;
    read_shapes(ctx, sec, &cluster, n, Duration::from_secs(shape_secs)).await?;
    failover(ctx, sec, tmp.path(), &sim, &mut cluster).await
}

/// One L2 pass's figures.
struct Pass {
    rps: f64,
    dist: Dist,
    failed: usize,
    redis_hits: f64,
    origin_calls: f64,
}

async fn l2_hits(
    ctx: &Ctx,
    sec: &mut Section,
    dir: &std::path::Path,
    sim: &SimOrigin,
    cluster: &RedisCluster,
    n: usize,
) -> Result<()> {
    let redis = Redis::start(&dir.join("redis")).await?;
    let mut standalone = ProxyOpts::profiles(sim.officer_url());
    standalone.redis_url = Some(redis.url());
    let mut clustered = ProxyOpts::profiles(sim.officer_url());
    clustered.redis_cluster = Some(cluster.seeds());
    let targets = [
        ("standalone redis-server", "standalone", standalone),
        ("6-node cluster", "cluster", clustered),
    ];

    // Fill each through its own instance; then check every key is there.
    let keys: Vec<String> = (0..n).map(|i| format!("{PREFIX}{}", user_id(i))).collect();
    let mut direct_standalone = redis::Client::open(redis.url())
        .context("redis client for the standalone server")?
        .get_multiplexed_async_connection()
        .await
        .context("connect to the standalone server")?;
    let mut direct_cluster = cluster_conn(cluster).await?;
    for (label, key, opts) in &targets {
        let mut ids: Vec<usize> = (0..n).collect();
        // A write the tier gave up on (timeout, breaker) is skipped, not
        // retried: ids still missing go through a fresh filler (a memory
        // miss, a Redis miss, an origin load and a write again), at most 3
        // times, each noted.
        for attempt in 1..=3 {
            let filler = Proxy::start(
                &ctx.proxy_bin,
                &dir.join(format!("filler-{key}-{attempt}")),
                opts.clone(),
            )
            .await?;
            warm_batch(filler.addr, ids.clone(), 1000).await?;
            note_proxy_log(sec, &format!("{key} filler {attempt}"), &filler);
            let wanted = ids.len();
            ids = if *key == "cluster" {
                missing(&mut direct_cluster, &keys).await?
            } else {
                missing(&mut direct_standalone, &keys).await?
            };
            println!(
                "  filled {label} (attempt {attempt}): {} of {wanted} written; {} of {n} keys missing",
                wanted - ids.len().min(wanted),
                ids.len()
            );
            if !ids.is_empty() {
                sec.notes.push(format!(
                    "Filling the {label} (attempt {attempt}, {wanted} ids through the batch route, 1000 per request): {} keys were not in Redis afterwards (the tier skipped their writes); they were written again through a fresh instance.",
                    ids.len()
                ));
            }
            if ids.is_empty() {
                break;
            }
        }
        if !ids.is_empty() {
            bail!(
                "{} of {n} profiles are still not in the {label} after 3 fills; the L2 passes would not be all hits",
                ids.len()
            );
        }
    }

    let paths: Arc<Vec<String>> = Arc::new((0..n).map(user_path).collect());
    let mut passes: [Vec<Pass>; 2] = [Vec::new(), Vec::new()];
    for round in 0..ctx.rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for t in order {
            let (label, key, opts) = &targets[t];
            let proxy = Proxy::start(
                &ctx.proxy_bin,
                &dir.join(format!("reader-{key}-{round}")),
                opts.clone(),
            )
            .await?;
            // Opens the tier's connections (every node, likely) on ids
            // outside the measured set, so no pass pays for that.
            warm_batch(proxy.addr, (n..n + 50).collect(), 50).await?;
            let (samples, secs, d) =
                read_pass(proxy.addr, proxy.admin, &paths, CONCURRENCY, n).await?;
            let pass = Pass {
                rps: samples.len() as f64 / secs.max(1e-9),
                dist: Dist::of(samples.iter().map(|s| s.lat_us)),
                failed: samples.iter().filter(|s| !s.ok).count(),
                redis_hits: d.redis_hits,
                origin_calls: d.origin_batch + d.origin_single,
            };
            println!(
                "  round {}: {label}: {:.0} req/s, p50 {}, p99 {}, redis hits {:.0}, origin calls {:.0}, failed {}",
                round + 1,
                pass.rps,
                fmt_us(pass.dist.p50 as f64),
                fmt_us(pass.dist.p99 as f64),
                pass.redis_hits,
                pass.origin_calls,
                pass.failed
            );
            passes[t].push(pass);
            note_proxy_log(sec, &format!("{key} reader, round {}", round + 1), &proxy);
        }
    }
    drop(redis);

    let mut t = Table::new(
        format!("(a) L2 hits: a fresh reader instance reads {n} ids once each, all in Redis (memory cold)."),
        &[
            "Redis",
            "req/s (median)",
            "p50",
            "p99",
            "req/s per round",
            "failed",
            "Redis hits / ids",
            "origin calls",
        ],
    );
    for (i, (label, _, _)) in targets.iter().enumerate() {
        let runs = &passes[i];
        let mut row = vec![(*label).to_string()];
        row.extend(rate_cells(runs.iter().map(|r| (r.rps, &r.dist))));
        row.extend([
            runs.iter().map(|r| r.failed).sum::<usize>().to_string(),
            format!(
                "{:.0} / {}",
                runs.iter().map(|r| r.redis_hits).sum::<f64>(),
                n * runs.len()
            ),
            format!("{:.0}", runs.iter().map(|r| r.origin_calls).sum::<f64>()),
        ]);
        t.row(row);
    }
    let per_round = |f: &dyn Fn(&Pass) -> f64| -> Vec<f64> {
        passes[1]
            .iter()
            .zip(&passes[0])
            .map(|(c, s)| f(c) / f(s))
            .collect()
    };
    let tput = per_round(&|p| p.rps);
    let p99 = per_round(&|p| p.dist.p99 as f64);
    for (name, ratios) in [
        ("cluster / standalone throughput", &tput),
        ("cluster / standalone p99", &p99),
    ] {
        t.row(vec![
            format!("{name} (median of rounds)"),
            ratio(median(ratios)),
            String::new(),
            String::new(),
            ratios
                .iter()
                .map(|x| ratio(*x))
                .collect::<Vec<_>>()
                .join(", "),
            String::new(),
            String::new(),
            String::new(),
        ]);
    }
    sec.tables.push(t);
    let (tput_m, p99_m) = (median(&tput), median(&p99));
    let p99_of = |i: usize| {
        fmt_us(median(
            &passes[i]
                .iter()
                .map(|r| r.dist.p99 as f64)
                .collect::<Vec<_>>(),
        ))
    };
    sec.targets.push(Target::check(
        format!("L2 hits: cluster / standalone throughput >= {MIN_THROUGHPUT_RATIO}"),
        format!(
            "{} (per round: {})",
            ratio(tput_m),
            tput.iter()
                .map(|x| ratio(*x))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        tput_m >= MIN_THROUGHPUT_RATIO,
        "not profiled; what differs: every cluster command goes through the client library's routing task (one more channel hop and a slot lookup) and per-node grouping in the tier, and six redis-server processes share the 2 cores with the proxy and the load generator",
    ));
    sec.targets.push(Target::check(
        format!("L2 hits: cluster p99 <= {MAX_P99_RATIO} x standalone p99"),
        format!("{} x ({} vs {})", ratio(p99_m), p99_of(1), p99_of(0)),
        p99_m <= MAX_P99_RATIO,
        "the cluster's L2-hit tail is markedly longer than one redis-server's",
    ));
    Ok(())
}

async fn cluster_conn(cluster: &RedisCluster) -> Result<ClusterConnection> {
    redis::cluster::ClusterClient::new(cluster.seeds())
        .context("cluster client")?
        .get_async_connection()
        .await
        .context("connect to the cluster")
}

/// The indices of `keys` that hold no value, by 500-key MGETs.
async fn missing<C: redis::aio::ConnectionLike + Send>(
    conn: &mut C,
    keys: &[String],
) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for (c, chunk) in keys.chunks(500).enumerate() {
        let values: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
            .arg(chunk)
            .query_async(conn)
            .await
            .context("MGET to find the profiles not stored")?;
        out.extend(
            values
                .iter()
                .enumerate()
                .filter(|(_, v)| v.is_none())
                .map(|(i, _)| c * 500 + i),
        );
    }
    Ok(out)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// The tier's: the batch grouped by node, one MGET per node, all at
    /// once; the crate splits each further by slot.
    MgetPerNode,
    /// One GET per key, all at once on clones of the connection (the
    /// multiplexed connection pipelines them per node).
    Gets,
    /// One id: MGET with one key (what the tier sends for a one-id lookup).
    MgetOne,
    /// One id: GET.
    GetOne,
}

impl Shape {
    const ALL: [Shape; 4] = [
        Shape::MgetPerNode,
        Shape::Gets,
        Shape::MgetOne,
        Shape::GetOne,
    ];

    fn name(self) -> &'static str {
        match self {
            Shape::MgetPerNode => "MGET per node (crate splits by slot)",
            Shape::Gets => "GET per key, concurrent",
            Shape::MgetOne => "MGET of one key",
            Shape::GetOne => "GET of one key",
        }
    }

    fn keys(self) -> usize {
        match self {
            Shape::MgetPerNode | Shape::Gets => BATCH,
            Shape::MgetOne | Shape::GetOne => 1,
        }
    }
}

/// The primary port of every slot, from the cluster's map.
async fn slot_owners(cluster: &RedisCluster) -> Result<Vec<u16>> {
    let mut owner = vec![0u16; usize::from(profile_edge_harness::SLOTS)];
    for r in cluster.slot_map().await.context("CLUSTER SLOTS")? {
        for s in r.start..=r.end {
            owner[usize::from(s)] = r.primary;
        }
    }
    if let Some(s) = owner.iter().position(|&p| p == 0) {
        bail!("slot {s} has no primary in the cluster's map");
    }
    Ok(owner)
}

/// One batch read in `shape`; fails on an error or a missing value.
async fn read_batch(
    conn: &ClusterConnection,
    shape: Shape,
    keys: &[String],
    owner: &[u16],
) -> Result<()> {
    let values: Vec<Option<Vec<u8>>> = match shape {
        Shape::MgetPerNode => {
            let mut by_node: BTreeMap<u16, Vec<&str>> = BTreeMap::new();
            for k in keys {
                let slot = RedisCluster::slot_of(k.as_bytes());
                by_node
                    .entry(owner[usize::from(slot)])
                    .or_default()
                    .push(k.as_str());
            }
            let reads = by_node.into_values().map(|ks| {
                let mut c = conn.clone();
                async move {
                    redis::cmd("MGET")
                        .arg(&ks)
                        .query_async::<Vec<Option<Vec<u8>>>>(&mut c)
                        .await
                }
            });
            let mut out = Vec::with_capacity(keys.len());
            for r in join_all(reads).await {
                out.extend(r.context("MGET")?);
            }
            out
        }
        Shape::Gets | Shape::GetOne => {
            let reads = keys.iter().map(|k| {
                let mut c = conn.clone();
                async move {
                    redis::cmd("GET")
                        .arg(k)
                        .query_async::<Option<Vec<u8>>>(&mut c)
                        .await
                }
            });
            join_all(reads)
                .await
                .into_iter()
                .collect::<Result<_, _>>()
                .context("GET")?
        }
        Shape::MgetOne => {
            let mut c = conn.clone();
            redis::cmd("MGET")
                .arg(keys)
                .query_async::<Vec<Option<Vec<u8>>>>(&mut c)
                .await
                .context("MGET")?
        }
    };
    if values.len() != keys.len() || values.iter().any(Option::is_none) {
        bail!(
            "{}: {} of {} values came back",
            shape.name(),
            values.iter().filter(|v| v.is_some()).count(),
            keys.len()
        );
    }
    Ok(())
}

/// A closed loop of `in_flight` workers reading random batches of the
/// filled ids for `dur`: batches/s and the per-batch latency.
async fn shape_run(
    conn: &ClusterConnection,
    shape: Shape,
    owner: &Arc<Vec<u16>>,
    n: usize,
    in_flight: usize,
    dur: Duration,
    seed: u64,
) -> Result<(f64, Dist)> {
    let t0 = Instant::now();
    let deadline = t0 + dur;
    let workers = (0..in_flight).map(|w| {
        let conn = conn.clone();
        let owner = Arc::clone(owner);
        async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed * 1000 + w as u64);
            let mut lat = Vec::new();
            while Instant::now() < deadline {
                let keys: Vec<String> = (0..shape.keys())
                    .map(|_| format!("{PREFIX}{}", user_id(rng.random_range(0..n))))
                    .collect();
                let start = Instant::now();
                read_batch(&conn, shape, &keys, &owner).await?;
                lat.push(micros(start.elapsed()));
            }
            Ok::<_, anyhow::Error>(lat)
        }
    });
    let mut all = Vec::new();
    for r in join_all(workers).await {
        all.extend(r?);
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((all.len() as f64 / secs.max(1e-9), Dist::of(all)))
}

async fn read_shapes(
    ctx: &Ctx,
    sec: &mut Section,
    cluster: &RedisCluster,
    n: usize,
    dur: Duration,
) -> Result<()> {
    let conn = cluster_conn(cluster).await?;
    let owner = Arc::new(slot_owners(cluster).await?);
    // Connections to every primary opened before anything is timed.
    for s in Shape::ALL {
        shape_run(&conn, s, &owner, n, 1, Duration::from_millis(200), 0).await?;
    }
    // (shape, in flight) -> per-round (batches/s, dist)
    let mut results: BTreeMap<(usize, usize), Vec<(f64, Dist)>> = BTreeMap::new();
    for round in 0..ctx.rounds {
        for &in_flight in &SHAPE_IN_FLIGHT {
            for k in 0..Shape::ALL.len() {
                let si = (k + round) % Shape::ALL.len();
                let shape = Shape::ALL[si];
                let seed = (round * 100 + si * 10 + in_flight) as u64 + 1;
                let (bps, dist) = shape_run(&conn, shape, &owner, n, in_flight, dur, seed).await?;
                println!(
                    "  round {}: {} ({in_flight} in flight): {bps:.0} batches/s, p50 {}, p99 {}",
                    round + 1,
                    shape.name(),
                    fmt_us(dist.p50 as f64),
                    fmt_us(dist.p99 as f64)
                );
                results
                    .entry((si, in_flight))
                    .or_default()
                    .push((bps, dist));
            }
        }
    }
    let med = |si: usize, f: usize, g: &dyn Fn(&(f64, Dist)) -> f64| -> f64 {
        median(
            &results
                .get(&(si, f))
                .map(|v| v.iter().map(g).collect::<Vec<_>>())
                .unwrap_or_default(),
        )
    };
    let mut t = Table::new(
        format!("(b) Read shapes on the cluster, the redis crate directly (no proxy): batches of {BATCH} random filled keys spread over slots (about {} per primary), and one-key reads.", BATCH / 3),
        &[
            "shape",
            "batches in flight",
            "batches/s (median)",
            "keys/s",
            "p50",
            "p99",
            "batches/s per round",
        ],
    );
    for &f in &SHAPE_IN_FLIGHT {
        for (si, shape) in Shape::ALL.iter().enumerate() {
            let bps = med(si, f, &|r| r.0);
            t.row(vec![
                shape.name().into(),
                f.to_string(),
                format!("{bps:.0}"),
                format!("{:.0}", bps * shape.keys() as f64),
                fmt_us(med(si, f, &|r| r.1.p50 as f64)),
                fmt_us(med(si, f, &|r| r.1.p99 as f64)),
                results
                    .get(&(si, f))
                    .map(|v| {
                        v.iter()
                            .map(|r| format!("{:.0}", r.0))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default(),
            ]);
        }
    }
    sec.tables.push(t);
    for &f in &SHAPE_IN_FLIGHT {
        let ratio_of = |a: usize, b: usize| {
            let r: Vec<f64> = results
                .get(&(a, f))
                .into_iter()
                .flatten()
                .zip(results.get(&(b, f)).into_iter().flatten())
                .map(|(x, y)| x.0 / y.0)
                .collect();
            median(&r)
        };
        sec.notes.push(format!(
            "Read shapes, {f} in flight: {BATCH}-key batches, concurrent GETs / MGET per node = {} x the batches/s (p99 {} vs {}); one key, GET / MGET = {} x (p99 {} vs {}).",
            ratio(ratio_of(1, 0)),
            fmt_us(med(1, f, &|r| r.1.p99 as f64)),
            fmt_us(med(0, f, &|r| r.1.p99 as f64)),
            ratio(ratio_of(3, 2)),
            fmt_us(med(3, f, &|r| r.1.p99 as f64)),
            fmt_us(med(2, f, &|r| r.1.p99 as f64)),
        ));
    }
    Ok(())
}

/// Polls `check` every 20 ms until it says true; fails after `limit`.
async fn poll_until<F, Fut>(what: &str, limit: Duration, mut check: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = check().await;
        if matches!(last, Ok(true)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow!(
                "waited {} s for {what} (last check: {})",
                limit.as_secs(),
                match last {
                    Ok(_) => "not yet".to_string(),
                    Err(e) => format!("{e:#}"),
                }
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn stats_json(admin: SocketAddr) -> Result<serde_json::Value> {
    load::get_json(admin, "/admin/stats").await
}

/// The instance's view of the cluster has `promoted` as a primary and not
/// `victim`.
async fn sees_primary(admin: SocketAddr, promoted: u16, victim: u16) -> Result<bool> {
    let v = stats_json(admin).await?;
    let primaries = v
        .pointer("/tiers/redis/primaries")
        .and_then(serde_json::Value::as_array)
        .context("/admin/stats has no tiers.redis.primaries")?;
    let has = |p: u16| {
        primaries
            .iter()
            .any(|x| x.as_str() == Some(format!("127.0.0.1:{p}").as_str()))
    };
    Ok(has(promoted) && !has(victim))
}

/// What the failover controller saw, microseconds after the load's t0.
struct Timeline {
    victim: u16,
    promoted: u16,
    took: Duration,
    killed_at: u64,
    promoted_at: u64,
    /// When both instances' maps had the promoted primary.
    seen_at: u64,
}

async fn failover(
    ctx: &Ctx,
    sec: &mut Section,
    dir: &std::path::Path,
    sim: &SimOrigin,
    cluster: &mut RedisCluster,
) -> Result<()> {
    let (before, after) = if ctx.quick {
        (Duration::from_secs(3), Duration::from_secs(3))
    } else {
        (Duration::from_secs(5), Duration::from_secs(5))
    };
    let mut opts = ProxyOpts::profiles(sim.officer_url());
    opts.redis_cluster = Some(cluster.seeds());
    opts.backplane = true;
    let a = Proxy::start(&ctx.proxy_bin, &dir.join("failover-a"), opts.clone()).await?;
    let b = Proxy::start(&ctx.proxy_bin, &dir.join("failover-b"), opts).await?;
    for p in [&a, &b] {
        let admin = p.admin;
        poll_until(
            "the backplane to connect",
            Duration::from_secs(30),
            || async move {
                Ok(stats_json(admin).await?.pointer("/backplane/connected")
                    == Some(&serde_json::Value::Bool(true)))
            },
        )
        .await?;
    }
    warm_batch(a.addr, (0..WARM_IDS).collect(), 500).await?;
    warm_batch(b.addr, (0..WARM_IDS).collect(), 500).await?;
    cluster
        .wait_replicated()
        .await
        .context("WAIT before the kill")?;
    // The victim holds the backplane's stream, so it must come back too.
    let victim = cluster
        .primary_of_slot(RedisCluster::slot_of(format!("{CHANNEL}:log").as_bytes()))
        .await?;

    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    // Each instance's clients ask for the same never-seen ids in the same
    // order, so the later of the two can be a Redis hit.
    let make = || -> load::MakeReq {
        let cold = Arc::new(AtomicUsize::new(0));
        Arc::new(move |i| {
            if i % 5 == 0 {
                let k = cold.fetch_add(1, Ordering::Relaxed);
                (
                    Req::get(user_path(COLD_BASE + k % (PROBE_IDS.start - COLD_BASE))),
                    1,
                )
            } else {
                (Req::get(user_path((i * 7) % WARM_IDS)), 0)
            }
        })
    };
    let run = |addr| {
        load::closed_loop_until(
            addr,
            Spec {
                concurrency: FAILOVER_CLIENTS,
                max_requests: usize::MAX,
                max_time: Duration::from_secs(300),
            },
            t0,
            make(),
            |r| r.header("x-cache-tier") == "redis",
            Arc::clone(&stop),
        )
    };
    let (la, lb) = (run(a.addr), run(b.addr));
    let control = async {
        let r = async {
            // The before-the-kill phase: load only.
            tokio::time::sleep(before).await;
            cluster.kill_node(victim).await?;
            let killed_at = micros(t0.elapsed());
            let (promoted, took) = cluster.wait_failover(victim).await?;
            for p in [&a, &b] {
                let admin = p.admin;
                poll_until(
                    "the instance to see the promoted primary",
                    Duration::from_secs(30),
                    || sees_primary(admin, promoted, victim),
                )
                .await?;
            }
            let seen_at = micros(t0.elapsed());
            // The after phase: load only.
            tokio::time::sleep(after).await;
            Ok::<_, anyhow::Error>(Timeline {
                victim,
                promoted,
                took,
                killed_at,
                promoted_at: killed_at + micros(took),
                seen_at,
            })
        }
        .await;
        stop.store(true, Ordering::SeqCst);
        r
    };
    let (sa, sb, tl) = tokio::join!(la, lb, control);
    let tl = tl?;
    let mut samples = sa?;
    samples.extend(sb?);
    if samples.is_empty() {
        bail!("the failover run produced no requests");
    }
    let end = samples
        .iter()
        .map(|s| s.at_us + s.lat_us)
        .max()
        .unwrap_or(0);
    let cold_used = samples.iter().filter(|s| s.tag == 1).count() / 2;
    if COLD_BASE + cold_used >= PROBE_IDS.start {
        sec.notes.push(format!(
            "The failover run's cold ids wrapped around ({cold_used} per instance): some 'cold' requests were memory hits."
        ));
    }

    let mut t = Table::new(
        format!(
            "(c) Failover: 127.0.0.1:{} (the primary holding the backplane stream) SIGKILLed under load through 2 instances; phases by request start. Cold = a never-seen id (memory miss, then Redis, then origin); warm = memory hits. Failed = non-2xx or socket error/timeout. From Redis = answered with x-cache-tier: redis.",
            tl.victim
        ),
        &[
            "phase",
            "ids",
            "requests",
            "failed",
            "from Redis",
            "p50",
            "p99",
            "max",
        ],
    );
    let phases = [
        (
            format!("before the kill ({:.1} s)", tl.killed_at as f64 / 1e6),
            0,
            tl.killed_at,
        ),
        (
            format!("kill to promotion ({:.2} s)", tl.took.as_secs_f64()),
            tl.killed_at,
            tl.promoted_at,
        ),
        (
            format!(
                "after the promotion ({:.1} s)",
                end.saturating_sub(tl.promoted_at) as f64 / 1e6
            ),
            tl.promoted_at,
            u64::MAX,
        ),
    ];
    let mut failed_total = 0;
    let mut redis_after = 0;
    for (name, from, to) in &phases {
        for (ids, tag) in [("cold", 1u8), ("warm", 0u8)] {
            let part: Vec<&Sample> = samples
                .iter()
                .filter(|s| (*from..*to).contains(&s.at_us) && s.tag == tag)
                .collect();
            let d = Dist::of(part.iter().map(|s| s.lat_us));
            let failed = part.iter().filter(|s| !s.ok).count();
            let from_redis = part.iter().filter(|s| s.flag).count();
            failed_total += failed;
            if *from == tl.promoted_at {
                redis_after += from_redis;
            }
            t.row(vec![
                name.clone(),
                ids.into(),
                part.len().to_string(),
                failed.to_string(),
                from_redis.to_string(),
                fmt_us(d.p50 as f64),
                fmt_us(d.p99 as f64),
                fmt_us(d.max as f64),
            ]);
        }
    }
    sec.tables.push(t);
    // Any request in flight at some point of the window.
    let window: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.at_us < tl.promoted_at && s.at_us + s.lat_us > tl.killed_at)
        .collect();
    let longest = window.iter().map(|s| s.lat_us).max().unwrap_or(0);
    let longest_cold = window
        .iter()
        .filter(|s| s.tag == 1)
        .map(|s| s.lat_us)
        .max()
        .unwrap_or(0);

    // The tier after the failover: fresh ids on the promoted primary,
    // loaded through A (origin, written to the promoted node), then read
    // through B: each should be a Redis hit, counted in B's stats.
    let owner = slot_owners(cluster).await?;
    let probes: Vec<usize> = PROBE_IDS
        .filter(|&i| {
            let slot = RedisCluster::slot_of(format!("{PREFIX}{}", user_id(i)).as_bytes());
            owner[usize::from(slot)] == tl.promoted
        })
        .take(PROBES)
        .collect();
    if probes.len() < PROBES {
        bail!("only {} probe ids on the promoted primary", probes.len());
    }
    let mut via_a = BTreeMap::<String, usize>::new();
    for &i in &probes {
        let r = load::once(a.addr, &Req::get(user_path(i))).await?;
        if !r.ok() {
            bail!("probe {} through A answered {}", user_id(i), r.status);
        }
        *via_a
            .entry(r.header("x-cache-tier").to_string())
            .or_default() += 1;
    }
    let hits_before = Stats::get(b.admin).await?.redis_hits;
    let mut redis_b = 0;
    for &i in &probes {
        let r = load::once(b.addr, &Req::get(user_path(i))).await?;
        if !r.ok() {
            bail!("probe {} through B answered {}", user_id(i), r.status);
        }
        if r.header("x-cache-tier") == "redis" {
            redis_b += 1;
        }
    }
    let hits_b = Stats::get(b.admin).await?.redis_hits - hits_before;

    let total = samples.len();
    sec.targets.push(Target::check(
        "failover: failed client requests (goal 0)",
        format!("{failed_total} of {total}"),
        failed_total == 0,
        "client requests failed around the primary's failover (see the table)",
    ));
    let bound_ms = CONNECT_TIMEOUT_MS + REDIS_TIMEOUT_MS + ORIGIN_MS + MAX_WAIT_MS;
    sec.targets.push(Target::check(
        format!("failover: longest request in flight between kill and promotion <= connect_timeout 250 ms + timeout 50 ms + origin 20 ms + max_wait 10 ms = {bound_ms:.0} ms"),
        format!("{} (cold ids: {})", fmt_us(longest as f64), fmt_us(longest_cold as f64)),
        (longest as f64) <= bound_ms * 1000.0,
        "a request stalled during the failover for longer than one connect attempt, one Redis call and one origin call",
    ));
    sec.targets.push(Target::check(
        format!("after the failover, {PROBES} fresh ids on the promoted primary written through A are Redis hits through B"),
        format!("{redis_b} of {PROBES} (tiers.redis.hits on B +{hits_b:.0})"),
        redis_b == PROBES && hits_b as usize == PROBES,
        "the tier does not serve hits from the promoted primary",
    ));
    sec.notes.push(format!(
        "Failover: 127.0.0.1:{} killed {:.2} s into the run; the harness saw 127.0.0.1:{} serve all its slots with every node agreeing {} after the kill; both instances' maps had it {} after the kill. {} requests were in flight at some point of that window.",
        tl.victim,
        tl.killed_at as f64 / 1e6,
        tl.promoted,
        fmt_us(micros(tl.took) as f64),
        fmt_us(tl.seen_at.saturating_sub(tl.killed_at) as f64),
        window.len()
    ));
    sec.notes.push(format!(
        "After the promotion {redis_after} load requests were answered from Redis; the {PROBES} probe ids through A came from {via_a:?}."
    ));
    for (label, p) in [("A", &a), ("B", &b)] {
        let v = stats_json(p.admin).await?;
        let nodes = v
            .pointer("/tiers/redis/nodes")
            .map_or_else(|| "absent".into(), ToString::to_string);
        let field = |p: &str| {
            v.pointer(p)
                .map_or_else(|| "absent".into(), ToString::to_string)
        };
        sec.notes.push(format!(
            "Instance {label} at the end: tiers.redis.nodes = {nodes}; backplane.connected = {}, reconnects = {}, memory_clears = {} (the stream's primary failing over changes the run id the subscriber resumes against, so it clears the memory tier: warm ids are then read from Redis again).",
            field("/backplane/connected"),
            field("/backplane/reconnects"),
            field("/backplane/memory_clears"),
        ));
        note_proxy_log(sec, &format!("failover instance {label}"), p);
    }
    Ok(())
}
