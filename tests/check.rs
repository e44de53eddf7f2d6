//! `profile-edge check` on the mistakes platform teams make, through the
//! built binary: each gives exit code 1 and exactly one line naming its
//! key (with the fix when there is a usual one), and a file with several
//! mistakes gets all of them in one run. Plugins are real `.wasm` files
//! built from plugins/ (`bash plugins/build.sh`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

/// What one `check` run printed.
struct Run {
    code: Option<i32>,
    /// stderr, one problem a line.
    problems: Vec<String>,
    stdout: String,
}

/// Writes `text` to `edge.toml` in `dir` and runs `check` on it with `dir`
/// as the working directory.
fn check_in(dir: &Path, text: &str) -> Run {
    let path = dir.join("edge.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(bin())
        .current_dir(dir)
        .args(["check", "--config", "edge.toml"])
        .output()
        .expect("running profile-edge check");
    Run {
        code: out.status.code(),
        problems: String::from_utf8_lossy(&out.stderr)
            .lines()
            .map(str::to_string)
            .collect(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
    }
}

/// `check` on a minimal valid config plus `extra`.
fn check(extra: &str) -> Run {
    let dir = tempfile::tempdir().unwrap();
    check_in(dir.path(), &config_text("http://127.0.0.1:9", extra))
}

/// Asserts the run refused the file with exactly one line, about `key`,
/// containing every one of `parts`; answers the line.
fn one_problem(run: &Run, key: &str, parts: &[&str]) -> String {
    assert_eq!(run.code, Some(1), "not refused: {:?}", run.problems);
    assert_eq!(run.problems.len(), 1, "not one line: {:#?}", run.problems);
    let line = &run.problems[0];
    assert!(
        line.starts_with(&format!("edge.toml: {key}: ")),
        "{key} not named: {line}"
    );
    for part in parts {
        assert!(line.contains(part), "{part:?} not in: {line}");
    }
    line.clone()
}

/// A `[plugins.feed]` section for the shipped enrichment policy, plus `extra`.
fn feed(extra: &str) -> String {
    format!(
        "[plugins.feed]\npath = {:?}\n{extra}",
        wasm("enrich_posts.wasm")
    )
}

fn route(prefix: &str) -> String {
    format!("[[enrich]]\npath_prefix = {prefix:?}\nupstream = \"officer\"\nplugin = \"feed\"\n")
}

#[test]
fn plugin_limits_over_the_documented_ones_are_refused() {
    one_problem(
        &check(&feed("deadline = \"2s\"\n")),
        "plugins.feed.deadline",
        &["at most 1s"],
    );
    one_problem(
        &check(&feed("memory_limit = \"1GiB\"\n")),
        "plugins.feed.memory_limit",
        &["at most 128MiB"],
    );
}

#[test]
fn durations_and_sizes_given_as_numbers_get_the_fix() {
    one_problem(
        &check(&feed("deadline = 10\n")),
        "plugins.feed.deadline",
        &["write a string such as \"10ms\"", "(line "],
    );
    one_problem(
        &check(&feed("memory_limit = 32\n")),
        "plugins.feed.memory_limit",
        &["is 32 bytes", "\"32MiB\""],
    );
}

#[test]
fn a_table_where_an_array_of_tables_belongs_and_the_reverse() {
    let enrich = format!(
        "{}[enrich]\npath_prefix = \"/api/posts\"\nupstream = \"officer\"\nplugin = \"feed\"\n",
        feed("deadline = \"1s\"\n")
    );
    one_problem(
        &check(&enrich),
        "enrich",
        &["write [[enrich]] (an array of tables), not [enrich]"],
    );
    one_problem(
        &check(&format!(
            "[[plugins.x]]\npath = {:?}\n",
            wasm("enrich_posts.wasm")
        )),
        "plugins.x",
        &["write [plugins.x] (a table), not [[plugins.x]]"],
    );
    // [[server]] after the config's own [server] would be a syntax error
    // (a table redefined), so it gets a file of its own.
    let dir = tempfile::tempdir().unwrap();
    let text = "[[server]]\nlisten = \"127.0.0.1:0\"\n\n[upstreams.officer]\nurl = \"http://127.0.0.1:9\"\n";
    one_problem(
        &check_in(dir.path(), text),
        "server",
        &["write [server] (a table), not [[server]]"],
    );
    one_problem(
        &check("[change_streams]\nname = \"users\"\n"),
        "change_streams",
        &["write [[change_streams]] (an array of tables), not [change_streams]"],
    );
}

#[test]
fn an_unknown_key_gets_the_near_miss() {
    one_problem(
        &check(&feed("dedline = \"5ms\"\n")),
        "plugins.feed.dedline",
        &["unknown key; did you mean `deadline`?"],
    );
}

#[test]
fn a_missing_plugin_file_names_where_it_was_looked_for() {
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path().canonicalize().unwrap();
    let text = config_text(
        "http://127.0.0.1:9",
        "[plugins.feed]\npath = \"nope.wasm\"\n",
    );
    let run = check_in(&dir, &text);
    one_problem(
        &run,
        "plugins.feed.path",
        &[
            &format!("resolved to {}", dir.join("nope.wasm").display()),
            &format!("relative to the working directory {}", dir.display()),
        ],
    );
}

#[test]
fn garbage_bytes_as_a_plugin_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"this is not wasm at all, just some text\n").unwrap();
    let run = check(&format!(
        "[plugins.junk]\npath = {junk:?}\ndeadline = \"1s\"\n"
    ));
    one_problem(
        &run,
        "plugins.junk.path",
        &["is not a valid WebAssembly component: not a WebAssembly file (does not start with \\0asm)"],
    );
    // Bytes that start like wasm but break off: still one line.
    std::fs::write(&junk, b"\0asm\x0d\0\x01\0\x01\x02").unwrap();
    let run = check(&format!(
        "[plugins.junk]\npath = {junk:?}\ndeadline = \"1s\"\n"
    ));
    one_problem(
        &run,
        "plugins.junk.path",
        &["not a valid WebAssembly component"],
    );
}

