//! Scenario 8: the backplane. (a) Propagation across three instances on
//! loopback under a background load of warm hits on all three: for each of
//! N invalidations, the profile changes at the simulated origin, `DELETE
//! /admin/cache/users/{id}` goes to one instance, and a prober on each of
//! the two others reads the id until it serves the new version; the time
//! from before the DELETE to that read is the client-observed propagation
//! (the prober's own request included). The instances' own histograms
//! (`profile_edge_invalidation_propagation_seconds`) are reported as the
//! bucket bounds their p50 and p99 fall in. (b) Warm-hit throughput of one
//! instance with the backplane on vs off, rounds alternated, while a second
//! instance invalidates other ids (so the measured one applies messages).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use profile_edge::testkit::{user_id, SimOrigin};

use super::{note_proxy_log, ratio, start_sim, user_path, warm_batch, Ctx};
use crate::load::{self, fmt_us, median, micros, Dist, Req, Spec};
use crate::procs::{Proxy, ProxyOpts, Redis};
use crate::report::{Section, Table, Target};

const WARM_IDS: usize = 1000;
const BACKGROUND_CONNS: usize = 8;
const WRK_CONNS: usize = 64;
/// Invalidations per second sent to the other instance during (b).
const TRICKLE_PER_SEC: u64 = 200;

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let n = if ctx.quick { 200 } else { 1000 };
    let secs = if ctx.quick { 3 } else { 8 };
    sec.client = format!(
        "(a) {n} invalidations, one at a time, spread over 3 instances, with {BACKGROUND_CONNS} closed-loop connections of warm hits per instance; (b) `wrk -t2 -c{WRK_CONNS} -d{secs}s` on one warm id, backplane on and off alternated for {} round(s), while a second instance invalidates {TRICKLE_PER_SEC} other ids a second",
        ctx.rounds
    );
    let tmp = ctx.tempdir("backplane")?;
    let sim = start_sim(100_000, Duration::from_millis(1)).await?;
    let redis = Redis::start(&tmp.path().join("redis")).await?;
    propagation(ctx, sec, tmp.path(), &sim, &redis, n).await?;
    on_vs_off(ctx, sec, tmp.path(), &sim, &redis, secs).await
}

fn opts(sim: &SimOrigin, redis: &Redis, backplane: bool) -> ProxyOpts {
    let mut o = ProxyOpts::profiles(sim.officer_url());
    o.redis_url = Some(redis.url());
    o.backplane = backplane;
    o
}

