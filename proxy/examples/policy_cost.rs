//! Times enrichment policies through the real plugin runtime, on a
//! 20-post feed with 20 profiles, and prints a ratio of each against the
//! first file:
//! `cargo run --release -p profile-edge --example policy_cost -- plugins/dist/enrich_posts.wasm plugins/dist/enrich_posts_js.wasm`
//!
//! Per file: size, compile time, the cost of a response as the proxy runs
//! it (`needed-ids` and `enrich` on one fresh instance), of each call on a
//! fresh instance of its own, split into instantiation and the call itself
//! (the same call repeated on one kept instance), and the linear memory an
//! instance has after instantiation and after a call.
//!
//! `--feed stale` gives every post a stale `userSnapshot` (as real posts
//! carry), `--feed null` a `null` one; the default has none (as the
//! simulator serves).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use profile_edge::config::Config;
use profile_edge::plugin::bindings::enrich::profile_edge::policy::host;
use profile_edge::plugin::bindings::enrich::{EnrichPolicy, EnrichPolicyPre};
use profile_edge::plugin::bindings::{lend, CallInfo, Level, Profile, ProfileRef};
use profile_edge::plugin::engine::PluginRuntime;
use profile_edge::plugin::registry::{check_plugin, load_for_bench};
use wasmtime::component::{Component, HasSelf, Linker};
use wasmtime::{ResourceLimiter, Store};

/// Calls per timed loop.
const N: u32 = 300;

/// The store state of the split measurements: the WIT host functions (the
/// proxy's own `HostState` is private to it) and the largest linear memory
/// the instance asked for.
#[derive(Default)]
struct Probe {
    peak_memory: usize,
}

impl host::Host for Probe {
    fn log(&mut self, _level: Level, _message: String) {}
    fn config(&mut self) -> String {
        "{}".into()
    }
    fn request(&mut self) -> CallInfo {
        call()
    }
}

/// What the calls are told (`host.request()`): a feed answer.
fn call() -> CallInfo {
    CallInfo::response("/api/posts/feed?limit=20", "/api/posts")
}

impl ResourceLimiter for Probe {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }
    fn table_growing(
        &mut self,
        _current: usize,
        _desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

struct Figures {
    file: String,
    size: usize,
    compile: Duration,
    load: Duration,
    /// needed-ids then enrich on one fresh instance (what the proxy does).
    response: Duration,
    /// needed-ids, enrich: a fresh instance per call.
    fresh: (Duration, Duration),
    instantiate: Duration,
    /// needed-ids, enrich: on one kept instance.
    kept: (Duration, Duration),
    memory_at_start: usize,
    memory_after_call: usize,
    /// Minor page faults per enrich call: fresh instance, kept instance.
    faults: (f64, f64),
}

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let shape = match args.iter().position(|a| a == "--feed") {
        Some(i) => {
            let shape = args.get(i + 1).cloned().unwrap_or_default();
            args.drain(i..(i + 2).min(args.len()));
            shape
        }
        None => "none".to_string(),
    };
    let paths = args;
    assert!(
        !paths.is_empty(),
        "usage: policy_cost [--feed stale|null|none] FILE.wasm [FILE.wasm ...] (ratios are against the first)"
    );
    let (body, profiles) = feed(&shape);
    println!(
        "feed: 20 posts, {} bytes, userSnapshot: {shape}",
        body.len()
    );
    let figures: Vec<Figures> = paths.iter().map(|p| measure(p, &body, &profiles)).collect();
    let base = &figures[0];
    println!();
    println!(
        "| policy | size | compile | per feed (2 calls, one fresh instance) | needed-ids | enrich | instantiate | needed-ids, kept instance | enrich, kept instance | memory at start / after enrich |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for f in &figures {
        println!(
            "| {} | {:.1} MiB | {:.0?} | {:.0?} ({:.1}x) | {:.0?} | {:.0?} | {:.0?} ({:.1}x) | {:.0?} | {:.0?} | {:.1} / {:.1} MiB |",
            f.file,
            mib(f.size),
            f.compile,
            f.response,
            ratio(f.response, base.response),
            f.fresh.0,
            f.fresh.1,
            f.instantiate,
            ratio(f.instantiate, base.instantiate),
            f.kept.0,
            f.kept.1,
            mib(f.memory_at_start),
            mib(f.memory_after_call),
        );
    }
    for f in &figures {
        println!(
            "{}: load (compile, link, smoke test) {:.0?}; instantiation is {:.0}% of a fresh needed-ids call, {:.0}% of a fresh enrich call; \
             minor page faults per enrich call: {:.0} on a fresh instance, {:.0} on a kept one",
            f.file,
            f.load,
            100.0 * f.instantiate.as_secs_f64() / f.fresh.0.as_secs_f64(),
            100.0 * f.instantiate.as_secs_f64() / f.fresh.1.as_secs_f64(),
            f.faults.0,
            f.faults.1,
        );
    }
}

