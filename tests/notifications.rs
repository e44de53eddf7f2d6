//! The notification stream (`[notifications]`, SPEC 9.3) with real SSE
//! clients over loopback, the real proxy, the shipped enrichment policy and
//! the simulated Officer: a post is enriched once however many subscribers
//! get it; `?userId=F` gets only posts of authors F follows, with follower
//! lists loaded once per author; `Last-Event-ID` replays what was missed or
//! asks for a resync; a subscriber that stops reading is resynced while
//! another gets every event; bad input is refused before a stream starts;
//! shutdown ends streams. Then the same clients on an `[[enrich]]` route
//! whose upstream (the simulated Posts API) answers an event stream: each
//! event enriched as it arrives, malformed ones passed through as they came,
//! and the policy told which kind of call each is.
//! Then the other sources: a `new-posts` change stream on a real
//! MongoDB-protocol server, three instances sharing a real Redis backplane,
//! and the demo; and follower lists forgotten with their author's profile.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod support;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use profile_edge::testkit::{user_id, SimOrigin};
use serde_json::{json, Value};
use support::*;

const PATH: &str = "/api/notifications/stream";

/// One SSE frame as a client sees it.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Post { id: u64, data: Value },
    Resync,
    Comment(String),
}

/// A real SSE client: one HTTP/1.1 connection, frames split at blank lines.
struct Sse {
    body: Incoming,
    buf: BytesMut,
    /// Why the stream broke off, when it ended with an error rather than
    /// cleanly.
    broken: Option<String>,
}

impl Sse {
    /// The notification stream, checked to open with `: connected`.
    async fn open(
        main: SocketAddr,
        query: &str,
        last_event_id: Option<u64>,
    ) -> Result<Sse, (StatusCode, Value)> {
        let mut sse = Sse::connect(main, &format!("{PATH}{query}"), last_event_id).await?;
        assert_eq!(
            sse.next().await,
            Some(Frame::Comment("connected".into())),
            "the stream opens with a comment"
        );
        Ok(sse)
    }

