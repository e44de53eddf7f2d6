//! How a failed call is told, on one line, for logs, `/admin/plugins` and
//! `check`: the cause first (the panic message the guest wrote to stderr,
//! the WASI import it may not use, the limit it hit), then a trimmed wasm
//! backtrace, `(wasm backtrace: f <- g <- h, 3 more)`.

use wasmtime::{Trap, WasmBacktrace};

use super::calls::{CallError, Limits};

/// Longest cause kept whole, in characters.
pub const MAX_CAUSE_CHARS: usize = 1024;
/// Most of a trap's stderr quoted in its cause (the end is kept).
const MAX_STDERR_CHARS: usize = 768;
/// Frames shown in the backtrace; the rest are counted.
const MAX_FRAMES: usize = 5;
/// Longest function name shown.
const MAX_FRAME_CHARS: usize = 120;

/// A call that failed in wasmtime (a trap, a forbidden import, a limit):
/// `stderr` is what the guest wrote there during the call. Also answers
/// whether the cause quotes that stderr, which then need not be logged
/// line by line as well.
pub fn call_failure(
    error: &wasmtime::Error,
    stderr: &str,
    limits: &Limits,
    memory_exceeded: bool,
) -> (CallError, bool) {
    if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
        return (CallError::Timeout(limits.deadline), false);
    }
    let mut quoted = false;
    let cause = if memory_exceeded {
        format!("grew past its memory limit of {}", size(limits.memory))
    } else if let Some(trap) = error.downcast_ref::<Trap>() {
        // A Rust panic prints its message, then aborts with `unreachable`:
        // the message is the cause. Other runtimes (a JavaScript engine,
        // C's abort) say why on stderr too, in their own words.
        match (panic_message(stderr), stderr_tail(stderr)) {
            (Some(panic), _) => {
                quoted = true;
                panic
            }
            (None, Some(tail)) => {
                quoted = true;
                format!("{trap}; stderr: {tail}")
            }
            (None, None) => trap.to_string(),
        }
    } else {
        error.root_cause().to_string()
    };
    let trace = error
        .downcast_ref::<WasmBacktrace>()
        .map(backtrace)
        .unwrap_or_default();
    (CallError::Trap(one_line(&cause, &trace)), quoted)
}

/// `panicked at src/lib.rs:12:9: boom` from Rust's panic output:
/// `thread '..' panicked at src/lib.rs:12:9:\nboom\nnote: run with ..`.
pub fn panic_message(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let mut lines = stderr[at..].lines();
    let first = lines.next()?.trim_end();
    let Some(location) = first.strip_suffix(':') else {
        // Older std: `panicked at 'boom', src/lib.rs:12:9`, on one line.
        return Some(first.to_string());
    };
    let message: Vec<&str> = lines
        .take_while(|l| !l.starts_with("note: "))
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Some(format!("{location}: {}", message.join(" ")))
}

/// The end of what the call wrote to stderr, its lines joined by ` | `:
/// at most `MAX_STDERR_CHARS`, so that the trap's own words fit too.
fn stderr_tail(stderr: &str) -> Option<String> {
    let joined = stderr
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ");
    if joined.is_empty() {
        return None;
    }
    let chars = joined.chars().count();
    Some(if chars > MAX_STDERR_CHARS {
        let skip = chars - MAX_STDERR_CHARS;
        format!("...{}", joined.chars().skip(skip).collect::<String>())
    } else {
        joined
    })
}

/// Frames from the innermost out, without the runtime's frames on top
/// (Rust's panic and abort machinery, wasi-libc), at most `MAX_FRAMES`.
fn backtrace(bt: &WasmBacktrace) -> String {
    let names: Vec<String> = bt
        .frames()
        .iter()
        .map(|f| match f.func_name() {
            Some(name) => clean(name),
            None => format!("wasm function {}", f.func_index()),
        })
        .collect();
    let first = names.iter().position(|n| !is_runtime(n)).unwrap_or(0);
    let shown = &names[first..];
    if shown.is_empty() {
        return String::new();
    }
    let take = shown.len().min(MAX_FRAMES);
    let mut out = format!("(wasm backtrace: {}", shown[..take].join(" <- "));
    if shown.len() > take {
        out.push_str(&format!(", {} more", shown.len() - take));
    }
    out.push(')');
    out
}

/// A frame of the toolchain's runtime rather than of the policy: Rust's
/// std, core and alloc, or a C function of wasi-libc (no `::` path; the
/// policy's export shims carry a `#`).
fn is_runtime(name: &str) -> bool {
    const RUST: &[&str] = &[
        "core::",
        "std::",
        "alloc::",
        "panic_abort::",
        "__rust",
        "__rdl",
        "__rg",
        "rust_panic",
        "rust_begin_unwind",
        "<core::",
        "<std::",
        "<alloc::",
    ];
    RUST.iter().any(|p| name.starts_with(p)) || !(name.contains("::") || name.contains('#'))
}