async fn propagation(
    ctx: &Ctx,
    sec: &mut Section,
    dir: &std::path::Path,
    sim: &SimOrigin,
    redis: &Redis,
    n: usize,
) -> Result<()> {
    let mut proxies = Vec::new();
    for i in 0..3 {
        proxies.push(
            Proxy::start(
                &ctx.proxy_bin,
                &dir.join(format!("p{i}")),
                opts(sim, redis, true),
            )
            .await?,
        );
    }
    for p in &proxies {
        warm_batch(p.addr, (0..WARM_IDS).collect(), 500).await?;
    }
    // Background warm hits on all three for the whole run.
    let stop = Arc::new(AtomicBool::new(false));
    let mut background = Vec::new();
    for p in &proxies {
        let addr = p.addr;
        let stop = stop.clone();
        background.push(tokio::spawn(async move {
            let mut total = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let make: load::MakeReq = Arc::new(|i| (Req::get(user_path(i % WARM_IDS)), 0));
                let s = load::closed_loop(
                    addr,
                    Spec {
                        concurrency: BACKGROUND_CONNS,
                        max_requests: usize::MAX,
                        max_time: Duration::from_secs(1),
                    },
                    Instant::now(),
                    make,
                    load::no_check,
                )
                .await
                .map(|s| s.len())
                .unwrap_or(0);
                total += s;
            }
            total
        }));
    }
    let t_run = Instant::now();
    // Ids the background does not read, so the prober's reads are the only
    // ones that load them again.
    let mut observed = Vec::with_capacity(n * 2);
    for k in 0..n {
        let id = user_id(WARM_IDS + k % 5000);
        let sender = k % 3;
        for p in &proxies {
            load::once(p.addr, &Req::get(user_path(WARM_IDS + k % 5000))).await?;
        }
        if !sim.update_user(&id) {
            bail!("the simulator has no user {id}");
        }
        let version = sim.profile(&id).map(|p| p.version).unwrap_or(0);
        let t0 = Instant::now();
        let del = load::once(
            proxies[sender].admin,
            &Req {
                method: http::Method::DELETE,
                path: format!("/admin/cache/users/{id}"),
                body: None,
            },
        )
        .await?;
        if del.status != 200 {
            bail!("DELETE answered {}", del.status);
        }
        // Both other instances probed at once, each timed from t0.
        let others: Vec<SocketAddr> = (0..3)
            .filter(|&i| i != sender)
            .map(|i| proxies[i].addr)
            .collect();
        let (a, b) = tokio::join!(
            async {
                until_version(others[0], &id, version)
                    .await
                    .map(|_| t0.elapsed())
            },
            async {
                until_version(others[1], &id, version)
                    .await
                    .map(|_| t0.elapsed())
            },
        );
        observed.push(micros(a?));
        observed.push(micros(b?));
    }
    let run_secs = t_run.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut background_reqs = 0;
    for b in background {
        background_reqs += b.await.unwrap_or(0);
    }
    let d = Dist::of(observed.iter().copied());
    let mut t = Table::new(
        "Client-observed propagation: from before `DELETE` on one instance to the first read on another that serves the new version",
        &["invalidations", "observations", "p50", "p99", "max", "background warm hits/s"],
    );
    t.row(vec![
        n.to_string(),
        observed.len().to_string(),
        fmt_us(d.p50 as f64),
        fmt_us(d.p99 as f64),
        fmt_us(d.max as f64),
        format!("{:.0}", background_reqs as f64 / run_secs.max(1e-9)),
    ]);
    sec.tables.push(t);
    let mut h = Table::new(
        "The instances' own histogram (`profile_edge_invalidation_propagation_seconds`, invalidation start on the sender to memory removal here): the bucket each quantile falls in",
        &["instance", "messages applied", "p50 <=", "p99 <=", "all <="],
    );
    let mut worst_p99 = 0.0f64;
    for (i, p) in proxies.iter().enumerate() {
        let text = load::metrics_text(p.admin).await?;
        let buckets = histogram(&text, "profile_edge_invalidation_propagation_seconds");
        let count = buckets.last().map_or(0.0, |b| b.1);
        let q = |f: f64| quantile_bound(&buckets, f);
        worst_p99 = worst_p99.max(q(0.99));
        h.row(vec![
            i.to_string(),
            format!("{count:.0}"),
            bound(q(0.5)),
            bound(q(0.99)),
            bound(q(1.0)),
        ]);
        note_proxy_log(sec, &format!("instance {i}"), p);
    }
    sec.tables.push(h);
    sec.targets.push(Target::check(
        format!(
            "propagation p99 < 50 ms over >= 1 000 invalidations (client-observed; {} here)",
            observed.len()
        ),
        format!(
            "p50 {}, p99 {}, max {}",
            fmt_us(d.p50 as f64),
            fmt_us(d.p99 as f64),
            fmt_us(d.max as f64)
        ),
        (d.p99 as f64) < 50_000.0 && n >= 1000,
        if n < 1000 {
            "quick run: fewer than 1 000 invalidations".to_string()
        } else {
            "p99 at or above 50 ms".to_string()
        },
    ));
    sec.notes.push(format!(
        "Histogram p99 of the slowest instance <= {}: the bound of the bucket it falls in (buckets 0.1, 0.25, 0.5, 1, 2, 5, 10, 25, 50 ms, ...).",
        bound(worst_p99)
    ));
    Ok(())
}

/// Reads `id` on `addr` until it serves `version` (at most 10 s); answers
/// the time it took.
async fn until_version(addr: SocketAddr, id: &str, version: u64) -> Result<Duration> {
    let t = Instant::now();
    let path = format!("/api/users/{id}");
    let mut conn = load::H1::connect(addr).await?;
    loop {
        let r = conn.send(&Req::get(path.clone())).await?;
        let v: serde_json::Value = serde_json::from_slice(&r.body).context("profile JSON")?;
        if v["version"].as_u64() >= Some(version) {
            return Ok(t.elapsed());
        }
        if t.elapsed() > Duration::from_secs(10) {
            bail!("{id} still old on {addr} after 10 s");
        }
    }
}

/// Cumulative buckets `(le, count)` of a histogram in Prometheus text.
fn histogram(text: &str, name: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{le=\"");
    text.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect()
}

/// The upper bound of the bucket holding quantile `q`.
fn quantile_bound(buckets: &[(f64, f64)], q: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    if total == 0.0 {
        return f64::NAN;
    }
    buckets
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map_or(f64::INFINITY, |b| b.0)
}