fn measure(path: &str, body: &str, owned: &[Profile]) -> Figures {
    let profiles: Vec<ProfileRef<'_>> = lend(owned);
    let profiles = &profiles[..];
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let text = format!(
        "[upstreams.officer]\nurl = \"http://127.0.0.1:1\"\n[upstreams.posts]\nurl = \"http://127.0.0.1:2\"\n\
         [plugins.p]\npath = \"{path}\"\ndeadline = \"1s\"\nmemory_limit = \"128MiB\"\n\
         [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"p\"\n"
    );
    let config = Config::parse(&text, "bench").unwrap();
    let runtime = PluginRuntime::global().unwrap();

    // Compile alone, uncached, as a hot swap does (one thread).
    let t = Instant::now();
    let component = Component::new(runtime.engine(), &bytes).unwrap();
    let compile = t.elapsed();

    // Load it the way the proxy does (compile, type-check, smoke test).
    let t = Instant::now();
    check_plugin(&config, "p", &config.plugins["p"]).unwrap();
    let load = t.elapsed();
    let plugin = load_for_bench(&config, "p").unwrap();

    // What the proxy does: both calls of a response on one fresh instance.
    let mut response = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..N {
            let call = call();
            let mut calls = plugin.enrich_calls(&call);
            calls.needed_ids(body).unwrap();
            calls.enrich(body, profiles).unwrap();
        }
        response = response.min(t.elapsed() / N);
    }

    // Each call on a fresh instance of its own.
    let mut fresh = (Duration::MAX, Duration::MAX);
    let mut fresh_faults = 0.0;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..N {
            plugin.needed_ids(&call(), body).unwrap();
        }
        fresh.0 = fresh.0.min(t.elapsed() / N);
        let (f0, t) = (minor_faults(), Instant::now());
        for _ in 0..N {
            plugin.enrich(&call(), body, profiles).unwrap();
        }
        fresh.1 = fresh.1.min(t.elapsed() / N);
        fresh_faults = (minor_faults() - f0) as f64 / f64::from(N);
    }

    // The same runtime and engine, split: instantiation alone, then the
    // calls repeated on one instance.
    let pre = pre(runtime.engine(), &component);
    let mut instantiate = Duration::MAX;
    let mut memory_at_start = 0;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..N {
            let mut store = store(runtime.engine());
            pre.instantiate(&mut store).unwrap();
            memory_at_start = store.data().peak_memory;
        }
        instantiate = instantiate.min(t.elapsed() / N);
    }
    let mut store = store(runtime.engine());
    let policy: EnrichPolicy = pre.instantiate(&mut store).unwrap();
    let enricher = policy.profile_edge_policy_enricher();
    let mut kept = (Duration::MAX, Duration::MAX);
    let mut kept_faults = 0.0;
    let mut memory_after_call = 0;
    for _ in 0..3 {
        let t = Instant::now();
        for _ in 0..N {
            enricher.call_needed_ids(&mut store, body).unwrap().unwrap();
        }
        kept.0 = kept.0.min(t.elapsed() / N);
        let (f0, t) = (minor_faults(), Instant::now());
        for _ in 0..N {
            enricher
                .call_enrich(&mut store, body, owned)
                .unwrap()
                .unwrap();
        }
        kept.1 = kept.1.min(t.elapsed() / N);
        kept_faults = (minor_faults() - f0) as f64 / f64::from(N);
        if memory_after_call == 0 {
            memory_after_call = store.data().peak_memory;
        }
    }
    let f = Figures {
        file: path.rsplit('/').next().unwrap_or(path).to_string(),
        size: bytes.len(),
        compile,
        load,
        response,
        fresh,
        instantiate,
        kept,
        memory_at_start,
        memory_after_call,
        faults: (fresh_faults, kept_faults),
    };
    println!(
        "{}: needed-ids {:?}/call, enrich {:?}/call (fresh instances); per feed {:?} (both calls on one instance); instantiate {:?}; kept instance: needed-ids {:?}, enrich {:?}",
        f.file, f.fresh.0, f.fresh.1, f.response, f.instantiate, f.kept.0, f.kept.1
    );
    f
}