/// A function name demangled, without Rust's hash (`::h0123456789abcdef`,
/// which some name sections keep after demangling), bounded.
fn clean(name: &str) -> String {
    let name = format!("{:#}", rustc_demangle::demangle(name));
    let name = match name.rsplit_once("::h") {
        Some((base, hash)) if hash.len() == 16 && hash.bytes().all(|b| b.is_ascii_hexdigit()) => {
            base
        }
        _ => &name,
    };
    cut(name, MAX_FRAME_CHARS)
}

/// `cause` whole (up to `MAX_CAUSE_CHARS`) and then `trace`, on one line.
pub fn one_line(cause: &str, trace: &str) -> String {
    let cause: String = cause
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cause = cut(cause.trim(), MAX_CAUSE_CHARS);
    if trace.is_empty() {
        cause
    } else {
        format!("{cause} {trace}")
    }
}

fn cut(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((end, _)) => format!("{}...", &s[..end]),
        None => s.to_string(),
    }
}

/// A memory size the way the config writes it.
fn size(bytes: usize) -> String {
    const KIB: usize = 1024;
    const MIB: usize = 1024 * 1024;
    if bytes >= MIB && bytes % MIB == 0 {
        format!("{}MiB", bytes / MIB)
    } else if bytes >= KIB && bytes % KIB == 0 {
        format!("{}KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_message_is_read_from_rust_panic_output() {
        let stderr = "starting\nthread '<unnamed>' panicked at src/lib.rs:52:19:\n\
                      hostile policy traps\non purpose\nnote: run with `RUST_BACKTRACE=1` \
                      environment variable to display a backtrace\n";
        assert_eq!(
            panic_message(stderr).as_deref(),
            Some("panicked at src/lib.rs:52:19: hostile policy traps on purpose")
        );
        assert_eq!(
            panic_message("thread 'main' panicked at 'boom', src/lib.rs:1:2\n").as_deref(),
            Some("panicked at 'boom', src/lib.rs:1:2")
        );
        assert_eq!(panic_message("just a line\n"), None);
    }

    #[test]
    fn a_trap_without_a_panic_quotes_the_end_of_stderr() {
        assert_eq!(
            stderr_tail("expected a string\n\nStack:\n  f@x.js:1:2\n").as_deref(),
            Some("expected a string | Stack: | f@x.js:1:2")
        );
        assert_eq!(stderr_tail(" \n"), None);
        let long = format!("start\n{}end", "y".repeat(2 * MAX_STDERR_CHARS));
        let tail = stderr_tail(&long).expect("a tail");
        assert!(tail.starts_with("...y") && tail.ends_with("yend"), "{tail}");
        assert_eq!(tail.chars().count(), MAX_STDERR_CHARS + 3);
    }

    #[test]
    fn the_cause_comes_first_whole_and_on_one_line() {
        let long = "x".repeat(MAX_CAUSE_CHARS + 50);
        let line = one_line(
            &format!("first\nsecond\t{long}"),
            "(wasm backtrace: f <- g)",
        );
        assert!(line.starts_with("first second xxx"), "{line}");
        assert!(line.ends_with("... (wasm backtrace: f <- g)"), "{line}");
        assert!(!line.contains('\n'));
        assert!(line.chars().count() <= MAX_CAUSE_CHARS + 3 + 1 + 24);
        assert_eq!(one_line("boom", ""), "boom");
    }

    #[test]
    fn frame_names_are_demangled_and_runtime_frames_are_recognised() {
        assert_eq!(
            clean("_ZN14hostile_enrich9misbehave17h0123456789abcdefE"),
            "hostile_enrich::misbehave"
        );
        assert_eq!(
            clean("hostile_enrich::misbehave::h0123456789abcdef"),
            "hostile_enrich::misbehave"
        );
        assert_eq!(clean("plain_name"), "plain_name");
        assert_eq!(clean(&"n".repeat(500)).chars().count(), MAX_FRAME_CHARS + 3);
        assert!(is_runtime("core::panicking::panic_fmt"));
        assert!(is_runtime(
            "<std::io::stdio::StdoutLock as std::io::Write>::write_all"
        ));
        assert!(is_runtime("__wasilibc_write_stream"));
        assert!(!is_runtime("hostile_enrich::misbehave"));
        assert!(!is_runtime("profile-edge:policy/enricher@0.1.0#needed-ids"));
    }

    #[test]
    fn memory_sizes_read_like_the_config() {
        assert_eq!(size(32 * 1024 * 1024), "32MiB");
        assert_eq!(size(64 * 1024), "64KiB");
        assert_eq!(size(1000), "1000 bytes");
    }
}
