//! `profile-edge plugin run FILE.wasm`: loads a component the way the proxy
//! does (compile, type check against its world, the limits of a
//! `[plugins.NAME]` section with the same defaults and bounds) and makes
//! the calls the proxy would make for one response or event, each on a
//! fresh instance. The guest's log lines are kept, not logged, so that the
//! report can show them under the call that wrote them.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::inputs::{self, Input};
use super::report::{self, CallReport, Report, Run};
use super::{CliError, RunArgs};
use crate::config::PluginConfig;
use crate::plugin::bindings::{lend, CallInfo, Profile};
use crate::plugin::calls::{CallError, Limits, World};
use crate::plugin::error::PluginError;
use crate::plugin::host::PluginContext;
use crate::plugin::registry::{load_standalone, LoadedPlugin};

/// Runs the policy and prints the report; `Ok(false)` when a call failed.
pub fn run(args: &RunArgs) -> Result<bool, CliError> {
    let limits = limits(args)?;
    let config_json = inputs::read_config(args.plugin_config.as_deref())?;
    let name = args
        .file
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let ctx = Arc::new(PluginContext::capturing(&name, config_json.clone()));
    let plugin = load(args, limits.clone(), &ctx)?;
    let world = plugin.world();
    check_flags(args, world)?;
    let (run, calls) = match world {
        World::Enrich => enrich(args, &plugin, &ctx)?,
        World::Invalidate => invalidate(args, &plugin, &ctx)?,
    };
    let report = Report {
        file: args.file.display().to_string(),
        world,
        sha256: plugin.sha256.clone(),
        deadline: args.deadline,
        memory_limit: args.memory_limit,
        config: config_json,
        run,
        calls,
        logs_dropped: ctx.logs_dropped.load(std::sync::atomic::Ordering::Relaxed),
    };
    let ok = report.calls.iter().all(|c| c.error.is_none());
    if args.json {
        report::print_json(&report);
    } else {
        report::print_text(&report);
    }
    Ok(ok)
}

/// The deadline and memory cap, refused out of bounds exactly as in a
/// `[plugins.NAME]` section, but named by their flags.
fn limits(args: &RunArgs) -> Result<Limits, CliError> {
    let section = PluginConfig {
        path: args.file.clone(),
        deadline: args.deadline,
        memory_limit: args.memory_limit,
        on_error: Default::default(),
        config: BTreeMap::new(),
    };
    if let Some(p) = section.validate("run").into_iter().next() {
        let flag = match p.key.rsplit('.').next() {
            Some("deadline") => "--deadline: ",
            Some("memory_limit") => "--memory-limit: ",
            _ => "",
        };
        return Err(CliError::Usage(format!("{flag}{}", p.reason)));
    }
    Ok(Limits {
        deadline: args.deadline.get(),
        memory: args.memory_limit.as_usize(),
    })
}

/// Loads for the world asked for, or for whichever the component fulfils.
fn load(
    args: &RunArgs,
    limits: Limits,
    ctx: &Arc<PluginContext>,
) -> Result<LoadedPlugin, CliError> {
    let file = args.file.display();
    let fail = |e: PluginError| match e {
        // Already names the file.
        PluginError::Read { .. } => CliError::Usage(e.to_string()),
        e => CliError::Usage(format!("{file}: {e}")),
    };
    if let Some(w) = args.world {
        return load_standalone(&args.file, w.into(), limits, ctx.clone()).map_err(fail);
    }
    match load_standalone(&args.file, World::Enrich, limits.clone(), ctx.clone()) {
        Err(PluginError::WrongWorld { reason, .. }) => {
            load_standalone(&args.file, World::Invalidate, limits, ctx.clone()).map_err(|e| match e
            {
                PluginError::WrongWorld { .. } => CliError::Usage(format!(
                    "{file}: implements neither enrich-policy nor invalidate-policy of \
                         profile-edge:policy@0.1.0 (built for another WIT version?): {reason}"
                )),
                e => fail(e),
            })
        }
        r => r.map_err(fail),
    }
}

