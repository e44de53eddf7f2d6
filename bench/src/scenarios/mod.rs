//! The scenarios, what they share (the run context, the simulated origin,
//! warming helpers) and the dispatcher that turns a failed scenario into a
//! section saying why.

mod backplane;
mod cluster;
mod cold;
mod enrich;
mod fanout;
mod memory;
mod mongo;
mod pinned;
mod redis_tier;
mod reload;
mod warm;
mod zipf_tiers;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use profile_edge::testkit::{user_id, SimConfig, SimOrigin};

use crate::load::{self, median, Req, Spec};
use crate::report::Section;

/// Scenario keys (for `--only`) and titles, in run order.
pub const SCENARIOS: &[(&str, &str)] = &[
    (
        "warm",
        "1. Warm hits: profile-edge vs nginx proxy_cache vs the origin alone",
    ),
    (
        "cold",
        "2. Cold bursts: origin calls for N concurrent distinct cold ids",
    ),
    (
        "zipf",
        "3. Zipf (s = 1.0) over 100k users: hit rate per tier, origin calls",
    ),
    (
        "enrich",
        "4. Enrichment: 20-post feeds with the enrich-posts policy vs plain passthrough",
    ),
    ("reload", "5. Config reload and plugin swap under load"),
    (
        "redis",
        "6. The Redis tier: L2-hit latency and throughput; a Redis outage under load",
    ),
    ("memory", "7. Memory: proxy RSS with 100k profiles cached"),
    (
        "backplane",
        "8. Backplane: invalidation propagation across 3 instances; warm hits with it on vs off",
    ),
    (
        "mongo",
        "9. MongoDB: Mongo-tier vs Redis-tier hits; change-stream lag across 3 instances; post snapshot refresh",
    ),
    (
        "fanout",
        "10. Notifications: fan-out to 10 000 SSE subscribers (insert-to-receipt latency, losses, memory and CPU per subscriber); stuck subscribers",
    ),
    (
        "cluster",
        "11. Redis Cluster: L2 hits on a 6-node cluster vs standalone Redis; a primary killed under load",
    ),
    (
        "pinned",
        "12. Pinned: the proxy alone on one core vs nginx; random ids over 1M cached; RSS per 100k; Redis L2 vs memory; enrichment over stale snapshots",
    ),
];

pub struct Ctx {
    pub root: PathBuf,
    pub proxy_bin: PathBuf,
    pub quick: bool,
    /// Rounds of each alternating comparison (3 full, 1 quick).
    pub rounds: usize,
}

impl Ctx {
    pub fn plugin(&self, file: &str) -> PathBuf {
        self.root.join("plugins").join("dist").join(file)
    }

    pub fn tempdir(&self, key: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("profile-edge-bench-{key}-"))
            .tempdir()
            .context("create a temp dir")
    }
}

pub async fn run(key: &'static str, ctx: &Ctx) -> Section {
    let title = SCENARIOS
        .iter()
        .find(|(k, _)| *k == key)
        .map_or(key, |(_, t)| *t);
    let mut sec = Section::new(key, title);
    let result = match key {
        "warm" => warm::run(ctx, &mut sec).await,
        "cold" => cold::run(ctx, &mut sec).await,
        "zipf" => zipf_tiers::run(ctx, &mut sec).await,
        "enrich" => enrich::run(ctx, &mut sec).await,
        "reload" => reload::run(ctx, &mut sec).await,
        "redis" => redis_tier::run(ctx, &mut sec).await,
        "memory" => memory::run(ctx, &mut sec).await,
        "backplane" => backplane::run(ctx, &mut sec).await,
        "mongo" => mongo::run(ctx, &mut sec).await,
        "fanout" => fanout::run(ctx, &mut sec).await,
        "cluster" => cluster::run(ctx, &mut sec).await,
        "pinned" => pinned::run(ctx, &mut sec).await,
        other => Err(anyhow::anyhow!("no scenario {other}")),
    };
    if let Err(e) = result {
        sec.error = Some(format!("{e:#}"));
    }
    sec
}