/// Linked like the proxy links a policy built for the current WIT version:
/// the WIT host, a hash seed for Rust's `HashMap`, every other import a
/// trap.
fn pre(engine: &wasmtime::Engine, component: &Component) -> EnrichPolicyPre<Probe> {
    let mut linker: Linker<Probe> = Linker::new(engine);
    host::add_to_linker::<Probe, HasSelf<Probe>>(&mut linker, |s| s).unwrap();
    let seeds: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| name.starts_with("wasi:random/insecure-seed@0.2"))
        .collect();
    for name in seeds {
        linker
            .instance(&name)
            .unwrap()
            .func_wrap("insecure-seed", |_store, (): ()| Ok(((1u64, 2u64),)))
            .unwrap();
    }
    linker.define_unknown_imports_as_traps(component).unwrap();
    EnrichPolicyPre::new(linker.instantiate_pre(component).unwrap()).unwrap()
}

fn store(engine: &wasmtime::Engine) -> Store<Probe> {
    let mut store = Store::new(engine, Probe::default());
    store.limiter(|s| s as &mut dyn ResourceLimiter);
    // The runtime's epoch ticker runs; no deadline is under test here.
    store.set_epoch_deadline(1_000_000);
    store
}

/// A 20-post feed by 20 authors, and their profiles; each post with a
/// stale `userSnapshot` (`stale`), a `null` one, or none.
fn feed(shape: &str) -> (String, Vec<Profile>) {
    let posts: Vec<serde_json::Value> = (0..20)
        .map(|i| {
            let id = format!("{i:08x}-0000-4000-8000-{i:012x}");
            let mut post = serde_json::json!({"id": format!("p{i:06}"), "userId": id,
                "text": "Post number: hello from the simulated feed.", "createdAt": "2026-02-01T00:00:00Z", "likes": i});
            let snapshot = match shape {
                "stale" => serde_json::json!({"id": id, "displayName": "Old name",
                    "avatarUrl": "https://cdn.example.com/avatars/old.png?v=0"}),
                "null" => serde_json::Value::Null,
                "none" => return post,
                other => panic!("--feed {other}: stale, null or none"),
            };
            post["userSnapshot"] = snapshot;
            post
        })
        .collect();
    let body = serde_json::json!({"posts": posts, "nextOffset": 20}).to_string();
    let profiles: Vec<Profile> = (0..20)
        .map(|i| {
            let id = format!("{i:08x}-0000-4000-8000-{i:012x}");
            Profile {
                json: serde_json::json!({"id": id, "displayName": format!("User {i}"),
                    "avatarUrl": format!("https://cdn.example.com/avatars/{id}.png?v=1"),
                    "bio": "Synthetic profile from the profile-edge simulator. Enjoys warm caches.",
                    "location": "Nairobi, Kenya", "updatedAt": "2026-01-01T00:00:00Z", "version": 1})
                .to_string(),
                id,
            }
        })
        .collect();
    (body, profiles)
}

/// This process's minor page faults so far (Linux; 0 elsewhere): pages a
/// call touched for the first time since its memory slot was reset.
fn minor_faults() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // Fields after the command name, which ends with ')'.
            let rest = s.rsplit_once(')')?.1;
            rest.split_whitespace().nth(7)?.parse().ok()
        })
        .unwrap_or(0)
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
