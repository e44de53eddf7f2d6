//! The commands the README shows, run as written: the demo (`cargo run
//! --release -- demo`, taken from the README itself), `profile-edge check`
//! on the shipped config, the policy micro-benchmark and `plugins/build.sh`.
//!
//! About running cargo from inside `cargo test`: cargo holds the lock on the
//! build directory only while it builds, and releases it before it runs the
//! test binaries (checked with cargo 1.95: a `cargo run` spawned by a running
//! test in the same target dir starts at once). So the commands below use the
//! same target dir as the suite, as a user's would, and do not deadlock; a
//! nested cargo only waits while some other cargo process builds there.
//! `tests/run.sh` builds the release binary and the example before the suite,
//! so that these commands compile nothing and take seconds; run alone on a
//! cold target dir, they first build it (the deadlines below leave room).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use http::StatusCode;
use support::*;

/// How long a README command may take, building included: a release build
/// of the proxy from scratch takes minutes on a small shared machine. Only
/// a safety net; the tests wait for what they need, not for a time.
const COMMAND_DEADLINE: Duration = Duration::from_secs(40 * 60);

/// The tests of this file that run cargo or `plugins/build.sh` take turns:
/// `plugins/build.sh` rewrites `plugins/dist/`, which the proxy embeds, and
/// a cargo command running meanwhile would see it changed and rebuild.
static REPO: Mutex<()> = Mutex::new(());

fn repo_lock() -> MutexGuard<'static, ()> {
    REPO.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).expect("reading README.md")
}

