//! The policy author's loop through the real binary: `plugin new` from an
//! empty folder, `cargo test` in the crate it made (host imports stood in
//! natively), `plugin build`, then `plugin run` on a feed or an event, for
//! both worlds and for a crate made inside a plugins workspace; and
//! `plugin run`'s refusals (missing file, core module, wrong world, bad
//! limits) and failed calls (a trap), each one line and exit 1.
//!
//! The guest builds fetch crates.io dependencies (wit-bindgen, serde_json)
//! and share one target directory, `target/plugin-template`, so that reruns
//! are quick; they take turns (`BUILDS`) instead of waiting on cargo's lock.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use serde_json::{json, Value};
use support::{repo_root, wasm};

/// One guest build at a time.
static BUILDS: Mutex<()> = Mutex::new(());

fn target_dir() -> PathBuf {
    repo_root().join("target/plugin-template")
}

/// `profile-edge ARGS` in `dir`, guest builds aimed at the shared target dir.
fn edge(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_profile-edge"))
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target_dir())
        .output()
        .expect("run profile-edge")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn ok(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Exit 1 with exactly one line on stderr; returns it.
fn refused(out: &Output, what: &str) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: stdout {} stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{what}: one line: {err}");
    assert!(err.starts_with("profile-edge plugin: "), "{what}: {err}");
    err.trim().to_string()
}

/// `cargo test` in a generated crate: the guest-side test story.
fn cargo_test(crate_dir: &Path) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .arg("test")
        .current_dir(crate_dir)
        .env("CARGO_TARGET_DIR", target_dir().join("native"))
        .output()
        .expect("run cargo test");
    ok(&out, "cargo test in the generated crate");
    let stderr = text(&out.stderr);
    assert!(
        !stderr.contains("warning:"),
        "the template compiles without warnings:\n{stderr}"
    );
    // The summary goes to stdout.
    text(&out.stdout)
}

/// `plugin build DIR`: the one component it printed.
fn build(cwd: &Path, dir: &str, file_name: &str) -> PathBuf {
    let out = ok(&edge(cwd, &["plugin", "build", dir]), "plugin build");
    let built: Vec<&str> = out.lines().collect();
    let wasm = built
        .iter()
        .find(|l| l.ends_with(&format!("/{file_name}")))
        .unwrap_or_else(|| panic!("{file_name} not among {built:?}"));
    let wasm = PathBuf::from(wasm);
    assert!(wasm.is_file(), "{}", wasm.display());
    wasm
}

fn run_json(cwd: &Path, wasm: &Path, extra: &[&str]) -> (Output, Value) {
    let mut args = vec![
        "plugin",
        "run",
        wasm.to_str().unwrap(),
        "--json",
        // Room for a busy machine: what is under test is the output.
        "--deadline",
        "1s",
    ];
    args.extend_from_slice(extra);
    let out = edge(cwd, &args);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "--json output is not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    });
    (out, v)
}

fn user(i: usize) -> String {
    profile_edge::testkit::user_id(i)
}

