//! {{name}}: an invalidation policy (world `invalidate-policy`).
//! `profile-updated`: drop the profile everywhere, load the new one now, and
//! refresh the author snapshots stored with the user's posts.
//! `profile-deleted`: drop it and refresh the snapshots. Other event types:
//! no action (logged).
//!
//! Settings (`[plugins.NAME] config = {...}`, read through `host::config()`):
//! `snapshots`, whether to refresh post snapshots (default `true`).

mod host;

use serde_json::Value;

wit_bindgen::generate!({ world: "invalidate-policy", path: "{{wit_path}}" });

use exports::profile_edge::policy::invalidator::Guest;
use host::Level;
use profile_edge::policy::types::Action;

struct Policy;

fn refresh_snapshots() -> bool {
    let settings: Value = serde_json::from_str(&host::config()).unwrap_or(Value::Null);
    settings
        .get("snapshots")
        .and_then(Value::as_bool)
        .unwrap_or(true)
}

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
        let mut actions = match kind {
            "profile-updated" => vec![Action::Refresh(user()?)],
            "profile-deleted" => vec![Action::Invalidate(user()?)],
            other => {
                host::log(Level::Info, &format!("ignoring event type {other:?}"));
                return Ok(Vec::new());
            }
        };
        if refresh_snapshots() {
            actions.push(Action::RefreshPostSnapshots(user()?));
        }
        Ok(actions)
    }
}

export!(Policy);

#[cfg(test)]
mod tests {
    use super::*;

    fn actions(event: &str) -> Vec<String> {
        Policy::on_event(event.into())
            .unwrap()
            .iter()
            .map(|a| match a {
                Action::Invalidate(id) => format!("invalidate {id}"),
                Action::Refresh(id) => format!("refresh {id}"),
                Action::RefreshPostSnapshots(id) => format!("refresh-post-snapshots {id}"),
            })
            .collect()
    }

    #[test]
    fn an_update_refreshes_the_profile_and_its_snapshots() {
        let got = actions(r#"{"type":"profile-updated","userId":"u1"}"#);
        assert_eq!(got, ["refresh u1", "refresh-post-snapshots u1"]);
    }

    #[test]
    fn a_deletion_invalidates() {
        let got = actions(r#"{"type":"profile-deleted","userId":"u1"}"#);
        assert_eq!(got, ["invalidate u1", "refresh-post-snapshots u1"]);
    }

    #[test]
    fn snapshots_can_be_turned_off_in_the_config() {
        host::set_config(r#"{"snapshots":false}"#);
        let got = actions(r#"{"type":"profile-updated","userId":"u1"}"#);
        assert_eq!(got, ["refresh u1"]);
    }

    #[test]
    fn other_events_are_logged_and_ignored() {
        assert!(actions(r#"{"type":"user-followed","userId":"u1"}"#).is_empty());
        let logs = host::take_logs();
        assert!(logs[0].1.contains("user-followed"), "{logs:?}");
    }

    #[test]
    fn an_update_without_a_user_is_an_error() {
        let err = Policy::on_event(r#"{"type":"profile-updated"}"#.into()).unwrap_err();
        assert!(err.contains("without a userId"), "{err}");
    }
}
