//! `App::shutdown` leaves nothing running: a proxy started from a watched
//! file, with the Redis tier, batching, a watched plugin and an enrich
//! route, serves traffic of every kind, shuts down, and afterwards its
//! task registry is empty and the runtime holds no more tasks than before
//! it started.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

fn alive() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// Shuts the app down and checks that nothing it started is left: no
/// named task, and no more runtime tasks than `before` it started.
async fn shut_down(app: profile_edge::App, tasks: &profile_edge::lifecycle::Tasks, before: usize) {
    app.shutdown().await;
    assert_eq!(
        tasks.running(),
        0,
        "tasks left: {:?}",
        tasks.running_names()
    );
    back_to(before).await;
}

/// Waits until the runtime holds no more tasks than `before`: connection
/// tasks end with the drain, and the runtime reaps the last of them a
/// moment later (a condition, not a timing verdict; 20 s safety net).
async fn back_to(before: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alive() > before {
        assert!(
            Instant::now() < deadline,
            "{} tasks alive after shutdown, {before} before start",
            alive()
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// One request on its own connection (`Connection: close`), so the test's
/// client leaves no pooled connection task behind.
async fn get_once(addr: std::net::SocketAddr, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let head = String::from_utf8_lossy(&buf);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {head}"))
}

#[tokio::test]
async fn no_task_outlives_app_shutdown() {
    let redis = RedisServer::start().await;
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let plugin = repo_root().join("plugins/dist/enrich_posts.wasm");
    assert!(plugin.exists(), "run `bash plugins/build.sh` first");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    let text = profile_config(
        &sim.officer_url(),
        &format!(
            "{}[upstreams.posts]\nurl = \"{}\"\ntimeout = \"2s\"\n\n\
             [plugins.feed]\npath = \"{}\"\n\n\
             [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n",
            redis.tier_config(),
            sim.posts_url(),
            plugin.display()
        ),
    );
    std::fs::write(&path, text).unwrap();

    let before = alive();
    let app = start_proxy_from_file(&path).await;
    let tasks = app.state().tasks.clone();
    let mut names = tasks.running_names();
    names.dedup();
    assert_eq!(
        names,
        vec![
            "batcher",
            "config-watch",
            "plugin-watch",
            "redis-remove-retry"
        ],
        "the background tasks this config starts"
    );
    let main = app.main_addr();
    for i in 0..20 {
        let path = format!("/api/users/{}", profile_edge::testkit::user_id(i));
        assert_eq!(get_once(main, &path).await, 200);
    }
    assert_eq!(get_once(main, "/api/posts?limit=5").await, 200);
    let followers = format!("/api/users/{}/followers", profile_edge::testkit::user_id(1));
    assert_eq!(get_once(main, &followers).await, 200, "passthrough");
    assert_eq!(
        get_once(app.admin_addr(), "/admin/stats").await,
        StatusCode::OK.as_u16()
    );

    shut_down(app, &tasks, before).await;
    sim.shutdown().await;
}

/// The same with every MongoDB part: the snapshot tier, a change stream
/// being watched and the post snapshot writer. Their driver clients'
/// monitoring tasks end with the app.
#[tokio::test]
async fn no_mongodb_task_outlives_app_shutdown() {
    let mongo = MongoServer::start().await;
    let sim = sim_origin(100, Duration::from_millis(1)).await;
    let db = mongo.database();
    let text = profile_config(
        &sim.officer_url(),
        &format!(
            "{}[[change_streams]]\nname = \"users\"\ndatabase = \"{db}\"\ncollection = \"users\"\n\
             kind = \"profile-updates\"\nstate_database = \"{db}\"\nmax_await = \"200ms\"\n\n\
             [post_snapshots]\ndatabase = \"{db}\"\n",
            mongo.tier_config(),
        ),
    );
    let before = alive();
    let app = start_proxy(&text).await;
    let tasks = app.state().tasks.clone();
    let mut names = tasks.running_names();
    names.dedup();
    // The index task ends once the index exists, which may already be.
    names.retain(|n| *n != "mongo-ttl-index");
    assert_eq!(
        names,
        vec!["batcher", "change-stream", "mongo-remove-retry"],
        "the background tasks this config starts"
    );
    let admin = app.admin_addr();
    let c = client();
    wait_until("the stream is watched", || {
        let c = c.clone();
        async move { admin_stats(&c, admin).await["change_streams"][0]["role"] == "watching" }
    })
    .await;
    drop(c);
    for i in 0..20 {
        let path = format!("/api/users/{}", profile_edge::testkit::user_id(i));
        assert_eq!(get_once(app.main_addr(), &path).await, 200);
    }
    let (status, _, _) = send(
        &client(),
        http::Method::POST,
        &format!("http://{admin}/admin/events"),
        &[],
        format!(
            r#"{{"type":"profile-updated","userId":"{}"}}"#,
            profile_edge::testkit::user_id(1)
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    shut_down(app, &tasks, before).await;
    sim.shutdown().await;
}