/// Starts the simulated Officer and Posts API on free loopback ports.
pub async fn start_sim(users: usize, latency: Duration) -> Result<SimOrigin> {
    SimOrigin::start(SimConfig {
        users,
        latency,
        ..SimConfig::default()
    })
    .await
    .context("start the simulated origin")
}

/// The proxy (memory tier only) and nginx proxy_cache, both in front of
/// the sim's Officer, for the scenarios that compare them. nginx failing to
/// start is recorded in the section and the scenario goes on without it.
pub async fn proxy_and_nginx(
    ctx: &Ctx,
    dir: &Path,
    sim: &SimOrigin,
    sec: &mut Section,
) -> Result<(crate::procs::Proxy, Option<crate::procs::Nginx>)> {
    let proxy = crate::procs::Proxy::start(
        &ctx.proxy_bin,
        &dir.join("proxy"),
        crate::procs::ProxyOpts::profiles(sim.officer_url()),
    )
    .await?;
    let nginx = match crate::procs::Nginx::start(&dir.join("nginx"), sim.officer_addr()).await {
        Ok(n) => Some(n),
        Err(e) => {
            sec.error = Some(format!("nginx could not start: {e:#}"));
            None
        }
    };
    Ok((proxy, nginx))
}

pub fn user_path(i: usize) -> String {
    format!("/api/users/{}", user_id(i))
}

/// Loads `ids` into the proxy through the batch route, `per_request` ids per
/// request, 4 requests in flight. Fails if any request fails.
pub async fn warm_batch(addr: SocketAddr, ids: Vec<usize>, per_request: usize) -> Result<()> {
    let chunks: Vec<Vec<u8>> = ids
        .chunks(per_request.max(1))
        .map(|c| {
            let ids: Vec<String> = c.iter().map(|&i| user_id(i)).collect();
            serde_json::to_vec(&serde_json::json!({ "ids": ids })).unwrap_or_default()
        })
        .collect();
    let n = chunks.len();
    let chunks = Arc::new(chunks);
    let make: load::MakeReq = Arc::new(move |i| {
        (
            Req::post_json("/api/users/batch", chunks[i % chunks.len().max(1)].clone()),
            0,
        )
    });
    run_all(addr, make, n, 4, "warming through the batch route").await
}

/// GETs each path once, `concurrency` at a time; fails on any non-2xx.
pub async fn warm_paths(addr: SocketAddr, paths: Vec<String>, concurrency: usize) -> Result<()> {
    let n = paths.len();
    let paths = Arc::new(paths);
    let make: load::MakeReq =
        Arc::new(move |i| (Req::get(paths[i % paths.len().max(1)].clone()), 0));
    run_all(addr, make, n, concurrency, "warming").await
}

/// Sends the `n` requests `make` builds, `concurrency` at a time; fails
/// unless every one got a 2xx.
async fn run_all(
    addr: SocketAddr,
    make: load::MakeReq,
    n: usize,
    concurrency: usize,
    what: &str,
) -> Result<()> {
    let samples = load::closed_loop(
        addr,
        Spec {
            concurrency,
            max_requests: n,
            max_time: Duration::from_secs(300),
        },
        Instant::now(),
        make,
        load::no_check,
    )
    .await?;
    let failed = samples.iter().filter(|s| !s.ok).count();
    if failed > 0 || samples.len() < n {
        bail!(
            "{what}: {failed} of {n} requests failed ({} done)",
            samples.len()
        );
    }
    Ok(())
}