/// The lines of the first ```sh block after the line `heading`.
fn sh_block_after(readme: &str, heading: &str) -> Vec<String> {
    let mut lines = readme.lines().skip_while(|l| l.trim() != heading);
    assert!(lines.next().is_some(), "README.md has no line `{heading}`");
    let mut lines = lines.skip_while(|l| l.trim() != "```sh");
    assert!(
        lines.next().is_some(),
        "README.md has no ```sh block after `{heading}`"
    );
    lines
        .take_while(|l| l.trim() != "```")
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

/// Drops a trailing `# comment` from a shell line.
fn without_comment(line: &str) -> &str {
    line.split(" #").next().unwrap_or(line).trim()
}

/// A command started by `sh -c` in its own process group, from the
/// repository root, with its stdout lines and stderr collected by threads.
/// Dropping it kills the whole group (sh, cargo and what cargo runs).
struct Shell {
    child: Child,
    command: String,
    stdout: mpsc::Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Shell {
    fn start(command: &str) -> Shell {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .current_dir(repo_root())
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // What cargo sets for the test binary itself is not part of a user's
        // shell; the command gets the environment a user would have.
        for (key, _) in std::env::vars_os() {
            let Some(key) = key.to_str() else { continue };
            if key.starts_with("CARGO_PKG_")
                || key.starts_with("CARGO_BIN_EXE_")
                || matches!(
                    key,
                    "CARGO_MANIFEST_DIR"
                        | "CARGO_MANIFEST_PATH"
                        | "CARGO_CRATE_NAME"
                        | "CARGO_PRIMARY_PACKAGE"
                        | "CARGO_TARGET_TMPDIR"
                        | "RUST_LOG"
                )
            {
                cmd.env_remove(key);
            }
        }
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run `sh -c {command}`: {e}"));
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        let stderr_reader = std::thread::spawn(move || {
            let mut reader = BufReader::new(err);
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Shell {
            child,
            command: command.to_string(),
            stdout,
            stdout_seen: Vec::new(),
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// Kills the process group (sh, cargo and the program cargo runs).
    fn kill_group(&mut self) {
        // Only while the leader lives: then the group id is surely ours.
        if !matches!(self.child.try_wait(), Ok(None)) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Everything the command printed, once it has ended (or been killed):
    /// stderr read to its end.
    fn final_output(&mut self) -> String {
        self.kill_group();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        self.output()
    }

    /// Everything the command printed so far, for failure messages.
    fn output(&self) -> String {
        format!(
            "`{}`\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.command,
            self.stdout_seen.join("\n"),
            self.stderr.lock().unwrap()
        )
    }

    /// The next stdout line; `None` once stdout is closed (the command
    /// ended). Fails the test past the deadline.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(left) {
            Ok(line) => {
                self.stdout_seen.push(line.clone());
                Some(line)
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no result within {COMMAND_DEADLINE:?}:\n{}", self.output())
            }
        }
    }

    /// Reads stdout to its end and waits for the exit; fails the test,
    /// showing the output, unless the command succeeded.
    fn finish(mut self) -> String {
        let deadline = Instant::now() + COMMAND_DEADLINE;
        while self.next_line(deadline).is_some() {}
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "no exit within {COMMAND_DEADLINE:?}:\n{}",
                self.output()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(
            status.success(),
            "exited with {status}:\n{}",
            self.final_output()
        );
        self.stdout_seen.join("\n")
    }
}

impl Drop for Shell {
    fn drop(&mut self) {
        self.kill_group();
    }
}

#[test]
fn the_readme_demo_command_starts_and_its_first_curl_answers_200() {
    let readme = readme();
    let block = sh_block_after(&readme, "## The two commands");
    let demo = without_comment(&block[0]);
    assert!(
        demo.starts_with("cargo run") && demo.ends_with(" demo"),
        "the first command under `## The two commands` is not the demo: {demo}"
    );
    // The README's command as written, plus free ports (`--listen
    // 127.0.0.1:0` and `--admin 127.0.0.1:0`, which the README documents)
    // so that it never collides with a port in use on this machine or with
    // another test; the demo then prints its real addresses.
    let command = format!("{demo} --listen 127.0.0.1:0 --admin 127.0.0.1:0");
    let _turn = repo_lock();
    let mut shell = Shell::start(&command);
    let deadline = Instant::now() + COMMAND_DEADLINE;
    let first_curl = loop {
        match shell.next_line(deadline) {
            Some(line) => {
                if let Some(curl) = line.trim().strip_prefix("curl ") {
                    break curl.to_string();
                }
            }
            None => panic!(
                "the demo ended before printing its curl commands:\n{}",
                shell.final_output()
            ),
        }
    };
    let url = first_curl
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in the first curl command: curl {first_curl}"))
        .trim_matches('\'')
        .to_string();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (status, _, body) = rt.block_on(async { get(&client(), &url).await });
    assert_eq!(
        status,
        StatusCode::OK,
        "curl {first_curl}: {}\n{}",
        String::from_utf8_lossy(&body),
        shell.output()
    );
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(v["id"].is_string(), "{v}");
    // Dropping the shell kills the demo's process group.
}

/// `profile-edge ...` lines of the README's command-line block, run with the
/// binary cargo built for this test.
#[test]
fn the_readme_command_line_checks_the_shipped_config() {
    let readme = readme();
    let block = sh_block_after(&readme, "## Command line");
    let check = block
        .iter()
        .map(|l| without_comment(l))
        .find(|l| l.starts_with("profile-edge check"))
        .expect("no `profile-edge check` line in the command-line block");
    // The README's example names `my.toml`; the shipped config is the file
    // every user starts from (a copy with roomy plugin deadlines: see
    // shipped_config_with_roomy_deadlines).
    let dir = tempfile::tempdir().unwrap();
    let shipped = shipped_config_with_roomy_deadlines(dir.path());
    let shipped = shipped.to_str().unwrap();
    let args: Vec<String> = check
        .split_whitespace()
        .skip(1)
        .map(|a| {
            if a.ends_with(".toml") {
                shipped.to_string()
            } else {
                a.to_string()
            }
        })
        .collect();
    let _turn = repo_lock();
    let out = Command::new(bin())
        .current_dir(repo_root())
        .args(&args)
        .output()
        .expect("running profile-edge check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "profile-edge {}:\n{stdout}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(&format!("{shipped}: ok")), "{stdout}");
    // `--help` and `--version` print and exit 0; an unknown flag exits 2.
    for (args, code) in [
        (&["--help"][..], 0),
        (&["--version"][..], 0),
        (&["--no-such-flag"][..], 2),
    ] {
        let out = Command::new(bin()).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(code), "profile-edge {args:?}");
    }
}

#[test]
fn the_readme_policy_micro_benchmark_runs() {
    let readme = readme();
    let command = readme
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("cargo run") && l.contains("--example policy_cost"))
        .expect("README.md shows no `--example policy_cost` command");
    let _turn = repo_lock();
    let out = Shell::start(command).finish();
    // Timed through the real runtime: its line of figures, then the table.
    assert!(out.contains("enrich_posts.wasm: needed-ids"), "{out}");
    assert!(out.contains("| enrich_posts.wasm |"), "{out}");
}

/// The plugin build the README and `plugins/README.md` point to. It copies
/// the components into `plugins/dist/`; when they come out identical, their
/// old modification times are put back, so that cargo does not see the
/// files the proxy embeds as changed and rebuild it for nothing.
#[test]
fn the_readme_plugin_build_script_builds_the_components() {
    let readme = readme();
    assert!(
        readme.contains("plugins/build.sh"),
        "README.md no longer names plugins/build.sh"
    );
    let _turn = repo_lock();
    let dist = repo_root().join("plugins/dist");
    let saved = tempfile::tempdir().unwrap();
    let shipped = [
        "enrich_posts.wasm",
        "invalidate_profile.wasm",
        "enrich_fields.wasm",
    ];
    let testing = [
        "testing/hostile_enrich.wasm",
        "testing/hostile_invalidate.wasm",
        "testing/wrong_version.wasm",
        "testing/previous_wit.wasm",
    ];
    std::fs::create_dir_all(saved.path().join("testing")).unwrap();
    for name in shipped.iter().chain(&testing) {
        preserve(&dist.join(name), &saved.path().join(name));
    }

    let out = Shell::start("bash plugins/build.sh").finish();

    for name in shipped.iter().chain(&testing) {
        let built = dist.join(name);
        let bytes = std::fs::read(&built)
            .unwrap_or_else(|e| panic!("{} not built ({e}):\n{out}", built.display()));
        assert!(
            bytes.starts_with(b"\0asm"),
            "{} is not WebAssembly",
            built.display()
        );
        restore_mtime_if_unchanged(&saved.path().join(name), &built);
    }
    for name in shipped {
        assert!(
            out.contains(&format!("dist/{name}")),
            "build.sh did not report {name}:\n{out}"
        );
    }
}

/// Copies `file` to `to`, keeping its modification time (`cp -p`).
fn preserve(file: &Path, to: &Path) {
    if file.exists() {
        let ok = Command::new("cp")
            .arg("-p")
            .arg(file)
            .arg(to)
            .status()
            .unwrap()
            .success();
        assert!(ok, "cp -p {} {}", file.display(), to.display());
    }
}

/// Gives `built` the modification time of `saved` when both hold the same
/// bytes (`touch -r`).
fn restore_mtime_if_unchanged(saved: &Path, built: &Path) {
    let (Ok(old), Ok(new)) = (std::fs::read(saved), std::fs::read(built)) else {
        return;
    };
    if old == new {
        let ok = Command::new("touch")
            .arg("-r")
            .arg(saved)
            .arg(built)
            .status()
            .unwrap()
            .success();
        assert!(ok, "touch -r {} {}", saved.display(), built.display());
    }
}

/// The fuzzing command the README shows. A real run needs the nightly
/// toolchain, a release build of the whole proxy with cargo-fuzz (about
/// 10 minutes cold) and minutes per target, so the suite runs the part that
/// costs nothing: the script refuses bad arguments with its usage line
/// before it builds anything. The fuzzing itself is recorded in the issue
/// notes (executions per target).
#[test]
fn the_readme_fuzz_script_checks_its_arguments() {
    let readme = readme();
    assert!(
        readme.contains("bash tests/fuzz/run.sh"),
        "README.md no longer names tests/fuzz/run.sh"
    );
    for args in [&["abc"][..], &["1", "no-such-target"][..]] {
        let out = std::process::Command::new("bash")
            .arg("tests/fuzz/run.sh")
            .args(args)
            .current_dir(repo_root())
            .output()
            .expect("running bash");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("usage") || err.contains("unknown target"),
            "{args:?}: {err}"
        );
    }
}

/// The `profile-edge plugin ...` lines of the README's command-line block,
/// run as written, one after another, from an empty folder: the template
/// builds, and the run of the built component on the sample feed succeeds.
#[test]
fn the_readme_plugin_commands_make_build_and_run_a_policy() {
    let readme = readme();
    let block = sh_block_after(&readme, "## Command line");
    let lines: Vec<&str> = block
        .iter()
        .map(|l| without_comment(l))
        .filter(|l| l.starts_with("profile-edge plugin"))
        .collect();
    assert_eq!(lines.len(), 3, "new, build and run: {lines:?}");
    let dir = tempfile::tempdir().unwrap();
    for line in lines {
        let args: Vec<&str> = line.split_whitespace().skip(1).collect();
        let out = Command::new(bin())
            .current_dir(dir.path())
            // The guest crate gets its own target/ as a user's would; only
            // the outer workspace's target must not leak into it.
            .env_remove("CARGO_TARGET_DIR")
            .args(&args)
            .output()
            .expect("running profile-edge plugin");
        assert_eq!(
            out.status.code(),
            Some(0),
            "`{line}` failed:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if args[1] == "run" {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(stdout.contains("userSnapshot"), "{stdout}");
        }
    }
}
