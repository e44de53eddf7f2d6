//! Scenario 4: the cost of enrichment. 20-post feeds through a proxy with
//! the `/api/posts` enrich route and the `enrich-posts` policy, against a
//! second proxy that passes the same feed through untouched (its Officer
//! upstream is the Posts API), alternating runs at one request in flight.
//! Also the policy's own time per call from the plugin duration metric.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use profile_edge::testkit::SimOrigin;

use super::{note_proxy_log, start_sim, warm_paths, Ctx, Stats};
use crate::load::{self, fmt_us, median, Dist, Reply, Req, Sample, Spec};
use crate::procs::{Proxy, ProxyOpts};
use crate::report::{Section, Table, Target};

const PAGES: usize = 100;
const DURATION: &str = "profile_edge_plugin_duration_seconds";
const PLUGIN: &str = "plugin=\"enrich-posts\"";

/// A snapshot object is present and none of the stale ones the simulator
/// can put in posts (`PostSnapshots::Stale` names carry "(old name)") is
/// left.
pub fn is_enriched(r: &Reply) -> bool {
    let has = |needle: &[u8]| r.body.windows(needle.len()).any(|w| w == needle);
    has(b"\"userSnapshot\":{") && !has(b"(old name)")
}

pub fn feed_path(i: usize) -> String {
    format!("/api/posts?limit=20&offset={}", (i % PAGES) * 20)
}

async fn plugin_metrics(admin: std::net::SocketAddr) -> Result<(f64, f64)> {
    let text = load::metrics_text(admin).await?;
    Ok((
        load::metric(&text, &format!("{DURATION}_sum"), &[PLUGIN]),
        load::metric(&text, &format!("{DURATION}_count"), &[PLUGIN]),
    ))
}

async fn measure(addr: std::net::SocketAddr, n: usize) -> Result<Vec<Sample>> {
    let make: load::MakeReq = Arc::new(|i| (Req::get(feed_path(i)), 0));
    load::closed_loop(
        addr,
        Spec {
            concurrency: 1,
            max_requests: n,
            max_time: Duration::from_secs(120),
        },
        Instant::now(),
        make,
        is_enriched,
    )
    .await
}

/// Two proxies in front of one simulated Posts API, measured alternately:
/// one enriching `/api/posts` with `enrich-posts`, one passing it through.
pub struct Comparison {
    pub enriched: Proxy,
    pub plain: Proxy,
    pub plain_runs: Vec<Vec<Sample>>,
    pub enriched_runs: Vec<Vec<Sample>>,
    /// Policy calls and their total seconds during the runs (metrics).
    pub calls: f64,
    pub policy_secs: f64,
    /// What `/admin/stats` of the enriched proxy counted during the runs.
    pub stats: Stats,
}

