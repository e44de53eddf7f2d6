//! WebAssembly policies, with real `.wasm` components built from plugins/
//! (`bash plugins/build.sh`; the test command runs it): enrichment through
//! the tiers, hostile policies contained, hot swap under load, events.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use profile_edge::testkit::{user_id, SimOrigin};
use serde_json::Value;
use support::*;

/// Config with the sim as Officer and Posts, and one enrich route on
/// `/api/posts` using plugin `feed`, whose section is `plugin` (TOML lines).
fn enrich_config(sim: &SimOrigin, plugin: &str) -> String {
    profile_config(
        &sim.officer_url(),
        &format!(
            "[upstreams.posts]\nurl = \"{}\"\ntimeout = \"10s\"\n\n[plugins.feed]\n{plugin}\n\n\
             [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n",
            sim.posts_url()
        ),
    )
}

fn plugin_at(path: &Path, extra: &str) -> String {
    format!("path = \"{}\"\n{extra}", path.display())
}

/// The `deadline` line for a plugin whose deadline is not under test.
fn roomy() -> String {
    format!("deadline = \"{ROOMY_DEADLINE}\"\n")
}

fn snapshots(body: &Value) -> Vec<Value> {
    body["posts"]
        .as_array()
        .expect("posts array")
        .iter()
        .map(|p| p["userSnapshot"].clone())
        .collect()
}

