//! Scenario 1: warm hits on `GET /api/users/{id}` with `wrk -t2 -c64
//! --latency`, alternating profile-edge, nginx `proxy_cache` and the bare
//! simulated origin; median throughput and p50/p99 per system, and the
//! per-round profile-edge/nginx throughput ratio.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use super::{note_proxy_log, proxy_and_nginx, start_sim, user_path, Ctx};
use crate::load::{self, fmt_us, median, Req, Wrk};
use crate::report::{Section, Table, Target};

const CONNS: usize = 64;

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let secs = if ctx.quick { 3 } else { 10 };
    sec.client = format!(
        "`wrk -t2 -c{CONNS} -d{secs}s --latency` on one warm id, systems alternated (profile-edge, nginx, origin) for {} round(s)",
        ctx.rounds
    );
    let tmp = ctx.tempdir("warm")?;
    let sim = start_sim(1000, Duration::from_millis(20)).await?;
    let (proxy, nginx) = proxy_and_nginx(ctx, tmp.path(), &sim, sec).await?;
    let path = user_path(42);

    // Warm both caches and check that they answer from cache.
    let mut proxy_hit = false;
    for _ in 0..5 {
        let r = load::once(proxy.addr, &Req::get(path.clone())).await?;
        if r.status != 200 {
            bail!("profile-edge answered {} for {path}", r.status);
        }
        if r.header("x-cache") == "hit" {
            proxy_hit = true;
            break;
        }
    }
    if !proxy_hit {
        bail!("profile-edge did not answer x-cache: hit for {path} after 5 tries");
    }
    if let Some(n) = &nginx {
        let mut hit = false;
        for _ in 0..5 {
            let r = load::once(n.addr(), &Req::get(path.clone()))
                .await
                .context("GET through nginx")?;
            if r.header("x-cache-status") == "HIT" {
                hit = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if !hit {
            bail!("nginx did not answer X-Cache-Status: HIT for {path} after 5 tries");
        }
    }

    let mut systems: Vec<(&str, String)> =
        vec![("profile-edge", format!("http://{}{path}", proxy.addr))];
    if let Some(n) = &nginx {
        systems.push(("nginx proxy_cache", format!("http://{}{path}", n.addr())));
    }
    systems.push((
        "origin alone (20 ms)",
        format!("{}{path}", sim.officer_url()),
    ));

    let mut runs: Vec<Vec<Wrk>> = vec![Vec::new(); systems.len()];
    for round in 0..ctx.rounds {
        for (i, (name, url)) in systems.iter().enumerate() {
            let w = load::wrk(url, CONNS, secs)
                .await
                .with_context(|| format!("wrk against {name}"))?;
            println!(
                "  round {}: {name}: {:.0} req/s, p50 {}, p99 {}",
                round + 1,
                w.rps,
                fmt_us(w.p50_us),
                fmt_us(w.p99_us)
            );
            runs[i].push(w);
        }
    }

    let mut t = Table::new(
        "",
        &[
            "system",
            "req/s (median)",
            "p50",
            "p99",
            "req/s per round",
            "errors",
        ],
    );
    for (i, (name, _)) in systems.iter().enumerate() {
        let r = &runs[i];
        let rps: Vec<f64> = r.iter().map(|w| w.rps).collect();
        t.row(vec![
            name.to_string(),
            format!("{:.0}", median(&rps)),
            fmt_us(median(&r.iter().map(|w| w.p50_us).collect::<Vec<_>>())),
            fmt_us(median(&r.iter().map(|w| w.p99_us).collect::<Vec<_>>())),
            rps.iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            format!(
                "{} non-2xx, {} socket",
                r.iter().map(|w| w.non2xx).sum::<u64>(),
                r.iter().map(|w| w.socket_errors).sum::<u64>()
            ),
        ]);
    }
    sec.tables.push(t);

    let proxy_p99 = median(&runs[0].iter().map(|w| w.p99_us).collect::<Vec<_>>());
    if nginx.is_some() {
        let ratios: Vec<f64> = runs[0]
            .iter()
            .zip(&runs[1])
            .map(|(a, b)| a.rps / b.rps)
            .collect();
        let r = median(&ratios);
        sec.targets.push(Target::check(
            "throughput profile-edge / nginx >= 1.0",
            format!(
                "{r:.2} (per round: {})",
                ratios
                    .iter()
                    .map(|x| format!("{x:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            r >= 1.0,
            "profile-edge serves fewer warm hits per second than nginx on this machine",
        ));
    } else {
        sec.targets.push(Target::not_run(
            "throughput profile-edge / nginx >= 1.0",
            "nginx could not start",
        ));
    }
    let nginx_p99 = if nginx.is_some() {
        format!(
            "nginx p99 under the same load: {}",
            fmt_us(median(
                &runs[1].iter().map(|w| w.p99_us).collect::<Vec<_>>()
            ))
        )
    } else {
        "no nginx figure to compare".to_string()
    };
    sec.targets.push(Target::check(
        "profile-edge p99 < 1 ms at 64 connections",
        fmt_us(proxy_p99),
        proxy_p99 < 1000.0,
        format!("wrk's 2 threads and the proxy share the 2 cores, so requests queue for CPU ({nginx_p99})"),
    ));
    sec.notes.push(
        "The origin-alone row is bounded by the simulated 20 ms per call: 64 connections / 20 ms is about 3 200 req/s at most.".into(),
    );
    note_proxy_log(sec, "profile-edge", &proxy);
    drop(nginx);
    drop(proxy);
    Ok(())
}
