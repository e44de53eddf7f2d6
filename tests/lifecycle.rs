//! The binary's lifecycle: SIGTERM drains in-flight requests, and
//! `profile-edge demo` starts on a bare machine with a working first command.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

#[tokio::test]
async fn logs_to_a_file_carry_no_colour_codes() {
    let origin = Origin::start("officer").await;
    let dir = tempfile::tempdir().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.path().join("edge.toml");
    let text = config_text_at(&origin.url(), "127.0.0.1:0", &admin.to_string(), "");
    std::fs::write(&path, text).unwrap();
    let log = dir.path().join("stderr.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut proc = spawn_binary_logging_to(&path, admin, Stdio::from(file)).await;
    let pid = proc.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = proc.0.wait().unwrap();
    assert!(exit.success(), "exit status {exit}");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("profile-edge listening"), "log: {text}");
    assert!(text.contains("stopped"), "log: {text}");
    assert!(
        !text.contains('\x1b'),
        "ANSI escape codes in a log file: {text:?}"
    );
}

#[tokio::test]
async fn sigterm_lets_an_in_flight_slow_request_finish() {
    let origin = Origin::start("officer").await;
    let dir = tempfile::tempdir().unwrap();
    let main: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let path = dir.path().join("edge.toml");
    // The upstream timeout and the drain (`shutdown_timeout`, 30 s by
    // default) have room for the held request on a loaded machine: only the
    // drain's behaviour is under test.
    let text = config_text_at(&origin.url(), &main.to_string(), &admin.to_string(), "")
        .replace("timeout = \"10s\"", "timeout = \"30s\"");
    std::fs::write(&path, text).unwrap();
    let mut proc = spawn_binary(&path, admin).await;

    let c = client();
    // The origin holds this request until the test opens its gate, so it
    // is in flight when the signal lands, however slow the machine.
    let url = format!("http://{main}/gate");
    let in_flight = tokio::spawn(async move { get(&c, &url).await });
    // Let the request reach the origin before the signal.
    let start = Instant::now();
    while origin.calls() == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "request never reached the origin"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let pid = proc.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    // The proxy is draining once /readyz says 503; only then does the
    // origin answer the held request.
    let admin_client = client();
    let start = Instant::now();
    loop {
        let (status, _, _) = get(&admin_client, &format!("http://{admin}/readyz")).await;
        if status == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "/readyz never turned 503 after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    origin.open_gate();

    let (status, _, body) = in_flight.await.unwrap();
    assert_eq!(status, StatusCode::OK, "in-flight request was cut off");
    assert_eq!(&body[..], b"gated");

    // The process then exits by itself, cleanly.
    let start = Instant::now();
    let exit = loop {
        if let Some(s) = proc.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no exit after the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit status {exit}");
    // And no longer accepts connections.
    assert!(tokio::net::TcpStream::connect(main).await.is_err());
}

#[tokio::test]
async fn demo_starts_and_its_first_curl_command_answers_200() {
    // Run from an empty directory: the demo must need no files.
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(bin())
        .current_dir(dir.path())
        .args([
            "demo",
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "127.0.0.1:0",
            "--users",
            "2000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let _guard = Proc(child);
    let first_curl = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.trim().strip_prefix("curl ").map(str::to_string))
    })
    .await
    .unwrap()
    .expect("the demo printed no curl command");
    let url = first_curl
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("no URL in the first curl command")
        .to_string();
    let c = client();
    let (status, _, body) = get(&c, &url).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["id"].is_string(), "{v}");
}

/// `demo --config FILE` runs FILE (its upstreams pointed at the simulator),
/// and `--plugin FILE.wasm` serves that policy on the enrich routes.
#[tokio::test]
async fn the_demo_runs_the_config_and_the_policy_it_is_given() {
    use profile_edge::demo::{Demo, DemoOptions};
    let dist = repo_root().join("plugins/dist");
    let dir = tempfile::tempdir().unwrap();
    // The shipped demo config with its own policy swapped for one with
    // settings: posts get `author` instead of `userSnapshot`.
    let text = std::fs::read_to_string(repo_root().join("config/demo.toml"))
        .unwrap()
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9090", "127.0.0.1:0")
        .replace(
            "path = \"plugins/dist/enrich_posts.wasm\"",
            &format!(
                "path = \"{}\"\nconfig = {{ target = \"author\" }}",
                dist.join("enrich_fields.wasm").display()
            ),
        )
        .replace(
            "\"plugins/dist/invalidate_profile.wasm\"",
            &format!("\"{}\"", dist.join("invalidate_profile.wasm").display()),
        )
        .replace("deadline = \"10ms\"", "deadline = \"1s\"");
    let config = dir.path().join("my-demo.toml");
    std::fs::write(&config, text).unwrap();
    let opts = DemoOptions {
        users: 50,
        latency: Duration::ZERO,
        config: Some(config.clone()),
        ..DemoOptions::default()
    };
    let c = client();
    let first_post = |demo: &Demo| format!("http://{}/api/posts?limit=1", demo.app.main_addr());

    let demo = Demo::start(&opts).await.unwrap();
    let (status, _, body) = get(&c, &first_post(&demo)).await;
    assert_eq!(status, StatusCode::OK);
    let post = json(&body)["posts"][0].clone();
    assert!(post["author"].is_object(), "the config's policy: {post}");
    assert!(post.get("userSnapshot").is_none(), "{post}");
    demo.shutdown().await;

    // The same config, with the default policy given on the command line.
    let demo = Demo::start(&DemoOptions {
        plugin: Some(dist.join("enrich_posts.wasm")),
        ..opts.clone()
    })
    .await
    .unwrap();
    let (_, _, body) = get(&c, &first_post(&demo)).await;
    let post = json(&body)["posts"][0].clone();
    assert!(
        post["userSnapshot"].is_object(),
        "--plugin's policy: {post}"
    );
    demo.shutdown().await;

    // A config the demo cannot run is refused with the key named.
    std::fs::write(&config, "[coalescing]\nmax_batch = 0\n").unwrap();
    let err = Demo::start(&opts).await.err().expect("refused").to_string();
    assert!(err.contains("coalescing.max_batch"), "{err}");
}
