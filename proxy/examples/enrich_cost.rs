//! What enrichment adds to a 20-post feed, through the real proxy in this
//! process: the same feed from a fixed upstream, through an `[[enrich]]`
//! route with `enrich-posts` and through a plain passthrough, alternating,
//! one request in flight. The feed's posts carry a stale `userSnapshot`
//! (what real posts do), `null`, or none (what the simulator serves):
//!
//! `cargo run --release -p profile-edge --example enrich_cost -- stale`
//!
//! Arguments: `stale` | `null` | `none` (default `stale`), then optionally
//! `--requests N` (per round, default 2000), `--rounds R` (default 3),
//! `--plugin FILE.wasm` (default `plugins/dist/enrich_posts.wasm`),
//! `--only-enriched` (no plain runs: for a profiler such as
//! `valgrind --tool=callgrind --collect-atstart=no
//! --toggle-collect='*enrich_body*'`, which then counts the instructions
//! of the enrichment itself, policy calls included).
//!
//! Profiles come from the simulated Officer and are warm in memory before
//! the timed runs, as on a busy proxy.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use profile_edge::testkit::{SimConfig, SimOrigin};
use profile_edge::{App, Config};
use serde_json::Value;

const FEED: &str = "/api/posts?limit=20";

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shape = args
        .iter()
        .find(|a| ["stale", "null", "none"].contains(&a.as_str()))
        .map_or("stale", String::as_str)
        .to_string();
    let opt = |name: &str, default: usize| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .map_or(default, |v| v.parse().expect("a number"))
    };
    let requests = opt("--requests", 2000);
    let rounds = opt("--rounds", 3);
    let only_enriched = args.iter().any(|a| a == "--only-enriched");

    profile_edge::http::tls::install_default_provider();
    let sim = SimOrigin::start(SimConfig {
        latency: Duration::ZERO,
        ..SimConfig::default()
    })
    .await
    .unwrap();
    let client: Client<HttpConnector, Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let feed = feed_with(&client, &sim, &shape).await;
    let upstream = serve_fixed(feed.clone()).await;

    let plugin = args
        .iter()
        .position(|a| a == "--plugin")
        .and_then(|i| args.get(i + 1))
        .map_or_else(
            || {
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../plugins/dist/enrich_posts.wasm")
            },
            std::path::PathBuf::from,
        );
    let enriched = App::start(config(
        &sim.officer_url(),
        &format!(
            "[upstreams.posts]\nurl = \"http://{upstream}\"\n\n\
             [plugins.feed]\npath = \"{}\"\ndeadline = \"1s\"\n\n\
             [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n",
            plugin.display()
        ),
    ))
    .await
    .unwrap();
    // The plain proxy's Officer is the fixed upstream: the feed passes through.
    let plain = App::start(config(&format!("http://{upstream}"), ""))
        .await
        .unwrap();

    // Warm: the authors' profiles into memory, the connections open; the
    // second answer is the one checked, enriched from memory.
    let e_url = format!("http://{}{FEED}", enriched.main_addr());
    let p_url = format!("http://{}{FEED}", plain.main_addr());
    get(&client, &e_url).await;
    let (body, header) = get(&client, &e_url).await;
    assert_eq!(header.as_deref(), Some("ok"), "the feed was not enriched");
    let doc: Value = serde_json::from_slice(&body).unwrap();
    let stale = doc["posts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["userSnapshot"]["displayName"] == "Old name")
        .count();
    assert_eq!(stale, 0, "stale snapshots survived enrichment");
    get(&client, &p_url).await;
    println!(
        "feed: 20 posts, {} bytes, userSnapshot {shape}; enriched answer {} bytes",
        feed.len(),
        body.len()
    );

    let mut added = Vec::new();
    for round in 0..rounds {
        let e = run(&client, &e_url, requests).await;
        if only_enriched {
            println!("round {}: enriched p50 {e:.1?}", round + 1);
            continue;
        }
        let p = run(&client, &p_url, requests).await;
        let d = e.as_secs_f64() - p.as_secs_f64();
        println!(
            "round {}: enriched p50 {e:.1?}, plain p50 {p:.1?}, added {:.1} us",
            round + 1,
            d * 1e6
        );
        added.push(d);
    }
    if !added.is_empty() {
        added.sort_by(f64::total_cmp);
        println!(
            "added per feed (median of rounds, wall time, noisy): {:.1} us",
            added[added.len() / 2] * 1e6
        );
    }
    enriched.shutdown().await;
    plain.shutdown().await;
}

fn config(officer: &str, extra: &str) -> Config {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [log]\nlevel = \"error\"\n\n\
         [upstreams.officer]\nurl = \"{officer}\"\ntimeout = \"10s\"\n\n{extra}"
    );
    Config::parse(&text, "enrich_cost.toml").unwrap()
}

/// The simulator's first feed page, its posts given a stale `userSnapshot`
/// (`stale`), a `null` one, or none.
async fn feed_with(
    client: &Client<HttpConnector, Empty<Bytes>>,
    sim: &SimOrigin,
    shape: &str,
) -> Bytes {
    let (body, _) = get(client, &format!("{}{FEED}", sim.posts_url())).await;
    let mut doc: Value = serde_json::from_slice(&body).unwrap();
    for post in doc["posts"].as_array_mut().unwrap() {
        let author = post["userId"].clone();
        let snapshot = match shape {
            "stale" => serde_json::json!({"id": author, "displayName": "Old name",
                "avatarUrl": "https://cdn.example.com/avatars/old.png?v=0"}),
            "null" => Value::Null,
            "none" => continue,
            other => panic!("unknown feed shape {other} (stale, null or none)"),
        };
        post.as_object_mut()
            .unwrap()
            .insert("userSnapshot".into(), snapshot);
    }
    Bytes::from(serde_json::to_vec(&doc).unwrap())
}

/// An upstream that answers every request with `body` as JSON.
async fn serve_fixed(body: Bytes) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let body = body.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                        let body = body.clone();
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(body))
                                    .unwrap(),
                            )
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

async fn get(client: &Client<HttpConnector, Empty<Bytes>>, url: &str) -> (Bytes, Option<String>) {
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    assert!(resp.status().is_success(), "{url}: {}", resp.status());
    let header = resp
        .headers()
        .get("x-enrichment")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (resp.into_body().collect().await.unwrap().to_bytes(), header)
}

/// The median latency of `n` sequential requests.
async fn run(client: &Client<HttpConnector, Empty<Bytes>>, url: &str, n: usize) -> Duration {
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        get(client, url).await;
        lat.push(t.elapsed());
    }
    lat.sort();
    lat[lat.len() / 2]
}
