//! Scenario 6: the Redis tier. (a) L2 hits: a first proxy fills Redis with
//! N profiles; a fresh second proxy sharing that Redis reads each once
//! (Redis hits), then again (memory hits) as the same-run baseline. (b) A
//! Redis outage: redis-server is SIGKILLed under a steady mix of warm and
//! cold ids; failures and latency before and after.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use super::{
    note_proxy_log, pct, rate_cells, ratio, read_pass, start_sim, user_path, warm_batch, Ctx, Stats,
};
use crate::load::{self, fmt_us, median, micros, Dist, Req, Sample, Spec};
use crate::procs::{Proxy, ProxyOpts, Redis};
use crate::report::{Section, Table, Target};

const CONCURRENCY: usize = 64;
const OUTAGE_CONCURRENCY: usize = 16;
const WARM_IDS: usize = 2000;
const COLD_BASE: usize = 50_000;
const REDIS_TIMEOUT_MS: f64 = 50.0;
const ORIGIN_MS: f64 = 20.0;
const MAX_WAIT_MS: f64 = 10.0;

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let n = if ctx.quick { 10_000 } else { 50_000 };
    sec.client = format!(
        "the bench's hyper client (HTTP/1.1 keep-alive, closed loop): {CONCURRENCY} in flight for the L2 passes ({n} ids, each once per pass, L2 and memory passes alternated for {} round(s)); {OUTAGE_CONCURRENCY} in flight for the outage run",
        ctx.rounds
    );
    let tmp = ctx.tempdir("redis")?;
    let sim = start_sim(100_000, Duration::from_millis(20)).await?;
    let redis = Redis::start(&tmp.path().join("redis")).await?;

    // (a) Fill Redis through a first instance, then read through fresh ones.
    let mut opts = ProxyOpts::profiles(sim.officer_url());
    opts.redis_url = Some(redis.url());
    {
        let filler = Proxy::start(&ctx.proxy_bin, &tmp.path().join("filler"), opts.clone()).await?;
        warm_batch(filler.addr, (0..n).collect(), 1000).await?;
    }
    let paths: Arc<Vec<String>> = Arc::new((0..n).map(user_path).collect());
    let mut l2 = Vec::new();
    let mut mem = Vec::new();
    let mut origin_calls_l2 = 0.0;
    let mut redis_hits = 0.0;
    for round in 0..ctx.rounds {
        let proxy = Proxy::start(
            &ctx.proxy_bin,
            &tmp.path().join(format!("reader{round}")),
            opts.clone(),
        )
        .await?;
        for pass in 0..2 {
            let (samples, secs, d) =
                read_pass(proxy.addr, proxy.admin, &paths, CONCURRENCY, n).await?;
            let dist = Dist::of(samples.iter().map(|s| s.lat_us));
            let failed = samples.iter().filter(|s| !s.ok).count();
            let rps = samples.len() as f64 / secs.max(1e-9);
            println!(
                "  round {}: {} pass: {rps:.0} req/s, p50 {}, p99 {}, redis hits {:.0}, memory hits {:.0}, origin {:.0}",
                round + 1,
                if pass == 0 { "L2" } else { "memory" },
                fmt_us(dist.p50 as f64),
                fmt_us(dist.p99 as f64),
                d.redis_hits,
                d.mem_hits,
                d.origin_batch + d.origin_single
            );
            if pass == 0 {
                origin_calls_l2 += d.origin_batch + d.origin_single;
                redis_hits += d.redis_hits;
                l2.push((rps, dist, failed));
            } else {
                mem.push((rps, dist, failed));
            }
        }
        note_proxy_log(sec, &format!("L2 reader, round {}", round + 1), &proxy);
    }
    let mut t = Table::new(
        "",
        &[
            "pass",
            "req/s (median)",
            "p50",
            "p99",
            "req/s per round",
            "failed",
        ],
    );
    for (name, runs) in [
        ("L2: Redis hits (memory cold)", &l2),
        ("memory hits (same ids again)", &mem),
    ] {
        let mut row = vec![name.to_string()];
        row.extend(rate_cells(runs.iter().map(|r| (r.0, &r.1))));
        row.push(runs.iter().map(|r| r.2).sum::<usize>().to_string());
        t.row(row);
    }
    let ratios: Vec<f64> = l2.iter().zip(&mem).map(|(a, b)| a.0 / b.0).collect();
    t.row(vec![
        "L2 / memory throughput (median of rounds)".into(),
        ratio(median(&ratios)),
        String::new(),
        String::new(),
        ratios
            .iter()
            .map(|x| ratio(*x))
            .collect::<Vec<_>>()
            .join(", "),
        String::new(),
    ]);
    sec.tables.push(t);
    sec.notes.push(format!(
        "L2 passes: {redis_hits:.0} Redis hits and {origin_calls_l2:.0} origin calls over {} round(s) of {n} ids.",
        ctx.rounds
    ));
    drop(redis);

    outage(ctx, sec, &tmp, &sim).await
}

