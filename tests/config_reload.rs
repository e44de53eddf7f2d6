//! Config hot reload and `profile-edge check`: an atomic rename (an editor's
//! save) or a Kubernetes-style symlink swap switches upstreams (the time it
//! took is printed, not judged: these machines are shared);
//! an invalid file is rejected, counted, and the old config keeps serving.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use support::*;

/// How long a test waits for a reload to show before it calls it lost. A
/// bound for a hang, not a performance target (reloads take ~200 ms here).
const PATIENCE: Duration = Duration::from_secs(30);

/// Writes `text` beside `path` and renames it over `path`, as editors do.
fn atomic_replace(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Polls the proxy until the answering origin is `want`; returns how long it took.
async fn wait_for_origin(c: &HttpClient, url: &str, want: &str) -> Duration {
    let start = Instant::now();
    loop {
        let (_, headers, _) = get(c, url).await;
        if headers.get("x-origin-name").is_some_and(|v| v == want) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < PATIENCE,
            "still not served by {want} after {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

#[tokio::test]
async fn atomic_rename_switches_upstream_and_invalid_file_is_rejected() {
    let a = Origin::start("origin-a").await;
    let b = Origin::start("origin-b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    std::fs::write(&path, config_text(&a.url(), "")).unwrap();
    let app = start_proxy_from_file(&path).await;
    let c = client();
    let url = format!("http://{}/who", app.main_addr());
    let admin = app.admin_addr();
    assert_eq!(get(&c, &url).await.1["x-origin-name"], "origin-a");

    atomic_replace(&path, &config_text(&b.url(), ""));
    let took = wait_for_origin(&c, &url, "origin-b").await;
    eprintln!("switched upstream in {took:?}");
    let ok = r#"profile_edge_reloads_total{kind="config",outcome="ok"}"#;
    assert_eq!(metric(&c, admin, ok).await, 1.0);

    // An invalid file: rejected, counted, and origin-b keeps serving.
    atomic_replace(
        &path,
        &config_text(&a.url(), "").replace("timeout = \"10s\"", "timeout = \"fast\""),
    );
    let rejected = r#"profile_edge_reloads_total{kind="config",outcome="rejected"}"#;
    let start = Instant::now();
    while metric(&c, admin, rejected).await < 1.0 {
        assert!(
            start.elapsed() < PATIENCE,
            "invalid file not rejected within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    for _ in 0..20 {
        let (status, headers, _) = get(&c, &url).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-origin-name"], "origin-b");
    }
    assert_eq!(metric(&c, admin, rejected).await, 1.0);
    assert_eq!(metric(&c, admin, ok).await, 1.0);

    // Unknown keys are refused the same way.
    atomic_replace(
        &path,
        &config_text(&a.url(), "[profiles]\nid_patern = \"x\"\n"),
    );
    let start = Instant::now();
    while metric(&c, admin, rejected).await < 2.0 {
        assert!(
            start.elapsed() < PATIENCE,
            "unknown key not rejected within {PATIENCE:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(get(&c, &url).await.1["x-origin-name"], "origin-b");

    // A good file again is picked up again.
    atomic_replace(&path, &config_text(&a.url(), ""));
    wait_for_origin(&c, &url, "origin-a").await;
    app.shutdown().await;
}

/// Kubernetes mounts a ConfigMap as `file -> ..data/file` with `..data` a
/// symlink to a timestamped directory, swapped atomically on update.
#[cfg(unix)]
#[tokio::test]
async fn configmap_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;
    let a = Origin::start("origin-a").await;
    let b = Origin::start("origin-b").await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("..2026_01")).unwrap();
    std::fs::write(root.join("..2026_01/edge.toml"), config_text(&a.url(), "")).unwrap();
    symlink("..2026_01", root.join("..data")).unwrap();
    symlink("..data/edge.toml", root.join("edge.toml")).unwrap();
    let app = start_proxy_from_file(&root.join("edge.toml")).await;
    let c = client();
    let url = format!("http://{}/who", app.main_addr());
    assert_eq!(get(&c, &url).await.1["x-origin-name"], "origin-a");

    std::fs::create_dir(root.join("..2026_02")).unwrap();
    std::fs::write(root.join("..2026_02/edge.toml"), config_text(&b.url(), "")).unwrap();
    symlink("..2026_02", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_01")).unwrap();
    wait_for_origin(&c, &url, "origin-b").await;
    app.shutdown().await;
}

#[tokio::test]
async fn admin_reload_needs_the_token_and_reports_problems() {
    let a = Origin::start("origin-a").await;
    let b = Origin::start("origin-b").await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("edge.toml");
    let with_token =
        |url: &str| config_text(url, "").replace("[admin]\n", "[admin]\ntoken = \"s3cret\"\n");
    std::fs::write(&path, with_token(&a.url())).unwrap();
    let app = start_proxy_from_file(&path).await;
    let c = client();
    let reload = format!("http://{}/admin/reload", app.admin_addr());

    let (status, _, body) = send(&c, Method::POST, &reload, &[], "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(error_json(&body)["error"], "unauthorized");
    let (status, _, _) = send(
        &c,
        Method::POST,
        &reload,
        &[("authorization", "Bearer wrong")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Write without renaming; the explicit reload applies it at once.
    std::fs::write(&path, with_token(&b.url())).unwrap();
    let auth = [("authorization", "Bearer s3cret")];
    let (status, _, body) = send(&c, Method::POST, &reload, &auth, "").await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let url = format!("http://{}/who", app.main_addr());
    assert_eq!(get(&c, &url).await.1["x-origin-name"], "origin-b");

    std::fs::write(&path, "[server]\nlisten = 5\n").unwrap();
    let (status, _, body) = send(&c, Method::POST, &reload, &auth, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v = error_json(&body);
    assert_eq!(v["error"], "config_rejected");
    assert_eq!(v["problems"][0]["key"], "server.listen", "{v}");
    assert_eq!(get(&c, &url).await.1["x-origin-name"], "origin-b");

    // Read-only endpoints need no token.
    let (status, _, _) = get(&c, &format!("http://{}/healthz", app.admin_addr())).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = get(&c, &format!("http://{}/readyz", app.admin_addr())).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = get(&c, &format!("http://{}/nope", app.admin_addr())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    error_json(&body);
    app.shutdown().await;
}

#[test]
fn check_exits_1_naming_the_bad_key_and_0_on_a_good_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, config_text("http://127.0.0.1:7001", "")).unwrap();
    check_ok(&good);

    let cases = [
        (
            "timeout = \"10s\"",
            "timeout = \"soon\"",
            "upstreams.officer.timeout",
        ),
        ("[admin]\n", "[admin]\nlisten_port = 1\n", "admin"),
        (
            "url = \"http://127.0.0.1:7001\"",
            "url = \"ftp://x\"",
            "upstreams.officer.url",
        ),
    ];
    for (from, to, key) in cases {
        let bad = dir.path().join("bad.toml");
        std::fs::write(
            &bad,
            config_text("http://127.0.0.1:7001", "").replace(from, to),
        )
        .unwrap();
        let out = run_check(&bad);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{to}: {stderr}");
        let line = stderr.lines().next().unwrap_or_default();
        assert!(
            line.starts_with(&format!("{}: {key}", bad.display())),
            "{line}"
        );
    }

    // Several problems: one line each.
    let bad = dir.path().join("many.toml");
    std::fs::write(
        &bad,
        "[upstreams.officer]\nurl = \"x\"\n[profiles]\nmax_request_ids = 0\n[coalescing]\nmax_batch = 0\n",
    )
    .unwrap();
    let out = run_check(&bad);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(stderr.lines().count(), 3, "{stderr}");

    // The shipped example config is valid (deadlines raised: see
    // shipped_config_with_roomy_deadlines).
    let shipped = shipped_config_with_roomy_deadlines(dir.path());
    check_ok(&shipped);
}
