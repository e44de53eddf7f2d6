//! What one loaded version of a plugin did with real traffic: calls by
//! outcome, the last failure and when, and the gate that keeps request-time
//! failure logs to one line now and then instead of one per request (a
//! policy that traps on every request would otherwise write a line per
//! request). A new version starts clean, so `/admin/plugins` describes the
//! version that serves.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value};

use crate::plugin::calls::CallError;

/// At most one failure line per plugin version this often; the failures in
/// between are counted and reported on the next line.
pub const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Outcomes {
    ok: AtomicU64,
    error: AtomicU64,
    trap: AtomicU64,
    timeout: AtomicU64,
    last_failure: Mutex<Option<Failure>>,
    gate: Mutex<Gate>,
}

#[derive(Clone)]
struct Failure {
    outcome: &'static str,
    message: String,
    at: SystemTime,
}

#[derive(Default)]
struct Gate {
    last_logged: Option<Instant>,
    suppressed: u64,
}

impl Outcomes {
    /// Counts a call, and for a failure keeps it as the last one and says
    /// whether to log it now: `Some(n)` with the failures suppressed since
    /// the last line, `None` to stay quiet.
    pub fn record<T>(&self, r: &Result<T, CallError>) -> Option<u64> {
        let e = match r {
            Ok(_) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            Err(e) => e,
        };
        let counter = match e {
            CallError::Error(_) => &self.error,
            CallError::Trap(_) => &self.trap,
            CallError::Timeout(_) => &self.timeout,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(Failure {
                outcome: e.outcome(),
                message: e.to_string(),
                at: SystemTime::now(),
            });
        }
        let mut gate = self.gate.lock().ok()?;
        let due = gate
            .last_logged
            .is_none_or(|t| t.elapsed() >= FAILURE_LOG_EVERY);
        if due {
            gate.last_logged = Some(Instant::now());
            Some(std::mem::take(&mut gate.suppressed))
        } else {
            gate.suppressed += 1;
            None
        }
    }

    /// The `calls` and `last_call_error` fields of `/admin/plugins`.
    pub fn json(&self) -> (Value, Value) {
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let calls = json!({
            "ok": n(&self.ok),
            "error": n(&self.error),
            "trap": n(&self.trap),
            "timeout": n(&self.timeout),
        });
        let last = self
            .last_failure
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .map_or(Value::Null, |f| {
                json!({
                    "outcome": f.outcome,
                    "message": f.message,
                    "at": humantime::format_rfc3339_seconds(f.at).to_string(),
                })
            });
        (calls, last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_and_logged_once_per_period() {
        let o = Outcomes::default();
        assert_eq!(o.record(&Ok::<(), CallError>(())), None);
        // The first failure logs at once; those right after it are counted.
        let trap = Err::<(), _>(CallError::Trap("boom".into()));
        assert_eq!(o.record(&trap), Some(0));
        for _ in 0..199 {
            assert_eq!(o.record(&trap), None);
        }
        o.record(&Err::<(), _>(CallError::Error("no".into())));
        let (calls, last) = o.json();
        assert_eq!(
            calls,
            json!({"ok": 1, "error": 1, "trap": 200, "timeout": 0})
        );
        assert_eq!(last["outcome"], "error");
        assert_eq!(last["message"], "policy error: no");
        // Once the period is over, the next failure logs with the count.
        if let Ok(mut g) = o.gate.lock() {
            g.last_logged = Instant::now().checked_sub(FAILURE_LOG_EVERY);
        }
        assert_eq!(o.record(&trap), Some(200));
    }
}
