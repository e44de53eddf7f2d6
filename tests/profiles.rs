//! Profile lookups through the tiers: coalescing, batching, shared Redis,
//! Redis failure, fail-safe, fencing, negative caching and the batch route.
//! Real proxy, the simulated Officer as a counting origin, a real
//! redis-server started here. Assertions are counts, not timings.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use http::{Method, StatusCode};
use profile_edge::testkit::{user_id, SimMode};
use support::*;

fn header<'a>(h: &'a http::HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

#[tokio::test]
async fn two_hundred_concurrent_requests_for_one_cold_id_make_one_origin_call() {
    let sim = sim_origin(100, Duration::from_millis(100)).await;
    let app = start_proxy(&profile_config(&sim.officer_url(), "")).await;
    let c = client();
    let url = format!("http://{}/api/users/{}", app.main_addr(), user_id(7));
    let answers = join_all((0..200).map(|_| get(&c, &url))).await;
    for (status, _, body) in &answers {
        assert_eq!(*status, StatusCode::OK);
        assert_eq!(json(body)["id"], user_id(7));
    }
    assert_eq!(
        sim.stats().origin_calls(),
        1,
        "one cold id must cost one origin call"
    );
    // Requests that arrived while the load was in flight waited on it (one
    // started it, the rest joined); any that arrived after it hit memory.
    let misses = answers
        .iter()
        .filter(|(_, h, _)| header(h, "x-cache") == "miss")
        .count();
    let hits = answers
        .iter()
        .filter(|(_, h, _)| header(h, "x-cache") == "hit")
        .count();
    assert_eq!(misses + hits, 200);
    let coalesced = metric(&c, app.admin_addr(), "profile_edge_coalesced_total").await;
    assert_eq!(coalesced as usize, misses - 1);
    // Warm now: no more origin calls.
    let (_, h, _) = get(&c, &url).await;
    assert_eq!(header(&h, "x-cache"), "hit");
    assert_eq!(header(&h, "x-cache-tier"), "memory");
    assert_eq!(sim.stats().origin_calls(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn a_thousand_concurrent_cold_ids_collapse_into_full_batches() {
    let sim = sim_origin(1000, Duration::from_millis(100)).await;
    // A batch leaves when full, or when no miss joined it for `window`, or
    // `max_wait` after its first miss. The defaults (1 ms, 10 ms) would let
    // a slow or loaded machine, on which the 1000 requests arrive over more
    // than a few ms, split the burst into partial batches; at the maximum
    // (1 s) only the batch size decides, which is what this test is about.
    let app = start_proxy(&profile_config(
        &sim.officer_url(),
        "[coalescing]\nwindow = \"1s\"\nmax_wait = \"1s\"\n",
    ))
    .await;
    let c = client();
    // Open the 1000 client connections first (a passthrough route the
    // origin does not count as a profile call), so that the profile
    // requests below arrive together as 1000 concurrent requests rather
    // than at the pace of TCP connection set-up.
    let health = format!("http://{}/health", app.main_addr());
    join_all((0..1000).map(|_| get(&c, &health))).await;
    let base = format!("http://{}/api/users", app.main_addr());
    let answers = join_all((0..1000).map(|i| {
        let c = c.clone();
        let url = format!("{base}/{}", user_id(i));
        async move { (i, get(&c, &url).await) }
    }))
    .await;
    for (i, (status, _, body)) in &answers {
        assert_eq!(*status, StatusCode::OK, "id {i}");
        assert_eq!(json(body)["id"], user_id(*i), "wrong profile for id {i}");
    }
    let stats = sim.stats();
    let sizes = stats.batch_sizes();
    eprintln!("origin calls: {} batches {:?}", stats.origin_calls(), sizes);
    assert!(
        stats.origin_calls() <= 25,
        "{} origin calls for 1000 ids",
        stats.origin_calls()
    );
    assert!(
        sizes.iter().all(|&n| n <= 50),
        "a batch over 50 ids: {sizes:?}"
    );
    assert_eq!(
        sizes.iter().sum::<usize>(),
        1000,
        "every id asked exactly once"
    );
    assert_eq!(
        stats.single_calls.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn a_second_instance_answers_warmed_ids_from_redis() {
    let redis = RedisServer::start().await;
    let sim = sim_origin(100, Duration::from_millis(5)).await;
    let text = profile_config(&sim.officer_url(), &redis.tier_config());
    let a = start_proxy(&text).await;
    let b = start_proxy(&text).await;
    let c = client();
    for i in 0..20 {
        let (status, h, _) = get(
            &c,
            &format!("http://{}/api/users/{}", a.main_addr(), user_id(i)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "x-cache-tier"), "origin");
    }
    let calls = sim.stats().origin_calls();
    for i in 0..20 {
        let (status, h, body) = get(
            &c,
            &format!("http://{}/api/users/{}", b.main_addr(), user_id(i)),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "x-cache"), "hit");
        assert_eq!(header(&h, "x-cache-tier"), "redis");
        assert_eq!(json(&body)["id"], user_id(i));
    }
    assert_eq!(
        sim.stats().origin_calls(),
        calls,
        "instance B went to the origin"
    );
    // And B now holds them in memory.
    let (_, h, _) = get(
        &c,
        &format!("http://{}/api/users/{}", b.main_addr(), user_id(3)),
    )
    .await;
    assert_eq!(header(&h, "x-cache-tier"), "memory");
    let redis_hits = r#"profile_edge_lookups_total{result="hit",tier="redis"}"#;
    assert_eq!(metric(&c, b.admin_addr(), redis_hits).await, 20.0);
    // A batch on B is served from memory and Redis too.
    let ids: Vec<String> = (0..25).map(user_id).collect();
    let (status, _, body) = send(
        &c,
        Method::POST,
        &format!("http://{}/api/users/batch", b.main_addr()),
        &[("content-type", "application/json")],
        serde_json::to_vec(&serde_json::json!({ "ids": ids })).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["users"].as_array().unwrap().len(), 25);
    assert_eq!(
        sim.stats().origin_calls(),
        calls + 1,
        "only the 5 unwarmed ids, in one batch"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_dead_redis_costs_milliseconds_and_is_used_again_when_back() {
    let mut redis = RedisServer::start().await;
    let sim = sim_origin(500, Duration::from_millis(20)).await;
    let text = profile_config(&sim.officer_url(), &redis.tier_config_fast());
    let a = start_proxy(&text).await;
    let c = client();
    let url = |app: &profile_edge::App, i: usize| {
        format!("http://{}/api/users/{}", app.main_addr(), user_id(i))
    };
    for i in 0..10 {
        assert_eq!(get(&c, &url(&a, i)).await.0, StatusCode::OK);
    }

    redis.kill();
    // Warm ids answer from memory, cold ones from the origin; nobody waits
    // on the dead Redis for long. (Expected: Redis timeout 50 ms + origin
    // 20 ms. The bound, 5 s, is far above that so that a loaded machine
    // cannot trip it; what it catches is a request stuck on the dead Redis,
    // which only the client's 20 s timeout would end.)
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        let started = Instant::now();
        let (status, h, body) = get(&c, &url(&a, i)).await;
        slowest = slowest.max(started.elapsed());
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        assert_eq!(json(&body)["id"], user_id(i));
        let tier = header(&h, "x-cache-tier");
        assert!(tier == "memory" || tier == "origin", "{tier}");
    }
    eprintln!("slowest request with Redis dead: {slowest:?}");
    assert!(
        slowest < Duration::from_secs(5),
        "a request waited {slowest:?}"
    );
    let stats = admin_stats(&c, a.admin_addr()).await;
    assert_eq!(stats["tiers"]["redis"]["breaker_open"], true, "{stats}");

    redis.restart().await;
    // After the breaker's cooldown the tier is used again: new loads are
    // written to Redis, and a fresh instance reads them there.
    let b = start_proxy(&text).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut i = 100;
    loop {
        get(&c, &url(&a, i)).await;
        let (_, h, _) = get(&c, &url(&b, i)).await;
        if header(&h, "x-cache-tier") == "redis" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Redis tier not used again after it came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        i += 1;
    }
    let stats = admin_stats(&c, a.admin_addr()).await;
    assert_eq!(stats["tiers"]["redis"]["breaker_open"], false, "{stats}");
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn origin_down_serves_stale_and_without_a_copy_gives_json_502_or_504() {
    let sim = sim_origin(100, Duration::from_millis(5)).await;
    // The throttle (1 h) cannot run out during the test, whatever the
    // machine's speed; the 504 below is the upstream timeout's (2 s), which
    // the hanging origin always reaches.
    let extra = "[tiers.memory]\nttl = \"200ms\"\nttl_jitter = 0.0\neager_refresh = 1.0\n\n\
                 [fail_safe]\nmax_stale = \"1h\"\nthrottle = \"1h\"\n";
    let text =
        profile_config(&sim.officer_url(), extra).replace("timeout = \"10s\"", "timeout = \"2s\"");
    let app = start_proxy(&text).await;
    let c = client();
    let url = |i: usize| format!("http://{}/api/users/{}", app.main_addr(), user_id(i));
    let (_, _, fresh) = get(&c, &url(1)).await;

    sim.set_mode(SimMode::Error500);
    // Past the 200 ms TTL. A sleep is a lower bound, so this holds on any
    // machine; a longer pause changes nothing (max_stale and throttle 1 h).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let calls = sim.stats().origin_calls();
    let (status, h, body) = get(&c, &url(1)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-cache"), "stale");
    assert_eq!(body, fresh, "the stale copy is the last good one");
    assert_eq!(sim.stats().origin_calls(), calls + 1, "one refresh attempt");
    // Throttled: the next requests do not hammer the failing origin.
    for _ in 0..5 {
        let (status, h, _) = get(&c, &url(1)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(header(&h, "x-cache"), "stale");
    }
    assert_eq!(sim.stats().origin_calls(), calls + 1);
    assert_eq!(
        metric(&c, app.admin_addr(), "profile_edge_stale_served_total").await,
        6.0
    );

    // Nothing cached and the origin failing: 502 JSON.
    let (status, h, body) = get(&c, &url(2)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(header(&h, "content-type"), "application/json");
    assert_eq!(error_json(&body)["error"], "bad_gateway");

    // Nothing cached and the origin hanging: 504 JSON after the upstream timeout.
    sim.set_mode(SimMode::Hang);
    let (status, _, body) = get(&c, &url(3)).await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(error_json(&body)["error"], "gateway_timeout");

    // Healthy again: the next miss loads normally.
    sim.set_mode(SimMode::Healthy);
    let (status, h, _) = get(&c, &url(4)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-cache"), "miss");
    app.shutdown().await;
}

#[tokio::test]
async fn an_invalidation_racing_a_slow_load_wins() {
    let redis = RedisServer::start().await;
    let sim = Arc::new(sim_origin(100, Duration::from_millis(1)).await);
    // The load is held at the origin until the test releases it (no sleeps
    // order these events); the Officer timeout has room for that hold on a
    // loaded machine, so only the fencing is under test.
    let text = profile_config(&sim.officer_url(), &redis.tier_config())
        .replace("timeout = \"10s\"", "timeout = \"60s\"");
    let app = start_proxy(&text).await;
    let c = client();
    let id = user_id(9);
    let url = format!("http://{}/api/users/{id}", app.main_addr());

    // A slow load of version 1 is in flight (its answer read, held at the
    // origin's gate)...
    sim.hold_officer();
    let (c1, u1) = (c.clone(), url.clone());
    let early = tokio::spawn(async move { get(&c1, &u1).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.stats().held.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "load never reached the origin");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...and a second request joins it (the proxy counts it as coalesced).
    let (c2, u2) = (c.clone(), url.clone());
    let joined = tokio::spawn(async move { get(&c2, &u2).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&c, app.admin_addr(), "profile_edge_coalesced_total").await < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the second request never joined the load"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The profile changes and the invalidation lands while it loads.
    assert!(sim.update_user(&id));
    purge(&c, app.admin_addr(), &id).await;
    // Only now does the old load come back, with version 1.
    assert_eq!(
        sim.stats().held.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the old load finished before the invalidation"
    );
    sim.release_officer();

    // Everything answered after the invalidation returned is version 2,
    // including the requests that were waiting on the old load.
    for (name, handle) in [("early", early), ("joined", joined)] {
        let (status, _, body) = handle.await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            json(&body)["version"],
            2,
            "{name} request got the old profile"
        );
    }
    for _ in 0..5 {
        let (_, _, body) = get(&c, &url).await;
        assert_eq!(json(&body)["version"], 2);
    }
    // No tier holds version 1: a fresh instance reads Redis.
    let b = start_proxy(&text).await;
    let (_, _, body) = get(&c, &format!("http://{}/api/users/{id}", b.main_addr())).await;
    assert_eq!(json(&body)["version"], 2);
    app.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn the_batch_route_returns_each_known_id_once_and_omits_unknown_ones() {
    let sim = sim_origin(100, Duration::from_millis(5)).await;
    let text = profile_config(&sim.officer_url(), "[profiles]\nmax_request_ids = 5\n");
    let app = start_proxy(&text).await;
    let c = client();
    let url = format!("http://{}/api/users/batch", app.main_addr());
    let post = |body: String| {
        let (c, url) = (c.clone(), url.clone());
        async move {
            send(
                &c,
                Method::POST,
                &url,
                &[("content-type", "application/json")],
                body,
            )
            .await
        }
    };
    let unknown = "ffffffff-0000-4000-8000-ffffffffffff";
    let body = serde_json::json!({ "ids": [user_id(1), user_id(2), user_id(1), unknown, user_id(3), user_id(2)] });
    let (status, h, out) = post(body.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-cache"), "miss");
    let users = json(&out)["users"].as_array().unwrap().clone();
    let ids: Vec<&str> = users.iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids, vec![user_id(1), user_id(2), user_id(3)]);
    assert_eq!(sim.stats().origin_calls(), 1, "one batch for all misses");
    assert_eq!(
        sim.stats().batch_sizes(),
        vec![4],
        "duplicates folded before the origin"
    );

    // Again: all from memory, the unknown id from the negative cache.
    let (status, h, _) = post(body.to_string()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-cache"), "hit");
    assert_eq!(sim.stats().origin_calls(), 1);

    // Refusals, none of which reach the origin.
    let six: Vec<String> = (10..16).map(user_id).collect();
    let (status, _, out) = post(serde_json::json!({ "ids": six }).to_string()).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(error_json(&out)["detail"]
        .as_str()
        .unwrap()
        .contains("max_request_ids"));
    let (status, _, out) =
        post(serde_json::json!({ "ids": [user_id(1), "not/an id"] }).to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_json(&out)["detail"]
        .as_str()
        .unwrap()
        .contains("ids[1]"));
    for bad in [
        "{",
        "[]",
        "{\"ids\": 5}",
        "{\"ids\": [1, 2]}",
        "{\"idz\": []}",
    ] {
        let (status, _, out) = post(bad.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        error_json(&out);
    }
    let huge = format!("{{\"ids\": [\"{}\"]}}", "a".repeat(2 * 1024 * 1024));
    let (status, _, out) = post(huge).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    error_json(&out);
    assert_eq!(sim.stats().origin_calls(), 1);
    app.shutdown().await;
}

#[tokio::test]
async fn bad_ids_get_400_and_unknown_ids_are_remembered() {
    let sim = sim_origin(10, Duration::from_millis(5)).await;
    let app = start_proxy(&profile_config(
        &sim.officer_url(),
        "[profiles]\nnegative_ttl = \"1h\"\n",
    ))
    .await;
    let c = client();
    let base = format!("http://{}/api/users", app.main_addr());
    for bad in ["not-hex-zz", "%2e%2e", &"a".repeat(65), "a%00b"] {
        let (status, _, body) = get(&c, &format!("{base}/{bad}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(error_json(&body)["detail"]
            .as_str()
            .unwrap()
            .contains("id_pattern"));
    }
    assert_eq!(sim.stats().origin_calls(), 0, "a bad id reached the origin");

    let unknown = "abcdef00-0000-4000-8000-000000000000";
    let (status, h, body) = get(&c, &format!("{base}/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(header(&h, "x-cache"), "miss");
    assert_eq!(error_json(&body)["error"], "not_found");
    let (status, h, _) = get(&c, &format!("{base}/{unknown}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(header(&h, "x-cache"), "hit");
    assert_eq!(sim.stats().origin_calls(), 1, "the 404 was not remembered");

    // Routes under the prefix that are not a single id pass through.
    let (status, _, body) = get(&c, &format!("{base}/{}/followers", user_id(1))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["userId"], user_id(1));
    assert_eq!(
        sim.stats()
            .other_officer_calls
            .load(std::sync::atomic::Ordering::SeqCst),
        1
    );
    app.shutdown().await;
}

#[tokio::test]
async fn with_batching_off_the_single_route_is_used_and_still_coalesced() {
    let sim = sim_origin(100, Duration::from_millis(50)).await;
    let app = start_proxy(&profile_config(
        &sim.officer_url(),
        "[coalescing]\nbatching = false\n",
    ))
    .await;
    let c = client();
    let urls: Vec<String> = (0..100)
        .map(|i| format!("http://{}/api/users/{}", app.main_addr(), user_id(i % 10)))
        .collect();
    let answers = join_all(urls.iter().map(|u| get(&c, u))).await;
    assert!(answers.iter().all(|(s, _, _)| *s == StatusCode::OK));
    let stats = sim.stats();
    assert_eq!(
        stats.single_calls.load(std::sync::atomic::Ordering::SeqCst),
        10
    );
    assert_eq!(
        stats.batch_calls.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
    app.shutdown().await;
}

#[tokio::test]
async fn hot_entries_are_refreshed_before_they_expire() {
    let sim = sim_origin(10, Duration::from_millis(5)).await;
    // Hits on an entry older than 0.25 x 2 s = 500 ms refresh it; it expires
    // at 2 s. The 1.5 s between the two is room for a loaded machine to
    // stall between two hits without the entry expiring.
    let extra = "[tiers.memory]\nttl = \"2s\"\nttl_jitter = 0.0\neager_refresh = 0.25\n";
    let app = start_proxy(&profile_config(&sim.officer_url(), extra)).await;
    let c = client();
    let url = format!("http://{}/api/users/{}", app.main_addr(), user_id(1));
    get(&c, &url).await;
    assert_eq!(sim.stats().origin_calls(), 1);
    // Keep hitting it for 1.5 TTLs (past the first copy's expiry), and
    // until it was refreshed twice: every answer is a hit, never a miss,
    // because hits past the refresh point reload it in the background.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) || sim.stats().origin_calls() < 3 {
        let (status, h, _) = get(&c, &url).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            header(&h, "x-cache"),
            "hit",
            "a hot entry expired under load"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not refreshed twice in 60 s ({} origin calls)",
            sim.stats().origin_calls()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let calls = sim.stats().origin_calls();
    // Refreshes are at least 500 ms apart (not one per hit): at most one
    // per 500 ms that passed, plus the first load and one in progress.
    let most = 2 + elapsed.as_millis() as u64 / 500;
    assert!(
        (3..=most).contains(&calls),
        "{calls} origin calls for {elapsed:?} of a 2 s TTL refreshed after 500 ms"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn corrupt_values_in_redis_are_misses() {
    let redis = RedisServer::start().await;
    let sim = sim_origin(10, Duration::from_millis(5)).await;
    let app = start_proxy(&profile_config(&sim.officer_url(), &redis.tier_config())).await;
    let mut conn = redis.conn().await;
    let id = user_id(4);
    let _: () = redis::cmd("SET")
        .arg(format!("pe:test:{id}"))
        .arg("{\"id\": \"forged\"}")
        .query_async(&mut conn)
        .await
        .unwrap();
    let c = client();
    let (status, h, body) = get(&c, &format!("http://{}/api/users/{id}", app.main_addr())).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&h, "x-cache-tier"), "origin");
    assert_eq!(json(&body)["id"], id);
    // The origin's value replaced it.
    let raw: Vec<u8> = redis::cmd("GET")
        .arg(format!("pe:test:{id}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(raw.starts_with(b"PE2"));
    app.shutdown().await;
}
