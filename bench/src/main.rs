//! profile-edge-bench: builds the release proxy, runs the benchmark
//! scenarios against it (and against nginx and the bare origin where a
//! scenario compares), prints a table per scenario and rewrites
//! `bench/RESULTS.md`.
//!
//! ```sh
//! cargo run --release -p profile-edge-bench               # full run (about 20-25 min)
//! cargo run --release -p profile-edge-bench -- --quick    # smoke run (a few minutes)
//! cargo run --release -p profile-edge-bench -- --only warm
//! cargo run --release -p profile-edge-bench -- --only fanout --no-write
//! ```

mod load;
mod pin;
mod procs;
mod report;
mod scenarios;
mod zipf;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use report::{Machine, RunInfo, Section};
use scenarios::{Ctx, SCENARIOS};

const USAGE: &str = "usage: profile-edge-bench [--quick] [--only NAME] [--no-build] [--no-write]

  --quick      short smoke run (1 round per comparison, smaller counts)
  --only NAME  run one scenario: warm, cold, zipf, enrich, reload, redis, memory, backplane,
               mongo, fanout (raises its own open-files limit to the hard limit), cluster,
               pinned (the proxy and nginx on core 0, the load on core 1; needs 2 cores)
  --no-build   do not run `cargo build --release -p profile-edge` first
  --no-write   print only; leave bench/RESULTS.md alone";

/// Longest a single scenario may take before it is abandoned.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(30 * 60);

struct Args {
    quick: bool,
    only: Option<String>,
    build: bool,
    write: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        quick: false,
        only: None,
        build: true,
        write: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--only" => {
                let name = it.next().context("--only needs a scenario name")?;
                if !SCENARIOS.iter().any(|(k, _)| *k == name) {
                    bail!("unknown scenario {name:?}\n{USAGE}");
                }
                args.only = Some(name);
            }
            "--no-build" => args.build = false,
            "--no-write" => args.write = false,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    Ok(args)
}

fn workspace_root() -> Result<PathBuf> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = manifest
        .parent()
        .context("bench crate has no parent directory")?;
    root.canonicalize()
        .with_context(|| format!("canonicalize {}", root.display()))
}

fn build_proxy(root: &Path) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("building the proxy: cargo build --release -p profile-edge");
    let status = Command::new(&cargo)
        .args(["build", "--release", "-p", "profile-edge"])
        .current_dir(root)
        .status()
        .with_context(|| format!("run {cargo}"))?;
    if !status.success() {
        bail!("`cargo build --release -p profile-edge` failed ({status})");
    }
    Ok(())
}

async fn run(args: Args) -> Result<bool> {
    let root = workspace_root()?;
    if args.build {
        build_proxy(&root)?;
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let proxy_bin = target_dir.join("release").join("profile-edge");
    if !proxy_bin.exists() {
        bail!(
            "{} not found; run `cargo build --release -p profile-edge`",
            proxy_bin.display()
        );
    }
    let ctx = Ctx {
        root: root.clone(),
        proxy_bin,
        quick: args.quick,
        rounds: if args.quick { 1 } else { 3 },
    };
    let machine = Machine::describe(&root);
    println!(
        "profile-edge-bench: {} mode, {} round(s) per comparison; {} cores, {}; commit {}",
        if args.quick { "quick" } else { "full" },
        ctx.rounds,
        machine.cores,
        machine.memory,
        machine.commit
    );

    let started = Instant::now();
    let mut sections: Vec<Section> = Vec::new();
    let mut all_ran = true;
    for &(key, _) in SCENARIOS {
        if args.only.as_deref().is_some_and(|o| o != key) {
            continue;
        }
        println!("\n-- running {key} ...");
        let t = Instant::now();
        let mut sec = match tokio::time::timeout(SCENARIO_TIMEOUT, scenarios::run(key, &ctx)).await
        {
            Ok(sec) => sec,
            Err(_) => {
                let mut s = Section::new(key, key);
                s.error = Some(format!("abandoned after {} s", SCENARIO_TIMEOUT.as_secs()));
                s
            }
        };
        sec.seconds = t.elapsed().as_secs_f64();
        if sec.error.is_some() {
            all_ran = false;
        }
        report::print_section(&sec);
        sections.push(sec);
    }

    let mode = match (&args.only, args.quick) {
        (Some(o), true) => format!("quick (`--quick --only {o}`)"),
        (Some(o), false) => format!("full (`--only {o}`)"),
        (None, true) => "quick (`--quick`)".to_string(),
        (None, false) => "full".to_string(),
    };
    let mut command = "cargo run --release -p profile-edge-bench".to_string();
    if args.quick {
        command.push_str(" -- --quick");
    }
    if let Some(o) = &args.only {
        command.push_str(if args.quick {
            " --only "
        } else {
            " -- --only "
        });
        command.push_str(o);
    }
    if args.write {
        let path = root.join("bench").join("RESULTS.md");
        report::write_results(
            &path,
            &machine,
            &RunInfo {
                mode: &mode,
                rounds: ctx.rounds,
                command,
                sections: &sections,
                total_seconds: started.elapsed().as_secs_f64(),
            },
        )?;
        println!("\nwrote {}", path.display());
    }
    Ok(all_ran)
}

async fn stop_signal() -> Result<&'static str> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("install SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => { r.context("wait for Ctrl-C")?; Ok("SIGINT") }
        _ = term.recv() => Ok("SIGTERM"),
    }
}

fn main() -> std::process::ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Dropping the run future on a signal drops every child guard, which
    // stops the proxy, nginx and redis-server.
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(args) => r,
            s = stop_signal() => match s {
                Ok(name) => bail!("interrupted by {name}; children stopped"),
                Err(e) => Err(e),
            },
        }
    });
    rt.shutdown_timeout(Duration::from_secs(2));
    match outcome {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("some scenarios could not run; see above and bench/RESULTS.md");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("profile-edge-bench: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