#[tokio::test]
async fn a_twenty_post_feed_is_enriched_with_one_origin_batch() {
    let sim = sim_origin(5000, Duration::from_millis(20)).await;
    let app = start_proxy(&enrich_config(
        &sim,
        &plugin_at(&wasm("enrich_posts.wasm"), &roomy()),
    ))
    .await;
    let c = client();
    let url = format!("http://{}/api/posts?limit=20", app.main_addr());

    let (status, headers, body) = get(&c, &url).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    let doc = json(&body);
    let posts = doc["posts"].as_array().unwrap();
    assert_eq!(posts.len(), 20);
    for post in posts {
        let author = post["userId"].as_str().unwrap();
        let snap = &post["userSnapshot"];
        let profile = sim.profile(author).expect("sim knows the author");
        assert_eq!(snap["id"], author);
        assert_eq!(snap["displayName"], profile.display_name.as_str());
        assert_eq!(snap["avatarUrl"], profile.avatar_url.as_str());
        assert!(post["text"].is_string(), "the post's own fields stay");
    }
    let stats = sim.stats();
    assert_eq!(
        stats.batch_calls.load(Ordering::SeqCst),
        1,
        "one batch for the whole feed"
    );
    assert_eq!(stats.single_calls.load(Ordering::SeqCst), 0);
    assert!(stats.batch_sizes()[0] <= 50);

    // The same feed again: every author from memory, no origin call.
    let (_, _, again) = get(&c, &url).await;
    assert_eq!(snapshots(&json(&again)), snapshots(&doc));
    assert_eq!(sim.stats().origin_calls(), 1);

    // A single post and a new-post notification are enriched too.
    let (_, _, one) = get(&c, &format!("http://{}/api/posts/p000003", app.main_addr())).await;
    let one = json(&one);
    assert_eq!(one["userSnapshot"]["id"], one["userId"]);
    let (_, _, note) = get(
        &c,
        &format!("http://{}/api/posts/notifications/new", app.main_addr()),
    )
    .await;
    let note = json(&note);
    assert_eq!(note["post"]["userSnapshot"]["id"], note["post"]["userId"]);

    // A non-2xx answer passes through untouched.
    let (status, _, body) = get(&c, &format!("http://{}/api/posts/p999999", app.main_addr())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(json(&body).get("userSnapshot").is_none());
    let ok = r#"profile_edge_plugin_calls_total{outcome="ok",plugin="feed"}"#;
    assert_eq!(
        metric(&c, app.admin_addr(), ok).await,
        8.0,
        "two calls per enriched answer, none for the 404"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn over_size_answers_pass_through_unenriched() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let text = enrich_config(&sim, &plugin_at(&wasm("enrich_posts.wasm"), &roomy())).replace(
        "plugin = \"feed\"\n",
        "plugin = \"feed\"\nmax_body_size = \"1KiB\"\n",
    );
    let app = start_proxy(&text).await;
    let c = client();
    let (status, _, body) = get(
        &c,
        &format!("http://{}/api/posts?limit=20", app.main_addr()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let doc = json(&body);
    assert_eq!(
        doc["posts"].as_array().unwrap().len(),
        20,
        "the whole body arrived"
    );
    assert!(
        snapshots(&doc).iter().all(Value::is_null),
        "an over-size body was enriched"
    );
    assert_eq!(sim.stats().origin_calls(), 0);
    app.shutdown().await;
}

/// A policy deadline no healthy call can reach, even on a loaded machine:
/// for tests in which the deadline is not the limit under test. The most
/// `plugins.NAME.deadline` allows.
const ROOMY_DEADLINE: &str = "1s";
/// The deadline for the policies that loop without end, which only a
/// deadline stops (the smoke test at load runs with at least 1 s, and the
/// fixtures behave on its input), short enough to keep the test quick.
const SPIN_DEADLINE: &str = "500ms";

/// The deadline for a hostile fixture in `mode`: exactly one limit may trip
/// per mode. `spin` allocates nothing, so only its deadline can stop it;
/// every other mode gets a deadline far past what it needs (`hog` reaches
/// the 16 MiB cap in 16 allocations of 1 MiB), so that it ends the way the
/// test expects (`trap`, `error`, ...) and never by `timeout`.
fn hostile_deadline(mode: &str) -> &'static str {
    if mode == "spin" {
        SPIN_DEADLINE
    } else {
        ROOMY_DEADLINE
    }
}

/// Starts a proxy whose `feed` policy is the hostile fixture in `mode`.
async fn hostile(sim: &SimOrigin, mode: &str, on_error: &str) -> profile_edge::App {
    let deadline = hostile_deadline(mode);
    let section = plugin_at(
        &wasm("testing/hostile_enrich.wasm"),
        &format!("on_error = \"{on_error}\"\ndeadline = \"{deadline}\"\nmemory_limit = \"16MiB\"\nconfig = {{ mode = \"{mode}\" }}\n"),
    );
    start_proxy(&enrich_config(sim, &section)).await
}

#[tokio::test]
async fn hostile_policies_are_contained() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let c = client();
    for (mode, outcome) in [
        ("spin", "timeout"),
        ("hog", "trap"),
        ("trap", "trap"),
        ("error", "error"),
    ] {
        for on_error in ["open", "closed"] {
            let app = hostile(&sim, mode, on_error).await;
            let feed = format!("http://{}/api/posts?limit=5", app.main_addr());
            let profile = format!("http://{}/api/users/{}", app.main_addr(), user_id(1));
            // The bad call and an unrelated request at the same time.
            let (bad, other) = tokio::join!(get(&c, &feed), get(&c, &profile));
            assert_eq!(
                other.0,
                StatusCode::OK,
                "{mode}: a neighbouring request failed"
            );
            match on_error {
                "open" => {
                    assert_eq!(bad.0, StatusCode::OK, "{mode}");
                    assert!(
                        snapshots(&json(&bad.2)).iter().all(Value::is_null),
                        "{mode}: not the unenriched body"
                    );
                }
                _ => {
                    assert_eq!(bad.0, StatusCode::BAD_GATEWAY, "{mode}");
                    assert_eq!(error_json(&bad.2)["error"], "bad_gateway");
                }
            }
            let series =
                format!("profile_edge_plugin_calls_total{{outcome=\"{outcome}\",plugin=\"feed\"}}");
            assert_eq!(
                metric(&c, app.admin_addr(), &series).await,
                1.0,
                "{mode}/{on_error}"
            );
            // And it keeps serving after: the next call fails the same way, cleanly.
            let again = get(&c, &feed).await;
            assert_eq!(again.0, bad.0, "{mode}: the second call differs");
            app.shutdown().await;
        }
    }
}

#[tokio::test]
async fn a_current_guest_is_told_the_call_it_is_in() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let app = hostile(&sim, "call-info", "closed").await;
    let c = client();
    let feed = format!("http://{}/api/posts?limit=3", app.main_addr());
    let (status, _, body) = get(&c, &feed).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body)["callInfo"],
        serde_json::json!({"kind": "response", "path": "/api/posts?limit=3", "route": "/api/posts"})
    );
    let one = format!("http://{}/api/posts/p000003", app.main_addr());
    let (status, _, body) = get(&c, &one).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["callInfo"]["path"], "/api/posts/p000003");
    app.shutdown().await;
}

