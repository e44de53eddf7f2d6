//! Scenario 5: config reloads and plugin swaps under load. Two steady
//! streams (warm profile hits and enriched feeds, 8 connections each) run
//! while the bench rewrites the config file three times (toggling
//! `profiles.negative_ttl`) and swaps the plugin file three times
//! (`enrich_posts.wasm` <-> `enrich_fields.wasm`), both by atomic rename.
//! Failed requests and latency near each swap vs the rest.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::enrich::{feed_path, is_enriched};
use super::{copy, note_proxy_log, start_sim, user_path, warm_batch, warm_paths, Ctx};
use crate::load::{self, fmt_us, micros, Dist, Reply, Req, Sample, Spec};
use crate::procs::{atomic_write, proxy_config, Proxy, ProxyOpts};
use crate::report::{Section, Table, Target};

const PER_STREAM: usize = 8;
const WARM_IDS: usize = 1000;
const FIRST_SWAP: Duration = Duration::from_secs(2);
const INTERVAL: Duration = Duration::from_secs(3);
const SWAPS: u32 = 6;
const WINDOW_US: u64 = 1_000_000;

fn is_hit(r: &Reply) -> bool {
    r.header("x-cache") == "hit"
}

async fn reload_counts(admin: std::net::SocketAddr) -> Result<[f64; 4]> {
    let text = load::metrics_text(admin).await?;
    let m = |kind: &str, outcome: &str| {
        load::metric(
            &text,
            "profile_edge_reloads_total",
            &[
                &format!("kind=\"{kind}\""),
                &format!("outcome=\"{outcome}\""),
            ],
        )
    };
    Ok([
        m("config", "ok"),
        m("config", "rejected"),
        m("plugin", "ok"),
        m("plugin", "rejected"),
    ])
}

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let run_for = FIRST_SWAP + INTERVAL * SWAPS;
    sec.client = format!(
        "the bench's hyper client, two closed loops of {PER_STREAM} connections each for {} s: warm `GET /api/users/{{id}}` over {WARM_IDS} ids, and enriched 20-post feeds; swaps every {} s from t = {} s, alternating config rewrite and plugin swap",
        run_for.as_secs(),
        INTERVAL.as_secs(),
        FIRST_SWAP.as_secs()
    );
    let tmp = ctx.tempdir("reload")?;
    let plugins = tmp.path().join("plugins");
    std::fs::create_dir_all(&plugins).context("create plugins dir")?;
    let posts_wasm = ctx.plugin("enrich_posts.wasm");
    let fields_wasm = ctx.plugin("enrich_fields.wasm");
    for p in [&posts_wasm, &fields_wasm] {
        if !p.exists() {
            bail!("{} missing (plugins/build.sh builds it)", p.display());
        }
    }
    let live_plugin = plugins.join("enrich.wasm");
    copy(&posts_wasm, &live_plugin)?;
    let sim = start_sim(100_000, Duration::from_millis(20)).await?;
    let mut opts = ProxyOpts::profiles(sim.officer_url());
    opts.posts_url = Some(sim.posts_url());
    opts.enrich_plugin = Some(live_plugin.clone());
    let proxy = Proxy::start(&ctx.proxy_bin, &tmp.path().join("proxy"), opts.clone()).await?;
    warm_batch(proxy.addr, (0..WARM_IDS).collect(), 500).await?;
    warm_paths(proxy.addr, (0..100).map(feed_path).collect(), 4).await?;
    let before = reload_counts(proxy.admin).await?;

    let t0 = Instant::now();
    let spec = Spec {
        concurrency: PER_STREAM,
        max_requests: 10_000_000,
        max_time: run_for,
    };
    let profiles = load::closed_loop(
        proxy.addr,
        spec,
        t0,
        Arc::new(|i| (Req::get(user_path((i * 7) % WARM_IDS)), 0)),
        is_hit,
    );
    let feeds = load::closed_loop(
        proxy.addr,
        spec,
        t0,
        Arc::new(|i| (Req::get(feed_path(i)), 1)),
        is_enriched,
    );
    let config_path = proxy.config_path.clone();
    let (addr, admin) = (proxy.addr, proxy.admin);
    let swapper = async move {
        let mut log: Vec<(u64, String)> = Vec::new();
        for k in 0..SWAPS {
            tokio::time::sleep_until((t0 + FIRST_SWAP + INTERVAL * k).into()).await;
            let at = micros(t0.elapsed());
            if k % 2 == 0 {
                let ttl = if (k / 2) % 2 == 0 { "31s" } else { "30s" };
                let mut o = opts.clone();
                o.negative_ttl = ttl.into();
                atomic_write(&config_path, proxy_config(addr, admin, &o).as_bytes())?;
                log.push((at, format!("config: negative_ttl = {ttl}")));
            } else {
                let (src, name) = if (k / 2) % 2 == 0 {
                    (&fields_wasm, "enrich_fields.wasm")
                } else {
                    (&posts_wasm, "enrich_posts.wasm")
                };
                let bytes =
                    std::fs::read(src).with_context(|| format!("read {}", src.display()))?;
                atomic_write(&live_plugin, &bytes)?;
                log.push((at, format!("plugin: {name}")));
            }
        }
        Ok::<_, anyhow::Error>(log)
    };
    let (profiles, feeds, swaps) = tokio::join!(profiles, feeds, swapper);
    let (profiles, feeds, swaps) = (profiles?, feeds?, swaps?);
    // Let the last reload land before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = reload_counts(proxy.admin).await?;
    let delta: Vec<f64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();

    let near = |s: &Sample| {
        swaps
            .iter()
            .any(|(at, _)| s.at_us.abs_diff(*at) <= WINDOW_US)
    };
    let mut t = Table::new(
        "Near = request started within +-1 s of a swap; failed = non-2xx or socket error/timeout.",
        &[
            "stream", "window", "requests", "failed", "p50", "p99", "max", "check",
        ],
    );
    let mut total_failed = 0;
    let mut total_unflagged = [0usize; 2];
    for (k, (name, samples, check)) in [
        ("profile hits", &profiles, "not x-cache: hit"),
        ("enriched feeds", &feeds, "without userSnapshot"),
    ]
    .into_iter()
    .enumerate()
    {
        for (wname, want_near) in [("near a swap", true), ("rest", false)] {
            let part: Vec<&Sample> = samples.iter().filter(|s| near(s) == want_near).collect();
            let d = Dist::of(part.iter().map(|s| s.lat_us));
            let failed = part.iter().filter(|s| !s.ok).count();
            let unflagged = part.iter().filter(|s| s.ok && !s.flag).count();
            total_failed += failed;
            total_unflagged[k] += unflagged;
            t.row(vec![
                name.into(),
                wname.into(),
                part.len().to_string(),
                failed.to_string(),
                fmt_us(d.p50 as f64),
                fmt_us(d.p99 as f64),
                fmt_us(d.max as f64),
                format!("{unflagged} {check}"),
            ]);
        }
    }
    sec.tables.push(t);
    let mut t2 = Table::new("", &["swap at", "what"]);
    for (at, what) in &swaps {
        t2.row(vec![format!("{:.2} s", *at as f64 / 1e6), what.clone()]);
    }
    sec.tables.push(t2);
    sec.notes.push(format!(
        "Reloads counted by `profile_edge_reloads_total` during the run: config ok {:.0}, rejected {:.0}; plugin ok {:.0}, rejected {:.0} (3 and 3 expected).",
        delta[0], delta[1], delta[2], delta[3]
    ));
    let requests = profiles.len() + feeds.len();
    sec.targets.push(Target::check(
        "0 failed requests across 3 config reloads and 3 plugin swaps",
        format!("{total_failed} of {requests}"),
        total_failed == 0,
        "requests failed around a swap (see the table)",
    ));
    sec.targets.push(Target::check(
        "every reload and swap applied (3 config, 3 plugin)",
        format!("config {:.0}, plugin {:.0}", delta[0], delta[2]),
        delta[0] >= 3.0 && delta[2] >= 3.0,
        "the watcher did not apply every change within the run",
    ));
    if total_unflagged[0] > 0 || total_unflagged[1] > 0 {
        sec.notes.push(format!(
            "{} warm profile answers were not memory hits and {} feeds came back unenriched during the run.",
            total_unflagged[0], total_unflagged[1]
        ));
    }
    note_proxy_log(sec, "profile-edge", &proxy);
    drop(proxy);
    Ok(())
}
