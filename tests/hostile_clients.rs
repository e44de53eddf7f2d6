//! Slow, silent and odd clients (issue 9): each defect a hostile client
//! found, reproduced against the real proxy over loopback. Verdicts are
//! counts (clients served, connections closed, timeouts counted, origin
//! calls), never durations: the deadlines under test are short (1 s) and
//! every other limit has room.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A safety net for a single read or request: far past any deadline under
/// test, so only a proxy that never acts runs into it.
const NET: Duration = Duration::from_secs(30);

/// Config with `server_keys` in `[server]` (the deadline under test) and
/// `extra` sections after it.
fn config(officer: &str, server_keys: &str, extra: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\n{server_keys}\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [upstreams.officer]\nurl = \"{officer}\"\ntimeout = \"10s\"\nconnect_timeout = \"500ms\"\n\n{extra}"
    )
}

fn timeouts(kind: &str) -> String {
    format!("profile_edge_client_timeouts_total{{kind=\"{kind}\"}}")
}

/// Reads until the peer closes; true if it did (EOF or reset) within `NET`.
async fn closed_by_peer(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let read_all = async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(NET, read_all).await.is_ok()
}

/// Reads one HTTP/1 response (head and whatever body follows until close
/// or `NET`) as text.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(NET, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    out.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&out);
                    if let Some(head_end) = text.find("\r\n\r\n") {
                        let len = text[..head_end]
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        if out.len() >= head_end + 4 + len {
                            return;
                        }
                    }
                }
            }
        }
    })
    .await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_response(&mut s).await
}

/// D1: with HTTP/2 on (the default), connections that send nothing, or
/// only the HTTP/2 preface, are closed at the head deadline; while they
/// hold every connection slot, a new client waits only until then.
#[tokio::test]
async fn silent_connections_are_closed_at_the_head_deadline() {
    let origin = Origin::start("officer").await;
    let app = start_proxy(&config(
        &origin.url(),
        "header_read_timeout = \"1s\"\nmax_connections = 4",
        "",
    ))
    .await;
    let addr = app.main_addr();
    let mut silent = Vec::new();
    for _ in 0..2 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    for _ in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The preface and an empty SETTINGS frame, then nothing.
        s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            .await
            .unwrap();
        silent.push(s);
    }
    // All four slots are held; this client waits in the backlog until the
    // deadline frees them, then is served.
    let c = client();
    let (status, _, body) = get(&c, &format!("http://{addr}/status/200")).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let mut closed = 0;
    for s in &mut silent {
        closed += usize::from(closed_by_peer(s).await);
    }
    assert_eq!(closed, 4, "every silent connection is closed by the proxy");
    let counted = wait_for_metric(&c, app.admin_addr(), &timeouts("head"), 4.0).await;
    assert_eq!(counted, 4.0);
    app.shutdown().await;
}

