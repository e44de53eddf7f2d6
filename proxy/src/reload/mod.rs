//! Config hot reload: a notify watcher on the config file's directory (so
//! that editors' atomic renames and Kubernetes' ConfigMap symlink swaps are
//! seen), a short debounce, then parse + validate + build and an atomic
//! publish. An invalid file is logged and counted and the running config
//! stays. `/admin/reload` goes through the same `reload_config`.

pub mod diff;
pub mod fs_watch;

pub use diff::ConfigDiff;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::Path;
use std::sync::Arc;

use notify::RecommendedWatcher;

use crate::config::{Config, ConfigError, Problem};
use crate::state::{Runtime, State};

#[derive(Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// A new config is in force; the listed keys changed but only take
    /// effect after a restart.
    Applied {
        needs_restart: Vec<String>,
        /// Legal changes an operator must not miss (logged at WARN too).
        warnings: Vec<String>,
    },
    /// The file has the content last tried; nothing was done.
    Unchanged,
}

/// Reads the config file and, if it changed (or `force`), publishes it.
pub async fn reload_config(state: &State, force: bool) -> Result<ReloadOutcome, ConfigError> {
    let Some(path) = state.config_path.clone() else {
        return Err(ConfigError {
            file: "(in-memory config)".into(),
            problems: vec![Problem::new(
                "(file)",
                "this instance was not started from a file",
            )],
        });
    };
    let mut last = state.reload_guard.lock().await;
    let file = path.display().to_string();
    let read_path = path.clone();
    let read = tokio::task::spawn_blocking(move || std::fs::read(read_path))
        .await
        .map_err(|e| one_problem(&file, format!("reload task failed: {e}")))?;
    // What the file is now, readable or not: an unreadable file is rejected
    // (and counted) once per change, not once per directory event.
    let seen = match &read {
        Ok(bytes) => content_hash(bytes),
        Err(e) => content_hash(format!("unreadable: {:?} {e}", e.kind()).as_bytes()),
    };
    if !force && *last == Some(seen) {
        return Ok(ReloadOutcome::Unchanged);
    }
    *last = Some(seen);
    let text = read
        .map_err(|e| one_problem(&file, format!("cannot read: {e}")))
        .and_then(|bytes| {
            String::from_utf8(bytes).map_err(|e| {
                one_problem(
                    &file,
                    format!(
                        "not UTF-8 text (invalid byte at offset {})",
                        e.utf8_error().valid_up_to()
                    ),
                )
            })
        });
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            state.metrics.reload("config", false);
            return Err(e);
        }
    };

    let parse_file = file.clone();
    let built = tokio::task::spawn_blocking(move || {
        Config::parse(&text, &parse_file).and_then(|c| Runtime::build(c, &parse_file))
    })
    .await
    .map_err(|e| one_problem(&file, format!("reload task failed: {e}")))
    .and_then(|r| r);
    let runtime = match built {
        Ok(r) => r,
        Err(e) => {
            state.metrics.reload("config", false);
            return Err(e);
        }
    };
    // Diffed once, against the config in force: reloads are serialised by
    // `reload_guard` and only a reload publishes, so it cannot go stale
    // before `publish` below.
    let diff = ConfigDiff::new(&state.runtime().config, &runtime.config);
    tracing::debug!(changed = ?diff.sections().collect::<Vec<_>>(), "config diff");
    // Plugins the new config adds, re-points or changes load first, without
    // serving: one that cannot load rejects the whole config, as `check`
    // and a restart would, instead of deferring the outage to the restart.
    let staged = match state.plugins.stage(&runtime.config, Some(&diff)).await {
        Ok(staged) => staged,
        Err(problems) => {
            state.metrics.reload("config", false);
            return Err(ConfigError {
                file,
                problems: problems
                    .into_iter()
                    .map(|(name, reason)| {
                        Problem::new(format!("plugins.{name}.path"), reason.to_string())
                    })
                    .collect(),
            });
        }
    };
    if let Err(p) = state
        .profiles
        .reconfigure(&runtime.config, runtime.officer.clone(), &diff)
    {
        state.metrics.reload("config", false);
        return Err(ConfigError {
            file,
            problems: vec![p],
        });
    }
    if let Err(p) = state.invalidations.reconfigure(&runtime.config) {
        state.metrics.reload("config", false);
        return Err(ConfigError {
            file,
            problems: vec![p],
        });
    }
    state.posts.reconfigure(&runtime.config);
    state.streams.apply(&runtime.config);
    state.notifications.reconfigure(&runtime.config);
    // Infallible, so after everything that can still reject the file.
    state.warm_up.reconfigure(&runtime.config, &diff);
    staged.commit();
    let warnings: Vec<String> = opened_admin(&state.runtime(), &runtime)
        .into_iter()
        .collect();
    let needs_restart = diff.needs_restart();
    state.publish(runtime);
    state.metrics.reload("config", true);
    Ok(ReloadOutcome::Applied {
        needs_restart,
        warnings,
    })
}

/// A reload that removes the admin token opens the mutating admin
/// endpoints to anyone who reaches the admin listener: legal, but never
/// silent.
fn opened_admin(old: &Runtime, new: &Runtime) -> Option<String> {
    (old.admin_token.is_some() && new.admin_token.is_none()).then(|| {
        format!(
            "admin.token was removed: the mutating endpoints on {} (/admin/reload, \
             /admin/events, /admin/warm, cache purges) now accept requests without a bearer token",
            new.config.admin.listen
        )
    })
}

/// Logs the outcome of a reload the way operators need to see it.
pub fn log_outcome(result: &Result<ReloadOutcome, ConfigError>, trigger: &str) {
    match result {
        Ok(ReloadOutcome::Applied {
            needs_restart,
            warnings,
        }) => {
            tracing::info!(trigger, "config reloaded");
            for warning in warnings {
                tracing::warn!(trigger, %warning, "config reloaded with a warning");
            }
            for key in needs_restart {
                tracing::warn!(trigger, key = %key, "changed key takes effect only after a restart");
            }
        }
        Ok(ReloadOutcome::Unchanged) => {
            tracing::debug!(trigger, "config file unchanged");
        }
        Err(e) => {
            for p in &e.problems {
                tracing::error!(trigger, file = %e.file, key = %p.key, reason = %p.reason,
                    "config rejected; the running config stays");
            }
        }
    }
}

fn one_problem(file: &str, reason: String) -> ConfigError {
    ConfigError {
        file: file.to_string(),
        problems: vec![Problem::new("(file)", reason)],
    }
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Remembers the content of the file the process started with, so that the
/// first event after start does not count as a change.
pub async fn remember_initial(state: &State, text: &str) {
    *state.reload_guard.lock().await = Some(content_hash(text.as_bytes()));
}

/// Starts watching the config file's directory; reloads run on the tokio
/// runtime. Keep the returned watcher alive for as long as reloads should
/// happen.
pub fn watch(state: Arc<State>, path: &Path) -> notify::Result<RecommendedWatcher> {
    let tasks = state.tasks.clone();
    crate::reload::fs_watch::watch_dirs(
        &[crate::reload::fs_watch::dir_of(path)],
        "config-watch",
        &tasks,
        move || {
            let state = state.clone();
            async move {
                let result = reload_config(&state, false).await;
                log_outcome(&result, "file");
                // Counted after the outcome, so a test that waits for the
                // count also sees what the burst did.
                state.metrics.config_watch_events.inc();
            }
        },
    )
}
