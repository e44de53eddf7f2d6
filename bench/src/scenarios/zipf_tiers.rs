//! Scenario 3: Zipf-distributed single GETs over 100k users, for memory
//! capacity 1 000 and 100 000, each without and with Redis: a first pass on
//! cold tiers, a second pass (new sample, same popularity) on warm tiers.
//! Hit rates per tier come from `/admin/stats`, origin calls from the
//! simulated Officer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::SeedableRng;

use super::{note_proxy_log, origin_quiet, pct, start_sim, user_path, Ctx, Stats};
use crate::load::{self, fmt_us, Dist, Req, Spec};
use crate::procs::{Proxy, ProxyOpts, Redis};
use crate::report::{Section, Table, Target};
use crate::zipf::Zipf;

const USERS: usize = 100_000;
const CONCURRENCY: usize = 64;
const PASS_TIME_LIMIT: Duration = Duration::from_secs(300);

fn sample(zipf: &Zipf, n: usize, seed: u64) -> Arc<Vec<u32>> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    Arc::new(
        (0..n)
            .map(|_| u32::try_from(zipf.sample(&mut rng)).unwrap_or(0))
            .collect(),
    )
}

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let lookups = if ctx.quick { 100_000 } else { 1_000_000 };
    sec.client = format!(
        "the bench's hyper client, {CONCURRENCY} requests in flight (HTTP/1.1 keep-alive), single `GET /api/users/{{id}}`; ids drawn from Zipf(s = 1.0) over {USERS} users, {lookups} lookups per pass (each pass bounded to {} s)",
        PASS_TIME_LIMIT.as_secs()
    );
    let zipf = Zipf::new(USERS, 1.0);
    let passes = [
        ("1 (cold tiers)", sample(&zipf, lookups, 1)),
        ("2 (warm tiers)", sample(&zipf, lookups, 2)),
    ];
    let distinct = {
        let mut seen = vec![false; USERS];
        passes[0].1.iter().for_each(|&r| seen[r as usize] = true);
        seen.iter().filter(|&&b| b).count()
    };
    let tmp = ctx.tempdir("zipf")?;
    let sim = start_sim(USERS, Duration::from_millis(20)).await?;

    let mut t = Table::new(
        "Memory hit rate = memory hits / lookups seen by the tiers; Redis hit rate = Redis hits / memory misses that asked Redis; origin calls = HTTP calls reaching the simulated Officer (each batch call carries up to 50 ids).",
        &[
            "memory capacity",
            "Redis",
            "pass",
            "lookups",
            "memory hit rate",
            "Redis hit rate",
            "origin calls",
            "origin calls / lookups",
            "origin ids / lookups",
            "fewer origin calls than lookups",
            "req/s",
            "p50 / p99",
            "failed",
        ],
    );
    for (ci, (capacity, with_redis)) in [
        (1000u64, false),
        (1000, true),
        (100_000, false),
        (100_000, true),
    ]
    .into_iter()
    .enumerate()
    {
        let dir = tmp.path().join(format!("c{ci}"));
        let redis = if with_redis {
            Some(Redis::start(&dir.join("redis")).await?)
        } else {
            None
        };
        let mut opts = ProxyOpts::profiles(sim.officer_url());
        opts.memory_capacity = capacity;
        opts.redis_url = redis.as_ref().map(Redis::url);
        let proxy = Proxy::start(&ctx.proxy_bin, &dir.join("proxy"), opts).await?;
        for (pi, (pass_name, seq)) in passes.iter().enumerate() {
            origin_quiet(&sim).await;
            let before = Stats::get(proxy.admin).await?;
            sim.stats().reset();
            let seq = Arc::clone(seq);
            let make: load::MakeReq =
                Arc::new(move |i| (Req::get(user_path(seq[i % seq.len()] as usize)), 0));
            let t0 = Instant::now();
            let samples = load::closed_loop(
                proxy.addr,
                Spec {
                    concurrency: CONCURRENCY,
                    max_requests: lookups,
                    max_time: PASS_TIME_LIMIT,
                },
                t0,
                make,
                load::no_check,
            )
            .await
            .with_context(|| {
                format!("capacity {capacity}, redis {with_redis}, pass {pass_name}")
            })?;
            let elapsed = t0.elapsed().as_secs_f64();
            origin_quiet(&sim).await;
            let d = Stats::get(proxy.admin).await?.minus(&before);
            let n = samples.len() as f64;
            let failed = samples.iter().filter(|s| !s.ok).count();
            let lat = Dist::of(samples.iter().map(|s| s.lat_us));
            let st = sim.stats();
            let calls = st.origin_calls() as f64;
            let ids = (st.batch_ids.load(std::sync::atomic::Ordering::SeqCst)
                + st.single_calls.load(std::sync::atomic::Ordering::SeqCst))
                as f64;
            let reduction = 1.0 - calls / n.max(1.0);
            println!(
                "  capacity {capacity}, redis {with_redis}, pass {pass_name}: {} lookups in {elapsed:.1} s, memory hit {}, origin calls {calls}",
                samples.len(),
                pct(d.mem_hits, d.mem_hits + d.mem_misses)
            );
            t.row(vec![
                capacity.to_string(),
                if with_redis { "yes" } else { "no" }.into(),
                pass_name.to_string(),
                format!(
                    "{}{}",
                    samples.len(),
                    if samples.len() < lookups {
                        " (time limit)"
                    } else {
                        ""
                    }
                ),
                pct(d.mem_hits, d.mem_hits + d.mem_misses),
                if with_redis {
                    pct(d.redis_hits, d.redis_hits + d.redis_misses)
                } else {
                    "-".into()
                },
                format!("{calls:.0}"),
                pct(calls, n),
                pct(ids, n),
                format!("{:.2} %", 100.0 * reduction),
                format!("{:.0}", n / elapsed.max(1e-9)),
                format!("{} / {}", fmt_us(lat.p50 as f64), fmt_us(lat.p99 as f64)),
                failed.to_string(),
            ]);
            if pi == 1 {
                sec.targets.push(Target::check(
                    format!(
                        "capacity {capacity}, {}: >= 99 % fewer origin calls than lookups (warm tiers)",
                        if with_redis { "with Redis" } else { "no Redis" }
                    ),
                    format!("{:.2} % fewer", 100.0 * reduction),
                    reduction >= 0.99,
                    format!(
                        "memory holds {capacity} of the {distinct} ids a pass touches; {} of lookups still go to the origin as ids, in calls of {:.1} ids on average",
                        pct(ids, n),
                        ids / calls.max(1.0)
                    ),
                ));
            }
        }
        note_proxy_log(
            sec,
            &format!("capacity {capacity}, Redis {with_redis}"),
            &proxy,
        );
        drop(proxy);
        drop(redis);
    }
    sec.tables.push(t);
    sec.notes.push(
        "With capacity 100000 nothing is evicted from memory, so Redis is only asked for ids this single instance never loaded, which Redis cannot hold either: its hit rate there is 0 by construction (Redis pays off across instances and restarts, see scenario 6).".into(),
    );
    sec.notes.push(format!(
        "A pass of {lookups} Zipf lookups touches {distinct} distinct ids of {USERS}; the second pass draws a new sample from the same popularity ranking."
    ));
    Ok(())
}