/// A config with two enrich routes: single posts (`/api/posts/p0...`) go
/// to plugin `new`, everything else under `/api/posts` to plugin `old`.
fn two_policies(sim: &SimOrigin, old: &Path, new: &Path) -> String {
    profile_config(
        &sim.officer_url(),
        &format!(
            "[upstreams.posts]\nurl = \"{}\"\ntimeout = \"10s\"\n\n\
             [plugins.old]\n{}\n[plugins.new]\n{}\n\
             [[enrich]]\npath_prefix = \"/api/posts/p0\"\nupstream = \"posts\"\nplugin = \"new\"\n\n\
             [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"old\"\n",
            sim.posts_url(),
            plugin_at(old, &roomy()),
            plugin_at(new, &roomy()),
        ),
    )
}

#[tokio::test]
async fn a_guest_built_for_the_previous_wit_version_serves_beside_a_current_one() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    let old = wasm("testing/previous_wit.wasm");
    let new = wasm("enrich_posts.wasm");
    std::fs::write(&path, two_policies(&sim, &old, &new)).unwrap();
    let app = start_proxy_from_file(&path).await;
    let c = client();
    let admin = app.admin_addr();
    let feed = format!("http://{}/api/posts?limit=5", app.main_addr());
    let one = format!("http://{}/api/posts/p000003", app.main_addr());

    let check_both_serve = || async {
        // The feed goes through the 0.1.0 guest, the single post through
        // the 0.2.0 one; both write the author snapshots.
        let (status, _, body) = get(&c, &feed).await;
        assert_eq!(status, StatusCode::OK);
        let doc = json(&body);
        let posts = doc["posts"].as_array().unwrap();
        assert_eq!(posts.len(), 5);
        for post in posts {
            let author = post["userId"].as_str().unwrap();
            let profile = sim.profile(author).expect("sim knows the author");
            assert_eq!(post["userSnapshot"]["id"], author);
            assert_eq!(
                post["userSnapshot"]["displayName"],
                profile.display_name.as_str()
            );
            assert_eq!(
                post["userSnapshot"]["avatarUrl"],
                profile.avatar_url.as_str()
            );
        }
        let (status, _, body) = get(&c, &one).await;
        assert_eq!(status, StatusCode::OK);
        let one = json(&body);
        assert_eq!(one["userSnapshot"]["id"], one["userId"]);
    };
    check_both_serve().await;
    let calls = |plugin: &str| {
        format!("profile_edge_plugin_calls_total{{outcome=\"ok\",plugin=\"{plugin}\"}}")
    };
    assert_eq!(metric(&c, admin, &calls("old")).await, 2.0);
    assert_eq!(metric(&c, admin, &calls("new")).await, 2.0);

    let (_, _, list) = get(&c, &format!("http://{admin}/admin/plugins")).await;
    let list = json(&list);
    let version = |name: &str| {
        list["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .map(|p| p["wit_version"].clone())
            .unwrap_or_else(|| panic!("{name} not listed: {list}"))
    };
    assert_eq!(version("old"), "0.1.0");
    assert_eq!(version("new"), "0.2.0");

    // Re-pointed at a guest of a version this proxy does not accept: the
    // reload is refused, naming that version on one line, and both keep
    // serving.
    std::fs::write(
        &path,
        two_policies(&sim, &wasm("testing/wrong_version.wasm"), &new),
    )
    .unwrap();
    let (status, _, body) = send(
        &c,
        Method::POST,
        &format!("http://{admin}/admin/reload"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let body = json(&body);
    assert_eq!(body["problems"][0]["key"], "plugins.old.path", "{body}");
    assert_eq!(body["problems"][0]["reason"], WRONG_VERSION, "{body}");
    check_both_serve().await;
    app.shutdown().await;
}

#[tokio::test]
async fn no_state_leaks_from_one_call_into_the_next() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let app = hostile(&sim, "leak", "open").await;
    let c = client();
    let feed = format!("http://{}/api/posts?limit=3", app.main_addr());
    for _ in 0..5 {
        let (status, _, body) = get(&c, &feed).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json(&body)["policyCalls"],
            1,
            "a global survived into another call"
        );
    }
    app.shutdown().await;
}

