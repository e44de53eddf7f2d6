//! One policy call: the worlds a component can fulfil, the limits a call
//! runs under, what the call is for (`CallInfo`, which a guest of the
//! current WIT version reads with `host.request()`), how a call ends
//! (`CallError`, the `outcome` label), and the three calls themselves, each
//! on a fresh instance from the engine, whichever WIT version it was built for.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;

use super::bindings::{Action, CallInfo, CallKind, Profile};
use super::diagnose;
use super::engine::{PluginRuntime, Prepared};
use super::host::{HostState, PluginContext};

/// Which contract a component fulfils.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum World {
    Enrich,
    Invalidate,
}

impl World {
    pub fn as_str(self) -> &'static str {
        match self {
            World::Enrich => "enrich-policy",
            World::Invalidate => "invalidate-policy",
        }
    }
}

/// How a call ended: the `outcome` label of `profile_edge_plugin_calls_total`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The policy returned an error (or output the proxy cannot use).
    #[error("policy error: {0}")]
    Error(String),
    /// The policy trapped (panic, unreachable, memory cap, a forbidden
    /// import): the cause first, then a trimmed wasm backtrace (`diagnose`).
    #[error("policy trapped: {0}")]
    Trap(String),
    /// The policy ran past its deadline.
    #[error("policy ran past its deadline of {0:?}")]
    Timeout(Duration),
}

impl CallError {
    pub fn outcome(&self) -> &'static str {
        match self {
            CallError::Error(_) => "error",
            CallError::Trap(_) => "trap",
            CallError::Timeout(_) => "timeout",
        }
    }
}

/// Per-plugin settings a call runs with.
#[derive(Clone, Debug)]
pub struct Limits {
    pub deadline: Duration,
    pub memory: usize,
}

/// The `call-info` a smoke test of an enrichment policy is told.
pub const SMOKE_PATH: &str = "/profile-edge/smoke-test";

impl CallInfo {
    /// An upstream answer (or one event of it) on an `[[enrich]]` route:
    /// the client's path with its query, and the route's `path_prefix`.
    pub fn response(path: &str, route: &str) -> CallInfo {
        CallInfo {
            kind: CallKind::Response,
            path: path.to_string(),
            route: route.to_string(),
        }
    }

    /// A new post for the notification streams.
    pub fn notification() -> CallInfo {
        CallInfo {
            kind: CallKind::Notification,
            path: String::new(),
            route: String::new(),
        }
    }

    /// A profile event.
    pub fn event() -> CallInfo {
        CallInfo {
            kind: CallKind::Event,
            path: String::new(),
            route: String::new(),
        }
    }
}

impl PluginRuntime {
    /// `needed-ids` on a fresh instance.
    pub fn needed_ids(
        &self,
        pre: &Prepared,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        call: &CallInfo,
        body: &str,
    ) -> Result<Vec<String>, CallError> {
        match pre {
            Prepared::Enrich(pre) => {
                let mut store = self.store(ctx, limits, Some(call));
                let run = pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_enricher()
                        .call_needed_ids(&mut store, body)
                });
                finish(&store, run, limits)
            }
            Prepared::PreviousEnrich(pre) => {
                let mut store = self.store(ctx, limits, None);
                let run = pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_enricher()
                        .call_needed_ids(&mut store, body)
                });
                finish(&store, run, limits)
            }
            _ => Err(not_enrich()),
        }
    }

    /// `enrich` on a fresh instance.
    pub fn enrich(
        &self,
        pre: &Prepared,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        call: &CallInfo,
        body: &str,
        profiles: &[Profile],
    ) -> Result<String, CallError> {
        match pre {
            Prepared::Enrich(pre) => {
                let mut store = self.store(ctx, limits, Some(call));
                let run = pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_enricher()
                        .call_enrich(&mut store, body, profiles)
                });
                finish(&store, run, limits)
            }
            Prepared::PreviousEnrich(pre) => {
                let mut store = self.store(ctx, limits, None);
                let run = pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_enricher()
                        .call_enrich(&mut store, body, profiles)
                });
                finish(&store, run, limits)
            }
            _ => Err(not_enrich()),
        }
    }

    /// `on-event` on a fresh instance.
    pub fn on_event(
        &self,
        pre: &Prepared,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        call: &CallInfo,
        event: &str,
    ) -> Result<Vec<Action>, CallError> {
        match pre {
            Prepared::Invalidate(pre) => {
                let mut store = self.store(ctx, limits, Some(call));
                let run = pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_invalidator()
                        .call_on_event(&mut store, event)
                });
                finish(&store, run, limits)
            }
            Prepared::PreviousInvalidate(pre) => {
                let mut store = self.store(ctx, limits, None);
                let run = pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_invalidator()
                        .call_on_event(&mut store, event)
                });
                finish(&store, run, limits)
            }
            _ => Err(CallError::Error("not an invalidation policy".into())),
        }
    }
}

fn not_enrich() -> CallError {
    CallError::Error("not an enrichment policy".into())
}

/// Logs what the guest printed during the call (ok or not), then maps
/// wasmtime's nested result to a call outcome. A trap whose cause quotes
/// the call's stderr (a panic message) does not log that stderr again:
/// the failure is logged once, bounded, by the registry.
fn finish<T>(
    store: &Store<HostState>,
    run: wasmtime::Result<Result<T, String>>,
    limits: &Limits,
) -> Result<T, CallError> {
    let state = store.data();
    let (result, stderr_quoted) = match run {
        Ok(Ok(v)) => (Ok(v), false),
        Ok(Err(msg)) => (
            Err(CallError::Error(msg.chars().take(512).collect())),
            false,
        ),
        Err(e) => {
            let (error, quoted) = diagnose::call_failure(
                &e,
                &state.output.stderr.text(),
                limits,
                state.limits.memory_exceeded,
            );
            (Err(error), quoted)
        }
    };
    state.output.emit(&state.ctx, !stderr_quoted);
    result
}
