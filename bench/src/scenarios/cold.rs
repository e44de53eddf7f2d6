//! Scenario 2: cold bursts. N distinct cold ids are requested all at once
//! (one request per id, h2c streams over pre-opened connections) through
//! profile-edge (memory tier only) and through nginx `proxy_cache`; the
//! simulated origin counts the calls and batch sizes each burst caused.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use profile_edge::testkit::SimOrigin;

use super::{note_proxy_log, origin_quiet, proxy_and_nginx, start_sim, user_path, Ctx};
use crate::load::{fmt_us, median, micros, Dist, Req, H2};
use crate::report::{Section, Table, Target};

/// Streams per h2c connection (below both servers' stream limits).
const STREAMS_PER_CONN: usize = 100;
const MAX_BATCH: u64 = 50;
const MAX_INFLIGHT_BATCHES: u64 = 8;

struct Burst {
    calls: u64,
    max_batch: usize,
    batch_calls: usize,
    batch_ids: usize,
    single_calls: u64,
    lat: Dist,
    failed: usize,
    wall_us: u64,
    /// `TcpExt: ListenOverflows` grew by this much during the burst.
    listen_overflows: u64,
}

/// The kernel's count of connections dropped because a listen backlog was
/// full (whole network namespace; other processes' too).
fn listen_overflows() -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut rows = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "ListenOverflows")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