/// D1: a connection with nothing in flight is closed after
/// `idle_timeout`, on HTTP/2 (GOAWAY) and HTTP/1.1 alike.
#[tokio::test]
async fn idle_connections_are_closed_on_both_protocols() {
    let origin = Origin::start("officer").await;
    // hyper's own HTTP/1 wait for the next head must not close the
    // keep-alive connection before the idle deadline does.
    let app = start_proxy(&config(
        &origin.url(),
        "idle_timeout = \"1s\"\nheader_read_timeout = \"60s\"",
        "",
    ))
    .await;
    let addr = app.main_addr();
    let url = format!("http://{addr}/status/200");

    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake::<_, _, Full<Bytes>>(TokioExecutor::new(), io)
            .await
            .unwrap();
    let h2_conn = tokio::spawn(conn);
    let resp = h2
        .send_request(Request::get(&url).body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(resp);

    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h1, conn) = hyper::client::conn::http1::handshake::<_, Full<Bytes>>(io)
        .await
        .unwrap();
    let h1_conn = tokio::spawn(conn);
    let resp = h1
        .send_request(
            Request::get(&url)
                .header("host", addr.to_string())
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    resp.into_body().collect().await.unwrap();

    // Both connection drivers finish because the proxy closed them.
    tokio::time::timeout(NET, h2_conn)
        .await
        .expect("HTTP/2 connection still open")
        .unwrap()
        .expect("a clean GOAWAY close");
    let _ = tokio::time::timeout(NET, h1_conn)
        .await
        .expect("HTTP/1.1 connection still open");
    let c = client();
    wait_for_metric(&c, app.admin_addr(), &timeouts("idle"), 2.0).await;
    app.shutdown().await;
}

/// D2: a complete head, then a stalled or dripped body, on the batch
/// route, the admin events route and an HTTP/2 stream: 408 JSON, and the
/// connection slots come back for new clients.
#[tokio::test]
async fn stalled_and_dripped_bodies_get_408() {
    let origin = Origin::start("officer").await;
    let app = start_proxy(&config(
        &origin.url(),
        "body_read_timeout = \"1s\"\nmax_connections = 3",
        "",
    ))
    .await;
    let (addr, admin) = (app.main_addr(), app.admin_addr());

    let stalled = tokio::spawn(raw(
        addr,
        b"POST /api/users/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{\"ids\"",
    ));
    let dripped = tokio::spawn(async move {
        let (mut rd, mut wr) = TcpStream::connect(addr).await.unwrap().into_split();
        wr.write_all(b"POST /api/users/batch HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
            .await
            .unwrap();
        // One byte every 200 ms: the body would take 20 s in full. The
        // pace is the attack, not a clock the verdict depends on.
        let drip = tokio::spawn(async move {
            for _ in 0..100 {
                if wr.write_all(b" ").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let mut out = Vec::new();
        let _ = tokio::time::timeout(NET, rd.read_to_end(&mut out)).await;
        drip.abort();
        String::from_utf8_lossy(&out).into_owned()
    });
    let events = tokio::spawn(raw(
        admin,
        b"POST /admin/events HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{\"type\":",
    ));

    // HTTP/2: one data frame, then the stream's body never ends.
    let io = TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake::<_, _, TestBody>(TokioExecutor::new(), io)
            .await
            .unwrap();
    tokio::spawn(conn);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"{\"ids\":"))))
        .await
        .unwrap();
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let req = Request::post(format!("http://{addr}/api/users/batch"))
        .body(BodyExt::boxed(body))
        .unwrap();
    let h2_resp = tokio::time::timeout(NET, h2.send_request(req))
        .await
        .expect("HTTP/2 stream still waiting")
        .unwrap();
    assert_eq!(h2_resp.status(), StatusCode::REQUEST_TIMEOUT);
    let h2_body = h2_resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(error_json(&h2_body)["error"], "request_timeout");
    drop(tx);

    for (what, answer) in [
        ("stalled", stalled.await.unwrap()),
        ("dripped", dripped.await.unwrap()),
        ("admin events", events.await.unwrap()),
    ] {
        assert!(answer.starts_with("HTTP/1.1 408"), "{what}: {answer}");
        assert!(
            answer.contains("\"error\":\"request_timeout\""),
            "{what}: {answer}"
        );
        assert!(
            answer.contains("server.body_read_timeout"),
            "{what}: {answer}"
        );
    }
    let c = client();
    let (status, _, _) = send(
        &c,
        Method::POST,
        &format!("http://{addr}/status/200"),
        &[],
        "a normal body",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "a new client is served");
    let counted = wait_for_metric(&c, admin, &timeouts("body"), 4.0).await;
    assert_eq!(counted, 4.0);
    app.shutdown().await;
}

/// A client that asks for a large answer and never reads it is cut off at
/// `write_timeout` instead of holding its connection forever.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off() {
    let origin = Origin::start("officer").await;
    let app = start_proxy(&config(&origin.url(), "write_timeout = \"1s\"", "")).await;
    let addr = app.main_addr();
    let c = client();
    let open_before = metric(&c, app.admin_addr(), "profile_edge_connections").await;
    // 256 MiB: far more than the kernel buffers on both ends can hold.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /bytes/268435456 HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let counted = wait_for_metric(&c, app.admin_addr(), &timeouts("write"), 1.0).await;
    assert_eq!(counted, 1.0);
    wait_until("the connection is released", || {
        let c = c.clone();
        let admin = app.admin_addr();
        async move { metric(&c, admin, "profile_edge_connections").await <= open_before }
    })
    .await;
    drop(s);
    app.shutdown().await;
}

