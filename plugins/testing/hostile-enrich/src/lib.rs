//! A misbehaving enrichment policy for the test suite. It behaves on the
//! proxy's smoke-test input, so it gets loaded, and misbehaves on real
//! traffic, which is the case the sandbox must contain. Its `mode` config
//! picks the misbehaviour:
//! `spin` (endless loop), `hog` (allocates without end), `trap` (panics),
//! `error` (returns an error), `leak` (counts calls in a global and
//! reports the count: always 1 if every call gets a fresh instance),
//! `log-flood` (logs far past the rate limit), `call-info` (writes what
//! `host.request()` answers into the body as `callInfo`), anything else
//! behaves.

use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

wit_bindgen::generate!({ world: "enrich-policy", path: "../../wit" });

use exports::profile_edge::policy::enricher::Guest;
use profile_edge::policy::host::{config, log, request, CallKind, Level};
use profile_edge::policy::types::Profile;

static CALLS: AtomicU32 = AtomicU32::new(0);

struct Policy;

fn mode() -> String {
    let v: Value = serde_json::from_str(&config()).unwrap_or(Value::Null);
    v.get("mode")
        .and_then(Value::as_str)
        .unwrap_or("ok")
        .to_string()
}

fn misbehave(body: &str) -> Result<(), String> {
    if body.contains("profileEdgeSmokeTest") {
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
        "trap" => panic!("hostile policy traps on purpose"),
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
        misbehave(&body)?;
        Ok(Vec::new())
    }

    fn enrich(body: String, _profiles: Vec<Profile>) -> Result<String, String> {
        let n = CALLS.fetch_add(1, Ordering::SeqCst) + 1;
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
