//! The JavaScript example policy (`plugins/js/enrich-posts`, built by
//! `bash plugins/build.sh` when node is present) next to the Rust one: two
//! real proxies, one per policy, in front of the same origins, must answer
//! every enriched route with the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use profile_edge::testkit::{user_id, SimOrigin};
use serde_json::Value;
use support::*;
use tokio::net::TcpListener;

/// A built policy; fails loudly, saying how to build it, when it is absent.
fn policy(file: &str, how: &str) -> PathBuf {
    let p = repo_root().join("plugins/dist").join(file);
    assert!(p.exists(), "{} is missing: {how}", p.display());
    p
}

/// Bodies the simulated Posts API never sends: numbers JSON.stringify would
/// rewrite, escapes and non-ASCII text, posts that are not objects, a post
/// that already has a snapshot, repeated keys, odd whitespace, and every
/// shape (feed, notification, single post, neither).
fn awkward_bodies() -> Vec<(&'static str, String)> {
    let (a, b, c) = (user_id(0), user_id(1), user_id(2));
    vec![
        (
            "/awkward/feed",
            format!(
                r#"{{"posts":[{{"id":1.0,"big":12345678901234567890,"userId":"{a}","text":"caf\u00e9 \"q\" \n é 😀","n":-0.5e-3}},{{"userId":"{b}","userSnapshot":{{"stale":true}}}},{{"userId":7}},"x",null,{{"id":"no-author"}},{{"userId":"{GONE}"}},{{"userId":"x","userId":"{c}"}}],"next":2.50}}"#,
                GONE = user_id(9)
            ),
        ),
        (
            "/awkward/spaced",
            format!(" {{ \"posts\" : [ {{ \"userId\" : \"{a}\" , \"x\" : [ 1 , 2 ] }} ] , \"k\" : {{ }} }} "),
        ),
        (
            "/awkward/single",
            format!(r#"{{"id":"p1","userId":"{b}","likes":1e2}}"#),
        ),
        (
            "/awkward/notification",
            format!(r#"{{"type":"new-post","post":{{"userId":"{c}","text":"hi"}}}}"#),
        ),
        ("/awkward/neither", r#"{"other":[1,2]}"#.to_string()),
    ]
}

/// An origin that answers each of `bodies`' paths with its JSON body.
async fn static_origin(bodies: Vec<(&'static str, String)>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let bodies = std::sync::Arc::new(bodies);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let bodies = bodies.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let found = bodies
                        .iter()
                        .find(|(p, _)| *p == req.uri().path())
                        .map(|(_, b)| b.clone());
                    async move {
                        let (status, body) = match found {
                            Some(b) => (StatusCode::OK, b),
                            None => (StatusCode::NOT_FOUND, r#"{"error":"none"}"#.to_string()),
                        };
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .header("content-type", "application/json")
                                .body(Full::new(Bytes::from(body)))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A proxy whose `/api/posts` (the sim's Posts API) and `/awkward` (the
/// static origin) routes are enriched by plugin `name` at `path`; a failed
/// policy call answers 502, so no failure can pass as an unenriched body.
async fn proxy_with(
    sim: &SimOrigin,
    awkward: SocketAddr,
    name: &str,
    path: &Path,
) -> profile_edge::App {
    start_proxy(&profile_config(
        &sim.officer_url(),
        &format!(
            "[upstreams.posts]\nurl = \"{posts}\"\ntimeout = \"10s\"\n\n\
             [upstreams.awkward]\nurl = \"http://{awkward}\"\ntimeout = \"10s\"\n\n\
             [plugins.{name}]\npath = \"{path}\"\ndeadline = \"1s\"\nmemory_limit = \"128MiB\"\non_error = \"closed\"\n\n\
             [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"{name}\"\n\n\
             [[enrich]]\npath_prefix = \"/awkward\"\nupstream = \"awkward\"\nplugin = \"{name}\"\n",
            posts = sim.posts_url(),
            path = path.display(),
        ),
    ))
    .await
}

#[tokio::test]
async fn the_javascript_policy_enriches_a_feed_identically_to_the_rust_one() {
    let rust = policy(
        "enrich_posts.wasm",
        "run `bash plugins/build.sh` (tests/run.sh does)",
    );
    let js = policy(
        "enrich_posts_js.wasm",
        "run `bash plugins/build.sh` with node and npm installed (tests/run.sh does); \
         it builds plugins/js/enrich-posts with jco componentize",
    );
    // 12 users: the 20-post feed repeats authors, and two of them are
    // deleted before any request, so the Officer no longer knows them.
    let sim = sim_origin(12, Duration::from_millis(1)).await;
    let gone = [user_id(3), user_id(9)];
    for id in &gone {
        assert!(sim.delete_user(id), "the sim knew {id}");
    }
    let awkward = static_origin(awkward_bodies()).await;
    let with_rust = proxy_with(&sim, awkward, "enrich-rust", &rust).await;
    let with_js = proxy_with(&sim, awkward, "enrich-js", &js).await;
    let c = client();

    let mut paths: Vec<String> = vec![
        "/api/posts?limit=20".into(),
        "/api/posts?limit=20&offset=20".into(),
        "/api/posts/p000003".into(),
    ];
    paths.extend(awkward_bodies().into_iter().map(|(p, _)| p.to_string()));
    for path in &paths {
        let (rs, _, rb) = get(&c, &format!("http://{}{path}", with_rust.main_addr())).await;
        let (js_status, _, jb) = get(&c, &format!("http://{}{path}", with_js.main_addr())).await;
        assert_eq!(
            rs,
            StatusCode::OK,
            "{path} (Rust): {}",
            String::from_utf8_lossy(&rb)
        );
        assert_eq!(
            js_status,
            StatusCode::OK,
            "{path} (JS): {}",
            String::from_utf8_lossy(&jb)
        );
        assert_eq!(json(&jb), json(&rb), "{path}: the same JSON");
        assert_eq!(
            String::from_utf8_lossy(&jb),
            String::from_utf8_lossy(&rb),
            "{path}: even the same bytes (numbers and escapes kept as sent)"
        );
    }

    // The comparison is not of two unenriched bodies: the feed has
    // snapshots for known authors and null for the deleted ones.
    let (_, _, feed) = get(
        &c,
        &format!("http://{}/api/posts?limit=20", with_js.main_addr()),
    )
    .await;
    let feed = json(&feed);
    let posts = feed["posts"].as_array().unwrap();
    assert_eq!(posts.len(), 20);
    let mut nulls = 0;
    for post in posts {
        let author = post["userId"].as_str().unwrap();
        let snap = &post["userSnapshot"];
        match sim.profile(author) {
            Some(p) => assert_eq!(
                *snap,
                serde_json::json!({"id": author, "displayName": p.display_name, "avatarUrl": p.avatar_url})
            ),
            None => {
                assert!(gone.iter().any(|g| g == author));
                assert_eq!(*snap, Value::Null, "unknown author {author}");
                nulls += 1;
            }
        }
    }
    assert!(nulls > 0, "the feed has posts by the deleted authors");

    // A notification: the sim cycles through posts, so each proxy gets its
    // own; both must carry their author's snapshot.
    for app in [&with_rust, &with_js] {
        let (status, _, note) = get(
            &c,
            &format!("http://{}/api/posts/notifications/new", app.main_addr()),
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let note = json(&note);
        assert_eq!(note["post"]["userSnapshot"]["id"], note["post"]["userId"]);
    }

    // Two calls per enriched answer, all ok: every path above and a
    // notification for both; the extra feed for the JS one.
    let answers = paths.len() as f64 + 1.0;
    for (app, name, answers) in [
        (&with_rust, "enrich-rust", answers),
        (&with_js, "enrich-js", answers + 1.0),
    ] {
        let calls = |outcome: &str| {
            format!(r#"profile_edge_plugin_calls_total{{outcome="{outcome}",plugin="{name}"}}"#)
        };
        let ok = metric(&c, app.admin_addr(), &calls("ok")).await;
        assert_eq!(ok, 2.0 * answers, "{name}: ok calls");
        for bad in ["error", "trap", "timeout"] {
            assert_eq!(
                metric(&c, app.admin_addr(), &calls(bad)).await,
                0.0,
                "{name}: {bad}"
            );
        }
    }
    with_rust.shutdown().await;
    with_js.shutdown().await;
}
