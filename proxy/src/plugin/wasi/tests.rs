//! The shim with real guests from `plugins/dist` (built by
//! `plugins/build.sh`): the hostile fixture prints, panics, reads the
//! clocks and random bytes, and reaches for files, sockets and `exit`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use wasmtime::component::types::ComponentItem;

use crate::plugin::bindings::CallInfo;
use crate::plugin::calls::{CallError, Limits, World};
use crate::plugin::engine::{PluginRuntime, Prepared};
use crate::plugin::host::{GuestLine, PluginContext};

use crate::plugin::dist;

const BODY: &str = r#"{"posts":[{"id":"p1","userId":"u1"}]}"#;

fn limits() -> Limits {
    Limits {
        deadline: Duration::from_secs(5),
        memory: 16 * 1024 * 1024,
    }
}

/// Runs `needed-ids` then `enrich` of the hostile fixture in `mode` on a
/// real (not smoke-test) body; answers the enriched body or the first
/// failure, and the lines the guest wrote.
fn hostile(mode: &str) -> (Result<String, CallError>, Vec<GuestLine>) {
    let runtime = PluginRuntime::global().expect("runtime");
    let bytes = std::fs::read(dist("testing/hostile_enrich.wasm")).expect("read");
    let (pre, _) = runtime.prepare(&bytes, World::Enrich).expect("prepare");
    assert!(
        matches!(pre, Prepared::Enrich(_)),
        "built for the current WIT"
    );
    let call = CallInfo::response("/api/posts", "/api/posts");
    let ctx = Arc::new(PluginContext::capturing(
        "hostile",
        format!(r#"{{"mode":"{mode}"}}"#),
    ));
    let out = runtime
        .needed_ids(&pre, &ctx, &limits(), &call, BODY)
        .and_then(|_| runtime.enrich(&pre, &ctx, &limits(), &call, BODY, &[]));
    (out, ctx.take_lines())
}

fn trap(mode: &str) -> String {
    match hostile(mode).0 {
        Err(CallError::Trap(msg)) => msg,
        other => panic!("{mode}: expected a trap, got {other:?}"),
    }
}

#[test]
fn every_built_guest_links_and_its_wasi_imports_are_listed() {
    let runtime = PluginRuntime::global().expect("runtime");
    let engine = wasmtime::Engine::default();
    for (name, world) in [
        ("enrich_posts.wasm", World::Enrich),
        ("enrich_fields.wasm", World::Enrich),
        ("invalidate_profile.wasm", World::Invalidate),
        ("testing/hostile_enrich.wasm", World::Enrich),
        ("testing/hostile_invalidate.wasm", World::Invalidate),
    ] {
        let bytes = std::fs::read(dist(name)).expect("read");
        runtime
            .prepare(&bytes, world)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let component = wasmtime::component::Component::new(&engine, &bytes).expect("compile");
        let ty = component.component_type();
        let mut wasi = Vec::new();
        for (import, item) in ty.imports(&engine) {
            if let ComponentItem::ComponentInstance(i) = item.ty {
                for (f, _) in i.exports(&engine) {
                    wasi.push(format!("{import}#{f}"));
                }
            }
        }
        // Shown with --nocapture: what std links in, for the guide.
        println!("{name}:\n  {}", wasi.join("\n  "));
    }
}

#[test]
fn println_and_eprintln_are_logged_after_the_call() {
    let (out, lines) = hostile("print");
    assert!(out.is_ok(), "{out:?}");
    let line = |source: &str| {
        lines
            .iter()
            .find(|l| l.source == source)
            .unwrap_or_else(|| panic!("no {source} line in {lines:?}"))
            .clone()
    };
    assert_eq!(
        line("stdout").message,
        "hostile policy says hello on stdout"
    );
    assert_eq!(line("stdout").level, "info");
    assert_eq!(
        line("stderr").message,
        "hostile policy says hello on stderr"
    );
    assert_eq!(line("stderr").level, "warn");
}

#[test]
fn a_panic_message_is_the_cause_of_the_trap() {
    let (out, lines) = hostile("trap");
    let Err(CallError::Trap(msg)) = out else {
        panic!("expected a trap, got {out:?}");
    };
    assert!(
        msg.starts_with("panicked at testing/hostile-enrich/src/lib.rs:")
            && msg.contains(": hostile policy traps on purpose (wasm backtrace: ")
            && msg.ends_with("#needed-ids)"),
        "{msg}"
    );
    assert!(!msg.contains('\n'), "{msg}");
    // The panic's stderr is in the cause, and not logged a second time.
    assert!(!lines.iter().any(|l| l.source == "stderr"), "{lines:?}");
}

#[test]
fn clocks_and_random_bytes_work() {
    let read = || {
        let (out, _) = hostile("clock");
        let body: serde_json::Value =
            serde_json::from_str(&out.expect("clock call")).expect("JSON body");
        body["clock"].clone()
    };
    let (a, b) = (read(), read());
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("a clock after 1970")
        .as_secs();
    let unix = a["unixSeconds"].as_u64().expect("unixSeconds");
    assert!(unix.abs_diff(now) < 3600, "wall clock {unix} vs {now}");
    assert!(a["monotonicNanos"].is_u64(), "{a}");
    let hex = a["randomHex"].as_str().expect("randomHex");
    assert_eq!(hex.len(), 32, "{hex}");
    assert_ne!(
        a["randomHex"], b["randomHex"],
        "the same random bytes twice"
    );
}

#[test]
fn denied_imports_trap_with_the_import_named() {
    let net = trap("net");
    assert!(
        net.starts_with("called wasi:sockets/") && net.contains("which policies may not use"),
        "{net}"
    );
    let exit = trap("exit");
    // Shown with --nocapture: the messages as an operator reads them.
    println!("net: {net}\nexit: {exit}\nhog: {}", trap("hog"));
    assert!(exit.starts_with("policy called exit (failure)"), "{exit}");
    // Files are denied by having none: std's open fails, the guest decides.
    match hostile("files").0 {
        Err(CallError::Error(msg)) => assert!(msg.contains("cannot read files"), "{msg}"),
        other => panic!("files: {other:?}"),
    }
}

#[test]
fn hitting_the_memory_limit_says_so() {
    let hog = trap("hog");
    assert!(
        hog.starts_with("grew past its memory limit of 16MiB"),
        "{hog}"
    );
}
