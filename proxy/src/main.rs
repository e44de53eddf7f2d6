//! The `profile-edge` command line (README "Command line"): run, check, demo,
//! and the policy author's `plugin new|build|run`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use profile_edge::demo::{Demo, DemoOptions};
use profile_edge::http::tls;
use profile_edge::plugin_cli::PluginCommand;
use profile_edge::{app, logging, App, Config};

/// The config file when `--config` is not given (the demo has its own).
const DEFAULT_CONFIG: &str = "config/profile-edge.toml";

#[derive(Parser)]
#[command(
    name = "profile-edge",
    version,
    about = "Edge cache proxy for the Officer user-profile API"
)]
struct Cli {
    /// The config file (TOML) [default: config/profile-edge.toml; the
    /// demo: its built-in config/demo.toml].
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file and everything it names; exit 1 with one
    /// line per problem.
    Check,
    /// Run a simulated Officer and Posts API with the proxy in front.
    Demo {
        /// Address of the demo proxy [default: the config's server.listen,
        /// 127.0.0.1:8080 in the built-in one].
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Address of the demo admin listener [default: the config's
        /// admin.listen, 127.0.0.1:9090 in the built-in one].
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// An enrichment policy (.wasm) to serve instead of the config's;
        /// rebuilt files are swapped in while the demo runs.
        #[arg(long)]
        plugin: Option<PathBuf>,
        /// Synthetic users in the simulated Officer.
        #[arg(long, default_value_t = 5000)]
        users: usize,
        /// Latency the simulated origins add to every call.
        #[arg(long, default_value = "20ms", value_parser = humantime::parse_duration)]
        latency: Duration,
    },
    /// Write, build and try WebAssembly policies: new, build, run.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tls::install_default_provider();
    let config = || {
        cli.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG))
    };
    match cli.command {
        Some(Command::Check) => check(&config()),
        Some(Command::Plugin { command }) => profile_edge::plugin_cli::main(command),
        None => run(config()),
        Some(Command::Demo {
            listen,
            admin,
            users,
            latency,
            plugin,
        }) => demo(DemoOptions {
            listen,
            admin,
            users,
            latency,
            config: cli.config.clone(),
            plugin,
        }),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    let file = path.display().to_string();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let where_ = profile_edge::config::resolved(path);
            eprintln!("{file}: (file): cannot read {where_}: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Every problem in one run: parse and validation problems first, then
    // every plugin whose own section is sound, even when other sections are
    // not, so that one run shows all there is to fix.
    let diagnosis = Config::diagnose(&text, &file);
    let mut failed = !diagnosis.problems.is_empty();
    for p in &diagnosis.problems {
        eprintln!("{file}: {}: {}", p.key, p.reason);
    }
    let Some(config) = diagnosis.config else {
        return ExitCode::FAILURE;
    };
    // What the config names beyond the file (TLS, CA bundles, clients) is
    // built only from a valid config: it would repeat the problems above.
    if !failed {
        if let Err(e) = profile_edge::state::Runtime::build(config.clone(), &file) {
            eprintln!("{e}");
            failed = true;
        }
    }
    // Every plugin goes through what a load does: compile, type-check
    // against its world, smoke test.
    for (name, plugin) in &config.plugins {
        let section = format!("plugins.{name}");
        let reported = diagnosis.problems.iter().any(|p| {
            p.key
                .strip_prefix(&section)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
        });
        if reported {
            continue;
        }
        match profile_edge::plugin::registry::check_plugin(&config, name, plugin) {
            Ok(world) => println!("{file}: plugins.{name}: ok ({})", world.as_str()),
            Err(reason) => {
                let reason = profile_edge::config::one_line(&reason.to_string());
                eprintln!("{file}: plugins.{name}.path: {reason}");
                failed = true;
            }
        }
    }
    if failed {
        return ExitCode::FAILURE;
    }
    println!("{file}: ok");
    ExitCode::SUCCESS
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

fn run(path: PathBuf) -> ExitCode {
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    logging::init(&config.log);
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let app = match App::start_from_file(&path).await {
            Ok(app) => app,
            Err(e) => {
                tracing::error!(error = %e, "cannot start");
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        app::shutdown_signal().await;
        // A second signal during the drain stops at once.
        tokio::select! {
            _ = app.shutdown() => ExitCode::SUCCESS,
            _ = app::shutdown_signal() => {
                tracing::warn!("second signal: exiting without waiting for the drain");
                ExitCode::FAILURE
            }
        }
    })
}

fn demo(opts: DemoOptions) -> ExitCode {
    logging::init(&Default::default());
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let demo = match Demo::start(&opts).await {
            Ok(d) => d,
            Err(e) => {
                eprintln!("demo failed to start: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let burst = match demo.cold_burst(1000.min(opts.users / 2)).await {
            Ok(line) => Some(line),
            Err(e) => Some(format!("cold burst failed: {e:#}")),
        };
        demo.print_banner(burst.as_deref());
        app::shutdown_signal().await;
        demo.shutdown().await;
        ExitCode::SUCCESS
    })
}