/// `needed-ids` and `enrich` of one response share one instance when the
/// profiles are in memory; while the lookup waits on the origin the
/// instance is let go, and `enrich` runs on a fresh one. Each response gets
/// its own.
#[tokio::test]
async fn one_response_runs_on_one_instance_unless_its_lookup_waits() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let app = hostile(&sim, "instance", "open").await;
    let c = client();
    let feed = format!("http://{}/api/posts?limit=3", app.main_addr());
    // Cold: the authors come from the origin.
    let (status, headers, body) = get(&c, &feed).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["x-enrichment"], "ok");
    assert_eq!(
        json(&body)["instanceCalls"],
        1,
        "an instance was held across the origin call"
    );
    for _ in 0..3 {
        let (status, _, body) = get(&c, &feed).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json(&body)["instanceCalls"],
            2,
            "not one instance per response for both calls"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn log_floods_are_rate_limited() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let app = hostile(&sim, "log-flood", "open").await;
    let c = client();
    let (status, _, _) = get(&c, &format!("http://{}/api/posts?limit=3", app.main_addr())).await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, body) = get(&c, &format!("http://{}/admin/plugins", app.admin_addr())).await;
    let list = json(&body);
    // The guest writes 10 000 lines (its deadline, 1 s, has room for all
    // of them: the rate limit is the one limit under test); at most 100 a
    // second get through, the rest are dropped and counted.
    let dropped = list["plugins"][0]["log_lines_dropped"].as_u64().unwrap();
    assert!(dropped >= 1_000, "only {dropped} lines dropped");
    app.shutdown().await;
}

/// Runs the binary with the hostile fixture in `mode` as `feed`, logging
/// JSON to a file, makes one feed request (enrichment on), and answers the
/// log's lines that carry `plugin = "feed"` once the process has stopped,
/// and `feed` in `GET /admin/plugins` after the request.
async fn feed_log_lines(sim: &SimOrigin, mode: &str) -> (Vec<Value>, Value) {
    let dir = tempfile::tempdir().unwrap();
    let main: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let section = plugin_at(
        &wasm("testing/hostile_enrich.wasm"),
        &format!("{}config = {{ mode = \"{mode}\" }}\n", roomy()),
    );
    let text = config_text_at(
        &sim.officer_url(),
        &main.to_string(),
        &admin.to_string(),
        &format!(
            "[log]\nformat = \"json\"\nlevel = \"info\"\n\n[upstreams.posts]\nurl = \"{}\"\n\n\
             [plugins.feed]\n{section}\n[[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n",
            sim.posts_url()
        ),
    );
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, text).unwrap();
    let log = dir.path().join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut proc = spawn_binary_logging_to(&path, admin, std::process::Stdio::from(file)).await;
    let (status, _, _) = get(&client(), &format!("http://{main}/api/posts?limit=3")).await;
    assert_eq!(status, StatusCode::OK, "{mode}");
    let (_, _, list) = get(&client(), &format!("http://{admin}/admin/plugins")).await;
    let feed = json(&list)["plugins"][0].clone();
    // The guest's lines are written before the answer goes out; stopping
    // the process makes sure they are all on disk before reading.
    proc.0.kill().unwrap();
    proc.0.wait().unwrap();
    let lines = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|l| l["fields"]["plugin"] == "feed")
        .collect();
    (lines, feed)
}