#[test]
fn a_plugin_built_for_another_wit_version_is_one_line() {
    let run = check(&format!(
        "[plugins.old]\npath = {:?}\ndeadline = \"1s\"\n",
        wasm("testing/wrong_version.wasm")
    ));
    one_problem(&run, "plugins.old.path", &["is built for", "rebuild it"]);
}

#[test]
fn a_toml_syntax_error_is_one_line_with_line_and_column() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[upstreams.officer]\nurl = \"http://127.0.0.1:9\"\n[plugins.feed\npath = \"x\"\n";
    one_problem(
        &check_in(dir.path(), text),
        "(syntax)",
        &["invalid table header, expected `.` or `]` (line 3, column 14)"],
    );
}

#[test]
fn routes_that_can_never_match_are_refused() {
    let base = feed("deadline = \"1s\"\n");
    one_problem(
        &check(&format!(
            "{base}{}{}",
            route("/api/posts"),
            route("/api/posts")
        )),
        "enrich[1].path_prefix",
        &["is also enrich[0].path_prefix"],
    );
    one_problem(
        &check(&format!("{base}{}", route("/api/users"))),
        "enrich[0].path_prefix",
        &["covers profiles.user_path"],
    );
    one_problem(
        &check(&format!(
            "{base}{}{}",
            route("/api/posts"),
            route("/api/posts/feed")
        )),
        "enrich[1].path_prefix",
        &[
            "shadowed by enrich[0].path_prefix \"/api/posts\"",
            "put the longer prefix first",
        ],
    );
    one_problem(
        &check(&format!(
            "{base}{}[notifications]\npath = \"/api/posts/stream\"\n",
            route("/api/posts")
        )),
        "notifications.path",
        &["enrich[0].path_prefix"],
    );
}