impl Comparison {
    /// Starts both proxies (under `taskset -c CPU` when given), warms the
    /// profiles of every page's authors, then runs `per_run` requests at
    /// one in flight through each, alternating, `rounds` times.
    pub async fn run(
        ctx: &Ctx,
        dir: &std::path::Path,
        sim: &SimOrigin,
        per_run: usize,
        rounds: usize,
        cpu: Option<usize>,
    ) -> Result<Comparison> {
        let plugin = ctx.plugin("enrich_posts.wasm");
        if !plugin.exists() {
            bail!("{} missing (plugins/build.sh builds it)", plugin.display());
        }
        let mut opts = ProxyOpts::profiles(sim.officer_url());
        opts.posts_url = Some(sim.posts_url());
        opts.enrich_plugin = Some(plugin);
        opts.cpu = cpu;
        let enriched = Proxy::start(&ctx.proxy_bin, &dir.join("enriched"), opts).await?;
        let mut plain_opts = ProxyOpts::profiles(sim.posts_url());
        plain_opts.cpu = cpu;
        let plain = Proxy::start(&ctx.proxy_bin, &dir.join("plain"), plain_opts).await?;

        // Warm the profile tiers with every author of every page.
        warm_paths(enriched.addr, (0..PAGES).map(feed_path).collect(), 4).await?;
        let e = load::once(enriched.addr, &Req::get(feed_path(0))).await?;
        let p = load::once(plain.addr, &Req::get(feed_path(0))).await?;
        if e.status != 200 || !is_enriched(&e) {
            bail!(
                "the enriched proxy answered {} without userSnapshot",
                e.status
            );
        }
        if p.status != 200 || p.body == e.body {
            bail!("the plain proxy answered {} (or enriched)", p.status);
        }
        // Profiles now come from memory; the feed itself costs nothing at
        // the origin, so the difference between the two proxies is the
        // enrichment.
        let latency = sim.latency();
        sim.set_latency(Duration::ZERO);
        let stats_before = Stats::get(enriched.admin).await?;
        let (sum0, count0) = plugin_metrics(enriched.admin).await?;

        let mut plain_runs = Vec::new();
        let mut enriched_runs = Vec::new();
        for round in 0..rounds {
            let a = measure(plain.addr, per_run).await.context("plain run")?;
            let b = measure(enriched.addr, per_run)
                .await
                .context("enriched run")?;
            let (da, db) = (
                Dist::of(a.iter().map(|s| s.lat_us)),
                Dist::of(b.iter().map(|s| s.lat_us)),
            );
            println!(
                "  round {}: plain p50 {}, enriched p50 {} (+{})",
                round + 1,
                fmt_us(da.p50 as f64),
                fmt_us(db.p50 as f64),
                fmt_us(db.p50 as f64 - da.p50 as f64)
            );
            plain_runs.push(a);
            enriched_runs.push(b);
        }
        let (sum1, count1) = plugin_metrics(enriched.admin).await?;
        let stats = Stats::get(enriched.admin).await?.minus(&stats_before);
        sim.set_latency(latency);
        Ok(Comparison {
            enriched,
            plain,
            plain_runs,
            enriched_runs,
            calls: count1 - count0,
            policy_secs: sum1 - sum0,
            stats,
        })
    }

    fn p50s(runs: &[Vec<Sample>]) -> Vec<f64> {
        runs.iter()
            .map(|r| Dist::of(r.iter().map(|s| s.lat_us)).p50 as f64)
            .collect()
    }

    /// Enriched p50 minus plain p50, per round.
    pub fn added_per_round(&self) -> Vec<f64> {
        Self::p50s(&self.enriched_runs)
            .iter()
            .zip(Self::p50s(&self.plain_runs))
            .map(|(b, a)| b - a)
            .collect()
    }

    fn responses(&self) -> f64 {
        self.enriched_runs.iter().map(Vec::len).sum::<usize>() as f64
    }

    pub fn calls_per_feed(&self) -> f64 {
        self.calls / self.responses().max(1.0)
    }

    pub fn policy_us_per_call(&self) -> f64 {
        1e6 * self.policy_secs / self.calls.max(1.0)
    }

    pub fn policy_us_per_feed(&self) -> f64 {
        1e6 * self.policy_secs / self.responses().max(1.0)
    }