#[tokio::test]
async fn what_a_guest_prints_is_in_the_log_tagged_with_the_plugin() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let (lines, _) = feed_log_lines(&sim, "print").await;
    let said = |source: &str, level: &str, message: &str| {
        lines.iter().any(|l| {
            l["fields"]["source"] == source
                && l["level"] == level
                && l["fields"]["message"] == message
        })
    };
    assert!(
        said("stdout", "INFO", "hostile policy says hello on stdout"),
        "{lines:#?}"
    );
    assert!(
        said("stderr", "WARN", "hostile policy says hello on stderr"),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_guest_panic_message_is_the_cause_in_the_log_and_admin_plugins() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let (lines, feed) = feed_log_lines(&sim, "trap").await;
    // The failed call, with the panic message first, on one line.
    let failure = lines
        .iter()
        .find(|l| {
            l["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("policy call failed"))
        })
        .unwrap_or_else(|| panic!("no failed call in {lines:#?}"));
    assert_eq!(failure["fields"]["outcome"], "trap");
    let error = failure["fields"]["error"].as_str().unwrap();
    assert!(
        error.starts_with("policy trapped: panicked at testing/hostile-enrich/src/lib.rs:")
            && error.contains(": hostile policy traps on purpose (wasm backtrace: "),
        "{error}"
    );
    // The same reason in /admin/plugins.
    assert_eq!(feed["last_call_error"]["outcome"], "trap", "{feed}");
    assert_eq!(feed["last_call_error"]["message"], error, "{feed}");
    // Not a second time as guest stderr lines: failures are logged
    // bounded (see tests/plugin_failures.rs), and the cause carries it.
    assert!(
        !lines.iter().any(|l| l["fields"]["source"] == "stderr"),
        "{lines:#?}"
    );
}

#[tokio::test]
async fn a_guest_panic_at_load_is_shown_in_admin_plugins_and_by_check() {
    let sim = sim_origin(10, Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("feed.wasm");
    std::fs::copy(wasm("enrich_posts.wasm"), &plugin).unwrap();
    let path = dir.path().join("edge.toml");
    let text = enrich_config(
        &sim,
        &plugin_at(
            &plugin,
            &format!("{}config = {{ mode = \"trap-at-load\" }}\n", roomy()),
        ),
    );
    std::fs::write(&path, &text).unwrap();
    let app = start_proxy_from_file(&path).await;
    // A new build that panics on the smoke test replaces the good one.
    let next = dir.path().join(".feed.wasm.tmp");
    std::fs::copy(wasm("testing/hostile_enrich.wasm"), &next).unwrap();
    std::fs::rename(&next, &plugin).unwrap();
    let c = client();
    let list = format!("http://{}/admin/plugins", app.admin_addr());
    let reload = format!("http://{}/admin/reload", app.admin_addr());
    send(&c, Method::POST, &reload, &[], "").await;
    let last_error = || async {
        let (_, _, body) = get(&c, &list).await;
        json(&body)["plugins"][0]["last_error"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    wait_until("the rejected swap in /admin/plugins", || async {
        !last_error().await.is_empty()
    })
    .await;
    let last_error = last_error().await;
    assert!(
        last_error.contains(
            "failed its smoke test: policy trapped: panicked at testing/hostile-enrich/src/lib.rs:"
        ) && last_error.contains(": hostile policy refuses to load (wasm backtrace: "),
        "{last_error}"
    );
    assert!(!last_error.contains('\n'), "{last_error}");
    // The good version keeps serving.
    let (status, _, body) = get(&c, &format!("http://{}/api/posts?limit=3", app.main_addr())).await;
    assert_eq!(status, StatusCode::OK);
    assert!(snapshots(&json(&body)).iter().all(Value::is_object));
    app.shutdown().await;

    // `check` says the same about the file.
    std::fs::write(&path, text).unwrap();
    let out = run_check(&path);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("plugins.feed.path")
            && stderr.contains("panicked at testing/hostile-enrich/src/lib.rs:")
            && stderr.contains("hostile policy refuses to load"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_guest_reads_the_clocks_and_random_bytes() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let app = hostile(&sim, "clock", "closed").await;
    let c = client();
    let feed = format!("http://{}/api/posts?limit=3", app.main_addr());
    let mut seen = Vec::new();
    for _ in 0..2 {
        let (status, _, body) = get(&c, &feed).await;
        assert_eq!(status, StatusCode::OK);
        seen.push(json(&body)["clock"].clone());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let unix = seen[0]["unixSeconds"].as_u64().expect("unixSeconds");
    assert!(unix.abs_diff(now) < 3600, "wall clock {unix}, host {now}");
    assert_eq!(seen[0]["randomHex"].as_str().map(str::len), Some(32));
    assert_ne!(seen[0]["randomHex"], seen[1]["randomHex"]);
    let ok = "profile_edge_plugin_calls_total{outcome=\"ok\",plugin=\"feed\"}";
    assert_eq!(metric(&c, app.admin_addr(), ok).await, 4.0);
    app.shutdown().await;
}

/// How a component built for an unaccepted WIT version is refused.
const WRONG_VERSION: &str = "is built for world enrich-policy of profile-edge:policy@0.0.9; \
     this proxy accepts @0.2 (current) and @0.1 (previous): rebuild it against plugins/wit";

#[tokio::test]
async fn broken_components_are_refused_at_load_with_a_clear_message() {
    let sim = sim_origin(10, Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let random: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let garbage = dir.path().join("random.wasm");
    std::fs::write(&garbage, random).unwrap();
    let core = dir.path().join("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    let cases = [
        (
            wasm("invalidate_profile.wasm"),
            "does not implement world enrich-policy: it is built for world invalidate-policy of profile-edge:policy@0.2.0",
        ),
        (wasm("testing/wrong_version.wasm"), WRONG_VERSION),
        (garbage, "not a valid WebAssembly component"),
        (core, "core WebAssembly module"),
    ];
    for (path, message) in cases {
        let text = enrich_config(&sim, &plugin_at(&path, ""));
        let config = profile_edge::Config::parse(&text, "t.toml").unwrap();
        let err = profile_edge::App::start(config)
            .await
            .err()
            .unwrap_or_else(|| panic!("{} was accepted", path.display()))
            .to_string();
        assert!(err.contains("plugins.feed.path"), "{err}");
        assert!(err.contains(message), "{}: {err}", path.display());
    }
}

#[tokio::test]
async fn a_policy_swapped_under_load_is_served_without_a_failed_or_unenriched_request() {
    let sim = sim_origin(5000, Duration::from_millis(2)).await;
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("feed.wasm");
    std::fs::copy(wasm("enrich_posts.wasm"), &live).unwrap();
    // v2 (enrich_fields) reads this config and adds `location`; v1 ignores
    // it. The deadline is roomy: this test is about the swap, on a shared
    // 2-core machine; deadlines have their own test.
    let section = plugin_at(
        &live,
        &format!(
            "{}config = {{ fields = [\"id\", \"displayName\", \"avatarUrl\", \"location\"] }}\n",
            roomy()
        ),
    );
    let app = start_proxy(&enrich_config(&sim, &section)).await;
    let feed = format!("http://{}/api/posts?limit=5", app.main_addr());

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicU64::new(0));
    let unenriched = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let swapped_at: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let first_v2: Arc<std::sync::Mutex<Option<Instant>>> = Arc::default();
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (c, feed) = (client(), feed.clone());
        let (stop, failed, unenriched, served) = (
            stop.clone(),
            failed.clone(),
            unenriched.clone(),
            served.clone(),
        );
        let (swapped_at, first_v2) = (swapped_at.clone(), first_v2.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                let (status, _, body) = get(&c, &feed).await;
                served.fetch_add(1, Ordering::SeqCst);
                if status != StatusCode::OK {
                    failed.fetch_add(1, Ordering::SeqCst);
                    continue;
                }
                let snaps = snapshots(&json(&body));
                if snaps.iter().any(|s| !s.is_object()) {
                    unenriched.fetch_add(1, Ordering::SeqCst);
                } else if snaps.iter().all(|s| s.get("location").is_some()) {
                    let mut f = first_v2.lock().unwrap();
                    if f.is_none() && swapped_at.lock().unwrap().is_some() {
                        *f = Some(Instant::now());
                    }
                }
            }
        }));
    }
    // Each phase lasts until what it waits for has happened (polled, with a
    // deadline that is only a safety net), not for a fixed time.
    let served_at_least = |n: u64, what: &'static str| {
        let served = served.clone();
        async move {
            wait_until(what, || {
                let served = served.clone();
                async move { served.load(Ordering::SeqCst) >= n }
            })
            .await;
        }
    };
    // v1 serves under load...
    served_at_least(20, "the clients never got going").await;
    // ...then v2 is renamed over it.
    let tmp = dir.path().join("feed.wasm.new");
    std::fs::copy(wasm("enrich_fields.wasm"), &tmp).unwrap();
    *swapped_at.lock().unwrap() = Some(Instant::now());
    std::fs::rename(&tmp, &live).unwrap();
    wait_until("v2 never served", || {
        let first_v2 = first_v2.clone();
        async move { first_v2.lock().unwrap().is_some() }
    })
    .await;
    let after_v2 = served.load(Ordering::SeqCst);
    served_at_least(after_v2 + 20, "the clients stopped after the swap").await;

    // A broken file next: rejected, v2 keeps serving.
    let bad = dir.path().join("feed.wasm.bad");
    std::fs::write(&bad, b"definitely not wasm").unwrap();
    std::fs::rename(&bad, &live).unwrap();
    let admin = app.admin_addr();
    wait_until("the broken file was never rejected", || async move {
        let rejected = r#"profile_edge_reloads_total{kind="plugin",outcome="rejected"}"#;
        metric(&client(), admin, rejected).await >= 1.0
    })
    .await;
    let after_reject = served.load(Ordering::SeqCst);
    served_at_least(after_reject + 20, "the clients stopped after the rejection").await;
    served_at_least(101, "the clients hardly ran").await;
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.unwrap();
    }

    let served = served.load(Ordering::SeqCst);
    eprintln!("served {served} responses during the swaps");
    let (_, _, m) = get(&client(), &format!("http://{}/metrics", app.admin_addr())).await;
    for l in String::from_utf8_lossy(&m)
        .lines()
        .filter(|l| l.starts_with("profile_edge_plugin_calls"))
    {
        eprintln!("{l}");
    }
    assert!(served > 100, "the clients hardly ran ({served})");
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "failed requests during the swap"
    );
    assert_eq!(
        unenriched.load(Ordering::SeqCst),
        0,
        "unenriched responses during the swap"
    );
    let swap = swapped_at.lock().unwrap().unwrap();
    let v2 = first_v2.lock().unwrap().expect("v2 never served");
    // Printed, not judged: the time depends on the machine (about 0.4 s
    // on an idle 2-core machine).
    eprintln!(
        "v2 first served {:?} after the swap",
        v2.duration_since(swap)
    );

    let c = client();
    let (_, _, body) = get(&c, &feed).await;
    assert!(
        snapshots(&json(&body))
            .iter()
            .all(|s| s.get("location").is_some()),
        "v2 no longer serving"
    );
    let (_, _, list) = get(&c, &format!("http://{}/admin/plugins", app.admin_addr())).await;
    let list = json(&list);
    assert!(
        list["plugins"][0]["last_error"]
            .as_str()
            .unwrap()
            .contains("not a valid"),
        "{list}"
    );
    let ok = r#"profile_edge_reloads_total{kind="plugin",outcome="ok"}"#;
    let rejected = r#"profile_edge_reloads_total{kind="plugin",outcome="rejected"}"#;
    assert_eq!(metric(&c, app.admin_addr(), ok).await, 1.0);
    assert!(metric(&c, app.admin_addr(), rejected).await >= 1.0);
    app.shutdown().await;
}

