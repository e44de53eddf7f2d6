//! Scenario 7: memory. The proxy's RSS (VmRSS) right after start-up, and
//! after 100k distinct profiles are loaded into the memory tier through the
//! batch route (1 000 ids per request). Both default policies are loaded, as
//! in the shipped config.

use std::time::Duration;

use anyhow::{bail, Result};

use super::{note_proxy_log, start_sim, warm_batch, Ctx, Stats};
use crate::procs::{Proxy, ProxyOpts};
use crate::report::{Section, Table, Target};

const PROFILES: usize = 100_000;
const MIB: f64 = 1024.0 * 1024.0;
const LIMIT_MIB: f64 = 200.0;

pub async fn run(ctx: &Ctx, sec: &mut Section) -> Result<()> {
    sec.client = format!(
        "the bench's hyper client: `POST /api/users/batch` with 1 000 ids per request, 4 in flight, {PROFILES} distinct ids"
    );
    let tmp = ctx.tempdir("memory")?;
    let sim = start_sim(PROFILES, Duration::from_millis(20)).await?;
    let mut opts = ProxyOpts::profiles(sim.officer_url());
    opts.memory_capacity = PROFILES as u64;
    opts.posts_url = Some(sim.posts_url());
    opts.enrich_plugin = Some(ctx.plugin("enrich_posts.wasm"));
    opts.invalidation_plugin = Some(ctx.plugin("invalidate_profile.wasm"));
    let proxy = Proxy::start(&ctx.proxy_bin, &tmp.path().join("proxy"), opts).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = proxy.rss()?;
    warm_batch(proxy.addr, (0..PROFILES).collect(), 1000).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stats = Stats::get(proxy.admin).await?;
    let after = proxy.rss()?;
    let hwm = proxy.hwm()?;
    if stats.entries < PROFILES as f64 * 0.95 {
        bail!(
            "only {:.0} entries in the memory tier after loading {PROFILES}",
            stats.entries
        );
    }
    let per_entry = (after as f64 - start as f64) / stats.entries.max(1.0);
    let mut t = Table::new("", &["figure", "value"]);
    t.row(vec![
        "RSS after start-up".into(),
        format!("{:.1} MiB", start as f64 / MIB),
    ]);
    t.row(vec![
        format!("RSS with {:.0} profiles in memory", stats.entries),
        format!("{:.1} MiB", after as f64 / MIB),
    ]);
    t.row(vec![
        "peak RSS (VmHWM)".into(),
        format!("{:.1} MiB", hwm as f64 / MIB),
    ]);
    t.row(vec![
        "growth per cached profile".into(),
        format!("{per_entry:.0} bytes"),
    ]);
    sec.tables.push(t);
    sec.targets.push(Target::check(
        format!("RSS with {PROFILES} profiles < {LIMIT_MIB:.0} MiB"),
        format!("{:.1} MiB", after as f64 / MIB),
        (after as f64) / MIB < LIMIT_MIB,
        format!(
            "{per_entry:.0} bytes per cached profile on top of {:.1} MiB at start",
            start as f64 / MIB
        ),
    ));
    sec.notes.push(
        "A synthetic profile is about 300 bytes of JSON; growth per profile is (RSS after - RSS at start) / entries, so it counts everything the process allocated while loading, not only the cached values.".into(),
    );
    note_proxy_log(sec, "profile-edge", &proxy);
    drop(proxy);
    Ok(())
}