/// D5: an upload slower than the upstream `timeout` goes through: the
/// timeout runs from the end of the body. A body that stops for longer than
/// `body_read_timeout` gets 408.
#[tokio::test]
async fn passthrough_uploads_are_bounded_by_pauses_not_by_the_upstream_timeout() {
    let origin = Origin::start("officer").await;
    // Pauses of 100 ms against a body deadline of 10 s: only the upstream
    // timeout (300 ms) could trip here, and it must not.
    let text = config(&origin.url(), "body_read_timeout = \"10s\"", "")
        .replace("timeout = \"10s\"", "timeout = \"300ms\"");
    let app = start_proxy(&text).await;
    let url = format!("http://{}/echo", app.main_addr());

    // 12 chunks 100 ms apart: the upload takes at least 1.1 s, well over
    // the upstream's 300 ms, and no pause comes near 1 s.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    let feeder = tokio::spawn(async move {
        for i in 0..12u8 {
            tx.send(Ok(Frame::data(Bytes::from(vec![b'a' + i; 64 * 1024]))))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let req = Request::post(&url).body(BodyExt::boxed(body)).unwrap();
    let c = client();
    let resp = tokio::time::timeout(NET, c.request(req))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(
        echoed.len(),
        12 * 64 * 1024,
        "the whole upload reached the origin"
    );
    feeder.await.unwrap();

    app.shutdown().await;

    // One chunk, then silence, to an origin that waits for the whole body
    // before it answers: 408, and the origin request is abandoned. The
    // upstream timeout has room here; the body deadline is under test.
    let text = config(&origin.url(), "body_read_timeout = \"1s\"", "");
    let app = start_proxy(&text).await;
    let url = format!("http://{}/gate", app.main_addr());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(1);
    tx.send(Ok(Frame::data(Bytes::from_static(b"partial"))))
        .await
        .unwrap();
    let body = StreamBody::new(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    let req = Request::post(&url).body(BodyExt::boxed(body)).unwrap();
    let resp = tokio::time::timeout(NET, c.request(req))
        .await
        .expect("no answer")
        .unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(error_json(&body)["error"], "request_timeout");
    drop(tx);
    app.shutdown().await;
}

/// D3: a config file that cannot be read or decoded is rejected once per
/// change, not once per directory event.
#[tokio::test]
async fn an_unreadable_config_is_counted_once_per_change() {
    let origin = Origin::start("officer").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    let good = config(&origin.url(), "", "");
    std::fs::write(&path, &good).unwrap();
    let app = start_proxy_from_file(&path).await;
    let (c, admin) = (client(), app.admin_addr());
    let rejected = "profile_edge_reloads_total{kind=\"config\",outcome=\"rejected\"}";
    let ok = "profile_edge_reloads_total{kind=\"config\",outcome=\"ok\"}";
    let events = "profile_edge_config_watch_events_total";

    // Not UTF-8.
    let mut bad = good.clone().into_bytes();
    bad.extend_from_slice(b"\n# \xff\xfe\n");
    std::fs::write(&path, &bad).unwrap();
    wait_for_metric(&c, admin, rejected, 1.0).await;
    // Five unrelated events in the same directory, each handled in turn.
    for i in 0..5 {
        let seen = metric(&c, admin, events).await;
        std::fs::write(dir.path().join(format!("other-{i}.txt")), "x").unwrap();
        wait_for_metric(&c, admin, events, seen + 1.0).await;
    }
    assert_eq!(
        metric(&c, admin, rejected).await,
        1.0,
        "not re-counted per event"
    );

    // A different unreadable state (the file deleted) counts once more.
    std::fs::remove_file(&path).unwrap();
    wait_for_metric(&c, admin, rejected, 2.0).await;
    let seen = metric(&c, admin, events).await;
    std::fs::write(dir.path().join("other-last.txt"), "x").unwrap();
    wait_for_metric(&c, admin, events, seen + 1.0).await;
    assert_eq!(metric(&c, admin, rejected).await, 2.0);

    // Back to a good file: applied.
    let ok_before = metric(&c, admin, ok).await;
    std::fs::write(
        &path,
        good.replace("[admin]", "[profiles]\nnegative_ttl = \"5s\"\n\n[admin]"),
    )
    .unwrap();
    wait_for_metric(&c, admin, ok, ok_before + 1.0).await;
    assert_eq!(metric(&c, admin, rejected).await, 2.0);
    app.shutdown().await;
}

fn dist(name: &str) -> std::path::PathBuf {
    let p = repo_root().join("plugins/dist").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `bash plugins/build.sh` (tests/run.sh does)",
        p.display()
    );
    p
}

/// D4: a reload that points a plugin at a file that cannot load is
/// rejected whole, with the plugin's problem in the answer, as `check` and
/// a restart would; the running config and plugin stay.
#[tokio::test]
async fn a_reload_naming_a_plugin_that_cannot_load_is_rejected_whole() {
    let sim = sim_origin(10, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let good_wasm = dir.path().join("feed.wasm");
    std::fs::copy(dist("enrich_posts.wasm"), &good_wasm).unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, [0x42u8; 512]).unwrap();
    let section = |wasm: &std::path::Path, ttl: &str| {
        config(
            &sim.officer_url(),
            "",
            &format!(
                "[profiles]\nnegative_ttl = \"{ttl}\"\n\n[upstreams.posts]\nurl = \"{}\"\ntimeout = \"10s\"\n\n\
                 [plugins.feed]\npath = \"{}\"\ndeadline = \"1s\"\n\n\
                 [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n",
                sim.posts_url(),
                wasm.display()
            ),
        )
    };
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, section(&good_wasm, "30s")).unwrap();
    let app = start_proxy_from_file(&path).await;
    let (c, admin) = (client(), app.admin_addr());

    for bad in [
        junk.as_path(),
        std::path::Path::new("/etc/passwd"),
        &dist("invalidate_profile.wasm"),
    ] {
        // The same problem `check` reports, and a non-zero exit.
        let probe = dir.path().join("probe.toml");
        std::fs::write(&probe, section(bad, "30s")).unwrap();
        let checked = run_check(&probe);
        assert!(!checked.status.success(), "check accepts {}", bad.display());

        std::fs::write(&path, section(bad, "5s")).unwrap();
        let (status, _, body) = send(
            &c,
            Method::POST,
            &format!("http://{admin}/admin/reload"),
            &[],
            "",
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let answer = error_json(&body);
        assert_eq!(answer["error"], "config_rejected");
        assert_eq!(
            answer["problems"][0]["key"], "plugins.feed.path",
            "{answer}"
        );
        // Nothing of the new file applied: not the plugin, not the TTL.
        let (_, _, listed) = get(&c, &format!("http://{admin}/admin/plugins")).await;
        let listed: serde_json::Value = serde_json::from_slice(&listed).unwrap();
        assert_eq!(
            listed["plugins"][0]["path"],
            good_wasm.display().to_string(),
            "{listed}"
        );
        assert_eq!(listed["plugins"][0]["loaded"], true);
    }
    // Enrichment still runs on the good version.
    let (status, _, body) = get(&c, &format!("http://{}/api/posts?limit=3", app.main_addr())).await;
    assert_eq!(status, StatusCode::OK);
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(doc["posts"][0]["userSnapshot"].is_object(), "{doc}");
    app.shutdown().await;
}

/// Risks: CONNECT, a missing or doubled Host, and absolute-form targets.
#[tokio::test]
async fn requests_a_reverse_proxy_must_not_pass_on_are_refused() {
    let origin = Origin::start("officer").await;
    let app = start_proxy(&config(&origin.url(), "", "")).await;
    let addr = app.main_addr();

    let connect = raw(
        addr,
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
    )
    .await;
    assert!(connect.starts_with("HTTP/1.1 405"), "{connect}");
    assert!(connect.contains("method_not_allowed"), "{connect}");
    let no_host = raw(addr, b"GET /status/200 HTTP/1.1\r\n\r\n").await;
    assert!(no_host.starts_with("HTTP/1.1 400"), "{no_host}");
    assert!(no_host.contains("Host"), "{no_host}");
    let two_hosts = raw(
        addr,
        b"GET /status/200 HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    )
    .await;
    assert!(two_hosts.starts_with("HTTP/1.1 400"), "{two_hosts}");
    assert_eq!(origin.calls(), 0, "none of them reached the origin");

    let absolute = raw(
        addr,
        b"GET http://intended.example/x HTTP/1.1\r\nHost: other.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(absolute.starts_with("HTTP/1.1 200"), "{absolute}");
    let seen = origin.last_seen();
    assert_eq!(seen.headers["x-forwarded-host"], "intended.example");
    assert_eq!(seen.uri, "/x");
    app.shutdown().await;
}

/// Risks: ids are checked after percent-decoding, so `%2e%2e` is `..` and
/// never reaches the origin, even under a permissive `id_pattern`; what is
/// accepted reaches the origin escaped.
#[tokio::test]
async fn ids_are_checked_after_percent_decoding() {
    let origin = Origin::start("officer").await;
    let app = start_proxy(&config(
        &origin.url(),
        "",
        "[profiles]\nid_pattern = \"^.{1,64}$\"\n",
    ))
    .await;
    let c = client();
    for bad in [
        "%2e%2e", "%2E", "..", "a%2fb", "a%5c..", "%00x", "%zz", "%ff",
    ] {
        let (status, _, body) =
            get(&c, &format!("http://{}/api/users/{bad}", app.main_addr())).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body:?}");
        assert!(
            error_json(&body)["detail"].as_str().unwrap().contains("id"),
            "{bad}"
        );
    }
    assert_eq!(origin.calls(), 0, "no hostile id reached the origin");
    // A decoded space is a legal id here, so it is looked up.
    let _ = get(&c, &format!("http://{}/api/users/a%20b", app.main_addr())).await;
    assert_eq!(origin.calls(), 1);
    app.shutdown().await;
}

/// Risks: invented ids leave a capped number of short-lived "not found"
/// entries in Redis, not one per id for `max_stale`.
#[tokio::test]
async fn negative_entries_in_redis_are_capped_and_short_lived() {
    let redis = RedisServer::start().await;
    let sim = sim_origin(10, Duration::ZERO).await;
    let app = start_proxy(&config(
        &sim.officer_url(),
        "",
        &format!(
            "[profiles]\nnegative_ttl = \"30s\"\nmax_negative_entries = 20\n\n{}",
            redis.tier_config()
        ),
    ))
    .await;
    let c = client();
    let ids: Vec<String> = (0..200).map(|i| format!("dead{i:04x}")).collect();
    let body = serde_json::json!({ "ids": ids }).to_string();
    let (status, _, answer) = send(
        &c,
        Method::POST,
        &format!("http://{}/api/users/batch", app.main_addr()),
        &[],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer:?}");
    let mut conn = redis.conn().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("pe:test:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(keys.len(), 20, "the cap, not one key per invented id");
    for key in &keys {
        let pttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!(
            (1..=60_000).contains(&pttl),
            "{key}: a not-found lives at most 2 x negative_ttl, got {pttl} ms"
        );
    }
    // Memory still remembers them all: asking again costs the origin nothing.
    let calls = sim.stats().origin_calls();
    let _ = send(
        &c,
        Method::POST,
        &format!("http://{}/api/users/batch", app.main_addr()),
        &[],
        serde_json::json!({ "ids": ids }).to_string(),
    )
    .await;
    assert_eq!(sim.stats().origin_calls(), calls);
    app.shutdown().await;
}

/// Risks: a reload that removes the admin token says so, loudly.
#[tokio::test]
async fn a_reload_that_removes_the_admin_token_warns() {
    let origin = Origin::start("officer").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    let with_token = config(&origin.url(), "", "").replace(
        "[admin]\nlisten = \"127.0.0.1:0\"",
        "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"s3cret-token-value\"",
    );
    std::fs::write(&path, &with_token).unwrap();
    let app = start_proxy_from_file(&path).await;
    let c = client();
    std::fs::write(&path, config(&origin.url(), "", "")).unwrap();
    let (status, _, body) = send(
        &c,
        Method::POST,
        &format!("http://{}/admin/reload", app.admin_addr()),
        &[("authorization", "Bearer s3cret-token-value")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let warnings = answer["warnings"].as_array().expect("warnings");
    assert_eq!(warnings.len(), 1, "{answer}");
    assert!(warnings[0]
        .as_str()
        .unwrap()
        .contains("admin.token was removed"));
    app.shutdown().await;
}

/// Risks: events missing the fields their type needs get 400.
#[tokio::test]
async fn events_missing_their_fields_are_refused() {
    let origin = Origin::start("officer").await;
    let app = start_proxy(&config(&origin.url(), "", "")).await;
    let c = client();
    let url = format!("http://{}/admin/events", app.admin_addr());
    for (body, field) in [
        (r#"{"type":"profile-updated"}"#, "userId"),
        (r#"{"type":"profile-deleted","userId":null}"#, "userId"),
        (r#"{"type":"profile-updated","userId":42}"#, "userId"),
        (r#"{"userId":"abc"}"#, "type"),
        (r#"[1]"#, "object"),
    ] {
        let (status, _, answer) = send(&c, Method::POST, &url, &[], body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let detail = error_json(&answer)["detail"].as_str().unwrap().to_string();
        assert!(detail.contains(field), "{body}: {detail}");
    }
    app.shutdown().await;
}

/// Risks: client-facing error details name the failure, not the library.
#[tokio::test]
async fn error_details_carry_no_library_internals() {
    let port = free_port();
    let app = start_proxy(&config(&format!("http://127.0.0.1:{port}"), "", "")).await;
    let c = client();
    let (status, _, body) = get(&c, &format!("http://{}/anything", app.main_addr())).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let detail = error_json(&body)["detail"].as_str().unwrap().to_string();
    assert!(detail.contains("connection refused"), "{detail}");
    for internal in [
        "client error",
        "SendRequest",
        "hyper",
        "Connect)",
        "os error",
    ] {
        assert!(!detail.contains(internal), "{detail}");
    }
    app.shutdown().await;
}

/// The HTTP/1 header count cap is `server.max_headers`.
#[tokio::test]
async fn too_many_header_fields_get_431() {
    let origin = Origin::start("officer").await;
    let app = start_proxy(&config(&origin.url(), "max_headers = 20", "")).await;
    let mut req = String::from("GET /status/200 HTTP/1.1\r\nHost: x\r\n");
    for i in 0..30 {
        req.push_str(&format!("x-h{i}: v\r\n"));
    }
    req.push_str("\r\n");
    let answer = raw(app.main_addr(), req.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert_eq!(origin.calls(), 0);
    app.shutdown().await;
}

/// A Posts upstream that answers every request with one fixed JSON body.
async fn fixed_posts(body: &'static str) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|_req| async {
                    Ok::<_, std::convert::Infallible>(
                        http::Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from_static(body.as_bytes())))
                            .unwrap(),
                    )
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// Risks: one post whose `userId` is a number used to leave the whole feed
/// unenriched; now only that post goes without a snapshot.
#[tokio::test]
async fn one_unreadable_post_does_not_cost_the_feed_its_snapshots() {
    let sim = sim_origin(10, Duration::ZERO).await;
    let known = profile_edge::testkit::user_id(1);
    let body: &'static str = Box::leak(
        format!(
            r#"{{"posts":[{{"id":"p1","userId":7}},{{"id":"p2","userId":"{known}"}},"odd",{{"id":"p3","userId":{{"x":1}}}}]}}"#
        )
        .into_boxed_str(),
    );
    let posts = fixed_posts(body).await;
    let app = start_proxy(&config(
        &sim.officer_url(),
        "",
        &format!(
            "[upstreams.posts]\nurl = \"http://{posts}\"\ntimeout = \"10s\"\n\n\
             [plugins.feed]\npath = \"{}\"\ndeadline = \"1s\"\non_error = \"closed\"\n\n\
             [[enrich]]\npath_prefix = \"/api/posts\"\nupstream = \"posts\"\nplugin = \"feed\"\n",
            dist("enrich_posts.wasm").display()
        ),
    ))
    .await;
    let c = client();
    let (status, _, body) = get(&c, &format!("http://{}/api/posts", app.main_addr())).await;
    assert_eq!(status, StatusCode::OK, "{body:?}");
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let posts = doc["posts"].as_array().unwrap();
    assert_eq!(posts[0]["userSnapshot"], serde_json::Value::Null, "{doc}");
    assert_eq!(posts[1]["userSnapshot"]["id"], known.as_str(), "{doc}");
    assert_eq!(posts[2], "odd");
    assert_eq!(posts[3]["userSnapshot"], serde_json::Value::Null, "{doc}");
    app.shutdown().await;
}

/// Risks: a Redis that refuses our credentials is logged with its reason,
/// not just "breaker open".
#[tokio::test]
async fn a_redis_auth_failure_is_logged_with_its_cause() {
    let redis = RedisServer::start().await;
    let mut conn = redis.conn().await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("requirepass")
        .arg("not-what-the-proxy-has")
        .query_async(&mut conn)
        .await
        .unwrap();
    let sim = sim_origin(10, Duration::ZERO).await;
    let dir = tempfile::tempdir().unwrap();
    let (main, admin) = (free_port(), free_port());
    let path = dir.path().join("edge.toml");
    std::fs::write(
        &path,
        config_text_at(
            &sim.officer_url(),
            &format!("127.0.0.1:{main}"),
            &format!("127.0.0.1:{admin}"),
            &format!("{}[log]\nlevel = \"warn\"\n", redis.tier_config()),
        ),
    )
    .unwrap();
    let log = dir.path().join("edge.log");
    let proc = spawn_binary_logging_to(
        &path,
        format!("127.0.0.1:{admin}").parse().unwrap(),
        std::fs::File::create(&log).unwrap().into(),
    )
    .await;
    let c = client();
    for i in 0..10 {
        let id = profile_edge::testkit::user_id(i);
        let (status, _, _) = get(&c, &format!("http://127.0.0.1:{main}/api/users/{id}")).await;
        assert_eq!(
            status,
            StatusCode::OK,
            "Redis failing costs the client nothing"
        );
    }
    wait_until("the breaker opens and says why", || {
        let log = log.clone();
        async move {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .lines()
                .any(|l| {
                    l.contains("circuit breaker open") && l.to_ascii_lowercase().contains("auth")
                })
        }
    })
    .await;
    drop(proc);
}