#[tokio::test]
async fn plugins_come_and_go_with_config_reloads() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    let posts_only = profile_config(
        &sim.officer_url(),
        &format!("[upstreams.posts]\nurl = \"{}\"\n", sim.posts_url()),
    );
    std::fs::write(&path, &posts_only).unwrap();
    let app = start_proxy_from_file(&path).await;
    let c = client();
    let reload = format!("http://{}/admin/reload", app.admin_addr());
    let feed = format!("http://{}/api/posts?limit=3", app.main_addr());
    // No enrich route yet: /api/posts goes to the Officer (404 there).
    assert_eq!(get(&c, &feed).await.0, StatusCode::NOT_FOUND);

    std::fs::write(
        &path,
        enrich_config(&sim, &plugin_at(&wasm("enrich_posts.wasm"), &roomy())),
    )
    .unwrap();
    assert_eq!(
        send(&c, Method::POST, &reload, &[], "").await.0,
        StatusCode::OK
    );
    let (status, _, body) = get(&c, &feed).await;
    assert_eq!(status, StatusCode::OK);
    assert!(snapshots(&json(&body)).iter().all(Value::is_object));
    let (_, _, list) = get(&c, &format!("http://{}/admin/plugins", app.admin_addr())).await;
    assert_eq!(json(&list)["plugins"][0]["world"], "enrich-policy");

    std::fs::write(&path, &posts_only).unwrap();
    assert_eq!(
        send(&c, Method::POST, &reload, &[], "").await.0,
        StatusCode::OK
    );
    assert_eq!(get(&c, &feed).await.0, StatusCode::NOT_FOUND);
    let (_, _, list) = get(&c, &format!("http://{}/admin/plugins", app.admin_addr())).await;
    assert_eq!(json(&list)["plugins"].as_array().unwrap().len(), 0);
    app.shutdown().await;
}

