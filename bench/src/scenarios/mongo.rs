//! Scenario 9: MongoDB (issue 11), against the server the test harness
//! starts (SecantusDB, a separate process) or `MONGODB_URI`'s.
//!
//! (a) L3 hits: a first proxy with Redis and the Mongo tier fills both with
//! N profiles; fresh readers with only one of the two below memory read
//! each id once, so every lookup is a hit of that tier (checked on
//! `x-cache-tier`); Mongo and Redis readers alternate, order swapped every
//! round. (b) Change-stream lag: three instances sharing Redis with the
//! backplane, the Mongo tier, `[[change_streams]]` on `users`,
//! `[post_snapshots]` and the shipped invalidation policy; N users changed
//! one at a time (the simulated Officer first, then the user document),
//! each instance probed until it serves the new version: the time from the
//! write to all three serving it, and the stream's own counts. (c) Post
//! snapshot refresh: one author with 10 000 stored posts,
//! `POST /admin/events` `profile-updated` on proxies with `[post_snapshots]`
//! at two batch sizes, rounds alternated: posts rewritten per second, and
//! every post checked for the new avatarUrl afterwards.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use mongodb::bson::{doc, Bson, Document};
use mongodb::{Collection, IndexModel};
use profile_edge::testkit::{user_id, SimOrigin};
use serde_json::Value;

use super::{note_proxy_log, rate_cells, ratio, start_sim, user_path, warm_batch, Ctx};
use crate::load::{self, fmt_us, median, micros, Dist, Reply, Req, Spec};
use crate::procs::{toml_str, Mongo, Proxy, ProxyOpts, Redis};
use crate::report::{Section, Table};

/// Requests in flight for the L3 passes (as the Redis scenario's L2 passes).
const CONCURRENCY: usize = 64;
/// Per-call timeout of both remote tiers in (a): room enough that a loaded
/// machine does not turn hits into timeouts and breaker trips, so that the
/// passes measure the tier and not the fallback (the defaults are 50 ms
/// for Redis and 100 ms for Mongo).
const L3_TIER_TIMEOUT: &str = "1s";
/// The filler's Mongo tier timeout in (a).
const FILL_TIMEOUT: &str = "30s";
const STREAM: &str = "officer-users";
/// Pause between two probe reads of one instance: a tight loop of three
/// probers would take the CPU the proxies and the server need.
const PROBE_PAUSE: Duration = Duration::from_millis(1);
/// Give up on one change after this long.
const PROBE_LIMIT: Duration = Duration::from_secs(30);
/// The author's posts in (c), and other authors' posts beside them (which
/// must stay untouched).
const POSTS: usize = 10_000;
const OTHER_POSTS: usize = 1_000;
/// Batch sizes compared in (c); the first is the default.
const BATCH_SIZES: [u32; 2] = [500, 100];
/// Longest one `POST /admin/events` may take in (c).
const EVENT_LIMIT: Duration = Duration::from_secs(300);

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    let l3_ids = if ctx.quick { 5_000 } else { 20_000 };
    let changes = if ctx.quick { 100 } else { 1_000 };
    sec.client = format!(
        "(a) the bench's hyper client, {CONCURRENCY} in flight (HTTP/1.1 keep-alive, closed loop), {l3_ids} ids each read once per pass, Mongo and Redis passes alternated for {} round(s); (b) {changes} changes one at a time, each instance probed on its own keep-alive connection every {} ms until it serves the new version; (c) one `POST /admin/events` per round, batch sizes {} alternated for {} round(s)",
        ctx.rounds,
        PROBE_PAUSE.as_millis(),
        BATCH_SIZES.map(|b| b.to_string()).join(" and "),
        ctx.rounds
    );
    let load_at_start = loadavg();
    let tmp = ctx.tempdir("mongo")?;
    let mongo = Mongo::start().await?;
    // The house origin: 20 ms per call (the refreshes in (b) and (c) load
    // from it once per change).
    let sim = start_sim(100_000, Duration::from_millis(20)).await?;

    let mut errors = Vec::new();
    if let Err(e) = l3_hits(ctx, sec, tmp.path(), &sim, &mongo, l3_ids).await {
        errors.push(format!("(a) L3 hits: {e:#}"));
    }
    if let Err(e) = change_lag(ctx, sec, tmp.path(), &sim, &mongo, changes).await {
        errors.push(format!("(b) change-stream lag: {e:#}"));
    }
    if let Err(e) = post_refresh(ctx, sec, tmp.path(), &sim, &mongo).await {
        errors.push(format!("(c) post snapshot refresh: {e:#}"));
    }
    sec.notes.push(format!(
        "MongoDB server: {}. Load average (1, 5, 15 min) {load_at_start} at the start of the scenario, {} at the end.",
        mongo.describe(),
        loadavg()
    ));
    if !errors.is_empty() {
        bail!("{}", errors.join("\n"));
    }
    Ok(())
}