/// One pass over `paths` through a proxy, `concurrency` in flight, `n`
/// requests, each path once when `n` is its length: the samples, the
/// seconds it took and what `/admin/stats` counted meanwhile. The L2-hit
/// passes of `redis` and `cluster` are this.
pub async fn read_pass(
    addr: SocketAddr,
    admin: SocketAddr,
    paths: &Arc<Vec<String>>,
    concurrency: usize,
    n: usize,
) -> Result<(Vec<load::Sample>, f64, Stats)> {
    let before = Stats::get(admin).await?;
    let p = Arc::clone(paths);
    let t0 = Instant::now();
    let samples = load::closed_loop(
        addr,
        Spec {
            concurrency,
            max_requests: n,
            max_time: Duration::from_secs(120),
        },
        t0,
        Arc::new(move |i| (Req::get(p[i % p.len()].clone()), 0)),
        load::no_check,
    )
    .await?;
    let secs = t0.elapsed().as_secs_f64();
    let counted = Stats::get(admin).await?.minus(&before);
    Ok((samples, secs, counted))
}

/// The cells a table row starts with for one pass measured over rounds,
/// each run as (req/s, latencies): median req/s, median p50, median p99,
/// and the req/s of each round.
pub fn rate_cells<'a>(runs: impl IntoIterator<Item = (f64, &'a load::Dist)>) -> [String; 4] {
    let runs: Vec<(f64, &load::Dist)> = runs.into_iter().collect();
    let med =
        |f: &dyn Fn(&(f64, &load::Dist)) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    [
        format!("{:.0}", med(&|r| r.0)),
        load::fmt_us(med(&|r| r.1.p50 as f64)),
        load::fmt_us(med(&|r| r.1.p99 as f64)),
        runs.iter()
            .map(|r| format!("{:.0}", r.0))
            .collect::<Vec<_>>()
            .join(", "),
    ]
}

/// Numbers from `/admin/stats`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    pub mem_hits: f64,
    pub mem_misses: f64,
    pub redis_hits: f64,
    pub redis_misses: f64,
    pub origin_single: f64,
    pub origin_batch: f64,
    pub origin_ids: f64,
    pub entries: f64,
}

impl Stats {
    pub async fn get(admin: SocketAddr) -> Result<Stats> {
        let v = load::get_json(admin, "/admin/stats").await?;
        let f = |p: &str| {
            v.pointer(p)
                .and_then(serde_json::Value::as_f64)
                .unwrap_or(0.0)
        };
        Ok(Stats {
            mem_hits: f("/tiers/memory/hits"),
            mem_misses: f("/tiers/memory/misses"),
            redis_hits: f("/tiers/redis/hits"),
            redis_misses: f("/tiers/redis/misses"),
            origin_single: f("/origin/single_calls"),
            origin_batch: f("/origin/batch_calls"),
            origin_ids: f("/origin/batch_ids"),
            entries: f("/tiers/memory/entries"),
        })
    }

    pub fn minus(&self, o: &Stats) -> Stats {
        Stats {
            mem_hits: self.mem_hits - o.mem_hits,
            mem_misses: self.mem_misses - o.mem_misses,
            redis_hits: self.redis_hits - o.redis_hits,
            redis_misses: self.redis_misses - o.redis_misses,
            origin_single: self.origin_single - o.origin_single,
            origin_batch: self.origin_batch - o.origin_batch,
            origin_ids: self.origin_ids - o.origin_ids,
            entries: self.entries,
        }
    }
}

pub fn pct(part: f64, whole: f64) -> String {
    if whole <= 0.0 {
        "n/a".into()
    } else {
        format!("{:.2} %", 100.0 * part / whole)
    }
}

pub fn ratio(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.2}")
    } else {
        "n/a".into()
    }
}

/// Waits until the simulated Officer has no request in flight (at most 10 s).
pub async fn origin_quiet(sim: &SimOrigin) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && sim
            .stats()
            .in_flight
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Adds a note when the proxy logged warnings or errors.
pub fn note_proxy_log(sec: &mut Section, label: &str, proxy: &crate::procs::Proxy) {
    if let Some(summary) = proxy.log_summary() {
        sec.notes.push(format!("Proxy log ({label}): {summary}"));
    }
}

pub fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .with_context(|| format!("copy {} -> {}", from.display(), to.display()))
}