/// Refuses inputs the component's world has no use for, rather than
/// silently ignoring them.
fn check_flags(args: &RunArgs, world: World) -> Result<(), CliError> {
    let file = args.file.display();
    match world {
        World::Enrich if args.event.is_some() => Err(CliError::Usage(format!(
            "--event: {file} is an enrich-policy; give it a response body with --body"
        ))),
        World::Invalidate if args.body.is_some() || args.profiles.is_some() => {
            Err(CliError::Usage(format!(
                "--{}: {file} is an invalidate-policy; give it an event with --event",
                if args.body.is_some() {
                    "body"
                } else {
                    "profiles"
                }
            )))
        }
        _ => Ok(()),
    }
}

/// Times one call and takes the lines the guest wrote during it.
fn call<T>(
    name: &'static str,
    ctx: &PluginContext,
    f: impl FnOnce() -> Result<T, CallError>,
) -> (Option<T>, CallReport) {
    let started = Instant::now();
    let r = f();
    let elapsed: Duration = started.elapsed();
    let (value, outcome, error) = match r {
        Ok(v) => (Some(v), "ok", None),
        Err(e) => (None, e.outcome(), Some(super::one_line(&e.to_string()))),
    };
    let report = CallReport {
        call: name,
        outcome,
        error,
        elapsed,
        logs: ctx.take_lines(),
    };
    (value, report)
}

/// What `host::request()` tells an enrichment policy under `plugin run`:
/// a response on an `[[enrich]]` route, as the default config has it.
pub const RUN_ROUTE: &str = "/api/posts";

fn response() -> CallInfo {
    CallInfo::response(RUN_ROUTE, RUN_ROUTE)
}

/// `needed-ids`, then `enrich` with the profiles of the ids it named, on
/// one instance.
fn enrich(
    args: &RunArgs,
    plugin: &LoadedPlugin,
    ctx: &PluginContext,
) -> Result<(Run, Vec<CallReport>), CliError> {
    let body: Input =
        inputs::read_input("body", args.body.as_deref(), inputs::sample_feed, "feed")?;
    let known: Option<Vec<Profile>> = args
        .profiles
        .as_deref()
        .map(inputs::read_profiles)
        .transpose()?;
    let mut calls = Vec::new();
    // As the proxy runs a response: both calls on one instance.
    let info = response();
    let mut policy = plugin.enrich_calls(&info);
    let (ids, r) = call("needed-ids", ctx, || policy.needed_ids(&body.text));
    calls.push(r);
    let Some(ids) = ids else {
        let run = Run::Enrich {
            body_from: body.from,
            ids: None,
            profiles_from: None,
            output: None,
        };
        return Ok((run, calls));
    };
    // As the proxy does: the profiles found for the ids asked, unknown
    // ids absent.
    let (profiles, profiles_from) = match (&known, &args.profiles) {
        (Some(known), Some(path)) => {
            let found: Vec<Profile> = ids
                .iter()
                .filter_map(|id| known.iter().find(|p| &p.id == id).cloned())
                .collect();
            let from = profiles_note(path, found.len(), ids.len());
            (found, from)
        }
        _ => (
            ids.iter().map(|id| inputs::sample_profile(id)).collect(),
            "a sample profile for each id asked (--profiles FILE for yours)".to_string(),
        ),
    };
    let (output, mut r) = call("enrich", ctx, || {
        policy.enrich(&body.text, &lend(&profiles))
    });
    // The proxy refuses an answer that is not JSON (`on_error` applies).
    if let Some(out) = &output {
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(out) {
            r.outcome = "error";
            r.error = Some(format!("output is not JSON: {e}"));
        }
    }
    calls.push(r);
    let run = Run::Enrich {
        body_from: body.from,
        ids: Some(ids),
        profiles_from: Some(profiles_from),
        output,
    };
    Ok((run, calls))
}

fn profiles_note(path: &Path, found: usize, asked: usize) -> String {
    format!(
        "{found} of the {asked} ids asked found in {} (the others are absent, as unknown ids are)",
        path.display()
    )
}

/// `on-event`.
fn invalidate(
    args: &RunArgs,
    plugin: &LoadedPlugin,
    ctx: &PluginContext,
) -> Result<(Run, Vec<CallReport>), CliError> {
    let event = inputs::read_input(
        "event",
        args.event.as_deref(),
        inputs::sample_event,
        "profile-updated event",
    )?;
    let (actions, r) = call("on-event", ctx, || {
        plugin.on_event(&CallInfo::event(), &event.text)
    });
    let run = Run::Invalidate {
        event_from: event.from,
        event: event.sample.then_some(event.text),
        actions,
    };
    Ok((run, vec![r]))
}
