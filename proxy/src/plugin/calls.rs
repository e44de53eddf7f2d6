//! One policy call: the worlds a component can fulfil, the limits a call
//! runs under, how a call ends (`CallError`, the `outcome` label), and the
//! three calls themselves, each on a fresh instance from the engine.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::Store;

use super::bindings::enrich::EnrichPolicyPre;
use super::bindings::invalidate::InvalidatePolicyPre;
use super::bindings::{Action, Profile};
use super::diagnose;
use super::engine::PluginRuntime;
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

impl PluginRuntime {
    /// `needed-ids` on a fresh instance.
    pub fn needed_ids(
        &self,
        pre: &EnrichPolicyPre<HostState>,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        body: &str,
    ) -> Result<Vec<String>, CallError> {
        let mut store = self.store(ctx, limits);
        let run = pre.instantiate(&mut store).and_then(|p| {
            p.profile_edge_policy_enricher()
                .call_needed_ids(&mut store, body)
        });
        finish(&store, run, limits)
    }

    /// `enrich` on a fresh instance.
    pub fn enrich(
        &self,
        pre: &EnrichPolicyPre<HostState>,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        body: &str,
        profiles: &[Profile],
    ) -> Result<String, CallError> {
        let mut store = self.store(ctx, limits);
        let run = pre.instantiate(&mut store).and_then(|p| {
            p.profile_edge_policy_enricher()
                .call_enrich(&mut store, body, profiles)
        });
        finish(&store, run, limits)
    }

    /// `on-event` on a fresh instance.
    pub fn on_event(
        &self,
        pre: &InvalidatePolicyPre<HostState>,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        event: &str,
    ) -> Result<Vec<Action>, CallError> {
        let mut store = self.store(ctx, limits);
        let run = pre.instantiate(&mut store).and_then(|p| {
            p.profile_edge_policy_invalidator()
                .call_on_event(&mut store, event)
        });
        finish(&store, run, limits)
    }
}

/// Logs what the guest printed during the call (ok or not), then maps
/// wasmtime's nested result to a call outcome.
fn finish<T>(
    store: &Store<HostState>,
    run: wasmtime::Result<Result<T, String>>,
    limits: &Limits,
) -> Result<T, CallError> {
    let state = store.data();
    state.output.emit(&state.ctx);
    match run {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(msg)) => Err(CallError::Error(msg.chars().take(512).collect())),
        Err(e) => Err(diagnose::call_failure(
            &e,
            &state.output.stderr.text(),
            limits,
            state.limits.memory_exceeded,
        )),
    }
}
