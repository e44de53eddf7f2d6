//! Warm-up: `POST /admin/warm` loads ids through the tiers and the batcher
//! (full batches, each id once, then memory answers); bad bodies and
//! tokens load nothing; the periodic `[warm_up]` run warms the most
//! requested ids of its interval; a reload turns it on, changes and off.
//! Real proxy over loopback HTTP, the simulated Officer counting what
//! reaches it. Assertions are counts and orderings, never timings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use profile_edge::testkit::user_id;
use serde_json::{json, Value};
use support::*;

const TOKEN: &str = "s3cret-token";

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// `POST /admin/warm` with `body`, and the bearer token when given.
async fn post_warm(
    c: &HttpClient,
    app: &profile_edge::App,
    token: Option<&str>,
    body: impl Into<bytes::Bytes>,
) -> (StatusCode, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a.as_str()));
    }
    let url = format!("http://{}/admin/warm", app.admin_addr());
    let (status, _, out) = send(c, Method::POST, &url, &headers, body).await;
    (status, json(&out))
}

async fn warm_stats(c: &HttpClient, app: &profile_edge::App) -> Value {
    admin_stats(c, app.admin_addr()).await["warm_up"].clone()
}

async fn get_profile(c: &HttpClient, app: &profile_edge::App, id: &str) -> http::HeaderMap {
    let (status, h, body) = get(c, &format!("http://{}/api/users/{id}", app.main_addr())).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["id"], id);
    h
}

fn warm_metric(source: &str, outcome: &str) -> String {
    format!("profile_edge_warm_up_ids_total{{outcome=\"{outcome}\",source=\"{source}\"}}")
}