#[test]
fn an_enrichment_policy_from_an_empty_folder_to_a_run_on_a_feed() {
    let _turn = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let made = ok(
        &edge(cwd, &["plugin", "new", "my-feed", "--world", "enrich"]),
        "plugin new",
    );
    assert!(made.contains("created"), "{made}");
    let krate = cwd.join("my-feed");
    for f in [
        "Cargo.toml",
        "src/lib.rs",
        "src/host.rs",
        "wit/policy.wit",
        "README.md",
        ".gitignore",
    ] {
        assert!(krate.join(f).is_file(), "{f} missing; made:\n{made}");
    }
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    assert!(
        manifest.contains("[workspace]") && manifest.contains("[profile.release]"),
        "{manifest}"
    );

    let tests = cargo_test(&krate);
    assert!(tests.contains("test result: ok"), "{tests}");

    let wasm = build(cwd, "my-feed", "my_feed.wasm");

    let feed = json!({"posts": [
        {"id": "p1", "userId": user(1), "text": "hello"},
        {"id": "p2", "userId": user(2)},
        {"id": "p3", "userId": user(1)},
    ]});
    std::fs::write(cwd.join("feed.json"), feed.to_string()).unwrap();
    let profiles = json!({"users": [
        {"id": user(1), "displayName": "Ada", "avatarUrl": "https://cdn.example.com/a.png", "location": "Oslo"},
    ]});
    std::fs::write(cwd.join("profiles.json"), profiles.to_string()).unwrap();

    let (out, v) = run_json(
        cwd,
        &wasm,
        &["--body", "feed.json", "--profiles", "profiles.json"],
    );
    assert!(out.status.success(), "{v}");
    assert_eq!(v["world"], "enrich-policy");
    assert_eq!(v["ok"], true);
    assert_eq!(v["ids"], json!([user(1), user(2)]));
    let outcomes: Vec<&Value> = v["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["outcome"])
        .collect();
    assert_eq!(outcomes, [&json!("ok"), &json!("ok")], "{v}");
    let posts = v["output"]["posts"]
        .as_array()
        .expect("posts in the output");
    assert_eq!(posts[0]["userSnapshot"]["displayName"], "Ada");
    assert_eq!(posts[0]["userSnapshot"]["id"], user(1));
    assert_eq!(posts[0]["text"], "hello", "the rest of the post is kept");
    assert_eq!(posts[1]["userSnapshot"], Value::Null, "unknown author");
    assert_eq!(
        posts[2]["userSnapshot"]["avatarUrl"],
        "https://cdn.example.com/a.png"
    );
    // The policy logged through host::log, in the enrich call.
    let enrich_logs = v["calls"][1]["logs"].as_array().unwrap();
    assert!(
        enrich_logs.iter().any(|l| l["message"]
            .as_str()
            .unwrap()
            .contains("1 post(s) by unknown authors")),
        "{v}"
    );

    // Its setting comes from --plugin-config, as from a [plugins.NAME] config table.
    let (_, v) = run_json(
        cwd,
        &wasm,
        &[
            "--body",
            "feed.json",
            "--plugin-config",
            r#"{"target":"author"}"#,
        ],
    );
    assert_eq!(v["ok"], true, "{v}");
    let post = &v["output"]["posts"][0];
    assert!(post.get("userSnapshot").is_none(), "{v}");
    assert!(
        post["author"]["displayName"].is_string(),
        "sample profile: {v}"
    );

    // The text report, on the built-in sample.
    let report = ok(
        &edge(
            cwd,
            &["plugin", "run", wasm.to_str().unwrap(), "--deadline", "1s"],
        ),
        "plugin run",
    );
    for want in [
        "enrich-policy",
        "the built-in sample feed",
        "needed-ids: ok",
        "enrich: ok",
        "\"userSnapshot\"",
        "result: ok",
    ] {
        assert!(report.contains(want), "{want:?} in:\n{report}");
    }
}

#[test]
fn an_invalidation_policy_from_an_empty_folder_to_a_run_on_an_event() {
    let _turn = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    ok(
        &edge(
            cwd,
            &["plugin", "new", "my-events", "--world", "invalidate"],
        ),
        "plugin new",
    );
    let krate = cwd.join("my-events");
    let tests = cargo_test(&krate);
    assert!(tests.contains("test result: ok"), "{tests}");
    let wasm = build(cwd, "my-events", "my_events.wasm");

    let event = json!({"type": "profile-deleted", "userId": user(7)});
    std::fs::write(cwd.join("event.json"), event.to_string()).unwrap();
    let (out, v) = run_json(cwd, &wasm, &["--event", "event.json"]);
    assert!(out.status.success(), "{v}");
    assert_eq!(v["world"], "invalidate-policy");
    assert_eq!(
        v["actions"],
        json!([
            {"action": "invalidate", "id": user(7)},
            {"action": "refresh-post-snapshots", "id": user(7)},
        ])
    );
    assert_eq!(v["calls"][0]["call"], "on-event");
    assert_eq!(v["calls"][0]["outcome"], "ok");

    // An event it ignores is logged, with no actions.
    std::fs::write(
        cwd.join("other.json"),
        r#"{"type":"user-followed","userId":"x"}"#,
    )
    .unwrap();
    let (_, v) = run_json(cwd, &wasm, &["--event", "other.json"]);
    assert_eq!(v["actions"], json!([]));
    let logs = v["calls"][0]["logs"].as_array().unwrap();
    assert!(
        logs.iter()
            .any(|l| l["message"].as_str().unwrap().contains("user-followed")),
        "{v}"
    );

    // An enrichment input for an invalidation policy is refused, not ignored.
    let e = refused(
        &edge(
            cwd,
            &[
                "plugin",
                "run",
                wasm.to_str().unwrap(),
                "--body",
                "event.json",
            ],
        ),
        "--body to an invalidation policy",
    );
    assert!(
        e.contains("--body") && e.contains("invalidate-policy"),
        "{e}"
    );
}

#[test]
fn a_policy_made_inside_a_plugins_workspace_builds_as_a_member() {
    let _turn = BUILDS.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let ws = tmp.path().join("plugins");
    std::fs::create_dir_all(ws.join("wit")).unwrap();
    std::fs::copy(
        repo_root().join("plugins/wit/policy.wit"),
        ws.join("wit/policy.wit"),
    )
    .unwrap();
    // Shaped like this repository's plugins/Cargo.toml.
    std::fs::write(
        ws.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"[!.]*\"]\nexclude = [\"wit\", \"target\"]\n\n\
         [workspace.package]\nversion = \"0.3.0\"\nedition = \"2021\"\nlicense = \"Apache-2.0\"\npublish = false\n\n\
         [workspace.dependencies]\nwit-bindgen = \"0.57\"\nserde_json = \"1\"\n\n\
         [profile.release]\nlto = true\npanic = \"abort\"\n",
    )
    .unwrap();
    let made = ok(
        &edge(
            tmp.path(),
            &[
                "plugin", "new", "ws-feed", "--world", "enrich", "--dir", "plugins",
            ],
        ),
        "plugin new in a workspace",
    );
    assert!(!made.contains("note:"), "members covers it: {made}");
    let krate = ws.join("ws-feed");
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    assert!(manifest.contains("version.workspace = true"), "{manifest}");
    assert!(
        manifest.contains("wit-bindgen.workspace = true"),
        "{manifest}"
    );
    assert!(!manifest.contains("[workspace]"), "{manifest}");
    assert!(!krate.join("wit").exists(), "binds to the workspace's wit/");
    let lib = std::fs::read_to_string(krate.join("src/lib.rs")).unwrap();
    assert!(lib.contains(r#"path: "../wit""#), "{lib}");

    // Built from the workspace root: the crate is a member without an edit.
    let wasm = build(tmp.path(), "plugins", "ws_feed.wasm");
    let (out, v) = run_json(tmp.path(), &wasm, &[]);
    assert!(out.status.success(), "{v}");
    assert!(
        v["output"]["posts"][0]["userSnapshot"]["displayName"].is_string(),
        "{v}"
    );
}

#[test]
fn plugin_new_refuses_bad_names_and_folders_in_use() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let e = refused(
        &edge(cwd, &["plugin", "new", "my feed", "--world", "enrich"]),
        "a name with a space",
    );
    assert!(e.contains("not a valid crate name"), "{e}");
    std::fs::create_dir_all(cwd.join("taken")).unwrap();
    std::fs::write(cwd.join("taken/notes.txt"), "mine").unwrap();
    let e = refused(
        &edge(cwd, &["plugin", "new", "taken", "--world", "invalidate"]),
        "a non-empty folder",
    );
    assert!(e.contains("already exists and is not empty"), "{e}");
    assert_eq!(
        std::fs::read_to_string(cwd.join("taken/notes.txt")).unwrap(),
        "mine"
    );
    let e = refused(
        &edge(cwd, &["plugin", "build", "nowhere"]),
        "build without a crate",
    );
    assert!(e.contains("no Cargo.toml"), "{e}");

    // A workspace that lists its members by name: the crate is made, and
    // the user is told to list it.
    let ws = cwd.join("listed");
    std::fs::create_dir_all(ws.join("wit")).unwrap();
    std::fs::copy(
        repo_root().join("plugins/wit/policy.wit"),
        ws.join("wit/policy.wit"),
    )
    .unwrap();
    std::fs::write(
        ws.join("Cargo.toml"),
        "[workspace]\nresolver = \"2\"\nmembers = [\"old-one\"]\n",
    )
    .unwrap();
    let made = ok(
        &edge(
            cwd,
            &[
                "plugin", "new", "new-one", "--world", "enrich", "--dir", "listed",
            ],
        ),
        "plugin new in a listed workspace",
    );
    assert!(
        made.contains("note: add \"new-one\" to `members`"),
        "{made}"
    );
    let manifest = std::fs::read_to_string(ws.join("new-one/Cargo.toml")).unwrap();
    // Nothing to inherit there: the keys are its own.
    assert!(manifest.contains("version = \"0.1.0\""), "{manifest}");
    assert!(manifest.contains("wit-bindgen = \"0.57\""), "{manifest}");
}

#[test]
fn plugin_run_on_a_shipped_policy_uses_the_built_in_samples() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, v) = run_json(tmp.path(), &wasm("enrich_posts.wasm"), &[]);
    assert!(out.status.success(), "{v}");
    let ids = v["ids"].as_array().unwrap();
    assert_eq!(ids.len(), 2, "{v}");
    for post in v["output"]["posts"].as_array().unwrap() {
        assert!(post["userSnapshot"]["displayName"].is_string(), "{v}");
    }
    // The body from stdin.
    let mut child = Command::new(env!("CARGO_BIN_EXE_profile-edge"))
        .args(["plugin", "run", "--json", "--deadline", "1s", "--body", "-"])
        .arg(wasm("enrich_posts.wasm"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let body = json!({"id": "p9", "userId": user(9)}).to_string();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["body"], "stdin", "{v}");
    assert_eq!(
        v["output"]["userSnapshot"]["id"],
        user(9),
        "a single post: {v}"
    );

    let (out, v) = run_json(tmp.path(), &wasm("invalidate_profile.wasm"), &[]);
    assert!(out.status.success(), "{v}");
    assert_eq!(
        v["actions"][0]["action"], "refresh",
        "sample profile-updated: {v}"
    );
}

#[test]
fn plugin_run_refuses_what_the_proxy_would_refuse_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    let cwd = tmp.path();
    let run = |args: &[&str]| {
        let mut all = vec!["plugin", "run"];
        all.extend_from_slice(args);
        edge(cwd, &all)
    };

    let e = refused(&run(&["missing.wasm"]), "a missing file");
    assert!(
        e.contains("missing.wasm") && e.contains("No such file"),
        "{e}"
    );

    std::fs::write(cwd.join("core.wasm"), b"\0asm\x01\0\0\0").unwrap();
    let e = refused(&run(&["core.wasm"]), "a core module");
    assert!(
        e.contains("core WebAssembly module, not a component"),
        "{e}"
    );

    let invalidate = wasm("invalidate_profile.wasm");
    let e = refused(
        &run(&[invalidate.to_str().unwrap(), "--world", "enrich"]),
        "the wrong world",
    );
    assert!(e.contains("does not implement world enrich-policy"), "{e}");

    let other_version = wasm("testing/wrong_version.wasm");
    let e = refused(
        &run(&[other_version.to_str().unwrap()]),
        "another WIT version",
    );
    assert!(
        e.contains("is built for") && e.contains("rebuild it"),
        "{e}"
    );

    let enrich = wasm("enrich_posts.wasm");
    let e = refused(
        &run(&[enrich.to_str().unwrap(), "--deadline", "2s"]),
        "deadline",
    );
    assert_eq!(e, "profile-edge plugin: --deadline: must be at most 1s");
    let e = refused(
        &run(&[enrich.to_str().unwrap(), "--memory-limit", "1KiB"]),
        "memory",
    );
    assert!(
        e.starts_with("profile-edge plugin: --memory-limit: ")
            && e.contains("must be at least 64KiB"),
        "{e}"
    );
    let e = refused(
        &run(&[enrich.to_str().unwrap(), "--plugin-config", "[1]"]),
        "config",
    );
    assert!(e.contains("--plugin-config: must be a JSON object"), "{e}");
    let e = refused(
        &run(&[enrich.to_str().unwrap(), "--event", "x.json"]),
        "event",
    );
    assert!(e.contains("--event") && e.contains("enrich-policy"), "{e}");
}