fn events_config(sim: &SimOrigin, invalidation: &str) -> String {
    profile_config(
        &sim.officer_url(),
        &format!("[plugins.inv]\n{invalidation}\n\n[invalidation]\nplugin = \"inv\"\n"),
    )
    .replace("[admin]\n", "[admin]\ntoken = \"t0ken\"\n")
}

async fn post_event(
    c: &HttpClient,
    app: &profile_edge::App,
    body: &str,
    token: &str,
) -> (StatusCode, Value) {
    let auth = format!("Bearer {token}");
    let (status, _, out) = send(
        c,
        Method::POST,
        &format!("http://{}/admin/events", app.admin_addr()),
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body.to_string(),
    )
    .await;
    (status, json(&out))
}

#[tokio::test]
async fn a_profile_updated_event_makes_the_next_lookup_return_the_new_profile() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let app = start_proxy(&events_config(
        &sim,
        &plugin_at(&wasm("invalidate_profile.wasm"), &roomy()),
    ))
    .await;
    let c = client();
    let id = user_id(5);
    let url = format!("http://{}/api/users/{id}", app.main_addr());
    assert_eq!(json(&get(&c, &url).await.2)["version"], 1);
    assert!(sim.update_user(&id));
    assert_eq!(
        json(&get(&c, &url).await.2)["version"],
        1,
        "still cached, as expected"
    );

    let event = format!("{{\"type\": \"profile-updated\", \"userId\": \"{id}\"}}");
    let (status, _) = post_event(&c, &app, &event, "wrong").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, out) = post_event(&c, &app, &event, "t0ken").await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["policy_result"], "ok");
    assert_eq!(out["actions"][0]["action"], "refresh");
    assert_eq!(out["actions"][0]["result"], "done");
    // The refresh loaded the new profile: a hit, already version 2.
    let (_, h, body) = get(&c, &url).await;
    assert_eq!(json(&body)["version"], 2);
    assert_eq!(h["x-cache"], "hit");
    let inv = r#"profile_edge_invalidations_total{source="event"}"#;
    assert_eq!(metric(&c, app.admin_addr(), inv).await, 1.0);

    // Events the proxy cannot use are refused, naming the field.
    for (bad, field) in [
        ("nope", "JSON"),
        ("{\"userId\": \"abc\"}", "type"),
        (
            "{\"type\": \"profile-updated\", \"userId\": \"../etc\"}",
            "userId",
        ),
        ("{\"type\": \"profile-updated\", \"userId\": 7}", "userId"),
    ] {
        let (status, out) = post_event(&c, &app, bad, "t0ken").await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(
            out["detail"].as_str().unwrap().contains(field),
            "{bad}: {out}"
        );
    }
    app.shutdown().await;
}