/// `/proc/loadavg`'s first three fields.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "unknown".into())
}

fn mongo_tier(mongo: &Mongo, collection: &str, timeout: &str) -> String {
    format!(
        "[tiers.mongo]\nuri = {}\ndatabase = {}\ncollection = {}\nttl = \"1h\"\ntimeout = {}\n",
        toml_str(mongo.uri()),
        toml_str(mongo.database()),
        toml_str(collection),
        toml_str(timeout)
    )
}

fn redis_tier(redis: &Redis, timeout: &str) -> String {
    format!(
        "[tiers.redis]\nurl = {}\nttl = \"1h\"\ntimeout = {}\n",
        toml_str(&redis.url()),
        toml_str(timeout)
    )
}

fn opts(sim: &SimOrigin, extra: String) -> ProxyOpts {
    let mut o = ProxyOpts::profiles(sim.officer_url());
    o.extra = extra;
    o
}

fn num(v: &Value, pointer: &str) -> f64 {
    v.pointer(pointer).and_then(Value::as_f64).unwrap_or(0.0)
}

// ---------------------------------------------------------------- (a)

#[derive(Clone, Copy, PartialEq)]
enum Lower {
    Mongo,
    Redis,
}

impl Lower {
    fn name(self) -> &'static str {
        match self {
            Lower::Mongo => "mongo",
            Lower::Redis => "redis",
        }
    }

    fn check(self) -> load::Check {
        fn mongo(r: &Reply) -> bool {
            r.header("x-cache-tier") == "mongo"
        }
        fn redis(r: &Reply) -> bool {
            r.header("x-cache-tier") == "redis"
        }
        match self {
            Lower::Mongo => mongo,
            Lower::Redis => redis,
        }
    }
}

struct Pass {
    lower: Lower,
    rps: f64,
    dist: Dist,
    requests: usize,
    failed: usize,
    /// Replies whose `x-cache-tier` named the tier under test.
    tier_hits: usize,
    origin_calls: f64,
}