#[test]
fn plugin_run_reports_a_trap_and_exits_1() {
    let tmp = tempfile::tempdir().unwrap();
    let hostile = wasm("testing/hostile_enrich.wasm");
    let (out, v) = run_json(
        tmp.path(),
        &hostile,
        &["--plugin-config", r#"{"mode":"trap"}"#],
    );
    assert_eq!(out.status.code(), Some(1), "{v}");
    assert_eq!(v["ok"], false);
    let calls = v["calls"].as_array().unwrap();
    assert_eq!(
        calls.len(),
        1,
        "enrich is not called after needed-ids failed: {v}"
    );
    assert_eq!(calls[0]["outcome"], "trap");
    let reason = calls[0]["error"].as_str().unwrap();
    assert!(!reason.contains('\n'), "one line: {reason}");
    assert!(
        reason.contains("hostile policy traps on purpose"),
        "the panic message says why: {reason}"
    );

    // The text report says the same, on one line per call.
    let out = edge(
        tmp.path(),
        &[
            "plugin",
            "run",
            hostile.to_str().unwrap(),
            "--plugin-config",
            r#"{"mode":"trap"}"#,
            "--deadline",
            "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let report = text(&out.stdout);
    let line = report
        .lines()
        .find(|l| l.starts_with("needed-ids: trap"))
        .unwrap_or_else(|| panic!("no trap line in:\n{report}"));
    assert!(line.contains("policy trapped"), "{line}");
    assert!(report.contains("result: 1 call(s) failed"), "{report}");
}