    /// Any event stream at `target` (path and query).
    async fn connect(
        main: SocketAddr,
        target: &str,
        last_event_id: Option<u64>,
    ) -> Result<Sse, (StatusCode, Value)> {
        let stream = tokio::net::TcpStream::connect(main).await.unwrap();
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(target)
            .header("host", "t")
            .header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = sender
            .send_request(req.body(Empty::<Bytes>::new()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        if status != StatusCode::OK {
            let body = resp.into_body().collect().await.unwrap().to_bytes();
            return Err((status, error_json(&body)));
        }
        assert_eq!(resp.headers()["content-type"], "text/event-stream");
        Ok(Sse {
            body: resp.into_body(),
            buf: BytesMut::new(),
            broken: None,
        })
    }

    /// The next block up to and including its blank line, byte for byte;
    /// `None` when the stream ended (`broken` says whether with an error).
    async fn block(&mut self) -> Option<Bytes> {
        loop {
            if let Some(end) = find(&self.buf, b"\n\n") {
                return Some(self.buf.split_to(end + 2).freeze());
            }
            let frame = tokio::time::timeout(Duration::from_secs(60), self.body.frame())
                .await
                .expect("a frame within 60 s");
            match frame {
                None => return None,
                Some(Err(e)) => {
                    self.broken = Some(e.to_string());
                    return None;
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }

    /// The next frame; `None` when the stream ended.
    async fn next(&mut self) -> Option<Frame> {
        let raw = self.block().await?;
        Some(parse(&String::from_utf8_lossy(&raw[..raw.len() - 2])))
    }

    /// The next post or resync, skipping heartbeats.
    async fn event(&mut self) -> Option<Frame> {
        loop {
            match self.next().await? {
                Frame::Comment(_) => continue,
                f => return Some(f),
            }
        }
    }

    async fn post(&mut self) -> (u64, Value) {
        match self.event().await {
            Some(Frame::Post { id, data }) => (id, data),
            other => panic!("expected a post, got {other:?}"),
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse(text: &str) -> Frame {
    if let Some(c) = text.strip_prefix(": ") {
        return Frame::Comment(c.to_string());
    }
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    match field("event").as_deref() {
        Some("post") => Frame::Post {
            id: field("id").and_then(|i| i.parse().ok()).expect("id"),
            data: serde_json::from_str(&field("data").expect("data")).expect("JSON data"),
        },
        Some("resync") => Frame::Resync,
        other => panic!("unexpected frame {other:?}: {text}"),
    }
}

fn config(sim: &SimOrigin, extra: &str) -> String {
    let wasm = repo_root().join("plugins/dist/enrich_posts.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run `bash plugins/build.sh`",
        wasm.display()
    );
    profile_config(
        &sim.officer_url(),
        &format!(
            "[plugins.feed]\npath = \"{}\"\ndeadline = \"1s\"\n\n[notifications]\nplugin = \"feed\"\nenrich_deadline = \"10s\"\n{extra}\n",
            wasm.display()
        ),
    )
}

/// Successful calls of the `feed` policy (each post costs a needed-ids and
/// an enrich call).
async fn policy_calls(c: &HttpClient, admin: SocketAddr) -> f64 {
    metric(
        c,
        admin,
        "profile_edge_plugin_calls_total{outcome=\"ok\",plugin=\"feed\"}",
    )
    .await
}

async fn notify(c: &HttpClient, admin: SocketAddr, post: Value) -> (StatusCode, Value) {
    let (status, _, body) = send(
        c,
        Method::POST,
        &format!("http://{admin}/admin/notifications"),
        &[("content-type", "application/json")],
        post.to_string(),
    )
    .await;
    (status, json(&body))
}

async fn publish(c: &HttpClient, admin: SocketAddr, id: &str, author: &str) -> u64 {
    let (status, answer) = notify(
        c,
        admin,
        json!({"post": {"id": id, "userId": author, "text": "hi"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer["id"].as_u64().expect("event id")
}

/// One post, 100 subscribers: each gets it once with the author's current
/// snapshot, for 1 profile load and one run of the policy (its two calls,
/// needed-ids and enrich), however many subscribers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_enriched_once_for_every_subscriber() {
    let sim = sim_origin(50, Duration::ZERO).await;
    let app = start_proxy(&config(&sim, "")).await;
    let c = client();
    let mut subs = Vec::new();
    for _ in 0..100 {
        subs.push(Sse::open(app.main_addr(), "", None).await.unwrap());
    }
    let author = user_id(3);
    let calls = sim.stats().origin_calls();
    let before = policy_calls(&c, app.admin_addr()).await;
    let sent = Instant::now();
    let id = publish(&c, app.admin_addr(), "p1", &author).await;
    let avatar = sim.profile(&author).unwrap().avatar_url;
    for s in &mut subs {
        let (got, data) = s.post().await;
        assert_eq!(got, id);
        assert_eq!(data["type"], "new-post");
        assert_eq!(data["post"]["id"], "p1");
        assert_eq!(
            data["post"]["userSnapshot"]["avatarUrl"],
            json!(avatar),
            "{data}"
        );
    }
    eprintln!("post to 100 subscribers: {:?}", sent.elapsed());
    assert_eq!(sim.stats().origin_calls() - calls, 1, "one profile load");
    assert_eq!(
        policy_calls(&c, app.admin_addr()).await - before,
        2.0,
        "one needed-ids and one enrich call"
    );
    assert_eq!(
        metric(
            &c,
            app.admin_addr(),
            "profile_edge_notifications_sent_total"
        )
        .await,
        100.0
    );
    assert_eq!(
        metric(
            &c,
            app.admin_addr(),
            "profile_edge_notification_subscribers"
        )
        .await,
        100.0
    );
    app.shutdown().await;
    for s in &mut subs {
        assert_eq!(s.event().await, None, "shutdown ends the stream cleanly");
    }
}

/// `?userId=F`: only posts of authors F follows. 1 000 posts by 50 authors
/// load at most 50 follower lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_gets_only_posts_of_authors_they_follow() {
    let sim = sim_origin(1000, Duration::ZERO).await;
    let app = start_proxy(&config(&sim, "")).await;
    let c = client();
    // The simulated Officer: user i's followers are i + 97k (k = 1..10).
    let fan = user_id(97);
    let mut filtered = Sse::open(app.main_addr(), &format!("?userId={fan}"), None)
        .await
        .unwrap();
    let mut everyone = Sse::open(app.main_addr(), "", None).await.unwrap();
    let followed: HashSet<String> = (0..50)
        .map(user_id)
        .filter(|a| sim_follows(&fan, a))
        .collect();
    assert!(!followed.is_empty() && followed.len() < 50, "{followed:?}");
    let loads = sim
        .stats()
        .other_officer_calls
        .load(std::sync::atomic::Ordering::SeqCst);
    // One post at a time, each read before the next is sent: the clients
    // never fall behind, whatever the machine's speed.
    let mut delivered = 0;
    for n in 0..1000 {
        let author = user_id(n % 50);
        let id = publish(&c, app.admin_addr(), &format!("p{n}"), &author).await;

        assert_eq!(everyone.post().await.0, id);
        if followed.contains(&author) {
            let (got, data) = filtered.post().await;
            assert_eq!(
                (got, data["post"]["userId"].as_str()),
                (id, Some(author.as_str()))
            );
            delivered += 1;
        }
    }
    // Nothing else reached the follower: the next event it gets is the
    // next post of a followed author.
    let last = publish(&c, app.admin_addr(), "last", &user_id(0)).await;
    assert!(sim_follows(&fan, &user_id(0)));
    assert_eq!(
        filtered.post().await.0,
        last,
        "nothing of other authors in between"
    );
    assert_eq!(delivered, 1000 / 50 * followed.len());
    let loaded = sim
        .stats()
        .other_officer_calls
        .load(std::sync::atomic::Ordering::SeqCst)
        - loads;
    assert!(loaded <= 50, "{loaded} follower-list loads for 50 authors");
    app.shutdown().await;
}

/// Whether the simulated Officer lists `fan` among `author`'s followers.
fn sim_follows(fan: &str, author: &str) -> bool {
    let index = |id: &str| (0..1000).find(|&i| user_id(i) == id).expect("a sim user");
    let (f, a) = (index(fan), index(author));
    (1..=10).any(|k| (a + k * 97) % 1000 == f)
}

/// `Last-Event-ID` replays every missed event once; an id older than the
/// buffer (`replay = 5`) gets `event: resync`, then live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_event_id_replays_what_was_missed_or_resyncs() {
    let sim = sim_origin(20, Duration::ZERO).await;
    let app = start_proxy(&config(&sim, "replay = 5")).await;
    let c = client();
    let author = user_id(1);
    let first = publish(&c, app.admin_addr(), "a", &author).await;
    let mut ids = vec![first];
    for n in 0..3 {
        ids.push(publish(&c, app.admin_addr(), &format!("b{n}"), &author).await);
    }
    let mut resumed = Sse::open(app.main_addr(), "", Some(first)).await.unwrap();
    for want in &ids[1..] {
        assert_eq!(resumed.post().await.0, *want);
    }
    let live = publish(&c, app.admin_addr(), "live", &author).await;
    assert_eq!(resumed.post().await.0, live, "then live, nothing twice");

    for n in 0..5 {
        publish(&c, app.admin_addr(), &format!("c{n}"), &author).await;
    }
    let mut stale = Sse::open(app.main_addr(), "", Some(first)).await.unwrap();
    assert_eq!(stale.event().await, Some(Frame::Resync));
    let next = publish(&c, app.admin_addr(), "after", &author).await;
    assert_eq!(stale.post().await.0, next);
    assert_eq!(
        metric(
            &c,
            app.admin_addr(),
            "profile_edge_notifications_dropped_total{reason=\"unknown-last-event-id\"}"
        )
        .await,
        1.0
    );
    app.shutdown().await;
}

/// A subscriber that stops reading falls behind and gets `event: resync`
/// (continuing from the newest event) while another on the same instance
/// gets every event; nothing waits for the slow one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_resynced_and_slows_no_one() {
    let sim = sim_origin(20, Duration::ZERO).await;
    // No policy: the posts are large, and this is about fan-out.
    // The stuck client is not cut off by the write deadline meanwhile.
    let text = profile_config(
        &sim.officer_url(),
        "[notifications]\nclient_queue = 4\nreplay = 16\n",
    )
    .replacen(
        "[server]\nlisten",
        "[server]\nwrite_timeout = \"10m\"\nlisten",
        1,
    );
    let app = start_proxy(&text).await;
    let c = client();
    let mut stuck = Sse::open(app.main_addr(), "", None).await.unwrap();
    let mut reader = Sse::open(app.main_addr(), "", None).await.unwrap();
    let author = user_id(2);
    let big = "x".repeat(100 * 1024);
    // 200 posts of 100 KiB: far more than the socket buffers between the
    // proxy and a client that reads nothing can hold. Each post is sent
    // once the reading client has the previous one, so that one never
    // falls behind, whatever the machine's speed.
    let mut ids = Vec::new();
    for n in 0..200 {
        let (status, a) = notify(
            &c,
            app.admin_addr(),
            json!({"post": {"id": format!("p{n}"), "userId": author, "text": big}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{a}");
        let id = a["id"].as_u64().unwrap();
        assert_eq!(
            reader.post().await.0,
            id,
            "the reader gets every event, in order"
        );
        ids.push(id);
    }
    // The stuck client reads at last: what its socket held, then a resync
    // where it fell behind, then live events.
    let mut before = 0;
    loop {
        match stuck.event().await {
            Some(Frame::Resync) => break,
            Some(Frame::Post { .. }) => before += 1,
            other => panic!("expected posts then a resync, got {other:?}"),
        }
    }
    assert!(
        before < 200,
        "it fell behind ({before} posts read before the resync)"
    );
    let (status, a) = notify(
        &c,
        app.admin_addr(),
        json!({"post": {"id": "after", "userId": author}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let after = a["id"].as_u64().unwrap();
    assert_eq!(stuck.post().await.0, after, "continues live");
    assert_eq!(reader.post().await.0, after);
    assert!(
        metric(
            &c,
            app.admin_addr(),
            "profile_edge_notifications_dropped_total{reason=\"lagged\"}"
        )
        .await
            >= 1.0
    );
    app.shutdown().await;
}

/// Bad input is refused before a stream starts, with a JSON error naming
/// what is wrong; over `max_streams`, 503.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_the_stream() {
    let sim = sim_origin(20, Duration::ZERO).await;
    let app = start_proxy(&config(&sim, "max_streams = 2")).await;
    let c = client();
    let (status, e) = Sse::open(app.main_addr(), "?userId=..%2Fx", None)
        .await
        .err()
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(e["detail"].as_str().unwrap().contains("userId"), "{e}");
    let url = format!("http://{}{PATH}", app.main_addr());
    let (status, _, body) = send(&c, Method::GET, &url, &[("last-event-id", "soon")], "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(error_json(&body)["detail"]
        .as_str()
        .unwrap()
        .contains("Last-Event-ID"));
    let _a = Sse::open(app.main_addr(), "", None).await.unwrap();
    let _b = Sse::open(app.main_addr(), "", None).await.unwrap();
    let (status, e) = Sse::open(app.main_addr(), "", None).await.err().unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(e["detail"].as_str().unwrap().contains("max_streams"), "{e}");
    for (post, named) in [
        (json!({"posts": []}), "`post`"),
        (json!({"post": {"text": "no author"}}), "`post.userId`"),
        (json!({"post": {"userId": 7}}), "`post.userId`"),
        (json!({"post": {"userId": "../x"}}), "post.userId"),
    ] {
        let (status, e) = notify(&c, app.admin_addr(), post.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{post}");
        assert!(e["detail"].as_str().unwrap().contains(named), "{post}: {e}");
    }
    app.shutdown().await;
}

// Enriched SSE passthrough (SPEC 9.3, last bullet): an `[[enrich]]` route
// whose upstream answers `text/event-stream`.

const POST_STREAM: &str = "/api/posts/stream";

/// The sim as Officer and Posts API; `[[enrich]]` on `/api/posts` with the
/// shipped `enrich-posts` policy as `feed`. `plugin` and `route` are extra
/// lines for the policy's and the route's sections.
fn stream_config(sim: &SimOrigin, plugin: &str, route: &str) -> String {
    let wasm = repo_root().join("plugins/dist/enrich_posts.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run `bash plugins/build.sh`",
        wasm.display()
    );
    profile_config(
        &sim.officer_url(),
        &format!(
            "[upstreams.posts]\nurl = \"{}\"\ntimeout = \"10s\"\n\n\
             [plugins.feed]\npath = \"{}\"\ndeadline = \"1s\"\n{plugin}\n\n\
             [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n{route}\n",
            sim.posts_url(),
            wasm.display()
        ),
    )
}

/// Opens the Posts API's stream through the proxy and waits until the
/// simulator has it connected, so that what it sends next reaches it.
async fn open_post_stream(sim: &SimOrigin, main: SocketAddr) -> Sse {
    let sse = Sse::connect(main, POST_STREAM, None).await.unwrap();
    wait_until(
        "the simulated Posts API has the stream connected",
        || async { sim.stream_subscribers() == 1 },
    )
    .await;
    sse
}

/// An event's lines and its data as JSON (one `data:` line, last).
fn event_lines(raw: &[u8]) -> (Vec<String>, Value) {
    let text = std::str::from_utf8(raw).expect("UTF-8");
    let text = text.strip_suffix("\n\n").expect("ends at a blank line");
    let mut lines: Vec<String> = text.split('\n').map(str::to_string).collect();
    let data = lines.pop().expect("a data line");
    let data = data.strip_prefix("data: ").expect("data last, on one line");
    (lines, serde_json::from_str(data).expect("JSON data"))
}

fn snapshot_of(sim: &SimOrigin, author: &str) -> Value {
    let p = sim.profile(author).expect("a sim user");
    json!({"id": author, "displayName": p.display_name, "avatarUrl": p.avatar_url})
}

async fn sse_events(c: &HttpClient, admin: SocketAddr, outcome: &str) -> f64 {
    metric(
        c,
        admin,
        &format!("profile_edge_sse_events_total{{outcome=\"{outcome}\"}}"),
    )
    .await
}

/// A policy is told what it enriches (`host.request()`): a new post for
/// the notification streams, or one event of an `[[enrich]]` route's
/// stream, with the request's path and the route.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_is_told_whether_it_enriches_a_notification_or_a_stream_event() {
    let sim = sim_origin(50, Duration::ZERO).await;
    let wasm = repo_root().join("plugins/dist/testing/hostile_enrich.wasm");
    assert!(
        wasm.exists(),
        "{} is missing: run `bash plugins/build.sh`",
        wasm.display()
    );
    let app = start_proxy(&profile_config(
        &sim.officer_url(),
        &format!(
            "[upstreams.posts]\nurl = \"{}\"\ntimeout = \"10s\"\n\n\
             [plugins.feed]\npath = \"{}\"\ndeadline = \"1s\"\nconfig = {{ mode = \"call-info\" }}\n\n\
             [notifications]\nplugin = \"feed\"\nenrich_deadline = \"10s\"\n\n\
             [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n",
            sim.posts_url(),
            wasm.display()
        ),
    ))
    .await;
    let c = client();
    let mut sub = Sse::open(app.main_addr(), "", None).await.unwrap();
    publish(&c, app.admin_addr(), "p1", &user_id(3)).await;
    let (_, data) = sub.post().await;
    assert_eq!(
        data["callInfo"],
        json!({"kind": "notification", "path": "", "route": ""}),
        "{data}"
    );

    let mut stream = open_post_stream(&sim, app.main_addr()).await;
    sim.push_stream_post();
    let (_, data) = event_lines(&stream.block().await.expect("an event"));
    assert_eq!(
        data["callInfo"],
        json!({"kind": "response", "path": POST_STREAM, "route": "/api/posts"}),
        "{data}"
    );
    app.shutdown().await;
}

/// Each event is enriched as it arrives: the first reaches the client,
/// enriched, before the simulator sends the second (the test sends the
/// second only once it has read the first). One profile load and one run of
/// the policy per event; an author already loaded costs no origin call.
/// Shutdown ends the stream cleanly and lets go of the upstream's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_event_stream_is_enriched_event_by_event() {
    let sim = sim_origin(50, Duration::ZERO).await;
    let app = start_proxy(&stream_config(&sim, "", "")).await;
    let (c, admin) = (client(), app.admin_addr());
    let mut sse = open_post_stream(&sim, app.main_addr()).await;

    let mut authors = Vec::new();
    for n in 1..=2u64 {
        let (calls, policy) = (sim.stats().origin_calls(), policy_calls(&c, admin).await);
        let author = sim.push_stream_post();
        let (lines, data) = event_lines(&sse.block().await.expect("an event"));
        assert_eq!(lines, [format!("id: {n}"), "event: post".to_string()]);
        assert_eq!(data["type"], "new-post");
        assert_eq!(data["post"]["userId"], json!(author));
        assert_eq!(
            data["post"]["userSnapshot"],
            snapshot_of(&sim, &author),
            "{data}"
        );
        assert_eq!(sim.stats().origin_calls() - calls, 1, "one profile load");
        assert_eq!(
            policy_calls(&c, admin).await - policy,
            2.0,
            "one needed-ids and one enrich call"
        );
        authors.push(author);
    }
    assert_ne!(authors[0], authors[1]);

    // The first author again: enriched from the memory tier.
    let calls = sim.stats().origin_calls();
    let again = format!(
        "id: 3\nevent: post\ndata: {}\n\n",
        json!({"type": "new-post", "post": {"id": "again", "userId": authors[0]}})
    );
    assert_eq!(sim.push_stream_raw(&again), 1);
    let (lines, data) = event_lines(&sse.block().await.expect("an event"));
    assert_eq!(lines, ["id: 3", "event: post"]);
    assert_eq!(data["post"]["userSnapshot"], snapshot_of(&sim, &authors[0]));
    assert_eq!(sim.stats().origin_calls(), calls, "no origin call");
    assert_eq!(sse_events(&c, admin, "enriched").await, 3.0);

    app.shutdown().await;
    assert_eq!(sse.block().await, None, "shutdown ends the stream");
    assert_eq!(sse.broken, None, "cleanly, not cut off");
    // The proxy let go of the upstream's stream: the simulator sees it
    // gone once a write finds the connection closed.
    wait_until("the upstream stream is closed", || async {
        sim.push_stream_raw(": anyone?\n\n");
        sim.stream_subscribers() == 0
    })
    .await;
}

/// What the policy cannot or need not enrich passes through byte for byte
/// (data that is not JSON, a comment, an event with an unknown field and no
/// data, an event over `max_body_size`, an event the policy fails on, even
/// with `on_error = "closed"`: the stream has started), and the stream goes
/// on with the next good event enriched, its unknown field kept in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_upstream_events_pass_through_as_they_came() {
    let sim = sim_origin(50, Duration::ZERO).await;
    let app = start_proxy(&stream_config(
        &sim,
        "on_error = \"closed\"",
        "max_body_size = \"1KiB\"",
    ))
    .await;
    let (c, admin) = (client(), app.admin_addr());
    let policy = |outcome: &'static str| {
        let c = c.clone();
        async move {
            metric(
                &c,
                admin,
                &format!(
                    "profile_edge_plugin_calls_total{{outcome=\"{outcome}\",plugin=\"feed\"}}"
                ),
            )
            .await
        }
    };
    let mut sse = open_post_stream(&sim, app.main_addr()).await;

    let author = user_id(7);
    let big = format!(
        "id: 13\nevent: post\ndata: {}\n\n",
        json!({"type": "new-post", "post": {"userId": author, "text": "x".repeat(2048)}})
    );
    let as_they_came = [
        "id: 10\nevent: post\ndata: {\"type\": \"new-post\", \"post\": \n\n".to_string(),
        ": a comment from the upstream\n\n".to_string(),
        "id: 11\nmood: sunny\nretry: 3000\n\n".to_string(),
        "id: 12\nevent: post\ndata: [\"not\", \"posts\"]\n\n".to_string(),
        big,
    ];
    for raw in &as_they_came {
        assert_eq!(sim.push_stream_raw(raw), 1);
        let got = sse.block().await.expect("an event");
        assert_eq!(
            String::from_utf8_lossy(&got),
            *raw,
            "passed through byte for byte"
        );
    }
    assert_eq!(policy("ok").await, 0.0, "only the array reached the policy");
    assert_eq!(policy("error").await, 1.0, "and failed there");

    // An unknown field with data: enriched, the field kept where it was.
    let good = format!(
        "id: 14\nmood: sunny\nevent: post\ndata: {}\n\n",
        json!({"type": "new-post", "post": {"id": "p", "userId": author}})
    );
    assert_eq!(sim.push_stream_raw(&good), 1);
    let (lines, data) = event_lines(&sse.block().await.expect("an event"));
    assert_eq!(lines, ["id: 14", "mood: sunny", "event: post"]);
    assert_eq!(data["post"]["userSnapshot"], snapshot_of(&sim, &author));
    // And the simulator's own next post.
    let next = sim.push_stream_post();
    let (lines, data) = event_lines(&sse.block().await.expect("an event"));
    assert_eq!(lines, ["id: 1", "event: post"]);
    assert_eq!(data["post"]["userSnapshot"], snapshot_of(&sim, &next));
    assert_eq!(policy("ok").await, 4.0, "two events, two calls each");

    for (outcome, n) in [
        ("enriched", 2.0),
        ("passed", 3.0),
        ("failed", 1.0),
        ("oversize", 1.0),
    ] {
        assert_eq!(sse_events(&c, admin, outcome).await, n, "{outcome}");
    }
    app.shutdown().await;
}

// Sources of posts beyond the admin route: a `new-posts` change stream,
// the other instances of the fleet, the demo; and follower lists that
// follow profile events.

/// A document inserted into the watched posts collection, from another
/// connection, reaches 100 subscribers with the author's current snapshot
/// (the profile changed, and was purged, after it was cached), for one
/// profile load and one run of the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_inserted_into_the_posts_collection_reaches_every_subscriber() {
    let sim = sim_origin(50, Duration::ZERO).await;
    let mongo = MongoServer::start().await;
    let db = mongo.database().to_string();
    let app = start_proxy(&config(
        &sim,
        &format!(
            "\n[[change_streams]]\nname = \"posts\"\nuri = \"{}\"\ndatabase = \"{db}\"\ncollection = \"posts\"\n\
             kind = \"new-posts\"\nstate_database = \"{db}\"\nmax_await = \"200ms\"\n",
            mongo.uri()
        ),
    ))
    .await;
    let c = client();
    wait_until("the posts stream is watched", || {
        let c = c.clone();
        let admin = app.admin_addr();
        async move { admin_stats(&c, admin).await["change_streams"][0]["role"] == "watching" }
    })
    .await;
    let author = user_id(4);
    served(&c, app.main_addr(), &author).await;
    assert!(sim.update_user(&author));
    purge(&c, app.admin_addr(), &author).await;
    let current = sim.profile(&author).unwrap();
    let mut subs = Vec::new();
    for _ in 0..100 {
        subs.push(Sse::open(app.main_addr(), "", None).await.unwrap());
    }
    let calls = sim.stats().origin_calls();
    let policy = policy_calls(&c, app.admin_addr()).await;
    let inserted = Instant::now();
    mongo
        .client()
        .await
        .database(&db)
        .collection::<mongodb::bson::Document>("posts")
        .insert_one(mongodb::bson::doc! {"userId": &author, "text": "from the database"})
        .await
        .unwrap();
    for s in &mut subs {
        let (_, data) = s.post().await;
        let post = &data["post"];
        assert_eq!(post["userId"], json!(author), "{data}");
        assert_eq!(post["text"], "from the database");
        assert!(post["_id"].is_string(), "object ids as hex strings: {data}");
        assert_eq!(
            post["userSnapshot"]["displayName"],
            json!(current.display_name),
            "the author's current snapshot: {data}"
        );
    }
    eprintln!(
        "insert to receipt by 100 subscribers: {:?}",
        inserted.elapsed()
    );
    assert_eq!(sim.stats().origin_calls() - calls, 1, "one profile load");
    assert_eq!(
        policy_calls(&c, app.admin_addr()).await - policy,
        2.0,
        "one needed-ids and one enrich call"
    );
    assert_eq!(
        admin_stats(&c, app.admin_addr()).await["change_streams"][0]["posts_published"],
        1
    );
    app.shutdown().await;
}

/// Three instances sharing a backplane: a post sent to any of them reaches
/// the subscribers of all three exactly once, enriched once in the fleet
/// (on the instance it entered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_deliver_each_post_once_everywhere() {
    let sim = sim_origin(50, Duration::ZERO).await;
    let redis = RedisServer::start().await;
    let text = config(&sim, &format!("\n{}[backplane]\n", redis.tier_config()));
    let mut apps = Vec::new();
    for _ in 0..3 {
        apps.push(start_proxy(&text).await);
    }
    let c = client();
    for app in &apps {
        wait_until("every instance reads the fleet's posts", || {
            let c = c.clone();
            let admin = app.admin_addr();
            async move {
                admin_stats(&c, admin).await["notifications"]["fleet"]["connected"] == json!(true)
            }
        })
        .await;
    }
    let mut subs = Vec::new();
    for app in &apps {
        for _ in 0..2 {
            subs.push(Sse::open(app.main_addr(), "", None).await.unwrap());
        }
    }
    let mut policy = Vec::new();
    for app in &apps {
        policy.push(policy_calls(&c, app.admin_addr()).await);
    }
    // One post at a time, each read everywhere before the next is sent:
    // a duplicate or a loss shows as the wrong post at the next read.
    const POSTS: usize = 30;
    for n in 0..POSTS {
        let to = &apps[n % 3];
        let (status, answer) = notify(
            &c,
            to.admin_addr(),
            json!({"post": {"id": format!("p{n}"), "userId": user_id(n % 50)}}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(answer["relayed"], true);
        for (i, s) in subs.iter_mut().enumerate() {
            let (_, data) = s.post().await;
            assert_eq!(
                data["post"]["id"],
                json!(format!("p{n}")),
                "subscriber {i} (instance {})",
                i / 2
            );
            assert!(
                data["post"]["userSnapshot"]["id"].is_string(),
                "enriched where it entered: {data}"
            );
        }
    }
    for (i, app) in apps.iter().enumerate() {
        let admin = app.admin_addr();
        let relayed = |outcome: &'static str| {
            let c = c.clone();
            async move {
                metric(
                    &c,
                    admin,
                    &format!("profile_edge_notifications_relayed_total{{direction=\"received\",outcome=\"{outcome}\"}}"),
                )
                .await
            }
        };
        assert_eq!(
            relayed("delivered").await,
            (POSTS * 2 / 3) as f64,
            "instance {i}"
        );
        assert_eq!(
            policy_calls(&c, admin).await - policy[i],
            (POSTS / 3 * 2) as f64,
            "instance {i} ran the policy only for the posts it received"
        );
    }
    for app in apps {
        app.shutdown().await;
    }
}

/// A follower list is loaded once per author, kept, and forgotten with a
/// profile event for that author: the next post loads it again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_event_forgets_the_authors_follower_list() {
    let sim = sim_origin(1000, Duration::ZERO).await;
    let app = start_proxy(&config(&sim, "")).await;
    let c = client();
    let (fan, author) = (user_id(97), user_id(0));
    assert!(sim_follows(&fan, &author));
    let mut filtered = Sse::open(app.main_addr(), &format!("?userId={fan}"), None)
        .await
        .unwrap();
    let loaded = |c: HttpClient, admin| async move {
        admin_stats(&c, admin).await["notifications"]["follower_lists_loaded"]
            .as_u64()
            .unwrap()
    };
    for (n, loads) in [(0, 1), (1, 1)] {
        let id = publish(&c, app.admin_addr(), &format!("p{n}"), &author).await;
        assert_eq!(filtered.post().await.0, id);
        assert_eq!(loaded(c.clone(), app.admin_addr()).await, loads);
    }
    purge(&c, app.admin_addr(), &author).await;
    let id = publish(&c, app.admin_addr(), "p2", &author).await;
    assert_eq!(filtered.post().await.0, id);
    assert_eq!(
        loaded(c.clone(), app.admin_addr()).await,
        2,
        "loaded again after the event"
    );
    app.shutdown().await;
}

/// `profile-edge demo` prints a curl command following the stream, and
/// publishes a synthetic post every second, each with its `userSnapshot`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_streams_new_posts_with_their_snapshots() {
    use profile_edge::demo::{Demo, DemoOptions};
    let demo = Demo::start(&DemoOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        users: 100,
        latency: Duration::ZERO,
        ..DemoOptions::default()
    })
    .await
    .unwrap();
    let follow = format!("curl -N http://{}{PATH}", demo.app.main_addr());
    assert!(
        demo.curl_commands().iter().any(|(cmd, _)| *cmd == follow),
        "the demo prints `{follow}`"
    );
    let mut s = Sse::open(demo.app.main_addr(), "", None).await.unwrap();
    let (first, a) = s.post().await;
    let (second, b) = s.post().await;
    assert!(second > first);
    for data in [a, b] {
        assert_eq!(data["type"], "new-post");
        let snapshot = &data["post"]["userSnapshot"];
        assert_eq!(snapshot["id"], data["post"]["userId"], "{data}");
        assert!(snapshot["avatarUrl"].is_string(), "{data}");
    }
    demo.shutdown().await;
}