async fn l3_hits(
    ctx: &Ctx,
    sec: &mut Section,
    dir: &Path,
    sim: &SimOrigin,
    mongo: &Mongo,
    n: usize,
) -> Result<()> {
    let redis = Redis::start(&dir.join("redis-l3")).await?;
    let redis_toml = redis_tier(&redis, L3_TIER_TIMEOUT);
    let mongo_toml = mongo_tier(mongo, "snapshots_l3", L3_TIER_TIMEOUT);
    // The filler's Mongo writes get a long timeout: on a slow server a
    // batch upsert past the tier timeout opens the breaker and the rest of
    // the fill is skipped, which would leave the readers misses to measure.
    let fill_secs = {
        let filler = Proxy::start(
            &ctx.proxy_bin,
            &dir.join("l3-filler"),
            opts(
                sim,
                format!(
                    "{redis_toml}\n{}",
                    mongo_tier(mongo, "snapshots_l3", FILL_TIMEOUT)
                ),
            ),
        )
        .await?;
        let t = Instant::now();
        warm_batch(filler.addr, (0..n).collect(), 1000).await?;
        let secs = t.elapsed().as_secs_f64();
        println!("  (a) filled Redis and the Mongo tier with {n} profiles in {secs:.1} s");
        note_proxy_log(sec, "L3 filler", &filler);
        secs
    };
    let stored = mongo
        .db()
        .collection::<Document>("snapshots_l3")
        .count_documents(doc! {})
        .await
        .context("count the Mongo tier's documents")?;
    if stored < n as u64 {
        bail!("the filler left {stored} of {n} profiles in the Mongo tier");
    }

    let paths: Arc<Vec<String>> = Arc::new((0..n).map(user_path).collect());
    let mut passes: Vec<Pass> = Vec::new();
    let mut direct: Vec<(f64, Dist)> = Vec::new();
    for round in 0..ctx.rounds {
        let order = if round % 2 == 0 {
            [Lower::Mongo, Lower::Redis]
        } else {
            [Lower::Redis, Lower::Mongo]
        };
        for lower in order {
            let extra = match lower {
                Lower::Mongo => mongo_toml.clone(),
                Lower::Redis => redis_toml.clone(),
            };
            let proxy = Proxy::start(
                &ctx.proxy_bin,
                &dir.join(format!("l3-{}-{round}", lower.name())),
                opts(sim, extra),
            )
            .await?;
            let before = load::get_json(proxy.admin, "/admin/stats").await?;
            let p = Arc::clone(&paths);
            let t0 = Instant::now();
            let samples = load::closed_loop(
                proxy.addr,
                Spec {
                    concurrency: CONCURRENCY,
                    max_requests: n,
                    max_time: Duration::from_secs(300),
                },
                t0,
                Arc::new(move |i| (Req::get(p[i % p.len()].clone()), 0)),
                lower.check(),
            )
            .await?;
            let secs = t0.elapsed().as_secs_f64();
            let after = load::get_json(proxy.admin, "/admin/stats").await?;
            let origin_calls = num(&after, "/origin/batch_calls")
                + num(&after, "/origin/single_calls")
                - num(&before, "/origin/batch_calls")
                - num(&before, "/origin/single_calls");
            let pass = Pass {
                lower,
                rps: samples.len() as f64 / secs.max(1e-9),
                dist: Dist::of(samples.iter().map(|s| s.lat_us)),
                requests: samples.len(),
                failed: samples.iter().filter(|s| !s.ok).count(),
                tier_hits: samples.iter().filter(|s| s.flag).count(),
                origin_calls,
            };
            println!(
                "  (a) round {}: {} hits: {:.0} req/s, p50 {}, p99 {}, {} of {} from the tier, {} failed, origin calls {:.0}",
                round + 1,
                lower.name(),
                pass.rps,
                fmt_us(pass.dist.p50 as f64),
                fmt_us(pass.dist.p99 as f64),
                pass.tier_hits,
                pass.requests,
                pass.failed,
                pass.origin_calls
            );
            note_proxy_log(
                sec,
                &format!("L3 {} reader, round {}", lower.name(), round + 1),
                &proxy,
            );
            passes.push(pass);
        }
        let (rps, dist) = direct_reads(mongo, n).await?;
        println!(
            "  (a) round {}: the bench's driver, one find per id: {rps:.0} finds/s, p50 {}, p99 {}",
            round + 1,
            fmt_us(dist.p50 as f64),
            fmt_us(dist.p99 as f64)
        );
        direct.push((rps, dist));
    }

    let mut t = Table::new(
        "(a) L3 hits: a fresh proxy with memory and one remote tier reads each id once (memory cold), so every lookup is answered by that tier; Mongo and Redis passes alternated",
        &[
            "pass",
            "req/s (median)",
            "p50",
            "p99",
            "req/s per round",
            "p99 per round",
            "answered by the tier",
            "failed",
            "origin calls",
        ],
    );
    for (lower, name) in [
        (Lower::Mongo, "Mongo-tier hits (no Redis)"),
        (Lower::Redis, "Redis-tier hits (no Mongo)"),
    ] {
        let runs: Vec<&Pass> = passes.iter().filter(|p| p.lower == lower).collect();
        let mut row = vec![name.to_string()];
        row.extend(rate_cells(runs.iter().map(|r| (r.rps, &r.dist))));
        row.extend([
            runs.iter()
                .map(|r| fmt_us(r.dist.p99 as f64))
                .collect::<Vec<_>>()
                .join(", "),
            format!(
                "{} of {}",
                runs.iter().map(|r| r.tier_hits).sum::<usize>(),
                runs.iter().map(|r| r.requests).sum::<usize>()
            ),
            runs.iter().map(|r| r.failed).sum::<usize>().to_string(),
            format!("{:.0}", runs.iter().map(|r| r.origin_calls).sum::<f64>()),
        ]);
        t.row(row);
    }
    // Ratios within each round (the two passes of one round ran back to back).
    let mut rps_ratios = Vec::new();
    let mut p99_ratios = Vec::new();
    for pair in passes.chunks(2) {
        let (Some(m), Some(r)) = (
            pair.iter().find(|p| p.lower == Lower::Mongo),
            pair.iter().find(|p| p.lower == Lower::Redis),
        ) else {
            continue;
        };
        rps_ratios.push(m.rps / r.rps);
        p99_ratios.push(m.dist.p99 as f64 / r.dist.p99.max(1) as f64);
    }
    t.row(vec![
        "the bench's driver: one `find` by `_id` per id, same concurrency (server's share)".into(),
        format!(
            "{:.0}",
            median(&direct.iter().map(|d| d.0).collect::<Vec<_>>())
        ),
        fmt_us(median(
            &direct.iter().map(|d| d.1.p50 as f64).collect::<Vec<_>>(),
        )),
        fmt_us(median(
            &direct.iter().map(|d| d.1.p99 as f64).collect::<Vec<_>>(),
        )),
        direct
            .iter()
            .map(|d| format!("{:.0}", d.0))
            .collect::<Vec<_>>()
            .join(", "),
        direct
            .iter()
            .map(|d| fmt_us(d.1.p99 as f64))
            .collect::<Vec<_>>()
            .join(", "),
        "-".into(),
        "-".into(),
        "-".into(),
    ]);
    t.row(vec![
        "Mongo / Redis (median of rounds)".into(),
        ratio(median(&rps_ratios)),
        String::new(),
        ratio(median(&p99_ratios)),
        rps_ratios
            .iter()
            .map(|x| ratio(*x))
            .collect::<Vec<_>>()
            .join(", "),
        p99_ratios
            .iter()
            .map(|x| ratio(*x))
            .collect::<Vec<_>>()
            .join(", "),
        String::new(),
        String::new(),
        String::new(),
    ]);
    sec.tables.push(t);
    sec.notes.push(format!(
        "(a) The readers have both tiers at `timeout = \"{L3_TIER_TIMEOUT}\"` (defaults: Redis 50 ms, Mongo 100 ms) so that the passes measure hits, not the fallback; \"answered by the tier\" counts replies whose `x-cache-tier` names it. Both readers write each value into memory on the way back; a miss of either would go to the origin (20 ms). The fill (one proxy with both tiers, the batch route, 4 requests of 1 000 ids in flight, origin batches of 50, Mongo timeout {FILL_TIMEOUT}) wrote {n} profiles to Redis and the Mongo tier in {fill_secs:.1} s ({:.0} profiles/s).",
        n as f64 / fill_secs.max(1e-9)
    ));
    Ok(())
}

