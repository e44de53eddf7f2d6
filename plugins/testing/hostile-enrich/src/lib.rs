//! A misbehaving enrichment policy for the test suite. It behaves on the
//! proxy's smoke-test input, so it gets loaded, and misbehaves on real
//! traffic, which is the case the sandbox must contain. Its `mode` config
//! picks the misbehaviour:
//! `spin` (endless loop), `hog` (allocates without end), `trap` (panics),
//! `error` (returns an error), `leak` (counts calls in a global and
//! reports the count: always 1 if every call gets a fresh instance),
//! `log-flood` (logs far past the rate limit), `call-info` (writes what
//! `host.request()` answers into the body as `callInfo`), `print`
//! (`println!` and `eprintln!`), `clock` (reads the clocks and random
//! bytes, and writes them into the body), `files` (tries to read a file),
//! `net` (tries to connect), `exit` (calls `std::process::exit`),
//! `trap-at-load` (panics on every input, the smoke test's too),
//! `instance` (asks for the posts' authors, and writes how many calls its
//! instance has served into the body as `instanceCalls`: 2 when
//! `needed-ids` ran on the same instance, 1 on a fresh one); anything
//! else behaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

wit_bindgen::generate!({ world: "enrich-policy", path: "../../wit" });

use exports::profile_edge::policy::enricher::Guest;
use profile_edge::policy::host::{config, log, request, CallKind, Level};
use profile_edge::policy::types::Profile;

static CALLS: AtomicU32 = AtomicU32::new(0);
/// Every call this instance served, `needed-ids` included.
static INSTANCE_CALLS: AtomicU32 = AtomicU32::new(0);

struct Policy;

fn mode() -> String {
    let v: Value = serde_json::from_str(&config()).unwrap_or(Value::Null);
    v.get("mode")
        .and_then(Value::as_str)
        .unwrap_or("ok")
        .to_string()
}

extern "C" {
    /// wasi-libc's, over `wasi:random/random`: what C toolchains call.
    fn getentropy(buf: *mut u8, len: usize) -> i32;
}

fn random_hex() -> Result<String, String> {
    let mut buf = [0u8; 16];
    // SAFETY: `buf` is valid for writes of its length (at most 256).
    if unsafe { getentropy(buf.as_mut_ptr(), buf.len()) } != 0 {
        return Err("getentropy failed".into());
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// What `clock` mode writes into the body.
fn clock() -> Result<Value, String> {
    let started = Instant::now();
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?;
    let mut seen: HashMap<&str, u64> = HashMap::new();
    seen.insert("unixSeconds", unix.as_secs());
    Ok(serde_json::json!({
        "unixSeconds": seen["unixSeconds"],
        "monotonicNanos": started.elapsed().as_nanos() as u64,
        "randomHex": random_hex()?,
    }))
}

fn misbehave(body: &str) -> Result<(), String> {
    if body.contains("profileEdgeSmokeTest") {
        if mode() == "trap-at-load" {
            panic!("hostile policy refuses to load");
        }
        return Ok(());
    }
    match mode().as_str() {
        "spin" => {
            let mut x: u64 = 0;
            loop {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        "hog" => {
            let mut keep: Vec<Vec<u8>> = Vec::new();
            loop {
                keep.push(vec![7u8; 1 << 20]);
                std::hint::black_box(&keep);
            }
        }
        "trap" | "trap-at-load" => panic!("hostile policy traps on purpose"),
        "print" => {
            println!("hostile policy says hello on stdout");
            eprintln!("hostile policy says hello on stderr");
            Ok(())
        }
        "files" => match std::fs::read_to_string("/etc/hostname") {
            Ok(_) => Err("hostile policy read a file".into()),
            Err(e) => Err(format!("hostile policy cannot read files: {e}")),
        },
        "net" => match std::net::TcpStream::connect("127.0.0.1:9") {
            Ok(_) => Err("hostile policy connected".into()),
            Err(e) => Err(format!("hostile policy cannot connect: {e}")),
        },
        "exit" => std::process::exit(3),
        "error" => Err("hostile policy refuses".into()),
        "log-flood" => {
            for i in 0..10_000 {
                log(Level::Info, &format!("flood line {i}"));
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

impl Guest for Policy {
    fn needed_ids(body: String) -> Result<Vec<String>, String> {
        INSTANCE_CALLS.fetch_add(1, Ordering::SeqCst);
        misbehave(&body)?;
        if mode() == "instance" {
            let v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            let posts = v["posts"].as_array().cloned().unwrap_or_default();
            let ids = posts.iter().filter_map(|p| p["userId"].as_str());
            return Ok(ids.map(str::to_string).collect());
        }
        Ok(Vec::new())
    }

    fn enrich(body: String, _profiles: Vec<Profile>) -> Result<String, String> {
        let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        let served = INSTANCE_CALLS.fetch_add(1, Ordering::SeqCst) + 1;
        if mode() == "instance" {
            let mut v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if let Some(o) = v.as_object_mut() {
                o.insert("instanceCalls".into(), Value::from(served));
            }
            return serde_json::to_string(&v).map_err(|e| e.to_string());
        }
        if mode() == "clock" && !body.contains("profileEdgeSmokeTest") {
            let mut v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if let Some(o) = v.as_object_mut() {
                o.insert("clock".into(), clock()?);
            }
            return serde_json::to_string(&v).map_err(|e| e.to_string());
        }
        if mode() == "leak" {
            let mut v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if let Some(o) = v.as_object_mut() {
                o.insert("policyCalls".into(), Value::from(n));
            }
            return serde_json::to_string(&v).map_err(|e| e.to_string());
        }
        if mode() == "call-info" {
            let call = request();
            let kind = match call.kind {
                CallKind::Response => "response",
                CallKind::Notification => "notification",
                CallKind::Event => "event",
            };
            let mut v: Value = serde_json::from_str(&body).map_err(|e| e.to_string())?;
            if let Some(o) = v.as_object_mut() {
                let info =
                    serde_json::json!({"kind": kind, "path": call.path, "route": call.route});
                o.insert("callInfo".into(), info);
            }
            return serde_json::to_string(&v).map_err(|e| e.to_string());
        }
        Ok(body)
    }
}

export!(Policy);