#[tokio::test]
async fn a_failing_invalidation_policy_still_invalidates_the_user() {
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    for mode in ["trap", "spin", "error"] {
        let section = plugin_at(
            &wasm("testing/hostile_invalidate.wasm"),
            &format!(
                "deadline = \"{}\"\nconfig = {{ mode = \"{mode}\" }}\n",
                hostile_deadline(mode)
            ),
        );
        let app = start_proxy(&events_config(&sim, &section)).await;
        let c = client();
        let id = user_id(6);
        let url = format!("http://{}/api/users/{id}", app.main_addr());
        let before = json(&get(&c, &url).await.2)["version"].as_u64().unwrap();
        assert!(sim.update_user(&id));
        let event = format!("{{\"type\": \"profile-updated\", \"userId\": \"{id}\"}}");
        let (status, out) = post_event(&c, &app, &event, "t0ken").await;
        assert_eq!(status, StatusCode::OK, "{out}");
        assert!(
            out["policy_result"]
                .as_str()
                .unwrap()
                .contains("invalidated userId instead"),
            "{out}"
        );
        assert_eq!(out["actions"][0]["action"], "invalidate");
        assert_eq!(
            json(&get(&c, &url).await.2)["version"].as_u64().unwrap(),
            before + 1,
            "{mode}"
        );
        app.shutdown().await;
    }
}

#[test]
fn check_validates_the_plugins_a_config_names() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let section = |path: &Path| {
        format!(
            "[upstreams.posts]\nurl = \"http://127.0.0.1:7002\"\n\n[plugins.feed]\npath = \"{}\"\n{}\n\
             [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n",
            path.display(),
            roomy()
        )
    };
    std::fs::write(
        &good,
        config_text(
            "http://127.0.0.1:7001",
            &section(&wasm("enrich_posts.wasm")),
        ),
    )
    .unwrap();
    let out = check_ok(&good);
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugins.feed: ok (enrich-policy)"));

    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"junk").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, config_text("http://127.0.0.1:7001", &section(&junk))).unwrap();
    let out = run_check(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("plugins.feed.path")
            && stderr.contains("not a valid WebAssembly component"),
        "{stderr}"
    );

    // A guest of a WIT version this proxy does not accept: one line that
    // names its version and the accepted ones.
    let wrong = dir.path().join("wrong.toml");
    std::fs::write(
        &wrong,
        config_text(
            "http://127.0.0.1:7001",
            &section(&wasm("testing/wrong_version.wasm")),
        ),
    )
    .unwrap();
    let out = run_check(&wrong);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    let line = format!("{}: plugins.feed.path: {WRONG_VERSION}", wrong.display());
    assert!(stderr.lines().any(|l| l == line), "{stderr}");

    // And one built for the previous version passes.
    let previous = dir.path().join("previous.toml");
    std::fs::write(
        &previous,
        config_text(
            "http://127.0.0.1:7001",
            &section(&wasm("testing/previous_wit.wasm")),
        ),
    )
    .unwrap();
    let out = check_ok(&previous);
    assert!(String::from_utf8_lossy(&out.stdout).contains("plugins.feed: ok (enrich-policy)"));
}