/// The Mongo reader's queries without the proxy: `CONCURRENCY` tasks of
/// the bench's driver, each `find({_id: {$in: [id]}})` (the tier's query
/// for one id) for the ids 0..n once; finds per second and latency.
async fn direct_reads(mongo: &Mongo, n: usize) -> Result<(f64, Dist)> {
    let coll: Collection<Document> = mongo.db().collection("snapshots_l3");
    let next = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (coll, next) = (coll.clone(), Arc::clone(&next));
        set.spawn(async move {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, anyhow::Error>(lat);
                }
                let t = Instant::now();
                let mut cursor = coll.find(doc! {"_id": {"$in": [user_id(i)]}}).await?;
                let mut found = 0;
                while cursor.advance().await? {
                    found += 1;
                }
                if found != 1 {
                    bail!("{} found {found} times in the Mongo tier", user_id(i));
                }
                lat.push(micros(t.elapsed()));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r.context("direct reader panicked")??);
    }
    let secs = t0.elapsed().as_secs_f64();
    Ok((all.len() as f64 / secs.max(1e-9), Dist::of(all)))
}

// ---------------------------------------------------------------- (b)

async fn stream_stats(admin: SocketAddr) -> Result<Value> {
    let s = load::get_json(admin, "/admin/stats").await?;
    s["change_streams"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["name"] == STREAM))
        .cloned()
        .with_context(|| format!("no {STREAM} in /admin/stats: {s}"))
}

async fn update_events(admin: SocketAddr) -> Result<f64> {
    let text = load::metrics_text(admin).await?;
    Ok(load::metric(
        &text,
        "profile_edge_change_stream_events_total",
        &["operation=\"update\"", &format!("stream=\"{STREAM}\"")],
    ))
}

/// Reads `id` on `addr` until it serves `version` at least, a pause
/// between reads; answers the time since `t0` of the first such read.
async fn until_version(addr: SocketAddr, id: &str, version: u64, t0: Instant) -> Result<Duration> {
    let path = user_path_of(id);
    let mut conn = load::H1::connect(addr).await?;
    loop {
        let r = conn.send(&Req::get(path.clone())).await?;
        if r.ok() {
            let v: Value = serde_json::from_slice(&r.body).context("profile JSON")?;
            if v["version"].as_u64() >= Some(version) {
                return Ok(t0.elapsed());
            }
        }
        if t0.elapsed() > PROBE_LIMIT {
            bail!(
                "{id} still old on {addr} after {} s (last status {})",
                PROBE_LIMIT.as_secs(),
                r.status
            );
        }
        tokio::time::sleep(PROBE_PAUSE).await;
    }
}

fn user_path_of(id: &str) -> String {
    format!("/api/users/{id}")
}

