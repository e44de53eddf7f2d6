//! A misbehaving invalidation policy for the test suite: it passes the
//! proxy's smoke test, then on real events `mode` = `trap` panics, `spin`
//! loops, `error` returns an error.

use serde_json::Value;

wit_bindgen::generate!({ world: "invalidate-policy", path: "../../wit" });

use exports::profile_edge::policy::invalidator::Guest;
use profile_edge::policy::host::config;
use profile_edge::policy::types::Action;

struct Policy;

impl Guest for Policy {
    fn on_event(event: String) -> Result<Vec<Action>, String> {
        if event.contains("profileEdgeSmokeTest") {
            return Ok(Vec::new());
        }
        let v: Value = serde_json::from_str(&config()).unwrap_or(Value::Null);
        match v.get("mode").and_then(Value::as_str).unwrap_or("trap") {
            "spin" => loop {
                std::hint::black_box(());
            },
            "error" => Err("hostile invalidation policy refuses".into()),
            _ => panic!("hostile invalidation policy traps on purpose"),
        }
    }
}

export!(Policy);
