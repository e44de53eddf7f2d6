//! One policy call: the worlds a component can fulfil, the limits a call
//! runs under, what the call is for (`CallInfo`, which a guest of the
//! current WIT version reads with `host.request()`), how a call ends
//! (`CallError`, the `outcome` label), and the three calls themselves,
//! whichever WIT version the policy was built for. `on-event` runs on a
//! fresh instance; `needed-ids` and `enrich` of one response share one
//! (`EnrichInstance`), made fresh for that response.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{ComponentNamedList, Instance, Lift, Lower};
use wasmtime::Store;

use super::bindings::{
    Action, CallInfo, CallKind, ProfileRef, CURRENT_ENRICHER, PREVIOUS_ENRICHER,
};
use super::diagnose;
use super::engine::{arm_deadline, PluginRuntime, Prepared};
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

/// An enrichment policy's instance, kept between the calls of one
/// response (`needed-ids`, then `enrich`): instantiating is most of a
/// small call's cost, and both calls are for the same answer.
pub struct EnrichInstance {
    store: Store<HostState>,
    instance: Instance,
    /// Its `enricher` interface, of the WIT version it was built for.
    enricher: &'static str,
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
        self.needed_ids_on(&mut None, pre, ctx, limits, call, body)
    }

    /// `enrich` on a fresh instance.
    pub fn enrich(
        &self,
        pre: &Prepared,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        call: &CallInfo,
        body: &str,
        profiles: &[ProfileRef<'_>],
    ) -> Result<String, CallError> {
        self.enrich_on(&mut None, pre, ctx, limits, call, body, profiles)
    }

    /// `needed-ids` on the instance in `kept` (a fresh one when it is
    /// empty), which stays there for the next call if this one succeeds.
    pub fn needed_ids_on(
        &self,
        kept: &mut Option<EnrichInstance>,
        pre: &Prepared,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        call: &CallInfo,
        body: &str,
    ) -> Result<Vec<String>, CallError> {
        self.on_instance(kept, pre, ctx, limits, call, |store, instance, enricher| {
            call_export::<(&str,), Vec<String>>(store, instance, enricher, "needed-ids", (body,))
        })
    }

    /// `enrich` on the instance in `kept`, like `needed_ids_on`.
    #[allow(clippy::too_many_arguments)]
    pub fn enrich_on(
        &self,
        kept: &mut Option<EnrichInstance>,
        pre: &Prepared,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        call: &CallInfo,
        body: &str,
        profiles: &[ProfileRef<'_>],
    ) -> Result<String, CallError> {
        self.on_instance(kept, pre, ctx, limits, call, |store, instance, enricher| {
            call_export::<(&str, &[ProfileRef<'_>]), String>(
                store,
                instance,
                enricher,
                "enrich",
                (body, profiles),
            )
        })
    }

    /// Runs one call on the kept instance, or on a fresh one (whose
    /// instantiation counts as part of the call). Every call gets its whole
    /// deadline; the memory cap is the instance's. An instance is kept only
    /// after a call that succeeded: one that trapped cannot run again, and
    /// after an error there is no next call.
    fn on_instance<T>(
        &self,
        kept: &mut Option<EnrichInstance>,
        pre: &Prepared,
        ctx: &Arc<PluginContext>,
        limits: &Limits,
        call: &CallInfo,
        run: impl FnOnce(
            &mut Store<HostState>,
            Instance,
            &'static str,
        ) -> wasmtime::Result<Result<T, String>>,
    ) -> Result<T, CallError> {
        let mut instance = match kept.take() {
            Some(mut instance) => {
                arm_deadline(&mut instance.store, limits);
                instance
            }
            None => {
                // The generated bindings type-checked the exports at load;
                // the calls look them up on the instance (`call_export`).
                let (mut store, instance_pre, enricher) = match pre {
                    Prepared::Enrich(pre) => (
                        self.store(ctx, limits, Some(call)),
                        pre.instance_pre(),
                        CURRENT_ENRICHER,
                    ),
                    Prepared::PreviousEnrich(pre) => (
                        self.store(ctx, limits, None),
                        pre.instance_pre(),
                        PREVIOUS_ENRICHER,
                    ),
                    _ => return Err(not_enrich()),
                };
                match instance_pre.instantiate(&mut store) {
                    Ok(instance) => EnrichInstance {
                        store,
                        instance,
                        enricher,
                    },
                    Err(e) => return finish::<T>(&mut store, Err(e), limits),
                }
            }
        };
        let ran = run(&mut instance.store, instance.instance, instance.enricher);
        let succeeded = matches!(ran, Ok(Ok(_)));
        let result = finish(&mut instance.store, ran, limits);
        if succeeded {
            *kept = Some(instance);
        }
        result
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
                finish(&mut store, run, limits)
            }
            Prepared::PreviousInvalidate(pre) => {
                let mut store = self.store(ctx, limits, None);
                let run = pre.instantiate(&mut store).and_then(|p| {
                    p.profile_edge_policy_invalidator()
                        .call_on_event(&mut store, event)
                });
                finish(&mut store, run, limits)
            }
            _ => Err(CallError::Error("not an invalidation policy".into())),
        }
    }
}

/// One function of an instance's `enricher`, called through its export:
/// looked up and type-checked on each call (far cheaper than what the
/// generated bindings would cost: `enrich` would take owned profiles,
/// copied for every call).
fn call_export<P, T>(
    store: &mut Store<HostState>,
    instance: Instance,
    enricher: &str,
    name: &str,
    params: P,
) -> wasmtime::Result<Result<T, String>>
where
    P: ComponentNamedList + Lower,
    T: Lift + 'static,
{
    let missing = || wasmtime::format_err!("no export `{name}` in `{enricher}`");
    let interface = instance
        .get_export_index(&mut *store, None, enricher)
        .ok_or_else(missing)?;
    let func = instance
        .get_export_index(&mut *store, Some(&interface), name)
        .ok_or_else(missing)?;
    let func = instance.get_typed_func::<P, (Result<T, String>,)>(&mut *store, &func)?;
    let (out,) = func.call(&mut *store, params)?;
    Ok(out)
}

fn not_enrich() -> CallError {
    CallError::Error("not an enrichment policy".into())
}

/// Logs what the guest printed during the call (ok or not), then maps
/// wasmtime's nested result to a call outcome. A trap whose cause quotes
/// the call's stderr (a panic message) does not log that stderr again:
/// the failure is logged once, bounded, by the registry. The output is
/// emptied: a kept instance's next call starts with none.
fn finish<T>(
    store: &mut Store<HostState>,
    run: wasmtime::Result<Result<T, String>>,
    limits: &Limits,
) -> Result<T, CallError> {
    let state = store.data_mut();
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
    std::mem::take(&mut state.output).emit(&state.ctx, !stderr_quoted);
    result
}