#[tokio::test]
async fn admin_warm_loads_ids_in_full_batches_once_each_and_memory_answers_after() {
    let sim = sim_origin(200, Duration::from_millis(5)).await;
    // `window` and `max_wait` at their maximum, so that only `max_batch`
    // decides how the ids split into batches, however slowly this machine
    // hands them to the batcher (as in tests/profiles.rs).
    let app = start_proxy(&profile_config(
        &sim.officer_url(),
        "[coalescing]\nwindow = \"1s\"\nmax_wait = \"1s\"\n",
    ))
    .await;
    let c = client();
    let ids: Vec<String> = (0..120).map(user_id).collect();
    // Ten of them twice: loaded once.
    let sent: Vec<&String> = ids.iter().chain(&ids[40..50]).collect();
    let (status, out) = post_warm(&c, &app, None, json!({ "ids": sent }).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        out,
        json!({"requested": 130, "distinct": 120, "cached": 0, "loaded": 120,
               "not_found": 0, "failed": 0, "first_error": null})
    );
    let stats = sim.stats();
    let sizes = stats.batch_sizes();
    assert!(sizes.len() <= 3, "{} origin calls: {sizes:?}", sizes.len());
    assert!(sizes.iter().all(|&n| n <= 50), "a batch over 50: {sizes:?}");
    assert_eq!(sizes.iter().sum::<usize>(), 120, "{sizes:?}");
    assert_eq!(
        stats.single_calls.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    for id in &ids {
        assert_eq!(stats.times_asked(id), 1, "{id} asked more than once");
    }

    // Warm: every id from memory, nothing more at the origin.
    let calls = stats.origin_calls();
    for id in &ids {
        let h = get_profile(&c, &app, id).await;
        assert_eq!(header(&h, "x-cache"), "hit", "{id}");
        assert_eq!(header(&h, "x-cache-tier"), "memory", "{id}");
    }
    assert_eq!(stats.origin_calls(), calls);

    // Again, with two ids the Officer does not know: the 120 are cached,
    // the two unknown ones cost one batch call.
    let unknown = [
        "ffffffff-0000-4000-8000-000000000001",
        "ffffffff-0000-4000-8000-000000000002",
    ];
    let again: Vec<&str> = ids.iter().map(String::as_str).chain(unknown).collect();
    let (status, out) = post_warm(&c, &app, None, json!({ "ids": again }).to_string()).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(
        (
            &out["distinct"],
            &out["cached"],
            &out["loaded"],
            &out["not_found"],
            &out["failed"]
        ),
        (&json!(122), &json!(120), &json!(0), &json!(2), &json!(0))
    );
    assert_eq!(stats.origin_calls(), calls + 1);

    let admin = app.admin_addr();
    for (outcome, want) in [
        ("loaded", 120.0),
        ("cached", 120.0),
        ("not_found", 2.0),
        ("failed", 0.0),
    ] {
        assert_eq!(
            metric(&c, admin, &warm_metric("admin", outcome)).await,
            want,
            "{outcome}"
        );
    }
    let runs = "profile_edge_warm_up_runs_total{source=\"admin\"}";
    assert_eq!(metric(&c, admin, runs).await, 2.0);
    // Without [warm_up] nothing periodic runs, and nothing is counted.
    let w = warm_stats(&c, &app).await;
    assert_eq!(
        (&w["enabled"], &w["tracked"], &w["runs"]),
        (&json!(false), &json!(0), &json!(0))
    );
    app.shutdown().await;
}

#[tokio::test]
async fn bad_warm_requests_are_refused_with_the_field_named_and_load_nothing() {
    let sim = sim_origin(20, Duration::ZERO).await;
    let text = profile_config(&sim.officer_url(), "").replacen(
        "[admin]\n",
        &format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        1,
    );
    let app = start_proxy(&text).await;
    let c = client();
    let good = json!({ "ids": [user_id(1)] }).to_string();

    let (status, out) = post_warm(&c, &app, None, good.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{out}");
    assert_eq!(out["error"], "unauthorized");
    let (status, out) = post_warm(&c, &app, Some("wrong"), good.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{out}");

    let many: Vec<String> = (0..10_001).map(|i| format!("{i:08x}")).collect();
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("{".into(), StatusCode::BAD_REQUEST, "not JSON"),
        ("[]".into(), StatusCode::BAD_REQUEST, "JSON object"),
        ("{}".into(), StatusCode::BAD_REQUEST, "`ids`"),
        ("{\"idz\": []}".into(), StatusCode::BAD_REQUEST, "`ids`"),
        (
            "{\"ids\": \"abc\"}".into(),
            StatusCode::BAD_REQUEST,
            "`ids` must be an array",
        ),
        (
            json!({ "ids": [user_id(1), 7] }).to_string(),
            StatusCode::BAD_REQUEST,
            "ids[1] must be a string",
        ),
        (
            json!({ "ids": [user_id(1), user_id(2), user_id(1), "not an id"] }).to_string(),
            StatusCode::BAD_REQUEST,
            "ids[3] = \"not an id\" does not match profiles.id_pattern",
        ),
        (
            json!({ "ids": many }).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "at most 10000",
        ),
        (
            format!("{{\"ids\": [\"{}\"]}}", "a".repeat(2 * 1024 * 1024)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "server.max_body_size",
        ),
    ];
    for (body, want, detail) in cases {
        let shown: String = body.chars().take(60).collect();
        let (status, out) = post_warm(&c, &app, Some(TOKEN), body).await;
        assert_eq!(status, want, "{shown}: {out}");
        assert!(out["error"].is_string(), "{shown}: {out}");
        let d = out["detail"].as_str().unwrap_or_default();
        assert!(d.contains(detail), "{shown}: {d:?} does not say {detail:?}");
    }
    let (status, _, _) = get(&c, &format!("http://{}/admin/warm", app.admin_addr())).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // Nothing was loaded or counted.
    assert_eq!(sim.stats().origin_calls(), 0);
    let admin = app.admin_addr();
    let runs = "profile_edge_warm_up_runs_total{source=\"admin\"}";
    assert_eq!(metric(&c, admin, runs).await, 0.0);
    for outcome in ["cached", "loaded", "not_found", "failed"] {
        assert_eq!(metric(&c, admin, &warm_metric("admin", outcome)).await, 0.0);
    }

    // The right token and a good body: loaded.
    let (status, out) = post_warm(&c, &app, Some(TOKEN), good).await;
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["loaded"], 1);
    assert_eq!(sim.stats().origin_calls(), 1);
    app.shutdown().await;
}

/// With `top = 2`, ids asked 5, 4 and 1 times in one interval: the run at
/// its end warms the first two, not the third.
///
/// The interval boundary is not ours to place: a boundary that falls among
/// the ten requests splits the counts over two runs (and one whose ids
/// were still fresh finds them cached). Neither is a wrong answer, but
/// neither shows the ranking, so the test then tries again with fresh ids;
/// what it asserts is checked only on a run that ranked the whole pattern
/// and found its entries expired.
#[tokio::test]
async fn the_periodic_run_warms_the_most_requested_ids_of_its_interval() {
    let sim = sim_origin(100, Duration::ZERO).await;
    let app = start_proxy(&profile_config(
        &sim.officer_url(),
        "[tiers.memory]\nttl = \"1ms\"\nttl_jitter = 0.0\neager_refresh = 1.0\n\n\
         [warm_up]\ninterval = \"200ms\"\ntop = 2\n",
    ))
    .await;
    let c = client();
    let w = warm_stats(&c, &app).await;
    assert_eq!(
        (&w["enabled"], &w["interval"], &w["top"], &w["max_tracked"]),
        (&json!(true), &json!("200ms"), &json!(2), &json!(20))
    );
    for attempt in 0..10 {
        let [a, b, third] = [0, 1, 2].map(|k| user_id(3 * attempt + k));
        for (id, times) in [(&a, 5), (&b, 4), (&third, 1)] {
            for _ in 0..times {
                get_profile(&c, &app, id).await;
            }
        }
        // Nothing is asked after `third`, so the run that ranked its request
        // stays the last one.
        let ranked_third = |last: &Value| {
            last["most_requested"]
                .as_array()
                .is_some_and(|m| m.iter().any(|e| e["id"] == json!(third)))
        };
        wait_until(
            "a warm-up run ranks this attempt's last request",
            || async { ranked_third(&warm_stats(&c, &app).await["last_run"]) },
        )
        .await;
        let last = warm_stats(&c, &app).await["last_run"].clone();
        assert!(ranked_third(&last), "{last}");
        let ranked: Vec<(String, u64)> = last["most_requested"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["id"].as_str().unwrap().to_string(),
                    e["requests"].as_u64().unwrap(),
                )
            })
            .collect();
        let whole = vec![(a.clone(), 5), (b.clone(), 4), (third.clone(), 1)];
        if ranked != whole || last["loaded"] != json!(2) {
            eprintln!(
                "attempt {attempt}: the run saw {ranked:?}, loaded {}; again",
                last["loaded"]
            );
            continue;
        }
        assert_eq!(last["ids"], 2, "{last}");
        assert_eq!(
            (&last["cached"], &last["not_found"], &last["failed"]),
            (&json!(0), &json!(0), &json!(0)),
            "{last}"
        );
        assert_eq!(
            (
                &last["interval_requests"],
                &last["interval_tracked"],
                &last["interval_untracked"]
            ),
            (&json!(10), &json!(3), &json!(0)),
            "{last}"
        );
        // The third id was asked for by its one request only.
        assert_eq!(sim.stats().times_asked(&third), 1);
        // The counts started over, and the warm-up's own lookups are not
        // counted as requests.
        assert_eq!(warm_stats(&c, &app).await["tracked"], 0);
        let loaded = metric(&c, app.admin_addr(), &warm_metric("periodic", "loaded")).await;
        assert!(loaded >= 2.0, "{loaded}");
        app.shutdown().await;
        return;
    }
    panic!("no attempt's requests fell into one interval in 10 tries");
}

