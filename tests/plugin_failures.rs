//! A policy that passes its smoke test and then fails on real traffic must
//! be visible: the response says so (`x-enrichment`), `/admin/plugins` shows
//! the outcomes and the last failure with its cause, and the log gets one
//! line now and then, not one (or eleven) per request. Real binary, real
//! `.wasm` fixture from plugins/ (`bash plugins/build.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::Value;
use support::*;

/// Requests sent to the trapping policy.
const REQUESTS: usize = 200;

#[tokio::test]
async fn a_policy_that_traps_only_on_real_traffic_is_visible_and_its_logs_are_bounded() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let wasm = wasm("testing/hostile_enrich.wasm");
    let dir = tempfile::tempdir().unwrap();
    let main: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    // The deadline has room (only the trap is under test); the policy traps
    // on every request but not on the smoke test, so it loads.
    let extra = format!(
        "[upstreams.posts]\nurl = \"{}\"\ntimeout = \"10s\"\n\n\
         [plugins.feed]\npath = \"{}\"\ndeadline = \"1s\"\nconfig = {{ mode = \"trap\" }}\n\n\
         [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n\n\
         [log]\nformat = \"text\"\n",
        sim.posts_url(),
        wasm.display()
    );
    let path = dir.path().join("edge.toml");
    std::fs::write(
        &path,
        config_text_at(
            &sim.officer_url(),
            &main.to_string(),
            &admin.to_string(),
            &extra,
        ),
    )
    .unwrap();
    let log = dir.path().join("stderr.log");
    let proc = spawn_binary_logging_to(
        &path,
        admin,
        Stdio::from(std::fs::File::create(&log).unwrap()),
    )
    .await;

    let c = client();
    let started = Instant::now();
    for _ in 0..REQUESTS {
        let (status, headers, body) = get(&c, &format!("http://{main}/api/posts?limit=3")).await;
        assert_eq!(status, StatusCode::OK, "on_error = open serves the body");
        assert_eq!(headers["x-enrichment"], "failed");
        assert!(json(&body)["posts"][0].get("userSnapshot").is_none());
    }
    let elapsed = started.elapsed();

    let (_, _, body) = get(&c, &format!("http://{admin}/admin/plugins")).await;
    let list = json(&body);
    let feed = &list["plugins"][0];
    assert_eq!(feed["loaded"], true);
    assert_eq!(feed["last_error"], Value::Null, "no load failed");
    // needed-ids traps, so each request made one call.
    assert_eq!(feed["calls"]["trap"], REQUESTS as u64, "{feed}");
    assert_eq!(feed["calls"]["ok"], 0, "{feed}");
    let last = &feed["last_call_error"];
    assert_eq!(last["outcome"], "trap", "{feed}");
    assert!(last["at"].is_string(), "{feed}");
    let message = last["message"].as_str().unwrap();
    assert!(!message.contains('\n'), "one line: {message}");
    assert_eq!(
        metric(
            &c,
            admin,
            "profile_edge_enriched_responses_total{outcome=\"failed\"}"
        )
        .await,
        REQUESTS as f64
    );

    drop(proc);
    let text = std::fs::read_to_string(&log).unwrap();
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("policy call failed"))
        .collect();
    // One line at the first failure, then at most one per 10 s: however
    // slow the machine was, the count follows from the time it took.
    let allowed = 1 + (elapsed.as_secs() / 10) as usize + 1;
    assert!(
        !failures.is_empty() && failures.len() <= allowed,
        "{} failure lines for {REQUESTS} failures in {elapsed:?} (allowed {allowed}):\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        text.lines().count() < 40,
        "the whole log should stay short: {} lines",
        text.lines().count()
    );
}

#[tokio::test]
async fn enriched_and_passed_through_answers_say_so() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let wasm = wasm("enrich_posts.wasm");
    let extra = format!(
        "[upstreams.posts]\nurl = \"{}\"\ntimeout = \"10s\"\n\n\
         [plugins.feed]\npath = \"{}\"\ndeadline = \"1s\"\n\n\
         [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\nmax_body_size = \"4KiB\"\n",
        sim.posts_url(),
        wasm.display()
    );
    let app = start_proxy(&profile_config(&sim.officer_url(), &extra)).await;
    let c = client();
    let (status, headers, body) =
        get(&c, &format!("http://{}/api/posts?limit=3", app.main_addr())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-enrichment"], "ok");
    assert!(json(&body)["posts"][0]["userSnapshot"].is_object());
    // Over max_body_size: passed through untouched, and marked skipped.
    let (status, headers, body) = get(
        &c,
        &format!("http://{}/api/posts?limit=100", app.main_addr()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.len() > 4096);
    assert_eq!(headers["x-enrichment"], "skipped");
    let (_, _, plugins) = get(&c, &format!("http://{}/admin/plugins", app.admin_addr())).await;
    let feed = &json(&plugins)["plugins"][0];
    assert_eq!(feed["calls"]["ok"], 2, "needed-ids and enrich: {feed}");
    assert_eq!(feed["last_call_error"], Value::Null);
    app.shutdown().await;
}

/// `last_error` is about loading: a rejected file sets it (the old version
/// keeps serving), and the next good load clears it.
#[tokio::test]
async fn a_good_load_clears_the_last_load_error() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let dist = repo_root().join("plugins/dist");
    let live = dir.path().join("feed.wasm");
    // Files are replaced the way the README says: write beside, rename over.
    let replace = |bytes: &[u8]| {
        let tmp = dir.path().join(".feed.wasm.tmp");
        std::fs::write(&tmp, bytes).unwrap();
        std::fs::rename(&tmp, &live).unwrap();
    };
    replace(&std::fs::read(dist.join("enrich_posts.wasm")).unwrap());
    let extra = format!(
        "[upstreams.posts]\nurl = \"{}\"\ntimeout = \"10s\"\n\n\
         [plugins.feed]\npath = \"{}\"\ndeadline = \"1s\"\n\n\
         [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n",
        sim.posts_url(),
        live.display()
    );
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, profile_config(&sim.officer_url(), &extra)).unwrap();
    let app = start_proxy_from_file(&path).await;
    let c = client();
    let reload = format!("http://{}/admin/reload", app.admin_addr());
    let plugins = format!("http://{}/admin/plugins", app.admin_addr());
    let feed = |list: &Value| list["plugins"][0].clone();

    let (_, _, body) = get(&c, &plugins).await;
    let first = feed(&json(&body));
    assert_eq!(first["last_error"], Value::Null);

    replace(b"not a component");
    // Rejected whole (the file the config names cannot load)...
    let (status, _, _) = send(&c, http::Method::POST, &reload, &[], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (_, _, body) = get(&c, &plugins).await;
    let rejected = feed(&json(&body));
    // ...the old version serves, and the error says why, on one line.
    assert_eq!(rejected["sha256"], first["sha256"]);
    let error = rejected["last_error"].as_str().expect("last_error set");
    assert!(!error.contains('\n'), "{error}");
    assert!(rejected["last_error_at"].is_string());

    replace(&std::fs::read(dist.join("enrich_fields.wasm")).unwrap());
    let (status, _, _) = send(&c, http::Method::POST, &reload, &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = get(&c, &plugins).await;
    let good = feed(&json(&body));
    assert_ne!(good["sha256"], first["sha256"], "the new file serves");
    assert_eq!(good["last_error"], Value::Null, "{good}");
    assert_eq!(good["last_error_at"], Value::Null, "{good}");
    app.shutdown().await;
}