    /// Responses that were not 2xx or (enriched side) lacked a snapshot.
    pub fn failed(&self) -> usize {
        self.plain_runs
            .iter()
            .chain(&self.enriched_runs)
            .flatten()
            .filter(|s| !s.ok)
            .count()
            + self
                .enriched_runs
                .iter()
                .flatten()
                .filter(|s| !s.flag)
                .count()
    }
}

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let per_run = if ctx.quick { 500 } else { 2000 };
    sec.client = format!(
        "the bench's hyper client, 1 request in flight (HTTP/1.1 keep-alive), `GET /api/posts?limit=20&offset=...` over {PAGES} pages; {per_run} requests per run, plain and enriched alternated for {} round(s)",
        ctx.rounds
    );
    let tmp = ctx.tempdir("enrich")?;
    let sim = start_sim(100_000, Duration::from_millis(20)).await?;
    let c = Comparison::run(ctx, tmp.path(), &sim, per_run, ctx.rounds, None).await?;
    let (plain_runs, enriched_runs, d) = (&c.plain_runs, &c.enriched_runs, c.stats);

    let mut t = Table::new(
        "",
        &[
            "proxy",
            "p50 (median of runs)",
            "p99",
            "mean",
            "req/s",
            "enriched responses",
            "failed",
        ],
    );
    let mut p50s = [Vec::new(), Vec::new()];
    for (k, (name, runs)) in [
        ("plain passthrough", &plain_runs),
        ("enrich-posts", &enriched_runs),
    ]
    .into_iter()
    .enumerate()
    {
        let dists: Vec<Dist> = runs
            .iter()
            .map(|r| Dist::of(r.iter().map(|s| s.lat_us)))
            .collect();
        p50s[k] = dists.iter().map(|d| d.p50 as f64).collect();
        let total: usize = runs.iter().map(Vec::len).sum();
        let secs: f64 = dists.iter().map(|d| d.mean * d.n as f64).sum::<f64>() / 1e6;
        t.row(vec![
            name.to_string(),
            fmt_us(median(&p50s[k])),
            fmt_us(median(
                &dists.iter().map(|d| d.p99 as f64).collect::<Vec<_>>(),
            )),
            fmt_us(median(&dists.iter().map(|d| d.mean).collect::<Vec<_>>())),
            format!("{:.0}", total as f64 / secs.max(1e-9)),
            format!(
                "{} of {total}",
                runs.iter().flatten().filter(|s| s.flag).count()
            ),
            runs.iter().flatten().filter(|s| !s.ok).count().to_string(),
        ]);
    }
    sec.tables.push(t);

    let added = c.added_per_round();
    let added_median = median(&added);
    let per_call_us = c.policy_us_per_call();
    let per_feed_us = c.policy_us_per_feed();

    let mut t2 = Table::new("", &["figure", "value"]);
    t2.row(vec![
        "added p50 per feed (enriched - plain, median of rounds)".into(),
        format!(
            "{} (per round: {})",
            fmt_us(added_median),
            added
                .iter()
                .map(|x| fmt_us(*x))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ]);
    t2.row(vec![
        "policy calls per response".into(),
        format!("{:.2}", c.calls_per_feed()),
    ]);
    t2.row(vec![
        "policy time per call (mean, metrics)".into(),
        fmt_us(per_call_us),
    ]);
    t2.row(vec![
        "policy time per feed (mean, metrics)".into(),
        fmt_us(per_feed_us),
    ]);
    t2.row(vec![
        "profile lookups during the runs (memory hits / misses), origin calls".into(),
        format!(
            "{:.0} / {:.0}, {:.0}",
            d.mem_hits,
            d.mem_misses,
            d.origin_batch + d.origin_single
        ),
    ]);
    sec.tables.push(t2);

    sec.targets.push(Target::check(
        "median added per 20-post feed < 50 us (end to end: policy calls, lookups, JSON)",
        fmt_us(added_median),
        added_median < 50.0,
        format!(
            "the policy calls take {} per feed (mean, {} per call); the other {} is the enrich path around them (buffering the feed, a 20-id lookup, the new body)",
            fmt_us(per_feed_us),
            fmt_us(per_call_us),
            fmt_us(added_median - per_feed_us)
        ),
    ));
    sec.targets.push(Target::check(
        "policy time per 20-post feed < 50 us (2 calls, mean from metrics)",
        fmt_us(per_feed_us),
        per_feed_us < 50.0,
        format!(
            "{} per call, {:.2} calls per feed",
            fmt_us(per_call_us),
            c.calls_per_feed()
        ),
    ));
    sec.notes.push(
        "The simulated origin's latency is set to 0 for the measured runs (after warming at 20 ms), so the 1 ms granularity of its timer does not hide a difference of microseconds; both proxies fetch the same feed from it.".into(),
    );
    note_proxy_log(sec, "enriched", &c.enriched);
    note_proxy_log(sec, "plain", &c.plain);
    Ok(())
}