/// Ids past `max_tracked` in one interval are not counted, and are counted
/// as such.
#[tokio::test]
async fn ids_past_max_tracked_are_counted_as_untracked() {
    let sim = sim_origin(20, Duration::ZERO).await;
    let app = start_proxy(&profile_config(
        &sim.officer_url(),
        "[warm_up]\ninterval = \"1h\"\ntop = 2\nmax_tracked = 3\n",
    ))
    .await;
    let c = client();
    for i in 0..5 {
        get_profile(&c, &app, &user_id(i)).await;
    }
    get_profile(&c, &app, &user_id(0)).await;
    let w = warm_stats(&c, &app).await;
    assert_eq!(
        (&w["tracked"], &w["untracked"], &w["untracked_total"]),
        (&json!(3), &json!(2), &json!(2))
    );
    let untracked = metric(&c, app.admin_addr(), "profile_edge_warm_up_untracked_total").await;
    assert_eq!(untracked, 2.0);
    app.shutdown().await;
}

#[tokio::test]
async fn a_reload_turns_the_warm_up_on_changes_it_and_turns_it_off() {
    let sim = sim_origin(20, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("profile-edge.toml");
    let off = profile_config(&sim.officer_url(), "");
    let on = |interval: &str| {
        profile_config(
            &sim.officer_url(),
            &format!("[warm_up]\ninterval = \"{interval}\"\ntop = 5\n"),
        )
    };
    std::fs::write(&path, &off).unwrap();
    let app = start_proxy_from_file(&path).await;
    let c = client();
    let tasks = app.state().tasks.clone();
    let warm_tasks = move || {
        tasks
            .running_names()
            .iter()
            .filter(|n| **n == "warm-up")
            .count()
    };
    let reload = format!("http://{}/admin/reload", app.admin_addr());
    let reload_with = |text: String| {
        let (c, path, reload) = (c.clone(), path.clone(), reload.clone());
        async move {
            std::fs::write(&path, text).unwrap();
            let (status, _, body) = send(&c, Method::POST, &reload, &[], "").await;
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            assert_eq!(json(&body)["status"], "reloaded");
        }
    };
    let batch = |ids: Vec<String>| {
        let (c, url) = (
            c.clone(),
            format!("http://{}/api/users/batch", app.main_addr()),
        );
        async move {
            let body = json!({ "ids": ids }).to_string();
            let (status, _, _) = send(&c, Method::POST, &url, &[], body).await;
            assert_eq!(status, StatusCode::OK);
        }
    };

    assert_eq!(warm_stats(&c, &app).await["enabled"], false);
    assert_eq!(warm_tasks(), 0);
    get_profile(&c, &app, &user_id(1)).await;
    assert_eq!(
        warm_stats(&c, &app).await["tracked"],
        0,
        "counted while off"
    );

    reload_with(on("1h")).await;
    let w = warm_stats(&c, &app).await;
    assert_eq!(
        (&w["enabled"], &w["interval"], &w["top"]),
        (&json!(true), &json!("1h"), &json!(5))
    );
    assert_eq!(warm_tasks(), 1);
    get_profile(&c, &app, &user_id(1)).await;
    batch(vec![user_id(1), user_id(2), user_id(1)]).await;
    assert_eq!(warm_stats(&c, &app).await["tracked"], 2);

    // A change restarts the loop with fresh counts.
    reload_with(on("2h")).await;
    wait_until("the replaced loop stops", || async { warm_tasks() == 1 }).await;
    let w = warm_stats(&c, &app).await;
    assert_eq!((&w["interval"], &w["tracked"]), (&json!("2h"), &json!(0)));
    get_profile(&c, &app, &user_id(3)).await;
    assert_eq!(warm_stats(&c, &app).await["tracked"], 1);

    reload_with(off).await;
    wait_until("the loop stops", || async { warm_tasks() == 0 }).await;
    let w = warm_stats(&c, &app).await;
    assert_eq!(
        (&w["enabled"], &w["interval"], &w["tracked"]),
        (&json!(false), &Value::Null, &json!(0))
    );
    get_profile(&c, &app, &user_id(4)).await;
    assert_eq!(warm_stats(&c, &app).await["tracked"], 0);
    app.shutdown().await;
}

/// `profile-edge check` names the `[warm_up]` keys in its errors.
#[test]
fn check_names_warm_up_keys() {
    check_names(
        "[warm_up]\ninterval = \"0s\"\ntop = 0\nmax_tracked = 2000000\n",
        &["warm_up.interval", "warm_up.top", "warm_up.max_tracked"],
    );
}