fn bound(seconds: f64) -> String {
    if seconds.is_nan() {
        "n/a".into()
    } else if seconds.is_infinite() {
        "> 30 s".into()
    } else {
        fmt_us(seconds * 1e6)
    }
}

async fn on_vs_off(
    ctx: &Ctx,
    sec: &mut Section,
    dir: &std::path::Path,
    sim: &SimOrigin,
    redis: &Redis,
    secs: u64,
) -> Result<()> {
    let mut runs: Vec<(bool, load::Wrk, u64)> = Vec::new();
    for round in 0..ctx.rounds {
        for on in [true, false] {
            let tag = format!("{}-{round}", if on { "on" } else { "off" });
            let measured = Proxy::start(
                &ctx.proxy_bin,
                &dir.join(format!("m-{tag}")),
                opts(sim, redis, on),
            )
            .await?;
            let other = Proxy::start(
                &ctx.proxy_bin,
                &dir.join(format!("o-{tag}")),
                opts(sim, redis, on),
            )
            .await?;
            let path = user_path(42);
            for _ in 0..2 {
                load::once(measured.addr, &Req::get(path.clone())).await?;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let trickle = {
                let (stop, admin) = (stop.clone(), other.admin);
                tokio::spawn(async move {
                    let mut sent = 0u64;
                    let every = Duration::from_micros(1_000_000 / TRICKLE_PER_SEC);
                    let mut next = tokio::time::Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        let id = user_id(10_000 + (sent as usize % 50_000));
                        let del = Req {
                            method: http::Method::DELETE,
                            path: format!("/admin/cache/users/{id}"),
                            body: None,
                        };
                        if load::once(admin, &del).await.is_ok() {
                            sent += 1;
                        }
                        next += every;
                        tokio::time::sleep_until(next).await;
                    }
                    sent
                })
            };
            let w = load::wrk(&format!("http://{}{path}", measured.addr), WRK_CONNS, secs).await?;
            stop.store(true, Ordering::Relaxed);
            let sent = trickle.await.unwrap_or(0);
            let received = load::get_json(measured.admin, "/admin/stats")
                .await?
                .pointer("/backplane/messages_received")
                .and_then(serde_json::Value::as_u64)
                .unwrap_or(0);
            println!(
                "  round {}: backplane {}: {:.0} req/s, p99 {}, {sent} invalidations on the other instance, {received} applied here",
                round + 1,
                if on { "on" } else { "off" },
                w.rps,
                fmt_us(w.p99_us)
            );
            note_proxy_log(
                sec,
                &format!("measured, backplane {}", if on { "on" } else { "off" }),
                &measured,
            );
            runs.push((on, w, received));
        }
    }
    let on: Vec<&load::Wrk> = runs.iter().filter(|r| r.0).map(|r| &r.1).collect();
    let off: Vec<&load::Wrk> = runs.iter().filter(|r| !r.0).map(|r| &r.1).collect();
    let ratios: Vec<f64> = on.iter().zip(&off).map(|(a, b)| a.rps / b.rps).collect();
    let mut t = Table::new(
        "Warm hits on one instance, backplane on vs off (same Redis tier in both)",
        &[
            "backplane",
            "req/s (median)",
            "p50",
            "p99",
            "req/s per round",
            "messages applied (median)",
        ],
    );
    for (name, set, flag) in [("on", &on, true), ("off", &off, false)] {
        let applied: Vec<f64> = runs
            .iter()
            .filter(|r| r.0 == flag)
            .map(|r| r.2 as f64)
            .collect();
        t.row(vec![
            name.into(),
            format!(
                "{:.0}",
                median(&set.iter().map(|w| w.rps).collect::<Vec<_>>())
            ),
            fmt_us(median(&set.iter().map(|w| w.p50_us).collect::<Vec<_>>())),
            fmt_us(median(&set.iter().map(|w| w.p99_us).collect::<Vec<_>>())),
            set.iter()
                .map(|w| format!("{:.0}", w.rps))
                .collect::<Vec<_>>()
                .join(", "),
            format!("{:.0}", median(&applied)),
        ]);
    }
    t.row(vec![
        "on / off (median of rounds)".into(),
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
    let m = median(&ratios);
    sec.targets.push(Target::check(
        "warm-hit throughput with the backplane on >= 0.95 of off",
        ratio(m),
        m >= 0.95,
        "the backplane slowed warm hits by more than 5 % in this run",
    ));
    Ok(())
}