async fn outage(
    ctx: &Ctx,
    sec: &mut Section,
    tmp: &tempfile::TempDir,
    sim: &profile_edge::testkit::SimOrigin,
) -> Result<()> {
    let (kill_at, run_for) = if ctx.quick {
        (Duration::from_secs(3), Duration::from_secs(8))
    } else {
        (Duration::from_secs(4), Duration::from_secs(12))
    };
    let mut redis = Redis::start(&tmp.path().join("redis-outage")).await?;
    let mut opts = ProxyOpts::profiles(sim.officer_url());
    opts.redis_url = Some(redis.url());
    let proxy = Proxy::start(&ctx.proxy_bin, &tmp.path().join("outage"), opts).await?;
    warm_batch(proxy.addr, (0..WARM_IDS).collect(), 1000).await?;

    // Every 5th request is a never-seen id (memory miss -> Redis -> origin).
    let cold = Arc::new(AtomicUsize::new(COLD_BASE));
    let make: load::MakeReq = Arc::new(move |i| {
        if i % 5 == 0 {
            let id = cold.fetch_add(1, Ordering::Relaxed);
            (
                Req::get(user_path(COLD_BASE + (id - COLD_BASE) % 50_000)),
                1,
            )
        } else {
            (Req::get(user_path((i * 7) % WARM_IDS)), 0)
        }
    });
    let t0 = Instant::now();
    let load = load::closed_loop(
        proxy.addr,
        Spec {
            concurrency: OUTAGE_CONCURRENCY,
            max_requests: 10_000_000,
            max_time: run_for,
        },
        t0,
        make,
        load::no_check,
    );
    let killer = async {
        tokio::time::sleep_until((t0 + kill_at).into()).await;
        let at = micros(t0.elapsed());
        redis.guard.kill_hard();
        at
    };
    let (samples, killed_at) = tokio::join!(load, killer);
    let samples = samples?;
    let stats = Stats::get(proxy.admin).await?;
    if samples.is_empty() {
        bail!("the outage run produced no requests");
    }

    let mut t = Table::new(
        "Redis SIGKILLed under load; 1 in 5 requests is a cold id (memory miss, then Redis, then origin), the rest warm memory hits. Failed = non-2xx or socket error/timeout.",
        &["phase", "ids", "requests", "failed", "p50", "p99", "max"],
    );
    // (name, from, to) in microseconds after t0, by request start.
    let phases = [
        ("before the kill", 0, killed_at),
        ("first second after", killed_at, killed_at + 1_000_000),
        ("rest of the outage", killed_at + 1_000_000, u64::MAX),
    ];
    let mut failed_after = 0;
    let mut cold_after: Vec<u64> = Vec::new();
    for (name, from, to) in phases {
        for (ids, tag) in [("cold", 1u8), ("warm", 0u8)] {
            let part: Vec<&Sample> = samples
                .iter()
                .filter(|s| (from..to).contains(&s.at_us) && s.tag == tag)
                .collect();
            let d = Dist::of(part.iter().map(|s| s.lat_us));
            let failed = part.iter().filter(|s| !s.ok).count();
            if from > 0 {
                failed_after += failed;
                if tag == 1 {
                    cold_after.extend(part.iter().map(|s| s.lat_us));
                }
            }
            t.row(vec![
                name.to_string(),
                ids.into(),
                part.len().to_string(),
                failed.to_string(),
                fmt_us(d.p50 as f64),
                fmt_us(d.p99 as f64),
                fmt_us(d.max as f64),
            ]);
        }
    }
    sec.tables.push(t);
    let after = Dist::of(cold_after);
    let bound_ms = REDIS_TIMEOUT_MS + ORIGIN_MS + MAX_WAIT_MS;
    let total_after = samples.iter().filter(|s| s.at_us >= killed_at).count();
    sec.targets.push(Target::check(
        "no failed requests after Redis is killed",
        format!("{failed_after} of {total_after}"),
        failed_after == 0,
        "requests failed during the Redis outage (see the table)",
    ));
    sec.targets.push(Target::check(
        format!("cold-id p99 during the outage <= Redis timeout 50 ms + origin 20 ms + max_wait 10 ms = {bound_ms:.0} ms"),
        format!("p99 {}, max {}", fmt_us(after.p99 as f64), fmt_us(after.max as f64)),
        (after.p99 as f64) <= bound_ms * 1000.0,
        "cold lookups during the outage took longer than one Redis timeout plus one origin call",
    ));
    let breaker = load::get_json(proxy.admin, "/admin/stats")
        .await?
        .pointer("/tiers/redis/breaker_open")
        .map_or_else(|| "absent".to_string(), |v| v.to_string());
    sec.notes.push(format!(
        "At the end of the run /admin/stats reports `breaker_open = {breaker}`; Redis hits {:.0}, misses {:.0} (memory hit rate {}).",
        stats.redis_hits,
        stats.redis_misses,
        pct(stats.mem_hits, stats.mem_hits + stats.mem_misses)
    ));
    note_proxy_log(sec, "outage run", &proxy);
    drop(proxy);
    Ok(())
}
