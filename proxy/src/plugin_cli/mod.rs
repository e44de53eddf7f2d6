//! `profile-edge plugin ...`: the policy author's loop, off the request
//! path. `new` writes a policy crate from a template (`new`, `templates/`),
//! `build` compiles it to a component (`build`), `run` runs a component in
//! the proxy's own runtime on a sample or given input and reports each
//! call (`run`, with its inputs in `inputs` and its report in `report`).

mod build;
mod inputs;
mod new;
mod report;
mod run;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand, ValueEnum};

use crate::plugin::calls::World;
use crate::units::{ByteSize, Dur};

#[derive(Subcommand)]
pub enum PluginCommand {
    /// Create a policy crate from a template: PARENT/NAME/, ready to build.
    New {
        /// The crate name (letters, digits, `-`, `_`); the component is
        /// NAME with `-` written `_`, e.g. author-card -> author_card.wasm.
        name: String,
        /// The contract it fulfils.
        #[arg(long, value_enum)]
        world: WorldArg,
        /// Where to create it. A plugins workspace (Cargo.toml with
        /// [workspace] and wit/policy.wit beside it) gets a member; any
        /// other folder a standalone crate with its own copy of the WIT.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
    },
    /// Build the policy crate (or workspace) in DIR for wasm32-wasip2 and
    /// print the path of each component built.
    Build {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a component in the proxy's runtime (same type check and limits)
    /// on a sample or given input; print output, outcomes, times and logs.
    /// Exit 1 if any call failed.
    Run(RunArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum WorldArg {
    Enrich,
    Invalidate,
}

impl From<WorldArg> for World {
    fn from(w: WorldArg) -> World {
        match w {
            WorldArg::Enrich => World::Enrich,
            WorldArg::Invalidate => World::Invalidate,
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// The component (.wasm).
    pub file: PathBuf,
    /// Enrichment: the response body (a file, or - for stdin). Default: a
    /// built-in sample feed.
    #[arg(long)]
    pub body: Option<PathBuf>,
    /// Enrichment: the profiles the Officer knows (a JSON array of profiles
    /// or {"users": [...]}). Default: a sample profile for each id asked.
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// Invalidation: the event (a file, or - for stdin). Default: a sample
    /// profile-updated event.
    #[arg(long)]
    pub event: Option<PathBuf>,
    /// The plugin's `config` table as JSON, or @FILE. Default: {}. (Not
    /// `--config`: that is the proxy's config file, a flag of every command.)
    #[arg(long, value_name = "JSON|@FILE")]
    pub plugin_config: Option<String>,
    /// Per-call deadline, as `[plugins.NAME] deadline` (at most 1s).
    #[arg(long, default_value = "10ms")]
    pub deadline: Dur,
    /// Linear memory cap, as `[plugins.NAME] memory_limit` (64KiB to 128MiB).
    #[arg(long, default_value = "32MiB")]
    pub memory_limit: ByteSize,
    /// Require this world (default: whichever the component implements).
    #[arg(long, value_enum)]
    pub world: Option<WorldArg>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Why a `plugin` command could not do its work; always one line.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad argument or input, said as the flag or file it is about.
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {reason}")]
    Io { path: String, reason: String },
    #[error("{0}")]
    Build(String),
}

impl CliError {
    fn io(path: &Path, e: std::io::Error) -> CliError {
        CliError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        }
    }
}

/// Runs one `plugin` subcommand; errors go to stderr as one line.
pub fn main(cmd: PluginCommand) -> ExitCode {
    let result = match cmd {
        PluginCommand::New { name, world, dir } => {
            new::run(&name, world.into(), &dir).map(|c| report::created(&c, world.into()))
        }
        PluginCommand::Build { dir } => build::run(&dir).map(|wasm| {
            for w in wasm {
                println!("{}", w.display());
            }
        }),
        PluginCommand::Run(args) => match run::run(&args) {
            Ok(true) => return ExitCode::SUCCESS,
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("profile-edge plugin: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Folds a multi-line message (a wasmtime backtrace, say) onto one line.
pub(crate) fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}
