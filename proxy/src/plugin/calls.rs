//! One policy call: the worlds a component can fulfil, the limits a call
//! runs under, what the call is for (`CallInfo`, which a guest of the
//! current WIT version reads with `host.request()`), how a call ends
//! (`CallError`, the `outcome` label), and the three calls themselves, each
//! on a fresh instance from the engine, whichever WIT version it was built for.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Trap;

use super::bindings::{Action, CallInfo, CallKind, Profile};
use super::engine::{PluginRuntime, Prepared};
use super::host::PluginContext;

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
    /// The policy trapped (panic, unreachable, memory cap, a forbidden import).
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
        let run = match pre {
            Prepared::Enrich(pre) => {
                let mut store = self.store(ctx, limits, Some(call));
                pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_enricher()
                        .call_needed_ids(&mut store, body)
                })
            }
            Prepared::PreviousEnrich(pre) => {
                let mut store = self.store(ctx, limits, None);
                pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_enricher()
                        .call_needed_ids(&mut store, body)
                })
            }
            _ => return Err(not_enrich()),
        };
        flatten(run, limits)
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
        let run = match pre {
            Prepared::Enrich(pre) => {
                let mut store = self.store(ctx, limits, Some(call));
                pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_enricher()
                        .call_enrich(&mut store, body, profiles)
                })
            }
            Prepared::PreviousEnrich(pre) => {
                let mut store = self.store(ctx, limits, None);
                pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_enricher()
                        .call_enrich(&mut store, body, profiles)
                })
            }
            _ => return Err(not_enrich()),
        };
        flatten(run, limits)
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
        let run = match pre {
            Prepared::Invalidate(pre) => {
                let mut store = self.store(ctx, limits, Some(call));
                pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_invalidator()
                        .call_on_event(&mut store, event)
                })
            }
            Prepared::PreviousInvalidate(pre) => {
                let mut store = self.store(ctx, limits, None);
                pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_invalidator()
                        .call_on_event(&mut store, event)
                })
            }
            _ => return Err(CallError::Error("not an invalidation policy".into())),
        };
        flatten(run, limits)
    }
}

fn not_enrich() -> CallError {
    CallError::Error("not an enrichment policy".into())
}

/// Maps wasmtime's nested result to a call outcome.
fn flatten<T>(run: wasmtime::Result<Result<T, String>>, limits: &Limits) -> Result<T, CallError> {
    match run {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(msg)) => Err(CallError::Error(msg.chars().take(512).collect())),
        Err(e) => match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => Err(CallError::Timeout(limits.deadline)),
            _ => Err(CallError::Trap(
                format!("{e:#}").chars().take(512).collect(),
            )),
        },
    }
}
