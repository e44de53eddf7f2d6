//! The default invalidation policy. `profile-updated`: drop the profile
//! everywhere, load the new one now, and refresh the author snapshots stored
//! with the user's posts. `profile-deleted`: drop it and refresh the
//! snapshots (they become null). Other event types: no action.

use serde_json::Value;

wit_bindgen::generate!({ world: "invalidate-policy", path: "../wit" });

use exports::profile_edge::policy::invalidator::Guest;
use profile_edge::policy::host::{log, Level};
use profile_edge::policy::types::Action;

struct Policy;

impl Guest for Policy {
    fn on_event(event: String) -> Result<Vec<Action>, String> {
        let v: Value =
            serde_json::from_str(&event).map_err(|e| format!("event is not JSON: {e}"))?;
        let kind = v.get("type").and_then(Value::as_str).unwrap_or_default();
        let user = || {
            v.get("userId")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("{kind} event without a userId"))
        };
        match kind {
            "profile-updated" => {
                let id = user()?;
                Ok(vec![
                    Action::Refresh(id.clone()),
                    Action::RefreshPostSnapshots(id),
                ])
            }
            "profile-deleted" => {
                let id = user()?;
                Ok(vec![
                    Action::Invalidate(id.clone()),
                    Action::RefreshPostSnapshots(id),
                ])
            }
            other => {
                log(Level::Debug, &format!("ignoring event type {other:?}"));
                Ok(Vec::new())
            }
        }
    }
}

export!(Policy);
