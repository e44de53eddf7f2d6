//! What the `plugin` commands print: the report of a `plugin run` (as text
//! for a person, or one JSON object with `--json` for a script or test) and
//! the summary of a `plugin new`.

use std::time::Duration;

use serde_json::{json, Value};

use super::new::Created;
use crate::plugin::bindings::Action;
use crate::plugin::calls::World;
use crate::plugin::host::GuestLine;
use crate::units::{ByteSize, Dur};

/// One policy call and how it ended.
pub struct CallReport {
    /// "needed-ids", "enrich" or "on-event".
    pub call: &'static str,
    /// "ok", "error", "trap" or "timeout", as in `profile_edge_plugin_calls_total`.
    pub outcome: &'static str,
    pub error: Option<String>,
    pub elapsed: Duration,
    /// What the guest wrote during the call.
    pub logs: Vec<GuestLine>,
}

/// What the calls of one world produced.
pub enum Run {
    Enrich {
        body_from: String,
        ids: Option<Vec<String>>,
        profiles_from: Option<String>,
        output: Option<String>,
    },
    Invalidate {
        event_from: String,
        /// The sample event, shown since the user did not write it.
        event: Option<String>,
        actions: Option<Vec<Action>>,
    },
}

pub struct Report {
    pub file: String,
    pub world: World,
    pub sha256: String,
    pub deadline: Dur,
    pub memory_limit: ByteSize,
    pub config: String,
    pub run: Run,
    pub calls: Vec<CallReport>,
    pub logs_dropped: u64,
}

fn action_parts(a: &Action) -> (&'static str, &str) {
    match a {
        Action::Invalidate(id) => ("invalidate", id),
        Action::Refresh(id) => ("refresh", id),
        Action::RefreshPostSnapshots(id) => ("refresh-post-snapshots", id),
    }
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

pub fn print_text(r: &Report) {
    println!(
        "{}: {} (sha256 {}), deadline {}, memory_limit {}, config {}",
        r.file,
        r.world.as_str(),
        r.sha256.get(..12).unwrap_or(r.sha256.as_str()),
        r.deadline,
        r.memory_limit,
        r.config
    );
    let call = |name: &str| r.calls.iter().find(|c| c.call == name);
    match &r.run {
        Run::Enrich {
            body_from,
            ids,
            profiles_from,
            output,
        } => {
            println!("body: {body_from}");
            print_call(call("needed-ids"));
            if let Some(ids) = ids {
                println!(
                    "  ids: {}",
                    if ids.is_empty() {
                        "(none)".to_string()
                    } else {
                        ids.join(", ")
                    }
                );
            }
            if let Some(from) = profiles_from {
                println!("profiles: {from}");
            }
            print_call(call("enrich"));
            if let Some(out) = output {
                println!("output:");
                match serde_json::from_str::<Value>(out) {
                    Ok(v) => println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default()),
                    Err(_) => println!("{out}"),
                }
            }
        }
        Run::Invalidate {
            event_from,
            event,
            actions,
        } => {
            println!("event: {event_from}");
            if let Some(e) = event {
                println!("  {e}");
            }
            print_call(call("on-event"));
            if let Some(actions) = actions {
                println!(
                    "actions:{}",
                    if actions.is_empty() { " (none)" } else { "" }
                );
                for a in actions {
                    let (kind, id) = action_parts(a);
                    println!("  {kind} {id}");
                }
            }
        }
    }
    if r.logs_dropped > 0 {
        println!(
            "logs: {} line(s) dropped by the rate limit (100 a second)",
            r.logs_dropped
        );
    }
    let failed = r.calls.iter().filter(|c| c.error.is_some()).count();
    if failed > 0 {
        println!("result: {failed} call(s) failed");
    } else {
        println!("result: ok");
    }
}

fn print_call(c: Option<&CallReport>) {
    let Some(c) = c else {
        return;
    };
    let ms = millis(c.elapsed);
    match &c.error {
        None => println!("{}: ok in {ms:.3}ms", c.call),
        Some(e) => println!("{}: {} in {ms:.3}ms: {e}", c.call, c.outcome),
    }
    for l in &c.logs {
        println!("  {} [{}] {}", l.source, l.level, l.message);
    }
}

pub fn print_json(r: &Report) {
    let calls: Vec<Value> = r
        .calls
        .iter()
        .map(|c| {
            json!({
                "call": c.call,
                "outcome": c.outcome,
                "error": c.error,
                "duration_ms": millis(c.elapsed),
                "logs": c.logs.iter().map(|l| json!({
                    "source": l.source, "level": l.level, "message": l.message,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let mut doc = json!({
        "file": r.file,
        "world": r.world.as_str(),
        "sha256": r.sha256,
        "deadline": r.deadline.to_string(),
        "memory_limit": r.memory_limit.to_string(),
        "config": serde_json::from_str::<Value>(&r.config).unwrap_or(Value::Null),
        "calls": calls,
        "logs_dropped": r.logs_dropped,
        "ok": r.calls.iter().all(|c| c.error.is_none()),
    });
    match &r.run {
        Run::Enrich {
            body_from,
            ids,
            profiles_from,
            output,
        } => {
            doc["body"] = json!(body_from);
            doc["ids"] = json!(ids);
            doc["profiles"] = json!(profiles_from);
            // Parsed when it is JSON, as text when it is not.
            doc["output"] = match output {
                Some(out) => serde_json::from_str(out).unwrap_or_else(|_| json!(out)),
                None => Value::Null,
            };
        }
        Run::Invalidate {
            event_from,
            actions,
            ..
        } => {
            doc["event"] = json!(event_from);
            doc["actions"] = match actions {
                Some(list) => list
                    .iter()
                    .map(|a| {
                        let (kind, id) = action_parts(a);
                        json!({"action": kind, "id": id})
                    })
                    .collect(),
                None => Value::Null,
            };
        }
    }
    println!("{doc}");
}

/// The summary of `plugin new`, with what to run next.
pub fn created(c: &Created, world: World) {
    let dir = c.dir.display();
    println!("created {dir}/ ({})", world.as_str());
    for f in &c.files {
        println!("  {}", f.display());
    }
    if let Some(hint) = &c.members_hint {
        println!("note: {hint}");
    }
    let input = match world {
        World::Enrich => "[--body feed.json] [--profiles profiles.json]",
        World::Invalidate => "[--event event.json]",
    };
    println!("next:");
    println!("  (cd {dir} && cargo test)");
    println!("  profile-edge plugin build {dir}");
    println!("  profile-edge plugin run <printed .wasm> {input}");
    println!(
        "the component is {} in the build's target directory",
        c.wasm
    );
}