async fn change_lag(
    ctx: &Ctx,
    sec: &mut Section,
    dir: &Path,
    sim: &SimOrigin,
    mongo: &Mongo,
    n: usize,
) -> Result<()> {
    let redis = Redis::start(&dir.join("redis-streams")).await?;
    let users: Collection<Document> = mongo.db().collection("users");
    // The users exist before any proxy starts: the stream begins at "now"
    // on its first start, so it sees exactly the N updates below.
    let mut docs: Vec<Document> = Vec::with_capacity(n);
    for i in 0..n {
        let p = sim
            .profile(&user_id(i))
            .with_context(|| format!("the simulator has no user {i}"))?;
        docs.push(doc! {"_id": &p.id, "displayName": &p.display_name, "avatarUrl": &p.avatar_url, "version": p.version as i64});
    }
    users
        .insert_many(docs)
        .await
        .context("insert the users documents")?;

    let db = mongo.database();
    let mut o = opts(
        sim,
        format!(
            "{}\n[[change_streams]]\nname = \"{STREAM}\"\ndatabase = {db}\ncollection = \"users\"\nkind = \"profile-updates\"\nstate_database = {db}\n\n[post_snapshots]\ndatabase = {db}\ncollection = \"posts_streams\"\n",
            // The Mongo tier at its default timeout (100 ms).
            mongo_tier(mongo, "snapshots_streams", "100ms"),
            db = toml_str(db)
        ),
    );
    o.redis_url = Some(redis.url());
    o.backplane = true;
    o.invalidation_plugin = Some(ctx.plugin("invalidate_profile.wasm"));
    let mut proxies = Vec::new();
    for i in 0..3 {
        proxies
            .push(Proxy::start(&ctx.proxy_bin, &dir.join(format!("stream-{i}")), o.clone()).await?);
    }
    let admins: Vec<SocketAddr> = proxies.iter().map(|p| p.admin).collect();
    let watcher = {
        let deadline = Instant::now() + Duration::from_secs(60);
        'found: loop {
            for (i, a) in admins.iter().enumerate() {
                if stream_stats(*a).await?["role"] == "watching" {
                    break 'found i;
                }
            }
            if Instant::now() > deadline {
                bail!("no instance watches {STREAM} after 60 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };

    let mut all = Vec::with_capacity(n);
    let mut on_watcher = Vec::with_capacity(n);
    let mut on_others = Vec::with_capacity(2 * n);
    let mut writes = Vec::with_capacity(n);
    let t_run = Instant::now();
    for k in 0..n {
        let id = user_id(k);
        // Every instance holds the old version in memory first.
        for p in &proxies {
            let r = load::once(p.addr, &Req::get(user_path(k))).await?;
            if !r.ok() {
                bail!("GET {id} on {} answered {}", p.addr, r.status);
            }
        }
        if !sim.update_user(&id) {
            bail!("the simulator has no user {id}");
        }
        let p = sim
            .profile(&id)
            .with_context(|| format!("the simulator lost {id}"))?;
        let t0 = Instant::now();
        users
            .update_one(
                doc! {"_id": &id},
                doc! {"$set": {"displayName": &p.display_name, "avatarUrl": &p.avatar_url, "version": p.version as i64}},
            )
            .await
            .with_context(|| format!("update the users document {id}"))?;
        writes.push(micros(t0.elapsed()));
        let (a, b, c) = tokio::join!(
            until_version(proxies[0].addr, &id, p.version, t0),
            until_version(proxies[1].addr, &id, p.version, t0),
            until_version(proxies[2].addr, &id, p.version, t0),
        );
        let times = [a?, b?, c?];
        let slowest = times.iter().copied().max().unwrap_or_default();
        all.push(micros(slowest));
        for (i, t) in times.iter().enumerate() {
            if i == watcher {
                on_watcher.push(micros(*t));
            } else {
                on_others.push(micros(*t));
            }
        }
        if (k + 1) % 200 == 0 {
            println!(
                "  (b) {} of {n} changes, p99 so far {}",
                k + 1,
                fmt_us(Dist::of(all.iter().copied()).p99 as f64)
            );
        }
    }
    let run_secs = t_run.elapsed().as_secs_f64();

    // The stream's own counts, once every event has been read.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut counts = Vec::new();
    loop {
        counts.clear();
        for a in &admins {
            counts.push(update_events(*a).await?);
        }
        if counts.iter().sum::<f64>() >= n as f64 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let d = Dist::of(all.iter().copied());
    let w = Dist::of(writes.iter().copied());
    let mut t = Table::new(
        "(b) Change-stream lag, client-observed: from just before the `update_one` of the user document to the first read on each instance that serves the new version (probe requests included)",
        &["measured", "changes", "p50", "p99", "max"],
    );
    for (name, dist) in [
        ("all 3 instances serve the new version", d),
        (
            "the watching instance (it reads the stream)",
            Dist::of(on_watcher.iter().copied()),
        ),
        (
            "each of the 2 other instances (backplane)",
            Dist::of(on_others.iter().copied()),
        ),
        ("the `update_one` itself (acknowledged)", w),
    ] {
        t.row(vec![
            name.into(),
            dist.n.to_string(),
            fmt_us(dist.p50 as f64),
            fmt_us(dist.p99 as f64),
            fmt_us(dist.max as f64),
        ]);
    }
    sec.tables.push(t);

    let mut c = Table::new(
        "(b) The instances' own counts after the run (`profile_edge_change_stream_events_total{operation=\"update\"}` and `/admin/stats`)",
        &[
            "instance",
            "role",
            "update events",
            "users applied",
            "batches",
            "restarts",
            "errors",
            "backplane messages applied",
        ],
    );
    for (i, a) in admins.iter().enumerate() {
        let s = stream_stats(*a).await?;
        let stats = load::get_json(*a, "/admin/stats").await?;
        c.row(vec![
            i.to_string(),
            s["role"].as_str().unwrap_or("?").to_string(),
            format!("{:.0}", counts.get(i).copied().unwrap_or(0.0)),
            s["users_applied"].to_string(),
            s["batches"].to_string(),
            s["restarts"].to_string(),
            s["errors"].to_string(),
            num(&stats, "/backplane/messages_received").to_string(),
        ]);
        note_proxy_log(sec, &format!("stream instance {i}"), &proxies[i]);
    }
    sec.tables.push(c);
    let seen: f64 = counts.iter().sum();
    sec.notes.push(format!(
        "(b) {n} changes in {run_secs:.1} s; update events counted across the 3 instances: {seen:.0} for {n} updates ({}). The path of one change: the watcher reads it, one policy call (`refresh` and `refresh-post-snapshots`), one origin load (20 ms), Redis, the Mongo tier and the backplane; probes read each instance every {} ms, so the figures carry up to that much of probe spacing.",
        if seen == n as f64 {
            "each seen once"
        } else if seen > n as f64 {
            "some seen more than once"
        } else {
            "some not seen within 30 s of the last change"
        },
        PROBE_PAUSE.as_millis()
    ));
    Ok(())
}

// ---------------------------------------------------------------- (c)

/// One rewrite of the author's posts: by a proxy (row = index into
/// `BATCH_SIZES`) or by the bench's own driver (the rows after those).
struct Refresh {
    row: usize,
    posts: u64,
    secs: f64,
}

/// Rows of the (c) table after the proxies': the server's own share.
const DIRECT_WALK: usize = BATCH_SIZES.len();
const DIRECT_ONE: usize = BATCH_SIZES.len() + 1;

/// The proxy's walk done by the bench's driver (find the `batch`-th next
/// post by `_id`, one `update_many` of the author's posts up to it), for
/// the server's share of a refresh; answers posts changed and the seconds
/// spent in the finds and in the updates.
async fn direct_walk(
    posts: &Collection<Document>,
    author: &str,
    batch: u32,
    snapshot: &Document,
) -> Result<(u64, f64, f64)> {
    let of = |range: &Document| {
        let mut f = doc! {"userId": author};
        if !range.is_empty() {
            f.insert("_id", range.clone());
        }
        f
    };
    let mut after: Option<Bson> = None;
    let mut changed = 0;
    let (mut find_secs, mut update_secs) = (0.0, 0.0);
    loop {
        let t = Instant::now();
        let mut range = Document::new();
        if let Some(last) = after.take() {
            range.insert("$gt", last);
        }
        let mut cursor = posts
            .find(of(&range))
            .projection(doc! {"_id": 1})
            .sort(doc! {"_id": 1})
            .skip(u64::from(batch - 1))
            .limit(1)
            .await?;
        let edge = if cursor.advance().await? {
            cursor.deserialize_current()?.get("_id").cloned()
        } else {
            None
        };
        find_secs += t.elapsed().as_secs_f64();
        if let Some(edge) = &edge {
            range.insert("$lte", edge.clone());
        }
        let t = Instant::now();
        changed += posts
            .update_many(
                of(&range),
                doc! {"$set": {"userSnapshot": snapshot.clone()}},
            )
            .await?
            .modified_count;
        update_secs += t.elapsed().as_secs_f64();
        match edge {
            None => return Ok((changed, find_secs, update_secs)),
            Some(edge) => after = Some(edge),
        }
    }
}

async fn post_refresh(
    ctx: &Ctx,
    sec: &mut Section,
    dir: &Path,
    sim: &SimOrigin,
    mongo: &Mongo,
) -> Result<()> {
    let posts: Collection<Document> = mongo.db().collection("posts");
    let author = user_id(7);
    let other = user_id(8);
    let snapshot = |id: &str| doc! {"id": id, "displayName": "old", "avatarUrl": "old"};
    let t = Instant::now();
    for chunk in (0..POSTS + OTHER_POSTS).collect::<Vec<_>>().chunks(1000) {
        let docs: Vec<Document> = chunk
            .iter()
            .map(|&i| {
                let by = if i < POSTS { &author } else { &other };
                doc! {"_id": format!("post-{i:06}"), "userId": by, "text": format!("post {i}"), "userSnapshot": snapshot(by)}
            })
            .collect();
        posts.insert_many(docs).await.context("insert the posts")?;
    }
    // What a posts collection queried by author would have.
    posts
        .create_index(
            IndexModel::builder()
                .keys(doc! {"userId": 1, "_id": 1})
                .build(),
        )
        .await
        .context("create the posts index")?;
    println!(
        "  (c) stored {} posts ({POSTS} by the author) in {:.1} s",
        POSTS + OTHER_POSTS,
        t.elapsed().as_secs_f64()
    );

    let mut proxies = Vec::new();
    for bs in BATCH_SIZES {
        let mut o = opts(
            sim,
            format!(
                "[post_snapshots]\nuri = {}\ndatabase = {}\ncollection = \"posts\"\nbatch_size = {bs}\n",
                toml_str(mongo.uri()),
                toml_str(mongo.database())
            ),
        );
        o.invalidation_plugin = Some(ctx.plugin("invalidate_profile.wasm"));
        proxies.push((
            bs,
            Proxy::start(&ctx.proxy_bin, &dir.join(format!("posts-{bs}")), o).await?,
        ));
    }
    let body =
        serde_json::to_vec(&serde_json::json!({"type": "profile-updated", "userId": &author}))?;
    let mut runs: Vec<Refresh> = Vec::new();
    // Seconds in finds and in updates of each direct walk.
    let mut split: Vec<(f64, f64)> = Vec::new();
    let mut metric_mismatch: Vec<String> = Vec::new();
    for round in 0..ctx.rounds {
        let mut order: Vec<usize> = (0..proxies.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            let (bs, proxy) = (&proxies[i].0, &proxies[i].1);
            if !sim.update_user(&author) {
                bail!("the simulator has no user {author}");
            }
            let avatar = sim
                .profile(&author)
                .map(|p| p.avatar_url)
                .context("the simulator lost the author")?;
            let metric_before = refreshed_metric(proxy.admin).await?;
            let mut conn = load::H1::connect(proxy.admin).await?;
            let t0 = Instant::now();
            let r = conn
                .send_within(&Req::post_json("/admin/events", body.clone()), EVENT_LIMIT)
                .await?;
            let secs = t0.elapsed().as_secs_f64();
            if !r.ok() {
                bail!(
                    "POST /admin/events answered {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
            let v: Value = serde_json::from_slice(&r.body).context("events answer")?;
            let action = v["actions"]
                .as_array()
                .and_then(|a| a.iter().find(|x| x["action"] == "refresh-post-snapshots"))
                .cloned()
                .with_context(|| format!("no refresh-post-snapshots action in {v}"))?;
            if action["result"] != "done" {
                bail!("refresh-post-snapshots: {action}");
            }
            let n = action["posts"].as_u64().unwrap_or(0);
            let metric = refreshed_metric(proxy.admin).await? - metric_before;
            let fresh = posts
                .count_documents(doc! {"userId": &author, "userSnapshot.avatarUrl": &avatar})
                .await?;
            let untouched = posts
                .count_documents(doc! {"userId": &other, "userSnapshot.avatarUrl": "old"})
                .await?;
            println!(
                "  (c) round {}: batch_size {bs}: {n} posts in {}, {:.0} posts/s (metric +{metric:.0}); {fresh} of {POSTS} carry the new avatarUrl, {untouched} of {OTHER_POSTS} other posts untouched",
                round + 1,
                fmt_us(secs * 1e6),
                n as f64 / secs.max(1e-9)
            );
            if metric != n as f64 {
                metric_mismatch.push(format!(
                    "batch_size {bs}, round {}: the call reported {n}, the metric grew by {metric:.0}",
                    round + 1
                ));
            }
            if fresh != POSTS as u64 || untouched != OTHER_POSTS as u64 {
                bail!(
                    "after the refresh (batch_size {bs}) {fresh} of {POSTS} posts carry the new avatarUrl and {untouched} of {OTHER_POSTS} other authors' posts are untouched"
                );
            }
            runs.push(Refresh {
                row: i,
                posts: n,
                secs,
            });
        }
        // The server's share: the same walk, and one update_many of every
        // post, from the bench's own driver (new values each time, so
        // every post changes).
        let mark = format!("bench-{round}");
        let snap = doc! {"id": &author, "displayName": &mark, "avatarUrl": &mark};
        let t0 = Instant::now();
        let (n, finds, updates) = direct_walk(&posts, &author, BATCH_SIZES[0], &snap).await?;
        split.push((finds, updates));
        runs.push(Refresh {
            row: DIRECT_WALK,
            posts: n,
            secs: t0.elapsed().as_secs_f64(),
        });
        let mark = format!("bench-one-{round}");
        let t0 = Instant::now();
        let n = posts
            .update_many(
                doc! {"userId": &author},
                doc! {"$set": {"userSnapshot": {"id": &author, "displayName": &mark, "avatarUrl": &mark}}},
            )
            .await?
            .modified_count;
        runs.push(Refresh {
            row: DIRECT_ONE,
            posts: n,
            secs: t0.elapsed().as_secs_f64(),
        });
        println!(
            "  (c) round {}: the bench's driver: the same walk {}, one update_many {}",
            round + 1,
            fmt_us(runs[runs.len() - 2].secs * 1e6),
            fmt_us(runs[runs.len() - 1].secs * 1e6)
        );
    }
    for (bs, p) in &proxies {
        note_proxy_log(sec, &format!("posts, batch_size {bs}"), p);
    }

    let mut t = Table::new(
        format!("(c) Post snapshot refresh: `POST /admin/events` profile-updated for an author with {POSTS} stored posts ({OTHER_POSTS} other authors' posts beside them; index on userId, _id); for profile-edge the time of the whole call (policy, `refresh` with one origin load, then the rewrite); rounds alternate the batch sizes, each followed by the same rewrite from the bench's own driver"),
        &[
            "rewrite by",
            "posts changed per round",
            "time (median)",
            "posts/s (median)",
            "posts/s per round",
            "all posts carry the new avatarUrl",
        ],
    );
    let mut labels: Vec<String> = BATCH_SIZES
        .iter()
        .map(|bs| {
            if *bs == 500 {
                "profile-edge, batch_size 500 (default)".to_string()
            } else {
                format!("profile-edge, batch_size {bs}")
            }
        })
        .collect();
    labels.push(format!(
        "the bench's driver: the same walk, {} ids a batch (server's share)",
        BATCH_SIZES[0]
    ));
    labels.push("the bench's driver: one update_many of all the author's posts".into());
    for (row, label) in labels.iter().enumerate() {
        let r: Vec<&Refresh> = runs.iter().filter(|x| x.row == row).collect();
        let rates: Vec<f64> = r
            .iter()
            .map(|x| x.posts as f64 / x.secs.max(1e-9))
            .collect();
        t.row(vec![
            label.clone(),
            r.iter()
                .map(|x| x.posts.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            fmt_us(median(&r.iter().map(|x| x.secs * 1e6).collect::<Vec<_>>())),
            format!("{:.0}", median(&rates)),
            rates
                .iter()
                .map(|x| format!("{x:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
            if row < BATCH_SIZES.len() {
                format!("yes, checked after each of {} round(s)", r.len())
            } else {
                "-".into()
            },
        ]);
    }
    sec.tables.push(t);
    sec.notes.push(format!(
        "(c) The bench's own walk ({} ids a batch) spent {} in its finds (the batch's last `_id`) and {} in its range `update_many`s (median of rounds); the proxies ran without Redis or the Mongo tier (memory only below them); `profile_edge_post_snapshots_refreshed_total` {}.",
        BATCH_SIZES[0],
        fmt_us(median(&split.iter().map(|x| x.0 * 1e6).collect::<Vec<_>>())),
        fmt_us(median(&split.iter().map(|x| x.1 * 1e6).collect::<Vec<_>>())),
        if metric_mismatch.is_empty() {
            "grew by the posts count each call reported".to_string()
        } else {
            format!("disagreed with the calls: {}", metric_mismatch.join("; "))
        }
    ));
    Ok(())
}

async fn refreshed_metric(admin: SocketAddr) -> Result<f64> {
    let text = load::metrics_text(admin).await?;
    Ok(load::metric(
        &text,
        "profile_edge_post_snapshots_refreshed_total",
        &[],
    ))
}