#[test]
fn every_mistake_in_one_file_is_reported_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"junk").unwrap();
    // server.listen's type error used to hide everything after it.
    let text = format!(
        "[server]\nlisten = 3\n\n\
         [upstreams.officer]\nurl = \"http://127.0.0.1:9\"\ntimout = \"1s\"\n\n\
         [coalescing]\nmax_batch = 0\n\n\
         [plugins.feed]\npath = {:?}\ndeadline = 10\n\n\
         [plugins.junk]\npath = {junk:?}\ndeadline = \"1s\"\n\n\
         [plugins.good]\npath = {:?}\ndeadline = \"1s\"\n\n\
         [enrich]\npath_prefix = \"/api/posts\"\nupstream = \"officer\"\nplugin = \"good\"\n",
        wasm("enrich_posts.wasm"),
        wasm("enrich_posts.wasm"),
    );
    let run = check_in(dir.path(), &text);
    assert_eq!(run.code, Some(1));
    let expected = [
        ("server.listen", "invalid type: integer `3`"),
        ("upstreams.officer.timout", "did you mean `timeout`?"),
        ("plugins.feed.deadline", "\"10ms\""),
        ("enrich", "write [[enrich]]"),
        ("coalescing.max_batch", ""),
        ("plugins.junk.path", "not a WebAssembly file"),
    ];
    assert_eq!(
        run.problems.len(),
        expected.len(),
        "one line per problem: {:#?}",
        run.problems
    );
    for (key, part) in expected {
        let prefix = format!("edge.toml: {key}: ");
        assert_eq!(
            run.problems
                .iter()
                .filter(|l| l.starts_with(&prefix) && l.contains(part))
                .count(),
            1,
            "{key} ({part}) not reported once: {:#?}",
            run.problems
        );
    }
    // The sound plugin is still checked, and said to be fine.
    assert!(
        run.stdout
            .contains("edge.toml: plugins.good: ok (enrich-policy)"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("edge.toml: ok"), "{}", run.stdout);
}

#[test]
fn a_valid_file_still_says_ok() {
    let run = check(&format!(
        "{}{}",
        feed("deadline = \"1s\"\n"),
        route("/api/posts")
    ));
    assert_eq!(run.code, Some(0), "{:#?}", run.problems);
    assert!(run.problems.is_empty(), "{:#?}", run.problems);
    assert!(
        run.stdout
            .contains("edge.toml: plugins.feed: ok (enrich-policy)")
            && run.stdout.contains("edge.toml: ok"),
        "{}",
        run.stdout
    );
}

#[test]
fn redis_cluster_and_tls_keys_are_checked_without_connecting() {
    one_problem(
        &check("[tiers.redis]\nmode = \"cluster\"\n"),
        "tiers.redis.nodes",
        &["at least one seed node"],
    );
    one_problem(
        &check("[tiers.redis]\nmode = \"cluster\"\nnodes = [\"redis://127.0.0.1:7000\", \"127.0.0.1:7001\"]\n"),
        "tiers.redis.nodes[1]",
        &["must start with redis://"],
    );
    one_problem(
        &check("[tiers.redis]\nmode = \"sharded\"\nurl = \"redis://127.0.0.1:6379\"\n"),
        "tiers.redis.mode",
        &["sharded"],
    );
    one_problem(
        &check("[tiers.redis]\nurl = \"rediss://127.0.0.1:6380\"\ntls_ca_file = \"certs/redis-ca.pem\"\n"),
        "tiers.redis.tls_ca_file",
        &["certs/redis-ca.pem"],
    );
    one_problem(
        &check("[tiers.redis]\nurl = \"rediss://app@127.0.0.1:6380\"\npassword_env = \"PE_CHECK_SURELY_UNSET\"\n"),
        "tiers.redis.password_env",
        &["PE_CHECK_SURELY_UNSET is not set"],
    );
    // A password written into the URL is never echoed back.
    let run = check("[tiers.redis]\nurl = \"http://app:hunter2@127.0.0.1:6380\"\n");
    let line = one_problem(&run, "tiers.redis.url", &["app:***@"]);
    assert!(!line.contains("hunter2"), "{line}");
    one_problem(
        &check("[tiers.redis]\nmode = \"cluster\"\nnodes = [\"redis://127.0.0.1:7000\"]\n[backplane]\ntls_ca_file = \"ca.pem\"\n"),
        "backplane.tls_ca_file",
        &["backplane.url of its own"],
    );
    // A valid cluster section passes, with nothing listening.
    let ok = check("[tiers.redis]\nmode = \"cluster\"\nnodes = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001\"]\n[backplane]\n");
    assert_eq!(ok.code, Some(0), "{:?}", ok.problems);
}