async fn burst(addr: SocketAddr, ids: &[usize], sim: &SimOrigin) -> Result<Burst> {
    let n = ids.len();
    let mut conns = Vec::new();
    for _ in 0..n.div_ceil(STREAMS_PER_CONN) {
        conns.push(H2::connect(addr).await?);
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(n + 1));
    let mut set = tokio::task::JoinSet::new();
    for (k, &id) in ids.iter().enumerate() {
        let mut conn = conns[k / STREAMS_PER_CONN].clone();
        let barrier = Arc::clone(&barrier);
        let req = Req::get(user_path(id));
        set.spawn(async move {
            barrier.wait().await;
            let t = Instant::now();
            let ok = matches!(conn.send(&req).await, Ok(r) if r.status == 200);
            (micros(t.elapsed()), ok)
        });
    }
    origin_quiet(sim).await;
    sim.stats().reset();
    let overflows_before = listen_overflows();
    barrier.wait().await;
    let t0 = Instant::now();
    let mut lat = Vec::with_capacity(n);
    let mut failed = 0;
    let collect = async {
        while let Some(j) = set.join_next().await {
            let (us, ok) = j.context("burst task panicked")?;
            lat.push(us);
            if !ok {
                failed += 1;
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(Duration::from_secs(120), collect)
        .await
        .map_err(|_| anyhow!("burst of {n} did not finish within 120 s"))??;
    let wall_us = micros(t0.elapsed());
    let stats = sim.stats();
    let sizes = stats.batch_sizes();
    Ok(Burst {
        calls: stats.origin_calls(),
        max_batch: sizes.iter().copied().max().unwrap_or(0),
        batch_calls: sizes.len(),
        batch_ids: sizes.iter().sum(),
        single_calls: stats.single_calls.load(std::sync::atomic::Ordering::SeqCst),
        lat: Dist::of(lat),
        failed,
        wall_us,
        listen_overflows: listen_overflows().saturating_sub(overflows_before),
    })
}

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let sizes: &[usize] = if ctx.quick {
        &[100, 1000]
    } else {
        &[100, 1000, 10_000]
    };
    sec.client = format!(
        "the bench's hyper client over h2c: ceil(N/{STREAMS_PER_CONN}) connections opened first, then all N requests (one per distinct cold id) released at once; profile-edge and nginx alternate, {} round(s), fresh ids every burst",
        ctx.rounds
    );
    let tmp = ctx.tempdir("cold")?;
    let sim = start_sim(100_000, Duration::from_millis(20)).await?;
    let (proxy, nginx) = proxy_and_nginx(ctx, tmp.path(), &sim, sec).await?;
    let mut systems: Vec<(&str, SocketAddr)> = vec![("profile-edge", proxy.addr)];
    if let Some(n) = &nginx {
        systems.push(("nginx proxy_cache", n.h2_addr()));
    }

    // results[size][system] = one Burst per round
    let mut results: Vec<Vec<Vec<Burst>>> = sizes
        .iter()
        .map(|_| systems.iter().map(|_| Vec::new()).collect())
        .collect();
    let mut next_id = 0usize;
    for round in 0..ctx.rounds {
        for (si, &n) in sizes.iter().enumerate() {
            let ids: Vec<usize> = (next_id..next_id + n).collect();
            next_id += n;
            for (k, (name, addr)) in systems.iter().enumerate() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                let b = burst(*addr, &ids, &sim)
                    .await
                    .with_context(|| format!("burst of {n} through {name}"))?;
                println!(
                    "  round {}: N={n} {name}: {} origin calls (max batch {}), p99 {}, {} failed",
                    round + 1,
                    b.calls,
                    b.max_batch,
                    fmt_us(b.lat.p99 as f64),
                    b.failed
                );
                results[si][k].push(b);
            }
        }
    }

    let mut t = Table::new(
        "Origin calls are HTTP calls that reached the simulated Officer during the burst (batch + single); latencies are per request, from release to full body.",
        &[
            "N",
            "system",
            "origin calls (per round)",
            "bound ceil(N/50)+8",
            "batch calls / max batch",
            "p50",
            "p99 (median of rounds)",
            "burst wall time",
            "failed",
            "listen overflows",
        ],
    );
    for (si, &n) in sizes.iter().enumerate() {
        let bound = (n as u64).div_ceil(MAX_BATCH) + MAX_INFLIGHT_BATCHES;
        for (k, (name, _)) in systems.iter().enumerate() {
            let r = &results[si][k];
            let calls: Vec<String> = r.iter().map(|b| b.calls.to_string()).collect();
            let worst = r.iter().map(|b| b.calls).max().unwrap_or(0);
            t.row(vec![
                n.to_string(),
                name.to_string(),
                calls.join(", "),
                if k == 0 {
                    bound.to_string()
                } else {
                    "-".into()
                },
                format!(
                    "{} / {}",
                    r.iter().map(|b| b.batch_calls).max().unwrap_or(0),
                    r.iter().map(|b| b.max_batch).max().unwrap_or(0)
                ),
                fmt_us(median(
                    &r.iter().map(|b| b.lat.p50 as f64).collect::<Vec<_>>(),
                )),
                fmt_us(median(
                    &r.iter().map(|b| b.lat.p99 as f64).collect::<Vec<_>>(),
                )),
                fmt_us(median(
                    &r.iter().map(|b| b.wall_us as f64).collect::<Vec<_>>(),
                )),
                r.iter().map(|b| b.failed).sum::<usize>().to_string(),
                r.iter()
                    .map(|b| b.listen_overflows.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ]);
            if k == 0 {
                let failed: usize = r.iter().map(|b| b.failed).sum();
                sec.targets.push(Target::check(
                    format!("N={n}: origin calls <= ceil(N/50)+8 = {bound}"),
                    format!("{worst} (worst round){}", if failed > 0 { format!(", {failed} failed") } else { String::new() }),
                    worst <= bound,
                    r.iter().max_by_key(|b| b.calls).map_or_else(String::new, |b| {
                        format!(
                            "worst round: {} batch calls carrying {} ids (mean {:.1} per call), {} single calls: batches went out part-full",
                            b.batch_calls,
                            b.batch_ids,
                            b.batch_ids as f64 / b.batch_calls.max(1) as f64,
                            b.single_calls
                        )
                    }),
                ));
            }
        }
    }
    sec.tables.push(t);
    if systems.len() > 1 {
        sec.notes.push("nginx's proxy_cache_lock only merges requests for the same URL, so each distinct cold id costs one origin call, on its own upstream connection.".into());
        sec.notes.push("Listen overflows (per round; kernel `TcpExt: ListenOverflows`, counted while the burst ran) are connections dropped because a listen backlog was full; each costs the connecting side a SYN retransmit of 1 s or more. When nginx opens N upstream connections at once they all land on the simulated origin's accept backlog (tokio's default of 1024); a non-zero count in nginx's rows means part of its tail is SYN retransmits, which an origin behind nginx would cause just the same.".into());
    }
    if let Some(&n) = sizes.last() {
        let batches = (n as u64).div_ceil(MAX_BATCH);
        let waves = batches.div_ceil(MAX_INFLIGHT_BATCHES);
        sec.notes.push(format!(
            "For profile-edge at N={n}: {batches} batches of 50 with at most {MAX_INFLIGHT_BATCHES} in flight go out in {waves} waves of one 20 ms origin call each, so the last ids wait at least {} ms by design (the `coalescing.max_inflight_batches` trade-off).",
            waves * 20
        ));
    }
    sec.notes.push(
        "The client, the simulated origin and the proxy share the 2 cores: the burst's p99 includes the time to push N requests through one process.".into(),
    );
    note_proxy_log(sec, "profile-edge", &proxy);
    drop(nginx);
    drop(proxy);
    Ok(())
}
